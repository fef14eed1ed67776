//! What listings and metrics read instead of runs: one small line per run, secondary indexes
//! by state, runbook and finish time, and counters kept by the commits themselves.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::definition::CoreAction;
use crate::machine::{RunState, RunStatus};

/// A run's line in a listing, stored with every commit that changes it (`listings` tree).
/// Empty fields are left out: a million finished runs keep a million lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    pub runbook: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_wakeup: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The run's armed timers as `(fire_at_ms, timer)`: what the timer index must hold for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<(u64, u64)>,
    /// The resources the run holds (while it is not finished).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<String>,
    /// What the run waits for, and since when (absent in lines of older releases, and while
    /// the run runs or has ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// Where the run's records are, once the archiver moved them out of the tables
    /// (`archive.rs`): one entry per archived run, not a tree of pointers beside the lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<super::archive::Pointer>,
}

/// The one field of a listing line that says whether the run is archived, read without
/// decoding the rest (every commit asks it of its run).
#[derive(Debug, Deserialize)]
pub(crate) struct ArchivedAt {
    #[serde(default)]
    pub archived: Option<super::archive::Pointer>,
}

/// What a run waits for (see [`wait`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    /// `approval`, `timer`, `poll`, `window` or `operator`.
    pub kind: String,
    /// Since when it waits for it.
    pub since: Option<DateTime<Utc>>,
}

impl Listing {
    pub fn of(state: &RunState) -> Listing {
        Listing {
            runbook: state.runbook.clone(),
            state: state.status.name().to_owned(),
            reason: reason(state),
            current_step: current_step(state),
            next_wakeup: state.timers.iter().map(|timer| timer.fire_at).min(),
            created_at: state.created_at,
            finished_at: state.finished_at,
            timers: state
                .timers
                .iter()
                .map(|timer| {
                    (
                        super::TimerKey::new(timer.fire_at, state.id, timer.timer).fire_at_ms,
                        timer.timer.0,
                    )
                })
                .collect(),
            locks: if state.status.is_terminal() {
                Vec::new()
            } else {
                state.locks.clone()
            },
            wait: wait(state),
            archived: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        is_terminal(&self.state)
    }
}

/// Whether a state name is one a run ends in.
pub fn is_terminal(state: &str) -> bool {
    STATES
        .iter()
        .any(|status| status.name() == state && status.is_terminal())
}

/// Every run state, in the order listings and metrics show them.
pub const STATES: [RunStatus; 8] = [
    RunStatus::Running,
    RunStatus::Waiting,
    RunStatus::Paused,
    RunStatus::NeedsAttention,
    RunStatus::Succeeded,
    RunStatus::Failed,
    RunStatus::Canceled,
    RunStatus::RolledBack,
];

/// Why a run needs attention, in the API's words.
pub fn reason(state: &RunState) -> Option<String> {
    state.attention.as_ref().map(|attention| {
        serde_json::to_value(attention.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    })
}

/// The step a run is at: the one that needs attention, else the innermost active step.
pub fn current_step(state: &RunState) -> Option<String> {
    if let Some(attention) = &state.attention {
        return Some(attention.step.clone());
    }
    // (From the run's few active steps, not a walk over all of a long run's steps.)
    let active: Vec<_> = state
        .active_positions()
        .iter()
        .filter_map(|position| state.steps.get(*position))
        .cloned()
        .collect();
    active
        .iter()
        .rev()
        .find(|step| !CoreAction::ForEach.is(&step.action))
        .or_else(|| active.last())
        .map(|step| step.key.clone())
}

/// What a run waits for, and since when: `operator` when it needs attention (a failed or
/// interrupted step to retry or skip, a failed undo) or is paused; else what its current step
/// waits for: `approval`, `timer` (a `wait` step, or the backoff before a retry), `window`,
/// or `poll` (the next poll of an `until`). `None` while a call runs and once the run ended.
/// (A run never waits for a lock: a run whose lock is held is refused at start.)
pub fn wait(state: &RunState) -> Option<Wait> {
    use crate::machine::WaitingFor;
    if state.status.is_terminal() {
        return None;
    }
    if let Some(attention) = &state.attention {
        return Some(Wait {
            kind: "operator".to_owned(),
            since: attention.at,
        });
    }
    if let Some(pause) = &state.paused {
        return Some(Wait {
            kind: "operator".to_owned(),
            since: Some(pause.at),
        });
    }
    let step = state.step(&current_step(state)?)?;
    if !step.status.is_active() || step.call.is_some() {
        return None;
    }
    let kind = match step.waiting_for? {
        WaitingFor::Approval => "approval",
        WaitingFor::Timer if CoreAction::Window.is(&step.action) => "window",
        WaitingFor::Timer | WaitingFor::Retry => "timer",
        WaitingFor::Poll => "poll",
        WaitingFor::Iterations => return None,
    };
    Some(Wait {
        kind: kind.to_owned(),
        since: step.waiting_since,
    })
}

/// Counters the commits keep (`meta/counts`), so that metrics never scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Runs by state name.
    pub runs: BTreeMap<String, u64>,
    /// Entries of the timer index (runs' and schedules').
    pub timers: u64,
}

/// Which runs a listing wants, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only runs in this state.
    pub state: Option<RunStatus>,
    /// Only runs of this runbook.
    pub runbook: Option<String>,
    /// Finished runs too (without `state`).
    pub all: bool,
    /// Only runs created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only runs older than this one (the previous page's cursor).
    pub before: Option<Uuid>,
    pub limit: usize,
}

/// A page of a listing; `next` is the cursor of the next page, if there may be one.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub runs: Vec<(Uuid, Result<Listing, String>)>,
    pub next: Option<Uuid>,
}

/// `state ‖ 0 ‖ runbook ‖ 0 ‖ run_id`: a run's key in the index by state and runbook.
/// (State names and runbook names never hold a 0 byte: see `definition/parse.rs`.)
pub fn index_key(state: &str, runbook: &str, run_id: Uuid) -> Vec<u8> {
    let mut key = index_prefix(state, Some(runbook));
    key.extend_from_slice(run_id.as_bytes());
    key
}

/// `state ‖ 0`, or `state ‖ 0 ‖ runbook ‖ 0`: the prefix of the index keys of one state, or of
/// one state and runbook.
pub fn index_prefix(state: &str, runbook: Option<&str>) -> Vec<u8> {
    let mut key = Vec::with_capacity(state.len() + runbook.map_or(0, str::len) + 18);
    key.extend_from_slice(state.as_bytes());
    key.push(0);
    if let Some(runbook) = runbook {
        key.extend_from_slice(runbook.as_bytes());
        key.push(0);
    }
    key
}

/// The state, runbook and run id of an index key (`None`: not such a key).
pub fn index_parts(key: &[u8]) -> Option<(&str, &str, Uuid)> {
    let run_id = trailing_id(key)?;
    let names = key.get(..key.len() - 16)?.strip_suffix(&[0])?;
    let split = names.iter().position(|byte| *byte == 0)?;
    let state = std::str::from_utf8(&names[..split]).ok()?;
    let runbook = std::str::from_utf8(&names[split + 1..]).ok()?;
    (!runbook.as_bytes().contains(&0)).then_some((state, runbook, run_id))
}

/// The smallest UUID v7 of an instant: every run created at or after it sorts at or after it.
pub fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// The run id at the end of an index key.
pub fn trailing_id(key: &[u8]) -> Option<Uuid> {
    key.len()
        .checked_sub(16)
        .and_then(|start| Uuid::from_slice(&key[start..]).ok())
}
