//! `bench-postgres`: the same workloads as `bench` on the embedded store, on the PostgreSQL
//! store (a real server of this machine, started by the harness in a temporary directory) and, with
//! `--restate`, on Restate (`bench`'s Restate side: its server and a Node service), side by side
//! in one run, and how long a standby takes to take over.
//!
//! ```text
//! cargo build --release -p runbook-cli -p runbook-tests
//! $CARGO_TARGET_DIR/release/bench-postgres [--rounds 3] [--runs 2000] [--failovers 3] [--restate] [--out FILE.json]
//! ```
//!
//! Per round and store: latency (1 run of 200 `noop` steps: per-step p50 and p99 between durable
//! completions) and throughput (`--runs` runs of 10 `noop` steps, 64 in flight). The table shows
//! each figure's median round. Failover: two daemons on one database with a 3 s lease; the active
//! one is `kill -9`ed; the time until the standby answers (`--failovers` times).

// The modules are shared with `bench`, which uses more of them.
#![allow(dead_code)]

#[path = "../bench/http.rs"]
mod http;
#[path = "../bench/ours.rs"]
mod ours;
#[path = "../bench/pool.rs"]
mod pool;
#[path = "../bench/restate.rs"]
mod restate;
#[path = "../bench/results.rs"]
mod results;
#[path = "../bench/sys.rs"]
mod sys;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use results::Step;
use runbook_tests::postgres::PgServer;
use serde_json::{json, Value};

const LATENCY_STEPS: usize = 200;
const STEPS_PER_RUN: usize = 10;
const IN_FLIGHT: usize = 64;
const LEASE_TTL_S: u64 = 3;

fn main() -> Result<()> {
    let mut rounds = 3usize;
    let mut runs = 2000usize;
    let mut failovers = 3usize;
    let mut out: Option<PathBuf> = None;
    let mut with_restate = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{flag} needs a number"))?
                .parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--rounds" => rounds = number("--rounds")?.max(1),
            "--runs" => runs = number("--runs")?.max(1),
            "--failovers" => failovers = number("--failovers")?,
            "--restate" => with_restate = true,
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a path")?)),
            other => bail!(
                "unknown argument {other:?}: [--rounds N] [--runs N] [--failovers N] [--out FILE]"
            ),
        }
    }
    // The databases are made before the runtime starts (the PostgreSQL client blocks).
    let mut pg = PgServer::start()?;
    let url_dir = tempfile::Builder::new()
        .prefix("runbook-bench-pg-")
        .tempdir()?;
    let mut url_files = Vec::new();
    for index in 0..rounds + failovers {
        let url_file = url_dir.path().join(format!("url-{index}"));
        std::fs::write(&url_file, pg.create_database()?)?;
        url_files.push(url_file.display().to_string());
    }
    let install = match with_restate {
        true => Some(restate::Install::prepare()?),
        false => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(rounds, runs, failovers, &url_files, install, out));
    pg.stop()?;
    result
}

/// One store's figures of one round.
struct Round {
    p50: f64,
    p99: f64,
    steps_per_s: f64,
}

async fn round(binary: &std::path::Path, postgres: Option<&str>, runs: usize) -> Result<Round> {
    let mut daemon = ours::Daemon::new(binary)?;
    if let Some(url_file) = postgres {
        daemon.extra_args = ["--store", "postgres", "--postgres-url-file", url_file]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
    }
    daemon.start().await?;
    ours::latency(&daemon, 20, Step::Noop).await?;
    let latency = ours::latency(&daemon, LATENCY_STEPS, Step::Noop).await?;
    let throughput = ours::throughput(&daemon, runs, STEPS_PER_RUN, IN_FLIGHT, Step::Noop).await?;
    daemon.kill9();
    Ok(Round {
        p50: latency.per_step.pct(0.5),
        p99: latency.per_step.pct(0.99),
        steps_per_s: throughput.steps_per_s,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn restate_round(install: &restate::Install, runs: usize) -> Result<Round> {
    let mut server = restate::Restate::new(install)?;
    server.start().await?;
    server.start_service().await?;
    restate::latency(&server, 20, Step::Noop).await?;
    let latency = restate::latency(&server, LATENCY_STEPS, Step::Noop).await?;
    let throughput =
        restate::throughput(&server, runs, STEPS_PER_RUN, IN_FLIGHT, Step::Noop).await?;
    server.kill9();
    Ok(Round {
        p50: latency.per_step.pct(0.5),
        p99: latency.per_step.pct(0.99),
        steps_per_s: throughput.steps_per_s,
    })
}

async fn run(
    rounds: usize,
    runs: usize,
    failovers: usize,
    url_files: &[String],
    install: Option<restate::Install>,
    out: Option<PathBuf>,
) -> Result<()> {
    let binary = ours::binary()?;
    let mut embedded = Vec::new();
    let mut postgres = Vec::new();
    let mut restates = Vec::new();
    for (index, url_file) in url_files.iter().take(rounds).enumerate() {
        // Alternate which store goes first.
        for store in if index % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if store {
                eprintln!("round {} on PostgreSQL", index + 1);
                postgres.push(round(&binary, Some(url_file), runs).await?);
            } else {
                eprintln!("round {} on the embedded store", index + 1);
                embedded.push(round(&binary, None, runs).await?);
            }
        }
        if let Some(install) = &install {
            eprintln!("round {} on Restate", index + 1);
            restates.push(restate_round(install, runs).await?);
        }
    }
    let mut takeovers = Vec::new();
    for index in 0..failovers {
        let url_file = &url_files[rounds + index];
        let ttl = format!("{LEASE_TTL_S}s");
        let args: Vec<String> = [
            "--store",
            "postgres",
            "--postgres-url-file",
            url_file,
            "--lease-ttl",
            &ttl,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let mut active = ours::Daemon::new(&binary)?;
        active.extra_args = args.clone();
        active.start().await?;
        ours::latency(&active, 20, Step::Noop).await?;
        let mut standby = ours::Daemon::new(&binary)?;
        standby.extra_args = args;
        let waiting = tokio::spawn(async move {
            let answered = standby.start().await;
            (standby, answered)
        });
        // The standby is up and waiting for the lease.
        tokio::time::sleep(Duration::from_secs(2)).await;
        active.kill9();
        let killed = Instant::now();
        let (mut standby, answered) = waiting.await?;
        answered?;
        let seconds = killed.elapsed().as_secs_f64();
        eprintln!("failover {}: {seconds:.2} s", index + 1);
        takeovers.push(seconds);
        standby.kill9();
    }
    let figure = |rounds: &[Round], pick: fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(pick).collect();
        median(&mut values)
    };
    let row = |name: &str, pick: fn(&Round) -> f64, digits: usize| {
        let (ours, pg) = (figure(&embedded, pick), figure(&postgres, pick));
        let (theirs, ratio) = match restates.is_empty() {
            true => ("—".to_owned(), "—".to_owned()),
            false => {
                let theirs = figure(&restates, pick);
                (format!("{theirs:.digits$}"), format!("{:.2}", pg / theirs))
            }
        };
        println!(
            "| {name:<64} | {ours:>9.digits$} | {pg:>10.digits$} | {theirs:>8} | {:>8.2} | {ratio:>12} |",
            pg / ours
        );
    };
    println!(
        "| {:<64} | {:>9} | {:>10} | {:>8} | {:>8} | {:>12} |",
        "metric (median of rounds)",
        "embedded",
        "PostgreSQL",
        "Restate",
        "PG ÷ emb",
        "PG ÷ Restate"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(66),
        "-".repeat(11),
        "-".repeat(12),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(14)
    );
    row(
        &format!("latency: 1 run × {LATENCY_STEPS} noop steps, per step p50 (ms)"),
        |r| r.p50,
        3,
    );
    row("  per step p99 (ms)", |r| r.p99, 3);
    row(
        &format!(
            "throughput: {runs} runs × {STEPS_PER_RUN} noop steps, {IN_FLIGHT} in flight (steps/s)"
        ),
        |r| r.steps_per_s,
        0,
    );
    if !takeovers.is_empty() {
        println!(
            "failover with a {LEASE_TTL_S} s lease: the standby answered {} s after kill -9 of the active daemon",
            takeovers.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ")
        );
    }
    let raw: Value = json!({
        "rounds": rounds,
        "runs": runs,
        "embedded": embedded.iter().map(|r| json!({"p50_ms": r.p50, "p99_ms": r.p99, "steps_per_s": r.steps_per_s})).collect::<Vec<_>>(),
        "restate": restates.iter().map(|r| json!({"p50_ms": r.p50, "p99_ms": r.p99, "steps_per_s": r.steps_per_s})).collect::<Vec<_>>(),
        "postgres": postgres.iter().map(|r| json!({"p50_ms": r.p50, "p99_ms": r.p99, "steps_per_s": r.steps_per_s})).collect::<Vec<_>>(),
        "failover_seconds": takeovers,
        "lease_ttl_s": LEASE_TTL_S,
    });
    if let Some(out) = out {
        std::fs::write(&out, serde_json::to_string_pretty(&raw)?)?;
        eprintln!("raw figures: {}", out.display());
    }
    Ok(())
}
