//! The HTTP/JSON API the CLI (and `curl --unix-socket`) talks to; see `docs/api.md`.
//!
//! Request bodies are read as bytes and decoded here, so that every malformed request gets the
//! same error shape: `{"error": {"code", "message", "field"}}`, 4xx for the caller's mistakes and
//! 5xx only for ours. The caller's uid comes from the socket's peer credentials.

mod views;

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::catalog::{Catalog, Source};
use crate::machine::{Actor, Input};
use crate::runtime::{self, Engine, Error, Slot};
pub use views::{RunSummary, RunView, StepView, UndoView};

/// The largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub catalog: Catalog,
    /// The daemon's retention (`--retain`; `None`: keep every run).
    pub retain: Option<std::time::Duration>,
}

/// The caller, from the Unix socket's peer credentials.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        // SAFETY: getuid has no preconditions.
        let own = unsafe { libc::getuid() };
        Peer {
            uid: stream
                .io()
                .peer_cred()
                .map(|cred| cred.uid())
                .unwrap_or(own),
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
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
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API route".to_owned(),
                None,
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(error_shape))
        .with_state(state)
}

// ----- errors -----------------------------------------------------------------------------------

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: String,
        field: Option<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message,
            field,
        }
    }

    fn invalid(message: String, field: Option<&str>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            message,
            field.map(str::to_owned),
        )
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        match error {
            Error::NotFound(message) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message, None)
            }
            Error::Ambiguous(message) => {
                ApiError::new(StatusCode::CONFLICT, "ambiguous", message, None)
            }
            Error::Invalid { message, field } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid", message, field)
            }
            Error::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message, None)
            }
            Error::Unavailable(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message,
                None,
            ),
            Error::Internal(message) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message, None)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = Value::String(field);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

/// Axum refuses some requests before a handler runs, in plain text or without a body: a body
/// over [`MAX_BODY`] (413), a query string or path segment that does not decode (400), a method
/// the route does not take (405). Give those the error shape of every other error.
async fn error_shape(method: Method, uri: Uri, response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let (code, field) = match status {
        StatusCode::NOT_FOUND => ("not_found", None),
        StatusCode::CONFLICT => ("conflict", None),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", None),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid", Some("body".to_owned())),
        status if status.is_server_error() => ("internal", None),
        _ => ("invalid", None),
    };
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body: larger than the limit of {MAX_BODY} bytes")
        }
        StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {}", uri.path()),
        _ => {
            let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
                .await
                .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
                .unwrap_or_default();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => status
                    .canonical_reason()
                    .unwrap_or("bad request")
                    .to_lowercase(),
            }
        }
    };
    let mut shaped = ApiError::new(status, code, message, field).into_response();
    if let Some(allow) = allow {
        shaped.headers_mut().insert(header::ALLOW, allow);
    }
    shaped
}

type ApiResult = Result<Response, ApiError>;

fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::invalid(format!("request body: {error}"), Some("body")))
}

fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}

// ----- runbooks ---------------------------------------------------------------------------------

async fn list_runbooks(State(app): State<AppState>) -> ApiResult {
    let runbooks: Vec<Value> = app
        .catalog
        .entries()
        .into_values()
        .map(|entry| match &entry.definition {
            Ok(definition) => json!({"name": entry.name, "version": definition.version, "description": definition.description,
                                     "source": entry.source, "error": null}),
            Err(error) => json!({"name": entry.name, "version": null, "description": "", "source": entry.source, "error": error}),
        })
        .collect();
    ok(json!({ "runbooks": runbooks }))
}

async fn describe_runbook(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let entry = app.catalog.get(&name).ok_or_else(|| {
        ApiError::from(Error::NotFound(format!(
            "no runbook {name:?} (see `runbook list`)"
        )))
    })?;
    match entry.definition {
        Ok(definition) => ok(&*definition),
        Err(error) => Err(ApiError::invalid(error, Some("runbook"))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    runbook: Option<String>,
    source: Option<SourceBody>,
    #[serde(default)]
    params: Map<String, Value>,
    comment: Option<String>,
    /// `plan` only: run the read-only steps and preview the mutating ones.
    #[serde(default)]
    check: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceBody {
    file: String,
    text: String,
}

fn definition_of(
    app: &AppState,
    request: &StartRequest,
) -> Result<std::sync::Arc<crate::definition::Definition>, ApiError> {
    match (&request.runbook, &request.source) {
        (Some(name), None) => {
            let entry = app.catalog.get(name).ok_or_else(|| {
                ApiError::from(Error::NotFound(format!(
                    "no runbook {name:?} (see `runbook list`)"
                )))
            })?;
            entry
                .definition
                .map_err(|error| ApiError::invalid(error, Some("runbook")))
        }
        (None, Some(source)) => app
            .catalog
            .load_source(&Source {
                file: source.file.clone(),
                text: source.text.clone(),
            })
            .map_err(|error| ApiError::invalid(error.to_string(), Some("source"))),
        _ => Err(ApiError::invalid(
            "give exactly one of `runbook` (a name) or `source` (a file)".to_owned(),
            Some("runbook"),
        )),
    }
}

async fn plan(State(app): State<AppState>, bytes: Bytes) -> ApiResult {
    let request: StartRequest = body(&bytes)?;
    let definition = definition_of(&app, &request)?;
    let params = request.params;
    let actions = app.catalog.actions().clone();
    if request.check {
        return ok(runtime::check(
            definition,
            params,
            actions,
            runtime::CheckLimits::default(),
            app.engine.draining(),
        )
        .await?);
    }
    ok(runtime::off_workers(move || runtime::plan(&definition, &params, &actions)).await??)
}

// ----- runs -------------------------------------------------------------------------------------

async fn start_run(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> ApiResult {
    let request: StartRequest = body(&bytes)?;
    if request.check {
        return Err(ApiError::invalid(
            "`check` belongs to POST /v1/plan (a run has no check mode)".to_owned(),
            Some("check"),
        ));
    }
    let definition = definition_of(&app, &request)?;
    let state = app
        .engine
        .create_run(
            definition,
            &request.params,
            Actor::uid(peer.uid),
            request.comment,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(RunView::from_state(&state))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
    state: Option<String>,
    runbook: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The most runs one page may hold.
pub const MAX_PAGE: usize = 1000;
/// A page's size when the request names none.
pub const DEFAULT_PAGE: usize = 100;

impl ListQuery {
    /// Checks every field: a bad one is a 400 naming it, and nothing is read.
    fn parse(self) -> Result<crate::store::ListQuery, Error> {
        let invalid = |field: &str, message: String| Error::Invalid {
            message,
            field: Some(field.to_owned()),
        };
        let state = match self.state.as_deref() {
            None => None,
            Some(name) => Some(
                crate::store::listing::STATES
                    .into_iter()
                    .find(|state| state.name() == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = crate::store::listing::STATES
                            .iter()
                            .map(|state| state.name())
                            .collect();
                        invalid(
                            "state",
                            format!("unknown state {name:?} (one of: {})", known.join(", ")),
                        )
                    })?,
            ),
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if (1..=MAX_PAGE).contains(&limit) => limit,
                _ => {
                    return Err(invalid(
                        "limit",
                        format!("limit {text:?} is not a whole number from 1 to {MAX_PAGE}"),
                    ))
                }
            },
        };
        let since = match self.since.as_deref() {
            None => None,
            Some(text) => Some(
                chrono::DateTime::parse_from_rfc3339(text)
                    .map(|at| at.with_timezone(&chrono::Utc))
                    .map_err(|error| {
                        invalid(
                            "since",
                            format!("since {text:?} is not an RFC 3339 instant ({error})"),
                        )
                    })?,
            ),
        };
        let before = match self.cursor.as_deref() {
            None => None,
            Some(text) => Some(uuid::Uuid::parse_str(text).map_err(|_| {
                invalid(
                    "cursor",
                    format!("cursor {text:?} is not one this API returned (a run id)"),
                )
            })?),
        };
        if let Some(runbook) = &self.runbook {
            if runbook.is_empty() || runbook.len() > 256 || runbook.contains('\0') {
                return Err(invalid(
                    "runbook",
                    format!("runbook {runbook:?} is not a runbook name"),
                ));
            }
        }
        Ok(crate::store::ListQuery {
            state,
            runbook: self.runbook,
            all: self.all,
            since,
            before,
            limit,
        })
    }
}

async fn list_runs(State(app): State<AppState>, Query(query): Query<ListQuery>) -> ApiResult {
    let page = app.engine.list(&query.parse()?)?;
    let runs: Vec<RunSummary> = page
        .runs
        .iter()
        .map(|(id, line)| RunSummary::listed(*id, line))
        .collect();
    ok(json!({ "runs": runs, "next_cursor": page.next.map(|id| id.to_string()) }))
}

async fn show_run(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let run_id = app.engine.resolve(&id)?;
    let slot = app.engine.get(run_id).await?;
    ok(RunView::of(run_id, &slot))
}

async fn run_events(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let run_id = app.engine.resolve(&id)?;
    ok(json!({ "events": app.engine.events(run_id).await? }))
}

#[derive(Debug, Default, Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    undo: bool,
}

async fn step_log(
    State(app): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> ApiResult {
    let run_id = app.engine.resolve(&id)?;
    let Slot::Live(state) = app.engine.get(run_id).await? else {
        return Err(Error::Conflict(format!("run {run_id} is corrupt")).into());
    };
    let Some(step_state) = state.step(&step) else {
        return Err(Error::NotFound(format!("run {run_id} has no started step {step:?}")).into());
    };
    // The undo's own attempt and progress, not its step's.
    let (attempt, active) = if query.undo {
        let Some(undo) = &step_state.undo else {
            return Err(Error::NotFound(format!(
                "the undo of step {step:?} of run {run_id} has not started"
            ))
            .into());
        };
        (undo.attempts, undo.status.is_active())
    } else {
        (step_state.attempts, step_state.status.is_active())
    };
    let path = app.engine.log_path(run_id, &step, query.undo);
    let data = read_from(&path, query.offset)
        .map_err(|error| Error::Internal(format!("reading {}: {error}", path.display())))?;
    let next_offset = query.offset + data.len() as u64;
    let done = !active || state.status.is_terminal();
    ok(json!({
        "step": step, "undo": query.undo, "attempt": attempt, "offset": query.offset,
        "next_offset": next_offset, "data": String::from_utf8_lossy(&data), "done": done,
    }))
}

/// At most 1 MiB of the file from `offset`; nothing if it does not exist yet.
fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    // Nothing lies past the end; an offset far past it (a client's mistake) must not reach
    // `lseek`, which refuses offsets beyond the file system's limit (EINVAL).
    if offset >= file.metadata()?.len() {
        return Ok(Vec::new());
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    file.take(1024 * 1024).read_to_end(&mut data)?;
    // Do not split a UTF-8 character across two reads.
    while !data.is_empty() && std::str::from_utf8(&data).is_err() && data.len() > 3 {
        data.pop();
    }
    Ok(data)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorRequest {
    comment: Option<String>,
    step: Option<String>,
    /// `cancel` only: run the undos of the completed steps too.
    #[serde(default)]
    rollback: bool,
}

async fn run_verb(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((id, verb)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let request: OperatorRequest = body(&bytes)?;
    if request.rollback && verb != "cancel" {
        return Err(ApiError::invalid(
            format!("`rollback` is a field of cancel only, not of {verb}"),
            Some("rollback"),
        ));
    }
    let by = Actor::uid(peer.uid);
    let comment = request.comment;
    let input = match verb.as_str() {
        "approve" => Input::Approve {
            step: request.step,
            by,
            comment,
        },
        "pause" => Input::Pause { by, comment },
        "resume" => Input::Resume { by, comment },
        "cancel" => Input::Cancel {
            by,
            comment,
            rollback: request.rollback,
        },
        "rollback" => Input::Rollback { by, comment },
        other => {
            return Err(Error::NotFound(format!(
                "no run action {other:?} (approve, pause, resume, cancel, rollback)"
            ))
            .into())
        }
    };
    let run_id = app.engine.resolve(&id)?;
    let state = app.engine.handle(run_id, input).await?;
    ok(RunView::from_state(&state))
}

async fn step_verb(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((id, step, verb)): Path<(String, String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let request: OperatorRequest = body(&bytes)?;
    if request.rollback {
        return Err(ApiError::invalid(
            format!("`rollback` is a field of cancel only, not of {verb}"),
            Some("rollback"),
        ));
    }
    let by = Actor::uid(peer.uid);
    let input = match verb.as_str() {
        "retry" => Input::Retry {
            step,
            by,
            comment: request.comment,
        },
        "skip" => Input::Skip {
            step,
            by,
            comment: request.comment,
        },
        other => {
            return Err(Error::NotFound(format!("no step action {other:?} (retry, skip)")).into())
        }
    };
    let run_id = app.engine.resolve(&id)?;
    let state = app.engine.handle(run_id, input).await?;
    ok(RunView::from_state(&state))
}

// ----- schedules --------------------------------------------------------------------------------

async fn list_schedules(State(app): State<AppState>) -> ApiResult {
    ok(json!({ "schedules": app.engine.schedules().await }))
}

async fn add_schedule(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> ApiResult {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "request body: a schedule needs name, runbook and cron".to_owned(),
            Some("body"),
        ));
    }
    let spec: runtime::ScheduleSpec = serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::invalid(format!("request body: {error}"), Some("body")))?;
    let schedule = app.engine.add_schedule(spec, Actor::uid(peer.uid)).await?;
    Ok((StatusCode::CREATED, Json(schedule)).into_response())
}

async fn show_schedule(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult {
    ok(app.engine.schedule(&name).await?)
}

async fn remove_schedule(State(app): State<AppState>, Path(name): Path<String>) -> ApiResult {
    ok(app.engine.remove_schedule(&name).await?)
}

async fn schedule_verb(
    State(app): State<AppState>,
    Path((name, verb)): Path<(String, String)>,
) -> ApiResult {
    let schedule = match verb.as_str() {
        "pause" => app.engine.set_schedule_paused(&name, true).await?,
        "resume" => app.engine.set_schedule_paused(&name, false).await?,
        "trigger" => app.engine.trigger_schedule(&name).await?,
        other => {
            return Err(Error::NotFound(format!(
                "no schedule action {other:?} (pause, resume, trigger, backfill)"
            ))
            .into())
        }
    };
    ok(schedule)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillRequest {
    from: String,
    to: String,
    #[serde(default)]
    dry_run: bool,
}

async fn backfill_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let request: BackfillRequest = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::invalid(
            format!("request body: {error} (from and to are RFC 3339 instants)"),
            Some("body"),
        )
    })?;
    let instant = |field: &str, value: &str| {
        chrono::DateTime::parse_from_rfc3339(value)
            .map(|instant| instant.with_timezone(&chrono::Utc))
            .map_err(|error| {
                ApiError::invalid(
                    format!(
                        "{field}: {value:?} is not an RFC 3339 instant ({error}); write e.g. \
                         2026-01-01T00:00:00Z"
                    ),
                    Some(field),
                )
            })
    };
    let (from, to) = (instant("from", &request.from)?, instant("to", &request.to)?);
    let backfill = app
        .engine
        .backfill_schedule(&name, from, to, request.dry_run)
        .await?;
    ok(json!({
        "instants": backfill.instants, "firings": backfill.firings, "dry_run": request.dry_run,
        "truncated": backfill.rest.is_some(), "next_from": backfill.rest,
        "limit": crate::runtime::BACKFILL_LIMIT,
    }))
}

async fn verify_store(State(app): State<AppState>) -> ApiResult {
    let problems = app.engine.writer().store().verify().map_err(Error::from)?;
    ok(json!({ "ok": problems.is_empty(), "problems": problems }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn collect_store(State(app): State<AppState>, Query(query): Query<GcQuery>) -> ApiResult {
    let collected = app
        .engine
        .collect_expired(app.retain, query.dry_run)
        .await?;
    ok(json!({
        "dry_run": query.dry_run,
        "retain_seconds": app.retain.map(|retain| retain.as_secs()),
        "finished_before": collected.before,
        "runs": collected.runs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "count": collected.runs.len(),
        "file_bytes": collected.file_bytes,
        "archive_bytes": collected.archive_bytes,
    }))
}

// ----- metrics ----------------------------------------------------------------------------------

async fn metrics(State(app): State<AppState>) -> Response {
    // From the counters the commits keep: never a scan of the runs. A store that cannot be
    // read shows as no runs; the writer figures below still show.
    let counts = app.engine.writer().store().counts().unwrap_or_default();
    let by_state = counts.runs;
    let pending_timers = counts.timers;
    let stats = app.engine.writer().stats();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP runbook_runs Runs by state.\n# TYPE runbook_runs gauge"
    );
    for (state, count) in by_state {
        let _ = writeln!(text, "runbook_runs{{state=\"{state}\"}} {count}");
    }
    let _ = writeln!(
        text,
        "# HELP runbook_timers_pending Armed durable timers.\n# TYPE runbook_timers_pending gauge"
    );
    let _ = writeln!(text, "runbook_timers_pending {pending_timers}");
    let _ = writeln!(
        text,
        "# HELP runbook_runs_in_memory Runs held in memory (not parked, or in use).\n# TYPE runbook_runs_in_memory gauge"
    );
    let _ = writeln!(
        text,
        "runbook_runs_in_memory {}",
        app.engine.runs_in_memory()
    );
    let _ = writeln!(text, "# HELP runbook_store_commits_total Transitions committed.\n# TYPE runbook_store_commits_total counter");
    let _ = writeln!(text, "runbook_store_commits_total {}", stats.commits);
    let _ = writeln!(text, "# HELP runbook_store_syncs_total Durable syncs (group commits).\n# TYPE runbook_store_syncs_total counter");
    let _ = writeln!(text, "runbook_store_syncs_total {}", stats.syncs);
    let _ = writeln!(text, "# HELP runbook_store_sync_seconds_total Time spent in syncs.\n# TYPE runbook_store_sync_seconds_total counter");
    let _ = writeln!(
        text,
        "runbook_store_sync_seconds_total {:.6}",
        stats.sync_seconds_total
    );
    text.push_str(&app.engine.writer().sync_latency().render(
        "runbook_store_sync_seconds",
        "Time each group commit took to be durable (one log write and fdatasync).",
    ));
    text.push_str(&app.engine.timer_lateness().render(
        "runbook_timer_lateness_seconds",
        "How long after its deadline each durable timer fired.",
    ));
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
