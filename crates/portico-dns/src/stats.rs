//! Query counters and the latency histogram, rendered in the Prometheus text format.
//!
//! Owns: per-worker counters (one cache-line-aligned slot per UDP worker so the hot path never
//! shares a written cache line) and their rendering. Must not: block or allocate when counting.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::wire;

/// Query types counted by name; everything else is "other".
const TYPES: [(u16, &str); 10] = [
    (wire::TYPE_A, "A"),
    (wire::TYPE_AAAA, "AAAA"),
    (wire::TYPE_SRV, "SRV"),
    (wire::TYPE_PTR, "PTR"),
    (wire::TYPE_TXT, "TXT"),
    (wire::TYPE_CNAME, "CNAME"),
    (wire::TYPE_SOA, "SOA"),
    (wire::TYPE_NS, "NS"),
    (wire::TYPE_ANY, "ANY"),
    (0, "other"),
];
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0,
];

/// Counters of one worker.
#[repr(align(128))]
#[derive(Default)]
pub struct Slot {
    types: [AtomicU64; TYPES.len()],
    rcodes: [AtomicU64; RCODES.len()],
    buckets: [AtomicU64; BUCKETS.len() + 1],
    latency_ns: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    forwarded: AtomicU64,
    autopath: AtomicU64,
    truncated: AtomicU64,
}

impl Slot {
    /// Counts one answered query.
    pub fn record(&self, qtype: u16, rcode: u8, nanos: u64) {
        let t = TYPES
            .iter()
            .position(|(code, _)| *code == qtype)
            .unwrap_or(TYPES.len() - 1);
        self.types[t].fetch_add(1, Relaxed);
        let r = usize::from(rcode).min(RCODES.len() - 1);
        self.rcodes[r].fetch_add(1, Relaxed);
        let seconds = nanos as f64 / 1e9;
        let b = BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(BUCKETS.len());
        self.buckets[b].fetch_add(1, Relaxed);
        self.latency_ns.fetch_add(nanos, Relaxed);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Relaxed);
    }

    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Relaxed);
    }

    pub fn autopath(&self) {
        self.autopath.fetch_add(1, Relaxed);
    }

    pub fn truncated(&self) {
        self.truncated.fetch_add(1, Relaxed);
    }
}

/// All workers' counters.
pub struct Stats {
    slots: Box<[Slot]>,
}

impl Stats {
    /// `workers` UDP slots plus one shared slot for TCP and deferred answers.
    pub fn new(workers: usize) -> Stats {
        Stats {
            slots: (0..=workers).map(|_| Slot::default()).collect(),
        }
    }

    /// The slot of a worker (the last slot is shared by TCP and async work).
    pub fn slot(&self, worker: usize) -> &Slot {
        let last = self.slots.len() - 1;
        &self.slots[worker.min(last)]
    }

    pub fn shared(&self) -> &Slot {
        &self.slots[self.slots.len() - 1]
    }

    fn sum(&self, f: impl Fn(&Slot) -> &AtomicU64) -> u64 {
        self.slots.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// Total answered queries.
    pub fn total(&self) -> u64 {
        (0..RCODES.len()).map(|i| self.sum(|s| &s.rcodes[i])).sum()
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP portico_dns_requests_total DNS queries answered, by query type.\n# TYPE portico_dns_requests_total counter"
        );
        for (i, (_, name)) in TYPES.iter().enumerate() {
            let _ = writeln!(
                out,
                "portico_dns_requests_total{{type=\"{name}\"}} {}",
                self.sum(|s| &s.types[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP portico_dns_responses_total DNS responses, by rcode.\n# TYPE portico_dns_responses_total counter"
        );
        for (i, name) in RCODES.iter().enumerate() {
            let _ = writeln!(
                out,
                "portico_dns_responses_total{{rcode=\"{name}\"}} {}",
                self.sum(|s| &s.rcodes[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP portico_dns_request_duration_seconds Time from receiving a query to having its answer.\n# TYPE portico_dns_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.sum(|s| &s.buckets[i]);
            let _ = writeln!(
                out,
                "portico_dns_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.sum(|s| &s.buckets[BUCKETS.len()]);
        let _ = writeln!(
            out,
            "portico_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "portico_dns_request_duration_seconds_sum {}\nportico_dns_request_duration_seconds_count {cumulative}",
            self.sum(|s| &s.latency_ns) as f64 / 1e9
        );
        for (name, help, value) in [
            (
                "portico_dns_cache_hits_total",
                "Forwarded queries answered from the cache.",
                self.sum(|s| &s.cache_hits),
            ),
            (
                "portico_dns_cache_misses_total",
                "Forwarded queries not in the cache.",
                self.sum(|s| &s.cache_misses),
            ),
            (
                "portico_dns_forward_requests_total",
                "Queries sent to upstream resolvers.",
                self.sum(|s| &s.forwarded),
            ),
            (
                "portico_dns_autopath_total",
                "Queries answered by server-side search-path expansion.",
                self.sum(|s| &s.autopath),
            ),
            (
                "portico_dns_truncated_total",
                "UDP answers truncated (TC bit set).",
                self.sum(|s| &s.truncated),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for (name, help, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
