//! Cron expressions in a time zone: the next instant a maintenance window opens.
//!
//! Accepts the classic 5-field form (minute hour day month weekday) and the 6/7-field form with
//! seconds (and years). Day-of-week numbers follow the `cron` crate: 1 = Sunday … 7 = Saturday;
//! 0 is rejected with a hint to write `SUN`, since in classic cron 0 means Sunday and a silent
//! shift by one day is the worst possible failure of a maintenance window.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub struct Calendar {
    schedule: cron::Schedule,
    zone: Tz,
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
        let schedule = cron::Schedule::from_str(&full).map_err(|error| format!("cron {expression:?}: {error}"))?;
        let zone = Tz::from_str(zone).map_err(|_| format!("unknown time zone {zone:?} (use an IANA name such as Asia/Shanghai)"))?;
        Ok(Calendar { schedule, zone })
    }

    /// The first instant strictly after `after` that matches.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&after.with_timezone(&self.zone)).next().map(|instant| instant.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields_agree() {
        let start = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let five = Calendar::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let six = Calendar::parse("0 30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(five.next_after(start), six.next_after(start));
        assert_eq!(five.next_after(start).unwrap().to_rfc3339(), "2026-03-01T01:30:00+00:00");
    }

    #[test]
    fn bad_input_is_named() {
        assert!(Calendar::parse("* * *", "UTC").unwrap_err().contains("expected 5 fields"));
        assert!(Calendar::parse("0 4 * * 0", "UTC").unwrap_err().contains("SUN"));
        assert!(Calendar::parse("0 4 * * *", "Mars/Olympus").unwrap_err().contains("unknown time zone"));
    }
}
