//! Durations as operators write them (`72h`, `90s`, `1h30m`, `250ms`) and as the store keeps them
//! (whole milliseconds).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The longest duration a runbook may name (a wait, timeout, poll interval, backoff, grace) and
/// the farthest a deadline may lie ahead: 10 years (of 366 days). Anything longer is a typo,
/// and would overflow the arithmetic on instants.
pub const MAX: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// [`MAX`] as the error messages say it.
pub const MAX_TEXT: &str = "10 years (87840h)";

/// The shortest interval between two polls of an `until` step: a faster poll is a typo (`0s`
/// made hundreds of polls a second) and would fill the journal.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Refuses a poll interval below [`MIN_POLL_INTERVAL`].
pub fn check_poll_interval(every: Duration) -> Result<Duration, String> {
    if every < MIN_POLL_INTERVAL {
        return Err(format!(
            "poll interval {} is below the minimum of 1s",
            humantime::format_duration(every)
        ));
    }
    Ok(every)
}

/// Parses `72h`, `3s`, `1h 30m`, `250ms`, `2days`. A bare number is rejected: a unit is required,
/// so that `wait = 72` cannot mean seconds to one reader and hours to another.
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration".to_owned());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "duration {trimmed:?} has no unit (write e.g. \"{trimmed}s\" or \"{trimmed}h\")"
        ));
    }
    let duration = humantime::parse_duration(trimmed)
        .map_err(|error| format!("bad duration {trimmed:?}: {error}"))?;
    if duration > MAX {
        return Err(format!(
            "duration {trimmed:?} is longer than the maximum of {MAX_TEXT}"
        ));
    }
    Ok(duration)
}

/// `instant + duration`, never panicking: an instant beyond what chrono can hold saturates to
/// the last one it can (such a timer never fires, which is what a duration that long means).
pub fn after(instant: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| instant.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `instant + milliseconds` (negative: earlier), saturating like [`after`].
pub fn after_ms(instant: DateTime<Utc>, milliseconds: i64) -> DateTime<Utc> {
    TimeDelta::try_milliseconds(milliseconds)
        .and_then(|delta| instant.checked_add_signed(delta))
        .unwrap_or(if milliseconds < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

/// Refuses a deadline more than [`MAX`] after `now`.
pub fn check_deadline(deadline: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    if deadline > after(now, MAX) {
        return Err(format!(
            "{} is more than {MAX_TEXT} away",
            deadline.to_rfc3339()
        ));
    }
    Ok(())
}

/// Formats a duration compactly: `72h`, `1m30s`, `250ms`.
pub fn format(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    if total_ms == 0 {
        return "0s".to_owned();
    }
    if total_ms < 1000 {
        return format!("{total_ms}ms");
    }
    let mut secs = duration.as_secs();
    let mut out = String::new();
    let hours = secs / 3600;
    secs %= 3600;
    let minutes = secs / 60;
    secs %= 60;
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    let millis = duration.subsec_millis();
    if secs > 0 || millis > 0 {
        if millis > 0 && hours == 0 {
            out.push_str(&format!("{secs}.{:01}s", millis / 100));
        } else if secs > 0 {
            out.push_str(&format!("{secs}s"));
        }
    }
    out
}

/// Serde helpers that store an optional duration as whole milliseconds.
pub mod opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_some(&(duration.as_millis() as u64)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}

/// Serde helpers that store a duration as whole milliseconds.
pub mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operator_durations() {
        assert_eq!(parse("72h").unwrap(), Duration::from_secs(72 * 3600));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse("72").unwrap_err().contains("no unit"));
        assert!(parse("3 fortnights").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn durations_beyond_the_maximum_are_refused() {
        let error = parse("9999999999999h").unwrap_err();
        assert!(
            error.contains("longer than the maximum of 10 years"),
            "{error}"
        );
        assert!(parse("87841h").is_err());
        assert_eq!(parse("87840h").unwrap(), MAX);
        // More than humantime's own range.
        assert!(parse("99999999999999999999999h").is_err());
    }

    #[test]
    fn arithmetic_on_extreme_instants_saturates_instead_of_panicking() {
        let extremes = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::UNIX_EPOCH,
            DateTime::<Utc>::MAX_UTC,
        ];
        let durations = [
            Duration::ZERO,
            MAX,
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ];
        for instant in extremes {
            for duration in durations {
                assert!(after(instant, duration) >= instant);
            }
            for milliseconds in [i64::MIN, -1, 0, 1, i64::MAX] {
                let moved = after_ms(instant, milliseconds);
                assert!(if milliseconds < 0 {
                    moved <= instant
                } else {
                    moved >= instant
                });
            }
        }
        assert_eq!(
            after(DateTime::<Utc>::MAX_UTC, MAX),
            DateTime::<Utc>::MAX_UTC
        );
        let now = DateTime::<Utc>::UNIX_EPOCH;
        assert!(check_deadline(after(now, MAX), now).is_ok());
        assert!(check_deadline(DateTime::<Utc>::MAX_UTC, now).is_err());
        assert!(check_deadline(now, DateTime::<Utc>::MAX_UTC).is_ok());
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format(Duration::from_secs(72 * 3600)), "72h");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(3100)), "3.1s");
    }
}
