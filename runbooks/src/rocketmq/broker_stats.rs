//! `rocketmq.broker_stats`: a broker's runtime statistics (what `mqadmin brokerStatus` shows).
//!
//! Input: `namesrv`, `broker` or `broker_addr`, optional `retention` (a duration such as `72h`).
//!
//! Output: `file_reserved_time_hours` and `delete_when` (the broker's own retention settings),
//! `delayed_backlog` (messages from `scheduleMessageOffset_*`; a broker that does not report them,
//! like the Rust broker, gets the number of delay levels of `SCHEDULE_TOPIC_XXXX` whose newest
//! message is not due yet, and `delayed_due_at_ms`),
//! `timer_backlog` (`timerCongestNum` + `timerOffsetBehind`, null when not reported),
//! `half_backlog` (half messages on this broker the transaction check, group `CID_RMQ_SYS_TRANS`,
//! has not passed yet),
//! `backlog_total`, `backlog_not_reported`, `put_tps` (messages/s over the broker's shortest window), `get_tps`,
//! `put_total_today`, `earliest_message_time_ms` (null when the store holds no message),
//! `earliest_message_age_ms`, `commit_log_min_offset`, `commit_log_max_offset`, `has_messages`,
//! `version` (`brokerVersionDesc`, e.g. `V5_3_1_SNAPSHOT`: the protocol version the broker
//! speaks, what `clusterList` shows as `#Version`), `version_code` (`brokerVersion`),
//! `observed_at_ms`, `raw` (every key as the broker reports it), and with `retention`:
//! `retention_ms` and `retention_remaining` — a duration for a `wait` step: the full retention
//! (the newest message is at most as old as now, since writes have stopped), or `0s` when the
//! store holds no message (an empty store reports min offset -1 and max 0), with
//! `retention_note` saying which.

use std::collections::BTreeMap;

use rocketmq_client_rust::{BrokerAdmin as _, ConsumerAdmin as _, TopicAdmin as _};
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::input::Input;
use super::session::{explain, now_ms, with_admin};

/// The input of `rocketmq.broker_stats` (read-only).
pub const SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
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
        // An empty store reports min -1 and max 0: it holds no message.
        let has_messages = match (min_offset, max_offset) {
            (Some(min), Some(max)) => max > min.max(0),
            _ => earliest.is_some(),
        };
        // What the broker itself keeps: fileReservedTime (hours) and deleteWhen (hours of day).
        let config = admin.inner.get_broker_config(target.addr()).await.map_err(|error| {
            ActionFailure::retryable(format!(
                "broker {} ({}) did not return its config: {}",
                target.name,
                target.addr,
                explain(&error)
            ))
        })?;
        let config_value = |key: &str| config.get(&cheetah_string::CheetahString::from(key)).map(|value| value.to_string());
        let file_reserved_time = config_value("fileReservedTime");
        let delete_when = config_value("deleteWhen");
        // Delayed messages not yet delivered: Java brokers report scheduleMessageOffset_<level> =
        // "<delivered offset>,<max offset>" per delay level.
        let mut schedule_levels = 0;
        let mut schedule_backlog: i64 = 0;
        for (key, value) in &raw {
            if key.starts_with("scheduleMessageOffset_") {
                let mut parts = value.split(',').map(|part| part.trim().parse::<i64>());
                if let (Some(Ok(done)), Some(Ok(max))) = (parts.next(), parts.next()) {
                    schedule_levels += 1;
                    schedule_backlog += (max - done).max(0);
                }
            }
        }
        let mut schedule_backlog = (schedule_levels > 0).then_some(schedule_backlog);
        let mut delayed_due_at_ms: Option<i64> = None;
        if schedule_backlog.is_none() {
            // Brokers that do not report scheduleMessageOffset_* (the Rust broker): a delay
            // level's queue (queueId = level - 1) of SCHEDULE_TOPIC_XXXX may still hold an
            // undelivered message until its newest message is due: stored + the level's delay.
            let levels: Vec<Option<i64>> = config_value("messageDelayLevel")
                .unwrap_or_else(|| "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h".to_owned())
                .split_whitespace()
                .map(|level| runbook_engine::duration::parse(level).ok().map(|delay| delay.as_millis() as i64))
                .collect();
            match admin
                .inner
                .examine_topic_stats(cheetah_string::CheetahString::from("SCHEDULE_TOPIC_XXXX"), Some(target.addr()))
                .await
            {
                Ok(stats) => {
                    let mut pending = 0;
                    for (queue, offset) in stats.get_offset_table() {
                        if offset.get_max_offset() <= offset.get_min_offset().max(0) {
                            continue;
                        }
                        let delay = usize::try_from(queue.queue_id()).ok().and_then(|index| levels.get(index).copied().flatten());
                        // An unknown level: its messages are pending until somebody looks.
                        let due = delay.map_or(i64::MAX, |delay| offset.get_last_update_timestamp().saturating_add(delay));
                        if due > now {
                            pending += 1;
                            delayed_due_at_ms = Some(delayed_due_at_ms.map_or(due, |at: i64| at.max(due)));
                        }
                    }
                    schedule_backlog = Some(pending);
                }
                Err(error) if matches!(error.broker_response_code(), Some(17)) => schedule_backlog = Some(0),
                Err(error) => {
                    return Err(ActionFailure::retryable(format!(
                        "broker {} ({}) did not return the stats of SCHEDULE_TOPIC_XXXX: {}",
                        target.name,
                        target.addr,
                        explain(&error)
                    )))
                }
            }
        }
        let timer_backlog = match (integer(raw.get("timerCongestNum")), integer(raw.get("timerOffsetBehind"))) {
            (None, None) => None,
            (congested, behind) => Some(congested.unwrap_or(0).max(0) + behind.unwrap_or(0).max(0)),
        };
        // Half (transactional) messages the transaction check has not passed yet on this broker.
        let half_backlog = match admin
            .inner
            .examine_consume_stats(
                cheetah_string::CheetahString::from(rocketmq_model::common::mix_all::CID_SYS_RMQ_TRANS),
                Some(cheetah_string::CheetahString::from("RMQ_SYS_TRANS_HALF_TOPIC")),
                None,
                Some(target.addr()),
                Some(super::session::REQUEST_TIMEOUT.as_millis() as u64),
            )
            .await
        {
            Ok(stats) => stats
                .offset_table
                .values()
                .map(|offset| (offset.get_broker_offset() - offset.get_consumer_offset()).max(0))
                .sum::<i64>(),
            Err(error) if matches!(error.broker_response_code(), Some(17 | 22)) => 0,
            Err(error) => {
                return Err(ActionFailure::retryable(format!(
                    "broker {} ({}) did not return the progress of its transaction check: {}",
                    target.name,
                    target.addr,
                    explain(&error)
                )))
            }
        };
        let unknown: Vec<&str> = [("delayed", schedule_backlog.is_none()), ("timer", timer_backlog.is_none())]
            .into_iter()
            .filter(|(_, missing)| *missing)
            .map(|(name, _)| name)
            .collect();
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
        context.log.line(&format!(
            "broker {}: fileReservedTime {}h, deleteWhen {}; backlog: delayed {}, timer {}, half {half_backlog}",
            target.name,
            file_reserved_time.as_deref().unwrap_or("?"),
            delete_when.as_deref().unwrap_or("?"),
            schedule_backlog.map_or_else(|| "not reported".to_owned(), |n| n.to_string()),
            timer_backlog.map_or_else(|| "not reported".to_owned(), |n| n.to_string()),
        ));
        let mut output = json!({
            "file_reserved_time_hours": file_reserved_time.as_deref().and_then(|text| text.trim().parse::<i64>().ok()),
            "delete_when": delete_when,
            "delayed_backlog": schedule_backlog,
            "delayed_due_at_ms": delayed_due_at_ms,
            "timer_backlog": timer_backlog,
            "half_backlog": half_backlog,
            "backlog_not_reported": unknown,
            "backlog_total": schedule_backlog.unwrap_or(0) + timer_backlog.unwrap_or(0) + half_backlog,
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
            "version": raw.get("brokerVersionDesc"),
            "version_code": integer(raw.get("brokerVersion")),
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
            let note = if has_messages {
                format!("the broker holds messages: wait the retention ({}ms)", retention.as_millis())
            } else {
                format!(
                    "the broker holds no message (commitlog offsets {}..{}): the retention wait is skipped",
                    min_offset.map_or_else(|| "?".to_owned(), |offset| offset.to_string()),
                    max_offset.map_or_else(|| "?".to_owned(), |offset| offset.to_string())
                )
            };
            context.log.line(&note);
            output["retention_note"] = json!(note);
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
