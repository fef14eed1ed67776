//! Who is calling and what they may do.
//!
//! On the Unix socket (0600, the daemon's user alone) the caller is its peer uid, with every
//! right. On the TCP listener every request but `/healthz` and `/readyz` (and `/metrics` when
//! the daemon is told so) carries `Authorization: Bearer <token>`; the token's user has a role,
//! and each route needs one ([`needed`]). No token or a bad one: 401; a role too small: 403.
//! Failed logins are logged (with the token's id, never its secret) and limited per address.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;

use super::*;
use crate::access::{Role, User};

/// The connection a request came on.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The Unix socket, with the peer's uid.
    Local { uid: u32 },
    /// The TCP listener, with the peer's address.
    Remote { addr: SocketAddr },
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Caller {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Caller::Local {
            uid: stream
                .io()
                .peer_cred()
                .map(|cred| cred.uid())
                .unwrap_or_else(|_| own_uid()),
        }
    }
}

impl Connected<axum::serve::IncomingStream<'_, super::tls::TlsListener>> for Caller {
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::tls::TlsListener>) -> Self {
        Caller::Remote {
            addr: *stream.remote_addr(),
        }
    }
}

pub(super) fn own_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// Who a request acts as, once authenticated.
#[derive(Debug, Clone)]
pub enum Identity {
    Local { uid: u32 },
    User(User),
}

impl Identity {
    /// The actor journaled for what this caller does.
    pub fn actor(&self) -> Actor {
        match self {
            Identity::Local { uid } => Actor::uid(*uid),
            Identity::User(user) => Actor::user(own_uid(), user),
        }
    }

    /// Refuses a user whose runbook scope leaves out `runbook`.
    pub fn check_runbook(&self, runbook: &str) -> Result<(), ApiError> {
        match self {
            Identity::User(user) if !user.may_act_on(runbook) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "user {} may act on runbooks {} only, not on {runbook}",
                    user.name,
                    user.runbooks.as_deref().unwrap_or("*")
                ),
                None,
            )),
            _ => Ok(()),
        }
    }

    fn view(&self) -> Value {
        match self {
            Identity::Local { uid } => json!({"uid": uid, "local": true, "role": "admin"}),
            Identity::User(user) => json!({
                "user": user.name,
                "role": user.role,
                "runbooks": user.runbooks,
            }),
        }
    }
}

/// What a route needs on the TCP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health probes (and `/metrics` when the daemon makes it public).
    Nobody,
    Role(Role),
}

/// The role a request needs: reading needs `viewer`; starting and steering runs `operator`;
/// approving `approver` (so does a skip or retry past a gate: the run's rules check that);
/// users, tokens, schedules and the store `admin`.
pub fn needed(method: &Method, path: &str, metrics_public: bool) -> Need {
    // Decoded as the router decodes its parameters: `/v1/runs/x/%61pprove` is an approval.
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decoded)
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match segments.as_slice() {
        // The console's files hold no data (it logs in with a token, then calls the API).
        ["healthz"] | ["readyz"] | [""] | ["ui"] | ["ui", ..] => return Need::Nobody,
        ["metrics"] if metrics_public => return Need::Nobody,
        ["v1", "users", ..] | ["v1", "tokens", ..] | ["v1", "store", "gc"] => {
            return Need::Role(Role::Admin)
        }
        _ => {}
    }
    if method == Method::GET || method == Method::HEAD {
        return Need::Role(Role::Viewer);
    }
    Need::Role(match segments.as_slice() {
        ["v1", "schedules", ..] => Role::Admin,
        ["v1", "runs", _, "approve"] => Role::Approver,
        _ => Role::Operator,
    })
}

fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticates and authorizes every request, and hands handlers its [`Identity`].
pub(super) async fn authorize(
    State(app): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    mut request: Request,
    next: Next,
) -> Response {
    let addr = match caller {
        Caller::Local { uid } => {
            request.extensions_mut().insert(Identity::Local { uid });
            return next.run(request).await;
        }
        Caller::Remote { addr } => addr,
    };
    let need = needed(request.method(), request.uri().path(), app.metrics_public);
    let Need::Role(role) = need else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    // A valid token is let in even while its address is held off: the limit slows guessing
    // (and the log it makes), and must not let anyone who shares an address with the team (a
    // NAT, a bastion host) lock the team out with a few bad tokens.
    let checked = presented.map(|presented| app.engine.authenticate(presented));
    if !matches!(checked, Some(Ok(_))) {
        if let Some(wait) = app.failed_logins.blocked(addr.ip()) {
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!(
                    "too many failed logins from {}; try again in {}s",
                    addr.ip(),
                    wait.as_secs().max(1)
                ),
                None,
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    }
    let Some(checked) = checked else {
        return unauthenticated("this listener needs `Authorization: Bearer <token>` (an admin makes one with `runbook token create <user>`)");
    };
    let user = match checked {
        Ok(user) => user,
        Err(refusal) => {
            app.failed_logins.record(addr.ip());
            tracing::warn!(peer = %addr, reason = %refusal, path = request.uri().path(), "failed login");
            return unauthenticated("the token is not valid (unknown, revoked or mistyped)");
        }
    };
    if user.role < role {
        tracing::info!(peer = %addr, user = %user.name, role = user.role.name(), method = %request.method(), path = request.uri().path(), "refused: role too small");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "user {} is {}: {} {} needs the {} role",
                user.name,
                user.role.name(),
                request.method(),
                request.uri().path(),
                role.name()
            ),
            None,
        )
        .into_response();
    }
    request.extensions_mut().insert(Identity::User(user));
    next.run(request).await
}

fn unauthenticated(message: &str) -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        message.to_owned(),
        None,
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// How many failed logins an address may make within [`FAILURE_WINDOW`].
const MAX_FAILURES: usize = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// The most addresses remembered (the oldest are forgotten first).
const MAX_ADDRESSES: usize = 10_000;

/// Failed logins per address, in a sliding window.
#[derive(Debug, Default)]
pub struct FailedLogins {
    by_address: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailedLogins {
    /// How long `ip` must still wait, if it made too many failed logins lately.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self
            .by_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let failures = map.get_mut(&ip)?;
        while failures
            .front()
            .is_some_and(|at| now.duration_since(*at) >= FAILURE_WINDOW)
        {
            failures.pop_front();
        }
        if failures.is_empty() {
            map.remove(&ip);
            return None;
        }
        (failures.len() >= MAX_FAILURES)
            .then(|| FAILURE_WINDOW.saturating_sub(now.duration_since(failures[0])))
    }

    pub fn record(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self
            .by_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, failures| {
                failures
                    .back()
                    .is_some_and(|at| now.duration_since(*at) < FAILURE_WINDOW)
            });
            if map.len() >= MAX_ADDRESSES {
                map.clear();
            }
        }
        let failures = map.entry(ip).or_default();
        failures.push_back(now);
        if failures.len() > MAX_FAILURES {
            failures.pop_front();
        }
    }
}

// ----- users and tokens -------------------------------------------------------------------------

pub(super) async fn whoami(Extension(identity): Extension<Identity>) -> ApiResult {
    ok(identity.view())
}

pub(super) async fn list_users(State(app): State<AppState>) -> ApiResult {
    ok(json!({ "users": app.engine.users() }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserRequest {
    name: String,
    role: String,
    runbooks: Option<String>,
    /// Change the user if it exists.
    #[serde(default)]
    replace: bool,
}

pub(super) async fn add_user(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
    bytes: Bytes,
) -> ApiResult {
    let request: UserRequest = body(&bytes)?;
    let user = app
        .engine
        .add_user(
            &request.name,
            &request.role,
            request.runbooks,
            request.replace,
            &identity.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

pub(super) async fn remove_user(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult {
    ok(app.engine.remove_user(&name, &identity.actor()).await?)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRequest {
    label: Option<String>,
}

pub(super) async fn create_token(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let request: TokenRequest = body(&bytes)?;
    let (view, secret) = app
        .engine
        .create_token(&name, request.label, &identity.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": view, "secret": secret})),
    )
        .into_response())
}

pub(super) async fn list_tokens(State(app): State<AppState>) -> ApiResult {
    ok(json!({ "tokens": app.engine.tokens() }))
}

pub(super) async fn revoke_token(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult {
    ok(app.engine.revoke_token(&id, &identity.actor()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_its_role() {
        let need = |method: Method, path: &str| needed(&method, path, false);
        let role = Need::Role;
        assert_eq!(need(Method::GET, "/healthz"), Need::Nobody);
        assert_eq!(need(Method::GET, "/readyz"), Need::Nobody);
        assert_eq!(need(Method::GET, "/ui/app.js"), Need::Nobody);
        assert_eq!(need(Method::GET, "/"), Need::Nobody);
        assert_eq!(need(Method::GET, "/metrics"), role(Role::Viewer));
        assert_eq!(needed(&Method::GET, "/metrics", true), Need::Nobody);
        assert_eq!(need(Method::GET, "/v1/runs/abc"), role(Role::Viewer));
        assert_eq!(need(Method::GET, "/v1/schedules"), role(Role::Viewer));
        assert_eq!(need(Method::POST, "/v1/runs"), role(Role::Operator));
        assert_eq!(need(Method::POST, "/v1/plan"), role(Role::Operator));
        for verb in ["pause", "resume", "cancel", "rollback"] {
            assert_eq!(
                need(Method::POST, &format!("/v1/runs/x/{verb}")),
                role(Role::Operator)
            );
        }
        assert_eq!(
            need(Method::POST, "/v1/runs/x/approve"),
            role(Role::Approver)
        );
        assert_eq!(
            need(Method::POST, "/v1/runs/x/steps/approve/skip"),
            role(Role::Operator)
        );
        assert_eq!(need(Method::POST, "/v1/schedules"), role(Role::Admin));
        assert_eq!(need(Method::DELETE, "/v1/schedules/n"), role(Role::Admin));
        assert_eq!(need(Method::GET, "/v1/users"), role(Role::Admin));
        assert_eq!(need(Method::GET, "/v1/tokens"), role(Role::Admin));
        assert_eq!(need(Method::POST, "/v1/store/gc"), role(Role::Admin));
        assert_eq!(need(Method::POST, "/v1/nonsense"), role(Role::Operator));
    }

    #[test]
    fn failed_logins_are_limited_per_address() {
        let limits = FailedLogins::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            limits.record(a);
        }
        assert_eq!(limits.blocked(a), None);
        limits.record(a);
        assert!(limits.blocked(a).is_some_and(|wait| wait <= FAILURE_WINDOW));
        assert_eq!(limits.blocked(b), None);
    }
}
