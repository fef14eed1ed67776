//! `decide`: what an input means for a run, as events to journal and effects to run after.
//!
//! Every function here is pure: time comes in as `now`, and nothing is read or written outside
//! the state. The events of one decision are journaled in one commit; the effects run only
//! after that commit is durable.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::context;
use super::event::{
    Actor, AttentionReason, Event, EventKind, FinalState, SuspendedTimer, TimerPurpose,
};
use super::state::{evolve, IterationStatus, RunState, StepStatus, WaitingFor};
use crate::definition::{Concurrency, Definition, OnFailure, Step};
use crate::{calendar, template};

/// Something that happens to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An action call ended (or was canceled).
    ActionFinished {
        call: u32,
        result: Result<Value, ActionFailure>,
    },
    /// A durable timer is due.
    TimerFired {
        timer: u64,
    },
    /// After a restart: the call was in flight and cannot be re-attached.
    Interrupted {
        call: u32,
    },
    /// After a restart: the call was in flight but certainly never started what it does (an
    /// exec whose supervisor was never released); `reason` says how that is known.
    NotStarted {
        call: u32,
        reason: String,
    },
    /// An action journals a note about its call in flight (see `EventKind::CallNoted`).
    CallNote {
        call: u32,
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
        call: u32,
    },
    /// Feed `Input::Continue` once this decision is durable: a step ended within it, and the
    /// next one starts in a commit of its own.
    Continue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub run_id: Uuid,
    pub call: u32,
    pub step: String,
    pub attempt: u32,
    pub undo: bool,
    pub action: String,
    pub input: Value,
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
        let timer = self.state.last_seq + 1;
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
            .filter(|timer| {
                key.is_none_or(|key| {
                    timer.step == key || timer.step.starts_with(&format!("{key}["))
                })
            })
            .map(|timer| (timer.timer, timer.fire_at))
            .collect();
        for (timer, fire_at) in timers {
            self.emit(EventKind::TimerCanceled { timer, fire_at });
        }
    }

    /// Stops every active step under `key` (or all): aborts calls in flight, marks them canceled.
    fn cancel_active(&mut self, key: Option<&str>) {
        self.cancel_timers(key);
        let active: Vec<(String, Option<u32>)> = self
            .state
            .steps
            .iter()
            .filter(|step| step.status.is_active())
            .filter(|step| {
                key.is_none_or(|key| step.key == key || step.key.starts_with(&format!("{key}[")))
            })
            .map(|step| (step.key.clone(), step.call))
            .collect();
        for (step, call) in active {
            if let Some(call) = call {
                self.effects.push(Effect::Abort { call });
            }
            self.emit(EventKind::StepCanceled { step });
        }
        if key.is_none() {
            let undos: Vec<(String, u32)> = self
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
                if let Some(step) = self.state.steps.iter().find(|step| step.call == Some(call)) {
                    let step = step.key.clone();
                    self.emit(EventKind::CallNoted {
                        step,
                        call,
                        undo: false,
                        note,
                    });
                } else if let Some(step) = self.state.steps.iter().find(|step| {
                    step.undo
                        .as_ref()
                        .is_some_and(|undo| undo.call == Some(call))
                }) {
                    let step = step.key.clone();
                    self.emit(EventKind::CallNoted {
                        step,
                        call,
                        undo: true,
                        note,
                    });
                } else {
                    return Err(Rejection::Conflict(format!(
                        "call {call} of run {} is not in flight",
                        self.state.id
                    )));
                }
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

    // ----- results ---------------------------------------------------------------------------

    fn on_call_finished(&mut self, call: u32, result: Result<Value, ActionFailure>) {
        // From the newest step back: a call in flight belongs to a recent step, and a long run
        // must not walk every finished step for each result.
        if let Some(step) = self
            .state
            .steps
            .iter()
            .rev()
            .find(|step| step.call == Some(call))
            .map(|step| step.key.clone())
        {
            self.complete(&step, result);
            return;
        }
        let undo_of = self.state.steps.iter().find(|step| {
            step.undo
                .as_ref()
                .is_some_and(|undo| undo.call == Some(call))
        });
        if let Some(step) = undo_of.map(|step| step.key.clone()) {
            match result {
                Ok(output) => self.emit(EventKind::UndoSucceeded { step, output }),
                Err(failure) => self.emit(EventKind::UndoFailed {
                    step,
                    error: failure.message,
                }),
            }
            return;
        }
        // Otherwise the call was aborted, is a duplicate, or outlived its step's timeout.
        self.on_aborted_call_result(call, result);
    }

    /// The result of a call that may have been aborted. One that ran to its end anyway (it
    /// succeeded, or failed on its own) has had its effect: its result is journaled, the step
    /// counts as completed, and a rollback undoes it before it goes on. Otherwise only its end
    /// is journaled.
    fn on_aborted_call_result(&mut self, call: u32, result: Result<Value, ActionFailure>) {
        let Some(step) = self
            .state
            .steps
            .iter()
            .find(|step| step.aborting == Some(call))
            .map(|step| step.key.clone())
        else {
            return;
        };
        match result {
            Ok(output) => self.emit(EventKind::AbortedCallCompleted {
                step,
                call,
                output: Some(output),
                error: None,
            }),
            Err(failure) if failure.ran_to_end => self.emit(EventKind::AbortedCallCompleted {
                step,
                call,
                output: None,
                error: Some(failure.message),
            }),
            Err(_) => self.emit(EventKind::AbortedCallEnded { step, call }),
        }
    }

    /// The call of a canceled step really ended: rollback may go on.
    fn on_aborted_call_ended(&mut self, call: u32) {
        let aborted = self
            .state
            .steps
            .iter()
            .find(|step| step.aborting == Some(call))
            .map(|step| step.key.clone());
        if let Some(step) = aborted {
            self.emit(EventKind::AbortedCallEnded { step, call });
        }
    }

    /// An attempt (or poll) of `key` ended.
    fn complete(&mut self, key: &str, result: Result<Value, ActionFailure>) {
        let definition = self.definition();
        let Some(step) = definition.step(key) else {
            return;
        };
        match result {
            Ok(output) => match &step.until {
                None => self.succeed(key, output),
                Some(condition) => {
                    let mut scope = context::for_step(&self.state, key);
                    if let Some(map) = scope.as_object_mut() {
                        map.insert("output".to_owned(), output.clone());
                    }
                    match template::is_true(condition, &scope) {
                        Ok(true) => self.succeed(key, output),
                        Ok(false) => {
                            self.emit(EventKind::StepPolled {
                                step: key.to_owned(),
                                output,
                            });
                            let every = self
                                .step_duration(key, step.every, &step.every_template, "every")
                                .and_then(|every| {
                                    crate::duration::check_poll_interval(
                                        every.unwrap_or(std::time::Duration::from_secs(5)),
                                    )
                                    .map_err(|message| format!("every: {message}"))
                                });
                            match every {
                                Ok(every) => {
                                    self.arm(
                                        TimerPurpose::Poll,
                                        key,
                                        crate::duration::after(self.now, every),
                                    );
                                }
                                Err(message) => self.fail(key, message, false),
                            }
                        }
                        Err(message) => self.fail(key, format!("until: {message}"), false),
                    }
                }
            },
            Err(failure) => self.fail(key, failure.message, failure.retryable),
        }
    }

    fn succeed(&mut self, key: &str, output: Value) {
        self.emit(EventKind::StepSucceeded {
            step: key.to_owned(),
            output,
        });
        self.cancel_timers(Some(key));
    }

    fn fail(&mut self, key: &str, error: String, retryable: bool) {
        let definition = self.definition();
        let attempts = self.state.step(key).map_or(1, |step| step.attempts);
        let retry = definition.step(key).and_then(|step| step.retry.clone());
        let will_retry = retryable
            && retry
                .as_ref()
                .is_some_and(|retry| attempts < retry.max_attempts);
        self.emit(EventKind::StepFailed {
            step: key.to_owned(),
            error,
            will_retry,
            aborted_call: None,
        });
        match retry.filter(|_| will_retry) {
            Some(retry) => self.arm(
                TimerPurpose::Retry,
                key,
                crate::duration::after(self.now, retry.delay_before(attempts + 1)),
            ),
            None => self.cancel_active_children_and_timers(key),
        }
    }

    fn cancel_active_children_and_timers(&mut self, key: &str) {
        let nested_prefix = format!("{key}[");
        if self
            .state
            .steps
            .iter()
            .any(|step| step.key.starts_with(&nested_prefix) && step.status.is_active())
        {
            let children: Vec<String> = self
                .state
                .steps
                .iter()
                .filter(|step| step.key.starts_with(&nested_prefix) && step.status.is_active())
                .map(|step| step.key.clone())
                .collect();
            for child in children {
                self.cancel_active(Some(&child));
            }
        }
        self.cancel_timers(Some(key));
    }

    fn on_timer(&mut self, timer: u64) {
        let Some(active) = self
            .state
            .timers
            .iter()
            .find(|active| active.timer == timer)
            .cloned()
        else {
            return;
        };
        if self.now < active.fire_at {
            return; // never before its deadline: the timer service comes back for it
        }
        let late_by_ms = (self.now - active.fire_at).num_milliseconds().max(0);
        self.emit(EventKind::TimerFired {
            timer,
            fire_at: active.fire_at,
            late_by_ms,
        });
        let key = active.step.as_str();
        let definition = self.definition();
        let Some(step) = definition.step(key) else {
            return;
        };
        match active.purpose {
            TimerPurpose::Wait | TimerPurpose::Window => {
                let output = json!({"fire_at": active.fire_at, "fired_at": self.now, "late_by_ms": late_by_ms});
                self.succeed(key, output);
            }
            TimerPurpose::Retry => {
                let attempt = self.state.step(key).map_or(1, |step| step.attempts) + 1;
                self.start_attempt(step, key, attempt);
            }
            TimerPurpose::Poll => {
                let attempt = self.state.step(key).map_or(1, |step| step.attempts);
                self.start_attempt(step, key, attempt);
            }
            TimerPurpose::Timeout => {
                let still_going = self
                    .state
                    .step(key)
                    .is_some_and(|state| state.status.is_active());
                if still_going {
                    let in_flight = self.state.step(key).and_then(|state| state.call);
                    if let Some(call) = in_flight {
                        self.effects.push(Effect::Abort { call });
                    }
                    let limit = self
                        .step_duration(key, step.timeout, &step.timeout_template, "timeout")
                        .ok()
                        .flatten()
                        .map(crate::duration::format)
                        .unwrap_or_else(|| "its timeout".to_owned());
                    let what = if self
                        .state
                        .step(key)
                        .is_some_and(|state| state.waiting_for == Some(WaitingFor::Approval))
                    {
                        "no approval"
                    } else {
                        "timed out"
                    };
                    self.emit(EventKind::StepFailed {
                        step: key.to_owned(),
                        error: format!("{what} after {limit}"),
                        will_retry: false,
                        aborted_call: in_flight,
                    });
                    self.cancel_active_children_and_timers(key);
                }
            }
        }
    }

    fn on_interrupted(&mut self, call: u32) {
        let definition = self.definition();
        if let Some(step) = self
            .state
            .steps
            .iter()
            .find(|step| step.call == Some(call))
            .cloned()
        {
            let rerun = definition
                .step(&step.key)
                .is_some_and(|definition| definition.idempotent);
            self.emit(EventKind::StepInterrupted {
                step: step.key.clone(),
                call,
                rerun,
            });
            if rerun {
                if let Some(step_definition) = definition.step(&step.key) {
                    self.start_attempt(step_definition, &step.key, step.attempts + 1);
                }
            }
            return;
        }
        if let Some(step) = self
            .state
            .steps
            .iter()
            .find(|step| {
                step.undo
                    .as_ref()
                    .is_some_and(|undo| undo.call == Some(call))
            })
            .cloned()
        {
            let rerun = definition
                .step(&step.key)
                .and_then(|definition| definition.undo.as_ref())
                .is_some_and(|undo| undo.idempotent);
            self.emit(EventKind::UndoInterrupted {
                step: step.key.clone(),
                call,
                rerun,
            });
            if rerun {
                self.start_undo(&step.key);
            }
        }
        self.on_aborted_call_ended(call);
    }

    /// After a restart: the call never started what it does, so starting it again is safe,
    /// idempotent or not. Journaled as such, then started again (same attempt: it never ran).
    fn on_not_started(&mut self, call: u32, reason: String) {
        let definition = self.definition();
        if let Some(step) = self
            .state
            .steps
            .iter()
            .find(|step| step.call == Some(call))
            .cloned()
        {
            self.emit(EventKind::CallNeverStarted {
                step: step.key.clone(),
                call,
                undo: false,
                reason,
            });
            if let Some(step_definition) = definition.step(&step.key) {
                self.start_attempt(step_definition, &step.key, step.attempts);
            }
            return;
        }
        if let Some(step) = self
            .state
            .steps
            .iter()
            .find(|step| {
                step.undo
                    .as_ref()
                    .is_some_and(|undo| undo.call == Some(call))
            })
            .map(|step| step.key.clone())
        {
            self.emit(EventKind::CallNeverStarted {
                step: step.clone(),
                call,
                undo: true,
                reason,
            });
            self.start_undo(&step);
            return;
        }
        self.on_aborted_call_ended(call);
    }

    // ----- operator requests -----------------------------------------------------------------

    /// Resolves what an operator typed to a step instance: an exact key, or an id that names
    /// exactly one instance in the state `wanted` accepts.
    fn resolve_step(
        &self,
        typed: &str,
        wanted: impl Fn(&super::state::StepState) -> bool,
    ) -> Result<String, Rejection> {
        if self.state.step(typed).is_some() {
            return Ok(typed.to_owned());
        }
        let matches: Vec<&str> = self
            .state
            .steps
            .iter()
            .filter(|step| step.key.rsplit('.').next() == Some(typed) && wanted(step))
            .map(|step| step.key.as_str())
            .collect();
        let instance_of =
            |step: &Arc<super::state::StepState>| step.key.rsplit('.').next() == Some(typed);
        match matches.as_slice() {
            [one] => Ok((*one).to_owned()),
            // The step exists but cannot take the request now: a conflict, not a missing step.
            [] if self.state.steps.iter().any(instance_of) => Err(Rejection::Conflict(format!(
                "step {typed:?} of run {} is in no state this request applies to (see `runbook show {}`)",
                self.state.id, self.state.id
            ))),
            [] if self.definition().all_steps().iter().any(|step| step.id == typed) => {
                Err(Rejection::Conflict(format!(
                    "step {typed:?} of run {} has not started yet: there is nothing to act on",
                    self.state.id
                )))
            }
            [] => Err(Rejection::NotFound(format!(
                "run {} has no step {typed:?}",
                self.state.id
            ))),
            many => Err(Rejection::Conflict(format!(
                "step {typed:?} is ambiguous in run {}: {}",
                self.state.id,
                many.join(", ")
            ))),
        }
    }

    fn approve(
        &mut self,
        step: Option<String>,
        by: Actor,
        comment: Option<String>,
    ) -> Result<(), Rejection> {
        self.ensure_not_finished()?;
        let waiting = |step: &super::state::StepState| {
            step.waiting_for == Some(WaitingFor::Approval) && step.status == StepStatus::Waiting
        };
        let key = match step {
            Some(typed) => {
                let key = self.resolve_step(&typed, waiting)?;
                if !self.state.step(&key).is_some_and(waiting) {
                    return Err(Rejection::Conflict(format!(
                        "step {key} of run {} is not waiting for an approval",
                        self.state.id
                    )));
                }
                key
            }
            None => {
                let pending: Vec<String> = self
                    .state
                    .steps
                    .iter()
                    .filter(|step| waiting(step))
                    .map(|step| step.key.clone())
                    .collect();
                match pending.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(Rejection::Conflict(format!(
                            "run {} is not waiting for an approval",
                            self.state.id
                        )))
                    }
                    many => {
                        return Err(Rejection::Conflict(format!(
                            "run {} waits for several approvals ({}): name one with --step",
                            self.state.id,
                            many.join(", ")
                        )))
                    }
                }
            }
        };
        self.check_approver(&key, &by)?;
        self.emit(EventKind::Approved {
            step: key.clone(),
            by: by.clone(),
            comment: comment.clone(),
        });
        self.succeed(&key, json!({"approved_by": by.uid, "comment": comment}));
        Ok(())
    }

    /// The approval gates a skip or retry of `key` would pass without an `approve`: `key`
    /// itself if it is a gate, every gate under it (a loop's iterations) that was not approved,
    /// and, for a loop, the gates of its body (iterations not started yet have them too).
    fn gates_passed_by(&self, key: &str) -> Vec<String> {
        let nested = format!("{key}[");
        let mut gates: Vec<String> = self
            .state
            .steps
            .iter()
            .filter(|step| step.key == key || step.key.starts_with(&nested))
            .filter(|step| step.action == "approval" && step.status != StepStatus::Succeeded)
            .map(|step| step.key.clone())
            .collect();
        let definition = self.definition();
        if let Some(for_each) = definition.step(key).and_then(|step| step.for_each.as_ref()) {
            let mut body: Vec<&Step> = for_each.steps.iter().collect();
            while let Some(step) = body.pop() {
                if step.action == "approval" {
                    gates.push(format!("{key}[*].{}", step.id));
                }
                if let Some(inner) = &step.for_each {
                    body.extend(inner.steps.iter());
                }
            }
        }
        gates
    }

    /// Whether a gate wants someone other than the run's starter: its rendered input says so,
    /// or (a gate not started yet) its definition does, literally or by a template (which is
    /// taken to say yes: the rule cannot be weaker than what the gate may render to).
    fn wants_distinct_approver(&self, gate: &str) -> bool {
        if let Some(step) = self.state.step(gate) {
            if !step.input.is_null() {
                return step.input.get("distinct_approver") == Some(&Value::Bool(true));
            }
        }
        let definition = self.definition();
        definition
            .step(gate)
            .and_then(|step| step.with.get("distinct_approver"))
            .is_some_and(|value| value == &Value::Bool(true) || value.is_string())
    }

    /// The rules of an approval gate, which hold for whoever passes it, by `approve` or by
    /// `skip`/`retry`: a gate with `distinct_approver = true` is not passed by the run's starter.
    fn check_approver(&self, gate: &str, by: &Actor) -> Result<(), Rejection> {
        if self.wants_distinct_approver(gate) && by.uid == self.state.started_by.uid {
            return Err(Rejection::Conflict(format!(
                "step {gate} of run {} must be approved by someone other than uid {}, who started the run",
                self.state.id, by.uid
            )));
        }
        Ok(())
    }

    /// A skip or retry that passes approval gates is an approval of each: the gates' rules
    /// apply, and the operator must say why (the comment is journaled with who did it).
    fn check_gates_passed(
        &self,
        key: &str,
        verb: &str,
        by: &Actor,
        comment: &Option<String>,
    ) -> Result<(), Rejection> {
        let gates = self.gates_passed_by(key);
        if gates.is_empty() {
            return Ok(());
        }
        for gate in &gates {
            self.check_approver(gate, by).map_err(|rejection| match rejection {
                Rejection::Conflict(message) if gate != key => Rejection::Conflict(format!(
                    "{verb} of step {key} would pass approval gate {gate} without an approval: {message}"
                )),
                Rejection::Conflict(message) => Rejection::Conflict(format!(
                    "{verb} of approval gate {key} counts as its approval: {message}"
                )),
                other => other,
            })?;
        }
        if comment.as_deref().is_none_or(|text| text.trim().is_empty()) {
            // A loop's step (`each[1].gate`) is a glob to the shell: quoted in the command.
            let word = if key.contains(['[', ']']) {
                format!("'{key}'")
            } else {
                key.to_owned()
            };
            let what = if gates.len() == 1 && gates[0] == key {
                format!(
                    "{verb} of approval gate {key} of run {} is an approval of it",
                    self.state.id
                )
            } else {
                format!(
                    "{verb} of step {key} of run {} passes approval gate{} {}",
                    self.state.id,
                    if gates.len() == 1 { "" } else { "s" },
                    gates.join(", ")
                )
            };
            return Err(Rejection::Invalid {
                message: format!(
                    "{what}: say why with a comment (`runbook {verb} {} {word} --comment REASON`); \
                     it is journaled with your uid",
                    self.state.id,
                ),
                field: "comment".to_owned(),
            });
        }
        Ok(())
    }

    fn retry(
        &mut self,
        typed: String,
        by: Actor,
        comment: Option<String>,
    ) -> Result<(), Rejection> {
        self.ensure_not_finished()?;
        let definition = self.definition();
        if self.state.rollback.is_some() {
            let failed_undo = |step: &super::state::StepState| {
                step.undo.as_ref().is_some_and(|undo| {
                    matches!(
                        undo.status,
                        StepStatus::Failed | StepStatus::Interrupted | StepStatus::Canceled
                    )
                })
            };
            let key = self.resolve_step(&typed, failed_undo)?;
            if !self.state.step(&key).is_some_and(failed_undo) {
                return Err(Rejection::Conflict(format!(
                    "run {} is rolling back and the undo of {key} has not failed",
                    self.state.id
                )));
            }
            self.emit(EventKind::RetryRequested {
                step: key.clone(),
                by,
                comment,
            });
            self.start_undo(&key);
            return Ok(());
        }
        if self.state.paused.is_some() {
            return Err(Rejection::Conflict(format!(
                "run {} is paused: resume it first (a paused run starts nothing)",
                self.state.id
            )));
        }
        // Only the step the run waits on the operator for: a failure the run went on past
        // (`on_failure = "continue"`), or one in an iteration that has ended, is history.
        let attention_step = self
            .state
            .attention
            .as_ref()
            .map(|attention| attention.step.clone());
        let retryable = |step: &super::state::StepState| {
            matches!(step.status, StepStatus::Failed | StepStatus::Interrupted)
                && attention_step.as_deref() == Some(step.key.as_str())
        };
        let key = self.resolve_step(&typed, retryable)?;
        let Some(state) = self.state.step(&key).cloned() else {
            return Err(Rejection::NotFound(format!(
                "run {} has no started step {typed:?}",
                self.state.id
            )));
        };
        if !retryable(&state) {
            return Err(Rejection::Conflict(format!(
                "step {key} of run {} is {}: only the failed or interrupted step the run waits on can be retried{}",
                self.state.id,
                state.status.name(),
                match &attention_step {
                    Some(waiting) => format!(" (it waits on {waiting})"),
                    None => String::new(),
                }
            )));
        }
        // A step of a loop that has ended (its timeout fired) is history too: a new attempt
        // would outlive the loop, and the run could end with it in flight.
        let ended_loop = key
            .match_indices('[')
            .map(|(at, _)| &key[..at])
            .find(|loop_key| {
                self.state
                    .step(loop_key)
                    .is_some_and(|loop_state| !loop_state.status.is_active())
            });
        if let Some(loop_key) = ended_loop {
            return Err(Rejection::Conflict(format!(
                "step {key} of run {} is in loop {loop_key}, which has ended: skip it, or cancel or roll back the run",
                self.state.id
            )));
        }
        let Some(step) = definition.step(&key) else {
            return Err(Rejection::NotFound(format!(
                "step {key} is not in the definition of run {}",
                self.state.id
            )));
        };
        if step.for_each.is_some()
            && state
                .iterations
                .as_ref()
                .is_some_and(|iterations| !iterations.is_empty())
        {
            return Err(Rejection::Conflict(format!(
                "step {key} is a loop that already ran iterations; its steps were stopped: skip it, cancel or roll back"
            )));
        }
        self.check_gates_passed(&key, "retry", &by, &comment)?;
        self.emit(EventKind::RetryRequested {
            step: key.clone(),
            by,
            comment,
        });
        if step.for_each.is_some() {
            self.start_step(step, &key);
        } else {
            self.start_attempt(step, &key, state.attempts + 1);
        }
        Ok(())
    }

    fn skip(&mut self, typed: String, by: Actor, comment: Option<String>) -> Result<(), Rejection> {
        self.ensure_not_finished()?;
        if self.state.rollback.is_some() {
            let failed_undo = |step: &super::state::StepState| {
                step.undo.as_ref().is_some_and(|undo| {
                    matches!(
                        undo.status,
                        StepStatus::Failed | StepStatus::Interrupted | StepStatus::Canceled
                    )
                })
            };
            let key = self.resolve_step(&typed, failed_undo)?;
            if !self.state.step(&key).is_some_and(failed_undo) {
                return Err(Rejection::Conflict(format!(
                    "run {} is rolling back and the undo of {key} has not failed",
                    self.state.id
                )));
            }
            self.emit(EventKind::UndoSkipped {
                step: key,
                by,
                comment,
            });
            return Ok(());
        }
        let attention_step = self
            .state
            .attention
            .as_ref()
            .map(|attention| attention.step.clone());
        let skippable = |step: &super::state::StepState| {
            (matches!(step.status, StepStatus::Failed | StepStatus::Interrupted)
                && attention_step.as_deref() == Some(step.key.as_str()))
                || (step.status == StepStatus::Waiting
                    && matches!(
                        step.waiting_for,
                        Some(WaitingFor::Timer | WaitingFor::Poll | WaitingFor::Retry)
                    ))
        };
        let key = self.resolve_step(&typed, skippable)?;
        let Some(state) = self.state.step(&key).cloned() else {
            return Err(Rejection::NotFound(format!(
                "run {} has no started step {typed:?}",
                self.state.id
            )));
        };
        if !skippable(&state) {
            let hint = match state.waiting_for {
                Some(WaitingFor::Approval) => " (approve it instead)",
                _ => "",
            };
            return Err(Rejection::Conflict(format!(
                "step {key} of run {} is {}: only a failed, interrupted or waiting step can be skipped{hint}",
                self.state.id,
                state.status.name()
            )));
        }
        self.check_gates_passed(&key, "skip", &by, &comment)?;
        self.cancel_timers(Some(&key));
        self.emit(EventKind::StepSkipped {
            step: key,
            reason: "skipped by operator".to_owned(),
            by: Some(by),
            comment,
        });
        Ok(())
    }

    fn rollback(&mut self, by: Actor, comment: Option<String>) -> Result<(), Rejection> {
        if self.state.status == super::state::RunStatus::RolledBack {
            return Err(Rejection::Conflict(format!(
                "run {} has already ended (rolled_back)",
                self.state.id
            )));
        }
        // (A canceled rollback is over: a new one may run what it left.)
        if self.state.rollback.is_some() && !self.state.status.is_terminal() {
            return Err(Rejection::Conflict(format!(
                "run {} is already rolling back",
                self.state.id
            )));
        }
        let queue = self.state.undos_left();
        if self.state.status == super::state::RunStatus::Canceled && queue.is_empty() {
            // A canceled run is reopened only for undos it still owes.
            return Err(Rejection::Conflict(format!(
                "run {} has already ended (canceled) and no undo of it is left to run",
                self.state.id
            )));
        }
        self.emit(EventKind::RollbackStarted { by, comment, queue });
        self.cancel_active(None);
        Ok(())
    }

    // ----- starting steps ----------------------------------------------------------------------

    fn start_step(&mut self, step: &Step, key: &str) {
        // The context holds every step's view: built only when a template needs it.
        let scope = if step.when.is_some() || step.for_each.is_some() {
            context::for_step(&self.state, key)
        } else {
            Value::Null
        };
        if let Some(condition) = &step.when {
            match template::is_true(condition, &scope) {
                Ok(true) => {}
                Ok(false) => {
                    self.emit(EventKind::StepSkipped {
                        step: key.to_owned(),
                        reason: format!("when: {condition}"),
                        by: None,
                        comment: None,
                    });
                    return;
                }
                Err(message) => {
                    self.emit(EventKind::StepStarted {
                        step: key.to_owned(),
                        attempt: 1,
                        call: 0,
                        action: "noop".to_owned(),
                        input: Value::Null,
                    });
                    self.fail(key, format!("when: {message}"), false);
                    return;
                }
            }
        }
        if let Some(for_each) = &step.for_each {
            let items = template::render(&for_each.items, &scope).and_then(|items| match items {
                Value::Array(items) => Ok(items),
                Value::Null => Ok(Vec::new()),
                other => Err(template::Error::Invalid(format!(
                    "for_each: expected a list, got {other}"
                ))),
            });
            match items {
                Ok(items) => {
                    self.emit(EventKind::StepStarted {
                        step: key.to_owned(),
                        attempt: 1,
                        call: 0,
                        action: "for_each".to_owned(),
                        input: Value::Array(items),
                    });
                    // A timeout that cannot be rendered has failed the loop already.
                    let _ = self.arm_timeout(step, key);
                }
                Err(message) => {
                    self.emit(EventKind::StepStarted {
                        step: key.to_owned(),
                        attempt: 1,
                        call: 0,
                        action: "for_each".to_owned(),
                        input: Value::Null,
                    });
                    self.fail(key, message.to_string(), false);
                }
            }
            return;
        }
        self.start_attempt(step, key, 1);
    }

    /// A duration of the step, fixed or rendered from its template.
    fn step_duration(
        &self,
        key: &str,
        fixed: Option<std::time::Duration>,
        template: &Option<String>,
        field: &str,
    ) -> Result<Option<std::time::Duration>, String> {
        let Some(template) = template else {
            return Ok(fixed);
        };
        let scope = context::for_step(&self.state, key);
        let rendered = template::render(&Value::String(template.clone()), &scope)
            .map_err(|message| format!("{field}: {message}"))?;
        let text = match rendered {
            Value::String(text) => text,
            other => other.to_string(),
        };
        crate::duration::parse(&text)
            .map(Some)
            .map_err(|message| format!("{field}: {message}"))
    }

    /// Arms the step's overall timeout when it first starts; `false` when the step failed.
    fn arm_timeout(&mut self, step: &Step, key: &str) -> bool {
        let armed = self
            .state
            .timers
            .iter()
            .any(|timer| timer.step == key && timer.purpose == TimerPurpose::Timeout);
        if armed {
            return true;
        }
        match self.step_duration(key, step.timeout, &step.timeout_template, "timeout") {
            Ok(Some(timeout)) => {
                self.arm(
                    TimerPurpose::Timeout,
                    key,
                    crate::duration::after(self.now, timeout),
                );
                true
            }
            Ok(None) => true,
            Err(message) => {
                self.fail(key, message, false);
                false
            }
        }
    }

    /// Starts attempt (or poll) `attempt` of an action step.
    fn start_attempt(&mut self, step: &Step, key: &str, attempt: u32) {
        let scope = if template::has_template(&step.with) {
            context::for_step(&self.state, key)
        } else {
            Value::Null
        };
        let input = match template::render(&step.with, &scope) {
            Ok(input) => input,
            Err(message) => {
                self.emit(EventKind::StepStarted {
                    step: key.to_owned(),
                    attempt,
                    call: 0,
                    action: step.action.clone(),
                    input: Value::Null,
                });
                self.fail(key, format!("with: {message}"), false);
                return;
            }
        };
        let call = self.state.next_call;
        self.emit(EventKind::StepStarted {
            step: key.to_owned(),
            attempt,
            call,
            action: step.action.clone(),
            input: input.clone(),
        });
        if !self.arm_timeout(step, key) {
            return;
        }
        // The core actions decided here get their rendered input checked against their schema
        // here (the runtime checks the others before their call).
        if let Some(schema) = crate::action::schema::core(&step.action) {
            let problems = schema.check(&input, true);
            if !problems.is_empty() {
                let problems: Vec<String> = problems
                    .iter()
                    .map(|problem| format!("with.{problem}"))
                    .collect();
                let message = format!(
                    "{}: the rendered input does not fit: {}",
                    step.action,
                    problems.join("; ")
                );
                self.fail(key, message, false);
                return;
            }
        }
        match step.action.as_str() {
            "noop" => {
                self.complete(key, Ok(input));
                self.yield_after_commit();
            }
            "wait" => match wait_deadline(&input, self.now) {
                Ok(fire_at) => self.arm(TimerPurpose::Wait, key, fire_at),
                Err(message) => self.fail(key, message, false),
            },
            "window" => {
                let expression = input
                    .get("cron")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let zone = input.get("tz").and_then(Value::as_str).unwrap_or("UTC");
                match calendar::Calendar::parse(expression, zone)
                    .and_then(|calendar| calendar.next_within_horizon(self.now))
                {
                    Ok(fire_at) => self.arm(TimerPurpose::Window, key, fire_at),
                    Err(message) => self.fail(key, message, false),
                }
            }
            "approval" => {
                let prompt = input
                    .get("prompt")
                    .and_then(Value::as_str)
                    .unwrap_or("approve to continue")
                    .to_owned();
                self.emit(EventKind::ApprovalRequested {
                    step: key.to_owned(),
                    prompt,
                });
            }
            action => self.effects.push(Effect::Call(Call {
                run_id: self.state.id,
                call,
                step: key.to_owned(),
                attempt,
                undo: false,
                action: action.to_owned(),
                input,
            })),
        }
    }

    fn start_undo(&mut self, key: &str) {
        let definition = self.definition();
        let Some(undo) = definition.step(key).and_then(|step| step.undo.as_ref()) else {
            return;
        };
        let mut scope = context::for_step(&self.state, key);
        let output = self
            .state
            .step(key)
            .and_then(|step| step.output.clone())
            .unwrap_or(Value::Null);
        if let Some(map) = scope.as_object_mut() {
            map.insert("output".to_owned(), output);
        }
        let attempt = self
            .state
            .step(key)
            .and_then(|step| step.undo.as_ref())
            .map_or(1, |undo| undo.attempts + 1);
        let call = self.state.next_call;
        match template::render(&undo.with, &scope) {
            Ok(input) => {
                self.emit(EventKind::UndoStarted {
                    step: key.to_owned(),
                    attempt,
                    call,
                    action: undo.action.clone(),
                    input: input.clone(),
                });
                if undo.action == "noop" {
                    self.emit(EventKind::UndoSucceeded {
                        step: key.to_owned(),
                        output: input,
                    });
                } else {
                    self.effects.push(Effect::Call(Call {
                        run_id: self.state.id,
                        call,
                        step: key.to_owned(),
                        attempt,
                        undo: true,
                        action: undo.action.clone(),
                        input,
                    }));
                }
            }
            Err(message) => {
                self.emit(EventKind::UndoStarted {
                    step: key.to_owned(),
                    attempt,
                    call,
                    action: undo.action.clone(),
                    input: Value::Null,
                });
                self.emit(EventKind::UndoFailed {
                    step: key.to_owned(),
                    error: format!("undo.with: {message}"),
                });
            }
        }
    }

    // ----- advancing -----------------------------------------------------------------------------

    /// Starts everything that can start, until nothing changes.
    fn yield_after_commit(&mut self) {
        if !self.yielded {
            self.yielded = true;
            self.effects.push(Effect::Continue);
        }
    }

    fn advance(&mut self) {
        loop {
            if self.yielded {
                return;
            }
            let before = self.events.len();
            self.advance_once();
            if self.events.len() == before || self.events.len() > MAX_EVENTS_PER_DECISION {
                return;
            }
        }
    }

    fn advance_once(&mut self) {
        if self.state.status.is_terminal() {
            return;
        }
        if self.state.rollback.is_some() {
            self.advance_rollback();
            return;
        }
        if self.state.paused.is_some() || self.state.attention.is_some() {
            return;
        }
        let definition = self.definition();
        match self.advance_sequence(&definition.steps, "") {
            Progress::Done => self.emit(EventKind::RunFinished {
                state: FinalState::Succeeded,
                error: None,
            }),
            Progress::Busy => {}
            Progress::Blocked {
                reason,
                step,
                message,
            } => self.emit(EventKind::NeedsAttention {
                reason,
                step,
                message,
            }),
            Progress::Abort { error } => {
                self.cancel_active(None);
                self.emit(EventKind::RunFinished {
                    state: FinalState::Failed,
                    error: Some(error),
                });
            }
        }
    }

    fn advance_sequence(&mut self, steps: &[Step], prefix: &str) -> Progress {
        // The top level starts after the steps known done (see `RunState::done_prefix`).
        let top = prefix.is_empty();
        let start = if top {
            self.state.done_prefix.0.min(steps.len())
        } else {
            0
        };
        for (position, step) in steps.iter().enumerate().skip(start) {
            let key = if top {
                step.id.clone()
            } else {
                format!("{prefix}.{}", step.id)
            };
            let Some(state) = self.state.step(&key) else {
                self.start_step(step, &key);
                return Progress::Busy;
            };
            match state.status {
                StepStatus::Succeeded | StepStatus::Skipped => {
                    if top && position == self.state.done_prefix.0 {
                        self.state.done_prefix.0 += 1;
                    }
                    continue;
                }
                StepStatus::Failed => match step.on_failure {
                    OnFailure::Continue => continue,
                    OnFailure::Abort => {
                        return Progress::Abort { error: format!("step {key} failed: {}", state.error.clone().unwrap_or_default()) }
                    }
                    OnFailure::Pause => {
                        return Progress::Blocked {
                            reason: AttentionReason::StepFailed,
                            step: key.clone(),
                            message: format!(
                                "step {key} failed: {}",
                                state.error.clone().unwrap_or_default()
                            ),
                        }
                    }
                },
                StepStatus::Interrupted => {
                    return Progress::Blocked {
                        reason: AttentionReason::Interrupted,
                        step: key.clone(),
                        message: format!(
                            "step {key} was running when the daemon stopped, nothing is left to re-attach to, \
                             and it is not idempotent: its outcome is unknown; check it before you retry or skip it"
                        ),
                    }
                }
                StepStatus::Canceled => return Progress::Busy,
                StepStatus::Running | StepStatus::Waiting => {
                    return match &step.for_each {
                        Some(_) => self.advance_loop(step, &key),
                        None => Progress::Busy,
                    }
                }
            }
        }
        Progress::Done
    }

    fn advance_loop(&mut self, step: &Step, key: &str) -> Progress {
        let Some(for_each) = &step.for_each else {
            return Progress::Busy;
        };
        let width = for_each.width as usize;
        // Iterations start in index order (the lowest pending first), so every one that is not
        // pending comes before every pending one: a decision looks at those after the leading
        // done ones up to `width` pending ones, never at the whole list.
        let (count, running, pending) = {
            let Some(state) = self.state.step(key) else {
                return Progress::Busy;
            };
            let iterations = state.iterations.clone().unwrap_or_default();
            let mut running = Vec::new();
            let mut pending = Vec::new();
            let from = state.iterations_done.0.min(iterations.len());
            for (index, iteration) in iterations.skip(from).iter().enumerate() {
                match iteration.status {
                    IterationStatus::Done => {}
                    IterationStatus::Running => running.push(from + index),
                    IterationStatus::Pending => {
                        pending.push(from + index);
                        if pending.len() >= width.max(1) {
                            break;
                        }
                    }
                }
            }
            (iterations.len(), running, pending)
        };
        let mut blocked = None;
        for &index in &running {
            let before = self.events.len();
            match self.advance_sequence(&for_each.steps, &format!("{key}[{index}]")) {
                Progress::Done => {
                    self.emit(EventKind::IterationFinished {
                        step: key.to_owned(),
                        index,
                    });
                    return Progress::Busy;
                }
                Progress::Busy => {}
                Progress::Blocked {
                    reason,
                    step,
                    message,
                } => {
                    blocked.get_or_insert(Progress::Blocked {
                        reason,
                        step,
                        message,
                    });
                }
                Progress::Abort { error } => return Progress::Abort { error },
            }
            if self.events.len() != before {
                return Progress::Busy;
            }
        }
        if let Some(blocked) = blocked {
            return blocked;
        }
        let running = running.len();
        if pending.is_empty() {
            if running == 0 {
                // Each iteration's outputs, by the loop's own step ids (looked up by key: a
                // walk over every step state per iteration was quadratic in the items).
                let outputs: Vec<Value> = (0..count)
                    .map(|index| {
                        let outputs: Map<String, Value> = for_each
                            .steps
                            .iter()
                            .filter_map(|inner| {
                                let state =
                                    self.state.step(&format!("{key}[{index}].{}", inner.id))?;
                                Some((
                                    inner.id.clone(),
                                    state.output.clone().unwrap_or(Value::Null),
                                ))
                            })
                            .collect();
                        Value::Object(outputs)
                    })
                    .collect();
                self.succeed(key, json!({ "iterations": outputs }));
            }
            return Progress::Busy;
        }
        let to_start = match for_each.mode {
            Concurrency::Serial if running == 0 => width.min(pending.len()),
            Concurrency::Serial => 0,
            Concurrency::Parallel => width.saturating_sub(running).min(pending.len()),
        };
        for &index in pending.iter().take(to_start) {
            self.emit(EventKind::IterationStarted {
                step: key.to_owned(),
                index,
            });
        }
        Progress::Busy
    }

    fn advance_rollback(&mut self) {
        let Some(rollback) = self.state.rollback.clone() else {
            return;
        };
        if self.state.paused.is_some() || self.state.attention.is_some() {
            return;
        }
        if self.state.steps.iter().any(|step| step.aborting.is_some()) {
            return; // an aborted call has not reported yet; its result is ignored, but wait for it
        }
        for key in &rollback.queue {
            let undo = self.state.step(key).and_then(|step| step.undo.clone());
            match undo.map(|undo| undo.status) {
                None => {
                    self.start_undo(key);
                    return;
                }
                Some(StepStatus::Succeeded | StepStatus::Skipped) => continue,
                // Stopped when a rollback was canceled: its command may have done part or all of
                // its work. Run again only if it may be (`idempotent`); else the operator says.
                Some(StepStatus::Canceled) => {
                    let idempotent = self
                        .definition()
                        .step(key)
                        .and_then(|step| step.undo.as_ref())
                        .is_some_and(|undo| undo.idempotent);
                    if idempotent {
                        self.start_undo(key);
                    } else {
                        self.emit(EventKind::NeedsAttention {
                            reason: AttentionReason::Interrupted,
                            step: key.clone(),
                            message: format!("the undo of {key} was stopped when the run was canceled: its outcome is unknown; check it before you retry or skip it"),
                        });
                    }
                    return;
                }
                Some(StepStatus::Failed) => {
                    let error = self
                        .state
                        .step(key)
                        .and_then(|step| step.undo.as_ref())
                        .and_then(|undo| undo.error.clone())
                        .unwrap_or_default();
                    self.emit(EventKind::NeedsAttention {
                        reason: AttentionReason::UndoFailed,
                        step: key.clone(),
                        message: format!("the undo of {key} failed: {error}"),
                    });
                    return;
                }
                Some(StepStatus::Interrupted) => {
                    self.emit(EventKind::NeedsAttention {
                        reason: AttentionReason::Interrupted,
                        step: key.clone(),
                        message: format!("the undo of {key} was running when the daemon stopped: its outcome is unknown; check it before you retry or skip it"),
                    });
                    return;
                }
                Some(_) => return,
            }
        }
        self.emit(EventKind::RunFinished {
            state: FinalState::RolledBack,
            error: None,
        });
    }
}

fn wait_deadline(input: &Value, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Some(duration) = input.get("duration").and_then(Value::as_str) {
        return crate::duration::parse(duration)
            .map(|duration| crate::duration::after(now, duration))
            .map_err(|message| format!("duration: {message}"));
    }
    if let Some(until) = input.get("until").and_then(Value::as_str) {
        let until = DateTime::parse_from_rfc3339(until)
            .map(|instant| instant.with_timezone(&Utc))
            .map_err(|error| format!("until: {until:?} is not an RFC 3339 instant: {error}"))?;
        crate::duration::check_deadline(until, now)
            .map_err(|message| format!("until: {message}"))?;
        return Ok(until);
    }
    Err("wait needs `duration` or `until`".to_owned())
}
