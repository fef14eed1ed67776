//! Finished runs in the archive (`store/archive.rs`): reading them, moving them there, and
//! deleting the segments no run is in.

use std::collections::BTreeSet;
use std::ops::Bound;

use uuid::Uuid;

use super::*;

impl<T: Tables> Journal<T> {
    /// The archive's segments that runs are in, with how many.
    pub(super) fn segment_counts(&self) -> Result<Vec<(u32, u64)>, Error> {
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
    pub(super) fn archived(&self, run_id: Uuid) -> Result<Option<Vec<Record>>, Error> {
        let Some(mut pointer) = self.pointer(run_id)? else {
            return Ok(None);
        };
        let archive = self.archive.as_ref().ok_or_else(|| Error::Corrupt {
            key: format!("listings/{run_id}"),
            reason: "the run is archived, but this store has no archive".to_owned(),
        })?;
        loop {
            match archive.read(run_id, &pointer) {
                Ok(records) => return Ok(Some(records)),
                // Collected, or reopened and archived again, while it was read (its old
                // segment may be gone): read what the pointer says now.
                Err(error) => match self.pointer(run_id)? {
                    Some(now) if now != pointer => pointer = now,
                    Some(_) => return Err(error),
                    None => return Ok(None),
                },
            }
        }
    }

    /// Where an archived run's records are, from its listing line (`None`: not archived).
    pub(super) fn pointer(&self, run_id: Uuid) -> Result<Option<Pointer>, Error> {
        match self.tables.get(Tree::Listings, run_id.as_bytes())? {
            Some(bytes) => Ok(decode_value::<listing::ArchivedAt>(
                &|| format!("listings/{run_id}"),
                &bytes,
            )?
            .archived),
            None => Ok(None),
        }
    }

    /// A run's records as the tables hold them, for the archive: snapshot, folded journal,
    /// event keys.
    pub(super) fn live_records(&self, run_id: Uuid) -> Result<Vec<Record>, Error> {
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

    /// Reads a run that the archiver may move meanwhile (no run mutex orders them): from the
    /// archive when it is archived, else from the tables — and those reads count only if no
    /// pointer appeared by the time they ended (an archive move stores the pointer before it
    /// deletes anything, and a rollback puts the records back before it drops the pointer).
    /// `None`: the run is in neither.
    pub(super) fn read_moving<R>(
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
            if self.pointer(run_id)?.is_none() {
                return read.map(Some);
            }
        }
        Err(Error::Io {
            kind: std::io::ErrorKind::Interrupted,
            message: format!("run {run_id} kept moving to and from the archive while it was read"),
        })
    }

    /// An archived run's state, from its records.
    pub(super) fn restore_archived(
        &self,
        run_id: Uuid,
        records: &[Record],
    ) -> Result<RunState, Error> {
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

    pub(super) fn prepare_archive(
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

    pub(super) fn commit_archive(&self, runs: &[ArchivedRun]) -> Result<Vec<Uuid>, Error> {
        let mut moved = Vec::new();
        for run in runs {
            let mut done = false;
            self.stage_with(|tx| {
                done = archive_run(tx, run)?;
                Ok(())
            })?;
            if done {
                moved.push(run.run_id);
            }
        }
        Ok(moved)
    }

    pub(super) fn tidy_archive(&self, settled: bool) -> Result<u64, Error> {
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
