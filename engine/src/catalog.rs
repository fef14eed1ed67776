//! The runbooks a daemon knows: the built-in ones (embedded by the `runbooks` crate) and the
//! user's files in `--runbooks-dir`, re-read on every request so that an edited file is seen
//! without a restart (runs in flight keep the definition they pinned).
//!
//! # Contract
//!
//! Reading the runbooks dir never blocks and is bounded: a `*.toml` that is not a regular file
//! (a FIFO, a device, a directory) is listed with the reason it was skipped and logged, and a
//! file over [`MAX_FILE_BYTES`] is listed as too large; neither is opened for a blocking read.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::action::Registry;
use crate::definition::{self, Definition};

/// A runbook file's name and text.
#[derive(Debug, Clone)]
pub struct Source {
    /// `builtin:<file name>` or a path.
    pub file: String,
    pub text: String,
}

/// A runbook as listed: valid, or the error that keeps it from running.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub source: String,
    pub definition: Result<Arc<Definition>, String>,
}

#[derive(Clone)]
pub struct Catalog {
    builtin: Vec<Entry>,
    user_dir: Option<PathBuf>,
    actions: Registry,
}

impl Catalog {
    pub fn new(builtin: &[Source], user_dir: Option<PathBuf>, actions: Registry) -> Catalog {
        let builtin = builtin
            .iter()
            .map(|source| load(source, &actions))
            .collect();
        Catalog {
            builtin,
            user_dir,
            actions,
        }
    }

    /// Checks a definition sent with a request (`start ./file.toml`): every mistake, in file
    /// order.
    pub fn load_source(&self, source: &Source) -> Result<Arc<Definition>, definition::Errors> {
        let (definition, _warnings) = definition::check(&source.file, &source.text, &self.actions)?;
        Ok(Arc::new(definition))
    }

    /// Every runbook by name; a user file may not shadow a built-in.
    pub fn entries(&self) -> BTreeMap<String, Entry> {
        let mut entries: BTreeMap<String, Entry> = self
            .builtin
            .iter()
            .map(|entry| (entry.name.clone(), entry.clone()))
            .collect();
        for entry in self.user_entries() {
            match entries.get(&entry.name) {
                Some(existing) if existing.definition.is_ok() && entry.definition.is_ok() => {
                    let shadowing = Entry {
                        name: format!("{} ({})", entry.name, entry.source),
                        source: entry.source.clone(),
                        definition: Err(format!(
                            "{}: runbook name {:?} is already taken by {}; rename it",
                            entry.source, entry.name, existing.source
                        )),
                    };
                    entries.insert(shadowing.name.clone(), shadowing);
                }
                _ => {
                    entries.insert(entry.name.clone(), entry);
                }
            }
        }
        entries
    }

    pub fn actions(&self) -> &Registry {
        &self.actions
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        self.entries().remove(name)
    }

    fn user_entries(&self) -> Vec<Entry> {
        let Some(dir) = &self.user_dir else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
                .collect(),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot read the runbooks dir");
                return Vec::new();
            }
        };
        files.sort();
        files
            .iter()
            .map(|path| match read_file(path) {
                Ok(text) => load(
                    &Source {
                        file: path.display().to_string(),
                        text,
                    },
                    &self.actions,
                ),
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "skipping a runbook file");
                    Entry {
                        name: file_stem(path),
                        source: path.display().to_string(),
                        definition: Err(format!("{}: {error}", path.display())),
                    }
                }
            })
            .collect()
    }
}

/// The largest runbook file read from the runbooks dir.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a runbook file of the runbooks dir without ever blocking: anything but a regular file
/// (a FIFO, a device, a directory named `*.toml`) is refused before it is opened, the open does
/// not wait (`O_NONBLOCK`, which matters if the path is swapped for a FIFO meanwhile), what was
/// opened is checked again, and at most [`MAX_FILE_BYTES`] are read.
pub fn read_file(path: &Path) -> Result<String, String> {
    let kind = |meta: &std::fs::Metadata| {
        use std::os::unix::fs::FileTypeExt;
        let file_type = meta.file_type();
        if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_dir() {
            "a directory"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_block_device() || file_type.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        }
    };
    let meta = std::fs::metadata(path).map_err(|error| format!("cannot read: {error}"))?;
    if !meta.is_file() {
        return Err(format!(
            "skipped: {} (only regular files are read)",
            kind(&meta)
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| format!("cannot read: {error}"))?;
    let meta = file
        .metadata()
        .map_err(|error| format!("cannot read: {error}"))?;
    if !meta.is_file() {
        return Err(format!(
            "skipped: {} (only regular files are read)",
            kind(&meta)
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "too large: {} bytes (a runbook file may have at most {MAX_FILE_BYTES})",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read: {error}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "too large: more than {MAX_FILE_BYTES} bytes (the most a runbook file may have)"
        ));
    }
    String::from_utf8(bytes).map_err(|error| format!("not UTF-8: {error}"))
}

fn load(source: &Source, actions: &Registry) -> Entry {
    match definition::check(&source.file, &source.text, actions) {
        Ok((definition, _warnings)) => Entry {
            name: definition.name.clone(),
            source: source.file.clone(),
            definition: Ok(Arc::new(definition)),
        },
        Err(error) => Entry {
            name: file_stem(Path::new(&source.file)),
            source: source.file.clone(),
            definition: Err(error.to_string()),
        },
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}
