//! Any request body the API decodes into params, cron expressions and time zones: params are
//! typed against a real definition and rendered into a plan, schedules compute their instants;
//! errors are values, never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use runbook_engine::calendar::Calendar;
use runbook_engine::definition::{self, Definition};

const RUNBOOK: &str = r#"
name = "fuzz"
locks = ["broker:{{ params.broker }}"]
[params.broker]
required = true
pattern = "[a-z0-9-]+"
[params.count]
type = "int"
default = 3
[params.items]
type = "list"
default = ["a"]
[params.wait]
type = "duration"
default = "1s"
[params.mode]
type = "enum"
values = ["fast", "slow"]
default = "fast"
[params.namesrv]
type = "host_port"
default = "127.0.0.1:9876"
[[steps]]
id = "each"
for_each = "{{ params.items }}"
  [[steps.steps]]
  id = "echo"
  action = "exec"
  with = { command = "echo {{ item }} {{ params.broker }} {{ params.count * 2 }}" }
[[steps]]
id = "pause"
action = "wait"
with = { duration = "{{ params.wait }}" }
"#;

fn definition() -> &'static Definition {
    static DEFINITION: OnceLock<Definition> = OnceLock::new();
    DEFINITION
        .get_or_init(|| definition::parse("fuzz.toml", RUNBOOK).expect("the fuzz runbook is valid"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(params) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data) {
        let _ = runbook_engine::runtime::plan(
            definition(),
            &params,
            &runbook_engine::action::Registry::new(),
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let mut parts = text.splitn(2, '\n');
        let cron = parts.next().unwrap_or_default();
        let zone = parts.next().unwrap_or("UTC");
        if let Ok(calendar) = Calendar::parse(cron, zone) {
            let start = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
            if let Some(next) = calendar.next_after(start) {
                assert!(next > start);
            }
            let _ = calendar.between(start, start + chrono::Duration::days(2), 50);
        }
    }
});
