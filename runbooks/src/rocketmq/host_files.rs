//! The files of a broker's host, for the actions that read and copy a store (the commitlog
//! compare and align, `copy_files`, `dledger_config`, `dledger_check`): this host, or another
//! one reached over ssh.
//!
//! # Over ssh
//!
//! Every operation is one run of the `ssh` client with the options of `exec` with `host` (batch
//! mode, the host key checked: `known_hosts`, `identity_file`), running a fixed POSIX shell
//! script of this module whose only inputs are its positional parameters, each a single-quoted
//! word: a path never becomes shell code. The remote host needs `sh`, `cat`, `mkdir`, `mv`, `rm`,
//! GNU `find` (`-printf`) and `sync` from coreutils 8.24 or later (it fsyncs the files it names).
//!
//! File contents are streamed through the daemon and checked here (the record walk, every md5):
//! no result is taken from a tool on the remote host. A stream that ends early is an error (the
//! remote `cat`'s exit status is read at the end of every stream), never a shorter file. ssh's
//! exit status 255 (no connection, login refused, host key unknown or changed) is a retryable
//! failure that names the host.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use md5::{Digest, Md5};
use runbook_engine::action::ActionFailure;
use tokio_util::sync::CancellationToken;

use super::input::Input;

const CHUNK: usize = 1 << 20;
/// The exit status the scripts use for "no such file or directory".
const MISSING: i32 = 4;
/// How much of a remote command's stderr a failure quotes.
const STDERR_QUOTED: usize = 2000;

/// Where a node's files are.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Host {
    Local,
    Ssh(Ssh),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Ssh {
    /// `[user@]host[:port]`, as given.
    pub host: String,
    identity_file: Option<String>,
    known_hosts: Option<String>,
}

/// What a directory listing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    File,
    Dir,
    Other,
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The path below the listed directory.
    pub path: PathBuf,
    pub size: u64,
    pub kind: EntryKind,
    /// How deep below the listed directory (0: in it).
    pub depth: usize,
}

/// The ssh options of an action's input: `identity_file` and `known_hosts`, as `exec` takes
/// them.
pub(super) struct SshOptions {
    identity_file: Option<String>,
    known_hosts: Option<String>,
}

impl SshOptions {
    pub fn of(input: &Input<'_>) -> Result<SshOptions, ActionFailure> {
        Ok(SshOptions {
            identity_file: input.opt_string("identity_file")?,
            known_hosts: input.opt_string("known_hosts")?,
        })
    }

    /// The host `text` names: blank is this host, else `[user@]host[:port]`, checked now.
    pub fn host(
        &self,
        input: &Input<'_>,
        field: &str,
        text: Option<&str>,
    ) -> Result<Host, ActionFailure> {
        let Some(text) = text.map(str::trim).filter(|text| !text.is_empty()) else {
            return Ok(Host::Local);
        };
        let ssh = Ssh {
            host: text.to_owned(),
            identity_file: self.identity_file.clone(),
            known_hosts: self.known_hosts.clone(),
        };
        ssh.argv("true", &[])
            .map_err(|message| input.bad(field, message))?;
        Ok(Host::Ssh(ssh))
    }
}

impl Ssh {
    fn argv(&self, script: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let mut words = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
            "sh".to_owned(),
        ];
        words.extend(args.iter().map(|arg| (*arg).to_owned()));
        runbook_engine::action::ssh_command(
            &self.host,
            self.identity_file.as_deref(),
            self.known_hosts.as_deref(),
            &words,
        )
    }

    fn command(&self, script: &str, args: &[&str]) -> Result<Command, ActionFailure> {
        let argv = self
            .argv(script, args)
            .map_err(|message| ActionFailure::permanent(format!("ssh {}: {message}", self.host)))?;
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        Ok(command)
    }

    /// Runs `script` with `args` (and `input` on its stdin); its stdout, or `Ok(None)` if it
    /// exited with [`MISSING`].
    fn run(
        &self,
        script: &str,
        args: &[&str],
        input: Option<(&mut dyn Read, &CancellationToken)>,
        what: &str,
    ) -> Result<(Option<Vec<u8>>, Option<String>), ActionFailure> {
        let mut command = self.command(script, args)?;
        command
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|error| ActionFailure::retryable(format!("starting ssh: {error}")))?;
        let mut digest = None;
        if let Some((reader, cancel)) = input {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let mut hasher = Md5::new();
            let mut buffer = vec![0u8; CHUNK];
            let copied = (|| -> Result<(), ActionFailure> {
                loop {
                    if cancel.is_cancelled() {
                        return Err(ActionFailure::retryable("cancelled"));
                    }
                    let read = reader
                        .read(&mut buffer)
                        .map_err(|error| ActionFailure::retryable(error.to_string()))?;
                    if read == 0 {
                        return Ok(());
                    }
                    hasher.update(&buffer[..read]);
                    stdin.write_all(&buffer[..read]).map_err(|error| {
                        ActionFailure::retryable(format!("ssh {}: {what}: {error}", self.host))
                    })?;
                }
            })();
            drop(stdin);
            if let Err(failure) = copied {
                let _ = child.kill();
                let output = child.wait_with_output();
                let stderr = output
                    .map(|output| quoted(&output.stderr))
                    .unwrap_or_default();
                return Err(ActionFailure::retryable(format!(
                    "{}{}",
                    failure.message,
                    if stderr.is_empty() {
                        String::new()
                    } else {
                        format!(" ({stderr})")
                    }
                )));
            }
            digest = Some(hex(&hasher.finalize()));
        }
        let output = child
            .wait_with_output()
            .map_err(|error| ActionFailure::retryable(format!("ssh {}: {error}", self.host)))?;
        match output.status.code() {
            Some(0) => Ok((Some(output.stdout), digest)),
            Some(MISSING) => Ok((None, digest)),
            Some(255) => Err(ActionFailure::retryable(format!(
                "ssh {}: could not connect or log in: {}",
                self.host,
                quoted(&output.stderr)
            ))),
            _ => Err(ActionFailure::retryable(format!(
                "ssh {}: {what}: {} {}",
                self.host,
                output.status,
                quoted(&output.stderr)
            ))),
        }
    }
}

fn quoted(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    match text.char_indices().nth(STDERR_QUOTED) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub(super) fn io_error(path: &Path, error: std::io::Error) -> ActionFailure {
    ActionFailure::retryable(format!("{}: {error}", path.display()))
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// The remote `cat` of a file: a stream whose end is an error unless `cat` succeeded.
struct RemoteStream {
    child: Child,
    stdout: ChildStdout,
    host: String,
    path: PathBuf,
    ended: bool,
}

impl Read for RemoteStream {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let read = self.stdout.read(buffer)?;
        if read == 0 && !buffer.is_empty() {
            self.ended = true;
            let status = self.child.wait()?;
            if !status.success() {
                let mut stderr = Vec::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_end(&mut stderr);
                }
                return Err(std::io::Error::other(format!(
                    "ssh {}: reading {}: {status} {}",
                    self.host,
                    self.path.display(),
                    quoted(&stderr)
                )));
            }
        }
        Ok(read)
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const LIST: &str = r#"[ -d "$1" ] || { [ -e "$1" ] && { echo "not a directory" >&2; exit 1; }; exit 4; }
exec find "$1" -mindepth 1 -maxdepth "$2" -printf '%y %s %d %P\0'"#;
const CAT: &str = r#"exec cat -- "$1""#;
const READ: &str = r#"[ -e "$1" ] || exit 4
exec cat -- "$1""#;
const WRITE: &str = r#"set -e
mkdir -p -- "$1"
cat > "$1/$2"
sync -- "$1/$2"
mv -f -- "$1/$2" "$3"
sync -- "$(dirname -- "$3")""#;
const IS_FILE: &str = r#"[ -f "$1" ] || exit 4"#;
const MKDIR: &str = r#"mkdir -p -- "$1""#;
const REMOVE_DIR: &str = r#"rm -rf -- "$1""#;
const MOVE_INTO: &str = r#"set -e
mkdir -p -- "$2"
mv -f -- "$1" "$2/"
sync -- "$2" "$(dirname -- "$1")""#;

impl Host {
    /// The remote host, `None` for this one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Local => None,
            Host::Ssh(ssh) => Some(&ssh.host),
        }
    }

    /// Whether `path` is a regular file.
    pub fn is_file(&self, path: &Path) -> Result<bool, ActionFailure> {
        match self {
            Host::Local => Ok(path.is_file()),
            Host::Ssh(ssh) => Ok(ssh
                .run(IS_FILE, &[text(path)], None, "checking a file")?
                .0
                .is_some()),
        }
    }

    /// `path`, or `host:path` for a remote one (for messages).
    pub fn show(&self, path: &Path) -> String {
        match self {
            Host::Local => path.display().to_string(),
            Host::Ssh(ssh) => format!("{}:{}", ssh.host, path.display()),
        }
    }

    /// Everything under `dir` down to `depth` levels below it (1: its own entries), or `None`
    /// if `dir` does not exist.
    pub fn list(&self, dir: &Path, depth: usize) -> Result<Option<Vec<Entry>>, ActionFailure> {
        match self {
            Host::Local => list_local(dir, depth),
            Host::Ssh(ssh) => {
                let (out, _) = ssh.run(LIST, &[text(dir), &depth.to_string()], None, "listing")?;
                let Some(out) = out else {
                    return Ok(None);
                };
                let mut entries = Vec::new();
                for record in out
                    .split(|byte| *byte == 0)
                    .filter(|record| !record.is_empty())
                {
                    let record = String::from_utf8_lossy(record);
                    let mut fields = record.splitn(4, ' ');
                    let (Some(kind), Some(size), Some(level), Some(path)) =
                        (fields.next(), fields.next(), fields.next(), fields.next())
                    else {
                        return Err(ActionFailure::retryable(format!(
                            "ssh {}: listing {}: unreadable line {record:?}",
                            ssh.host,
                            dir.display()
                        )));
                    };
                    entries.push(Entry {
                        path: PathBuf::from(path),
                        size: size.parse().unwrap_or(0),
                        kind: match kind {
                            "f" => EntryKind::File,
                            "d" => EntryKind::Dir,
                            _ => EntryKind::Other,
                        },
                        depth: level.parse::<usize>().unwrap_or(1).saturating_sub(1),
                    });
                }
                Ok(Some(entries))
            }
        }
    }

    /// A file's bytes, from the start.
    pub fn open(&self, path: &Path) -> Result<Box<dyn Read + Send>, ActionFailure> {
        match self {
            Host::Local => Ok(Box::new(
                File::open(path).map_err(|error| io_error(path, error))?,
            )),
            Host::Ssh(ssh) => {
                let mut command = ssh.command(CAT, &[text(path)])?;
                let mut child = command
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|error| ActionFailure::retryable(format!("starting ssh: {error}")))?;
                let stdout = child.stdout.take().expect("stdout is piped");
                Ok(Box::new(RemoteStream {
                    child,
                    stdout,
                    host: ssh.host.clone(),
                    path: path.to_owned(),
                    ended: false,
                }))
            }
        }
    }

    /// A (small) file's text, or `None` if it does not exist.
    pub fn read_text(&self, path: &Path) -> Result<Option<String>, ActionFailure> {
        let bytes = match self {
            Host::Local => match std::fs::read(path) {
                Ok(bytes) => Some(bytes),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => return Err(io_error(path, error)),
            },
            Host::Ssh(ssh) => ssh.run(READ, &[text(path)], None, "reading")?.0,
        };
        bytes
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    ActionFailure::permanent(format!("{}: not UTF-8 text", self.show(path)))
                })
            })
            .transpose()
    }

    /// md5 (hex) of a whole file, computed here from its bytes.
    pub fn md5(&self, path: &Path, cancel: &CancellationToken) -> Result<String, ActionFailure> {
        let mut reader = self.open(path)?;
        let mut hasher = Md5::new();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            if cancel.is_cancelled() {
                return Err(ActionFailure::retryable("cancelled"));
            }
            let read = reader
                .read(&mut buffer)
                .map_err(|error| io_error(path, error))?;
            if read == 0 {
                return Ok(hex(&hasher.finalize()));
            }
            hasher.update(&buffer[..read]);
        }
    }

    /// Writes what `from` yields to `target` atomically: a temporary file in `temp_dir` (same
    /// file system), fsynced, renamed over `target`, the target's directory fsynced. Returns
    /// the md5 of the bytes written.
    pub fn write_from(
        &self,
        from: &mut dyn Read,
        target: &Path,
        temp_dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<String, ActionFailure> {
        let name = format!(
            "{}.partial",
            target
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        match self {
            Host::Local => write_local(from, target, temp_dir, &name, cancel),
            Host::Ssh(ssh) => {
                let (_, digest) = ssh.run(
                    WRITE,
                    &[text(temp_dir), &name, text(target)],
                    Some((from, cancel)),
                    &format!("writing {}", target.display()),
                )?;
                Ok(digest.unwrap_or_default())
            }
        }
    }

    pub fn create_dir_all(&self, dir: &Path) -> Result<(), ActionFailure> {
        match self {
            Host::Local => std::fs::create_dir_all(dir).map_err(|error| io_error(dir, error)),
            Host::Ssh(ssh) => ssh
                .run(MKDIR, &[text(dir)], None, "creating a directory")
                .map(drop),
        }
    }

    /// Removes a directory of this module's own (a temporary one) with what it holds.
    pub fn remove_own_dir(&self, dir: &Path) -> Result<(), ActionFailure> {
        match self {
            Host::Local => match std::fs::remove_dir_all(dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_error(dir, error))
                }
                _ => Ok(()),
            },
            Host::Ssh(ssh) => ssh
                .run(
                    REMOVE_DIR,
                    &[text(dir)],
                    None,
                    "removing a temporary directory",
                )
                .map(drop),
        }
    }

    /// Moves `file` into `dir` (created if absent) under its own name; both directories are
    /// fsynced.
    pub fn move_into(&self, file: &Path, dir: &Path) -> Result<(), ActionFailure> {
        match self {
            Host::Local => {
                std::fs::create_dir_all(dir).map_err(|error| io_error(dir, error))?;
                let name = file.file_name().unwrap_or_default();
                std::fs::rename(file, dir.join(name)).map_err(|error| io_error(file, error))?;
                sync_dir(dir)?;
                sync_dir(file.parent().unwrap_or(Path::new("/")))
            }
            Host::Ssh(ssh) => ssh
                .run(
                    MOVE_INTO,
                    &[text(file), text(dir)],
                    None,
                    "moving a file aside",
                )
                .map(drop),
        }
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), ActionFailure> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| io_error(dir, error))
}

fn list_local(dir: &Path, depth: usize) -> Result<Option<Vec<Entry>>, ActionFailure> {
    match std::fs::metadata(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(dir, error)),
        Ok(meta) if !meta.is_dir() => {
            return Err(ActionFailure::permanent(format!(
                "{}: not a directory",
                dir.display()
            )))
        }
        Ok(_) => {}
    }
    let mut entries = Vec::new();
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((relative, level)) = stack.pop() {
        let here = dir.join(&relative);
        for entry in std::fs::read_dir(&here).map_err(|error| io_error(&here, error))? {
            let entry = entry.map_err(|error| io_error(&here, error))?;
            let kind = entry
                .file_type()
                .map_err(|error| io_error(&entry.path(), error))?;
            let path = relative.join(entry.file_name());
            let kind = if kind.is_file() {
                EntryKind::File
            } else if kind.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::Other
            };
            let size = match kind {
                EntryKind::File => entry
                    .metadata()
                    .map_err(|error| io_error(&entry.path(), error))?
                    .len(),
                _ => 0,
            };
            if kind == EntryKind::Dir && level + 1 < depth {
                stack.push((path.clone(), level + 1));
            }
            entries.push(Entry {
                path,
                size,
                kind,
                depth: level,
            });
        }
    }
    Ok(Some(entries))
}

fn write_local(
    from: &mut dyn Read,
    target: &Path,
    temp_dir: &Path,
    name: &str,
    cancel: &CancellationToken,
) -> Result<String, ActionFailure> {
    std::fs::create_dir_all(temp_dir).map_err(|error| io_error(temp_dir, error))?;
    let temp = temp_dir.join(name);
    let mut output = File::create(&temp).map_err(|error| io_error(&temp, error))?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        if cancel.is_cancelled() {
            let _ = std::fs::remove_file(&temp);
            return Err(ActionFailure::retryable("cancelled"));
        }
        let read = from
            .read(&mut buffer)
            .map_err(|error| ActionFailure::retryable(error.to_string()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        output
            .write_all(&buffer[..read])
            .map_err(|error| io_error(&temp, error))?;
    }
    output.sync_all().map_err(|error| io_error(&temp, error))?;
    drop(output);
    std::fs::rename(&temp, target).map_err(|error| {
        ActionFailure::retryable(format!(
            "renaming {} to {}: {error}",
            temp.display(),
            target.display()
        ))
    })?;
    sync_dir(target.parent().unwrap_or(Path::new(".")))?;
    Ok(hex(&hasher.finalize()))
}
