//! The JSON shapes the API returns (see `docs/api.md`): types of their own, built from the
//! run's state, so that the journal's format and the API's can each change without the other
//! (the CLI reads these same types back).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::definition::Step;
use crate::machine::{Actor, ApprovalRecord, Attention, AuditEntry, RunState, StepState};
use crate::runtime::Resident;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RunView {
    pub id: String,
    pub runbook: String,
    pub version: u32,
    pub state: String,
    pub reason: Option<String>,
    pub attention: Option<AttentionView>,
    pub paused: bool,
    pub params: Map<String, Value>,
    pub locks: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub started_by: Option<ActorView>,
    pub current_step: Option<String>,
    /// What the run waits for: `approval`, `timer`, `poll`, `window` or `operator`.
    pub waiting_for: Option<String>,
    pub waiting_since: Option<DateTime<Utc>>,
    pub next_wakeup: Option<DateTime<Utc>>,
    /// Completed steps whose undo has not run, newest first: what `rollback` would run, and
    /// what a plain `cancel` leaves undone.
    pub undos_left: Vec<String>,
    pub error: Option<String>,
    pub steps: Vec<StepView>,
    pub audit: Vec<AuditView>,
    /// Its notifications and how their delivery goes (`GET /v1/runs/{id}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationView>,
}

/// One notification of a run to one sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NotificationView {
    pub id: String,
    pub sink: String,
    pub event: String,
    pub step: Option<String>,
    /// `pending`, `failing`, `delivered` or `abandoned`.
    pub state: String,
    pub attempts: u32,
    pub created_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl From<&crate::notify::Entry> for NotificationView {
    fn from(entry: &crate::notify::Entry) -> NotificationView {
        NotificationView {
            id: entry.id.clone(),
            sink: entry.sink.clone(),
            event: entry.event.name().to_owned(),
            step: entry.step.clone(),
            state: entry.state().to_owned(),
            attempts: entry.attempts,
            created_at: Some(entry.created_at),
            delivered_at: entry.delivered_at,
            next_attempt_at: entry.next_attempt_at,
            last_error: entry.last_error.clone(),
        }
    }
}

/// Who did something: the peer's uid, its name when it has one (`schedule:nightly`), and the
/// user of the token it came with over TCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ActorView {
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Why a run waits for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AttentionView {
    /// `interrupted`, `step_failed` or `undo_failed`.
    pub reason: String,
    pub step: String,
    pub message: String,
    /// Since when (unknown for runs of older releases).
    pub at: Option<DateTime<Utc>>,
}

/// An approval of a gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ApprovalView {
    pub by: ActorView,
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
}

/// One operator action on the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AuditView {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: ActorView,
    pub action: String,
    pub step: Option<String>,
    pub comment: Option<String>,
}

impl From<&Actor> for ActorView {
    fn from(actor: &Actor) -> ActorView {
        ActorView {
            uid: actor.uid,
            name: actor.name.clone(),
            user: actor.user.clone(),
        }
    }
}

impl From<&Attention> for AttentionView {
    fn from(attention: &Attention) -> AttentionView {
        AttentionView {
            reason: attention.reason.name().to_owned(),
            step: attention.step.clone(),
            message: attention.message.clone(),
            at: attention.at,
        }
    }
}

impl From<&ApprovalRecord> for ApprovalView {
    fn from(approval: &ApprovalRecord) -> ApprovalView {
        ApprovalView {
            by: (&approval.by).into(),
            comment: approval.comment.clone(),
            at: approval.at,
        }
    }
}

impl From<&AuditEntry> for AuditView {
    fn from(entry: &AuditEntry) -> AuditView {
        AuditView {
            seq: entry.seq,
            at: entry.at,
            actor: (&entry.actor).into(),
            action: entry.action.clone(),
            step: entry.step.clone(),
            comment: entry.comment.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StepView {
    pub id: String,
    pub action: String,
    pub state: String,
    pub attempts: u32,
    pub polls: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub input: Value,
    pub output: Value,
    pub error: Option<String>,
    pub fire_at: Option<DateTime<Utc>>,
    pub late_by_ms: Option<i64>,
    /// `timer`, `approval`, `poll`, `retry` or `iterations`, while the step is active.
    pub waiting_for: Option<String>,
    pub waiting_since: Option<DateTime<Utc>>,
    pub prompt: Option<String>,
    pub approval: Option<ApprovalView>,
    pub skipped_by: Option<ActorView>,
    pub undo: Option<UndoView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UndoView {
    pub state: String,
    pub attempts: u32,
    pub output: Value,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RunSummary {
    pub id: String,
    pub runbook: String,
    pub state: String,
    pub reason: Option<String>,
    pub current_step: Option<String>,
    pub waiting_for: Option<String>,
    pub waiting_since: Option<DateTime<Utc>>,
    pub next_wakeup: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RunView {
    pub fn of(id: uuid::Uuid, resident: &Resident) -> RunView {
        match resident {
            Resident::Live(state) => RunView::from_state(state),
            Resident::Corrupt { reason } => RunView {
                id: id.to_string(),
                runbook: String::new(),
                version: 0,
                state: "needs_attention".to_owned(),
                reason: Some("corrupt".to_owned()),
                attention: None,
                paused: false,
                params: Map::new(),
                locks: Vec::new(),
                created_at: None,
                finished_at: None,
                started_by: None,
                current_step: None,
                waiting_for: None,
                waiting_since: None,
                next_wakeup: None,
                undos_left: Vec::new(),
                error: Some(reason.clone()),
                steps: Vec::new(),
                audit: Vec::new(),
                notifications: Vec::new(),
            },
        }
    }

    pub fn from_state(state: &RunState) -> RunView {
        let mut steps = Vec::new();
        list_steps(state, &state.definition.steps, "", &mut steps);
        // Step states the definition walk did not show (O(steps), not O(steps²): a long run's
        // view is asked for while it runs).
        let listed: std::collections::HashSet<String> = steps
            .iter()
            .map(|view: &StepView| view.id.clone())
            .collect();
        for step in &state.steps {
            if !listed.contains(&step.key) {
                steps.push(step_view(step));
            }
        }
        let wait = crate::store::listing::wait(state);
        RunView {
            id: state.id.to_string(),
            runbook: state.runbook.clone(),
            version: state.version,
            state: state.status.name().to_owned(),
            reason: reason(state),
            attention: state.attention.as_ref().map(AttentionView::from),
            paused: state.paused.is_some(),
            params: state.params.clone(),
            locks: state.locks.clone(),
            created_at: Some(state.created_at),
            finished_at: state.finished_at,
            started_by: Some((&state.started_by).into()),
            current_step: current_step(state),
            waiting_for: wait.as_ref().map(|wait| wait.kind.clone()),
            waiting_since: wait.and_then(|wait| wait.since),
            next_wakeup: state.timers.iter().map(|timer| timer.fire_at).min(),
            undos_left: state.undos_left(),
            error: state.error.clone(),
            steps,
            audit: state.audit.iter().map(AuditView::from).collect(),
            notifications: Vec::new(),
        }
    }
}

impl RunSummary {
    /// A run's line in a listing, from its stored listing line.
    pub fn listed(id: uuid::Uuid, line: &Result<crate::store::Listing, String>) -> RunSummary {
        match line {
            Ok(line) => RunSummary {
                id: id.to_string(),
                runbook: line.runbook.clone(),
                state: line.state.clone(),
                reason: line.reason.clone(),
                current_step: line.current_step.clone(),
                waiting_for: line.wait.as_ref().map(|wait| wait.kind.clone()),
                waiting_since: line.wait.as_ref().and_then(|wait| wait.since),
                next_wakeup: line.next_wakeup,
                created_at: Some(line.created_at),
                finished_at: line.finished_at,
            },
            Err(_) => RunSummary {
                id: id.to_string(),
                runbook: String::new(),
                state: "needs_attention".to_owned(),
                reason: Some("corrupt".to_owned()),
                current_step: None,
                waiting_for: None,
                waiting_since: None,
                next_wakeup: None,
                created_at: None,
                finished_at: None,
            },
        }
    }
}

use crate::store::listing::{current_step, reason};

fn list_steps(state: &RunState, definitions: &[Step], prefix: &str, out: &mut Vec<StepView>) {
    for definition in definitions {
        let key = crate::definition::step_key::child(prefix, &definition.id);
        match state.step(&key) {
            Some(step) => {
                out.push(step_view(step));
                if let (Some(for_each), Some(iterations)) =
                    (definition.for_each(), &step.iterations)
                {
                    for (index, iteration) in iterations.iter().enumerate() {
                        if iteration.status != crate::machine::IterationStatus::Pending {
                            list_steps(
                                state,
                                &for_each.steps,
                                &crate::definition::step_key::iteration(&key, index),
                                out,
                            );
                        }
                    }
                }
            }
            None => out.push(StepView {
                id: key,
                action: definition.action().to_owned(),
                state: "pending".to_owned(),
                attempts: 0,
                polls: 0,
                started_at: None,
                finished_at: None,
                input: Value::Null,
                output: Value::Null,
                error: None,
                fire_at: None,
                late_by_ms: None,
                waiting_for: None,
                waiting_since: None,
                prompt: None,
                approval: None,
                skipped_by: None,
                undo: None,
            }),
        }
    }
}

fn step_view(step: &StepState) -> StepView {
    StepView {
        id: step.key.clone(),
        action: step.action.clone(),
        state: step.status.name().to_owned(),
        attempts: step.attempts,
        polls: step.polls,
        started_at: Some(step.started_at),
        finished_at: step.finished_at,
        input: (*step.input).clone(),
        output: step.output.clone().unwrap_or(Value::Null),
        error: step.error.clone(),
        fire_at: step.fire_at,
        late_by_ms: step.late_by_ms,
        waiting_for: step
            .waiting_for
            .filter(|_| step.status.is_active())
            .map(|waiting| waiting.name().to_owned()),
        waiting_since: step.waiting_since.filter(|_| step.status.is_active()),
        prompt: step.prompt.clone(),
        approval: step.approval.as_ref().map(ApprovalView::from),
        skipped_by: step.skipped_by.as_ref().map(ActorView::from),
        undo: step.undo.as_ref().map(|undo| UndoView {
            state: undo.status.name().to_owned(),
            attempts: undo.attempts,
            output: undo.output.clone().unwrap_or(Value::Null),
            error: undo.error.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::machine::{AttentionReason, WaitingFor};

    #[test]
    fn the_views_name_states_as_the_journal_does() {
        // The API's words are its own, but they were the journal's serde names until the views
        // got their own types: a client that read them then reads the same now.
        for waiting in [
            WaitingFor::Timer,
            WaitingFor::Approval,
            WaitingFor::Poll,
            WaitingFor::Retry,
            WaitingFor::Iterations,
        ] {
            assert_eq!(serde_json::to_value(waiting).unwrap(), waiting.name());
        }
        for reason in [
            AttentionReason::Interrupted,
            AttentionReason::StepFailed,
            AttentionReason::UndoFailed,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.name());
        }
    }
}
