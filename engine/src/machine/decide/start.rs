//! Starting steps: a step's first attempt (its `when`, loop, timeout) and each retry, and an
//! undo.

use super::*;
use crate::action::core_input::{self, Stage};

impl Decider {
    pub(super) fn start_step(&mut self, step: &Step, key: &str) {
        // The context holds every step's view: built only when a template needs it.
        let scope = if step.when.is_some() || step.for_each().is_some() {
            let mut texts = Vec::new();
            if let Some(condition) = &step.when {
                texts.push((condition.as_str(), template::TemplateKind::Expression));
            }
            let mut wanted = context::Wanted::of(texts);
            if let Some(for_each) = step.for_each() {
                wanted = wanted.and(context::Wanted::of_values(&[&for_each.items]));
            }
            context::for_templates(&self.state, key, &wanted)
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
                        call: None,
                        action: CoreAction::Noop.name().to_owned(),
                        input: Value::Null,
                    });
                    self.fail(key, format!("when: {message}"), false);
                    return;
                }
            }
        }
        if let Some(for_each) = step.for_each() {
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
                        call: None,
                        action: CoreAction::ForEach.name().to_owned(),
                        input: Value::Array(items),
                    });
                    // A timeout that cannot be rendered has failed the loop already.
                    let _ = self.arm_timeout(step, key);
                }
                Err(message) => {
                    self.emit(EventKind::StepStarted {
                        step: key.to_owned(),
                        attempt: 1,
                        call: None,
                        action: CoreAction::ForEach.name().to_owned(),
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
    pub(super) fn step_duration(
        &self,
        key: &str,
        spec: Option<&DurationSpec>,
        field: &str,
    ) -> Result<Option<std::time::Duration>, String> {
        let template = match spec {
            None => return Ok(None),
            Some(DurationSpec::Fixed(duration)) => return Ok(Some(*duration)),
            Some(DurationSpec::Template(template)) => template,
        };
        let wanted = context::Wanted::of([(template.as_str(), template::TemplateKind::Text)]);
        let scope = context::for_templates(&self.state, key, &wanted);
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
    pub(super) fn arm_timeout(&mut self, step: &Step, key: &str) -> bool {
        let armed = self
            .state
            .timers
            .iter()
            .any(|timer| timer.step == key && timer.purpose == TimerPurpose::Timeout);
        if armed {
            return true;
        }
        match self.step_duration(key, step.timeout.as_ref(), "timeout") {
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
    pub(super) fn start_attempt(&mut self, step: &Step, key: &str, attempt: u32) {
        let scope = if template::has_template(&step.with) {
            context::for_templates(&self.state, key, &context::Wanted::of_values(&[&step.with]))
        } else {
            Value::Null
        };
        let input = match template::render(&step.with, &scope) {
            Ok(input) => input,
            Err(message) => {
                self.emit(EventKind::StepStarted {
                    step: key.to_owned(),
                    attempt,
                    call: None,
                    action: step.action().to_owned(),
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
            call: Some(call),
            action: step.action().to_owned(),
            input: input.clone(),
        });
        if !self.arm_timeout(step, key) {
            return;
        }
        // The core actions decided here get their rendered input checked against their schema
        // here (the runtime checks the others before their call).
        if let Some(schema) = crate::action::schema::core(step.action()) {
            let problems = schema.check(&input, true);
            if !problems.is_empty() {
                let problems: Vec<String> = problems
                    .iter()
                    .map(|problem| format!("with.{problem}"))
                    .collect();
                let message = format!(
                    "{}: the rendered input does not fit: {}",
                    step.action(),
                    problems.join("; ")
                );
                self.fail(key, message, false);
                return;
            }
        }
        match CoreAction::of(step.action()) {
            Some(CoreAction::Noop) => {
                self.complete(key, Ok(input));
                self.yield_after_commit();
            }
            Some(CoreAction::Wait) => {
                match core_input::wait_deadline(&input, self.now, Stage::Rendered) {
                    Ok(Some(fire_at)) => self.arm(TimerPurpose::Wait, key, fire_at),
                    Ok(None) => self.fail(key, "wait: no deadline".to_owned(), false),
                    Err(message) => self.fail(key, message, false),
                }
            }
            Some(CoreAction::Window) => {
                match core_input::window_next(&input, self.now, Stage::Rendered) {
                    Ok(Some(fire_at)) => self.arm(TimerPurpose::Window, key, fire_at),
                    Ok(None) => self.fail(key, "window: no next opening".to_owned(), false),
                    Err(message) => self.fail(key, message, false),
                }
            }
            Some(CoreAction::Approval) => {
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
            _ => self.effects.push(Effect::Call(Call {
                run_id: self.state.id,
                call,
                step: key.to_owned(),
                attempt,
                undo: false,
                action: step.action().to_owned(),
                input,
            })),
        }
    }

    pub(super) fn start_undo(&mut self, key: &str) {
        let definition = self.definition();
        let Some(undo) = definition.step(key).and_then(|step| step.undo.as_ref()) else {
            return;
        };
        let wanted = context::Wanted::of_values(&[&undo.with]);
        let mut scope = context::for_templates(&self.state, key, &wanted);
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
                if CoreAction::Noop.is(&undo.action) {
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
}
