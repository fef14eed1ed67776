//! `runbook resume <run> [--comment C]`: resume a paused run; its waits and timeouts are re-armed
//! with the time they had left.

use anyhow::Result;

use super::{comment_body, operator_action, run_label, run_path, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, or any unique prefix of it
    pub run: String,
    /// Why: journaled with the action
    #[arg(long)]
    pub comment: Option<String>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let path = format!("{}/resume", run_path(&args.run));
    operator_action(ctx, &path, comment_body(args.comment), |run| {
        format!("resumed {}", run_label(run))
    })
    .await
}
