//! A step's input, read field by field: an input error is permanent (another attempt will not
//! cure it) and names the action and the field.

use std::time::Duration;

use serde_json::Value;

use runbook_engine::action::ActionFailure;

/// The `namesrv` key every `rocketmq.*` action but `command` takes.
pub const NAMESRV: runbook_engine::action::schema::Key = runbook_engine::action::schema::optional(
    "namesrv",
    runbook_engine::action::schema::Kind::List,
    "the NameServer list, host:port;host:port",
)
.required();

/// A step's input, read field by field with errors that name the action and the field.
pub struct Input<'a> {
    pub action: &'static str,
    pub value: &'a Value,
}

impl<'a> Input<'a> {
    pub fn new(action: &'static str, value: &'a Value) -> Input<'a> {
        Input { action, value }
    }

    pub fn bad(&self, field: &str, message: impl std::fmt::Display) -> ActionFailure {
        ActionFailure::permanent(format!("{}: {field}: {message}", self.action))
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.value.get(field).filter(|value| !value.is_null())
    }

    /// A required, non-blank string (numbers are accepted and written as text).
    pub fn string(&self, field: &str) -> Result<String, ActionFailure> {
        self.opt_string(field)?
            .ok_or_else(|| self.bad(field, "is required"))
    }

    pub fn opt_string(&self, field: &str) -> Result<Option<String>, ActionFailure> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.trim().to_owned())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(Value::Bool(flag)) => Ok(Some(flag.to_string())),
            Some(other) => Err(self.bad(field, format!("must be a string, not {other}"))),
        }
    }

    pub fn opt_i64(&self, field: &str) -> Result<Option<i64>, ActionFailure> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(number)) => number
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad(field, format!("{number} is not an integer"))),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.bad(field, format!("{text:?} is not an integer"))),
            Some(other) => Err(self.bad(field, format!("must be an integer, not {other}"))),
        }
    }

    pub fn opt_u32(&self, field: &str) -> Result<Option<u32>, ActionFailure> {
        match self.opt_i64(field)? {
            None => Ok(None),
            Some(number) => u32::try_from(number)
                .map(Some)
                .map_err(|_| self.bad(field, format!("{number} is out of range"))),
        }
    }

    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool, ActionFailure> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(Value::String(text)) => match text.trim() {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(self.bad(field, format!("{other:?} is not true or false"))),
            },
            Some(other) => Err(self.bad(field, format!("must be true or false, not {other}"))),
        }
    }

    pub fn opt_duration(&self, field: &str) -> Result<Option<Duration>, ActionFailure> {
        match self.opt_string(field)? {
            None => Ok(None),
            Some(text) => runbook_engine::duration::parse(&text)
                .map(Some)
                .map_err(|message| self.bad(field, message)),
        }
    }

    /// A list of strings: a JSON list, or one string separated by `;` or `,`.
    pub fn string_list(&self, field: &str) -> Result<Vec<String>, ActionFailure> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::String(text)) => Ok(split_list(text)),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.trim().to_owned()),
                    other => Err(self.bad(field, format!("items must be strings, not {other}"))),
                })
                .filter(|item| !matches!(item, Ok(text) if text.is_empty()))
                .collect(),
            Some(other) => Err(self.bad(field, format!("must be a list of strings, not {other}"))),
        }
    }

    /// The NameServer address list (`host:port;host:port`), at least one address.
    pub fn namesrv(&self) -> Result<Vec<String>, ActionFailure> {
        self.addr_list("namesrv")
    }

    /// A required address list (`host:port;host:port`), at least one address.
    pub fn addr_list(&self, field: &str) -> Result<Vec<String>, ActionFailure> {
        let addresses = self.string_list(field)?;
        if addresses.is_empty() {
            return Err(self.bad(field, "is required (host:port;host:port)"));
        }
        for address in &addresses {
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(self.bad(field, format!("{address:?} is not host:port")));
            }
        }
        Ok(addresses)
    }
}

pub fn split_list(text: &str) -> Vec<String> {
    text.split([';', ','])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}
