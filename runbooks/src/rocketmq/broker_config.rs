//! `rocketmq.broker_config`: read a broker's runtime config, or change keys and check that the
//! broker really holds the new values.
//!
//! Input: `namesrv`, `broker` (name) or `broker_addr`, `replicas` (true: apply `set` and
//! `expect` to every broker process registered under the brokerName, slaves first then the
//! master, each read back; output `replicas: [{addr, id, role, previous, current}]`, and
//! `previous`/`current` of the master), and any of: `key` (read one key into
//! `value`), `set` (a table `{key = value}` to apply), `expect` (a table that must hold, or the
//! step fails).
//!
//! Output: `broker`, `addr`, `previous` (the values of the `set` keys before the change: feed it
//! back as `set` to undo), `current` (the values read back after the change), `changed`,
//! `value` (for `key`), `config` (everything, when neither `set`, `expect` nor `key` is given).
//!
//! A change is applied only when a value differs (so a retry after a crash is harmless) and is
//! followed by a fresh read: the step fails when the broker does not report the new value. The
//! Rust broker applies only a few keys at run time (`brokerPermission` among them) and does not
//! persist them; a Java broker rewrites its config file. Use `rocketmq.config_file` to make a
//! change survive a restart of a Rust broker.

use std::collections::{BTreeMap, HashMap};

use cheetah_string::CheetahString;
use rocketmq_client_rust::BrokerAdmin as _;
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Map, Value};

use super::input::Input;
use super::session::{explain, now_ms, with_admin, Admin, BrokerRef};

/// The input of `rocketmq.broker_config` (mutates: `set` changes the broker's config).
pub const SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional(
            "broker",
            Kind::Text,
            "the broker, by name (or `broker_addr`)",
        ),
        optional(
            "replicas",
            Kind::Bool,
            "set and check the value on every broker of the group `broker`",
        ),
        optional(
            "broker_addr",
            Kind::Text,
            "the broker, by address host:port",
        ),
        optional("key", Kind::Text, "a config key to read"),
        optional(
            "set",
            Kind::Table,
            "config keys to change (the previous values are kept for undo)",
        ),
        optional(
            "expect",
            Kind::Table,
            "config keys that must have these values",
        ),
    ],
};

pub async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.broker_config", &input);
    let namesrv = input.namesrv()?;
    let broker = input.opt_string("broker")?;
    let broker_addr = input.opt_string("broker_addr")?;
    let key = input.opt_string("key")?;
    let set = table(&input, "set")?;
    let expect = table(&input, "expect")?;
    let replicas = input.bool_or("replicas", false)?;
    if replicas && broker.is_none() {
        return Err(input.bad("replicas", "needs `broker` (the group's brokerName)"));
    }
    if replicas && key.is_some() {
        return Err(input.bad("replicas", "reads one broker: drop `key`, or `replicas`"));
    }
    with_admin(&namesrv, |admin| async move {
        if replicas {
            let name = broker.unwrap_or_default();
            let brokers = admin.brokers().await?;
            let entry = brokers.get(&name).ok_or_else(|| {
                ActionFailure::permanent(format!("broker {name} is not registered on namesrv {}", admin.namesrv))
            })?;
            if entry.master().is_none() {
                return Err(ActionFailure::retryable(format!(
                    "broker {name} has no master (brokerId 0) registered on namesrv {}: a failover may be under way",
                    admin.namesrv
                )));
            }
            // Slaves first, the master last: a client keeps writing to the master only.
            let mut targets: Vec<(u64, String)> = entry.addrs.iter().map(|(id, addr)| (*id, addr.clone())).collect();
            targets.sort_by_key(|(id, _)| (*id == 0, std::cmp::Reverse(*id)));
            let mut outputs = Vec::new();
            for (id, addr) in &targets {
                let target = BrokerRef { name: name.clone(), addr: addr.clone() };
                let mut one = apply(&admin, &target, &set, &expect, None, &context).await?;
                one["id"] = json!(id);
                one["role"] = json!(if *id == 0 { "master" } else { "slave" });
                outputs.push(one);
            }
            let master = outputs.iter().find(|one| one["id"] == json!(0)).cloned().unwrap_or_default();
            let mut output = json!({
                "broker": name,
                "addr": master["addr"],
                "replicas": outputs,
                "replica_count": targets.len(),
                "observed_at_ms": now_ms(),
            });
            for field in ["previous", "current", "expected"] {
                if let Some(value) = master.get(field) {
                    output[field] = value.clone();
                }
            }
            output["changed"] = json!(outputs.iter().any(|one| one["changed"] == json!(true)));
            return Ok(output);
        }
        let target = admin.resolve_broker(broker.as_deref(), broker_addr.as_deref()).await?;
        apply(&admin, &target, &set, &expect, key.as_deref(), &context).await
    })
    .await
}

/// Applies `set`, checks `expect` and reads `key` on one broker process.
async fn apply(
    admin: &Admin,
    target: &BrokerRef,
    set: &BTreeMap<String, String>,
    expect: &BTreeMap<String, String>,
    key: Option<&str>,
    context: &ActionContext,
) -> Result<Value, ActionFailure> {
    {
        let before = read(admin, target).await?;
        let mut output =
            json!({"broker": target.name, "addr": target.addr, "observed_at_ms": now_ms()});

        if !set.is_empty() {
            let previous: Map<String, Value> = set
                .keys()
                .map(|key| {
                    (
                        key.clone(),
                        before.get(key).map_or(Value::Null, |value| json!(value)),
                    )
                })
                .collect();
            let differing: HashMap<CheetahString, CheetahString> = set
                .iter()
                .filter(|(key, value)| before.get(*key) != Some(*value))
                .map(|(key, value)| {
                    (
                        CheetahString::from(key.as_str()),
                        CheetahString::from(value.as_str()),
                    )
                })
                .collect();
            let changed = !differing.is_empty();
            if changed {
                context.log.line(&format!(
                    "broker {} ({}): setting {}",
                    target.name,
                    target.addr,
                    describe(set, &before)
                ));
                let refused = |error| {
                    let error = explain(&error);
                    ActionFailure::retryable(format!(
                        "broker {} ({}) refused {}: {error}",
                        target.name,
                        target.addr,
                        describe(set, &before)
                    ))
                };
                admin
                    .inner
                    .update_broker_config(target.addr(), differing)
                    .await
                    .map_err(refused)?;
            } else {
                context.log.line(&format!(
                    "broker {} ({}): already {}",
                    target.name,
                    target.addr,
                    describe(set, &before)
                ));
            }
            let after = read(admin, target).await?;
            let mut current = Map::new();
            for (key, wanted) in set {
                let actual = after.get(key);
                if actual != Some(wanted) {
                    return Err(ActionFailure::permanent(format!(
                        "broker {} ({}): {key} reads {} after setting it to {wanted}: the broker did not apply it",
                        target.name,
                        target.addr,
                        actual.map_or("nothing", String::as_str)
                    )));
                }
                current.insert(key.clone(), json!(wanted));
            }
            context.log.line(&format!(
                "broker {}: read back {}",
                target.name,
                Value::Object(current.clone())
            ));
            output["previous"] = Value::Object(previous);
            output["current"] = Value::Object(current);
            output["changed"] = json!(changed);
        }

        if !expect.is_empty() {
            let now = read(admin, target).await?;
            for (key, wanted) in expect {
                let actual = now.get(key);
                if actual != Some(wanted) {
                    return Err(ActionFailure::permanent(format!(
                        "broker {} ({}): {key} is {}, expected {wanted}",
                        target.name,
                        target.addr,
                        actual.map_or("unset", String::as_str)
                    )));
                }
            }
            context.log.line(&format!(
                "broker {}: as expected: {}",
                target.name,
                describe(expect, &now)
            ));
            let checked: Map<String, Value> = expect
                .iter()
                .map(|(key, value)| (key.clone(), json!(value)))
                .collect();
            output["expected"] = Value::Object(checked);
        }

        if let Some(key) = key {
            let value = before.get(key).ok_or_else(|| {
                ActionFailure::permanent(format!(
                    "broker {} ({}) has no config key {key}",
                    target.name, target.addr
                ))
            })?;
            output["key"] = json!(key);
            output["value"] = json!(value);
        }
        if set.is_empty() && expect.is_empty() && key.is_none() {
            output["config"] = json!(before);
        }
        Ok(output)
    }
}

/// The broker's config as it reports it now.
pub async fn read(
    admin: &Admin,
    target: &BrokerRef,
) -> Result<BTreeMap<String, String>, ActionFailure> {
    let config = admin
        .inner
        .get_broker_config(target.addr())
        .await
        .map_err(|error| {
            let error = explain(&error);
            {
                ActionFailure::retryable(format!(
                    "broker {} ({}) did not return its config: {error}",
                    target.name, target.addr
                ))
            }
        })?;
    Ok(config
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect())
}

/// A table of `key = value` (values as text), as `set` and `expect` are given.
pub(super) fn table(
    input: &Input<'_>,
    field: &str,
) -> Result<BTreeMap<String, String>, ActionFailure> {
    match input.get(field) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key.clone(), text.clone())),
                Value::Number(number) => Ok((key.clone(), number.to_string())),
                Value::Bool(flag) => Ok((key.clone(), flag.to_string())),
                other => Err(input.bad(
                    field,
                    format!("{key}: must be a string, number or bool, not {other}"),
                )),
            })
            .collect(),
        Some(other) => Err(input.bad(
            field,
            format!("must be a table of key = value, not {other}"),
        )),
    }
}

fn describe(wanted: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> String {
    wanted
        .iter()
        .map(|(key, value)| {
            format!(
                "{key}: {} -> {value}",
                now.get(key).map_or("unset", String::as_str)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
