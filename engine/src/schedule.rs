//! Schedules: cron triggers that launch runbooks, durable in the store.
//!
//! The next fire instant is an ordinary durable timer, computed from the previous *scheduled*
//! instant, never from "now", so a schedule does not drift and a restart does not move it.
//! What happens to instants missed while the daemon was down is the schedule's catch-up policy;
//! what happens when the previous run is still going is its overlap policy. This module is the
//! pure part: the runtime (`runtime::schedules`) stores, arms and launches.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::calendar::Calendar;
use crate::machine::Actor;

/// A fire counts as on time when it comes at most this late; anything later is a catch-up.
pub const ON_TIME_TOLERANCE_MS: i64 = 5_000;
/// The most firings a schedule remembers.
const HISTORY: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not launch while a run of the schedule is still going.
    Skip,
    /// Launch when the running one ends.
    Queue,
    /// Launch anyway.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Instants missed during downtime are dropped.
    Skip,
    /// One run for all the missed instants (for the latest).
    Once,
    /// One run for each missed instant, at most `catch_up_max` (the latest ones).
    All,
}

/// One firing of a schedule, as remembered for `schedule show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub scheduled_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
    /// `started`, `catch_up`, `skipped_overlap`, `queued`, `missed`, `triggered`, `backfill`, `failed`.
    pub outcome: String,
    pub run: Option<Uuid>,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: Uuid,
    pub name: String,
    pub runbook: String,
    pub params: Map<String, Value>,
    pub cron: String,
    pub tz: String,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub catch_up_max: u32,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
    pub created_by: Actor,
    /// The next scheduled instant; armed as a timer unless paused.
    pub next_fire: Option<DateTime<Utc>>,
    pub last_scheduled: Option<DateTime<Utc>>,
    /// Runs it launched that had not ended when last looked at.
    pub active_runs: Vec<Uuid>,
    /// Launches waiting for the active run to end (overlap `queue`).
    pub queued: u32,
    pub history: Vec<Firing>,
    /// The cron expression's 5-field weekdays are classic (0/7 = Sunday, 1 = Monday); false on
    /// schedules stored before that, whose numbers counted 1 = Sunday (see [`Schedule::upgrade`]).
    #[serde(default)]
    pub classic_weekdays: bool,
}

impl Schedule {
    /// A schedule as loaded from the store: one stored before weekday numbers became classic
    /// has them rewritten as names, so it keeps firing on the days it always did (saved so at
    /// its next change or firing).
    pub fn upgrade(mut self) -> Schedule {
        if !self.classic_weekdays {
            if let Some(rewritten) = crate::calendar::legacy_to_names(&self.cron) {
                tracing::warn!(
                    schedule = %self.name,
                    before = %self.cron,
                    after = %rewritten,
                    "weekday numbers now count 0/7 = Sunday, 1 = Monday; the schedule's are written as names so that it keeps its days"
                );
                self.cron = rewritten;
            }
            self.classic_weekdays = true;
        }
        self
    }

    pub fn calendar(&self) -> Result<Calendar, String> {
        Calendar::parse(&self.cron, &self.tz)
    }

    pub fn remember(&mut self, firing: Firing) {
        self.history.push(firing);
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
    }
}

/// What a timer firing at `now` means: which scheduled instants to launch, which were missed,
/// and the next instant to arm.
#[derive(Debug, Clone, PartialEq)]
pub struct FirePlan {
    pub launch: Vec<(DateTime<Utc>, bool)>,
    pub missed: Vec<DateTime<Utc>>,
    pub next_fire: Option<DateTime<Utc>>,
}

/// Decides a firing. `launch` holds `(instant, is_catch_up)`.
pub fn plan_fire(schedule: &Schedule, calendar: &Calendar, now: DateTime<Utc>) -> FirePlan {
    let Some(first) = schedule.next_fire else {
        return FirePlan {
            launch: Vec::new(),
            missed: Vec::new(),
            next_fire: calendar.next_after(now),
        };
    };
    if first > now {
        return FirePlan {
            launch: Vec::new(),
            missed: Vec::new(),
            next_fire: Some(first),
        };
    }
    // Every scheduled instant from `first` up to now (bounded: a year of minutes is plenty).
    let mut due = vec![first];
    due.extend(calendar.between(first, now, 600_000));
    let last = *due.last().unwrap_or(&first);
    let next_fire = calendar.next_after(last);
    let on_time = due.len() == 1 && (now - first).num_milliseconds() <= ON_TIME_TOLERANCE_MS;
    if on_time {
        return FirePlan {
            launch: vec![(first, false)],
            missed: Vec::new(),
            next_fire,
        };
    }
    let keep = match schedule.catch_up {
        CatchUp::Skip => 0,
        CatchUp::Once => 1,
        CatchUp::All => schedule.catch_up_max.max(1) as usize,
    };
    let split = due.len().saturating_sub(keep);
    let missed = due[..split].to_vec();
    let launch = due[split..]
        .iter()
        .map(|instant| (*instant, true))
        .collect();
    FirePlan {
        launch,
        missed,
        next_fire,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn schedule(cron: &str, catch_up: CatchUp, next: &str) -> Schedule {
        Schedule {
            id: Uuid::nil(),
            name: "s".to_owned(),
            runbook: "demo".to_owned(),
            params: Map::new(),
            cron: cron.to_owned(),
            tz: "UTC".to_owned(),
            overlap: Overlap::Allow,
            catch_up,
            catch_up_max: 3,
            paused: false,
            created_at: at("2026-01-01T00:00:00Z"),
            created_by: Actor::uid(0),
            next_fire: Some(at(next)),
            last_scheduled: None,
            active_runs: Vec::new(),
            queued: 0,
            history: Vec::new(),
            classic_weekdays: true,
        }
    }

    fn check(catch_up: CatchUp, now: &str, launch: &[&str], missed: usize, next: &str) {
        let schedule = schedule("*/10 * * * * *", catch_up, "2026-01-01T00:00:10Z");
        let plan = plan_fire(&schedule, &schedule.calendar().unwrap(), at(now));
        let launched: Vec<String> = plan
            .launch
            .iter()
            .map(|(instant, _)| instant.to_rfc3339())
            .collect();
        let expected: Vec<String> = launch.iter().map(|text| at(text).to_rfc3339()).collect();
        assert_eq!(launched, expected, "{catch_up:?} at {now}");
        assert_eq!(plan.missed.len(), missed, "{catch_up:?} at {now}");
        assert_eq!(plan.next_fire, Some(at(next)));
    }

    #[test]
    fn an_on_time_fire_launches_its_instant_and_arms_the_next_from_it() {
        check(
            CatchUp::Skip,
            "2026-01-01T00:00:10.200Z",
            &["2026-01-01T00:00:10Z"],
            0,
            "2026-01-01T00:00:20Z",
        );
        // A little late is still on time, and the next instant comes from the schedule, not from now.
        check(
            CatchUp::Skip,
            "2026-01-01T00:00:14Z",
            &["2026-01-01T00:00:10Z"],
            0,
            "2026-01-01T00:00:20Z",
        );
    }

    #[test]
    fn downtime_follows_the_catch_up_policy() {
        // Down from before 00:10 until 00:45: 00:10, 00:20, 00:30, 00:40 were missed.
        let now = "2026-01-01T00:00:45Z";
        check(CatchUp::Skip, now, &[], 4, "2026-01-01T00:00:50Z");
        check(
            CatchUp::Once,
            now,
            &["2026-01-01T00:00:40Z"],
            3,
            "2026-01-01T00:00:50Z",
        );
        check(
            CatchUp::All,
            now,
            &[
                "2026-01-01T00:00:20Z",
                "2026-01-01T00:00:30Z",
                "2026-01-01T00:00:40Z",
            ],
            1,
            "2026-01-01T00:00:50Z",
        );
    }

    #[test]
    fn a_single_instant_fired_very_late_is_a_catch_up() {
        let schedule = schedule("0 4 * * *", CatchUp::Skip, "2026-01-01T04:00:00Z");
        let plan = plan_fire(
            &schedule,
            &schedule.calendar().unwrap(),
            at("2026-01-01T06:00:00Z"),
        );
        assert!(plan.launch.is_empty());
        assert_eq!(plan.missed.len(), 1);
        assert_eq!(plan.next_fire, Some(at("2026-01-02T04:00:00Z")));
    }
}
