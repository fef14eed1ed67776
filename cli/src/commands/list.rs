//! `runbook list`: the runbooks the daemon knows, built-in and user files, as a table. A user
//! file that failed validation is listed too, marked `ERROR` with the daemon's message (which
//! names file:line), so a typo never makes a runbook silently disappear.

use anyhow::Result;
use serde_json::Value;

use super::Context;
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(ctx: &Context, _args: Args) -> Result<()> {
    let response = ctx.client.get("/v1/runbooks").await?;
    if ctx.json {
        return render::print_json(&response);
    }
    let runbooks = response["runbooks"].as_array().cloned().unwrap_or_default();
    if runbooks.is_empty() {
        eprintln!("no runbooks");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = runbooks.iter().map(row).collect();
    render::print(&render::table(&["NAME", "VERSION", "DESCRIPTION"], &rows))
}

fn row(runbook: &Value) -> Vec<String> {
    let name = match runbook["name"].as_str() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => render::text(&runbook["source"]),
    };
    match render::error_text(&runbook["error"]) {
        Some(error) => {
            // A file with several mistakes lists them one per line; the table shows the first.
            let more = error.lines().count().saturating_sub(1);
            let first = render::first_line(&error).to_string();
            let error = match more {
                0 => first,
                _ => format!("{first} (and {more} more: runbook describe {name})"),
            };
            vec![name, "-".to_string(), format!("ERROR: {error}")]
        }
        None => vec![
            name,
            render::text(&runbook["version"]),
            render::first_line(&render::text(&runbook["description"])).to_string(),
        ],
    }
}
