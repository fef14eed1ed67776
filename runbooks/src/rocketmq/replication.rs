//! `rocketmq.replication`: how far each slave of a broker group is behind its master, read from
//! every replica's own runtime stats (`commitLogMaxOffset`, what `mqadmin brokerStatus` shows).
//!
//! Input: `namesrv`, `broker` (the group), optional `max_behind` (bytes a slave may lag and still
//! count as caught up, default 0).
//!
//! Output: `broker`, `master: {addr, max_offset}`, `slaves: [{addr, id, max_offset, behind,
//! caught_up}]`, `behind_total`, `slave_count`, `caught_up` (every slave is at most `max_behind`
//! bytes behind; true for a group without slaves), `observed_at_ms`.
//!
//! # Contract
//!
//! Each slave is read first, then the master (whose log only grows), so a slave can only look
//! further behind than it was, never closer. Use it with `until = "output.caught_up"` after writes to the master stopped:
//! a master stopped while its slave lags loses what the slave has not copied.

use rocketmq_client_rust::BrokerAdmin as _;
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::input::Input;
use super::session::{explain, now_ms, with_admin, Admin};

/// The input of `rocketmq.replication` (read-only).
pub const SCHEMA: Schema = Schema {
    mutates: false,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional("broker", Kind::Text, "the broker group").required(),
        optional(
            "max_behind",
            Kind::Int,
            "bytes a slave may lag and still count as caught up (default 0)",
        ),
    ],
};

pub async fn run(input: Value, _context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.replication", &input);
    let namesrv = input.namesrv()?;
    let broker = input.string("broker")?;
    let max_behind = input.opt_i64("max_behind")?.unwrap_or(0);
    if max_behind < 0 {
        return Err(input.bad("max_behind", "must not be negative"));
    }
    let where_looked = namesrv.join(";");
    with_admin(&namesrv, |admin| async move {
        let brokers = admin.brokers().await?;
        let entry = brokers.get(&broker).ok_or_else(|| {
            ActionFailure::permanent(format!(
                "broker {broker} is not registered on {where_looked}"
            ))
        })?;
        let master = entry.master().ok_or_else(|| {
            ActionFailure::retryable(format!("broker {broker} has no master (brokerId 0) registered"))
        })?;
        // Slaves first, then the master: the master's log only grows, so a slave read earlier
        // can only look further behind than it was, never closer.
        let mut offsets = Vec::new();
        for (id, addr) in entry.addrs.iter().filter(|(id, _)| **id != 0) {
            offsets.push((*id, addr.clone(), max_offset(&admin, &broker, addr).await?));
        }
        let master_offset = max_offset(&admin, &broker, master).await?;
        let mut slaves = Vec::new();
        let mut behind_total = 0;
        let mut caught_up = true;
        for (id, addr, offset) in offsets {
            let behind = (master_offset - offset).max(0);
            behind_total += behind;
            caught_up &= behind <= max_behind;
            slaves.push(json!({"addr": addr, "id": id, "max_offset": offset, "behind": behind, "caught_up": behind <= max_behind}));
        }
        Ok(json!({
            "broker": broker,
            "master": {"addr": master, "max_offset": master_offset},
            "slave_count": slaves.len(),
            "slaves": slaves,
            "behind_total": behind_total,
            "caught_up": caught_up,
            "observed_at_ms": now_ms(),
        }))
    })
    .await
}

/// One replica's `commitLogMaxOffset`, as it reports it.
async fn max_offset(admin: &Admin, broker: &str, addr: &str) -> Result<i64, ActionFailure> {
    let table = admin
        .inner
        .fetch_broker_runtime_stats(cheetah_string::CheetahString::from(addr))
        .await
        .map_err(|error| {
            ActionFailure::retryable(format!(
                "broker {broker} replica {addr} did not return its runtime stats: {}",
                explain(&error)
            ))
        })?;
    table
        .table
        .iter()
        .find(|(key, _)| key.as_str() == "commitLogMaxOffset")
        .and_then(|(_, value)| value.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            ActionFailure::retryable(format!(
                "broker {broker} replica {addr} reports no commitLogMaxOffset"
            ))
        })
}
