//! The commands of the `runbook` binary, one module per verb, and what they share: the
//! [`Context`] (data dir, client, `--json`), the runbook/params arguments of `plan` and `start`,
//! and the plumbing of operator actions (`approve`, `pause`, `retry`, ...).
//!
//! Every command follows the same shape: parse its arguments into a typed request, make the API
//! call(s), render. Data goes to stdout (`--json`: the daemon's JSON as is, pretty); progress,
//! confirmations and errors go to stderr.

pub mod access;
pub mod approve;
pub mod cancel;
pub mod daemon;
pub mod demo;
pub mod describe;
pub mod docs;
pub mod list;
pub mod logs;
pub mod pause;
pub mod plan;
pub mod ps;
pub mod resume;
pub mod retry;
pub mod rollback;
pub mod schedule;
pub mod shim;
pub mod show;
pub mod skip;
pub mod start;
pub mod store;
pub mod validate;
pub mod version;
pub mod watch;

use std::path::PathBuf;

use anyhow::Result;
use serde_json::{json, Map, Value};

use crate::client::{segment, Client};
use crate::exit;
use crate::render;

/// What every command gets besides its own arguments.
pub struct Context {
    pub data_dir: PathBuf,
    pub client: Client,
    /// `--json`: print the daemon's JSON response on stdout instead of tables.
    pub json: bool,
}

/// The runbook (by name or file) and params of `plan` and `start`.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// A runbook name, or the path of a runbook file (ends in `.toml` or contains `/`)
    #[arg(value_name = "NAME|FILE")]
    pub runbook: String,
    /// A param as `key=value`; repeat for more (values are parsed by the param's type)
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

impl Target {
    /// The body shared by `POST /v1/plan` and `POST /v1/runs`: `runbook` or `source`, and `params`.
    pub fn request(&self) -> Result<Map<String, Value>> {
        let mut body = Map::new();
        if looks_like_path(&self.runbook) {
            // Read as the daemon reads its runbooks dir: a regular file of at most 1 MiB, never a
            // blocking open (a larger one would not fit in a request anyway).
            let text = runbook_engine::catalog::read_file(std::path::Path::new(&self.runbook))
                .map_err(|err| {
                    exit::invalid(format!("cannot read runbook file {}: {err}", self.runbook))
                })?;
            body.insert(
                "source".to_string(),
                json!({"file": self.runbook, "text": text}),
            );
        } else {
            body.insert("runbook".to_string(), json!(self.runbook));
        }
        body.insert(
            "params".to_string(),
            Value::Object(parse_params(&self.params)?),
        );
        Ok(body)
    }
}

/// A runbook argument that names a file rather than a catalogue entry.
fn looks_like_path(runbook: &str) -> bool {
    runbook.ends_with(".toml") || runbook.contains('/')
}

/// `-p key=value` pairs into a JSON object of strings; the daemon parses them by type.
pub fn parse_params(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut params = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(exit::invalid(format!(
                "bad param `{pair}`: expected key=value (e.g. -p broker=broker-a)"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(exit::invalid(format!(
                "bad param `{pair}`: the name before `=` is empty"
            )));
        }
        if params.insert(key.to_string(), json!(value)).is_some() {
            return Err(exit::invalid(format!("param `{key}` is given twice")));
        }
    }
    Ok(params)
}

/// `/v1/runs/{run}` with the run id (or prefix) encoded.
pub fn run_path(run: &str) -> String {
    format!("/v1/runs/{}", segment(run))
}

/// The body of an operator action: `{"comment": ...}` or `{}`.
pub fn comment_body(comment: Option<String>) -> Map<String, Value> {
    let mut body = Map::new();
    if let Some(comment) = comment {
        body.insert("comment".to_string(), json!(comment));
    }
    body
}

/// Posts an operator action and reports it: a one-line confirmation on stderr (made by
/// `confirm` from the Run the daemon returns) and, with `--json`, that Run on stdout.
pub async fn operator_action(
    ctx: &Context,
    path: &str,
    body: Map<String, Value>,
    confirm: impl FnOnce(&Value) -> String,
) -> Result<()> {
    let run = ctx.client.post(path, Value::Object(body)).await?;
    eprintln!("{}", confirm(&run));
    if ctx.json {
        render::print_json(&run)?;
    }
    Ok(())
}

/// `run 0193a8c4-5e2f… (state: paused)`: how confirmations name a run.
pub fn run_label(run: &Value) -> String {
    let id = run["id"].as_str().unwrap_or("?");
    format!(
        "run {}… (state: {})",
        render::short_id(id),
        render::text(&run["state"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_reject_bad_pairs() {
        let pairs = vec!["a=1".to_string(), "b=x=y".to_string(), "c=".to_string()];
        let params = parse_params(&pairs).ok();
        assert_eq!(
            params.map(Value::Object),
            Some(json!({"a": "1", "b": "x=y", "c": ""}))
        );
        for bad in ["novalue", "=1"] {
            let err = parse_params(&[bad.to_string()]).err();
            assert_eq!(err.map(|err| exit::code_of(&err)), Some(exit::INVALID));
        }
        let twice = parse_params(&["a=1".to_string(), "a=2".to_string()]).err();
        assert!(twice.is_some());
    }

    #[test]
    fn paths_versus_names() {
        assert!(looks_like_path("my.toml"));
        assert!(looks_like_path("./dir/x"));
        assert!(!looks_like_path("rocketmq.broker.decommission"));
    }
}
