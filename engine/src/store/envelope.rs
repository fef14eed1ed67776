//! The envelope every stored value lives in: `magic, format, crc32, payload`.
//!
//! ```text
//! byte 0      b'R'
//! bytes 1..3  format version, u16 big-endian
//! bytes 3..7  crc32 of the payload, big-endian
//! bytes 7..   payload (JSON)
//! ```
//!
//! A large record written once and read rarely (a finished run's snapshot) is stored
//! compressed: magic `b'Z'`, the same header, the crc32 of the compressed bytes, then the payload
//! compressed with zstd.
//!
//! A value whose magic, checksum or format does not fit is an error naming the key, never a
//! panic; a format newer than this build is refused rather than misread.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Error;

/// The record format this build writes. Bump it, and keep a fixture store of the old format
/// under `tests/fixtures`, whenever a stored type changes incompatibly.
pub const FORMAT: u16 = 1;
const MAGIC: u8 = b'R';
const COMPRESSED: u8 = b'Z';
const HEADER: usize = 7;
/// The most a compressed record decodes to: a damaged or planted record cannot make a read
/// allocate without bound (a snapshot of a loop over 100,000 items is tens of MB).
const MAX_DECOMPRESSED: u64 = 1 << 30;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    Ok(seal(MAGIC, &json(value)?))
}

/// [`encode`], with the payload compressed.
pub fn encode_compressed<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let compressed = zstd::bulk::compress(&json(value)?, 3).map_err(|error| Error::Io {
        kind: error.kind(),
        message: format!("cannot compress a record: {error}"),
    })?;
    Ok(seal(COMPRESSED, &compressed))
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|error| Error::Io {
        kind: std::io::ErrorKind::InvalidData,
        message: format!("cannot encode a record: {error}"),
    })
}

fn seal(magic: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.push(magic);
    bytes.extend_from_slice(&FORMAT.to_be_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Checks the envelope and returns its payload (decompressed, if it was stored compressed).
pub fn open<'a>(
    key: &dyn Fn() -> String,
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, Error> {
    if bytes.len() < HEADER || (bytes[0] != MAGIC && bytes[0] != COMPRESSED) {
        return Err(Error::Corrupt {
            key: key(),
            reason: "not a runbook record (bad magic or too short)".to_owned(),
        });
    }
    let format = u16::from_be_bytes([bytes[1], bytes[2]]);
    if format > FORMAT {
        return Err(Error::FormatTooNew {
            found: u32::from(format),
            supported: u32::from(FORMAT),
        });
    }
    let checksum = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]);
    let payload = &bytes[HEADER..];
    if crc32fast::hash(payload) != checksum {
        return Err(Error::Corrupt {
            key: key(),
            reason: "checksum mismatch".to_owned(),
        });
    }
    if bytes[0] == MAGIC {
        return Ok(std::borrow::Cow::Borrowed(payload));
    }
    let mut plain = Vec::new();
    let decompressed = zstd::stream::read::Decoder::new(payload).and_then(|decoder| {
        std::io::Read::read_to_end(
            &mut std::io::Read::take(decoder, MAX_DECOMPRESSED + 1),
            &mut plain,
        )
    });
    match decompressed {
        Ok(_) if plain.len() as u64 > MAX_DECOMPRESSED => Err(Error::Corrupt {
            key: key(),
            reason: format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
        }),
        Ok(_) => Ok(std::borrow::Cow::Owned(plain)),
        Err(error) => Err(Error::Corrupt {
            key: key(),
            reason: format!("cannot decompress: {error}"),
        }),
    }
}

pub fn decode<T: DeserializeOwned>(key: &dyn Fn() -> String, bytes: &[u8]) -> Result<T, Error> {
    let payload = open(key, bytes)?;
    serde_json::from_slice(&payload).map_err(|error| Error::Corrupt {
        key: key(),
        reason: format!("undecodable payload: {error}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let key = || "runs/x".to_owned();
        let bytes = encode(&vec![1, 2, 3]).unwrap();
        assert_eq!(decode::<Vec<i32>>(&key, &bytes).unwrap(), vec![1, 2, 3]);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            decode::<Vec<i32>>(&key, &flipped),
            Err(Error::Corrupt { .. })
        ));
        let mut newer = bytes;
        newer[2] = 99;
        assert!(matches!(
            decode::<Vec<i32>>(&key, &newer),
            Err(Error::FormatTooNew { found: 99, .. })
        ));
        assert!(matches!(
            decode::<Vec<i32>>(&key, b"xy"),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn compressed_records_round_trip_and_detect_damage() {
        let key = || "runs/x".to_owned();
        let value: Vec<String> = (0..500).map(|index| format!("step s{index}")).collect();
        let bytes = encode_compressed(&value).unwrap();
        assert!(bytes.len() * 4 < encode(&value).unwrap().len());
        assert_eq!(decode::<Vec<String>>(&key, &bytes).unwrap(), value);
        for cut in 0..bytes.len() {
            assert!(
                decode::<Vec<String>>(&key, &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 0x01;
        assert!(matches!(
            decode::<Vec<String>>(&key, &flipped),
            Err(Error::Corrupt { .. })
        ));
    }
}
