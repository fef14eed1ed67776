//! `runbook watch <run>`: follow a run until it finishes, showing live progress on stderr.
//!
//! On a terminal, an `indicatif` spinner shows the current step (with a countdown for durable
//! waits: `wait  ⏳ 1m59s left`) and finished steps scroll above it. Elsewhere (a pipe, a log
//! file), one line per step state change: `[12:00:01] hello      succeeded (0.02s)`. When the
//! run needs the operator, its message and the commands to decide are printed, and watching goes
//! on. Exit code 0 when the run ends `succeeded`, 7 otherwise; `--json` prints the final Run.
//!
//! The run is polled every 250 ms; a daemon that restarts meanwhile is waited for (up to 60 s),
//! since a run outlives its daemon.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use runbook_engine::api::{RunView, StepView};

use super::show::{attention_text, error_text, is_finished, run_view, step_note};
use super::{run_path, Context};
use crate::client::ApiError;
use crate::exit;
use crate::render;

const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long a restarting daemon may stay away before watching gives up.
const DAEMON_PATIENCE: Duration = Duration::from_secs(60);
/// Step ids are padded to at least this width in progress lines.
const MIN_STEP_WIDTH: usize = 10;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, or any unique prefix of it
    pub run: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    watch_run(ctx, &args.run).await
}

/// Follows `run` to its end and reports the outcome (see [`outcome`]).
pub async fn watch_run(ctx: &Context, run: &str) -> Result<()> {
    let final_run = follow(ctx, run, false).await?;
    outcome(ctx, &final_run)
}

/// `--json`: the final Run on stdout; then Ok if it succeeded, else exit code 7.
pub fn outcome(ctx: &Context, final_run: &Value) -> Result<()> {
    if ctx.json {
        render::print_json(final_run)?;
    }
    let run = run_view(final_run)?;
    if run.state == "succeeded" {
        return Ok(());
    }
    let mut message = format!("run {} ended {}", run.id, run.state);
    if let Some(error) = error_text(&run.error) {
        message.push_str(&format!(": {error}"));
    }
    Err(exit::run_not_succeeded(message))
}

/// Polls `run` until it is finished, reporting progress on stderr, and returns the final Run.
/// With `auto_approve` (the demo), every approval gate the run waits on is approved once.
pub async fn follow(ctx: &Context, run: &str, auto_approve: bool) -> Result<Value> {
    let mut current = ctx.client.get(&run_path(run)).await?;
    // From here on, use the full id: a prefix could become ambiguous while we watch.
    let id = run_view(&current)?.id;
    let path = run_path(&id);
    let mut progress = Progress::new(&id);
    let mut approved: HashSet<String> = HashSet::new();
    loop {
        let view = run_view(&current)?;
        progress.update(&view, render::now());
        if is_finished(&view.state) {
            progress.finish(&view);
            return Ok(current);
        }
        if auto_approve {
            if let Some(step) = awaiting_approval(&view) {
                if approved.insert(step.clone()) {
                    progress.say(&demo_approval_hint(&step, &id));
                    let body = json!({"step": step, "comment": "approved by the demo"});
                    match ctx.client.post(&format!("{path}/approve"), body).await {
                        // Someone else approved it first: nothing left to do.
                        Err(ApiError::Api { code, .. }) if code == "conflict" => {}
                        Err(err) => return Err(err.into()),
                        Ok(after) => {
                            current = after;
                            continue;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
        current = ctx.client.get_patient(&path, DAEMON_PATIENCE).await?;
    }
}

/// What the demo says when it approves a gate itself.
pub(crate) fn demo_approval_hint(step: &str, run_id: &str) -> String {
    format!("demo: approving {step} (an operator would run: runbook approve {run_id})")
}

/// The step the run waits on for an approval, if any.
fn awaiting_approval(run: &RunView) -> Option<String> {
    run.steps
        .iter()
        .find(|step| step.state == "waiting" && step.waiting_for.as_deref() == Some("approval"))
        .map(|step| step.id.clone())
}

/// Reports what changed between two polls of a run: as lines, and on a terminal as a spinner.
struct Progress {
    run_id: String,
    /// `Some` when stderr is a terminal (indicatif decides, honouring `TERM=dumb` and the like).
    spinner: Option<ProgressBar>,
    /// The last seen `(state, attempts)` of every step, by step id.
    step_states: HashMap<String, (String, u32)>,
    /// The attention message already reported, so it is printed once.
    attention: Option<String>,
    paused: bool,
}

impl Progress {
    fn new(run_id: &str) -> Progress {
        let bar = ProgressBar::new_spinner();
        let spinner = if bar.is_hidden() {
            None
        } else {
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            Some(bar)
        };
        Progress {
            run_id: run_id.to_string(),
            spinner,
            step_states: HashMap::new(),
            attention: None,
            paused: false,
        }
    }

    /// Prints a line above the spinner, or to stderr.
    fn say(&self, line: &str) {
        match &self.spinner {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn update(&mut self, run: &RunView, now: DateTime<Utc>) {
        let width = run
            .steps
            .iter()
            .map(|step| step.id.chars().count())
            .max()
            .unwrap_or(0)
            .max(MIN_STEP_WIDTH);
        for step in &run.steps {
            let (id, state, attempts) = (step.id.clone(), step.state.clone(), step.attempts);
            let seen = self.step_states.get(&id);
            let changed = match seen {
                Some((old_state, old_attempts)) => *old_state != state || *old_attempts != attempts,
                None => state != "pending",
            };
            if changed {
                self.say(&step_line(step, width, now));
                self.step_states.insert(id, (state, attempts));
            }
        }

        let paused = run.paused || run.state == "paused";
        if paused != self.paused {
            self.paused = paused;
            let what = if paused {
                paused_hint(&self.run_id)
            } else {
                "resumed".to_string()
            };
            self.say(&format!("[{}] run {what}", render::clock(now)));
        }

        let attention = if run.state == "needs_attention" {
            attention_text(run)
        } else {
            None
        };
        if attention != self.attention {
            if let Some(text) = &attention {
                let mut lines = text.lines();
                let message = lines.next().unwrap_or_default();
                self.say(&format!(
                    "[{}] run needs attention: {message}",
                    render::clock(now)
                ));
                for line in lines {
                    self.say(&format!("           {line}"));
                }
            }
            self.attention = attention;
        }

        if let Some(bar) = &self.spinner {
            bar.set_message(status(run, now));
        }
    }

    fn finish(&self, run: &RunView) {
        if let Some(bar) = &self.spinner {
            bar.finish_and_clear();
        }
        let finished = run.finished_at;
        let took = match (run.created_at, finished) {
            (Some(created), Some(finished)) => {
                format!(" in {}", render::duration(finished - created))
            }
            _ => String::new(),
        };
        let at = finished.unwrap_or_else(render::now);
        eprintln!(
            "[{}] run {} {}{took}",
            render::clock(at),
            self.run_id,
            run.state
        );
    }
}

/// `[12:00:01] hello      succeeded (0.02s)`, stamped with when the step changed.
fn step_line(step: &StepView, width: usize, now: DateTime<Utc>) -> String {
    let (started, finished) = (step.started_at, step.finished_at);
    let state = step.state.clone();
    // `started_at` is the first attempt's; a retry's `running` is stamped when it is seen.
    let at = match state.as_str() {
        "running" | "waiting" => now,
        _ => finished.unwrap_or(now),
    };
    let note = step_note(step, now);
    // `gate  waiting for approval`, not `gate  waiting: waiting for approval`.
    let (mut status, note) = if note.starts_with(state.as_str()) {
        (note, String::new())
    } else {
        (state.clone(), note)
    };
    let attempts = step.attempts;
    if state == "running" && attempts > 1 {
        status.push_str(&format!(" (attempt {attempts})"));
    }
    if let (Some(started), Some(finished)) = (started, finished) {
        if state != "running" && state != "waiting" {
            status.push_str(&format!(" ({})", render::duration(finished - started)));
        }
    }
    if !note.is_empty() {
        status.push_str(&format!(": {note}"));
    }
    format!("[{}] {:width$} {status}", render::clock(at), step.id)
}

/// `paused (runbook resume <run>)`.
pub(crate) fn paused_hint(run_id: &str) -> String {
    format!("paused (runbook resume {run_id})")
}

/// The spinner's message: the current step and what it is doing, with a countdown for waits.
pub(crate) fn status(run: &RunView, now: DateTime<Utc>) -> String {
    let run_state = run.state.clone();
    let current = run.current_step.as_deref();
    let step = current.and_then(|id| run.steps.iter().find(|step| step.id == id));
    let Some(step) = step else {
        return run_state;
    };
    let id = &step.id;
    if run_state == "needs_attention" {
        return format!("{id}  needs attention (see above)");
    }
    if run.paused || run_state == "paused" {
        return format!("{id}  paused");
    }
    if step.waiting_for.as_deref() == Some("approval") {
        return format!(
            "{id}  waiting for approval: runbook approve {}",
            render::short_id(&run.id)
        );
    }
    let wakeup = run.next_wakeup.or(step.fire_at);
    if let Some(wakeup) = wakeup.filter(|_| step.state == "waiting") {
        return format!("{id}  ⏳ {} left", render::duration(wakeup - now));
    }
    match step.started_at {
        Some(started) => format!("{id}  {} ({})", step.state, render::duration(now - started)),
        None => format!("{id}  {}", step.state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use serde::Deserialize;

    fn now() -> DateTime<Utc> {
        render::time(&json!("2026-01-01T12:00:00Z")).unwrap_or_default()
    }

    #[test]
    fn finished_step_line_has_duration() {
        let now = now();
        let step = json!({"id": "hello", "state": "succeeded", "attempts": 1,
            "started_at": now.to_rfc3339(),
            "finished_at": (now + TimeDelta::milliseconds(20)).to_rfc3339()});
        let line = step_line(&StepView::deserialize(&step).unwrap(), 10, now);
        let clock = render::clock(now + TimeDelta::milliseconds(20));
        assert_eq!(line, format!("[{clock}] hello      succeeded (0.02s)"));
    }

    #[test]
    fn waiting_status_counts_down() {
        let now = now();
        let run = json!({"id": "0193", "state": "waiting", "current_step": "wait",
            "next_wakeup": (now + TimeDelta::seconds(119)).to_rfc3339(),
            "steps": [{"id": "wait", "state": "waiting", "waiting_for": "timer"}]});
        assert_eq!(status(&run_view(&run).unwrap(), now), "wait  ⏳ 1m59s left");
    }

    #[test]
    fn approval_gate_is_found() {
        let run = json!({"steps": [
            {"id": "hello", "state": "succeeded"},
            {"id": "gate", "state": "waiting", "waiting_for": "approval"}]});
        assert_eq!(
            awaiting_approval(&run_view(&run).unwrap()).as_deref(),
            Some("gate")
        );
    }
}
