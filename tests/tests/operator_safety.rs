//! Operator actions that cannot hurt:
//!
//! - a skip or retry of an approval gate is an approval of it: the gate's rules hold (a
//!   `distinct_approver` gate is not passed by the run's starter, by the CLI or the API), and it
//!   needs a reason, journaled with the uid;
//! - `cancel` of a run whose completed steps have an undo asks (refuses without a terminal)
//!   unless `--yes`; `cancel --rollback` runs the undos; a canceled run can still be rolled back;
//! - `ps`, `show` and the API say what a run waits for (an approval is not a timer), and since
//!   when;
//! - `logs` shows the output of undos, `logs --json` prints one object a line, and with `--json`
//!   every error is the API's error shape;
//! - every command a message tells the operator to run parses as printed.

use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use runbook_tests::{binary, lines, step_of, Daemon};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

fn audit_actions(shown: &Value) -> Vec<String> {
    shown["audit"]
        .as_array()
        .map(|audit| {
            audit
                .iter()
                .map(|entry| entry["action"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

const TWO_PERSON_GATE: &str = r#"
name = "two-person"
[[steps]]
id = "gate"
action = "approval"
timeout = "1s"
with = { prompt = "stop the broker?", distinct_approver = true }
[[steps]]
id = "after"
action = "noop"
"#;

#[test]
fn the_starter_cannot_skip_or_retry_a_timed_out_two_person_gate() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file("two-person.toml", TWO_PERSON_GATE)?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "needs_attention", LONG)?;
    assert_eq!(
        step_of(&shown, "gate").unwrap()["error"],
        "no approval after 1s"
    );

    for verb in ["skip", "retry"] {
        let refused = daemon.cli(&[verb, &run, "gate", "--comment", "in a hurry"])?;
        assert_eq!(
            refused.status.code(),
            Some(5),
            "{verb}: {}",
            stderr(&refused)
        );
        assert_eq!(
            stderr(&refused),
            format!(
                "error: {verb} of approval gate gate counts as its approval: step gate of run \
                 {run} must be approved by someone other than uid {}, who started the run\n",
                uid()
            )
        );
        // The API path holds the same rule.
        let response = daemon.api(
            "POST",
            &format!("/v1/runs/{run}/steps/gate/{verb}"),
            Some(br#"{"comment": "in a hurry"}"#),
        )?;
        assert_eq!(
            response.status,
            409,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.json()?["error"]["code"], "conflict");
    }
    let shown = daemon.show(&run)?;
    assert_eq!(shown["state"], "needs_attention");
    assert_eq!(step_of(&shown, "gate").unwrap()["state"], "failed");
    assert_eq!(audit_actions(&shown), ["start"]);
    Ok(())
}

#[test]
fn a_skip_of_a_gate_needs_a_reason_and_is_journaled_with_who_and_why() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "gate.toml",
        r#"
name = "gate"
[[steps]]
id = "gate"
action = "approval"
timeout = "1s"
[[steps]]
id = "after"
action = "noop"
"#,
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_state(&run, "needs_attention", LONG)?;

    let refused = daemon.cli(&["skip", &run, "gate"])?;
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    assert_eq!(
        stderr(&refused),
        format!(
            "error: skip of approval gate gate of run {run} is an approval of it: say why with a \
             comment (`runbook skip {run} gate --comment REASON`); it is journaled with your uid\n"
        )
    );
    let response = daemon.api("POST", &format!("/v1/runs/{run}/steps/gate/skip"), None)?;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()?["error"]["field"], "comment");

    let skipped = daemon.cli(&["skip", &run, "gate", "--comment", "approved on the phone"])?;
    assert!(skipped.status.success(), "{}", stderr(&skipped));
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    let entry = shown["audit"]
        .as_array()
        .and_then(|audit| audit.iter().find(|entry| entry["action"] == "skip"))
        .context("no skip in the audit")?;
    assert_eq!(entry["actor"]["uid"], uid());
    assert_eq!(entry["step"], "gate");
    assert_eq!(entry["comment"], "approved on the phone");
    Ok(())
}

/// Two changes with undos (newest undone first), then a gate that holds the run.
fn half_changed(marker: &str) -> String {
    format!(
        r#"
name = "half-changed"
[[steps]]
id = "read_only"
action = "exec"
with = {{ command = "echo read-only >> {marker}" }}
undo = {{ action = "exec", with = {{ command = "echo read-write >> {marker}; echo undo-said-hello" }} }}
[[steps]]
id = "stop"
action = "exec"
with = {{ command = "echo stopped >> {marker}" }}
undo = {{ action = "exec", with = {{ command = "echo started >> {marker}" }} }}
[[steps]]
id = "gate"
action = "approval"
"#
    )
}

#[test]
fn cancel_without_a_terminal_refuses_to_leave_undos_unrun_then_rollback_runs_them() -> Result<()> {
    let daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file("half.toml", &half_changed(&marker))?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;

    let refused = daemon.cli(&["cancel", &run])?;
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert_eq!(
        stderr(&refused),
        format!(
            "error: not canceled: run {run} has completed steps whose undo a cancel does not \
             run: stop, read_only (newest first); what they changed stays as it is\n\
             cancel and run them:    runbook cancel {run} --rollback\n\
             cancel and leave them:  runbook cancel {run} --yes\n"
        )
    );
    assert_eq!(daemon.show(&run)?["state"], "waiting");

    let canceled = daemon.cli(&["cancel", &run, "--yes", "--comment", "wrong broker"])?;
    assert!(canceled.status.success(), "{}", stderr(&canceled));
    let said = stderr(&canceled);
    assert!(
        said.ends_with(&format!(
            "the undo of stop, read_only did not run; to run it: runbook rollback {run}\n"
        )),
        "{said}"
    );
    let shown = daemon.wait_state(&run, "canceled", LONG)?;
    assert_eq!(
        shown["undos_left"],
        serde_json::json!(["stop", "read_only"])
    );

    // The canceled run still owes its undos: rollback runs them, newest first.
    let rolled = daemon.cli(&["rollback", &run, "--comment", "put it back"])?;
    assert!(rolled.status.success(), "{}", stderr(&rolled));
    let shown = daemon.wait_state(&run, "rolled_back", LONG)?;
    assert_eq!(
        lines(&marker),
        ["read-only", "stopped", "started", "read-write"]
    );
    assert_eq!(shown["undos_left"], serde_json::json!([]));
    assert_eq!(audit_actions(&shown), ["start", "cancel", "rollback"]);
    // Nothing is left to undo.
    let again = daemon.cli(&["rollback", &run])?;
    assert_eq!(again.status.code(), Some(5), "{}", stderr(&again));
    Ok(())
}

#[test]
fn cancel_with_rollback_runs_the_undos_newest_first() -> Result<()> {
    let daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file("half.toml", &half_changed(&marker))?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;
    let canceled = daemon.cli(&["cancel", &run, "--rollback", "--comment", "abandon"])?;
    assert!(canceled.status.success(), "{}", stderr(&canceled));
    assert!(
        stderr(&canceled).contains("and started running the undos, newest first"),
        "{}",
        stderr(&canceled)
    );
    let shown = daemon.wait_state(&run, "rolled_back", LONG)?;
    assert_eq!(
        lines(&marker),
        ["read-only", "stopped", "started", "read-write"]
    );
    assert_eq!(step_of(&shown, "gate").unwrap()["state"], "canceled");
    let cancel = shown["audit"]
        .as_array()
        .and_then(|audit| audit.iter().find(|entry| entry["action"] == "cancel"))
        .context("no cancel in the audit")?;
    assert_eq!(cancel["comment"], "abandon");
    assert_eq!(cancel["actor"]["uid"], uid());
    Ok(())
}

#[test]
fn cancel_of_a_run_with_nothing_to_undo_does_not_ask() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file(
        "gate.toml",
        "name = \"gate\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\n",
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;
    let canceled = daemon.cli(&["cancel", &run])?;
    assert!(canceled.status.success(), "{}", stderr(&canceled));
    daemon.wait_state(&run, "canceled", LONG)?;
    // A canceled run without undos is not reopened.
    let refused = daemon.cli(&["rollback", &run])?;
    assert_eq!(refused.status.code(), Some(5));
    assert!(
        stderr(&refused).contains("has already ended (canceled) and no undo of it is left to run"),
        "{}",
        stderr(&refused)
    );
    Ok(())
}

#[test]
fn ps_show_and_the_api_tell_an_approval_from_a_timer() -> Result<()> {
    let daemon = Daemon::start()?;
    let gate = daemon.write_file(
        "gate.toml",
        r#"
name = "gate"
[[steps]]
id = "gate"
action = "approval"
timeout = "1h"
"#,
    )?;
    let timer = daemon.write_file(
        "timer.toml",
        r#"
name = "timer"
[[steps]]
id = "settle"
action = "wait"
with = { duration = "1h" }
"#,
    )?;
    let gate_run = daemon.start_run(&gate, &[])?;
    let timer_run = daemon.start_run(&timer, &[])?;
    daemon.wait_step(&gate_run, "gate", "waiting", LONG)?;
    daemon.wait_step(&timer_run, "settle", "waiting", LONG)?;

    let listed = daemon.json(&["ps"])?;
    let runs = listed["runs"].as_array().context("no runs")?;
    let of = |id: &str| runs.iter().find(|run| run["id"] == id).cloned();
    let gate_line = of(&gate_run).context("gate run not listed")?;
    let timer_line = of(&timer_run).context("timer run not listed")?;
    assert_eq!(gate_line["waiting_for"], "approval");
    assert_eq!(timer_line["waiting_for"], "timer");
    for line in [&gate_line, &timer_line] {
        ensure!(
            line["waiting_since"].is_string(),
            "no waiting_since in {line}"
        );
    }
    // The API's run view says the same.
    let view = daemon
        .api("GET", &format!("/v1/runs/{gate_run}"), None)?
        .json()?;
    assert_eq!(view["waiting_for"], "approval");
    assert_eq!(view["waiting_since"], gate_line["waiting_since"]);
    assert_eq!(
        step_of(&view, "gate").unwrap()["waiting_since"],
        gate_line["waiting_since"]
    );

    let table = daemon.cli(&["ps"])?;
    let text = stdout(&table);
    let row = |id: &str| {
        text.lines()
            .find(|line| line.starts_with(&id[..13]))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(text.starts_with("ID "), "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap_or_default()
            .contains("WAITING-FOR"),
        "{text}"
    );
    let gate_row = row(&gate_run);
    assert!(
        gate_row.contains("approval for ") && gate_row.contains("timeout in 59m"),
        "{text}"
    );
    let timer_row = row(&timer_run);
    assert!(
        timer_row.contains("timer for ") && !timer_row.contains("timeout"),
        "{text}"
    );

    let shown = stdout(&daemon.cli(&["show", &gate_run])?);
    assert!(
        shown.contains("waits for approval at step gate since "),
        "{shown}"
    );
    assert!(shown.contains("times out "), "{shown}");
    Ok(())
}

#[test]
fn logs_show_undo_output_and_json_is_one_object_a_line() -> Result<()> {
    let daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file("half.toml", &half_changed(&marker))?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;
    assert!(daemon.cli(&["rollback", &run])?.status.success());
    daemon.wait_state(&run, "rolled_back", LONG)?;

    let logs = daemon.cli(&["logs", &run])?;
    assert!(logs.status.success(), "{}", stderr(&logs));
    let text = stdout(&logs);
    assert!(
        text.contains("== read_only (attempt 1) ==\n")
            && text.contains(
                "== read_only undo (attempt 1) ==\n[runbook] undo attempt 1\nundo-said-hello\n"
            ),
        "{text}"
    );
    // One step, with its undo after it.
    let one = stdout(&daemon.cli(&["logs", &run, "read_only"])?);
    assert!(
        one == "== read_only undo (attempt 1) ==\n[runbook] undo attempt 1\nundo-said-hello\n",
        "{one:?}"
    );

    let json = daemon.cli(&["--json", "logs", &run])?;
    assert!(json.status.success(), "{}", stderr(&json));
    let mut undo_data = String::new();
    for line in stdout(&json).lines() {
        let chunk: Value = serde_json::from_str(line)
            .with_context(|| format!("a line of logs --json is not one JSON object: {line:?}"))?;
        if chunk["undo"] == true && chunk["step"] == "read_only" {
            undo_data.push_str(chunk["data"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(undo_data, "[runbook] undo attempt 1\nundo-said-hello\n");
    Ok(())
}

#[test]
fn with_json_every_error_has_the_api_error_shape() -> Result<()> {
    let daemon = Daemon::start()?;
    let check = |args: &[&str], code: i32, error_code: &str| -> Result<Value> {
        let output = daemon.cli(args)?;
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stderr(&output);
        ensure!(
            text.lines().count() == 1,
            "{args:?}: not one line: {text:?}"
        );
        let error: Value = serde_json::from_str(&text)
            .with_context(|| format!("{args:?}: stderr is not JSON: {text:?}"))?;
        assert_eq!(error["error"]["code"], error_code, "{args:?}: {error}");
        ensure!(error["error"]["message"].is_string(), "{error}");
        Ok(error)
    };
    let missing = check(&["--json", "show", "ffffffff"], 3, "not_found")?;
    assert!(missing["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("ffffffff"));
    check(&["show", "ffffffff", "--json"], 3, "not_found")?;
    let bad_param = check(&["--json", "start", "demo", "-p", "novalue"], 4, "invalid")?;
    assert!(bad_param["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("bad param `novalue`"));
    let usage = check(&["--json", "ps", "--no-such-flag"], 2, "usage")?;
    assert!(usage["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("--no-such-flag"));
    // The daemon's own error keeps its field.
    let file = daemon.write_file(
        "gate.toml",
        "name = \"gate\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\ntimeout = \"1s\"\n",
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_state(&run, "needs_attention", LONG)?;
    let reason = check(&["--json", "skip", &run, "gate"], 4, "invalid")?;
    assert_eq!(reason["error"]["field"], "comment");
    // No daemon at all.
    let nowhere = daemon.path("nowhere");
    let output = std::process::Command::new(binary())
        .args(["--json", "--data-dir", &nowhere, "ps"])
        .output()?;
    assert_eq!(output.status.code(), Some(6));
    let error: Value = serde_json::from_slice(&output.stderr)?;
    assert_eq!(error["error"]["code"], "unreachable");
    // Without --json, errors stay text.
    let text = daemon.cli(&["show", "ffffffff"])?;
    assert!(stderr(&text).starts_with("error: "), "{}", stderr(&text));
    Ok(())
}

/// The `runbook ...` commands in a message: after a backquote, `(`, `:` or at a line's start,
/// up to a closing backquote or parenthesis, `;`, `,`, ` (` or the end of the line.
fn commands_in(text: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for (start, _) in text.match_indices("runbook ") {
        let before = text[..start].trim_end_matches(' ');
        if !(before.is_empty() || before.ends_with(['`', '(', ':', '\n'])) {
            continue;
        }
        let rest = &text[start..];
        // `runbook   gates v1`: a label in `show`, not a command.
        if rest["runbook ".len()..].starts_with(' ') {
            continue;
        }
        let end = rest
            .find(['`', ')', ';', ',', '\n'])
            .into_iter()
            .chain(rest.find(" ("))
            .min()
            .unwrap_or(rest.len());
        let words = shlex::split(&rest[..end]).unwrap_or_default();
        commands.push(words);
    }
    commands
}

#[test]
fn every_command_a_message_tells_the_operator_to_run_parses() -> Result<()> {
    let daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let half = daemon.write_file("half.toml", &half_changed(&marker))?;
    let gate = daemon.write_file(
        "gates.toml",
        r#"
name = "gates"
[[steps]]
id = "first"
action = "exec"
with = { command = "true" }
undo = { action = "noop" }
[[steps]]
id = "each"
for_each = ["a"]
  [[steps.steps]]
  id = "gate"
  action = "approval"
  timeout = "1s"
"#,
    )?;
    let half_run = daemon.start_run(&half, &[])?;
    let gate_run = daemon.start_run(&gate, &[])?;
    daemon.wait_step(&half_run, "gate", "waiting", LONG)?;
    daemon.wait_state(&gate_run, "needs_attention", LONG)?;

    let mut messages = Vec::new();
    for args in [
        vec!["show", gate_run.as_str()],
        vec!["cancel", half_run.as_str()],
        vec!["skip", gate_run.as_str(), "each[0].gate"],
        vec!["retry", gate_run.as_str(), "each[0].gate"],
        vec!["skip", gate_run.as_str(), "first"],
        vec!["approve", gate_run.as_str()],
        vec!["cancel", half_run.as_str(), "--yes"],
        vec!["show", "ffffffff"],
        vec!["describe", "no-such-runbook"],
        vec!["schedule", "show", "no-such-schedule"],
        vec!["ps"],
    ] {
        let output = daemon.cli(&args)?;
        messages.push((args.join(" "), stdout(&output) + &stderr(&output)));
    }
    let unreachable = daemon.path("no daemon here");
    let mut checked = 0;
    for (origin, message) in &messages {
        for words in commands_in(message) {
            ensure!(
                words.first().map(String::as_str) == Some("runbook"),
                "{words:?}"
            );
            ensure!(
                words.get(1).map(String::as_str) != Some("daemon"),
                "{words:?}"
            );
            // Against a data dir without a daemon: a command that parses fails to reach it
            // (exit 6); one that does not parse is a usage error (exit 2).
            let output = std::process::Command::new(binary())
                .args(&words[1..])
                .arg("--data-dir")
                .arg(&unreachable)
                .stdin(std::process::Stdio::null())
                .output()?;
            ensure!(
                output.status.code() == Some(6),
                "`{}` (printed by `runbook {origin}`) does not parse: {}\nthe message: {message}",
                words.join(" "),
                stderr(&output)
            );
            checked += 1;
        }
    }
    // show: retry, skip, rollback and cancel; cancel: --rollback and --yes; skip: the reason;
    // cancel --yes: rollback; and the lookups' `runbook list`, `runbook schedule ls`.
    ensure!(
        checked >= 10,
        "only {checked} commands found in {messages:#?}"
    );
    Ok(())
}

/// `runbook <args>` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn on_a_terminal(daemon: &Daemon, args: &[&str], answer: &str) -> Result<Output> {
    use std::io::Write;
    let binary = binary().display().to_string();
    let data_dir = daemon.path("");
    let mut words = vec![binary.as_str(), "--data-dir", data_dir.as_str()];
    words.extend_from_slice(args);
    let command = shlex::try_join(words)?;
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run `script` (util-linux) for a pseudo-terminal")?;
    // Typed after the prompt is up: a terminal drops what is typed before a reader waits.
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(answer.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

#[test]
fn cancel_on_a_terminal_asks_before_leaving_undos_unrun() -> Result<()> {
    let daemon = Daemon::start()?;
    let marker = daemon.path("marker");
    let file = daemon.write_file("half.toml", &half_changed(&marker))?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;

    let declined = on_a_terminal(&daemon, &["cancel", &run], "n\n")?;
    let said = stdout(&declined);
    assert_eq!(declined.status.code(), Some(5), "{said}");
    assert!(
        said.contains("cancel and leave them as they are? [y/N]")
            && said.contains(&format!("not canceled: run {run} goes on")),
        "{said}"
    );
    assert_eq!(daemon.show(&run)?["state"], "waiting");

    let accepted = on_a_terminal(&daemon, &["cancel", &run], "y\n")?;
    assert!(accepted.status.success(), "{}", stdout(&accepted));
    daemon.wait_state(&run, "canceled", LONG)?;
    assert_eq!(lines(&marker), ["read-only", "stopped"]);
    Ok(())
}
