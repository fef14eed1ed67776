//! Operator actions that must not hurt: a skip or retry of an approval gate is an approval of
//! it; a canceled run can still be rolled back; `cancel` with `rollback` runs the undos; what a
//! run waits for, and since when.

use runbook_engine::machine::{Actor, CallId, Input, Rejection, RunStatus, StepStatus};
use runbook_engine::store::listing;

use super::*;

const DISTINCT_GATE: &str = r#"
name = "two-person"

[[steps]]
id = "gate"
action = "approval"
timeout = "1h"
with = { prompt = "stop the broker?", distinct_approver = true }

[[steps]]
id = "stop"
action = "exec"
with = { command = "stop broker" }
"#;

fn as_uid(uid: u32) -> Actor {
    Actor::uid(uid)
}

fn skip_as(
    driver: &mut Driver,
    step: &str,
    by: Actor,
    comment: Option<&str>,
) -> Result<(), Rejection> {
    let input = Input::Skip {
        step: step.to_owned(),
        by,
        comment: comment.map(str::to_owned),
    };
    driver.operator(&format!("skip {step}"), input)
}

fn retry_as(
    driver: &mut Driver,
    step: &str,
    by: Actor,
    comment: Option<&str>,
) -> Result<(), Rejection> {
    let input = Input::Retry {
        step: step.to_owned(),
        by,
        comment: comment.map(str::to_owned),
    };
    driver.operator(&format!("retry {step}"), input)
}

#[test]
fn the_starter_cannot_skip_a_timed_out_two_person_gate() {
    let mut driver = Driver::new(DISTINCT_GATE);
    driver.advance_time(chrono::Duration::hours(1));
    assert_eq!(driver.state.status, RunStatus::NeedsAttention);
    // The starter (uid 1000), with a reason: refused, nothing journaled.
    let before = driver.journal.len();
    let refused = skip_as(&mut driver, "gate", operator(), Some("in a hurry"));
    match refused {
        Err(Rejection::Conflict(message)) => assert!(
            message.contains("skip of approval gate gate counts as its approval")
                && message.contains("someone other than uid 1000"),
            "{message}"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let refused = retry_as(&mut driver, "gate", operator(), Some("again"));
    assert!(
        matches!(refused, Err(Rejection::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(driver.journal.len(), before);
    // Someone else, without a reason: refused, naming the comment.
    match skip_as(&mut driver, "gate", as_uid(2000), None) {
        Err(Rejection::Invalid { message, field }) => {
            assert_eq!(field, "comment");
            assert!(message.contains("--comment REASON"), "{message}");
        }
        other => panic!("expected an invalid request, got {other:?}"),
    }
    // Someone else, with a reason: the gate is passed, journaled with who and why.
    skip_as(
        &mut driver,
        "gate",
        as_uid(2000),
        Some("broker already drained, checked"),
    )
    .unwrap();
    let gate = driver.state.step("gate").unwrap();
    assert_eq!(gate.status, StepStatus::Skipped);
    let entry = driver.state.audit.last().unwrap();
    assert_eq!(
        (
            entry.action.as_str(),
            entry.actor.uid,
            entry.comment.as_deref()
        ),
        ("skip", 2000, Some("broker already drained, checked"))
    );
}

#[test]
fn a_skip_of_a_loop_is_an_approval_of_the_gates_inside_it() {
    let mut driver = Driver::new(
        r#"
name = "gates-in-a-loop"

[[steps]]
id = "each"
for_each = ["a", "b"]
timeout = "1h"
  [[steps.steps]]
  id = "gate"
  action = "approval"
  with = { distinct_approver = true }

[[steps]]
id = "after"
action = "noop"
"#,
    );
    driver.advance_time(chrono::Duration::hours(1));
    assert_eq!(driver.state.status, RunStatus::NeedsAttention);
    let refused = skip_as(&mut driver, "each", operator(), Some("go on"));
    match refused {
        Err(Rejection::Conflict(message)) => {
            assert!(
                message.contains("would pass approval gate each[0].gate"),
                "{message}"
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    skip_as(
        &mut driver,
        "each",
        as_uid(2000),
        Some("approved on the phone"),
    )
    .unwrap();
}

#[test]
fn a_skip_of_a_gate_without_rules_needs_only_a_reason() {
    let mut driver = Driver::new(
        r#"
name = "gate"
[[steps]]
id = "gate"
action = "approval"
timeout = "1m"
"#,
    );
    driver.advance_time(chrono::Duration::minutes(1));
    assert!(matches!(
        skip_as(&mut driver, "gate", operator(), Some("  ")),
        Err(Rejection::Invalid { .. })
    ));
    skip_as(&mut driver, "gate", operator(), Some("not needed today")).unwrap();
    assert_eq!(driver.state.status, RunStatus::Succeeded);
}

const UNDOABLE: &str = r#"
name = "half-changed"

[[steps]]
id = "read_only"
action = "exec"
with = { command = "set read-only" }
undo = { action = "exec", with = { command = "set read-write" } }

[[steps]]
id = "stop"
action = "exec"
with = { command = "stop broker" }
undo = { action = "exec", with = { command = "start broker" } }

[[steps]]
id = "gate"
action = "approval"
"#;

#[test]
fn a_canceled_run_rolls_back_the_undos_it_still_owes() {
    let mut driver = Driver::new(UNDOABLE);
    run_script(
        &mut driver,
        "ok read_only\nok stop\ncancel\nexpect canceled",
    );
    assert_eq!(driver.state.undos_left(), ["stop", "read_only"]);
    run_script(
        &mut driver,
        "rollback\nexpect running\nundo-ok stop\nundo-ok read_only",
    );
    assert_eq!(driver.state.status, RunStatus::RolledBack);
    assert!(driver.state.undos_left().is_empty());
    // Nothing is left to undo: a second rollback is refused.
    assert!(matches!(driver.rollback(), Err(Rejection::Conflict(_))));
}

#[test]
fn a_canceled_rollback_runs_only_the_undos_not_yet_run() {
    let mut driver = Driver::new(UNDOABLE);
    run_script(
        &mut driver,
        "ok read_only\nok stop\nrollback\nundo-ok stop\ncancel\nexpect canceled",
    );
    assert_eq!(driver.state.undos_left(), ["read_only"]);
    // The undo stopped by the cancel may have done its work: the operator decides about it.
    run_script(&mut driver, "rollback\nexpect needs_attention");
    let attention = driver.state.attention.clone().unwrap();
    assert_eq!(attention.step, "read_only");
    assert!(
        attention
            .message
            .contains("was stopped when the run was canceled"),
        "{attention:?}"
    );
    run_script(&mut driver, "retry read_only\nundo-ok read_only");
    assert_eq!(driver.state.status, RunStatus::RolledBack);
    let undone: Vec<&str> = driver
        .journal
        .iter()
        .filter_map(|event| match &event.kind {
            runbook_engine::machine::EventKind::UndoStarted { step, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    // The undo of `stop` ran once, before the cancel; the undo canceled with the run ran again
    // when the operator said so.
    assert_eq!(undone, ["stop", "read_only", "read_only"]);
}

#[test]
fn a_canceled_run_without_undos_left_cannot_be_rolled_back() {
    let mut driver = Driver::new(UNDOABLE);
    run_script(&mut driver, "cancel\nexpect canceled");
    match driver.rollback() {
        Err(Rejection::Conflict(message)) => {
            assert!(
                message.contains("no undo of it is left to run"),
                "{message}"
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn cancel_with_rollback_runs_the_undos_newest_first() {
    let mut driver = Driver::new(UNDOABLE);
    run_script(&mut driver, "ok read_only\nok stop");
    let input = Input::Cancel {
        by: operator(),
        comment: Some("wrong broker".to_owned()),
        rollback: true,
    };
    driver.operator("cancel --rollback", input).unwrap();
    let actions: Vec<&str> = driver
        .state
        .audit
        .iter()
        .map(|entry| entry.action.as_str())
        .collect();
    assert_eq!(actions, ["start", "cancel", "rollback"]);
    run_script(
        &mut driver,
        "undo-ok stop\nundo-ok read_only\nexpect rolled_back",
    );
}

#[test]
fn a_run_says_what_it_waits_for_and_since_when() {
    let mut driver = Driver::new(
        r#"
name = "waits"

[[steps]]
id = "gate"
action = "approval"
timeout = "1h"

[[steps]]
id = "settle"
action = "wait"
with = { duration = "10m" }

[[steps]]
id = "drained"
action = "exec"
with = { command = "lag" }
until = "output.lag == 0"
every = "1m"

[[steps]]
id = "last"
action = "exec"
with = { command = "fail" }
"#,
    );
    let wait = |driver: &Driver| {
        listing::wait(&driver.state)
            .map(|wait| (wait.kind, wait.since.map(|at| ms(at - driver.start))))
    };
    assert_eq!(wait(&driver), Some(("approval".to_owned(), Some(0))));
    driver.advance_time(chrono::Duration::minutes(5));
    // Still the approval, since the start; not the gate's timeout.
    assert_eq!(wait(&driver), Some(("approval".to_owned(), Some(0))));
    driver.approve(None).unwrap();
    assert_eq!(wait(&driver), Some(("timer".to_owned(), Some(300_000))));
    driver.advance_time(chrono::Duration::minutes(10));
    assert_eq!(wait(&driver), None, "a call in flight: running");
    run_script(&mut driver, r#"ok drained {"lag": 5}"#);
    assert_eq!(wait(&driver), Some(("poll".to_owned(), Some(900_000))));
    driver.advance_time(chrono::Duration::minutes(1));
    run_script(&mut driver, r#"ok drained {"lag": 3}"#);
    // Polling on: since the first poll.
    assert_eq!(wait(&driver), Some(("poll".to_owned(), Some(900_000))));
    driver.advance_time(chrono::Duration::minutes(1));
    run_script(&mut driver, r#"ok drained {"lag": 0}"#);
    run_script(&mut driver, "fail! last");
    assert_eq!(
        wait(&driver),
        Some(("operator".to_owned(), Some(1_020_000)))
    );
}

#[test]
fn an_idempotent_undo_stopped_by_a_cancel_runs_again_at_the_next_rollback() {
    let toml = UNDOABLE.replace(
        r#"with = { command = "set read-write" } }"#,
        r#"with = { command = "set read-write" }, idempotent = true }"#,
    );
    let mut driver = Driver::new(&toml);
    run_script(
        &mut driver,
        "ok read_only\nok stop\nrollback\nundo-ok stop\ncancel\nrollback\nundo-ok read_only",
    );
    assert_eq!(driver.state.status, RunStatus::RolledBack);
}

#[test]
fn a_step_of_a_loop_that_timed_out_cannot_be_retried() {
    let mut driver = Driver::new(
        r#"
name = "loop-timeout"

[[steps]]
id = "each"
for_each = ["a"]
timeout = "5s"
on_failure = "continue"
  [[steps.steps]]
  id = "work"
  action = "exec"
  with = { command = "work {{ item }}" }
"#,
    );
    run_script(
        &mut driver,
        "fail! each[0].work\nexpect needs_attention\nadvance 5s",
    );
    assert_eq!(
        driver.state.step("each").unwrap().status,
        StepStatus::Failed
    );
    // A new attempt would outlive the loop: the run could end with it in flight.
    match driver.retry("each[0].work") {
        Err(Rejection::Conflict(message)) => {
            assert!(
                message.contains("is in loop each, which has ended"),
                "{message}"
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    run_script(&mut driver, "skip each[0].work\nexpect succeeded");
}

/// A retry after a timeout starts the step's next call while the timed-out one may still be
/// stopping: both are in flight, and recovery after a crash must hand back both — the stopped
/// one only to be stopped and heard from, the new one to go on. (Recovery used to take the
/// step's call *or* its stopped call, and flagged the one it took as stopped: the new attempt
/// was killed at the restart and the stopped call's end was never awaited.)
#[test]
fn a_retried_step_has_two_calls_in_flight_the_stopped_one_and_the_new_one() {
    let mut driver = Driver::new(
        r#"
name = "r"

[[steps]]
id = "drain"
action = "exec"
with = { command = "drain" }
timeout = "2s"
"#,
    );
    run_script(&mut driver, "advance 2s\nretry drain\n");
    let found: Vec<(CallId, bool)> = driver
        .state
        .calls_in_flight()
        .into_iter()
        .map(|found| (found.call.call, found.aborting))
        .collect();
    assert_eq!(found, [(CallId(1), true), (CallId(2), false)]);
    // After a crash, both come back: the stopped call's end is still awaited.
    run_script(&mut driver, "restart\nlate drain\n");
    assert!(driver
        .state
        .steps
        .iter()
        .all(|step| step.aborting.is_none()));
}
