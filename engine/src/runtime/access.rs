//! Users and tokens (`crate::access`): kept in the store, read from memory on every request.
//!
//! Changes are serialized by one lock and committed durably before the table in memory
//! changes: a token works only once its record is durable, and a revoked token stops working
//! as soon as the revocation is.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Engine, Error};
use crate::access::{self, Role, Token, User};
use crate::machine::Actor;
use crate::store::{self, AccessCommit};

/// The users and tokens, as stored.
#[derive(Debug, Default, Clone)]
pub(super) struct AccessTable {
    users: BTreeMap<String, User>,
    tokens: BTreeMap<String, Token>,
}

impl AccessTable {
    pub(super) fn load(store: &dyn store::Store) -> Result<AccessTable, store::Error> {
        let mut table = AccessTable::default();
        for (key, bytes) in store.load_access()? {
            let what = || format!("access/{key}");
            if let Some(name) = key.strip_prefix("user/") {
                match store::decode_value::<User>(&what, &bytes) {
                    Ok(user) => {
                        table.users.insert(name.to_owned(), user);
                    }
                    Err(error) => tracing::error!(%error, "a user is corrupt; it is left out"),
                }
            } else if let Some(id) = key.strip_prefix("token/") {
                match store::decode_value::<Token>(&what, &bytes) {
                    Ok(token) => {
                        table.tokens.insert(id.to_owned(), token);
                    }
                    Err(error) => tracing::error!(%error, "a token is corrupt; it is left out"),
                }
            }
        }
        Ok(table)
    }
}

/// A token as listed: never its hash.
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl From<&Token> for TokenView {
    fn from(token: &Token) -> TokenView {
        TokenView {
            id: token.id.clone(),
            user: token.user.clone(),
            created_at: token.created_at,
            created_by: token.created_by.clone(),
            revoked_at: token.revoked_at,
            label: token.label.clone(),
        }
    }
}

/// Why a presented token was refused (for the daemon's log; the caller only learns "401").
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Malformed,
    Unknown { id: String },
    WrongSecret { id: String },
    Revoked { id: String, user: String },
    NoUser { id: String, user: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed => f.write_str("not a runbook token"),
            Refusal::Unknown { id } => write!(f, "no token {id}"),
            Refusal::WrongSecret { id } => write!(f, "wrong secret for token {id}"),
            Refusal::Revoked { id, user } => write!(f, "token {id} of {user} is revoked"),
            Refusal::NoUser { id, user } => write!(f, "token {id}: user {user} was removed"),
        }
    }
}

/// The most tokens one user may hold (revoked ones included: they are the audit trail).
const MAX_TOKENS_PER_USER: usize = 100;
/// The most users.
const MAX_USERS: usize = 10_000;
/// The longest token label.
const MAX_LABEL: usize = 200;

fn invalid(message: String, field: &str) -> Error {
    Error::Invalid {
        message,
        field: Some(field.to_owned()),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    store::encode_value(value).map_err(Error::from)
}

impl Engine {
    /// The user a presented bearer token stands for.
    pub fn authenticate(&self, presented: &str) -> Result<User, Refusal> {
        let (id, secret) = access::parse_token(presented).ok_or(Refusal::Malformed)?;
        let table = self.access_table();
        let token = table
            .tokens
            .get(id)
            .ok_or_else(|| Refusal::Unknown { id: id.to_owned() })?;
        if !access::secret_matches(token, secret) {
            return Err(Refusal::WrongSecret { id: id.to_owned() });
        }
        if token.revoked_at.is_some() {
            return Err(Refusal::Revoked {
                id: id.to_owned(),
                user: token.user.clone(),
            });
        }
        table
            .users
            .get(&token.user)
            .cloned()
            .ok_or_else(|| Refusal::NoUser {
                id: id.to_owned(),
                user: token.user.clone(),
            })
    }

    pub fn users(&self) -> Vec<User> {
        self.access_table().users.values().cloned().collect()
    }

    pub fn tokens(&self) -> Vec<TokenView> {
        self.access_table()
            .tokens
            .values()
            .map(TokenView::from)
            .collect()
    }

    /// Adds a user, or changes an existing user's role and scope when `replace`.
    pub async fn add_user(
        &self,
        name: &str,
        role: &str,
        runbooks: Option<String>,
        replace: bool,
        by: &Actor,
    ) -> Result<User, Error> {
        access::check_name(name).map_err(|message| invalid(message, "name"))?;
        let role = Role::parse(role).map_err(|message| invalid(message, "role"))?;
        if let Some(scope) = &runbooks {
            access::check_scope(scope).map_err(|message| invalid(message, "runbooks"))?;
        }
        let _writing = self.inner.access_writes.lock().await;
        let user = {
            let table = self.access_table();
            let existing = table.users.get(name);
            if existing.is_some() && !replace {
                return Err(Error::Conflict(format!(
                    "user {name} exists (`runbook user add {name} --replace` changes it)"
                )));
            }
            if existing.is_none() && table.users.len() >= MAX_USERS {
                return Err(Error::Conflict(format!(
                    "there are {MAX_USERS} users already"
                )));
            }
            User {
                name: name.to_owned(),
                role,
                runbooks: runbooks.map(|scope| scope.trim().to_owned()),
                created_at: existing.map_or_else(|| self.inner.clock.now(), |user| user.created_at),
                created_by: existing.map_or_else(|| by.to_string(), |user| user.created_by.clone()),
            }
        };
        self.commit_access(vec![(access::user_key(name), Some(encode(&user)?))])
            .await?;
        self.access_table_mut()
            .users
            .insert(name.to_owned(), user.clone());
        Ok(user)
    }

    /// Removes a user and revokes every token of theirs, in one commit.
    pub async fn remove_user(&self, name: &str, by: &Actor) -> Result<User, Error> {
        let _writing = self.inner.access_writes.lock().await;
        let (user, revoked) = {
            let table = self.access_table();
            let user = table.users.get(name).cloned().ok_or_else(|| {
                Error::NotFound(format!("no user {name:?} (see `runbook user list`)"))
            })?;
            let now = self.inner.clock.now();
            let revoked: Vec<Token> = table
                .tokens
                .values()
                .filter(|token| token.user == name && token.revoked_at.is_none())
                .map(|token| Token {
                    revoked_at: Some(now),
                    ..token.clone()
                })
                .collect();
            (user, revoked)
        };
        let mut changes = vec![(access::user_key(name), None)];
        for token in &revoked {
            changes.push((access::token_key(&token.id), Some(encode(token)?)));
        }
        self.commit_access(changes).await?;
        let mut table = self.access_table_mut();
        table.users.remove(name);
        for token in revoked {
            table.tokens.insert(token.id.clone(), token);
        }
        tracing::info!(user = name, by = %by, "user removed; their tokens are revoked");
        Ok(user)
    }

    /// A new token for `user`: its record, and the secret (shown to the caller once).
    pub async fn create_token(
        &self,
        user: &str,
        label: Option<String>,
        by: &Actor,
    ) -> Result<(TokenView, String), Error> {
        if let Some(label) = &label {
            if label.len() > MAX_LABEL || label.chars().any(char::is_control) {
                return Err(invalid(
                    format!("label: at most {MAX_LABEL} characters, no control characters"),
                    "label",
                ));
            }
        }
        let _writing = self.inner.access_writes.lock().await;
        {
            let table = self.access_table();
            if !table.users.contains_key(user) {
                return Err(Error::NotFound(format!(
                    "no user {user:?} (add one with `runbook user add {user} --role viewer`)"
                )));
            }
            let held = table.tokens.values().filter(|t| t.user == user).count();
            if held >= MAX_TOKENS_PER_USER {
                return Err(Error::Conflict(format!(
                    "user {user} holds {held} tokens; remove the user or revoke tokens first"
                )));
            }
        }
        let (token, secret) =
            access::new_token(user, label, self.inner.clock.now(), by.to_string())
                .map_err(Error::Internal)?;
        self.commit_access(vec![(access::token_key(&token.id), Some(encode(&token)?))])
            .await?;
        let view = TokenView::from(&token);
        self.access_table_mut()
            .tokens
            .insert(token.id.clone(), token);
        tracing::info!(token = %view.id, user, by = %by, "token created");
        Ok((view, secret))
    }

    /// Revokes a token (its record stays, with the time of the revocation).
    pub async fn revoke_token(&self, id: &str, by: &Actor) -> Result<TokenView, Error> {
        let _writing = self.inner.access_writes.lock().await;
        let token = self.access_table().tokens.get(id).cloned().ok_or_else(|| {
            Error::NotFound(format!("no token {id:?} (see `runbook token list`)"))
        })?;
        if token.revoked_at.is_some() {
            return Ok(TokenView::from(&token));
        }
        let token = Token {
            revoked_at: Some(self.inner.clock.now()),
            ..token
        };
        self.commit_access(vec![(access::token_key(id), Some(encode(&token)?))])
            .await?;
        let view = TokenView::from(&token);
        self.access_table_mut().tokens.insert(id.to_owned(), token);
        tracing::info!(token = id, by = %by, "token revoked");
        Ok(view)
    }

    async fn commit_access(&self, changes: Vec<(String, Option<Vec<u8>>)>) -> Result<(), Error> {
        self.inner
            .writer
            .commit_access(AccessCommit { changes })
            .await
            .map_err(Error::from)
    }

    fn access_table(&self) -> std::sync::RwLockReadGuard<'_, AccessTable> {
        self.inner
            .access
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn access_table_mut(&self) -> std::sync::RwLockWriteGuard<'_, AccessTable> {
        self.inner
            .access
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
