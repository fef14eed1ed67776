//! Tables in memory, for simulation tests: the same commit rules as the embedded store (they
//! are written once, in `journal.rs`), without a disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use super::journal::Journal;
use super::tables::{Op, Scan, Tables, Tree};
use super::Error;

/// A [`super::Store`] in memory.
pub type MemoryStore = Journal<MemoryTables>;

/// One tree's entries.
type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemoryTables {
    trees: Mutex<BTreeMap<Tree, Entries>>,
}

impl MemoryTables {
    fn trees(&self) -> MutexGuard<'_, BTreeMap<Tree, Entries>> {
        self.trees
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        Journal::over(MemoryTables::default())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl Tables for MemoryTables {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .trees()
            .get(&tree)
            .and_then(|entries| entries.get(key).cloned()))
    }

    fn scan(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        // A copy of the range: the lock is not held while the caller iterates.
        let own = |bound: Bound<&[u8]>| match bound {
            Bound::Included(key) => Bound::Included(key.to_vec()),
            Bound::Excluded(key) => Bound::Excluded(key.to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (from, to) = (own(from), own(to));
        // (`BTreeMap::range` panics on an empty range given backwards.)
        let empty = match (&from, &to) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a >= b
            }
            _ => false,
        };
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = match (empty, self.trees().get(&tree)) {
            (false, Some(entries)) => entries
                .range((from, to))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            _ => Vec::new(),
        };
        if reverse {
            entries.reverse();
        }
        Box::new(entries.into_iter().map(Ok))
    }

    fn write(&self, ops: &[Op]) -> Result<(), Error> {
        let mut trees = self.trees();
        for op in ops {
            let entries = trees.entry(op.tree).or_default();
            match &op.value {
                Some(value) => entries.insert(op.key.clone(), value.clone()),
                None => entries.remove(&op.key),
            };
        }
        Ok(())
    }
}
