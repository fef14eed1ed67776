//! Upgrading older layouts, and checking the store: the derived indexes against the runs
//! (repaired at open), every record (`store verify`).

use std::collections::BTreeSet;
use std::ops::Bound;

use uuid::Uuid;

use super::*;

impl<T: Tables> Journal<T> {
    /// From format 1 (no `active` index) and 2 (no listings): builds what is missing from the
    /// runs, writes it durably, then records the new format. From 3 to 5, the indexes of
    /// format 6 (see [`Journal::upgrade_to_6`]).
    pub(super) fn upgrade(&self, found: u32) -> Result<(), Error> {
        if found >= 3 {
            // 4 only adds folded journals, 5 the archive: what is in the tables stays
            // readable as it is. 6 moves the archive's pointers and the indexes.
            let runs = self.upgrade_to_6()?;
            tracing::info!(runs, "moved the indexes to those of format 6");
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

    /// Format 6 keeps an archived run's pointer in its listing line, and indexes runs by state
    /// and runbook in one tree; retention reads the listings. Three entries fewer for each
    /// finished run: sled keeps memory for every node of its trees (a leaf per 8 or so
    /// entries, paged out or not), so that a million archived runs took 174 MB at start.
    ///
    /// Done in batches, each durable, before the format is recorded; every step can be done
    /// again, so a crash part-way leaves a format-5 store that the next open upgrades again.
    /// Returns the runs indexed.
    pub(super) fn upgrade_to_6(&self) -> Result<u64, Error> {
        const BATCH: usize = 4096;
        let mut indexed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch: Vec<(Vec<u8>, Vec<u8>)> = self
                .tables
                .scan(
                    Tree::Listings,
                    after.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                    Bound::Unbounded,
                    false,
                )
                .take(BATCH)
                .collect::<Result<_, _>>()?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = Some(last.clone());
            let mut ops = Vec::with_capacity(batch.len() * 2);
            for (key, bytes) in batch {
                let Ok(run_id) = Uuid::from_slice(&key) else {
                    continue;
                };
                let pointer = self.tables.get(Tree::Archived, &key)?;
                let mut line =
                    match decode_value::<Listing>(&|| format!("listings/{run_id}"), &bytes) {
                        Ok(line) => line,
                        Err(error) => {
                            // Left for `store verify` to name; an archived run's records stay in
                            // their segment, which its count keeps.
                            tracing::warn!(run = %run_id, %error, archived = pointer.is_some(),
                                "a listing line cannot be read while upgrading the store");
                            continue;
                        }
                    };
                if let Some(pointer) = pointer {
                    line.archived = Some(Pointer::decode(run_id, &pointer)?);
                    ops.push(Op {
                        tree: Tree::Listings,
                        key,
                        value: Some(encode_value(&line)?),
                    });
                }
                ops.push(Op {
                    tree: Tree::ByStateRunbook,
                    key: listing::index_key(&line.state, &line.runbook, run_id),
                    value: Some(Vec::new()),
                });
                indexed += 1;
            }
            self.write_now(ops)?;
        }
        // Then the trees of format 5 are emptied (a pointer goes only once its line holds it).
        for tree in [
            Tree::ByState,
            Tree::ByRunbook,
            Tree::Finished,
            Tree::Archived,
        ] {
            loop {
                let ops: Vec<Op> = self
                    .tables
                    .scan(tree, Bound::Unbounded, Bound::Unbounded, false)
                    .take(BATCH)
                    .map(|entry| {
                        entry.map(|(key, _)| Op {
                            tree,
                            key,
                            value: None,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                if ops.is_empty() {
                    break;
                }
                self.write_now(ops)?;
            }
        }
        Ok(indexed)
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
        // The index by state and runbook: counted, and every unfinished run in it checked
        // against its line.
        let state_index: crate::store::tables::Scan<'_> = if all {
            self.tables.scan(
                Tree::ByStateRunbook,
                Bound::Unbounded,
                Bound::Unbounded,
                false,
            )
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
                        crate::store::tables::scan_prefix(
                            &self.tables,
                            Tree::ByStateRunbook,
                            &listing::index_prefix(status.name(), None),
                            false,
                        )
                    }),
            )
        };
        for entry in state_index {
            let (key, _) = entry?;
            let Some((state, runbook, run_id)) = listing::index_parts(&key) else {
                problems.push(format!("by_state_runbook/{key:?}: bad key"));
                ops.push(op(Tree::ByStateRunbook, key, None));
                continue;
            };
            if listing::is_terminal(state) && !all {
                *counts.runs.entry(state.to_owned()).or_default() += 1;
                continue;
            }
            let Some(line) = listed(run_id)? else {
                problems.push(format!(
                    "run {run_id} is in the {state} index but has no listing"
                ));
                ops.push(op(Tree::ByStateRunbook, key, None));
                continue;
            };
            if line.state != state || line.runbook != runbook {
                problems.push(format!(
                    "run {run_id} is a {} run of {} but in the index as a {state} run of {runbook}",
                    line.state, line.runbook
                ));
                ops.push(op(Tree::ByStateRunbook, key, None));
                continue;
            }
            *counts.runs.entry(state.to_owned()).or_default() += 1;
            if listing::is_terminal(state) {
                continue;
            }
            // Every armed timer of a run is in the index: a run never waits for nothing.
            for (fire_at_ms, timer) in &line.timers {
                let timer_key = TimerKey {
                    fire_at_ms: *fire_at_ms,
                    run_id,
                    timer: TimerId(*timer),
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
        // Every run in the index (`all`: a walk of every line).
        if all {
            for entry in self
                .tables
                .scan(Tree::Listings, Bound::Unbounded, Bound::Unbounded, false)
            {
                let (key, bytes) = entry?;
                let Ok(run_id) = Uuid::from_slice(&key) else {
                    problems.push(format!("listings/{key:?}: bad run id"));
                    continue;
                };
                let Ok(line) = decode_value::<Listing>(&|| format!("listings/{run_id}"), &bytes)
                else {
                    continue;
                };
                let index_key = listing::index_key(&line.state, &line.runbook, run_id);
                if self.tables.get(Tree::ByStateRunbook, &index_key)?.is_none() {
                    problems.push(format!(
                        "run {run_id} ({} of {}) is not in the index by state and runbook",
                        line.state, line.runbook
                    ));
                    ops.push(op(Tree::ByStateRunbook, index_key, Some(Vec::new())));
                    *counts.runs.entry(line.state.clone()).or_default() += 1;
                }
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
                Some(line) if line.timers.contains(&(timer.fire_at_ms, timer.timer.0)) => {}
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

    /// Every record read back, every derived index and the archive's counts checked (`store
    /// verify`); one line per problem.
    ///
    /// A daemon's store changes while it is read: a run archived between the scan of the
    /// pointers and the read of the counts, or moved out of the tables between its snapshot and
    /// its events, looks like a problem that is not one. So problems found while commits went
    /// on are looked for again with commits held (the staged changes' lock: a commit waits for
    /// it, so the second pass reads one state); a sound store is read once, without stopping
    /// anything.
    pub(super) fn verify_all(&self) -> Result<Vec<String>, Error> {
        let problems = self.verify_once()?;
        if problems.is_empty() {
            return Ok(problems);
        }
        let _held = self.staged();
        self.verify_once()
    }

    fn verify_once(&self) -> Result<Vec<String>, Error> {
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
            .scan(Tree::Listings, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (key, bytes) = entry?;
            let Ok(run_id) = Uuid::from_slice(&key) else {
                continue;
            };
            let line = match decode_value::<Listing>(&|| format!("listings/{run_id}"), &bytes) {
                Ok(line) => line,
                Err(error) => {
                    problems.push(error.to_string());
                    continue;
                }
            };
            let Some(pointer) = line.archived else {
                continue;
            };
            *pointed.entry(pointer.segment).or_default() += 1;
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
        // Users, tokens and notifications: each record decodes.
        for (key, bytes) in self.load_access()? {
            let what = || format!("access/{key}");
            let decoded = if key.starts_with("user/") {
                decode_value::<crate::access::User>(&what, &bytes).map(drop)
            } else {
                decode_value::<crate::access::Token>(&what, &bytes).map(drop)
            };
            problems.extend(decoded.err().map(|error| error.to_string()));
        }
        for (key, bytes) in self.load_outbox(&[])? {
            let run = Uuid::from_slice(key.get(..16).unwrap_or_default()).unwrap_or_default();
            let what = || {
                format!(
                    "outbox/{run}/{}",
                    String::from_utf8_lossy(key.get(16..).unwrap_or_default())
                )
            };
            let decoded = decode_value::<crate::notify::Entry>(&what, &bytes);
            problems.extend(decoded.err().map(|error| error.to_string()));
        }
        problems.extend(self.check_indexes(false)?);
        Ok(problems)
    }
}
