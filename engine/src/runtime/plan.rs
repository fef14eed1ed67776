//! Dry runs: a definition rendered with its params, nothing executed, nothing stored.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::Error;
use crate::definition::{self, Definition, Step};
use crate::template;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub runbook: String,
    pub version: u32,
    pub params: Map<String, Value>,
    pub locks: Vec<String>,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub key: String,
    pub action: String,
    /// The rendered input, or the template where it depends on earlier steps.
    pub input: Value,
    pub when: Option<String>,
    pub note: Option<String>,
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
pub fn plan(definition: &Definition, given: &Map<String, Value>) -> Result<Plan, Error> {
    let params = definition::resolve_params(definition, given).map_err(|error| Error::Invalid {
        field: Some(format!("params.{}", error.param)),
        message: error.to_string(),
    })?;
    let locks = render_locks(definition, &params)?;
    let context = json!({ "params": params, "steps": {}, "run": {"id": "<run id>", "runbook": definition.name, "started_by": 0} });
    let mut steps = Vec::new();
    plan_steps(&definition.steps, "", &context, &mut steps)?;
    Ok(Plan {
        runbook: definition.name.clone(),
        version: definition.version,
        params,
        locks,
        steps,
    })
}

/// A template that exceeds a limit is an error of the plan (it would fail the same way when the
/// run gets there); one that needs earlier steps' outputs is shown as written.
fn plan_steps(
    definition: &[Step],
    prefix: &str,
    context: &Value,
    out: &mut Vec<PlannedStep>,
) -> Result<(), Error> {
    let limit = |key: &str, field: &str, error: template::Error| Error::Invalid {
        message: format!("step {key:?}: {field}: {error}"),
        field: Some(format!("steps.{key}.{field}")),
    };
    for step in definition {
        let key = if prefix.is_empty() {
            step.id.clone()
        } else {
            format!("{prefix}.{}", step.id)
        };
        let mut note = step.description.clone();
        if let Some(for_each) = &step.for_each {
            match template::render(&for_each.items, context) {
                Err(error) if error.is_limit() => return Err(limit(&key, "for_each", error)),
                Ok(Value::Array(items)) => {
                    let mode = match for_each.mode {
                        definition::Concurrency::Serial => "serial",
                        definition::Concurrency::Parallel => "parallel",
                    };
                    out.push(PlannedStep {
                        key: key.clone(),
                        action: "for_each".to_owned(),
                        input: Value::Array(items.clone()),
                        when: step.when.clone(),
                        note: Some(format!(
                            "{} iterations, {mode} {}",
                            items.len(),
                            for_each.width
                        )),
                    });
                    for (index, item) in items.into_iter().enumerate() {
                        let mut inner = context.clone();
                        if let Some(map) = inner.as_object_mut() {
                            map.insert(for_each.var.clone(), item);
                            map.insert("index".to_owned(), Value::from(index));
                        }
                        plan_steps(&for_each.steps, &format!("{key}[{index}]"), &inner, out)?;
                    }
                }
                _ => {
                    out.push(PlannedStep {
                        key: key.clone(),
                        action: "for_each".to_owned(),
                        input: for_each.items.clone(),
                        when: step.when.clone(),
                        note: Some("items are known only at run time".to_owned()),
                    });
                    plan_steps(&for_each.steps, &format!("{key}[*]"), context, out)?;
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
            let every = step.every.map(crate::duration::format).unwrap_or_default();
            note = format!(
                "{note}{}polled every {every} until {until}",
                if note.is_empty() { "" } else { "; " }
            );
        }
        out.push(PlannedStep {
            key,
            action: step.action.clone(),
            input,
            when: step.when.clone(),
            note: (!note.is_empty()).then_some(note),
        });
    }
    Ok(())
}
