//! A fixed number of concurrent workers, each with its own connection, taking items in order
//! until none are left: "N requests, W in flight".

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::task::JoinSet;

use super::http::{Conn, Endpoint};
use super::sys::progress;

/// Runs `job(conn, index)` for every index in `0..items`, at most `width` at a time; returns the
/// results in index order. The first error stops everything.
pub async fn pool<T, F, Fut>(
    label: &str,
    endpoint: &Endpoint,
    items: usize,
    width: usize,
    job: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(Conn, T)>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    // Large phases say how far they are, ten times.
    let report_every = if items >= 50_000 {
        items / 10
    } else {
        usize::MAX
    };
    let mut workers = JoinSet::new();
    for _ in 0..width.min(items) {
        let mut conn = endpoint.connect().await?;
        let (job, next, label) = (job.clone(), next.clone(), label.to_owned());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= items {
                    return Ok::<_, anyhow::Error>(done);
                }
                if index > 0 && index % report_every == 0 {
                    progress(&format!("{label}: {index}/{items}"));
                }
                let (back, value) = job(conn, index).await?;
                conn = back;
                done.push((index, value));
            }
        });
    }
    let mut results: Vec<Option<T>> = (0..items).map(|_| None).collect();
    while let Some(joined) = workers.join_next().await {
        for (index, value) in joined.map_err(|error| anyhow!("a worker panicked: {error}"))?? {
            results[index] = Some(value);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// Waits until item `index` is due when items start `per_s` a second from `started` (no wait
/// without a rate): an open-loop arrival rate, the same for both systems.
pub async fn pace(started: Instant, per_s: Option<f64>, index: usize) {
    if let Some(per_s) = per_s.filter(|per_s| *per_s > 0.0) {
        let due = started + Duration::from_secs_f64(index as f64 / per_s);
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
    }
}
