//! Damaged records: the run they belong to is reported `corrupt` with the key, every other run
//! goes on, and `runbook store verify` names what is wrong. A store of a newer format is
//! refused, not misread.

use std::time::Duration;

use anyhow::Result;
use runbook_tests::{step_of, Daemon};

const GATED: &str = "name = \"gated\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\n";
const WAITING: &str = "name = \"waiting\"\n[[steps]]\nid = \"pause\"\naction = \"wait\"\nwith = { duration = \"3s\" }\n[[steps]]\nid = \"after\"\naction = \"noop\"\n";

/// Flips a byte near the end of the value stored under `key` in `tree`.
fn flip(store: &std::path::Path, tree: &str, key: &[u8]) -> Result<()> {
    let db = sled::open(store)?;
    let tree = db.open_tree(tree)?;
    let mut value = tree.get(key)?.expect("the record exists").to_vec();
    let last = value.len() - 2;
    value[last] ^= 0x20;
    tree.insert(key, value)?;
    db.flush()?;
    Ok(())
}

#[test]
fn a_corrupt_run_is_isolated_and_named() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let gated = daemon.write_file("gated.toml", GATED)?;
    let waiting = daemon.write_file("waiting.toml", WAITING)?;
    let victim = daemon.start_run(&gated, &[])?;
    let bystander = daemon.start_run(&waiting, &[])?;
    daemon.wait_step(&victim, "gate", "waiting", Duration::from_secs(20))?;
    daemon.terminate()?;

    let victim_id = uuid_bytes(&victim);
    flip(&daemon.data_dir.join("store"), "runs", &victim_id)?;
    daemon.restart()?;

    let shown = daemon.show(&victim)?;
    assert_eq!(shown["state"], "needs_attention");
    assert_eq!(shown["reason"], "corrupt");
    let error = shown["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("runs/{victim}")) && error.contains("checksum"),
        "{error}"
    );
    // The other run goes on.
    let finished = daemon.wait_state(&bystander, "succeeded", Duration::from_secs(20))?;
    assert_eq!(step_of(&finished, "after").unwrap()["state"], "succeeded");
    // Operator requests on the corrupt run are refused, and change nothing.
    assert_eq!(daemon.cli(&["approve", &victim])?.status.code(), Some(5));

    // verify through the daemon, and offline.
    let verify = daemon.cli(&["store", "verify"])?;
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains(&format!("runs/{victim}")));
    daemon.terminate()?;
    let offline = daemon.cli(&["store", "verify"])?;
    assert_eq!(
        offline.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert!(String::from_utf8_lossy(&offline.stdout).contains(&format!("runs/{victim}")));
    Ok(())
}

#[test]
fn a_sound_store_verifies_and_a_newer_format_is_refused() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let gated = daemon.write_file("gated.toml", GATED)?;
    daemon.start_run(&gated, &[])?;
    let verify = daemon.cli(&["store", "verify"])?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    daemon.terminate()?;

    // A store written by a future build.
    {
        let db = sled::open(daemon.data_dir.join("store"))?;
        let meta = db.open_tree("meta")?;
        let payload = b"99";
        let mut value = vec![b'R', 0, 99];
        value.extend_from_slice(&crc32(payload).to_be_bytes());
        value.extend_from_slice(payload);
        meta.insert("format", value)?;
        db.flush()?;
    }
    let refused = std::process::Command::new(runbook_tests::binary())
        .arg("--data-dir")
        .arg(&daemon.data_dir)
        .arg("daemon")
        .output()?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("newer than this build understands"),
        "{stderr}"
    );
    Ok(())
}

fn uuid_bytes(id: &str) -> Vec<u8> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    (0..16)
        .map(|index| u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).unwrap())
        .collect()
}

/// CRC-32 (IEEE), as the record envelope uses.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A malformed key in the timer index (it sorts first) is reported by `store verify`, removed
/// at start, and never holds up the timers after it: a 3 s wait still fires on time.
#[test]
fn a_malformed_timer_key_never_delays_the_others() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let waiting = daemon.write_file("waiting.toml", WAITING)?;
    let run = daemon.start_run(&waiting, &[])?;
    daemon.wait_step(&run, "pause", "waiting", Duration::from_secs(20))?;
    daemon.terminate()?;
    {
        let db = sled::open(daemon.data_dir.join("store"))?;
        db.open_tree("timers")?.insert([0u8, 0, 0, 1, 2], &[])?;
        db.flush()?;
    }
    let offline = daemon.cli(&["store", "verify"])?;
    assert_eq!(offline.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&offline.stdout).contains("bad key"),
        "{}",
        String::from_utf8_lossy(&offline.stdout)
    );
    let restarted = std::time::Instant::now();
    daemon.restart()?;
    daemon.wait_state(&run, "succeeded", Duration::from_secs(10))?;
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "the wait fired {:?} after the restart",
        restarted.elapsed()
    );
    assert!(
        daemon.log().contains("repaired a derived index"),
        "{}",
        daemon.log()
    );
    assert!(daemon.cli(&["store", "verify"])?.status.success());
    Ok(())
}
