//! Running the daemon as a service: `/healthz`, `/readyz`, `/v1/version` and the build and
//! zero-state series of `/metrics`; `runbook version` against a live and a stopped daemon; the
//! daemon's JSON log of run life cycles and operator actions;
//! shell completions and manual pages generated from the CLI; the systemd unit in `contrib/`
//! checked by `systemd-analyze verify`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use runbook_tests::{binary, Daemon};

#[test]
fn health_readiness_version_and_metrics() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let health = daemon.api("GET", "/healthz", None)?;
    assert_eq!(health.status, 200);
    assert_eq!(String::from_utf8_lossy(&health.body), "ok\n");
    let ready = daemon.api("GET", "/readyz", None)?;
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );

    let version: serde_json::Value =
        serde_json::from_slice(&daemon.api("GET", "/v1/version", None)?.body)?;
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["journal_format"], 1);

    // Every state has its series before any run is in it, and the build is named.
    let metrics = String::from_utf8_lossy(&daemon.api("GET", "/metrics", None)?.body).into_owned();
    for state in [
        "running",
        "waiting",
        "paused",
        "needs_attention",
        "succeeded",
        "failed",
        "canceled",
        "rolled_back",
    ] {
        assert!(
            metrics.contains(&format!("runbook_runs{{state=\"{state}\"}} 0\n")),
            "no zero series for {state}: {metrics}"
        );
    }
    assert!(
        metrics.contains(&format!(
            "runbook_build_info{{version=\"{}\",journal_format=\"1\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );

    // `runbook version`: both sides; the daemon's side fails when it is gone.
    let shown = daemon.cli(&["version"])?;
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let expected = format!("{} (journal format 1)", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        text,
        format!("client  {expected}\ndaemon  {expected}\nstore   embedded\n")
    );
    let json = daemon.json(&["version"])?;
    assert_eq!(
        json["daemon"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{json}"
    );
    daemon.terminate()?;
    let shown = daemon.cli(&["version"])?;
    assert!(
        !shown.status.success(),
        "a version without a daemon succeeded"
    );
    assert!(String::from_utf8_lossy(&shown.stdout).starts_with("client  "));
    assert!(
        String::from_utf8_lossy(&shown.stderr).contains("daemon"),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    Ok(())
}

fn runbook(args: &[&str]) -> Result<String> {
    let output = Command::new(binary()).args(args).output()?;
    ensure!(
        output.status.success(),
        "runbook {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn completions_and_manual_pages_come_from_the_cli() -> Result<()> {
    let bash = runbook(&["completions", "bash"])?;
    for word in ["approve", "rollback", "schedule", "--data-dir"] {
        assert!(bash.contains(word), "bash completions without {word}");
    }
    assert!(
        !bash.contains(" shim "),
        "the hidden supervisor command is offered for completion"
    );
    let zsh = runbook(&["completions", "zsh"])?;
    assert!(
        zsh.starts_with("#compdef runbook"),
        "{}",
        &zsh[..zsh.len().min(200)]
    );
    let fish = runbook(&["completions", "fish"])?;
    assert!(fish.contains("complete -c runbook"), "fish completions");

    let page = runbook(&["man"])?;
    assert!(
        page.contains(".TH runbook 1"),
        "{}",
        &page[..page.len().min(300)]
    );
    assert!(
        page.contains("approve"),
        "runbook(1) does not list the commands"
    );

    let dir = tempfile::tempdir()?;
    let out = dir.path().join("man1");
    runbook(&["man", "--dir", out.to_str().context("a UTF-8 path")?])?;
    for page in ["runbook.1", "runbook-start.1", "runbook-schedule-add.1"] {
        let text = std::fs::read_to_string(out.join(page))
            .with_context(|| format!("no {page} in {}", out.display()))?;
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }

    // Refused: an unknown shell, named.
    let refused = Command::new(binary())
        .args(["completions", "tcsh"])
        .output()?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("tcsh"));
    Ok(())
}

/// The unit in `contrib/`, with its `ExecStart` pointed at the built binary (verify checks that
/// the command exists), passes `systemd-analyze verify` without a warning.
#[test]
fn the_systemd_unit_verifies() -> Result<()> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/runbook.service");
    let text = std::fs::read_to_string(&unit)?;
    assert!(text.contains("ExecStart=/usr/local/bin/runbook "));
    assert!(
        text.contains("KillMode=process"),
        "the unit would kill running steps on stop"
    );
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("runbook.service");
    std::fs::write(
        &copy,
        text.replace(
            "ExecStart=/usr/local/bin/runbook ",
            &format!("ExecStart={} ", binary().display()),
        ),
    )?;
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .context("running systemd-analyze (Debian package systemd; .ci/run installs it)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    let about_the_unit: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("runbook.service"))
        .collect();
    assert!(about_the_unit.is_empty(), "{said}");
    Ok(())
}

/// `--log-format json`: one JSON object a line, naming every operator action (who, which step)
/// and every change of a run's state that matters to a person (waiting for an approval is not
/// one; needing attention, ending are).
#[test]
fn the_json_log_records_run_life_cycles_and_operator_actions() -> Result<()> {
    let daemon = Daemon::start_with(&["--log-format", "json"], &[])?;
    let file = daemon.write_file(
        "gate.toml",
        r#"
name = "gate-log"
[[steps]]
id = "gate"
action = "approval"
with = { prompt = "go?" }
[[steps]]
id = "broken"
action = "exec"
with = { command = ["false"] }
"#,
    )?;
    let run = daemon.start_run(&file, &[])?;
    daemon.wait_step(&run, "gate", "waiting", Duration::from_secs(30))?;
    let approved = daemon.cli(&["approve", &run, "--comment", "go"])?;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    daemon.wait_state(&run, "needs_attention", Duration::from_secs(30))?;
    let skipped = daemon.cli(&["skip", &run, "broken", "--comment", "known"])?;
    assert!(
        skipped.status.success(),
        "{}",
        String::from_utf8_lossy(&skipped.stderr)
    );
    daemon.wait_state(&run, "succeeded", Duration::from_secs(30))?;

    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect::<Result<_>>()?;
    let of_run = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|line| {
                line["fields"]["message"] == message && line["fields"]["run"] == run.as_str()
            })
            .collect()
    };
    let actions: Vec<(String, String)> = of_run("operator action")
        .iter()
        .map(|line| {
            (
                line["fields"]["action"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                line["fields"]["step"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("approve".to_owned(), "-".to_owned()),
            ("skip".to_owned(), "broken".to_owned())
        ],
        "{log}"
    );
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert!(of_run("operator action")
        .iter()
        .all(|line| line["fields"]["uid"] == uid));
    let states: Vec<(String, String, String)> = of_run("run state")
        .iter()
        .map(|line| {
            let field = |name: &str| line["fields"][name].as_str().unwrap_or_default().to_owned();
            (field("from"), field("to"), field("step"))
        })
        .collect();
    assert_eq!(
        states,
        [
            (
                "running".to_owned(),
                "needs_attention".to_owned(),
                "broken".to_owned()
            ),
            (
                "needs_attention".to_owned(),
                "succeeded".to_owned(),
                "-".to_owned()
            ),
        ],
        "{log}"
    );
    assert_eq!(of_run("run started").len(), 1, "{log}");
    Ok(())
}
