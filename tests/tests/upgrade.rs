//! A data dir written by an earlier release opens and its runs resume (see
//! `tests/fixtures/format-1/README.md`).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use runbook_tests::{step_of, Daemon};

const GATE: &str = "01a20198-6a81-7b7c-ab54-7ee94be48ae5";
const WAIT: &str = "01a20198-6a8f-73d9-b853-c15a86f5913e";
const DONE: &str = "01a20198-6a9b-7654-a770-3ecbda0abba5";

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[test]
fn a_format_1_data_dir_opens_and_its_runs_resume() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format-1/store");
    copy_dir(&fixture, &temp.path().join("store"))?;
    let daemon = Daemon::start_on(temp.path())?;

    let verify = daemon.cli(&["store", "verify"])?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let done = daemon.show(DONE)?;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(
        step_of(&done, "gate").unwrap()["approval"]["comment"],
        "fixture"
    );
    let events = daemon.json(&["show", DONE])?;
    assert!(events["audit"].as_array().unwrap().len() >= 2);

    // The approval still waits and can be given.
    assert_eq!(daemon.show(GATE)?["state"], "waiting");
    assert!(daemon
        .cli(&["approve", GATE, "--comment", "after the upgrade"])?
        .status
        .success());
    let gate = daemon.wait_state(GATE, "succeeded", Duration::from_secs(20))?;
    assert_eq!(step_of(&gate, "after").unwrap()["state"], "succeeded");

    // The long wait is still armed; skipping it lets the loop go on to its second item.
    let waiting = daemon.show(WAIT)?;
    assert_eq!(
        step_of(&waiting, "each[0].hold").unwrap()["state"],
        "waiting"
    );
    assert!(waiting["next_wakeup"].is_string());
    assert!(daemon
        .cli(&["skip", WAIT, "each[0].hold"])?
        .status
        .success());
    daemon.wait_step(WAIT, "each[1].hold", "waiting", Duration::from_secs(20))?;
    assert!(daemon
        .cli(&["skip", WAIT, "each[1].hold"])?
        .status
        .success());
    daemon.wait_state(WAIT, "succeeded", Duration::from_secs(20))?;

    let schedule = daemon.json(&["schedule", "show", "nightly"])?;
    assert_eq!(schedule["tz"], "Europe/Berlin");
    assert_eq!(schedule["params"]["target"], "nightly");
    Ok(())
}
