//! A real PostgreSQL server for the tests of the PostgreSQL store: its own cluster (`initdb`) in
//! a temporary directory, listening on a loopback port, run as the unprivileged `postgres` user
//! when the tests run as root (PostgreSQL refuses to run as root), stopped by pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The server's user when the tests run as root (Debian's package creates it).
const SERVER_USER: &str = "postgres";

pub struct PgServer {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    databases: usize,
}

/// The newest installed PostgreSQL's programs (`/usr/lib/postgresql/<version>/bin`).
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (`.ci/run` installs it: apt-get install postgresql)")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/<version>/bin/postgres")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PgServer {
    /// initdb, then start. The superuser is `runbook` (trust authentication on loopback).
    pub fn start() -> Result<PgServer> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("runbook-pg-").tempdir()?;
        if is_root() {
            let status = Command::new("chown")
                .arg(format!("{SERVER_USER}:"))
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("chown {SERVER_USER} {}: {status}", dir.path().display());
            }
        }
        let port = crate::free_server_port(1)?;
        let mut server = PgServer {
            port,
            bin,
            dir,
            child: None,
            databases: 0,
        };
        let output = server
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "runbook",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(server.data())
            .output()
            .context("running initdb")?;
        if !output.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        server.restart()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of PostgreSQL's programs, run as the server's user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("setpriv");
            command
                .args([
                    &format!("--reuid={SERVER_USER}"),
                    &format!("--regid={SERVER_USER}"),
                    "--init-groups",
                    "--",
                ])
                .arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Starts the server (again) on the same directory and port; waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the PostgreSQL server is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok()?) {
                self.child = None;
                bail!(
                    "postgres exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|status| status.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not answer within 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: sessions are ended), by pid.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill on the pid of our own child, which has not been reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// From now on TLS only on loopback: the server presents `cert_pem` (with `key_pem`), and a
    /// connection without TLS is refused. Restarts the server.
    pub fn require_tls(&mut self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let data = self.data();
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if is_root() {
                let status = Command::new("chown")
                    .arg(format!("{SERVER_USER}:"))
                    .arg(&path)
                    .status()?;
                if !status.success() {
                    bail!("chown {}: {status}", path.display());
                }
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )?;
        self.stop()?;
        self.restart()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The connection string of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=runbook dbname={name} connect_timeout=5",
            self.port
        )
    }

    /// A new, empty database; its connection string.
    pub fn create_database(&mut self) -> Result<String> {
        self.databases += 1;
        let name = format!("runbook_{}", self.databases);
        let mut client = self.client("postgres")?;
        client.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// A client of database `name`.
    pub fn client(&self, name: &str) -> Result<postgres::Client> {
        Ok(postgres::Client::connect(&self.url(name), postgres::NoTls)?)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
