//! The HTTP/JSON API the CLI (and `curl --unix-socket`) talks to; see `docs/api.md`.
//!
//! Request bodies are read as bytes and decoded here, so that every malformed request gets the
//! same error shape: `{"error": {"code", "message", "field"}}`, 4xx for the caller's mistakes and
//! 5xx only for ours. The caller is the socket's peer uid, or the user of a bearer token on the
//! TCP listener (`auth.rs`).

mod auth;
mod console;
mod errors;
mod runs;
mod schedules;
mod store;
pub mod tls;
mod views;

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::catalog::{Catalog, Source};
use crate::machine::{Actor, Input};
use crate::runtime::{self, Engine, Error, Resident};
pub use auth::{Caller, FailedLogins};
pub use views::{
    ActorView, ApprovalView, AttentionView, AuditView, NotificationView, RunSummary, RunView,
    StepView, UndoView,
};

use auth::*;
use errors::*;
use runs::*;
use schedules::*;
use store::*;

/// The largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub catalog: Catalog,
    /// The daemon's retention (`--retain`; `None`: keep every run).
    pub retain: Option<std::time::Duration>,
    /// The TCP listener, if there is one.
    pub listener: Option<ListenerInfo>,
    /// Whether `/metrics` on the TCP listener answers without a token.
    pub metrics_public: bool,
    pub failed_logins: std::sync::Arc<FailedLogins>,
    /// The PostgreSQL store's lease this daemon holds (`None`: the embedded store).
    pub lease: Option<std::sync::Arc<crate::store::postgres::Lease>>,
}

/// What `/v1/version` tells of the TCP listener.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerInfo {
    pub addr: std::net::SocketAddr,
    /// SHA-256 of its certificate, lowercase hex (what a client pins).
    pub fingerprint: String,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(console::to_console))
        .route("/ui", get(console::to_console))
        .route("/ui/", get(console::index))
        .route("/ui/app.js", get(console::script))
        .route("/ui/app.css", get(console::style))
        .route("/v1/whoami", get(whoami))
        .route("/v1/users", get(list_users).post(add_user))
        .route("/v1/users/{name}", axum::routing::delete(remove_user))
        .route("/v1/users/{name}/tokens", post(create_token))
        .route("/v1/tokens", get(list_tokens))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/runbooks", get(list_runbooks))
        .route("/v1/runbooks/{name}", get(describe_runbook))
        .route("/v1/plan", post(plan))
        .route("/v1/runs", post(start_run).get(list_runs))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/runs/{id}/steps/{step}/log", get(step_log))
        .route("/v1/runs/{id}/steps/{step}/{verb}", post(step_verb))
        .route("/v1/runs/{id}/{verb}", post(run_verb))
        .route("/v1/schedules", get(list_schedules).post(add_schedule))
        .route(
            "/v1/schedules/{name}",
            get(show_schedule).delete(remove_schedule),
        )
        .route("/v1/schedules/{name}/backfill", post(backfill_schedule))
        .route("/v1/schedules/{name}/{verb}", post(schedule_verb))
        .route("/v1/store/verify", get(verify_store))
        .route("/v1/store/gc", post(collect_store))
        .route("/metrics", get(metrics))
        .route("/healthz", get(store::healthz))
        .route("/readyz", get(store::readyz))
        .route("/v1/version", get(store::version))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API route".to_owned(),
                None,
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::map_response(error_shape))
        .with_state(state)
}
