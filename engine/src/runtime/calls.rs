//! Action calls: released after the commit that starts them, fed back as an input when they
//! end, aborted on request, and offered to their action to re-attach after a restart.

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;
use crate::machine::CallInFlight;

/// How a call is launched.
pub(super) enum Launch {
    /// Its start was just journaled: run the action.
    Start,
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

    pub(super) fn after_commit(&self, run_id: Uuid, decision: &Decision) {
        let armed = decision
            .events
            .iter()
            .any(|event| matches!(event.kind, machine::EventKind::TimerArmed { .. }));
        if armed {
            self.inner.timer_wake.notify_one();
        }
        for effect in &decision.effects {
            match effect {
                Effect::Call(call) => self.spawn(call.clone(), Launch::Start),
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
        let (reattach, note) = match launch {
            Launch::Start => (false, None),
            Launch::Reattach { note } => (true, note),
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
            let recorder = {
                let engine = engine.clone();
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
            let context = ActionContext {
                run_id: call.run_id,
                step: call.step.clone(),
                attempt: call.attempt,
                undo: call.undo,
                cancel: token,
                draining: engine.inner.draining.clone(),
                log: LogSink::new(engine.log_path(call.run_id, &call.step, call.undo)),
                state_dir: engine.call_dir(call.run_id, call.call),
                note,
                recorder,
            };
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
                    if problems.is_empty() {
                        Some(action.call(call.input.clone(), context))
                    } else {
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

    pub(super) fn call_dir(&self, run_id: Uuid, call: CallId) -> PathBuf {
        self.inner
            .data_dir
            .join("runs")
            .join(run_id.to_string())
            .join("calls")
            .join(call.to_string())
    }
}
