//! Runbooks (list, describe, plan) and runs (start, list, show, logs, operator verbs).

use super::*;

pub(super) async fn list_runbooks(State(app): State<AppState>) -> ApiResult {
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

pub(super) async fn describe_runbook(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
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
pub(super) struct StartRequest {
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
pub(super) struct SourceBody {
    file: String,
    text: String,
}

pub(super) fn definition_of(
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

pub(super) async fn plan(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
    bytes: Bytes,
) -> ApiResult {
    let request: StartRequest = body(&bytes)?;
    let definition = definition_of(&app, &request)?;
    identity.check_runbook(&definition.name)?;
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

pub(super) async fn start_run(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
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
    identity.check_runbook(&definition.name)?;
    let state = app
        .engine
        .create_run(
            definition,
            &request.params,
            identity.actor(),
            request.comment,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(RunView::from_state(&state))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
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

pub(super) async fn list_runs(
    State(app): State<AppState>,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    let page = app.engine.list(&query.parse()?)?;
    let runs: Vec<RunSummary> = page
        .runs
        .iter()
        .map(|(id, line)| RunSummary::listed(*id, line))
        .collect();
    ok(json!({ "runs": runs, "next_cursor": page.next.map(|id| id.to_string()) }))
}

pub(super) async fn show_run(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let run_id = app.engine.resolve(&id)?;
    let resident = app.engine.get(run_id).await?;
    let mut view = RunView::of(run_id, &resident);
    let engine = app.engine.clone();
    view.notifications = runtime::off_workers(move || engine.notifications_of(run_id))
        .await?
        .iter()
        .map(NotificationView::from)
        .collect();
    ok(view)
}

pub(super) async fn run_events(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let run_id = app.engine.resolve(&id)?;
    ok(json!({ "events": app.engine.events(run_id).await? }))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    undo: bool,
}

pub(super) async fn step_log(
    State(app): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> ApiResult {
    let run_id = app.engine.resolve(&id)?;
    let Resident::Live(state) = app.engine.get(run_id).await? else {
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
pub(super) fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
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
pub(super) struct OperatorRequest {
    comment: Option<String>,
    step: Option<String>,
    /// `cancel` only: run the undos of the completed steps too.
    #[serde(default)]
    rollback: bool,
}

pub(super) async fn run_verb(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
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
    let by = identity.actor();
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
    check_scope(&app, &identity, run_id).await?;
    let state = app.engine.handle(run_id, input).await?;
    ok(RunView::from_state(&state))
}

/// Refuses a user whose runbook scope leaves out the run's runbook.
async fn check_scope(
    app: &AppState,
    identity: &Identity,
    run_id: uuid::Uuid,
) -> Result<(), ApiError> {
    if let Identity::User(_) = identity {
        if let Resident::Live(state) = app.engine.get(run_id).await? {
            identity.check_runbook(&state.runbook)?;
        }
    }
    Ok(())
}

pub(super) async fn step_verb(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
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
    let by = identity.actor();
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
    check_scope(&app, &identity, run_id).await?;
    let state = app.engine.handle(run_id, input).await?;
    ok(RunView::from_state(&state))
}
