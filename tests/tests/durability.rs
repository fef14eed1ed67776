//! A run survives `kill -9` of the daemon: waits fire late rather than never, loops resume at
//! their item. When the host itself went down (nothing left to re-attach to), a step whose
//! command was running is put to the operator, or re-run when it is idempotent.

use std::time::{Duration, Instant};

use anyhow::Result;
use runbook_tests::{lines, step_of, Daemon};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_wait_survives_kill_9_and_reports_how_late_it_fired() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file(
        "wait.toml",
        &format!(
            r#"
name = "wait-test"
[[steps]]
id = "a"
action = "exec"
with = {{ command = "echo a >> {marker}" }}
[[steps]]
id = "pause"
action = "wait"
with = {{ duration = "4s" }}
[[steps]]
id = "b"
action = "exec"
with = {{ command = "echo b >> {marker}" }}
"#
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "pause", "waiting", LONG)?;
    daemon.kill9();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    daemon.restart()?;
    let downtime_ms = down.elapsed().as_millis() as i64;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(lines(&marker), ["a", "b"]);
    let late = step_of(&shown, "pause").unwrap()["late_by_ms"]
        .as_i64()
        .unwrap();
    // The deadline passed about 2 s into the 6 s+ downtime.
    assert!(
        late >= 1500 && late <= downtime_ms,
        "late_by_ms = {late}, downtime {downtime_ms} ms"
    );
    Ok(())
}

fn interrupted_file(daemon: &Daemon, name: &str, idempotent: bool) -> Result<(String, String)> {
    let marker = daemon.path(&format!("{name}.marker"));
    let file = daemon.write_file(
        &format!("{name}.toml"),
        &format!(
            r#"
name = "{name}"
[[steps]]
id = "slow"
action = "exec"
idempotent = {idempotent}
with = {{ command = "echo started >> {marker}; sleep 3" }}
[[steps]]
id = "after"
action = "noop"
"#
        ),
    )?;
    Ok((file, marker))
}

#[test]
fn a_non_idempotent_step_cut_by_a_host_crash_waits_for_the_operator() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let (file, marker) = interrupted_file(&daemon, "interrupted", false)?;

    // retry
    let first = daemon.start_run(&file, &[])?;
    daemon.wait_for(&first, LONG, |_| lines(&marker).len() == 1)?;
    daemon.crash_host();
    daemon.restart()?;
    let shown = daemon.wait_state(&first, "needs_attention", LONG)?;
    assert_eq!(shown["reason"], "interrupted");
    assert_eq!(step_of(&shown, "slow").unwrap()["state"], "interrupted");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        lines(&marker).len(),
        1,
        "an interrupted non-idempotent step must not re-run by itself"
    );
    let retried = daemon.cli(&[
        "retry",
        &first,
        "slow",
        "--comment",
        "checked: it did not finish",
    ])?;
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    daemon.wait_state(&first, "succeeded", LONG)?;
    assert_eq!(lines(&marker).len(), 2);

    // skip
    std::fs::remove_file(&marker)?;
    let second = daemon.start_run(&file, &[])?;
    daemon.wait_for(&second, LONG, |_| lines(&marker).len() == 1)?;
    daemon.crash_host();
    daemon.restart()?;
    daemon.wait_state(&second, "needs_attention", LONG)?;
    let skipped = daemon.cli(&["skip", &second, "slow"])?;
    assert!(
        skipped.status.success(),
        "{}",
        String::from_utf8_lossy(&skipped.stderr)
    );
    let shown = daemon.wait_state(&second, "succeeded", LONG)?;
    assert_eq!(step_of(&shown, "slow").unwrap()["state"], "skipped");
    assert_eq!(lines(&marker).len(), 1);
    Ok(())
}

#[test]
fn an_idempotent_step_cut_by_a_host_crash_is_re_run_by_itself() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let (file, marker) = interrupted_file(&daemon, "rerun", true)?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_for(&run, LONG, |_| lines(&marker).len() == 1)?;
    daemon.crash_host();
    daemon.restart()?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(lines(&marker).len(), 2);
    assert_eq!(step_of(&shown, "slow").unwrap()["attempts"], 2);
    Ok(())
}

#[test]
fn a_serial_loop_killed_mid_iteration_resumes_at_its_item() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let marker = daemon.path("loop.marker");
    let file = daemon.write_file(
        "loop.toml",
        &format!(
            r#"
name = "loop-test"
[params.items]
type = "list"
default = ["one", "two", "three"]
[[steps]]
id = "each"
for_each = "{{{{ params.items }}}}"
serial = 1
  [[steps.steps]]
  id = "mark"
  action = "exec"
  with = {{ command = "echo {{{{ item }}}} >> {marker}" }}
  [[steps.steps]]
  id = "hold"
  action = "wait"
  with = {{ duration = "2s" }}
"#
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "each[1].hold", "waiting", LONG)?;
    daemon.kill9();
    assert_eq!(lines(&marker), ["one", "two"]);
    std::thread::sleep(Duration::from_millis(500));
    daemon.restart()?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(lines(&marker), ["one", "two", "three"]);
    for index in 0..3 {
        assert_eq!(
            step_of(&shown, &format!("each[{index}].mark")).unwrap()["attempts"],
            1
        );
    }
    Ok(())
}

#[test]
fn pause_freezes_a_wait_and_resume_rearms_what_was_left() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "pause.toml",
        r#"
name = "pause-test"
[[steps]]
id = "pause"
action = "wait"
with = { duration = "3s" }
"#,
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "pause", "waiting", LONG)?;
    std::thread::sleep(Duration::from_secs(1));
    let paused = daemon.cli(&["pause", &run])?;
    assert!(
        paused.status.success(),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    let paused_at = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(daemon.show(&run)?["state"], "paused");
    let resumed = daemon.cli(&["resume", &run])?;
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let resumed_at = Instant::now();
    daemon.wait_state(&run, "succeeded", LONG)?;
    let after_resume = resumed_at.elapsed();
    // About 2 s were left when it was paused; the wait must not end at resume, nor 3 s after it.
    assert!(
        after_resume >= Duration::from_millis(1500) && after_resume < Duration::from_millis(3500),
        "ended {after_resume:?} after resume"
    );
    assert!(paused_at.elapsed() >= Duration::from_secs(6));
    Ok(())
}

#[test]
fn a_clean_stop_while_runs_step_leaves_nothing_to_replay() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let mut text = String::from("name = \"busy\"\n");
    for index in 0..1500 {
        text.push_str(&format!(
            "[[steps]]\nid = \"s{index}\"\naction = \"noop\"\n"
        ));
    }
    let file = daemon.write_file("busy.toml", &text)?;
    let runs: Vec<String> = (0..3)
        .map(|_| daemon.start_run(&file, &[]))
        .collect::<Result<_>>()?;
    // Stopped while the runs are still stepping: each next step was a task of its own.
    daemon.wait_until(LONG, || {
        Ok(daemon.show(&runs[0])?["steps"]
            .as_array()
            .is_some_and(|steps| steps.iter().any(|step| step["state"] == "succeeded")))
    })?;
    let state = daemon.show(&runs[2])?["state"].clone();
    assert!(state == "running" || state == "waiting", "{state}");
    let status = daemon.terminate()?;
    assert!(status.success(), "{status}");
    let logged = daemon.log().len();
    daemon.restart()?;
    let restarted = daemon.log()[logged..].to_owned();
    assert!(
        !restarted.contains("replayed the write-ahead log"),
        "a commit landed after the final checkpoint:\n{restarted}"
    );
    for run in &runs {
        let shown = daemon.wait_state(run, "succeeded", LONG)?;
        for step in shown["steps"].as_array().into_iter().flatten() {
            assert_eq!(step["attempts"], 1, "{run}: {step}");
        }
    }
    Ok(())
}
