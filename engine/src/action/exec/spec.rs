//! An exec step's input, parsed once: the command (a shell string or an argv), its env, dir,
//! timeout and grace, and the host it runs on over ssh.

use super::*;

/// The parsed input of an exec step.
pub(crate) struct ExecSpec {
    /// What the shim runs locally: the command, or the `ssh` client that runs it remotely.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub parse: String,
    pub regex: Option<regex::Regex>,
    pub grace: Duration,
    /// `host` as written, when the command runs over ssh.
    pub host: Option<String>,
}

/// The command `input` runs, as one line: a shell string as given, an argv quoted word by word;
/// with `host`, the host it runs on.
pub fn would_run(input: &Value) -> Result<String, ActionFailure> {
    spec(input)?;
    let command = match input.get("command") {
        Some(Value::Array(argv)) => argv
            .iter()
            .map(|word| match word {
                Value::String(text) => crate::template::shell::quote(text),
                other => crate::template::shell::quote(&other.to_string()),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::String(command)) => command.clone(),
        _ => String::new(),
    };
    Ok(match input.get("host").and_then(Value::as_str) {
        Some(host) => format!("{command} (on {host})"),
        None => command,
    })
}

pub(crate) fn spec(input: &Value) -> Result<ExecSpec, ActionFailure> {
    let invalid = |message: String| ActionFailure::permanent(format!("exec: {message}"));
    let argv = crate::action::core_input::exec_argv(input).map_err(invalid)?;
    let env: Vec<(String, String)> = input
        .get("env")
        .and_then(Value::as_object)
        .map(|env| {
            env.iter()
                .map(|(key, value)| {
                    (
                        key.clone(),
                        value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let duration = |field: &str, default: Duration| -> Result<Duration, ActionFailure> {
        match input.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::String(text)) => crate::duration::parse(text)
                .map_err(|message| invalid(format!("{field}: {message}"))),
            Some(other) => Err(invalid(format!(
                "{field}: must be a duration like \"10s\", not {other}"
            ))),
        }
    };
    let grace = duration("grace", DEFAULT_GRACE)?;
    let regex = match input.get("regex").and_then(Value::as_str) {
        Some(pattern) => {
            Some(regex::Regex::new(pattern).map_err(|error| invalid(format!("regex: {error}")))?)
        }
        None => None,
    };
    let cwd = input.get("cwd").and_then(Value::as_str).map(str::to_owned);
    let parse = input
        .get("parse")
        .and_then(Value::as_str)
        .unwrap_or("text")
        .to_owned();
    let text = |field: &str| -> Result<Option<&str>, ActionFailure> {
        match input.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(other) => Err(invalid(format!("{field}: must be a string, not {other}"))),
        }
    };
    let Some(host) = text("host")? else {
        for field in ["identity_file", "known_hosts", "connect_timeout"] {
            if text(field)?.is_some() {
                return Err(invalid(format!(
                    "{field}: only means something with `host`"
                )));
            }
        }
        return Ok(ExecSpec {
            argv,
            env,
            cwd,
            parse,
            regex,
            grace,
            host: None,
        });
    };
    let target = parse_host(host).map_err(invalid)?;
    let options = SshOptions {
        identity_file: text("identity_file")?.map(str::to_owned),
        known_hosts: KnownHosts::parse(text("known_hosts")?).map_err(invalid)?,
        connect_timeout: duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT)?,
    };
    let remote = remote_command(&argv, &env, cwd.as_deref()).map_err(invalid)?;
    Ok(ExecSpec {
        argv: ssh_argv(&target, &options, &remote),
        env: Vec::new(),
        cwd: None,
        parse,
        regex,
        grace,
        host: Some(host.to_owned()),
    })
}
