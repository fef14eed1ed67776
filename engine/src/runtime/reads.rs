//! What the API reads of the engine: runs by id or prefix, their state, journal and logs, and
//! the figures of `/metrics`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use uuid::Uuid;

use super::{Engine, Error, Resident};
use crate::machine::Event;

impl Engine {
    /// Finds a run by its id or a unique prefix of it.
    pub fn resolve(&self, typed: &str) -> Result<Uuid, Error> {
        if let Ok(id) = Uuid::parse_str(typed) {
            if self.exists(id)? {
                return Ok(id);
            }
            return Err(Error::NotFound(format!("no run {typed}")));
        }
        let needle = typed.to_ascii_lowercase();
        if needle.is_empty() || !needle.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Error::NotFound(format!(
                "no run {typed:?} (a run id is a UUID or a unique prefix of one)"
            )));
        }
        // The ids whose bytes start with the typed hex digits (an odd last digit stands for
        // the sixteen bytes it begins); then the typed text, dashes and all, must match.
        let digits: Vec<u8> = needle
            .chars()
            .filter_map(|c| c.to_digit(16))
            .map(|digit| digit as u8)
            .collect();
        let whole: Vec<u8> = digits
            .chunks_exact(2)
            .map(|pair| pair[0] << 4 | pair[1])
            .collect();
        let prefixes: Vec<Vec<u8>> = match digits.len() % 2 {
            0 => vec![whole],
            _ => {
                let high = digits[digits.len() - 1] << 4;
                (0..16u8)
                    .map(|low| {
                        let mut prefix = whole.clone();
                        prefix.push(high | low);
                        prefix
                    })
                    .collect()
            }
        };
        let store = self.inner.writer.store();
        let mut matches: Vec<Uuid> = Vec::new();
        for prefix in prefixes {
            for id in store.find_runs(&prefix, 2)? {
                if id.hyphenated().to_string().starts_with(&needle) && !matches.contains(&id) {
                    matches.push(id);
                }
            }
            if matches.len() > 1 {
                break;
            }
        }
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::NotFound(format!("no run {typed}"))),
            _ => Err(Error::Ambiguous(format!(
                "run id prefix {typed} matches more than one run; type more of it"
            ))),
        }
    }

    /// Where a step's log lives: `<data>/runs/<run>/logs/<step>.log` (`<step>.undo.log`).
    pub fn log_path(&self, run_id: Uuid, step: &str, undo: bool) -> PathBuf {
        let name = if undo {
            format!("{step}.undo.log")
        } else {
            format!("{step}.log")
        };
        self.inner
            .data_dir
            .join("runs")
            .join(run_id.to_string())
            .join("logs")
            .join(name)
    }

    /// A run's current state (or its corruption).
    pub async fn get(&self, run_id: Uuid) -> Result<Resident, Error> {
        let resident = self
            .resident(run_id)?
            .ok_or_else(|| Error::NotFound(format!("no run {run_id}")))?;
        let current = resident.lock().await.clone();
        // (A run that was just parked may still have a step to continue with: if it leaves
        // memory now, that input reads it back.)
        self.release(run_id, resident, true);
        Ok(current)
    }

    /// A page of runs, newest first, from the store's indexes. Exact: every commit stores the
    /// run's listing line, and a run's state is adopted only once its commit is durable.
    pub fn list(&self, query: &crate::store::ListQuery) -> Result<crate::store::Page, Error> {
        Ok(self.inner.writer.store().list(query)?)
    }

    /// A run's journal, as far as it is durable. The store may already hold the events of a
    /// commit that is still being synced (and that a crash would lose); the run's state is
    /// adopted only once its commit is durable, so its `last_seq` bounds what may be shown.
    pub async fn events(&self, run_id: Uuid) -> Result<Vec<Event>, Error> {
        let durable = match self.get(run_id).await? {
            Resident::Live(state) => Some(state.last_seq),
            Resident::Corrupt { .. } => None,
        };
        let mut events = self.inner.writer.store().events(run_id)?;
        if let Some(last_seq) = durable {
            events.retain(|event| event.seq <= last_seq);
        }
        Ok(events)
    }

    /// How many runs are held in memory (the others are read from the store when needed).
    pub fn runs_in_memory(&self) -> usize {
        self.inner
            .runs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// How long steps took, for `/metrics`.
    pub fn step_duration(&self) -> &crate::histogram::Histogram {
        &self.inner.step_duration
    }

    /// Failed step attempts by runbook since the daemon started.
    pub fn step_failures(&self) -> BTreeMap<String, u64> {
        self.inner
            .step_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How late timers fired, for `/metrics`.
    pub fn timer_lateness(&self) -> &crate::histogram::Histogram {
        &self.inner.timer_lateness
    }
}
