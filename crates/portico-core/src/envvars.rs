//! The Service environment variables a kubelet injects into containers
//! (`{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT`, `{SVC}_SERVICE_PORT_{NAME}` and the Docker-link
//! `{SVC}_PORT…` family), with upstream's rules: only Services with a cluster IP (headless
//! and ExternalName have none), only the primary `spec.clusterIP`, names upper-cased with
//! `-` → `_`, and the `kubernetes` Service of the `default` namespace always included.
//! Must not: look anything up; callers pass the Services.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

/// One environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

fn env(name: String, value: String) -> EnvVar {
    EnvVar { name, value }
}

/// Upstream's name transform: upper case, `-` → `_` (leading digits and dots are not
/// handled upstream either).
pub fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// Upstream's `IsServiceIPSet`: a cluster IP that is neither empty nor `None`.
pub fn has_cluster_ip(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The variables for a list of Services, in order: per Service the host, the first port,
/// the named ports, then the Docker-link variables per port. Services without a cluster IP
/// or without ports are skipped.
pub fn from_services<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<EnvVar> {
    let mut out = Vec::new();
    for service in services {
        if !has_cluster_ip(service) {
            continue;
        }
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let prefix = env_name(service.metadata.name.as_deref().unwrap_or_default());

        out.push(env(format!("{prefix}_SERVICE_HOST"), ip.clone()));
        let port_var = format!("{prefix}_SERVICE_PORT");
        out.push(env(port_var.clone(), first.port.to_string()));
        for port in ports {
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                out.push(env(
                    format!("{port_var}_{}", env_name(name)),
                    port.port.to_string(),
                ));
            }
        }
        for (i, port) in ports.iter().enumerate() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let lower = protocol.to_lowercase();
            let url = format!("{lower}://{ip}:{}", port.port);
            if i == 0 {
                out.push(env(format!("{prefix}_PORT"), url.clone()));
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
            out.push(env(port_prefix.clone(), url));
            out.push(env(format!("{port_prefix}_PROTO"), lower));
            out.push(env(format!("{port_prefix}_PORT"), port.port.to_string()));
            out.push(env(format!("{port_prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// The variables a kubelet gives a pod in `namespace`, from every Service it can see:
/// the namespace's own Services when `enable_service_links` (the pod default), plus the
/// `kubernetes` Service of `default` always (a same-named Service in the pod's namespace
/// wins). Upstream keeps these in a map; here they come sorted by Service name, then in
/// [`from_services`] order, with later duplicates of a name replacing earlier ones.
pub fn for_namespace<'a>(
    namespace: &str,
    services: impl IntoIterator<Item = &'a Service>,
    enable_service_links: bool,
) -> Vec<EnvVar> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for service in services {
        if !has_cluster_ip(service) {
            continue;
        }
        let name = service.metadata.name.clone().unwrap_or_default();
        let ns = service.metadata.namespace.as_deref().unwrap_or_default();
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(service);
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, service);
        }
    }
    let mut out: Vec<EnvVar> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for var in from_services(chosen.into_values()) {
        match index.get(&var.name) {
            Some(&i) => out[i] = var,
            None => {
                index.insert(var.name.clone(), out.len());
                out.push(var);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                cluster_ips: Some(vec![ip.into(), "fd00::1".into()]),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: (!proto.is_empty()).then(|| proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pairs(vars: &[EnvVar]) -> Vec<(String, String)> {
        vars.iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    fn expect(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn upstream_cases() {
        // Cases follow upstream's envvars_test.go shapes.
        let cases: Vec<(Service, Vec<(String, String)>)> = vec![
            (
                svc("default", "foo-bar", "1.2.3.4", &[("", 8083, "TCP")]),
                expect(&[
                    ("FOO_BAR_SERVICE_HOST", "1.2.3.4"),
                    ("FOO_BAR_SERVICE_PORT", "8083"),
                    ("FOO_BAR_PORT", "tcp://1.2.3.4:8083"),
                    ("FOO_BAR_PORT_8083_TCP", "tcp://1.2.3.4:8083"),
                    ("FOO_BAR_PORT_8083_TCP_PROTO", "tcp"),
                    ("FOO_BAR_PORT_8083_TCP_PORT", "8083"),
                    ("FOO_BAR_PORT_8083_TCP_ADDR", "1.2.3.4"),
                ]),
            ),
            (
                svc(
                    "default",
                    "abc-123",
                    "5.6.7.8",
                    &[("u-d-p", 8081, "UDP"), ("t-c-p", 8081, "TCP")],
                ),
                expect(&[
                    ("ABC_123_SERVICE_HOST", "5.6.7.8"),
                    ("ABC_123_SERVICE_PORT", "8081"),
                    ("ABC_123_SERVICE_PORT_U_D_P", "8081"),
                    ("ABC_123_SERVICE_PORT_T_C_P", "8081"),
                    ("ABC_123_PORT", "udp://5.6.7.8:8081"),
                    ("ABC_123_PORT_8081_UDP", "udp://5.6.7.8:8081"),
                    ("ABC_123_PORT_8081_UDP_PROTO", "udp"),
                    ("ABC_123_PORT_8081_UDP_PORT", "8081"),
                    ("ABC_123_PORT_8081_UDP_ADDR", "5.6.7.8"),
                    ("ABC_123_PORT_8081_TCP", "tcp://5.6.7.8:8081"),
                    ("ABC_123_PORT_8081_TCP_PROTO", "tcp"),
                    ("ABC_123_PORT_8081_TCP_PORT", "8081"),
                    ("ABC_123_PORT_8081_TCP_ADDR", "5.6.7.8"),
                ]),
            ),
            (
                // Protocol unset defaults to TCP.
                svc(
                    "default",
                    "q-u-u-x",
                    "9.8.7.6",
                    &[("", 8084, ""), ("8085", 8085, "")],
                ),
                expect(&[
                    ("Q_U_U_X_SERVICE_HOST", "9.8.7.6"),
                    ("Q_U_U_X_SERVICE_PORT", "8084"),
                    ("Q_U_U_X_SERVICE_PORT_8085", "8085"),
                    ("Q_U_U_X_PORT", "tcp://9.8.7.6:8084"),
                    ("Q_U_U_X_PORT_8084_TCP", "tcp://9.8.7.6:8084"),
                    ("Q_U_U_X_PORT_8084_TCP_PROTO", "tcp"),
                    ("Q_U_U_X_PORT_8084_TCP_PORT", "8084"),
                    ("Q_U_U_X_PORT_8084_TCP_ADDR", "9.8.7.6"),
                    ("Q_U_U_X_PORT_8085_TCP", "tcp://9.8.7.6:8085"),
                    ("Q_U_U_X_PORT_8085_TCP_PROTO", "tcp"),
                    ("Q_U_U_X_PORT_8085_TCP_PORT", "8085"),
                    ("Q_U_U_X_PORT_8085_TCP_ADDR", "9.8.7.6"),
                ]),
            ),
            (
                svc("default", "headless", "None", &[("", 80, "TCP")]),
                vec![],
            ),
            (
                svc("default", "external-name", "", &[("", 80, "TCP")]),
                vec![],
            ),
        ];
        for (service, want) in cases {
            assert_eq!(
                pairs(&from_services([&service])),
                want,
                "{:?}",
                service.metadata.name
            );
        }
    }

    #[test]
    fn namespace_selection() {
        let services = vec![
            svc(
                "default",
                "kubernetes",
                "10.0.0.1",
                &[("https", 443, "TCP")],
            ),
            svc("default", "other", "10.0.0.2", &[("", 80, "TCP")]),
            svc("team", "web", "10.0.0.3", &[("", 80, "TCP")]),
            svc("team", "db", "None", &[("", 5432, "TCP")]),
        ];
        let names = |vars: Vec<EnvVar>| {
            let mut hosts: Vec<String> = vars
                .into_iter()
                .filter(|v| v.name.ends_with("_SERVICE_HOST"))
                .map(|v| v.name)
                .collect();
            hosts.sort();
            hosts
        };
        assert_eq!(
            names(for_namespace("team", &services, true)),
            vec!["KUBERNETES_SERVICE_HOST", "WEB_SERVICE_HOST"]
        );
        // enableServiceLinks=false keeps only the master service.
        assert_eq!(
            names(for_namespace("team", &services, false)),
            vec!["KUBERNETES_SERVICE_HOST"]
        );
        assert_eq!(
            names(for_namespace("default", &services, true)),
            vec!["KUBERNETES_SERVICE_HOST", "OTHER_SERVICE_HOST"]
        );
        // A Service named kubernetes in the pod's namespace wins over the master one.
        let mut with_own = services.clone();
        with_own.push(svc("team", "kubernetes", "10.0.0.9", &[("", 80, "TCP")]));
        let vars = for_namespace("team", &with_own, true);
        let host = vars
            .iter()
            .find(|v| v.name == "KUBERNETES_SERVICE_HOST")
            .map(|v| v.value.as_str());
        assert_eq!(host, Some("10.0.0.9"));
        // Only the primary cluster IP is exposed.
        assert!(vars.iter().all(|v| !v.value.contains("fd00")));
    }
}
