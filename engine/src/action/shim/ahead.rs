//! A shim started ahead of its call (`<program> shim -`): the daemon keeps one ready, so that a
//! step's path does not hold the supervisor's own start (an exec of its binary, its loading and
//! set-up: most of a millisecond). Such a shim has no call dir until the daemon sends one:
//! [`CALL`], a length (4 bytes, big-endian, at most [`MAX_CALL_BYTES`]) and a [`Call`] as
//! JSON, then the usual [`SPEC`](super::SPEC) and [`GO`](super::GO).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use super::{versioned, Call, CALL};

/// The largest [`Call`] a shim reads (two paths).
const MAX_CALL_BYTES: u32 = 64 * 1024;

/// The bytes that hand `call` to a shim started ahead of it.
pub(crate) fn call_message(call: &Call) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(call).map_err(|error| error.to_string())?;
    let length = u32::try_from(json.len())
        .ok()
        .filter(|length| *length <= MAX_CALL_BYTES)
        .ok_or_else(|| format!("the call dir's path is {} bytes long", json.len()))?;
    let mut message = Vec::with_capacity(json.len() + 5);
    message.push(CALL);
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(&json);
    Ok(message)
}

/// Waits for the call; its dir, once the shim's stderr is the run's shim log. `None` when the
/// daemon closed the pipe first (it stopped, or had no call for this shim) or sent something
/// else, or a call outside `data_dir`: there is then no call dir to record anything in, and
/// nothing was started.
pub(super) fn receive_call(pipe: &mut impl Read, data_dir: &Path) -> Option<PathBuf> {
    let mut first = [0u8; 1];
    if !matches!(pipe.read(&mut first), Ok(1)) {
        return None;
    }
    if first[0] != CALL {
        eprintln!(
            "runbook shim (started ahead): the daemon sent byte {:#04x} where a call belongs; exiting",
            first[0]
        );
        return None;
    }
    let call = match read_call(pipe) {
        Ok(call) => call,
        Err(problem) => {
            eprintln!("runbook shim (started ahead): {problem}; exiting");
            return None;
        }
    };
    let inside = |path: &Path| {
        path.starts_with(data_dir)
            && !path
                .components()
                .any(|part| matches!(part, Component::ParentDir))
    };
    if !inside(&call.call_dir) || !inside(&call.shim_log) {
        eprintln!(
            "runbook shim (started ahead for {}): refusing a call outside it: {} (log {})",
            data_dir.display(),
            call.call_dir.display(),
            call.shim_log.display()
        );
        return None;
    }
    // From here on the shim's complaints go where those of its run's other shims go. Opened
    // without following a link, like every file of the data dir.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&call.shim_log);
    match log {
        // SAFETY: dup2 onto descriptor 2 of this process; `log` stays valid for the call and is
        // closed after (the duplicate lives on).
        Ok(log) => unsafe {
            libc::dup2(log.as_raw_fd(), 2);
        },
        Err(error) => eprintln!(
            "runbook shim ({}): cannot open {}: {error}",
            call.call_dir.display(),
            call.shim_log.display()
        ),
    }
    Some(call.call_dir)
}

fn read_call(pipe: &mut impl Read) -> Result<Call, String> {
    let stopped =
        |error: std::io::Error| format!("the daemon stopped while it sent the call: {error}");
    let mut length = [0u8; 4];
    pipe.read_exact(&mut length).map_err(stopped)?;
    let length = u32::from_be_bytes(length);
    if length > MAX_CALL_BYTES {
        return Err(format!(
            "the call the daemon sent is {length} bytes, over {MAX_CALL_BYTES}"
        ));
    }
    let mut bytes = vec![0u8; length as usize];
    pipe.read_exact(&mut bytes).map_err(stopped)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| format!("the call the daemon sent is not JSON: {error}"))?;
    versioned(Path::new("the call the daemon sent"), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_round_trips_and_eof_or_garbage_is_no_call() {
        let dir = tempfile::tempdir().map_err(|error| error.to_string());
        let Ok(dir) = dir else { panic!("{dir:?}") };
        let call = Call {
            format: super::super::FORMAT,
            call_dir: dir.path().join("calls/1"),
            shim_log: dir.path().join("shim.log"),
        };
        let message = call_message(&call);
        let Ok(message) = message else {
            panic!("{message:?}")
        };
        let mut pipe = message.as_slice();
        assert_eq!(read_call_after_byte(&mut pipe), Ok(call.clone()));
        let data_dir = dir.path();
        assert_eq!(
            receive_call(&mut [].as_slice(), data_dir),
            None,
            "EOF: no call"
        );
        assert_eq!(
            receive_call(&mut b"s\0\0\0\x02{}".as_slice(), data_dir),
            None
        );
        let mut cut = message[..message.len() - 3].to_vec();
        assert_eq!(
            receive_call(&mut cut.as_slice(), data_dir),
            None,
            "a cut call"
        );
        let elsewhere = tempfile::tempdir().map_err(|error| error.to_string());
        let Ok(elsewhere) = elsewhere else {
            panic!("{elsewhere:?}")
        };
        assert_eq!(
            receive_call(&mut message.as_slice(), elsewhere.path()),
            None,
            "a call outside the data dir it was started for"
        );
        let climbing = Call {
            call_dir: dir.path().join("runs/../../etc"),
            ..call.clone()
        };
        let climbing = call_message(&climbing).unwrap_or_default();
        assert_eq!(receive_call(&mut climbing.as_slice(), data_dir), None);
        cut[1..5].copy_from_slice(&(MAX_CALL_BYTES + 1).to_be_bytes());
        assert!(read_call_after_byte(&mut cut.as_slice()).is_err_and(|e| e.contains("over")));
    }

    fn read_call_after_byte(pipe: &mut &[u8]) -> Result<Call, String> {
        let mut first = [0u8; 1];
        pipe.read_exact(&mut first)
            .map_err(|error| error.to_string())?;
        assert_eq!(first[0], CALL);
        read_call(pipe)
    }
}
