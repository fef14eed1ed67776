//! Crash torture: a mixed workload on one daemon while the test `kill -9`s the daemon at random
//! moments and restarts it, until every run has ended.
//!
//! The workload (one runbook, random params per run): exec steps that append to a per-run marker
//! file, idempotent and not; a step whose command fails on its first attempt and is retried by
//! its retry policy; waits of 0–3 s; an `until`/`every` poll of a command that prints JSON; an
//! approval the test answers; a serial and a parallel `for_each`; and in some runs a step designed
//! to fail with `on_failure = "abort"`. The test plays the operator: it approves gates and says
//! `runbook retry` to interrupted (or failed) steps, recording each retry it asked for.
//!
//! Kills are spaced by a random 50–700 ms from a seeded xorshift PRNG. The seed is printed;
//! replay one with `RUNBOOK_KILL_SEED=<seed>`. `RUNBOOK_KILLS` sets the number of kills (default
//! 100, what `.ci/run` runs: 1–2 minutes on two cores). With 1,000 kills (25 minutes on two busy
//! cores; restarts slow down as finished runs pile up, since the daemon loads every run):
//!
//! ```sh
//! cargo build -p runbook-cli    # the daemon binary the test runs (`cargo test --workspace` builds it)
//! RUNBOOK_KILLS=1000 cargo test -p runbook-tests --test kill_loop -- --nocapture
//! ```
//!
//! Invariants, checked after every restart (and at every look the test takes) and at the end:
//!
//! - (a) no journaled transition is lost: a run's journal (`GET /v1/runs/{id}/events`) is always
//!   an extension of the journal seen before (same prefix, seqs contiguous from 1);
//! - (b) every marker line names a call journaled (`CallNoted`) for that very step, no call's
//!   command ran twice, a non-idempotent step never re-ran by itself after an interruption (each
//!   attempt after its first follows a failure its command reported, or a `retry` the test asked
//!   for), and the journal holds exactly the retries the test asked for;
//! - (c) every run ends: succeeded, or failed at the step designed to fail;
//! - (d) no wait fired early: `TimerArmed.fire_at` ≥ the step's start + its duration, and its
//!   `TimerFired` and `StepSucceeded` come no earlier than `fire_at`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use runbook_tests::{
    become_subreaper, check_journal_extends, env_number, processes, seed_from, Daemon, Rng,
};
use serde_json::Value;

/// Runs kept alive while kills remain.
const ACTIVE_RUNS: usize = 5;
/// How long the runs may take to end after the last kill.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// Records which call ran (the pid and start time of its `runbook shim`, which the journal notes
/// in `CallNoted`), then does what its mode says.
const STEP_SCRIPT: &str = r#"#!/bin/sh
# step.sh MARKER KEY MODE [ARG...]
marker=$1; key=$2; mode=$3; shift 3
start=$(cut -d' ' -f22 /proc/$PPID/stat)
echo "$key $PPID $start" >> "$marker"
case $mode in
  ok) sleep "$1" ;;
  flaky)
    if [ -e "$1" ]; then sleep "$2"; else : > "$1"; echo "injected failure" >&2; exit 1; fi ;;
  poll)
    n=$(( $(cat "$1" 2>/dev/null || echo 0) + 1 ))
    echo "$n" > "$1"
    echo "{\"n\": $n}" ;;
  fail) echo "designed to fail" >&2; exit 3 ;;
esac
"#;

/// `@STEP@` is the script, `@WORK@` the directory of markers and flags.
const RUNBOOK: &str = r#"
name = "torture"
description = "crash torture workload"

[params.sleep]
default = "0.1"
[params.hold]
type = "duration"
default = "1s"
[params.nap]
type = "duration"
default = "0s"
[params.items]
type = "list"
default = ["a", "b"]
[params.gate]
type = "bool"
default = true
[params.doomed]
type = "bool"
default = false

[[steps]]
id = "first"
action = "exec"
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "first", "ok", "{{ params.sleep }}"] }

[[steps]]
id = "flaky"
action = "exec"
retry = { max_attempts = 6, backoff = "100ms" }
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "flaky", "flaky", "@WORK@/{{ run.id }}.flaky", "{{ params.sleep }}"] }

[[steps]]
id = "rerunnable"
action = "exec"
idempotent = true
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "rerunnable", "ok", "{{ params.sleep }}"] }

[[steps]]
id = "hold"
action = "wait"
with = { duration = "{{ params.hold }}" }

[[steps]]
id = "poll"
action = "exec"
idempotent = true
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "poll", "poll", "@WORK@/{{ run.id }}.poll"], parse = "json" }
until = "output.json.n >= 3"
every = "1s"

[[steps]]
id = "gate"
action = "approval"
when = "params.gate"
with = { prompt = "go on?" }

[[steps]]
id = "one_by_one"
for_each = "{{ params.items }}"
serial = 1
  [[steps.steps]]
  id = "mark"
  action = "exec"
  with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "one_by_one[{{ index }}].mark", "ok", "{{ params.sleep }}"] }
  [[steps.steps]]
  id = "nap"
  action = "wait"
  with = { duration = "{{ params.nap }}" }

[[steps]]
id = "side_by_side"
for_each = "{{ params.items }}"
parallel = 2
  [[steps.steps]]
  id = "again"
  action = "exec"
  idempotent = true
  with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "side_by_side[{{ index }}].again", "ok", "{{ params.sleep }}"] }
  [[steps.steps]]
  id = "once"
  action = "exec"
  with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "side_by_side[{{ index }}].once", "ok", "{{ params.sleep }}"] }

[[steps]]
id = "doomed"
action = "exec"
when = "params.doomed"
on_failure = "abort"
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "doomed", "fail"] }

[[steps]]
id = "last"
action = "exec"
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "last", "ok", "{{ params.sleep }}"] }
"#;

/// Whether the step instance `key` (`side_by_side[1].again`) of the workload is idempotent.
fn idempotent(key: &str) -> bool {
    let id = key.rsplit('.').next().unwrap_or(key);
    matches!(id, "rerunnable" | "poll" | "again")
}

struct Run {
    id: String,
    doomed: bool,
    /// Its final state once its journal holds `RunFinished`.
    ended: Option<String>,
}

#[derive(Default)]
struct Tally {
    kills: u64,
    approvals: u64,
    /// `(run, step)` → how many `retry`s the test asked for (and the daemon acknowledged).
    retries: BTreeMap<(String, String), u32>,
    restarts_checked: u64,
    downtime: Duration,
}

struct Torture {
    daemon: Daemon,
    work: PathBuf,
    runbook: String,
    rng: Rng,
    runs: Vec<Run>,
    /// The journal of each run as last seen.
    journals: HashMap<String, Vec<Value>>,
    tally: Tally,
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_runs_nothing_twice() -> Result<()> {
    let kills: u64 = env_number("RUNBOOK_KILLS")?.unwrap_or(100);
    let seed = seed_from("RUNBOOK_KILL_SEED")?;
    println!("kill loop: seed {seed} (replay: RUNBOOK_KILL_SEED={seed}), {kills} kills");
    // The shims of a killed daemon become our children, so that we can reap them (PID 1 of a
    // container may not).
    become_subreaper()?;
    let started = Instant::now();
    let mut torture = Torture::new(seed)?;
    let result = torture.run(kills);
    // The last shims end right after their runs: reap them before we go.
    for _ in 0..20 {
        torture.daemon.reap_orphans();
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(error) = result {
        // Keep the data dir (store, markers, call dirs, daemon log) for a post-mortem.
        let kept = std::env::temp_dir().join(format!("runbook-kill-loop-{seed}"));
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(&torture.daemon.data_dir)
            .arg(&kept)
            .status();
        println!("data dir copied to {} ({copied:?})", kept.display());
        let log = torture.daemon.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "kill loop failed (seed {seed}, after {} kills, {:?}): {error:#}\ndata dir: {}\nend of the daemon log:\n{}",
            torture.tally.kills,
            started.elapsed(),
            torture.daemon.data_dir.display(),
            tail.join("\n")
        );
    }
    let summary = torture.summary()?;
    println!(
        "kill loop passed in {:.1?} (seed {seed}): {summary}",
        started.elapsed()
    );
    Ok(())
}

impl Torture {
    fn new(seed: u64) -> Result<Torture> {
        let daemon = Daemon::start()?;
        let work = daemon.data_dir.join("work");
        std::fs::create_dir_all(&work)?;
        let script = work.join("step.sh");
        std::fs::write(&script, STEP_SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let text = RUNBOOK
            .replace("@STEP@", &script.display().to_string())
            .replace("@WORK@", &work.display().to_string());
        let runbook = daemon.write_file("torture.toml", &text)?;
        Ok(Torture {
            daemon,
            work,
            runbook,
            rng: Rng::new(seed),
            runs: Vec::new(),
            journals: HashMap::new(),
            tally: Tally::default(),
        })
    }

    fn run(&mut self, kills: u64) -> Result<()> {
        let mut next_report = 25;
        while self.tally.kills < kills {
            let next_kill = Instant::now() + Duration::from_millis(self.rng.between(50, 700));
            self.look_and_operate()?;
            while self.active().count() < ACTIVE_RUNS {
                self.start_run()?;
            }
            if let Some(left) = next_kill.checked_duration_since(Instant::now()) {
                std::thread::sleep(left);
            }
            self.kill_and_restart()?;
            if self.tally.kills >= next_report || self.tally.kills == kills {
                next_report += 25;
                println!(
                    "  {} kills: {} runs started, {} ended, {} operator retries",
                    self.tally.kills,
                    self.runs.len(),
                    self.runs.iter().filter(|run| run.ended.is_some()).count(),
                    self.tally.retries.values().sum::<u32>()
                );
            }
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.active().count() > 0 {
            if Instant::now() > deadline {
                let active: Vec<&str> = self.active().map(|run| run.id.as_str()).collect();
                bail!("(c) runs did not end within {DRAIN_TIMEOUT:?} of the last kill: {active:?}");
            }
            self.look_and_operate()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        self.final_checks()
    }

    fn active(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(|run| run.ended.is_none())
    }

    fn start_run(&mut self) -> Result<()> {
        let sleep = format!("{:.2}", self.rng.between(5, 60) as f64 / 100.0);
        let hold = format!("{}ms", self.rng.between(0, 3000));
        let nap = format!("{}ms", self.rng.between(0, 800));
        let items: Vec<String> = (0..self.rng.between(1, 4))
            .map(|index| format!("item{index}"))
            .collect();
        let items = items.join(",");
        let gate = self.rng.chance(75).to_string();
        let doomed = self.rng.chance(15);
        let doomed_text = doomed.to_string();
        let id = self.daemon.start_run(
            &self.runbook,
            &[
                ("sleep", &sleep),
                ("hold", &hold),
                ("nap", &nap),
                ("items", &items),
                ("gate", &gate),
                ("doomed", &doomed_text),
            ],
        )?;
        self.runs.push(Run {
            id,
            doomed,
            ended: None,
        });
        Ok(())
    }

    /// Checks the journals of the active runs, and acts as the operator: approves waiting gates
    /// (now or at a later look) and retries interrupted or failed steps.
    fn look_and_operate(&mut self) -> Result<()> {
        let active: Vec<String> = self.active().map(|run| run.id.clone()).collect();
        for id in active {
            self.check_run(&id)?;
            if self.ended(&id) {
                continue;
            }
            let response = self.daemon.api("GET", &format!("/v1/runs/{id}"), None)?;
            ensure!(
                response.status == 200,
                "GET /v1/runs/{id}: HTTP {}: {}",
                response.status,
                response.text()
            );
            let shown = response.json()?;
            let state = shown["state"].as_str().unwrap_or_default();
            ensure!(state != "corrupt", "run {id} is corrupt: {shown}");
            if state == "needs_attention" {
                let reason = shown["attention"]["reason"].as_str().unwrap_or_default();
                let step = shown["attention"]["step"]
                    .as_str()
                    .ok_or_else(|| anyhow!("run {id} needs attention for no step: {shown}"))?
                    .to_owned();
                ensure!(
                    matches!(reason, "interrupted" | "step_failed"),
                    "run {id} needs attention for an unexpected reason: {}",
                    shown["attention"]
                );
                let output = self.daemon.cli(&[
                    "retry",
                    &id,
                    &step,
                    "--comment",
                    &format!("kill loop: {reason}"),
                ])?;
                ensure!(
                    output.status.success(),
                    "runbook retry {id} {step} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                *self.tally.retries.entry((id.clone(), step)).or_default() += 1;
                continue;
            }
            let waiting: Vec<String> = shown["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|step| step["state"] == "waiting" && step["waiting_for"] == "approval")
                .filter_map(|step| step["id"].as_str().map(str::to_owned))
                .collect();
            for step in waiting {
                if !self.rng.chance(50) {
                    continue;
                }
                let output = self.daemon.cli(&["approve", &id, "--step", &step])?;
                ensure!(
                    output.status.success(),
                    "runbook approve {id} --step {step} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                self.tally.approvals += 1;
            }
        }
        Ok(())
    }

    fn ended(&self, id: &str) -> bool {
        self.runs
            .iter()
            .any(|run| run.id == id && run.ended.is_some())
    }

    fn kill_and_restart(&mut self) -> Result<()> {
        if self.daemon.exited() {
            bail!("the daemon exited by itself (a crash, not a kill)");
        }
        // The journals just before the kill: what the restarted daemon must still hold.
        let active: Vec<String> = self.active().map(|run| run.id.clone()).collect();
        for id in &active {
            self.check_run(id)?;
        }
        self.daemon.kill9();
        self.tally.kills += 1;
        self.daemon.reap_orphans();
        let down = Instant::now();
        if self.rng.chance(20) {
            std::thread::sleep(Duration::from_millis(self.rng.between(0, 300)));
        }
        if let Err(error) = self.daemon.restart() {
            bail!(
                "restart after kill {}: {error:#}\nprocesses holding {}: {:?}",
                self.tally.kills,
                self.daemon.data_dir.join("daemon.lock").display(),
                holders(&self.daemon.data_dir.join("daemon.lock"))
            );
        }
        self.tally.downtime += down.elapsed();
        // (a) after the restart: every active run, and a few that ended.
        for id in &active {
            self.check_run(id)?;
        }
        let ended: Vec<String> = self
            .runs
            .iter()
            .filter(|run| run.ended.is_some())
            .map(|run| run.id.clone())
            .collect();
        for _ in 0..ended.len().min(3) {
            let pick = self.rng.between(0, ended.len() as u64 - 1) as usize;
            self.check_run(&ended[pick])?;
        }
        self.tally.restarts_checked += 1;
        Ok(())
    }

    /// Reads the run's marker, then its journal, and checks (a), (b) and (d) on them.
    fn check_run(&mut self, id: &str) -> Result<()> {
        // The marker first: a line written after the journal was read would name a call the
        // journal read before it could not hold yet.
        let marker = read_marker(&self.work.join(format!("{id}.marker")))?;
        let events = self.daemon.events(id)?;
        let seen = self.journals.get(id).map(Vec::as_slice).unwrap_or_default();
        let violations: Vec<String> = [
            check_journal_extends(id, seen, &events),
            check_calls(id, &events, &marker),
            check_waits(id, &events),
        ]
        .into_iter()
        .filter_map(|checked| checked.err().map(|error| format!("{error:#}")))
        .collect();
        if !violations.is_empty() {
            bail!(
                "{}\nthe marker: {marker:?}\nthe journal now: {}",
                violations.join("\n"),
                serde_json::to_string(&events)?
            );
        }
        let finished = events
            .iter()
            .rev()
            .find(|event| event["kind"] == "run_finished")
            .map(|event| event["state"].as_str().unwrap_or("?").to_owned());
        if let Some(run) = self.runs.iter_mut().find(|run| run.id == id) {
            if let Some(state) = finished {
                run.ended = Some(state);
            }
        }
        self.journals.insert(id.to_owned(), events);
        Ok(())
    }

    fn final_checks(&mut self) -> Result<()> {
        let ids: Vec<String> = self.runs.iter().map(|run| run.id.clone()).collect();
        for id in &ids {
            self.check_run(id)?;
        }
        for run in &self.runs {
            let events = &self.journals[&run.id];
            let expected = if run.doomed { "failed" } else { "succeeded" };
            ensure!(
                run.ended.as_deref() == Some(expected),
                "(c) run {} ended {:?}, expected {expected}",
                run.id,
                run.ended
            );
            if run.doomed {
                let finished = events
                    .iter()
                    .find(|event| event["kind"] == "run_finished")
                    .ok_or_else(|| anyhow!("no run_finished"))?;
                let error = finished["error"].as_str().unwrap_or_default();
                ensure!(
                    error.contains("doomed"),
                    "(c) run {} failed, but not at the step designed to fail: {error}",
                    run.id
                );
            }
            // (b) the journal holds exactly the retries the test asked for.
            let mut journaled: BTreeMap<String, u32> = BTreeMap::new();
            for event in events {
                if event["kind"] == "retry_requested" {
                    let step = event["step"].as_str().unwrap_or_default().to_owned();
                    *journaled.entry(step).or_default() += 1;
                }
            }
            let asked: BTreeMap<String, u32> = self
                .tally
                .retries
                .iter()
                .filter(|((run_id, _), _)| *run_id == run.id)
                .map(|((_, step), count)| (step.clone(), *count))
                .collect();
            ensure!(
                journaled == asked,
                "(b) run {}: journaled retries {journaled:?}, the test asked for {asked:?}",
                run.id
            );
        }
        let approved: u64 = self
            .journals
            .values()
            .flatten()
            .filter(|event| event["kind"] == "approved")
            .count() as u64;
        ensure!(
            approved == self.tally.approvals,
            "the journals hold {approved} approvals, the test gave {}",
            self.tally.approvals
        );
        Ok(())
    }

    fn summary(&self) -> Result<String> {
        let events = || self.journals.values().flatten();
        let count = |kind: &str| events().filter(|event| event["kind"] == kind).count();
        let interrupted = count("step_interrupted");
        let rerun = events()
            .filter(|event| event["kind"] == "step_interrupted" && event["rerun"] == true)
            .count();
        let succeeded = self
            .runs
            .iter()
            .filter(|run| run.ended.as_deref() == Some("succeeded"))
            .count();
        let steps: HashSet<(&str, &str)> = self
            .journals
            .iter()
            .flat_map(|(run, events)| {
                events
                    .iter()
                    .filter(|event| event["kind"] == "step_started")
                    .filter_map(move |event| Some((run.as_str(), event["step"].as_str()?)))
            })
            .collect();
        Ok(format!(
            "{} kills (downtime {:.1?} in all), {} runs ({succeeded} succeeded, {} failed as designed), \
             {} steps ({} attempts and polls, {} retried by policy), {interrupted} interrupted \
             ({rerun} re-run by themselves), {} operator retries, {} approvals, {} timers fired \
             ({} events in all)",
            self.tally.kills,
            self.tally.downtime,
            self.runs.len(),
            self.runs.len() - succeeded,
            steps.len(),
            count("step_started"),
            events()
                .filter(|event| event["kind"] == "step_failed" && event["will_retry"] == true)
                .count(),
            self.tally.retries.values().sum::<u32>(),
            self.tally.approvals,
            count("timer_fired"),
            events().count(),
        ))
    }
}

/// A marker line: the step instance and the identity of the shim that ran its command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MarkerLine {
    step: String,
    pid: i64,
    start_time: u64,
}

fn read_marker(path: &Path) -> Result<Vec<MarkerLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let mut lines = Vec::new();
    // A last line without its newline is being written right now: it is read at the next look.
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    for line in complete.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [step, pid, start_time] = fields.as_slice() else {
            bail!("{}: malformed marker line {line:?}", path.display());
        };
        lines.push(MarkerLine {
            step: (*step).to_owned(),
            pid: pid.parse()?,
            start_time: start_time.parse()?,
        });
    }
    Ok(lines)
}

/// (b): the marker lines against the calls of the journal.
fn check_calls(run: &str, events: &[Value], marker: &[MarkerLine]) -> Result<()> {
    // The shim identity journaled for each call, before the command was released.
    let mut noted: HashMap<(i64, u64), (String, u64)> = HashMap::new();
    for event in events.iter().filter(|event| event["kind"] == "call_noted") {
        let shim = &event["note"]["shim"];
        if let (Some(pid), Some(start_time)) = (shim["pid"].as_i64(), shim["start_time"].as_u64()) {
            noted.insert(
                (pid, start_time),
                (
                    event["step"].as_str().unwrap_or_default().to_owned(),
                    event["call"].as_u64().unwrap_or_default(),
                ),
            );
        }
    }
    let mut ran: HashSet<(i64, u64)> = HashSet::new();
    for line in marker {
        let identity = (line.pid, line.start_time);
        let Some((step, call)) = noted.get(&identity) else {
            bail!(
                "(b) run {run}: step {} ran a command under shim pid {} (start {}), which no call of the journal names",
                line.step,
                line.pid,
                line.start_time
            );
        };
        ensure!(
            *step == line.step,
            "(b) run {run}: call {call} is journaled for step {step} but ran the command of {}",
            line.step
        );
        ensure!(
            ran.insert(identity),
            "(b) run {run}: the command of step {step} (call {call}) ran twice"
        );
    }
    // Each attempt of a non-idempotent step after its first follows a failure its command
    // reported (the retry policy), a `retry` by the operator, or a call that provably never
    // started; never an interruption alone.
    let mut justified: HashMap<String, bool> = HashMap::new();
    for event in events {
        let step = event["step"].as_str().unwrap_or_default();
        match event["kind"].as_str().unwrap_or_default() {
            "step_started" if event["action"] == "exec" && !idempotent(step) => {
                let first = !justified.contains_key(step);
                let allowed = justified.insert(step.to_owned(), false).unwrap_or(false);
                ensure!(
                    first || allowed,
                    "(b) run {run}: non-idempotent step {step} started attempt {} (seq {}) without a reported failure or an operator's retry",
                    event["attempt"],
                    event["seq"]
                );
            }
            "step_failed" if event["will_retry"] == true => {
                justified.insert(step.to_owned(), true);
            }
            "retry_requested" => {
                justified.insert(step.to_owned(), true);
            }
            // Its command never ran (its shim was never released), so it is started again; the
            // marker check above shows that no command ran twice.
            "call_never_started" if event["undo"] != true => {
                justified.insert(step.to_owned(), true);
            }
            "step_interrupted" => {
                ensure!(
                    event["rerun"] == idempotent(step),
                    "(b) run {run}: step {step} interrupted with rerun = {} (seq {})",
                    event["rerun"],
                    event["seq"]
                );
            }
            _ => {}
        }
    }
    Ok(())
}

fn instant(event: &Value, field: &str) -> Result<DateTime<Utc>> {
    let text = event[field]
        .as_str()
        .ok_or_else(|| anyhow!("no {field} in {event}"))?;
    Ok(DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{field} {text:?}"))?
        .with_timezone(&Utc))
}

/// `"1234ms"` (the form the test passes) → milliseconds.
fn parse_ms(text: &str) -> Result<i64> {
    text.strip_suffix("ms")
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| anyhow!("unexpected wait duration {text:?}"))
}

/// (d): no wait fired before its deadline.
fn check_waits(run: &str, events: &[Value]) -> Result<()> {
    let mut started: HashMap<&str, &Value> = HashMap::new();
    let mut armed: HashMap<u64, (&str, DateTime<Utc>)> = HashMap::new();
    let mut fired: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for event in events {
        let step = event["step"].as_str().unwrap_or_default();
        match event["kind"].as_str().unwrap_or_default() {
            "step_started" if event["action"] == "wait" => {
                started.insert(step, event);
            }
            "timer_armed" if event["purpose"] == "wait" => {
                let start = started.get(step).ok_or_else(|| {
                    anyhow!("(d) run {run}: a wait timer for {step} that did not start")
                })?;
                let duration = parse_ms(start["input"]["duration"].as_str().unwrap_or_default())?;
                let fire_at = instant(event, "fire_at")?;
                let earliest = instant(start, "at")? + chrono::Duration::milliseconds(duration);
                ensure!(
                    fire_at >= earliest,
                    "(d) run {run}: wait {step} armed for {fire_at}, before its start + {duration} ms = {earliest}"
                );
                let timer = event["timer"].as_u64().unwrap_or_default();
                armed.insert(timer, (step, fire_at));
            }
            "timer_fired" => {
                let timer = event["timer"].as_u64().unwrap_or_default();
                if let Some((step, fire_at)) = armed.get(&timer) {
                    let at = instant(event, "at")?;
                    ensure!(
                        at >= *fire_at && instant(event, "fire_at")? == *fire_at,
                        "(d) run {run}: wait {step} fired at {at}, its deadline is {fire_at}: {event}"
                    );
                    fired.insert(step, *fire_at);
                }
            }
            "step_succeeded" if started.contains_key(step) => {
                let fire_at = fired.get(step).ok_or_else(|| {
                    anyhow!("(d) run {run}: wait {step} succeeded without its timer firing")
                })?;
                let at = instant(event, "at")?;
                ensure!(
                    at >= *fire_at,
                    "(d) run {run}: wait {step} succeeded at {at}, before its deadline {fire_at}"
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// The processes that hold `path` open, for a refused restart.
fn holders(path: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for process in processes() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", process.pid)) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        {
            found.push(format!(
                "pid {} (ppid {}, state {}): {:?}",
                process.pid, process.ppid, process.state, process.cmdline
            ));
        }
    }
    found
}
