//! `runbook demo [--keep]`: the first thing a new user runs. Uses the daemon of the data dir,
//! or starts one (its output appended to `<data-dir>/daemon.log`), starts the built-in runbook
//! `demo`, watches it like `runbook watch` and approves its gate the way an operator would,
//! prints a summary like `runbook show`, and stops the daemon it started unless `--keep`.
//! Exit code 0 iff the run succeeded.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use tokio::process::{Child, Command};

use super::{show, watch, Context};
use crate::render;

/// How long a freshly started daemon may take to answer (it recovers its store first).
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon may take to drain and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Leave the daemon this command started running afterwards
    #[arg(long)]
    pub keep: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let daemon = match ctx.client.get("/v1/runbooks").await {
        Ok(_) => {
            eprintln!(
                "demo: using the daemon that answers at {}",
                ctx.client.socket.display()
            );
            None
        }
        Err(err) if err.is_unreachable() => Some(start_daemon(ctx).await?),
        Err(err) => return Err(err.into()),
    };

    let outcome = run_demo(ctx).await;

    if let Some(daemon) = daemon {
        if args.keep {
            let pid = daemon.id().map(|pid| pid.to_string()).unwrap_or_default();
            eprintln!("demo: the daemon keeps running (pid {pid}); stop it with `kill {pid}`");
        } else if let Err(err) = stop_daemon(ctx, daemon).await {
            // The demo's own outcome matters more; a failed stop still gets reported.
            if outcome.is_ok() {
                return Err(err);
            }
            eprintln!("demo: {err:#}");
        }
    }
    outcome
}

/// Starts the demo run, watches it (approving its gate), prints the summary.
async fn run_demo(ctx: &Context) -> Result<()> {
    let body = json!({"runbook": "demo", "params": {}, "comment": "started by runbook demo"});
    let run = ctx.client.post("/v1/runs", body).await?;
    let id = render::text(&run["id"]);
    eprintln!("demo: started run {id} of the built-in runbook `demo`");

    let final_run = watch::follow(ctx, &id, true).await?;
    if !ctx.json {
        render::print(&format!(
            "\n{}",
            show::render_run(&show::run_view(&final_run)?, render::now())
        ))?;
        eprintln!("\n{}", more_hint(render::short_id(&id)));
    }
    watch::outcome(ctx, &final_run)
}

/// Spawns `runbook daemon --data-dir <dir>` and waits until it answers.
async fn start_daemon(ctx: &Context) -> Result<Child> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctx.data_dir)
        .with_context(|| format!("cannot create the data dir {}", ctx.data_dir.display()))?;
    let log_path = log_file(ctx);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_for_stderr = log
        .try_clone()
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the runbook binary to start")?;

    let mut child = Command::new(&exe)
        .arg("daemon")
        .arg("--data-dir")
        .arg(&ctx.data_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .spawn()
        .with_context(|| format!("cannot start {} daemon", exe.display()))?;
    let pid = child.id().unwrap_or_default();
    eprintln!(
        "demo: started a daemon (pid {pid}, log {})",
        log_path.display()
    );

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("cannot check on the daemon")? {
            bail!(
                "the daemon exited ({status}) before it answered; see {}",
                log_path.display()
            );
        }
        match ctx.client.get("/v1/runbooks").await {
            Ok(_) => return Ok(child),
            Err(err) if err.is_unreachable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => {
                let waited = if err.is_unreachable() {
                    format!(
                        "the daemon did not answer within {}s; see {}",
                        START_TIMEOUT.as_secs(),
                        log_path.display()
                    )
                } else {
                    format!("the daemon answered with an error: {err}")
                };
                if let Err(stop_err) = stop_daemon(ctx, child).await {
                    eprintln!("demo: {stop_err:#}");
                }
                bail!(waited);
            }
        }
    }
}

/// SIGTERM to the daemon this command started, then wait for it to drain and exit.
async fn stop_daemon(ctx: &Context, mut child: Child) -> Result<()> {
    // `None`: it already exited and was reaped.
    let Some(pid) = child.id() else {
        return Ok(());
    };
    let pid = libc::pid_t::try_from(pid).context("daemon pid out of range")?;
    // SAFETY: kill(2) has no memory effects; `pid` is our own child, not yet reaped (we hold
    // `child`), so it cannot have been reused by another process.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("cannot stop the daemon (pid {pid}): {err}");
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            eprintln!("demo: stopped the daemon (pid {pid})");
            Ok(())
        }
        Ok(Ok(status)) => bail!(
            "the daemon (pid {pid}) exited with {status}; see {}",
            log_file(ctx).display()
        ),
        Ok(Err(err)) => Err(err).context(format!("cannot wait for the daemon (pid {pid})")),
        Err(_) => bail!(
            "the daemon (pid {pid}) did not exit within {}s of SIGTERM; see {}",
            STOP_TIMEOUT.as_secs(),
            log_file(ctx).display()
        ),
    }
}

/// Where the daemon this command starts writes its output.
fn log_file(ctx: &Context) -> PathBuf {
    ctx.data_dir.join("daemon.log")
}

/// Where to look next after the demo.
pub(crate) fn more_hint(short: &str) -> String {
    format!("demo: more with `runbook show {short}`, `runbook logs {short}`, `runbook ps --all`")
}
