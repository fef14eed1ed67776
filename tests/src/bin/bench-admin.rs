//! `bench-admin`: copying a broker's subscription groups and topics to a new broker, by
//! `runbook` and directly with the admin library, on a real cluster on 127.0.0.1.
//!
//! ```text
//! cargo build --release -p runbook-cli -p runbook-tests
//! $CARGO_TARGET_DIR/release/bench-admin [--topics 10000] [--groups 2000] [--concurrency 16]
//! ```
//!
//! One NameServer and a source broker holding `--topics` topics and `--groups` subscription
//! groups (created untimed). Then two empty brokers join. **Direct**: one admin session reads
//! the source's groups and topics and creates every group, then every topic, on the first new
//! broker, `--concurrency` requests in flight — the floor the library allows. **runbook**: a
//! daemon runs a one-step runbook, `rocketmq.copy_metadata` from the source to the second new
//! broker; its time is the step's, from the journal (it also reads the target before and after,
//! and checks the copy). Both targets are then checked to hold every group and topic.
//!
//! Then what one admin request costs: a cluster query on a fresh session and on a reused one,
//! directly, and per step of a run of 100 read-only `rocketmq.cluster` steps in the daemon.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cheetah_string::CheetahString;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use rocketmq_client_rust::{ConsumerAdmin as _, DefaultMQAdminExt, TopicAdmin as _};
use rocketmq_model::topic::TopicConfig;
use rocketmq_protocol::protocol::subscription::subscription_group_config::SubscriptionGroupConfig;
use runbook_tests::cluster::Cluster;
use runbook_tests::{step_of, Daemon};

struct Options {
    topics: usize,
    groups: usize,
    concurrency: usize,
}

fn main() -> Result<()> {
    let options = parse_args()?;
    let (topics, groups, width) = (options.topics, options.groups, options.concurrency);
    let mut cluster = Cluster::start(1, &["broker-src"])?;
    let source = cluster.broker("broker-src")?.addr.clone();
    eprintln!("[bench-admin] filling broker-src: {topics} topics, {groups} groups");
    let filled = Instant::now();
    let source_addr = source.clone();
    cluster.with_admin(&cluster.namesrv(), |admin| async move {
        let addr = CheetahString::from(source_addr.as_str());
        in_flight(width, 0..groups, |index| {
            let (admin, addr) = (Arc::clone(&admin), addr.clone());
            async move {
                let config = SubscriptionGroupConfig::new(format!("bench_group_{index}").into());
                admin
                    .create_and_update_subscription_group_config(addr, config)
                    .await
                    .map_err(|error| anyhow!("creating group {index}: {error}"))
            }
        })
        .await?;
        in_flight(width, 0..topics, |index| {
            let (admin, addr) = (Arc::clone(&admin), addr.clone());
            async move {
                let mut config = TopicConfig::with_queues(format!("BenchTopic{index}"), 4, 4);
                config.perm = 6;
                admin
                    .create_and_update_topic_config(addr, config)
                    .await
                    .map_err(|error| anyhow!("creating topic {index}: {error}"))
            }
        })
        .await
    })?;
    eprintln!(
        "[bench-admin] filled in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    let direct = cluster.add_broker("broker-direct")?.addr.clone();
    let ours = cluster.add_broker("broker-ours")?.addr.clone();
    cluster.wait_registered("broker-direct", Duration::from_secs(60))?;
    cluster.wait_registered("broker-ours", Duration::from_secs(60))?;

    eprintln!("[bench-admin] direct copy, {width} in flight");
    let (source_addr, direct_addr) = (source.clone(), direct.clone());
    let direct_seconds = cluster.with_admin(&cluster.namesrv(), |admin| async move {
        let started = Instant::now();
        let from = CheetahString::from(source_addr.as_str());
        let to = CheetahString::from(direct_addr.as_str());
        let wrapper = admin
            .get_all_subscription_group(from.clone(), 6_000)
            .await
            .map_err(|error| anyhow!("reading the source's groups: {error}"))?;
        let wanted_groups: Vec<SubscriptionGroupConfig> = wrapper
            .subscription_group_table
            .into_iter()
            .filter(|(name, _)| name.starts_with("bench_group_"))
            .map(|(_, config)| config)
            .collect();
        let wrapper = admin
            .get_all_topic_config(from, 6_000)
            .await
            .map_err(|error| anyhow!("reading the source's topics: {error}"))?;
        let wanted_topics: Vec<TopicConfig> = wrapper
            .topic_config_table()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| name.starts_with("BenchTopic"))
            .map(|(_, config)| config)
            .collect();
        in_flight(width, wanted_groups, |config| {
            let (admin, to) = (Arc::clone(&admin), to.clone());
            async move {
                admin
                    .create_and_update_subscription_group_config(to, config)
                    .await
                    .map_err(|error| anyhow!("copying a group: {error}"))
            }
        })
        .await?;
        in_flight(width, wanted_topics, |config| {
            let (admin, to) = (Arc::clone(&admin), to.clone());
            async move {
                admin
                    .create_and_update_topic_config(to, config)
                    .await
                    .map_err(|error| anyhow!("copying a topic: {error}"))
            }
        })
        .await?;
        Ok(started.elapsed().as_secs_f64())
    })?;

    // The step finds the source by its name on the NameServer: a broker that has just been
    // filled with thousands of topics may take a heartbeat or two to register again.
    cluster.wait_registered("broker-src", Duration::from_secs(300))?;
    eprintln!("[bench-admin] runbook: rocketmq.copy_metadata");
    let daemon = Daemon::start()?;
    let file = daemon.data_dir.join("bench-copy.toml");
    std::fs::write(
        &file,
        "name = \"bench-copy\"\n\n[params.namesrv]\nrequired = true\n\n\
         [[steps]]\nid = \"copy\"\naction = \"rocketmq.copy_metadata\"\n\
         with = { namesrv = \"{{ params.namesrv }}\", source = \"broker-src\", target = \"broker-ours\" }\n",
    )?;
    let namesrv = cluster.namesrv();
    let run = daemon.start_run(
        file.to_str().context("a UTF-8 path")?,
        &[("namesrv", &namesrv)],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", Duration::from_secs(1800))?;
    let step = step_of(&shown, "copy").context("the copy step")?;
    let at = |field: &str| -> Result<f64> {
        let text = step[field]
            .as_str()
            .with_context(|| format!("the step's {field}"))?;
        Ok(chrono::DateTime::parse_from_rfc3339(text)?.timestamp_micros() as f64 / 1e6)
    };
    let ours_seconds = at("finished_at")? - at("started_at")?;
    let output = &step["output"];
    let copied = (
        output["groups"].as_array().map_or(0, Vec::len),
        output["topics"].as_array().map_or(0, Vec::len),
    );

    for (name, addr) in [("broker-direct", &direct), ("broker-ours", &ours)] {
        let held = holds(&cluster, addr)?;
        if held != (groups, topics) {
            bail!("{name} holds {held:?} (groups, topics) of ({groups}, {topics})");
        }
    }
    if copied != (groups, topics) {
        bail!("the copy step reports {copied:?} (groups, topics) copied of ({groups}, {topics})");
    }
    let (fresh_ms, reused_ms) = sessions(&cluster.namesrv(), 200)?;
    let step_ms = read_steps(&daemon, &namesrv, 100)?;
    let ratio = ours_seconds / direct_seconds;
    println!(
        "copy of {topics} topics and {groups} groups to a new broker, {width} in flight:\n  \
         admin library directly: {direct_seconds:.2} s\n  \
         runbook (rocketmq.copy_metadata step): {ours_seconds:.2} s\n  \
         runbook ÷ direct: {ratio:.2} (target ≤ 1.5: {})",
        if ratio <= 1.5 { "met" } else { "not met" }
    );
    println!(
        "one cluster query: on a fresh admin session (connect, query, close) {fresh_ms:.2} ms; \
         on one reused session {reused_ms:.2} ms\n  \
         runbook, one rocketmq.cluster step (the query, its journal commits): {step_ms:.2} ms per step"
    );
    drop(daemon);
    cluster.stop_all();
    Ok(())
}

/// The mean time per step of a run of `count` `rocketmq.cluster` steps (a read-only admin
/// query each, as a lag poll makes), from the run's start to its end in the journal; ms.
fn read_steps(daemon: &Daemon, namesrv: &str, count: usize) -> Result<f64> {
    let mut text = String::from("name = \"bench-read\"\n\n[params.namesrv]\nrequired = true\n");
    for index in 0..count {
        text.push_str(&format!(
            "\n[[steps]]\nid = \"cluster_{index}\"\naction = \"rocketmq.cluster\"\n\
             with = {{ namesrv = \"{{{{ params.namesrv }}}}\" }}\n"
        ));
    }
    let file = daemon.data_dir.join("bench-read.toml");
    std::fs::write(&file, text)?;
    let run = daemon.start_run(
        file.to_str().context("a UTF-8 path")?,
        &[("namesrv", namesrv)],
    )?;
    let shown = daemon.wait_state(&run, "succeeded", Duration::from_secs(600))?;
    let at = |field: &str| -> Result<f64> {
        let text = shown[field]
            .as_str()
            .with_context(|| format!("the run's {field}"))?;
        Ok(chrono::DateTime::parse_from_rfc3339(text)?.timestamp_micros() as f64 / 1e3)
    };
    Ok((at("finished_at")? - at("created_at")?) / count as f64)
}

/// What a session costs: the mean time of a cluster query with a session of its own (opened
/// and closed around it), and on one reused session (as the daemon's actions share one); ms.
fn sessions(namesrv: &str, rounds: u32) -> Result<(f64, f64)> {
    use runbook_runbooks::rocketmq::session::Admin;
    let namesrv = vec![namesrv.to_owned()];
    let failed = |failure: runbook_engine::action::ActionFailure| anyhow!(failure.message);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..rounds {
            let admin = Admin::connect(&namesrv).await.map_err(failed)?;
            admin.cluster_info().await.map_err(failed)?;
            admin.close().await;
        }
        let fresh = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
        let admin = Admin::connect(&namesrv).await.map_err(failed)?;
        let started = Instant::now();
        for _ in 0..rounds {
            admin.cluster_info().await.map_err(failed)?;
        }
        let reused = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
        admin.close().await;
        Ok((fresh, reused))
    })
}

/// Runs `request` for every item, `width` at a time; the first error ends it.
async fn in_flight<I, F, Fut>(width: usize, items: I, request: F) -> Result<()>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    stream::iter(items)
        .map(request)
        .buffer_unordered(width.max(1))
        .try_for_each(|()| std::future::ready(Ok(())))
        .await
}

/// How many bench groups and topics the broker at `addr` holds.
fn holds(cluster: &Cluster, addr: &str) -> Result<(usize, usize)> {
    let addr = addr.to_owned();
    cluster.with_admin(
        &cluster.namesrv(),
        |admin: Arc<DefaultMQAdminExt>| async move {
            let at = CheetahString::from(addr.as_str());
            let groups = admin
                .get_all_subscription_group(at.clone(), 6_000)
                .await
                .map_err(|error| anyhow!("reading groups of {addr}: {error}"))?;
            let topics = admin
                .get_all_topic_config(at, 6_000)
                .await
                .map_err(|error| anyhow!("reading topics of {addr}: {error}"))?;
            Ok((
                groups
                    .subscription_group_table
                    .keys()
                    .filter(|name| name.starts_with("bench_group_"))
                    .count(),
                topics.topic_config_table().map_or(0, |table| {
                    table
                        .keys()
                        .filter(|name| name.starts_with("BenchTopic"))
                        .count()
                }),
            ))
        },
    )
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        topics: 10_000,
        groups: 2_000,
        concurrency: runbook_runbooks::rocketmq::session::CONCURRENT_REQUESTS,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{flag} needs a number"))?
                .replace('_', "")
                .parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--topics" => options.topics = number("--topics")?,
            "--groups" => options.groups = number("--groups")?,
            "--concurrency" => options.concurrency = number("--concurrency")?.max(1),
            "-h" | "--help" => {
                println!("usage: bench-admin [--topics N] [--groups N] [--concurrency N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(options)
}
