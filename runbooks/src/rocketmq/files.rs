//! Host-side actions: `rocketmq.config_file` (edit one key of a broker's config file) and
//! `rocketmq.commitlog_md5` (checksums of the newest commitlog files), plus the placeholder
//! rendering shared with `rocketmq.command`.
//!
//! Both work on files of the host the daemon runs on (a broker's config and store are usually
//! on the broker's host: run the daemon there, or use `exec` with `ssh`).
//!
//! # Contract
//!
//! `config_file` replaces the file atomically (write a sibling, fsync, rename, fsync the
//! directory), keeps every other line as it was, and reads the file back: the step fails unless
//! the key then has the new value. A missing key is appended; `value = null` removes it (so
//! `previous` of the output, fed back as `value`, undoes the edit).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::input::Input;
use super::session::now_ms;

/// Replaces `{{ name }}` (spaces optional) by each var; fails on a placeholder left unknown.
pub fn render_placeholders(
    input: &Input<'_>,
    field: &str,
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, ActionFailure> {
    Ok(placeholders(input, field, text, vars)?
        .into_iter()
        .map(|(piece, _)| piece)
        .collect())
}

/// `text` cut into literal pieces and placeholder values (`true`), in order.
pub fn placeholders<'t>(
    input: &Input<'_>,
    field: &str,
    text: &'t str,
    vars: &'t BTreeMap<String, String>,
) -> Result<Vec<(&'t str, bool)>, ActionFailure> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push((&rest[..start], false));
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(input.bad(field, format!("unclosed `{{{{` in {text:?}")));
        };
        let name = after[..end].trim();
        match vars.get(name) {
            Some(value) => out.push((value.as_str(), true)),
            None => {
                return Err(input.bad(
                    field,
                    format!(
                        "unknown placeholder {{{{ {name} }}}} in {text:?} (known: {})",
                        vars.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        }
        rest = &after[end + 2..];
    }
    out.push((rest, false));
    Ok(out)
}

/// The `vars` table of an input (values as text).
pub fn vars(input: &Input<'_>) -> Result<BTreeMap<String, String>, ActionFailure> {
    match input.get("vars") {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => Ok(map
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| {
                (
                    key.clone(),
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned),
                )
            })
            .collect()),
        Some(other) => Err(input.bad("vars", format!("must be a table, not {other}"))),
    }
}

/// The value of `key` in Java properties text (`key=value` or `key: value`), if any.
pub fn property(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        split_property(line)
            .filter(|(name, _)| *name == key)
            .map(|(_, value)| value.to_owned())
    })
}

fn split_property(line: &str) -> Option<(&str, &str)> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with('!') || trimmed.is_empty() {
        return None;
    }
    let at = trimmed.find(['=', ':'])?;
    Some((trimmed[..at].trim(), trimmed[at + 1..].trim()))
}

/// `text` with `key` set to `value` (or removed when `None`), every other line untouched.
pub fn with_property(text: &str, key: &str, value: Option<&str>) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut done = false;
    for line in text.lines() {
        if split_property(line).is_some_and(|(name, _)| name == key) {
            if let (Some(value), false) = (value, done) {
                lines.push(format!("{key}={value}"));
                done = true;
            }
            continue;
        }
        lines.push(line.to_owned());
    }
    if let (Some(value), false) = (value, done) {
        lines.push(format!("{key}={value}"));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Replaces (or creates) `path` with `text` atomically and durably: a temporary sibling, fsync,
/// rename, fsync of the directory. A replaced file keeps its permissions.
pub(super) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.runbook-tmp"));
    let permissions = match std::fs::metadata(path) {
        Ok(meta) => Some(meta.permissions()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        if let Some(permissions) = permissions {
            file.set_permissions(permissions)?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The input of `rocketmq.config_file` (mutates).
pub const CONFIG_FILE_SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        optional(
            "path",
            Kind::Text,
            "the broker config file (may use {{ var }} placeholders from `vars`)",
        )
        .required(),
        optional("key", Kind::Text, "the key to set").required(),
        optional("value", Kind::Scalar, "the value (absent: remove the key)"),
        optional("vars", Kind::Table, "values of the placeholders in `path`"),
    ],
};

/// The `value` a config-file edit sets: text (a number or bool as its text), or `None` to
/// remove the key.
pub(super) fn config_value(input: &Input<'_>) -> Result<Option<String>, ActionFailure> {
    Ok(match input.get("value") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(Value::Bool(flag)) => Some(flag.to_string()),
        Some(other) => {
            return Err(input.bad(
                "value",
                format!("must be a string, a number or null, not {other}"),
            ))
        }
    })
}

/// `rocketmq.config_file`: input `path` (may use `{{ var }}` placeholders from `vars`), `key`,
/// `value` (null removes the key). Output: `path`, `key`, `previous` (null when absent),
/// `current`, `changed`.
pub async fn run_config_file(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.config_file", &input);
    let vars = vars(&input)?;
    let path = render_placeholders(&input, "path", &input.string("path")?, &vars)?;
    let key = input.string("key")?;
    let value = config_value(&input)?;
    if key.contains(['=', ':', '\n']) || value.as_deref().is_some_and(|value| value.contains('\n'))
    {
        return Err(input.bad(
            "key",
            "keys may not contain '=', ':' or a newline, values no newline",
        ));
    }
    if path.ends_with(".toml") {
        return Err(input.bad("path", format!("{path}: only Java properties files (broker.conf) are supported; TOML broker configs are not")));
    }
    let path_buf = PathBuf::from(&path);
    let work = tokio::task::spawn_blocking(move || -> Result<Value, ActionFailure> {
        let text = std::fs::read_to_string(&path_buf).map_err(|error| {
            ActionFailure::permanent(format!(
                "broker config file {}: {error}",
                path_buf.display()
            ))
        })?;
        let previous = property(&text, &key);
        let changed = previous != value;
        if changed {
            write_atomically(&path_buf, &with_property(&text, &key, value.as_deref())).map_err(
                |error| {
                    ActionFailure::retryable(format!(
                        "writing broker config file {}: {error}",
                        path_buf.display()
                    ))
                },
            )?;
        }
        let reread = std::fs::read_to_string(&path_buf).map_err(|error| {
            ActionFailure::retryable(format!("re-reading {}: {error}", path_buf.display()))
        })?;
        let current = property(&reread, &key);
        if current != value {
            return Err(ActionFailure::permanent(format!(
                "broker config file {}: {key} reads {current:?} after writing {value:?}",
                path_buf.display()
            )));
        }
        Ok(
            json!({"path": path_buf.display().to_string(), "key": key, "previous": previous, "current": current, "changed": changed, "observed_at_ms": now_ms()}),
        )
    });
    let output = work
        .await
        .map_err(|error| ActionFailure::retryable(format!("editing {path}: {error}")))??;
    context.log.line(&format!(
        "{}: {} {} -> {}{}",
        output["path"].as_str().unwrap_or_default(),
        output["key"].as_str().unwrap_or_default(),
        output["previous"],
        output["current"],
        if output["changed"] == json!(false) {
            " (already so)"
        } else {
            ""
        }
    ));
    Ok(output)
}

/// The input of `rocketmq.commitlog_md5` (read-only).
pub const COMMITLOG_MD5_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        optional(
            "dir",
            Kind::Text,
            "the commitlog directory (may use {{ var }} placeholders from `vars`)",
        )
        .required(),
        optional(
            "count",
            Kind::Int,
            "how many of the newest files (default 2)",
        ),
        optional("vars", Kind::Table, "values of the placeholders in `dir`"),
    ],
};

/// `rocketmq.commitlog_md5`: input `dir` (the broker's commitlog directory; placeholders from
/// `vars`), `count` (2). Output: `files: [{name, size, md5}]`, newest first (commitlog files are
/// named by their start offset), as the DLedger migration guide asks to compare.
pub async fn run_commitlog_md5(
    input: Value,
    context: ActionContext,
) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.commitlog_md5", &input);
    let vars = vars(&input)?;
    let dir = render_placeholders(&input, "dir", &input.string("dir")?, &vars)?;
    let count = input.opt_u32("count")?.unwrap_or(2) as usize;
    let dir_buf = PathBuf::from(&dir);
    let cancel = context.cancel.clone();
    let files = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ActionFailure> {
        let entries = std::fs::read_dir(&dir_buf).map_err(|error| {
            ActionFailure::permanent(format!(
                "commitlog directory {}: {error}",
                dir_buf.display()
            ))
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_digit()))
            .collect();
        names.sort_by(|a, b| b.cmp(a));
        let mut files = Vec::new();
        for name in names.into_iter().take(count) {
            if cancel.is_cancelled() {
                return Err(ActionFailure::retryable("cancelled"));
            }
            let path = dir_buf.join(&name);
            let mut file = std::fs::File::open(&path).map_err(|error| {
                ActionFailure::retryable(format!("{}: {error}", path.display()))
            })?;
            let mut hasher = Md5::new();
            let mut buffer = vec![0u8; 1 << 20];
            let mut size: u64 = 0;
            loop {
                let read = file.read(&mut buffer).map_err(|error| {
                    ActionFailure::retryable(format!("{}: {error}", path.display()))
                })?;
                if read == 0 {
                    break;
                }
                size += read as u64;
                hasher.update(&buffer[..read]);
            }
            let digest = hasher.finalize();
            let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
            files.push(json!({"name": name, "size": size, "md5": hex}));
        }
        Ok(files)
    })
    .await
    .map_err(|error| ActionFailure::retryable(format!("hashing {dir}: {error}")))??;
    for file in &files {
        context.log.line(&format!(
            "{dir}/{}: {} ({} bytes)",
            file["name"].as_str().unwrap_or_default(),
            file["md5"].as_str().unwrap_or_default(),
            file["size"]
        ));
    }
    Ok(json!({"dir": dir, "files": files, "observed_at_ms": now_ms()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_is_replaced_in_place_and_others_are_kept() {
        let text = "# broker\nbrokerName=broker-a\nbrokerPermission = 6\nlistenPort=10911\n";
        assert_eq!(property(text, "brokerPermission").as_deref(), Some("6"));
        let changed = with_property(text, "brokerPermission", Some("4"));
        assert_eq!(
            changed,
            "# broker\nbrokerName=broker-a\nbrokerPermission=4\nlistenPort=10911\n"
        );
        let appended = with_property(text, "namesrvAddr", Some("a:1;b:2"));
        assert!(
            appended.ends_with("listenPort=10911\nnamesrvAddr=a:1;b:2\n"),
            "{appended}"
        );
        assert_eq!(
            property(&appended, "namesrvAddr").as_deref(),
            Some("a:1;b:2")
        );
        let removed = with_property(&changed, "brokerPermission", None);
        assert_eq!(property(&removed, "brokerPermission"), None);
        assert_eq!(property("#brokerPermission=4\n", "brokerPermission"), None);
    }

    #[test]
    fn placeholders_are_rendered_and_unknown_ones_refused() {
        let value = json!({});
        let input = Input::new("test", &value);
        let vars: BTreeMap<String, String> = [("broker".to_owned(), "broker-a".to_owned())].into();
        assert_eq!(
            render_placeholders(&input, "path", "/etc/{{ broker }}.conf", &vars).unwrap(),
            "/etc/broker-a.conf"
        );
        assert_eq!(
            render_placeholders(&input, "path", "{{broker}}-x", &vars).unwrap(),
            "broker-a-x"
        );
        let error = render_placeholders(&input, "path", "{{ brokr }}", &vars).unwrap_err();
        assert!(error.message.contains("brokr"), "{}", error.message);
    }
}
