//! Run parameters: the values an operator passes, checked and typed against the definition.

use serde_json::{Map, Value};

use super::{Definition, ParamKind, ParamSpec};

/// A parameter that is missing, unknown or malformed; when several are missing, `param` is the
/// first and `message` names them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub param: String,
    pub message: String,
    /// Whether the error is about several params (then the message names each).
    pub several: bool,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.several {
            write!(formatter, "{}", self.message)
        } else {
            write!(formatter, "param {:?}: {}", self.param, self.message)
        }
    }
}

impl std::error::Error for ParamError {}

impl ParamError {
    /// The request field it is about: `params.<name>`, or `params` for several.
    pub fn field(&self) -> String {
        if self.several {
            "params".to_owned()
        } else {
            format!("params.{}", self.param)
        }
    }
}

/// Resolves the given values against the definition: unknown names, missing required params and
/// malformed values are errors; defaults fill the rest. Strings are parsed by the param's type.
pub fn resolve(
    definition: &Definition,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, ParamError> {
    for name in given.keys() {
        if !definition.params.iter().any(|spec| &spec.name == name) {
            let known: Vec<_> = definition
                .params
                .iter()
                .map(|spec| spec.name.as_str())
                .collect();
            return Err(ParamError {
                several: false,
                param: name.clone(),
                message: format!(
                    "unknown param for runbook {} (it takes: {})",
                    definition.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
    }
    // Every missing param is named in one error, so that one more try is enough.
    let missing: Vec<&ParamSpec> = definition
        .params
        .iter()
        .filter(|spec| spec.required && spec.default.is_none() && !given.contains_key(&spec.name))
        .collect();
    if let [spec] = missing.as_slice() {
        return Err(ParamError {
            several: false,
            param: spec.name.clone(),
            message: format!(
                "missing required param ({}); pass -p {}=...",
                about(spec),
                spec.name
            ),
        });
    }
    if !missing.is_empty() {
        return Err(ParamError {
            several: true,
            param: missing[0].name.clone(),
            message: format!(
                "missing required params: {}; pass {}",
                missing
                    .iter()
                    .map(|spec| format!("{} ({})", spec.name, about(spec)))
                    .collect::<Vec<_>>()
                    .join(", "),
                missing
                    .iter()
                    .map(|spec| format!("-p {}=...", spec.name))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        });
    }
    let mut resolved = Map::new();
    for spec in &definition.params {
        let value = match given.get(&spec.name) {
            Some(value) => check_value(spec, value).map_err(|message| ParamError {
                several: false,
                param: spec.name.clone(),
                message,
            })?,
            None => spec.default.clone().unwrap_or(Value::Null),
        };
        resolved.insert(spec.name.clone(), value);
    }
    Ok(resolved)
}

/// A param's type and description, for messages (`string: Broker name`).
fn about(spec: &ParamSpec) -> String {
    if spec.description.is_empty() {
        spec.kind.name().to_owned()
    } else {
        format!("{}: {}", spec.kind.name(), spec.description)
    }
}

/// Checks one value against its spec and returns it in its typed form.
pub(crate) fn check_value(spec: &ParamSpec, value: &Value) -> Result<Value, String> {
    if has_nul(value) {
        // A command line, an environment variable or a file name ends at a NUL: the command
        // would silently see less than the operator passed.
        return Err(
            "contains a NUL byte (\\0), which no command line, environment or file name can carry"
                .to_owned(),
        );
    }
    let typed = match (spec.kind, value) {
        (ParamKind::String, Value::String(_)) => value.clone(),
        (ParamKind::String, Value::Number(number)) => Value::String(number.to_string()),
        (ParamKind::Int, Value::Number(number)) if number.is_i64() => value.clone(),
        (ParamKind::Int, Value::String(text)) => Value::from(
            text.trim()
                .parse::<i64>()
                .map_err(|_| format!("{text:?} is not an integer"))?,
        ),
        (ParamKind::Bool, Value::Bool(_)) => value.clone(),
        (ParamKind::Bool, Value::String(text)) => match text.trim() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            other => return Err(format!("{other:?} is not a bool (true or false)")),
        },
        (ParamKind::Duration, Value::String(text)) => {
            crate::duration::parse(text)?;
            value.clone()
        }
        (ParamKind::List, Value::Array(_)) => value.clone(),
        (ParamKind::List, Value::String(text)) => Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_owned()))
                .collect(),
        ),
        (ParamKind::Enum, Value::String(text)) => {
            if !spec.values.iter().any(|allowed| allowed == text) {
                return Err(format!("{text:?} is not one of {}", spec.values.join(", ")));
            }
            value.clone()
        }
        (ParamKind::HostPort, Value::String(text)) => {
            for address in text.split(';') {
                check_host_port(address.trim())?;
            }
            value.clone()
        }
        (kind, other) => return Err(format!("expected a {}, got {other}", kind.name())),
    };
    if let (Some(pattern), Value::String(text)) = (&spec.pattern, &typed) {
        let regex = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|error| format!("bad pattern: {error}"))?;
        if !regex.is_match(text) {
            return Err(format!("{text:?} does not match the pattern {pattern:?}"));
        }
    }
    Ok(typed)
}

/// Whether any string in `value` holds a NUL byte.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || has_nul(item)),
        _ => false,
    }
}

fn check_host_port(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |port| port == 0) {
        return Err(format!("{address:?} is not host:port"));
    }
    Ok(())
}
