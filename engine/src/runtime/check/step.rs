//! One step of a check: its `when` and loop rendered, then its action called if it only reads,
//! asked for a preview if it changes something, and what came back recorded.

use super::*;

impl Checker {
    /// Checks one step; its output when it ran (a read-only step that succeeded).
    pub(super) async fn step(
        &mut self,
        step: &Step,
        key: &str,
        context: &Value,
    ) -> Result<Option<Value>, Error> {
        // Rendering is bounded too: a long walk (nested loops of described steps) stops here.
        if self.draining.is_cancelled() {
            let check = StepCheck::noted("not_checked", "not checked: the daemon is shutting down");
            self.set(key, check.clone());
            self.set_under(key, &check);
            return Ok(None);
        }
        if Instant::now() >= self.deadline {
            let check = StepCheck::noted("not_checked", limit_note(&self.limits));
            self.set(key, check.clone());
            self.set_under(key, &check);
            return Ok(None);
        }
        let mut when_now = None;
        if let Some(condition) = &step.when {
            let (condition_text, scope) = (condition.clone(), context.clone());
            match crate::runtime::off_workers(move || template::is_true(&condition_text, &scope))
                .await?
            {
                Ok(false) => {
                    let check = StepCheck {
                        when: Some(false),
                        ..StepCheck::noted("skipped", format!("when is false now: {condition}"))
                    };
                    self.set(key, check.clone());
                    self.set_under(key, &check);
                    return Ok(None);
                }
                Ok(true) => when_now = Some(true),
                Err(_) => {}
            }
        }
        let when_note = |check: &mut StepCheck| {
            check.when = when_now;
            if step.when.is_some() && when_now.is_none() {
                let note =
                    "`when` is decided at run time (it uses outputs the check does not have)";
                check.note = Some(match check.note.take() {
                    Some(before) => format!("{before}; {note}"),
                    None => note.to_owned(),
                });
            }
        };
        if let Some(for_each) = step.for_each() {
            let (items, scope) = (for_each.items.clone(), context.clone());
            let rendered =
                crate::runtime::off_workers(move || template::render(&items, &scope)).await?;
            let Ok(Value::Array(items)) = rendered else {
                let missing = self.missing_outputs(&for_each.items);
                let mut check = StepCheck::noted(
                    "described",
                    format!(
                        "not executed: the items are known at run time{}",
                        if missing.is_empty() {
                            String::new()
                        } else {
                            format!(" (they use {})", missing.join(", "))
                        }
                    ),
                );
                when_note(&mut check);
                self.set(key, check);
                let pending =
                    StepCheck::noted("pending", "inside a loop whose items are known at run time");
                self.set_under(key, &pending);
                return Ok(None);
            };
            self.expand(step, key, &items, context).await?;
            let mut check = StepCheck::noted(
                "described",
                format!("not executed: a loop over {} item(s)", items.len()),
            );
            when_note(&mut check);
            self.set(key, check);
            if items.len() > self.limits.iterations {
                let skipped = StepCheck::noted(
                    "not_checked",
                    format!(
                        "not checked: the loop has {} items (more than {}); its items are listed",
                        items.len(),
                        self.limits.iterations
                    ),
                );
                self.set_under(key, &skipped);
                return Ok(None);
            }
            for (index, item) in items.into_iter().enumerate() {
                let mut inner = context.clone();
                if let Some(map) = inner.as_object_mut() {
                    map.insert(for_each.var.clone(), item);
                    map.insert("index".to_owned(), Value::from(index));
                }
                let saved = self.unknown.clone();
                self.walk(
                    &for_each.steps,
                    crate::definition::step_key::iteration(key, index),
                    inner,
                )
                .await?;
                self.unknown = saved;
            }
            return Ok(None);
        }
        // The core actions the machine decides itself have nothing to run: described.
        if CoreAction::of(step.action()).is_some_and(CoreAction::is_done_by_machine) {
            let (with, scope) = (step.with.clone(), context.clone());
            let input = crate::runtime::off_workers(move || template::render(&with, &scope))
                .await?
                .ok();
            let what = describe_core(step.action(), input.as_ref().unwrap_or(&step.with));
            let mut check = StepCheck::noted("described", format!("not executed: {what}"));
            when_note(&mut check);
            self.set(key, check);
            return Ok(None);
        }
        let (with, scope) = (step.with.clone(), context.clone());
        let input =
            match crate::runtime::off_workers(move || template::render(&with, &scope)).await? {
                Ok(input) => input,
                Err(error) => {
                    let missing = self.missing_outputs(&step.with);
                    let note = if missing.is_empty() {
                        format!("the input does not render now: {error}")
                    } else {
                        format!("its input uses the output of {}", missing.join(", "))
                    };
                    let mut check = StepCheck::noted("pending", note);
                    when_note(&mut check);
                    self.set(key, check);
                    return Ok(None);
                }
            };
        if let Some(planned) = self.planned.iter_mut().find(|planned| planned.key == key) {
            if planned.input != input {
                planned.input = input.clone();
                planned.note = planned.note.as_ref().map(|note| {
                    note.replace(
                        "rendered at run time (uses earlier steps)",
                        "rendered with the outputs the check read",
                    )
                });
            }
        }
        let Some(action) = self.actions.get(step.action()) else {
            let mut check = StepCheck::new("failed");
            check.error = Some(format!("unknown action {:?}", step.action()));
            self.set(key, check);
            return Ok(None);
        };
        let schema = action.schema();
        let problems = schema.check(&input, true);
        if !problems.is_empty() {
            let mut check = StepCheck::new("failed");
            check.error = Some(format!(
                "{}: the rendered input does not fit: {}",
                step.action(),
                problems
                    .iter()
                    .map(|problem| format!("with.{problem}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            when_note(&mut check);
            self.set(key, check);
            return Ok(None);
        }
        let now = Instant::now();
        if now >= self.deadline {
            self.set(
                key,
                StepCheck::noted("not_checked", limit_note(&self.limits)),
            );
            return Ok(None);
        }
        let limit = self.limits.call.min(self.deadline - now);
        self.calls += 1;
        let log_path = self.dir.join(format!("{}.log", self.calls));
        let cancel = CancellationToken::new();
        let call_context = ActionContext {
            run_id: uuid::Uuid::nil(),
            step: key.to_owned(),
            attempt: 1,
            undo: false,
            cancel: cancel.clone(),
            draining: self.draining.clone(),
            log: LogSink::new(log_path.clone()),
            state_dir: self.dir.join(format!("{}.state", self.calls)),
            note: None,
            recorder: Recorder::discard(),
            settle: None,
        };
        let future = if schema.mutates {
            match action.preview(input.clone(), call_context) {
                Some(future) => future,
                None => {
                    let mut check = StepCheck::noted(
                        "no_preview",
                        format!(
                            "no preview: would call {} with {}",
                            step.action(),
                            serde_json::to_string(&input).unwrap_or_default()
                        ),
                    );
                    when_note(&mut check);
                    self.set(key, check);
                    return Ok(None);
                }
            }
        } else {
            action.call(input.clone(), call_context)
        };
        let draining = self.draining.clone();
        let result = tokio::select! {
            result = tokio::time::timeout(limit, future) => result,
            _ = draining.cancelled() => Ok(Err(crate::action::ActionFailure::retryable(
                "stopped: the daemon is shutting down",
            ))),
        };
        cancel.cancel();
        let elapsed_ms = now.elapsed().as_millis() as u64;
        let log = read_log(&log_path);
        let mut check = match result {
            Err(_) => {
                let whole = limit < self.limits.call;
                StepCheck {
                    error: Some(format!(
                        "no answer within {}{}",
                        crate::duration::format(limit),
                        if whole {
                            " (the rest of the check's time limit)"
                        } else {
                            " (the limit of one call in a check)"
                        }
                    )),
                    ..StepCheck::new("failed")
                }
            }
            Ok(Err(failure)) => StepCheck {
                error: Some(failure.message),
                ..StepCheck::new("failed")
            },
            Ok(Ok(output)) if schema.mutates => {
                let changes = output
                    .get("changes")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let runs = output.get("runs").is_some_and(|runs| !runs.is_null());
                StepCheck {
                    note: output
                        .get("note")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    preview: Some(output),
                    ..StepCheck::new(if changes > 0 || runs {
                        "would_change"
                    } else {
                        "unchanged"
                    })
                }
            }
            Ok(Ok(output)) => {
                let mut check = StepCheck::new("read");
                if let Some(until) = &step.until {
                    let mut scope = context.clone();
                    if let Some(map) = scope.as_object_mut() {
                        map.insert("output".to_owned(), output.clone());
                    }
                    let condition = until.clone();
                    let holds =
                        crate::runtime::off_workers(move || template::is_true(&condition, &scope))
                            .await?;
                    let every = step
                        .every
                        .as_ref()
                        .map(DurationSpec::text)
                        .unwrap_or_default();
                    check.until = holds.as_ref().ok().copied();
                    check.note = Some(match holds {
                        Ok(true) => format!("until {until}: holds now"),
                        Ok(false) => {
                            format!("until {until}: does not hold yet (a run polls every {every})")
                        }
                        Err(error) => format!("until {until}: cannot be evaluated: {error}"),
                    });
                }
                check.output = Some(output);
                check
            }
        };
        check.log = log;
        check.elapsed_ms = Some(elapsed_ms);
        when_note(&mut check);
        let output = (check.status == "read")
            .then(|| check.output.clone())
            .flatten();
        self.set(key, check);
        Ok(output)
    }
}
