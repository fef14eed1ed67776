//! A run's state: the fold of its events. [`evolve`] is total: it never fails, so a journal that
//! was accepted once can always be replayed.

use std::sync::Arc;

use imbl::{HashMap, Vector};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::event::{
    Actor, AttentionReason, Event, EventKind, FinalState, SuspendedTimer, TimerPurpose,
};
use super::ids::{CallId, TimerId};
use crate::definition::Definition;

mod evolve;
pub use evolve::evolve;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// An action is in flight.
    Running,
    /// Nothing in flight: waiting on a timer, a poll or an approval.
    Waiting,
    Paused,
    NeedsAttention,
    Succeeded,
    Failed,
    Canceled,
    RolledBack,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Canceled | RunStatus::RolledBack
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Paused => "paused",
            RunStatus::NeedsAttention => "needs_attention",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
            RunStatus::RolledBack => "rolled_back",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Interrupted,
    Canceled,
}

impl StepStatus {
    pub fn name(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Waiting => "waiting",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Interrupted => "interrupted",
            StepStatus::Canceled => "canceled",
        }
    }

    /// Still going: running or waiting.
    pub fn is_active(self) -> bool {
        matches!(self, StepStatus::Running | StepStatus::Waiting)
    }
}

/// What a waiting step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    Timer,
    Approval,
    Poll,
    Retry,
    Iterations,
}

impl WaitingFor {
    pub fn name(self) -> &'static str {
        match self {
            WaitingFor::Timer => "timer",
            WaitingFor::Approval => "approval",
            WaitingFor::Poll => "poll",
            WaitingFor::Retry => "retry",
            WaitingFor::Iterations => "iterations",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub by: Actor,
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IterationStatus {
    Pending,
    Running,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    /// Shared: copying a loop's step state (on every change of an iteration) copies pointers.
    pub item: Arc<Value>,
    pub status: IterationStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndoState {
    pub status: StepStatus,
    pub attempts: u32,
    pub call: Option<CallId>,
    pub action: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub note: Option<Value>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub output: Option<Value>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// `id`, or `loop[2].id` inside a for_each iteration.
    pub key: String,
    pub action: String,
    pub status: StepStatus,
    pub attempts: u32,
    /// The action call in flight, if any.
    pub call: Option<CallId>,
    pub polls: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Shared: a loop's input holds all its items, and its step state is copied on write.
    pub input: Arc<Value>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub waiting_for: Option<WaitingFor>,
    pub fire_at: Option<DateTime<Utc>>,
    pub late_by_ms: Option<i64>,
    pub prompt: Option<String>,
    pub approval: Option<ApprovalRecord>,
    pub skipped_by: Option<Actor>,
    /// Persistent: changing one iteration of a loop over 100,000 items copies a path of the
    /// tree, not the list.
    pub iterations: Option<Vector<Iteration>>,
    pub undo: Option<UndoState>,
    /// The latest note of the call in flight (see `EventKind::CallNoted`).
    #[serde(default)]
    pub note: Option<Value>,
    /// A call that was aborted (the step was canceled) and has not reported its end yet.
    #[serde(default)]
    pub aborting: Option<CallId>,
    /// Since when the step waits for what `waiting_for` says (the first poll of a polling
    /// step; the backoff of a retry; the request of an approval).
    #[serde(default)]
    pub waiting_since: Option<DateTime<Utc>>,
    /// For a loop: how many leading iterations are known done, so that a decision looks only
    /// at the iterations after them (a cache like [`RunState::done_prefix`]: never stored,
    /// never compared; it catches up with the next iteration to finish after a restore).
    #[serde(skip)]
    pub(crate) iterations_done: DonePrefix,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveTimer {
    pub timer: TimerId,
    pub fire_at: DateTime<Utc>,
    pub purpose: TimerPurpose,
    pub step: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub reason: AttentionReason,
    pub step: String,
    pub message: String,
    /// When the run began to wait for the operator (absent in snapshots of older releases).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub by: Actor,
    pub at: DateTime<Utc>,
    pub suspended: Vec<SuspendedTimer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    pub by: Actor,
    pub at: DateTime<Utc>,
    /// Steps whose undo runs, in order (reverse order of completion).
    pub queue: Vec<String>,
}

/// One operator action, for `show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub action: String,
    pub step: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub id: Uuid,
    /// The pinned definition; stored once, in the `RunCreated` event, not in every snapshot.
    #[serde(skip)]
    pub definition: Arc<Definition>,
    pub runbook: String,
    pub version: u32,
    pub params: Map<String, Value>,
    pub locks: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub started_by: Actor,
    pub last_seq: u64,
    pub next_call: CallId,
    pub status: RunStatus,
    pub paused: Option<Pause>,
    pub attention: Option<Attention>,
    /// Each step's state behind its own `Arc`, in a persistent vector: a decision clones the
    /// run's state, and a run of ten thousand steps must copy neither ten thousand step states
    /// nor ten thousand pointers to change one (a clone shares the tree; a changed step copies
    /// one path of it and the step itself, see [`RunState::step_mut`]). Stored as a plain list
    /// of step states.
    pub steps: Vector<Arc<StepState>>,
    /// Keys of completed steps in the order they completed (rollback runs it backwards): those
    /// that succeeded, and those whose aborted call ran to its end anyway.
    /// (Persistent, like `steps`: cloning the state for a decision copies nothing.)
    pub completed: Vector<Arc<str>>,
    pub timers: Vec<ActiveTimer>,
    pub rollback: Option<Rollback>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub audit: Vec<AuditEntry>,
    /// Which events of the run's polls a later round superseded (see `poll_history`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub poll_history: super::poll_history::PollHistory,
    #[serde(skip)]
    index: StepIndex,
    /// How many leading top-level steps are known to have succeeded or been skipped, so that a
    /// decision in a long run does not walk every finished step again: a cache, never stored,
    /// never compared, reset by every event that re-starts a step or rolls the run back.
    #[serde(skip)]
    pub(crate) done_prefix: DonePrefix,
    /// Which steps have a call in flight: a cache, never stored, never compared.
    #[serde(skip)]
    in_flight: InFlight,
}

/// See [`RunState::done_prefix`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DonePrefix(pub(crate) usize);

impl PartialEq for DonePrefix {
    fn eq(&self, _: &DonePrefix) -> bool {
        true
    }
}

/// The positions of the steps that are active (running or waiting) and of those with a call in
/// flight — their own, their undo's, or one being aborted — so that knowing whether a run is
/// running or parked, and which step it is at, does not walk every step of a long run at every
/// event. A cache, never stored and never compared: built by one walk when first asked (after a
/// restore), then kept by [`evolve`] from the steps each event touched (every change to a step
/// goes through [`RunState::step_mut`] or [`RunState::push_step`], which note its position).
#[derive(Default, Clone, PartialEq, Debug)]
struct InFlight {
    positions: Cache<Option<Live>>,
    /// The steps the event being applied changed.
    touched: Cache<Vec<usize>>,
}

/// A cache inside a pure value: derived from the value, so it is cloned with it, but never
/// compared (two states are equal whatever their caches hold) and never shown. The lock lets a
/// reader fill it through `&self`; it is never held across anything but the filling.
#[derive(Default)]
struct Cache<T>(std::sync::Mutex<T>);

impl<T> Cache<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get_mut(&mut self) -> &mut T {
        self.0
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Clone> Clone for Cache<T> {
    fn clone(&self) -> Cache<T> {
        Cache(std::sync::Mutex::new(self.lock().clone()))
    }
}

impl<T> PartialEq for Cache<T> {
    fn eq(&self, _: &Cache<T>) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Cache<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("cache")
    }
}

#[derive(Clone, Default)]
struct Live {
    active: imbl::OrdSet<usize>,
    in_flight: imbl::OrdSet<usize>,
}

impl Live {
    fn note(&mut self, position: usize, step: Option<&StepState>) {
        match step {
            Some(step) if step.status.is_active() => self.active.insert(position),
            _ => self.active.remove(&position),
        };
        let in_flight = step.is_some_and(|step| {
            step.call.is_some()
                || step.aborting.is_some()
                || step.undo.as_ref().is_some_and(|undo| undo.call.is_some())
        });
        match in_flight {
            true => self.in_flight.insert(position),
            false => self.in_flight.remove(&position),
        };
    }
}

impl InFlight {
    /// The positions, built from `steps` if not known yet.
    fn live(&self, steps: &Vector<Arc<StepState>>) -> Live {
        self.positions
            .lock()
            .get_or_insert_with(|| {
                let mut live = Live::default();
                for (position, step) in steps.iter().enumerate() {
                    live.note(position, Some(step));
                }
                live
            })
            .clone()
    }

    /// Brings the positions up to date with the steps touched since the last call.
    fn settle(&mut self, steps: &Vector<Arc<StepState>>) {
        let touched = std::mem::take(self.touched.get_mut());
        if let Some(live) = self.positions.get_mut() {
            for position in touched {
                live.note(position, steps.get(position).map(|step| &**step));
            }
            // Debug builds (every test) check the cache against a walk over every step.
            #[cfg(debug_assertions)]
            {
                let mut walked = Live::default();
                for (position, step) in steps.iter().enumerate() {
                    walked.note(position, Some(step));
                }
                assert!(
                    walked.active == live.active && walked.in_flight == live.in_flight,
                    "the cache of live steps went stale"
                );
            }
        }
    }
}

/// Where each step instance sits in [`RunState::steps`], by a hash of its key: a cache for
/// lookups (a run with many steps would otherwise search them all for each), never stored and
/// never compared. Steps are only ever appended, so it extends itself as they are. A persistent
/// map, so that cloning the state for a decision does not copy an entry per step.
#[derive(Default, Clone, PartialEq, Debug)]
struct StepIndex(Cache<(usize, HashMap<u64, usize>)>);

impl StepIndex {
    fn hash(key: &str) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key)
    }

    fn position(&self, steps: &Vector<Arc<StepState>>, key: &str) -> Option<usize> {
        let mut guard = self.0.lock();
        let (indexed, positions) = &mut *guard;
        if *indexed > steps.len() {
            *indexed = 0;
            positions.clear();
        }
        while *indexed < steps.len() {
            positions
                .entry(Self::hash(&steps[*indexed].key))
                .or_insert(*indexed);
            *indexed += 1;
        }
        match positions.get(&Self::hash(key)) {
            Some(&position) if steps[position].key == key => Some(position),
            // Not there, or two keys share a hash: look at each.
            Some(_) => steps.iter().position(|step| step.key == key),
            None => None,
        }
    }
}

impl RunState {
    /// The step whose call `call` is.
    pub(crate) fn step_with_call(&self, call: CallId) -> Option<&Arc<StepState>> {
        self.steps.iter().find(|step| step.call == Some(call))
    }

    /// The step whose undo's call `call` is.
    pub(crate) fn step_with_undo_call(&self, call: CallId) -> Option<&Arc<StepState>> {
        self.steps.iter().find(|step| {
            step.undo
                .as_ref()
                .is_some_and(|undo| undo.call == Some(call))
        })
    }

    /// Nothing happens in the run until a timer fires or somebody acts: it waits (on a timer,
    /// a poll or an approval), is paused, needs attention or has ended, and no action call of
    /// it is in flight. A parked run need not be in memory; a run that is not parked is loaded
    /// at start-up to re-attach its calls or take its next step.
    pub fn is_parked(&self) -> bool {
        let waits = matches!(
            self.status,
            RunStatus::Waiting | RunStatus::Paused | RunStatus::NeedsAttention
        ) || self.status.is_terminal();
        waits && self.in_flight.live(&self.steps).in_flight.is_empty()
    }

    /// The positions in [`RunState::steps`] of the active steps (running or waiting), ascending.
    pub(crate) fn active_positions(&self) -> imbl::OrdSet<usize> {
        self.in_flight.live(&self.steps).active
    }

    /// Whether a step's own call or its undo's is in flight (one being aborted aside).
    fn calls_running(&self) -> bool {
        self.in_flight
            .live(&self.steps)
            .in_flight
            .iter()
            .filter_map(|position| self.steps.get(*position))
            .any(|step| {
                step.call.is_some() || step.undo.as_ref().is_some_and(|undo| undo.call.is_some())
            })
    }

    /// The state before the first event: only `RunCreated` makes it meaningful.
    pub fn empty(id: Uuid) -> RunState {
        RunState {
            id,
            definition: Arc::new(Definition::default()),
            runbook: String::new(),
            version: 0,
            params: Map::new(),
            locks: Vec::new(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            started_by: Actor::uid(0),
            last_seq: 0,
            next_call: CallId::FIRST,
            status: RunStatus::Running,
            paused: None,
            attention: None,
            steps: Vector::new(),
            completed: Vector::new(),
            timers: Vec::new(),
            rollback: None,
            finished_at: None,
            error: None,
            audit: Vec::new(),
            poll_history: Default::default(),
            index: StepIndex::default(),
            done_prefix: DonePrefix::default(),
            in_flight: InFlight::default(),
        }
    }

    pub fn step(&self, key: &str) -> Option<&StepState> {
        let position = self.index.position(&self.steps, key)?;
        self.steps.get(position).map(|step| &**step)
    }

    /// Every change to a step goes through here or [`RunState::push_step`].
    fn step_mut(&mut self, key: &str) -> Option<&mut StepState> {
        let position = self.index.position(&self.steps, key)?;
        self.in_flight.touched.get_mut().push(position);
        self.steps.get_mut(position).map(Arc::make_mut)
    }

    fn push_step(&mut self, step: StepState) -> &mut StepState {
        let next = self.steps.len();
        self.in_flight.touched.get_mut().push(next);
        self.steps.push_back(Arc::new(step));
        let last = self.steps.len() - 1;
        Arc::make_mut(&mut self.steps[last])
    }

    /// The completed steps with an `undo` that has not run to its end (never run, canceled
    /// with the run, failed or interrupted), newest first: what a rollback would run now, and
    /// what a plain cancel leaves undone.
    pub fn undos_left(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.completed
            .iter()
            .rev()
            .filter(|key| {
                self.definition
                    .step(key)
                    .is_some_and(|step| step.undo.is_some())
            })
            .filter(|key| {
                !self.step(key).is_some_and(|step| {
                    step.undo.as_ref().is_some_and(|undo| {
                        matches!(undo.status, StepStatus::Succeeded | StepStatus::Skipped)
                    })
                })
            })
            .filter(|key| seen.insert(key.to_string()))
            .map(|key| key.to_string())
            .collect()
    }

    /// Replays a journal from the start.
    pub fn replay(id: Uuid, events: &[Event]) -> RunState {
        let mut state = RunState::empty(id);
        for event in events {
            evolve(&mut state, event);
        }
        state
    }
}
