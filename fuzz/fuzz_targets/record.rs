//! Any bytes read back from the store: the record decoder returns a value or an error naming the
//! key; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runbook_engine::machine::{Event, RunState};
use runbook_engine::schedule::Schedule;
use runbook_engine::store::envelope;

fuzz_target!(|data: &[u8]| {
    let key = || "fuzz/key".to_owned();
    let _ = envelope::decode::<Event>(&key, data);
    let _ = envelope::decode::<RunState>(&key, data);
    let _ = envelope::decode::<Schedule>(&key, data);
    if let Ok(events) = serde_json::from_slice::<Vec<Event>>(data) {
        // Any journal the decoder accepts can be replayed.
        let _ = RunState::replay(uuid::Uuid::nil(), &events);
    }
});
