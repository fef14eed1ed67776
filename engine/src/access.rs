//! Who may do what over the TCP listener: users with a role (and optionally a set of runbooks),
//! and the bearer tokens that stand for them.
//!
//! A token is `rbt_<id>_<secret>`: the id (16 hex digits) finds the record, the secret (64 hex
//! digits, 256 random bits) is checked against the SHA-256 stored in it, in constant time. The
//! secret itself is shown once, when the token is created, and stored nowhere. A fast hash is
//! enough for a secret of 256 random bits (nothing to guess; a slow hash protects weak
//! passwords, and there are none).
//!
//! The records live in the store's `access` tree: `user/<name>` → [`User`], `token/<id>` →
//! [`Token`]. A revoked token keeps its record (who created it, when it was revoked).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a user may do; each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads runs, runbooks, schedules, logs, metrics.
    Viewer,
    /// And starts runs, pauses, resumes, cancels, rolls back, retries and skips steps.
    Operator,
    /// And approves gates.
    Approver,
    /// And manages users, tokens and schedules, and the store.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Approver, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.name() == text)
            .ok_or_else(|| {
                format!("role {text:?}: expected one of viewer, operator, approver, admin")
            })
    }
}

/// The longest user name.
pub const MAX_NAME: usize = 64;
/// The longest runbook scope.
pub const MAX_SCOPE: usize = 256;

/// A person (or a robot) who talks to the daemon over TCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Comma-separated runbook name patterns (`*` matches any run of characters) this user may
    /// start and act on; `None`: every runbook. Reading is never limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbooks: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Who added the user (`uid N` or a user's name).
    pub created_by: String,
}

impl User {
    /// Whether this user may act on runs of `runbook`.
    pub fn may_act_on(&self, runbook: &str) -> bool {
        self.runbooks
            .as_deref()
            .is_none_or(|scope| scope_matches(scope, runbook))
    }
}

/// A bearer token's record (the secret's hash, never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub user: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Checks a user name: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?}: use 1 to {MAX_NAME} of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        ))
    }
}

/// Checks a runbook scope: comma-separated patterns of runbook-name characters and `*`.
pub fn check_scope(scope: &str) -> Result<(), String> {
    let ok = !scope.trim().is_empty()
        && scope.len() <= MAX_SCOPE
        && scope.split(',').all(|pattern| {
            let pattern = pattern.trim();
            !pattern.is_empty()
                && pattern
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "runbooks {scope:?}: expected comma-separated runbook names, `*` for any characters \
             (for example 'rocketmq.*'), at most {MAX_SCOPE} characters"
        ))
    }
}

/// Whether `runbook` matches one of the comma-separated patterns of `scope` (a user's
/// `--runbooks`, a notification sink's `runbooks`).
pub fn scope_matches(scope: &str, runbook: &str) -> bool {
    scope
        .split(',')
        .any(|pattern| glob_matches(pattern.trim(), runbook))
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    // Iterative matching with one backtrack point: linear in practice, never exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A new token: its record and the secret text to give the user once.
pub fn new_token(
    user: &str,
    label: Option<String>,
    now: DateTime<Utc>,
    by: String,
) -> Result<(Token, String), String> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut id)
        .and_then(|()| getrandom::getrandom(&mut secret))
        .map_err(|error| format!("no random numbers for a token: {error}"))?;
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    let token = Token {
        id: id.clone(),
        user: user.to_owned(),
        hash: hash(&secret),
        created_at: now,
        created_by: by,
        revoked_at: None,
        label,
    };
    Ok((token, format!("rbt_{id}_{secret}")))
}

/// The id and secret of a presented token, if it has the token's shape.
pub fn parse_token(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("rbt_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// Whether `secret` is the one `token` was made with (constant time in the secret).
pub fn secret_matches(token: &Token, secret: &str) -> bool {
    let presented = hash(secret);
    let (a, b) = (presented.as_bytes(), token.hash.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The store key of a user's record.
pub fn user_key(name: &str) -> String {
    format!("user/{name}")
}

/// The store key of a token's record.
pub fn token_key(id: &str) -> String {
    format!("token/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Approver);
        assert!(Role::Approver < Role::Admin);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Ok(role));
        }
        assert!(Role::parse("root")
            .unwrap_err()
            .contains("viewer, operator"));
    }

    #[test]
    fn globs() {
        assert!(glob_matches("rocketmq.*", "rocketmq.broker.decommission"));
        assert!(!glob_matches("rocketmq.*", "kafka.reassign"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(!glob_matches("a*b*c", "aXbYbZ"));
        assert!(glob_matches("demo", "demo") && !glob_matches("demo", "demo2"));
        // No blow-up on a pattern made to backtrack.
        let text = "a".repeat(4000);
        assert!(!glob_matches(&format!("{}b", "*a".repeat(100)), &text));
    }

    #[test]
    fn scopes_and_names_are_checked() {
        assert!(check_scope("rocketmq.*, demo").is_ok());
        assert!(check_scope("rocketmq.{a,b}").is_err());
        assert!(check_scope(" , ").is_err());
        assert!(check_name("alice").is_ok() && check_name("ops.bot-2").is_ok());
        for bad in ["", "Alice", "-x", "a b", "a/b", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let user = User {
            name: "a".into(),
            role: Role::Operator,
            runbooks: Some("rocketmq.*,demo".into()),
            created_at: DateTime::UNIX_EPOCH,
            created_by: "uid 0".into(),
        };
        assert!(user.may_act_on("demo") && user.may_act_on("rocketmq.topic.shrink"));
        assert!(!user.may_act_on("demo2"));
    }

    #[test]
    fn tokens_verify_only_with_their_secret() {
        let (token, text) = new_token("alice", None, DateTime::UNIX_EPOCH, "uid 0".into()).unwrap();
        let (id, secret) = parse_token(&text).unwrap();
        assert_eq!(id, token.id);
        assert!(secret_matches(&token, secret));
        assert!(
            !text.contains(&token.hash),
            "the record does not hold the secret"
        );
        let mut wrong = secret.to_owned();
        wrong.replace_range(0..1, if secret.starts_with('0') { "1" } else { "0" });
        assert!(!secret_matches(&token, &wrong));
        for bad in ["", "rbt_", "rbt_zz_zz", "Bearer x", &text[..text.len() - 1]] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
    }
}
