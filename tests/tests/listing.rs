//! Listings come from the store's indexes (newest first, filtered, paged by a cursor), bad
//! listing requests are refused naming the field, and retention deletes finished runs whole —
//! never an unfinished one.

use std::time::Duration;

use anyhow::{ensure, Result};
use runbook_tests::Daemon;
use serde_json::Value;

const GATE: &str = "name = \"gate\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\n";
const QUICK: &str = "name = \"quick\"\n[[steps]]\nid = \"say\"\naction = \"exec\"\nwith = { command = \"echo hello\" }\n";

fn ids(listing: &Value) -> Vec<String> {
    listing["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|run| run["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn listings_filter_page_and_refuse_bad_requests() -> Result<()> {
    let daemon = Daemon::start_with_runbooks(&[("gate.toml", GATE), ("quick.toml", QUICK)])?;
    let mut gates = Vec::new();
    for _ in 0..5 {
        gates.push(daemon.start_run("gate", &[])?);
    }
    let mut quick = Vec::new();
    for _ in 0..3 {
        let run = daemon.start_run("quick", &[])?;
        daemon.wait_for(&run, Duration::from_secs(20), |shown| {
            shown["state"] == "succeeded"
        })?;
        quick.push(run);
    }
    // Unfinished only, newest first.
    let waiting = daemon.json(&["ps"])?;
    let mut expected = gates.clone();
    expected.reverse();
    ensure!(ids(&waiting) == expected, "ps: {waiting}");
    // Everything, newest first, in pages of 3 with a cursor.
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec!["ps", "--all", "--limit", "3"];
        if let Some(cursor) = &cursor {
            args.extend(["--cursor", cursor.as_str()]);
        }
        let page = daemon.json(&args)?;
        ensure!(ids(&page).len() <= 3, "{page}");
        all.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = gates.iter().chain(&quick).cloned().collect();
    expected.sort();
    expected.reverse();
    ensure!(all == expected, "paged: {all:?}, expected {expected:?}");
    // Filters.
    let succeeded = daemon.json(&["ps", "--state", "succeeded"])?;
    let mut expected = quick.clone();
    expected.reverse();
    ensure!(ids(&succeeded) == expected, "{succeeded}");
    let of_gate = daemon.json(&["ps", "--all", "--runbook", "gate", "--limit", "2"])?;
    ensure!(
        ids(&of_gate) == vec![gates[4].clone(), gates[3].clone()],
        "{of_gate}"
    );
    // The counters behind /metrics.
    let metrics = String::from_utf8_lossy(&daemon.api("GET", "/metrics", None)?.body).into_owned();
    ensure!(
        metrics.contains("runbook_runs{state=\"waiting\"} 5")
            && metrics.contains("runbook_runs{state=\"succeeded\"} 3"),
        "{metrics}"
    );
    // Histograms the writer and the timer service keep.
    for line in [
        "# TYPE runbook_store_sync_seconds histogram",
        "runbook_store_sync_seconds_bucket{le=\"+Inf\"}",
        "# TYPE runbook_timer_lateness_seconds histogram",
    ] {
        ensure!(metrics.contains(line), "no {line:?} in {metrics}");
    }

    // Bad requests: a clear error naming what is wrong, exit 2 (command line) or 4 (invalid).
    for (args, code, needle) in [
        (vec!["ps", "--limit", "0"], 2, "--limit"),
        (vec!["ps", "--limit", "-3"], 2, "'-3'"),
        (vec!["ps", "--limit", "99999999999999999999"], 2, "--limit"),
        (
            vec!["ps", "--state", "sleeping"],
            4,
            "unknown state \"sleeping\"",
        ),
        (
            vec!["ps", "--cursor", "not-a-cursor"],
            4,
            "cursor \"not-a-cursor\"",
        ),
    ] {
        let output = daemon.cli(&args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(code) && stderr.contains(needle),
            "{args:?}: exit {:?}: {stderr}",
            output.status.code()
        );
    }
    for path in [
        "/v1/runs?limit=0",
        "/v1/runs?limit=1001",
        "/v1/runs?since=yesterday",
        "/v1/runs?cursor=zz",
        "/v1/runs?colour=blue",
    ] {
        let response = daemon.api("GET", path, None)?;
        ensure!(response.status == 400, "{path}: {}", response.status);
        ensure!(
            response.json()?["error"].is_object(),
            "{path}: {}",
            response.text()
        );
    }
    // Nothing changed.
    ensure!(ids(&daemon.json(&["ps"])?).len() == 5);
    Ok(())
}

#[test]
fn a_bad_retention_is_refused_at_start() -> Result<()> {
    for (retain, needle) in [
        ("ninety days", "--retain"),
        ("-5d", "'-5'"),
        ("1ms", "shorter than a second"),
        ("500y", "longer than 100 years"),
    ] {
        let outcome = Daemon::start_with(&["--retain", retain], &[]);
        let error = match outcome {
            Ok(_) => anyhow::bail!("--retain {retain} was accepted"),
            Err(error) => format!("{error:#}"),
        };
        ensure!(error.contains(needle), "--retain {retain}: {error}");
    }
    Ok(())
}

#[test]
fn retention_deletes_finished_runs_whole_and_never_an_unfinished_one() -> Result<()> {
    let daemon = Daemon::start_full_with(
        &["--retain", "2s"],
        &[("gate.toml", GATE), ("quick.toml", QUICK)],
    )?;
    let gate = daemon.start_run("gate", &[])?;
    let mut finished = Vec::new();
    for _ in 0..3 {
        let run = daemon.start_run("quick", &[])?;
        daemon.wait_for(&run, Duration::from_secs(20), |shown| {
            shown["state"] == "succeeded"
        })?;
        finished.push(run);
    }
    let run_dir = daemon.data_dir.join("runs").join(&finished[0]);
    ensure!(run_dir.exists(), "no run directory {}", run_dir.display());
    std::thread::sleep(Duration::from_secs(3));
    let dry = daemon.json(&["store", "gc", "--dry-run"])?;
    ensure!(dry["count"] == 3, "{dry}");
    ensure!(
        ids(&daemon.json(&["ps", "--all"])?).len() == 4,
        "a dry run deleted something"
    );
    let report = daemon.json(&["store", "gc"])?;
    ensure!(report["count"] == 3, "{report}");
    ensure!(report["file_bytes"].as_u64().unwrap_or(0) > 0, "{report}");
    let left = ids(&daemon.json(&["ps", "--all"])?);
    ensure!(left == vec![gate.clone()], "left: {left:?}");
    ensure!(!run_dir.exists(), "{} is still there", run_dir.display());
    let gone = daemon.cli(&["show", &finished[0]])?;
    ensure!(gone.status.code() == Some(3), "a collected run still shows");
    let verify = daemon.cli(&["store", "verify"])?;
    ensure!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let metrics = String::from_utf8_lossy(&daemon.api("GET", "/metrics", None)?.body).into_owned();
    ensure!(
        metrics.contains("runbook_runs{state=\"waiting\"} 1")
            && !metrics.contains("runbook_runs{state=\"succeeded\"} 3"),
        "{metrics}"
    );
    Ok(())
}
