//! The driver: a run, its journal, its calls in flight and a manual clock.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

use runbook_engine::definition::{self, Definition, OnFailure};
use runbook_engine::machine::{
    self, ActionFailure, Actor, Call, CallId, Decision, Effect, Event, EventKind, Input, Rejection,
    RunState, RunStatus, StepStatus,
};

use super::*;

pub(crate) fn operator() -> Actor {
    Actor::uid(1000)
}

pub(crate) fn clock_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
}

pub(crate) fn ms(duration: chrono::Duration) -> i64 {
    duration.num_milliseconds()
}

/// A run, its journal, its calls in flight and a manual clock.
pub(crate) struct Driver {
    pub(crate) run_id: Uuid,
    pub(crate) start: DateTime<Utc>,
    pub(crate) now: DateTime<Utc>,
    pub(crate) state: RunState,
    pub(crate) journal: Vec<Event>,
    /// Calls started and not yet finished, aborted or lost in a restart.
    pub(crate) pending: Vec<Call>,
    /// Calls the machine asked to abort: they still report, and the report must change nothing.
    pub(crate) aborted: Vec<Call>,
    /// Calls lost in a restart that recovery has not reported `Interrupted` yet.
    pub(crate) lost: BTreeSet<CallId>,
    /// `Effect::Continue`s of committed decisions not fed back yet.
    pub(crate) continues: usize,
    /// Crash right after the next decision that yields (`Effect::Continue`) is committed, before
    /// the continue is fed; re-attach the calls whose bit is set.
    pub(crate) crash_at_yield: Option<u8>,
    /// Leave the continue of the next decision that yields for later: another input comes first.
    pub(crate) defer_continue: bool,
    /// Every operation, event and effect, for snapshots and failure messages.
    pub(crate) transcript: Vec<String>,
    pub(crate) model: Model,
    /// Whether invariants are checked (off only to observe a known bug's symptom).
    pub(crate) checked: bool,
    pub(crate) workarounds: Workarounds,
    /// Steps whose aborted call reported that it ran to its end and succeeded: a rollback must
    /// undo them.
    pub(crate) completed_late: BTreeSet<String>,
}

impl Driver {
    pub(crate) fn new(toml: &str) -> Driver {
        Driver::start(toml, true)
    }

    /// A driver that does not check invariants: it lets a known bug play out.
    pub(crate) fn unchecked(toml: &str) -> Driver {
        Driver::start(toml, false)
    }

    pub(crate) fn start(toml: &str, checked: bool) -> Driver {
        let definition = definition::parse("test.toml", toml)
            .unwrap_or_else(|error| panic!("bad test definition: {error}\n{toml}"));
        definition::validate(&definition, &|_| false)
            .unwrap_or_else(|error| panic!("bad test definition: {error}\n{toml}"));
        let run_id = Uuid::from_u128(1);
        let start = clock_start();
        let mut driver = Driver {
            run_id,
            start,
            now: start,
            state: RunState::empty(run_id),
            journal: Vec::new(),
            pending: Vec::new(),
            aborted: Vec::new(),
            lost: BTreeSet::new(),
            continues: 0,
            crash_at_yield: None,
            defer_continue: false,
            transcript: Vec::new(),
            model: Model::default(),
            checked,
            workarounds: Workarounds::default(),
            completed_late: BTreeSet::new(),
        };
        driver.log("> create".to_owned());
        let before = driver.state.clone();
        let (next, decision) = machine::create(
            run_id,
            Arc::new(definition),
            serde_json::Map::new(),
            Vec::new(),
            operator(),
            None,
            start,
        );
        driver.commit(None, &before, next, decision);
        driver.drain_continues();
        driver
    }

    pub(crate) fn log(&mut self, line: String) {
        self.transcript.push(line);
    }

    pub(crate) fn relative(&self, at: DateTime<Utc>) -> String {
        let offset = ms(at - self.start);
        if offset % 1000 == 0 {
            format!("+{}s", offset / 1000)
        } else {
            format!("+{offset}ms")
        }
    }

    /// Fails the test with the end of the transcript, which shows how the run got there.
    pub(crate) fn fail(&self, message: &str) -> ! {
        let tail = self.transcript.len().saturating_sub(60);
        panic!(
            "{message}\n--- transcript (last lines) ---\n{}",
            self.transcript[tail..].join("\n")
        );
    }

    pub(crate) fn violation(&self, message: &str) {
        if self.checked {
            self.fail(&format!("invariant violated: {message}"));
        }
    }

    /// Decides `input` at the current time and, unless it is rejected, commits the decision.
    pub(crate) fn feed(&mut self, input: Input) -> Result<(), Rejection> {
        let before = self.state.clone();
        let now = self.now;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            machine::decide(&before, input.clone(), now)
        }));
        match outcome {
            Err(_) => self.fail(&format!("decide panicked on {input:?}")),
            Ok(Err(rejection)) => {
                self.log(format!("  ! rejected: {rejection}"));
                Err(rejection)
            }
            Ok(Ok((next, decision))) => {
                self.commit(Some(&input), &before, next, decision);
                self.drain_continues();
                Ok(())
            }
        }
    }

    /// Feeds `Input::Continue` for every decision that yielded, as the runtime does once the
    /// decision is durable (or crashes there, when asked to).
    pub(crate) fn drain_continues(&mut self) {
        if self.continues > 0 && std::mem::take(&mut self.defer_continue) {
            self.log("  (its continue comes later)".to_owned());
            return;
        }
        while self.continues > 0 {
            self.continues -= 1;
            if let Some(reattach) = self.crash_at_yield.take() {
                self.log("> crash after a yield was committed".to_owned());
                self.restart(|index| reattach & (1 << (index % 8)) != 0);
                return;
            }
            self.log("> continue".to_owned());
            if self.feed(Input::Continue).is_err() {
                self.fail("Continue was rejected");
            }
        }
    }

    pub(crate) fn commit(
        &mut self,
        input: Option<&Input>,
        before: &RunState,
        next: RunState,
        decision: Decision,
    ) {
        for event in &decision.events {
            let line = self.render_event(event);
            self.log(line);
        }
        for effect in &decision.effects {
            let line = match effect {
                Effect::Call(call) => format!(
                    "  -> call #{} {}{} attempt={} {} {}",
                    call.call,
                    if call.undo { "undo " } else { "" },
                    call.step,
                    call.attempt,
                    call.action,
                    call.input
                ),
                Effect::Abort { call } => format!("  -> abort #{call}"),
                Effect::Continue => "  -> continue".to_owned(),
            };
            self.log(line);
        }
        if let Err(message) = self
            .model
            .check_decision(input, before, &next, &decision, self.now)
        {
            self.violation(&message);
        }
        self.journal.extend(decision.events.iter().cloned());
        for effect in decision.effects {
            match effect {
                Effect::Call(call) => self.pending.push(call),
                Effect::Continue => self.continues += 1,
                Effect::Abort { call } => {
                    match self.pending.iter().position(|pending| pending.call == call) {
                        Some(index) => {
                            let aborted = self.pending.remove(index);
                            self.aborted.push(aborted);
                        }
                        None => self
                            .violation(&format!("abort of call #{call}, which is not in flight")),
                    }
                }
            }
        }
        self.state = next;
        if let Err(message) = self.check_state() {
            self.violation(&message);
        }
    }

    /// Invariants of the run as a whole, after every decision.
    pub(crate) fn check_state(&self) -> Result<(), String> {
        for (index, event) in self.journal.iter().enumerate() {
            if event.seq != index as u64 + 1 {
                return Err(format!(
                    "journal seqs are not 1..n: position {index} holds seq {}",
                    event.seq
                ));
            }
        }
        if self.state.last_seq != self.journal.len() as u64 {
            return Err(format!(
                "state.last_seq is {} but the journal has {} events",
                self.state.last_seq,
                self.journal.len()
            ));
        }
        let replayed = RunState::replay(self.run_id, &self.journal);
        let (replayed_json, state_json) = (to_json(&replayed), to_json(&self.state));
        if replayed_json != state_json {
            return Err(format!(
                "replaying the journal does not give the state:\nreplayed: {replayed_json}\nstate:    {state_json}"
            ));
        }
        if replayed.definition != self.state.definition {
            return Err("replaying the journal does not give the pinned definition".to_owned());
        }
        let in_state: BTreeSet<CallId> = calls_in_state(&self.state).into_iter().collect();
        let in_flight: BTreeSet<CallId> = self
            .pending
            .iter()
            .map(|call| call.call)
            .chain(self.lost.iter().copied())
            .collect();
        if in_state != in_flight {
            return Err(format!(
                "calls in the state {in_state:?} are not the calls in flight {in_flight:?}"
            ));
        }
        if self.state.status.is_terminal() {
            let status = self.state.status.name();
            if !self.state.timers.is_empty() {
                return Err(format!(
                    "the run ended ({status}) with armed timers: {:?}",
                    self.state.timers
                ));
            }
            if !self.pending.is_empty() {
                return Err(format!("the run ended ({status}) with calls in flight"));
            }
            if let Some(step) = self.state.steps.iter().find(|step| step.status.is_active()) {
                return Err(format!(
                    "the run ended ({status}) with step {} still {}",
                    step.key,
                    step.status.name()
                ));
            }
        }
        if self.state.status == RunStatus::RolledBack {
            let definition = self.state.definition.clone();
            for key in &self.completed_late {
                let has_undo = definition.step(key).is_some_and(|step| step.undo.is_some());
                let undo = self
                    .state
                    .step(key)
                    .and_then(|step| step.undo.as_ref())
                    .map(|undo| undo.status);
                if has_undo && !matches!(undo, Some(StepStatus::Succeeded | StepStatus::Skipped)) {
                    return Err(format!(
                        "the run rolled back but step {key}, whose aborted call ran to its end, was not undone (undo: {undo:?})"
                    ));
                }
            }
        }
        if self.state.status == RunStatus::Succeeded {
            let definition = self.state.definition.clone();
            // A step may end failed only if its `on_failure` is `continue`; anything but active
            // goes inside a loop that failed (its timeout) and was then skipped or continued past.
            let in_given_up_loop = |key: &str| {
                key.rfind('[')
                    .and_then(|open| self.state.step(&key[..open]))
                    .is_some_and(|parent| {
                        matches!(parent.status, StepStatus::Skipped | StepStatus::Failed)
                    })
            };
            for step in &self.state.steps {
                let tolerated = match step.status {
                    StepStatus::Succeeded | StepStatus::Skipped => true,
                    StepStatus::Failed => {
                        in_given_up_loop(&step.key)
                            || definition
                                .step(&step.key)
                                .is_some_and(|step| step.on_failure == OnFailure::Continue)
                    }
                    StepStatus::Running | StepStatus::Waiting => false,
                    StepStatus::Canceled | StepStatus::Interrupted => in_given_up_loop(&step.key),
                };
                if !tolerated {
                    return Err(format!(
                        "the run succeeded with step {} {}",
                        step.key,
                        step.status.name()
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn render_event(&self, event: &Event) -> String {
        let mut value = to_json(&event.kind);
        let object = value
            .as_object_mut()
            .expect("an event kind serializes to an object");
        let kind = object
            .remove("kind")
            .and_then(|kind| kind.as_str().map(str::to_owned))
            .unwrap_or_default();
        // The pinned definition is in the test, and messages are for people.
        object.remove("definition");
        object.remove("message");
        // The step first, then the other fields by name.
        let step = object.remove("step");
        let fields: Vec<String> = step
            .iter()
            .map(|step| ("step", step))
            .chain(object.iter().map(|(name, value)| (name.as_str(), value)))
            .filter(|(_, value)| !value.is_null())
            .map(|(name, value)| match (name, value) {
                ("by", Value::Object(actor)) => format!(
                    "by=uid:{}",
                    actor.get("uid").cloned().unwrap_or(Value::Null)
                ),
                (_, Value::String(text)) => match DateTime::parse_from_rfc3339(text) {
                    Ok(at) => format!("{name}={}", self.relative(at.with_timezone(&Utc))),
                    Err(_) if !text.is_empty() && !text.contains([' ', '"', '=']) => {
                        format!("{name}={text}")
                    }
                    Err(_) => format!("{name}={value}"),
                },
                _ => format!("{name}={}", self.relativize(value)),
            })
            .collect();
        format!(
            "  #{} {} {kind} {}",
            event.seq,
            self.relative(event.at),
            fields.join(" ")
        )
        .trim_end()
        .to_owned()
    }

    /// Timestamps inside a JSON value (a wait's output) as offsets from the clock start.
    pub(crate) fn relativize(&self, value: &Value) -> Value {
        match value {
            Value::String(text) => match DateTime::parse_from_rfc3339(text) {
                Ok(at) => Value::String(self.relative(at.with_timezone(&Utc))),
                Err(_) => value.clone(),
            },
            Value::Array(items) => {
                Value::Array(items.iter().map(|item| self.relativize(item)).collect())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, item)| (key.clone(), self.relativize(item)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    // ----- operations --------------------------------------------------------------------------

    /// An action call ended.
    pub(crate) fn finish_call(
        &mut self,
        call: CallId,
        result: Result<Value, ActionFailure>,
    ) -> Result<(), Rejection> {
        let Some(index) = self.pending.iter().position(|pending| pending.call == call) else {
            self.fail(&format!("finish_call: call #{call} is not in flight"));
        };
        self.pending.remove(index);
        self.feed(Input::ActionFinished { call, result })
    }

    /// The call of `step` (of its undo when `undo`) in `calls`.
    pub(crate) fn call_of(&self, calls: &[Call], step: &str, undo: bool) -> CallId {
        match calls
            .iter()
            .find(|call| call.step == step && call.undo == undo)
        {
            Some(call) => call.call,
            None => self.fail(&format!(
                "no {} call of {step} (calls: {:?})",
                if undo { "undo" } else { "step" },
                calls
                    .iter()
                    .map(|call| format!("#{} {}", call.call, call.step))
                    .collect::<Vec<_>>()
            )),
        }
    }

    /// An aborted call reports after all (the runtime always feeds the end of a call back): the
    /// machine journals how it ended (`aborted_call_ended`, which rollback waits for) — or, when
    /// it ran to its end anyway (`completed`: it succeeded), its result (`aborted_call_completed`),
    /// and a rollback then undoes it.
    pub(crate) fn late_report(&mut self, call: CallId, completed: bool) {
        let Some(index) = self.aborted.iter().position(|aborted| aborted.call == call) else {
            self.fail(&format!("late_report: call #{call} was not aborted"));
        };
        let aborted = self.aborted.remove(index);
        let result = if completed {
            self.completed_late.insert(aborted.step.clone());
            self.log(format!(
                "> late report of aborted call #{call}: it succeeded"
            ));
            Ok(serde_json::json!({"exit_code": 0}))
        } else {
            self.log(format!("> late report of aborted call #{call}"));
            Err(ActionFailure::permanent("canceled"))
        };
        let before_len = self.journal.len();
        let _ = self.feed(Input::ActionFinished { call, result });
        // Its end, and then only what a rollback that waited for it does next.
        let added = &self.journal[before_len..];
        let ends_it = |event: &Event| match &event.kind {
            EventKind::AbortedCallEnded { call: ended, .. } => *ended == call && !completed,
            EventKind::AbortedCallCompleted { call: ended, .. } => *ended == call && completed,
            _ => false,
        };
        let rolling_back = self.state.rollback.is_some();
        let only_its_end =
            added.is_empty() || (ends_it(&added[0]) && (rolling_back || added.len() == 1));
        if !only_its_end {
            self.violation(&format!(
                "the late report of aborted call #{call} changed the run"
            ));
        }
    }

    /// Advances the clock by `duration`, firing every timer that falls due on the way, in
    /// `fire_at` order, each at its own time (as a daemon that is up would).
    pub(crate) fn advance_time(&mut self, duration: chrono::Duration) {
        let target = self.now + duration;
        self.log(format!(
            "> advance {} (to {})",
            runbook_engine::duration::format(duration.to_std().unwrap_or_default()),
            self.relative(target)
        ));
        self.fire_due_timers(target);
        self.now = target;
    }

    pub(crate) fn fire_due_timers(&mut self, until: DateTime<Utc>) {
        for _ in 0..10_000 {
            if self.workarounds.paused_timers_fire && self.state.paused.is_some() {
                return;
            }
            let due = self
                .state
                .timers
                .iter()
                .filter(|timer| timer.fire_at <= until)
                .min_by_key(|timer| (timer.fire_at, timer.timer))
                .cloned();
            let Some(due) = due else { return };
            self.now = self.now.max(due.fire_at);
            if self.feed(Input::TimerFired { timer: due.timer }).is_err() {
                self.fail("a timer firing was rejected");
            }
        }
        self.fail("more than 10000 timers fired within one advance");
    }

    pub(crate) fn operator(&mut self, label: &str, input: Input) -> Result<(), Rejection> {
        self.log(format!("> {label}"));
        self.feed(input)
    }

    pub(crate) fn approve(&mut self, step: Option<&str>) -> Result<(), Rejection> {
        let label = step.map_or("approve".to_owned(), |step| format!("approve {step}"));
        let input = Input::Approve {
            step: step.map(str::to_owned),
            by: operator(),
            comment: None,
        };
        self.operator(&label, input)
    }

    pub(crate) fn pause(&mut self) -> Result<(), Rejection> {
        let input = Input::Pause {
            by: operator(),
            comment: None,
        };
        self.operator("pause", input)
    }

    pub(crate) fn resume(&mut self) -> Result<(), Rejection> {
        let input = Input::Resume {
            by: operator(),
            comment: None,
        };
        self.operator("resume", input)
    }

    pub(crate) fn cancel(&mut self) -> Result<(), Rejection> {
        let input = Input::Cancel {
            by: operator(),
            comment: None,
            rollback: false,
        };
        self.operator("cancel", input)
    }

    pub(crate) fn rollback(&mut self) -> Result<(), Rejection> {
        let input = Input::Rollback {
            by: operator(),
            comment: None,
        };
        self.operator("rollback", input)
    }

    pub(crate) fn retry(&mut self, step: &str) -> Result<(), Rejection> {
        // A reason, as every skip or retry of an approval gate needs one.
        let input = Input::Retry {
            step: step.to_owned(),
            by: operator(),
            comment: Some("checked by hand".to_owned()),
        };
        self.operator(&format!("retry {step}"), input)
    }

    pub(crate) fn skip(&mut self, step: &str) -> Result<(), Rejection> {
        // A reason, as every skip or retry of an approval gate needs one.
        let input = Input::Skip {
            step: step.to_owned(),
            by: operator(),
            comment: Some("checked by hand".to_owned()),
        };
        self.operator(&format!("skip {step}"), input)
    }

    /// A daemon crash and restart: the in-memory state, the calls in flight and the continues
    /// not fed yet are lost; the state is rebuilt from the journal. Then, as
    /// `runtime::Engine::recover` does: `Input::Continue`, and every call the state shows in
    /// flight is handed back to its action; `reattach(i)` says whether the action can follow the
    /// `i`-th of them to its real end (the call stays in flight, under its number); the others
    /// are reported `Interrupted`.
    pub(crate) fn restart(&mut self, reattach: impl Fn(usize) -> bool) {
        self.restart_with(reattach, false);
    }

    /// A restart after which every call that cannot be re-attached is known never to have
    /// started (its supervisor was never released): recovery reports it `NotStarted`, and the
    /// machine starts it again, idempotent or not.
    pub(crate) fn restart_never_started(&mut self) {
        self.restart_with(|_| false, true);
    }

    fn restart_with(&mut self, reattach: impl Fn(usize) -> bool, never_started: bool) {
        self.log("> restart".to_owned());
        self.state = RunState::replay(self.run_id, &self.journal);
        self.pending.clear();
        self.aborted.clear();
        self.continues = 0;
        // A call that was being aborted is re-attached only to be stopped: its end is reported.
        let (aborted, in_flight): (Vec<_>, Vec<_>) = self
            .state
            .calls_in_flight()
            .into_iter()
            .partition(|found| found.aborting);
        self.aborted
            .extend(aborted.into_iter().map(|found| found.call));
        if self.state.status.is_terminal() {
            return;
        }
        let in_flight: Vec<Call> = in_flight.into_iter().map(|found| found.call).collect();
        self.lost = in_flight.iter().map(|call| call.call).collect();
        self.log("> continue".to_owned());
        let _ = self.feed(Input::Continue);
        let (mut reattached, mut lost) = (Vec::new(), Vec::new());
        for (index, call) in in_flight.into_iter().enumerate() {
            if reattach(index) {
                reattached.push(call);
            } else {
                lost.push(call);
            }
        }
        for call in reattached {
            self.log(format!("  (call #{} re-attached)", call.call));
            self.lost.remove(&call.call);
            self.pending.push(call);
        }
        let definition = self.state.definition.clone();
        if never_started {
            for call in &lost {
                self.lost.remove(&call.call);
                let reason = "its supervisor was never released".to_owned();
                if self
                    .feed(Input::NotStarted {
                        call: call.call,
                        reason,
                    })
                    .is_err()
                {
                    self.fail(&format!(
                        "NotStarted {{ call: {} }} was rejected",
                        call.call
                    ));
                }
            }
            return;
        }
        for call in &lost {
            if !idempotent(&definition, &call.step, call.undo) {
                self.model
                    .unknown_outcome
                    .insert((call.step.clone(), call.undo));
            }
        }
        for call in &lost {
            self.lost.remove(&call.call);
            if self.feed(Input::Interrupted { call: call.call }).is_err() {
                self.fail(&format!(
                    "Interrupted {{ call: {} }} was rejected",
                    call.call
                ));
            }
        }
        // An idempotent step (or undo) is re-run at once; a non-idempotent one waits for an
        // operator.
        for call in &lost {
            let Some(step) = self.state.step(&call.step) else {
                continue;
            };
            let status = if call.undo {
                step.undo.as_ref().map(|undo| undo.status)
            } else {
                Some(step.status)
            };
            let interrupted = status == Some(StepStatus::Interrupted);
            let idempotent = idempotent(&definition, &call.step, call.undo);
            if idempotent == interrupted && !self.state.status.is_terminal() {
                self.violation(&format!(
                    "after a restart, {}{} is {status:?} (idempotent: {idempotent})",
                    call.step,
                    if call.undo { " (undo)" } else { "" },
                ));
            }
        }
    }

    /// The daemon is down for `duration`: nothing fires meanwhile; on restart, overdue timers
    /// fire at once, late.
    pub(crate) fn down(&mut self, duration: chrono::Duration, reattach: impl Fn(usize) -> bool) {
        self.log(format!(
            "> down for {}",
            runbook_engine::duration::format(duration.to_std().unwrap_or_default())
        ));
        self.now += duration;
        self.restart(reattach);
        self.fire_due_timers(self.now);
    }

    /// The action of a call in flight journals a note about it (the exec supervisor's pid): one
    /// `CallNoted` event, and nothing else changes.
    pub(crate) fn note(&mut self, call: CallId, note: Value) -> Result<(), Rejection> {
        self.log(format!("> note #{call} {note}"));
        let before_len = self.journal.len();
        let result = self.feed(Input::CallNote {
            call,
            note: note.clone(),
        });
        let noted: Vec<&EventKind> = self.journal[before_len..]
            .iter()
            .map(|event| &event.kind)
            .collect();
        if result.is_ok() && !matches!(noted.as_slice(), [EventKind::CallNoted { .. }]) {
            self.violation(&format!("a note journaled {noted:?}, not one CallNoted"));
        }
        let in_state = self.state.steps.iter().any(|step| {
            (step.call == Some(call) && step.note.as_ref() == Some(&note))
                || step.undo.as_ref().is_some_and(|undo| {
                    undo.call == Some(call) && undo.note.as_ref() == Some(&note)
                })
        });
        if result.is_ok() != in_state {
            self.violation(&format!(
                "the note of call #{call} was {} but the state {} it",
                if result.is_ok() {
                    "accepted"
                } else {
                    "rejected"
                },
                if in_state { "shows" } else { "does not show" }
            ));
        }
        result
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializes to JSON")
}

pub(crate) fn calls_in_state(state: &RunState) -> Vec<CallId> {
    state
        .steps
        .iter()
        .flat_map(|step| {
            step.call
                .into_iter()
                .chain(step.undo.as_ref().and_then(|undo| undo.call))
        })
        .collect()
}

pub(crate) fn idempotent(definition: &Definition, key: &str, undo: bool) -> bool {
    match definition.step(key) {
        Some(step) if undo => step.undo.as_ref().is_some_and(|undo| undo.idempotent),
        Some(step) => step.idempotent,
        None => false,
    }
}
