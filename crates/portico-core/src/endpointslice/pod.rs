//! Pod facts the reconcilers depend on: inclusion, readiness, addresses, port resolution and
//! hostnames, each following upstream's helpers of the same purpose.

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::AddressType;

/// Phase Succeeded or Failed: the pod will never serve again.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// True when the pod has a deletion timestamp.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The pod's IPs in status order (`podIPs`, falling back to `podIP`).
pub fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    status
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .into_iter()
        .collect()
}

/// Upstream's ShouldPodBeInEndpoints: not terminal, has an IP, and (unless terminating pods
/// are wanted) not terminating.
pub fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if is_terminal(pod) || pod_ips(pod).is_empty() {
        return false;
    }
    include_terminating || !is_terminating(pod)
}

/// The pod's addresses of one family (at most one per family in practice).
pub fn addresses_of_family(pod: &Pod, family: AddressType) -> Vec<String> {
    pod_ips(pod)
        .into_iter()
        .filter(|ip| AddressType::of_ip(ip) == Some(family))
        .map(str::to_string)
        .collect()
}

/// Resolves a Service port's targetPort for one pod: numbers as given, names looked up in the
/// containers' ports and then in restartable (sidecar) init containers, matching protocol.
/// `None` when a name is not found; the port is then left out for that pod.
pub fn find_port(pod: &Pod, service_port: &ServicePort) -> Option<i32> {
    let protocol = service_port.protocol.as_deref().unwrap_or("TCP");
    match service_port.target_port.as_ref() {
        None => Some(service_port.port),
        Some(IntOrString::Int(n)) if *n == 0 => Some(service_port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// Upstream's ShouldSetHostname: `spec.hostname` set and `spec.subdomain` names the Service
/// in the pod's own namespace.
pub fn should_set_hostname(pod: &Pod, service: &Service) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.hostname.as_deref().is_some_and(|h| !h.is_empty())
        && spec.subdomain.as_deref() == service.metadata.name.as_deref()
        && pod.metadata.namespace == service.metadata.namespace
}

/// When the pod last changed readiness, the input to the trigger-time annotation.
pub fn ready_transition_time(
    pod: &Pod,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodIP, PodSpec, PodStatus};

    fn pod_with(ports: Vec<(&str, i32, &str)>, sidecar: Vec<(&str, i32)>) -> Pod {
        let cps = |v: Vec<(&str, i32, &str)>| {
            Some(
                v.into_iter()
                    .map(|(n, p, proto)| ContainerPort {
                        name: Some(n.to_string()),
                        container_port: p,
                        protocol: Some(proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            )
        };
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    ports: cps(ports),
                    ..Default::default()
                }],
                init_containers: Some(vec![Container {
                    name: "side".into(),
                    restart_policy: Some("Always".into()),
                    ports: cps(sidecar.into_iter().map(|(n, p)| (n, p, "TCP")).collect()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ips: Some(vec![
                    PodIP {
                        ip: "10.0.0.1".into(),
                    },
                    PodIP {
                        ip: "fd00::1".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn find_port_cases() {
        let pod = pod_with(
            vec![("http", 8080, "TCP"), ("dns", 53, "UDP")],
            vec![("metrics", 9090)],
        );
        let sp = |target: Option<IntOrString>, proto: &str| ServicePort {
            port: 80,
            target_port: target,
            protocol: Some(proto.into()),
            ..Default::default()
        };
        let cases = [
            (sp(None, "TCP"), Some(80)),
            (sp(Some(IntOrString::Int(9376)), "TCP"), Some(9376)),
            (
                sp(Some(IntOrString::String("http".into())), "TCP"),
                Some(8080),
            ),
            (sp(Some(IntOrString::String("http".into())), "UDP"), None),
            (sp(Some(IntOrString::String("dns".into())), "UDP"), Some(53)),
            (
                sp(Some(IntOrString::String("metrics".into())), "TCP"),
                Some(9090),
            ),
            (sp(Some(IntOrString::String("missing".into())), "TCP"), None),
        ];
        for (i, (port, want)) in cases.iter().enumerate() {
            assert_eq!(find_port(&pod, port), *want, "case {i}");
        }
    }

    #[test]
    fn addresses_per_family() {
        let pod = pod_with(vec![], vec![]);
        assert_eq!(
            addresses_of_family(&pod, AddressType::IPv4),
            vec!["10.0.0.1"]
        );
        assert_eq!(
            addresses_of_family(&pod, AddressType::IPv6),
            vec!["fd00::1"]
        );
    }

    #[test]
    fn inclusion() {
        let mut pod = pod_with(vec![], vec![]);
        assert!(should_be_in_endpoints(&pod, false));
        pod.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert!(!should_be_in_endpoints(&pod, false));
        assert!(should_be_in_endpoints(&pod, true));
        if let Some(s) = pod.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        assert!(!should_be_in_endpoints(&pod, true));
        let no_ip = Pod::default();
        assert!(!should_be_in_endpoints(&no_ip, true));
    }
}
