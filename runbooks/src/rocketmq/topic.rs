//! Topic actions: `rocketmq.topic_list`, `rocketmq.topic_route`, `rocketmq.topic_status`,
//! `rocketmq.topic_upsert` and `rocketmq.broker_topics`.
//!
//! `topic_upsert` is read-modify-write: RocketMQ's `updateTopic` replaces the whole topic config,
//! so every field not asked to change (perm, order, attributes, the other queue count) is read
//! from the broker first and sent back unchanged; after the write, the config is read back from
//! the broker and compared.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cheetah_string::CheetahString;
use rocketmq_client_rust::TopicAdmin as _;
use rocketmq_model::topic::TopicConfig;
use rocketmq_protocol::protocol::route::topic_route_data::TopicRouteData;
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Map, Value};

use super::input::Input;
use super::session::{
    brokers_of, explain, names_or_none, now_ms, with_admin, Admin, BrokerRef, REQUEST_TIMEOUT,
};
use super::system::is_system_topic;

const PERM_WRITE: u32 = 2;

/// The route of `topic`, or `None` when the NameServers know no such topic.
pub async fn route(admin: &Admin, topic: &str) -> Result<Option<TopicRouteData>, ActionFailure> {
    match admin
        .inner
        .examine_topic_route_info(CheetahString::from(topic))
        .await
    {
        Ok(route) => {
            Ok(route
                .filter(|route| !route.queue_datas.is_empty() || !route.broker_datas.is_empty()))
        }
        Err(error) => {
            let text = error.to_string();
            if text.to_lowercase().contains("not exist")
                || text.contains("code=17")
                || text.contains("TopicNotExist")
            {
                Ok(None)
            } else {
                Err(ActionFailure::retryable(format!(
                    "namesrv {} did not return the route of topic {topic}: {text}",
                    admin.namesrv
                )))
            }
        }
    }
}

/// The route of `topic`; a missing topic is a permanent error naming it.
pub async fn existing_route(admin: &Admin, topic: &str) -> Result<TopicRouteData, ActionFailure> {
    route(admin, topic).await?.ok_or_else(|| {
        ActionFailure::permanent(format!(
            "topic {topic} does not exist (no route on namesrv {})",
            admin.namesrv
        ))
    })
}

/// Every topic config a broker holds.
pub async fn broker_topic_configs(
    admin: &Admin,
    broker: &BrokerRef,
) -> Result<HashMap<String, TopicConfig>, ActionFailure> {
    let wrapper = admin
        .inner
        .get_all_topic_config(broker.addr(), REQUEST_TIMEOUT.as_millis() as u64)
        .await
        .map_err(|error| {
            let error = explain(&error);
            {
                ActionFailure::retryable(format!(
                    "broker {} ({}) did not return its topic configs: {error}",
                    broker.name, broker.addr
                ))
            }
        })?;
    let table = wrapper.topic_config_table().cloned().unwrap_or_default();
    Ok(table
        .into_iter()
        .map(|(name, config)| (name.to_string(), config))
        .collect())
}

pub fn config_json(config: &TopicConfig) -> Value {
    let attributes: BTreeMap<String, String> = config
        .attributes
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    json!({
        "read_queues": config.read_queue_nums,
        "write_queues": config.write_queue_nums,
        "perm": config.perm,
        "order": config.order,
        "attributes": attributes,
    })
}

fn route_json(topic: &str, route: &TopicRouteData) -> Value {
    let mut by_broker = Map::new();
    let mut writable = Vec::new();
    let (mut min_read, mut max_read, mut min_write, mut max_write) = (u32::MAX, 0, u32::MAX, 0);
    for queue in &route.queue_datas {
        let name = queue.broker_name().to_string();
        let is_writable = queue.perm() & PERM_WRITE != 0 && queue.write_queue_nums() > 0;
        if is_writable {
            writable.push(name.clone());
        }
        min_read = min_read.min(queue.read_queue_nums());
        max_read = max_read.max(queue.read_queue_nums());
        min_write = min_write.min(queue.write_queue_nums());
        max_write = max_write.max(queue.write_queue_nums());
        by_broker.insert(
            name,
            json!({"read_queues": queue.read_queue_nums(), "write_queues": queue.write_queue_nums(), "perm": queue.perm(), "writable": is_writable}),
        );
    }
    if route.queue_datas.is_empty() {
        (min_read, min_write) = (0, 0);
    }
    let addrs: BTreeMap<String, Option<String>> = route
        .broker_datas
        .iter()
        .map(|data| {
            (
                data.broker_name().to_string(),
                data.broker_addrs().get(&0).map(|addr| addr.to_string()),
            )
        })
        .collect();
    writable.sort();
    json!({
        "topic": topic,
        "broker_names": by_broker.keys().cloned().collect::<Vec<_>>(),
        "writable_brokers": writable,
        "by_broker": by_broker,
        "addrs": addrs,
        "min_read_queues": min_read,
        "max_read_queues": max_read,
        "min_write_queues": min_write,
        "max_write_queues": max_write,
        "order_conf": route.order_topic_conf.as_ref().map(|conf| conf.to_string()),
        "observed_at_ms": now_ms(),
    })
}

/// The input of `rocketmq.topic_route` (read-only).
pub const ROUTE_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("topic", Kind::Text, "the topic").required(),
    ],
};

/// `rocketmq.topic_route`: input `namesrv`, `topic`. Output: `broker_names`, `writable_brokers`,
/// `by_broker` (`{name: {read_queues, write_queues, perm, writable}}`), `addrs`,
/// `min_/max_read_queues`, `min_/max_write_queues`. A topic that does not exist fails the step.
pub async fn run_route(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.topic_route", &input);
    let namesrv = input.namesrv()?;
    let topic = input.string("topic")?;
    with_admin(&namesrv, |admin| async move {
        let route = existing_route(&admin, &topic).await?;
        let output = route_json(&topic, &route);
        context
            .log
            .line(&format!("topic {topic}: {}", output["by_broker"]));
        Ok(output)
    })
    .await
}

/// The input of `rocketmq.topic_list` (read-only).
pub const LIST_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("cluster", Kind::Text, "only this cluster's topics"),
        optional(
            "include_system",
            Kind::Bool,
            "list system topics too (default false)",
        ),
    ],
};

/// `rocketmq.topic_list`: input `namesrv`, optional `cluster`, `include_system` (false).
/// Output: `topics` (sorted).
pub async fn run_list(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.topic_list", &input);
    let namesrv = input.namesrv()?;
    let cluster = input.opt_string("cluster")?;
    let include_system = input.bool_or("include_system", false)?;
    with_admin(&namesrv, |admin| async move {
        let topics = user_topics(&admin, cluster.as_deref(), include_system).await?;
        context.log.line(&format!("{} topic(s)", topics.len()));
        Ok(json!({"topics": topics, "observed_at_ms": now_ms()}))
    })
    .await
}

/// The topics the NameServers know (without the brokers' own system topics unless asked).
pub async fn user_topics(
    admin: &Admin,
    cluster: Option<&str>,
    include_system: bool,
) -> Result<Vec<String>, ActionFailure> {
    let info = admin.cluster_info().await?;
    let brokers = brokers_of(&info);
    let broker_names: Vec<String> = brokers.keys().cloned().collect();
    let cluster_names: Vec<String> = brokers
        .values()
        .map(|entry| entry.cluster.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let list = match cluster {
        Some(cluster) => {
            admin
                .inner
                .fetch_topics_by_cluster(CheetahString::from(cluster))
                .await
        }
        None => admin.inner.fetch_all_topic_list().await,
    }
    .map_err(|error| {
        let error = explain(&error);
        {
            ActionFailure::retryable(format!(
                "namesrv {} did not list the topics: {error}",
                admin.namesrv
            ))
        }
    })?;
    let mut topics: Vec<String> = list
        .topic_list
        .iter()
        .map(|topic| topic.to_string())
        .filter(|topic| include_system || !is_system_topic(topic, &broker_names, &cluster_names))
        .collect();
    topics.sort();
    topics.dedup();
    Ok(topics)
}

/// The input of `rocketmq.topic_status` (read-only).
pub const STATUS_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("topic", Kind::Text, "the topic").required(),
    ],
};

/// `rocketmq.topic_status`: input `namesrv`, `topic`. Output: `queues` (`[{broker, queue_id,
/// min_offset, max_offset, messages, last_update_ms}]`), `total_messages`, `max_offset_total`.
pub async fn run_status(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.topic_status", &input);
    let namesrv = input.namesrv()?;
    let topic = input.string("topic")?;
    with_admin(&namesrv, |admin| async move {
        existing_route(&admin, &topic).await?;
        let stats = admin
            .inner
            .examine_topic_stats(CheetahString::from(topic.as_str()), None)
            .await
            .map_err(|error| ActionFailure::retryable(format!("topic {topic}: the brokers did not return its stats: {}", explain(&error))))?;
        let mut queues: Vec<(String, i32, i64, i64, i64)> = stats
            .get_offset_table()
            .iter()
            .map(|(queue, offset)| {
                (queue.broker_name().to_string(), queue.queue_id(), offset.get_min_offset(), offset.get_max_offset(), offset.get_last_update_timestamp())
            })
            .collect();
        queues.sort();
        let total: i64 = queues.iter().map(|(_, _, min, max, _)| (max - min).max(0)).sum();
        let max_total: i64 = queues.iter().map(|(_, _, _, max, _)| *max).sum();
        context.log.line(&format!("topic {topic}: {} queue(s), {total} message(s) stored", queues.len()));
        let queues: Vec<Value> = queues
            .into_iter()
            .map(|(broker, queue_id, min, max, last)| {
                json!({"broker": broker, "queue_id": queue_id, "min_offset": min, "max_offset": max, "messages": (max - min).max(0), "last_update_ms": last})
            })
            .collect();
        Ok(json!({"topic": topic, "queues": queues, "total_messages": total, "max_offset_total": max_total, "observed_at_ms": now_ms()}))
    })
    .await
}

/// The fields a topic upsert changes on one broker (`None`: keep what the broker has).
#[derive(Debug, Clone, Default)]
pub(super) struct Changes {
    read_queues: Option<u32>,
    write_queues: Option<u32>,
    perm: Option<u32>,
    order: Option<bool>,
    attributes: Option<Map<String, Value>>,
}

impl Changes {
    /// `previous` (or a new topic's defaults: 8 read and write queues, perm 6) with the
    /// changes made.
    pub(super) fn apply(&self, previous: Option<&TopicConfig>, topic: &str) -> TopicConfig {
        let mut wanted = previous.cloned().unwrap_or_else(|| {
            let mut fresh = TopicConfig::with_queues(topic, 8, 8);
            fresh.perm = 6;
            fresh
        });
        wanted.topic_name = Some(CheetahString::from(topic));
        if let Some(read) = self.read_queues {
            wanted.read_queue_nums = read;
        }
        if let Some(write) = self.write_queues {
            wanted.write_queue_nums = write;
        }
        if let Some(perm) = self.perm {
            wanted.perm = perm;
        }
        if let Some(order) = self.order {
            wanted.order = order;
        }
        if let Some(attributes) = &self.attributes {
            for (key, value) in attributes {
                let value = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                wanted.attributes.insert(
                    CheetahString::from(key.as_str()),
                    CheetahString::from(value.as_str()),
                );
            }
        }
        wanted
    }
}

/// The topic permissions that mean something (`PermName`: 4 read, 2 write; 1 "inherit" is a
/// broker flag, and 0, 3, 5, 7 on a topic are a mistake the broker would store as given).
pub const TOPIC_PERMS: [u32; 3] = [2, 4, 6];

/// The changes an upsert's input asks for; `strict`: a permission must be 2, 4 or 6 (a
/// `restore` of what a broker held takes it as it was).
pub(super) fn changes_from(input: &Input<'_>, strict: bool) -> Result<Changes, ActionFailure> {
    let perm = input.opt_u32("perm")?;
    if let Some(perm) = perm {
        if (strict && !TOPIC_PERMS.contains(&perm)) || perm > 7 {
            return Err(input.bad(
                "perm",
                format!("{perm} is not a topic permission: use 6 (read and write), 4 (read only) or 2 (write only)"),
            ));
        }
    }
    let changes = Changes {
        read_queues: input.opt_u32("read_queues")?,
        write_queues: input.opt_u32("write_queues")?,
        perm,
        order: match input.get("order") {
            None => None,
            Some(_) => Some(input.bool_or("order", false)?),
        },
        attributes: match input.get("attributes") {
            None => None,
            Some(Value::Object(map)) => Some(map.clone()),
            Some(other) => {
                return Err(input.bad("attributes", format!("must be a table, not {other}")))
            }
        },
    };
    if changes.read_queues == Some(0) || changes.write_queues == Some(0) {
        return Err(input.bad("read_queues/write_queues", "must be at least 1"));
    }
    Ok(changes)
}

/// The input of `rocketmq.topic_upsert` (mutates).
pub const UPSERT_SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("topic", Kind::Text, "the topic").required(),
        optional(
            "brokers",
            Kind::List,
            "the brokers to change (default: the topic's route)",
        ),
        optional(
            "cluster",
            Kind::Text,
            "change the topic on this cluster's masters",
        ),
        optional(
            "direction",
            Kind::Text,
            "refuse a change of queue counts the other way",
        )
        .one_of(&["grow", "shrink"]),
        optional("read_queues", Kind::Int, "read queue count"),
        optional("write_queues", Kind::Int, "write queue count"),
        optional(
            "perm",
            Kind::Int,
            "permission: 6 read and write, 4 read only, 2 write only",
        )
        .one_of(&["6", "4", "2"]),
        optional("order", Kind::Bool, "an ordered topic"),
        optional("attributes", Kind::Table, "topic attributes"),
        optional(
            "restore",
            Kind::Records,
            "a previous output's `brokers`: put each `previous` back",
        ),
    ],
};

/// `rocketmq.topic_upsert`: input `namesrv`, `topic`, and the fields to change: `read_queues`,
/// `write_queues`, `perm`, `order`, `attributes` (a table). Targets: `brokers` (names) or
/// `cluster` (its masters), else every broker the topic's route names. A new topic starts from
/// 8 read / 8 write queues, perm 6. `direction = "grow"` / `"shrink"` refuses a change of queue
/// counts the other way. `restore` (a previous output's `brokers`) puts each broker's
/// `previous` config back instead (the undo of a queue change). Output: `brokers: [{broker,
/// addr, previous, current, changed}]` where `previous` is null for a broker that did not have
/// the topic.
pub async fn run_upsert(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.topic_upsert", &input);
    let namesrv = input.namesrv()?;
    let topic = input.string("topic")?;
    let brokers = input.string_list("brokers")?;
    let cluster = input.opt_string("cluster")?;
    let direction = input.opt_string("direction")?;
    if let Some(direction) = &direction {
        if !matches!(direction.as_str(), "grow" | "shrink") {
            return Err(input.bad(
                "direction",
                format!("{direction:?}: use \"grow\" or \"shrink\""),
            ));
        }
    }
    let changes = changes_from(&input, true)?;
    let mut restore: Vec<(String, Changes)> = Vec::new();
    match input.get("restore") {
        None => {}
        Some(Value::Array(entries)) => {
            for entry in entries {
                let reader = Input::new("rocketmq.topic_upsert", entry);
                let broker = reader.string("broker")?;
                match entry.get("previous") {
                    Some(previous @ Value::Object(_)) => restore.push((
                        broker,
                        changes_from(&Input::new("rocketmq.topic_upsert", previous), false)?,
                    )),
                    _ => context.log.line(&format!(
                        "broker {broker} did not have topic {topic} before: left as it is"
                    )),
                }
            }
        }
        Some(other) => {
            return Err(input.bad(
                "restore",
                format!("must be a list of {{broker, previous}}, not {other}"),
            ))
        }
    }
    with_admin(&namesrv, |admin| async move {
        let registered = admin.brokers().await?;
        let targets: Vec<(String, Changes)> = if input_has_restore(&restore) {
            restore
        } else if !brokers.is_empty() {
            brokers.into_iter().map(|name| (name, changes.clone())).collect()
        } else if let Some(cluster) = &cluster {
            let in_cluster: Vec<(String, Changes)> =
                registered.iter().filter(|(_, entry)| &entry.cluster == cluster).map(|(name, _)| (name.clone(), changes.clone())).collect();
            if in_cluster.is_empty() {
                return Err(ActionFailure::permanent(format!("cluster {cluster} has no broker registered on namesrv {}", admin.namesrv)));
            }
            in_cluster
        } else {
            match route(&admin, &topic).await? {
                Some(route) => route.queue_datas.iter().map(|queue| (queue.broker_name().to_string(), changes.clone())).collect(),
                None => {
                    return Err(ActionFailure::permanent(format!(
                        "topic {topic} does not exist (no route on namesrv {}); give `cluster` or `brokers` to create it",
                        admin.namesrv
                    )))
                }
            }
        };
        let mut results = Vec::new();
        for (name, changes) in &targets {
            let target = admin.resolve_broker(Some(name), None).await?;
            let configs = broker_topic_configs(&admin, &target).await?;
            let previous = configs.get(&topic).cloned();
            let wanted = changes.apply(previous.as_ref(), &topic);
            if let (Some(direction), Some(previous)) = (&direction, &previous) {
                let grows = wanted.read_queue_nums >= previous.read_queue_nums && wanted.write_queue_nums >= previous.write_queue_nums;
                let shrinks = wanted.read_queue_nums <= previous.read_queue_nums && wanted.write_queue_nums <= previous.write_queue_nums;
                let wrong = (direction == "grow" && !grows) || (direction == "shrink" && !shrinks);
                if wrong {
                    return Err(ActionFailure::permanent(format!(
                        "topic {topic} on broker {} has {} read / {} write queue(s): {} read / {} write would not {direction} it",
                        target.name, previous.read_queue_nums, previous.write_queue_nums, wanted.read_queue_nums, wanted.write_queue_nums
                    )));
                }
            }
            if wanted.read_queue_nums < wanted.write_queue_nums {
                return Err(ActionFailure::permanent(format!(
                    "topic {topic} on broker {}: {} read queue(s) < {} write queue(s) would strand the messages written to the unread queues",
                    target.name, wanted.read_queue_nums, wanted.write_queue_nums
                )));
            }
            let same = previous.as_ref().is_some_and(|previous| config_json(previous) == config_json(&wanted));
            if same {
                context.log.line(&format!("topic {topic} on broker {}: already {}", target.name, config_json(&wanted)));
            } else {
                context.log.line(&format!(
                    "topic {topic} on broker {}: {} -> {}",
                    target.name,
                    previous.as_ref().map_or_else(|| "absent".to_owned(), |previous| config_json(previous).to_string()),
                    config_json(&wanted)
                ));
                admin
                    .inner
                    .create_and_update_topic_config(target.addr(), wanted.clone())
                    .await
                    .map_err(|error| {
                        let error = explain(&error);
                        ActionFailure::retryable(format!("broker {} ({}) refused topic {topic}: {error}", target.name, target.addr))
                    })?;
            }
            let after = broker_topic_configs(&admin, &target).await?;
            let read_back = after
                .get(&topic)
                .ok_or_else(|| ActionFailure::permanent(format!("broker {} ({}) does not hold topic {topic} after the update", target.name, target.addr)))?;
            if config_json(read_back) != config_json(&wanted) {
                return Err(ActionFailure::permanent(format!(
                    "broker {} ({}) holds topic {topic} as {} after writing {}",
                    target.name,
                    target.addr,
                    config_json(read_back),
                    config_json(&wanted)
                )));
            }
            results.push(json!({
                "broker": target.name,
                "addr": target.addr,
                "previous": previous.as_ref().map(config_json),
                "current": config_json(read_back),
                "changed": !same,
            }));
        }
        Ok(json!({"topic": topic, "brokers": results, "observed_at_ms": now_ms()}))
    })
    .await
}

fn input_has_restore(restore: &[(String, Changes)]) -> bool {
    !restore.is_empty()
}

/// The input of `rocketmq.broker_topics` (read-only).
pub const BROKER_TOPICS_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("broker", Kind::Text, "the broker").required(),
        optional(
            "like",
            Kind::List,
            "other brokers: report the topics they serve that `broker` does not",
        ),
        optional(
            "expect",
            Kind::Text,
            "fail when a topic is written only through `broker`",
        )
        .one_of(&["replaceable"]),
    ],
};

/// `rocketmq.broker_topics`: which user topics a broker serves, and whether another writable
/// broker serves them too. Input: `namesrv`, `broker`, optional `like` (other brokers, a list:
/// report the topics they serve that `broker` does not), optional `expect = "replaceable"` (fail when a
/// topic is written only through `broker`). Output: `topics` (served by `broker`), `sole_writer`,
/// `missing` (with `like`), `topic_count`.
pub async fn run_broker_topics(
    input: Value,
    context: ActionContext,
) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.broker_topics", &input);
    let namesrv = input.namesrv()?;
    let broker = input.string("broker")?;
    let like = input.string_list("like")?;
    let expect = input.opt_string("expect")?;
    if let Some(expect) = &expect {
        if expect != "replaceable" {
            return Err(input.bad(
                "expect",
                format!("{expect:?}: the only check is \"replaceable\""),
            ));
        }
    }
    with_admin(&namesrv, |admin| async move {
        for like in &like {
            admin.resolve_broker(Some(like), None).await?;
        }
        let topics = user_topics(&admin, None, false).await?;
        let mut served = Vec::new();
        let mut sole_writer = Vec::new();
        let mut missing = Vec::new();
        for topic in &topics {
            let Some(route) = route(&admin, topic).await? else { continue };
            let names: BTreeSet<String> = route.queue_datas.iter().map(|queue| queue.broker_name().to_string()).collect();
            let writers: BTreeSet<String> = route
                .queue_datas
                .iter()
                .filter(|queue| queue.perm() & PERM_WRITE != 0 && queue.write_queue_nums() > 0)
                .map(|queue| queue.broker_name().to_string())
                .collect();
            if names.contains(&broker) {
                served.push(topic.clone());
                if !writers.iter().any(|writer| writer != &broker) {
                    sole_writer.push(topic.clone());
                }
            }
            if like.iter().any(|like| names.contains(like)) && !names.contains(&broker) {
                missing.push(topic.clone());
            }
        }
        context.log.line(&format!(
            "broker {broker} serves {} of {} topic(s): {}; written only through it: {}{}",
            served.len(),
            topics.len(),
            names_or_none(served.iter()),
            names_or_none(sole_writer.iter()),
            if like.is_empty() { String::new() } else { format!("; on {} but not on {broker}: {}", like.join(", "), names_or_none(missing.iter())) }
        ));
        if expect.is_some() && !sole_writer.is_empty() {
            return Err(ActionFailure::permanent(format!(
                "broker {broker} is the only writable broker of topic(s) {}: create them on another broker first",
                sole_writer.join(", ")
            )));
        }
        Ok(json!({
            "broker": broker,
            "topics": served,
            "topic_count": served.len(),
            "sole_writer": sole_writer,
            "missing": missing,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}

/// One queue's max offset, as `rocketmq.queue_writes` reads and compares it.
fn queue_key(entry: &Value) -> Option<(String, i32, i64)> {
    Some((
        entry.get("broker")?.as_str()?.to_owned(),
        i32::try_from(entry.get("queue_id")?.as_i64()?).ok()?,
        entry
            .get("max_offset")
            .or_else(|| entry.get("broker_offset"))?
            .as_i64()?,
    ))
}

/// The input of `rocketmq.queue_writes` (read-only).
pub const QUEUE_WRITES_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("topic", Kind::Text, "the topic").required(),
        optional("queue_from", Kind::Int, "the first queue id removed").required(),
        optional(
            "queue_to",
            Kind::Int,
            "the queue id after the last one (default: each broker's max(read, write))",
        ),
        optional(
            "window",
            Kind::Duration,
            "read the max offsets twice, this far apart",
        ),
        optional(
            "since",
            Kind::Records,
            "max offsets read before ({broker, queue_id, max_offset})",
        ),
        optional("expect", Kind::Text, "fail when a message was written").one_of(&["quiet"]),
    ],
};

/// `rocketmq.queue_writes`: are messages still written to queues `queue_from`.. of `topic` (the
/// queues a shrink removes; brokers accept a write to any queue id below max(read, write), and
/// producers send on a route they cached up to 30 s ago)? Reads each such queue's max offset on
/// its broker (`GET_MAX_OFFSET`, which answers for a queue id beyond the topic's current counts
/// too), twice, `window` apart, or once against `since` (a list of `{broker, queue_id,
/// max_offset}`, e.g. an earlier output's `max_offsets` or a progress output's `max_offsets`).
/// Input: `namesrv`, `topic`, `queue_from`, `queue_to` (exclusive; default: each broker's
/// current max(read, write)), `window` (duration), `since`, `expect = "quiet"` (fail when a
/// message was written). Output: `queues [{broker, queue_id, max_offset, written}]`, `written`,
/// `quiet`, `max_offsets`.
pub async fn run_queue_writes(
    input: Value,
    context: ActionContext,
) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.queue_writes", &input);
    let namesrv = input.namesrv()?;
    let topic = input.string("topic")?;
    let queue_from = input
        .opt_u32("queue_from")?
        .ok_or_else(|| input.bad("queue_from", "is required (the first queue id removed)"))?;
    let queue_to = input.opt_u32("queue_to")?;
    let window = input.opt_duration("window")?;
    let expect = input.opt_string("expect")?;
    if let Some(expect) = &expect {
        if expect != "quiet" {
            return Err(input.bad("expect", format!("{expect:?}: the only check is \"quiet\"")));
        }
    }
    let mut since: BTreeMap<(String, i32), i64> = BTreeMap::new();
    match input.get("since") {
        None => {}
        Some(Value::Array(entries)) => {
            for entry in entries {
                let (broker, queue_id, offset) = queue_key(entry).ok_or_else(|| {
                    input.bad(
                        "since",
                        format!("{entry} is not {{broker, queue_id, max_offset}}"),
                    )
                })?;
                since.insert((broker, queue_id), offset);
            }
        }
        Some(other) => {
            return Err(input.bad(
                "since",
                format!("must be a list of {{broker, queue_id, max_offset}}, not {other}"),
            ))
        }
    }
    if window.is_none() && input.get("since").is_none() {
        return Err(input.bad(
            "window",
            "give `window` (sample twice) or `since` (compare with)",
        ));
    }
    with_admin(&namesrv, |admin| async move {
        let route = existing_route(&admin, &topic).await?;
        let mut queues: Vec<(BrokerRef, i32)> = Vec::new();
        for queue in &route.queue_datas {
            let name = queue.broker_name().to_string();
            let broker = admin.resolve_broker(Some(&name), None).await?;
            let upper = queue_to.unwrap_or_else(|| queue.read_queue_nums().max(queue.write_queue_nums()));
            for queue_id in queue_from..upper.max(queue_from) {
                queues.push((broker.clone(), queue_id as i32));
            }
        }
        for (broker, queue_id) in since.keys() {
            if !queues.iter().any(|(known, id)| &known.name == broker && id == queue_id) {
                queues.push((admin.resolve_broker(Some(broker), None).await?, *queue_id));
            }
        }
        let sample = |queues: Vec<(BrokerRef, i32)>| {
            let admin = std::sync::Arc::clone(&admin);
            let topic = topic.clone();
            async move {
                let mut offsets = BTreeMap::new();
                for (broker, queue_id) in queues {
                    let queue = rocketmq_model::message::MessageQueue::from_parts(topic.as_str(), broker.name.as_str(), queue_id);
                    let offset = rocketmq_client_rust::OffsetAdmin::max_offset(&*admin.inner, broker.addr(), queue, REQUEST_TIMEOUT.as_millis() as u64)
                        .await
                        .map_err(|error| ActionFailure::retryable(format!("broker {} ({}) did not return the max offset of topic {topic} queue {queue_id}: {}", broker.name, broker.addr, explain(&error))))?;
                    offsets.insert((broker.name.clone(), queue_id), offset);
                }
                Ok::<_, ActionFailure>(offsets)
            }
        };
        let before = match window {
            Some(window) => {
                let first = sample(queues.clone()).await?;
                tokio::time::sleep(window).await;
                first
            }
            None => since.clone(),
        };
        let after = sample(queues.clone()).await?;
        let mut written_total = 0;
        let mut report = Vec::new();
        let mut max_offsets = Vec::new();
        for ((broker, queue_id), offset) in &after {
            let written = before.get(&(broker.clone(), *queue_id)).map_or(0, |earlier| (offset - earlier).max(0));
            written_total += written;
            report.push(json!({"broker": broker, "queue_id": queue_id, "max_offset": offset, "written": written}));
            max_offsets.push(json!({"broker": broker, "queue_id": queue_id, "max_offset": offset}));
        }
        let busy: Vec<String> = report
            .iter()
            .filter(|queue| queue["written"].as_i64().unwrap_or(0) > 0)
            .map(|queue| format!("{} queue {} (+{})", queue["broker"].as_str().unwrap_or(""), queue["queue_id"], queue["written"]))
            .collect();
        context.log.line(&format!(
            "topic {topic}: {written_total} message(s) written to queue(s) {queue_from}.. {}{}",
            window.map_or_else(|| "since the earlier reading".to_owned(), |window| format!("in {window:?}")),
            if busy.is_empty() { String::new() } else { format!(": {}", busy.join(", ")) }
        ));
        if expect.is_some() && written_total > 0 {
            return Err(ActionFailure::permanent(format!(
                "topic {topic}: {written_total} message(s) were written to removed queue(s) {} after the drain check; \
                 with the read queues shrunk no consumer reads them: roll back (the read queues come back) and shrink again once no producer writes there",
                busy.join(", ")
            )));
        }
        Ok(json!({
            "topic": topic,
            "queues": report,
            "written": written_total,
            "quiet": written_total == 0,
            "max_offsets": max_offsets,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}

/// The input of `rocketmq.topic_order` (read-only).
pub const TOPIC_ORDER_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("topic", Kind::Text, "the topic").required(),
        optional("queues", Kind::Int, "the new write queues per broker").required(),
    ],
};

/// `rocketmq.topic_order`: is `topic` ordered (`order = true` in a broker's topic config, or an
/// `orderTopic` KV config on the NameServers), and what a change of its write queues to `queues`
/// per broker does to the key → queue mapping? Ordered producers pick `hash(key) % queue count`
/// over every write queue of the route, so a new count sends a key to another queue: messages
/// of one key are then in two queues and may be consumed out of order while the old one drains.
/// Input: `namesrv`, `topic`, `queues`. Output: `ordered`, `order_conf`, `brokers [{broker,
/// order, write_queues}]`, `queues_before`, `queues_after` (totals), `change` (the sentence an
/// approval shows).
pub async fn run_topic_order(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.topic_order", &input);
    let namesrv = input.namesrv()?;
    let topic = input.string("topic")?;
    let queues = input
        .opt_u32("queues")?
        .ok_or_else(|| input.bad("queues", "is required (the new write queues per broker)"))?;
    with_admin(&namesrv, |admin| async move {
        let route = existing_route(&admin, &topic).await?;
        let order_conf = route.order_topic_conf.as_ref().map(|conf| conf.to_string()).filter(|conf| !conf.trim().is_empty());
        let mut brokers = Vec::new();
        let mut ordered = order_conf.is_some();
        let (mut before, mut after) = (0u32, 0u32);
        for queue in &route.queue_datas {
            let name = queue.broker_name().to_string();
            let target = admin.resolve_broker(Some(&name), None).await?;
            let configs = broker_topic_configs(&admin, &target).await?;
            let order = configs.get(&topic).is_some_and(|config| config.order);
            ordered |= order;
            before += queue.write_queue_nums();
            after += queues;
            brokers.push(json!({"broker": name, "order": order, "write_queues": queue.write_queue_nums()}));
        }
        let change = if before == after {
            format!("topic {topic}: {before} write queue(s), unchanged: every key keeps its queue")
        } else {
            let hash = before.max(after) - 1;
            format!(
                "topic {topic} is {}: its write queues {before} → {after} change the key → queue mapping (hash % queue count): a key whose hash is {hash} went to queue {} and now goes to queue {}; messages of one key are in two queues until the old one is drained, and may be consumed out of order",
                if ordered { "ordered" } else { "not ordered" },
                hash % before.max(1),
                hash % after.max(1)
            )
        };
        context.log.line(&change);
        Ok(json!({
            "topic": topic,
            "ordered": ordered,
            "order_conf": order_conf,
            "brokers": brokers,
            "queues_before": before,
            "queues_after": after,
            "change": change,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}
