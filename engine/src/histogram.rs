//! A fixed-bucket histogram for `/metrics` (Prometheus text format), kept by whoever measures:
//! the store writer (sync latency) and the timer service (lateness). Recording is a few
//! additions under a lock; rendering never scans anything but the buckets.

use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds, in seconds, shared by every histogram here: 100 µs to 60 s.
pub const BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0,
];

/// The buckets of what takes minutes to days (a step of a runbook), in seconds.
pub const LONG_BOUNDS: [f64; 12] = [
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0, 259200.0, 604800.0,
];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<Counts>,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::with_bounds(&BOUNDS)
    }
}

#[derive(Debug, Default, Clone)]
struct Counts {
    /// Per bucket (not cumulative), plus one for what is above the last bound.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// A histogram with these (increasing) bucket bounds, in seconds.
    pub fn with_bounds(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            inner: Mutex::new(Counts {
                buckets: vec![0; bounds.len() + 1],
                ..Counts::default()
            }),
        }
    }

    pub fn record(&self, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        let mut counts = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.buckets[bucket] += 1;
        counts.sum += seconds;
        counts.count += 1;
    }

    /// The histogram as Prometheus text: `# HELP`, `# TYPE`, cumulative buckets, sum, count.
    pub fn render(&self, name: &str, help: &str) -> String {
        let counts = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut text = String::new();
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(counts.buckets.iter()) {
            cumulative += count;
            let _ = writeln!(text, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {}", counts.count);
        let _ = writeln!(text, "{name}_sum {:.6}", counts.sum);
        let _ = writeln!(text, "{name}_count {}", counts.count);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_top_one_counts_everything() {
        let histogram = Histogram::default();
        for seconds in [0.00005, 0.0003, 0.0003, 2.0, 1e9, f64::NAN] {
            histogram.record(seconds);
        }
        let text = histogram.render("x_seconds", "test");
        assert!(
            text.contains("x_seconds_bucket{le=\"0.0001\"} 2\n"),
            "{text}"
        ); // 5e-5 and NaN → 0
        assert!(
            text.contains("x_seconds_bucket{le=\"0.0005\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"10\"} 5\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 6\n"), "{text}");
        assert!(text.contains("x_seconds_count 6\n"), "{text}");
    }
}
