//! `runbook completions <shell>` and `runbook man`: shell completions and manual pages generated
//! from the command line's own definition, so they never drift from it. Neither needs a daemon.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write one page per command (runbook.1, runbook-start.1, ...) into DIR instead of
    /// printing runbook(1)
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script of `shell` for `command`.
pub fn completions(command: clap::Command, args: &CompletionsArgs) -> Result<()> {
    let mut command = visible(command);
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "runbook", &mut out);
    out.flush().context("writing the completions")
}

/// Prints runbook(1), or writes every command's page into `--dir`.
pub fn man(command: clap::Command, args: &ManArgs) -> Result<()> {
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
            eprintln!("manual pages written into {}", dir.display());
            Ok(())
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("writing the manual page")?;
            out.flush().context("writing the manual page")
        }
    }
}

/// `command` without its hidden subcommands (the supervisor), which `clap_complete` would offer
/// (it does not filter them, `clap_mangen` does). `clap::Command` cannot remove a subcommand, so
/// the root is assembled again from its own arguments and visible subcommands: nothing of the
/// command line is restated here.
fn visible(command: clap::Command) -> clap::Command {
    let mut root = clap::Command::new("runbook")
        .version(env!("CARGO_PKG_VERSION"))
        .args(command.get_arguments().cloned())
        .subcommands(
            command
                .get_subcommands()
                .filter(|subcommand| !subcommand.is_hide_set())
                .cloned(),
        );
    if let Some(about) = command.get_about() {
        root = root.about(about.clone());
    }
    root
}
