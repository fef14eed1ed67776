//! Only runs with work in progress are held in memory: a parked run (waiting on a timer or an
//! approval, paused, or ended) is read back from the store when its timer fires or somebody
//! acts, and start-up loads none of them.

use std::time::Duration;

use anyhow::{Context, Result};
use runbook_tests::{http, Daemon};

const WAITING: &str = "name = \"waiting\"\n[[steps]]\nid = \"pause\"\naction = \"wait\"\nwith = { duration = \"8s\" }\n[[steps]]\nid = \"after\"\naction = \"noop\"\n";
const GATED: &str = "name = \"gated\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\n[[steps]]\nid = \"after\"\naction = \"noop\"\n";

fn runs_in_memory(daemon: &Daemon) -> Result<u64> {
    let response = http(&daemon.socket(), "GET", "/metrics", None)?;
    let text = String::from_utf8_lossy(&response.body).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("runbook_runs_in_memory "))
        .context("no runbook_runs_in_memory in /metrics")?
        .trim()
        .parse()
        .context("runbook_runs_in_memory is not a number")
}

#[test]
fn parked_runs_leave_memory_and_come_back_when_needed() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let waiting = daemon.write_file("waiting.toml", WAITING)?;
    let gated = daemon.write_file("gated.toml", GATED)?;
    let sleepers: Vec<String> = (0..20)
        .map(|_| daemon.start_run(&waiting, &[]))
        .collect::<Result<_>>()?;
    let gate = daemon.start_run(&gated, &[])?;
    daemon.wait_step(&gate, "gate", "waiting", Duration::from_secs(20))?;
    for run in &sleepers {
        daemon.wait_step(run, "pause", "waiting", Duration::from_secs(20))?;
    }
    // Reading a run does not keep it either.
    assert_eq!(daemon.show(&gate)?["state"], "waiting");
    daemon.wait_until(Duration::from_secs(5), || Ok(runs_in_memory(&daemon)? == 0))?;

    // Start-up reads none of them; their timers and the operator bring them back.
    daemon.kill9();
    daemon.restart()?;
    assert_eq!(runs_in_memory(&daemon)?, 0);
    let listed = daemon.json(&["ps"])?;
    assert_eq!(
        listed["runs"].as_array().map(Vec::len),
        Some(21),
        "{listed}"
    );
    for run in &sleepers {
        daemon.wait_state(run, "succeeded", Duration::from_secs(20))?;
    }
    assert!(daemon.cli(&["approve", &gate])?.status.success());
    daemon.wait_state(&gate, "succeeded", Duration::from_secs(20))?;
    daemon.wait_until(Duration::from_secs(5), || Ok(runs_in_memory(&daemon)? == 0))?;
    Ok(())
}
