//! Cron expressions in a time zone: the next instant a maintenance window opens.
//!
//! Accepts the classic 5-field form (minute hour day month weekday) and the 6/7-field form with
//! seconds (and years). Day-of-week numbers follow the `cron` crate: 1 = Sunday … 7 = Saturday;
//! 0 is rejected with a hint to write `SUN`, since in classic cron 0 means Sunday and a silent
//! shift by one day is the worst possible failure of a maintenance window.
//!
//! # Daylight saving time
//!
//! Matching is done on the zone's wall clock, then mapped to an instant:
//!
//! - a wall-clock time that does not exist (spring forward: 02:30 on the night clocks jump from
//!   02:00 to 03:00) fires once, at the first valid instant after it (03:00);
//! - a wall-clock time that exists twice (fall back: 02:30 on the night clocks go from 03:00
//!   back to 02:00) fires once, at its first occurrence.
//!
//! So a daily schedule fires exactly once every day, whatever the zone does.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// How soon a window's cron must match: one that does not match within 5 years is refused.
pub const MATCH_HORIZON: std::time::Duration = std::time::Duration::from_secs(5 * 366 * 24 * 3600);
const MATCH_HORIZON_TEXT: &str = "5 years";

#[derive(Debug, Clone)]
pub struct Calendar {
    schedule: cron::Schedule,
    zone: Tz,
    /// As written, for messages.
    expression: String,
}

/// An IANA time zone by name, or an error saying what is expected.
pub fn zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name)
        .map_err(|_| format!("unknown time zone {name:?} (use an IANA name such as Asia/Shanghai)"))
}

impl Calendar {
    pub fn parse(expression: &str, zone: &str) -> Result<Calendar, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let full = match fields.len() {
            5 => format!("0 {}", fields.join(" ")),
            6 | 7 => fields.join(" "),
            count => {
                return Err(format!(
                    "cron {expression:?}: expected 5 fields (minute hour day month weekday) or 6-7 with seconds, got {count}"
                ))
            }
        };
        let weekday = full.split_whitespace().nth(5).unwrap_or_default();
        if weekday.split([',', '-', '/']).any(|part| part == "0") {
            return Err(format!(
                "cron {expression:?}: weekday 0 is not allowed: weekdays run 1 (SUN) to 7 (SAT) here; write SUN to mean Sunday"
            ));
        }
        let schedule = cron::Schedule::from_str(&full)
            .map_err(|error| format!("cron {expression:?}: {error}"))?;
        let zone = self::zone(zone)?;
        Ok(Calendar {
            schedule,
            zone,
            expression: expression.to_owned(),
        })
    }

    /// The first match after `after`, if it comes within [`MATCH_HORIZON`]; otherwise an error
    /// that says so (`0 0 30 2 *` never matches; a window that far away is a mistake).
    pub fn next_within_horizon(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        let horizon = crate::duration::after(after, MATCH_HORIZON);
        match self.next_after(after) {
            Some(instant) if instant <= horizon => Ok(instant),
            _ => Err(format!(
                "cron {:?} does not match within {MATCH_HORIZON_TEXT} of {}",
                self.expression,
                after.to_rfc3339()
            )),
        }
    }

    /// The first instant strictly after `after` that matches (see the DST rules above).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Walk the wall clock of the zone; the cron crate is given it as if it were UTC, so it
        // neither skips nor doubles the hours a DST transition removes or repeats.
        let wall_after = after.with_timezone(&self.zone).naive_local();
        let mut cursor = Utc.from_utc_datetime(&wall_after);
        for _ in 0..10_000 {
            let wall = self.schedule.after(&cursor).next()?;
            cursor = wall;
            let instant = match self.zone.from_local_datetime(&wall.naive_utc()) {
                LocalResult::Single(instant) => instant.with_timezone(&Utc),
                LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
                LocalResult::None => self.first_valid_after(wall.naive_utc())?,
            };
            if instant > after {
                return Some(instant);
            }
        }
        None
    }

    /// The first instant whose wall-clock time is after `wall` (the end of a DST gap).
    fn first_valid_after(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        let mut probe = wall;
        for _ in 0..(26 * 60) {
            probe = probe.checked_add_signed(chrono::TimeDelta::minutes(1))?;
            let minute = probe.with_second(0)?.with_nanosecond(0)?;
            if let Some(instant) = self.zone.from_local_datetime(&minute).earliest() {
                return Some(instant.with_timezone(&Utc));
            }
        }
        None
    }

    /// Every matching instant in `(from, to]`, at most `limit`.
    pub fn between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut instants = Vec::new();
        let mut cursor = from;
        while instants.len() < limit {
            match self.next_after(cursor) {
                Some(next) if next <= to => {
                    instants.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        instants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields_agree() {
        let start = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let five = Calendar::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let six = Calendar::parse("0 30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(five.next_after(start), six.next_after(start));
        assert_eq!(
            five.next_after(start).unwrap().to_rfc3339(),
            "2026-03-01T01:30:00+00:00"
        );
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Fires of a daily 02:30 Europe/Berlin schedule between two instants.
    fn berlin_fires(from: &str, to: &str) -> Vec<String> {
        let calendar = Calendar::parse("30 2 * * *", "Europe/Berlin").unwrap();
        calendar
            .between(at(from), at(to), 1000)
            .iter()
            .map(|instant| instant.to_rfc3339())
            .collect()
    }

    #[test]
    fn spring_forward_fires_once_at_the_first_valid_instant() {
        // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST; 02:30 does not exist.
        assert_eq!(
            berlin_fires("2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z"),
            [
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // 03:00 CEST, the first valid instant after 02:30
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
                "2026-03-31T00:30:00+00:00",
            ]
        );
    }

    #[test]
    fn fall_back_fires_once_at_the_first_occurrence() {
        // 2026-10-25: Berlin goes back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
        assert_eq!(
            berlin_fires("2026-10-23T12:00:00Z", "2026-10-27T12:00:00Z"),
            [
                "2026-10-24T00:30:00+00:00", // 02:30 CEST
                "2026-10-25T00:30:00+00:00", // the first 02:30 (CEST), not the second (01:30 UTC)
                "2026-10-26T01:30:00+00:00", // 02:30 CET
                "2026-10-27T01:30:00+00:00",
            ]
        );
    }

    #[test]
    fn a_daily_schedule_fires_exactly_once_every_day_of_2026() {
        let fires = berlin_fires("2025-12-31T23:00:00Z", "2026-12-31T23:00:00Z");
        assert_eq!(fires.len(), 365);
        let days: std::collections::BTreeSet<_> = fires
            .iter()
            .map(|fire| {
                at(fire)
                    .with_timezone(&chrono_tz::Europe::Berlin)
                    .date_naive()
            })
            .collect();
        assert_eq!(days.len(), 365);
    }

    #[test]
    fn bad_input_is_named() {
        assert!(Calendar::parse("* * *", "UTC")
            .unwrap_err()
            .contains("expected 5 fields"));
        assert!(Calendar::parse("0 4 * * 0", "UTC")
            .unwrap_err()
            .contains("SUN"));
        assert!(Calendar::parse("0 4 * * *", "Mars/Olympus")
            .unwrap_err()
            .contains("unknown time zone"));
        assert!(Calendar::parse("0 4 * * FUNDAY", "UTC")
            .unwrap_err()
            .contains("FUNDAY"));
        assert!(Calendar::parse("61 4 * * *", "UTC").is_err());
    }
}
