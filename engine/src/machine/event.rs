//! The journal's vocabulary: what happened to a run, in order.
//!
//! Events are facts, never requests: the shell journals them before it acts on them, and a run's
//! state is the fold of its events (see [`super::evolve`]). Field names are part of the stored
//! format; add fields with `#[serde(default)]`, never rename.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::ids::{CallId, TimerId};
use crate::definition::Definition;

/// Who asked for something: the peer uid of the API caller on the Unix socket (or the daemon's
/// own uid for work it starts by itself, with a `name` such as `schedule:nightly`), or a user
/// of the TCP listener (`user`, with the daemon's uid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user of a token (`access.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// That user's role when they acted (local callers have every right).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::access::Role>,
}

impl Actor {
    pub fn uid(uid: u32) -> Actor {
        Actor {
            uid,
            name: None,
            user: None,
            role: None,
        }
    }

    /// A user of the TCP listener, acting through the daemon (whose uid is `uid`).
    pub fn user(uid: u32, user: &crate::access::User) -> Actor {
        Actor {
            uid,
            name: None,
            user: Some(user.name.clone()),
            role: Some(user.role),
        }
    }

    /// Whether this actor may pass an approval gate (approve it, or skip or retry past it).
    pub fn may_approve(&self) -> bool {
        self.role
            .is_none_or(|role| role >= crate::access::Role::Approver)
    }

    /// Whether two actors are the same person, for the two-person rule: users are compared by
    /// name; a user is never a local uid; local callers are compared by uid.
    pub fn same_person(&self, other: &Actor) -> bool {
        match (&self.user, &other.user) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.uid == other.uid,
            _ => false,
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.user, &self.name) {
            (Some(user), _) => write!(f, "user {user}"),
            (None, Some(name)) => write!(f, "uid {} ({name})", self.uid),
            (None, None) => write!(f, "uid {}", self.uid),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Why a durable timer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerPurpose {
    /// A `wait` step.
    Wait,
    /// A `window` step: the next instant matching its cron expression.
    Window,
    /// The pause before the next attempt of a failed step.
    Retry,
    /// The pause before the next poll of an `until` step.
    Poll,
    /// The step's overall `timeout`.
    Timeout,
}

/// A timer taken off the clock by `pause`, with the time it had left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendedTimer {
    pub purpose: TimerPurpose,
    pub step: String,
    pub remaining_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionReason {
    /// A step's outcome is unknown: it was running when the daemon stopped.
    Interrupted,
    /// A step failed and its `on_failure` is `pause`.
    StepFailed,
    /// An undo failed during rollback.
    UndoFailed,
}

impl AttentionReason {
    pub fn name(self) -> &'static str {
        match self {
            AttentionReason::Interrupted => "interrupted",
            AttentionReason::StepFailed => "step_failed",
            AttentionReason::UndoFailed => "undo_failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalState {
    Succeeded,
    Failed,
    Canceled,
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    RunCreated {
        run_id: Uuid,
        definition: Definition,
        params: Map<String, Value>,
        /// The rendered lock resources the run holds until it ends.
        locks: Vec<String>,
        by: Actor,
        #[serde(default)]
        comment: Option<String>,
    },
    /// An attempt (or a poll) of a step began; for actions, `call` identifies the invocation.
    StepStarted {
        step: String,
        attempt: u32,
        /// `None` for a step that runs no call (journaled as `0`).
        #[serde(with = "super::ids::no_call_is_zero")]
        call: Option<CallId>,
        action: String,
        input: Value,
    },
    StepSucceeded {
        step: String,
        output: Value,
    },
    StepFailed {
        step: String,
        error: String,
        will_retry: bool,
        /// The step's call still running when it failed (its timeout came first): aborted, it
        /// reports later, and if it ran to its end its effect counts (`AbortedCallCompleted`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aborted_call: Option<CallId>,
    },
    /// An `until` condition did not hold yet; the next poll is armed.
    StepPolled {
        step: String,
        output: Value,
    },
    /// The daemon stopped while the call ran; `rerun` when the step is idempotent.
    StepInterrupted {
        step: String,
        call: CallId,
        rerun: bool,
    },
    StepSkipped {
        step: String,
        reason: String,
        #[serde(default)]
        by: Option<Actor>,
        #[serde(default)]
        comment: Option<String>,
    },
    StepCanceled {
        step: String,
    },
    /// The call of a step canceled while it ran (timeout, cancel, rollback) has really ended.
    AbortedCallEnded {
        step: String,
        call: CallId,
    },
    /// The call of a step canceled while it ran ran to its end anyway (its command ignored the
    /// stop, or had finished when it came): `output` when it succeeded, else `error`. Its effect
    /// is in place, so the step counts as completed and a rollback undoes it.
    AbortedCallCompleted {
        step: String,
        call: CallId,
        output: Option<Value>,
        error: Option<String>,
    },
    /// After a restart: a call that was in flight certainly never started what it does (its
    /// supervisor was never released), so it is started again; `reason` says how that is known.
    CallNeverStarted {
        step: String,
        call: CallId,
        #[serde(default)]
        undo: bool,
        reason: String,
    },
    /// A timer that would have been armed while the run is paused: kept with its full time,
    /// armed at resume.
    TimerSuspended {
        purpose: TimerPurpose,
        step: String,
        remaining_ms: i64,
    },
    /// An undo in flight when the run was canceled.
    UndoCanceled {
        step: String,
    },
    /// What an action journaled about a call in flight (the exec supervisor's pid and start
    /// time), so that a restarted daemon can re-attach to it.
    CallNoted {
        step: String,
        call: CallId,
        #[serde(default)]
        undo: bool,
        note: Value,
    },
    TimerArmed {
        timer: TimerId,
        fire_at: DateTime<Utc>,
        purpose: TimerPurpose,
        step: String,
    },
    TimerFired {
        timer: TimerId,
        fire_at: DateTime<Utc>,
        late_by_ms: i64,
    },
    TimerCanceled {
        timer: TimerId,
        fire_at: DateTime<Utc>,
    },
    ApprovalRequested {
        step: String,
        prompt: String,
    },
    Approved {
        step: String,
        by: Actor,
        comment: Option<String>,
    },
    IterationStarted {
        step: String,
        index: usize,
    },
    IterationFinished {
        step: String,
        index: usize,
    },
    NeedsAttention {
        reason: AttentionReason,
        step: String,
        message: String,
    },
    Paused {
        by: Actor,
        comment: Option<String>,
        suspended: Vec<SuspendedTimer>,
    },
    Resumed {
        by: Actor,
        comment: Option<String>,
    },
    RetryRequested {
        step: String,
        by: Actor,
        comment: Option<String>,
    },
    CancelRequested {
        by: Actor,
        comment: Option<String>,
    },
    RollbackStarted {
        by: Actor,
        comment: Option<String>,
        queue: Vec<String>,
    },
    UndoStarted {
        step: String,
        attempt: u32,
        call: CallId,
        action: String,
        input: Value,
    },
    UndoSucceeded {
        step: String,
        output: Value,
    },
    UndoFailed {
        step: String,
        error: String,
    },
    UndoInterrupted {
        step: String,
        call: CallId,
        rerun: bool,
    },
    UndoSkipped {
        step: String,
        by: Actor,
        comment: Option<String>,
    },
    RunFinished {
        state: FinalState,
        error: Option<String>,
    },
}

impl EventKind {
    /// The operator who caused this event, if one did.
    pub fn actor(&self) -> Option<&Actor> {
        match self {
            EventKind::RunCreated { by, .. }
            | EventKind::Approved { by, .. }
            | EventKind::Paused { by, .. }
            | EventKind::Resumed { by, .. }
            | EventKind::RetryRequested { by, .. }
            | EventKind::CancelRequested { by, .. }
            | EventKind::RollbackStarted { by, .. }
            | EventKind::UndoSkipped { by, .. } => Some(by),
            EventKind::StepSkipped { by, .. } => by.as_ref(),
            _ => None,
        }
    }
}
