//! Generic validation with upstream's texts.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::*;
use crate::field::ErrorType::*;

#[test]
fn name_rules() {
    assert!(is_dns1123_label("my-name").is_empty());
    assert_eq!(
        is_dns1123_label("-a"),
        vec![
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        ]
    );
    assert_eq!(
        is_dns1123_label(&"a".repeat(64))[0],
        "must be no more than 63 characters"
    );
    assert!(is_dns1123_subdomain("a.b-c.d").is_empty());
    assert_eq!(is_dns1123_subdomain("a..b").len(), 1);
    assert_eq!(
        is_dns1123_subdomain(&"a".repeat(254))[0],
        "must be no more than 253 characters"
    );
    assert!(is_dns1035_label("web").is_empty());
    assert_eq!(is_dns1035_label("9web").len(), 1);
    assert!(is_qualified_name("example.com/MyName").is_empty());
    assert_eq!(
        is_qualified_name("/x"),
        vec!["prefix part must be non-empty"]
    );
    assert_eq!(
        is_qualified_name("Bad_Prefix/x"),
        vec![
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ]
    );
    assert_eq!(is_qualified_name("a/"), vec![
        "name part must be non-empty".to_string(),
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string()
    ]);
    assert!(is_valid_label_value("").is_empty());
    assert_eq!(
        is_valid_label_value(&"a".repeat(64))[0],
        "must be no more than 63 characters"
    );
    assert_eq!(
        is_valid_port_name("http--x"),
        vec!["must not contain consecutive hyphens"]
    );
    assert_eq!(
        is_valid_port_name("-http"),
        vec!["must not begin or end with a hyphen"]
    );
    assert_eq!(
        is_valid_port_name("http_x"),
        vec!["must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"]
    );
    assert_eq!(
        is_valid_port_name("a-very-long-port-name"),
        vec!["must be no more than 15 characters"]
    );
    assert_eq!(name_kind_for("services"), NameKind::Dns1035Label);
    assert_eq!(name_kind_for("namespaces"), NameKind::Dns1123Label);
    assert_eq!(name_kind_for("pods"), NameKind::Dns1123Subdomain);
    assert!(validate_pod_name("a.b", false).is_empty());
    assert!(!validate_namespace_name("a.b", false).is_empty());
    assert!(validate_node_name("node-1.example", false).is_empty());
}

fn meta(v: serde_json::Value) -> ObjectMeta {
    serde_json::from_value(v).expect("meta decodes")
}

#[test]
fn object_meta_rules() {
    let cases: Vec<(serde_json::Value, bool, NameKind, Vec<&str>)> = vec![
        (
            json!({"name": "ok", "namespace": "default"}),
            true,
            NameKind::Dns1123Subdomain,
            vec![],
        ),
        (
            json!({"namespace": "default"}),
            true,
            NameKind::Dns1123Subdomain,
            vec!["metadata.name: Required value: name or generateName is required"],
        ),
        (
            json!({"name": "a"}),
            true,
            NameKind::Dns1123Subdomain,
            vec!["metadata.namespace: Required value"],
        ),
        (
            json!({"name": "a", "namespace": "x"}),
            false,
            NameKind::Dns1123Subdomain,
            vec!["metadata.namespace: Forbidden: not allowed on this type"],
        ),
        (
            json!({"name": "a", "generateName": "web-", "namespace": "d"}),
            true,
            NameKind::Dns1035Label,
            vec![],
        ),
        (
            json!({"name": "a", "namespace": "d", "labels": {"a b": "c"}}),
            true,
            NameKind::Dns1123Subdomain,
            vec![
                "metadata.labels: Invalid value: \"a b\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ],
        ),
        (
            json!({"name": "a", "namespace": "d", "annotations": {"big": "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT)}}),
            true,
            NameKind::Dns1123Subdomain,
            vec!["metadata.annotations: Too long: may not be more than 262144 bytes"],
        ),
    ];
    for (m, ns, kind, want) in cases {
        let got: Vec<String> = validate_object_meta(&meta(m.clone()), ns, kind)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(got, want, "{m}");
    }
    let old = meta(json!({"name": "a", "namespace": "d", "uid": "1"}));
    let new = meta(json!({"name": "a", "namespace": "d", "uid": "2"}));
    let errs = validate_object_meta_update(&new, &old);
    assert_eq!(
        errs[0].to_string(),
        "metadata.uid: Invalid value: \"2\": field is immutable"
    );
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    let mut base = json!({"metadata": {"name": "web-abc", "namespace": "default"}, "addressType": "IPv4", "endpoints": [], "ports": []});
    if let (Some(b), Some(p)) = (base.as_object_mut(), v.as_object()) {
        for (k, val) in p {
            b.insert(k.clone(), val.clone());
        }
    }
    let mut s: EndpointSlice = serde_json::from_value(base).expect("slice decodes");
    default_endpoint_slice(&mut s);
    s
}

#[test]
fn endpoint_slice_rules() {
    let ok = slice(
        json!({"endpoints": [{"addresses": ["10.1.2.3"], "hostname": "pod-a", "nodeName": "node-1"}], "ports": [{"port": 80}]}),
    );
    assert!(validate_endpoint_slice(&ok).is_empty());
    assert_eq!(
        ok.ports.as_ref().and_then(|p| p[0].name.clone()),
        Some(String::new())
    );
    assert_eq!(
        ok.ports.as_ref().and_then(|p| p[0].protocol.clone()),
        Some("TCP".to_string())
    );

    let many: Vec<serde_json::Value> = (0..1001)
        .map(|_| json!({"addresses": ["10.1.2.3"]}))
        .collect();
    let cases: Vec<(serde_json::Value, Vec<(ErrorType, &str)>)> = vec![
        (
            json!({"addressType": ""}),
            vec![(Required, "addressType: Required value")],
        ),
        (
            json!({"addressType": "IP"}),
            vec![(
                NotSupported,
                "addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
            )],
        ),
        (
            json!({"endpoints": many}),
            vec![(
                TooMany,
                "endpoints: Too many: 1001: must have at most 1000 items",
            )],
        ),
        (
            json!({"endpoints": [{"addresses": []}]}),
            vec![(
                Required,
                "endpoints[0].addresses: Required value: must contain at least 1 address",
            )],
        ),
        (
            json!({"endpoints": [{"addresses": ["fd00::1"]}]}),
            vec![(
                Invalid,
                "endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
            )],
        ),
        (
            json!({"endpoints": [{"addresses": ["127.0.0.1"]}]}),
            vec![(
                Invalid,
                "endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
            )],
        ),
        (
            json!({"addressType": "FQDN", "endpoints": [{"addresses": ["localhost"]}]}),
            vec![(
                Invalid,
                "endpoints[0].addresses[0]: Invalid value: \"localhost\": should be a domain with at least two segments separated by dots",
            )],
        ),
        (
            json!({"endpoints": [{"addresses": ["10.1.2.3"], "hostname": "Pod_A"}]}),
            vec![(
                Invalid,
                "endpoints[0].hostname: Invalid value: \"Pod_A\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            )],
        ),
        (
            json!({"endpoints": [{"addresses": ["10.1.2.3"], "hints": {"forZones": [{"name": "a"}, {"name": "a"}]}}]}),
            vec![(
                Duplicate,
                "endpoints[0].hints.forZones[1].name: Duplicate value: \"a\"",
            )],
        ),
        (
            json!({"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}),
            vec![(Duplicate, "ports[1].name: Duplicate value: \"a\"")],
        ),
        (
            json!({"ports": [{"name": "a", "port": 1, "protocol": "ICMP"}]}),
            vec![(
                NotSupported,
                "ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            )],
        ),
    ];
    for (patch, want) in cases {
        let s = slice(patch.clone());
        let got: Vec<(ErrorType, String)> = validate_endpoint_slice(&s)
            .iter()
            .map(|e| (e.kind, e.to_string()))
            .collect();
        let want: Vec<(ErrorType, String)> =
            want.iter().map(|(k, m)| (*k, m.to_string())).collect();
        assert_eq!(got, want);
    }
    let many_ports: Vec<serde_json::Value> = (0..101)
        .map(|i| json!({"name": format!("p{i}"), "port": 1000 + i}))
        .collect();
    let errs = validate_endpoint_slice(&slice(json!({"ports": many_ports})));
    assert_eq!(
        errs[0].to_string(),
        "ports: Too many: 101: must have at most 100 items"
    );
    let mut v6 = ok.clone();
    v6.address_type = "IPv6".into();
    assert_eq!(
        validate_endpoint_slice_update(&v6, &ok)
            .last()
            .map(|e| e.to_string()),
        Some("addressType: Invalid value: \"IPv6\": field is immutable".to_string())
    );
}
