//! What the table shows: the median round of the repeated workloads for each system, every timer
//! phase, recovery, and the targets `runbook` is held to.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::plan::Sizes;
use super::report::Row;
use super::results::{median_by, Idle, Latency, Recovery, Throughput, Timers};
use super::sys::{fsync_floor, overwrite_floor, spawn_floor, Samples};

/// Everything measured on one system.
#[derive(Default)]
pub struct Side {
    pub idle: Vec<Idle>,
    pub latency: Vec<Latency>,
    pub throughput: Vec<Throughput>,
    pub exec_latency: Vec<Latency>,
    pub exec_throughput: Vec<Throughput>,
    pub timers: Vec<Timers>,
    pub recovery: Option<Recovery>,
}

impl Side {
    pub fn json(&self) -> Value {
        json!({"idle": self.idle.iter().map(Idle::json).collect::<Vec<_>>(),
               "latency": self.latency.iter().map(Latency::json).collect::<Vec<_>>(),
               "throughput": self.throughput.iter().map(Throughput::json).collect::<Vec<_>>(),
               "exec_latency": self.exec_latency.iter().map(Latency::json).collect::<Vec<_>>(),
               "exec_throughput": self.exec_throughput.iter().map(Throughput::json).collect::<Vec<_>>(),
               "timers": self.timers.iter().map(Timers::json).collect::<Vec<_>>(),
               "recovery": self.recovery.as_ref().map(Recovery::json)})
    }
    /// The median round.
    pub fn idle(&self) -> Option<Idle> {
        median_by(&self.idle, |idle| idle.rss_mb)
    }
    pub fn latency(&self) -> Option<Latency> {
        median_by(&self.latency, |latency| latency.per_step.pct(50.0))
    }
    pub fn throughput(&self) -> Option<Throughput> {
        median_by(&self.throughput, |throughput| throughput.steps_per_s)
    }
    pub fn exec_latency(&self) -> Option<Latency> {
        median_by(&self.exec_latency, |latency| latency.per_step.pct(50.0))
    }
    pub fn exec_throughput(&self) -> Option<Throughput> {
        median_by(&self.exec_throughput, |throughput| throughput.steps_per_s)
    }
}

/// The floors under a step on this machine, measured before and after the long phases.
pub struct Floors {
    /// Append 4 KiB + fdatasync.
    pub append: Samples,
    /// Overwrite 4 KiB of preallocated, synced blocks + fdatasync: what the log does.
    pub overwrite: Samples,
    /// Spawn `true` and wait for it.
    pub spawn: Samples,
}

impl Floors {
    pub fn measure(dir: &Path, sizes: &Sizes) -> Result<Floors> {
        Ok(Floors {
            append: fsync_floor(dir, sizes.fsync_iterations)?,
            overwrite: overwrite_floor(dir, sizes.fsync_iterations)?,
            spawn: spawn_floor(sizes.spawn_iterations)?,
        })
    }

    pub fn json(&self) -> Value {
        json!({"append_fdatasync": self.append.summary(),
               "overwrite_fdatasync": self.overwrite.summary(),
               "spawn_true": self.spawn.summary()})
    }
}

/// Which of the floors a row shows.
type Pick = fn(&Floors) -> &Samples;

/// The table: the median round of the repeated workloads, every timer phase, and the targets.
pub fn rows(
    ours: &Side,
    restate: &Side,
    before: &Floors,
    after: &Floors,
    sizes: &Sizes,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let floor_rows: [(&str, Pick); 3] = [
        ("fsync floor: append 4 KiB + fdatasync", |f| &f.append),
        (
            "fsync floor: overwrite 4 KiB of synced blocks + fdatasync (as the log)",
            |f| &f.overwrite,
        ),
        ("spawn floor: spawn `true` and wait for it", |f| &f.spawn),
    ];
    for (what, samples) in floor_rows {
        for (when, floors) in [("before", before), ("after", after)] {
            let values = samples(floors);
            rows.push(Row::new(
                format!("{what}, {when} the long phases: p50 (ms)"),
                Some(values.pct(50.0)),
                None,
                3,
            ));
            rows.push(Row::new("  p99 (ms)", Some(values.pct(99.0)), None, 3));
        }
    }
    // A step is compared with the floors of both measurements together.
    let both = |samples: Pick| {
        Samples::new([samples(before).values(), samples(after).values()].concat()).pct(50.0)
    };
    let (overwrite_p50, spawn_p50) = (both(|f| &f.overwrite), both(|f| &f.spawn));
    let (l_ours, l_restate) = (ours.latency(), restate.latency());
    let pct = |latency: &Option<Latency>, q: f64| latency.as_ref().map(|l| l.per_step.pct(q));
    let steps = sizes.latency_steps;
    let mut p50 = Row::new(
        format!("latency: 1 run × {steps} noop steps, per step p50 (ms)"),
        pct(&l_ours, 50.0),
        pct(&l_restate, 50.0),
        3,
    );
    if let (Some(ours_p50), Some(restate_p50)) = (p50.ours, p50.restate) {
        p50 = p50.target("≤ ⅓ of Restate", ours_p50 <= restate_p50 / 3.0);
    }
    rows.push(p50);
    rows.push(Row::new(
        "  per step p99 (ms)",
        pct(&l_ours, 99.0),
        pct(&l_restate, 99.0),
        3,
    ));
    rows.push(Row::new(
        "  whole run ÷ steps (ms)",
        l_ours.as_ref().map(|l| l.whole_run_ms_per_step),
        l_restate.as_ref().map(|l| l.whole_run_ms_per_step),
        3,
    ));
    let multiple = pct(&l_ours, 50.0).map(|p| p / overwrite_p50);
    rows.push(
        Row::new("  per step p50 ÷ overwrite floor p50", multiple, None, 2)
            .target("≤ 3", multiple.is_some_and(|m| m <= 3.0)),
    );
    let (e_ours, e_restate) = (ours.exec_latency(), restate.exec_latency());
    let steps = sizes.exec_latency_steps;
    let mut exec_p50 = Row::new(
        format!("exec latency: 1 run × {steps} steps running `true`, per step p50 (ms)"),
        pct(&e_ours, 50.0),
        pct(&e_restate, 50.0),
        3,
    );
    if let Some(ours_p50) = exec_p50.ours {
        let faster = exec_p50
            .restate
            .is_none_or(|restate_p50| ours_p50 < restate_p50);
        exec_p50 = exec_p50.target("< 2 ms and < Restate", ours_p50 < 2.0 && faster);
    }
    rows.push(exec_p50);
    rows.push(Row::new(
        "  per step p99 (ms)",
        pct(&e_ours, 99.0),
        pct(&e_restate, 99.0),
        3,
    ));
    rows.push(Row::new(
        "  whole run ÷ steps (ms)",
        e_ours.as_ref().map(|l| l.whole_run_ms_per_step),
        e_restate.as_ref().map(|l| l.whole_run_ms_per_step),
        3,
    ));
    rows.push(Row::new(
        "  per step p50 − spawn floor p50 (ms)",
        pct(&e_ours, 50.0).map(|p| p - spawn_p50),
        pct(&e_restate, 50.0).map(|p| p - spawn_p50),
        3,
    ));
    let (x_ours, x_restate) = (ours.exec_throughput(), restate.exec_throughput());
    rows.push(Row::new(
        format!(
            "exec throughput: {} runs × {} steps running `true`, {} in flight (steps/s)",
            sizes.exec_throughput_runs, sizes.exec_throughput_steps, sizes.exec_in_flight
        ),
        x_ours.as_ref().map(|t| t.steps_per_s),
        x_restate.as_ref().map(|t| t.steps_per_s),
        0,
    ));
    let (t_ours, t_restate) = (ours.throughput(), restate.throughput());
    let mut throughput = Row::new(
        format!(
            "throughput: {} runs × {} steps, {} in flight (steps/s)",
            sizes.throughput_runs, sizes.throughput_steps, sizes.in_flight
        ),
        t_ours.as_ref().map(|t| t.steps_per_s),
        t_restate.as_ref().map(|t| t.steps_per_s),
        0,
    );
    if let Some(ratio) = throughput.ratio() {
        throughput = throughput.target("≥ 3× Restate", ratio >= 3.0);
    }
    rows.push(throughput);
    for (index, timers) in ours.timers.iter().enumerate() {
        let other = restate
            .timers
            .get(index)
            .filter(|other| other.runs == timers.runs);
        let n = timers.runs;
        let wait = timers.wait_ms as f64 / 1000.0;
        let started = match timers.paced_per_s {
            Some(per_s) => format!("started at {per_s:.0}/s"),
            None => "started at once".to_owned(),
        };
        rows.push(Row::new(
            format!("timers: {n} runs {started}, each waits {wait:.0} s: start rate (runs/s)"),
            Some(timers.create_per_s),
            other.map(|o| o.create_per_s),
            0,
        ));
        let million = n >= 1_000_000;
        rows.push(Row::new(
            "  lateness p50 (ms)",
            Some(timers.lateness.pct(50.0)),
            other.map(|o| o.lateness.pct(50.0)),
            1,
        ));
        let p99 = timers.lateness.pct(99.0);
        let mut late99 = Row::new(
            "  lateness p99 (ms)",
            Some(p99),
            other.map(|o| o.lateness.pct(99.0)),
            1,
        );
        if million {
            late99 = late99.target("< 50 ms at 1,000,000", p99 < 50.0);
        }
        rows.push(late99);
        if let Some(engine) = &timers.engine_lateness {
            rows.push(Row::new(
                "  runbook's own late_by_ms, p50",
                Some(engine.pct(50.0)),
                None,
                1,
            ));
            rows.push(Row::new(
                "  runbook's own late_by_ms, p99",
                Some(engine.pct(99.0)),
                None,
                1,
            ));
        }
        rows.push(Row::new(
            "  peak pending timers",
            Some(timers.peak_pending as f64),
            other.map(|o| o.peak_pending as f64),
            0,
        ));
        let mut rss = Row::new(
            "  peak RSS of the server (MB)",
            Some(timers.peak_rss_mb),
            other.map(|o| o.peak_rss_mb),
            1,
        );
        if million {
            rss = rss.target("< 300 MB at 1,000,000", timers.peak_rss_mb < 300.0);
        }
        rows.push(rss);
    }
    let (i_ours, i_restate) = (ours.idle(), restate.idle());
    let mut idle = Row::new(
        "idle: RSS after start (MB)",
        i_ours.as_ref().map(|i| i.rss_mb),
        i_restate.as_ref().map(|i| i.rss_mb),
        1,
    );
    if let Some(ratio) = idle.ratio() {
        idle = idle.target("≤ 1/10 of Restate", ratio <= 0.1);
    }
    rows.push(idle);
    rows.push(Row::new(
        "  Restate's Node service RSS (MB)",
        None,
        i_restate.as_ref().and_then(|i| i.service_rss_mb),
        1,
    ));
    rows.push(Row::new(
        "  start-up to a served API (ms)",
        i_ours.as_ref().map(|i| i.startup_ms),
        i_restate.as_ref().map(|i| i.startup_ms),
        0,
    ));
    if let Some(recovery) = &ours.recovery {
        let other = restate.recovery.as_ref();
        let n = recovery.runs;
        rows.push(Row::new(
            format!(
                "recovery: {n} runs created, {} in flight (runs/s)",
                sizes.create_width
            ),
            Some(recovery.create_per_s),
            other.map(|o| o.create_per_s),
            0,
        ));
        rows.push(
            Row::new(
                "  kill -9 while all wait, restart when all are overdue: API answers (ms)",
                Some(recovery.ready_ms),
                other.map(|o| o.ready_ms),
                0,
            )
            .target("< 2 s", recovery.ready_ms < 2000.0),
        );
        rows.push(
            Row::new(
                "  first overdue timer fired (ms)",
                Some(recovery.first_fire_ms),
                other.map(|o| o.first_fire_ms),
                0,
            )
            .target("< 2 s", recovery.first_fire_ms < 2000.0),
        );
        rows.push(Row::new(
            "  all overdue timers fired (s)",
            Some(recovery.all_fired_seconds),
            other.map(|o| o.all_fired_seconds),
            1,
        ));
    }
    rows
}

/// The exec rows of this build beside another one run in the same rounds (`--baseline`); the
/// "restate" column holds the baseline's figure there.
pub fn baseline_rows(ours: &Side, baseline: &Side, sizes: &Sizes) -> Vec<Row> {
    let pct = |latency: &Option<Latency>, q: f64| latency.as_ref().map(|l| l.per_step.pct(q));
    let (e_ours, e_base) = (ours.exec_latency(), baseline.exec_latency());
    let steps = sizes.exec_latency_steps;
    let (x_ours, x_base) = (ours.exec_throughput(), baseline.exec_throughput());
    vec![
        Row::new(
            format!("exec latency, this build ÷ baseline build: 1 run × {steps} steps, p50 (ms)"),
            pct(&e_ours, 50.0),
            pct(&e_base, 50.0),
            3,
        ),
        Row::new(
            "  per step p99 (ms), this build ÷ baseline build",
            pct(&e_ours, 99.0),
            pct(&e_base, 99.0),
            3,
        ),
        Row::new(
            "exec throughput, this build ÷ baseline build (steps/s)",
            x_ours.as_ref().map(|t| t.steps_per_s),
            x_base.as_ref().map(|t| t.steps_per_s),
            0,
        ),
    ]
}
