//! `runbook cancel <run> [--comment C] [--yes | --rollback]`: cancel a run: running steps are
//! stopped and the run ends `canceled`.
//!
//! A plain cancel leaves what the completed steps changed as it is (a broker left read-only).
//! When completed steps have an `undo` that has not run, the command says which, and asks: on a
//! terminal it prompts; elsewhere it refuses (exit 5) unless `--yes` says to cancel anyway.
//! `--rollback` cancels and runs those undos, newest first, as `rollback` does (the run ends
//! `rolled_back`). A canceled run that still owes undos can be rolled back later too.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use serde_json::{json, Value};

use super::show::is_finished;
use super::{comment_body, operator_action, run_label, run_path, Context};
use crate::exit;
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, or any unique prefix of it
    pub run: String,
    /// Why: journaled with the action
    #[arg(long)]
    pub comment: Option<String>,
    /// Also run the undo of every completed step, newest first, as `rollback` does
    #[arg(long)]
    pub rollback: bool,
    /// Do not ask: cancel even though the undos of completed steps will not run
    #[arg(long, short = 'y', conflicts_with = "rollback")]
    pub yes: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    if !args.rollback && !args.yes {
        let run = ctx.client.get(&run_path(&args.run)).await?;
        confirm_undos_left(&run)?;
    }
    let path = format!("{}/cancel", run_path(&args.run));
    let mut body = comment_body(args.comment);
    if args.rollback {
        body.insert("rollback".to_owned(), json!(true));
    }
    let rollback = args.rollback;
    operator_action(ctx, &path, body, |run| confirmation(run, rollback)).await
}

/// What a cancel says once done: with `--rollback`, that the undos run; else which undos did
/// not run, and how to run them.
pub fn confirmation(run: &Value, rollback: bool) -> String {
    if rollback {
        return format!(
            "canceled {} and started running the undos, newest first",
            run_label(run)
        );
    }
    let mut text = format!("asked to cancel {}", run_label(run));
    let left = undos_left(run);
    if !left.is_empty() {
        let id = render::text(&run["id"]);
        text.push_str(&format!(
            "\nthe undo of {} did not run; to run it: runbook rollback {id}",
            left.join(", ")
        ));
    }
    text
}

/// The completed steps whose undo has not run, newest first (`undos_left` of a Run).
pub fn undos_left(run: &Value) -> Vec<String> {
    run["undos_left"]
        .as_array()
        .map(|steps| steps.iter().map(render::text).collect())
        .unwrap_or_default()
}

/// What a plain cancel of `run` would leave undone, and the commands that decide about it.
pub fn undos_warning(run: &Value, left: &[String]) -> String {
    let id = render::text(&run["id"]);
    format!(
        "run {id} has completed steps whose undo a cancel does not run: {} (newest first); \
         what they changed stays as it is\n\
         cancel and run them:    runbook cancel {id} --rollback\n\
         cancel and leave them:  runbook cancel {id} --yes",
        left.join(", ")
    )
}

/// Asks before a cancel that leaves undos not run: a prompt on a terminal, else a refusal.
fn confirm_undos_left(run: &Value) -> Result<()> {
    let left = undos_left(run);
    if left.is_empty() || is_finished(run["state"].as_str().unwrap_or_default()) {
        return Ok(());
    }
    let warning = undos_warning(run, &left);
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(anyhow::Error::new(exit::Error {
            code: exit::CONFLICT,
            message: format!("not canceled: {warning}"),
        }));
    }
    eprint!("{warning}\ncancel and leave them as they are? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        return Ok(());
    }
    Err(anyhow::Error::new(exit::Error {
        code: exit::CONFLICT,
        message: format!("not canceled: run {} goes on", render::text(&run["id"])),
    }))
}
