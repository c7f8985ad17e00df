//! Strict field validation (`fieldValidation=Strict|Warn`): unknown and duplicate fields in a
//! request body, reported with upstream's strict-decoding texts (`unknown field "spec.foo"`,
//! `duplicate field "metadata.name"`).
//!
//! Owns: walking the raw body (JSON, or YAML) against the schema catalogue in [`crate::openapi`]
//! before typed decoding drops what it does not know. Must not: decide the status code or
//! message prefix (`… strict decoding error: …`); the HTTP layer does that per verb.

use crate::openapi::{self, Elem, ShapeRef};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The body as parsed, with every key kept in order (duplicates included).
enum Node {
    Leaf,
    List(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Node::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<KeyString>()? {
            entries.push((k.0, map.next_value::<Node>()?));
        }
        Ok(Node::Object(entries))
    }
}

/// A mapping key as text (YAML allows numbers and booleans as keys).
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyString, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<KeyString, E> {
                Ok(KeyString("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse(raw: &[u8]) -> Result<Node, String> {
    let first = raw.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if matches!(first, Some(b'{') | Some(b'[')) {
        return serde_json::from_slice::<Node>(raw).map_err(|e| e.to_string());
    }
    let options =
        serde_saphyr::options! { duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough };
    serde_saphyr::from_slice_with_options::<Node>(raw, options).map_err(|e| e.to_string())
}

/// Unknown and duplicate fields of a `kind` body, in document order, as upstream words them
/// (`unknown field "spec.foo"`, `duplicate field "spec.type"`). Err when the body does not parse.
/// Kinds without a schema report nothing. Strategic-merge directive keys (`$…`) are skipped, so
/// merge and strategic patch bodies can be checked too.
pub fn unknown_fields(kind: &str, raw: &[u8]) -> Result<Vec<String>, String> {
    let node = parse(raw)?;
    let mut out = Vec::new();
    if let Some(def) = openapi::kind_definition(kind) {
        walk(&node, Some(def), "", &mut out);
    }
    Ok(out)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Walks `node` as an object of `def` (None: free-form, nothing reported inside).
fn walk(node: &Node, def: Option<&'static str>, path: &str, out: &mut Vec<String>) {
    let (Node::Object(entries), Some(def)) = (node, def) else {
        return;
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in entries {
        // Strategic-merge directives (`$patch`, `$setElementOrder/…`) are not fields, so a patch
        // body can be checked like an object.
        if key.starts_with('$') {
            continue;
        }
        let field_path = join(path, key);
        if seen.contains(&key.as_str()) {
            out.push(format!("duplicate field {field_path:?}"));
            continue;
        }
        seen.push(key);
        match openapi::property(def, key) {
            None => out.push(format!("unknown field {field_path:?}")),
            Some(p) => walk_shape(value, p.shape, &field_path, out),
        }
    }
}

fn walk_shape(node: &Node, shape: ShapeRef, path: &str, out: &mut Vec<String>) {
    match (shape, node) {
        (ShapeRef::Struct(d), _) => walk(node, Some(d), path, out),
        (ShapeRef::Map(elem), Node::Object(entries)) => {
            let mut seen: Vec<&str> = Vec::new();
            for (k, v) in entries {
                let p = join(path, k);
                if seen.contains(&k.as_str()) {
                    out.push(format!("duplicate field {p:?}"));
                    continue;
                }
                seen.push(k);
                if let Elem::Struct(d) = elem {
                    walk(v, Some(d), &p, out);
                }
            }
        }
        (ShapeRef::List(Elem::Struct(d)), Node::List(items)) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, Some(d), &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_unknown_and_duplicate_fields() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "Service",
                r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","labels":{"x":"y"}},"spec":{"ports":[{"port":80}]}}"#,
                &[],
            ),
            (
                "Service",
                r#"{"metadata":{"name":"a"},"spec":{"foo":1}}"#,
                &[r#"unknown field "spec.foo""#],
            ),
            (
                "Service",
                r#"{"spec":{"ports":[{"port":80},{"port":81,"bar":{"x":1}}],"type":"ClusterIP","type":"NodePort"},"extra":true}"#,
                &[
                    r#"unknown field "spec.ports[1].bar""#,
                    r#"duplicate field "spec.type""#,
                    r#"unknown field "extra""#,
                ],
            ),
            (
                "Service",
                r#"{"metadata":{"name":"a","name":"b","creationTimestamp":null},"status":{"loadBalancer":{}}}"#,
                &[r#"duplicate field "metadata.name""#],
            ),
            (
                "Service",
                r#"{"metadata":{"labels":{"a":"1","a":"2"}}}"#,
                &[r#"duplicate field "metadata.labels.a""#],
            ),
            (
                "Service",
                r#"{"spec":{"ports":[{"port":80,"targetPort":"http"}],"selector":{"x":"y"}}}"#,
                &[],
            ),
            (
                "Pod",
                r#"{"spec":{"containers":[{"name":"a","image":"x","resources":{"limits":{"cpu":"1"}},"env":[{"name":"A","valueFrom":{"fieldRef":{"fieldPath":"x","nope":1}}}]}],"volumes":[{"name":"v","emptyDir":{}}]}}"#,
                &[r#"unknown field "spec.containers[0].env[0].valueFrom.fieldRef.nope""#],
            ),
            (
                "EndpointSlice",
                r#"{"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"],"conditions":{"ready":true,"bogus":1}}],"ports":[{"port":80}]}"#,
                &[r#"unknown field "endpoints[0].conditions.bogus""#],
            ),
            (
                "Namespace",
                r#"{"metadata":{"name":"a","managedFields":[{"manager":"m","fieldsV1":{"f:metadata":{}}}]}}"#,
                &[],
            ),
            (
                "ServiceCIDR",
                r#"{"spec":{"cidrs":["10.96.0.0/12"],"x":1}}"#,
                &[r#"unknown field "spec.x""#],
            ),
            (
                "IPAddress",
                r#"{"spec":{"parentRef":{"resource":"services","name":"a","namespace":"b","group":"","y":2}}}"#,
                &[r#"unknown field "spec.parentRef.y""#],
            ),
            ("Unknown", r#"{"a":1}"#, &[]),
        ];
        for (kind, body, want) in cases {
            assert_eq!(
                unknown_fields(kind, body.as_bytes()).expect(body),
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{body}"
            );
        }
    }

    #[test]
    fn patch_bodies_skip_directives() {
        let body = r#"{"spec":{"$setElementOrder/ports":[{"port":80}],"ports":[{"port":80,"$patch":"delete"}],"$retainKeys":["a"],"bogus":1}}"#;
        assert_eq!(
            unknown_fields("Service", body.as_bytes()).expect("parse"),
            vec![r#"unknown field "spec.bogus""#.to_string()]
        );
    }

    #[test]
    fn yaml_bodies() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: 80\n    foo: 1\n  type: ClusterIP\n  type: NodePort\n";
        assert_eq!(
            unknown_fields("Service", yaml.as_bytes()).expect("yaml"),
            vec![
                r#"unknown field "spec.ports[0].foo""#.to_string(),
                r#"duplicate field "spec.type""#.to_string()
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = unknown_fields("Service", &body);
            let _ = unknown_fields("Pod", &[b"{\"spec\":".as_slice(), &body].concat());
        }
    }

    #[test]
    fn malformed_bodies() {
        assert!(unknown_fields("Service", b"{\"a\":").is_err());
        assert!(unknown_fields("Service", b"a: [").is_err());
    }
}
