//! `runbook shim`: the supervisor of one `exec` command, in a process of its own.
//!
//! The daemon starts `runbook-shim shim - <data dir>` (or `runbook shim - <data dir>`: which
//! binary, see [`super::exec`]) ahead of the call it will serve (a spare, see `exec/spare.rs`,
//! or `- <run dir>` when none waits; spares are forked by one spare-maker, see `shim/forker.rs`);
//! the shim starts a session of its own first thing, so
//! that the daemon's death (`kill -9`, a crash, a restart for an upgrade) does not take it
//! down. For a call, the daemon sends it the call dir
//! ([`Call`]) and the [`Spec`] on its stdin; journals the shim's pid, start time and boot id; and
//! only then releases it (one byte, [`GO`], on the same pipe). A shim started as
//! `shim <call dir>` (by an older daemon) gets only the spec.
//! The shim starts the command in its own process group, streams its stdout and stderr into the
//! step log (capped, see [`LogSink`]), and when the command ends reports how it ended to the
//! daemon that follows it ([`Report`]), or writes it into the call dir when none takes it.
//! [`run`] is the whole process; it needs no async runtime, and between events it
//! sleeps until a signal wakes it ([`wake`]).
//!
//! (Over 600 lines on purpose: the call dir's files, their writer and their readers are one
//! protocol between the shim and the daemon, kept in one place.)
//!
//! # The call dir
//!
//! `<data>/runs/<run>/calls/<call>/`, the same path after a daemon restart:
//!
//! - `child.json` — the command's pid (which is also its process group id) and start time
//!   ([`ProcessIdentity`]); written by the shim once the command has run for
//!   [`RECORD_CHILD_AFTER`], or when it is to be stopped.
//! - `stdout` — the first MiB of the command's stdout (for `parse`); complete before `status.json`;
//!   absent if the command wrote nothing to stdout.
//! - `status.json` — how the command ended ([`Status`]), when no daemon took the [`Report`].
//! - `spec.json` — what to run, as an older daemon handed it over (the shim still reads it when
//!   such a daemon releases it with a bare [`GO`]); never written now.
//!
//! The shims of a run share one `shim.log` in the run's dir (`<data>/runs/<run>/shim.log`): their
//! own stderr, complaints that name their call dir, never the command's output. (Every file a
//! step creates costs an inode allocation on its path; the spec, the log and an empty stdout no
//! longer do.)
//!
//! # Contract
//!
//! - The daemon's pipe carries, for a shim started ahead, [`CALL`], the call's length and its
//!   JSON (`shim/ahead.rs`); then [`SPEC`], the spec's length (4 bytes, big-endian, at most
//!   [`MAX_SPEC_BYTES`]) and its JSON, then later [`GO`]. The command never starts before the
//!   daemon sent [`GO`], and the daemon sends it only once the journal holds the shim's
//!   identity. EOF instead (the daemon died first) → the shim records `not_started` (if it had
//!   its call dir) and exits without running anything. A bare [`GO`] with no spec before it
//!   comes from an older daemon: the spec is then `spec.json`, read the way nobody else can
//!   have planted it.
//! - After the go the daemon keeps the pipe open for as long as it follows the call. That is
//!   how the shim knows whether the daemon will journal the command's end itself.
//! - A daemon whose spec says [`Spec::report`] and that still follows the call when the command
//!   ends gets the end on the shim's stdout ([`REPORT`], then the status and the kept stdout)
//!   instead of files, and answers [`ACK`] once its journal holds the result; the shim then
//!   exits with nothing written (a step of `true` creates no file but its call dir). EOF
//!   instead of the ack (the daemon died or stopped before the result was durable): the shim
//!   writes the end into the call dir, durably, as below, for the restarted daemon.
//! - Every file is written atomically (a temporary file, then a rename): a reader sees all of
//!   it or nothing. `stdout` and `status.json` are durable (fsync of each file, of the call dir
//!   and of the call dir's entry in `calls/`) when the shim finds the pipe closed at the end:
//!   no daemon follows the call, and a command that ended while the daemon was down survives a
//!   power cut before it comes back. While the daemon follows, they are only written, since
//!   the daemon journals the result a moment later (one commit, which a power cut in between
//!   also loses: the step is then interrupted, re-run if idempotent, else put to the operator;
//!   never run twice). Syncing them anyway cost four device flushes on every step's path.
//!   `child.json` is not synced: it is read only by the shim and daemon of the same boot (a
//!   killed process leaves the page cache whole), and a power cut ends every process it names
//!   — the journaled boot id says so, and the outcome is then what `status.json` says, or
//!   unknown.
//! - `status.json` is written last (when it is written): it exists ⇒
//!   the command has ended (and, if it was stopped, no member of its process group is left);
//!   then the shim writes one byte, [`ENDED`], on its stdout (the daemon's pipe: the daemon
//!   need not wait for the process to end) and exits.
//! - SIGTERM or SIGINT to the shim means "stop the command": SIGTERM to its whole process group,
//!   SIGKILL after the spec's grace period, then wait until the group is empty. The shim is a
//!   child subreaper (`PR_SET_CHILD_SUBREAPER`), so the orphans of the group are re-parented to
//!   it and reaped, rather than left as zombies that still count as members.
//! - A command that ends by itself may leave processes in the background on purpose (a start
//!   script that launches a broker): they are left alone; their output is read for
//!   [`DRAIN_AFTER_EXIT`] more, then no longer.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub(crate) use self::ahead::call_message;
use self::wake::{Wake, STOP};
use super::LogSink;

mod ahead;
pub(crate) mod forker;

mod wake;

/// The format of the files in a call dir; a reader refuses any other.
pub(crate) const FORMAT: u32 = 1;
/// The byte that releases the command.
pub(crate) const GO: u8 = b'g';
/// The byte the shim writes on its stdout once the command's end is recorded, right before it
/// exits.
pub(crate) const ENDED: u8 = b'e';
/// The byte that starts the [`Report`] of the command's end on the shim's stdout, sent instead
/// of files to a daemon that follows the call and asked for it ([`Spec::report`]).
pub(crate) const REPORT: u8 = b'r';
/// The byte a daemon sends once it journaled a [`Report`]: the shim then exits with nothing
/// to write.
pub(crate) const ACK: u8 = b'a';
/// The largest status a [`Report`] carries (its stderr tail is at most [`STDERR_TAIL`]).
pub(crate) const MAX_REPORTED_STATUS: u32 = 64 * 1024;
/// The byte that starts the [`Call`] on the stdin of a shim started ahead of its call.
pub(crate) const CALL: u8 = b'c';
/// In place of the call dir on the command line (`shim - <data dir>`): the shim was started
/// ahead of its call, which comes first on its stdin ([`CALL`]).
pub const AHEAD: &str = "-";
/// The byte that starts the spec on the shim's stdin.
pub(crate) const SPEC: u8 = b's';
/// How much of stdout is kept for parsing (the log keeps more).
pub(crate) const STDOUT_FOR_PARSE: usize = 1024 * 1024;
/// How much of the end of stderr is kept for the step's error and output.
pub(crate) const STDERR_TAIL: usize = 2048;
/// How long the output of background processes is still read after the command exited.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);
/// After SIGKILL, how long to wait for the group to empty before giving up on it.
const AFTER_SIGKILL: Duration = Duration::from_secs(5);
/// While the command is being stopped, how often the shim looks whether its group is empty
/// (members that are not the shim's children end without a signal to it): first after
/// [`POLL_FIRST`], doubling up to [`POLL`]. Until then it sleeps until a signal wakes it
/// ([`wake`]), or looks this way if it cannot.
const POLL: Duration = Duration::from_millis(20);
const POLL_FIRST: Duration = Duration::from_micros(200);
/// How long a command runs before its pid is recorded in `child.json` (see [`ChildFile`]).
const RECORD_CHILD_AFTER: Duration = Duration::from_millis(20);

const SPEC_FILE: &str = "spec.json";
pub(crate) const CHILD_FILE: &str = "child.json";
pub(crate) const STDOUT_FILE: &str = "stdout";
pub(crate) const STATUS_FILE: &str = "status.json";
pub(crate) const SHIM_LOG_FILE: &str = "shim.log";

/// What the shim runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Spec {
    pub format: u32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// The step log the output is appended to.
    pub log: PathBuf,
    /// Between SIGTERM and SIGKILL when the command is stopped.
    pub grace_ms: u64,
    /// The umask the command runs with (the shim's own is private); absent in older specs.
    #[serde(default)]
    pub umask: Option<u32>,
    /// The daemon takes the command's end over the pipe ([`REPORT`]) and acknowledges it once
    /// journaled ([`ACK`]); false in older specs, whose daemons read the files.
    #[serde(default)]
    pub report: bool,
}

/// How the command ended, as reported over the pipe: what `status.json` and `stdout` would hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub status: Status,
    pub stdout: Vec<u8>,
}

/// Which call a shim started ahead of it serves: its dir, and the run's log of shim complaints
/// (the shim's stderr from then on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Call {
    pub format: u32,
    pub call_dir: PathBuf,
    pub shim_log: PathBuf,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Outcome {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// The command was never started (so it had no effect).
    NotStarted {
        reason: String,
    },
    /// Starting it failed (no such program, bad `cwd`).
    SpawnFailed {
        error: String,
    },
}

/// The content of `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Status {
    pub format: u32,
    pub outcome: Outcome,
    /// The shim was told to stop the command (timeout, cancel, rollback).
    pub stopped: bool,
    pub stderr_tail: String,
}

impl Status {
    fn new(outcome: Outcome) -> Status {
        Status {
            format: FORMAT,
            outcome,
            stopped: false,
            stderr_tail: String::new(),
        }
    }
}

/// A process as the kernel knows it across time: a pid alone can be reused by another process
/// once the first one is gone, a pid with its start time (clock ticks since boot) and the boot
/// id cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessIdentity {
    pub pid: i32,
    pub start_time: u64,
    pub boot_id: String,
}

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    pub start_time: u64,
}

impl ProcStat {
    /// Reads `/proc/<pid>/stat`; `None` when there is no such process.
    pub fn read(pid: i32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses; the last `)`
        // ends it.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(ProcStat {
            state: fields.first()?.chars().next()?,
            pgrp: fields.get(2)?.parse().ok()?,
            // Field 22 of the line; the 20th after the comm.
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// A zombie (or a dying task) has ended; only its parent's wait is missing.
    pub fn has_ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`); empty if unreadable.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

impl ProcessIdentity {
    /// The identity of the live process `pid`.
    pub fn of(pid: i32) -> Result<ProcessIdentity, String> {
        let stat = ProcStat::read(pid)
            .ok_or_else(|| format!("cannot read /proc/{pid}/stat: no such process"))?;
        Ok(ProcessIdentity {
            pid,
            start_time: stat.start_time,
            boot_id: boot_id(),
        })
    }

    /// Whether this very process still runs (not a zombie, not another process with its pid).
    pub fn is_alive(&self) -> bool {
        match ProcStat::read(self.pid) {
            Some(stat) => {
                stat.start_time == self.start_time && !stat.has_ended() && boot_id() == self.boot_id
            }
            None => false,
        }
    }

    /// Sends `signal` to this process if it is still alive; never to another process that has
    /// reused its pid (the check and the signal go through one pidfd). True if it was sent.
    pub fn signal(&self, signal: i32) -> bool {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            // No pidfd (kernel < 5.3): check, then signal; the window is a few microseconds.
            // SAFETY: kill(2) involves no memory.
            return self.is_alive() && unsafe { libc::kill(self.pid, signal) } == 0;
        }
        let Ok(fd) = i32::try_from(fd) else {
            return false;
        };
        // SAFETY: `fd` is a descriptor we just opened and own from here on.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // The pidfd pins the process it was opened for: if that is ours now, a signal through it
        // cannot reach a later process with the same pid.
        if !self.is_alive() {
            return false;
        }
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                raw,
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }
}

/// Signals the process group led by the command `leader` (whose pid is the group id), unless
/// that pid now belongs to an unrelated process. True if the signal was sent.
pub(crate) fn signal_group(leader: &ProcessIdentity, signal: i32) -> bool {
    if leader.boot_id != boot_id() {
        return false;
    }
    // The leader may be gone while other members remain (the group id stays reserved then);
    // a process with its pid and another start time means the group is gone and the pid reused.
    if let Some(stat) = ProcStat::read(leader.pid) {
        if stat.start_time != leader.start_time {
            return false;
        }
    }
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe { libc::kill(-leader.pid, signal) == 0 }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file, fsync, rename, fsync of
/// the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let directory = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no directory", path.display())))?;
    write_through_temporary(path, bytes, true)?;
    File::open(directory)?.sync_all()
}

/// Writes `bytes` to `path` atomically for readers (a temporary file, then a rename), without
/// waiting for the disk: for `child.json`, which matters only while this boot lasts. A killed
/// daemon or shim leaves it whole in the page cache; a power cut ends the process it describes,
/// and the boot id tells a reader so (see the module's contract).
pub(crate) fn write_visible(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_through_temporary(path, bytes, false)
}

fn write_through_temporary(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&temporary, path)
}

/// Reads a JSON file of the call dir; `Ok(None)` if it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| format!("{} is not JSON: {error}", path.display()))?;
    serde_json::from_value(value)
        .map(Some)
        .map_err(|error| format!("{} is malformed: {error}", path.display()))
}

/// Like [`read_json`] for a file with a `format` field: any format but [`FORMAT`] is refused
/// (a newer shim's status is not misread by an older daemon).
fn read_versioned<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let Some(value) = read_json::<serde_json::Value>(path)? else {
        return Ok(None);
    };
    versioned(path, value).map(Some)
}

/// Decodes a value with a `format` field, refusing any format but [`FORMAT`].
fn versioned<T: serde::de::DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
) -> Result<T, String> {
    let format = value.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        let found = format.map_or_else(|| "none".to_owned(), |format| format.to_string());
        return Err(format!(
            "{} has format {found}; this runbook reads format {FORMAT}",
            path.display()
        ));
    }
    serde_json::from_value(value)
        .map_err(|error| format!("{} is malformed: {error}", path.display()))
}

/// Reads the spec the way nobody else can have planted it: every directory on the way to the
/// call dir is checked (`private_dir::check_path_to`), and `spec.json` is opened without
/// following a symlink and must be a regular file of ours that no other user can write.
fn read_spec(call_dir: &Path) -> Result<Option<Spec>, String> {
    crate::private_dir::check_path_to(call_dir)
        .map_err(|problem| format!("refusing to run from {}: {problem}", call_dir.display()))?;
    let file = match crate::private_dir::open_private_file(call_dir, SPEC_FILE) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("refusing {SPEC_FILE}: {error}")),
    };
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read {SPEC_FILE} in {}: {error}", call_dir.display()))?;
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        return Err(format!(
            "{SPEC_FILE} in {} is too large",
            call_dir.display()
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| format!("{SPEC_FILE} in {} is not JSON: {error}", call_dir.display()))?;
    versioned(&call_dir.join(SPEC_FILE), value).map(Some)
}

/// The largest spec the shim reads (a command and its environment).
pub(crate) const MAX_SPEC_BYTES: u64 = 16 * 1024 * 1024;

/// The bytes the daemon sends before the go: [`SPEC`], the length, the spec's JSON.
pub(crate) fn spec_message(spec: &Spec) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(spec).map_err(|error| error.to_string())?;
    let length = u32::try_from(json.len())
        .ok()
        .filter(|length| u64::from(*length) <= MAX_SPEC_BYTES)
        .ok_or_else(|| {
            format!(
                "the command's spec is {} bytes, over {MAX_SPEC_BYTES}",
                json.len()
            )
        })?;
    let mut message = Vec::with_capacity(json.len() + 5);
    message.push(SPEC);
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(&json);
    Ok(message)
}

/// Reads the spec the daemon sent after [`SPEC`] (its length, then its JSON).
fn receive_spec(call_dir: &Path, pipe: &mut impl Read) -> Result<Spec, String> {
    crate::private_dir::check_path_to(call_dir)
        .map_err(|problem| format!("refusing to run from {}: {problem}", call_dir.display()))?;
    let mut length = [0u8; 4];
    pipe.read_exact(&mut length)
        .map_err(|error| format!("the daemon stopped while it sent the spec: {error}"))?;
    let length = u64::from(u32::from_be_bytes(length));
    if length > MAX_SPEC_BYTES {
        return Err(format!(
            "the spec the daemon sent is {length} bytes, over {MAX_SPEC_BYTES}"
        ));
    }
    let mut bytes = Vec::new();
    pipe.take(length)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("the daemon stopped while it sent the spec: {error}"))?;
    if bytes.len() as u64 != length {
        return Err("the daemon stopped while it sent the spec".to_owned());
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| format!("the spec the daemon sent is not JSON: {error}"))?;
    versioned(Path::new("the spec the daemon sent"), value)
}

/// A reported status ([`Report`]), refused in any format but [`FORMAT`].
pub(crate) fn decode_status(bytes: &[u8]) -> Result<Status, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|error| format!("the reported status is not JSON: {error}"))?;
    versioned(Path::new("the reported status"), value)
}

/// The command's end, if the shim recorded it.
pub(crate) fn read_status(call_dir: &Path) -> Result<Option<Status>, String> {
    read_versioned(&call_dir.join(STATUS_FILE))
}

/// The shim process: runs the command the daemon describes on its stdin once released, and
/// returns the process's exit code (0 once `status.json` is written).
pub fn run(call_dir: &Path) -> i32 {
    supervise_from(Some(call_dir), call_dir)
}

/// A shim the daemon of `data_dir` started before it had a call for it (`shim - <data dir>`), so
/// that its start-up is not on a step's path: it gets ready, then waits for its [`Call`] (in
/// `data_dir`), then runs like [`run`]. EOF instead (the daemon stopped, or never needed it)
/// ends it at once: it had no call dir, so nothing is recorded.
pub fn run_ahead(data_dir: &Path) -> i32 {
    supervise_from(None, data_dir)
}

/// The shim's process: its call dir, or `None` to wait for it (then `place` is the data dir).
fn supervise_from(call_dir: Option<&Path>, place: &Path) -> i32 {
    if call_dir.is_none() && forker::asked() {
        return forker::serve(place);
    }
    leave_the_daemons_session(place);
    let wake = Wake::install();
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who adopts the orphans of our subtree.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "runbook shim ({}): cannot become a child subreaper: {}",
            place.display(),
            std::io::Error::last_os_error()
        );
    }
    let mut pipe = std::io::stdin().lock();
    let call_dir = match call_dir {
        Some(call_dir) => call_dir.to_owned(),
        None => match ahead::receive_call(&mut pipe, place) {
            Some(call_dir) => call_dir,
            None => return 0,
        },
    };
    let call_dir = call_dir.as_path();
    let mut reports = false;
    let (status, stdout) = supervise(call_dir, &mut pipe, &wake, &mut reports);
    // A daemon that follows the command and asked for it takes its end over the pipe, journals
    // it, and acknowledges: then there is nothing to write. Without the acknowledgement (the
    // daemon died or stopped first) the end is written as below, durably.
    if reports && daemon_follows() && report(&status, &stdout) && acknowledged(&mut pipe) {
        return 0;
    }
    // The daemon that released the command keeps this pipe open while it follows the command,
    // and journals its end itself: then the files need only be visible to it. Else (it stopped
    // or died meanwhile, or is an older daemon that closes the pipe at the go) they must
    // survive a power cut on their own.
    let durable = !daemon_follows();
    let write = |path: &Path, bytes: &[u8]| {
        if durable {
            write_atomic(path, bytes)
        } else {
            write_visible(path, bytes)
        }
    };
    // No stdout file for a command that wrote nothing (a reader takes a missing one as empty).
    let stdout_written = if stdout.is_empty() {
        Ok(())
    } else {
        write(&call_dir.join(STDOUT_FILE), &stdout)
    };
    let written = stdout_written.and_then(|()| {
        let json = serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?;
        write(&call_dir.join(STATUS_FILE), &json)?;
        match call_dir.parent() {
            // The call dir's own entry (the daemon does not sync it when it creates the dir).
            Some(calls) if durable => File::open(calls)?.sync_all(),
            _ => Ok(()),
        }
    });
    if written.is_ok() {
        // The daemon need not wait for this process to end: the status is there. (Nobody reads
        // a shim that an older daemon started with its stdout on /dev/null.)
        // SAFETY: write(2) of one byte from a live array to descriptor 1.
        unsafe { libc::write(1, [ENDED].as_ptr().cast(), 1) };
    }
    match written {
        Ok(()) => 0,
        Err(error) => {
            eprintln!(
                "runbook shim ({}): cannot record the command's end ({:?}): {error}",
                call_dir.display(),
                status.outcome
            );
            1
        }
    }
}

/// Sends the command's end to the daemon on stdout: [`REPORT`], the status's length and JSON,
/// the kept stdout's length and bytes. False if the daemon cannot get it.
fn report(status: &Status, stdout: &[u8]) -> bool {
    let Ok(json) = serde_json::to_vec(status) else {
        return false;
    };
    let (Ok(json_length), Ok(stdout_length)) =
        (u32::try_from(json.len()), u32::try_from(stdout.len()))
    else {
        return false;
    };
    if json_length > MAX_REPORTED_STATUS {
        return false;
    }
    let mut message = Vec::with_capacity(json.len() + stdout.len() + 9);
    message.push(REPORT);
    message.extend_from_slice(&json_length.to_be_bytes());
    message.extend_from_slice(&json);
    message.extend_from_slice(&stdout_length.to_be_bytes());
    message.extend_from_slice(stdout);
    // SAFETY: descriptor 1 is open for the life of the process; the `File` is never dropped,
    // so it is not closed here.
    let mut out =
        std::mem::ManuallyDrop::new(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(1) });
    out.write_all(&message).is_ok()
}

/// Waits for the daemon's [`ACK`] of a report; false on EOF (it died or stopped before it
/// journaled the end) or anything else.
fn acknowledged(pipe: &mut impl Read) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match pipe.read(&mut byte) {
            Ok(1) => return byte[0] == ACK,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return false,
        }
    }
}

/// Whether the daemon still holds the other end of the shim's stdin (nothing to read, no
/// hang-up): it follows the command.
fn daemon_follows() -> bool {
    let mut pollfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pollfd, 1, 0) == 0 }
}

/// Puts the shim in a session of its own, so that the daemon's death (or a signal to the
/// daemon's process group or terminal) does not reach it or its command. The shim does this
/// itself rather than the daemon between fork and exec: a spawn with no code to run in the
/// child lets the daemon start it with `posix_spawn` (a `vfork`), where a fork of the daemon's
/// whole address space cost most of a millisecond per step. A shim started by a daemon that
/// still did it (an upgrade in the middle of a run) already leads its session: nothing to do.
fn leave_the_daemons_session(call_dir: &Path) {
    // SAFETY: setsid(2) and getsid(2) only change or read this process's session.
    let result = unsafe { libc::setsid() };
    let leads_own = unsafe { libc::getsid(0) == libc::getpid() };
    if result < 0 && !leads_own {
        eprintln!(
            "runbook shim ({}): cannot start a session of its own: {}",
            call_dir.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Waits for the go, runs the command to its end; the status and the kept stdout. `reports`:
/// the daemon's spec asked for the end over the pipe ([`Spec::report`]).
fn supervise(
    call_dir: &Path,
    pipe: &mut impl Read,
    wake: &Wake,
    reports: &mut bool,
) -> (Status, Vec<u8>) {
    let not_started = |reason: String| (Status::new(Outcome::NotStarted { reason }), Vec::new());
    let stopped = || "the daemon stopped before it released the command".to_owned();
    let mut byte = [0u8; 1];
    let first = match pipe.read(&mut byte) {
        Ok(1) => byte[0],
        _ => return not_started(stopped()),
    };
    let (spec, output): (Spec, std::io::Result<Output>) = match first {
        SPEC => {
            let spec = match receive_spec(call_dir, pipe) {
                Ok(spec) => spec,
                Err(reason) => return not_started(reason),
            };
            // The output's pipes and their pumps are made while the daemon journals this shim,
            // off the command's path (no output can come before the command starts).
            let output = Output::start(&spec.log);
            let released = matches!(pipe.read(&mut byte), Ok(1)) && byte[0] == GO;
            if !released {
                return not_started(stopped());
            }
            (spec, output)
        }
        // An older daemon: it wrote the spec into the call dir and released the shim already.
        GO => match read_spec(call_dir) {
            Ok(Some(spec)) => {
                let output = Output::start(&spec.log);
                (spec, output)
            }
            Ok(None) => return not_started(format!("no {SPEC_FILE} in {}", call_dir.display())),
            Err(reason) => return not_started(reason),
        },
        _ => return not_started(stopped()),
    };
    *reports = spec.report;
    let output = match output {
        Ok(output) => output,
        Err(error) => {
            return (
                Status::new(Outcome::SpawnFailed {
                    error: format!("cannot make the pipes for the command's output: {error}"),
                }),
                Vec::new(),
            )
        }
    };
    if STOP.load(Ordering::SeqCst) {
        return (
            Status::new(Outcome::NotStarted {
                reason: "stopped before it started".to_owned(),
            }),
            Vec::new(),
        );
    }
    let Some(program) = spec.argv.first() else {
        return (
            Status::new(Outcome::NotStarted {
                reason: "the command is empty".to_owned(),
            }),
            Vec::new(),
        );
    };
    let mut command = Command::new(program);
    command
        .args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(output.stdout))
        .stderr(Stdio::from(output.stderr));
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command.envs(spec.env.iter().map(|(key, value)| (key, value)));
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    // The command inherits the shim's mask at the spawn: set it around the spawn rather than
    // between fork and exec, so that the spawn has no code to run in the child and can be a
    // `posix_spawn`. (The pumps, already running, create no file before the command writes.)
    // SAFETY: umask(2) only changes this process's file creation mask.
    let own_umask = spec
        .umask
        .map(|umask| unsafe { libc::umask((umask & 0o777) as libc::mode_t) });
    let spawned = command.spawn();
    // The shim's copies of the pipes' write ends: once closed, the pumps see EOF when the
    // command (and whatever inherited its output) is done.
    drop(command);
    if let Some(own_umask) = own_umask {
        // SAFETY: as above; the shim's own files are created with its own mask again.
        unsafe {
            libc::umask(own_umask);
        }
    }
    let child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let place = spec
                .cwd
                .as_ref()
                .map(|cwd| format!(" in {cwd}"))
                .unwrap_or_default();
            return (
                Status::new(Outcome::SpawnFailed {
                    error: format!("cannot start {program:?}{place}: {error}"),
                }),
                Vec::new(),
            );
        }
    };
    let Ok(pid) = i32::try_from(child.id()) else {
        return (
            Status::new(Outcome::SpawnFailed {
                error: format!("pid {} out of range", child.id()),
            }),
            Vec::new(),
        );
    };
    let leader = ChildFile::new(call_dir, pid);
    let (outcome, stopped) = wait_for_command(
        leader,
        Duration::from_millis(spec.grace_ms),
        &output.log,
        wake,
    );
    let deadline = Instant::now() + DRAIN_AFTER_EXIT;
    for _ in 0..2 {
        if output
            .drained
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            break;
        }
    }
    let (stdout_kept, stderr_kept) = (output.stdout_kept, output.stderr_kept);
    let stdout = stdout_kept
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let stderr = stderr_kept
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let status = Status {
        format: FORMAT,
        outcome,
        stopped,
        stderr_tail: String::from_utf8_lossy(&stderr).into_owned(),
    };
    (status, stdout)
}

/// The command's stdout and stderr: pipes whose read ends two pumps copy into the step log,
/// keeping the head of stdout and the tail of stderr.
struct Output {
    /// The write ends, for the command.
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    log: LogSink,
    stdout_kept: Arc<Mutex<Vec<u8>>>,
    stderr_kept: Arc<Mutex<Vec<u8>>>,
    /// One message per pump whose pipe closed.
    drained: mpsc::Receiver<()>,
}

impl Output {
    fn start(log: &Path) -> std::io::Result<Output> {
        let log = LogSink::new(log.to_owned());
        let (stdout_read, stdout) = pipe()?;
        let (stderr_read, stderr) = pipe()?;
        let stdout_kept = Arc::new(Mutex::new(Vec::new()));
        let stderr_kept = Arc::new(Mutex::new(Vec::new()));
        let (done, drained) = mpsc::channel::<()>();
        spawn_pump(
            File::from(stdout_read),
            log.clone(),
            stdout_kept.clone(),
            Keep::Head(STDOUT_FOR_PARSE),
            done.clone(),
        );
        spawn_pump(
            File::from(stderr_read),
            log.clone(),
            stderr_kept.clone(),
            Keep::Tail(STDERR_TAIL),
            done,
        );
        Ok(Output {
            stdout,
            stderr,
            log,
            stdout_kept,
            stderr_kept,
            drained,
        })
    }
}

/// A pipe, both ends closed on exec (the command gets its end as its stdout or stderr).
fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: pipe2 writes two new descriptors into the array, owned here alone from then on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: as above: both are open and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

enum Keep {
    Head(usize),
    Tail(usize),
}

/// Copies a pipe into the log on a thread, keeping its head or tail; says when the pipe closed.
fn spawn_pump(
    mut pipe: impl Read + Send + 'static,
    log: LogSink,
    kept: Arc<Mutex<Vec<u8>>>,
    keep: Keep,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            log.append(&buffer[..read]);
            let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
            match keep {
                Keep::Head(limit) => {
                    let room = limit.saturating_sub(kept.len());
                    kept.extend_from_slice(&buffer[..read.min(room)]);
                }
                Keep::Tail(limit) => {
                    kept.extend_from_slice(&buffer[..read]);
                    if kept.len() > limit {
                        let excess = kept.len() - limit;
                        kept.drain(..excess);
                    }
                }
            }
        }
        let _ = done.send(());
    });
}

/// `child.json`, written once the command has run for [`RECORD_CHILD_AFTER`] or is to be
/// stopped, whichever comes first: it matters only to a daemon that must stop or report a
/// command whose shim failed it, and a command that ends within a few milliseconds (a check,
/// `true`) is spared the creation of a file.
struct ChildFile<'a> {
    call_dir: &'a Path,
    pid: i32,
    /// Read at the spawn, while the command cannot have been reaped.
    identity: Result<ProcessIdentity, String>,
    started: Instant,
    written: bool,
}

impl<'a> ChildFile<'a> {
    fn new(call_dir: &'a Path, pid: i32) -> ChildFile<'a> {
        ChildFile {
            call_dir,
            pid,
            identity: ProcessIdentity::of(pid),
            started: Instant::now(),
            written: false,
        }
    }

    fn write(&mut self) {
        if self.written {
            return;
        }
        self.written = true;
        let recorded = self.identity.clone().and_then(|identity| {
            let json = serde_json::to_vec_pretty(&identity).map_err(|error| error.to_string())?;
            write_visible(&self.call_dir.join(CHILD_FILE), &json).map_err(|error| error.to_string())
        });
        if let Err(error) = recorded {
            eprintln!(
                "runbook shim ({}): cannot record the command's pid {}: {error}",
                self.call_dir.display(),
                self.pid
            );
        }
    }

    /// Writes the file once it is due; how long until it is (`None`: written).
    fn write_when_due(&mut self) -> Option<Duration> {
        let due = RECORD_CHILD_AFTER.saturating_sub(self.started.elapsed());
        if due.is_zero() {
            self.write();
        }
        (!self.written).then_some(due)
    }
}

/// Reaps children until the command (leader of the group with its pid) ended; on a stop
/// request, stops the whole group first. How it ended, and whether it was stopped.
fn wait_for_command(
    mut child_file: ChildFile,
    grace: Duration,
    log: &LogSink,
    wake: &Wake,
) -> (Outcome, bool) {
    let pid = child_file.pid;
    let mut leader: Option<Outcome> = None;
    let mut term_sent: Option<Instant> = None;
    let mut kill_sent: Option<Instant> = None;
    let mut pause = POLL_FIRST;
    loop {
        reap(pid, &mut leader);
        if STOP.load(Ordering::SeqCst) && term_sent.is_none() {
            child_file.write();
            log.line(&format!(
                "[runbook] stopping the command: SIGTERM to its process group {pid}"
            ));
            // SAFETY: kill(2) with a negative pid signals our command's process group.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            term_sent = Some(Instant::now());
        }
        match (term_sent, &leader) {
            // Not stopped: the command's own end is the end (background processes stay).
            (None, Some(outcome)) => return (outcome.clone(), false),
            (None, None) => {}
            (Some(sent), _) => {
                if !group_exists(pid) {
                    reap(pid, &mut leader);
                    if let Some(outcome) = leader.take() {
                        return (outcome, true);
                    }
                }
                match kill_sent {
                    None if sent.elapsed() >= grace => {
                        log.line(&format!(
                            "[runbook] the process group {pid} outlived the {}ms grace: SIGKILL",
                            grace.as_millis()
                        ));
                        // SAFETY: as above.
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                        kill_sent = Some(Instant::now());
                    }
                    Some(killed) if killed.elapsed() >= AFTER_SIGKILL => {
                        log.line(&format!("[runbook] the process group {pid} still has members after SIGKILL; giving up on them"));
                        let outcome = leader.take().unwrap_or(Outcome::Signaled {
                            signal: libc::SIGKILL,
                        });
                        return (outcome, true);
                    }
                    _ => {}
                }
            }
        }
        // Running and not asked to stop: only a signal (SIGCHLD, SIGTERM, SIGINT) can change
        // that, and each one wakes the wait. Stopping: look again soon as well.
        let child_file_due = child_file.write_when_due();
        if term_sent.is_none() && wake.is_reliable() {
            wake.wait(child_file_due);
        } else {
            wake.wait(Some(pause));
            pause = (pause * 2).min(POLL);
        }
    }
}

/// Reaps every child that ended (the command, and orphans adopted as subreaper); records the
/// command's end.
fn reap(pid: i32, leader: &mut Option<Outcome>) {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid pointer to an int.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return;
        }
        if reaped == pid {
            *leader = Some(if libc::WIFSIGNALED(status) {
                Outcome::Signaled {
                    signal: libc::WTERMSIG(status),
                }
            } else {
                Outcome::Exited {
                    code: libc::WEXITSTATUS(status),
                }
            });
        }
    }
}

/// Whether any process is left in group `pgid` (EPERM: one we may not signal, still a member).
fn group_exists(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let result = unsafe { libc::kill(-pgid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests;
