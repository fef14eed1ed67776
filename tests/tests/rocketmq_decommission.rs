//! `rocketmq.broker.decommission` end to end against a real cluster with real messages: a
//! rollback before the stop makes the broker writable again (in the broker and in its config
//! file); a full run survives `kill -9` of the daemon during the retention wait and a restart of
//! the broker itself (the read-only permission was persisted), and ends with the broker gone.

use std::time::Duration;

use anyhow::Result;
use runbook_tests::cluster::Cluster;
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
