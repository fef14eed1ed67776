//! Hostile templates and params: a param value never runs as shell code, and no template (however
//! much work or output it asks for) stalls or crashes the daemon.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use runbook_tests::{step_of, Daemon};

/// A runbook whose steps print a param in each place a template can stand in a shell command.
const ECHO: &str = r#"
name = "echo-param"

[params.name]
type = "string"
required = true

[[steps]]
id = "bare"
action = "exec"
with = { command = "printf '%s\n' {{ params.name }}" }

[[steps]]
id = "single"
action = "exec"
with = { command = "printf '%s\n' '{{ params.name }}'" }

[[steps]]
id = "double"
action = "exec"
with = { command = "printf '%s\n' \"{{ params.name }}\"" }

[[steps]]
id = "tojson"
action = "exec"
with = { command = "printf '%s\n' {{ params.name | tojson }}" }

[[steps]]
id = "lone"
action = "exec"
with = { command = "{{ params.name }}" }
on_failure = "continue"

[[steps]]
id = "argv"
action = "exec"
with = { command = ["printf", "%s\n", "{{ params.name }}"] }
"#;

#[test]
fn a_param_value_never_runs_as_shell_code() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file("echo.toml", ECHO)?;
    let pwned = daemon.path("pwned");
    let values = [
        format!("x; touch {pwned}"),
        format!("$(touch {pwned})"),
        format!("`touch {pwned}`"),
        format!("x\ntouch {pwned}"),
        format!("'; touch {pwned}; '"),
        format!("\"; touch {pwned}; \""),
        format!("a'b\"c\\$HOME $(touch {pwned}) `touch {pwned}`"),
    ];
    for value in &values {
        let run = daemon.start_run(&file, &[("name", value)])?;
        let shown = daemon.wait_state(&run, "succeeded", Duration::from_secs(30))?;
        assert!(
            !Path::new(&pwned).exists(),
            "{value:?} ran as shell code: {shown:#}"
        );
        for step in ["bare", "single", "double", "argv"] {
            let stdout = step_of(&shown, step).expect("step")["output"]["stdout"].clone();
            assert_eq!(
                stdout.as_str(),
                Some(format!("{value}\n").as_str()),
                "step {step} did not print {value:?} literally: {shown:#}"
            );
        }
        // tojson prints the value as a JSON string, still one word.
        let tojson = step_of(&shown, "tojson").expect("step")["output"]["stdout"].clone();
        assert_eq!(
            tojson.as_str(),
            Some(format!("{}\n", serde_json::to_string(value)?).as_str()),
            "{shown:#}"
        );
        // A command that is only a param runs as one word: a command not found, nothing else.
        let lone = step_of(&shown, "lone").expect("step");
        assert_eq!(lone["state"], "failed", "{shown:#}");
    }
    Ok(())
}

#[test]
fn raw_opts_out_and_validate_warns_about_it() -> Result<()> {
    let daemon = Daemon::start()?;
    let text = r#"name = "raw"

[params.cmd]
type = "string"
required = true

[[steps]]
id = "run_it"
action = "exec"
with = { command = "{{ params.cmd | raw }}" }
"#;
    let file = daemon.write_file("raw.toml", text)?;
    let output = daemon.cli(&["validate", &file])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning")
            && stderr.contains(&format!("{file}:10"))
            && stderr.contains("run_it")
            && stderr.contains("raw"),
        "no warning naming file:line and step: {stderr:?}"
    );
    let marker = daemon.path("ran-as-shell");
    let run = daemon.start_run(&file, &[("cmd", &format!("echo one; touch {marker}"))])?;
    let shown = daemon.wait_state(&run, "succeeded", Duration::from_secs(30))?;
    assert!(
        Path::new(&marker).exists(),
        "| raw did not pass the command through: {shown:#}"
    );
    Ok(())
}

#[test]
fn unknown_filters_and_tests_fail_validation_naming_the_line() -> Result<()> {
    let daemon = Daemon::start()?;
    let cases = [
        (
            "filter.toml",
            "name = \"f\"\n[params.name]\ntype = \"string\"\ndefault = \"x\"\n\n[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = { command = \"echo {{ params.name | quote }}\" }\n",
            "filter.toml:9",
            "unknown filter `quote`",
        ),
        (
            "safe.toml",
            "name = \"f\"\n[params.name]\ntype = \"string\"\ndefault = \"x\"\n\n[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = { command = \"echo {{ params.name | safe }}\" }\n",
            "safe.toml:9",
            "unknown filter `safe`",
        ),
        (
            "test.toml",
            "name = \"t\"\n[params.name]\ntype = \"string\"\ndefault = \"x\"\n\n[[steps]]\nid = \"a\"\naction = \"noop\"\nwhen = \"params.name is frobnicated\"\n",
            "test.toml:9",
            "unknown test `frobnicated`",
        ),
    ];
    for (name, text, place, needle) in cases {
        let file = daemon.write_file(name, text)?;
        for command in ["validate", "start"] {
            let output = daemon.cli(&[command, &file])?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(4), "{command} {name}: {stderr}");
            assert!(
                stderr.contains(place) && stderr.contains(needle),
                "{command} {name}: {stderr:?} does not name {place} and {needle:?}"
            );
        }
    }
    Ok(())
}

const PLAN_BOMB: &str = r#"name = "plan-bomb"

[[steps]]
id = "bomb"
action = "exec"
with = { command = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}" }
"#;

#[test]
fn a_template_bomb_in_plan_fails_fast_and_the_daemon_keeps_answering() -> Result<()> {
    let daemon = Daemon::start()?;
    let file = daemon.write_file("bomb.toml", PLAN_BOMB)?;
    let started = Instant::now();
    let plans: Vec<_> = (0..3)
        .map(|_| {
            let binary = runbook_tests::binary();
            let (data_dir, file) = (daemon.data_dir.clone(), file.clone());
            std::thread::spawn(move || {
                std::process::Command::new(binary)
                    .arg("--data-dir")
                    .arg(data_dir)
                    .args(["plan", &file])
                    .output()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let ps_started = Instant::now();
    let ps = daemon.cli(&["ps"])?;
    assert!(ps.status.success(), "{ps:?}");
    assert!(
        ps_started.elapsed() < Duration::from_secs(3),
        "ps took {:?} while plans rendered a bomb",
        ps_started.elapsed()
    );
    for plan in plans {
        let output = plan.join().expect("thread")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "{stderr}");
        assert!(
            stderr.contains("step \"bomb\"") && stderr.contains("too much work"),
            "{stderr:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the plans took {:?}",
        started.elapsed()
    );
    Ok(())
}

const RUN_BOMB: &str = r#"name = "run-bomb"

[[steps]]
id = "pause"
action = "wait"
with = { duration = "1s" }

[[steps]]
id = "bomb"
action = "exec"
with = { command = "echo {% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}" }
"#;

#[test]
fn a_template_bomb_after_a_wait_needs_attention_and_the_daemon_survives_restart() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let file = daemon.write_file("bomb.toml", RUN_BOMB)?;
    let run = daemon.start_run(&file, &[])?;
    let shown = daemon.wait_state(&run, "needs_attention", Duration::from_secs(30))?;
    assert_eq!(shown["attention"]["step"], "bomb", "{shown:#}");
    let error = step_of(&shown, "bomb").expect("step")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("too long"),
        "the step's error does not say why: {shown:#}"
    );
    daemon.kill9();
    daemon.restart()?;
    let shown = daemon.show(&run)?;
    assert_eq!(shown["state"], "needs_attention", "{shown:#}");
    let ps = daemon.cli(&["ps"])?;
    assert!(ps.status.success(), "{ps:?}");
    // A retry fails the same way, and the daemon stays up.
    let retry = daemon.cli(&["retry", &run, "bomb"])?;
    assert!(retry.status.success(), "{retry:?}");
    daemon.wait_state(&run, "needs_attention", Duration::from_secs(30))?;
    assert!(daemon.cli(&["ps"])?.status.success());
    Ok(())
}

#[test]
fn vars_of_rocketmq_command_are_quoted_too() -> Result<()> {
    let daemon = Daemon::start()?;
    let text = r#"name = "stop"

[params.stop_command]
type = "string"
required = true

[params.broker]
type = "string"
required = true

[[steps]]
id = "stop"
action = "rocketmq.command"
with = { command = "{{ params.stop_command | raw }}", vars = { broker = "{{ params.broker }}" } }
"#;
    let file = daemon.write_file("stop.toml", text)?;
    let pwned = daemon.path("pwned");
    let broker = format!("b1; touch {pwned}");
    let run = daemon.start_run(
        &file,
        &[
            ("stop_command", "printf '%s\\n' {{ broker }}"),
            ("broker", &broker),
        ],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", Duration::from_secs(30))?;
    assert!(!Path::new(&pwned).exists(), "{shown:#}");
    assert_eq!(
        step_of(&shown, "stop").expect("step")["output"]["stdout"],
        format!("{broker}\n"),
        "{shown:#}"
    );
    Ok(())
}
