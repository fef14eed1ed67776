//! Copying a journal into other tables (`runbook store copy`): every record as it is, an archived
//! run's records taken back out of the archive (the target has none), then read back.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::super::archive;
use super::super::listing::Listing;
use super::super::tables::{Op, Tables, Tree};
use super::super::{decode_value, encode_value, Error};
use super::Journal;

/// What was copied, per tree (after archived runs were taken out of the archive).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    pub records: BTreeMap<&'static str, u64>,
    pub runs: u64,
    pub unarchived_runs: u64,
    pub bytes: u64,
}

/// Records per write to the target.
const BATCH: usize = 512;

impl<T: Tables> Journal<T> {
    /// Writes every record of this journal into `target`, which must be empty, then reads each
    /// one back through `check` (the same store opened again: no cache of `target` answers) and
    /// compares the bytes. An archived run's records go back into their
    /// trees and its listing line loses its pointer, so the target reads it without an archive.
    /// The archive's own bookkeeping (segment counts) is not copied.
    pub fn copy_into(&self, target: &dyn Tables, check: &dyn Tables) -> Result<CopyReport, Error> {
        for tree in Tree::ALL {
            if let Some(entry) = target
                .scan(tree, Bound::Unbounded, Bound::Unbounded, false)
                .next()
            {
                let (key, _) = entry?;
                return Err(Error::Io {
                    kind: std::io::ErrorKind::AlreadyExists,
                    message: format!(
                        "the target store is not empty ({}/{}): copy only into a new one",
                        tree.name(),
                        String::from_utf8_lossy(&key)
                    ),
                });
            }
        }
        let mut copying = Copying::default();
        for tree in Tree::ALL {
            for entry in self
                .tables
                .scan(tree, Bound::Unbounded, Bound::Unbounded, false)
            {
                let (key, mut value) = entry?;
                if tree == Tree::Meta && key.starts_with(archive::COUNT_PREFIX) {
                    continue;
                }
                if tree == Tree::Listings {
                    copying.report.runs += 1;
                    let run_id = uuid::Uuid::from_slice(&key).map_err(|_| Error::Corrupt {
                        key: format!("listings/{}", String::from_utf8_lossy(&key)),
                        reason: "not a run id".to_owned(),
                    })?;
                    if let Some(records) = self.archived(run_id)? {
                        for (tree, key, value) in records {
                            copying.push(tree, key, value);
                        }
                        let mut listing: Listing =
                            decode_value(&|| format!("listings/{run_id}"), &value)?;
                        listing.archived = None;
                        value = encode_value(&listing)?;
                        copying.report.unarchived_runs += 1;
                    }
                }
                copying.push(tree, key, value);
                if copying.batch.len() >= BATCH {
                    target.write(&copying.batch)?;
                    copying.batch.clear();
                }
            }
        }
        if !copying.batch.is_empty() {
            target.write(&copying.batch)?;
        }
        let Copying {
            written, report, ..
        } = copying;
        // Read back: every record, byte for byte (by digest), and nothing else.
        for (tree, key, sum) in &written {
            let found = check.get(*tree, key)?;
            if found.as_deref().map(digest::of).as_ref() != Some(sum) {
                return Err(Error::Corrupt {
                    key: format!("{}/{}", tree.name(), String::from_utf8_lossy(key)),
                    reason: "the copy reads back different or missing".to_owned(),
                });
            }
        }
        let mut in_target = 0u64;
        for tree in Tree::ALL {
            for entry in check.scan(tree, Bound::Unbounded, Bound::Unbounded, false) {
                entry?;
                in_target += 1;
            }
        }
        if in_target != written.len() as u64 {
            return Err(Error::Corrupt {
                key: "copy".to_owned(),
                reason: format!(
                    "the target holds {in_target} records, {} were copied",
                    written.len()
                ),
            });
        }
        Ok(report)
    }
}

/// What is being written, and what is to be read back.
#[derive(Default)]
struct Copying {
    batch: Vec<Op>,
    written: Vec<(Tree, Vec<u8>, digest::Sum)>,
    report: CopyReport,
}

impl Copying {
    fn push(&mut self, tree: Tree, key: Vec<u8>, value: Vec<u8>) {
        self.written.push((tree, key.clone(), digest::of(&value)));
        self.report.bytes += value.len() as u64;
        *self.report.records.entry(tree.name()).or_default() += 1;
        self.batch.push(Op {
            tree,
            key,
            value: Some(value),
        });
    }
}

/// A digest of a value, to compare what was written with what reads back without keeping
/// every value in memory.
mod digest {
    use sha2::{Digest, Sha256};

    pub type Sum = [u8; 32];

    pub fn of(bytes: &[u8]) -> Sum {
        Sha256::digest(bytes).into()
    }
}
