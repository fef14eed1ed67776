//! Another user on the host: the daemon (often root) must not run what they planted, nor show
//! them what it logged. The attacker is `nobody` (`runuser -u nobody`); the tests need root to
//! switch to it, and say so and pass without checking anything when they do not run as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use runbook_tests::{binary, Daemon};
use serde_json::Value;

const NOBODY_UID: u32 = 65534;

fn running_as_root(test: &str) -> bool {
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: needs root to act as the user nobody");
    }
    root
}

/// Runs `argv` as `nobody`; its exit status.
fn as_nobody(argv: &[&str]) -> Result<std::process::Output> {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .context("running runuser")
}

/// A fresh directory that `nobody` may traverse (the temp dir itself is 0700).
fn base_dir() -> Result<tempfile::TempDir> {
    let temp = tempfile::Builder::new()
        .prefix("runbook-neighbours-")
        .tempdir()?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(temp)
}

/// Starts `runbook daemon` on `data_dir` and expects it to refuse within 20 s with a message
/// holding every needle; a daemon that starts instead is killed by pid and the test fails.
fn expect_refused(data_dir: &Path, needles: &[&str]) -> Result<()> {
    let mut child = Command::new(binary())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || data_dir.join("runbook.sock").exists() {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the daemon started on the attacked data dir {}",
                data_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    assert!(!status.success(), "refused, but exited 0: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{stderr:?} does not mention {needle:?}"
        );
    }
    Ok(())
}

#[test]
fn a_data_dir_another_user_can_change_is_refused() -> Result<()> {
    if !running_as_root("a_data_dir_another_user_can_change_is_refused") {
        return Ok(());
    }
    let base = base_dir()?;

    // A parent anybody may write (not sticky): nobody pre-creates the data dir and plants a
    // `runs/` of their own.
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared)?;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))?;
    let data_dir = shared.join("data");
    let theirs = base.path().join("theirs");
    std::fs::create_dir(&theirs)?;
    std::os::unix::fs::chown(&theirs, Some(NOBODY_UID), Some(NOBODY_UID))?;
    let made = as_nobody(&["mkdir", "-m", "777", &data_dir.display().to_string()])?;
    assert!(made.status.success(), "nobody could not mkdir: {made:?}");
    let linked = as_nobody(&[
        "ln",
        "-s",
        &theirs.display().to_string(),
        &data_dir.join("runs").display().to_string(),
    ])?;
    assert!(linked.status.success(), "nobody could not ln: {linked:?}");
    expect_refused(
        &data_dir,
        &[
            "refusing data dir",
            &shared.display().to_string(),
            "writable by other users",
        ],
    )?;

    // The same data dir, once the parent is closed, still belongs to nobody.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755))?;
    expect_refused(&data_dir, &["refusing data dir", "owned by uid 65534"])?;

    // Ours, but with a symlink planted inside while it was open.
    std::fs::remove_file(data_dir.join("runs"))?;
    std::os::unix::fs::chown(&data_dir, Some(0), Some(0))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::symlink(&theirs, data_dir.join("runs"))?;
    expect_refused(&data_dir, &["refusing data dir", "runs", "is a symlink"])?;

    // A data dir under a sticky, world-writable directory owned by root (like /tmp) is fine:
    // every other test's data dir is one.
    Ok(())
}

/// Every file the daemon writes is 0600 and every directory 0700; `nobody` cannot read a step
/// log (which holds what the command printed, often secrets).
#[test]
fn step_logs_and_specs_are_private() -> Result<()> {
    if !running_as_root("step_logs_and_specs_are_private") {
        return Ok(());
    }
    let base = base_dir()?;
    let data_dir = base.path().join("data");
    // As an older version left it: readable by all (the daemon must tighten it).
    std::fs::create_dir(&data_dir)?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))?;
    let mut daemon = Daemon::start_on(&data_dir)?;
    let file = daemon.write_file(
        "secret.toml",
        r#"
name = "secret"
[[steps]]
id = "leak"
action = "exec"
with = { command = "echo the password is $PASSWORD", env = { PASSWORD = "hunter2" } }
"#,
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_state(&run, "succeeded", Duration::from_secs(60))?;
    assert!(daemon.step_log(&run, "leak").contains("hunter2"));

    let mode = std::fs::metadata(&data_dir)?.mode() & 0o7777;
    assert_eq!(mode, 0o700, "data dir {} is {mode:o}", data_dir.display());
    // What the harness itself put there (its log, the runbook file) is not the daemon's.
    let harness: Vec<PathBuf> = vec![data_dir.join("daemon.log"), data_dir.join("files")];
    let mut loose = Vec::new();
    walk(&data_dir, &harness, &mut loose)?;
    assert!(loose.is_empty(), "open to other users: {loose:#?}");

    // Even with the data dir opened up (a careless chmod), the log itself stays closed.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))?;
    let mut open_dir = data_dir.join("runs").join(&run);
    for dir in [data_dir.join("runs"), open_dir.clone(), {
        open_dir.push("logs");
        open_dir.clone()
    }] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let log = open_dir.join("leak.log");
    let read = as_nobody(&["cat", &log.display().to_string()])?;
    assert!(
        !read.status.success() && !String::from_utf8_lossy(&read.stdout).contains("hunter2"),
        "nobody read the step log {}: {:?}",
        log.display(),
        String::from_utf8_lossy(&read.stdout)
    );
    daemon.terminate()?;
    Ok(())
}

/// Collects every entry under `dir` (but `skip`) that another user can read or write.
fn walk(dir: &Path, skip: &[PathBuf], loose: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if skip.contains(&path) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            loose.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            walk(&path, skip, loose)?;
        }
    }
    Ok(())
}

/// Puts a spec into a call dir.
type Plant<'a> = dyn Fn(&Path) -> std::io::Result<()> + 'a;

/// The supervisor runs nothing from a spec that is a symlink or belongs to another user, even
/// when it is handed the call dir directly.
#[test]
fn the_supervisor_refuses_a_planted_spec() -> Result<()> {
    if !running_as_root("the_supervisor_refuses_a_planted_spec") {
        return Ok(());
    }
    let base = tempfile::Builder::new().prefix("runbook-shim-").tempdir()?;
    let marker = base.path().join("ran");
    let spec = serde_json::json!({
        "format": 1,
        "argv": ["sh", "-c", format!("echo pwned > {}", marker.display())],
        "env": [],
        "cwd": null,
        "log": base.path().join("log").display().to_string(),
        "grace_ms": 1000,
    });
    let planted = base.path().join("planted.json");
    std::fs::write(&planted, serde_json::to_vec(&spec)?)?;
    std::os::unix::fs::chown(&planted, Some(NOBODY_UID), Some(NOBODY_UID))?;

    let planted = base.path().join("planted.json");
    let symlinked = |dir: &Path| std::os::unix::fs::symlink(&planted, dir.join("spec.json"));
    let theirs = |dir: &Path| {
        std::fs::copy(&planted, dir.join("spec.json"))?;
        std::os::unix::fs::chown(dir.join("spec.json"), Some(NOBODY_UID), Some(NOBODY_UID))
    };
    let plants: [(&str, &Plant<'_>); 2] = [("symlink", &symlinked), ("owned by nobody", &theirs)];
    for (name, plant) in plants {
        let call_dir = base.path().join(name.replace(' ', "-"));
        std::fs::create_dir(&call_dir)?;
        plant(&call_dir)?;
        let mut shim = Command::new(binary())
            .arg("shim")
            .arg(&call_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = shim.stdin.take() {
            let _ = std::io::Write::write_all(&mut stdin, b"g");
        }
        let exited = shim.wait()?;
        let status: Value = serde_json::from_slice(
            &std::fs::read(call_dir.join("status.json"))
                .with_context(|| format!("{name}: no status.json (shim exited {exited})"))?,
        )?;
        assert!(!marker.exists(), "{name}: the planted command ran");
        assert_eq!(status["outcome"]["kind"], "not_started", "{name}: {status}");
        let reason = status["outcome"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("spec.json"), "{name}: {reason}");
    }
    Ok(())
}
