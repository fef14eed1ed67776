//! The daemon's life cycle: lock the data dir, open the store, recover, serve, drain.
//!
//! Layout of a data dir:
//!
//! ```text
//! <data-dir>/daemon.lock     flock'ed by the running daemon; holds its pid
//! <data-dir>/daemon-id       this daemon's random id (a store's lease and its calls name it)
//! <data-dir>/runbook.sock    the API (mode 0600)
//! <data-dir>/store/          the journal (sled; with `--store postgres`, the journal is in the database)
//! <data-dir>/runs/<id>/      step logs and per-call state
//! <data-dir>/tls/            the TCP listener's self-signed certificate and key, if generated
//! ```
//!
//! The data dir is 0700 and everything in it 0600 / 0700 (the daemon runs with umask 077); the
//! daemon refuses to start on a data dir another user could change (`private_dir`).

use std::future::Future;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::action::Registry;
use crate::catalog::{Catalog, Source};
use crate::clock::SystemClock;
use crate::runtime::{self, Engine};
use crate::store::{SledStore, Writer};

pub struct Config {
    pub data_dir: PathBuf,
    pub runbooks_dir: Option<PathBuf>,
    pub builtin: Vec<Source>,
    pub actions: Registry,
    /// Finished runs older than this are deleted (`None`: keep every run).
    pub retain: Option<std::time::Duration>,
    /// The opt-in TCP listener (TLS, bearer tokens).
    pub listen: Option<Listen>,
    /// The notification sinks file (`notify.rs`).
    pub notify: Option<PathBuf>,
    /// The journal in PostgreSQL instead of the embedded store.
    pub postgres: Option<Postgres>,
}

/// `runbook daemon --store postgres`: the connection string (from a file or the environment,
/// never the command line) and the lease's time to live.
#[derive(Clone)]
pub struct Postgres {
    pub url: String,
    pub lease_ttl: std::time::Duration,
    /// TLS to the database, the server's certificate checked against this CA (PEM).
    pub ca_file: Option<PathBuf>,
}

impl Postgres {
    pub fn target(&self) -> Result<crate::store::postgres::Target, crate::store::Error> {
        match &self.ca_file {
            Some(ca) => crate::store::postgres::Target::with_ca_file(&self.url, ca),
            None => crate::store::postgres::Target::new(&self.url),
        }
    }
}

/// The exit status of a daemon that lost the store's lease to another one.
pub const EXIT_FENCED: i32 = 75;

/// `runbook daemon --listen ADDR [--tls-cert FILE --tls-key FILE] [--metrics-public]`.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: std::net::SocketAddr,
    pub tls: crate::api::tls::TlsSource,
    /// `/metrics` answers on it without a token (for a scraper that has none).
    pub metrics_public: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data dir {dir} is in use by daemon pid {pid}")]
    InUse { dir: String, pid: String },
    #[error("{0}")]
    Io(String),
    /// The data dir, or a directory on the way to it, is open to another user.
    #[error("{0}")]
    Unsafe(String),
    /// A setting of the daemon's environment is wrong.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
}

/// The socket path for a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("runbook.sock")
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let data_dir = config.data_dir.clone();
    crate::failpoint::check_env().map_err(Error::Config)?;
    // Before anything is created: every file of the data dir is the daemon's user's alone.
    let inherited_umask = crate::private_dir::set_private_umask();
    crate::action::set_command_umask(inherited_umask);
    crate::private_dir::check_data_dir(&data_dir).map_err(Error::Unsafe)?;
    let _lock = lock_data_dir(&data_dir)?;

    crate::action::set_daemon_identity(daemon_identity(&data_dir));
    crate::action::keep_spare_supervisor(&data_dir);
    let (writer, lease) = match &config.postgres {
        None => {
            let store_dir = data_dir.join("store");
            let store = SledStore::open(&store_dir)?;
            let reopen: crate::store::Reopen = Arc::new(move || {
                Ok(Arc::new(SledStore::open(&store_dir)?) as Arc<dyn crate::store::Store>)
            });
            (Writer::start(Arc::new(store), Some(reopen)), None)
        }
        Some(postgres) => {
            let (writer, lease) = open_postgres(postgres, &data_dir).await?;
            (writer, Some(lease))
        }
    };
    let catalog = Catalog::new(&config.builtin, config.runbooks_dir.clone(), config.actions);
    let engine = Engine::open(writer, Arc::new(SystemClock), catalog.clone(), &data_dir)?;
    if let Some(path) = &config.notify {
        let sinks = crate::notify::Config::load(path).map_err(Error::Config)?;
        tracing::info!(file = %path.display(), sinks = sinks.sinks.len(), "notification sinks");
        engine.set_notify(sinks);
    }

    let socket = socket_path(&data_dir);
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(Error::Io(format!(
                "cannot remove stale socket {}: {error}",
                socket.display()
            )))
        }
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|error| Error::Io(format!("cannot listen on {}: {error}", socket.display())))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|error| Error::Io(format!("cannot restrict {}: {error}", socket.display())))?;

    let tcp = match &config.listen {
        Some(listen) => {
            let certificate = crate::api::tls::load(&listen.tls, &data_dir, listen.addr)
                .map_err(Error::Config)?;
            let tcp = tokio::net::TcpListener::bind(listen.addr)
                .await
                .map_err(|error| Error::Io(format!("cannot listen on {}: {error}", listen.addr)))?;
            let addr = tcp
                .local_addr()
                .map_err(|error| Error::Io(format!("cannot listen on {}: {error}", listen.addr)))?;
            tracing::info!(
                %addr,
                fingerprint = %certificate.fingerprint,
                certificate = %certificate.cert_path.display(),
                generated = certificate.generated,
                "TCP listener (TLS; clients pin the certificate with RUNBOOK_SERVER_FINGERPRINT)"
            );
            Some((tcp, certificate, addr))
        }
        None => None,
    };

    engine.recover().await;
    engine.spawn_tracked(engine.clone().reload_on_reopen());
    let stop_timers = CancellationToken::new();
    let timers = tokio::spawn(runtime::run_timers(engine.clone(), stop_timers.clone()));
    let collector = tokio::spawn(runtime::run_collector(
        engine.clone(),
        config.retain,
        stop_timers.clone(),
    ));
    let archiver = tokio::spawn(runtime::run_archiver(engine.clone(), stop_timers.clone()));
    let outbox = tokio::spawn(runtime::run_outbox(engine.clone(), stop_timers.clone()));
    tracing::info!(data_dir = %data_dir.display(), socket = %socket.display(), "daemon ready");

    let app = crate::api::router(crate::api::AppState {
        engine: engine.clone(),
        catalog,
        retain: config.retain,
        listener: tcp
            .as_ref()
            .map(|(_, certificate, addr)| crate::api::ListenerInfo {
                addr: *addr,
                fingerprint: certificate.fingerprint.clone(),
            }),
        metrics_public: config.listen.as_ref().is_some_and(|l| l.metrics_public),
        failed_logins: Arc::default(),
        lease: lease.clone(),
    });
    let stopping = CancellationToken::new();
    let drain_engine = engine.clone();
    let stop_serving = stopping.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new work; running steps keep running");
        drain_engine.stop_accepting();
        stop_serving.cancel();
    });
    let remote = match tcp {
        Some((tcp, certificate, _)) => {
            let listener =
                crate::api::tls::TlsListener::start(tcp, certificate.config, stopping.clone())
                    .map_err(|error| Error::Io(format!("TCP listener: {error}")))?;
            let service = app
                .clone()
                .into_make_service_with_connect_info::<crate::api::Caller>();
            let stop = stopping.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, service)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }))
        }
        None => None,
    };
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<crate::api::Caller>(),
    )
    .with_graceful_shutdown(stopping.clone().cancelled_owned())
    .await;
    if let Some(remote) = remote {
        match remote.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "serving the TCP listener"),
            Err(error) => tracing::error!(%error, "the TCP listener's task"),
        }
    }
    stop_timers.cancel();
    let _ = timers.await;
    let _ = collector.await;
    let _ = archiver.await;
    let _ = outbox.await;
    let _ = std::fs::remove_file(&socket);
    // Nothing commits during the final checkpoint: the tracked tasks have ended, and the
    // writer takes no more commits (a call that ends now is re-attached after the restart).
    engine.settle().await;
    engine.writer().close().await;
    served.map_err(|error| Error::Io(format!("serving the API: {error}")))?;
    engine.writer().store().checkpoint()?;
    if let Some(lease) = lease {
        // A standby takes the store over at once, not when the lease would have expired.
        let released = tokio::task::spawn_blocking(move || lease.release()).await;
        match released {
            Ok(Ok(())) => tracing::info!("released the store's lease"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not release the store's lease; it expires by itself")
            }
            Err(error) => {
                tracing::warn!(%error, "could not release the store's lease; it expires by itself")
            }
        }
    }
    tracing::info!("daemon stopped");
    Ok(())
}

/// `<host name>:<data dir>`: which daemon this is, for the store's lease and the calls it starts.
/// The id is random, made once per data dir (`<data-dir>/daemon-id`): two hosts that share a
/// host name and a data dir path (containers) are still two daemons, and a restart on the same
/// data dir (whose lock proves the earlier process gone) is the same one.
fn daemon_identity(data_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let id_file = data_dir.join("daemon-id");
    let valid = |id: &str| id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit());
    let id = match std::fs::read_to_string(&id_file) {
        Ok(id) if valid(id.trim()) => id.trim().to_owned(),
        _ => {
            let mut bytes = [0u8; 4];
            if let Err(error) = getrandom::getrandom(&mut bytes) {
                tracing::warn!(%error, "no random daemon id; using the pid");
                bytes = std::process::id().to_be_bytes();
            }
            let id = hex::encode(bytes);
            if let Err(error) = std::fs::write(&id_file, &id) {
                tracing::warn!(%error, file = %id_file.display(), "cannot keep the daemon id: a restart will wait out its own lease");
            }
            id
        }
    };
    format!("{host}#{id}:{}", data_dir.display())
}

/// Waits for the PostgreSQL store's lease (a standby waits here), then opens the journal in it.
/// A daemon that loses the lease later exits at once with [`EXIT_FENCED`]: its commits are
/// refused by the database from then on, and a fresh start waits as a standby.
async fn open_postgres(
    postgres: &Postgres,
    data_dir: &Path,
) -> Result<(Writer, Arc<crate::store::postgres::Lease>), Error> {
    use crate::store::postgres::{take_lease, PgStore, PgTables};
    let holder = daemon_identity(data_dir);
    tracing::info!(%holder, lease_ttl = ?postgres.lease_ttl, "PostgreSQL store: taking the lease (a standby waits here)");
    let target = postgres.target()?;
    let (ttl, me) = (postgres.lease_ttl, holder.clone());
    let lease = tokio::task::spawn_blocking(move || {
        let last = std::sync::Mutex::new(String::new());
        take_lease(
            &target,
            &me,
            ttl,
            move |seen| {
                let line = match seen {
                    Ok(view) => format!("held by {} (epoch {})", view.holder, view.epoch),
                    Err(error) => error.to_string(),
                };
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                if *last != line {
                    tracing::info!(lease = %line, "standby: waiting for the store's lease");
                    *last = line;
                }
            },
            || {
                tracing::error!("another daemon holds the store's lease now: this one commits nothing more and steps down");
                std::process::exit(EXIT_FENCED);
            },
        )
    })
    .await
    .map_err(|error| Error::Io(format!("taking the store's lease: {error}")))??;
    tracing::info!(%holder, epoch = lease.epoch(), "PostgreSQL store: this daemon is active");
    let opening = lease.clone();
    let store = tokio::task::spawn_blocking(move || PgStore::open_leased(PgTables::open(opening)?))
        .await
        .map_err(|error| Error::Io(format!("opening the store: {error}")))??;
    let held = lease.clone();
    let reopen: crate::store::Reopen = Arc::new(move || {
        Ok(
            Arc::new(PgStore::open_leased(PgTables::open(held.clone())?)?)
                as Arc<dyn crate::store::Store>,
        )
    });
    Ok((Writer::start(Arc::new(store), Some(reopen)), lease))
}

/// Copies the embedded store of `data_dir` (no daemon may run on it) into an empty PostgreSQL
/// store (no daemon may hold it): every record, archived runs taken back out of the archive,
/// each read back; then the copy's every record is checked like `store verify`. The data dir is
/// left as it was.
pub fn copy_to_postgres(
    data_dir: &Path,
    postgres: &Postgres,
) -> Result<(crate::store::CopyReport, Vec<String>), Error> {
    use crate::store::postgres::{try_take_lease, PgStore, PgTables};
    if !data_dir.join("store").exists() {
        return Err(Error::Io(format!("no store in {}", data_dir.display())));
    }
    crate::private_dir::set_private_umask();
    crate::private_dir::check_data_dir(data_dir).map_err(Error::Unsafe)?;
    let _lock = lock_data_dir(data_dir)?;
    let source = SledStore::open(&data_dir.join("store"))?;
    let holder = format!("store copy from {}", daemon_identity(data_dir));
    let lease = try_take_lease(
        &postgres.target()?,
        &holder,
        std::time::Duration::from_secs(60),
    )?;
    let copied = (|| {
        let report = source.copy_into(
            &PgTables::open(lease.clone())?,
            &PgTables::open(lease.clone())?,
        )?;
        let copy = PgStore::open_leased(PgTables::open(lease.clone())?)?;
        let problems = crate::store::Store::verify(&copy)?;
        Ok::<_, crate::store::Error>((report, problems))
    })();
    let released = lease.release();
    let copied = copied?;
    released?;
    Ok(copied)
}

/// Checks every record of the store in `data_dir` while no daemon runs on it; returns the
/// problems found (empty: all good).
pub fn verify_offline(data_dir: &Path) -> Result<Vec<String>, Error> {
    if !data_dir.join("store").exists() {
        return Err(Error::Io(format!("no store in {}", data_dir.display())));
    }
    crate::private_dir::set_private_umask();
    crate::private_dir::check_data_dir(data_dir).map_err(Error::Unsafe)?;
    let _lock = lock_data_dir(data_dir)?;
    // Opened without the repair of derived indexes that a daemon's start makes, so that
    // verify reports what is wrong.
    let store = SledStore::open_unrepaired(&data_dir.join("store"))?;
    Ok(crate::store::Store::verify(&store)?)
}

/// How long to wait for the lock when the daemon that held it is gone.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes the data dir's exclusive lock, or names the pid that holds it.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, Error> {
    let path = data_dir.join("daemon.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|error| Error::Io(format!("cannot open {}: {error}", path.display())))?;
    // A daemon killed while it started a command leaves a child that shares this open file, and
    // so the lock, between its fork and its exec. When the pid in the file is gone, wait a moment
    // for that child to let go rather than refuse to start.
    let patience = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let mut pid = String::new();
        let _ = file.rewind().and_then(|()| file.read_to_string(&mut pid));
        let pid = pid.trim().to_owned();
        let holder_runs = pid.parse::<i32>().is_ok_and(|pid| {
            // SAFETY: signal 0 only checks that the process exists.
            let found = unsafe { libc::kill(pid, 0) } == 0;
            found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        });
        if holder_runs || std::time::Instant::now() >= patience {
            return Err(Error::InUse {
                dir: data_dir.display().to_string(),
                pid: if pid.is_empty() {
                    "unknown".to_owned()
                } else {
                    pid
                },
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let write = (|| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.sync_all()
    })();
    write.map_err(|error| Error::Io(format!("cannot write {}: {error}", path.display())))?;
    Ok(file)
}
