use super::*;

#[test]
fn ssh_options_without_a_host_are_refused() {
    let refused = spec(&json!({"command": "true", "known_hosts": "off"}));
    assert!(
        refused.is_err_and(|failure| failure.message.contains("known_hosts") && !failure.retryable)
    );
    let over_ssh =
        spec(&json!({"command": ["uptime"], "host": "ops@b1:22", "known_hosts": "accept-new"}));
    assert!(over_ssh.is_ok_and(|spec| spec.argv[0] == "ssh"
        && spec.env.is_empty()
        && spec.host.as_deref() == Some("ops@b1:22")));
}

fn write(dir: &Path, name: &str, value: &impl serde::Serialize) {
    let json = serde_json::to_vec(value).unwrap_or_default();
    assert!(shim::write_atomic(&dir.join(name), &json).is_ok());
}

fn me() -> ProcessIdentity {
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    ProcessIdentity::of(pid).unwrap_or(ProcessIdentity {
        pid,
        start_time: 0,
        boot_id: String::new(),
    })
}

#[test]
fn recovery_follows_only_the_journaled_live_shim_and_prefers_a_recorded_end(
) -> Result<(), std::io::Error> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let live = me();
    let note = json!({ "shim": live });

    // A live shim with no status yet: re-attach.
    assert!(matches!(recovery(dir, Some(&note)), Recovery::Running(ref shim) if *shim == live));

    // The same pid with another start time is another process: never followed.
    let reused =
        json!({ "shim": ProcessIdentity { start_time: live.start_time + 1, ..live.clone() } });
    let unknown = recovery(dir, Some(&reused));
    assert!(
        matches!(unknown, Recovery::Unknown(ref why) if why.contains("another process")),
        "{unknown:?}"
    );

    // Another boot: its processes are gone whatever /proc says now.
    let rebooted =
        json!({ "shim": ProcessIdentity { boot_id: "other".to_owned(), ..live.clone() } });
    assert!(
        matches!(recovery(dir, Some(&rebooted)), Recovery::Unknown(ref why) if why.contains("reboot"))
    );

    // Never journaled: never released.
    assert!(
        matches!(recovery(dir, None), Recovery::NotStarted(ref why) if why.contains("did not start"))
    );

    // A recorded end wins, whatever the shim's state.
    let status = Status {
        format: shim::FORMAT,
        outcome: Outcome::Exited { code: 3 },
        stopped: false,
        stderr_tail: String::new(),
    };
    write(dir, shim::STATUS_FILE, &status);
    assert!(
        matches!(recovery(dir, Some(&reused)), Recovery::Ended(ref ended) if ended.outcome == Outcome::Exited { code: 3 })
    );
    assert!(matches!(recovery(dir, None), Recovery::Ended(_)));

    // Released too late: the command never ran.
    let not_started = Status {
        outcome: Outcome::NotStarted {
            reason: "no go".to_owned(),
        },
        ..status
    };
    write(dir, shim::STATUS_FILE, &not_started);
    assert!(
        matches!(recovery(dir, Some(&note)), Recovery::NotStarted(ref why) if why.contains("never started"))
    );
    Ok(())
}

#[test]
fn a_recorded_end_becomes_the_steps_result() -> Result<(), std::io::Error> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let spec_of =
        |input: Value| spec(&input).map_err(|failure| std::io::Error::other(failure.message));
    std::fs::write(dir.join(shim::STDOUT_FILE), "{\"lag\": 0}\n")?;
    let exited = |code| Status {
        format: shim::FORMAT,
        outcome: Outcome::Exited { code },
        stopped: false,
        stderr_tail: "last words\n".to_owned(),
    };
    let output = finish(
        exited(0),
        None,
        &spec_of(json!({"command": "x", "parse": "json"}))?,
        dir,
    );
    assert_eq!(
        output.ok().map(|output| output["json"]["lag"].clone()),
        Some(json!(0))
    );
    let failed = finish(exited(3), None, &spec_of(json!({"command": "x"}))?, dir);
    assert!(
        failed.as_ref().is_err_and(|failure| failure.retryable
            && failure.message == "command exited with code 3: last words"),
        "{:?}",
        failed.err()
    );
    let ssh = finish(
        exited(255),
        None,
        &spec_of(json!({"command": "x", "host": "ops@b1:22"}))?,
        dir,
    );
    assert!(ssh.is_err_and(|failure| failure.message.starts_with("ssh to ops@b1:22 failed")));
    Ok(())
}

#[test]
fn the_shim_is_runbook_shim_beside_the_daemon_else_the_daemon_itself() -> Result<(), std::io::Error>
{
    let dir = tempfile::tempdir()?;
    let exe = dir.path().join("runbook");
    let small = dir.path().join(SHIM_BINARY);
    let with_mode = |path: &Path, mode: u32| {
        std::fs::write(path, b"#!/bin/sh\n")?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    with_mode(&exe, 0o755)?;
    assert_eq!(shim_program_for(&exe), Ok(exe.clone()), "alone: itself");

    with_mode(&small, 0o644)?;
    assert_eq!(shim_program_for(&exe), Ok(exe.clone()), "not executable");
    with_mode(&small, 0o700)?;
    assert_eq!(shim_program_for(&exe), Ok(small.clone()), "beside it");

    // Upgraded while the daemon runs: the binaries now at its path.
    let deleted = PathBuf::from(format!("{} (deleted)", exe.display()));
    assert_eq!(shim_program_for(&deleted), Ok(small.clone()));
    std::fs::remove_file(&small)?;
    assert_eq!(shim_program_for(&deleted), Ok(exe.clone()));

    // A directory of that name is no binary.
    std::fs::create_dir(&small)?;
    assert_eq!(shim_program_for(&exe), Ok(exe.clone()));
    std::fs::remove_file(&exe)?;
    assert!(shim_program_for(&deleted).is_err_and(|error| error.contains("is gone")));
    Ok(())
}
