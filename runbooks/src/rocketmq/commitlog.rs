//! Commitlog files of stopped brokers, on the daemon's host or over ssh (`host_files`): `rocketmq.commitlog_compare`
//! (md5 of the newest files of several nodes and where each node's valid log ends) and
//! `rocketmq.commitlog_align` (make every node's log equal to the longest one by copying whole
//! files), the two checks of the DLedger conversion guide ("md5sum at least the 2 newest
//! commitlog files; if they differ, align them by copying").
//!
//! # Where a log ends
//!
//! A commitlog file is named by the offset of its first byte and holds records back to back,
//! each `TOTALSIZE (i32) MAGICCODE (i32) ...`; the space a record does not fit in at the end of
//! a file is one BLANK record. The *valid end* of a node's log is the offset after the last
//! record that checks out: its magic is a message's (v1 or v2), its own PHYSICALOFFSET field is
//! where it lies, its fields add up to its TOTALSIZE, and its body matches BODYCRC (the checks
//! Apache RocketMQ's recovery makes). The walk starts at the oldest of the newest `count` files
//! (earlier if that file does not start with a record) and stops at the first byte that is not a
//! record: zeros after the last write, a torn write, a file that does not follow on.
//!
//! # Contract of `rocketmq.commitlog_align`
//!
//! - The source is the node with the longest valid log (or the one named, which must be): a copy
//!   never shrinks a log. Every node whose broker reported a max offset before it was stopped
//!   (`reported`) must hold at least that much in its files, and the source at least the highest
//!   of them, or nothing is copied.
//! - A target's valid log must be a byte-for-byte prefix of the source's, in every file that is
//!   compared (from the oldest of the newest `count` source files, or from the file where the
//!   target's log ends if that is older), or nothing is copied: two logs that disagree are two
//!   histories, and copying either over the other loses messages.
//! - Every check of every target passes before the first byte is written. Each file is copied
//!   to a temporary file beside the target directory, fsynced, renamed into place, and the
//!   directory fsynced; its md5 is read back from the target. A target file that is beyond the
//!   source's newest file (a preallocated, empty one) is moved aside into
//!   `<target>/../.runbook-commitlog-removed/`, never deleted.
//! - Afterwards every target is scanned again: its valid end and the md5 of its newest `count`
//!   files must equal the source's, or the step fails.
//!
//! Older files that both nodes hold, of the same size, below the compared files are not read
//! (as in the guide); a file the target lacks there is copied.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::host_files::{io_error, EntryKind, Host, SshOptions};
use super::input::Input;
use super::session::now_ms;

const MESSAGE_MAGIC_V1: i32 = -626_843_481;
const MESSAGE_MAGIC_V2: i32 = -626_843_477;
const BLANK_MAGIC: i32 = -875_286_124;
const BORN_HOST_V6: i32 = 0x10;
const STORE_HOST_V6: i32 = 0x20;
/// A record larger than this is not read as one (RocketMQ's largest message is 4 MiB by
/// default; a wrong TOTALSIZE must not make the scan allocate gigabytes).
const MAX_RECORD: usize = 64 << 20;
const CHUNK: usize = 1 << 20;

/// One commitlog file.
#[derive(Debug, Clone)]
pub(super) struct LogFile {
    pub name: String,
    pub base: u64,
    pub size: u64,
    pub path: PathBuf,
}

/// A node's commitlog directory as read: its files (by offset) and where its valid log ends.
#[derive(Debug, Clone)]
pub(super) struct Scan {
    pub host: Host,
    pub dir: PathBuf,
    pub files: Vec<LogFile>,
    pub valid_end: u64,
    /// The file the walk started at (the valid end is counted from there).
    pub walked_from: Option<String>,
    /// Records walked (messages and blanks).
    pub records: u64,
}

/// A node's commitlog directory: on this host or over ssh.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct NodeDir {
    pub host: Host,
    pub dir: PathBuf,
}

impl NodeDir {
    fn show(&self) -> String {
        self.host.show(&self.dir)
    }
}

/// The commitlog files of `dir`, by offset. A missing directory is an error unless `may_miss`.
pub(super) fn list_files(
    host: &Host,
    dir: &Path,
    may_miss: bool,
) -> Result<Vec<LogFile>, ActionFailure> {
    let Some(entries) = host.list(dir, 1)? else {
        if may_miss {
            return Ok(Vec::new());
        }
        return Err(ActionFailure::permanent(format!(
            "commitlog directory {}: no such directory",
            host.show(dir)
        )));
    };
    let mut files = Vec::new();
    for entry in entries {
        let name = entry.path.to_string_lossy().into_owned();
        if entry.kind != EntryKind::File
            || name.is_empty()
            || !name.chars().all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let Ok(base) = name.parse::<u64>() else {
            continue;
        };
        files.push(LogFile {
            path: dir.join(&name),
            name,
            base,
            size: entry.size,
        });
    }
    files.sort_by_key(|file| file.base);
    Ok(files)
}

/// Reads big-endian fields of one record.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn take(&mut self, len: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(len)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
}

/// Whether `record` (a whole message record, TOTALSIZE bytes) is a valid message stored at
/// commitlog offset `at`.
pub(super) fn valid_message(record: &[u8], at: u64) -> bool {
    let mut fields = Fields {
        bytes: record,
        at: 0,
    };
    let mut check = || -> Option<bool> {
        let total = fields.i32()?;
        let magic = fields.i32()?;
        let v2 = match magic {
            MESSAGE_MAGIC_V1 => false,
            MESSAGE_MAGIC_V2 => true,
            _ => return Some(false),
        };
        let body_crc = fields.i32()?;
        let _queue_id = fields.i32()?;
        let _flag = fields.i32()?;
        let _queue_offset = fields.i64()?;
        let physical_offset = fields.i64()?;
        if u64::try_from(physical_offset).ok()? != at {
            return Some(false);
        }
        let sys_flag = fields.i32()?;
        let _born_at = fields.i64()?;
        fields.take(if sys_flag & BORN_HOST_V6 != 0 { 20 } else { 8 })?;
        let _stored_at = fields.i64()?;
        fields.take(if sys_flag & STORE_HOST_V6 != 0 { 20 } else { 8 })?;
        let _reconsume = fields.i32()?;
        let _prepared = fields.i64()?;
        let body_len = usize::try_from(fields.i32()?).ok()?;
        let body = fields.take(body_len)?;
        if !body.is_empty() && (crc32fast::hash(body) & 0x7FFF_FFFF) != body_crc as u32 {
            return Some(false);
        }
        let topic_len = if v2 {
            usize::try_from(fields.i16()?).ok()?
        } else {
            usize::from(*fields.take(1)?.first()?)
        };
        fields.take(topic_len)?;
        let properties_len = usize::try_from(fields.i16()?).ok()?;
        fields.take(properties_len)?;
        Some(usize::try_from(total).ok()? == fields.at && fields.at == record.len())
    };
    check().unwrap_or(false)
}

/// Whether `file` starts with a record (message or blank) that checks out.
fn starts_with_record(host: &Host, file: &LogFile) -> Result<bool, ActionFailure> {
    let mut walk = FileWalk::open(host, file)?;
    Ok(walk.next_record()?.is_some())
}

/// Reads one file record by record.
struct FileWalk<'a> {
    file: &'a LogFile,
    reader: BufReader<Box<dyn Read + Send>>,
    pos: u64,
    record: Vec<u8>,
}

enum Record {
    Message,
    Blank,
}

impl<'a> FileWalk<'a> {
    fn open(host: &Host, file: &'a LogFile) -> Result<FileWalk<'a>, ActionFailure> {
        Ok(FileWalk {
            file,
            reader: BufReader::with_capacity(CHUNK, host.open(&file.path)?),
            pos: 0,
            record: Vec::new(),
        })
    }

    /// The next record, or `None` where the valid records of this file stop.
    fn next_record(&mut self) -> Result<Option<Record>, ActionFailure> {
        let left = self.file.size - self.pos;
        if left < 8 {
            return Ok(None);
        }
        let mut head = [0u8; 8];
        self.reader
            .read_exact(&mut head)
            .map_err(|error| io_error(&self.file.path, error))?;
        let total = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let magic = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let Ok(total) = u64::try_from(total) else {
            return Ok(None);
        };
        if total < 8 || total > left {
            return Ok(None);
        }
        if magic == BLANK_MAGIC {
            // The rest of the file is the blank's; nothing after it in this file is read.
            self.pos += total;
            return Ok(Some(Record::Blank));
        }
        if !(magic == MESSAGE_MAGIC_V1 || magic == MESSAGE_MAGIC_V2) || total as usize > MAX_RECORD
        {
            return Ok(None);
        }
        self.record.clear();
        self.record.extend_from_slice(&head);
        self.record.resize(total as usize, 0);
        self.reader
            .read_exact(&mut self.record[8..])
            .map_err(|error| io_error(&self.file.path, error))?;
        if !valid_message(&self.record, self.file.base + self.pos) {
            return Ok(None);
        }
        self.pos += total;
        Ok(Some(Record::Message))
    }
}

/// Lists `dir` and finds where its valid log ends, walking from the oldest of the newest
/// `count` files.
pub(super) fn scan(
    node: &NodeDir,
    count: usize,
    may_miss: bool,
    cancel: &CancellationToken,
) -> Result<Scan, ActionFailure> {
    let files = list_files(&node.host, &node.dir, may_miss)?;
    let mut scan = Scan {
        host: node.host.clone(),
        dir: node.dir.clone(),
        valid_end: files.first().map_or(0, |file| file.base),
        files,
        walked_from: None,
        records: 0,
    };
    if scan.files.is_empty() {
        return Ok(scan);
    }
    let mut from = scan.files.len().saturating_sub(count.max(1));
    while from > 0 && !starts_with_record(&scan.host, &scan.files[from])? {
        from -= 1;
    }
    scan.walked_from = Some(scan.files[from].name.clone());
    scan.valid_end = scan.files[from].base;
    'files: for index in from..scan.files.len() {
        let file = &scan.files[index];
        if file.base != scan.valid_end {
            // A file that does not follow on where the log ended.
            break;
        }
        let mut walk = FileWalk::open(&scan.host, file)?;
        loop {
            if cancel.is_cancelled() {
                return Err(ActionFailure::retryable("cancelled"));
            }
            match walk.next_record()? {
                Some(Record::Message) => {
                    scan.records += 1;
                    scan.valid_end = file.base + walk.pos;
                }
                Some(Record::Blank) => {
                    scan.records += 1;
                    scan.valid_end = file.base + walk.pos;
                    continue 'files;
                }
                None => {
                    if walk.pos == file.size && walk.pos > 0 {
                        continue 'files;
                    }
                    break 'files;
                }
            }
        }
    }
    Ok(scan)
}

/// The newest `count` files of a scan with their md5, newest first.
fn newest_md5s(
    scan: &Scan,
    count: usize,
    cancel: &CancellationToken,
) -> Result<Vec<(String, u64, String)>, ActionFailure> {
    scan.files
        .iter()
        .rev()
        .take(count)
        .map(|file| {
            Ok((
                file.name.clone(),
                file.size,
                scan.host.md5(&file.path, cancel)?,
            ))
        })
        .collect()
}

/// The offset of the first byte where `a` and `b` differ within their first `len` bytes, if
/// any (a file shorter than `len` differs where it ends).
fn first_difference(
    (a_host, a): (&Host, &Path),
    (b_host, b): (&Host, &Path),
    len: u64,
    cancel: &CancellationToken,
) -> Result<Option<u64>, ActionFailure> {
    let mut left = BufReader::with_capacity(CHUNK, a_host.open(a)?).take(len);
    let mut right = BufReader::with_capacity(CHUNK, b_host.open(b)?).take(len);
    let mut left_buf = vec![0u8; CHUNK];
    let mut right_buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(ActionFailure::retryable("cancelled"));
        }
        let read = read_full(&mut left, &mut left_buf).map_err(|e| io_error(a, e))?;
        let other = read_full(&mut right, &mut right_buf).map_err(|e| io_error(b, e))?;
        if let Some(index) = (0..read.min(other)).find(|i| left_buf[*i] != right_buf[*i]) {
            return Ok(Some(at + index as u64));
        }
        if read != other {
            return Ok(Some(at + read.min(other) as u64));
        }
        if read == 0 {
            return Ok(None);
        }
        at += read as u64;
    }
}

fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = reader.read(&mut buffer[filled..])?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

/// Copies `source` (on `from`) to `target` (on `to`) atomically: see [`Host::write_from`].
/// Returns the md5 of the bytes copied.
pub(super) fn copy_atomically(
    (from, source): (&Host, &Path),
    (to, target): (&Host, &Path),
    temp_dir: &Path,
    cancel: &CancellationToken,
) -> Result<String, ActionFailure> {
    let mut reader = from.open(source)?;
    to.write_from(&mut *reader, target, temp_dir, cancel)
}

/// `<dir>/../<name>`: beside the directory, on its file system, outside what a broker reads.
fn beside(dir: &Path, name: &str) -> PathBuf {
    dir.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(name)
}

/// A `{label = dir}` table of an input: each value the directory on this host, or `{ dir, host }`
/// for one reached over ssh (a blank `host` is this host).
fn node_table(
    input: &Input<'_>,
    field: &str,
    required: bool,
    ssh: &SshOptions,
) -> Result<BTreeMap<String, NodeDir>, ActionFailure> {
    let map = match input.get(field) {
        None if required => return Err(input.bad(field, "is required")),
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(input.bad(
                field,
                format!("must be a table of node = commitlog directory, not {other}"),
            ))
        }
    };
    let mut nodes = BTreeMap::new();
    for (label, value) in map {
        let (dir, host) = match value {
            Value::Object(node) => {
                if let Some(key) = node
                    .keys()
                    .find(|key| !matches!(key.as_str(), "dir" | "host"))
                {
                    return Err(
                        input.bad(field, format!("{label}: unknown key {key:?} (dir, host)"))
                    );
                }
                (node.get("dir"), node.get("host"))
            }
            other => (Some(other), None),
        };
        let Some(dir) = dir
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|dir| !dir.is_empty())
        else {
            return Err(input.bad(field, format!("{label}: must be a directory path")));
        };
        if !Path::new(dir).is_absolute() || dir.contains('\n') {
            return Err(input.bad(field, format!("{label}: {dir:?} is not an absolute path")));
        }
        let host = match host {
            None | Some(Value::Null) => None,
            Some(Value::String(host)) => Some(host.as_str()),
            Some(other) => {
                return Err(input.bad(
                    field,
                    format!("{label}: host must be a string, not {other}"),
                ))
            }
        };
        let host = ssh.host(input, &format!("{field}.{label}.host"), host)?;
        nodes.insert(
            label.clone(),
            NodeDir {
                host,
                dir: PathBuf::from(dir),
            },
        );
    }
    Ok(nodes)
}

fn count_of(input: &Input<'_>) -> Result<usize, ActionFailure> {
    let count = input.opt_u32("count")?.unwrap_or(2);
    if !(2..=1000).contains(&count) {
        return Err(input.bad(
            "count",
            format!(
                "{count}: compare at least the 2 newest files (the guide's minimum), at most 1000"
            ),
        ));
    }
    Ok(count as usize)
}

/// `identity_file` of the actions that reach nodes over ssh.
pub(super) const IDENTITY_FILE: runbook_engine::action::schema::Key = optional(
    "identity_file",
    Kind::Text,
    "the ssh key for the nodes with a host (as exec's identity_file)",
);
/// `known_hosts` of the actions that reach nodes over ssh.
pub(super) const KNOWN_HOSTS: runbook_engine::action::schema::Key = optional(
    "known_hosts",
    Kind::Text,
    "how the nodes' host keys are checked: strict (default), accept-new, off, or a known_hosts file (as exec's known_hosts)",
);

/// The input of `rocketmq.commitlog_compare` (read-only).
pub const COMPARE_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        optional(
            "nodes",
            Kind::Table,
            "node = commitlog directory (absolute, on this host), or { dir, host } for one reached over ssh ([user@]host[:port]), e.g. { master = \"/data/a/store/commitlog\", slave = { dir = \"...\", host = \"root@10.0.0.2\" } }",
        )
        .required(),
        IDENTITY_FILE,
        KNOWN_HOSTS,
        optional("count", Kind::Int, "how many of the newest files (default 2, at least 2)"),
        optional(
            "expect",
            Kind::Text,
            "`equal`: fail unless every node's newest files and valid end are the same",
        )
        .one_of(&["equal"]),
    ],
};

/// `rocketmq.commitlog_compare`: per node, the newest `count` files (`name`, `size`, `md5`,
/// newest first), `valid_end`; `equal` (same names, md5s and valid end everywhere),
/// `differing` (file names whose md5 is not the same on every node), `longest` (the node with
/// the highest valid end) and `shortest`.
pub async fn run_compare(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let reader = Input::new("rocketmq.commitlog_compare", &input);
    let ssh = SshOptions::of(&reader)?;
    let nodes = node_table(&reader, "nodes", true, &ssh)?;
    if nodes.is_empty() {
        return Err(reader.bad("nodes", "names no node"));
    }
    let count = count_of(&reader)?;
    let expect_equal = match reader.opt_string("expect")?.as_deref() {
        None => false,
        Some("equal") => true,
        Some(other) => return Err(reader.bad("expect", format!("{other:?}: use \"equal\""))),
    };
    let cancel = context.cancel.clone();
    let output = tokio::task::spawn_blocking(move || -> Result<Value, ActionFailure> {
        let mut per_node = serde_json::Map::new();
        let mut lists: BTreeMap<String, Vec<(String, u64, String)>> = BTreeMap::new();
        let mut ends: BTreeMap<String, u64> = BTreeMap::new();
        for (label, node) in &nodes {
            let scan = scan(node, count, false, &cancel)?;
            let newest = newest_md5s(&scan, count, &cancel)?;
            per_node.insert(
                label.clone(),
                json!({
                    "dir": node.dir.display().to_string(),
                    "host": node.host.name(),
                    "valid_end": scan.valid_end,
                    "file_count": scan.files.len(),
                    "files": newest.iter().map(|(name, size, md5)| json!({"name": name, "size": size, "md5": md5})).collect::<Vec<_>>(),
                }),
            );
            ends.insert(label.clone(), scan.valid_end);
            lists.insert(label.clone(), newest);
        }
        let mut by_name: BTreeMap<&str, Vec<Option<&str>>> = BTreeMap::new();
        for list in lists.values() {
            for (name, _, _) in list {
                by_name.entry(name).or_default();
            }
        }
        for (name, md5s) in by_name.iter_mut() {
            for list in lists.values() {
                md5s.push(
                    list.iter()
                        .find(|(other, _, _)| other == name)
                        .map(|(_, _, md5)| md5.as_str()),
                );
            }
        }
        let differing: Vec<&str> = by_name
            .iter()
            .filter(|(_, md5s)| md5s.iter().any(|md5| md5.is_none() || *md5 != md5s[0]))
            .map(|(name, _)| *name)
            .collect();
        let max_end = ends.values().max().copied().unwrap_or(0);
        let min_end = ends.values().min().copied().unwrap_or(0);
        let longest: Vec<&String> = ends.iter().filter(|(_, end)| **end == max_end).map(|(label, _)| label).collect();
        let shortest: Vec<&String> = ends.iter().filter(|(_, end)| **end == min_end).map(|(label, _)| label).collect();
        let equal = differing.is_empty() && max_end == min_end;
        if expect_equal && !equal {
            return Err(ActionFailure::permanent(format!(
                "commitlogs differ: valid ends {}; newest {count} file(s) differing: {}",
                ends.iter().map(|(label, end)| format!("{label} {end}")).collect::<Vec<_>>().join(", "),
                if differing.is_empty() { "none".to_owned() } else { differing.join(", ") }
            )));
        }
        Ok(json!({
            "nodes": per_node,
            "count": count,
            "equal": equal,
            "differing": differing,
            "longest": longest.first(),
            "shortest": shortest.first(),
            "valid_ends": ends,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
    .map_err(|error| ActionFailure::retryable(format!("comparing commitlogs: {error}")))??;
    if let Some(nodes) = output["nodes"].as_object() {
        for (label, node) in nodes {
            context.log.line(&format!(
                "{label} {}{}: valid end {}",
                node["host"]
                    .as_str()
                    .map(|host| format!("{host}:"))
                    .unwrap_or_default(),
                node["dir"].as_str().unwrap_or_default(),
                node["valid_end"]
            ));
            for file in node["files"].as_array().into_iter().flatten() {
                context.log.line(&format!(
                    "  {} {} ({} bytes)",
                    file["name"].as_str().unwrap_or_default(),
                    file["md5"].as_str().unwrap_or_default(),
                    file["size"]
                ));
            }
        }
    }
    context.log.line(&format!("equal: {}", output["equal"]));
    Ok(output)
}

/// The input of `rocketmq.commitlog_align` (mutates).
pub const ALIGN_SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        optional(
            "nodes",
            Kind::Table,
            "node = commitlog directory (absolute, on this host, or { dir, host } over ssh) of the existing nodes, each of which must exist",
        )
        .required(),
        IDENTITY_FILE,
        KNOWN_HOSTS,
        optional(
            "new_nodes",
            Kind::Table,
            "node = commitlog directory of new nodes (created if absent), which receive the whole log",
        ),
        optional("count", Kind::Int, "how many of the newest files are compared (default 2, at least 2)"),
        optional(
            "source",
            Kind::Text,
            "copy from this node (default: the one with the longest valid log); refused if another log is longer",
        ),
        optional(
            "reported",
            Kind::Table,
            "node = the commitlog max offset its broker reported before it was stopped (null: not reported)",
        ),
    ],
};

/// What will be done to one target.
struct Plan {
    label: String,
    scan: Scan,
    copy: Vec<LogFile>,
    unchanged: Vec<String>,
    move_aside: Vec<LogFile>,
}

/// `rocketmq.commitlog_align`: see the module's contract. Output: `source {node, dir,
/// valid_end}`, `targets [{node, dir, valid_end_before, valid_end_after, copied [{name, size,
/// md5}], unchanged, moved_aside}]`, `copied_files`, `copied_bytes`, `valid_end`.
pub async fn run_align(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let reader = Input::new("rocketmq.commitlog_align", &input);
    let ssh = SshOptions::of(&reader)?;
    let nodes = node_table(&reader, "nodes", true, &ssh)?;
    let new_nodes = node_table(&reader, "new_nodes", false, &ssh)?;
    let count = count_of(&reader)?;
    let source_label = reader.opt_string("source")?;
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    match reader.get("reported") {
        None => {}
        Some(Value::Object(map)) => {
            for (label, value) in map {
                if !nodes.contains_key(label) {
                    return Err(reader.bad("reported", format!("{label}: not one of `nodes`")));
                }
                let offset = match value {
                    Value::Null => continue,
                    Value::Number(number) => number.as_i64(),
                    Value::String(text) if text.trim().is_empty() => continue,
                    Value::String(text) => text.trim().parse::<i64>().ok(),
                    _ => None,
                };
                let Some(offset) = offset.and_then(|offset| u64::try_from(offset).ok()) else {
                    return Err(
                        reader.bad("reported", format!("{label}: {value} is not an offset"))
                    );
                };
                reported.insert(label.clone(), offset);
            }
        }
        Some(other) => return Err(reader.bad("reported", format!("must be a table, not {other}"))),
    }
    for label in new_nodes.keys() {
        if nodes.contains_key(label) {
            return Err(reader.bad("new_nodes", format!("{label} is also in `nodes`")));
        }
    }
    let mut dirs: Vec<&NodeDir> = nodes.values().chain(new_nodes.values()).collect();
    dirs.sort();
    if dirs.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(reader.bad("nodes", "two nodes name the same directory"));
    }
    if let Some(label) = &source_label {
        if !nodes.contains_key(label) {
            return Err(reader.bad("source", format!("{label} is not one of `nodes`")));
        }
    }
    let cancel = context.cancel.clone();
    let log = context.log.clone();
    let output = tokio::task::spawn_blocking(move || -> Result<Value, ActionFailure> {
        let mut scans: BTreeMap<String, Scan> = BTreeMap::new();
        for (label, node) in &nodes {
            scans.insert(label.clone(), scan(node, count, false, &cancel)?);
        }
        for (label, node) in &new_nodes {
            scans.insert(label.clone(), scan(node, count, true, &cancel)?);
        }
        for (label, offset) in &reported {
            let end = scans[label].valid_end;
            if end < *offset {
                return Err(ActionFailure::permanent(format!(
                    "node {label}: its broker reported commitlog max offset {offset} before it stopped, but the valid log in {} ends at {end}: the files lost data or the directory is not that broker's; nothing copied",
                    nodes[label].show()
                )));
            }
        }
        let longest = nodes
            .keys()
            .max_by_key(|label| scans[*label].valid_end)
            .cloned()
            .ok_or_else(|| ActionFailure::permanent("rocketmq.commitlog_align: nodes: names no node"))?;
        let source_label = source_label.unwrap_or(longest);
        let source = scans[&source_label].clone();
        let highest_reported = reported.values().max().copied().unwrap_or(0);
        if source.valid_end < highest_reported {
            return Err(ActionFailure::permanent(format!(
                "node {source_label}: its valid log ends at {}, below the highest max offset reported ({highest_reported}); nothing copied",
                source.valid_end
            )));
        }
        if source.files.is_empty() || source.valid_end == source.files[0].base {
            return Err(ActionFailure::permanent(format!(
                "node {source_label}: {} holds no valid commitlog record; nothing copied",
                source.host.show(&source.dir)
            )));
        }
        log.line(&format!(
            "source: {source_label} {} (valid end {})",
            source.host.show(&source.dir),
            source.valid_end
        ));
        let window_start = source.files[source.files.len().saturating_sub(count)].base;
        let source_newest = source.files.last().map_or(0, |file| file.base);
        let mut plans = Vec::new();
        for (label, target) in &scans {
            if *label == source_label {
                continue;
            }
            if target.valid_end > source.valid_end {
                return Err(ActionFailure::permanent(format!(
                    "copying from {source_label} (valid end {}) would shrink {label}'s log (valid end {}); nothing copied",
                    source.valid_end, target.valid_end
                )));
            }
            // The file holding the target's end; from there on (or from the newest `count`
            // source files, if older) every file is compared.
            let target_end_file = target
                .files
                .iter()
                .rev()
                .find(|file| file.base < target.valid_end)
                .map_or(0, |file| file.base);
            let compare_from = window_start.min(target_end_file);
            let mut plan = Plan {
                label: label.clone(),
                scan: target.clone(),
                copy: Vec::new(),
                unchanged: Vec::new(),
                move_aside: Vec::new(),
            };
            for file in &source.files {
                let theirs = target.files.iter().find(|other| other.base == file.base);
                let Some(theirs) = theirs else {
                    plan.copy.push(file.clone());
                    continue;
                };
                if file.base < compare_from {
                    if theirs.size == file.size {
                        plan.unchanged.push(file.name.clone());
                    } else {
                        return Err(ActionFailure::permanent(format!(
                            "{label}: {} is {} bytes, {source_label}'s {} bytes (below the compared files); nothing copied",
                            target.host.show(&theirs.path), theirs.size, file.size
                        )));
                    }
                    continue;
                }
                // The target's valid bytes in this file must be the source's.
                let valid_len = target.valid_end.saturating_sub(file.base).min(theirs.size);
                if let Some(at) = first_difference((&target.host, &theirs.path), (&source.host, &file.path), valid_len, &cancel)? {
                    return Err(ActionFailure::permanent(format!(
                        "{label}'s log is not a prefix of {source_label}'s: {} and {} differ at commitlog offset {} (below {label}'s valid end {}): two histories, copying either way loses messages; nothing copied",
                        target.host.show(&theirs.path), source.host.show(&file.path), file.base + at, target.valid_end
                    )));
                }
                if theirs.size == file.size
                    && target.host.md5(&theirs.path, &cancel)? == source.host.md5(&file.path, &cancel)?
                {
                    plan.unchanged.push(file.name.clone());
                } else {
                    plan.copy.push(file.clone());
                }
            }
            for file in &target.files {
                if file.base > source_newest {
                    plan.move_aside.push(file.clone());
                }
            }
            plans.push(plan);
        }
        // Every check passed for every target: copy.
        let mut targets = Vec::new();
        let mut copied_files = 0;
        let mut copied_bytes = 0;
        for plan in &plans {
            let host = &plan.scan.host;
            host.create_dir_all(&plan.scan.dir)?;
            let temp_dir = beside(&plan.scan.dir, ".runbook-commitlog-tmp");
            // What an interrupted earlier attempt left.
            host.remove_own_dir(&temp_dir)?;
            let mut copied = Vec::new();
            for file in &plan.copy {
                let target_path = plan.scan.dir.join(&file.name);
                let md5 = copy_atomically((&source.host, &file.path), (host, &target_path), &temp_dir, &cancel)?;
                let reread = host.md5(&target_path, &cancel)?;
                let source_now = source.host.md5(&file.path, &cancel)?;
                if reread != md5 || source_now != md5 {
                    return Err(ActionFailure::permanent(format!(
                        "{}: md5 {reread} after copying {} (md5 {md5}, now {source_now})",
                        host.show(&target_path), source.host.show(&file.path)
                    )));
                }
                log.line(&format!("{}: {} -> {} ({} bytes, md5 {md5})", plan.label, source.host.show(&file.path), host.show(&target_path), file.size));
                copied_files += 1;
                copied_bytes += file.size;
                copied.push(json!({"name": file.name, "size": file.size, "md5": md5}));
            }
            host.remove_own_dir(&temp_dir)?;
            let mut moved = Vec::new();
            if !plan.move_aside.is_empty() {
                let aside = beside(&plan.scan.dir, ".runbook-commitlog-removed");
                for file in &plan.move_aside {
                    host.move_into(&file.path, &aside)?;
                    log.line(&format!("{}: {} moved aside to {} (beyond {source_label}'s newest file, no valid record)", plan.label, host.show(&file.path), aside.display()));
                    moved.push(file.name.clone());
                }
            }
            // An independent read: the target now ends where the source ends, and its newest
            // files are the source's.
            let after = scan(&NodeDir { host: host.clone(), dir: plan.scan.dir.clone() }, count, false, &cancel)?;
            let ours = newest_md5s(&after, count, &cancel)?;
            let theirs = newest_md5s(&source, count, &cancel)?;
            if after.valid_end != source.valid_end || ours != theirs {
                return Err(ActionFailure::permanent(format!(
                    "{}: after the copy its valid log ends at {} (source {}) and its newest files are {:?} (source {:?})",
                    plan.label, after.valid_end, source.valid_end, ours, theirs
                )));
            }
            targets.push(json!({
                "node": plan.label,
                "dir": plan.scan.dir.display().to_string(),
                "host": host.name(),
                "valid_end_before": plan.scan.valid_end,
                "valid_end_after": after.valid_end,
                "copied": copied,
                "unchanged": plan.unchanged,
                "moved_aside": moved,
            }));
        }
        Ok(json!({
            "source": {"node": source_label, "dir": source.dir.display().to_string(), "host": source.host.name(), "valid_end": source.valid_end},
            "reported": reported,
            "targets": targets,
            "copied_files": copied_files,
            "copied_bytes": copied_bytes,
            "valid_end": source.valid_end,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
    .map_err(|error| ActionFailure::retryable(format!("aligning commitlogs: {error}")))??;
    Ok(output)
}
