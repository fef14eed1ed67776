//! Checks that need more than the file: which actions exist, and the inputs of core actions.

use serde_json::Value;

use super::{CoreAction, Definition, Error};
use crate::clock::{Clock, SystemClock};

/// Checks every action name (steps and undos) against the core actions and `is_known`.
pub fn validate(definition: &Definition, is_known: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    check_nesting(definition, &definition.steps, 0)?;
    for step in definition.all_steps() {
        let mut actions = vec![("action", step.action.as_str())];
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
        if let Some(for_each) = &step.for_each {
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
    let field = |name: &str| with.get(name);
    let text_field = |name: &str| -> Result<Option<&str>, String> {
        match field(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(_) => Err(format!("{name}: must be a string")),
        }
    };
    match CoreAction::of(action) {
        Some(CoreAction::Exec) => {
            match field("command") {
                Some(Value::String(command)) if !command.trim().is_empty() => {}
                Some(Value::Array(argv)) if !argv.is_empty() && argv.iter().all(Value::is_string) => {}
                _ => return Err("command: exec needs `command`, a shell string or an argv list of strings".to_owned()),
            }
            if let Some(parse) = text_field("parse")? {
                if !is_template(parse) && !matches!(parse, "text" | "json" | "lines") {
                    return Err(format!("parse: unknown value {parse:?} (text, json, lines)"));
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
                if !env.as_object().is_some_and(|env| env.values().all(Value::is_string)) {
                    return Err("env: must be a table of strings".to_owned());
                }
            }
            text_field("cwd")?;
        }
        Some(CoreAction::Wait) => match (text_field("duration")?, text_field("until")?) {
            (Some(duration), None) => {
                if !is_template(duration) {
                    crate::duration::parse(duration).map_err(|message| format!("duration: {message}"))?;
                }
            }
            (None, Some(until)) => {
                if !is_template(until) {
                    let until = chrono::DateTime::parse_from_rfc3339(until).map_err(|error| format!("until: {until:?} is not an RFC 3339 instant: {error}"))?;
                    crate::duration::check_deadline(until.with_timezone(&chrono::Utc), SystemClock.now())
                        .map_err(|message| format!("until: {message}"))?;
                }
            }
            _ => return Err("wait needs exactly one of `duration` (e.g. \"72h\") or `until` (an RFC 3339 instant)".to_owned()),
        },
        Some(CoreAction::Window) => {
            let cron = text_field("cron")?.ok_or("cron: window needs `cron` (e.g. \"0 4 * * *\")")?;
            let zone = text_field("tz")?;
            if !is_template(cron) && !zone.is_some_and(is_template) {
                // The one check that needs today's date: a cron that will not match for years
                // (`0 0 30 2 *` never does) is a mistake, whenever the file is read.
                crate::calendar::Calendar::parse(cron, zone.unwrap_or("UTC"))?
                    .next_within_horizon(SystemClock.now())
                    .map_err(|message| format!("cron: {message}"))?;
            }
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
