//! `rocketmq.command`: run an operator-given command template (a broker's stop or start command)
//! with `{{ broker }}`-style placeholders filled from `vars`, through the engine's `exec`.
//!
//! Input: `command` (the template, e.g. a runbook param), `vars` (`{broker = ..., broker_addr =
//! ..., broker_config = ...}`), and `exec`'s own `env`, `cwd`, `parse`, `grace`. A placeholder
//! that `vars` does not define fails the step before anything runs. Each value is quoted for the
//! shell where it stands (`runbook_engine::template::shell`), so `{{ broker }}` is one word
//! whatever the broker's name holds. Output: `exec`'s, plus
//! `command` (as run). Like `exec`, it runs under the exec supervisor: after a daemon crash it
//! re-attaches to a stop or start command still running instead of running it twice.

use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{Action, ActionContext, ActionFailure, ActionFuture, Exec};
use runbook_engine::template::shell;
use serde_json::{json, Value};

use super::files::{placeholders, vars};
use super::input::Input;

/// The input of `rocketmq.command` (mutates: it stops or starts a broker).
pub const SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        optional(
            "command",
            Kind::Text,
            "the command template, with {{ var }} placeholders",
        )
        .required(),
        optional("vars", Kind::Table, "values of the placeholders"),
        optional("env", Kind::Table, "environment variables for the command"),
        optional("cwd", Kind::Text, "the working directory"),
        optional("parse", Kind::Text, "how to read stdout into `output`")
            .one_of(&["text", "json", "lines"]),
        optional(
            "grace",
            Kind::Duration,
            "how long a stopped command has between SIGTERM and SIGKILL",
        ),
        optional("regex", Kind::Text, "captures taken from stdout"),
    ],
};

/// The `rocketmq.command` action.
pub struct Command;

impl Action for Command {
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn call(&self, input: Value, context: ActionContext) -> ActionFuture {
        Box::pin(async move {
            let (exec_input, command) = exec_input(&input)?;
            context.log.line(&format!("$ {command}"));
            finish(Exec.call(exec_input, context).await, &command)
        })
    }

    fn reattach(&self, input: Value, context: ActionContext) -> Option<ActionFuture> {
        let (exec_input, command) = exec_input(&input).ok()?;
        let following = Exec.reattach(exec_input, context)?;
        Some(Box::pin(async move { finish(following.await, &command) }))
    }
}

/// The `exec` input for a command template, and the command as it runs.
pub(super) fn exec_input(input: &Value) -> Result<(Value, String), ActionFailure> {
    let reader = Input::new("rocketmq.command", input);
    let vars = vars(&reader)?;
    let template = reader.string("command")?;
    let command = render_command(&reader, &template, &vars)?;
    let mut exec_input = json!({"command": command});
    for field in ["env", "cwd", "parse", "grace", "regex"] {
        if let Some(value) = reader.get(field) {
            exec_input[field] = value.clone();
        }
    }
    Ok((exec_input, command))
}

/// The command with each placeholder's value quoted for where it stands: the values (broker
/// names, addresses, paths) are data, never shell code; the template is the operator's command.
fn render_command(
    reader: &Input<'_>,
    template: &str,
    vars: &std::collections::BTreeMap<String, String>,
) -> Result<String, ActionFailure> {
    let pieces = placeholders(reader, "command", template, vars)?;
    let pieces: Vec<shell::Piece<'_>> = pieces
        .iter()
        .map(|(literal, value)| match value {
            false => shell::Piece::Literal(literal),
            true => shell::Piece::Value(literal),
        })
        .collect();
    shell::assemble(&pieces).map_err(|message| reader.bad("command", message))
}

fn finish(result: Result<Value, ActionFailure>, command: &str) -> Result<Value, ActionFailure> {
    let mut output = result?;
    output["command"] = json!(command);
    Ok(output)
}
