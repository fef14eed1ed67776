//! Test harness: runs the real `runbook` binary on a temporary data dir, kills it with SIGKILL,
//! restarts it, and drives it through the CLI with `--json`.
//!
//! Every process a test starts is owned by a value whose `Drop` kills it by pid, so a failing
//! test leaves nothing behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

/// The `runbook` binary next to the test executable (built by `cargo test --workspace`).
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("RUNBOOK_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join("runbook");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        binary.display()
    );
    binary
}

/// A data dir and the daemon serving it.
pub struct Daemon {
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// The PostgreSQL store's connection string, when the suites run on it.
    postgres_url: Option<String>,
}

impl Daemon {
    /// A daemon on a fresh temporary data dir.
    pub fn start() -> Result<Daemon> {
        Daemon::start_with(&[], &[])
    }

    pub fn start_with(extra_args: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        Daemon::start_full(extra_args, env, &[])
    }

    /// A daemon whose `--runbooks-dir` holds the given `(file name, text)` runbooks.
    pub fn start_with_runbooks(files: &[(&str, &str)]) -> Result<Daemon> {
        Daemon::start_full(&[], &[], files)
    }

    /// A daemon with extra arguments and a `--runbooks-dir` of the given runbooks.
    pub fn start_full_with(extra_args: &[&str], runbooks: &[(&str, &str)]) -> Result<Daemon> {
        Daemon::start_full(extra_args, &[], runbooks)
    }

    fn start_full(
        extra_args: &[&str],
        env: &[(&str, &str)],
        runbooks: &[(&str, &str)],
    ) -> Result<Daemon> {
        let mut daemon = Daemon::prepare(extra_args, env, runbooks)?;
        if std::env::var("RUNBOOK_TEST_STORE").as_deref() == Ok("postgres") {
            // The suites that run on both stores: a database of their own on this process's
            // PostgreSQL server.
            let url = shared_postgres_database()?;
            daemon.extra_args.extend(
                ["--store", "postgres", "--lease-ttl", "5s"]
                    .iter()
                    .map(|arg| arg.to_string()),
            );
            daemon.postgres_url = Some(url);
        }
        daemon.restart()?;
        if daemon.postgres_url.is_some()
            && !daemon
                .log()
                .contains("PostgreSQL store: this daemon is active")
        {
            bail!(
                "RUNBOOK_TEST_STORE=postgres, but the daemon does not run on it:\n{}",
                daemon.log()
            );
        }
        Ok(daemon)
    }

    /// A daemon on a fresh temporary data dir, not started yet (`spawn` starts it).
    pub fn prepare(
        extra_args: &[&str],
        env: &[(&str, &str)],
        runbooks: &[(&str, &str)],
    ) -> Result<Daemon> {
        let temp = tempfile::Builder::new().prefix("runbook-test-").tempdir()?;
        let mut extra_args: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
        if !runbooks.is_empty() {
            let dir = temp.path().join("runbooks");
            std::fs::create_dir_all(&dir)?;
            for (name, text) in runbooks {
                std::fs::write(dir.join(name), text)?;
            }
            extra_args.push("--runbooks-dir".to_owned());
            extra_args.push(dir.display().to_string());
        }
        Ok(Daemon {
            data_dir: temp.path().to_owned(),
            _temp: Some(temp),
            child: None,
            extra_args,
            env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            postgres_url: None,
        })
    }

    /// Starts the daemon process (again) and waits until its API answers.
    pub fn restart(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready()
    }

    /// Starts the daemon process (again) without waiting for its API (a standby of a shared
    /// store answers only once it holds the store).
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the daemon is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("daemon.log"))?;
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
        if let Some(url) = &self.postgres_url {
            command.env("RUNBOOK_POSTGRES_URL", url);
        }
        self.child = Some(command.spawn().context("spawning the daemon")?);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        self.wait_ready_for(Duration::from_secs(30))
    }

    /// Waits until the daemon's API answers.
    pub fn wait_ready_for(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "the daemon exited during start-up ({status}); its log:\n{}",
                        self.log()
                    );
                }
            }
            if self
                .cli(&["list"])
                .map(|output| output.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the daemon did not answer within {timeout:?}; its log:\n{}",
            self.log()
        )
    }

    /// Sends `signal` to the daemon process (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid().context("the daemon is not running")?;
        // SAFETY: a signal to the pid of our own child, which has not been reaped.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
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
        Ok(Command::new(binary())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
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
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "stdout of runbook {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout)
            )
        })
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
        run["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no run id in {run}"))
    }

    pub fn show(&self, run: &str) -> Result<Value> {
        self.json(&["show", run])
    }

    /// Polls `show` until `done` holds (or the time runs out).
    pub fn wait_for(
        &self,
        run: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let shown = self.show(run)?;
            if done(&shown) {
                return Ok(shown);
            }
            if Instant::now() > deadline {
                // The state last: a truncated report keeps its end.
                bail!(
                    "timed out; daemon log (last 80 lines):\n{}\nlast state of run {run}:\n{}\n\
                     its steps (id, state, error):\n{}",
                    last_lines(&self.log(), 80),
                    serde_json::to_string_pretty(&shown)?,
                    step_summary(&shown)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `done` until it holds (or the time runs out).
    pub fn wait_until(&self, timeout: Duration, done: impl Fn() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !done()? {
            if Instant::now() > deadline {
                bail!("timed out waiting; daemon log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs `runbook plan <runbook> -p k=v ...` and checks it names `steps` in this order (the
    /// whole procedure shown before anything runs); returns the plan's text.
    pub fn plan_shows_in_order(
        &self,
        runbook: &str,
        params: &[(&str, String)],
        steps: &[&str],
    ) -> Result<String> {
        let mut args = vec!["plan".to_owned(), runbook.to_owned()];
        for (key, value) in params {
            args.push("-p".to_owned());
            args.push(format!("{key}={value}"));
        }
        let plan = self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let text = String::from_utf8_lossy(&plan.stdout).into_owned();
        ensure!(
            plan.status.success(),
            "plan: {}",
            String::from_utf8_lossy(&plan.stderr)
        );
        let mut at = 0;
        for step in steps {
            at += text[at..]
                .find(step)
                .ok_or_else(|| anyhow!("step {step} not in order in the plan:\n{text}"))?
                + step.len();
        }
        Ok(text)
    }

    /// Waits until the run is in `state`.
    pub fn wait_state(&self, run: &str, state: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(run, timeout, |shown| shown["state"] == state)
    }

    /// Waits until the step is in `state`.
    pub fn wait_step(
        &self,
        run: &str,
        step: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<Value> {
        self.wait_for(run, timeout, |shown| {
            step_of(shown, step).is_some_and(|found| found["state"] == state)
        })
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

static SHARED_POSTGRES: std::sync::OnceLock<std::sync::Mutex<postgres::PgServer>> =
    std::sync::OnceLock::new();

/// A new database on this test process's own PostgreSQL server (started on first use, stopped
/// by pid when the process exits).
pub fn shared_postgres_database() -> Result<String> {
    extern "C" fn stop_at_exit() {
        if let Some(server) = SHARED_POSTGRES.get() {
            let mut server = server.lock().unwrap_or_else(|p| p.into_inner());
            let _ = server.stop();
            let _ = std::fs::remove_dir_all(server.dir());
        }
    }
    let server = match SHARED_POSTGRES.get() {
        Some(server) => server,
        None => {
            let started = postgres::PgServer::start()?;
            if SHARED_POSTGRES.set(std::sync::Mutex::new(started)).is_ok() {
                // SAFETY: registers a plain function to run at exit.
                unsafe { libc::atexit(stop_at_exit) };
            }
            SHARED_POSTGRES.get().context("the shared server")?
        }
    };
    server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .create_database()
}

/// The step `id` of a `show --json` result.
pub fn step_of<'a>(shown: &'a Value, id: &str) -> Option<&'a Value> {
    shown["steps"]
        .as_array()?
        .iter()
        .find(|step| step["id"] == id)
}

/// The lines of a marker file (empty when it does not exist).
pub fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
pub mod cluster;
pub mod postgres;
pub mod remoting;
pub mod webdriver;
// ----- processes: what a step leaves running, and a real sshd (exec supervisor tests) -----------

/// A process as `/proc/<pid>/stat` and `/proc/<pid>/cmdline` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    /// The session id (a shim leads its own session; its command and descendants are in it).
    pub session: i32,
    /// `R`, `S`, `D`, ... or `Z` for a zombie (ended, not yet reaped).
    pub state: char,
    pub cmdline: Vec<String>,
}

impl Proc {
    /// Reads one process; `None` if it is gone (or unreadable).
    pub fn read(pid: i32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp ...`: the comm may hold spaces; the last `)` ends it.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        Some(Proc {
            pid,
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            pgrp: fields.get(2)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            cmdline: cmdline
                .split(|byte| *byte == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect(),
        })
    }

    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    /// Whether its environment holds `key=value` (a zombie has none left).
    pub fn has_env(&self, key: &str, value: &str) -> bool {
        let wanted = format!("{key}={value}");
        std::fs::read(format!("/proc/{}/environ", self.pid))
            .unwrap_or_default()
            .split(|byte| *byte == 0)
            .any(|entry| entry == wanted.as_bytes())
    }
}

/// Every process of the host (those that end while being read are skipped).
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Proc::read)
        .collect()
}

/// Every process in process group `pgid`, zombies included (a zombie still holds the group).
pub fn group_members(pgid: i32) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|process| process.pgrp == pgid)
        .collect()
}

/// The processes whose environment holds `key=value`: a marker a test puts on a command, which
/// every descendant inherits.
pub fn processes_with_env(key: &str, value: &str) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|process| process.has_env(key, value))
        .collect()
}

/// Makes this test process adopt the orphans of its subtree (`PR_SET_CHILD_SUBREAPER`): after a
/// `kill -9` of the daemon, its shims become children of the test, which can then reap them.
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who adopts orphans.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// SIGKILL to `pid`, a child of this process (see [`become_subreaper`]), and reap it, so that
/// its pid is free again.
pub fn kill_and_reap(pid: i32) -> Result<()> {
    // SAFETY: kill(2) and waitpid(2) on a pid that is our child; `status` is a valid int.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) != pid {
            bail!("cannot reap pid {pid}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts `argv` as a process whose pid is exactly `pid` (a free one), through
/// `/proc/sys/kernel/ns_last_pid` (needs root); retries when another process takes it first.
pub fn spawn_with_pid(pid: i32, argv: &[&str]) -> Result<Child> {
    let Some((program, args)) = argv.split_first() else {
        bail!("empty argv")
    };
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .context("writing /proc/sys/kernel/ns_last_pid (the test needs root)")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()?;
        if child.id() == pid as u32 {
            return Ok(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    bail!("could not start a process with pid {pid}: another process kept taking it")
}

impl Daemon {
    /// What a host crash does to a daemon: `kill -9` of the daemon, then of its shims (before
    /// they can record anything), then of the commands in their sessions. A restarted daemon
    /// finds neither a live shim nor an exit status, as after a reboot, so a step that was
    /// running is `interrupted`. (A plain [`Daemon::kill9`] leaves the shims running, and the
    /// restarted daemon re-attaches to them.)
    pub fn crash_host(&mut self) {
        self.kill9();
        let shims = self.shims();
        for shim in &shims {
            // SAFETY: kill(2) of a shim this test's daemon started.
            unsafe { libc::kill(shim.pid, libc::SIGKILL) };
        }
        for shim in &shims {
            for process in processes()
                .into_iter()
                .filter(|process| process.session == shim.pid)
            {
                // SAFETY: kill(2) of a command this test's daemon started.
                unsafe { libc::kill(process.pid, libc::SIGKILL) };
            }
        }
    }

    /// The live (not zombie) `runbook shim` processes supervising a command for this data dir:
    /// `shim <call dir>`, or `shim - <dir>` with a command in its session (a spare the daemon
    /// keeps for its next call has none, and exits with the daemon).
    pub fn shims(&self) -> Vec<Proc> {
        let data_dir = self.data_dir.display().to_string();
        let all = processes();
        let supervises = |shim: &Proc| {
            all.iter()
                .any(|process| process.session == shim.pid && process.pid != shim.pid)
        };
        all.iter()
            .filter(|process| !process.is_zombie())
            .filter(|process| process.cmdline.get(1).is_some_and(|verb| verb == "shim"))
            .filter(|process| match process.cmdline.get(2).map(String::as_str) {
                Some("-") => {
                    process
                        .cmdline
                        .get(3)
                        .is_some_and(|dir| dir.starts_with(&data_dir))
                        && supervises(process)
                }
                Some(dir) => dir.starts_with(&data_dir),
                None => false,
            })
            .cloned()
            .collect()
    }

    /// The call dirs of a run (`<data>/runs/<run>/calls/<n>`), in call order.
    pub fn call_dirs(&self, run: &str) -> Result<Vec<PathBuf>> {
        let calls = self.data_dir.join("runs").join(run).join("calls");
        let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(&calls)
            .with_context(|| format!("reading {}", calls.display()))?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                Some((entry.file_name().to_str()?.parse().ok()?, entry.path()))
            })
            .collect();
        numbered.sort();
        Ok(numbered.into_iter().map(|(_, path)| path).collect())
    }

    /// A step's log as stored (`<data>/runs/<run>/logs/<step>.log`); empty if not written yet.
    pub fn step_log(&self, run: &str, step: &str) -> String {
        let path = self
            .data_dir
            .join("runs")
            .join(run)
            .join("logs")
            .join(format!("{step}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

/// The last `count` lines of `text`.
pub fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// One line per step of a shown run: id, state, attempts and error.
fn step_summary(shown: &Value) -> String {
    shown["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|step| {
                    format!(
                        "{} {} attempts={} polls={} {}",
                        step["id"].as_str().unwrap_or("?"),
                        step["state"].as_str().unwrap_or("?"),
                        step["attempts"],
                        step["polls"],
                        step["error"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon), below the ephemeral range.
pub fn free_port() -> Result<u16> {
    free_server_port(1)
}

/// A listener on a free port of 127.0.0.1 (as [`free_port`]), for a server of the test itself:
/// a port taken between the look and the bind (by a process outside this test) is passed over
/// for the next one.
pub fn listen_on_free_port() -> Result<TcpListener> {
    let mut last = None;
    for _ in 0..20 {
        let port = free_port()?;
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return Ok(listener),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => last = Some(error),
            Err(error) => return Err(error).with_context(|| format!("binding 127.0.0.1:{port}")),
        }
    }
    Err(anyhow::anyhow!(
        "no free port on 127.0.0.1 to listen on: {last:?}"
    ))
}

/// Ports handed out by this process so far (servers of the tests of one binary never share one).
static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

/// A free port below the kernel's ephemeral range, so that while a server is down for a restart
/// no outgoing connection on this machine can take its port as a source port, and the restart
/// finds it free again. `span` consecutive ports from the returned one are all free
/// (a broker listens on `port - 2`, `port` and `port + 1`).
pub fn free_server_port(span: u16) -> Result<u16> {
    const LOW: usize = 12_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768)
        .max(LOW + 4_000);
    let slots = (high - LOW) / 4;
    let offset = std::process::id() as usize * 7;
    for _ in 0..200 {
        let slot = (offset + NEXT_PORT.fetch_add(1, Ordering::Relaxed)) % slots;
        let first = (LOW + slot * 4) as u16;
        if (first..first + span).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return Ok(first);
        }
    }
    bail!("no {span} free consecutive ports on 127.0.0.1 below the ephemeral range")
}

/// A real OpenSSH server on 127.0.0.1, for this test only: its own host key, an authorized user
/// key, a known_hosts file that trusts it, running as root in the foreground. Killed by pid on
/// drop.
pub struct Sshd {
    pub port: u16,
    /// `<user>@127.0.0.1:<port>`, the `host` of an exec step.
    pub host: String,
    /// The private key sshd accepts.
    pub user_key: PathBuf,
    /// A known_hosts file holding sshd's host key for `[127.0.0.1]:<port>`.
    pub known_hosts: PathBuf,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Sshd {
    pub const BINARY: &'static str = "/usr/sbin/sshd";

    pub fn start() -> Result<Sshd> {
        if !Path::new(Sshd::BINARY).exists() {
            bail!("{} is missing: install openssh-server (`.ci/run` does, or apt-get install openssh-server)", Sshd::BINARY);
        }
        let dir = tempfile::Builder::new().prefix("runbook-sshd-").tempdir()?;
        let host_key = dir.path().join("host_key");
        let user_key = dir.path().join("user_key");
        keygen(&host_key)?;
        keygen(&user_key)?;
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::copy(user_key.with_extension("pub"), &authorized_keys)?;
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd (the test needs root)")?;
        let port = free_port()?;
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nStrictModes no\nUsePAM no\n\
                 PidFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized_keys.display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("sshd.log"))?;
        let child = Command::new(Sshd::BINARY)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sshd")?;
        let host_public = std::fs::read_to_string(host_key.with_extension("pub"))?;
        let host_public: Vec<&str> = host_public.split_whitespace().take(2).collect();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{port} {}\n", host_public.join(" ")),
        )?;
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_owned();
        let mut sshd = Sshd {
            port,
            host: format!("{user}@127.0.0.1:{port}"),
            user_key,
            known_hosts,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = sshd.child.try_wait()? {
                bail!(
                    "sshd exited during start-up ({status}); its log:\n{}",
                    sshd.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "sshd did not listen on 127.0.0.1:{port} within 15 s; its log:\n{}",
                    sshd.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sshd)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new ed25519 key pair without passphrase at `path` (+ `.pub`).
pub fn keygen(path: &Path) -> Result<()> {
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "runbook-test", "-f"])
        .arg(path)
        .output()?;
    if !output.status.success() {
        bail!(
            "ssh-keygen -f {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl Daemon {
    /// The SHA-256 of the certificate the daemon's TCP listener generated into its data dir.
    pub fn tls_fingerprint(&self) -> Result<String> {
        use rustls::pki_types::pem::PemObject;
        let path = self.data_dir.join("tls/cert.pem");
        let cert = rustls::pki_types::CertificateDer::from_pem_file(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(runbook_engine::api::tls::fingerprint(cert.as_ref()))
    }

    /// Waits until the daemon process exits by itself (at the failpoint it was started with);
    /// the error names the failpoint and holds the daemon's log.
    pub fn wait_crashed(&mut self, failpoint: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.exited() {
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not crash at {failpoint} within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Has the daemon process exited (by itself, e.g. at a failpoint)? Reaps it if so.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                true
            }
            Some(Ok(None)) => false,
            None => true,
        }
    }

    /// Replaces the environment given to the daemon at its next (re)start.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
    }

    /// Starts the daemon on an existing data dir (not removed on drop).
    pub fn start_on(data_dir: &Path) -> Result<Daemon> {
        let mut daemon = Daemon {
            data_dir: data_dir.to_owned(),
            _temp: None,
            child: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            postgres_url: None,
        };
        daemon.restart()?;
        Ok(daemon)
    }
}

// ----- raw HTTP/1.1 over the daemon's Unix socket (journal reads, hostile requests) -------------

/// A response as read off the socket.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    /// The body, shortened for messages.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        match text.char_indices().nth(400) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.into_owned(),
        }
    }
}

/// Sends `request` (the raw bytes of one HTTP/1.1 request, which should say `Connection: close`)
/// on a new connection to `socket` and reads the response until the daemon closes it. The
/// request is written by another thread, so a daemon that answers before reading all of a large
/// body (and then closes) cannot deadlock the caller.
pub fn http_raw(socket: &Path, request: Vec<u8>) -> Result<HttpResponse> {
    use std::io::{Read, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writing = stream.try_clone()?;
    // A write error (EPIPE) only means the daemon stopped reading; its answer is what counts.
    let writer = std::thread::spawn(move || writing.write_all(&request));
    let mut raw = Vec::new();
    let read = (&stream).read_to_end(&mut raw);
    let _ = writer.join();
    if let Err(error) = read {
        if raw.is_empty() {
            return Err(error).context("reading the response");
        }
    }
    parse_http_response(&raw)
}

/// `method path` with an optional JSON (or any) body, on a new connection.
pub fn http(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> Result<HttpResponse> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    http_raw(socket, request)
}

fn parse_http_response(raw: &[u8]) -> Result<HttpResponse> {
    let head_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow!(
                "no complete HTTP head in {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[head_end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(key, value)| key == "transfer-encoding" && value.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

impl Daemon {
    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("runbook.sock")
    }

    /// One API request over the socket.
    pub fn api(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<HttpResponse> {
        http(&self.socket(), method, path, body)
    }

    /// The journal of a run, `GET /v1/runs/{id}/events` (there is no CLI verb for it).
    pub fn events(&self, run: &str) -> Result<Vec<Value>> {
        let response = self.api("GET", &format!("/v1/runs/{run}/events"), None)?;
        if response.status != 200 {
            bail!(
                "GET /v1/runs/{run}/events: HTTP {}: {}",
                response.status,
                response.text()
            );
        }
        match response.json()?.get_mut("events").map(Value::take) {
            Some(Value::Array(events)) => Ok(events),
            other => bail!("no events list in the answer: {other:?}"),
        }
    }
}

// ----- crash loops: a seeded PRNG, numbers from the environment, orphaned shims ------------------

/// xorshift64: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The number in environment variable `name`, if it is set.
pub fn env_number(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(text) => {
            Ok(Some(text.trim().parse().with_context(|| {
                format!("{name}={text:?} is not a number")
            })?))
        }
        Err(_) => Ok(None),
    }
}

/// A seed from the environment variable `name`, else from the clock.
pub fn seed_from(name: &str) -> Result<u64> {
    Ok(match env_number(name)? {
        Some(seed) => seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    })
}

impl Daemon {
    /// Reaps the shims of killed daemons that have ended since (they are children of this
    /// process once it is a subreaper: [`become_subreaper`]); never the running daemon.
    pub fn reap_orphans(&self) {
        // SAFETY: getpid has no preconditions.
        let own = unsafe { libc::getpid() };
        let daemon = self.pid().map(|pid| pid as i32);
        for process in processes() {
            if process.ppid == own && process.is_zombie() && Some(process.pid) != daemon {
                // SAFETY: waitpid on a zombie child of ours; `status` is a valid int.
                unsafe {
                    let mut status = 0;
                    libc::waitpid(process.pid, &mut status, libc::WNOHANG);
                }
            }
        }
    }
}

/// A run's journal as read now (`events`) extends the one read before (`seen`): its seqs rise
/// from 1, every event seen before is still there unchanged, except superseded poll rounds (a
/// poll's `timer_fired`, `step_started`, `call_noted`, `step_polled` and `timer_armed` events,
/// which the store forgets once a later round of the same step is journaled), and nothing at
/// its end is lost. Errors start with `(a)`.
pub fn check_journal_extends(run: &str, seen: &[Value], events: &[Value]) -> Result<()> {
    let seq = |event: &Value| event["seq"].as_u64().unwrap_or(0);
    ensure!(
        events.first().map(seq) == Some(1),
        "(a) run {run}: the journal does not start at seq 1"
    );
    for pair in events.windows(2) {
        ensure!(
            seq(&pair[0]) < seq(&pair[1]),
            "(a) run {run}: seq {} follows seq {}",
            seq(&pair[1]),
            seq(&pair[0])
        );
    }
    let last = |journal: &[Value]| journal.last().map_or(0, seq);
    ensure!(
        last(events) >= last(seen),
        "(a) run {run}: the journal shrank from seq {} to {}; lost: {}",
        last(seen),
        last(events),
        serde_json::to_string(
            &seen
                .iter()
                .filter(|event| seq(event) > last(events))
                .collect::<Vec<_>>()
        )?
    );
    let now: std::collections::BTreeMap<u64, &Value> =
        events.iter().map(|event| (seq(event), event)).collect();
    // The step of a poll timer, from its `timer_armed` event.
    let timer_step = |timer: &Value| {
        seen.iter()
            .chain(events)
            .find(|event| event["kind"] == "timer_armed" && event["timer"] == *timer)
            .map(|event| event["step"].clone())
    };
    for event in seen {
        match now.get(&seq(event)) {
            Some(present) => ensure!(
                *present == event,
                "(a) run {run}: event seq {} changed:\nbefore: {event}\nnow:    {present}",
                seq(event)
            ),
            None => {
                let step = match event["kind"].as_str() {
                    Some("step_started" | "call_noted" | "step_polled" | "timer_armed") => {
                        Some(event["step"].clone())
                    }
                    // Its round's `step_started` follows it (its `timer_armed` closed the
                    // round before, which may be gone already).
                    Some("timer_fired") => timer_step(&event["timer"]).or_else(|| {
                        seen.iter()
                            .find(|next| {
                                seq(next) == seq(event) + 1 && next["kind"] == "step_started"
                            })
                            .map(|next| next["step"].clone())
                    }),
                    _ => None,
                };
                let superseded = step.is_some_and(|step| {
                    events.iter().any(|later| {
                        later["kind"] == "step_polled"
                            && later["step"] == step
                            && seq(later) > seq(event)
                    })
                });
                ensure!(
                    superseded,
                    "(a) run {run}: event seq {} is gone and was not a superseded poll round: {event}",
                    seq(event)
                );
            }
        }
    }
    Ok(())
}

// ----- HTTPS to the daemon's TCP listener (remote_access.rs) ------------------------------------

/// `method path` over HTTPS to 127.0.0.1:`port`, whose certificate must have the SHA-256
/// `fingerprint`, with `Authorization: Bearer <token>` when given; on a new connection, read
/// until the daemon closes it.
pub fn https(
    port: u16,
    fingerprint: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<HttpResponse> {
    use std::io::{Read, Write};
    let config =
        runbook_engine::api::tls::pinned_client_config(fingerprint).map_err(|e| anyhow!(e))?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    stream.flush()?;
    let mut raw = Vec::new();
    if let Err(error) = stream.read_to_end(&mut raw) {
        // A peer that closes without close_notify still sent its whole answer.
        if raw.is_empty() {
            return Err(error).context("reading the HTTPS response");
        }
    }
    parse_http_response(&raw)
}
