//! Service hooks driven the way the generic layer drives them (prepare, one transaction with
//! the object, finish), against the embedded store and a small in-memory fake store.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use portico_store::{
    Compare, Event, EventKind, KeyValue, ListResult, Op, Revision, Store, TxnResponse, WatchStream,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::*;
use crate::hooks::{ObjectHooks, WriteContext};

// ---- a tiny in-memory store with etcd's semantics (enough for these tests) ----

#[derive(Default)]
struct FakeInner {
    kvs: BTreeMap<String, KeyValue>,
    rev: Revision,
    history: Vec<(Revision, Vec<Event>)>,
}

struct FakeStore {
    inner: std::sync::Mutex<FakeInner>,
    tx: broadcast::Sender<(Revision, Vec<Event>)>,
}

impl FakeStore {
    fn new() -> Arc<Self> {
        Arc::new(FakeStore {
            inner: Default::default(),
            tx: broadcast::channel(4096).0,
        })
    }
}

#[async_trait]
impl Store for FakeStore {
    async fn get(&self, key: &str) -> portico_store::Result<Option<KeyValue>> {
        Ok(self.inner.lock().expect("lock").kvs.get(key).cloned())
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        _rev: Option<Revision>,
    ) -> portico_store::Result<ListResult> {
        let g = self.inner.lock().expect("lock");
        let mut kvs: Vec<KeyValue> = g
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|s| k.as_str() > s))
            .map(|(_, v)| v.clone())
            .collect();
        let more = limit > 0 && kvs.len() > limit;
        if limit > 0 {
            kvs.truncate(limit);
        }
        Ok(ListResult {
            kvs,
            revision: g.rev,
            more,
        })
    }
    async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> portico_store::Result<TxnResponse> {
        let mut g = self.inner.lock().expect("lock");
        for Compare::ModRevision(k, r) in &compares {
            let cur = g.kvs.get(k).map(|kv| kv.mod_revision).unwrap_or(0);
            if cur != *r {
                return Ok(TxnResponse {
                    succeeded: false,
                    revision: g.rev,
                });
            }
        }
        if ops.is_empty() {
            return Ok(TxnResponse {
                succeeded: true,
                revision: g.rev,
            });
        }
        g.rev += 1;
        let rev = g.rev;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let prev = g.kvs.get(&k).cloned();
                    let kv = KeyValue {
                        key: k.clone(),
                        value: v,
                        create_revision: prev.as_ref().map(|p| p.create_revision).unwrap_or(rev),
                        mod_revision: rev,
                    };
                    g.kvs.insert(k, kv.clone());
                    events.push(Event {
                        kind: EventKind::Put,
                        kv,
                        prev,
                    });
                }
                Op::Delete(k) => {
                    if let Some(prev) = g.kvs.remove(&k) {
                        let kv = KeyValue {
                            key: k,
                            value: Bytes::new(),
                            create_revision: 0,
                            mod_revision: rev,
                        };
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv,
                            prev: Some(prev),
                        });
                    }
                }
            }
        }
        g.history.push((rev, events.clone()));
        let _ = self.tx.send((rev, events));
        Ok(TxnResponse {
            succeeded: true,
            revision: rev,
        })
    }
    async fn watch(&self, prefix: &str, after: Revision) -> portico_store::Result<WatchStream> {
        let (backlog, rx) = {
            let g = self.inner.lock().expect("lock");
            let backlog: Vec<(Revision, Vec<Event>)> = g
                .history
                .iter()
                .filter(|(r, _)| *r > after)
                .cloned()
                .collect();
            (backlog, self.tx.subscribe())
        };
        let last = backlog.last().map(|(r, _)| *r).unwrap_or(after);
        let prefix = prefix.to_string();
        let p2 = prefix.clone();
        let filter = move |evs: Vec<Event>| -> Option<portico_store::Result<Vec<Event>>> {
            let evs: Vec<Event> = evs
                .into_iter()
                .filter(|e| e.kv.key.starts_with(&p2))
                .collect();
            (!evs.is_empty()).then_some(Ok(evs))
        };
        let f2 = filter.clone();
        let head = futures::stream::iter(backlog.into_iter().filter_map(move |(_, e)| filter(e)));
        let live = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(item) => return Some((item, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        })
        .filter_map(move |(r, e)| {
            let out = if r > last { f2(e) } else { None };
            async move { out }
        });
        let _ = prefix;
        Ok(Box::pin(head.chain(live)))
    }
    async fn current_revision(&self) -> portico_store::Result<Revision> {
        Ok(self.inner.lock().expect("lock").rev)
    }
    async fn compact(&self, _revision: Revision) -> portico_store::Result<()> {
        Ok(())
    }
}

use futures::StreamExt;

// ---- the generic layer, as far as these hooks see it ----

fn cfg(v4: &str, ports: std::ops::RangeInclusive<u16>) -> ServiceConfig {
    ServiceConfig {
        cluster_ip_ranges: vec![v4.parse().expect("cidr")],
        node_port_range: ports,
    }
}

fn ctx(name: &str, dry: bool) -> WriteContext {
    WriteContext {
        dry_run: dry,
        namespace: Some("default".into()),
        name: name.into(),
        subresource: None,
    }
}

fn manifest(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec})
}

fn svc_key(name: &str) -> String {
    keys::object_key("services", Some("default"), name)
}

async fn create_as(
    h: &dyn ObjectHooks,
    store: &dyn Store,
    name: &str,
    spec: Value,
    dry: bool,
) -> Result<Value, ApiError> {
    for _ in 0..8 {
        let mut obj = manifest(name, spec.clone());
        let p = h.prepare_create(&ctx(name, dry), &mut obj).await?;
        if dry {
            h.finish(p, false);
            return Ok(obj);
        }
        let key = svc_key(name);
        let mut compares = p.compares.clone();
        compares.push(Compare::ModRevision(key.clone(), 0));
        let mut ops = p.ops.clone();
        ops.push(Op::Put(key.clone(), encode(&obj)));
        let resp = store.txn(compares, ops).await?;
        h.finish(p, resp.succeeded);
        if resp.succeeded {
            return Ok(obj);
        }
        if store.get(&key).await?.is_some() {
            return Err(ApiError::already_exists(SERVICES, name));
        }
    }
    Err(ApiError::new(409, "Conflict", "lost too many races"))
}

async fn update_as(
    h: &dyn ObjectHooks,
    store: &dyn Store,
    name: &str,
    change: impl Fn(&mut Value),
) -> Result<Value, ApiError> {
    for _ in 0..8 {
        let kv = store
            .get(&svc_key(name))
            .await?
            .ok_or_else(|| ApiError::not_found(SERVICES, name))?;
        let old: Value = serde_json::from_slice(&kv.value).expect("stored json");
        let mut new = old.clone();
        change(&mut new);
        let p = h.prepare_update(&ctx(name, false), &old, &mut new).await?;
        let mut compares = p.compares.clone();
        compares.push(Compare::ModRevision(svc_key(name), kv.mod_revision));
        let mut ops = p.ops.clone();
        ops.push(Op::Put(svc_key(name), encode(&new)));
        let resp = store.txn(compares, ops).await?;
        h.finish(p, resp.succeeded);
        if resp.succeeded {
            return Ok(new);
        }
    }
    Err(ApiError::new(409, "Conflict", "lost too many races"))
}

async fn delete_as(h: &dyn ObjectHooks, store: &dyn Store, name: &str) -> Result<(), ApiError> {
    let kv = store
        .get(&svc_key(name))
        .await?
        .ok_or_else(|| ApiError::not_found(SERVICES, name))?;
    let old: Value = serde_json::from_slice(&kv.value).expect("stored json");
    let p = h.prepare_delete(&ctx(name, false), &old).await?;
    let mut compares = p.compares.clone();
    compares.push(Compare::ModRevision(svc_key(name), kv.mod_revision));
    let mut ops = p.ops.clone();
    ops.push(Op::Delete(svc_key(name)));
    let resp = store.txn(compares, ops).await?;
    h.finish(p, resp.succeeded);
    Ok(())
}

async fn keys_under(store: &dyn Store, prefix: &str) -> BTreeSet<String> {
    store
        .list(prefix, None, 0, None)
        .await
        .expect("list")
        .kvs
        .into_iter()
        .map(|kv| kv.key[prefix.len()..].to_string())
        .collect()
}

fn embedded() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        portico_store::embedded::EmbeddedStore::open(&dir.path().join("db")).expect("open store");
    (dir, store)
}

fn err_of<T>(r: Result<T, ApiError>) -> ApiError {
    match r {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    }
}

// ---- tests ----

#[tokio::test]
async fn create_defaults_allocates_and_records_ip_address() {
    let (_d, store) = embedded();
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/24", 30000..=32767));
    let report = hooks.start().await.expect("start");
    assert!(report.findings.is_empty());
    let obj = create_as(
        &*hooks,
        &*store,
        "web",
        json!({"type": "NodePort", "ports": [{"port": 80}], "selector": {"app": "web"}}),
        false,
    )
    .await
    .expect("create");
    let spec = &obj["spec"];
    let ip = spec["clusterIP"].as_str().expect("clusterIP").to_string();
    assert_eq!(spec["clusterIPs"], json!([ip.clone()]));
    assert_ne!(ip, "10.96.0.1", "first address is kept for `kubernetes`");
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["externalTrafficPolicy"], "Cluster");
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(spec["ports"][0]["protocol"], "TCP");
    assert_eq!(spec["ports"][0]["targetPort"], 80);
    let np = spec["ports"][0]["nodePort"].as_i64().expect("nodePort");
    assert!((30000..=32767).contains(&np));
    assert_eq!(obj["status"], json!({"loadBalancer": {}}));

    let ipobj: Value = serde_json::from_slice(
        &store
            .get(&ip_key(&ip.parse().expect("ip")))
            .await
            .expect("get")
            .expect("IPAddress stored")
            .value,
    )
    .expect("json");
    assert_eq!(ipobj["kind"], "IPAddress");
    assert_eq!(
        ipobj["spec"]["parentRef"],
        json!({"group": "", "resource": "services", "namespace": "default", "name": "web"})
    );
    assert_eq!(
        ipobj["metadata"]["labels"]["ipaddress.kubernetes.io/managed-by"],
        "ipallocator.k8s.io"
    );
    assert_eq!(
        ipobj["metadata"]["labels"]["ipaddress.kubernetes.io/ip-family"],
        "IPv4"
    );
    assert_eq!(
        keys_under(&*store, keys::NODE_PORT_PREFIX).await,
        BTreeSet::from([np.to_string()])
    );
    // The default ServiceCIDR exists.
    let sc = store
        .get(&keys::object_key("servicecidrs", None, "kubernetes"))
        .await
        .expect("get")
        .expect("default ServiceCIDR");
    let sc: Value = serde_json::from_slice(&sc.value).expect("json");
    assert_eq!(sc["spec"]["cidrs"], json!(["10.96.0.0/24"]));
}

#[tokio::test]
async fn allocation_errors_have_upstream_status() {
    let (_d, store) = embedded();
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/29", 30000..=30003));
    hooks.start().await.expect("start");
    create_as(&*hooks, &*store, "a", json!({"clusterIP": "10.96.0.5", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}), false).await.expect("create a");

    let e = create_as(
        &*hooks,
        &*store,
        "b",
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect_err("taken IP");
    assert_eq!((e.code, e.reason), (422, "Invalid"));
    assert_eq!(
        e.message,
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.5\"}: failed to allocate IP 10.96.0.5: provided IP is already allocated"
    );

    let e = create_as(
        &*hooks,
        &*store,
        "b",
        json!({"clusterIP": "10.97.0.5", "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect_err("out of range");
    assert_eq!(
        e.message,
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.97.0.5\"}: failed to allocate IP 10.97.0.5: the provided IP (10.97.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/29"
    );

    let e = create_as(
        &*hooks,
        &*store,
        "b",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}),
        false,
    )
    .await
    .expect_err("taken port");
    assert_eq!(
        e.message,
        "Service \"b\" is invalid: spec.ports[0].nodePort: Invalid value: 30001: provided port is already allocated"
    );
    let causes = e.details.as_ref().expect("details")["causes"].clone();
    assert_eq!(
        causes,
        json!([{"reason": "FieldValueInvalid", "message": "Invalid value: 30001: provided port is already allocated", "field": "spec.ports[0].nodePort"}])
    );

    let e = create_as(
        &*hooks,
        &*store,
        "b",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}]}),
        false,
    )
    .await
    .expect_err("port out of range");
    assert_eq!(
        e.message,
        "Service \"b\" is invalid: spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. The range of valid ports is 30000-30003"
    );

    let e = create_as(
        &*hooks,
        &*store,
        "b",
        json!({"ports": [{"port": 0}]}),
        false,
    )
    .await
    .expect_err("validation");
    assert_eq!(
        e.message,
        "Service \"b\" is invalid: [spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive]"
    );

    // Failed writes took nothing: the /29 has 6 usable, 1 kept for `kubernetes`, 1 used by `a`.
    for i in 0..4 {
        create_as(
            &*hooks,
            &*store,
            &format!("c{i}"),
            json!({"ports": [{"port": 80}]}),
            false,
        )
        .await
        .expect("fills the range");
    }
    let e = create_as(
        &*hooks,
        &*store,
        "full",
        json!({"ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect_err("range full");
    assert_eq!((e.code, e.reason), (500, "InternalError"));
    assert_eq!(
        e.message,
        "Internal error occurred: failed to allocate a serviceIP: range is full"
    );

    // Only an explicit create takes the first address.
    create_as(
        &*hooks,
        &*store,
        "kubernetes",
        json!({"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}),
        false,
    )
    .await
    .expect("kubernetes");

    for i in 0..3 {
        create_as(
            &*hooks,
            &*store,
            &format!("headless{i}"),
            json!({"clusterIP": "None", "type": "ClusterIP", "ports": [{"port": 80}]}),
            false,
        )
        .await
        .expect("headless takes nothing");
    }
    create_as(
        &*hooks,
        &*store,
        "np2",
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect("headless");
    let e = create_as(
        &*hooks,
        &*store,
        "hc",
        json!({"clusterIP": "None", "type": "ClusterIP", "ports": [{"port": 80}]}),
        false,
    )
    .await;
    assert!(e.is_ok());
}

#[tokio::test]
async fn node_port_exhaustion_and_hcnp_errors_are_500() {
    let (_d, store) = embedded();
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/24", 30000..=30001));
    hooks.start().await.expect("start");
    create_as(
        &*hooks,
        &*store,
        "a",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}),
        false,
    )
    .await
    .expect("a");
    let e = create_as(&*hooks, &*store, "lb", json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30000, "ports": [{"port": 80}]}), false)
        .await
        .expect_err("hcnp taken");
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            500,
            "Internal error occurred: failed to allocate requested HealthCheck NodePort 30000: provided port is already allocated"
        )
    );
    create_as(
        &*hooks,
        &*store,
        "b",
        json!({"type": "NodePort", "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect("b");
    let e = create_as(
        &*hooks,
        &*store,
        "c",
        json!({"type": "NodePort", "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect_err("full");
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            500,
            "Internal error occurred: failed to allocate a nodePort: range is full"
        )
    );
}

#[tokio::test]
async fn dry_run_reserves_nothing() {
    let (_d, store) = embedded();
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/24", 30000..=32767));
    hooks.start().await.expect("start");
    let before = hooks.free_counts();
    let dry = create_as(
        &*hooks,
        &*store,
        "web",
        json!({"type": "NodePort", "ports": [{"port": 80}]}),
        true,
    )
    .await
    .expect("dry create");
    let ip = dry["spec"]["clusterIP"]
        .as_str()
        .expect("would-be clusterIP")
        .to_string();
    assert!(dry["spec"]["ports"][0]["nodePort"].as_i64().is_some());
    assert_eq!(hooks.free_counts(), before);
    assert!(
        keys_under(&*store, &keys::list_prefix("ipaddresses", None))
            .await
            .is_empty()
    );
    // The same address is still free for a real create.
    create_as(
        &*hooks,
        &*store,
        "web",
        json!({"clusterIP": ip, "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect("real create");
}

#[tokio::test]
async fn updates_keep_release_and_allocate() {
    let (_d, store) = embedded();
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/24", 30000..=32767));
    hooks.start().await.expect("start");
    let created = create_as(&*hooks, &*store, "web", json!({"type": "LoadBalancer", "clusterIP": "10.96.0.50", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}), false).await.expect("create");
    let ip = created["spec"]["clusterIP"].clone();
    let np = created["spec"]["ports"][0]["nodePort"].clone();
    let hc = created["spec"]["healthCheckNodePort"]
        .as_i64()
        .expect("hcnp");
    assert_eq!(keys_under(&*store, keys::NODE_PORT_PREFIX).await.len(), 2);

    // kubectl replace with the original manifest keeps the allocated values.
    let replaced = update_as(&*hooks, &*store, "web", |v| {
        v["spec"] = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]});
    })
    .await
    .expect("replace");
    assert_eq!(replaced["spec"]["clusterIP"], ip);
    assert_eq!(replaced["spec"]["ports"][0]["nodePort"], np);
    assert_eq!(replaced["spec"]["healthCheckNodePort"], hc);

    // Changing the clusterIP is refused.
    let e = update_as(&*hooks, &*store, "web", |v| {
        v["spec"]["clusterIP"] = json!("10.96.0.77");
        v["spec"]["clusterIPs"] = json!(["10.96.0.77"]);
    })
    .await
    .expect_err("immutable");
    assert_eq!(
        e.message,
        "Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.77\"}: may not change once set"
    );

    // → ClusterIP: node ports and HCNP released in the same transaction.
    let cip = update_as(&*hooks, &*store, "web", |v| {
        v["spec"]["type"] = json!("ClusterIP")
    })
    .await
    .expect("to ClusterIP");
    assert!(cip["spec"]["ports"][0].get("nodePort").is_none());
    assert!(cip["spec"].get("healthCheckNodePort").is_none());
    assert!(cip["spec"].get("externalTrafficPolicy").is_none());
    assert!(keys_under(&*store, keys::NODE_PORT_PREFIX).await.is_empty());

    // → ExternalName: the IPAddress goes.
    let en = update_as(&*hooks, &*store, "web", |v| {
        v["spec"]["type"] = json!("ExternalName");
        v["spec"]["externalName"] = json!("example.com");
    })
    .await
    .expect("to ExternalName");
    assert!(en["spec"].get("clusterIP").is_none());
    assert!(
        keys_under(&*store, &keys::list_prefix("ipaddresses", None))
            .await
            .is_empty()
    );

    // → NodePort again: a fresh IP and node port.
    let back = update_as(&*hooks, &*store, "web", |v| {
        v["spec"]["type"] = json!("NodePort");
        v["spec"].as_object_mut().map(|m| m.remove("externalName"));
    })
    .await
    .expect("to NodePort");
    assert!(back["spec"]["clusterIP"].as_str().is_some());
    assert_eq!(
        keys_under(&*store, &keys::list_prefix("ipaddresses", None))
            .await
            .len(),
        1
    );
    assert_eq!(keys_under(&*store, keys::NODE_PORT_PREFIX).await.len(), 1);

    delete_as(&*hooks, &*store, "web").await.expect("delete");
    assert!(
        keys_under(&*store, &keys::list_prefix("ipaddresses", None))
            .await
            .is_empty()
    );
    assert!(keys_under(&*store, keys::NODE_PORT_PREFIX).await.is_empty());
}

#[tokio::test]
async fn status_update_validates_ingress() {
    let (_d, store) = embedded();
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/24", 30000..=32767));
    hooks.start().await.expect("start");
    let old = create_as(
        &*hooks,
        &*store,
        "web",
        json!({"ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect("create");
    let mut new = old.clone();
    new["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    let c = WriteContext {
        subresource: Some("status".into()),
        ..ctx("web", false)
    };
    let e = err_of(hooks.prepare_update(&c, &old, &mut new).await);
    assert_eq!(
        e.message,
        "Service \"web\" is invalid: status.loadBalancer.ingress: Forbidden: may only be used when `spec.type` is 'LoadBalancer'"
    );
}

#[tokio::test]
async fn service_cidr_extends_the_pool_online() {
    let (_d, store) = embedded();
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/29", 30000..=32767));
    hooks.start().await.expect("start");
    for i in 0..5 {
        create_as(
            &*hooks,
            &*store,
            &format!("s{i}"),
            json!({"ports": [{"port": 80}]}),
            false,
        )
        .await
        .expect("fill");
    }
    assert_eq!(
        create_as(
            &*hooks,
            &*store,
            "more",
            json!({"ports": [{"port": 80}]}),
            false
        )
        .await
        .expect_err("full")
        .code,
        500
    );

    let cidr_hooks = hooks.service_cidr_hooks();
    let mut sc = json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "extra"}, "spec": {"cidrs": ["10.100.0.0/28"]}});
    let c = WriteContext {
        dry_run: false,
        namespace: None,
        name: "extra".into(),
        subresource: None,
    };
    let p = cidr_hooks
        .prepare_create(&c, &mut sc)
        .await
        .expect("valid ServiceCIDR");
    assert_eq!(sc["status"]["conditions"][0]["type"], "Ready");
    let key = keys::object_key("servicecidrs", None, "extra");
    let resp = store
        .txn(
            vec![Compare::ModRevision(key.clone(), 0)],
            vec![Op::Put(key, encode(&sc))],
        )
        .await
        .expect("txn");
    cidr_hooks.finish(p, resp.succeeded);

    let more = create_as(
        &*hooks,
        &*store,
        "more",
        json!({"ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect("from the new range");
    let ip: std::net::IpAddr = more["spec"]["clusterIP"]
        .as_str()
        .expect("ip")
        .parse()
        .expect("ip");
    assert!(
        "10.100.0.0/28"
            .parse::<IpNet>()
            .expect("cidr")
            .contains(&ip)
    );

    // An IPAddress a live Service holds cannot be deleted.
    let ip_hooks = hooks.ip_address_hooks();
    let ipobj: Value = serde_json::from_slice(
        &store
            .get(&ip_key(&ip))
            .await
            .expect("get")
            .expect("stored")
            .value,
    )
    .expect("json");
    let c = WriteContext {
        dry_run: false,
        namespace: None,
        name: ip.to_string(),
        subresource: None,
    };
    assert_eq!(err_of(ip_hooks.prepare_delete(&c, &ipobj).await).code, 403);

    // A bad ServiceCIDR is refused with upstream's shape; one in use cannot be deleted.
    let mut bad = json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "bad"}, "spec": {"cidrs": ["10.0.0.0/8", "10.1.0.0/16"]}});
    let c = WriteContext {
        dry_run: false,
        namespace: None,
        name: "bad".into(),
        subresource: None,
    };
    let e = err_of(cidr_hooks.prepare_create(&c, &mut bad).await);
    assert_eq!(e.code, 422);
    let c = WriteContext {
        dry_run: false,
        namespace: None,
        name: "extra".into(),
        subresource: None,
    };
    assert_eq!(err_of(cidr_hooks.prepare_delete(&c, &sc).await).code, 409);
}

#[tokio::test]
async fn repair_on_start_reports_and_fixes() {
    let (_d, store) = embedded();
    {
        let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/24", 30000..=32767));
        hooks.start().await.expect("start");
        create_as(
            &*hooks,
            &*store,
            "ok",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]}),
            false,
        )
        .await
        .expect("ok");
    }
    // A leaked IPAddress and node port, and a Service whose IP and port were never recorded.
    let leaked: std::net::IpAddr = "10.96.0.200".parse().expect("ip");
    store
        .txn(vec![], vec![
            Op::Put(ip_key(&leaked), ip_address_object(&leaked, "default", "gone")),
            Op::Put(node_port_key(31999), Bytes::from("default/gone")),
            Op::Put(svc_key("orphan"), encode(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orphan", "namespace": "default"},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.201", "clusterIPs": ["10.96.0.201"], "ipFamilies": ["IPv4"], "ports": [{"port": 80, "nodePort": 31000}]}}))),
        ])
        .await
        .expect("seed");
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/24", 30000..=32767));
    let report = hooks.start().await.expect("start");
    let reasons: BTreeSet<&str> = report.findings.iter().map(|f| f.reason).collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            "ClusterIPNotAllocated",
            "IPAddressNotAllocated",
            "PortLeaked",
            "PortNotAllocated"
        ]),
        "{report:?}"
    );
    let ips = keys_under(&*store, &keys::list_prefix("ipaddresses", None)).await;
    assert!(ips.contains("10.96.0.201") && !ips.contains("10.96.0.200"));
    let ports = keys_under(&*store, keys::NODE_PORT_PREFIX).await;
    assert!(ports.contains("31000") && !ports.contains("31999"));
    // The repaired allocations are now respected.
    let e = create_as(
        &*hooks,
        &*store,
        "x",
        json!({"clusterIP": "10.96.0.201", "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect_err("taken");
    assert_eq!(e.code, 422);
    // A second start finds nothing more.
    assert!(hooks.resync().await.expect("resync").findings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_servers_never_hand_out_the_same_ip_or_port() {
    let (_d, store) = embedded();
    // 30 usable addresses (one kept for `kubernetes`) and 40 node ports for 24 Services.
    let a = ServiceHooks::new(store.clone(), cfg("10.96.0.0/27", 30000..=30039));
    let b = ServiceHooks::new(store.clone(), cfg("10.96.0.0/27", 30000..=30039));
    a.start().await.expect("start a");
    b.start().await.expect("start b");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let h = if i % 2 == 0 { a.clone() } else { b.clone() };
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            create_as(
                &*h,
                &*s,
                &format!("s{i}"),
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
                false,
            )
            .await
        }));
    }
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for t in tasks {
        let obj = t.await.expect("join").expect("every create succeeds");
        assert!(
            ips.insert(obj["spec"]["clusterIP"].as_str().expect("ip").to_string()),
            "duplicate IP"
        );
        assert!(
            ports.insert(obj["spec"]["ports"][0]["nodePort"].as_i64().expect("port")),
            "duplicate port"
        );
    }
    assert_eq!(
        keys_under(&*store, &keys::list_prefix("ipaddresses", None))
            .await
            .len(),
        24
    );
    assert_eq!(keys_under(&*store, keys::NODE_PORT_PREFIX).await.len(), 24);
    assert!(a.resync().await.expect("resync").findings.is_empty());
    // Each server learnt the other's allocations from its watch.
    for _ in 0..50 {
        if a.free_counts() == b.free_counts() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(a.free_counts(), b.free_counts());
    assert_eq!(a.free_counts(), (29 - 24, 40 - 24));
}

#[tokio::test]
async fn dual_stack_allocation_and_downgrade() {
    let (_d, store) = embedded();
    let c = ServiceConfig {
        cluster_ip_ranges: vec![
            "10.96.0.0/24".parse().expect("v4"),
            "fd00::/112".parse().expect("v6"),
        ],
        node_port_range: 30000..=32767,
    };
    let hooks = ServiceHooks::new(store.clone(), c);
    hooks.start().await.expect("start");
    let svc = create_as(
        &*hooks,
        &*store,
        "dual",
        json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect("create");
    assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    let ips = svc["spec"]["clusterIPs"].as_array().expect("ips").clone();
    assert_eq!(ips.len(), 2);
    assert!(ips[1].as_str().expect("v6").contains(':'));
    assert_eq!(
        keys_under(&*store, &keys::list_prefix("ipaddresses", None))
            .await
            .len(),
        2
    );

    // Dropping the secondary needs SingleStack.
    let e = update_as(&*hooks, &*store, "dual", |v| {
        v["spec"]["clusterIPs"] = json!([ips[0].clone()]);
        v["spec"]["ipFamilies"] = json!(["IPv4"]);
    })
    .await
    .expect_err("needs SingleStack");
    assert_eq!(e.code, 422);
    let down = update_as(&*hooks, &*store, "dual", |v| {
        v["spec"]["ipFamilyPolicy"] = json!("SingleStack")
    })
    .await
    .expect("downgrade");
    assert_eq!(down["spec"]["clusterIPs"], json!([ips[0].clone()]));
    assert_eq!(down["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(
        keys_under(&*store, &keys::list_prefix("ipaddresses", None))
            .await
            .len(),
        1
    );

    // Upgrading again allocates a new secondary.
    let up = update_as(&*hooks, &*store, "dual", |v| {
        v["spec"]["ipFamilyPolicy"] = json!("PreferDualStack")
    })
    .await
    .expect("upgrade");
    assert_eq!(
        up["spec"]["clusterIPs"].as_array().map(|a| a.len()),
        Some(2)
    );
    assert_eq!(
        keys_under(&*store, &keys::list_prefix("ipaddresses", None))
            .await
            .len(),
        2
    );

    // A single-stack cluster refuses RequireDualStack.
    let (_d2, store2) = embedded();
    let single = ServiceHooks::new(store2.clone(), cfg("10.96.0.0/24", 30000..=32767));
    single.start().await.expect("start");
    let e = create_as(
        &*single,
        &*store2,
        "dual",
        json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
        false,
    )
    .await
    .expect_err("single-stack");
    assert_eq!(
        e.message,
        "Service \"dual\" is invalid: spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
    );
}

// ---- property: random create / update / type change / delete never double-allocate or leak ----

#[derive(Clone, Debug)]
enum Step {
    Create(u8, u8),
    Retype(u8, u8),
    Delete(u8),
}

fn spec_for(kind: u8) -> Value {
    match kind % 5 {
        0 => json!({"type": "ClusterIP", "ports": [{"name": "a", "port": 80}]}),
        1 => {
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 53, "protocol": "UDP"}, {"name": "b", "port": 53, "protocol": "TCP"}]})
        }
        2 => {
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "a", "port": 80}]})
        }
        3 => json!({"type": "ExternalName", "externalName": "example.com"}),
        _ => {
            json!({"type": "ClusterIP", "clusterIP": "None", "ports": [{"name": "a", "port": 80}]})
        }
    }
}

async fn check_invariants(hooks: &ServiceHooks, store: &dyn Store) {
    // Abandoned picks are freed by a task that asks the store first; let it run.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let svcs = store
        .list(
            &keys::list_prefix("services", Some("default")),
            None,
            0,
            None,
        )
        .await
        .expect("list")
        .kvs;
    let mut held_ips = BTreeSet::new();
    let mut held_ports = BTreeSet::new();
    for kv in svcs {
        let s: k8s_openapi::api::core::v1::Service =
            serde_json::from_slice(&kv.value).expect("service");
        for ip in portico_core::service::alloc::held_ips(&s) {
            assert!(held_ips.insert(ip.to_string()), "IP {ip} held twice");
        }
        for p in portico_core::service::alloc::held_node_ports(&s) {
            assert!(held_ports.insert(p.to_string()), "port {p} held twice");
        }
    }
    assert_eq!(
        keys_under(store, &keys::list_prefix("ipaddresses", None)).await,
        held_ips,
        "IPAddresses match Services"
    );
    assert_eq!(
        keys_under(store, keys::NODE_PORT_PREFIX).await,
        held_ports,
        "node-port keys match Services"
    );
    let st = hooks.shared.lock();
    let used_ips: usize = st
        .ranges
        .values()
        .flat_map(|f| f.ranges.iter())
        .map(|r| r.used())
        .sum();
    assert_eq!(
        used_ips,
        held_ips.len(),
        "in-memory IP bitmap matches the store"
    );
    assert_eq!(
        st.ports.bitmap().count(),
        held_ports.len(),
        "in-memory port bitmap matches the store"
    );
}

fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
    use proptest::prelude::*;
    let step = prop_oneof![
        (0u8..6, 0u8..5).prop_map(|(i, k)| Step::Create(i, k)),
        (0u8..6, 0u8..5).prop_map(|(i, k)| Step::Retype(i, k)),
        (0u8..6).prop_map(Step::Delete),
    ];
    proptest::collection::vec(step, 1..40)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    #[test]
    fn random_writes_never_double_allocate_or_leak(steps in steps()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let store: Arc<dyn Store> = FakeStore::new();
            let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/28", 30000..=30009));
            hooks.shared.ensure_synced().await.expect("sync");
            for step in steps {
                match step {
                    Step::Create(i, k) => {
                        let _ = create_as(&*hooks, &*store, &format!("s{i}"), spec_for(k), false).await;
                    }
                    Step::Retype(i, k) => {
                        let _ = update_as(&*hooks, &*store, &format!("s{i}"), |v| {
                            let old = v["spec"].clone();
                            let mut s = spec_for(k);
                            // Keep what a user would keep on a PUT that changes the type.
                            if let Some(ip) = old.get("clusterIP") && k % 5 != 3 && k % 5 != 4 { s["clusterIP"] = ip.clone(); }
                            v["spec"] = s;
                        }).await;
                    }
                    Step::Delete(i) => {
                        let _ = delete_as(&*hooks, &*store, &format!("s{i}")).await;
                    }
                }
                check_invariants(&hooks, &*store).await;
            }
        });
    }
}

#[tokio::test]
async fn restart_keeps_every_allocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let mut first = HashSet::new();
    {
        let store: Arc<dyn Store> =
            portico_store::embedded::EmbeddedStore::open(&path).expect("open");
        let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/28", 30000..=30019));
        hooks.start().await.expect("start");
        for i in 0..6 {
            let o = create_as(
                &*hooks,
                &*store,
                &format!("a{i}"),
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
                false,
            )
            .await
            .expect("create");
            first.insert(o["spec"]["clusterIP"].as_str().expect("ip").to_string());
            first.insert(o["spec"]["ports"][0]["nodePort"].to_string());
        }
    }
    // Reopen the same file, as after a restart (the old handle closes in the background).
    let mut reopened = None;
    for _ in 0..100 {
        match portico_store::embedded::EmbeddedStore::open(&path) {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let store: Arc<dyn Store> = reopened.expect("reopen");
    let hooks = ServiceHooks::new(store.clone(), cfg("10.96.0.0/28", 30000..=30019));
    assert!(hooks.start().await.expect("start").findings.is_empty());
    // 13 usable addresses (one kept for `kubernetes`): 6 old + 7 new fill the range exactly.
    for i in 0..7 {
        let o = create_as(
            &*hooks,
            &*store,
            &format!("b{i}"),
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
            false,
        )
        .await
        .expect("create");
        assert!(
            first.insert(o["spec"]["clusterIP"].as_str().expect("ip").to_string()),
            "new IP collides with an old one"
        );
        assert!(
            first.insert(o["spec"]["ports"][0]["nodePort"].to_string()),
            "new port collides with an old one"
        );
    }
    assert_eq!(
        create_as(
            &*hooks,
            &*store,
            "c",
            json!({"ports": [{"port": 80}]}),
            false
        )
        .await
        .map_err(|e| e.code)
        .err(),
        Some(500)
    );
}

/// The IPAddress written beside each Service is exactly what encoding the object as a `Value`
/// gives (the watch cache's fast path needs that canonical form).
#[test]
fn ip_address_json_is_the_canonical_encoding() {
    use portico_core::service::cidr::{LABEL_IP_FAMILY, LABEL_MANAGED_BY, MANAGED_BY_ALLOCATOR};
    for (ip, family) in [("10.96.0.10", "IPv4"), ("fd00::a", "IPv6")] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let want = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IPAddress",
            "metadata": {
                "name": ip.to_string(),
                "uid": "u-1",
                "creationTimestamp": "2026-11-22T10:00:00Z",
                "labels": {LABEL_IP_FAMILY: family, LABEL_MANAGED_BY: MANAGED_BY_ALLOCATOR},
            },
            "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "ns", "name": "we\"b"}},
        });
        let got = super::ip_address_json(&ip, "ns", "we\"b", "u-1", "2026-11-22T10:00:00Z");
        assert_eq!(got.as_ref(), serde_json::to_vec(&want).unwrap().as_slice());
    }
    let fresh = super::ip_address_object(&"10.0.0.1".parse().unwrap(), "a", "b");
    let v: serde_json::Value = serde_json::from_slice(&fresh).unwrap();
    assert_eq!(v["spec"]["parentRef"]["name"], "b");
    assert!(v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
}
