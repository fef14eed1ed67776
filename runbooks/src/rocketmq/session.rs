//! The admin session every `rocketmq.*` action opens: the shared client runtime, a connected
//! admin client, the brokers the NameServer registers, and errors named as the cluster gave them.
//!
//! # Contract
//!
//! - An input error is permanent (another attempt will not cure it) and names the field.
//! - A network error is retryable and names the NameServer or broker that did not answer.
//! - "Does not exist" (a broker, a topic) is permanent and names the thing and where it was
//!   looked up, with what does exist.
//! - Sessions are shared: one per NameServer list within the process, used by every action
//!   that names that list, concurrently. A session idle for a while is checked with a cluster
//!   query before it is handed out (a new one replaces it if the query fails); an action that
//!   fails retryably drops its session from the pool, so the next attempt connects afresh; a
//!   session idle longer than [`IDLE_CLOSE`] leaves the pool (a background sweep). A session is closed when the last
//!   action using it ends (never under one); a cancelled action (timeout, cancel, rollback)
//!   stops at its next await.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cheetah_string::CheetahString;
use rocketmq_admin_core::client_adapter::{ClientRuntime, ClientRuntimeConfig, TelemetryHandle};
use rocketmq_client_rust::{DefaultMQAdminExt, RouteAdmin as _};
use rocketmq_protocol::protocol::body::broker_body::cluster_info::ClusterInfo;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use runbook_engine::action::ActionFailure;

/// How long one request to a NameServer or broker may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);

/// The process-wide RocketMQ client runtime: its own small Tokio runtime owned by a
/// [`RuntimeOwner`], as the rocketmq-rust client expects. Created on first use, never dropped
/// (dropping a Tokio runtime from inside another one would panic).
struct Shared {
    _owner: RuntimeOwner,
    client_runtime: Arc<ClientRuntime>,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

fn build_shared() -> Result<Shared, String> {
    rocketmq_protocol::protocol::remoting_command_compat::initialize_remoting_defaults(
        rocketmq_model::version::CURRENT_VERSION as i32,
    )
    .map_err(|error| {
        let error = explain(&error);
        format!("initializing the RocketMQ remoting defaults: {error}")
    })?;
    let config = RuntimeConfig::for_parallelism("runbook-rocketmq", 2);
    let owner = RuntimeOwner::plan(config)
        .map_err(|error| {
            let error = explain(&error);
            format!("planning the RocketMQ client runtime: {error}")
        })?
        .build()
        .map_err(|error| {
            let error = explain(&error);
            format!("starting the RocketMQ client runtime: {error}")
        })?;
    let client_runtime = ClientRuntime::try_new(
        owner.root_context().component("client"),
        ClientRuntimeConfig::default(),
        TelemetryHandle::noop(),
    )
    .map_err(|error| {
        let error = explain(&error);
        format!("creating the RocketMQ client runtime: {error}")
    })?;
    Ok(Shared {
        _owner: owner,
        client_runtime,
    })
}

/// The shared client runtime (for the admin sessions here and for test producers/consumers).
pub fn client_runtime() -> Result<Arc<ClientRuntime>, String> {
    match SHARED.get_or_init(build_shared) {
        Ok(shared) => Ok(Arc::clone(&shared.client_runtime)),
        Err(message) => Err(message.clone()),
    }
}

/// Milliseconds since the Unix epoch, from the system clock (outputs carry it as evidence of
/// when the cluster was observed).
pub fn now_ms() -> i64 {
    use runbook_engine::clock::Clock;
    runbook_engine::clock::SystemClock.now().timestamp_millis()
}

/// An error as text; for a client error, with the broker's response code and what it means
/// (the client's own text is often only "Broker operation failed").
pub fn explain<E: std::fmt::Display + 'static>(error: &E) -> String {
    let Some(client) =
        (error as &dyn std::any::Any).downcast_ref::<rocketmq_client_rust::ClientError>()
    else {
        return error.to_string();
    };
    let mut text = client.to_string();
    if let Some(code) = client.broker_response_code() {
        let meaning = match code {
            1 => "system error",
            2 => "system busy",
            3 => "request not supported",
            13 => "message illegal",
            14 => "service not available",
            16 => "no permission",
            17 => "topic does not exist",
            22 => "subscription group does not exist",
            24 => "subscription not latest",
            206 => "consumer not online",
            _ => "",
        };
        text.push_str(&format!(
            " (broker response code {code}{}{meaning})",
            if meaning.is_empty() { "" } else { ": " }
        ));
    }
    if let Some(addr) = client.broker_addr() {
        text.push_str(&format!(" [{addr}]"));
    }
    text
}

/// A started admin client bound to a NameServer list. Shut down when dropped (on the runtime
/// it was dropped in), or with [`Admin::close`].
pub struct Admin {
    pub inner: Client,
    /// The address list as given (for messages).
    pub namesrv: String,
}

/// The admin client of an [`Admin`]: present from `connect` until it is shut down.
pub struct Client(Option<DefaultMQAdminExt>);

impl std::ops::Deref for Client {
    type Target = DefaultMQAdminExt;

    fn deref(&self) -> &DefaultMQAdminExt {
        self.0
            .as_ref()
            .expect("an admin client is present until its session is dropped")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let Some(mut inner) = self.0.take() else {
            return;
        };
        // Dropped outside any runtime (a process ending) there is nothing left to tell.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { inner.shutdown().await });
        }
    }
}

impl Admin {
    pub async fn connect(namesrv: &[String]) -> Result<Admin, ActionFailure> {
        let joined = namesrv.join(";");
        let runtime = client_runtime().map_err(ActionFailure::permanent)?;
        let mut inner = DefaultMQAdminExt::with_timeout(runtime, REQUEST_TIMEOUT);
        inner.set_namesrv_addr(joined.as_str());
        // Unique within the process: the client refuses a second instance of a name it holds
        // (two sessions opened in the same millisecond).
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = OPENED.fetch_add(1, Ordering::Relaxed);
        inner.client_config_mut().set_instance_name(
            format!("runbook-{}-{}-{serial}", std::process::id(), now_ms()).into(),
        );
        inner.start().await.map_err(|error| {
            let error = explain(&error);
            {
                ActionFailure::retryable(format!(
                    "starting an admin client for namesrv {joined}: {error}"
                ))
            }
        })?;
        Ok(Admin {
            inner: Client(Some(inner)),
            namesrv: joined,
        })
    }

    /// Shuts the client down now (rather than in the background when dropped).
    pub async fn close(mut self) {
        if let Some(mut inner) = self.inner.0.take() {
            inner.shutdown().await;
        }
    }

    /// The cluster as this NameServer list sees it.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, ActionFailure> {
        self.inner
            .examine_broker_cluster_info()
            .await
            .map_err(|error| {
                let error = explain(&error);
                {
                    ActionFailure::retryable(format!(
                        "namesrv {} did not answer the cluster query: {error}",
                        self.namesrv
                    ))
                }
            })
    }

    /// Every registered broker group: name → (cluster, master address or None, all addresses).
    pub async fn brokers(&self) -> Result<BTreeMap<String, BrokerEntry>, ActionFailure> {
        let info = self.cluster_info().await?;
        Ok(brokers_of(&info))
    }

    /// The master address of broker `name` (or `addr` when given directly).
    pub async fn resolve_broker(
        &self,
        name: Option<&str>,
        addr: Option<&str>,
    ) -> Result<BrokerRef, ActionFailure> {
        let brokers = self.brokers().await?;
        if let Some(addr) = addr {
            let found = brokers
                .iter()
                .find(|(_, entry)| entry.addrs.values().any(|known| known == addr));
            return Ok(BrokerRef {
                name: name
                    .map(str::to_owned)
                    .or_else(|| found.map(|(name, _)| name.clone()))
                    .unwrap_or_else(|| addr.to_owned()),
                addr: addr.to_owned(),
            });
        }
        let Some(name) = name else {
            return Err(ActionFailure::permanent(
                "give `broker` (a broker name) or `broker_addr` (host:port)",
            ));
        };
        match brokers.get(name) {
            Some(entry) => match entry.master() {
                Some(addr) => Ok(BrokerRef {
                    name: name.to_owned(),
                    addr: addr.to_owned(),
                }),
                None => Err(ActionFailure::retryable(format!(
                    "broker {name} has no master (brokerId 0) registered on namesrv {}",
                    self.namesrv
                ))),
            },
            None => Err(ActionFailure::permanent(format!(
                "broker {name} is not registered on namesrv {} (registered: {})",
                self.namesrv,
                names_or_none(brokers.keys())
            ))),
        }
    }
}

/// One broker group as the NameServer registers it.
#[derive(Debug, Clone)]
pub struct BrokerEntry {
    pub cluster: String,
    /// brokerId → address.
    pub addrs: BTreeMap<u64, String>,
}

impl BrokerEntry {
    pub fn master(&self) -> Option<&str> {
        self.addrs.get(&0).map(String::as_str)
    }
}

/// A broker to talk to: its name and the address used.
#[derive(Debug, Clone)]
pub struct BrokerRef {
    pub name: String,
    pub addr: String,
}

impl BrokerRef {
    pub fn addr(&self) -> CheetahString {
        CheetahString::from(self.addr.as_str())
    }
}

pub fn brokers_of(info: &ClusterInfo) -> BTreeMap<String, BrokerEntry> {
    let mut brokers = BTreeMap::new();
    if let Some(table) = &info.broker_addr_table {
        for (name, data) in table {
            let addrs = data
                .broker_addrs()
                .iter()
                .map(|(id, addr)| (*id, addr.to_string()))
                .collect();
            brokers.insert(
                name.to_string(),
                BrokerEntry {
                    cluster: data.cluster().to_owned(),
                    addrs,
                },
            );
        }
    }
    brokers
}

pub fn names_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// How many independent admin requests one action keeps in flight at once (a copy of thousands
/// of topics to a new broker): enough to hide the round trip, few enough not to flood a broker.
pub const CONCURRENT_REQUESTS: usize = 16;

/// Runs `request` for every item over the same admin session, at most [`CONCURRENT_REQUESTS`]
/// at once. The first error ends it: requests not yet sent are never sent, and those in flight
/// may or may not have been applied (every caller's requests are idempotent: a retry of the
/// action finds them done).
pub async fn each_concurrently<I, F, Fut>(items: I, request: F) -> Result<(), ActionFailure>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<(), ActionFailure>>,
{
    use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
    stream::iter(items)
        .map(request)
        .buffer_unordered(CONCURRENT_REQUESTS)
        .try_for_each(|()| std::future::ready(Ok(())))
        .await
}

/// A session idle this long is checked with a cluster query before it is used again.
pub const CHECK_AFTER: Duration = Duration::from_secs(10);

/// A session idle this long leaves the pool and is closed (when no action holds it); a sweep
/// runs every quarter of it while the pool holds any.
pub const IDLE_CLOSE: Duration = Duration::from_secs(120);

/// A pooled session and when an action last took it.
struct Pooled {
    admin: Arc<Admin>,
    last_used: Instant,
}

/// The shared sessions, by NameServer list as given (`a;b`).
static POOL: Mutex<BTreeMap<String, Pooled>> = Mutex::new(BTreeMap::new());

fn pool() -> std::sync::MutexGuard<'static, BTreeMap<String, Pooled>> {
    // A panic while the lock was held left plain data: the map is still right.
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a task sweeps the pool (one while it holds any session).
static SWEEPING: AtomicBool = AtomicBool::new(false);

/// Takes the sessions idle past [`IDLE_CLOSE`] at `now` out of the pool; whether it is empty.
fn sweep(now: Instant) -> bool {
    let mut sessions = pool();
    sessions.retain(|_, pooled| now.saturating_duration_since(pooled.last_used) < IDLE_CLOSE);
    sessions.is_empty()
}

/// Starts the sweeping task unless one runs (on the runtime of the caller; none outside one).
fn sweep_in_background() {
    if SWEEPING.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        SWEEPING.store(false, Ordering::SeqCst);
        return;
    };
    runtime.spawn(async {
        loop {
            tokio::time::sleep(IDLE_CLOSE / 4).await;
            if !sweep(Instant::now()) {
                continue;
            }
            SWEEPING.store(false, Ordering::SeqCst);
            // A session pooled between the sweep and the store found a sweeper running.
            if pooled_sessions() == 0 || SWEEPING.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    });
}

/// The pooled session for `namesrv` (checked if it was idle), or a new one put in the pool.
async fn session(namesrv: &[String]) -> Result<Arc<Admin>, ActionFailure> {
    let key = namesrv.join(";");
    let now = Instant::now();
    let (reused, idle) = {
        let mut sessions = pool();
        match sessions.get_mut(&key) {
            Some(pooled) if now.duration_since(pooled.last_used) < IDLE_CLOSE => {
                let idle = now.duration_since(pooled.last_used);
                pooled.last_used = now;
                (Some(Arc::clone(&pooled.admin)), idle)
            }
            _ => (None, Duration::ZERO),
        }
    };
    if let Some(admin) = reused {
        if idle < CHECK_AFTER || admin.cluster_info().await.is_ok() {
            return Ok(admin);
        }
        forget(&admin);
    }
    let admin = Arc::new(Admin::connect(namesrv).await?);
    pool().insert(
        key,
        Pooled {
            admin: Arc::clone(&admin),
            last_used: Instant::now(),
        },
    );
    sweep_in_background();
    Ok(admin)
}

/// Takes `admin` out of the pool (if it is still the pooled one): it is closed when the last
/// action using it ends.
fn forget(admin: &Arc<Admin>) {
    let mut sessions = pool();
    if sessions
        .get(&admin.namesrv)
        .is_some_and(|pooled| Arc::ptr_eq(&pooled.admin, admin))
    {
        sessions.remove(&admin.namesrv);
    }
}

/// How many admin sessions the pool holds (each one connected NameServer list).
pub fn pooled_sessions() -> usize {
    pool().len()
}

/// Runs `work` with the shared admin session of `namesrv` (see the module's contract). A
/// retryable failure drops the session from the pool: the next attempt connects afresh.
pub async fn with_admin<T, F, Fut>(namesrv: &[String], work: F) -> Result<T, ActionFailure>
where
    F: FnOnce(Arc<Admin>) -> Fut,
    Fut: Future<Output = Result<T, ActionFailure>>,
{
    let admin = session(namesrv).await?;
    let result = work(Arc::clone(&admin)).await;
    if result.as_ref().is_err_and(|failure| failure.retryable) {
        forget(&admin);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session idle past [`IDLE_CLOSE`] leaves the pool at the next sweep; one in use stays.
    /// (Connecting starts the client; it reaches no NameServer until a request is made. Other
    /// tests of this crate may pool sessions meanwhile: only these two lists are looked at.)
    #[tokio::test]
    async fn idle_sessions_leave_the_pool() {
        let (idle, busy) = ("127.0.0.1:9", "127.0.0.1:10");
        let pooled = |key: &str| pool().contains_key(key);
        let first = session(&[idle.to_owned()]).await.expect("a session");
        session(&[busy.to_owned()]).await.expect("a session");
        assert!(pooled(idle) && pooled(busy));
        let again = session(&[idle.to_owned()])
            .await
            .expect("the pooled session");
        assert!(
            Arc::ptr_eq(&first, &again),
            "a second session for the same list"
        );

        sweep(Instant::now());
        assert!(pooled(idle) && pooled(busy), "a fresh session was swept");
        pool().get_mut(busy).expect("pooled").last_used = Instant::now() + IDLE_CLOSE;
        sweep(Instant::now() + IDLE_CLOSE + Duration::from_secs(1));
        assert!(!pooled(idle), "the idle session stayed in the pool");
        assert!(pooled(busy), "the session in use left the pool");
        sweep(Instant::now() + IDLE_CLOSE * 3);
        assert!(!pooled(busy));
        // The swept session is still whole for the action holding it.
        assert_eq!(first.namesrv, idle);
    }
}
