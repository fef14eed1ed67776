//! A real RocketMQ cluster on 127.0.0.1 for tests and for people: NameServers and brokers of the
//! Rust implementation (`rocketmq-namesrv-rust`, `rocketmq-broker-rust` 1.0.0), each with its
//! own temporary store dir and free ports, plus a producer and a push consumer that move real
//! messages.
//!
//! # Contract
//!
//! - [`Cluster::start`] returns once every broker is registered on every NameServer.
//! - Each broker has a Java-style `broker.conf` and `start.sh` / `stop.sh` scripts in its
//!   directory; runbooks get them as `broker_config`, `start_command`, `stop_command`, so a
//!   runbook restarts a broker exactly as a test does.
//! - Everything started is stopped by pid when the [`Cluster`] is dropped (brokers by the pid
//!   files their start scripts write), even when a test fails.
//!
//! The binaries are looked up in `$RUNBOOK_ROCKETMQ_BIN` (default
//! `$HOME/.cache/runbook/rocketmq/bin`); [`INSTALL_HINT`] says how to get them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    BrokerAdmin as _, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, DefaultMQAdminExt,
    DefaultMQProducer, DefaultMQPushConsumer, LocalTransactionState, MQPushConsumer as _,
    MessageListenerConcurrently, RouteAdmin as _, TopicAdmin as _, TransactionListener,
    TransactionMQProducer,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_model::message::MessageQueue;
use rocketmq_model::result::SendStatus;
use rocketmq_model::topic::TopicConfig;
use rocketmq_protocol::protocol::body::broker_replicas_info::ReplicaIdentity;
use runbook_runbooks::rocketmq::session::client_runtime;

/// How to install the server binaries the harness runs.
pub const INSTALL_HINT: &str =
    "cargo install --locked --root \"$HOME/.cache/runbook/rocketmq\" --version 1.0.0 rocketmq-namesrv rocketmq-broker (about 11 minutes on 2 cores; .ci/run does it)";

/// The directory holding `rocketmq-namesrv-rust` and `rocketmq-broker-rust`.
pub fn bin_dir() -> Result<PathBuf> {
    server_dir("RUNBOOK_ROCKETMQ_BIN", "rocketmq", INSTALL_HINT)
}

/// How to install the controller the Controller-mode test runs: `dev-single` enables its file
/// storage (`storage-file` alone leaves only the memory backend working), and no RocksDB build.
pub const CONTROLLER_INSTALL_HINT: &str =
    "cargo install --locked --root \"$HOME/.cache/runbook/rocketmq-controller-dev-single\" --version 1.0.0 rocketmq-controller --no-default-features --features dev-single (.ci/run does it)";

/// The directory holding `rocketmq-controller-rust` (`RUNBOOK_ROCKETMQ_CONTROLLER_BIN`, default
/// `~/.cache/runbook/rocketmq-controller-dev-single/bin`).
pub fn controller_bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("RUNBOOK_ROCKETMQ_CONTROLLER_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?)
            .join(".cache/runbook/rocketmq-controller-dev-single/bin"),
    };
    let binary = dir.join("rocketmq-controller-rust");
    if !binary.is_file() {
        bail!(
            "{} is missing: install it with\n  {CONTROLLER_INSTALL_HINT}\nor point RUNBOOK_ROCKETMQ_CONTROLLER_BIN at it",
            binary.display()
        );
    }
    Ok(dir)
}

/// The server binaries' directory: `$<variable>`, else `~/.cache/runbook/<cached>/bin`; both
/// binaries must be there.
fn server_dir(variable: &str, cached: &str, hint: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os(variable) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?)
            .join(".cache/runbook")
            .join(cached)
            .join("bin"),
    };
    for binary in ["rocketmq-namesrv-rust", "rocketmq-broker-rust"] {
        if !dir.join(binary).is_file() {
            bail!("{} is missing: install the RocketMQ server binaries with\n  {hint}\nor point {variable} at them", dir.join(binary).display());
        }
    }
    Ok(dir)
}

/// A broker's port: `port - 2` (its fast port), `port` and `port + 1` (HA) are free.
fn free_broker_port() -> Result<u16> {
    Ok(crate::free_server_port(4)? + 2)
}

/// One NameServer process.
pub struct NameServer {
    pub addr: String,
    child: Option<Child>,
    log: PathBuf,
    /// Set when scripts start and stop it (a cluster of an older release): its pid file.
    pid_file: Option<PathBuf>,
}

/// One standalone controller process (a single-node Raft group on file storage).
pub struct ControllerNode {
    /// Where brokers and admin clients reach it (`controllerAddr`).
    pub addr: String,
    /// Its directory: `controller.toml`, `storage/`, `start.sh`, `stop.sh`.
    pub dir: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
}

/// One broker process (a master, brokerId 0, or a slave of its group) and its files.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Its brokerName (the group's name, shared by the master and its slaves).
    pub name: String,
    /// The key in [`Cluster::brokers`] and the name of its directory: the brokerName for a
    /// master, `<brokerName>-s<id>` for a slave.
    pub key: String,
    /// brokerId: 0 for the master, 1.. for slaves.
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    /// Its Java-style config file (what `broker_config` points at).
    pub config: PathBuf,
    pub commitlog: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
    /// Its HA port (a master's: where its slaves replicate from).
    pub ha_port: u16,
}

/// A running cluster; dropping it stops every process it started.
pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub namesrvs: Vec<NameServer>,
    pub brokers: BTreeMap<String, Broker>,
    /// Standalone controllers started by [`Cluster::start_controller`].
    pub controllers: Vec<ControllerNode>,
    bin: PathBuf,
    /// An older release's binaries: the cluster starts on them, through scripts, and each
    /// process also gets a `start.sh` for the current release (a rolling upgrade's target).
    old_bin: Option<PathBuf>,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    /// Starts `namesrvs` NameServers and the named brokers (cluster `TestCluster`), in a new
    /// temporary directory, and waits until every broker is registered everywhere.
    pub fn start(namesrvs: usize, brokers: &[&str]) -> Result<Cluster> {
        Cluster::start_groups(namesrvs, brokers, 0)
    }

    /// As [`Cluster::start`], each named broker group being a master and `slaves` slaves
    /// (brokerId 1.., `brokerRole=SLAVE`, replicating from the master's HA port); returns once
    /// every master and slave is registered on every NameServer.
    pub fn start_groups(namesrvs: usize, brokers: &[&str], slaves: u64) -> Result<Cluster> {
        let temp = tempfile::Builder::new()
            .prefix("runbook-rocketmq-")
            .tempdir()?;
        let dir = temp.path().to_owned();
        Cluster::start_in_groups(dir, Some(temp), namesrvs, brokers, slaves)
    }

    /// As [`Cluster::start`], in `dir` (kept afterwards: for people).
    pub fn start_in(
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        namesrvs: usize,
        brokers: &[&str],
    ) -> Result<Cluster> {
        Cluster::start_in_groups(dir, temp, namesrvs, brokers, 0)
    }

    /// As [`Cluster::start_groups`], in `dir`.
    pub fn start_in_groups(
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        namesrvs: usize,
        brokers: &[&str],
        slaves: u64,
    ) -> Result<Cluster> {
        Cluster::launch(dir, temp, namesrvs, brokers, slaves, None)
    }

    /// A cluster of `namesrvs` NameServers and master-only `brokers` running an older release
    /// (the binaries in `old_bin`, see [`old_bin_dir`]), each process started and stopped by
    /// scripts keyed by its address: `<dir>/ns/<addr>/{start-old,start,stop}.sh` and
    /// `<dir>/addr/<addr>/{start-old,start,stop}.sh`, `start.sh` starting the current release.
    pub fn start_old_release(
        namesrvs: usize,
        brokers: &[&str],
        old_bin: PathBuf,
    ) -> Result<Cluster> {
        let temp = tempfile::Builder::new()
            .prefix("runbook-rocketmq-")
            .tempdir()?;
        let dir = temp.path().to_owned();
        Cluster::launch(dir, Some(temp), namesrvs, brokers, 0, Some(old_bin))
    }

    fn launch(
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        namesrvs: usize,
        brokers: &[&str],
        slaves: u64,
        old_bin: Option<PathBuf>,
    ) -> Result<Cluster> {
        let bin = bin_dir()?;
        std::fs::create_dir_all(&dir)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut cluster = Cluster {
            name: "TestCluster".to_owned(),
            dir,
            _temp: temp,
            namesrvs: Vec::new(),
            brokers: BTreeMap::new(),
            controllers: Vec::new(),
            bin,
            old_bin,
            runtime,
        };
        for _ in 0..namesrvs {
            cluster.add_namesrv()?;
        }
        for name in brokers {
            cluster.prepare_broker(name, None)?;
            for id in 1..=slaves {
                cluster.prepare_slave(name, id, None)?;
            }
        }
        let keys: Vec<String> = cluster.brokers.keys().cloned().collect();
        let start = if cluster.old_bin.is_some() {
            "start-old.sh"
        } else {
            "start.sh"
        };
        for key in &keys {
            script(&cluster.broker(key)?.dir.join(start))?;
        }
        for key in &keys {
            cluster.wait_registered_replica(key, Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    /// The NameServer scripts' templates by address (`{{ namesrv_addr }}`): stop, start (the
    /// current release) and start-old (the older one).
    pub fn namesrv_script_by_addr(&self, script: &str) -> String {
        format!(
            "sh {}/ns/{{{{ namesrv_addr }}}}/{script}.sh",
            self.dir.display()
        )
    }

    /// A broker script's template by address: `stop`, `start` or `start-old`.
    pub fn broker_script_by_addr(&self, script: &str) -> String {
        format!(
            "sh {}/addr/{{{{ broker_addr }}}}/{script}.sh",
            self.dir.display()
        )
    }

    /// The pid of NameServer `index` or of broker `key` now (from its pid file).
    pub fn pid_of(&self, what: &str) -> Option<i32> {
        let file = match what.strip_prefix("namesrv-") {
            Some(index) => self
                .namesrvs
                .get(index.parse::<usize>().ok()?)?
                .pid_file
                .clone()?,
            None => self.broker(what).ok()?.pid_file.clone(),
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// The executable a NameServer (`namesrv-<index>`) or broker process runs now.
    pub fn executable_of(&self, what: &str) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/exe", self.pid_of(what)?)).ok()
    }

    /// Starts a standalone controller (`rocketmq-controller-rust`): one Raft node on file
    /// storage, which bootstraps itself as the leader, started by `<dir>/start.sh` and stopped
    /// by `<dir>/stop.sh` (pid file). Returns its address once it listens.
    pub fn start_controller(&mut self) -> Result<String> {
        let bin = controller_bin_dir()?;
        let index = self.controllers.len();
        let port = crate::free_server_port(2)?;
        let dir = self.dir.join(format!("controller-{index}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "rocketmqHome = \"{dir}\"\nconfigStorePath = \"{dir}/controller.properties\"\nnodeId = 1\n\
                 listenAddr = \"127.0.0.1:{port}\"\nstoragePath = \"{dir}/storage\"\nstorageBackend = \"File\"\n\n\
                 [[raftPeers]]\nid = 1\naddr = \"127.0.0.1:{raft}\"\n",
                dir = dir.display(),
                raft = port + 1,
            ),
        )?;
        let log = dir.join("controller.log");
        let pid_file = dir.join("controller.pid");
        // Scripts, so that a runbook can stop and start it (setsid: it outlives the shell).
        std::fs::write(
            dir.join("start.sh"),
            format!(
                "#!/bin/sh\n# Starts controller {index} in the background unless it already runs.\nset -e\n\
                 if [ -f '{pid}' ] && kill -0 \"$(cat '{pid}')\" 2>/dev/null; then echo 'controller already runs'; exit 0; fi\n\
                 cd '{dir}'\nROCKETMQ_HOME='{dir}' setsid '{bin}' -c '{config}' --log-filter '{filter}' >> '{log}' 2>&1 < /dev/null &\n\
                 echo $! > '{pid}'\necho \"controller started (pid $!)\"\n",
                pid = pid_file.display(),
                dir = dir.display(),
                bin = bin.join("rocketmq-controller-rust").display(),
                config = config.display(),
                filter = log_filter(),
                log = log.display(),
            ),
        )?;
        std::fs::write(
            dir.join("stop.sh"),
            stop_script(&format!("controller {index}"), &pid_file),
        )?;
        let addr = format!("127.0.0.1:{port}");
        let node = ControllerNode {
            addr: addr.clone(),
            dir,
            pid_file,
            log,
        };
        script(&node.dir.join("start.sh"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "controller {addr} did not listen within 30 s; its log ends:\n{}",
                    tail(&node.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.controllers.push(node);
        Ok(addr)
    }

    /// Switches broker group `name` to Controller mode (for tests that start from one): both
    /// keys appended to every process's config file, every process stopped, the master started
    /// and elected, then the slaves started and registered.
    pub fn enable_controller_mode(&self, name: &str) -> Result<()> {
        let controller = self.controller_addr();
        let replicas: Vec<Broker> = self.replicas(name).into_iter().cloned().collect();
        for broker in &replicas {
            let mut config = std::fs::read_to_string(&broker.config)?;
            config.push_str(&format!(
                "enableControllerMode=true\ncontrollerAddr={controller}\n"
            ));
            std::fs::write(&broker.config, config)?;
        }
        for broker in replicas.iter().rev() {
            self.stop_broker(&broker.key)?;
        }
        let master = replicas
            .iter()
            .find(|broker| broker.id == 0)
            .ok_or_else(|| anyhow!("group {name} has no master"))?;
        self.start_broker(&master.key)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .sync_state(name)
            .map(|(elected, _, _)| elected)
            .unwrap_or_default()
            != master.addr
        {
            if Instant::now() > deadline {
                bail!(
                    "the controller did not elect {} within 60 s; {}",
                    master.addr,
                    tail(&master.log)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for broker in replicas.iter().filter(|broker| broker.id != 0) {
            self.start_broker(&broker.key)?;
        }
        // In controller mode the controller assigns the ids: wait for each address.
        let deadline = Instant::now() + Duration::from_secs(60);
        for broker in &replicas {
            while !self.namesrvs.iter().all(|server| {
                self.registered_addrs_on(&server.addr)
                    .is_ok_and(|found| found.iter().any(|(_, _, addr)| *addr == broker.addr))
            }) {
                if Instant::now() > deadline {
                    bail!(
                        "{} is not registered within 60 s; {}",
                        broker.key,
                        tail(&broker.log)
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// The controller address list (`controllerAddr`).
    pub fn controller_addr(&self) -> String {
        self.controllers
            .iter()
            .map(|node| node.addr.as_str())
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Starts one more NameServer (not yet known to any broker).
    pub fn add_namesrv(&mut self) -> Result<String> {
        if let Some(old_bin) = self.old_bin.clone() {
            return self.add_scripted_namesrv(&old_bin);
        }
        let index = self.namesrvs.len();
        let port = crate::free_port()?;
        let home = self.dir.join(format!("namesrv-{index}"));
        std::fs::create_dir_all(&home)?;
        let log = home.join("namesrv.log");
        let child = self.spawn_namesrv(port, &home, &log)?;
        let addr = format!("127.0.0.1:{port}");
        let mut server = NameServer {
            addr: addr.clone(),
            child: Some(child),
            log,
            pid_file: None,
        };
        wait_listening(&addr, Duration::from_secs(30), &mut server)?;
        self.namesrvs.push(server);
        Ok(addr)
    }

    /// Starts NameServer `index` again (after [`Cluster::kill_namesrv`]) on its port and home.
    pub fn restart_namesrv(&mut self, index: usize) -> Result<()> {
        let server = self
            .namesrvs
            .get(index)
            .ok_or_else(|| anyhow!("no NameServer {index}"))?;
        let port: u16 = server
            .addr
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| anyhow!("NameServer address {}", server.addr))?;
        let log = server.log.clone();
        let home = self.dir.join(format!("namesrv-{index}"));
        let child = self.spawn_namesrv(port, &home, &log)?;
        let server = &mut self.namesrvs[index];
        server.child = Some(child);
        let addr = server.addr.clone();
        wait_listening(&addr, Duration::from_secs(30), server)
    }

    fn spawn_namesrv(&self, port: u16, home: &Path, log: &Path) -> Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        Command::new(self.bin.join("rocketmq-namesrv-rust"))
            .args([
                "--listenPort",
                &port.to_string(),
                "--bindAddress",
                "127.0.0.1",
                "--log-filter",
                &log_filter(),
            ])
            .arg("--rocketmqHome")
            .arg(home)
            .env("ROCKETMQ_HOME", home)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting rocketmq-namesrv-rust")
    }

    /// A NameServer of the older release, started by `start-old.sh`; `start.sh` starts the
    /// current release on the same port (the older one takes `-p`/`-i`, the current one
    /// `--listenPort`/`--bindAddress`).
    fn add_scripted_namesrv(&mut self, old_bin: &Path) -> Result<String> {
        let index = self.namesrvs.len();
        let port = crate::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let home = self.dir.join(format!("namesrv-{index}"));
        std::fs::create_dir_all(&home)?;
        let log = home.join("namesrv.log");
        let pid_file = home.join("namesrv.pid");
        let start = |binary: &Path, args: String| {
            format!(
                "#!/bin/sh\n# Starts NameServer {addr} in the background unless it already runs.\nset -e\n\
                 if [ -f '{pid}' ] && kill -0 \"$(cat '{pid}')\" 2>/dev/null; then echo 'namesrv {addr} already runs'; exit 0; fi\n\
                 cd '{home}'\nROCKETMQ_HOME='{home}' setsid '{binary}' {args} >> '{log}' 2>&1 < /dev/null &\n\
                 echo $! > '{pid}'\n\
                 echo \"namesrv {addr} started (pid $(cat '{pid}'))\"\n",
                pid = pid_file.display(),
                home = home.display(),
                binary = binary.display(),
                log = log.display(),
            )
        };
        std::fs::write(
            home.join("start-old.sh"),
            start(
                &old_bin.join("rocketmq-namesrv-rust"),
                format!("-p {port} -i 127.0.0.1"),
            ),
        )?;
        std::fs::write(
            home.join("start.sh"),
            start(
                &self.bin.join("rocketmq-namesrv-rust"),
                format!(
                    "--listenPort {port} --bindAddress 127.0.0.1 --log-filter '{}'",
                    log_filter()
                ),
            ),
        )?;
        std::fs::write(
            home.join("stop.sh"),
            stop_script(&format!("namesrv {addr}"), &pid_file),
        )?;
        let by_addr = self.dir.join("ns");
        std::fs::create_dir_all(&by_addr)?;
        std::os::unix::fs::symlink(&home, by_addr.join(&addr))?;
        script(&home.join("start-old.sh"))?;
        let mut server = NameServer {
            addr: addr.clone(),
            child: None,
            log,
            pid_file: Some(pid_file),
        };
        wait_listening(&addr, Duration::from_secs(30), &mut server)?;
        self.namesrvs.push(server);
        Ok(addr)
    }

    /// The NameServer address list, `a;b`.
    pub fn namesrv(&self) -> String {
        self.namesrvs
            .iter()
            .map(|server| server.addr.clone())
            .collect::<Vec<_>>()
            .join(";")
    }

    /// A broker process by key (a brokerName for a master, `<brokerName>-s<id>` for a slave).
    pub fn broker(&self, name: &str) -> Result<&Broker> {
        self.brokers
            .get(name)
            .ok_or_else(|| anyhow!("no broker {name} in this cluster"))
    }

    /// The master and slaves of broker group `name`, master first.
    pub fn replicas(&self, name: &str) -> Vec<&Broker> {
        let mut found: Vec<&Broker> = self
            .brokers
            .values()
            .filter(|broker| broker.name == name)
            .collect();
        found.sort_by_key(|broker| broker.id);
        found
    }

    /// The stop command template by broker address: `{{ broker_addr }}` picks the process, so
    /// it serves masters and slaves alike.
    pub fn stop_command_by_addr(&self) -> String {
        format!(
            "sh {}/addr/{{{{ broker_addr }}}}/stop.sh",
            self.dir.display()
        )
    }

    /// The start command template by broker address.
    pub fn start_command_by_addr(&self) -> String {
        format!(
            "sh {}/addr/{{{{ broker_addr }}}}/start.sh",
            self.dir.display()
        )
    }

    /// The config path template by broker address.
    pub fn config_template_by_addr(&self) -> String {
        format!(
            "{}/addr/{{{{ broker_addr }}}}/broker.conf",
            self.dir.display()
        )
    }

    /// The size in bytes of a broker's commitlog files (what it stored or replicated).
    pub fn commitlog_bytes(&self, key: &str) -> Result<u64> {
        let broker = self.broker(key)?;
        // Mapped files are preallocated: count the bytes up to the last non-zero one.
        let mut total = 0;
        let Ok(entries) = std::fs::read_dir(&broker.commitlog) else {
            return Ok(0);
        };
        for entry in entries {
            let data = std::fs::read(entry?.path())?;
            total += data
                .iter()
                .rposition(|byte| *byte != 0)
                .map_or(0, |at| at as u64 + 1);
        }
        Ok(total)
    }

    /// The stop command template for runbooks (`{{ broker }}` is filled by the runbook).
    pub fn stop_command(&self) -> String {
        format!("sh {}/{{{{ broker }}}}/stop.sh", self.dir.display())
    }

    /// The start command template for runbooks.
    pub fn start_command(&self) -> String {
        format!("sh {}/{{{{ broker }}}}/start.sh", self.dir.display())
    }

    /// The broker config path template for runbooks that loop over brokers.
    pub fn config_template(&self) -> String {
        format!("{}/{{{{ broker }}}}/broker.conf", self.dir.display())
    }

    /// Writes a broker's directory, config and scripts (registering with `namesrv`, default:
    /// every NameServer of the cluster). Does not start it.
    pub fn prepare_broker(&mut self, name: &str, namesrv: Option<&str>) -> Result<Broker> {
        self.prepare_replica(name, 0, namesrv)
    }

    /// Writes the directory, config and scripts of slave `id` (1..) of broker group `name`,
    /// replicating from the group's master (prepared before). Does not start it.
    pub fn prepare_slave(&mut self, name: &str, id: u64, namesrv: Option<&str>) -> Result<Broker> {
        if id == 0 {
            bail!("a slave's brokerId is 1 or more");
        }
        self.prepare_replica(name, id, namesrv)
    }

    fn prepare_replica(&mut self, name: &str, id: u64, namesrv: Option<&str>) -> Result<Broker> {
        let key = if id == 0 {
            name.to_owned()
        } else {
            format!("{name}-s{id}")
        };
        let role = if id == 0 {
            "brokerRole=ASYNC_MASTER\n".to_owned()
        } else {
            let master = self
                .brokers
                .get(name)
                .ok_or_else(|| anyhow!("slave {key}: prepare its master {name} first"))?;
            format!(
                "brokerRole=SLAVE\nhaMasterAddress=127.0.0.1:{}\n",
                master.ha_port
            )
        };
        let port = free_broker_port()?;
        let dir = self.dir.join(&key);
        let store = dir.join("store");
        std::fs::create_dir_all(&store)?;
        let config = dir.join("broker.conf");
        let commitlog = store.join("commitlog");
        let namesrv = namesrv.map_or_else(|| self.namesrv(), str::to_owned);
        std::fs::write(
            &config,
            format!(
                "brokerClusterName={cluster}\nbrokerName={name}\nbrokerId={id}\nnamesrvAddr={namesrv}\nbrokerIP1=127.0.0.1\nlistenPort={port}\nhaListenPort={ha}\n\
                 storePathRootDir={store}\nstorePathCommitLog={commitlog}\nmappedFileSizeCommitLog=1048576\nfileReservedTime=72\ndeleteWhen=04\n\
                 diskMaxUsedSpaceRatio=96\ndiskSpaceCleanForciblyRatio=97\ndiskSpaceWarningLevelRatio=98\n\
                 {role}flushDiskType=ASYNC_FLUSH\nbrokerPermission=6\nautoCreateTopicEnable=false\nautoCreateSubscriptionGroup=true\ntransactionCheckInterval=3000\n",
                cluster = self.name,
                ha = port + 1,
                store = store.display(),
                commitlog = commitlog.display(),
            ),
        )?;
        let pid_file = dir.join("broker.pid");
        let log = dir.join("broker.log");
        // setsid: the broker outlives the shell (and the runbook step) that started it.
        std::fs::write(
            dir.join("start.sh"),
            format!(
                "#!/bin/sh\n# Starts broker {key} in the background unless it already runs.\nset -e\n\
                 if [ -f '{pid}' ] && kill -0 \"$(cat '{pid}')\" 2>/dev/null; then echo 'broker {key} already runs'; exit 0; fi\n\
                 cd '{dir}'\nROCKETMQ_HOME='{dir}' setsid '{bin}' -c '{config}' --log-filter '{filter}' >> '{log}' 2>&1 < /dev/null &\n\
                 echo $! > '{pid}'\necho \"broker {key} started (pid $!)\"\n",
                pid = pid_file.display(),
                dir = dir.display(),
                bin = self.bin.join("rocketmq-broker-rust").display(),
                config = config.display(),
                filter = log_filter(),
                log = log.display(),
            ),
        )?;
        std::fs::write(
            dir.join("stop.sh"),
            stop_script(&format!("broker {key}"), &pid_file),
        )?;
        if let Some(old_bin) = &self.old_bin {
            // The older release reads TOML (serde names of its BrokerConfig and
            // MessageStoreConfig), not Java properties.
            let toml = dir.join("broker.toml");
            std::fs::write(
                &toml,
                format!(
                    "brokerIp1 = \"127.0.0.1\"\nlistenPort = {port}\nhaListenPort = {ha}\nnamesrvAddr = \"{namesrv}\"\n\
                     storePathRootDir = \"{store}\"\nstorePathCommitLog = \"{commitlog}\"\nmappedFileSizeCommitLog = 1048576\n\
                     brokerPermission = 6\nautoCreateTopicEnable = false\nautoCreateSubscriptionGroup = true\n\
                     [brokerIdentity]\nbrokerName = \"{name}\"\nbrokerClusterName = \"{cluster}\"\nbrokerId = {id}\n\
                     [brokerServerConfig]\nlistenPort = {port}\n",
                    cluster = self.name,
                    ha = port + 1,
                    store = store.display(),
                    commitlog = commitlog.display(),
                ),
            )?;
            std::fs::write(
                dir.join("start-old.sh"),
                format!(
                    "#!/bin/sh\n# Starts broker {key} on the older release unless it already runs.\nset -e\n\
                     if [ -f '{pid}' ] && kill -0 \"$(cat '{pid}')\" 2>/dev/null; then echo 'broker {key} already runs'; exit 0; fi\n\
                     cd '{dir}'\nROCKETMQ_HOME='{dir}' setsid '{bin}' -c '{toml}' -n '{namesrv}' >> '{log}' 2>&1 < /dev/null &\n\
                     echo $! > '{pid}'\necho \"broker {key} started (pid $!)\"\n",
                    pid = pid_file.display(),
                    dir = dir.display(),
                    bin = old_bin.join("rocketmq-broker-rust").display(),
                    toml = toml.display(),
                    log = log.display(),
                ),
            )?;
        }
        let addr = format!("127.0.0.1:{port}");
        // <dir>/addr/<host:port> -> the broker's directory, for templates keyed by address.
        let by_addr = self.dir.join("addr");
        std::fs::create_dir_all(&by_addr)?;
        let link = by_addr.join(&addr);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link)?;
        let broker = Broker {
            name: name.to_owned(),
            key: key.clone(),
            id,
            addr,
            dir,
            config,
            commitlog,
            pid_file,
            log,
            ha_port: port + 1,
        };
        self.brokers.insert(key, broker.clone());
        Ok(broker)
    }

    /// Runs a broker's `start.sh`.
    pub fn start_broker(&self, name: &str) -> Result<()> {
        script(&self.broker(name)?.dir.join("start.sh"))
    }

    /// Runs a broker's `stop.sh` (returns once the process is gone).
    pub fn stop_broker(&self, name: &str) -> Result<()> {
        script(&self.broker(name)?.dir.join("stop.sh"))
    }

    /// Kills a broker process with SIGKILL (no unregistration: the NameServers keep listing it
    /// until its registration expires).
    pub fn kill_broker(&self, key: &str) -> Result<()> {
        let broker = self.broker(key)?;
        let text = std::fs::read_to_string(&broker.pid_file)
            .with_context(|| format!("broker {key} is not running"))?;
        let pid: i32 = text.trim().parse().context("a broker pid file")?;
        // SAFETY: signalling a pid this harness started (from its own pid file).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks whether the process still exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&broker.pid_file);
        Ok(())
    }

    /// Freezes (`SIGSTOP`, `freeze = true`) or thaws (`SIGCONT`) a broker process: frozen, it
    /// keeps its connections and its registration but answers nothing.
    pub fn freeze_broker(&self, key: &str, freeze: bool) -> Result<()> {
        let broker = self.broker(key)?;
        let text = std::fs::read_to_string(&broker.pid_file)
            .with_context(|| format!("broker {key} is not running"))?;
        let pid: i32 = text.trim().parse().context("a broker pid file")?;
        let signal = if freeze { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling a pid this harness started (from its own pid file).
        unsafe {
            libc::kill(pid, signal);
        }
        Ok(())
    }

    /// Adds and starts a new broker, and waits until it is registered.
    pub fn add_broker(&mut self, name: &str) -> Result<Broker> {
        let broker = self.prepare_broker(name, None)?;
        self.start_broker(name)?;
        self.wait_registered(name, Duration::from_secs(60))?;
        Ok(broker)
    }

    /// The broker names registered on one NameServer.
    pub fn registered_on(&self, namesrv: &str) -> Result<Vec<String>> {
        let name = namesrv.to_owned();
        self.with_admin(namesrv, |admin| async move {
            let info = admin
                .examine_broker_cluster_info()
                .await
                .map_err(|error| anyhow!("namesrv {name}: {error}"))?;
            let mut names: Vec<String> = info
                .broker_addr_table
                .unwrap_or_default()
                .keys()
                .map(|name| name.to_string())
                .collect();
            names.sort();
            Ok(names)
        })
    }

    /// The broker processes registered on one NameServer: `(brokerName, brokerId, addr)`.
    pub fn registered_addrs_on(&self, namesrv: &str) -> Result<Vec<(String, u64, String)>> {
        let name = namesrv.to_owned();
        self.with_admin(namesrv, |admin| async move {
            let info = admin
                .examine_broker_cluster_info()
                .await
                .map_err(|error| anyhow!("namesrv {name}: {error}"))?;
            let mut found = Vec::new();
            for (broker, data) in info.broker_addr_table.unwrap_or_default() {
                for (id, addr) in data.broker_addrs() {
                    found.push((broker.to_string(), *id, addr.to_string()));
                }
            }
            found.sort();
            Ok(found)
        })
    }

    /// Waits until the broker process `key` (master or slave) is registered, under its own
    /// brokerId and address, on every NameServer.
    pub fn wait_registered_replica(&self, key: &str, timeout: Duration) -> Result<()> {
        let broker = self.broker(key)?.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let mut missing = Vec::new();
            for server in &self.namesrvs {
                let there = self.registered_addrs_on(&server.addr).is_ok_and(|found| {
                    found.iter().any(|(name, id, addr)| {
                        *name == broker.name && *id == broker.id && *addr == broker.addr
                    })
                });
                if !there {
                    missing.push(server.addr.clone());
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "broker {key} ({}, id {}) is not registered on namesrv {} after {timeout:?}; its log ends:\n{}",
                    broker.addr,
                    broker.id,
                    missing.join(", "),
                    tail(&broker.log)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A broker's runtime config value, read from the broker itself.
    pub fn broker_config(&self, name: &str, key: &str) -> Result<Option<String>> {
        let addr = self.broker(name)?.addr.clone();
        let key = key.to_owned();
        let broker = name.to_owned();
        self.with_admin(&self.namesrv(), |admin| async move {
            let config = admin
                .get_broker_config(CheetahString::from(addr.as_str()))
                .await
                .map_err(|error| anyhow!("broker {broker}: {error}"))?;
            Ok(config
                .get(&CheetahString::from(key.as_str()))
                .map(|value| value.to_string()))
        })
    }

    /// The last lines of every server's log (NameServers, then brokers), for a failure report.
    pub fn server_logs(&self) -> String {
        let namesrvs = self
            .namesrvs
            .iter()
            .map(|server| format!("--- namesrv {} ---\n{}", server.addr, tail(&server.log)));
        let brokers = self.brokers.values().map(|broker| {
            format!(
                "--- broker {} ({}) ---\n{}",
                broker.key,
                broker.addr,
                tail(&broker.log)
            )
        });
        let controllers = self
            .controllers
            .iter()
            .map(|node| format!("--- controller {} ---\n{}", node.addr, tail(&node.log)));
        namesrvs
            .chain(controllers)
            .chain(brokers)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `name` is registered on every NameServer.
    pub fn wait_registered(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut missing = Vec::new();
            for server in &self.namesrvs {
                if !self
                    .registered_on(&server.addr)
                    .map(|names| names.iter().any(|known| known == name))
                    .unwrap_or(false)
                {
                    missing.push(server.addr.clone());
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self
                    .broker(name)
                    .map(|broker| tail(&broker.log))
                    .unwrap_or_default();
                bail!("broker {name} is not registered on namesrv {} after {timeout:?}; its log ends:\n{log}", missing.join(", "));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `work` with an admin client on `namesrv` (one address or a list).
    pub fn with_admin<T, F, Fut>(&self, namesrv: &str, work: F) -> Result<T>
    where
        F: FnOnce(Arc<DefaultMQAdminExt>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.runtime.block_on(async {
            let runtime = client_runtime().map_err(|message| anyhow!(message))?;
            let mut admin = DefaultMQAdminExt::with_timeout(runtime, Duration::from_secs(5));
            admin.set_namesrv_addr(namesrv);
            admin
                .client_config_mut()
                .set_instance_name(format!("harness-{}", next_id()).into());
            admin
                .start()
                .await
                .map_err(|error| anyhow!("starting an admin client on {namesrv}: {error}"))?;
            let admin = Arc::new(admin);
            let result = work(Arc::clone(&admin)).await;
            if let Ok(mut admin) = Arc::try_unwrap(admin) {
                admin.shutdown().await;
            }
            result
        })
    }

    /// The controller's view of broker group `name`: its master's address, the addresses in its
    /// sync state set and those of its other replicas (all empty when the controller knows no
    /// such group yet).
    pub fn sync_state(&self, name: &str) -> Result<(String, Vec<String>, Vec<String>)> {
        let controller = self
            .controllers
            .first()
            .map(|node| node.addr.clone())
            .ok_or_else(|| anyhow!("no controller was started"))?;
        let name = name.to_owned();
        self.with_admin(&self.namesrv(), |admin| async move {
            let info = admin
                .get_in_sync_state_data(
                    CheetahString::from(controller.as_str()),
                    vec![CheetahString::from(name.as_str())],
                )
                .await
                .map_err(|error| anyhow!("controller {controller}: {error}"))?;
            Ok(info
                .get_replicas_info_table()
                .iter()
                .find(|(group, _)| group.as_str() == name)
                .map(|(_, replicas)| {
                    let addrs = |list: &[ReplicaIdentity]| {
                        list.iter()
                            .map(|one| one.get_broker_address().to_string())
                            .collect()
                    };
                    (
                        replicas.get_master_address().to_owned(),
                        addrs(replicas.get_in_sync_replicas()),
                        addrs(replicas.get_not_in_sync_replicas()),
                    )
                })
                .unwrap_or_default())
        })
    }

    /// Creates (or replaces) `topic` with `queues` read and write queues on the named brokers,
    /// and waits until its route names them all.
    pub fn create_topic(&self, topic: &str, brokers: &[&str], queues: u32) -> Result<()> {
        let targets: Vec<(String, String)> = brokers
            .iter()
            .map(|name| {
                self.broker(name)
                    .map(|broker| (broker.name.clone(), broker.addr.clone()))
            })
            .collect::<Result<_>>()?;
        let topic_owned = topic.to_owned();
        self.with_admin(&self.namesrv(), |admin| async move {
            for (name, addr) in &targets {
                let mut config = TopicConfig::with_queues(topic_owned.as_str(), queues, queues);
                config.perm = 6;
                admin
                    .create_and_update_topic_config(CheetahString::from(addr.as_str()), config)
                    .await
                    .map_err(|error| anyhow!("creating topic {topic_owned} on {name}: {error}"))?;
            }
            Ok(())
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let names = self.route_brokers(topic)?;
            if brokers
                .iter()
                .all(|name| names.iter().any(|known| known == name))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("topic {topic}: route names {names:?}, not all of {brokers:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The broker names in `topic`'s route (empty when it has none).
    pub fn route_brokers(&self, topic: &str) -> Result<Vec<String>> {
        let topic = topic.to_owned();
        self.with_admin(&self.namesrv(), |admin| async move {
            let route = admin
                .examine_topic_route_info(CheetahString::from(topic.as_str()))
                .await
                .ok()
                .flatten();
            let mut names: Vec<String> = route
                .map(|route| {
                    route
                        .queue_datas
                        .iter()
                        .map(|queue| queue.broker_name().to_string())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            Ok(names)
        })
    }

    /// A started producer on this cluster.
    pub fn producer(&self) -> Result<Producer> {
        let namesrv = self.namesrv();
        let producer = self.runtime.block_on(async {
            let runtime = client_runtime().map_err(|message| anyhow!(message))?;
            let mut producer = DefaultMQProducer::builder(runtime)
                .producer_group(format!("test_producer_{}", next_id()))
                .name_server_addr(namesrv)
                .build();
            producer
                .start()
                .await
                .map_err(|error| anyhow!("starting a producer: {error}"))?;
            Ok::<_, anyhow::Error>(producer)
        })?;
        Ok(Producer {
            producer: Some(producer),
            runtime: self.runtime.handle().clone(),
        })
    }

    /// A started transactional producer whose local transactions stay undecided (the broker
    /// keeps their half messages and asks back) until [`TxProducer::decide`] commits them.
    pub fn tx_producer(&self) -> Result<TxProducer> {
        let namesrv = self.namesrv();
        let commit = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = Undecided(Arc::clone(&commit));
        let producer = self.runtime.block_on(async {
            let runtime = client_runtime().map_err(|message| anyhow!(message))?;
            let mut producer = TransactionMQProducer::builder(runtime)
                .producer_group(format!("test_tx_producer_{}", next_id()))
                .name_server_addr(namesrv)
                .transaction_listener(listener)
                .build();
            producer
                .start()
                .await
                .map_err(|error| anyhow!("starting a transactional producer: {error}"))?;
            Ok::<_, anyhow::Error>(producer)
        })?;
        Ok(TxProducer {
            producer: Some(producer),
            commit,
            runtime: self.runtime.handle().clone(),
        })
    }

    /// A started push consumer of `topic` in `group` (from the first offset) with `listener`.
    fn start_push_consumer(
        &self,
        group: &str,
        topic: &str,
        listener: impl MessageListenerConcurrently + 'static,
    ) -> Result<DefaultMQPushConsumer> {
        let namesrv = self.namesrv();
        self.runtime.block_on(async {
            let runtime = client_runtime().map_err(|message| anyhow!(message))?;
            let mut consumer = DefaultMQPushConsumer::builder(runtime)
                .consumer_group(group.to_owned())
                .name_server_addr(namesrv)
                .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
                .build();
            consumer
                .subscribe(topic, "*")
                .await
                .map_err(|error| anyhow!("subscribing {group} to {topic}: {error}"))?;
            consumer.register_message_listener_concurrently(listener);
            consumer
                .start()
                .await
                .map_err(|error| anyhow!("starting consumer {group}: {error}"))?;
            Ok(consumer)
        })
    }

    /// A started push consumer of `topic` in `group`, counting what it receives.
    pub fn consumer(&self, group: &str, topic: &str) -> Result<Consumer> {
        let received = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(BTreeSet::new()));
        let listener = Counter(Arc::clone(&received), Arc::clone(&keys));
        let consumer = self.start_push_consumer(group, topic, listener)?;
        Ok(Consumer {
            consumer: Some(consumer),
            received,
            keys,
            runtime: self.runtime.handle().clone(),
        })
    }

    /// Kills every process by pid (also done on drop).
    pub fn stop_all(&mut self) {
        for broker in self.brokers.values() {
            if let Ok(text) = std::fs::read_to_string(&broker.pid_file) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    // SAFETY: signalling a pid this harness started (from its own pid file).
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                let _ = std::fs::remove_file(&broker.pid_file);
            }
        }
        for node in &self.controllers {
            if let Some(pid) = std::fs::read_to_string(&node.pid_file)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
            {
                // SAFETY: signalling a pid this harness's script started (its pid file).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = std::fs::remove_file(&node.pid_file);
        }
        for server in &mut self.namesrvs {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(file) = &server.pid_file {
                if let Some(pid) = std::fs::read_to_string(file)
                    .ok()
                    .and_then(|text| text.trim().parse::<i32>().ok())
                {
                    // SAFETY: signalling a pid this harness's scripts started (its pid file).
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                let _ = std::fs::remove_file(file);
            }
        }
    }

    /// Kills NameServer `index` (it stops answering).
    pub fn kill_namesrv(&mut self, index: usize) {
        if let Some(mut child) = self
            .namesrvs
            .get_mut(index)
            .and_then(|server| server.child.take())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The end of a NameServer's log (for failure messages).
    pub fn namesrv_log(&self, index: usize) -> String {
        self.namesrvs
            .get(index)
            .map(|server| tail(&server.log))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn log_filter() -> String {
    std::env::var("RUNBOOK_ROCKETMQ_LOG").unwrap_or_else(|_| "warn".to_owned())
}

fn next_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() as usize * 1000
}

fn script(path: &Path) -> Result<()> {
    let output = Command::new("sh")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A script that stops the process in `pid_file` (SIGTERM, then SIGKILL after 20 s) and waits
/// until it is gone.
fn stop_script(what: &str, pid_file: &Path) -> String {
    format!(
        "#!/bin/sh\n# Stops {what} (SIGTERM, then SIGKILL after 20 s) and waits until it is gone.\n\
         [ -f '{pid}' ] || {{ echo '{what} is not running'; exit 0; }}\npid=$(cat '{pid}')\n\
         kill -TERM \"$pid\" 2>/dev/null || {{ rm -f '{pid}'; echo '{what} was not running'; exit 0; }}\n\
         i=0; while kill -0 \"$pid\" 2>/dev/null; do i=$((i+1)); if [ $i -gt 200 ]; then kill -KILL \"$pid\"; fi; sleep 0.1; done\n\
         rm -f '{pid}'\necho \"{what} stopped (pid $pid)\"\n",
        pid = pid_file.display(),
    )
}

/// The directory of the older release's `rocketmq-namesrv-rust` and `rocketmq-broker-rust`
/// (`RUNBOOK_ROCKETMQ_OLD_BIN`, default `~/.cache/runbook/rocketmq-0.7.0/bin`).
pub fn old_bin_dir() -> Result<PathBuf> {
    server_dir(
        "RUNBOOK_ROCKETMQ_OLD_BIN",
        "rocketmq-0.7.0",
        "RUSTC_BOOTSTRAP=1 cargo install --locked --root \"$HOME/.cache/runbook/rocketmq-0.7.0\" --version 0.7.0 rocketmq-namesrv rocketmq-broker (.ci/run does it)",
    )
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn wait_listening(addr: &str, timeout: Duration, server: &mut NameServer) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(child) = server.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "namesrv {addr} exited during start-up ({status}); its log ends:\n{}",
                    tail(&server.log)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "namesrv {addr} did not listen within {timeout:?}; its log ends:\n{}",
        tail(&server.log)
    )
}

struct Counter(Arc<AtomicUsize>, Arc<Mutex<BTreeSet<String>>>);

impl MessageListenerConcurrently for Counter {
    fn consume_message(
        &self,
        messages: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        if let Ok(mut keys) = self.1.lock() {
            for message in messages {
                keys.extend(message.message_inner().keys().unwrap_or_default());
            }
        }
        self.0.fetch_add(messages.len(), Ordering::SeqCst);
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// How a test message is delayed.
#[derive(Debug, Clone, Copy)]
pub enum Delay {
    /// A delay level (1 = 1 s, 3 = 10 s, 4 = 30 s): the broker parks the message in
    /// `SCHEDULE_TOPIC_XXXX`.
    Level(i32),
    /// `TIMER_DELAY_SEC` (a 5.x timer message): the broker parks it in its timer wheel
    /// (`rmq_sys_wheel_timer`).
    Seconds(u64),
}

/// A test producer.
pub struct Producer {
    producer: Option<DefaultMQProducer>,
    runtime: tokio::runtime::Handle,
}

impl Producer {
    fn inner(&self) -> Result<&DefaultMQProducer> {
        self.producer
            .as_ref()
            .ok_or_else(|| anyhow!("the producer was shut down"))
    }

    /// Sends `count` messages to `topic` (round robin over its writable queues).
    pub fn send(&self, topic: &str, count: usize) -> Result<()> {
        let producer = self.inner()?;
        self.runtime.block_on(async {
            for index in 0..count {
                let message = Message::builder()
                    .topic(topic)
                    .tags("test")
                    .body_slice(format!("message {index}").as_bytes())
                    .build_unchecked();
                producer
                    .send_with_timeout(message, 5000)
                    .await
                    .map_err(|error| anyhow!("sending message {index} to {topic}: {error}"))?;
            }
            Ok(())
        })
    }

    /// Sends `count` messages with keys `<prefix>-0`.. to `topic`; returns the keys the brokers
    /// acknowledged (`SEND_OK`). A refused send is left out (its message was not stored); it
    /// fails only when every send was refused.
    pub fn send_keyed(&self, topic: &str, prefix: &str, count: usize) -> Result<Vec<String>> {
        self.send_keyed_sized(topic, prefix, count, 0)
    }

    /// As [`Producer::send_keyed`], each body being the key padded to `body_bytes` bytes (keep
    /// it under 4096, where the client starts compressing): fills the brokers' 1 MiB commitlog
    /// files in a few hundred messages.
    pub fn send_keyed_sized(
        &self,
        topic: &str,
        prefix: &str,
        count: usize,
        body_bytes: usize,
    ) -> Result<Vec<String>> {
        let producer = self.inner()?;
        self.runtime.block_on(async {
            let mut acked = Vec::new();
            let mut last_error = String::new();
            for index in 0..count {
                let key = format!("{prefix}-{index}");
                // Padding that does not compress (the client compresses large bodies).
                let mut body = key.clone().into_bytes();
                let mut state = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while body.len() < body_bytes {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    body.push(b'a' + (state % 26) as u8);
                }
                let message = Message::builder()
                    .topic(topic)
                    .tags("test")
                    .keys(vec![key.clone()])
                    .body_slice(&body)
                    .build_unchecked();
                match producer.send_with_timeout(message, 5000).await {
                    Ok(Some(result)) if result.send_status == SendStatus::SendOk => acked.push(key),
                    Ok(other) => last_error = format!("sending {key} to {topic}: {other:?}"),
                    Err(error) => last_error = format!("sending {key} to {topic}: {error}"),
                }
            }
            if acked.is_empty() && count > 0 {
                bail!("no message to {topic} was acknowledged; the last answer: {last_error}");
            }
            Ok(acked)
        })
    }

    /// Sends `count` delayed messages with keys `<prefix>-0`.. to queue 0 of `topic` on
    /// `broker`; returns the acknowledged keys.
    pub fn send_delayed_to_broker(
        &self,
        topic: &str,
        broker: &str,
        prefix: &str,
        count: usize,
        delay: Delay,
    ) -> Result<Vec<String>> {
        let producer = self.inner()?;
        self.runtime.block_on(async {
            let mut acked = Vec::new();
            for index in 0..count {
                let key = format!("{prefix}-{index}");
                let builder = Message::builder()
                    .topic(topic)
                    .tags("test")
                    .keys(vec![key.clone()])
                    .body_slice(key.as_bytes());
                let message = match delay {
                    Delay::Level(level) => builder.delay_level(level),
                    Delay::Seconds(seconds) => builder.delay_secs(seconds),
                }
                .build_unchecked();
                match producer
                    .send_to_queue_with_timeout(
                        message,
                        MessageQueue::from_parts(topic, broker, 0),
                        5000,
                    )
                    .await
                {
                    Ok(Some(result)) if result.send_status == SendStatus::SendOk => acked.push(key),
                    Ok(other) => bail!("sending delayed {key} to {topic} on {broker}: {other:?}"),
                    Err(error) => bail!("sending delayed {key} to {topic} on {broker}: {error}"),
                }
            }
            Ok(acked)
        })
    }

    /// Sends one message to queue 0 of `topic` on `broker`; the broker's answer as an error text.
    pub fn send_to_broker(&self, topic: &str, broker: &str) -> Result<(), String> {
        let producer = self.inner().map_err(|error| error.to_string())?;
        self.runtime.block_on(async {
            let message = Message::builder()
                .topic(topic)
                .tags("test")
                .body_slice(b"direct")
                .build_unchecked();
            producer
                .send_to_queue_with_timeout(
                    message,
                    MessageQueue::from_parts(topic, broker, 0),
                    5000,
                )
                .await
                .map(|_| ())
                .map_err(|error| runbook_runbooks::rocketmq::session::explain(&error))
        })
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some(mut producer) = self.producer.take() {
            self.runtime
                .block_on(async move { producer.shutdown().await });
        }
    }
}

struct Undecided(Arc<std::sync::atomic::AtomicBool>);

impl TransactionListener for Undecided {
    fn execute_local_transaction(
        &self,
        _message: &dyn rocketmq_model::common::message::MessageTrait,
        _arg: Option<&(dyn std::any::Any + Send + Sync)>,
    ) -> LocalTransactionState {
        LocalTransactionState::Unknown
    }

    fn check_local_transaction(&self, _message: &MessageExt) -> LocalTransactionState {
        if self.0.load(Ordering::SeqCst) {
            LocalTransactionState::CommitMessage
        } else {
            LocalTransactionState::Unknown
        }
    }
}

/// A test transactional producer: its half messages wait for [`TxProducer::decide`].
pub struct TxProducer {
    producer: Option<TransactionMQProducer>,
    commit: Arc<std::sync::atomic::AtomicBool>,
    runtime: tokio::runtime::Handle,
}

impl TxProducer {
    /// Sends `count` half messages with keys `<prefix>-0`.. to `topic`; returns the keys the
    /// brokers stored as half messages.
    pub fn send_half(&self, topic: &str, prefix: &str, count: usize) -> Result<Vec<String>> {
        let producer = self
            .producer
            .as_ref()
            .ok_or_else(|| anyhow!("the producer was shut down"))?;
        self.runtime.block_on(async {
            let mut stored = Vec::new();
            for index in 0..count {
                let key = format!("{prefix}-{index}");
                let message = Message::builder()
                    .topic(topic)
                    .tags("test")
                    .keys(vec![key.clone()])
                    .body_slice(key.as_bytes())
                    .build_unchecked();
                let result = producer
                    .send_message_in_transaction::<(), _>(message, None)
                    .await
                    .map_err(|error| anyhow!("sending half message {key} to {topic}: {error}"))?;
                if result
                    .send_result
                    .as_ref()
                    .is_some_and(|sent| sent.send_status == SendStatus::SendOk)
                {
                    stored.push(key);
                }
            }
            Ok(stored)
        })
    }

    /// From now on, the broker's transaction check is answered "commit".
    pub fn decide(&self) {
        self.commit.store(true, Ordering::SeqCst);
    }
}

impl Drop for TxProducer {
    fn drop(&mut self) {
        if let Some(mut producer) = self.producer.take() {
            self.runtime
                .block_on(async move { producer.shutdown().await });
        }
    }
}

/// A test push consumer.
pub struct Consumer {
    consumer: Option<DefaultMQPushConsumer>,
    received: Arc<AtomicUsize>,
    keys: Arc<Mutex<BTreeSet<String>>>,
    runtime: tokio::runtime::Handle,
}

impl Consumer {
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// The message keys received so far.
    pub fn keys(&self) -> BTreeSet<String> {
        self.keys
            .lock()
            .map(|keys| keys.clone())
            .unwrap_or_default()
    }

    /// Waits until every key in `keys` arrived; fails naming the missing ones.
    pub fn wait_keys(&self, keys: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.keys();
            let missing: Vec<&String> = keys.iter().filter(|key| !have.contains(*key)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {} message(s) not consumed in {timeout:?}: {:?}",
                    missing.len(),
                    keys.len(),
                    &missing[..missing.len().min(10)]
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until at least `count` messages arrived.
    pub fn wait_received(&self, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.received() < count {
            if Instant::now() > deadline {
                bail!(
                    "consumer received {} of {count} messages in {timeout:?}",
                    self.received()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops the consumer (it persists its offsets first).
    pub fn shutdown(&mut self) {
        if let Some(mut consumer) = self.consumer.take() {
            self.runtime
                .block_on(async move { consumer.shutdown().await });
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Counts every message a consumer receives by key (a message without keys counts under "").
struct KeyCounter(Arc<std::sync::Mutex<BTreeMap<String, usize>>>);

impl MessageListenerConcurrently for KeyCounter {
    fn consume_message(
        &self,
        messages: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        if let Ok(mut keys) = self.0.lock() {
            for message in messages {
                let key = message
                    .keys()
                    .map(|keys| keys.join(" "))
                    .unwrap_or_default();
                *keys.entry(key).or_default() += 1;
            }
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// A push consumer that records the key of every message it receives (how many times each).
pub struct KeyedConsumer {
    consumer: Option<DefaultMQPushConsumer>,
    keys: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
    runtime: tokio::runtime::Handle,
}

impl Cluster {
    /// A started push consumer of `topic` in `group` that records message keys.
    pub fn keyed_consumer(&self, group: &str, topic: &str) -> Result<KeyedConsumer> {
        let keys = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let listener = KeyCounter(Arc::clone(&keys));
        let consumer = self.start_push_consumer(group, topic, listener)?;
        Ok(KeyedConsumer {
            consumer: Some(consumer),
            keys,
            runtime: self.runtime.handle().clone(),
        })
    }
}

impl KeyedConsumer {
    /// Every key received so far, with how many times it was delivered.
    pub fn keys(&self) -> BTreeMap<String, usize> {
        self.keys
            .lock()
            .map(|keys| keys.clone())
            .unwrap_or_default()
    }

    /// Messages received so far (deliveries, duplicates included).
    pub fn deliveries(&self) -> usize {
        self.keys().values().sum()
    }

    /// Waits until every key of `keys` was received at least once; the missing ones otherwise.
    pub fn wait_keys(&self, keys: &[String], timeout: Duration) -> Result<(), Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.keys();
            let missing: Vec<String> = keys
                .iter()
                .filter(|key| !received.contains_key(*key))
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(missing);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the consumer (it persists its offsets first).
    pub fn shutdown(&mut self) {
        if let Some(mut consumer) = self.consumer.take() {
            self.runtime
                .block_on(async move { consumer.shutdown().await });
        }
    }
}

impl Drop for KeyedConsumer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Producer {
    /// Sends one message with `key` to `topic`: to queue `queue_id` of `broker` when given,
    /// else wherever the producer's (possibly cached) route sends it. The broker's answer as an
    /// error text.
    pub fn send_key(
        &self,
        topic: &str,
        key: &str,
        queue: Option<(&str, i32)>,
    ) -> Result<(), String> {
        let producer = self.inner().map_err(|error| error.to_string())?;
        self.runtime.block_on(async {
            let message = Message::builder()
                .topic(topic)
                .tags("test")
                .keys(vec![key.to_owned()])
                .body_slice(key.as_bytes())
                .build_unchecked();
            let sent = match queue {
                Some((broker, queue_id)) => {
                    producer
                        .send_to_queue_with_timeout(
                            message,
                            MessageQueue::from_parts(topic, broker, queue_id),
                            5000,
                        )
                        .await
                }
                None => producer.send_with_timeout(message, 5000).await,
            };
            sent.map(|_| ())
                .map_err(|error| runbook_runbooks::rocketmq::session::explain(&error))
        })
    }
}
