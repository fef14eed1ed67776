//! An operator (or an init system) acting at the worst moment never leaves a change behind:
//!
//! - `rollback` while a step's command runs: a command that ignores SIGTERM and runs to its end
//!   anyway has made its change; its result is journaled and its undo runs before the rollback
//!   goes on. Repeated at delays from before the command starts to after it ended, the marker
//!   file ends either empty or with the change followed by its undo.
//! - SIGTERM (and, separately, `kill -9`) under load: a call whose command provably never
//!   started (its supervisor was never released) is started again after the restart, journaled
//!   as such; no run is left needing attention for it, and no command runs twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use runbook_tests::{become_subreaper, lines, step_of, Daemon};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

/// A step whose command ignores SIGTERM, so that stopping it cannot prevent its change, with an
/// undo that records itself after it.
fn stubborn_runbook() -> &'static str {
    r#"
name = "stubborn"
[params.marker]
type = "string"
required = true

[[steps]]
id = "change"
action = "exec"
with = { command = "trap '' TERM; sleep 1; echo did >> {{ params.marker }}" }
undo = { action = "exec", with = { command = "echo undone >> {{ params.marker }}" } }
"#
}

fn terminal(shown: &Value) -> bool {
    matches!(
        shown["state"].as_str(),
        Some("succeeded" | "failed" | "canceled" | "rolled_back")
    )
}

/// Asks for a rollback; a run that has already ended by itself is still rolled back (it
/// succeeded), so the request must be accepted either way.
fn rollback(daemon: &Daemon, run: &str) -> Result<()> {
    let output = daemon.cli(&["rollback", run])?;
    ensure!(
        output.status.success(),
        "runbook rollback {run} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[test]
fn rollback_while_a_step_runs_undoes_the_change_its_command_made_anyway() -> Result<()> {
    let daemon = Daemon::start()?;
    let marker = daemon.path("F");
    let file = daemon.write_file("stubborn.toml", stubborn_runbook())?;
    let run = daemon.start_run(&file, &[("marker", &marker)])?;
    std::thread::sleep(Duration::from_millis(300));
    rollback(&daemon, &run)?;
    let shown = daemon.wait_for(&run, LONG, terminal)?;
    assert_eq!(
        shown["state"],
        "rolled_back",
        "{}",
        serde_json::to_string_pretty(&shown)?
    );
    assert_eq!(
        lines(&marker),
        vec!["did", "undone"],
        "the command ran to its end although it was asked to stop: its undo must run; run:\n{}",
        serde_json::to_string_pretty(&shown)?
    );
    let events = daemon.events(&run)?;
    let completed = events.iter().find(|event| {
        event["kind"] == "aborted_call_completed"
            && event["step"] == "change"
            && event["output"]["exit_code"] == 0
    });
    ensure!(
        completed.is_some(),
        "the command's exit 0 is not journaled; events:\n{}",
        serde_json::to_string_pretty(&events)?
    );
    let step = step_of(&shown, "change").context("no step change")?;
    assert_eq!(step["state"], "succeeded", "{step}");
    Ok(())
}

#[test]
fn rollback_at_any_moment_leaves_nothing_or_the_change_and_its_undo() -> Result<()> {
    const RUNS: u64 = 12;
    let daemon = Daemon::start()?;
    let file = daemon.write_file("stubborn.toml", stubborn_runbook())?;
    // All runs at once, each rolled back at its own delay: from before its command is released
    // to after it ended (1 s).
    let mut runs = Vec::new();
    let started = Instant::now();
    for index in 0..RUNS {
        let marker = daemon.path(&format!("F{index}"));
        let run = daemon.start_run(&file, &[("marker", &marker)])?;
        runs.push((index, Duration::from_millis(index * 110), run, marker));
    }
    let mut order: Vec<_> = runs.iter().collect();
    order.sort_by_key(|(_, delay, _, _)| *delay);
    for (_, delay, run, _) in order {
        // Delays count from each run's own start, roughly (the starts are a few ms apart).
        let due = started + *delay;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        rollback(&daemon, run)?;
    }
    let mut outcomes = BTreeMap::new();
    for (index, delay, run, marker) in &runs {
        let shown = daemon.wait_for(run, LONG, terminal)?;
        let written = lines(marker);
        ensure!(
            shown["state"] == "rolled_back",
            "run {index} (rollback after {delay:?}) ended {}: {}",
            shown["state"],
            serde_json::to_string_pretty(&shown)?
        );
        ensure!(
            written.is_empty() || written == ["did", "undone"],
            "run {index} (rollback after {delay:?}) left {written:?} in its marker file; run:\n{}",
            serde_json::to_string_pretty(&shown)?
        );
        outcomes.insert(*index, written.len());
    }
    eprintln!("marker lines per run (0: never ran, 2: ran and undone): {outcomes:?}");
    Ok(())
}

/// Short, non-idempotent steps that each append their own line to the run's marker file.
const STEPS: usize = 5;
const LOAD_RUNS: usize = 50;

fn load_runbook() -> String {
    let mut text = String::from(
        r#"
name = "load"
[params.marker]
type = "string"
required = true
"#,
    );
    for index in 1..=STEPS {
        text.push_str(&format!(
            r#"
[[steps]]
id = "s{index}"
action = "exec"
with = {{ command = "sleep 0.05; echo s{index} >> {{{{ params.marker }}}}" }}
"#
        ));
    }
    text
}

/// Starts `LOAD_RUNS` runs of the load runbook; (run id, marker path) each.
fn start_load(daemon: &Daemon) -> Result<Vec<(String, String)>> {
    let file = daemon.write_file("load.toml", &load_runbook())?;
    let mut runs = Vec::new();
    for index in 0..LOAD_RUNS {
        let marker = daemon.path(&format!("load-{index}"));
        runs.push((daemon.start_run(&file, &[("marker", &marker)])?, marker));
    }
    Ok(runs)
}

/// After the restart every run ends succeeded, none waits for an operator, and each step's
/// command ran exactly once. Returns how many calls were journaled as never started.
fn check_load_ends_clean(daemon: &Daemon, runs: &[(String, String)]) -> Result<usize> {
    let mut never_started = 0;
    for (run, marker) in runs {
        let shown = daemon.wait_for(run, LONG, |shown| {
            terminal(shown) || shown["state"] == "needs_attention"
        })?;
        if shown["state"] != "succeeded" {
            let logs: Vec<String> = (1..=STEPS)
                .map(|index| format!("s{index}: {}", daemon.step_log(run, &format!("s{index}"))))
                .collect();
            bail!(
                "run {run} ended {} (attention: {}); step logs:\n{}",
                shown["state"],
                shown["attention"],
                logs.join("\n")
            );
        }
        let expected: Vec<String> = (1..=STEPS).map(|index| format!("s{index}")).collect();
        let written = lines(marker);
        ensure!(
            written == expected,
            "run {run}: each command must run exactly once, the marker holds {written:?}"
        );
        never_started += daemon
            .events(run)?
            .iter()
            .filter(|event| event["kind"] == "call_never_started")
            .count();
    }
    Ok(never_started)
}

/// Waits until some runs have made progress, so that the signal comes mid-load.
fn wait_mid_load(daemon: &Daemon, runs: &[(String, String)]) -> Result<()> {
    daemon.wait_until(LONG, || {
        let steps_done: usize = runs.iter().map(|(_, marker)| lines(marker).len()).sum();
        Ok(steps_done >= LOAD_RUNS)
    })
}

#[test]
fn sigterm_under_load_drains_and_restarts_calls_that_never_started() -> Result<()> {
    become_subreaper()?;
    let mut daemon = Daemon::start()?;
    let runs = start_load(&daemon)?;
    wait_mid_load(&daemon, &runs)?;
    let signaled = Instant::now();
    let status = daemon.terminate()?;
    let took = signaled.elapsed();
    eprintln!("the daemon exited {status} {took:?} after SIGTERM with {LOAD_RUNS} runs under way");
    ensure!(status.success(), "the daemon exited {status} on SIGTERM");
    ensure!(
        took < Duration::from_secs(5),
        "the daemon took {took:?} to exit on SIGTERM"
    );
    daemon.restart()?;
    let never_started = check_load_ends_clean(&daemon, &runs)?;
    eprintln!("calls journaled as never started and started again: {never_started}");
    Ok(())
}

#[test]
fn kill_9_under_load_restarts_calls_that_never_started_and_runs_nothing_twice() -> Result<()> {
    become_subreaper()?;
    let mut daemon = Daemon::start()?;
    let runs = start_load(&daemon)?;
    let mut never_started = 0;
    for round in 0..3 {
        wait_mid_load(&daemon, &runs)?;
        std::thread::sleep(Duration::from_millis(40 * round));
        daemon.kill9();
        daemon.restart()?;
    }
    never_started += check_load_ends_clean(&daemon, &runs)?;
    eprintln!("calls journaled as never started and started again: {never_started}");
    Ok(())
}
