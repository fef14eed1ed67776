//! One step's fields, converted and checked where their spans are still known: its action or
//! loop, `with`, `when`, `capture`, timeout, retry, undo; and the checks of templates, text and
//! JSON values every field goes through.

use super::*;

impl Parser<'_> {
    pub(super) fn convert_step(
        &self,
        raw: &Spanned<RawStep>,
        scope: &Scope,
    ) -> Result<Step, Error> {
        let step = raw.get_ref();
        let id = step.id.get_ref().clone();
        let line = self.line_of(&raw.span());
        let at = |field: &str| format!("step {id:?}: {field}");

        // A duration, or a template that renders to one when the step starts
        // (`timeout = "{{ params.retention }}"`).
        let duration = |value: &Option<Spanned<toml::Value>>,
                        field: &str|
         -> Result<(Option<std::time::Duration>, Option<String>), Error> {
            let Some(value) = value else {
                return Ok((None, None));
            };
            let toml::Value::String(text) = value.get_ref() else {
                return Err(self.error(
                    value,
                    format!(
                        "{}: expected a duration string such as \"30s\", \"15m\" or \"72h\", got {}",
                        at(field),
                        value.get_ref()
                    ),
                ));
            };
            if text.contains("{{") {
                self.check_text(value, text, &at(field), TemplateKind::Text, scope)?;
                return Ok((None, Some(text.clone())));
            }
            crate::duration::parse(text)
                .map(|duration| (Some(duration), None))
                .map_err(|message| self.error(value, format!("{}: {message}", at(field))))
        };
        // Each field is checked on its own, so that every mistake of the step is reported.
        let (mut timeout, mut timeout_template) = self
            .keep(duration(&step.timeout, "timeout"))
            .unwrap_or_default();
        let (mut every, mut every_template) = self
            .keep(duration(&step.every, "every"))
            .unwrap_or_default();
        if let (Some(interval), Some(value)) = (every, &step.every) {
            self.keep(
                crate::duration::check_poll_interval(interval)
                    .map_err(|message| self.error(value, format!("{}: {message}", at("every")))),
            );
        }
        let on_failure = match &step.on_failure {
            None => OnFailure::Pause,
            Some(value) => match value.get_ref().as_str() {
                "pause" => OnFailure::Pause,
                "abort" => OnFailure::Abort,
                "continue" => OnFailure::Continue,
                other => {
                    self.keep::<()>(Err(self.error(
                        value,
                        format!(
                            "{}: unknown value {other:?} (pause, abort, continue)",
                            at("on_failure")
                        ),
                    )));
                    OnFailure::Pause
                }
            },
        };
        let retry = match &step.retry {
            None => None,
            Some(retry) => self.keep(self.convert_retry(retry, &at("retry"))),
        };
        let mut when = None;
        if let Some(condition) = &step.when {
            self.keep(self.check_template(condition, &at("when"), TemplateKind::Expression, scope));
            when = Some(condition.get_ref().clone());
        }

        // for_each: a loop with nested steps and no action of its own.
        if let Some(items) = &step.for_each {
            if step.action.is_some() {
                return Err(self.error(
                    raw,
                    format!(
                        "{}: a for_each step has nested `steps` and no `action`",
                        at("action")
                    ),
                ));
            }
            let Some(nested) = &step.steps else {
                return Err(self.error(
                    items,
                    format!("{}: needs nested [[steps.steps]]", at("for_each")),
                ));
            };
            let var = step
                .var
                .as_ref()
                .map(|var| var.get_ref().clone())
                .unwrap_or_else(|| "item".to_owned());
            if !is_identifier(&var)
                || template::RESERVED_NAMES.contains(&var.as_str()) && var != "item"
            {
                return Err(self.error(
                    raw,
                    format!("{}: {var:?} cannot be a loop variable", at("as")),
                ));
            }
            let items_value = toml_to_json(items.get_ref());
            match &items_value {
                Value::String(text) => {
                    self.check_text(items, text, &at("for_each"), TemplateKind::Text, scope)?
                }
                Value::Array(_) => self.check_json(items, &items_value, &at("for_each"), scope)?,
                _ => {
                    return Err(self.error(
                        items,
                        format!(
                            "{}: must be a list or a template that yields one",
                            at("for_each")
                        ),
                    ))
                }
            }
            let (mode, width) = match (&step.serial, &step.parallel) {
                (Some(_), Some(parallel)) => {
                    return Err(self.error(
                        parallel,
                        format!("{}: give `serial` or `parallel`, not both", at("parallel")),
                    ))
                }
                (Some(serial), None) => {
                    (Concurrency::Serial, self.positive(serial, &at("serial"))?)
                }
                (None, Some(parallel)) => (
                    Concurrency::Parallel,
                    self.positive(parallel, &at("parallel"))?,
                ),
                (None, None) => (Concurrency::Serial, 1),
            };
            let mut inner = scope.clone();
            inner.loop_vars.push(var.clone());
            let steps = self.convert_sequence(nested, &mut inner);
            if step.until.is_some()
                || step.every.is_some()
                || step.with.is_some()
                || step.undo.is_some()
            {
                return Err(self.error(raw, format!("{}: a for_each step takes only for_each, as, serial/parallel, when, timeout, on_failure and steps", at("for_each"))));
            }
            return Ok(Step {
                id,
                description: step.description.clone(),
                with: Value::Null,
                timeout: DurationSpec::of(timeout, timeout_template),
                retry: None,
                when,
                until: None,
                every: None,
                capture: step
                    .capture
                    .as_ref()
                    .map(|capture| capture.get_ref().clone()),
                on_failure,
                idempotent: true,
                undo: None,
                kind: StepKind::Loop(ForEach {
                    items: items_value,
                    var,
                    mode,
                    width,
                    steps,
                }),
                line,
            });
        }
        if step.steps.is_some()
            || step.var.is_some()
            || step.serial.is_some()
            || step.parallel.is_some()
        {
            return Err(self.error(
                raw,
                format!(
                    "{}: `steps`, `as`, `serial` and `parallel` belong to a for_each step",
                    at("for_each")
                ),
            ));
        }

        let Some(action) = &step.action else {
            return Err(self.error(raw, format!("{}: missing (exec, wait, wait_until, approval, window, noop or a domain action)", at("action"))));
        };
        let mut action_name = action.get_ref().clone();
        let mut with = step
            .with
            .as_ref()
            .map(|with| toml_to_json(with.get_ref()))
            .unwrap_or(Value::Object(Default::default()));
        let with_span = Spanned::new(
            step.with
                .as_ref()
                .map_or_else(|| action.span(), |with| with.span()),
            (),
        );
        let with_span = &with_span;
        if !with.is_object() {
            return Err(self.error(with_span, format!("{}: must be a table", at("with"))));
        }
        let mut until = step.until.as_ref().map(|until| until.get_ref().clone());
        let mut until_span = step.until.as_ref().map(|until| until.span());

        // wait_until is sugar: poll the inner action until `condition` holds.
        if CoreAction::WaitUntil.is(&action_name) {
            let object = with.as_object().cloned().unwrap_or_default();
            let inner_action = object
                .get("action")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    self.error(
                        with_span,
                        format!(
                            "{}: wait_until needs `with.action` (the action to poll)",
                            at("with.action")
                        ),
                    )
                })?;
            let condition = object
                .get("condition")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    self.error(
                        with_span,
                        format!(
                            "{}: wait_until needs `with.condition` (an expression on `output`)",
                            at("with.condition")
                        ),
                    )
                })?;
            if until.is_some() {
                return Err(self.error(
                    with_span,
                    format!(
                        "{}: give the condition once, in with.condition",
                        at("until")
                    ),
                ));
            }
            let parse_field =
                |field: &str| -> Result<(Option<std::time::Duration>, Option<String>), Error> {
                    match object.get(field) {
                        None => Ok((None, None)),
                        Some(Value::String(text)) if text.contains("{{") => {
                            self.check_text(
                                with_span,
                                text,
                                &at(&format!("with.{field}")),
                                TemplateKind::Text,
                                scope,
                            )?;
                            Ok((None, Some(text.clone())))
                        }
                        Some(Value::String(text)) => crate::duration::parse(text)
                            .map(|duration| (Some(duration), None))
                            .map_err(|message| {
                                self.error(
                                    with_span,
                                    format!("{}: {message}", at(&format!("with.{field}"))),
                                )
                            }),
                        Some(_) => Err(self.error(
                            with_span,
                            format!(
                                "{}: must be a duration string",
                                at(&format!("with.{field}"))
                            ),
                        )),
                    }
                };
            let (fixed_every, template_every) = parse_field("every")?;
            if let Some(interval) = fixed_every {
                crate::duration::check_poll_interval(interval).map_err(|message| {
                    self.error(with_span, format!("{}: {message}", at("with.every")))
                })?;
            }
            if fixed_every.is_some() || template_every.is_some() {
                (every, every_template) = (fixed_every, template_every);
            }
            let (fixed_timeout, template_timeout) = parse_field("timeout")?;
            if fixed_timeout.is_some() || template_timeout.is_some() {
                (timeout, timeout_template) = (fixed_timeout, template_timeout);
            }
            if timeout.is_none() && timeout_template.is_none() {
                return Err(self.error(
                    with_span,
                    format!(
                        "{}: wait_until needs an overall `timeout`",
                        at("with.timeout")
                    ),
                ));
            }
            action_name = inner_action.to_owned();
            until = Some(condition.to_owned());
            until_span = Some(with_span.span());
            with = object
                .get("with")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
        }
        if CoreAction::ForEach.is(&action_name) || CoreAction::WaitUntil.is(&action_name) {
            return Err(self.error(
                action,
                format!("{}: {action_name:?} cannot be used here", at("action")),
            ));
        }
        self.keep(self.check_json(with_span, &with, &at("with"), scope));
        // The checks of a core action's values that need more than the schema (a regex that
        // compiles, a cron that fires) run on an input that fits it, so that no mistake is
        // reported twice.
        let fits = self.check_input(
            raw,
            with_span,
            &action_name,
            &with,
            &at("action"),
            &at("with"),
        );
        if let Some(condition) = &until {
            let span = Spanned::new(until_span.clone().unwrap_or(0..0), ());
            let mut with_output = scope.clone();
            with_output.loop_vars.push("output".to_owned());
            self.check_text(
                &span,
                condition,
                &at("until"),
                TemplateKind::Expression,
                &with_output,
            )?;
            if every.is_none() && every_template.is_none() {
                every = Some(std::time::Duration::from_secs(5));
            }
        } else if every.is_some() || every_template.is_some() {
            let every_span = step
                .every
                .as_ref()
                .map_or_else(|| action.span(), |every| every.span());
            return Err(self.error(
                &Spanned::new(every_span, ()),
                format!("{}: `every` needs an `until` condition", at("every")),
            ));
        }
        if fits {
            self.keep(
                crate::definition::validate::check_core_input(&action_name, &with)
                    .map_err(|message| self.error(with_span, format!("{}: {message}", at("with")))),
            );
        }

        let undo = match &step.undo {
            None => None,
            Some(undo) => {
                let raw_undo = undo.get_ref();
                let undo_with = raw_undo
                    .with
                    .as_ref()
                    .map(|with| toml_to_json(with.get_ref()))
                    .unwrap_or(Value::Object(Default::default()));
                let mut undo_scope = scope.clone();
                undo_scope.loop_vars.push("output".to_owned());
                self.keep(self.check_json(undo, &undo_with, &at("undo.with"), &undo_scope));
                let fits = self.check_input(
                    raw,
                    undo,
                    raw_undo.action.get_ref(),
                    &undo_with,
                    &at("undo.action"),
                    &at("undo.with"),
                );
                if fits {
                    self.keep(
                        crate::definition::validate::check_core_input(
                            raw_undo.action.get_ref(),
                            &undo_with,
                        )
                        .map_err(|message| {
                            self.error(undo, format!("{}: {message}", at("undo.with")))
                        }),
                    );
                }
                Some(Box::new(Undo {
                    action: raw_undo.action.get_ref().clone(),
                    with: undo_with,
                    idempotent: raw_undo.idempotent,
                }))
            }
        };
        Ok(Step {
            id,
            kind: StepKind::Action(action_name),
            description: step.description.clone(),
            with,
            timeout: DurationSpec::of(timeout, timeout_template),
            retry,
            when,
            until,
            every: DurationSpec::of(every, every_template),
            capture: step
                .capture
                .as_ref()
                .map(|capture| capture.get_ref().clone()),
            on_failure,
            idempotent: step.idempotent,
            undo,
            line,
        })
    }

    /// Checks an action's name, and its input against the action's schema, when the actions
    /// are known; every problem is kept. Whether the input fits (or could not be checked).
    pub(super) fn check_input<S, T>(
        &self,
        step_at: &Spanned<S>,
        at: &Spanned<T>,
        action: &str,
        with: &Value,
        action_field: &str,
        with_field: &str,
    ) -> bool {
        let Some(actions) = self.actions else {
            return true;
        };
        match actions.schema(action) {
            None => {
                let mut known = CoreAction::step_action_names();
                known.extend(actions.names());
                let hint = match crate::action::schema::nearest(action, &known) {
                    Some(near) => format!("did you mean {near:?}?"),
                    None => format!(
                        "core actions: {}",
                        CoreAction::step_action_names().join(", ")
                    ),
                };
                // At the step's line, as `validate` reports it for a definition read back.
                self.keep::<()>(Err(self.error(
                    step_at,
                    format!("{action_field}: unknown action {action:?} ({hint})"),
                )));
                false
            }
            Some(schema) => {
                let problems = schema.check(with, false);
                for problem in &problems {
                    self.keep::<()>(Err(self.error(
                        at,
                        format!("{with_field}.{}: {}", problem.key, problem.message),
                    )));
                }
                problems.is_empty()
            }
        }
    }

    pub(super) fn convert_retry(
        &self,
        raw: &Spanned<RawRetry>,
        field: &str,
    ) -> Result<RetryPolicy, Error> {
        let retry = raw.get_ref();
        let max_attempts = u32::try_from(retry.max_attempts)
            .ok()
            .filter(|&attempts| attempts >= 1)
            .ok_or_else(|| self.error(raw, format!("{field}.max_attempts: must be at least 1")))?;
        let parse =
            |value: &Option<toml::Value>, default: std::time::Duration, name: &str| match value {
                None => Ok(default),
                Some(toml::Value::String(text)) => crate::duration::parse(text)
                    .map_err(|message| self.error(raw, format!("{field}.{name}: {message}"))),
                Some(other) => Err(self.error(
                    raw,
                    format!(
                        "{field}.{name}: expected a duration string such as \"5s\" or \"1m\", \
                         got {other}"
                    ),
                )),
            };
        let backoff = parse(&retry.backoff, std::time::Duration::from_secs(1), "backoff")?;
        let max_backoff = parse(
            &retry.max_backoff,
            std::time::Duration::from_secs(300),
            "max_backoff",
        )?;
        Ok(RetryPolicy {
            max_attempts,
            backoff,
            max_backoff: max_backoff.max(backoff),
        })
    }

    pub(super) fn positive(&self, value: &Spanned<i64>, field: &str) -> Result<u32, Error> {
        u32::try_from(*value.get_ref())
            .ok()
            .filter(|&width| width >= 1)
            .ok_or_else(|| self.error(value, format!("{field}: must be at least 1")))
    }

    pub(super) fn check_template(
        &self,
        text: &Spanned<String>,
        field: &str,
        kind: TemplateKind,
        scope: &Scope,
    ) -> Result<(), Error> {
        self.check_text(text, text.get_ref(), field, kind, scope)
    }

    /// Checks that a template compiles and names only what exists at this place.
    pub(super) fn check_text<T>(
        &self,
        at: &Spanned<T>,
        text: &str,
        field: &str,
        kind: TemplateKind,
        scope: &Scope,
    ) -> Result<(), Error> {
        let names = template::referenced_names(text, kind)
            .map_err(|message| self.error(at, format!("{field}: {message}")))?;
        template::check_callables(text, kind)
            .map_err(|message| self.error(at, format!("{field}: {message}")))?;
        if kind == TemplateKind::Text && template::opts_out_of_quoting(text) {
            self.warnings.borrow_mut().push(format!(
                "{}:{}: warning: {field}: `| raw` puts a value into the command unquoted, as shell code: make sure it is meant to be one",
                self.file,
                self.line_of(&at.span())
            ));
        }
        for name in names {
            scope
                .check(&name)
                .map_err(|message| self.error(at, format!("{field}: {message}")))?;
        }
        Ok(())
    }

    pub(super) fn check_json<T>(
        &self,
        at: &Spanned<T>,
        value: &Value,
        field: &str,
        scope: &Scope,
    ) -> Result<(), Error> {
        match value {
            Value::String(text) => self.check_text(at, text, field, TemplateKind::Text, scope),
            // Every value is checked, each mistake kept: one template's mistake hides no other.
            Value::Array(items) => {
                for item in items {
                    self.keep(self.check_json(at, item, field, scope));
                }
                Ok(())
            }
            Value::Object(map) => {
                for (key, item) in map {
                    self.keep(self.check_json(at, item, &format!("{field}.{key}"), scope));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
