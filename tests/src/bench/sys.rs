//! What the bench reads from the host: a server process it owns (killed by pid when dropped),
//! its memory from `/proc`, free loopback ports, the wall clock, the fsync floor of a disk, and
//! percentiles.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// A server process started by the bench, with its output going to `log`. Dropping it kills it
/// (SIGKILL, by pid) and reaps it.
pub struct Server {
    child: Option<Child>,
    /// The wall-clock instant of the spawn (ms since the epoch).
    pub spawned_at_ms: f64,
    pub spawned: Instant,
}

impl Server {
    pub fn spawn(mut command: Command, log: &Path) -> Result<Server> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let spawned_at_ms = wall_ms();
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("spawning {:?}", command.get_program()))?;
        Ok(Server {
            child: Some(child),
            spawned_at_ms,
            spawned,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the process has exited (naming its status).
    pub fn check_alive(&mut self, what: &str) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Err(anyhow!("{what} exited ({status})"));
            }
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process's memory now.
    pub fn memory(&self) -> Result<Memory> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("the server is not running"))?;
        Memory::of(pid)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_mb: f64,
    /// VmHWM: the peak resident set since the process started.
    pub hwm_mb: f64,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        Ok(Memory {
            rss_mb: field("VmRSS:"),
            hwm_mb: field("VmHWM:"),
        })
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The wall clock, in ms since the Unix epoch (sub-ms precision).
pub fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64() * 1000.0)
}

/// An RFC 3339 instant as ms since the epoch (sub-ms precision).
pub fn instant_ms(text: &str) -> Result<f64> {
    let instant = chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{text:?} is not an RFC 3339 instant"))?;
    Ok(instant.timestamp_micros() as f64 / 1000.0)
}

/// The same for a JSON field that may be null.
pub fn field_ms(value: &Value) -> Option<f64> {
    value.as_str().and_then(|text| instant_ms(text).ok())
}

/// Free space on the file system holding `path`, in MB (infinite when unknown).
pub fn free_disk_mb(path: &Path) -> f64 {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return f64::INFINITY;
    };
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is a valid C string.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stat) != 0 {
            return f64::INFINITY;
        }
        stat.f_bavail as f64 * stat.f_frsize as f64 / 1024.0 / 1024.0
    }
}

/// The 1-minute load average (how busy the host was).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Sorted samples, for percentiles.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new(mut values: Vec<f64>) -> Samples {
        values.retain(|value| value.is_finite());
        values.sort_by(f64::total_cmp);
        Samples(values)
    }

    pub fn values(&self) -> &[f64] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The nearest-rank percentile (`q` in 0..=100); NaN when empty.
    pub fn pct(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((q / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn mean(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    pub fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(f64::NAN)
    }

    pub fn summary(&self) -> Value {
        json!({"n": self.len(), "p50": self.pct(50.0), "p90": self.pct(90.0), "p99": self.pct(99.0),
               "max": self.max(), "mean": self.mean()})
    }
}

/// The most intervals `[start, end)` open at once (e.g. timers armed and not yet fired).
pub fn peak_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i64)> = Vec::with_capacity(intervals.len() * 2);
    for (start, end) in intervals {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    // At equal instants, ends before starts.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut open, mut peak) = (0i64, 0i64);
    for (_, delta) in edges {
        open += delta;
        peak = peak.max(open);
    }
    usize::try_from(peak).unwrap_or(0)
}

/// The floor under any durable step on this disk: `iterations` of (append 4 KiB + fdatasync)
/// to a file in `dir`, timed on the wall clock; ms per iteration.
pub fn fsync_floor(dir: &Path, iterations: usize) -> Result<Samples> {
    timed_writes(&dir.join("fsync-floor.bin"), 0, iterations, |index| index)
}

/// `iterations` of (write 4 KiB at block `at(index)` + fdatasync) to a new file at `path` whose
/// first `preallocated` blocks were written and synced beforehand; ms per iteration. The file
/// is removed afterwards.
fn timed_writes(
    path: &Path,
    preallocated: usize,
    iterations: usize,
    at: impl Fn(usize) -> usize,
) -> Result<Samples> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5au8; 4096];
    for index in 0..preallocated {
        file.write_all_at(&[0u8; 4096], (index * block.len()) as u64)?;
    }
    file.sync_all()?;
    let mut samples = Vec::with_capacity(iterations);
    for index in 0..iterations {
        let started = Instant::now();
        file.write_all_at(&block, (at(index) * block.len()) as u64)?;
        file.sync_data()?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Samples::new(samples))
}

/// The same operation the store's log does for a commit: `iterations` of (overwrite 4 KiB of a
/// file whose blocks were written and synced beforehand + fdatasync), cycling over 1 MiB; ms per
/// iteration. Cheaper than an append on most file systems: no block is allocated and the file's
/// size does not change, so fdatasync writes no metadata.
pub fn overwrite_floor(dir: &Path, iterations: usize) -> Result<Samples> {
    const BLOCKS: usize = 256;
    timed_writes(
        &dir.join("overwrite-floor.bin"),
        BLOCKS,
        iterations,
        |index| index % BLOCKS,
    )
}

/// The floor under any step that runs a command: `iterations` of spawning the program `true`
/// (found on `PATH`, no shell, stdio on /dev/null) and waiting for it to end; ms per iteration.
pub fn spawn_floor(iterations: usize) -> Result<Samples> {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let status = Command::new("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("spawning `true`")?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        if !status.success() {
            bail!("`true` ended with {status}");
        }
    }
    Ok(Samples::new(samples))
}

/// Prints a progress line to stderr (stdout carries only the table).
pub fn progress(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "[bench] {line}");
}
