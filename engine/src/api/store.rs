//! The store (`verify`, `gc`) and `/metrics`.

use super::*;

pub(super) async fn verify_store(State(app): State<AppState>) -> ApiResult {
    // Seconds of reads on a big store: off the request threads.
    let store = app.engine.writer().store();
    let problems = tokio::task::spawn_blocking(move || store.verify())
        .await
        .map_err(|error| Error::Internal(format!("store verify failed: {error}")))?
        .map_err(Error::from)?;
    ok(json!({ "ok": problems.is_empty(), "problems": problems }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn collect_store(
    State(app): State<AppState>,
    Query(query): Query<GcQuery>,
) -> ApiResult {
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

pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    // From the counters the commits keep: never a scan of the runs. A store that cannot be
    // read shows as no runs; the writer figures below still show.
    let counts = app.engine.writer().store().counts().unwrap_or_default();
    let by_state = counts.runs;
    let pending_timers = counts.timers;
    let stats = app.engine.writer().stats();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP runbook_build_info The daemon's version and journal format.\n# TYPE runbook_build_info gauge\nrunbook_build_info{{version=\"{}\",journal_format=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::store::envelope::FORMAT
    );
    let _ = writeln!(
        text,
        "# HELP runbook_runs Runs by state.\n# TYPE runbook_runs gauge"
    );
    // Every state, zeros included: a query or an alert on a state no run is in yet still finds
    // its series.
    for state in crate::store::listing::STATES {
        let count = by_state.get(state.name()).copied().unwrap_or(0);
        let _ = writeln!(text, "runbook_runs{{state=\"{}\"}} {count}", state.name());
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
    text.push_str(&app.engine.step_duration().render(
        "runbook_step_duration_seconds",
        "How long each step took, from its first start to its end (success or failure).",
    ));
    let _ = writeln!(text, "# HELP runbook_step_failures_total Failed step attempts, by runbook, since the daemon started.\n# TYPE runbook_step_failures_total counter");
    let mut failures = app.engine.step_failures();
    for name in app.catalog.entries().into_keys() {
        failures.entry(name).or_default();
    }
    for (runbook, count) in &failures {
        let _ = writeln!(
            text,
            "runbook_step_failures_total{{runbook=\"{}\"}} {count}",
            label(runbook)
        );
    }
    let store = app.engine.writer().store();
    let unfinished = tokio::task::spawn_blocking(move || {
        crate::store::unfinished(store.as_ref(), MAX_SCRAPED_RUNS).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| Err(format!("{error}")));
    match unfinished {
        Ok(unfinished) => render_unfinished(&mut text, &app, &unfinished),
        Err(error) => tracing::warn!(%error, "metrics: the unfinished runs could not be read"),
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// The most unfinished runs one scrape reads (their listing lines, from the index).
const MAX_SCRAPED_RUNS: usize = 100_000;

fn render_unfinished(
    text: &mut String,
    app: &AppState,
    lines: &[(uuid::Uuid, crate::store::Listing)],
) {
    let mut by = std::collections::BTreeMap::<(String, String), u64>::new();
    // Every runbook of the catalogue has its series in every unfinished state, zeros included.
    for runbook in app.catalog.entries().into_keys() {
        for state in crate::store::listing::STATES {
            if !state.is_terminal() {
                by.insert((state.name().to_owned(), runbook.clone()), 0);
            }
        }
    }
    let now = app.engine.clock().now();
    let (mut approvals, mut oldest) = (0u64, 0f64);
    for (_, line) in lines {
        *by.entry((line.state.clone(), line.runbook.clone()))
            .or_default() += 1;
        if let Some(wait) = line.wait.as_ref().filter(|wait| wait.kind == "approval") {
            approvals += 1;
            if let Some(since) = wait.since {
                let age = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
                oldest = oldest.max(age);
            }
        }
    }
    let _ = writeln!(text, "# HELP runbook_unfinished_runs Unfinished runs by state and runbook.\n# TYPE runbook_unfinished_runs gauge");
    for ((state, runbook), count) in &by {
        let _ = writeln!(
            text,
            "runbook_unfinished_runs{{state=\"{state}\",runbook=\"{}\"}} {count}",
            label(runbook)
        );
    }
    let _ = writeln!(text, "# HELP runbook_approvals_pending Approval gates waiting for someone.\n# TYPE runbook_approvals_pending gauge\nrunbook_approvals_pending {approvals}");
    let _ = writeln!(text, "# HELP runbook_approval_oldest_seconds How long the oldest pending approval has waited (0: none).\n# TYPE runbook_approval_oldest_seconds gauge\nrunbook_approval_oldest_seconds {oldest:.3}");
}

/// A label value as the exposition format wants it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// ----- health -----------------------------------------------------------------------------------

/// `/healthz`: the daemon answers (its API task runs).
pub(super) async fn healthz() -> Response {
    ([("content-type", "text/plain")], "ok\n").into_response()
}

/// `/readyz`: the daemon can take work: its store (as the writer holds it now, reopened after
/// a failure) answers a read. 503 with the API's error shape and the reason otherwise.
pub(super) async fn readyz(State(app): State<AppState>) -> Response {
    let store = app.engine.writer().store();
    match tokio::task::spawn_blocking(move || store.counts()).await {
        Ok(Ok(_)) => ([("content-type", "text/plain")], "ready\n").into_response(),
        Ok(Err(error)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the store cannot be read: {error}"),
            None,
        )
        .into_response(),
        Err(error) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the store read did not finish: {error}"),
            None,
        )
        .into_response(),
    }
}

/// `/v1/version`: the daemon's version and the journal format it writes.
pub(super) async fn version(State(app): State<AppState>) -> ApiResult {
    ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "journal_format": crate::store::envelope::FORMAT,
        "listener": app.listener,
        "store": match &app.lease {
            None => json!({"kind": "embedded"}),
            Some(lease) => json!({
                "kind": "postgres",
                "active": lease.holder,
                "epoch": lease.epoch(),
                "lease_ttl_ms": lease.ttl.as_millis() as u64,
                "fenced": lease.fenced(),
            }),
        },
    }))
}
