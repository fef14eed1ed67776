//! Hostile input on the API socket: oversized, mistyped, malformed, nested and path-traversing
//! requests get a 4xx (never a 5xx for the caller's mistake) with the JSON error shape wherever
//! the request got as far as the application, no file outside the request is read, and the daemon
//! goes on serving with a bystander run untouched. Then a storm of 10,000 requests from 64
//! client threads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use runbook_tests::{http, http_raw, Daemon, HttpResponse};
use serde_json::{json, Value};

/// The daemon refuses request bodies larger than this (`engine::api`).
const MAX_BODY: usize = 1024 * 1024;

const GATE: &str = r#"
name = "gate"
[params.note]
default = "none"
[[steps]]
id = "gate"
action = "approval"
with = { prompt = "note: {{ params.note }}" }
"#;

const ECHO: &str = r#"
name = "echo"
[[steps]]
id = "say"
action = "exec"
with = { command = "echo hello" }
"#;

/// A passwd line: if it shows up in an answer, a file outside the request was read.
const PASSWD_NEEDLE: &str = "root:x:0:0";

/// Sends requests, checks each answer and counts the statuses.
struct Prober<'a> {
    daemon: &'a Daemon,
    statuses: BTreeMap<u16, usize>,
}

impl Prober<'_> {
    /// One raw request; its status must be one of `expect`. A 4xx or 5xx that the application
    /// gave must have the JSON error shape (`hyper_level` marks a request refused before it
    /// reached the application, answered without a body). The daemon must still serve after it.
    fn raw(
        &mut self,
        what: &str,
        request: Vec<u8>,
        expect: &[u16],
        hyper_level: bool,
    ) -> Result<HttpResponse> {
        let response = http_raw(&self.daemon.socket(), request)
            .with_context(|| format!("{what}: no answer; daemon log:\n{}", self.daemon.log()))?;
        self.judge(what, response, expect, hyper_level)
    }

    fn send(
        &mut self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        expect: &[u16],
    ) -> Result<HttpResponse> {
        let response = http(&self.daemon.socket(), method, path, body)
            .with_context(|| format!("{what}: no answer; daemon log:\n{}", self.daemon.log()))?;
        self.judge(what, response, expect, false)
    }

    fn judge(
        &mut self,
        what: &str,
        response: HttpResponse,
        expect: &[u16],
        hyper_level: bool,
    ) -> Result<HttpResponse> {
        *self.statuses.entry(response.status).or_default() += 1;
        println!("  {:>3}  {what}", response.status);
        ensure!(
            response.status < 500,
            "{what}: HTTP {} for the caller's mistake: {}",
            response.status,
            response.text()
        );
        ensure!(
            expect.contains(&response.status),
            "{what}: HTTP {}, expected one of {expect:?}: {}",
            response.status,
            response.text()
        );
        ensure!(
            !String::from_utf8_lossy(&response.body).contains(PASSWD_NEEDLE),
            "{what}: the answer holds /etc/passwd: {}",
            response.text()
        );
        if response.status >= 400 && !hyper_level {
            let body = response
                .json()
                .with_context(|| format!("{what}: the error is not in the JSON shape"))?;
            ensure!(
                body["error"]["code"].is_string() && body["error"]["message"].is_string(),
                "{what}: not the error shape {{\"error\": {{\"code\", \"message\"}}}}: {body}"
            );
        }
        self.still_serving(what)?;
        Ok(response)
    }

    /// A request that is not valid HTTP, sent whole before the write side is closed: the
    /// connection layer may answer 4xx (without the JSON shape: the request never reached the
    /// application) or just close; never 5xx, and the daemon must go on serving.
    fn half_closed(&mut self, what: &str, request: &[u8]) -> Result<()> {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(self.daemon.socket())?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        // A daemon that stops reading early may make the write fail: its answer is what counts.
        let _ = stream.write_all(request);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let head = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
        let status: Option<u16> = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
        match status {
            Some(status) => {
                *self.statuses.entry(status).or_default() += 1;
                println!("  {status:>3}  {what}");
                ensure!(
                    (400..500).contains(&status),
                    "{what}: HTTP {status}: {head}"
                );
            }
            None => {
                ensure!(raw.is_empty(), "{what}: not an HTTP answer: {head:?}");
                println!("  ---  {what} (closed without an answer)");
            }
        }
        self.still_serving(what)
    }

    fn still_serving(&self, after: &str) -> Result<()> {
        let response = self
            .daemon
            .api("GET", "/v1/runs", None)
            .with_context(|| format!("the daemon stopped answering after {after}"))?;
        ensure!(
            response.status == 200,
            "GET /v1/runs after {after}: HTTP {}: {}",
            response.status,
            response.text()
        );
        Ok(())
    }
}

fn json_body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value serializes")
}

/// A request with a `Content-Length` header and the given body bytes.
fn with_length(method: &str, path: &str, length: usize, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn chunked(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

fn source(file: &str, text: &str) -> Value {
    json!({"source": {"file": file, "text": text}})
}

#[test]
fn hostile_requests_get_4xx_and_the_daemon_keeps_serving() -> Result<()> {
    assert!(
        std::fs::read_to_string("/etc/passwd")?.contains(PASSWD_NEEDLE),
        "this test needs an /etc/passwd with root's line, to detect that it was read"
    );
    let daemon = Daemon::start_with_runbooks(&[("gate.toml", GATE), ("echo.toml", ECHO)])?;
    let bystander = daemon.start_run("gate", &[])?;
    daemon.wait_step(&bystander, "gate", "waiting", Duration::from_secs(30))?;
    let before = daemon.events(&bystander)?;
    let echoed = daemon.start_run("echo", &[])?;
    daemon.wait_state(&echoed, "succeeded", Duration::from_secs(30))?;
    let mut probe = Prober {
        daemon: &daemon,
        statuses: BTreeMap::new(),
    };
    let run = |verb: &str| format!("/v1/runs/{bystander}/{verb}");

    println!("oversized bodies:");
    let big = vec![b'a'; 2 * MAX_BODY];
    let mut big_json = br#"{"runbook": "gate", "comment": ""#.to_vec();
    big_json.extend(std::iter::repeat_n(b'x', MAX_BODY + 10));
    big_json.extend_from_slice(br#""}"#);
    probe.send(
        "2 MiB body, POST /v1/runs",
        "POST",
        "/v1/runs",
        Some(&big),
        &[413, 400],
    )?;
    probe.send(
        "1 MiB + 10 B JSON comment, POST /v1/runs",
        "POST",
        "/v1/runs",
        Some(&big_json),
        &[413, 400],
    )?;
    probe.raw(
        "2 MiB chunked body, POST /v1/plan",
        chunked("POST", "/v1/plan", &big),
        &[413, 400],
        false,
    )?;
    probe.send(
        "2 MiB body, POST .../approve",
        "POST",
        &run("approve"),
        Some(&big),
        &[413, 400],
    )?;
    // (A body shorter than its Content-Length is waited for: the daemon has no read timeout.)
    probe.raw(
        "Content-Length of 10 GiB, 1 MiB + 4 KiB sent, POST /v1/plan",
        with_length("POST", "/v1/plan", 10 << 30, &vec![b' '; MAX_BODY + 4096]),
        &[413, 400],
        false,
    )?;

    println!("wrong JSON types, unknown fields, not JSON:");
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("runbook is a number", br#"{"runbook": 5}"#.to_vec()),
        (
            "params is a list",
            br#"{"runbook": "gate", "params": []}"#.to_vec(),
        ),
        (
            "source fields mistyped",
            br#"{"source": {"file": 1, "text": []}}"#.to_vec(),
        ),
        (
            "comment is an object",
            br#"{"runbook": "gate", "comment": {}}"#.to_vec(),
        ),
        (
            "neither runbook nor source",
            br#"{"runbook": null, "source": null}"#.to_vec(),
        ),
        (
            "both runbook and source",
            json_body(&json!({"runbook": "gate", "source": {"file": "x.toml", "text": GATE}})),
        ),
        ("a list", b"[]".to_vec()),
        ("a string", br#""gate""#.to_vec()),
        ("null", b"null".to_vec()),
        (
            "param of the wrong shape",
            br#"{"runbook": "gate", "params": {"note": {"deep": [1, 2]}}}"#.to_vec(),
        ),
        (
            "unknown param",
            br#"{"runbook": "gate", "params": {"nope": "1"}}"#.to_vec(),
        ),
        (
            "unknown field",
            br#"{"runbook": "gate", "bogus": 1}"#.to_vec(),
        ),
        ("not JSON", b"hello, daemon".to_vec()),
        ("invalid UTF-8", b"\xff\xfe\x00{\x80".to_vec()),
        ("truncated JSON", br#"{"runbook": "ga"#.to_vec()),
        (
            "trailing garbage",
            br#"{"runbook": "gate"} and more"#.to_vec(),
        ),
        (
            "a NUL in a string",
            b"{\"runbook\": \"ga\\u0000te\"}".to_vec(),
        ),
        ("a lone surrogate", br#"{"runbook": "\ud800"}"#.to_vec()),
        (
            "a huge number",
            br#"{"runbook": "gate", "params": {"note": 1e999999}}"#.to_vec(),
        ),
    ];
    for (what, body) in &bodies {
        for path in ["/v1/plan", "/v1/runs"] {
            let expect: &[u16] = if *what == "unknown param" || *what == "a NUL in a string" {
                &[400, 404]
            } else {
                &[400]
            };
            probe.send(
                &format!("{what}, POST {path}"),
                "POST",
                path,
                Some(body),
                expect,
            )?;
        }
    }
    probe.send(
        "unknown field, POST .../approve",
        "POST",
        &run("approve"),
        Some(br#"{"comment": "ok", "extra": 1}"#),
        &[400],
    )?;
    probe.send(
        "comment is a number, POST .../pause",
        "POST",
        &run("pause"),
        Some(br#"{"comment": 7}"#),
        &[400],
    )?;
    probe.send(
        "not JSON, POST .../cancel",
        "POST",
        &run("cancel"),
        Some(b"please"),
        &[400],
    )?;
    probe.send(
        "unknown field, POST /v1/schedules",
        "POST",
        "/v1/schedules",
        Some(br#"{"name": "n", "runbook": "gate", "cron": "0 * * * * *", "bogus": true}"#),
        &[400],
    )?;
    probe.send(
        "from is not a date, POST /v1/schedules/x/backfill",
        "POST",
        "/v1/schedules/x/backfill",
        Some(br#"{"from": 1, "to": "yesterday"}"#),
        &[400, 404],
    )?;

    println!("deep nesting:");
    let deep = vec![b'['; 100_000];
    probe.send(
        "100,000 [, POST /v1/plan",
        "POST",
        "/v1/plan",
        Some(&deep),
        &[400],
    )?;
    let mut deep_param = br#"{"runbook": "gate", "params": {"note": "#.to_vec();
    deep_param.extend(std::iter::repeat_n(b'[', 100_000));
    deep_param.extend(std::iter::repeat_n(b']', 100_000));
    deep_param.extend_from_slice(b"}}");
    probe.send(
        "a param nested 100,000 deep, POST /v1/runs",
        "POST",
        "/v1/runs",
        Some(&deep_param),
        &[400],
    )?;
    let deep_objects = "{\"a\":".repeat(50_000);
    probe.send(
        "50,000 nested objects, POST .../approve",
        "POST",
        &run("approve"),
        Some(deep_objects.as_bytes()),
        &[400],
    )?;

    println!("path traversal:");
    for path in [
        "/v1/runbooks/..%2F..%2Fetc%2Fpasswd",
        "/v1/runbooks/%2Fetc%2Fpasswd",
        "/v1/runbooks/../../etc/passwd",
        "/v1/runbooks/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd%00.toml",
        "/v1/runs/..%2F",
        "/v1/runs/../",
        "/v1/runs/..%2F..%2Fetc%2Fpasswd/events",
        "/v1/runs/%00",
        "/v1/schedules/..%2F..%2Fetc%2Fpasswd",
    ] {
        probe.send(&format!("GET {path}"), "GET", path, None, &[404])?;
    }
    probe.send(
        "POST /v1/runs/..%2F/approve",
        "POST",
        "/v1/runs/..%2F/approve",
        Some(b"{}"),
        &[404],
    )?;
    let long_id = "0".repeat(10_000);
    probe.send(
        "a run id of 10,000 characters",
        "GET",
        &format!("/v1/runs/{long_id}"),
        None,
        &[404],
    )?;
    probe.send(
        "a run id that is not UTF-8",
        "GET",
        "/v1/runs/%FF%FE/events",
        None,
        &[400, 404],
    )?;
    for step in [
        "a%2Fb",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "..",
        "gate%2F..%2F..%2F..%2Fdaemon",
    ] {
        probe.send(
            &format!("GET the log of step {step}"),
            "GET",
            &format!("/v1/runs/{bystander}/steps/{step}/log?offset=0"),
            None,
            &[404],
        )?;
        probe.send(
            &format!("GET the undo log of step {step}"),
            "GET",
            &format!("/v1/runs/{bystander}/steps/{step}/log?undo=true"),
            None,
            &[404],
        )?;
        probe.send(
            &format!("retry step {step}"),
            "POST",
            &format!("/v1/runs/{bystander}/steps/{step}/retry"),
            None,
            &[404],
        )?;
    }

    println!("runbook sources that name files:");
    // The text comes in the body; `file` only names it in messages.
    let planned = probe.send(
        "a valid source named ../../etc/passwd, POST /v1/plan",
        "POST",
        "/v1/plan",
        Some(&json_body(&source("../../etc/passwd", GATE))),
        &[200],
    )?;
    ensure!(
        planned.json()?["runbook"] == "gate",
        "the plan is not of the text sent: {}",
        planned.text()
    );
    let refused = probe.send(
        "an empty source named /etc/passwd, POST /v1/runs",
        "POST",
        "/v1/runs",
        Some(&json_body(&source("/etc/passwd", ""))),
        &[400],
    )?;
    let message = refused.json()?["error"]["message"].to_string();
    ensure!(
        message.contains("/etc/passwd"),
        "the message should name the file as given: {message}"
    );
    probe.send(
        "a broken source named ../../etc/shadow, POST /v1/plan",
        "POST",
        "/v1/plan",
        Some(&json_body(&source(
            "../../etc/shadow",
            "name = \"x\"\n[[steps]\n",
        ))),
        &[400],
    )?;
    for (what, text) in [
        ("a step id with /", "name = \"x\"\n[[steps]]\nid = \"a/b\"\naction = \"noop\"\n"),
        ("a step id ../../evil", "name = \"x\"\n[[steps]]\nid = \"../../evil\"\naction = \"noop\"\n"),
        ("a param named ../x", "name = \"x\"\n[params.\"../x\"]\n[[steps]]\nid = \"a\"\naction = \"noop\"\n"),
        ("a for_each child id with /", "name = \"x\"\n[[steps]]\nid = \"l\"\nfor_each = [1]\n  [[steps.steps]]\n  id = \"c/d\"\n  action = \"noop\"\n"),
    ] {
        probe.send(
            &format!("{what}, POST /v1/runs"),
            "POST",
            "/v1/runs",
            Some(&json_body(&source("x.toml", text))),
            &[400],
        )?;
    }
    // A runbook may be named anything (the name is never a path); it must not escape anywhere.
    let odd = probe.send(
        "a runbook named ../../etc/passwd, POST /v1/runs",
        "POST",
        "/v1/runs",
        Some(&json_body(&source(
            "odd.toml",
            "name = \"../../etc/passwd\"\n[[steps]]\nid = \"gate\"\naction = \"approval\"\n",
        ))),
        &[201, 400],
    )?;
    if odd.status == 201 {
        let id = odd.json()?["id"].as_str().unwrap_or_default().to_owned();
        probe.send(
            "cancel the run of the oddly named runbook",
            "POST",
            &format!("/v1/runs/{id}/cancel"),
            None,
            &[200],
        )?;
    }

    println!("a param value of 1 MB:");
    let one_mb = "p".repeat(1_000_000);
    let request = json_body(&json!({"runbook": "gate", "params": {"note": one_mb}}));
    ensure!(request.len() < MAX_BODY);
    probe.send(
        "1 MB param, POST /v1/plan",
        "POST",
        "/v1/plan",
        Some(&request),
        &[200, 400],
    )?;
    let started = probe.send(
        "1 MB param, POST /v1/runs",
        "POST",
        "/v1/runs",
        Some(&request),
        &[201, 400],
    )?;
    if started.status == 201 {
        let id = started.json()?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let shown = probe.send(
            "GET the run with a 1 MB param",
            "GET",
            &format!("/v1/runs/{id}"),
            None,
            &[200],
        )?;
        ensure!(shown.json()?["params"]["note"].as_str().map(str::len) == Some(1_000_000));
        probe.send(
            "GET the events of the run with a 1 MB param",
            "GET",
            &format!("/v1/runs/{id}/events"),
            None,
            &[200],
        )?;
        probe.send(
            "cancel the run with a 1 MB param",
            "POST",
            &format!("/v1/runs/{id}/cancel"),
            Some(br#"{"comment": "hostile input test"}"#),
            &[200],
        )?;
    }

    println!("query strings, methods, routes:");
    probe.send("?all=maybe", "GET", "/v1/runs?all=maybe", None, &[400])?;
    for offset in ["-1", "abc", "99999999999999999999999", "1e3"] {
        probe.send(
            &format!("log offset {offset}"),
            "GET",
            &format!("/v1/runs/{echoed}/steps/say/log?offset={offset}"),
            None,
            &[400],
        )?;
    }
    // Past the end of an existing log, even past what lseek(2) takes: nothing more to read.
    for offset in [
        "7",
        "4611686018427387904",
        "9223372036854775807",
        "18446744073709551615",
    ] {
        let log = probe.send(
            &format!("log offset {offset}"),
            "GET",
            &format!("/v1/runs/{echoed}/steps/say/log?offset={offset}"),
            None,
            &[200],
        )?;
        ensure!(
            log.json()?["data"] == "",
            "log offset {offset}: {}",
            log.text()
        );
    }
    probe.send("DELETE /v1/runs", "DELETE", "/v1/runs", None, &[405])?;
    probe.send("PUT /v1/plan", "PUT", "/v1/plan", Some(b"{}"), &[405])?;
    probe.send("POST .../explode", "POST", &run("explode"), None, &[404])?;
    probe.send("GET /v2/anything", "GET", "/v2/anything", None, &[404])?;

    println!("broken HTTP:");
    probe.half_closed("not HTTP at all", b"GARBAGE\r\n\r\n")?;
    probe.half_closed(
        "a body shorter than its Content-Length, then EOF",
        &with_length("POST", "/v1/plan", 100, b"{\"runbook\""),
    )?;
    probe.half_closed(
        "a chunk size that is not hex",
        b"POST /v1/plan HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )?;
    let mut huge_header =
        b"GET /v1/runs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Big: ".to_vec();
    huge_header.extend(std::iter::repeat_n(b'h', 1 << 20));
    huge_header.extend_from_slice(b"\r\n\r\n");
    probe.half_closed("a 1 MiB header", &huge_header)?;

    let after = daemon.events(&bystander)?;
    ensure!(
        before == after,
        "the bystander run changed:\nbefore: {before:?}\nafter: {after:?}"
    );
    ensure!(daemon.show(&bystander)?["state"] == "waiting");
    println!("statuses: {:?}", probe.statuses);
    Ok(())
}

#[test]
fn ten_thousand_concurrent_requests_are_all_answered_and_change_nothing() -> Result<()> {
    const THREADS: usize = 64;
    const PER_THREAD: usize = 160;
    let daemon = Daemon::start_with_runbooks(&[("gate.toml", GATE)])?;
    let bystander = daemon.start_run("gate", &[])?;
    daemon.wait_step(&bystander, "gate", "waiting", Duration::from_secs(30))?;
    let before = daemon.events(&bystander)?;

    let socket = daemon.socket();
    let statuses: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (socket, statuses, failures, answered) = (
                socket.clone(),
                statuses.clone(),
                failures.clone(),
                answered.clone(),
            );
            std::thread::spawn(move || {
                for index in 0..PER_THREAD {
                    let (what, result) = storm_request(&socket, thread, index);
                    match result {
                        Ok(response) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            *statuses
                                .lock()
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .entry(response.status)
                                .or_default() += 1;
                            let expected = match what {
                                "GET /v1/runs" | "good plan" => 200,
                                _ => 400,
                            };
                            if response.status != expected {
                                failures
                                    .lock()
                                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                                    .push(format!(
                                        "{what}: HTTP {} (expected {expected}): {}",
                                        response.status,
                                        response.text()
                                    ));
                            }
                        }
                        Err(error) => failures
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .push(format!("{what}: {error:#}")),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        if thread.join().is_err() {
            bail!("a client thread panicked");
        }
    }
    let elapsed = started.elapsed();
    let statuses = statuses
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let failures = failures
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    println!(
        "{} requests from {THREADS} threads in {elapsed:.1?}: {} answered, statuses {statuses:?}, {} unexpected",
        THREADS * PER_THREAD,
        answered.load(Ordering::Relaxed),
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "{} unexpected answers or errors, the first ones: {:#?}\ndaemon log:\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        daemon.log()
    );
    ensure!(answered.load(Ordering::Relaxed) == THREADS * PER_THREAD);

    // Still serving, and the run that was waiting before the storm is as it was.
    let runs = daemon.api("GET", "/v1/runs", None)?;
    ensure!(runs.status == 200, "GET /v1/runs: {}", runs.text());
    let after = daemon.events(&bystander)?;
    ensure!(
        before == after,
        "the bystander run changed during the storm"
    );
    ensure!(daemon.show(&bystander)?["state"] == "waiting");
    let approved = daemon.cli(&["approve", &bystander])?;
    ensure!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    daemon.wait_state(&bystander, "succeeded", Duration::from_secs(30))?;
    Ok(())
}

/// The `index`th request of a storm thread: mostly `GET /v1/runs`, every tenth a good plan, every
/// tenth (offset by five) a bad one.
fn storm_request(
    socket: &Path,
    thread: usize,
    index: usize,
) -> (&'static str, Result<HttpResponse>) {
    match (thread + index) % 10 {
        0 => (
            "good plan",
            http(
                socket,
                "POST",
                "/v1/plan",
                Some(br#"{"runbook": "gate", "params": {"note": "storm"}}"#),
            ),
        ),
        5 => (
            "bad plan",
            http(socket, "POST", "/v1/plan", Some(br#"{"runbook": 5}"#)),
        ),
        _ => ("GET /v1/runs", http(socket, "GET", "/v1/runs", None)),
    }
}
