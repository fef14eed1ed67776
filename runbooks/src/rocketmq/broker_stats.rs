//! `rocketmq.broker_stats`: a broker's runtime statistics (what `mqadmin brokerStatus` shows).
//!
//! Input: `namesrv`, `broker` or `broker_addr`, optional `retention` (a duration such as `72h`).
//!
//! Output: `put_tps` (messages/s over the broker's shortest window), `get_tps`,
//! `put_total_today`, `earliest_message_time_ms` (null when the store holds no message),
//! `earliest_message_age_ms`, `commit_log_min_offset`, `commit_log_max_offset`, `has_messages`,
//! `observed_at_ms`, `raw` (every key as the broker reports it), and with `retention`:
//! `retention_ms` and `retention_remaining` — a duration for a `wait` step: the full retention
//! (the newest message is at most as old as now, since writes have stopped), or `0s` when the
//! store holds no message any more.

use std::collections::BTreeMap;

use rocketmq_client_rust::BrokerAdmin as _;
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::common::{explain, now_ms, with_admin, Input};

/// The input of `rocketmq.broker_stats` (read-only).
pub const SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        optional(
            "namesrv",
            Kind::List,
            "the NameServer list, host:port;host:port",
        )
        .required(),
        optional(
            "broker",
            Kind::Text,
            "the broker, by name (or `broker_addr`)",
        ),
        optional(
            "broker_addr",
            Kind::Text,
            "the broker, by address host:port",
        ),
        optional(
            "retention",
            Kind::Duration,
            "the retention, to report how much of it is left",
        ),
    ],
};

pub async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.broker_stats", &input);
    let namesrv = input.namesrv()?;
    let broker = input.opt_string("broker")?;
    let broker_addr = input.opt_string("broker_addr")?;
    let retention = input.opt_duration("retention")?;
    with_admin(&namesrv, |admin| async move {
        let target = admin
            .resolve_broker(broker.as_deref(), broker_addr.as_deref())
            .await?;
        let table = admin
            .inner
            .fetch_broker_runtime_stats(target.addr())
            .await
            .map_err(|error| {
                let error = explain(&error);
                {
                    ActionFailure::retryable(format!(
                        "broker {} ({}) did not return its runtime stats: {error}",
                        target.name, target.addr
                    ))
                }
            })?;
        let raw: BTreeMap<String, String> = table
            .table
            .into_iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let now = now_ms();
        let put_tps = first_number(raw.get("putTps")).unwrap_or(0.0);
        let get_tps = first_number(raw.get("getFoundTps"))
            .or_else(|| first_number(raw.get("getTotalTps")))
            .unwrap_or(0.0);
        let min_offset = integer(raw.get("commitLogMinOffset"));
        let max_offset = integer(raw.get("commitLogMaxOffset"));
        let earliest = integer(raw.get("earliestMessageTimeStamp")).filter(|&stamp| stamp > 0);
        let has_messages = match (min_offset, max_offset) {
            (Some(min), Some(max)) => max > min,
            _ => earliest.is_some(),
        };
        let earliest = earliest.filter(|_| has_messages);
        context.log.line(&format!(
            "broker {} ({}): putTps {put_tps}, earliest message {}, commitlog offsets {}..{}",
            target.name,
            target.addr,
            earliest.map_or_else(
                || "none".to_owned(),
                |stamp| format!("{} ms ago", now - stamp)
            ),
            min_offset.map_or_else(|| "?".to_owned(), |offset| offset.to_string()),
            max_offset.map_or_else(|| "?".to_owned(), |offset| offset.to_string()),
        ));
        let mut output = json!({
            "broker": target.name,
            "addr": target.addr,
            "put_tps": put_tps,
            "get_tps": get_tps,
            "put_total_today": integer(raw.get("msgPutTotalTodayNow")),
            "earliest_message_time_ms": earliest,
            "earliest_message_age_ms": earliest.map(|stamp| (now - stamp).max(0)),
            "commit_log_min_offset": min_offset,
            "commit_log_max_offset": max_offset,
            "has_messages": has_messages,
            "observed_at_ms": now,
            "raw": raw,
        });
        if let Some(retention) = retention {
            let remaining = if has_messages {
                retention
            } else {
                std::time::Duration::ZERO
            };
            output["retention_ms"] = json!(retention.as_millis() as u64);
            output["retention_remaining"] = json!(format!("{}ms", remaining.as_millis()));
        }
        Ok(output)
    })
    .await
}

/// `"12.5 3.0 1.0"` or `"12.5"` → 12.5.
fn first_number(text: Option<&String>) -> Option<f64> {
    text?.split_whitespace().next()?.parse().ok()
}

fn integer(text: Option<&String>) -> Option<i64> {
    text?.trim().parse().ok()
}
