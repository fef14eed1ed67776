//! The store on PostgreSQL with more than one daemon: a real server (`initdb` in a temporary
//! directory, on a loopback port), daemons on separate data dirs sharing one database, one active
//! at a time by a lease. The durability, operator, schedule and kill-loop suites run against this
//! store too (`.ci/run`, `RUNBOOK_TEST_STORE=postgres`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use runbook_tests::postgres::PgServer;
use runbook_tests::{lines, step_of, Daemon};

const LONG: Duration = Duration::from_secs(60);
const TTL_SECS: u64 = 3;

/// The connection string in a file of its own (never on a command line).
struct Shared {
    dir: tempfile::TempDir,
    url_file: String,
}

impl Shared {
    fn new(url: &str, runbooks: &[(&str, &str)]) -> Result<Shared> {
        let dir = tempfile::Builder::new().prefix("runbook-ha-").tempdir()?;
        let url_file = dir.path().join("postgres-url");
        std::fs::write(&url_file, url)?;
        std::fs::create_dir_all(dir.path().join("runbooks"))?;
        for (name, text) in runbooks {
            std::fs::write(dir.path().join("runbooks").join(name), text)?;
        }
        Ok(Shared {
            url_file: url_file.display().to_string(),
            dir,
        })
    }

    fn marker(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A daemon on a data dir of its own, pointed at the shared database; not started.
    fn daemon(&self) -> Result<Daemon> {
        self.daemon_with(&[])
    }

    fn daemon_with(&self, more: &[&str]) -> Result<Daemon> {
        let runbooks = self.dir.path().join("runbooks").display().to_string();
        let ttl = format!("{TTL_SECS}s");
        let mut args = vec![
            "--store",
            "postgres",
            "--postgres-url-file",
            &self.url_file,
            "--lease-ttl",
            &ttl,
            "--runbooks-dir",
            &runbooks,
        ];
        args.extend_from_slice(more);
        Daemon::prepare(&args, &[], &[])
    }
}

fn lease(pg: &PgServer, database: &str) -> Result<(String, i64)> {
    let row = pg
        .client(database)?
        .query_one("SELECT holder, epoch FROM runbook_lease WHERE id = 1", &[])?;
    Ok((row.get(0), row.get(1)))
}

fn database_of(url: &str) -> &str {
    url.split_whitespace()
        .find_map(|word| word.strip_prefix("dbname="))
        .unwrap_or("postgres")
}

fn run_started(daemon: &Daemon, runbook: &str, n: &str) -> Result<String> {
    daemon.start_run(runbook, &[("n", n)])
}

#[test]
fn a_standby_takes_over_when_the_active_daemon_dies() -> Result<()> {
    let mut pg = PgServer::start()?;
    let url = pg.create_database()?;
    let runbooks = [
        (
            "ha-wait.toml",
            r#"
name = "ha-wait"
[params.n]
required = true
[[steps]]
id = "first"
action = "exec"
with = { command = "echo first >> {{ params.n }}" }
[[steps]]
id = "pause"
action = "wait"
with = { duration = "6s" }
[[steps]]
id = "last"
action = "exec"
with = { command = "echo last >> {{ params.n }}" }
"#,
        ),
        (
            "ha-exec.toml",
            r#"
name = "ha-exec"
[params.n]
required = true
[[steps]]
id = "first"
action = "exec"
with = { command = "echo first >> {{ params.n }}" }
[[steps]]
id = "long"
action = "exec"
idempotent = false
with = { command = "echo long >> {{ params.n }}; sleep 8" }
[[steps]]
id = "gate"
action = "approval"
with = { prompt = "go on?" }
[[steps]]
id = "last"
action = "exec"
with = { command = "echo last >> {{ params.n }}" }
"#,
        ),
        (
            "ha-idem.toml",
            r#"
name = "ha-idem"
[params.n]
required = true
[[steps]]
id = "long"
action = "exec"
idempotent = true
with = { command = "echo long >> {{ params.n }}; sleep 8" }
[[steps]]
id = "last"
action = "exec"
with = { command = "echo last >> {{ params.n }}" }
"#,
        ),
    ];
    let shared = Shared::new(&url, &runbooks)?;
    let mut active = shared.daemon()?;
    active.restart()?;
    let mut standby = shared.daemon()?;
    standby.spawn()?;
    standby.wait_until(Duration::from_secs(20), || {
        Ok(standby
            .log()
            .contains("standby: waiting for the store's lease"))
    })?;
    ensure!(
        standby.cli(&["list"])?.status.code() != Some(0),
        "a standby answers before it holds the store"
    );
    let (holder, epoch) = lease(&pg, database_of(&url))?;
    ensure!(
        holder.ends_with(&*active.data_dir.display().to_string()),
        "{holder}"
    );

    let (wait_marker, exec_marker, idem_marker) = (
        shared.marker("wait"),
        shared.marker("exec"),
        shared.marker("idem"),
    );
    let waiting = run_started(&active, "ha-wait", &wait_marker)?;
    let execing = run_started(&active, "ha-exec", &exec_marker)?;
    let idem = run_started(&active, "ha-idem", &idem_marker)?;
    active.wait_step(&waiting, "pause", "waiting", LONG)?;
    active.wait_step(&execing, "long", "running", LONG)?;
    active.wait_step(&idem, "long", "running", LONG)?;
    active.wait_until(LONG, || {
        Ok(lines(&exec_marker).len() == 2 && lines(&idem_marker).len() == 1)
    })?;

    active.kill9();
    let down = Instant::now();
    standby.wait_ready_for(Duration::from_secs(TTL_SECS + 20))?;
    let takeover = down.elapsed();
    println!(
        "takeover: the standby answered {:.1} s after the active daemon was killed (lease {TTL_SECS} s)",
        takeover.as_secs_f64()
    );
    ensure!(
        takeover <= Duration::from_secs(TTL_SECS + 5),
        "the standby took {takeover:?} to take over a {TTL_SECS} s lease"
    );
    let (holder, new_epoch) = lease(&pg, database_of(&url))?;
    ensure!(
        holder.ends_with(&*standby.data_dir.display().to_string()) && new_epoch > epoch,
        "{holder} epoch {new_epoch}"
    );
    let version = standby.cli(&["version"])?;
    let version = String::from_utf8_lossy(&version.stdout);
    ensure!(
        version.contains(&format!(
            "store   postgres: active daemon {holder}, lease epoch {new_epoch}"
        )),
        "runbook version does not show the active daemon:\n{version}"
    );

    // The durable wait goes on where it was; the idempotent step cut on the old host runs again
    // by itself; the non-idempotent one waits for the operator, naming the daemon it ran on.
    standby.wait_state(&waiting, "succeeded", LONG)?;
    ensure!(
        lines(&wait_marker) == ["first", "last"],
        "{:?}",
        lines(&wait_marker)
    );
    standby.wait_state(&idem, "succeeded", LONG)?;
    ensure!(
        lines(&idem_marker) == ["long", "long", "last"],
        "{:?}",
        lines(&idem_marker)
    );
    let shown = standby.wait_state(&execing, "needs_attention", LONG)?;
    ensure!(shown["reason"] == "interrupted", "{shown:#}");
    let long = step_of(&shown, "long").context("long")?;
    ensure!(long["state"] == "interrupted", "{long:#}");
    let log = standby.step_log(&execing, "long");
    ensure!(
        log.contains("started by the daemon at")
            && log.contains(&*active.data_dir.display().to_string()),
        "the step log does not say where the command ran:\n{log}"
    );
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        lines(&exec_marker) == ["first", "long"],
        "re-ran by itself: {:?}",
        lines(&exec_marker)
    );
    let retried = standby.cli(&[
        "retry",
        &execing,
        "long",
        "--comment",
        "checked on the old host",
    ])?;
    ensure!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    standby.wait_step(&execing, "gate", "waiting", LONG)?;
    let approved = standby.cli(&["approve", &execing, "--comment", "go"])?;
    ensure!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let shown = standby.wait_state(&execing, "succeeded", LONG)?;
    ensure!(
        lines(&exec_marker) == ["first", "long", "long", "last"],
        "{:?}",
        lines(&exec_marker)
    );
    // Every step that succeeded ran once, on one daemon or the other.
    for run in [&waiting, &execing, &idem] {
        let shown = standby.show(run)?;
        for step in shown["steps"].as_array().into_iter().flatten() {
            if step["state"] == "succeeded" && step["id"] != "long" {
                ensure!(step["attempts"] == 1, "{run}: {step:#}");
            }
        }
    }
    drop(shown);
    pg.stop()?;
    Ok(())
}

#[test]
fn a_paused_daemon_that_lost_its_lease_commits_nothing() -> Result<()> {
    let mut pg = PgServer::start()?;
    let url = pg.create_database()?;
    let shared = Shared::new(
        &url,
        &[(
            "fence.toml",
            r#"
name = "fence"
[params.n]
required = true
[[steps]]
id = "a"
action = "exec"
with = { command = "echo a >> {{ params.n }}" }
[[steps]]
id = "pause"
action = "wait"
with = { duration = "2s" }
[[steps]]
id = "b"
action = "exec"
with = { command = "echo b >> {{ params.n }}" }
"#,
        )],
    )?;
    let marker = shared.marker("fence");
    let mut old = shared.daemon()?;
    old.restart()?;
    let mut new = shared.daemon()?;
    new.spawn()?;
    let run = run_started(&old, "fence", &marker)?;
    old.wait_step(&run, "pause", "waiting", LONG)?;

    // Frozen past its lease: its wait is due while it cannot act.
    old.signal(libc::SIGSTOP)?;
    new.wait_ready_for(Duration::from_secs(TTL_SECS + 20))?;
    new.wait_state(&run, "succeeded", LONG)?;
    ensure!(lines(&marker) == ["a", "b"], "{:?}", lines(&marker));
    let events_before = new.events(&run)?;
    let lease_before = lease(&pg, database_of(&url))?;

    // Resumed: it finds the lease gone at its next renewal or commit, steps down, commits
    // nothing and runs nothing.
    old.signal(libc::SIGCONT)?;
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS * 4 + 10);
    while !old.exited() {
        ensure!(
            Instant::now() < deadline,
            "the old daemon did not step down:\n{}",
            old.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        old.log().contains("steps down"),
        "no step-down line in the old daemon's log:\n{}",
        old.log()
    );
    ensure!(
        lines(&marker) == ["a", "b"],
        "the old daemon ran a step: {:?}",
        lines(&marker)
    );
    ensure!(
        new.events(&run)? == events_before,
        "the journal changed after the old daemon was resumed"
    );
    ensure!(lease(&pg, database_of(&url))? == lease_before);
    pg.stop()?;
    Ok(())
}

#[test]
fn a_database_restart_stops_new_work_and_loses_nothing() -> Result<()> {
    let mut pg = PgServer::start()?;
    let url = pg.create_database()?;
    let shared = Shared::new(
        &url,
        &[(
            "load.toml",
            r#"
name = "load"
[params.n]
required = true
[[steps]]
id = "a"
action = "exec"
with = { command = "echo a >> {{ params.n }}" }
[[steps]]
id = "pause"
action = "wait"
with = { duration = "1s" }
[[steps]]
id = "b"
action = "exec"
with = { command = "echo b >> {{ params.n }}" }
[[steps]]
id = "c"
action = "noop"
"#,
        )],
    )?;
    let mut daemon = shared.daemon()?;
    daemon.restart()?;
    let mut runs = Vec::new();
    for index in 0..12 {
        let marker = shared.marker(&format!("load-{index}"));
        runs.push((run_started(&daemon, "load", &marker)?, marker));
    }
    pg.stop()?;
    let refused = daemon.cli(&[
        "start",
        "load",
        "-p",
        &format!("n={}", shared.marker("refused")),
    ])?;
    ensure!(
        !refused.status.success(),
        "a run was started while the database was away"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        said.contains("PostgreSQL store") && said.contains("nothing was changed"),
        "unclear refusal: {said}"
    );
    std::thread::sleep(Duration::from_secs(2));
    pg.restart()?;
    // Reads fail while the store is reopened (about a second after the database is back).
    let deadline = Instant::now() + LONG;
    for (run, marker) in &runs {
        loop {
            match daemon.show(run) {
                Ok(shown) if shown["state"] == "succeeded" => break,
                Ok(shown) => ensure!(
                    Instant::now() < deadline,
                    "{run} did not finish: {shown:#}\n{}",
                    daemon.log()
                ),
                Err(error) => ensure!(Instant::now() < deadline, "{error:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        ensure!(lines(marker) == ["a", "b"], "{run}: {:?}", lines(marker));
    }
    ensure!(lines(&shared.marker("refused")).is_empty());
    let after = daemon.start_run("load", &[("n", &shared.marker("after"))])?;
    daemon.wait_state(&after, "succeeded", LONG)?;
    pg.stop()?;
    Ok(())
}

/// The fence inside every commit, apart from the renewal that usually notices first: once
/// another daemon holds the lease, a commit of the old holder is refused and writes nothing.
#[test]
fn a_commit_after_another_daemon_took_the_lease_is_refused() -> Result<()> {
    use runbook_engine::store::postgres::{take_lease, PgTables, Target};
    use runbook_engine::store::tables::{Op, Tables, Tree};
    let mut pg = PgServer::start()?;
    let url = pg.create_database()?;
    let lease = take_lease(
        &Target::new(&url)?,
        "host-a:/data",
        Duration::from_secs(30),
        |_| {},
        || {},
    )?;
    let tables = PgTables::open(lease.clone())?;
    let op = |key: &str| Op {
        tree: Tree::Meta,
        key: key.as_bytes().to_vec(),
        value: Some(b"1".to_vec()),
    };
    tables.write(&[op("before")])?;
    let mut client = pg.client(database_of(&url))?;
    client.execute(
        "UPDATE runbook_lease SET holder = 'host-b:/data', epoch = epoch + 1",
        &[],
    )?;
    let refused = tables
        .write(&[op("after")])
        .err()
        .context("a commit after the lease moved was accepted")?;
    ensure!(
        refused.to_string().contains("no longer holds the lease"),
        "{refused}"
    );
    ensure!(lease.fenced());
    let mut count = |key: &str| -> Result<i64> {
        Ok(client
            .query_one(
                "SELECT count(*) FROM runbook_kv WHERE key = $1",
                &[&key.as_bytes()],
            )?
            .get(0))
    };
    ensure!(count("before")? == 1 && count("after")? == 0);
    // Fenced for good: no later commit either, even if the lease were free again.
    ensure!(tables.write(&[op("later")]).is_err() && count("later")? == 0);
    pg.stop()?;
    Ok(())
}

/// `runbook store copy`: an embedded store with finished (archived) and waiting runs and a user,
/// copied into PostgreSQL; a daemon on the copy shows the same runs and carries the waiting one
/// on; a second copy into the same database is refused.
#[test]
fn an_embedded_store_is_copied_whole_into_postgres() -> Result<()> {
    let mut pg = PgServer::start()?;
    let url = pg.create_database()?;
    let shared = Shared::new(
        &url,
        &[(
            "copied.toml",
            r#"
name = "copied"
[params.n]
required = true
[params.gate]
default = "no"
[[steps]]
id = "a"
action = "exec"
with = { command = "echo a >> {{ params.n }}" }
[[steps]]
id = "gate"
action = "approval"
when = "params.gate == 'yes'"
with = { prompt = "go on?" }
[[steps]]
id = "b"
action = "exec"
with = { command = "echo b >> {{ params.n }}" }
"#,
        )],
    )?;
    let runbooks = shared.dir.path().join("runbooks").display().to_string();
    let mut embedded = Daemon::prepare(&["--runbooks-dir", &runbooks], &[], &[])?;
    embedded.restart()?;
    let mut runs = Vec::new();
    for index in 0..3 {
        let marker = shared.marker(&format!("copied-{index}"));
        runs.push((run_started(&embedded, "copied", &marker)?, marker));
    }
    let gated_marker = shared.marker("gated");
    let gated = embedded.start_run("copied", &[("n", &gated_marker), ("gate", "yes")])?;
    for (run, _) in &runs {
        embedded.wait_state(run, "succeeded", LONG)?;
    }
    embedded.wait_step(&gated, "gate", "waiting", LONG)?;
    let added = embedded.cli(&["user", "add", "alice", "--role", "approver"])?;
    ensure!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    embedded.wait_until(LONG, || {
        Ok(embedded
            .log()
            .contains("moved finished runs to the archive"))
    })?;
    let summary = |shown: &serde_json::Value| {
        let steps: Vec<(String, String)> = shown["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|step| (step["id"].to_string(), step["state"].to_string()))
            .collect();
        (
            shown["state"].to_string(),
            shown["runbook"].to_string(),
            steps,
        )
    };
    let mut before = Vec::new();
    for run in runs.iter().map(|(run, _)| run).chain([&gated]) {
        before.push(summary(&embedded.show(run)?));
    }
    embedded.terminate()?;

    let copy = |daemon: &Daemon| -> Result<std::process::Output> {
        Ok(std::process::Command::new(runbook_tests::binary())
            .arg("--data-dir")
            .arg(&daemon.data_dir)
            .args([
                "store",
                "copy",
                "--to",
                "postgres",
                "--postgres-url-file",
                &shared.url_file,
            ])
            .output()?)
    };
    let copied = copy(&embedded)?;
    let said = String::from_utf8_lossy(&copied.stderr);
    ensure!(copied.status.success(), "store copy failed: {said}");
    ensure!(
        said.contains("4 run(s) (3 taken out of the archive)")
            && said.contains("every record checks out"),
        "{said}"
    );

    let mut daemon = shared.daemon()?;
    daemon.restart()?;
    for (index, run) in runs.iter().map(|(run, _)| run).chain([&gated]).enumerate() {
        ensure!(
            summary(&daemon.show(run)?) == before[index],
            "{run} differs after the copy"
        );
    }
    let users = daemon.cli(&["user", "ls"])?;
    ensure!(String::from_utf8_lossy(&users.stdout).contains("alice"));
    let approved = daemon.cli(&["approve", &gated, "--comment", "after the move"])?;
    ensure!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    daemon.wait_state(&gated, "succeeded", LONG)?;
    ensure!(
        lines(&gated_marker) == ["a", "b"],
        "{:?}",
        lines(&gated_marker)
    );
    daemon.terminate()?;

    let again = copy(&embedded)?;
    ensure!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "a copy into a store that holds runs: {}\n{}",
        String::from_utf8_lossy(&again.stderr),
        daemon.log()
    );
    pg.stop()?;
    Ok(())
}

/// TLS to the database: a server that refuses connections without TLS; a daemon given the CA
/// of its certificate works, one given another CA never connects, and a connection string that
/// asks for TLS without a CA is refused at start.
#[test]
fn the_daemon_reaches_postgres_over_tls_and_checks_its_certificate() -> Result<()> {
    let mut pg = PgServer::start()?;
    let url = pg.create_database()?;
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    pg.require_tls(&server.cert.pem(), &server.signing_key.serialize_pem())?;
    let shared = Shared::new(
        &url,
        &[(
            "tls.toml",
            r#"
name = "tls"
[params.n]
required = true
[[steps]]
id = "a"
action = "exec"
with = { command = "echo a >> {{ params.n }}" }
"#,
        )],
    )?;
    let right_ca = shared.marker("server-ca.pem");
    let wrong_ca = shared.marker("other-ca.pem");
    std::fs::write(&right_ca, server.cert.pem())?;
    std::fs::write(&wrong_ca, other.cert.pem())?;

    // Without TLS the server refuses; with another CA the daemon refuses the server.
    for (more, expect) in [
        (vec![], "no encryption"),
        (vec!["--postgres-ca-file", wrong_ca.as_str()], "certificate"),
    ] {
        let mut daemon = shared.daemon_with(&more)?;
        daemon.spawn()?;
        daemon.wait_until(Duration::from_secs(20), || {
            Ok(daemon.log().contains(expect))
        })?;
        ensure!(
            !daemon.log().contains("this daemon is active"),
            "{:?}: became active:\n{}",
            more,
            daemon.log()
        );
        daemon.kill9();
    }

    let mut daemon = shared.daemon_with(&["--postgres-ca-file", &right_ca])?;
    daemon.restart()?;
    let marker = shared.marker("tls");
    let run = run_started(&daemon, "tls", &marker)?;
    daemon.wait_state(&run, "succeeded", LONG)?;
    ensure!(lines(&marker) == ["a"]);
    daemon.terminate()?;

    // TLS asked for in the connection string, without a CA to check the server against.
    std::fs::write(&shared.url_file, format!("{url} sslmode=require"))?;
    let mut daemon = shared.daemon()?;
    let refused = daemon
        .restart()
        .err()
        .context("started without a CA for sslmode=require")?;
    ensure!(
        format!("{refused:#}").contains("--postgres-ca-file"),
        "{refused:#}"
    );
    pg.stop()?;
    Ok(())
}

/// A database whose schema a newer release wrote is refused at start, naming both versions,
/// and nothing in it is changed.
#[test]
fn a_newer_schema_is_refused() -> Result<()> {
    let mut pg = PgServer::start()?;
    let url = pg.create_database()?;
    let shared = Shared::new(&url, &[])?;
    let mut first = shared.daemon()?;
    first.restart()?;
    first.terminate()?;
    let mut client = pg.client(database_of(&url))?;
    client.execute("UPDATE runbook_schema SET version = 99", &[])?;
    let lease_before = lease(&pg, database_of(&url))?;
    let mut daemon = shared.daemon()?;
    let refused = daemon
        .restart()
        .err()
        .context("a daemon started on a newer schema")?;
    ensure!(
        format!("{refused:#}").contains("format 99, newer than this build understands (1)"),
        "{refused:#}"
    );
    ensure!(
        lease(&pg, database_of(&url))? == lease_before,
        "the lease changed"
    );
    pg.stop()?;
    Ok(())
}

/// A connection string on the command line (readable by every local user in the process list)
/// is refused without being echoed; so is an unknown store.
#[test]
fn the_connection_string_never_comes_from_the_command_line() -> Result<()> {
    let data_dir = tempfile::Builder::new().prefix("runbook-test-").tempdir()?;
    for store in [
        "postgres://runbook:s3cret@db.example/runbook",
        "host=db.example password=s3cret",
    ] {
        let output = std::process::Command::new(runbook_tests::binary())
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["daemon", "--store", store])
            .output()?;
        let said = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "{store}: the daemon started");
        ensure!(
            said.contains("--store") && !said.contains("s3cret"),
            "{store}: {said}"
        );
    }
    Ok(())
}
