//! [`Tables`] on PostgreSQL, for a daemon that another host can take over: the same commit
//! rules (`journal.rs`) and record format as the embedded store, in one table of byte keys and
//! values, with a lease that lets one daemon at a time commit.
//!
//! # Contract
//!
//! - Every [`Tables::write`] is one transaction (`synchronous_commit` on): it first moves the
//!   lease row's `last_lsn` forward *where the row still names this daemon and its epoch and the
//!   lease has not expired by the database's clock*; if that touches no row, the transaction is
//!   rolled back and the store is *fenced*: this daemon lost the lease and never commits again.
//!   So a daemon that was paused, partitioned or slow past its lease cannot write after another
//!   took over, whatever its own clock says.
//! - A transaction whose COMMIT got no answer (the connection broke) is settled by reading the
//!   lease row again on a new connection: the batch was applied if and only if `last_lsn` is its
//!   number. So `write` keeps the tables' rule: `Ok` means all of it, an error none of it.
//! - The lease ([`Lease`]) is taken when it has expired or when its holder is this daemon itself
//!   (same host and data dir: the data dir's lock proves the earlier process is gone), which
//!   raises the epoch; it is renewed every quarter of its time to live. A renewal that finds
//!   another epoch fences the store.
//! - Schema versions: `runbook_schema` holds the version this build wrote; a newer one is refused
//!   like a newer store format.
//!
//! TLS: with a CA file ([`Target::with_ca_file`]) every connection is TLS (rustls, the server's
//! certificate checked against that CA and the host name of the connection string); without
//! one, a connection string that asks for TLS (`sslmode=require`) is refused.
//!
//! The `postgres` client blocks on a runtime of its own, so every connection lives on a thread
//! of this module and callers (threads of the daemon's runtime among them) hand it their work.

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::config::SslMode;
use postgres::{Client, NoTls};

mod lease;

use self::lease::lease_view;
pub use self::lease::{take_lease, try_take_lease, Lease, LeaseView};
use super::journal::Journal;
use super::tables::{Op, Scan, Tables, Tree};
use super::Error;

/// The embedded store's rules over PostgreSQL.
pub type PgStore = Journal<PgTables>;

/// The schema this build writes (and the newest it reads).
pub const SCHEMA_VERSION: i32 = 1;
/// Connections: one writes (the writer commits one batch at a time), the others read; the lease
/// has one more of its own.
const CONNECTIONS: usize = 4;

const SCHEMA: &str = "
SET LOCAL client_min_messages = warning;
CREATE TABLE IF NOT EXISTS runbook_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS runbook_kv (
    tree smallint NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tree, key)
);
CREATE TABLE IF NOT EXISTS runbook_lease (
    id integer PRIMARY KEY CHECK (id = 1),
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    last_lsn bigint NOT NULL
);
INSERT INTO runbook_lease VALUES (1, '', 0, '-infinity', 0) ON CONFLICT DO NOTHING;
";

type Job = Box<dyn FnOnce(&mut Option<Conn>) + Send>;

/// A connection and the statements prepared on it (each is parsed once per connection, not at
/// every call: half the round trips of a commit).
struct Conn {
    client: Client,
    statements: std::collections::HashMap<String, postgres::Statement>,
}

impl Conn {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(pg_error)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// Where the database is: the connection string, and TLS if a CA is given.
#[derive(Clone)]
pub struct Target {
    url: Arc<str>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// A connection string (`postgres://...` or `host=... user=...`), checked now.
    pub fn new(url: &str) -> Result<Target, Error> {
        let config: postgres::Config = url
            .parse()
            .map_err(|_| unavailable("the connection string does not parse".to_owned()))?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(unavailable(
                "the connection string asks for TLS (sslmode=require): give the CA that signed the server's certificate (--postgres-ca-file)".to_owned(),
            ));
        }
        Ok(Target {
            url: Arc::from(url),
            tls: None,
        })
    }

    /// Every connection over TLS, the server's certificate checked against the CA certificates
    /// of the PEM file `ca_file` and the host name of the connection string.
    pub fn with_ca_file(url: &str, ca_file: &std::path::Path) -> Result<Target, Error> {
        use rustls::pki_types::pem::PemObject;
        let _: postgres::Config = url
            .parse()
            .map_err(|_| unavailable("the connection string does not parse".to_owned()))?;
        let bad = |why: String| unavailable(format!("CA file {}: {why}", ca_file.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file)
            .map_err(|error| bad(error.to_string()))?
        {
            roots
                .add(cert.map_err(|error| bad(error.to_string()))?)
                .map_err(|error| bad(error.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("holds no certificate".to_owned()));
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::api::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| bad(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Target {
            url: Arc::from(url),
            tls: Some(Arc::new(config)),
        })
    }
}

/// Connections on threads of their own.
struct Pool {
    target: Target,
    writer: SyncSender<Job>,
    readers: SyncSender<Job>,
}

impl Pool {
    fn start(target: &Target) -> Result<Pool, Error> {
        let spawn = |name: &str, jobs: Arc<Mutex<Receiver<Job>>>| -> Result<(), Error> {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    let mut conn = None;
                    loop {
                        let job = match jobs.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        let Ok(job) = job else { return };
                        job(&mut conn);
                    }
                })
                .map(drop)
                .map_err(|error| Error::io("cannot start a store thread", &error))
        };
        let (writer, writer_jobs) = sync_channel::<Job>(0);
        spawn("store-pg-write", Arc::new(Mutex::new(writer_jobs)))?;
        let (readers, reader_jobs) = sync_channel::<Job>(0);
        let reader_jobs = Arc::new(Mutex::new(reader_jobs));
        for index in 1..CONNECTIONS {
            spawn(&format!("store-pg-read-{index}"), reader_jobs.clone())?;
        }
        Ok(Pool {
            target: target.clone(),
            writer,
            readers,
        })
    }

    /// Runs `work` on a connection (opened, or opened again after it broke). A connection that
    /// failed is dropped (the next job opens a new one); a read that failed is tried once more
    /// on a new connection (a server restart breaks every open one).
    fn with<R: Send + 'static>(
        &self,
        write: bool,
        work: impl Fn(&mut Conn) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let (reply, answer) = sync_channel(1);
        let target = self.target.clone();
        let job: Job = Box::new(move |slot: &mut Option<Conn>| {
            let attempts = if write { 1 } else { 2 };
            let mut result = Err(Error::Closed);
            for _ in 0..attempts {
                if slot.as_ref().is_none_or(|conn| conn.client.is_closed()) {
                    *slot = None;
                    match connect(&target) {
                        Ok(client) => {
                            *slot = Some(Conn {
                                client,
                                statements: Default::default(),
                            })
                        }
                        Err(error) => {
                            result = Err(error);
                            break;
                        }
                    }
                }
                let conn = slot.as_mut().expect("connected above");
                result = work(conn);
                if result.is_ok() {
                    break;
                }
                *slot = None;
            }
            let _ = reply.send(result);
        });
        let sender = if write { &self.writer } else { &self.readers };
        sender.send(job).map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)?
    }
}

fn connect(target: &Target) -> Result<Client, Error> {
    let mut config: postgres::Config = target
        .url
        .parse()
        .map_err(|_| unavailable("the connection string does not parse".to_owned()))?;
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("runbook");
    let connected = match &target.tls {
        Some(tls) => {
            config.ssl_mode(SslMode::Require);
            config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                (**tls).clone(),
            ))
        }
        None => config.connect(NoTls),
    };
    let mut client =
        connected.map_err(|error| unavailable(format!("cannot connect: {}", describe(&error))))?;
    client
        .batch_execute("SET synchronous_commit = on")
        .map_err(pg_error)?;
    Ok(client)
}

/// The database is away (or refused us): a retryable I/O error of the store.
fn unavailable(message: String) -> Error {
    Error::Io {
        kind: std::io::ErrorKind::NotConnected,
        message: format!("PostgreSQL store: {message}"),
    }
}

fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The cause (a refused certificate, a refused connection) is in the source chain.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

fn pg_error(error: postgres::Error) -> Error {
    unavailable(describe(&error))
}

pub struct PgTables {
    pool: Pool,
    lease: Arc<Lease>,
    next_lsn: Mutex<i64>,
    cache: Mutex<Cache>,
}

/// Keys read or written lately, and their values (`None`: absent). Only the daemon holding the
/// lease writes, so what it wrote last is what the database holds: a key's value is kept from
/// the commit that wrote it (or the read that found it) on, and a read of it costs no round trip
/// (a commit reads a few keys of its run before it writes). A read that raced a commit is not
/// kept (`generation`). Emptied when it passes [`CACHE_BYTES`].
#[derive(Default)]
struct Cache {
    entries: std::collections::HashMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    bytes: usize,
    generation: u64,
}

const CACHE_BYTES: usize = 64 << 20;

impl Cache {
    fn put(&mut self, tree: Tree, key: Vec<u8>, value: Option<Vec<u8>>) {
        let size = key.len() + value.as_ref().map_or(0, Vec::len) + 64;
        if self.bytes + size > CACHE_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.insert((tree.code(), key), value);
    }
}

impl PgTables {
    /// The tables of a daemon that holds `lease`: refused (fenced) if the database says another
    /// daemon holds it now.
    pub fn open(lease: Arc<Lease>) -> Result<PgTables, Error> {
        let pool = Pool::start(&lease.target)?;
        let (holder, epoch) = (lease.holder.clone(), lease.epoch());
        let last_lsn = pool.with(true, move |conn| {
            let row = conn
                .client
                .query_one(
                    "SELECT last_lsn, holder, epoch FROM runbook_lease WHERE id = 1",
                    &[],
                )
                .map_err(pg_error)?;
            let held = row.get::<_, String>(1) == holder && row.get::<_, i64>(2) == epoch;
            Ok(held.then(|| row.get::<_, i64>(0)))
        })?;
        let Some(last_lsn) = last_lsn else {
            lease.fenced.store(true, Ordering::SeqCst);
            return Err(fenced_error(&lease.holder));
        };
        Ok(PgTables {
            pool,
            lease,
            next_lsn: Mutex::new(last_lsn + 1),
            cache: Mutex::default(),
        })
    }

    /// The lease as the database has it now.
    pub fn holder(&self) -> Result<LeaseView, Error> {
        self.pool.with(false, |conn| lease_view(&mut conn.client))
    }

    /// Whether the transaction numbered `lsn` was committed (after its COMMIT got no answer).
    fn settled(&self, lsn: i64) -> Result<bool, Error> {
        let epoch = self.lease.epoch();
        self.pool.with(true, move |conn| {
            let row = conn
                .client
                .query_one(
                    "SELECT last_lsn, epoch FROM runbook_lease WHERE id = 1",
                    &[],
                )
                .map_err(pg_error)?;
            Ok(row.get::<_, i64>(0) == lsn && row.get::<_, i64>(1) == epoch)
        })
    }
}

fn fenced_error(holder: &str) -> Error {
    Error::Io {
        kind: std::io::ErrorKind::PermissionDenied,
        message: format!(
            "PostgreSQL store: this daemon ({holder}) no longer holds the lease; another daemon took the store over"
        ),
    }
}

impl Tables for PgTables {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let generation = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(value) = cache.entries.get(&(tree.code(), key.to_vec())) {
                return Ok(value.clone());
            }
            cache.generation
        };
        let read = key.to_vec();
        let value = self.pool.with(false, move |conn| {
            let statement =
                conn.statement("SELECT value FROM runbook_kv WHERE tree = $1 AND key = $2")?;
            Ok(conn
                .client
                .query_opt(&statement, &[&i16::from(tree.code()), &read])
                .map_err(pg_error)?
                .map(|row| row.get(0)))
        })?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation == generation {
            cache.put(tree, key.to_vec(), value.clone());
        }
        Ok(value)
    }

    fn scan(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        let mut sql = "SELECT key, value FROM runbook_kv WHERE tree = $1".to_owned();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for (bound, inclusive, exclusive) in [(from, ">=", ">"), (to, "<=", "<")] {
            let (op, key) = match bound {
                Bound::Included(key) => (inclusive, key),
                Bound::Excluded(key) => (exclusive, key),
                Bound::Unbounded => continue,
            };
            keys.push(key.to_vec());
            sql.push_str(&format!(" AND key {op} ${}", keys.len() + 1));
        }
        sql.push_str(if reverse {
            " ORDER BY key DESC"
        } else {
            " ORDER BY key ASC"
        });
        let code = i16::from(tree.code());
        let rows = self.pool.with(false, move |conn| {
            let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&code];
            for key in &keys {
                params.push(key);
            }
            let statement = conn.statement(&sql)?;
            let rows = conn.client.query(&statement, &params).map_err(pg_error)?;
            Ok(rows
                .into_iter()
                .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>())
        });
        match rows {
            Ok(rows) => Box::new(rows.into_iter().map(Ok)),
            Err(error) => Box::new(std::iter::once(Err(error))),
        }
    }

    fn write(&self, ops: &[Op]) -> Result<(), Error> {
        if self.lease.fenced() {
            return Err(fenced_error(&self.lease.holder));
        }
        // The operations are absolute: the last one of each key is the batch's effect.
        let mut last: std::collections::BTreeMap<(i16, Vec<u8>), Option<Vec<u8>>> =
            std::collections::BTreeMap::new();
        for op in ops {
            last.insert(
                (i16::from(op.tree.code()), op.key.clone()),
                op.value.clone(),
            );
        }
        let (mut set_trees, mut set_keys, mut set_values) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del_trees, mut del_keys) = (Vec::new(), Vec::new());
        for ((tree, key), value) in last {
            match value {
                Some(value) => {
                    set_trees.push(tree);
                    set_keys.push(key);
                    set_values.push(value);
                }
                None => {
                    del_trees.push(tree);
                    del_keys.push(key);
                }
            }
        }
        let mut next = self.next_lsn.lock().unwrap_or_else(|p| p.into_inner());
        let lsn = *next;
        let holder = self.lease.holder.clone();
        let epoch = self.lease.epoch();
        let outcome = self.pool.with(true, move |conn| {
            let fence = conn.statement(
                "UPDATE runbook_lease SET last_lsn = $1 \
                 WHERE id = 1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
            )?;
            let delete = conn.statement(
                "DELETE FROM runbook_kv WHERE (tree, key) IN \
                 (SELECT * FROM unnest($1::smallint[], $2::bytea[]))",
            )?;
            let insert = conn.statement(
                "INSERT INTO runbook_kv (tree, key, value) \
                 SELECT * FROM unnest($1::smallint[], $2::bytea[], $3::bytea[]) \
                 ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value",
            )?;
            let mut tx = conn.client.transaction().map_err(pg_error)?;
            let held = tx
                .execute(&fence, &[&lsn, &holder, &epoch])
                .map_err(pg_error)?;
            if held == 0 {
                let _ = tx.rollback();
                return Ok(Some(false));
            }
            if !del_keys.is_empty() {
                tx.execute(&delete, &[&del_trees, &del_keys])
                    .map_err(pg_error)?;
            }
            if !set_keys.is_empty() {
                tx.execute(&insert, &[&set_trees, &set_keys, &set_values])
                    .map_err(pg_error)?;
            }
            match tx.commit() {
                Ok(()) => Ok(Some(true)),
                // No answer to COMMIT: settled below, on a new connection.
                Err(_) => Ok(None),
            }
        })?;
        match outcome {
            Some(true) => {}
            Some(false) => {
                // The lease is another daemon's, or expired: renew decides which; until then
                // nothing is written.
                match self.holder() {
                    Ok(view) if view.holder == self.lease.holder && view.epoch == epoch => {
                        return Err(unavailable(
                            "the lease expired before this commit (the database was away?); it is renewed before the next".to_owned(),
                        ))
                    }
                    _ => {
                        self.lease.fenced.store(true, Ordering::SeqCst);
                        return Err(fenced_error(&self.lease.holder));
                    }
                }
            }
            None => {
                if !self.settled(lsn)? {
                    return Err(unavailable(
                        "the connection broke before COMMIT was answered; the commit was not applied".to_owned(),
                    ));
                }
            }
        }
        *next = lsn + 1;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.generation += 1;
        for op in ops {
            cache.put(op.tree, op.key.clone(), op.value.clone());
        }
        Ok(())
    }
}

impl PgStore {
    /// Opens the journal over the tables once this daemon holds the lease: refuses a newer
    /// format, upgrades an older one, repairs derived indexes. No archive: finished runs stay
    /// in the database, which another host can read.
    pub fn open_leased(tables: PgTables) -> Result<PgStore, Error> {
        Journal::open_over(tables, None, true)
    }
}
