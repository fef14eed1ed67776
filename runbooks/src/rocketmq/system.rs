//! The topics and consumer groups the brokers create for themselves: never copied between
//! brokers, never counted as what a broker serves or as a group to wait for.

/// Topics every broker creates for itself; never copied between brokers nor counted as
/// "served" when deciding whether a broker can go.
pub fn is_system_topic(topic: &str, broker_names: &[String], cluster_names: &[String]) -> bool {
    const SYSTEM: &[&str] = &[
        "TBW102",
        "SCHEDULE_TOPIC_XXXX",
        "BenchmarkTest",
        "OFFSET_MOVED_EVENT",
        "SELF_TEST_TOPIC",
        "RMQ_SYS_TRANS_HALF_TOPIC",
        "RMQ_SYS_TRANS_OP_HALF_TOPIC",
        "RMQ_SYS_TRACE_TOPIC",
        "TRANS_CHECK_MAX_TIME_TOPIC",
        "DefaultHeartBeatSyncerTopic",
    ];
    SYSTEM.contains(&topic)
        || topic.starts_with("rmq_sys_")
        || topic.starts_with("RMQ_SYS_")
        || topic.starts_with("%RETRY%")
        || topic.starts_with("%DLQ%")
        || topic.starts_with("%LMQ%")
        || topic.ends_with("_REPLY_TOPIC")
        || broker_names.iter().any(|name| name == topic)
        || cluster_names.iter().any(|name| name == topic)
}

/// Consumer groups the brokers create for themselves.
pub fn is_system_group(group: &str) -> bool {
    const SYSTEM: &[&str] = &[
        "TOOLS_CONSUMER",
        "FILTERSRV_CONSUMER",
        "__MONITOR_CONSUMER",
        "CLIENT_INNER_PRODUCER",
        "SELF_TEST_P_GROUP",
        "SELF_TEST_C_GROUP",
        "CID_ONS-HTTP-PROXY",
        "CID_ONSAPI_PERMISSION",
        "CID_ONSAPI_OWNER",
        "CID_ONSAPI_PULL",
        "CID_RMQ_SYS_TRANS",
        "CID_SYS_RMQ_TRANS",
    ];
    SYSTEM.contains(&group)
        || group.starts_with("CID_RMQ_SYS_")
        || group.starts_with("rmq_sys_")
        || group.starts_with("tools-")
}
