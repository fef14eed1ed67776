//! `runbook describe <name>`: what a runbook takes and does: its params as a table, its locks,
//! then its steps as an indented tree with every field that changes how a step runs (`when`,
//! `until`, `timeout`, `retry`, `idempotent`, `on_failure`, `for_each` with its nested steps,
//! `undo`).

use anyhow::Result;
use serde_json::Value;

use super::Context;
use crate::client::segment;
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The runbook's name (see `runbook list`)
    pub name: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let mut definition = ctx
        .client
        .get(&format!("/v1/runbooks/{}", segment(&args.name)))
        .await?;
    // Whether each action mutates, from the schemas of the actions this build offers (the
    // daemon's own).
    mark_mutating(&mut definition["steps"], &runbook_runbooks::actions());
    if ctx.json {
        return render::print_json(&definition);
    }
    render::print(&describe(&definition))
}

/// Sets `mutates` on every step (and undo) whose action is known.
fn mark_mutating(steps: &mut Value, actions: &runbook_engine::action::Registry) {
    let Some(steps) = steps.as_array_mut() else {
        return;
    };
    let mark = |target: &mut Value| {
        let schema = target["action"]
            .as_str()
            .and_then(|name| actions.schema(name));
        if let (Some(schema), Some(object)) = (schema, target.as_object_mut()) {
            object.insert("mutates".to_owned(), Value::Bool(schema.mutates));
        }
    };
    for step in steps {
        mark(step);
        if let Some(undo) = step.get_mut("undo").filter(|undo| undo.is_object()) {
            mark(undo);
        }
        if let Some(for_each) = step.get_mut("for_each").filter(|value| value.is_object()) {
            mark_mutating(&mut for_each["steps"], actions);
        }
    }
}

/// The whole description as text.
pub fn describe(definition: &Value) -> String {
    let mut out = format!(
        "{} v{} ({})\n",
        render::text(&definition["name"]),
        render::text(&definition["version"]),
        render::text(&definition["source"])
    );
    if let Some(description) = definition["description"].as_str() {
        for line in description.lines() {
            out.push_str(format!("  {line}").trim_end());
            out.push('\n');
        }
    }

    let params = as_slice(&definition["params"]);
    out.push_str("\nparams:\n");
    if params.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let rows: Vec<Vec<String>> = params.iter().map(param_row).collect();
        for line in render::table(
            &["NAME", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"],
            &rows,
        )
        .lines()
        {
            out.push_str(&format!("  {line}\n"));
        }
    }

    let locks = as_slice(&definition["locks"]);
    if !locks.is_empty() {
        out.push_str("\nlocks:\n");
        for lock in locks {
            out.push_str(&format!("  {}\n", render::text(lock)));
        }
    }

    out.push_str("\nsteps:\n");
    steps_tree(as_slice(&definition["steps"]), 1, &mut out);
    out
}

fn param_row(param: &Value) -> Vec<String> {
    let mut kind = render::text(&param["type"]);
    let values = as_slice(&param["values"]);
    if !values.is_empty() {
        let names: Vec<String> = values.iter().map(render::text).collect();
        kind = format!("{kind}({})", names.join("|"));
    }
    let required = if param["required"].as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    };
    let mut description = render::first_line(&render::text(&param["description"])).to_string();
    if let Some(pattern) = param["pattern"].as_str() {
        description = format!("{description} (pattern: {pattern})");
    }
    vec![
        render::text(&param["name"]),
        kind,
        required.to_string(),
        render::text(&param["default"]),
        description,
    ]
}

/// Appends `steps` at `depth` (two spaces per level), recursing into `for_each` bodies.
fn steps_tree(steps: &[Value], depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    for step in steps {
        let mut head = format!("{indent}- {}", render::text(&step["id"]));
        if let Some(action) = step["action"].as_str() {
            let effect = match step["mutates"].as_bool() {
                Some(true) => ", mutates",
                Some(false) => ", reads only",
                None => "",
            };
            head.push_str(&format!("  [{action}{effect}]"));
        }
        if let Some(description) = step["description"].as_str() {
            if !description.is_empty() {
                head.push_str(&format!("  {}", render::first_line(description)));
            }
        }
        out.push_str(&head);
        out.push('\n');

        let detail = format!("{indent}    ");
        if !is_empty(&step["with"]) {
            out.push_str(&format!(
                "{detail}with: {}\n",
                render::compact(&step["with"])
            ));
        }
        let attributes = attributes(step);
        if !attributes.is_empty() {
            out.push_str(&format!("{detail}{}\n", attributes.join(", ")));
        }
        let for_each = &step["for_each"];
        if for_each.is_object() {
            let mut line = format!(
                "{detail}for_each {} in {} ({}",
                render::text(&for_each["as"]),
                render::text(&for_each["items"]),
                render::text(&for_each["mode"])
            );
            if !for_each["width"].is_null() {
                line.push_str(&format!(", width {}", render::text(&for_each["width"])));
            }
            out.push_str(&line);
            out.push_str("):\n");
            steps_tree(as_slice(&for_each["steps"]), depth + 3, out);
        }
        if !is_empty(&step["undo"]) {
            out.push_str(&format!("{detail}undo: {}\n", undo(&step["undo"])));
        }
    }
}

/// The fields that change how a step runs, as `key: value` items; absent ones are left out.
fn attributes(step: &Value) -> Vec<String> {
    let mut items = Vec::new();
    if !is_empty(&step["when"]) {
        items.push(format!("when: {}", render::text(&step["when"])));
    }
    if !is_empty(&step["until"]) {
        let mut until = format!("until: {}", render::text(&step["until"]));
        if !is_empty(&step["every"]) {
            until.push_str(&format!(" every {}", duration(&step["every"])));
        }
        items.push(until);
    }
    if !is_empty(&step["timeout"]) {
        items.push(format!("timeout: {}", duration(&step["timeout"])));
    }
    if !is_empty(&step["retry"]) {
        items.push(format!("retry: {}", retry(&step["retry"])));
    }
    // `pause` is the default: only say something when a step differs.
    if !is_empty(&step["on_failure"]) && step["on_failure"] != "pause" {
        items.push(format!("on_failure: {}", render::text(&step["on_failure"])));
    }
    if !is_empty(&step["capture"]) {
        items.push(format!("capture: {}", render::text(&step["capture"])));
    }
    if step["idempotent"].as_bool() == Some(true) {
        items.push("idempotent".to_string());
    }
    items
}

/// An undo step: its action and input, or the value as text.
fn undo(value: &Value) -> String {
    let effect = match value["mutates"].as_bool() {
        Some(true) => " (mutates)",
        Some(false) => " (reads only)",
        None => "",
    };
    let action = value["action"]
        .as_str()
        .map(|action| format!("{action}{effect}"));
    match action.as_deref() {
        Some(action) if is_empty(&value["with"]) => action.to_string(),
        Some(action) => format!("{action} {}", render::compact(&value["with"])),
        None => render::text(value),
    }
}

/// A duration of a definition: the API gives milliseconds; a string is shown as is.
fn duration(value: &Value) -> String {
    match value.as_i64() {
        Some(ms) => render::duration_ms(ms),
        None => render::text(value),
    }
}

/// A retry policy as `max_attempts=3 backoff=1.0s max_backoff=1m0s` (the API gives the
/// durations in milliseconds), anything else as text.
fn retry(value: &Value) -> String {
    if !value.is_object() {
        return render::text(value);
    }
    let mut parts = Vec::new();
    if !value["max_attempts"].is_null() {
        parts.push(format!(
            "max_attempts={}",
            render::text(&value["max_attempts"])
        ));
    }
    for key in ["backoff", "max_backoff"] {
        if !value[key].is_null() {
            parts.push(format!("{key}={}", duration(&value[key])));
        }
    }
    parts.join(" ")
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    }
}

fn as_slice(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tree_shows_fields_loops_and_undo() {
        let definition = json!({
            "name": "demo", "version": 1, "description": "a demo", "source": "builtin:demo.toml",
            "params": [{"name": "name", "type": "string", "required": false, "default": "world",
                        "description": "who to greet", "pattern": null, "values": null}],
            "locks": ["demo:{{ params.name }}"],
            "steps": [
                {"id": "hello", "action": "exec", "with": {"argv": ["echo", "hi"]},
                 "timeout": 300000, "retry": {"max_attempts": 3, "backoff": 1000},
                 "on_failure": "abort",
                 "idempotent": true, "undo": {"action": "exec", "with": {"argv": ["true"]}}},
                {"id": "each", "for_each": {"items": "[1, 2]", "as": "n", "mode": "serial",
                 "steps": [{"id": "inner", "action": "noop", "when": "n > 1"}]}}
            ]
        });
        let text = describe(&definition);
        assert!(text.contains("demo v1 (builtin:demo.toml)"), "{text}");
        assert!(
            text.contains("NAME  TYPE    REQUIRED  DEFAULT  DESCRIPTION"),
            "{text}"
        );
        assert!(
            text.contains(
                "      timeout: 5m, retry: max_attempts=3 backoff=1s, on_failure: abort, \
                 idempotent\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("      undo: exec {\"argv\":[\"true\"]}\n"),
            "{text}"
        );
        assert!(
            text.contains("      for_each n in [1, 2] (serial):\n"),
            "{text}"
        );
        assert!(
            text.contains("        - inner  [noop]\n            when: n > 1\n"),
            "{text}"
        );
    }
}
