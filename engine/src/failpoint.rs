//! Named crash points for crash tests.
//!
//! [`hit`] kills the process with SIGKILL (as `kill -9` would) when the environment variable
//! `RUNBOOK_FAILPOINT` names the point; with `RUNBOOK_FAILPOINT_SKIP=N` the first N passes are
//! let through. Unset (always, outside crash tests), a hit is one read of a `OnceLock`. A name
//! that is no [`Failpoint`] is refused when the daemon starts ([`check_env`]), so a misspelt
//! point cannot silently never fire.
//!
//! They are compiled into every build, not behind a cargo feature: a feature would make the
//! binary that the end-to-end tests run depend on which package cargo built last.
//!
//! Words: a batch is *staged* (applied to the store's view, not on disk), its log record
//! *written* (in the OS's page cache), then *durable* (fdatasync'ed), then *applied* to sled.

/// Where the process can be made to crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failpoint {
    /// The writer is about to stage a schedule change, after the run commits before it.
    BeforeScheduleStaged,
    /// The writer staged a batch of commits; nothing of it is written yet.
    StagedBeforeSync,
    /// The log record of a batch is about to be written.
    BeforeLogWrite,
    /// The log record is written, not yet fdatasync'ed.
    LogWrittenBeforeFsync,
    /// The batch is durable in the log, not yet applied to sled.
    LogDurableBeforeApply,
    /// A checkpoint made sled durable and started a new log segment; the old ones are not
    /// deleted yet (at every open, at shutdown and every 64 MiB of log).
    CheckpointNewSegment,
    /// A schedule's runs are created (durable), the schedule's new state not stored yet.
    ScheduleLaunchedBeforeSaved,
    /// A decision is durable; its effects have not started.
    DurableBeforeEffect,
    /// An effect (an action call) ended; its result is not recorded yet.
    EffectBeforeRecord,
    /// The timer service is about to fire a due timer.
    TimerFire,
    /// A notification is committed (with its transition) and about to be sent.
    NotificationBeforeDelivery,
}

impl Failpoint {
    pub const ALL: [Failpoint; 11] = [
        Failpoint::BeforeScheduleStaged,
        Failpoint::StagedBeforeSync,
        Failpoint::BeforeLogWrite,
        Failpoint::LogWrittenBeforeFsync,
        Failpoint::LogDurableBeforeApply,
        Failpoint::CheckpointNewSegment,
        Failpoint::ScheduleLaunchedBeforeSaved,
        Failpoint::DurableBeforeEffect,
        Failpoint::EffectBeforeRecord,
        Failpoint::TimerFire,
        Failpoint::NotificationBeforeDelivery,
    ];

    /// The name `RUNBOOK_FAILPOINT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Failpoint::BeforeScheduleStaged => "BeforeScheduleStaged",
            Failpoint::StagedBeforeSync => "StagedBeforeSync",
            Failpoint::BeforeLogWrite => "BeforeLogWrite",
            Failpoint::LogWrittenBeforeFsync => "LogWrittenBeforeFsync",
            Failpoint::LogDurableBeforeApply => "LogDurableBeforeApply",
            Failpoint::CheckpointNewSegment => "CheckpointNewSegment",
            Failpoint::ScheduleLaunchedBeforeSaved => "ScheduleLaunchedBeforeSaved",
            Failpoint::DurableBeforeEffect => "DurableBeforeEffect",
            Failpoint::EffectBeforeRecord => "EffectBeforeRecord",
            Failpoint::TimerFire => "TimerFire",
            Failpoint::NotificationBeforeDelivery => "NotificationBeforeDelivery",
        }
    }

    pub fn parse(name: &str) -> Option<Failpoint> {
        Failpoint::ALL
            .into_iter()
            .find(|point| point.name() == name)
    }
}

impl std::fmt::Display for Failpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The armed point and how many passes to let through, from the environment.
fn armed() -> Result<Option<(Failpoint, u64)>, String> {
    let Ok(name) = std::env::var("RUNBOOK_FAILPOINT") else {
        return Ok(None);
    };
    let point = Failpoint::parse(&name).ok_or_else(|| {
        let known: Vec<&str> = Failpoint::ALL.iter().map(|point| point.name()).collect();
        format!(
            "RUNBOOK_FAILPOINT={name:?} names no failpoint (known: {})",
            known.join(", ")
        )
    })?;
    let skip = match std::env::var("RUNBOOK_FAILPOINT_SKIP") {
        Ok(skip) => skip
            .parse()
            .map_err(|_| format!("RUNBOOK_FAILPOINT_SKIP={skip:?} is not a count"))?,
        Err(_) => 0,
    };
    Ok(Some((point, skip)))
}

/// Checks `RUNBOOK_FAILPOINT` and `RUNBOOK_FAILPOINT_SKIP` (at daemon start).
pub fn check_env() -> Result<(), String> {
    armed().map(|_| ())
}

pub fn hit(point: Failpoint) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(Failpoint, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);
    // (A bad setting is refused at start; should one get here anyway, nothing is armed.)
    let armed = ARMED.get_or_init(|| armed().ok().flatten());
    if let Some((armed, skip)) = armed {
        if *armed == point && PASSES.fetch_add(1, Ordering::SeqCst) >= *skip {
            eprintln!("failpoint {point}: killing the process");
            // SAFETY: raising a signal on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for point in Failpoint::ALL {
            assert_eq!(Failpoint::parse(point.name()), Some(point));
        }
        let names: std::collections::HashSet<_> =
            Failpoint::ALL.iter().map(|point| point.name()).collect();
        assert_eq!(names.len(), Failpoint::ALL.len());
        assert_eq!(Failpoint::parse("AfterCommitBeforeFlush"), None);
    }
}
