//! Tests of the pure run state machine (`engine::machine`) through a small deterministic driver.
//!
//! The driver plays the part of the runtime: it journals each decision's events, keeps the action
//! calls in flight, feeds `Continue` after a decision that yields, fires durable timers from a
//! manual clock, and simulates a daemon crash and restart as `runtime::Engine::recover` does:
//! replay the journal, forget the calls in flight, `Continue`, then hand each call the state shows
//! in flight back to its action, which re-attaches to it or reports it `Interrupted`. Every
//! decision is checked against a simple model (see [`Model`] and [`Driver::check_state`]), so all
//! the tests below share the same invariants.
//!
//! - Snapshot tests: canonical runs written as a tiny script (see [`run_script`]), snapshotted as
//!   a transcript of the operations, the events they journaled and the effects they asked for.
//!   The run id and the clock start are fixed and times are printed relative to the start, so
//!   nothing needs redacting.
//! - Regression tests, one per bug found: each runs the bug's reproduction and fails while the
//!   machine still behaves that way (see [`KnownBug`]).
//! - A property test: random definitions from a small space, random operations (including
//!   `Restart`), then a settle phase that must bring every run to an end. While a known bug still
//!   reproduces, the property test steers around it (see [`Workarounds`]), so that it keeps
//!   checking everything else; each workaround switches itself off once its bug is fixed.

use serde_json::json;

use runbook_engine::machine::ActionFailure;

#[path = "machine/driver.rs"]
mod driver;
#[path = "machine/known_bugs.rs"]
mod known_bugs;
#[path = "machine/model.rs"]
mod model;
#[path = "machine/operator_rules.rs"]
mod operator_rules;
#[path = "machine/property.rs"]
mod property;
#[path = "machine/snapshots.rs"]
mod snapshots;

use driver::*;
use known_bugs::*;
use model::*;

/// Runs a script, one operation a line (`#` starts a comment):
///
/// - `ok STEP [JSON]`, `fail STEP` (retryable), `fail! STEP` (permanent): the call of STEP ends;
///   `undo-ok STEP`, `undo-fail STEP`: the call of its undo ends;
/// - `late STEP`, `late-undo STEP`: the aborted call of STEP (of its undo) reports after all;
///   `late-ok STEP`: it reports that it ran to its end and succeeded;
/// - `advance DURATION`: time passes and due timers fire;
/// - `down DURATION`: the daemon is down that long, then restarts;
/// - `approve [STEP]`, `pause`, `resume`, `cancel`, `rollback`, `retry STEP`, `skip STEP`;
/// - `note STEP JSON`: the action of STEP's call journals a note about it;
/// - `restart`: a crash and restart, no call can be re-attached; `restart reattach`: every call
///   can be; `restart never-started`: none can be, and none had started; `crash-at-yield`: a crash right after the next decision that yields is committed;
/// - `expect STATUS`: the run's status now (checked at once).
///
/// Rejected operator requests are not errors: the transcript shows them.
fn run_script(driver: &mut Driver, script: &str) {
    let lines = script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    for line in lines {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let duration = || {
            let duration = runbook_engine::duration::parse(rest)
                .unwrap_or_else(|error| panic!("{line}: {error}"));
            chrono::Duration::from_std(duration).expect("a short duration")
        };
        let failure = |retryable| {
            Err(ActionFailure {
                message: "exit status 1".to_owned(),
                retryable,
                ..ActionFailure::default()
            })
        };
        let _ = match verb {
            "ok" | "undo-ok" => {
                let (step, output) = rest.split_once(' ').unwrap_or((rest, ""));
                let output = if output.is_empty() {
                    json!({"exit_code": 0})
                } else {
                    serde_json::from_str(output)
                        .unwrap_or_else(|error| panic!("{line}: bad JSON: {error}"))
                };
                let call = driver.call_of(&driver.pending, step, verb == "undo-ok");
                driver.log(format!("> {line}"));
                driver.finish_call(call, Ok(output))
            }
            "fail" | "fail!" | "undo-fail" => {
                let call = driver.call_of(&driver.pending, rest, verb == "undo-fail");
                driver.log(format!("> {line}"));
                driver.finish_call(call, failure(verb != "fail!"))
            }
            "late" | "late-undo" | "late-ok" => {
                let call = driver.call_of(&driver.aborted, rest, verb == "late-undo");
                driver.late_report(call, verb == "late-ok");
                Ok(())
            }
            "advance" => {
                driver.advance_time(duration());
                Ok(())
            }
            "down" => {
                driver.down(duration(), |_| false);
                Ok(())
            }
            "approve" => driver.approve((!rest.is_empty()).then_some(rest)),
            "pause" => driver.pause(),
            "resume" => driver.resume(),
            "cancel" => driver.cancel(),
            "rollback" => driver.rollback(),
            "retry" => driver.retry(rest),
            "skip" => driver.skip(rest),
            "restart" => {
                match rest {
                    "" => driver.restart(|_| false),
                    "reattach" => driver.restart(|_| true),
                    "never-started" => driver.restart_never_started(),
                    other => panic!("{line}: unknown restart mode {other:?}"),
                }
                Ok(())
            }
            "crash-at-yield" => {
                driver.crash_at_yield = Some(0);
                Ok(())
            }
            "note" => {
                let (step, note) = rest.split_once(' ').unwrap_or((rest, "{}"));
                let note = serde_json::from_str(note)
                    .unwrap_or_else(|error| panic!("{line}: bad JSON: {error}"));
                let call = driver.call_of(&driver.pending, step, false);
                driver.note(call, note)
            }
            "expect" => {
                if driver.state.status.name() != rest {
                    driver.fail(&format!(
                        "expected the run to be {rest}, it is {}",
                        driver.state.status.name()
                    ));
                }
                Ok(())
            }
            other => panic!("unknown script verb {other:?} in {line:?}"),
        };
    }
}

/// Runs `script` against a run of `toml` and snapshots the transcript.
fn check(name: &str, toml: &str, script: &str) {
    let mut driver = Driver::new(toml);
    run_script(&mut driver, script);
    driver.log(format!(
        "= {} (timers: {}, calls in flight: {})",
        driver.state.status.name(),
        driver.state.timers.len(),
        driver.pending.len()
    ));
    let mut settings = insta::Settings::clone_current();
    settings.set_description(format!(
        "{}\n--- script ---\n{}",
        toml.trim(),
        script.trim()
    ));
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_json_snapshot!(name, driver.transcript));
}
