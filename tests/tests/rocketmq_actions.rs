//! The `rocketmq.*` actions against a real cluster (two brokers, one NameServer): what they
//! read, that their changes are checked by reading back, and that a broker, topic or NameServer
//! that does not exist stops the run in `needs_attention` with an error naming it; a lag query
//! that fails fails the poll, the group's retry-topic query included (lost by a proxy in front of
//! the real broker, while the retry topic holds unread messages); messages that expired on the
//! broker are no lag.

use std::time::Duration;

use anyhow::{anyhow, Result};
use cheetah_string::CheetahString;
use rocketmq_client_rust::{OffsetAdmin as _, TopicAdmin as _};
use runbook_tests::cluster::Cluster;
use runbook_tests::remoting::{self, RemotingProxy};
use runbook_tests::{step_of, Daemon};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);
/// Request codes: GET_CONSUME_STATS, LOCK_BATCH_MQ.
const GET_CONSUME_STATS: i32 = 208;
const LOCK_BATCH_MQ: i32 = 41;

fn output<'a>(shown: &'a Value, step: &str) -> &'a Value {
    &step_of(shown, step).unwrap_or_else(|| panic!("no step {step} in {shown}"))["output"]
}

#[test]
fn actions_read_the_cluster_and_check_their_changes() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    cluster.create_topic("OrdersTopic", &["broker-a", "broker-b"], 4)?;
    let producer = cluster.producer()?;
    producer.send("OrdersTopic", 40)?;
    let consumer = cluster.consumer("orders_group", "OrdersTopic")?;
    consumer.wait_received(40, LONG)?;

    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "probe.toml",
        r#"
name = "probe"
[params.namesrv]
required = true
[params.commitlog]
required = true
[[steps]]
id = "members"
action = "rocketmq.cluster"
with = { namesrv = "{{ params.namesrv }}", broker = "broker-a", expect = "registered" }
[[steps]]
id = "perm"
action = "rocketmq.broker_config"
with = { namesrv = "{{ params.namesrv }}", broker = "broker-b", key = "brokerPermission" }
[[steps]]
id = "readonly"
action = "rocketmq.broker_config"
with = { namesrv = "{{ params.namesrv }}", broker = "broker-b", set = { brokerPermission = "4" } }
[[steps]]
id = "writable"
action = "rocketmq.broker_config"
with = { namesrv = "{{ params.namesrv }}", broker = "broker-b", set = "{{ steps.readonly.output.previous }}" }
[[steps]]
id = "stats"
action = "rocketmq.broker_stats"
with = { namesrv = "{{ params.namesrv }}", broker = "broker-a", retention = "1h" }
[[steps]]
id = "topics"
action = "rocketmq.topic_list"
with = { namesrv = "{{ params.namesrv }}" }
[[steps]]
id = "route"
action = "rocketmq.topic_route"
with = { namesrv = "{{ params.namesrv }}", topic = "OrdersTopic" }
[[steps]]
id = "status"
action = "rocketmq.topic_status"
with = { namesrv = "{{ params.namesrv }}", topic = "OrdersTopic" }
[[steps]]
id = "lag"
action = "rocketmq.consumer_progress"
with = { namesrv = "{{ params.namesrv }}", group = "orders_group", topic = "OrdersTopic" }
until = "output.diff_total == 0"
every = "1s"
timeout = "60s"
[[steps]]
id = "upsert"
action = "rocketmq.topic_upsert"
with = { namesrv = "{{ params.namesrv }}", topic = "OrdersTopic", read_queues = 6, write_queues = 6 }
[[steps]]
id = "md5"
action = "rocketmq.commitlog_md5"
with = { dir = "{{ params.commitlog }}", count = 2 }
[[steps]]
id = "served"
action = "rocketmq.broker_topics"
with = { namesrv = "{{ params.namesrv }}", broker = "broker-a", expect = "replaceable" }
"#,
    )?;
    let commitlog = cluster.broker("broker-a")?.commitlog.display().to_string();
    let run = daemon.start_run(
        &file,
        &[("namesrv", &cluster.namesrv()), ("commitlog", &commitlog)],
    )?;
    let shown = daemon.wait_for(&run, LONG, |shown| {
        shown["state"] != "running" && shown["state"] != "waiting"
    })?;
    assert_eq!(
        shown["state"],
        "succeeded",
        "{}",
        serde_json::to_string_pretty(&shown)?
    );

    assert_eq!(
        output(&shown, "members")["broker"]["registered_everywhere"],
        true
    );
    assert_eq!(
        output(&shown, "members")["broker_names"],
        serde_json::json!(["broker-a", "broker-b"])
    );
    assert_eq!(output(&shown, "perm")["value"], "6");
    assert_eq!(
        output(&shown, "readonly")["previous"]["brokerPermission"],
        "6"
    );
    assert_eq!(
        output(&shown, "readonly")["current"]["brokerPermission"],
        "4"
    );
    assert_eq!(
        output(&shown, "writable")["current"]["brokerPermission"],
        "6"
    );
    assert_eq!(output(&shown, "stats")["has_messages"], true);
    assert!(
        output(&shown, "stats")["put_total_today"].as_i64() >= Some(1),
        "{}",
        output(&shown, "stats")
    );
    assert!(
        output(&shown, "stats")["raw"]["putTps"].is_string(),
        "{}",
        output(&shown, "stats")
    );
    assert!(
        output(&shown, "stats")["earliest_message_time_ms"]
            .as_i64()
            .is_some(),
        "{}",
        output(&shown, "stats")
    );
    assert_eq!(output(&shown, "stats")["retention_remaining"], "3600000ms");
    assert_eq!(
        output(&shown, "topics")["topics"],
        serde_json::json!(["OrdersTopic"])
    );
    assert_eq!(
        output(&shown, "route")["broker_names"],
        serde_json::json!(["broker-a", "broker-b"])
    );
    assert_eq!(output(&shown, "route")["max_write_queues"], 4);
    assert_eq!(output(&shown, "status")["total_messages"], 40);
    assert_eq!(output(&shown, "lag")["diff_total"], 0);
    let upserted = &output(&shown, "upsert")["brokers"][0];
    assert_eq!(upserted["previous"]["write_queues"], 4);
    assert_eq!(upserted["current"]["write_queues"], 6);
    assert_eq!(upserted["current"]["perm"], 6);
    assert_eq!(
        output(&shown, "served")["topics"],
        serde_json::json!(["OrdersTopic"])
    );
    Ok(())
}

#[test]
fn a_missing_broker_topic_or_namesrv_stops_the_run_naming_it() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let cases = [
        (
            "no-broker",
            r#"action = "rocketmq.broker_config"
with = { namesrv = "{{ params.namesrv }}", broker = "broker-zz", set = { brokerPermission = "4" } }"#,
            namesrv.clone(),
            "broker broker-zz is not registered",
        ),
        (
            "no-topic",
            r#"action = "rocketmq.topic_route"
with = { namesrv = "{{ params.namesrv }}", topic = "NoSuchTopic" }"#,
            namesrv.clone(),
            "topic NoSuchTopic does not exist",
        ),
        (
            "no-namesrv",
            r#"action = "rocketmq.cluster"
with = { namesrv = "{{ params.namesrv }}" }
retry = { max_attempts = 2, backoff = "100ms" }"#,
            "127.0.0.1:1".to_owned(),
            "127.0.0.1:1",
        ),
    ];
    for (name, step, namesrv, expected) in cases {
        let file = daemon.write_file(&format!("{name}.toml"), &format!("name = \"{name}\"\n[params.namesrv]\nrequired = true\n[[steps]]\nid = \"only\"\n{step}\n"))?;
        let run = daemon.start_run(&file, &[("namesrv", &namesrv)])?;
        let shown = daemon.wait_state(&run, "needs_attention", LONG)?;
        let error = step_of(&shown, "only")
            .map(|step| step["error"].to_string())
            .unwrap_or_default();
        assert!(
            error.contains(expected),
            "{name}: {error}\n{}",
            serde_json::to_string_pretty(&shown)?
        );
        assert_eq!(shown["attention"]["step"], "only", "{name}");
    }
    Ok(())
}

#[test]
fn a_lag_query_that_fails_fails_the_poll_instead_of_reading_as_no_lag() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    cluster.create_topic("LagTopic", &["broker-a", "broker-b"], 2)?;
    let producer = cluster.producer()?;
    let mut consumer = cluster.consumer("lag_group", "LagTopic")?;
    let first = producer.send_keyed("LagTopic", "first", 20)?;
    consumer.wait_keys(&first, LONG)?;
    consumer.shutdown();
    // Messages the group has not read: lag on both brokers.
    let unread = producer.send_keyed("LagTopic", "unread", 20)?;
    assert_eq!(unread.len(), 20);
    // broker-b stops answering but stays registered: the NameServer still routes to it.
    cluster.freeze_broker("broker-b", true)?;
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "lag.toml",
        r#"
name = "lag"
[params.namesrv]
required = true
[[steps]]
id = "progress"
action = "rocketmq.consumer_progress"
with = { namesrv = "{{ params.namesrv }}", group = "lag_group", topic = "LagTopic" }
"#,
    )?;
    let run = daemon.start_run(&file, &[("namesrv", &cluster.namesrv())])?;
    let shown = daemon.wait_for(&run, LONG, |shown| {
        shown["state"] != "running" && shown["state"] != "pending"
    })?;
    cluster.freeze_broker("broker-b", false)?;
    assert_ne!(
        shown["state"], "succeeded",
        "an unanswered lag query read as a result: {shown}"
    );
    let error = shown.to_string();
    assert!(error.contains("lag_group"), "{shown}");
    Ok(())
}

#[test]
fn a_lost_retry_topic_query_fails_the_poll_instead_of_hiding_the_retry_lag() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("RetryLagTopic", &["broker-a"], 2)?;
    let producer = cluster.producer()?;
    let mut consumer = cluster.consumer("retry_group", "RetryLagTopic")?;
    let read = producer.send_keyed("RetryLagTopic", "read", 20)?;
    consumer.wait_keys(&read, LONG)?;
    consumer.shutdown();
    // The group's retry topic (its consumer's subscription made it) holds messages the group
    // has not read: lag that only the `%RETRY%` query sees.
    let retry = "%RETRY%retry_group";
    anyhow::ensure!(
        cluster.route_brokers(retry)? == ["broker-a"],
        "the consumer did not make {retry}"
    );
    // The Rust broker 1.0.0 sends a message for a retry topic to the dead-letter queue unless
    // its group holds a queue lock (an inverted check): a lock of 60 s lets them in.
    let broker = cluster.broker("broker-a")?.addr.clone();
    let lock = serde_json::json!({
        "consumerGroup": "retry_group",
        "clientId": "harness-lock",
        "onlyThisBroker": true,
        "mqSet": [{ "topic": "RetryLagTopic", "brokerName": "broker-a", "queueId": 0 }],
    });
    let (code, remark, _) = remoting::call(
        &broker,
        LOCK_BATCH_MQ,
        serde_json::json!({}),
        &serde_json::to_vec(&lock)?,
    )?;
    anyhow::ensure!(code == 0, "locking a queue of retry_group: {code} {remark}");
    let unread = producer.send_keyed(retry, "retry", 10)?;
    assert_eq!(unread.len(), 10);

    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "retry_lag.toml",
        r#"
name = "retry_lag"
[params.namesrv]
required = true
[[steps]]
id = "progress"
action = "rocketmq.consumer_progress"
with = { namesrv = "{{ params.namesrv }}", group = "retry_group", topic = "RetryLagTopic" }
"#,
    )?;
    let finished = |shown: &Value| shown["state"] != "running" && shown["state"] != "pending";
    // Answered: the lag is the retry topic's 10 messages.
    let run = daemon.start_run(&file, &[("namesrv", &cluster.namesrv())])?;
    let shown = daemon.wait_for(&run, LONG, finished)?;
    assert_eq!(shown["state"], "succeeded", "{shown}");
    assert_eq!(output(&shown, "progress")["diff_total"], 10, "{shown}");

    // The same poll where the broker loses every consume-stats request on the retry topic (the
    // client's timeout) and answers every other one.
    let lossy = RemotingProxy::broker(&broker, move |request| {
        request.code == GET_CONSUME_STATS && request.mentions(retry)
    })?;
    let namesrv = RemotingProxy::namesrv(&cluster.namesrv(), &broker, &lossy.addr)?;
    let run = daemon.start_run(&file, &[("namesrv", &namesrv.addr)])?;
    let shown = daemon.wait_for(&run, LONG, finished)?;
    assert!(
        lossy.lost() >= 1,
        "no retry-topic query reached the proxy: {shown}"
    );
    assert_ne!(
        shown["state"],
        "succeeded",
        "a lost retry-topic query read as no lag, hiding {} unread message(s): {shown}",
        unread.len()
    );
    let error = step_of(&shown, "progress")
        .map(|step| step["error"].to_string())
        .unwrap_or_default();
    assert!(
        error.contains("retry_group") && error.contains(retry),
        "{error}\n{shown}"
    );
    Ok(())
}

/// The min offset of queue 0 of `topic` on broker `key`.
fn min_offset(cluster: &Cluster, key: &str, topic: &str) -> Result<i64> {
    let addr = cluster.broker(key)?.addr.clone();
    let topic = topic.to_owned();
    cluster.with_admin(&cluster.namesrv(), |admin| async move {
        let stats = admin
            .examine_topic_stats(
                CheetahString::from(topic.as_str()),
                Some(CheetahString::from(addr.as_str())),
            )
            .await
            .map_err(|error| anyhow!("stats of {topic} on {addr}: {error}"))?;
        stats
            .get_offset_table()
            .iter()
            .find(|(queue, _)| queue.queue_id() == 0)
            .map(|(_, offset)| offset.get_min_offset())
            .ok_or_else(|| anyhow!("{topic} has no queue 0 on {addr}"))
    })
}

#[test]
fn expired_messages_are_no_lag_only_what_the_group_can_still_read_is() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    // fileReservedTime=0: every commitlog file but the one being written has expired, and a
    // manual delete request (deleteExpiredCommitLog) removes them at the broker's next clean-up
    // (every 10 s), which then raises the consume queues' min offsets. deleteFileBatchMax: the
    // Rust broker 1.0.0 defaults it to 0, and then refuses every delete.
    let broker = cluster.broker("broker-a")?.clone();
    let config = std::fs::read_to_string(&broker.config)?;
    anyhow::ensure!(config.contains("fileReservedTime=72\n"), "{config}");
    std::fs::write(
        &broker.config,
        config.replace(
            "fileReservedTime=72\n",
            "fileReservedTime=0\ndeleteFileBatchMax=10\n",
        ),
    )?;
    cluster.stop_broker("broker-a")?;
    cluster.start_broker("broker-a")?;
    cluster.wait_registered("broker-a", LONG)?;
    cluster.create_topic("ExpireTopic", &["broker-a"], 1)?;
    let producer = cluster.producer()?;
    let mut consumer = cluster.consumer("expire_group", "ExpireTopic")?;
    let read = producer.send_keyed("ExpireTopic", "read", 5)?;
    consumer.wait_keys(&read, LONG)?;
    consumer.shutdown();
    // 600 messages of 4000 bytes the group never reads: about 2.4 commitlog files of 1 MiB.
    let unread = producer.send_keyed_sized("ExpireTopic", "unread", 600, 4000)?;
    assert_eq!(unread.len(), 600);
    let addr = broker.addr.clone();
    cluster.with_admin(&cluster.namesrv(), |admin| async move {
        admin
            .delete_expired_commit_log_by_addr(CheetahString::from(addr.as_str()))
            .await
            .map_err(|error| anyhow!("deleting the expired commitlog of {addr}: {error}"))
    })?;
    // The clean-up deletes the expired files over more than one round (one every 10 s): the
    // min offset is taken once it has risen and then held for three rounds, when every file
    // but the one being written is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut held: Option<(i64, std::time::Instant)> = None;
    let min = loop {
        let min = min_offset(&cluster, "broker-a", "ExpireTopic")?;
        match held {
            Some((before, since)) if before == min => {
                if since.elapsed() >= Duration::from_secs(30) {
                    break min;
                }
            }
            _ => {
                if min > 5 {
                    held = Some((min, std::time::Instant::now()));
                }
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the min offset of ExpireTopic is {min} (held since {:?}): the expired commitlog files were not deleted",
            held.map(|(_, since)| since.elapsed())
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // What the group can still read: the messages from the min offset on.
    let readable = 605 - min;
    assert!(readable > 0 && readable < 600, "min offset {min}");

    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "expired.toml",
        r#"
name = "expired"
[params.namesrv]
required = true
[[steps]]
id = "progress"
action = "rocketmq.consumer_progress"
with = { namesrv = "{{ params.namesrv }}", group = "expire_group", topic = "ExpireTopic" }
"#,
    )?;
    let run = daemon.start_run(&file, &[("namesrv", &cluster.namesrv())])?;
    let shown = daemon.wait_for(&run, LONG, |shown| {
        shown["state"] != "running" && shown["state"] != "pending"
    })?;
    assert_eq!(shown["state"], "succeeded", "{shown}");
    let progress = output(&shown, "progress");
    let queue = progress["groups"][0]["queues"]
        .as_array()
        .and_then(|queues| {
            queues
                .iter()
                .find(|queue| queue["topic"] == "ExpireTopic" && queue["queue_id"] == 0)
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(queue["consumer_offset"], 5, "{progress}");
    assert_eq!(queue["broker_offset"], 605, "{progress}");
    assert_eq!(queue["min_offset"], min, "{progress}");
    assert_eq!(
        progress["diff_total"], readable,
        "the lag must count only the {readable} message(s) still readable, not the {} expired ones: {progress}",
        min - 5
    );

    // That lag is exactly what the group consumes when it comes back: the last `readable` keys.
    let back = cluster.consumer("expire_group", "ExpireTopic")?;
    let expected = &unread[unread.len() - readable as usize..];
    back.wait_keys(expected, LONG)?;
    std::thread::sleep(Duration::from_secs(2));
    let received: Vec<String> = back
        .keys()
        .into_iter()
        .filter(|key| key.starts_with("unread-"))
        .collect();
    assert_eq!(received.len() as i64, readable, "{received:?}");
    Ok(())
}
