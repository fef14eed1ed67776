//! `exec` runs every command under `runbook shim`, a supervisor that outlives the daemon: a
//! command that was running when the daemon was killed is re-attached, never run again; one that
//! ended while the daemon was down has its real exit status recorded; a stale call dir whose pid
//! now belongs to another process is not followed; stopping a step leaves no process of its
//! group; `host` runs the command over ssh against a real sshd.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use runbook_tests::{
    become_subreaper, binary, group_members, keygen, kill_and_reap, lines, processes_with_env,
    spawn_with_pid, step_of, Daemon, Proc, Sshd,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// Polls `done` until it holds; the error names `what`.
fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The command's pid, also its process group, as the shim records it in the call dir (once the
/// command runs: the command may print before the shim has written it).
fn command_pgid(call_dir: &Path) -> Result<i32> {
    let path = call_dir.join("child.json");
    eventually(
        &format!("{}", path.display()),
        Duration::from_secs(10),
        || path.exists(),
    )?;
    let child: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    child["pid"]
        .as_i64()
        .map(|pid| pid as i32)
        .ok_or_else(|| anyhow!("no pid in {child}"))
}

fn error_of(shown: &Value, step: &str) -> String {
    step_of(shown, step)
        .map(|step| step["error"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[test]
fn a_command_running_at_kill_9_is_re_attached_and_runs_once() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file(
        "reattach.toml",
        &format!(
            r#"
name = "reattach"
[[steps]]
id = "slow"
action = "exec"
with = {{ command = "echo before; sleep 3; echo x >> {marker}; echo after" }}
[[steps]]
id = "next"
action = "noop"
"#
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    eventually("the command's first line in the step log", LONG, || {
        daemon.step_log(&run, "slow").contains("before")
    })?;
    let mut follower = Command::new(binary())
        .arg("--data-dir")
        .arg(&daemon.data_dir)
        .args(["logs", &run, "slow", "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let followed = Arc::new(Mutex::new(String::new()));
    let mut follower_stdout = follower.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let reader = {
        let followed = followed.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read @ 1..) = follower_stdout.read(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
                followed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&text);
            }
        })
    };
    let printed = || {
        followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    };
    // Only once it follows: `logs` looks the run up once before it starts to be patient.
    eventually("`runbook logs -f` to print the first line", LONG, || {
        printed().contains("before")
    })?;

    daemon.kill9();
    assert_eq!(daemon.shims().len(), 1, "the shim must outlive the daemon");
    daemon.restart()?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;

    assert_eq!(lines(&marker), ["x"], "the command ran exactly once");
    let slow = step_of(&shown, "slow").ok_or_else(|| anyhow!("no step slow"))?;
    assert_eq!(slow["attempts"], 1);
    assert_eq!(slow["output"]["exit_code"], 0);
    assert_eq!(
        slow["output"]["stdout"], "before\nafter\n",
        "stdout from before and after the crash"
    );
    let log = daemon.step_log(&run, "slow");
    assert!(
        log.contains("before\n") && log.contains("after\n") && log.contains("re-attached"),
        "step log:\n{log}"
    );

    // `logs -f` rode out the restart and ended with the step.
    eventually("`runbook logs -f` to end", Duration::from_secs(20), || {
        matches!(follower.try_wait(), Ok(Some(_)))
    })?;
    let _ = reader.join();
    let followed = printed();
    let mut complaints = String::new();
    follower
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr"))?
        .read_to_string(&mut complaints)?;
    assert!(
        followed.contains("before\n") && followed.contains("after\n"),
        "`logs -f` printed:\n{followed}\nstderr:\n{complaints}"
    );
    Ok(())
}

#[test]
fn a_command_that_ended_while_the_daemon_was_down_has_its_real_exit_status() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let runbook = |name: &str, code: i32| -> Result<(String, String)> {
        let marker = daemon.path(&format!("{name}.marker"));
        let file = daemon.write_file(
            &format!("{name}.toml"),
            &format!(
                r#"
name = "{name}"
[[steps]]
id = "work"
action = "exec"
with = {{ command = "echo started >> {marker}; sleep 1; echo done >> {marker}; exit {code}" }}
[[steps]]
id = "next"
action = "exec"
with = {{ command = "echo next >> {marker}" }}
"#
            ),
        )?;
        Ok((daemon.start_run(&file, &[])?, marker))
    };
    let (ok_run, ok_marker) = runbook("exit-0", 0)?;
    let (bad_run, bad_marker) = runbook("exit-3", 3)?;
    eventually("both commands to start", LONG, || {
        lines(&ok_marker).len() == 1 && lines(&bad_marker).len() == 1
    })?;

    daemon.kill9();
    // Both commands end, and their shims record it, while no daemon runs.
    eventually("both shims to end", LONG, || daemon.shims().is_empty())?;
    assert_eq!(lines(&ok_marker), ["started", "done"]);
    daemon.restart()?;

    let shown = daemon.wait_state(&ok_run, "succeeded", LONG)?;
    assert_eq!(
        lines(&ok_marker),
        ["started", "done", "next"],
        "exit 0 was recorded, so the next step ran"
    );
    assert_eq!(
        step_of(&shown, "work").map(|step| step["attempts"].clone()),
        Some(1.into())
    );

    let shown = daemon.wait_step(&bad_run, "work", "failed", LONG)?;
    let error = error_of(&shown, "work");
    assert!(error.contains("exited with code 3"), "error: {error}");
    assert_eq!(
        lines(&bad_marker),
        ["started", "done"],
        "neither re-run nor gone on"
    );
    assert_eq!(
        step_of(&shown, "work").map(|step| step["attempts"].clone()),
        Some(1.into())
    );
    Ok(())
}

#[test]
fn a_command_end_reported_to_a_daemon_that_died_before_journaling_it_is_kept() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file(
        "reported.toml",
        &format!(
            r#"
name = "reported"
[[steps]]
id = "work"
action = "exec"
with = {{ command = "echo ran >> {marker}; echo the output" }}
[[steps]]
id = "next"
action = "exec"
with = {{ command = "echo next >> {marker}" }}
"#
        ),
    )?;
    // A followed command's end goes to the daemon over the shim's pipe, not into the call dir.
    let plain = daemon.start_run(&file, &[])?;
    daemon.wait_state(&plain, "succeeded", LONG)?;
    for dir in daemon.call_dirs(&plain)? {
        assert!(
            !dir.join("status.json").exists(),
            "{}: a followed command's end was written",
            dir.display()
        );
    }
    std::fs::remove_file(&marker)?;

    // The daemon dies with the first command's end in hand, before it journals it: the shim,
    // never told that it is journaled, writes it into the call dir, and the restarted daemon
    // takes that as the step's result rather than an unknown outcome.
    daemon.kill9();
    daemon.set_env(&[("RUNBOOK_FAILPOINT", "EffectBeforeRecord")]);
    daemon.restart()?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_crashed("EffectBeforeRecord", LONG)?;
    let call = daemon
        .call_dirs(&run)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no call dir"))?;
    eventually("the shim to record the end", LONG, || {
        call.join("status.json").exists()
    })?;
    daemon.set_env(&[]);
    daemon.restart()?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(lines(&marker), ["ran", "next"], "{shown}");
    let work = step_of(&shown, "work").ok_or_else(|| anyhow!("no step `work` in {shown}"))?;
    assert_eq!(work["attempts"], 1, "{shown}");
    assert_eq!(work["output"]["stdout"], "the output\n", "{shown}");
    Ok(())
}

/// Starts a run of one exec step that spawns two grandchildren and outlives its timeout; returns
/// the run, the command's process group, and what the step left in the end.
fn timed_out(
    daemon: &Daemon,
    name: &str,
    command: &str,
    grace: &str,
) -> Result<(String, i32, Value)> {
    // The data dir's name is unique: so is the mark, even across parallel tests and runs.
    let unique = daemon
        .data_dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let mark = format!("{name}-{unique}");
    let file = daemon.write_file(
        &format!("{name}.toml"),
        &format!(
            r#"
name = "{name}"
[[steps]]
id = "hang"
action = "exec"
timeout = "3s"
with = {{ command = "{command}", grace = "{grace}", env = {{ RUNBOOK_TEST_MARK = "{mark}" }} }}
"#
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    // sh and its two sleeps run, in one group.
    eventually("the command and its grandchildren", LONG, || {
        processes_with_env("RUNBOOK_TEST_MARK", &mark).len() >= 3
    })?;
    let pgid = command_pgid(
        &daemon
            .call_dirs(&run)?
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no call dir"))?,
    )?;
    let members = group_members(pgid);
    assert!(
        members.len() >= 3,
        "the group {pgid} holds the command and its grandchildren: {members:?}"
    );

    let shown = daemon.wait_step(&run, "hang", "failed", LONG)?;
    assert!(
        error_of(&shown, "hang").contains("timed out"),
        "{}",
        error_of(&shown, "hang")
    );
    let left = |_: &()| -> Vec<Proc> {
        let mut left = group_members(pgid);
        left.extend(processes_with_env("RUNBOOK_TEST_MARK", &mark));
        left
    };
    let gone = eventually(
        "no process of the group to remain",
        Duration::from_secs(15),
        || left(&()).is_empty(),
    );
    if let Err(error) = gone {
        bail!("{error}: {:?}", left(&()));
    }
    Ok((run, pgid, shown))
}

#[test]
fn a_timed_out_command_leaves_no_process_of_its_group() -> Result<()> {
    let daemon = Daemon::start()?;
    timed_out(
        &daemon,
        "grandchildren",
        "sleep 100 & sleep 100 & wait",
        "10s",
    )?;
    Ok(())
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_its_grace() -> Result<()> {
    let daemon = Daemon::start()?;
    let (run, pgid, _) = timed_out(
        &daemon,
        "stubborn",
        "trap '' TERM; sleep 100 & sleep 100 & wait",
        "1s",
    )?;
    let log = daemon.step_log(&run, "hang");
    let term = log.find(&format!("SIGTERM to its process group {pgid}"));
    let kill = log.find("SIGKILL");
    assert!(
        matches!((term, kill), (Some(term), Some(kill)) if term < kill),
        "SIGTERM, then SIGKILL after the grace; step log:\n{log}"
    );
    Ok(())
}

#[test]
fn a_stale_call_dir_whose_pid_now_belongs_to_another_process_is_not_re_attached() -> Result<()> {
    // The shims of a killed daemon become our children: we can reap one and free its pid.
    become_subreaper()?;
    let mut daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file(
        "stale.toml",
        &format!(
            r#"
name = "stale"
[[steps]]
id = "slow"
action = "exec"
with = {{ command = "echo started >> {marker}; sleep 30" }}
"#
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    eventually("the command to start", LONG, || lines(&marker).len() == 1)?;
    let shims = daemon.shims();
    let [shim] = shims.as_slice() else {
        bail!("expected one shim, found {shims:?}")
    };
    let pgid = command_pgid(
        &daemon
            .call_dirs(&run)?
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no call dir"))?,
    )?;

    // As a reboot would: the daemon, the shim and the command are gone (the shim first, so that
    // it records nothing)...
    daemon.kill9();
    let ours =
        |pid: i32| Proc::read(pid).is_some_and(|process| process.ppid == std::process::id() as i32);
    eventually(
        "the shim to become our child",
        Duration::from_secs(10),
        || ours(shim.pid),
    )?;
    kill_and_reap(shim.pid)?;
    // Its pid stays taken while its session has members: reap the command's group too.
    for member in group_members(pgid) {
        eventually(
            "a member of the command's group to become our child",
            Duration::from_secs(10),
            || ours(member.pid),
        )?;
        kill_and_reap(member.pid)?;
    }
    // ... and an unrelated process now has the shim's pid.
    let mut impostor = spawn_with_pid(shim.pid, &["sleep", "30"])?;

    let result = (|| -> Result<()> {
        daemon.restart()?;
        let shown = daemon.wait_state(&run, "needs_attention", Duration::from_secs(20))?;
        assert_eq!(shown["reason"], "interrupted");
        assert_eq!(
            step_of(&shown, "slow").map(|step| step["state"].clone()),
            Some("interrupted".into())
        );
        let log = daemon.step_log(&run, "slow");
        assert!(
            log.contains("another process"),
            "the step log says why: {log}"
        );
        assert!(
            impostor.try_wait()?.is_none(),
            "the process that reused the pid was not signalled"
        );
        assert_eq!(lines(&marker).len(), 1, "nothing ran again");
        Ok(())
    })();
    let _ = impostor.kill();
    let _ = impostor.wait();
    result
}

#[test]
fn over_ssh_a_step_runs_on_the_host_and_a_wrong_key_names_the_host() -> Result<()> {
    let sshd = Sshd::start()?;
    let daemon = Daemon::start()?;
    let runbook = |name: &str, key: &Path| -> Result<String> {
        let file = daemon.write_file(
            &format!("{name}.toml"),
            &format!(
                r#"
name = "{name}"
[[steps]]
id = "remote"
action = "exec"
[steps.with]
command = "echo \"$GREETING from $(id -un)\"; pwd; echo to-stderr >&2"
host = "{host}"
identity_file = "{key}"
known_hosts = "{known_hosts}"
connect_timeout = "5s"
cwd = "/tmp"
env = {{ GREETING = "hello there" }}
"#,
                host = sshd.host,
                key = key.display(),
                known_hosts = sshd.known_hosts.display(),
            ),
        )?;
        daemon.start_run(&file, &[])
    };

    let good = runbook("ssh-good", &sshd.user_key)?;
    let shown = daemon.wait_for(&good, LONG, |shown| shown["state"] != "running")?;
    let remote = step_of(&shown, "remote").cloned().unwrap_or_default();
    assert_eq!(
        shown["state"],
        "succeeded",
        "{remote}\nsshd log:\n{}",
        sshd.log()
    );
    let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?;
    assert_eq!(
        remote["output"]["stdout"],
        format!("hello there from {}\n/tmp\n", user.trim())
    );
    assert!(
        remote["output"]["stderr_tail"]
            .as_str()
            .is_some_and(|tail| tail.contains("to-stderr")),
        "{remote}"
    );
    assert!(daemon
        .step_log(&good, "remote")
        .contains("hello there from"));

    let stranger = sshd.dir.path().join("stranger_key");
    keygen(&stranger)?;
    let bad = runbook("ssh-bad", &stranger)?;
    let shown = daemon.wait_step(&bad, "remote", "failed", LONG)?;
    let error = error_of(&shown, "remote");
    assert!(
        error.contains(&sshd.host) && error.contains("Permission denied"),
        "error: {error}"
    );
    Ok(())
}

#[test]
fn after_a_host_crash_a_running_step_is_interrupted_and_retry_runs_it_again() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file(
        "crash.toml",
        &format!(
            r#"
name = "crash"
[[steps]]
id = "slow"
action = "exec"
with = {{ command = "echo started >> {marker}; sleep 2" }}
"#
        ),
    )?;
    let run = daemon.start_run(&file, &[])?;
    eventually("the command to start", LONG, || lines(&marker).len() == 1)?;
    daemon.crash_host();
    daemon.restart()?;
    let shown = daemon.wait_state(&run, "needs_attention", LONG)?;
    assert_eq!(shown["reason"], "interrupted");
    let log = daemon.step_log(&run, "slow");
    assert!(
        log.contains("outcome is unknown"),
        "the step log says why: {log}"
    );
    assert_eq!(
        lines(&marker).len(),
        1,
        "an interrupted step is not re-run by itself"
    );
    let retried = daemon.cli(&["retry", &run, "slow"])?;
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(lines(&marker).len(), 2);
    Ok(())
}
