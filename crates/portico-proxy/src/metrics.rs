//! Prometheus metrics with kube-proxy's names, served on `--metrics-bind-address`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The proxy's metrics.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub network_programming: Histogram,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub sync_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let network_programming = Histogram::new([
            0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 30.0, 60.0,
            120.0, 300.0,
        ]);
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let sync_failures = Counter::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            network_programming.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            last_sync.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_failures",
            "Number of failed proxy rule syncs",
            sync_failures.clone(),
        );
        Arc::new(Metrics {
            registry,
            sync_duration,
            network_programming,
            last_sync,
            sync_failures,
        })
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The `/metrics` router.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = metrics.encode();
            std::future::ready(
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
                    .into_response(),
            )
        }),
    )
}
