//! `runbook version`: this client's version and the daemon's (`/v1/version`), with the journal
//! format each writes. A daemon that does not answer is an error (after the client's line).

use anyhow::Result;
use serde_json::{json, Value};

use super::Context;
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(ctx: &Context, _args: Args) -> Result<()> {
    let client = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "journal_format": runbook_engine::store::envelope::FORMAT,
    });
    let daemon = ctx.client.get("/v1/version").await;
    if ctx.json {
        let daemon = daemon?;
        return render::print_json(&json!({ "client": client, "daemon": daemon }));
    }
    println!("client  {}", line(&client));
    let daemon = daemon?;
    println!("daemon  {}", line(&daemon));
    match daemon["store"]["kind"].as_str() {
        Some("postgres") => println!(
            "store   postgres: active daemon {}, lease epoch {}",
            render::text(&daemon["store"]["active"]),
            render::text(&daemon["store"]["epoch"])
        ),
        Some(kind) => println!("store   {kind}"),
        None => {}
    }
    if let Some(listener) = daemon["listener"].as_object() {
        println!(
            "listen  https://{} (certificate sha256 {})",
            render::text(&listener["addr"]),
            render::text(&listener["fingerprint"])
        );
    }
    Ok(())
}

fn line(version: &Value) -> String {
    format!(
        "{} (journal format {})",
        render::text(&version["version"]),
        render::text(&version["journal_format"])
    )
}
