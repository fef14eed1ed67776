//! `decide`: what an input means for a run, as events to journal and effects to run after.
//!
//! Every function here is pure: time comes in as `now`, and nothing is read or written outside
//! the state. The events of one decision are journaled in one commit; the effects run only
//! after that commit is durable.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::context;
use super::event::{
    Actor, AttentionReason, Event, EventKind, FinalState, SuspendedTimer, TimerPurpose,
};
use super::ids::{CallId, TimerId};
use super::state::{evolve, IterationStatus, RunState, StepStatus, WaitingFor};
use crate::definition::step_key;
use crate::definition::{Concurrency, CoreAction, Definition, DurationSpec, OnFailure, Step};
use crate::template;

mod advance;
mod operator;
mod results;
mod start;

/// Something that happens to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An action call ended (or was canceled).
    ActionFinished {
        call: CallId,
        result: Result<Value, ActionFailure>,
    },
    /// A durable timer is due.
    TimerFired {
        timer: TimerId,
    },
    /// After a restart: the call was in flight and cannot be re-attached.
    Interrupted {
        call: CallId,
    },
    /// After a restart: the call was in flight but certainly never started what it does (an
    /// exec whose supervisor was never released); `reason` says how that is known.
    NotStarted {
        call: CallId,
        reason: String,
    },
    /// An action journals a note about its call in flight (see `EventKind::CallNoted`).
    CallNote {
        call: CallId,
        note: Value,
    },
    /// Go on with whatever can start (after a yield, and at recovery).
    Continue,
    Approve {
        step: Option<String>,
        by: Actor,
        comment: Option<String>,
    },
    Pause {
        by: Actor,
        comment: Option<String>,
    },
    Resume {
        by: Actor,
        comment: Option<String>,
    },
    Cancel {
        by: Actor,
        comment: Option<String>,
        /// Run the undo of every completed step too (newest first), as `rollback` does: the
        /// run ends `rolled_back` instead of leaving what it changed in place.
        rollback: bool,
    },
    Rollback {
        by: Actor,
        comment: Option<String>,
    },
    Retry {
        step: String,
        by: Actor,
        comment: Option<String>,
    },
    Skip {
        step: String,
        by: Actor,
        comment: Option<String>,
    },
}

impl Input {
    /// For an operator's input: who gave it, and the step it names.
    pub fn operator(&self) -> Option<(&Actor, Option<&str>)> {
        match self {
            Input::Approve { by, step, .. } => Some((by, step.as_deref())),
            Input::Retry { by, step, .. } | Input::Skip { by, step, .. } => {
                Some((by, Some(step.as_str())))
            }
            Input::Pause { by, .. }
            | Input::Resume { by, .. }
            | Input::Cancel { by, .. }
            | Input::Rollback { by, .. } => Some((by, None)),
            Input::ActionFinished { .. }
            | Input::TimerFired { .. }
            | Input::Interrupted { .. }
            | Input::NotStarted { .. }
            | Input::CallNote { .. }
            | Input::Continue => None,
        }
    }
}

/// How an action call failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionFailure {
    pub message: String,
    /// May another attempt succeed? (A command's non-zero exit may; a malformed input never.)
    pub retryable: bool,
    /// The call ran to its own end and failed there (an exec whose command exited non-zero by
    /// itself, even after it was asked to stop): what it changes may have changed. For an
    /// aborted call this is journaled (`AbortedCallCompleted`), and a rollback undoes it.
    pub ran_to_end: bool,
    /// The call certainly never started what it does (an exec whose command was never
    /// released). After a restart such a call is started again.
    pub never_started: bool,
}

/// Work for the shell, to do once the decision's events are durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Call(Call),
    /// Cancel an action call in flight (timeout, cancel, rollback).
    Abort {
        call: CallId,
    },
    /// Feed `Input::Continue` once this decision is durable: a step ended within it, and the
    /// next one starts in a commit of its own.
    Continue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub run_id: Uuid,
    pub call: CallId,
    pub step: String,
    pub attempt: u32,
    pub undo: bool,
    pub action: String,
    pub input: Value,
}

/// A call the run's state shows in flight: after a restart, recovery hands it back to its
/// action (see `runtime::Engine::recover`).
#[derive(Debug, Clone, PartialEq)]
pub struct CallInFlight {
    pub call: Call,
    /// The last note the call recorded: what it needs to find its work again.
    pub note: Option<Value>,
    /// It was being stopped (timeout, cancel, rollback): re-attached only to stop it and learn
    /// that it ended. Such a call may outlive its run's end.
    pub aborting: bool,
}

impl RunState {
    /// Every call in flight, in step order: a step's call being stopped, its current call, then
    /// its undo's. A finished run has only calls being stopped.
    pub fn calls_in_flight(&self) -> Vec<CallInFlight> {
        let live = !self.status.is_terminal();
        let mut found = Vec::new();
        for step in &self.steps {
            // A call being stopped can still run beside the step's next attempt (a retry after
            // a timeout): both are in flight.
            let stopping = step.aborting.map(|call| (call, true));
            let current = step.call.filter(|_| live).map(|call| (call, false));
            for (call, aborting) in stopping.into_iter().chain(current) {
                found.push(CallInFlight {
                    call: Call {
                        run_id: self.id,
                        call,
                        step: step.key.clone(),
                        attempt: step.attempts,
                        undo: false,
                        action: step.action.clone(),
                        input: (*step.input).clone(),
                    },
                    // The note is the current call's once one started (`CallNoted` keeps only
                    // its notes); until then it is the stopped call's.
                    note: step
                        .note
                        .clone()
                        .filter(|_| !aborting || step.call.is_none()),
                    aborting,
                });
            }
            let undo = step.undo.as_ref().filter(|_| live);
            if let Some((undo, call)) = undo.and_then(|undo| undo.call.map(|call| (undo, call))) {
                found.push(CallInFlight {
                    call: Call {
                        run_id: self.id,
                        call,
                        step: step.key.clone(),
                        attempt: undo.attempts,
                        undo: true,
                        action: undo.action.clone(),
                        input: undo.input.clone(),
                    },
                    note: undo.note.clone(),
                    aborting: false,
                });
            }
        }
        found
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub effects: Vec<Effect>,
}

impl Decision {
    /// Nothing is left to continue with: no [`Effect::Continue`].
    pub fn settled(&self) -> bool {
        !self.effects.contains(&Effect::Continue)
    }
}

/// Why an operator's request was refused; nothing was journaled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The actor's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// The request lacks something it needs (`field` names it, e.g. `comment`).
    #[error("{message}")]
    Invalid { message: String, field: String },
}

/// A guard against a definition that would make `advance` loop forever (it cannot, but a bug
/// must not hang the daemon).
const MAX_EVENTS_PER_DECISION: usize = 100_000;

/// Creates a run: `RunCreated`, then everything that can start at once.
pub fn create(
    run_id: Uuid,
    definition: Arc<Definition>,
    params: Map<String, Value>,
    locks: Vec<String>,
    by: Actor,
    comment: Option<String>,
    now: DateTime<Utc>,
) -> (RunState, Decision) {
    let mut decider = Decider::new(RunState::empty(run_id), now);
    decider.emit(EventKind::RunCreated {
        run_id,
        definition: (*definition).clone(),
        params,
        locks,
        by,
        comment,
    });
    decider.advance();
    decider.finish()
}

/// Decides what `input` means for the run in `state`. Returns the new state and the decision, or
/// a rejection when an operator's request does not fit the run.
pub fn decide(
    state: &RunState,
    input: Input,
    now: DateTime<Utc>,
) -> Result<(RunState, Decision), Rejection> {
    let mut decider = Decider::new(state.clone(), now);
    decider.apply(input)?;
    decider.advance();
    Ok(decider.finish())
}

/// Journals `note` for `call`, in flight in `state`, as the next event: applied to `state` and
/// returned, for the shell to add to a decision that started the call (a note an action had
/// ready before the call's start was journaled, see `Action::prepare`). Equal to deciding
/// [`Input::CallNote`], without a copy of the state.
pub fn note_call(
    state: &mut RunState,
    call: CallId,
    note: Value,
    now: DateTime<Utc>,
) -> Result<Event, Rejection> {
    let event = Event {
        seq: state.last_seq + 1,
        at: now,
        kind: call_noted(state, call, note)?,
    };
    evolve(state, &event);
    Ok(event)
}

/// The `CallNoted` event for a call in flight (a step's or an undo's).
fn call_noted(state: &RunState, call: CallId, note: Value) -> Result<EventKind, Rejection> {
    let (step, undo) = if let Some(step) = state.step_with_call(call) {
        (step, false)
    } else if let Some(step) = state.step_with_undo_call(call) {
        (step, true)
    } else {
        return Err(Rejection::Conflict(format!(
            "call {call} of run {} is not in flight",
            state.id
        )));
    };
    Ok(EventKind::CallNoted {
        step: step.key.clone(),
        call,
        undo,
        note,
    })
}

struct Decider {
    state: RunState,
    now: DateTime<Utc>,
    events: Vec<Event>,
    effects: Vec<Effect>,
    /// A step ended inside this decision: stop here, so that each step costs its own durable
    /// commit (the shell continues with `Input::Continue`).
    yielded: bool,
}

/// What a sequence of steps is doing.
enum Progress {
    Done,
    Busy,
    Blocked {
        reason: AttentionReason,
        step: String,
        message: String,
    },
    Abort {
        error: String,
    },
}

impl Decider {
    fn new(state: RunState, now: DateTime<Utc>) -> Decider {
        Decider {
            state,
            now,
            events: Vec::new(),
            effects: Vec::new(),
            yielded: false,
        }
    }

    fn finish(self) -> (RunState, Decision) {
        (
            self.state,
            Decision {
                events: self.events,
                effects: self.effects,
            },
        )
    }

    fn emit(&mut self, kind: EventKind) {
        let event = Event {
            seq: self.state.last_seq + 1,
            at: self.now,
            kind,
        };
        evolve(&mut self.state, &event);
        self.events.push(event);
    }

    fn definition(&self) -> Arc<Definition> {
        self.state.definition.clone()
    }

    fn arm(&mut self, purpose: TimerPurpose, step: &str, fire_at: DateTime<Utc>) {
        if self.state.paused.is_some() {
            // A paused run's clock stands still: the timer waits for the resume, whole.
            let remaining_ms = (fire_at - self.now).num_milliseconds().max(0);
            self.emit(EventKind::TimerSuspended {
                purpose,
                step: step.to_owned(),
                remaining_ms,
            });
            return;
        }
        let timer = TimerId(self.state.last_seq + 1);
        self.emit(EventKind::TimerArmed {
            timer,
            fire_at,
            purpose,
            step: step.to_owned(),
        });
    }

    /// Cancels the timers of `key` and of every step nested under it.
    fn cancel_timers(&mut self, key: Option<&str>) {
        let timers: Vec<_> = self
            .state
            .timers
            .iter()
            .filter(|timer| key.is_none_or(|key| step_key::is_within(&timer.step, key)))
            .map(|timer| (timer.timer, timer.fire_at))
            .collect();
        for (timer, fire_at) in timers {
            self.emit(EventKind::TimerCanceled { timer, fire_at });
        }
    }

    /// Stops every active step under `key` (or all): aborts calls in flight, marks them canceled.
    fn cancel_active(&mut self, key: Option<&str>) {
        self.cancel_timers(key);
        let active: Vec<(String, Option<CallId>)> = self
            .state
            .steps
            .iter()
            .filter(|step| step.status.is_active())
            .filter(|step| key.is_none_or(|key| step_key::is_within(&step.key, key)))
            .map(|step| (step.key.clone(), step.call))
            .collect();
        for (step, call) in active {
            if let Some(call) = call {
                self.effects.push(Effect::Abort { call });
            }
            self.emit(EventKind::StepCanceled { step });
        }
        if key.is_none() {
            let undos: Vec<(String, CallId)> = self
                .state
                .steps
                .iter()
                .filter_map(|step| {
                    let call = step.undo.as_ref().and_then(|undo| undo.call)?;
                    Some((step.key.clone(), call))
                })
                .collect();
            for (step, call) in undos {
                self.effects.push(Effect::Abort { call });
                self.emit(EventKind::UndoCanceled { step });
            }
        }
    }

    fn ensure_not_finished(&self) -> Result<(), Rejection> {
        if self.state.status.is_terminal() {
            return Err(Rejection::Conflict(format!(
                "run {} has already ended ({})",
                self.state.id,
                self.state.status.name()
            )));
        }
        Ok(())
    }

    fn apply(&mut self, input: Input) -> Result<(), Rejection> {
        let system = matches!(
            input,
            Input::ActionFinished { .. }
                | Input::TimerFired { .. }
                | Input::Interrupted { .. }
                | Input::NotStarted { .. }
                | Input::Continue
        );
        // (A note for a call that is not in flight is refused below: the action must then not
        // start what the note announced.)
        if system && self.state.status.is_terminal() {
            // A late report of a call aborted when the run ended changes nothing but the record
            // of how it ended (a rollback of the finished run waits for that, and undoes a call
            // that ran to its end).
            match input {
                Input::ActionFinished { call, result } => self.on_aborted_call_result(call, result),
                Input::Interrupted { call } | Input::NotStarted { call, .. } => {
                    self.on_aborted_call_ended(call)
                }
                _ => {}
            }
            return Ok(());
        }
        match input {
            Input::ActionFinished { call, result } => self.on_call_finished(call, result),
            Input::TimerFired { timer } => self.on_timer(timer),
            Input::Interrupted { call } => self.on_interrupted(call),
            Input::NotStarted { call, reason } => self.on_not_started(call, reason),
            Input::Continue => {}
            Input::CallNote { call, note } => {
                let noted = call_noted(&self.state, call, note)?;
                self.emit(noted);
            }
            Input::Approve { step, by, comment } => return self.approve(step, by, comment),
            Input::Pause { by, comment } => {
                self.ensure_not_finished()?;
                if self.state.paused.is_some() {
                    return Err(Rejection::Conflict(format!(
                        "run {} is already paused",
                        self.state.id
                    )));
                }
                let suspended: Vec<SuspendedTimer> = self
                    .state
                    .timers
                    .iter()
                    .map(|timer| SuspendedTimer {
                        purpose: timer.purpose,
                        step: timer.step.clone(),
                        remaining_ms: (timer.fire_at - self.now).num_milliseconds().max(0),
                    })
                    .collect();
                self.cancel_timers(None);
                self.emit(EventKind::Paused {
                    by,
                    comment,
                    suspended,
                });
            }
            Input::Resume { by, comment } => {
                self.ensure_not_finished()?;
                let Some(pause) = self.state.paused.clone() else {
                    return Err(Rejection::Conflict(format!(
                        "run {} is not paused",
                        self.state.id
                    )));
                };
                self.emit(EventKind::Resumed { by, comment });
                for timer in pause.suspended {
                    // A step that ended (or was skipped) while paused wants its timer no more.
                    let wanted = self.state.step(&timer.step).is_some_and(|step| {
                        step.status.is_active()
                            && match timer.purpose {
                                TimerPurpose::Timeout => true,
                                TimerPurpose::Wait | TimerPurpose::Window => {
                                    step.waiting_for == Some(WaitingFor::Timer)
                                }
                                TimerPurpose::Poll => step.waiting_for == Some(WaitingFor::Poll),
                                TimerPurpose::Retry => step.waiting_for == Some(WaitingFor::Retry),
                            }
                    });
                    if wanted {
                        let fire_at = crate::duration::after_ms(self.now, timer.remaining_ms);
                        self.arm(timer.purpose, &timer.step, fire_at);
                    }
                }
            }
            Input::Cancel {
                by,
                comment,
                rollback: true,
            } => {
                self.ensure_not_finished()?;
                if self.state.rollback.is_some() {
                    return Err(Rejection::Conflict(format!(
                        "run {} is already rolling back",
                        self.state.id
                    )));
                }
                self.emit(EventKind::CancelRequested {
                    by: by.clone(),
                    comment: comment.clone(),
                });
                return self.rollback(by, comment);
            }
            Input::Cancel { by, comment, .. } => {
                self.ensure_not_finished()?;
                self.emit(EventKind::CancelRequested { by, comment });
                self.cancel_active(None);
                self.emit(EventKind::RunFinished {
                    state: FinalState::Canceled,
                    error: None,
                });
            }
            Input::Rollback { by, comment } => return self.rollback(by, comment),
            Input::Retry { step, by, comment } => return self.retry(step, by, comment),
            Input::Skip { step, by, comment } => return self.skip(step, by, comment),
        }
        Ok(())
    }
}
