//! Decoding `application/vnd.kubernetes.protobuf` request bodies into JSON objects.
//!
//! Owns: the `k8s\0` + `runtime.Unknown` envelope and a table-driven proto2 decoder for the kinds
//! we serve (descriptors generated from k8s.io/api `generated.proto` and `types.go`).
//! Must not: panic or recurse without bound on any input; encode protobuf (we answer in JSON).
//!
//! Go writes zero values of non-pointer fields explicitly (`clusterIP: ""`, `generation: 0`); those
//! are dropped when Go's JSON would omit them (`omitempty`), so the result equals what a JSON
//! client would have sent. Pointer fields (`ready: false`, EndpointPort `name: ""`) are kept.

mod descriptors;

use serde_json::{Map, Value};

/// The magic prefix of Kubernetes protobuf bodies.
pub const MAGIC: &[u8] = b"k8s\0";

const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    /// An embedded Go struct whose fields appear in the parent's JSON object.
    Inline(&'static [Field]),
    /// `map<string, V>`.
    MapOf(&'static Kind),
    Time,
    MicroTime,
    IntOrString,
    Quantity,
    FieldsV1,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Field {
    num: u32,
    name: &'static str,
    kind: Kind,
    repeated: bool,
    /// Go writes the field for a zero value (pointer or non-omitempty): keep `""`/`0`/`false`.
    keep_zero: bool,
}

/// Decodes a protobuf request body into the equivalent JSON object (with apiVersion and kind).
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| {
        "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
            .to_string()
    })?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut content_encoding = String::new();
    let mut r = Reader::new(rest);
    while let Some((num, wire)) = r.key()? {
        match (num, wire) {
            (1, 2) => {
                let mut tm = Reader::new(r.bytes()?);
                while let Some((n, w)) = tm.key()? {
                    match (n, w) {
                        (1, 2) => api_version = tm.string()?,
                        (2, 2) => kind = tm.string()?,
                        _ => tm.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = r.bytes()?,
            (3, 2) => content_encoding = r.string()?,
            _ => r.skip(wire)?,
        }
    }
    if !content_encoding.is_empty() {
        return Err(format!(
            "unsupported protobuf content encoding {content_encoding:?}"
        ));
    }
    if kind.is_empty() {
        return Err("Object 'Kind' is missing in protobuf envelope".into());
    }
    let Some(fields) = descriptors::root(&api_version, &kind) else {
        return Err(format!(
            "no kind {kind:?} is registered for version {api_version:?}"
        ));
    };
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    decode_into(raw, fields, &mut obj, 0)?;
    Ok(Value::Object(obj))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err("unexpected EOF".into());
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("proto: integer overflow".into())
    }

    /// The next field key, or None at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        let num = k >> 3;
        let wire = (k & 7) as u8;
        if num == 0 || num > u64::from(u32::MAX >> 3) {
            return Err(format!("proto: illegal field number {num}"));
        }
        Ok(Some((num as u32, wire)))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return Err("unexpected EOF".into());
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self) -> Result<String, String> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    fn fixed(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("unexpected EOF")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.fixed(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.fixed(4).map(|_| ()),
            w => Err(format!("proto: illegal wireType {w}")),
        }
    }
}

fn wire_error(field: &Field, wire: u8) -> String {
    format!(
        "proto: wrong wireType = {wire} for field {}",
        if field.name.is_empty() {
            "(inline)"
        } else {
            field.name
        }
    )
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        Value::Null => true,
        _ => false,
    }
}

fn decode_into(
    buf: &[u8],
    fields: &'static [Field],
    obj: &mut Map<String, Value>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("proto: message nested too deeply".into());
    }
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.key()? {
        let Some(field) = fields.iter().find(|f| f.num == num) else {
            r.skip(wire)?;
            continue;
        };
        match field.kind {
            Kind::Inline(inner) => {
                if wire != 2 {
                    return Err(wire_error(field, wire));
                }
                decode_into(r.bytes()?, inner, obj, depth + 1)?;
            }
            Kind::MapOf(value_kind) => {
                if wire != 2 {
                    return Err(wire_error(field, wire));
                }
                let (k, v) = map_entry(r.bytes()?, value_kind, depth)?;
                let entry = obj
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(k, v);
                }
            }
            // Packed repeated scalars.
            Kind::Int | Kind::Bool if field.repeated && wire == 2 => {
                let mut packed = Reader::new(r.bytes()?);
                while packed.pos < packed.buf.len() {
                    let v = scalar(&mut packed, field, 0, depth)?;
                    push(obj, field.name, v);
                }
            }
            _ => {
                let v = scalar(&mut r, field, wire, depth)?;
                if field.repeated {
                    push(obj, field.name, v);
                } else if v.is_null() || (!field.keep_zero && is_zero(&v)) {
                    obj.remove(field.name);
                } else {
                    obj.insert(field.name.to_string(), v);
                }
            }
        }
    }
    Ok(())
}

fn push(obj: &mut Map<String, Value>, name: &str, v: Value) {
    let entry = obj.entry(name).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = entry {
        a.push(v);
    }
}

fn map_entry(
    buf: &[u8],
    value_kind: &'static Kind,
    depth: usize,
) -> Result<(String, Value), String> {
    let mut r = Reader::new(buf);
    let mut key = String::new();
    let value_field = Field {
        num: 2,
        name: "value",
        kind: *value_kind,
        repeated: false,
        keep_zero: true,
    };
    let mut value = match value_kind {
        Kind::Str | Kind::Quantity => Value::String(String::new()),
        _ => Value::Null,
    };
    while let Some((num, wire)) = r.key()? {
        match num {
            1 if wire == 2 => key = r.string()?,
            2 => value = scalar(&mut r, &value_field, wire, depth)?,
            _ => r.skip(wire)?,
        }
    }
    Ok((key, value))
}

fn expect(field: &Field, wire: u8, want: u8) -> Result<(), String> {
    if wire == want {
        Ok(())
    } else {
        Err(wire_error(field, wire))
    }
}

fn scalar(r: &mut Reader<'_>, field: &Field, wire: u8, depth: usize) -> Result<Value, String> {
    Ok(match field.kind {
        Kind::Str => {
            expect(field, wire, 2)?;
            Value::String(r.string()?)
        }
        Kind::Int => {
            expect(field, wire, 0)?;
            Value::from(r.varint()? as i64)
        }
        Kind::Bool => {
            expect(field, wire, 0)?;
            Value::Bool(r.varint()? != 0)
        }
        Kind::Msg(fields) | Kind::Inline(fields) => {
            expect(field, wire, 2)?;
            let mut m = Map::new();
            decode_into(r.bytes()?, fields, &mut m, depth + 1)?;
            Value::Object(m)
        }
        Kind::MapOf(_) => return Err(wire_error(field, wire)),
        Kind::Time | Kind::MicroTime => {
            expect(field, wire, 2)?;
            let buf = r.bytes()?;
            if buf.is_empty() {
                return Ok(Value::Null);
            }
            let (mut seconds, mut nanos) = (0i64, 0i64);
            let mut t = Reader::new(buf);
            while let Some((n, w)) = t.key()? {
                match (n, w) {
                    (1, 0) => seconds = t.varint()? as i64,
                    (2, 0) => nanos = i64::from(t.varint()? as i32),
                    _ => t.skip(w)?,
                }
            }
            format_time(seconds, nanos, matches!(field.kind, Kind::MicroTime))?
        }
        Kind::IntOrString => {
            expect(field, wire, 2)?;
            let mut t = Reader::new(r.bytes()?);
            let (mut ty, mut int_val, mut str_val) = (0u64, 0i64, String::new());
            while let Some((n, w)) = t.key()? {
                match (n, w) {
                    (1, 0) => ty = t.varint()?,
                    (2, 0) => int_val = i64::from(t.varint()? as i32),
                    (3, 2) => str_val = t.string()?,
                    _ => t.skip(w)?,
                }
            }
            if ty == 1 {
                Value::String(str_val)
            } else {
                Value::from(int_val)
            }
        }
        Kind::Quantity => {
            expect(field, wire, 2)?;
            let mut t = Reader::new(r.bytes()?);
            let mut s = String::new();
            while let Some((n, w)) = t.key()? {
                match (n, w) {
                    (1, 2) => s = t.string()?,
                    _ => t.skip(w)?,
                }
            }
            Value::String(s)
        }
        Kind::FieldsV1 => {
            expect(field, wire, 2)?;
            let mut t = Reader::new(r.bytes()?);
            let mut v = Value::Object(Map::new());
            while let Some((n, w)) = t.key()? {
                match (n, w) {
                    (1, 2) => {
                        let raw = t.bytes()?;
                        v = serde_json::from_slice(raw)
                            .map_err(|e| format!("invalid FieldsV1: {e}"))?;
                    }
                    _ => t.skip(w)?,
                }
            }
            v
        }
    })
}

/// RFC 3339 in UTC: whole seconds for `Time` (as metav1.Time drops nanos), microseconds for `MicroTime`.
fn format_time(seconds: i64, nanos: i64, micro: bool) -> Result<Value, String> {
    // Go's zero time (0001-01-01T00:00:00Z) means unset.
    if seconds == -62_135_596_800 && nanos == 0 {
        return Ok(Value::Null);
    }
    let ts =
        jiff::Timestamp::from_second(seconds).map_err(|e| format!("invalid timestamp: {e}"))?;
    let ts = if micro {
        let micros = nanos.clamp(0, 999_999_999) / 1000 * 1000;
        ts.checked_add(jiff::SignedDuration::from_nanos(micros))
            .map_err(|e| format!("invalid timestamp: {e}"))?
    } else {
        ts
    };
    let fmt = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Ok(Value::String(ts.strftime(fmt).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    // A tiny encoder for building test messages.
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes(num: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, (u64::from(num) << 3) | 2);
        varint(&mut out, data.len() as u64);
        out.extend_from_slice(data);
        out
    }
    fn int(num: u32, v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, u64::from(num) << 3);
        varint(&mut out, v as u64);
        out
    }
    fn s(num: u32, v: &str) -> Vec<u8> {
        bytes(num, v.as_bytes())
    }
    fn entry(num: u32, k: &str, v: &str) -> Vec<u8> {
        bytes(num, &[s(1, k), s(2, v)].concat())
    }
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        [
            MAGIC.to_vec(),
            bytes(1, &[s(1, api_version), s(2, kind)].concat()),
            bytes(2, raw),
            s(3, ""),
            s(4, ""),
        ]
        .concat()
    }

    /// What kubectl 1.32+ sends for `create service clusterip x1 --tcp=80:8080`.
    fn create_service_body() -> Vec<u8> {
        let meta = [
            s(1, "x1"),
            s(2, ""),
            s(3, ""),
            s(5, ""),
            s(6, ""),
            int(7, 0),
            bytes(8, &[]),
            entry(11, "app", "x1"),
        ]
        .concat();
        let port = [
            s(1, "80-8080"),
            s(2, "TCP"),
            int(3, 80),
            bytes(4, &[int(1, 0), int(2, 8080), s(3, "")].concat()),
            int(5, 0),
        ]
        .concat();
        let spec = [
            bytes(1, &port),
            entry(2, "app", "x1"),
            s(3, ""),
            s(4, "ClusterIP"),
            s(7, ""),
            s(10, ""),
            s(11, ""),
            int(12, 0),
            int(13, 0),
        ]
        .concat();
        let status = bytes(1, &[]);
        envelope(
            "v1",
            "Service",
            &[bytes(1, &meta), bytes(2, &spec), bytes(3, &status)].concat(),
        )
    }

    #[test]
    fn decodes_create_service() {
        let v = decode(&create_service_body()).expect("decode");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "x1", "labels": {"app": "x1"}},
                   "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                            "selector": {"app": "x1"}, "type": "ClusterIP"},
                   "status": {"loadBalancer": {}}})
        );
    }

    #[test]
    fn decodes_namespace_and_named_target_port() {
        let ns = envelope(
            "v1",
            "Namespace",
            &[
                bytes(1, &[s(1, "team-a"), entry(12, "a", "b")].concat()),
                bytes(2, &s(1, "kubernetes")),
            ]
            .concat(),
        );
        assert_eq!(
            decode(&ns).expect("decode"),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "annotations": {"a": "b"}}, "spec": {"finalizers": ["kubernetes"]}})
        );
        let port = [int(3, 443), bytes(4, &[int(1, 1), s(3, "https")].concat())].concat();
        let svc = envelope(
            "v1",
            "Service",
            &[bytes(1, &s(1, "w")), bytes(2, &bytes(1, &port))].concat(),
        );
        assert_eq!(
            decode(&svc).expect("decode")["spec"]["ports"][0],
            json!({"port": 443, "targetPort": "https"})
        );
    }

    #[test]
    fn decodes_endpointslice_pointer_fields_and_times() {
        let conditions = [int(1, 0), int(2, 1)].concat();
        let endpoint = [s(1, "10.0.0.1"), bytes(2, &conditions)].concat();
        let port = [s(1, ""), s(2, "TCP"), int(3, 8080)].concat();
        let meta = [
            s(1, "web-abc"),
            bytes(8, &[int(1, 1_795_000_000), int(2, 5)].concat()),
            int(7, 2),
        ]
        .concat();
        let raw = [
            bytes(1, &meta),
            s(4, "IPv4"),
            bytes(2, &endpoint),
            bytes(3, &port),
        ]
        .concat();
        let v = decode(&envelope("discovery.k8s.io/v1", "EndpointSlice", &raw)).expect("decode");
        assert_eq!(
            v,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "web-abc", "creationTimestamp": "2026-11-18T11:06:40Z", "generation": 2},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true}}],
                   "ports": [{"name": "", "protocol": "TCP", "port": 8080}]})
        );
    }

    #[test]
    fn decodes_pod_with_inline_volume_source() {
        let volume = [s(1, "data"), bytes(2, &bytes(2, &[]))].concat(); // emptyDir: {}
        let container = [
            s(1, "a"),
            s(2, "nginx"),
            bytes(6, &[s(1, "http"), int(3, 80), s(4, "TCP")].concat()),
        ]
        .concat();
        let spec = [
            bytes(1, &volume),
            bytes(2, &container),
            s(10, "n1"),
            int(4, 30),
        ]
        .concat();
        let v = decode(&envelope(
            "v1",
            "Pod",
            &[bytes(1, &s(1, "p")), bytes(2, &spec)].concat(),
        ))
        .expect("decode");
        assert_eq!(
            v["spec"]["volumes"],
            json!([{"name": "data", "emptyDir": {}}])
        );
        assert_eq!(
            v["spec"]["containers"][0]["ports"],
            json!([{"name": "http", "containerPort": 80, "protocol": "TCP"}])
        );
        assert_eq!(v["spec"]["nodeName"], "n1");
        assert_eq!(v["spec"]["terminationGracePeriodSeconds"], 30);
    }

    #[test]
    fn rejects_malformed_bodies() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{}".to_vec(), "does not appear to be a protobuf message"),
            (MAGIC.to_vec(), "Object 'Kind' is missing"),
            (
                envelope("v1", "Secret", &[]),
                "no kind \"Secret\" is registered for version \"v1\"",
            ),
            ([MAGIC, &[0x0a, 0x05, 0x01]].concat(), "unexpected EOF"),
            (envelope("v1", "Service", &[0x0a, 0xff]), "unexpected EOF"),
            (envelope("v1", "Service", &int(1, 5)), "wrong wireType"),
            (envelope("v1", "Service", &[0x7b]), "illegal wireType 3"),
            (envelope("v1", "Service", &[0x00]), "illegal field number 0"),
        ];
        for (body, want) in cases {
            let err = decode(&body).expect_err(want);
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    }

    /// Bodies captured from kubectl 1.33 (`create service …`, `create ns`) against a stub server.
    #[test]
    fn decodes_captured_kubectl_bodies() {
        let cases: &[(&str, Value)] = &[
            (
                "6b3873000a0d0a02763112075365727669636512660a1d0a02783112001a0022002a003200380042005a090a036170701202783112410a1b0a0738302d38303830120354435018502207080010903f1a00280012090a03617070120278311a002209436c757374657249503a00420052005a00600068001a020a001a002200",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x1", "labels": {"app": "x1"}},
                       "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}], "selector": {"app": "x1"}, "type": "ClusterIP"},
                       "status": {"loadBalancer": {}}}),
            ),
            (
                "6b3873000a0d0a027631120753657276696365127d0a2d0a0a782d6e6f6465706f727412001a0022002a003200380042005a110a03617070120a782d6e6f6465706f727412480a1b0a0738302d38303830120354435018502207080010903f1a00280012110a03617070120a782d6e6f6465706f72741a0022084e6f6465506f72743a00420052005a00600068001a020a001a002200",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x-nodeport", "labels": {"app": "x-nodeport"}},
                       "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}], "selector": {"app": "x-nodeport"}, "type": "NodePort"},
                       "status": {"loadBalancer": {}}}),
            ),
            (
                "6b3873000a0d0a027631120753657276696365125d0a210a04782d656e12001a0022002a003200380042005a0b0a036170701204782d656e1234120b0a036170701204782d656e1a00220c45787465726e616c4e616d653a004200520b6578616d706c652e636f6d5a00600068001a020a001a002200",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x-en", "labels": {"app": "x-en"}},
                       "spec": {"selector": {"app": "x-en"}, "type": "ExternalName", "externalName": "example.com"},
                       "status": {"loadBalancer": {}}}),
            ),
            (
                "6b3873000a0f0a02763112094e616d657370616365121e0a160a067465616d2d6112001a0022002a0032003800420012001a020a001a002200",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}, "spec": {}, "status": {}}),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(&decode(&hex(body)).expect("decode"), want);
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&body);
            let _ = decode(&[MAGIC, &body].concat());
        }

        #[test]
        fn random_payloads_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..512), kind in prop::sample::select(vec!["Service", "Pod", "Node", "Event", "Endpoints", "Namespace"])) {
            let _ = decode(&envelope("v1", kind, &raw));
            let _ = decode(&envelope("discovery.k8s.io/v1", "EndpointSlice", &raw));
        }

        #[test]
        fn mutated_service_never_panics(pos in 0usize..200, byte in any::<u8>()) {
            let mut body = create_service_body();
            let i = pos % body.len();
            body[i] = byte;
            let _ = decode(&body);
        }
    }
}
