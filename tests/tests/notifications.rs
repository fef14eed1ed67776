//! Notifications against real local receivers: an HTTP server (the webhook, Slack, DingTalk,
//! Feishu and WeCom endpoints) and an SMTP sink, both on 127.0.0.1 in this test.
//!
//! Every kind of sink gets the approval pending and the end of a run, in its own format (the
//! webhook's HMAC checked, the robots' signatures present); a receiver that fails is retried and
//! `show` says why; a `kill -9` between the transition and the delivery loses nothing (the entry
//! was committed with the transition, and goes out after the restart with the same key).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use runbook_engine::notify::hmac_sha256;
use runbook_tests::{listen_on_free_port, Daemon};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

const GATED: &str = r#"
name = "gated"
[[steps]]
id = "gate"
action = "approval"
with = { prompt = "stop broker-a?" }
[[steps]]
id = "after"
action = "noop"
"#;

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

/// An HTTP server that records every request; `/fail…` paths answer 500 until `healed`.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<Received>>>,
    healed: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Result<Receiver> {
        let listener = listen_on_free_port()?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let healed = Arc::new(AtomicBool::new(false));
        let (seen, ok) = (requests.clone(), healed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve_http(stream, &seen, &ok);
            }
        });
        Ok(Receiver {
            port,
            requests,
            healed,
        })
    }

    fn received(&self, path: &str) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.split('?').next() == Some(path))
            .cloned()
            .collect()
    }
}

fn serve_http(stream: TcpStream, seen: &Mutex<Vec<Received>>, healed: &AtomicBool) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let failing = path.starts_with("/fail") && !healed.load(Ordering::SeqCst);
    let answer = if failing {
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 9\r\nConnection: close\r\n\r\nbusy, sry"
            .to_owned()
    } else {
        let body = match path.split('?').next().unwrap_or_default() {
            "/dingtalk" | "/wecom" => r#"{"errcode":0,"errmsg":"ok"}"#,
            "/feishu" => r#"{"code":0,"msg":"success"}"#,
            _ => "ok",
        };
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    seen.lock().unwrap().push(Received {
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    (&stream).write_all(answer.as_bytes())?;
    Ok(())
}

/// An SMTP sink: accepts every message and keeps it.
struct SmtpSink {
    port: u16,
    messages: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    fn start() -> Result<SmtpSink> {
        let listener = listen_on_free_port()?;
        let port = listener.local_addr()?.port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let kept = messages.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve_smtp(stream, &kept);
            }
        });
        Ok(SmtpSink { port, messages })
    }
}

fn serve_smtp(stream: TcpStream, kept: &Mutex<Vec<String>>) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    out.write_all(b"220 sink ready\r\n")?;
    let mut transcript = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        transcript.push_str(&line);
        let command = line.trim_end().to_ascii_uppercase();
        if command.starts_with("EHLO") {
            out.write_all(b"250-sink\r\n250 8BITMIME\r\n")?;
        } else if command.starts_with("DATA") {
            out.write_all(b"354 go on\r\n")?;
            loop {
                let mut data = String::new();
                if reader.read_line(&mut data)? == 0 {
                    return Ok(());
                }
                if data == ".\r\n" {
                    break;
                }
                transcript.push_str(&data);
            }
            kept.lock().unwrap().push(transcript.clone());
            out.write_all(b"250 kept\r\n")?;
        } else if command.starts_with("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"250 ok\r\n")?;
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + LONG;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A daemon whose `--notify` file (in `dir`) holds `sinks`, with the `gated` runbook.
fn daemon_with_sinks(dir: &std::path::Path, sinks: &str) -> Result<Daemon> {
    let notify = dir.join("notify.toml");
    std::fs::write(&notify, sinks)?;
    Daemon::start_full_with(
        &["--notify", &notify.display().to_string()],
        &[("gated.toml", GATED)],
    )
}

fn write_secret(dir: &std::path::Path, name: &str, secret: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, secret)?;
    Ok(path.display().to_string())
}

#[test]
fn every_kind_of_sink_gets_the_approval_and_the_end() -> Result<()> {
    let receiver = Receiver::start()?;
    let smtp = SmtpSink::start()?;
    let dir = tempfile::tempdir()?;
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", receiver.port);
    let config = format!(
        r#"
[[sinks]]
name = "hook"
kind = "webhook"
url = "{hook}"
secret_file = "{hook_secret}"

[[sinks]]
name = "slack"
kind = "slack"
url = "{slack}"
events = ["approval_pending"]

[[sinks]]
name = "dingtalk"
kind = "dingtalk"
url = "{dingtalk}?access_token=abc"
secret_file = "{ding_secret}"
runbooks = "gated"

[[sinks]]
name = "feishu"
kind = "feishu"
url = "{feishu}"
secret_file = "{feishu_secret}"

[[sinks]]
name = "wecom"
kind = "wecom"
url = "{wecom}"
runbooks = "rocketmq.*"

[[sinks]]
name = "mail"
kind = "email"
smtp = "127.0.0.1:{smtp}"
from = "runbook@ops.example"
to = ["oncall@ops.example", "lead@ops.example"]
events = ["approval_pending", "succeeded"]
"#,
        hook = url("/hook"),
        hook_secret = write_secret(dir.path(), "hook", "s3cret-hook")?,
        slack = url("/slack"),
        dingtalk = url("/dingtalk"),
        ding_secret = write_secret(dir.path(), "ding", "SECding")?,
        feishu = url("/feishu"),
        feishu_secret = write_secret(dir.path(), "feishu", "fs-secret")?,
        wecom = url("/wecom"),
        smtp = smtp.port,
    );
    let daemon = daemon_with_sinks(dir.path(), &config)?;

    let run = daemon.start_run("gated", &[])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;
    wait_until("the approval at every sink", || {
        !receiver.received("/hook").is_empty()
            && !receiver.received("/slack").is_empty()
            && !receiver.received("/dingtalk").is_empty()
            && !receiver.received("/feishu").is_empty()
            && !smtp.messages.lock().unwrap().is_empty()
    })?;

    // The webhook: signed over "timestamp.body" with the secret, keyed for idempotency.
    let hook = &receiver.received("/hook")[0];
    let body: Value = serde_json::from_str(&hook.body)?;
    assert_eq!(body["event"], "approval_pending");
    assert_eq!(body["run"], run.as_str());
    assert_eq!(body["step"], "gate");
    ensure!(
        body["message"].as_str().unwrap().contains("stop broker-a?"),
        "{body}"
    );
    assert_eq!(
        hook.headers.get("idempotency-key").map(String::as_str),
        body["id"].as_str()
    );
    let timestamp = hook
        .headers
        .get("x-runbook-timestamp")
        .context("no timestamp")?;
    let expected = format!(
        "sha256={}",
        hex(&hmac_sha256(
            b"s3cret-hook",
            format!("{timestamp}.{}", hook.body).as_bytes()
        ))
    );
    assert_eq!(
        hook.headers.get("x-runbook-signature"),
        Some(&expected),
        "the webhook's signature"
    );

    // The robots, each in its own shape.
    let slack: Value = serde_json::from_str(&receiver.received("/slack")[0].body)?;
    ensure!(slack["text"].as_str().unwrap().contains(&run), "{slack}");
    let ding = &receiver.received("/dingtalk")[0];
    ensure!(
        ding.path.contains("access_token=abc&timestamp=") && ding.path.contains("&sign="),
        "{}",
        ding.path
    );
    let ding_body: Value = serde_json::from_str(&ding.body)?;
    assert_eq!(ding_body["msgtype"], "text");
    let feishu: Value = serde_json::from_str(&receiver.received("/feishu")[0].body)?;
    assert_eq!(feishu["msg_type"], "text");
    ensure!(
        feishu["sign"].is_string() && feishu["timestamp"].is_string(),
        "{feishu}"
    );
    // Filtered out by its runbooks.
    ensure!(receiver.received("/wecom").is_empty());
    let mail = smtp.messages.lock().unwrap()[0].clone();
    ensure!(
        mail.contains("RCPT TO:<oncall@ops.example>")
            && mail.contains("RCPT TO:<lead@ops.example>"),
        "{mail}"
    );
    ensure!(
        mail.contains("Subject: [runbook] run") && mail.contains("approval"),
        "{mail}"
    );

    // Approve: the run succeeds; the webhook and the mail say so, Slack (approvals only) not.
    ensure!(daemon
        .cli(&["approve", &run, "--comment", "go"])?
        .status
        .success());
    daemon.wait_state(&run, "succeeded", LONG)?;
    wait_until("succeeded at the webhook and by mail", || {
        receiver.received("/hook").len() == 2 && smtp.messages.lock().unwrap().len() == 2
    })?;
    let ended: Value = serde_json::from_str(&receiver.received("/hook")[1].body)?;
    assert_eq!(ended["event"], "succeeded");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.received("/slack").len(), 1);

    // `show` lists every notification and its delivery: the approval to 5 sinks (not WeCom),
    // the success to 4 (not Slack, not WeCom).
    wait_until("every delivery recorded", || {
        daemon.show(&run).is_ok_and(|shown| {
            shown["notifications"].as_array().is_some_and(|notes| {
                notes.len() == 9 && notes.iter().all(|n| n["state"] == "delivered")
            })
        })
    })
    .with_context(|| {
        format!(
            "{:#}",
            daemon.show(&run).unwrap_or_default()["notifications"]
        )
    })?;
    let text = daemon.cli(&["show", &run])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(
        text.contains("notifications:") && text.contains("delivered"),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_failing_receiver_is_retried_and_show_says_why() -> Result<()> {
    let receiver = Receiver::start()?;
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_sinks(
        dir.path(),
        &format!(
            "[[sinks]]\nname = \"flaky\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{}/fail\"\n",
            receiver.port
        ),
    )?;
    let run = daemon.start_run("gated", &[])?;
    // The run does not wait for its notifications.
    daemon.wait_step(&run, "gate", "waiting", LONG)?;
    wait_until("a failed attempt recorded", || {
        daemon.show(&run).is_ok_and(|shown| {
            shown["notifications"][0]["state"] == "failing"
                && shown["notifications"][0]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("500") && e.contains("busy, sry"))
        })
    })?;
    receiver.healed.store(true, Ordering::SeqCst);
    wait_until("delivered after the receiver healed", || {
        daemon
            .show(&run)
            .is_ok_and(|shown| shown["notifications"][0]["state"] == "delivered")
    })?;
    let attempts = receiver.received("/fail");
    ensure!(attempts.len() >= 2, "{attempts:?}");
    // Every attempt carried the same message.
    ensure!(attempts.windows(2).all(|pair| pair[0].body == pair[1].body));
    Ok(())
}

#[test]
fn kill_9_between_the_transition_and_the_delivery() -> Result<()> {
    let receiver = Receiver::start()?;
    let dir = tempfile::tempdir()?;
    // The daemon kills itself (SIGKILL) once the notification is committed, before it is sent.
    let mut daemon = daemon_with_sinks(
        dir.path(),
        &format!(
            "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\nsecret_file = \"{}\"\n",
            receiver.port,
            write_secret(dir.path(), "secret", "k")?
        ),
    )?;
    daemon.set_env(&[("RUNBOOK_FAILPOINT", "NotificationBeforeDelivery")]);
    daemon.terminate()?;
    daemon.restart()?;
    // (The daemon may die before it answers: the run's id is read after the restart.)
    let _ = daemon.cli(&["start", "gated"])?;
    wait_until("the daemon killed at the failpoint", || daemon.exited())?;
    assert!(receiver.received("/hook").is_empty(), "nothing was sent");

    daemon.set_env(&[]);
    daemon.restart()?;
    let listed = daemon.json(&["ps", "--all"])?;
    let runs = listed["runs"].as_array().context("no runs")?;
    ensure!(runs.len() == 1, "{listed}");
    let run = runs[0]["id"].as_str().context("no id")?.to_owned();
    wait_until("the notification after the restart", || {
        !receiver.received("/hook").is_empty()
    })?;
    let sent: Value = serde_json::from_str(&receiver.received("/hook")[0].body)?;
    assert_eq!(sent["event"], "approval_pending");
    assert_eq!(sent["run"], run.as_str());
    let shown = daemon.wait_step(&run, "gate", "waiting", LONG)?;
    wait_until("the delivery recorded", || {
        daemon
            .show(&run)
            .is_ok_and(|shown| shown["notifications"][0]["state"] == "delivered")
    })?;
    assert_eq!(
        daemon.show(&run)?["notifications"][0]["id"],
        sent["id"],
        "the same idempotency key"
    );
    assert_eq!(shown["state"], "waiting");
    // Exactly once here: nothing had gone out before the kill.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.received("/hook").len(), 1);
    Ok(())
}

#[test]
fn waiting_approvals_are_reminded_then_escalated() -> Result<()> {
    let receiver = Receiver::start()?;
    let dir = tempfile::tempdir()?;
    let daemon = daemon_with_sinks(
        dir.path(),
        &format!(
            "[[sinks]]\nname = \"team\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{port}/team\"\n\
             events = [\"approval_pending\"]\nremind_every = \"2s\"\nescalate_after = \"3s\"\nescalate_to = \"pager\"\n\
             [[sinks]]\nname = \"pager\"\nkind = \"wecom\"\nurl = \"http://127.0.0.1:{port}/wecom\"\nevents = []\n",
            port = receiver.port
        ),
    )?;
    let run = daemon.start_run("gated", &[])?;
    daemon.wait_step(&run, "gate", "waiting", LONG)?;
    let texts = |path: &str| -> Vec<String> {
        receiver
            .received(path)
            .iter()
            .map(|r| serde_json::from_str::<Value>(&r.body).unwrap_or_default())
            .map(|v| {
                v["text"]
                    .as_str()
                    .or(v["text"]["content"].as_str())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    wait_until("a reminder and an escalation", || {
        texts("/team").iter().any(|t| t.contains("reminder:"))
            && texts("/wecom").iter().any(|t| t.contains("escalation:"))
    })?;
    let team = texts("/team");
    ensure!(
        team[0].contains("waits for an approval of gate"),
        "{team:?}"
    );
    // Approved: no more reminders, and only one escalation ever.
    ensure!(daemon
        .cli(&["approve", &run, "--comment", "ok"])?
        .status
        .success());
    daemon.wait_state(&run, "succeeded", LONG)?;
    // (A reminder made just before the approval may still be on its way.)
    std::thread::sleep(Duration::from_secs(1));
    let reminded = texts("/team").len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        texts("/team").len(),
        reminded,
        "reminded after the approval"
    );
    assert_eq!(texts("/wecom").len(), 1, "{:?}", texts("/wecom"));
    Ok(())
}

#[test]
fn a_missed_schedule_is_told() -> Result<()> {
    let receiver = Receiver::start()?;
    let dir = tempfile::tempdir()?;
    let mut daemon = daemon_with_sinks(
        dir.path(),
        &format!(
            "[[sinks]]\nname = \"team\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{}/team\"\n\
             events = [\"schedule_missed\"]\n",
            receiver.port
        ),
    )?;
    // Every 2 s; what falls due while the daemon is down is skipped (and recorded as missed).
    daemon.json(&[
        "schedule",
        "add",
        "every2",
        "--runbook",
        "gated",
        "--cron",
        "*/2 * * * * *",
        "--catch-up",
        "skip",
        "--overlap",
        "allow",
    ])?;
    std::thread::sleep(Duration::from_secs(3));
    daemon.kill9();
    std::thread::sleep(Duration::from_secs(5));
    daemon.restart()?;
    wait_until("a missed firing told", || {
        receiver
            .received("/team")
            .iter()
            .any(|r| r.body.contains("schedule every2 missed its run of gated"))
    })?;
    // Only schedule_missed was asked for: the runs the schedule started are not told.
    ensure!(receiver
        .received("/team")
        .iter()
        .all(|r| r.body.contains("missed")));
    Ok(())
}

#[test]
fn a_bad_notify_file_stops_the_daemon_with_the_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify.toml");
    let refused = |text: &str| -> Result<String> {
        std::fs::write(&notify, text)?;
        let data = tempfile::tempdir()?;
        let output = std::process::Command::new(runbook_tests::binary())
            .args(["--data-dir", &data.path().display().to_string()])
            .args(["daemon", "--notify", &notify.display().to_string()])
            .output()?;
        ensure!(!output.status.success(), "the daemon started");
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let stderr = refused(
        "[[sinks]]\nname = \"x\"\nkind = \"carrier-pigeon\"\nurl = \"http://127.0.0.1:1/\"\n",
    )?;
    ensure!(
        stderr.contains(&format!("{}:3", notify.display())) && stderr.contains("carrier-pigeon"),
        "{stderr}"
    );
    // An address that would smuggle an SMTP command.
    let stderr = refused(
        "[[sinks]]\nname = \"mail\"\nkind = \"email\"\nsmtp = \"127.0.0.1:25\"\nfrom = \"a@b\"\nto = [\"x@y\\r\\nRCPT TO:<evil@z>\"]\n",
    )?;
    ensure!(stderr.contains("sink \"mail\": to:"), "{stderr}");
    let stderr = refused(
        "[[sinks]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:1/\"\nescalate_after = \"1h\"\nescalate_to = \"nobody\"\n",
    )?;
    ensure!(
        stderr.contains("escalate_to: no sink \"nobody\""),
        "{stderr}"
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
