//! `runbook logs <run> [<step>] [-f]`: the stdout and stderr of steps, raw bytes to stdout.
//! Without a step, every started step in order, each under a header line
//! `== <step> (attempt N) ==`. With `-f`, follow: poll from the last offset every 200 ms until
//! the step is done, and ride out a daemon restart (retry for up to 60 s, then go on from the
//! same offset: the log is stored, so nothing is lost or repeated).
//!
//! A step's log is one file across its attempts (the daemon marks where a new attempt begins),
//! so a retry while following prints a new header and goes on from the same offset.

use std::collections::{HashMap, HashSet};
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
        let mut cursor = Cursor::default();
        return print_step_log(ctx, &id, step, args.follow, false, &mut cursor).await;
    }
    print_all_logs(ctx, &id, run, args.follow).await
}

/// Every started step in order; while following, also the steps that start meanwhile.
async fn print_all_logs(ctx: &Context, id: &str, mut run: Value, follow: bool) -> Result<()> {
    // A step is visited once per attempt: a retried step is visited again, from where its log
    // was left.
    let mut shown: HashSet<(String, u64)> = HashSet::new();
    let mut cursors: HashMap<String, Cursor> = HashMap::new();
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
            let cursor = cursors.entry(step_id.clone()).or_default();
            print_step_log(ctx, id, &step_id, follow, true, cursor).await?;
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

/// Where printing a step's log got to.
#[derive(Debug, Default)]
struct Cursor {
    offset: u64,
    /// The attempt under whose header the output is; `None` before the first chunk.
    attempt: Option<Value>,
}

/// One step's log from `cursor`; with `follow`, until the daemon says the step is done.
async fn print_step_log(
    ctx: &Context,
    id: &str,
    step: &str,
    follow: bool,
    with_header: bool,
    cursor: &mut Cursor,
) -> Result<()> {
    let base = format!("{}/steps/{}/log", run_path(id), segment(step));
    // So that the next header starts on its own line even if the log ends without a newline.
    let mut at_line_start = true;
    loop {
        let offset = cursor.offset;
        let path = format!("{base}?offset={offset}");
        let chunk = if follow {
            ctx.client.get_patient(&path, DAEMON_PATIENCE).await?
        } else {
            ctx.client.get(&path).await?
        };
        if cursor.attempt.as_ref() != Some(&chunk["attempt"]) {
            if with_header && !ctx.json {
                let number = render::text(&chunk["attempt"]);
                render::print(&format!("== {step} (attempt {number}) ==\n"))?;
            }
            cursor.attempt = Some(chunk["attempt"].clone());
        }

        let data = chunk["data"].as_str().unwrap_or_default();
        if ctx.json {
            render::print_json(&chunk)?;
        } else if !data.is_empty() {
            render::print_bytes(data.as_bytes())?;
            at_line_start = data.ends_with('\n');
        }
        let next_offset = chunk["next_offset"]
            .as_u64()
            .unwrap_or(offset + data.len() as u64);
        let advanced = next_offset > offset;
        cursor.offset = next_offset;
        // Drain what is there without waiting; stop once the step is done and drained.
        if advanced {
            continue;
        }
        let done = chunk["done"].as_bool().unwrap_or(true);
        if !follow || done {
            if with_header && !at_line_start {
                render::print("\n")?;
            }
            return Ok(());
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
