//! `runbook validate <file.toml>`: check a runbook file locally, without a daemon, with the
//! same parser and action checks the daemon uses. Prints `ok: <name> v<version>, N steps`, or
//! every error, one per line in file order (each names file:line), and exits 4. Warnings (`file:line: warning: ...`, e.g. every `| raw` that
//! puts a value into a shell command unquoted) go to stderr and do not change the exit code.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::Context;
use crate::exit;
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The runbook file to check
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let file_name = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .map_err(|err| exit::invalid(format!("cannot read {file_name}: {err}")))?;
    // The actions a daemon of this build offers.
    let actions = runbook_runbooks::actions();
    let (definition, warnings) = runbook_engine::definition::check(&file_name, &text, &actions)
        .map_err(|err| exit::invalid(err.to_string()))?;
    for warning in &warnings {
        eprintln!("{warning}");
    }
    let step_count = definition.steps.len();
    if ctx.json {
        render::print_json(&json!({
            "ok": true,
            "file": file_name,
            "name": definition.name,
            "version": definition.version,
            "steps": step_count,
            "warnings": warnings,
        }))
    } else {
        let plural = if step_count == 1 { "" } else { "s" };
        render::print(&format!(
            "ok: {} v{}, {step_count} step{plural}\n",
            definition.name, definition.version
        ))
    }
}
