//! The JSON shapes the API returns (see `docs/api.md`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::definition::Step;
use crate::machine::{
    Actor, ApprovalRecord, Attention, AuditEntry, RunState, StepState, WaitingFor,
};
use crate::runtime::Slot;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunView {
    pub id: String,
    pub runbook: String,
    pub version: u32,
    pub state: String,
    pub reason: Option<String>,
    pub attention: Option<Attention>,
    pub paused: bool,
    pub params: Map<String, Value>,
    pub locks: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub started_by: Option<Actor>,
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
    pub audit: Vec<AuditEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub waiting_for: Option<WaitingFor>,
    pub waiting_since: Option<DateTime<Utc>>,
    pub prompt: Option<String>,
    pub approval: Option<ApprovalRecord>,
    pub skipped_by: Option<Actor>,
    pub undo: Option<UndoView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UndoView {
    pub state: String,
    pub attempts: u32,
    pub output: Value,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub fn of(id: uuid::Uuid, slot: &Slot) -> RunView {
        match slot {
            Slot::Live(state) => RunView::from_state(state),
            Slot::Corrupt { reason } => RunView {
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
            attention: state.attention.clone(),
            paused: state.paused.is_some(),
            params: state.params.clone(),
            locks: state.locks.clone(),
            created_at: Some(state.created_at),
            finished_at: state.finished_at,
            started_by: Some(state.started_by.clone()),
            current_step: current_step(state),
            waiting_for: wait.as_ref().map(|wait| wait.kind.clone()),
            waiting_since: wait.and_then(|wait| wait.since),
            next_wakeup: state.timers.iter().map(|timer| timer.fire_at).min(),
            undos_left: state.undos_left(),
            error: state.error.clone(),
            steps,
            audit: state.audit.clone(),
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
        let key = if prefix.is_empty() {
            definition.id.clone()
        } else {
            format!("{prefix}.{}", definition.id)
        };
        match state.step(&key) {
            Some(step) => {
                out.push(step_view(step));
                if let (Some(for_each), Some(iterations)) = (&definition.for_each, &step.iterations)
                {
                    for (index, iteration) in iterations.iter().enumerate() {
                        if iteration.status != crate::machine::IterationStatus::Pending {
                            list_steps(state, &for_each.steps, &format!("{key}[{index}]"), out);
                        }
                    }
                }
            }
            None => out.push(StepView {
                id: key,
                action: definition.action.clone(),
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
        waiting_for: step.waiting_for.filter(|_| step.status.is_active()),
        waiting_since: step.waiting_since.filter(|_| step.status.is_active()),
        prompt: step.prompt.clone(),
        approval: step.approval.clone(),
        skipped_by: step.skipped_by.clone(),
        undo: step.undo.as_ref().map(|undo| UndoView {
            state: undo.status.name().to_owned(),
            attempts: undo.attempts,
            output: undo.output.clone().unwrap_or(Value::Null),
            error: undo.error.clone(),
        }),
    }
}
