//! `rocketmq.backup`: before a runbook changes anything, save every master's topic configs,
//! subscription groups and consumer offsets (read through the admin protocol:
//! `GET_ALL_TOPIC_CONFIG`, `GET_ALL_SUBSCRIPTIONGROUP_CONFIG`, `GET_ALL_CONSUMER_OFFSET`) as JSON
//! files in the call's private directory, `<data dir>/runs/<run>/calls/<n>/backup/<broker>/`.
//! They live as long as the run (retention deletes them with it).
//!
//! Input: `namesrv`, `cluster?` (default: every registered broker group).
//! Output: `path`, `brokers [{broker, addr, topics, groups, offsets, dir}]`, the totals
//! `topics`, `groups`, `offsets`, and `summary` (one line naming the path).

use std::path::Path;

use rocketmq_client_rust::{ConsumerAdmin as _, OffsetAdmin as _};
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Map, Value};

use super::input::Input;
use super::session::{explain, now_ms, with_admin, BrokerRef, REQUEST_TIMEOUT};
use super::topic::{broker_topic_configs, config_json};

fn write_json(path: &Path, value: &Value) -> Result<(), ActionFailure> {
    let text = serde_json::to_vec_pretty(value).map_err(|error| {
        ActionFailure::permanent(format!("encoding {}: {error}", path.display()))
    })?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|error| ActionFailure::retryable(format!("writing {}: {error}", path.display())))
}

/// The input of `rocketmq.backup` (it only reads the cluster; what it writes is the run's own
/// directory).
pub const SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional(
            "cluster",
            Kind::Text,
            "back up this cluster's brokers (default: every registered group)",
        ),
    ],
};

pub async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.backup", &input);
    let namesrv = input.namesrv()?;
    let cluster = input.opt_string("cluster")?;
    let root = context.state_dir.join("backup");
    with_admin(&namesrv, |admin| async move {
        let brokers = admin.brokers().await?;
        let mut targets = Vec::new();
        for (name, entry) in &brokers {
            if cluster.as_ref().is_some_and(|cluster| &entry.cluster != cluster) {
                continue;
            }
            match entry.master() {
                Some(addr) => targets.push(BrokerRef { name: name.clone(), addr: addr.to_owned() }),
                None => context.log.line(&format!("broker {name}: no master registered, nothing to back up from it")),
            }
        }
        if targets.is_empty() {
            return Err(ActionFailure::permanent(format!(
                "no broker{} registered on namesrv {}: nothing to back up",
                cluster.as_ref().map_or_else(String::new, |cluster| format!(" of cluster {cluster}")),
                admin.namesrv
            )));
        }
        let mut report = Vec::new();
        let (mut topics_total, mut groups_total, mut offsets_total) = (0, 0, 0);
        for broker in &targets {
            let dir = root.join(&broker.name);
            std::fs::create_dir_all(&dir)
                .map_err(|error| ActionFailure::retryable(format!("creating {}: {error}", dir.display())))?;
            let topics = broker_topic_configs(&admin, broker).await?;
            let mut topic_map = Map::new();
            let mut names: Vec<&String> = topics.keys().collect();
            names.sort();
            for name in names {
                topic_map.insert(name.clone(), config_json(&topics[name]));
            }
            let groups = admin
                .inner
                .get_all_subscription_group(broker.addr(), REQUEST_TIMEOUT.as_millis() as u64)
                .await
                .map_err(|error| ActionFailure::retryable(format!("broker {} ({}) did not return its subscription groups: {}", broker.name, broker.addr, explain(&error))))?;
            let mut group_map = Map::new();
            for (name, config) in &groups.subscription_group_table {
                let value = serde_json::to_value(config).unwrap_or_else(|error| json!({"error": error.to_string()}));
                group_map.insert(name.to_string(), value);
            }
            let offsets_text = admin
                .inner
                .export_rocksdb_consumer_offset_from_memory(broker.addr())
                .await
                .map_err(|error| ActionFailure::retryable(format!("broker {} ({}) did not return its consumer offsets: {}", broker.name, broker.addr, explain(&error))))?;
            let offsets: Value = serde_json::from_str(offsets_text.as_str()).unwrap_or_else(|_| json!({"raw": offsets_text.to_string()}));
            let offset_entries = offsets
                .get("offsetTable")
                .and_then(Value::as_object)
                .map_or(0, |table| table.values().filter_map(Value::as_object).map(Map::len).sum::<usize>());
            write_json(&dir.join("topics.json"), &Value::Object(topic_map.clone()))?;
            write_json(&dir.join("subscription_groups.json"), &Value::Object(group_map.clone()))?;
            write_json(&dir.join("consumer_offsets.json"), &offsets)?;
            topics_total += topic_map.len();
            groups_total += group_map.len();
            offsets_total += offset_entries;
            context.log.line(&format!(
                "broker {} ({}): {} topic(s), {} subscription group(s), {} consumer offset(s) -> {}",
                broker.name,
                broker.addr,
                topic_map.len(),
                group_map.len(),
                offset_entries,
                dir.display()
            ));
            report.push(json!({
                "broker": broker.name,
                "addr": broker.addr,
                "topics": topic_map.len(),
                "groups": group_map.len(),
                "offsets": offset_entries,
                "dir": dir.display().to_string(),
            }));
        }
        let path = root.display().to_string();
        let summary = format!(
            "backup of {} broker(s) in {path}: {topics_total} topic config(s), {groups_total} subscription group(s), {offsets_total} consumer offset(s)",
            report.len()
        );
        write_json(&root.join("manifest.json"), &json!({"namesrv": admin.namesrv, "brokers": report, "observed_at_ms": now_ms()}))?;
        context.log.line(&summary);
        Ok(json!({
            "path": path,
            "summary": summary,
            "brokers": report,
            "topics": topics_total,
            "groups": groups_total,
            "offsets": offsets_total,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}
