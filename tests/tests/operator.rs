//! Operator decisions: approvals with who and why, rollback through the undos.

use std::time::Duration;

use anyhow::Result;
use runbook_tests::{lines, step_of, Daemon};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn approval_records_the_approvers_uid_and_comment() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "gate.toml",
        r#"
name = "gate-test"
[[steps]]
id = "gate"
action = "approval"
with = { prompt = "go?" }
[[steps]]
id = "after"
action = "noop"
"#,
    )?;
    let run = daemon.start_run(&file, &[])?;
    let waiting = daemon.wait_step(&run, "gate", "waiting", LONG)?;
    assert_eq!(waiting["state"], "waiting");
    assert_eq!(
        step_of(&waiting, "gate").unwrap()["waiting_for"],
        "approval"
    );
    let approved = daemon.cli(&["approve", &run, "--comment", "lag is zero, go"])?;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    let gate = step_of(&shown, "gate").unwrap();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(gate["approval"]["by"]["uid"], uid);
    assert_eq!(gate["approval"]["comment"], "lag is zero, go");
    assert!(shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["action"] == "approve" && entry["comment"] == "lag is zero, go"));

    // A second approval has nothing to approve.
    let again = daemon.cli(&["approve", &run])?;
    assert_eq!(
        again.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}

#[test]
fn rollback_runs_the_undos_of_completed_steps_in_reverse_order() -> Result<()> {
    let daemon = Daemon::start()?;
    let marker = daemon.path("rollback.marker");
    let file = daemon.write_file(
        "rollback.toml",
        &format!(
            r#"
name = "rollback-test"
[[steps]]
id = "first"
action = "exec"
with = {{ command = "echo do-first >> {marker}" }}
undo = {{ action = "exec", with = {{ command = "echo undo-first >> {marker}" }} }}
[[steps]]
id = "second"
action = "exec"
with = {{ command = "echo do-second >> {marker}; echo second-output" }}
undo = {{ action = "exec", with = {{ command = "echo 'undo-second after {{{{ output.stdout | trim }}}}' >> {marker}" }} }}
[[steps]]
id = "gate"
action = "approval"
[[steps]]
id = "never"
action = "exec"
with = {{ command = "echo never >> {marker}" }}
"#
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;
    let rolled = daemon.cli(&["rollback", &run, "--comment", "abandon"])?;
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    let shown = daemon.wait_state(&run, "rolled_back", LONG)?;
    assert_eq!(
        lines(&marker),
        [
            "do-first",
            "do-second",
            "undo-second after second-output",
            "undo-first"
        ]
    );
    assert_eq!(
        step_of(&shown, "second").unwrap()["undo"]["state"],
        "succeeded"
    );
    assert_eq!(step_of(&shown, "gate").unwrap()["state"], "canceled");
    Ok(())
}

#[test]
fn a_finished_run_is_archived_and_still_rolls_back_after_a_crash() -> Result<()> {
    if std::env::var("RUNBOOK_TEST_STORE").as_deref() == Ok("postgres") {
        // The archive's segment files are the embedded store's; on PostgreSQL a finished run
        // stays in the database, where another host can read it.
        eprintln!("skipped on the PostgreSQL store: it has no archive");
        return Ok(());
    }
    let mut daemon = Daemon::start()?;
    let marker = daemon.path("archived.marker");
    let file = daemon.write_file(
        "archived.toml",
        &format!(
            r#"
name = "archived"
[[steps]]
id = "change"
action = "exec"
with = {{ command = "echo do >> {marker}" }}
undo = {{ action = "exec", with = {{ command = "echo undo >> {marker}" }} }}
"#
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    let before = daemon.wait_state(&run, "succeeded", LONG)?;
    // The archiver moves it out of the tables within seconds.
    daemon.wait_until(LONG, || {
        Ok(daemon.log().contains("moved finished runs to the archive"))
    })?;
    daemon.kill9();
    daemon.restart()?;
    let after = daemon.show(&run)?;
    assert_eq!(after["steps"], before["steps"]);
    let rolled = daemon.cli(&["rollback", &run, "--comment", "undo it"])?;
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    daemon.wait_state(&run, "rolled_back", LONG)?;
    assert_eq!(lines(&marker), ["do", "undo"]);
    Ok(())
}

#[test]
fn a_held_lock_refuses_a_second_run_naming_the_holder() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "locked.toml",
        r#"
name = "locked"
locks = ["broker:{{ params.broker }}"]
[params.broker]
required = true
[[steps]]
id = "gate"
action = "approval"
"#,
    )?;
    let holder = daemon.start_run(&file, &[("broker", "broker-c")])?;
    let refused = daemon.cli(&["start", &file, "-p", "broker=broker-c"])?;
    assert_eq!(refused.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&holder) && stderr.contains("broker:broker-c"),
        "{stderr}"
    );
    // Another broker is free.
    daemon.start_run(&file, &[("broker", "broker-d")])?;
    // The lock is released when the holder ends.
    assert!(daemon.cli(&["cancel", &holder])?.status.success());
    daemon.start_run(&file, &[("broker", "broker-c")])?;
    Ok(())
}

#[test]
fn a_timeout_taken_from_a_param_bounds_the_step() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "timeout.toml",
        r#"
name = "timeout-test"
[params.limit]
type = "duration"
default = "1s"
[[steps]]
id = "slow"
action = "exec"
timeout = "{{ params.limit }}"
with = { command = "sleep 30", grace = "1s" }
"#,
    )?;
    let started = std::time::Instant::now();
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "needs_attention", LONG)?;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let error = step_of(&shown, "slow").unwrap()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("timed out after 1s"), "{error}");
    Ok(())
}
