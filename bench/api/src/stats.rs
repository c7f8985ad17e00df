//! Latency summaries and small helpers shared by the measurements.
//! Must not: do I/O other than reading `/proc`.

use std::time::Duration;

/// Summary of one batch of operations.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub ops: usize,
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarises `latencies` of operations that took `elapsed` in total.
    pub fn of(mut latencies: Vec<Duration>, elapsed: Duration) -> Summary {
        latencies.sort_unstable();
        Summary {
            ops: latencies.len(),
            rate: latencies.len() as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }
}

/// The nearest-rank percentile of sorted values (zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The 1-minute load average, as text.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM), in MiB.
pub fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let cases = [(0.50, 50), (0.99, 99), (1.0, 100), (0.001, 1)];
        for (p, want) in cases {
            assert_eq!(percentile(&values, p), Duration::from_millis(want), "p={p}");
        }
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 3.0);
        assert_eq!(median(vec![]), 0.0);
    }
}
