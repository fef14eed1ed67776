//! What the table shows: the median round of the repeated workloads for each system, every timer
//! phase, recovery, and the targets `runbook` is held to.

use serde_json::{json, Value};

use super::plan::Sizes;
use super::report::Row;
use super::results::{median_by, Idle, Latency, Recovery, Throughput, Timers};
use super::sys::Samples;

/// Everything measured on one system.
#[derive(Default)]
pub struct Side {
    pub idle: Vec<Idle>,
    pub latency: Vec<Latency>,
    pub throughput: Vec<Throughput>,
    pub timers: Vec<Timers>,
    pub recovery: Option<Recovery>,
}

impl Side {
    pub fn json(&self) -> Value {
        json!({"idle": self.idle.iter().map(Idle::json).collect::<Vec<_>>(),
               "latency": self.latency.iter().map(Latency::json).collect::<Vec<_>>(),
               "throughput": self.throughput.iter().map(Throughput::json).collect::<Vec<_>>(),
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
}

/// The table: the median round of the repeated workloads, every timer phase, and the targets.
pub fn rows(
    ours: &Side,
    restate: &Side,
    floor: &Samples,
    floor_p50: f64,
    sizes: &Sizes,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let (l_ours, l_restate) = (ours.latency(), restate.latency());
    let pct = |latency: &Option<Latency>, q: f64| latency.as_ref().map(|l| l.per_step.pct(q));
    rows.push(Row::new(
        "fsync floor: append 4 KiB + fdatasync, p50 (ms)",
        Some(floor.pct(50.0)),
        None,
        3,
    ));
    rows.push(Row::new("  p99 (ms)", Some(floor.pct(99.0)), None, 3));
    let steps = sizes.latency_steps;
    let mut p50 = Row::new(
        format!("latency: 1 run × {steps} steps, per step p50 (ms)"),
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
    let multiple = pct(&l_ours, 50.0).map(|p| p / floor_p50);
    rows.push(
        Row::new("  per step p50 ÷ fsync floor p50", multiple, None, 2)
            .target("≤ 3", multiple.is_some_and(|m| m <= 3.0)),
    );
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
