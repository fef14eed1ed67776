//! The embedded default: [`Tables`] on sled 0.34 behind a write-ahead log. The only module that
//! imports sled.
//!
//! # Contract
//!
//! [`SledTables::write`] appends the batch to the write-ahead log ([`super::wal`]) as one record
//! and `fdatasync`s it, and only then applies it to sled (in memory; sled writes its buffers
//! whenever it likes). So sled never holds a change whose record is not durable, and opening
//! the store replays every record since the last checkpoint over whatever part of them sled had
//! written: each batch is on disk whole or not at all. sled is flushed (its log `fdatasync`ed,
//! new blob files fsynced) only at a checkpoint: at open after replaying the log, at shutdown,
//! and when the log segment passes [`wal::CHECKPOINT_BYTES`]. That last one runs beside the
//! commits, not in their way: the writer only starts a fresh log segment (keeping the old
//! ones), and a thread of its own flushes sled — which makes durable everything applied before
//! the flush began, so every record of the old segments — and only then deletes them. A crash
//! before that leaves old and new segments, and replay reads them all in order.

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use ::sled::{Db, Tree as SledTree};

use super::journal::Journal;
use super::tables::{Op, Scan, Tables, Tree};
use super::wal::{self, Wal};
use super::Error;

/// The embedded store.
pub type SledStore = Journal<SledTables>;

pub struct SledTables {
    /// Indexed by [`Tree::code`].
    trees: Vec<SledTree>,
    durable: Arc<Durable>,
    wal: Mutex<Wal>,
    /// A log write failed: the log's end is unknown, so nothing more is written to it and sled
    /// is never checkpointed; the store must be opened again.
    failed: AtomicBool,
    /// The checkpoint running beside the commits, if one is.
    background: Mutex<Option<JoinHandle<()>>>,
}

/// What making sled durable needs; shared with the background checkpoint.
struct Durable {
    db: Db,
    dir: PathBuf,
    log_file: File,
    blobs_seen: Mutex<Option<SystemTime>>,
}

impl Durable {
    /// sled durable as it is now: everything applied to it before this call, on disk.
    fn flush(&self) -> Result<(), Error> {
        let context = format!("cannot checkpoint the store in {}", self.dir.display());
        self.db
            .flush()
            .map_err(|error| sled_error(&context, error))?;
        self.log_file
            .sync_data()
            .map_err(|error| Error::io(&context, &error))?;
        sync_blobs(&self.dir, &self.blobs_seen)
    }
}

fn sled_error(context: &str, error: ::sled::Error) -> Error {
    match error {
        ::sled::Error::Io(error) => Error::io(context, &error),
        other => Error::io(context, &std::io::Error::other(other.to_string())),
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`: replays its write-ahead log, upgrades an older
    /// layout, checks (and repairs) the derived indexes.
    pub fn open(dir: &Path) -> Result<SledStore, Error> {
        Journal::open_over(SledTables::open(dir)?, Some(&dir.join("archive")), true)
    }

    /// Opens the store (replaying its log) without repairing its derived indexes: for
    /// `store verify`, which reports them.
    pub fn open_unrepaired(dir: &Path) -> Result<SledStore, Error> {
        Journal::open_over(SledTables::open(dir)?, Some(&dir.join("archive")), false)
    }
}

impl SledTables {
    fn open(dir: &Path) -> Result<SledTables, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|error| Error::io(&format!("cannot create {}", dir.display()), &error))?;
        let context = format!("cannot open the store in {}", dir.display());
        let db = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(|error| sled_error(&context, error))?;
        let mut trees = Vec::with_capacity(Tree::ALL.len());
        for tree in Tree::ALL {
            trees.push(
                db.open_tree(tree.name())
                    .map_err(|error| sled_error(&context, error))?,
            );
        }
        let wal_dir = dir.join("wal");
        let (records, last_lsn) = Wal::read(&wal_dir, 0)
            .map_err(|error| Error::io(&format!("cannot read {}", wal_dir.display()), &error))?;
        for (_, ops) in &records {
            apply(&trees, ops).map_err(|error| sled_error(&context, error))?;
        }
        if !records.is_empty() {
            tracing::info!(records = records.len(), "replayed the write-ahead log");
        }
        let log_file = File::open(dir.join("db"))
            .map_err(|error| Error::io(&format!("cannot open {}/db", dir.display()), &error))?;
        // A checkpoint: sled durable as it is now (the replayed records included), then a
        // fresh segment replaces the replayed ones.
        let blobs_seen = Mutex::new(None);
        db.flush().map_err(|error| sled_error(&context, error))?;
        log_file
            .sync_data()
            .map_err(|error| Error::io(&context, &error))?;
        sync_blobs(dir, &blobs_seen)?;
        let wal = Wal::create(&wal_dir, last_lsn + 1)
            .map_err(|error| Error::io(&format!("cannot start {}", wal_dir.display()), &error))?;
        let tables = SledTables {
            durable: Arc::new(Durable {
                log_file,
                dir: dir.to_owned(),
                blobs_seen,
                db,
            }),
            wal: Mutex::new(wal),
            failed: AtomicBool::new(false),
            background: Mutex::new(None),
            trees,
        };
        // The files sled just created must survive a power cut too.
        File::open(dir)
            .and_then(|directory| directory.sync_all())
            .map_err(|error| Error::io(&format!("cannot sync {}", dir.display()), &error))?;
        Ok(tables)
    }

    fn tree(&self, tree: Tree) -> &SledTree {
        &self.trees[usize::from(tree.code())]
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        self.wal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes sled durable as it is, then starts a fresh log segment (dropping the old ones).
    fn checkpoint_with(&self, wal: &mut Wal) -> Result<(), Error> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::io(
                "checkpoint",
                &std::io::Error::other("the store failed a write; it must be reopened"),
            ));
        }
        self.durable.flush()?;
        let wal_dir = self.durable.dir.join("wal");
        *wal = Wal::create(&wal_dir, wal.next_lsn())
            .map_err(|error| Error::io(&format!("cannot start {}", wal_dir.display()), &error))?;
        Ok(())
    }

    /// Starts a checkpoint that does not hold the commits up: a fresh log segment now (the
    /// old ones kept), sled flushed and the old segments deleted by a thread of its own. One
    /// at a time: while one runs, the log grows.
    fn checkpoint_beside(&self, wal: &mut Wal) {
        let mut background = self
            .background
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if background
            .as_ref()
            .is_some_and(|running| !running.is_finished())
        {
            return;
        }
        if let Some(done) = background.take() {
            let _ = done.join();
        }
        let wal_dir = self.durable.dir.join("wal");
        let old = match Wal::rotate(&wal_dir, wal.next_lsn()) {
            Ok((fresh, old)) => {
                *wal = fresh;
                old
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start a new log segment; the log keeps growing until a checkpoint succeeds");
                return;
            }
        };
        let durable = self.durable.clone();
        let checkpoint = move || match durable.flush() {
            Ok(()) => {
                // A crash here leaves the old segments beside the new one: replay reads them all.
                crate::failpoint::hit(crate::failpoint::Failpoint::CheckpointNewSegment);
                if let Err(error) = wal::remove_segments(&wal_dir, &old) {
                    tracing::warn!(%error, "cannot delete checkpointed log segments; the next checkpoint does");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "checkpoint failed; the log keeps growing until one succeeds");
            }
        };
        match std::thread::Builder::new()
            .name("checkpoint".to_owned())
            .spawn(checkpoint)
        {
            Ok(handle) => *background = Some(handle),
            Err(error) => {
                tracing::warn!(%error, "cannot start the checkpoint thread; the log keeps growing until one succeeds");
            }
        }
    }

    /// Waits for the checkpoint running beside the commits, if any.
    fn join_background(&self) {
        let running = self
            .background
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(running) = running {
            let _ = running.join();
        }
    }
}

/// Applies a durable batch to sled's trees (memory; sled writes it out when it likes).
fn apply(trees: &[SledTree], ops: &[Op]) -> Result<(), ::sled::Error> {
    for op in ops {
        let tree = &trees[usize::from(op.tree.code())];
        match &op.value {
            Some(value) => {
                tree.insert(op.key.as_slice(), value.as_slice())?;
            }
            None => {
                tree.remove(op.key.as_slice())?;
            }
        }
    }
    Ok(())
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
    let context = format!("cannot sync {}", blobs.display());
    let sync = || -> std::io::Result<()> {
        for entry in std::fs::read_dir(&blobs)?.flatten() {
            if let Ok(file) = File::open(entry.path()) {
                file.sync_all()?;
            }
        }
        File::open(&blobs)?.sync_all()
    };
    sync().map_err(|error| Error::io(&context, &error))?;
    *seen = Some(modified);
    Ok(())
}

/// sled's page cache: enough for the runs being worked on; the rest is read from disk.
const CACHE_BYTES: u64 = 32 << 20;

impl Drop for SledTables {
    fn drop(&mut self) {
        // Leaves nothing to replay at the next open (unless a write failed).
        self.join_background();
        if !self.failed.load(Ordering::SeqCst) {
            let mut wal = self.wal();
            if let Err(error) = self.checkpoint_with(&mut wal) {
                tracing::warn!(%error, "no checkpoint at close; the next open replays the log");
            }
        }
    }
}

impl Tables for SledTables {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.tree(tree)
            .get(key)
            .map(|value| value.map(|value| value.to_vec()))
            .map_err(|error| sled_error(&format!("cannot read {}", tree.name()), error))
    }

    fn scan(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        let own = |bound: Bound<&[u8]>| match bound {
            Bound::Included(key) => Bound::Included(key.to_vec()),
            Bound::Excluded(key) => Bound::Excluded(key.to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let range = self.tree(tree).range::<Vec<u8>, _>((own(from), own(to)));
        let entries = move |entry: Result<(::sled::IVec, ::sled::IVec), ::sled::Error>| {
            entry
                .map(|(key, value)| (key.to_vec(), value.to_vec()))
                .map_err(|error| sled_error(&format!("cannot read {}", tree.name()), error))
        };
        if reverse {
            Box::new(range.rev().map(entries))
        } else {
            Box::new(range.map(entries))
        }
    }

    fn write(&self, ops: &[Op]) -> Result<(), Error> {
        // (Checked first: a sync with nothing left to write must not report success after a
        // failed write took its batch.)
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::io(
                "write",
                &std::io::Error::other("the store failed a write; it must be reopened"),
            ));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let mut wal = self.wal();
        let context = format!(
            "cannot write the store's log in {}",
            self.durable.dir.display()
        );
        let size = match wal.append(ops) {
            Ok(size) => size,
            Err(error) => {
                self.failed.store(true, Ordering::SeqCst);
                return Err(Error::io(&context, &error));
            }
        };
        // Durable: now sled may see it (and write it out whenever it likes).
        crate::failpoint::hit(crate::failpoint::Failpoint::LogDurableBeforeApply);
        if let Err(error) = apply(&self.trees, ops) {
            // sled holds part of a durable batch: reopening replays the log and completes it.
            self.failed.store(true, Ordering::SeqCst);
            return Err(sled_error("cannot apply a durable batch to sled", error));
        }
        if size > wal::CHECKPOINT_BYTES {
            // The batch is durable in the log whatever happens here; a failed checkpoint only
            // leaves more to replay at the next open.
            self.checkpoint_beside(&mut wal);
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), Error> {
        self.join_background();
        let mut wal = self.wal();
        self.checkpoint_with(&mut wal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }

    fn wal_segments(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .and_then(|ext| ext.to_str())
                    == Some("log")
            })
            .count()
    }

    /// Past the checkpoint size the commits go on into a fresh segment while sled is flushed
    /// beside them; the old segment goes once sled is durable, and nothing is lost.
    #[test]
    fn a_checkpoint_beside_the_commits_keeps_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let value = vec![7u8; 1 << 20];
        let writes = (wal::CHECKPOINT_BYTES >> 20) + 8;
        {
            let tables = SledTables::open(&store).unwrap();
            for index in 0..writes {
                let op = Op {
                    tree: Tree::Meta,
                    key: format!("k{index:03}").into_bytes(),
                    value: Some(value.clone()),
                };
                tables.write(&[op]).unwrap();
            }
            tables.join_background();
            assert_eq!(
                wal_segments(&store),
                1,
                "the checkpointed segment is deleted"
            );
            // A crash now (a copy of the files, no checkpoint at close): the new segment holds
            // what sled may not have written.
            copy_dir(&store, &dir.path().join("crashed"));
        }
        let tables = SledTables::open(&dir.path().join("crashed")).unwrap();
        for index in 0..writes {
            let key = format!("k{index:03}");
            assert_eq!(
                tables.get(Tree::Meta, key.as_bytes()).unwrap().as_deref(),
                Some(value.as_slice()),
                "{key}"
            );
        }
    }
}
