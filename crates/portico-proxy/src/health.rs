//! Health servers shared by every proxy mode: the proxy's own `/healthz` and `/livez`
//! (kube-proxy's rules: unhealthy when a queued change has waited longer than the health
//! timeout; `/healthz` also fails when the node is being deleted), and one
//! healthCheckNodePort server per Service with externalTrafficPolicy Local (200 with local
//! endpoints, 503 without, upstream's JSON body and headers).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Node;
use portico_core::plan::{Plan, ServiceName};
use tokio_util::sync::CancellationToken;

/// Taint the cluster autoscaler puts on nodes it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug)]
struct HealthState {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<Instant>,
    node_eligible: bool,
}

/// The proxy's health, as kube-proxy's ProxyHealthServer computes it.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<HealthState>,
}

impl ProxyHealth {
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(ProxyHealth {
            timeout,
            state: Mutex::new(HealthState {
                last_updated: None,
                oldest_pending: None,
                node_eligible: true,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change arrived that the data plane does not reflect yet.
    pub fn queued_update(&self) {
        let mut s = self.lock();
        if s.oldest_pending.is_none() {
            s.oldest_pending = Some(Instant::now());
        }
    }

    /// The data plane reflects everything received so far.
    pub fn updated(&self) {
        let mut s = self.lock();
        s.oldest_pending = None;
        s.last_updated = Some(SystemTime::now());
    }

    /// Node eligibility: not being deleted and not tainted for deletion.
    pub fn sync_node(&self, node: Option<&Node>) {
        let eligible = node.is_none_or(|n| {
            n.metadata.deletion_timestamp.is_none()
                && !n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
        });
        self.lock().node_eligible = eligible;
    }

    /// Healthy unless a queued change is older than the timeout.
    pub fn is_healthy(&self) -> bool {
        let s = self.lock();
        s.oldest_pending.is_none_or(|t| t.elapsed() < self.timeout)
    }

    fn snapshot(&self) -> (bool, bool, Option<SystemTime>) {
        let healthy = self.is_healthy();
        let s = self.lock();
        (healthy, s.node_eligible, s.last_updated)
    }
}

/// Go's `time.Time.String()` layout, which kube-proxy's JSON uses.
fn go_time(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
        Err(_) => String::new(),
    }
}

fn json_response(status: StatusCode, body: String, extra: &[(&'static str, String)]) -> Response {
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(*name, v);
        }
    }
    resp
}

fn healthz(health: &ProxyHealth, livez: bool) -> Response {
    let (healthy, eligible, last) = health.snapshot();
    let now = SystemTime::now();
    let ok = healthy && (livez || eligible);
    // Upstream reports "now" as lastUpdated whenever it is healthy.
    let last = if ok { Some(now) } else { last };
    let last = last
        .map(go_time)
        .unwrap_or_else(|| "0001-01-01 00:00:00 +0000 UTC".into());
    let body = if livez {
        format!(
            r#"{{"lastUpdated": "{last}","currentTime": "{}"}}"#,
            go_time(now)
        )
    } else {
        format!(
            r#"{{"lastUpdated": "{last}","currentTime": "{}", "nodeEligible": {eligible}}}"#,
            go_time(now)
        )
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body, &[])
}

/// The `/healthz` and `/livez` router.
pub fn healthz_router(health: Arc<ProxyHealth>) -> Router {
    let h2 = health.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || std::future::ready(healthz(&health, false))),
        )
        .route(
            "/livez",
            get(move || std::future::ready(healthz(&h2, true))),
        )
}

/// Upstream's health check body (tab-indented JSON, no trailing newline).
pub fn service_health_body(
    service: &ServiceName,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        q(&service.namespace),
        q(&service.name)
    )
}

fn service_health(service: &ServiceName, count: usize, health: &ProxyHealth) -> Response {
    let healthy = health.is_healthy();
    let status = if count != 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        service_health_body(service, count, healthy),
        &[("x-load-balancing-endpoint-weight", count.to_string())],
    )
}

struct HealthCheckServer {
    port: u16,
    count: Arc<AtomicUsize>,
    stop: CancellationToken,
}

/// The healthCheckNodePort servers, kept in line with the plan after each sync.
pub struct ServiceHealthServers {
    addresses: Vec<IpAddr>,
    health: Arc<ProxyHealth>,
    servers: HashMap<ServiceName, HealthCheckServer>,
    shutdown: CancellationToken,
}

impl ServiceHealthServers {
    /// Servers listen on `addresses` (the node-port addresses).
    pub fn new(
        addresses: Vec<IpAddr>,
        health: Arc<ProxyHealth>,
        shutdown: CancellationToken,
    ) -> Self {
        ServiceHealthServers {
            addresses,
            health,
            servers: HashMap::new(),
            shutdown,
        }
    }

    /// Ports currently served, by Service.
    pub fn ports(&self) -> HashMap<ServiceName, u16> {
        self.servers
            .iter()
            .map(|(k, v)| (k.clone(), v.port))
            .collect()
    }

    pub fn sync(&mut self, plan: &Plan) {
        self.servers.retain(|name, server| {
            let keep = plan
                .health_checks
                .get(name)
                .is_some_and(|h| h.node_port == server.port);
            if !keep {
                server.stop.cancel();
            }
            keep
        });
        for (name, check) in &plan.health_checks {
            if let Some(server) = self.servers.get(name) {
                server.count.store(check.local_endpoints, Ordering::Relaxed);
                continue;
            }
            let count = Arc::new(AtomicUsize::new(check.local_endpoints));
            let stop = self.shutdown.child_token();
            let mut bound = 0;
            for ip in &self.addresses {
                let addr = SocketAddr::new(*ip, check.node_port);
                let listener = match std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                    .and_then(tokio::net::TcpListener::from_std)
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(service = %name, %addr, error = %e, "failed to start healthcheck");
                        continue;
                    }
                };
                bound += 1;
                let (svc, c, h, s) = (
                    name.clone(),
                    count.clone(),
                    self.health.clone(),
                    stop.clone(),
                );
                let router = Router::new().fallback(move || {
                    std::future::ready(service_health(&svc, c.load(Ordering::Relaxed), &h))
                });
                tokio::spawn(async move {
                    let _ = axum::serve(listener, router)
                        .with_graceful_shutdown(async move { s.cancelled().await })
                        .await;
                });
            }
            if bound > 0 {
                self.servers.insert(
                    name.clone(),
                    HealthCheckServer {
                        port: check.node_port,
                        count,
                        stop,
                    },
                );
            }
        }
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for server in self.servers.values() {
            server.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_upstream_layout() {
        let body = service_health_body(&ServiceName::new("ns", "web"), 2, true);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(parsed["localEndpoints"], 2);
    }

    #[test]
    fn queued_update_past_timeout_is_unhealthy() {
        let health = ProxyHealth::new(Duration::from_millis(0));
        assert!(health.is_healthy());
        health.queued_update();
        std::thread::sleep(Duration::from_millis(2));
        assert!(!health.is_healthy());
        health.updated();
        assert!(health.is_healthy());
    }
}
