//! `runbook ps [--all]`: the runs, newest first, as a table: id (the shortest prefix, at least
//! 13 characters, that tells it from the other runs listed), runbook, state,
//! current step, next wake-up (relative: `in 71h59m`) and age. Without `--all`, only runs that
//! are not finished.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Context;
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Include finished runs (succeeded, failed, canceled, rolled back)
    #[arg(long, short)]
    pub all: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let path = if args.all {
        "/v1/runs?all=true"
    } else {
        "/v1/runs"
    };
    let response = ctx.client.get(path).await?;
    if ctx.json {
        return render::print_json(&response);
    }
    let runs = response["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        if args.all {
            eprintln!("no runs");
        } else {
            eprintln!("no unfinished runs (`runbook ps --all` lists finished ones too)");
        }
        return Ok(());
    }
    let now = render::now();
    let ids: Vec<&str> = runs
        .iter()
        .map(|run| run["id"].as_str().unwrap_or("-"))
        .collect();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .zip(render::unique_prefixes(&ids))
        .map(|(run, id)| row(run, &id, now))
        .collect();
    render::print(&render::table(
        &["ID", "RUNBOOK", "STATE", "CURRENT", "NEXT-WAKEUP", "AGE"],
        &rows,
    ))
}

/// One run's line; `id` is its shortest unique prefix among the runs listed.
fn row(run: &Value, id: &str, now: DateTime<Utc>) -> Vec<String> {
    let mut state = render::text(&run["state"]);
    if let Some(reason) = run["reason"].as_str().filter(|reason| !reason.is_empty()) {
        state = format!("{state} ({reason})");
    }
    let next_wakeup = match render::time(&run["next_wakeup"]) {
        Some(at) => render::relative(at, now),
        None => "-".to_string(),
    };
    let age = match render::time(&run["created_at"]) {
        Some(at) => render::duration(now - at),
        None => "-".to_string(),
    };
    vec![
        id.to_owned(),
        render::text(&run["runbook"]),
        state,
        render::text(&run["current_step"]),
        next_wakeup,
        age,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use serde_json::json;

    #[test]
    fn row_shows_relative_wakeup_and_age() {
        let now = render::time(&json!("2026-01-01T00:00:00Z")).unwrap_or_default();
        let run = json!({
            "id": "0193a8c4-5e2f-7abc-8def-0123456789ab", "runbook": "demo",
            "state": "waiting", "reason": null, "current_step": "wait",
            "next_wakeup": (now + TimeDelta::seconds(71 * 3600 + 59 * 60 + 30)).to_rfc3339(),
            "created_at": (now - TimeDelta::seconds(90)).to_rfc3339(),
        });
        assert_eq!(
            row(&run, "0193a8c4-5e2f", now),
            vec![
                "0193a8c4-5e2f",
                "demo",
                "waiting",
                "wait",
                "in 71h59m",
                "1m30s"
            ]
        );
    }
}
