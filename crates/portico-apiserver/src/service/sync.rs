//! Loading allocation state from the store, repairing it (upstream's repair controllers for
//! cluster IPs, IPAddresses and node ports), and watching the IPAddress, node-port and
//! ServiceCIDR prefixes so several API servers see each other's allocations.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use portico_core::service::alloc;
use portico_core::service::cidr::{DEFAULT_SERVICE_CIDR, LABEL_MANAGED_BY, MANAGED_BY_ALLOCATOR};
use portico_store::{Compare, EventKind, KeyValue, Op, Revision};
use serde_json::Value;

use super::state::AllocState;
use super::{
    Shared, default_service_cidr_object, encode, ip_address_object, ip_key, node_port_key,
};
use crate::error::ApiError;
use crate::keys;

/// One problem the repair found (and, where it can, fixed). `reason` is upstream's Event reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairFinding {
    /// `Warning` or `Normal`, the Event type.
    pub event_type: &'static str,
    /// `ClusterIPNotAllocated`, `ClusterIPAlreadyAllocated`, `ClusterIPOutOfRange`,
    /// `IPAddressNotAllocated` (leak), `IPAddressWrongReference`, `PortNotAllocated`,
    /// `PortAlreadyAllocated`, `PortOutOfRange`, `PortLeaked`.
    pub reason: &'static str,
    pub message: String,
    /// The Service concerned (`namespace`, `name`), when there is one.
    pub service: Option<(String, String)>,
}

/// Everything one repair pass found, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    pub findings: Vec<RepairFinding>,
    /// The store revision the state was loaded at.
    pub revision: Revision,
}

fn parse_json(kv: &KeyValue) -> Option<Value> {
    serde_json::from_slice(&kv.value).ok()
}

async fn list_all(
    shared: &Shared,
    prefix: &str,
    rev: Option<Revision>,
) -> Result<(Vec<KeyValue>, Revision), ApiError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    let mut revision = rev;
    loop {
        let res = shared
            .store
            .list(prefix, after.as_deref(), 1000, revision)
            .await?;
        revision = Some(res.revision);
        after = res.kvs.last().map(|kv| kv.key.clone());
        out.extend(res.kvs);
        if !res.more {
            break;
        }
    }
    Ok((out, revision.unwrap_or(0)))
}

fn cidrs_of(obj: &Value) -> Vec<IpNet> {
    obj.pointer("/spec/cidrs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn name_of_key<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)
}

fn warn(reason: &'static str, message: String, service: Option<(String, String)>) -> RepairFinding {
    RepairFinding {
        event_type: "Warning",
        reason,
        message,
        service,
    }
}

/// Loads the whole allocation picture at one revision, repairs the store where it can, and
/// replaces the in-memory state (keeping picks of writes still in flight).
pub(crate) async fn sync(shared: &Arc<Shared>) -> Result<RepairReport, ApiError> {
    // The default ServiceCIDR, from the flags.
    let default_key = keys::object_key("servicecidrs", None, DEFAULT_SERVICE_CIDR);
    if shared.store.get(&default_key).await?.is_none() {
        let obj = default_service_cidr_object(&shared.cfg.cluster_ip_ranges);
        // A racing API server may create it first; either way it exists afterwards.
        shared
            .store
            .txn(
                vec![Compare::ModRevision(default_key.clone(), 0)],
                vec![Op::Put(default_key, encode(&obj))],
            )
            .await?;
    }

    let (cidr_kvs, rev) = list_all(shared, &keys::list_prefix("servicecidrs", None), None).await?;
    let (ip_kvs, _) = list_all(shared, &keys::list_prefix("ipaddresses", None), Some(rev)).await?;
    let (port_kvs, _) = list_all(shared, keys::NODE_PORT_PREFIX, Some(rev)).await?;
    let (svc_kvs, _) = list_all(shared, &keys::list_prefix("services", None), Some(rev)).await?;

    let mut st = AllocState::new(
        &shared.cfg.cluster_ip_ranges,
        shared.cfg.node_port_range.clone(),
    );
    for kv in &cidr_kvs {
        if let Some(obj) = parse_json(kv) {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                st.set_source(&name, cidrs_of(&obj));
            }
        }
    }

    let mut findings = Vec::new();
    let mut txn_compares = Vec::new();
    let mut txn_ops = Vec::new();

    // What the Services hold.
    let mut want_ips: BTreeMap<IpAddr, Vec<(String, String)>> = BTreeMap::new();
    let mut want_ports: BTreeMap<i32, Vec<(String, String)>> = BTreeMap::new();
    for kv in &svc_kvs {
        let Some(svc) = parse_json(kv).and_then(|v| serde_json::from_value::<Service>(v).ok())
        else {
            continue;
        };
        let id = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        for ip in alloc::held_ips(&svc) {
            want_ips.entry(ip).or_default().push(id.clone());
        }
        for p in alloc::held_node_ports(&svc) {
            want_ports.entry(p).or_default().push(id.clone());
        }
    }

    // What the store records.
    let ip_prefix = keys::list_prefix("ipaddresses", None);
    let mut have_ips: HashMap<IpAddr, StoredIp> = HashMap::new();
    for kv in &ip_kvs {
        let Some(ip) = name_of_key(&kv.key, &ip_prefix).and_then(|n| n.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let obj = parse_json(kv).unwrap_or(Value::Null);
        let parent = obj.pointer("/spec/parentRef").and_then(|r| {
            (r.get("resource")?.as_str()? == "services").then(|| {
                (
                    r.get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    r.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                )
            })
        });
        let managed = obj
            .pointer(&format!(
                "/metadata/labels/{}",
                LABEL_MANAGED_BY.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            == Some(MANAGED_BY_ALLOCATOR);
        have_ips.insert(ip, (parent, managed, kv.mod_revision));
        st.mark_ip(ip);
    }
    let mut have_ports: HashMap<i32, (String, Revision)> = HashMap::new();
    for kv in &port_kvs {
        let Some(p) =
            name_of_key(&kv.key, keys::NODE_PORT_PREFIX).and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        have_ports.insert(
            p,
            (
                String::from_utf8_lossy(&kv.value).to_string(),
                kv.mod_revision,
            ),
        );
        st.mark_port(p);
    }

    for (ip, owners) in &want_ips {
        let first = owners[0].clone();
        if owners.len() > 1 {
            for o in owners {
                findings.push(warn(
                    "ClusterIPAlreadyAllocated",
                    format!(
                        "Cluster IP {ip} was assigned to multiple services; please recreate service"
                    ),
                    Some(o.clone()),
                ));
            }
        }
        if !st.ip_in_range(ip) {
            findings.push(warn(
                "ClusterIPOutOfRange",
                format!("Cluster IP [{}]: {ip} is not within any configured Service CIDR; please recreate service", family(ip)),
                Some(first.clone()),
            ));
        }
        match have_ips.get(ip) {
            None => {
                findings.push(warn(
                    "ClusterIPNotAllocated",
                    format!(
                        "Cluster IP [{}]: {ip} is not allocated; repairing",
                        family(ip)
                    ),
                    Some(first.clone()),
                ));
                let key = ip_key(ip);
                txn_compares.push(Compare::ModRevision(key.clone(), 0));
                txn_ops.push(Op::Put(key, ip_address_object(ip, &first.0, &first.1)));
                st.mark_ip(*ip);
            }
            Some((parent, _, modrev)) => {
                if !owners.iter().any(|o| Some(o) == parent.as_ref()) {
                    findings.push(warn(
                        "IPAddressWrongReference",
                        format!("the ClusterIP [{}]: {ip} for Service {}/{} has a wrong reference; repairing", family(ip), first.0, first.1),
                        Some(first.clone()),
                    ));
                    let key = ip_key(ip);
                    txn_compares.push(Compare::ModRevision(key.clone(), *modrev));
                    txn_ops.push(Op::Put(key, ip_address_object(ip, &first.0, &first.1)));
                }
            }
        }
    }
    for (ip, (parent, managed, modrev)) in &have_ips {
        if *managed && !want_ips.contains_key(ip) {
            let (ns, name) = parent.clone().unwrap_or_default();
            findings.push(warn(
                "IPAddressNotAllocated",
                format!(
                    "IPAddress: {ip} for Service {ns}/{name} appears to have leaked: cleaning up"
                ),
                parent.clone(),
            ));
            let key = ip_key(ip);
            txn_compares.push(Compare::ModRevision(key.clone(), *modrev));
            txn_ops.push(Op::Delete(key));
            st.unmark_ip(*ip);
        }
    }
    let port_range = st.ports.describe();
    for (p, owners) in &want_ports {
        let first = owners[0].clone();
        if owners.len() > 1 {
            for o in owners {
                findings.push(warn(
                    "PortAlreadyAllocated",
                    format!("Port {p} was assigned to multiple services; please recreate service"),
                    Some(o.clone()),
                ));
            }
        }
        if !st.ports.contains(*p) {
            findings.push(warn(
                "PortOutOfRange",
                format!(
                    "Port {p} is not within the port range {port_range}; please recreate service"
                ),
                Some(first.clone()),
            ));
            continue;
        }
        if !have_ports.contains_key(p) {
            findings.push(warn(
                "PortNotAllocated",
                format!("Port {p} is not allocated; repairing"),
                Some(first.clone()),
            ));
            let key = node_port_key(*p);
            txn_compares.push(Compare::ModRevision(key.clone(), 0));
            txn_ops.push(Op::Put(
                key,
                bytes::Bytes::from(format!("{}/{}", first.0, first.1)),
            ));
            st.mark_port(*p);
        }
    }
    for (p, (owner, modrev)) in &have_ports {
        if !want_ports.contains_key(p) {
            let service = owner
                .split_once('/')
                .map(|(a, b)| (a.to_string(), b.to_string()));
            findings.push(warn(
                "PortLeaked",
                format!(
                    "the node port {p} for Service {owner} appears to have leaked: cleaning up"
                ),
                service,
            ));
            let key = node_port_key(*p);
            txn_compares.push(Compare::ModRevision(key.clone(), *modrev));
            txn_ops.push(Op::Delete(key));
            st.unmark_port(*p);
        }
    }

    // Keep picks of writes in flight.
    {
        let old = shared.lock();
        for ip in &old.pending_ips {
            st.pending_ips.insert(*ip);
            st.mark_ip(*ip);
        }
        for p in &old.pending_ports {
            st.pending_ports.insert(*p);
            st.mark_port(*p);
        }
    }
    for f in &findings {
        tracing::warn!(reason = f.reason, service = ?f.service, "{}", f.message);
    }
    if !txn_ops.is_empty() {
        // One transaction at the list revision's view: if anything moved meanwhile, the
        // compares fail and the next repair looks again.
        let resp = shared.store.txn(txn_compares, txn_ops).await?;
        if !resp.succeeded {
            tracing::info!(
                "service allocation repair raced with a write; it will run again on the next sync"
            );
        }
    }
    *shared.lock() = st;
    Ok(RepairReport {
        findings,
        revision: rev,
    })
}

/// An IPAddress as stored: parent Service, managed by the allocator, mod revision.
type StoredIp = (Option<(String, String)>, bool, Revision);

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Applies one watched change to the allocation picture.
pub(crate) fn apply_event(shared: &Shared, kind: EventKind, kv: &KeyValue) {
    let ip_prefix = keys::list_prefix("ipaddresses", None);
    let cidr_prefix = keys::list_prefix("servicecidrs", None);
    let mut st = shared.lock();
    if let Some(name) = kv.key.strip_prefix(&ip_prefix) {
        if let Ok(ip) = name.parse::<IpAddr>() {
            match kind {
                EventKind::Put => st.mark_ip(ip),
                EventKind::Delete => st.unmark_ip(ip),
            }
        }
    } else if let Some(p) = kv
        .key
        .strip_prefix(keys::NODE_PORT_PREFIX)
        .and_then(|n| n.parse::<i32>().ok())
    {
        match kind {
            EventKind::Put => st.mark_port(p),
            EventKind::Delete => st.unmark_port(p),
        }
    } else if let Some(name) = kv.key.strip_prefix(&cidr_prefix) {
        let cidrs = match kind {
            EventKind::Put => parse_json(kv)
                .filter(|o| o.pointer("/metadata/deletionTimestamp").is_none())
                .map(|o| cidrs_of(&o))
                .unwrap_or_default(),
            EventKind::Delete => Vec::new(),
        };
        st.set_source(name, cidrs);
    }
}

/// Watches the three prefixes from the synced revision; on any watch failure (compaction,
/// store restart) reloads everything and watches again.
pub(crate) fn spawn_watches(shared: &Arc<Shared>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(shared);
    let start_rev = shared
        .report
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .revision;
    let stop = shared.stop.clone();
    handle.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = watch_loop(weak, start_rev) => {}
        }
    });
}

async fn watch_loop(weak: std::sync::Weak<Shared>, start_rev: Revision) {
    {
        let mut rev = start_rev;
        loop {
            let Some(shared) = weak.upgrade() else { return };
            let prefixes = [
                keys::list_prefix("ipaddresses", None),
                keys::NODE_PORT_PREFIX.to_string(),
                keys::list_prefix("servicecidrs", None),
            ];
            let mut streams = Vec::new();
            let mut ok = true;
            for p in &prefixes {
                match shared.store.watch(p, rev).await {
                    Ok(s) => streams.push(s),
                    Err(e) => {
                        tracing::warn!("service allocator watch on {p} failed: {e}");
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                let mut merged = futures::stream::select_all(streams);
                drop(shared);
                while let Some(item) = merged.next().await {
                    let Some(shared) = weak.upgrade() else { return };
                    match item {
                        Ok(events) => {
                            for ev in events {
                                apply_event(&shared, ev.kind, &ev.kv);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("service allocator watch ended: {e}");
                            break;
                        }
                    }
                }
            }
            let Some(shared) = weak.upgrade() else { return };
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            match sync(&shared).await {
                Ok(report) => {
                    rev = report.revision;
                    *shared.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
                }
                Err(e) => tracing::warn!("service allocator resync failed: {e}"),
            }
        }
    }
}
