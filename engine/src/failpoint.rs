//! Named crash points for crash tests.
//!
//! [`hit`] kills the process with SIGKILL (as `kill -9` would) when the environment variable
//! `RUNBOOK_FAILPOINT` names the point; with `RUNBOOK_FAILPOINT_SKIP=N` the first N passes are
//! let through. Unset (always, outside crash tests), a hit is one read of a `OnceLock`.
//!
//! They are compiled into every build, not behind a cargo feature: a feature would make the
//! binary that the end-to-end tests run depend on which package cargo built last.
//!
//! Points: `BeforeCommit`, `AfterCommitBeforeFlush`, `BeforeFlush` (before the write-ahead log
//! record is written), `AfterFlushBeforeFsync` (written, not yet fdatasync'ed) (store writer),
//! `AfterLogSyncBeforeApply` (a batch is durable in the log, not yet applied to sled),
//! `ScheduleLaunchedBeforeSaved` (a schedule's runs are created, its new state not stored),
//! `CheckpointNewSegment` (a checkpoint made sled durable and started a new log segment, the
//! old ones are not deleted yet: at every open, at shutdown and every 64 MiB of log),
//! `AfterFlushBeforeEffect`, `AfterEffectBeforeRecord` (runtime), `TimerFire` (timer service).

pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let point = std::env::var("RUNBOOK_FAILPOINT").ok()?;
        let skip = std::env::var("RUNBOOK_FAILPOINT_SKIP")
            .ok()
            .and_then(|skip| skip.parse().ok())
            .unwrap_or(0);
        Some((point, skip))
    });
    if let Some((point, skip)) = armed {
        if point == name && PASSES.fetch_add(1, Ordering::SeqCst) >= *skip {
            eprintln!("failpoint {name}: killing the process");
            // SAFETY: raising a signal on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
