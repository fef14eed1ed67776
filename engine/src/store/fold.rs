//! A finished run's journal folded into one compressed record (tree `folded`, key run id).
//!
//! A finished run is read, listed and kept for months, never changed again but for the rare
//! late event (an aborted call's end, a rollback). Kept one key per event, a 10-step run is
//! two dozen keys and ~6 KB of JSON; most of an embedded store's bytes and, with sled, most of
//! its memory (sled keeps bookkeeping for every page, resident or not). So the commit that
//! finishes a run (and stores its final snapshot) moves every event but the last into one
//! record, compressed. The last event stays a key of its own: the journal's end is where the
//! commit rules look for it, and a late event appends after it as usual.
//!
//! ```text
//! byte 0      b'F'
//! bytes 1..3  format version, u16 big-endian
//! bytes 3..7  crc32 of the compressed bytes, big-endian
//! bytes 7..   zstd of: for each event, ascending seq: seq u64 BE, length u32 BE, its envelope
//! ```

use std::io::Read;

use uuid::Uuid;

use super::Error;

const MAGIC: u8 = b'F';
const FORMAT: u16 = 1;
const HEADER: usize = 7;
/// The zstd level: the records are small and written once; decoding speed does not depend on it.
const LEVEL: i32 = 3;

/// Runs with more events than this keep one key per event: folding them would hold the
/// writer (and every commit waiting on it) while it reads and compresses the whole journal.
pub const MAX_EVENTS: u64 = 4096;
/// Nor is a journal folded whose events hold more bytes than this; and no folded record
/// decodes to more (a corrupt or hostile record cannot make a read allocate without bound).
pub const MAX_BYTES: usize = 16 << 20;

/// Encodes `(seq, envelope)` pairs, ascending by seq.
pub fn encode(events: &[(u64, Vec<u8>)]) -> Result<Vec<u8>, Error> {
    let mut plain = Vec::with_capacity(events.iter().map(|(_, bytes)| bytes.len() + 12).sum());
    for (seq, bytes) in events {
        plain.extend_from_slice(&seq.to_be_bytes());
        let len = u32::try_from(bytes.len()).map_err(|_| Error::Io {
            kind: std::io::ErrorKind::InvalidData,
            message: format!("event {seq} is too large to fold"),
        })?;
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(bytes);
    }
    let compressed = zstd::bulk::compress(&plain, LEVEL).map_err(|error| Error::Io {
        kind: error.kind(),
        message: format!("cannot compress a folded journal: {error}"),
    })?;
    let mut record = Vec::with_capacity(HEADER + compressed.len());
    record.push(MAGIC);
    record.extend_from_slice(&FORMAT.to_be_bytes());
    record.extend_from_slice(&crc32fast::hash(&compressed).to_be_bytes());
    record.extend_from_slice(&compressed);
    Ok(record)
}

/// Decodes a folded record of `run_id`: its `(seq, envelope)` pairs, ascending by seq.
pub fn decode(run_id: Uuid, record: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let corrupt = |reason: String| Error::Corrupt {
        key: format!("folded/{run_id}"),
        reason,
    };
    if record.len() < HEADER || record[0] != MAGIC {
        return Err(corrupt(
            "not a folded journal (bad magic or too short)".to_owned(),
        ));
    }
    let format = u16::from_be_bytes([record[1], record[2]]);
    if format > FORMAT {
        return Err(Error::FormatTooNew {
            found: u32::from(format),
            supported: u32::from(FORMAT),
        });
    }
    let checksum = u32::from_be_bytes([record[3], record[4], record[5], record[6]]);
    let compressed = &record[HEADER..];
    if crc32fast::hash(compressed) != checksum {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(compressed)
        .map_err(|error| corrupt(format!("cannot decompress: {error}")))?
        .take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|error| corrupt(format!("cannot decompress: {error}")))?;
    if plain.len() > MAX_BYTES {
        return Err(corrupt(format!("decodes to more than {MAX_BYTES} bytes")));
    }
    let mut events = Vec::new();
    let mut rest = plain.as_slice();
    while !rest.is_empty() {
        let (Some(seq), Some(len)) = (rest.get(..8), rest.get(8..12)) else {
            return Err(corrupt("truncated event header".to_owned()));
        };
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
        let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
        let Some(bytes) = rest.get(12..12 + len) else {
            return Err(corrupt(format!("event {seq} is truncated")));
        };
        if events.last().is_some_and(|(last, _)| *last >= seq) {
            return Err(corrupt(format!("event {seq} is out of order")));
        }
        events.push((seq, bytes.to_vec()));
        rest = &rest[12 + len..];
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let events = vec![(1, b"one".to_vec()), (2, Vec::new()), (7, vec![0xff; 5000])];
        let record = encode(&events).unwrap();
        assert!(record.len() < 200, "compressed: {} bytes", record.len());
        assert_eq!(decode(Uuid::nil(), &record).unwrap(), events);
    }

    #[test]
    fn damage_is_an_error_naming_the_record_never_a_panic() {
        let record = encode(&[(1, b"one".to_vec()), (2, b"two".to_vec())]).unwrap();
        for cut in 0..record.len() {
            assert!(decode(Uuid::nil(), &record[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = record.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let error = decode(Uuid::nil(), &flipped).unwrap_err().to_string();
        assert!(
            error.contains("folded/00000000-0000-0000-0000-000000000000"),
            "{error}"
        );
        assert!(error.contains("checksum"), "{error}");
    }

    #[test]
    fn a_record_that_expands_beyond_the_bound_is_refused() {
        let plain = vec![0u8; MAX_BYTES + 100];
        let compressed = zstd::bulk::compress(&plain, 1).unwrap();
        let mut record = vec![MAGIC];
        record.extend_from_slice(&FORMAT.to_be_bytes());
        record.extend_from_slice(&crc32fast::hash(&compressed).to_be_bytes());
        record.extend_from_slice(&compressed);
        let error = decode(Uuid::nil(), &record).unwrap_err().to_string();
        assert!(error.contains("more than"), "{error}");
    }
}
