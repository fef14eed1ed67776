//! `runbook plan <name|file.toml> [-p key=value]... [--check]`: a dry run. The daemon resolves
//! the params, renders the locks and every step's input, and executes nothing; this shows what
//! `start` would do with the same arguments.
//!
//! With `--check`, the daemon also runs the read-only steps against the real target (in order,
//! their outputs feeding the later steps' inputs) and asks each mutating step's action what it
//! would change (before → after), without creating a run or changing anything. Exit code 8 when
//! a step's check failed (a run would stop there), 0 otherwise.

use anyhow::Result;
use serde_json::Value;

use super::{Context, Target};
use crate::{exit, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Run the read-only steps against the real target and show what each mutating step would
    /// change (nothing is changed, no run is created); exit 8 when a step's check failed
    #[arg(long)]
    pub check: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let mut body = args.target.request()?;
    if args.check {
        body.insert("check".to_owned(), Value::Bool(true));
    }
    let plan = ctx.client.post("/v1/plan", Value::Object(body)).await?;
    if ctx.json {
        render::print_json(&plan)?;
    } else {
        render::print(&render_plan(&plan))?;
    }
    match plan["check"]["failed"].as_u64() {
        Some(failed) if failed > 0 => Err(exit::check_failed(format!(
            "the check of {failed} step(s) failed"
        ))),
        _ => Ok(()),
    }
}

/// The plan as text: resolved params, rendered locks, numbered steps with their input.
pub fn render_plan(plan: &Value) -> String {
    let checked = plan["check"].is_object();
    let mut out = format!(
        "plan of {} v{} ({})\n",
        render::text(&plan["runbook"]),
        render::text(&plan["version"]),
        if checked {
            "checked against the target: read-only steps ran, nothing was changed"
        } else {
            "nothing is executed"
        }
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
        if step["check"].is_object() {
            render_check(&mut out, &detail, &step["check"]);
        }
    }
    if checked {
        out.push_str(&format!("\n{}\n", summary(&plan["check"])));
    }
    out
}

/// The most characters of one output shown in text (`--json` has all of it).
const OUTPUT_SHOWN: usize = 600;

/// The `check:` lines of a step.
fn render_check(out: &mut String, detail: &str, check: &Value) {
    let status = check["status"].as_str().unwrap_or_default();
    let note = check["note"].as_str().filter(|note| !note.is_empty());
    let line = |out: &mut String, text: &str| out.push_str(&format!("{detail}check: {text}\n"));
    match status {
        "read" => {
            let mut output = render::compact(&check["output"]);
            if output.chars().count() > OUTPUT_SHOWN {
                output =
                    output.chars().take(OUTPUT_SHOWN).collect::<String>() + "… (--json shows all)";
            }
            line(out, &format!("read {output}"));
        }
        "failed" => line(out, &format!("FAILED: {}", render::text(&check["error"]))),
        "may_fail" => line(
            out,
            &format!("fails now: {}", render::text(&check["error"])),
        ),
        "would_change" | "unchanged" => {
            let changes = check["preview"]["changes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if changes.is_empty() && status == "unchanged" {
                line(out, "nothing to change");
            }
            for change in changes {
                line(
                    out,
                    &format!(
                        "{}: {} → {}",
                        render::text(&change["what"]),
                        shown(&change["before"]),
                        shown(&change["after"])
                    ),
                );
            }
        }
        "skipped" => line(out, "skipped"),
        _ => {}
    }
    if let Some(note) = note {
        line(out, note);
    }
    for log in check["log"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push_str(&format!("{detail}  | {}\n", render::text(log)));
    }
}

/// A before/after value: text as is, `null` as `(none)`, anything else as JSON.
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "(none)".to_owned(),
        Value::String(text) => text.clone(),
        other => render::compact(other),
    }
}

/// `check: 3 steps read, 2 would change, 1 failed, 4 not checked (...)`.
fn summary(check: &Value) -> String {
    let count = |key: &str| check[key].as_u64().unwrap_or(0);
    let mut parts = vec![
        format!("{} step(s) read", count("read")),
        format!("{} would change", count("would_change")),
    ];
    for (key, what) in [
        ("unchanged", "unchanged"),
        ("failed", "failed"),
        (
            "may_fail",
            "fail on the state now (earlier steps would change it)",
        ),
        ("skipped", "skipped by `when`"),
        (
            "described",
            "described (wait, approval, loop: not executed)",
        ),
    ] {
        if count(key) > 0 {
            parts.push(format!("{} {what}", count(key)));
        }
    }
    let mut text = format!("check: {}", parts.join(", "));
    if count("not_checked") > 0 {
        let reasons: Vec<String> = check["reasons"]
            .as_object()
            .map(|reasons| {
                reasons
                    .iter()
                    .map(|(reason, n)| format!("{n}: {reason}"))
                    .collect()
            })
            .unwrap_or_default();
        text.push_str(&format!(
            ", {} not checked ({})",
            count("not_checked"),
            reasons.join("; ")
        ));
    }
    if let Some(first) = check["first_failure"].as_str() {
        text.push_str(&format!("; a run would stop at `{first}`"));
    }
    if let Some(limit) = check["limit_reached"].as_str() {
        text.push_str(&format!("; {limit}"));
    }
    text.push_str(&format!(" [{} ms]", count("elapsed_ms")));
    text
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

    #[test]
    fn a_checked_plan_shows_check_lines_and_a_summary() {
        let plan = json!({
            "runbook": "demo", "version": 1, "params": {}, "locks": [],
            "steps": [
                {"key": "route", "action": "rocketmq.topic_route", "input": {}, "mutates": false,
                 "check": {"status": "failed", "error": "namesrv 127.0.0.1:1 did not answer"}},
                {"key": "perm", "action": "rocketmq.topic_upsert", "input": {}, "mutates": true,
                 "check": {"status": "would_change", "note": "read-modify-write",
                           "preview": {"changes": [{"what": "topic T on broker-a: perm",
                                                    "before": "6 (read/write)", "after": "4 (read-only)"}]}}}
            ],
            "check": {"read": 0, "would_change": 1, "failed": 1, "first_failure": "route",
                      "not_checked": 1, "reasons": {"its action has no preview": 1}, "elapsed_ms": 12}
        });
        let text = render_plan(&plan);
        assert!(
            text.starts_with("plan of demo v1 (checked against the target"),
            "{text}"
        );
        assert!(
            text.contains("     check: FAILED: namesrv 127.0.0.1:1 did not answer\n"),
            "{text}"
        );
        assert!(
            text.contains("     check: topic T on broker-a: perm: 6 (read/write) → 4 (read-only)\n     check: read-modify-write\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\ncheck: 0 step(s) read, 1 would change, 1 failed, 1 not checked (1: its action has no preview); a run would stop at `route` [12 ms]\n"),
            "{text}"
        );
    }
}
