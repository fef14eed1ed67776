//! The lease of the PostgreSQL store: one row (`holder`, `epoch`, `expires_at`, `last_lsn`) that
//! names the one daemon whose commits the database takes (see the contract in `postgres.rs`).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;

use super::{connect, pg_error, Target, SCHEMA, SCHEMA_VERSION};
use crate::store::Error;

/// Who holds the lease, as the database says.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseView {
    pub holder: String,
    pub epoch: i64,
    /// Seconds until it expires (negative: expired).
    pub expires_in_secs: f64,
}

/// This daemon's hold on the store.
pub struct Lease {
    pub(super) target: Target,
    pub holder: String,
    pub ttl: Duration,
    epoch: AtomicI64,
    pub(super) fenced: AtomicBool,
    /// Released: no more renewals.
    released: AtomicBool,
}

impl Lease {
    /// Gives the lease up at once (a standby may take it without waiting for it to expire);
    /// nothing is committed through it afterwards.
    pub fn release(&self) -> Result<(), Error> {
        self.released.store(true, Ordering::SeqCst);
        self.fenced.store(true, Ordering::SeqCst);
        let mut client = connect(&self.target)?;
        client
            .execute(
                "UPDATE runbook_lease SET expires_at = '-infinity' WHERE id = 1 AND holder = $1 AND epoch = $2",
                &[&self.holder, &self.epoch()],
            )
            .map_err(pg_error)?;
        Ok(())
    }

    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Another daemon took the store over: nothing more is committed.
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }
}

/// Creates or checks the schema, then takes the lease (blocking: it waits while another daemon
/// holds it, calling `waiting` with who that is now and then), then renews it on a thread of its
/// own every quarter of `ttl` until another daemon holds it, when the store is fenced and
/// `on_fenced` is called. A renewal that cannot reach the database is retried; the lease may
/// then expire and be taken by another daemon, which the next renewal finds.
pub fn take_lease(
    target: &Target,
    holder: &str,
    ttl: Duration,
    waiting: impl Fn(&Result<LeaseView, Error>) + Send + 'static,
    on_fenced: impl FnOnce() + Send + 'static,
) -> Result<Arc<Lease>, Error> {
    hold_lease(target, holder, ttl, Some(Box::new(waiting)), on_fenced)
}

/// [`take_lease`] without waiting: refused, naming the holder, while another daemon holds it.
pub fn try_take_lease(target: &Target, holder: &str, ttl: Duration) -> Result<Arc<Lease>, Error> {
    hold_lease(target, holder, ttl, None, || {})
}

type Waiting = Box<dyn Fn(&Result<LeaseView, Error>) + Send>;

fn hold_lease(
    target: &Target,
    holder: &str,
    ttl: Duration,
    waiting: Option<Waiting>,
    on_fenced: impl FnOnce() + Send + 'static,
) -> Result<Arc<Lease>, Error> {
    let lease = Arc::new(Lease {
        target: target.clone(),
        holder: holder.to_owned(),
        ttl,
        epoch: AtomicI64::new(0),
        fenced: AtomicBool::new(false),
        released: AtomicBool::new(false),
    });
    let (taken, answer) = sync_channel(1);
    let held = lease.clone();
    std::thread::Builder::new()
        .name("store-pg-lease".to_owned())
        .spawn(move || {
            let mut client: Option<Client> = None;
            let mut schema_checked = false;
            loop {
                let attempt = (|| -> Result<Option<i64>, Error> {
                    let connected = match client.take() {
                        Some(open) if !open.is_closed() => open,
                        _ => connect(&held.target)?,
                    };
                    let client = client.insert(connected);
                    if !schema_checked {
                        create_schema(client)?;
                        schema_checked = true;
                    }
                    let row = client
                        .query_opt(
                            "UPDATE runbook_lease SET holder = $1, epoch = epoch + 1, \
                             expires_at = now() + make_interval(secs => $2) \
                             WHERE id = 1 AND (expires_at < now() OR holder = $1) \
                             RETURNING epoch",
                            &[&held.holder, &held.ttl.as_secs_f64()],
                        )
                        .map_err(pg_error)?;
                    Ok(row.map(|row| row.get::<_, i64>(0)))
                })();
                match attempt {
                    Ok(Some(epoch)) => {
                        held.epoch.store(epoch, Ordering::SeqCst);
                        let _ = taken.send(Ok(()));
                        break;
                    }
                    Ok(None) => {
                        let view = client
                            .as_mut()
                            .map_or_else(|| Err(Error::Closed), lease_view);
                        match &waiting {
                            Some(waiting) => waiting(&view),
                            None => {
                                let _ = taken.send(Err(held_by(view)));
                                return;
                            }
                        }
                    }
                    Err(error @ Error::FormatTooNew { .. }) => {
                        let _ = taken.send(Err(error));
                        return;
                    }
                    Err(error) => match &waiting {
                        Some(waiting) => waiting(&Err(error)),
                        None => {
                            let _ = taken.send(Err(error));
                            return;
                        }
                    },
                }
                std::thread::sleep(Duration::from_secs(1).min(held.ttl / 4));
            }
            loop {
                std::thread::sleep(held.ttl / 4);
                if held.released.load(Ordering::SeqCst) {
                    return;
                }
                let renewed = (|| -> Result<u64, Error> {
                    let connected = match client.take() {
                        Some(open) if !open.is_closed() => open,
                        _ => connect(&held.target)?,
                    };
                    client
                        .insert(connected)
                        .execute(
                            "UPDATE runbook_lease SET expires_at = now() + make_interval(secs => $3) \
                             WHERE id = 1 AND holder = $1 AND epoch = $2",
                            &[&held.holder, &held.epoch(), &held.ttl.as_secs_f64()],
                        )
                        .map_err(pg_error)
                })();
                match renewed {
                    Ok(1) => {}
                    Ok(_) => {
                        held.fenced.store(true, Ordering::SeqCst);
                        on_fenced();
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "cannot renew the store's lease; retrying"),
                }
            }
        })
        .map_err(|error| Error::io("cannot start the lease thread", &error))?;
    answer.recv().map_err(|_| Error::Closed)??;
    Ok(lease)
}

fn held_by(view: Result<LeaseView, Error>) -> Error {
    Error::Io {
        kind: std::io::ErrorKind::AlreadyExists,
        message: match view {
            Ok(view) => format!(
                "PostgreSQL store: the daemon at {} holds the store (epoch {}, for {:.0} s more)",
                view.holder, view.epoch, view.expires_in_secs
            ),
            Err(error) => format!("PostgreSQL store: another daemon holds the store ({error})"),
        },
    }
}

fn create_schema(client: &mut Client) -> Result<(), Error> {
    let mut tx = client.transaction().map_err(pg_error)?;
    // One daemon at a time creates the schema.
    tx.execute("SELECT pg_advisory_xact_lock(7283910)", &[])
        .map_err(pg_error)?;
    tx.batch_execute(SCHEMA).map_err(pg_error)?;
    let found: Option<i32> = tx
        .query_one("SELECT max(version) FROM runbook_schema", &[])
        .map_err(pg_error)?
        .get(0);
    match found {
        Some(found) if found > SCHEMA_VERSION => {
            return Err(Error::FormatTooNew {
                found: found as u32,
                supported: SCHEMA_VERSION as u32,
            })
        }
        Some(_) => {}
        None => {
            tx.execute(
                "INSERT INTO runbook_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .map_err(pg_error)?;
        }
    }
    tx.commit().map_err(pg_error)
}

pub(super) fn lease_view(client: &mut Client) -> Result<LeaseView, Error> {
    let row = client
        .query_one(
            "SELECT holder, epoch, EXTRACT(EPOCH FROM (expires_at - now()))::float8 \
             FROM runbook_lease WHERE id = 1",
            &[],
        )
        .map_err(pg_error)?;
    Ok(LeaseView {
        holder: row.get(0),
        epoch: row.get(1),
        expires_in_secs: row.get::<_, Option<f64>>(2).unwrap_or(f64::NEG_INFINITY),
    })
}
