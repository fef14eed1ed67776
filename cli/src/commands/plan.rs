//! `runbook plan <name|file.toml> [-p key=value]...`: a dry run. The daemon resolves the params,
//! renders the locks and every step's input, and executes nothing; this shows what `start` would
//! do with the same arguments.

use anyhow::Result;
use serde_json::Value;

use super::{Context, Target};
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let body = args.target.request()?;
    let plan = ctx.client.post("/v1/plan", Value::Object(body)).await?;
    if ctx.json {
        return render::print_json(&plan);
    }
    render::print(&render_plan(&plan))
}

/// The plan as text: resolved params, rendered locks, numbered steps with their input.
pub fn render_plan(plan: &Value) -> String {
    let mut out = format!(
        "plan of {} v{} (nothing is executed)\n",
        render::text(&plan["runbook"]),
        render::text(&plan["version"])
    );

    out.push_str("\nparams:\n");
    match plan["params"].as_object() {
        Some(params) if !params.is_empty() => {
            let width = params
                .keys()
                .map(|key| key.chars().count())
                .max()
                .unwrap_or(0);
            for (key, value) in params {
                out.push_str(&format!("  {key:width$} = {}\n", render::compact(value)));
            }
        }
        _ => out.push_str("  (none)\n"),
    }

    if let Some(locks) = plan["locks"].as_array().filter(|locks| !locks.is_empty()) {
        out.push_str("\nlocks:\n");
        for lock in locks {
            out.push_str(&format!("  {}\n", render::text(lock)));
        }
    }

    out.push_str("\nsteps:\n");
    let steps = plan["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let number_width = steps.len().to_string().len();
    let detail = " ".repeat(number_width + 4);
    for (index, step) in steps.iter().enumerate() {
        out.push_str(&format!(
            "  {:>number_width$}. {}  [{}{}]\n",
            index + 1,
            render::text(&step["key"]),
            render::text(&step["action"]),
            effect(&step["mutates"])
        ));
        if !step["input"].is_null() {
            out.push_str(&format!(
                "{detail}input: {}\n",
                render::compact(&step["input"])
            ));
        }
        if !step["when"].is_null() {
            out.push_str(&format!("{detail}when: {}\n", render::text(&step["when"])));
        }
        if !step["timeout"].is_null() {
            out.push_str(&format!(
                "{detail}timeout: {}\n",
                render::text(&step["timeout"])
            ));
        }
        let retry = &step["retry"];
        if retry.is_object() {
            out.push_str(&format!(
                "{detail}retry: at most {} attempts, backoff {} doubling up to {}\n",
                render::text(&retry["max_attempts"]),
                render::text(&retry["backoff"]),
                render::text(&retry["max_backoff"])
            ));
        }
        let undo = &step["undo"];
        if undo.is_object() {
            out.push_str(&format!(
                "{detail}undo: [{}{}] {}\n",
                render::text(&undo["action"]),
                effect(&undo["mutates"]),
                render::compact(&undo["input"])
            ));
        }
        if let Some(note) = step["note"].as_str().filter(|note| !note.is_empty()) {
            out.push_str(&format!("{detail}note: {note}\n"));
        }
    }
    out
}

/// `, mutates` or `, reads only` after an action's name (nothing for a `for_each`).
fn effect(mutates: &Value) -> &'static str {
    match mutates.as_bool() {
        Some(true) => ", mutates",
        Some(false) => ", reads only",
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plan_lists_params_locks_and_numbered_steps() {
        let plan = json!({
            "runbook": "demo", "version": 1, "params": {"name": "world"},
            "locks": ["demo:world"],
            "steps": [
                {"key": "hello", "action": "exec", "input": {"argv": ["echo", "hello world"]},
                 "when": null, "note": null, "mutates": true, "timeout": "5m",
                 "retry": {"max_attempts": 3, "backoff": "5s", "max_backoff": "5m"},
                 "undo": {"action": "exec", "input": {"command": "echo undo"}, "mutates": true}},
                {"key": "gate", "action": "approval", "input": {}, "when": "params.name != ''",
                 "note": "waits for `runbook approve`", "mutates": false}
            ]
        });
        let expect = "plan of demo v1 (nothing is executed)\n\nparams:\n  name = \"world\"\n\n\
            locks:\n  demo:world\n\nsteps:\n  1. hello  [exec, mutates]\n\
            \x20    input: {\"argv\":[\"echo\",\"hello world\"]}\n\
            \x20    timeout: 5m\n\
            \x20    retry: at most 3 attempts, backoff 5s doubling up to 5m\n\
            \x20    undo: [exec, mutates] {\"command\":\"echo undo\"}\n\
            \x20 2. gate  [approval, reads only]\n     input: {}\n     when: params.name != ''\n\
            \x20    note: waits for `runbook approve`\n";
        assert_eq!(render_plan(&plan), expect);
    }
}
