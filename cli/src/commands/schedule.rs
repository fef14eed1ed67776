//! `runbook schedule add|ls|show|pause|resume|rm|trigger|backfill`: cron triggers that launch
//! runbooks, kept by the daemon in its store.
//!
//! Cron expressions take 5 fields (minute hour day month weekday), classic: weekdays 0 or 7 =
//! Sunday, 1 = Monday … 6 = Saturday; or 6-7 with seconds (and years), weekdays as names.

use anyhow::Result;
use serde_json::{json, Value};

use super::{parse_params, Context};
use crate::client::segment;
use crate::exit;
use crate::render;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add a schedule
    Add(AddArgs),
    /// List schedules
    Ls,
    /// Show a schedule: next instant, policies, recent firings
    Show(NameArgs),
    /// Stop firing (nothing missed while paused is caught up)
    Pause(NameArgs),
    /// Fire again, from the next instant after now
    Resume(NameArgs),
    /// Remove a schedule (its runs go on)
    Rm(NameArgs),
    /// Launch a run now (the overlap policy applies)
    Trigger(NameArgs),
    /// Launch a run for every instant in [--from, --to]; --dry-run lists them
    Backfill(BackfillArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The schedule's name
    pub name: String,
    /// The runbook to launch
    #[arg(long)]
    pub runbook: String,
    /// A param as `key=value`; repeat for more
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// When: `MIN HOUR DAY MONTH WEEKDAY`, or with seconds first (6-7 fields)
    #[arg(long)]
    pub cron: String,
    /// IANA time zone of the expression
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// When the previous run of the schedule still runs
    #[arg(long, value_parser = ["skip", "queue", "allow"], default_value = "skip")]
    pub overlap: String,
    /// What to do with instants missed while the daemon was down
    #[arg(long = "catch-up", value_parser = ["skip", "once", "all"], default_value = "once")]
    pub catch_up: String,
    /// With `--catch-up all`: at most this many catch-up runs
    #[arg(long = "catch-up-max", default_value_t = 10)]
    pub catch_up_max: u32,
    /// Add it paused
    #[arg(long)]
    pub paused: bool,
}

#[derive(Debug, clap::Args)]
pub struct NameArgs {
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    pub name: String,
    /// First instant (RFC 3339), inclusive
    #[arg(long)]
    pub from: String,
    /// Last instant (RFC 3339), inclusive
    #[arg(long)]
    pub to: String,
    /// Only list the instants
    #[arg(long)]
    pub dry_run: bool,
}

fn path(name: &str) -> String {
    format!("/v1/schedules/{}", segment(name))
}

pub async fn run(ctx: &Context, command: Command) -> Result<()> {
    match command {
        Command::Add(args) => {
            // The zone is checked here so that the error names the flag, not the cron.
            if let Err(message) = runbook_engine::calendar::zone(&args.tz) {
                return Err(exit::invalid(format!("--tz: {message}")));
            }
            let body = json!({
                "name": args.name, "runbook": args.runbook, "params": parse_params(&args.params)?,
                "cron": args.cron, "tz": args.tz, "overlap": args.overlap, "catch_up": args.catch_up,
                "catch_up_max": args.catch_up_max, "paused": args.paused,
            });
            let schedule = ctx.client.post("/v1/schedules", body).await?;
            done(ctx, &schedule, "added")
        }
        Command::Ls => {
            let listed = ctx.client.get("/v1/schedules").await?;
            if ctx.json {
                return render::print_json(&listed);
            }
            let now = render::now();
            let rows: Vec<Vec<String>> = listed["schedules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|schedule| {
                    vec![
                        render::text(&schedule["name"]),
                        render::text(&schedule["runbook"]),
                        format!(
                            "{} {}",
                            render::text(&schedule["cron"]),
                            render::text(&schedule["tz"])
                        ),
                        next_fire(schedule, now),
                        format!(
                            "{}/{}",
                            render::text(&schedule["overlap"]),
                            render::text(&schedule["catch_up"])
                        ),
                    ]
                })
                .collect();
            render::print(&render::table(
                &["NAME", "RUNBOOK", "CRON", "NEXT", "OVERLAP/CATCH-UP"],
                &rows,
            ))
        }
        Command::Show(args) => {
            let schedule = ctx.client.get(&path(&args.name)).await?;
            if ctx.json {
                return render::print_json(&schedule);
            }
            show(&schedule)
        }
        Command::Pause(args) => {
            let schedule = ctx
                .client
                .post(&format!("{}/pause", path(&args.name)), json!({}))
                .await?;
            done(ctx, &schedule, "paused")
        }
        Command::Resume(args) => {
            let schedule = ctx
                .client
                .post(&format!("{}/resume", path(&args.name)), json!({}))
                .await?;
            done(ctx, &schedule, "resumed")
        }
        Command::Rm(args) => {
            let schedule = ctx.client.delete(&path(&args.name)).await?;
            done(ctx, &schedule, "removed")
        }
        Command::Trigger(args) => {
            let schedule = ctx
                .client
                .post(&format!("{}/trigger", path(&args.name)), json!({}))
                .await?;
            if ctx.json {
                return render::print_json(&schedule);
            }
            let last = schedule["history"]
                .as_array()
                .and_then(|history| history.last())
                .cloned()
                .unwrap_or(Value::Null);
            eprintln!(
                "triggered {}: {} run {}",
                render::text(&schedule["name"]),
                render::text(&last["outcome"]),
                render::text(&last["run"])
            );
            Ok(())
        }
        Command::Backfill(args) => {
            for (flag, value) in [("--from", &args.from), ("--to", &args.to)] {
                if let Err(error) = chrono::DateTime::parse_from_rfc3339(value) {
                    return Err(exit::invalid(format!(
                        "{flag} {value:?} is not an RFC 3339 instant ({error}); write e.g. \
                         2026-01-01T00:00:00Z or 2026-01-01T02:00:00+02:00"
                    )));
                }
            }
            let body = json!({"from": args.from, "to": args.to, "dry_run": args.dry_run});
            let result = ctx
                .client
                .post(&format!("{}/backfill", path(&args.name)), body)
                .await?;
            if ctx.json {
                return render::print_json(&result);
            }
            let instants = result["instants"].as_array().cloned().unwrap_or_default();
            let firings = result["firings"].as_array().cloned().unwrap_or_default();
            for (index, instant) in instants.iter().enumerate() {
                let firing = firings.get(index).map(|firing| {
                    format!(
                        "  {} {}",
                        render::text(&firing["outcome"]),
                        render::text(&firing["run"])
                    )
                });
                println!("{}{}", render::text(instant), firing.unwrap_or_default());
            }
            eprintln!(
                "{} instant(s){}",
                instants.len(),
                if args.dry_run {
                    " (dry run: nothing launched)"
                } else {
                    ""
                }
            );
            if result["truncated"] == true {
                eprintln!(
                    "{}",
                    backfill_rest_hint(
                        &render::text(&result["limit"]),
                        &args.name,
                        &render::text(&result["next_from"]),
                        &args.to
                    )
                );
            }
            Ok(())
        }
    }
}

fn done(ctx: &Context, schedule: &Value, verb: &str) -> Result<()> {
    if ctx.json {
        return render::print_json(schedule);
    }
    eprintln!(
        "{verb} schedule {} (next: {})",
        render::text(&schedule["name"]),
        next_fire(schedule, render::now())
    );
    Ok(())
}

fn next_fire(schedule: &Value, now: chrono::DateTime<chrono::Utc>) -> String {
    if schedule["paused"] == true {
        return "paused".to_owned();
    }
    match render::time(&schedule["next_fire"]) {
        Some(at) => format!("{} ({})", render::timestamp(at), render::relative(at, now)),
        None => "-".to_owned(),
    }
}

fn show(schedule: &Value) -> Result<()> {
    let now = render::now();
    let mut out = String::new();
    for (label, value) in [
        ("schedule", render::text(&schedule["name"])),
        ("runbook", render::text(&schedule["runbook"])),
        ("params", render::compact(&schedule["params"])),
        (
            "cron",
            format!(
                "{} ({})",
                render::text(&schedule["cron"]),
                render::text(&schedule["tz"])
            ),
        ),
        ("next", next_fire(schedule, now)),
        ("overlap", render::text(&schedule["overlap"])),
        (
            "catch-up",
            format!(
                "{} (max {})",
                render::text(&schedule["catch_up"]),
                render::text(&schedule["catch_up_max"])
            ),
        ),
        ("queued", render::text(&schedule["queued"])),
    ] {
        out.push_str(&format!("{label:<9} {value}\n"));
    }
    let rows: Vec<Vec<String>> = schedule["history"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(20)
        .map(|firing| {
            vec![
                render::time(&firing["scheduled_at"])
                    .map(render::timestamp)
                    .unwrap_or_default(),
                render::text(&firing["outcome"]),
                render::text(&firing["run"]),
                render::text(&firing["detail"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str("\nrecent firings:\n");
        out.push_str(&render::table(
            &["SCHEDULED", "OUTCOME", "RUN", "DETAIL"],
            &rows,
        ));
    }
    render::print(&out)
}

/// What a truncated backfill says: the command that covers the rest of the range.
pub(crate) fn backfill_rest_hint(limit: &str, name: &str, next_from: &str, to: &str) -> String {
    format!(
        "stopped after {limit} instants, the most one backfill covers; the range goes on: \
         run `runbook schedule backfill {name} --from {next_from} --to {to}` for the rest"
    )
}
