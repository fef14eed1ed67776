//! `rocketmq.topic.expand_queues`, `rocketmq.topic.shrink_queues` and
//! `rocketmq.consumer.reset_offset` end to end against a real cluster with real messages.

use std::time::Duration;

use anyhow::Result;
use runbook_tests::cluster::Cluster;
use runbook_tests::{step_of, Daemon};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn output(shown: &Value, step: &str) -> Value {
    step_of(shown, step)
        .map(|step| step["output"].clone())
        .unwrap_or_default()
}

#[test]
fn queues_expand_then_shrink_in_two_verified_phases() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    cluster.create_topic("GrowTopic", &["broker-a", "broker-b"], 2)?;
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();

    let run = daemon.start_run(
        "rocketmq.topic.expand_queues",
        &[
            ("namesrv", &namesrv),
            ("topic", "GrowTopic"),
            ("queues", "6"),
        ],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(output(&shown, "routed")["min_write_queues"], 6, "{shown}");
    assert_eq!(output(&shown, "expand")["brokers"][0]["current"]["perm"], 6);

    // Messages in every queue, a group consuming them.
    let producer = cluster.producer()?;
    producer.send("GrowTopic", 60)?;
    let consumer = cluster.consumer("grow_group", "GrowTopic")?;
    consumer.wait_received(60, LONG)?;

    let run = daemon.start_run(
        "rocketmq.topic.shrink_queues",
        &[
            ("namesrv", &namesrv),
            ("topic", "GrowTopic"),
            ("queues", "3"),
            ("retention", "10m"),
        ],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(output(&shown, "write_routed")["max_write_queues"], 3);
    assert_eq!(output(&shown, "drained")["drained"], true, "{shown}");
    assert!(
        output(&shown, "drained")["group_names"]
            .as_array()
            .is_some_and(|groups| groups.iter().any(|group| group == "grow_group")),
        "{shown}"
    );
    let routed = output(&shown, "read_routed");
    assert_eq!(
        (
            routed["max_read_queues"].clone(),
            routed["max_write_queues"].clone()
        ),
        (3.into(), 3.into()),
        "{routed}"
    );

    // Growing with the shrink runbook is refused, naming the topic.
    let run = daemon.start_run(
        "rocketmq.topic.shrink_queues",
        &[
            ("namesrv", &namesrv),
            ("topic", "GrowTopic"),
            ("queues", "5"),
        ],
    )?;
    let shown = daemon.wait_state(&run, "needs_attention", LONG)?;
    let error = step_of(&shown, "shrink_write")
        .map(|step| step["error"].to_string())
        .unwrap_or_default();
    assert!(
        error.contains("GrowTopic") && error.contains("would not shrink"),
        "{error}"
    );
    drop(consumer);
    Ok(())
}

#[test]
fn offset_reset_is_verified_and_its_undo_restores_the_offsets() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("ReplayTopic", &["broker-a"], 2)?;
    let producer = cluster.producer()?;
    producer.send("ReplayTopic", 20)?;
    let mut consumer = cluster.consumer("replay_group", "ReplayTopic")?;
    consumer.wait_received(20, LONG)?;
    // Let the consumer persist its offsets, then stop it (an offline group).
    std::thread::sleep(Duration::from_secs(6));
    consumer.shutdown();
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();

    let run = daemon.start_run(
        "rocketmq.consumer.reset_offset",
        &[
            ("namesrv", &namesrv),
            ("group", "replay_group"),
            ("topic", "ReplayTopic"),
            ("timestamp", "0"),
        ],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(output(&shown, "before")["diff_total"], 0, "{shown}");
    assert_eq!(output(&shown, "after")["diff_total"], 20, "{shown}");
    let previous = output(&shown, "reset")["previous"].clone();
    assert_eq!(
        previous.as_array().map(|queues| queues
            .iter()
            .map(|queue| queue["offset"].as_i64().unwrap_or(0))
            .sum::<i64>()),
        Some(20),
        "{previous}"
    );

    let rolled = daemon.cli(&["rollback", &run])?;
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    let shown = daemon.wait_state(&run, "rolled_back", LONG)?;
    let undo = step_of(&shown, "reset")
        .map(|step| step["undo"].clone())
        .unwrap_or_default();
    assert_eq!(undo["state"], "succeeded", "{undo}");
    let restored: i64 = undo["output"]["current"]
        .as_array()
        .map(|queues| {
            queues
                .iter()
                .map(|queue| queue["offset"].as_i64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(restored, 20, "{undo}");

    // A group that never consumed: a clear error, nothing reset.
    let run = daemon.start_run(
        "rocketmq.consumer.reset_offset",
        &[
            ("namesrv", &namesrv),
            ("group", "ghost_group"),
            ("topic", "ReplayTopic"),
            ("timestamp", "now"),
        ],
    )?;
    let shown = daemon.wait_state(&run, "needs_attention", LONG)?;
    let error = step_of(&shown, "reset")
        .map(|step| step["error"].to_string())
        .unwrap_or_default();
    assert!(error.contains("ghost_group"), "{error}");
    Ok(())
}
