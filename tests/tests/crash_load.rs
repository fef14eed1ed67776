//! Crash under load: a few hundred runs with large params, locks, waits, `noop`s and short
//! commands, while the test `kill -9`s the daemon at random instants (some of them while starts
//! are in flight) and, now and then, restarts it armed with the failpoint
//! `StagedBeforeSync` (the writer applied a batch to the store but did not make it durable
//! yet). The store promises that a crash at any instant leaves the acknowledged commits plus, at
//! most, whole unacknowledged ones; never part of one.
//!
//! The params are 48–96 KiB and every command prints 4–32 KiB, so the store's engine (sled)
//! fills its 512 KiB write buffers every few commits and writes them to its files by itself,
//! by itself. The test prints the evidence (how much sled's files grew while no checkpoint ran)
//! and, after failpoint crashes, opens a copy of the store as it was left — without the repair a
//! daemon's start makes — and checks that no derived index (locks, timers, `active`, counters)
//! disagrees with the runs: a part of a commit would show there.
//!
//! Checked after every restart, through the API and the CLI:
//!
//! - every run whose start was acknowledged exists (`GET /v1/runs?all=true`), and the journals
//!   of a rotating sample of runs extend the journals read before (all of them at the end);
//! - every lock's holder exists and is unfinished: each resource of the pool is probed with a
//!   start of a runbook that takes it, and a refusal (here or of a workload start) must name a
//!   run that exists and had not finished when it was refused; the probe runs that get the lock
//!   are ordinary runs that must end too;
//! - `runbook store verify` calls the store sound (every [`VERIFY_EVERY`] restarts and at the
//!   end: it reads every record, which takes seconds on this store);
//! - no run waits on a timer whose deadline passed more than [`GRACE`] ago while the daemon was
//!   up, nor waits for nothing for that long (the daemon is left alone for a while every
//!   [`SETTLE_EVERY`] kills, and at the end, so that this is looked at);
//! - no step ran twice: a marker line per command execution; a non-idempotent step runs at most
//!   once plus once per operator `retry` (the test retries interrupted steps as an operator
//!   would), and no command ran for a run the store does not hold;
//! - at the end (no more kills) every run succeeds within [`DRAIN_TIMEOUT`], and the journals
//!   hold exactly the retries the test asked for.
//!
//! Violations are collected (so the summary can count orphan locks and stuck runs) and fail the
//! test at the end. `RUNBOOK_CRASH_KILLS` sets the number of random kills (default 100, about
//! three to four minutes on two busy cores; two runs are started per kill);
//! `RUNBOOK_CRASH_SEED` replays a seed:
//!
//! ```sh
//! cargo build -p runbook-cli
//! RUNBOOK_CRASH_KILLS=500 cargo test -p runbook-tests --test crash_load -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use runbook_tests::{
    become_subreaper, check_journal_extends, env_number, http, lines, seed_from, Daemon, Rng,
};
use serde_json::{json, Value};

/// Resources the locked runs and the probes take (`crash:r0` ... ).
const POOL: u64 = 5;
/// Runs kept alive while kills remain (at most; starts are spread over the kills).
const ACTIVE_RUNS: usize = 48;
/// Runs started per kill, over the whole loop.
const RUNS_PER_KILL: u64 = 2;
/// Share of the other kills that land right after sled wrote to its files by itself: a batch
/// is being applied then, and its sync of the write-ahead log comes a moment later.
const KILL_ON_SLED_WRITE_PERCENT: u64 = 50;
/// Share of kills followed by a restart armed with the failpoint.
const FAILPOINT_PERCENT: u64 = 25;
/// Share of kills that land while a burst of starts is in flight.
const KILL_DURING_STARTS_PERCENT: u64 = 35;
/// Every so many kills the daemon is left alone long enough for overdue timers to show.
const SETTLE_EVERY: u64 = 34;
/// How long a due timer may take to fire once the daemon is up (or a run may wait for nothing).
const GRACE: Duration = Duration::from_secs(6);
/// How long the runs may take to end after the last kill.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// A refused start may name a holder that finished this much before the refusal was asked for
/// (its finish was decided, then committed after the refusal).
const REFUSAL_SLACK_MS: i64 = 2000;
/// `runbook store verify` (which reads every record: seconds on a big store) runs at every so
/// many restarts, and at the end.
const VERIFY_EVERY: u64 = 10;
/// Failpoint crashes after which a copy of the store is opened with sled for the evidence.
const EVIDENCE_COPIES: u64 = 6;

/// `step.sh MARKER STEP BYTES`: one marker line per execution, then BYTES of output.
const STEP_SCRIPT: &str = r#"#!/bin/sh
echo "$2" >> "$1"
head -c "$3" /dev/zero | tr '\0' o
echo
"#;

/// `@NAME@`, `@LOCKS@`, `@STEP@` (the script) and `@WORK@` (the marker directory) are replaced.
const RUNBOOK: &str = r#"
name = "@NAME@"
description = "crash-under-load workload"
@LOCKS@

[params.res]
default = "none"
[params.blob]
default = ""
[params.out]
default = "0"
[params.hold]
type = "duration"
default = "100ms"
[params.nap]
type = "duration"
default = "100ms"

[[steps]]
id = "first"
action = "exec"
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "first", "{{ params.out }}"] }

[[steps]]
id = "hold"
action = "wait"
with = { duration = "{{ params.hold }}" }

[[steps]]
id = "tick"
action = "noop"

[[steps]]
id = "again"
action = "exec"
idempotent = true
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "again", "{{ params.out }}"] }

[[steps]]
id = "nap"
action = "wait"
with = { duration = "{{ params.nap }}" }

[[steps]]
id = "tock"
action = "noop"

[[steps]]
id = "last"
action = "exec"
with = { command = ["@STEP@", "@WORK@/{{ run.id }}.marker", "last", "0"] }
"#;

const PROBE: &str = r#"
name = "crash-probe"
description = "takes one resource of the pool, does nothing"
locks = ["crash:{{ params.res }}"]
[params.res]
required = true
[[steps]]
id = "tick"
action = "noop"
"#;

const EXEC_STEPS: [&str; 3] = ["first", "again", "last"];
const NON_IDEMPOTENT: [&str; 2] = ["first", "last"];

fn now() -> DateTime<Utc> {
    SystemTime::now().into()
}

fn instant(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

struct Run {
    runbook: String,
    /// `start` answered with its id (otherwise the test found it in a listing).
    acknowledged: bool,
    /// Its final state, once seen.
    ended: Option<String>,
}

/// A start refused because a resource is held: the holder must exist and be unfinished.
struct Refusal {
    resource: String,
    holder: String,
    asked: DateTime<Utc>,
    what: String,
}

#[derive(Default)]
struct Tally {
    kills: u64,
    kills_during_starts: u64,
    kills_on_sled_write: u64,
    failpoint_crashes: u64,
    failpoint_not_reached: u64,
    restarts: u64,
    starts_acknowledged: u64,
    starts_lost: u64,
    refusals_checked: u64,
    probes_accepted: u64,
    /// `(run, step)` → `retry`s the test asked for (and the daemon acknowledged).
    retries: BTreeMap<(String, String), u32>,
    /// Bytes sled's files grew by while the daemon ran (no checkpoint runs then).
    sled_growth: u64,
    lifetimes_measured: u64,
    lifetimes_grown: u64,
    evidence_copies: u64,
    evidence_ahead: u64,
    evidence: Vec<String>,
    /// Time spent restarting the daemon, checking, and in `store verify`.
    restarting: Duration,
    checking: Duration,
    verifying: Duration,
    verified: u64,
}

struct Load {
    daemon: Daemon,
    work: tempfile::TempDir,
    rng: Rng,
    kills: u64,
    runs: BTreeMap<String, Run>,
    journals: HashMap<String, Vec<Value>>,
    refusals: Vec<Refusal>,
    tally: Tally,
    violations: Vec<String>,
    orphan_locks: BTreeSet<(String, String)>,
    stuck: BTreeSet<String>,
    /// When the running daemon answered, and what sled's files weighed then.
    up_since: DateTime<Utc>,
    sled_at_start: u64,
    /// Runs waiting without a timer: the (state, step) first seen, and since when, in this
    /// daemon's life.
    idle: HashMap<String, (String, DateTime<Utc>)>,
    sample: usize,
    /// Runs started (acknowledged or lost) toward the budget.
    started: u64,
}

#[test]
fn crashes_under_load_leave_only_whole_commits() -> Result<()> {
    let kills = env_number("RUNBOOK_CRASH_KILLS")?.unwrap_or(100);
    let seed = seed_from("RUNBOOK_CRASH_SEED")?;
    println!("crash load: seed {seed} (replay: RUNBOOK_CRASH_SEED={seed}), {kills} kills");
    // The shims of a killed daemon become our children, so that we can reap them.
    become_subreaper()?;
    let started = Instant::now();
    let mut load = Load::new(seed, kills)?;
    let result = load.run();
    for _ in 0..20 {
        load.daemon.reap_orphans();
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "crash load: {:.1?} (seed {seed}): {}",
        started.elapsed(),
        load.summary()
    );
    for line in &load.tally.evidence {
        println!("  evidence: {line}");
    }
    if let Err(error) = result {
        bail!(
            "crash load stopped (seed {seed}, after {} kills): {error:#}\n{}",
            load.tally.kills,
            load.violations.join("\n")
        );
    }
    if !load.violations.is_empty() {
        bail!(
            "crash load (seed {seed}): {} violations, {} orphan locks, {} stuck runs:\n{}",
            load.violations.len(),
            load.orphan_locks.len(),
            load.stuck.len(),
            load.violations.join("\n")
        );
    }
    Ok(())
}

impl Load {
    fn new(seed: u64, kills: u64) -> Result<Load> {
        let work = tempfile::Builder::new()
            .prefix("runbook-crash-load-")
            .tempdir()?;
        let script = work.path().join("step.sh");
        std::fs::write(&script, STEP_SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let text = |name: &str, locks: &str| {
            RUNBOOK
                .replace("@NAME@", name)
                .replace("@LOCKS@", locks)
                .replace("@STEP@", &script.display().to_string())
                .replace("@WORK@", &work.path().display().to_string())
        };
        let locked = text("crash-locked", r#"locks = ["crash:{{ params.res }}"]"#);
        let free = text("crash-free", "");
        let daemon = Daemon::start_with_runbooks(&[
            ("crash-locked.toml", &locked),
            ("crash-free.toml", &free),
            ("crash-probe.toml", PROBE),
        ])?;
        let mut load = Load {
            daemon,
            work,
            rng: Rng::new(seed),
            kills,
            runs: BTreeMap::new(),
            journals: HashMap::new(),
            refusals: Vec::new(),
            tally: Tally::default(),
            violations: Vec::new(),
            orphan_locks: BTreeSet::new(),
            stuck: BTreeSet::new(),
            up_since: now(),
            sled_at_start: 0,
            idle: HashMap::new(),
            sample: 0,
            started: 0,
        };
        load.sled_at_start = load.sled_bytes();
        Ok(load)
    }

    fn run(&mut self) -> Result<()> {
        for kill in 0..self.kills {
            if self.rng.chance(KILL_DURING_STARTS_PERCENT) {
                let after = Duration::from_millis(self.rng.between(0, 300));
                self.top_up(kill, Some(after), false)?;
                self.tally.kills_during_starts += 1;
            } else if self.rng.chance(KILL_ON_SLED_WRITE_PERCENT) {
                self.top_up(kill, None, false)?;
                let wrote = self.wait_for_sled_write(Duration::from_millis(1500));
                std::thread::sleep(Duration::from_micros(self.rng.between(0, 2000)));
                self.kill()?;
                self.tally.kills_on_sled_write += u64::from(wrote);
            } else {
                self.top_up(kill, None, false)?;
                std::thread::sleep(Duration::from_millis(self.rng.between(50, 700)));
                self.kill()?;
            }
            if self.rng.chance(FAILPOINT_PERCENT) {
                self.failpoint_crash(kill)?;
            }
            self.restart()?;
            self.check()?;
            if (kill + 1).is_multiple_of(SETTLE_EVERY) {
                self.settle()?;
            }
            if (kill + 1).is_multiple_of(25) || kill + 1 == self.kills {
                println!("  {}", self.summary());
            }
        }
        self.drain()?;
        // The locks once more, with every run ended: a refusal now names a finished run.
        self.probe_locks()?;
        self.drain()?;
        self.final_checks()
    }

    fn socket(&self) -> PathBuf {
        self.daemon.socket()
    }

    fn violation(&mut self, text: String) {
        if !self.violations.contains(&text) {
            println!("  VIOLATION (kill {}): {text}", self.tally.kills);
            self.violations.push(text);
        }
    }

    /// The size of sled's own files (its log `db` and its blobs), not the write-ahead log's.
    fn sled_bytes(&self) -> u64 {
        let store = self.daemon.data_dir.join("store");
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
        let blobs: u64 = std::fs::read_dir(store.join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| size(&entry.path()))
            .sum();
        size(&store.join("db")) + blobs
    }

    /// Waits until sled's log file changes (size or modification time), at most `limit`.
    fn wait_for_sled_write(&self, limit: Duration) -> bool {
        let db = self.daemon.data_dir.join("store").join("db");
        let look = || {
            std::fs::metadata(&db)
                .ok()
                .map(|meta| (meta.len(), meta.modified().ok()))
        };
        let before = look();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if look() != before {
                return true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    }

    /// `kill -9` of the running daemon, after noting how much sled wrote while it ran.
    fn kill(&mut self) -> Result<()> {
        if self.daemon.exited() {
            bail!(
                "the daemon exited by itself (a crash, not a kill); its log:\n{}",
                tail(&self.daemon.log())
            );
        }
        let grown = self.sled_bytes().saturating_sub(self.sled_at_start);
        self.daemon.kill9();
        self.tally.kills += 1;
        self.tally.lifetimes_measured += 1;
        if grown > 0 {
            self.tally.lifetimes_grown += 1;
            self.tally.sled_growth += grown;
        }
        self.daemon.reap_orphans();
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        let begun = Instant::now();
        self.daemon
            .restart()
            .with_context(|| format!("restart after kill {}", self.tally.kills))?;
        self.tally.restarts += 1;
        self.up_since = now();
        self.idle.clear();
        self.sled_at_start = self.sled_bytes();
        self.tally.restarting += begun.elapsed();
        Ok(())
    }

    /// Restarts the daemon armed to kill itself at the n-th batch the writer applied, under a
    /// burst of starts; then looks at what sled holds against the write-ahead log.
    fn failpoint_crash(&mut self, kill: u64) -> Result<()> {
        let skip = self.rng.between(0, 12).to_string();
        self.daemon.set_env(&[
            ("RUNBOOK_FAILPOINT", "StagedBeforeSync"),
            ("RUNBOOK_FAILPOINT_SKIP", &skip),
        ]);
        let restarted = self.daemon.restart();
        self.daemon.set_env(&[]);
        if restarted.is_ok() {
            self.top_up(kill, None, true)?;
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.daemon.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !self.daemon.exited() {
                self.tally.failpoint_not_reached += 1;
                self.daemon.kill9();
                self.daemon.reap_orphans();
                return Ok(());
            }
        } else if !self.daemon.exited() {
            return restarted.context("restart armed with a failpoint");
        }
        self.tally.failpoint_crashes += 1;
        self.daemon.reap_orphans();
        if self.tally.evidence_copies < EVIDENCE_COPIES {
            self.tally.evidence_copies += 1;
            let store = self.daemon.data_dir.join("store");
            match indexes_of_copy(&store) {
                Ok(problems) if problems.is_empty() => {}
                Ok(problems) => {
                    self.tally.evidence_ahead += 1;
                    let crash = self.tally.failpoint_crashes;
                    for problem in problems {
                        self.violation(format!(
                            "failpoint crash {crash}: the store as the crash left it: {problem}"
                        ));
                    }
                }
                Err(error) => self
                    .tally
                    .evidence
                    .push(format!("cannot read the store's copy: {error:#}")),
            }
        }
        Ok(())
    }

    /// Starts runs (in parallel, as separate clients would) up to the budget for this kill.
    /// With `kill_after`, the daemon is killed that long after the starts were sent; with
    /// `dying`, it is expected to kill itself. Either way a start may then go unanswered.
    fn top_up(&mut self, kill: u64, kill_after: Option<Duration>, dying: bool) -> Result<()> {
        let budget = self.kills * RUNS_PER_KILL;
        let allowed = budget * (kill + 1) / self.kills.max(1);
        let active = self.runs.values().filter(|run| run.ended.is_none()).count();
        let count = (ACTIVE_RUNS.saturating_sub(active) as u64)
            .min(allowed.saturating_sub(self.started))
            .min(16);
        let mut bodies = Vec::new();
        for _ in 0..count {
            let locked = self.rng.chance(70);
            let size = self.rng.between(64 << 10, 120 << 10) as usize;
            let mut blob = String::with_capacity(size + 8);
            while blob.len() < size {
                let word = self.rng.next_u64();
                blob.extend((0..8).map(|byte| char::from(b'a' + (word >> (byte * 8)) as u8 % 26)));
            }
            let body = json!({
                "runbook": if locked { "crash-locked" } else { "crash-free" },
                "params": {
                    "res": format!("r{}", self.rng.between(0, POOL - 1)),
                    "blob": blob,
                    "out": self.rng.between(1 << 10, 16 << 10).to_string(),
                    "hold": format!("{}ms", self.rng.between(100, 2000)),
                    "nap": format!("{}ms", self.rng.between(100, 2000)),
                },
                "comment": "crash load",
            });
            bodies.push((
                body["runbook"].as_str().unwrap_or_default().to_owned(),
                body,
            ));
        }
        let socket = self.socket();
        let asked = now();
        let answers: Vec<(String, Result<Value>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = bodies
                .iter()
                .map(|(runbook, body)| {
                    let socket = socket.clone();
                    let body = body.to_string();
                    let runbook = runbook.clone();
                    scope.spawn(move || (runbook, start(&socket, &body)))
                })
                .collect();
            if let Some(after) = kill_after {
                std::thread::sleep(after);
            }
            let killed = match kill_after {
                Some(_) => self.kill(),
                None => Ok(()),
            };
            let answers = handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| (String::new(), Err(anyhow!("the thread panicked"))))
                })
                .collect();
            killed.map(|()| answers)
        })?;
        let unanswered_ok = kill_after.is_some() || dying;
        for (runbook, answer) in answers {
            match answer {
                Ok(answer) => self.answered(&runbook, answer, asked, "a start")?,
                Err(error) if unanswered_ok => {
                    let _ = error;
                    self.started += 1;
                    self.tally.starts_lost += 1;
                }
                Err(error) => return Err(error.context(format!("starting {runbook}"))),
            }
        }
        Ok(())
    }

    /// Books the answer of a start: a new run, or a refusal to check.
    fn answered(
        &mut self,
        runbook: &str,
        answer: Value,
        asked: DateTime<Utc>,
        what: &str,
    ) -> Result<()> {
        if let Some(id) = answer["id"].as_str() {
            self.started += u64::from(runbook != "crash-probe");
            self.tally.starts_acknowledged += 1;
            self.runs.insert(
                id.to_owned(),
                Run {
                    runbook: runbook.to_owned(),
                    acknowledged: true,
                    ended: None,
                },
            );
            return Ok(());
        }
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        let Some((resource, holder)) = parse_refusal(message) else {
            bail!("{what} of {runbook} was refused for another reason than a lock: {answer}");
        };
        self.refusals.push(Refusal {
            resource,
            holder,
            asked,
            what: format!("{what} of {runbook}"),
        });
        Ok(())
    }

    /// Probes every resource of the pool with a start that takes it.
    fn probe_locks(&mut self) -> Result<()> {
        let socket = self.socket();
        let asked = now();
        let answers: Vec<Result<Value>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..POOL)
                .map(|resource| {
                    let socket = socket.clone();
                    scope.spawn(move || {
                        let body = json!({"runbook": "crash-probe", "params": {"res": format!("r{resource}")}});
                        start(&socket, &body.to_string())
                            .with_context(|| format!("probing crash:r{resource}"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(anyhow!("the thread panicked")))
                })
                .collect()
        });
        for answer in answers {
            let answer = answer?;
            if answer["id"].is_string() {
                self.tally.probes_accepted += 1;
            }
            self.answered("crash-probe", answer, asked, "a probe")?;
        }
        Ok(())
    }

    /// Every check after a restart.
    fn check(&mut self) -> Result<()> {
        let begun = Instant::now();
        self.probe_locks()?;
        let listing = self.listing()?;
        self.check_listing(&listing)?;
        self.check_refusals(&listing)?;
        self.check_markers(&listing);
        self.check_sample()?;
        if self.tally.restarts.is_multiple_of(VERIFY_EVERY) {
            self.verify()?;
        }
        self.tally.checking += begun.elapsed();
        Ok(())
    }

    /// `runbook store verify` must call the store sound.
    fn verify(&mut self) -> Result<()> {
        let verifying = Instant::now();
        let verify = self.daemon.cli(&["store", "verify"])?;
        self.tally.verifying += verifying.elapsed();
        self.tally.verified += 1;
        if !verify.status.success() {
            self.violation(format!(
                "runbook store verify failed ({}): {}{}",
                verify.status,
                String::from_utf8_lossy(&verify.stdout),
                String::from_utf8_lossy(&verify.stderr)
            ));
        }
        Ok(())
    }

    /// Every run the store holds, by id (`GET /v1/runs?all=true`, page by page).
    fn listing(&self) -> Result<BTreeMap<String, Value>> {
        let mut runs = BTreeMap::new();
        let mut path = "/v1/runs?all=true&limit=1000".to_owned();
        loop {
            let response = self.daemon.api("GET", &path, None)?;
            if response.status != 200 {
                bail!("GET {path}: HTTP {}: {}", response.status, response.text());
            }
            let listed = response.json()?;
            runs.extend(
                listed["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|run| Some((run["id"].as_str()?.to_owned(), run.clone()))),
            );
            match listed["next_cursor"].as_str() {
                Some(cursor) => path = format!("/v1/runs?all=true&limit=1000&cursor={cursor}"),
                None => return Ok(runs),
            }
        }
    }

    /// Acknowledged runs exist; runs found that were not acknowledged are taken in; stuck runs
    /// are reported; interrupted steps are retried as an operator would.
    fn check_listing(&mut self, listing: &BTreeMap<String, Value>) -> Result<()> {
        let missing: Vec<(String, String)> = self
            .runs
            .iter()
            .filter(|(id, _)| !listing.contains_key(*id))
            .map(|(id, run)| (id.clone(), run.runbook.clone()))
            .collect();
        for (id, runbook) in missing {
            if self.runs[&id].acknowledged {
                self.violation(format!(
                    "run {id} ({runbook}), whose start was acknowledged, is missing after restart {}",
                    self.tally.restarts
                ));
            } else {
                // Seen in a listing before its start was durable; the crash took it whole.
                self.runs.remove(&id);
            }
        }
        let at = now();
        for (id, summary) in listing {
            let state = summary["state"].as_str().unwrap_or_default().to_owned();
            let run = self.runs.entry(id.clone()).or_insert_with(|| Run {
                runbook: summary["runbook"].as_str().unwrap_or_default().to_owned(),
                acknowledged: false,
                ended: None,
            });
            if summary["finished_at"].is_string() {
                run.ended = Some(state.clone());
                continue;
            }
            let reason = summary["reason"].as_str().unwrap_or_default().to_owned();
            let step = summary["current_step"].as_str().unwrap_or("-").to_owned();
            match state.as_str() {
                "needs_attention" if matches!(reason.as_str(), "interrupted" | "step_failed") => {
                    self.operator_retry(id, &reason)?;
                }
                "needs_attention" | "paused" => {
                    self.violation(format!(
                        "run {id} is {state} ({reason}) at step {step}: {summary}"
                    ));
                }
                "waiting" => self.check_waiting(id, summary, &step, at),
                _ => {}
            }
        }
        Ok(())
    }

    /// A waiting run has a timer that fires on time, or leaves the state soon.
    fn check_waiting(&mut self, id: &str, summary: &Value, step: &str, at: DateTime<Utc>) {
        let up = at - self.up_since;
        let grace = chrono::Duration::from_std(GRACE).unwrap_or_default();
        match instant(&summary["next_wakeup"]) {
            Some(deadline) => {
                self.idle.remove(id);
                let overdue = at - deadline.max(self.up_since);
                if overdue > grace && self.stuck.insert(id.to_owned()) {
                    let journal = self.journal_end(id);
                    self.violation(format!(
                        "stuck run {id}: waits at step {step} on a timer due at {deadline}, {:.1} s ago, with the daemon up for {:.1} s; its journal ends {journal}",
                        (at - deadline).num_milliseconds() as f64 / 1000.0,
                        up.num_milliseconds() as f64 / 1000.0
                    ));
                }
            }
            None => {
                let since = self
                    .idle
                    .entry(id.to_owned())
                    .or_insert_with(|| (step.to_owned(), at));
                if since.0 != step {
                    *since = (step.to_owned(), at);
                }
                let idle_for = at - since.1;
                if idle_for > grace && self.stuck.insert(id.to_owned()) {
                    let journal = self.journal_end(id);
                    self.violation(format!(
                        "stuck run {id}: waiting at step {step} with no timer for {:.1} s, with the daemon up for {:.1} s; its journal ends {journal}",
                        idle_for.num_milliseconds() as f64 / 1000.0,
                        up.num_milliseconds() as f64 / 1000.0
                    ));
                }
            }
        }
    }

    /// The kinds (and steps) of a run's last events, for a message.
    fn journal_end(&self, id: &str) -> String {
        match self.daemon.events(id) {
            Ok(events) => {
                let end: Vec<String> = events[events.len().saturating_sub(4)..]
                    .iter()
                    .map(|event| {
                        format!(
                            "{} {}{}",
                            event["seq"],
                            event["kind"].as_str().unwrap_or("?"),
                            event["step"]
                                .as_str()
                                .map(|step| format!(" {step}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                format!("[{}]", end.join(", "))
            }
            Err(error) => format!("(unreadable: {error:#})"),
        }
    }

    fn operator_retry(&mut self, id: &str, reason: &str) -> Result<()> {
        let shown = self.daemon.show(id)?;
        let Some(step) = shown["attention"]["step"].as_str() else {
            self.violation(format!("run {id} needs attention for no step: {shown}"));
            return Ok(());
        };
        let step = step.to_owned();
        let output = self.daemon.cli(&[
            "retry",
            id,
            &step,
            "--comment",
            &format!("crash load: {reason}"),
        ])?;
        if !output.status.success() {
            bail!(
                "runbook retry {id} {step} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        *self.tally.retries.entry((id.to_owned(), step)).or_default() += 1;
        Ok(())
    }

    /// A refused start named a holder that exists and had not finished when it was refused.
    fn check_refusals(&mut self, listing: &BTreeMap<String, Value>) -> Result<()> {
        for refusal in std::mem::take(&mut self.refusals) {
            self.tally.refusals_checked += 1;
            let Refusal {
                resource,
                holder,
                asked,
                what,
            } = refusal;
            let summary = match listing.get(&holder) {
                Some(summary) => summary.clone(),
                None => {
                    let response = self
                        .daemon
                        .api("GET", &format!("/v1/runs/{holder}"), None)?;
                    if response.status == 200 {
                        response.json()?
                    } else {
                        let cancel = self.daemon.cli(&["cancel", &holder])?;
                        if self.orphan_locks.insert((resource.clone(), holder.clone())) {
                            self.violation(format!(
                                "orphan lock: {what} was refused because {resource:?} is held by run {holder}, which does not exist (GET /v1/runs/{holder}: HTTP {}: {}; runbook cancel: {})",
                                response.status,
                                response.text(),
                                String::from_utf8_lossy(&cancel.stderr).trim()
                            ));
                        }
                        continue;
                    }
                }
            };
            if let Some(finished) = instant(&summary["finished_at"]) {
                if finished < asked - chrono::Duration::milliseconds(REFUSAL_SLACK_MS)
                    && self.orphan_locks.insert((resource.clone(), holder.clone()))
                {
                    self.violation(format!(
                        "orphan lock: {what} was refused at {asked} because {resource:?} is held by run {holder}, which finished ({}) at {finished}",
                        summary["state"]
                    ));
                }
            }
        }
        Ok(())
    }

    /// No step ran more often than its calls allow, and no command ran for a run the store does
    /// not hold.
    fn check_markers(&mut self, listing: &BTreeMap<String, Value>) {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(self.work.path()).into_iter().flatten() {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".marker") {
                found.push((id.to_owned(), entry.path()));
            }
        }
        for (id, path) in found {
            if !listing.contains_key(&id) {
                self.violation(format!(
                    "a command of run {id} ran ({:?}), but the store holds no such run",
                    lines(&path.display().to_string())
                ));
                continue;
            }
            let marks = lines(&path.display().to_string());
            for step in NON_IDEMPOTENT {
                let ran = marks.iter().filter(|mark| *mark == step).count() as u32;
                let retries = self
                    .tally
                    .retries
                    .get(&(id.clone(), step.to_owned()))
                    .copied()
                    .unwrap_or(0);
                if ran > 1 + retries {
                    self.violation(format!(
                        "run {id}: non-idempotent step {step} ran {ran} times with {retries} operator retries"
                    ));
                }
            }
        }
    }

    /// The journals of a few runs (a different few each time) extend what was read before.
    fn check_sample(&mut self) -> Result<()> {
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        for _ in 0..ids.len().min(4) {
            self.sample = (self.sample + 1) % ids.len();
            self.check_journal(&ids[self.sample])?;
        }
        Ok(())
    }

    fn check_journal(&mut self, id: &str) -> Result<Vec<Value>> {
        let events = self.daemon.events(id)?;
        let seen = self.journals.get(id).map(Vec::as_slice).unwrap_or_default();
        if let Err(error) = check_journal_extends(id, seen, &events) {
            self.violation(format!("{error:#}"));
            return Ok(events);
        }
        self.journals.insert(id.to_owned(), events.clone());
        Ok(events)
    }

    /// Leaves the daemon alone (but for the operator's retries) long enough that a timer that
    /// does not fire, or a run that waits for nothing, shows.
    fn settle(&mut self) -> Result<()> {
        let until = Instant::now() + GRACE + Duration::from_secs(2);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(500));
            let listing = self.listing()?;
            self.check_listing(&listing)?;
        }
        Ok(())
    }

    /// No more kills: every run ends (those found stuck are not waited for).
    fn drain(&mut self) -> Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let listing = self.listing()?;
            self.check_listing(&listing)?;
            let open: Vec<String> = self
                .runs
                .iter()
                .filter(|(id, run)| run.ended.is_none() && !self.stuck.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            if open.is_empty() {
                return self.check_refusals(&listing);
            }
            if Instant::now() > deadline {
                for id in &open {
                    let summary = listing.get(id).cloned().unwrap_or_default();
                    self.stuck.insert(id.clone());
                    self.violation(format!(
                        "stuck run {id}: not ended {DRAIN_TIMEOUT:?} after the last kill: {summary}"
                    ));
                }
                return self.check_refusals(&listing);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn final_checks(&mut self) -> Result<()> {
        self.verify()?;
        let listing = self.listing()?;
        self.check_markers(&listing);
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        for id in ids {
            let events = self.check_journal(&id)?;
            let finished = events
                .iter()
                .rev()
                .find(|event| event["kind"] == "run_finished")
                .map(|event| event["state"].as_str().unwrap_or("?").to_owned());
            if self.stuck.contains(&id) {
                if let Some(state) = &finished {
                    // A run reported stuck that moved on later: the report was too hasty.
                    println!("  note: run {id}, reported stuck, ended {state} later");
                }
            } else if finished.as_deref() != Some("succeeded") {
                self.violation(format!("run {id} ended {finished:?}, not succeeded"));
            }
            let mut journaled: BTreeMap<String, u32> = BTreeMap::new();
            for event in events
                .iter()
                .filter(|event| event["kind"] == "retry_requested")
            {
                let step = event["step"].as_str().unwrap_or_default().to_owned();
                *journaled.entry(step).or_default() += 1;
            }
            let asked: BTreeMap<String, u32> = self
                .tally
                .retries
                .iter()
                .filter(|((run, _), _)| *run == id)
                .map(|((_, step), count)| (step.clone(), *count))
                .collect();
            if journaled != asked {
                self.violation(format!(
                    "run {id}: journaled retries {journaled:?}, the test asked for {asked:?}"
                ));
            }
            // Each execution of a command is a call the journal started.
            let marks = lines(
                &self
                    .work
                    .path()
                    .join(format!("{id}.marker"))
                    .display()
                    .to_string(),
            );
            for step in EXEC_STEPS {
                let ran = marks.iter().filter(|mark| *mark == step).count();
                let calls = events
                    .iter()
                    .filter(|event| event["kind"] == "step_started" && event["step"] == step)
                    .count();
                if ran > calls {
                    self.violation(format!(
                        "run {id}: step {step} ran {ran} times for {calls} journaled calls"
                    ));
                }
            }
        }
        Ok(())
    }

    fn summary(&self) -> String {
        let events = || self.journals.values().flatten();
        let count = |kind: &str| events().filter(|event| event["kind"] == kind).count();
        let marks: usize = std::fs::read_dir(self.work.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".marker"))
            .map(|entry| lines(&entry.path().display().to_string()).len())
            .sum();
        format!(
            "{} random kills ({} during starts, {} right after sled wrote), {} failpoint crashes ({} restarts armed that did not reach it), \
             {} restarts checked; {} runs ({} acknowledged starts, {} unanswered, {} probes got their lock), \
             {} lock refusals checked; {} steps succeeded, {marks} commands ran, {} operator retries; \
             {} orphan locks, {} stuck runs, {} violations; sled's files grew {:.1} MiB while no checkpoint ran \
             (in {} of {} daemon lives){}; time restarting {:.1?}, checking {:.1?} (store verify {:.1?}, {} times)",
            self.tally.kills,
            self.tally.kills_during_starts,
            self.tally.kills_on_sled_write,
            self.tally.failpoint_crashes,
            self.tally.failpoint_not_reached,
            self.tally.restarts,
            self.runs.len(),
            self.tally.starts_acknowledged,
            self.tally.starts_lost,
            self.tally.probes_accepted,
            self.tally.refusals_checked,
            count("step_succeeded"),
            self.tally.retries.values().sum::<u32>(),
            self.orphan_locks.len(),
            self.stuck.len(),
            self.violations.len(),
            self.tally.sled_growth as f64 / f64::from(1 << 20),
            self.tally.lifetimes_grown,
            self.tally.lifetimes_measured,
            if self.tally.evidence_copies > 0 {
                format!(
                    "; {} of {} stores copied after a failpoint crash had a derived index that disagrees with the runs",
                    self.tally.evidence_ahead, self.tally.evidence_copies
                )
            } else {
                String::new()
            },
            self.tally.restarting,
            self.tally.checking,
            self.tally.verifying,
            self.tally.verified,
        )
    }
}

/// `POST /v1/runs`: the created run (201) or the error (409: the `error` object). A lost
/// connection is an `Err`.
fn start(socket: &Path, body: &str) -> Result<Value> {
    let response = http(socket, "POST", "/v1/runs", Some(body.as_bytes()))?;
    match response.status {
        201 | 409 => response.json(),
        status => bail!("POST /v1/runs: HTTP {status}: {}", response.text()),
    }
}

/// `resource "crash:r3" is held by run <id>; ...` → (resource, holder).
fn parse_refusal(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("resource \"")?;
    let (resource, rest) = rest.split_once('"')?;
    let holder = rest.strip_prefix(" is held by run ")?;
    let holder: String = holder
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
        .collect();
    Some((resource.to_owned(), holder))
}

/// Opens a copy of a crashed store as it is (its log replayed, its indexes not repaired) and
/// returns what its index check finds.
fn indexes_of_copy(store: &Path) -> Result<Vec<String>> {
    use runbook_engine::store::{SledStore, Store};
    let copy = tempfile::Builder::new()
        .prefix("runbook-crash-store-")
        .tempdir()?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(store)
        .arg(copy.path())
        .status()?;
    if !status.success() {
        bail!("cp -a {} failed: {status}", store.display());
    }
    let opened = SledStore::open_unrepaired(&copy.path().join("store"))?;
    Ok(opened.check()?)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
