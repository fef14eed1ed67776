//! The files of a master/slave → DLedger conversion, on the daemon's host:
//! `rocketmq.copy_files` (a node's `store/config` directory to the new node),
//! `rocketmq.dledger_config` (write one node's DLedger broker config) and
//! `rocketmq.dledger_check` (read the group's configs back and check them together).
//!
//! The keys are those of Apache RocketMQ's DLedger guide (4.5+): `enableDLegerCommitLog=true`,
//! `dLegerGroup`, `dLegerPeers` (`n0-host:port;n1-host:port;n2-host:port`, identical on every
//! node), `dLegerSelfId` (unique, one of the peers), `storePathRootDir`, `storePathCommitLog`.
//! A DLedger broker's id and role come from the Raft election, so `brokerId`, `brokerRole` and
//! `haMasterAddress` of the master/slave config are left out of the new file (Java's
//! `BrokerStartup` sets the id to -1 itself when DLedger is on).
//!
//! # Contract
//!
//! Every file is written to a temporary sibling, fsynced, renamed into place and read back; the
//! step fails unless what is read holds every key as written. `copy_files` never replaces a
//! target file whose content differs unless `overwrite = true`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::commitlog::{copy_atomically, list_files, IDENTITY_FILE, KNOWN_HOSTS};
use super::files::{property, render_placeholders, vars};
use super::host_files::{sync_dir, EntryKind, Host, SshOptions};
use super::input::Input;
use super::session::now_ms;

/// Keys of master/slave replication that a DLedger node's config does not keep.
const MASTER_SLAVE_KEYS: &[&str] = &["brokerId", "brokerRole", "haMasterAddress"];
/// How deep `copy_files` descends.
const MAX_DEPTH: usize = 4;

/// The input of `rocketmq.copy_files` (mutates).
pub const COPY_FILES_SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        optional(
            "source",
            Kind::Text,
            "the directory (or one file) to copy, absolute, e.g. the master's store/config",
        )
        .required(),
        optional(
            "source_host",
            Kind::Text,
            "where `source` is: [user@]host[:port] over ssh (default: this host)",
        ),
        optional(
            "target_host",
            Kind::Text,
            "where `target` is: [user@]host[:port] over ssh (default: this host)",
        ),
        IDENTITY_FILE,
        KNOWN_HOSTS,
        optional(
            "target",
            Kind::Text,
            "the directory to copy into (created if absent)",
        )
        .required(),
        optional(
            "vars",
            Kind::Table,
            "values of {{ name }} placeholders in source and target (e.g. broker_addr)",
        ),
        optional(
            "overwrite",
            Kind::Bool,
            "replace a target file whose content differs (default false: refuse)",
        ),
    ],
};

fn absolute(input: &Input<'_>, field: &str) -> Result<PathBuf, ActionFailure> {
    let path = input.string(field)?;
    let path = render_placeholders(input, field, &path, &vars(input)?)?;
    if !Path::new(&path).is_absolute() || path.contains('\n') {
        return Err(input.bad(field, format!("{path:?} is not an absolute path")));
    }
    Ok(PathBuf::from(path))
}

/// Every regular file under `dir` (relative paths), at most [`MAX_DEPTH`] deep; symlinks and
/// other special files are listed apart.
fn tree(host: &Host, dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>), ActionFailure> {
    let entries = host.list(dir, MAX_DEPTH + 1)?.ok_or_else(|| {
        ActionFailure::permanent(format!("directory {}: no such directory", host.show(dir)))
    })?;
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        match entry.kind {
            EntryKind::File => files.push(entry.path),
            EntryKind::Dir if entry.depth < MAX_DEPTH => {}
            _ => skipped.push(entry.path.display().to_string()),
        }
    }
    files.sort();
    skipped.sort();
    Ok((files, skipped))
}

/// `rocketmq.copy_files`: copies every regular file of `source` (or `source` itself, a file)
/// into `target`, each atomically and read back by md5. Output: `files [{name, md5, copied}]`, `copied`, `unchanged`,
/// `skipped` (symlinks, special files, deeper directories).
pub async fn run_copy_files(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let reader = Input::new("rocketmq.copy_files", &input);
    let source = absolute(&reader, "source")?;
    let target = absolute(&reader, "target")?;
    let ssh = SshOptions::of(&reader)?;
    let source_host = ssh.host(
        &reader,
        "source_host",
        reader.opt_string("source_host")?.as_deref(),
    )?;
    let target_host = ssh.host(
        &reader,
        "target_host",
        reader.opt_string("target_host")?.as_deref(),
    )?;
    let overwrite = reader.bool_or("overwrite", false)?;
    if source_host == target_host
        && (source == target || target.starts_with(&source) || source.starts_with(&target))
    {
        return Err(reader.bad("target", "source and target overlap"));
    }
    let cancel = context.cancel.clone();
    let log = context.log.clone();
    tokio::task::spawn_blocking(move || -> Result<Value, ActionFailure> {
        // One file: copied into `target` under its own name.
        let (source, (files, skipped)) = match (source_host.is_file(&source)?, source.file_name()) {
            (true, Some(name)) => {
                let name = PathBuf::from(name);
                let parent = source.parent().unwrap_or(Path::new("/")).to_owned();
                (parent, (vec![name], Vec::new()))
            }
            _ => (source.clone(), tree(&source_host, &source)?),
        };
        if files.is_empty() {
            return Err(ActionFailure::permanent(format!(
                "{}: no file to copy (is it the store's config directory?)",
                source_host.show(&source)
            )));
        }
        // Check every file before writing any.
        let mut plan = Vec::new();
        for relative in &files {
            let from = source.join(relative);
            let to = target.join(relative);
            let md5 = source_host.md5(&from, &cancel)?;
            let existing = if target_host.is_file(&to)? {
                Some(target_host.md5(&to, &cancel)?)
            } else {
                None
            };
            if existing.as_ref().is_some_and(|have| *have != md5) && !overwrite {
                return Err(ActionFailure::permanent(format!(
                    "{} exists with other content than {} (set overwrite = true to replace it); nothing copied",
                    target_host.show(&to),
                    source_host.show(&from)
                )));
            }
            plan.push((relative, from, to, md5, existing));
        }
        let mut out = Vec::new();
        let mut copied = 0;
        for (relative, from, to, md5, existing) in plan {
            let parent = to.parent().unwrap_or(&target).to_owned();
            target_host.create_dir_all(&parent)?;
            let changed = existing.as_deref() != Some(md5.as_str());
            if changed {
                let temp_dir = target.join(".runbook-copy-tmp");
                let written = copy_atomically((&source_host, &from), (&target_host, &to), &temp_dir, &cancel)?;
                target_host.remove_own_dir(&temp_dir)?;
                let reread = target_host.md5(&to, &cancel)?;
                if written != md5 || reread != md5 {
                    return Err(ActionFailure::permanent(format!(
                        "{}: md5 {reread} after copying {} (md5 {md5}; copied {written})",
                        target_host.show(&to),
                        source_host.show(&from)
                    )));
                }
                copied += 1;
                log.line(&format!("{} -> {} (md5 {md5})", source_host.show(&from), target_host.show(&to)));
            }
            out.push(json!({"name": relative.display().to_string(), "md5": md5, "copied": changed}));
        }
        if target_host == Host::Local {
            sync_dir(&target)?;
        }
        for name in &skipped {
            log.line(&format!("skipped {name} (not a regular file, or too deep)"));
        }
        Ok(json!({
            "source": source.display().to_string(),
            "source_host": source_host.name(),
            "target": target.display().to_string(),
            "target_host": target_host.name(),
            "files": out,
            "copied": copied,
            "unchanged": files.len() - copied,
            "skipped": skipped,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
    .map_err(|error| ActionFailure::retryable(format!("copying files: {error}")))?
}

/// One peer of `dLegerPeers`: its id and `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Peer {
    pub id: String,
    pub addr: String,
}

/// Parses `n0-host:port;n1-host:port;...`: ids unique, addresses unique, ports valid.
pub(super) fn parse_peers(text: &str) -> Result<Vec<Peer>, String> {
    let mut peers = Vec::new();
    for part in text
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let Some((id, addr)) = part.split_once('-') else {
            return Err(format!("{part:?} is not <id>-<host>:<port>"));
        };
        let valid_id = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_id {
            return Err(format!(
                "{part:?}: the id {id:?} must be letters, digits or _"
            ));
        }
        let valid_addr = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
                })
                && port.parse::<u16>().is_ok_and(|port| port > 0)
        });
        if !valid_addr {
            return Err(format!("{part:?}: {addr:?} is not host:port"));
        }
        peers.push(Peer {
            id: id.to_owned(),
            addr: addr.to_owned(),
        });
    }
    if peers.len() < 3 {
        return Err(format!(
            "{} peer(s): a DLedger group needs at least 3 to survive the loss of one",
            peers.len()
        ));
    }
    let ids: BTreeSet<&str> = peers.iter().map(|peer| peer.id.as_str()).collect();
    let addrs: BTreeSet<&str> = peers.iter().map(|peer| peer.addr.as_str()).collect();
    if ids.len() != peers.len() {
        return Err("a peer id appears twice".to_owned());
    }
    if addrs.len() != peers.len() {
        return Err("a peer address appears twice".to_owned());
    }
    Ok(peers)
}

/// A property value that may be written on one line of a properties file.
fn one_line(input: &Input<'_>, field: &str, value: &str) -> Result<(), ActionFailure> {
    if value.is_empty() || value.contains(['\n', '\r']) || value.contains('\\') {
        return Err(input.bad(
            field,
            format!("{value:?}: must be one line, not empty, without a backslash"),
        ));
    }
    Ok(())
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The input of `rocketmq.dledger_config` (mutates).
pub const CONFIG_SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        optional(
            "base",
            Kind::Text,
            "the node's current broker config (Java properties) to start from",
        )
        .required(),
        optional("path", Kind::Text, "the DLedger config file to write").required(),
        optional(
            "host",
            Kind::Text,
            "where `path` is (and `base`, unless `base_host` says): [user@]host[:port] over ssh (default: this host)",
        ),
        optional(
            "base_host",
            Kind::Text,
            "where `base` is, when not on `host` (a new node's config made from another node's)",
        ),
        IDENTITY_FILE,
        KNOWN_HOSTS,
        optional("group", Kind::Text, "dLegerGroup (usually the brokerName)").required(),
        optional(
            "peers",
            Kind::Text,
            "dLegerPeers, n0-host:port;n1-host:port;n2-host:port (identical on every node)",
        )
        .required(),
        optional("self_id", Kind::Text, "dLegerSelfId: this node's id among the peers").required(),
        optional("store_root", Kind::Text, "storePathRootDir of this node").required(),
        optional(
            "commitlog",
            Kind::Text,
            "storePathCommitLog (default: <store_root>/commitlog)",
        ),
        optional(
            "set",
            Kind::Table,
            "other keys to set (e.g. listenPort, brokerIP1 of a new node, sendMessageThreadPoolNums)",
        ),
    ],
};

/// `rocketmq.dledger_config`: writes `path` = `base`'s properties without the master/slave
/// keys, plus the DLedger keys and `set`. Output: `path`, `keys` (what was set), `removed`,
/// `previous` (the file's text before, null if it did not exist), `changed`.
pub async fn run_config(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let reader = Input::new("rocketmq.dledger_config", &input);
    let ssh = SshOptions::of(&reader)?;
    let host = ssh.host(&reader, "host", reader.opt_string("host")?.as_deref())?;
    let base_host = match reader.opt_string("base_host")? {
        Some(text) => ssh.host(&reader, "base_host", Some(&text))?,
        None => host.clone(),
    };
    let base = absolute(&reader, "base")?;
    let path = absolute(&reader, "path")?;
    if path.extension().is_some_and(|ext| ext == "toml") {
        return Err(reader.bad("path", "only Java properties files are written"));
    }
    let group = reader.string("group")?;
    let peers_text = reader.string("peers")?;
    let self_id = reader.string("self_id")?;
    let store_root = absolute(&reader, "store_root")?;
    let commitlog = match reader.opt_string("commitlog")? {
        Some(_) => absolute(&reader, "commitlog")?,
        None => store_root.join("commitlog"),
    };
    let peers = parse_peers(&peers_text).map_err(|message| reader.bad("peers", message))?;
    if !peers.iter().any(|peer| peer.id == self_id) {
        return Err(reader.bad(
            "self_id",
            format!("{self_id:?} is not one of the peers' ids ({peers_text})"),
        ));
    }
    if !group
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(reader.bad("group", format!("{group:?}: letters, digits, - _ . only")));
    }
    let mut keys: Vec<(String, String)> = vec![
        ("enableDLegerCommitLog".to_owned(), "true".to_owned()),
        ("dLegerGroup".to_owned(), group),
        ("dLegerPeers".to_owned(), peers_text.clone()),
        ("dLegerSelfId".to_owned(), self_id),
        (
            "storePathRootDir".to_owned(),
            store_root.display().to_string(),
        ),
        (
            "storePathCommitLog".to_owned(),
            commitlog.display().to_string(),
        ),
    ];
    if let Some(set) = reader.get("set") {
        let Some(map) = set.as_object() else {
            return Err(reader.bad("set", format!("must be a table, not {set}")));
        };
        for (key, value) in map {
            if !valid_key(key) || MASTER_SLAVE_KEYS.contains(&key.as_str()) {
                return Err(reader.bad("set", format!("{key:?} cannot be set here")));
            }
            if keys.iter().any(|(name, _)| name == key) {
                return Err(reader.bad("set", format!("{key} is set by the action itself")));
            }
            let value = match value {
                Value::String(text) => text.trim().to_owned(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                other => return Err(reader.bad("set", format!("{key}: {other} is not a value"))),
            };
            keys.push((key.clone(), value));
        }
    }
    for (key, value) in &keys {
        one_line(&reader, key, value)?;
    }
    let log = context.log.clone();
    let cancel = context.cancel.clone();
    tokio::task::spawn_blocking(move || -> Result<Value, ActionFailure> {
        let base_text = base_host.read_text(&base)?.ok_or_else(|| {
            ActionFailure::permanent(format!(
                "base config {}: no such file",
                base_host.show(&base)
            ))
        })?;
        let mut text = base_text.clone();
        let mut removed = Vec::new();
        for key in MASTER_SLAVE_KEYS {
            if property(&text, key).is_some() {
                removed.push(*key);
                text = super::files::with_property(&text, key, None);
            }
        }
        for (key, value) in &keys {
            text = super::files::with_property(&text, key, Some(value));
        }
        let previous = host.read_text(&path)?;
        let changed = previous.as_deref() != Some(text.as_str());
        if changed {
            let parent = path.parent().unwrap_or(Path::new("/")).to_owned();
            host.create_dir_all(&parent)?;
            host.write_from(&mut text.as_bytes(), &path, &parent, &cancel)?;
        }
        let reread = host.read_text(&path)?.ok_or_else(|| {
            ActionFailure::retryable(format!("re-reading {}: gone", host.show(&path)))
        })?;
        for (key, value) in &keys {
            let current = property(&reread, key);
            if current.as_deref() != Some(value.as_str()) {
                return Err(ActionFailure::permanent(format!(
                    "{}: {key} reads {current:?} after writing {value:?}",
                    host.show(&path)
                )));
            }
        }
        for key in MASTER_SLAVE_KEYS {
            if property(&reread, key).is_some() {
                return Err(ActionFailure::permanent(format!(
                    "{}: {key} is still set after writing",
                    host.show(&path)
                )));
            }
        }
        log.line(&format!(
            "{}{}: {}",
            host.show(&path),
            if changed { "" } else { " (already so)" },
            keys.iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        Ok(json!({
            "path": path.display().to_string(),
            "base": base.display().to_string(),
            "host": host.name(),
            "base_host": base_host.name(),
            "keys": keys.iter().cloned().collect::<BTreeMap<String, String>>(),
            "removed": removed,
            "previous": previous,
            "changed": changed,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
    .map_err(|error| ActionFailure::retryable(format!("writing a DLedger config: {error}")))?
}

/// The input of `rocketmq.dledger_check` (read-only).
pub const CHECK_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        optional(
            "paths",
            Kind::List,
            "the DLedger config file of every node of the group",
        )
        .required(),
        optional(
            "hosts",
            Kind::List,
            "where each of `paths` is, in the same order: [user@]host[:port] over ssh, blank for this host (default: all here)",
        ),
        IDENTITY_FILE,
        KNOWN_HOSTS,
        optional("group", Kind::Text, "the dLegerGroup every file must name"),
    ],
};

/// `rocketmq.dledger_check`: reads every node's DLedger config and checks them together, as
/// the DLedger guide requires: `enableDLegerCommitLog=true`; one `dLegerGroup`, `brokerName`
/// and `brokerClusterName`; `dLegerPeers` identical everywhere; `dLegerSelfId` unique, one of
/// the peers, and every peer has a file; `storePathRootDir` and `storePathCommitLog` set, the
/// commit log directory present and holding commitlog files; no `brokerId`/`brokerRole`; no
/// two nodes on the same `brokerIP1:listenPort`. Fails naming every problem. Output: `nodes
/// [{path, self_id, group, peers, store_root, commitlog, listen}]`, `peers`.
pub async fn run_check(input: Value, _context: ActionContext) -> Result<Value, ActionFailure> {
    let reader = Input::new("rocketmq.dledger_check", &input);
    let paths = reader.string_list("paths")?;
    if paths.len() < 3 {
        return Err(reader.bad("paths", "a DLedger group has at least 3 nodes"));
    }
    let group = reader.opt_string("group")?;
    let ssh = SshOptions::of(&reader)?;
    let hosts = match reader.get("hosts") {
        None => vec![Host::Local; paths.len()],
        Some(Value::Array(items)) if items.len() == paths.len() => items
            .iter()
            .map(|item| match item {
                Value::String(text) => ssh.host(&reader, "hosts", Some(text)),
                other => Err(reader.bad("hosts", format!("{other} is not a host"))),
            })
            .collect::<Result<Vec<Host>, ActionFailure>>()?,
        Some(_) => {
            return Err(reader.bad(
                "hosts",
                format!("must be a list of {} hosts, one per path", paths.len()),
            ))
        }
    };
    let paths: Vec<String> = paths
        .iter()
        .zip(&hosts)
        .map(|(path, host)| host.show(Path::new(path)))
        .collect();
    let files: Vec<(Host, PathBuf)> = hosts
        .into_iter()
        .zip(reader.string_list("paths")?.into_iter().map(PathBuf::from))
        .collect();
    tokio::task::spawn_blocking(move || -> Result<Value, ActionFailure> {
        let mut problems = Vec::new();
        let mut nodes = Vec::new();
        let mut texts = Vec::new();
        for (host, path) in &files {
            let text = host.read_text(path)?.ok_or_else(|| {
                ActionFailure::permanent(format!("DLedger config {}: no such file", host.show(path)))
            })?;
            texts.push(text);
        }
        let get = |index: usize, key: &str| property(&texts[index], key);
        let first = |key: &str| get(0, key);
        let peers_text = first("dLegerPeers").unwrap_or_default();
        let peers = match parse_peers(&peers_text) {
            Ok(peers) => peers,
            Err(message) => {
                problems.push(format!("{}: dLegerPeers {peers_text:?}: {message}", paths[0]));
                Vec::new()
            }
        };
        let mut self_ids = BTreeSet::new();
        let mut listens = BTreeSet::new();
        for (index, path) in paths.iter().enumerate() {
            if get(index, "enableDLegerCommitLog").as_deref() != Some("true") {
                problems.push(format!("{path}: enableDLegerCommitLog is not true"));
            }
            for key in ["dLegerGroup", "dLegerPeers", "brokerName", "brokerClusterName"] {
                if get(index, key) != first(key) {
                    problems.push(format!(
                        "{path}: {key} {:?} differs from {}'s {:?}",
                        get(index, key),
                        paths[0],
                        first(key)
                    ));
                }
            }
            if let Some(group) = &group {
                if get(index, "dLegerGroup").as_deref() != Some(group.as_str()) {
                    problems.push(format!("{path}: dLegerGroup is {:?}, not {group}", get(index, "dLegerGroup")));
                }
            }
            let self_id = get(index, "dLegerSelfId").unwrap_or_default();
            if !peers.iter().any(|peer| peer.id == self_id) {
                problems.push(format!("{path}: dLegerSelfId {self_id:?} is not one of the peers ({peers_text})"));
            }
            if !self_ids.insert(self_id.clone()) {
                problems.push(format!("{path}: dLegerSelfId {self_id:?} is used by another node"));
            }
            for key in MASTER_SLAVE_KEYS {
                if get(index, key).is_some() {
                    problems.push(format!("{path}: {key} is set (master/slave mode)"));
                }
            }
            let store_root = get(index, "storePathRootDir");
            let commitlog = get(index, "storePathCommitLog");
            if store_root.is_none() {
                problems.push(format!("{path}: storePathRootDir is not set"));
            }
            match &commitlog {
                None => problems.push(format!("{path}: storePathCommitLog is not set")),
                Some(dir) => match list_files(&files[index].0, Path::new(dir), false) {
                    Ok(files) if files.is_empty() => {
                        problems.push(format!("{path}: storePathCommitLog {dir} holds no commitlog file"))
                    }
                    Ok(_) => {}
                    Err(error) => problems.push(format!("{path}: storePathCommitLog: {}", error.message)),
                },
            }
            let listen = format!(
                "{}:{}",
                get(index, "brokerIP1").unwrap_or_default(),
                get(index, "listenPort").unwrap_or_else(|| "10911".to_owned())
            );
            if !listens.insert(listen.clone()) {
                problems.push(format!("{path}: another node listens on {listen} too"));
            }
            nodes.push(json!({
                "path": path,
                "self_id": self_id,
                "group": get(index, "dLegerGroup"),
                "peers": get(index, "dLegerPeers"),
                "store_root": store_root,
                "commitlog": commitlog,
                "listen": listen,
            }));
        }
        for peer in &peers {
            if !self_ids.contains(&peer.id) {
                problems.push(format!("peer {} ({}) has no config among {}", peer.id, peer.addr, paths.join(", ")));
            }
        }
        if !problems.is_empty() {
            return Err(ActionFailure::permanent(format!(
                "DLedger configs do not fit together: {}",
                problems.join("; ")
            )));
        }
        Ok(json!({
            "nodes": nodes,
            "peers": peers.iter().map(|peer| json!({"id": peer.id, "addr": peer.addr})).collect::<Vec<_>>(),
            "observed_at_ms": now_ms(),
        }))
    })
    .await
    .map_err(|error| ActionFailure::retryable(format!("checking DLedger configs: {error}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_parsed_and_bad_ones_refused() {
        let peers = parse_peers("n0-127.0.0.1:40911;n1-127.0.0.1:40912;n2-host-b:40913").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[2].addr, "host-b:40913");
        for bad in [
            "n0-127.0.0.1:40911;n1-127.0.0.1:40912",
            "n0-127.0.0.1:40911;n0-127.0.0.1:40912;n2-127.0.0.1:40913",
            "n0-127.0.0.1:40911;n1-127.0.0.1:40911;n2-127.0.0.1:40913",
            "n0-127.0.0.1:40911;n1-127.0.0.1:x;n2-127.0.0.1:40913",
            "n0-127.0.0.1:40911;n1 127.0.0.1:1;n2-127.0.0.1:40913",
            "n0-a$(reboot):1;n1-b:2;n2-c:3",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }
}
