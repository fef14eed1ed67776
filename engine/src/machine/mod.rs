//! The run state machine: the functional core of the engine.
//!
//! A run's state is the fold of its journaled events ([`evolve`]); what happens next is decided
//! by [`decide`] (and [`create`] for a new run) from the state, an [`Input`] and the time `now`.
//! A decision is a list of events, which the shell journals in one commit, and a list of
//! [`Effect`]s, which the shell runs only after that commit is durable.
//!
//! # Contract
//!
//! - Nothing in this module does I/O or reads the clock.
//! - `evolve` never fails and never panics, so any journal once accepted can be replayed.
//! - A step with no external effect (noop, a skipped `when`, a timer's end) begins and ends
//!   within one decision: one commit.
//! - A non-idempotent step whose call was in flight when the daemon stopped is never re-run
//!   without an operator's `retry`.

mod context;
mod decide;
mod event;
mod ids;
mod poll_history;
mod state;

pub use decide::{
    create, decide, note_call, ActionFailure, Call, CallInFlight, Decision, Effect, Input,
    Rejection,
};
pub use event::{
    Actor, AttentionReason, Event, EventKind, FinalState, SuspendedTimer, TimerPurpose,
};
pub use ids::{CallId, TimerId};
pub use poll_history::{take_superseded as take_superseded_polls, PollHistory, PollRounds};
pub use state::{
    evolve, ActiveTimer, ApprovalRecord, Attention, AuditEntry, Iteration, IterationStatus, Pause,
    Rollback, RunState, RunStatus, StepState, StepStatus, UndoState, WaitingFor,
};
