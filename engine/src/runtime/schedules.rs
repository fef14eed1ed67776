//! The schedule service: keeps schedules in the store, fires them from the timer index, and
//! launches their runs under their overlap and catch-up policies.
//!
//! # Contract
//!
//! Every change to a schedule (and the move of its timer) is one durable commit; a schedule
//! survives a restart unchanged, with the same next instant.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Engine, Error, Resident};
use crate::definition;
use crate::machine::Actor;
use crate::schedule::{plan_fire, CatchUp, Firing, Overlap, Schedule};
use crate::store::ScheduleCommit;

/// What `schedule add` asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub name: String,
    pub runbook: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    pub cron: String,
    #[serde(default)]
    pub tz: Option<String>,
    #[serde(default)]
    pub overlap: Option<Overlap>,
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    #[serde(default)]
    pub catch_up_max: Option<u32>,
    #[serde(default)]
    pub paused: bool,
}

fn invalid(message: String, field: &str) -> Error {
    Error::Invalid {
        message,
        field: Some(field.to_owned()),
    }
}

/// The most instants one backfill request launches; the rest of the range is left for the
/// next request (from [`Backfill::rest`]).
pub const BACKFILL_LIMIT: usize = 1000;

/// What a backfill did.
#[derive(Debug, Clone)]
pub struct Backfill {
    pub instants: Vec<DateTime<Utc>>,
    pub firings: Vec<Firing>,
    /// The first instant of the range beyond [`BACKFILL_LIMIT`]: backfill again from there.
    pub rest: Option<DateTime<Utc>>,
}

impl Engine {
    /// Adds a schedule and arms its first instant.
    pub async fn add_schedule(&self, spec: ScheduleSpec, by: Actor) -> Result<Schedule, Error> {
        let name = spec.name.trim().to_owned();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(invalid(
                format!("schedule name {name:?}: use letters, digits, '.', '_' and '-'"),
                "name",
            ));
        }
        let entry = self.inner.catalog.get(&spec.runbook).ok_or_else(|| {
            Error::NotFound(format!(
                "no runbook {:?} (see `runbook list`)",
                spec.runbook
            ))
        })?;
        let definition = entry
            .definition
            .map_err(|error| invalid(error, "runbook"))?;
        definition::resolve_params(&definition, &spec.params)
            .map_err(|error| invalid(format!("schedule {name}: {error}"), &error.field()))?;
        let tz = spec.tz.unwrap_or_else(|| "UTC".to_owned());
        let mut schedule = Schedule {
            id: super::new_run_id(self.inner.clock.now()),
            name: name.clone(),
            runbook: spec.runbook,
            params: spec.params,
            cron: spec.cron,
            tz,
            overlap: spec.overlap.unwrap_or(Overlap::Skip),
            catch_up: spec.catch_up.unwrap_or(CatchUp::Once),
            catch_up_max: spec.catch_up_max.unwrap_or(10).max(1),
            paused: spec.paused,
            created_at: self.inner.clock.now(),
            created_by: by,
            next_fire: None,
            last_scheduled: None,
            active_runs: Vec::new(),
            queued: 0,
            history: Vec::new(),
            classic_weekdays: true,
        };
        crate::calendar::zone(&schedule.tz).map_err(|message| invalid(message, "tz"))?;
        let calendar = schedule
            .calendar()
            .map_err(|message| invalid(message, "cron"))?;
        schedule.next_fire = calendar.next_after(self.inner.clock.now());
        if schedule.next_fire.is_none() {
            return Err(invalid(
                format!("cron {:?} never fires", schedule.cron),
                "cron",
            ));
        }
        let mut schedules = self.inner.schedules.lock().await;
        if schedules.contains_key(&name) {
            return Err(Error::Conflict(format!(
                "a schedule named {name:?} exists; remove it first"
            )));
        }
        self.inner
            .writer
            .commit_schedule(ScheduleCommit::put(&schedule, None)?)
            .await?;
        schedules.insert(name, schedule.clone());
        self.inner.timer_wake.notify_one();
        Ok(schedule)
    }

    pub async fn schedules(&self) -> Vec<Schedule> {
        self.inner
            .schedules
            .lock()
            .await
            .values()
            .cloned()
            .collect()
    }

    pub async fn schedule(&self, name: &str) -> Result<Schedule, Error> {
        self.inner
            .schedules
            .lock()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Pauses or resumes a schedule. Resuming arms the next instant after now: what fell due
    /// while paused is not caught up (that is what pausing means).
    pub async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<Schedule, Error> {
        let mut schedules = self.inner.schedules.lock().await;
        let schedule = schedules.get_mut(name).ok_or_else(|| not_found(name))?;
        if schedule.paused == paused {
            return Err(Error::Conflict(format!(
                "schedule {name} is already {}",
                if paused { "paused" } else { "running" }
            )));
        }
        let old_fire = schedule.next_fire.filter(|_| !schedule.paused);
        let mut next = schedule.clone();
        next.paused = paused;
        if !paused {
            let calendar = next
                .calendar()
                .map_err(|message| invalid(message, "cron"))?;
            next.next_fire = calendar.next_after(self.inner.clock.now());
        }
        self.inner
            .writer
            .commit_schedule(ScheduleCommit::put(&next, old_fire)?)
            .await?;
        *schedule = next.clone();
        self.inner.timer_wake.notify_one();
        Ok(next)
    }

    pub async fn remove_schedule(&self, name: &str) -> Result<Schedule, Error> {
        let mut schedules = self.inner.schedules.lock().await;
        let schedule = schedules
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        let old_fire = schedule.next_fire.filter(|_| !schedule.paused);
        self.inner
            .writer
            .commit_schedule(ScheduleCommit::delete(&schedule, old_fire))
            .await?;
        schedules.remove(name);
        Ok(schedule)
    }

    /// Runs a schedule now (its overlap policy applies).
    pub async fn trigger_schedule(&self, name: &str) -> Result<Schedule, Error> {
        let mut schedules = self.inner.schedules.lock().await;
        let schedule = schedules.get_mut(name).ok_or_else(|| not_found(name))?;
        let mut next = schedule.clone();
        let now = self.inner.clock.now();
        let firing = self.launch_with_overlap(&mut next, now, "triggered").await;
        if firing.outcome == "skipped_overlap" {
            return Err(Error::Conflict(format!(
                "schedule {name}: {} (overlap policy skip)",
                firing.detail.unwrap_or_default()
            )));
        }
        next.remember(firing);
        self.save(schedule, next).await
    }

    /// The first [`BACKFILL_LIMIT`] instants of `[from, to]`, and with `dry_run = false` a run
    /// for each; `rest` is the first instant left out, if the range had more.
    pub async fn backfill_schedule(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Backfill, Error> {
        if from > to {
            return Err(invalid(
                format!("backfill: --from {from} is after --to {to}"),
                "from",
            ));
        }
        let mut schedules = self.inner.schedules.lock().await;
        let schedule = schedules.get_mut(name).ok_or_else(|| not_found(name))?;
        let calendar = schedule
            .calendar()
            .map_err(|message| invalid(message, "cron"))?;
        let mut instants =
            calendar.between(crate::duration::after_ms(from, -1), to, BACKFILL_LIMIT + 1);
        // One more than the limit tells whether the range goes on; the caller says where.
        let rest = (instants.len() > BACKFILL_LIMIT).then(|| instants[BACKFILL_LIMIT]);
        instants.truncate(BACKFILL_LIMIT);
        if dry_run {
            return Ok(Backfill {
                instants,
                firings: Vec::new(),
                rest,
            });
        }
        let mut next = schedule.clone();
        let mut firings = Vec::new();
        for instant in &instants {
            let firing = self.launch(&mut next, *instant, "backfill").await;
            next.remember(firing.clone());
            firings.push(firing);
        }
        self.save(schedule, next).await?;
        Ok(Backfill {
            instants,
            firings,
            rest,
        })
    }

    /// Fires the schedule whose id is `id`. Returns `None` when `id` is no schedule, else the
    /// instant its timer is armed for afterwards (`Some(None)`: none).
    pub(crate) async fn fire_schedule(&self, id: Uuid) -> Option<Option<DateTime<Utc>>> {
        let mut schedules = self.inner.schedules.lock().await;
        let schedule = schedules.values_mut().find(|schedule| schedule.id == id)?;
        if schedule.paused {
            return Some(None);
        }
        let calendar = match schedule.calendar() {
            Ok(calendar) => calendar,
            Err(error) => {
                tracing::error!(schedule = %schedule.name, %error, "schedule cannot compute its instants");
                return Some(None);
            }
        };
        let now = self.inner.clock.now();
        let plan = plan_fire(schedule, &calendar, now);
        let mut next = schedule.clone();
        self.prune(&mut next).await;
        if next.active_runs.is_empty() && next.queued > 0 {
            next.queued -= 1;
            let firing = self.launch(&mut next, now, "queued_start").await;
            next.remember(firing);
        }
        for missed in &plan.missed {
            next.remember(Firing {
                scheduled_at: *missed,
                at: now,
                outcome: "missed".to_owned(),
                run: None,
                detail: None,
            });
        }
        for (instant, catch_up) in &plan.launch {
            let firing = self
                .launch_with_overlap(
                    &mut next,
                    *instant,
                    if *catch_up { "catch_up" } else { "started" },
                )
                .await;
            next.remember(firing);
        }
        if let Some(last) = plan
            .launch
            .last()
            .map(|(instant, _)| *instant)
            .or(plan.missed.last().copied())
        {
            next.last_scheduled = Some(last);
        }
        next.next_fire = plan.next_fire;
        // A crash here leaves the runs launched and the schedule as it was: the instants fire
        // again at restart, and their claims make the launches find the runs instead.
        crate::failpoint::hit(crate::failpoint::Failpoint::ScheduleLaunchedBeforeSaved);
        if let Err(error) = self.save(schedule, next).await {
            tracing::error!(%error, "cannot store a schedule's firing; trying again in a second");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        Some(schedule.next_fire.filter(|_| !schedule.paused))
    }

    /// A run launched by schedule `name` ended: start a queued one.
    pub(crate) async fn schedule_run_ended(&self, name: &str, run_id: Uuid) {
        let mut schedules = self.inner.schedules.lock().await;
        let Some(schedule) = schedules.get_mut(name) else {
            return;
        };
        let mut next = schedule.clone();
        next.active_runs.retain(|active| *active != run_id);
        if next.active_runs.is_empty() && next.queued > 0 {
            next.queued -= 1;
            let firing = self
                .launch(&mut next, self.inner.clock.now(), "queued_start")
                .await;
            next.remember(firing);
        }
        if next != *schedule {
            if let Err(error) = self.save(schedule, next).await {
                tracing::error!(%error, "cannot store a schedule's change");
            }
        }
    }

    async fn save(&self, slot: &mut Schedule, next: Schedule) -> Result<Schedule, Error> {
        let old_fire = slot.next_fire.filter(|_| !slot.paused);
        self.inner
            .writer
            .commit_schedule(ScheduleCommit::put(&next, old_fire)?)
            .await?;
        *slot = next.clone();
        self.inner.timer_wake.notify_one();
        Ok(next)
    }

    /// Forgets runs that have ended.
    async fn prune(&self, schedule: &mut Schedule) {
        let mut still_active = Vec::new();
        for run_id in &schedule.active_runs {
            if let Ok(Resident::Live(state)) = self.get(*run_id).await {
                if !state.status.is_terminal() {
                    still_active.push(*run_id);
                }
            }
        }
        schedule.active_runs = still_active;
    }

    async fn launch_with_overlap(
        &self,
        schedule: &mut Schedule,
        instant: DateTime<Utc>,
        outcome: &str,
    ) -> Firing {
        self.prune(schedule).await;
        let now = self.inner.clock.now();
        if let Some(active) = schedule.active_runs.first().copied() {
            match schedule.overlap {
                Overlap::Skip => {
                    return Firing {
                        scheduled_at: instant,
                        at: now,
                        outcome: "skipped_overlap".to_owned(),
                        run: None,
                        detail: Some(format!("run {active} is still active")),
                    }
                }
                Overlap::Queue => {
                    schedule.queued += 1;
                    return Firing {
                        scheduled_at: instant,
                        at: now,
                        outcome: "queued".to_owned(),
                        run: None,
                        detail: Some(format!("waits for run {active}")),
                    };
                }
                Overlap::Allow => {}
            }
        }
        self.launch(schedule, instant, outcome).await
    }

    async fn launch(
        &self,
        schedule: &mut Schedule,
        instant: DateTime<Utc>,
        outcome: &str,
    ) -> Firing {
        let now = self.inner.clock.now();
        let failed = |detail: String| Firing {
            scheduled_at: instant,
            at: now,
            outcome: "failed".to_owned(),
            run: None,
            detail: Some(detail),
        };
        let Some(entry) = self.inner.catalog.get(&schedule.runbook) else {
            return failed(format!("no runbook {:?}", schedule.runbook));
        };
        let definition = match entry.definition {
            Ok(definition) => definition,
            Err(error) => return failed(error),
        };
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let by = Actor {
            name: Some(format!("schedule:{}", schedule.name)),
            ..Actor::uid(uid)
        };
        let comment = Some(format!(
            "schedule {} ({outcome}) for {}",
            schedule.name,
            instant.to_rfc3339()
        ));
        // A scheduled instant is launched once, ever (a queued start has no instant of its own).
        // (A backfill is the operator's explicit request: its launches are claimed apart.)
        let claim = (outcome != "queued_start").then(|| {
            format!(
                "schedule {} ({}) {} {}",
                schedule.name,
                schedule.id,
                if outcome == "backfill" {
                    "backfill of"
                } else {
                    "instant"
                },
                instant.to_rfc3339()
            )
        });
        match self
            .create_claimed_run(definition, &schedule.params, by, comment, claim)
            .await
        {
            Ok(Ok(state)) => {
                schedule.active_runs.push(state.id);
                Firing {
                    scheduled_at: instant,
                    at: now,
                    outcome: outcome.to_owned(),
                    run: Some(state.id),
                    detail: None,
                }
            }
            Ok(Err(holder)) => {
                tracing::info!(schedule = %schedule.name, run = %holder, "instant already launched (before a restart)");
                if !schedule.active_runs.contains(&holder) {
                    schedule.active_runs.push(holder);
                }
                Firing {
                    scheduled_at: instant,
                    at: now,
                    outcome: outcome.to_owned(),
                    run: Some(holder),
                    detail: Some("launched before a restart".to_owned()),
                }
            }
            Err(error) => {
                tracing::warn!(schedule = %schedule.name, %error, "a scheduled run could not start");
                failed(error.to_string())
            }
        }
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("no schedule {name:?} (see `runbook schedule ls`)"))
}
