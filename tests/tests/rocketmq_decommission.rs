//! `rocketmq.broker.decommission` end to end against a real cluster with real messages: a
//! rollback before the stop makes the broker writable again (in the broker and in its config
//! file); a full run survives `kill -9` of the daemon during the retention wait and a restart of
//! the broker itself (the read-only permission was persisted), and ends with the broker gone.
//! With keyed traffic produced and consumed while each run goes: a master/slave group is made
//! read-only on every replica and stopped slave first; an empty broker skips the retention; a
//! second decommission in the cluster is refused; a group with no consumer online is excluded
//! only through an approval; delayed messages, timer messages and undecided transactions hold
//! the run until they are delivered and consumed.

use std::time::Duration;

use anyhow::Result;
use cheetah_string::CheetahString;
use rocketmq_client_rust::BrokerAdmin as _;
use runbook_tests::cluster::{Cluster, Delay};
use runbook_tests::{step_of, Daemon};

const LONG: Duration = Duration::from_secs(120);

fn file_permission(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("brokerPermission=").map(str::to_owned))
}

#[test]
fn decommission_rolls_back_and_survives_kill9_and_a_broker_restart() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b", "broker-c"])?;
    cluster.create_topic("PayTopic", &["broker-a", "broker-b", "broker-c"], 2)?;
    let producer = cluster.producer()?;
    producer.send("PayTopic", 30)?;
    let consumer = cluster.consumer("pay_group", "PayTopic")?;
    consumer.wait_received(30, LONG)?;
    let mut daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let stop_command = cluster.stop_command();

    // Rollback at the approval gate: writable again, in the broker and in the file.
    let broker_c = cluster.broker("broker-c")?.clone();
    let config_c = broker_c.config.display().to_string();
    let run = daemon.start_run(
        "rocketmq.broker.decommission",
        &[
            ("namesrv", &namesrv),
            ("cluster", "TestCluster"),
            ("broker", "broker-c"),
            ("broker_config", &config_c),
            ("retention", "1s"),
            ("route_refresh", "1s"),
            ("stop_command", &stop_command),
        ],
    )?;
    daemon.wait_step(&run, "approve", "waiting", LONG)?;
    assert_eq!(
        cluster
            .broker_config("broker-c", "brokerPermission")?
            .as_deref(),
        Some("4")
    );
    assert_eq!(file_permission(&broker_c.config).as_deref(), Some("4"));
    let rolled = daemon.cli(&["rollback", &run, "--comment", "keep broker-c"])?;
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    let shown = daemon.wait_state(&run, "rolled_back", LONG)?;
    assert_eq!(
        step_of(&shown, "read_only").map(|step| step["undo"]["state"].clone()),
        Some("succeeded".into()),
        "{shown}"
    );
    assert_eq!(
        cluster
            .broker_config("broker-c", "brokerPermission")?
            .as_deref(),
        Some("6")
    );
    assert_eq!(file_permission(&broker_c.config).as_deref(), Some("6"));

    // The full run on broker-b, with kill -9 of the daemon and a broker restart in the retention wait.
    let broker_b = cluster.broker("broker-b")?.clone();
    let config_b = broker_b.config.display().to_string();
    let run = daemon.start_run(
        "rocketmq.broker.decommission",
        &[
            ("namesrv", &namesrv),
            ("cluster", "TestCluster"),
            ("broker", "broker-b"),
            ("broker_addr", &broker_b.addr),
            ("broker_config", &config_b),
            ("retention", "10s"),
            ("route_refresh", "1s"),
            ("stop_command", &stop_command),
        ],
    )?;
    daemon.wait_step(&run, "persist_read_only", "succeeded", LONG)?;
    let refused = producer.send_to_broker("PayTopic", "broker-b");
    let refusal = refused.expect_err("a send to the read-only broker must be refused");
    assert!(
        refusal.to_lowercase().contains("forbidden")
            || refusal.to_lowercase().contains("permission"),
        "{refusal}"
    );
    producer.send("PayTopic", 10)?; // the other brokers still take writes

    daemon.wait_step(&run, "retention", "waiting", LONG)?;
    daemon.kill9();
    cluster.stop_broker("broker-b")?;
    cluster.start_broker("broker-b")?;
    cluster.wait_registered("broker-b", LONG)?;
    assert_eq!(
        cluster
            .broker_config("broker-b", "brokerPermission")?
            .as_deref(),
        Some("4"),
        "the restarted broker must still be read-only"
    );
    daemon.restart()?;

    daemon.wait_step(&run, "approve", "waiting", LONG)?;
    let approved = daemon.cli(&["approve", &run, "--comment", "drained"])?;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(
        step_of(&shown, "gone").map(|step| step["output"]["broker"]["absent_everywhere"].clone()),
        Some(true.into()),
        "{shown}"
    );
    assert!(!cluster
        .registered_on(&namesrv)?
        .contains(&"broker-b".to_owned()));
    assert_eq!(cluster.route_brokers("PayTopic")?, ["broker-a", "broker-c"]);
    assert_eq!(
        step_of(&shown, "drained").map(|step| step["output"]["diff_total"].clone()),
        Some(0.into()),
        "{shown}"
    );
    drop(consumer);
    Ok(())
}

/// Sends keyed messages to `topic` in batches until `step` of `run` reaches `state`: traffic
/// while the step runs. Returns the keys the brokers acknowledged.
fn traffic_until(
    daemon: &Daemon,
    producer: &runbook_tests::cluster::Producer,
    topic: &str,
    prefix: &str,
    run: &str,
    step: &str,
    state: &str,
) -> Result<Vec<String>> {
    let deadline = std::time::Instant::now() + LONG;
    let mut keys = Vec::new();
    let mut batch = 0;
    loop {
        let shown = daemon.show(run)?;
        if step_of(&shown, step).is_some_and(|found| found["state"] == state) {
            return Ok(keys);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("step {step} of run {run} is not {state} after {LONG:?}: {shown}");
        }
        keys.extend(producer.send_keyed(topic, &format!("{prefix}-{batch}"), 4)?);
        batch += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn command_of(shown: &serde_json::Value, prefix: &str, suffix: &str) -> Vec<String> {
    shown["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|step| {
                    step["id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with(prefix) && id.ends_with(suffix))
                })
                .map(|step| {
                    step["output"]["command"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn decommission_makes_every_replica_read_only_and_stops_the_slave_before_the_master() -> Result<()>
{
    let cluster = Cluster::start_groups(1, &["broker-a", "broker-b"], 1)?;
    cluster.create_topic("PayTopic", &["broker-a", "broker-b"], 2)?;
    let producer = cluster.producer()?;
    let consumer = cluster.consumer("pay_group", "PayTopic")?;
    let mut keys = producer.send_keyed("PayTopic", "before", 20)?;
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let master = cluster.broker("broker-b")?.clone();
    let slave = cluster.broker("broker-b-s1")?.clone();
    let run = daemon.start_run(
        "rocketmq.broker.decommission",
        &[
            ("namesrv", &namesrv),
            ("cluster", "TestCluster"),
            ("broker", "broker-b"),
            ("broker_config", &cluster.config_template_by_addr()),
            ("retention", "3s"),
            ("route_refresh", "1s"),
            ("stop_command", &cluster.stop_command_by_addr()),
        ],
    )?;
    // Messages are produced and consumed while the run drains the broker.
    keys.extend(traffic_until(
        &daemon, &producer, "PayTopic", "during", &run, "approve", "waiting",
    )?);
    for replica in [&master, &slave] {
        assert_eq!(
            cluster
                .broker_config(&replica.key, "brokerPermission")?
                .as_deref(),
            Some("4"),
            "{} must be read-only at run time",
            replica.key
        );
        assert_eq!(
            file_permission(&replica.config).as_deref(),
            Some("4"),
            "{} must be read-only in its config file",
            replica.key
        );
    }
    let shown = daemon.show(&run)?;
    let stats = step_of(&shown, "writes_stopped")
        .map(|step| step["output"].clone())
        .unwrap_or_default();
    assert_eq!(stats["file_reserved_time_hours"], 72, "{stats}");
    assert_eq!(stats["delete_when"], "04", "{stats}");
    let approved = daemon.cli(&["approve", &run, "--comment", "drained"])?;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    // The slave was stopped first, then the master; neither is registered any more.
    let stops = command_of(&shown, "stop[", "command");
    assert_eq!(stops.len(), 2, "{shown}");
    assert!(stops[0].contains(&slave.addr), "{stops:?}");
    assert!(stops[1].contains(&master.addr), "{stops:?}");
    let registered = cluster.registered_addrs_on(&namesrv)?;
    assert!(
        registered.iter().all(|(name, _, _)| name != "broker-b"),
        "{registered:?}"
    );
    assert_eq!(cluster.route_brokers("PayTopic")?, ["broker-a"]);
    // Every message acknowledged was consumed.
    consumer.wait_keys(&keys, LONG)?;
    Ok(())
}

#[test]
fn decommission_of_an_empty_broker_skips_the_retention_saying_so() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-c"])?;
    cluster.create_topic("PayTopic", &["broker-a"], 2)?;
    let producer = cluster.producer()?;
    let consumer = cluster.consumer("pay_group", "PayTopic")?;
    let daemon = Daemon::start()?;
    let run = daemon.start_run(
        "rocketmq.broker.decommission",
        &[
            ("namesrv", &cluster.namesrv()),
            ("cluster", "TestCluster"),
            ("broker", "broker-c"),
            ("broker_config", &cluster.config_template()),
            ("retention", "1h"),
            ("route_refresh", "1s"),
            ("stop_command", &cluster.stop_command()),
        ],
    )?;
    let keys = traffic_until(
        &daemon, &producer, "PayTopic", "empty", &run, "approve", "waiting",
    )?;
    let shown = daemon.show(&run)?;
    let stats = step_of(&shown, "writes_stopped")
        .map(|step| step["output"].clone())
        .unwrap_or_default();
    assert_eq!(stats["has_messages"], false, "{stats}");
    assert!(
        stats["retention_note"]
            .as_str()
            .is_some_and(|note| note.contains("holds no message")),
        "{stats}"
    );
    assert_eq!(
        step_of(&shown, "retention").map(|step| step["state"].clone()),
        Some("skipped".into()),
        "{shown}"
    );
    consumer.wait_keys(&keys, LONG)?;
    Ok(())
}

#[test]
fn a_second_decommission_in_the_cluster_is_refused_while_one_runs() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b", "broker-c"])?;
    // PairTopic is written through broker-a and broker-b only: each alone may go, not both.
    cluster.create_topic("PairTopic", &["broker-a", "broker-b"], 2)?;
    let producer = cluster.producer()?;
    let consumer = cluster.consumer("pair_group", "PairTopic")?;
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let params = |broker: &'static str| {
        vec![
            ("namesrv", namesrv.clone()),
            ("cluster", "TestCluster".to_owned()),
            ("broker", broker.to_owned()),
            ("broker_config", cluster.config_template()),
            ("retention", "2s".to_owned()),
            ("route_refresh", "1s".to_owned()),
            ("stop_command", cluster.stop_command()),
        ]
    };
    let as_refs =
        |params: &[(&'static str, String)]| -> Vec<(&'static str, String)> { params.to_vec() };
    let first_params = as_refs(&params("broker-a"));
    let first: Vec<(&str, &str)> = first_params
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let second_params = as_refs(&params("broker-b"));
    let second: Vec<(&str, &str)> = second_params
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let run = daemon.start_run("rocketmq.broker.decommission", &first)?;
    let other = daemon.start_run("rocketmq.broker.decommission", &second);
    let keys = traffic_until(
        &daemon,
        &producer,
        "PairTopic",
        "pair",
        &run,
        "approve",
        "waiting",
    )?;
    assert!(
        other.is_err(),
        "a second decommission in the cluster started ({other:?}): PairTopic could lose both writers"
    );
    // PairTopic still takes writes (through broker-b) and every acknowledged message is consumed.
    let after = producer.send_keyed("PairTopic", "after", 10)?;
    assert_eq!(after.len(), 10);
    consumer.wait_keys(&keys, LONG)?;
    consumer.wait_keys(&after, LONG)?;
    Ok(())
}

#[test]
fn a_group_without_consumer_is_listed_and_excluded_through_an_approval() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    cluster.create_topic("PayTopic", &["broker-a", "broker-b"], 2)?;
    let producer = cluster.producer()?;
    let live = cluster.consumer("live_group", "PayTopic")?;
    let mut abandoned = cluster.consumer("abandoned_group", "PayTopic")?;
    let first = producer.send_keyed("PayTopic", "first", 10)?;
    abandoned.wait_keys(&first, LONG)?;
    abandoned.shutdown();
    let daemon = Daemon::start()?;
    let run = daemon.start_run(
        "rocketmq.broker.decommission",
        &[
            ("namesrv", &cluster.namesrv()),
            ("cluster", "TestCluster"),
            ("broker", "broker-b"),
            ("broker_config", &cluster.config_template()),
            ("retention", "2s"),
            ("route_refresh", "1s"),
            ("stop_command", &cluster.stop_command()),
        ],
    )?;
    // Traffic while the run drains: abandoned_group never reads it, live_group must.
    let mut keys = first;
    keys.extend(traffic_until(
        &daemon,
        &producer,
        "PayTopic",
        "during",
        &run,
        "exclude_offline",
        "waiting",
    )?);
    let shown = daemon.show(&run)?;
    let online = step_of(&shown, "online_drained")
        .map(|step| step["output"].clone())
        .unwrap_or_default();
    assert_eq!(
        online["offline_lagging_groups"],
        serde_json::json!(["abandoned_group"]),
        "{online}"
    );
    let approved = daemon.cli(&["approve", &run, "--comment", "abandoned_group is retired"])?;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    keys.extend(traffic_until(
        &daemon, &producer, "PayTopic", "after", &run, "approve", "waiting",
    )?);
    let shown = daemon.show(&run)?;
    assert_eq!(
        step_of(&shown, "drained").map(|step| step["output"]["excluded_groups"].clone()),
        Some(serde_json::json!(["abandoned_group"])),
        "{shown}"
    );
    live.wait_keys(&keys, LONG)?;
    Ok(())
}

#[test]
fn delayed_messages_keep_the_broker_until_they_are_delivered_and_consumed() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    cluster.create_topic("PayTopic", &["broker-a", "broker-b"], 2)?;
    let producer = cluster.producer()?;
    let consumer = cluster.consumer("pay_group", "PayTopic")?;
    // Due in 30 s, stored on broker-b: they are delivered there, after the run started.
    let delayed =
        producer.send_delayed_to_broker("PayTopic", "broker-b", "delayed", 5, Delay::Level(4))?;
    assert_eq!(delayed.len(), 5);
    let daemon = Daemon::start()?;
    let run = daemon.start_run(
        "rocketmq.broker.decommission",
        &[
            ("namesrv", &cluster.namesrv()),
            ("cluster", "TestCluster"),
            ("broker", "broker-b"),
            ("broker_config", &cluster.config_template()),
            ("retention", "1s"),
            ("route_refresh", "1s"),
            ("stop_command", &cluster.stop_command()),
        ],
    )?;
    let mut keys = traffic_until(
        &daemon, &producer, "PayTopic", "during", &run, "approve", "waiting",
    )?;
    // At the gate, before anything is stopped, the delayed messages were delivered and consumed.
    let have = consumer.keys();
    let missing: Vec<&String> = delayed.iter().filter(|key| !have.contains(*key)).collect();
    assert!(
        missing.is_empty(),
        "the run reached its stop gate with delayed message(s) {missing:?} not delivered and consumed: {}",
        daemon.show(&run)?
    );
    keys.extend(delayed);
    consumer.wait_keys(&keys, LONG)?;
    Ok(())
}

/// The timer backlog a broker reports: `timerCongestNum` + `timerOffsetBehind`.
fn timer_backlog(cluster: &Cluster, key: &str) -> Result<i64> {
    let addr = cluster.broker(key)?.addr.clone();
    cluster.with_admin(&cluster.namesrv(), |admin| async move {
        let stats = admin
            .fetch_broker_runtime_stats(CheetahString::from(addr.as_str()))
            .await
            .map_err(|error| anyhow::anyhow!("runtime stats of {addr}: {error}"))?;
        let number = |key: &str| {
            stats
                .table
                .get(&CheetahString::from(key))
                .and_then(|value| value.trim().parse::<i64>().ok())
                .unwrap_or(0)
        };
        Ok(number("timerCongestNum") + number("timerOffsetBehind"))
    })
}

#[test]
fn timer_messages_keep_the_broker_until_they_are_delivered_and_consumed() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    cluster.create_topic("PayTopic", &["broker-a", "broker-b"], 2)?;
    let producer = cluster.producer()?;
    let consumer = cluster.consumer("pay_group", "PayTopic")?;
    // Timer messages (TIMER_DELAY_SEC) due in 45 s, parked in broker-b's timer wheel: nothing
    // in SCHEDULE_TOPIC_XXXX, no lag on PayTopic until they are delivered there.
    let timed =
        producer.send_delayed_to_broker("PayTopic", "broker-b", "timed", 5, Delay::Seconds(45))?;
    assert_eq!(timed.len(), 5);
    // The broker counts them in its timer backlog (timerCongestNum + timerOffsetBehind).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while timer_backlog(&cluster, "broker-b")? < 5 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "broker-b does not report the timer messages as pending"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let daemon = Daemon::start()?;
    let run = daemon.start_run(
        "rocketmq.broker.decommission",
        &[
            ("namesrv", &cluster.namesrv()),
            ("cluster", "TestCluster"),
            ("broker", "broker-b"),
            ("broker_config", &cluster.config_template()),
            ("retention", "1s"),
            ("route_refresh", "1s"),
            ("stop_command", &cluster.stop_command()),
        ],
    )?;
    let mut keys = traffic_until(
        &daemon,
        &producer,
        "PayTopic",
        "during",
        &run,
        "no_pending",
        "succeeded",
    )?;
    keys.extend(traffic_until(
        &daemon, &producer, "PayTopic", "after", &run, "approve", "waiting",
    )?);
    // At the gate, before anything is stopped, the timer messages were delivered and consumed.
    let have = consumer.keys();
    let missing: Vec<&String> = timed.iter().filter(|key| !have.contains(*key)).collect();
    assert!(
        missing.is_empty(),
        "the run reached its stop gate with timer message(s) {missing:?} not delivered and consumed: {}",
        daemon.show(&run)?
    );
    let shown = daemon.show(&run)?;
    let pending = step_of(&shown, "no_pending")
        .map(|step| step["output"].clone())
        .unwrap_or_default();
    assert_eq!(pending["timer_backlog"], 0, "{pending}");
    assert_eq!(
        pending["backlog_not_reported"],
        serde_json::json!([]),
        "{pending}"
    );
    keys.extend(timed);
    consumer.wait_keys(&keys, LONG)?;
    Ok(())
}

#[test]
fn undecided_transactions_keep_the_broker_until_they_are_decided_and_consumed() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    cluster.create_topic("TxTopic", &["broker-a", "broker-b"], 2)?;
    let consumer = cluster.consumer("tx_group", "TxTopic")?;
    let tx = cluster.tx_producer()?;
    // Half messages on both brokers, their transactions undecided.
    let half = tx.send_half("TxTopic", "half", 8)?;
    assert_eq!(half.len(), 8);
    let producer = cluster.producer()?;
    let daemon = Daemon::start()?;
    let started = std::time::Instant::now();
    let run = daemon.start_run(
        "rocketmq.broker.decommission",
        &[
            ("namesrv", &cluster.namesrv()),
            ("cluster", "TestCluster"),
            ("broker", "broker-b"),
            ("broker_config", &cluster.config_template()),
            ("retention", "1s"),
            ("route_refresh", "1s"),
            ("stop_command", &cluster.stop_command()),
        ],
    )?;
    // The transactions are decided 15 s after the run started, while it runs.
    let deadline = started + LONG;
    let mut keys = Vec::new();
    let mut batch = 0;
    loop {
        if started.elapsed() > Duration::from_secs(15) {
            tx.decide();
        }
        let shown = daemon.show(&run)?;
        if step_of(&shown, "approve").is_some_and(|step| step["state"] == "waiting") {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no stop gate: {shown}"
        );
        keys.extend(producer.send_keyed("TxTopic", &format!("during-{batch}"), 2)?);
        batch += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let have = consumer.keys();
    let missing: Vec<&String> = half.iter().filter(|key| !have.contains(*key)).collect();
    assert!(
        missing.is_empty(),
        "the run reached its stop gate {:?} after it started with transactional message(s) {missing:?} not decided and consumed: {}",
        started.elapsed(),
        daemon.show(&run)?
    );
    keys.extend(half);
    consumer.wait_keys(&keys, LONG)?;
    Ok(())
}
