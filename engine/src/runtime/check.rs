//! `plan --check`: a plan whose read-only steps are run against the real target and whose
//! mutating steps show what they would change.
//!
//! Nothing is journaled and nothing is changed: no run is created; every call gets a throwaway
//! [`ActionContext`] (a temporary directory removed afterwards, a log that is shown in the result,
//! a recorder that keeps nothing). Steps run in order, as a run would: a read-only step's output
//! feeds the templates of the steps after it; a mutating step is not run, its action's
//! [`Action::preview`](crate::action::Action::preview) reads the current state and says what it
//! would change (before → after), and the steps that use its output show their template.
//! `wait`, `window`, `approval` and `noop` are described, never executed. Each call has a time
//! limit ([`CheckLimits::call`]) and so has the whole check ([`CheckLimits::total`]); a step not
//! reached in time says so.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::plan::{Plan, PlannedStep};
use super::Error;
use crate::action::{ActionContext, LogSink, Recorder, Registry};
use crate::definition::{Definition, Step};
use crate::template;

/// How long a check may take.
#[derive(Debug, Clone, Copy)]
pub struct CheckLimits {
    /// One read or preview.
    pub call: Duration,
    /// The whole check; the steps not reached by then are not checked.
    pub total: Duration,
    /// A `for_each` over more items than this is listed, its steps not checked.
    pub iterations: usize,
}

impl Default for CheckLimits {
    fn default() -> CheckLimits {
        CheckLimits {
            call: Duration::from_secs(30),
            total: Duration::from_secs(120),
            iterations: 8,
        }
    }
}

/// The most bytes of a call's log shown in its check.
const LOG_SHOWN: usize = 4096;

/// What the check did for one step. `status`:
/// - `read`: a read-only step ran; `output` is what it returned.
/// - `failed`: a read-only step, or a mutating step's preview, failed (`error`): a run would
///   stop here (unless the cause is gone by then).
/// - `may_fail`: as `failed`, but an earlier step would change something first: the failure is
///   on the state now, a run may not meet it.
/// - `would_change`: a mutating step's preview found something to change (`preview`).
/// - `unchanged`: a mutating step's preview found everything already as asked.
/// - `no_preview`: a mutating step whose action cannot tell what it would change.
/// - `pending`: the input needs the output of a step the check did not run (`note` says which).
/// - `skipped`: `when` is false.
/// - `described`: `wait`, `window`, `approval`, `noop`, `for_each`: not executed.
/// - `not_checked`: the check's time limit was reached, or a loop was too long.
#[derive(Debug, Clone, Serialize)]
pub struct StepCheck {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `when` as evaluated now (`None` when there is none or it could not be evaluated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<bool>,
    /// For a polled step: whether its `until` condition holds on this output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<bool>,
    /// The call's log lines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
}

impl StepCheck {
    fn new(status: &'static str) -> StepCheck {
        StepCheck {
            status,
            output: None,
            preview: None,
            error: None,
            note: None,
            when: None,
            until: None,
            log: Vec::new(),
            elapsed_ms: None,
        }
    }

    fn noted(status: &'static str, note: impl Into<String>) -> StepCheck {
        StepCheck {
            note: Some(note.into()),
            ..StepCheck::new(status)
        }
    }
}

/// The counts of a check, and why steps were not checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckSummary {
    pub read: usize,
    pub would_change: usize,
    pub unchanged: usize,
    pub failed: usize,
    /// The first step whose check failed: where a run would stop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
    /// Steps whose check failed on the state now, which an earlier step would change first.
    pub may_fail: usize,
    /// Steps not checked (pending, no preview, time limit, long loop), with `reasons`.
    pub not_checked: usize,
    pub described: usize,
    pub skipped: usize,
    /// Each reason a step was not checked, with how many.
    pub reasons: BTreeMap<String, usize>,
    /// Set when the whole check's time limit was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_reached: Option<String>,
    pub elapsed_ms: u64,
}

/// A plan of `definition` with `given` params, checked against the real target.
pub async fn check(
    definition: Arc<Definition>,
    given: Map<String, Value>,
    actions: Registry,
    limits: CheckLimits,
    draining: CancellationToken,
) -> Result<Plan, Error> {
    let started = Instant::now();
    let plan = {
        let (definition, actions) = (Arc::clone(&definition), actions.clone());
        super::off_workers(move || super::plan(&definition, &given, &actions)).await??
    };
    let dir = TempDir::create()?;
    let context = json!({
        "params": plan.params,
        "steps": {},
        "run": {"id": "<run id>", "runbook": definition.name, "started_by": 0},
    });
    let mut checker = Checker {
        actions,
        limits,
        deadline: started + limits.total,
        draining,
        dir: dir.0.clone(),
        calls: 0,
        unknown: BTreeMap::new(),
        changed_before: Vec::new(),
        planned: plan.steps,
    };
    checker
        .walk(&definition.steps, String::new(), context)
        .await?;
    let Checker { planned, .. } = checker;
    drop(dir);
    let mut summary = CheckSummary::default();
    for step in &planned {
        let Some(check) = &step.check else { continue };
        match check.status {
            "read" => summary.read += 1,
            "would_change" => summary.would_change += 1,
            "unchanged" => summary.unchanged += 1,
            "failed" => {
                summary.failed += 1;
                summary
                    .first_failure
                    .get_or_insert_with(|| step.key.clone());
            }
            "may_fail" => summary.may_fail += 1,
            "described" => summary.described += 1,
            "skipped" => summary.skipped += 1,
            _ => {
                summary.not_checked += 1;
                let reason = match check.status {
                    "pending" => "its input needs the output of a step not run by the check",
                    "no_preview" => "its action has no preview",
                    _ => check.note.as_deref().unwrap_or("not reached"),
                };
                *summary.reasons.entry(reason.to_owned()).or_default() += 1;
                if check.note.as_deref().is_some_and(is_limit_note) {
                    summary.limit_reached = Some(format!(
                        "the check stopped at its limit of {}",
                        crate::duration::format(limits.total)
                    ));
                }
            }
        }
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Plan {
        steps: planned,
        check: Some(summary),
        ..plan
    })
}

fn limit_note(limits: &CheckLimits) -> String {
    format!(
        "not checked: the check's time limit ({}) was reached",
        crate::duration::format(limits.total)
    )
}

fn is_limit_note(note: &str) -> bool {
    note.contains("the check's time limit")
}

struct Checker {
    actions: Registry,
    limits: CheckLimits,
    deadline: Instant,
    /// The daemon's shutdown: no call starts after it, a call in flight is stopped.
    draining: CancellationToken,
    dir: std::path::PathBuf,
    calls: u64,
    /// Steps whose output the check does not have, by template name (`steps.<id>` or a
    /// capture), with why.
    unknown: BTreeMap<String, String>,
    /// The steps checked so far that would change something.
    changed_before: Vec<String>,
    planned: Vec<PlannedStep>,
}

type Walk<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

impl Checker {
    fn set(&mut self, key: &str, mut check: StepCheck) {
        match check.status {
            "failed" if !self.changed_before.is_empty() => {
                check.status = "may_fail";
                let note = format!(
                    "this is the state now; {} would change it first, so a run may not fail here",
                    self.changed_before
                        .iter()
                        .map(|key| format!("`{key}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                check.note = Some(match check.note.take() {
                    Some(before) => format!("{before}; {note}"),
                    None => note,
                });
            }
            "would_change" | "no_preview" => self.changed_before.push(key.to_owned()),
            _ => {}
        }
        if let Some(step) = self.planned.iter_mut().find(|step| step.key == key) {
            step.check = Some(check);
        }
    }

    /// Every planned step under `prefix` (a loop's iterations) gets `check`.
    fn set_under(&mut self, prefix: &str, check: &StepCheck) {
        for step in &mut self.planned {
            if step.key.starts_with(prefix) && step.check.is_none() {
                step.check = Some(check.clone());
            }
        }
    }

    /// The earlier steps a template uses whose output the check does not have.
    fn missing_outputs(&self, value: &Value) -> Vec<String> {
        let text = value.to_string();
        self.unknown
            .iter()
            .filter(|(name, _)| uses(&text, name))
            .map(|(name, why)| format!("`{name}` ({why})"))
            .collect()
    }

    fn walk<'a>(&'a mut self, steps: &'a [Step], prefix: String, context: Value) -> Walk<'a> {
        Box::pin(async move {
            let mut context = context;
            for step in steps {
                let key = if prefix.is_empty() {
                    step.id.clone()
                } else {
                    format!("{prefix}.{}", step.id)
                };
                let output = self.step(step, &key, &context).await?;
                let name = format!("steps.{}", step.id);
                match output {
                    Some(output) => {
                        if let Some(steps) = context.get_mut("steps").and_then(Value::as_object_mut)
                        {
                            steps.insert(
                                step.id.clone(),
                                json!({"output": output, "state": "succeeded", "attempts": 1, "error": null}),
                            );
                        }
                        if let (Some(capture), Some(map)) = (&step.capture, context.as_object_mut())
                        {
                            map.insert(capture.clone(), output);
                        }
                        self.unknown.remove(&name);
                    }
                    None => {
                        let why = match self
                            .planned
                            .iter()
                            .find(|planned| planned.key == key)
                            .and_then(|planned| planned.check.as_ref())
                            .map(|check| check.status)
                        {
                            Some("failed" | "may_fail") => "failed in the check",
                            Some("would_change" | "unchanged" | "no_preview") => {
                                "a mutating step, not run"
                            }
                            Some("skipped") => "skipped: its `when` is false",
                            _ => "not run by the check",
                        };
                        self.unknown.insert(name, why.to_owned());
                        if let Some(capture) = &step.capture {
                            self.unknown.insert(capture.clone(), why.to_owned());
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// A loop whose items the plan could not know (they come from a step the check ran): its
    /// planned `key[*]` steps become one set per item (when there are few enough to check),
    /// rendered as the plan renders them.
    async fn expand(
        &mut self,
        step: &Step,
        key: &str,
        items: &[Value],
        context: &Value,
    ) -> Result<(), Error> {
        let Some(for_each) = &step.for_each else {
            return Ok(());
        };
        if let Some(planned) = self.planned.iter_mut().find(|planned| planned.key == key) {
            planned.input = Value::Array(items.to_vec());
            planned.note = Some(format!(
                "{} iterations (items read by the check)",
                items.len()
            ));
        }
        let wildcard = format!("{key}[*]");
        let Some(at) = self
            .planned
            .iter()
            .position(|planned| planned.key.starts_with(&wildcard))
        else {
            return Ok(());
        };
        if items.len() > self.limits.iterations {
            return Ok(());
        }
        let mut expanded = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let mut inner = context.clone();
            if let Some(map) = inner.as_object_mut() {
                map.insert(for_each.var.clone(), item.clone());
                map.insert("index".to_owned(), Value::from(index));
            }
            let (steps, prefix, actions) = (
                for_each.steps.clone(),
                format!("{key}[{index}]"),
                self.actions.clone(),
            );
            expanded.extend(
                super::off_workers(move || {
                    let mut out = Vec::new();
                    super::plan::plan_steps(&steps, &prefix, &inner, &actions, &mut out)
                        .map(|()| out)
                })
                .await??,
            );
        }
        self.planned
            .retain(|planned| !planned.key.starts_with(&wildcard));
        self.planned.splice(at..at, expanded);
        Ok(())
    }

    /// Checks one step; its output when it ran (a read-only step that succeeded).
    async fn step(
        &mut self,
        step: &Step,
        key: &str,
        context: &Value,
    ) -> Result<Option<Value>, Error> {
        // Rendering is bounded too: a long walk (nested loops of described steps) stops here.
        if self.draining.is_cancelled() {
            let check = StepCheck::noted("not_checked", "not checked: the daemon is shutting down");
            self.set(key, check.clone());
            self.set_under(&format!("{key}["), &check);
            return Ok(None);
        }
        if Instant::now() >= self.deadline {
            let check = StepCheck::noted("not_checked", limit_note(&self.limits));
            self.set(key, check.clone());
            self.set_under(&format!("{key}["), &check);
            return Ok(None);
        }
        let mut when_now = None;
        if let Some(condition) = &step.when {
            let (condition_text, scope) = (condition.clone(), context.clone());
            match super::off_workers(move || template::is_true(&condition_text, &scope)).await? {
                Ok(false) => {
                    let check = StepCheck {
                        when: Some(false),
                        ..StepCheck::noted("skipped", format!("when is false now: {condition}"))
                    };
                    self.set(key, check.clone());
                    self.set_under(&format!("{key}["), &check);
                    return Ok(None);
                }
                Ok(true) => when_now = Some(true),
                Err(_) => {}
            }
        }
        let when_note = |check: &mut StepCheck| {
            check.when = when_now;
            if step.when.is_some() && when_now.is_none() {
                let note =
                    "`when` is decided at run time (it uses outputs the check does not have)";
                check.note = Some(match check.note.take() {
                    Some(before) => format!("{before}; {note}"),
                    None => note.to_owned(),
                });
            }
        };
        if let Some(for_each) = &step.for_each {
            let (items, scope) = (for_each.items.clone(), context.clone());
            let rendered = super::off_workers(move || template::render(&items, &scope)).await?;
            let Ok(Value::Array(items)) = rendered else {
                let missing = self.missing_outputs(&for_each.items);
                let mut check = StepCheck::noted(
                    "described",
                    format!(
                        "not executed: the items are known at run time{}",
                        if missing.is_empty() {
                            String::new()
                        } else {
                            format!(" (they use {})", missing.join(", "))
                        }
                    ),
                );
                when_note(&mut check);
                self.set(key, check);
                let pending =
                    StepCheck::noted("pending", "inside a loop whose items are known at run time");
                self.set_under(&format!("{key}["), &pending);
                return Ok(None);
            };
            self.expand(step, key, &items, context).await?;
            let mut check = StepCheck::noted(
                "described",
                format!("not executed: a loop over {} item(s)", items.len()),
            );
            when_note(&mut check);
            self.set(key, check);
            if items.len() > self.limits.iterations {
                let skipped = StepCheck::noted(
                    "not_checked",
                    format!(
                        "not checked: the loop has {} items (more than {}); its items are listed",
                        items.len(),
                        self.limits.iterations
                    ),
                );
                self.set_under(&format!("{key}["), &skipped);
                return Ok(None);
            }
            for (index, item) in items.into_iter().enumerate() {
                let mut inner = context.clone();
                if let Some(map) = inner.as_object_mut() {
                    map.insert(for_each.var.clone(), item);
                    map.insert("index".to_owned(), Value::from(index));
                }
                let saved = self.unknown.clone();
                self.walk(&for_each.steps, format!("{key}[{index}]"), inner)
                    .await?;
                self.unknown = saved;
            }
            return Ok(None);
        }
        match step.action.as_str() {
            "wait" | "window" | "approval" | "noop" => {
                let (with, scope) = (step.with.clone(), context.clone());
                let input = super::off_workers(move || template::render(&with, &scope))
                    .await?
                    .ok();
                let what = describe_core(&step.action, input.as_ref().unwrap_or(&step.with));
                let mut check = StepCheck::noted("described", format!("not executed: {what}"));
                when_note(&mut check);
                self.set(key, check);
                return Ok(None);
            }
            _ => {}
        }
        let (with, scope) = (step.with.clone(), context.clone());
        let input = match super::off_workers(move || template::render(&with, &scope)).await? {
            Ok(input) => input,
            Err(error) => {
                let missing = self.missing_outputs(&step.with);
                let note = if missing.is_empty() {
                    format!("the input does not render now: {error}")
                } else {
                    format!("its input uses the output of {}", missing.join(", "))
                };
                let mut check = StepCheck::noted("pending", note);
                when_note(&mut check);
                self.set(key, check);
                return Ok(None);
            }
        };
        if let Some(planned) = self.planned.iter_mut().find(|planned| planned.key == key) {
            if planned.input != input {
                planned.input = input.clone();
                planned.note = planned.note.as_ref().map(|note| {
                    note.replace(
                        "rendered at run time (uses earlier steps)",
                        "rendered with the outputs the check read",
                    )
                });
            }
        }
        let Some(action) = self.actions.get(&step.action) else {
            let mut check = StepCheck::new("failed");
            check.error = Some(format!("unknown action {:?}", step.action));
            self.set(key, check);
            return Ok(None);
        };
        let schema = action.schema();
        let problems = schema.check(&input, true);
        if !problems.is_empty() {
            let mut check = StepCheck::new("failed");
            check.error = Some(format!(
                "{}: the rendered input does not fit: {}",
                step.action,
                problems
                    .iter()
                    .map(|problem| format!("with.{problem}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            when_note(&mut check);
            self.set(key, check);
            return Ok(None);
        }
        let now = Instant::now();
        if now >= self.deadline {
            self.set(
                key,
                StepCheck::noted("not_checked", limit_note(&self.limits)),
            );
            return Ok(None);
        }
        let limit = self.limits.call.min(self.deadline - now);
        self.calls += 1;
        let log_path = self.dir.join(format!("{}.log", self.calls));
        let cancel = CancellationToken::new();
        let call_context = ActionContext {
            run_id: uuid::Uuid::nil(),
            step: key.to_owned(),
            attempt: 1,
            undo: false,
            cancel: cancel.clone(),
            draining: self.draining.clone(),
            log: LogSink::new(log_path.clone()),
            state_dir: self.dir.join(format!("{}.state", self.calls)),
            note: None,
            recorder: Recorder::discard(),
        };
        let future = if schema.mutates {
            match action.preview(input.clone(), call_context) {
                Some(future) => future,
                None => {
                    let mut check = StepCheck::noted(
                        "no_preview",
                        format!(
                            "no preview: would call {} with {}",
                            step.action,
                            serde_json::to_string(&input).unwrap_or_default()
                        ),
                    );
                    when_note(&mut check);
                    self.set(key, check);
                    return Ok(None);
                }
            }
        } else {
            action.call(input.clone(), call_context)
        };
        let draining = self.draining.clone();
        let result = tokio::select! {
            result = tokio::time::timeout(limit, future) => result,
            _ = draining.cancelled() => Ok(Err(crate::action::ActionFailure::retryable(
                "stopped: the daemon is shutting down",
            ))),
        };
        cancel.cancel();
        let elapsed_ms = now.elapsed().as_millis() as u64;
        let log = read_log(&log_path);
        let mut check = match result {
            Err(_) => {
                let whole = limit < self.limits.call;
                StepCheck {
                    error: Some(format!(
                        "no answer within {}{}",
                        crate::duration::format(limit),
                        if whole {
                            " (the rest of the check's time limit)"
                        } else {
                            " (the limit of one call in a check)"
                        }
                    )),
                    ..StepCheck::new("failed")
                }
            }
            Ok(Err(failure)) => StepCheck {
                error: Some(failure.message),
                ..StepCheck::new("failed")
            },
            Ok(Ok(output)) if schema.mutates => {
                let changes = output
                    .get("changes")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let runs = output.get("runs").is_some_and(|runs| !runs.is_null());
                StepCheck {
                    note: output
                        .get("note")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    preview: Some(output),
                    ..StepCheck::new(if changes > 0 || runs {
                        "would_change"
                    } else {
                        "unchanged"
                    })
                }
            }
            Ok(Ok(output)) => {
                let mut check = StepCheck::new("read");
                if let Some(until) = &step.until {
                    let mut scope = context.clone();
                    if let Some(map) = scope.as_object_mut() {
                        map.insert("output".to_owned(), output.clone());
                    }
                    let condition = until.clone();
                    let holds =
                        super::off_workers(move || template::is_true(&condition, &scope)).await?;
                    let every = step
                        .every
                        .map(crate::duration::format)
                        .or_else(|| step.every_template.clone())
                        .unwrap_or_default();
                    check.until = holds.as_ref().ok().copied();
                    check.note = Some(match holds {
                        Ok(true) => format!("until {until}: holds now"),
                        Ok(false) => {
                            format!("until {until}: does not hold yet (a run polls every {every})")
                        }
                        Err(error) => format!("until {until}: cannot be evaluated: {error}"),
                    });
                }
                check.output = Some(output);
                check
            }
        };
        check.log = log;
        check.elapsed_ms = Some(elapsed_ms);
        when_note(&mut check);
        let output = (check.status == "read")
            .then(|| check.output.clone())
            .flatten();
        self.set(key, check);
        Ok(output)
    }
}

/// Whether template text uses `name` (`steps.x` or a capture) as a name, not as a prefix of
/// another one.
fn uses(text: &str, name: &str) -> bool {
    let mut from = 0;
    while let Some(at) = text[from..].find(name) {
        let start = from + at;
        let end = start + name.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !word(after) && !word(before) && before != Some('.') {
            return true;
        }
        from = end;
    }
    false
}

/// What a core action the state machine decides would do.
fn describe_core(action: &str, input: &Value) -> String {
    let text = |key: &str| {
        input.get(key).map(|value| {
            value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned)
        })
    };
    match action {
        "wait" => match (text("duration"), text("until")) {
            (Some(duration), _) => format!("waits {duration}"),
            (None, Some(until)) => format!("waits until {until}"),
            _ => "waits".to_owned(),
        },
        "window" => format!(
            "waits for a time window {}",
            serde_json::to_string(input).unwrap_or_default()
        ),
        "approval" => match text("prompt") {
            Some(prompt) => format!("waits for `runbook approve`: {prompt}"),
            None => "waits for `runbook approve`".to_owned(),
        },
        _ => "does nothing".to_owned(),
    }
}

/// A directory private to one check (mode 0700, under the system's temporary directory),
/// removed with everything in it when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn create() -> Result<TempDir, Error> {
        use std::hash::{BuildHasher, Hasher};
        use std::os::unix::fs::DirBuilderExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // A name nobody can guess (the hasher's keys are random per process); one that exists
        // already (left over, or planted by another local user) is never reused: try another.
        let mut attempts = 0;
        loop {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let path = std::env::temp_dir().join(format!(
                "runbook-check-{}-{:016x}",
                std::process::id(),
                hasher.finish()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(error) => {
                    return Err(Error::Internal(format!(
                        "creating {} for the check: {error}",
                        path.display()
                    )))
                }
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), %error, "cannot remove a check's directory");
        }
    }
}

/// The call's log lines, the last [`LOG_SHOWN`] bytes.
fn read_log(path: &std::path::Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let start = bytes.len().saturating_sub(LOG_SHOWN);
    String::from_utf8_lossy(&bytes[start..])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::action::{Action, ActionFailure, ActionFuture, Schema};

    static READS: Schema = Schema {
        mutates: false,
        open: true,
        keys: &[],
    };
    static CHANGES: Schema = Schema {
        mutates: true,
        open: true,
        keys: &[],
    };

    /// A read-only action: its output echoes its input; sleeps `sleep_ms` first.
    struct Read(Arc<AtomicUsize>);
    impl Action for Read {
        fn schema(&self) -> &'static Schema {
            &READS
        }
        fn call(&self, input: Value, context: ActionContext) -> ActionFuture {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let sleep = input["sleep_ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(sleep)).await;
                if input["fail"] == true {
                    return Err(ActionFailure::retryable("nobody answers"));
                }
                context.log.line("read it");
                Ok(json!({"echo": input}))
            })
        }
    }

    /// A mutating action; `with_preview` says whether it can preview. `call` counts.
    struct Change(Arc<AtomicUsize>, bool);
    impl Action for Change {
        fn schema(&self) -> &'static Schema {
            &CHANGES
        }
        fn call(&self, _input: Value, _context: ActionContext) -> ActionFuture {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(json!({"done": 1})) })
        }
        fn preview(&self, input: Value, _context: ActionContext) -> Option<ActionFuture> {
            self.1.then(|| -> ActionFuture {
                Box::pin(async move {
                    Ok(json!({"changes": [{"what": "x", "before": 1, "after": input["to"]}], "note": "x moves"}))
                })
            })
        }
    }

    fn registry(reads: &Arc<AtomicUsize>, changes: &Arc<AtomicUsize>) -> Registry {
        let mut registry = Registry::new();
        registry.register("test.read", Read(Arc::clone(reads)));
        registry.register("test.change", Change(Arc::clone(changes), true));
        registry.register("test.blind", Change(Arc::clone(changes), false));
        registry
    }

    async fn checked(text: &str, limits: CheckLimits) -> (Plan, usize, usize) {
        let definition = crate::definition::parse("t.toml", text).expect("a valid runbook");
        let (reads, changes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let actions = registry(&reads, &changes);
        let plan = check(
            Arc::new(definition),
            Map::new(),
            actions,
            limits,
            CancellationToken::new(),
        )
        .await
        .expect("a check");
        (
            plan,
            reads.load(Ordering::SeqCst),
            changes.load(Ordering::SeqCst),
        )
    }

    fn step<'a>(plan: &'a Plan, key: &str) -> &'a StepCheck {
        plan.steps
            .iter()
            .find(|step| step.key == key)
            .and_then(|step| step.check.as_ref())
            .unwrap_or_else(|| panic!("no check of {key}"))
    }

    const RUNBOOK: &str = r#"
name = "t"
version = 1

[params.n]
type = "int"
default = 2

[[steps]]
id = "first"
action = "test.read"
with = { n = "{{ params.n }}" }

[[steps]]
id = "second"
action = "test.read"
when = "steps.first.output.echo.n == 2"
with = { n = "{{ steps.first.output.echo.n + 1 }}" }

[[steps]]
id = "change"
action = "test.change"
when = "steps.second.state == 'succeeded'"
with = { to = "{{ steps.second.output.echo.n }}" }

[[steps]]
id = "blind"
action = "test.blind"
with = { x = 1 }

[[steps]]
id = "after"
action = "test.read"
when = "steps.change.state == 'succeeded'"
with = { n = "{{ steps.change.output.done }}" }

[[steps]]
id = "never"
action = "test.read"
when = "params.n == 3"
with = { n = 0 }

[[steps]]
id = "gate"
action = "approval"
with = { prompt = "go?" }
"#;

    #[tokio::test]
    async fn reads_feed_later_steps_and_mutating_steps_are_only_previewed() {
        let (plan, reads, changes) = checked(RUNBOOK, CheckLimits::default()).await;
        assert_eq!(changes, 0, "a mutating action was called");
        // first, second: `never` is skipped by its `when`, `after` needs a mutating step.
        assert_eq!(reads, 2);
        let first = step(&plan, "first");
        assert_eq!(first.status, "read");
        assert_eq!(first.log, vec!["read it".to_owned()]);
        let second = step(&plan, "second");
        assert_eq!((second.status, second.when), ("read", Some(true)));
        assert_eq!(second.output.as_ref().unwrap()["echo"]["n"], 3);
        let planned = plan.steps.iter().find(|step| step.key == "change").unwrap();
        assert_eq!(
            planned.input,
            json!({"to": 3}),
            "rendered with the read output"
        );
        let change = step(&plan, "change");
        assert_eq!(change.status, "would_change");
        assert_eq!(change.preview.as_ref().unwrap()["changes"][0]["after"], 3);
        let blind = step(&plan, "blind");
        assert_eq!(blind.status, "no_preview");
        assert_eq!(
            blind.note.as_deref(),
            Some(r#"no preview: would call test.blind with {"x":1}"#)
        );
        let after = step(&plan, "after");
        assert_eq!(after.status, "pending");
        assert!(
            after
                .note
                .as_deref()
                .unwrap()
                .contains("`steps.change` (a mutating step, not run)")
                && after
                    .note
                    .as_deref()
                    .unwrap()
                    .contains("`when` is decided at run time"),
            "{:?}",
            after.note
        );
        assert_eq!(step(&plan, "never").status, "skipped");
        assert_eq!(step(&plan, "gate").status, "described");
        let summary = plan.check.unwrap();
        assert_eq!(
            (
                summary.read,
                summary.would_change,
                summary.skipped,
                summary.described,
                summary.not_checked
            ),
            (2, 1, 1, 1, 2)
        );
        assert!(summary.limit_reached.is_none());
    }

    #[tokio::test]
    async fn a_loop_over_items_read_by_the_check_is_checked_item_by_item() {
        let runbook = r#"
name = "t"
version = 1

[[steps]]
id = "list"
action = "test.read"
with = { items = ["a", "b"] }

[[steps]]
id = "each"
for_each = "{{ steps.list.output.echo.items }}"
as = "item"

  [[steps.steps]]
  id = "look"
  action = "test.read"
  with = { name = "{{ item }}" }

  [[steps.steps]]
  id = "touch"
  action = "test.change"
  with = { to = "{{ steps.look.output.echo.name }}" }
"#;
        let (plan, reads, changes) = checked(runbook, CheckLimits::default()).await;
        assert_eq!((reads, changes), (3, 0));
        let keys: Vec<&str> = plan.steps.iter().map(|step| step.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "list",
                "each",
                "each[0].look",
                "each[0].touch",
                "each[1].look",
                "each[1].touch"
            ]
        );
        assert_eq!(step(&plan, "each").status, "described");
        assert_eq!(
            step(&plan, "each[1].look").output.as_ref().unwrap()["echo"]["name"],
            "b"
        );
        let touch = step(&plan, "each[1].touch");
        assert_eq!(touch.preview.as_ref().unwrap()["changes"][0]["after"], "b");

        // More items than a check takes: listed, their steps not checked.
        let limits = CheckLimits {
            iterations: 1,
            ..CheckLimits::default()
        };
        let (plan, reads, _) = checked(runbook, limits).await;
        assert_eq!(reads, 1);
        let each = plan.steps.iter().find(|step| step.key == "each").unwrap();
        assert_eq!(each.input, json!(["a", "b"]));
        assert_eq!(step(&plan, "each[*].look").status, "not_checked");
    }

    #[tokio::test]
    async fn each_call_and_the_whole_check_are_bounded() {
        let runbook = r#"
name = "t"
version = 1

[[steps]]
id = "slow"
action = "test.read"
with = { sleep_ms = 5000 }

[[steps]]
id = "slower"
action = "test.read"
with = { sleep_ms = 5000 }

[[steps]]
id = "late"
action = "test.read"
with = { n = 1 }

[[steps]]
id = "broken"
action = "test.read"
with = { fail = true }
"#;
        let limits = CheckLimits {
            call: Duration::from_millis(300),
            total: Duration::from_millis(500),
            iterations: 8,
        };
        let started = Instant::now();
        let (plan, _, _) = checked(runbook, limits).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let slow = step(&plan, "slow");
        assert_eq!(slow.status, "failed");
        assert!(
            slow.error
                .as_deref()
                .unwrap()
                .contains("the limit of one call"),
            "{:?}",
            slow.error
        );
        let slower = step(&plan, "slower");
        assert_eq!(slower.status, "failed");
        assert!(
            slower
                .error
                .as_deref()
                .unwrap()
                .contains("the rest of the check's time limit"),
            "{:?}",
            slower.error
        );
        for key in ["late", "broken"] {
            assert_eq!(step(&plan, key).status, "not_checked", "{key}");
        }
        let summary = plan.check.unwrap();
        assert_eq!((summary.failed, summary.not_checked), (2, 2));
        assert_eq!(summary.first_failure.as_deref(), Some("slow"));
        assert!(summary.limit_reached.is_some());
    }

    #[tokio::test]
    async fn a_daemon_shutting_down_calls_nothing_more() {
        let definition = crate::definition::parse("t.toml", RUNBOOK).expect("a valid runbook");
        let (reads, changes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let draining = CancellationToken::new();
        draining.cancel();
        let plan = check(
            Arc::new(definition),
            Map::new(),
            registry(&reads, &changes),
            CheckLimits::default(),
            draining,
        )
        .await
        .expect("a check");
        assert_eq!(reads.load(Ordering::SeqCst), 0);
        let first = step(&plan, "first");
        assert_eq!(first.status, "not_checked");
        assert_eq!(
            first.note.as_deref(),
            Some("not checked: the daemon is shutting down")
        );
    }

    #[tokio::test]
    async fn a_failed_read_is_shown_and_its_dependents_say_why_they_wait() {
        let runbook = r#"
name = "t"
version = 1

[[steps]]
id = "broken"
action = "test.read"
with = { fail = true }

[[steps]]
id = "uses"
action = "test.read"
with = { n = "{{ steps.broken.output.echo }}" }
"#;
        let (plan, reads, _) = checked(runbook, CheckLimits::default()).await;
        assert_eq!(reads, 1);
        let broken = step(&plan, "broken");
        assert_eq!(
            (broken.status, broken.error.as_deref()),
            ("failed", Some("nobody answers"))
        );
        let uses = step(&plan, "uses");
        assert_eq!(uses.status, "pending");
        assert!(uses
            .note
            .as_deref()
            .unwrap()
            .contains("failed in the check"));
    }

    #[test]
    fn a_name_is_used_only_as_a_whole_name() {
        assert!(uses("{{ steps.before.output.x }}", "steps.before"));
        assert!(!uses("{{ steps.before_all.output }}", "steps.before"));
        assert!(!uses("{{ params.steps.before }}", "steps.before"));
        assert!(uses("{{ route.max }}", "route"));
        assert!(!uses("{{ reroute.max }}", "route"));
    }
}
