//! Advancing a run: what can start next in each sequence and loop, one step per commit, and
//! the rollback queue.

use serde_json::json;

use super::*;

impl Decider {
    /// Starts everything that can start, until nothing changes.
    pub(super) fn yield_after_commit(&mut self) {
        if !self.yielded {
            self.yielded = true;
            self.effects.push(Effect::Continue);
        }
    }

    pub(super) fn advance(&mut self) {
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

    pub(super) fn advance_once(&mut self) {
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

    pub(super) fn advance_sequence(&mut self, steps: &[Step], prefix: &str) -> Progress {
        // The top level starts after the steps known done (see `RunState::done_prefix`).
        let top = prefix.is_empty();
        let start = if top {
            self.state.done_prefix.0.min(steps.len())
        } else {
            0
        };
        for (position, step) in steps.iter().enumerate().skip(start) {
            let key = step_key::child(prefix, &step.id);
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
                    return match step.for_each() {
                        Some(_) => self.advance_loop(step, &key),
                        None => Progress::Busy,
                    }
                }
            }
        }
        Progress::Done
    }

    pub(super) fn advance_loop(&mut self, step: &Step, key: &str) -> Progress {
        let Some(for_each) = step.for_each() else {
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
            match self.advance_sequence(&for_each.steps, &step_key::iteration(key, index)) {
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
                                let state = self.state.step(&step_key::child(
                                    &step_key::iteration(key, index),
                                    &inner.id,
                                ))?;
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

    pub(super) fn advance_rollback(&mut self) {
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
