//! `runbook shim <call dir>` (hidden): the supervisor of one `exec` command. The daemon starts
//! it in a new session when no `runbook-shim` (`src/bin/runbook-shim.rs`, the same supervisor in
//! a small binary) sits beside it; it is not meant to be typed. All of its logic, and its
//! contract, live in `runbook_engine::action::shim`; this only hands it the call dir and its
//! exit code.

use std::path::PathBuf;

/// The call dir the command's end is recorded in.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The call dir (`<data>/runs/<run>/calls/<call>`); the spec comes on stdin
    #[arg(value_name = "CALL_DIR")]
    pub call_dir: PathBuf,
}

/// Runs the shim to its end and exits the process with its code (it never returns).
pub fn run(args: &Args) -> ! {
    std::process::exit(runbook_engine::action::shim::run(&args.call_dir))
}
