//! Previews of the mutating `rocketmq.*` actions for `runbook plan --check`: what a call would
//! change, computed by reading the cluster (or the config file) as it is now, never by changing
//! it. Each returns `{"changes": [{"what", "before", "after"}], "note"}`; a command also gives
//! `"runs"` (the command as it would run).
//!
//! | action | preview |
//! |---|---|
//! | `rocketmq.broker_config` | each `set` key: the broker's current value → the new one |
//! | `rocketmq.topic_upsert` | per target broker: read/write queues, perm, order, attributes now → after (or the refusal the call would make) |
//! | `rocketmq.reset_offset` | per queue: the group's offset now → the offset of the first message stored at or after `timestamp` (the brokers' search by time, as the reset uses) |
//! | `rocketmq.restore_offsets` | per queue: the group's offset now → the saved one |
//! | `rocketmq.config_file` | the key's value in the file now → the new one |
//! | `rocketmq.copy_metadata` | each subscription group, then each user topic, of the sources (every master of the cluster, or `source`) that the target lacks; what it holds otherwise is left and counted |
//! | `rocketmq.command` | the command as it would run, and whether the broker it names is registered now |

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use cheetah_string::CheetahString;
use rocketmq_client_rust::OffsetAdmin as _;
use rocketmq_model::topic::TopicConfig;
use runbook_engine::action::{
    Action, ActionContext, ActionFailure, ActionFuture, Registry, Schema,
};
use serde_json::{json, Map, Value};

use super::consumer::{group_progress, parse_timestamp};
use super::files::{property, render_placeholders, vars};
use super::input::Input;
use super::session::{now_ms, with_admin, Admin, REQUEST_TIMEOUT};
use super::topic::{broker_topic_configs, existing_route, route};

/// An action with a preview: `call` and `reattach` are the wrapped action's; `preview` runs the
/// function, stopped when the check cancels it.
pub struct Previewed<P>(pub Arc<dyn Action>, pub P);

impl<P, Fut> Action for Previewed<P>
where
    P: Fn(Value, ActionContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ActionFailure>> + Send + 'static,
{
    fn schema(&self) -> &'static Schema {
        self.0.schema()
    }

    fn call(&self, input: Value, context: ActionContext) -> ActionFuture {
        self.0.call(input, context)
    }

    fn reattach(&self, input: Value, context: ActionContext) -> Option<ActionFuture> {
        self.0.reattach(input, context)
    }

    fn preview(&self, input: Value, context: ActionContext) -> Option<ActionFuture> {
        let cancel = context.cancel.clone();
        let work = (self.1)(input, context);
        Some(Box::pin(async move {
            tokio::select! {
                _ = cancel.cancelled() => Err(ActionFailure::retryable("cancelled")),
                result = work => result,
            }
        }))
    }
}

/// Gives the registered mutating actions their preview (the action itself stays as registered).
pub fn attach(registry: &mut Registry) {
    fn with<P, Fut>(registry: &mut Registry, name: &str, preview: P)
    where
        P: Fn(Value, ActionContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ActionFailure>> + Send + 'static,
    {
        if let Some(action) = registry.get(name) {
            registry.register(name, Previewed(action, preview));
        }
    }
    with(registry, "rocketmq.broker_config", broker_config);
    with(registry, "rocketmq.topic_upsert", topic_upsert);
    with(registry, "rocketmq.reset_offset", reset_offset);
    with(registry, "rocketmq.restore_offsets", restore_offsets);
    with(registry, "rocketmq.config_file", config_file);
    with(registry, "rocketmq.copy_metadata", copy_metadata);
    with(registry, "rocketmq.command", command);
}

fn change(what: String, before: Value, after: Value) -> Value {
    json!({"what": what, "before": before, "after": after})
}

/// A permission as a number and what it allows: `6 (read/write)`.
pub fn perm_text(perm: u32) -> String {
    let what = match perm & 6 {
        6 => "read/write",
        4 => "read-only",
        2 => "write-only",
        _ => "no access",
    };
    format!("{perm} ({what})")
}

/// `rocketmq.broker_config`: each `set` key's current value → the new one; `expect` compared
/// with the values after the `set`.
pub async fn broker_config(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.broker_config", &input);
    let namesrv = input.namesrv()?;
    let broker = input.opt_string("broker")?;
    let broker_addr = input.opt_string("broker_addr")?;
    let key = input.opt_string("key")?;
    let set = super::broker_config::table(&input, "set")?;
    let expect = super::broker_config::table(&input, "expect")?;
    with_admin(&namesrv, |admin| async move {
        let target = admin
            .resolve_broker(broker.as_deref(), broker_addr.as_deref())
            .await?;
        let now = super::broker_config::read(&admin, &target).await?;
        let label = format!("broker {} ({})", target.name, target.addr);
        let mut changes = Vec::new();
        let mut notes = Vec::new();
        for (name, wanted) in &set {
            match now.get(name) {
                Some(value) if value == wanted => notes.push(format!("{name} is already {wanted}")),
                value => changes.push(change(format!("{label} {name}"), json!(value), json!(wanted))),
            }
        }
        for (name, wanted) in &expect {
            let after = set.get(name).or_else(|| now.get(name));
            if after != Some(wanted) {
                notes.push(format!(
                    "expect {name} = {wanted}: it is {} now (the step fails unless an earlier step changes it)",
                    after.map_or("unset", String::as_str)
                ));
            } else {
                notes.push(format!("expect {name} = {wanted}: holds"));
            }
        }
        if let Some(name) = &key {
            match now.get(name) {
                Some(value) => notes.push(format!("{name} is {value}")),
                None => notes.push(format!("{label} has no config key {name}: the step fails")),
            }
        }
        if set.is_empty() {
            notes.push("no `set`: reads only".to_owned());
        }
        let current: Map<String, Value> = set
            .keys()
            .chain(expect.keys())
            .chain(key.iter())
            .map(|name| (name.clone(), json!(now.get(name))))
            .collect();
        context.log.line(&format!("{label}: {} change(s)", changes.len()));
        Ok(json!({
            "broker": target.name,
            "addr": target.addr,
            "changes": changes,
            "current": current,
            "note": notes.join("; "),
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}

/// `rocketmq.topic_upsert`: per target broker, each field that would change (the call's own
/// target choice, read-modify-write and refusals).
pub async fn topic_upsert(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
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
    let wanted = super::topic::changes_from(&input, true)?;
    let mut restore: Vec<(String, super::topic::Changes)> = Vec::new();
    if let Some(entries) = input.get("restore") {
        let Value::Array(entries) = entries else {
            return Err(input.bad("restore", "must be a list of {broker, previous}"));
        };
        for entry in entries {
            let reader = Input::new("rocketmq.topic_upsert", entry);
            let broker = reader.string("broker")?;
            if let Some(previous @ Value::Object(_)) = entry.get("previous") {
                restore.push((
                    broker,
                    super::topic::changes_from(
                        &Input::new("rocketmq.topic_upsert", previous),
                        false,
                    )?,
                ));
            }
        }
    }
    with_admin(&namesrv, |admin| async move {
        let targets: Vec<(String, super::topic::Changes)> = if !restore.is_empty() {
            restore
        } else if !brokers.is_empty() {
            brokers.into_iter().map(|name| (name, wanted.clone())).collect()
        } else if let Some(cluster) = &cluster {
            let registered = admin.brokers().await?;
            let in_cluster: Vec<(String, super::topic::Changes)> = registered
                .iter()
                .filter(|(_, entry)| &entry.cluster == cluster)
                .map(|(name, _)| (name.clone(), wanted.clone()))
                .collect();
            if in_cluster.is_empty() {
                return Err(ActionFailure::permanent(format!(
                    "cluster {cluster} has no broker registered on namesrv {}",
                    admin.namesrv
                )));
            }
            in_cluster
        } else {
            match route(&admin, &topic).await? {
                Some(route) => route
                    .queue_datas
                    .iter()
                    .map(|queue| (queue.broker_name().to_string(), wanted.clone()))
                    .collect(),
                None => {
                    return Err(ActionFailure::permanent(format!(
                        "topic {topic} does not exist (no route on namesrv {}); give `cluster` or `brokers` to create it",
                        admin.namesrv
                    )))
                }
            }
        };
        let mut changes = Vec::new();
        let mut brokers_out = Vec::new();
        for (name, wanted) in &targets {
            let target = admin.resolve_broker(Some(name), None).await?;
            let configs = broker_topic_configs(&admin, &target).await?;
            let previous = configs.get(&topic);
            let after = wanted.apply(previous, &topic);
            if let (Some(direction), Some(previous)) = (&direction, previous) {
                let grows = after.read_queue_nums >= previous.read_queue_nums
                    && after.write_queue_nums >= previous.write_queue_nums;
                let shrinks = after.read_queue_nums <= previous.read_queue_nums
                    && after.write_queue_nums <= previous.write_queue_nums;
                if (direction == "grow" && !grows) || (direction == "shrink" && !shrinks) {
                    return Err(ActionFailure::permanent(format!(
                        "topic {topic} on broker {} has {} read / {} write queue(s): {} read / {} write would not {direction} it",
                        target.name, previous.read_queue_nums, previous.write_queue_nums, after.read_queue_nums, after.write_queue_nums
                    )));
                }
            }
            if after.read_queue_nums < after.write_queue_nums {
                return Err(ActionFailure::permanent(format!(
                    "topic {topic} on broker {}: {} read queue(s) < {} write queue(s) would strand the messages written to the unread queues",
                    target.name, after.read_queue_nums, after.write_queue_nums
                )));
            }
            let label = format!("topic {topic} on broker {}", target.name);
            match previous {
                None => changes.push(change(
                    label.clone(),
                    Value::Null,
                    json!(format!(
                        "created: {} read / {} write queue(s), perm {}",
                        after.read_queue_nums,
                        after.write_queue_nums,
                        perm_text(after.perm)
                    )),
                )),
                Some(previous) => {
                    let fields: [(&str, Value, Value); 4] = [
                        ("read_queues", json!(previous.read_queue_nums), json!(after.read_queue_nums)),
                        ("write_queues", json!(previous.write_queue_nums), json!(after.write_queue_nums)),
                        ("perm", json!(perm_text(previous.perm)), json!(perm_text(after.perm))),
                        ("order", json!(previous.order), json!(after.order)),
                    ];
                    for (field, before, now) in fields {
                        if before != now {
                            changes.push(change(format!("{label}: {field}"), before, now));
                        }
                    }
                    let attributes = |config: &TopicConfig| {
                        config
                            .attributes
                            .iter()
                            .map(|(key, value)| (key.to_string(), value.to_string()))
                            .collect::<BTreeMap<_, _>>()
                    };
                    if attributes(previous) != attributes(&after) {
                        changes.push(change(
                            format!("{label}: attributes"),
                            json!(attributes(previous)),
                            json!(attributes(&after)),
                        ));
                    }
                }
            }
            brokers_out.push(json!({
                "broker": target.name,
                "addr": target.addr,
                "previous": previous.map(super::topic::config_json),
                "after": super::topic::config_json(&after),
            }));
        }
        context
            .log
            .line(&format!("topic {topic}: {} change(s) on {} broker(s)", changes.len(), targets.len()));
        let note = if changes.is_empty() {
            format!("topic {topic} is already as asked on {} broker(s)", targets.len())
        } else {
            format!("read-modify-write of topic {topic} on {} broker(s), read back", targets.len())
        };
        Ok(json!({"topic": topic, "changes": changes, "brokers": brokers_out, "note": note, "observed_at_ms": now_ms()}))
    })
    .await
}

/// One queue's offset change, as `{topic, broker, queue_id, before, after}`.
fn offset_changes(
    group: &str,
    now: &BTreeMap<(String, String, i32), i64>,
    targets: &BTreeMap<(String, String, i32), i64>,
) -> Vec<Value> {
    targets
        .iter()
        .filter(|(queue, target)| now.get(*queue) != Some(*target))
        .map(|((topic, broker, queue_id), target)| {
            change(
                format!("group {group} on {topic}, broker {broker} queue {queue_id}: offset"),
                json!(now.get(&(topic.clone(), broker.clone(), *queue_id))),
                json!(target),
            )
        })
        .collect()
}

async fn offsets_now(
    admin: &Admin,
    group: &str,
    topic: &str,
) -> Result<Option<BTreeMap<(String, String, i32), i64>>, ActionFailure> {
    Ok(group_progress(admin, group, Some(topic))
        .await?
        .map(|queues| {
            queues
                .into_iter()
                .filter(|queue| queue.topic == topic)
                .map(|queue| {
                    (
                        (queue.topic, queue.broker, queue.queue_id),
                        queue.consumer_offset,
                    )
                })
                .collect()
        }))
}

/// `rocketmq.reset_offset`: per queue of the topic, the group's offset now → the offset of the
/// first message stored at or after `timestamp`, as each broker finds it by time.
pub async fn reset_offset(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.reset_offset", &input);
    let namesrv = input.namesrv()?;
    let group = input.string("group")?;
    let topic = input.string("topic")?;
    let timestamp = parse_timestamp(&input, "timestamp")?;
    let force = input.bool_or("force", true)?;
    if timestamp < 0 {
        return Err(input.bad("timestamp", "must not be before 1970"));
    }
    with_admin(&namesrv, |admin| async move {
        let route = existing_route(&admin, &topic).await?;
        let now = offsets_now(&admin, &group, &topic).await?.ok_or_else(|| {
            ActionFailure::permanent(format!("consumer group {group} has no offsets on topic {topic}: there is nothing to reset (has it ever consumed?)"))
        })?;
        let mut targets = BTreeMap::new();
        for queue in &route.queue_datas {
            let broker = queue.broker_name().to_string();
            let Some(addr) = route
                .broker_datas
                .iter()
                .find(|data| data.broker_name().as_str() == broker)
                .and_then(|data| data.broker_addrs().get(&0).cloned())
            else {
                return Err(ActionFailure::retryable(format!("broker {broker} of topic {topic} has no master address in the route")));
            };
            for queue_id in 0..queue.read_queue_nums() as i32 {
                let found = admin
                    .inner
                    .search_offset(addr.clone(), CheetahString::from(topic.as_str()), queue_id, timestamp as u64, REQUEST_TIMEOUT.as_millis() as u64)
                    .await
                    .map_err(|error| ActionFailure::retryable(format!("broker {broker} ({addr}) did not search queue {queue_id} of topic {topic} by time: {}", super::session::explain(&error))))?;
                let key = (topic.clone(), broker.clone(), queue_id);
                let found = found as i64;
                // Without `force`, a reset never moves an offset forward.
                let target = match now.get(&key) {
                    Some(current) if !force && *current < found => *current,
                    _ => found,
                };
                targets.insert(key, target);
            }
        }
        let changes = offset_changes(&group, &now, &targets);
        context.log.line(&format!("group {group} on topic {topic}: {} of {} queue offset(s) would move", changes.len(), targets.len()));
        Ok(json!({
            "group": group,
            "topic": topic,
            "timestamp_ms": timestamp,
            "changes": changes,
            "note": format!(
                "{} of {} queue(s) would move; targets are the first message stored at or after {timestamp} (ms), as the brokers search by time; online consumers get the reset pushed, an offline group's offsets are written on the brokers",
                changes.len(),
                targets.len()
            ),
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}

/// `rocketmq.restore_offsets`: per queue, the group's offset now → the saved one.
pub async fn restore_offsets(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.restore_offsets", &input);
    let namesrv = input.namesrv()?;
    let group = input.string("group")?;
    let Some(Value::Array(entries)) = input.get("offsets") else {
        return Err(input.bad(
            "offsets",
            "must be a list of {topic, broker, queue_id, offset}",
        ));
    };
    let mut targets = BTreeMap::new();
    for entry in entries {
        let entry = Input::new("rocketmq.restore_offsets", entry);
        let queue_id = entry
            .opt_i64("queue_id")?
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| input.bad("offsets", "an entry has no valid queue_id"))?;
        let offset = entry
            .opt_i64("offset")?
            .filter(|offset| *offset >= 0)
            .ok_or_else(|| input.bad("offsets", "an entry has no valid offset"))?;
        targets.insert(
            (entry.string("topic")?, entry.string("broker")?, queue_id),
            offset,
        );
    }
    with_admin(&namesrv, |admin| async move {
        let mut now = BTreeMap::new();
        let topics: std::collections::BTreeSet<String> =
            targets.keys().map(|(topic, _, _)| topic.clone()).collect();
        for topic in &topics {
            now.extend(offsets_now(&admin, &group, topic).await?.unwrap_or_default());
        }
        let changes = offset_changes(&group, &now, &targets);
        context.log.line(&format!("group {group}: {} offset(s) would be restored", changes.len()));
        Ok(json!({"group": group, "changes": changes, "note": format!("{} of {} saved offset(s) differ from now", changes.len(), targets.len()), "observed_at_ms": now_ms()}))
    })
    .await
}

/// `rocketmq.config_file`: the key's value in the file now → the new one.
pub async fn config_file(input: Value, _context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.config_file", &input);
    let vars = vars(&input)?;
    let path = render_placeholders(&input, "path", &input.string("path")?, &vars)?;
    let key = input.string("key")?;
    let value = super::files::config_value(&input)?;
    if path.ends_with(".toml") {
        return Err(input.bad("path", format!("{path}: only Java properties files (broker.conf) are supported; TOML broker configs are not")));
    }
    let text = read_small(&path)
        .await
        .map_err(|error| ActionFailure::permanent(format!("broker config file {path}: {error}")))?;
    let previous = property(&text, &key);
    let changes = if previous == value {
        Vec::new()
    } else {
        vec![change(
            format!("{path}: {key}"),
            json!(previous),
            json!(value),
        )]
    };
    let note = match changes.is_empty() {
        true => format!("{key} is already {}", value.as_deref().unwrap_or("absent")),
        false => format!("{path} replaced atomically, every other line kept"),
    };
    Ok(
        json!({"path": path, "key": key, "changes": changes, "note": note, "observed_at_ms": now_ms()}),
    )
}

/// `rocketmq.copy_metadata`: each subscription group, then each user topic, of the sources (every
/// master of the cluster, or only `source`) that the target lacks; what the target holds
/// otherwise is left as it is (listed in the note with the configs that differ between sources).
pub async fn copy_metadata(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.copy_metadata", &input);
    let namesrv = input.namesrv()?;
    let target_name = input.string("target")?;
    let cluster = input.opt_string("cluster")?;
    let only_source = input.opt_string("source")?;
    if only_source.as_deref() == Some(target_name.as_str()) {
        return Err(input.bad("target", "is the same broker as `source`"));
    }
    with_admin(&namesrv, |admin| async move {
        let plan = super::metadata::plan(
            &admin,
            &context,
            &target_name,
            cluster,
            only_source.as_deref(),
        )
        .await?;
        let target = &plan.target;
        let target_groups = super::metadata::groups(&admin, target).await?;
        let target_topics = broker_topic_configs(&admin, target).await?;
        let mut changes = Vec::new();
        let (mut unchanged, mut kept) = (0, 0);
        for (name, (from, _)) in &plan.wanted_groups {
            if target_groups.contains_key(name) {
                unchanged += 1;
                continue;
            }
            changes.push(change(
                format!("subscription group {name} on broker {}", target.name),
                Value::Null,
                json!(format!("copied from broker {from}")),
            ));
        }
        let groups = changes.len();
        for (name, (from, config)) in &plan.wanted_topics {
            let wanted = super::topic::config_json(config);
            match target_topics.get(name).map(super::topic::config_json) {
                Some(held) if held == wanted => unchanged += 1,
                Some(_) => kept += 1,
                None => changes.push(change(
                    format!("topic {name} on broker {} (from {from})", target.name),
                    Value::Null,
                    wanted,
                )),
            }
        }
        let note = format!(
            "{groups} subscription group(s), then {} topic(s) would be copied from {} to broker {}; {unchanged} already the same there, {kept} held otherwise (left as they are); {} config(s) differ between brokers",
            changes.len() - groups,
            plan.source_names.join(", "),
            target.name,
            plan.differing.len()
        );
        context.log.line(&note);
        Ok(json!({"sources": plan.source_names, "target": target.name, "cluster": plan.cluster, "changes": changes, "differing": plan.differing, "note": note, "observed_at_ms": now_ms()}))
    })
    .await
}

/// A config file read for a preview: a regular file of at most 1 MiB, opened without waiting
/// (a FIFO or a device is refused), on a blocking thread.
async fn read_small(path: &str) -> Result<String, String> {
    let path = std::path::PathBuf::from(path);
    tokio::task::spawn_blocking(move || runbook_engine::catalog::read_file(&path))
        .await
        .map_err(|error| error.to_string())?
}

/// `rocketmq.command`: the command as it would run; for the broker it names, whether it is
/// registered now (on the NameServers its config file names).
pub async fn command(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let (_, command) = super::command::exec_input(&input)?;
    let reader = Input::new("rocketmq.command", &input);
    let vars = vars(&reader)?;
    let mut changes = Vec::new();
    if let Some(broker) = vars.get("broker").filter(|broker| !broker.is_empty()) {
        let effect = if context.step.contains("stop") || command.contains("stop") {
            "stopped by the command"
        } else if context.step.contains("start") || command.contains("start") {
            "started by the command"
        } else {
            "as the command leaves it"
        };
        // The config file path may itself hold placeholders (`/etc/rocketmq/{{ broker }}.conf`).
        let config = vars.get("broker_config").map(|path| {
            render_placeholders(&reader, "vars.broker_config", path, &vars)
                .unwrap_or_else(|_| path.clone())
        });
        let before = registration(broker, config.as_ref()).await;
        let addr = vars.get("broker_addr").filter(|addr| !addr.is_empty());
        changes.push(change(
            format!(
                "broker {broker}{}",
                addr.map_or_else(String::new, |addr| format!(" ({addr})"))
            ),
            json!(before),
            json!(effect),
        ));
    }
    Ok(
        json!({"changes": changes, "runs": command, "note": format!("would run: {command}"), "observed_at_ms": now_ms()}),
    )
}

/// Where `broker` is registered now, asked of the NameServers its config file names; what could
/// not be found out, said as such.
async fn registration(broker: &str, config: Option<&String>) -> String {
    let Some(path) = config.filter(|path| !path.is_empty()).cloned() else {
        return "registration unknown (no broker_config to find its NameServers)".to_owned();
    };
    let text = match read_small(&path).await {
        Ok(text) => text,
        Err(error) => return format!("registration unknown ({path}: {error})"),
    };
    let Some(namesrv) = property(&text, "namesrvAddr") else {
        return format!("registration unknown ({path} names no namesrvAddr)");
    };
    let addresses = super::input::split_list(&namesrv);
    let asked = with_admin(&addresses, |admin| async move { admin.brokers().await }).await;
    match asked {
        Ok(brokers) => match brokers.get(broker) {
            Some(entry) => format!(
                "registered on namesrv {namesrv} at {}",
                entry.addrs.values().cloned().collect::<Vec<_>>().join(", ")
            ),
            None => format!("not registered on namesrv {namesrv}"),
        },
        Err(failure) => format!("registration unknown: {}", failure.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(dir: &std::path::Path) -> ActionContext {
        ActionContext {
            run_id: uuid::Uuid::nil(),
            step: "s".to_owned(),
            attempt: 1,
            undo: false,
            cancel: tokio_util::sync::CancellationToken::new(),
            draining: tokio_util::sync::CancellationToken::new(),
            log: runbook_engine::action::LogSink::new(dir.join("log")),
            state_dir: dir.join("state"),
            note: None,
            recorder: runbook_engine::action::Recorder::discard(),
            settle: None,
        }
    }

    #[tokio::test]
    async fn a_config_file_preview_reads_the_value_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.conf");
        let text = "brokerName=broker-c\nbrokerPermission=6\n";
        std::fs::write(&path, text).unwrap();
        let input =
            json!({"path": path.display().to_string(), "key": "brokerPermission", "value": "4"});
        let preview = config_file(input, context(dir.path())).await.unwrap();
        assert_eq!(preview["changes"][0]["before"], "6", "{preview}");
        assert_eq!(preview["changes"][0]["after"], "4", "{preview}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        let same =
            json!({"path": path.display().to_string(), "key": "brokerName", "value": "broker-c"});
        let preview = config_file(same, context(dir.path())).await.unwrap();
        assert_eq!(preview["changes"], json!([]), "{preview}");
        // A device is refused, not read forever.
        let device = json!({"path": "/dev/zero", "key": "k", "value": "v"});
        let failure = config_file(device, context(dir.path())).await.unwrap_err();
        assert!(failure.message.contains("/dev/zero"), "{}", failure.message);
    }

    /// A preview reads its input as the action does: an input built from the action's schema
    /// (required keys only, and every key) gets past the preview's reading of it. An input
    /// mistake is a permanent failure `<action>: <key>: ...`; anything else (no NameServer
    /// listens on port 1, a file that is not there) means the input was taken.
    #[tokio::test]
    async fn every_preview_takes_an_input_built_from_its_schema() {
        let mut registry = Registry::new();
        super::super::register(&mut registry);
        let dir = tempfile::tempdir().unwrap();
        let mut previewed = Vec::new();
        let names: Vec<String> = registry
            .names()
            .filter(|name| name.starts_with("rocketmq."))
            .map(str::to_owned)
            .collect();
        for name in names {
            let action = registry.get(&name).unwrap();
            let schema = action.schema();
            for all in [false, true] {
                let mut input = schema.sample(all);
                if input.get("namesrv").is_some() {
                    input["namesrv"] = Value::from("127.0.0.1:1");
                }
                let Some(preview) = action.preview(input.clone(), context(dir.path())) else {
                    continue;
                };
                previewed.push(name.clone());
                let result = tokio::time::timeout(std::time::Duration::from_secs(3), preview).await;
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
        previewed.dedup();
        assert_eq!(
            previewed,
            [
                "rocketmq.broker_config",
                "rocketmq.command",
                "rocketmq.config_file",
                "rocketmq.copy_metadata",
                "rocketmq.reset_offset",
                "rocketmq.restore_offsets",
                "rocketmq.topic_upsert",
            ]
        );
    }

    #[test]
    fn a_permission_says_what_it_allows() {
        assert_eq!(perm_text(6), "6 (read/write)");
        assert_eq!(perm_text(4), "4 (read-only)");
        assert_eq!(perm_text(2), "2 (write-only)");
        assert_eq!(perm_text(0), "0 (no access)");
    }

    #[test]
    fn only_offsets_that_move_are_changes() {
        let key = |queue| ("t".to_owned(), "broker-a".to_owned(), queue);
        let now = BTreeMap::from([(key(0), 5), (key(1), 7)]);
        let targets = BTreeMap::from([(key(0), 5), (key(1), 3), (key(2), 0)]);
        let changes = offset_changes("g", &now, &targets);
        assert_eq!(
            changes,
            vec![
                change(
                    "group g on t, broker broker-a queue 1: offset".to_owned(),
                    json!(7),
                    json!(3)
                ),
                change(
                    "group g on t, broker broker-a queue 2: offset".to_owned(),
                    json!(null),
                    json!(0)
                ),
            ]
        );
    }
}
