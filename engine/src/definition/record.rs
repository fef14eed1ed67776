//! The form a step has in the journal: a run pins its definition in its first event, so this
//! shape is a format. A loop is `action = "for_each"` beside `for_each`; a duration is a value
//! in milliseconds or, when it is a template, `timeout_template` / `every_template`. New fields
//! must default so that every journal written before them still reads.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DurationSpec, ForEach, OnFailure, RetryPolicy, Step, StepKind, Undo};

#[derive(Serialize, Deserialize)]
pub(super) struct StepRecord {
    id: String,
    action: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    with: Value,
    #[serde(default, with = "crate::duration::opt_ms")]
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    when: Option<String>,
    until: Option<String>,
    #[serde(default, with = "crate::duration::opt_ms")]
    every: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    every_template: Option<String>,
    capture: Option<String>,
    #[serde(default)]
    on_failure: OnFailure,
    #[serde(default)]
    idempotent: bool,
    undo: Option<Box<Undo>>,
    for_each: Option<ForEach>,
    #[serde(default)]
    line: usize,
}

fn split(spec: Option<DurationSpec>) -> (Option<Duration>, Option<String>) {
    match spec {
        Some(DurationSpec::Fixed(duration)) => (Some(duration), None),
        Some(DurationSpec::Template(template)) => (None, Some(template)),
        None => (None, None),
    }
}

impl From<StepRecord> for Step {
    fn from(record: StepRecord) -> Step {
        Step {
            id: record.id,
            kind: match record.for_each {
                Some(for_each) => StepKind::Loop(for_each),
                None => StepKind::Action(record.action),
            },
            description: record.description,
            with: record.with,
            timeout: DurationSpec::of(record.timeout, record.timeout_template),
            retry: record.retry,
            when: record.when,
            until: record.until,
            every: DurationSpec::of(record.every, record.every_template),
            capture: record.capture,
            on_failure: record.on_failure,
            idempotent: record.idempotent,
            undo: record.undo,
            line: record.line,
        }
    }
}

impl From<Step> for StepRecord {
    fn from(step: Step) -> StepRecord {
        let action = step.action().to_owned();
        let (timeout, timeout_template) = split(step.timeout);
        let (every, every_template) = split(step.every);
        let for_each = match step.kind {
            StepKind::Loop(for_each) => Some(for_each),
            StepKind::Action(_) => None,
        };
        StepRecord {
            id: step.id,
            action,
            description: step.description,
            with: step.with,
            timeout,
            retry: step.retry,
            when: step.when,
            until: step.until,
            every,
            timeout_template,
            every_template,
            capture: step.capture,
            on_failure: step.on_failure,
            idempotent: step.idempotent,
            undo: step.undo,
            for_each,
            line: step.line,
        }
    }
}
