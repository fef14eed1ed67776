//! Architecture invariants the build checks, by reading the product's sources (`engine/src`,
//! `runbooks/src`, `cli/src`; comments aside):
//!
//! - the state machine (`engine/src/machine/`) does no I/O and reads no clock: it names neither
//!   tokio, `std::fs`, sled, the engine's `clock` module, nor a wall or monotonic clock;
//! - only the sled store (`engine/src/store/sled.rs`) names sled, and only the engine depends on it;
//! - only `engine/src/clock.rs` reads the wall clock (`SystemTime::now`, `Utc::now`,
//!   `Local::now`, `Uuid::now_v7`; clippy.toml forbids the chrono and uuid ones too);
//! - no file of `engine/src` is over 600 lines unless its head says why ("Over 600 lines on
//!   purpose: ...").

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, relative to the workspace root.
fn sources(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&root().join(dir), &mut found);
    found.sort();
    found
        .into_iter()
        .map(|path| {
            path.strip_prefix(root())
                .expect("under the root")
                .to_path_buf()
        })
        .collect()
}

/// The lines of code of a file (`file:line` and text), comments left out: whole-line comments
/// and what follows `//` outside a string literal.
fn code_lines(file: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join(file)).expect("a readable source");
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let code = strip_comment(line);
            (!code.trim().is_empty())
                .then(|| (format!("{}:{}", file.display(), index + 1), code.to_owned()))
        })
        .collect()
}

fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' if in_string => index += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(index + 1) == Some(&b'/') => return &line[..index],
            _ => {}
        }
        index += 1;
    }
    line
}

/// Whether `line` holds `word` as a whole identifier path segment (not inside a longer name).
fn names(line: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// The `file:line: text` of every code line of `files` that names one of `words`.
fn offenders(files: &[PathBuf], words: &[&str]) -> Vec<String> {
    files
        .iter()
        .flat_map(|file| code_lines(file))
        .filter(|(_, code)| words.iter().any(|word| names(code, word)))
        .map(|(at, code)| format!("{at}: {}", code.trim()))
        .collect()
}

fn product_sources() -> Vec<PathBuf> {
    ["engine/src", "runbooks/src", "cli/src"]
        .iter()
        .flat_map(|dir| sources(dir))
        .collect()
}

#[test]
fn the_state_machine_does_no_io_and_reads_no_clock() {
    let machine = sources("engine/src/machine");
    assert!(machine.len() > 3, "the machine's sources: {machine:?}");
    let found = offenders(
        &machine,
        &[
            "tokio",
            "std::fs",
            "fs",
            "sled",
            "clock",
            "SystemTime",
            "Instant",
            "Utc::now",
            "Local::now",
        ],
    );
    assert!(
        found.is_empty(),
        "engine/src/machine must stay pure (time enters as `now`):\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_sled_store_names_sled() {
    let found: Vec<String> = offenders(&product_sources(), &["sled"])
        .into_iter()
        .filter(|line| !line.starts_with("engine/src/store/sled.rs:"))
        // The module declaration and re-export of the store itself.
        .filter(|line| {
            !(line.starts_with("engine/src/store/mod.rs:")
                && (line.ends_with("mod sled;")
                    || line.ends_with("pub use self::sled::{SledStore, SledTables};")))
        })
        .collect();
    assert!(
        found.is_empty(),
        "only engine/src/store/sled.rs may use sled:\n{}",
        found.join("\n")
    );
    for manifest in ["runbooks/Cargo.toml", "cli/Cargo.toml"] {
        let text = std::fs::read_to_string(root().join(manifest)).expect("a manifest");
        assert!(
            !text
                .lines()
                .any(|line| line.trim_start().starts_with("sled")),
            "{manifest} depends on sled"
        );
    }
}

#[test]
fn only_the_clock_reads_the_wall_clock() {
    let found: Vec<String> = offenders(
        &product_sources(),
        &["SystemTime::now", "Utc::now", "Local::now", "now_v7"],
    )
    .into_iter()
    .filter(|line| !line.starts_with("engine/src/clock.rs:"))
    .collect();
    assert!(
        found.is_empty(),
        "read time through runbook_engine::clock (engine/src/clock.rs) instead:\n{}",
        found.join("\n")
    );
}

/// The line count past which an engine file must say why it is one piece.
const LONG_FILE: usize = 600;

#[test]
fn a_long_engine_file_says_why_it_is_one_piece() {
    let mut found = Vec::new();
    for file in sources("engine/src") {
        let text = std::fs::read_to_string(root().join(&file)).expect("a source file");
        let head: String = text.lines().take(30).collect::<Vec<_>>().join("\n");
        let lines = text.lines().count();
        if lines > LONG_FILE && !head.contains("Over 600 lines on purpose") {
            found.push(format!("{}: {lines} lines", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "split these, or say at the top why each is one piece (\"Over 600 lines on purpose: ...\"):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert!(names("use tokio::sync;", "tokio"));
    assert!(names(
        "let now = std::time::SystemTime::now();",
        "SystemTime::now"
    ));
    assert!(!names("let clocked = 1;", "clock"));
    assert_eq!(strip_comment("let a = 1; // tokio"), "let a = 1; ");
    assert_eq!(
        strip_comment("let url = \"http://x\";"),
        "let url = \"http://x\";"
    );
    let machine = sources("engine/src/machine");
    assert!(
        machine
            .iter()
            .any(|file| file.ends_with("decide/operator.rs")),
        "{machine:?}"
    );
}
