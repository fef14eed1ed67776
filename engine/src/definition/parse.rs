//! TOML text → [`Definition`], with every error pointing at a line.
//!
//! Two passes over the raw, span-carrying form: the first collects the names a template may
//! refer to (params, step ids, captures); the second converts each field, checking durations,
//! enums and templates where the span is still known.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ops::Range;
use std::rc::Rc;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::scope::Scope;
use super::{
    Concurrency, Definition, Error, Errors, ForEach, OnFailure, ParamKind, ParamSpec, RetryPolicy,
    Step, Undo,
};
use crate::action::Registry;
use crate::template::{self, TemplateKind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: Spanned<String>,
    #[serde(default)]
    version: Option<Spanned<i64>>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: Ordered<Spanned<RawParam>>,
    #[serde(default)]
    locks: Vec<Spanned<String>>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type", default)]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    required: bool,
    default: Option<toml::Value>,
    #[serde(default)]
    description: String,
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: Spanned<String>,
    action: Option<Spanned<String>>,
    #[serde(default)]
    description: String,
    with: Option<Spanned<toml::Value>>,
    timeout: Option<Spanned<toml::Value>>,
    retry: Option<Spanned<RawRetry>>,
    when: Option<Spanned<String>>,
    until: Option<Spanned<String>>,
    every: Option<Spanned<toml::Value>>,
    capture: Option<Spanned<String>>,
    on_failure: Option<Spanned<String>>,
    #[serde(default)]
    idempotent: bool,
    undo: Option<Spanned<RawUndo>>,
    for_each: Option<Spanned<toml::Value>>,
    #[serde(rename = "as")]
    var: Option<Spanned<String>>,
    serial: Option<Spanned<i64>>,
    parallel: Option<Spanned<i64>>,
    steps: Option<Vec<Spanned<RawStep>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: i64,
    /// Any TOML value, so that a number (`backoff = 5`) is reported naming the step.
    #[serde(default)]
    backoff: Option<toml::Value>,
    #[serde(default)]
    max_backoff: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUndo {
    action: Spanned<String>,
    with: Option<Spanned<toml::Value>>,
    #[serde(default)]
    idempotent: bool,
}

/// A TOML table read in document order.
struct Ordered<V>(Vec<(String, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<V> {
            type Value = Ordered<V>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor(std::marker::PhantomData))
    }
}

/// Parses and checks a runbook file. `file` is only used in messages and as the source.
/// How deep `for_each` steps may nest: a step with nested `steps` at this depth (8 loops
/// already around it) is refused. Every later stage (journal, snapshots, the API, the CLI)
/// handles this depth with room to spare; serde_json stops at 128 levels, and each loop adds
/// three.
pub const MAX_NESTING: usize = 8;

pub fn parse(file: &str, text: &str) -> Result<Definition, Error> {
    parse_with_warnings(file, text).map(|(definition, _)| definition)
}

/// [`parse`], plus the warnings about what is allowed but risky (`file:line: warning: ...`):
/// every template that puts a value into a shell command unquoted (`| raw`). Returns the first
/// error in file order; [`check`] returns them all.
pub fn parse_with_warnings(file: &str, text: &str) -> Result<(Definition, Vec<String>), Error> {
    parse_all(file, text, None).map_err(Errors::into_first)
}

/// Parses and checks a runbook file completely, as the daemon and `runbook validate` do: also
/// every action name and every action's input against its schema (`actions`). On error, every
/// mistake found, in file order.
pub fn check(
    file: &str,
    text: &str,
    actions: &Registry,
) -> Result<(Definition, Vec<String>), Errors> {
    parse_all(file, text, Some(actions))
}

fn parse_all(
    file: &str,
    text: &str,
    actions: Option<&Registry>,
) -> Result<(Definition, Vec<String>), Errors> {
    let parser = Parser {
        file,
        text,
        warnings: RefCell::new(Vec::new()),
        errors: RefCell::new(Vec::new()),
        actions,
    };
    let single = |error: Error| Errors(vec![error]);
    if let Some((line, depth)) = super::depth::too_deep(text) {
        return Err(single(parser.error_at(
            line,
            format!(
                "tables and lists nested {depth} levels deep; a runbook file may nest at most {} \
                 (and steps at most {MAX_NESTING} loops deep)",
                super::depth::MAX_TOML_DEPTH
            ),
        )));
    }
    let raw: RawDefinition = toml::from_str(text).map_err(|error| {
        let line = error.span().map(|span| parser.line_of(&span)).unwrap_or(1);
        single(parser.error_at(line, error.message().trim().to_owned()))
    })?;
    let definition = parser.convert(raw);
    let mut errors = parser.errors.into_inner();
    match definition {
        Ok(definition) if errors.is_empty() => Ok((definition, parser.warnings.into_inner())),
        Ok(_) => {
            errors.sort_by_key(|error| error.line);
            Err(Errors(errors))
        }
        Err(error) => {
            errors.push(error);
            errors.sort_by_key(|error| error.line);
            Err(Errors(errors))
        }
    }
}

struct Parser<'a> {
    file: &'a str,
    text: &'a str,
    warnings: RefCell<Vec<String>>,
    /// Mistakes found so far that did not stop the parse (each step is checked on its own).
    errors: RefCell<Vec<Error>>,
    /// The actions whose names and input schemas are checked, when known.
    actions: Option<&'a Registry>,
}

impl Parser<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1
    }

    fn error_at(&self, line: usize, message: String) -> Error {
        Error {
            file: self.file.to_owned(),
            line,
            message,
        }
    }

    fn error<T>(&self, spanned: &Spanned<T>, message: String) -> Error {
        self.error_at(self.line_of(&spanned.span()), message)
    }

    /// Keeps an error to report with the others and goes on with `None`.
    fn keep<T>(&self, result: Result<T, Error>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.borrow_mut().push(error);
                None
            }
        }
    }

    fn convert(&self, raw: RawDefinition) -> Result<Definition, Error> {
        let name = raw.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(self.error(
                &raw.name,
                format!("name {name:?}: use letters, digits, '.', '_' and '-'"),
            ));
        }
        let version = match &raw.version {
            None => 1,
            Some(version) => u32::try_from(*version.get_ref())
                .ok()
                .filter(|&version| version > 0)
                .ok_or_else(|| {
                    self.error(version, "version: must be a positive integer".to_owned())
                })?,
        };
        let params: Vec<ParamSpec> = raw
            .params
            .0
            .iter()
            .filter_map(|(name, param)| self.keep(self.convert_param(name, param)))
            .collect();

        let mut names = Scope::default();
        let mut seen = HashSet::new();
        self.collect_names(&raw.steps, &mut names, &mut seen, 0)?;
        let mut scope = Scope {
            params: raw.params.0.iter().map(|(name, _)| name.clone()).collect(),
            order: names.order,
            capture_steps: names.capture_steps,
            ..Scope::default()
        };

        let mut locks = Vec::new();
        for lock in &raw.locks {
            self.keep(self.check_template(lock, "locks", TemplateKind::Text, &scope));
            locks.push(lock.get_ref().clone());
        }
        if raw.steps.is_empty() {
            return Err(self.error_at(1, "a runbook needs at least one [[steps]] entry".to_owned()));
        }
        let steps = self.convert_sequence(&raw.steps, &mut scope);
        Ok(Definition {
            name: name.clone(),
            version,
            description: raw.description,
            source: self.file.to_owned(),
            params,
            locks,
            steps,
            template_use: Default::default(),
            positions: Default::default(),
        })
    }

    fn convert_param(&self, name: &str, raw: &Spanned<RawParam>) -> Result<ParamSpec, Error> {
        let param = raw.get_ref();
        if !is_identifier(name) {
            return Err(self.error(
                raw,
                format!(
                    "param {name:?}: use letters, digits and '_' (it is used as params.{name})"
                ),
            ));
        }
        let kind = match &param.kind {
            None => ParamKind::String,
            Some(kind) => match kind.get_ref().as_str() {
                "string" => ParamKind::String,
                "int" => ParamKind::Int,
                "bool" => ParamKind::Bool,
                "duration" => ParamKind::Duration,
                "list" => ParamKind::List,
                "enum" => ParamKind::Enum,
                "host_port" | "host:port" => ParamKind::HostPort,
                other => {
                    return Err(self.error(
                        kind,
                        format!("param {name:?}: unknown type {other:?} (string, int, bool, duration, list, enum, host_port)"),
                    ))
                }
            },
        };
        if kind == ParamKind::Enum && param.values.is_empty() {
            return Err(self.error(
                raw,
                format!("param {name:?}: an enum needs `values = [...]`"),
            ));
        }
        if let Some(pattern) = &param.pattern {
            if let Err(error) = regex::Regex::new(pattern.get_ref()) {
                return Err(self.error(pattern, format!("param {name:?}: bad pattern: {error}")));
            }
        }
        let mut spec = ParamSpec {
            name: name.to_owned(),
            kind,
            required: param.required,
            default: None,
            description: param.description.clone(),
            pattern: param
                .pattern
                .as_ref()
                .map(|pattern| pattern.get_ref().clone()),
            values: param.values.clone(),
        };
        if let Some(default) = &param.default {
            let value = toml_to_json(default);
            let checked = super::params::check_value(&spec, &value).map_err(|message| {
                self.error(raw, format!("param {name:?}: default: {message}"))
            })?;
            spec.default = Some(checked);
        }
        Ok(spec)
    }

    /// First pass: step ids (unique in the whole file) and capture names.
    fn collect_names(
        &self,
        steps: &[Spanned<RawStep>],
        scope: &mut Scope,
        seen: &mut HashSet<String>,
        depth: usize,
    ) -> Result<(), Error> {
        for raw in steps {
            let step = raw.get_ref();
            let id = step.id.get_ref();
            if step.steps.is_some() && depth >= MAX_NESTING {
                return Err(self.error(
                    raw,
                    format!(
                        "step {id:?}: steps nested more than {MAX_NESTING} levels deep (for_each \
                         inside for_each); flatten the runbook"
                    ),
                ));
            }
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(self.error(
                    &step.id,
                    format!("step id {id:?}: use letters, digits, '_' and '-'"),
                ));
            }
            if !seen.insert(id.clone()) {
                self.keep::<()>(Err(self.error(
                    &step.id,
                    format!("duplicate step id {id:?}: step ids must be unique in a runbook"),
                )));
            }
            let next = scope.order.len();
            Rc::make_mut(&mut scope.order)
                .entry(id.clone())
                .or_insert(next);
            if let Some(capture) = &step.capture {
                let name = capture.get_ref();
                if !is_identifier(name) || template::RESERVED_NAMES.contains(&name.as_str()) {
                    return Err(self.error(
                        capture,
                        format!("step {id:?}: capture {name:?}: must be an identifier and not one of {:?}", template::RESERVED_NAMES),
                    ));
                }
                if scope.capture_steps.contains_key(name) {
                    self.keep::<()>(Err(self.error(
                        capture,
                        format!("step {id:?}: capture name {name:?} is used twice"),
                    )));
                } else {
                    Rc::make_mut(&mut scope.capture_steps).insert(name.clone(), id.clone());
                }
            }
            if let Some(nested) = &step.steps {
                self.collect_names(nested, scope, seen, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Converts a sequence of steps, each seeing the steps before it; every error is kept.
    /// Afterwards `scope` also sees the sequence's steps (not those nested in a loop).
    fn convert_sequence(&self, raw: &[Spanned<RawStep>], scope: &mut Scope) -> Vec<Step> {
        let mut steps = Vec::new();
        for raw_step in raw {
            let step = raw_step.get_ref();
            let mut step_scope = scope.clone();
            step_scope.current = Some(step.id.get_ref().clone());
            if let Some(condition) = &step.when {
                if let Ok(names) =
                    template::referenced_names(condition.get_ref(), TemplateKind::Expression)
                {
                    step_scope.guarded.extend(names);
                }
            }
            if let Some(step) = self.keep(self.convert_step(raw_step, &step_scope)) {
                steps.push(step);
            }
            let id = step.id.get_ref().clone();
            if step.when.is_some() {
                scope
                    .maybe_missing
                    .insert(id.clone(), "may be skipped (it has a `when`)");
            } else if step
                .on_failure
                .as_ref()
                .is_some_and(|value| value.get_ref() == "continue")
            {
                scope.maybe_missing.insert(
                    id.clone(),
                    "may fail and be passed (on_failure = \"continue\")",
                );
            }
            scope.steps.insert(id);
            if let Some(capture) = &step.capture {
                scope.captures.insert(capture.get_ref().clone());
            }
        }
        steps
    }

    fn convert_step(&self, raw: &Spanned<RawStep>, scope: &Scope) -> Result<Step, Error> {
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
                action: "for_each".to_owned(),
                description: step.description.clone(),
                with: Value::Null,
                timeout,
                retry: None,
                when,
                until: None,
                every: None,
                timeout_template,
                every_template: None,
                capture: step
                    .capture
                    .as_ref()
                    .map(|capture| capture.get_ref().clone()),
                on_failure,
                idempotent: true,
                undo: None,
                for_each: Some(ForEach {
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
        if action_name == "wait_until" {
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
        if action_name == "for_each" || action_name == "wait_until" {
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
                super::validate::check_core_input(&action_name, &with)
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
                        super::validate::check_core_input(raw_undo.action.get_ref(), &undo_with)
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
            action: action_name,
            description: step.description.clone(),
            with,
            timeout,
            retry,
            when,
            until,
            every,
            timeout_template,
            every_template,
            capture: step
                .capture
                .as_ref()
                .map(|capture| capture.get_ref().clone()),
            on_failure,
            idempotent: step.idempotent,
            undo,
            for_each: None,
            line,
        })
    }

    /// Checks an action's name, and its input against the action's schema, when the actions
    /// are known; every problem is kept. Whether the input fits (or could not be checked).
    fn check_input<S, T>(
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
                let mut known: Vec<&str> = super::CORE_ACTIONS.to_vec();
                known.extend(actions.names());
                let hint = match crate::action::schema::nearest(action, &known) {
                    Some(near) => format!("did you mean {near:?}?"),
                    None => format!("core actions: {}", super::CORE_ACTIONS.join(", ")),
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

    fn convert_retry(&self, raw: &Spanned<RawRetry>, field: &str) -> Result<RetryPolicy, Error> {
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

    fn positive(&self, value: &Spanned<i64>, field: &str) -> Result<u32, Error> {
        u32::try_from(*value.get_ref())
            .ok()
            .filter(|&width| width >= 1)
            .ok_or_else(|| self.error(value, format!("{field}: must be at least 1")))
    }

    fn check_template(
        &self,
        text: &Spanned<String>,
        field: &str,
        kind: TemplateKind,
        scope: &Scope,
    ) -> Result<(), Error> {
        self.check_text(text, text.get_ref(), field, kind, scope)
    }

    /// Checks that a template compiles and names only what exists at this place.
    fn check_text<T>(
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

    fn check_json<T>(
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

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(text) => Value::String(text.clone()),
        toml::Value::Integer(number) => Value::from(*number),
        toml::Value::Float(number) => serde_json::Number::from_f64(*number)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(flag) => Value::Bool(*flag),
        toml::Value::Datetime(datetime) => Value::String(datetime.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(key, item)| (key.clone(), toml_to_json(item)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{check as check_all, parse};
    use crate::action::Registry;

    /// Every error `check` reports for `text` (with the core actions), one per line.
    fn errors(text: &str) -> String {
        match check_all("t.toml", text, &Registry::new()) {
            Ok(_) => String::new(),
            Err(errors) => errors.to_string(),
        }
    }

    const HEAD: &str = "name = \"x\"\n";

    #[test]
    fn keys_in_with_are_checked_against_the_action_schema() {
        let text = format!(
            "{HEAD}[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = {{ command = \"true\", timeot = \"5s\", pasre = \"json\" }}\n\
             [[steps]]\nid = \"b\"\naction = \"wait\"\nwith = {{ duration = \"1s\", extra = 1 }}\n\
             [[steps]]\nid = \"c\"\naction = \"exec\"\nwith = {{ comand = \"true\" }}\n\
             [[steps]]\nid = \"d\"\naction = \"approval\"\nwith = {{ distinct_approver = \"yes\" }}\n"
        );
        let errors = errors(&text);
        for expected in [
            "t.toml:5: step \"a\": with.pasre: unknown key (did you mean `parse`?)",
            "t.toml:5: step \"a\": with.timeot: unknown key (did you mean the step's `timeout`, outside `with`?)",
            "t.toml:9: step \"b\": with.extra: unknown key (known keys: duration, until)",
            "t.toml:13: step \"c\": with.comand: unknown key (did you mean `command`?)",
            "t.toml:13: step \"c\": with.command: missing required key: a shell string, or an argv list",
            "t.toml:17: step \"d\": with.distinct_approver: expected true or false, got \"yes\"",
        ] {
            assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
        }
    }

    #[test]
    fn every_mistake_is_reported_in_file_order() {
        let text = format!(
            "{HEAD}[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = {{ command = \"true\" }}\ntimeout = 30\n\
             [[steps]]\nid = \"b\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ params.nope }}}}\" }}\non_failure = \"explode\"\n\
             [[steps]]\nid = \"c\"\naction = \"nosuch\"\n"
        );
        let errors = errors(&text);
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), 4, "{errors}");
        assert!(
            lines[0].starts_with(
                "t.toml:6: step \"a\": timeout: expected a duration string such as \"30s\""
            ),
            "{errors}"
        );
        assert!(
            lines[1].starts_with(
                "t.toml:10: step \"b\": with.command: unknown template variable `params.nope`"
            ),
            "{errors}"
        );
        assert!(
            lines[2].starts_with("t.toml:11: step \"b\": on_failure: unknown value \"explode\""),
            "{errors}"
        );
        assert!(
            lines[3].starts_with("t.toml:12: step \"c\": action: unknown action \"nosuch\""),
            "{errors}"
        );
    }

    #[test]
    fn a_step_cannot_read_a_step_that_has_not_run() {
        let forward = format!(
            "{HEAD}[[steps]]\nid = \"early\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.later.output.stdout }}}}\" }}\n\
             [[steps]]\nid = \"later\"\naction = \"exec\"\nwith = {{ command = \"true\" }}\n"
        );
        assert_eq!(
            errors(&forward),
            "t.toml:5: step \"early\": with.command: `steps.later.output.stdout` reads step \"later\", which comes later in the file: it has not run when step \"early\" runs"
        );
        let inside_loop = format!(
            "{HEAD}[[steps]]\nid = \"each\"\nfor_each = [\"a\"]\n  [[steps.steps]]\n  id = \"inner\"\n  action = \"noop\"\n  capture = \"got\"\n\
             [[steps]]\nid = \"after\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.inner.output }}}}\", env = {{ GOT = \"{{{{ got }}}}\" }} }}\n"
        );
        let errors_inside = errors(&inside_loop);
        assert!(errors_inside.contains("`steps.inner.output` reads step \"inner\", which runs inside a for_each loop that does not enclose step \"after\""), "{errors_inside}");
        assert!(errors_inside.contains("with.env.GOT: `got` is captured by step \"inner\", which runs inside a for_each loop"), "{errors_inside}");
        let capture_later = format!(
            "{HEAD}[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ got }}}}\" }}\n\
             [[steps]]\nid = \"b\"\naction = \"noop\"\ncapture = \"got\"\n"
        );
        assert!(errors(&capture_later)
            .contains("`got` is captured by step \"b\", which comes later in the file"));
        let own = format!(
            "{HEAD}[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.a.output }}}}\" }}\n"
        );
        assert!(errors(&own).contains("is this step itself"));
        // A step that may be skipped or passed over has an output only where a `when` tests it.
        let conditional = format!(
            "{HEAD}[[steps]]\nid = \"maybe\"\naction = \"noop\"\nwhen = \"false\"\ncapture = \"got\"\n\
             [[steps]]\nid = \"failing\"\naction = \"exec\"\nwith = {{ command = \"false\", parse = \"json\" }}\non_failure = \"continue\"\n\
             [[steps]]\nid = \"reader\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.maybe.output.x }}}}\", cwd = \"{{{{ got.x }}}}\", env = {{ A = \"{{{{ steps.failing.output.json.a }}}}\" }} }}\n\
             [[steps]]\nid = \"guarded\"\naction = \"exec\"\nwhen = \"steps.maybe.state == 'succeeded' and steps.failing.state == 'succeeded'\"\nwith = {{ command = \"echo {{{{ steps.maybe.output.x }}}} {{{{ got.x }}}} {{{{ steps.failing.output.json.a }}}}\" }}\n"
        );
        let errors_conditional = errors(&conditional);
        assert_eq!(
            errors_conditional.lines().count(),
            3,
            "{errors_conditional}"
        );
        for expected in [
            "with.command: `steps.maybe.output.x` reads step \"maybe\", which may be skipped (it has a `when`): it has no output then",
            "with.cwd: `got.x` is captured by step \"maybe\", which may be skipped",
            "with.env.A: `steps.failing.output.json.a` reads step \"failing\", which may fail and be passed (on_failure = \"continue\")",
        ] {
            assert!(errors_conditional.contains(expected), "{expected:?} not in:\n{errors_conditional}");
        }
        // Earlier steps, enclosing loops' earlier steps and siblings in an iteration are fine.
        let fine = format!(
            "{HEAD}[[steps]]\nid = \"first\"\naction = \"noop\"\ncapture = \"one\"\n\
             [[steps]]\nid = \"each\"\nfor_each = \"{{{{ [steps.first.output] }}}}\"\n  [[steps.steps]]\n  id = \"x\"\n  action = \"noop\"\n  [[steps.steps]]\n  id = \"y\"\n  action = \"exec\"\n  with = {{ command = \"echo {{{{ steps.x.output }}}} {{{{ one }}}} {{{{ steps.first.output }}}}\" }}\n\
             [[steps]]\nid = \"last\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.each.state }}}}\" }}\n"
        );
        assert_eq!(errors(&fine), "");
    }

    fn check(text: &str, expect: Result<(), &str>) {
        match (parse("t.toml", text), expect) {
            (Ok(_), Ok(())) => {}
            (Err(error), Err(needle)) => assert!(error.to_string().contains(needle), "{error}"),
            (result, expect) => panic!("{result:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn durations_may_be_templates_checked_like_any_other() {
        let head = "name = \"x\"\n[params.drain]\ntype = \"duration\"\ndefault = \"72h\"\n[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = { command = \"true\" }\n";
        check(
            &format!("{head}timeout = \"{{{{ params.drain }}}}\"\n"),
            Ok(()),
        );
        check(
            &format!(
                "{head}until = \"output.exit_code == 0\"\nevery = \"{{{{ params.drain }}}}\"\n"
            ),
            Ok(()),
        );
        check(
            &format!("{head}timeout = \"{{{{ params.drian }}}}\"\n"),
            Err("t.toml:9: step \"a\": timeout: unknown template variable `params.drian`"),
        );
        check(
            &format!("{head}timeout = \"72 hours-ish\"\n"),
            Err("t.toml:9"),
        );
        check(
            &format!("{head}retry = {{ max_attempts = 3, backoff = 5 }}\n"),
            Err("t.toml:9: step \"a\": retry.backoff: expected a duration string such as \"5s\" or \"1m\", got 5"),
        );
        let wait_until = "name = \"x\"\n[params.t]\ndefault = \"1m\"\n[[steps]]\nid = \"a\"\naction = \"wait_until\"\nwith = { action = \"exec\", with = { command = \"true\" }, condition = \"output.exit_code == 0\", timeout = \"{{ params.t }}\" }\n";
        check(wait_until, Ok(()));
    }
}
