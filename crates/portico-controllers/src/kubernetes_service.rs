//! The `kubernetes` Service in `default`: ClusterIP the first address of the Service range,
//! port 443 named `https` pointing at the API servers, labels `component: apiserver` and
//! `provider: kubernetes`; its Endpoints (labelled `endpointslice.kubernetes.io/skip-mirror:
//! "true"`) and its EndpointSlice list every live API server.
//!
//! Several API servers share the objects: each keeps a lease (its address → renew time) in the
//! Endpoints annotation [`LEASES_ANNOTATION`]; addresses whose lease is older than the TTL are
//! dropped, like upstream's lease endpoint reconciler (which keeps its leases in etcd keys).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, PostParams};
use portico_core::endpointslice::{LABEL_SERVICE_NAME, LABEL_SKIP_MIRROR};
use tokio_util::sync::CancellationToken;

/// Endpoints annotation holding `{"<apiserver address>": "<RFC 3339 renew time>"}`.
pub const LEASES_ANNOTATION: &str = "portico.dev/apiserver-leases";
const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";

/// How the `kubernetes` Service is kept.
#[derive(Clone, Debug)]
pub struct KubernetesServiceOptions {
    /// This API server's address, as clients should reach it.
    pub advertise_ip: IpAddr,
    /// This API server's port (the Service's targetPort).
    pub port: u16,
    /// The ClusterIP to ask for; `None` reads the first address of the `kubernetes`
    /// ServiceCIDR, and leaves the choice to the API server when that does not exist.
    pub cluster_ip: Option<IpAddr>,
    /// How often the objects are checked and the lease renewed.
    pub interval: Duration,
    /// A lease not renewed for this long is dropped.
    pub lease_ttl: Duration,
}

impl KubernetesServiceOptions {
    pub fn new(advertise_ip: IpAddr, port: u16) -> KubernetesServiceOptions {
        KubernetesServiceOptions {
            advertise_ip,
            port,
            cluster_ip: None,
            interval: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(45),
        }
    }
}

/// Keeps default/kubernetes, its Endpoints and EndpointSlice current until `shutdown`, then
/// withdraws this server's address. Errors are logged and retried.
pub async fn reconcile_kubernetes_service(
    client: Client,
    advertise_ip: IpAddr,
    port: u16,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    reconcile_kubernetes_service_with(
        client,
        KubernetesServiceOptions::new(advertise_ip, port),
        shutdown,
    )
    .await
}

/// [`reconcile_kubernetes_service`] with explicit options.
pub async fn reconcile_kubernetes_service_with(
    client: Client,
    opts: KubernetesServiceOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        if let Err(error) = reconcile_once(&client, &opts, jiff::Timestamp::now(), false).await {
            tracing::warn!(%error, "kubernetes service reconcile failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(opts.interval) => {}
        }
    }
    // Withdraw our address so clients stop being sent to a stopped server.
    let withdraw = reconcile_once(&client, &opts, jiff::Timestamp::now(), true);
    if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(2), withdraw).await {
        tracing::debug!(%error, "could not withdraw the apiserver endpoint");
    }
    Ok(())
}

/// The first usable address of a CIDR (network address + 1).
pub fn first_address(cidr: &ipnet::IpNet) -> IpAddr {
    match cidr {
        ipnet::IpNet::V4(n) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(n.network()).saturating_add(1),
        )),
        ipnet::IpNet::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()).saturating_add(1),
        )),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> anyhow::Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn service_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("component".to_string(), "apiserver".to_string()),
        ("provider".to_string(), "kubernetes".to_string()),
    ])
}

fn service_ports(port: u16) -> Vec<ServicePort> {
    vec![ServicePort {
        name: Some("https".to_string()),
        port: 443,
        protocol: Some("TCP".to_string()),
        target_port: Some(IntOrString::Int(port as i32)),
        ..Default::default()
    }]
}

async fn ensure_service(client: &Client, opts: &KubernetesServiceOptions) -> anyhow::Result<()> {
    let api: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    match get_opt(&api, NAME).await? {
        None => {
            let cluster_ip = match opts.cluster_ip {
                Some(ip) => Some(ip),
                None => {
                    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
                    match cidrs.get(NAME).await {
                        Ok(c) => c
                            .spec
                            .and_then(|s| s.cidrs)
                            .and_then(|c| c.first().cloned())
                            .and_then(|c| c.parse::<ipnet::IpNet>().ok())
                            .map(|n| first_address(&n)),
                        Err(_) => None,
                    }
                }
            };
            let svc = Service {
                metadata: ObjectMeta {
                    name: Some(NAME.to_string()),
                    namespace: Some(NAMESPACE.to_string()),
                    labels: Some(service_labels()),
                    ..Default::default()
                },
                spec: Some(ServiceSpec {
                    type_: Some("ClusterIP".to_string()),
                    cluster_ip: cluster_ip.map(|ip| ip.to_string()),
                    ports: Some(service_ports(opts.port)),
                    session_affinity: Some("None".to_string()),
                    ..Default::default()
                }),
                status: None,
            };
            match api.create(&PostParams::default(), &svc).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(mut existing) => {
            let spec = existing.spec.get_or_insert_with(Default::default);
            let want_ports = service_ports(opts.port);
            let ports_ok = spec.ports.as_ref().is_some_and(|p| {
                p.len() == 1
                    && p[0].name.as_deref() == Some("https")
                    && p[0].port == 443
                    && p[0].target_port == want_ports[0].target_port
                    && p[0].protocol.as_deref().unwrap_or("TCP") == "TCP"
            });
            let labels = existing.metadata.labels.get_or_insert_with(BTreeMap::new);
            let labels_ok = service_labels()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v));
            if !ports_ok || !labels_ok {
                labels.extend(service_labels());
                let spec = existing.spec.get_or_insert_with(Default::default);
                spec.ports = Some(want_ports);
                api.replace(NAME, &PostParams::default(), &existing).await?;
            }
        }
    }
    Ok(())
}

fn parse_leases(endpoints: Option<&Endpoints>) -> BTreeMap<String, jiff::Timestamp> {
    endpoints
        .and_then(|e| e.metadata.annotations.as_ref())
        .and_then(|a| a.get(LEASES_ANNOTATION))
        .and_then(|v| serde_json::from_str::<BTreeMap<String, String>>(v).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(ip, t)| Some((ip, t.parse().ok()?)))
        .collect()
}

/// The live addresses after renewing (or withdrawing) ours and dropping expired leases.
pub fn renew_leases(
    mut leases: BTreeMap<String, jiff::Timestamp>,
    me: IpAddr,
    now: jiff::Timestamp,
    ttl: Duration,
    withdraw: bool,
) -> BTreeMap<String, jiff::Timestamp> {
    let ttl = jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::from_secs(45));
    let me = me.to_string();
    let renew_after = ttl / 3;
    if withdraw {
        leases.remove(&me);
    } else {
        let fresh = leases
            .get(&me)
            .is_some_and(|t| now.duration_since(*t) < renew_after && *t <= now);
        if !fresh {
            leases.insert(me, now);
        }
    }
    leases.retain(|_, t| now.duration_since(*t) <= ttl);
    leases
}

/// One pass: ensure the Service, renew the lease, and write Endpoints and EndpointSlice if
/// they changed. `withdraw` removes this server's address instead of renewing it.
pub async fn reconcile_once(
    client: &Client,
    opts: &KubernetesServiceOptions,
    now: jiff::Timestamp,
    withdraw: bool,
) -> anyhow::Result<()> {
    if !withdraw {
        ensure_service(client, opts).await?;
    }
    let eps_api: Api<Endpoints> = Api::namespaced(client.clone(), NAMESPACE);
    let existing = get_opt(&eps_api, NAME).await?;
    let leases = renew_leases(
        parse_leases(existing.as_ref()),
        opts.advertise_ip,
        now,
        opts.lease_ttl,
        withdraw,
    );
    let mut addresses: Vec<IpAddr> = leases.keys().filter_map(|ip| ip.parse().ok()).collect();
    addresses.sort();
    let lease_text = serde_json::to_string(
        &leases
            .iter()
            .map(|(ip, t)| (ip.clone(), t.to_string()))
            .collect::<BTreeMap<_, _>>(),
    )?;

    let subsets = if addresses.is_empty() {
        None
    } else {
        Some(vec![EndpointSubset {
            addresses: Some(
                addresses
                    .iter()
                    .map(|ip| EndpointAddress {
                        ip: ip.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            not_ready_addresses: None,
            ports: Some(vec![CorePort {
                name: Some("https".into()),
                port: opts.port as i32,
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }])
    };
    let mut desired = existing.clone().unwrap_or_else(|| Endpoints {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        subsets: None,
    });
    desired
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_SKIP_MIRROR.into(), "true".into());
    desired
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(LEASES_ANNOTATION.into(), lease_text);
    desired.subsets = subsets;
    let changed = existing.as_ref().is_none_or(|e| {
        e.subsets != desired.subsets
            || e.metadata.labels != desired.metadata.labels
            || e.metadata.annotations != desired.metadata.annotations
    });
    if changed {
        match &existing {
            None => {
                eps_api.create(&PostParams::default(), &desired).await?;
            }
            Some(_) => {
                eps_api
                    .replace(NAME, &PostParams::default(), &desired)
                    .await?;
            }
        }
    }

    // The EndpointSlice, derived the way upstream's endpoints adapter does.
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let existing_slice = get_opt(&slice_api, NAME).await?;
    let address_type = if !addresses.is_empty() && addresses.iter().all(IpAddr::is_ipv6) {
        "IPv6"
    } else {
        "IPv4"
    };
    let endpoints: Vec<Endpoint> = addresses
        .iter()
        .filter(|ip| ip.is_ipv6() == (address_type == "IPv6"))
        .map(|ip| Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: None,
                terminating: None,
            }),
            ..Default::default()
        })
        .collect();
    let ports = Some(vec![EndpointPort {
        name: Some("https".into()),
        port: Some(opts.port as i32),
        protocol: Some("TCP".into()),
        app_protocol: None,
    }]);
    let labels = BTreeMap::from([(LABEL_SERVICE_NAME.to_string(), NAME.to_string())]);
    match existing_slice {
        None => {
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(NAME.into()),
                    namespace: Some(NAMESPACE.into()),
                    labels: Some(labels),
                    ..Default::default()
                },
                address_type: address_type.into(),
                endpoints,
                ports,
            };
            match slice_api.create(&PostParams::default(), &slice).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(mut slice) => {
            let same = slice.address_type == address_type
                && slice.endpoints == endpoints
                && slice.ports == ports
                && slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    .map(String::as_str)
                    == Some(NAME);
            if !same {
                if slice.address_type != address_type {
                    // addressType is immutable: replace the slice.
                    slice_api.delete(NAME, &Default::default()).await?;
                    let fresh = EndpointSlice {
                        metadata: ObjectMeta {
                            name: Some(NAME.into()),
                            namespace: Some(NAMESPACE.into()),
                            labels: Some(labels),
                            ..Default::default()
                        },
                        address_type: address_type.into(),
                        endpoints,
                        ports,
                    };
                    slice_api.create(&PostParams::default(), &fresh).await?;
                } else {
                    slice.endpoints = endpoints;
                    slice.ports = ports;
                    slice
                        .metadata
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .extend(labels);
                    slice_api
                        .replace(NAME, &PostParams::default(), &slice)
                        .await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_renew_and_expire() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let me: IpAddr = "192.0.2.1".parse().unwrap();
        let ttl = Duration::from_secs(45);
        let leases = renew_leases(BTreeMap::new(), me, t0, ttl, false);
        assert_eq!(leases.get("192.0.2.1"), Some(&t0));
        // Within a third of the TTL the lease is not rewritten (no churn).
        let t5 = t0 + jiff::SignedDuration::from_secs(5);
        assert_eq!(renew_leases(leases.clone(), me, t5, ttl, false), leases);
        // Another server's lease expires after the TTL.
        let mut both = leases.clone();
        both.insert("192.0.2.2".into(), t0);
        let t60 = t0 + jiff::SignedDuration::from_secs(60);
        let renewed = renew_leases(both, me, t60, ttl, false);
        assert_eq!(renewed.keys().collect::<Vec<_>>(), vec!["192.0.2.1"]);
        assert!(renew_leases(renewed, me, t60, ttl, true).is_empty());
    }

    #[test]
    fn first_address_of_range() {
        assert_eq!(
            first_address(&"10.96.0.0/12".parse().unwrap()).to_string(),
            "10.96.0.1"
        );
        assert_eq!(
            first_address(&"fd00:10:96::/112".parse().unwrap()).to_string(),
            "fd00:10:96::1"
        );
    }
}
