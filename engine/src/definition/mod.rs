//! Runbook definitions: the validated, serializable form of a runbook file.
//!
//! A [`Definition`] is what a run pins: it is stored in the run's first event, so editing or
//! deleting the file later never changes a run in flight. [`parse`] turns TOML text into a
//! definition and checks everything that can be checked before a run starts (actions, step ids,
//! durations, cron expressions, template variables); every error names the file, line and field.

mod core;
mod depth;
mod params;
mod parse;
mod record;
mod scope;
pub mod step_key;
mod validate;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use core::{makes_call, CoreAction};
pub use depth::MAX_TOML_DEPTH;
pub use params::{resolve as resolve_params, ParamError};
pub use parse::{check, parse, parse_with_warnings, MAX_NESTING};
pub use validate::validate;

/// A definition error: what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Every mistake found in a runbook file, in file order (one per line when shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Error>);

impl Errors {
    /// The first mistake in file order.
    pub fn into_first(self) -> Error {
        self.0.into_iter().next().unwrap_or_else(|| Error {
            file: String::new(),
            line: 0,
            message: "invalid runbook".to_owned(),
        })
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(formatter)?;
            }
            write!(formatter, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl From<Error> for Errors {
    fn from(error: Error) -> Errors {
        Errors(vec![error])
    }
}

/// A validated runbook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub version: u32,
    #[serde(default)]
    pub description: String,
    /// `builtin:<file>` or the path of the user file it came from.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub params: Vec<ParamSpec>,
    /// Templates of the resources a run holds exclusively, e.g. `broker:{{ params.broker }}`.
    #[serde(default)]
    pub locks: Vec<String>,
    pub steps: Vec<Step>,
    /// Whether any step renders a template: computed once, neither stored nor compared.
    #[serde(skip)]
    pub template_use: TemplateUse,
    /// Where each top-level step id sits: computed once, neither stored nor compared.
    #[serde(skip)]
    pub positions: StepPositions,
}

/// A cache of the top-level steps' positions by id, for [`Definition::step`]: a runbook of
/// ten thousand steps would otherwise search them for every lookup, several times a decision.
#[derive(Debug, Clone, Default)]
pub struct StepPositions(
    std::sync::OnceLock<std::sync::Arc<std::collections::HashMap<String, usize>>>,
);

impl PartialEq for StepPositions {
    fn eq(&self, _: &StepPositions) -> bool {
        true
    }
}

/// A cache of [`Definition::uses_templates`].
#[derive(Debug, Clone, Default)]
pub struct TemplateUse(std::sync::OnceLock<bool>);

impl PartialEq for TemplateUse {
    fn eq(&self, _: &TemplateUse) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamKind,
    pub required: bool,
    pub default: Option<Value>,
    #[serde(default)]
    pub description: String,
    pub pattern: Option<String>,
    /// The allowed values of an `enum` param.
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    String,
    Int,
    Bool,
    /// Kept as the operator wrote it (`72h`), checked to parse.
    Duration,
    /// A JSON array, or a comma-separated string.
    List,
    Enum,
    /// `host:port`, or several separated by `;` (a RocketMQ NameServer list).
    HostPort,
}

impl ParamKind {
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::String => "string",
            ParamKind::Int => "int",
            ParamKind::Bool => "bool",
            ParamKind::Duration => "duration",
            ParamKind::List => "list",
            ParamKind::Enum => "enum",
            ParamKind::HostPort => "host_port",
        }
    }
}

/// One step of a runbook. What it is — an action or a loop — is one field, and each of its
/// durations is a value or a template, never both: `record.rs` keeps the form the journal has
/// always stored (a run pins its definition in its first event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "record::StepRecord", into = "record::StepRecord")]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    pub description: String,
    /// The action's input; strings in it are templates.
    pub with: Value,
    /// Bounds the whole step (all attempts and polls) from its first start; durable.
    pub timeout: Option<DurationSpec>,
    pub retry: Option<RetryPolicy>,
    /// A condition (minijinja expression); the step is skipped when false.
    pub when: Option<String>,
    /// A condition on `output`; the action is polled every `every` until it holds.
    pub until: Option<String>,
    pub every: Option<DurationSpec>,
    /// A name under which later steps see this step's output.
    pub capture: Option<String>,
    pub on_failure: OnFailure,
    /// May the step be re-run blindly when a crash left its outcome unknown?
    pub idempotent: bool,
    pub undo: Option<Box<Undo>>,
    /// Line of the step in its file, for messages.
    pub line: usize,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Runs an action: `exec`, `wait`, `approval`, `window`, `noop` or a domain action.
    Action(String),
    /// Runs its nested steps once per item.
    Loop(ForEach),
}

/// A duration as written: a value, or a template rendered when it is needed
/// (`"{{ params.retention }}"`).
#[derive(Debug, Clone, PartialEq)]
pub enum DurationSpec {
    Fixed(Duration),
    Template(String),
}

impl DurationSpec {
    /// Fixed or still to be rendered, from what the parser read.
    pub fn of(fixed: Option<Duration>, template: Option<String>) -> Option<DurationSpec> {
        fixed
            .map(DurationSpec::Fixed)
            .or(template.map(DurationSpec::Template))
    }

    /// As written: `72h`, or the template.
    pub fn text(&self) -> String {
        match self {
            DurationSpec::Fixed(duration) => crate::duration::format(*duration),
            DurationSpec::Template(template) => template.clone(),
        }
    }
}

impl Step {
    /// The action's name; a loop's is `for_each`, as the journal names it.
    pub fn action(&self) -> &str {
        match &self.kind {
            StepKind::Action(action) => action,
            StepKind::Loop(_) => CoreAction::ForEach.name(),
        }
    }

    /// The loop, if the step is one.
    pub fn for_each(&self) -> Option<&ForEach> {
        match &self.kind {
            StepKind::Loop(for_each) => Some(for_each),
            StepKind::Action(_) => None,
        }
    }
}

/// The compensating action of a step, run by `rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undo {
    pub action: String,
    #[serde(default)]
    pub with: Value,
    #[serde(default)]
    pub idempotent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(with = "crate::duration::ms")]
    pub backoff: Duration,
    #[serde(with = "crate::duration::ms")]
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The pause before attempt `next_attempt` (2, 3, ...): `backoff` doubling, capped.
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(30);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop and ask the operator (`needs_attention`): retry, skip, cancel or rollback.
    #[default]
    Pause,
    /// Fail the run.
    Abort,
    /// Record the failure and go on.
    Continue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForEach {
    /// A template that yields a list, or a literal list.
    pub items: Value,
    /// The name of the loop variable in nested templates.
    #[serde(rename = "as")]
    pub var: String,
    pub mode: Concurrency,
    /// Iterations at a time: a batch size (`serial`) or a window (`parallel`).
    pub width: u32,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Batches of `width`: the next batch starts when the whole batch has finished.
    Serial,
    /// A sliding window: up to `width` iterations run at once.
    Parallel,
}

impl Definition {
    /// The definition of the step instance `key` (`loop[2].child`), if any.
    pub fn step(&self, key: &str) -> Option<&Step> {
        let positions = self.positions.0.get_or_init(|| {
            let mut positions = std::collections::HashMap::with_capacity(self.steps.len());
            for (position, step) in self.steps.iter().enumerate() {
                positions.entry(step.id.clone()).or_insert(position);
            }
            std::sync::Arc::new(positions)
        });
        let mut steps = &self.steps;
        let mut found = None;
        for (depth, id) in step_key::ids(key).enumerate() {
            let step = if depth == 0 {
                steps.get(*positions.get(id)?)?
            } else {
                steps.iter().find(|step| step.id == id)?
            };
            found = Some(step);
            if let Some(for_each) = step.for_each() {
                steps = &for_each.steps;
            }
        }
        found
    }

    /// Whether deciding about a run of this definition may render a template (a condition, an
    /// input, a loop's items, a duration, an undo): such decisions run off the async workers.
    pub fn uses_templates(&self) -> bool {
        *self.template_use.0.get_or_init(|| {
            self.all_steps().iter().any(|step| {
                step.when.is_some()
                    || step.until.is_some()
                    || matches!(step.timeout, Some(DurationSpec::Template(_)))
                    || matches!(step.every, Some(DurationSpec::Template(_)))
                    || crate::template::has_template(&step.with)
                    || step
                        .for_each()
                        .as_ref()
                        .is_some_and(|for_each| crate::template::has_template(&for_each.items))
                    || step
                        .undo
                        .as_ref()
                        .is_some_and(|undo| crate::template::has_template(&undo.with))
            })
        })
    }

    /// Every step, depth first.
    pub fn all_steps(&self) -> Vec<&Step> {
        fn walk<'a>(steps: &'a [Step], out: &mut Vec<&'a Step>) {
            for step in steps {
                out.push(step);
                if let Some(for_each) = step.for_each() {
                    walk(&for_each.steps, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.steps, &mut out);
        out
    }
}
