//! `runbook shim -` (hidden): the supervisor of one `exec` command. The daemon starts it ahead
//! of the call, which it then learns from its stdin (`runbook shim <call dir>` as an older daemon
//! started it still works), when no `runbook-shim` (`src/bin/runbook-shim.rs`, the same supervisor in
//! a small binary) sits beside it; it is not meant to be typed. All of its logic, and its
//! contract, live in `runbook_engine::action::shim`; this only hands it the call dir and its
//! exit code.

use std::path::PathBuf;

/// The call dir the command's end is recorded in.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The call dir (`<data>/runs/<run>/calls/<call>`), or `-`: the call dir comes first on
    /// stdin; the spec comes on stdin
    #[arg(value_name = "CALL_DIR")]
    pub call_dir: PathBuf,
    /// After `-`: where the call dir will be (the daemon's data dir, or the call's run dir)
    #[arg(value_name = "DIR")]
    pub within: Option<PathBuf>,
}

/// Runs the shim to its end and exits the process with its code (it never returns).
pub fn run(args: &Args) -> ! {
    use runbook_engine::action::shim;
    let code = match &args.within {
        Some(within) if args.call_dir.as_os_str() == shim::AHEAD => shim::run_ahead(within),
        None if args.call_dir.as_os_str() != shim::AHEAD => shim::run(&args.call_dir),
        _ => {
            eprintln!("runbook shim: `-` takes the dir the call will be in, and only `-` does");
            2
        }
    };
    std::process::exit(code)
}
