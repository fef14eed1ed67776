//! The embedded default store, on sled 0.34. The only module that imports sled.
//!
//! Trees: `runs` (run_id → snapshot), `events` (run_id ‖ seq → event), `timers`
//! (fire_at_ms ‖ run_id ‖ timer → empty), `locks` (resource → run_id), `meta` (`format`).
//!
//! # Contract
//!
//! sled's `flush` writes its log with `sync_file_range`, which survives a process crash but not
//! a power cut, and it never fsyncs blob files. [`SledStore::sync`] therefore follows `flush`
//! with `fdatasync` of the log file and an fsync of any new blob file and of the blob directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ::sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use ::sled::{Db, Tree};
use uuid::Uuid;

use super::{
    check_envelope, decode_event, decode_value, encode_value, restore, Commit, Error, LoadedRun,
    ScheduleCommit, Store, TimerKey, FORMAT,
};
use crate::machine::{Event, RunState};
use crate::schedule::Schedule;

pub struct SledStore {
    db: Db,
    runs: Tree,
    events: Tree,
    timers: Tree,
    locks: Tree,
    schedules: Tree,
    meta: Tree,
    dir: PathBuf,
    log_file: File,
    blobs_seen: Mutex<Option<SystemTime>>,
}

fn io(error: impl std::fmt::Display) -> Error {
    let text = error.to_string();
    if text.contains("No space left") || text.contains("os error 28") {
        Error::Full(text)
    } else {
        Error::Io(text)
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|error| io(format!("cannot create {}: {error}", dir.display())))?;
        let db = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|error| {
                io(format!(
                    "cannot open the store in {}: {error}",
                    dir.display()
                ))
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(io);
        let store = SledStore {
            runs: tree("runs")?,
            events: tree("events")?,
            timers: tree("timers")?,
            locks: tree("locks")?,
            schedules: tree("schedules")?,
            meta: tree("meta")?,
            log_file: File::open(dir.join("db"))
                .map_err(|error| io(format!("cannot open {}/db: {error}", dir.display())))?,
            dir: dir.to_owned(),
            blobs_seen: Mutex::new(None),
            db,
        };
        store.check_format()?;
        store.sync()?;
        // The files sled just created must survive a power cut too.
        if let Ok(directory) = File::open(dir) {
            directory.sync_all().map_err(io)?;
        }
        Ok(store)
    }

    fn check_format(&self) -> Result<(), Error> {
        match self.meta.get("format").map_err(io)? {
            Some(bytes) => {
                let found: u32 = decode_value(&|| "meta/format".to_owned(), &bytes)?;
                if found > u32::from(FORMAT) {
                    return Err(Error::FormatTooNew {
                        found,
                        supported: u32::from(FORMAT),
                    });
                }
            }
            None => {
                self.meta
                    .insert("format", encode_value(&u32::from(FORMAT))?)
                    .map_err(io)?;
            }
        }
        Ok(())
    }

    fn event_key(run_id: Uuid, seq: u64) -> [u8; 24] {
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(run_id.as_bytes());
        key[16..].copy_from_slice(&seq.to_be_bytes());
        key
    }

    fn first_event(&self, run_id: Uuid) -> Result<Option<::sled::IVec>, Error> {
        self.events.get(Self::event_key(run_id, 1)).map_err(io)
    }

    fn sync_blobs(&self) -> Result<(), Error> {
        let blobs = self.dir.join("blobs");
        let Ok(modified) = std::fs::metadata(&blobs).and_then(|meta| meta.modified()) else {
            return Ok(());
        };
        let mut seen = self
            .blobs_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
}

impl Store for SledStore {
    fn apply(&self, commit: &Commit) -> Result<(), Error> {
        let result = (&self.runs, &self.events, &self.timers, &self.locks).transaction(
            |(runs, events, timers, locks)| {
                let abort = |error: Error| ConflictableTransactionError::Abort(error);
                // The journal must end exactly where the caller thinks it does.
                let next_taken = events
                    .get(Self::event_key(commit.run_id, commit.expected_seq + 1))?
                    .is_some();
                let last_present = commit.expected_seq == 0
                    || events
                        .get(Self::event_key(commit.run_id, commit.expected_seq))?
                        .is_some();
                if next_taken || !last_present {
                    return Err(abort(Error::Conflict {
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
                    if let Some(holder) = locks.get(resource.as_bytes())? {
                        let holder: Uuid = decode_value(&|| format!("locks/{resource}"), &holder)
                            .map_err(abort)?;
                        if holder != commit.run_id {
                            return Err(abort(Error::LockHeld {
                                resource: resource.clone(),
                                holder,
                            }));
                        }
                    }
                    locks.insert(
                        resource.as_bytes(),
                        encode_value(&commit.run_id).map_err(abort)?,
                    )?;
                }
                for resource in &commit.locks_release {
                    if let Some(holder) = locks.get(resource.as_bytes())? {
                        let holder: Result<Uuid, _> =
                            decode_value(&|| format!("locks/{resource}"), &holder);
                        if holder.map_or(true, |holder| holder == commit.run_id) {
                            locks.remove(resource.as_bytes())?;
                        }
                    }
                }
                for (seq, bytes) in &commit.events {
                    events.insert(&Self::event_key(commit.run_id, *seq), bytes.as_slice())?;
                }
                runs.insert(commit.run_id.as_bytes(), commit.snapshot.as_slice())?;
                for key in &commit.timers_remove {
                    timers.remove(&key.encode())?;
                }
                for key in &commit.timers_add {
                    timers.insert(&key.encode(), &[])?;
                }
                Ok(())
            },
        );
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(io(error)),
        }
    }

    fn sync(&self) -> Result<(), Error> {
        crate::failpoint::hit("BeforeFlush");
        self.db.flush().map_err(io)?;
        crate::failpoint::hit("AfterFlushBeforeFsync");
        self.log_file.sync_data().map_err(io)?;
        self.sync_blobs()
    }

    fn load_runs(&self) -> Result<Vec<LoadedRun>, Error> {
        let mut loaded = Vec::new();
        for entry in self.runs.iter() {
            let (key, snapshot) = entry.map_err(io)?;
            let Ok(run_id) = Uuid::from_slice(&key) else {
                loaded.push(Err((
                    Uuid::nil(),
                    Error::Corrupt {
                        key: format!("runs/{key:?}"),
                        reason: "bad run id".to_owned(),
                    },
                )));
                continue;
            };
            let first = self.first_event(run_id)?;
            loaded.push(
                restore(run_id, &snapshot, first.as_deref()).map_err(|error| (run_id, error)),
            );
        }
        Ok(loaded)
    }

    fn load_run(&self, run_id: Uuid) -> Result<Option<RunState>, Error> {
        let Some(snapshot) = self.runs.get(run_id.as_bytes()).map_err(io)? else {
            return Ok(None);
        };
        let first = self.first_event(run_id)?;
        restore(run_id, &snapshot, first.as_deref()).map(Some)
    }

    fn events(&self, run_id: Uuid) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        for entry in self.events.scan_prefix(run_id.as_bytes()) {
            let (key, bytes) = entry.map_err(io)?;
            let seq = u64::from_be_bytes(key[16..24].try_into().unwrap_or_default());
            events.push(decode_event(run_id, seq, &bytes)?);
        }
        Ok(events)
    }

    fn next_timer(&self) -> Result<Option<TimerKey>, Error> {
        Ok(self
            .timers
            .first()
            .map_err(io)?
            .and_then(|(key, _)| TimerKey::decode(&key)))
    }

    fn due_timers(&self, until_ms: u64, limit: usize) -> Result<Vec<TimerKey>, Error> {
        let mut end = [0xffu8; TimerKey::LEN];
        end[..8].copy_from_slice(&until_ms.to_be_bytes());
        let mut due = Vec::new();
        for entry in self.timers.range(..=end.as_slice()).take(limit) {
            let (key, _) = entry.map_err(io)?;
            if let Some(key) = TimerKey::decode(&key) {
                due.push(key);
            }
        }
        Ok(due)
    }

    fn remove_timer(&self, key: &TimerKey) -> Result<(), Error> {
        self.timers.remove(key.encode()).map_err(io)?;
        Ok(())
    }

    fn lock_holder(&self, resource: &str) -> Result<Option<Uuid>, Error> {
        match self.locks.get(resource.as_bytes()).map_err(io)? {
            Some(bytes) => decode_value(&|| format!("locks/{resource}"), &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn verify(&self) -> Result<Vec<String>, Error> {
        let mut problems = Vec::new();
        for entry in self.runs.iter() {
            let (key, snapshot) = entry.map_err(io)?;
            match Uuid::from_slice(&key) {
                Ok(run_id) => {
                    let first = self.first_event(run_id)?;
                    if let Err(error) = restore(run_id, &snapshot, first.as_deref()) {
                        problems.push(error.to_string());
                    }
                }
                Err(_) => problems.push(format!("runs/{key:?}: bad run id")),
            }
        }
        for entry in self.events.iter() {
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
        for entry in self.locks.iter() {
            let (key, bytes) = entry.map_err(io)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            if let Err(error) = check_envelope(&|| format!("locks/{name}"), &bytes) {
                problems.push(error.to_string());
            }
        }
        for entry in self.timers.iter() {
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
        let result = (&self.schedules, &self.timers).transaction(|(schedules, timers)| {
            match &commit.value {
                Some(value) => schedules.insert(commit.name.as_bytes(), value.as_slice())?,
                None => schedules.remove(commit.name.as_bytes())?,
            };
            for key in &commit.timers_remove {
                timers.remove(&key.encode())?;
            }
            for key in &commit.timers_add {
                timers.insert(&key.encode(), &[])?;
            }
            Ok::<(), ConflictableTransactionError<Error>>(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(io(error)),
        }
    }

    fn load_schedules(&self) -> Result<Vec<Result<Schedule, Error>>, Error> {
        let mut loaded = Vec::new();
        for entry in self.schedules.iter() {
            let (key, bytes) = entry.map_err(io)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            loaded.push(decode_value(&|| format!("schedules/{name}"), &bytes));
        }
        Ok(loaded)
    }
}
