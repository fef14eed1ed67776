//! `exec`'s command and the inputs of the core actions the machine decides (`wait`, `window`),
//! each read by one function: validation reads a file's literal input with it (a text that is
//! still a template is left for when it is rendered), and the machine and the exec action read
//! the rendered input with the same function. A file that validates meets no other rule when it
//! runs.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// What is read: a runbook file's input, whose texts may still be templates, or an input
/// rendered for a call, whose texts are what they say (a param's value may contain `{{`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Literal,
    Rendered,
}

impl Stage {
    /// Whether `text` is left for when it is rendered.
    fn pending(self, text: &str) -> bool {
        self == Stage::Literal && (text.contains("{{") || text.contains("{%"))
    }
}

/// A text field: absent, or a string.
pub fn text<'a>(input: &'a Value, name: &str) -> Result<Option<&'a str>, String> {
    match input.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.as_str())),
        Some(_) => Err(format!("{name}: must be a string")),
    }
}

/// `exec`'s command as an argv: a shell string runs under `sh -c`; a list is the argv itself.
/// Neither may be empty, and a list holds strings only.
pub fn exec_argv(input: &Value) -> Result<Vec<String>, String> {
    match input.get("command") {
        Some(Value::String(command)) if !command.trim().is_empty() => {
            Ok(vec!["sh".to_owned(), "-c".to_owned(), command.clone()])
        }
        Some(Value::Array(argv)) if !argv.is_empty() => argv
            .iter()
            .map(|word| word.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| "command: an argv list holds strings only".to_owned()),
        _ => Err(
            "command: exec needs `command`, a shell string or an argv list of strings".to_owned(),
        ),
    }
}

/// When a `wait` ends: `duration` after `now`, or at `until` (an RFC 3339 instant within the
/// horizon; one already past ends the wait at once); exactly one of the two. `None`: still a
/// template.
pub fn wait_deadline(
    input: &Value,
    now: DateTime<Utc>,
    stage: Stage,
) -> Result<Option<DateTime<Utc>>, String> {
    match (text(input, "duration")?, text(input, "until")?) {
        (Some(duration), None) => {
            if stage.pending(duration) {
                return Ok(None);
            }
            crate::duration::parse(duration)
                .map(|duration| Some(crate::duration::after(now, duration)))
                .map_err(|message| format!("duration: {message}"))
        }
        (None, Some(until)) => {
            if stage.pending(until) {
                return Ok(None);
            }
            let until = DateTime::parse_from_rfc3339(until)
                .map(|instant| instant.with_timezone(&Utc))
                .map_err(|error| format!("until: {until:?} is not an RFC 3339 instant: {error}"))?;
            crate::duration::check_deadline(until, now)
                .map_err(|message| format!("until: {message}"))?;
            Ok(Some(until))
        }
        _ => Err(
            "wait needs exactly one of `duration` (e.g. \"72h\") or `until` (an RFC 3339 instant)"
                .to_owned(),
        ),
    }
}

/// When a `window` opens next: the first instant after `now` its `cron` matches on the wall
/// clock of `tz` (UTC unless given). A cron that matches nowhere within the horizon is an
/// error (`0 0 30 2 *` never does). `None`: still a template.
pub fn window_next(
    input: &Value,
    now: DateTime<Utc>,
    stage: Stage,
) -> Result<Option<DateTime<Utc>>, String> {
    let cron = text(input, "cron")?.ok_or("cron: window needs `cron` (e.g. \"0 4 * * *\")")?;
    let zone = text(input, "tz")?;
    if stage.pending(cron) || zone.is_some_and(|zone| stage.pending(zone)) {
        return Ok(None);
    }
    crate::calendar::Calendar::parse(cron, zone.unwrap_or("UTC"))?
        .next_within_horizon(now)
        .map(Some)
        .map_err(|message| format!("cron: {message}"))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    #[test]
    fn one_reading_for_a_file_and_for_a_call() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        // exec: what validation refused, the call refuses too.
        for bad in [
            json!({}),
            json!({"command": " "}),
            json!({"command": []}),
            json!({"command": ["ls", 1]}),
        ] {
            assert!(exec_argv(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            exec_argv(&json!({"command": ["ls", "-l"]})).unwrap(),
            ["ls", "-l"]
        );
        assert_eq!(
            exec_argv(&json!({"command": "ls"})).unwrap(),
            ["sh", "-c", "ls"]
        );
        // wait: a template is left for later in a file, but read as it is once rendered.
        let templated = json!({"duration": "{{ params.retention }}"});
        assert_eq!(wait_deadline(&templated, now, Stage::Literal), Ok(None));
        assert!(wait_deadline(&templated, now, Stage::Rendered).is_err());
        assert_eq!(
            wait_deadline(&json!({"duration": "72h"}), now, Stage::Rendered),
            Ok(Some(now + chrono::TimeDelta::hours(72)))
        );
        assert!(wait_deadline(
            &json!({"duration": "1h", "until": "2026-01-02T00:00:00Z"}),
            now,
            Stage::Literal
        )
        .is_err());
        assert!(wait_deadline(
            &json!({"until": "2400-01-01T00:00:00Z"}),
            now,
            Stage::Rendered
        )
        .is_err());
        // window: a cron that never matches is refused in both.
        for stage in [Stage::Literal, Stage::Rendered] {
            assert!(window_next(&json!({"cron": "0 0 30 2 *"}), now, stage).is_err());
            assert!(window_next(
                &json!({"cron": "0 4 * * *", "tz": "Asia/Shanghai"}),
                now,
                stage
            )
            .unwrap()
            .is_some());
        }
    }
}
