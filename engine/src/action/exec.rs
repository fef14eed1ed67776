//! `exec`: run a command once, under a supervisor that outlives the daemon; capture its output;
//! succeed by exit code.
//!
//! # Input
//!
//! - `command`: a shell string (run by `sh -c`) or an argv list; `env` (a table of strings);
//!   `cwd`.
//! - `parse`: `text` (default), `json` or `lines`; `regex`: the named groups of the first match
//!   in stdout land in `output.match`.
//! - `grace`: between SIGTERM and SIGKILL when the step is stopped (timeout, cancel, rollback);
//!   default 10s.
//! - `host`: `[user@]host[:port]` (IPv6 in brackets: `[::1]:22`) runs the command on that host
//!   over `ssh`. The command is quoted for the remote POSIX shell (a string runs as
//!   `sh -c '<command>'`, a list word by word); `cwd` and `env` apply on the remote host
//!   (`cd` and `env` in front of it). The local `ssh` client is the supervised command, so all
//!   of the contract below holds for it.
//! - `identity_file`: the ssh key (`-i`, with `IdentitiesOnly=yes`); default: ssh's own choice.
//! - `known_hosts`, how the host's key is checked: `strict` (default; it must already be in the
//!   user's known_hosts), `accept-new` (an unknown host's key is recorded on first use, a changed
//!   one is refused), `off` (no check and nothing recorded: for throwaway hosts only), or the path
//!   of a known_hosts file (it contains a `/`), checked strictly.
//! - `connect_timeout`: how long ssh may take to connect and log in; default 10s.
//!
//! ssh always runs with `BatchMode=yes` (never a password prompt), `LogLevel=ERROR`, and
//! `ServerAliveInterval=15`/`ServerAliveCountMax=4`, so that a dead connection ends the step
//! (exit 255) within about a minute rather than never.
//!
//! # Output
//!
//! `exit_code`, `stdout` (the first 64 KiB), `stderr_tail`, and `json` / `lines` / `match` when
//! asked for. A non-zero exit is a retryable failure whose message holds the end of stderr; over
//! ssh, exit 255 is reported as a failure to connect or log in, naming the host.
//!
//! # Contract: a command never runs twice
//!
//! Each call runs under `runbook shim` ([`super::shim`]) in its own session, so the daemon's death
//! does not end it. The shim's identity (pid, start time, boot id) is journaled (`CallNoted`)
//! before the shim is allowed to start the command; when a spare shim waits, the call is handed
//! to it before the step's start is committed ([`Exec::prepare`]), and the note is journaled
//! in that same commit. After a daemon restart, [`Exec::reattach`]
//! decides from the call dir and that note:
//!
//! 1. `status.json` exists → the command ended, maybe while the daemon was down: its real exit
//!    status is the step's result. (A daemon that follows a call gets the end over the shim's
//!    pipe and tells the shim once the result is journaled; only a shim that is not told
//!    writes `status.json`.)
//! 2. else the journaled shim is alive (same pid, same start time, same boot) → re-attach: wait
//!    for its status. It kept appending the command's output to the step log all along.
//! 3. else → the outcome is unknown (the host rebooted, the shim was killed, its pid now belongs
//!    to another process): the step is interrupted (re-run if it is idempotent, else put to the
//!    operator). So is a call whose shim was never journaled or never released; its command did
//!    not start, which the step log says.
//!
//! A pid that now belongs to another process is never followed nor signalled.
//!
//! Stopping (timeout, cancel, rollback) sends SIGTERM to the shim, which sends SIGTERM to the
//! command's whole process group, SIGKILL after `grace`, and waits until the group is empty. If
//! the shim has not ended `grace` + 5 s later, the daemon sends SIGKILL to the group (its id is in
//! `child.json`, checked against the leader's start time) and to the shim. A command may leave
//! background processes on purpose (a start script that launches a broker): once the command
//! itself exits, they are left alone. A process that leaves the group on its own (`setsid`,
//! `setpgid`: a daemonizing start script) is no longer the step's to stop.
//!
//! Over ssh, stopping ends the local `ssh` client; sshd does not signal a remote command that has
//! no terminal, so a remote command that writes nothing may outlive it. Give long remote
//! commands their own limit (`timeout 600 ...`).
//!
//! The shim is started as `<program> shim - <data dir>`, ahead of the call it will serve (one
//! spare waits while the daemon runs, see `exec/spare.rs`), and learns its call dir from its
//! stdin (a call that finds no spare starts `<program> shim - <run dir>`).
//! The program is `runbook-shim`
//! ([`SHIM_BINARY`]: the shim alone, which starts several times faster than the full binary)
//! when it is an executable file beside the daemon's own executable, else the daemon's own
//! binary, which must then offer the `shim` subcommand (the `runbook` binary does). Re-attaching
//! needs neither: a shim is known by its journaled pid, start time and boot id.

mod outcome;
mod spare;
mod spec;
mod ssh;

use outcome::*;
pub use spare::enable as keep_spare_supervisor;
pub use spec::would_run;
pub(crate) use spec::{spec, ExecSpec};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use self::spare::Shim;
use self::ssh::{parse_host, remote_command, ssh_argv, KnownHosts, SshOptions};
use super::shim::{self, Outcome, ProcStat, ProcessIdentity, Status};
use super::{Action, ActionContext, ActionFailure, ActionFuture, Held, Prepared};

/// The local argv that runs `argv` on `host` (`[user@]host[:port]`) over ssh, with the options
/// an `exec` step takes (`identity_file`, `known_hosts`: strict, accept-new, off or a file): the
/// same client, batch mode and host-key rules as `exec` with `host`, for actions that work on a
/// broker's files. Every word reaches the remote shell single-quoted.
pub fn ssh_command(
    host: &str,
    identity_file: Option<&str>,
    known_hosts: Option<&str>,
    argv: &[String],
) -> Result<Vec<String>, String> {
    let target = parse_host(host)?;
    let options = SshOptions {
        identity_file: identity_file.map(str::to_owned),
        known_hosts: KnownHosts::parse(known_hosts)?,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
    };
    let remote = remote_command(argv, &[], None)?;
    Ok(ssh_argv(&target, &options, &remote))
}

/// How much of stdout the output keeps (the log keeps more).
const STDOUT_IN_OUTPUT: usize = 64 * 1024;
/// How often a re-attached daemon checks whether the shim still runs.
const REATTACHED_POLL: Duration = Duration::from_millis(100);
/// How long past the grace period a stopping shim may take before the daemon kills the group.
const SHIM_PATIENCE: Duration = Duration::from_secs(5);
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The supervisor's own binary, used when it sits beside the daemon's executable.
pub const SHIM_BINARY: &str = "runbook-shim";

pub struct Exec;

impl Action for Exec {
    fn schema(&self) -> &'static super::Schema {
        &super::schema::EXEC
    }

    fn call(&self, input: Value, context: ActionContext) -> ActionFuture {
        Box::pin(run(input, context))
    }

    /// Hands the call to the spare shim, if one waits, before the commit that starts it: the
    /// shim's identity is then journaled with the start, and the go follows that one commit.
    fn prepare(&self, input: &Value, context: &ActionContext) -> Option<Prepared> {
        let spec = spec(input).ok()?;
        let shim = spare::take()?;
        let message = match prepare_call(&spec, context) {
            Ok(message) => message,
            Err(_) => {
                // The call reports it when it runs the usual way.
                spare::give_back(shim);
                return None;
            }
        };
        let mut shim = shim;
        // A spare that died meanwhile had no call: the call starts its own shim when it runs.
        let unsent = shim.send_now(&message).ok()?;
        Some(Prepared {
            note: supervisor_note(&shim),
            held: Box::new(Handed { shim, unsent }),
        })
    }

    fn call_prepared(&self, input: Value, context: ActionContext, held: Held) -> ActionFuture {
        match held.downcast::<Handed>() {
            Ok(handed) => Box::pin(run_prepared(input, context, *handed)),
            Err(_) => Box::pin(run(input, context)),
        }
    }

    /// The start was not journaled: the shim gets EOF before any go, records that the command
    /// did not start, and exits; this waits for that.
    fn discard(
        &self,
        held: Held,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Ok(mut handed) = held.downcast::<Handed>() {
                handed.shim.close().await;
            }
        })
    }

    /// The command it would run, as the shell would get it; nothing is started.
    fn preview(&self, input: Value, _context: ActionContext) -> Option<ActionFuture> {
        Some(Box::pin(async move {
            let command = would_run(&input)?;
            Ok(
                serde_json::json!({"changes": [], "runs": command, "note": format!("would run: {command}")}),
            )
        }))
    }

    fn reattach(&self, input: Value, context: ActionContext) -> Option<ActionFuture> {
        let spec = match spec(&input) {
            Ok(spec) => spec,
            Err(failure) => return Some(Box::pin(async move { Err(failure) })),
        };
        match recovery(&context.state_dir, context.note.as_ref()) {
            Recovery::Ended(status) => {
                let how = describe(&status.outcome);
                context.log.line(&format!(
                    "[runbook] the daemon restarted; the command ended while it was down ({how})"
                ));
                tracing::info!(run = %context.run_id, step = %context.step, "the command ended while the daemon was down ({how})");
                Some(Box::pin(async move {
                    finish(status, None, &spec, &context.state_dir)
                }))
            }
            Recovery::Running(identity) => {
                let pid = identity.pid;
                context.log.line(&format!("[runbook] the daemon restarted; re-attached to the running command (supervisor pid {pid})"));
                tracing::info!(run = %context.run_id, step = %context.step, pid, "re-attached to a running command");
                Some(Box::pin(async move {
                    follow(
                        Shim {
                            identity,
                            child: None,
                            to: None,
                            ended: None,
                        },
                        &spec,
                        &context,
                    )
                    .await
                }))
            }
            Recovery::NotStarted(why) => {
                context.log.line(&format!(
                    "[runbook] the daemon restarted; {why}: starting it again"
                ));
                tracing::info!(run = %context.run_id, step = %context.step, "the command never started ({why}); starting it again");
                Some(Box::pin(
                    async move { Err(ActionFailure::never_started(why)) },
                ))
            }
            Recovery::Unknown(why) => {
                context
                    .log
                    .line(&format!("[runbook] the daemon restarted; {why}"));
                tracing::warn!(run = %context.run_id, step = %context.step, "cannot re-attach: {why}");
                None
            }
        }
    }
}

/// A call handed to a shim before its start was journaled ([`Exec::prepare`]): the shim, and
/// what of the call and spec did not fit in its pipe at once.
struct Handed {
    shim: Shim,
    unsent: Vec<u8>,
}

/// The note that journals the call's shim (and this daemon) before the go.
fn supervisor_note(shim: &Shim) -> Value {
    json!({ "shim": shim.identity, "daemon": daemon_identity() })
}

async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let spec = spec(&input)?;
    let message = prepare_call(&spec, &context)?;
    let mut shim = hand_over(&message, &context).await?;
    // Write-ahead: the shim's identity is durable before the command may start; a daemon that
    // dies before the go closes the pipe, and the shim then exits without running anything.
    let journaled = context.recorder.record(supervisor_note(&shim)).await;
    if let Err(error) = journaled {
        shim.close().await;
        return Err(ActionFailure::retryable(format!("cannot journal the command's supervisor (pid {}): {error}; the command was not started", shim.identity.pid)));
    }
    release(shim, &spec, &context).await
}

/// A call whose shim was journaled with its start: the rest of the call and spec, then the go.
async fn run_prepared(
    input: Value,
    context: ActionContext,
    handed: Handed,
) -> Result<Value, ActionFailure> {
    let spec = spec(&input)?;
    let Handed { mut shim, unsent } = handed;
    if !unsent.is_empty() {
        if let Err(error) = shim.send(&unsent).await {
            return Err(refused(shim, error, &context).await);
        }
    }
    release(shim, &spec, &context).await
}

/// Releases a shim whose identity is journaled (unless the call was canceled or the daemon is
/// shutting down meanwhile), and follows the command to its end.
async fn release(
    mut shim: Shim,
    spec: &ExecSpec,
    context: &ActionContext,
) -> Result<Value, ActionFailure> {
    if context.cancel.is_cancelled() {
        shim.close().await;
        return Err(ActionFailure::permanent("canceled"));
    }
    if context.draining.is_cancelled() {
        // Shutting down: release nothing new. The shim records `not_started`, and the restarted
        // daemon starts the call again.
        shim.close().await;
        return Err(ActionFailure::never_started(
            "the daemon was shutting down; the command was not started",
        ));
    }
    // A shim that cannot be released has died; `follow` reports that. Its stdin stays open
    // while this daemon follows the call (the shim then leaves the journaling of the end to
    // it, see `shim::run`).
    if let Err(error) = shim.send(&[shim::GO]).await {
        tracing::warn!(run = %context.run_id, step = %context.step, %error, "cannot release the command's supervisor");
    }
    // The next call's shim is made while this one's command runs, off every step's path.
    spare::refill(&context.draining);
    follow(shim, spec, context).await
}

/// The umask the commands run with: the one the daemon was started with (the daemon itself
/// runs with a private one, see `private_dir`).
static COMMAND_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0o022);

static DAEMON_IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this daemon (`<host>#<id>:<data dir>`) in the note of each call it starts, so that a daemon
/// that takes over a shared store knows a call it cannot re-attach to (its supervisor is on
/// another host, its status in another data dir).
pub fn set_daemon_identity(identity: String) {
    let _ = DAEMON_IDENTITY.set(identity);
}

pub(crate) fn daemon_identity() -> &'static str {
    DAEMON_IDENTITY.get().map_or("", String::as_str)
}

/// Sets the umask that commands run with (the daemon's own, before it made it private).
pub fn set_command_umask(umask: u32) {
    COMMAND_UMASK.store(umask, std::sync::atomic::Ordering::Relaxed);
}

/// Creates the call dir; the bytes that hand the call to a shim before the go (the call dir,
/// the run's shim log, the spec).
fn prepare_call(spec: &ExecSpec, context: &ActionContext) -> Result<Vec<u8>, ActionFailure> {
    let dir = &context.state_dir;
    // The status a shim leaves while no daemon follows it must survive a power cut: so must
    // the entries of the directories created for it, which a sync of each one's parent makes
    // durable.
    let created: Vec<&Path> = dir
        .ancestors()
        .take_while(|directory| !directory.exists())
        .collect();
    if created.is_empty() {
        // The dir of a call whose start is journaled only now holds nothing of a command: what
        // is there was left by a shim handed this call number before a commit that failed (or
        // a daemon that died first), which got no go and recorded that it did not start.
        for file in [shim::STATUS_FILE, shim::STDOUT_FILE, shim::CHILD_FILE] {
            match std::fs::remove_file(dir.join(file)) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), file, "removed what a shim that never got its go left")
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(not_started(format!(
                        "cannot clear {file} in the call dir {}: {error}",
                        dir.display()
                    )))
                }
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|error| {
        not_started(format!(
            "cannot create the call dir {}: {error}",
            dir.display()
        ))
    })?;
    // The call dir's own entry is synced by the shim when it must (see `shim::run`): while
    // the daemon follows the call, it journals the end itself.
    for parent in created
        .iter()
        .filter(|directory| *directory != dir)
        .filter_map(|directory| directory.parent())
    {
        if let Err(error) = std::fs::File::open(parent).and_then(|directory| directory.sync_all()) {
            tracing::warn!(dir = %parent.display(), %error, "cannot fsync a directory of the call dir");
        }
    }
    // The run's shims share one log of their own complaints, in the run dir.
    let call = shim::Call {
        format: shim::FORMAT,
        call_dir: dir.clone(),
        shim_log: run_dir(dir).join(shim::SHIM_LOG_FILE),
    };
    let shim_spec = shim::Spec {
        format: shim::FORMAT,
        umask: Some(COMMAND_UMASK.load(std::sync::atomic::Ordering::Relaxed)),
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        log: context.log.path().to_owned(),
        grace_ms: u64::try_from(spec.grace.as_millis()).unwrap_or(u64::MAX),
        // A daemon that journals the result takes the end over the pipe.
        report: context.settle.is_some(),
    };
    let mut message = shim::call_message(&call).map_err(not_started)?;
    message.extend(shim::spec_message(&shim_spec).map_err(not_started)?);
    Ok(message)
}

/// The run dir of a call dir, `<run dir>/calls/<call>` (`runtime::calls::call_dir`).
fn run_dir(call_dir: &Path) -> &Path {
    call_dir.ancestors().nth(2).unwrap_or(call_dir)
}

fn not_started(what: String) -> ActionFailure {
    ActionFailure::retryable(format!("{what}; the command was not started"))
}

/// Hands the call to a shim: the one started ahead for it if there is one, else a new one.
async fn hand_over(message: &[u8], context: &ActionContext) -> Result<Shim, ActionFailure> {
    if let Some(mut shim) = spare::take() {
        if shim.send(message).await.is_ok() {
            return Ok(shim);
        }
        // It died while it waited (someone killed it): it had no call, so nothing ran.
        shim.kill().await;
    }
    // For the call's run (its dir holds the call dir and the run's shim log).
    let mut shim = spare::spawn(run_dir(&context.state_dir)).map_err(not_started)?;
    match shim.send(message).await {
        Ok(()) => Ok(shim),
        Err(error) => Err(refused(shim, error, context).await),
    }
}

/// Why a shim could not be handed its call (writing to it failed with `error`): it closed its
/// end, because it refused the call dir (its status says why) or died.
async fn refused(mut shim: Shim, error: std::io::Error, context: &ActionContext) -> ActionFailure {
    if tokio::time::timeout(SHIM_PATIENCE, shim.close())
        .await
        .is_err()
    {
        shim.kill().await;
    }
    let why = match shim::read_status(&context.state_dir) {
        Ok(Some(status)) => describe(&status.outcome),
        _ => format!(
            "cannot hand the command to its supervisor (pid {}): {error}",
            shim.identity.pid
        ),
    };
    not_started(why)
}

/// The binary to run as `<program> shim - <dir>`, for this daemon.
fn shim_program() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|error| format!("cannot find the runbook binary to run its shim: {error}"))?;
    shim_program_for(&exe)
}

/// The shim's binary for a daemon whose executable is `exe` (as `/proc/self/exe` names it):
/// [`SHIM_BINARY`] beside it if that is an executable file, else `exe` itself.
fn shim_program_for(exe: &Path) -> Result<PathBuf, String> {
    // Replaced by an upgrade while the daemon runs: the link reads "<path> (deleted)", and the
    // binaries now at that path are the ones to use.
    let installed = match exe
        .to_str()
        .and_then(|text| text.strip_suffix(" (deleted)"))
    {
        Some(original) if !exe.exists() => PathBuf::from(original),
        _ => exe.to_owned(),
    };
    let small = installed.with_file_name(SHIM_BINARY);
    let executable = std::fs::metadata(&small)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0);
    if executable {
        return Ok(small);
    }
    if installed.exists() {
        return Ok(installed);
    }
    Err(format!(
        "the runbook binary {} is gone; cannot run its shim",
        exe.display()
    ))
}

/// Follows a released shim to its end (or stops it when the call is canceled).
async fn follow(
    mut shim: Shim,
    spec: &ExecSpec,
    context: &ActionContext,
) -> Result<Value, ActionFailure> {
    let identity = shim.identity.clone();
    // One wait for the shim's end, kept across a stop: a report may be on its way when the
    // cancel comes, and must not be read from its middle.
    let (reported, stopped) = {
        let exited = shim.exited();
        tokio::pin!(exited);
        tokio::select! {
            reported = &mut exited => (reported, false),
            () = context.cancel.cancelled() => (stop_command(&identity, exited.as_mut(), spec, context).await, true),
        }
    };
    let status = match reported {
        Some(shim::Report { status, stdout }) => {
            // Once the result is journaled, the shim may exit without writing it.
            if let Some(settle) = &context.settle {
                settle.after_journaled(move || shim.acknowledge());
            }
            Some((status, Some(stdout)))
        }
        None => match shim::read_status(&context.state_dir) {
            Ok(status) => status.map(|status| (status, None)),
            Err(error) if !stopped => {
                return Err(ActionFailure::permanent(format!(
                    "cannot read how the command ended: {error}; its outcome is unknown"
                )))
            }
            Err(_) => None,
        },
    };
    if stopped {
        // The command may have run to its end anyway: it ignored SIGTERM and finished within
        // the grace, or it had finished when the stop came. Then its change is made, and its
        // real result is the call's (the machine journals it and a rollback undoes it).
        return match status {
            Some((status, stdout)) if matches!(status.outcome, Outcome::Exited { .. }) => {
                let how = describe(&status.outcome);
                context.log.line(&format!(
                    "[runbook] the command ran to its end although it was asked to stop ({how}): its result counts"
                ));
                finish(status, stdout, spec, &context.state_dir)
            }
            _ => Err(ActionFailure::permanent("canceled")),
        };
    }
    match status {
        Some((status, stdout)) => finish(status, stdout, spec, &context.state_dir),
        None => Err(ActionFailure::permanent(format!(
            "the command's supervisor (runbook shim, pid {}) ended without recording how the command ended in {}; its outcome is unknown{}",
            identity.pid,
            context.state_dir.display(),
            still_running(&context.state_dir)
        ))),
    }
}

/// Timeout, cancel or rollback: the shim stops the command's group; if it does not, we do.
/// What the shim reported, if it did, once it ended.
async fn stop_command(
    shim: &ProcessIdentity,
    mut exited: std::pin::Pin<&mut impl std::future::Future<Output = Option<shim::Report>>>,
    spec: &ExecSpec,
    context: &ActionContext,
) -> Option<shim::Report> {
    shim.signal(libc::SIGTERM);
    if let Ok(reported) = tokio::time::timeout(spec.grace + SHIM_PATIENCE, &mut exited).await {
        return reported;
    }
    tracing::warn!(run = %context.run_id, step = %context.step, pid = shim.pid, "the command's supervisor did not stop it; killing its process group");
    context.log.line(
        "[runbook] the supervisor did not stop the command in time: SIGKILL to its process group",
    );
    if let Ok(Some(leader)) =
        shim::read_json::<ProcessIdentity>(&context.state_dir.join(shim::CHILD_FILE))
    {
        shim::signal_group(&leader, libc::SIGKILL);
    }
    shim.signal(libc::SIGKILL);
    tokio::time::timeout(Duration::from_secs(2), &mut exited)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests;
