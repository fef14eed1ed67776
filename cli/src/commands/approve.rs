//! `runbook approve <run> [--step S] [--comment C]`: pass an approval gate of a run. The daemon
//! journals the approver's uid (from the socket's peer credentials) with the comment.

use anyhow::Result;
use serde_json::{json, Value};

use super::{comment_body, operator_action, run_label, run_path, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, or any unique prefix of it
    pub run: String,
    /// The gate to approve (needed only when the run waits on more than one)
    #[arg(long)]
    pub step: Option<String>,
    /// Why: journaled with the approval
    #[arg(long)]
    pub comment: Option<String>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let mut body = comment_body(args.comment);
    if let Some(step) = &args.step {
        body.insert("step".to_string(), json!(step));
    }
    let path = format!("{}/approve", run_path(&args.run));
    let requested_step = args.step;
    operator_action(ctx, &path, body, |run| {
        let gate = requested_step
            .or_else(|| last_approved_step(run))
            .unwrap_or_else(|| "the gate".to_string());
        format!("approved {gate} of {}", run_label(run))
    })
    .await
}

/// The step whose approval is the newest (RFC 3339 UTC timestamps compare as text).
fn last_approved_step(run: &Value) -> Option<String> {
    run["steps"]
        .as_array()?
        .iter()
        .filter_map(|step| {
            let at = step["approval"]["at"].as_str()?;
            Some((at, step["id"].as_str()?))
        })
        .max_by(|left, right| left.0.cmp(right.0))
        .map(|(_, id)| id.to_string())
}
