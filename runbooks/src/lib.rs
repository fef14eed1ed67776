//! `runbook-runbooks`: the built-in runbook catalogue and the domain actions.
//!
//! The catalogue is the TOML files in `runbooks/catalog/`, embedded into the binary; domain
//! actions are registered into the engine's [`Registry`]. This crate knows nothing of HTTP or
//! terminals.

#![recursion_limit = "256"]

pub mod rocketmq;

use runbook_engine::action::Registry;
use runbook_engine::catalog::Source;

/// The embedded catalogue, as `(file name, text)`.
const CATALOG: &[(&str, &str)] = &[
    ("demo.toml", include_str!("../catalog/demo.toml")),
    (
        "rocketmq.broker.decommission.toml",
        include_str!("../catalog/rocketmq.broker.decommission.toml"),
    ),
    (
        "rocketmq.broker.scale_out.toml",
        include_str!("../catalog/rocketmq.broker.scale_out.toml"),
    ),
    (
        "rocketmq.topic.expand_queues.toml",
        include_str!("../catalog/rocketmq.topic.expand_queues.toml"),
    ),
    (
        "rocketmq.topic.shrink_queues.toml",
        include_str!("../catalog/rocketmq.topic.shrink_queues.toml"),
    ),
    (
        "rocketmq.consumer.reset_offset.toml",
        include_str!("../catalog/rocketmq.consumer.reset_offset.toml"),
    ),
    (
        "rocketmq.namesrv.migrate.toml",
        include_str!("../catalog/rocketmq.namesrv.migrate.toml"),
    ),
    (
        "rocketmq.group.to_dledger.toml",
        include_str!("../catalog/rocketmq.group.to_dledger.toml"),
    ),
    (
        "rocketmq.cluster.rolling_upgrade.toml",
        include_str!("../catalog/rocketmq.cluster.rolling_upgrade.toml"),
    ),
    (
        "rocketmq.group.to_controller_mode.toml",
        include_str!("../catalog/rocketmq.group.to_controller_mode.toml"),
    ),
    (
        "rocketmq.group.controller_persistent_id.toml",
        include_str!("../catalog/rocketmq.group.controller_persistent_id.toml"),
    ),
];

/// The built-in runbooks.
pub fn builtin() -> Vec<Source> {
    CATALOG
        .iter()
        .map(|(file, text)| Source {
            file: format!("builtin:{file}"),
            text: (*text).to_owned(),
        })
        .collect()
}

/// Every action a daemon offers: the engine's core ones and the domain ones.
pub fn actions() -> Registry {
    let mut registry = Registry::new();
    rocketmq::register(&mut registry);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_runbook_validates() {
        let actions = actions();
        for source in builtin() {
            runbook_engine::definition::check(&source.file, &source.text, &actions)
                .unwrap_or_else(|error| panic!("{error}"));
        }
    }
}
