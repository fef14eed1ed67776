//! The daemon log's record of what operators did and where runs went: a team reads it from
//! journald or a log shipper (`--log-format json`) to learn who approved, skipped or canceled
//! what, and when a run began to need attention or ended.

use uuid::Uuid;

use super::Engine;
use crate::machine::{Actor, Event, EventKind, RunState, RunStatus};

/// The most runbooks the failure counter keeps apart (runs of files may name any runbook); the
/// rest are counted under `other`.
const MAX_FAILURE_SERIES: usize = 1000;

impl Engine {
    /// Counts the steps that ended in a commit: their durations, and failed attempts.
    pub(super) fn count_steps(&self, events: &[Event], after: &RunState) {
        for event in events {
            match &event.kind {
                EventKind::StepSucceeded { step, .. } | EventKind::StepFailed { step, .. } => {
                    if let Some(state) = after.step(step) {
                        let ended = state.finished_at.unwrap_or(event.at);
                        let seconds = (ended - state.started_at).num_milliseconds() as f64 / 1000.0;
                        self.inner.step_duration.record(seconds);
                    }
                }
                _ => continue,
            }
            if let EventKind::StepFailed { .. } = event.kind {
                let mut failures = self
                    .inner
                    .step_failures
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let series = if failures.len() < MAX_FAILURE_SERIES
                    || failures.contains_key(&after.runbook)
                {
                    after.runbook.clone()
                } else {
                    "other".to_owned()
                };
                *failures.entry(series).or_default() += 1;
            }
        }
    }
}

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
