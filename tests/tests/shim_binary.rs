//! Which binary supervises an `exec` command: `runbook-shim` when it sits beside the daemon's
//! executable (it links only the supervisor, so it starts several times faster than the full
//! `runbook`), else the daemon's own binary as `runbook shim`. Either way the supervisor's
//! command line after the program is `shim - <dir>`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use runbook_tests::{binary, processes, step_of, Daemon, Proc};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// A step whose command prints its parent, the supervisor: its executable, then its argv, one
/// word a line.
const WHO_SUPERVISES: &str = r#"
name = "who-supervises"
[[steps]]
id = "who"
action = "exec"
with = { command = "readlink /proc/$PPID/exe; tr '\\0' '\\n' < /proc/$PPID/cmdline" }
"#;

/// The supervisor as the step saw it: its executable and its argv after the program.
fn supervisor_of(shown: &Value) -> Result<(PathBuf, Vec<String>)> {
    let step = step_of(shown, "who").ok_or_else(|| anyhow!("no step `who` in {shown}"))?;
    let stdout = step["output"]["stdout"]
        .as_str()
        .ok_or_else(|| anyhow!("no stdout in {step}"))?;
    let mut lines = stdout.lines();
    let exe = lines.next().ok_or_else(|| anyhow!("empty stdout"))?;
    let argv: Vec<String> = lines.skip(1).map(str::to_owned).collect();
    Ok((PathBuf::from(exe), argv))
}

/// `path` with its links resolved (as `/proc/<pid>/exe` shows it).
fn real(path: &Path) -> Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

#[test]
fn the_daemon_supervises_commands_with_runbook_shim_beside_it() -> Result<()> {
    let small = binary().with_file_name("runbook-shim");
    assert!(
        small.is_file(),
        "{} is missing: `cargo build -p runbook-cli` builds it beside `runbook`",
        small.display()
    );
    let daemon = Daemon::start()?;
    let file = daemon.write_file("who.toml", WHO_SUPERVISES)?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    let (exe, argv) = supervisor_of(&shown)?;
    assert_eq!(exe, real(&small)?, "the supervisor's executable");
    // Started ahead of its call, for this daemon's data dir (or, when no spare was waiting,
    // for the call's run).
    let data_dir = daemon.data_dir.display().to_string();
    let run_dir = daemon
        .data_dir
        .join("runs")
        .join(&run)
        .display()
        .to_string();
    assert!(
        argv.len() == 3
            && argv[..2] == ["shim", "-"]
            && (argv[2] == data_dir || argv[2] == run_dir),
        "{argv:?}"
    );
    Ok(())
}

/// A daemon run from a binary of its own directory (a hard link, or a copy), on a data dir of
/// its own; killed by pid on drop.
struct AloneDaemon {
    data_dir: tempfile::TempDir,
    child: Child,
}

impl AloneDaemon {
    fn start(program: &Path) -> Result<AloneDaemon> {
        let data_dir = tempfile::Builder::new().prefix("runbook-test-").tempdir()?;
        let log = std::fs::File::create(data_dir.path().join("daemon.log"))?;
        let child = Command::new(program)
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let daemon = AloneDaemon { data_dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.cli(&["list"])?.status.success() {
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not answer within 30 s; its log:\n{}",
                    daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(binary())
            .arg("--json")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let output = self.cli(args)?;
        if !output.status.success() {
            bail!(
                "runbook {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    fn run_to_success(&self, file: &Path) -> Result<Value> {
        let started = self.json(&["start", &file.display().to_string()])?;
        let run = started["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no run id in {started}"))?
            .to_owned();
        let deadline = Instant::now() + LONG;
        loop {
            let shown = self.json(&["show", &run])?;
            if shown["state"] == "succeeded" {
                return Ok(shown);
            }
            if Instant::now() > deadline {
                bail!(
                    "run {run} did not succeed: {shown}\ndaemon log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AloneDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts `from` into `dir` under its own name: a hard link (a symlink would resolve back to
/// `from`'s directory), else a copy.
fn place(from: &Path, dir: &Path) -> Result<PathBuf> {
    let name = from
        .file_name()
        .ok_or_else(|| anyhow!("{} has no name", from.display()))?;
    let to = dir.join(name);
    if std::fs::hard_link(from, &to).is_err() {
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(to)
}

#[test]
fn without_runbook_shim_beside_it_the_daemon_supervises_with_itself() -> Result<()> {
    let bin = tempfile::Builder::new().prefix("runbook-bin-").tempdir()?;
    let alone = place(&binary(), bin.path())?;
    let daemon = AloneDaemon::start(&alone)?;
    let file = daemon.data_dir.path().join("who.toml");
    std::fs::write(&file, WHO_SUPERVISES)?;
    let shown = daemon.run_to_success(&file)?;
    let (exe, argv) = supervisor_of(&shown)?;
    assert_eq!(exe, real(&alone)?, "the supervisor's executable");
    assert_eq!(argv.first().map(String::as_str), Some("shim"), "{argv:?}");
    // Its spares are exec'd: the full binary runs threads, so it never forks them.
    let started_ahead = || started_ahead_for(daemon.data_dir.path());
    let deadline = Instant::now() + LONG;
    while started_ahead().0.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (spares, makers) = started_ahead();
    assert_eq!(spares.len(), 1, "{spares:?}");
    assert!(
        makers.is_empty(),
        "a spare-maker of the full binary: {makers:?}"
    );
    Ok(())
}

/// Steps whose commands print their supervisor's command line, one line each.
const SUPERVISORS: &str = r#"
name = "supervisors"
[[steps]]
id = "s1"
action = "exec"
with = { command = "tr '\\0' ' ' < /proc/$PPID/cmdline" }
[[steps]]
id = "s2"
action = "exec"
with = { command = "tr '\\0' ' ' < /proc/$PPID/cmdline" }
[[steps]]
id = "s3"
action = "exec"
with = { command = "tr '\\0' ' ' < /proc/$PPID/cmdline" }
[[steps]]
id = "s4"
action = "exec"
with = { command = "tr '\\0' ' ' < /proc/$PPID/cmdline" }
"#;

/// The processes started as `shim - <the daemon's data dir>`: the spares waiting for a call
/// (each leads a session of its own) and the spare-maker (in the daemon's session), as
/// `(spares, makers)`.
fn spares_and_makers(daemon: &Daemon) -> (Vec<Proc>, Vec<Proc>) {
    started_ahead_for(&daemon.data_dir)
}

/// As [`spares_and_makers`], for the daemon of `data_dir`.
fn started_ahead_for(data_dir: &Path) -> (Vec<Proc>, Vec<Proc>) {
    let data_dir = data_dir.display().to_string();
    processes()
        .into_iter()
        .filter(|process| !process.is_zombie())
        .filter(|process| {
            process.cmdline.get(1..).is_some_and(|argv| {
                argv == [String::from("shim"), String::from("-"), data_dir.clone()]
            })
        })
        .partition(|process| process.session == process.pid)
}

fn spares(daemon: &Daemon) -> Vec<Proc> {
    spares_and_makers(daemon).0
}

#[test]
fn a_spare_supervisor_serves_the_next_call_and_never_outlives_its_daemon() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let file = daemon.write_file("supervisors.toml", SUPERVISORS)?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    let data_dir = daemon.data_dir.display().to_string();
    let ahead = ["s2", "s3", "s4"]
        .iter()
        .filter_map(|step| step_of(&shown, step))
        .filter_map(|step| step["output"]["stdout"].as_str().map(str::to_owned))
        .filter(|argv| argv.ends_with(&format!(" shim - {data_dir} ")))
        .count();
    assert!(
        ahead >= 1,
        "no step after the first ran under the spare started for it: {shown}"
    );

    // One spare waits now, forked by the one spare-maker (the daemon's child, in its session,
    // named so in `ps`).
    daemon.wait_until(LONG, || Ok(spares(&daemon).len() == 1))?;
    let (waiting, makers) = spares_and_makers(&daemon);
    assert_eq!(makers.len(), 1, "{makers:?}");
    assert_eq!(waiting[0].ppid, makers[0].pid, "{waiting:?} {makers:?}");
    assert_eq!(Some(makers[0].ppid as u32), daemon.pid(), "{makers:?}");
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm(makers[0].pid).trim(), "runbook-spares");
    assert_eq!(comm(waiting[0].pid).trim(), "runbook-shim");

    // The daemon killed, its spare and the spare-maker exit: the spare had no call, so nothing
    // ran and nothing is left.
    daemon.kill9();
    daemon
        .wait_until(LONG, || {
            let (spares, makers) = spares_and_makers(&daemon);
            Ok(spares.is_empty() && makers.is_empty())
        })
        .context("the spare and the spare-maker must exit with their daemon")?;

    // Restarted, the daemon keeps a forked spare again; with the spare and the spare-maker
    // killed, the next calls start their shims without them.
    daemon.restart()?;
    let again = daemon.start_run(&file, &[])?;
    daemon.wait_state(&again, "succeeded", LONG)?;
    daemon.wait_until(LONG, || {
        let (spares, makers) = spares_and_makers(&daemon);
        Ok(spares.len() == 1 && makers.len() == 1)
    })?;
    let (waiting, makers) = spares_and_makers(&daemon);
    for process in waiting.iter().chain(makers.iter()) {
        // SAFETY: kill(2) of a process this test's daemon started.
        unsafe { libc::kill(process.pid, libc::SIGKILL) };
    }
    let again = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&again, "succeeded", LONG)?;
    for step in ["s1", "s2", "s3", "s4"] {
        assert_eq!(
            step_of(&shown, step).map(|step| step["attempts"].clone()),
            Some(Value::from(1)),
            "{shown}"
        );
    }
    Ok(())
}

/// `runbook_store_commits_total`, from the daemon's `/metrics`.
fn commits(daemon: &Daemon) -> Result<u64> {
    let metrics = String::from_utf8_lossy(&daemon.api("GET", "/metrics", None)?.body).into_owned();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("runbook_store_commits_total "))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| anyhow!("no runbook_store_commits_total in {metrics}"))
}

#[test]
fn a_step_handed_to_a_spare_journals_its_start_and_its_supervisor_in_one_commit() -> Result<()> {
    const STEPS: u64 = 8;
    let daemon = Daemon::start()?;
    // A first run leaves a spare waiting.
    let file = daemon.write_file("supervisors.toml", SUPERVISORS)?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_state(&run, "succeeded", LONG)?;
    daemon.wait_until(LONG, || Ok(spares(&daemon).len() == 1))?;
    // Each command runs long enough for the next spare to be ready before its step ends.
    let mut text = String::from("name = \"slow\"\n");
    for step in 1..=STEPS {
        text.push_str(&format!(
            "[[steps]]\nid = \"s{step}\"\naction = \"exec\"\nwith = {{ command = [\"sleep\", \"0.2\"] }}\n"
        ));
    }
    let file = daemon.write_file("slow.toml", &text)?;
    let before = commits(&daemon)?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_state(&run, "succeeded", LONG)?;
    let commits = commits(&daemon)? - before;
    // The run's creation with the first step's start, then each step's end with the next
    // one's start (the last one's with the run's end): the supervisor's identity rides along
    // with each start. Journaled on its own before the go, it took one more commit a step.
    assert!(
        commits <= STEPS + 2,
        "{commits} commits for {STEPS} steps (at most {} if each step's supervisor is journaled with its start; {} if on its own)",
        STEPS + 2,
        2 * STEPS + 1
    );
    // And journaled it is, before each command ran: the note names the shim that ran it.
    let events = daemon.events(&run)?;
    for step in 1..=STEPS {
        let step = format!("s{step}");
        let noted = events.iter().any(|event| {
            event["kind"] == "call_noted"
                && event["step"] == step.as_str()
                && event["note"]["shim"]["pid"].is_i64()
        });
        assert!(noted, "no journaled supervisor for {step}: {events:?}");
    }
    Ok(())
}

#[test]
fn a_call_handed_to_a_spare_whose_start_was_lost_in_a_crash_still_runs_once() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    // The first command runs long enough for a spare to wait when it ends.
    let file = daemon.write_file(
        "lost-start.toml",
        &format!(
            r#"
name = "lost-start"
[[steps]]
id = "first"
action = "exec"
with = {{ command = "sleep 0.5" }}
[[steps]]
id = "second"
action = "exec"
with = {{ command = "echo started >> {marker}; sleep 3" }}
"#
        ),
    )?;
    // The daemon dies before the log gets its third commit: the first step's end with the
    // second's start, whose call the spare was handed before the commit.
    daemon.kill9();
    daemon.set_env(&[
        ("RUNBOOK_FAILPOINT", "BeforeLogWrite"),
        ("RUNBOOK_FAILPOINT_SKIP", "2"),
    ]);
    daemon.restart()?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_crashed("BeforeLogWrite", LONG)?;
    // The spare got no go: it recorded that nothing started, in the dir of a call number that
    // no commit holds, and which the restarted daemon gives the second step again.
    let status =
        |dir: &PathBuf| std::fs::read_to_string(dir.join("status.json")).unwrap_or_default();
    daemon.wait_until(LONG, || {
        Ok(daemon
            .call_dirs(&run)?
            .iter()
            .any(|dir| status(dir).contains("not_started")))
    })?;
    assert!(!Path::new(&marker).exists(), "the second command ran");
    daemon.set_env(&[]);
    daemon.restart()?;
    // Its command runs under a journaled supervisor: a crash now re-attaches to it, and the
    // status a never-released shim left in the same dir is not taken for its end.
    daemon.wait_until(LONG, || Ok(runbook_tests::lines(&marker).len() == 1))?;
    daemon.kill9();
    daemon.restart()?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    assert_eq!(runbook_tests::lines(&marker), ["started"], "{shown}");
    Ok(())
}
