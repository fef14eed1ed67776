//! `rocketmq-cluster`: brings up a local RocketMQ cluster (the test harness's) for a person, prints
//! how to reach it and what to pass to the `rocketmq.*` runbooks, and stops everything on Ctrl-C.
//!
//! ```text
//! cargo run -p runbook-tests --bin rocketmq-cluster -- [--namesrvs N] [--brokers a,b,c] [--slaves N] [--dir DIR]
//! ```
//!
//! `--slaves N` gives each broker group N slaves (brokerId 1..N, `brokerRole=SLAVE`) next to its
//! master; their directories are `<brokerName>-s<id>`, and `<dir>/addr/<host:port>` points at
//! every broker's directory, so commands keyed by `{{ broker_addr }}` reach masters and slaves.
//!
//! ```text
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use runbook_tests::cluster::Cluster;

fn main() -> Result<()> {
    let mut namesrvs = 1;
    let mut brokers = vec!["broker-a".to_owned(), "broker-b".to_owned()];
    let mut dir: Option<PathBuf> = None;
    let mut slaves = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--namesrvs" => {
                namesrvs = args
                    .next()
                    .context("--namesrvs needs a number")?
                    .parse()
                    .context("--namesrvs needs a number")?
            }
            "--brokers" => {
                brokers = args
                    .next()
                    .context("--brokers needs names")?
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--slaves" => {
                slaves = args
                    .next()
                    .context("--slaves needs a number")?
                    .parse()
                    .context("--slaves needs a number")?
            }
            "--dir" => dir = Some(PathBuf::from(args.next().context("--dir needs a path")?)),
            "-h" | "--help" => {
                println!("usage: rocketmq-cluster [--namesrvs N] [--brokers broker-a,broker-b] [--slaves N] [--dir DIR]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if namesrvs == 0 || brokers.is_empty() {
        bail!("a cluster needs at least one NameServer and one broker");
    }
    let names: Vec<&str> = brokers.iter().map(String::as_str).collect();
    eprintln!(
        "starting {namesrvs} NameServer(s) and broker group(s) {} ({slaves} slave(s) each) ...",
        names.join(", ")
    );
    let cluster = match dir {
        Some(dir) => Cluster::start_in_groups(dir, None, namesrvs, &names, slaves)?,
        None => Cluster::start_groups(namesrvs, &names, slaves)?,
    };
    println!("cluster      {}", cluster.name);
    println!("dir          {}", cluster.dir.display());
    println!("namesrv      {}", cluster.namesrv());
    for broker in cluster.brokers.values() {
        println!(
            "broker       {}  id={}  addr={}  config={}  log={}",
            broker.name,
            broker.id,
            broker.addr,
            broker.config.display(),
            broker.log.display()
        );
    }
    println!("stop_command  {}", cluster.stop_command());
    println!("start_command {}", cluster.start_command());
    println!("by address    {}", cluster.stop_command_by_addr());
    println!("              {}", cluster.start_command_by_addr());
    println!("              {}", cluster.config_template_by_addr());
    println!();
    let group = names
        .get(1)
        .or_else(|| names.first())
        .copied()
        .unwrap_or("broker-a");
    println!(
        "e.g.: runbook start rocketmq.broker.decommission -p namesrv='{}' -p cluster={} -p broker={group} \\",
        cluster.namesrv(),
        cluster.name
    );
    println!(
        "        -p broker_config='{}' -p retention=30s \\",
        cluster.config_template_by_addr()
    );
    println!(
        "        -p stop_command='{}'",
        cluster.stop_command_by_addr()
    );
    println!();
    println!("Ctrl-C stops every process.");
    wait_for_interrupt()?;
    eprintln!("stopping ...");
    drop(cluster);
    Ok(())
}

fn wait_for_interrupt() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    })?;
    Ok(())
}
