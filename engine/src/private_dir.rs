//! The data dir belongs to the daemon's user alone.
//!
//! The daemon runs commands from the specs it writes into its data dir, often as root, and its
//! step logs and specs hold secrets (`env`). Whoever can write the data dir, or any directory on
//! the way to it, can swap a spec (or the dir) between the daemon's write and the supervisor's
//! read, and so run commands as the daemon's user. So:
//!
//! # Contract
//!
//! - [`check_data_dir`] refuses a data dir when the dir, or a directory on the way to it, is
//!   writable by another user (group or other write, unless the directory is sticky and owned by
//!   root or us, like `/tmp`), or is owned by anybody but the daemon's user or root; when a
//!   symlink on the way is owned by another user; and when an entry of the data dir (or of its
//!   `runs/` and `store/`) is a symlink, is owned by another user or is writable by others.
//! - It creates a missing data dir 0700 and tightens an existing one of ours to 0700 (a data dir
//!   of an older version was 0755: readable, not writable, by others).
//! - The daemon runs with umask 077 ([`PRIVATE_UMASK`]), so every file and directory it creates
//!   in the data dir is 0600 / 0700; the commands it runs get the umask it was started with.
//! - [`open_private_file`] opens a file of a verified directory without following a symlink and
//!   checks that what it opened is a regular file of ours that no other user can write.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The umask of the daemon and the shim: nothing they create is readable by another user.
pub const PRIVATE_UMASK: u32 = 0o077;

/// Sets the process umask to [`PRIVATE_UMASK`]; returns the one it replaces.
pub fn set_private_umask() -> u32 {
    // SAFETY: umask(2) only changes the process's file creation mask.
    unsafe { libc::umask(PRIVATE_UMASK as libc::mode_t) as u32 }
}

/// The effective uid of this process.
fn my_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

fn owner_is_trusted(uid: u32) -> bool {
    uid == my_uid() || uid == 0
}

/// Why `path` (a directory on the way to a private one) is unsafe, if it is.
fn unsafe_directory(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    let mode = meta.mode();
    if !owner_is_trusted(meta.uid()) {
        return Some(format!(
            "{} is owned by uid {}, not by this user (uid {}) or root",
            path.display(),
            meta.uid(),
            my_uid()
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Some(format!(
            "{} is writable by other users (mode {:o})",
            path.display(),
            mode & 0o7777
        ));
    }
    None
}

/// Checks every directory from `/` down to `dir` (the literal path and the one its symlinks
/// lead to): none may be writable by, or belong to, another user. `dir` itself must exist.
pub fn check_path_to(dir: &Path) -> Result<(), String> {
    let absolute = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|error| format!("cannot read the current directory: {error}"))?
            .join(dir)
    };
    let mut prefix = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => continue,
            Component::ParentDir => {
                prefix.pop();
                continue;
            }
            other => prefix.push(other.as_os_str()),
        }
        let meta = std::fs::symlink_metadata(&prefix)
            .map_err(|error| format!("cannot inspect {}: {error}", prefix.display()))?;
        if meta.file_type().is_symlink() {
            // Whoever may replace the link may redirect the path; the directory holding it has
            // been checked, so the link's owner is the only other one who can.
            if !owner_is_trusted(meta.uid()) {
                return Err(format!(
                    "{} is a symlink owned by uid {}, not by this user or root",
                    prefix.display(),
                    meta.uid()
                ));
            }
            // Where it leads is checked below, through the canonical path.
        } else if let Some(problem) = unsafe_directory(&prefix, &meta) {
            return Err(problem);
        }
    }
    let canonical = std::fs::canonicalize(&absolute)
        .map_err(|error| format!("cannot resolve {}: {error}", absolute.display()))?;
    for ancestor in canonical.ancestors() {
        let meta = std::fs::metadata(ancestor)
            .map_err(|error| format!("cannot inspect {}: {error}", ancestor.display()))?;
        if let Some(problem) = unsafe_directory(ancestor, &meta) {
            return Err(problem);
        }
    }
    Ok(())
}

/// Creates the data dir (0700) if it is missing, tightens it to 0700, and refuses it when
/// another user could change what is in it (see the module's contract). The error names the
/// path and says what to do.
pub fn check_data_dir(data_dir: &Path) -> Result<(), String> {
    let refuse = |problem: String| {
        format!(
            "refusing data dir {}: {problem}; another user could change the commands this daemon \
             runs: use a data dir that only this user (and root) can write, on a path whose \
             directories only this user or root can write (e.g. chmod go-w on them, or pick \
             another --data-dir)",
            data_dir.display()
        )
    };
    // Nothing is created under a directory another user controls: check what exists first.
    if let Some(existing) = data_dir
        .ancestors()
        .find(|ancestor| !ancestor.as_os_str().is_empty() && ancestor.exists())
    {
        check_path_to(existing).map_err(refuse)?;
    }
    if let Some(parent) = data_dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(data_dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(format!(
                "cannot create data dir {}: {error}",
                data_dir.display()
            ))
        }
    }
    check_path_to(data_dir).map_err(refuse)?;
    let meta = std::fs::metadata(data_dir)
        .map_err(|error| format!("cannot inspect data dir {}: {error}", data_dir.display()))?;
    if meta.uid() != my_uid() {
        return Err(refuse(format!(
            "it is owned by uid {}, not by this user (uid {})",
            meta.uid(),
            my_uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |error| {
                format!(
                    "cannot restrict data dir {} to 0700: {error}",
                    data_dir.display()
                )
            },
        )?;
    }
    check_entries(data_dir).map_err(refuse)?;
    for inner in ["runs", "store"] {
        let dir = data_dir.join(inner);
        if dir.is_dir() {
            check_entries(&dir).map_err(refuse)?;
        }
    }
    Ok(())
}

/// Refuses a symlink among the entries of `dir`, and an entry owned by, or writable by,
/// another user.
fn check_entries(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|error| format!("cannot inspect {}: {error}", path.display()))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symlink (nothing in a data dir may be one)",
                path.display()
            ));
        }
        if !owner_is_trusted(meta.uid()) {
            return Err(format!(
                "{} is owned by uid {}, not by this user or root",
                path.display(),
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by other users (mode {:o})",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Opens `name` in `dir` for reading, refusing a symlink (`O_NOFOLLOW`), anything but a regular
/// file, a file owned by another user, and one that others can write. `dir` must have been
/// checked with [`check_path_to`] first.
pub fn open_private_file(dir: &Path, name: &str) -> std::io::Result<File> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)?;
    let meta = file.metadata()?;
    let problem = if !meta.file_type().is_file() {
        Some("is not a regular file")
    } else if !owner_is_trusted(meta.uid()) {
        Some("is owned by another user")
    } else if meta.mode() & 0o022 != 0 {
        Some("is writable by other users")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} {problem}", path.display()),
        )),
        None => Ok(file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_writable_directory_on_the_way_is_refused_unless_sticky() -> Result<(), String> {
        let temp = tempfile::tempdir().map_err(|error| error.to_string())?;
        let open = temp.path().join("open");
        std::fs::create_dir(&open).map_err(|error| error.to_string())?;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))
            .map_err(|error| error.to_string())?;
        let error = check_data_dir(&open.join("data")).unwrap_err();
        assert!(error.contains("writable by other users"), "{error}");
        assert!(error.contains(&open.display().to_string()), "{error}");
        assert!(
            !open.join("data").exists(),
            "created under an open directory"
        );

        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777))
            .map_err(|error| error.to_string())?;
        check_data_dir(&open.join("data"))?;
        let mode = std::fs::metadata(open.join("data"))
            .map_err(|error| error.to_string())?
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        Ok(())
    }

    #[test]
    fn a_symlink_inside_the_data_dir_is_refused() -> Result<(), String> {
        let temp = tempfile::tempdir().map_err(|error| error.to_string())?;
        let data = temp.path().join("data");
        check_data_dir(&data)?;
        std::os::unix::fs::symlink(temp.path(), data.join("runs"))
            .map_err(|error| error.to_string())?;
        let error = check_data_dir(&data).unwrap_err();
        assert!(error.contains("is a symlink"), "{error}");
        Ok(())
    }

    #[test]
    fn a_spec_behind_a_symlink_is_not_opened() -> Result<(), std::io::Error> {
        let temp = tempfile::tempdir()?;
        std::fs::write(temp.path().join("real.json"), "{}")?;
        std::os::unix::fs::symlink(temp.path().join("real.json"), temp.path().join("spec.json"))?;
        assert!(open_private_file(temp.path(), "spec.json").is_err());
        assert!(open_private_file(temp.path(), "real.json").is_ok());
        Ok(())
    }
}
