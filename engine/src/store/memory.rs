//! An in-memory [`Store`] with the same semantics as the sled one, for simulation tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use uuid::Uuid;

use super::{
    decode_event, decode_value, restore, Commit, Error, LoadedRun, ScheduleCommit, Store, TimerKey,
};
use crate::machine::{Event, RunState};

#[derive(Default)]
struct Tables {
    runs: BTreeMap<Uuid, Vec<u8>>,
    events: BTreeMap<(Uuid, u64), Vec<u8>>,
    timers: BTreeMap<TimerKey, ()>,
    locks: BTreeMap<String, Uuid>,
    schedules: BTreeMap<String, Vec<u8>>,
    active: std::collections::BTreeSet<Uuid>,
}

#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn restore(tables: &Tables, run_id: Uuid, snapshot: &[u8]) -> Result<RunState, Error> {
        restore(
            run_id,
            snapshot,
            tables.events.get(&(run_id, 1)).map(Vec::as_slice),
            |from| {
                tables
                    .events
                    .range((run_id, from)..=(run_id, u64::MAX))
                    .map(|((_, seq), bytes)| Ok((*seq, bytes.as_slice())))
            },
        )
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn apply(&self, commit: &Commit) -> Result<(), Error> {
        let mut tables = self.tables();
        let next_taken = tables
            .events
            .contains_key(&(commit.run_id, commit.expected_seq + 1));
        let last_present = commit.expected_seq == 0
            || tables
                .events
                .contains_key(&(commit.run_id, commit.expected_seq));
        if next_taken || !last_present {
            return Err(Error::Conflict {
                run_id: commit.run_id,
                expected: commit.expected_seq,
                found: 0,
            });
        }
        for resource in &commit.locks_acquire {
            if let Some(holder) = tables.locks.get(resource) {
                if *holder != commit.run_id {
                    return Err(Error::LockHeld {
                        resource: resource.clone(),
                        holder: *holder,
                    });
                }
            }
        }
        for resource in &commit.locks_acquire {
            tables.locks.insert(resource.clone(), commit.run_id);
        }
        for resource in &commit.locks_release {
            if tables.locks.get(resource) == Some(&commit.run_id) {
                tables.locks.remove(resource);
            }
        }
        for (seq, bytes) in &commit.events {
            tables.events.insert((commit.run_id, *seq), bytes.clone());
        }
        if let Some(snapshot) = &commit.snapshot {
            tables.runs.insert(commit.run_id, snapshot.clone());
        }
        if commit.parked {
            tables.active.remove(&commit.run_id);
        } else {
            tables.active.insert(commit.run_id);
        }
        for key in &commit.timers_remove {
            tables.timers.remove(key);
        }
        for key in &commit.timers_add {
            tables.timers.insert(*key, ());
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), Error> {
        Ok(())
    }

    fn load_snapshots(&self) -> Result<Vec<LoadedRun>, Error> {
        Ok(self
            .tables()
            .runs
            .iter()
            .map(|(run_id, snapshot)| super::snapshot_only(*run_id, snapshot))
            .collect())
    }

    fn active_run_ids(&self) -> Result<Vec<Uuid>, Error> {
        Ok(self.tables().active.iter().copied().collect())
    }

    fn find_runs(&self, prefix: &[u8], limit: usize) -> Result<Vec<Uuid>, Error> {
        Ok(self
            .tables()
            .runs
            .keys()
            .filter(|run_id| run_id.as_bytes().starts_with(prefix))
            .take(limit)
            .copied()
            .collect())
    }

    fn load_run(&self, run_id: Uuid) -> Result<Option<RunState>, Error> {
        let tables = self.tables();
        let Some(snapshot) = tables.runs.get(&run_id) else {
            return Ok(None);
        };
        Self::restore(&tables, run_id, snapshot).map(Some)
    }

    fn events(&self, run_id: Uuid) -> Result<Vec<Event>, Error> {
        let tables = self.tables();
        tables
            .events
            .range((run_id, 0)..=(run_id, u64::MAX))
            .map(|((_, seq), bytes)| decode_event(run_id, *seq, bytes))
            .collect()
    }

    fn next_timer(&self) -> Result<Option<TimerKey>, Error> {
        Ok(self.tables().timers.keys().next().copied())
    }

    fn due_timers(&self, until_ms: u64, limit: usize) -> Result<Vec<TimerKey>, Error> {
        Ok(self
            .tables()
            .timers
            .keys()
            .take_while(|key| key.fire_at_ms <= until_ms)
            .take(limit)
            .copied()
            .collect())
    }

    fn remove_timer(&self, key: &TimerKey) -> Result<(), Error> {
        self.tables().timers.remove(key);
        Ok(())
    }

    fn lock_holder(&self, resource: &str) -> Result<Option<Uuid>, Error> {
        Ok(self.tables().locks.get(resource).copied())
    }

    fn apply_schedule(&self, commit: &ScheduleCommit) -> Result<(), Error> {
        let mut tables = self.tables();
        match &commit.value {
            Some(value) => tables.schedules.insert(commit.name.clone(), value.clone()),
            None => tables.schedules.remove(&commit.name),
        };
        for key in &commit.timers_remove {
            tables.timers.remove(key);
        }
        for key in &commit.timers_add {
            tables.timers.insert(*key, ());
        }
        Ok(())
    }

    fn load_schedules(&self) -> Result<Vec<Result<crate::schedule::Schedule, Error>>, Error> {
        let tables = self.tables();
        Ok(tables
            .schedules
            .iter()
            .map(|(name, bytes)| decode_value(&|| format!("schedules/{name}"), bytes))
            .collect())
    }

    fn verify(&self) -> Result<Vec<String>, Error> {
        let tables = self.tables();
        let runs: Vec<LoadedRun> = tables
            .runs
            .iter()
            .map(|(run_id, snapshot)| {
                Self::restore(&tables, *run_id, snapshot).map_err(|error| (*run_id, error))
            })
            .collect();
        Ok(runs
            .into_iter()
            .filter_map(|run| run.err())
            .map(|(_, error)| error.to_string())
            .collect())
    }
}
