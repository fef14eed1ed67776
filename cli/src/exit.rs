//! Exit codes of the `runbook` binary, and how an error maps to one.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error (the daemon's `internal` or `unavailable`, an I/O failure, ...) |
//! | 2 | usage error: a bad command line (clap's default) |
//! | 3 | not found: unknown run, runbook or step (`not_found`) |
//! | 4 | invalid input (`invalid`): bad definition, param or body; bad `-p`; unreadable file |
//! | 5 | conflict (`conflict`, `ambiguous`): wrong run state, lock held, ambiguous id prefix |
//! | 6 | the daemon is not reachable (socket missing, connection refused or dropped) |
//! | 7 | the watched run ended in a state other than `succeeded` |
//! | 8 | `plan --check`: the check of a step failed (a run would stop there) |
//! | 9 | not allowed: no token, a bad one, or a role too small (`unauthenticated`, `forbidden`) |
//!
//! With `--json`, an error is printed as one line on stderr in the API's error shape (see
//! [`json_error`]); a bad command line too (code `usage`).
//!
//! # Contract
//!
//! [`code_of`] walks the whole error chain, so wrapping an error in `anyhow::Context` never
//! changes the exit code it maps to.

use std::fmt;

use crate::client::ApiError;

pub const SUCCESS: u8 = 0;
pub const OTHER: u8 = 1;
/// Not returned by [`code_of`]: a bad command line (clap's own exit code for it).
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const INVALID: u8 = 4;
pub const CONFLICT: u8 = 5;
pub const UNREACHABLE: u8 = 6;
pub const RUN_NOT_SUCCEEDED: u8 = 7;
pub const CHECK_FAILED: u8 = 8;
pub const DENIED: u8 = 9;

/// An error raised by the CLI itself (not by the daemon) that carries its own exit code.
#[derive(Debug)]
pub struct Error {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An invalid-input error (exit code 4): a bad `-p`, an unreadable file, a definition error.
pub fn invalid(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Error {
        code: INVALID,
        message: message.into(),
    })
}

/// A watched run that ended in a state other than `succeeded` (exit code 7).
pub fn run_not_succeeded(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Error {
        code: RUN_NOT_SUCCEEDED,
        message: message.into(),
    })
}

/// `plan --check` found a step whose check failed (exit code 8).
pub fn check_failed(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Error {
        code: CHECK_FAILED,
        message: message.into(),
    })
}

/// The exit code for `err`: the first error in its chain that knows its code wins.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(own) = cause.downcast_ref::<Error>() {
            return own.code;
        }
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            return api_code(api);
        }
    }
    OTHER
}

fn api_code(err: &ApiError) -> u8 {
    match err {
        ApiError::Unreachable { .. } => UNREACHABLE,
        ApiError::Api { code, .. } => match code.as_str() {
            "not_found" => NOT_FOUND,
            "invalid" => INVALID,
            "conflict" | "ambiguous" => CONFLICT,
            "unauthenticated" | "forbidden" | "too_many_failures" => DENIED,
            _ => OTHER,
        },
        ApiError::Protocol(_) => OTHER,
    }
}

/// `err` in the API's error shape, `{"error": {"code", "message", "field"}}`: the daemon's
/// own code, message and field for an error it answered; else a code for the exit code
/// (`not_found`, `invalid`, `conflict`, `unreachable`, `run_not_succeeded`, `internal`).
pub fn json_error(err: &anyhow::Error) -> serde_json::Value {
    for cause in err.chain() {
        if let Some(ApiError::Api {
            code,
            message,
            field,
        }) = cause.downcast_ref::<ApiError>()
        {
            // Context added around the daemon's answer goes in front, as in the text form.
            let message = match err.chain().count() {
                1 => message.clone(),
                _ => format!("{err:#}"),
            };
            return error_shape(code, &message, field.as_deref());
        }
    }
    let code = match code_of(err) {
        NOT_FOUND => "not_found",
        INVALID => "invalid",
        CONFLICT => "conflict",
        UNREACHABLE => "unreachable",
        RUN_NOT_SUCCEEDED => "run_not_succeeded",
        CHECK_FAILED => "check_failed",
        _ => "internal",
    };
    error_shape(code, &format!("{err:#}"), None)
}

/// A command line clap refused, in the API's error shape (code `usage`).
pub fn usage_error(err: &clap::Error) -> serde_json::Value {
    let text = err.render().to_string();
    let text = text.trim();
    let message = text.strip_prefix("error: ").unwrap_or(text);
    error_shape("usage", message, None)
}

fn error_shape(code: &str, message: &str, field: Option<&str>) -> serde_json::Value {
    let mut error = serde_json::json!({"code": code, "message": message});
    if let Some(field) = field {
        error["field"] = serde_json::Value::String(field.to_owned());
    }
    serde_json::json!({ "error": error })
}

/// Prints an error (see [`json_error`]) as one line on stderr, where errors go.
pub fn print_json_error(error: &serde_json::Value) {
    eprintln!("{error}");
}

/// True when `err` is a broken pipe on stdout (`runbook logs ... | head`): not worth reporting.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
