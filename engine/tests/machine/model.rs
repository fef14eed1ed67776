//! The model every decision is checked against.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use runbook_engine::machine::{evolve, Decision, Effect, EventKind, Input, RunState, StepStatus};

use super::*;

/// What the driver remembers across decisions to check them.
#[derive(Default)]
pub(crate) struct Model {
    /// Non-idempotent steps (key, undo) whose call was in flight at a restart: the outcome is
    /// unknown, so no new call of them may start before an operator's `retry`.
    pub(crate) unknown_outcome: BTreeSet<(String, bool)>,
    /// (key, attempt) of every call of a non-idempotent step that does not poll.
    pub(crate) attempts_called: BTreeSet<(String, u32)>,
    /// The un-paused time each wait step has been waiting.
    pub(crate) waits: BTreeMap<String, WaitClock>,
}

pub(crate) struct WaitClock {
    pub(crate) required_ms: i64,
    pub(crate) elapsed_ms: i64,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) done: bool,
}

impl Model {
    pub(crate) fn check_decision(
        &mut self,
        input: Option<&Input>,
        before: &RunState,
        next: &RunState,
        decision: &Decision,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let definition = next.definition.clone();
        let mut scratch = before.clone();
        let mut retried: BTreeSet<(String, bool)> = BTreeSet::new();
        for event in &decision.events {
            if event.seq != scratch.last_seq + 1 {
                return Err(format!(
                    "event seq {} follows seq {}",
                    event.seq, scratch.last_seq
                ));
            }
            if event.at != now {
                return Err(format!(
                    "event #{} is stamped {} but the decision was made at {now}",
                    event.seq, event.at
                ));
            }
            if scratch.status.is_terminal()
                && !matches!(
                    event.kind,
                    EventKind::RollbackStarted { .. }
                        | EventKind::AbortedCallEnded { .. }
                        | EventKind::AbortedCallCompleted { .. }
                )
            {
                return Err(format!(
                    "event #{} {:?} after the run ended ({})",
                    event.seq,
                    event.kind,
                    scratch.status.name()
                ));
            }
            match &event.kind {
                EventKind::StepStarted { step, action, .. } => {
                    if let Some(call) = scratch.step(step).and_then(|state| state.call) {
                        return Err(format!(
                            "step {step} started again while its call #{call} is in flight"
                        ));
                    }
                    if action == "wait" {
                        let required_ms = definition
                            .step(step)
                            .and_then(|step| step.with.get("duration"))
                            .and_then(Value::as_str)
                            .and_then(|text| runbook_engine::duration::parse(text).ok())
                            .map_or(0, |duration| duration.as_millis() as i64);
                        let since = scratch.paused.is_none().then_some(event.at);
                        self.waits.insert(
                            step.clone(),
                            WaitClock {
                                required_ms,
                                elapsed_ms: 0,
                                since,
                                done: false,
                            },
                        );
                    }
                }
                EventKind::StepSucceeded { step, .. } => {
                    let status = scratch.step(step).map(|state| state.status);
                    if !status.is_some_and(StepStatus::is_active) {
                        return Err(format!(
                            "step {step} succeeded while it was {status:?}, not running or waiting"
                        ));
                    }
                    let deadline = scratch.step(step).and_then(|state| state.fire_at);
                    if self.waits.contains_key(step) && deadline.is_none_or(|at| at > event.at) {
                        return Err(format!(
                            "wait step {step} succeeded at {} before its deadline {deadline:?}",
                            event.at
                        ));
                    }
                    if let Some(clock) = self.waits.get_mut(step) {
                        let elapsed =
                            clock.elapsed_ms + clock.since.map_or(0, |since| ms(event.at - since));
                        if elapsed < clock.required_ms {
                            return Err(format!(
                                "wait step {step} succeeded after {elapsed} ms of un-paused waiting; it must wait {} ms",
                                clock.required_ms
                            ));
                        }
                        clock.done = true;
                    }
                }
                EventKind::TimerFired { timer, fire_at, .. } => {
                    if !scratch.timers.iter().any(|active| active.timer == *timer) {
                        return Err(format!("timer {timer} fired but is not armed"));
                    }
                    if *fire_at > event.at {
                        return Err(format!("timer {timer} fired before its time"));
                    }
                }
                EventKind::TimerArmed { step, purpose, .. } => {
                    let status = scratch.step(step).map(|state| state.status);
                    if !status.is_some_and(StepStatus::is_active) {
                        return Err(format!(
                            "a {purpose:?} timer was armed for step {step}, which is {status:?}"
                        ));
                    }
                }
                EventKind::Paused { .. } => {
                    for clock in self.waits.values_mut() {
                        if let Some(since) = clock.since.take() {
                            clock.elapsed_ms += ms(event.at - since);
                        }
                    }
                }
                EventKind::Resumed { .. } => {
                    for clock in self.waits.values_mut().filter(|clock| !clock.done) {
                        clock.since = Some(event.at);
                    }
                }
                EventKind::RetryRequested { step, .. } => {
                    retried.insert((step.clone(), scratch.rollback.is_some()));
                }
                EventKind::CallNeverStarted {
                    step, undo: false, ..
                } => {
                    // That attempt never ran: it may be called again.
                    if let Some(state) = scratch.step(step) {
                        self.attempts_called.remove(&(step.clone(), state.attempts));
                    }
                }
                _ => {}
            }
            evolve(&mut scratch, event);
        }
        if to_json(&scratch) != to_json(next) {
            return Err("the decision's state is not the fold of its events".to_owned());
        }
        for effect in &decision.effects {
            let Effect::Call(call) = effect else { continue };
            // Two calls may start in a paused run: the re-run of an idempotent step whose call the
            // restart lost (it replaces a call that was in flight), and what an operator's
            // explicit `retry` starts (the machine starts it at once, pause or not).
            let allowed_while_paused = matches!(
                input,
                Some(Input::Interrupted { .. } | Input::NotStarted { .. } | Input::Retry { .. })
            );
            if next.paused.is_some() && !allowed_while_paused {
                return Err(format!(
                    "the run is paused but call #{} of {} started",
                    call.call, call.step
                ));
            }
            let Some(step) = definition.step(&call.step) else {
                return Err(format!(
                    "call #{} of {}, which is not in the definition",
                    call.call, call.step
                ));
            };
            let attempts = if call.undo {
                next.step(&call.step)
                    .and_then(|state| state.undo.as_ref())
                    .map(|undo| undo.attempts)
            } else {
                next.step(&call.step).map(|state| state.attempts)
            };
            if attempts != Some(call.attempt) {
                return Err(format!(
                    "call #{} of {} is attempt {} but the state says {attempts:?}",
                    call.call, call.step, call.attempt
                ));
            }
            let key = (call.step.clone(), call.undo);
            if !idempotent(&definition, &call.step, call.undo) {
                if self.unknown_outcome.contains(&key) && !retried.contains(&key) {
                    return Err(format!(
                        "non-idempotent {}{} was called again after a restart without an operator's retry",
                        call.step,
                        if call.undo { " (undo)" } else { "" }
                    ));
                }
                if !call.undo
                    && step.until.is_none()
                    && !self
                        .attempts_called
                        .insert((call.step.clone(), call.attempt))
                {
                    return Err(format!(
                        "non-idempotent {} was called twice in attempt {}",
                        call.step, call.attempt
                    ));
                }
            }
        }
        for key in retried {
            self.unknown_outcome.remove(&key);
        }
        Ok(())
    }
}
