//! `runbook store verify`: read every record of the store and check its envelope (format,
//! checksum, payload). Asks the running daemon; with no daemon, opens the store itself.
//! Exits 1 naming every bad record.

use anyhow::Result;
use serde_json::{json, Value};

use super::Context;
use crate::render;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check every record; exit 1 naming what is wrong
    Verify,
    /// Delete finished runs past the daemon's `--retain` now (the daemon also does it every
    /// ten minutes); say what was removed
    Gc {
        /// Only list what would be removed
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy the embedded store of --data-dir (stop its daemon first) into an empty PostgreSQL
    /// store: every run, event, schedule, user and token, each record read back and checked.
    /// The connection string comes from RUNBOOK_POSTGRES_URL or --postgres-url-file
    Copy {
        /// Where to: `postgres`
        #[arg(long, value_name = "KIND")]
        to: String,
        /// A file holding the PostgreSQL connection string
        #[arg(long, value_name = "FILE")]
        postgres_url_file: Option<std::path::PathBuf>,
        /// TLS to PostgreSQL: the CA certificate(s) (PEM) that signed the server's certificate
        #[arg(long, value_name = "FILE")]
        postgres_ca_file: Option<std::path::PathBuf>,
    },
}

pub async fn run(ctx: &Context, command: Command) -> Result<()> {
    match command {
        Command::Copy {
            to,
            postgres_url_file,
            postgres_ca_file,
        } => {
            if to != "postgres" {
                anyhow::bail!("store copy --to {to:?}: only `postgres`");
            }
            let postgres = runbook_engine::daemon::Postgres {
                url: super::daemon::postgres_url(postgres_url_file.as_deref())?,
                lease_ttl: std::time::Duration::from_secs(60),
                ca_file: postgres_ca_file,
            };
            let data_dir = ctx.data_dir.clone();
            let (report, problems) = tokio::task::spawn_blocking(move || {
                runbook_engine::daemon::copy_to_postgres(&data_dir, &postgres)
            })
            .await??;
            if ctx.json {
                render::print_json(&json!({ "copied": report, "problems": problems }))?;
            } else {
                for (tree, count) in &report.records {
                    println!("{tree:<18} {count}");
                }
            }
            if !problems.is_empty() {
                for problem in &problems {
                    eprintln!("{problem}");
                }
                anyhow::bail!("store copy: the copy has {} bad record(s)", problems.len());
            }
            eprintln!(
                "store copy: {} run(s) ({} taken out of the archive), {} bytes, copied from {} and read back; every record checks out",
                report.runs,
                report.unarchived_runs,
                report.bytes,
                ctx.data_dir.display()
            );
            Ok(())
        }
        Command::Gc { dry_run } => {
            let path = if dry_run {
                "/v1/store/gc?dry_run=true"
            } else {
                "/v1/store/gc"
            };
            let report = ctx.client.post(path, json!({})).await?;
            if ctx.json {
                return render::print_json(&report);
            }
            let count = report["count"].as_u64().unwrap_or(0);
            let Some(retain) = report["retain_seconds"].as_u64() else {
                eprintln!("store gc: the daemon keeps every run (--retain 0); nothing removed");
                return Ok(());
            };
            for run in report["runs"].as_array().into_iter().flatten() {
                println!("{}", run.as_str().unwrap_or_default());
            }
            eprintln!(
                "store gc: {} {count} finished run(s) older than {} ({} bytes of logs and call dirs{})",
                if dry_run { "would remove" } else { "removed" },
                humantime::format_duration(std::time::Duration::from_secs(retain)),
                report["file_bytes"].as_u64().unwrap_or(0),
                match report["archive_bytes"].as_u64() {
                    Some(bytes) if !dry_run => format!(", {bytes} bytes of archive segments"),
                    _ => String::new(),
                }
            );
            Ok(())
        }
        Command::Verify => {
            let report = match ctx.client.get("/v1/store/verify").await {
                Ok(report) => report,
                Err(error) if error.is_unreachable() => {
                    let problems = runbook_engine::daemon::verify_offline(&ctx.data_dir)?;
                    json!({ "ok": problems.is_empty(), "problems": problems })
                }
                Err(error) => return Err(error.into()),
            };
            if ctx.json {
                render::print_json(&report)?;
            } else {
                for problem in report["problems"].as_array().into_iter().flatten() {
                    println!("{}", problem.as_str().unwrap_or_default());
                }
            }
            let count = report["problems"].as_array().map_or(0, Vec::len);
            if report["ok"] != Value::Bool(true) {
                anyhow::bail!(
                    "store verify: {count} bad record(s) in {}",
                    ctx.data_dir.display()
                );
            }
            eprintln!(
                "store verify: every record of {} is sound",
                ctx.data_dir.display()
            );
            Ok(())
        }
    }
}
