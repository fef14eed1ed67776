//! Results coming back to a run: a call's end (or an aborted one's), a timer, a call cut by
//! a crash or that never started.

use serde_json::json;

use super::*;

impl Decider {
    pub(super) fn on_call_finished(&mut self, call: CallId, result: Result<Value, ActionFailure>) {
        if let Some(step) = self.state.step_with_call(call).map(|step| step.key.clone()) {
            self.complete(&step, result);
            return;
        }
        let undo_of = self.state.step_with_undo_call(call);
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
    pub(super) fn on_aborted_call_result(
        &mut self,
        call: CallId,
        result: Result<Value, ActionFailure>,
    ) {
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
    pub(super) fn on_aborted_call_ended(&mut self, call: CallId) {
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
    pub(super) fn complete(&mut self, key: &str, result: Result<Value, ActionFailure>) {
        let definition = self.definition();
        let Some(step) = definition.step(key) else {
            return;
        };
        match result {
            Ok(output) => match &step.until {
                None => self.succeed(key, output),
                Some(condition) => {
                    let wanted = context::Wanted::of([(
                        condition.as_str(),
                        template::TemplateKind::Expression,
                    )]);
                    let mut scope = context::for_templates(&self.state, key, &wanted);
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
                                .step_duration(key, step.every.as_ref(), "every")
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

    pub(super) fn succeed(&mut self, key: &str, output: Value) {
        self.emit(EventKind::StepSucceeded {
            step: key.to_owned(),
            output,
        });
        self.cancel_timers(Some(key));
    }

    pub(super) fn fail(&mut self, key: &str, error: String, retryable: bool) {
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

    pub(super) fn cancel_active_children_and_timers(&mut self, key: &str) {
        if self
            .state
            .steps
            .iter()
            .any(|step| step_key::is_nested_in(&step.key, key) && step.status.is_active())
        {
            let children: Vec<String> = self
                .state
                .steps
                .iter()
                .filter(|step| step_key::is_nested_in(&step.key, key) && step.status.is_active())
                .map(|step| step.key.clone())
                .collect();
            for child in children {
                self.cancel_active(Some(&child));
            }
        }
        self.cancel_timers(Some(key));
    }

    pub(super) fn on_timer(&mut self, timer: TimerId) {
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
                        .step_duration(key, step.timeout.as_ref(), "timeout")
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

    pub(super) fn on_interrupted(&mut self, call: CallId) {
        let definition = self.definition();
        if let Some(step) = self.state.step_with_call(call).cloned() {
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
        if let Some(step) = self.state.step_with_undo_call(call).cloned() {
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
    pub(super) fn on_not_started(&mut self, call: CallId, reason: String) {
        let definition = self.definition();
        if let Some(step) = self.state.step_with_call(call).cloned() {
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
            .step_with_undo_call(call)
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
}
