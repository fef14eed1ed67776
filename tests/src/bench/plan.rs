//! What the bench runs, in which order, and what it concludes: the rounds in alternation, the
//! timer and recovery phases, the table with its targets, and the JSON record.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::ours::{self, Daemon};
use super::report::{table, Row};
use super::restate::{self, Install, Restate};
use super::results::Step;
use super::sys::{load_average, progress};
use super::table::{baseline_rows, rows, Floors, Side};

pub struct Sizes {
    /// Rounds of the idle, latency and throughput workloads (alternating who goes first).
    pub rounds: usize,
    pub latency_steps: usize,
    pub throughput_runs: usize,
    pub throughput_steps: usize,
    pub in_flight: usize,
    /// The same two workloads with steps that run `true` (fewer: each spawns a process).
    pub exec_latency_steps: usize,
    pub exec_throughput_runs: usize,
    pub exec_throughput_steps: usize,
    pub exec_in_flight: usize,
    /// Timer phases: the first on both systems, the others on `runbook` alone.
    pub timers: Vec<usize>,
    pub timer_wait_ms: u64,
    /// The rate every timer phase starts runs at (open loop; on both systems for the compared
    /// phase): the same deadlines arrive at the same rate, below either system's maximum, so
    /// lateness measures firing, not a backlog of creation.
    pub timer_rate: Option<f64>,
    pub recovery_runs: usize,
    /// Concurrent requests that create runs (timers, recovery).
    pub create_width: usize,
    pub fsync_iterations: usize,
    pub spawn_iterations: usize,
    pub warmup: bool,
    /// Stop a `runbook` timer phase when the daemon's RSS exceeds this (the machine is shared).
    pub rss_limit_mb: f64,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            rounds: 3,
            latency_steps: 200,
            throughput_runs: 2_000,
            throughput_steps: 10,
            in_flight: 64,
            exec_latency_steps: 100,
            exec_throughput_runs: 500,
            exec_throughput_steps: 10,
            exec_in_flight: 32,
            timers: vec![10_000, 100_000, 1_000_000],
            timer_wait_ms: 5_000,
            timer_rate: Some(2_000.0),
            recovery_runs: 100_000,
            create_width: 64,
            fsync_iterations: 1_000,
            spawn_iterations: 500,
            warmup: true,
            rss_limit_mb: 10_000.0,
        }
    }

    pub fn smoke() -> Sizes {
        Sizes {
            rounds: 1,
            latency_steps: 20,
            throughput_runs: 20,
            throughput_steps: 5,
            in_flight: 8,
            exec_latency_steps: 10,
            exec_throughput_runs: 8,
            exec_throughput_steps: 3,
            exec_in_flight: 4,
            timers: vec![50],
            timer_wait_ms: 1_000,
            timer_rate: None,
            recovery_runs: 50,
            create_width: 8,
            fsync_iterations: 50,
            spawn_iterations: 20,
            warmup: false,
            rss_limit_mb: 1_000.0,
        }
    }
}

pub struct Options {
    pub sizes: Sizes,
    pub smoke: bool,
    pub ours_only: bool,
    pub out: Option<PathBuf>,
    /// Another `runbook` build whose exec phases run in the same rounds (before ⇄ after).
    pub baseline: Option<PathBuf>,
}

/// A wait long enough that all `runs` are created before the first fires (so all are pending at
/// once): `base` + `margin` × the expected creation time at `per_s`, in whole seconds.
fn covering_wait(base_ms: u64, runs: usize, per_s: f64, margin: f64) -> u64 {
    let creating_ms = margin * runs as f64 / per_s.max(1.0) * 1000.0;
    (base_ms + creating_ms as u64).div_ceil(1000) * 1000
}

async fn ours_round(binary: &Path, sizes: &Sizes, side: &mut Side) -> Result<()> {
    side.idle.push(ours::idle(binary).await?);
    let mut daemon = Daemon::new(binary)?;
    daemon.start().await?;
    noop_phases(&daemon, sizes, side).await?;
    exec_phases(&daemon, sizes, side).await?;
    daemon.kill9();
    Ok(())
}

/// Noop steps: latency, then throughput.
async fn noop_phases(daemon: &Daemon, sizes: &Sizes, side: &mut Side) -> Result<()> {
    if sizes.warmup {
        ours::latency(daemon, 20, Step::Noop).await?;
        ours::throughput(
            daemon,
            128,
            sizes.throughput_steps,
            sizes.in_flight,
            Step::Noop,
        )
        .await?;
    }
    side.latency
        .push(ours::latency(daemon, sizes.latency_steps, Step::Noop).await?);
    side.throughput.push(
        ours::throughput(
            daemon,
            sizes.throughput_runs,
            sizes.throughput_steps,
            sizes.in_flight,
            Step::Noop,
        )
        .await?,
    );
    Ok(())
}

/// Exec steps of `true`: latency, then throughput.
async fn exec_phases(daemon: &Daemon, sizes: &Sizes, side: &mut Side) -> Result<()> {
    if sizes.warmup {
        ours::latency(daemon, 10, Step::Exec).await?;
    }
    side.exec_latency
        .push(ours::latency(daemon, sizes.exec_latency_steps, Step::Exec).await?);
    side.exec_throughput.push(
        ours::throughput(
            daemon,
            sizes.exec_throughput_runs,
            sizes.exec_throughput_steps,
            sizes.exec_in_flight,
            Step::Exec,
        )
        .await?,
    );
    Ok(())
}

/// The exec phases of another build (`--baseline`), in the same rounds as ours, after the same
/// noop phases (not shown), so that its exec steps find a store as large as ours do.
async fn baseline_round(binary: &Path, sizes: &Sizes, side: &mut Side) -> Result<()> {
    let mut daemon = Daemon::new(binary)?;
    daemon.start().await?;
    noop_phases(&daemon, sizes, &mut Side::default()).await?;
    exec_phases(&daemon, sizes, side).await?;
    daemon.kill9();
    Ok(())
}

async fn restate_round(install: &Install, sizes: &Sizes, side: &mut Side) -> Result<()> {
    side.idle.push(restate::idle(install).await?);
    let mut server = Restate::new(install)?;
    server.start().await?;
    server.start_service().await?;
    if sizes.warmup {
        restate::latency(&server, 20, Step::Noop).await?;
        restate::throughput(
            &server,
            128,
            sizes.throughput_steps,
            sizes.in_flight,
            Step::Noop,
        )
        .await?;
    }
    side.latency
        .push(restate::latency(&server, sizes.latency_steps, Step::Noop).await?);
    side.throughput.push(
        restate::throughput(
            &server,
            sizes.throughput_runs,
            sizes.throughput_steps,
            sizes.in_flight,
            Step::Noop,
        )
        .await?,
    );
    if sizes.warmup {
        restate::latency(&server, 10, Step::Exec).await?;
    }
    side.exec_latency
        .push(restate::latency(&server, sizes.exec_latency_steps, Step::Exec).await?);
    side.exec_throughput.push(
        restate::throughput(
            &server,
            sizes.exec_throughput_runs,
            sizes.exec_throughput_steps,
            sizes.exec_in_flight,
            Step::Exec,
        )
        .await?,
    );
    server.kill9();
    Ok(())
}

/// Runs a Restate workload; a failure is recorded (and printed), not fatal.
async fn attempt<T>(
    errors: &mut Vec<String>,
    what: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Option<T> {
    match work.await {
        Ok(value) => Some(value),
        Err(error) => {
            let message = format!("restate {what}: {error:#}");
            progress(&message);
            errors.push(message);
            None
        }
    }
}

pub async fn run(options: Options) -> Result<()> {
    let sizes = &options.sizes;
    let binary = ours::binary()?;
    let load_before = load_average();
    let mut errors = Vec::new();
    let install = if options.ours_only {
        None
    } else {
        attempt(&mut errors, "install", async { Install::prepare() }).await
    };
    let scratch = tempfile::Builder::new()
        .prefix("runbook-bench-fsync-")
        .tempdir()?;
    progress("floors: fsync (append, overwrite), spawn");
    let before = Floors::measure(scratch.path(), sizes)?;
    let (mut ours_side, mut restate_side) = (Side::default(), Side::default());
    let mut baseline_side = Side::default();

    for round in 0..sizes.rounds {
        let ours_first = round % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == ours_first {
                progress(&format!("round {}/{}: runbook", round + 1, sizes.rounds));
                ours_round(&binary, sizes, &mut ours_side).await?;
                if let Some(baseline) = &options.baseline {
                    progress(&format!(
                        "round {}/{}: runbook baseline {}",
                        round + 1,
                        sizes.rounds,
                        baseline.display()
                    ));
                    baseline_round(baseline, sizes, &mut baseline_side).await?;
                }
            } else if let Some(install) = &install {
                progress(&format!("round {}/{}: restate", round + 1, sizes.rounds));
                attempt(
                    &mut errors,
                    "round",
                    restate_round(install, sizes, &mut restate_side),
                )
                .await;
            }
        }
    }

    let first_timers = sizes.timers.first().copied().unwrap_or(0);
    let width = sizes.create_width;
    let limits = ours::Limits {
        rss_mb: sizes.rss_limit_mb,
        min_free_disk_mb: 3_000.0,
    };
    if first_timers > 0 {
        let pace = sizes.timer_rate;
        progress(&format!(
            "timers: {first_timers} × {} ms, runbook",
            sizes.timer_wait_ms
        ));
        ours_side.timers.push(
            ours::timers(
                &binary,
                first_timers,
                sizes.timer_wait_ms,
                width,
                limits,
                pace,
            )
            .await?,
        );
        if let Some(install) = &install {
            progress(&format!(
                "timers: {first_timers} × {} ms, restate",
                sizes.timer_wait_ms
            ));
            if let Some(timers) = attempt(
                &mut errors,
                "timers",
                restate::timers(install, first_timers, sizes.timer_wait_ms, width, pace),
            )
            .await
            {
                restate_side.timers.push(timers);
            }
        }
    }
    // The creation rate seen so far (for a wait that outlasts creating the next phase's runs).
    let rate = |side: &Side| {
        side.timers
            .last()
            .map_or(500.0, |timers| timers.create_per_s)
    };
    if sizes.recovery_runs > 0 {
        let wait = covering_wait(
            sizes.timer_wait_ms,
            sizes.recovery_runs,
            rate(&ours_side),
            1.5,
        );
        progress(&format!(
            "recovery: {} runs waiting {wait} ms, runbook",
            sizes.recovery_runs
        ));
        ours_side.recovery =
            Some(ours::recovery(&binary, sizes.recovery_runs, wait, width, limits).await?);
        if let Some(install) = &install {
            let wait = covering_wait(
                sizes.timer_wait_ms,
                sizes.recovery_runs,
                rate(&restate_side),
                1.5,
            );
            progress(&format!(
                "recovery: {} runs waiting {wait} ms, restate",
                sizes.recovery_runs
            ));
            restate_side.recovery = attempt(
                &mut errors,
                "recovery",
                restate::recovery(install, sizes.recovery_runs, wait, width),
            )
            .await;
        }
    }
    for runs in sizes.timers.iter().skip(1).copied() {
        let pace = sizes.timer_rate;
        let wait = match pace {
            Some(per_s) => covering_wait(sizes.timer_wait_ms, runs, per_s, 1.25),
            None => covering_wait(sizes.timer_wait_ms, runs, rate(&ours_side), 1.5),
        };
        progress(&format!("timers: {runs} × {wait} ms, runbook"));
        match ours::timers(&binary, runs, wait, width, limits, pace).await {
            Ok(timers) => ours_side.timers.push(timers),
            Err(error) => {
                // Keep what the smaller sizes measured; say where it stopped.
                let message = format!("runbook timers {runs}: {error:#}");
                progress(&message);
                errors.push(message);
                break;
            }
        }
    }
    let after = Floors::measure(scratch.path(), sizes)?;
    let mut rows = rows(&ours_side, &restate_side, &before, &after, sizes);
    if options.baseline.is_some() {
        rows.extend(baseline_rows(&ours_side, &baseline_side, sizes));
    }
    let rendered = table(&rows);
    let record = json!({
        "date": date_utc(),
        "machine": machine(),
        "load_average_1m": {"before": load_before, "after": load_average()},
        "command": std::env::args().collect::<Vec<_>>(),
        "configuration": configuration(&install, scratch.path()),
        "floors_ms": {"before": before.json(), "after": after.json()},
        "runbook": ours_side.json(),
        "restate": restate_side.json(),
        "baseline": options.baseline.as_ref().map(|binary| json!({
            "binary": binary.display().to_string(),
            "runbook": baseline_side.json(),
        })),
        "table": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "errors": errors,
    });
    let out = match &options.out {
        Some(path) => path.clone(),
        None => default_out(options.smoke)?,
    };
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("writing {}", out.display()))?;

    println!("{rendered}");
    for error in &errors {
        println!("failed: {error}");
    }
    println!("raw numbers: {}", out.display());
    if options.smoke {
        let exec = ours_side.exec_latency().unwrap_or_default();
        if exec.steps != sizes.exec_latency_steps {
            bail!("bench --smoke: no exec latency measured");
        }
        let latency = ours_side.latency().unwrap_or_default();
        let throughput = ours_side.throughput().unwrap_or_default();
        let timers = ours_side.timers.first().cloned().unwrap_or_default();
        let recovery = ours_side.recovery.clone().unwrap_or_default();
        if timers.lateness.len() != first_timers || !errors.is_empty() {
            bail!(
                "bench --smoke: incomplete ({} of {first_timers} timers read back)",
                timers.lateness.len()
            );
        }
        println!(
            "bench --smoke: ok: {} steps at p50 {:.2} ms, {} exec steps of `true` at p50 {:.2} ms \
             (spawn floor {:.2} ms), {:.0} steps/s, {} timers p99 {:.1} ms late, \
             recovery of {} runs ready in {:.0} ms",
            latency.steps,
            latency.per_step.pct(50.0),
            exec.steps,
            exec.per_step.pct(50.0),
            before.spawn.pct(50.0),
            throughput.steps_per_s,
            timers.runs,
            timers.lateness.pct(99.0),
            recovery.runs,
            recovery.ready_ms
        );
    }
    Ok(())
}

fn date_utc() -> String {
    let now: chrono::DateTime<chrono::Utc> = SystemTime::now().into();
    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn default_out(smoke: bool) -> Result<PathBuf> {
    let home = PathBuf::from(std::env::var("HOME").context("HOME is not set")?);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kind = if smoke { "smoke" } else { "bench" };
    Ok(home
        .join(".cache/runbook/bench")
        .join(format!("{kind}-{stamp}.json")))
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned());
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .next()
                .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0).round());
    json!({"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
           "model": model, "memory_mb": memory_mb,
           "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()})
}

/// The file system holding `path` (the longest mount point that contains it).
fn filesystem_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3 && path.starts_with(fields[1])).then(|| {
                (
                    fields[1].len(),
                    format!("{} on {} ({})", fields[2], fields[0], fields[1]),
                )
            })
        })
        .max_by_key(|(length, _)| *length)
        .map_or_else(|| "unknown".to_owned(), |(_, text)| text)
}

fn configuration(install: &Option<Install>, scratch: &Path) -> Value {
    let disk = filesystem_of(scratch);
    json!({
        "runbook": format!(
            "`runbook daemon` (release build) with its defaults on a fresh temporary data dir ({disk}); \
             API over its Unix socket. Every transition is one commit; the writer thread \
             group-commits (up to 512 commits per sync): one write of the batch to the store's \
             write-ahead log and fdatasync of it before any commit is acknowledged (sled, behind \
             the log, is flushed and fdatasync'ed at checkpoints); a noop step is one commit, the \
             next step starts in the next commit."),
        "restate": install.as_ref().map(|install| format!(
            "restate-server {} with its default configuration (single node, all roles; Bifrost's \
             replicated loglet on the local log-server, RocksDB WAL fsync on, i.e. \
             rocksdb-disable-wal-fsync = false; 24 partitions) on a fresh temporary base dir ({disk}); \
             only the bind addresses (127.0.0.1, free ports) and telemetry (off) set through the \
             environment. Handlers: TypeScript SDK {} on Node {} (Promise.withResolvers polyfill), \
             registered with POST /deployments; a step is ctx.run(() => {{}}), which resumes only \
             after the server acknowledged the journaled result.",
            install.server_version, install.sdk_version, install.node_version)),
        "client": "one bench process (tokio, one thread); one HTTP/1.1 keep-alive connection per worker; \
                   runbook: POST /v1/runs with the runbook text, then GET /v1/runs/{id} until it ends; \
                   Restate: POST /bench/steps answers when the invocation ends, /send + /attach for sleeps",
    })
}
