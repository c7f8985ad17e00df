//! Server-side apply and field ownership (`metadata.managedFields`), after structured-merge-diff.
//!
//! Owns: field sets in FieldsV1 form (`f:`, `k:{…}`, `v:`, `.`), merging an applied configuration
//! into the live object by the schema's list types and keys, pruning fields an applier stopped
//! applying, conflicts between managers (409 with upstream's texts), and recording the fields
//! non-apply writers change (operation `Update`). Must not: default, validate or store objects.
//!
//! Simplifications against upstream: no version conversion (one version per kind), no cap on
//! the number of `Update` managers, and managedFields sent by clients on updates are ignored.

use crate::error::{ApiError, Resource};
use crate::openapi::{self, Elem, FieldExt, ShapeRef};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pe {
    /// A struct field or map key (`f:name`).
    Field(String),
    /// A list-map item by its keys, as canonical JSON (`k:{"port":80,"protocol":"TCP"}`).
    Key(String),
    /// A set item by its value, as JSON (`v:"a"`).
    Value(String),
    /// A list item by position (`i:0`), only read from stored entries.
    Index(usize),
}

type Path = Vec<Pe>;
type Set = BTreeSet<Path>;

impl Pe {
    fn fields_key(&self) -> String {
        match self {
            Pe::Field(n) => format!("f:{n}"),
            Pe::Key(k) => format!("k:{k}"),
            Pe::Value(v) => format!("v:{v}"),
            Pe::Index(i) => format!("i:{i}"),
        }
    }
    fn parse(key: &str) -> Option<Pe> {
        let (prefix, rest) = key.split_at_checked(2)?;
        match prefix {
            "f:" => Some(Pe::Field(rest.to_string())),
            "k:" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| Pe::Key(canonical(&v))),
            "v:" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| Pe::Value(canonical(&v))),
            "i:" => rest.parse().ok().map(Pe::Index),
            _ => None,
        }
    }
}

/// `.spec.ports[port=80,protocol="TCP"].targetPort`, as structured-merge-diff prints paths.
fn path_string(path: &[Pe]) -> String {
    let mut s = String::new();
    for pe in path {
        match pe {
            Pe::Field(n) => {
                s.push('.');
                s.push_str(n);
            }
            Pe::Key(k) => {
                let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", canonical(v)))
                    .collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Pe::Value(v) => s.push_str(&format!("[={v}]")),
            Pe::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// JSON with object keys sorted (serde_json's map is ordered by key).
fn canonical(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Decodes a FieldsV1 object into a set of member paths.
fn set_from_fields(v: &Value) -> Set {
    fn walk(v: &Value, prefix: &mut Path, out: &mut Set) {
        let Some(m) = v.as_object() else { return };
        for (k, child) in m {
            if k == "." {
                out.insert(prefix.clone());
                continue;
            }
            let Some(pe) = Pe::parse(k) else { continue };
            prefix.push(pe);
            if child.as_object().is_some_and(Map::is_empty) {
                out.insert(prefix.clone());
            } else {
                walk(child, prefix, out);
            }
            prefix.pop();
        }
    }
    let mut out = Set::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// A FieldsV1 tree under construction: whether this path is a member, and its children.
#[derive(Default)]
struct FieldsNode {
    member: bool,
    /// Children by their FieldsV1 key (`f:name`, `k:{…}`, `v:…`).
    children: BTreeMap<String, FieldsNode>,
}

impl FieldsNode {
    fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }
    /// Adds `child` under `key`, merging with what is there (a list may repeat an item key).
    fn adopt(&mut self, key: String, child: FieldsNode) {
        if child.is_empty() {
            return;
        }
        match self.children.entry(key) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(child);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let existing = o.get_mut();
                existing.member |= child.member;
                for (k, c) in child.children {
                    existing.adopt(k, c);
                }
            }
        }
    }
    fn encode(self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (key, c) in self.children {
            m.insert(key, c.encode());
        }
        Value::Object(m)
    }
}

/// Encodes a set of member paths as FieldsV1.
fn fields_from_set(set: &Set) -> Value {
    let mut root = FieldsNode::default();
    for path in set {
        let mut n = &mut root;
        for pe in path {
            n = n.children.entry(pe.fields_key()).or_default();
        }
        n.member = true;
    }
    root.encode()
}

/// How a list merges under apply.
enum ListKind {
    Atomic,
    Set,
    Map(Vec<&'static str>),
}

fn list_kind(ext: Option<&FieldExt>) -> ListKind {
    let Some(e) = ext else {
        return ListKind::Atomic;
    };
    match e.list_type {
        Some("map") => ListKind::Map(e.list_map_keys.to_vec()),
        Some("set") => ListKind::Set,
        Some(_) => ListKind::Atomic,
        None => match (e.patch_merge_key, e.patch_strategy) {
            (Some(k), _) => ListKind::Map(vec![k]),
            (None, Some(s)) if s.contains("merge") => ListKind::Set,
            _ => ListKind::Atomic,
        },
    }
}

/// The type of a whole object of `kind` (a plain map for kinds without a schema).
fn kind_ty(kind: &str) -> Ty {
    openapi::kind_definition(kind)
        .map(Ty::Struct)
        .unwrap_or(Ty::Map(Elem::Scalar, false))
}

/// Where a value sits in the schema.
#[derive(Clone, Copy)]
enum Ty {
    Struct(&'static str),
    Map(Elem, bool /* atomic */),
    List(Elem, Option<&'static FieldExt>),
    Leaf,
}

fn elem_ty(e: Elem) -> Ty {
    match e {
        Elem::Struct(d) => Ty::Struct(d),
        Elem::Scalar => Ty::Leaf,
    }
}

/// The type of `key` inside a value of type `ty` (None: not declared in the schema).
fn child_ty(ty: Ty, key: &str) -> Option<Ty> {
    match ty {
        Ty::Struct(def) => {
            let p = openapi::property(def, key)?;
            Some(match p.shape {
                ShapeRef::Struct(d) => Ty::Struct(d),
                ShapeRef::Map(e) => Ty::Map(e, p.ext.is_some_and(|x| x.map_type == Some("atomic"))),
                ShapeRef::List(e) => Ty::List(e, p.ext),
                ShapeRef::Scalar => Ty::Leaf,
            })
        }
        Ty::Map(e, _) => Some(elem_ty(e)),
        _ => None,
    }
}

/// The key of a list-map item (missing `protocol` defaults to TCP, as the schema defaults it).
fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut m = Map::new();
    for k in keys {
        match item.get(*k) {
            Some(v) if !v.is_null() => {
                m.insert(k.to_string(), v.clone());
            }
            _ if *k == "protocol" => {
                m.insert(k.to_string(), json!("TCP"));
            }
            _ => {}
        }
    }
    canonical(&Value::Object(m))
}

/// What a walk over an object records.
#[derive(Clone, Copy)]
struct Walk {
    /// The paths of granular maps and non-atomic lists are members too, as `Compare` reports
    /// them when they appear or disappear (`f:labels: {".": {}}` in Update entries).
    containers: bool,
    /// Keep each leaf's value (to compare two objects); without, only the paths.
    values: bool,
}

impl Walk {
    fn leaf(self, v: &Value) -> Option<Value> {
        self.values.then(|| v.clone())
    }
}

/// The member paths of an object, with each leaf's value if asked (`ToFieldSet`).
/// `metadata.managedFields` is never walked: it is not part of the object's fields.
fn field_values(
    v: &Value,
    ty: Ty,
    walk: Walk,
    path: &mut Path,
    out: &mut BTreeMap<Path, Option<Value>>,
) {
    match ty {
        Ty::Leaf => {
            out.insert(path.clone(), walk.leaf(v));
        }
        Ty::Struct(def) if openapi::is_atomic_struct(def) => {
            out.insert(path.clone(), walk.leaf(v));
        }
        Ty::Map(_, true) => {
            out.insert(path.clone(), walk.leaf(v));
        }
        Ty::Struct(_) | Ty::Map(_, false) => {
            let Some(m) = v.as_object() else {
                out.insert(path.clone(), walk.leaf(v));
                return;
            };
            if walk.containers && matches!(ty, Ty::Map(..)) && !path.is_empty() {
                out.insert(path.clone(), None);
            }
            let in_metadata = matches!(path.as_slice(), [Pe::Field(f)] if f == "metadata");
            for (k, child) in m {
                if in_metadata && k == "managedFields" {
                    continue;
                }
                path.push(Pe::Field(k.clone()));
                match child_ty(ty, k) {
                    Some(cty) => {
                        field_values(child, cty, walk, path, out);
                        let declared_field = matches!(ty, Ty::Struct(_));
                        if child.is_null()
                            || child.as_object().is_some_and(Map::is_empty)
                            || !declared_field
                        {
                            out.entry(path.clone())
                                .or_insert_with(|| leaf_or_none(child, cty, walk));
                        }
                    }
                    None => {
                        out.insert(path.clone(), walk.leaf(child));
                    }
                }
                path.pop();
            }
        }
        Ty::List(elem, ext) => {
            let Some(items) = v.as_array() else {
                out.insert(path.clone(), walk.leaf(v));
                return;
            };
            if walk.containers && !matches!(list_kind(ext), ListKind::Atomic) {
                out.insert(path.clone(), None);
            }
            match list_kind(ext) {
                ListKind::Atomic => {
                    out.insert(path.clone(), walk.leaf(v));
                }
                ListKind::Set => {
                    for item in items {
                        path.push(Pe::Value(canonical(item)));
                        out.insert(path.clone(), walk.leaf(item));
                        path.pop();
                    }
                }
                ListKind::Map(keys) => {
                    for item in items {
                        path.push(Pe::Key(item_key(item, &keys)));
                        field_values(item, elem_ty(elem), walk, path, out);
                        out.insert(path.clone(), None);
                        path.pop();
                    }
                }
            }
        }
    }
}

fn leaf_or_none(v: &Value, ty: Ty, walk: Walk) -> Option<Value> {
    match ty {
        Ty::Leaf => walk.leaf(v),
        _ if v.is_null() || v.as_object().is_some_and(Map::is_empty) => walk.leaf(v),
        _ => None,
    }
}

/// Paths never recorded in managedFields (upstream's stripped metadata).
const STRIPPED: &[&[&str]] = &[
    &["apiVersion"],
    &["kind"],
    &["metadata"],
    &["metadata", "name"],
    &["metadata", "namespace"],
    &["metadata", "creationTimestamp"],
    &["metadata", "selfLink"],
    &["metadata", "uid"],
    &["metadata", "clusterName"],
    &["metadata", "generation"],
    &["metadata", "managedFields"],
    &["metadata", "resourceVersion"],
];

const STATUS_KINDS: &[&str] = &["Service", "Pod", "Node", "Namespace", "ServiceCIDR"];

fn is_ignored(path: &[Pe], kind: &str, subresource: Option<&str>) -> bool {
    let names: Vec<&str> = path
        .iter()
        .map(|p| if let Pe::Field(n) = p { n.as_str() } else { "" })
        .collect();
    is_ignored_by_names(&names, kind, subresource)
}

/// [`is_ignored`] over a path's field names ("" for list items).
fn is_ignored_by_names(names: &[&str], kind: &str, subresource: Option<&str>) -> bool {
    if STRIPPED.contains(&names) {
        return true;
    }
    let top = names.first().copied().unwrap_or("");
    match subresource {
        // The status subresource resets spec changes; the main resource resets status.
        Some("status") => top == "spec",
        _ => top == "status" && STATUS_KINDS.contains(&kind),
    }
}

fn object_fields(
    kind: &str,
    obj: &Value,
    subresource: Option<&str>,
    walk: Walk,
) -> BTreeMap<Path, Option<Value>> {
    let mut out = BTreeMap::new();
    let ty = kind_ty(kind);
    field_values(obj, ty, walk, &mut Vec::new(), &mut out);
    out.retain(|p, _| !is_ignored(p, kind, subresource));
    out
}

/// The paths of an object (no values), as apply's field sets use them.
fn object_set(kind: &str, obj: &Value, containers: bool) -> Set {
    let walk = Walk {
        containers,
        values: false,
    };
    object_fields(kind, obj, None, walk).into_keys().collect()
}

/// The FieldsV1 of every field of a new object: what `object_fields` with containers lists,
/// built as a tree in one walk (no set of paths, no leaf values). Creates take this path.
fn create_fields(kind: &str, obj: &Value, subresource: Option<&str>) -> FieldsNode {
    struct Walker<'a> {
        kind: &'a str,
        subresource: Option<&'a str>,
        /// Field names down to here ("" for list items): all that `is_ignored` looks at.
        names: Vec<&'a str>,
    }
    impl<'a> Walker<'a> {
        fn mark(&self, node: &mut FieldsNode) {
            if !is_ignored_by_names(&self.names, self.kind, self.subresource) {
                node.member = true;
            }
        }
        fn leaf(&self) -> FieldsNode {
            let mut n = FieldsNode::default();
            self.mark(&mut n);
            n
        }
        /// The node for value `v` of type `ty` at `self.names` (mirrors `field_values`).
        fn walk(&mut self, v: &'a Value, ty: Ty) -> FieldsNode {
            let mut node = FieldsNode::default();
            match ty {
                Ty::Leaf | Ty::Map(_, true) => self.mark(&mut node),
                Ty::Struct(def) if openapi::is_atomic_struct(def) => self.mark(&mut node),
                Ty::Struct(_) | Ty::Map(_, false) => {
                    let Some(m) = v.as_object() else {
                        self.mark(&mut node);
                        return node;
                    };
                    if matches!(ty, Ty::Map(..)) && !self.names.is_empty() {
                        self.mark(&mut node);
                    }
                    let in_metadata = self.names.as_slice() == ["metadata"];
                    for (k, child) in m {
                        if in_metadata && k == "managedFields" {
                            continue;
                        }
                        self.names.push(k);
                        let child_node = match child_ty(ty, k) {
                            Some(cty) => {
                                let mut n = self.walk(child, cty);
                                if child.is_null()
                                    || child.as_object().is_some_and(Map::is_empty)
                                    || !matches!(ty, Ty::Struct(_))
                                {
                                    self.mark(&mut n);
                                }
                                n
                            }
                            None => self.leaf(),
                        };
                        self.names.pop();
                        node.adopt(format!("f:{k}"), child_node);
                    }
                }
                Ty::List(elem, ext) => {
                    let Some(items) = v.as_array() else {
                        self.mark(&mut node);
                        return node;
                    };
                    self.mark(&mut node);
                    match list_kind(ext) {
                        ListKind::Atomic => {}
                        ListKind::Set => {
                            self.names.push("");
                            for item in items {
                                node.adopt(format!("v:{}", canonical(item)), self.leaf());
                            }
                            self.names.pop();
                        }
                        ListKind::Map(keys) => {
                            self.names.push("");
                            for item in items {
                                let mut n = self.walk(item, elem_ty(elem));
                                self.mark(&mut n);
                                node.adopt(format!("k:{}", item_key(item, &keys)), n);
                            }
                            self.names.pop();
                        }
                    }
                }
            }
            node
        }
    }
    let ty = kind_ty(kind);
    let mut walker = Walker {
        kind,
        subresource,
        names: Vec::new(),
    };
    walker.walk(obj, ty)
}

/// Paths with values and container members, as `Compare` needs them.
const COMPARE: Walk = Walk {
    containers: true,
    values: true,
};

/// The difference between two objects' field sets (`typed.Comparison`).
struct Comparison {
    added: Set,
    removed: Set,
    modified: Set,
}

impl Comparison {
    fn is_same(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
    fn changed(&self) -> Set {
        self.added.union(&self.modified).cloned().collect()
    }
}

fn compare(old: &BTreeMap<Path, Option<Value>>, new: &BTreeMap<Path, Option<Value>>) -> Comparison {
    let mut c = Comparison {
        added: Set::new(),
        removed: Set::new(),
        modified: Set::new(),
    };
    for (p, v) in new {
        match old.get(p) {
            None => {
                c.added.insert(p.clone());
            }
            Some(o) if o != v => {
                c.modified.insert(p.clone());
            }
            _ => {}
        }
    }
    for p in old.keys() {
        if !new.contains_key(p) {
            c.removed.insert(p.clone());
        }
    }
    c
}

/// One managedFields entry, decoded.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    set: Set,
}

impl Entry {
    fn same_identity(
        &self,
        manager: &str,
        operation: &str,
        api_version: &str,
        subresource: &str,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == "Apply" || self.api_version == api_version)
    }
    /// `printManager`: how conflicts name a manager.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
    fn to_json(&self) -> Value {
        self.json_with(fields_from_set(&self.set))
    }
    /// This entry as managedFields holds it, with its fields already encoded.
    fn json_with(&self, fields_v1: Value) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), fields_v1);
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }
}

fn read_entries(obj: Option<&Value>) -> Vec<Entry> {
    let Some(list) = obj.and_then(|o| o.get("metadata")?.get("managedFields")?.as_array()) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let manager = s("manager");
            let operation = s("operation");
            if operation.is_empty() {
                return None;
            }
            Some(Entry {
                manager,
                operation,
                api_version: s("apiVersion"),
                time: e.get("time").and_then(Value::as_str).map(str::to_string),
                subresource: s("subresource"),
                set: e.get("fieldsV1").map(set_from_fields).unwrap_or_default(),
            })
        })
        .collect()
}

/// Upstream's order: Apply before Update, then by time, manager, apiVersion, subresource.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|p, q| {
        p.operation
            .cmp(&q.operation)
            .then_with(|| {
                p.time
                    .as_deref()
                    .unwrap_or("")
                    .cmp(q.time.as_deref().unwrap_or(""))
            })
            .then_with(|| p.manager.cmp(&q.manager))
            .then_with(|| p.api_version.cmp(&q.api_version))
            .then_with(|| p.subresource.cmp(&q.subresource))
    });
    put_managed_fields(obj, entries.iter().map(Entry::to_json).collect());
}

/// Sets `metadata.managedFields` to `list` (encoded entries, in order), or removes it if empty.
fn put_managed_fields(obj: &mut Value, list: Vec<Value>) {
    let Some(meta) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
    else {
        return;
    };
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

fn api_version_of(kind: &str, obj: &Value) -> String {
    obj.get("apiVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| openapi::kind_info(kind).map(|k| k.api_version()))
        .unwrap_or_else(|| "v1".into())
}

/// Records a non-apply write by `manager`: the fields it changed become its own (operation
/// `Update`, `subresource` as given) and leave every other manager. A write that changes nothing
/// leaves managedFields exactly as they were.
pub fn record_update(
    kind: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let Some(old) = old else {
        // A create: every field is added and the writer is the only manager, so its entry is
        // the object's own shape (no comparison, no set of paths).
        let fields = create_fields(kind, new, subresource);
        let entry = Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: api_version_of(kind, new),
            time: Some(now.to_string()),
            subresource: subresource.unwrap_or("").to_string(),
            set: Set::new(),
        };
        let list = if fields.is_empty() {
            Vec::new()
        } else {
            vec![entry.json_with(fields.encode())]
        };
        put_managed_fields(new, list);
        return;
    };
    let mut entries = read_entries(Some(old));
    let old_fields = object_fields(kind, old, subresource, COMPARE);
    let new_fields = object_fields(kind, new, subresource, COMPARE);
    let cmp = compare(&old_fields, &new_fields);
    if !cmp.is_same() {
        let api_version = api_version_of(kind, new);
        let sub = subresource.unwrap_or("");
        for e in entries.iter_mut() {
            e.set = e.set.difference(&cmp.removed).cloned().collect();
            if !e.same_identity(manager, "Update", &api_version, sub) {
                e.set = e.set.difference(&cmp.changed()).cloned().collect();
            }
        }
        let changed = cmp.changed();
        match entries
            .iter_mut()
            .find(|e| e.same_identity(manager, "Update", &api_version, sub))
        {
            Some(e) => {
                e.set.extend(changed);
                e.time = Some(now.to_string());
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: Some(now.to_string()),
                subresource: sub.to_string(),
                set: changed,
            }),
        }
    }
    write_entries(new, entries);
}

/// Server-side apply of `applied` by `manager` onto `live` (None: the object is created).
/// Returns the object to store, managedFields included; 409 on conflicts unless `force`.
pub fn apply(
    kind: &str,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    if applied
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let ty = kind_ty(kind);
    let empty = json!({});
    let live_obj = live.unwrap_or(&empty);
    let mut entries = read_entries(live);
    let api_version = api_version_of(kind, applied);
    if let Some(live) = live
        && entries.is_empty()
    {
        // Upstream: an object without managedFields is owned as a whole by "before-first-apply".
        let set = object_set(kind, live, false);
        entries.push(Entry {
            manager: "before-first-apply".into(),
            operation: "Update".into(),
            api_version: api_version_of(kind, live),
            time: None,
            subresource: String::new(),
            set,
        });
    }

    let mut merged = merge(live_obj, applied, ty);
    let config_set = object_set(kind, applied, false);
    let last_set: Set = entries
        .iter()
        .find(|e| e.same_identity(manager, "Apply", "", ""))
        .map(|e| e.set.clone())
        .unwrap_or_default();

    // Prune what this applier applied last time and no longer applies, unless someone owns it.
    let mut owned: Set = config_set.clone();
    for e in &entries {
        if !e.same_identity(manager, "Apply", "", "") {
            owned.extend(e.set.iter().cloned());
        }
    }
    let mut to_remove: Vec<&Path> = last_set
        .iter()
        .filter(|p| !owned.contains(*p) && !owned.iter().any(|o| o.starts_with(p)))
        .collect();
    // Shallow first: removing a list item also removes its fields, and an item whose key fields
    // were removed first could no longer be found.
    to_remove.sort_by_key(|p| p.len());
    for p in to_remove {
        remove_path(&mut merged, p, ty);
    }

    // Conflicts: other managers' fields that this apply changes.
    let live_fields = object_fields(kind, live_obj, None, COMPARE);
    let merged_fields = object_fields(kind, &merged, None, COMPARE);
    let cmp = compare(&live_fields, &merged_fields);
    let changed = cmp.changed();
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for e in &entries {
        if e.same_identity(manager, "Apply", "", "") {
            continue;
        }
        for p in e.set.intersection(&changed) {
            conflicts.push((e.describe(), p.clone()));
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        return Err(conflict_error(kind, applied, &conflicts));
    }
    for e in entries.iter_mut() {
        if e.same_identity(manager, "Apply", "", "") {
            continue;
        }
        e.set = e.set.difference(&changed).cloned().collect();
        e.set = e.set.difference(&cmp.removed).cloned().collect();
    }
    let unchanged_object = live.is_some() && cmp.is_same();
    match entries
        .iter_mut()
        .find(|e| e.same_identity(manager, "Apply", "", ""))
    {
        Some(e) => {
            e.set = config_set;
            e.api_version = api_version;
            if !unchanged_object {
                e.time = Some(now.to_string());
            }
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version,
            time: Some(now.to_string()),
            subresource: String::new(),
            set: config_set,
        }),
    }
    if unchanged_object {
        merged = live_obj.clone();
    }
    write_entries(&mut merged, entries);
    Ok(merged)
}

fn conflict_error(kind: &str, applied: &Value, conflicts: &[(String, Path)]) -> ApiError {
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].0,
            path_string(&conflicts[0].1)
        )
    } else {
        let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (m, p) in conflicts {
            by_manager
                .entry(m.as_str())
                .or_default()
                .push(path_string(p));
        }
        let mut lines = Vec::new();
        for (m, paths) in by_manager {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": path_string(p)}))
        .collect();
    let info = openapi::kind_info(kind);
    let resource = Resource {
        group: info.map_or("", |k| k.group),
        plural: info.map_or("", |k| k.plural),
        kind,
    };
    let name = applied
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut e = ApiError::conflict_with(resource, name, message, causes.clone());
    // Upstream's apply conflict carries only the causes in details.
    e.details = Some(json!({"causes": causes}));
    e
}

/// Merges an applied configuration into the live object (`TypedValue.Merge`).
fn merge(live: &Value, config: &Value, ty: Ty) -> Value {
    match (ty, live, config) {
        (_, _, Value::Null) => live.clone(),
        (Ty::Struct(def), _, _) if openapi::is_atomic_struct(def) => config.clone(),
        (Ty::Map(_, true), _, _) => config.clone(),
        (Ty::Struct(_) | Ty::Map(_, false), Value::Object(l), Value::Object(c)) => {
            let mut out = l.clone();
            for (k, cv) in c {
                if cv.is_null() {
                    continue;
                }
                let merged = match (out.get(k), child_ty(ty, k)) {
                    (Some(lv), Some(cty)) => merge(lv, cv, cty),
                    _ => cv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Ty::List(elem, ext), Value::Array(l), Value::Array(c)) => match list_kind(ext) {
            ListKind::Atomic => config.clone(),
            ListKind::Set => Value::Array(merge_in_order(l, c, canonical, |_, cv| cv.clone())),
            ListKind::Map(keys) => Value::Array(merge_in_order(
                l,
                c,
                |v| item_key(v, &keys),
                |lv, cv| match lv {
                    Some(lv) => merge(lv, cv, elem_ty(elem)),
                    None => cv.clone(),
                },
            )),
        },
        _ => config.clone(),
    }
}

/// Merges two associative lists the way structured-merge-diff orders them: live items keep
/// their place, applied items follow the applied order, shared items appear in applied order.
fn merge_in_order(
    live: &[Value],
    config: &[Value],
    key: impl Fn(&Value) -> String,
    merge_item: impl Fn(Option<&Value>, &Value) -> Value,
) -> Vec<Value> {
    let lkeys: Vec<String> = live.iter().map(&key).collect();
    let rkeys: Vec<String> = config.iter().map(&key).collect();
    let in_live = |k: &String| lkeys.iter().position(|x| x == k);
    let in_config = |k: &String| rkeys.contains(k);
    let mut shared = rkeys
        .iter()
        .filter(|k| in_live(k).is_some())
        .cloned()
        .collect::<Vec<_>>()
        .into_iter();
    let mut next_shared = shared.next();
    let mut out = Vec::with_capacity(live.len().max(config.len()));
    let (mut li, mut ri) = (0, 0);
    while li < live.len() || ri < config.len() {
        if li < live.len() && ri < config.len() {
            if lkeys[li] == rkeys[ri] {
                out.push(merge_item(Some(&live[li]), &config[ri]));
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if in_config(&lkeys[li]) && next_shared.as_ref().is_some_and(|n| *n != lkeys[li]) {
                li += 1;
                continue;
            }
        }
        if li < live.len() && !in_config(&lkeys[li]) {
            out.push(live[li].clone());
            li += 1;
            continue;
        }
        if ri < config.len() {
            let lv = in_live(&rkeys[ri]).map(|i| &live[i]);
            out.push(merge_item(lv, &config[ri]));
            if next_shared.as_ref() == Some(&rkeys[ri]) {
                next_shared = shared.next();
            }
            ri += 1;
            continue;
        }
        // Only shared live items already emitted remain.
        li += 1;
    }
    out
}

/// Removes the field or list item at `path` from an object.
fn remove_path(obj: &mut Value, path: &[Pe], ty: Ty) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match first {
        Pe::Field(name) => {
            let Some(m) = obj.as_object_mut() else { return };
            if rest.is_empty() {
                m.remove(name);
            } else if let (Some(child), Some(cty)) = (m.get_mut(name), child_ty(ty, name)) {
                remove_path(child, rest, cty);
            }
        }
        Pe::Key(k) => {
            let (Ty::List(elem, ext), Some(items)) = (ty, obj.as_array_mut()) else {
                return;
            };
            let ListKind::Map(keys) = list_kind(ext) else {
                return;
            };
            let Some(i) = items.iter().position(|it| item_key(it, &keys) == *k) else {
                return;
            };
            if rest.is_empty() {
                items.remove(i);
            } else {
                remove_path(&mut items[i], rest, elem_ty(elem));
            }
        }
        Pe::Value(v) => {
            if let Some(items) = obj.as_array_mut() {
                items.retain(|it| canonical(it) != *v);
            }
        }
        Pe::Index(i) => {
            if let Some(items) = obj.as_array_mut()
                && *i < items.len()
            {
                if rest.is_empty() {
                    items.remove(*i);
                } else if let Ty::List(elem, _) = ty {
                    remove_path(&mut items[*i], rest, elem_ty(elem));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2026-11-22T10:00:00Z";
    const T2: &str = "2026-11-22T11:00:00Z";

    fn svc(ports: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"ports": ports, "selector": {"app": "web"}}})
    }

    fn managed(obj: &Value) -> Vec<Value> {
        obj["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn fields_v1_round_trip() {
        let fields = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                            "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}, "f:selector": {}},
                            "f:metadata2": {"f:finalizers": {"v:\"a\"": {}}, "f:x": {"i:0": {}}}});
        let set = set_from_fields(&fields);
        assert!(set.contains(&vec![
            Pe::Field("spec".into()),
            Pe::Field("ports".into()),
            Pe::Key(r#"{"port":80,"protocol":"TCP"}"#.into())
        ]));
        assert_eq!(fields_from_set(&set), fields);
        let p = vec![
            Pe::Field("spec".into()),
            Pe::Field("ports".into()),
            Pe::Key(r#"{"port":80,"protocol":"TCP"}"#.into()),
            Pe::Field("targetPort".into()),
        ];
        assert_eq!(
            path_string(&p),
            r#".spec.ports[port=80,protocol="TCP"].targetPort"#
        );
        assert_eq!(
            path_string(&[Pe::Field("f".into()), Pe::Value("\"a\"".into())]),
            r#".f[="a"]"#
        );
    }

    #[test]
    fn apply_creates_and_records_the_applied_fields() {
        let cfg = svc(json!([{"port": 80, "targetPort": 8080}]));
        let out = apply("Service", None, &cfg, "kubectl", false, T1).expect("apply");
        let mf = managed(&out);
        assert_eq!(mf.len(), 1);
        assert_eq!(
            mf[0],
            json!({"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": T1, "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:targetPort": {}}}, "f:selector": {}}}})
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 8080}])
        );
    }

    #[test]
    fn apply_merges_list_maps_and_prunes_omitted_fields() {
        let first =
            svc(json!([{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]));
        let mut live = apply("Service", None, &first, "kubectl", false, T1).expect("apply");
        // The server defaults and allocates.
        live["spec"]["clusterIP"] = json!("10.96.0.10");
        live["spec"]["ports"][0]["protocol"] = json!("TCP");
        live["spec"]["ports"][1]["protocol"] = json!("TCP");
        let second = svc(json!([{"port": 80, "targetPort": 9090}]));
        let out = apply("Service", Some(&live), &second, "kubectl", false, T2).expect("apply");
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "targetPort": 9090}])
        );
        assert_eq!(out["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(managed(&out)[0]["time"], T2);
        // Same apply again: nothing changes, not even the time.
        let again = apply(
            "Service",
            Some(&out),
            &second,
            "kubectl",
            false,
            "2026-11-22T12:00:00Z",
        )
        .expect("apply");
        assert_eq!(again, out);
    }

    #[test]
    fn conflicts_with_update_managers_and_force() {
        let mut live = svc(json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]));
        let created = live.clone();
        record_update(
            "Service",
            None,
            &mut live,
            "kubectl-client-side-apply",
            None,
            T1,
        );
        assert_eq!(managed(&live)[0]["operation"], "Update");
        assert_eq!(
            managed(&live)[0]["fieldsV1"],
            json!({"f:spec": {"f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}}, "f:selector": {}}})
        );
        let _ = created;
        // Same values: no conflict, shared ownership.
        let same = svc(json!([{"port": 80, "targetPort": 8080}]));
        let shared =
            apply("Service", Some(&live), &same, "kubectl", false, T2).expect("no conflict");
        assert_eq!(managed(&shared).len(), 2);
        // A different value conflicts.
        let changed = svc(json!([{"port": 80, "targetPort": 9090}]));
        let err =
            apply("Service", Some(&live), &changed, "kubectl", false, T2).expect_err("conflict");
        assert_eq!(err.code, 409);
        assert_eq!(err.reason, "Conflict");
        assert_eq!(
            err.message,
            r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using v1: .spec.ports[port=80,protocol="TCP"].targetPort"#
        );
        assert_eq!(
            err.details,
            Some(
                json!({"causes": [{"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-client-side-apply\" using v1",
                                    "field": ".spec.ports[port=80,protocol=\"TCP\"].targetPort"}]})
            )
        );
        // Force takes ownership.
        let forced = apply("Service", Some(&live), &changed, "kubectl", true, T2).expect("force");
        assert_eq!(forced["spec"]["ports"][0]["targetPort"], 9090);
        let mf = managed(&forced);
        let csa = mf
            .iter()
            .find(|e| e["manager"] == "kubectl-client-side-apply")
            .expect("csa");
        assert!(!csa["fieldsV1"].to_string().contains("targetPort"));
        let ssa = mf.iter().find(|e| e["manager"] == "kubectl").expect("ssa");
        assert!(ssa["fieldsV1"].to_string().contains("targetPort"));
        assert_eq!(mf[0]["operation"], "Apply");
    }

    #[test]
    fn multiple_conflicts_message() {
        let mut live = svc(json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]));
        live["spec"]["type"] = json!("ClusterIP");
        record_update("Service", None, &mut live, "a", None, T1);
        let mut cfg = svc(json!([{"port": 80, "targetPort": 1}]));
        cfg["spec"]["type"] = json!("NodePort");
        let err = apply("Service", Some(&live), &cfg, "kubectl", false, T2).expect_err("conflicts");
        assert_eq!(
            err.message,
            "Apply failed with 2 conflicts: conflicts with \"a\" using v1:\n- .spec.ports[port=80,protocol=\"TCP\"].targetPort\n- .spec.type"
        );
    }

    #[test]
    fn pruning_keeps_fields_owned_by_others() {
        let first = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"a": "1", "b": "2"}}, "spec": {"type": "ClusterIP"}});
        let mut live = apply("Service", None, &first, "kubectl", false, T1).expect("apply");
        // Someone else takes over label b.
        let old = live.clone();
        live["metadata"]["labels"]["b"] = json!("3");
        record_update("Service", Some(&old), &mut live, "kubectl-label", None, T2);
        let second = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"type": "ClusterIP"}});
        let out = apply("Service", Some(&live), &second, "kubectl", false, T2).expect("apply");
        assert_eq!(out["metadata"]["labels"], json!({"b": "3"}));
    }

    #[test]
    fn record_update_semantics() {
        let mut obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"a": "1"}}, "spec": {"type": "ClusterIP"}});
        record_update("Service", None, &mut obj, "kubectl-create", None, T1);
        let created = obj.clone();
        // An identical write changes nothing.
        let mut same = created.clone();
        same["metadata"]["resourceVersion"] = json!("5");
        record_update(
            "Service",
            Some(&created),
            &mut same,
            "kubectl-edit",
            None,
            T2,
        );
        assert_eq!(managed(&same), managed(&created));
        // A label change moves the field to the new manager.
        let mut labelled = created.clone();
        labelled["metadata"]["labels"]["a"] = json!("2");
        record_update(
            "Service",
            Some(&created),
            &mut labelled,
            "kubectl-label",
            None,
            T2,
        );
        let mf = managed(&labelled);
        assert_eq!(mf.len(), 2);
        assert_eq!(mf[0]["manager"], "kubectl-create");
        assert!(!mf[0]["fieldsV1"].to_string().contains("f:a"));
        assert_eq!(
            mf[1],
            json!({"manager": "kubectl-label", "operation": "Update", "apiVersion": "v1", "time": T2, "fieldsType": "FieldsV1",
                                 "fieldsV1": {"f:metadata": {"f:labels": {"f:a": {}}}}})
        );
        // Status updates are recorded with their subresource.
        let mut with_status = labelled.clone();
        with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}});
        record_update(
            "Service",
            Some(&labelled),
            &mut with_status,
            "lb-controller",
            Some("status"),
            T2,
        );
        let mf = managed(&with_status);
        let lb = mf
            .iter()
            .find(|e| e["manager"] == "lb-controller")
            .expect("lb");
        assert_eq!(lb["subresource"], "status");
        assert_eq!(
            lb["fieldsV1"],
            json!({"f:status": {"f:loadBalancer": {"f:ingress": {}}}})
        );
        // Removing a field removes it from its owner; an empty owner disappears.
        let mut unlabelled = labelled.clone();
        unlabelled["metadata"]["labels"] = json!({});
        record_update(
            "Service",
            Some(&labelled),
            &mut unlabelled,
            "kubectl-edit",
            None,
            T2,
        );
        assert!(
            managed(&unlabelled)
                .iter()
                .all(|e| e["manager"] != "kubectl-label")
        );
    }

    #[test]
    fn objects_without_managed_fields_belong_to_before_first_apply() {
        let live = svc(json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]));
        let err = apply(
            "Service",
            Some(&live),
            &svc(json!([{"port": 80, "targetPort": 1}])),
            "kubectl",
            false,
            T1,
        )
        .expect_err("conflict");
        assert_eq!(
            err.message,
            r#"Apply failed with 1 conflict: conflict with "before-first-apply" using v1: .spec.ports[port=80,protocol="TCP"].targetPort"#
        );
        let ok = apply(
            "Service",
            Some(&live),
            &svc(json!([{"port": 80, "targetPort": 8080}])),
            "kubectl",
            false,
            T1,
        )
        .expect("same values");
        let managers: Vec<Value> = managed(&ok).iter().map(|e| e["manager"].clone()).collect();
        assert_eq!(
            managers,
            vec![json!("kubectl"), json!("before-first-apply")]
        );
    }

    #[test]
    fn list_merge_order() {
        let v = |xs: &[i64]| xs.iter().map(|x| json!({"port": x})).collect::<Vec<_>>();
        let m = |l: &[i64], c: &[i64]| {
            merge_in_order(&v(l), &v(c), |x| x["port"].to_string(), |_, c| c.clone())
                .iter()
                .map(|x| x["port"].as_i64().unwrap_or(0))
                .collect::<Vec<_>>()
        };
        assert_eq!(m(&[1, 2], &[2, 3]), vec![1, 2, 3]);
        assert_eq!(m(&[2, 1], &[1, 2]), vec![1, 2]);
        assert_eq!(m(&[1, 9, 2], &[2, 1]), vec![9, 2, 1]);
        assert_eq!(m(&[], &[3, 1]), vec![3, 1]);
        assert_eq!(m(&[5], &[]), vec![5]);
    }

    #[test]
    fn apply_rejects_managed_fields_and_non_objects() {
        let bad = json!({"metadata": {"name": "a", "managedFields": []}});
        assert_eq!(
            apply("Service", None, &bad, "m", false, T1)
                .expect_err("mf")
                .message,
            "metadata.managedFields must be nil"
        );
        assert_eq!(
            apply("Service", None, &json!([]), "m", false, T1)
                .expect_err("array")
                .code,
            400
        );
    }

    #[test]
    fn sets_and_atomic_lists() {
        let first = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w", "finalizers": ["a"]}, "spec": {"externalIPs": ["1.1.1.1", "2.2.2.2"]}});
        let live = apply("Service", None, &first, "one", false, T1).expect("apply");
        let f = managed(&live)[0]["fieldsV1"].clone();
        assert_eq!(
            f,
            json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}}}, "f:spec": {"f:externalIPs": {}}})
        );
        let second = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w", "finalizers": ["b"]}, "spec": {"externalIPs": ["3.3.3.3"]}});
        let out = apply("Service", Some(&live), &second, "two", false, T2)
            .expect_err("externalIPs conflict");
        assert!(out.message.contains(".spec.externalIPs"), "{}", out.message);
        let out = apply("Service", Some(&live), &second, "two", true, T2).expect("force");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["spec"]["externalIPs"], json!(["3.3.3.3"]));
    }

    /// The create shortcut must give exactly what the general comparison gives for a new object.
    #[test]
    fn create_fields_match_the_general_walk() {
        let objects = [
            (
                "Service",
                None,
                svc(
                    json!([{"port": 80}, {"name": "b", "port": 81, "protocol": "UDP", "targetPort": "x"}]),
                ),
            ),
            (
                "Service",
                None,
                json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "s", "namespace": "d", "labels": {"a": "b"}, "annotations": {},
                             "finalizers": ["x", "y"], "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}],
                             "managedFields": [{"manager": "old"}], "uid": "1", "resourceVersion": "2", "generation": 1},
                "spec": {"type": "NodePort", "clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ipFamilies": ["IPv4"],
                         "ports": [{"port": 80, "nodePort": 30000}, {"port": 80}], "selector": null,
                         "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}, "bogus": {"x": 1}},
                "status": {"loadBalancer": {}}}),
            ),
            (
                "Service",
                Some("status"),
                json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ports": [{"port": 80, "protocol": "TCP"}]}]},
                           "conditions": [{"type": "A", "status": "True"}]}}),
            ),
            (
                "EndpointSlice",
                None,
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "e", "labels": {"kubernetes.io/service-name": "s"}}, "addressType": "IPv4",
                "ports": [{"name": "http", "port": 80}], "endpoints": [
                    {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "p"}, "zone": "z", "hints": {"forZones": [{"name": "z"}]}},
                    {"addresses": ["10.0.0.2"], "nodeName": "n"}]}),
            ),
            (
                "Pod",
                None,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "p-"},
                "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "name": "http"}],
                         "env": [{"name": "A", "value": "1"}], "args": ["a", "b"]}]},
                "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}}),
            ),
            (
                "Node",
                None,
                json!({"metadata": {"name": "n", "labels": {"topology.kubernetes.io/zone": "z"}},
                "spec": {"podCIDRs": ["10.244.0.0/24"], "taints": [{"key": "k", "effect": "NoSchedule"}]},
                "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}),
            ),
            (
                "Namespace",
                None,
                json!({"metadata": {"name": "ns"}, "spec": {"finalizers": ["kubernetes"]}}),
            ),
            (
                "Event",
                None,
                json!({"metadata": {"name": "ev"}, "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "R", "count": 2}),
            ),
            (
                "Unknown",
                None,
                json!({"metadata": {"name": "x"}, "a": {"b": [1, 2]}, "c": null}),
            ),
        ];
        for (kind, sub, obj) in objects {
            let general: Set = object_fields(kind, &obj, sub, COMPARE)
                .into_keys()
                .collect();
            let want = fields_from_set(&general);
            let got = create_fields(kind, &obj, sub).encode();
            assert_eq!(got, want, "{kind} {sub:?}");
            let mut created = obj.clone();
            record_update(kind, None, &mut created, "m", sub, T1);
            let entries = managed(&created);
            if general.is_empty() {
                assert!(entries.is_empty(), "{kind}");
            } else {
                assert_eq!(entries.len(), 1, "{kind}");
                assert_eq!(entries[0]["fieldsV1"], want, "{kind}");
                assert_eq!(entries[0]["manager"], "m");
            }
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0u16..100).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            let keys = prop_oneof![
                Just("ports".to_string()),
                Just("port".to_string()),
                Just("protocol".to_string()),
                Just("labels".to_string()),
                Just("selector".to_string()),
                Just("clusterIPs".to_string()),
                "[a-c]{1,2}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(keys, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any shape, schema-valid or not, gets the same fields from both walks.
        #[test]
        fn create_fields_match_the_general_walk_for_any_shape(
            spec in arbitrary_json(),
            metadata in arbitrary_json(),
            status in proptest::bool::ANY,
        ) {
            let obj = json!({"metadata": metadata, "spec": spec});
            let sub = status.then_some("status");
            for kind in ["Service", "EndpointSlice", "Pod"] {
                let general: Set = object_fields(kind, &obj, sub, COMPARE).into_keys().collect();
                proptest::prop_assert_eq!(
                    create_fields(kind, &obj, sub).encode(),
                    fields_from_set(&general)
                );
            }
        }
    }
}
