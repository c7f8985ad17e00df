//! Defaulting, IP-family initialisation, allocated-value patching and type-change dropping.

use serde_json::{Value, json};

use super::*;
use crate::service::validate::tests::merge;

fn make(v: Value) -> Service {
    let mut s: Service = serde_json::from_value(v).expect("decodes");
    crate::service::set_defaults(&mut s);
    s
}

fn spec_json(s: &Service) -> Value {
    serde_json::to_value(s).expect("encodes")["spec"].clone()
}

#[test]
fn defaults_table() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "ClusterIP",
            json!({"spec": {"ports": [{"port": 80}]}}),
            json!({"type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                   "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}),
        ),
        (
            "NodePort gets externalTrafficPolicy",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "UDP", "targetPort": "dns"}]}}),
            json!({"type": "NodePort", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "externalTrafficPolicy": "Cluster",
                   "ports": [{"port": 80, "protocol": "UDP", "targetPort": "dns"}]}),
        ),
        (
            "LoadBalancer gets allocateLoadBalancerNodePorts",
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": 0}]}}),
            json!({"type": "LoadBalancer", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "externalTrafficPolicy": "Cluster",
                   "allocateLoadBalancerNodePorts": true, "ports": [{"port": 443, "protocol": "TCP", "targetPort": 443}]}),
        ),
        (
            "ClusterIP with externalIPs is externally accessible",
            json!({"spec": {"externalIPs": ["192.0.2.1"], "ports": [{"port": 80}]}}),
            json!({"type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "externalTrafficPolicy": "Cluster",
                   "externalIPs": ["192.0.2.1"], "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}),
        ),
        (
            "ClientIP affinity gets its timeout",
            json!({"spec": {"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}}),
            json!({"type": "ClusterIP", "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                   "internalTrafficPolicy": "Cluster", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}),
        ),
        (
            "None affinity drops a config",
            json!({"spec": {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}, "ports": [{"port": 80}]}}),
            json!({"type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}),
        ),
        (
            "ExternalName gets no traffic policies",
            json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}),
            json!({"type": "ExternalName", "externalName": "example.com", "sessionAffinity": "None"}),
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(spec_json(&make(input)), want, "case {name}");
    }
    let mut lb = make(
        json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "x.example"}]}}}),
    );
    crate::service::set_defaults(&mut lb);
    let st = serde_json::to_value(&lb).expect("encodes")["status"].clone();
    assert_eq!(
        st,
        json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "VIP"}, {"hostname": "x.example"}]}})
    );
}

fn fams(s: &Service) -> (Vec<String>, Option<String>) {
    (
        ip_families(s).to_vec(),
        ip_family_policy(s).map(str::to_string),
    )
}

#[test]
fn ip_family_init_table() {
    use IpFamily::*;
    let v4 = [V4];
    let dual = [V4, V6];
    let v6first = [V6, V4];
    type OkCase<'a> = (&'a str, Value, &'a [IpFamily], Vec<&'a str>, &'a str);
    let ok_cases: Vec<OkCase> = vec![
        (
            "default single-stack",
            json!({}),
            &v4,
            vec!["IPv4"],
            "SingleStack",
        ),
        (
            "default on dual cluster stays single",
            json!({}),
            &dual,
            vec!["IPv4"],
            "SingleStack",
        ),
        (
            "primary family is the cluster's first",
            json!({}),
            &v6first,
            vec!["IPv6"],
            "SingleStack",
        ),
        (
            "PreferDualStack on single cluster",
            json!({"ipFamilyPolicy": "PreferDualStack"}),
            &v4,
            vec!["IPv4"],
            "PreferDualStack",
        ),
        (
            "PreferDualStack on dual cluster",
            json!({"ipFamilyPolicy": "PreferDualStack"}),
            &dual,
            vec!["IPv4", "IPv6"],
            "PreferDualStack",
        ),
        (
            "RequireDualStack, v6 first",
            json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}),
            &dual,
            vec!["IPv6", "IPv4"],
            "RequireDualStack",
        ),
        (
            "family inferred from clusterIP",
            json!({"clusterIP": "fd00::5", "clusterIPs": ["fd00::5"]}),
            &dual,
            vec!["IPv6"],
            "SingleStack",
        ),
        (
            "headless selectorless is RequireDualStack",
            json!({"clusterIP": "None", "selector": null}),
            &dual,
            vec!["IPv4", "IPv6"],
            "RequireDualStack",
        ),
        (
            "headless selectorless on single cluster",
            json!({"clusterIP": "None", "selector": null}),
            &v4,
            vec!["IPv4", "IPv6"],
            "RequireDualStack",
        ),
        (
            "headless with selector",
            json!({"clusterIP": "None"}),
            &dual,
            vec!["IPv4"],
            "SingleStack",
        ),
    ];
    for (name, spec, cluster, want_fams, want_policy) in ok_cases {
        let mut v = json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}});
        merge(&mut v, &json!({"spec": spec}));
        let mut s = make(v);
        normalize_cluster_ips(&mut s, None);
        init_ip_family_fields(&mut s, None, cluster)
            .unwrap_or_else(|e| panic!("case {name}: {e:?}"));
        assert_eq!(
            fams(&s),
            (
                want_fams.iter().map(|s| s.to_string()).collect(),
                Some(want_policy.to_string())
            ),
            "case {name}"
        );
    }
    let err_cases: Vec<(&str, Value, &[IpFamily], &str)> = vec![
        (
            "RequireDualStack on single cluster",
            json!({"ipFamilyPolicy": "RequireDualStack"}),
            &v4,
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        ),
        (
            "family not configured",
            json!({"ipFamilies": ["IPv6"]}),
            &v4,
            "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster",
        ),
        (
            "clusterIP family not configured",
            json!({"clusterIP": "fd00::5", "clusterIPs": ["fd00::5"]}),
            &v4,
            "spec.clusterIPs[0]: Invalid value: []string{\"fd00::5\"}: IPv6 is not configured on this cluster",
        ),
        (
            "SingleStack with two families",
            json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}),
            &dual,
            "spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
        ),
    ];
    for (name, spec, cluster, want) in err_cases {
        let mut v = json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}});
        merge(&mut v, &json!({"spec": spec}));
        let mut s = make(v);
        normalize_cluster_ips(&mut s, None);
        let errs = init_ip_family_fields(&mut s, None, cluster).expect_err(name);
        assert_eq!(
            errs.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            vec![want.to_string()],
            "case {name}"
        );
    }
}

fn stored(v: Value) -> Service {
    make(v)
}

#[test]
fn put_keeps_allocated_values() {
    let old = stored(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {
        "type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
        "clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "https", "port": 443, "nodePort": 30443}]}}),
    );
    // kubectl replace with the original manifest: no clusterIP, no nodePorts, no HCNP.
    let mut new = stored(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {
        "type": "LoadBalancer", "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443, "nodePort": 30080}]}}),
    );
    patch_allocated_values(&mut new, &old);
    normalize_cluster_ips(&mut new, Some(&old));
    assert_eq!(cluster_ip(&new), "10.0.0.9");
    assert_eq!(cluster_ips(&new), ["10.0.0.9".to_string()]);
    // 30080 is used by the new `https` port, so `http` does not get it back.
    assert_eq!(
        ports(&new).iter().map(|p| p.node_port).collect::<Vec<_>>(),
        vec![None, Some(30080)]
    );
    assert_eq!(health_check_node_port(&new), 31000);
}

#[test]
fn normalize_cluster_ips_cases() {
    let old = stored(
        json!({"spec": {"clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "ports": [{"port": 80}]}}),
    );
    // An old client patches clusterIP only.
    let mut new = stored(json!({"spec": {"clusterIP": "10.0.0.9", "ports": [{"port": 80}]}}));
    normalize_cluster_ips(&mut new, Some(&old));
    assert_eq!(cluster_ips(&new), ["10.0.0.9".to_string()]);
    // Clearing clusterIP alone clears clusterIPs too (then validation complains).
    let mut new = stored(json!({"spec": {"clusterIPs": ["10.0.0.9"], "ports": [{"port": 80}]}}));
    normalize_cluster_ips(&mut new, Some(&old));
    assert!(cluster_ips(&new).is_empty());
    // Changing clusterIP only moves clusterIPs with it.
    let mut new = stored(
        json!({"spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.9"], "ports": [{"port": 80}]}}),
    );
    normalize_cluster_ips(&mut new, Some(&old));
    assert_eq!(cluster_ips(&new), ["10.0.0.7".to_string()]);
}

#[test]
fn type_change_drops_fields() {
    let lb = stored(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {
        "type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000, "loadBalancerClass": "a.io/b",
        "clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "ports": [{"port": 80, "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "VIP"}]}}}),
    );

    // LoadBalancer → ClusterIP with the stored spec otherwise unchanged.
    let mut v = serde_json::to_value(&lb).expect("encodes");
    merge(&mut v, &json!({"spec": {"type": "ClusterIP"}}));
    let mut to_cip: Service = serde_json::from_value(v).expect("decodes");
    prepare_for_update(&mut to_cip, &lb);
    let s = spec_json(&to_cip);
    assert_eq!(s.get("healthCheckNodePort"), None);
    assert_eq!(s.get("allocateLoadBalancerNodePorts"), None);
    assert_eq!(s.get("loadBalancerClass"), None);
    assert_eq!(s.get("externalTrafficPolicy"), None);
    assert_eq!(s["ports"][0].get("nodePort"), None);
    assert_eq!(s["clusterIP"], "10.0.0.9");
    assert_eq!(
        serde_json::to_value(&to_cip).expect("encodes")["status"],
        json!({"loadBalancer": {}})
    );
    assert!(
        crate::service::validate_service_update(&to_cip, &lb)
            .iter()
            .all(|e| e.field != "spec.ports[0].nodePort")
    );

    // A nodePort the user changed while moving to ClusterIP is kept, and validation rejects it.
    let mut v = serde_json::to_value(&lb).expect("encodes");
    merge(
        &mut v,
        &json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30081}]}}),
    );
    let mut changed: Service = serde_json::from_value(v).expect("decodes");
    prepare_for_update(&mut changed, &lb);
    let errs = crate::service::validate_service_update(&changed, &lb);
    assert!(
        errs.iter().any(|e| e.to_string()
            == "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
        "{errs:?}"
    );

    // → ExternalName: cluster IP fields go.
    let mut v = serde_json::to_value(&lb).expect("encodes");
    merge(
        &mut v,
        &json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}),
    );
    let mut to_en: Service = serde_json::from_value(v).expect("decodes");
    prepare_for_update(&mut to_en, &lb);
    let s = spec_json(&to_en);
    for f in [
        "clusterIP",
        "clusterIPs",
        "ipFamilies",
        "ipFamilyPolicy",
        "externalTrafficPolicy",
        "healthCheckNodePort",
    ] {
        assert_eq!(s.get(f), None, "{f} dropped");
    }
    let errs = crate::service::validate_service_update(&to_en, &lb);
    assert!(errs.is_empty(), "{errs:?}");
}
