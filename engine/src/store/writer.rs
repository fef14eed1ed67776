//! The store's single writer: applies commits in arrival order and makes each batch durable with
//! one sync (group commit), then acknowledges every commit of the batch.
//!
//! # Contract
//!
//! [`Writer::commit`] returns `Ok` only after the commit is applied *and* synced. A sync failure
//! fails every commit of its batch: the caller must not run their effects.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Commit, Error, ScheduleCommit, Store};

/// The most commits that share one sync.
const MAX_BATCH: usize = 512;

enum Write {
    Run(Commit),
    Schedule(ScheduleCommit),
}

struct Request {
    write: Write,
    reply: oneshot::Sender<Result<(), Error>>,
}

/// Figures for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    pub commits: u64,
    pub syncs: u64,
    pub sync_seconds_total: f64,
}

#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<Request>,
    store: Arc<dyn Store>,
    stats: Arc<std::sync::Mutex<WriterStats>>,
}

impl Writer {
    /// Starts the writer thread; it ends when every `Writer` clone is dropped.
    pub fn start(store: Arc<dyn Store>) -> Writer {
        let (sender, receiver) = mpsc::channel::<Request>();
        let stats = Arc::new(std::sync::Mutex::new(WriterStats::default()));
        let thread_store = store.clone();
        let thread_stats = stats.clone();
        let spawned = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || write_loop(thread_store, receiver, thread_stats));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the store writer thread");
        }
        Writer {
            sender,
            store,
            stats,
        }
    }

    /// Applies and syncs one commit; resolves when it is durable.
    pub async fn commit(&self, commit: Commit) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request {
                write: Write::Run(commit),
                reply,
            })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Applies and syncs one schedule change; resolves when it is durable.
    pub async fn commit_schedule(&self, commit: ScheduleCommit) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request {
                write: Write::Schedule(commit),
                reply,
            })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn stats(&self) -> WriterStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn write_loop(
    store: Arc<dyn Store>,
    receiver: mpsc::Receiver<Request>,
    stats: Arc<std::sync::Mutex<WriterStats>>,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        for request in &batch {
            crate::failpoint::hit("BeforeCommit");
            results.push(match &request.write {
                Write::Run(commit) => store.apply(commit),
                Write::Schedule(commit) => store.apply_schedule(commit),
            });
        }
        crate::failpoint::hit("AfterCommitBeforeFlush");
        let started = Instant::now();
        if results.iter().any(Result::is_ok) {
            if let Err(error) = store.sync() {
                for result in results.iter_mut().filter(|result| result.is_ok()) {
                    *result = Err(error.clone());
                }
            }
        }
        let elapsed: Duration = started.elapsed();
        {
            let mut stats = stats
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            stats.commits += batch.len() as u64;
            stats.syncs += 1;
            stats.sync_seconds_total += elapsed.as_secs_f64();
        }
        for (request, result) in batch.into_iter().zip(results) {
            let _ = request.reply.send(result);
        }
    }
}
