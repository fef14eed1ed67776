//! Operator requests: approve, retry, skip, rollback, each checked against the step it names.

use serde_json::json;

use super::*;

impl Decider {
    /// Resolves what an operator typed to a step instance: an exact key, or an id that names
    /// exactly one instance in the state `wanted` accepts.
    pub(super) fn resolve_step(
        &self,
        typed: &str,
        wanted: impl Fn(&crate::machine::state::StepState) -> bool,
    ) -> Result<String, Rejection> {
        if self.state.step(typed).is_some() {
            return Ok(typed.to_owned());
        }
        let matches: Vec<&str> = self
            .state
            .steps
            .iter()
            .filter(|step| step_key::id(&step.key) == typed && wanted(step))
            .map(|step| step.key.as_str())
            .collect();
        let instance_of =
            |step: &Arc<crate::machine::state::StepState>| step_key::id(&step.key) == typed;
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

    pub(super) fn approve(
        &mut self,
        step: Option<String>,
        by: Actor,
        comment: Option<String>,
    ) -> Result<(), Rejection> {
        self.ensure_not_finished()?;
        let waiting = |step: &crate::machine::state::StepState| {
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
        let mut output = json!({"approved_by": by.uid, "comment": comment});
        if let Some(user) = &by.user {
            output["approved_by_user"] = json!(user);
        }
        self.succeed(&key, output);
        Ok(())
    }

    /// The approval gates a skip or retry of `key` would pass without an `approve`: `key`
    /// itself if it is a gate, every gate under it (a loop's iterations) that was not approved,
    /// and, for a loop, the gates of its body (iterations not started yet have them too).
    pub(super) fn gates_passed_by(&self, key: &str) -> Vec<String> {
        let mut gates: Vec<String> = self
            .state
            .steps
            .iter()
            .filter(|step| step_key::is_within(&step.key, key))
            .filter(|step| {
                CoreAction::Approval.is(&step.action) && step.status != StepStatus::Succeeded
            })
            .map(|step| step.key.clone())
            .collect();
        let definition = self.definition();
        if let Some(for_each) = definition.step(key).and_then(|step| step.for_each()) {
            let mut body: Vec<&Step> = for_each.steps.iter().collect();
            while let Some(step) = body.pop() {
                if CoreAction::Approval.is(step.action()) {
                    gates.push(step_key::child(&step_key::every_iteration(key), &step.id));
                }
                if let Some(inner) = step.for_each() {
                    body.extend(inner.steps.iter());
                }
            }
        }
        gates
    }

    /// Whether a gate wants someone other than the run's starter: its rendered input says so,
    /// or (a gate not started yet) its definition does, literally or by a template (which is
    /// taken to say yes: the rule cannot be weaker than what the gate may render to).
    pub(super) fn wants_distinct_approver(&self, gate: &str) -> bool {
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
    pub(super) fn check_approver(&self, gate: &str, by: &Actor) -> Result<(), Rejection> {
        if !by.may_approve() {
            return Err(Rejection::Forbidden(format!(
                "step {gate} of run {} is an approval gate: {by} is {}, and passing a gate \
                 takes the approver role",
                self.state.id,
                by.role.map_or("without a role", |role| role.name())
            )));
        }
        if self.wants_distinct_approver(gate) && by.same_person(&self.state.started_by) {
            return Err(Rejection::Conflict(format!(
                "step {gate} of run {} must be approved by someone other than {by}, who started the run",
                self.state.id
            )));
        }
        Ok(())
    }

    /// A skip or retry that passes approval gates is an approval of each: the gates' rules
    /// apply, and the operator must say why (the comment is journaled with who did it).
    pub(super) fn check_gates_passed(
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

    /// During a rollback, a retry or skip is of an undo that failed (or was cut short): the
    /// step `typed` names, which must be one.
    fn failed_undo(&self, typed: &str) -> Result<String, Rejection> {
        let failed_undo = |step: &crate::machine::state::StepState| {
            step.undo.as_ref().is_some_and(|undo| {
                matches!(
                    undo.status,
                    StepStatus::Failed | StepStatus::Interrupted | StepStatus::Canceled
                )
            })
        };
        let key = self.resolve_step(typed, failed_undo)?;
        if !self.state.step(&key).is_some_and(failed_undo) {
            return Err(Rejection::Conflict(format!(
                "run {} is rolling back and the undo of {key} has not failed",
                self.state.id
            )));
        }
        Ok(key)
    }

    pub(super) fn retry(
        &mut self,
        typed: String,
        by: Actor,
        comment: Option<String>,
    ) -> Result<(), Rejection> {
        self.ensure_not_finished()?;
        let definition = self.definition();
        if self.state.rollback.is_some() {
            let key = self.failed_undo(&typed)?;
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
        let retryable = |step: &crate::machine::state::StepState| {
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
        if step.for_each().is_some()
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
        if step.for_each().is_some() {
            self.start_step(step, &key);
        } else {
            self.start_attempt(step, &key, state.attempts + 1);
        }
        Ok(())
    }

    pub(super) fn skip(
        &mut self,
        typed: String,
        by: Actor,
        comment: Option<String>,
    ) -> Result<(), Rejection> {
        self.ensure_not_finished()?;
        if self.state.rollback.is_some() {
            let key = self.failed_undo(&typed)?;
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
        let skippable = |step: &crate::machine::state::StepState| {
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

    pub(super) fn rollback(&mut self, by: Actor, comment: Option<String>) -> Result<(), Rejection> {
        if self.state.status == crate::machine::state::RunStatus::RolledBack {
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
        if self.state.status == crate::machine::state::RunStatus::Canceled && queue.is_empty() {
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
}
