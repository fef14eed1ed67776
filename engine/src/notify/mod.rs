//! Notifications: who is told when a run needs someone, and how.
//!
//! Sinks come from a TOML file (`runbook daemon --notify FILE`): a generic webhook (JSON,
//! HMAC-SHA256 signed, with an idempotency key), a Slack incoming webhook, DingTalk, Feishu/Lark
//! and WeCom robots, and email through an SMTP relay. Each notification is an outbox entry
//! committed with the transition that caused it (`runtime/outbox.rs` delivers them), so a crash
//! between the two never loses one; a receiver may see one twice (at least once), and the
//! idempotency key says which.

mod send;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use send::{accepted, hmac_sha256, request, send_email, Request};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    ApprovalPending,
    NeedsAttention,
    Failed,
    Succeeded,
    Canceled,
    RolledBack,
    /// A schedule's instant passed while the daemon was down, and was not caught up.
    ScheduleMissed,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::ApprovalPending,
        Event::NeedsAttention,
        Event::Failed,
        Event::Succeeded,
        Event::Canceled,
        Event::RolledBack,
        Event::ScheduleMissed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::ApprovalPending => "approval_pending",
            Event::NeedsAttention => "needs_attention",
            Event::Failed => "failed",
            Event::Succeeded => "succeeded",
            Event::Canceled => "canceled",
            Event::RolledBack => "rolled_back",
            Event::ScheduleMissed => "schedule_missed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Webhook,
    Slack,
    Dingtalk,
    Feishu,
    Wecom,
    Email,
}

/// One sink, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    pub name: String,
    pub kind: Kind,
    /// The endpoint of every kind but `email`.
    pub url: Option<String>,
    /// A file holding the signing secret: the webhook's HMAC key, DingTalk's or Feishu's
    /// signing secret.
    pub secret_file: Option<PathBuf>,
    /// `email`: the relay, `host:port` (no authentication, no TLS: a local relay).
    pub smtp: Option<String>,
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    /// The events this sink gets (default: every one).
    pub events: Option<Vec<Event>>,
    /// Only runs of these runbooks (comma-separated patterns, `*` for any characters).
    pub runbooks: Option<String>,
    /// While an approval or an attention this sink was told of still waits: remind it this
    /// often (`4h`).
    #[serde(default, with = "optional_duration")]
    pub remind_every: Option<Duration>,
    /// And once it has waited this long (`12h`), tell `escalate_to` too.
    #[serde(default, with = "optional_duration")]
    pub escalate_after: Option<Duration>,
    pub escalate_to: Option<String>,
    #[serde(skip)]
    pub secret: Option<String>,
}

/// The sinks file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, rename = "sinks")]
    pub sinks: Vec<Sink>,
}

/// The most sinks a file may configure.
const MAX_SINKS: usize = 64;

impl Config {
    /// Reads and checks the sinks file; an error names the file (and line) and the field.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = crate::catalog::read_file(path)
            .map_err(|error| format!("notify file {}: {error}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|error| {
            let line = error
                .span()
                .map(|span| text[..span.start].lines().count().max(1));
            match line {
                Some(line) => format!("{}:{line}: {}", path.display(), error.message()),
                None => format!("{}: {}", path.display(), error.message()),
            }
        })?;
        let at =
            |sink: &Sink, what: String| format!("{}: sink {:?}: {what}", path.display(), sink.name);
        if config.sinks.len() > MAX_SINKS {
            return Err(format!("{}: at most {MAX_SINKS} sinks", path.display()));
        }
        let mut names = std::collections::HashSet::new();
        for sink in &mut config.sinks {
            crate::access::check_name(&sink.name).map_err(|error| at(sink, error))?;
            if !names.insert(sink.name.clone()) {
                return Err(at(sink, "a second sink of that name".to_owned()));
            }
            if let Some(scope) = &sink.runbooks {
                crate::access::check_scope(scope).map_err(|error| at(sink, error))?;
            }
            match sink.kind {
                Kind::Email => {
                    let smtp = sink
                        .smtp
                        .as_deref()
                        .ok_or_else(|| at(sink, "email needs smtp = \"host:port\"".to_owned()))?;
                    if smtp
                        .rsplit_once(':')
                        .and_then(|(_, port)| port.parse::<u16>().ok())
                        .is_none()
                    {
                        return Err(at(sink, format!("smtp {smtp:?}: expected host:port")));
                    }
                    let from = sink.from.as_deref().unwrap_or_default();
                    if !is_address(from) {
                        return Err(at(
                            sink,
                            format!("from {from:?}: expected an email address"),
                        ));
                    }
                    if sink.to.is_empty()
                        || sink.to.len() > 50
                        || !sink.to.iter().all(|to| is_address(to))
                    {
                        return Err(at(sink, "to: 1 to 50 email addresses".to_owned()));
                    }
                }
                _ => {
                    let url = sink
                        .url
                        .as_deref()
                        .ok_or_else(|| at(sink, "needs url".to_owned()))?;
                    if !(url.starts_with("https://") || url.starts_with("http://"))
                        || url.len() > 2048
                        || url.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(at(sink, format!("url {url:?}: expected an http(s) URL")));
                    }
                }
            }
            for (field, value) in [
                ("remind_every", sink.remind_every),
                ("escalate_after", sink.escalate_after),
            ] {
                if value.is_some_and(|value| {
                    value < Duration::from_secs(1) || value > Duration::from_secs(366 * 86400)
                }) {
                    return Err(at(sink, format!("{field}: between 1s and 366d")));
                }
            }
            if sink.escalate_after.is_some() != sink.escalate_to.is_some() {
                return Err(at(
                    sink,
                    "escalate_after and escalate_to go together".to_owned(),
                ));
            }
            if let Some(file) = &sink.secret_file {
                let secret = crate::catalog::read_file(file).map_err(|error| {
                    at(sink, format!("secret_file {}: {error}", file.display()))
                })?;
                let secret = secret.trim().to_owned();
                if secret.is_empty() {
                    return Err(at(sink, format!("secret_file {} is empty", file.display())));
                }
                sink.secret = Some(secret);
            } else if sink.kind == Kind::Webhook {
                return Err(at(
                    sink,
                    "a webhook needs secret_file (its HMAC key)".to_owned(),
                ));
            }
        }
        for sink in &config.sinks {
            if let Some(target) = &sink.escalate_to {
                if config.sink(target).is_none() {
                    return Err(at(sink, format!("escalate_to: no sink {target:?}")));
                }
            }
        }
        Ok(config)
    }

    /// The sinks that want `event` for a run of `runbook`.
    pub fn sinks_for(&self, event: Event, runbook: &str) -> impl Iterator<Item = &Sink> {
        let runbook = runbook.to_owned();
        self.sinks.iter().filter(move |sink| {
            sink.events
                .as_ref()
                .is_none_or(|events| events.contains(&event))
                && sink
                    .runbooks
                    .as_deref()
                    .is_none_or(|scope| crate::access::scope_matches(scope, &runbook))
        })
    }

    /// How often the passing of time may make entries: half the shortest reminder or
    /// escalation delay, at most 30 s, at least 1 s.
    pub fn scan_every(&self) -> Duration {
        self.sinks
            .iter()
            .flat_map(|sink| [sink.remind_every, sink.escalate_after])
            .flatten()
            .map(|delay| delay / 2)
            .fold(Duration::from_secs(30), Duration::min)
            .max(Duration::from_secs(1))
    }

    pub fn sink(&self, name: &str) -> Option<&Sink> {
        self.sinks.iter().find(|sink| sink.name == name)
    }
}

/// `remind_every = "4h"`: a duration in the runbooks' syntax.
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        crate::duration::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// A deliberately plain check: something@something, no spaces, no line breaks (the address
/// goes into SMTP commands).
fn is_address(text: &str) -> bool {
    text.len() <= 254
        && text
            .split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && !host.is_empty())
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
}

/// One notification to deliver to one sink: the outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The idempotency key: the same for every attempt.
    pub id: String,
    pub sink: String,
    pub event: Event,
    pub run: uuid::Uuid,
    pub runbook: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub message: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Given up after [`MAX_ATTEMPTS`].
    #[serde(default)]
    pub abandoned: bool,
}

/// Attempts before an entry is given up (about a day of backoff).
pub const MAX_ATTEMPTS: u32 = 40;

impl Entry {
    /// `pending`, `failing` (attempted, not delivered yet), `delivered` or `abandoned`.
    pub fn state(&self) -> &'static str {
        if self.delivered_at.is_some() {
            "delivered"
        } else if self.abandoned {
            "abandoned"
        } else if self.attempts > 0 {
            "failing"
        } else {
            "pending"
        }
    }

    /// The store key: the run's id, then the entry's id (in order of the commits).
    pub fn key(&self) -> Vec<u8> {
        let mut key = self.run.as_bytes().to_vec();
        key.extend_from_slice(self.id.as_bytes());
        key
    }

    /// When to try again after `attempts` failures: 2^n seconds, at most 10 minutes.
    pub fn backoff(attempts: u32) -> Duration {
        Duration::from_secs(1u64 << attempts.min(10)).min(Duration::from_secs(600))
    }

    fn text(&self) -> String {
        format!("[runbook] {}", self.message)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "event": self.event.name(),
            "run": self.run.to_string(),
            "runbook": self.runbook,
            "step": self.step,
            "message": self.message,
            "at": self.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(is_address("ops@example.com"));
        for bad in ["ops", "@x", "a b@x", "a@x\r\nRCPT TO:<e@x>", "<a@x>"] {
            assert!(!is_address(bad), "{bad:?}");
        }
    }

    #[test]
    fn backoff_grows_to_ten_minutes() {
        assert_eq!(Entry::backoff(0), Duration::from_secs(1));
        assert_eq!(Entry::backoff(3), Duration::from_secs(8));
        assert_eq!(Entry::backoff(30), Duration::from_secs(600));
    }
}
