//! Any text given as a runbook file: parsing and validation return a definition or an error
//! naming a line; they never panic, and never overflow the stack of a daemon thread (2 MiB),
//! however deep the file nests. A definition that validates survives the journal (JSON round
//! trip) and starts a run at any instant without a panic (durations against the clock).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use runbook_engine::definition::{self, Definition};
use runbook_engine::machine::{self, Actor};

/// The stack of a tokio worker, where the daemon parses files.
const DAEMON_STACK: usize = 2 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = text.to_owned();
    std::thread::Builder::new()
        .stack_size(DAEMON_STACK)
        .spawn(move || check(&text))
        .expect("a thread")
        .join()
        .expect("no panic");
});

fn check(text: &str) {
    let definition = match definition::parse("fuzz.toml", text) {
        Ok(definition) => definition,
        Err(error) => {
            assert!(error.line >= 1);
            return;
        }
    };
    let actions = runbook_engine::action::Registry::new();
    // The full check (every mistake, action schemas) must never panic either.
    let _ = definition::check("fuzz.toml", text, &actions);
    let _ = runbook_engine::runtime::plan(&definition, &serde_json::Map::new(), &actions);
    if definition::validate(&definition, &|name| name.starts_with("rocketmq.")).is_err() {
        return;
    }
    let json = serde_json::to_vec(&definition).expect("a definition encodes");
    let back: Definition = serde_json::from_slice(&json).expect("a valid definition reads back");
    assert_eq!(back, definition);
    let Ok(params) = definition::resolve_params(&definition, &serde_json::Map::new()) else {
        return;
    };
    let definition = Arc::new(definition);
    for now in [
        chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default(),
        chrono::DateTime::<chrono::Utc>::MAX_UTC,
    ] {
        let (state, decision) = machine::create(
            uuid::Uuid::nil(),
            definition.clone(),
            params.clone(),
            Vec::new(),
            Actor::uid(0),
            None,
            now,
        );
        for event in &decision.events {
            let json = serde_json::to_vec(event).expect("an event encodes");
            let _: machine::Event = serde_json::from_slice(&json).expect("an event reads back");
        }
        let _ = machine::decide(&state, machine::Input::Continue, now);
    }
}
