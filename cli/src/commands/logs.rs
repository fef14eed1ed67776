//! `runbook logs <run> [<step>] [-f]`: the stdout and stderr of steps (their last attempt), raw
//! bytes to stdout. Without a step, every started step in order, each under a header line
//! `== <step> (attempt N) ==`. With `-f`, follow: poll from the last offset every 200 ms until
//! the step is done, and ride out a daemon restart (retry for up to 60 s, then go on from the
//! same offset: the log is stored, so nothing is lost or repeated).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::show::is_finished;
use super::{run_path, Context};
use crate::client::segment;
use crate::render;

const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long a restarting daemon may stay away before following gives up.
const DAEMON_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, or any unique prefix of it
    pub run: String,
    /// Only this step (e.g. `build` or `brokers[1].restart`)
    pub step: Option<String>,
    /// Follow: keep printing as the step writes, until it is done
    #[arg(short, long)]
    pub follow: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let run = ctx.client.get(&run_path(&args.run)).await?;
    // The full id from here on: a prefix could become ambiguous while we follow.
    let id = render::text(&run["id"]);
    if let Some(step) = &args.step {
        return print_step_log(ctx, &id, step, args.follow, false).await;
    }
    print_all_logs(ctx, &id, run, args.follow).await
}

/// Every started step in order; while following, also the steps that start meanwhile.
async fn print_all_logs(ctx: &Context, id: &str, mut run: Value, follow: bool) -> Result<()> {
    // A step is shown once per attempt: a retried step is shown again under its new attempt.
    let mut shown: HashSet<(String, u64)> = HashSet::new();
    loop {
        let finished = is_finished(run["state"].as_str().unwrap_or_default());
        let mut printed_any = false;
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        for step in &steps {
            let attempts = step["attempts"].as_u64().unwrap_or(0);
            let started = attempts > 0 || !step["started_at"].is_null();
            let step_id = render::text(&step["id"]);
            if !started || !shown.insert((step_id.clone(), attempts)) {
                continue;
            }
            printed_any = true;
            print_step_log(ctx, id, &step_id, follow, true).await?;
        }
        if !follow || (finished && !printed_any) {
            return Ok(());
        }
        tokio::time::sleep(POLL_EVERY).await;
        run = ctx
            .client
            .get_patient(&run_path(id), DAEMON_PATIENCE)
            .await?;
    }
}

/// One step's log from the start; with `follow`, until the daemon says the step is done.
async fn print_step_log(
    ctx: &Context,
    id: &str,
    step: &str,
    follow: bool,
    with_header: bool,
) -> Result<()> {
    let base = format!("{}/steps/{}/log", run_path(id), segment(step));
    let mut offset: u64 = 0;
    // The attempt whose log is being printed; a new attempt restarts from offset 0.
    let mut attempt: Option<Value> = None;
    loop {
        let path = format!("{base}?offset={offset}");
        let chunk = if follow {
            ctx.client.get_patient(&path, DAEMON_PATIENCE).await?
        } else {
            ctx.client.get(&path).await?
        };
        match &attempt {
            Some(shown) if *shown != chunk["attempt"] => {
                attempt = None;
                offset = 0;
                continue;
            }
            Some(_) => {}
            None => {
                if with_header && !ctx.json {
                    let number = render::text(&chunk["attempt"]);
                    render::print(&format!("== {step} (attempt {number}) ==\n"))?;
                }
                attempt = Some(chunk["attempt"].clone());
            }
        }

        let data = chunk["data"].as_str().unwrap_or_default();
        if ctx.json {
            render::print_json(&chunk)?;
        } else if !data.is_empty() {
            render::print_bytes(data.as_bytes())?;
        }
        let next_offset = chunk["next_offset"]
            .as_u64()
            .unwrap_or(offset + data.len() as u64);
        let advanced = next_offset > offset;
        offset = next_offset;
        // Drain what is there without waiting; stop once the step is done and drained.
        if advanced {
            continue;
        }
        let done = chunk["done"].as_bool().unwrap_or(true);
        if !follow || done {
            return Ok(());
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
