//! Schedules keep their word across downtime: catch-up and overlap policies, and a schedule
//! that survives a restart unchanged.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use runbook_tests::Daemon;
use serde_json::Value;

const TICK: &str = r#"
name = "tick"
[[steps]]
id = "tick"
action = "noop"
"#;

fn add(daemon: &Daemon, name: &str, runbook: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec![
        "schedule",
        "add",
        name,
        "--runbook",
        runbook,
        "--cron",
        "*/2 * * * * *",
    ];
    args.extend_from_slice(extra);
    daemon.json(&args)
}

fn history(daemon: &Daemon, name: &str) -> Result<Vec<Value>> {
    Ok(daemon.json(&["schedule", "show", name])?["history"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn instant(firing: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(firing["scheduled_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Runs a 2-second schedule, kills the daemon for about 7 s, restarts it, and returns the
/// firings recorded for the instants that fell due during the downtime.
fn downtime(catch_up: &str) -> Result<(Daemon, Vec<Value>)> {
    let mut daemon = Daemon::start_with_runbooks(&[("tick.toml", TICK)])?;
    add(
        &daemon,
        "every2",
        "tick",
        &[
            "--catch-up",
            catch_up,
            "--catch-up-max",
            "10",
            "--overlap",
            "allow",
        ],
    )?;
    daemon.wait_until(Duration::from_secs(20), || {
        Ok(history(&daemon, "every2")?.len() >= 2)
    })?;
    let before = history(&daemon, "every2")?;
    let last_before = before.iter().map(instant).max().unwrap();
    daemon.kill9();
    std::thread::sleep(Duration::from_secs(7));
    daemon.restart()?;
    // The first regular fire after the restart marks the end of the catch-up.
    daemon.wait_until(Duration::from_secs(20), || {
        Ok(history(&daemon, "every2")?.iter().any(|firing| {
            firing["outcome"] == "started"
                && instant(firing) > last_before + chrono::Duration::seconds(8)
        }))
    })?;
    let after: Vec<Value> = history(&daemon, "every2")?
        .into_iter()
        .filter(|firing| instant(firing) > last_before && firing["outcome"] != "started")
        .collect();
    Ok((daemon, after))
}

fn outcomes(firings: &[Value], outcome: &str) -> usize {
    firings
        .iter()
        .filter(|firing| firing["outcome"] == outcome)
        .count()
}

#[test]
fn catch_up_once_launches_exactly_one_run_for_the_downtime() -> Result<()> {
    let (_daemon, after) = downtime("once")?;
    assert_eq!(outcomes(&after, "catch_up"), 1, "{after:#?}");
    assert!(outcomes(&after, "missed") >= 2, "{after:#?}");
    Ok(())
}

#[test]
fn catch_up_all_launches_every_missed_instant() -> Result<()> {
    let (daemon, after) = downtime("all")?;
    let caught: Vec<DateTime<Utc>> = after
        .iter()
        .filter(|firing| firing["outcome"] == "catch_up")
        .map(instant)
        .collect();
    assert!(caught.len() >= 3, "{after:#?}");
    assert_eq!(outcomes(&after, "missed"), 0, "{after:#?}");
    // Every 2-second instant of the downtime, none left out.
    for pair in caught.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 2, "{caught:?}");
    }
    for firing in after
        .iter()
        .filter(|firing| firing["outcome"] == "catch_up")
    {
        let run = firing["run"].as_str().unwrap();
        daemon.wait_state(run, "succeeded", Duration::from_secs(20))?;
    }
    Ok(())
}

#[test]
fn catch_up_skip_launches_nothing_for_the_downtime() -> Result<()> {
    let (_daemon, after) = downtime("skip")?;
    assert_eq!(outcomes(&after, "catch_up"), 0, "{after:#?}");
    assert!(outcomes(&after, "missed") >= 3, "{after:#?}");
    Ok(())
}

#[test]
fn overlap_skip_never_runs_two_at_once() -> Result<()> {
    let daemon = Daemon::start_with_runbooks(&[("slow.toml", "name = \"slow\"\n[[steps]]\nid = \"hold\"\naction = \"wait\"\nwith = { duration = \"5s\" }\n")])?;
    add(&daemon, "slow", "slow", &["--overlap", "skip"])?;
    std::thread::sleep(Duration::from_secs(9));
    daemon.json(&["schedule", "pause", "slow"])?;
    let firings = history(&daemon, "slow")?;
    assert!(outcomes(&firings, "skipped_overlap") >= 2, "{firings:#?}");
    let runs: Vec<String> = firings
        .iter()
        .filter_map(|firing| firing["run"].as_str().map(str::to_owned))
        .collect();
    assert!(!runs.is_empty());
    let mut spans = Vec::new();
    for run in &runs {
        let shown = daemon.wait_state(run, "succeeded", Duration::from_secs(20))?;
        let at =
            |field: &str| DateTime::parse_from_rfc3339(shown[field].as_str().unwrap()).unwrap();
        spans.push((at("created_at"), at("finished_at")));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two runs of the schedule overlapped: {spans:?}"
        );
    }
    Ok(())
}

#[test]
fn a_schedule_survives_a_restart_unchanged() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let added = daemon.json(&[
        "schedule",
        "add",
        "nightly",
        "--runbook",
        "demo",
        "--cron",
        "30 2 * * *",
        "--tz",
        "Europe/Berlin",
        "-p",
        "target=nightly",
    ])?;
    assert!(added["next_fire"].is_string());
    daemon.terminate()?;
    daemon.restart()?;
    let shown = daemon.json(&["schedule", "show", "nightly"])?;
    assert_eq!(shown, added);
    daemon.kill9();
    daemon.restart()?;
    assert_eq!(daemon.json(&["schedule", "show", "nightly"])?, added);
    Ok(())
}

#[test]
fn bad_schedules_are_clear_errors() -> Result<()> {
    let daemon = Daemon::start()?;
    let cases: &[(&[&str], &str)] = &[
        (&["--cron", "0 4 * * 8"], "0 or 7 = Sunday, 1 = Monday"),
        (&["--cron", "0 4 * * 5-1"], "runs backwards"),
        (&["--cron", "0 0 4 * * 2-6"], "weekdays as names"),
        (&["--cron", "* * *"], "expected 5 fields"),
        (
            &["--cron", "0 4 * * *", "--tz", "Mars/Olympus"],
            "Mars/Olympus",
        ),
        (&["--cron", "0 4 * * *", "-p", "nope=1"], "nope"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["schedule", "add", "bad", "--runbook", "demo"];
        args.extend_from_slice(extra);
        let output = daemon.cli(&args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
    let missing = daemon.cli(&[
        "schedule",
        "add",
        "bad",
        "--runbook",
        "no-such-runbook",
        "--cron",
        "0 4 * * *",
    ])?;
    assert_eq!(missing.status.code(), Some(3));
    assert_eq!(
        daemon.json(&["schedule", "ls"])?["schedules"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let dry = daemon.json(&[
        "schedule",
        "add",
        "daily",
        "--runbook",
        "demo",
        "--cron",
        "0 4 * * *",
    ])?;
    assert!(dry["next_fire"].is_string());
    let listed = daemon.json(&[
        "schedule",
        "backfill",
        "daily",
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-03T23:00:00Z",
        "--dry-run",
    ])?;
    assert_eq!(
        listed["instants"],
        serde_json::json!([
            "2026-01-01T04:00:00Z",
            "2026-01-02T04:00:00Z",
            "2026-01-03T04:00:00Z"
        ])
    );
    Ok(())
}

/// `1-5` is Monday to Friday, as in every classic cron, and `0`/`7` are Sunday: the instants a
/// backfill lists fall on the days a calendar gives them.
#[test]
fn numeric_weekdays_are_the_classic_days() -> Result<()> {
    use chrono::Datelike;
    let daemon = Daemon::start()?;
    for (name, cron, days) in [
        ("workdays", "0 4 * * 1-5", "Mon Tue Wed Thu Fri"),
        ("sundays", "0 4 * * 0", "Sun"),
        ("sevens", "0 4 * * 7", "Sun"),
        ("weekend", "0 4 * * 6,7", "Sat Sun"),
    ] {
        daemon.json(&[
            "schedule",
            "add",
            name,
            "--runbook",
            "demo",
            "--cron",
            cron,
            "--paused",
        ])?;
        // Sunday 2026-11-29 to Saturday 2026-12-05.
        let listed = daemon.json(&[
            "schedule",
            "backfill",
            name,
            "--from",
            "2026-11-28T12:00:00Z",
            "--to",
            "2026-12-05T23:00:00Z",
            "--dry-run",
        ])?;
        let mut fired: Vec<DateTime<Utc>> = listed["instants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|instant| instant.as_str().unwrap().parse().unwrap())
            .collect();
        fired.sort_by_key(|instant| instant.weekday().num_days_from_monday());
        let names: Vec<String> = fired
            .iter()
            .map(|instant| instant.weekday().to_string())
            .collect();
        assert_eq!(names.join(" "), days, "{cron}: {listed}");
    }
    Ok(())
}

const GATE: &str = r#"
name = "gate"
[[steps]]
id = "gate"
action = "approval"
"#;

/// A crash after a scheduled run was created and before the schedule's new state was stored
/// fires the same instants again at restart: the instant's claim, taken in the run's first
/// commit, makes the second launch find the first run instead of starting another.
#[test]
fn a_crash_between_launch_and_schedule_never_launches_an_instant_twice() -> Result<()> {
    let mut daemon = Daemon::start_with_runbooks(&[("gate.toml", GATE)])?;
    daemon.kill9();
    daemon.set_env(&[("RUNBOOK_FAILPOINT", "ScheduleLaunchedBeforeSaved")]);
    daemon.restart()?;
    add(
        &daemon,
        "every2",
        "gate",
        &[
            "--overlap",
            "allow",
            "--catch-up",
            "all",
            "--catch-up-max",
            "10",
        ],
    )?;
    daemon.wait_crashed("ScheduleLaunchedBeforeSaved", Duration::from_secs(20))?;
    daemon.set_env(&[]);
    daemon.restart()?;
    daemon.wait_until(Duration::from_secs(20), || {
        Ok(history(&daemon, "every2")?.len() >= 3)
    })?;
    // Every run the schedule launched, by the instant its comment names.
    let mut instants: std::collections::BTreeMap<DateTime<Utc>, Vec<String>> = Default::default();
    for run in daemon.json(&["ps", "--all"])?["runs"].as_array().unwrap() {
        let id = run["id"].as_str().unwrap().to_owned();
        let shown = daemon.show(&id)?;
        let comment = shown["audit"][0]["comment"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let instant = comment.rsplit(" for ").next().unwrap_or_default();
        let instant = DateTime::parse_from_rfc3339(instant)?.with_timezone(&Utc);
        instants.entry(instant).or_default().push(id);
    }
    for (instant, runs) in &instants {
        anyhow::ensure!(
            runs.len() == 1,
            "instant {instant} was launched {} times: {runs:?}",
            runs.len()
        );
    }
    // The history names the run of the instant that fired before the crash.
    let history = history(&daemon, "every2")?;
    for firing in &history {
        if let Some(run) = firing["run"].as_str() {
            let at = instant(firing);
            let launched = instants.get(&at).map(|runs| runs[0].clone());
            anyhow::ensure!(
                launched.as_deref() == Some(run),
                "history names {run} for {at}, but {launched:?} was launched"
            );
        }
    }
    Ok(())
}
