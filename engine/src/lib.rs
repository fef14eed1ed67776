//! `runbook-engine`: the durable core of `runbook`.
//!
//! It knows nothing of RocketMQ, terminals or clap. It owns:
//!
//! - [`definition`]: runbook files (TOML) → validated [`definition::Definition`]s;
//! - [`template`]: the minijinja environment that renders step inputs and evaluates conditions;
//! - [`machine`]: the pure run state machine, `decide(state, input, now) → events + effects` and
//!   `evolve(state, event)`; no I/O and no clock reads;
//! - [`store`]: the journal behind a narrow [`store::Store`] trait, with the sled implementation,
//!   an in-memory one, and the group-commit writer;
//! - [`action`]: the action trait, the registry and the core `exec` action;
//! - [`runtime`]: the imperative shell that commits events before it runs their effects, the
//!   durable timer service and crash recovery;
//! - [`api`] and [`daemon`]: the HTTP/JSON API on a Unix socket and the daemon's life cycle.
//!
//! # Contract
//!
//! An event is durable (flushed and fsynced) before any effect it implies starts, and every
//! transition of a run (its events, snapshot, timer index and lock changes) commits atomically.

pub mod access;
pub mod action;
pub mod api;
pub mod calendar;
pub mod catalog;
pub mod clock;
pub mod daemon;
pub mod definition;
pub mod duration;
pub mod failpoint;
pub mod histogram;
pub mod machine;
pub mod notify;
pub mod private_dir;
pub mod runtime;
pub mod schedule;
pub mod store;
pub mod template;
