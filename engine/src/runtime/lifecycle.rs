//! The daemon log's record of what operators did and where runs went: a team reads it from
//! journald or a log shipper (`--log-format json`) to learn who approved, skipped or canceled
//! what, and when a run began to need attention or ended.

use uuid::Uuid;

use crate::machine::{Actor, RunState, RunStatus};

/// The daemon log's record of a committed change: every operator action (who, which step, the
/// run's state after it), and every change of a run's state but the flips between running and
/// waiting a run makes at each step.
pub(super) fn transition(
    run_id: Uuid,
    before: &RunState,
    after: &RunState,
    input: &str,
    operator: Option<(Actor, Option<String>)>,
) {
    if let Some((by, step)) = operator {
        tracing::info!(
            run = %run_id,
            runbook = %after.runbook,
            action = %input.to_lowercase(),
            step = step.as_deref().unwrap_or("-"),
            uid = by.uid,
            user = by.user.as_deref().or(by.name.as_deref()).unwrap_or("-"),
            state = after.status.name(),
            "operator action"
        );
    }
    let busy = |status: RunStatus| matches!(status, RunStatus::Running | RunStatus::Waiting);
    if before.status != after.status && !(busy(before.status) && busy(after.status)) {
        let step = after
            .attention
            .as_ref()
            .map(|attention| attention.step.as_str())
            .unwrap_or("-");
        tracing::info!(
            run = %run_id,
            runbook = %after.runbook,
            from = before.status.name(),
            to = after.status.name(),
            step,
            "run state"
        );
    }
}
