//! `rocketmq.topic.expand_queues`, `rocketmq.topic.shrink_queues` and
//! `rocketmq.consumer.reset_offset` end to end against a real cluster with real messages.

use std::time::Duration;

use anyhow::Result;
use runbook_tests::cluster::{Cluster, KeyedConsumer};
use runbook_tests::{step_of, Daemon};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

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
            ("route_refresh", "1s"),
            ("quiet_window", "2s"),
        ],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(output(&shown, "write_routed")["max_write_queues"], 3);
    assert_eq!(
        step_of(&shown, "ordered_approval").map(|step| step["state"].clone()),
        Some("skipped".into()),
        "{shown}"
    );
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

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Waits (up to 60 s) until `group` has committed everything stored in `topic`.
fn wait_lag_zero(cluster: &Cluster, group: &str, topic: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (group_owned, topic_owned) = (group.to_owned(), topic.to_owned());
        let lag = cluster.with_admin(&cluster.namesrv(), |admin| async move {
            let stats = rocketmq_client_rust::ConsumerAdmin::examine_consume_stats(
                &*admin,
                group_owned.as_str().into(),
                Some(topic_owned.as_str().into()),
                None,
                None,
                None,
            )
            .await
            .map_err(|error| anyhow::anyhow!("consume stats of {group_owned}: {error}"))?;
            Ok(stats
                .offset_table
                .values()
                .map(|offset| (offset.get_broker_offset() - offset.get_consumer_offset()).max(0))
                .sum::<i64>())
        })?;
        if lag == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("group {group} still lags {lag} message(s) on {topic}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A producer that still writes to the queues a shrink removes (a stale route, or a queue id
/// chosen by the application) while the shrink runs: the read queues must not shrink until no
/// message arrives there any more, and every message the broker acknowledged is consumed.
#[test]
fn shrink_waits_until_no_write_reaches_the_removed_queues() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("StaleTopic", &["broker-a"], 6)?;
    let producer = cluster.producer()?;
    let consumer = cluster.keyed_consumer("stale_group", "StaleTopic")?;
    let mut acked: Vec<String> = Vec::new();
    for index in 0..12 {
        let key = format!("before-{index}");
        producer
            .send_key("StaleTopic", &key, Some(("broker-a", index % 6)))
            .map_err(anyhow::Error::msg)?;
        acked.push(key);
    }
    if let Err(missing) = consumer.wait_keys(&acked, LONG) {
        anyhow::bail!("not consumed before the shrink: {missing:?}");
    }
    // Nothing is left to drain when the run starts (the consumer commits its offsets lazily).
    wait_lag_zero(&cluster, "stale_group", "StaleTopic")?;
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let run = daemon.start_run(
        "rocketmq.topic.shrink_queues",
        &[
            ("namesrv", &namesrv),
            ("topic", "StaleTopic"),
            ("queues", "3"),
            ("retention", "10m"),
            ("route_refresh", "2s"),
            ("quiet_window", "3s"),
            ("write_timeout", "2m"),
        ],
    )?;
    // The stale writer: from the moment the write queues are 3, one message every 250 ms to
    // queues 3..5 for 6 s, as a producer that has not refreshed its route yet (or that picks
    // queue ids itself) does.
    daemon.wait_step(&run, "shrink_write", "succeeded", LONG)?;
    let (written, refused, last_ack_ms) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut written = Vec::new();
            let mut refused = Vec::new();
            let mut last_ack_ms = 0;
            let until = std::time::Instant::now() + Duration::from_secs(6);
            let mut index = 0;
            while std::time::Instant::now() < until {
                let key = format!("stale-{index}");
                match producer.send_key("StaleTopic", &key, Some(("broker-a", 3 + index % 3))) {
                    Ok(()) => {
                        last_ack_ms = epoch_ms();
                        written.push(key);
                    }
                    Err(error) => refused.push(format!("{key}: {error}")),
                }
                index += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            (written, refused, last_ack_ms)
        });
        writer.join().unwrap_or_default()
    });
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    acked.extend(written.iter().cloned());
    // Every acknowledged message is consumed (none left in a queue nobody reads).
    if let Err(missing) = consumer.wait_keys(&acked, Duration::from_secs(30)) {
        anyhow::bail!(
            "{} of {} acknowledged message(s) never consumed: {missing:?}; refused sends: {refused:?}\n{shown}",
            missing.len(),
            acked.len()
        );
    }
    // No send was refused: the read queues did not shrink under a producer still using them.
    assert!(refused.is_empty(), "refused sends: {refused:?}\n{shown}");
    assert!(written.len() >= 15, "the writer wrote {written:?}");
    // The read queues shrank only after the last write reached the removed queues.
    let shrunk_at = output(&shown, "shrink_read")["observed_at_ms"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        shrunk_at > last_ack_ms,
        "read queues shrunk at {shrunk_at}, a write was acknowledged at {last_ack_ms}; refused: {refused:?}"
    );
    assert_eq!(output(&shown, "nothing_stranded")["written"], 0, "{shown}");
    assert_eq!(output(&shown, "read_routed")["max_read_queues"], 3);
    Ok(())
}

/// Restarts `broker` with `useServerSideResetOffset=false`: it then pushes a reset to the online
/// consumers and leaves the offsets to them, as Java 4.x brokers do (and reads a per-queue reset
/// request as a whole-topic reset by timestamp).
fn client_side_reset(cluster: &Cluster, broker: &str) -> Result<()> {
    let config = cluster.broker(broker)?.config.clone();
    cluster.stop_broker(broker)?;
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str("useServerSideResetOffset=false\n");
    std::fs::write(&config, text)?;
    cluster.start_broker(broker)?;
    cluster.wait_registered(broker, LONG)
}

/// Sends `count` keyed messages round robin over 2 queues of `topic` on broker-a.
fn send_keys(cluster: &Cluster, topic: &str, prefix: &str, count: i32) -> Result<Vec<String>> {
    let producer = cluster.producer()?;
    let mut keys = Vec::new();
    for index in 0..count {
        let key = format!("{prefix}-{index}");
        producer
            .send_key(topic, &key, Some(("broker-a", index % 2)))
            .map_err(anyhow::Error::msg)?;
        keys.push(key);
    }
    Ok(keys)
}

/// Waits until every key was delivered at least `times` times.
fn wait_deliveries(consumer: &KeyedConsumer, keys: &[String], times: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let received = consumer.keys();
        if keys
            .iter()
            .all(|key| received.get(key).is_some_and(|count| *count >= times))
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("not every key delivered {times} times: {received:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With a consumer online that does not take the reset within `settle`, the offsets end where
/// they were and the reset fails instead of passing on them; with the consumers stopped, the
/// reset holds, and a consumer started afterwards reads every message again.
#[test]
fn online_reset_is_verified_against_what_the_consumers_really_did() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("ReplayOnline", &["broker-a"], 2)?;
    let keys = send_keys(&cluster, "ReplayOnline", "replay", 20)?;
    let mut consumer = cluster.keyed_consumer("online_group", "ReplayOnline")?;
    wait_deliveries(&consumer, &keys, 1)?;
    std::thread::sleep(Duration::from_secs(6));
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();

    let run = daemon.start_run(
        "rocketmq.consumer.reset_offset",
        &[
            ("namesrv", &namesrv),
            ("group", "online_group"),
            ("topic", "ReplayOnline"),
            ("timestamp", "0"),
            ("settle", "12s"),
        ],
    )?;
    let shown = daemon.wait_for(&run, LONG, |shown| {
        shown["state"] == "needs_attention" || shown["state"] == "succeeded"
    })?;
    let replayed = consumer
        .keys()
        .values()
        .filter(|count| **count >= 2)
        .count();
    assert_eq!(
        shown["state"], "needs_attention",
        "replayed {replayed}: {shown}"
    );
    let error = step_of(&shown, "reset")
        .map(|step| step["error"].to_string())
        .unwrap_or_default();
    assert!(error.contains("did not reach the consumers"), "{error}");
    consumer.shutdown();
    let canceled = daemon.cli(&["cancel", &run])?;
    assert!(
        canceled.status.success(),
        "{}",
        String::from_utf8_lossy(&canceled.stderr)
    );
    daemon.wait_state(&run, "canceled", LONG)?;

    let run = daemon.start_run(
        "rocketmq.consumer.reset_offset",
        &[
            ("namesrv", &namesrv),
            ("group", "online_group"),
            ("topic", "ReplayOnline"),
            ("timestamp", "0"),
            ("settle", "3s"),
        ],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(output(&shown, "after")["diff_total"], 20, "{shown}");
    let replay = cluster.keyed_consumer("online_group", "ReplayOnline")?;
    wait_deliveries(&replay, &keys, 1)?;
    Ok(())
}

/// An online reset that nobody re-reads is not a success: the group is online, but its consumer
/// now subscribes to another topic, so the offsets the broker wrote rest at the target with the
/// topic's messages after them and nothing is replayed. The step stops and says so.
#[test]
fn online_reset_that_no_consumer_replays_is_not_a_success() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("ReplayIdle", &["broker-a"], 2)?;
    cluster.create_topic("ElsewhereTopic", &["broker-a"], 2)?;
    let keys = send_keys(&cluster, "ReplayIdle", "idle", 20)?;
    let mut consumer = cluster.keyed_consumer("idle_group", "ReplayIdle")?;
    wait_deliveries(&consumer, &keys, 1)?;
    std::thread::sleep(Duration::from_secs(6));
    consumer.shutdown();
    // The group online again: a new consumer of the topic, with nothing left to read.
    let elsewhere = cluster.keyed_consumer("idle_group", "ReplayIdle")?;
    std::thread::sleep(Duration::from_secs(3));
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();

    let run = daemon.start_run(
        "rocketmq.consumer.reset_offset",
        &[
            ("namesrv", &namesrv),
            ("group", "idle_group"),
            ("topic", "ReplayIdle"),
            ("timestamp", "0"),
            ("settle", "5s"),
        ],
    )?;
    let shown = daemon.wait_for(&run, LONG, |shown| {
        shown["state"] == "needs_attention" || shown["state"] == "succeeded"
    })?;
    assert_eq!(shown["state"], "needs_attention", "{shown}");
    let error = step_of(&shown, "reset")
        .map(|step| step["error"].to_string())
        .unwrap_or_default();
    assert!(
        error.contains("did not reach the consumers") && error.contains("nothing was re-read"),
        "{error}"
    );
    drop(elsewhere);
    Ok(())
}

/// The undo of a reset on a broker that reads a per-queue reset request as a whole-topic reset
/// by timestamp (useServerSideResetOffset=false, as Java 4.x brokers) with consumers online:
/// refused with the reason and nothing replayed; once the consumers are stopped, the saved
/// offsets are written back.
#[test]
fn reset_undo_never_sends_a_whole_topic_reset() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("UndoTopic", &["broker-a"], 2)?;
    let keys = send_keys(&cluster, "UndoTopic", "undo", 20)?;
    let mut consumer = cluster.keyed_consumer("undo_group", "UndoTopic")?;
    wait_deliveries(&consumer, &keys, 1)?;
    std::thread::sleep(Duration::from_secs(6));
    consumer.shutdown();
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let run = daemon.start_run(
        "rocketmq.consumer.reset_offset",
        &[
            ("namesrv", &namesrv),
            ("group", "undo_group"),
            ("topic", "UndoTopic"),
            ("timestamp", "0"),
            ("settle", "3s"),
        ],
    )?;
    daemon.wait_state(&run, "succeeded", LONG)?;
    // The replay the reset asked for, read by a consumer that stays online.
    let mut consumer = cluster.keyed_consumer("undo_group", "UndoTopic")?;
    wait_deliveries(&consumer, &keys, 1)?;
    std::thread::sleep(Duration::from_secs(6));
    client_side_reset(&cluster, "broker-a")?;
    std::thread::sleep(Duration::from_secs(5));

    let rolled = daemon.cli(&["rollback", &run])?;
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    let shown = daemon.wait_for(&run, LONG, |shown| {
        shown["state"] == "needs_attention" || shown["state"] == "rolled_back"
    })?;
    // A consumer takes a pushed reset 10 s after it arrives: give a wrong one time to show.
    std::thread::sleep(Duration::from_secs(15));
    let delivered = consumer.keys();
    assert!(
        keys.iter().all(|key| delivered.get(key) == Some(&1)),
        "the undo made the group read its messages again: {delivered:?}"
    );
    assert_eq!(shown["state"], "needs_attention", "{shown}");
    let undo = step_of(&shown, "reset")
        .map(|step| step["undo"].clone())
        .unwrap_or_default();
    assert!(
        undo["error"]
            .to_string()
            .contains("useServerSideResetOffset")
            && undo["error"].to_string().contains("Stop the consumers"),
        "{undo}"
    );

    // Consumers stopped: the undo writes the saved offsets back.
    consumer.shutdown();
    std::thread::sleep(Duration::from_secs(2));
    let retried = daemon.cli(&["retry", &run, "reset"])?;
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    let shown = daemon.wait_state(&run, "rolled_back", LONG)?;
    let undo = step_of(&shown, "reset")
        .map(|step| step["undo"].clone())
        .unwrap_or_default();
    assert_eq!(undo["output"]["online"], false, "{undo}");
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
    Ok(())
}

const PERM_PROBE: &str = r#"
name = "perm_probe"
[params.namesrv]
required = true
[params.perm]
required = true
[[steps]]
id = "set"
action = "rocketmq.topic_upsert"
with = { namesrv = "{{ params.namesrv }}", topic = "OrderedTopic", perm = "{{ params.perm }}", order = true }
"#;

/// A topic permission other than 2, 4 or 6 is refused naming the param; expanding or shrinking
/// an ordered topic waits for an approval that names the key -> queue change.
#[test]
fn topic_perm_is_checked_and_ordered_topics_need_approval() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("OrderedTopic", &["broker-a"], 4)?;
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let probe = daemon.write_file("perm_probe.toml", PERM_PROBE)?;
    for perm in ["0", "1", "3", "7"] {
        let run = daemon.start_run(&probe, &[("namesrv", &namesrv), ("perm", perm)])?;
        let shown = daemon.wait_for(&run, LONG, |shown| {
            shown["state"] == "needs_attention" || shown["state"] == "succeeded"
        })?;
        let error = step_of(&shown, "set")
            .map(|step| step["error"].to_string())
            .unwrap_or_default();
        assert!(
            shown["state"] == "needs_attention"
                && error.contains("perm")
                && error.contains(&format!(
                    "\\\"{perm}\\\" is not one of \\\"6\\\", \\\"4\\\", \\\"2\\\""
                )),
            "perm {perm}: {shown}"
        );
    }
    // perm 6 and order = true: an ordered topic.
    let run = daemon.start_run(&probe, &[("namesrv", &namesrv), ("perm", "6")])?;
    daemon.wait_state(&run, "succeeded", LONG)?;

    let run = daemon.start_run(
        "rocketmq.topic.expand_queues",
        &[
            ("namesrv", &namesrv),
            ("topic", "OrderedTopic"),
            ("queues", "8"),
        ],
    )?;
    let shown = daemon.wait_step(&run, "ordered_approval", "waiting", LONG)?;
    let change = output(&shown, "ordered")["change"].to_string();
    assert!(
        change.contains("4 → 8") && change.contains("went to queue 3 and now goes to queue 7"),
        "{change}"
    );
    assert_eq!(cluster.route_brokers("OrderedTopic")?, ["broker-a"]);
    let approved = daemon.cli(&["approve", &run])?;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(output(&shown, "routed")["max_write_queues"], 8);
    // The backup taken before the change: the topic as it was (4 queues), named by `show`.
    let backup = output(&shown, "backup");
    let path = backup["path"].as_str().unwrap_or_default().to_owned();
    let topics: Value = serde_json::from_str(&std::fs::read_to_string(format!(
        "{path}/broker-a/topics.json"
    ))?)?;
    assert_eq!(topics["OrderedTopic"]["write_queues"], 4, "{topics}");
    assert!(std::path::Path::new(&format!("{path}/broker-a/subscription_groups.json")).exists());
    assert!(std::path::Path::new(&format!("{path}/broker-a/consumer_offsets.json")).exists());
    assert!(backup["topics"].as_u64().unwrap_or(0) >= 1, "{backup}");
    let text = daemon.cli(&["show", &run])?;
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&path),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    let run = daemon.start_run(
        "rocketmq.topic.shrink_queues",
        &[
            ("namesrv", &namesrv),
            ("topic", "OrderedTopic"),
            ("queues", "4"),
            ("route_refresh", "1s"),
            ("quiet_window", "1s"),
        ],
    )?;
    let shown = daemon.wait_step(&run, "ordered_approval", "waiting", LONG)?;
    assert!(
        output(&shown, "ordered")["change"]
            .to_string()
            .contains("8 → 4"),
        "{shown}"
    );
    assert_eq!(
        step_of(&shown, "shrink_write").map(|step| step["state"].clone()),
        Some("pending".into())
    );
    let approved = daemon.cli(&["approve", &run])?;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    daemon.wait_state(&run, "succeeded", LONG)?;
    Ok(())
}
