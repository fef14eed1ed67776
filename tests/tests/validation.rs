//! The runbook language refuses mistakes: every key of an action's input is checked against the
//! action's schema, every mistake of a file is reported at once in file order (by `validate`,
//! by the daemon's runbooks dir and by `start` of a file), a step may read only the outputs of
//! steps that have run before it, and flags and params name themselves when they are wrong.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Result;
use runbook_tests::{binary, step_of, Daemon};

/// A file with one mistake of each kind, on lines 10, 15, 16, 21 and 26.
const BAD: &str = r#"name = "bad"

[params.namesrv]
type = "host_port"
default = "127.0.0.1:9876"

[[steps]]
id = "check"
action = "rocketmq.cluster"
with = { namesrvv = "{{ params.namesrv }}", broker = "b", expct = "absent" }

[[steps]]
id = "run"
action = "exec"
with = { command = "echo {{ steps.later.output.stdout }}", timeot = "5s" }
timeout = 30

[[steps]]
id = "pause"
action = "wait"
with = { duration = "1s", extra = 1 }

[[steps]]
id = "later"
action = "rocketmq.topic_upsert"
with = { namesrv = "{{ params.namesrv }}", topic = "t", direction = "sideways", read_queues = "eight" }
"#;

/// Every error `BAD` gets, in file order, after its file name.
const BAD_ERRORS: &[&str] = &[
    ":10: step \"check\": with.expct: unknown key (did you mean `expect`?)",
    ":10: step \"check\": with.namesrvv: unknown key (did you mean `namesrv`?)",
    ":10: step \"check\": with.namesrv: missing required key: the NameServer list, host:port;host:port",
    ":15: step \"run\": with.command: `steps.later.output.stdout` reads step \"later\", which comes later in the file: it has not run when step \"run\" runs",
    ":15: step \"run\": with.timeot: unknown key (did you mean the step's `timeout`, outside `with`?)",
    ":16: step \"run\": timeout: expected a duration string such as \"30s\", \"15m\" or \"72h\", got 30",
    ":21: step \"pause\": with.extra: unknown key (known keys: duration, until)",
    ":26: step \"later\": with.direction: \"sideways\" is not one of \"grow\", \"shrink\"",
    ":26: step \"later\": with.read_queues: expected an integer, got \"eight\"",
];

/// Checks that `stderr` holds every line of `BAD_ERRORS` (after `file`), in that order.
fn has_every_error_in_order(stderr: &str, file: &str) {
    let mut rest = stderr;
    for expected in BAD_ERRORS {
        let line = format!("{file}{expected}");
        let Some(at) = rest.find(&line) else {
            panic!("missing or out of order: {line:?}\nin:\n{stderr}");
        };
        rest = &rest[at + line.len()..];
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn validate_reports_every_mistake_in_file_order() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, BAD)?;
    let output = Command::new(binary()).arg("validate").arg(&file).output()?;
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    has_every_error_in_order(&stderr, &file.display().to_string());
    Ok(())
}

#[test]
fn the_daemon_reports_every_mistake_of_a_file_it_loads_or_is_given() -> Result<()> {
    let daemon = Daemon::start_with_runbooks(&[("bad.toml", BAD)])?;
    // The runbooks dir: the entry is listed as invalid, and starting it names every mistake.
    let output = daemon.cli(&["start", "bad"])?;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{text}");
    has_every_error_in_order(&text, &daemon.path("runbooks/bad.toml"));
    // `list` keeps one line per runbook: the first mistake, and how many more.
    let listed = String::from_utf8_lossy(&daemon.cli(&["list"])?.stdout).into_owned();
    let line = listed
        .lines()
        .find(|line| line.starts_with("bad "))
        .unwrap_or_default();
    assert!(
        line.contains(BAD_ERRORS[0]) && line.ends_with("(and 8 more: runbook describe bad)"),
        "{listed}"
    );
    assert!(!listed.contains(BAD_ERRORS[1]), "{listed}");
    // A file sent with `start`.
    let file = daemon.write_file("bad.toml", BAD)?;
    let output = daemon.cli(&["start", &file])?;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{text}");
    has_every_error_in_order(&text, &file);
    assert!(output.stdout.is_empty(), "a run was started: {output:?}");
    Ok(())
}

#[test]
fn a_rendered_input_outside_the_schema_fails_the_step_naming_the_key() -> Result<()> {
    let daemon = Daemon::start()?;
    // `parse` is a template: only its rendered value can be checked. "yaml" used to be taken
    // silently as `text`, so a later `output.json` check could never hold.
    let file = daemon.write_file(
        "render.toml",
        "name = \"render\"\n[params.format]\ndefault = \"yaml\"\n\
         [[steps]]\nid = \"read\"\naction = \"exec\"\n\
         with = { command = \"echo '{}'\", parse = \"{{ params.format }}\" }\non_failure = \"abort\"\n",
    )?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "failed", Duration::from_secs(20))?;
    let step = step_of(&shown, "read").expect("step read");
    let error = step["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("exec: the rendered input does not fit: with.parse: \"yaml\" is not one of \"text\", \"json\", \"lines\""),
        "{shown}"
    );

    // A core action decided by the engine itself: a number is no duration.
    let file = daemon.write_file(
        "wait.toml",
        "name = \"wait\"\n[params.seconds]\ntype = \"int\"\ndefault = 30\n\
         [[steps]]\nid = \"pause\"\naction = \"wait\"\n\
         with = { duration = \"{{ params.seconds }}\" }\non_failure = \"abort\"\n",
    )?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "failed", Duration::from_secs(20))?;
    let error = step_of(&shown, "pause").expect("step pause")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("wait: the rendered input does not fit: with.duration: expected a duration such as \"30s\" or \"72h\", got 30"),
        "{shown}"
    );
    Ok(())
}

#[test]
fn an_undefined_variable_at_run_time_names_the_variable_and_the_step() -> Result<()> {
    let daemon = Daemon::start()?;
    // `steps.first` has run; its output has no `json.missing`, which only the run can tell.
    let file = daemon.write_file(
        "undefined.toml",
        "name = \"undefined\"\n\
         [[steps]]\nid = \"first\"\naction = \"exec\"\nwith = { command = \"echo '{\\\"a\\\": 1}'\", parse = \"json\" }\n\
         [[steps]]\nid = \"second\"\naction = \"exec\"\nwith = { command = \"echo {{ steps.first.output.json.missing }}\" }\non_failure = \"abort\"\n",
    )?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "failed", Duration::from_secs(20))?;
    let error = step_of(&shown, "second").expect("step second")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("undefined variable `steps.first.output.json.missing`"),
        "{shown}"
    );
    let text = String::from_utf8_lossy(&daemon.cli(&["show", &run])?.stdout).into_owned();
    assert!(
        text.lines().any(|line| line.contains("second")
            && line.contains("undefined variable `steps.first.output.json.missing`")),
        "the step and the variable are not named together:\n{text}"
    );
    Ok(())
}

#[test]
fn schedule_flags_are_named_when_they_are_wrong() -> Result<()> {
    let daemon = Daemon::start()?;
    let output = daemon.cli(&[
        "schedule",
        "add",
        "nightly",
        "--runbook",
        "demo",
        "--cron",
        "30 2 * * *",
        "--tz",
        "Mars/Olympus",
    ])?;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{text}");
    assert!(
        text.contains(
            "--tz: unknown time zone \"Mars/Olympus\" (use an IANA name such as Asia/Shanghai)"
        ),
        "{text}"
    );
    assert!(!text.contains("cron"), "{text}");

    for (from, to, flag, value) in [
        ("yesterday", "2026-01-07T00:00:00Z", "--from", "yesterday"),
        ("2026-01-01T00:00:00Z", "2026-01-07", "--to", "2026-01-07"),
    ] {
        let output = daemon.cli(&[
            "schedule", "backfill", "nightly", "--from", from, "--to", to,
        ])?;
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(4), "{text}");
        assert!(
            text.contains(&format!("{flag} {value:?} is not an RFC 3339 instant"))
                && text.contains("2026-01-01T00:00:00Z"),
            "{text}"
        );
        assert!(!text.contains("line 1 column"), "{text}");
    }
    Ok(())
}

#[test]
fn every_missing_param_is_named_in_one_error() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "params.toml",
        "name = \"params\"\n[params.broker]\nrequired = true\ndescription = \"Broker name\"\n\
         [params.namesrv]\ntype = \"host_port\"\nrequired = true\n\
         [params.optional]\ndefault = \"x\"\n\
         [[steps]]\nid = \"a\"\naction = \"noop\"\n",
    )?;
    let output = daemon.cli(&["start", &file])?;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{text}");
    assert!(
        text.trim_end().ends_with("error: missing required params: broker (string: Broker name), namesrv (host_port); pass -p broker=... -p namesrv=..."),
        "{text}"
    );
    Ok(())
}

#[test]
fn timeout_as_a_number_names_the_step_and_what_is_expected() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("timeout.toml");
    std::fs::write(
        &file,
        "name = \"t\"\n[[steps]]\nid = \"slow\"\naction = \"noop\"\ntimeout = 30\n",
    )?;
    let output = Command::new(binary()).arg("validate").arg(&file).output()?;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{text}");
    assert!(
        text.contains(":5: step \"slow\": timeout: expected a duration string such as \"30s\""),
        "{text}"
    );
    Ok(())
}

#[test]
fn plan_and_describe_show_what_each_step_does_and_whether_it_mutates() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "plan.toml",
        "name = \"plan\"\n[params.broker]\ndefault = \"b1\"\n\
         [[steps]]\nid = \"members\"\naction = \"rocketmq.cluster\"\n\
         with = { namesrv = \"127.0.0.1:9876\", broker = \"{{ params.broker }}\" }\n\
         [[steps]]\nid = \"change\"\naction = \"exec\"\nwith = { command = \"echo {{ params.broker }}\" }\n\
         timeout = \"6h\"\nretry = { max_attempts = 3, backoff = \"5s\" }\nwhen = \"params.broker != ''\"\n\
         undo = { action = \"exec\", with = { command = \"echo undo {{ params.broker }}\" } }\n",
    )?;
    let plan = daemon.json(&["plan", &file])?;
    let steps = plan["steps"].as_array().expect("steps");
    assert_eq!(steps[0]["mutates"], false, "{plan}");
    assert_eq!(steps[0]["input"]["broker"], "b1", "{plan}");
    let change = &steps[1];
    assert_eq!(change["mutates"], true, "{plan}");
    assert_eq!(change["timeout"], "6h", "{plan}");
    assert_eq!(change["retry"]["max_attempts"], 3, "{plan}");
    assert_eq!(change["retry"]["backoff"], "5s", "{plan}");
    assert_eq!(change["when"], "params.broker != ''", "{plan}");
    assert_eq!(change["undo"]["action"], "exec", "{plan}");
    assert_eq!(
        change["undo"]["input"]["command"], "echo undo 'b1'",
        "{plan}"
    );
    assert_eq!(change["undo"]["mutates"], true, "{plan}");

    let text = String::from_utf8_lossy(&daemon.cli(&["plan", &file])?.stdout).into_owned();
    for needle in [
        "1. members  [rocketmq.cluster, reads only]",
        "2. change  [exec, mutates]",
        "timeout: 6h",
        "retry: at most 3 attempts, backoff 5s doubling up to 5m",
        "when: params.broker != ''",
        "undo: [exec, mutates] {\"command\":\"echo undo 'b1'\"}",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    let described = String::from_utf8_lossy(
        &daemon
            .cli(&["describe", "rocketmq.broker.decommission"])?
            .stdout,
    )
    .into_owned();
    assert!(described.contains(", reads only]"), "{described}");
    assert!(described.contains(", mutates]"), "{described}");
    Ok(())
}
