//! `bench`: `runbook` against Restate, side by side on this machine, at equal durability.
//!
//! ```text
//! cargo build --release -p runbook-cli -p runbook-tests
//! $CARGO_TARGET_DIR/release/bench [--rounds 3] [--timers 10000,100000,1000000] [--timer-rate 2000]
//!                                 [--recovery 100000] [--ours-only] [--out FILE.json]
//! cargo run -p runbook-tests --bin bench -- --smoke     # our side only, tiny sizes (.ci/run)
//! ```
//!
//! Both systems run on temporary dirs with loopback ports, one at a time, the same workloads in
//! alternation (idle, latency and throughput are repeated `--rounds` times, the side that goes
//! first alternating; the table shows the median round). A "step" is a durable no-op: our
//! `noop` step, Restate's `ctx.run` of an empty closure; on both, a step's completion is on disk
//! (fsynced) before the next step starts. Timer runs are started at `--timer-rate` a second
//! (open loop, the same on both sides) and each waits 5 s (longer for the larger phases, so that
//! all are pending at once); the first size runs on both systems, the others on `runbook` alone.
//! The table goes to stdout, progress to stderr, the raw numbers to a JSON file (default
//! `~/.cache/runbook/bench/`). What each figure measures: `tests/src/bench/*.rs`.

#[path = "../bench/http.rs"]
mod http;
#[path = "../bench/ours.rs"]
mod ours;
#[path = "../bench/plan.rs"]
mod plan;
#[path = "../bench/pool.rs"]
mod pool;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/restate.rs"]
mod restate;
#[path = "../bench/results.rs"]
mod results;
#[path = "../bench/sys.rs"]
mod sys;
#[path = "../bench/table.rs"]
mod table;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use plan::{Options, Sizes};

fn main() -> Result<()> {
    let options = parse_args()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(plan::run(options))
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        sizes: Sizes::full(),
        smoke: false,
        ours_only: false,
        out: None,
        baseline: None,
    };
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
            "--smoke" => {
                options.smoke = true;
                options.ours_only = true;
                options.sizes = Sizes::smoke();
            }
            "--ours-only" => options.ours_only = true,
            "--rss-limit-mb" => {
                options.sizes.rss_limit_mb = number(args.next(), "--rss-limit-mb")? as f64
            }
            "--timer-rate" => {
                options.sizes.timer_rate = Some(number(args.next(), "--timer-rate")? as f64)
            }
            "--rounds" => options.sizes.rounds = number(args.next(), "--rounds")?.max(1),
            "--recovery" => options.sizes.recovery_runs = number(args.next(), "--recovery")?,
            "--timers" => {
                let list = args.next().context("--timers needs a list: 10000,100000")?;
                options.sizes.timers = list
                    .split(',')
                    .map(|item| number(Some(item.to_owned()), "--timers"))
                    .collect::<Result<_>>()?;
            }
            "--baseline" => {
                options.baseline = Some(PathBuf::from(
                    args.next().context("--baseline needs a runbook binary")?,
                ))
            }
            "--out" => {
                options.out = Some(PathBuf::from(args.next().context("--out needs a path")?))
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--smoke] [--ours-only] [--rounds N] [--timers N,N,..] \
                     [--timer-rate N] [--recovery N] [--rss-limit-mb MB] [--baseline RUNBOOK_BIN] \
                     [--out FILE.json]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(options)
}
