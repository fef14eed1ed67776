//! Retention: finished runs older than the daemon's `--retain` are deleted whole — snapshot,
//! events, listing and index entries in the store, then the run's directory (step logs, call
//! dirs) — in small batches through the writer, so that commits never wait long behind it.
//! A run that is not finished is never collected (the store checks it again in the batch).

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Engine, Error};

/// How many runs one batch deletes (one writer request, a dozen operations per archived run,
/// joining the commits' group sync): a commit synced with it waits for at most this many
/// runs' deletes.
const BATCH: usize = 2;
/// After each batch the collector waits this many times as long as the batch took (and at
/// least [`PAUSE`]): it takes at most a quarter of the writer's time, whatever the load, and
/// commits rarely find a batch ahead of them.
const YIELD: u32 = 3;
const PAUSE: Duration = Duration::from_millis(1);
/// Every this many batches, archive segments no run is in any more are deleted (and at the
/// end): the disk space comes back as the collection goes.
const TIDY_EVERY: usize = 256;
/// How often the background collector looks for expired runs.
pub const EVERY: Duration = Duration::from_secs(600);

/// What one collection did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Collected {
    /// The runs deleted (or, for a dry run, that would be).
    pub runs: Vec<Uuid>,
    /// Bytes of run directories (step logs, call dirs) removed.
    pub file_bytes: u64,
    /// Bytes of archive segments deleted (no run left in them).
    pub archive_bytes: u64,
    /// Runs finished before this instant were collected.
    pub before: Option<DateTime<Utc>>,
}

impl Engine {
    /// Deletes every finished run that finished more than `retain` ago (`None`: keep all),
    /// batch by batch; with `dry_run`, only lists them.
    pub async fn collect_expired(
        &self,
        retain: Option<Duration>,
        dry_run: bool,
    ) -> Result<Collected, Error> {
        let Some(retain) = retain else {
            return Ok(Collected::default());
        };
        let now = self.inner.clock.now();
        let before = chrono::Duration::from_std(retain)
            .ok()
            .and_then(|retain| now.checked_sub_signed(retain))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let before_ms = u64::try_from(before.timestamp_millis()).unwrap_or(0);
        let mut collected = Collected {
            before: Some(before),
            ..Collected::default()
        };
        if dry_run {
            // (Off the async workers: a scan of the index and a walk of every run's directory.)
            let store = self.inner.writer.store();
            let runs_dir = self.inner.data_dir.join("runs");
            let (runs, file_bytes) = tokio::task::spawn_blocking(move || {
                let runs: Vec<Uuid> = store
                    .expired_runs(before_ms, None, usize::MAX)?
                    .into_iter()
                    .map(|expired| expired.run_id)
                    .collect();
                let bytes = runs
                    .iter()
                    .map(|run_id| dir_size(&runs_dir.join(run_id.to_string())))
                    .sum();
                Ok::<_, crate::store::Error>((runs, bytes))
            })
            .await
            .map_err(|error| {
                Error::Internal(format!("the dry run of a collection failed: {error}"))
            })??;
            collected.runs = runs;
            collected.file_bytes = file_bytes;
            return Ok(collected);
        }
        let _one_at_a_time = self.inner.collecting.lock().await;
        // Each batch scans on from the last one's end, never over the keys just deleted.
        let mut after = None;
        for batches in 1.. {
            // Off the async workers and off the writer: the next batch found, and what its
            // collection reads and deletes read in first, so that the commits sharing the
            // writer's turn with it wait for its deletes, not for the disk.
            let store = self.inner.writer.store();
            let from = after;
            let batch = tokio::task::spawn_blocking(move || {
                let batch = store.expired_runs(before_ms, from.as_ref(), BATCH)?;
                let ids: Vec<Uuid> = batch.iter().map(|expired| expired.run_id).collect();
                store.warm_for_collect(&ids);
                Ok::<_, crate::store::Error>(batch)
            })
            .await
            .map_err(|error| Error::Internal(format!("a collection failed: {error}")))??;
            let Some(last) = batch.last() else {
                break;
            };
            after = Some(*last);
            let batch: Vec<Uuid> = batch.iter().map(|expired| expired.run_id).collect();
            let started = std::time::Instant::now();
            let deleted = self.inner.writer.collect(batch).await?;
            let took = started.elapsed();
            // Off the async workers: a run's directory may hold many files.
            let dirs: Vec<_> = deleted
                .iter()
                .map(|run_id| (*run_id, self.run_dir(*run_id)))
                .collect();
            collected.file_bytes += tokio::task::spawn_blocking(move || remove_dirs(&dirs))
                .await
                .unwrap_or(0);
            collected.runs.extend(&deleted);
            // (A run of the batch that was not finished after all — a rollback reopened it —
            // left the index of finished runs in that same commit: the next batch moves on.)
            if batches % TIDY_EVERY == 0 {
                collected.archive_bytes += self.tidy_archive(false).await?;
            }
            tokio::time::sleep(PAUSE.max(took * YIELD)).await;
        }
        collected.archive_bytes += self.tidy_archive(false).await?;
        if !collected.runs.is_empty() {
            tracing::info!(
                runs = collected.runs.len(),
                file_bytes = collected.file_bytes,
                archive_bytes = collected.archive_bytes,
                "collected finished runs past retention"
            );
        }
        Ok(collected)
    }

    fn run_dir(&self, run_id: Uuid) -> std::path::PathBuf {
        self.inner.data_dir.join("runs").join(run_id.to_string())
    }
}

/// The collector: once shortly after start, then every [`EVERY`], until `stop`.
pub async fn run_collector(
    engine: Engine,
    retain: Option<Duration>,
    stop: tokio_util::sync::CancellationToken,
) {
    if retain.is_none() {
        return;
    }
    let mut wait = Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if let Err(error) = engine.collect_expired(retain, false).await {
            tracing::warn!(%error, "retention: collection failed; trying again later");
        }
        wait = EVERY;
    }
}

/// Removes collected runs' directories; returns the bytes they held.
fn remove_dirs(dirs: &[(Uuid, std::path::PathBuf)]) -> u64 {
    let mut bytes = 0;
    for (run_id, dir) in dirs {
        bytes += dir_size(dir);
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(run = %run_id, %error, "cannot remove a collected run's directory")
            }
        }
    }
    bytes
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |meta| meta.len()),
            Err(_) => 0,
        })
        .sum()
}
