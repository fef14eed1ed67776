//! The Restate side: `restate-server` (from the npm package `@restatedev/restate-server-linux-x64`)
//! on a temporary base dir with its ports on 127.0.0.1, and the TypeScript-SDK service
//! `tests/bench/restate-service/service.mjs` under Node. Both are installed with npm into a cache
//! outside the repository (`$RUNBOOK_RESTATE_DIR`, default `~/.cache/runbook/restate`).
//!
//! Configuration: the server's defaults (`--dump-config`): one node with every role, the
//! replicated loglet on the local log-server, whose RocksDB WAL is fsynced
//! (`rocksdb-disable-wal-fsync = false`), 24 partitions. Only the addresses (and telemetry, off) are
//! set, through the environment. A step is `ctx.run` of an empty closure: the SDK resumes the
//! handler only when the server has acknowledged the journaled result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::http::{Conn, Endpoint};
use super::pool::{self, pool};
use super::results::{Idle, Latency, Recovery, Step, Throughput, Timers};
use super::sys::{free_port, peak_overlap, progress, wall_ms, Memory, Samples, Server};

const READY_TIMEOUT: Duration = Duration::from_secs(300);
const SERVER_BIN: &str = "node_modules/@restatedev/restate-server-linux-x64/bin/restate-server";
const SDK_PACKAGE: &str = "node_modules/@restatedev/restate-sdk/package.json";

/// The npm install of the server and the SDK, with the service next to it.
#[derive(Debug, Clone)]
pub struct Install {
    pub dir: PathBuf,
    pub server_version: String,
    pub sdk_version: String,
    pub node_version: String,
}

impl Install {
    fn server_bin(&self) -> PathBuf {
        self.dir.join(SERVER_BIN)
    }

    /// Installs (once) or reuses the cache, and copies the service into it.
    pub fn prepare() -> Result<Install> {
        let dir = match std::env::var("RUNBOOK_RESTATE_DIR") {
            Ok(dir) => PathBuf::from(dir),
            Err(_) => PathBuf::from(std::env::var("HOME").context("HOME is not set")?)
                .join(".cache/runbook/restate"),
        };
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/restate-service");
        std::fs::create_dir_all(&dir)?;
        let manifest = std::fs::read(source.join("package.json"))?;
        let installed_manifest = std::fs::read(dir.join("package.json")).unwrap_or_default();
        if installed_manifest != manifest
            || !dir.join(SERVER_BIN).exists()
            || !dir.join(SDK_PACKAGE).exists()
        {
            std::fs::write(dir.join("package.json"), &manifest)?;
            progress(&format!("installing Restate (npm) into {}", dir.display()));
            let status = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .context("running npm (is Node.js installed?)")?;
            if !status.success() {
                bail!("npm install in {} failed ({status})", dir.display());
            }
        }
        std::fs::copy(source.join("service.mjs"), dir.join("service.mjs"))?;
        let output = |program: &Path, arg: &str| -> String {
            Command::new(program)
                .arg(arg)
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let sdk: Value = serde_json::from_slice(&std::fs::read(dir.join(SDK_PACKAGE))?)?;
        Ok(Install {
            server_version: output(&dir.join(SERVER_BIN), "--version"),
            sdk_version: sdk["version"].as_str().unwrap_or("?").to_owned(),
            node_version: output(Path::new("node"), "--version"),
            dir,
        })
    }
}

/// A Restate server on its own base dir, and the Node service it calls.
pub struct Restate {
    install: Install,
    dir: tempfile::TempDir,
    server: Option<Server>,
    service: Option<Server>,
    admin: SocketAddr,
    pub ingress: Endpoint,
    fabric: SocketAddr,
    service_port: u16,
}

impl Restate {
    pub fn new(install: &Install) -> Result<Restate> {
        let dir = tempfile::Builder::new()
            .prefix("restate-bench-")
            .tempdir()?;
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Restate {
            install: install.clone(),
            dir,
            server: None,
            service: None,
            admin: loopback(free_port()?),
            ingress: Endpoint::Tcp(loopback(free_port()?)),
            fabric: loopback(free_port()?),
            service_port: free_port()?,
        })
    }

    fn ingress_addr(&self) -> SocketAddr {
        match &self.ingress {
            Endpoint::Tcp(address) => *address,
            Endpoint::Unix(_) => unreachable!("the ingress is TCP"),
        }
    }

    /// Starts the server; returns ms from spawn until both the admin and the ingress API answer.
    pub async fn start(&mut self) -> Result<f64> {
        let mut command = Command::new(self.install.server_bin());
        command
            .current_dir(self.dir.path())
            .arg("--base-dir")
            .arg(self.dir.path().join("restate-data"))
            .arg("--no-logo")
            .env("RESTATE_NODE_NAME", "bench")
            .env("RESTATE_ADMIN__BIND_ADDRESS", self.admin.to_string())
            .env(
                "RESTATE_INGRESS__BIND_ADDRESS",
                self.ingress_addr().to_string(),
            )
            .env("RESTATE_BIND_ADDRESS", self.fabric.to_string())
            .env(
                "RESTATE_ADVERTISED_ADDRESS",
                format!("http://{}/", self.fabric),
            )
            .env("RESTATE_DISABLE_TELEMETRY", "true")
            .env("RESTATE_LOG_DISABLE_ANSI_CODES", "true");
        let server = Server::spawn(command, &self.dir.path().join("restate.log"))?;
        let started = server.spawned;
        self.server = Some(server);
        let admin = Endpoint::Tcp(self.admin);
        let ready = |endpoint: &Endpoint, path: &'static str| {
            let endpoint = endpoint.clone();
            async move {
                match endpoint.connect().await {
                    Ok(mut conn) => conn
                        .get(path)
                        .await
                        .is_ok_and(|response| response.status == 200),
                    Err(_) => false,
                }
            }
        };
        loop {
            if let Some(server) = self.server.as_mut() {
                server.check_alive("restate-server").map_err(|error| {
                    anyhow!(
                        "{error}; see {}",
                        self.dir.path().join("restate.log").display()
                    )
                })?;
            }
            if ready(&admin, "/health").await && ready(&self.ingress, "/restate/health").await {
                return Ok(started.elapsed().as_secs_f64() * 1000.0);
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("restate-server did not answer within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Starts the Node service and registers it (`POST /deployments`), then calls it once.
    pub async fn start_service(&mut self) -> Result<()> {
        let mut command = Command::new("node");
        command
            .current_dir(&self.install.dir)
            .arg("service.mjs")
            .env("PORT", self.service_port.to_string());
        self.service = Some(Server::spawn(
            command,
            &self.dir.path().join("service.log"),
        )?);
        let deadline = Instant::now() + Duration::from_secs(60);
        let uri = format!("http://127.0.0.1:{}", self.service_port);
        loop {
            if let Some(service) = self.service.as_mut() {
                service.check_alive("the Node service")?;
            }
            let registered = async {
                let mut conn = Endpoint::Tcp(self.admin).connect().await?;
                conn.post("/deployments", &json!({"uri": uri}))
                    .await?
                    .ok_json("POST /deployments")
            };
            match registered.await {
                Ok(_) => break,
                Err(error) if Instant::now() > deadline => {
                    return Err(error.context("registering the service"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        loop {
            let mut conn = self.ingress.connect().await?;
            let response = conn.post("/bench/steps", &json!({"steps": 1})).await?;
            if response.status == 200 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the registered service does not answer: {}",
                    String::from_utf8_lossy(&response.body)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
            .ok_or_else(|| anyhow!("restate-server is not running"))?
            .memory()
    }

    pub fn service_memory(&self) -> Result<Memory> {
        self.service
            .as_ref()
            .ok_or_else(|| anyhow!("the service is not running"))?
            .memory()
    }
}

/// Sends `runs` sleeps of `wait_ms` (`/send`: Restate journals the invocation and answers), at
/// most `pace` a second; returns the invocation ids and the seconds it took.
async fn send_sleeps(
    restate: &Restate,
    runs: usize,
    wait_ms: u64,
    width: usize,
    pace: Option<f64>,
) -> Result<(Vec<String>, f64)> {
    let started = Instant::now();
    let ids = pool(
        "send",
        &restate.ingress,
        runs,
        width,
        move |mut conn, index| async move {
            pool::pace(started, pace, index).await;
            let sent = conn
                .post("/bench/sleep/send", &json!({"ms": wait_ms}))
                .await?
                .ok_json("POST /bench/sleep/send")?;
            let id = sent["invocationId"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no invocationId in {sent}"))?;
            Ok((conn, id))
        },
    )
    .await?;
    Ok((ids, started.elapsed().as_secs_f64()))
}

/// Waits for an invocation's output (`attach`), retrying while the server is not up.
async fn attach(endpoint: &Endpoint, conn: &mut Option<Conn>, id: &str) -> Result<Value> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if conn.is_none() {
            *conn = endpoint.connect().await.ok();
        }
        if let Some(open) = conn.as_mut() {
            match open.get(&format!("/restate/invocation/{id}/attach")).await {
                Ok(response) if response.status == 200 => return response.json(),
                Ok(_) => {}
                Err(_) => *conn = None,
            }
        }
        if Instant::now() > deadline {
            bail!("invocation {id} gave no output within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn woke(output: &Value) -> Result<(f64, f64)> {
    match (output["deadline"].as_f64(), output["woke"].as_f64()) {
        (Some(deadline), Some(woke)) => Ok((deadline, woke)),
        _ => bail!("unexpected sleep output {output}"),
    }
}

async fn attach_all(restate: &Restate, ids: Vec<String>, width: usize) -> Result<Vec<(f64, f64)>> {
    let (ids, endpoint) = (Arc::new(ids), restate.ingress.clone());
    let count = ids.len();
    pool(
        "attach",
        &restate.ingress,
        count,
        width,
        move |conn, index| {
            let (ids, endpoint) = (ids.clone(), endpoint.clone());
            async move {
                let mut conn = Some(conn);
                let output = attach(&endpoint, &mut conn, &ids[index]).await?;
                let conn = match conn {
                    Some(conn) => conn,
                    None => endpoint.connect().await?,
                };
                Ok((conn, woke(&output)?))
            }
        },
    )
    .await
}

/// One invocation of `steps` sequential `ctx.run` steps.
/// The handler's input: `steps` sequential `ctx.run`, each empty or around `execFile("true")`.
fn steps_body(steps: usize, step: Step) -> Value {
    json!({"steps": steps, "exec": step == Step::Exec})
}

pub async fn latency(restate: &Restate, steps: usize, step: Step) -> Result<Latency> {
    let mut conn = restate.ingress.connect().await?;
    let output = conn
        .post("/bench/steps", &steps_body(steps, step))
        .await?
        .ok_json("POST /bench/steps")?;
    let acked: Vec<f64> = output["acked"]
        .as_array()
        .map(|marks| marks.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if acked.len() != steps {
        bail!("expected {steps} acknowledged steps, got {output}");
    }
    let started = output["started"].as_f64().unwrap_or(f64::NAN);
    Ok(Latency {
        steps,
        per_step: Samples::new(acked.windows(2).map(|pair| pair[1] - pair[0]).collect()),
        whole_run_ms_per_step: (acked[steps - 1] - started) / steps as f64,
    })
}

/// `runs` invocations of `steps` steps, `in_flight` at a time (each call answers when the
/// invocation ends).
pub async fn throughput(
    restate: &Restate,
    runs: usize,
    steps: usize,
    in_flight: usize,
    step: Step,
) -> Result<Throughput> {
    let body = steps_body(steps, step);
    let started = Instant::now();
    pool(
        "throughput",
        &restate.ingress,
        runs,
        in_flight,
        move |mut conn, _| {
            let body = body.clone();
            async move {
                conn.post("/bench/steps", &body)
                    .await?
                    .ok_json("POST /bench/steps")?;
                Ok((conn, ()))
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
        polls_per_run: None,
    })
}

/// `runs` invocations that each sleep `wait_ms` (on a fresh server).
pub async fn timers(
    install: &Install,
    runs: usize,
    wait_ms: u64,
    width: usize,
    pace: Option<f64>,
) -> Result<Timers> {
    let mut restate = Restate::new(install)?;
    restate.start().await?;
    restate.start_service().await?;
    let (ids, create_seconds) = send_sleeps(&restate, runs, wait_ms, width, pace).await?;
    progress(&format!(
        "restate: {runs} sleeps sent in {create_seconds:.1} s; waiting for them to fire"
    ));
    // Read the peak memory once every deadline has passed (before fetching outputs).
    tokio::time::sleep(Duration::from_millis(wait_ms + 1000)).await;
    let peak_rss_mb = restate.memory()?.hwm_mb;
    let outputs = attach_all(&restate, ids, 64).await?;
    let lateness = Samples::new(
        outputs
            .iter()
            .map(|(deadline, woke)| woke - deadline)
            .collect(),
    );
    let intervals: Vec<(f64, f64)> = outputs
        .iter()
        .map(|(deadline, woke)| (deadline - wait_ms as f64, *woke))
        .collect();
    let first_deadline = outputs
        .iter()
        .map(|(deadline, _)| *deadline)
        .fold(f64::INFINITY, f64::min);
    let last_woke = outputs.iter().map(|(_, woke)| *woke).fold(0.0, f64::max);
    Ok(Timers {
        runs,
        wait_ms,
        paced_per_s: pace,
        create_seconds,
        create_per_s: runs as f64 / create_seconds,
        lateness,
        engine_lateness: None,
        peak_pending: peak_overlap(&intervals),
        peak_rss_mb,
        span_seconds: (last_woke - first_deadline) / 1000.0,
    })
}

/// A fresh server: start-up time and resident memory with nothing to do.
pub async fn idle(install: &Install) -> Result<Idle> {
    let mut restate = Restate::new(install)?;
    let startup_ms = restate.start().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mb = restate.memory()?.rss_mb;
    restate.start_service().await?;
    let service_rss_mb = restate.service_memory()?.rss_mb;
    Ok(Idle {
        startup_ms,
        rss_mb,
        service_rss_mb: Some(service_rss_mb),
    })
}

/// `runs` sleeping invocations; `kill -9` of the server as soon as all are sent; restart once
/// every deadline has passed (the Node service keeps running, as an application would).
pub async fn recovery(
    install: &Install,
    runs: usize,
    wait_ms: u64,
    width: usize,
) -> Result<Recovery> {
    let mut restate = Restate::new(install)?;
    restate.start().await?;
    restate.start_service().await?;
    let (ids, create_seconds) = send_sleeps(&restate, runs, wait_ms, width, None).await?;
    let created_at = wall_ms();
    let mut conn = restate.ingress.connect().await?;
    let first = conn
        .get(&format!("/restate/invocation/{}/output", ids[0]))
        .await?;
    if first.status == 200 {
        bail!(
            "the first invocation ended before the kill: the wait ({wait_ms} ms) is shorter than \
             sending {runs} took ({create_seconds:.1} s)"
        );
    }
    drop(conn);
    restate.kill9();
    let killed_at = wall_ms();
    progress(&format!(
        "restate: {runs} sleeping invocations sent in {create_seconds:.1} s; killed -9; restarting when all are overdue"
    ));
    let overdue_at = created_at + wait_ms as f64 + 500.0;
    tokio::time::sleep(Duration::from_millis(
        (overdue_at - wall_ms()).max(0.0) as u64
    ))
    .await;
    let ready_ms = restate.start().await.context("restarting after kill -9")?;
    let spawned = restate.spawned_at_ms();
    let firsts = attach_all(&restate, ids.iter().take(64).cloned().collect(), 64).await?;
    let first_fire = firsts
        .iter()
        .map(|(_, woke)| *woke)
        .fold(f64::INFINITY, f64::min);
    let mut conn = None;
    let last = attach(
        &restate.ingress,
        &mut conn,
        ids.last().map_or("", String::as_str),
    )
    .await?;
    let (_, last_woke) = woke(&last)?;
    Ok(Recovery {
        runs,
        wait_ms,
        create_per_s: runs as f64 / create_seconds,
        down_seconds: (spawned - killed_at) / 1000.0,
        ready_ms,
        first_fire_ms: first_fire - spawned,
        all_fired_seconds: (last_woke - spawned) / 1000.0,
    })
}
