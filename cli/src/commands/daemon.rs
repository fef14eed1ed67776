//! `runbook daemon [--runbooks-dir DIR] [--log-format text|json]`: host the engine. Sets up
//! logging (`RUNBOOK_LOG`, default `info`, to stderr), hands the engine its config (the built-in
//! catalogue and the domain actions of `runbook_runbooks`) and a shutdown future that resolves
//! on SIGTERM or SIGINT, and runs until the engine has drained.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A directory of user runbook files (`*.toml`), in addition to the built-in ones
    #[arg(long, value_name = "DIR")]
    pub runbooks_dir: Option<PathBuf>,
    /// The format of the daemon's log on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Delete finished runs (with their events, logs and call dirs) this long after they
    /// finished, e.g. `90d`, `12h`; `0` keeps every run
    #[arg(long, default_value = "90d", value_parser = parse_retain)]
    pub retain: Retain,
    /// Also serve the API over TCP with TLS on this address (e.g. `0.0.0.0:8443`), for users
    /// with tokens (`runbook user add`, `runbook token create`)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// The listener's certificate chain (PEM) [default: a self-signed one, generated into
    /// <data-dir>/tls on the first start]
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "listen")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve /metrics on the listener without a token (for a scraper that has none)
    #[arg(long, requires = "listen")]
    pub metrics_public: bool,
    /// Notification sinks (TOML: webhook, slack, dingtalk, feishu, wecom, email), see README
    #[arg(long, value_name = "FILE")]
    pub notify: Option<PathBuf>,
    /// Where the journal is: `embedded` (sled in <data-dir>/store) or `postgres` (the
    /// connection string from --postgres-url-file or RUNBOOK_POSTGRES_URL; daemons on several
    /// hosts may share one database: one is active, the others wait as standbys)
    #[arg(long, default_value = "embedded", value_name = "KIND")]
    pub store: String,
    /// A file holding the PostgreSQL connection string (`postgres://user:pass@host/db` or
    /// `host=... user=...`); kept out of the process list
    #[arg(long, value_name = "FILE")]
    pub postgres_url_file: Option<PathBuf>,
    /// TLS to PostgreSQL: the CA certificate(s) (PEM) that signed the server's certificate; the
    /// server's name is the connection string's host
    #[arg(long, value_name = "FILE")]
    pub postgres_ca_file: Option<PathBuf>,
    /// How long the store's lease lasts without renewal: a standby takes over that long after
    /// the active daemon stopped renewing it
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub lease_ttl: String,
}

/// `--retain`: a duration, or `0` for "keep all".
#[derive(Debug, Clone, Copy)]
pub struct Retain(pub Option<std::time::Duration>);

fn parse_retain(text: &str) -> Result<Retain, String> {
    if text.trim() == "0" {
        return Ok(Retain(None));
    }
    let retain = humantime::parse_duration(text.trim()).map_err(|error| {
        format!("{text:?} is not a duration like 90d, 36h or 30m ({error}); 0 keeps every run")
    })?;
    if retain < std::time::Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is shorter than a second; 0 keeps every run"
        ));
    }
    if retain > std::time::Duration::from_secs(100 * 366 * 24 * 3600) {
        return Err(format!(
            "{text:?} is longer than 100 years; 0 keeps every run"
        ));
    }
    Ok(Retain(Some(retain)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    limit_malloc_arenas();
    init_logging(args.log_format)?;

    // Register the handlers before the engine starts, so a signal sent while it recovers is
    // not lost (and does not kill the process with the default action).
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    };

    let postgres = postgres(&args)?;
    let config = runbook_engine::daemon::Config {
        data_dir: ctx.data_dir.clone(),
        runbooks_dir: args.runbooks_dir,
        builtin: runbook_runbooks::builtin(),
        actions: runbook_runbooks::actions(),
        retain: args.retain.0,
        listen: args.listen.map(|addr| runbook_engine::daemon::Listen {
            addr,
            tls: runbook_engine::api::tls::TlsSource {
                cert_and_key: args.tls_cert.zip(args.tls_key),
            },
            metrics_public: args.metrics_public,
        }),
        notify: args.notify,
        postgres,
    };
    runbook_engine::daemon::run(config, shutdown)
        .await
        .map_err(|err| anyhow!("{err}"))
}

/// The PostgreSQL connection string: from `file`, else RUNBOOK_POSTGRES_URL; one line.
pub fn postgres_url(file: Option<&std::path::Path>) -> Result<String> {
    let url = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--postgres-url-file {}", path.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("RUNBOOK_POSTGRES_URL").map_err(|_| {
            anyhow!("put the PostgreSQL connection string in RUNBOOK_POSTGRES_URL or in a file named by --postgres-url-file")
        })?,
    };
    if url.is_empty() || url.len() > 4096 || url.contains('\n') {
        bail!("the PostgreSQL connection string must be one line of at most 4096 bytes");
    }
    Ok(url)
}

/// The PostgreSQL store's settings, checked: the connection string never comes from the
/// command line (every local user can read the process list).
fn postgres(args: &Args) -> Result<Option<runbook_engine::daemon::Postgres>> {
    let url = match args.store.as_str() {
        "embedded" => {
            if args.postgres_url_file.is_some() || args.postgres_ca_file.is_some() {
                bail!("--postgres-url-file and --postgres-ca-file need --store postgres");
            }
            return Ok(None);
        }
        "postgres" => postgres_url(args.postgres_url_file.as_deref())?,
        other if other.starts_with("postgres://") || other.starts_with("postgresql://") => bail!(
            "--store: give `postgres` and the connection string in RUNBOOK_POSTGRES_URL or --postgres-url-file: on the command line every local user could read it"
        ),
        // (Not echoed: it might be a connection string with a password.)
        _ => bail!("--store: `embedded` or `postgres`"),
    };
    let lease_ttl = runbook_engine::duration::parse(&args.lease_ttl)
        .map_err(|error| anyhow!("--lease-ttl {}: {error}", args.lease_ttl))?;
    if !(std::time::Duration::from_secs(2)..=std::time::Duration::from_secs(600))
        .contains(&lease_ttl)
    {
        bail!("--lease-ttl {}: between 2s and 10m", args.lease_ttl);
    }
    Ok(Some(runbook_engine::daemon::Postgres {
        url,
        lease_ttl,
        ca_file: args.postgres_ca_file.clone(),
    }))
}

/// glibc gives each thread that allocates concurrently an arena of its own (up to eight per
/// core), and memory freed into one arena is not reused by the others: with a million runs read
/// and dropped by several threads, that alone doubled the daemon's resident memory. Two arenas
/// serve its few busy threads.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the daemon starts threads
    // that allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn init_logging(format: LogFormat) -> Result<()> {
    let filter = EnvFilter::try_from_env("RUNBOOK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr on a full disk) is dropped: reporting it
        // would print to the same stderr, and that print panics.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|err| anyhow!("cannot set up logging: {err}"))
}
