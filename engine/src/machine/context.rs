//! The template context of a step instance: what `{{ ... }}` can see at that place in a run.

use serde_json::{json, Map, Value};

use super::state::{RunState, StepStatus};

/// Builds the context for step instance `key` (`loop[2].child` sees the outer steps, its
/// iteration's siblings, and the loop variable of every enclosing loop).
pub fn for_step(state: &RunState, key: &str) -> Value {
    let mut context = Map::new();
    context.insert("params".to_owned(), Value::Object(state.params.clone()));
    context.insert("run".to_owned(), json!({"id": state.id.to_string(), "runbook": state.runbook, "started_by": state.started_by.uid}));

    // The scope prefixes that enclose `key`: "", "loop[2]", "loop[2].inner[0]", ...
    let mut prefixes = vec![String::new()];
    let segments: Vec<&str> = key.split('.').collect();
    for depth in 1..segments.len() {
        prefixes.push(segments[..depth].join("."));
    }

    // The steps of each enclosing scope, found by key: a walk over every step state of the
    // run would cost the run's length for every template (a loop over many items).
    let mut steps = Map::new();
    for prefix in &prefixes {
        let scope = if prefix.is_empty() {
            Some(&state.definition.steps)
        } else {
            crate::definition::step_key::split_iteration(prefix)
                .and_then(|(loop_key, _)| state.definition.step(loop_key))
                .and_then(|step| step.for_each())
                .map(|for_each| &for_each.steps)
        };
        for definition in scope.into_iter().flatten() {
            let key = crate::definition::step_key::child(prefix, &definition.id);
            let Some(step) = state.step(&key) else {
                continue;
            };
            let view = json!({
                "output": step.output.clone().unwrap_or(Value::Null),
                "state": step.status.name(),
                "attempts": step.attempts,
                "error": step.error,
            });
            steps.insert(definition.id.clone(), view);
            if step.status == StepStatus::Succeeded {
                if let Some(capture) = &definition.capture {
                    context.insert(capture.clone(), step.output.clone().unwrap_or(Value::Null));
                }
            }
        }
    }
    context.insert("steps".to_owned(), Value::Object(steps));

    // Loop variables of the enclosing loops, outermost first.
    for prefix in prefixes.iter().skip(1) {
        let Some((loop_key, index)) = crate::definition::step_key::split_iteration(prefix) else {
            continue;
        };
        let Some(definition) = state
            .definition
            .step(loop_key)
            .and_then(|step| step.for_each())
        else {
            continue;
        };
        let item = state
            .step(loop_key)
            .and_then(|step| step.iterations.as_ref())
            .and_then(|iterations| iterations.get(index))
            .map(|iteration| (*iteration.item).clone())
            .unwrap_or(Value::Null);
        context.insert(definition.var.clone(), item);
        context.insert("index".to_owned(), Value::from(index));
    }
    Value::Object(context)
}
