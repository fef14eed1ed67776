//! HTTP/1.1 client of the daemon's JSON API over its Unix socket (`<data-dir>/runbook.sock`), or
//! over TLS to its TCP listener (`--server https://host:8443`, with `RUNBOOK_TOKEN`).
//!
//! The daemon's certificate is checked against a CA (`--ca-cert`) or pinned by its SHA-256
//! fingerprint (`--server-fingerprint`, what `runbook version` shows on the daemon's host); a
//! client with neither refuses to connect rather than trust whatever answers.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::{TcpStream, UnixStream};

/// How often [`Client::get_patient`] retries while the daemon is unreachable.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// A failed API call.
#[derive(Debug)]
pub enum ApiError {
    /// Nothing answered on the socket (or at `remote`, the daemon's URL), or the connection
    /// broke before a full answer arrived.
    Unreachable {
        socket: PathBuf,
        remote: Option<String>,
        cause: String,
    },
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
            ApiError::Unreachable {
                remote: Some(url),
                cause,
                ..
            } => write!(f, "cannot reach the daemon at {url}: {cause}"),
            ApiError::Unreachable { socket, cause, .. } => {
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

/// A client of one daemon, addressed by its socket path, or by its TCP listener's URL.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
    pub remote: Option<Remote>,
}

/// A daemon's TCP listener, the way to trust its certificate, and the token to present.
#[derive(Clone)]
pub struct Remote {
    pub url: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    token: Option<String>,
    tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for Remote {
    // Never the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// The TCP listener's default port.
pub const DEFAULT_PORT: u16 = 8443;

impl Remote {
    /// `url` is `https://host[:port]`; the certificate is pinned by `fingerprint` (hex, colons
    /// allowed) or checked against the CA certificates in `ca_cert`.
    pub fn new(
        url: &str,
        token: Option<String>,
        fingerprint: Option<&str>,
        ca_cert: Option<&Path>,
    ) -> Result<Remote, String> {
        let (host, port) = parse_url(url)?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|error| format!("--server {url}: {error}"))?;
        let tls = match (fingerprint, ca_cert) {
            (Some(fingerprint), _) => runbook_engine::api::tls::pinned_client_config(fingerprint)
                .map_err(|error| format!("--server-fingerprint: {error}"))?,
            (None, Some(path)) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<_, _>>())
                    .map_err(|error| format!("--ca-cert {}: {error}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "--ca-cert {}: no certificate in it",
                        path.display()
                    ));
                }
                let mut tls = rustls::ClientConfig::builder_with_provider(
                    runbook_engine::api::tls::provider(),
                )
                .with_safe_default_protocol_versions()
                .map_err(|error| format!("TLS: {error}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                tls
            }
            (None, None) => {
                return Err(format!(
                    "--server {url}: say how to trust the daemon's certificate: \
                     RUNBOOK_SERVER_FINGERPRINT (or --server-fingerprint; `runbook version` on the \
                     daemon's host shows it) or RUNBOOK_CA_CERT (--ca-cert)"
                ))
            }
        };
        Ok(Remote {
            url: format!("https://{}", authority(&host, port)),
            host,
            port,
            server_name,
            token,
            tls: Arc::new(tls),
        })
    }
}

/// `https://host[:port][/]` → host and port (IPv6 literals in brackets).
fn parse_url(url: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| {
        format!("--server {url:?}: {why} (expected https://HOST[:PORT], e.g. https://ops1:8443)")
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("only https:// is supported"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) || rest.is_empty() {
        return Err(bad("a host and port only"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().map_err(|_| bad("the port is not a number"))?,
        None => DEFAULT_PORT,
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_owned(), port))
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Client {
    pub fn new(socket: PathBuf, remote: Option<Remote>) -> Client {
        Client { socket, remote }
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
        let mut sender = match &self.remote {
            None => {
                let stream = UnixStream::connect(&self.socket)
                    .await
                    .map_err(|err| self.unreachable(err))?;
                self.handshake(stream).await?
            }
            Some(remote) => {
                let stream = TcpStream::connect((remote.host.as_str(), remote.port))
                    .await
                    .map_err(|err| self.unreachable(err))?;
                let _ = stream.set_nodelay(true);
                let tls = tokio_rustls::TlsConnector::from(remote.tls.clone())
                    .connect(remote.server_name.clone(), stream)
                    .await
                    .map_err(|err| self.unreachable(format!("TLS: {err}")))?;
                self.handshake(tls).await?
            }
        };

        let mut builder = Request::builder().method(method).uri(path);
        builder = match &self.remote {
            None => builder.header(header::HOST, "localhost"),
            Some(remote) => {
                builder = builder.header(header::HOST, authority(&remote.host, remote.port));
                match &remote.token {
                    Some(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
                    None => builder,
                }
            }
        };
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

    async fn handshake<I>(&self, io: I) -> Result<http1::SendRequest<Full<Bytes>>, ApiError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|err| self.unreachable(err))?;
        // The connection task ends by itself once the response is read and `sender` dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn unreachable(&self, cause: impl fmt::Display) -> ApiError {
        ApiError::Unreachable {
            socket: self.socket.clone(),
            remote: self.remote.as_ref().map(|remote| remote.url.clone()),
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
            401 => "unauthenticated",
            403 => "forbidden",
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
    fn server_urls() {
        assert_eq!(parse_url("https://ops1:9443"), Ok(("ops1".into(), 9443)));
        assert_eq!(
            parse_url("https://ops1/"),
            Ok(("ops1".into(), DEFAULT_PORT))
        );
        assert_eq!(parse_url("https://[::1]:8443"), Ok(("::1".into(), 8443)));
        for bad in [
            "http://ops1",
            "https://",
            "https://a:b",
            "https://u@h",
            "https://h/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(Remote::new("https://h", None, None, None)
            .unwrap_err()
            .contains("RUNBOOK_SERVER_FINGERPRINT"));
        assert!(Remote::new("https://h", None, Some("abc"), None)
            .unwrap_err()
            .contains("64 hex digits"));
    }

    #[test]
    fn error_body_without_shape_keeps_status_code() {
        match api_error(404, &Value::Null) {
            ApiError::Api { code, .. } => assert_eq!(code, "not_found"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
