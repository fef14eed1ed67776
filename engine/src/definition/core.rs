//! The actions the engine itself implements, by name: the one place for the names the parser,
//! the machine, the checks and the listing branch on. Domain actions (`rocketmq.*`) are
//! registered by `runbooks` and are never one of these.

/// A core action; `ForEach` is the loop a step with `for_each` runs, and `WaitUntil` the
/// sugar that polls another action (both are step forms, not actions a step may name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreAction {
    Exec,
    Wait,
    WaitUntil,
    Approval,
    Window,
    Noop,
    ForEach,
}

impl CoreAction {
    pub const ALL: [CoreAction; 7] = [
        CoreAction::Exec,
        CoreAction::Wait,
        CoreAction::WaitUntil,
        CoreAction::Approval,
        CoreAction::Window,
        CoreAction::Noop,
        CoreAction::ForEach,
    ];

    /// The name a runbook file and the journal use.
    pub fn name(self) -> &'static str {
        match self {
            CoreAction::Exec => "exec",
            CoreAction::Wait => "wait",
            CoreAction::WaitUntil => "wait_until",
            CoreAction::Approval => "approval",
            CoreAction::Window => "window",
            CoreAction::Noop => "noop",
            CoreAction::ForEach => "for_each",
        }
    }

    /// The core action named `action`, if it is one.
    pub fn of(action: &str) -> Option<CoreAction> {
        CoreAction::ALL
            .into_iter()
            .find(|core| core.name() == action)
    }

    /// Whether `action` is this one.
    pub fn is(self, action: &str) -> bool {
        self.name() == action
    }

    /// Whether a step of this action is done by the machine itself (it decides the step's end:
    /// at once, at a timer, at an approval, when its iterations end) rather than by an action
    /// call the runtime runs.
    pub fn is_done_by_machine(self) -> bool {
        matches!(
            self,
            CoreAction::Noop
                | CoreAction::Wait
                | CoreAction::Window
                | CoreAction::Approval
                | CoreAction::ForEach
        )
    }

    /// The names a step's `action` may take among the core actions (not the loop form).
    pub fn step_action_names() -> Vec<&'static str> {
        CoreAction::ALL
            .into_iter()
            .filter(|core| *core != CoreAction::ForEach)
            .map(CoreAction::name)
            .collect()
    }
}

/// Whether a step of `action` runs an action call (journaled with a call number): a domain
/// action, `exec`, or the action `wait_until` polls.
pub fn makes_call(action: &str) -> bool {
    !CoreAction::of(action).is_some_and(CoreAction::is_done_by_machine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for core in CoreAction::ALL {
            assert_eq!(CoreAction::of(core.name()), Some(core));
        }
        assert_eq!(CoreAction::of("rocketmq.command"), None);
        assert!(makes_call("exec") && makes_call("rocketmq.topic_upsert"));
        assert!(!makes_call("noop") && !makes_call("for_each") && !makes_call("approval"));
        assert_eq!(
            CoreAction::step_action_names(),
            ["exec", "wait", "wait_until", "approval", "window", "noop"]
        );
    }
}
