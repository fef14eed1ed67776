//! The TCP listener: TLS, users, tokens and roles.
//!
//! Every verb of the API against every role (no token, viewer, operator, approver, admin): 401
//! without a token, 403 below the verb's role, and through to the handler at or above it. The
//! two-person rule compares users; an operator cannot pass a gate by skipping it; a runbook
//! scope holds; revoked tokens and removed users stop working; the token never reaches the log;
//! failed logins are limited; the CLI pins the certificate and talks to the listener.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use runbook_tests::{binary, free_port, https, step_of, Daemon, HttpResponse};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

const GATED: &str = r#"
name = "gated"
[[steps]]
id = "gate"
action = "approval"
with = { prompt = "go?", distinct_approver = true }
[[steps]]
id = "hold"
action = "wait"
with = { duration = "1h" }
"#;

/// A gate that times out: the run then waits for an operator to retry or skip it.
const TIMED_OUT: &str = r#"
name = "gated.timeout"
[[steps]]
id = "gate"
action = "approval"
timeout = "1s"
with = { prompt = "go?" }
[[steps]]
id = "hold"
action = "wait"
with = { duration = "1h" }
"#;

const OTHER: &str = r#"
name = "other.job"
[[steps]]
id = "hold"
action = "wait"
with = { duration = "1h" }
"#;

const ROLES: [&str; 4] = ["viewer", "operator", "approver", "admin"];

struct Listener {
    daemon: Daemon,
    port: u16,
    fingerprint: String,
}

impl Listener {
    fn start() -> Result<Listener> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let daemon = Daemon::start_full_with(
            &["--listen", &addr],
            &[
                ("gated.toml", GATED),
                ("timeout.toml", TIMED_OUT),
                ("other.toml", OTHER),
            ],
        )?;
        let fingerprint = daemon.tls_fingerprint()?;
        Ok(Listener {
            daemon,
            port,
            fingerprint,
        })
    }

    /// Adds a user on the local socket (the daemon's own user is an admin there) and returns
    /// a new token of theirs.
    fn user(&self, name: &str, role: &str, runbooks: Option<&str>) -> Result<String> {
        let mut args = vec!["user", "add", name, "--role", role];
        if let Some(scope) = runbooks {
            args.extend(["--runbooks", scope]);
        }
        self.daemon.json(&args)?;
        let created = self.daemon.json(&["token", "create", name])?;
        Ok(created["secret"].as_str().context("no secret")?.to_owned())
    }

    fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Value,
    ) -> Result<HttpResponse> {
        let body = body.to_string();
        https(
            self.port,
            &self.fingerprint,
            method,
            path,
            token,
            Some(body.as_bytes()),
        )
    }

    fn start_gated(&self) -> Result<String> {
        let run = self.daemon.start_run("gated", &[])?;
        self.daemon.wait_step(&run, "gate", "waiting", LONG)?;
        Ok(run)
    }

    /// The `runbook` CLI against the listener, pinned to its certificate.
    fn remote_cli(&self, token: Option<&str>, args: &[&str]) -> Result<std::process::Output> {
        let fingerprint = self.fingerprint()?;
        let mut command = std::process::Command::new(binary());
        command
            .args(["--server", &format!("https://localhost:{}", self.port)])
            .args(["--server-fingerprint", &fingerprint])
            .args(args)
            .env_remove("RUNBOOK_TOKEN")
            .env("RUNBOOK_DATA_DIR", "/nonexistent");
        if let Some(token) = token {
            command.env("RUNBOOK_TOKEN", token);
        }
        Ok(command.output()?)
    }

    fn fingerprint(&self) -> Result<String> {
        let version = self.daemon.json(&["version"])?;
        Ok(version["daemon"]["listener"]["fingerprint"]
            .as_str()
            .context("no fingerprint in `runbook version`")?
            .to_owned())
    }
}

fn whoami(listener: &Listener, token: &str) -> Result<HttpResponse> {
    listener.call(Some(token), "GET", "/v1/whoami", Value::Null)
}

/// What a request must get for a role: through to its handler, or refused at the door for the
/// role (`least`, named in the message).
fn check(response: &HttpResponse, allowed: bool, least: &str, what: &str) -> Result<()> {
    if allowed {
        ensure!(
            ![401, 403, 429].contains(&response.status),
            "{what}: refused ({}): {}",
            response.status,
            response.text()
        );
    } else {
        ensure!(
            response.status == 403,
            "{what}: expected 403, got {}: {}",
            response.status,
            response.text()
        );
        let error = &response.json()?["error"];
        ensure!(error["code"] == "forbidden", "{what}: {}", response.text());
        ensure!(
            error["message"]
                .as_str()
                .is_some_and(|message| message.ends_with(&format!("needs the {least} role"))),
            "{what}: {}",
            response.text()
        );
    }
    Ok(())
}

#[test]
fn every_verb_against_every_role() -> Result<()> {
    let listener = Listener::start()?;
    let mut tokens = Vec::new();
    for role in ROLES {
        tokens.push((role, listener.user(&format!("{role}-user"), role, None)?));
    }
    let rank = |role: &str| ROLES.iter().position(|r| *r == role).unwrap();

    // (method, path, body, the least role) for every route; `{run}` is a fresh run at its
    // gate for each call, `{run_for}` one per role.
    let verbs: Vec<(&str, String, Value, &str)> = vec![
        ("GET", "/v1/runs".into(), Value::Null, "viewer"),
        ("GET", "/v1/runs/{run}".into(), Value::Null, "viewer"),
        ("GET", "/v1/runs/{run}/events".into(), Value::Null, "viewer"),
        (
            "GET",
            "/v1/runs/{run}/steps/gate/log".into(),
            Value::Null,
            "viewer",
        ),
        ("GET", "/v1/runbooks".into(), Value::Null, "viewer"),
        ("GET", "/v1/runbooks/gated".into(), Value::Null, "viewer"),
        ("GET", "/v1/schedules".into(), Value::Null, "viewer"),
        ("GET", "/v1/store/verify".into(), Value::Null, "viewer"),
        ("GET", "/v1/whoami".into(), Value::Null, "viewer"),
        ("GET", "/v1/version".into(), Value::Null, "viewer"),
        ("GET", "/metrics".into(), Value::Null, "viewer"),
        (
            "POST",
            "/v1/plan".into(),
            json!({"runbook": "gated"}),
            "operator",
        ),
        (
            "POST",
            "/v1/runs".into(),
            json!({"runbook": "other.job"}),
            "operator",
        ),
        ("POST", "/v1/runs/{run}/pause".into(), json!({}), "operator"),
        (
            "POST",
            "/v1/runs/{run}/cancel".into(),
            json!({}),
            "operator",
        ),
        (
            "POST",
            "/v1/runs/{run}/rollback".into(),
            json!({}),
            "operator",
        ),
        (
            "POST",
            "/v1/runs/{run}/resume".into(),
            json!({}),
            "operator",
        ),
        (
            "POST",
            "/v1/runs/{run}/steps/hold/retry".into(),
            json!({}),
            "operator",
        ),
        (
            "POST",
            "/v1/runs/{run}/steps/hold/skip".into(),
            json!({"comment": "x"}),
            "operator",
        ),
        (
            "POST",
            "/v1/runs/{run}/approve".into(),
            json!({"comment": "ok"}),
            "approver",
        ),
        // Encoded as the router decodes it: still an approval.
        (
            "POST",
            "/v1/runs/{run}/%61pprove".into(),
            json!({"comment": "ok"}),
            "approver",
        ),
        (
            "POST",
            "/v1/schedules".into(),
            json!({"name": "s-{role}", "runbook": "other.job", "cron": "0 3 * * *"}),
            "admin",
        ),
        (
            "POST",
            "/v1/schedules/nightly/pause".into(),
            json!({}),
            "admin",
        ),
        (
            "DELETE",
            "/v1/schedules/nightly".into(),
            Value::Null,
            "admin",
        ),
        ("POST", "/v1/store/gc".into(), json!({}), "admin"),
        ("GET", "/v1/users".into(), Value::Null, "admin"),
        ("GET", "/v1/tokens".into(), Value::Null, "admin"),
        (
            "POST",
            "/v1/users".into(),
            json!({"name": "new-{role}", "role": "viewer"}),
            "admin",
        ),
        (
            "POST",
            "/v1/users/viewer-user/tokens".into(),
            json!({}),
            "admin",
        ),
        ("DELETE", "/v1/users/nobody".into(), Value::Null, "admin"),
        (
            "POST",
            "/v1/tokens/0000000000000000/revoke".into(),
            json!({}),
            "admin",
        ),
    ];

    for (method, path, body, least) in &verbs {
        // No token: 401 with the error shape and a Bearer challenge.
        let run = if path.contains("{run}") {
            listener.start_gated()?
        } else {
            String::new()
        };
        let concrete = path.replace("{run}", &run);
        let response = listener.call(None, method, &concrete, body.clone())?;
        ensure!(
            response.status == 401,
            "{method} {concrete} without a token: {} {}",
            response.status,
            response.text()
        );
        ensure!(response.json()?["error"]["code"] == "unauthenticated");
        ensure!(response.header("www-authenticate") == Some("Bearer"));

        for (role, token) in &tokens {
            let run = if path.contains("{run}") {
                listener.start_gated()?
            } else {
                String::new()
            };
            let concrete = path.replace("{run}", &run);
            let body: Value = serde_json::from_str(&body.to_string().replace("{role}", role))?;
            let response = listener.call(Some(token), method, &concrete, body)?;
            check(
                &response,
                rank(role) >= rank(least),
                least,
                &format!("{method} {concrete} as {role}"),
            )?;
        }
    }

    // Health probes need nothing.
    for path in ["/healthz", "/readyz"] {
        ensure!(
            listener.call(None, "GET", path, Value::Null)?.status == 200,
            "{path}"
        );
    }
    Ok(())
}

#[test]
fn gates_compare_users_and_need_the_approver_role() -> Result<()> {
    let listener = Listener::start()?;
    let alice = listener.user("alice", "approver", None)?;
    let bob = listener.user("bob", "approver", None)?;
    let olga = listener.user("olga", "operator", None)?;

    // Alice starts a run over TCP: it is journaled as hers.
    let started = listener.call(
        Some(&alice),
        "POST",
        "/v1/runs",
        json!({"runbook": "gated"}),
    )?;
    ensure!(started.status == 201, "{}", started.text());
    let run = started.json()?["id"]
        .as_str()
        .context("no run id")?
        .to_owned();
    let shown = listener.daemon.wait_step(&run, "gate", "waiting", LONG)?;
    assert_eq!(shown["started_by"]["user"], "alice");

    // The two-person rule compares users, not the daemon's uid that every user shares.
    let own = listener.call(
        Some(&alice),
        "POST",
        &format!("/v1/runs/{run}/approve"),
        json!({}),
    )?;
    ensure!(
        own.status == 409,
        "alice approved her own run: {}",
        own.text()
    );
    ensure!(own.text().contains("user alice"), "{}", own.text());

    // An operator passes no gate: not by approve (403 at the door), not by a skip or retry of
    // a gate that timed out (403 from the run's rules), whatever the comment.
    let timed_out = listener.daemon.start_run("gated.timeout", &[])?;
    listener
        .daemon
        .wait_state(&timed_out, "needs_attention", LONG)?;
    for (verb, path) in [
        ("approve", format!("/v1/runs/{run}/approve")),
        ("skip", format!("/v1/runs/{timed_out}/steps/gate/skip")),
        ("retry", format!("/v1/runs/{timed_out}/steps/gate/retry")),
    ] {
        let response = listener.call(Some(&olga), "POST", &path, json!({"comment": "ship it"}))?;
        ensure!(
            response.status == 403,
            "operator's {verb} of the gate: {} {}",
            response.status,
            response.text()
        );
    }
    let shown = listener.daemon.show(&run)?;
    assert_eq!(step_of(&shown, "gate").unwrap()["state"], "waiting");
    assert_eq!(
        listener.daemon.show(&timed_out)?["state"],
        "needs_attention"
    );
    // An approver may skip it (saying why).
    let skipped = listener.call(
        Some(&bob),
        "POST",
        &format!("/v1/runs/{timed_out}/steps/gate/skip"),
        json!({"comment": "approved by phone"}),
    )?;
    ensure!(skipped.status == 200, "{}", skipped.text());

    // Bob may.
    let approved = listener.call(
        Some(&bob),
        "POST",
        &format!("/v1/runs/{run}/approve"),
        json!({"comment": "lag is 0"}),
    )?;
    ensure!(approved.status == 200, "{}", approved.text());
    let shown = listener.daemon.wait_step(&run, "hold", "waiting", LONG)?;
    let gate = step_of(&shown, "gate").unwrap();
    assert_eq!(gate["output"]["approved_by_user"], "bob", "{gate}");
    let audit = shown["audit"].as_array().context("no audit")?;
    ensure!(
        audit
            .iter()
            .any(|entry| entry["action"] == "approve" && entry["actor"]["user"] == "bob"),
        "the audit names bob: {audit:?}"
    );
    // `show` says who.
    let text = listener.daemon.cli(&["show", &run])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(text.contains("by alice"), "{text}");
    Ok(())
}

#[test]
fn runbook_scopes_revocation_and_secrets() -> Result<()> {
    let mut listener = Listener::start()?;
    let scoped = listener.user("ops", "approver", Some("other.*"))?;
    let gated_run = listener.start_gated()?;

    // The scope: other.job yes, gated no (start, plan, and acting on a run), reading yes.
    let start = |runbook: &str| {
        listener.call(
            Some(&scoped),
            "POST",
            "/v1/runs",
            json!({"runbook": runbook}),
        )
    };
    ensure!(start("other.job")?.status == 201);
    let refused = start("gated")?;
    ensure!(refused.status == 403, "{}", refused.text());
    ensure!(refused.text().contains("other.*"), "{}", refused.text());
    let plan = listener.call(
        Some(&scoped),
        "POST",
        "/v1/plan",
        json!({"runbook": "gated"}),
    )?;
    ensure!(plan.status == 403, "{}", plan.text());
    let approve = listener.call(
        Some(&scoped),
        "POST",
        &format!("/v1/runs/{gated_run}/approve"),
        json!({}),
    )?;
    ensure!(approve.status == 403, "{}", approve.text());
    let read = listener.call(
        Some(&scoped),
        "GET",
        &format!("/v1/runs/{gated_run}"),
        Value::Null,
    )?;
    ensure!(read.status == 200, "{}", read.text());

    // Revoked: 401 at once. A removed user's other tokens too.
    let second = listener
        .daemon
        .json(&["token", "create", "ops", "--label", "ci"])?;
    let second_secret = second["secret"].as_str().unwrap().to_owned();
    let id = scoped[4..20].to_owned();
    listener.daemon.json(&["token", "revoke", &id])?;
    ensure!(whoami(&listener, &scoped)?.status == 401);
    ensure!(whoami(&listener, &second_secret)?.status == 200);
    assert_eq!(whoami(&listener, &second_secret)?.json()?["user"], "ops");
    listener.daemon.json(&["user", "rm", "ops"])?;
    ensure!(whoami(&listener, &second_secret)?.status == 401);
    let tokens = listener.daemon.json(&["token", "ls"])?;
    ensure!(
        tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|token| !token["revoked_at"].is_null() && token.get("hash").is_none()),
        "every token revoked, no hash listed: {tokens}"
    );

    // Users and tokens are in the store: a restart keeps them (and the certificate).
    let fingerprint = listener.fingerprint()?;
    let carol = listener.user("carol", "viewer", None)?;
    listener.daemon.terminate()?;
    listener.daemon.restart()?;
    ensure!(whoami(&listener, &carol)?.status == 200);
    ensure!(whoami(&listener, &second_secret)?.status == 401);
    assert_eq!(listener.fingerprint()?, fingerprint);

    // No secret in the log, though every one of them was used and refused.
    let log = listener.daemon.log();
    for secret in [&scoped, &second_secret, &carol] {
        let hex = &secret[21..];
        ensure!(
            !log.contains(hex),
            "a token's secret is in the daemon's log"
        );
    }
    ensure!(log.contains("failed login"), "failed logins are logged");
    Ok(())
}

#[test]
fn failed_logins_are_limited() -> Result<()> {
    let listener = Listener::start()?;
    let good = listener.user("dave", "viewer", None)?;
    let wrong = format!("{}{}", &good[..21], "0".repeat(64));
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            listener
                .call(Some(&wrong), "GET", "/v1/runs", Value::Null)?
                .status,
        );
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(&statuses[10..], &[429, 429]);
    let response = listener.call(Some(&wrong), "GET", "/v1/runs", Value::Null)?;
    ensure!(response.header("retry-after").is_some());
    // A good token from the same address still gets in: someone sharing the address (a NAT, a
    // bastion host) cannot lock the team out with bad tokens.
    let response = listener.call(Some(&good), "GET", "/v1/runs", Value::Null)?;
    ensure!(response.status == 200, "{}", response.text());
    // No token at all is held off too.
    let response = listener.call(None, "GET", "/v1/runs", Value::Null)?;
    ensure!(response.status == 429, "{}", response.text());
    Ok(())
}

#[test]
fn the_cli_pins_the_certificate_and_talks_to_the_listener() -> Result<()> {
    let listener = Listener::start()?;
    let erin = listener.user("erin", "approver", None)?;
    let run = listener.start_gated()?;

    let approved = listener.remote_cli(Some(&erin), &["approve", &run, "--comment", "go"])?;
    ensure!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    listener.daemon.wait_step(&run, "hold", "waiting", LONG)?;

    // No token: exit 9 (not allowed), with the daemon's message.
    let denied = listener.remote_cli(None, &["ps"])?;
    assert_eq!(denied.status.code(), Some(9));
    ensure!(String::from_utf8_lossy(&denied.stderr).contains("Bearer"));

    // Another certificate: the CLI refuses to talk (exit 6), naming both fingerprints.
    let fingerprint = listener.fingerprint()?;
    assert_eq!(
        fingerprint, listener.fingerprint,
        "`runbook version` shows the certificate's"
    );
    let mut wrong = fingerprint.clone();
    wrong.replace_range(
        0..1,
        if fingerprint.starts_with('0') {
            "1"
        } else {
            "0"
        },
    );
    let output = std::process::Command::new(binary())
        .args(["--server", &format!("https://127.0.0.1:{}", listener.port)])
        .args(["--server-fingerprint", &wrong, "ps"])
        .env("RUNBOOK_TOKEN", &erin)
        .output()?;
    assert_eq!(output.status.code(), Some(6));
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains(&fingerprint) && stderr.contains(&wrong),
        "{stderr}"
    );
    // Neither a pin nor a CA: refused before connecting.
    let output = std::process::Command::new(binary())
        .args([
            "--server",
            &format!("https://127.0.0.1:{}", listener.port),
            "ps",
        ])
        .env_remove("RUNBOOK_SERVER_FINGERPRINT")
        .env_remove("RUNBOOK_CA_CERT")
        .output()?;
    assert_eq!(output.status.code(), Some(4));

    // The same certificate and key given by path to another daemon: the same fingerprint.
    let tls = listener.daemon.data_dir.join("tls");
    let port = free_port()?;
    let other = Daemon::start_with(
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            &tls.join("cert.pem").display().to_string(),
            "--tls-key",
            &tls.join("key.pem").display().to_string(),
        ],
        &[],
    )?;
    let version = other.json(&["version"])?;
    assert_eq!(version["daemon"]["listener"]["fingerprint"], fingerprint);
    Ok(())
}
