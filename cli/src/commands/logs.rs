//! `runbook logs <run> [<step>] [-f]`: the stdout and stderr of steps, raw bytes to stdout.
//! Without a step, every started step in order, each under a header line
//! `== <step> (attempt N) ==`; the output of a step's undo (rollback) follows under
//! `== <step> undo (attempt N) ==` (with a step, its undo's output follows under that header
//! too). With `-f`, follow: poll from the last offset every 200 ms until
//! the step is done, and ride out a daemon restart (retry for up to 60 s, then go on from the
//! same offset: the log is stored, so nothing is lost or repeated).
//!
//! `--json` prints each chunk the API returns as one JSON object a line
//! (`{"step", "undo", "attempt", "offset", "next_offset", "data", "done"}`).
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
        print_step_log(ctx, &id, step, Log::Step, args.follow, false, &mut cursor).await?;
        // Its undo's output, marked as such, if a rollback ran it.
        let undo_started = run["steps"].as_array().is_some_and(|steps| {
            steps
                .iter()
                .any(|each| each["id"] == step.as_str() && each["undo"].is_object())
        });
        if undo_started {
            let mut cursor = Cursor::default();
            print_step_log(ctx, &id, step, Log::Undo, args.follow, true, &mut cursor).await?;
        }
        return Ok(());
    }
    print_all_logs(ctx, &id, run, args.follow).await
}

/// Which log of a step: its own, or its undo's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Log {
    Step,
    Undo,
}

/// Every started step in order, each followed by its undo's output if it has some; while
/// following, also the steps (and undos) that start meanwhile.
async fn print_all_logs(ctx: &Context, id: &str, mut run: Value, follow: bool) -> Result<()> {
    // A step (or undo) is visited once per attempt: a retried one is visited again, from where
    // its log was left.
    let mut shown: HashSet<(String, Log, u64)> = HashSet::new();
    let mut cursors: HashMap<(String, Log), Cursor> = HashMap::new();
    loop {
        let finished = is_finished(run["state"].as_str().unwrap_or_default());
        let mut printed_any = false;
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        for step in &steps {
            let step_id = render::text(&step["id"]);
            let attempts = step["attempts"].as_u64().unwrap_or(0);
            let started = attempts > 0 || !step["started_at"].is_null();
            let undo_attempts = step["undo"]["attempts"].as_u64();
            let logs = [
                (Log::Step, started.then_some(attempts)),
                (Log::Undo, undo_attempts),
            ];
            for (log, attempts) in logs {
                let Some(attempts) = attempts else { continue };
                if !shown.insert((step_id.clone(), log, attempts)) {
                    continue;
                }
                printed_any = true;
                let cursor = cursors.entry((step_id.clone(), log)).or_default();
                print_step_log(ctx, id, &step_id, log, follow, true, cursor).await?;
            }
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

/// One step's (or undo's) log from `cursor`; with `follow`, until the daemon says it is done.
async fn print_step_log(
    ctx: &Context,
    id: &str,
    step: &str,
    log: Log,
    follow: bool,
    with_header: bool,
    cursor: &mut Cursor,
) -> Result<()> {
    let base = format!("{}/steps/{}/log", run_path(id), segment(step));
    let (query, label) = match log {
        Log::Step => ("", String::new()),
        Log::Undo => ("&undo=true", " undo".to_owned()),
    };
    // So that the next header starts on its own line even if the log ends without a newline.
    let mut at_line_start = true;
    loop {
        let offset = cursor.offset;
        let path = format!("{base}?offset={offset}{query}");
        let chunk = if follow {
            ctx.client.get_patient(&path, DAEMON_PATIENCE).await?
        } else {
            ctx.client.get(&path).await?
        };
        let new_attempt = cursor.attempt.as_ref() != Some(&chunk["attempt"]);
        if new_attempt {
            if with_header && !ctx.json {
                let number = render::text(&chunk["attempt"]);
                render::print(&format!("== {step}{label} (attempt {number}) ==\n"))?;
            }
            cursor.attempt = Some(chunk["attempt"].clone());
        }

        let data = chunk["data"].as_str().unwrap_or_default();
        // One line per chunk with data (and one for a log that has none): not one per poll.
        if ctx.json {
            if !data.is_empty() || (new_attempt && offset == 0) {
                render::print_json_line(&chunk)?;
            }
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
