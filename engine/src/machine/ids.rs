//! The numbers a run gives its action calls and timers. Each is journaled where it is made
//! (`StepStarted`/`UndoStarted`, `TimerArmed`) and is how a result, a note, an abort or a
//! firing finds the step it belongs to; neither is ever reused within a run.

use serde::{Deserialize, Serialize};

/// An action call of a run: `1`, `2`, ... in the order the calls started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(pub u32);

impl CallId {
    /// The first call of a run.
    pub const FIRST: CallId = CallId(1);

    /// The call after this one.
    pub fn next(self) -> CallId {
        CallId(self.0.saturating_add(1))
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A timer of a run: the sequence number of the event that armed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimerId(pub u64);

impl std::fmt::Display for TimerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The journal form of a `StepStarted` event's call: `0` for a step that runs no call (a
/// `noop`, a loop, a step whose input could not be rendered), as the journal has always
/// written it.
pub(crate) mod no_call_is_zero {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::CallId;

    pub fn serialize<S: Serializer>(
        call: &Option<CallId>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(call.map_or(0, |call| call.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<CallId>, D::Error> {
        let number = u32::deserialize(deserializer)?;
        Ok((number != 0).then_some(CallId(number)))
    }
}
