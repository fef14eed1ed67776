//! `rocketmq.broker.scale_out` against a real cluster whose brokers do not all hold the same
//! topics and groups: the new broker gets the union over every master of the cluster, groups
//! before topics, and a group it already holds with another config is reported, not overwritten.

use std::time::Duration;

use anyhow::Result;
use cheetah_string::CheetahString;
use rocketmq_protocol::protocol::subscription::subscription_group_config::SubscriptionGroupConfig;
use runbook_tests::cluster::Cluster;
use runbook_tests::{step_of, Daemon};

const LONG: Duration = Duration::from_secs(90);

/// Creates subscription group `group` on `broker` with `retry_max_times`.
fn create_group(cluster: &Cluster, broker: &str, group: &str, retry_max_times: i32) -> Result<()> {
    let addr = cluster.broker(broker)?.addr.clone();
    let group = group.to_owned();
    cluster.with_admin(&cluster.namesrv(), |admin| async move {
        let mut config = SubscriptionGroupConfig::new(CheetahString::from(group.as_str()));
        config.set_retry_max_times(retry_max_times);
        rocketmq_client_rust::ConsumerAdmin::create_and_update_subscription_group_config(
            &*admin,
            CheetahString::from(addr.as_str()),
            config,
        )
        .await
        .map_err(|error| anyhow::anyhow!("creating group {group}: {error}"))
    })
}

#[test]
fn scale_out_copies_the_union_of_the_cluster_groups_first_and_reports_differences() -> Result<()> {
    let mut cluster = Cluster::start(1, &["broker-a", "broker-b"])?;
    cluster.create_topic("OnlyOnA", &["broker-a"], 2)?;
    cluster.create_topic("OnlyOnB", &["broker-b"], 3)?;
    cluster.create_topic("OnBoth", &["broker-a", "broker-b"], 2)?;
    create_group(&cluster, "broker-a", "group_a", 16)?;
    create_group(&cluster, "broker-b", "group_b", 16)?;
    create_group(&cluster, "broker-b", "shared_group", 16)?;
    // The new broker already holds shared_group, with another retry count.
    cluster.add_broker("broker-new")?;
    create_group(&cluster, "broker-new", "shared_group", 3)?;

    let daemon = Daemon::start()?;
    let namesrv = cluster.namesrv();
    let run = daemon.start_run(
        "rocketmq.broker.scale_out",
        &[("namesrv", &namesrv), ("broker", "broker-new")],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", LONG)?;
    let copy = step_of(&shown, "copy")
        .map(|step| step["output"].clone())
        .unwrap_or_default();
    assert_eq!(
        copy["sources"],
        serde_json::json!(["broker-a", "broker-b"]),
        "{copy}"
    );
    assert_eq!(
        copy["topics"],
        serde_json::json!(["OnBoth", "OnlyOnA", "OnlyOnB"]),
        "{copy}"
    );
    let groups = copy["groups"].to_string();
    assert!(
        groups.contains("group_a") && groups.contains("group_b"),
        "{copy}"
    );
    assert!(!groups.contains("shared_group"), "{copy}");
    let differing = copy["differing"].to_string();
    assert!(
        differing.contains("shared_group") && differing.contains("left as the target holds it"),
        "{copy}"
    );
    // Groups were created before any topic, and the difference is in the log too.
    let log = daemon.step_log(&run, "copy");
    let first_group = log.find("subscription group ").unwrap_or(usize::MAX);
    let first_topic = log.find("topic ").unwrap_or(0);
    assert!(first_group < first_topic, "{log}");
    assert!(log.contains("differing group shared_group"), "{log}");
    for topic in ["OnlyOnA", "OnlyOnB", "OnBoth"] {
        assert!(
            cluster
                .route_brokers(topic)?
                .iter()
                .any(|name| name == "broker-new"),
            "{topic}"
        );
    }
    // The backup step ran first and named its path.
    let backup = step_of(&shown, "backup")
        .map(|step| step["output"].clone())
        .unwrap_or_default();
    assert!(
        backup["summary"].to_string().contains("backup of"),
        "{backup}"
    );
    Ok(())
}
