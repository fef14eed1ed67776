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
//! | `rocketmq.broker_stats` | put TPS, earliest message time, retention left |
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
//! | `rocketmq.command` | a stop/start command template with `{{ broker }}` placeholders, run by `exec` |
//!
//! `docs/rocketmq.md` describes inputs and outputs for operators.

mod backup;
mod broker_config;
mod broker_stats;
mod cluster;
mod command;
pub mod common;
mod consumer;
mod files;
mod metadata;
mod topic;

use runbook_engine::action::Registry;

use self::common::FnAction;

/// Registers every `rocketmq.*` action.
pub fn register(registry: &mut Registry) {
    registry.register("rocketmq.backup", FnAction(backup::run));
    registry.register("rocketmq.cluster", FnAction(cluster::run));
    registry.register("rocketmq.broker_config", FnAction(broker_config::run));
    registry.register("rocketmq.broker_stats", FnAction(broker_stats::run));
    registry.register("rocketmq.topic_list", FnAction(topic::run_list));
    registry.register("rocketmq.topic_route", FnAction(topic::run_route));
    registry.register("rocketmq.topic_status", FnAction(topic::run_status));
    registry.register("rocketmq.topic_upsert", FnAction(topic::run_upsert));
    registry.register("rocketmq.broker_topics", FnAction(topic::run_broker_topics));
    registry.register("rocketmq.queue_writes", FnAction(topic::run_queue_writes));
    registry.register("rocketmq.topic_order", FnAction(topic::run_topic_order));
    registry.register("rocketmq.copy_metadata", FnAction(metadata::run));
    registry.register(
        "rocketmq.consumer_progress",
        FnAction(consumer::run_progress),
    );
    registry.register("rocketmq.reset_offset", FnAction(consumer::run_reset));
    registry.register("rocketmq.restore_offsets", FnAction(consumer::run_restore));
    registry.register("rocketmq.config_file", FnAction(files::run_config_file));
    registry.register("rocketmq.commitlog_md5", FnAction(files::run_commitlog_md5));
    registry.register("rocketmq.command", command::Command);
}
