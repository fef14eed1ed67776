//! `runbook start <name|file.toml> [-p key=value]... [--comment C] [--watch]`: start a run.
//! Prints the new run's id alone on stdout (so `id=$(runbook start ...)` works), or the Run
//! with `--json`; with `--watch` it then follows the run like `runbook watch`.

use anyhow::Result;
use serde_json::{json, Value};

use super::{watch, Context, Target};
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Why: journaled with the start of the run
    #[arg(long)]
    pub comment: Option<String>,
    /// Follow the run until it finishes (exit 7 unless it succeeds)
    #[arg(long)]
    pub watch: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let mut body = args.target.request()?;
    if let Some(comment) = args.comment {
        body.insert("comment".to_string(), json!(comment));
    }
    let run = ctx.client.post("/v1/runs", Value::Object(body)).await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();

    if args.watch {
        // With --json the output is the final Run, printed by the watcher.
        if !ctx.json {
            render::print(&format!("{id}\n"))?;
        }
        return watch::watch_run(ctx, &id).await;
    }
    if ctx.json {
        render::print_json(&run)
    } else {
        eprintln!("started run {id} of {}", render::text(&run["runbook"]));
        render::print(&format!("{id}\n"))
    }
}
