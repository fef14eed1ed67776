//! `runbook user add|ls|rm` and `runbook token create|ls|revoke`: who may use the daemon's TCP
//! listener, and with what role (viewer, operator, approver, admin). Kept in the daemon's
//! store; only an admin (or the daemon's own user on the local socket) may change them.

use anyhow::Result;
use serde_json::{json, Value};

use super::Context;
use crate::client::segment;
use crate::render;

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user (or change one, with --replace)
    Add(UserAddArgs),
    /// List users
    Ls,
    /// Remove a user; their tokens are revoked
    Rm(UserNameArgs),
}

#[derive(Debug, clap::Args)]
pub struct UserAddArgs {
    /// The user's name (a-z, 0-9, '.', '_', '-')
    pub name: String,
    /// viewer (reads), operator (+ start, pause, resume, cancel, rollback, retry, skip),
    /// approver (+ approve), admin (+ users, tokens, schedules, store)
    #[arg(long, value_parser = ["viewer", "operator", "approver", "admin"])]
    pub role: String,
    /// Only these runbooks (comma-separated, `*` matches any characters), e.g. 'rocketmq.*'
    #[arg(long, value_name = "PATTERNS")]
    pub runbooks: Option<String>,
    /// Change the user's role and runbooks if the user exists
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, clap::Args)]
pub struct UserNameArgs {
    pub name: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token for a user; it is shown once
    Create(TokenCreateArgs),
    /// List tokens (never their secrets)
    Ls,
    /// Revoke a token
    Revoke(TokenIdArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// The user the token stands for
    pub user: String,
    /// What the token is for (e.g. "laptop", "prometheus")
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct TokenIdArgs {
    /// The token's id (`token ls`)
    pub id: String,
}

pub async fn user(ctx: &Context, command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add(args) => {
            let user = ctx
                .client
                .post(
                    "/v1/users",
                    json!({"name": args.name, "role": args.role, "runbooks": args.runbooks,
                           "replace": args.replace}),
                )
                .await?;
            if ctx.json {
                return render::print_json(&user);
            }
            eprintln!(
                "user {} is {}{}; give them a token with `runbook token create {}`",
                render::text(&user["name"]),
                render::text(&user["role"]),
                scope(&user),
                render::text(&user["name"])
            );
            Ok(())
        }
        UserCommand::Ls => {
            let listed = ctx.client.get("/v1/users").await?;
            if ctx.json {
                return render::print_json(&listed);
            }
            let rows: Vec<Vec<String>> = listed["users"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|user| {
                    vec![
                        render::text(&user["name"]),
                        render::text(&user["role"]),
                        user["runbooks"].as_str().unwrap_or("*").to_owned(),
                        render::time(&user["created_at"])
                            .map(render::short_timestamp)
                            .unwrap_or_default(),
                        render::text(&user["created_by"]),
                    ]
                })
                .collect();
            render::print(&render::table(
                &["USER", "ROLE", "RUNBOOKS", "ADDED", "BY"],
                &rows,
            ))
        }
        UserCommand::Rm(args) => {
            let user = ctx
                .client
                .delete(&format!("/v1/users/{}", segment(&args.name)))
                .await?;
            if ctx.json {
                return render::print_json(&user);
            }
            eprintln!(
                "user {} removed; their tokens are revoked",
                render::text(&user["name"])
            );
            Ok(())
        }
    }
}

fn scope(user: &Value) -> String {
    match user["runbooks"].as_str() {
        Some(scope) => format!(" for runbooks {scope}"),
        None => String::new(),
    }
}

pub async fn token(ctx: &Context, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let created = ctx
                .client
                .post(
                    &format!("/v1/users/{}/tokens", segment(&args.user)),
                    json!({"label": args.label}),
                )
                .await?;
            if ctx.json {
                return render::print_json(&created);
            }
            // The secret alone on stdout (for `export RUNBOOK_TOKEN=$(...)`); the rest on stderr.
            println!("{}", render::text(&created["secret"]));
            eprintln!(
                "token {} for {}: shown once, stored only as a hash; revoke it with \
                 `runbook token revoke {}`",
                render::text(&created["token"]["id"]),
                render::text(&created["token"]["user"]),
                render::text(&created["token"]["id"])
            );
            Ok(())
        }
        TokenCommand::Ls => {
            let listed = ctx.client.get("/v1/tokens").await?;
            if ctx.json {
                return render::print_json(&listed);
            }
            let rows: Vec<Vec<String>> = listed["tokens"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|token| {
                    let at = |key: &str| {
                        render::time(&token[key])
                            .map(render::short_timestamp)
                            .unwrap_or_default()
                    };
                    vec![
                        render::text(&token["id"]),
                        render::text(&token["user"]),
                        token["label"].as_str().unwrap_or("").to_owned(),
                        at("created_at"),
                        if token["revoked_at"].is_null() {
                            "active".to_owned()
                        } else {
                            format!("revoked {}", at("revoked_at"))
                        },
                    ]
                })
                .collect();
            render::print(&render::table(
                &["ID", "USER", "LABEL", "CREATED", "STATE"],
                &rows,
            ))
        }
        TokenCommand::Revoke(args) => {
            let token = ctx
                .client
                .post(
                    &format!("/v1/tokens/{}/revoke", segment(&args.id)),
                    json!({}),
                )
                .await?;
            if ctx.json {
                return render::print_json(&token);
            }
            eprintln!(
                "token {} of {} is revoked",
                render::text(&token["id"]),
                render::text(&token["user"])
            );
            Ok(())
        }
    }
}
