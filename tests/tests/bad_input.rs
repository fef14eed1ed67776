//! Bad input gets a one-line error that names the problem and where, a non-zero exit, and the
//! store is left as it was.

use std::process::Command;

use anyhow::Result;
use runbook_tests::{binary, Daemon};

/// Starts `text` as a runbook file and expects a refusal whose message contains every `needle`.
fn refused(
    daemon: &Daemon,
    name: &str,
    text: &str,
    params: &[&str],
    code: i32,
    needles: &[&str],
) -> Result<()> {
    let file = daemon.write_file(name, text)?;
    let mut args = vec!["start", file.as_str()];
    for param in params {
        args.push("-p");
        args.push(param);
    }
    let output = daemon.cli(&args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{name}: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{name}: not one line: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{name}: {stderr:?} does not mention {needle:?}"
        );
    }
    assert!(
        output.stdout.is_empty(),
        "{name}: printed a run id for a refused start"
    );
    Ok(())
}

#[test]
fn bad_definitions_and_params_are_refused_and_nothing_is_stored() -> Result<()> {
    let daemon = Daemon::start()?;
    let good = daemon.write_file(
        "good.toml",
        "name = \"good\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\n",
    )?;
    let bystander = daemon.start_run(&good, &[])?;
    let before = daemon.json(&["show", &bystander])?;

    refused(
        &daemon,
        "malformed.toml",
        "name = \"x\"\n\n[[steps]\nid = \"a\"\n",
        &[],
        4,
        &["malformed.toml:3"],
    )?;
    refused(
        &daemon,
        "action.toml",
        "name = \"x\"\n[[steps]]\nid = \"a\"\naction = \"rocketmq.teleport\"\n",
        &[],
        4,
        &["action.toml:2", "unknown action \"rocketmq.teleport\""],
    )?;
    refused(
        &daemon,
        "duplicate.toml",
        "name = \"x\"\n[[steps]]\nid = \"a\"\naction = \"noop\"\n[[steps]]\nid = \"a\"\naction = \"noop\"\n",
        &[],
        4,
        &["duplicate.toml:6", "duplicate step id \"a\""],
    )?;
    refused(
        &daemon,
        "variable.toml",
        "name = \"x\"\n[params.broker]\n[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = { command = \"echo {{ params.brokr }}\" }\n",
        &[],
        4,
        &["variable.toml:6", "params.brokr"],
    )?;
    refused(
        &daemon,
        "required.toml",
        "name = \"x\"\n[params.broker]\nrequired = true\n[[steps]]\nid = \"a\"\naction = \"noop\"\n",
        &[],
        4,
        &["param \"broker\"", "missing required"],
    )?;
    refused(
        &daemon,
        "duration.toml",
        "name = \"x\"\n[[steps]]\nid = \"a\"\naction = \"wait\"\nwith = { duration = \"3 fortnights\" }\n",
        &[],
        4,
        &["duration.toml:5", "step \"a\"", "duration"],
    )?;
    refused(
        &daemon,
        "timeout.toml",
        "name = \"x\"\n[[steps]]\nid = \"a\"\naction = \"noop\"\ntimeout = \"72\"\n",
        &[],
        4,
        &["timeout.toml:5", "timeout", "no unit"],
    )?;
    refused(
        &daemon,
        "param-type.toml",
        "name = \"x\"\n[params.count]\ntype = \"int\"\n[[steps]]\nid = \"a\"\naction = \"noop\"\n",
        &["count=many"],
        4,
        &["param \"count\"", "not an integer"],
    )?;

    // The same errors from `validate`, without a daemon.
    let malformed = daemon.data_dir.join("files/malformed.toml");
    let output = Command::new(binary())
        .arg("validate")
        .arg(&malformed)
        .output()?;
    assert_eq!(output.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&output.stderr).contains("malformed.toml:3"));

    // Unknown run ids.
    let unknown = daemon.cli(&["show", "0000dead-beef-7000-8000-000000000000"])?;
    assert_eq!(
        unknown.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("0000dead-beef-7000-8000-000000000000")
    );
    let unknown = daemon.cli(&["approve", "ffff"])?;
    assert_eq!(unknown.status.code(), Some(3));
    let unknown = daemon.cli(&["retry", &bystander, "no-such-step"])?;
    assert_eq!(
        unknown.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    // Nothing was stored, and the bystander run is as it was.
    let runs = daemon.json(&["ps", "--all"])?;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    let after = daemon.json(&["show", &bystander])?;
    assert_eq!(before["steps"], after["steps"]);
    assert_eq!(after["state"], "waiting");
    Ok(())
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused_naming_the_holder() -> Result<()> {
    let daemon = Daemon::start()?;
    let output = Command::new(binary())
        .arg("--data-dir")
        .arg(&daemon.data_dir)
        .arg("daemon")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let pid = daemon.pid().unwrap().to_string();
    assert!(
        stderr.contains("in use by daemon pid") && stderr.contains(&pid),
        "{stderr}"
    );
    // The first daemon still serves.
    assert!(daemon.cli(&["ps"])?.status.success());
    Ok(())
}
