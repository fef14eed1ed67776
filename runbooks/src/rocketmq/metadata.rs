//! `rocketmq.copy_metadata`: copy every topic config and subscription group from one broker to
//! another (scale-out: a new broker serves only the topics it holds).
//!
//! Input: `namesrv`, `source` (broker name), `target` (broker name).
//!
//! Broker-local system topics (`TBW102`, `SCHEDULE_TOPIC_XXXX`, the topics named after a broker
//! or cluster, `rmq_sys_*`, `%RETRY%`/`%DLQ%` topics, which brokers create on demand) and the
//! brokers' own consumer groups are skipped. A topic or group the target already holds with the
//! same config is left alone, so a retry is harmless. Afterwards the target's topics and groups
//! are read back: every copied one must be there, with the source's queue counts and perm.
//!
//! Output: `topics` (copied), `unchanged`, `groups` (copied), `skipped` (system topics).

use std::collections::{BTreeMap, BTreeSet};

use cheetah_string::CheetahString;
use rocketmq_client_rust::{ConsumerAdmin as _, TopicAdmin as _};
use rocketmq_protocol::protocol::subscription::subscription_group_config::SubscriptionGroupConfig;
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::common::{
    explain, is_system_group, is_system_topic, now_ms, with_admin, Admin, BrokerRef, Input,
    REQUEST_TIMEOUT,
};
use super::topic::{broker_topic_configs, config_json};

/// The input of `rocketmq.copy_metadata` (mutates).
pub const SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        optional(
            "namesrv",
            Kind::List,
            "the NameServer list, host:port;host:port",
        )
        .required(),
        optional("source", Kind::Text, "the broker to copy from").required(),
        optional("target", Kind::Text, "the broker to copy to").required(),
    ],
};

pub async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.copy_metadata", &input);
    let namesrv = input.namesrv()?;
    let source_name = input.string("source")?;
    let target_name = input.string("target")?;
    if source_name == target_name {
        return Err(input.bad("target", "is the same broker as `source`"));
    }
    with_admin(&namesrv, |admin| async move {
        let brokers = admin.brokers().await?;
        let broker_names: Vec<String> = brokers.keys().cloned().collect();
        let cluster_names: Vec<String> = brokers
            .values()
            .map(|entry| entry.cluster.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let source = admin.resolve_broker(Some(&source_name), None).await?;
        let target = admin.resolve_broker(Some(&target_name), None).await?;

        let source_topics = broker_topic_configs(&admin, &source).await?;
        let target_topics = broker_topic_configs(&admin, &target).await?;
        let mut copied = Vec::new();
        let mut unchanged = Vec::new();
        let mut skipped = Vec::new();
        let mut wanted = BTreeMap::new();
        let ordered: BTreeMap<&String, _> = source_topics.iter().collect();
        for (name, config) in ordered {
            if is_system_topic(name, &broker_names, &cluster_names) {
                skipped.push(name.clone());
                continue;
            }
            wanted.insert(name.clone(), config_json(config));
            if target_topics
                .get(name)
                .is_some_and(|existing| config_json(existing) == config_json(config))
            {
                unchanged.push(name.clone());
                continue;
            }
            context.log.line(&format!(
                "topic {name}: {} -> broker {}",
                config_json(config),
                target.name
            ));
            admin
                .inner
                .create_and_update_topic_config(target.addr(), config.clone())
                .await
                .map_err(|error| {
                    let error = explain(&error);
                    {
                        ActionFailure::retryable(format!(
                            "broker {} ({}) refused topic {name}: {error}",
                            target.name, target.addr
                        ))
                    }
                })?;
            copied.push(name.clone());
        }

        let source_groups = groups(&admin, &source).await?;
        let target_groups = groups(&admin, &target).await?;
        let mut copied_groups = Vec::new();
        for (name, config) in &source_groups {
            if is_system_group(name) {
                continue;
            }
            if target_groups.contains_key(name) {
                continue;
            }
            context.log.line(&format!(
                "subscription group {name} -> broker {}",
                target.name
            ));
            admin
                .inner
                .create_and_update_subscription_group_config(target.addr(), config.clone())
                .await
                .map_err(|error| {
                    let error = explain(&error);
                    {
                        ActionFailure::retryable(format!(
                            "broker {} ({}) refused subscription group {name}: {error}",
                            target.name, target.addr
                        ))
                    }
                })?;
            copied_groups.push(name.clone());
        }

        // The postcondition, read independently: the target holds every user topic and group.
        let after_topics = broker_topic_configs(&admin, &target).await?;
        for (name, config) in &wanted {
            match after_topics.get(name) {
                Some(held) if &config_json(held) == config => {}
                Some(held) => {
                    return Err(ActionFailure::permanent(format!(
                        "broker {} holds topic {name} as {} but broker {} has {config}",
                        target.name,
                        config_json(held),
                        source.name
                    )))
                }
                None => {
                    return Err(ActionFailure::permanent(format!(
                        "broker {} does not hold topic {name} after the copy",
                        target.name
                    )))
                }
            }
        }
        let after_groups = groups(&admin, &target).await?;
        for name in source_groups.keys().filter(|name| !is_system_group(name)) {
            if !after_groups.contains_key(name) {
                return Err(ActionFailure::permanent(format!(
                    "broker {} does not hold subscription group {name} after the copy",
                    target.name
                )));
            }
        }
        context.log.line(&format!(
            "broker {}: {} topic(s) copied, {} already there, {} group(s) copied",
            target.name,
            copied.len(),
            unchanged.len(),
            copied_groups.len()
        ));
        Ok(json!({
            "source": source.name,
            "target": target.name,
            "topics": copied,
            "unchanged": unchanged,
            "groups": copied_groups,
            "skipped": skipped,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}

pub(super) async fn groups(
    admin: &Admin,
    broker: &BrokerRef,
) -> Result<BTreeMap<String, SubscriptionGroupConfig>, ActionFailure> {
    let wrapper = admin
        .inner
        .get_all_subscription_group(broker.addr(), REQUEST_TIMEOUT.as_millis() as u64)
        .await
        .map_err(|error| {
            let error = explain(&error);
            {
                ActionFailure::retryable(format!(
                    "broker {} ({}) did not return its subscription groups: {error}",
                    broker.name, broker.addr
                ))
            }
        })?;
    Ok(wrapper
        .subscription_group_table
        .into_iter()
        .map(|(name, config): (CheetahString, SubscriptionGroupConfig)| (name.to_string(), config))
        .collect())
}
