//! `runbook ps [--all]`: the runs, newest first, as a table: id (the shortest prefix, at least
//! 13 characters, that tells it from the other runs listed), runbook, state, what the run waits
//! for and for how long (`approval for 3m12s`: an approval, a timer, a poll, a window, or the
//! operator), current step, next wake-up (relative: `in 71h59m`; `timeout in 56m` when it is
//! an approval's timeout) and age. Without `--all`, only runs that are not finished.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Context;
use crate::render;

/// What `ps` says when no run is unfinished.
pub(crate) const NONE_UNFINISHED: &str =
    "no unfinished runs (`runbook ps --all` lists finished ones too)";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Include finished runs (succeeded, failed, canceled, rolled back)
    #[arg(long, short)]
    pub all: bool,
    /// Only runs in this state (running, waiting, paused, needs_attention, succeeded, failed,
    /// canceled, rolled_back)
    #[arg(long)]
    pub state: Option<String>,
    /// Only runs of this runbook
    #[arg(long)]
    pub runbook: Option<String>,
    /// At most this many runs, newest first (1 to 1000)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// Continue a listing after the cursor a previous page printed
    #[arg(long)]
    pub cursor: Option<String>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let mut path = format!("/v1/runs?limit={}", args.limit);
    if args.all {
        path.push_str("&all=true");
    }
    for (name, value) in [
        ("state", &args.state),
        ("runbook", &args.runbook),
        ("cursor", &args.cursor),
    ] {
        if let Some(value) = value {
            path.push_str(&format!("&{name}={}", encode(value)));
        }
    }
    let response = ctx.client.get(&path).await?;
    if ctx.json {
        return render::print_json(&response);
    }
    let runs = response["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        if args.all {
            eprintln!("no runs");
        } else {
            eprintln!("{NONE_UNFINISHED}");
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
        &[
            "ID",
            "RUNBOOK",
            "STATE",
            "WAITING-FOR",
            "CURRENT",
            "NEXT-WAKEUP",
            "AGE",
        ],
        &rows,
    ))?;
    if let Some(cursor) = response["next_cursor"].as_str() {
        eprintln!("{}", more_hint(cursor));
    }
    Ok(())
}

/// How to get the next page.
pub(crate) fn more_hint(cursor: &str) -> String {
    format!("more runs: runbook ps --cursor {cursor} (with the same filters)")
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut encoded = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// One run's line; `id` is its shortest unique prefix among the runs listed.
fn row(run: &Value, id: &str, now: DateTime<Utc>) -> Vec<String> {
    let mut state = render::text(&run["state"]);
    if let Some(reason) = run["reason"].as_str().filter(|reason| !reason.is_empty()) {
        state = format!("{state} ({reason})");
    }
    let waiting_for = run["waiting_for"].as_str();
    let next_wakeup = match render::time(&run["next_wakeup"]) {
        // An approval wakes up only when its time is up.
        Some(at) if waiting_for == Some("approval") => {
            format!("timeout {}", render::relative(at, now))
        }
        Some(at) => render::relative(at, now),
        None => "-".to_string(),
    };
    let waiting = match (waiting_for, render::time(&run["waiting_since"])) {
        (Some(kind), Some(since)) => format!("{kind} for {}", render::duration(now - since)),
        (Some(kind), None) => kind.to_owned(),
        (None, _) => "-".to_owned(),
    };
    let age = match render::time(&run["created_at"]) {
        Some(at) => render::duration(now - at),
        None => "-".to_string(),
    };
    vec![
        id.to_owned(),
        render::text(&run["runbook"]),
        state,
        waiting,
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
            "waiting_for": "timer", "waiting_since": (now - TimeDelta::seconds(30)).to_rfc3339(),
            "next_wakeup": (now + TimeDelta::seconds(71 * 3600 + 59 * 60 + 30)).to_rfc3339(),
            "created_at": (now - TimeDelta::seconds(90)).to_rfc3339(),
        });
        assert_eq!(
            row(&run, "0193a8c4-5e2f", now),
            vec![
                "0193a8c4-5e2f",
                "demo",
                "waiting",
                "timer for 30s",
                "wait",
                "in 71h59m",
                "1m30s"
            ]
        );
    }

    #[test]
    fn an_approval_is_told_from_a_timer() {
        let now = render::time(&json!("2026-01-01T00:00:00Z")).unwrap_or_default();
        let run = json!({
            "id": "0193a8c4-5e2f-7abc-8def-0123456789ab", "runbook": "demo",
            "state": "waiting", "reason": null, "current_step": "gate",
            "waiting_for": "approval", "waiting_since": (now - TimeDelta::seconds(48)).to_rfc3339(),
            "next_wakeup": (now + TimeDelta::seconds(59 * 60 + 12)).to_rfc3339(),
            "created_at": (now - TimeDelta::seconds(48)).to_rfc3339(),
        });
        let row = row(&run, "0193a8c4-5e2f", now);
        assert_eq!(row[3], "approval for 48s");
        assert_eq!(row[5], "timeout in 59m12s");
    }
}
