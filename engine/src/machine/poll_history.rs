//! Which journal events of a long poll may be forgotten.
//!
//! An `until` step polls its action every `every` until the condition holds: each round
//! journals `TimerFired` (the poll timer), `StepStarted`, the call's `CallNoted`s, `StepPolled`
//! and `TimerArmed` (the next poll). A 30-day poll every 10 s would keep 259,200 rounds, about
//! 850 bytes each, although only the latest one says anything the run state does not. So the
//! journal keeps a poll's *first* round and its *latest* round; the rounds in between are
//! "superseded", and the commit that stores the run's next snapshot deletes them (the
//! snapshot holds everything they did to the state: `polls`, the latest output).
//!
//! Only whole rounds that ended in `StepPolled` are ever forgotten: a round that failed, was
//! interrupted or canceled, or the one that met the condition, stays as it was. Restoring a run
//! reads its snapshot and the events after it, never the forgotten ones, so nothing that a
//! restart needs is lost; what the journal loses is the repetition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{Event, EventKind, TimerPurpose};
use super::state::RunState;

/// The rounds of one step's polling, by event seq.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRounds {
    /// The round in progress, started by its poll timer (empty: none, or not a poll round).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current: Vec<u64>,
    /// The latest complete round: kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest: Vec<u64>,
    /// The latest round ended in `StepPolled` and its `TimerArmed` has not come yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arming: bool,
    /// Complete rounds a later one superseded: deleted with the next snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<u64>,
}

impl PollRounds {
    fn is_empty(&self) -> bool {
        self.current.is_empty() && self.latest.is_empty() && self.superseded.is_empty()
    }
}

/// Follows `event` (before [`super::evolve`] applies it: a fired timer is still in the state).
pub(crate) fn track(state: &mut RunState, event: &Event) {
    let seq = event.seq;
    match &event.kind {
        EventKind::TimerFired { timer, .. } => {
            let polled = state
                .timers
                .iter()
                .find(|active| active.timer == *timer && active.purpose == TimerPurpose::Poll)
                .map(|active| active.step.clone());
            if let Some(step) = polled {
                let rounds = state.poll_history.entry(step).or_default();
                rounds.current = vec![seq];
            }
        }
        EventKind::StepStarted { step, .. } => {
            if let Some(rounds) = state.poll_history.get_mut(step) {
                if !rounds.current.is_empty() {
                    rounds.current.push(seq);
                }
            }
        }
        EventKind::CallNoted {
            step, undo: false, ..
        } => {
            if let Some(rounds) = state.poll_history.get_mut(step) {
                if !rounds.current.is_empty() {
                    rounds.current.push(seq);
                }
            }
        }
        EventKind::StepPolled { step, .. } => {
            if let Some(rounds) = state.poll_history.get_mut(step) {
                if rounds.current.is_empty() {
                    return;
                }
                rounds.current.push(seq);
                let latest = std::mem::take(&mut rounds.latest);
                rounds.superseded.extend(latest);
                rounds.latest = std::mem::take(&mut rounds.current);
                rounds.arming = true;
            }
        }
        EventKind::TimerArmed {
            purpose: TimerPurpose::Poll,
            step,
            ..
        } => {
            if let Some(rounds) = state.poll_history.get_mut(step) {
                if rounds.arming {
                    rounds.latest.push(seq);
                    rounds.arming = false;
                }
            }
        }
        // Anything else a step goes through ends its polling as it stands: the round in
        // progress (if any) is kept whole, with its outcome.
        EventKind::StepSucceeded { step, .. }
        | EventKind::StepFailed { step, .. }
        | EventKind::StepInterrupted { step, .. }
        | EventKind::StepSkipped { step, .. }
        | EventKind::StepCanceled { step }
        | EventKind::AbortedCallEnded { step, .. }
        | EventKind::AbortedCallCompleted { step, .. }
        | EventKind::CallNeverStarted { step, .. } => {
            if let Some(rounds) = state.poll_history.get_mut(step) {
                rounds.current.clear();
                rounds.latest.clear();
                rounds.arming = false;
                if rounds.is_empty() {
                    state.poll_history.remove(step);
                }
            }
        }
        _ => {}
    }
}

/// Takes the seqs of every superseded round, to delete with the snapshot being stored (which
/// then no longer lists them).
pub fn take_superseded(state: &mut RunState) -> Vec<u64> {
    let mut forgotten = Vec::new();
    state.poll_history.retain(|_, rounds| {
        forgotten.append(&mut rounds.superseded);
        !rounds.is_empty()
    });
    forgotten.sort_unstable();
    forgotten
}

/// The poll histories of a run, as stored in its snapshot.
pub type PollHistory = BTreeMap<String, PollRounds>;
