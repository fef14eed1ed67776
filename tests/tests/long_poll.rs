//! A long poll keeps its first and its latest round in the journal, not every round: the rounds
//! in between are forgotten when the run's next snapshot is stored. Across a `kill -9` the poll
//! goes on where it was, and every event seen once is still there unless a later round of the
//! same step superseded it. A round's call directory goes once its end is journaled.

use std::time::Duration;

use anyhow::Result;
use runbook_tests::{check_journal_extends, step_of, Daemon};
use serde_json::Value;

const POLLS: u64 = 24;

fn runbook(counter: &str) -> String {
    format!(
        r#"
name = "long-poll"
[[steps]]
id = "lag"
action = "exec"
idempotent = true
with = {{ command = ["sh", "-c", "n=$(( $(cat \"$1\" 2>/dev/null || echo 0) + 1 )); echo $n > \"$1\"; echo \"{{\\\"n\\\": $n, \\\"group\\\": \\\"orders\\\"}}\"", "sh", "{counter}"], parse = "json" }}
until = "output.json.n >= {POLLS}"
every = "1s"

[[steps]]
id = "after"
action = "noop"
"#
    )
}

#[test]
fn a_long_poll_keeps_its_first_and_latest_rounds_only() -> Result<()> {
    let mut daemon = Daemon::start()?;
    let counter = daemon.path("counter");
    let file = daemon.write_file("long-poll.toml", &runbook(&counter))?;
    let run = daemon.start_run(&file, &[])?;
    let polls = |shown: &Value| step_of(shown, "lag").and_then(|step| step["polls"].as_u64());

    let mut seen: Vec<Value> = Vec::new();
    let mut look = |daemon: &Daemon| -> Result<Vec<Value>> {
        let events = daemon.events(&run)?;
        check_journal_extends(&run, &seen, &events)?;
        seen = events.clone();
        Ok(events)
    };
    daemon.wait_for(&run, Duration::from_secs(60), |shown| {
        polls(shown).is_some_and(|polls| polls >= POLLS / 2)
    })?;
    let before = look(&daemon)?;
    daemon.kill9();
    daemon.restart()?;
    look(&daemon)?;
    let shown = daemon.wait_state(&run, "succeeded", Duration::from_secs(60))?;
    let events = look(&daemon)?;

    // Every poll ran once (the counter) and the state knows of all of them.
    let count: u64 = std::fs::read_to_string(&counter)?.trim().parse()?;
    assert!(count >= POLLS, "{count} polls");
    assert!(
        polls(&shown).is_some_and(|polls| polls + 3 >= POLLS),
        "{shown}"
    );
    let last_seq = events
        .last()
        .and_then(|event| event["seq"].as_u64())
        .unwrap_or(0);
    let polled = events
        .iter()
        .filter(|event| event["kind"] == "step_polled")
        .count();
    // About 5 events a round: without forgetting, the journal would hold all of them.
    assert!(
        last_seq >= 5 * (POLLS - 2),
        "the journal is shorter than the polls made: {last_seq}"
    );
    assert!(
        (events.len() as u64) < last_seq / 2,
        "{} events kept of {last_seq}: superseded rounds were not forgotten",
        events.len()
    );
    // The first round is kept, and the latest (the one before the condition held).
    let first_polled = events
        .iter()
        .find(|event| event["kind"] == "step_polled")
        .expect("a step_polled event");
    assert_eq!(first_polled["output"]["json"]["n"], 1, "{first_polled}");
    assert!(polled >= 2, "{polled} step_polled events kept");
    assert!(
        events
            .iter()
            .any(|event| event["kind"] == "step_succeeded" && event["step"] == "lag"),
        "the round that met the condition is kept"
    );
    assert!(before.len() < events.len() + 64);

    // The calls' directories went with their rounds (a restart may leave the interrupted one).
    let calls = std::fs::read_dir(daemon.path(&format!("runs/{run}/calls")))
        .map_or(0, |entries| entries.count());
    assert!(calls <= 2, "{calls} call directories left of {count} polls");

    let verify = daemon.cli(&["store", "verify"])?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    Ok(())
}
