//! The notification outbox (`crate::notify`): entries are made for a transition and committed
//! with it; one task delivers them, retries with backoff, and records each outcome durably.
//! A run never waits for a delivery.
//!
//! At start-up every entry not delivered is read back and delivered, so an entry committed just
//! before a `kill -9` is delivered after the restart, with the same idempotency key.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::machine::{Event, RunState, RunStatus};
use crate::notify::{self, Config, Entry, Kind};
use crate::store::{self, OutboxCommit};

/// The most unfinished runs one scan reads.
const MAX_SCANNED_RUNS: usize = 100_000;

/// Deliveries under way at once.
const CONCURRENCY: usize = 4;
/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

impl Engine {
    /// Gives the engine its sinks (before [`Engine::recover`]); without them nothing is
    /// notified.
    pub fn set_notify(&self, config: Config) {
        let _ = self.inner.notify.set(Arc::new(config));
    }

    /// The outbox entries a transition from `before` (`None`: a new run) to `after` causes,
    /// encoded for the commit.
    pub(super) fn notifications(
        &self,
        before: Option<&RunState>,
        after: &RunState,
        events: &[Event],
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(config) = self.inner.notify.get() else {
            return Vec::new();
        };
        let Some(first) = events.first() else {
            return Vec::new();
        };
        let mut wanted: Vec<(notify::Event, Option<String>, String)> = Vec::new();
        let waits_for_approval = |state: &RunState| {
            store::listing::wait(state)
                .filter(|wait| wait.kind == "approval")
                .map(|_| store::listing::current_step(state))
        };
        let waited = before.and_then(waits_for_approval);
        if let Some(step) = waits_for_approval(after).filter(|step| waited.as_ref() != Some(step)) {
            let prompt = step
                .as_deref()
                .and_then(|key| after.step(key))
                .and_then(|step| step.prompt.clone());
            let what = step.clone().unwrap_or_default();
            wanted.push((
                notify::Event::ApprovalPending,
                step,
                format!(
                    "run {} of {} waits for an approval of {what}{}",
                    after.id,
                    after.runbook,
                    prompt.map(|p| format!(": {p}")).unwrap_or_default()
                ),
            ));
        }
        if before.map_or(RunStatus::Running, |before| before.status) != after.status {
            let ended = |event, word: &str| {
                (
                    event,
                    None,
                    format!("run {} of {} {word}", after.id, after.runbook),
                )
            };
            match after.status {
                RunStatus::NeedsAttention => {
                    let (step, why) = after
                        .attention
                        .as_ref()
                        .map(|a| (Some(a.step.clone()), a.message.clone()))
                        .unwrap_or_default();
                    wanted.push((
                        notify::Event::NeedsAttention,
                        step.clone(),
                        format!(
                            "run {} of {} needs attention at {}: {why}",
                            after.id,
                            after.runbook,
                            step.unwrap_or_default()
                        ),
                    ));
                }
                RunStatus::Failed => wanted.push(ended(notify::Event::Failed, "failed")),
                RunStatus::Succeeded => wanted.push(ended(notify::Event::Succeeded, "succeeded")),
                RunStatus::Canceled => wanted.push(ended(notify::Event::Canceled, "was canceled")),
                RunStatus::RolledBack => {
                    wanted.push(ended(notify::Event::RolledBack, "was rolled back"))
                }
                _ => {}
            }
        }
        let mut entries = Vec::new();
        for (event, step, message) in wanted {
            for sink in config.sinks_for(event, &after.runbook) {
                let entry = Entry {
                    // The first event's seq orders the entries of a run and makes the key
                    // unique and the same on every attempt.
                    id: format!(
                        "{}-{:010}-{}-{}",
                        after.id,
                        first.seq,
                        event.name(),
                        sink.name
                    ),
                    sink: sink.name.clone(),
                    event,
                    run: after.id,
                    runbook: after.runbook.clone(),
                    step: step.clone(),
                    message: message.clone(),
                    created_at: first.at,
                    attempts: 0,
                    delivered_at: None,
                    last_error: None,
                    next_attempt_at: None,
                    abandoned: false,
                };
                match store::encode_value(&entry) {
                    Ok(bytes) => entries.push((entry.key(), bytes)),
                    Err(error) => tracing::error!(%error, "a notification could not be encoded"),
                }
            }
        }
        entries
    }

    /// Wakes the delivery task (after a commit that made entries).
    pub(super) fn wake_outbox(&self) {
        self.inner.outbox_wake.notify_one();
    }

    /// A run's notifications, in order (for `show`).
    pub fn notifications_of(&self, run_id: uuid::Uuid) -> Vec<Entry> {
        let store = self.inner.writer.store();
        match store.load_outbox(run_id.as_bytes()) {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(_, bytes)| {
                    store::decode_value::<Entry>(&|| format!("outbox/{run_id}"), &bytes).ok()
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, run = %run_id, "reading the run's notifications");
                Vec::new()
            }
        }
    }
}

/// Delivers the outbox until `stop` is cancelled.
pub async fn run_outbox(engine: Engine, stop: CancellationToken) {
    let Some(config) = engine.inner.notify.get().cloned() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "notifications: no HTTP client; nothing is delivered");
            return;
        }
    };
    let scan_every = config.scan_every();
    let mut scanned: Option<std::time::Instant> = None;
    loop {
        if scanned.is_none_or(|at| at.elapsed() >= scan_every) {
            scanned = Some(std::time::Instant::now());
            time_driven(&engine, &config).await;
        }
        let now = engine.clock().now();
        let (due, next) = pending(&engine, now);
        if due.is_empty() {
            // Nothing due: sleep until the next retry, a new entry, or the next scan for
            // reminders, escalations and missed schedules (`scan_every`).
            let wait = next
                .map(|at| (at - now).to_std().unwrap_or_default())
                .unwrap_or(scan_every)
                .min(scan_every);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = engine.inner.outbox_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        if stop.is_cancelled() {
            return;
        }
        let mut deliveries = tokio::task::JoinSet::new();
        let mut unrecorded = false;
        for entry in due.into_iter().take(CONCURRENCY * 8) {
            let (engine, config, client) = (engine.clone(), config.clone(), client.clone());
            deliveries.spawn(async move { deliver(&engine, &config, &client, entry).await });
            while deliveries.len() >= CONCURRENCY {
                if let Some(recorded) = deliveries.join_next().await {
                    unrecorded |= !recorded.unwrap_or(false);
                }
            }
        }
        while let Some(recorded) = deliveries.join_next().await {
            unrecorded |= !recorded.unwrap_or(false);
        }
        if unrecorded {
            // The store refuses writes (a full disk): do not send the same entries in a loop.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

/// Reminders and escalations of approvals and attentions that still wait, and missed
/// schedules: entries the passing of time makes. Their ids say which reminder of which wait
/// they are, so a scan that finds one already made leaves it (and a crash between scans loses
/// none: the next scan makes it).
async fn time_driven(engine: &Engine, config: &Config) {
    let timed = config
        .sinks
        .iter()
        .any(|sink| sink.remind_every.is_some() || sink.escalate_to.is_some());
    let schedules = config.sinks.iter().any(|sink| {
        sink.events
            .as_ref()
            .is_none_or(|events| events.contains(&notify::Event::ScheduleMissed))
    });
    if !timed && !schedules {
        return;
    }
    let now = engine.clock().now();
    let mut made: Vec<Entry> = Vec::new();
    let entry = |id: String, sink: &str, event, run, runbook: &str, step, message: String| Entry {
        id,
        sink: sink.to_owned(),
        event,
        run,
        runbook: runbook.to_owned(),
        step,
        message,
        created_at: now,
        attempts: 0,
        delivered_at: None,
        last_error: None,
        next_attempt_at: None,
        abandoned: false,
    };
    if timed {
        let store = engine.inner.writer.store();
        let lines =
            match super::off_workers(move || store::unfinished(store.as_ref(), MAX_SCANNED_RUNS))
                .await
            {
                Ok(Ok(lines)) => lines,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "notifications: the unfinished runs cannot be read");
                    Vec::new()
                }
                Err(error) => {
                    tracing::warn!(%error, "notifications: the unfinished runs cannot be read");
                    Vec::new()
                }
            };
        for (run, line) in lines {
            let Some(wait) = &line.wait else { continue };
            let (event, what) = match (line.state.as_str(), wait.kind.as_str()) {
                ("needs_attention", _) => (notify::Event::NeedsAttention, "an operator"),
                (_, "approval") => (notify::Event::ApprovalPending, "an approval"),
                _ => continue,
            };
            let Some(since) = wait.since else { continue };
            let waited = (now - since).to_std().unwrap_or_default();
            let step = line.current_step.clone();
            let at = step.as_deref().unwrap_or("-");
            for sink in config.sinks_for(event, &line.runbook) {
                if let Some(every) = sink.remind_every {
                    let nth = waited.as_secs() / every.as_secs().max(1);
                    if nth >= 1 {
                        made.push(entry(
                            format!(
                                "{run}-r{}-{}-remind{nth}-{}",
                                since.timestamp_millis(),
                                event.name(),
                                sink.name
                            ),
                            &sink.name,
                            event,
                            run,
                            &line.runbook,
                            step.clone(),
                            format!(
                                "reminder: run {run} of {} has waited {} for {what} at {at}",
                                line.runbook,
                                crate::duration::format(Duration::from_secs(
                                    waited.as_secs() / 60 * 60
                                ))
                            ),
                        ));
                    }
                }
                if let (Some(after), Some(target)) = (sink.escalate_after, &sink.escalate_to) {
                    if waited >= after {
                        made.push(entry(
                            format!("{run}-r{}-{}-escalate-{target}", since.timestamp_millis(), event.name()),
                            target,
                            event,
                            run,
                            &line.runbook,
                            step.clone(),
                            format!(
                                "escalation: run {run} of {} has waited {} for {what} at {at} (sink {} was told)",
                                line.runbook,
                                crate::duration::format(after),
                                sink.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    if schedules {
        let day = chrono::TimeDelta::days(1);
        for schedule in engine.schedules().await {
            for firing in schedule
                .history
                .iter()
                .filter(|f| f.outcome == "missed" && now - f.at < day)
            {
                for sink in config.sinks_for(notify::Event::ScheduleMissed, &schedule.runbook) {
                    made.push(entry(
                        format!(
                            "{}-missed-{}-{}",
                            schedule.id,
                            firing.scheduled_at.timestamp_millis(),
                            sink.name
                        ),
                        &sink.name,
                        notify::Event::ScheduleMissed,
                        schedule.id,
                        &schedule.runbook,
                        None,
                        format!(
                            "schedule {} missed its run of {} at {} (the daemon was down){}",
                            schedule.name,
                            schedule.runbook,
                            firing.scheduled_at.to_rfc3339(),
                            firing
                                .detail
                                .as_deref()
                                .map(|d| format!(": {d}"))
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }
    if made.is_empty() {
        return;
    }
    let store = engine.inner.writer.store();
    let mut changes = Vec::new();
    for entry in made {
        let key = entry.key();
        let exists = store
            .load_outbox(&key)
            .map(|found| found.iter().any(|(k, _)| *k == key))
            .unwrap_or(true);
        if exists {
            continue;
        }
        if let Ok(bytes) = store::encode_value(&entry) {
            changes.push((key, Some(bytes)));
        }
    }
    if changes.is_empty() {
        return;
    }
    if let Err(error) = engine
        .inner
        .writer
        .commit_outbox(OutboxCommit { changes })
        .await
    {
        tracing::warn!(%error, "notifications: reminders not recorded; the next scan tries again");
    }
}

/// The entries due now, and when the next one not due is.
fn pending(engine: &Engine, now: DateTime<Utc>) -> (Vec<Entry>, Option<DateTime<Utc>>) {
    let store = engine.inner.writer.store();
    let entries = match store.load_outbox(&[]) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(%error, "notifications: the outbox cannot be read");
            return (Vec::new(), Some(now + chrono::TimeDelta::seconds(10)));
        }
    };
    let mut due = Vec::new();
    let mut next: Option<DateTime<Utc>> = None;
    for (_, bytes) in entries {
        let Ok(entry) = store::decode_value::<Entry>(&|| "outbox".to_owned(), &bytes) else {
            continue;
        };
        if entry.delivered_at.is_some() || entry.abandoned {
            continue;
        }
        match entry.next_attempt_at {
            Some(at) if at > now => next = Some(next.map_or(at, |next| next.min(at))),
            _ => due.push(entry),
        }
    }
    (due, next)
}

/// Delivers one entry and records the outcome; false when the outcome could not be recorded.
async fn deliver(
    engine: &Engine,
    config: &Config,
    client: &reqwest::Client,
    mut entry: Entry,
) -> bool {
    crate::failpoint::hit(crate::failpoint::Failpoint::NotificationBeforeDelivery);
    let outcome = match config.sink(&entry.sink) {
        None => Err(format!(
            "no sink {:?} in the notify file any more",
            entry.sink
        )),
        Some(sink) if sink.kind == Kind::Email => {
            match tokio::time::timeout(DELIVERY_TIMEOUT, notify::send_email(sink, &entry)).await {
                Ok(result) => result,
                Err(_) => Err("the SMTP relay did not answer in time".to_owned()),
            }
        }
        Some(sink) => post(client, sink, &entry, engine.clock().now()).await,
    };
    let now = engine.clock().now();
    entry.attempts += 1;
    match outcome {
        Ok(()) => {
            entry.delivered_at = Some(now);
            entry.last_error = None;
            entry.next_attempt_at = None;
            tracing::info!(notification = %entry.id, sink = %entry.sink, attempts = entry.attempts, "notification delivered");
        }
        Err(error) => {
            entry.abandoned = entry.attempts >= notify::MAX_ATTEMPTS;
            entry.next_attempt_at = Some(
                now + chrono::TimeDelta::from_std(Entry::backoff(entry.attempts))
                    .unwrap_or_default(),
            );
            tracing::warn!(notification = %entry.id, sink = %entry.sink, attempts = entry.attempts, %error, abandoned = entry.abandoned, "notification not delivered");
            entry.last_error = Some(error);
        }
    }
    let bytes = match store::encode_value(&entry) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "a notification could not be encoded");
            return false;
        }
    };
    let commit = OutboxCommit {
        changes: vec![(entry.key(), Some(bytes))],
    };
    match engine.inner.writer.commit_outbox(commit).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, notification = %entry.id, "the delivery's outcome was not recorded; it may be sent again");
            false
        }
    }
}

async fn post(
    client: &reqwest::Client,
    sink: &notify::Sink,
    entry: &Entry,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let request = notify::request(sink, entry, now);
    let mut builder = client.post(&request.url).body(request.body);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.map_err(|error| {
        // Without the URL: it may hold a robot's access token.
        format!("{}", error.without_url())
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|error| format!("{}", error.without_url()))?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    notify::accepted(sink.kind, &body)
}
