//! Hostile values: durations and deadlines out of range, files in the runbooks dir that are not
//! files, loops nested past what the journal can read back, NUL bytes, ranges too large for one
//! request, requests about steps that have not started, windows that never open. Each gets a
//! clear error naming what and where, and the daemon goes on serving.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use runbook_tests::{binary, step_of, Daemon};

/// Runs the CLI on the daemon's data dir, killing it (by pid) if it does not answer in 15 s.
fn cli_in_time(daemon: &Daemon, args: &[&str]) -> Result<Output> {
    let mut child = Command::new(binary())
        .arg("--data-dir")
        .arg(&daemon.data_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("runbook {} did not answer within 15 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

/// `runbook validate <file>` must refuse `text` (exit 4) naming every needle.
fn validate_refuses(daemon: &Daemon, name: &str, text: &str, needles: &[&str]) -> Result<()> {
    let file = daemon.write_file(name, text)?;
    let output = cli_in_time(daemon, &["validate", &file])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{name}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{name}: {stderr:?} does not mention {needle:?}"
        );
    }
    Ok(())
}

#[test]
fn durations_and_deadlines_beyond_ten_years_are_refused_and_never_crash_the_daemon() -> Result<()> {
    let daemon = Daemon::start()?;
    validate_refuses(
        &daemon,
        "long-wait.toml",
        "name = \"long-wait\"\n[[steps]]\nid = \"nap\"\naction = \"wait\"\nwith = { duration = \"9999999999999h\" }\n",
        &["long-wait.toml:", "step \"nap\"", "longer than the maximum of 10 years"],
    )?;
    validate_refuses(
        &daemon,
        "long-timeout.toml",
        "name = \"long-timeout\"\n[[steps]]\nid = \"slow\"\naction = \"noop\"\ntimeout = \"100000000h\"\n",
        &["long-timeout.toml:", "step \"slow\"", "timeout", "10 years"],
    )?;
    validate_refuses(
        &daemon,
        "far-until.toml",
        "name = \"far-until\"\n[[steps]]\nid = \"nap\"\naction = \"wait\"\nwith = { until = \"9999-12-31T00:00:00Z\" }\n",
        &["far-until.toml:", "step \"nap\"", "until", "is more than 10 years"],
    )?;

    // Rendered from a param: refused when the step renders it, naming the step, as the first
    // step and after an earlier one (which went through the timer service before).
    let file = daemon.write_file(
        "templated.toml",
        r#"
name = "templated"
[params.first]
type = "string"
[params.second]
type = "string"
[[steps]]
id = "first_nap"
action = "wait"
with = { duration = "{{ params.first }}" }
[[steps]]
id = "earlier"
action = "wait"
with = { duration = "50ms" }
[[steps]]
id = "second_nap"
action = "wait"
with = { duration = "{{ params.second }}" }
"#,
    )?;
    let run = daemon.start_run(&file, &[("first", "9999999999999h"), ("second", "1s")])?;
    let shown = daemon.wait_state(&run, "needs_attention", Duration::from_secs(20))?;
    let error = step_of(&shown, "first_nap").map(|step| step["error"].to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|error| error.contains("duration") && error.contains("10 years")),
        "{shown}"
    );
    let run = daemon.start_run(&file, &[("first", "10ms"), ("second", "9999999999999h")])?;
    let shown = daemon.wait_for(&run, Duration::from_secs(20), |shown| {
        step_of(shown, "second_nap").is_some_and(|step| step["state"] == "failed")
    })?;
    let error = step_of(&shown, "second_nap").map(|step| step["error"].to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|error| error.contains("10 years")),
        "{shown}"
    );
    // A typed duration param is checked at start, naming the param.
    let typed = daemon.write_file(
        "typed.toml",
        "name = \"typed\"\n[params.pause]\ntype = \"duration\"\n[[steps]]\nid = \"nap\"\naction = \"wait\"\nwith = { duration = \"{{ params.pause }}\" }\n",
    )?;
    let output = cli_in_time(&daemon, &["start", &typed, "-p", "pause=9999999999999h"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("pause") && stderr.contains("10 years"),
        "{stderr}"
    );

    // The daemon is alive, and quiet: no panic, no loop writing the log.
    std::thread::sleep(Duration::from_secs(2));
    let log = daemon.log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    assert!(log.len() < 200_000, "the log grew to {} bytes", log.len());
    assert!(cli_in_time(&daemon, &["ps"])?.status.success());
    Ok(())
}

#[test]
fn a_fifo_or_a_huge_file_in_the_runbooks_dir_is_skipped_and_the_api_answers() -> Result<()> {
    let good = "name = \"good\"\n[[steps]]\nid = \"a\"\naction = \"noop\"\n";
    let daemon = Daemon::start_with_runbooks(&[("good.toml", good)])?;
    let dir = daemon.data_dir.join("runbooks");
    let fifo = dir.join("evil.toml");
    let made = Command::new("mkfifo").arg(&fifo).status()?;
    assert!(made.success(), "mkfifo failed");
    std::fs::create_dir(dir.join("folder.toml"))?;
    std::fs::write(dir.join("huge.toml"), vec![b'#'; 2 * 1024 * 1024])?;

    for _ in 0..2 {
        let output = cli_in_time(&daemon, &["list"])?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{output:?}");
        assert!(stdout.contains("good"), "{stdout}");
        assert!(stdout.contains("evil.toml: skipped: a FIFO"), "{stdout}");
        assert!(
            stdout.contains("folder.toml: skipped: a directory"),
            "{stdout}"
        );
        assert!(stdout.contains("huge.toml: too large"), "{stdout}");
    }
    let run = daemon.start_run("good", &[])?;
    daemon.wait_state(&run, "succeeded", Duration::from_secs(20))?;
    assert!(daemon.log().contains("skipping a runbook file"));
    // And after the FIFO is gone, all is as before.
    std::fs::remove_file(&fifo)?;
    assert!(cli_in_time(&daemon, &["list"])?.status.success());
    Ok(())
}

/// A runbook whose steps nest `depth` for_each loops around a `noop`.
fn nested(depth: usize) -> String {
    let mut text = format!("name = \"nested-{depth}\"\n");
    let mut table = "steps".to_owned();
    for level in 1..=depth {
        text.push_str(&format!(
            "[[{table}]]\nid = \"loop{level}\"\nfor_each = [\"x\"]\nas = \"v{level}\"\n"
        ));
        table.push_str(".steps");
    }
    text.push_str(&format!("[[{table}]]\nid = \"leaf\"\naction = \"noop\"\n"));
    text
}

#[test]
fn loops_nested_past_the_limit_are_refused_and_those_within_it_read_back() -> Result<()> {
    let daemon = Daemon::start()?;
    for depth in [9, 42, 50, 5000] {
        let name = format!("nested-{depth}.toml");
        // Up to what the file may nest, the step that goes too deep is named; past it (a
        // deserializer would overflow the daemon's stack) the line where it does.
        let needles: &[&str] = if depth == 9 {
            &["step \"loop9\"", "nested more than 8 levels deep"]
        } else {
            &[":124:", "nested 33 levels deep", "at most 8 loops deep"]
        };
        let mut needles = needles.to_vec();
        needles.push(&name);
        validate_refuses(&daemon, &name, &nested(depth), &needles)?;
        let file = daemon.path(&format!("files/{name}"));
        let output = cli_in_time(&daemon, &["start", &file])?;
        assert_eq!(output.status.code(), Some(4), "{output:?}");
    }
    let listed = daemon.json(&["ps", "--all"])?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(0), "{listed}");

    let file = daemon.write_file("nested-8.toml", &nested(8))?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "succeeded", Duration::from_secs(60))?;
    assert!(step_of(&shown, "loop1").is_some(), "{shown}");
    assert!(cli_in_time(&daemon, &["show", &run])?.status.success());
    Ok(())
}

#[test]
fn a_nul_byte_in_a_param_is_refused_naming_the_param() -> Result<()> {
    let daemon = Daemon::start()?;
    let text = "name = \"echo\"\n[params.who]\ntype = \"string\"\n[[steps]]\nid = \"say\"\naction = \"noop\"\nwith = { who = \"{{ params.who }}\" }\n";
    let body = serde_json::json!({
        "source": {"file": "echo.toml", "text": text},
        "params": {"who": "root\u{0}; rm -rf /"},
    });
    let response = daemon.api("POST", "/v1/runs", Some(&serde_json::to_vec(&body)?))?;
    assert_eq!(response.status, 400, "{}", response.text());
    let answer = response.text();
    assert!(
        answer.contains("param \\\"who\\\"") || answer.contains("params.who"),
        "{answer}"
    );
    assert!(answer.contains("NUL"), "{answer}");
    let listed = daemon.json(&["ps", "--all"])?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(0), "{listed}");
    Ok(())
}

#[test]
fn a_backfill_over_more_than_a_thousand_instants_says_where_it_stopped() -> Result<()> {
    let daemon = Daemon::start()?;
    let added = cli_in_time(
        &daemon,
        &[
            "schedule",
            "add",
            "often",
            "--runbook",
            "demo",
            "--cron",
            "* * * * *",
            "--paused",
        ],
    )?;
    assert!(added.status.success(), "{added:?}");
    let args = [
        "schedule",
        "backfill",
        "often",
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-02T00:00:00Z",
        "--dry-run",
    ];
    let output = cli_in_time(&daemon, &args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped after 1000 instants")
            && stderr.contains("--from 2026-01-01T16:40:00Z"),
        "{stderr}"
    );
    let mut json = vec!["--json"];
    json.extend_from_slice(&args);
    let answer: serde_json::Value = serde_json::from_slice(&cli_in_time(&daemon, &json)?.stdout)?;
    assert_eq!(answer["truncated"], true, "{answer}");
    assert_eq!(answer["next_from"], "2026-01-01T16:40:00Z", "{answer}");
    assert_eq!(answer["instants"].as_array().map(Vec::len), Some(1000));
    Ok(())
}

#[test]
fn retry_of_a_step_that_has_not_started_is_a_conflict() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "gated.toml",
        "name = \"gated\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\n[[steps]]\nid = \"later\"\naction = \"noop\"\n",
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "gate", "waiting", Duration::from_secs(20))?;
    let output = cli_in_time(&daemon, &["retry", &run, "later"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("\"later\"") && stderr.contains("has not started"),
        "{stderr}"
    );
    let response = daemon.api(
        "POST",
        &format!("/v1/runs/{run}/steps/later/retry"),
        Some(b"{}"),
    )?;
    assert_eq!(response.status, 409, "{}", response.text());
    // A step that is in no definition is still not found.
    let output = cli_in_time(&daemon, &["retry", &run, "nowhere"])?;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    Ok(())
}

#[test]
fn a_window_that_never_opens_is_refused() -> Result<()> {
    let daemon = Daemon::start()?;
    validate_refuses(
        &daemon,
        "never.toml",
        "name = \"never\"\n[[steps]]\nid = \"feb30\"\naction = \"window\"\nwith = { cron = \"0 0 30 2 *\" }\n",
        &["never.toml:", "step \"feb30\"", "does not match within 5 years"],
    )?;
    Ok(())
}

/// `every = "0s"` polled hundreds of times a second and filled the journal: a poll interval
/// below 1s is refused, written or rendered, naming the step.
#[test]
fn a_poll_faster_than_once_a_second_is_refused() -> Result<()> {
    let daemon = Daemon::start()?;
    for every in ["0s", "500ms"] {
        validate_refuses(
            &daemon,
            "fast-poll.toml",
            &format!("name = \"fast-poll\"\n[[steps]]\nid = \"spin\"\naction = \"exec\"\nwith = {{ command = \"true\" }}\nuntil = \"false\"\nevery = \"{every}\"\n"),
            &["fast-poll.toml:", "step \"spin\"", "every", "below the minimum of 1s"],
        )?;
    }
    validate_refuses(
        &daemon,
        "fast-wait-until.toml",
        "name = \"fast-wait-until\"\n[[steps]]\nid = \"spin\"\naction = \"wait_until\"\nwith = { action = \"exec\", command = \"true\", condition = \"false\", every = \"0s\", timeout = \"1m\" }\n",
        &["fast-wait-until.toml:", "step \"spin\"", "every", "below the minimum of 1s"],
    )?;
    let file = daemon.write_file(
        "templated-poll.toml",
        "name = \"templated-poll\"\n[params.every]\ntype = \"string\"\n[[steps]]\nid = \"spin\"\naction = \"exec\"\nwith = { command = \"true\" }\nuntil = \"false\"\nevery = \"{{ params.every }}\"\n",
    )?;
    let run = daemon.start_run(&file, &[("every", "0s")])?;
    let shown = daemon.wait_state(&run, "needs_attention", Duration::from_secs(20))?;
    let step = step_of(&shown, "spin").expect("the step is shown");
    assert!(
        step["error"].as_str().is_some_and(
            |error| error.contains("every") && error.contains("below the minimum of 1s")
        ),
        "{shown}"
    );
    // It polled once, then stopped: no spin.
    assert!(
        step["polls"].as_u64().is_some_and(|polls| polls <= 1),
        "{shown}"
    );
    Ok(())
}
