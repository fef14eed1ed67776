//! The journal: runs, their events, the timer index and the lock table, behind [`Store`].
//!
//! [`SledStore`] is the embedded default, [`postgres::PgStore`] the one several hosts share (one
//! daemon at a time, fenced by a lease), and [`MemoryStore`] serves tests; no sled type crosses
//! the trait. [`Writer`] owns the store's write path and batches concurrent commits into one
//! durable sync (group commit).
//!
//! # Contract
//!
//! Words: a commit is *staged* ([`Store::stage`]: checked and held, not yet durable), then
//! *synced* ([`Store::sync`]: durable, and only then visible); [`Writer::commit`] does both and
//! returns once the commit is durable.
//!
//! - [`Store::stage`] stages all of one [`Commit`] (its events, snapshot, timer index and lock
//!   changes) or, when it is refused (a conflict, a held lock), none of it. After a crash, the
//!   store holds every synced commit whole. While a sync writes its batch, a concurrent reader
//!   may see part of it, so the runtime reads a run only while no commit of it is under way
//!   (and a run the archiver may move is read through `Journal::read_moving`).
//! - After [`Store::sync`] returns, everything staged before it survives a process crash *and*
//!   a power cut.
//! - Keys are big-endian so that byte order is logical order (see [`TimerKey`]).

mod archive;
pub mod envelope;
mod fold;
mod journal;
pub mod listing;
mod memory;
pub mod postgres;
mod sled;
pub mod tables;
mod wal;
mod writer;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use self::archive::ArchivedRun;
pub use self::journal::{CopyReport, Journal};
pub use self::listing::{Counts, ListQuery, Listing, Page};
pub use self::memory::{MemoryStore, MemoryTables};
pub use self::sled::{SledStore, SledTables};
use crate::machine::{Event, EventKind, RunState, TimerId};
pub use envelope::FORMAT;

/// The layout of the store on disk (trees, keys, write-ahead log), recorded in `meta/format`.
/// 1: sled only; 2: sled behind a write-ahead log, with the `active` index; 3: the log written
/// before sled (all or nothing), listings, secondary indexes, counters, claims; 4: finished
/// runs' journals folded into one compressed record (`fold.rs`); 5: finished runs moved to
/// the archive's segment files (`archive.rs`); 6: an archived run's pointer in its listing line,
/// one index by state and runbook, retention from the listings (three entries fewer per finished
/// run). A build refuses
/// a store whose layout is newer than it knows, and upgrades an older one when it opens it.
pub const STORE_FORMAT: u32 = 6;
pub use writer::{Reopen, Writer, WriterStats};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An I/O error, with its kind kept (a full disk is [`Error::Full`]).
    #[error("store i/o error: {message}")]
    Io {
        kind: std::io::ErrorKind,
        message: String,
    },
    #[error("the disk holding the store is full: {0}")]
    Full(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the store has format {found}, newer than this build understands ({supported}): use a newer runbook binary")]
    FormatTooNew { found: u32, supported: u32 },
    #[error("run {run_id}: journal conflict (expected last event {expected}, found {found})")]
    Conflict {
        run_id: Uuid,
        expected: u64,
        found: u64,
    },
    #[error("resource {resource:?} is held by run {holder}")]
    LockHeld { resource: String, holder: Uuid },
    #[error("{claim} was already launched as run {holder}")]
    Claimed { claim: String, holder: Uuid },
    #[error("the store is closed")]
    Closed,
}

impl Error {
    /// An I/O error in `context`, keeping its kind; no space (or quota) left is [`Error::Full`].
    pub fn io(context: &str, error: &std::io::Error) -> Error {
        let full = error.kind() == std::io::ErrorKind::StorageFull
            || error.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        if full {
            Error::Full(format!("{context}: {error}"))
        } else {
            Error::Io {
                kind: error.kind(),
                message: format!("{context}: {error}"),
            }
        }
    }

    /// Whether the store itself failed (rather than refusing one commit).
    pub fn is_failure(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Full(_) | Error::Closed)
    }
}

/// A timer index entry. Ordering contract: the encoded bytes sort exactly as
/// `(fire_at_ms, run_id, timer)`, so a range scan from the start yields timers in firing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerKey {
    /// Milliseconds since the Unix epoch (instants before it are clamped to 0).
    pub fire_at_ms: u64,
    pub run_id: Uuid,
    /// The timer: the seq of its `TimerArmed` event.
    pub timer: TimerId,
}

impl TimerKey {
    pub const LEN: usize = 8 + 16 + 8;

    pub fn new(fire_at: DateTime<Utc>, run_id: Uuid, timer: TimerId) -> TimerKey {
        TimerKey {
            fire_at_ms: u64::try_from(fire_at.timestamp_millis()).unwrap_or(0),
            run_id,
            timer,
        }
    }

    /// A schedule's next firing: the schedule's id in place of a run's, and timer 0 (a run's
    /// timers are the seqs of their events, which start at 1).
    pub fn schedule(fire_at: DateTime<Utc>, schedule_id: Uuid) -> TimerKey {
        TimerKey::new(fire_at, schedule_id, TimerId(0))
    }

    pub fn fire_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(i64::try_from(self.fire_at_ms).unwrap_or(i64::MAX))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[..8].copy_from_slice(&self.fire_at_ms.to_be_bytes());
        bytes[8..24].copy_from_slice(self.run_id.as_bytes());
        bytes[24..].copy_from_slice(&self.timer.0.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<TimerKey> {
        if bytes.len() != Self::LEN {
            return None;
        }
        Some(TimerKey {
            fire_at_ms: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            run_id: Uuid::from_slice(&bytes[8..24]).ok()?,
            timer: TimerId(u64::from_be_bytes(bytes[24..].try_into().ok()?)),
        })
    }
}

/// A run's snapshot is stored by its first commit and then by each commit whose events cross a
/// multiple of the run's snapshot interval: [`SNAPSHOT_EVERY`] events, or the power of two at or
/// above the number of step states the run has, whichever is more (a power of two, so that the
/// interval changes only when the run doubles, not with every step it adds). Other commits store only their events, and reading a
/// run replays the events after its snapshot. A snapshot holds every step's state, so its size
/// grows with the run; spacing snapshots by the number of steps keeps the bytes written per
/// event bounded (about one step state's worth), and replay on read no longer than decoding the
/// snapshot itself.
pub const SNAPSHOT_EVERY: u64 = 32;

/// The snapshot interval of a run with `steps` step states.
pub fn snapshot_interval(steps: usize) -> u64 {
    SNAPSHOT_EVERY.max((steps as u64).next_power_of_two())
}

fn crosses_snapshot_seq(expected_seq: u64, last_seq: u64, every: u64) -> bool {
    expected_seq == 0 || last_seq / every != expected_seq / every
}

/// A finished run in the retention index: when it finished, and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expired {
    pub finished_at_ms: u64,
    pub run_id: Uuid,
}

/// One transition of one run, encoded, ready to apply atomically.
#[derive(Debug, Clone)]
pub struct Commit {
    pub run_id: Uuid,
    /// The seq of the last event already stored for the run (0 for a new run).
    pub expected_seq: u64,
    /// `(seq, envelope)` of each new event.
    pub events: Vec<(u64, Vec<u8>)>,
    /// The run's snapshot after the events, when this commit stores one (see
    /// [`SNAPSHOT_EVERY`], and always for a finished run); the events alone otherwise.
    pub snapshot: Option<Vec<u8>>,
    /// Seqs of superseded poll rounds to delete (only with a snapshot, never the first event
    /// nor any after `expected_seq`; see `machine::poll_history`).
    pub forget_events: Vec<u64>,
    pub timers_add: Vec<TimerKey>,
    pub timers_remove: Vec<TimerKey>,
    pub locks_acquire: Vec<String>,
    pub locks_release: Vec<String>,
    /// Unique names this commit takes for good (a schedule's instant): refused with
    /// [`Error::Claimed`] when another run holds one.
    pub claims: Vec<String>,
    /// The run's listing line after the commit.
    pub listing: Listing,
    /// The run is parked after this commit (see [`RunState::is_parked`]) and nothing is left
    /// to continue: the daemon need not load it at start-up.
    pub parked: bool,
    /// Notifications this transition causes, `(key, entry)` of the outbox (`notify.rs`):
    /// committed with it, delivered after.
    pub outbox: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Commit {
    /// Encodes a decision's events and the resulting state, deriving the timer index and lock
    /// changes from the events themselves. `settled`: the decision left nothing for the shell
    /// to continue with (no `Continue` effect), so a parked state really waits. A commit that
    /// stores a snapshot also forgets the poll rounds the state lists as superseded (and takes
    /// them off the state, which is why it is `&mut`).
    pub fn new(
        expected_seq: u64,
        events: &[Event],
        snapshot: &mut RunState,
        settled: bool,
    ) -> Result<Commit, Error> {
        let run_id = snapshot.id;
        let parked = settled && snapshot.is_parked();
        // A finished run's snapshot is stored with the commit that finishes it: its journal
        // is then folded (see `fold.rs`), and a read replays nothing.
        let (stored, forget_events) = if snapshot.status.is_terminal()
            || crosses_snapshot_seq(
                expected_seq,
                snapshot.last_seq,
                snapshot_interval(snapshot.steps.len()),
            ) {
            let forget = crate::machine::take_superseded_polls(snapshot);
            let encoded = if snapshot.status.is_terminal() {
                envelope::encode_compressed(&*snapshot)?
            } else {
                envelope::encode(&*snapshot)?
            };
            (Some(encoded), forget)
        } else {
            (None, Vec::new())
        };
        let snapshot = &*snapshot;
        let mut commit = Commit {
            run_id,
            expected_seq,
            events: Vec::with_capacity(events.len()),
            snapshot: stored,
            forget_events,
            timers_add: Vec::new(),
            timers_remove: Vec::new(),
            locks_acquire: Vec::new(),
            locks_release: Vec::new(),
            claims: Vec::new(),
            outbox: Vec::new(),
            listing: Listing::of(snapshot),
            parked,
        };
        for event in events {
            commit.events.push((event.seq, envelope::encode(event)?));
            match &event.kind {
                EventKind::TimerArmed { timer, fire_at, .. } => commit
                    .timers_add
                    .push(TimerKey::new(*fire_at, run_id, *timer)),
                EventKind::TimerFired { timer, fire_at, .. }
                | EventKind::TimerCanceled { timer, fire_at } => {
                    let key = TimerKey::new(*fire_at, run_id, *timer);
                    match commit.timers_add.iter().position(|added| *added == key) {
                        Some(index) => {
                            commit.timers_add.remove(index);
                        }
                        None => commit.timers_remove.push(key),
                    }
                }
                EventKind::RunCreated { locks, .. } => {
                    commit.locks_acquire.extend(locks.iter().cloned())
                }
                EventKind::RollbackStarted { .. } if !snapshot.locks.is_empty() => {
                    // A finished run that is reopened for rollback takes its locks again.
                    commit.locks_acquire.extend(snapshot.locks.iter().cloned());
                }
                EventKind::RunFinished { .. } => {
                    commit.locks_acquire.clear();
                    commit.locks_release.extend(snapshot.locks.iter().cloned());
                }
                _ => {}
            }
        }
        Ok(commit)
    }
}

/// A change to one schedule, with its timer index changes, to apply atomically.
#[derive(Debug, Clone)]
pub struct ScheduleCommit {
    pub name: String,
    /// The schedule's envelope, or `None` to delete it.
    pub value: Option<Vec<u8>>,
    pub timers_add: Vec<TimerKey>,
    pub timers_remove: Vec<TimerKey>,
}

impl ScheduleCommit {
    /// Stores `schedule` and moves its timer from `old_fire` to its `next_fire` (unless paused).
    pub fn put(
        schedule: &crate::schedule::Schedule,
        old_fire: Option<DateTime<Utc>>,
    ) -> Result<ScheduleCommit, Error> {
        let new_fire = schedule.next_fire.filter(|_| !schedule.paused);
        let mut commit = ScheduleCommit {
            name: schedule.name.clone(),
            value: Some(envelope::encode(schedule)?),
            timers_add: Vec::new(),
            timers_remove: Vec::new(),
        };
        if old_fire != new_fire {
            commit
                .timers_remove
                .extend(old_fire.map(|fire| TimerKey::schedule(fire, schedule.id)));
            commit
                .timers_add
                .extend(new_fire.map(|fire| TimerKey::schedule(fire, schedule.id)));
        }
        Ok(commit)
    }

    /// Deletes `schedule` and its timer.
    pub fn delete(
        schedule: &crate::schedule::Schedule,
        old_fire: Option<DateTime<Utc>>,
    ) -> ScheduleCommit {
        ScheduleCommit {
            name: schedule.name.clone(),
            value: None,
            timers_add: Vec::new(),
            timers_remove: old_fire
                .map(|fire| TimerKey::schedule(fire, schedule.id))
                .into_iter()
                .collect(),
        }
    }
}

/// A change to users and tokens (`access.rs`), applied atomically: each key of the `access`
/// tree set to a record, or deleted (`None`).
#[derive(Debug, Clone, Default)]
pub struct AccessCommit {
    pub changes: Vec<(String, Option<Vec<u8>>)>,
}

/// The listing lines of the unfinished runs, newest first, at most `max` (read from the index
/// by state and runbook, never a scan of every run).
pub fn unfinished(store: &dyn Store, max: usize) -> Result<Vec<(Uuid, Listing)>, Error> {
    let mut lines = Vec::new();
    let mut query = ListQuery {
        limit: 1000,
        ..Default::default()
    };
    loop {
        let page = store.list(&query)?;
        lines.extend(
            page.runs
                .into_iter()
                .filter_map(|(id, line)| line.ok().map(|line| (id, line))),
        );
        match page.next {
            Some(next) if lines.len() < max => query.before = Some(next),
            _ => return Ok(lines),
        }
    }
}

/// A record's key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Changes to outbox entries (a delivery's outcome), applied atomically: `None` deletes.
#[derive(Debug, Clone, Default)]
pub struct OutboxCommit {
    pub changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The journal, in domain terms.
pub trait Store: Send + Sync + 'static {
    /// Stages one commit (not yet durable: see [`Store::sync`]). Fails with
    /// [`Error::Conflict`] when the run's last stored seq is not `expected_seq`, and with
    /// [`Error::LockHeld`] when another run holds a resource to acquire.
    fn stage(&self, commit: &Commit) -> Result<(), Error>;

    /// Stages several commits in order; one result per commit (a refused commit changes
    /// nothing, the others are staged).
    fn stage_many(&self, commits: &[&Commit]) -> Vec<Result<(), Error>> {
        commits.iter().map(|commit| self.stage(commit)).collect()
    }

    /// Makes everything staged so far durable, power-safe, and visible to readers.
    fn sync(&self) -> Result<(), Error>;

    /// Folds what is durable into the store's main files, so that the next open has nothing
    /// to replay (at shutdown).
    fn checkpoint(&self) -> Result<(), Error> {
        self.sync()
    }

    /// A page of runs' listing lines, newest first, from the indexes (never a scan of every
    /// run).
    fn list(&self, query: &ListQuery) -> Result<Page, Error>;

    /// The counters the commits keep.
    fn counts(&self) -> Result<Counts, Error>;

    /// Finished runs that finished before `before_ms`, oldest first, at most `limit`; with
    /// `after`, only those after that one in the order of the retention index (a collection
    /// goes on from where its last batch ended, rather than over the keys it just deleted).
    fn expired_runs(
        &self,
        before_ms: u64,
        after: Option<&Expired>,
        limit: usize,
    ) -> Result<Vec<Expired>, Error>;

    /// Deletes the given runs whole (snapshot, events, listing, index entries) if they are
    /// finished; a run that is not finished is left alone. Like [`Store::stage`], durable at
    /// the next sync. Returns the runs deleted.
    fn collect(&self, runs: &[Uuid]) -> Result<Vec<Uuid>, Error>;

    /// Reads what [`Store::collect`] of `runs` will read and delete, so that the writer finds
    /// it in memory: called off the writer just before a collection, it keeps the disk reads of
    /// a long-unread history out of the commits that share the collection's turn. Only a
    /// hint: changes nothing, and errors are left for the collection to meet.
    fn warm_for_collect(&self, runs: &[Uuid]) {
        let _ = runs;
    }

    /// Checks the derived indexes against the runs, changing nothing; one line per problem.
    fn check(&self) -> Result<Vec<String>, Error>;

    /// The first step of moving finished runs out of the tables (see `archive.rs`): up to
    /// `limit` finished runs after `after`, their records read, appended to the archive and
    /// synced. Returns them, and the last run looked at (where the next call goes on; `None`
    /// when there was nothing left). A store without an archive moves nothing.
    fn archive_prepare(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<ArchivedRun>, Option<Uuid>), Error> {
        let _ = (after, limit);
        Ok((Vec::new(), None))
    }

    /// The second step: deletes the prepared runs' records from the tables and stores where
    /// they are, for each run whose records are still exactly those archived. Like
    /// [`Store::stage`], durable at the next sync. Returns the runs moved.
    fn archive_commit(&self, runs: &[ArchivedRun]) -> Result<Vec<Uuid>, Error> {
        let _ = runs;
        Ok(Vec::new())
    }

    /// Deletes the archive's segment files that no durable pointer names any more; returns
    /// the bytes given back. The one appends go to may hold entries whose pointers are not
    /// committed yet: it is left alone unless `settled` (the archiver's own call, between its
    /// batches: no prepared run awaits its commit).
    fn archive_tidy(&self, settled: bool) -> Result<u64, Error> {
        let _ = settled;
        Ok(0)
    }

    /// The ids of the runs that are not parked (see [`Commit::parked`]): those the daemon
    /// works on at start-up.
    fn active_run_ids(&self) -> Result<Vec<Uuid>, Error>;

    /// The ids of the runs whose id starts with the bytes `prefix`, at most `limit`.
    fn find_runs(&self, prefix: &[u8], limit: usize) -> Result<Vec<Uuid>, Error>;

    /// One run's latest snapshot.
    fn load_run(&self, run_id: Uuid) -> Result<Option<RunState>, Error>;

    /// One run's journal, in order.
    fn events(&self, run_id: Uuid) -> Result<Vec<Event>, Error>;

    /// The earliest timer, if any.
    fn next_timer(&self) -> Result<Option<TimerKey>, Error>;

    /// Timers due at or before `until_ms`, earliest first, at most `limit`.
    fn due_timers(&self, until_ms: u64, limit: usize) -> Result<Vec<TimerKey>, Error>;

    /// Drops a timer entry no run claims (left by a run that could not be read, for example).
    /// Like [`Store::stage`], durable at the next sync (only the writer changes the store).
    fn remove_timer(&self, key: &TimerKey) -> Result<(), Error>;

    /// The run holding `resource`, if any.
    fn lock_holder(&self, resource: &str) -> Result<Option<Uuid>, Error>;

    /// Reads every record and reports each one that does not verify, and every derived index
    /// entry that does not match the runs.
    fn verify(&self) -> Result<Vec<String>, Error>;

    /// Applies one schedule change atomically (not yet durable: see [`Store::sync`]).
    fn stage_schedule(&self, commit: &ScheduleCommit) -> Result<(), Error>;

    /// Every schedule, or the error that kept one from being read.
    fn load_schedules(&self) -> Result<Vec<Result<crate::schedule::Schedule, Error>>, Error>;

    /// Applies one change to users and tokens atomically (not yet durable: see
    /// [`Store::sync`]).
    fn stage_access(&self, commit: &AccessCommit) -> Result<(), Error>;

    /// Every record of the `access` tree, by key.
    fn load_access(&self) -> Result<Vec<(String, Vec<u8>)>, Error>;

    /// Applies outbox changes atomically (not yet durable: see [`Store::sync`]).
    fn stage_outbox(&self, commit: &OutboxCommit) -> Result<(), Error>;

    /// The outbox entries whose key starts with `prefix` (a run's id; empty: all), in order.
    fn load_outbox(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, Error>;
}

/// Rebuilds a run's state from its snapshot payload, the first event (which pins the
/// definition) and the events stored after the snapshot, in order.
/// `after(seq)` yields the stored events from `seq` on.
pub(crate) fn restore<B: AsRef<[u8]>, I: IntoIterator<Item = Result<(u64, B), Error>>>(
    run_id: Uuid,
    snapshot: &[u8],
    first_event: Option<&[u8]>,
    after: impl FnOnce(u64) -> I,
) -> Result<RunState, Error> {
    let key = || format!("runs/{run_id}");
    let mut state: RunState = envelope::decode(&key, snapshot)?;
    let event_key = || format!("events/{run_id}/1");
    let first = first_event.ok_or_else(|| Error::Corrupt {
        key: event_key(),
        reason: "missing RunCreated event".to_owned(),
    })?;
    match envelope::decode::<Event>(&event_key, first)?.kind {
        EventKind::RunCreated { definition, .. } => {
            state.definition = std::sync::Arc::new(definition)
        }
        _ => {
            return Err(Error::Corrupt {
                key: event_key(),
                reason: "the first event is not RunCreated".to_owned(),
            })
        }
    }
    for entry in after(state.last_seq + 1) {
        let (seq, bytes) = entry?;
        if seq != state.last_seq + 1 {
            return Err(Error::Corrupt {
                key: format!("events/{run_id}/{}", state.last_seq + 1),
                reason: format!("missing (the next stored event is {seq})"),
            });
        }
        crate::machine::evolve(&mut state, &decode_event(run_id, seq, bytes.as_ref())?);
    }
    Ok(state)
}

pub(crate) fn decode_event(run_id: Uuid, seq: u64, bytes: &[u8]) -> Result<Event, Error> {
    envelope::decode(&|| format!("events/{run_id}/{seq}"), bytes)
}

pub(crate) fn encode_value<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    envelope::encode(value)
}

pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(
    key: &dyn Fn() -> String,
    bytes: &[u8],
) -> Result<T, Error> {
    envelope::decode(key, bytes)
}
