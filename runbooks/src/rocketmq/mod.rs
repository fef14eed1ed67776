//! The `rocketmq.*` domain actions: each talks to a RocketMQ cluster through its remoting
//! protocol (`rocketmq-admin-core` / `rocketmq-client-rust` 1.0, which speak Apache RocketMQ's
//! wire format, so the same actions serve Java and Rust clusters), returns typed JSON usable in
//! `until` conditions and later steps, and follows every change with an independent read that
//! checks the change really holds (the step fails, naming the broker/topic/group, if not).
//!
//! | action | what |
//! |---|---|
//! | `rocketmq.backup` | every broker's topics, groups and consumer offsets saved as JSON in the run's directory |
//! | `rocketmq.cluster` | members, per NameServer; `expect = "registered" / "absent"` |
//! | `rocketmq.broker_config` | get (`key`), set (`set`, keeps `previous` for undo), check (`expect`) |
//! | `rocketmq.broker_stats` | put TPS, earliest message time, retention left, reported version |
//! | `rocketmq.replication` | how far each slave of a group is behind its master; `caught_up` |
//! | `rocketmq.controller` / `sync_state` | the controllers' metadata (leader, peers); a group's master and sync state set |
//! | `rocketmq.probe` | one message sent to a broker and pulled back from it: it takes writes and serves reads |
//! | `rocketmq.topic_list` / `topic_route` / `topic_status` | what the NameServers and brokers say about topics |
//! | `rocketmq.topic_upsert` | read-modify-write of a topic config on its brokers |
//! | `rocketmq.topic_order` | whether a topic is ordered; what a queue change does to its key → queue mapping |
//! | `rocketmq.queue_writes` | whether messages still arrive on the queues a shrink removes |
//! | `rocketmq.broker_topics` | the topics a broker serves; whether another writable broker serves them |
//! | `rocketmq.copy_metadata` | copy topics and subscription groups from one broker to another |
//! | `rocketmq.consumer_progress` | lag per group, broker and queue (with `%RETRY%` topics) |
//! | `rocketmq.reset_offset` / `restore_offsets` | reset by time, saving the previous offsets; put them back |
//! | `rocketmq.config_file` | edit one key of a broker's config file (atomically, read back) |
//! | `rocketmq.commitlog_md5` | md5 of the newest N commitlog files |
//! | `rocketmq.commitlog_compare` / `commitlog_align` | several nodes' newest commitlog files and valid ends; align them on the longest log |
//! | `rocketmq.copy_files` | a directory (a store's `config`) copied file by file, atomically |
//! | `rocketmq.dledger_config` / `dledger_check` | write a node's DLedger config; check a group's configs together |
//! | `rocketmq.move_aside` | files a guide says to delete (controller data, epoch files) renamed aside instead, undoable |
//! | `rocketmq.command` | a stop/start command template with `{{ broker }}` placeholders, run by `exec` |
//!
//! `docs/rocketmq.md` describes inputs and outputs for operators.

mod aside;
mod backup;
mod broker_config;
mod broker_stats;
mod cluster;
mod command;
mod commitlog;
mod consumer;
mod controller;
mod dledger;
mod files;
mod host_files;
pub mod input;
mod metadata;
mod preview;
mod probe;
mod replication;
pub mod session;
pub mod system;
mod topic;

use std::future::Future;

use runbook_engine::action::{
    Action, ActionContext, ActionFailure, ActionFuture, Registry, Schema,
};
use serde_json::Value;

/// Registers every `rocketmq.*` action.
pub fn register(registry: &mut Registry) {
    register_actions(registry);
    preview::attach(registry);
}

fn register_actions(registry: &mut Registry) {
    registry.register("rocketmq.backup", FnAction(backup::run, &backup::SCHEMA));
    registry.register("rocketmq.cluster", FnAction(cluster::run, &cluster::SCHEMA));
    registry.register(
        "rocketmq.broker_config",
        FnAction(broker_config::run, &broker_config::SCHEMA),
    );
    registry.register(
        "rocketmq.broker_stats",
        FnAction(broker_stats::run, &broker_stats::SCHEMA),
    );
    registry.register(
        "rocketmq.topic_list",
        FnAction(topic::run_list, &topic::LIST_SCHEMA),
    );
    registry.register(
        "rocketmq.topic_route",
        FnAction(topic::run_route, &topic::ROUTE_SCHEMA),
    );
    registry.register(
        "rocketmq.topic_status",
        FnAction(topic::run_status, &topic::STATUS_SCHEMA),
    );
    registry.register(
        "rocketmq.topic_upsert",
        FnAction(topic::run_upsert, &topic::UPSERT_SCHEMA),
    );
    registry.register(
        "rocketmq.broker_topics",
        FnAction(topic::run_broker_topics, &topic::BROKER_TOPICS_SCHEMA),
    );
    registry.register(
        "rocketmq.copy_metadata",
        FnAction(metadata::run, &metadata::SCHEMA),
    );
    registry.register(
        "rocketmq.queue_writes",
        FnAction(topic::run_queue_writes, &topic::QUEUE_WRITES_SCHEMA),
    );
    registry.register(
        "rocketmq.topic_order",
        FnAction(topic::run_topic_order, &topic::TOPIC_ORDER_SCHEMA),
    );
    registry.register(
        "rocketmq.consumer_progress",
        FnAction(consumer::run_progress, &consumer::PROGRESS_SCHEMA),
    );
    registry.register(
        "rocketmq.reset_offset",
        FnAction(consumer::run_reset, &consumer::RESET_SCHEMA),
    );
    registry.register(
        "rocketmq.restore_offsets",
        FnAction(consumer::run_restore, &consumer::RESTORE_SCHEMA),
    );
    registry.register(
        "rocketmq.config_file",
        FnAction(files::run_config_file, &files::CONFIG_FILE_SCHEMA),
    );
    registry.register(
        "rocketmq.commitlog_md5",
        FnAction(files::run_commitlog_md5, &files::COMMITLOG_MD5_SCHEMA),
    );
    registry.register(
        "rocketmq.commitlog_compare",
        FnAction(commitlog::run_compare, &commitlog::COMPARE_SCHEMA),
    );
    registry.register(
        "rocketmq.commitlog_align",
        FnAction(commitlog::run_align, &commitlog::ALIGN_SCHEMA),
    );
    registry.register(
        "rocketmq.copy_files",
        FnAction(dledger::run_copy_files, &dledger::COPY_FILES_SCHEMA),
    );
    registry.register(
        "rocketmq.dledger_config",
        FnAction(dledger::run_config, &dledger::CONFIG_SCHEMA),
    );
    registry.register(
        "rocketmq.dledger_check",
        FnAction(dledger::run_check, &dledger::CHECK_SCHEMA),
    );
    registry.register("rocketmq.probe", FnAction(probe::run, &probe::SCHEMA));
    registry.register("rocketmq.move_aside", FnAction(aside::run, &aside::SCHEMA));
    registry.register(
        "rocketmq.controller",
        FnAction(controller::run_meta, &controller::META_SCHEMA),
    );
    registry.register(
        "rocketmq.sync_state",
        FnAction(controller::run_sync_state, &controller::SYNC_STATE_SCHEMA),
    );
    registry.register(
        "rocketmq.replication",
        FnAction(replication::run, &replication::SCHEMA),
    );
    registry.register("rocketmq.command", command::Command);
}

/// Wraps an async function, with the schema of its input, as an [`Action`] that stops when the
/// call is cancelled.
pub struct FnAction<F>(pub F, pub &'static Schema);

impl<F, Fut> Action for FnAction<F>
where
    F: Fn(Value, ActionContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ActionFailure>> + Send + 'static,
{
    fn schema(&self) -> &'static Schema {
        self.1
    }

    fn call(&self, input: Value, context: ActionContext) -> ActionFuture {
        let cancel = context.cancel.clone();
        let work = (self.0)(input, context);
        Box::pin(async move {
            tokio::select! {
                _ = cancel.cancelled() => Err(ActionFailure::retryable("cancelled")),
                result = work => result,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use runbook_engine::action::{ActionContext, LogSink, Recorder, Registry};
    use serde_json::Value;

    /// The parsing code and the schema must not disagree: for every action, an input built from
    /// its schema (required keys only, and every key) gets past the action's reading of its
    /// input. An input mistake is a permanent failure `<action>: <key>: ...`; anything else
    /// (no NameServer listens on port 1, a file that is not there) means the input was taken.
    #[tokio::test]
    async fn every_action_takes_an_input_built_from_its_schema() {
        let mut registry = Registry::new();
        super::register(&mut registry);
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = registry
            .names()
            .filter(|name| name.starts_with("rocketmq."))
            .map(str::to_owned)
            .collect();
        assert!(names.len() >= 15, "{names:?}");
        for name in names {
            let action = registry.get(&name).unwrap();
            let schema = action.schema();
            if name == "rocketmq.command" {
                // It runs a command through `exec`: every key it takes is `exec`'s or its own.
                for key in schema.keys {
                    assert!(
                        ["command", "vars"].contains(&key.name)
                            || runbook_engine::action::schema::EXEC.key(key.name).is_some(),
                        "{}",
                        key.name
                    );
                }
                continue;
            }
            for all in [false, true] {
                let mut input = schema.sample(all);
                if input.get("namesrv").is_some() {
                    input["namesrv"] = Value::from("127.0.0.1:1");
                }
                // Keys that exclude each other (each is tried in the required-only input and
                // alone with the others): `replicas` sets a value on every replica, `key` reads
                // one broker.
                if all && name == "rocketmq.broker_config" {
                    if let Some(map) = input.as_object_mut() {
                        map.remove("replicas");
                    }
                }
                // One of `window` and `since` is needed.
                if !all && name == "rocketmq.queue_writes" {
                    input["window"] = Value::from("1s");
                }
                // One of `paths` and `moves` is needed.
                if name == "rocketmq.move_aside" {
                    if let Some(map) = input.as_object_mut() {
                        map.remove("moves");
                    }
                    input["paths"] = Value::from("");
                    for (field, value) in [
                        ("dir", "/nonexistent-runbook-sample"),
                        ("into", "/nonexistent-runbook-sample/aside"),
                    ] {
                        if input.get(field).is_some() {
                            input[field] = Value::from(value);
                        }
                    }
                }
                // The file actions take absolute paths, tables that name nodes and at least
                // three DLedger configs: a schema sample has none of them.
                let missing = "/nonexistent-runbook-sample";
                for (field, value) in [
                    ("nodes", serde_json::json!({"a": format!("{missing}/a")})),
                    (
                        "new_nodes",
                        serde_json::json!({"b": format!("{missing}/b")}),
                    ),
                    ("source", Value::from(format!("{missing}/source"))),
                    ("target", Value::from(format!("{missing}/target"))),
                    ("base", Value::from(format!("{missing}/base.conf"))),
                    ("path", Value::from(format!("{missing}/path.conf"))),
                    ("store_root", Value::from(format!("{missing}/store"))),
                    (
                        "commitlog",
                        Value::from(format!("{missing}/store/commitlog")),
                    ),
                    ("peers", Value::from("n0-h:1;n1-h:2;n2-h:3")),
                    ("host", Value::from("")),
                    ("base_host", Value::from("")),
                    ("source_host", Value::from("")),
                    ("target_host", Value::from("")),
                    ("hosts", serde_json::json!(["", "", ""])),
                    ("known_hosts", Value::from("strict")),
                    ("identity_file", Value::from(format!("{missing}/key"))),
                    ("self_id", Value::from("n0")),
                    (
                        "paths",
                        Value::from(format!("{missing}/0;{missing}/1;{missing}/2")),
                    ),
                ] {
                    let file_action = name.starts_with("rocketmq.commitlog_")
                        || name.starts_with("rocketmq.dledger_")
                        || name == "rocketmq.copy_files"
                        || name == "rocketmq.move_aside";
                    if file_action && input.get(field).is_some() {
                        input[field] = value;
                    }
                }
                if name.starts_with("rocketmq.commitlog_") && input.get("count").is_some() {
                    input["count"] = Value::from(2);
                }
                if name == "rocketmq.commitlog_align" && input.get("source").is_some() {
                    input["source"] = Value::from("a");
                }
                if name == "rocketmq.commitlog_align" && input.get("reported").is_some() {
                    input["reported"] = serde_json::json!({"a": 1});
                }
                if name == "rocketmq.dledger_config" && input.get("set").is_some() {
                    input["set"] = serde_json::json!({"listenPort": 10911});
                }
                assert!(schema.check(&input, true).is_empty(), "{name}: {input}");
                let context = ActionContext {
                    run_id: uuid::Uuid::nil(),
                    step: "s".to_owned(),
                    attempt: 1,
                    undo: false,
                    cancel: tokio_util::sync::CancellationToken::new(),
                    draining: tokio_util::sync::CancellationToken::new(),
                    log: LogSink::new(dir.path().join("log")),
                    state_dir: dir.path().join("state"),
                    note: None,
                    recorder: Recorder::discard(),
                    settle: None,
                };
                let result = tokio::time::timeout(
                    Duration::from_secs(3),
                    action.call(input.clone(), context),
                )
                .await;
                if let Ok(Err(failure)) = result {
                    for key in schema.keys {
                        assert!(
                            !failure
                                .message
                                .starts_with(&format!("{name}: {}:", key.name)),
                            "{name} refused an input built from its schema ({input}): {}",
                            failure.message
                        );
                    }
                }
            }
        }
    }
}
