//! Templates and conditions (minijinja).
//!
//! Strings in a step's `with` are templates (`"{{ params.broker }}"`); `when` and `until` are
//! expressions (`output.lag == 0`). Undefined variables are errors, never empty strings: a typo in
//! a runbook must stop it, not send an empty broker name to the cluster. A string that is exactly
//! one `{{ expression }}` keeps the expression's type, so `"{{ params.brokers }}"` is a list.
//!
//! Rendering is pure: the same template and context always give the same value.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Names a runbook cannot use for a capture or loop variable.
pub const RESERVED_NAMES: &[&str] = &[
    "params", "steps", "run", "item", "index", "output", "loop", "true", "false", "none",
];

/// minijinja's global functions, which look like variables to the checker.
pub const GLOBAL_FUNCTIONS: &[&str] = &["range", "dict", "namespace", "debug"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// `text with {{ expressions }}`.
    Text,
    /// A bare expression, as in `when` and `until`.
    Expression,
}

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut environment = Environment::new();
    environment.set_undefined_behavior(UndefinedBehavior::Strict);
    environment
});

/// The variables (with one level of attribute, `params.broker`) a template refers to.
pub fn referenced_names(text: &str, kind: TemplateKind) -> Result<BTreeSet<String>, String> {
    let names = match kind {
        TemplateKind::Text => ENVIRONMENT
            .template_from_str(text)
            .map_err(describe)?
            .undeclared_variables(true),
        TemplateKind::Expression => ENVIRONMENT
            .compile_expression(text)
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

/// Renders every string in `value` against `context`.
pub fn render(value: &Value, context: &Value) -> Result<Value, String> {
    match value {
        Value::String(text) => render_text(text, context),
        Value::Array(items) => items
            .iter()
            .map(|item| render(item, context))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(key, item)| Ok((key.clone(), render(item, context)?)))
            .collect::<Result<serde_json::Map<_, _>, String>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

fn render_text(text: &str, context: &Value) -> Result<Value, String> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(Value::String(text.to_owned()));
    }
    let trimmed = text.trim();
    if trimmed.starts_with("{{")
        && trimmed.ends_with("}}")
        && trimmed.matches("{{").count() == 1
        && !trimmed.contains("{%")
    {
        return eval(&trimmed[2..trimmed.len() - 2], context);
    }
    let context = minijinja::Value::from_serialize(context);
    ENVIRONMENT
        .render_str(text, context)
        .map(Value::String)
        .map_err(|error| format!("template {text:?}: {}", describe(error)))
}

/// Evaluates an expression to a JSON value.
pub fn eval(expression: &str, context: &Value) -> Result<Value, String> {
    let compiled = ENVIRONMENT
        .compile_expression(expression)
        .map_err(|error| format!("{expression:?}: {}", describe(error)))?;
    let value = compiled
        .eval(minijinja::Value::from_serialize(context))
        .map_err(|error| format!("{}: {}", expression.trim(), describe(error)))?;
    if value.is_undefined() {
        return Err(format!("{}: is undefined", expression.trim()));
    }
    serde_json::to_value(&value).map_err(|error| format!("{}: {error}", expression.trim()))
}

/// Evaluates a condition; it must yield a bool (or a value with an obvious truth: see minijinja).
pub fn is_true(expression: &str, context: &Value) -> Result<bool, String> {
    let compiled = ENVIRONMENT
        .compile_expression(expression)
        .map_err(|error| format!("{expression:?}: {}", describe(error)))?;
    let value = compiled
        .eval(minijinja::Value::from_serialize(context))
        .map_err(|error| format!("{}: {}", expression.trim(), describe(error)))?;
    if value.is_undefined() {
        return Err(format!("{}: is undefined", expression.trim()));
    }
    Ok(value.is_true())
}

fn describe(error: minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{} ({detail})", error.kind()),
        None => error.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_lone_expression_keeps_its_type() {
        let context = json!({"params": {"brokers": ["a", "b"], "n": 3}});
        assert_eq!(
            render(&json!("{{ params.brokers }}"), &context).unwrap(),
            json!(["a", "b"])
        );
        assert_eq!(
            render(&json!("n={{ params.n }}"), &context).unwrap(),
            json!("n=3")
        );
        assert_eq!(
            render(&json!({"x": ["{{ params.n + 1 }}"]}), &context).unwrap(),
            json!({"x": [4]})
        );
    }

    #[test]
    fn undefined_is_an_error() {
        let context = json!({"params": {}});
        assert!(render(&json!("{{ params.broker }}"), &context).is_err());
        assert!(render(&json!("x {{ params.broker }} y"), &context).is_err());
        assert!(is_true("output.lag == 0", &context).is_err());
    }

    #[test]
    fn names_are_found() {
        let names = referenced_names(
            "{{ params.broker }} {{ steps.list.output }}",
            TemplateKind::Text,
        )
        .unwrap();
        assert!(names.contains("params.broker"), "{names:?}");
        assert!(
            names.iter().any(|name| name.starts_with("steps.list")),
            "{names:?}"
        );
    }
}
