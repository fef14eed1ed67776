//! The commit rules, written once for every [`Tables`]: what a run commit checks and changes,
//! the derived indexes (locks, timers, `active`, listings, counters) and how they heal, reads,
//! retention.
//!
//! # Contract
//!
//! - [`Journal::apply_many`] checks each commit against the tables *and the commits applied
//!   before it that are not synced yet*, and stages its changes in memory; a refused commit
//!   stages nothing. Nothing reaches the tables before [`Journal::sync`], which hands every
//!   staged change to [`Tables::write`] as one batch: durable before visible, all or nothing.
//!   So readers never see a commit that is not durable, and a crash leaves exactly the synced
//!   batches.
//! - Only the writer thread applies and syncs, so a commit's checks and its changes see no
//!   other writer.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use uuid::Uuid;

use super::archive::{self, Archive, ArchivedRun, Pointer, Record};
use super::fold;
use super::listing::{self, Counts, ListQuery, Listing, Page};
use super::tables::{scan_prefix, Op, Tables, Tree};
use super::{
    decode_event, decode_value, encode_value, restore, Commit, Error, Expired, ScheduleCommit,
    Store, TimerKey, STORE_FORMAT,
};
use crate::machine::{Event, RunState};
use crate::schedule::Schedule;

/// A [`Store`] over any [`Tables`].
pub struct Journal<T: Tables> {
    tables: T,
    /// Where finished runs are moved (`archive.rs`); none for a store in memory.
    archive: Option<Archive>,
    staged: Mutex<Staged>,
}

/// Changes applied but not yet synced: in order, and by key for the checks of later commits.
#[derive(Default)]
struct Staged {
    ops: Vec<Op>,
    latest: HashMap<(Tree, Vec<u8>), Option<Vec<u8>>>,
}

/// One commit's view: the tables, what earlier commits staged, and its own changes.
struct Tx<'a> {
    tables: &'a dyn Tables,
    archive: Option<&'a Archive>,
    staged: &'a Staged,
    ops: Vec<Op>,
    latest: HashMap<(Tree, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Tx<'a> {
    fn new(tables: &'a dyn Tables, archive: Option<&'a Archive>, staged: &'a Staged) -> Tx<'a> {
        Tx {
            tables,
            archive,
            staged,
            ops: Vec::new(),
            latest: HashMap::new(),
        }
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let lookup = (tree, key.to_vec());
        if let Some(value) = self.latest.get(&lookup) {
            return Ok(value.clone());
        }
        if let Some(value) = self.staged.latest.get(&lookup) {
            return Ok(value.clone());
        }
        self.tables.get(tree, key)
    }

    fn put(&mut self, tree: Tree, key: Vec<u8>, value: Vec<u8>) {
        self.latest.insert((tree, key.clone()), Some(value.clone()));
        self.ops.push(Op {
            tree,
            key,
            value: Some(value),
        });
    }

    fn delete(&mut self, tree: Tree, key: Vec<u8>) {
        self.latest.insert((tree, key.clone()), None);
        self.ops.push(Op {
            tree,
            key,
            value: None,
        });
    }

    fn counts(&self) -> Result<Counts, Error> {
        match self.get(Tree::Meta, b"counts")? {
            Some(bytes) => decode_value(&|| "meta/counts".to_owned(), &bytes),
            None => Ok(Counts::default()),
        }
    }

    fn put_counts(&mut self, counts: &Counts) -> Result<(), Error> {
        self.put(Tree::Meta, b"counts".to_vec(), encode_value(counts)?);
        Ok(())
    }

    /// Adds or removes a timer index entry, keeping the counter.
    fn timer(&mut self, counts: &mut Counts, key: &TimerKey, present: bool) -> Result<(), Error> {
        let bytes = key.encode().to_vec();
        let was = self.get(Tree::Timers, &bytes)?.is_some();
        match (was, present) {
            (false, true) => {
                self.put(Tree::Timers, bytes, Vec::new());
                counts.timers += 1;
            }
            (true, false) => {
                self.delete(Tree::Timers, bytes);
                counts.timers = counts.timers.saturating_sub(1);
            }
            _ => {}
        }
        Ok(())
    }

    /// Stores a run's listing line and moves its index entries (state, runbook, finish time).
    fn listing(
        &mut self,
        counts: &mut Counts,
        run_id: Uuid,
        new: Option<&Listing>,
    ) -> Result<(), Error> {
        let old = self.listed(run_id)?;
        if old.as_ref() == new {
            return Ok(());
        }
        if let Some(old) = &old {
            if new.is_none_or(|new| new.state != old.state) {
                self.delete(Tree::ByState, listing::name_key(&old.state, run_id));
                let count = counts.runs.entry(old.state.clone()).or_default();
                *count = count.saturating_sub(1);
            }
            if new.is_none() {
                self.delete(Tree::ByRunbook, listing::name_key(&old.runbook, run_id));
            }
            if let Some(finished_at) = old.finished_at {
                if new.is_none_or(|new| new.finished_at != old.finished_at) {
                    self.delete(Tree::Finished, listing::finished_key(finished_at, run_id));
                }
            }
        }
        let Some(new) = new else {
            self.delete(Tree::Listings, run_id.as_bytes().to_vec());
            return Ok(());
        };
        if old.as_ref().is_none_or(|old| old.state != new.state) {
            self.put(
                Tree::ByState,
                listing::name_key(&new.state, run_id),
                Vec::new(),
            );
            *counts.runs.entry(new.state.clone()).or_default() += 1;
        }
        if old.is_none() {
            self.put(
                Tree::ByRunbook,
                listing::name_key(&new.runbook, run_id),
                Vec::new(),
            );
        }
        if let Some(finished_at) = new.finished_at {
            if old
                .as_ref()
                .is_none_or(|old| old.finished_at != new.finished_at)
            {
                self.put(
                    Tree::Finished,
                    listing::finished_key(finished_at, run_id),
                    Vec::new(),
                );
            }
        }
        self.put(
            Tree::Listings,
            run_id.as_bytes().to_vec(),
            encode_value(new)?,
        );
        Ok(())
    }

    fn listed(&self, run_id: Uuid) -> Result<Option<Listing>, Error> {
        match self.get(Tree::Listings, run_id.as_bytes())? {
            // A line that does not decode is rewritten (it is derived from the run).
            Some(bytes) => Ok(decode_value(&|| format!("listings/{run_id}"), &bytes).ok()),
            None => Ok(None),
        }
    }

    fn lock_holder(&self, resource: &str) -> Result<Option<Uuid>, Error> {
        match self.get(Tree::Locks, resource.as_bytes())? {
            Some(bytes) => decode_value(&|| format!("locks/{resource}"), &bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// The rules of one run commit (see [`Store::apply`]). Checks first: a refused commit returns
/// before it changes anything.
fn run_commit(tx: &mut Tx<'_>, commit: &Commit) -> Result<(), Error> {
    let id = commit.run_id;
    if tx.get(Tree::Archived, id.as_bytes())?.is_some() {
        if commit.expected_seq == 0 {
            // A new run's id must be unused.
            return Err(Error::Conflict {
                run_id: id,
                expected: 0,
                found: 1,
            });
        }
        // A finished run changes again (a rollback reopens it): its records come back into
        // the tables first, and the commit's checks read them there.
        unarchive(tx, id)?;
    }
    // The journal must end exactly where the caller thinks it does.
    // (A new run's id must be unused: its first event may be folded away.)
    let next_taken = tx
        .get(Tree::Events, &event_key(id, commit.expected_seq + 1))?
        .is_some()
        || (commit.expected_seq == 0 && tx.get(Tree::Folded, id.as_bytes())?.is_some());
    let last_present = commit.expected_seq == 0
        || tx
            .get(Tree::Events, &event_key(id, commit.expected_seq))?
            .is_some();
    if next_taken || !last_present {
        return Err(Error::Conflict {
            run_id: id,
            expected: commit.expected_seq,
            found: if next_taken {
                commit.expected_seq + 1
            } else {
                0
            },
        });
    }
    for resource in &commit.locks_acquire {
        if let Some(holder) = tx.lock_holder(resource)? {
            if holder != id {
                return Err(Error::LockHeld {
                    resource: resource.clone(),
                    holder,
                });
            }
        }
    }
    for claim in &commit.claims {
        if let Some(bytes) = tx.get(Tree::Claims, claim.as_bytes())? {
            let holder: Uuid = decode_value(&|| format!("claims/{claim}"), &bytes)?;
            if holder != id {
                return Err(Error::Claimed {
                    claim: claim.clone(),
                    holder,
                });
            }
        }
    }
    let owner = encode_value(&id)?;
    for resource in &commit.locks_acquire {
        tx.put(Tree::Locks, resource.as_bytes().to_vec(), owner.clone());
    }
    for claim in &commit.claims {
        tx.put(Tree::Claims, claim.as_bytes().to_vec(), owner.clone());
    }
    for resource in &commit.locks_release {
        if let Some(holder) = tx.get(Tree::Locks, resource.as_bytes())? {
            let holder: Result<Uuid, _> = decode_value(&|| format!("locks/{resource}"), &holder);
            if holder.map_or(true, |holder| holder == id) {
                tx.delete(Tree::Locks, resource.as_bytes().to_vec());
            }
        }
    }
    for (seq, bytes) in &commit.events {
        tx.put(Tree::Events, event_key(id, *seq).to_vec(), bytes.clone());
    }
    if let Some(snapshot) = &commit.snapshot {
        tx.put(Tree::Runs, id.as_bytes().to_vec(), snapshot.clone());
        // Superseded poll rounds: history the snapshot makes redundant. Never the first
        // event, never one after the journal's end as the caller knew it.
        for seq in &commit.forget_events {
            if *seq > 1 && *seq < commit.expected_seq {
                tx.delete(Tree::Events, event_key(id, *seq).to_vec());
            }
        }
        if commit.listing.is_finished() {
            let last = commit
                .events
                .last()
                .map_or(commit.expected_seq, |(seq, _)| *seq);
            fold_journal(tx, id, last)?;
        }
    }
    let active = tx.get(Tree::Active, id.as_bytes())?.is_some();
    if commit.parked && active {
        tx.delete(Tree::Active, id.as_bytes().to_vec());
    } else if !commit.parked && !active {
        tx.put(Tree::Active, id.as_bytes().to_vec(), Vec::new());
    }
    let mut counts = tx.counts()?;
    let before = counts.clone();
    for key in &commit.timers_remove {
        tx.timer(&mut counts, key, false)?;
    }
    for key in &commit.timers_add {
        tx.timer(&mut counts, key, true)?;
    }
    tx.listing(&mut counts, id, Some(&commit.listing))?;
    if counts != before {
        tx.put_counts(&counts)?;
    }
    Ok(())
}

/// Folds a finished run's events but the last (`last`) into its folded record (see `fold.rs`),
/// with those it already holds, when the journal is small enough. The commit storing the run's
/// final snapshot calls it, so a read needs none of the folded events but the first (the
/// definition).
fn fold_journal(tx: &mut Tx<'_>, run_id: Uuid, last: u64) -> Result<(), Error> {
    if last > fold::MAX_EVENTS {
        return Ok(());
    }
    let mut events = match tx.get(Tree::Folded, run_id.as_bytes())? {
        Some(record) => fold::decode(run_id, &record)?,
        None => Vec::new(),
    };
    let from = events.last().map_or(1, |(seq, _)| seq + 1);
    let mut bytes: usize = events.iter().map(|(_, event)| event.len()).sum();
    let mut folded = Vec::new();
    // By key, through this commit's and the batch's changes (a forgotten poll round is gone).
    for seq in from..last {
        if let Some(event) = tx.get(Tree::Events, &event_key(run_id, seq))? {
            bytes += event.len();
            if bytes > fold::MAX_BYTES {
                return Ok(());
            }
            events.push((seq, event));
            folded.push(seq);
        }
    }
    if folded.is_empty() {
        return Ok(());
    }
    tx.put(
        Tree::Folded,
        run_id.as_bytes().to_vec(),
        fold::encode(&events)?,
    );
    for seq in folded {
        tx.delete(Tree::Events, event_key(run_id, seq).to_vec());
    }
    Ok(())
}

fn schedule_commit(tx: &mut Tx<'_>, commit: &ScheduleCommit) -> Result<(), Error> {
    match &commit.value {
        Some(value) => tx.put(
            Tree::Schedules,
            commit.name.as_bytes().to_vec(),
            value.clone(),
        ),
        None => tx.delete(Tree::Schedules, commit.name.as_bytes().to_vec()),
    }
    let mut counts = tx.counts()?;
    let before = counts.clone();
    for key in &commit.timers_remove {
        tx.timer(&mut counts, key, false)?;
    }
    for key in &commit.timers_add {
        tx.timer(&mut counts, key, true)?;
    }
    if counts != before {
        tx.put_counts(&counts)?;
    }
    Ok(())
}

/// Puts an archived run's records back into the tables and drops its pointer.
fn unarchive(tx: &mut Tx<'_>, run_id: Uuid) -> Result<(), Error> {
    let Some(bytes) = tx.get(Tree::Archived, run_id.as_bytes())? else {
        return Ok(());
    };
    let pointer = Pointer::decode(run_id, &bytes)?;
    let archive = tx.archive.ok_or_else(|| Error::Corrupt {
        key: format!("archived/{run_id}"),
        reason: "the run is archived, but this store has no archive".to_owned(),
    })?;
    // The records first, then the pointer goes: a reader always finds one or the other.
    for (tree, key, value) in archive.read(run_id, &pointer)? {
        tx.put(tree, key, value);
    }
    tx.delete(Tree::Archived, run_id.as_bytes().to_vec());
    segment_count(tx, pointer.segment, -1)
}

/// Moves one prepared run out of the tables, if its records are still exactly those archived
/// (nothing changed it since: no late event, no rollback) and it is still finished. Returns
/// whether it was moved.
fn archive_run(tx: &mut Tx<'_>, run: &ArchivedRun) -> Result<bool, Error> {
    let id = run.run_id;
    if !tx.listed(id)?.is_some_and(|line| line.is_finished())
        || tx.get(Tree::Archived, id.as_bytes())?.is_some()
        || tx.get(Tree::Runs, id.as_bytes())?.is_none()
    {
        return Ok(false);
    }
    let mut last = 0;
    for (tree, key, value) in &run.records {
        if tx.get(*tree, key)?.as_ref() != Some(value) {
            return Ok(false);
        }
        if *tree == Tree::Events {
            last = last.max(event_seq(key));
        }
    }
    // Nothing appended after the journal's end as it was archived.
    if tx.get(Tree::Events, &event_key(id, last + 1))?.is_some() {
        return Ok(false);
    }
    // The pointer first, then the deletes (the tables apply a batch in order): a reader that
    // finds no pointer after reading the records read them whole (see `load_run`).
    tx.put(Tree::Archived, id.as_bytes().to_vec(), run.pointer.encode());
    for (tree, key, _) in &run.records {
        tx.delete(*tree, key.clone());
    }
    segment_count(tx, run.pointer.segment, 1)?;
    Ok(true)
}

/// Moves a segment's pointer count by `by`; a count of zero is no key at all (the segment
/// file is then garbage: see [`Store::archive_tidy`]).
fn segment_count(tx: &mut Tx<'_>, segment: u32, by: i64) -> Result<(), Error> {
    let key = archive::count_key(segment);
    let count: u64 = match tx.get(Tree::Meta, &key)? {
        Some(bytes) => decode_value(&|| format!("meta/archive/{segment}"), &bytes)?,
        None => 0,
    };
    let count = count.saturating_add_signed(by);
    if count == 0 {
        tx.delete(Tree::Meta, key);
    } else {
        tx.put(Tree::Meta, key, encode_value(&count)?);
    }
    Ok(())
}

/// Deletes a finished run whole: its snapshot, events, listing and index entries, its pointer
/// into the archive. A run that is not finished (or no longer exists) is left alone; returns
/// whether it was deleted.
fn collect_run(tx: &mut Tx<'_>, run_id: Uuid) -> Result<bool, Error> {
    let Some(listed) = tx.listed(run_id)? else {
        return Ok(false);
    };
    if !listed.is_finished() {
        return Ok(false);
    }
    let mut counts = tx.counts()?;
    tx.listing(&mut counts, run_id, None)?;
    tx.put_counts(&counts)?;
    tx.delete(Tree::Runs, run_id.as_bytes().to_vec());
    tx.delete(Tree::Folded, run_id.as_bytes().to_vec());
    tx.delete(Tree::Active, run_id.as_bytes().to_vec());
    if let Some(bytes) = tx.get(Tree::Archived, run_id.as_bytes())? {
        // (A pointer that does not decode is dropped all the same; its segment's count is
        // then one too high, which keeps the file: never the other way round.)
        tx.delete(Tree::Archived, run_id.as_bytes().to_vec());
        if let Ok(pointer) = Pointer::decode(run_id, &bytes) {
            segment_count(tx, pointer.segment, -1)?;
        }
        return Ok(true);
    }
    let events: Vec<Vec<u8>> = scan_prefix(tx.tables, Tree::Events, run_id.as_bytes(), false)
        .map(|entry| entry.map(|(key, _)| key))
        .collect::<Result<_, _>>()?;
    for key in events {
        tx.delete(Tree::Events, key);
    }
    Ok(true)
}

/// An archived run's events, ascending: the folded ones, then the keyed ones.
fn archived_events(run_id: Uuid, records: &[Record]) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let mut events = match records.iter().find(|(tree, _, _)| *tree == Tree::Folded) {
        Some((_, _, record)) => fold::decode(run_id, record)?,
        None => Vec::new(),
    };
    let mut keyed: Vec<(u64, Vec<u8>)> = records
        .iter()
        .filter(|(tree, _, _)| *tree == Tree::Events)
        .map(|(_, key, value)| (event_seq(key), value.clone()))
        .collect();
    keyed.sort_by_key(|(seq, _)| *seq);
    events.extend(keyed);
    Ok(events)
}

pub(crate) fn event_key(run_id: Uuid, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(run_id.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn event_seq(key: &[u8]) -> u64 {
    key.get(16..24)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl<T: Tables> Journal<T> {
    /// A journal over empty or current tables (no format check, no repair: for tests).
    pub fn over(tables: T) -> Journal<T> {
        Journal {
            tables,
            archive: None,
            staged: Mutex::new(Staged::default()),
        }
    }

    /// The tables, giving up the journal.
    pub fn into_tables(self) -> T {
        self.tables
    }

    /// A journal over tables read from disk: refuses a newer layout, upgrades an older one,
    /// and checks the derived indexes against the runs, repairing what does not match.
    /// With `archive`, finished runs are moved to segment files in that directory (and, with
    /// `repair`, segment files no pointer names are deleted).
    pub fn open_over(
        tables: T,
        archive: Option<&std::path::Path>,
        repair: bool,
    ) -> Result<Journal<T>, Error> {
        let mut journal = Journal::over(tables);
        let found = match journal.tables.get(Tree::Meta, b"format")? {
            Some(bytes) => decode_value::<u32>(&|| "meta/format".to_owned(), &bytes)?,
            None if journal.is_empty()? => {
                journal.write_now(vec![Op {
                    tree: Tree::Meta,
                    key: b"format".to_vec(),
                    value: Some(encode_value(&STORE_FORMAT)?),
                }])?;
                STORE_FORMAT
            }
            None => 1,
        };
        if found > STORE_FORMAT {
            return Err(Error::FormatTooNew {
                found,
                supported: STORE_FORMAT,
            });
        }
        if found < STORE_FORMAT {
            journal.upgrade(found)?;
        }
        if repair {
            let repaired = journal.check_indexes_of(true, false)?;
            for problem in &repaired {
                tracing::warn!(%problem, "repaired a derived index of the store");
            }
        }
        if let Some(dir) = archive {
            let known: Vec<u32> = journal
                .segment_counts()?
                .into_iter()
                .map(|(segment, _)| segment)
                .collect();
            journal.archive = Some(Archive::open(dir, &known)?);
            if repair {
                let freed = journal.archive_tidy(true)?;
                if freed > 0 {
                    tracing::info!(bytes = freed, "removed archive segments no run is in");
                }
            }
        }
        Ok(journal)
    }

    /// The archive's segments that runs are in, with how many.
    fn segment_counts(&self) -> Result<Vec<(u32, u64)>, Error> {
        let mut counts = Vec::new();
        for entry in scan_prefix(&self.tables, Tree::Meta, archive::COUNT_PREFIX, false) {
            let (key, bytes) = entry?;
            if let Some(segment) = archive::count_segment(&key) {
                let count = decode_value(&|| format!("meta/archive/{segment}"), &bytes)?;
                counts.push((segment, count));
            }
        }
        Ok(counts)
    }

    /// An archived run's records (`None`: the run is not archived).
    fn archived(&self, run_id: Uuid) -> Result<Option<Vec<Record>>, Error> {
        let Some(mut bytes) = self.tables.get(Tree::Archived, run_id.as_bytes())? else {
            return Ok(None);
        };
        let archive = self.archive.as_ref().ok_or_else(|| Error::Corrupt {
            key: format!("archived/{run_id}"),
            reason: "the run is archived, but this store has no archive".to_owned(),
        })?;
        loop {
            let pointer = Pointer::decode(run_id, &bytes)?;
            match archive.read(run_id, &pointer) {
                Ok(records) => return Ok(Some(records)),
                // Collected, or reopened and archived again, while it was read (its old
                // segment may be gone): read what the pointer says now.
                Err(error) => match self.tables.get(Tree::Archived, run_id.as_bytes())? {
                    Some(now) if now != bytes => bytes = now,
                    Some(_) => return Err(error),
                    None => return Ok(None),
                },
            }
        }
    }

    /// A run's records as the tables hold them, for the archive: snapshot, folded journal,
    /// event keys.
    fn live_records(&self, run_id: Uuid) -> Result<Vec<Record>, Error> {
        let mut records = Vec::new();
        for tree in [Tree::Runs, Tree::Folded] {
            if let Some(value) = self.tables.get(tree, run_id.as_bytes())? {
                records.push((tree, run_id.as_bytes().to_vec(), value));
            }
        }
        for entry in scan_prefix(&self.tables, Tree::Events, run_id.as_bytes(), false) {
            let (key, value) = entry?;
            records.push((Tree::Events, key, value));
        }
        Ok(records)
    }

    fn is_empty(&self) -> Result<bool, Error> {
        Ok([Tree::Runs, Tree::Archived].into_iter().all(|tree| {
            self.tables
                .scan(tree, Bound::Unbounded, Bound::Unbounded, false)
                .next()
                .is_none()
        }))
    }

    fn staged(&self) -> MutexGuard<'_, Staged> {
        self.staged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `ops` now, durable, outside of any commit (open, upgrade, repair: no writer yet).
    fn write_now(&self, ops: Vec<Op>) -> Result<(), Error> {
        self.tables.write(&ops)
    }

    /// Stages one change through the rules: a refused one stages nothing.
    fn stage(&self, rules: impl FnOnce(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error> {
        let mut staged = self.staged();
        let (ops, latest) = {
            let mut tx = Tx::new(&self.tables, self.archive.as_ref(), &staged);
            rules(&mut tx)?;
            (tx.ops, tx.latest)
        };
        staged.ops.extend(ops);
        staged.latest.extend(latest);
        Ok(())
    }

    /// From format 1 (no `active` index) and 2 (no listings): builds what is missing from the
    /// runs, writes it durably, then records the new format.
    fn upgrade(&self, found: u32) -> Result<(), Error> {
        if found >= 3 {
            // 4 only adds folded journals, 5 the archive; what is in the tables stays
            // readable as it is.
            self.write_now(vec![Op {
                tree: Tree::Meta,
                key: b"format".to_vec(),
                value: Some(encode_value(&STORE_FORMAT)?),
            }])?;
            tracing::info!(from = found, "upgraded the store to format {STORE_FORMAT}");
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut staged = Staged::default();
        let mut upgraded = 0;
        let runs: Vec<Uuid> = self
            .tables
            .scan(Tree::Runs, Bound::Unbounded, Bound::Unbounded, false)
            .filter_map(|entry| entry.ok().and_then(|(key, _)| Uuid::from_slice(&key).ok()))
            .collect();
        for run_id in runs {
            let state = match self.load_run(run_id) {
                Ok(Some(state)) => state,
                Ok(None) => continue,
                Err(error) => {
                    // Unreadable: stays active, so that it is reported at every start.
                    tracing::warn!(run = %run_id, %error, "a run cannot be read while upgrading the store");
                    ops.push(Op {
                        tree: Tree::Active,
                        key: run_id.as_bytes().to_vec(),
                        value: Some(Vec::new()),
                    });
                    continue;
                }
            };
            let (tx_ops, tx_latest) = {
                let mut tx = Tx::new(&self.tables, self.archive.as_ref(), &staged);
                let mut counts = tx.counts()?;
                if found < 2 && !state.is_parked() {
                    tx.put(Tree::Active, run_id.as_bytes().to_vec(), Vec::new());
                }
                tx.listing(&mut counts, run_id, Some(&Listing::of(&state)))?;
                tx.put_counts(&counts)?;
                (tx.ops, tx.latest)
            };
            staged.ops.extend(tx_ops);
            staged.latest.extend(tx_latest);
            upgraded += 1;
        }
        ops.extend(staged.ops);
        let timers = self
            .tables
            .scan(Tree::Timers, Bound::Unbounded, Bound::Unbounded, false)
            .count() as u64;
        let mut counts: Counts = match staged.latest.get(&(Tree::Meta, b"counts".to_vec())) {
            Some(Some(bytes)) => decode_value(&|| "meta/counts".to_owned(), bytes)?,
            _ => Counts::default(),
        };
        counts.timers = timers;
        ops.push(Op {
            tree: Tree::Meta,
            key: b"counts".to_vec(),
            value: Some(encode_value(&counts)?),
        });
        ops.push(Op {
            tree: Tree::Meta,
            key: b"format".to_vec(),
            value: Some(encode_value(&STORE_FORMAT)?),
        });
        self.write_now(ops)?;
        tracing::info!(
            runs = upgraded,
            from = found,
            "upgraded the store to format {STORE_FORMAT}"
        );
        Ok(())
    }

    /// Checks the derived indexes (locks, timers, `active`, listings' state index, counters)
    /// against the runs; with `repair`, rewrites what does not match from the runs. Returns
    /// one line per problem found.
    pub fn check_indexes(&self, repair: bool) -> Result<Vec<String>, Error> {
        self.check_indexes_of(repair, true)
    }

    /// [`Journal::check_indexes`]; with `all` false, of the unfinished runs only (what opening
    /// the store does: a finished run holds no lock, timer or `active` entry, and walking a
    /// million of them took 16 s), taking the finished runs' counters as stored.
    pub fn check_indexes_of(&self, repair: bool, all: bool) -> Result<Vec<String>, Error> {
        let mut problems = Vec::new();
        let mut ops = Vec::new();
        let op = |tree, key: Vec<u8>, value: Option<Vec<u8>>| Op { tree, key, value };
        let schedules: BTreeSet<Uuid> = self
            .load_schedules()?
            .into_iter()
            .filter_map(Result::ok)
            .map(|schedule| schedule.id)
            .collect();
        let listed = |run_id: Uuid| -> Result<Option<Listing>, Error> {
            Ok(match self.tables.get(Tree::Listings, run_id.as_bytes())? {
                Some(bytes) => decode_value(&|| format!("listings/{run_id}"), &bytes).ok(),
                None => None,
            })
        };
        let mut counts = Counts::default();
        let mut re_armed = 0;
        let stored: Counts = match self.tables.get(Tree::Meta, b"counts")? {
            Some(bytes) => decode_value(&|| "meta/counts".to_owned(), &bytes).unwrap_or_default(),
            None => Counts::default(),
        };
        // The state index: counted, and every unfinished run in it checked against its line.
        let state_index: super::tables::Scan<'_> = if all {
            self.tables
                .scan(Tree::ByState, Bound::Unbounded, Bound::Unbounded, false)
        } else {
            for status in listing::STATES.iter().filter(|status| status.is_terminal()) {
                let name = status.name();
                if let Some(count) = stored.runs.get(name) {
                    counts.runs.insert(name.to_owned(), *count);
                }
            }
            Box::new(
                listing::STATES
                    .iter()
                    .filter(|status| !status.is_terminal())
                    .flat_map(|status| {
                        super::tables::scan_prefix(
                            &self.tables,
                            Tree::ByState,
                            &listing::name_prefix(status.name()),
                            false,
                        )
                    }),
            )
        };
        for entry in state_index {
            let (key, _) = entry?;
            let (Some(run_id), Some(state)) = (
                listing::trailing_id(&key),
                key.len()
                    .checked_sub(17)
                    .and_then(|end| std::str::from_utf8(&key[..end]).ok()),
            ) else {
                problems.push(format!("by_state/{key:?}: bad key"));
                ops.push(op(Tree::ByState, key, None));
                continue;
            };
            if listing::is_terminal(state) {
                *counts.runs.entry(state.to_owned()).or_default() += 1;
                continue;
            }
            let Some(line) = listed(run_id)? else {
                problems.push(format!(
                    "run {run_id} is in the {state} index but has no listing"
                ));
                ops.push(op(Tree::ByState, key, None));
                continue;
            };
            if line.state != state {
                problems.push(format!(
                    "run {run_id} is {} but in the {state} index",
                    line.state
                ));
                ops.push(op(Tree::ByState, key, None));
                continue;
            }
            *counts.runs.entry(state.to_owned()).or_default() += 1;
            // Every armed timer of a run is in the index: a run never waits for nothing.
            for (fire_at_ms, timer) in &line.timers {
                let timer_key = TimerKey {
                    fire_at_ms: *fire_at_ms,
                    run_id,
                    timer: *timer,
                };
                if self
                    .tables
                    .get(Tree::Timers, &timer_key.encode())?
                    .is_none()
                {
                    problems.push(format!(
                        "run {run_id} ({state}) waits for timer {timer}, which is not in the timer index"
                    ));
                    ops.push(op(
                        Tree::Timers,
                        timer_key.encode().to_vec(),
                        Some(Vec::new()),
                    ));
                    re_armed += 1;
                }
            }
            // A run that is not finished holds its locks.
            for resource in &line.locks {
                if self.tables.get(Tree::Locks, resource.as_bytes())?.is_none() {
                    problems.push(format!(
                        "run {run_id} ({state}) holds lock {resource:?}, which is not in the lock table"
                    ));
                    ops.push(op(
                        Tree::Locks,
                        resource.as_bytes().to_vec(),
                        Some(encode_value(&run_id)?),
                    ));
                }
            }
            // A running run is worked on at start-up.
            if state == "running" && self.tables.get(Tree::Active, run_id.as_bytes())?.is_none() {
                problems.push(format!(
                    "run {run_id} is running but not in the active index"
                ));
                ops.push(op(
                    Tree::Active,
                    run_id.as_bytes().to_vec(),
                    Some(Vec::new()),
                ));
            }
        }
        // A lock whose holder does not exist or has finished is free.
        for entry in self
            .tables
            .scan(Tree::Locks, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (key, bytes) = entry?;
            let resource = String::from_utf8_lossy(&key).into_owned();
            let holder: Option<Uuid> = decode_value(&|| format!("locks/{resource}"), &bytes).ok();
            let held = match holder {
                Some(holder) => listed(holder)?.map(|line| (holder, line)),
                None => None,
            };
            match held {
                Some((_, line)) if !line.is_finished() => {}
                Some((holder, line)) => {
                    problems.push(format!(
                        "lock {resource:?} is held by run {holder}, which is {}",
                        line.state
                    ));
                    ops.push(op(Tree::Locks, key, None));
                }
                None => {
                    problems.push(format!(
                        "lock {resource:?} is held by {}, which is no run",
                        holder.map_or("an unreadable holder".to_owned(), |id| format!("run {id}"))
                    ));
                    ops.push(op(Tree::Locks, key, None));
                }
            }
        }
        // A timer of a run that does not exist or has finished never fires for anything.
        let mut timers = 0;
        for entry in self
            .tables
            .scan(Tree::Timers, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (key, _) = entry?;
            let Some(timer) = TimerKey::decode(&key) else {
                problems.push(format!("timers/{key:?}: bad key"));
                ops.push(op(Tree::Timers, key, None));
                continue;
            };
            timers += 1;
            if schedules.contains(&timer.run_id) {
                continue;
            }
            match listed(timer.run_id)? {
                Some(line) if line.timers.contains(&(timer.fire_at_ms, timer.timer)) => {}
                Some(line) => {
                    problems.push(format!(
                        "timer {} of run {} ({}) is not armed by the run",
                        timer.timer, timer.run_id, line.state
                    ));
                    ops.push(op(Tree::Timers, key, None));
                    timers -= 1;
                }
                None => {
                    problems.push(format!(
                        "timer {} belongs to no run ({})",
                        timer.timer, timer.run_id
                    ));
                    ops.push(op(Tree::Timers, key, None));
                    timers -= 1;
                }
            }
        }
        counts.timers = timers + re_armed;
        counts.runs.retain(|_, count| *count > 0);
        let mut stored_runs = stored.runs.clone();
        stored_runs.retain(|_, count| *count > 0);
        if stored_runs != counts.runs || stored.timers != counts.timers {
            problems.push(format!(
                "counters {stored:?} do not match the runs ({counts:?})"
            ));
            ops.push(op(
                Tree::Meta,
                b"counts".to_vec(),
                Some(encode_value(&counts)?),
            ));
        }
        if repair && !ops.is_empty() {
            self.write_now(ops)?;
        }
        Ok(problems)
    }

    /// The finished runs that finished before `before_ms`, oldest first, at most `limit`.
    pub fn expired(
        &self,
        before_ms: u64,
        after: Option<&Expired>,
        limit: usize,
    ) -> Result<Vec<Expired>, Error> {
        let end = before_ms.to_be_bytes();
        let from = after.map(|after| {
            let mut key = after.finished_at_ms.to_be_bytes().to_vec();
            key.extend_from_slice(after.run_id.as_bytes());
            key
        });
        let mut found = Vec::new();
        for entry in self.tables.scan(
            Tree::Finished,
            from.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Excluded(end.as_slice()),
            false,
        ) {
            let (key, _) = entry?;
            let finished_at_ms = key
                .get(..8)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_be_bytes);
            if let (Some(finished_at_ms), Some(run_id)) =
                (finished_at_ms, listing::trailing_id(&key))
            {
                found.push(Expired {
                    finished_at_ms,
                    run_id,
                });
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// A run's folded events (none if it has no folded record).
    fn folded(&self, run_id: Uuid) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        match self.tables.get(Tree::Folded, run_id.as_bytes())? {
            Some(record) => fold::decode(run_id, &record),
            None => Ok(Vec::new()),
        }
    }

    fn restore(&self, run_id: Uuid, snapshot: &[u8]) -> Result<RunState, Error> {
        let first = match self.tables.get(Tree::Events, &event_key(run_id, 1))? {
            Some(first) => Some(first),
            None => self
                .folded(run_id)?
                .into_iter()
                .next()
                .filter(|(seq, _)| *seq == 1)
                .map(|(_, first)| first),
        };
        restore(run_id, snapshot, first.as_deref(), |from| {
            let from = event_key(run_id, from);
            let to = event_key(run_id, u64::MAX);
            self.tables
                .scan(
                    Tree::Events,
                    Bound::Included(from.as_slice()),
                    Bound::Included(to.as_slice()),
                    false,
                )
                .map(|entry| entry.map(|(key, bytes)| (event_seq(&key), bytes)))
                .collect::<Vec<_>>()
        })
    }

    /// Reads a run that the archiver may move meanwhile (no run mutex orders them): from the
    /// archive when it is archived, else from the tables — and those reads count only if no
    /// pointer appeared by the time they ended (an archive move stores the pointer before it
    /// deletes anything, and a rollback puts the records back before it drops the pointer).
    /// `None`: the run is in neither.
    fn read_moving<R>(
        &self,
        run_id: Uuid,
        from_archive: impl Fn(&[Record]) -> Result<R, Error>,
        from_tables: impl Fn() -> Result<R, Error>,
    ) -> Result<Option<R>, Error> {
        for _ in 0..3 {
            if let Some(records) = self.archived(run_id)? {
                return from_archive(&records).map(Some);
            }
            let read = from_tables();
            if self
                .tables
                .get(Tree::Archived, run_id.as_bytes())?
                .is_none()
            {
                return read.map(Some);
            }
        }
        Err(Error::Io {
            kind: std::io::ErrorKind::Interrupted,
            message: format!("run {run_id} kept moving to and from the archive while it was read"),
        })
    }

    /// An archived run's state, from its records.
    fn restore_archived(&self, run_id: Uuid, records: &[Record]) -> Result<RunState, Error> {
        let snapshot = records
            .iter()
            .find(|(tree, _, _)| *tree == Tree::Runs)
            .ok_or_else(|| Error::Corrupt {
                key: format!("archived/{run_id}"),
                reason: "the entry holds no snapshot".to_owned(),
            })?;
        let events = archived_events(run_id, records)?;
        let first = events
            .first()
            .filter(|(seq, _)| *seq == 1)
            .map(|(_, bytes)| bytes.as_slice());
        restore(run_id, &snapshot.2, first, |from| {
            events
                .iter()
                .filter(move |(seq, _)| *seq >= from)
                .map(|(seq, bytes)| Ok((*seq, bytes.as_slice())))
                .collect::<Vec<_>>()
        })
    }

    /// Runs newest first from one index (`prefix` of `tree`, or the listings themselves).
    fn page_of(
        &self,
        tree: Tree,
        prefix: &[u8],
        query: &ListQuery,
        filter: &dyn Fn(&Result<Listing, String>) -> bool,
        out: &mut Vec<(Uuid, Result<Listing, String>)>,
    ) -> Result<(), Error> {
        let low: Vec<u8> = match query.since {
            Some(since) => [prefix, listing::first_id_at(since).as_bytes()].concat(),
            None => prefix.to_vec(),
        };
        let high: Option<Vec<u8>> = match query.before {
            Some(before) => Some([prefix, before.as_bytes()].concat()),
            None => super::tables::prefix_end(prefix),
        };
        let scan = self.tables.scan(
            tree,
            Bound::Included(low.as_slice()),
            match &high {
                Some(high) => Bound::Excluded(high.as_slice()),
                None => Bound::Unbounded,
            },
            true,
        );
        let mut taken = 0;
        for entry in scan {
            if taken >= query.limit {
                break;
            }
            let (key, value) = entry?;
            let Some(run_id) = listing::trailing_id(&key) else {
                continue;
            };
            let line = if tree == Tree::Listings {
                decode_value(&|| format!("listings/{run_id}"), &value)
            } else {
                match self.tables.get(Tree::Listings, run_id.as_bytes())? {
                    Some(bytes) => decode_value(&|| format!("listings/{run_id}"), &bytes),
                    None => continue,
                }
            }
            .map_err(|error: Error| error.to_string());
            if filter(&line) {
                out.push((run_id, line));
                taken += 1;
            }
        }
        Ok(())
    }
}

impl<T: Tables> Store for Journal<T> {
    fn apply(&self, commit: &Commit) -> Result<(), Error> {
        self.stage(|tx| run_commit(tx, commit))
    }

    fn sync(&self) -> Result<(), Error> {
        // The lock is held until the batch is in the tables: a change is always either staged
        // or written, never in between (where a check would read a stale value).
        let mut staged = self.staged();
        let ops = std::mem::take(&mut staged.ops);
        staged.latest.clear();
        self.tables.write(&ops)
    }

    fn checkpoint(&self) -> Result<(), Error> {
        self.sync()?;
        self.tables.checkpoint()
    }

    fn active_run_ids(&self) -> Result<Vec<Uuid>, Error> {
        let mut ids = Vec::new();
        for entry in self
            .tables
            .scan(Tree::Active, Bound::Unbounded, Bound::Unbounded, false)
        {
            if let Ok(run_id) = Uuid::from_slice(&entry?.0) {
                ids.push(run_id);
            }
        }
        Ok(ids)
    }

    fn find_runs(&self, prefix: &[u8], limit: usize) -> Result<Vec<Uuid>, Error> {
        let mut found = BTreeSet::new();
        for tree in [Tree::Runs, Tree::Archived] {
            for entry in scan_prefix(&self.tables, tree, prefix, false).take(limit) {
                if let Ok(run_id) = Uuid::from_slice(&entry?.0) {
                    found.insert(run_id);
                }
            }
        }
        Ok(found.into_iter().take(limit).collect())
    }

    fn load_run(&self, run_id: Uuid) -> Result<Option<RunState>, Error> {
        let from_archive = |records: &[Record]| self.restore_archived(run_id, records).map(Some);
        self.read_moving(run_id, from_archive, || {
            match self.tables.get(Tree::Runs, run_id.as_bytes())? {
                Some(snapshot) => self.restore(run_id, &snapshot).map(Some),
                None => Ok(None),
            }
        })
        .map(Option::flatten)
    }

    fn events(&self, run_id: Uuid) -> Result<Vec<Event>, Error> {
        let from_archive = |records: &[Record]| {
            archived_events(run_id, records)?
                .into_iter()
                .map(|(seq, bytes)| decode_event(run_id, seq, &bytes))
                .collect()
        };
        let from_tables = || {
            let folded = self.folded(run_id)?.into_iter().map(Ok);
            let keyed = scan_prefix(&self.tables, Tree::Events, run_id.as_bytes(), false)
                .map(|entry| entry.map(|(key, bytes)| (event_seq(&key), bytes)));
            // The folded ones all come before the keyed ones.
            folded
                .chain(keyed)
                .map(|entry| {
                    let (seq, bytes) = entry?;
                    decode_event(run_id, seq, &bytes)
                })
                .collect()
        };
        Ok(self
            .read_moving(run_id, from_archive, from_tables)?
            .unwrap_or_default())
    }

    fn next_timer(&self) -> Result<Option<TimerKey>, Error> {
        Ok(self.due_timers(u64::MAX, 1)?.into_iter().next())
    }

    fn due_timers(&self, until_ms: u64, limit: usize) -> Result<Vec<TimerKey>, Error> {
        let mut end = [0xffu8; TimerKey::LEN];
        end[..8].copy_from_slice(&until_ms.to_be_bytes());
        let mut due = Vec::new();
        for entry in self.tables.scan(
            Tree::Timers,
            Bound::Unbounded,
            Bound::Included(end.as_slice()),
            false,
        ) {
            let (key, _) = entry?;
            // A malformed key is skipped here (and reported and removed by the index check),
            // never allowed to hold up the timers after it.
            if let Some(key) = TimerKey::decode(&key) {
                due.push(key);
                if due.len() >= limit {
                    break;
                }
            }
        }
        Ok(due)
    }

    fn remove_timer(&self, key: &TimerKey) -> Result<(), Error> {
        self.stage(|tx| {
            let mut counts = tx.counts()?;
            tx.timer(&mut counts, key, false)?;
            tx.put_counts(&counts)
        })
    }

    fn lock_holder(&self, resource: &str) -> Result<Option<Uuid>, Error> {
        match self.tables.get(Tree::Locks, resource.as_bytes())? {
            Some(bytes) => decode_value(&|| format!("locks/{resource}"), &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn verify(&self) -> Result<Vec<String>, Error> {
        let mut problems = Vec::new();
        for entry in self
            .tables
            .scan(Tree::Runs, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (key, snapshot) = entry?;
            match Uuid::from_slice(&key) {
                Ok(run_id) => {
                    if let Err(error) = self.restore(run_id, &snapshot) {
                        problems.push(error.to_string());
                    }
                }
                Err(_) => problems.push(format!("runs/{key:?}: bad run id")),
            }
        }
        for entry in self
            .tables
            .scan(Tree::Events, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (key, bytes) = entry?;
            if key.len() != 24 {
                problems.push(format!("events/{key:?}: bad key"));
                continue;
            }
            let run_id = Uuid::from_slice(&key[..16]).unwrap_or_default();
            if let Err(error) = decode_event(run_id, event_seq(&key), &bytes) {
                problems.push(error.to_string());
            }
        }
        for entry in self
            .tables
            .scan(Tree::Folded, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (key, record) = entry?;
            let Ok(run_id) = Uuid::from_slice(&key) else {
                problems.push(format!("folded/{key:?}: bad run id"));
                continue;
            };
            if self.tables.get(Tree::Runs, &key)?.is_none() {
                problems.push(format!(
                    "folded/{run_id}: the journal of a run that does not exist"
                ));
            }
            match fold::decode(run_id, &record) {
                Ok(events) => {
                    for (seq, bytes) in events {
                        if let Err(error) = decode_event(run_id, seq, &bytes) {
                            problems.push(error.to_string());
                        }
                    }
                }
                Err(error) => problems.push(error.to_string()),
            }
        }
        // Archived runs: each entry read back whole, and every segment's count right.
        let mut pointed: std::collections::BTreeMap<u32, u64> = Default::default();
        for entry in self
            .tables
            .scan(Tree::Archived, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (key, bytes) = entry?;
            let Ok(run_id) = Uuid::from_slice(&key) else {
                problems.push(format!("archived/{key:?}: bad run id"));
                continue;
            };
            if let Ok(pointer) = Pointer::decode(run_id, &bytes) {
                *pointed.entry(pointer.segment).or_default() += 1;
            }
            if self.tables.get(Tree::Listings, &key)?.is_none() {
                problems.push(format!("archived/{run_id}: a run with no listing"));
            }
            let restored = self
                .archived(run_id)
                .and_then(|records| self.restore_archived(run_id, &records.unwrap_or_default()));
            if let Err(error) = restored {
                problems.push(error.to_string());
            }
        }
        let counted: std::collections::BTreeMap<u32, u64> =
            self.segment_counts()?.into_iter().collect();
        if counted != pointed {
            problems.push(format!(
                "the archive's segment counts {counted:?} do not match its pointers {pointed:?}"
            ));
        }
        for schedule in self.load_schedules()? {
            if let Err(error) = schedule {
                problems.push(error.to_string());
            }
        }
        problems.extend(self.check_indexes(false)?);
        Ok(problems)
    }

    fn apply_schedule(&self, commit: &ScheduleCommit) -> Result<(), Error> {
        self.stage(|tx| schedule_commit(tx, commit))
    }

    fn load_schedules(&self) -> Result<Vec<Result<Schedule, Error>>, Error> {
        let mut loaded = Vec::new();
        for entry in self
            .tables
            .scan(Tree::Schedules, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (key, bytes) = entry?;
            let name = String::from_utf8_lossy(&key).into_owned();
            loaded.push(decode_value(&|| format!("schedules/{name}"), &bytes));
        }
        Ok(loaded)
    }

    fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        let mut runs = Vec::new();
        let runbook = query.runbook.clone();
        let of_runbook = move |line: &Result<Listing, String>| match (&runbook, line) {
            (Some(runbook), Ok(line)) => &line.runbook == runbook,
            _ => true,
        };
        match (&query.state, &query.runbook) {
            (Some(state), _) => self.page_of(
                Tree::ByState,
                &listing::name_prefix(state.name()),
                query,
                &of_runbook,
                &mut runs,
            )?,
            (None, Some(runbook)) => {
                let all = query.all;
                self.page_of(
                    Tree::ByRunbook,
                    &listing::name_prefix(runbook),
                    query,
                    &move |line| all || line.as_ref().map_or(true, |line| !line.is_finished()),
                    &mut runs,
                )?
            }
            (None, None) if query.all => {
                self.page_of(Tree::Listings, &[], query, &|_| true, &mut runs)?
            }
            (None, None) => {
                // The unfinished states, merged newest first.
                for state in listing::STATES.iter().filter(|state| !state.is_terminal()) {
                    self.page_of(
                        Tree::ByState,
                        &listing::name_prefix(state.name()),
                        query,
                        &|_| true,
                        &mut runs,
                    )?;
                }
                runs.sort_by_key(|run| std::cmp::Reverse(run.0));
                runs.truncate(query.limit);
            }
        }
        let next = (runs.len() >= query.limit && query.limit > 0)
            .then(|| runs.last().map(|(id, _)| *id))
            .flatten();
        Ok(Page { runs, next })
    }

    fn counts(&self) -> Result<Counts, Error> {
        match self.tables.get(Tree::Meta, b"counts")? {
            Some(bytes) => decode_value(&|| "meta/counts".to_owned(), &bytes),
            None => Ok(Counts::default()),
        }
    }

    fn collect(&self, runs: &[Uuid]) -> Result<Vec<Uuid>, Error> {
        let mut deleted = Vec::new();
        for run_id in runs {
            let mut gone = false;
            self.stage(|tx| {
                gone = collect_run(tx, *run_id)?;
                Ok(())
            })?;
            if gone {
                deleted.push(*run_id);
            }
        }
        Ok(deleted)
    }

    fn expired_runs(
        &self,
        before_ms: u64,
        after: Option<&Expired>,
        limit: usize,
    ) -> Result<Vec<Expired>, Error> {
        self.expired(before_ms, after, limit)
    }

    fn check(&self) -> Result<Vec<String>, Error> {
        self.check_indexes(false)
    }

    fn archive_prepare(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<ArchivedRun>, Option<Uuid>), Error> {
        let Some(archive) = &self.archive else {
            return Ok((Vec::new(), None));
        };
        // Every finished run has a folded record (a run too long to fold stays in the
        // tables); one reopened by a rollback is passed over.
        let mut runs = Vec::new();
        let mut cursor = None;
        let after = after.map(|id| *id.as_bytes());
        let scan = self.tables.scan(
            Tree::Folded,
            after
                .as_ref()
                .map_or(Bound::Unbounded, |after| Bound::Excluded(after.as_slice())),
            Bound::Unbounded,
            false,
        );
        for (looked, entry) in scan.enumerate() {
            if runs.len() >= limit || looked >= limit.saturating_mul(4) {
                break;
            }
            let Ok(run_id) = Uuid::from_slice(&entry?.0) else {
                continue;
            };
            cursor = Some(run_id);
            let finished = match self.tables.get(Tree::Listings, run_id.as_bytes())? {
                Some(bytes) => decode_value::<Listing>(&|| format!("listings/{run_id}"), &bytes)
                    .is_ok_and(|line| line.is_finished()),
                None => false,
            };
            if finished {
                let records = self.live_records(run_id)?;
                let bytes: usize = records
                    .iter()
                    .map(|(_, key, value)| key.len() + value.len())
                    .sum();
                if bytes < archive::MAX_ENTRY / 2 {
                    runs.push((run_id, records));
                }
            }
        }
        if runs.is_empty() {
            return Ok((Vec::new(), cursor));
        }
        let pointers = archive.append(&runs)?;
        let prepared = runs
            .into_iter()
            .zip(pointers)
            .map(|((run_id, records), pointer)| ArchivedRun {
                run_id,
                pointer,
                records,
            })
            .collect();
        Ok((prepared, cursor))
    }

    fn archive_commit(&self, runs: &[ArchivedRun]) -> Result<Vec<Uuid>, Error> {
        let mut moved = Vec::new();
        for run in runs {
            let mut done = false;
            self.stage(|tx| {
                done = archive_run(tx, run)?;
                Ok(())
            })?;
            if done {
                moved.push(run.run_id);
            }
        }
        Ok(moved)
    }

    fn archive_tidy(&self, settled: bool) -> Result<u64, Error> {
        let Some(archive) = &self.archive else {
            return Ok(0);
        };
        let known: BTreeSet<u32> = self
            .segment_counts()?
            .into_iter()
            .map(|(segment, _)| segment)
            .collect();
        if settled && !known.contains(&archive.current()) {
            // Nothing is left in the segment appends go to: it goes too.
            archive.end_current();
        }
        let current = archive.current();
        let mut freed = 0;
        for segment in archive.segments()? {
            if segment != current && !known.contains(&segment) {
                freed += archive.remove(segment)?;
            }
        }
        Ok(freed)
    }
}
