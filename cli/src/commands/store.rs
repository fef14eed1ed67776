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
}

pub async fn run(ctx: &Context, command: Command) -> Result<()> {
    match command {
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
