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
use crate::definition::{CoreAction, Definition, DurationSpec, Step};
use crate::template;

mod step;

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
    /// Gives the steps inside the iterations of the loop `key` that have no check yet `check`.
    fn set_under(&mut self, key: &str, check: &StepCheck) {
        for step in &mut self.planned {
            if crate::definition::step_key::is_nested_in(&step.key, key) && step.check.is_none() {
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
                let key = crate::definition::step_key::child(&prefix, &step.id);
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
        let Some(for_each) = step.for_each() else {
            return Ok(());
        };
        if let Some(planned) = self.planned.iter_mut().find(|planned| planned.key == key) {
            planned.input = Value::Array(items.to_vec());
            planned.note = Some(format!(
                "{} iterations (items read by the check)",
                items.len()
            ));
        }
        let wildcard = crate::definition::step_key::every_iteration(key);
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
                crate::definition::step_key::iteration(key, index),
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
    match CoreAction::of(action) {
        Some(CoreAction::Wait) => match (text("duration"), text("until")) {
            (Some(duration), _) => format!("waits {duration}"),
            (None, Some(until)) => format!("waits until {until}"),
            _ => "waits".to_owned(),
        },
        Some(CoreAction::Window) => format!(
            "waits for a time window {}",
            serde_json::to_string(input).unwrap_or_default()
        ),
        Some(CoreAction::Approval) => match text("prompt") {
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
mod tests;
