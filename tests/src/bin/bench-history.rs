//! `bench-history`: what a long history costs. Fills a store with N finished runs (each a
//! 10-step `noop` runbook, finished 100 days ago) written through the engine's own store and
//! commit code, exactly as the daemon writes them, and moved to the archive as the daemon's
//! archiver does; then, on the real `runbook daemon`:
//!
//! - bytes on disk per finished run (the store after a checkpoint);
//! - `GET /v1/runs?limit=50` (`ps` of the newest 50) p99, over 100 requests;
//! - `GET /v1/runs?state=needs_attention` with 10 such runs among the N, p99;
//! - `GET /metrics` p99, and the daemon's RSS after those 300 requests;
//! - a `store gc` of the N expired runs (`--retain 90d`): its duration, the disk space it
//!   returned, and the p99 of a concurrent workload's step commits (one run of 20 `noop` steps
//!   after another, steps timed from the journal) while it runs.
//!
//!
//! And what a long run costs per step (on a fresh daemon): the time between consecutive
//! durable step completions (from the journal) in runs of 10, `--long`/10 and `--long` `noop` steps,
//! and in a serial `for_each` over `--items` items of one `noop` step each.
//!
//! ```text
//! cargo build --release -p runbook-cli -p runbook-tests
//! $CARGO_TARGET_DIR/release/bench-history [--runs 1000000] [--long 10000] [--items 100000] [--out FILE.json]
//! ```

// The modules are shared with `bench`, which uses more of them.
#![allow(dead_code)]

#[path = "../bench/http.rs"]
mod http;
#[path = "../bench/ours.rs"]
mod ours;
#[path = "../bench/pool.rs"]
mod pool;
#[path = "../bench/results.rs"]
mod results;
#[path = "../bench/sys.rs"]
mod sys;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use results::Step;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use runbook_engine::definition;
use runbook_engine::machine::{self, Actor, Effect, Input};
use runbook_engine::store::{Commit, SledStore, Store};
use sys::Samples;

/// Runs written per sync while filling the store.
const FILL_BATCH: usize = 500;

fn main() -> Result<()> {
    let mut runs = 1_000_000usize;
    let mut long = 10_000usize;
    let mut items = 100_000usize;
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>, flag: &str| -> Result<usize> {
        value
            .with_context(|| format!("{flag} needs a number"))?
            .replace('_', "")
            .parse()
            .with_context(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = number(args.next(), "--runs")?,
            "--long" => long = number(args.next(), "--long")?,
            "--items" => items = number(args.next(), "--items")?,
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a path")?)),
            "-h" | "--help" => {
                println!(
                    "usage: bench-history [--runs N] [--long STEPS] [--items N] [--out FILE.json]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = runtime.block_on(run(runs))?;
    report["long_runs"] = runtime.block_on(long_runs(long, items))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(out) = out {
        std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("raw figures: {}", out.display());
    }
    Ok(())
}

fn steps_runbook() -> Arc<definition::Definition> {
    Arc::new(
        definition::parse(
            "history.toml",
            &ours::steps_runbook(10, Step::Noop).replace("bench-steps", "history"),
        )
        .expect("the history runbook parses"),
    )
}

/// Writes `runs` finished runs into the store in `dir`, the oldest finished 100 days ago.
fn fill(dir: &Path, runs: usize) -> Result<()> {
    let store = SledStore::open(dir)?;
    let definition = steps_runbook();
    let start = runbook_engine::clock::Clock::now(&runbook_engine::clock::SystemClock)
        - chrono::Duration::days(100);
    let started = Instant::now();
    let mut pending = 0;
    for index in 0..runs {
        let now: DateTime<Utc> = start + chrono::Duration::milliseconds(index as i64);
        let nanos = now.timestamp_subsec_nanos();
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(now.timestamp()).unwrap_or(0),
            nanos,
        ));
        let (mut state, mut decision) = machine::create(
            id,
            definition.clone(),
            Map::new(),
            Vec::new(),
            Actor::uid(0),
            None,
            now,
        );
        store.stage(&Commit::new(
            0,
            &decision.events,
            &mut state,
            decision.settled(),
        )?)?;
        while decision.effects.contains(&Effect::Continue) {
            let (mut next, next_decision) = machine::decide(&state, Input::Continue, now)
                .map_err(|rejection| anyhow::anyhow!("{rejection}"))?;
            store.stage(&Commit::new(
                state.last_seq,
                &next_decision.events,
                &mut next,
                next_decision.settled(),
            )?)?;
            state = next;
            decision = next_decision;
        }
        if !state.status.is_terminal() {
            bail!("run {index} did not finish: {:?}", state.status);
        }
        pending += 1;
        if pending == FILL_BATCH {
            store.sync()?;
            pending = 0;
            archive(&store)?;
        }
        if index > 0 && index % 100_000 == 0 {
            eprintln!("  {index} runs written ({:.0?})", started.elapsed());
        }
    }
    store.sync()?;
    archive(&store)?;
    store.checkpoint()?;
    eprintln!("  {runs} runs written in {:.1?}", started.elapsed());
    Ok(())
}

/// Moves the finished runs to the archive as the daemon's archiver does (its batch size).
fn archive(store: &SledStore) -> Result<()> {
    let mut after = None;
    loop {
        let (runs, cursor) = store.archive_prepare(after, 8)?;
        let Some(cursor) = cursor else {
            return Ok(());
        };
        after = Some(cursor);
        store.archive_commit(&runs)?;
        store.sync()?;
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            // Allocated blocks, not the apparent size (sparse and preallocated files).
            Ok(_) => entry.metadata().map_or(0, |meta| {
                std::os::unix::fs::MetadataExt::blocks(&meta) * 512
            }),
            Err(_) => 0,
        })
        .sum()
}

/// `count` requests of `path`, each timed; ms.
async fn timed(daemon: &ours::Daemon, path: &str, count: usize) -> Result<Samples> {
    let mut conn = daemon.endpoint.connect().await?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let response = conn.get(path).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if response.status != 200 {
            bail!("GET {path}: HTTP {}", response.status);
        }
    }
    Ok(Samples::new(times))
}

async fn run(runs: usize) -> Result<Value> {
    let binary = ours::binary()?;
    let mut daemon = ours::Daemon::new(&binary)?;
    eprintln!("== filling a store with {runs} finished runs");
    let store_dir = daemon.data_dir().join("store");
    fill(&store_dir, runs)?;
    let bytes = dir_bytes(&store_dir);
    let per_run = bytes as f64 / runs.max(1) as f64;
    eprintln!("  store: {bytes} bytes, {per_run:.0} bytes per finished run");

    // Listing and metrics, nothing collected meanwhile.
    daemon.extra_args = vec!["--retain".to_owned(), "0".to_owned()];
    let start_ms = daemon.start().await?;
    let memory_at_start = daemon.memory()?;
    eprintln!(
        "== daemon up in {start_ms:.0} ms, RSS {:.1} MB; 10 runs that need attention",
        memory_at_start.rss_mb
    );
    std::fs::write(
        daemon.data_dir().join("runbooks").join("stuck.toml"),
        "name = \"stuck\"\n[[steps]]\nid = \"fail\"\naction = \"exec\"\nwith = { command = \"exit 3\" }\n",
    )?;
    let mut conn = daemon.endpoint.connect().await?;
    for _ in 0..10 {
        conn.post("/v1/runs", &json!({"runbook": "stuck", "params": {}}))
            .await?
            .ok_json("POST /v1/runs")?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = conn
            .get("/v1/runs?state=needs_attention")
            .await?
            .ok_json("GET /v1/runs")?;
        if listed["runs"].as_array().map_or(0, Vec::len) == 10 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the 10 failing runs did not all reach needs_attention: {listed}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newest = timed(&daemon, "/v1/runs?all=true&limit=50", 100).await?;
    let attention = timed(&daemon, "/v1/runs?state=needs_attention", 100).await?;
    let metrics = timed(&daemon, "/metrics", 100).await?;
    let memory = daemon.memory()?;
    eprintln!(
        "  ps newest 50 p99 {:.2} ms; ps --state needs_attention p99 {:.2} ms; /metrics p99 {:.2} ms; RSS {:.1} MB",
        newest.pct(99.0),
        attention.pct(99.0),
        metrics.pct(99.0),
        memory.rss_mb
    );
    daemon.kill9();

    // Retention, with a workload committing meanwhile.
    daemon.extra_args = vec!["--retain".to_owned(), "90d".to_owned()];
    daemon.start().await?;
    let before = dir_bytes(&store_dir);
    eprintln!("== store gc of {runs} expired runs, a workload running");
    let gc = {
        let endpoint = daemon.endpoint.clone();
        tokio::spawn(async move {
            let mut conn = endpoint.connect().await?;
            let started = Instant::now();
            let report = conn
                .post("/v1/store/gc", &json!({}))
                .await?
                .ok_json("POST /v1/store/gc")?;
            Ok::<_, anyhow::Error>((report, started.elapsed().as_secs_f64()))
        })
    };
    let mut steps = Vec::new();
    while !gc.is_finished() {
        let latency = ours::latency(&daemon, 20, Step::Noop).await?;
        steps.extend_from_slice(latency.per_step.values());
    }
    let (report, gc_seconds) = gc.await??;
    let collected = report["count"].as_u64().unwrap_or(0);
    // The space sled freed is reused by later writes; a checkpoint (at shutdown) writes it out.
    daemon.kill9();
    daemon.extra_args = vec!["--retain".to_owned(), "0".to_owned()];
    daemon.start().await?;
    let after = dir_bytes(&store_dir);
    let during = Samples::new(steps);
    eprintln!(
        "  collected {collected} runs in {gc_seconds:.1} s; store {before} → {after} bytes; \
         workload step p50 {:.3} ms p99 {:.3} ms ({} steps)",
        during.pct(50.0),
        during.pct(99.0),
        during.len()
    );
    daemon.kill9();
    Ok(json!({
        "runs": runs,
        "store_bytes": bytes,
        "bytes_per_finished_run": per_run,
        "daemon_start_ms": start_ms,
        "ps_newest_50_ms": newest.summary(),
        "ps_needs_attention_ms": attention.summary(),
        "metrics_ms": metrics.summary(),
        "rss_mb_at_start": memory_at_start.rss_mb,
        "rss_mb_after_listings": memory.rss_mb,
        "gc": {
            "collected": collected,
            "seconds": gc_seconds,
            "store_bytes_before": before,
            "store_bytes_after": after,
            "workload_step_ms": during.summary(),
        },
    }))
}

/// Per-step cost against the length of the run.
async fn long_runs(long: usize, items: usize) -> Result<Value> {
    let binary = ours::binary()?;
    let mut daemon = ours::Daemon::new(&binary)?;
    daemon.start().await?;
    let mut rows = Vec::new();
    let mut lengths = vec![10, (long / 10).max(10), long];
    lengths.dedup();
    for steps in lengths {
        let latency = ours::latency(&daemon, steps, Step::Noop).await?;
        eprintln!(
            "== a run of {steps} noop steps: per step p50 {:.3} ms p99 {:.3} ms",
            latency.per_step.pct(50.0),
            latency.per_step.pct(99.0)
        );
        rows.push(json!({"steps": steps, "per_step_ms": latency.per_step.summary()}));
    }
    // Steps with outputs and templates: each names the step before it and carries 256 B.
    let mut chained = Vec::new();
    let mut lengths = vec![(long / 10).max(10), long];
    lengths.dedup();
    for steps in lengths {
        let latency = ours::latency(&daemon, steps, Step::Chained).await?;
        eprintln!(
            "== a run of {steps} noop steps, each naming the step before and carrying 256 B: per step p50 {:.3} ms p99 {:.3} ms",
            latency.per_step.pct(50.0),
            latency.per_step.pct(99.0)
        );
        chained.push(json!({"steps": steps, "per_step_ms": latency.per_step.summary()}));
    }
    // A serial for_each over `items` items of one noop step each.
    let text = format!(
        "name = \"bench-items\"\n[[steps]]\nid = \"each\"\nfor_each = \"{{{{ range({items}) | list }}}}\"\nserial = 1\n  [[steps.steps]]\n  id = \"item\"\n  action = \"noop\"\n"
    );
    let mut conn = daemon.endpoint.connect().await?;
    let run = conn
        .post(
            "/v1/runs",
            &json!({"source": {"file": "items.toml", "text": text}, "params": {}}),
        )
        .await?
        .ok_json("POST /v1/runs")?;
    let id = run["id"].as_str().context("no run id")?.to_owned();
    let started = Instant::now();
    // Polled through its listing line: a view of the run (every iteration's step) would cost
    // the daemon O(items) per poll, and take the run's lock.
    loop {
        let listed = conn
            .get("/v1/runs?all=true&runbook=bench-items&limit=1")
            .await?
            .ok_json("GET /v1/runs")?;
        let line = &listed["runs"][0];
        if line["id"] != id.as_str() {
            bail!("the listing does not show the for_each run first: {listed}");
        }
        match line["state"].as_str() {
            Some("succeeded") => break,
            Some("running" | "waiting") => {}
            other => bail!("the for_each run ended {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events = conn
        .get(&format!("/v1/runs/{id}/events"))
        .await?
        .ok_json("GET /v1/runs/{id}/events")?;
    let done: Vec<f64> = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["kind"] == "step_succeeded")
        .filter_map(|event| sys::field_ms(&event["at"]))
        .collect();
    let deltas: Vec<f64> = done.windows(2).map(|pair| pair[1] - pair[0]).collect();
    let tenth = deltas.len() / 10;
    let first = Samples::new(deltas[..tenth].to_vec());
    let last = Samples::new(deltas[deltas.len() - tenth..].to_vec());
    eprintln!(
        "== a for_each over {items} items: {elapsed:.1} s; per item p50 {:.3} ms in the first tenth, {:.3} ms in the last",
        first.pct(50.0),
        last.pct(50.0)
    );
    daemon.kill9();
    Ok(json!({
        "runs": rows,
        "chained_runs": chained,
        "for_each": {
            "items": items,
            "seconds": elapsed,
            "first_tenth_per_item_ms": first.summary(),
            "last_tenth_per_item_ms": last.summary(),
        },
    }))
}
