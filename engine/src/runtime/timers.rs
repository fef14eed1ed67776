//! The durable timer service.
//!
//! Deadlines live in the store's timer index as absolute UTC instants. The service sleeps until
//! the earliest one, but never longer than a minute, because tokio sleeps on a monotonic clock
//! that stops while the host is suspended; then it fires everything due by the wall clock. At
//! start-up everything overdue fires at once, and each run journals how late its timer fired.
//! Firing is at-least-once: the state machine ignores a timer that is no longer armed.
//!
//! A bug that panics while a timer fires is never retried in a hot loop: the runtime holds a
//! run whose decision panicked (its later inputs are refused, so its timer is dropped), and a
//! panic anywhere else in a firing makes the service back off (0.5 s doubling to a minute) and
//! log once per streak.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Engine, Error};
use crate::machine::Input;
use crate::store::TimerKey;

/// How many timers fire concurrently (their commits share syncs).
const FIRING_CONCURRENCY: usize = 256;
/// The longest the service sleeps without re-reading the wall clock.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// The first pause after a firing panicked; it doubles with each panic in a row.
const PANIC_BACKOFF: Duration = Duration::from_millis(500);

/// Runs until `shutdown` is cancelled.
pub async fn run_timers(engine: Engine, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(FIRING_CONCURRENCY));
    let mut panics: u32 = 0;
    loop {
        let now_ms = u64::try_from(engine.clock().now().timestamp_millis()).unwrap_or(0);
        // A key holds its deadline rounded down to the millisecond: it is due only once the next
        // millisecond has begun, so that no timer fires before its exact deadline.
        let due = match engine
            .writer()
            .store()
            .due_timers(now_ms.saturating_sub(1), 4096)
        {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "cannot read the timer index");
                Vec::new()
            }
        };
        if !due.is_empty() {
            let mut firing = JoinSet::new();
            for key in due {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let engine = engine.clone();
                firing.spawn(async move {
                    fire(&engine, key).await;
                    drop(permit);
                });
            }
            let mut panicked = false;
            while let Some(joined) = firing.join_next().await {
                if let Err(error) = joined {
                    if error.is_panic() {
                        panicked = true;
                    }
                }
            }
            if panicked {
                // A bug fired with a due timer: the timer is still due, and firing it at once
                // again would spin. Say so once per streak and back off.
                panics += 1;
                let pause = PANIC_BACKOFF
                    .saturating_mul(1 << panics.min(6))
                    .min(MAX_SLEEP);
                if panics == 1 {
                    tracing::error!(pause = ?pause, "firing a timer panicked; backing off before trying again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return,
                }
            } else {
                panics = 0;
            }
            continue;
        }
        let sleep_for = match engine.writer().store().next_timer() {
            Ok(Some(next)) => {
                Duration::from_millis(next.fire_at_ms.saturating_add(1).saturating_sub(now_ms))
                    .min(MAX_SLEEP)
            }
            _ => MAX_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = engine.timer_wake().notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn fire(engine: &Engine, key: TimerKey) {
    crate::failpoint::hit(crate::failpoint::Failpoint::TimerFire);
    let late = engine.clock().now() - key.fire_at();
    engine
        .timer_lateness()
        .record(late.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
    if let Some(armed) = engine.fire_schedule(key.run_id).await {
        if armed.map(|fire_at| TimerKey::schedule(fire_at, key.run_id)) != Some(key) {
            // The schedule is armed elsewhere now: this entry is stale.
            if let Err(error) = engine.writer().remove_timer(key).await {
                tracing::error!(%error, "cannot drop a stale schedule timer");
            }
        }
        return;
    }
    let still_armed = match engine
        .handle(key.run_id, Input::TimerFired { timer: key.timer })
        .await
    {
        Ok(state) => state.timers.iter().any(|timer| timer.timer == key.timer),
        Err(Error::NotFound(_)) | Err(Error::Conflict(_)) => {
            tracing::warn!(run = %key.run_id, timer = %key.timer, "dropping a timer of a run that is gone or corrupt");
            false
        }
        Err(error) => {
            tracing::error!(run = %key.run_id, %error, "cannot fire a timer; will try again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    if !still_armed {
        // Already fired or canceled in the journal: only the index entry is left, if anything.
        if let Err(error) = engine.writer().remove_timer(key).await {
            tracing::error!(%error, "cannot drop a stale timer entry");
        }
    }
}
