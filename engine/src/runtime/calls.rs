//! Action calls: made ready before the commit that starts them when their action can (its note
//! then goes into that commit), released after it, fed back as an input when they end, aborted
//! on request, and offered to their action to re-attach after a restart.

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;
use crate::action::{Held, Prepared, Settle};
use crate::machine::CallInFlight;

/// The calls of a decision that their actions made ready before its commit.
pub(super) type PreparedCalls = Vec<(CallId, Held)>;

/// How a call is launched.
pub(super) enum Launch {
    /// Its start was just journaled: run the action (with what it kept of the call if it made
    /// it ready before the commit).
    Start { held: Option<Held> },
    /// It was in flight when the daemon stopped: re-attach to it, with the last note it
    /// recorded (what it needs to find its work again), if any.
    Reattach { note: Option<Value> },
}

impl Engine {
    /// After a restart: every action call that was in flight is offered to its action to
    /// re-attach; one that cannot be is reported interrupted (the machine re-runs it when the
    /// step is idempotent, else asks the operator).
    pub async fn recover(&self) {
        let residents: Vec<_> = self.residents();
        for (run_id, resident) in residents {
            // A finished run may still have a call that was being stopped when it ended.
            let in_flight = match &*resident.lock().await {
                Resident::Live(state) => state.calls_in_flight(),
                Resident::Corrupt { .. } => Vec::new(),
            };
            if let Err(error) = self.handle(run_id, Input::Continue).await {
                if !matches!(error, Error::Conflict(_)) {
                    tracing::error!(run = %run_id, %error, "cannot continue a run at recovery");
                }
            }
            let running_here = self
                .inner
                .calls
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            for CallInFlight {
                call,
                note,
                aborting,
            } in in_flight
                .into_iter()
                .filter(|found| !running_here.contains_key(&(run_id, found.call.call)))
            {
                tracing::warn!(run = %run_id, step = %call.step, call = %call.call, "an action was in flight when the daemon stopped");
                let number = call.call;
                self.spawn(call, Launch::Reattach { note });
                if aborting {
                    // It was being stopped: re-attach only to stop it and learn that it ended.
                    let token = self
                        .inner
                        .calls
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .get(&(run_id, number))
                        .cloned();
                    if let Some(token) = token {
                        token.cancel();
                    }
                }
            }
        }
        self.inner.timer_wake.notify_one();
    }

    /// Before the commit of a decision that starts calls: each call whose action can make it
    /// ready now (`Action::prepare`) is, and the note it would journal first is added to the
    /// decision (and applied to `next`), so that its start and its note take one commit.
    pub(super) fn prepare_calls(
        &self,
        next: &mut RunState,
        decision: &mut Decision,
        now: chrono::DateTime<chrono::Utc>,
    ) -> PreparedCalls {
        let mut prepared = PreparedCalls::new();
        if self.inner.draining.is_cancelled() {
            return prepared;
        }
        for effect in &decision.effects {
            let Effect::Call(call) = effect else {
                continue;
            };
            let Some(action) = self.inner.actions.get(&call.action) else {
                continue;
            };
            // An input that does not fit is refused when the call runs, with its reason.
            if !action.schema().check(&call.input, true).is_empty() {
                continue;
            }
            let context = self.action_context(call, CancellationToken::new(), None);
            let Some(Prepared { note, held }) = action.prepare(&call.input, &context) else {
                continue;
            };
            match machine::note_call(next, call.call, note, now) {
                Ok(event) => {
                    decision.events.push(event);
                    prepared.push((call.call, held));
                }
                Err(rejection) => {
                    tracing::error!(run = %call.run_id, step = %call.step, %rejection, "cannot journal a prepared call's note");
                    self.spawn_tracked(action.discard(held));
                }
            }
        }
        prepared
    }

    /// A decision's commit failed: the calls made ready for it are given up (their start is
    /// not journaled, and their call ids may be used again).
    pub(super) async fn discard_prepared(&self, decision: &Decision, prepared: PreparedCalls) {
        for (number, held) in prepared {
            let action = decision.effects.iter().find_map(|effect| match effect {
                Effect::Call(call) if call.call == number => self.inner.actions.get(&call.action),
                _ => None,
            });
            match action {
                Some(action) => action.discard(held).await,
                None => drop(held),
            }
        }
    }

    pub(super) fn after_commit(
        &self,
        run_id: Uuid,
        decision: &Decision,
        mut prepared: PreparedCalls,
    ) {
        let armed = decision
            .events
            .iter()
            .any(|event| matches!(event.kind, machine::EventKind::TimerArmed { .. }));
        if armed {
            self.inner.timer_wake.notify_one();
        }
        for effect in &decision.effects {
            match effect {
                Effect::Call(call) => {
                    let held = prepared
                        .iter()
                        .position(|(number, _)| *number == call.call)
                        .map(|index| prepared.swap_remove(index).1);
                    self.spawn(call.clone(), Launch::Start { held });
                }
                // Shutting down: the restarted daemon continues the run (recovery feeds every
                // live run `Continue`).
                Effect::Continue if self.inner.draining.is_cancelled() => {}
                Effect::Continue => {
                    let engine = self.clone();
                    self.spawn_tracked(async move {
                        if let Err(error) = engine.handle(run_id, Input::Continue).await {
                            tracing::error!(run = %run_id, %error, "cannot continue a run");
                        }
                    });
                }
                Effect::Abort { call } => {
                    let token = self
                        .inner
                        .calls
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .get(&(run_id, *call))
                        .cloned();
                    if let Some(token) = token {
                        token.cancel();
                    }
                }
            }
        }
    }

    /// Runs an action call, or (after a restart) re-attaches to one, and feeds its end back as
    /// an input.
    pub(super) fn spawn(&self, call: Call, launch: Launch) {
        let (reattach, note, held) = match launch {
            Launch::Start { held } => (false, None, held),
            Launch::Reattach { note } => (true, note, None),
        };
        if self.inner.draining.is_cancelled() && !reattach {
            // Shutting down: its start is journaled, nothing was released; the restarted
            // daemon finds it never started and starts it again.
            tracing::info!(run = %call.run_id, step = %call.step, call = %call.call, "shutting down: the call is left to start after the restart");
            return;
        }
        let engine = self.clone();
        let token = CancellationToken::new();
        self.inner
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert((call.run_id, call.call), token.clone());
        tokio::spawn(async move {
            let context = engine.action_context(&call, token, note);
            let settle = context.settle.clone();
            let action = engine.inner.actions.get(&call.action);
            let future = match (&action, reattach) {
                (None, _) => None,
                (Some(action), false) => {
                    if call.undo || call.attempt > 1 {
                        context.log.line(&format!(
                            "[runbook] {} attempt {}",
                            if call.undo { "undo" } else { "step" },
                            call.attempt
                        ));
                    }
                    // A template may have rendered to a value the action does not take:
                    // refused here, naming the key, before the action sees it.
                    let problems = action.schema().check(&call.input, true);
                    match (problems.is_empty(), held) {
                        (true, Some(held)) => {
                            Some(action.call_prepared(call.input.clone(), context, held))
                        }
                        (true, None) => Some(action.call(call.input.clone(), context)),
                        (false, _) => {
                            let message = format!(
                                "{}: the rendered input does not fit: {}",
                                call.action,
                                problems
                                    .iter()
                                    .map(|problem| format!("with.{problem}"))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            );
                            context.log.line(&format!("[runbook] {message}"));
                            Some(
                                Box::pin(async move { Err(ActionFailure::permanent(message)) })
                                    as crate::action::ActionFuture,
                            )
                        }
                    }
                }
                (Some(action), true) => action.reattach(call.input.clone(), context),
            };
            let input = match (future, action.is_some()) {
                (Some(future), _) => match future.await {
                    // After a restart, a call that provably never started is started again.
                    Err(failure) if failure.never_started && reattach => Input::NotStarted {
                        call: call.call,
                        reason: failure.message,
                    },
                    result => Input::ActionFinished {
                        call: call.call,
                        result,
                    },
                },
                (None, true) => Input::Interrupted { call: call.call },
                (None, false) => Input::ActionFinished {
                    call: call.call,
                    result: Err(ActionFailure::permanent(format!(
                        "unknown action {:?}",
                        call.action
                    ))),
                },
            };
            engine
                .inner
                .calls
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&(call.run_id, call.call));
            crate::failpoint::hit(crate::failpoint::Failpoint::EffectBeforeRecord);
            let unreleased = matches!(&input, Input::ActionFinished { result: Err(failure), .. } if failure.never_started);
            if unreleased && engine.inner.draining.is_cancelled() {
                // Not a failure of the step: shutdown held it back. The restart starts it again.
                tracing::info!(run = %call.run_id, step = %call.step, "shutting down: the call was not released; it starts after the restart");
                return;
            }
            if let Err(error) = engine.handle(call.run_id, input).await {
                tracing::error!(run = %call.run_id, step = %call.step, %error, "cannot record the end of a step");
                return;
            }
            if let Some(settle) = settle {
                settle.journaled();
            }
            engine.forget_poll_call_dir(&call).await;
        });
    }

    /// A poll's call, once its end is journaled, needs its directory no more (re-attaching is
    /// only for calls in flight): removed, or a poll every 10 s would leave 8,640 of them a day.
    /// Calls of steps that do not poll keep theirs (an action may leave its results there).
    pub(super) async fn forget_poll_call_dir(&self, call: &Call) {
        if call.undo {
            return;
        }
        let polls = match self.get(call.run_id).await {
            Ok(Resident::Live(state)) => state
                .definition
                .step(&call.step)
                .is_some_and(|step| step.until.is_some()),
            _ => false,
        };
        if polls {
            let dir = self.call_dir(call.run_id, call.call);
            if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(run = %call.run_id, step = %call.step, dir = %dir.display(), %error, "cannot remove a poll's call directory");
                }
            }
        }
    }

    /// What the action of `call` is told about it.
    fn action_context(
        &self,
        call: &Call,
        cancel: CancellationToken,
        note: Option<Value>,
    ) -> ActionContext {
        let recorder = {
            let engine = self.clone();
            let (run_id, number) = (call.run_id, call.call);
            Recorder::new(move |note| {
                let engine = engine.clone();
                Box::pin(async move {
                    engine
                        .handle(run_id, Input::CallNote { call: number, note })
                        .await
                        .map(|_| ())
                        .map_err(|error| error.to_string())
                })
            })
        };
        ActionContext {
            run_id: call.run_id,
            step: call.step.clone(),
            attempt: call.attempt,
            undo: call.undo,
            cancel,
            draining: self.inner.draining.clone(),
            log: LogSink::new(self.log_path(call.run_id, &call.step, call.undo)),
            state_dir: self.call_dir(call.run_id, call.call),
            note,
            recorder,
            settle: Some(Settle::default()),
        }
    }

    pub(super) fn call_dir(&self, run_id: Uuid, call: CallId) -> PathBuf {
        self.inner
            .data_dir
            .join("runs")
            .join(run_id.to_string())
            .join("calls")
            .join(call.to_string())
    }
}
