//! The input an action takes, declared once, in code: every key of `with`, its type, whether it
//! is required, its allowed values, and whether the action changes the world or only reads it.
//!
//! # Contract
//!
//! - Validation ([`Schema::check`] with `rendered = false`) refuses an unknown key (naming the
//!   nearest known one), a missing required key, and a literal value of the wrong type or outside
//!   the allowed set. A value that is a template (`{{ ... }}`) is only checked once it is rendered.
//! - At run time ([`Schema::check`] with `rendered = true`) every value is checked (keys are
//!   literal, so an unknown one was refused when the runbook was read); the runtime fails the
//!   call with a permanent error naming the key before the action sees its input.
//! - The types accept what the actions' parsers accept (a `Text` is also a number or a bool,
//!   written as text), so a schema never refuses an input its action would take.

use serde::Serialize;
use serde_json::Value;

use crate::definition::CoreAction;

/// What an action takes and whether it mutates.
#[derive(Debug, Serialize)]
pub struct Schema {
    /// Whether the action changes the world (`exec`, a config change) or only reads it.
    pub mutates: bool,
    /// Whether any key is taken as data (`noop`, whose output is its input); `keys` are then
    /// only the ones with a meaning.
    pub open: bool,
    pub keys: &'static [Key],
}

/// One key of an action's `with` table.
#[derive(Debug, Serialize)]
pub struct Key {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub required: bool,
    /// The allowed values of a `Text` or `Int` key, as text (empty: any).
    pub values: &'static [&'static str],
    pub description: &'static str,
}

/// The type of a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A string (a number or a bool is taken as its text).
    Text,
    /// An integer, or a string holding one.
    Int,
    /// `true`/`false`, or the strings `"true"`/`"false"`.
    Bool,
    /// A duration such as `"30s"` or `"72h"`.
    Duration,
    /// A list of strings, or one string separated by `;` or `,`.
    List,
    /// A list of tables (e.g. a previous step's output).
    Records,
    /// A table.
    Table,
    /// A shell command string, or an argv list of strings.
    Command,
    /// Epoch milliseconds, an RFC 3339 instant, or `"now"`.
    Instant,
    /// A string, a number or a bool.
    Scalar,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "string",
            Kind::Int => "integer",
            Kind::Bool => "bool",
            Kind::Duration => "duration",
            Kind::List => "list of strings",
            Kind::Records => "list of tables",
            Kind::Table => "table",
            Kind::Command => "command",
            Kind::Instant => "instant",
            Kind::Scalar => "string, number or bool",
        }
    }

    /// What a value of this kind looks like, for messages.
    fn expected(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::Duration => "a duration such as \"30s\" or \"72h\"",
            Kind::List => "a list of strings or a string separated by ';' or ','",
            Kind::Records => "a list of tables",
            Kind::Table => "a table",
            Kind::Command => "a shell command string or an argv list of strings",
            Kind::Instant => "epoch milliseconds, an RFC 3339 instant or \"now\"",
            Kind::Scalar => "a string, a number or a bool",
        }
    }

    /// Whether `value` (rendered, no template left) is of this kind.
    fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Kind::Text | Kind::Scalar, Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
                true
            }
            (Kind::Int, Value::Number(number)) => number.is_i64() || number.is_u64(),
            (Kind::Int, Value::String(text)) => {
                text.trim().is_empty() || text.trim().parse::<i64>().is_ok()
            }
            (Kind::Bool, Value::Bool(_)) => true,
            (Kind::Bool, Value::String(text)) => matches!(text.trim(), "true" | "false"),
            (Kind::Duration, Value::String(text)) => {
                text.trim().is_empty() || crate::duration::parse(text.trim()).is_ok()
            }
            (Kind::List, Value::String(_)) => true,
            (Kind::List, Value::Array(items)) => items.iter().all(Value::is_string),
            (Kind::Records, Value::Array(items)) => items.iter().all(Value::is_object),
            (Kind::Table, Value::Object(_)) => true,
            (Kind::Command, Value::String(text)) => !text.trim().is_empty(),
            (Kind::Command, Value::Array(argv)) => !argv.is_empty(),
            (Kind::Instant, Value::Number(number)) => number.is_i64(),
            (Kind::Instant, Value::String(text)) => {
                let text = text.trim();
                text == "now"
                    || text.parse::<i64>().is_ok()
                    || chrono::DateTime::parse_from_rfc3339(text).is_ok()
            }
            _ => false,
        }
    }
}

/// One thing wrong with an input: the key and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.key, self.message)
    }
}

/// The fields of a step itself, which a misplaced key in `with` may have meant.
const STEP_FIELDS: &[&str] = &[
    "timeout",
    "retry",
    "when",
    "until",
    "every",
    "capture",
    "on_failure",
    "idempotent",
    "undo",
];

fn is_template(value: &Value) -> bool {
    crate::template::has_template(value)
}

impl Schema {
    pub fn key(&self, name: &str) -> Option<&Key> {
        self.keys.iter().find(|key| key.name == name)
    }

    /// Everything wrong with `input`, in the order of its keys then of the schema's. With
    /// `rendered = false` (validation), a value that is a template is not type-checked.
    pub fn check(&self, input: &Value, rendered: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        let empty = serde_json::Map::new();
        let Some(map) = input.as_object().or(input.is_null().then_some(&empty)) else {
            problems.push(Problem {
                key: "with".to_owned(),
                message: format!("must be a table, not {input}"),
            });
            return problems;
        };
        for (name, value) in map {
            let Some(key) = self.key(name) else {
                // Keys are never templates: an unknown one is refused when the runbook is read.
                // A run started by an earlier release keeps running with it.
                if self.open || rendered {
                    continue;
                }
                let names: Vec<&str> = self.keys.iter().map(|key| key.name).collect();
                let hint = match (nearest(name, &names), nearest(name, STEP_FIELDS)) {
                    (Some(near), _) => format!("did you mean `{near}`?"),
                    (None, Some(field)) => {
                        format!("did you mean the step's `{field}`, outside `with`?")
                    }
                    (None, None) => format!("known keys: {}", names.join(", ")),
                };
                problems.push(Problem {
                    key: name.clone(),
                    message: format!("unknown key ({hint})"),
                });
                continue;
            };
            if !rendered && is_template(value) {
                continue;
            }
            if !key.kind.accepts(value) {
                // A duration's own parser says best what is wrong with it.
                let detail = match (key.kind, value) {
                    (Kind::Duration, Value::String(text)) => crate::duration::parse(text.trim())
                        .err()
                        .map(|message| format!(": {message}"))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                problems.push(Problem {
                    key: name.clone(),
                    message: format!(
                        "expected {}, got {}{detail}",
                        key.kind.expected(),
                        short(value)
                    ),
                });
                continue;
            }
            // Allowed values are written as text; a number is compared as its text.
            let text = match value {
                Value::String(text) => Some(text.trim().to_owned()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            };
            if let (false, Some(text)) = (key.values.is_empty(), text) {
                if !key.values.contains(&text.as_str()) {
                    problems.push(Problem {
                        key: name.clone(),
                        message: format!(
                            "{text:?} is not one of {} ({})",
                            key.values
                                .iter()
                                .map(|value| format!("{value:?}"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            key.description
                        ),
                    });
                }
            }
        }
        for key in self.keys.iter().filter(|key| key.required) {
            if map.get(key.name).is_none_or(Value::is_null) {
                problems.push(Problem {
                    key: key.name.to_owned(),
                    message: format!(
                        "missing required key: {} ({})",
                        key.description,
                        key.kind.expected()
                    ),
                });
            }
        }
        problems
    }

    /// An input that holds a plausible value for every key (the required ones at least), used
    /// to check that an action's parser accepts what its schema declares.
    pub fn sample(&self, all: bool) -> Value {
        let mut map = serde_json::Map::new();
        for key in self.keys.iter().filter(|key| all || key.required) {
            let value = match (key.values.first(), key.kind) {
                (Some(value), Kind::Int) => value
                    .parse::<i64>()
                    .map_or_else(|_| Value::from(*value), Value::from),
                (Some(value), _) => Value::from(*value),
                (None, Kind::Text) => Value::from(key.name),
                (None, Kind::Int) => Value::from(1),
                (None, Kind::Bool) => Value::from(true),
                (None, Kind::Duration) => Value::from("1m"),
                (None, Kind::List) => Value::from("127.0.0.1:9876"),
                (None, Kind::Records) => Value::Array(Vec::new()),
                (None, Kind::Table) => Value::Object(Default::default()),
                (None, Kind::Command) => Value::from("true"),
                (None, Kind::Instant) => Value::from("now"),
                (None, Kind::Scalar) => Value::from("x"),
            };
            map.insert(key.name.to_owned(), value);
        }
        Value::Object(map)
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

/// The name in `names` nearest to `name` (at most a third of its letters different), if any.
pub fn nearest<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    names
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance by characters, a swap of two neighbours counting as one edit (`pasre`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in table.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in table[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (table[i - 1][j] + 1)
                .min(table[i][j - 1] + 1)
                .min(table[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(table[i - 2][j - 2] + 1);
            }
            table[i][j] = best;
        }
    }
    table[a.len()][b.len()]
}

const fn key(name: &'static str, kind: Kind, description: &'static str) -> Key {
    Key {
        name,
        kind,
        required: false,
        values: &[],
        description,
    }
}

impl Key {
    /// The same key, required.
    pub const fn required(self) -> Key {
        Key {
            required: true,
            ..self
        }
    }

    /// The same key, limited to `values`.
    pub const fn one_of(self, values: &'static [&'static str]) -> Key {
        Key { values, ..self }
    }
}

/// An optional key (chain [`Key::required`] and [`Key::one_of`]).
pub const fn optional(name: &'static str, kind: Kind, description: &'static str) -> Key {
    key(name, kind, description)
}

/// The keys `exec` takes (also those `rocketmq.command` passes on to it).
pub const EXEC: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        optional("command", Kind::Command, "a shell string, or an argv list").required(),
        optional("env", Kind::Table, "environment variables for the command"),
        optional("cwd", Kind::Text, "the working directory"),
        optional("parse", Kind::Text, "how to read stdout into `output`")
            .one_of(&["text", "json", "lines"]),
        optional("regex", Kind::Text, "captures taken from stdout"),
        optional(
            "grace",
            Kind::Duration,
            "how long a stopped command has between SIGTERM and SIGKILL",
        ),
        optional("host", Kind::Text, "run over ssh on user@host:port"),
        optional("identity_file", Kind::Text, "ssh private key (with `host`)"),
        optional(
            "known_hosts",
            Kind::Text,
            "strict, accept-new, off, or a path (with `host`)",
        ),
        optional(
            "connect_timeout",
            Kind::Duration,
            "ssh connect timeout (with `host`)",
        ),
    ],
};

const NOOP: Schema = Schema {
    mutates: false,
    open: true,
    keys: &[],
};

const WAIT: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        optional("duration", Kind::Duration, "how long to wait (or `until`)"),
        optional("until", Kind::Text, "an RFC 3339 instant to wait for"),
    ],
};

const WINDOW: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        optional("cron", Kind::Text, "the instants the window opens").required(),
        optional("tz", Kind::Text, "an IANA time zone (default UTC)"),
    ],
};

const APPROVAL: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        optional("prompt", Kind::Text, "what the operator is asked"),
        optional(
            "distinct_approver",
            Kind::Bool,
            "the approver must not be who started the run",
        ),
    ],
};

/// The schema of a core action the state machine decides itself (`noop`, `wait`, `window`,
/// `approval`); `exec` is a registered action like any other.
pub fn core(action: &str) -> Option<&'static Schema> {
    match crate::definition::CoreAction::of(action)? {
        CoreAction::Noop => Some(&NOOP),
        CoreAction::Wait => Some(&WAIT),
        CoreAction::Window => Some(&WINDOW),
        CoreAction::Approval => Some(&APPROVAL),
        CoreAction::Exec | CoreAction::WaitUntil | CoreAction::ForEach => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn messages(schema: &Schema, input: Value, rendered: bool) -> Vec<String> {
        schema
            .check(&input, rendered)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn unknown_keys_are_named_with_the_nearest_known_one() {
        assert_eq!(
            messages(&EXEC, json!({"command": "true", "timeot": "5s"}), false),
            ["timeot: unknown key (did you mean the step's `timeout`, outside `with`?)"]
        );
        assert_eq!(
            messages(&EXEC, json!({"command": "true", "pasre": "json"}), false),
            ["pasre: unknown key (did you mean `parse`?)"]
        );
        assert_eq!(
            messages(&WAIT, json!({"duration": "1s", "extra": 1}), false),
            ["extra: unknown key (known keys: duration, until)"]
        );
        // Keys are checked when the runbook is read, not again in a run.
        assert!(messages(&WAIT, json!({"duration": "1s", "extra": 1}), true).is_empty());
        // A noop's input is its output: any key is data.
        assert!(messages(&NOOP, json!({"x": 1}), false).is_empty());
    }

    #[test]
    fn required_types_and_values_are_checked_unless_a_template() {
        assert_eq!(
            messages(&EXEC, json!({"parse": "yaml", "grace": 30}), false),
            [
                "grace: expected a duration such as \"30s\" or \"72h\", got 30",
                "parse: \"yaml\" is not one of \"text\", \"json\", \"lines\" (how to read stdout into `output`)",
                "command: missing required key: a shell string, or an argv list (a shell command string or an argv list of strings)"
            ]
        );
        assert!(messages(
            &EXEC,
            json!({"command": "x", "grace": "{{ params.g }}", "parse": "{{ params.p }}"}),
            false
        )
        .is_empty());
        assert_eq!(
            messages(&EXEC, json!({"command": "x", "grace": "soon"}), true),
            ["grace: expected a duration such as \"30s\" or \"72h\", got \"soon\": bad duration \"soon\": expected number at 0"]
        );
    }

    #[test]
    fn nearest_names() {
        assert_eq!(nearest("namesrvv", &["namesrv", "broker"]), Some("namesrv"));
        assert_eq!(nearest("expct", &["expect", "broker"]), Some("expect"));
        assert_eq!(nearest("zzz", &["expect", "broker"]), None);
        assert_eq!(nearest("pasre", &["parse", "regex"]), Some("parse"));
    }
}
