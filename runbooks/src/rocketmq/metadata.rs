//! `rocketmq.copy_metadata`: copy every topic config and subscription group of a cluster to a
//! new broker (scale-out: a new broker serves only the topics it holds).
//!
//! Input: `namesrv`, `target` (broker name), `cluster` (default: the target's), `source` (only
//! this broker, instead of every master of the cluster).
//!
//! The union over every master of the cluster but the target is copied, so a topic that lives
//! on one broker only is not missed. Groups go first: with `autoCreateSubscriptionGroup=false`
//! a consumer the new broker serves is refused until its group is there. Broker-local system
//! topics and the brokers' own groups are skipped. A topic or group the target already holds
//! with the same config is left alone (a retry is harmless); one it holds with another config,
//! or that differs between sources, is reported in `differing` and in the log, and the target's
//! copy is not overwritten. Afterwards the target's topics and groups are read back.
//!
//! Output: `sources`, `groups` (copied), `unchanged_groups`, `topics` (copied), `unchanged`,
//! `differing [{kind, name, brokers, configs, note}]`, `skipped` (system topics).

use std::collections::{BTreeMap, BTreeSet};

use cheetah_string::CheetahString;
use rocketmq_client_rust::{ConsumerAdmin as _, TopicAdmin as _};
use rocketmq_model::topic::TopicConfig;
use rocketmq_protocol::protocol::subscription::subscription_group_config::SubscriptionGroupConfig;
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::input::Input;
use super::session::{
    each_concurrently, explain, now_ms, with_admin, Admin, BrokerRef, REQUEST_TIMEOUT,
};
use super::system::{is_system_group, is_system_topic};
use super::topic::{broker_topic_configs, config_json};

/// The input of `rocketmq.copy_metadata` (mutates).
pub const SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("target", Kind::Text, "the broker to copy to").required(),
        optional(
            "source",
            Kind::Text,
            "copy only from this broker (default: every master of the cluster)",
        ),
        optional(
            "cluster",
            Kind::Text,
            "the cluster whose masters are copied (default: the target's)",
        ),
    ],
};

pub async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.copy_metadata", &input);
    let namesrv = input.namesrv()?;
    let target_name = input.string("target")?;
    let cluster = input.opt_string("cluster")?;
    let only_source = input.opt_string("source")?;
    if only_source.as_deref() == Some(target_name.as_str()) {
        return Err(input.bad("target", "is the same broker as `source`"));
    }
    with_admin(&namesrv, |admin| async move {
        let CopyPlan {
            cluster,
            target,
            source_names,
            wanted_groups,
            wanted_topics,
            mut differing,
            skipped,
        } = plan(&admin, &context, &target_name, cluster, only_source.as_deref()).await?;
        // Groups first: with autoCreateSubscriptionGroup=false, consumers routed to the new
        // broker by a copied topic would be refused until their group is there.
        let target_groups = groups(&admin, &target).await?;
        let mut copied_groups = Vec::new();
        let mut unchanged_groups = Vec::new();
        let mut kept_groups = BTreeSet::new();
        for (name, (from, config)) in &wanted_groups {
            if let Some(existing) = target_groups.get(name) {
                if group_json(existing) == group_json(config) {
                    unchanged_groups.push(name.clone());
                } else {
                    kept_groups.insert(name.clone());
                    differing.push(json!({"kind": "group", "name": name, "brokers": [from, target.name], "configs": [group_json(config), group_json(existing)], "note": "left as the target holds it"}));
                }
                continue;
            }
            copied_groups.push(name.clone());
        }
        each_concurrently(copied_groups.clone(), |name: String| {
            let (admin, target, context) = (&admin, &target, &context);
            let (from, config) = &wanted_groups[&name];
            async move {
                context.log.line(&format!("subscription group {name} (from {from}) -> broker {}", target.name));
                admin
                    .inner
                    .create_and_update_subscription_group_config(target.addr(), config.clone())
                    .await
                    .map_err(|error| ActionFailure::retryable(format!("broker {} ({}) refused subscription group {name}: {}", target.name, target.addr, explain(&error))))
            }
        })
        .await?;

        let target_topics = broker_topic_configs(&admin, &target).await?;
        let mut copied = Vec::new();
        let mut unchanged = Vec::new();
        let mut kept_topics = BTreeSet::new();
        for (name, (from, config)) in &wanted_topics {
            if let Some(existing) = target_topics.get(name) {
                if config_json(existing) == config_json(config) {
                    unchanged.push(name.clone());
                } else {
                    kept_topics.insert(name.clone());
                    differing.push(json!({"kind": "topic", "name": name, "brokers": [from, target.name], "configs": [config_json(config), config_json(existing)], "note": "left as the target holds it"}));
                }
                continue;
            }
            copied.push(name.clone());
        }
        each_concurrently(copied.clone(), |name: String| {
            let (admin, target, context) = (&admin, &target, &context);
            let (from, config) = &wanted_topics[&name];
            async move {
                context.log.line(&format!("topic {name}: {} (from {from}) -> broker {}", config_json(config), target.name));
                admin
                    .inner
                    .create_and_update_topic_config(target.addr(), config.clone())
                    .await
                    .map_err(|error| ActionFailure::retryable(format!("broker {} ({}) refused topic {name}: {}", target.name, target.addr, explain(&error))))
            }
        })
        .await?;
        for entry in &differing {
            context.log.line(&format!(
                "differing {} {}: {} has {}, {} has {}{}",
                entry["kind"].as_str().unwrap_or(""),
                entry["name"].as_str().unwrap_or(""),
                entry["brokers"][0].as_str().unwrap_or(""),
                entry["configs"][0],
                entry["brokers"][1].as_str().unwrap_or(""),
                entry["configs"][1],
                entry["note"].as_str().map_or_else(String::new, |note| format!(" ({note})"))
            ));
        }

        // The postcondition, read independently: the target holds every user group and topic.
        let after_groups = groups(&admin, &target).await?;
        for name in wanted_groups.keys() {
            if !after_groups.contains_key(name) {
                return Err(ActionFailure::permanent(format!("broker {} does not hold subscription group {name} after the copy", target.name)));
            }
        }
        let after_topics = broker_topic_configs(&admin, &target).await?;
        for (name, (from, config)) in &wanted_topics {
            match after_topics.get(name) {
                Some(_) if kept_topics.contains(name) => {}
                Some(held) if config_json(held) == config_json(config) => {}
                Some(held) => {
                    return Err(ActionFailure::permanent(format!(
                        "broker {} holds topic {name} as {} but broker {from} has {}",
                        target.name,
                        config_json(held),
                        config_json(config)
                    )))
                }
                None => return Err(ActionFailure::permanent(format!("broker {} does not hold topic {name} after the copy", target.name))),
            }
        }
        context.log.line(&format!(
            "broker {}: from {}: {} group(s) copied, {} already there; {} topic(s) copied, {} already there; {} differing config(s)",
            target.name,
            source_names.join(", "),
            copied_groups.len(),
            unchanged_groups.len(),
            copied.len(),
            unchanged.len(),
            differing.len()
        ));
        Ok(json!({
            "sources": source_names,
            "target": target.name,
            "cluster": cluster,
            "groups": copied_groups,
            "unchanged_groups": unchanged_groups,
            "topics": copied,
            "unchanged": unchanged,
            "differing": differing,
            "skipped": skipped.into_iter().collect::<Vec<_>>(),
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}

/// What a copy to `target_name` takes from where: the union of the groups and topics of every
/// master of `cluster` (default: the target's) but the target, or of `only_source`; where the
/// sources differ, the first (by name) gives the config and the difference is listed.
pub(super) struct CopyPlan {
    pub cluster: String,
    pub target: BrokerRef,
    pub source_names: Vec<String>,
    pub wanted_groups: BTreeMap<String, (String, SubscriptionGroupConfig)>,
    pub wanted_topics: BTreeMap<String, (String, TopicConfig)>,
    pub differing: Vec<Value>,
    pub skipped: BTreeSet<String>,
}

/// Reads the sources of a copy (nothing is changed); see [`CopyPlan`].
pub(super) async fn plan(
    admin: &Admin,
    context: &ActionContext,
    target_name: &str,
    cluster: Option<String>,
    only_source: Option<&str>,
) -> Result<CopyPlan, ActionFailure> {
    let brokers = admin.brokers().await?;
    let broker_names: Vec<String> = brokers.keys().cloned().collect();
    let cluster_names: Vec<String> = brokers
        .values()
        .map(|entry| entry.cluster.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let target = admin.resolve_broker(Some(target_name), None).await?;
    let cluster = cluster.unwrap_or_else(|| {
        brokers
            .get(target_name)
            .map(|entry| entry.cluster.clone())
            .unwrap_or_default()
    });
    // Every master of the cluster but the target (or only `source`, when given).
    let mut sources = Vec::new();
    for (name, entry) in &brokers {
        if name == target_name || entry.cluster != cluster {
            continue;
        }
        if only_source.as_ref().is_some_and(|only| only != name) {
            continue;
        }
        match entry.master() {
            Some(addr) => sources.push(BrokerRef {
                name: name.clone(),
                addr: addr.to_owned(),
            }),
            None => context.log.line(&format!(
                "broker {name}: no master registered, its metadata is not copied"
            )),
        }
    }
    if let Some(only) = &only_source {
        if sources.is_empty() {
            admin.resolve_broker(Some(only), None).await?;
        }
    }
    if sources.is_empty() {
        return Err(ActionFailure::permanent(format!(
            "cluster {cluster} has no master other than {target_name} on namesrv {}: nothing to copy from",
            admin.namesrv
        )));
    }
    let source_names: Vec<String> = sources.iter().map(|source| source.name.clone()).collect();

    // The union over the sources; a topic or group whose config differs between them is
    // reported, and the first source (by name) holding it gives the config.
    let mut wanted_groups: BTreeMap<String, (String, SubscriptionGroupConfig)> = BTreeMap::new();
    let mut wanted_topics: BTreeMap<String, (String, TopicConfig)> = BTreeMap::new();
    let mut differing = Vec::new();
    let mut skipped = BTreeSet::new();
    for source in &sources {
        for (name, config) in groups(admin, source).await? {
            if is_system_group(&name) {
                continue;
            }
            match wanted_groups.get(&name) {
                Some((first, held)) => {
                    if group_json(held) != group_json(&config) {
                        differing.push(json!({"kind": "group", "name": name, "brokers": [first, source.name], "configs": [group_json(held), group_json(&config)]}));
                    }
                }
                None => {
                    wanted_groups.insert(name, (source.name.clone(), config));
                }
            }
        }
        for (name, config) in broker_topic_configs(admin, source).await? {
            if is_system_topic(&name, &broker_names, &cluster_names) {
                skipped.insert(name);
                continue;
            }
            match wanted_topics.get(&name) {
                Some((first, held)) => {
                    if config_json(held) != config_json(&config) {
                        differing.push(json!({"kind": "topic", "name": name, "brokers": [first, source.name], "configs": [config_json(held), config_json(&config)]}));
                    }
                }
                None => {
                    wanted_topics.insert(name, (source.name.clone(), config));
                }
            }
        }
    }

    Ok(CopyPlan {
        cluster,
        target,
        source_names,
        wanted_groups,
        wanted_topics,
        differing,
        skipped,
    })
}

/// A subscription group's config as compared between brokers.
fn group_json(config: &SubscriptionGroupConfig) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
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
