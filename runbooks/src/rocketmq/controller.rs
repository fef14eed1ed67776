//! The Controller (RocketMQ 5 automatic failover), read through its own protocol: what
//! `mqadmin getControllerMetaData` and `mqadmin getSyncStateSet` show.
//!
//! `rocketmq.controller`: input `namesrv`, `controller` (the controller address list). Asks each
//! controller for its metadata. Output: `controllers: [{addr, answered, group, leader_id,
//! leader_addr, is_leader, peers, error}]`, `answered` (how many did), `all_answered`,
//! `leader_addr` (the leader every answering controller names; empty when they disagree or
//! name none), `agree`, `leader_count` (controllers that say they are the leader), `peers`.
//!
//! `rocketmq.sync_state`: input `namesrv`, `controller`, `broker` (the group), optional
//! `expect_master` (host:port) and `addrs` (processes that must be in sync). Asks the controllers
//! in order until one answers. Output: `broker`, `controller` (who answered), `master_broker_id`,
//! `master_addr`, `has_master`, `master_epoch`, `sync_state_set_epoch`, `in_sync` and
//! `not_in_sync` (`[{id, addr, alive}]`), `in_sync_addrs`, `in_sync_count`, `master_expected`
//! (the master is `expect_master`), `addrs_in_sync` (every one of `addrs` is in the sync state
//! set), `addrs_known` (every one of `addrs` is a replica the controller lists, in sync or
//! not), `missing` (those not in sync), `known` (the controller knows the group; false, with
//! everything empty, until one of its processes registered), `observed_at_ms`.
//!
//! # Contract
//!
//! Both only read. A controller that does not answer is reported (and makes the step retry only
//! when none answers), so `until` conditions can wait for an election.

use cheetah_string::CheetahString;
use rocketmq_client_rust::BrokerAdmin as _;
use rocketmq_protocol::protocol::body::broker_replicas_info::{ReplicaIdentity, ReplicasInfo};
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::input::Input;
use super::session::{explain, now_ms, with_admin};

const CONTROLLER: runbook_engine::action::schema::Key = optional(
    "controller",
    Kind::List,
    "the controller address list, host:port;host:port",
)
.required();

/// The input of `rocketmq.controller` (read-only).
pub const META_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[super::input::NAMESRV, CONTROLLER],
};

/// The input of `rocketmq.sync_state` (read-only).
pub const SYNC_STATE_SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        CONTROLLER,
        optional("broker", Kind::Text, "the broker group (brokerName)").required(),
        optional(
            "expect_master",
            Kind::Text,
            "the address the master should have (host:port)",
        ),
        optional(
            "addrs",
            Kind::List,
            "broker processes (host:port) that should be in the sync state set",
        ),
    ],
};

pub async fn run_meta(input: Value, _context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.controller", &input);
    let namesrv = input.namesrv()?;
    let controllers = input.addr_list("controller")?;
    with_admin(&namesrv, |admin| async move {
        let mut seen = Vec::new();
        for addr in &controllers {
            let answer = admin
                .inner
                .get_controller_meta_data(CheetahString::from(addr.as_str()))
                .await;
            seen.push(match answer {
                Ok(meta) => {
                    let text = |value: &Option<CheetahString>| {
                        value.as_ref().map(|v| v.to_string()).unwrap_or_default()
                    };
                    json!({
                        "addr": addr,
                        "answered": true,
                        "group": text(&meta.group),
                        "leader_id": text(&meta.controller_leader_id),
                        "leader_addr": text(&meta.controller_leader_address),
                        "is_leader": meta.is_leader.unwrap_or(false),
                        "peers": super::input::split_list(&text(&meta.peers)),
                    })
                }
                Err(error) => json!({
                    "addr": addr,
                    "answered": false,
                    "error": explain(&error),
                }),
            });
        }
        summarize_meta(&controllers, seen)
    })
    .await
}

/// The metadata of every controller asked, summed up; retryable when none answered.
fn summarize_meta(controllers: &[String], seen: Vec<Value>) -> Result<Value, ActionFailure> {
    let answered: Vec<&Value> = seen.iter().filter(|one| one["answered"] == true).collect();
    if answered.is_empty() {
        let errors: Vec<String> = seen
            .iter()
            .map(|one| format!("{}: {}", one["addr"].as_str().unwrap_or("?"), one["error"]))
            .collect();
        return Err(ActionFailure::retryable(format!(
            "no controller of {} answered: {}",
            controllers.join(";"),
            errors.join("; ")
        )));
    }
    let leaders: std::collections::BTreeSet<&str> = answered
        .iter()
        .map(|one| one["leader_addr"].as_str().unwrap_or(""))
        .collect();
    let agree = leaders.len() == 1 && !leaders.contains("");
    let leader_addr = if agree {
        leaders.into_iter().next().unwrap_or_default()
    } else {
        ""
    };
    let leader_count = answered
        .iter()
        .filter(|one| one["is_leader"] == true)
        .count();
    let peers = answered
        .iter()
        .find(|one| one["is_leader"] == true)
        .or(answered.first())
        .map(|one| one["peers"].clone())
        .unwrap_or_else(|| json!([]));
    Ok(json!({
        "answered": answered.len(),
        "all_answered": answered.len() == controllers.len(),
        "leader_addr": leader_addr,
        "agree": agree,
        "leader_count": leader_count,
        "peers": peers,
        "controllers": seen,
        "observed_at_ms": now_ms(),
    }))
}

pub async fn run_sync_state(input: Value, _context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.sync_state", &input);
    let namesrv = input.namesrv()?;
    let controllers = input.addr_list("controller")?;
    let broker = input.string("broker")?;
    let expect_master = input.opt_string("expect_master")?;
    let addrs = input.string_list("addrs")?;
    with_admin(&namesrv, |admin| async move {
        let mut errors = Vec::new();
        for controller in &controllers {
            let answer = admin
                .inner
                .get_in_sync_state_data(
                    CheetahString::from(controller.as_str()),
                    vec![CheetahString::from(broker.as_str())],
                )
                .await;
            let info = match answer {
                Ok(info) => info,
                Err(error) => {
                    errors.push(format!("{controller}: {}", explain(&error)));
                    continue;
                }
            };
            let Some((_, replicas)) = info
                .get_replicas_info_table()
                .iter()
                .find(|(name, _)| name.as_str() == broker)
            else {
                // The controller answered but no process of the group registered with it yet.
                return Ok(json!({
                    "broker": broker,
                    "controller": controller,
                    "known": false,
                    "has_master": false,
                    "master_addr": "",
                    "master_expected": false,
                    "in_sync": [],
                    "not_in_sync": [],
                    "in_sync_addrs": [],
                    "in_sync_count": 0,
                    "addrs_in_sync": addrs.is_empty(),
                    "addrs_known": addrs.is_empty(),
                    "missing": addrs,
                    "observed_at_ms": now_ms(),
                }));
            };
            return Ok(replicas_output(
                &broker,
                controller,
                replicas,
                expect_master.as_deref(),
                &addrs,
            ));
        }
        Err(ActionFailure::retryable(format!(
            "no controller of {} gave the sync state set of {broker}: {}",
            controllers.join(";"),
            errors.join("; ")
        )))
    })
    .await
}

/// The output of `rocketmq.sync_state` for a group the controller knows.
fn replicas_output(
    broker: &str,
    controller: &str,
    replicas: &ReplicasInfo,
    expect_master: Option<&str>,
    addrs: &[String],
) -> Value {
    let identities = |list: &[ReplicaIdentity]| {
        list.iter()
            .map(|one| {
                json!({
                    "id": one.get_broker_id(),
                    "addr": one.get_broker_address().to_string(),
                    "alive": one.get_alive(),
                })
            })
            .collect::<Vec<_>>()
    };
    let addrs_of = |list: &[ReplicaIdentity]| -> Vec<String> {
        list.iter()
            .map(|one| one.get_broker_address().to_string())
            .collect()
    };
    let in_sync_addrs = addrs_of(replicas.get_in_sync_replicas());
    let not_in_sync_addrs = addrs_of(replicas.get_not_in_sync_replicas());
    let missing: Vec<&String> = addrs
        .iter()
        .filter(|addr| !in_sync_addrs.contains(addr))
        .collect();
    let known = addrs
        .iter()
        .all(|addr| in_sync_addrs.contains(addr) || not_in_sync_addrs.contains(addr));
    let master_addr = replicas.get_master_address();
    json!({
        "broker": broker,
        "controller": controller,
        "known": true,
        "master_broker_id": replicas.get_master_broker_id(),
        "master_addr": master_addr,
        "has_master": !master_addr.is_empty(),
        "master_epoch": replicas.get_master_epoch(),
        "sync_state_set_epoch": replicas.get_sync_state_set_epoch(),
        "in_sync": identities(replicas.get_in_sync_replicas()),
        "not_in_sync": identities(replicas.get_not_in_sync_replicas()),
        "in_sync_count": in_sync_addrs.len(),
        "in_sync_addrs": in_sync_addrs,
        "master_expected": expect_master.is_none_or(|expected| expected == master_addr),
        "addrs_in_sync": missing.is_empty(),
        "addrs_known": known,
        "missing": missing,
        "observed_at_ms": now_ms(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(addr: &str, leader: &str, is_leader: bool) -> Value {
        json!({"addr": addr, "answered": true, "leader_addr": leader, "is_leader": is_leader, "peers": ["a", "b"]})
    }

    #[test]
    fn controllers_agree_only_on_one_named_leader() {
        let list = vec!["c1:1".to_owned(), "c2:2".to_owned()];
        let out = summarize_meta(
            &list,
            vec![meta("c1:1", "c1:1", true), meta("c2:2", "c1:1", false)],
        )
        .unwrap();
        assert_eq!(out["agree"], true);
        assert_eq!(out["leader_addr"], "c1:1");
        assert_eq!(out["leader_count"], 1);
        let split = summarize_meta(
            &list,
            vec![meta("c1:1", "c1:1", true), meta("c2:2", "c2:2", true)],
        )
        .unwrap();
        assert_eq!(split["agree"], false);
        assert_eq!(split["leader_addr"], "");
        assert_eq!(split["leader_count"], 2);
        let none = summarize_meta(&list, vec![meta("c1:1", "", false)]).unwrap();
        assert_eq!(none["agree"], false);
        assert_eq!(none["all_answered"], false);
        let silent = summarize_meta(
            &list,
            vec![json!({"addr": "c1:1", "answered": false, "error": "refused"})],
        );
        let failure = silent.unwrap_err();
        assert!(
            failure.retryable && failure.message.contains("c1:1"),
            "{failure:?}"
        );
    }

    #[test]
    fn a_slave_outside_the_sync_state_set_is_known_but_not_in_sync() {
        let master = ReplicaIdentity::new_with_alive("broker-a", 1, "m:1", true);
        let slave = ReplicaIdentity::new_with_alive("broker-a", 2, "s:2", true);
        let replicas = ReplicasInfo::new(1, "m:1", 1, 1, vec![master], vec![slave]);
        let both = ["m:1".to_owned(), "s:2".to_owned()];
        let out = replicas_output("broker-a", "c:1", &replicas, Some("m:1"), &both);
        assert_eq!(out["master_expected"], true);
        assert_eq!(out["addrs_known"], true);
        assert_eq!(out["addrs_in_sync"], false);
        assert_eq!(out["missing"], json!(["s:2"]));
        let wrong = replicas_output("broker-a", "c:1", &replicas, Some("s:2"), &both);
        assert_eq!(wrong["master_expected"], false);
        let stranger = replicas_output("broker-a", "c:1", &replicas, None, &["x:3".to_owned()]);
        assert_eq!(stranger["addrs_known"], false);
        assert_eq!(stranger["master_expected"], true);
    }
}
