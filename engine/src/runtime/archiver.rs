//! The archiver: moves finished runs out of the store's tables into its archive (see
//! `store/archive.rs`) a small batch at a time, so that the tables — and the daemon's memory —
//! hold what is live, not the history. Each batch is written and synced to the archive off the
//! async workers, then moved by one request through the writer, which joins the commits'
//! group sync.

use std::time::Duration;

use uuid::Uuid;

use super::{Engine, Error};

/// Runs moved per batch: one archive append and sync (off the writer), then one writer request
/// of a dozen operations per run, which joins a group commit: small, so that the commits synced
/// with it hardly wait for it.
const BATCH: usize = 8;
/// How often the archiver looks for finished runs.
pub const EVERY: Duration = Duration::from_secs(2);

impl Engine {
    /// Moves every finished run still in the tables to the archive; returns how many moved.
    pub async fn archive_finished(&self) -> Result<usize, Error> {
        let mut after: Option<Uuid> = None;
        let mut moved = 0;
        loop {
            let store = self.inner.writer.store();
            let (runs, cursor) =
                tokio::task::spawn_blocking(move || store.archive_prepare(after, BATCH))
                    .await
                    .map_err(|error| Error::Internal(format!("the archiver failed: {error}")))??;
            let Some(cursor) = cursor else {
                break;
            };
            after = Some(cursor);
            if !runs.is_empty() {
                moved += self.inner.writer.archive(runs).await?.len();
            }
        }
        self.tidy_archive(true).await?;
        if moved > 0 {
            tracing::info!(runs = moved, "moved finished runs to the archive");
        }
        Ok(moved)
    }

    /// Deletes the archive's segments no run is in any more; returns the bytes given back.
    /// `settled`: see [`crate::store::Store::archive_tidy`].
    pub(super) async fn tidy_archive(&self, settled: bool) -> Result<u64, Error> {
        let store = self.inner.writer.store();
        let freed = tokio::task::spawn_blocking(move || store.archive_tidy(settled))
            .await
            .map_err(|error| Error::Internal(format!("the archiver failed: {error}")))??;
        Ok(freed)
    }
}

/// The archiver: every [`EVERY`] until `stop`.
pub async fn run_archiver(engine: Engine, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if let Err(error) = engine.archive_finished().await {
            tracing::warn!(%error, "archiver: moving finished runs failed; trying again later");
        }
    }
}
