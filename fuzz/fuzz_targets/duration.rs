//! Durations and instants at their extremes: parsing any text returns a duration of at most
//! `duration::MAX` or an error; adding any duration or any count of milliseconds to any instant
//! saturates, never panics; a deadline check never panics.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use runbook_engine::duration;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(parsed) = duration::parse(text) {
            assert!(parsed <= duration::MAX);
        }
    }
    if data.len() >= 24 {
        let word = |at: usize| i64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default());
        let instant =
            DateTime::<Utc>::from_timestamp_millis(word(0)).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let span = std::time::Duration::from_millis(word(8) as u64);
        assert!(duration::after(instant, span) >= instant);
        let moved = duration::after_ms(instant, word(16));
        assert!(if word(16) < 0 {
            moved <= instant
        } else {
            moved >= instant
        });
        let _ = duration::check_deadline(moved, instant);
    }
});
