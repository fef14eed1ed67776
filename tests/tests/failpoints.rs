//! The daemon crashes exactly at each named failpoint of the commit, effect and timer paths;
//! after a restart the run still ends, and no non-idempotent step ran twice without an
//! operator's retry.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use runbook_engine::failpoint::Failpoint;
use runbook_tests::{lines, Daemon};

/// Every failpoint but those only a schedule reaches (`tests/schedules.rs` crashes there) and
/// the one only a notification reaches (`tests/notifications.rs` crashes there).
fn points() -> Vec<Failpoint> {
    Failpoint::ALL
        .into_iter()
        .filter(|point| {
            !matches!(
                point,
                Failpoint::BeforeScheduleStaged
                    | Failpoint::ScheduleLaunchedBeforeSaved
                    | Failpoint::NotificationBeforeDelivery
            )
        })
        .collect()
}

fn runbook(marker: &str) -> String {
    format!(
        r#"
name = "failpoints"
[[steps]]
id = "once"
action = "exec"
with = {{ command = "echo once >> {marker}" }}
[[steps]]
id = "pause"
action = "wait"
with = {{ duration = "300ms" }}
[[steps]]
id = "again"
action = "exec"
idempotent = true
with = {{ command = "echo again >> {marker}" }}
"#
    )
}

/// Starts the run (retrying if the daemon died before acknowledging it), returns its id.
fn start(daemon: &mut Daemon, file: &str) -> Result<Option<String>> {
    match daemon.start_run(file, &[]) {
        Ok(run) => Ok(Some(run)),
        Err(error) => {
            // The CLI can see the connection drop a moment before the killed daemon is reaped.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if daemon.exited() {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error)
        }
    }
}

#[test]
fn a_crash_at_every_failpoint_is_recovered() -> Result<()> {
    let mut crashes = 0;
    for point in points() {
        let point = point.name();
        let mut reached = false;
        for skip in [0, 2, 4] {
            let mut daemon = Daemon::start()?;
            let marker = daemon.path("marker");
            let file = daemon.write_file("failpoints.toml", &runbook(&marker))?;
            daemon.kill9();
            daemon.set_env(&[
                ("RUNBOOK_FAILPOINT", point),
                ("RUNBOOK_FAILPOINT_SKIP", &skip.to_string()),
            ]);
            let started = daemon.restart().is_ok();
            let mut run = if started {
                start(&mut daemon, &file)?
            } else {
                None
            };
            // Wait for the crash (or for the run to end if this point is not reached).
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if daemon.exited() {
                    eprintln!("{point}/{skip}: crashed");
                    crashes += 1;
                    reached = true;
                    break;
                }
                if let Some(run) = &run {
                    if let Ok(shown) = daemon.show(run) {
                        if shown["state"] == "succeeded" {
                            eprintln!("{point}/{skip}: not reached");
                            daemon.kill9();
                            break;
                        }
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "{point}/{skip}: neither a crash nor the end of the run; log:\n{}",
                        daemon.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            daemon.set_env(&[]);
            daemon.restart()?;
            let run = match run.take() {
                Some(run) => run,
                // The daemon died before acknowledging the start: nothing of it may be left.
                None => {
                    let runs = daemon.json(&["ps", "--all"])?;
                    let count = runs["runs"].as_array().map_or(0, Vec::len);
                    assert!(count <= 1, "{point}/{skip}: {runs}");
                    match runs["runs"].as_array().and_then(|runs| runs.first()) {
                        Some(found) => found["id"].as_str().unwrap_or_default().to_owned(),
                        None => daemon.start_run(&file, &[])?,
                    }
                }
            };
            let mut retries = 0;
            let shown = daemon.wait_for(&run, Duration::from_secs(30), |shown| {
                shown["state"] == "succeeded" || shown["state"] == "needs_attention"
            })?;
            if shown["state"] == "needs_attention" {
                assert_eq!(shown["reason"], "interrupted", "{point}/{skip}: {shown}");
                let step = shown["attention"]["step"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert_eq!(
                    step, "once",
                    "{point}/{skip}: only the non-idempotent step may need a decision"
                );
                retries += 1;
                assert!(daemon.cli(&["retry", &run, &step])?.status.success());
                daemon.wait_state(&run, "succeeded", Duration::from_secs(30))?;
            }
            let marks = lines(&marker);
            let once = marks.iter().filter(|line| *line == "once").count();
            assert!(
                once >= 1 && once <= 1 + retries,
                "{point}/{skip}: `once` ran {once} times with {retries} retries: {marks:?}"
            );
            assert!(
                marks.iter().any(|line| line == "again"),
                "{point}/{skip}: {marks:?}"
            );
        }
        assert!(reached, "{point}: never reached, so never tested");
    }
    eprintln!("{crashes} crashes");
    Ok(())
}

/// A crash as a schedule change is staged (here: adding one) loses the change whole or keeps
/// it whole; the store stays sound and the schedule can be added after the restart.
#[test]
fn a_crash_before_a_schedule_change_is_staged_loses_it_whole() -> Result<()> {
    let mut daemon = Daemon::start_with_runbooks(&[(
        "noop.toml",
        "name = \"noop\"\n[[steps]]\nid = \"n\"\naction = \"noop\"\n",
    )])?;
    daemon.kill9();
    daemon.set_env(&[("RUNBOOK_FAILPOINT", Failpoint::BeforeScheduleStaged.name())]);
    daemon.restart()?;
    let add = [
        "schedule",
        "add",
        "nightly",
        "--runbook",
        "noop",
        "--cron",
        "0 0 3 * * *",
    ];
    let _ = daemon.cli(&add)?;
    daemon.wait_crashed("BeforeScheduleStaged", Duration::from_secs(10))?;
    daemon.set_env(&[]);
    daemon.restart()?;
    let verify = daemon.cli(&["store", "verify"])?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let listed = daemon.json(&["schedule", "ls"])?;
    assert_eq!(
        listed["schedules"].as_array().map_or(0, Vec::len),
        0,
        "{listed}"
    );
    assert!(daemon.cli(&add)?.status.success());
    Ok(())
}

/// A misspelt failpoint is refused when the daemon starts, naming the known ones.
#[test]
fn an_unknown_failpoint_is_refused_at_start() -> Result<()> {
    let mut daemon = Daemon::start()?;
    daemon.kill9();
    daemon.set_env(&[("RUNBOOK_FAILPOINT", "AfterCommitBeforeFlsh")]);
    assert!(
        daemon.restart().is_err(),
        "a misspelt failpoint was accepted"
    );
    let log = daemon.log();
    assert!(
        log.contains("names no failpoint") && log.contains("StagedBeforeSync"),
        "{log}"
    );
    Ok(())
}
