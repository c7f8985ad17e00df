//! One case per validation rule: error type, field path and the exact message kube-apiserver
//! prints (`<field>: <Type>: <value>: <detail>`).

use serde_json::{Value, json};

use super::*;
use crate::field::ErrorType::*;

type Case<'a> = (&'a str, Value, Vec<(ErrorType, &'a str)>);

/// RFC 7386 merge patch, enough for building cases.
pub(crate) fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

pub(crate) fn base() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "web"},
                 "clusterIP": "10.0.0.10", "clusterIPs": ["10.0.0.10"],
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}
    })
}

fn svc(patch: Value) -> Service {
    let mut v = base();
    merge(&mut v, &patch);
    let mut s: Service = serde_json::from_value(v).expect("test object decodes");
    crate::service::set_defaults(&mut s);
    s
}

fn show(errs: &[FieldError]) -> Vec<(ErrorType, String)> {
    errs.iter().map(|e| (e.kind, e.to_string())).collect()
}

fn check(name: &str, patch: Value, want: &[(ErrorType, &str)]) {
    let got = show(&validate_service(&svc(patch)));
    let want: Vec<(ErrorType, String)> = want.iter().map(|(k, s)| (*k, s.to_string())).collect();
    assert_eq!(got, want, "case {name}");
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

#[test]
fn valid_base_has_no_errors() {
    check("base", json!({}), &[]);
    check(
        "nodeport",
        json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}),
        &[],
    );
    check(
        "lb",
        json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}], "loadBalancerSourceRanges": [" 10.0.0.0/8 "]}}),
        &[],
    );
    check(
        "externalname",
        json!({"spec": {"type": "ExternalName", "externalName": "example.com.", "clusterIP": null, "clusterIPs": null, "ipFamilies": null, "ipFamilyPolicy": null}}),
        &[],
    );
    check(
        "headless no ports",
        json!({"spec": {"ports": null, "clusterIP": "None", "clusterIPs": ["None"]}}),
        &[],
    );
}

#[test]
fn service_rules() {
    let cases: Vec<Case> = vec![
        (
            "name must be a DNS-1035 label",
            json!({"metadata": {"name": "1web"}}),
            vec![(
                Invalid,
                "metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
            )],
        ),
        (
            "ports required",
            json!({"spec": {"ports": null}}),
            vec![(Required, "spec.ports: Required value")],
        ),
        (
            "port range",
            json!({"spec": {"ports": [{"port": 70000, "targetPort": 80}]}}),
            vec![(
                Invalid,
                "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            )],
        ),
        (
            "port zero",
            json!({"spec": {"ports": [{"port": 0, "targetPort": 80}]}}),
            vec![(
                Invalid,
                "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            )],
        ),
        (
            "port name required when several",
            json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 81}]}}),
            vec![(Required, "spec.ports[1].name: Required value")],
        ),
        (
            "port name is a DNS-1123 label",
            json!({"spec": {"ports": [{"port": 80, "name": "Http"}]}}),
            vec![(
                Invalid,
                &*format!("spec.ports[0].name: Invalid value: \"Http\": {LABEL_MSG}").leak(),
            )],
        ),
        (
            "duplicate port name",
            json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]}}),
            vec![(Duplicate, "spec.ports[1].name: Duplicate value: \"a\"")],
        ),
        (
            "protocol not supported",
            json!({"spec": {"ports": [{"port": 80, "protocol": "ICMP"}]}}),
            vec![(
                NotSupported,
                "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            )],
        ),
        (
            "targetPort number",
            json!({"spec": {"ports": [{"port": 80, "targetPort": 65536}]}}),
            vec![(
                Invalid,
                "spec.ports[0].targetPort: Invalid value: 65536: must be between 1 and 65535, inclusive",
            )],
        ),
        (
            "targetPort name",
            json!({"spec": {"ports": [{"port": 80, "targetPort": "123"}]}}),
            vec![(
                Invalid,
                "spec.ports[0].targetPort: Invalid value: \"123\": must contain at least one letter (a-z)",
            )],
        ),
        (
            "appProtocol qualified name",
            json!({"spec": {"ports": [{"port": 80, "appProtocol": "a/b/c"}]}}),
            vec![(
                Invalid,
                "spec.ports[0].appProtocol: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
            )],
        ),
        (
            "duplicate port/protocol",
            json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]}}),
            vec![(
                Duplicate,
                "spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}",
            )],
        ),
        (
            "duplicate nodePort/protocol",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "name": "a", "nodePort": 30001}, {"port": 81, "name": "b", "nodePort": 30001}]}}),
            vec![(Duplicate, "spec.ports[1].nodePort: Duplicate value: 30001")],
        ),
        (
            "nodePort forbidden on ClusterIP",
            json!({"spec": {"ports": [{"port": 80, "nodePort": 30001}]}}),
            vec![(
                Forbidden,
                "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
            )],
        ),
        (
            "LoadBalancer may not expose the kubelet port",
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 10250, "nodePort": 30001}]}}),
            vec![(
                Invalid,
                "spec.ports[0]: Invalid value: 10250: may not expose port 10250 externally since it is used by kubelet",
            )],
        ),
        (
            "NodePort cannot be headless",
            json!({"spec": {"type": "NodePort", "clusterIP": "None", "clusterIPs": ["None"]}}),
            vec![(
                Invalid,
                "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services",
            )],
        ),
        (
            "LoadBalancer cannot be headless",
            json!({"spec": {"type": "LoadBalancer", "clusterIP": "None", "clusterIPs": ["None"]}}),
            vec![(
                Invalid,
                "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for LoadBalancer services",
            )],
        ),
        (
            "ExternalName hygiene",
            json!({"spec": {"type": "ExternalName", "externalName": ""}}),
            vec![
                (
                    Forbidden,
                    "spec.clusterIPs: Forbidden: may not be set for ExternalName services",
                ),
                (
                    Forbidden,
                    "spec.ipFamilies: Forbidden: may not be set for ExternalName services",
                ),
                (
                    Forbidden,
                    "spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services",
                ),
                (Required, "spec.externalName: Required value"),
            ],
        ),
        (
            "externalName is a subdomain",
            json!({"spec": {"type": "ExternalName", "externalName": "Bad_Name", "clusterIP": null, "clusterIPs": null, "ipFamilies": null, "ipFamilyPolicy": null}}),
            vec![(
                Invalid,
                "spec.externalName: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            )],
        ),
        (
            "sessionAffinity not supported",
            json!({"spec": {"sessionAffinity": "Cookie"}}),
            vec![(
                NotSupported,
                "spec.sessionAffinity: Unsupported value: \"Cookie\": supported values: \"ClientIP\", \"None\"",
            )],
        ),
        (
            "ClientIP timeout range",
            json!({"spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}}),
            vec![(
                Invalid,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 and less than 86400",
            )],
        ),
        (
            "clusterIPs required when clusterIP set",
            json!({"spec": {"clusterIPs": null}}),
            vec![(Required, "spec.clusterIPs: Required value")],
        ),
        (
            "clusterIPs first must match",
            json!({"spec": {"clusterIPs": ["10.0.0.11"]}}),
            vec![(
                Invalid,
                "spec.clusterIPs: Invalid value: []string{\"10.0.0.11\"}: first value must match `clusterIP`",
            )],
        ),
        (
            "clusterIPs empty without clusterIP",
            json!({"spec": {"clusterIP": null}}),
            vec![(
                Invalid,
                "spec.clusterIPs: Invalid value: []string{\"10.0.0.10\"}: must be empty when `clusterIP` is not specified",
            )],
        ),
        (
            "None first and only",
            json!({"spec": {"clusterIP": "None", "clusterIPs": ["None", "fd00::1"]}}),
            vec![(
                Invalid,
                "spec.clusterIPs: Invalid value: []string{\"None\", \"fd00::1\"}: 'None' must be the first and only value",
            )],
        ),
        (
            "clusterIPs at most two",
            json!({"spec": {"clusterIPs": ["10.0.0.10", "fd00::1", "10.0.0.12"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}}),
            vec![
                (
                    Invalid,
                    "spec.clusterIPs: Invalid value: []string{\"10.0.0.10\", \"fd00::1\", \"10.0.0.12\"}: may only hold up to 2 values",
                ),
                (
                    Invalid,
                    "spec.clusterIPs: Invalid value: []string{\"10.0.0.10\", \"fd00::1\", \"10.0.0.12\"}: may specify no more than one IP for each IP family",
                ),
            ],
        ),
        (
            "one IP per family",
            json!({"spec": {"clusterIPs": ["10.0.0.10", "10.0.0.11"], "ipFamilyPolicy": "RequireDualStack"}}),
            vec![(
                Invalid,
                "spec.clusterIPs: Invalid value: []string{\"10.0.0.10\", \"10.0.0.11\"}: may specify no more than one IP for each IP family",
            )],
        ),
        (
            "clusterIP must be an IP",
            json!({"spec": {"clusterIP": "10.0.0.300", "clusterIPs": ["10.0.0.300"]}}),
            vec![(
                Invalid,
                "spec.clusterIPs[0]: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )],
        ),
        (
            "clusterIP family must match ipFamilies",
            json!({"spec": {"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"]}}),
            vec![(
                Invalid,
                "spec.clusterIPs[0]: Invalid value: \"fd00::10\": expected an IPv4 value as indicated by `ipFamilies[0]`",
            )],
        ),
        (
            "ipFamilies values",
            json!({"spec": {"ipFamilies": ["IPv5"]}}),
            vec![(
                NotSupported,
                "spec.ipFamilies[0]: Unsupported value: \"IPv5\": supported values: \"IPv4\", \"IPv6\"",
            )],
        ),
        (
            "ipFamilies duplicate",
            json!({"spec": {"ipFamilies": ["IPv4", "IPv4"]}}),
            vec![(Duplicate, "spec.ipFamilies[1]: Duplicate value: \"IPv4\"")],
        ),
        (
            "ipFamilyPolicy values",
            json!({"spec": {"ipFamilyPolicy": "AnyStack"}}),
            vec![(
                NotSupported,
                "spec.ipFamilyPolicy: Unsupported value: \"AnyStack\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\"",
            )],
        ),
        (
            "externalIPs valid IP",
            json!({"spec": {"externalIPs": ["not-an-ip"]}}),
            vec![(
                Invalid,
                "spec.externalIPs[0]: Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )],
        ),
        (
            "externalIPs not loopback",
            json!({"spec": {"externalIPs": ["127.0.0.1"]}}),
            vec![(
                Invalid,
                "spec.externalIPs[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
            )],
        ),
        (
            "externalIPs not unspecified",
            json!({"spec": {"externalIPs": ["0.0.0.0"]}}),
            vec![(
                Invalid,
                "spec.externalIPs[0]: Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)",
            )],
        ),
        (
            "externalIPs not link-local",
            json!({"spec": {"externalIPs": ["169.254.1.1"]}}),
            vec![(
                Invalid,
                "spec.externalIPs[0]: Invalid value: \"169.254.1.1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)",
            )],
        ),
        (
            "externalIPs not link-local multicast",
            json!({"spec": {"externalIPs": ["224.0.0.5"]}}),
            vec![(
                Invalid,
                "spec.externalIPs[0]: Invalid value: \"224.0.0.5\": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
            )],
        ),
        (
            "type not supported",
            json!({"spec": {"type": "Bogus"}}),
            vec![(
                NotSupported,
                "spec.type: Unsupported value: \"Bogus\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
            )],
        ),
        (
            "loadBalancerSourceRanges outside LoadBalancer (capital-L quirk)",
            json!({"spec": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}}),
            vec![(
                Forbidden,
                "spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'",
            )],
        ),
        (
            "loadBalancerSourceRanges CIDRs",
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30001}], "loadBalancerSourceRanges": ["10.0.0.0/33"]}}),
            vec![(
                Invalid,
                "spec.LoadBalancerSourceRanges[0]: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            )],
        ),
        (
            "source-ranges annotation",
            json!({"metadata": {"annotations": {"service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8, bad"}}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30001}]}}),
            vec![(
                Invalid,
                "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]: Invalid value: \"bad\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            )],
        ),
        (
            "allocateLoadBalancerNodePorts outside LoadBalancer",
            json!({"spec": {"allocateLoadBalancerNodePorts": true}}),
            vec![(
                Forbidden,
                "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'",
            )],
        ),
        (
            "loadBalancerClass outside LoadBalancer",
            json!({"spec": {"loadBalancerClass": "example.com/lb"}}),
            vec![(
                Forbidden,
                "spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'",
            )],
        ),
        (
            "loadBalancerClass qualified name",
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30001}], "loadBalancerClass": "-bad"}}),
            vec![(
                Invalid,
                "spec.loadBalancerClass: Invalid value: \"-bad\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            )],
        ),
        (
            "externalTrafficPolicy on a ClusterIP Service",
            json!({"spec": {"externalTrafficPolicy": "Local"}}),
            vec![(
                Invalid,
                "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services",
            )],
        ),
        (
            "externalTrafficPolicy values",
            json!({"spec": {"type": "NodePort", "externalTrafficPolicy": "Nearby"}}),
            vec![(
                NotSupported,
                "spec.externalTrafficPolicy: Unsupported value: \"Nearby\": supported values: \"Cluster\", \"Local\"",
            )],
        ),
        (
            "healthCheckNodePort when not needed",
            json!({"spec": {"type": "NodePort", "healthCheckNodePort": 30005}}),
            vec![(
                Invalid,
                "spec.healthCheckNodePort: Invalid value: 30005: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            )],
        ),
        (
            "healthCheckNodePort required when needed",
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30001}], "externalTrafficPolicy": "Local"}}),
            vec![(Required, "spec.healthCheckNodePort: Required value")],
        ),
        (
            "internalTrafficPolicy values",
            json!({"spec": {"internalTrafficPolicy": "Nearby"}}),
            vec![(
                NotSupported,
                "spec.internalTrafficPolicy: Unsupported value: \"Nearby\": supported values: \"Cluster\", \"Local\"",
            )],
        ),
        (
            "trafficDistribution values",
            json!({"spec": {"trafficDistribution": "Anywhere"}}),
            vec![(
                NotSupported,
                "spec.trafficDistribution: Unsupported value: \"Anywhere\": supported values: \"PreferClose\", \"PreferSameNode\", \"PreferSameZone\"",
            )],
        ),
        (
            "topology annotations must match",
            json!({"metadata": {"annotations": {"service.kubernetes.io/topology-mode": "Auto", "service.kubernetes.io/topology-aware-hints": "Disabled"}}}),
            vec![(
                Invalid,
                "metadata.annotations[service.kubernetes.io/topology-mode]: Invalid value: \"Auto\": must match annotations[service.kubernetes.io/topology-aware-hints] when both are specified",
            )],
        ),
        (
            "selector labels",
            json!({"spec": {"selector": {"app": "bad value"}}}),
            vec![(
                Invalid,
                "spec.selector: Invalid value: \"bad value\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            )],
        ),
    ];
    for (name, patch, want) in cases {
        check(name, patch, &want);
    }
}

/// Rules that defaulting hides: checked on objects built without `set_defaults`.
#[test]
fn rules_hidden_by_defaulting() {
    let raw = |patch: Value| -> Vec<(ErrorType, String)> {
        let mut v = base();
        merge(&mut v, &patch);
        let s: Service = serde_json::from_value(v).expect("decodes");
        show(&validate_service_spec(&s))
    };
    let got = raw(
        json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30001, "protocol": "TCP", "targetPort": 80}], "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "externalTrafficPolicy": "Cluster"}}),
    );
    assert_eq!(
        got,
        vec![(
            Required,
            "allocateLoadBalancerNodePorts: Required value".to_string()
        )]
    );
    let got = raw(
        json!({"spec": {"ports": [{"port": 80, "targetPort": 80}], "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "type": "ClusterIP"}}),
    );
    assert_eq!(
        got,
        vec![(
            Required,
            "spec.ports[0].protocol: Required value".to_string()
        )]
    );
    let got = raw(
        json!({"spec": {"ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}], "internalTrafficPolicy": "Cluster", "type": "ClusterIP"}}),
    );
    assert_eq!(
        got,
        vec![(Required, "spec.sessionAffinity: Required value".to_string())]
    );
    let got = raw(
        json!({"spec": {"ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}], "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"}}),
    );
    assert_eq!(
        got,
        vec![(Required, "spec.type: Required value".to_string())]
    );
    let got = raw(
        json!({"spec": {"ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}], "sessionAffinity": "None", "type": "ClusterIP"}}),
    );
    assert_eq!(
        got,
        vec![(
            Required,
            "spec.internalTrafficPolicy: Required value".to_string()
        )]
    );
    let got = raw(
        json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}], "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"}}),
    );
    assert_eq!(
        got,
        vec![(
            Required,
            "spec.externalTrafficPolicy: Required value".to_string()
        )]
    );
    let got = raw(
        json!({"spec": {"ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}], "sessionAffinity": "ClientIP", "internalTrafficPolicy": "Cluster", "type": "ClusterIP"}}),
    );
    assert_eq!(
        got,
        vec![(
            Required,
            "spec.sessionAffinityConfig: Required value: when session affinity type is ClientIP"
                .to_string()
        )]
    );
    let got = raw(
        json!({"spec": {"ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}], "sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}, "internalTrafficPolicy": "Cluster", "type": "ClusterIP"}}),
    );
    assert_eq!(
        got,
        vec![(
            Forbidden,
            "spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None"
                .to_string()
        )]
    );
}

#[test]
fn update_rules() {
    let old = svc(
        json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30001}], "loadBalancerClass": "a.io/x", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30002}}),
    );
    let cases: Vec<Case> = vec![
        (
            "clusterIP immutable",
            json!({"spec": {"clusterIP": "10.0.0.11", "clusterIPs": ["10.0.0.11"]}}),
            vec![(
                Invalid,
                "spec.clusterIPs[0]: Invalid value: []string{\"10.0.0.11\"}: may not change once set",
            )],
        ),
        (
            "loadBalancerClass immutable",
            json!({"spec": {"loadBalancerClass": "b.io/y"}}),
            vec![(
                Invalid,
                "spec.loadBalancerClass: Invalid value: \"b.io/y\": may not change once set",
            )],
        ),
        (
            "healthCheckNodePort immutable",
            json!({"spec": {"healthCheckNodePort": 30003}}),
            vec![(
                Forbidden,
                "spec.healthCheckNodePort: Forbidden: field is immutable",
            )],
        ),
        (
            "ipFamilies immutable",
            json!({"spec": {"ipFamilies": ["IPv6"], "clusterIP": "10.0.0.10"}}),
            vec![
                (
                    Invalid,
                    "spec.ipFamilies[0]: Invalid value: []core.IPFamily{\"IPv6\"}: may not change once set",
                ),
                (
                    Invalid,
                    "spec.clusterIPs[0]: Invalid value: \"10.0.0.10\": expected an IPv6 value as indicated by `ipFamilies[0]`",
                ),
            ],
        ),
    ];
    for (name, patch, want) in cases {
        let mut v = serde_json::to_value(&old).expect("encodes");
        merge(&mut v, &patch);
        let new: Service = serde_json::from_value(v).expect("decodes");
        let got = show(&validate_service_update(&new, &old));
        let want: Vec<(ErrorType, String)> =
            want.iter().map(|(k, s)| (*k, s.to_string())).collect();
        assert_eq!(got, want, "case {name}");
    }
    // Releasing the secondary cluster IP needs SingleStack.
    let dual = svc(
        json!({"spec": {"clusterIPs": ["10.0.0.10", "fd00::10"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"}}),
    );
    let mut down = dual.clone();
    spec_mut(&mut down).cluster_ips = Some(vec!["10.0.0.10".into()]);
    spec_mut(&mut down).ip_families = Some(vec!["IPv4".into()]);
    let got = show(&validate_service_update(&down, &dual));
    assert_eq!(
        got,
        vec![
            (Invalid, "spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be set to 'SingleStack' when releasing the secondary clusterIP".to_string()),
            (Invalid, "spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be set to 'SingleStack' when releasing the secondary ipFamily".to_string()),
        ]
    );
    // Headless Services may change families.
    let headless = svc(json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}));
    let mut h2 = headless.clone();
    spec_mut(&mut h2).ip_families = Some(vec!["IPv6".into()]);
    assert!(validate_service_update(&h2, &headless).is_empty());
}

#[test]
fn status_rules() {
    let cluster = svc(json!({}));
    let mut with_ingress = cluster.clone();
    with_ingress.status = serde_json::from_value(
        json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "VIP"}]}}),
    )
    .ok();
    assert_eq!(
        show(&validate_service_status_update(&with_ingress, &cluster)),
        vec![(Forbidden, "status.loadBalancer.ingress: Forbidden: may only be used when `spec.type` is 'LoadBalancer'".to_string())]
    );
    let lb =
        svc(json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30001}]}}));
    let status = |v: Value| {
        let mut s = lb.clone();
        s.status = serde_json::from_value(v).ok();
        show(&validate_service_status_update(&s, &lb))
    };
    assert_eq!(
        status(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})),
        vec![(Required, "status.loadBalancer.ingress[0].ipMode: Required value: must be specified when `ip` is set".to_string())]
    );
    assert_eq!(
        status(json!({"loadBalancer": {"ingress": [{"hostname": "lb.example.com", "ipMode": "VIP"}]}})),
        vec![(Forbidden, "status.loadBalancer.ingress[0].ipMode: Forbidden: may not be specified when `ip` is not set".to_string())]
    );
    assert_eq!(
        status(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "Magic"}]}})),
        vec![(NotSupported, "status.loadBalancer.ingress[0].ipMode: Unsupported value: \"Magic\": supported values: \"Proxy\", \"VIP\"".to_string())]
    );
    assert_eq!(
        status(json!({"loadBalancer": {"ingress": [{"hostname": "1.2.3.4"}]}})),
        vec![(Invalid, "status.loadBalancer.ingress[0].hostname: Invalid value: \"1.2.3.4\": must be a DNS name, not an IP address".to_string())]
    );
    assert!(
        status(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "Proxy"}]}}))
            .is_empty()
    );
}
