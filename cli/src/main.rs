//! `runbook`: the command-line client of the runbook daemon, and the daemon itself
//! (`runbook daemon`). Every command but `daemon` and `validate` is a thin client of the
//! daemon's HTTP/JSON API on `<data-dir>/runbook.sock` (see `docs/api.md`).
//!
//! Data goes to stdout (`--json`: the daemon's JSON, pretty); progress, confirmations and
//! errors go to stderr, errors as `error: <message>` (with `--json`, as one line of the API's
//! error shape, `{"error": {"code", "message", "field"}}`). Exit codes are documented in
//! [`exit`].

mod client;
mod commands;
mod exit;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{CommandFactory as _, Parser, Subcommand};

use crate::client::Client;
use crate::commands::Context;

/// Durable, resumable operational runbooks: a daemon and its CLI.
#[derive(Debug, Parser)]
#[command(name = "runbook", version, about, propagate_version = true)]
struct Cli {
    /// The daemon's data dir (store, socket `runbook.sock`, logs) [default:
    /// $XDG_DATA_HOME/runbook, else $HOME/.local/share/runbook]
    #[arg(long, env = "RUNBOOK_DATA_DIR", value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Machine output: print the daemon's JSON response on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Talk to a daemon's TCP listener instead of the local socket, e.g. https://ops1:8443
    /// (the token comes from RUNBOOK_TOKEN)
    #[arg(long, env = "RUNBOOK_SERVER", value_name = "URL", global = true)]
    server: Option<String>,
    /// The SHA-256 fingerprint of the daemon's certificate (`runbook version` on its host)
    #[arg(
        long,
        env = "RUNBOOK_SERVER_FINGERPRINT",
        value_name = "HEX",
        global = true
    )]
    server_fingerprint: Option<String>,
    /// The CA certificate(s) (PEM) that signed the daemon's certificate, instead of a pin
    #[arg(long, env = "RUNBOOK_CA_CERT", value_name = "FILE", global = true)]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: the store, the timers, the executor and the API on the socket
    Daemon(commands::daemon::Args),
    /// Check a runbook file locally (no daemon needed)
    Validate(commands::validate::Args),
    /// List the runbooks the daemon knows
    List(commands::list::Args),
    /// Show a runbook's params and steps
    Describe(commands::describe::Args),
    /// Dry run: the fully rendered steps of a runbook, nothing executed
    Plan(commands::plan::Args),
    /// Start a run of a runbook; prints its id
    Start(commands::start::Args),
    /// List runs: state, current step, next wake-up
    Ps(commands::ps::Args),
    /// Show a run: steps, timings, notes, who did what
    Show(commands::show::Args),
    /// Follow a run live until it finishes (exit 7 unless it succeeds)
    Watch(commands::watch::Args),
    /// Print the stdout/stderr of a run's steps
    Logs(commands::logs::Args),
    /// Pass an approval gate of a run
    Approve(commands::approve::Args),
    /// Pause a run (its waits stop counting)
    Pause(commands::pause::Args),
    /// Resume a paused run
    Resume(commands::resume::Args),
    /// Cancel a run
    Cancel(commands::cancel::Args),
    /// Roll a run back: run the undo of its done steps
    Rollback(commands::rollback::Args),
    /// Run a failed or interrupted step again
    Retry(commands::retry::Args),
    /// Skip a failed or interrupted step and go on
    Skip(commands::skip::Args),
    /// Cron triggers that launch runbooks: add, ls, show, pause, resume, rm, trigger, backfill
    #[command(subcommand)]
    Schedule(commands::schedule::Command),
    /// Users of the TCP listener and their roles: add, ls, rm
    #[command(subcommand)]
    User(commands::access::UserCommand),
    /// Bearer tokens of users: create (shown once), ls, revoke
    #[command(subcommand)]
    Token(commands::access::TokenCommand),
    /// Check the store: every record's format and checksum
    #[command(subcommand)]
    Store(commands::store::Command),
    /// Start a daemon if needed and run the built-in `demo` runbook end to end
    Demo(commands::demo::Args),
    /// Show this client's version and the daemon's
    Version(commands::version::Args),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell
    Completions(commands::docs::CompletionsArgs),
    /// Print the manual page runbook(1), or write every command's page into a directory
    Man(commands::docs::ManArgs),
    /// Internal: the supervisor of one `exec` command (started by the daemon)
    #[command(hide = true)]
    Shim(commands::shim::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    // Before parsing: a command line clap refuses is an error too, in JSON when asked for.
    let json = std::env::args_os().skip(1).any(|arg| arg == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if json && err.use_stderr() => {
            exit::print_json_error(&exit::usage_error(&err));
            return ExitCode::from(exit::USAGE);
        }
        Err(err) => err.exit(),
    };
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        // `runbook logs ... | head`: the reader is gone, which is not an error worth a word.
        Err(err) if exit::is_broken_pipe(&err) => ExitCode::from(exit::SUCCESS),
        Err(err) => {
            if json {
                exit::print_json_error(&exit::json_error(&err));
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(exit::code_of(&err))
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    // Before the data dir is resolved: the shim needs none.
    match &cli.command {
        Command::Shim(args) => commands::shim::run(args),
        Command::Completions(args) => return commands::docs::completions(Cli::command(), args),
        Command::Man(args) => return commands::docs::man(Cli::command(), args),
        _ => {}
    }
    let data_dir = match cli.data_dir {
        Some(data_dir) => data_dir,
        None => default_data_dir()?,
    };
    let remote = match &cli.server {
        Some(url) => Some(
            client::Remote::new(
                url,
                std::env::var("RUNBOOK_TOKEN")
                    .ok()
                    .filter(|token| !token.trim().is_empty()),
                cli.server_fingerprint.as_deref(),
                cli.ca_cert.as_deref(),
            )
            .map_err(exit::invalid)?,
        ),
        None => None,
    };
    if remote.is_some() && matches!(cli.command, Command::Daemon(_) | Command::Demo(_)) {
        bail!("--server is for talking to a daemon; `daemon` and `demo` run one here");
    }
    let ctx = Context {
        client: Client::new(data_dir.join("runbook.sock"), remote),
        data_dir,
        json: cli.json,
    };
    match cli.command {
        Command::Daemon(args) => commands::daemon::run(&ctx, args).await,
        Command::Validate(args) => commands::validate::run(&ctx, args).await,
        Command::List(args) => commands::list::run(&ctx, args).await,
        Command::Describe(args) => commands::describe::run(&ctx, args).await,
        Command::Plan(args) => commands::plan::run(&ctx, args).await,
        Command::Start(args) => commands::start::run(&ctx, args).await,
        Command::Ps(args) => commands::ps::run(&ctx, args).await,
        Command::Show(args) => commands::show::run(&ctx, args).await,
        Command::Watch(args) => commands::watch::run(&ctx, args).await,
        Command::Logs(args) => commands::logs::run(&ctx, args).await,
        Command::Approve(args) => commands::approve::run(&ctx, args).await,
        Command::Pause(args) => commands::pause::run(&ctx, args).await,
        Command::Resume(args) => commands::resume::run(&ctx, args).await,
        Command::Cancel(args) => commands::cancel::run(&ctx, args).await,
        Command::Rollback(args) => commands::rollback::run(&ctx, args).await,
        Command::Retry(args) => commands::retry::run(&ctx, args).await,
        Command::Skip(args) => commands::skip::run(&ctx, args).await,
        Command::Schedule(command) => commands::schedule::run(&ctx, command).await,
        Command::Store(command) => commands::store::run(&ctx, command).await,
        Command::Demo(args) => commands::demo::run(&ctx, args).await,
        Command::Version(args) => commands::version::run(&ctx, args).await,
        Command::User(command) => commands::access::user(&ctx, command).await,
        Command::Token(command) => commands::access::token(&ctx, command).await,
        Command::Shim(args) => commands::shim::run(&args),
        Command::Completions(args) => commands::docs::completions(Cli::command(), &args),
        Command::Man(args) => commands::docs::man(Cli::command(), &args),
    }
}

/// `$XDG_DATA_HOME/runbook`, else `$HOME/.local/share/runbook` (relative values are ignored,
/// as the XDG spec asks).
fn default_data_dir() -> Result<PathBuf> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    if let Some(xdg) = absolute("XDG_DATA_HOME") {
        return Ok(xdg.join("runbook"));
    }
    if let Some(home) = absolute("HOME") {
        return Ok(home.join(".local/share/runbook"));
    }
    bail!(
        "no data dir: pass --data-dir DIR or set RUNBOOK_DATA_DIR \
         (neither XDG_DATA_HOME nor HOME is set)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The `runbook ...` commands a text tells the operator to run: after a backquote, an
    /// opening parenthesis, a colon or at the start of a line, up to the closing backquote or
    /// parenthesis, `;`, `,`, ` (` or the end of the line.
    pub(crate) fn commands_in(text: &str) -> Vec<Vec<String>> {
        let mut commands = Vec::new();
        for (start, _) in text.match_indices("runbook ") {
            let before = text[..start].trim_end_matches(' ');
            let introduced = before.is_empty()
                || before.ends_with(['`', '(', ':', '\n'])
                || text[..start].ends_with('`');
            if !introduced {
                continue;
            }
            let rest = &text[start..];
            // `runbook   gates v1`: a label in `show`, not a command.
            if rest["runbook ".len()..].starts_with(' ') {
                continue;
            }
            let end = rest
                .find(['`', ')', ';', ',', '\n'])
                .into_iter()
                .chain(rest.find(" ("))
                .min()
                .unwrap_or(rest.len());
            let words = shlex::split(&rest[..end])
                .unwrap_or_else(|| panic!("unbalanced quotes in {:?}", &rest[..end]));
            commands.push(words);
        }
        commands
    }

    /// Every command a hint prints parses as it is printed.
    pub(crate) fn check_hints_parse(text: &str) -> usize {
        let commands = commands_in(text);
        for words in &commands {
            let parsed = Cli::try_parse_from(words);
            assert!(
                parsed.is_ok(),
                "the hint {:?} in {text:?} does not parse: {}",
                words.join(" "),
                parsed.err().map(|err| err.to_string()).unwrap_or_default()
            );
        }
        commands.len()
    }

    #[test]
    fn every_printed_command_parses() {
        use serde_json::json;
        let id = "0193a8c4-5e2f-7abc-8def-0123456789ab";
        let step_attention = json!({"id": id, "attention": {"reason": "step_failed",
            "step": "gate", "message": "step gate failed: no approval after 1h"},
            "steps": [{"id": "gate", "action": "approval"}], "undos_left": ["revoke"]});
        let loop_attention = json!({"id": id, "attention": {"reason": "interrupted",
            "step": "brokers[1].restart", "message": "outcome unknown"}, "steps": []});
        let undo_attention = json!({"id": id, "attention": {"reason": "undo_failed",
            "step": "revoke", "message": "the undo of revoke failed"},
            "audit": [{"action": "rollback"}], "undos_left": ["revoke"]});
        let stepless = json!({"id": id, "attention": {"reason": "corrupt", "message": "x"}});
        let gate = json!({"id": id, "state": "waiting", "current_step": "gate",
            "steps": [{"id": "gate", "state": "waiting", "waiting_for": "approval"}]});
        let unreachable = client::ApiError::Unreachable {
            remote: None,
            socket: PathBuf::from("/tmp/data dir/runbook.sock"),
            cause: "connection refused".to_owned(),
        };
        let texts = [
            commands::show::attention_text(&commands::show::run_view(&step_attention).unwrap())
                .unwrap_or_default(),
            commands::show::attention_text(&commands::show::run_view(&loop_attention).unwrap())
                .unwrap_or_default(),
            commands::show::attention_text(&commands::show::run_view(&undo_attention).unwrap())
                .unwrap_or_default(),
            commands::show::attention_text(&commands::show::run_view(&stepless).unwrap())
                .unwrap_or_default(),
            commands::cancel::undos_warning(&json!({"id": id}), &["stop".to_owned()]),
            commands::cancel::confirmation(
                &json!({"id": id, "state": "canceled",
                "undos_left": ["stop", "revoke"]}),
                false,
            ),
            commands::watch::status(&commands::show::run_view(&gate).unwrap(), render::now()),
            commands::watch::paused_hint(id),
            commands::watch::demo_approval_hint("gate", id),
            commands::ps::more_hint(id),
            commands::ps::NONE_UNFINISHED.to_owned(),
            commands::demo::more_hint("0193a8c4-5e2f"),
            commands::schedule::backfill_rest_hint(
                "1000",
                "nightly",
                "2026-01-07T00:00:00+00:00",
                "2026-02-01T00:00:00Z",
            ),
            unreachable.to_string(),
        ];
        for text in &texts {
            assert!(check_hints_parse(text) > 0, "no command found in {text:?}");
        }
        // The attention of a failed gate names both decisions, with the reason they need.
        let gate_commands = commands_in(&texts[0]);
        let lines: Vec<String> = gate_commands.iter().map(|words| words.join(" ")).collect();
        assert_eq!(
            lines,
            [
                format!("runbook retry {id} gate --comment REASON"),
                format!("runbook skip {id} gate --comment REASON"),
                format!("runbook rollback {id}"),
                format!("runbook cancel {id}"),
            ]
        );
        // A loop's step is quoted: to a shell, `brokers[1].restart` is a pattern.
        assert!(texts[1].contains(&format!("runbook retry {id} 'brokers[1].restart'")));
        // The extractor finds what the old hint printed, which did not parse.
        let old = format!("decide with: runbook retry|skip|cancel {id} gate");
        let words = &commands_in(&old)[0];
        assert!(Cli::try_parse_from(words).is_err());
    }

    #[test]
    fn global_options_go_after_the_verb() {
        let cli = Cli::try_parse_from(["runbook", "ps", "--json", "--data-dir", "/tmp/x"]);
        let cli = cli.map_err(|err| err.to_string());
        assert!(matches!(
            cli,
            Ok(Cli {
                json: true,
                data_dir: Some(_),
                command: Command::Ps(_),
                ..
            })
        ));
    }
}
