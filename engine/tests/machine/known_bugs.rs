//! Known bugs: each reproduction is a regression test, and steers the property test around the
//! bug while it still reproduces (see `Workarounds`).

use std::sync::OnceLock;

use runbook_engine::machine::{EventKind, StepStatus};

use super::snapshots::ROLLBACK;
use super::*;

/// A behaviour of the machine that a test of this file showed to be wrong: a script that
/// reproduces it, and its symptom in the state the script leaves.
pub(crate) struct KnownBug {
    pub(crate) what: &'static str,
    pub(crate) toml: &'static str,
    pub(crate) script: &'static str,
    pub(crate) symptom: fn(&Driver) -> bool,
}

impl KnownBug {
    /// Does the machine still behave this way? (Plays the script without checking invariants.)
    pub(crate) fn reproduces(&self) -> bool {
        let mut driver = Driver::unchecked(self.toml);
        run_script(&mut driver, self.script);
        (self.symptom)(&driver)
    }

    /// The regression test: plays the script with every invariant checked, then checks that the
    /// symptom is gone.
    pub(crate) fn check_fixed(&self) {
        let mut driver = Driver::new(self.toml);
        run_script(&mut driver, self.script);
        if (self.symptom)(&driver) {
            driver.fail(&format!("known bug: {}", self.what));
        }
    }
}

/// `Resume` re-arms every timer `Pause` suspended, even the timer of a step that ended during
/// the pause: here a step's `timeout`, so the run ends with an armed timer, which later fires
/// into a finished run.
pub(crate) const RESUME_REARMS_THE_TIMEOUT_OF_A_FINISHED_STEP: KnownBug = KnownBug {
    what: "resume re-arms the timeout of a step that finished during the pause",
    toml: r#"
name = "b"

[[steps]]
id = "deploy"
action = "exec"
with = { command = "deploy" }
timeout = "10m"
"#,
    script: "
pause
ok deploy
resume
",
    symptom: |driver| !driver.state.timers.is_empty(),
};

/// The same, for a wait that the operator skipped during the pause: the re-armed wait timer
/// fires after the run has ended and turns the skipped step into a succeeded one.
pub(crate) const RESUME_REARMS_THE_WAIT_OF_A_SKIPPED_STEP: KnownBug = KnownBug {
    what: "resume re-arms the wait of a step skipped during the pause",
    toml: r#"
name = "b"

[[steps]]
id = "soak"
action = "wait"
with = { duration = "10s" }

[[steps]]
id = "after"
action = "noop"
"#,
    script: "
advance 4s
pause
skip soak
resume
advance 6s
",
    symptom: |driver| {
        !driver.state.timers.is_empty()
            || driver
                .state
                .step("soak")
                .is_some_and(|step| step.status != StepStatus::Skipped)
    },
};

/// `Cancel` during a rollback aborts the undo in flight but journals nothing for it: the
/// canceled run still shows the undo running with its call, and when the aborted call reports
/// (the runtime always reports), `UndoFailed` is journaled after `RunFinished`.
pub(crate) const CANCEL_DURING_ROLLBACK_LEAVES_THE_UNDO_RUNNING: KnownBug = KnownBug {
    what: "cancel during a rollback leaves the undo running in a canceled run",
    toml: r#"
name = "b"

[[steps]]
id = "create"
action = "exec"
with = { command = "create" }
undo = { action = "exec", with = { command = "delete" } }

[[steps]]
id = "gate"
action = "approval"
"#,
    script: "
ok create
rollback
cancel
late-undo create
",
    symptom: |driver| {
        let ended_at = driver
            .journal
            .iter()
            .position(|event| matches!(event.kind, EventKind::RunFinished { .. }));
        !calls_in_state(&driver.state).is_empty()
            || ended_at.is_some_and(|ended_at| ended_at + 1 != driver.journal.len())
    },
};

/// A retry timer armed while the run is paused (a retryable failure of the call that was in
/// flight when the operator paused) is not suspended: it fires during the pause and starts the
/// next attempt in a paused run.
pub(crate) const RETRY_TIMER_ARMED_WHILE_PAUSED_STARTS_A_CALL: KnownBug = KnownBug {
    what: "a retry timer armed while paused fires and starts a call in the paused run",
    toml: r#"
name = "b"

[[steps]]
id = "flaky"
action = "exec"
with = { command = "flaky" }
retry = { max_attempts = 3, backoff = "1s" }
"#,
    script: "
pause
fail flaky
advance 1s
",
    symptom: |driver| driver.state.paused.is_some() && !driver.pending.is_empty(),
};

/// The same for the poll timer of an `until` step.
pub(crate) const POLL_TIMER_ARMED_WHILE_PAUSED_STARTS_A_CALL: KnownBug = KnownBug {
    what: "a poll timer armed while paused fires and starts a call in the paused run",
    toml: r#"
name = "b"

[[steps]]
id = "lag"
action = "exec"
with = { command = "lag" }
until = "output.lag == 0"
every = "1s"
idempotent = true
"#,
    script: r#"
pause
ok lag {"lag": 5}
advance 1s
"#,
    symptom: |driver| driver.state.paused.is_some() && !driver.pending.is_empty(),
};

/// `retry` accepts a step of a loop iteration that has already finished (the step failed with
/// `on_failure = "continue"`); the loop does not wait for the new attempt, so the run succeeds
/// with the call still in flight, and its result lands after `RunFinished`.
pub(crate) const RETRY_IN_A_FINISHED_ITERATION_OUTLIVES_THE_RUN: KnownBug = KnownBug {
    what: "a retried step of a finished loop iteration outlives the run",
    toml: r#"
name = "b"

[[steps]]
id = "rolling"
for_each = ["a", "b"]
serial = 1

  [[steps.steps]]
  id = "work"
  action = "exec"
  with = { command = "work {{ item }}" }
  on_failure = "continue"
"#,
    script: "
fail! rolling[0].work
retry rolling[0].work
ok rolling[1].work
",
    symptom: |driver| driver.state.status.is_terminal() && !driver.pending.is_empty(),
};

/// `rollback` aborts the call in flight and starts the first undo in the same decision: the undo
/// runs while the aborted call may still be running. `advance_rollback` means to wait ("an
/// aborted call has not reported yet; its result is ignored, but wait for it"), but its check
/// (`steps.any(call.is_some())`) can never hold, since `StepCanceled` already cleared the call.
pub(crate) const ROLLBACK_DOES_NOT_WAIT_FOR_THE_ABORTED_CALL: KnownBug = KnownBug {
    what: "rollback starts an undo before the aborted call has reported",
    toml: ROLLBACK,
    script: "
ok one
rollback
",
    symptom: |driver| !driver.aborted.is_empty() && !driver.pending.is_empty(),
};

#[test]
pub(crate) fn resume_rearms_the_timeout_of_a_step_that_finished_while_paused() {
    RESUME_REARMS_THE_TIMEOUT_OF_A_FINISHED_STEP.check_fixed();
}

#[test]
pub(crate) fn resume_rearms_the_wait_of_a_step_skipped_while_paused() {
    RESUME_REARMS_THE_WAIT_OF_A_SKIPPED_STEP.check_fixed();
}

#[test]
pub(crate) fn cancel_during_rollback_leaves_the_undo_running() {
    CANCEL_DURING_ROLLBACK_LEAVES_THE_UNDO_RUNNING.check_fixed();
}

#[test]
pub(crate) fn retry_timer_armed_while_paused_starts_a_call() {
    RETRY_TIMER_ARMED_WHILE_PAUSED_STARTS_A_CALL.check_fixed();
}

#[test]
pub(crate) fn poll_timer_armed_while_paused_starts_a_call() {
    POLL_TIMER_ARMED_WHILE_PAUSED_STARTS_A_CALL.check_fixed();
}

#[test]
pub(crate) fn retry_in_a_finished_iteration_outlives_the_run() {
    RETRY_IN_A_FINISHED_ITERATION_OUTLIVES_THE_RUN.check_fixed();
}

#[test]
pub(crate) fn rollback_does_not_wait_for_the_aborted_call() {
    ROLLBACK_DOES_NOT_WAIT_FOR_THE_ABORTED_CALL.check_fixed();
}

/// How the property test steers around the known bugs that still reproduce, so that it keeps
/// checking everything else. Each flag is on only while its bug reproduces.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Workarounds {
    /// Pause only when no timer is armed, so that no suspended timer can go stale.
    pub(crate) stale_timers_rearmed: bool,
    /// No `cancel` while a rollback runs.
    pub(crate) cancel_during_rollback: bool,
    /// No timer fires while the run is paused (it fires after `resume`).
    pub(crate) paused_timers_fire: bool,
    /// No `retry` of a step in a loop iteration that is over (settle skips it instead).
    pub(crate) retry_in_ended_loop: bool,
}

pub(crate) fn workarounds() -> Workarounds {
    static KNOWN: OnceLock<Workarounds> = OnceLock::new();
    *KNOWN.get_or_init(|| Workarounds {
        stale_timers_rearmed: RESUME_REARMS_THE_TIMEOUT_OF_A_FINISHED_STEP.reproduces()
            || RESUME_REARMS_THE_WAIT_OF_A_SKIPPED_STEP.reproduces(),
        cancel_during_rollback: CANCEL_DURING_ROLLBACK_LEAVES_THE_UNDO_RUNNING.reproduces(),
        paused_timers_fire: RETRY_TIMER_ARMED_WHILE_PAUSED_STARTS_A_CALL.reproduces()
            || POLL_TIMER_ARMED_WHILE_PAUSED_STARTS_A_CALL.reproduces(),
        retry_in_ended_loop: RETRY_IN_A_FINISHED_ITERATION_OUTLIVES_THE_RUN.reproduces(),
    })
}
