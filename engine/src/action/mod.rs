//! Actions: what a step does in the world.
//!
//! An [`Action`] gets the step's rendered input and an [`ActionContext`] and returns an output
//! (JSON) or an [`ActionFailure`] that says whether another attempt may succeed. Core actions
//! with no external effect (`noop`, `wait`, `window`, `approval`) are decided by the state machine
//! itself; `exec` lives here; domain actions (`rocketmq.*`) are registered by the `runbooks`
//! crate.

pub mod core_input;
mod exec;
mod log;
pub mod schema;
pub mod shim;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use self::exec::{
    keep_spare_supervisor, set_command_umask, set_daemon_identity, ssh_command, would_run, Exec,
};
pub use self::log::LogSink;
pub use self::schema::Schema;
pub use crate::machine::ActionFailure;

pub type ActionFuture = Pin<Box<dyn Future<Output = Result<Value, ActionFailure>> + Send>>;

/// Everything an action may know about the call it serves.
#[derive(Clone)]
pub struct ActionContext {
    pub run_id: Uuid,
    pub step: String,
    pub attempt: u32,
    pub undo: bool,
    /// Cancelled on timeout, cancel and rollback; an action must stop promptly and clean up.
    pub cancel: CancellationToken,
    /// Cancelled when the daemon begins to shut down: an action must start nothing new (it
    /// reports [`ActionFailure::never_started`], and the call is started again after the
    /// restart); what already runs is left running.
    pub draining: CancellationToken,
    /// The step's log (what `runbook logs` shows).
    pub log: LogSink,
    /// A directory private to this call, under the data dir (the same after a restart).
    pub state_dir: PathBuf,
    /// On re-attach: the last note journaled for this call.
    pub note: Option<Value>,
    /// Journals a note about this call, durably.
    pub recorder: Recorder,
    /// What to do once the call's result is journaled; `None` where nobody journals it (a
    /// call made inside another action).
    pub settle: Option<Settle>,
}

/// What an action leaves to do once its result is journaled (`exec`: tell its shim that it may
/// exit without writing the command's end into the call dir). Dropped without running when
/// the result is not journaled.
#[derive(Clone, Default)]
pub struct Settle(Arc<std::sync::Mutex<Vec<AfterJournaled>>>);

type AfterJournaled = Box<dyn FnOnce() + Send>;

impl Settle {
    /// Runs `then` once the result is journaled; drops it if it never is.
    pub fn after_journaled(&self, then: impl FnOnce() + Send + 'static) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(then));
    }

    /// The result is journaled.
    pub fn journaled(&self) {
        let pending = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for then in pending {
            then();
        }
    }
}

pub trait Action: Send + Sync + 'static {
    /// The input the action takes and whether it mutates: validation refuses a `with` that does
    /// not fit, and the runtime refuses a rendered input that does not, before `call`.
    fn schema(&self) -> &'static Schema;

    fn call(&self, input: Value, context: ActionContext) -> ActionFuture;

    /// After a daemon restart, for a call that was in flight: follow it to its real end if
    /// that can be known (it still runs, or it left its result behind), or `None` when its
    /// outcome is unknown (the step is then `interrupted`).
    fn reattach(&self, _input: Value, _context: ActionContext) -> Option<ActionFuture> {
        None
    }

    /// Makes a call ready before the commit that starts it, so that the note it would journal
    /// first (with its [`Recorder`]) is journaled in that same commit: one device flush less
    /// on the step's path. It must not block nor begin the call's effect, for the start may
    /// never become durable (then [`Action::discard`] gets what it kept). `None`: the call
    /// starts the usual way, with [`Action::call`].
    fn prepare(&self, _input: &Value, _context: &ActionContext) -> Option<Prepared> {
        None
    }

    /// Runs a call [`Action::prepare`] made ready, once its start and its note are durable.
    fn call_prepared(&self, input: Value, context: ActionContext, _held: Held) -> ActionFuture {
        self.call(input, context)
    }

    /// Gives up a call [`Action::prepare`] made ready whose start was not journaled; resolves
    /// once nothing of it is left to act.
    fn discard(&self, held: Held) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        drop(held);
        Box::pin(async {})
    }

    /// What a call with `input` would change, computed by reading the current state only
    /// (`runbook plan --check`): `{"changes": [{"what", "before", "after"}], "note"}`, plus
    /// `"runs"` (the command) for an action that runs a command. `None`: the action cannot
    /// tell without doing it. A preview must never change anything.
    fn preview(&self, _input: Value, _context: ActionContext) -> Option<ActionFuture> {
        None
    }
}

/// What an action keeps of a call it made ready ([`Action::prepare`]); only it knows the type.
pub type Held = Box<dyn std::any::Any + Send>;

/// A call made ready before its start is journaled: the note to journal with the start, and
/// what the action keeps for [`Action::call_prepared`].
pub struct Prepared {
    pub note: Value,
    pub held: Held,
}

type RecordFn =
    dyn Fn(Value) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

/// Journals a note about a call in flight (`EventKind::CallNoted`); resolves once it is durable.
#[derive(Clone)]
pub struct Recorder(Arc<RecordFn>);

impl Recorder {
    pub fn new(
        record: impl Fn(Value) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
            + Send
            + Sync
            + 'static,
    ) -> Recorder {
        Recorder(Arc::new(record))
    }

    /// A recorder that keeps nothing, for tests of actions outside a daemon.
    pub fn discard() -> Recorder {
        Recorder::new(|_| Box::pin(async { Ok(()) }))
    }

    pub async fn record(&self, note: Value) -> Result<(), String> {
        (self.0)(note).await
    }
}

/// The actions a daemon knows, by name.
#[derive(Clone)]
pub struct Registry {
    actions: BTreeMap<String, Arc<dyn Action>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry with the core `exec` action.
    pub fn new() -> Registry {
        let mut registry = Registry {
            actions: BTreeMap::new(),
        };
        registry.register(crate::definition::CoreAction::Exec.name(), Exec);
        registry
    }

    pub fn register(&mut self, name: &str, action: impl Action) {
        self.actions.insert(name.to_owned(), Arc::new(action));
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Action>> {
        self.actions.get(name).cloned()
    }

    /// The schema of `name`: a core action the state machine decides (`noop`, `wait`, `window`,
    /// `approval`) or a registered one.
    pub fn schema(&self, name: &str) -> Option<&'static Schema> {
        schema::core(name).or_else(|| self.actions.get(name).map(|action| action.schema()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.actions.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }
}

impl ActionFailure {
    /// A failure another attempt will not cure (bad input).
    pub fn permanent(message: impl Into<String>) -> ActionFailure {
        ActionFailure {
            message: message.into(),
            retryable: false,
            ..ActionFailure::default()
        }
    }

    /// A failure another attempt may cure (a command's exit code, the cluster being busy).
    pub fn retryable(message: impl Into<String>) -> ActionFailure {
        ActionFailure {
            message: message.into(),
            retryable: true,
            ..ActionFailure::default()
        }
    }

    /// The call ran to its own end and failed there: its effect may be in place (see
    /// [`ActionFailure::ran_to_end`]).
    pub fn after_running_to_end(mut self) -> ActionFailure {
        self.ran_to_end = true;
        self
    }

    /// The call certainly never started what it does (retryable: nothing happened). After a
    /// restart the engine starts such a call again.
    pub fn never_started(message: impl Into<String>) -> ActionFailure {
        ActionFailure {
            message: message.into(),
            retryable: true,
            never_started: true,
            ..ActionFailure::default()
        }
    }
}
