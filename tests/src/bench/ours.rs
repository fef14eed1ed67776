//! The `runbook` side: the real `runbook daemon` on a temporary data dir, driven over its Unix
//! socket API (`docs/api.md`). Configuration: the defaults (group commit; every commit written
//! to the store's write-ahead log and fdatasync'ed before it is acknowledged).
//!
//! A step is a `noop` step: one durable commit of its own (start and end journaled together; the
//! next step starts in the next commit). Step times come from the journal
//! (`GET /v1/runs/{id}/events`); a client sees a run end by polling `GET /v1/runs/{id}`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::http::{Conn, Endpoint};
use super::pool::{self, pool};
use super::results::{Idle, Latency, Recovery, Step, Throughput, Timers};
use super::sys::{
    field_ms, free_disk_mb, peak_overlap, progress, wall_ms, Memory, Samples, Server,
};

/// How long a server may take to answer its API after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The `runbook` binary: `$RUNBOOK_BIN`, else next to the bench executable.
pub fn binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("RUNBOOK_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|dir| dir.join("runbook"))
        .ok_or_else(|| anyhow!("the bench executable has no directory"))?;
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p runbook-cli -p runbook-tests` \
             (or set RUNBOOK_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// A runbook of `steps` sequential `noop` steps.
pub fn steps_runbook(steps: usize, step: Step) -> String {
    let (what, action) = match step {
        Step::Noop => ("durable no-op steps", "action = \"noop\"\n"),
        Step::Exec => (
            "exec steps of `true`",
            "action = \"exec\"\nwith = { command = [\"true\"] }\n",
        ),
        Step::Chained => ("noop steps naming the step before", "action = \"noop\"\n"),
    };
    let mut text = format!("name = \"bench-steps\"\ndescription = \"bench: {steps} {what}\"\n");
    let pad = "x".repeat(256);
    for index in 0..steps {
        text.push_str(&format!("\n[[steps]]\nid = \"s{index}\"\n{action}"));
        if step == Step::Chained {
            let before = match index {
                0 => "0".to_owned(),
                _ => format!("\"{{{{ steps.s{}.output.n }}}}\"", index - 1),
            };
            text.push_str(&format!(
                "with = {{ before = {before}, n = {index}, pad = \"{pad}\" }}\n"
            ));
        }
    }
    text
}

/// A runbook that waits `wait_ms`, then runs one `noop` step (the code "after the sleep").
pub fn timer_runbook(wait_ms: u64) -> String {
    format!(
        "name = \"bench-timer\"\ndescription = \"bench: a durable wait\"\n\n\
         [[steps]]\nid = \"wait\"\naction = \"wait\"\nwith = {{ duration = \"{wait_ms}ms\" }}\n\n\
         [[steps]]\nid = \"after\"\naction = \"noop\"\n"
    )
}

fn start_body(file: &str, text: &str) -> Value {
    json!({"source": {"file": file, "text": text}, "params": {}})
}

/// A daemon on its own temporary data dir.
pub struct Daemon {
    binary: PathBuf,
    dir: tempfile::TempDir,
    server: Option<Server>,
    pub endpoint: Endpoint,
    /// More arguments for `runbook daemon`.
    pub extra_args: Vec<String>,
}

impl Daemon {
    pub fn new(binary: &Path) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("runbook-bench-")
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join("runbooks"))?;
        let endpoint = Endpoint::unix(&dir.path().join("runbook.sock"));
        Ok(Daemon {
            binary: binary.to_owned(),
            dir,
            server: None,
            endpoint,
            extra_args: Vec::new(),
        })
    }

    /// The daemon's data dir.
    #[allow(dead_code)] // (`bench-history` uses it; `bench` does not)
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the daemon; returns ms from spawn to the first answered API request.
    pub async fn start(&mut self) -> Result<f64> {
        let mut command = Command::new(&self.binary);
        command
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("daemon")
            .arg("--runbooks-dir")
            .arg(self.dir.path().join("runbooks"))
            .args(&self.extra_args);
        let server = Server::spawn(command, &self.dir.path().join("daemon.log"))?;
        let started = server.spawned;
        self.server = Some(server);
        loop {
            if let Some(server) = self.server.as_mut() {
                server
                    .check_alive("the runbook daemon")
                    .map_err(|error| anyhow!("{error}; its log:\n{}", self.log_tail()))?;
            }
            if let Ok(mut conn) = self.endpoint.connect().await {
                if let Ok(response) = conn.get("/v1/runbooks").await {
                    if response.status == 200 {
                        return Ok(started.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("the daemon did not answer within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill9();
        }
    }

    pub fn spawned_at_ms(&self) -> f64 {
        self.server
            .as_ref()
            .map_or(0.0, |server| server.spawned_at_ms)
    }

    pub fn memory(&self) -> Result<Memory> {
        self.server
            .as_ref()
            .ok_or_else(|| anyhow!("the daemon is not running"))?
            .memory()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log[log
            .char_indices()
            .map(|(i, _)| i)
            .find(|i| *i >= start)
            .unwrap_or(0)..]
            .to_owned()
    }
}

/// Starts a run from source text; returns its id.
async fn start_run(conn: &mut Conn, body: &Value) -> Result<String> {
    let run = conn
        .post("/v1/runs", body)
        .await?
        .ok_json("POST /v1/runs")?;
    run["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no run id in {run}"))
}

fn is_terminal(run: &Value) -> bool {
    matches!(
        run["state"].as_str(),
        Some("succeeded" | "failed" | "canceled" | "rolled_back" | "needs_attention")
    )
}

/// Polls `GET /v1/runs/{id}` until the run ended: first after `first`, then every `every`.
/// Returns the run and the number of requests made.
async fn wait_ended(
    conn: &mut Conn,
    id: &str,
    first: Duration,
    every: Duration,
) -> Result<(Value, u64)> {
    tokio::time::sleep(first).await;
    let mut polls = 0;
    loop {
        polls += 1;
        let run = conn
            .get(&format!("/v1/runs/{id}"))
            .await?
            .ok_json("GET /v1/runs/{id}")?;
        if is_terminal(&run) {
            if run["state"] != "succeeded" {
                bail!("run {id} ended {}: {run}", run["state"]);
            }
            return Ok((run, polls));
        }
        tokio::time::sleep(every).await;
    }
}

/// One run of `steps` sequential noop steps.
pub async fn latency(daemon: &Daemon, steps: usize, step: Step) -> Result<Latency> {
    let mut conn = daemon.endpoint.connect().await?;
    let id = start_run(
        &mut conn,
        &start_body("bench-latency.toml", &steps_runbook(steps, step)),
    )
    .await?;
    // (Polled less often for a long run: a view of every step costs the daemon O(steps).)
    let every = Duration::from_millis((steps as u64 / 20).max(5));
    let (run, _) = wait_ended(&mut conn, &id, every, every).await?;
    let events = conn
        .get(&format!("/v1/runs/{id}/events"))
        .await?
        .ok_json("GET /v1/runs/{id}/events")?;
    let events = events["events"].as_array().cloned().unwrap_or_default();
    let at = |kind: &str| -> Vec<f64> {
        events
            .iter()
            .filter(|event| event["kind"] == kind)
            .filter_map(|event| field_ms(&event["at"]))
            .collect()
    };
    let succeeded = at("step_succeeded");
    if succeeded.len() != steps {
        bail!(
            "expected {steps} step_succeeded events, found {}",
            succeeded.len()
        );
    }
    let deltas = succeeded.windows(2).map(|pair| pair[1] - pair[0]).collect();
    let created = field_ms(&run["created_at"]).unwrap_or(f64::NAN);
    let finished = field_ms(&run["finished_at"]).unwrap_or(f64::NAN);
    Ok(Latency {
        steps,
        per_step: Samples::new(deltas),
        whole_run_ms_per_step: (finished - created) / steps as f64,
    })
}

/// `runs` runs of `steps` noop steps, `in_flight` at a time; a worker starts its next run when
/// it has seen its previous one end (polling; the first poll after about as long as runs have
/// been taking, then every millisecond).
pub async fn throughput(
    daemon: &Daemon,
    runs: usize,
    steps: usize,
    in_flight: usize,
    step: Step,
) -> Result<Throughput> {
    let body = Arc::new(start_body("bench-steps.toml", &steps_runbook(steps, step)));
    // A moving average of how long a run takes, in µs.
    let typical_us = Arc::new(AtomicU64::new(1000 * steps as u64));
    let started = Instant::now();
    let polls = pool(
        "throughput",
        &daemon.endpoint,
        runs,
        in_flight,
        move |mut conn, _| {
            let (body, typical_us) = (body.clone(), typical_us.clone());
            async move {
                let began = Instant::now();
                let id = start_run(&mut conn, &body).await?;
                let first = Duration::from_micros(typical_us.load(Ordering::Relaxed) * 8 / 10);
                let (_, polls) =
                    wait_ended(&mut conn, &id, first, Duration::from_millis(1)).await?;
                let took = began.elapsed().as_micros() as u64;
                let old = typical_us.load(Ordering::Relaxed);
                typical_us.store((old * 7 + took) / 8, Ordering::Relaxed);
                Ok((conn, polls))
            }
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Throughput {
        runs,
        steps_per_run: steps,
        in_flight,
        seconds,
        steps_per_s: (runs * steps) as f64 / seconds,
        polls_per_run: Some(polls.iter().sum::<u64>() as f64 / runs.max(1) as f64),
    })
}

/// Creates `runs` timer runs, `width` requests at a time (at most `pace` a second); returns their
/// ids and the seconds it took. Stops with an error when the daemon outgrows `limits` (this
/// machine is shared).
async fn create_timer_runs(
    daemon: &Daemon,
    runs: usize,
    wait_ms: u64,
    width: usize,
    limits: Limits,
    pace: Option<f64>,
) -> Result<(Vec<String>, f64)> {
    let body = Arc::new(start_body("bench-timer.toml", &timer_runbook(wait_ms)));
    let pid = daemon.server.as_ref().and_then(Server::pid).unwrap_or(0);
    let data_dir = daemon.dir.path().to_owned();
    let started = Instant::now();
    let ids = pool(
        "create",
        &daemon.endpoint,
        runs,
        width,
        move |mut conn, index| {
            let (body, data_dir) = (body.clone(), data_dir.clone());
            async move {
                if index % 1000 == 999 {
                    limits.check(pid, &data_dir, index + 1)?;
                }
                pool::pace(started, pace, index).await;
                let id = start_run(&mut conn, &body).await?;
                Ok((conn, id))
            }
        },
    )
    .await?;
    Ok((ids, started.elapsed().as_secs_f64()))
}

/// How large a daemon may grow before a phase is stopped.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rss_mb: f64,
    pub min_free_disk_mb: f64,
}

impl Limits {
    fn check(&self, pid: u32, data_dir: &Path, created: usize) -> Result<()> {
        let rss = Memory::of(pid)?.rss_mb;
        if rss > self.rss_mb {
            bail!("stopped after {created} runs created: the daemon's RSS is {rss:.0} MB, over the limit of {:.0} MB (--rss-limit-mb)", self.rss_mb);
        }
        let free = free_disk_mb(data_dir);
        if free < self.min_free_disk_mb {
            bail!("stopped after {created} runs created: {free:.0} MB left on the data dir's disk");
        }
        Ok(())
    }
}

/// What one timer run tells: when its wait was armed, its deadline, the engine's firing instant,
/// and when the run went on (its end, after the `noop` that follows the wait).
struct TimerRun {
    armed: f64,
    deadline: f64,
    fired: f64,
    resumed: f64,
}

async fn read_timer_run(conn: &mut Conn, id: &str) -> Result<TimerRun> {
    let (run, _) = wait_ended(conn, id, Duration::ZERO, Duration::from_millis(100)).await?;
    let wait = &run["steps"][0];
    let output = &wait["output"];
    let get = |value: &Value, what: &str| {
        field_ms(value).ok_or_else(|| anyhow!("run {id}: no {what} in {run}"))
    };
    Ok(TimerRun {
        armed: get(&wait["started_at"], "steps[0].started_at")?,
        deadline: get(&output["fire_at"], "steps[0].output.fire_at")?,
        fired: get(&output["fired_at"], "steps[0].output.fired_at")?,
        resumed: get(&run["finished_at"], "finished_at")?,
    })
}

async fn read_timer_runs(daemon: &Daemon, ids: Vec<String>) -> Result<Vec<TimerRun>> {
    let ids = Arc::new(ids);
    let count = ids.len();
    pool(
        "read back",
        &daemon.endpoint,
        count,
        16,
        move |mut conn, index| {
            let ids = ids.clone();
            async move {
                let run = read_timer_run(&mut conn, &ids[index]).await?;
                Ok((conn, run))
            }
        },
    )
    .await
}

/// Polls one run until it ended (cheap, unlike listing every run).
async fn wait_run_ended(daemon: &Daemon, id: &str, every: Duration) -> Result<Value> {
    let mut conn = daemon.endpoint.connect().await?;
    Ok(wait_ended(&mut conn, id, Duration::ZERO, every).await?.0)
}

/// `runs` runs that each wait `wait_ms` (on a fresh daemon).
pub async fn timers(
    binary: &Path,
    runs: usize,
    wait_ms: u64,
    width: usize,
    limits: Limits,
    pace: Option<f64>,
) -> Result<Timers> {
    let mut daemon = Daemon::new(binary)?;
    daemon.start().await?;
    let (ids, create_seconds) =
        create_timer_runs(&daemon, runs, wait_ms, width, limits, pace).await?;
    progress(&format!(
        "runbook: {runs} timer runs created in {create_seconds:.1} s; waiting for them to fire"
    ));
    // Timers fire in deadline order: when the last run created has gone on, all have (nearly).
    let last = ids.last().cloned().unwrap_or_default();
    wait_run_ended(&daemon, &last, Duration::from_millis(200)).await?;
    let peak_rss_mb = daemon.memory()?.hwm_mb;
    let read = read_timer_runs(&daemon, ids).await?;
    daemon.kill9();
    let lateness = Samples::new(read.iter().map(|run| run.resumed - run.deadline).collect());
    let engine = Samples::new(read.iter().map(|run| run.fired - run.deadline).collect());
    let intervals: Vec<(f64, f64)> = read.iter().map(|run| (run.armed, run.fired)).collect();
    let first_deadline = read
        .iter()
        .map(|run| run.deadline)
        .fold(f64::INFINITY, f64::min);
    let last_resumed = read.iter().map(|run| run.resumed).fold(0.0, f64::max);
    Ok(Timers {
        runs,
        wait_ms,
        paced_per_s: pace,
        create_seconds,
        create_per_s: runs as f64 / create_seconds,
        lateness,
        engine_lateness: Some(engine),
        peak_pending: peak_overlap(&intervals),
        peak_rss_mb,
        span_seconds: (last_resumed - first_deadline) / 1000.0,
    })
}

/// A fresh daemon: start-up time and resident memory with nothing to do.
pub async fn idle(binary: &Path) -> Result<Idle> {
    let mut daemon = Daemon::new(binary)?;
    let startup_ms = daemon.start().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mb = daemon.memory()?.rss_mb;
    daemon.kill9();
    Ok(Idle {
        startup_ms,
        rss_mb,
        service_rss_mb: None,
    })
}

/// `runs` runs waiting `wait_ms`; `kill -9` as soon as all are created; restart once every
/// deadline has passed.
pub async fn recovery(
    binary: &Path,
    runs: usize,
    wait_ms: u64,
    width: usize,
    limits: Limits,
) -> Result<Recovery> {
    let mut daemon = Daemon::new(binary)?;
    daemon.start().await?;
    let (ids, create_seconds) =
        create_timer_runs(&daemon, runs, wait_ms, width, limits, None).await?;
    let created_at = wall_ms();
    let mut conn = daemon.endpoint.connect().await?;
    let first = conn
        .get(&format!("/v1/runs/{}", ids[0]))
        .await?
        .ok_json("GET /v1/runs/{id}")?;
    if first["state"] != "waiting" {
        bail!(
            "the first run is {} before the kill: the wait ({wait_ms} ms) is shorter than creating \
             {runs} runs took ({create_seconds:.1} s)",
            first["state"]
        );
    }
    drop(conn);
    daemon.kill9();
    let killed_at = wall_ms();
    progress(&format!(
        "runbook: {runs} waiting runs created in {create_seconds:.1} s; killed -9; restarting when all are overdue"
    ));
    let overdue_at = created_at + wait_ms as f64 + 500.0;
    tokio::time::sleep(Duration::from_millis(
        (overdue_at - wall_ms()).max(0.0) as u64
    ))
    .await;
    let ready_ms = daemon.start().await.context("restarting after kill -9")?;
    let spawned = daemon.spawned_at_ms();
    // The earliest deadlines belong to the first runs created.
    let mut conn = daemon.endpoint.connect().await?;
    let mut first_fire = f64::INFINITY;
    for id in ids.iter().take(64) {
        first_fire = first_fire.min(read_timer_run(&mut conn, id).await?.resumed);
    }
    let last = ids.last().cloned().unwrap_or_default();
    let last_run = wait_run_ended(&daemon, &last, Duration::from_millis(50)).await?;
    let all_fired = field_ms(&last_run["finished_at"]).unwrap_or(f64::NAN);
    daemon.kill9();
    Ok(Recovery {
        runs,
        wait_ms,
        create_per_s: runs as f64 / create_seconds,
        down_seconds: (spawned - killed_at) / 1000.0,
        ready_ms,
        first_fire_ms: first_fire - spawned,
        all_fired_seconds: (all_fired - spawned) / 1000.0,
    })
}
