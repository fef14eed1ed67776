//! `runbook-shim shim - <dir>` (or `shim <call dir>`): the supervisor of one `exec` command, as a
//! binary of its own.
//!
//! The same supervisor as `runbook shim -` (all of its logic and its contract live in
//! `runbook_engine::action::shim`), with the same command line after the program name, so a
//! running shim looks the same in `ps` whichever binary it is. The `runbook` binary links the
//! whole CLI, the daemon and the RocketMQ client; this one links only the shim, so the daemon
//! starts it in a fraction of the time (`exec` uses it when it sits beside the daemon's own
//! executable, see `runbook_engine::action::exec`). No async runtime and no argument parser:
//! the daemon is its only caller.

use std::ffi::OsString;
use std::path::Path;

fn main() {
    use runbook_engine::action::shim;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = match args.as_slice() {
        [verb, ahead, within] if verb == "shim" && ahead == shim::AHEAD => {
            shim::run_ahead(Path::new(within))
        }
        [verb, call_dir] if verb == "shim" && call_dir != shim::AHEAD => {
            shim::run(Path::new(call_dir))
        }
        _ => {
            eprintln!(
                "usage: runbook-shim shim - <DIR> | runbook-shim shim <CALL_DIR>\n\
                 the supervisor of one `exec` command, started by the runbook daemon; not meant to be typed"
            );
            // As for any command line the CLI refuses (`runbook shim` without its call dir).
            2
        }
    };
    std::process::exit(code)
}
