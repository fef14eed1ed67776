//! `runbook retry <run> <step> [--comment C]`: run a failed or interrupted step again (a new
//! attempt). This is the operator's decision on a step the daemon will not decide on alone (e.g.
//! "interrupted: outcome unknown").

use anyhow::Result;

use super::{comment_body, operator_action, run_label, run_path, Context};
use crate::client::segment;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, or any unique prefix of it
    pub run: String,
    /// The step id (as shown by `runbook show`, e.g. `brokers[1].restart`)
    pub step: String,
    /// Why: journaled with the decision (required for an approval gate, whose skip or retry is
    /// an approval of it)
    #[arg(long)]
    pub comment: Option<String>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let path = format!(
        "{}/steps/{}/retry",
        run_path(&args.run),
        segment(&args.step)
    );
    let step = args.step;
    operator_action(ctx, &path, comment_body(args.comment), |run| {
        format!("retrying {step} of {}", run_label(run))
    })
    .await
}
