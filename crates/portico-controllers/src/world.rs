//! The controllers' view of the cluster: one watch per kind (Services, Pods, Nodes,
//! EndpointSlices, Endpoints) feeding in-memory maps and the indexes the controllers need
//! (pods per Service, slices per Service), and turning each change into queued keys.
//! Everything here comes from the API through `kube`; nothing reads the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use portico_core::endpointslice::{
    CONTROLLER_NAME, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, MIRRORING_CONTROLLER_NAME, NodeInfo,
    Nodes,
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Options;
use crate::events::Recorder;
use crate::queue::WorkQueue;
use crate::tracker::Tracker;

/// Namespace and name.
pub(crate) type Key = (String, String);

pub(crate) fn key_of<K: Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// Delay for syncs caused by changes to slices or Endpoints (upstream's minimum sync delay).
pub(crate) const OBJECT_CHANGE_DELAY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct World {
    pub services: HashMap<Key, Arc<Service>>,
    pub services_by_ns: HashMap<String, HashSet<String>>,
    pub pods: HashMap<Key, Arc<Pod>>,
    pub pods_by_ns: HashMap<String, HashSet<String>>,
    pub pod_services: HashMap<Key, Vec<Key>>,
    pub service_pods: HashMap<Key, HashSet<Key>>,
    pub nodes: Arc<Nodes>,
    pub slices: HashMap<Key, Arc<EndpointSlice>>,
    /// Service key → names of slices labelled with it.
    pub slices_by_service: HashMap<Key, HashSet<String>>,
    pub endpoints: HashMap<Key, Arc<Endpoints>>,
}

impl World {
    pub fn pods_of(&self, service: &Key) -> Vec<Arc<Pod>> {
        let mut pods: Vec<Arc<Pod>> = self
            .service_pods
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k).cloned())
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        pods
    }

    /// Slices labelled with the Service's name and managed by `controller`.
    pub fn slices_of(&self, service: &Key, controller: &str) -> Vec<Arc<EndpointSlice>> {
        let mut out: Vec<Arc<EndpointSlice>> = self
            .slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(service.0.clone(), name.clone())))
            .filter(|s| s.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(controller))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        out
    }
}

fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn selector_of(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// Per-kind "initial list received" flags.
#[derive(Default)]
pub(crate) struct Synced {
    pub services: AtomicBool,
    pub pods: AtomicBool,
    pub nodes: AtomicBool,
    pub slices: AtomicBool,
    pub endpoints: AtomicBool,
    notify: Notify,
}

impl Synced {
    fn all(&self) -> bool {
        [
            &self.services,
            &self.pods,
            &self.nodes,
            &self.slices,
            &self.endpoints,
        ]
        .iter()
        .all(|f| f.load(Ordering::SeqCst))
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.all() {
                return;
            }
            notified.await;
        }
    }

    fn set(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// State shared by every controller task.
pub(crate) struct Shared {
    pub client: Client,
    pub opts: Options,
    world: Mutex<World>,
    pub synced: Synced,
    pub slice_queue: WorkQueue<Key>,
    pub endpoints_queue: WorkQueue<Key>,
    pub mirror_queue: WorkQueue<Key>,
    pub lb_queue: WorkQueue<Key>,
    pub slice_tracker: Tracker,
    pub mirror_tracker: Tracker,
    pub recorder: Recorder,
}

impl Shared {
    pub fn new(client: Client, opts: Options, recorder: Recorder) -> Shared {
        Shared {
            client,
            opts,
            world: Mutex::new(World::default()),
            synced: Synced::default(),
            slice_queue: WorkQueue::new(),
            endpoints_queue: WorkQueue::new(),
            mirror_queue: WorkQueue::new(),
            lb_queue: WorkQueue::new(),
            slice_tracker: Tracker::default(),
            mirror_tracker: Tracker::default(),
            recorder,
        }
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue_service_everywhere(&self, key: &Key) {
        self.slice_queue.add(key.clone());
        self.endpoints_queue.add(key.clone());
        self.mirror_queue.add(key.clone());
        self.lb_queue.add(key.clone());
    }

    fn on_service(&self, service: Arc<Service>, deleted: bool) {
        let key = key_of(service.as_ref());
        let mut w = self.world();
        if deleted {
            w.services.remove(&key);
            if let Some(names) = w.services_by_ns.get_mut(&key.0) {
                names.remove(&key.1);
            }
            for pod in w.service_pods.remove(&key).unwrap_or_default() {
                if let Some(list) = w.pod_services.get_mut(&pod) {
                    list.retain(|s| s != &key);
                }
            }
        } else {
            let old_selector = w.services.get(&key).and_then(|s| selector_of(s).cloned());
            let new_selector = selector_of(&service).cloned();
            w.services.insert(key.clone(), service);
            w.services_by_ns
                .entry(key.0.clone())
                .or_default()
                .insert(key.1.clone());
            if old_selector != new_selector || !w.service_pods.contains_key(&key) {
                self.reindex_service(&mut w, &key, new_selector.as_ref());
            }
        }
        drop(w);
        self.enqueue_service_everywhere(&key);
    }

    fn reindex_service(
        &self,
        w: &mut World,
        key: &Key,
        selector: Option<&BTreeMap<String, String>>,
    ) {
        let mut matched = HashSet::new();
        if let Some(selector) = selector {
            for name in w.pods_by_ns.get(&key.0).into_iter().flatten() {
                let pod_key = (key.0.clone(), name.clone());
                if let Some(pod) = w.pods.get(&pod_key)
                    && selector_matches(selector, pod.metadata.labels.as_ref())
                {
                    matched.insert(pod_key);
                }
            }
        }
        let old = w
            .service_pods
            .insert(key.clone(), matched.clone())
            .unwrap_or_default();
        for pod in old.difference(&matched) {
            if let Some(list) = w.pod_services.get_mut(pod) {
                list.retain(|s| s != key);
            }
        }
        for pod in matched.difference(&old) {
            w.pod_services
                .entry(pod.clone())
                .or_default()
                .push(key.clone());
        }
    }

    fn on_pod(&self, pod: Arc<Pod>, deleted: bool) {
        let key = key_of(pod.as_ref());
        let mut w = self.world();
        let before = w.pod_services.get(&key).cloned().unwrap_or_default();
        let after: Vec<Key> = if deleted {
            w.pods.remove(&key);
            if let Some(names) = w.pods_by_ns.get_mut(&key.0) {
                names.remove(&key.1);
            }
            w.pod_services.remove(&key);
            Vec::new()
        } else {
            let labels = pod.metadata.labels.clone();
            w.pods.insert(key.clone(), pod);
            w.pods_by_ns
                .entry(key.0.clone())
                .or_default()
                .insert(key.1.clone());
            let mut matched = Vec::new();
            for name in w.services_by_ns.get(&key.0).into_iter().flatten() {
                let svc_key = (key.0.clone(), name.clone());
                if let Some(svc) = w.services.get(&svc_key)
                    && let Some(selector) = selector_of(svc)
                    && selector_matches(selector, labels.as_ref())
                {
                    matched.push(svc_key);
                }
            }
            w.pod_services.insert(key.clone(), matched.clone());
            matched
        };
        for svc in &before {
            if !after.contains(svc)
                && let Some(set) = w.service_pods.get_mut(svc)
            {
                set.remove(&key);
            }
        }
        for svc in &after {
            w.service_pods
                .entry(svc.clone())
                .or_default()
                .insert(key.clone());
        }
        drop(w);
        let batch = self.opts.endpoint_updates_batch_period;
        let mut affected: Vec<&Key> = before.iter().chain(after.iter()).collect();
        affected.sort();
        affected.dedup();
        for svc in affected {
            self.slice_queue.add_after(svc.clone(), batch);
            self.endpoints_queue.add_after(svc.clone(), batch);
        }
    }

    fn on_node(&self, node: Arc<Node>, deleted: bool) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let mut w = self.world();
        let info = NodeInfo::from_node(&node);
        let changed = if deleted {
            w.nodes.contains_key(&name)
        } else {
            w.nodes.get(&name) != Some(&info)
        };
        if !changed {
            return;
        }
        let mut nodes = (*w.nodes).clone();
        if deleted {
            nodes.remove(&name);
        } else {
            nodes.insert(name, info);
        }
        w.nodes = Arc::new(nodes);
        let services: Vec<Key> = w.services.keys().cloned().collect();
        drop(w);
        if self.synced.nodes.load(Ordering::SeqCst) {
            for key in services {
                self.slice_queue.add(key);
            }
        }
    }

    fn on_slice(&self, slice: Arc<EndpointSlice>, deleted: bool) {
        let key = key_of(slice.as_ref());
        let rv = slice.metadata.resource_version.clone();
        let mut w = self.world();
        // A relist deletion carries only the name: fall back to the cached labels.
        let old = w.slices.get(&key).cloned();
        let labels_from = if slice.metadata.labels.is_some() {
            slice.as_ref()
        } else {
            old.as_deref().unwrap_or(slice.as_ref())
        };
        let service = labels_from
            .labels()
            .get(LABEL_SERVICE_NAME)
            .map(|s| (key.0.clone(), s.clone()));
        let managed_by = labels_from.labels().get(LABEL_MANAGED_BY).cloned();
        if let Some(old) = &old
            && let Some(old_service) = old.labels().get(LABEL_SERVICE_NAME)
        {
            let old_key = (key.0.clone(), old_service.clone());
            if let Some(set) = w.slices_by_service.get_mut(&old_key) {
                set.remove(&key.1);
            }
        }
        if deleted {
            w.slices.remove(&key);
        } else {
            w.slices.insert(key.clone(), slice);
            if let Some(svc) = &service {
                w.slices_by_service
                    .entry(svc.clone())
                    .or_default()
                    .insert(key.1.clone());
            }
        }
        drop(w);
        let Some(svc) = service else { return };
        let (tracker, queue) = match managed_by.as_deref() {
            Some(CONTROLLER_NAME) => (&self.slice_tracker, &self.slice_queue),
            Some(MIRRORING_CONTROLLER_NAME) => (&self.mirror_tracker, &self.mirror_queue),
            _ => return,
        };
        // Our own writes coming back need no sync; anyone else's change is repaired.
        if !tracker.observe(&svc, &key.1, if deleted { None } else { rv.as_deref() }) {
            queue.add_after(svc, OBJECT_CHANGE_DELAY);
        }
    }

    fn on_endpoints(&self, endpoints: Arc<Endpoints>, deleted: bool) {
        let key = key_of(endpoints.as_ref());
        let mut w = self.world();
        if deleted {
            w.endpoints.remove(&key);
        } else {
            w.endpoints.insert(key.clone(), endpoints);
        }
        drop(w);
        self.mirror_queue.add(key.clone());
        self.endpoints_queue.add_after(key, OBJECT_CHANGE_DELAY);
    }
}

enum InformerEvent<K> {
    Changed(K),
    Deleted(K),
    Relisted(Vec<K>),
}

fn spawn_informer<K, F>(
    api: Api<K>,
    shutdown: CancellationToken,
    mut handle: F,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: FnMut(InformerEvent<K>) + Send + 'static,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut buffer: Vec<K> = Vec::new();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                None => return,
                Some(Err(error)) => tracing::warn!(%error, "watch failed; retrying"),
                Some(Ok(watcher::Event::Init)) => buffer.clear(),
                Some(Ok(watcher::Event::InitApply(obj))) => buffer.push(obj),
                Some(Ok(watcher::Event::InitDone)) => {
                    handle(InformerEvent::Relisted(std::mem::take(&mut buffer)))
                }
                Some(Ok(watcher::Event::Apply(obj))) => handle(InformerEvent::Changed(obj)),
                Some(Ok(watcher::Event::Delete(obj))) => handle(InformerEvent::Deleted(obj)),
            }
        }
    })
}

/// Replays a relist as changes plus deletions of what disappeared.
fn relist<K: Resource + Clone>(
    shared: &Shared,
    items: Vec<K>,
    present: impl Fn(&World) -> Vec<Key>,
    mut apply: impl FnMut(&Shared, Arc<K>, bool),
    missing: impl Fn(&Key) -> K,
) {
    let listed: HashSet<Key> = items.iter().map(key_of).collect();
    let gone: Vec<Key> = present(&shared.world())
        .into_iter()
        .filter(|k| !listed.contains(k))
        .collect();
    for key in gone {
        apply(shared, Arc::new(missing(&key)), true);
    }
    for item in items {
        apply(shared, Arc::new(item), false);
    }
}

fn named<K: Resource + Default>(key: &Key) -> K {
    let mut obj = K::default();
    obj.meta_mut().namespace = Some(key.0.clone()).filter(|n| !n.is_empty());
    obj.meta_mut().name = Some(key.1.clone());
    obj
}

/// Starts the five watches; they stop on `shutdown`.
pub(crate) fn start_informers(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = shared.client.clone();
    let mut tasks = Vec::new();

    let s = shared.clone();
    tasks.push(spawn_informer(
        Api::<Service>::all(client.clone()),
        shutdown.clone(),
        move |e| match e {
            InformerEvent::Changed(o) => s.on_service(Arc::new(o), false),
            InformerEvent::Deleted(o) => s.on_service(Arc::new(o), true),
            InformerEvent::Relisted(items) => {
                relist(
                    &s,
                    items,
                    |w| w.services.keys().cloned().collect(),
                    |s, o, d| s.on_service(o, d),
                    named::<Service>,
                );
                s.synced.set(&s.synced.services);
            }
        },
    ));
    let s = shared.clone();
    tasks.push(spawn_informer(
        Api::<Pod>::all(client.clone()),
        shutdown.clone(),
        move |e| match e {
            InformerEvent::Changed(o) => s.on_pod(Arc::new(o), false),
            InformerEvent::Deleted(o) => s.on_pod(Arc::new(o), true),
            InformerEvent::Relisted(items) => {
                relist(
                    &s,
                    items,
                    |w| w.pods.keys().cloned().collect(),
                    |s, o, d| s.on_pod(o, d),
                    named::<Pod>,
                );
                s.synced.set(&s.synced.pods);
            }
        },
    ));
    let s = shared.clone();
    tasks.push(spawn_informer(
        Api::<Node>::all(client.clone()),
        shutdown.clone(),
        move |e| match e {
            InformerEvent::Changed(o) => s.on_node(Arc::new(o), false),
            InformerEvent::Deleted(o) => s.on_node(Arc::new(o), true),
            InformerEvent::Relisted(items) => {
                relist(
                    &s,
                    items,
                    |w| w.nodes.keys().map(|n| (String::new(), n.clone())).collect(),
                    |s, o, d| s.on_node(o, d),
                    named::<Node>,
                );
                s.synced.set(&s.synced.nodes);
            }
        },
    ));
    let s = shared.clone();
    tasks.push(spawn_informer(
        Api::<EndpointSlice>::all(client.clone()),
        shutdown.clone(),
        move |e| match e {
            InformerEvent::Changed(o) => s.on_slice(Arc::new(o), false),
            InformerEvent::Deleted(o) => s.on_slice(Arc::new(o), true),
            InformerEvent::Relisted(items) => {
                relist(
                    &s,
                    items,
                    |w| w.slices.keys().cloned().collect(),
                    |s, o, d| s.on_slice(o, d),
                    named::<EndpointSlice>,
                );
                s.synced.set(&s.synced.slices);
            }
        },
    ));
    let s = shared.clone();
    tasks.push(spawn_informer(
        Api::<Endpoints>::all(client),
        shutdown.clone(),
        move |e| match e {
            InformerEvent::Changed(o) => s.on_endpoints(Arc::new(o), false),
            InformerEvent::Deleted(o) => s.on_endpoints(Arc::new(o), true),
            InformerEvent::Relisted(items) => {
                relist(
                    &s,
                    items,
                    |w| w.endpoints.keys().cloned().collect(),
                    |s, o, d| s.on_endpoints(o, d),
                    named::<Endpoints>,
                );
                s.synced.set(&s.synced.endpoints);
            }
        },
    ));
    tasks
}
