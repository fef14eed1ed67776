//! `rocketmq.cluster`: the cluster members, asked of **every** NameServer separately.
//!
//! Input: `namesrv`, optional `cluster` (only its brokers), optional `broker` (report on that
//! broker) and `expect` (`registered`: the broker must be registered on every NameServer;
//! `absent`: on none — otherwise the step fails, naming where it is or is not).
//!
//! Optional `addrs` (a list of `host:port`): report on each of those broker processes, by
//! address, whichever group and brokerId they are registered under.
//!
//! Output: `brokers` (`[{broker, cluster, id, addr, namesrvs}]`), `broker_names`, `masters`
//! (`[{broker, cluster, addr}]`), `replicas` (every broker process, master and slaves:
//! `[{broker, cluster, id, role, addr, namesrvs}]`, grouped by brokerName, **slaves first**
//! within a group: the order a rolling restart or a decommission takes them, for `for_each`),
//! `addrs` (every registered address), `by_namesrv` (`{addr: [broker names]}`),
//! `every_broker_everywhere` (each broker group is registered on every NameServer),
//! `every_replica_everywhere` (each broker process, by address, is registered on every
//! NameServer), `observed_at_ms`, with `broker`: `broker: {name, addr, replicas,
//! registered_on, missing_on, registered_everywhere, absent_everywhere}`, and with `addrs`:
//! `by_addr: {addr: {registered_on, missing_on}}`, `addrs_registered_everywhere`,
//! `addrs_absent_everywhere`.

use std::collections::{BTreeMap, BTreeSet};

use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::input::Input;
use super::session::{brokers_of, names_or_none, now_ms, with_admin};

/// A broker as the NameServers report it: (cluster, brokerId → addr, the NameServers listing it).
type Seen = (String, BTreeMap<u64, String>, Vec<String>);

/// The input of `rocketmq.cluster` (read-only).
pub const SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("cluster", Kind::Text, "report only this cluster's brokers"),
        optional("broker", Kind::Text, "the broker to report on"),
        optional(
            "addrs",
            Kind::List,
            "check `expect` for these broker addresses, each on its own",
        ),
        optional(
            "expect",
            Kind::Text,
            "fail unless `broker` is so on every NameServer (needs `broker`)",
        )
        .one_of(&["registered", "absent"]),
    ],
};

/// One broker process: (brokerName, brokerId, address).
type Process = (String, u64, String);

pub async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.cluster", &input);
    let namesrvs = input.namesrv()?;
    let cluster = input.opt_string("cluster")?;
    let broker = input.opt_string("broker")?;
    let expect = input.opt_string("expect")?;
    let wanted_addrs = input.string_list("addrs")?;
    if let Some(expect) = &expect {
        if !matches!(expect.as_str(), "registered" | "absent") {
            return Err(input.bad(
                "expect",
                format!("{expect:?}: use \"registered\" or \"absent\""),
            ));
        }
        if broker.is_none() {
            return Err(input.bad("expect", "needs `broker`"));
        }
    }

    // broker name → (cluster, id → addr, the NameServers that list it)
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    // (broker name, id, addr) → the NameServers listing that process
    let mut processes: BTreeMap<Process, Vec<String>> = BTreeMap::new();
    let mut by_namesrv = serde_json::Map::new();
    let mut known_clusters = BTreeSet::new();
    for namesrv in &namesrvs {
        let info = with_admin(std::slice::from_ref(namesrv), |admin| async move {
            admin.cluster_info().await
        })
        .await?;
        let brokers = brokers_of(&info);
        let mut names = Vec::new();
        for (name, entry) in brokers {
            known_clusters.insert(entry.cluster.clone());
            if cluster
                .as_ref()
                .is_some_and(|wanted| *wanted != entry.cluster)
            {
                continue;
            }
            names.push(name.clone());
            for (id, addr) in &entry.addrs {
                processes
                    .entry((name.clone(), *id, addr.clone()))
                    .or_default()
                    .push(namesrv.clone());
            }
            let slot = seen
                .entry(name)
                .or_insert_with(|| (entry.cluster.clone(), BTreeMap::new(), Vec::new()));
            slot.1.extend(entry.addrs);
            slot.2.push(namesrv.clone());
        }
        context.log.line(&format!(
            "namesrv {namesrv}: {} broker(s): {}",
            names.len(),
            names_or_none(names.iter())
        ));
        by_namesrv.insert(namesrv.clone(), json!(names));
    }
    if let Some(wanted) = &cluster {
        if !known_clusters.contains(wanted) {
            return Err(ActionFailure::permanent(format!(
                "cluster {wanted} is not known to namesrv {} (clusters: {})",
                namesrvs.join(";"),
                names_or_none(known_clusters.iter())
            )));
        }
    }

    let mut brokers = Vec::new();
    let mut masters = Vec::new();
    for (name, (cluster_name, addrs, on)) in &seen {
        for (id, addr) in addrs {
            brokers.push(json!({"broker": name, "cluster": cluster_name, "id": id, "addr": addr, "namesrvs": on}));
        }
        if let Some(addr) = addrs.get(&0) {
            masters.push(json!({"broker": name, "cluster": cluster_name, "addr": addr}));
        }
    }
    let cluster_of = |name: &str| seen.get(name).map(|(cluster, _, _)| cluster.clone());
    // Slaves first (highest brokerId first), the master last, group by group.
    let mut ordered: Vec<(&Process, &Vec<String>)> = processes.iter().collect();
    ordered.sort_by(|(a, _), (b, _)| {
        (&a.0, a.1 == 0, std::cmp::Reverse(a.1)).cmp(&(&b.0, b.1 == 0, std::cmp::Reverse(b.1)))
    });
    let replicas: Vec<Value> = ordered
        .iter()
        .map(|((name, id, addr), on)| {
            json!({"broker": name, "cluster": cluster_of(name), "id": id, "role": if *id == 0 { "master" } else { "slave" }, "addr": addr, "namesrvs": on})
        })
        .collect();
    let every_replica_everywhere = processes.values().all(|on| on.len() == namesrvs.len());
    let every_broker_everywhere = seen.values().all(|(_, _, on)| on.len() == namesrvs.len());
    let mut output = json!({
        "namesrv": namesrvs,
        "every_broker_everywhere": every_broker_everywhere,
        "brokers": brokers,
        "broker_names": seen.keys().collect::<Vec<_>>(),
        "masters": masters,
        "replicas": replicas,
        "addrs": processes.keys().map(|(_, _, addr)| addr.clone()).collect::<Vec<_>>(),
        "every_replica_everywhere": every_replica_everywhere,
        "by_namesrv": by_namesrv,
        "observed_at_ms": now_ms(),
    });

    if let Some(name) = &broker {
        let registered_on: Vec<String> = seen
            .get(name)
            .map(|(_, _, on)| on.clone())
            .unwrap_or_default();
        let missing_on: Vec<String> = namesrvs
            .iter()
            .filter(|namesrv| !registered_on.contains(namesrv))
            .cloned()
            .collect();
        let addr = seen
            .get(name)
            .and_then(|(_, addrs, _)| addrs.get(&0).cloned());
        let everywhere = missing_on.is_empty();
        let absent = registered_on.is_empty();
        context.log.line(&format!(
            "broker {name}: registered on {} of {} namesrv(s){}",
            registered_on.len(),
            namesrvs.len(),
            if missing_on.is_empty() {
                String::new()
            } else {
                format!(", missing on {}", missing_on.join(", "))
            }
        ));
        match expect.as_deref() {
            Some("registered") if !everywhere => {
                return Err(ActionFailure::permanent(format!(
                    "broker {name} is not registered on namesrv {} (registered there: {})",
                    missing_on.join(", "),
                    names_or_none(seen.keys())
                )))
            }
            Some("absent") if !absent => {
                return Err(ActionFailure::permanent(format!(
                    "broker {name} is still registered on namesrv {}",
                    registered_on.join(", ")
                )))
            }
            _ => {}
        }
        let group: Vec<&Value> = replicas
            .iter()
            .filter(|replica| replica["broker"] == json!(name))
            .collect();
        output["broker"] = json!({
            "name": name,
            "addr": addr,
            "replicas": group,
            "registered_on": registered_on,
            "missing_on": missing_on,
            "registered_everywhere": everywhere,
            "absent_everywhere": absent,
        });
    }
    if !wanted_addrs.is_empty() {
        let mut by_addr = serde_json::Map::new();
        let mut all_registered = true;
        let mut all_absent = true;
        for wanted in &wanted_addrs {
            let mut on: Vec<String> = processes
                .iter()
                .filter(|((_, _, addr), _)| addr == wanted)
                .flat_map(|(_, on)| on.iter().cloned())
                .collect();
            on.sort();
            on.dedup();
            let missing: Vec<&String> = namesrvs
                .iter()
                .filter(|namesrv| !on.contains(namesrv))
                .collect();
            all_registered &= missing.is_empty();
            all_absent &= on.is_empty();
            context.log.line(&format!(
                "broker process {wanted}: registered on {} of {} namesrv(s)",
                on.len(),
                namesrvs.len()
            ));
            by_addr.insert(
                wanted.clone(),
                json!({"registered_on": on, "missing_on": missing}),
            );
        }
        output["by_addr"] = Value::Object(by_addr);
        output["addrs_registered_everywhere"] = json!(all_registered);
        output["addrs_absent_everywhere"] = json!(all_absent);
    }
    Ok(output)
}
