//! Dry runs: a definition rendered with its params, nothing executed, nothing stored.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::check::{CheckSummary, StepCheck};
use super::Error;
use crate::action::Registry;
use crate::definition::{self, CoreAction, Definition, DurationSpec, RetryPolicy, Step};
use crate::template;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub runbook: String,
    pub version: u32,
    pub params: Map<String, Value>,
    pub locks: Vec<String>,
    pub steps: Vec<PlannedStep>,
    /// With `check`: what the check read and found (see [`check`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub key: String,
    pub action: String,
    /// The rendered input, or the template where it depends on earlier steps.
    pub input: Value,
    pub when: Option<String>,
    pub note: Option<String>,
    /// The step's timeout (`"6h"`, or the template that gives it).
    pub timeout: Option<String>,
    pub retry: Option<PlannedRetry>,
    pub undo: Option<PlannedUndo>,
    /// Whether the action changes the world (`None` for a `for_each`, which only holds steps).
    pub mutates: Option<bool>,
    /// With `check`: what the check did for this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<StepCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedRetry {
    pub max_attempts: u32,
    pub backoff: String,
    pub max_backoff: String,
}

impl From<&RetryPolicy> for PlannedRetry {
    fn from(retry: &RetryPolicy) -> PlannedRetry {
        PlannedRetry {
            max_attempts: retry.max_attempts,
            backoff: crate::duration::format(retry.backoff),
            max_backoff: crate::duration::format(retry.max_backoff),
        }
    }
}

/// What `rollback` would run for a step: its input is rendered where it does not need the
/// step's own output or earlier steps.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedUndo {
    pub action: String,
    pub input: Value,
    pub mutates: Option<bool>,
}

/// Renders the lock resources of a run.
pub fn render_locks(
    definition: &Definition,
    params: &Map<String, Value>,
) -> Result<Vec<String>, Error> {
    let context = json!({ "params": params, "run": {"runbook": definition.name} });
    definition
        .locks
        .iter()
        .map(
            |lock| match template::render(&Value::String(lock.clone()), &context) {
                Ok(Value::String(resource)) => Ok(resource),
                Ok(other) => Ok(other.to_string()),
                Err(message) => Err(Error::Invalid {
                    message: format!("locks: {message}"),
                    field: Some("locks".to_owned()),
                }),
            },
        )
        .collect()
}

/// What a run of `definition` with `given` params would do.
pub fn plan(
    definition: &Definition,
    given: &Map<String, Value>,
    actions: &Registry,
) -> Result<Plan, Error> {
    let params = definition::resolve_params(definition, given).map_err(|error| Error::Invalid {
        field: Some(error.field()),
        message: error.to_string(),
    })?;
    let locks = render_locks(definition, &params)?;
    let context = json!({ "params": params, "steps": {}, "run": {"id": "<run id>", "runbook": definition.name, "started_by": 0} });
    let mut steps = Vec::new();
    plan_steps(&definition.steps, "", &context, actions, &mut steps)?;
    Ok(Plan {
        runbook: definition.name.clone(),
        version: definition.version,
        params,
        locks,
        steps,
        check: None,
    })
}

/// A template that exceeds a limit is an error of the plan (it would fail the same way when the
/// run gets there); one that needs earlier steps' outputs is shown as written.
pub(super) fn plan_steps(
    definition: &[Step],
    prefix: &str,
    context: &Value,
    actions: &Registry,
    out: &mut Vec<PlannedStep>,
) -> Result<(), Error> {
    let mutates = |action: &str| actions.schema(action).map(|schema| schema.mutates);
    let limit = |key: &str, field: &str, error: template::Error| Error::Invalid {
        message: format!("step {key:?}: {field}: {error}"),
        field: Some(format!("steps.{key}.{field}")),
    };
    for step in definition {
        let key = crate::definition::step_key::child(prefix, &step.id);
        let mut note = step.description.clone();
        if let Some(for_each) = step.for_each() {
            match template::render(&for_each.items, context) {
                Err(error) if error.is_limit() => return Err(limit(&key, "for_each", error)),
                Ok(Value::Array(items)) => {
                    let mode = match for_each.mode {
                        definition::Concurrency::Serial => "serial",
                        definition::Concurrency::Parallel => "parallel",
                    };
                    out.push(PlannedStep {
                        key: key.clone(),
                        action: CoreAction::ForEach.name().to_owned(),
                        input: Value::Array(items.clone()),
                        when: step.when.clone(),
                        note: Some(format!(
                            "{} iterations, {mode} {}",
                            items.len(),
                            for_each.width
                        )),
                        timeout: timeout_of(step),
                        retry: None,
                        undo: None,
                        mutates: None,
                        check: None,
                    });
                    for (index, item) in items.into_iter().enumerate() {
                        let mut inner = context.clone();
                        if let Some(map) = inner.as_object_mut() {
                            map.insert(for_each.var.clone(), item);
                            map.insert("index".to_owned(), Value::from(index));
                        }
                        plan_steps(
                            &for_each.steps,
                            &crate::definition::step_key::iteration(&key, index),
                            &inner,
                            actions,
                            out,
                        )?;
                    }
                }
                _ => {
                    out.push(PlannedStep {
                        key: key.clone(),
                        action: CoreAction::ForEach.name().to_owned(),
                        input: for_each.items.clone(),
                        when: step.when.clone(),
                        note: Some("items are known only at run time".to_owned()),
                        timeout: timeout_of(step),
                        retry: None,
                        undo: None,
                        mutates: None,
                        check: None,
                    });
                    plan_steps(
                        &for_each.steps,
                        &crate::definition::step_key::every_iteration(&key),
                        context,
                        actions,
                        out,
                    )?;
                }
            }
            continue;
        }
        let input = match template::render(&step.with, context) {
            Ok(input) => input,
            Err(error) if error.is_limit() => return Err(limit(&key, "with", error)),
            Err(_) => {
                note = format!(
                    "{note}{}rendered at run time (uses earlier steps)",
                    if note.is_empty() { "" } else { "; " }
                );
                step.with.clone()
            }
        };
        if let Some(until) = &step.until {
            let every = step
                .every
                .as_ref()
                .map(DurationSpec::text)
                .unwrap_or_default();
            note = format!(
                "{note}{}polled every {every} until {until}",
                if note.is_empty() { "" } else { "; " }
            );
        }
        let undo = match &step.undo {
            None => None,
            Some(undo) => {
                let input = match template::render(&undo.with, context) {
                    Ok(input) => input,
                    Err(error) if error.is_limit() => return Err(limit(&key, "undo.with", error)),
                    Err(_) => undo.with.clone(),
                };
                Some(PlannedUndo {
                    action: undo.action.clone(),
                    input,
                    mutates: mutates(&undo.action),
                })
            }
        };
        out.push(PlannedStep {
            action: step.action().to_owned(),
            input,
            when: step.when.clone(),
            note: (!note.is_empty()).then_some(note),
            timeout: timeout_of(step),
            retry: step.retry.as_ref().map(PlannedRetry::from),
            undo,
            mutates: mutates(step.action()),
            check: None,
            key,
        });
    }
    Ok(())
}

/// A step's timeout as written: a duration, or the template that gives one.
fn timeout_of(step: &Step) -> Option<String> {
    step.timeout.as_ref().map(DurationSpec::text)
}
