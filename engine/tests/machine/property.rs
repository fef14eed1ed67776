//! The property test: random definitions and operations (restarts included), then a settle
//! phase that must bring every run to an end, with every invariant checked on the way.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use runbook_engine::machine::{
    ActionFailure, Input, IterationStatus, StepStatus, TimerId, WaitingFor,
};

use super::*;

#[derive(Debug, Clone)]
enum Leaf {
    Exec { idempotent: bool },
    Wait { secs: u8 },
}

#[derive(Debug, Clone)]
struct Policy {
    on_failure: &'static str,
    /// (max_attempts, backoff in ms)
    retry: Option<(u32, u32)>,
    /// An undo: `Some(idempotent)`.
    undo: Option<bool>,
    /// A step timeout in seconds.
    timeout: Option<u8>,
}

#[derive(Debug, Clone)]
enum Kind {
    Noop,
    Exec {
        idempotent: bool,
    },
    Wait {
        secs: u8,
    },
    Approval,
    Poll {
        idempotent: bool,
    },
    Loop {
        parallel: bool,
        items: u8,
        width: u8,
        steps: Vec<(Leaf, Policy)>,
    },
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![Just("pause"), Just("abort"), Just("continue")],
        prop::option::weighted(0.4, (1u32..=3, prop_oneof![Just(500u32), Just(1000u32)])),
        prop::option::weighted(0.4, any::<bool>()),
        prop::option::weighted(0.15, prop_oneof![Just(2u8), Just(5u8)]),
    )
        .prop_map(|(on_failure, retry, undo, timeout)| Policy {
            on_failure,
            retry,
            undo,
            timeout,
        })
}

fn leaf() -> impl Strategy<Value = Leaf> {
    prop_oneof![
        any::<bool>().prop_map(|idempotent| Leaf::Exec { idempotent }),
        (0u8..=3).prop_map(|secs| Leaf::Wait { secs })
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::Noop),
        3 => any::<bool>().prop_map(|idempotent| Kind::Exec { idempotent }),
        2 => (0u8..=3).prop_map(|secs| Kind::Wait { secs }),
        1 => Just(Kind::Approval),
        2 => any::<bool>().prop_map(|idempotent| Kind::Poll { idempotent }),
        2 => (any::<bool>(), 1u8..=3, 1u8..=2, prop::collection::vec((leaf(), policy()), 1..=2))
            .prop_map(|(parallel, items, width, steps)| Kind::Loop { parallel, items, width, steps }),
    ]
}

fn definition_text(steps: &[(Kind, Policy)]) -> String {
    fn policy_lines(id: &str, policy: &Policy, indent: &str, out: &mut String) {
        out.push_str(&format!("{indent}on_failure = \"{}\"\n", policy.on_failure));
        if let Some(secs) = policy.timeout {
            out.push_str(&format!("{indent}timeout = \"{secs}s\"\n"));
        }
        if let Some((max_attempts, backoff_ms)) = policy.retry {
            out.push_str(&format!("{indent}retry = {{ max_attempts = {max_attempts}, backoff = \"{backoff_ms}ms\" }}\n"));
        }
        if let Some(idempotent) = policy.undo {
            out.push_str(&format!(
                "{indent}undo = {{ action = \"exec\", with = {{ command = \"undo {id}\" }}, idempotent = {idempotent} }}\n"
            ));
        }
    }
    let mut out = String::from("name = \"prop\"\n");
    for (index, (kind, policy)) in steps.iter().enumerate() {
        let id = format!("s{index}");
        out.push_str(&format!("\n[[steps]]\nid = \"{id}\"\n"));
        match kind {
            Kind::Noop => out.push_str("action = \"noop\"\n"),
            Kind::Exec { idempotent } => {
                out.push_str(&format!("action = \"exec\"\nwith = {{ command = \"do {id}\" }}\nidempotent = {idempotent}\n"))
            }
            Kind::Wait { secs } => out.push_str(&format!("action = \"wait\"\nwith = {{ duration = \"{secs}s\" }}\n")),
            Kind::Approval => out.push_str("action = \"approval\"\nwith = { prompt = \"go?\" }\n"),
            Kind::Poll { idempotent } => out.push_str(&format!(
                "action = \"exec\"\nwith = {{ command = \"poll {id}\" }}\nuntil = \"output.done\"\nevery = \"1s\"\nidempotent = {idempotent}\n"
            )),
            Kind::Loop { .. } => {}
        }
        match kind {
            Kind::Loop {
                parallel,
                items,
                width,
                steps,
            } => {
                let items: Vec<String> = (0..*items).map(|item| format!("\"i{item}\"")).collect();
                out.push_str(&format!(
                    "for_each = [{}]\nas = \"host\"\n{} = {width}\non_failure = \"{}\"\n",
                    items.join(", "),
                    if *parallel { "parallel" } else { "serial" },
                    policy.on_failure
                ));
                if let Some(secs) = policy.timeout {
                    out.push_str(&format!("timeout = \"{secs}s\"\n"));
                }
                for (nested_index, (leaf, policy)) in steps.iter().enumerate() {
                    let nested_id = format!("{id}n{nested_index}");
                    out.push_str(&format!("\n  [[steps.steps]]\n  id = \"{nested_id}\"\n"));
                    match leaf {
                        Leaf::Exec { idempotent } => out.push_str(&format!(
                            "  action = \"exec\"\n  with = {{ command = \"do {nested_id} {{{{ host }}}}\" }}\n  idempotent = {idempotent}\n"
                        )),
                        Leaf::Wait { secs } => out.push_str(&format!("  action = \"wait\"\n  with = {{ duration = \"{secs}s\" }}\n")),
                    }
                    policy_lines(&nested_id, policy, "  ", &mut out);
                }
            }
            _ => policy_lines(&id, policy, "", &mut out),
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Outcome {
    Ok { done: bool },
    Fail { retryable: bool },
}

#[derive(Debug, Clone)]
enum Op {
    /// A call in flight ends (`pick` among them).
    Finish {
        pick: usize,
        outcome: Outcome,
    },
    /// An aborted call reports after all.
    LateReport {
        pick: usize,
        /// It ran to its end and succeeded although it was aborted.
        completed: bool,
    },
    Advance {
        ms: u32,
    },
    Approve,
    Pause,
    Resume,
    Cancel,
    Rollback,
    /// `None`: the step that needs attention; `Some`: any started step.
    Retry {
        pick: Option<usize>,
    },
    Skip {
        pick: Option<usize>,
    },
    /// The action of a call in flight (or of an aborted one) journals a note.
    Note {
        pick: usize,
        aborted: bool,
    },
    /// A timer is reported due before its deadline (a clock that jumped back): nothing happens.
    EarlyFire {
        pick: usize,
    },
    /// The next decision that yields is followed by a crash before its continue is fed.
    CrashAtNextYield {
        reattach: u8,
    },
    /// The continue of the next decision that yields comes after the next operation.
    DeferNextContinue,
    /// A crash, the daemon down for `down_ms`, and a restart; the calls in flight whose bit is
    /// set in `reattach` are re-attached.
    Restart {
        down_ms: u32,
        reattach: u8,
    },
    /// A crash and restart after which no call in flight had been released: each is reported
    /// never started and started again.
    RestartNeverStarted,
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        3 => any::<bool>().prop_map(|done| Outcome::Ok { done }),
        2 => any::<bool>().prop_map(|retryable| Outcome::Fail { retryable }),
    ];
    prop_oneof![
        32 => (any::<usize>(), outcome).prop_map(|(pick, outcome)| Op::Finish { pick, outcome }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, completed)| Op::LateReport { pick, completed }),
        20 => prop_oneof![Just(0u32), 1u32..=1500, 1500u32..=4000].prop_map(|ms| Op::Advance { ms }),
        8 => Just(Op::Approve),
        6 => Just(Op::Pause),
        8 => Just(Op::Resume),
        1 => Just(Op::Cancel),
        2 => Just(Op::Rollback),
        8 => prop::option::weighted(0.6, any::<usize>()).prop_map(|pick| Op::Retry { pick }),
        4 => prop::option::weighted(0.6, any::<usize>()).prop_map(|pick| Op::Skip { pick }),
        3 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(pick, aborted)| Op::Note { pick, aborted }),
        2 => any::<usize>().prop_map(|pick| Op::EarlyFire { pick }),
        3 => any::<u8>().prop_map(|reattach| Op::CrashAtNextYield { reattach }),
        3 => Just(Op::DeferNextContinue),
        8 => (prop_oneof![Just(0u32), 1u32..=5000], prop_oneof![Just(0u8), any::<u8>()])
            .prop_map(|(down_ms, reattach)| Op::Restart { down_ms, reattach }),
        2 => Just(Op::RestartNeverStarted),
    ]
}

impl Driver {
    /// A step key for an operator's retry or skip.
    fn target(&self, pick: Option<usize>) -> Option<String> {
        match pick {
            None => self
                .state
                .attention
                .as_ref()
                .map(|attention| attention.step.clone()),
            Some(pick) if !self.state.steps.is_empty() => {
                Some(self.state.steps[pick % self.state.steps.len()].key.clone())
            }
            Some(_) => None,
        }
    }

    /// Is `key` a step of a loop iteration that is over (or of a loop that is over)?
    fn in_ended_loop(&self, key: &str) -> bool {
        let Some(open) = key.rfind('[') else {
            return false;
        };
        let Some(parent) = self.state.step(&key[..open]) else {
            return false;
        };
        let index: Option<usize> = key[open + 1..]
            .split(']')
            .next()
            .and_then(|index| index.parse().ok());
        let iteration_done = parent
            .iterations
            .as_ref()
            .zip(index)
            .and_then(|(iterations, index)| iterations.get(index))
            .is_some_and(|iteration| iteration.status == IterationStatus::Done);
        !parent.status.is_active() || iteration_done
    }

    fn apply(&mut self, op: &Op) {
        self.apply_op(op);
        // A continue left for later comes now, if the operation did not already feed it.
        self.drain_continues();
    }

    fn apply_op(&mut self, op: &Op) {
        let workarounds = self.workarounds;
        // Rejected requests are expected here; the transcript shows them.
        let _ = match op {
            Op::Finish { pick, outcome } => {
                if self.pending.is_empty() {
                    return;
                }
                let call = self.pending[pick % self.pending.len()].clone();
                let result = match outcome {
                    Outcome::Ok { done } => Ok(json!({"exit_code": 0, "done": done})),
                    Outcome::Fail { retryable } => Err(ActionFailure {
                        message: "exit status 1".to_owned(),
                        retryable: *retryable,
                        ..ActionFailure::default()
                    }),
                };
                self.log(format!(
                    "> finish #{} {}{} {outcome:?}",
                    call.call,
                    if call.undo { "undo " } else { "" },
                    call.step
                ));
                self.finish_call(call.call, result)
            }
            Op::LateReport { pick, completed } => {
                if !self.aborted.is_empty() {
                    let call = self.aborted[pick % self.aborted.len()].call;
                    self.late_report(call, *completed);
                }
                Ok(())
            }
            Op::Advance { ms } => {
                self.advance_time(chrono::Duration::milliseconds(i64::from(*ms)));
                Ok(())
            }
            Op::Approve => self.approve(None),
            Op::Pause if workarounds.stale_timers_rearmed && !self.state.timers.is_empty() => {
                Ok(())
            }
            Op::Pause => self.pause(),
            Op::Resume => self.resume(),
            Op::Cancel if workarounds.cancel_during_rollback && self.state.rollback.is_some() => {
                Ok(())
            }
            Op::Cancel => self.cancel(),
            Op::Rollback => self.rollback(),
            Op::Retry { pick } => match self.target(*pick) {
                Some(key) if workarounds.retry_in_ended_loop && self.in_ended_loop(&key) => Ok(()),
                Some(key) => self.retry(&key),
                None => Ok(()),
            },
            Op::Skip { pick } => match self.target(*pick) {
                Some(key) => self.skip(&key),
                None => Ok(()),
            },
            Op::Note { pick, aborted } => {
                let calls = if *aborted {
                    &self.aborted
                } else {
                    &self.pending
                };
                if calls.is_empty() {
                    return;
                }
                let call = calls[pick % calls.len()].call;
                let accepted = self.note(call, json!({"pid": pick % 1000})).is_ok();
                if accepted == *aborted {
                    self.violation(&format!(
                        "a note of {} call #{call} was {}",
                        if *aborted { "aborted" } else { "in-flight" },
                        if accepted { "accepted" } else { "rejected" }
                    ));
                }
                Ok(())
            }
            Op::EarlyFire { pick } => {
                let early: Vec<TimerId> = self
                    .state
                    .timers
                    .iter()
                    .filter(|timer| timer.fire_at > self.now)
                    .map(|timer| timer.timer)
                    .collect();
                if early.is_empty() {
                    return;
                }
                let timer = early[pick % early.len()];
                self.log(format!("> timer {timer} reported due early"));
                let before_len = self.journal.len();
                let _ = self.feed(Input::TimerFired { timer });
                if self.journal.len() != before_len {
                    self.violation(&format!("timer {timer} fired before its deadline"));
                }
                Ok(())
            }
            Op::CrashAtNextYield { reattach } => {
                self.crash_at_yield = Some(*reattach);
                Ok(())
            }
            Op::DeferNextContinue => {
                self.defer_continue = true;
                Ok(())
            }
            Op::Restart { down_ms, reattach } => {
                let down = chrono::Duration::milliseconds(i64::from(*down_ms));
                self.down(down, |index| reattach & (1 << (index % 8)) != 0);
                Ok(())
            }
            Op::RestartNeverStarted => {
                self.restart_never_started();
                Ok(())
            }
        };
    }

    /// Resolves everything until the run ends: calls succeed, timers fire, approvals are given,
    /// failed or interrupted steps are retried (a few times, then skipped), a pause is lifted.
    fn settle(&mut self) {
        self.log("> settle".to_owned());
        let mut retries: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..1000 {
            self.defer_continue = false;
            self.drain_continues();
            if self.state.status.is_terminal() {
                return;
            }
            let waits_for_approval = self
                .state
                .steps
                .iter()
                .find(|step| {
                    step.status == StepStatus::Waiting
                        && step.waiting_for == Some(WaitingFor::Approval)
                })
                .map(|step| step.key.clone());
            if let Some(call) = self.pending.first().cloned() {
                self.log(format!(
                    "> finish #{} {}{} ok",
                    call.call,
                    if call.undo { "undo " } else { "" },
                    call.step
                ));
                let output = json!({"exit_code": 0, "done": true});
                let _ = self.finish_call(call.call, Ok(output));
            } else if self.state.paused.is_some() {
                if self.resume().is_err() {
                    self.fail("settle: resume was rejected");
                }
            } else if let Some(attention) = self.state.attention.clone() {
                // A step that always times out fails again: retry it a few times, then skip it.
                let key = attention.step;
                let tries = retries.entry(key.clone()).or_insert(0);
                *tries += 1;
                let may_retry = *tries <= 3
                    && !(self.workarounds.retry_in_ended_loop && self.in_ended_loop(&key));
                let retried = may_retry && self.retry(&key).is_ok();
                if !retried && self.skip(&key).is_err() {
                    self.fail(&format!(
                        "settle: {key} needs attention but can be neither retried nor skipped"
                    ));
                }
            } else if let Some(key) = waits_for_approval {
                if self.approve(Some(&key)).is_err() {
                    self.fail("settle: approve was rejected");
                }
            } else if let Some(next) = self.state.timers.iter().map(|timer| timer.fire_at).min() {
                self.advance_time((next - self.now).max(chrono::Duration::zero()));
            } else if let Some(aborted) = self.aborted.first().map(|aborted| aborted.call) {
                // The runtime always reports the end of an aborted call; a rollback waits for it.
                self.late_report(aborted, false);
            } else {
                self.fail(&format!(
                    "settle: the run is {} with nothing in flight, no timer and nothing to decide",
                    self.state.status.name()
                ));
            }
        }
        self.fail("settle: the run did not end within 1000 steps");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_runs_keep_the_invariants(
        steps in prop::collection::vec((kind(), policy()), 1..=6),
        ops in prop::collection::vec(op(), 0..40),
    ) {
        let mut driver = Driver::new(&definition_text(&steps));
        driver.workarounds = workarounds();
        for op in &ops {
            driver.apply(op);
        }
        driver.settle();
        prop_assert!(driver.state.status.is_terminal());
    }
}

/// Found by the property test: a poll timed out while a poll call was in flight, that call
/// ran to its end anyway, and a rollback then had to undo the step.
#[test]
fn a_poll_call_that_outlived_its_timeout_is_undone_by_a_rollback() {
    let steps = vec![(
        Kind::Poll { idempotent: false },
        Policy {
            on_failure: "pause",
            retry: None,
            undo: Some(false),
            timeout: Some(2),
        },
    )];
    let mut driver = Driver::new(&definition_text(&steps));
    driver.workarounds = workarounds();
    for op in [
        Op::Finish {
            pick: 0,
            outcome: Outcome::Ok { done: false },
        },
        Op::Restart {
            down_ms: 2000,
            reattach: 0,
        },
        Op::LateReport {
            pick: 0,
            completed: true,
        },
        Op::Rollback,
    ] {
        driver.apply(&op);
    }
    driver.settle();
    assert!(driver.state.status.is_terminal());
}
