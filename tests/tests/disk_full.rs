//! A full disk: the daemon refuses new work with a clear error, keeps everything it
//! acknowledged, and resumes by itself when space returns. The data dir lives on a small tmpfs
//! that the test mounts (it needs root; where mounting is not permitted the test says so and
//! checks nothing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use runbook_tests::Daemon;

const GATE: &str = "name = \"gate\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\n[[steps]]\nid = \"after\"\naction = \"noop\"\n";

/// A tmpfs mount, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Option<Tmpfs>> {
        let parent = tempfile::Builder::new().prefix("runbook-full-").tempdir()?;
        let dir = parent.path().join("mnt");
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status();
        match status {
            Ok(status) if status.success() => Ok(Some(Tmpfs {
                dir,
                _parent: parent,
            })),
            _ => Ok(None),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn free_kib(dir: &Path) -> Result<u64> {
    let output = Command::new("df").arg("-k").arg(dir).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(available) = text
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
    else {
        bail!("cannot read df output: {text}");
    };
    Ok(available.parse()?)
}

#[test]
fn a_full_disk_refuses_new_work_keeps_what_was_acknowledged_and_recovers() -> Result<()> {
    let Some(tmpfs) = Tmpfs::mount("4m")? else {
        eprintln!("skipped: cannot mount a tmpfs here (mounting needs root); the disk-full behaviour was not checked");
        return Ok(());
    };
    let data_dir = tmpfs.dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let file = tmpfs.dir.join("gate.toml");
    std::fs::write(&file, GATE)?;
    let file = file.display().to_string();
    let mut daemon = Daemon::start_on(&data_dir)?;
    let first = daemon.start_run(&file, &[])?;

    // Leave almost nothing free, then start runs until the store refuses.
    let filler = tmpfs.dir.join("filler");
    let free = free_kib(&tmpfs.dir)?;
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=1k",
            &format!("count={}", free.saturating_sub(48)),
        ])
        .arg(format!("of={}", filler.display()))
        .status()?;
    assert!(status.success());
    let mut acknowledged = vec![first.clone()];
    let mut refusal = None;
    for _ in 0..200 {
        let output = daemon.cli(&["--json", "start", &file])?;
        if output.status.success() {
            let run: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            acknowledged.push(run["id"].as_str().unwrap_or_default().to_owned());
        } else {
            refusal = Some(output);
            break;
        }
    }
    let refusal = refusal.expect("the store never refused a write on a full disk");
    let stderr = String::from_utf8_lossy(&refusal.stderr);
    assert_eq!(
        refusal.status.code(),
        Some(1),
        "{stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert!(
        stderr.contains("disk holding the store is full") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    // Still serving; operator actions are refused the same way, and nothing is lost.
    let approve = daemon.cli(&["approve", &first])?;
    assert!(!approve.status.success());
    assert_eq!(daemon.show(&first)?["state"], "waiting");

    // Space returns: the daemon resumes by itself.
    std::fs::remove_file(&filler)?;
    daemon.wait_until(Duration::from_secs(20), || {
        Ok(daemon.cli(&["approve", &first])?.status.success())
    })?;
    daemon.wait_state(&first, "succeeded", Duration::from_secs(20))?;
    let later = daemon.start_run(&file, &[])?;
    acknowledged.push(later);

    // Everything acknowledged survives a restart.
    daemon.kill9();
    daemon.restart()?;
    let runs = daemon.json(&["ps", "--all"])?;
    let listed: Vec<&str> = runs["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|run| run["id"].as_str())
        .collect();
    for run in &acknowledged {
        assert!(
            listed.contains(&run.as_str()),
            "acknowledged run {run} is gone after a full disk: {listed:?}"
        );
    }
    assert_eq!(daemon.show(&first)?["state"], "succeeded");
    daemon.kill9();
    drop(daemon);
    drop(tmpfs);
    Ok(())
}
