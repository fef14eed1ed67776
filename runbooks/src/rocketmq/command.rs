//! `rocketmq.command`: run an operator-given command template (a broker's stop or start command)
//! with `{{ broker }}`-style placeholders filled from `vars`, through the engine's `exec`.
//!
//! Input: `command` (the template, e.g. a runbook param), `vars` (`{broker = ..., broker_addr =
//! ..., broker_config = ...}`), and `exec`'s own `env`, `cwd`, `parse`, `grace`. A placeholder
//! that `vars` does not define fails the step before anything runs. Output: `exec`'s, plus
//! `command` (as run).

use runbook_engine::action::{Action, ActionContext, ActionFailure, Exec};
use serde_json::{json, Value};

use super::common::Input;
use super::files::{render_placeholders, vars};

pub async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let reader = Input::new("rocketmq.command", &input);
    let vars = vars(&reader)?;
    let template = reader.string("command")?;
    let command = render_placeholders(&reader, "command", &template, &vars)?;
    context.log.line(&format!("$ {command}"));
    let mut exec_input = json!({"command": command});
    for field in ["env", "cwd", "parse", "grace", "regex"] {
        if let Some(value) = reader.get(field) {
            exec_input[field] = value.clone();
        }
    }
    let mut output = Exec.call(exec_input, context).await?;
    output["command"] = json!(command);
    Ok(output)
}
