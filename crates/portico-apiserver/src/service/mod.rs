//! Service registry strategy: `ServiceHooks` runs kube-apiserver's Service semantics
//! (defaulting, strategy steps, validation from `portico_core::service`) and allocates cluster
//! IPs and node ports; `IpAddressHooks` and `ServiceCidrHooks` serve networking.k8s.io/v1
//! `ipaddresses` and `servicecidrs`.
//!
//! Allocation is safe with several API servers on one store: every cluster IP is an IPAddress
//! object and every node port a key under `keys::NODE_PORT_PREFIX`, each created with
//! `Compare::ModRevision(key, 0)` in the same transaction as the Service. The in-memory bitmaps
//! (kept in sync by watching those prefixes) only make picks fast.
//!
//! Must not: serve HTTP or touch keys other than Services', IPAddresses', ServiceCIDRs' and
//! node ports'.

mod cidr_hooks;
mod hooks;
mod state;
mod sync;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use portico_store::Store;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

pub use cidr_hooks::{IpAddressHooks, ServiceCidrHooks};
pub use sync::{RepairFinding, RepairReport};

use crate::error::{ApiError, Resource};
use crate::keys;
use state::AllocState;

/// The Service resource, for error messages.
pub const SERVICES: Resource<'static> = Resource {
    group: "",
    plural: "services",
    kind: "Service",
};
pub const IPADDRESSES: Resource<'static> = Resource {
    group: "networking.k8s.io",
    plural: "ipaddresses",
    kind: "IPAddress",
};
pub const SERVICECIDRS: Resource<'static> = Resource {
    group: "networking.k8s.io",
    plural: "servicecidrs",
    kind: "ServiceCIDR",
};

/// Allocator configuration (kube-apiserver flags).
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// `--service-cluster-ip-range`: one CIDR, or two (one per family), primary first.
    pub cluster_ip_ranges: Vec<IpNet>,
    /// `--service-node-port-range`.
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            cluster_ip_ranges: vec![
                "10.96.0.0/12"
                    .parse()
                    .unwrap_or_else(|_| IpNet::V4(Default::default())),
            ],
            node_port_range: 30000..=32767,
        }
    }
}

impl ServiceConfig {
    /// Checks the flags as kube-apiserver does at start-up.
    pub fn validate(&self) -> Result<(), String> {
        match self.cluster_ip_ranges.as_slice() {
            [] => return Err("--service-cluster-ip-range must name at least one CIDR".into()),
            [_] => {}
            [a, b] if a.addr().is_ipv4() != b.addr().is_ipv4() => {}
            [_, _] => {
                return Err("--service-cluster-ip-range must have one CIDR per IP family".into());
            }
            _ => return Err("--service-cluster-ip-range may hold at most two CIDRs".into()),
        }
        if self.node_port_range.start() > self.node_port_range.end() {
            return Err("--service-node-port-range is empty".into());
        }
        Ok(())
    }
}

/// Shared state of the three hooks: the store, the configuration and the allocation picture.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub cfg: ServiceConfig,
    pub state: Mutex<AllocState>,
    pub synced: OnceCell<()>,
    pub report: Mutex<RepairReport>,
    /// Set once the watches run, so a second `start` does not add more.
    pub watching: std::sync::atomic::AtomicBool,
    /// Stops the watch task when the last hook goes away.
    pub stop: tokio_util::sync::CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, AllocState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads state from the store once (repairing it), before the first write is served.
    pub async fn ensure_synced(self: &Arc<Self>) -> Result<(), ApiError> {
        self.synced
            .get_or_try_init(|| async {
                let report = sync::sync(self).await?;
                *self.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
                Ok::<(), ApiError>(())
            })
            .await
            .map(|_| ())
    }
}

/// The Service strategy hooks (register for `services`).
pub struct ServiceHooks {
    pub(crate) shared: Arc<Shared>,
}

impl ServiceHooks {
    /// Builds the hooks. Call `start` before serving (writes also load state lazily).
    pub fn new(store: Arc<dyn Store>, cfg: ServiceConfig) -> Arc<Self> {
        let state = AllocState::new(&cfg.cluster_ip_ranges, cfg.node_port_range.clone());
        Arc::new(ServiceHooks {
            shared: Arc::new(Shared {
                store,
                cfg,
                state: Mutex::new(state),
                synced: OnceCell::new(),
                report: Mutex::new(RepairReport::default()),
                watching: std::sync::atomic::AtomicBool::new(false),
                stop: tokio_util::sync::CancellationToken::new(),
            }),
        })
    }

    /// Loads and repairs allocation state from the store (creating the default ServiceCIDR
    /// `kubernetes` if missing) and spawns the watches that keep it in sync. Returns what the
    /// repair found, so the caller can emit Events.
    pub async fn start(&self) -> Result<RepairReport, ApiError> {
        self.shared.ensure_synced().await?;
        if !self
            .shared
            .watching
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            sync::spawn_watches(&self.shared);
        }
        Ok(self.last_repair())
    }

    /// Rebuilds allocation state from the store now (as on start) and returns the repair report.
    pub async fn resync(&self) -> Result<RepairReport, ApiError> {
        let report = sync::sync(&self.shared).await?;
        *self.shared.report.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
        Ok(report)
    }

    /// What the last repair found.
    pub fn last_repair(&self) -> RepairReport {
        self.shared
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hooks for `ipaddresses` sharing this allocator.
    pub fn ip_address_hooks(&self) -> Arc<IpAddressHooks> {
        Arc::new(IpAddressHooks {
            shared: self.shared.clone(),
        })
    }

    /// Hooks for `servicecidrs` sharing this allocator.
    pub fn service_cidr_hooks(&self) -> Arc<ServiceCidrHooks> {
        Arc::new(ServiceCidrHooks {
            shared: self.shared.clone(),
        })
    }

    /// Free addresses in the ranges of `family` and free node ports (for metrics and tests).
    pub fn free_counts(&self) -> (usize, usize) {
        let st = self.shared.lock();
        let ips = st
            .ranges
            .values()
            .flat_map(|f| f.ranges.iter())
            .map(|r| r.free())
            .sum();
        (ips, st.ports.bitmap().free())
    }
}

/// Store key of the IPAddress object for `ip`.
pub fn ip_key(ip: &IpAddr) -> String {
    keys::object_key("ipaddresses", None, &ip.to_string())
}

/// Store key of a node-port reservation.
pub fn node_port_key(port: i32) -> String {
    format!("{}{port}", keys::NODE_PORT_PREFIX)
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The IPAddress object the allocator writes for a Service's cluster IP.
pub fn ip_address_object(ip: &IpAddr, namespace: &str, service: &str) -> bytes::Bytes {
    ip_address_json(
        ip,
        namespace,
        service,
        &crate::object::new_uid(),
        &now_rfc3339(),
    )
}

/// The IPAddress object's stored JSON, written directly in the canonical form (members sorted,
/// compact) that encoding a `Value` gives: one is written with every Service create.
fn ip_address_json(
    ip: &IpAddr,
    namespace: &str,
    service: &str,
    uid: &str,
    created: &str,
) -> bytes::Bytes {
    use portico_core::service::cidr::{LABEL_IP_FAMILY, LABEL_MANAGED_BY, MANAGED_BY_ALLOCATOR};
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    // Label keys sort by name: the family label before the managed-by one.
    let mut labels = [
        (LABEL_IP_FAMILY, family),
        (LABEL_MANAGED_BY, MANAGED_BY_ALLOCATOR),
    ];
    labels.sort();
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}:{}", q(k), q(v)))
        .collect();
    let text = format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"IPAddress","metadata":{{"creationTimestamp":{},"labels":{{{}}},"name":{},"uid":{}}},"spec":{{"parentRef":{{"group":"","name":{},"namespace":{},"resource":"services"}}}}}}"#,
        q(created),
        labels.join(","),
        q(&ip.to_string()),
        q(uid),
        q(service),
        q(namespace),
    );
    bytes::Bytes::from(text)
}

/// The ServiceCIDR object made from the flags.
pub fn default_service_cidr_object(cidrs: &[IpNet]) -> Value {
    let now = now_rfc3339();
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {
            "name": portico_core::service::cidr::DEFAULT_SERVICE_CIDR,
            "uid": crate::object::new_uid(),
            "creationTimestamp": now,
        },
        "spec": {"cidrs": cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>()},
        "status": {"conditions": [ready_condition(&now)]},
    })
}

pub(crate) fn ready_condition(now: &str) -> Value {
    json!({"type": "Ready", "status": "True", "lastTransitionTime": now, "reason": "", "message": ""})
}

pub(crate) fn encode(v: &Value) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}
