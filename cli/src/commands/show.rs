//! `runbook show <run>`: everything about one run: a header (id, runbook, state and why, what
//! needs the operator's attention, params, locks, who started it, when), the step table (state,
//! attempts, start, duration, and a note: the error, a countdown, lateness, who approved), and
//! the audit list of operator actions.
//!
//! [`render_run`] and [`step_note`] are shared with `watch` and `demo`.

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use runbook_engine::api::{ActorView, AuditView, RunView, StepView};
use serde::Deserialize;
use serde_json::Value;

use super::{run_path, Context};
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, or any unique prefix of it
    pub run: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let run = ctx.client.get(&run_path(&args.run)).await?;
    if ctx.json {
        return render::print_json(&run);
    }
    render::print(&render_run(&run_view(&run)?, render::now()))
}

/// The daemon's answer read as a run: the API's own view type.
pub fn run_view(run: &Value) -> Result<RunView> {
    RunView::deserialize(run).context("the daemon's answer is not a run")
}

/// The states in which a run is over and will not change again.
pub fn is_finished(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "canceled" | "rolled_back")
}

/// A view's error, if it says anything.
pub fn error_text(error: &Option<String>) -> Option<String> {
    error.clone().filter(|error| !error.is_empty())
}

/// The whole run as text: header, step table, audit.
pub fn render_run(run: &RunView, now: DateTime<Utc>) -> String {
    let id = run.id.clone();
    let mut out = String::new();
    let mut field = |label: &str, value: String| {
        for (index, line) in value.lines().enumerate() {
            let label = if index == 0 { label } else { "" };
            out.push_str(&format!("{label:<10}{line}\n"));
        }
    };
    field("run", id.clone());
    field("runbook", format!("{} v{}", run.runbook, run.version));
    field("state", state_text(run));
    if let Some(waiting) = waiting_text(run, now) {
        field("waits for", waiting);
    }
    if let Some(attention) = attention_text(run) {
        field("attention", attention);
    }
    if let Some(error) = error_text(&run.error) {
        field("error", error);
    }
    if !run.params.is_empty() {
        let lines: Vec<String> = run
            .params
            .iter()
            .map(|(key, value)| format!("{key} = {}", render::compact(value)))
            .collect();
        field("params", lines.join("\n"));
    }
    if !run.locks.is_empty() {
        field("locks", run.locks.join(", "));
    }
    if let Some(created) = run.created_at {
        field(
            "created",
            format!(
                "{} by {} ({})",
                render::timestamp(created),
                actor(run.started_by.as_ref()),
                render::relative(created, now)
            ),
        );
    }
    if let Some(finished) = run.finished_at {
        let took = run
            .created_at
            .map(|created| format!(" (took {})", render::duration(finished - created)))
            .unwrap_or_default();
        field("finished", format!("{}{took}", render::timestamp(finished)));
    } else if let Some(wakeup) = run.next_wakeup {
        // A gate wakes up only when its approval's time is up.
        let label = if run.waiting_for.as_deref() == Some("approval") {
            "times out"
        } else {
            "wakes up"
        };
        field(
            label,
            format!(
                "{} ({}, step {})",
                render::timestamp(wakeup),
                render::relative(wakeup, now),
                run.current_step.as_deref().unwrap_or_default()
            ),
        );
    }

    let rows: Vec<Vec<String>> = run.steps.iter().map(|step| step_row(step, now)).collect();
    out.push('\n');
    out.push_str(&render::table(
        &["STEP", "STATE", "ATTEMPTS", "STARTED", "DURATION", "NOTE"],
        &rows,
    ));

    if !run.audit.is_empty() {
        out.push_str("\naudit:\n");
        let rows: Vec<Vec<String>> = run.audit.iter().map(audit_row).collect();
        for line in render::table(&["SEQ", "AT", "BY", "ACTION", "STEP", "COMMENT"], &rows).lines()
        {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if !run.notifications.is_empty() {
        out.push_str("\nnotifications:\n");
        let rows: Vec<Vec<String>> = run
            .notifications
            .iter()
            .map(|note| {
                let at = |time: Option<DateTime<Utc>>| {
                    time.map(render::short_timestamp).unwrap_or_default()
                };
                let how = match note.state.as_str() {
                    "delivered" => format!("at {}", at(note.delivered_at)),
                    _ => format!(
                        "{}{}",
                        note.last_error
                            .as_deref()
                            .map(render::first_line)
                            .unwrap_or(""),
                        note.next_attempt_at
                            .map(|next| format!(" (next try {})", render::short_timestamp(next)))
                            .unwrap_or_default()
                    ),
                };
                vec![
                    note.event.clone(),
                    note.sink.clone(),
                    note.state.clone(),
                    note.attempts.to_string(),
                    how,
                ]
            })
            .collect();
        for line in render::table(&["EVENT", "SINK", "STATE", "TRIES", "DETAIL"], &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// `approval at step gate since 2026-01-02 12:00:01 (3m12s)`: what the run waits for.
pub fn waiting_text(run: &RunView, now: DateTime<Utc>) -> Option<String> {
    let mut text = run.waiting_for.clone()?;
    if let Some(step) = &run.current_step {
        text.push_str(&format!(" at step {step}"));
    }
    if let Some(since) = run.waiting_since {
        text.push_str(&format!(
            " since {} ({})",
            render::timestamp(since),
            render::duration(now - since)
        ));
    }
    Some(text)
}

/// `needs_attention (interrupted), paused`.
fn state_text(run: &RunView) -> String {
    let mut state = run.state.clone();
    if let Some(reason) = run.reason.as_deref().filter(|reason| !reason.is_empty()) {
        state.push_str(&format!(" ({reason})"));
    }
    if run.paused && run.state != "paused" {
        state.push_str(", paused");
    }
    state
}

/// What the operator must decide, with the commands to do it: one whole command a line, each
/// one that parses as it is printed (a skip or retry of an approval gate needs a reason).
pub fn attention_text(run: &RunView) -> Option<String> {
    let attention = run.attention.as_ref()?;
    let id = &run.id;
    let mut commands = Vec::new();
    let step = Some(attention.step.as_str()).filter(|step| !step.is_empty());
    let mut text = match step {
        Some(step) => {
            let is_gate = run
                .steps
                .iter()
                .any(|each| each.id == step && each.action == "approval");
            let reason = if is_gate { " --comment REASON" } else { "" };
            // `brokers[1].restart` is a glob to the shell: quoted.
            let word = render::shell_word(step);
            commands.push(format!("runbook retry {id} {word}{reason}"));
            commands.push(format!("runbook skip {id} {word}{reason}"));
            format!("{step}: {}", attention.message)
        }
        None => {
            commands.push(format!("runbook resume {id}"));
            attention.message.clone()
        }
    };
    let rolling_back = attention.reason == "undo_failed"
        || run.audit.iter().any(|entry| entry.action == "rollback");
    if !run.undos_left.is_empty() && !rolling_back {
        commands.push(format!("runbook rollback {id}"));
    }
    commands.push(format!("runbook cancel {id}"));
    text.push_str("\ndecide with one of:");
    for command in commands {
        text.push_str(&format!("\n  {command}"));
    }
    Some(text)
}

fn step_row(step: &StepView, now: DateTime<Utc>) -> Vec<String> {
    let duration = match (step.started_at, step.finished_at) {
        (Some(started), Some(finished)) => render::duration(finished - started),
        (Some(started), None) => render::duration(now - started),
        _ => String::new(),
    };
    let attempts = match step.attempts {
        0 => String::new(),
        attempts => attempts.to_string(),
    };
    vec![
        step.id.clone(),
        step.state.clone(),
        attempts,
        step.started_at
            .map(render::short_timestamp)
            .unwrap_or_default(),
        duration,
        step_note(step, now),
    ]
}

/// The note of a step: its error, what it waits for (with a countdown), its output's `summary`
/// when it succeeded, how late its timer fired, who approved it, and the state of its undo.
pub fn step_note(step: &StepView, now: DateTime<Utc>) -> String {
    let mut notes = Vec::new();
    if let Some(error) = error_text(&step.error) {
        notes.push(error);
    }
    let state = step.state.as_str();
    if matches!(state, "waiting" | "running") {
        let countdown = step.fire_at.map(|at| {
            if at > now {
                format!("in {}", render::duration(at - now))
            } else {
                "now".to_string()
            }
        });
        match (step.waiting_for.as_deref(), countdown) {
            (Some("approval"), _) => match step.prompt.as_deref().filter(|p| !p.is_empty()) {
                Some(prompt) => notes.push(format!("waiting for approval: {prompt}")),
                None => notes.push("waiting for approval".to_string()),
            },
            (Some("iterations"), _) => notes.push("running its iterations".to_string()),
            (Some("poll"), Some(countdown)) => notes.push(format!("next poll {countdown}")),
            (Some("retry"), Some(countdown)) => notes.push(format!("retry {countdown}")),
            (_, Some(countdown)) => notes.push(format!("fires {countdown}")),
            _ => {}
        }
    }
    // An action's one-line account of what it did (a backup names its path).
    if state == "succeeded" {
        if let Some(summary) = step.output["summary"]
            .as_str()
            .filter(|summary| !summary.is_empty())
        {
            notes.push(summary.to_string());
        }
    }
    // Under 100 ms late is scheduling noise, not news.
    if let Some(late_ms) = step.late_by_ms.filter(|late_ms| *late_ms >= 100) {
        notes.push(format!("fired {} late", render::duration_ms(late_ms)));
    }
    if let Some(approval) = &step.approval {
        let mut text = format!("approved by {}", actor(Some(&approval.by)));
        if let Some(comment) = approval.comment.as_deref().filter(|c| !c.is_empty()) {
            text.push_str(&format!(": {comment}"));
        }
        notes.push(text);
    }
    if let Some(skipped_by) = &step.skipped_by {
        notes.push(format!("skipped by {}", actor(Some(skipped_by))));
    }
    if let Some(undo) = &step.undo {
        let mut text = format!("undo {}", undo.state);
        if let Some(error) = error_text(&undo.error) {
            text.push_str(&format!(": {error}"));
        }
        notes.push(text);
    }
    notes.join("; ")
}

fn audit_row(entry: &AuditView) -> Vec<String> {
    vec![
        entry.seq.to_string(),
        render::timestamp(entry.at),
        actor(Some(&entry.actor)),
        entry.action.clone(),
        entry.step.clone().unwrap_or_default(),
        entry.comment.clone().unwrap_or_default(),
    ]
}

/// `uid 1000` for an actor `{"uid": 1000}` (`uid 0 (schedule:nightly)` with a name, `alice`
/// for a user of a token); the daemon itself when there is none.
pub fn actor(actor: Option<&ActorView>) -> String {
    match actor {
        Some(ActorView {
            user: Some(user), ..
        }) => user.clone(),
        Some(ActorView {
            uid,
            name: Some(name),
            ..
        }) => format!("uid {uid} ({name})"),
        Some(ActorView { uid, .. }) => format!("uid {uid}"),
        None => "the daemon".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        render::time(&json!("2026-01-01T12:00:00Z")).unwrap_or_default()
    }

    #[test]
    fn notes_for_each_kind_of_step() {
        let now = now();
        let check = |step: Value, expect: &str| {
            let step = StepView::deserialize(&step).unwrap();
            assert_eq!(step_note(&step, now), expect)
        };
        let in_2m3s = (now + TimeDelta::seconds(123)).to_rfc3339();
        check(
            json!({"state": "waiting", "waiting_for": "timer", "fire_at": in_2m3s}),
            "fires in 2m3s",
        );
        check(
            json!({"state": "succeeded", "fire_at": in_2m3s, "late_by_ms": 3100}),
            "fired 3.1s late",
        );
        check(
            json!({"state": "waiting", "waiting_for": "approval"}),
            "waiting for approval",
        );
        check(
            json!({"state": "succeeded", "approval": {"by": {"uid": 1000}, "comment": "ok"}}),
            "approved by uid 1000: ok",
        );
        check(
            json!({"state": "failed", "error": "exit status 1", "undo": {"state": "succeeded"}}),
            "exit status 1; undo succeeded",
        );
    }

    #[test]
    fn attention_names_the_commands() {
        let run = json!({"id": "0193", "attention": {"reason": "interrupted", "step": "build",
                          "message": "outcome unknown"}});
        assert_eq!(
            attention_text(&run_view(&run).unwrap()).as_deref(),
            Some(
                "build: outcome unknown\ndecide with one of:\n  runbook retry 0193 build\n  \
                 runbook skip 0193 build\n  runbook cancel 0193"
            )
        );
    }
}
