//! LoadBalancer addresses without a cloud: gives `type: LoadBalancer` Services an address from
//! the `--load-balancer-ip-range` pools and writes `status.loadBalancer.ingress[].ip` with
//! `ipMode: VIP`.
//!
//! Handles Services whose `spec.loadBalancerClass` is unset or [`LOAD_BALANCER_CLASS`]
//! (`portico.dev/lb`); any other class belongs to another implementation and is left alone.
//! A requested `spec.loadBalancerIP` is honoured when it is inside a pool and free. Addresses are
//! freed when the Service is deleted or stops being a LoadBalancer. When no address can be
//! given, the Service gets the condition [`CONDITION_TYPE`] = False with a reason
//! (`NoPoolConfigured`, `PoolExhausted`, `AddressInUse`, `AddressNotInPool`, `InvalidAddress`)
//! and a Warning Event with the same reason, instead of sitting at `<pending>` unexplained.

pub mod pool;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};

use crate::events::reference;
use crate::slices::Synced;
use crate::world::{Key, Shared};
use pool::{AllocError, Family, Pools};

/// The loadBalancerClass this allocator answers to (besides no class at all).
pub const LOAD_BALANCER_CLASS: &str = "portico.dev/lb";
/// The Service status condition reporting whether an address was assigned.
pub const CONDITION_TYPE: &str = "LoadBalancerAddressAssigned";

/// Which addresses belong to which Service; rebuilt from Service status after a restart.
#[derive(Default)]
pub(crate) struct LbState {
    owners: HashMap<IpAddr, Key>,
    initialized: bool,
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

fn class_is_ours(svc: &Service) -> bool {
    match svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_class.as_deref())
    {
        None => true,
        Some(class) => class == LOAD_BALANCER_CLASS,
    }
}

fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn families(svc: &Service) -> Vec<Family> {
    let listed: Vec<Family> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect();
    if listed.is_empty() {
        vec![Family::IPv4]
    } else {
        listed
    }
}

/// Decides the addresses for one eligible Service. Pure.
pub fn decide(
    svc: &Service,
    key_name: &str,
    pools: &Pools,
    owners: &HashMap<IpAddr, String>,
) -> Result<Vec<IpAddr>, AllocError> {
    let requested = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|s| !s.is_empty());
    if let Some(requested) = requested {
        let ip: IpAddr = requested.parse().map_err(|_| AllocError::Invalid {
            value: requested.to_string(),
        })?;
        if pools.is_empty() {
            return Err(AllocError::NoPool { family: None });
        }
        if !pools.contains(ip) {
            return Err(AllocError::NotInPool { ip });
        }
        if let Some(by) = owners.get(&ip).filter(|o| o.as_str() != key_name) {
            return Err(AllocError::InUse { ip, by: by.clone() });
        }
        return Ok(vec![ip]);
    }
    let current: Vec<IpAddr> = ingress_ips(svc)
        .into_iter()
        .filter(|ip| pools.contains(*ip) && owners.get(ip).is_none_or(|o| o == key_name))
        .collect();
    let mut in_use: HashSet<IpAddr> = owners.keys().copied().collect();
    let mut chosen = Vec::new();
    let mut first_error = None;
    for family in families(svc) {
        if let Some(ip) = current.iter().find(|ip| Family::of(**ip) == family) {
            chosen.push(*ip);
            continue;
        }
        match pools.allocate(family, &in_use) {
            Ok(ip) => {
                in_use.insert(ip);
                chosen.push(ip);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (chosen.is_empty(), first_error) {
        (true, Some(e)) => Err(e),
        _ => Ok(chosen),
    }
}

fn key_name(key: &Key) -> String {
    format!("{}/{}", key.0, key.1)
}

impl LbState {
    fn init(&mut self, shared: &Shared) {
        if self.initialized {
            return;
        }
        let w = shared.world();
        let mut services: Vec<(&Key, &Arc<Service>)> = w.services.iter().collect();
        // Oldest first, so a conflict left by an earlier failure keeps the older owner.
        services.sort_by(|a, b| {
            a.1.metadata
                .creation_timestamp
                .cmp(&b.1.metadata.creation_timestamp)
        });
        for (key, svc) in services {
            if is_load_balancer(svc) && class_is_ours(svc) {
                for ip in ingress_ips(svc) {
                    if shared.opts.load_balancer_pools.contains(ip) {
                        self.owners.entry(ip).or_insert_with(|| key.clone());
                    }
                }
            }
        }
        self.initialized = true;
    }

    fn release(&mut self, key: &Key, keep: &[IpAddr]) -> bool {
        let before = self.owners.len();
        self.owners
            .retain(|ip, owner| owner != key || keep.contains(ip));
        self.owners.len() != before
    }
}

fn condition(
    status: bool,
    reason: &str,
    message: &str,
    previous: Option<&Condition>,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last = previous
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(jiff::Timestamp::now()));
    Condition {
        type_: CONDITION_TYPE.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: last,
        observed_generation: generation,
    }
}

fn our_condition(svc: &Service) -> Option<&Condition> {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == CONDITION_TYPE))
}

async fn patch_status(
    shared: &Shared,
    key: &Key,
    svc: &Service,
    ips: &[IpAddr],
    ours: Option<Condition>,
) -> anyhow::Result<()> {
    let mut conditions: Vec<Condition> = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != CONDITION_TYPE)
        .collect();
    conditions.extend(ours);
    let ingress: serde_json::Value = if ips.is_empty() {
        serde_json::Value::Null
    } else {
        ips.iter()
            .map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"}))
            .collect()
    };
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}, "conditions": if conditions.is_empty() { serde_json::Value::Null } else { serde_json::to_value(&conditions)? }}});
    let api: Api<Service> = Api::namespaced(shared.client.clone(), &key.0);
    api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// One LoadBalancer-allocator sync of the Service `key`.
pub(crate) async fn sync_lb(
    shared: &Arc<Shared>,
    state: &Mutex<LbState>,
    key: &Key,
) -> anyhow::Result<Synced> {
    let svc = shared.world().services.get(key).cloned();
    let pools = &shared.opts.load_balancer_pools;
    enum Action {
        Nothing,
        Clear,
        Write(Result<Vec<IpAddr>, AllocError>),
    }
    let (action, released) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.init(shared);
        match svc.as_deref() {
            None => (Action::Nothing, st.release(key, &[])),
            Some(s) if !class_is_ours(s) => (Action::Nothing, st.release(key, &[])),
            Some(s) if !is_load_balancer(s) => {
                let released = st.release(key, &[]);
                let has_ours = ingress_ips(s).iter().any(|ip| pools.contains(*ip))
                    || our_condition(s).is_some();
                (
                    if has_ours {
                        Action::Clear
                    } else {
                        Action::Nothing
                    },
                    released,
                )
            }
            Some(s) => {
                let owners: HashMap<IpAddr, String> =
                    st.owners.iter().map(|(ip, k)| (*ip, key_name(k))).collect();
                let decision = decide(s, &key_name(key), pools, &owners);
                let keep = decision.as_deref().unwrap_or_default().to_vec();
                let released = st.release(key, &keep);
                for ip in &keep {
                    st.owners.insert(*ip, key.clone());
                }
                (Action::Write(decision), released)
            }
        }
    };
    if released {
        // Freed addresses may let a waiting Service through.
        let waiting: Vec<Key> = shared
            .world()
            .services
            .iter()
            .filter(|(k, s)| {
                *k != key && is_load_balancer(s) && class_is_ours(s) && ingress_ips(s).is_empty()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in waiting {
            shared.lb_queue.add(k);
        }
    }
    let Some(svc) = svc else {
        return Ok(Synced::Done);
    };
    match action {
        Action::Nothing => {}
        Action::Clear => patch_status(shared, key, &svc, &[], None).await?,
        Action::Write(decision) => {
            let previous = our_condition(&svc);
            let generation = svc.metadata.generation;
            let (ips, cond) = match &decision {
                Ok(ips) => {
                    let list: Vec<String> = ips
                        .iter()
                        .map(|ip| format!("{:?}", ip.to_string()))
                        .collect();
                    (
                        ips.clone(),
                        condition(
                            true,
                            "Assigned",
                            &format!("Assigned IP [{}]", list.join(",")),
                            previous,
                            generation,
                        ),
                    )
                }
                Err(e) => (
                    Vec::new(),
                    condition(false, e.reason(), &e.to_string(), previous, generation),
                ),
            };
            let current_ips = ingress_ips(&svc);
            let modes_ok = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_none_or(|ing| ing.iter().all(|i| i.ip_mode.as_deref() == Some("VIP")));
            let same_condition = previous.is_some_and(|p| {
                p.status == cond.status
                    && p.reason == cond.reason
                    && p.message == cond.message
                    && p.observed_generation == cond.observed_generation
            });
            if current_ips != ips || !modes_ok || !same_condition {
                patch_status(shared, key, &svc, &ips, Some(cond.clone())).await?;
                let type_ = if decision.is_ok() {
                    "Normal"
                } else {
                    "Warning"
                };
                let reason = if decision.is_ok() {
                    "IPAllocated"
                } else {
                    cond.reason.as_str()
                };
                shared
                    .recorder
                    .record(reference(svc.as_ref()), type_, reason, &cond.message);
            }
        }
    }
    Ok(Synced::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn lb(ip: Option<&str>, families: &[&str]) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_ip: ip.map(str::to_string),
                ip_families: Some(families.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let pools: Pools = "192.0.2.10-192.0.2.11,2001:db8::/127".parse().unwrap();
        let owners: HashMap<IpAddr, String> =
            [("192.0.2.10".parse().unwrap(), "ns/a".to_string())].into();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(
            decide(&lb(None, &["IPv4"]), "ns/b", &pools, &owners),
            Ok(vec![ip("192.0.2.11")])
        );
        assert_eq!(
            decide(&lb(None, &["IPv4", "IPv6"]), "ns/b", &pools, &owners),
            Ok(vec![ip("192.0.2.11"), ip("2001:db8::")])
        );
        assert_eq!(
            decide(&lb(Some("192.0.2.11"), &["IPv4"]), "ns/b", &pools, &owners),
            Ok(vec![ip("192.0.2.11")])
        );
        assert_eq!(
            decide(&lb(Some("192.0.2.10"), &["IPv4"]), "ns/b", &pools, &owners),
            Err(AllocError::InUse {
                ip: ip("192.0.2.10"),
                by: "ns/a".into()
            })
        );
        assert_eq!(
            decide(&lb(Some("192.0.2.10"), &["IPv4"]), "ns/a", &pools, &owners),
            Ok(vec![ip("192.0.2.10")])
        );
        assert_eq!(
            decide(
                &lb(Some("198.51.100.1"), &["IPv4"]),
                "ns/b",
                &pools,
                &owners
            ),
            Err(AllocError::NotInPool {
                ip: ip("198.51.100.1")
            })
        );
        assert!(matches!(
            decide(&lb(Some("x"), &["IPv4"]), "ns/b", &pools, &owners),
            Err(AllocError::Invalid { .. })
        ));
        assert_eq!(
            decide(&lb(None, &["IPv4"]), "ns/b", &Pools::default(), &owners),
            Err(AllocError::NoPool { family: None })
        );
        let full: HashMap<IpAddr, String> = [
            (ip("192.0.2.10"), "ns/a".to_string()),
            (ip("192.0.2.11"), "ns/c".to_string()),
        ]
        .into();
        assert_eq!(
            decide(&lb(None, &["IPv4"]), "ns/b", &pools, &full),
            Err(AllocError::Exhausted {
                family: Family::IPv4
            })
        );
    }
}
