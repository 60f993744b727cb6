//! Percentiles and the process's own memory.

use serde_json::{json, Value};

/// count, min, p50, p90, p99, max (nearest-rank), in the unit of the samples (ms here).
pub fn summary_ms(samples: &[f64]) -> Value {
    if samples.is_empty() {
        return json!({"count": 0});
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        round3(sorted[rank - 1])
    };
    json!({
        "count": sorted.len(),
        "min": round3(sorted[0]),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round3(sorted[sorted.len() - 1]),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// VmHWM of this process (KiB), from /proc/self/status.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
