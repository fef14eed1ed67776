//! Consumer actions: `rocketmq.consumer_progress`, `rocketmq.reset_offset`,
//! `rocketmq.restore_offsets`.
//!
//! Progress is read per group, broker and queue, as `mqadmin consumerProgress` shows it, and
//! includes the group's `%RETRY%` topic. A reset saves the offsets it replaces (the undo feeds them
//! to `restore_offsets`) and reads the offsets back afterwards.

use std::collections::BTreeMap;

use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    BrokerAdmin as _, ConsumerAdmin as _, OffsetAdmin as _, TopicAdmin as _,
};
use rocketmq_model::message::MessageQueue;
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::input::Input;
use super::session::{explain, now_ms, with_admin, Admin, REQUEST_TIMEOUT};
use super::system::is_system_group;
use super::topic::existing_route;

/// One queue's progress for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueProgress {
    pub topic: String,
    pub broker: String,
    pub queue_id: i32,
    pub broker_offset: i64,
    pub consumer_offset: i64,
    pub last_timestamp_ms: i64,
    /// The queue's min offset (messages below it expired): lag counts from
    /// max(consumer offset, min offset), what the group can still read. None when unknown.
    pub min_offset: Option<i64>,
}

impl QueueProgress {
    pub fn diff(&self) -> i64 {
        let from = self
            .min_offset
            .map_or(self.consumer_offset, |min| self.consumer_offset.max(min));
        (self.broker_offset - from).max(0)
    }

    fn to_json(&self) -> Value {
        json!({
            "topic": self.topic,
            "broker": self.broker,
            "queue_id": self.queue_id,
            "broker_offset": self.broker_offset,
            "consumer_offset": self.consumer_offset,
            "min_offset": self.min_offset,
            "diff": self.diff(),
            "last_timestamp_ms": self.last_timestamp_ms,
        })
    }
}

/// A typed "does not exist" answer (response code 17: topic, 22: subscription group): the only
/// error that may mean "no offsets". Any other error (a timeout, a refused connection, a system
/// error) hides lag and fails the poll.
fn is_typed_absent(error: &rocketmq_client_rust::ClientError) -> bool {
    matches!(error.broker_response_code(), Some(17 | 22))
}

/// The progress of `group` (on `topic` and its retry topic, or on everything it consumes).
/// `Ok(None)` when the brokers hold no offsets for the group.
pub async fn group_progress(
    admin: &Admin,
    group: &str,
    topic: Option<&str>,
) -> Result<Option<Vec<QueueProgress>>, ActionFailure> {
    let topics: Vec<Option<String>> = match topic {
        Some(topic) => vec![Some(topic.to_owned()), Some(format!("%RETRY%{group}"))],
        None => vec![None],
    };
    let mut queues = Vec::new();
    let mut found_any = false;
    for topic in &topics {
        let result = admin
            .inner
            .examine_consume_stats(
                CheetahString::from(group),
                topic.as_deref().map(CheetahString::from),
                None,
                None,
                Some(REQUEST_TIMEOUT.as_millis() as u64),
            )
            .await;
        match result {
            Ok(stats) => {
                found_any = true;
                for (queue, offset) in &stats.offset_table {
                    queues.push(QueueProgress {
                        topic: queue.topic().to_string(),
                        broker: queue.broker_name().to_string(),
                        queue_id: queue.queue_id(),
                        broker_offset: offset.get_broker_offset(),
                        consumer_offset: offset.get_consumer_offset(),
                        last_timestamp_ms: offset.get_last_timestamp(),
                        min_offset: None,
                    });
                }
            }
            // The group or (its retry) topic does not exist, as the broker or NameServer says
            // with a response code: no offsets there.
            Err(error) if is_typed_absent(&error) => {}
            Err(error) => {
                let error = explain(&error);
                return Err(ActionFailure::retryable(format!(
                    "consumer group {group}{}: the brokers did not return its progress: {error}",
                    topic
                        .as_ref()
                        .map_or_else(String::new, |topic| format!(" on topic {topic}"))
                )));
            }
        }
    }
    // Messages below a queue's min offset expired: they are no lag any more.
    let topics: std::collections::BTreeSet<String> =
        queues.iter().map(|queue| queue.topic.clone()).collect();
    for topic in topics {
        let stats = admin
            .inner
            .examine_topic_stats(CheetahString::from(topic.as_str()), None)
            .await
            .map_err(|error| {
                ActionFailure::retryable(format!(
                    "topic {topic}: the brokers did not return its min offsets: {}",
                    explain(&error)
                ))
            })?;
        for (queue, offset) in stats.get_offset_table() {
            for progress in queues.iter_mut().filter(|progress| {
                progress.topic == topic
                    && progress.broker == queue.broker_name().as_str()
                    && progress.queue_id == queue.queue_id()
            }) {
                progress.min_offset = Some(offset.get_min_offset());
            }
        }
    }
    queues
        .sort_by(|a, b| (&a.topic, &a.broker, a.queue_id).cmp(&(&b.topic, &b.broker, b.queue_id)));
    Ok(found_any.then_some(queues))
}

/// Whether `group` has a consumer online: the broker answers with its connections, or says
/// "consumer not online" (response code 206). Any other error fails.
async fn is_online(admin: &Admin, group: &str) -> Result<bool, ActionFailure> {
    match admin
        .inner
        .examine_consumer_connection_info(CheetahString::from(group), None)
        .await
    {
        Ok(connection) => Ok(!connection.get_connection_set().is_empty()),
        Err(error) if matches!(error.broker_response_code(), Some(206 | 17 | 22)) => Ok(false),
        Err(error) => Err(ActionFailure::retryable(format!(
            "consumer group {group}: the brokers did not say whether a consumer is online: {}",
            explain(&error)
        ))),
    }
}

/// Every user consumer group the masters hold.
async fn all_groups(admin: &Admin) -> Result<Vec<String>, ActionFailure> {
    let brokers = admin.brokers().await?;
    let mut groups = std::collections::BTreeSet::new();
    for (name, entry) in &brokers {
        let Some(addr) = entry.master() else { continue };
        let wrapper = admin
            .inner
            .get_all_subscription_group(
                CheetahString::from(addr),
                REQUEST_TIMEOUT.as_millis() as u64,
            )
            .await
            .map_err(|error| {
                let error = explain(&error);
                {
                    ActionFailure::retryable(format!(
                        "broker {name} ({addr}) did not return its subscription groups: {error}"
                    ))
                }
            })?;
        groups.extend(
            wrapper
                .subscription_group_table
                .keys()
                .map(|group| group.to_string())
                .filter(|group| !is_system_group(group)),
        );
    }
    Ok(groups.into_iter().collect())
}

/// The input of `rocketmq.consumer_progress` (read-only).
pub const PROGRESS_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("group", Kind::Text, "one consumer group"),
        optional("groups", Kind::List, "consumer groups"),
        optional(
            "topic",
            Kind::Text,
            "count only this topic (default groups: those consuming it)",
        ),
        optional("broker", Kind::Text, "count only this broker's queues"),
        optional(
            "queue_from",
            Kind::Int,
            "count only queues with this id or higher",
        ),
        optional(
            "retention",
            Kind::Duration,
            "report whether it has passed since `since_ms`",
        ),
        optional(
            "online",
            Kind::Bool,
            "also report the lagging groups with no consumer online",
        ),
        optional(
            "exclude_groups",
            Kind::List,
            "groups left out of the lag (an operator excluded them)",
        ),
        optional(
            "since_ms",
            Kind::Int,
            "epoch milliseconds the retention is counted from",
        ),
    ],
};

/// `rocketmq.consumer_progress`: input `namesrv`, and optionally `group` or `groups` (default:
/// the groups consuming `topic`, or every user group), `topic`, `broker` (count only its
/// queues), `queue_from` (count only queues with id ≥ this: the queues a shrink removes),
/// `retention` + `since_ms` (report whether the retention has passed since then),
/// `exclude_groups` (groups left out, as an operator decided; listed in `excluded_groups`),
/// `online` (true: ask whether each group has a consumer online; adds `online_diff_total`, the
/// lag of groups with a consumer online, `offline_groups` and `offline_lagging_groups`).
/// Lag counts from max(consumer offset, the queue's min offset): expired messages are no lag.
///
/// Output: `groups: [{group, diff_total, queues: [{topic, broker, queue_id, broker_offset,
/// consumer_offset, diff, last_timestamp_ms}], note}]`, `diff_total`, `by_broker`
/// (`{broker: diff}`), `drained` (diff_total == 0), and `retention_passed` when asked.
pub async fn run_progress(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.consumer_progress", &input);
    let namesrv = input.namesrv()?;
    let mut groups = input.string_list("groups")?;
    if let Some(group) = input.opt_string("group")? {
        groups.push(group);
    }
    let topic = input.opt_string("topic")?;
    let broker = input.opt_string("broker")?;
    let queue_from = input.opt_i64("queue_from")?;
    let exclude = input.string_list("exclude_groups")?;
    let check_online = input.bool_or("online", false)?;
    let retention = input.opt_duration("retention")?;
    let since_ms = input.opt_i64("since_ms")?;
    if retention.is_some() != since_ms.is_some() {
        return Err(input.bad(
            "retention",
            "give both `retention` and `since_ms`, or neither",
        ));
    }
    with_admin(&namesrv, |admin| async move {
        if let Some(topic) = &topic {
            existing_route(&admin, topic).await?;
        }
        if let Some(broker) = &broker {
            admin.resolve_broker(Some(broker), None).await?;
        }
        if groups.is_empty() {
            groups = match &topic {
                Some(topic) => {
                    let list = admin
                        .inner
                        .query_topic_consume_by_who(CheetahString::from(topic.as_str()))
                        .await
                        .map_err(|error| ActionFailure::retryable(format!("topic {topic}: the brokers did not say which groups consume it: {}", explain(&error))))?;
                    let mut found: Vec<String> = list.group_list.iter().map(|group| group.to_string()).filter(|group| !is_system_group(group)).collect();
                    found.sort();
                    found
                }
                None => all_groups(&admin).await?,
            };
        }
        let excluded: Vec<String> = groups.iter().filter(|group| exclude.contains(group)).cloned().collect();
        groups.retain(|group| !exclude.contains(group));
        if !excluded.is_empty() {
            context.log.line(&format!("excluded by the operator: {}", excluded.join(", ")));
        }
        let mut total = 0;
        let mut online_total = 0;
        let mut offline_lagging = Vec::new();
        let mut offline = Vec::new();
        let mut by_broker: BTreeMap<String, i64> = BTreeMap::new();
        let mut reports = Vec::new();
        // The max offset of every queue counted (the topic's own, not the retry topics'): what
        // a later `rocketmq.queue_writes` compares with to see whether anything arrived since.
        let mut max_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for group in &groups {
            let progress = group_progress(&admin, group, topic.as_deref()).await?;
            let note = progress.is_none().then_some("the brokers hold no offsets for this group");
            let queues: Vec<QueueProgress> = progress
                .unwrap_or_default()
                .into_iter()
                .filter(|queue| broker.as_ref().is_none_or(|broker| &queue.broker == broker))
                .filter(|queue| queue_from.is_none_or(|from| i64::from(queue.queue_id) >= from || queue.topic.starts_with("%RETRY%")))
                .collect();
            for queue in queues.iter().filter(|queue| topic.as_ref() == Some(&queue.topic)) {
                let entry = max_offsets.entry((queue.broker.clone(), queue.queue_id)).or_default();
                *entry = (*entry).max(queue.broker_offset);
            }
            let group_total: i64 = queues.iter().map(QueueProgress::diff).sum();
            for queue in &queues {
                *by_broker.entry(queue.broker.clone()).or_default() += queue.diff();
            }
            total += group_total;
            let online = if check_online { Some(is_online(&admin, group).await?) } else { None };
            match online {
                Some(false) => {
                    offline.push(group.clone());
                    if group_total > 0 {
                        offline_lagging.push(group.clone());
                    }
                }
                _ => online_total += group_total,
            }
            context.log.line(&format!(
                "group {group}: diff {group_total} over {} queue(s){}{}",
                queues.len(),
                match online { Some(true) => ", a consumer is online", Some(false) => ", NO consumer online", None => "" },
                note.map_or_else(String::new, |note| format!(" ({note})"))
            ));
            reports.push(json!({"group": group, "diff_total": group_total, "online": online, "queues": queues.iter().map(QueueProgress::to_json).collect::<Vec<_>>(), "note": note}));
        }
        let now = now_ms();
        let mut output = json!({
            "groups": reports,
            "group_names": groups,
            "excluded_groups": excluded,
            "diff_total": total,
            "by_broker": by_broker,
            "drained": total == 0,
            "max_offsets": max_offsets.iter().map(|((broker, queue_id), offset)| json!({"broker": broker, "queue_id": queue_id, "max_offset": offset})).collect::<Vec<_>>(),
            "observed_at_ms": now,
        });
        if check_online {
            output["online_diff_total"] = json!(online_total);
            output["offline_groups"] = json!(offline);
            output["offline_lagging_groups"] = json!(offline_lagging);
        }
        if let (Some(retention), Some(since)) = (retention, since_ms) {
            let passed = now - since >= retention.as_millis() as i64;
            output["retention_passed"] = json!(passed);
            if passed {
                context.log.line("the retention has passed since the write queues were removed");
            }
        }
        Ok(output)
    })
    .await
}

/// A point in time as operators write it: epoch milliseconds, RFC 3339, or `now`.
pub(super) fn parse_timestamp(input: &Input<'_>, field: &str) -> Result<i64, ActionFailure> {
    if let Some(number) = input.get(field).and_then(Value::as_i64) {
        return Ok(number);
    }
    let text = input.string(field)?;
    if text == "now" {
        return Ok(now_ms());
    }
    if let Ok(number) = text.parse::<i64>() {
        return Ok(number);
    }
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|instant| instant.timestamp_millis())
        .map_err(|error| {
            input.bad(
                field,
                format!(
                    "{text:?} is neither epoch milliseconds, an RFC 3339 instant nor \"now\": {}",
                    explain(&error)
                ),
            )
        })
}

fn offsets_json(queues: &[QueueProgress], topic: &str) -> Vec<Value> {
    queues
        .iter()
        .filter(|queue| queue.topic == topic)
        .map(|queue| json!({"topic": queue.topic, "broker": queue.broker, "queue_id": queue.queue_id, "offset": queue.consumer_offset}))
        .collect()
}

/// The input of `rocketmq.reset_offset` (mutates).
pub const RESET_SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("group", Kind::Text, "the consumer group").required(),
        optional("topic", Kind::Text, "the topic").required(),
        optional(
            "timestamp",
            Kind::Instant,
            "reset to the first message stored at or after it",
        )
        .required(),
        optional(
            "settle",
            Kind::Duration,
            "how long the consumers' offsets are watched after an online reset (default 20s)",
        ),
        optional(
            "force",
            Kind::Bool,
            "reset even ahead of the current offsets (default true)",
        ),
    ],
};

/// `rocketmq.reset_offset`: input `namesrv`, `group`, `topic`, `timestamp` (epoch ms, RFC 3339
/// or `now`), `force` (true). Saves the current offsets (`previous`), resets the group's offsets
/// on `topic` to the first message stored at or after `timestamp` (pushed to online consumers;
/// written on the brokers when the group is offline), and reads them back (`current`).
pub async fn run_reset(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.reset_offset", &input);
    let namesrv = input.namesrv()?;
    let group = input.string("group")?;
    let topic = input.string("topic")?;
    let timestamp = parse_timestamp(&input, "timestamp")?;
    let force = input.bool_or("force", true)?;
    let settle = input
        .opt_duration("settle")?
        .unwrap_or(std::time::Duration::from_secs(20));
    if timestamp < 0 {
        return Err(input.bad("timestamp", "must not be before 1970"));
    }
    with_admin(&namesrv, |admin| async move {
        existing_route(&admin, &topic).await?;
        let before = group_progress(&admin, &group, Some(&topic)).await?.ok_or_else(|| {
            ActionFailure::permanent(format!("consumer group {group} has no offsets on topic {topic}: there is nothing to reset (has it ever consumed?)"))
        })?;
        let previous = offsets_json(&before, &topic);
        let route = existing_route(&admin, &topic).await?;
        let route_brokers: Vec<String> = route.queue_datas.iter().map(|queue| queue.broker_name().to_string()).collect();
        let gets_before = get_totals(&admin, &route_brokers).await?;
        context.log.line(&format!("group {group} on topic {topic}: saved {} offset(s) before the reset", previous.len()));

        let mut method = "broker_push";
        let mut targets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        match admin.inner.reset_offset_by_timestamp(None, CheetahString::from(topic.as_str()), CheetahString::from(group.as_str()), timestamp as u64, force).await {
            Ok(table) => {
                for (queue, offset) in table {
                    targets.insert((queue.broker_name().to_string(), queue.queue_id()), offset as i64);
                }
            }
            Err(error) if error.broker_response_code() == Some(206) || error.to_string().to_lowercase().contains("not online") => {
                method = "offline_write";
                context.log.line(&format!("group {group} is not online: writing the offsets on the brokers"));
                let stats = admin
                    .inner
                    .reset_offset_by_timestamp_old(None, CheetahString::from(group.as_str()), CheetahString::from(topic.as_str()), timestamp as u64, force)
                    .await
                    .map_err(|error| ActionFailure::retryable(format!("resetting group {group} on topic {topic}: {}", explain(&error))))?;
                for stat in stats {
                    targets.insert((stat.broker_name.to_string(), stat.queue_id as i32), stat.rollback_offset);
                }
            }
            Err(error) => return Err(ActionFailure::retryable(format!("resetting group {group} on topic {topic}: {}", explain(&error)))),
        }
        if targets.is_empty() {
            return Err(ActionFailure::permanent(format!("resetting group {group} on topic {topic}: no broker reset any queue")));
        }
        let reset_to: Vec<Value> = targets
            .iter()
            .map(|((broker, queue_id), offset)| json!({"topic": topic, "broker": broker, "queue_id": queue_id, "offset": offset}))
            .collect();
        context.log.line(&format!("group {group} on topic {topic}: reset {} queue(s) ({method})", reset_to.len()));

        let after = if method == "broker_push" {
            let prior: BTreeMap<(String, i32), i64> = before
                .iter()
                .filter(|queue| queue.topic == topic)
                .map(|queue| ((queue.broker.clone(), queue.queue_id), queue.consumer_offset))
                .collect();
            verify_online(&admin, &context, &group, &topic, &targets, &prior, &gets_before, settle).await?
        } else {
            verify(&admin, &group, &topic, &targets, false).await?
        };
        Ok(json!({
            "group": group,
            "topic": topic,
            "timestamp_ms": timestamp,
            "method": method,
            "previous": previous,
            "reset_to": reset_to,
            "current": offsets_json(&after, &topic),
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}

/// Messages read from each broker today so far (`msgGetTotalTodayNow`, every group's pulls of
/// user topics): what bounds how far a group can have consumed past a reset target since.
async fn get_totals(
    admin: &Admin,
    brokers: &[String],
) -> Result<BTreeMap<String, i64>, ActionFailure> {
    let mut totals = BTreeMap::new();
    for name in brokers {
        let target = admin.resolve_broker(Some(name), None).await?;
        let table = admin
            .inner
            .fetch_broker_runtime_stats(target.addr())
            .await
            .map_err(|error| {
                ActionFailure::retryable(format!(
                    "broker {} ({}) did not return its runtime stats: {}",
                    target.name,
                    target.addr,
                    explain(&error)
                ))
            })?;
        let total = table
            .table
            .iter()
            .find(|(key, _)| key.as_str() == "msgGetTotalTodayNow")
            .and_then(|(_, value)| value.trim().parse::<i64>().ok());
        if let Some(total) = total {
            totals.insert(name.clone(), total);
        }
    }
    Ok(totals)
}

/// The online path's read-back. A reset the consumers never took can still read back as the
/// target for a moment (brokers with `useServerSideResetOffset` write it themselves, and the
/// client that did not take it commits its own offset over it at its next persist), so the
/// offsets are watched for `settle`, then each must be at or after its target, and how far the
/// group got past the targets on a broker must be covered by what was read from that broker
/// since the reset (`msgGetTotalTodayNow` grew by at least that much). An offset that rests at
/// its target while messages follow it fails too: a consumer that took the reset re-reads them
/// within `settle`, and one that did not leaves the broker's write in place until its next
/// persist overwrites it, which a read-back at the wrong moment took for success.
#[allow(clippy::too_many_arguments)]
async fn verify_online(
    admin: &Admin,
    context: &ActionContext,
    group: &str,
    topic: &str,
    targets: &BTreeMap<(String, i32), i64>,
    prior: &BTreeMap<(String, i32), i64>,
    gets_before: &BTreeMap<String, i64>,
    settle: std::time::Duration,
) -> Result<Vec<QueueProgress>, ActionFailure> {
    context.log.line(&format!(
        "group {group} on topic {topic}: watching the offsets for {settle:?}"
    ));
    tokio::time::sleep(settle).await;
    let after = group_progress(admin, group, Some(topic))
        .await?
        .unwrap_or_default();
    let brokers: Vec<String> = targets
        .keys()
        .map(|(broker, _)| broker.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let gets_after = get_totals(admin, &brokers).await?;
    // Consumers that left during the settle (or a broker that still listed a closed one when it
    // took the reset) leave the written offsets as an offline reset does: nobody to re-read.
    let online = is_online(admin, group).await?;
    if !online {
        context.log.line(&format!(
            "group {group}: no consumer is online after the settle; the offsets must rest at their targets"
        ));
    }
    let mut problems = Vec::new();
    let mut advanced: BTreeMap<String, (i64, Vec<String>)> = BTreeMap::new();
    for ((broker, queue_id), wanted) in targets {
        let found = after.iter().find(|queue| {
            queue.topic == topic && &queue.broker == broker && queue.queue_id == *queue_id
        });
        let Some(queue) = found else {
            problems.push(format!(
                "broker {broker} queue {queue_id}: no offset reported"
            ));
            continue;
        };
        let before = prior
            .get(&(broker.clone(), *queue_id))
            .copied()
            .unwrap_or(-1);
        if queue.consumer_offset < *wanted {
            problems.push(format!(
                "broker {broker} queue {queue_id}: offset {} is before the target {wanted}",
                queue.consumer_offset
            ));
        } else if online && queue.consumer_offset == *wanted && queue.broker_offset > *wanted {
            problems.push(format!(
                "broker {broker} queue {queue_id}: the offset rests at the target {wanted} with {} message(s) after it, nothing was re-read since the reset (before the reset {before}; a consumer that did not take it commits its own offset over it later; a slow consumer needs a longer settle)",
                queue.broker_offset - wanted
            ));
        } else if queue.consumer_offset > *wanted {
            let entry = advanced.entry(broker.clone()).or_default();
            entry.0 += queue.consumer_offset - wanted;
            entry.1.push(format!(
                "queue {queue_id} at {} (target {wanted}, before the reset {before})",
                queue.consumer_offset
            ));
        }
    }
    for (broker, (past, queues)) in &advanced {
        match (gets_before.get(broker), gets_after.get(broker)) {
            (Some(start), Some(end)) if end >= start => {
                let read = end - start;
                if *past > read {
                    problems.push(format!(
                        "broker {broker}: the group is {past} message(s) past the targets ({}) but only {read} message(s) were read from the broker since the reset",
                        queues.join(", ")
                    ));
                }
            }
            _ => context.log.line(&format!("broker {broker}: its read counter restarted (a new day or a restart); the offsets past the target are not checked against it")),
        }
    }
    if problems.is_empty() {
        context.log.line(&format!("group {group} on topic {topic}: every offset is at or after its target, within what was read since"));
        return Ok(after);
    }
    Err(ActionFailure::permanent(format!(
        "group {group} on topic {topic}: the reset did not reach the consumers ({}); a consumer that does not take the reset (LitePull, some 5.x gRPC clients) commits its own offsets over it: stop it and reset again",
        problems.join("; ")
    )))
}

/// Reads the offsets back: each must be the target (or, with consumers online, may have moved on
/// from it). Polls for a few seconds, since brokers apply a push asynchronously.
async fn verify(
    admin: &Admin,
    group: &str,
    topic: &str,
    targets: &BTreeMap<(String, i32), i64>,
    online: bool,
) -> Result<Vec<QueueProgress>, ActionFailure> {
    let mut last_problem = String::new();
    for _ in 0..20 {
        let after = group_progress(admin, group, Some(topic))
            .await?
            .unwrap_or_default();
        let problem = targets.iter().find_map(|((broker, queue_id), wanted)| {
            let found = after.iter().find(|queue| {
                queue.topic == topic && &queue.broker == broker && queue.queue_id == *queue_id
            });
            match found {
                Some(queue) if queue.consumer_offset == *wanted => None,
                Some(queue)
                    if online
                        && queue.consumer_offset > *wanted
                        && queue.consumer_offset <= queue.broker_offset =>
                {
                    None
                }
                Some(queue) => Some(format!(
                    "broker {broker} queue {queue_id}: offset {} instead of {wanted}",
                    queue.consumer_offset
                )),
                None => Some(format!(
                    "broker {broker} queue {queue_id}: no offset reported"
                )),
            }
        });
        match problem {
            None => return Ok(after),
            Some(problem) => last_problem = problem,
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Err(ActionFailure::permanent(format!(
        "group {group} on topic {topic}: the offsets read back do not match ({last_problem}); an online consumer may have overwritten them"
    )))
}

/// The input of `rocketmq.restore_offsets` (mutates).
pub const RESTORE_SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("group", Kind::Text, "the consumer group").required(),
        optional(
            "offsets",
            Kind::Records,
            "[{topic, broker, queue_id, offset}], e.g. a reset's `previous`",
        )
        .required(),
    ],
};

/// `rocketmq.restore_offsets`: input `namesrv`, `group`, `offsets` (`[{topic, broker, queue_id,
/// offset}]`, e.g. a reset's `previous`). Writes each offset on its broker and, with consumers
/// online, resets each queue to it on brokers that reset on their side (refused elsewhere: see
/// below), then reads them back.
pub async fn run_restore(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.restore_offsets", &input);
    let namesrv = input.namesrv()?;
    let group = input.string("group")?;
    let Some(Value::Array(entries)) = input.get("offsets") else {
        return Err(input.bad(
            "offsets",
            "must be a list of {topic, broker, queue_id, offset}",
        ));
    };
    let mut wanted: BTreeMap<String, BTreeMap<(String, i32), i64>> = BTreeMap::new();
    for entry in entries {
        let entry_input = Input::new("rocketmq.restore_offsets", entry);
        let topic = entry_input.string("topic")?;
        let broker = entry_input.string("broker")?;
        let queue_id = entry_input
            .opt_i64("queue_id")?
            .ok_or_else(|| input.bad("offsets", "an entry has no queue_id"))?;
        let offset = entry_input
            .opt_i64("offset")?
            .ok_or_else(|| input.bad("offsets", "an entry has no offset"))?;
        let queue_id = i32::try_from(queue_id)
            .map_err(|_| input.bad("offsets", format!("queue_id {queue_id} is out of range")))?;
        if offset < 0 {
            return Err(input.bad("offsets", format!("offset {offset} is negative")));
        }
        wanted
            .entry(topic)
            .or_default()
            .insert((broker, queue_id), offset);
    }
    with_admin(&namesrv, |admin| async move {
        // Are consumers of the group online? (The brokers answer "not online" with an error.)
        let connections = admin
            .inner
            .examine_consumer_connection_info(CheetahString::from(group.as_str()), None)
            .await
            .map(|connection| connection.get_connection_set().len())
            .unwrap_or(0);
        let online = connections > 0;
        // Online consumers keep their own offsets, so the restored ones must reach them too. A
        // per-queue reset request carries an explicit offset only for a broker that resets on its
        // own side (`useServerSideResetOffset=true`: Java 5.x and rocketmq-rust by default). Any
        // other broker (Java 4.x has no such key) reads it as a whole-topic reset by timestamp,
        // and the timestamp is 0: every consumer of the group would go back to the earliest
        // message. There the offsets can only be written while the group is offline.
        let mut brokers: BTreeMap<String, (super::session::BrokerRef, bool)> = BTreeMap::new();
        for queues in wanted.values() {
            for (broker, _) in queues.keys() {
                if brokers.contains_key(broker) {
                    continue;
                }
                let target = admin.resolve_broker(Some(broker), None).await?;
                let config = super::broker_config::read(&admin, &target).await?;
                let server_side = config.get("useServerSideResetOffset").is_some_and(|value| value.trim() == "true");
                if online && !server_side {
                    return Err(ActionFailure::permanent(format!(
                        "group {group} has {connections} consumer(s) online and broker {broker} ({}) does not reset offsets on its side \
                         (useServerSideResetOffset is {}): it would take a per-queue reset for a whole-topic reset to the earliest message. \
                         Stop the consumers of group {group} and run this again (the saved offsets are then written on the brokers)",
                        target.addr,
                        config.get("useServerSideResetOffset").map_or_else(|| "absent, as on Java 4.x".to_owned(), |value| format!("{value:?}"))
                    )));
                }
                brokers.insert(broker.clone(), (target, server_side));
            }
        }
        for (topic, queues) in &wanted {
            for ((broker, queue_id), offset) in queues {
                let Some((target, server_side)) = brokers.get(broker) else { continue };
                let queue = MessageQueue::from_parts(topic.as_str(), broker.as_str(), *queue_id);
                admin
                    .inner
                    .update_consume_offset(target.addr(), CheetahString::from(group.as_str()), queue, *offset as u64)
                    .await
                    .map_err(|error| ActionFailure::retryable(format!("broker {broker}: writing the offset of group {group} on {topic} queue {queue_id}: {}", explain(&error))))?;
                if *server_side {
                    // The broker keeps the offset as a reset its consumers take at their next
                    // pull; until then it ignores plain commits (an earlier reset's among them),
                    // so the saved offset must go the same way.
                    admin
                        .inner
                        .reset_offset_by_queue_id(target.addr(), CheetahString::from(group.as_str()), CheetahString::from(topic.as_str()), *queue_id, *offset as u64)
                        .await
                        .map_err(|error| ActionFailure::retryable(format!("broker {broker}: resetting group {group} on {topic} queue {queue_id} to {offset}: {}", explain(&error))))?;
                }
            }
            context.log.line(&format!(
                "group {group} on topic {topic}: restored {} offset(s) ({})",
                queues.len(),
                if online { "reset on the brokers, for the online consumers" } else { "written on the brokers: no consumer online" }
            ));
        }
        let mut current = Vec::new();
        for (topic, queues) in &wanted {
            let after = verify(&admin, &group, topic, queues, online).await?;
            current.extend(offsets_json(&after, topic));
        }
        Ok(json!({"group": group, "restored": entries_json(&wanted), "current": current, "online": online, "observed_at_ms": now_ms()}))
    })
    .await
}

fn entries_json(wanted: &BTreeMap<String, BTreeMap<(String, i32), i64>>) -> Vec<Value> {
    wanted
        .iter()
        .flat_map(|(topic, queues)| {
            queues.iter().map(move |((broker, queue_id), offset)| json!({"topic": topic, "broker": broker, "queue_id": queue_id, "offset": offset}))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rocketmq_client_rust::ClientError;

    use super::is_typed_absent;

    /// Only a broker's "does not exist" response code means "no offsets". Errors whose text
    /// happens to say "not found", "not exist" or "consume stats" (a timeout of the consume
    /// stats request, a broker that is not found in the route) were read as "no offsets" by
    /// matching the text, and hid the group's lag.
    #[test]
    fn only_a_typed_absent_answer_means_no_offsets() {
        assert!(is_typed_absent(&ClientError::broker_operation_failed(
            "GET_CONSUME_STATS",
            17,
            "topic not exist"
        )));
        assert!(is_typed_absent(&ClientError::broker_operation_failed(
            "GET_CONSUME_STATS",
            22,
            "subscription group not exist"
        )));
        for error in [
            ClientError::timeout("get consume stats", 3000),
            ClientError::broker_not_found("broker-a"),
            ClientError::broker_operation_failed(
                "GET_CONSUME_STATS",
                1,
                "consume stats not found: system busy",
            ),
            ClientError::service_failed("examine consume stats: connection refused"),
        ] {
            assert!(!is_typed_absent(&error), "{error}");
        }
    }
}
