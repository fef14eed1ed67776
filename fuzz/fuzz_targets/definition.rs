//! Any text given as a runbook file: parsing and validation return a definition or an error
//! naming a line; they never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match runbook_engine::definition::parse("fuzz.toml", text) {
        Ok(definition) => {
            let _ = runbook_engine::definition::validate(&definition, &|name| name.starts_with("rocketmq."));
            let _ = runbook_engine::runtime::plan(&definition, &serde_json::Map::new());
        }
        Err(error) => assert!(error.line >= 1),
    }
});
