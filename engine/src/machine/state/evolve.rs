//! [`evolve`]: a run's state after one event. Total: it never fails and never panics, so a
//! journal that was accepted once can always be replayed.
//!
//! (Over 600 lines on purpose: one `match` with an arm per event kind, read top to bottom when
//! an event is added; split, the fold that replay depends on would be in pieces.)

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::*;
use crate::definition::{makes_call, CoreAction};

/// Applies one event. Events that do not fit (a journal written by a buggy build) are applied as
/// far as they make sense and never panic.
pub fn evolve(state: &mut RunState, event: &Event) {
    crate::machine::poll_history::track(state, event);
    state.last_seq = event.seq;
    let at = event.at;
    if let Some(actor) = event.kind.actor() {
        let (action, step, comment) = audit_of(&event.kind);
        state.audit.push(AuditEntry {
            seq: event.seq,
            at,
            actor: actor.clone(),
            action: action.to_owned(),
            step,
            comment,
        });
    }
    match &event.kind {
        EventKind::RunCreated {
            run_id,
            definition,
            params,
            locks,
            by,
            ..
        } => {
            state.id = *run_id;
            state.definition = Arc::new(definition.clone());
            state.runbook = definition.name.clone();
            state.version = definition.version;
            state.params = params.clone();
            state.locks = locks.clone();
            state.created_at = at;
            state.started_by = by.clone();
        }
        EventKind::StepStarted {
            step,
            attempt,
            call,
            action,
            input,
        } => {
            let (is_call, for_each) = (makes_call(action), CoreAction::ForEach.is(action));
            let call = call.filter(|_| is_call);
            if let Some(call) = call {
                state.next_call = state.next_call.max(call.next());
            }
            let iterations = for_each.then(|| {
                input
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|item| Iteration {
                                item: Arc::new(item.clone()),
                                status: IterationStatus::Pending,
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            });
            let status = if is_call {
                StepStatus::Running
            } else {
                StepStatus::Waiting
            };
            if state.step(step).is_some() {
                // A step starts again: what was done may not be any more.
                state.done_prefix = DonePrefix::default();
            }
            match state.step_mut(step) {
                Some(existing) => {
                    // A poll goes on waiting for its condition; anything else waits anew.
                    let polls_on = existing.waiting_for == Some(WaitingFor::Poll)
                        && existing.attempts == *attempt;
                    if !polls_on {
                        existing.waiting_since = None;
                    }
                    if for_each {
                        existing.waiting_since = Some(at);
                    }
                    existing.status = status;
                    existing.attempts = *attempt;
                    existing.call = call;
                    existing.input = Arc::new(input.clone());
                    existing.finished_at = None;
                    existing.error = None;
                    existing.waiting_for = None;
                    existing.fire_at = None;
                    existing.note = None;
                    if iterations.is_some() {
                        existing.iterations = iterations;
                        existing.iterations_done = DonePrefix::default();
                    }
                }
                None => {
                    state.push_step(StepState {
                        key: step.clone(),
                        action: action.clone(),
                        status,
                        attempts: *attempt,
                        call,
                        polls: 0,
                        started_at: at,
                        finished_at: None,
                        input: Arc::new(input.clone()),
                        output: None,
                        error: None,
                        waiting_for: for_each.then_some(WaitingFor::Iterations),
                        fire_at: None,
                        late_by_ms: None,
                        prompt: None,
                        approval: None,
                        skipped_by: None,
                        iterations,
                        undo: None,
                        note: None,
                        aborting: None,
                        waiting_since: for_each.then_some(at),
                        iterations_done: DonePrefix::default(),
                    });
                }
            }
        }
        EventKind::StepSucceeded { step, output } => {
            if let Some(existing) = state.step_mut(step) {
                existing.status = StepStatus::Succeeded;
                existing.call = None;
                existing.output = Some(output.clone());
                existing.error = None;
                existing.finished_at = Some(at);
                existing.waiting_for = None;
                existing.waiting_since = None;
                state.completed.push_back(Arc::from(step.as_str()));
            }
        }
        EventKind::StepFailed {
            step,
            error,
            will_retry,
            aborted_call,
        } => {
            if let Some(existing) = state.step_mut(step) {
                if aborted_call.is_some() {
                    existing.aborting = *aborted_call;
                }
                existing.call = None;
                existing.error = Some(error.clone());
                if *will_retry {
                    existing.status = StepStatus::Waiting;
                    existing.waiting_for = Some(WaitingFor::Retry);
                    existing.waiting_since.get_or_insert(at);
                } else {
                    existing.status = StepStatus::Failed;
                    existing.finished_at = Some(at);
                    existing.waiting_for = None;
                    existing.waiting_since = None;
                }
            }
        }
        EventKind::StepPolled { step, output } => {
            if let Some(existing) = state.step_mut(step) {
                existing.status = StepStatus::Waiting;
                existing.call = None;
                existing.polls += 1;
                existing.output = Some(output.clone());
                existing.waiting_for = Some(WaitingFor::Poll);
                existing.waiting_since.get_or_insert(at);
            }
        }
        EventKind::StepInterrupted { step, rerun, .. } => {
            if let Some(existing) = state.step_mut(step) {
                existing.call = None;
                if !rerun {
                    existing.status = StepStatus::Interrupted;
                    existing.error = Some("interrupted: the daemon stopped while this step ran; its outcome is unknown".to_owned());
                }
            }
        }
        EventKind::StepSkipped {
            step, reason, by, ..
        } => {
            let action = state
                .definition
                .step(step)
                .map(|definition| definition.action().to_owned())
                .unwrap_or_default();
            let existing = match state.index.position(&state.steps, step) {
                Some(_) => state.step_mut(step).expect("the step was just found"),
                None => state.push_step(StepState {
                    key: step.clone(),
                    action,
                    status: StepStatus::Skipped,
                    attempts: 0,
                    call: None,
                    polls: 0,
                    started_at: at,
                    finished_at: None,
                    input: Arc::new(Value::Null),
                    output: None,
                    error: None,
                    waiting_for: None,
                    fire_at: None,
                    late_by_ms: None,
                    prompt: None,
                    approval: None,
                    skipped_by: None,
                    iterations: None,
                    undo: None,
                    note: None,
                    aborting: None,
                    waiting_since: None,
                    iterations_done: DonePrefix::default(),
                }),
            };
            existing.status = StepStatus::Skipped;
            existing.call = None;
            existing.finished_at = Some(at);
            existing.waiting_for = None;
            existing.waiting_since = None;
            existing.skipped_by = by.clone();
            existing
                .output
                .get_or_insert_with(|| serde_json::json!({ "skipped": reason }));
            if state
                .attention
                .as_ref()
                .is_some_and(|attention| &attention.step == step)
            {
                state.attention = None;
            }
        }
        EventKind::AbortedCallEnded { step, call } => {
            if let Some(existing) = state
                .step_mut(step)
                .filter(|existing| existing.aborting == Some(*call))
            {
                existing.aborting = None;
            }
        }
        EventKind::AbortedCallCompleted {
            step,
            call,
            output,
            error,
        } => {
            let has_undo = state
                .definition
                .step(step)
                .is_some_and(|definition| definition.undo.is_some());
            if let Some(existing) = state
                .step_mut(step)
                .filter(|existing| existing.aborting == Some(*call))
            {
                existing.aborting = None;
                // A canceled step takes the call's result. One that timed out stays failed (it
                // did not end in time: the operator decides), and one being retried keeps its
                // new attempt; either way the effect is in place, so it counts as completed.
                if existing.status == StepStatus::Canceled {
                    existing.finished_at = Some(at);
                    existing.waiting_for = None;
                    existing.waiting_since = None;
                    existing.status = if output.is_some() {
                        StepStatus::Succeeded
                    } else {
                        StepStatus::Failed
                    };
                    existing.output = output.clone().or(existing.output.take());
                    existing.error = error.clone();
                }
                if !state.completed.iter().any(|done| **done == **step) {
                    state.completed.push_back(Arc::from(step.as_str()));
                }
                // Rolling back: this change is the newest, so it is undone first.
                if let Some(rollback) = state.rollback.as_mut() {
                    if has_undo && !rollback.queue.contains(step) {
                        rollback.queue.insert(0, step.clone());
                    }
                }
            }
        }
        EventKind::CallNeverStarted {
            step, call, undo, ..
        } => {
            if let Some(existing) = state.step_mut(step) {
                if *undo {
                    if let Some(undo_state) = existing
                        .undo
                        .as_mut()
                        .filter(|undo_state| undo_state.call == Some(*call))
                    {
                        undo_state.call = None;
                    }
                } else if existing.call == Some(*call) {
                    existing.call = None;
                }
            }
        }
        EventKind::TimerSuspended {
            purpose,
            step,
            remaining_ms,
        } => {
            if let Some(pause) = state.paused.as_mut() {
                pause.suspended.push(SuspendedTimer {
                    purpose: *purpose,
                    step: step.clone(),
                    remaining_ms: *remaining_ms,
                });
            }
            if *purpose != TimerPurpose::Timeout {
                if let Some(existing) = state.step_mut(step) {
                    existing.status = StepStatus::Waiting;
                    existing.waiting_for = Some(match purpose {
                        TimerPurpose::Poll => WaitingFor::Poll,
                        TimerPurpose::Retry => WaitingFor::Retry,
                        _ => WaitingFor::Timer,
                    });
                    existing.waiting_since.get_or_insert(at);
                }
            }
        }
        EventKind::UndoCanceled { step } => {
            finish_undo(state, step, StepStatus::Canceled, None, None, at)
        }
        EventKind::CallNoted {
            step,
            call,
            undo,
            note,
        } => {
            if let Some(existing) = state.step_mut(step) {
                if *undo {
                    if let Some(undo_state) = existing
                        .undo
                        .as_mut()
                        .filter(|undo_state| undo_state.call == Some(*call))
                    {
                        undo_state.note = Some(note.clone());
                    }
                } else if existing.call == Some(*call) {
                    existing.note = Some(note.clone());
                }
            }
        }
        EventKind::StepCanceled { step } => {
            if let Some(existing) = state.step_mut(step) {
                existing.status = StepStatus::Canceled;
                existing.aborting = existing.call.take();
                existing.finished_at = Some(at);
                existing.waiting_for = None;
                existing.waiting_since = None;
            }
        }
        EventKind::TimerArmed {
            timer,
            fire_at,
            purpose,
            step,
        } => {
            state.timers.push(ActiveTimer {
                timer: *timer,
                fire_at: *fire_at,
                purpose: *purpose,
                step: step.clone(),
            });
            if *purpose != TimerPurpose::Timeout {
                if let Some(existing) = state.step_mut(step) {
                    existing.fire_at = Some(*fire_at);
                    existing.status = StepStatus::Waiting;
                    existing.waiting_for = Some(match purpose {
                        TimerPurpose::Poll => WaitingFor::Poll,
                        TimerPurpose::Retry => WaitingFor::Retry,
                        _ => WaitingFor::Timer,
                    });
                    existing.waiting_since.get_or_insert(at);
                }
            }
        }
        EventKind::TimerFired {
            timer, late_by_ms, ..
        } => {
            if let Some(index) = state
                .timers
                .iter()
                .position(|active| active.timer == *timer)
            {
                let fired = state.timers.remove(index);
                if matches!(fired.purpose, TimerPurpose::Wait | TimerPurpose::Window) {
                    if let Some(existing) = state.step_mut(&fired.step) {
                        existing.late_by_ms = Some(*late_by_ms);
                    }
                }
            }
        }
        EventKind::TimerCanceled { timer, .. } => {
            state.timers.retain(|active| active.timer != *timer);
        }
        EventKind::ApprovalRequested { step, prompt } => {
            if let Some(existing) = state.step_mut(step) {
                existing.status = StepStatus::Waiting;
                existing.waiting_for = Some(WaitingFor::Approval);
                existing.waiting_since.get_or_insert(at);
                existing.prompt = Some(prompt.clone());
            }
        }
        EventKind::Approved { step, by, comment } => {
            if let Some(existing) = state.step_mut(step) {
                existing.approval = Some(ApprovalRecord {
                    by: by.clone(),
                    comment: comment.clone(),
                    at,
                });
            }
        }
        EventKind::IterationStarted { step, index }
        | EventKind::IterationFinished { step, index } => {
            let status = if matches!(event.kind, EventKind::IterationStarted { .. }) {
                IterationStatus::Running
            } else {
                IterationStatus::Done
            };
            if let Some(StepState {
                iterations: Some(all),
                iterations_done,
                ..
            }) = state.step_mut(step)
            {
                if let Some(iteration) = all.get_mut(*index) {
                    iteration.status = status;
                }
                let done = &mut iterations_done.0;
                while *done < all.len() && all[*done].status == IterationStatus::Done {
                    *done += 1;
                }
            }
        }
        EventKind::NeedsAttention {
            reason,
            step,
            message,
        } => {
            state.attention = Some(Attention {
                reason: *reason,
                step: step.clone(),
                message: message.clone(),
                at: Some(at),
            });
        }
        EventKind::Paused { by, suspended, .. } => {
            state.paused = Some(Pause {
                by: by.clone(),
                at,
                suspended: suspended.clone(),
            });
        }
        EventKind::Resumed { .. } => state.paused = None,
        EventKind::RetryRequested { step, .. } => {
            if state
                .attention
                .as_ref()
                .is_some_and(|attention| &attention.step == step)
            {
                state.attention = None;
            }
        }
        EventKind::CancelRequested { .. } => {}
        EventKind::RollbackStarted { by, queue, .. } => {
            state.done_prefix = DonePrefix::default();
            if state.status.is_terminal() {
                // A finished run can still be rolled back: it is reopened for its undos.
                state.status = RunStatus::Waiting;
                state.finished_at = None;
                state.error = None;
            }
            state.rollback = Some(Rollback {
                by: by.clone(),
                at,
                queue: queue.clone(),
            });
            state.attention = None;
        }
        EventKind::UndoStarted {
            step,
            attempt,
            call,
            action,
            input,
        } => {
            state.next_call = state.next_call.max(call.next());
            if let Some(existing) = state.step_mut(step) {
                existing.undo = Some(UndoState {
                    status: StepStatus::Running,
                    attempts: *attempt,
                    call: Some(*call),
                    action: action.clone(),
                    input: input.clone(),
                    note: None,
                    started_at: at,
                    finished_at: None,
                    output: None,
                    error: None,
                });
            }
            if state
                .attention
                .as_ref()
                .is_some_and(|attention| &attention.step == step)
            {
                state.attention = None;
            }
        }
        EventKind::UndoSucceeded { step, output } => finish_undo(
            state,
            step,
            StepStatus::Succeeded,
            Some(output.clone()),
            None,
            at,
        ),
        EventKind::UndoFailed { step, error } => finish_undo(
            state,
            step,
            StepStatus::Failed,
            None,
            Some(error.clone()),
            at,
        ),
        EventKind::UndoInterrupted { step, rerun, .. } => {
            if !rerun {
                let error =
                    "interrupted: the daemon stopped while this undo ran; its outcome is unknown"
                        .to_owned();
                finish_undo(state, step, StepStatus::Interrupted, None, Some(error), at);
            }
        }
        EventKind::UndoSkipped { step, .. } => {
            finish_undo(state, step, StepStatus::Skipped, None, None, at);
            if state
                .attention
                .as_ref()
                .is_some_and(|attention| &attention.step == step)
            {
                state.attention = None;
            }
        }
        EventKind::RunFinished {
            state: final_state,
            error,
        } => {
            state.finished_at = Some(at);
            state.error = error.clone();
            state.attention = None;
            state.status = match final_state {
                FinalState::Succeeded => RunStatus::Succeeded,
                FinalState::Failed => RunStatus::Failed,
                FinalState::Canceled => RunStatus::Canceled,
                FinalState::RolledBack => RunStatus::RolledBack,
            };
        }
    }
    state.in_flight.settle(&state.steps);
    if !state.status.is_terminal() {
        state.status = if state.attention.is_some() {
            RunStatus::NeedsAttention
        } else if state.paused.is_some() {
            RunStatus::Paused
        } else if state.calls_running() {
            RunStatus::Running
        } else {
            RunStatus::Waiting
        };
    }
}

fn finish_undo(
    state: &mut RunState,
    step: &str,
    status: StepStatus,
    output: Option<Value>,
    error: Option<String>,
    at: DateTime<Utc>,
) {
    if let Some(undo) = state
        .step_mut(step)
        .and_then(|existing| existing.undo.as_mut())
    {
        undo.status = status;
        undo.call = None;
        undo.finished_at = Some(at);
        undo.output = output;
        undo.error = error;
    }
}

fn audit_of(kind: &EventKind) -> (&'static str, Option<String>, Option<String>) {
    match kind {
        EventKind::RunCreated { comment, .. } => ("start", None, comment.clone()),
        EventKind::Approved { step, comment, .. } => {
            ("approve", Some(step.clone()), comment.clone())
        }
        EventKind::Paused { comment, .. } => ("pause", None, comment.clone()),
        EventKind::Resumed { comment, .. } => ("resume", None, comment.clone()),
        EventKind::RetryRequested { step, comment, .. } => {
            ("retry", Some(step.clone()), comment.clone())
        }
        EventKind::CancelRequested { comment, .. } => ("cancel", None, comment.clone()),
        EventKind::RollbackStarted { comment, .. } => ("rollback", None, comment.clone()),
        EventKind::UndoSkipped { step, comment, .. } => {
            ("skip_undo", Some(step.clone()), comment.clone())
        }
        EventKind::StepSkipped { step, comment, .. } => {
            ("skip", Some(step.clone()), comment.clone())
        }
        _ => ("", None, None),
    }
}
