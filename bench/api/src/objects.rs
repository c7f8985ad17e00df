//! The objects the benchmark writes: a ClusterIP Service and an EndpointSlice shaped like the
//! ones kube-proxy consumes. Addresses are data only; nothing sends traffic to them.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

/// A ClusterIP Service with a selector and two ports. The padding annotation brings the stored
/// JSON (with server-set metadata) to about 1 KB, the size the etcd puts use.
pub fn service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "labels": {"app": name, "tier": "backend", "bench": "portico-bench-api"},
            "annotations": {"bench.portico.dev/padding": "p".repeat(160)},
        },
        "spec": {
            "selector": {"app": name},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "https", "port": 443, "targetPort": 8443},
            ],
        },
    }))?)
}

/// An EndpointSlice for `service` with three ready endpoints.
pub fn endpoint_slice(service: &str, index: usize) -> anyhow::Result<EndpointSlice> {
    let endpoint = |host: usize| {
        json!({
            "addresses": [format!("10.{}.{}.{}", 64 + (index >> 16) % 64, (index >> 8) % 256, (index * 3 + host) % 250 + 1)],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": format!("node-{host}"),
        })
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-abcde"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "portico-bench-api",
            },
        },
        "addressType": "IPv4",
        "endpoints": [endpoint(0), endpoint(1), endpoint(2)],
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "https", "port": 8443, "protocol": "TCP"},
        ],
    }))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_into_typed_values() {
        let svc = service("svc-1").expect("service");
        assert_eq!(svc.metadata.name.as_deref(), Some("svc-1"));
        let slice = endpoint_slice("svc-1", 70_000).expect("slice");
        assert_eq!(slice.endpoints.len(), 3);
        assert_eq!(slice.address_type, "IPv4");
    }
}
