//! How an exec call ended, read from its call dir: after a restart (still running, ended, never
//! released), and as the step's output or failure.

use super::*;

/// What a restarted daemon can know of a call that was in flight.
#[derive(Debug)]
pub(super) enum Recovery {
    Ended(Status),
    Running(ProcessIdentity),
    /// The command was never released, so it never ran: running it again is safe.
    NotStarted(String),
    Unknown(String),
}

pub(super) fn recovery(call_dir: &Path, note: Option<&Value>) -> Recovery {
    let ended = |status: Status| match status.outcome {
        Outcome::NotStarted { reason } => {
            Recovery::NotStarted(format!("the command never started ({reason})"))
        }
        _ => Recovery::Ended(status),
    };
    match shim::read_status(call_dir) {
        Ok(Some(status)) => return ended(status),
        Ok(None) => {}
        Err(error) => {
            return Recovery::Unknown(format!("{error}: the command's outcome is unknown"))
        }
    }
    let started_by = note
        .and_then(|note| note.get("daemon"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !started_by.is_empty() && started_by != super::daemon_identity() {
        return Recovery::Unknown(format!(
            "the command was started by the daemon at {started_by}, which stopped; its supervisor cannot be re-attached from this daemon ({}), and its log and exit status are in that daemon's data dir: the command's outcome is unknown",
            super::daemon_identity()
        ));
    }
    let journaled = note
        .and_then(|note| note.get("shim"))
        .and_then(|shim| serde_json::from_value::<ProcessIdentity>(shim.clone()).ok());
    let Some(shim) = journaled else {
        return Recovery::NotStarted(
            "the command's supervisor had not been journaled when the daemon stopped, so the command was never released: it did not start"
                .to_owned(),
        );
    };
    if shim.is_alive() {
        return Recovery::Running(shim);
    }
    // It may have written its status and ended since the first look.
    match shim::read_status(call_dir) {
        Ok(Some(status)) => return ended(status),
        Ok(None) => {}
        Err(error) => {
            return Recovery::Unknown(format!("{error}: the command's outcome is unknown"))
        }
    }
    let fate = if shim.boot_id != shim::boot_id() {
        "did not survive a reboot of the host"
    } else if ProcStat::read(shim.pid).is_some_and(|stat| stat.start_time != shim.start_time) {
        "is gone (its pid now belongs to another process)"
    } else {
        "is gone"
    };
    Recovery::Unknown(format!(
        "the command's supervisor (pid {}) {fate} and left no exit status in {}: the command's outcome is unknown{}",
        shim.pid,
        call_dir.display(),
        still_running(call_dir)
    ))
}

/// `"; the command (pid N) still runs, unsupervised"` if it does.
pub(super) fn still_running(call_dir: &Path) -> String {
    match shim::read_json::<ProcessIdentity>(&call_dir.join(shim::CHILD_FILE)) {
        Ok(Some(leader)) if leader.is_alive() => format!(
            "; the command itself (pid {}, its process group) still runs, unsupervised",
            leader.pid
        ),
        _ => String::new(),
    }
}

pub(super) fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited { code } => format!("exit code {code}"),
        Outcome::Signaled { signal } => format!("killed by signal {signal}"),
        Outcome::NotStarted { reason } => format!("not started: {reason}"),
        Outcome::SpawnFailed { error } => error.clone(),
    }
}

/// The step's result from the shim's status and the kept stdout (reported with it, or else in
/// the call dir).
pub(super) fn finish(
    status: Status,
    stdout: Option<Vec<u8>>,
    spec: &ExecSpec,
    call_dir: &Path,
) -> Result<Value, ActionFailure> {
    let stderr_tail = status.stderr_tail;
    let cause = match status.outcome {
        Outcome::Exited { code: 0 } => None,
        Outcome::Exited { code } => Some((format!("exited with code {code}"), Some(code))),
        Outcome::Signaled { signal } => Some((format!("was killed by signal {signal}"), None)),
        Outcome::NotStarted { reason } => {
            return Err(ActionFailure::never_started(format!(
                "the command was not started: {reason}"
            )))
        }
        Outcome::SpawnFailed { error } => return Err(ActionFailure::permanent(error)),
    };
    if let Some((cause, code)) = cause {
        let tail = last_lines(&stderr_tail, 5);
        let message = match (&spec.host, code) {
            (Some(host), Some(255)) => {
                format!("ssh to {host} failed (exit 255: it could not connect or log in, or the remote command exited 255)")
            }
            (Some(host), _) => format!("command on {host} {cause}"),
            (None, _) => format!("command {cause}"),
        };
        let message = if tail.is_empty() {
            message
        } else {
            format!("{message}: {tail}")
        };
        let failure = ActionFailure::retryable(message);
        // An exit code is the command's own end; a signal (ours, or the OOM killer's) is not.
        return Err(match code {
            Some(_) => failure.after_running_to_end(),
            None => failure,
        });
    }
    let stdout_path = call_dir.join(shim::STDOUT_FILE);
    let stdout = match stdout.map_or_else(|| std::fs::read(&stdout_path), Ok) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            return Err(ActionFailure::retryable(format!(
                "cannot read the command's stdout {}: {error}",
                stdout_path.display()
            )))
        }
    };
    let stdout_text = String::from_utf8_lossy(&stdout).into_owned();
    let mut output = Map::new();
    output.insert("exit_code".to_owned(), json!(0));
    output.insert(
        "stdout".to_owned(),
        Value::String(truncate(&stdout_text, STDOUT_IN_OUTPUT)),
    );
    output.insert("stderr_tail".to_owned(), Value::String(stderr_tail));
    match spec.parse.as_str() {
        "json" => {
            let parsed: Value = serde_json::from_str(stdout_text.trim()).map_err(|error| {
                ActionFailure::permanent(format!(
                    "stdout is not JSON ({error}): {}",
                    truncate(&stdout_text, 200)
                ))
            })?;
            output.insert("json".to_owned(), parsed);
        }
        "lines" => {
            let lines: Vec<Value> = stdout_text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| json!(line))
                .collect();
            output.insert("lines".to_owned(), Value::Array(lines));
        }
        _ => {}
    }
    if let Some(regex) = &spec.regex {
        let captures = regex.captures(&stdout_text).map(|captures| {
            regex
                .capture_names()
                .flatten()
                .filter_map(|name| {
                    captures
                        .name(name)
                        .map(|found| (name.to_owned(), json!(found.as_str())))
                })
                .collect::<Map<_, _>>()
        });
        output.insert(
            "match".to_owned(),
            captures.map(Value::Object).unwrap_or(Value::Null),
        );
    }
    Ok(Value::Object(output))
}

pub(super) fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
