//! `rocketmq.broker.scale_out` and `rocketmq.namesrv.migrate` end to end against a real cluster:
//! a new broker gets every topic and subscription group and appears in every route; the brokers
//! move to a new NameServer list one at a time and end registered on every new NameServer.

use std::time::Duration;

use anyhow::Result;
use runbook_tests::cluster::Cluster;
use runbook_tests::{step_of, Daemon};

const LONG: Duration = Duration::from_secs(120);

#[test]
fn scale_out_copies_topics_and_groups_and_routes_the_new_broker() -> Result<()> {
    let mut cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("ShipTopic", &["broker-a"], 4)?;
    cluster.create_topic("MailTopic", &["broker-a"], 2)?;
    let producer = cluster.producer()?;
    producer.send("ShipTopic", 10)?;
    let consumer = cluster.consumer("ship_group", "ShipTopic")?;
    consumer.wait_received(10, LONG)?;
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();

    // The run waits for a broker that is not there yet.
    let run = daemon.start_run(
        "rocketmq.broker.scale_out",
        &[
            ("namesrv", &namesrv),
            ("broker", "broker-new"),
            ("source_broker", "broker-a"),
        ],
    )?;
    daemon.wait_step(&run, "registered", "waiting", LONG)?;
    cluster.add_broker("broker-new")?;
    let shown = daemon
        .wait_state(&run, "succeeded", LONG)
        .inspect_err(|_| eprintln!("{}", cluster.server_logs()))?;

    let copy = &step_of(&shown, "copy")
        .map(|step| step["output"].clone())
        .unwrap_or_default();
    assert_eq!(
        copy["topics"],
        serde_json::json!(["MailTopic", "ShipTopic"]),
        "{copy}"
    );
    assert!(
        copy["groups"]
            .as_array()
            .is_some_and(|groups| groups.iter().any(|group| group == "ship_group")),
        "{copy}"
    );
    assert!(
        copy["skipped"]
            .as_array()
            .is_some_and(|skipped| skipped.iter().any(|topic| topic == "SCHEDULE_TOPIC_XXXX")),
        "{copy}"
    );
    assert_eq!(
        cluster.route_brokers("ShipTopic")?,
        ["broker-a", "broker-new"]
    );
    assert_eq!(
        cluster.route_brokers("MailTopic")?,
        ["broker-a", "broker-new"]
    );
    // Real messages go through the new broker.
    producer
        .send_to_broker("ShipTopic", "broker-new")
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

#[test]
fn namesrv_migration_restarts_brokers_one_at_a_time_onto_every_new_namesrv() -> Result<()> {
    let mut cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    let old = cluster.namesrv();
    let added = cluster.add_namesrv()?;
    let new_list = format!("{old};{added}");
    assert!(cluster.registered_on(&added)?.is_empty());
    let daemon = Daemon::start()?;
    let run = daemon.start_run(
        "rocketmq.namesrv.migrate",
        &[
            ("namesrv", &old),
            ("new_namesrv", &new_list),
            ("cluster", "TestCluster"),
            ("broker_config", &cluster.config_template()),
            ("stop_command", &cluster.stop_command()),
            ("start_command", &cluster.start_command()),
        ],
    )?;
    let shown = daemon
        .wait_state(&run, "succeeded", Duration::from_secs(240))
        .inspect_err(|_| eprintln!("{}", cluster.server_logs()))?;
    for namesrv in [&old, &added] {
        assert_eq!(
            cluster.registered_on(namesrv)?,
            ["broker-a", "broker-b"],
            "on {namesrv}"
        );
    }
    for broker in ["broker-a", "broker-b"] {
        let config = std::fs::read_to_string(&cluster.broker(broker)?.config)?;
        assert!(
            config.contains(&format!("namesrvAddr={new_list}")),
            "{config}"
        );
    }
    // One at a time: the second broker was stopped only after the first was back everywhere.
    let at = |iteration: &str, step: &str, field: &str| -> String {
        shown["steps"]
            .as_array()
            .and_then(|steps| {
                steps.iter().find(|found| {
                    found["id"]
                        .as_str()
                        .is_some_and(|id| id.contains(iteration) && id.ends_with(step))
                })
            })
            .and_then(|found| found[field].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let first_back = at("roll[0]", "registered", "finished_at");
    let second_stopped = at("roll[1]", "stop", "started_at");
    assert!(
        !first_back.is_empty() && first_back <= second_stopped,
        "{first_back} / {second_stopped}: {shown}"
    );
    assert_eq!(
        step_of(&shown, "verify").map(|step| step["output"]["every_broker_everywhere"].clone()),
        Some(true.into()),
        "{shown}"
    );
    Ok(())
}

#[test]
fn namesrv_migration_moves_every_slave_too_slaves_first() -> Result<()> {
    let mut cluster = Cluster::start_groups(1, &["broker-a", "broker-b"], 1)?;
    let old = cluster.namesrv();
    let added = cluster.add_namesrv()?;
    let new_list = format!("{old};{added}");
    let daemon = Daemon::start()?;
    let run = daemon.start_run(
        "rocketmq.namesrv.migrate",
        &[
            ("namesrv", &old),
            ("new_namesrv", &new_list),
            ("cluster", "TestCluster"),
            ("broker_config", &cluster.config_template_by_addr()),
            ("stop_command", &cluster.stop_command_by_addr()),
            ("start_command", &cluster.start_command_by_addr()),
        ],
    )?;
    let shown = daemon
        .wait_state(&run, "succeeded", Duration::from_secs(300))
        .inspect_err(|_| eprintln!("{}", cluster.server_logs()))?;
    // Every process, slaves included, is registered on the new NameServer under its own id.
    let registered = cluster.registered_addrs_on(&added)?;
    for broker in cluster.brokers.values() {
        assert!(
            registered.contains(&(broker.name.clone(), broker.id, broker.addr.clone())),
            "{} (id {}) is not on the new namesrv {added}: {registered:?}",
            broker.key,
            broker.id
        );
        let config = std::fs::read_to_string(&broker.config)?;
        assert!(
            config.contains(&format!("namesrvAddr={new_list}")),
            "{}: {config}",
            broker.key
        );
    }
    // Within a group the slave went first: it was back before its master was stopped.
    let roll: Vec<&serde_json::Value> = shown["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|step| {
                    step["id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("roll["))
                })
                .collect()
        })
        .unwrap_or_default();
    let at = |iteration: usize, step: &str, field: &str| -> String {
        roll.iter()
            .find(|found| {
                found["id"].as_str().is_some_and(|id| {
                    id.starts_with(&format!("roll[{iteration}]")) && id.ends_with(step)
                })
            })
            .and_then(|found| found[field].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let slave_a = cluster.broker("broker-a-s1")?.addr.clone();
    let first_stop = roll
        .iter()
        .find(|found| {
            found["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("roll[0]") && id.ends_with("stop"))
        })
        .map(|found| found["output"]["command"].to_string())
        .unwrap_or_default();
    assert!(first_stop.contains(&slave_a), "{first_stop}: {shown}");
    let slave_back = at(0, "registered", "finished_at");
    let master_stopped = at(1, "stop", "started_at");
    assert!(
        !slave_back.is_empty() && slave_back <= master_stopped,
        "{slave_back} / {master_stopped}: {shown}"
    );
    assert_eq!(
        step_of(&shown, "verify").map(|step| step["output"]["addrs_registered_everywhere"].clone()),
        Some(true.into()),
        "{shown}"
    );
    Ok(())
}
