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
            "  {:>number_width$}. {}  [{}]\n",
            index + 1,
            render::text(&step["key"]),
            render::text(&step["action"])
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
        if let Some(note) = step["note"].as_str().filter(|note| !note.is_empty()) {
            out.push_str(&format!("{detail}note: {note}\n"));
        }
    }
    out
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
                 "when": null, "note": null},
                {"key": "gate", "action": "approval", "input": {}, "when": "params.name != ''",
                 "note": "waits for `runbook approve`"}
            ]
        });
        let expect = "plan of demo v1 (nothing is executed)\n\nparams:\n  name = \"world\"\n\n\
            locks:\n  demo:world\n\nsteps:\n  1. hello  [exec]\n\
            \x20    input: {\"argv\":[\"echo\",\"hello world\"]}\n\
            \x20 2. gate  [approval]\n     input: {}\n     when: params.name != ''\n\
            \x20    note: waits for `runbook approve`\n";
        assert_eq!(render_plan(&plan), expect);
    }
}
