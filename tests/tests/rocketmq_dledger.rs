//! `rocketmq.group.to_dledger` against commitlogs a real Rust broker 1.0.0 wrote, up to its
//! start gate (the Rust broker refuses every DLedger key, so the start and the election need a
//! Java RocketMQ 4.5+ broker and are not run here).
//!
//! The Rust 1.0.0 slave does not replicate (`rocketmq_replicas.rs`): the slave's log is made by
//! the test as replication would have left it, a copy of the master's files taken while both were
//! stopped; then the slave is started again on it and the master receives more messages, so the
//! master's log is the longer one, as after a slave that fell behind. Every byte of both logs was
//! written by the broker.
//!
//! The master's and the third node's files are reached over ssh (a real sshd on 127.0.0.1, the
//! same file system), the slave's on the daemon's host: copies go remote → local and remote →
//! remote, and every step's output names the host it read or wrote.
//!
//! Each typed check has a case that makes it fail: the align refusing a copy that would shrink a
//! log, files holding less than the broker reported, and two logs that disagree; the md5
//! comparison of logs that differ; the config-directory copy over a differing file; the DLedger
//! configs with a duplicate self id; a DLedger config whose self id is not a peer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use runbook_tests::cluster::Cluster;
use runbook_tests::{step_of, Daemon, Sshd};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(120);
const PEERS: &str = "n0-127.0.0.1:40911;n1-127.0.0.1:40912;n2-127.0.0.1:40913";

/// Every commitlog file of a directory: name → bytes.
fn commitlog(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.chars().all(|c| c.is_ascii_digit()) {
            files.insert(name, std::fs::read(entry.path())?);
        }
    }
    Ok(files)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Bytes up to the last non-zero one, over all files (what the broker wrote).
fn written(files: &BTreeMap<String, Vec<u8>>) -> usize {
    files
        .values()
        .map(|data| {
            data.iter()
                .rposition(|byte| *byte != 0)
                .map_or(0, |at| at + 1)
        })
        .sum()
}

fn property(path: &Path, key: &str) -> Result<Option<String>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(text.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        (name.trim() == key).then(|| value.trim().to_owned())
    }))
}

/// A value as TOML (inline tables, arrays, JSON-compatible strings).
fn toml(value: &Value) -> String {
    match value {
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(key, value)| format!("{} = {}", Value::from(key.as_str()), toml(value)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// Runs a one-step runbook calling `action` with `with`; returns the step once the run ended or
/// stopped for the operator.
fn one_step(daemon: &Daemon, name: &str, action: &str, with: Value) -> Result<Value> {
    let file = daemon.write_file(
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\n[[steps]]\nid = \"s\"\naction = \"{action}\"\nwith = {}\n",
            toml(&with)
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_for(&run, LONG, |shown| {
        matches!(
            shown["state"].as_str(),
            Some("succeeded" | "failed" | "needs_attention")
        )
    })?;
    let step = step_of(&shown, "s").cloned().context("step s")?;
    Ok(json!({"state": shown["state"], "step": step}))
}

fn refused(result: &Value, words: &str) -> Result<()> {
    let error = result["step"]["error"].as_str().unwrap_or_default();
    ensure!(
        result["state"] != "succeeded" && error.contains(words),
        "expected a refusal naming {words:?}, got {result:#}"
    );
    Ok(())
}

#[test]
fn converts_a_master_slave_group_up_to_the_start_gate() -> Result<()> {
    let cluster = Cluster::start_groups(1, &["broker-a"], 1)?;
    let master = cluster.broker("broker-a")?.clone();
    let slave = cluster.broker("broker-a-s1")?.clone();
    cluster.create_topic("DlTopic", &["broker-a"], 4)?;
    let producer = cluster.producer()?;
    // About 1.4 MiB: the 1 MiB commitlog files roll over at least once.
    let first = producer.send_keyed_sized("DlTopic", "first", 700, 2000)?;
    ensure!(
        first.len() == 700,
        "{} of 700 sends acknowledged",
        first.len()
    );

    // Both stopped; the slave's log made as replication would have left it; both started again.
    cluster.stop_broker("broker-a-s1")?;
    cluster.stop_broker("broker-a")?;
    copy_dir(&master.commitlog, &slave.commitlog)?;
    cluster.start_broker("broker-a")?;
    cluster.start_broker("broker-a-s1")?;
    cluster.wait_registered_replica("broker-a", LONG)?;
    cluster.wait_registered_replica("broker-a-s1", LONG)?;
    // The slave fell behind: only the master gets these.
    let second = producer.send_keyed_sized("DlTopic", "second", 300, 2000)?;
    ensure!(
        second.len() == 300,
        "{} of 300 sends acknowledged",
        second.len()
    );
    drop(producer);

    let work = cluster.dir.join("dledger-work");
    let third_store = cluster.dir.join("third/store");
    let dledger_dir = cluster.dir.join("conf-dledger");
    let master_store = master.commitlog.parent().context("store")?.to_owned();
    let slave_store = slave.commitlog.parent().context("store")?.to_owned();
    let sshd = Sshd::start()?;
    let mut daemon = Daemon::start()?;
    let stop_command = format!(
        "sh {}/addr/{{{{ broker_addr }}}}/stop.sh && sleep 3",
        cluster.dir.display()
    );
    let start_marker = work.join("started");
    let start_command = format!("touch {}", start_marker.display());
    let params: Vec<(&str, String)> = vec![
        ("namesrv", cluster.namesrv()),
        ("cluster", cluster.name.clone()),
        ("broker", "broker-a".to_owned()),
        ("master_addr", master.addr.clone()),
        ("slave_addr", slave.addr.clone()),
        ("master_store", master_store.display().to_string()),
        ("slave_store", slave_store.display().to_string()),
        ("third_store", third_store.display().to_string()),
        ("master_config", master.config.display().to_string()),
        ("slave_config", slave.config.display().to_string()),
        ("master_host", sshd.host.clone()),
        ("third_host", sshd.host.clone()),
        ("ssh_identity_file", sshd.user_key.display().to_string()),
        ("ssh_known_hosts", sshd.known_hosts.display().to_string()),
        ("third_broker_ip", "127.0.0.1".to_owned()),
        ("third_listen_port", "30931".to_owned()),
        ("dledger_dir", dledger_dir.display().to_string()),
        ("peers", PEERS.to_owned()),
        ("stop_command", stop_command),
        ("start_command", start_command),
    ];
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // The plan shows the whole procedure before anything runs.
    let mut plan_args = vec!["plan".to_owned(), "rocketmq.group.to_dledger".to_owned()];
    for (key, value) in &params {
        plan_args.push("-p".to_owned());
        plan_args.push(format!("{key}={value}"));
    }
    let plan_args: Vec<&str> = plan_args.iter().map(String::as_str).collect();
    let plan = daemon.cli(&plan_args)?;
    let plan_text = String::from_utf8_lossy(&plan.stdout).into_owned();
    ensure!(
        plan.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let steps = [
        "backup",
        "members",
        "master_offset",
        "slave_offset",
        "stop_slave",
        "stop_master",
        "stopped",
        "md5_before",
        "align",
        "md5_after",
        "copy_config",
        "config_n0",
        "config_n1",
        "config_n2",
        "configs_checked",
        "start_gate",
        "start_n0",
        "start_n1",
        "start_n2",
        "elected",
    ];
    let mut at = 0;
    for step in steps {
        let found = plan_text[at..]
            .find(step)
            .with_context(|| format!("step {step} not in order in the plan:\n{plan_text}"))?;
        at += found;
    }

    let master_before = commitlog(&master.commitlog)?;
    let slave_before = commitlog(&slave.commitlog)?;
    ensure!(
        written(&master_before) > written(&slave_before),
        "the master's log is not the longer"
    );

    let run = daemon.start_run("rocketmq.group.to_dledger", &params)?;
    // kill -9 while the master's stop command runs; the run resumes without running a step twice.
    daemon.wait_step(&run, "stop_master", "running", LONG)?;
    daemon.kill9();
    daemon.restart()?;
    let shown = daemon.wait_step(&run, "start_gate", "waiting", Duration::from_secs(180))?;

    for step in shown["steps"].as_array().into_iter().flatten() {
        if step["state"] == "succeeded" {
            ensure!(step["attempts"] == 1, "step ran more than once: {step:#}");
        }
    }
    ensure!(
        !start_marker.exists(),
        "a start command ran before the gate"
    );
    for id in ["start_n0", "start_n1", "start_n2", "elected"] {
        let step = step_of(&shown, id).context(id)?;
        ensure!(step["state"] == "pending", "{id} is not pending: {step:#}");
    }
    let stop_log = daemon.step_log(&run, "stop_master");
    ensure!(
        stop_log.matches("stopped (pid").count() == 1,
        "the master's stop command did not run exactly once:\n{stop_log}"
    );

    // md5s before: they differ, and the master's log is the longer.
    let before = &step_of(&shown, "md5_before").context("md5_before")?["output"];
    ensure!(before["equal"] == false, "{before:#}");
    ensure!(before["longest"] == "master", "{before:#}");
    let reported_master = step_of(&shown, "master_offset").context("offset")?["output"]
        ["commit_log_max_offset"]
        .as_u64()
        .context("master max offset")?;
    ensure!(
        before["valid_ends"]["master"].as_u64() >= Some(reported_master),
        "master's files end below what it reported ({reported_master}): {before:#}"
    );
    // The copy went from the master (longer) to the slave and the third node.
    let align = &step_of(&shown, "align").context("align")?["output"];
    ensure!(align["source"]["node"] == "master", "{align:#}");
    // Read from the master over ssh, written to the slave here and to the third node over ssh.
    ensure!(align["source"]["host"] == sshd.host.as_str(), "{align:#}");
    for (node, host) in [
        ("slave", Value::Null),
        ("third", Value::from(sshd.host.as_str())),
    ] {
        let target = align["targets"]
            .as_array()
            .and_then(|targets| targets.iter().find(|target| target["node"] == node))
            .with_context(|| format!("{node} target: {align:#}"))?;
        ensure!(target["host"] == host, "{node}: {target:#}");
    }
    ensure!(
        before["nodes"]["master"]["host"] == sshd.host.as_str(),
        "{before:#}"
    );
    ensure!(before["nodes"]["slave"]["host"].is_null(), "{before:#}");
    let copy_config = &step_of(&shown, "copy_config").context("copy_config")?["output"];
    ensure!(
        copy_config["source_host"] == sshd.host.as_str()
            && copy_config["target_host"] == sshd.host.as_str(),
        "{copy_config:#}"
    );
    let n2 = &step_of(&shown, "config_n2").context("config_n2")?["output"];
    ensure!(
        n2["host"] == sshd.host.as_str() && n2["base_host"] == sshd.host.as_str(),
        "{n2:#}"
    );
    let n1 = &step_of(&shown, "config_n1").context("config_n1")?["output"];
    ensure!(n1["host"].is_null(), "{n1:#}");
    let sessions = sshd.log().matches("Accepted publickey").count();
    ensure!(
        sessions >= 10,
        "only {sessions} ssh sessions for the nodes' files:\n{}",
        sshd.log()
    );
    let slave_target = align["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|target| target["node"] == "slave"))
        .context("slave target")?;
    ensure!(
        !slave_target["copied"].as_array().is_none_or(Vec::is_empty),
        "{align:#}"
    );
    // md5s after: equal, and byte for byte: the master's files untouched (copying the other way
    // would have lost the second batch), the slave's and the third node's equal to them.
    let after = &step_of(&shown, "md5_after").context("md5_after")?["output"];
    ensure!(after["equal"] == true, "{after:#}");
    let master_after = commitlog(&master.commitlog)?;
    ensure!(
        master_after == master_before,
        "the master's commitlog changed"
    );
    ensure!(
        commitlog(&slave.commitlog)? == master_before,
        "the slave's commitlog is not the master's"
    );
    ensure!(
        commitlog(&third_store.join("commitlog"))? == master_before,
        "the third node's commitlog is not the master's"
    );
    // The third node got the master's config directory.
    let master_config_dir = master_store.join("config");
    let mut config_files = 0;
    for entry in std::fs::read_dir(&master_config_dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let copied = std::fs::read(third_store.join("config").join(entry.file_name()))
                .with_context(|| format!("{:?} not copied", entry.file_name()))?;
            ensure!(
                copied == std::fs::read(entry.path())?,
                "{:?} differs",
                entry.file_name()
            );
            config_files += 1;
        }
    }
    ensure!(config_files > 0, "the master has no config file to copy");
    ensure!(
        third_store.join("config/topics.json").is_file(),
        "no topics.json on the third node"
    );
    // The configs: the keys of the DLedger guide, identical peers, unique self ids.
    let mut self_ids = Vec::new();
    for (node, store) in [
        ("n0", &master_store),
        ("n1", &slave_store),
        ("n2", &third_store),
    ] {
        let path = dledger_dir.join(format!("broker-{node}.conf"));
        ensure!(property(&path, "enableDLegerCommitLog")?.as_deref() == Some("true"));
        ensure!(property(&path, "dLegerGroup")?.as_deref() == Some("broker-a"));
        ensure!(property(&path, "dLegerPeers")?.as_deref() == Some(PEERS));
        ensure!(property(&path, "brokerName")?.as_deref() == Some("broker-a"));
        ensure!(
            property(&path, "storePathRootDir")?.as_deref() == Some(&*store.display().to_string())
        );
        ensure!(
            property(&path, "storePathCommitLog")?.as_deref()
                == Some(&*store.join("commitlog").display().to_string())
        );
        ensure!(property(&path, "brokerId")?.is_none() && property(&path, "brokerRole")?.is_none());
        self_ids.push(property(&path, "dLegerSelfId")?.context("self id")?);
    }
    ensure!(self_ids == ["n0", "n1", "n2"], "{self_ids:?}");
    let n2 = dledger_dir.join("broker-n2.conf");
    ensure!(property(&n2, "listenPort")?.as_deref() == Some("30931"));
    ensure!(
        property(&master.config, "enableDLegerCommitLog")?.is_none(),
        "the old config changed"
    );
    ensure!(
        step_of(&shown, "start_gate").context("gate")?["prompt"]
            .as_str()
            .is_some_and(|prompt| prompt.contains("Java RocketMQ 4.5+")),
        "{shown:#}"
    );
    let described = daemon.cli(&["describe", "rocketmq.group.to_dledger"])?;
    ensure!(String::from_utf8_lossy(&described.stdout).contains("Java RocketMQ 4.5+"));
    daemon.json(&["cancel", &run, "--yes"])?;

    // ---- The checks, each made to fail, on copies of the broker's files ----
    let slave_original = work.join("slave-original");
    let master_original = work.join("master-original");
    std::fs::create_dir_all(&work)?;
    for (dir, files) in [
        (&slave_original, &slave_before),
        (&master_original, &master_before),
    ] {
        std::fs::create_dir_all(dir)?;
        for (name, data) in files {
            std::fs::write(dir.join(name), data)?;
        }
    }
    let fresh = |name: &str, from: &Path| -> Result<PathBuf> {
        let dir = work.join(name).join("commitlog");
        copy_dir(from, &dir)?;
        Ok(dir)
    };

    let over_ssh = |dir: &Path| json!({"dir": dir.display().to_string(), "host": sshd.host});
    let identity = sshd.user_key.display().to_string();
    let known_hosts = sshd.known_hosts.display().to_string();

    // The longer log is the slave's this time: it is the source, whatever the node is called
    // (both over ssh).
    let short = fresh("b-master", &slave_original)?;
    let long = fresh("b-slave", &master_original)?;
    let result = one_step(
        &daemon,
        "slave-longer",
        "rocketmq.commitlog_align",
        json!({"nodes": {"master": over_ssh(&short), "slave": over_ssh(&long)},
               "identity_file": identity, "known_hosts": known_hosts}),
    )?;
    ensure!(result["state"] == "succeeded", "{result:#}");
    ensure!(
        result["step"]["output"]["source"]["node"] == "slave",
        "{result:#}"
    );
    ensure!(
        commitlog(&short)? == master_before,
        "the shorter log did not get the longer one"
    );
    ensure!(commitlog(&long)? == master_before, "the longer log changed");

    // A copy that would shrink a log is refused, and nothing is written.
    let short = fresh("c-short", &slave_original)?;
    let long = fresh("c-long", &master_original)?;
    let result = one_step(
        &daemon,
        "shrink",
        "rocketmq.commitlog_align",
        json!({"nodes": {"a": short.display().to_string(), "b": long.display().to_string()}, "source": "a"}),
    )?;
    refused(&result, "would shrink")?;
    ensure!(
        commitlog(&long)? == master_before,
        "the longer log was touched"
    );

    // Files that hold less than the broker reported: refused.
    let result = one_step(
        &daemon,
        "reported",
        "rocketmq.commitlog_align",
        json!({"nodes": {"a": short.display().to_string(), "b": long.display().to_string()},
               "reported": {"b": reported_master + 1_000_000}}),
    )?;
    refused(&result, "reported commitlog max offset")?;
    ensure!(
        commitlog(&short)? == slave_before,
        "the shorter log was touched"
    );

    // Two histories: the shorter log differs from the longer one inside its valid part (a byte
    // of the first message's born timestamp, which no record check covers). Refused.
    let diverged = fresh("d-diverged", &slave_original)?;
    let first_file = commitlog(&diverged)?
        .into_keys()
        .next()
        .context("no commitlog file")?;
    let mut data = std::fs::read(diverged.join(&first_file))?;
    // TOTALSIZE 4, MAGIC 4, BODYCRC 4, QUEUEID 4, FLAG 4, QUEUEOFFSET 8, PHYSICALOFFSET 8,
    // SYSFLAG 4, then BORNTIMESTAMP (8): its last byte.
    data[47] ^= 0x01;
    std::fs::write(diverged.join(&first_file), &data)?;
    let result = one_step(
        &daemon,
        "diverged",
        "rocketmq.commitlog_align",
        json!({"nodes": {"a": diverged.display().to_string(), "b": long.display().to_string()}, "count": 100}),
    )?;
    refused(&result, "not a prefix")?;
    // The same two histories, each on a host reached over ssh: refused the same way.
    let result = one_step(
        &daemon,
        "diverged-ssh",
        "rocketmq.commitlog_align",
        json!({"nodes": {"a": over_ssh(&diverged), "b": over_ssh(&long)}, "count": 100,
               "identity_file": identity, "known_hosts": known_hosts}),
    )?;
    refused(&result, "not a prefix")?;
    ensure!(
        commitlog(&long)? == master_before,
        "the longer log was touched"
    );

    // A host whose key is not trusted: nothing is read or written, and the error names it.
    let untrusted = work.join("empty_known_hosts");
    std::fs::write(&untrusted, "")?;
    let result = one_step(
        &daemon,
        "untrusted",
        "rocketmq.commitlog_compare",
        json!({"nodes": {"a": over_ssh(&short), "b": long.display().to_string()},
               "identity_file": identity, "known_hosts": untrusted.display().to_string()}),
    )?;
    refused(
        &result,
        &format!("ssh {}: could not connect or log in", sshd.host),
    )?;

    // md5s that differ fail `expect = "equal"`.
    let result = one_step(
        &daemon,
        "compare",
        "rocketmq.commitlog_compare",
        json!({"nodes": {"a": short.display().to_string(), "b": long.display().to_string()}, "expect": "equal"}),
    )?;
    refused(&result, "commitlogs differ")?;
    let result = one_step(
        &daemon,
        "compare-ssh",
        "rocketmq.commitlog_compare",
        json!({"nodes": {"a": over_ssh(&short), "b": over_ssh(&long)}, "expect": "equal",
               "identity_file": identity, "known_hosts": known_hosts}),
    )?;
    refused(&result, "commitlogs differ")?;

    // A config directory copied over a file with other content: refused without overwrite.
    let target = work.join("e-config");
    std::fs::create_dir_all(&target)?;
    std::fs::write(target.join("topics.json"), "{}")?;
    let result = one_step(
        &daemon,
        "config-copy",
        "rocketmq.copy_files",
        json!({"source": master_config_dir.display().to_string(), "target": target.display().to_string()}),
    )?;
    refused(&result, "exists with other content")?;

    // The DLedger configs with a duplicate self id: the check fails.
    let checked = work.join("f-configs");
    copy_dir(&dledger_dir, &checked)?;
    let text = std::fs::read_to_string(checked.join("broker-n2.conf"))?;
    std::fs::write(
        checked.join("broker-n2.conf"),
        text.replace("dLegerSelfId=n2", "dLegerSelfId=n1"),
    )?;
    let paths: Vec<String> = ["n0", "n1", "n2"]
        .iter()
        .map(|node| {
            checked
                .join(format!("broker-{node}.conf"))
                .display()
                .to_string()
        })
        .collect();
    let result = one_step(
        &daemon,
        "check",
        "rocketmq.dledger_check",
        json!({"paths": paths}),
    )?;
    refused(&result, "used by another node")?;

    // A DLedger config whose self id is not one of the peers: refused.
    let result = one_step(
        &daemon,
        "self-id",
        "rocketmq.dledger_config",
        json!({"base": master.config.display().to_string(), "path": work.join("g.conf").display().to_string(),
               "group": "broker-a", "peers": PEERS, "self_id": "n7", "store_root": master_store.display().to_string()}),
    )?;
    refused(&result, "not one of the peers")?;
    if work.join("g.conf").exists() {
        bail!("a refused DLedger config was written");
    }
    Ok(())
}
