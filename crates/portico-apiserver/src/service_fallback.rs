//! Basic Service defaults used only while `service::ServiceHooks` is not wired in: the fields
//! kubectl prints (type, sessionAffinity, ports' protocol and targetPort, traffic policies)
//! without any allocation. Must not: allocate IPs or ports; that is the Service strategy's job.

use serde_json::{Value, json};

pub fn defaults(svc: &mut Value, old: Option<&Value>) {
    if !svc.get("spec").is_some_and(|s| s.is_object()) {
        svc["spec"] = json!({});
    }
    let spec = svc["spec"].as_object_mut().expect("object ensured above");
    let ty = spec
        .entry("type")
        .or_insert(json!("ClusterIP"))
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        spec.entry("sessionAffinity").or_insert(json!("None"));
        spec.entry("internalTrafficPolicy")
            .or_insert(json!("Cluster"));
        spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
        spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        spec.entry("allocateLoadBalancerNodePorts")
            .or_insert(json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
        for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
            p.entry("protocol").or_insert(json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                p.entry("targetPort").or_insert(port);
            }
        }
    }
    // Keep what an earlier write allocated when the client left it out.
    if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
        for k in ["clusterIP", "clusterIPs"] {
            if !spec.contains_key(k)
                && let Some(v) = old_spec.get(k)
            {
                spec.insert(k.into(), v.clone());
            }
        }
    }
    if svc.get("status").is_none_or(|s| s.is_null()) {
        svc["status"] = json!({"loadBalancer": {}});
    }
}
