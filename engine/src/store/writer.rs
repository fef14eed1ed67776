//! The store's single writer: applies commits in arrival order and makes each batch durable with
//! one sync (group commit), then acknowledges every commit of the batch.
//!
//! # Contract
//!
//! - [`Writer::commit`] returns `Ok` only after the commit is applied *and* synced. A failure
//!   fails every commit of its batch: the caller must not run their effects.
//! - After a write or sync failure (a full disk), what the store holds in memory may be ahead of
//!   what is on disk, so the writer stops writing: every commit fails with the error until the
//!   store has been reopened from disk (retried every [`REOPEN_EVERY`]). Each successful reopen
//!   bumps [`Writer::generation`]: whoever caches state read from the store must reload it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::KeyValue;
use super::{AccessCommit, Commit, Error, OutboxCommit, ScheduleCommit, Store, TimerKey};
use crate::machine::{Event, RunState};

/// The most commits that share one sync.
const MAX_BATCH: usize = 512;
/// How long the writer looks for the next commit before it sleeps.
const LINGER: Duration = Duration::from_micros(100);
/// How often a failed store is reopened.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);

enum Write {
    Run(Box<Commit>),
    Schedule(ScheduleCommit),
    Access(AccessCommit),
    Outbox(OutboxCommit),
    /// Deletes finished runs (retention); answers with those deleted.
    Collect(Vec<Uuid>),
    /// Moves archived runs out of the tables; answers with those moved.
    Archive(Vec<super::ArchivedRun>),
    /// Drops a timer index entry no run or schedule claims.
    RemoveTimer(TimerKey),
    /// Answered once everything before it is written; every request after it is refused
    /// ([`Error::Closed`]).
    Close,
}

struct Request {
    write: Write,
    reply: oneshot::Sender<Result<Vec<Uuid>, Error>>,
}

/// Figures for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    pub commits: u64,
    pub syncs: u64,
    pub sync_seconds_total: f64,
    pub reopens: u64,
}

/// Opens the store again after a failure.
pub type Reopen = Arc<dyn Fn() -> Result<Arc<dyn Store>, Error> + Send + Sync>;

#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<Request>,
    /// How long each group commit's sync took.
    sync_latency: Arc<crate::histogram::Histogram>,
    store: Arc<RwLock<Arc<dyn Store>>>,
    stats: Arc<Mutex<WriterStats>>,
    generation: watch::Receiver<u64>,
}

impl Writer {
    /// Starts the writer thread; it ends when every `Writer` clone is dropped. Without
    /// `reopen`, a failed store stays failed.
    pub fn start(store: Arc<dyn Store>, reopen: Option<Reopen>) -> Writer {
        let (sender, receiver) = mpsc::channel::<Request>();
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let sync_latency = Arc::new(crate::histogram::Histogram::default());
        let store = Arc::new(RwLock::new(store));
        let (generation_sender, generation) = watch::channel(0);
        let loop_state = Loop {
            store: store.clone(),
            stats: stats.clone(),
            sync_latency: sync_latency.clone(),
            reopen,
            generation: generation_sender,
            failed: None,
            failed_store: None,
        };
        let spawned = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || loop_state.run(receiver));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the store writer thread");
        }
        Writer {
            sender,
            sync_latency,
            store,
            stats,
            generation,
        }
    }

    /// Applies and syncs one commit; resolves when it is durable.
    pub async fn commit(&self, commit: Commit) -> Result<(), Error> {
        self.send(Write::Run(Box::new(commit))).await.map(drop)
    }

    /// Applies and syncs one schedule change; resolves when it is durable.
    pub async fn commit_schedule(&self, commit: ScheduleCommit) -> Result<(), Error> {
        self.send(Write::Schedule(commit)).await.map(drop)
    }

    /// Applies and syncs one change to users and tokens; resolves when it is durable.
    pub async fn commit_access(&self, commit: AccessCommit) -> Result<(), Error> {
        self.send(Write::Access(commit)).await.map(drop)
    }

    /// Applies and syncs outbox changes (a delivery's outcome); resolves when durable.
    pub async fn commit_outbox(&self, commit: OutboxCommit) -> Result<(), Error> {
        self.send(Write::Outbox(commit)).await.map(drop)
    }

    /// Drops a stale timer index entry, durably.
    pub async fn remove_timer(&self, key: TimerKey) -> Result<(), Error> {
        self.send(Write::RemoveTimer(key)).await.map(drop)
    }

    /// Deletes those of `runs` that are finished, durably; returns the ones deleted.
    pub async fn collect(&self, runs: Vec<Uuid>) -> Result<Vec<Uuid>, Error> {
        self.send(Write::Collect(runs)).await
    }

    /// Moves runs whose entries the archive holds out of the tables, durably; returns the
    /// ones moved.
    pub async fn archive(&self, runs: Vec<super::ArchivedRun>) -> Result<Vec<Uuid>, Error> {
        self.send(Write::Archive(runs)).await
    }

    /// Stops writing (shutdown, before the final checkpoint): resolves once every request
    /// sent before it is written and synced; every later one fails with [`Error::Closed`].
    pub async fn close(&self) {
        let _ = self.send(Write::Close).await;
    }

    async fn send(&self, write: Write) -> Result<Vec<Uuid>, Error> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request { write, reply })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The store, for reads.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Bumped each time the store was reopened after a failure.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    /// The group commits' sync latency, for `/metrics`.
    pub fn sync_latency(&self) -> &crate::histogram::Histogram {
        &self.sync_latency
    }

    pub fn stats(&self) -> WriterStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Loop {
    store: Arc<RwLock<Arc<dyn Store>>>,
    stats: Arc<Mutex<WriterStats>>,
    sync_latency: Arc<crate::histogram::Histogram>,
    reopen: Option<Reopen>,
    generation: watch::Sender<u64>,
    /// The error that stopped writing, and when the last reopen was tried.
    failed: Option<(Error, Instant)>,
    /// The stand-in for the failed store, which still serves reads from it.
    failed_store: Option<Arc<Failed>>,
}

impl Loop {
    fn run(mut self, receiver: mpsc::Receiver<Request>) {
        loop {
            let first = match &self.failed {
                // Wake up now and then to try a reopen even when nobody writes.
                Some(_) => match receiver.recv_timeout(REOPEN_EVERY) {
                    Ok(request) => Some(request),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
                None => match Self::next(&receiver) {
                    Some(request) => Some(request),
                    None => return,
                },
            };
            if self.failed.is_some() {
                self.try_reopen();
            }
            let Some(first) = first else { continue };
            // Collections and archive moves join the batch like commits: they are small (a
            // few deletes per run, a few runs per request), and a request of their own would
            // cost a sync that the commits behind it wait for.
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let closing = batch
                .iter()
                .any(|request| matches!(request.write, Write::Close));
            let results = match &self.failed {
                Some((error, _)) => batch.iter().map(|_| Err(error.clone())).collect(),
                None => self.write(&batch),
            };
            for (request, result) in batch.into_iter().zip(results) {
                let _ = request.reply.send(result);
            }
            if closing {
                // (What came in the batch after the close was written with it: it arrived
                // before the close was answered.)
                for request in receiver.iter() {
                    let _ = request.reply.send(Err(Error::Closed));
                }
                return;
            }
        }
    }

    /// The next request. A run's next commit usually follows its previous one within tens of
    /// microseconds (decide, encode): the writer looks for it a little while before it sleeps,
    /// which saves a thread wake-up per step.
    fn next(receiver: &mpsc::Receiver<Request>) -> Option<Request> {
        let started = Instant::now();
        while started.elapsed() < LINGER {
            match receiver.try_recv() {
                Ok(request) => return Some(request),
                Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
                Err(mpsc::TryRecvError::Disconnected) => return None,
            }
        }
        receiver.recv().ok()
    }

    fn write(&mut self, batch: &[Request]) -> Vec<Result<Vec<Uuid>, Error>> {
        let store = self
            .store
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut results = Vec::with_capacity(batch.len());
        // Consecutive run commits are applied together; a schedule change on its own.
        let mut runs: Vec<&Commit> = Vec::new();
        let unit = |result: Result<(), Error>| result.map(|()| Vec::new());
        for request in batch {
            if let Write::Run(commit) = &request.write {
                runs.push(commit.as_ref());
                continue;
            }
            // Anything else is applied after the run commits before it.
            results.extend(
                store
                    .stage_many(&std::mem::take(&mut runs))
                    .into_iter()
                    .map(unit),
            );
            results.push(match &request.write {
                Write::Schedule(commit) => {
                    crate::failpoint::hit(crate::failpoint::Failpoint::BeforeScheduleStaged);
                    unit(store.stage_schedule(commit))
                }
                Write::Access(commit) => unit(store.stage_access(commit)),
                Write::Outbox(commit) => unit(store.stage_outbox(commit)),
                Write::RemoveTimer(key) => unit(store.remove_timer(key)),
                Write::Collect(ids) => store.collect(ids),
                Write::Archive(moved) => store.archive_commit(moved),
                Write::Run(_) | Write::Close => Ok(Vec::new()),
            });
        }
        results.extend(store.stage_many(&runs).into_iter().map(unit));
        crate::failpoint::hit(crate::failpoint::Failpoint::StagedBeforeSync);
        let started = Instant::now();
        let mut failure = results.iter().find_map(|result| match result {
            Err(error) if error.is_failure() => Some(error.clone()),
            _ => None,
        });
        if results.iter().any(Result::is_ok) {
            if let Err(error) = store.sync() {
                failure = Some(error);
            }
        }
        if let Some(error) = &failure {
            // Nothing of this batch may be taken as durable, and the store's memory may now be
            // ahead of the disk: stop writing until it is reopened from disk.
            tracing::error!(%error, "the store failed; refusing writes until it can be reopened");
            for result in results.iter_mut() {
                *result = Err(error.clone());
            }
            self.failed = Some((error.clone(), Instant::now()));
            // Writes stop here; reads go on until the store is reopened.
            let failed = Arc::new(Failed {
                error: error.clone(),
                reads: RwLock::new(Some(store.clone())),
            });
            *self
                .store
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = failed.clone();
            self.failed_store = Some(failed);
        }
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stats.commits += batch.len() as u64;
        stats.syncs += 1;
        stats.sync_seconds_total += started.elapsed().as_secs_f64();
        self.sync_latency.record(started.elapsed().as_secs_f64());
        results
    }

    fn try_reopen(&mut self) {
        let Some(reopen) = &self.reopen else { return };
        let Some((_, last_try)) = &self.failed else {
            return;
        };
        if last_try.elapsed() < REOPEN_EVERY {
            return;
        }
        // The failed store must close before it can be opened again.
        if let Some(failed) = &self.failed_store {
            failed.let_go();
        }
        match reopen() {
            Ok(store) => {
                *self
                    .store
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = store;
                self.failed = None;
                self.failed_store = None;
                self.stats
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .reopens += 1;
                self.generation.send_modify(|generation| *generation += 1);
                tracing::info!("the store was reopened; writes resume");
            }
            Err(error) => {
                tracing::warn!(%error, "the store cannot be reopened yet");
                self.failed = Some((error, Instant::now()));
            }
        }
    }
}

/// Stands in for a store that failed, until it is reopened: every write fails, and reads go to
/// the failed store as long as it is kept (the writer lets go of it to reopen it; a full disk
/// should not hide the runs from the operator). What it shows may include the batch that
/// failed: those commits were refused, and reopening reads only what is on disk.
struct Failed {
    error: Error,
    reads: RwLock<Option<Arc<dyn Store>>>,
}

impl Failed {
    fn reads(&self) -> Result<Arc<dyn Store>, Error> {
        self.reads
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| self.error.clone())
    }

    fn let_go(&self) {
        self.reads
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }
}

impl Store for Failed {
    fn stage(&self, _: &Commit) -> Result<(), Error> {
        Err(self.error.clone())
    }
    fn sync(&self) -> Result<(), Error> {
        Err(self.error.clone())
    }
    fn checkpoint(&self) -> Result<(), Error> {
        Err(self.error.clone())
    }
    fn active_run_ids(&self) -> Result<Vec<Uuid>, Error> {
        self.reads()?.active_run_ids()
    }
    fn list(&self, query: &super::ListQuery) -> Result<super::Page, Error> {
        self.reads()?.list(query)
    }
    fn counts(&self) -> Result<super::Counts, Error> {
        self.reads()?.counts()
    }
    fn expired_runs(
        &self,
        _: u64,
        _: Option<&super::Expired>,
        _: usize,
    ) -> Result<Vec<super::Expired>, Error> {
        Err(self.error.clone())
    }
    fn collect(&self, _: &[Uuid]) -> Result<Vec<Uuid>, Error> {
        Err(self.error.clone())
    }
    fn check(&self) -> Result<Vec<String>, Error> {
        Err(self.error.clone())
    }
    fn find_runs(&self, prefix: &[u8], limit: usize) -> Result<Vec<Uuid>, Error> {
        self.reads()?.find_runs(prefix, limit)
    }
    fn load_run(&self, run_id: Uuid) -> Result<Option<RunState>, Error> {
        self.reads()?.load_run(run_id)
    }
    fn events(&self, run_id: Uuid) -> Result<Vec<Event>, Error> {
        self.reads()?.events(run_id)
    }
    fn next_timer(&self) -> Result<Option<TimerKey>, Error> {
        Err(self.error.clone())
    }
    fn due_timers(&self, _: u64, _: usize) -> Result<Vec<TimerKey>, Error> {
        Err(self.error.clone())
    }
    fn remove_timer(&self, _: &TimerKey) -> Result<(), Error> {
        Err(self.error.clone())
    }
    fn lock_holder(&self, resource: &str) -> Result<Option<Uuid>, Error> {
        self.reads()?.lock_holder(resource)
    }
    fn verify(&self) -> Result<Vec<String>, Error> {
        Err(self.error.clone())
    }
    fn stage_schedule(&self, _: &ScheduleCommit) -> Result<(), Error> {
        Err(self.error.clone())
    }
    fn load_schedules(&self) -> Result<Vec<Result<crate::schedule::Schedule, Error>>, Error> {
        self.reads()?.load_schedules()
    }
    fn stage_access(&self, _: &AccessCommit) -> Result<(), Error> {
        Err(self.error.clone())
    }
    fn load_access(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.reads()?.load_access()
    }
    fn stage_outbox(&self, _: &OutboxCommit) -> Result<(), Error> {
        Err(self.error.clone())
    }
    fn load_outbox(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, Error> {
        self.reads()?.load_outbox(prefix)
    }
}
