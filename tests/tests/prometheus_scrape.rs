//! A real Prometheus (the Debian package's binary) scrapes `/metrics` on the daemon's TCP
//! listener over TLS with a viewer's token, and what it stored is read back through its HTTP
//! API: the target is up, a run waiting at its gate shows as a pending approval of its runbook,
//! and once approved, the next scrapes say so.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use runbook_tests::{free_port, Daemon};
use serde_json::Value;

const GATED: &str = r#"
name = "gated"
[[steps]]
id = "gate"
action = "approval"
with = { prompt = "go?" }
[[steps]]
id = "hold"
action = "wait"
with = { duration = "1h" }
"#;

/// Prometheus, killed by pid on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// The value of an instant query's first sample, if there is one.
    fn query(&self, expr: &str) -> Result<Option<f64>> {
        let encoded: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let body = get(self.port, &format!("/api/v1/query?query={encoded}"))?;
        let answer: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        ensure!(answer["status"] == "success", "{body}");
        Ok(answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|value| value.parse().ok()))
    }

    fn wait_for(&self, expr: &str, want: f64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            // Until Prometheus listens, its API refuses connections: that is "not yet" too.
            match self.query(expr) {
                Ok(Some(value)) if value == want => return Ok(()),
                Ok(value) => last = format!("{value:?}"),
                Err(error) => last = format!("{error:#}"),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("{expr}: expected {want}, Prometheus has {last}")
    }
}

/// A plain HTTP GET to 127.0.0.1 (Prometheus's own API).
fn get(port: u16, path: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP head")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    // Prometheus answers small queries with a Content-Length body (no chunking).
    Ok(body.to_owned())
}

#[test]
fn prometheus_scrapes_the_listener_with_a_token() -> Result<()> {
    let binary = which("prometheus").context(
        "no `prometheus` on PATH: install the Debian package `prometheus` (.ci/run does)",
    )?;
    let port = free_port()?;
    let daemon = Daemon::start_full_with(
        &["--listen", &format!("127.0.0.1:{port}")],
        &[("gated.toml", GATED)],
    )?;
    daemon.json(&["user", "add", "prometheus", "--role", "viewer"])?;
    let token = daemon.json(&["token", "create", "prometheus", "--label", "scraper"])?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token["secret"].as_str().context("no secret")?)?;

    let prometheus_port = free_port()?;
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: runbook\n    scheme: https\n    tls_config:\n      \
             ca_file: {cert}\n    authorization:\n      type: Bearer\n      credentials_file: {token}\n    \
             static_configs:\n      - targets: ['localhost:{port}']\n",
            cert = daemon.data_dir.join("tls/cert.pem").display(),
            token = token_file.display(),
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let prometheus = Prometheus {
        child,
        port: prometheus_port,
    };
    let failed = |error: anyhow::Error| {
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        error.context(format!(
            "prometheus log (last lines, newest first): {tail:#?}"
        ))
    };

    // Up: it reached the listener, trusted its certificate and was let in by the token.
    prometheus
        .wait_for("up{job=\"runbook\"}", 1.0)
        .map_err(failed)?;
    prometheus
        .wait_for("runbook_approvals_pending", 0.0)
        .map_err(failed)?;
    prometheus
        .wait_for(
            "runbook_unfinished_runs{state=\"waiting\",runbook=\"gated\"}",
            0.0,
        )
        .map_err(failed)?;

    let run = daemon.start_run("gated", &[])?;
    daemon.wait_step(&run, "gate", "waiting", Duration::from_secs(60))?;
    prometheus
        .wait_for("runbook_approvals_pending", 1.0)
        .map_err(failed)?;
    prometheus
        .wait_for(
            "runbook_unfinished_runs{state=\"waiting\",runbook=\"gated\"}",
            1.0,
        )
        .map_err(failed)?;
    let oldest = prometheus.query("runbook_approval_oldest_seconds")?;
    ensure!(oldest.is_some_and(|age| age >= 0.0), "{oldest:?}");

    let approved = daemon.cli(&["approve", &run, "--comment", "go"])?;
    ensure!(approved.status.success());
    prometheus
        .wait_for("runbook_approvals_pending", 0.0)
        .map_err(failed)?;
    // The gate's step ended: one step duration observed (the run's first step).
    let steps = prometheus.query("runbook_step_duration_seconds_count")?;
    ensure!(steps.is_some_and(|count| count >= 1.0), "{steps:?}");
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|path| path.is_file())
}
