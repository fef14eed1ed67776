//! The write-ahead log in front of sled: what makes a group commit durable with one write and
//! one `fdatasync`, and what makes it all or nothing.
//!
//! A batch of changes ([`Op`]s: `tree, key, value | removed`) is appended as one record and
//! `fdatasync`ed *before* any of it is applied to sled (see `sled.rs`). sled writes its own
//! buffers to its files whenever it likes, so after a crash its files may hold any part of the
//! changes applied since the last checkpoint — but only changes whose record is durable here.
//! sled itself is made durable only at a checkpoint, after which the segments it covers are
//! deleted.
//!
//! # Format
//!
//! `wal/<first lsn, 20 digits>.log`: an 8-byte magic, then records, each
//! `len: u32 | crc32(lsn ‖ payload): u32 | lsn: u64 | payload`, big-endian, lsns consecutive.
//! The file is zero-filled ahead of the writes ([`CHUNK`] at a time) so that a sync overwrites
//! blocks that already exist: `fdatasync` then has no file size or extent to journal. A record
//! whose length is zero, whose checksum fails or whose lsn is not the next one ends the log
//! (the torn tail of a write that was never acknowledged).
//!
//! # Recovery
//!
//! Every segment still on disk holds records written since the last completed checkpoint (a
//! crash inside a checkpoint leaves an older segment too, whose records are older still).
//! Replaying *every* record, in order, sets each key it touches to its last logged value, and
//! the operations are absolute, so it does not matter which of them sled had already written:
//! replay depends on nothing sled recovers but the state of the last checkpoint.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::tables::{Op, Tree};

const MAGIC: &[u8; 8] = b"RBWAL001";
const HEADER: usize = 16;
/// How far ahead of the writes the segment is zero-filled.
const CHUNK: u64 = 1 << 20;
/// Past this size, a sync also checkpoints and starts a new segment.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Appends `ops` to `buffer` in the record payload encoding.
pub fn encode_ops(ops: &[Op], buffer: &mut Vec<u8>) {
    for op in ops {
        buffer.push(op.tree.code());
        buffer.extend_from_slice(&(op.key.len() as u32).to_be_bytes());
        buffer.extend_from_slice(&op.key);
        match &op.value {
            Some(value) => {
                buffer.push(1);
                buffer.extend_from_slice(&(value.len() as u32).to_be_bytes());
                buffer.extend_from_slice(value);
            }
            None => buffer.push(0),
        }
    }
}

/// Decodes a record payload; `None` if it is malformed.
pub fn decode_ops(mut payload: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    fn length(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let tree = Tree::from_code(take(&mut payload, 1)?[0])?;
        let key_len = length(&mut payload)?;
        let key = take(&mut payload, key_len)?.to_vec();
        let value = match take(&mut payload, 1)?[0] {
            0 => None,
            1 => {
                let value_len = length(&mut payload)?;
                Some(take(&mut payload, value_len)?.to_vec())
            }
            _ => return None,
        };
        ops.push(Op { tree, key, value });
    }
    Some(ops)
}

/// A record read back: its lsn and operations.
pub type Record = (u64, Vec<Op>);

/// The log's open segment and what is waiting to be written to it.
pub struct Wal {
    file: File,
    /// Where the next record goes.
    position: u64,
    /// Bytes of the file that exist (zero-filled or written).
    allocated: u64,
    /// The lsn of the next record.
    next_lsn: u64,
}

fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.log")
}

/// The segments in `dir`, oldest first, with their first lsn.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let lsn = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".log"))
            .and_then(|lsn| lsn.parse::<u64>().ok());
        if let Some(lsn) = lsn {
            found.push((lsn, path));
        }
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes segments that [`Wal::rotate`] returned, once what they hold is durable elsewhere
/// (one already gone is fine: a later checkpoint deleted it).
pub fn remove_segments(dir: &Path, old: &[PathBuf]) -> std::io::Result<()> {
    for segment in old {
        match std::fs::remove_file(segment) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    sync_dir(dir)
}

impl Wal {
    /// Reads every record with an lsn of at least `from_lsn`, in order, and returns them with
    /// the lsn the log ends at (the last record's, or `from_lsn - 1`).
    pub fn read(dir: &Path, from_lsn: u64) -> std::io::Result<(Vec<Record>, u64)> {
        let mut records = Vec::new();
        let mut last = from_lsn.saturating_sub(1);
        if !dir.exists() {
            return Ok((records, last));
        }
        let mut expected: Option<u64> = None;
        'segments: for (first_lsn, path) in segments(dir)? {
            if expected.is_some_and(|expected| expected != first_lsn) {
                tracing::warn!(segment = %path.display(), "the log has a gap before this segment; it ends here");
                break;
            }
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
                // A segment whose creation was cut short holds no record.
                break;
            }
            let mut at = MAGIC.len();
            let mut lsn = first_lsn;
            while at + HEADER <= bytes.len() {
                let header = &bytes[at..at + HEADER];
                let len = u32::from_be_bytes(header[..4].try_into().unwrap_or_default()) as usize;
                let crc = u32::from_be_bytes(header[4..8].try_into().unwrap_or_default());
                let record_lsn = u64::from_be_bytes(header[8..16].try_into().unwrap_or_default());
                if len == 0 || at + HEADER + len > bytes.len() || record_lsn != lsn {
                    break;
                }
                let payload = &bytes[at + HEADER..at + HEADER + len];
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&record_lsn.to_be_bytes());
                hasher.update(payload);
                if hasher.finalize() != crc {
                    break;
                }
                let Some(ops) = decode_ops(payload) else {
                    break;
                };
                if lsn >= from_lsn {
                    records.push((lsn, ops));
                }
                last = last.max(lsn);
                at += HEADER + len;
                lsn += 1;
            }
            // A record that does not verify ends the whole log: what follows was never synced.
            if at + HEADER <= bytes.len() && bytes[at..at + 4] != [0, 0, 0, 0] {
                break 'segments;
            }
            expected = Some(lsn);
        }
        Ok((records, last))
    }

    /// Starts a fresh segment whose first record gets `next_lsn`, and deletes every older
    /// segment. Call only when everything in the older segments is durable elsewhere.
    pub fn create(dir: &Path, next_lsn: u64) -> std::io::Result<Wal> {
        let (wal, old) = Wal::rotate(dir, next_lsn)?;
        // A crash here leaves the old segments beside the new one: replay reads them all.
        crate::failpoint::hit(crate::failpoint::Failpoint::CheckpointNewSegment);
        remove_segments(dir, &old)?;
        Ok(wal)
    }

    /// Starts a fresh segment whose first record gets `next_lsn`, keeping the older ones
    /// (their records are not yet durable anywhere else: replay reads them all, in order,
    /// then the new one). Returns them, for [`remove_segments`] once they are durable
    /// elsewhere.
    pub fn rotate(dir: &Path, next_lsn: u64) -> std::io::Result<(Wal, Vec<PathBuf>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(segment_name(next_lsn));
        let old: Vec<PathBuf> = segments(dir)?
            .into_iter()
            .map(|(_, segment)| segment)
            .filter(|segment| *segment != path)
            .collect();
        let temporary = dir.join(format!("{}.new", segment_name(next_lsn)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        file.write_all_at(MAGIC, 0)?;
        let mut wal = Wal {
            file,
            position: MAGIC.len() as u64,
            allocated: MAGIC.len() as u64,
            next_lsn,
        };
        wal.allocate(CHUNK - MAGIC.len() as u64);
        wal.file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        sync_dir(dir)?;
        Ok((wal, old))
    }

    /// Zero-fills the file up to `position + at_least` (best effort: on a full disk the
    /// record is then written past the end, which still works but journals the new size).
    fn allocate(&mut self, at_least: u64) {
        let wanted = self.position + at_least;
        if wanted <= self.allocated {
            return;
        }
        let target = wanted.div_ceil(CHUNK) * CHUNK;
        let zeros = vec![0u8; (target - self.allocated) as usize];
        if self.file.write_all_at(&zeros, self.allocated).is_ok() {
            self.allocated = target;
        }
    }

    /// The lsn the operations appended now will be written under.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Writes `ops` as one record and makes it durable (`fdatasync`). Returns the size of the
    /// segment so far. On an error the record may or may not be on disk: the caller must treat
    /// the log as failed (a later record would be written at the same place).
    pub fn append(&mut self, ops: &[Op]) -> std::io::Result<u64> {
        if ops.is_empty() {
            return Ok(self.position);
        }
        let mut payload = Vec::new();
        encode_ops(ops, &mut payload);
        let mut record = Vec::with_capacity(HEADER + payload.len());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.next_lsn.to_be_bytes());
        hasher.update(&payload);
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        record.extend_from_slice(&hasher.finalize().to_be_bytes());
        record.extend_from_slice(&self.next_lsn.to_be_bytes());
        record.extend_from_slice(&payload);
        // The record plus a zero header after it, so that the log always ends in zeros.
        self.allocate(record.len() as u64 + HEADER as u64);
        crate::failpoint::hit(crate::failpoint::Failpoint::BeforeLogWrite);
        self.file.write_all_at(&record, self.position)?;
        crate::failpoint::hit(crate::failpoint::Failpoint::LogWrittenBeforeFsync);
        self.file.sync_data()?;
        self.position += record.len() as u64;
        self.allocated = self.allocated.max(self.position);
        self.next_lsn += 1;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(tree: u8, key: &str, value: Option<&str>) -> Op {
        Op {
            tree: Tree::from_code(tree).unwrap(),
            key: key.as_bytes().to_vec(),
            value: value.map(|value| value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::create(&wal_dir, 7).unwrap();
        wal.append(&[op(0, "a", Some("1")), op(3, "b", None)])
            .unwrap();
        let end = wal.append(&[op(1, "c", Some(""))]).unwrap();
        let (records, last) = Wal::read(&wal_dir, 0).unwrap();
        assert_eq!(last, 8);
        assert_eq!(
            records,
            vec![
                (7, vec![op(0, "a", Some("1")), op(3, "b", None)]),
                (8, vec![op(1, "c", Some(""))]),
            ]
        );
        // From an lsn on.
        assert_eq!(Wal::read(&wal_dir, 8).unwrap().0.len(), 1);
        // A torn record: its checksum fails and the log ends before it.
        wal.append(&[op(0, "d", Some("4"))]).unwrap();
        let path = &segments(&wal_dir).unwrap()[0].1;
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&[0xff], end + HEADER as u64).unwrap();
        let (records, last) = Wal::read(&wal_dir, 0).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(last, 8);
    }

    #[test]
    fn a_rotation_keeps_the_old_segments_until_they_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::create(&wal_dir, 1).unwrap();
        wal.append(&[op(0, "a", Some("1"))]).unwrap();
        wal.append(&[op(0, "a", Some("2"))]).unwrap();
        let (mut fresh, old) = Wal::rotate(&wal_dir, wal.next_lsn()).unwrap();
        fresh.append(&[op(0, "a", Some("3"))]).unwrap();
        // A crash now: both segments, every record in order.
        let (records, last) = Wal::read(&wal_dir, 0).unwrap();
        assert_eq!(last, 3);
        let values: Vec<_> = records
            .iter()
            .map(|(lsn, ops)| (*lsn, ops[0].value.clone().unwrap()))
            .collect();
        assert_eq!(
            values,
            vec![(1, b"1".to_vec()), (2, b"2".to_vec()), (3, b"3".to_vec())]
        );
        // Once what they hold is durable elsewhere, the old ones go (twice is fine).
        remove_segments(&wal_dir, &old).unwrap();
        remove_segments(&wal_dir, &old).unwrap();
        assert_eq!(segments(&wal_dir).unwrap().len(), 1);
        assert_eq!(Wal::read(&wal_dir, 0).unwrap().0.len(), 1);
    }

    #[test]
    fn a_new_segment_replaces_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::create(&wal_dir, 1).unwrap();
        wal.append(&[op(0, "a", Some("1"))]).unwrap();
        let mut wal = Wal::create(&wal_dir, 2).unwrap();
        assert_eq!(segments(&wal_dir).unwrap().len(), 1);
        assert_eq!(Wal::read(&wal_dir, 0).unwrap(), (Vec::new(), 0));
        wal.append(&[op(5, "format", Some("2"))]).unwrap();
        assert_eq!(Wal::read(&wal_dir, 0).unwrap().0[0].0, 2);
        assert!(decode_ops(&[99, 0, 0, 0, 0, 0]).is_none());
    }
}
