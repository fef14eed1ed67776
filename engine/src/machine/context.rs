//! The template context of a step instance: what `{{ ... }}` can see at that place in a run.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::state::{RunState, StepStatus};
use crate::template::{self, TemplateKind};

/// Which steps' views (and captures) a context must hold: those its templates refer to. A
/// context of every step copies every output of the run for every template rendered, so a run's
/// steps would cost the square of its length (and of its outputs); most templates name one or
/// two steps. `steps` used whole, or a template that does not compile, wants everything (the
/// render then reports the mistake as before).
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// `None`: every step.
    steps: Option<BTreeSet<String>>,
    /// The top-level names referred to (`None`: all), for captures.
    names: Option<BTreeSet<String>>,
}

impl Wanted {
    pub fn everything() -> Wanted {
        Wanted::default()
    }

    /// What `templates` refer to.
    pub fn of<'a>(templates: impl IntoIterator<Item = (&'a str, TemplateKind)>) -> Wanted {
        let mut steps = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut every_step = false;
        for (text, kind) in templates {
            let Ok(found) = template::referenced_names(text, kind) else {
                return Wanted::everything();
            };
            for name in found {
                let mut parts = name.split('.');
                let root = parts.next().unwrap_or_default();
                if root == "steps" {
                    match parts.next() {
                        Some(id) => {
                            steps.insert(id.to_owned());
                        }
                        None => every_step = true,
                    }
                }
                names.insert(root.to_owned());
            }
        }
        Wanted {
            steps: (!every_step).then_some(steps),
            names: Some(names),
        }
    }

    /// What the templates among the strings of `values` refer to.
    pub fn of_values(values: &[&Value]) -> Wanted {
        let mut texts = Vec::new();
        for value in values {
            collect_templates(value, &mut texts);
        }
        Wanted::of(texts.into_iter().map(|text| (text, TemplateKind::Text)))
    }

    /// What either wants.
    pub fn and(self, other: Wanted) -> Wanted {
        fn union(
            a: Option<BTreeSet<String>>,
            b: Option<BTreeSet<String>>,
        ) -> Option<BTreeSet<String>> {
            let (mut a, b) = (a?, b?);
            a.extend(b);
            Some(a)
        }
        Wanted {
            steps: union(self.steps, other.steps),
            names: union(self.names, other.names),
        }
    }

    fn step(&self, id: &str) -> bool {
        self.steps.as_ref().is_none_or(|steps| steps.contains(id))
    }

    fn name(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|names| names.contains(name))
    }
}

fn collect_templates<'a>(value: &'a Value, texts: &mut Vec<&'a str>) {
    match value {
        Value::String(text) if text.contains("{{") || text.contains("{%") => texts.push(text),
        Value::Array(items) => items.iter().for_each(|item| collect_templates(item, texts)),
        Value::Object(map) => map.values().for_each(|item| collect_templates(item, texts)),
        _ => {}
    }
}

/// Builds the context for step instance `key` (`loop[2].child` sees the outer steps, its
/// iteration's siblings, and the loop variable of every enclosing loop), holding of the steps'
/// views and captures only what `wanted` names.
pub fn for_templates(state: &RunState, key: &str, wanted: &Wanted) -> Value {
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
            let captured = definition
                .capture
                .as_ref()
                .is_some_and(|capture| wanted.name(capture));
            if !wanted.step(&definition.id) && !captured {
                continue;
            }
            let key = crate::definition::step_key::child(prefix, &definition.id);
            let Some(step) = state.step(&key) else {
                continue;
            };
            if wanted.step(&definition.id) {
                let view = json!({
                    "output": step.output.clone().unwrap_or(Value::Null),
                    "state": step.status.name(),
                    "attempts": step.attempts,
                    "error": step.error,
                });
                steps.insert(definition.id.clone(), view);
            }
            if step.status == StepStatus::Succeeded && captured {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(text: &str) -> Wanted {
        Wanted::of([(text, TemplateKind::Text)])
    }

    #[test]
    fn a_context_holds_the_steps_its_templates_name() {
        let named = wanted("{{ steps.backup.output.path }} to {{ steps.copy.state }}");
        assert!(named.step("backup") && named.step("copy"));
        assert!(!named.step("probe"), "{named:?}");
        assert!(named.name("steps") && !named.name("topics"));

        let condition = Wanted::of([("steps.drain.output.lag == 0", TemplateKind::Expression)]);
        assert!(condition.step("drain") && !condition.step("backup"));

        // A capture is a top-level name.
        let captured = wanted("{{ topics | length }}");
        assert!(captured.name("topics") && !captured.step("backup"));

        let both = wanted("{{ steps.a.output }}").and(wanted("{{ steps.b.output }}"));
        assert!(both.step("a") && both.step("b") && !both.step("c"));
    }

    #[test]
    fn steps_used_whole_or_a_broken_template_want_every_step() {
        for text in [
            "{{ steps['backup'].output }}",
            "{% for id in steps %}{{ id }}{% endfor %}",
            "{{ steps | tojson }}",
            "{{ steps.",
        ] {
            let all = wanted(text);
            assert!(
                all.step("backup") && all.step("anything"),
                "{text}: {all:?}"
            );
        }
        let all = wanted("{{ steps.a.output }}").and(wanted("{{ steps | length }}"));
        assert!(all.step("z"), "{all:?}");
    }
}
