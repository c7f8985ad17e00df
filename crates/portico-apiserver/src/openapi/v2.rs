//! The minimal `/openapi/v2` document (gnostic `openapi.v2.Document`, protobuf), hand-encoded.
//!
//! It carries one PATCH operation per kind we serve, each declaring the `fieldValidation` query
//! parameter and its `x-kubernetes-group-version-kind`: enough for kubectl 1.27+ to decide that the
//! server validates fields, and for `kubectl explain` on 1.27/1.28 to move on to the v3 documents.

use super::KINDS;
use bytes::Bytes;
use std::sync::LazyLock;

/// Media type to answer `/openapi/v2` with (note the `.v1.0`, not the Accept's `@v1.0`).
pub const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A length-delimited field.
fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn msg(field: u32, build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut inner = Vec::new();
    build(&mut inner);
    let mut out = Vec::new();
    bytes_field(&mut out, field, &inner);
    out
}

/// Item path of a kind (`/api/v1/namespaces/{namespace}/services/{name}`).
pub(crate) fn item_path(k: &super::KindInfo) -> String {
    let prefix = if k.group.is_empty() {
        format!("/api/{}", k.version)
    } else {
        format!("/apis/{}/{}", k.group, k.version)
    };
    if k.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", k.plural)
    } else {
        format!("{prefix}/{}/{{name}}", k.plural)
    }
}

fn operation(k: &super::KindInfo) -> Vec<u8> {
    let mut op = Vec::new();
    // parameters { parameter { non_body_parameter { query_parameter_sub_schema {...} } } }
    op.extend(msg(8, |p| {
        p.extend(msg(1, |param| {
            param.extend(msg(2, |nb| {
                nb.extend(msg(3, |q| {
                    bytes_field(q, 2, b"query");
                    bytes_field(q, 4, b"fieldValidation");
                    bytes_field(q, 6, b"string");
                    varint(q, 20 << 3);
                    varint(q, 1);
                }))
            }))
        }))
    }));
    // responses { response_code { name: "200" value { response { description: "OK" } } } }
    op.extend(msg(9, |r| {
        r.extend(msg(1, |rc| {
            bytes_field(rc, 1, b"200");
            rc.extend(msg(2, |rv| {
                rv.extend(msg(1, |resp| bytes_field(resp, 1, b"OK")))
            }));
        }))
    }));
    let group = if k.group.is_empty() {
        "\"\"".to_string()
    } else {
        k.group.to_string()
    };
    let yaml = format!("group: {group}\nkind: {}\nversion: {}\n", k.kind, k.version);
    op.extend(msg(13, |ve| {
        bytes_field(ve, 1, b"x-kubernetes-group-version-kind");
        ve.extend(msg(2, |any| bytes_field(any, 2, yaml.as_bytes())));
    }));
    op
}

static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
    let mut doc = Vec::new();
    bytes_field(&mut doc, 1, b"2.0");
    doc.extend(msg(2, |info| {
        bytes_field(info, 1, b"Kubernetes");
        bytes_field(info, 2, b"unversioned");
    }));
    doc.extend(msg(8, |paths| {
        for k in KINDS {
            paths.extend(msg(2, |named| {
                bytes_field(named, 1, item_path(k).as_bytes());
                named.extend(msg(2, |item| bytes_field(item, 8, &operation(k))));
            }));
        }
    }));
    Bytes::from(doc)
});

/// The encoded document (computed once).
pub fn v2_protobuf() -> Bytes {
    DOCUMENT.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_like_the_captured_document() {
        let doc = v2_protobuf();
        // swagger: "2.0", then info.
        assert_eq!(&doc[..5], b"\x0a\x032.0");
        assert_eq!(doc[5], 0x12);
        let text = String::from_utf8_lossy(&doc);
        for k in KINDS {
            assert!(text.contains(&item_path(k)), "{}", k.kind);
        }
        assert!(text.contains("/apis/networking.k8s.io/v1/servicecidrs/{name}"));
        assert!(text.contains("group: \"\"\nkind: Service\nversion: v1\n"));
        assert!(text.contains("group: discovery.k8s.io\nkind: EndpointSlice\nversion: v1\n"));
    }
}
