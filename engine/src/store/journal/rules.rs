//! The commit rules: what each kind of commit checks and changes, staged through a [`Tx`] (one
//! commit's view of the tables and of what the batch staged before it).

use std::collections::HashMap;

use uuid::Uuid;

use super::*;

/// One commit's view: the tables, what earlier commits staged, and its own changes.
pub(super) struct Tx<'a> {
    pub(super) tables: &'a dyn Tables,
    pub(super) archive: Option<&'a Archive>,
    pub(super) staged: &'a Staged,
    pub(super) ops: Vec<Op>,
    pub(super) latest: HashMap<(Tree, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(
        tables: &'a dyn Tables,
        archive: Option<&'a Archive>,
        staged: &'a Staged,
    ) -> Tx<'a> {
        Tx {
            tables,
            archive,
            staged,
            ops: Vec::new(),
            latest: HashMap::new(),
        }
    }

    pub(super) fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let lookup = (tree, key.to_vec());
        if let Some(value) = self.latest.get(&lookup) {
            return Ok(value.clone());
        }
        if let Some(value) = self.staged.latest.get(&lookup) {
            return Ok(value.clone());
        }
        self.tables.get(tree, key)
    }

    pub(super) fn put(&mut self, tree: Tree, key: Vec<u8>, value: Vec<u8>) {
        self.latest.insert((tree, key.clone()), Some(value.clone()));
        self.ops.push(Op {
            tree,
            key,
            value: Some(value),
        });
    }

    pub(super) fn delete(&mut self, tree: Tree, key: Vec<u8>) {
        self.latest.insert((tree, key.clone()), None);
        self.ops.push(Op {
            tree,
            key,
            value: None,
        });
    }

    pub(super) fn counts(&self) -> Result<Counts, Error> {
        match self.get(Tree::Meta, b"counts")? {
            Some(bytes) => decode_value(&|| "meta/counts".to_owned(), &bytes),
            None => Ok(Counts::default()),
        }
    }

    pub(super) fn put_counts(&mut self, counts: &Counts) -> Result<(), Error> {
        self.put(Tree::Meta, b"counts".to_vec(), encode_value(counts)?);
        Ok(())
    }

    /// Removes then adds timer index entries, keeping the counter.
    pub(super) fn timers(
        &mut self,
        counts: &mut Counts,
        remove: &[TimerKey],
        add: &[TimerKey],
    ) -> Result<(), Error> {
        for key in remove {
            self.timer(counts, key, false)?;
        }
        for key in add {
            self.timer(counts, key, true)?;
        }
        Ok(())
    }

    /// Adds or removes a timer index entry, keeping the counter.
    pub(super) fn timer(
        &mut self,
        counts: &mut Counts,
        key: &TimerKey,
        present: bool,
    ) -> Result<(), Error> {
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

    /// Stores a run's listing line and moves its entry in the index by state and runbook.
    /// (Its pointer into the archive is the archive's to set: see [`archive_run`].)
    pub(super) fn listing(
        &mut self,
        counts: &mut Counts,
        run_id: Uuid,
        new: Option<&Listing>,
    ) -> Result<(), Error> {
        let old = self.listed(run_id)?;
        if old.as_ref() == new {
            return Ok(());
        }
        let moved = |old: &Listing| {
            new.is_none_or(|new| new.state != old.state || new.runbook != old.runbook)
        };
        if let Some(old) = old.as_ref().filter(|old| moved(old)) {
            self.delete(
                Tree::ByStateRunbook,
                listing::index_key(&old.state, &old.runbook, run_id),
            );
            let count = counts.runs.entry(old.state.clone()).or_default();
            *count = count.saturating_sub(1);
        }
        let Some(new) = new else {
            self.delete(Tree::Listings, run_id.as_bytes().to_vec());
            return Ok(());
        };
        if old.as_ref().is_none_or(moved) {
            self.put(
                Tree::ByStateRunbook,
                listing::index_key(&new.state, &new.runbook, run_id),
                Vec::new(),
            );
            *counts.runs.entry(new.state.clone()).or_default() += 1;
        }
        self.put(
            Tree::Listings,
            run_id.as_bytes().to_vec(),
            encode_value(new)?,
        );
        Ok(())
    }

    /// Where an archived run's records are (`None`: it is not archived).
    pub(super) fn archived_at(&self, run_id: Uuid) -> Result<Option<Pointer>, Error> {
        match self.get(Tree::Listings, run_id.as_bytes())? {
            // (A line that does not decode is not an archived run's: `listed` rewrites it.)
            Some(bytes) => Ok(decode_value::<listing::ArchivedAt>(
                &|| format!("listings/{run_id}"),
                &bytes,
            )
            .ok()
            .and_then(|line| line.archived)),
            None => Ok(None),
        }
    }

    pub(super) fn listed(&self, run_id: Uuid) -> Result<Option<Listing>, Error> {
        match self.get(Tree::Listings, run_id.as_bytes())? {
            // A line that does not decode is rewritten (it is derived from the run).
            Some(bytes) => Ok(decode_value(&|| format!("listings/{run_id}"), &bytes).ok()),
            None => Ok(None),
        }
    }

    pub(super) fn lock_holder(&self, resource: &str) -> Result<Option<Uuid>, Error> {
        match self.get(Tree::Locks, resource.as_bytes())? {
            Some(bytes) => decode_value(&|| format!("locks/{resource}"), &bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// The rules of one run commit (see [`Store::stage`]). Checks first: a refused commit returns
/// before it changes anything.
pub(super) fn run_commit(tx: &mut Tx<'_>, commit: &Commit) -> Result<(), Error> {
    let id = commit.run_id;
    if let Some(pointer) = tx.archived_at(id)? {
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
        unarchive(tx, id, pointer)?;
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
    for (key, entry) in &commit.outbox {
        tx.put(Tree::Outbox, key.clone(), entry.clone());
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
    tx.timers(&mut counts, &commit.timers_remove, &commit.timers_add)?;
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
pub(super) fn fold_journal(tx: &mut Tx<'_>, run_id: Uuid, last: u64) -> Result<(), Error> {
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

pub(super) fn schedule_commit(tx: &mut Tx<'_>, commit: &ScheduleCommit) -> Result<(), Error> {
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
    tx.timers(&mut counts, &commit.timers_remove, &commit.timers_add)?;
    if counts != before {
        tx.put_counts(&counts)?;
    }
    Ok(())
}

/// Puts an archived run's records back into the tables and drops its pointer.
pub(super) fn unarchive(tx: &mut Tx<'_>, run_id: Uuid, pointer: Pointer) -> Result<(), Error> {
    let archive = tx.archive.ok_or_else(|| Error::Corrupt {
        key: format!("listings/{run_id}"),
        reason: "the run is archived, but this store has no archive".to_owned(),
    })?;
    // The records first, then the pointer goes: a reader always finds one or the other.
    for (tree, key, value) in archive.read(run_id, &pointer)? {
        tx.put(tree, key, value);
    }
    set_pointer(tx, run_id, None)?;
    segment_count(tx, pointer.segment, -1)
}

/// Rewrites a run's listing line with `pointer` (its index entries stay as they are).
fn set_pointer(tx: &mut Tx<'_>, run_id: Uuid, pointer: Option<Pointer>) -> Result<(), Error> {
    let Some(mut line) = tx.listed(run_id)? else {
        return Err(Error::Corrupt {
            key: format!("listings/{run_id}"),
            reason: "an archived run has no listing line".to_owned(),
        });
    };
    line.archived = pointer;
    tx.put(
        Tree::Listings,
        run_id.as_bytes().to_vec(),
        encode_value(&line)?,
    );
    Ok(())
}

/// Moves one prepared run out of the tables, if its records are still exactly those archived
/// (nothing changed it since: no late event, no rollback) and it is still finished. Returns
/// whether it was moved.
pub(super) fn archive_run(tx: &mut Tx<'_>, run: &ArchivedRun) -> Result<bool, Error> {
    let id = run.run_id;
    if !tx
        .listed(id)?
        .is_some_and(|line| line.is_finished() && line.archived.is_none())
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
    set_pointer(tx, id, Some(run.pointer))?;
    for (tree, key, _) in &run.records {
        tx.delete(*tree, key.clone());
    }
    segment_count(tx, run.pointer.segment, 1)?;
    Ok(true)
}

/// Moves a segment's pointer count by `by`; a count of zero is no key at all (the segment
/// file is then garbage: see [`Store::archive_tidy`]).
pub(super) fn segment_count(tx: &mut Tx<'_>, segment: u32, by: i64) -> Result<(), Error> {
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
pub(super) fn collect_run(tx: &mut Tx<'_>, run_id: Uuid) -> Result<bool, Error> {
    let Some(listed) = tx.listed(run_id)? else {
        return Ok(false);
    };
    if !listed.is_finished() {
        return Ok(false);
    }
    let mut counts = tx.counts()?;
    tx.listing(&mut counts, run_id, None)?;
    tx.put_counts(&counts)?;
    let notifications: Vec<Vec<u8>> =
        scan_prefix(tx.tables, Tree::Outbox, run_id.as_bytes(), false)
            .map(|entry| entry.map(|(key, _)| key))
            .collect::<Result<_, _>>()?;
    for key in notifications {
        tx.delete(Tree::Outbox, key);
    }
    if tx.get(Tree::Active, run_id.as_bytes())?.is_some() {
        tx.delete(Tree::Active, run_id.as_bytes().to_vec());
    }
    // Only what is there is deleted: an archived run is its line, its index entry and its
    // segment's count, in the same log records as the commits it is synced with.
    if let Some(pointer) = listed.archived {
        segment_count(tx, pointer.segment, -1)?;
        return Ok(true);
    }
    tx.delete(Tree::Runs, run_id.as_bytes().to_vec());
    tx.delete(Tree::Folded, run_id.as_bytes().to_vec());
    let events: Vec<Vec<u8>> = scan_prefix(tx.tables, Tree::Events, run_id.as_bytes(), false)
        .map(|entry| entry.map(|(key, _)| key))
        .collect::<Result<_, _>>()?;
    for key in events {
        tx.delete(Tree::Events, key);
    }
    Ok(true)
}

/// An archived run's events, ascending: the folded ones, then the keyed ones.
pub(super) fn archived_events(
    run_id: Uuid,
    records: &[Record],
) -> Result<Vec<(u64, Vec<u8>)>, Error> {
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

pub(super) fn event_seq(key: &[u8]) -> u64 {
    key.get(16..24)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}
