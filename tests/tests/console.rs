//! The web console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver. Log in with a token on the TLS listener, find the
//! run in the list, open it, approve its gate with a comment through the confirmation, and see
//! the run go on; screenshots at 1440 and 390 px wide are saved under
//! `$CARGO_TARGET_DIR/console-screenshots/`.
//!
//! Also: the console's files carry a policy that allows only their own script, and a value a
//! run holds (a param made of markup) is shown as text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use runbook_tests::webdriver::Browser;
use runbook_tests::{free_port, https, step_of, Daemon};

const LONG: Duration = Duration::from_secs(60);

const GATED: &str = r#"
name = "gated"
[params.broker]
type = "string"
default = "broker-a"
[[steps]]
id = "drain"
action = "exec"
with = { command = ["echo", "draining {{ params.broker }}"] }
[[steps]]
id = "gate"
action = "approval"
with = { prompt = "Stop {{ params.broker }}?" }
[[steps]]
id = "stop"
action = "exec"
with = { command = ["echo", "stopped"] }
undo = { action = "exec", with = { command = ["echo", "started again"] } }
[[steps]]
id = "expire"
action = "wait"
with = { duration = "72h" }
"#;

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console-screenshots")
}

fn installed(path: &str) -> Result<PathBuf> {
    let path = PathBuf::from(path);
    ensure!(
        path.is_file(),
        "{} is missing: install Debian's `chromium` and `chromium-driver` (.ci/run does)",
        path.display()
    );
    Ok(path)
}

#[test]
fn approve_a_gate_from_the_browser() -> Result<()> {
    let chromium = installed("/usr/bin/chromium")?;
    let chromedriver = installed("/usr/bin/chromedriver")?;
    let port = free_port()?;
    let daemon = Daemon::start_full_with(
        &["--listen", &format!("127.0.0.1:{port}")],
        &[("gated.toml", GATED)],
    )?;
    daemon.json(&["user", "add", "alice", "--role", "approver"])?;
    let token = daemon.json(&["token", "create", "alice", "--label", "browser"])?["secret"]
        .as_str()
        .context("no secret")?
        .to_owned();
    // A param made of markup: the page must show it as text.
    let run = daemon.start_run("gated", &[("broker", "<img src=x onerror=alert(1)>b-1")])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;
    let older = daemon.start_run("gated", &[("broker", "broker-b")])?;
    daemon.wait_step(&older, "gate", "waiting", LONG)?;

    let dir = screenshots();
    let browser = Browser::start(&chromedriver, &chromium)?;
    let base = format!("https://localhost:{port}");
    browser.goto(&format!("{base}/"))?;
    browser.type_into("#token", &token)?;
    browser.screenshot(&dir.join("login-1440.png"))?;
    browser.click("#login-submit")?;

    // The list: both runs wait for an approval; filter on the param to find ours.
    browser.wait_for(&format!("tr[data-run='{run}']"), LONG)?;
    browser.wait_for(&format!("tr[data-run='{older}']"), LONG)?;
    browser.screenshot(&dir.join("runs-1440.png"))?;
    let row = browser.text(&format!("tr[data-run='{run}']"))?;
    ensure!(
        row.contains("approval"),
        "the row says what it waits for: {row}"
    );
    browser.goto(&format!("{base}/ui/#/runs?param=broker%3Dbroker-b"))?;
    browser.wait_for(&format!("tr[data-run='{older}']"), LONG)?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        browser
            .find(&format!("tr[data-run='{run}']"), Duration::from_millis(300))
            .is_err(),
        "the param filter keeps only broker-b's run"
    );

    // The run: its timeline, the gate, and the param shown as the text it is.
    browser.goto(&format!("{base}/ui/#/run/{run}"))?;
    browser.wait_for("#approve", LONG)?;
    let head = browser.text(".run-head")?;
    ensure!(
        head.contains("broker = <img src=x onerror=alert(1)>b-1"),
        "{head}"
    );
    ensure!(
        browser
            .find(".run-head img", Duration::from_millis(200))
            .is_err(),
        "a param became markup"
    );
    browser.click("button[title='Show the log']")?;
    browser.screenshot(&dir.join("run-1440.png"))?;

    // Approve with a comment, through the confirmation.
    browser.click("#approve")?;
    browser.wait_for("dialog[open] #confirm-comment", LONG)?;
    let dialog = browser.text("#confirm-body")?;
    ensure!(
        dialog.contains("Stop <img"),
        "the dialog shows the prompt: {dialog}"
    );
    browser.type_into("#confirm-comment", "lag is 0, go")?;
    browser.screenshot(&dir.join("approve-dialog-1440.png"))?;
    browser.click("#confirm-ok")?;

    // The run goes on: the stop step succeeds and the 72 h wait counts down, in the page.
    browser.wait_for("li[data-step='stop'][data-state='succeeded']", LONG)?;
    browser.wait_for(
        "li[data-step='expire'][data-state='waiting'] .countdown",
        LONG,
    )?;
    browser.wait_for("#rollback", LONG)?;
    browser.screenshot(&dir.join("approved-1440.png"))?;
    let shown = daemon.show(&run)?;
    let gate = step_of(&shown, "gate").context("no gate")?;
    assert_eq!(gate["output"]["approved_by_user"], "alice");
    assert_eq!(gate["approval"]["comment"], "lag is 0, go");
    let audit = browser.text("#audit table")?;
    ensure!(
        audit.contains("alice") && audit.contains("lag is 0, go"),
        "{audit}"
    );

    // A phone's width.
    browser.resize(390, 844)?;
    browser.goto(&format!("{base}/ui/#/run/{older}"))?;
    browser.wait_for("#approve", LONG)?;
    browser.screenshot(&dir.join("run-390.png"))?;
    browser.goto(&format!("{base}/ui/#/runs"))?;
    browser.wait_for(&format!("tr[data-run='{older}']"), LONG)?;
    browser.screenshot(&dir.join("runs-390.png"))?;
    Ok(())
}

#[test]
fn the_console_allows_only_its_own_script() -> Result<()> {
    let port = free_port()?;
    let daemon = Daemon::start_with(&["--listen", &format!("127.0.0.1:{port}")], &[])?;
    let pin = daemon.tls_fingerprint()?;
    // No token needed for the page itself: it holds no data.
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let response = https(port, &pin, "GET", path, None, None)?;
        ensure!(response.status == 200, "{path}: {}", response.status);
        ensure!(
            response
                .header("content-type")
                .is_some_and(|value| value.starts_with(kind)),
            "{path}"
        );
        let policy = response
            .header("content-security-policy")
            .context("no policy")?;
        ensure!(
            policy.contains("script-src 'self'") && !policy.contains("unsafe"),
            "{policy}"
        );
    }
    let root = https(port, &pin, "GET", "/", None, None)?;
    assert_eq!(root.status, 302);
    assert_eq!(root.header("location"), Some("/ui/"));
    // The data is not public.
    assert_eq!(
        https(port, &pin, "GET", "/v1/runs", None, None)?.status,
        401
    );
    // The script puts API values into the page as text only.
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/src/api/console/app.js"),
    )?;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        ensure!(!script.contains(sink), "app.js uses {sink}");
    }
    Ok(())
}
