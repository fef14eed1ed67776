//! Supervisors of `exec` calls started ahead: one is kept waiting for the next call, so that a
//! step does not wait for a shim's start (an exec of its binary, its loading, its set-up: most of
//! a millisecond on a small VM; about a third of what a step of `true` cost).
//!
//! A spare is `<program> shim - <data dir>` ([`shim::AHEAD`]): it has left the daemon's session
//! and is ready; it learns its call dir (which must be in the data dir) from its stdin
//! ([`shim::call_message`]), then follows the usual contract (spec, journaled identity, go). A
//! call that finds no spare starts `<program> shim - <run dir>`, which works the same way. A
//! spare never runs anything without a call: when the daemon stops, dies or is killed, the pipe
//! closes and the spare exits with nothing to record.
//! A spare taken for a call is replaced in the background, off the step's path.
//!
//! Spares are kept only in a daemon ([`enable`]; `daemon::run`), whose single runtime owns the
//! waiting child for the life of the process; elsewhere (the engine's own tests, which start a
//! runtime per test) every call starts its shim itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tokio_util::sync::CancellationToken;

use super::shim::{self, ProcessIdentity};

/// The data dir of the daemon that keeps spares.
static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();
static SLOT: Mutex<Option<Spare>> = Mutex::new(None);
/// A refill is under way (at most one at a time).
static REFILLING: AtomicBool = AtomicBool::new(false);

/// A shim started ahead of its call.
pub(super) struct Spare {
    pub child: tokio::process::Child,
    pub identity: ProcessIdentity,
}

/// Keeps a spare shim for calls in `data_dir` from now on (the daemon calls this once, in its
/// runtime).
pub fn enable(data_dir: &Path) {
    let _ = DATA_DIR.set(data_dir.to_owned());
}

/// The waiting spare, if there is one and it still runs.
pub(super) fn take() -> Option<Spare> {
    DATA_DIR.get()?;
    let mut spare = SLOT.lock().unwrap_or_else(PoisonError::into_inner).take()?;
    match spare.child.try_wait() {
        Ok(None) => Some(spare),
        // It ended (or cannot be asked): it had no call, so nothing ran; dropping it reaps it.
        _ => None,
    }
}

/// Starts a spare in the background if none waits (not while the daemon drains).
pub(super) fn refill(draining: &CancellationToken) {
    let Some(data_dir) = DATA_DIR.get() else {
        return;
    };
    if draining.is_cancelled() || REFILLING.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        let empty = SLOT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        if empty {
            match spawn(data_dir) {
                Ok((child, identity)) => {
                    let mut slot = SLOT.lock().unwrap_or_else(PoisonError::into_inner);
                    *slot = Some(Spare { child, identity });
                }
                // The next call starts its own shim and reports a failure to start it.
                Err(error) => tracing::warn!(%error, "cannot start a spare supervisor"),
            }
        }
        REFILLING.store(false, Ordering::SeqCst);
    });
}

/// Starts `<program> shim - <place>`: a shim that leaves the daemon's session first thing and
/// waits for its call (in `place`) on stdin. Its identity is read at once, while nobody else can
/// reap it.
pub(super) fn spawn(place: &Path) -> Result<(tokio::process::Child, ProcessIdentity), String> {
    let program = super::shim_program()?;
    // No code runs between fork and exec (the shim starts its own session itself), so the spawn
    // is a `posix_spawn`: no copy of the daemon's page tables. Its stderr is the daemon's until
    // it has a call; then it is the run's shim log. Its stdout says when the command's end is
    // recorded ([`shim::ENDED`]).
    let mut child = tokio::process::Command::new(&program)
        .arg("shim")
        .arg(shim::AHEAD)
        .arg(place)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| {
            format!(
                "cannot start the supervisor `{} shim`: {error}",
                program.display()
            )
        })?;
    let identity = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| "it has no pid".to_owned())
        .and_then(ProcessIdentity::of);
    match identity {
        Ok(identity) => Ok((child, identity)),
        Err(error) => {
            let _ = child.start_kill();
            Err(format!("cannot identify the command's supervisor: {error}"))
        }
    }
}
