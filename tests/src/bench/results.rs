//! The figures each workload yields, the same shape for both systems, and their JSON form.

use serde_json::{json, Value};

use super::sys::Samples;

/// What one step of the latency and throughput workloads does, the same on both systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A durable no-op: our `noop`, Restate's `ctx.run` of an empty closure.
    Noop,
    /// A durable run of the program `true` (no shell): our `exec` with `command = ["true"]`,
    /// Restate's `ctx.run` around Node's `execFile("true")`.
    Exec,
    /// Ours only: a `noop` whose input names the step before it (`{{ steps.<before>.output.n }}`)
    /// and carries 256 B, so that every step has an output and a template to render.
    Chained,
}

/// One run of many sequential durable steps.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub steps: usize,
    /// ms between the durable completions of consecutive steps.
    pub per_step: Samples,
    /// The whole run (first step started to last step done), divided by the number of steps.
    pub whole_run_ms_per_step: f64,
}

impl Latency {
    pub fn json(&self) -> Value {
        json!({"steps": self.steps, "per_step_ms": self.per_step.summary(),
               "whole_run_ms_per_step": self.whole_run_ms_per_step})
    }
}

/// Many short runs, a fixed number in flight.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub runs: usize,
    pub steps_per_run: usize,
    pub in_flight: usize,
    pub seconds: f64,
    pub steps_per_s: f64,
    /// How many status requests the client made per run to see it end (`runbook` only: Restate
    /// answers the call when the run ends).
    pub polls_per_run: Option<f64>,
}

impl Throughput {
    pub fn json(&self) -> Value {
        json!({"runs": self.runs, "steps_per_run": self.steps_per_run, "in_flight": self.in_flight,
               "seconds": self.seconds, "steps_per_s": self.steps_per_s,
               "polls_per_run": self.polls_per_run})
    }
}

/// N runs that each wait on a durable timer.
#[derive(Debug, Clone, Default)]
pub struct Timers {
    pub runs: usize,
    /// How long each run waits, from its own start.
    pub wait_ms: u64,
    /// The rate runs were started at (open loop), if paced.
    pub paced_per_s: Option<f64>,
    pub create_seconds: f64,
    pub create_per_s: f64,
    /// ms from each deadline to the moment the run went on after it (the code after the wait
    /// ran, with the firing durable).
    pub lateness: Samples,
    /// `runbook` only: ms from the deadline to the engine's firing decision (`late_by_ms`, before
    /// its commit).
    pub engine_lateness: Option<Samples>,
    /// The most timers armed and not yet fired at one instant.
    pub peak_pending: usize,
    /// VmHWM of the server process at the end of the phase.
    pub peak_rss_mb: f64,
    /// From the first deadline to the last run going on.
    pub span_seconds: f64,
}

impl Timers {
    pub fn json(&self) -> Value {
        json!({"runs": self.runs, "wait_ms": self.wait_ms, "paced_per_s": self.paced_per_s,
               "create_seconds": self.create_seconds,
               "create_per_s": self.create_per_s, "lateness_ms": self.lateness.summary(),
               "engine_lateness_ms": self.engine_lateness.as_ref().map(Samples::summary),
               "peak_pending": self.peak_pending, "peak_rss_mb": self.peak_rss_mb,
               "span_seconds": self.span_seconds})
    }
}

/// A fresh server with nothing to do.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    /// From spawn to the first answered API request.
    pub startup_ms: f64,
    /// VmRSS two seconds after the API answered.
    pub rss_mb: f64,
    /// Restate only: the RSS of the Node process serving the handlers.
    pub service_rss_mb: Option<f64>,
}

impl Idle {
    pub fn json(&self) -> Value {
        json!({"startup_ms": self.startup_ms, "rss_mb": self.rss_mb,
               "service_rss_mb": self.service_rss_mb})
    }
}

/// `kill -9` with runs waiting, restart after their deadlines passed.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub runs: usize,
    pub wait_ms: u64,
    pub create_per_s: f64,
    /// How long the server was down.
    pub down_seconds: f64,
    /// From the restart's spawn to the first answered API request.
    pub ready_ms: f64,
    /// From the restart's spawn to the first overdue run going on after its timer.
    pub first_fire_ms: f64,
    /// From the restart's spawn to the last of them going on.
    pub all_fired_seconds: f64,
}

impl Recovery {
    pub fn json(&self) -> Value {
        json!({"runs": self.runs, "wait_ms": self.wait_ms, "create_per_s": self.create_per_s,
               "down_seconds": self.down_seconds, "ready_ms": self.ready_ms,
               "first_fire_ms": self.first_fire_ms, "all_fired_seconds": self.all_fired_seconds})
    }
}

/// The median of several rounds (by `key`), for workloads repeated in alternation.
pub fn median_by<T: Clone>(rounds: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut sorted: Vec<&T> = rounds.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .map(|round| (*round).clone())
}
