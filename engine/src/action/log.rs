//! Step logs: append-only files under the data dir, capped in size.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The most bytes one step attempt's log keeps; the rest is dropped with a marker.
pub const LOG_CAP: u64 = 8 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct LogSink {
    path: PathBuf,
    written: Arc<AtomicU64>,
}

impl LogSink {
    /// A sink appending to `path` (created with its directory on first write).
    pub fn new(path: PathBuf) -> LogSink {
        let written = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
        LogSink {
            path,
            written: Arc::new(AtomicU64::new(written)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends bytes, up to the cap. Log write errors are reported by tracing, never fail a step.
    pub fn append(&self, bytes: &[u8]) {
        let before = self.written.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        if before >= LOG_CAP {
            return;
        }
        let room = (LOG_CAP - before) as usize;
        let (kept, truncated) = if bytes.len() > room {
            (&bytes[..room], true)
        } else {
            (bytes, false)
        };
        let result = (|| -> std::io::Result<()> {
            if let Some(parent) = self.path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            // Step logs often hold secrets: only the daemon's user may read them.
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            file.write_all(kept)?;
            if truncated {
                file.write_all(b"\n[runbook: log truncated at the size cap]\n")?;
            }
            Ok(())
        })();
        if let Err(error) = result {
            tracing::warn!(path = %self.path.display(), %error, "cannot write a step log");
        }
    }

    pub fn line(&self, text: &str) {
        self.append(format!("{text}\n").as_bytes());
    }
}
