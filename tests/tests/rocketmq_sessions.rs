//! The `rocketmq.*` actions' shared admin sessions, in-process as the daemon holds them, against
//! a real cluster: one session per NameServer list serves sequential and concurrent actions; a
//! broker restart under a shared session does not fail the next action; a NameServer that went
//! away fails the action retryably and takes the session out of the pool, and once it is back
//! the next action works on a new session.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rocketmq_client_rust::BrokerAdmin as _;
use runbook_engine::action::ActionFailure;
use runbook_runbooks::rocketmq::session::{pooled_sessions, with_admin, Admin, CHECK_AFTER};
use runbook_tests::cluster::Cluster;

/// A cluster query on the shared session; the session's identity.
async fn query(namesrv: &[String]) -> Result<usize, ActionFailure> {
    with_admin(namesrv, |admin: Arc<Admin>| async move {
        admin.cluster_info().await?;
        Ok(Arc::as_ptr(&admin) as usize)
    })
    .await
}

/// Broker `name`'s runtime stats through the shared session; the session's identity.
async fn broker_stats(namesrv: &[String], name: &str) -> Result<usize, ActionFailure> {
    with_admin(namesrv, |admin: Arc<Admin>| async move {
        let broker = admin.resolve_broker(Some(name), None).await?;
        admin
            .inner
            .fetch_broker_runtime_stats(broker.addr())
            .await
            .map_err(|error| ActionFailure::retryable(format!("broker {name}: {error}")))?;
        Ok(Arc::as_ptr(&admin) as usize)
    })
    .await
}

#[test]
fn admin_sessions_are_shared_checked_and_replaced() -> Result<()> {
    let mut cluster = Cluster::start(1, &["broker-a"])?;
    let namesrv = vec![cluster.namesrv()];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let failed = |failure: ActionFailure| anyhow!(failure.message);

    // Sequential and concurrent actions share one session.
    let first = runtime.block_on(query(&namesrv)).map_err(failed)?;
    let second = runtime
        .block_on(broker_stats(&namesrv, "broker-a"))
        .map_err(failed)?;
    assert_eq!(first, second, "a second action opened its own session");
    let together = runtime.block_on(async {
        let calls = (0..8).map(|_| query(&namesrv));
        futures_util::future::join_all(calls).await
    });
    for identity in together {
        assert_eq!(
            identity.map_err(failed)?,
            first,
            "a concurrent action opened its own session"
        );
    }
    assert_eq!(pooled_sessions(), 1);

    // A broker restart under the shared session: the next action works at its first attempt.
    cluster.stop_broker("broker-a")?;
    cluster.start_broker("broker-a")?;
    cluster.wait_registered("broker-a", Duration::from_secs(60))?;
    runtime
        .block_on(broker_stats(&namesrv, "broker-a"))
        .map_err(|failure| anyhow!("after the broker restart: {}", failure.message))?;

    // The NameServer goes away: the action fails retryably, naming it, and the session leaves
    // the pool; after an idle spell the check before reuse finds a dead session too.
    cluster.kill_namesrv(0);
    let failure = runtime
        .block_on(query(&namesrv))
        .expect_err("a cluster query without a NameServer");
    assert!(failure.retryable, "{}", failure.message);
    assert!(failure.message.contains(&namesrv[0]), "{}", failure.message);
    assert_eq!(pooled_sessions(), 0, "a failed session stayed in the pool");

    // Back on the same port: a new session serves the next action, and then stays.
    cluster.restart_namesrv(0)?;
    cluster.wait_registered("broker-a", Duration::from_secs(60))?;
    let fresh = runtime.block_on(query(&namesrv)).map_err(failed)?;
    assert_eq!(pooled_sessions(), 1);

    // Idle past the check, with the NameServer restarted meanwhile: the check replaces the
    // session if it no longer answers, and the action itself succeeds either way.
    cluster.kill_namesrv(0);
    cluster.restart_namesrv(0)?;
    cluster.wait_registered("broker-a", Duration::from_secs(60))?;
    std::thread::sleep(CHECK_AFTER + Duration::from_secs(1));
    let after_idle = runtime.block_on(query(&namesrv)).map_err(failed)?;
    eprintln!(
        "[sessions] after an idle NameServer restart the session was {}",
        if after_idle == fresh {
            "kept (it reconnected)"
        } else {
            "replaced"
        }
    );
    runtime
        .block_on(broker_stats(&namesrv, "broker-a"))
        .map_err(failed)?;
    cluster.stop_all();
    Ok(())
}
