//! Cron expressions in a time zone: the next instant a maintenance window opens.
//!
//! # The 5-field form is classic cron
//!
//! `minute hour day month weekday`, with the meaning every cron since Unix V7 gives it:
//!
//! - weekdays `0` or `7` = Sunday, `1` = Monday … `6` = Saturday, or names (`MON-FRI`), so
//!   `1-5` is Monday to Friday;
//! - when both the day of the month and the weekday are restricted (neither is `*`), a day
//!   matches if *either* matches (`0 4 13 * FRI`: every 13th and every Friday).
//!
//! The 6/7-field form (seconds first, years last) follows the `cron` crate, whose weekday
//! numbers are 1 = Sunday … 7 = Saturday and whose day fields must both match. Since the two
//! numberings disagree by a day, and a silent one-day shift of a maintenance window is the
//! worst failure a scheduler can have, the 6/7-field form takes weekday *names* only.
//!
//! Schedules stored before the 5-field form became classic are rewritten with weekday names
//! when loaded ([`legacy_to_names`]), so they keep firing on the days they always did.
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
    /// A day matches if any of these matches (two when classic cron's day-of-month OR weekday
    /// rule applies, else one).
    schedules: Vec<cron::Schedule>,
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
        let sources: Vec<String> = match fields.len() {
            5 => {
                let weekdays = classic_weekdays(fields[4])
                    .map_err(|message| format!("cron {expression:?}: weekday {message}"))?;
                let [minute, hour, day, month, _] = fields[..] else {
                    unreachable!("five fields")
                };
                let restricted = |field: &str| field != "*" && field != "?";
                if restricted(day) && restricted(fields[4]) {
                    // Classic cron: either day field may match.
                    vec![
                        format!("0 {minute} {hour} {day} {month} *"),
                        format!("0 {minute} {hour} * {month} {weekdays}"),
                    ]
                } else {
                    vec![format!("0 {minute} {hour} {day} {month} {weekdays}")]
                }
            }
            6 | 7 => {
                if fields[5].chars().any(|c| c.is_ascii_digit()) {
                    return Err(format!(
                        "cron {expression:?}: write weekdays as names (MON-FRI) in the 6-7 field form; numbers there would count from Sunday = 1, unlike the 5-field form"
                    ));
                }
                vec![fields.join(" ")]
            }
            count => {
                return Err(format!(
                    "cron {expression:?}: expected 5 fields (minute hour day month weekday) or 6-7 with seconds, got {count}"
                ))
            }
        };
        let schedules = sources
            .iter()
            .map(|source| {
                cron::Schedule::from_str(source)
                    .map_err(|error| format!("cron {expression:?}: {error}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let zone = self::zone(zone)?;
        Ok(Calendar {
            schedules,
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
            let wall = self
                .schedules
                .iter()
                .filter_map(|schedule| schedule.after(&cursor).next())
                .min()?;
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

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const FULL_DAY_NAMES: [&str; 7] = [
    "SUNDAY",
    "MONDAY",
    "TUESDAY",
    "WEDNESDAY",
    "THURSDAY",
    "FRIDAY",
    "SATURDAY",
];

/// How a weekday field's numbers are written: the smallest and largest number, and the number
/// of Sunday.
#[derive(Clone, Copy)]
struct Numbering {
    lowest: u32,
    highest: u32,
    sunday: u32,
}

/// Classic cron: 0 or 7 = Sunday, 1 = Monday … 6 = Saturday.
const CLASSIC: Numbering = Numbering {
    lowest: 0,
    highest: 7,
    sunday: 0,
};
/// The `cron` crate's (and the 5-field form here before it became classic): 1 = Sunday … 7 =
/// Saturday.
const CRATE: Numbering = Numbering {
    lowest: 1,
    highest: 7,
    sunday: 1,
};

/// A classic weekday field (0/7 = Sunday, names, ranges, lists, steps) as the `cron` crate's
/// field of day names (`*` when every day).
fn classic_weekdays(field: &str) -> Result<String, String> {
    weekday_names(field, CLASSIC).map_err(|message| {
        format!("{message} (weekdays are 0 or 7 = Sunday, 1 = Monday … 6 = Saturday, or SUN … SAT)")
    })
}

/// A schedule's expression as stored before 5-field weekdays became classic, with its weekday
/// numbers (then 1 = Sunday … 7 = Saturday) written as names, so that it means what it meant.
/// `None` when there is nothing to rewrite.
pub fn legacy_to_names(expression: &str) -> Option<String> {
    let mut fields: Vec<&str> = expression.split_whitespace().collect();
    if !(5..=7).contains(&fields.len()) {
        return None;
    }
    let index = if fields.len() == 5 { 4 } else { 5 };
    if !fields[index].chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let names = weekday_names(fields[index], CRATE).ok()?;
    fields[index] = &names;
    Some(fields.join(" "))
}

/// The days a weekday field names under `numbering`, as the `cron` crate's names.
fn weekday_names(field: &str, numbering: Numbering) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok("*".to_owned());
    }
    // A weekday as written on the numbering's scale.
    let written = |text: &str| -> Result<u32, String> {
        let upper = text.to_ascii_uppercase();
        let by_name = DAY_NAMES
            .iter()
            .position(|name| *name == upper)
            .or_else(|| FULL_DAY_NAMES.iter().position(|name| *name == upper));
        if let Some(position) = by_name {
            return Ok(numbering.sunday + position as u32);
        }
        text.parse::<u32>()
            .ok()
            .filter(|value| (numbering.lowest..=numbering.highest).contains(value))
            .ok_or_else(|| format!("{text:?} is not a weekday"))
    };
    let mut days = [false; 7];
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => {
                let step = step
                    .parse::<u32>()
                    .ok()
                    .filter(|step| (1..=7).contains(step))
                    .ok_or_else(|| format!("step {step:?} in {item:?} is not 1-7"))?;
                (base, step)
            }
            None => (item, 1),
        };
        let (first, last) = if base == "*" || base == "?" {
            (numbering.lowest, numbering.highest)
        } else if let Some((from, to)) = base.split_once('-') {
            let (first, last) = (written(from)?, written(to)?);
            if last < first {
                return Err(format!(
                    "range {base:?} runs backwards; list the days instead (e.g. FRI,SAT,SUN,MON)"
                ));
            }
            (first, last)
        } else if item.contains('/') {
            // `a/n`: from a to the end of the week.
            (written(base)?, numbering.highest)
        } else {
            let only = written(base)?;
            (only, only)
        };
        for value in (first..=last).step_by(step as usize) {
            days[((value + 7 - numbering.sunday) % 7) as usize] = true;
        }
    }
    if days.iter().all(|day| *day) {
        return Ok("*".to_owned());
    }
    Ok(DAY_NAMES
        .iter()
        .zip(days)
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(","))
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
        assert!(Calendar::parse("0 4 * * 8", "UTC")
            .unwrap_err()
            .contains("\"8\" is not a weekday"));
        assert!(Calendar::parse("0 4 * * 5-1", "UTC")
            .unwrap_err()
            .contains("runs backwards"));
        assert!(Calendar::parse("0 0 4 * * 2-6", "UTC")
            .unwrap_err()
            .contains("names"));
        assert!(Calendar::parse("0 4 * * *", "Mars/Olympus")
            .unwrap_err()
            .contains("unknown time zone"));
        assert!(Calendar::parse("0 4 * * FUNDAY", "UTC")
            .unwrap_err()
            .contains("FUNDAY"));
        assert!(Calendar::parse("61 4 * * *", "UTC").is_err());
    }

    /// The weekdays (0 = Sunday, as chrono counts them from Sunday) on which `expression`
    /// fires in the week of Sunday 2026-11-29 to Saturday 2026-12-05, taken from the calendar.
    fn days_fired(expression: &str) -> Vec<u32> {
        use chrono::Datelike;
        let calendar = Calendar::parse(expression, "UTC").unwrap();
        calendar
            .between(at("2026-11-28T12:00:00Z"), at("2026-12-05T23:59:59Z"), 100)
            .iter()
            .map(|instant| instant.weekday().num_days_from_sunday())
            .collect()
    }

    #[test]
    fn every_weekday_number_is_the_classic_day() {
        // chrono's own calendar: 2026-11-29 is a Sunday.
        assert_eq!(
            at("2026-11-29T04:00:00Z").format("%A").to_string(),
            "Sunday"
        );
        for number in 0..=7u32 {
            assert_eq!(
                days_fired(&format!("0 4 * * {number}")),
                [number % 7],
                "weekday {number}"
            );
        }
        for (index, name) in DAY_NAMES.iter().enumerate() {
            assert_eq!(days_fired(&format!("0 4 * * {name}")), [index as u32]);
            assert_eq!(
                days_fired(&format!("0 4 * * {}", name.to_lowercase())),
                [index as u32]
            );
        }
    }

    #[test]
    fn weekday_ranges_lists_and_steps_are_classic() {
        let cases: &[(&str, &[u32])] = &[
            ("1-5", &[1, 2, 3, 4, 5]), // Monday to Friday
            ("MON-FRI", &[1, 2, 3, 4, 5]),
            ("0-6", &[0, 1, 2, 3, 4, 5, 6]),
            ("*", &[0, 1, 2, 3, 4, 5, 6]),
            ("6-7", &[0, 6]), // the weekend: Saturday and Sunday (7)
            ("0,6", &[0, 6]),
            ("SAT,SUN", &[0, 6]),
            ("5-7", &[0, 5, 6]),
            ("1,3,5", &[1, 3, 5]),
            ("*/2", &[0, 2, 4, 6]),
            ("1-5/2", &[1, 3, 5]),
            ("2/2", &[2, 4, 6]),
            ("0-3,5", &[0, 1, 2, 3, 5]),
        ];
        for (field, days) in cases {
            let mut fired = days_fired(&format!("0 4 * * {field}"));
            fired.sort_unstable();
            assert_eq!(&fired, days, "weekday field {field:?}");
        }
    }

    #[test]
    fn day_of_month_and_weekday_both_restricted_match_either() {
        use chrono::Datelike;
        // Classic cron: every 13th *and* every Friday.
        let calendar = Calendar::parse("0 4 13 * 5", "UTC").unwrap();
        let fires = calendar.between(at("2026-11-01T00:00:00Z"), at("2026-11-30T23:59:59Z"), 100);
        let days: Vec<u32> = fires.iter().map(|instant| instant.day()).collect();
        assert_eq!(days, [6, 13, 20, 27]); // Fridays 6, 13, 20, 27 (13 is both)
        let fires = calendar.between(at("2026-12-01T00:00:00Z"), at("2026-12-31T23:59:59Z"), 100);
        let days: Vec<u32> = fires.iter().map(|instant| instant.day()).collect();
        assert_eq!(days, [4, 11, 13, 18, 25]);
        // Only one restricted: the other is `*`, so it is the restricted one alone.
        let fires = Calendar::parse("0 4 13 * *", "UTC").unwrap().between(
            at("2026-12-01T00:00:00Z"),
            at("2026-12-31T23:59:59Z"),
            100,
        );
        assert_eq!(fires.len(), 1);
    }

    #[test]
    fn legacy_expressions_are_rewritten_to_the_days_they_meant() {
        // Stored before: 1 = Sunday … 7 = Saturday.
        assert_eq!(
            legacy_to_names("0 4 * * 2-6").as_deref(),
            Some("0 4 * * MON,TUE,WED,THU,FRI")
        );
        assert_eq!(legacy_to_names("0 4 * * 1").as_deref(), Some("0 4 * * SUN"));
        assert_eq!(legacy_to_names("0 4 * * 7").as_deref(), Some("0 4 * * SAT"));
        assert_eq!(
            legacy_to_names("0 0 4 * * 2,4").as_deref(),
            Some("0 0 4 * * MON,WED")
        );
        assert_eq!(legacy_to_names("0 4 * * MON-FRI"), None);
        assert_eq!(legacy_to_names("0 4 * * *"), None);
        let rewritten = legacy_to_names("0 4 * * 2-6").unwrap();
        assert_eq!(days_fired(&rewritten), [1, 2, 3, 4, 5]);
    }
}
