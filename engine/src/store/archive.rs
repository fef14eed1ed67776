//! Finished runs moved out of the tables into append-only segment files (`archive/`).
//!
//! A finished run is read now and then and kept for months; in sled its snapshot and folded
//! journal are most of the store's pages, and sled keeps bookkeeping in memory for every page
//! it has written, so the daemon's memory followed the history's length, and sled never gives
//! freed space back to the file system. So the archiver (`runtime/archiver.rs`) moves each
//! finished run's records — snapshot, folded journal, remaining event keys — into one entry of
//! a segment file, and the tables keep its listing line, index entries and a 16-byte pointer
//! (tree `archived`). Retention deletes pointers; a segment none points into any more is
//! deleted whole, which gives its bytes back.
//!
//! The move is two steps, in this order: the entries are appended to the current segment and
//! the file is synced; then one commit (through the writer, all or nothing like any other)
//! deletes the run's records from the tables and stores the pointers, checking first that the
//! records are still exactly what was archived. A crash between the two leaves entries no
//! pointer names: the run is still whole in the tables and is archived again later, and the
//! orphan bytes go with their segment. Each segment's pointer count is kept in the tables
//! (`meta/archive/<segment>`); a segment file without one is garbage (removed at open and by
//! the archiver between batches, never while an append to it may be under way).
//!
//! Entry layout (all integers big-endian):
//!
//! ```text
//! byte 0        b'A'
//! bytes 1..3    format version, u16
//! bytes 3..19   run id
//! bytes 19..23  crc32 of the body
//! bytes 23..    body: for each record: tree code u8, key length u16, key, value length u32, value
//! ```

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use uuid::Uuid;

use super::tables::Tree;
use super::Error;

const MAGIC: u8 = b'A';
const FORMAT: u16 = 1;
const HEADER: usize = 23;
/// A segment takes new entries until it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// No entry is larger (a run whose records hold more stays in the tables), and no pointer
/// makes a read allocate more.
pub const MAX_ENTRY: usize = 40 << 20;

/// One record of a run: a key of a tree and its value.
pub type Record = (Tree, Vec<u8>, Vec<u8>);

/// Where a run's entry is: segment, offset, length (in the run's listing line; 16 bytes in
/// the `archived` tree of format 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pointer {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

impl Pointer {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&self.segment.to_be_bytes());
        bytes.extend_from_slice(&self.offset.to_be_bytes());
        bytes.extend_from_slice(&self.len.to_be_bytes());
        bytes
    }

    pub fn decode(run_id: Uuid, bytes: &[u8]) -> Result<Pointer, Error> {
        let field = |range: std::ops::Range<usize>| bytes.get(range).filter(|_| bytes.len() == 16);
        match (field(0..4), field(4..12), field(12..16)) {
            (Some(segment), Some(offset), Some(len)) => Ok(Pointer {
                segment: u32::from_be_bytes(segment.try_into().unwrap_or_default()),
                offset: u64::from_be_bytes(offset.try_into().unwrap_or_default()),
                len: u32::from_be_bytes(len.try_into().unwrap_or_default()),
            }),
            _ => Err(Error::Corrupt {
                key: format!("archived/{run_id}"),
                reason: format!("a pointer is 16 bytes, found {}", bytes.len()),
            }),
        }
    }
}

/// A run whose entry is written and synced, for the commit that moves it (see
/// [`super::Store::archive_commit`]).
#[derive(Debug, Clone)]
pub struct ArchivedRun {
    pub run_id: Uuid,
    pub pointer: Pointer,
    /// The records the entry holds: the commit checks the tables still hold exactly these.
    pub records: Vec<Record>,
}

/// The segment files of one store.
pub struct Archive {
    dir: PathBuf,
    current: Mutex<Current>,
}

struct Current {
    segment: u32,
    file: Option<File>,
    len: u64,
}

/// The key of a segment's pointer count in the `meta` tree.
pub fn count_key(segment: u32) -> Vec<u8> {
    let mut key = COUNT_PREFIX.to_vec();
    key.extend_from_slice(&segment.to_be_bytes());
    key
}

pub const COUNT_PREFIX: &[u8] = b"archive/";

/// The segment of a count key.
pub fn count_segment(key: &[u8]) -> Option<u32> {
    key.strip_prefix(COUNT_PREFIX)
        .and_then(|rest| rest.try_into().ok())
        .map(u32::from_be_bytes)
}

impl Archive {
    /// Opens (creating) the archive in `dir`. Appends go to a new segment, numbered after
    /// every segment on disk and every one in `known` (the counts in the tables).
    pub fn open(dir: &Path, known: &[u32]) -> Result<Archive, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|error| Error::io(&format!("cannot create {}", dir.display()), &error))?;
        let archive = Archive {
            dir: dir.to_owned(),
            current: Mutex::new(Current {
                segment: 0,
                file: None,
                len: 0,
            }),
        };
        let last = archive
            .segments()?
            .into_iter()
            .chain(known.iter().copied())
            .max()
            .unwrap_or(0);
        archive.lock().segment = last.saturating_add(1);
        Ok(archive)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(format!("{segment:08}.seg"))
    }

    /// The segment appends go to now.
    pub fn current(&self) -> u32 {
        self.lock().segment
    }

    /// Ends the segment appends go to, if it has a file: the next append starts a new one.
    /// Returns the segment ended. Only for a caller that knows no appended entry still waits
    /// for its commit.
    pub fn end_current(&self) -> Option<u32> {
        let mut current = self.lock();
        current.file.take()?;
        let ended = current.segment;
        current.segment = ended.saturating_add(1);
        current.len = 0;
        Some(ended)
    }

    /// The segments on disk, ascending.
    pub fn segments(&self) -> Result<Vec<u32>, Error> {
        let context = format!("cannot list {}", self.dir.display());
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|error| Error::io(&context, &error))? {
            let entry = entry.map_err(|error| Error::io(&context, &error))?;
            let name = entry.file_name();
            if let Some(segment) = name
                .to_str()
                .and_then(|name| name.strip_suffix(".seg"))
                .and_then(|number| number.parse::<u32>().ok())
            {
                found.push(segment);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// Appends one entry per run and syncs the file: durable when it returns. Returns where
    /// each entry is.
    pub fn append(&self, runs: &[(Uuid, Vec<Record>)]) -> Result<Vec<Pointer>, Error> {
        let mut entries = Vec::with_capacity(runs.len());
        for (run_id, records) in runs {
            entries.push(encode(*run_id, records)?);
        }
        let mut current = self.lock();
        if current.len >= SEGMENT_BYTES {
            current.segment = current.segment.saturating_add(1);
            current.file = None;
            current.len = 0;
        }
        let segment = current.segment;
        let path = self.path(segment);
        let context = format!("cannot append to {}", path.display());
        if current.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|error| Error::io(&context, &error))?;
            let len = file
                .metadata()
                .map_err(|error| Error::io(&context, &error))?
                .len();
            // The new file's name must be durable before a pointer names it.
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|error| Error::io(&context, &error))?;
            current.file = Some(file);
            current.len = len;
        }
        let mut pointers = Vec::with_capacity(entries.len());
        let mut buffer = Vec::with_capacity(entries.iter().map(Vec::len).sum());
        let mut offset = current.len;
        for entry in &entries {
            pointers.push(Pointer {
                segment,
                offset,
                len: u32::try_from(entry.len()).unwrap_or(u32::MAX),
            });
            offset += entry.len() as u64;
            buffer.extend_from_slice(entry);
        }
        let written = match current.file.as_mut() {
            Some(file) => file.write_all(&buffer).and_then(|()| file.sync_data()),
            None => Ok(()),
        };
        if let Err(error) = written {
            // Where the file ends is unknown now: the next append starts a new segment.
            current.len = SEGMENT_BYTES;
            return Err(Error::io(&context, &error));
        }
        current.len = offset;
        Ok(pointers)
    }

    /// Reads a run's records from its entry, checking that it is whole and the run's.
    pub fn read(&self, run_id: Uuid, pointer: &Pointer) -> Result<Vec<Record>, Error> {
        let corrupt = |reason: String| Error::Corrupt {
            key: format!(
                "archive/{:08}.seg at {} (run {run_id})",
                pointer.segment, pointer.offset
            ),
            reason,
        };
        let len = pointer.len as usize;
        if !(HEADER..=MAX_ENTRY).contains(&len) {
            return Err(corrupt(format!("an entry of {len} bytes")));
        }
        let path = self.path(pointer.segment);
        let file = File::open(&path)
            .map_err(|error| corrupt(format!("cannot open {}: {error}", path.display())))?;
        let mut entry = vec![0; len];
        file.read_exact_at(&mut entry, pointer.offset)
            .map_err(|error| corrupt(format!("cannot read: {error}")))?;
        decode(run_id, &entry).map_err(corrupt)
    }

    /// Deletes a segment's file (no pointer names it any more); returns the bytes it held.
    pub fn remove(&self, segment: u32) -> Result<u64, Error> {
        let path = self.path(segment);
        let bytes = std::fs::metadata(&path).map_or(0, |metadata| metadata.len());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(error) => Err(Error::io(
                &format!("cannot remove {}", path.display()),
                &error,
            )),
        }
    }
}

fn encode(run_id: Uuid, records: &[Record]) -> Result<Vec<u8>, Error> {
    let too_large = |what: String| Error::Io {
        kind: std::io::ErrorKind::InvalidData,
        message: format!("run {run_id} cannot be archived: {what}"),
    };
    let mut body = Vec::new();
    for (tree, key, value) in records {
        let key_len =
            u16::try_from(key.len()).map_err(|_| too_large("a key is too long".into()))?;
        let value_len =
            u32::try_from(value.len()).map_err(|_| too_large("a value is too large".into()))?;
        body.push(tree.code());
        body.extend_from_slice(&key_len.to_be_bytes());
        body.extend_from_slice(key);
        body.extend_from_slice(&value_len.to_be_bytes());
        body.extend_from_slice(value);
    }
    if body.len() + HEADER > MAX_ENTRY {
        return Err(too_large(format!("its records hold {} bytes", body.len())));
    }
    let mut entry = Vec::with_capacity(HEADER + body.len());
    entry.push(MAGIC);
    entry.extend_from_slice(&FORMAT.to_be_bytes());
    entry.extend_from_slice(run_id.as_bytes());
    entry.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    entry.extend_from_slice(&body);
    Ok(entry)
}

fn decode(run_id: Uuid, entry: &[u8]) -> Result<Vec<Record>, String> {
    if entry.len() < HEADER || entry[0] != MAGIC {
        return Err("not an archive entry (bad magic or too short)".to_owned());
    }
    let format = u16::from_be_bytes([entry[1], entry[2]]);
    if format > FORMAT {
        return Err(format!(
            "entry format {format} is newer than this build understands ({FORMAT})"
        ));
    }
    if entry[3..19] != run_id.as_bytes()[..] {
        return Err("the entry is another run's".to_owned());
    }
    let checksum = u32::from_be_bytes([entry[19], entry[20], entry[21], entry[22]]);
    let body = &entry[HEADER..];
    if crc32fast::hash(body) != checksum {
        return Err("checksum mismatch".to_owned());
    }
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (Some(&code), Some(key_len)) = (rest.first(), rest.get(1..3)) else {
            return Err("truncated record".to_owned());
        };
        let tree = Tree::from_code(code).ok_or_else(|| format!("unknown tree code {code}"))?;
        let key_len = u16::from_be_bytes([key_len[0], key_len[1]]) as usize;
        let key_end = 3 + key_len;
        let (Some(key), Some(value_len)) = (rest.get(3..key_end), rest.get(key_end..key_end + 4))
        else {
            return Err("truncated record".to_owned());
        };
        let value_len = u32::from_be_bytes(value_len.try_into().unwrap_or_default()) as usize;
        let Some(value) = rest.get(key_end + 4..key_end + 4 + value_len) else {
            return Err("truncated record".to_owned());
        };
        records.push((tree, key.to_vec(), value.to_vec()));
        rest = &rest[key_end + 4 + value_len..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        vec![
            (Tree::Runs, vec![1; 16], b"snapshot".to_vec()),
            (Tree::Folded, vec![1; 16], vec![7; 3000]),
            (Tree::Events, vec![2; 24], Vec::new()),
        ]
    }

    #[test]
    fn entries_read_back_and_segments_roll_over() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), &[4]).unwrap();
        assert_eq!(archive.current(), 5, "after every known segment");
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let pointers = archive
            .append(&[(a, records()), (b, records()[..1].to_vec())])
            .unwrap();
        assert_eq!(pointers[0].segment, 5);
        assert_eq!(pointers[1].offset, u64::from(pointers[0].len));
        assert_eq!(archive.read(a, &pointers[0]).unwrap(), records());
        assert_eq!(archive.read(b, &pointers[1]).unwrap(), records()[..1]);
        let pointer = Pointer::decode(a, &pointers[0].encode()).unwrap();
        assert_eq!(pointer, pointers[0]);
        // A reopened archive never appends to a segment that may end in a torn entry.
        drop(archive);
        let archive = Archive::open(dir.path(), &[]).unwrap();
        assert_eq!(archive.current(), 6);
        assert_eq!(archive.segments().unwrap(), vec![5]);
    }

    #[test]
    fn damage_is_an_error_naming_the_entry_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), &[]).unwrap();
        let run = Uuid::from_u128(9);
        let pointer = archive.append(&[(run, records())]).unwrap()[0];
        let entry = encode(run, &records()).unwrap();
        for cut in 0..entry.len() {
            let mut damaged = entry.clone();
            damaged.truncate(cut);
            assert!(decode(run, &damaged).is_err(), "cut at {cut}");
        }
        let mut flipped = entry.clone();
        flipped[HEADER + 5] ^= 1;
        assert!(decode(run, &flipped).unwrap_err().contains("checksum"));
        let error = archive
            .read(Uuid::from_u128(10), &pointer)
            .unwrap_err()
            .to_string();
        assert!(error.contains("another run's"), "{error}");
        assert!(error.contains("00000001.seg"), "{error}");
        let huge = Pointer {
            len: u32::MAX,
            ..pointer
        };
        assert!(archive.read(run, &huge).is_err());
        assert!(archive.remove(pointer.segment).unwrap() > 0);
        let error = archive.read(run, &pointer).unwrap_err().to_string();
        assert!(error.contains("cannot open"), "{error}");
    }
}
