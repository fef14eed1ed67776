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
//!
//! A spare taken for a call is replaced in the background. The replacement is forked by the
//! spare-maker (`shim/forker.rs`), a shim started once with a socket as its stdin: a fork of
//! that small process costs a fraction of an exec of the shim's binary, which, started while a
//! step ran, slowed that step on a small host. Without a spare-maker (the shim is the full
//! `runbook` binary, which cannot fork safely; it cannot start; or it failed less than
//! [`FORKER_RETRY`] ago) spares are exec'd as before.
//!
//! Spares are kept only in a daemon ([`enable`]; `daemon::run`), whose single runtime owns the
//! waiting child for the life of the process; elsewhere (the engine's own tests, which start a
//! runtime per test) every call starts its shim itself.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use super::shim::{self, forker, ProcessIdentity};

/// The data dir of the daemon that keeps spares.
static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();
static SLOT: Mutex<Option<Shim>> = Mutex::new(None);
/// A refill is under way (at most one at a time).
static REFILLING: AtomicBool = AtomicBool::new(false);
static FORKER: Mutex<Forker> = Mutex::new(Forker::None);

/// How long after a failed spare-maker spares are exec'd before another one is started.
const FORKER_RETRY: Duration = Duration::from_secs(10);
/// How long a spare-maker may take to answer.
const FORKER_PATIENCE: Duration = Duration::from_secs(2);

enum Forker {
    None,
    /// The shim's binary cannot fork spares (see [`start_forker`]).
    Unavailable,
    Running {
        socket: UnixStream,
        _process: tokio::process::Child,
    },
    FailedAt(Instant),
}

/// A shim as this daemon holds it: its identity, its pipes (the call, spec and go go down
/// `to`; [`shim::ENDED`] or EOF comes up `ended`), and the process itself when this daemon
/// started it (it must also reap it). A shim re-attached after a restart has only its identity.
pub(super) struct Shim {
    pub identity: ProcessIdentity,
    pub child: Option<tokio::process::Child>,
    pub to: Option<pipe::Sender>,
    pub ended: Option<pipe::Receiver>,
}

impl Shim {
    /// Writes `bytes` down its stdin.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.to {
            Some(to) => to.write_all(bytes).await,
            None => Err(std::io::Error::other("the supervisor's stdin is closed")),
        }
    }

    /// Writes what of `bytes` its stdin takes without waiting; the rest.
    pub fn send_now(&mut self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let Some(to) = &self.to else {
            return Err(std::io::Error::other("the supervisor's stdin is closed"));
        };
        let mut sent = 0;
        while sent < bytes.len() {
            match to.try_write(&bytes[sent..]) {
                Ok(written) => sent += written,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
        Ok(bytes[sent..].to_vec())
    }

    /// Resolves once the shim has reported the command's end ([`shim::REPORT`]: returned; the
    /// shim then waits for [`Shim::acknowledge`]) or recorded it in the call dir
    /// ([`shim::ENDED`]), or has ended. Cancel-safe only until the shim writes: a caller that
    /// stops waiting must not wait again (see `exec::follow`).
    pub async fn exited(&mut self) -> Option<shim::Report> {
        if let Some(ended) = &mut self.ended {
            // The byte, or EOF: the shim exited (and may have recorded nothing).
            let mut byte = [0u8; 1];
            let first = ended.read(&mut byte).await;
            let reported = match first {
                Ok(1) if byte[0] == shim::REPORT => Some(read_report(ended).await),
                _ => None,
            };
            if let Some(Err(error)) = &reported {
                // Without an acknowledgement the shim writes the end into the call dir, then
                // exits.
                tracing::warn!(pid = self.identity.pid, %error, "cannot read the end the command's supervisor reported; reading its call dir");
                self.to = None;
                let mut rest = [0u8; 256];
                while matches!(ended.read(&mut rest).await, Ok(read) if read > 0) {}
            }
            self.ended = None;
            return reported.and_then(Result::ok);
        }
        if let Some(child) = &mut self.child {
            if child.wait().await.is_ok() {
                return None;
            }
        }
        while self.identity.is_alive() {
            tokio::time::sleep(super::REATTACHED_POLL).await;
        }
        None
    }

    /// Tells a shim that reported the command's end that it is journaled: it exits without
    /// writing it into the call dir.
    pub fn acknowledge(mut self) {
        if let Some(to) = self.to.take() {
            // A full pipe or a gone shim: it reads EOF instead, and writes the end (durably).
            let _ = to.try_write(&[shim::ACK]);
        }
    }

    /// Closes its stdin (no go comes) and waits until it has ended.
    pub async fn close(&mut self) {
        self.to = None;
        if let Some(ended) = &mut self.ended {
            let mut sink = [0u8; 64];
            while matches!(ended.read(&mut sink).await, Ok(read) if read > 0) {}
        }
        if let Some(child) = &mut self.child {
            let _ = child.wait().await;
        }
    }

    /// Kills it (it had no call, or refused it) and reaps it if it is ours.
    pub async fn kill(&mut self) {
        self.to = None;
        match &mut self.child {
            Some(child) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            None => {
                self.identity.signal(libc::SIGKILL);
            }
        }
    }
}

/// The rest of a [`shim::Report`] after its first byte.
async fn read_report(ended: &mut pipe::Receiver) -> std::io::Result<shim::Report> {
    let status_length = ended.read_u32().await?;
    if status_length > shim::MAX_REPORTED_STATUS {
        return Err(std::io::Error::other(format!(
            "a status of {status_length} bytes"
        )));
    }
    let mut status = vec![0u8; status_length as usize];
    ended.read_exact(&mut status).await?;
    let stdout_length = ended.read_u32().await?;
    if stdout_length as usize > shim::STDOUT_FOR_PARSE {
        return Err(std::io::Error::other(format!(
            "a stdout of {stdout_length} bytes"
        )));
    }
    let mut stdout = vec![0u8; stdout_length as usize];
    ended.read_exact(&mut stdout).await?;
    let status = shim::decode_status(&status).map_err(std::io::Error::other)?;
    Ok(shim::Report { status, stdout })
}

/// Keeps a spare shim for calls in `data_dir` from now on (the daemon calls this once, in its
/// runtime).
pub fn enable(data_dir: &Path) {
    let _ = DATA_DIR.set(data_dir.to_owned());
}

/// The waiting spare, if there is one and it still runs.
pub(super) fn take() -> Option<Shim> {
    DATA_DIR.get()?;
    let mut spare = SLOT.lock().unwrap_or_else(PoisonError::into_inner).take()?;
    match spare.child.as_mut().map(tokio::process::Child::try_wait) {
        // A forked spare is not ours to ask: if it died, the call's first write fails.
        None | Some(Ok(None)) => Some(spare),
        // It ended (or cannot be asked): it had no call, so nothing ran; dropping it reaps it.
        Some(_) => None,
    }
}

/// Puts back a spare [`take`] took for a call that could not use it.
pub(super) fn give_back(spare: Shim) {
    let mut slot = SLOT.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_none() {
        *slot = Some(spare);
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
            let spare = match forked(data_dir).await {
                Some(spare) => Ok(spare),
                None => spawn(data_dir),
            };
            match spare {
                Ok(spare) => *SLOT.lock().unwrap_or_else(PoisonError::into_inner) = Some(spare),
                // The next call starts its own shim and reports a failure to start it.
                Err(error) => tracing::warn!(%error, "cannot start a spare supervisor"),
            }
        }
        REFILLING.store(false, Ordering::SeqCst);
    });
}

/// A spare forked by the spare-maker (started first if need be); `None` when there is none to
/// ask (the failure is logged).
async fn forked(data_dir: &'static Path) -> Option<Shim> {
    let asked = tokio::task::spawn_blocking(move || ask_forker(data_dir)).await;
    let (pid, to, ended) = match asked {
        Ok(Ok(Some(forked))) => forked,
        Ok(Ok(None)) => return None,
        Ok(Err(error)) => {
            tracing::warn!(%error, "the spare-maker failed; spares are started without it for a while");
            return None;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot ask the spare-maker");
            return None;
        }
    };
    let shim = pipe::Sender::from_owned_fd(to).and_then(|to| {
        Ok(Shim {
            identity: ProcessIdentity::of(pid).map_err(std::io::Error::other)?,
            child: None,
            to: Some(to),
            ended: Some(pipe::Receiver::from_owned_fd(ended)?),
        })
    });
    match shim {
        Ok(shim) => Some(shim),
        Err(error) => {
            tracing::warn!(%error, pid, "cannot take the spare the spare-maker forked");
            // SAFETY: kill(2) of the spare just forked for this daemon (it waits for a call).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            None
        }
    }
}

/// One spare from the spare-maker (blocking): its pid and the daemon's ends of its pipes.
/// `Ok(None)`: it failed not long ago; spares are exec'd until [`FORKER_RETRY`] has passed.
fn ask_forker(data_dir: &Path) -> Result<Option<(libc::pid_t, OwnedFd, OwnedFd)>, String> {
    let mut forker = FORKER.lock().unwrap_or_else(PoisonError::into_inner);
    if matches!(*forker, Forker::FailedAt(at) if at.elapsed() < FORKER_RETRY) {
        return Ok(None);
    }
    if matches!(*forker, Forker::Unavailable) {
        return Ok(None);
    }
    if !matches!(*forker, Forker::Running { .. }) {
        *forker = match start_forker(data_dir) {
            Ok(running) => running,
            Err(error) => {
                *forker = Forker::FailedAt(Instant::now());
                return Err(error);
            }
        };
    }
    let Forker::Running { socket, .. } = &mut *forker else {
        return Ok(None);
    };
    let answer = socket
        .write_all(&[forker::FORK])
        .and_then(|()| forker::receive(socket.as_raw_fd()));
    match answer {
        Ok(forked) => Ok(Some(forked)),
        Err(error) => {
            // Dropping it kills it (it may hang) and reaps it.
            *forker = Forker::FailedAt(Instant::now());
            Err(format!("the spare-maker did not fork a spare: {error}"))
        }
    }
}

/// Starts the spare-maker: `<program> shim - <data dir>` with a socket as its stdin. Only the
/// shim's own binary can be one: it has a single thread, which is what makes a fork of it safe
/// (the full `runbook` binary runs its async runtime's threads before it reads its command
/// line); with that binary, spares are exec'd.
fn start_forker(data_dir: &Path) -> Result<Forker, String> {
    let program = super::shim_program()?;
    if program.file_name() != Some(std::ffi::OsStr::new(super::SHIM_BINARY)) {
        return Ok(Forker::Unavailable);
    }
    let (socket, theirs) =
        UnixStream::pair().map_err(|error| format!("cannot make a socket pair: {error}"))?;
    socket
        .set_read_timeout(Some(FORKER_PATIENCE))
        .and_then(|()| socket.set_write_timeout(Some(FORKER_PATIENCE)))
        .map_err(|error| format!("cannot set the spare-maker's socket's timeouts: {error}"))?;
    let process = tokio::process::Command::new(&program)
        .arg("shim")
        .arg(shim::AHEAD)
        .arg(data_dir)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            format!(
                "cannot start the spare-maker `{} shim`: {error}",
                program.display()
            )
        })?;
    Ok(Forker::Running {
        socket,
        _process: process,
    })
}

/// Starts `<program> shim - <place>`: a shim that leaves the daemon's session first thing and
/// waits for its call (in `place`) on stdin. Its identity is read at once, while nobody else can
/// reap it.
pub(super) fn spawn(place: &Path) -> Result<Shim, String> {
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
        .and_then(ProcessIdentity::of)
        .map_err(|error| format!("cannot identify the command's supervisor: {error}"));
    let pipes = (child.stdin.take(), child.stdout.take());
    let pipes = match pipes {
        (Some(to), Some(ended)) => to
            .into_owned_fd()
            .and_then(pipe::Sender::from_owned_fd)
            .and_then(|to| {
                Ok((
                    to,
                    ended
                        .into_owned_fd()
                        .and_then(pipe::Receiver::from_owned_fd)?,
                ))
            })
            .map_err(|error| format!("cannot take the supervisor's pipes: {error}")),
        _ => Err("the supervisor has no pipes".to_owned()),
    };
    match (identity, pipes) {
        (Ok(identity), Ok((to, ended))) => Ok(Shim {
            identity,
            child: Some(child),
            to: Some(to),
            ended: Some(ended),
        }),
        (Err(error), _) | (_, Err(error)) => {
            let _ = child.start_kill();
            Err(error)
        }
    }
}
