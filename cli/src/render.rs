//! Output formatting shared by the commands: tables, durations, timestamps, JSON values, and
//! writing to stdout.
//!
//! Durations are written the way an operator reads them at a glance: `0.02s`, `3.1s`, `42s`,
//! `2m3s`, `71h59m`. Timestamps are shown in local time; the API speaks UTC (RFC 3339).
//! Writing to stdout goes through [`print`] so a closed pipe is an error, not a panic.

use std::io::Write;

use anyhow::{Context, Result};
use chrono::{DateTime, Local, TimeDelta, Utc};
use serde_json::Value;

/// The wall clock (the engine's: the one place that reads it). The only place in the CLI that
/// asks for it, so rendering stays testable.
pub fn now() -> DateTime<Utc> {
    runbook_engine::clock::Clock::now(&runbook_engine::clock::SystemClock)
}

/// Parses an RFC 3339 timestamp of the API; `null`, missing or malformed gives `None`.
pub fn time(value: &Value) -> Option<DateTime<Utc>> {
    let text = value.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// A duration in milliseconds as `0.02s`, `3.1s`, `42s`, `2m3s` or `71h59m` (negative is 0).
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1_000 {
        return format!("{:.2}s", ms as f64 / 1000.0);
    }
    if ms < 10_000 && ms % 1000 != 0 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    if secs < 60 {
        return format!("{secs}s");
    }
    // Zero tails are dropped: `5m`, `72h`, but `2m3s` and `71h59m`.
    let (hours, minutes, seconds) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (hours, minutes, seconds) {
        (0, minutes, 0) => format!("{minutes}m"),
        (0, minutes, seconds) => format!("{minutes}m{seconds}s"),
        (hours, 0, _) => format!("{hours}h"),
        (hours, minutes, _) => format!("{hours}h{minutes}m"),
    }
}

/// A [`TimeDelta`] rendered like [`duration_ms`].
pub fn duration(delta: TimeDelta) -> String {
    duration_ms(delta.num_milliseconds())
}

/// `at` relative to `now`: `in 71h59m`, `3m12s ago`, or `now`.
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = at - now;
    let ms = delta.num_milliseconds();
    if ms.abs() < 500 {
        "now".to_string()
    } else if ms > 0 {
        format!("in {}", duration_ms(ms))
    } else {
        format!("{} ago", duration_ms(-ms))
    }
}

/// Local wall-clock time of day, `12:00:01`.
pub fn clock(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local).format("%H:%M:%S").to_string()
}

/// Local date and time, `2026-01-02 12:00:01`.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Local date and time, short: `01-02 12:00:01` (for table cells of multi-day runs).
pub fn short_timestamp(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local)
        .format("%m-%d %H:%M:%S")
        .to_string()
}

/// A JSON value as text: strings without quotes, `null` as `-`, anything else as compact JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A JSON value as compact JSON (strings keep their quotes).
pub fn compact(value: &Value) -> String {
    value.to_string()
}

/// The first line of a possibly multi-line text (descriptions in table cells).
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// An error field of the API (a string, an object with `message`, or `null`) as text.
pub fn error_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) if text.is_empty() => None,
        Value::String(text) => Some(text.clone()),
        Value::Object(fields) => match fields.get("message").and_then(Value::as_str) {
            Some(message) => Some(message.to_string()),
            None => Some(value.to_string()),
        },
        other => Some(other.to_string()),
    }
}

/// The first 13 characters of a run id (`0193a8c4-5e2f`): unique enough to paste back.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(13) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

/// For each id, its shortest prefix that no other id of the list shares, and never shorter
/// than [`short_id`]: run ids begin with their creation millisecond, so two runs started in
/// the same millisecond need more of it to be told apart.
pub fn unique_prefixes(ids: &[&str]) -> Vec<String> {
    let shortest = short_id("00000000-0000-0000-0000-000000000000").len();
    ids.iter()
        .map(|id| {
            let shared = ids
                .iter()
                .filter(|other| *other != id)
                .map(|other| {
                    id.chars()
                        .zip(other.chars())
                        .take_while(|(a, b)| a == b)
                        .count()
                })
                .max()
                .unwrap_or(0);
            let length = (shared + 1).max(shortest);
            match id.char_indices().nth(length) {
                Some((end, _)) => id[..end].to_owned(),
                None => (*id).to_owned(),
            }
        })
        .collect()
}

/// Left-aligned columns separated by two spaces, header first; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(column) {
                Some(current) => *current = (*current).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[column].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `word` as one word of a shell command line (quoted when it holds a space, a quote or any
/// other character the shell would read), so that a printed command works when pasted.
pub fn shell_word(word: &str) -> String {
    match shlex::try_quote(word) {
        Ok(quoted) => quoted.into_owned(),
        // A NUL byte cannot be in an argument at all; show it as it is.
        Err(_) => word.to_owned(),
    }
}

/// Writes `text` to stdout as is.
pub fn print(text: &str) -> Result<()> {
    print_bytes(text.as_bytes())
}

/// Writes raw bytes to stdout and flushes (log data arrives in pieces while following).
pub fn print_bytes(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// Writes a JSON value, pretty, to stdout (the `--json` output of every command).
pub fn print_json(value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot format JSON")?;
    print(&format!("{text}\n"))
}

/// Writes a JSON value as one line to stdout (output that is a stream of objects, like
/// `logs --json`, one per line).
pub fn print_json_line(value: &Value) -> Result<()> {
    let text = serde_json::to_string(value).context("cannot format JSON")?;
    print(&format!("{text}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check = |ms: i64, expect: &str| assert_eq!(duration_ms(ms), expect, "{ms} ms");
        check(-5, "0s");
        check(0, "0s");
        check(20, "0.02s");
        check(3_100, "3.1s");
        check(42_900, "42s");
        check(123_000, "2m3s");
        check(119_400, "1m59s");
        check((71 * 3600 + 59 * 60 + 30) * 1000, "71h59m");
        check(1_000, "1s");
        check(300_000, "5m");
        check(72 * 3600 * 1000, "72h");
    }

    #[test]
    fn relative_times() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|at| at.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(relative(now + TimeDelta::minutes(2), now), "in 2m");
        assert_eq!(relative(now - TimeDelta::seconds(30), now), "30s ago");
        assert_eq!(relative(now, now), "now");
    }

    #[test]
    fn tables_align_and_trim() {
        let rows = vec![
            vec!["a".to_string(), "long value".to_string(), "x".to_string()],
            vec!["bbb".to_string(), "v".to_string(), String::new()],
        ];
        let expect = "ID   VALUE       NOTE\na    long value  x\nbbb  v\n";
        assert_eq!(table(&["ID", "VALUE", "NOTE"], &rows), expect);
    }

    #[test]
    fn short_ids() {
        assert_eq!(
            short_id("0193a8c4-5e2f-7abc-8def-0123456789ab"),
            "0193a8c4-5e2f"
        );
        assert_eq!(short_id("0193"), "0193");
    }

    #[test]
    fn prefixes_of_ids_from_one_millisecond_are_unique() {
        let ids = [
            "0193a8c4-5e2f-7abc-8def-0123456789ab",
            "0193a8c4-5e2f-7abd-8def-0123456789ab",
            "0193a8c4-5e2f-7abd-9def-0123456789ab",
            "0193a8c4-5e30-7abc-8def-0123456789ab",
        ];
        assert_eq!(
            unique_prefixes(&ids),
            [
                "0193a8c4-5e2f-7abc",
                "0193a8c4-5e2f-7abd-8",
                "0193a8c4-5e2f-7abd-9",
                "0193a8c4-5e30",
            ]
        );
        assert_eq!(unique_prefixes(&["ab"]), ["ab"]);
    }
}
