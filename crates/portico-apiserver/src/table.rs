//! Server-side Tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with
//! kube-apiserver's columns and cell rules (`pkg/printers/internalversion/printers.go`).
//!
//! Owns: turning stored objects (JSON) into `meta.k8s.io/v1` Table objects, always in the wide
//! form (kubectl hides priority-1 columns unless `-o wide`). Must not: read the clock (the caller
//! passes `now`) or set list metadata (the caller fills `metadata.resourceVersion`/`continue`).

use crate::openapi::property_description;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// The `includeObject` query parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    /// The default: rows carry `PartialObjectMetadata`.
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    /// Parses the query value (`None`, `Metadata`, `Object`); unknown values give the default.
    pub fn from_query(value: Option<&str>) -> IncludeObject {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const CORE: &str = "io.k8s.api.core.v1.";

fn core(def: &str) -> String {
    format!("{CORE}{def}")
}

struct Column {
    name: &'static str,
    format: &'static str,
    priority: u8,
    description: String,
}

fn col(name: &'static str, description: String) -> Column {
    Column {
        name,
        format: "",
        priority: 0,
        description,
    }
}
fn wide(name: &'static str, description: String) -> Column {
    Column {
        name,
        format: "",
        priority: 1,
        description,
    }
}
fn name_col() -> Column {
    Column {
        name: "Name",
        format: "name",
        priority: 0,
        description: property_description(META, "name"),
    }
}
fn age_col() -> Column {
    col("Age", property_description(META, "creationTimestamp"))
}

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Service" => {
            let spec = core("ServiceSpec");
            vec![
                name_col(),
                col("Type", property_description(&spec, "type")),
                col("Cluster-IP", property_description(&spec, "clusterIP")),
                col("External-IP", property_description(&spec, "externalIPs")),
                col("Port(s)", property_description(&spec, "ports")),
                age_col(),
                wide("Selector", property_description(&spec, "selector")),
            ]
        }
        "EndpointSlice" => {
            let d = "io.k8s.api.discovery.v1.EndpointSlice";
            vec![
                name_col(),
                col("AddressType", property_description(d, "addressType")),
                col("Ports", property_description(d, "ports")),
                col("Endpoints", property_description(d, "endpoints")),
                age_col(),
            ]
        }
        "Endpoints" => vec![name_col(), col("Endpoints", property_description(&core("Endpoints"), "subsets")), age_col()],
        "Pod" => vec![
            name_col(),
            col("Ready", "The aggregate readiness state of this pod for accepting traffic.".into()),
            col("Status", "The aggregate status of the containers in this pod.".into()),
            col(
                "Restarts",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.".into(),
            ),
            age_col(),
            wide("IP", property_description(&core("PodStatus"), "podIP")),
            wide("Node", property_description(&core("PodSpec"), "nodeName")),
            wide("Nominated Node", property_description(&core("PodStatus"), "nominatedNodeName")),
            wide("Readiness Gates", property_description(&core("PodSpec"), "readinessGates")),
        ],
        "Namespace" => vec![name_col(), col("Status", "The status of the namespace".into()), age_col()],
        "Node" => {
            let info = core("NodeSystemInfo");
            let status = core("NodeStatus");
            vec![
                name_col(),
                col("Status", "The status of the node".into()),
                col("Roles", "The roles of the node".into()),
                age_col(),
                col("Version", property_description(&info, "kubeletVersion")),
                wide("Internal-IP", property_description(&status, "addresses")),
                wide("External-IP", property_description(&status, "addresses")),
                wide("OS-Image", property_description(&info, "osImage")),
                wide("Kernel-Version", property_description(&info, "kernelVersion")),
                wide("Container-Runtime", property_description(&info, "containerRuntimeVersion")),
            ]
        }
        "Event" => {
            let ev = core("Event");
            vec![
                col("Last Seen", property_description(&ev, "lastTimestamp")),
                col("Type", property_description(&ev, "type")),
                col("Reason", property_description(&ev, "reason")),
                col("Object", property_description(&ev, "involvedObject")),
                wide("Subobject", property_description(&core("ObjectReference"), "fieldPath")),
                wide("Source", property_description(&ev, "source")),
                col("Message", property_description(&ev, "message")),
                wide("First Seen", property_description(&ev, "firstTimestamp")),
                wide("Count", property_description(&ev, "count")),
                Column { name: "Name", format: "name", priority: 1, description: property_description(META, "name") },
            ]
        }
        "ServiceCIDR" => vec![
            name_col(),
            col("CIDRs", property_description("io.k8s.api.networking.v1.ServiceCIDRSpec", "cidrs")),
            age_col(),
        ],
        "IPAddress" => vec![name_col(), col("ParentRef", property_description("io.k8s.api.networking.v1.IPAddressSpec", "parentRef"))],
        _ => vec![
            name_col(),
            Column { name: "Created At", format: "date", priority: 0, description: property_description(META, "creationTimestamp") },
        ],
    }
}

/// Builds a Table of `objects` (all of one `kind`). `metadata` is left empty for the caller.
pub fn to_table(
    kind: &str,
    objects: &[Value],
    include_object: IncludeObject,
    now: Timestamp,
) -> Value {
    let column_definitions: Vec<Value> = columns(kind)
        .into_iter()
        .map(|c| {
            json!({"name": c.name, "type": if c.format == "date" { "date" } else { "string" }, "format": c.format,
                   "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let (cells, conditions) = row_cells(kind, obj, now);
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells));
            if let Some(c) = conditions {
                row.insert("conditions".into(), c);
            }
            row.insert("object".into(), row_object(obj, include_object));
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

fn row_object(obj: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}
fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(*k))
}
fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}
fn int(v: &Value, path: &[&str]) -> i64 {
    get(v, path).and_then(Value::as_i64).unwrap_or(0)
}
fn or<'a>(v: &'a str, default: &'a str) -> &'a str {
    if v.is_empty() { default } else { v }
}

fn parse_time(v: &str) -> Option<Timestamp> {
    v.parse::<Timestamp>().ok()
}

/// `translateTimestampSince`: `<unknown>` for a missing time, else the human age.
fn since(v: &Value, path: &[&str], now: Timestamp) -> String {
    match parse_time(s(v, path)) {
        Some(t) => human_duration(
            now.as_second() - t.as_second(),
            now.subsec_nanosecond() - t.subsec_nanosecond(),
        ),
        None => "<unknown>".to_string(),
    }
}

/// `duration.HumanDuration` of `seconds` (+`nanos`), as kubectl prints ages.
pub fn human_duration(seconds: i64, nanos: i32) -> String {
    // Go truncates toward zero when converting the duration to whole seconds.
    let total_nanos = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let secs = (total_nanos / 1_000_000_000) as i64;
    if secs < -1 {
        return "<invalid>".into();
    } else if secs < 0 {
        return "0s".into();
    } else if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let sec = secs % 60;
        return if sec == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{sec}s")
        };
    } else if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    } else if hours < 48 {
        return format!("{hours}h");
    } else if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    } else if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn row_cells(kind: &str, o: &Value, now: Timestamp) -> (Vec<Value>, Option<Value>) {
    let name = json!(s(o, &["metadata", "name"]));
    let age = json!(since(o, &["metadata", "creationTimestamp"], now));
    match kind {
        "Service" => (service_cells(o, name, age), None),
        "EndpointSlice" => {
            let ports: Vec<String> = arr(o, &["ports"])
                .iter()
                .map(|p| {
                    match (
                        p.get("port").and_then(Value::as_i64),
                        p.get("name").and_then(Value::as_str),
                    ) {
                        (Some(n), _) => n.to_string(),
                        (None, Some(n)) => n.to_string(),
                        _ => "*".to_string(),
                    }
                })
                .collect();
            let addrs: Vec<String> = arr(o, &["endpoints"])
                .iter()
                .flat_map(|e| {
                    arr(e, &["addresses"])
                        .iter()
                        .map(|a| a.as_str().unwrap_or("").to_string())
                })
                .collect();
            (
                vec![
                    name,
                    json!(s(o, &["addressType"])),
                    json!(list_with_more(&ports)),
                    json!(list_with_more(&addrs)),
                    age,
                ],
                None,
            )
        }
        "Endpoints" => (vec![name, json!(format_endpoints(o)), age], None),
        "Pod" => pod_cells(o, name, age, now),
        "Namespace" => (vec![name, json!(s(o, &["status", "phase"])), age], None),
        "Node" => (node_cells(o, name, age), None),
        "Event" => (event_cells(o, name, now), None),
        "ServiceCIDR" => {
            let cidrs: Vec<&str> = arr(o, &["spec", "cidrs"])
                .iter()
                .filter_map(Value::as_str)
                .collect();
            (vec![name, json!(cidrs.join(",")), age], None)
        }
        "IPAddress" => {
            let parent = match get(o, &["spec", "parentRef"]) {
                Some(p) if p.is_object() => {
                    let group = s(p, &["group"]);
                    let resource = s(p, &["resource"]);
                    let mut r = if group.is_empty() {
                        resource.to_string()
                    } else {
                        format!("{resource}.{group}")
                    }
                    .to_lowercase();
                    let ns = s(p, &["namespace"]);
                    if !ns.is_empty() {
                        r.push('/');
                        r.push_str(ns);
                    }
                    r.push('/');
                    r.push_str(s(p, &["name"]));
                    r
                }
                _ => "<none>".to_string(),
            };
            (vec![name, json!(parent)], None)
        }
        _ => (
            vec![name, json!(s(o, &["metadata", "creationTimestamp"]))],
            None,
        ),
    }
}

/// Up to three items, then ` + N more...`; `<unset>` when empty (`listWithMoreString`).
fn list_with_more(items: &[String]) -> String {
    const MAX: usize = 3;
    let shown = items
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if items.len() > MAX {
        format!("{shown} + {} more...", items.len() - MAX)
    } else if shown.is_empty() {
        "<unset>".into()
    } else {
        shown
    }
}

fn join_host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn format_endpoints(o: &Value) -> String {
    let subsets = arr(o, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0;
    for ss in subsets {
        let addrs = arr(ss, &["addresses"]);
        let ports = arr(ss, &["ports"]);
        if ports.is_empty() {
            count += addrs.len();
            for a in addrs {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(s(a, &["ip"]).to_string());
            }
            continue;
        }
        for p in ports {
            count += addrs.len();
            for a in addrs {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(s(a, &["ip"]), int(p, &["port"])));
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - MAX)
    } else {
        ret
    }
}

/// `labels.FormatLabels`: sorted `k=v` joined by commas, `<none>` when empty.
fn format_labels(v: Option<&Value>) -> String {
    let pairs: Vec<String> = v
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    let mut pairs = pairs;
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

fn service_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let svc_type = s(o, &["spec", "type"]);
    let cluster_ip = arr(o, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let external_ips: Vec<&str> = arr(o, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match svc_type {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let lb: BTreeSet<&str> = arr(o, &["status", "loadBalancer", "ingress"])
                .iter()
                .filter_map(|i| {
                    let ip = s(i, &["ip"]);
                    let host = s(i, &["hostname"]);
                    if !ip.is_empty() {
                        Some(ip)
                    } else if !host.is_empty() {
                        Some(host)
                    } else {
                        None
                    }
                })
                .collect();
            let mut all: Vec<&str> = lb.into_iter().collect();
            all.extend(external_ips.iter());
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => s(o, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = arr(o, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int(p, &["port"]);
            let proto = s(p, &["protocol"]);
            let node_port = int(p, &["nodePort"]);
            if node_port > 0 {
                format!("{port}:{node_port}/{proto}")
            } else {
                format!("{port}/{proto}")
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        name,
        json!(svc_type),
        json!(cluster_ip),
        json!(external),
        json!(ports),
        age,
        json!(format_labels(get(o, &["spec", "selector"]))),
    ]
}

fn is_restartable_init(pod: &Value, container_name: &str) -> bool {
    arr(pod, &["spec", "initContainers"])
        .iter()
        .any(|c| s(c, &["name"]) == container_name && s(c, &["restartPolicy"]) == "Always")
}

fn has_condition(pod: &Value, cond_type: &str) -> bool {
    arr(pod, &["status", "conditions"])
        .iter()
        .any(|c| s(c, &["type"]) == cond_type && s(c, &["status"]) == "True")
}

fn pod_cells(pod: &Value, name: Value, age: Value, now: Timestamp) -> (Vec<Value>, Option<Value>) {
    let phase = s(pod, &["status", "phase"]);
    let mut reason = or(s(pod, &["status", "reason"]), phase).to_string();
    for c in arr(pod, &["status", "conditions"]) {
        if s(c, &["type"]) == "PodScheduled" && s(c, &["reason"]) == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }
    let conditions = match phase {
        "Succeeded" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]),
        ),
        "Failed" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]),
        ),
        _ => None,
    };
    let init_specs = arr(pod, &["spec", "initContainers"]);
    let mut total = arr(pod, &["spec", "containers"]).len();
    total += init_specs
        .iter()
        .filter(|c| s(c, &["restartPolicy"]) == "Always")
        .count();
    let mut ready = 0;
    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;
    let later = |a: Option<Timestamp>, b: Option<Timestamp>| match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let mut initializing = false;
    let init_statuses = arr(pod, &["status", "initContainerStatuses"]);
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += int(c, &["restartCount"]);
        let finished = parse_time(s(c, &["lastState", "terminated", "finishedAt"]));
        last_restart = later(last_restart, finished);
        let sidecar = is_restartable_init(pod, s(c, &["name"]));
        if sidecar {
            sidecar_restarts += int(c, &["restartCount"]);
            last_sidecar_restart = later(last_sidecar_restart, finished);
        }
        let terminated = get(c, &["state", "terminated"]).filter(|t| t.is_object());
        let waiting_reason = s(c, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| int(t, &["exitCode"]) == 0) {
            continue;
        }
        if sidecar && get(c, &["started"]).and_then(Value::as_bool) == Some(true) {
            if get(c, &["ready"]).and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = s(t, &["reason"]);
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if int(t, &["signal"]) != 0 {
                format!("Init:Signal:{}", int(t, &["signal"]))
            } else {
                format!("Init:ExitCode:{}", int(t, &["exitCode"]))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    if !initializing || has_condition(pod, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for c in arr(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += int(c, &["restartCount"]);
            last_restart = later(
                last_restart,
                parse_time(s(c, &["lastState", "terminated", "finishedAt"])),
            );
            let waiting = s(c, &["state", "waiting", "reason"]);
            let terminated = get(c, &["state", "terminated"]).filter(|t| t.is_object());
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let r = s(t, &["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if int(t, &["signal"]) != 0 {
                    format!("Signal:{}", int(t, &["signal"]))
                } else {
                    format!("ExitCode:{}", int(t, &["exitCode"]))
                };
            } else if get(c, &["ready"]).and_then(Value::as_bool) == Some(true)
                && get(c, &["state", "running"]).is_some_and(Value::is_object)
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(pod, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let deleting = get(pod, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null());
    if deleting && s(pod, &["status", "reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            human_duration(
                now.as_second() - t.as_second(),
                now.subsec_nanosecond() - t.subsec_nanosecond()
            )
        ),
        _ => restarts.to_string(),
    };
    let pod_ip = arr(pod, &["status", "podIPs"])
        .first()
        .map(|p| s(p, &["ip"]))
        .unwrap_or("");
    let gates = arr(pod, &["spec", "readinessGates"]);
    let gates_str = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(pod, &["status", "conditions"]);
        let true_count = gates
            .iter()
            .filter(|g| {
                let t = s(g, &["conditionType"]);
                conds
                    .iter()
                    .find(|c| s(c, &["type"]) == t)
                    .is_some_and(|c| s(c, &["status"]) == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    let cells = vec![
        name,
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        age,
        json!(or(pod_ip, "<none>")),
        json!(or(s(pod, &["spec", "nodeName"]), "<none>")),
        json!(or(s(pod, &["status", "nominatedNodeName"]), "<none>")),
        json!(gates_str),
    ];
    (cells, conditions)
}

fn node_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    if let Some(c) = arr(o, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| s(c, &["type"]) == "Ready")
    {
        status.push(if s(c, &["status"]) == "True" {
            "Ready".into()
        } else {
            "NotReady".into()
        });
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if get(o, &["spec", "unschedulable"]).and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = get(o, &["metadata", "labels"]).and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" && v.as_str().is_some_and(|v| !v.is_empty()) {
                roles.insert(v.as_str().unwrap_or_default().to_string());
            }
        }
    }
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };
    let address = |t: &str| {
        arr(o, &["status", "addresses"])
            .iter()
            .find(|a| s(a, &["type"]) == t)
            .map(|a| s(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = |f: &str| or(s(o, &["status", "nodeInfo", f]), "<unknown>").to_string();
    vec![
        name,
        json!(status.join(",")),
        json!(roles),
        age,
        json!(s(o, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

fn event_cells(o: &Value, name: Value, now: Timestamp) -> Vec<Value> {
    let has = |f: &str| !s(o, &[f]).is_empty();
    let first = if has("firstTimestamp") {
        since(o, &["firstTimestamp"], now)
    } else {
        since(o, &["eventTime"], now)
    };
    let mut last = if has("lastTimestamp") {
        since(o, &["lastTimestamp"], now)
    } else {
        first.clone()
    };
    let mut count = int(o, &["count"]);
    if get(o, &["series"]).is_some_and(Value::is_object) {
        last = since(o, &["series", "lastObservedTime"], now);
        count = int(o, &["series", "count"]);
    } else if count == 0 {
        count = 1;
    }
    let kind = s(o, &["involvedObject", "kind"]).to_lowercase();
    let obj_name = s(o, &["involvedObject", "name"]);
    let target = if obj_name.is_empty() {
        kind
    } else {
        format!("{kind}/{obj_name}")
    };
    let component = or(
        s(o, &["source", "component"]),
        s(o, &["reportingComponent"]),
    );
    let instance = or(s(o, &["source", "host"]), s(o, &["reportingInstance"]));
    let source = if component.is_empty() {
        String::new()
    } else if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(s(o, &["type"])),
        json!(s(o, &["reason"])),
        json!(target),
        json!(s(o, &["involvedObject", "fieldPath"])),
        json!(source),
        json!(s(o, &["message"]).trim()),
        json!(first),
        json!(count),
        name,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-22T12:00:00Z".parse().expect("time")
    }

    /// Renders a table the way kubectl prints it with `-o wide`, for readable snapshots.
    fn render(t: &Value) -> String {
        let headers: Vec<String> = t["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or("").to_uppercase())
            .collect();
        let mut lines = vec![headers];
        for r in t["rows"].as_array().into_iter().flatten() {
            lines.push(
                r["cells"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| match c {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
            );
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l.get(i).map_or(0, |c| c.len()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        lines
            .iter()
            .map(|l| {
                l.iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<w$}", w = widths[i] + 3))
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn human_durations() {
        let cases: &[(i64, &str)] = &[
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (121, "2m1s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (49 * 3600, "2d1h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (731 * 86400, "2y1d"),
            (8 * 365 * 86400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(*secs, 0), *want, "{secs}");
        }
        assert_eq!(human_duration(-1, -500_000_000), "0s");
    }

    #[test]
    fn services_table() {
        let svcs = vec![
            json!({"metadata": {"name": "kubernetes", "creationTimestamp": "2026-11-22T11:59:54Z"},
                   "spec": {"type": "ClusterIP", "clusterIPs": ["10.96.0.1"], "ports": [{"port": 443, "protocol": "TCP"}]}}),
            json!({"metadata": {"name": "my-en", "creationTimestamp": "2026-11-22T12:00:00Z"},
                   "spec": {"type": "ExternalName", "externalName": "example.com", "selector": {"app": "my-en"}}}),
            json!({"metadata": {"name": "my-lb", "creationTimestamp": "2026-11-20T12:00:00Z"},
                   "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.12"], "selector": {"app": "my-lb", "b": "x"},
                            "ports": [{"port": 443, "nodePort": 30443, "protocol": "TCP"}, {"port": 53, "nodePort": 30053, "protocol": "UDP"}]}}),
            json!({"metadata": {"name": "lb-ready", "creationTimestamp": "2026-11-22T11:00:00Z"},
                   "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.13"], "externalIPs": ["1.2.3.4"], "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "lb.example"}, {"ip": "5.6.7.0"}]}}}),
            json!({"metadata": {"name": "np", "creationTimestamp": "2026-11-22T11:55:30Z"},
                   "spec": {"type": "NodePort", "clusterIPs": ["fd00::1"], "externalIPs": ["1.1.1.1", "2.2.2.2"], "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}}),
        ];
        let t = to_table("Service", &svcs, IncludeObject::Metadata, now());
        insta::assert_snapshot!(render(&t), @r"
        NAME         TYPE           CLUSTER-IP   EXTERNAL-IP                          PORT(S)                      AGE     SELECTOR
        kubernetes   ClusterIP      10.96.0.1    <none>                               443/TCP                      6s      <none>
        my-en        ExternalName   <none>       example.com                          <none>                       0s      app=my-en
        my-lb        LoadBalancer   10.96.0.12   <pending>                            443:30443/TCP,53:30053/UDP   2d      app=my-lb,b=x
        lb-ready     LoadBalancer   10.96.0.13   5.6.7.0,5.6.7.8,lb.example,1.2.3.4   80:31000/TCP                 60m     <none>
        np           NodePort       fd00::1      1.1.1.1,2.2.2.2                      80:30080/TCP                 4m30s   <none>
        ");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][6]["priority"], 1);
        assert!(
            t["columnDefinitions"][2]["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("clusterIP is the IP address"))
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "kubernetes");
        let none = to_table("Service", &svcs[..1], IncludeObject::None, now());
        assert!(none["rows"][0]["object"].is_null());
        let full = to_table("Service", &svcs[..1], IncludeObject::Object, now());
        assert_eq!(full["rows"][0]["object"], svcs[0]);
    }

    #[test]
    fn endpoint_tables() {
        let slices = vec![
            json!({"metadata": {"name": "kubernetes", "creationTimestamp": "2026-11-22T11:59:59Z"}, "addressType": "IPv4",
                   "ports": [{"port": 6443, "name": "https"}], "endpoints": [{"addresses": ["172.18.0.2"]}]}),
            json!({"metadata": {"name": "many-abc", "creationTimestamp": "2026-11-22T11:59:59Z"}, "addressType": "IPv4",
                   "ports": [{"port": 1}, {"name": "named"}, {}, {"port": 4}],
                   "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}, {"addresses": ["10.0.0.4"]}, {"addresses": ["10.0.0.5"]}]}),
            json!({"metadata": {"name": "empty", "creationTimestamp": "2026-11-22T11:59:59Z"}, "addressType": "IPv6", "ports": [], "endpoints": []}),
        ];
        insta::assert_snapshot!(render(&to_table("EndpointSlice", &slices, IncludeObject::Metadata, now())), @r"
        NAME         ADDRESSTYPE   PORTS                   ENDPOINTS                                AGE
        kubernetes   IPv4          6443                    172.18.0.2                               1s
        many-abc     IPv4          1,named,* + 1 more...   10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...   1s
        empty        IPv6          <unset>                 <unset>                                  1s
        ");
        let eps = vec![
            json!({"metadata": {"name": "web", "creationTimestamp": "2026-11-22T11:59:00Z"},
                   "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::2"}], "ports": [{"port": 80}, {"port": 443}]}]}),
            json!({"metadata": {"name": "headless", "creationTimestamp": "2026-11-22T11:59:00Z"}, "subsets": [{"addresses": [{"ip": "10.0.0.9"}]}]}),
            json!({"metadata": {"name": "none", "creationTimestamp": "2026-11-22T11:59:00Z"}}),
            json!({"metadata": {"name": "noaddr", "creationTimestamp": "2026-11-22T11:59:00Z"}, "subsets": [{"notReadyAddresses": [{"ip": "10.0.0.3"}], "ports": [{"port": 80}]}]}),
        ];
        insta::assert_snapshot!(render(&to_table("Endpoints", &eps, IncludeObject::Metadata, now())), @r"
        NAME       ENDPOINTS                                           AGE
        web        10.0.0.1:80,[fd00::2]:80,10.0.0.1:443 + 1 more...   60s
        headless   10.0.0.9                                            60s
        none       <none>                                              60s
        noaddr                                                         60s
        ");
    }

    #[test]
    fn pods_table() {
        let pods = vec![
            json!({"metadata": {"name": "running", "creationTimestamp": "2026-11-22T10:00:00Z"},
                   "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
                   "status": {"phase": "Running", "podIPs": [{"ip": "10.1.0.5"}], "conditions": [{"type": "Ready", "status": "True"}],
                              "containerStatuses": [
                                  {"name": "a", "ready": true, "restartCount": 3, "state": {"running": {}}, "lastState": {"terminated": {"finishedAt": "2026-11-22T11:55:00Z"}}},
                                  {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}),
            json!({"metadata": {"name": "pending", "creationTimestamp": "2026-11-22T11:59:00Z"},
                   "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "x"}]}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "crash", "creationTimestamp": "2026-11-22T11:00:00Z"},
                   "spec": {"containers": [{"name": "a"}]},
                   "status": {"phase": "Running", "containerStatuses": [{"name": "a", "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
            json!({"metadata": {"name": "done", "creationTimestamp": "2026-11-21T11:00:00Z"},
                   "spec": {"containers": [{"name": "a"}]},
                   "status": {"phase": "Succeeded", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}),
            json!({"metadata": {"name": "init", "creationTimestamp": "2026-11-22T11:59:30Z"},
                   "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
                   "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i1", "state": {"terminated": {"exitCode": 0}}}, {"name": "i2", "state": {"running": {}}}]}}),
            json!({"metadata": {"name": "going", "creationTimestamp": "2026-11-22T11:59:30Z", "deletionTimestamp": "2026-11-22T12:00:00Z"},
                   "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running"}}),
        ];
        let t = to_table("Pod", &pods, IncludeObject::Metadata, now());
        insta::assert_snapshot!(render(&t), @r"
        NAME      READY   STATUS             RESTARTS     AGE    IP         NODE     NOMINATED NODE   READINESS GATES
        running   2/2     Running            3 (5m ago)   120m   10.1.0.5   n1       <none>           <none>
        pending   0/1     Pending            0            60s    <none>     <none>   <none>           0/1
        crash     0/1     CrashLoopBackOff   1            60m    <none>     <none>   <none>           <none>
        done      0/1     Completed          0            25h    <none>     <none>   <none>           <none>
        init      0/1     Init:1/2           0            30s    <none>     <none>   <none>           <none>
        going     0/1     Terminating        0            30s    <none>     <none>   <none>           <none>
        ");
        assert_eq!(t["rows"][3]["conditions"][0]["type"], "Completed");
    }

    #[test]
    fn cluster_scoped_tables() {
        let ns = vec![
            json!({"metadata": {"name": "default", "creationTimestamp": "2026-11-22T11:00:00Z"}, "status": {"phase": "Active"}}),
        ];
        insta::assert_snapshot!(render(&to_table("Namespace", &ns, IncludeObject::Metadata, now())), @r"
        NAME      STATUS   AGE
        default   Active   60m
        ");
        let nodes = vec![
            json!({"metadata": {"name": "n1", "creationTimestamp": "2026-11-12T12:00:00Z", "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "worker"}},
                   "spec": {"unschedulable": true},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "172.18.0.2"}],
                              "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "portico://0.1"}}}),
            json!({"metadata": {"name": "n2", "creationTimestamp": "2026-11-22T12:00:00Z"}}),
        ];
        insta::assert_snapshot!(render(&to_table("Node", &nodes, IncludeObject::Metadata, now())), @r"
        NAME   STATUS                     ROLES                  AGE   VERSION   INTERNAL-IP   EXTERNAL-IP   OS-IMAGE    KERNEL-VERSION   CONTAINER-RUNTIME
        n1     Ready,SchedulingDisabled   control-plane,worker   10d   v1.33.0   172.18.0.2    <none>        Debian      6.1              portico://0.1
        n2     Unknown                    <none>                 0s              <none>        <none>        <unknown>   <unknown>        <unknown>
        ");
        let cidrs = vec![
            json!({"metadata": {"name": "kubernetes", "creationTimestamp": "2026-11-22T11:00:00Z"}, "spec": {"cidrs": ["10.96.0.0/12", "fd00::/108"]}}),
        ];
        insta::assert_snapshot!(render(&to_table("ServiceCIDR", &cidrs, IncludeObject::Metadata, now())), @r"
        NAME         CIDRS                     AGE
        kubernetes   10.96.0.0/12,fd00::/108   60m
        ");
        let ips = vec![
            json!({"metadata": {"name": "10.96.0.1"}, "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "default", "name": "kubernetes"}}}),
            json!({"metadata": {"name": "10.96.0.2"}, "spec": {"parentRef": {"group": "Example.io", "resource": "Gateways", "name": "gw"}}}),
            json!({"metadata": {"name": "10.96.0.3"}, "spec": {}}),
        ];
        insta::assert_snapshot!(render(&to_table("IPAddress", &ips, IncludeObject::Metadata, now())), @r"
        NAME        PARENTREF
        10.96.0.1   services/default/kubernetes
        10.96.0.2   gateways.example.io/gw
        10.96.0.3   <none>
        ");
    }

    #[test]
    fn events_table() {
        let events = vec![
            json!({"metadata": {"name": "web.1"}, "type": "Normal", "reason": "Created", "message": " created \n",
                   "involvedObject": {"kind": "Service", "name": "web", "fieldPath": "spec"},
                   "source": {"component": "portico", "host": "n1"}, "firstTimestamp": "2026-11-22T11:00:00Z", "lastTimestamp": "2026-11-22T11:58:00Z", "count": 4}),
            json!({"metadata": {"name": "web.2"}, "type": "Warning", "reason": "Fail", "message": "x",
                   "involvedObject": {"kind": "Pod"}, "reportingComponent": "ctl", "eventTime": "2026-11-22T11:59:00.000000Z"}),
            json!({"metadata": {"name": "web.3"}, "type": "Normal", "reason": "Series", "message": "y",
                   "involvedObject": {"kind": "Node", "name": "n1"}, "eventTime": "2026-11-22T11:00:00.000000Z",
                   "series": {"count": 7, "lastObservedTime": "2026-11-22T11:59:50.000000Z"}}),
        ];
        insta::assert_snapshot!(render(&to_table("Event", &events, IncludeObject::Metadata, now())), @r"
        LAST SEEN   TYPE      REASON    OBJECT        SUBOBJECT   SOURCE        MESSAGE   FIRST SEEN   COUNT   NAME
        2m          Normal    Created   service/web   spec        portico, n1   created   60m          4       web.1
        60s         Warning   Fail      pod                       ctl           x         60s          1       web.2
        10s         Normal    Series    node/n1                                 y         60m          7       web.3
        ");
    }
}
