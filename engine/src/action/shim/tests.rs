use super::*;

#[test]
fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let me = ProcessIdentity::of(pid);
    assert!(me.as_ref().is_ok_and(ProcessIdentity::is_alive), "{me:?}");
    let Ok(me) = me else { return };
    let reused = ProcessIdentity {
        start_time: me.start_time + 1,
        ..me.clone()
    };
    assert!(
        !reused.is_alive(),
        "a pid with another start time is another process"
    );
    assert!(
        !reused.signal(0),
        "no signal may reach a process that merely reuses the pid"
    );
    let rebooted = ProcessIdentity {
        boot_id: "another boot".to_owned(),
        ..me.clone()
    };
    assert!(!rebooted.is_alive());
    assert!(me.signal(0));
}

#[test]
fn a_zombie_has_ended() {
    let child = Command::new("true").spawn();
    let Ok(mut child) = child else {
        panic!("cannot run `true`: {child:?}")
    };
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let identity = ProcessIdentity::of(pid);
    // Give it time to exit; it stays a zombie until we wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ProcStat::read(pid).is_some_and(|stat| !stat.has_ended()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ProcStat::read(pid).is_some_and(|stat| stat.has_ended()));
    if let Ok(identity) = identity {
        assert!(!identity.is_alive(), "a zombie is not a running process");
    }
    let _ = child.wait();
}

#[test]
fn status_files_round_trip_and_other_formats_are_refused() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    assert_eq!(read_status(dir.path())?, None);
    let status = Status {
        format: FORMAT,
        outcome: Outcome::Exited { code: 3 },
        stopped: false,
        stderr_tail: "boom\n".to_owned(),
    };
    let json = serde_json::to_vec(&status).map_err(|error| error.to_string())?;
    write_atomic(&dir.path().join(STATUS_FILE), &json).map_err(|error| error.to_string())?;
    assert_eq!(read_status(dir.path())?, Some(status));
    assert!(!dir.path().join("status.json.tmp").exists());
    std::fs::write(
        dir.path().join(STATUS_FILE),
        br#"{"format": 99, "outcome": {"kind": "exited", "code": 0}}"#,
    )
    .map_err(|error| error.to_string())?;
    let refused = read_status(dir.path());
    assert!(
        refused
            .as_ref()
            .is_err_and(|message| message.contains("format")),
        "{refused:?}"
    );
    Ok(())
}

#[test]
fn proc_stat_parses_a_comm_with_spaces_and_parentheses() {
    // Our own line is real; the parser must not depend on the comm.
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let stat = ProcStat::read(pid);
    assert!(
        stat.is_some_and(|stat| stat.start_time > 0 && stat.pgrp > 0),
        "{stat:?}"
    );
}
