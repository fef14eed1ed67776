//! Schedules: add, show, remove, pause and resume, backfill.

use super::*;

pub(super) async fn list_schedules(State(app): State<AppState>) -> ApiResult {
    ok(json!({ "schedules": app.engine.schedules().await }))
}

pub(super) async fn add_schedule(
    State(app): State<AppState>,
    Extension(identity): Extension<Identity>,
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
    let schedule = app.engine.add_schedule(spec, identity.actor()).await?;
    Ok((StatusCode::CREATED, Json(schedule)).into_response())
}

pub(super) async fn show_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    ok(app.engine.schedule(&name).await?)
}

pub(super) async fn remove_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    ok(app.engine.remove_schedule(&name).await?)
}

pub(super) async fn schedule_verb(
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
pub(super) struct BackfillRequest {
    from: String,
    to: String,
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn backfill_schedule(
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
