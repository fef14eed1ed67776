//! Which finished runs retention may collect, read from the listings in the order of their ids.

use std::ops::Bound;

use super::*;

impl<T: Tables> Journal<T> {
    /// The finished runs that finished before `before_ms`, at most `limit`, in the order of
    /// their ids (so of their creation): a run created at or after `before_ms` cannot have
    /// finished before it, so the scan ends there, having read only the lines of runs created
    /// before it — the expired ones and those still running or finished since (the runs that
    /// were unfinished at that instant: a few, not a history).
    pub fn expired(
        &self,
        before_ms: u64,
        after: Option<&Expired>,
        limit: usize,
    ) -> Result<Vec<Expired>, Error> {
        // (A UUID v7 holds 48 bits of milliseconds: past them, every id is before.)
        let end = DateTime::<Utc>::from_timestamp_millis(i64::try_from(before_ms).unwrap_or(-1))
            .filter(|_| before_ms < 1 << 48)
            .map(listing::first_id_at);
        let from = after.map(|after| *after.run_id.as_bytes());
        let mut found = Vec::new();
        for entry in self.tables.scan(
            Tree::Listings,
            from.as_ref()
                .map_or(Bound::Unbounded, |from| Bound::Excluded(from.as_slice())),
            end.as_ref().map_or(Bound::Unbounded, |end| {
                Bound::Excluded(end.as_bytes().as_slice())
            }),
            false,
        ) {
            let (key, bytes) = entry?;
            let Ok(run_id) = Uuid::from_slice(&key) else {
                continue;
            };
            // (A line that does not decode is left for `store verify` to name.)
            let Ok(line) = decode_value::<Listing>(&|| format!("listings/{run_id}"), &bytes) else {
                continue;
            };
            let finished_at_ms = line
                .finished_at
                .filter(|_| line.is_finished())
                .and_then(|at| u64::try_from(at.timestamp_millis()).ok());
            if let Some(finished_at_ms) = finished_at_ms.filter(|at| *at < before_ms) {
                found.push(Expired {
                    finished_at_ms,
                    run_id,
                });
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }
}
