//! HTTP/1.1 client of the daemon's JSON API over its Unix socket (`<data-dir>/runbook.sock`).
//!
//! One connection per request: the CLI makes a handful of calls (or one every 200 ms while
//! following), so keeping connections alive would buy nothing and would make a daemon restart
//! harder to ride out. Responses stay `serde_json::Value`: the CLI renders what the daemon sends
//! and shares no types with the engine.
//!
//! # Contract
//!
//! Every failure to talk to the daemon at all (socket missing, connection refused, connection
//! dropped mid-request) is [`ApiError::Unreachable`]; an answer of the daemon that is an error is
//! [`ApiError::Api`] with the daemon's `code`, `message` and `field`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// How often [`Client::get_patient`] retries while the daemon is unreachable.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// A failed API call.
#[derive(Debug)]
pub enum ApiError {
    /// Nothing answered on the socket, or the connection broke before a full answer arrived.
    Unreachable { socket: PathBuf, cause: String },
    /// The daemon answered with an error body `{"error": {"code", "message", "field"}}`.
    Api {
        code: String,
        message: String,
        field: Option<String>,
    },
    /// The daemon answered something that is not the API's JSON.
    Protocol(String),
}

impl ApiError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ApiError::Unreachable { .. })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Unreachable { socket, cause } => {
                let data_dir = socket.parent().unwrap_or(Path::new("."));
                write!(
                    f,
                    "cannot reach the daemon at {}: {cause} \
                     (is `runbook daemon --data-dir {}` running?)",
                    socket.display(),
                    crate::render::shell_word(&data_dir.to_string_lossy())
                )
            }
            // The daemon's message already names the file:line, param or run id.
            ApiError::Api { message, field, .. } => {
                f.write_str(message)?;
                match field {
                    Some(field) if !message.contains(field.as_str()) => {
                        write!(f, " (field `{field}`)")
                    }
                    _ => Ok(()),
                }
            }
            ApiError::Protocol(detail) => write!(f, "unexpected answer from the daemon: {detail}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// A client of one daemon, addressed by its socket path.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    /// `GET path` (path includes any query string).
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ApiError> {
        self.request(Method::POST, path, Some(&body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, ApiError> {
        self.request(Method::DELETE, path, None).await
    }

    /// `GET path`, riding out a daemon restart: while the daemon is unreachable, retry every
    /// 500 ms for up to `patience`, then give up with the last error.
    pub async fn get_patient(&self, path: &str, patience: Duration) -> Result<Value, ApiError> {
        let started = Instant::now();
        loop {
            match self.get(path).await {
                Err(err) if err.is_unreachable() && started.elapsed() < patience => {
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                result => return result,
            }
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|err| self.unreachable(err))?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| self.unreachable(err))?;
        // The connection task ends by itself once the response is read and `sender` dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });

        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost");
        let body_bytes = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body_bytes))
            .map_err(|err| ApiError::Protocol(format!("bad request for {path}: {err}")))?;

        let response = sender
            .send_request(request)
            .await
            .map_err(|err| self.unreachable(err))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|err| self.unreachable(err))?
            .to_bytes();

        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(value) => value,
                Err(err) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let snippet: String = text.chars().take(200).collect();
                    return Err(ApiError::Protocol(format!(
                        "{status} with a body that is not JSON ({err}): {snippet}"
                    )));
                }
            }
        };
        if status.is_success() {
            return Ok(value);
        }
        Err(api_error(status.as_u16(), &value))
    }

    fn unreachable(&self, cause: impl fmt::Display) -> ApiError {
        ApiError::Unreachable {
            socket: self.socket.clone(),
            cause: cause.to_string(),
        }
    }
}

/// The error body of a non-2xx answer; a body without the expected shape still maps to a code
/// derived from the status, so exit codes stay right.
fn api_error(status: u16, body: &Value) -> ApiError {
    let error = &body["error"];
    let code = match error["code"].as_str() {
        Some(code) => code.to_string(),
        None => match status {
            400 => "invalid",
            404 => "not_found",
            409 => "conflict",
            503 => "unavailable",
            _ => "internal",
        }
        .to_string(),
    };
    let message = match error["message"].as_str() {
        Some(message) => message.to_string(),
        None => format!("the daemon answered {status}: {body}"),
    };
    ApiError::Api {
        code,
        message,
        field: error["field"].as_str().map(str::to_string),
    }
}

/// Percent-encodes one path segment (a run id, runbook name or step id like `loop[0].child`).
pub fn segment(raw: &str) -> String {
    let mut encoded = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_encodes_reserved_bytes() {
        assert_eq!(segment("loop[0].child"), "loop%5B0%5D.child");
        assert_eq!(segment("rocketmq.broker"), "rocketmq.broker");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn error_body_without_shape_keeps_status_code() {
        match api_error(404, &Value::Null) {
            ApiError::Api { code, .. } => assert_eq!(code, "not_found"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
