//! `runbook plan --check` against a real cluster: the read-only steps run and show what they
//! read, the mutating steps show the real current values and the would-be ones, and afterwards
//! the cluster, the broker's config file and the daemon are as they were (no run, nothing
//! changed). A read-only step whose target does not answer shows its error, exit code 8.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Result};
use cheetah_string::CheetahString;
use rocketmq_client_rust::{ConsumerAdmin as _, TopicAdmin as _};
use runbook_tests::cluster::Cluster;
use runbook_tests::Daemon;
use serde_json::Value;

/// `(read queues, write queues, perm)` of `topic` on each broker, read from the brokers.
fn topic_configs(
    cluster: &Cluster,
    topic: &str,
    brokers: &[&str],
) -> Result<BTreeMap<String, (u32, u32, u32)>> {
    let mut out = BTreeMap::new();
    for name in brokers {
        let addr = cluster.broker(name)?.addr.clone();
        let topic = topic.to_owned();
        let config = cluster.with_admin(&cluster.namesrv(), |admin| async move {
            let wrapper = admin
                .get_all_topic_config(CheetahString::from(addr.as_str()), 5000)
                .await
                .map_err(|error| anyhow!("topic configs of {addr}: {error}"))?;
            let table = wrapper.topic_config_table().cloned().unwrap_or_default();
            table
                .get(&CheetahString::from(topic.as_str()))
                .map(|config| (config.read_queue_nums, config.write_queue_nums, config.perm))
                .ok_or_else(|| anyhow!("{addr} has no topic {topic}"))
        })?;
        out.insert(name.to_string(), config);
    }
    Ok(out)
}

/// The consumer offsets of `group` on `topic`, per `(broker, queue)`, read from the brokers.
fn group_offsets(
    cluster: &Cluster,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<(String, i32), i64>> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    cluster.with_admin(&cluster.namesrv(), |admin| async move {
        let stats = admin
            .examine_consume_stats(
                CheetahString::from(group.as_str()),
                Some(CheetahString::from(topic.as_str())),
                None,
                None,
                Some(5000),
            )
            .await
            .map_err(|error| anyhow!("progress of {group}: {error}"))?;
        Ok(stats
            .offset_table
            .iter()
            .map(|(queue, offset)| {
                (
                    (queue.broker_name().to_string(), queue.queue_id()),
                    offset.get_consumer_offset(),
                )
            })
            .collect())
    })
}

fn check_of<'a>(plan: &'a Value, key: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|step| step["key"] == key))
        .map(|step| &step["check"])
        .unwrap_or(&Value::Null)
}

/// The change whose `what` ends with `suffix`.
fn change<'a>(check: &'a Value, suffix: &str) -> Option<&'a Value> {
    check["preview"]["changes"]
        .as_array()?
        .iter()
        .find(|change| {
            change["what"]
                .as_str()
                .is_some_and(|what| what.ends_with(suffix))
        })
}

fn plan(
    daemon: &Daemon,
    runbook: &str,
    params: &[(&str, &str)],
    json: bool,
) -> Result<(i32, String, String)> {
    let mut args: Vec<String> = Vec::new();
    if json {
        args.push("--json".to_owned());
    }
    args.extend(["plan".to_owned(), runbook.to_owned(), "--check".to_owned()]);
    for (key, value) in params {
        args.push("-p".to_owned());
        args.push(format!("{key}={value}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = daemon.cli(&refs)?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// No run exists and no check directory was left behind.
fn assert_nothing_kept(daemon: &Daemon) -> Result<()> {
    let runs = daemon.json(&["ps", "--all"])?;
    let listed = runs
        .get("runs")
        .and_then(Value::as_array)
        .or_else(|| runs.as_array())
        .map_or(0, Vec::len);
    assert_eq!(listed, 0, "a check created a run: {runs}");
    let pid = daemon.pid().expect("the daemon runs");
    let prefix = format!("runbook-check-{pid}-");
    let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "check directories left behind: {left:?}");
    Ok(())
}

#[test]
fn check_shows_real_values_and_would_be_ones_and_changes_nothing() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a", "broker-b", "broker-c"])?;
    let brokers = ["broker-a", "broker-b", "broker-c"];
    cluster.create_topic("CheckTopic", &brokers, 4)?;
    cluster.create_topic("OnlyOnA", &["broker-a"], 3)?;
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let topics_before = topic_configs(&cluster, "CheckTopic", &brokers)?;
    assert_eq!(topics_before["broker-a"], (4, 4, 6));

    // Shrinking the topic: its real queue counts now, the would-be ones.
    let params = [
        ("namesrv", namesrv.as_str()),
        ("topic", "CheckTopic"),
        ("queues", "2"),
    ];
    let (code, stdout, stderr) = plan(&daemon, "rocketmq.topic.shrink_queues", &params, true)?;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let checked: Value = serde_json::from_str(&stdout)?;
    let before = check_of(&checked, "before");
    assert_eq!(before["status"], "read", "{before}");
    assert_eq!(
        before["output"]["by_broker"]["broker-b"]["write_queues"], 4,
        "{before}"
    );
    let shrink_write = check_of(&checked, "shrink_write");
    assert_eq!(shrink_write["status"], "would_change", "{shrink_write}");
    for broker in brokers {
        let write = change(shrink_write, &format!("on broker {broker}: write_queues"))
            .unwrap_or_else(|| panic!("no write_queues change on {broker}: {shrink_write}"));
        assert_eq!(
            (write["before"].clone(), write["after"].clone()),
            (4.into(), 2.into())
        );
    }
    // Phase 1 keeps the read queues: no change of them is announced.
    assert!(
        change(shrink_write, "read_queues").is_none(),
        "{shrink_write}"
    );
    let write_routed = check_of(&checked, "write_routed");
    assert_eq!(write_routed["status"], "read", "{write_routed}");
    assert_eq!(write_routed["until"], false, "{write_routed}");
    let drained = check_of(&checked, "drained");
    assert_eq!(drained["status"], "pending", "{drained}");
    assert!(
        drained["note"]
            .as_str()
            .is_some_and(|note| note.contains("steps.shrink_write")),
        "{drained}"
    );
    // Phase 2 on the topic as it is now (4 write queues) would strand messages; phase 1 changes
    // that first, so it is not a failure of the check.
    let shrink_read = check_of(&checked, "shrink_read");
    assert_eq!(shrink_read["status"], "may_fail", "{shrink_read}");
    assert!(
        shrink_read["note"]
            .as_str()
            .is_some_and(|note| note.contains("`shrink_write` would change it first")),
        "{shrink_read}"
    );
    assert_eq!(checked["check"]["failed"], 0, "{stdout}");

    // The text form says the same: `check:` lines and a summary.
    let (code, text, stderr) = plan(&daemon, "rocketmq.topic.shrink_queues", &params, false)?;
    assert_eq!(code, 0, "{text}\n{stderr}");
    println!("{text}");
    assert!(
        text.contains("check: topic CheckTopic on broker broker-a: write_queues: 4 → 2"),
        "{text}"
    );
    assert!(
        text.contains("\ncheck: 6 step(s) read, 1 would change"),
        "{text}"
    );

    // Decommissioning broker-c: its real registration and permission, the would-be ones.
    let broker_c = cluster.broker("broker-c")?.clone();
    let config_c = broker_c.config.display().to_string();
    let file_before = std::fs::read_to_string(&broker_c.config)?;
    let stop_command = cluster.stop_command();
    let params = [
        ("namesrv", namesrv.as_str()),
        ("cluster", "TestCluster"),
        ("broker", "broker-c"),
        ("broker_config", config_c.as_str()),
        ("retention", "1s"),
        ("route_refresh", "1s"),
        ("stop_command", stop_command.as_str()),
    ];
    let (code, stdout, stderr) = plan(&daemon, "rocketmq.broker.decommission", &params, true)?;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let checked: Value = serde_json::from_str(&stdout)?;
    let registered = check_of(&checked, "registered");
    assert_eq!(registered["status"], "read", "{registered}");
    assert_eq!(
        registered["output"]["broker"]["registered_everywhere"], true,
        "{registered}"
    );
    let read_only = check_of(&checked, "read_only");
    let permission = change(read_only, "brokerPermission").expect("a brokerPermission change");
    assert_eq!(
        (permission["before"].clone(), permission["after"].clone()),
        ("6".into(), "4".into()),
        "{read_only}"
    );
    let persist = check_of(&checked, "persist_read_only[0].file");
    assert_eq!(persist["status"], "would_change", "{persist}");
    assert!(change(persist, ": brokerPermission").is_some_and(|change| change["after"] == "4"));
    assert_eq!(check_of(&checked, "approve")["status"], "described");
    let stop = check_of(&checked, "stop[0].command");
    assert_eq!(stop["status"], "would_change", "{stop}");
    let would_run = stop["preview"]["runs"].as_str().unwrap_or_default();
    assert!(
        would_run.contains("broker-c") && would_run.contains("stop"),
        "{stop}"
    );
    let target = change(stop, &format!("broker broker-c ({})", broker_c.addr))
        .unwrap_or_else(|| panic!("the broker the stop command stops: {stop}"));
    assert!(
        target["before"].as_str().is_some_and(
            |before| before.starts_with("registered") && before.contains(&broker_c.addr)
        ),
        "{stop}"
    );
    assert_eq!(target["after"], "stopped by the command", "{stop}");
    let gone = check_of(&checked, "gone");
    assert_eq!(
        (gone["status"].clone(), gone["until"].clone()),
        ("read".into(), false.into())
    );
    let (code, text, _) = plan(&daemon, "rocketmq.broker.decommission", &params, false)?;
    println!("{text}");
    assert_eq!(code, 0);

    // Moving every broker to the same NameServer: the loop over the masters the check read is
    // checked broker by broker; the config files already name it, the commands would run.
    let config_template = cluster.config_template();
    let start_command = cluster.start_command();
    let params = [
        ("namesrv", namesrv.as_str()),
        ("new_namesrv", namesrv.as_str()),
        ("cluster", "TestCluster"),
        ("broker_config", config_template.as_str()),
        ("stop_command", stop_command.as_str()),
        ("start_command", start_command.as_str()),
    ];
    let (code, stdout, stderr) = plan(&daemon, "rocketmq.namesrv.migrate", &params, true)?;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let checked: Value = serde_json::from_str(&stdout)?;
    assert_eq!(
        check_of(&checked, "roll")["status"],
        "described",
        "{stdout}"
    );
    for index in 0..3 {
        let write = check_of(&checked, &format!("roll[{index}].write_namesrv"));
        assert_eq!(write["status"], "unchanged", "{write}");
        let start = check_of(&checked, &format!("roll[{index}].start"));
        assert_eq!(start["status"], "would_change", "{start}");
        let stop = check_of(&checked, &format!("roll[{index}].stop"));
        assert!(
            change(stop, ")").is_some_and(|change| change["before"]
                .as_str()
                .is_some_and(|before| before.starts_with("registered on namesrv"))),
            "{stop}"
        );
        let registered = check_of(&checked, &format!("roll[{index}].registered"));
        assert_eq!(
            (registered["status"].clone(), registered["until"].clone()),
            ("read".into(), true.into()),
            "{registered}"
        );
    }
    let (_, text, _) = plan(&daemon, "rocketmq.namesrv.migrate", &params, false)?;
    println!("{text}");

    // Scaling out to broker-b from broker-a: the topic only broker-a serves would be copied,
    // the one both serve alike would not.
    let params = [
        ("namesrv", namesrv.as_str()),
        ("broker", "broker-b"),
        ("source_broker", "broker-a"),
    ];
    let (code, stdout, stderr) = plan(&daemon, "rocketmq.broker.scale_out", &params, true)?;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let checked: Value = serde_json::from_str(&stdout)?;
    let copy = check_of(&checked, "copy");
    let only_a = change(copy, "topic OnlyOnA on broker broker-b (from broker-a)")
        .unwrap_or_else(|| panic!("OnlyOnA would be copied: {copy}"));
    assert_eq!(only_a["before"], Value::Null, "{copy}");
    assert_eq!(
        (
            only_a["after"]["read_queues"].clone(),
            only_a["after"]["perm"].clone()
        ),
        (3.into(), 6.into())
    );
    assert!(
        change(copy, "topic CheckTopic on broker broker-b (from broker-a)").is_none(),
        "{copy}"
    );
    // The route check reads which brokers the copy took from: not run by the check.
    let routes = check_of(&checked, "routes");
    assert_eq!(routes["status"], "pending", "{routes}");
    assert!(
        routes["note"]
            .as_str()
            .is_some_and(|note| note.contains("`steps.copy`")),
        "{routes}"
    );
    assert!(
        topic_configs(&cluster, "OnlyOnA", &["broker-b"]).is_err(),
        "OnlyOnA was copied"
    );

    // Nothing changed: topics, broker permission, config file; broker-c still registered.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        topic_configs(&cluster, "CheckTopic", &brokers)?,
        topics_before
    );
    assert_eq!(
        cluster
            .broker_config("broker-c", "brokerPermission")?
            .as_deref(),
        Some("6")
    );
    assert_eq!(std::fs::read_to_string(&broker_c.config)?, file_before);
    assert!(cluster
        .registered_on(&namesrv)?
        .iter()
        .any(|name| name == "broker-c"));
    assert_nothing_kept(&daemon)?;
    Ok(())
}

#[test]
fn an_offset_reset_check_shows_each_queue_now_and_where_it_would_go() -> Result<()> {
    let cluster = Cluster::start(1, &["broker-a"])?;
    cluster.create_topic("ReplayCheck", &["broker-a"], 2)?;
    cluster.producer()?.send("ReplayCheck", 20)?;
    let mut consumer = cluster.consumer("replay_check", "ReplayCheck")?;
    consumer.wait_received(20, Duration::from_secs(120))?;
    // Let the consumer persist its offsets, then stop it (an offline group).
    std::thread::sleep(Duration::from_secs(6));
    consumer.shutdown();
    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let offsets_before = group_offsets(&cluster, "replay_check", "ReplayCheck")?;
    assert_eq!(
        offsets_before.values().sum::<i64>(),
        20,
        "{offsets_before:?}"
    );

    let params = [
        ("namesrv", namesrv.as_str()),
        ("group", "replay_check"),
        ("topic", "ReplayCheck"),
        ("timestamp", "0"),
    ];
    let (code, stdout, stderr) = plan(&daemon, "rocketmq.consumer.reset_offset", &params, true)?;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let checked: Value = serde_json::from_str(&stdout)?;
    let reset = check_of(&checked, "reset");
    assert_eq!(reset["status"], "would_change", "{reset}");
    for ((broker, queue), offset) in &offsets_before {
        let moved = change(reset, &format!("broker {broker} queue {queue}: offset"))
            .unwrap_or_else(|| panic!("no change of queue {queue}: {reset}"));
        assert_eq!(
            (moved["before"].clone(), moved["after"].clone()),
            ((*offset).into(), 0.into()),
            "{reset}"
        );
    }
    assert_eq!(check_of(&checked, "before")["status"], "read");
    let (_, text, _) = plan(&daemon, "rocketmq.consumer.reset_offset", &params, false)?;
    println!("{text}");

    assert_eq!(
        group_offsets(&cluster, "replay_check", "ReplayCheck")?,
        offsets_before
    );
    assert_nothing_kept(&daemon)?;
    Ok(())
}

#[test]
fn a_read_only_step_whose_target_does_not_answer_shows_its_error() -> Result<()> {
    let daemon = Daemon::start()?;
    // A NameServer address nothing listens on.
    let nowhere = format!("127.0.0.1:{}", runbook_tests::free_port()?);
    let params = [
        ("namesrv", nowhere.as_str()),
        ("topic", "CheckTopic"),
        ("queues", "2"),
    ];
    let (code, stdout, stderr) = plan(&daemon, "rocketmq.topic.shrink_queues", &params, true)?;
    assert_eq!(code, 8, "{stdout}\n{stderr}");
    let checked: Value = serde_json::from_str(&stdout)?;
    let before = check_of(&checked, "before");
    assert_eq!(before["status"], "failed", "{before}");
    assert!(
        before["error"]
            .as_str()
            .is_some_and(|error| error.contains(&nowhere)),
        "{before}"
    );
    assert!(checked["check"]["failed"]
        .as_u64()
        .is_some_and(|failed| failed >= 1));
    let (code, text, _) = plan(&daemon, "rocketmq.topic.shrink_queues", &params, false)?;
    println!("{text}");
    assert_eq!(code, 8);
    assert!(text.contains("check: FAILED: "), "{text}");
    assert!(text.contains("a run would stop at `backup`"), "{text}");
    // A run has no check mode.
    let body = serde_json::json!({"runbook": "rocketmq.topic.shrink_queues", "params": {"namesrv": nowhere, "topic": "T", "queues": 2}, "check": true});
    let refused = daemon.api("POST", "/v1/runs", Some(body.to_string().as_bytes()))?;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_nothing_kept(&daemon)?;
    Ok(())
}
