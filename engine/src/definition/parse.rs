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
    Concurrency, CoreAction, Definition, DurationSpec, Error, Errors, ForEach, OnFailure,
    ParamKind, ParamSpec, RetryPolicy, Step, StepKind, Undo,
};
use crate::action::Registry;
use crate::template::{self, TemplateKind};

mod step;

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
mod tests;
