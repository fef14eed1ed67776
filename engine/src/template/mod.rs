//! Templates and conditions (minijinja).
//!
//! Strings in a step's `with` are templates (`"{{ params.broker }}"`); `when` and `until` are
//! expressions (`output.lag == 0`). Undefined variables are errors, never empty strings: a typo in
//! a runbook must stop it, not send an empty broker name to the cluster. A string that is exactly
//! one `{{ expression }}` keeps the expression's type, so `"{{ params.brokers }}"` is a list.
//!
//! Rendering is pure: the same template and context always give the same value.
//!
//! # Contract: values are data, never shell code
//!
//! A string under a key named `command` (at any depth of an input: `exec`'s command, the command
//! of `rocketmq.command`, an action wrapped by `wait_until`) is a shell command. Every value
//! rendered into it is quoted for the place it stands ([`shell`]): `echo {{ x }}`, `'{{ x }}'`
//! and `"{{ x }}"` all give the shell exactly the value, whatever it holds. The template's own
//! text is not quoted. Only `{{ x | raw }}` puts a value in as shell code (validation warns about
//! every `raw`). An argv list (`command = ["echo", "{{ x }}"]`) runs without a shell and is not
//! quoted; a `command` that is one expression yielding a list is such an argv list.
//!
//! # Contract: bounded work and output
//!
//! A template or expression gets [`FUEL`] steps of the template engine and [`MAX_OUTPUT`] bytes of
//! output (the values in a command count too); more is [`Error::Limit`], never a hang or an
//! allocation failure of the daemon. The engine runs no macros, includes or imports.

mod check;
pub mod shell;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::LazyLock;

use minijinja::{AutoEscape, Environment, ErrorKind, Output, State, UndefinedBehavior};
use serde_json::Value;

pub use self::check::{check_callables, opts_out_of_quoting};

/// Names a runbook cannot use for a capture or loop variable.
pub const RESERVED_NAMES: &[&str] = &[
    "params", "steps", "run", "item", "index", "output", "loop", "true", "false", "none",
];

/// minijinja's global functions, which look like variables to the checker.
pub const GLOBAL_FUNCTIONS: &[&str] = &["range", "dict", "namespace", "debug"];

/// Steps of the template engine one rendering may take (a loop iteration costs a few).
pub const FUEL: u64 = 100_000;

/// Bytes one rendering may output (and, in a command, put in as values).
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// The name under which a shell command is compiled: it selects the shell auto-escape.
const SHELL: &str = "<command>";
/// Marks a value's place in a rendered command until it is quoted (private-use characters).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// `text with {{ expressions }}`.
    Text,
    /// A bare expression, as in `when` and `until`.
    Expression,
}

/// Why a template did not render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A mistake in the template or the data: an undefined name, a wrong type, a bad filter.
    #[error("{0}")]
    Invalid(String),
    /// The template asked for more work or output than a template may have.
    #[error("{0}")]
    Limit(String),
}

impl Error {
    pub fn is_limit(&self) -> bool {
        matches!(self, Error::Limit(_))
    }

    /// The same error with `prefix: ` in front of its message.
    pub fn context(self, prefix: &str) -> Error {
        match self {
            Error::Invalid(message) => Error::Invalid(format!("{prefix}: {message}")),
            Error::Limit(message) => Error::Limit(format!("{prefix}: {message}")),
        }
    }
}

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut environment = Environment::new();
    environment.set_undefined_behavior(UndefinedBehavior::Strict);
    environment.set_fuel(Some(FUEL));
    environment.set_auto_escape_callback(|name| {
        if name == SHELL {
            AutoEscape::Custom("shell")
        } else {
            AutoEscape::None
        }
    });
    environment.set_formatter(format_value);
    // `raw` is the one way to put a value into a command unquoted; `safe` and `escape` would be
    // others, and minijinja's `tojson` marks its result safe.
    environment.remove_filter("safe");
    environment.remove_filter("escape");
    environment.remove_filter("e");
    environment.add_filter("raw", |value: minijinja::Value| {
        minijinja::Value::from_safe_string(
            value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned),
        )
    });
    environment.add_filter("tojson", to_json);
    environment
});

/// The values of the command being rendered on this thread, in order.
struct Collector {
    values: Vec<String>,
    budget: usize,
    exceeded: bool,
}

thread_local! {
    static COLLECTOR: RefCell<Option<Collector>> = const { RefCell::new(None) };
}

/// Writes a value: as is outside commands; in a command, a marker for [`shell::assemble`].
fn format_value(
    out: &mut Output,
    state: &State,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    if state.auto_escape() != AutoEscape::Custom("shell") {
        return minijinja::escape_formatter(out, state, value);
    }
    let text = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    if value.is_safe() {
        if text.contains([OPEN, CLOSE]) {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "a raw value contains U+E000 or U+E001",
            ));
        }
        return out.write_str(&text).map_err(minijinja::Error::from);
    }
    let index = COLLECTOR.with(|collector| {
        let mut collector = collector.borrow_mut();
        let collector = collector.as_mut().ok_or_else(|| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "a command outside a render")
        })?;
        if text.len() > collector.budget {
            collector.exceeded = true;
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "output too long",
            ));
        }
        collector.budget -= text.len();
        collector.values.push(text);
        Ok(collector.values.len() - 1)
    })?;
    write!(out, "{OPEN}{index}{CLOSE}").map_err(minijinja::Error::from)
}

/// `tojson` as a plain string: in a command it is quoted like any value.
fn to_json(value: minijinja::Value, indent: Option<usize>) -> Result<String, minijinja::Error> {
    let result = match indent {
        Some(_) => serde_json::to_string_pretty(&value),
        None => serde_json::to_string(&value),
    };
    result.map_err(|error| {
        minijinja::Error::new(ErrorKind::BadSerialization, "cannot serialize to JSON")
            .with_source(error)
    })
}

/// An output that refuses to grow past a limit.
struct Limited {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Limited {
    fn new(limit: usize) -> Limited {
        Limited {
            bytes: Vec::new(),
            limit,
            exceeded: false,
        }
    }
}

impl Write for Limited {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + bytes.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("output too long"));
        }
        self.bytes.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compiles with minijinja, turning a panic of its compiler into an error: some malformed
/// input makes its lexer panic ("empty lexer stack", found by the `template` fuzz target with
/// `}}@` as an expression), and a template is hostile input that must never take the daemon or
/// a request down.
pub(crate) fn guarded<T>(
    compile: impl FnOnce() -> Result<T, minijinja::Error>,
) -> Result<T, minijinja::Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(compile)).unwrap_or_else(|_| {
        Err(minijinja::Error::new(
            minijinja::ErrorKind::SyntaxError,
            "the template engine could not read this text (unbalanced delimiters?)",
        ))
    })
}

/// The variables (with one level of attribute, `params.broker`) a template refers to.
pub fn referenced_names(text: &str, kind: TemplateKind) -> Result<BTreeSet<String>, String> {
    let names = match kind {
        TemplateKind::Text => guarded(|| ENVIRONMENT.template_from_str(text))
            .map_err(describe)?
            .undeclared_variables(true),
        TemplateKind::Expression => guarded(|| ENVIRONMENT.compile_expression(text))
            .map_err(describe)?
            .undeclared_variables(true),
    };
    Ok(names.into_iter().collect())
}

/// Whether any string in `value` is a template (rendering it needs a context).
pub fn has_template(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains("{{") || text.contains("{%"),
        Value::Array(items) => items.iter().any(has_template),
        Value::Object(map) => map.values().any(has_template),
        _ => false,
    }
}

/// Renders every string in `value` against `context`; strings under a `command` key are shell
/// commands (see the module doc).
pub fn render(value: &Value, context: &Value) -> Result<Value, Error> {
    render_value(value, context, false)
}

fn render_value(value: &Value, context: &Value, command: bool) -> Result<Value, Error> {
    match value {
        Value::String(text) => render_text(text, context, command),
        Value::Array(items) => items
            .iter()
            // The words of an argv list are not shell code.
            .map(|item| render_value(item, context, false))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(key, item)| Ok((key.clone(), render_value(item, context, key == "command")?)))
            .collect::<Result<serde_json::Map<_, _>, Error>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

fn render_text(text: &str, context: &Value, command: bool) -> Result<Value, Error> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(Value::String(text.to_owned()));
    }
    let trimmed = text.trim();
    if trimmed.starts_with("{{")
        && trimmed.ends_with("}}")
        && trimmed.matches("{{").count() == 1
        && !trimmed.contains("{%")
    {
        let value = eval(&trimmed[2..trimmed.len() - 2], context)?;
        // In a command, only a list (an argv list) keeps its type; anything else is quoted.
        if !command || value.is_array() {
            return Ok(value);
        }
    }
    render_string(text, context, command).map(Value::String)
}

fn render_string(text: &str, context: &Value, command: bool) -> Result<String, Error> {
    let invalid =
        |message: String| Error::Invalid(format!("template {}: {message}", excerpt(text)));
    if command && text.contains([OPEN, CLOSE]) {
        return Err(invalid(
            "a command may not contain U+E000 or U+E001".to_owned(),
        ));
    }
    let name = if command { SHELL } else { "<template>" };
    let template = guarded(|| ENVIRONMENT.template_from_named_str(name, text))
        .map_err(|error| invalid(describe(error)))?;
    COLLECTOR.with(|collector| {
        *collector.borrow_mut() = Some(Collector {
            values: Vec::new(),
            budget: MAX_OUTPUT,
            exceeded: false,
        })
    });
    let mut output = Limited::new(MAX_OUTPUT);
    let result = template
        .render_captured_to(minijinja::Value::from_serialize(context), &mut output)
        .map(drop);
    let collected = COLLECTOR.with(|collector| collector.borrow_mut().take());
    let too_long = output.exceeded
        || collected
            .as_ref()
            .is_some_and(|collected| collected.exceeded);
    if let Err(error) = result {
        return Err(name_undefined(
            classify(&format!("template {}", excerpt(text)), error, too_long),
            text,
            TemplateKind::Text,
            context,
        ));
    }
    let rendered = String::from_utf8(output.bytes)
        .map_err(|_| invalid("the output is not UTF-8".to_owned()))?;
    if !command {
        return Ok(rendered);
    }
    let values = collected
        .map(|collected| collected.values)
        .unwrap_or_default();
    let mut pieces = Vec::new();
    let mut rest = rendered.as_str();
    while let Some(open) = rest.find(OPEN) {
        pieces.push(shell::Piece::Literal(&rest[..open]));
        let after = &rest[open + OPEN.len_utf8()..];
        let close = after.find(CLOSE).unwrap_or(after.len());
        let value = after[..close]
            .parse::<usize>()
            .ok()
            .and_then(|index| values.get(index))
            .ok_or_else(|| invalid("a value marker is damaged".to_owned()))?;
        pieces.push(shell::Piece::Value(value));
        rest = after.get(close + CLOSE.len_utf8()..).unwrap_or("");
    }
    pieces.push(shell::Piece::Literal(rest));
    shell::assemble(&pieces).map_err(invalid)
}

/// Evaluates an expression to a JSON value.
pub fn eval(expression: &str, context: &Value) -> Result<Value, Error> {
    let value = eval_value(expression, context)?;
    let mut output = Limited::new(MAX_OUTPUT);
    if serde_json::to_writer(&mut output, &value).is_err() {
        if output.exceeded {
            return Err(too_long(expression.trim()));
        }
        return Err(Error::Invalid(format!(
            "{}: cannot be represented as JSON",
            excerpt(expression)
        )));
    }
    serde_json::from_slice(&output.bytes)
        .map_err(|error| Error::Invalid(format!("{}: {error}", excerpt(expression))))
}

/// Evaluates a condition; it must yield a bool (or a value with an obvious truth: see minijinja).
pub fn is_true(expression: &str, context: &Value) -> Result<bool, Error> {
    Ok(eval_value(expression, context)?.is_true())
}

fn eval_value(expression: &str, context: &Value) -> Result<minijinja::Value, Error> {
    let compiled = guarded(|| ENVIRONMENT.compile_expression(expression))
        .map_err(|error| Error::Invalid(format!("{expression:?}: {}", describe(error))))?;
    let value = compiled
        .eval(minijinja::Value::from_serialize(context))
        .map_err(|error| {
            name_undefined(
                classify(expression.trim(), error, false),
                expression,
                TemplateKind::Expression,
                context,
            )
        })?;
    if value.is_undefined() {
        return Err(name_undefined(
            Error::Invalid(format!("{}: is undefined", expression.trim())),
            expression,
            TemplateKind::Expression,
            context,
        ));
    }
    Ok(value)
}

/// An error about an undefined value, with the variable that is not there named in front
/// (minijinja only says "undefined value"): the first name the template reads that `context`
/// does not have, as far as it goes (`steps.later` when there is no step `later` yet).
fn name_undefined(error: Error, text: &str, kind: TemplateKind, context: &Value) -> Error {
    let Error::Invalid(message) = &error else {
        return error;
    };
    if !message.contains("undefined") {
        return error;
    }
    let Ok(names) = referenced_names(text, kind) else {
        return error;
    };
    for name in names {
        let mut value = context;
        let mut known = Vec::new();
        for part in name.split('.') {
            match value.get(part) {
                Some(inner) => {
                    value = inner;
                    known.push(part);
                }
                None => {
                    // An attribute of something that is not a table (a string's method) is not
                    // a missing variable.
                    if !(value.is_object() || known.is_empty()) {
                        break;
                    }
                    known.push(part);
                    return error.context(&format!("undefined variable `{}`", known.join(".")));
                }
            }
        }
    }
    error
}

/// A rendering error as [`Error`]: a limit, or a mistake. `label` names the template.
fn classify(label: &str, error: minijinja::Error, too_long_output: bool) -> Error {
    if error.kind() == ErrorKind::OutOfFuel {
        Error::Limit(format!(
            "{label}: too much work (more than {FUEL} steps of the template engine)"
        ))
    } else if too_long_output {
        too_long(label)
    } else {
        Error::Invalid(format!("{label}: {}", describe(error)))
    }
}

fn too_long(label: &str) -> Error {
    Error::Limit(format!(
        "{label}: output too long (more than {} KiB)",
        MAX_OUTPUT / 1024
    ))
}

/// A template as quoted in messages: at most 80 characters of it.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

fn describe(error: minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{} ({detail})", error.kind()),
        None => error.kind().to_string(),
    }
}

#[cfg(test)]
mod tests;
