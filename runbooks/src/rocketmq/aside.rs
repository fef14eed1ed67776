//! `rocketmq.move_aside`: files or directories an upgrade guide says to delete (a controller's
//! data, a broker's epoch files) moved aside instead, so a mistake can be undone.
//!
//! Input: `paths` (absolute, or relative to `dir`; may use `{{ var }}` placeholders from `vars`),
//! optional `into` (a
//! directory; default `.runbook-removed` beside each path, on the same filesystem) — or `moves`
//! (`[{from, to}]`, explicit pairs: what the undo passes). Output: `moved [{from, to}]` (renamed
//! now), `already [{from, to}]` (found moved by an earlier attempt), `absent` (neither there nor
//! moved), `undo_moves` (the pairs reversed, for the undo).
//!
//! # Contract
//!
//! Nothing is deleted and nothing is overwritten: a path whose place aside is taken by something
//! else is refused before anything moves. Each move is a `rename` (same filesystem), followed by
//! an fsync of both directories and a check that the path is gone and its copy is there.

use std::path::{Path, PathBuf};

use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::files::{render_placeholders, vars};
use super::host_files::{io_error, sync_dir};
use super::input::Input;

/// The input of `rocketmq.move_aside`.
pub const SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        optional(
            "paths",
            Kind::List,
            "paths to move aside: absolute, or relative to `dir`",
        ),
        optional("dir", Kind::Text, "the directory relative paths are in"),
        optional(
            "into",
            Kind::Text,
            "the directory they go into (default: .runbook-removed beside each)",
        ),
        optional(
            "vars",
            Kind::Table,
            "values of the placeholders in paths and into",
        ),
        optional(
            "moves",
            Kind::Records,
            "explicit [{from, to}] pairs (the undo)",
        ),
    ],
};

/// How many paths one step may move.
const MAX_PATHS: usize = 256;

pub async fn run(input: Value, _context: ActionContext) -> Result<Value, ActionFailure> {
    let reader = Input::new("rocketmq.move_aside", &input);
    let pairs = pairs(&reader)?;
    tokio::task::spawn_blocking(move || move_all(&pairs))
        .await
        .map_err(|error| ActionFailure::permanent(format!("rocketmq.move_aside: {error}")))?
}

/// The (from, to) pairs the input names, every path absolute.
fn pairs(reader: &Input<'_>) -> Result<Vec<(PathBuf, PathBuf)>, ActionFailure> {
    let absolute = |field: &str, text: &str| -> Result<PathBuf, ActionFailure> {
        if !Path::new(text).is_absolute()
            || text.contains('\n')
            || text.split('/').any(|part| part == "..")
        {
            return Err(reader.bad(
                field,
                format!("{text:?} is not an absolute path without `..`"),
            ));
        }
        Ok(PathBuf::from(text))
    };
    let pairs = match (reader.get("moves"), reader.get("paths")) {
        (Some(_), Some(_)) => return Err(reader.bad("moves", "give `paths` or `moves`, not both")),
        (Some(Value::Array(moves)), None) => moves
            .iter()
            .map(|pair| {
                let from = pair["from"].as_str().unwrap_or_default();
                let to = pair["to"].as_str().unwrap_or_default();
                Ok((absolute("moves", from)?, absolute("moves", to)?))
            })
            .collect::<Result<Vec<_>, ActionFailure>>()?,
        (Some(other), None) => {
            return Err(reader.bad(
                "moves",
                format!("must be a list of {{from, to}}, not {other}"),
            ))
        }
        (None, _) => {
            let vars = vars(reader)?;
            let into = match reader.opt_string("into")? {
                Some(into) => Some(absolute(
                    "into",
                    &render_placeholders(reader, "into", &into, &vars)?,
                )?),
                None => None,
            };
            let dir = match reader.opt_string("dir")? {
                Some(dir) => Some(absolute(
                    "dir",
                    &render_placeholders(reader, "dir", &dir, &vars)?,
                )?),
                None => None,
            };
            let mut pairs = Vec::new();
            for path in reader.string_list("paths")? {
                let path = render_placeholders(reader, "paths", &path, &vars)?;
                let path = match &dir {
                    Some(dir) if !path.starts_with('/') => {
                        absolute("paths", &dir.join(&path).display().to_string())?
                    }
                    _ => absolute("paths", &path)?,
                };
                let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                    return Err(reader.bad("paths", format!("{} names no file", path.display())));
                };
                let dir = into
                    .clone()
                    .unwrap_or_else(|| parent.join(".runbook-removed"));
                pairs.push((path.clone(), dir.join(name)));
            }
            pairs
        }
    };
    if pairs.is_empty() {
        return Err(reader.bad("paths", "names nothing to move"));
    }
    if pairs.len() > MAX_PATHS {
        return Err(reader.bad(
            "paths",
            format!("{} paths; at most {MAX_PATHS}", pairs.len()),
        ));
    }
    Ok(pairs)
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

fn move_all(pairs: &[(PathBuf, PathBuf)]) -> Result<Value, ActionFailure> {
    // Check every pair before moving any.
    for (from, to) in pairs {
        if exists(from) && exists(to) {
            return Err(ActionFailure::permanent(format!(
                "{} cannot be moved aside: {} already exists (nothing moved; move one of them yourself)",
                from.display(),
                to.display()
            )));
        }
    }
    let record = |from: &Path, to: &Path| json!({"from": from.display().to_string(), "to": to.display().to_string()});
    let (mut moved, mut already, mut absent, mut undo) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (from, to) in pairs {
        if !exists(from) {
            if exists(to) {
                already.push(record(from, to));
                undo.push(record(to, from));
            } else {
                absent.push(from.display().to_string());
            }
            continue;
        }
        let into = to.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(into).map_err(|error| io_error(into, error))?;
        std::fs::rename(from, to).map_err(|error| {
            ActionFailure::permanent(format!(
                "moving {} to {}: {error} (it must stay on the same filesystem)",
                from.display(),
                to.display()
            ))
        })?;
        sync_dir(into)?;
        if let Some(parent) = from.parent() {
            sync_dir(parent)?;
        }
        // An independent read: gone from its place, there aside.
        if exists(from) || !exists(to) {
            return Err(ActionFailure::permanent(format!(
                "{} was renamed to {} but the rename does not show",
                from.display(),
                to.display()
            )));
        }
        moved.push(record(from, to));
        undo.push(record(to, from));
    }
    Ok(json!({
        "moved": moved,
        "already": already,
        "absent": absent,
        "undo_moves": undo,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_aside_once_refuses_to_overwrite_and_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("epochFileCheckpoint");
        std::fs::write(&file, b"epoch").unwrap();
        let missing = dir.path().join("epochFileCheckpoint.bak");
        let aside = dir.path().join(".runbook-removed/epochFileCheckpoint");
        let pairs = vec![
            (file.clone(), aside.clone()),
            (
                missing.clone(),
                dir.path().join(".runbook-removed/epochFileCheckpoint.bak"),
            ),
        ];
        let out = move_all(&pairs).unwrap();
        assert_eq!(out["moved"].as_array().unwrap().len(), 1);
        assert_eq!(out["absent"], json!([missing.display().to_string()]));
        assert!(!file.exists() && std::fs::read(&aside).unwrap() == b"epoch");
        // Again: found moved, nothing else happens.
        let again = move_all(&pairs).unwrap();
        assert_eq!(again["already"].as_array().unwrap().len(), 1);
        assert!(again["moved"].as_array().unwrap().is_empty());
        // A new file where the old one was, with the old one aside: refused, nothing moved.
        std::fs::write(&file, b"new").unwrap();
        let refused = move_all(&pairs).unwrap_err();
        assert!(refused.message.contains("already exists"), "{refused:?}");
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        std::fs::remove_file(&file).unwrap();
        // The undo's pairs put it back.
        let back: Vec<(PathBuf, PathBuf)> = again["undo_moves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                (
                    PathBuf::from(pair["from"].as_str().unwrap()),
                    PathBuf::from(pair["to"].as_str().unwrap()),
                )
            })
            .collect();
        move_all(&back).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"epoch");
    }
}
