//! The imperative shell around the state machine.
//!
//! For every input of a run: take the run's lock, `decide`, journal the events (one commit,
//! durable), adopt the new state, and only then run the effects. Action results, timer firings
//! and operator requests all come back through [`Engine::handle`].
//!
//! # Contract
//!
//! - An effect runs only after the commit of the events that imply it is durable.
//! - Inputs of one run are handled one at a time, in order; different runs commit concurrently
//!   and share syncs (group commit in [`crate::store::Writer`]).
//! - A run whose records cannot be read is reported `corrupt` and never touched; the others go on.
//! - Only runs being worked on are held in memory: a parked run ([`RunState::is_parked`]) is
//!   dropped from memory once nobody uses it, and read back from the store when an input (its
//!   timer, an operator) or a reader needs it. Start-up loads only the runs that are not parked.

mod access;
mod archiver;
mod calls;
mod check;
mod lifecycle;
mod outbox;
mod plan;
mod reads;
mod resident;
mod retention;
mod schedules;
mod timers;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock};

use serde_json::{Map, Value};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::action::{ActionContext, LogSink, Recorder, Registry};
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::definition::{self, Definition};
use crate::machine::{
    self, ActionFailure, Actor, Call, CallId, Decision, Effect, Input, Rejection, RunState,
};
use crate::schedule::Schedule;
use crate::store::{self, Commit, Writer};
pub use access::{Refusal, TokenView};
pub use archiver::run_archiver;
pub use check::{check, CheckLimits, CheckSummary, StepCheck};
pub use outbox::run_outbox;
pub use plan::{plan, Plan, PlannedStep};
pub use resident::Resident;
pub use retention::{run_collector, Collected};
pub use schedules::{Backfill, ScheduleSpec, BACKFILL_LIMIT};
pub use timers::run_timers;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{message}")]
    Invalid {
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    Conflict(String),
    /// The caller's role or runbook scope does not allow it.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<store::Error> for Error {
    fn from(error: store::Error) -> Error {
        match error {
            store::Error::LockHeld { resource, holder } => Error::Conflict(format!(
                "resource {resource:?} is held by run {holder}; wait for it to end or cancel it"
            )),
            store::Error::Claimed { claim, holder } => {
                Error::Conflict(format!("{claim} was already launched as run {holder}"))
            }
            store::Error::Full(_) | store::Error::Closed => {
                Error::Unavailable(format!("{error}; nothing was changed"))
            }
            // The PostgreSQL store's database is away, or another daemon holds the store.
            store::Error::Io {
                kind: std::io::ErrorKind::NotConnected | std::io::ErrorKind::PermissionDenied,
                ..
            } => Error::Unavailable(format!("{error}; nothing was changed")),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<Rejection> for Error {
    fn from(rejection: Rejection) -> Error {
        match rejection {
            Rejection::NotFound(message) => Error::NotFound(message),
            Rejection::Conflict(message) => Error::Conflict(message),
            Rejection::Forbidden(message) => Error::Forbidden(message),
            Rejection::Invalid { message, field } => Error::Invalid {
                message,
                field: Some(field),
            },
        }
    }
}

struct Inner {
    writer: Writer,
    clock: Arc<dyn Clock>,
    actions: Registry,
    catalog: Catalog,
    schedules: Mutex<BTreeMap<String, Schedule>>,
    /// Users and tokens, read on every request over TCP.
    access: RwLock<access::AccessTable>,
    /// Held by a change to users or tokens: one at a time.
    access_writes: Mutex<()>,
    data_dir: PathBuf,
    /// The runs held in memory (see the contract above), each behind its own lock.
    runs: RwLock<HashMap<Uuid, Arc<Mutex<Resident>>>>,
    calls: StdMutex<HashMap<(Uuid, CallId), CancellationToken>>,
    timer_wake: Notify,
    /// How late each timer fired (deadline → firing), for `/metrics`.
    timer_lateness: crate::histogram::Histogram,
    /// How long each step took, first start to end (`/metrics`).
    step_duration: crate::histogram::Histogram,
    /// Failed step attempts by runbook, since the daemon started (`/metrics`).
    step_failures: StdMutex<BTreeMap<String, u64>>,
    /// The notification sinks (`--notify`), set once before recovery.
    notify: std::sync::OnceLock<Arc<crate::notify::Config>>,
    /// Wakes the outbox's delivery task after a commit that made entries.
    outbox_wake: Notify,
    accepting: AtomicBool,
    /// Cancelled at shutdown: no new action call starts (see [`ActionContext::draining`]).
    draining: CancellationToken,
    /// The short tasks that commit on their own (a run's next step, a schedule's hook, the
    /// reload after a reopen): shutdown waits for them before the final checkpoint.
    tasks: tokio_util::task::TaskTracker,
    /// Held by the collection under way: one at a time (the background collector and
    /// `store gc` would otherwise compete for the writer).
    collecting: Mutex<()>,
}

/// A cheap, cloneable handle to the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Loads the runs that are not parked from the store. Call [`Engine::recover`] next, then
    /// start the timers.
    pub fn open(
        writer: Writer,
        clock: Arc<dyn Clock>,
        catalog: Catalog,
        data_dir: &Path,
    ) -> Result<Engine, Error> {
        let mut schedules = BTreeMap::new();
        for loaded in writer.store().load_schedules()? {
            match loaded {
                Ok(schedule) => {
                    let schedule = schedule.upgrade();
                    schedules.insert(schedule.name.clone(), schedule);
                }
                Err(error) => tracing::error!(%error, "a schedule is corrupt; it is left out"),
            }
        }
        let access = access::AccessTable::load(writer.store().as_ref())?;
        // The runs that are not parked: those the daemon works on. One that cannot be read
        // is kept as such, and never hides the others.
        let mut runs = HashMap::new();
        let store = writer.store();
        for run_id in store.active_run_ids()? {
            if let Some(resident) = Resident::from_read(run_id, store.load_run(run_id)) {
                runs.insert(run_id, Arc::new(Mutex::new(resident)));
            }
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                writer,
                clock,
                actions: catalog.actions().clone(),
                catalog,
                schedules: Mutex::new(schedules),
                access: RwLock::new(access),
                access_writes: Mutex::new(()),
                data_dir: data_dir.to_owned(),
                runs: RwLock::new(runs),
                calls: StdMutex::new(HashMap::new()),
                timer_wake: Notify::new(),
                timer_lateness: crate::histogram::Histogram::default(),
                step_duration: crate::histogram::Histogram::with_bounds(
                    &crate::histogram::LONG_BOUNDS,
                ),
                step_failures: StdMutex::new(BTreeMap::new()),
                notify: std::sync::OnceLock::new(),
                outbox_wake: Notify::new(),
                accepting: AtomicBool::new(true),
                draining: CancellationToken::new(),
                tasks: tokio_util::task::TaskTracker::new(),
                collecting: Mutex::new(()),
            }),
        })
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Cancelled when the daemon begins to shut down (a check stops calling actions then).
    pub fn draining(&self) -> CancellationToken {
        self.inner.draining.clone()
    }

    pub fn actions(&self) -> &Registry {
        &self.inner.actions
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    /// Stops taking new runs and operator requests, and starts no new action call (shutdown).
    /// Calls already running are left to their supervisors; a call that would start now is left
    /// as journaled (started, never released) and is started again after the restart.
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        self.inner.draining.cancel();
    }

    /// Runs `task` as one of the tasks shutdown waits for (see [`Engine::settle`]).
    pub fn spawn_tracked(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.tasks.spawn(task);
    }

    /// At shutdown, after [`Engine::stop_accepting`]: waits until every tracked task has
    /// ended. None starts a next step any more (the restarted daemon continues each run), so
    /// this ends as soon as the steps being decided are committed.
    pub async fn settle(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Starts a run of `definition`.
    pub async fn create_run(
        &self,
        definition: Arc<Definition>,
        given: &Map<String, Value>,
        by: Actor,
        comment: Option<String>,
    ) -> Result<RunState, Error> {
        match self
            .create_claimed_run(definition, given, by, comment, None)
            .await?
        {
            Ok(state) => Ok(state),
            Err(holder) => Err(Error::Internal(format!("unexpected claim holder {holder}"))),
        }
    }

    /// Starts a run of `definition` that takes `claim` for good in its first commit (a
    /// schedule's instant): `Ok(Err(holder))` when another run took it already, so that an
    /// instant is never launched twice, whatever crashed in between.
    pub async fn create_claimed_run(
        &self,
        definition: Arc<Definition>,
        given: &Map<String, Value>,
        by: Actor,
        comment: Option<String>,
        claim: Option<String>,
    ) -> Result<Result<RunState, Uuid>, Error> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(
                "the daemon is shutting down; no new runs".to_owned(),
            ));
        }
        definition::validate(&definition, &|name| self.inner.actions.contains(name)).map_err(
            |error| Error::Invalid {
                message: error.to_string(),
                field: Some("runbook".to_owned()),
            },
        )?;
        // The definition is journaled in the run's first event: one that the journal could not
        // read back would start a run that then reads as corrupt.
        serde_json::to_vec(&*definition)
            .and_then(|bytes| serde_json::from_slice::<Definition>(&bytes))
            .map_err(|error| Error::Invalid {
                message: format!(
                    "runbook {}: it could not be read back from the journal ({error}); nothing was started",
                    definition.name
                ),
                field: Some("runbook".to_owned()),
            })?;
        let params =
            definition::resolve_params(&definition, given).map_err(|error| Error::Invalid {
                field: Some(error.field()),
                message: error.to_string(),
            })?;
        let locks = if definition.locks.is_empty() {
            Vec::new()
        } else {
            let (definition, params) = (definition.clone(), params.clone());
            off_workers(move || plan::render_locks(&definition, &params)).await??
        };
        let now = self.inner.clock.now();
        let run_id = new_run_id(now);
        let (mut state, mut decision) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                machine::create(run_id, definition, params, locks, by, comment, now)
            }))
            .map_err(|panic| {
                let reason = format!(
                    "the engine failed creating the run ({}); nothing was stored",
                    panic_message(&panic)
                );
                tracing::error!(%reason, "internal error");
                Error::Internal(reason)
            })?;
        let prepared = self.prepare_calls(&mut state, &mut decision, now);
        let commit = Commit::new(0, &decision.events, &mut state, decision.settled());
        let mut commit = match commit {
            Ok(commit) => commit,
            Err(error) => {
                self.discard_prepared(&decision, prepared).await;
                return Err(error.into());
            }
        };
        commit.claims.extend(claim);
        commit.outbox = self.notifications(None, &state, &decision.events);
        let notified = !commit.outbox.is_empty();
        let parked = commit.parked;
        if let Err(error) = self.inner.writer.commit(commit).await {
            self.discard_prepared(&decision, prepared).await;
            return match error {
                store::Error::Claimed { holder, .. } => Ok(Err(holder)),
                error => Err(error.into()),
            };
        }
        if notified {
            self.wake_outbox();
        }
        if !parked {
            // (Unless an input of the new run, a timer, has read it from the store already.)
            self.inner
                .runs
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(run_id)
                .or_insert_with(|| Arc::new(Mutex::new(Resident::Live(Arc::new(state.clone())))));
        }
        tracing::info!(run = %run_id, runbook = %state.runbook, "run started");
        self.after_commit(run_id, &decision, prepared);
        Ok(Ok(state))
    }

    /// Feeds one input to a run: decide, commit, adopt, act.
    pub async fn handle(&self, run_id: Uuid, input: Input) -> Result<Arc<RunState>, Error> {
        let operator = input.operator().is_some();
        if operator && !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("the daemon is shutting down".to_owned()));
        }
        let resident = self
            .resident(run_id)?
            .ok_or_else(|| Error::NotFound(format!("no run {run_id}")))?;
        let result = self.decide_and_commit(run_id, &resident, input).await;
        // A run with a step to continue with stays: its next input is on its way.
        let evict = matches!(&result, Ok((_, true)));
        self.release(run_id, resident, evict);
        result.map(|(state, _)| state)
    }

    async fn decide_and_commit(
        &self,
        run_id: Uuid,
        resident: &Mutex<Resident>,
        input: Input,
    ) -> Result<(Arc<RunState>, bool), Error> {
        let mut guard = resident.lock().await;
        let state = match &*guard {
            Resident::Live(state) => state,
            Resident::Corrupt { reason } => {
                return Err(Error::Conflict(format!(
                    "run {run_id} is corrupt ({reason}); it cannot change"
                )))
            }
        };
        let described = input_kind(&input);
        let operator = input
            .operator()
            .map(|(by, step)| (by.clone(), step.map(str::to_owned)));
        let now = self.inner.clock.now();
        let decided = if state.definition.uses_templates() {
            let state = state.clone();
            off_workers(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    machine::decide(&state, input, now)
                }))
            })
            .await?
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                machine::decide(state, input, now)
            }))
        };
        let (mut next, decision) = match decided {
            Ok(decided) => decided?,
            Err(panic) => {
                // A bug, not bad input: deciding again would panic again (a timer would fire
                // in a hot loop). Hold the run, say so once, and refuse its inputs until the
                // daemon restarts; what is journaled stays as it was.
                let reason = format!(
                    "the engine failed deciding {described} for this run ({}); the run is held \
                     until the daemon restarts",
                    panic_message(&panic)
                );
                tracing::error!(run = %run_id, %reason, "internal error; run held");
                *guard = Resident::Corrupt {
                    reason: reason.clone(),
                };
                return Err(Error::Internal(reason));
            }
        };
        if decision.events.is_empty() {
            let settled = next.is_parked() && decision.settled();
            return Ok((state.clone(), settled));
        }
        let mut decision = decision;
        let prepared = self.prepare_calls(&mut next, &mut decision, now);
        let commit = Commit::new(
            state.last_seq,
            &decision.events,
            &mut next,
            decision.settled(),
        );
        let mut commit = match commit {
            Ok(commit) => commit,
            Err(error) => {
                self.discard_prepared(&decision, prepared).await;
                return Err(error.into());
            }
        };
        commit.outbox = self.notifications(Some(state), &next, &decision.events);
        let notified = !commit.outbox.is_empty();
        let parked = commit.parked;
        let ended = !state.status.is_terminal() && next.status.is_terminal();
        if let Err(error) = self.inner.writer.commit(commit).await {
            self.discard_prepared(&decision, prepared).await;
            return Err(error.into());
        }
        if notified {
            self.wake_outbox();
        }
        lifecycle::transition(run_id, state, &next, &described, operator);
        self.count_steps(&decision.events, &next);
        let next = Arc::new(next);
        *guard = Resident::Live(next.clone());
        drop(guard);
        if let Some(schedule) = next
            .started_by
            .name
            .as_deref()
            .and_then(|name| name.strip_prefix("schedule:"))
            .filter(|_| ended)
        {
            let (engine, schedule) = (self.clone(), schedule.to_owned());
            self.spawn_tracked(async move { engine.schedule_run_ended(&schedule, run_id).await });
        }
        crate::failpoint::hit(crate::failpoint::Failpoint::DurableBeforeEffect);
        self.after_commit(run_id, &decision, prepared);
        Ok((next, parked))
    }

    pub(crate) fn timer_wake(&self) -> &Notify {
        &self.inner.timer_wake
    }
}

/// Template rendering that may run at once, off the async workers.
static TEMPLATE_THREADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Runs `work` (one that renders templates) on a blocking thread, at most
/// [`TEMPLATE_THREADS`] at a time, so that however long a template takes (each is bounded by
/// `template::FUEL`), the async workers keep serving the API, timers and other runs.
pub async fn off_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    let _permit = TEMPLATE_THREADS
        .acquire()
        .await
        .map_err(|_| Error::Unavailable("the daemon is shutting down".to_owned()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("a template rendering thread failed: {error}")))
}

/// The text of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// An input's name, for an error message.
fn input_kind(input: &Input) -> String {
    let debug = format!("{input:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A UUID v7 from the injected clock (time-ordered ids; only `clock` reads the system time).
pub(crate) fn new_run_id(now: chrono::DateTime<chrono::Utc>) -> Uuid {
    let seconds = u64::try_from(now.timestamp()).unwrap_or(0);
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        seconds,
        now.timestamp_subsec_nanos(),
    ))
}
