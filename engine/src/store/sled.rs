//! The embedded default store, on sled 0.34 behind a write-ahead log. The only module that
//! imports sled.
//!
//! Trees: `runs` (run_id → snapshot), `events` (run_id ‖ seq → event), `timers`
//! (fire_at_ms ‖ run_id ‖ timer → empty), `locks` (resource → run_id), `schedules`
//! (name → schedule), `active` (run_id → empty, for each run that is not parked: see
//! [`RunState::is_parked`]), `meta` (`format`, `lsn`).
//!
//! # Contract
//!
//! Every change goes into sled (not flushed) and into the write-ahead log ([`super::wal`]);
//! [`SledStore::sync`] writes the log and `fdatasync`s it: one write and one device flush per
//! group commit. sled is flushed (its log `fdatasync`ed, new blob files fsynced) only at a
//! checkpoint: when the log segment passes [`wal::CHECKPOINT_BYTES`], at open after replaying
//! the log, and at shutdown.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use ::sled::{Db, Tree};
use uuid::Uuid;

use super::wal::{self, Op, Wal};
use super::{
    check_envelope, decode_event, decode_value, encode_value, restore, Commit, Error, LoadedRun,
    ScheduleCommit, Store, TimerKey, STORE_FORMAT,
};
use crate::machine::{Event, RunState};
use crate::schedule::Schedule;

// The trees, by their code in the write-ahead log.
const RUNS: u8 = 0;
const EVENTS: u8 = 1;
const TIMERS: u8 = 2;
const LOCKS: u8 = 3;
const SCHEDULES: u8 = 4;
const META: u8 = 5;
const ACTIVE: u8 = 6;

pub struct SledStore {
    db: Db,
    /// Indexed by the codes above.
    trees: Vec<Tree>,
    dir: PathBuf,
    log_file: File,
    blobs_seen: Mutex<Option<SystemTime>>,
    wal: Mutex<Wal>,
    /// A sync failed: what sled holds may be ahead of the disk, so it is never checkpointed.
    failed: AtomicBool,
}

fn io(error: impl std::fmt::Display) -> Error {
    let text = error.to_string();
    if text.contains("No space left") || text.contains("os error 28") {
        Error::Full(text)
    } else {
        Error::Io(text)
    }
}

/// Applies changes to the trees and records them for the write-ahead log.
struct Logged<'a> {
    trees: &'a [Tree],
    ops: Vec<Op>,
}

type TxResult<T> = Result<T, ::sled::Error>;

impl Logged<'_> {
    fn get(&self, tree: u8, key: &[u8]) -> TxResult<Option<::sled::IVec>> {
        self.trees[usize::from(tree)].get(key)
    }

    fn insert(&mut self, tree: u8, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.trees[usize::from(tree)].insert(key, value)?;
        self.ops.push(Op {
            tree,
            key: key.to_vec(),
            value: Some(value.to_vec()),
        });
        Ok(())
    }

    fn remove(&mut self, tree: u8, key: &[u8]) -> TxResult<()> {
        self.trees[usize::from(tree)].remove(key)?;
        self.ops.push(Op {
            tree,
            key: key.to_vec(),
            value: None,
        });
        Ok(())
    }

    /// One run commit: checks first, so that a refused commit changes nothing.
    fn run_commit(&mut self, commit: &Commit) -> TxResult<Result<(), Error>> {
        // The journal must end exactly where the caller thinks it does.
        let next_taken = self
            .get(
                EVENTS,
                &SledStore::event_key(commit.run_id, commit.expected_seq + 1),
            )?
            .is_some();
        let last_present = commit.expected_seq == 0
            || self
                .get(
                    EVENTS,
                    &SledStore::event_key(commit.run_id, commit.expected_seq),
                )?
                .is_some();
        if next_taken || !last_present {
            return Ok(Err(Error::Conflict {
                run_id: commit.run_id,
                expected: commit.expected_seq,
                found: if next_taken {
                    commit.expected_seq + 1
                } else {
                    0
                },
            }));
        }
        for resource in &commit.locks_acquire {
            if let Some(holder) = self.get(LOCKS, resource.as_bytes())? {
                let holder: Uuid = match decode_value(&|| format!("locks/{resource}"), &holder) {
                    Ok(holder) => holder,
                    Err(error) => return Ok(Err(error)),
                };
                if holder != commit.run_id {
                    return Ok(Err(Error::LockHeld {
                        resource: resource.clone(),
                        holder,
                    }));
                }
            }
        }
        let owner = match encode_value(&commit.run_id) {
            Ok(owner) => owner,
            Err(error) => return Ok(Err(error)),
        };
        for resource in &commit.locks_acquire {
            self.insert(LOCKS, resource.as_bytes(), &owner)?;
        }
        for resource in &commit.locks_release {
            if let Some(holder) = self.get(LOCKS, resource.as_bytes())? {
                let holder: Result<Uuid, _> =
                    decode_value(&|| format!("locks/{resource}"), &holder);
                if holder.map_or(true, |holder| holder == commit.run_id) {
                    self.remove(LOCKS, resource.as_bytes())?;
                }
            }
        }
        for (seq, bytes) in &commit.events {
            self.insert(EVENTS, &SledStore::event_key(commit.run_id, *seq), bytes)?;
        }
        if let Some(snapshot) = &commit.snapshot {
            self.insert(RUNS, commit.run_id.as_bytes(), snapshot)?;
        }
        if commit.parked {
            if self.get(ACTIVE, commit.run_id.as_bytes())?.is_some() {
                self.remove(ACTIVE, commit.run_id.as_bytes())?;
            }
        } else if self.get(ACTIVE, commit.run_id.as_bytes())?.is_none() {
            self.insert(ACTIVE, commit.run_id.as_bytes(), &[])?;
        }
        for key in &commit.timers_remove {
            self.remove(TIMERS, &key.encode())?;
        }
        for key in &commit.timers_add {
            self.insert(TIMERS, &key.encode(), &[])?;
        }
        Ok(Ok(()))
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, replaying its write-ahead log.
    pub fn open(dir: &Path) -> Result<SledStore, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|error| io(format!("cannot create {}: {error}", dir.display())))?;
        let db = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(|error| {
                io(format!(
                    "cannot open the store in {}: {error}",
                    dir.display()
                ))
            })?;
        let mut trees = Vec::with_capacity(wal::TREES.len());
        for name in wal::TREES {
            trees.push(db.open_tree(name).map_err(io)?);
        }
        let found_format = Self::check_format(&trees[usize::from(META)])?;
        let wal_dir = dir.join("wal");
        let sled_lsn = match trees[usize::from(META)].get("lsn").map_err(io)? {
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| Error::Corrupt {
                    key: "meta/lsn".to_owned(),
                    reason: "not a u64".to_owned(),
                })?)
            }
            None => 0,
        };
        let (records, last_lsn) = Wal::read(&wal_dir, sled_lsn)
            .map_err(|error| io(format!("cannot read {}: {error}", wal_dir.display())))?;
        for (_, ops) in &records {
            for op in ops {
                let tree = &trees[usize::from(op.tree)];
                match &op.value {
                    Some(value) => tree.insert(op.key.as_slice(), value.as_slice()),
                    None => tree.remove(op.key.as_slice()),
                }
                .map_err(io)?;
            }
        }
        if !records.is_empty() {
            tracing::info!(records = records.len(), "replayed the write-ahead log");
        }
        if found_format < STORE_FORMAT {
            Self::upgrade(&trees)?;
        }
        // A checkpoint: sled durable as it is now, then a fresh log.
        db.flush().map_err(io)?;
        let log_file = File::open(dir.join("db"))
            .map_err(|error| io(format!("cannot open {}/db: {error}", dir.display())))?;
        log_file.sync_data().map_err(io)?;
        let blobs_seen = Mutex::new(None);
        sync_blobs(dir, &blobs_seen)?;
        // The files sled just created must survive a power cut too.
        File::open(dir)
            .and_then(|directory| directory.sync_all())
            .map_err(io)?;
        let wal = Wal::create(&wal_dir, last_lsn.max(sled_lsn) + 1)
            .map_err(|error| io(format!("cannot start {}: {error}", wal_dir.display())))?;
        Ok(SledStore {
            log_file,
            dir: dir.to_owned(),
            blobs_seen,
            wal: Mutex::new(wal),
            failed: AtomicBool::new(false),
            trees,
            db,
        })
    }

    /// Refuses a store newer than this build; returns the format found (the current one for a
    /// new store).
    fn check_format(meta: &Tree) -> Result<u32, Error> {
        match meta.get("format").map_err(io)? {
            Some(bytes) => {
                let found: u32 = decode_value(&|| "meta/format".to_owned(), &bytes)?;
                if found > STORE_FORMAT {
                    return Err(Error::FormatTooNew {
                        found,
                        supported: STORE_FORMAT,
                    });
                }
                Ok(found)
            }
            None => {
                meta.insert("format", encode_value(&STORE_FORMAT)?)
                    .map_err(io)?;
                Ok(STORE_FORMAT)
            }
        }
    }

    /// From format 1: builds the `active` index from the runs (the checkpoint that follows
    /// makes it durable, then the new format is recorded).
    fn upgrade(trees: &[Tree]) -> Result<(), Error> {
        let mut active = 0;
        for entry in trees[usize::from(RUNS)].iter() {
            let (key, snapshot) = entry.map_err(io)?;
            let Ok(run_id) = Uuid::from_slice(&key) else {
                continue;
            };
            let first = trees[usize::from(EVENTS)]
                .get(Self::event_key(run_id, 1))
                .map_err(io)?;
            // Format 1 stored a snapshot with every commit: there are no events after it.
            let after = |_| Vec::<Result<(u64, Vec<u8>), Error>>::new();
            // An unreadable run stays active, so that it is reported at every start.
            let parked = restore(run_id, &snapshot, first.as_deref(), after)
                .map(|state| state.is_parked())
                .unwrap_or(false);
            if !parked {
                trees[usize::from(ACTIVE)].insert(key, &[]).map_err(io)?;
                active += 1;
            }
        }
        trees[usize::from(META)]
            .insert("format", encode_value(&STORE_FORMAT)?)
            .map_err(io)?;
        tracing::info!(active, "upgraded the store to format {STORE_FORMAT}");
        Ok(())
    }

    fn tree(&self, code: u8) -> &Tree {
        &self.trees[usize::from(code)]
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        self.wal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn event_key(run_id: Uuid, seq: u64) -> [u8; 24] {
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(run_id.as_bytes());
        key[16..].copy_from_slice(&seq.to_be_bytes());
        key
    }

    /// A run from its snapshot and the events stored after it.
    fn restore(&self, run_id: Uuid, snapshot: &[u8]) -> Result<RunState, Error> {
        let first = self.first_event(run_id)?;
        restore(run_id, snapshot, first.as_deref(), |from| {
            self.tree(EVENTS)
                .range(Self::event_key(run_id, from)..=Self::event_key(run_id, u64::MAX))
                .map(|entry| {
                    let (key, bytes) = entry.map_err(io)?;
                    let seq = u64::from_be_bytes(key[16..24].try_into().unwrap_or_default());
                    Ok((seq, bytes))
                })
        })
    }

    fn first_event(&self, run_id: Uuid) -> Result<Option<::sled::IVec>, Error> {
        self.tree(EVENTS)
            .get(Self::event_key(run_id, 1))
            .map_err(io)
    }

    /// Makes sled durable as it is, then starts a fresh log segment (dropping the old ones).
    fn checkpoint_with(&self, wal: &mut Wal) -> Result<(), Error> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Io(
                "the store failed a write; it must be reopened".to_owned(),
            ));
        }
        self.db.flush().map_err(io)?;
        self.log_file.sync_data().map_err(io)?;
        sync_blobs(&self.dir, &self.blobs_seen)?;
        *wal = Wal::create(&self.dir.join("wal"), wal.next_lsn()).map_err(io)?;
        Ok(())
    }

    /// Applies `body`'s changes to sled and queues them for the next log record.
    ///
    /// No sled transaction: sled seals and writes its log buffer for every transaction, and
    /// the write-ahead log gives atomicity anyway. sled recovers a prefix of its writes; the
    /// first change after each sync is `meta/lsn` = the record's lsn, so whatever part of a
    /// record sled kept, replaying from that record restores all of it. Only the writer thread
    /// applies changes, so a commit's checks and its writes see no other writer.
    fn change<T>(&self, body: impl FnOnce(&mut Logged<'_>) -> TxResult<T>) -> Result<T, Error> {
        let mut wal = self.wal();
        if !wal.marked() {
            let lsn = wal.next_lsn().to_be_bytes();
            if let Err(error) = self.tree(META).insert("lsn", lsn.as_slice()) {
                self.failed.store(true, Ordering::SeqCst);
                return Err(io(error));
            }
            wal.mark();
        }
        let mut logged = Logged {
            trees: &self.trees,
            ops: Vec::new(),
        };
        let result = body(&mut logged);
        // What was changed goes to the log even when a later change failed.
        wal.append(&logged.ops);
        result.map_err(|error| {
            self.failed.store(true, Ordering::SeqCst);
            io(error)
        })
    }
}

/// fsyncs sled's blob files (values too large for its log) when the blob directory changed.
fn sync_blobs(dir: &Path, seen: &Mutex<Option<SystemTime>>) -> Result<(), Error> {
    let blobs = dir.join("blobs");
    let Ok(modified) = std::fs::metadata(&blobs).and_then(|meta| meta.modified()) else {
        return Ok(());
    };
    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if *seen == Some(modified) {
        return Ok(());
    }
    for entry in std::fs::read_dir(&blobs).map_err(io)?.flatten() {
        if let Ok(file) = File::open(entry.path()) {
            file.sync_all().map_err(io)?;
        }
    }
    File::open(&blobs)
        .and_then(|directory| directory.sync_all())
        .map_err(io)?;
    *seen = Some(modified);
    Ok(())
}

/// sled's page cache: enough for the runs being worked on; the rest is read from disk.
const CACHE_BYTES: u64 = 32 << 20;

impl Drop for SledStore {
    fn drop(&mut self) {
        // Leaves nothing to replay at the next open (unless a write failed).
        if !self.failed.load(Ordering::SeqCst) {
            let mut wal = self.wal();
            if let Err(error) = self.checkpoint_with(&mut wal) {
                tracing::warn!(%error, "no checkpoint at close; the next open replays the log");
            }
        }
    }
}

impl Store for SledStore {
    fn apply(&self, commit: &Commit) -> Result<(), Error> {
        self.apply_many(&[commit]).pop().unwrap_or(Ok(()))
    }

    fn apply_many(&self, commits: &[&Commit]) -> Vec<Result<(), Error>> {
        if commits.is_empty() {
            return Vec::new();
        }
        let result = self.change(|logged| {
            let mut results = Vec::with_capacity(commits.len());
            for commit in commits {
                crate::failpoint::hit("BeforeCommit");
                results.push(logged.run_commit(commit)?);
            }
            Ok(results)
        });
        match result {
            Ok(results) => results,
            Err(error) => commits.iter().map(|_| Err(error.clone())).collect(),
        }
    }

    fn sync(&self) -> Result<(), Error> {
        let mut wal = self.wal();
        match wal.sync() {
            Ok(size) if size > wal::CHECKPOINT_BYTES => self.checkpoint_with(&mut wal),
            Ok(_) => Ok(()),
            Err(error) => {
                self.failed.store(true, Ordering::SeqCst);
                wal.discard_pending();
                Err(io(error))
            }
        }
    }

    fn checkpoint(&self) -> Result<(), Error> {
        let mut wal = self.wal();
        self.checkpoint_with(&mut wal)
    }

    fn load_run(&self, run_id: Uuid) -> Result<Option<RunState>, Error> {
        let Some(snapshot) = self.tree(RUNS).get(run_id.as_bytes()).map_err(io)? else {
            return Ok(None);
        };
        self.restore(run_id, &snapshot).map(Some)
    }

    fn load_snapshots(&self) -> Result<Vec<LoadedRun>, Error> {
        let mut loaded = Vec::new();
        for entry in self.tree(RUNS).iter() {
            let (key, snapshot) = entry.map_err(io)?;
            if let Ok(run_id) = Uuid::from_slice(&key) {
                loaded.push(super::snapshot_only(run_id, &snapshot));
            }
        }
        Ok(loaded)
    }

    fn active_run_ids(&self) -> Result<Vec<Uuid>, Error> {
        let mut ids = Vec::new();
        for key in self.tree(ACTIVE).iter().keys() {
            if let Ok(run_id) = Uuid::from_slice(&key.map_err(io)?) {
                ids.push(run_id);
            }
        }
        Ok(ids)
    }

    fn find_runs(&self, prefix: &[u8], limit: usize) -> Result<Vec<Uuid>, Error> {
        let mut found = Vec::new();
        for entry in self.tree(RUNS).scan_prefix(prefix).keys().take(limit) {
            if let Ok(run_id) = Uuid::from_slice(&entry.map_err(io)?) {
                found.push(run_id);
            }
        }
        Ok(found)
    }

    fn events(&self, run_id: Uuid) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        for entry in self.tree(EVENTS).scan_prefix(run_id.as_bytes()) {
            let (key, bytes) = entry.map_err(io)?;
            let seq = u64::from_be_bytes(key[16..24].try_into().unwrap_or_default());
            events.push(decode_event(run_id, seq, &bytes)?);
        }
        Ok(events)
    }

    fn next_timer(&self) -> Result<Option<TimerKey>, Error> {
        Ok(self
            .tree(TIMERS)
            .first()
            .map_err(io)?
            .and_then(|(key, _)| TimerKey::decode(&key)))
    }

    fn due_timers(&self, until_ms: u64, limit: usize) -> Result<Vec<TimerKey>, Error> {
        let mut end = [0xffu8; TimerKey::LEN];
        end[..8].copy_from_slice(&until_ms.to_be_bytes());
        let mut due = Vec::new();
        for entry in self.tree(TIMERS).range(..=end.as_slice()).take(limit) {
            let (key, _) = entry.map_err(io)?;
            if let Some(key) = TimerKey::decode(&key) {
                due.push(key);
            }
        }
        Ok(due)
    }

    fn remove_timer(&self, key: &TimerKey) -> Result<(), Error> {
        self.tree(TIMERS).remove(key.encode()).map_err(io)?;
        Ok(())
    }

    fn lock_holder(&self, resource: &str) -> Result<Option<Uuid>, Error> {
        match self.tree(LOCKS).get(resource.as_bytes()).map_err(io)? {
            Some(bytes) => decode_value(&|| format!("locks/{resource}"), &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn verify(&self) -> Result<Vec<String>, Error> {
        let mut problems = Vec::new();
        for entry in self.tree(RUNS).iter() {
            let (key, snapshot) = entry.map_err(io)?;
            match Uuid::from_slice(&key) {
                Ok(run_id) => {
                    if let Err(error) = self.restore(run_id, &snapshot) {
                        problems.push(error.to_string());
                    }
                }
                Err(_) => problems.push(format!("runs/{key:?}: bad run id")),
            }
        }
        for entry in self.tree(EVENTS).iter() {
            let (key, bytes) = entry.map_err(io)?;
            if key.len() != 24 {
                problems.push(format!("events/{key:?}: bad key"));
                continue;
            }
            let run_id = Uuid::from_slice(&key[..16]).unwrap_or_default();
            let seq = u64::from_be_bytes(key[16..24].try_into().unwrap_or_default());
            if let Err(error) = decode_event(run_id, seq, &bytes) {
                problems.push(error.to_string());
            }
        }
        for entry in self.tree(LOCKS).iter() {
            let (key, bytes) = entry.map_err(io)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            if let Err(error) = check_envelope(&|| format!("locks/{name}"), &bytes) {
                problems.push(error.to_string());
            }
        }
        for entry in self.tree(TIMERS).iter() {
            let (key, _) = entry.map_err(io)?;
            if TimerKey::decode(&key).is_none() {
                problems.push(format!("timers/{key:?}: bad key"));
            }
        }
        for schedule in self.load_schedules()? {
            if let Err(error) = schedule {
                problems.push(error.to_string());
            }
        }
        Ok(problems)
    }

    fn apply_schedule(&self, commit: &ScheduleCommit) -> Result<(), Error> {
        self.change(|logged| {
            match &commit.value {
                Some(value) => logged.insert(SCHEDULES, commit.name.as_bytes(), value)?,
                None => logged.remove(SCHEDULES, commit.name.as_bytes())?,
            }
            for key in &commit.timers_remove {
                logged.remove(TIMERS, &key.encode())?;
            }
            for key in &commit.timers_add {
                logged.insert(TIMERS, &key.encode(), &[])?;
            }
            Ok(())
        })
    }

    fn load_schedules(&self) -> Result<Vec<Result<Schedule, Error>>, Error> {
        let mut loaded = Vec::new();
        for entry in self.tree(SCHEDULES).iter() {
            let (key, bytes) = entry.map_err(io)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            loaded.push(decode_value(&|| format!("schedules/{name}"), &bytes));
        }
        Ok(loaded)
    }
}
