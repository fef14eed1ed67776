//! Test harness: runs the real `runbook` binary on a temporary data dir, kills it with SIGKILL,
//! restarts it, and drives it through the CLI with `--json`.
//!
//! Every process a test starts is owned by a value whose `Drop` kills it by pid, so a failing
//! test leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// The `runbook` binary next to the test executable (built by `cargo test --workspace`).
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("RUNBOOK_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join("runbook");
    assert!(binary.exists(), "{} is missing: run the tests with `cargo test --workspace`", binary.display());
    binary
}

/// A data dir and the daemon serving it.
pub struct Daemon {
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// A daemon on a fresh temporary data dir.
    pub fn start() -> Result<Daemon> {
        Daemon::start_with(&[], &[])
    }

    pub fn start_with(extra_args: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        let temp = tempfile::Builder::new().prefix("runbook-test-").tempdir()?;
        let mut daemon = Daemon {
            data_dir: temp.path().to_owned(),
            _temp: Some(temp),
            child: None,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            env: env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
        };
        daemon.restart()?;
        Ok(daemon)
    }

    /// Starts the daemon process (again) and waits until its API answers.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the daemon is already running");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.join("daemon.log"))?;
        let mut command = Command::new(binary());
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("daemon")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().context("spawning the daemon")?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("the daemon exited during start-up ({status}); its log:\n{}", self.log());
                }
            }
            if self.cli(&["list"]).map(|output| output.status.success()).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the daemon did not answer within 30 s; its log:\n{}", self.log())
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` the daemon and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        // SAFETY: sending a signal to a pid we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        Ok(child.wait()?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("daemon.log")).unwrap_or_default()
    }

    /// Runs `runbook --data-dir <dir> <args>`.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(binary()).arg("--data-dir").arg(&self.data_dir).args(args).stdin(Stdio::null()).output()?)
    }

    /// Runs a CLI command with `--json` that must succeed, and parses its stdout.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let output = self.cli(&full)?;
        if !output.status.success() {
            bail!(
                "runbook {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout).with_context(|| format!("stdout of runbook {}: {}", args.join(" "), String::from_utf8_lossy(&output.stdout)))
    }

    /// Starts a runbook (a name or a file) and returns the run id.
    pub fn start_run(&self, runbook: &str, params: &[(&str, &str)]) -> Result<String> {
        let mut args = vec!["start".to_owned(), runbook.to_owned()];
        for (key, value) in params {
            args.push("-p".to_owned());
            args.push(format!("{key}={value}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.json(&refs)?;
        run["id"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no run id in {run}"))
    }

    pub fn show(&self, run: &str) -> Result<Value> {
        self.json(&["show", run])
    }

    /// Polls `show` until `done` holds (or the time runs out).
    pub fn wait_for(&self, run: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let shown = self.show(run)?;
            if done(&shown) {
                return Ok(shown);
            }
            if Instant::now() > deadline {
                bail!("timed out; last state of run {run}:\n{}\ndaemon log:\n{}", serde_json::to_string_pretty(&shown)?, self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the run is in `state`.
    pub fn wait_state(&self, run: &str, state: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(run, timeout, |shown| shown["state"] == state)
    }

    /// Waits until the step is in `state`.
    pub fn wait_step(&self, run: &str, step: &str, state: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(run, timeout, |shown| step_of(shown, step).is_some_and(|found| found["state"] == state))
    }

    /// Writes a runbook file into the data dir's `files/` and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> Result<String> {
        let dir = self.data_dir.join("files");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    }

    /// A path in the data dir for marker files.
    pub fn path(&self, name: &str) -> String {
        self.data_dir.join(name).display().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The step `id` of a `show --json` result.
pub fn step_of<'a>(shown: &'a Value, id: &str) -> Option<&'a Value> {
    shown["steps"].as_array()?.iter().find(|step| step["id"] == id)
}

/// The lines of a marker file (empty when it does not exist).
pub fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}
