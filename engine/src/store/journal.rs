//! The commit rules, written once for every [`Tables`]: what a run commit checks and changes,
//! the derived indexes (locks, timers, `active`, listings, counters) and how they heal, reads,
//! retention.
//!
//! # Contract
//!
//! - [`Store::stage_many`] checks each commit against the tables *and the commits applied
//!   before it that are not synced yet*, and stages its changes in memory; a refused commit
//!   stages nothing. Nothing reaches the tables before [`Journal::sync`], which hands every
//!   staged change to [`Tables::write`] as one batch: durable before visible, all or nothing.
//!   So readers never see a commit that is not durable, and a crash leaves exactly the synced
//!   batches.
//! - Only the writer thread stages and syncs, so a commit's checks and its changes see no
//!   other writer.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::archive::{self, Archive, ArchivedRun, Pointer, Record};
use super::fold;
use super::listing::{self, Counts, ListQuery, Listing, Page};
use super::tables::{scan_prefix, Op, Tables, Tree};
use super::KeyValue;
use super::{
    decode_event, decode_value, encode_value, restore, AccessCommit, Commit, Error, Expired,
    OutboxCommit, ScheduleCommit, Store, TimerKey, STORE_FORMAT,
};
use crate::machine::{Event, RunState, TimerId};
use crate::schedule::Schedule;

mod archived;
mod copy;
mod indexes;
mod retention;
mod rules;

pub use copy::CopyReport;
pub(crate) use rules::event_key;
use rules::{
    archive_run, archived_events, collect_run, event_seq, run_commit, schedule_commit, Tx,
};

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

    fn is_empty(&self) -> Result<bool, Error> {
        Ok([Tree::Runs, Tree::Listings].into_iter().all(|tree| {
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
    /// Stages records of `tree` set (or deleted, `None`) as given.
    fn stage_keyed<K: AsRef<[u8]>>(
        &self,
        tree: Tree,
        changes: &[(K, Option<Vec<u8>>)],
    ) -> Result<(), Error> {
        self.stage_with(|tx| {
            for (key, value) in changes {
                let key = key.as_ref().to_vec();
                match value {
                    Some(value) => tx.put(tree, key, value.clone()),
                    None => tx.delete(tree, key),
                }
            }
            Ok(())
        })
    }

    fn stage_with(
        &self,
        rules: impl FnOnce(&mut Tx<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
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

    /// Runs newest first from one index (`prefix` of `tree`), or from the listings themselves
    /// with their lines (`tree` is `Listings`): at most `query.limit`.
    fn page_of(
        &self,
        tree: Tree,
        prefix: &[u8],
        query: &ListQuery,
        out: &mut Vec<(Uuid, Option<Vec<u8>>)>,
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
        for entry in scan.take(query.limit) {
            let (key, value) = entry?;
            if let Some(run_id) = listing::trailing_id(&key) {
                out.push((run_id, (tree == Tree::Listings).then_some(value)));
            }
        }
        Ok(())
    }

    /// The runbooks that have runs in `state`, one seek each (not a walk of the runs).
    fn runbooks_in(&self, state: &str) -> Result<Vec<String>, Error> {
        let prefix = listing::index_prefix(state, None);
        let end = super::tables::prefix_end(&prefix);
        let mut runbooks = Vec::new();
        let mut from = prefix.clone();
        loop {
            let next = self
                .tables
                .scan(
                    Tree::ByStateRunbook,
                    Bound::Included(from.as_slice()),
                    end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                    false,
                )
                .next()
                .transpose()?;
            let Some((key, _)) = next else {
                return Ok(runbooks);
            };
            let Some((_, runbook, _)) = listing::index_parts(&key) else {
                // A bad key (`store verify` names it): past it, byte by byte.
                from = [key.as_slice(), &[0]].concat();
                continue;
            };
            let runbook = runbook.to_owned();
            match super::tables::prefix_end(&listing::index_prefix(state, Some(&runbook))) {
                Some(past) => from = past,
                None => return Ok(runbooks),
            }
            runbooks.push(runbook);
        }
    }
}

impl<T: Tables> Store for Journal<T> {
    fn stage(&self, commit: &Commit) -> Result<(), Error> {
        self.stage_with(|tx| run_commit(tx, commit))
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
        // (An archived run is in the listings only.)
        for tree in [Tree::Runs, Tree::Listings] {
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
        self.stage_with(|tx| {
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
        self.verify_all()
    }

    fn stage_schedule(&self, commit: &ScheduleCommit) -> Result<(), Error> {
        self.stage_with(|tx| schedule_commit(tx, commit))
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

    fn stage_outbox(&self, commit: &OutboxCommit) -> Result<(), Error> {
        self.stage_keyed(Tree::Outbox, &commit.changes)
    }

    fn load_outbox(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, Error> {
        scan_prefix(&self.tables, Tree::Outbox, prefix, false)
            .map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())))
            .collect()
    }

    fn stage_access(&self, commit: &AccessCommit) -> Result<(), Error> {
        self.stage_keyed(Tree::Access, &commit.changes)
    }

    fn load_access(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        scan_prefix(&self.tables, Tree::Access, &[], false)
            .map(|entry| {
                entry.map(|(key, value)| {
                    (String::from_utf8_lossy(&key).into_owned(), value.to_vec())
                })
            })
            .collect()
    }

    fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        let mut found = Vec::new();
        if query.state.is_none() && query.runbook.is_none() && query.all {
            self.page_of(Tree::Listings, &[], query, &mut found)?;
        } else {
            // Each (state, runbook) prefix of the index is newest first: a page is the newest
            // of their pages, merged.
            let states: Vec<&str> = match &query.state {
                Some(state) => vec![state.name()],
                None => listing::STATES
                    .iter()
                    .filter(|state| query.all || !state.is_terminal())
                    .map(|state| state.name())
                    .collect(),
            };
            for state in states {
                let runbooks = match &query.runbook {
                    Some(runbook) => vec![runbook.clone()],
                    None => self.runbooks_in(state)?,
                };
                for runbook in runbooks {
                    let prefix = listing::index_prefix(state, Some(&runbook));
                    self.page_of(Tree::ByStateRunbook, &prefix, query, &mut found)?;
                }
            }
            found.sort_by_key(|run| std::cmp::Reverse(run.0));
            found.truncate(query.limit);
        }
        let next = (found.len() >= query.limit && query.limit > 0)
            .then(|| found.last().map(|(id, _)| *id))
            .flatten();
        // The lines of the page's runs only.
        let mut runs = Vec::with_capacity(found.len());
        for (run_id, line) in found {
            let line = match line {
                Some(line) => Some(line),
                None => self.tables.get(Tree::Listings, run_id.as_bytes())?,
            };
            // (An index entry whose run has no line is stale: `store verify` repairs it.)
            if let Some(bytes) = line {
                let line = decode_value(&|| format!("listings/{run_id}"), &bytes)
                    .map_err(|error: Error| error.to_string());
                runs.push((run_id, line));
            }
        }
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
            self.stage_with(|tx| {
                gone = collect_run(tx, *run_id)?;
                Ok(())
            })?;
            if gone {
                deleted.push(*run_id);
            }
        }
        Ok(deleted)
    }

    fn warm_for_collect(&self, runs: &[Uuid]) {
        for run_id in runs {
            let id = run_id.as_bytes();
            let _ = self.tables.get(Tree::Active, id);
            let Ok(Some(bytes)) = self.tables.get(Tree::Listings, id) else {
                continue;
            };
            let Ok(line) = decode_value::<Listing>(&|| format!("listings/{run_id}"), &bytes) else {
                continue;
            };
            let _ = self.tables.get(
                Tree::ByStateRunbook,
                &listing::index_key(&line.state, &line.runbook, *run_id),
            );
        }
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
        self.prepare_archive(after, limit)
    }

    fn archive_commit(&self, runs: &[ArchivedRun]) -> Result<Vec<Uuid>, Error> {
        self.commit_archive(runs)
    }

    fn archive_tidy(&self, settled: bool) -> Result<u64, Error> {
        self.tidy_archive(settled)
    }
}
