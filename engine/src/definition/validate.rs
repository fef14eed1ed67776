//! Checks that need more than the file: which actions exist, and the inputs of core actions.

use serde_json::Value;

use super::{CoreAction, Definition, Error};
use crate::clock::{Clock, SystemClock};

/// Checks every action name (steps and undos) against the core actions and `is_known`.
pub fn validate(definition: &Definition, is_known: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    check_nesting(definition, &definition.steps, 0)?;
    for step in definition.all_steps() {
        let mut actions = vec![("action", step.action())];
        if let Some(undo) = &step.undo {
            actions.push(("undo.action", undo.action.as_str()));
        }
        for (field, action) in actions {
            if CoreAction::of(action).is_none() && !is_known(action) {
                return Err(Error {
                    file: definition.source.clone(),
                    line: step.line,
                    message: format!(
                        "step {:?}: {field}: unknown action {action:?} (core actions: {})",
                        step.id,
                        CoreAction::step_action_names().join(", ")
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Refuses loops nested deeper than [`super::MAX_NESTING`] (a definition that did not come
/// through `parse`, e.g. one read back, is held to the same limit).
fn check_nesting(
    definition: &Definition,
    steps: &[super::Step],
    depth: usize,
) -> Result<(), Error> {
    for step in steps {
        if let Some(for_each) = step.for_each() {
            if depth >= super::MAX_NESTING {
                return Err(Error {
                    file: definition.source.clone(),
                    line: step.line,
                    message: format!(
                        "step {:?}: steps nested more than {} levels deep (for_each inside \
                         for_each); flatten the runbook",
                        step.id,
                        super::MAX_NESTING
                    ),
                });
            }
            check_nesting(definition, &for_each.steps, depth + 1)?;
        }
    }
    Ok(())
}

fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// Static checks of a core action's input (the parts that are not templates).
pub(crate) fn check_core_input(action: &str, with: &Value) -> Result<(), String> {
    use crate::action::core_input::{self, Stage};
    let field = |name: &str| with.get(name);
    let text_field = |name: &str| core_input::text(with, name);
    match CoreAction::of(action) {
        Some(CoreAction::Exec) => {
            core_input::exec_argv(with)?;
            if let Some(parse) = text_field("parse")? {
                if !is_template(parse) && !matches!(parse, "text" | "json" | "lines") {
                    return Err(format!(
                        "parse: unknown value {parse:?} (text, json, lines)"
                    ));
                }
            }
            if let Some(pattern) = text_field("regex")? {
                if !is_template(pattern) {
                    regex::Regex::new(pattern).map_err(|error| format!("regex: {error}"))?;
                }
            }
            if let Some(grace) = text_field("grace")? {
                if !is_template(grace) {
                    crate::duration::parse(grace).map_err(|message| format!("grace: {message}"))?;
                }
            }
            if let Some(env) = field("env") {
                if !env
                    .as_object()
                    .is_some_and(|env| env.values().all(Value::is_string))
                {
                    return Err("env: must be a table of strings".to_owned());
                }
            }
            text_field("cwd")?;
        }
        // The one check that needs today's date: an `until` in the past, a cron that will
        // not match for years, are mistakes whenever the file is read.
        Some(CoreAction::Wait) => {
            core_input::wait_deadline(with, SystemClock.now(), Stage::Literal)?;
        }
        Some(CoreAction::Window) => {
            core_input::window_next(with, SystemClock.now(), Stage::Literal)?;
        }
        Some(CoreAction::Approval) => {
            text_field("prompt")?;
            if field("distinct_approver").is_some_and(|value| !value.is_boolean()) {
                return Err("distinct_approver: must be true or false".to_owned());
            }
        }
        _ => {}
    }
    Ok(())
}
