//! The small table interface every store is written against: named trees of byte keys and
//! values, read one key or one ordered range at a time, and changed only by a batch of
//! operations that the table makes durable *before* anyone can read them.
//!
//! The commit rules (`journal.rs`) are written once against [`Tables`]; `sled.rs` (the
//! embedded default: sled behind a write-ahead log) and `memory.rs` (tests) implement it.

use std::ops::Bound;

use super::Error;

/// The trees, with their one-byte code in the write-ahead log (never renumber one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Tree {
    /// run_id → the run's latest snapshot.
    Runs = 0,
    /// run_id ‖ seq → event.
    Events = 1,
    /// fire_at_ms ‖ run_id ‖ timer → empty (see [`super::TimerKey`]).
    Timers = 2,
    /// resource → the holder's run id.
    Locks = 3,
    /// name → schedule.
    Schedules = 4,
    /// `format`, `counts`.
    Meta = 5,
    /// run_id → empty, for every run that is not parked.
    Active = 6,
    /// run_id → the run's listing line ([`super::Listing`]).
    Listings = 7,
    /// Format ≤ 5: state name ‖ 0 ‖ run_id → empty (now [`Tree::ByStateRunbook`]; the upgrade
    /// to 6 empties it).
    ByState = 8,
    /// Format ≤ 5: runbook name ‖ 0 ‖ run_id → empty (now [`Tree::ByStateRunbook`]).
    ByRunbook = 9,
    /// Format ≤ 5: finished_at_ms ‖ run_id → empty (retention now reads the listings).
    Finished = 10,
    /// a launch's unique claim (a schedule's instant) → the run id that holds it.
    Claims = 11,
    /// run_id → a finished run's events but its last, in one compressed record (`fold.rs`).
    Folded = 12,
    /// Format ≤ 5: run_id → where an archived run's records are (now in its listing line).
    Archived = 13,
    /// state name ‖ 0 ‖ runbook name ‖ 0 ‖ run_id → empty: every run, by state and runbook.
    ByStateRunbook = 14,
    /// `user/<name>` → a user, `token/<id>` → a token (`access.rs`).
    Access = 15,
    /// run_id ‖ notification id → an outbox entry (`notify.rs`).
    Outbox = 16,
}

impl Tree {
    pub const ALL: [Tree; 17] = [
        Tree::Runs,
        Tree::Events,
        Tree::Timers,
        Tree::Locks,
        Tree::Schedules,
        Tree::Meta,
        Tree::Active,
        Tree::Listings,
        Tree::ByState,
        Tree::ByRunbook,
        Tree::Finished,
        Tree::Claims,
        Tree::Folded,
        Tree::Archived,
        Tree::ByStateRunbook,
        Tree::Access,
        Tree::Outbox,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Tree> {
        Tree::ALL.get(usize::from(code)).copied()
    }

    /// The tree's name on disk (sled) and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Runs => "runs",
            Tree::Events => "events",
            Tree::Timers => "timers",
            Tree::Locks => "locks",
            Tree::Schedules => "schedules",
            Tree::Meta => "meta",
            Tree::Active => "active",
            Tree::Listings => "listings",
            Tree::ByState => "by_state",
            Tree::ByRunbook => "by_runbook",
            Tree::Finished => "finished",
            Tree::Claims => "claims",
            Tree::Folded => "folded",
            Tree::Archived => "archived",
            Tree::ByStateRunbook => "by_state_runbook",
            Tree::Access => "access",
            Tree::Outbox => "outbox",
        }
    }
}

/// One physical change to a tree: set `key` to `value`, or remove it (`None`). Operations are
/// absolute, so applying a batch again over any mix of its earlier effects gives the same result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub tree: Tree,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A key and its value, read from a tree.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An ordered read of a tree's range.
pub type Scan<'a> = Box<dyn Iterator<Item = Result<Entry, Error>> + 'a>;

/// The table interface.
///
/// # Contract
///
/// - [`Tables::write`] makes the batch durable (power-safe) and only then visible to readers:
///   when it returns `Ok`, every reader sees all of it; when it fails, none of it was applied,
///   and after a crash at any instant the tables hold either the whole batch or none of it.
/// - Reads see only what a `write` returned `Ok` for (or, after a crash, what it made durable).
pub trait Tables: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// The entries with keys in `(from, to)`, ascending, or descending when `reverse`.
    fn scan(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>, reverse: bool) -> Scan<'_>;

    fn write(&self, ops: &[Op]) -> Result<(), Error>;

    /// Folds what is durable into the main files, so that the next open has nothing to
    /// replay (at shutdown). Nothing to do where there is no log.
    fn checkpoint(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// The entries whose keys start with `prefix`, ascending or descending.
pub fn scan_prefix<'a>(
    tables: &'a dyn Tables,
    tree: Tree,
    prefix: &[u8],
    reverse: bool,
) -> Scan<'a> {
    match prefix_end(prefix) {
        Some(end) => tables.scan(
            tree,
            Bound::Included(prefix),
            Bound::Excluded(end.as_slice()),
            reverse,
        ),
        None => tables.scan(tree, Bound::Included(prefix), Bound::Unbounded, reverse),
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such key).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
