//! The runs held in memory: found, loaded from the store on demand, dropped when parked and
//! unused, and reloaded after the store was reopened.

use std::sync::Arc;

use tokio::sync::Mutex;
use uuid::Uuid;

use super::*;

/// A run as the engine holds it. The state is shared, not copied, with readers.
#[derive(Debug, Clone)]
pub enum Resident {
    Live(Arc<RunState>),
    /// Its records could not be read; `reason` names the key.
    Corrupt {
        reason: String,
    },
}

impl Resident {
    /// A run as read from the store: live, or, when its records cannot be read, corrupt (logged,
    /// and never touched again); `None` when the store has no such run.
    pub(super) fn from_read(
        run_id: Uuid,
        read: Result<Option<RunState>, store::Error>,
    ) -> Option<Resident> {
        match read {
            Ok(state) => state.map(|state| Resident::Live(Arc::new(state))),
            Err(error) => {
                tracing::error!(run = %run_id, %error, "run is corrupt; it is left untouched");
                Some(Resident::Corrupt {
                    reason: error.to_string(),
                })
            }
        }
    }
}

impl Engine {
    /// After the store was reopened (it failed, e.g. on a full disk): the journal on disk is
    /// the truth, so every run in memory or not parked, and every schedule, is read again, and
    /// calls whose start is journaled but which do not run in this process are recovered as
    /// after a restart.
    pub async fn reload_on_reopen(self) {
        let mut generation = self.inner.writer.generation();
        loop {
            tokio::select! {
                _ = self.inner.draining.cancelled() => return,
                changed = generation.changed() => if changed.is_err() { return },
            }
            tracing::info!("reloading runs and schedules from the reopened store");
            let store = self.inner.writer.store();
            let mut run_ids = match store.active_run_ids() {
                Ok(ids) => ids,
                Err(error) => {
                    tracing::error!(%error, "cannot reload runs");
                    continue;
                }
            };
            run_ids.extend(self.residents().into_iter().map(|(run_id, _)| run_id));
            run_ids.sort();
            run_ids.dedup();
            for run_id in run_ids {
                let resident = self
                    .inner
                    .runs
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .entry(run_id)
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Resident::Corrupt {
                            reason: "loading".to_owned(),
                        }))
                    })
                    .clone();
                // Read under the run's lock, so that a transition committed meanwhile is kept.
                let mut guard = resident.lock().await;
                *guard = match Resident::from_read(run_id, store.load_run(run_id)) {
                    Some(resident) => resident,
                    None => {
                        drop(guard);
                        self.inner
                            .runs
                            .write()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .remove(&run_id);
                        continue;
                    }
                };
            }
            if let Ok(loaded) = store.load_schedules() {
                let mut schedules = self.inner.schedules.lock().await;
                for schedule in loaded.into_iter().flatten().map(Schedule::upgrade) {
                    schedules.insert(schedule.name.clone(), schedule);
                }
            }
            self.recover().await;
        }
    }

    pub(super) fn residents(&self) -> Vec<(Uuid, Arc<Mutex<Resident>>)> {
        let runs = self
            .inner
            .runs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        runs.iter()
            .map(|(id, resident)| (*id, resident.clone()))
            .collect()
    }

    /// The run as the engine holds it, read from the store into memory if it is not there.
    pub(super) fn resident(&self, run_id: Uuid) -> Result<Option<Arc<Mutex<Resident>>>, Error> {
        let resident = self
            .inner
            .runs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&run_id)
            .cloned();
        if resident.is_some() {
            return Ok(resident);
        }
        // Read under the write lock, so that two readers never hold two copies of one run.
        let mut runs = self
            .inner
            .runs
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(resident) = runs.get(&run_id) {
            return Ok(Some(resident.clone()));
        }
        let read = self.inner.writer.store().load_run(run_id);
        // A store that cannot be read at all is not a corrupt run.
        if let Err(error) = &read {
            if error.is_failure() {
                return Err(error.clone().into());
            }
        }
        let Some(resident) = Resident::from_read(run_id, read) else {
            return Ok(None);
        };
        let resident = Arc::new(Mutex::new(resident));
        runs.insert(run_id, resident.clone());
        Ok(Some(resident))
    }

    /// Hands back a run taken with [`Engine::resident`]: with `evict`, a parked run that nobody
    /// else holds leaves memory (the store has all of it).
    pub(super) fn release(&self, run_id: Uuid, resident: Arc<Mutex<Resident>>, evict: bool) {
        if !evict {
            return;
        }
        let mut runs = self
            .inner
            .runs
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        drop(resident);
        let Some(held) = runs.get(&run_id) else {
            return;
        };
        // Under the write lock nobody can take a new reference; the map's is the only one.
        if Arc::strong_count(held) != 1 {
            return;
        }
        let parked = match held.try_lock() {
            Ok(guard) => matches!(&*guard, Resident::Live(state) if state.is_parked()),
            Err(_) => false,
        };
        if parked {
            runs.remove(&run_id);
        }
    }

    /// Whether a run exists, without reading it.
    pub(super) fn exists(&self, run_id: Uuid) -> Result<bool, Error> {
        let resident = self
            .inner
            .runs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(&run_id);
        Ok(resident
            || !self
                .inner
                .writer
                .store()
                .find_runs(run_id.as_bytes(), 1)?
                .is_empty())
    }
}
