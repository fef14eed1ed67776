//! `exec`: run a command, capture its output, succeed by exit code.
//!
//! Input: `command` (a shell string, run by `sh -c`, or an argv list), `env` (table), `cwd`,
//! `parse` (`text` default, `json`, `lines`), `regex` (named groups of the first match of stdout
//! land in `output.match`), `grace` (between SIGTERM and SIGKILL on cancel, default 10s).
//! Output: `exit_code`, `stdout` (the first 64 KiB), `stderr_tail`, and `json` / `lines` /
//! `match` when asked for.
//!
//! The command runs in its own process group; cancel (timeout, cancel, rollback) sends SIGTERM
//! to the whole group, then SIGKILL after the grace period, so no grandchild outlives it. A
//! command may leave background processes on purpose (a start script that launches a broker);
//! once the command itself exits, its output is read for a short while more and then left.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{Action, ActionContext, ActionFailure, ActionFuture};

/// How much of stdout the output keeps (the log keeps more).
const STDOUT_IN_OUTPUT: usize = 64 * 1024;
/// How much stdout is kept for parsing.
const STDOUT_FOR_PARSE: usize = 1024 * 1024;
const STDERR_TAIL: usize = 2048;

pub struct Exec;

impl Action for Exec {
    fn call(&self, input: Value, context: ActionContext) -> ActionFuture {
        Box::pin(run(input, context))
    }
}

/// The parsed input of an exec step.
pub(crate) struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub parse: String,
    pub regex: Option<regex::Regex>,
    pub grace: Duration,
}

pub(crate) fn spec(input: &Value) -> Result<ExecSpec, ActionFailure> {
    let argv = match input.get("command") {
        Some(Value::String(command)) => vec!["sh".to_owned(), "-c".to_owned(), command.clone()],
        Some(Value::Array(argv)) if !argv.is_empty() => argv
            .iter()
            .map(|arg| match arg {
                Value::String(text) => Ok(text.clone()),
                other => Ok(other.to_string()),
            })
            .collect::<Result<Vec<_>, ActionFailure>>()?,
        _ => return Err(ActionFailure::permanent("exec: `command` must be a string or a non-empty list")),
    };
    let env = input
        .get("env")
        .and_then(Value::as_object)
        .map(|env| env.iter().map(|(key, value)| (key.clone(), value.as_str().map_or_else(|| value.to_string(), str::to_owned))).collect())
        .unwrap_or_default();
    let grace = match input.get("grace").and_then(Value::as_str) {
        Some(text) => crate::duration::parse(text).map_err(|message| ActionFailure::permanent(format!("exec: grace: {message}")))?,
        None => Duration::from_secs(10),
    };
    let regex = match input.get("regex").and_then(Value::as_str) {
        Some(pattern) => Some(regex::Regex::new(pattern).map_err(|error| ActionFailure::permanent(format!("exec: regex: {error}")))?),
        None => None,
    };
    Ok(ExecSpec {
        argv,
        env,
        cwd: input.get("cwd").and_then(Value::as_str).map(str::to_owned),
        parse: input.get("parse").and_then(Value::as_str).unwrap_or("text").to_owned(),
        regex,
        grace,
    })
}

async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let spec = spec(&input)?;
    let mut command = Command::new(&spec.argv[0]);
    command.args(&spec.argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    for (key, value) in &spec.env {
        command.env(key, value);
    }
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .spawn()
        .map_err(|error| ActionFailure::permanent(format!("cannot start {:?}: {error}", spec.argv[0])))?;
    let pgid = child.id().map(|pid| pid as i32);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let log = context.log.clone();
    let stdout_task = tokio::spawn(pump(stdout, log.clone(), STDOUT_FOR_PARSE, false));
    let stderr_task = tokio::spawn(pump(stderr, log, STDERR_TAIL, true));

    let status = tokio::select! {
        status = child.wait() => status.map_err(|error| ActionFailure::retryable(format!("waiting for the command: {error}")))?,
        _ = context.cancel.cancelled() => {
            if let Some(pgid) = pgid {
                kill_group(pgid, spec.grace, &mut child).await;
            }
            let _ = child.wait().await;
            return Err(ActionFailure::permanent("canceled"));
        }
    };
    // Output of background processes the command left behind is not waited for.
    let stdout = collect(stdout_task).await;
    let stderr = collect(stderr_task).await;
    let stdout_text = String::from_utf8_lossy(&stdout).into_owned();
    let stderr_tail = String::from_utf8_lossy(&stderr).into_owned();

    if !status.success() {
        let cause = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "failed".to_owned(),
        };
        let tail = last_lines(&stderr_tail, 5);
        let message = if tail.is_empty() { format!("command {cause}") } else { format!("command {cause}: {tail}") };
        return Err(ActionFailure::retryable(message));
    }
    let mut output = Map::new();
    output.insert("exit_code".to_owned(), json!(status.code().unwrap_or(0)));
    output.insert("stdout".to_owned(), Value::String(truncate(&stdout_text, STDOUT_IN_OUTPUT)));
    output.insert("stderr_tail".to_owned(), Value::String(stderr_tail));
    match spec.parse.as_str() {
        "json" => {
            let parsed: Value = serde_json::from_str(stdout_text.trim())
                .map_err(|error| ActionFailure::permanent(format!("stdout is not JSON ({error}): {}", truncate(&stdout_text, 200))))?;
            output.insert("json".to_owned(), parsed);
        }
        "lines" => {
            let lines: Vec<Value> = stdout_text.lines().filter(|line| !line.trim().is_empty()).map(|line| json!(line)).collect();
            output.insert("lines".to_owned(), Value::Array(lines));
        }
        _ => {}
    }
    if let Some(regex) = &spec.regex {
        let captures = regex.captures(&stdout_text).map(|captures| {
            regex
                .capture_names()
                .flatten()
                .filter_map(|name| captures.name(name).map(|found| (name.to_owned(), json!(found.as_str()))))
                .collect::<Map<_, _>>()
        });
        output.insert("match".to_owned(), captures.map(Value::Object).unwrap_or(Value::Null));
    }
    Ok(Value::Object(output))
}

/// Copies a pipe into the log; keeps the first `keep` bytes (or the last, with `tail`).
async fn pump(pipe: Option<impl AsyncRead + Unpin>, log: super::LogSink, keep: usize, tail: bool) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                log.append(&buffer[..read]);
                if tail {
                    kept.extend_from_slice(&buffer[..read]);
                    if kept.len() > keep {
                        kept.drain(..kept.len() - keep);
                    }
                } else if kept.len() < keep {
                    let room = keep - kept.len();
                    kept.extend_from_slice(&buffer[..read.min(room)]);
                }
            }
        }
    }
    kept
}

/// The pipe's bytes, waiting at most a moment after the command exited.
async fn collect(task: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = task.abort_handle();
    match tokio::time::timeout(Duration::from_millis(300), task).await {
        Ok(Ok(bytes)) => bytes,
        _ => {
            abort.abort();
            Vec::new()
        }
    }
}

/// SIGTERM to the group, then SIGKILL after `grace` if any member is left.
pub(crate) async fn kill_group(pgid: i32, grace: Duration, leader: &mut tokio::process::Child) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        // Reap the leader, so that a zombie does not count as a member.
        let _ = leader.try_wait();
        // SAFETY: signal 0 only checks whether the group still has members.
        if unsafe { libc::kill(-pgid, 0) } != 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
