//! Watches on the Kubernetes API feeding the index: Services, EndpointSlices and (for verified
//! pod records and pod-IP autopath) Pods.
//!
//! Owns: converting API objects into the index's plain records, applying watch events one at a
//! time (each costs one Service's worth of work), resyncing after a watch restart (objects
//! missing from the relist are deleted) and reporting when every watch finished its first list.
//! Must not: talk to anything but the API.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::index::{
    EndpointRecord, Index, PodRecord, PortRecord, ServiceKind, ServiceRecord, SliceRecord,
};

/// Converts a Service; `None` when it has no name.
pub fn service_record(svc: &Service) -> Option<ServiceRecord> {
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone()?;
    let spec = svc.spec.as_ref();
    let kind = match spec {
        Some(spec) if spec.type_.as_deref() == Some("ExternalName") => {
            ServiceKind::ExternalName(spec.external_name.clone().unwrap_or_default())
        }
        Some(spec) if spec.cluster_ip.as_deref() == Some("None") => ServiceKind::Headless,
        Some(spec) => {
            let mut ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if ips.is_empty()
                && let Some(ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok())
            {
                ips.push(ip);
            }
            ServiceKind::ClusterIp(ips)
        }
        None => ServiceKind::ClusterIp(Vec::new()),
    };
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    Some(PortRecord {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let tolerate = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("service.alpha.kubernetes.io/tolerate-unready-endpoints"))
        .is_some_and(|v| v == "true");
    let publish_not_ready = tolerate
        || spec
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
    Some(ServiceRecord {
        namespace,
        name,
        kind,
        ports,
        publish_not_ready,
    })
}

/// Converts an EndpointSlice; `None` when it has no Service label or carries FQDN addresses.
pub fn slice_record(slice: &EndpointSlice) -> Option<SliceRecord> {
    if slice.address_type == "FQDN" {
        return None;
    }
    let namespace = slice
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = slice.metadata.name.clone()?;
    let service = slice.labels().get("kubernetes.io/service-name")?.clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortRecord {
                name: p.name.clone().unwrap_or_default(),
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|ep| EndpointRecord {
            addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: ep.hostname.clone(),
            ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        })
        .collect();
    Some(SliceRecord {
        namespace,
        name,
        service,
        ports,
        endpoints,
    })
}

/// Converts a Pod; `None` for finished pods (their IPs may already belong to someone else).
pub fn pod_record(pod: &Pod) -> Option<PodRecord> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone()?;
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    Some(PodRecord {
        namespace,
        name,
        ips,
        host_network: pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
    })
}

/// Which resource a watch feeds.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Services,
    Slices,
    Pods,
}

/// Starts the watches; `synced` turns true once every watch has listed once.
pub fn spawn_watches(
    client: Client,
    index: Arc<RwLock<Index>>,
    watch_pods: bool,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let kinds: Vec<Kind> = if watch_pods {
        vec![Kind::Services, Kind::Slices, Kind::Pods]
    } else {
        vec![Kind::Services, Kind::Slices]
    };
    let (tx, rx) = watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(kinds.len());
    let count = kinds.len();
    for kind in kinds {
        let client = client.clone();
        let index = index.clone();
        let shutdown = shutdown.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let work = async {
                match kind {
                    Kind::Services => run::<Service>(client, index, done, kind).await,
                    Kind::Slices => run::<EndpointSlice>(client, index, done, kind).await,
                    Kind::Pods => run::<Pod>(client, index, done, kind).await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = work => {}
            }
        });
    }
    tokio::spawn(async move {
        for _ in 0..count {
            if done_rx.recv().await.is_none() {
                return;
            }
        }
        let _ = tx.send(true);
        // Keep the sender alive so receivers do not see the channel close.
        tx.closed().await;
    });
    rx
}

trait Indexed:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn apply(index: &mut Index, obj: &Self);
    fn delete(index: &mut Index, namespace: &str, name: &str);
    fn keys(index: &Index) -> Vec<(String, String)>;
}

impl Indexed for Service {
    fn apply(index: &mut Index, obj: &Self) {
        if let Some(record) = service_record(obj) {
            index.upsert_service(record);
        }
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_service(namespace, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.service_keys()
    }
}

impl Indexed for EndpointSlice {
    fn apply(index: &mut Index, obj: &Self) {
        match slice_record(obj) {
            Some(record) => index.upsert_slice(record),
            // A slice that lost its Service label (or turned FQDN) no longer contributes.
            None => index.delete_slice(&obj.namespace().unwrap_or_default(), &obj.name_any()),
        }
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_slice(namespace, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.slice_keys()
    }
}

impl Indexed for Pod {
    fn apply(index: &mut Index, obj: &Self) {
        match pod_record(obj) {
            Some(record) => index.upsert_pod(record),
            None => index.delete_pod(&obj.namespace().unwrap_or_default(), &obj.name_any()),
        }
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_pod(namespace, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.pod_keys()
    }
}

fn key_of<K: kube::Resource>(obj: &K) -> (String, String) {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

async fn run<K: Indexed>(
    client: Client,
    index: Arc<RwLock<Index>>,
    done: tokio::sync::mpsc::Sender<()>,
    kind: Kind,
) {
    let api: Api<K> = Api::all(client);
    let mut stream = watcher(api).default_backoff().boxed();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut first_done = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                // A cluster that does not serve Pods must not keep DNS unsynced forever.
                if matches!(kind, Kind::Pods) && !first_done && is_not_found(&e) {
                    tracing::warn!(
                        "the API server does not serve Pods; pod records cannot be verified"
                    );
                    first_done = true;
                    let _ = done.send(()).await;
                }
                tracing::warn!(?kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        let list_done = if matches!(event, Event::InitDone) {
            // A relist's deletions take the write lock once per object, so queries never wait
            // behind a whole-index sweep.
            let stale: Vec<(String, String)> = match index.read() {
                Ok(index) => K::keys(&index)
                    .into_iter()
                    .filter(|key| !seen.contains(key))
                    .collect(),
                Err(_) => return,
            };
            for (namespace, name) in stale {
                let Ok(mut index) = index.write() else {
                    return;
                };
                K::delete(&mut index, &namespace, &name);
            }
            seen = HashSet::new();
            true
        } else {
            let Ok(mut index) = index.write() else {
                return;
            };
            apply_event(&mut index, event, &mut seen)
        };
        if list_done && !first_done {
            first_done = true;
            tracing::info!(?kind, "initial list done");
            let _ = done.send(()).await;
        }
    }
}

/// Applies one event; returns true when it completed a (re)list.
fn apply_event<K: Indexed>(
    index: &mut Index,
    event: Event<K>,
    seen: &mut HashSet<(String, String)>,
) -> bool {
    match event {
        Event::Init => seen.clear(),
        Event::InitApply(obj) => {
            seen.insert(key_of(&obj));
            K::apply(index, &obj);
        }
        Event::InitDone => {
            for key in K::keys(index) {
                if !seen.contains(&key) {
                    K::delete(index, &key.0, &key.1);
                }
            }
            *seen = HashSet::new();
            return true;
        }
        Event::Apply(obj) => K::apply(index, &obj),
        Event::Delete(obj) => {
            let (ns, name) = key_of(&obj);
            K::delete(index, &ns, &name);
        }
    }
    false
}

fn watcher<K: Indexed>(
    api: Api<K>,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> {
    watcher::watcher(api, watcher::Config::default())
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_service_kinds() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00::5"],
                     "ports": [{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let rec = service_record(&svc).unwrap();
        assert_eq!(
            rec.kind,
            ServiceKind::ClusterIp(vec![
                "10.96.0.5".parse().unwrap(),
                "fd00::5".parse().unwrap()
            ])
        );
        assert_eq!(rec.ports[0].protocol, "tcp");
        assert_eq!(rec.ports[1].name, "");
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "prod",
                         "annotations": {"service.alpha.kubernetes.io/tolerate-unready-endpoints": "true"}},
            "spec": {"clusterIP": "None"}
        }))
        .unwrap();
        let rec = service_record(&headless).unwrap();
        assert_eq!(rec.kind, ServiceKind::Headless);
        assert!(rec.publish_not_ready);
        let ext: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "prod"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        }))
        .unwrap();
        assert_eq!(
            service_record(&ext).unwrap().kind,
            ServiceKind::ExternalName("example.com".into())
        );
    }

    #[test]
    fn converts_slices() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-abc", "namespace": "prod", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.1.0.1"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.3"]}
            ],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
        }))
        .unwrap();
        let rec = slice_record(&slice).unwrap();
        assert_eq!(rec.service, "db");
        assert_eq!(
            rec.endpoints.iter().map(|e| e.ready).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        assert_eq!(rec.ports[0].port, 5432);
        let fqdn: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "namespace": "prod", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "FQDN", "endpoints": []
        }))
        .unwrap();
        assert!(slice_record(&fqdn).is_none());
    }
}
