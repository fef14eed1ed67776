//! `runbook rollback <run> [--comment C]`: roll a run back by running the `undo` of the steps
//! that were done, newest first; the run ends `rolled_back`.

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
    let path = format!("{}/rollback", run_path(&args.run));
    operator_action(ctx, &path, comment_body(args.comment), |run| {
        format!("started the rollback of {}", run_label(run))
    })
    .await
}
