//! The garbage collector, after kube-controller-manager's: deletes objects whose every owner
//! (`metadata.ownerReferences`) is gone, and finishes the Foreground (`foregroundDeletion`)
//! and Orphan (`orphan`) deletions the API server starts.
//!
//! Owns: one watch per served resource, an owner → dependents graph keyed by owner uid, a
//! work queue of uids, and the pure decisions of upstream's attemptToDelete (`decide`),
//! processDeletingDependents and orphanDependents.
//! Must not: touch the store, or delete on the graph's word alone: an owner the graph does
//! not know is looked up live (name, then uid compare) before anything is deleted. It writes
//! only when something changed and never polls.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::WorkQueue;

/// Set by `propagationPolicy=Orphan`: dependents lose their ownerReferences first.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// Set by `propagationPolicy=Foreground`: blocking dependents are deleted first.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// How many uids are worked on at once.
const WORKERS: usize = 2;

/// A resource the API server serves.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl Kind {
    /// The collector waits for this kind's first list before it works. API servers before
    /// 1.33 do not serve the networking.k8s.io kinds, which must not stall it.
    fn gates_start(&self) -> bool {
        self.group != "networking.k8s.io"
    }
}

const fn kind(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Kind {
    Kind {
        group,
        version: "v1",
        kind,
        plural,
        namespaced,
    }
}

/// Every resource portico serves; all of them can own and be owned.
pub const KINDS: &[Kind] = &[
    kind("", "Namespace", "namespaces", false),
    kind("", "Service", "services", true),
    kind("", "Pod", "pods", true),
    kind("", "Endpoints", "endpoints", true),
    kind("", "Node", "nodes", false),
    kind("", "Event", "events", true),
    kind("discovery.k8s.io", "EndpointSlice", "endpointslices", true),
    kind("networking.k8s.io", "ServiceCIDR", "servicecidrs", false),
    kind("networking.k8s.io", "IPAddress", "ipaddresses", false),
];

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// The served kind an ownerReference names (apiVersion and kind must both match).
    fn of_reference(r: &OwnerReference) -> Option<&'static Kind> {
        KINDS
            .iter()
            .find(|k| k.kind == r.kind && k.api_version() == r.api_version)
    }
}

fn has(finalizers: &[String], f: &str) -> bool {
    finalizers.iter().any(|x| x == f)
}

/// What the graph keeps of one object.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    kind: &'static Kind,
    namespace: String,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn from_meta(kind: &'static Kind, meta: &ObjectMeta) -> Option<(String, Node)> {
        let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        Some((
            uid,
            Node {
                kind,
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                owners: meta.owner_references.clone().unwrap_or_default(),
                deleting: meta.deletion_timestamp.is_some(),
                finalizers: meta.finalizers.clone().unwrap_or_default(),
            },
        ))
    }

    /// Being deleted in the foreground: waits for its blocking dependents.
    fn deleting_dependents(&self) -> bool {
        self.deleting && has(&self.finalizers, FINALIZER_FOREGROUND)
    }

    /// Being deleted with Orphan: waits for its dependents to drop their references.
    fn orphaning(&self) -> bool {
        self.deleting && has(&self.finalizers, FINALIZER_ORPHAN)
    }

    fn key(&self) -> (&'static str, String, String) {
        (self.kind.plural, self.namespace.clone(), self.name.clone())
    }
}

/// What a queued uid needs, judged from the graph alone.
#[derive(Debug, Clone, PartialEq)]
enum Work {
    Nothing,
    /// Some owner is unknown to the graph or waits for its dependents: check it live.
    Dependent(Node),
    /// A Foreground deletion in progress.
    DeleteDependents(Node),
    /// An Orphan deletion in progress.
    OrphanDependents(Node),
}

/// The owner → dependents graph.
#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// Owner uid → uids of the objects that list it in ownerReferences.
    dependents: HashMap<String, HashSet<String>>,
    /// (plural, namespace, name) → uid, to notice what a relist no longer has.
    by_key: HashMap<(&'static str, String, String), String>,
}

impl Graph {
    /// The owner an ownerReference points at, when the graph has exactly that object: same
    /// uid, kind and name, and for a namespaced owner the dependent's namespace.
    fn owner_of(&self, dependent: &Node, r: &OwnerReference) -> Option<&Node> {
        let owner = self.nodes.get(&r.uid)?;
        let same_ns = !owner.kind.namespaced || owner.namespace == dependent.namespace;
        (owner.kind.kind == r.kind
            && owner.kind.api_version() == r.api_version
            && owner.name == r.name
            && same_ns)
            .then_some(owner)
    }

    fn work_for(&self, uid: &str) -> Work {
        let Some(node) = self.nodes.get(uid) else {
            return Work::Nothing;
        };
        if node.deleting_dependents() {
            return Work::DeleteDependents(node.clone());
        }
        if node.orphaning() {
            return Work::OrphanDependents(node.clone());
        }
        if node.deleting {
            return Work::Nothing;
        }
        // A reference that can never resolve keeps the dependent (see `decide`): no lookups.
        if node
            .owners
            .iter()
            .any(|r| owner_location(node.kind, &node.namespace, r).is_none())
        {
            return Work::Nothing;
        }
        let check = node
            .owners
            .iter()
            .any(|r| self.owner_of(node, r).is_none_or(Node::deleting_dependents));
        if check {
            Work::Dependent(node.clone())
        } else {
            Work::Nothing
        }
    }

    /// Dependents (in the graph) that still reference `owner`, with their blockOwnerDeletion.
    fn dependents_of(&self, owner: &str) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = self
            .dependents
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let node = self.nodes.get(d)?;
                let r = node.owners.iter().find(|r| r.uid == owner)?;
                Some((d.clone(), r.block_owner_deletion == Some(true)))
            })
            .collect();
        out.sort();
        out
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    /// Owners that wait on their dependents and so care about `node` changing.
    fn waiting_owners(&self, node: &Node) -> Vec<String> {
        node.owners
            .iter()
            .filter(|r| {
                self.nodes
                    .get(&r.uid)
                    .is_some_and(|o| o.deleting_dependents() || o.orphaning())
            })
            .map(|r| r.uid.clone())
            .collect()
    }

    /// Records an added or changed object; returns the uids to look at.
    fn observe(&mut self, uid: String, node: Node) -> Vec<String> {
        let mut wake = Vec::new();
        if let Some(old_uid) = self.by_key.get(&node.key()).cloned()
            && old_uid != uid
        {
            wake.extend(self.forget(&old_uid));
        }
        if let Some(old) = self.nodes.get(&uid).cloned() {
            for r in &old.owners {
                if !node.owners.iter().any(|n| n.uid == r.uid) {
                    self.unlink(&r.uid, &uid);
                    wake.push(r.uid.clone());
                }
            }
        }
        for r in &node.owners {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        wake.extend(self.waiting_owners(&node));
        self.by_key.insert(node.key(), uid.clone());
        self.nodes.insert(uid.clone(), node);
        if self.work_for(&uid) != Work::Nothing {
            wake.push(uid);
        }
        wake.sort();
        wake.dedup();
        wake
    }

    /// Records a deletion; returns the uids to look at (its dependents and waiting owners).
    fn forget(&mut self, uid: &str) -> Vec<String> {
        let Some(old) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        if self.by_key.get(&old.key()).map(String::as_str) == Some(uid) {
            self.by_key.remove(&old.key());
        }
        let mut wake = self.waiting_owners(&old);
        for r in &old.owners {
            self.unlink(&r.uid, uid);
        }
        wake.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        wake.sort();
        wake.dedup();
        wake
    }

    /// Replaces everything of `kind` with a fresh list; returns the uids to look at.
    fn relist(&mut self, kind: &'static Kind, items: Vec<(String, Node)>) -> Vec<String> {
        let listed: HashSet<&String> = items.iter().map(|(uid, _)| uid).collect();
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(uid, n)| n.kind == kind && !listed.contains(uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        let mut wake = Vec::new();
        for uid in gone {
            wake.extend(self.forget(&uid));
        }
        for (uid, node) in items {
            wake.extend(self.observe(uid, node));
        }
        wake.sort();
        wake.dedup();
        wake
    }
}

/// An owner as a live lookup found it (upstream's classifyReferences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    /// Exists with the referenced uid and is not waiting for dependents.
    Solid,
    /// Not found, or found with another uid.
    Dangling,
    /// Exists and is being deleted in the foreground.
    WaitingForDependents,
    /// A kind not served here, or a namespaced owner of a cluster-scoped object: never
    /// resolvable, so the dependent is left alone.
    Unresolvable,
}

fn owner_state(found: Option<&ObjectMeta>, r: &OwnerReference) -> OwnerState {
    match found {
        None => OwnerState::Dangling,
        Some(m) if m.uid.as_deref() != Some(r.uid.as_str()) => OwnerState::Dangling,
        Some(m)
            if m.deletion_timestamp.is_some()
                && has(m.finalizers.as_deref().unwrap_or(&[]), FINALIZER_FOREGROUND) =>
        {
            OwnerState::WaitingForDependents
        }
        Some(_) => OwnerState::Solid,
    }
}

/// Where to look an owner up: its kind and namespace, or `None` when it cannot exist.
fn owner_location(
    dependent_kind: &Kind,
    dependent_ns: &str,
    r: &OwnerReference,
) -> Option<(&'static Kind, String)> {
    let kind = Kind::of_reference(r)?;
    match (dependent_kind.namespaced, kind.namespaced) {
        (false, true) => None,
        (_, true) => Some((kind, dependent_ns.to_string())),
        (_, false) => Some((kind, String::new())),
    }
}

/// What to do with a dependent (upstream's attemptToDeleteItem).
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Keep,
    /// Some owner is still there: drop only the references to these (gone or waiting) owners.
    RemoveReferences(Vec<String>),
    /// An owner waits for this dependent, which has dependents of its own: delete it in the
    /// foreground too; `unblock` first clears its blockOwnerDeletion (a waiting cycle).
    DeleteForeground {
        unblock: bool,
    },
    Delete(PropagationPolicy),
}

fn decide(
    owners: &[(String, OwnerState)],
    has_dependents: bool,
    a_dependent_waits: bool,
    finalizers: &[String],
) -> Decision {
    if owners.is_empty() || owners.iter().any(|(_, s)| *s == OwnerState::Unresolvable) {
        return Decision::Keep;
    }
    let with = |state: OwnerState| -> Vec<String> {
        owners
            .iter()
            .filter(|(_, s)| *s == state)
            .map(|(uid, _)| uid.clone())
            .collect()
    };
    let solid = with(OwnerState::Solid);
    let dangling = with(OwnerState::Dangling);
    let waiting = with(OwnerState::WaitingForDependents);
    if !solid.is_empty() {
        if dangling.is_empty() && waiting.is_empty() {
            return Decision::Keep;
        }
        return Decision::RemoveReferences([dangling, waiting].concat());
    }
    if !waiting.is_empty() && has_dependents {
        return Decision::DeleteForeground {
            unblock: a_dependent_waits,
        };
    }
    let policy = if has(finalizers, FINALIZER_ORPHAN) {
        PropagationPolicy::Orphan
    } else if has(finalizers, FINALIZER_FOREGROUND) {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    Decision::Delete(policy)
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The running collector.
struct Gc {
    client: Client,
    graph: Mutex<Graph>,
    queue: WorkQueue<String>,
    synced_kinds: AtomicUsize,
    synced: Notify,
}

impl Gc {
    fn graph(&self) -> MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, uids: Vec<String>) {
        for uid in uids {
            self.queue.add(uid);
        }
    }

    fn api(&self, kind: &Kind, ns: &str) -> Api<DynamicObject> {
        let ar = kind.api_resource();
        if kind.namespaced {
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        }
    }

    async fn get(&self, kind: &Kind, ns: &str, name: &str) -> kube::Result<Option<DynamicObject>> {
        self.api(kind, ns).get_opt(name).await
    }

    /// The live object behind a graph node, when it is still that object (same uid).
    async fn latest(&self, uid: &str, node: &Node) -> kube::Result<Option<DynamicObject>> {
        Ok(self
            .get(node.kind, &node.namespace, &node.name)
            .await?
            .filter(|o| o.metadata.uid.as_deref() == Some(uid)))
    }

    async fn wait_synced(&self) {
        loop {
            let notified = self.synced.notified();
            let needed = KINDS.iter().filter(|k| k.gates_start()).count();
            if self.synced_kinds.load(Ordering::SeqCst) >= needed {
                return;
            }
            notified.await;
        }
    }

    async fn process(&self, uid: &str) -> anyhow::Result<()> {
        let work = self.graph().work_for(uid);
        match work {
            Work::Nothing => Ok(()),
            Work::Dependent(node) => self.attempt_to_delete(uid, &node).await,
            Work::DeleteDependents(node) => self.delete_dependents(uid, &node).await,
            Work::OrphanDependents(node) => self.orphan_dependents(uid, &node).await,
        }
    }

    async fn attempt_to_delete(&self, uid: &str, node: &Node) -> anyhow::Result<()> {
        let Some(latest) = self.latest(uid, node).await? else {
            return Ok(());
        };
        if latest.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let refs = latest.metadata.owner_references.clone().unwrap_or_default();
        let mut owners = Vec::with_capacity(refs.len());
        for r in &refs {
            let state = match owner_location(node.kind, &node.namespace, r) {
                None => OwnerState::Unresolvable,
                Some((kind, ns)) => {
                    let found = self.get(kind, &ns, &r.name).await?;
                    owner_state(found.as_ref().map(|o| &o.metadata), r)
                }
            };
            owners.push((r.uid.clone(), state));
        }
        let (has_dependents, a_dependent_waits) = {
            let g = self.graph();
            let deps = g.dependents_of(uid);
            let waits = deps
                .iter()
                .any(|(d, _)| g.nodes.get(d).is_some_and(|n| n.deleting_dependents()));
            (!deps.is_empty(), waits)
        };
        let finalizers = latest.metadata.finalizers.clone().unwrap_or_default();
        match decide(&owners, has_dependents, a_dependent_waits, &finalizers) {
            Decision::Keep => Ok(()),
            Decision::RemoveReferences(gone) => {
                let keep: Vec<OwnerReference> = refs
                    .into_iter()
                    .filter(|r| !gone.contains(&r.uid))
                    .collect();
                tracing::info!(kind = node.kind.kind, namespace = %node.namespace, name = %node.name, removed = ?gone, "garbage collector: dropping references to owners that are gone or being deleted");
                self.set_owner_references(node, &latest, keep).await
            }
            Decision::DeleteForeground { unblock } => {
                if unblock {
                    let unblocked: Vec<OwnerReference> = refs
                        .into_iter()
                        .map(|mut r| {
                            if r.block_owner_deletion == Some(true) {
                                r.block_owner_deletion = Some(false);
                            }
                            r
                        })
                        .collect();
                    self.set_owner_references(node, &latest, unblocked).await?;
                }
                self.delete(uid, node, PropagationPolicy::Foreground).await
            }
            Decision::Delete(policy) => self.delete(uid, node, policy).await,
        }
    }

    /// Foreground deletion of `uid`: deletes its dependents, then lets it go once no
    /// dependent with blockOwnerDeletion is left.
    async fn delete_dependents(&self, uid: &str, node: &Node) -> anyhow::Result<()> {
        let Some(latest) = self.latest(uid, node).await? else {
            return Ok(());
        };
        let fins = latest.metadata.finalizers.clone().unwrap_or_default();
        if latest.metadata.deletion_timestamp.is_none() || !has(&fins, FINALIZER_FOREGROUND) {
            return Ok(());
        }
        let (deps, blocking) = {
            let g = self.graph();
            let deps = g.dependents_of(uid);
            let blocking = deps.iter().filter(|(_, b)| *b).count();
            let pending: Vec<String> = deps
                .into_iter()
                .filter(|(d, _)| g.nodes.get(d).is_some_and(|n| !n.deleting))
                .map(|(d, _)| d)
                .collect();
            (pending, blocking)
        };
        self.wake(deps);
        if blocking > 0 {
            return Ok(());
        }
        tracing::info!(kind = node.kind.kind, namespace = %node.namespace, name = %node.name, "garbage collector: no blocking dependents left; removing the foregroundDeletion finalizer");
        self.remove_finalizer(node, &latest, FINALIZER_FOREGROUND)
            .await
    }

    /// Orphan deletion of `uid`: removes the references to it, then lets it go.
    async fn orphan_dependents(&self, uid: &str, node: &Node) -> anyhow::Result<()> {
        let Some(latest) = self.latest(uid, node).await? else {
            return Ok(());
        };
        let fins = latest.metadata.finalizers.clone().unwrap_or_default();
        if latest.metadata.deletion_timestamp.is_none() || !has(&fins, FINALIZER_ORPHAN) {
            return Ok(());
        }
        let deps: Vec<(String, Node)> = {
            let g = self.graph();
            g.dependents_of(uid)
                .into_iter()
                .filter_map(|(d, _)| g.nodes.get(&d).map(|n| (d, n.clone())))
                .collect()
        };
        for (dep_uid, dep) in deps {
            let Some(live) = self.latest(&dep_uid, &dep).await? else {
                continue;
            };
            let refs = live.metadata.owner_references.clone().unwrap_or_default();
            if !refs.iter().any(|r| r.uid == uid) {
                continue;
            }
            let keep: Vec<OwnerReference> = refs.into_iter().filter(|r| r.uid != uid).collect();
            self.set_owner_references(&dep, &live, keep).await?;
        }
        tracing::info!(kind = node.kind.kind, namespace = %node.namespace, name = %node.name, "garbage collector: dependents orphaned; removing the orphan finalizer");
        self.remove_finalizer(node, &latest, FINALIZER_ORPHAN).await
    }

    async fn delete(
        &self,
        uid: &str,
        node: &Node,
        policy: PropagationPolicy,
    ) -> anyhow::Result<()> {
        tracing::info!(kind = node.kind.kind, namespace = %node.namespace, name = %node.name, ?policy, "garbage collector: deleting an object whose owners are gone");
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self
            .api(node.kind, &node.namespace)
            .delete(&node.name, &params)
            .await
        {
            Ok(_) => Ok(()),
            // Gone already, or replaced by a new object of the same name.
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A merge patch guarded by the resourceVersion we decided on.
    async fn patch_metadata(
        &self,
        node: &Node,
        live: &DynamicObject,
        mut metadata: Value,
    ) -> anyhow::Result<()> {
        metadata["resourceVersion"] = json!(live.metadata.resource_version);
        let patch = json!({ "metadata": metadata });
        match self
            .api(node.kind, &node.namespace)
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_owner_references(
        &self,
        node: &Node,
        live: &DynamicObject,
        refs: Vec<OwnerReference>,
    ) -> anyhow::Result<()> {
        let refs = if refs.is_empty() {
            Value::Null
        } else {
            serde_json::to_value(refs)?
        };
        self.patch_metadata(node, live, json!({ "ownerReferences": refs }))
            .await
    }

    async fn remove_finalizer(
        &self,
        node: &Node,
        live: &DynamicObject,
        finalizer: &str,
    ) -> anyhow::Result<()> {
        let rest: Vec<String> = live
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        let rest = if rest.is_empty() {
            Value::Null
        } else {
            json!(rest)
        };
        self.patch_metadata(node, live, json!({ "finalizers": rest }))
            .await
    }
}

fn spawn_watch(
    gc: Arc<Gc>,
    kind: &'static Kind,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<DynamicObject> = Api::all_with(gc.client.clone(), &kind.api_resource());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut buffer: Vec<(String, Node)> = Vec::new();
        let mut counted = false;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            let wake = match event {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(kind = kind.kind, %error, "garbage collector watch failed; retrying");
                    continue;
                }
                Some(Ok(watcher::Event::Init)) => {
                    buffer.clear();
                    continue;
                }
                Some(Ok(watcher::Event::InitApply(o))) => {
                    buffer.extend(Node::from_meta(kind, &o.metadata));
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    let wake = gc.graph().relist(kind, std::mem::take(&mut buffer));
                    if !counted && kind.gates_start() {
                        counted = true;
                        gc.synced_kinds.fetch_add(1, Ordering::SeqCst);
                        gc.synced.notify_waiters();
                    }
                    wake
                }
                Some(Ok(watcher::Event::Apply(o))) => match Node::from_meta(kind, &o.metadata) {
                    Some((uid, node)) => gc.graph().observe(uid, node),
                    None => continue,
                },
                Some(Ok(watcher::Event::Delete(o))) => match o.metadata.uid.as_deref() {
                    Some(uid) => gc.graph().forget(uid),
                    None => continue,
                },
            };
            gc.wake(wake);
        }
    })
}

/// Starts the garbage collector against `client`: one watch per served resource and a few
/// workers. The tasks stop on `shutdown`.
pub fn start(client: Client, shutdown: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let gc = Arc::new(Gc {
        client,
        graph: Mutex::new(Graph::default()),
        queue: WorkQueue::new(),
        synced_kinds: AtomicUsize::new(0),
        synced: Notify::new(),
    });
    let mut tasks: Vec<_> = KINDS
        .iter()
        .map(|k| spawn_watch(gc.clone(), k, shutdown.clone()))
        .collect();
    for _ in 0..WORKERS {
        let gc = gc.clone();
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = gc.wait_synced() => {}
            }
            loop {
                let uid = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    uid = gc.queue.next() => uid,
                };
                let result = gc.process(&uid).await;
                if let Err(error) = &result {
                    tracing::warn!(uid, %error, "garbage collection failed; will retry");
                }
                gc.queue.done(uid, result.is_ok());
            }
        }));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oref(api_version: &str, kind: &str, name: &str, uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            block_owner_deletion: block.then_some(true),
            controller: None,
        }
    }

    fn svc_ref(name: &str, uid: &str, block: bool) -> OwnerReference {
        oref("v1", "Service", name, uid, block)
    }

    fn kind_named(k: &str) -> &'static Kind {
        KINDS.iter().find(|x| x.kind == k).expect("served kind")
    }

    fn node(k: &str, ns: &str, name: &str, owners: Vec<OwnerReference>) -> Node {
        Node {
            kind: kind_named(k),
            namespace: ns.into(),
            name: name.into(),
            owners,
            deleting: false,
            finalizers: Vec::new(),
        }
    }

    fn deleting(mut n: Node, finalizer: &str) -> Node {
        n.deleting = true;
        n.finalizers = vec![finalizer.to_string()];
        n
    }

    #[test]
    fn decisions() {
        use Decision::*;
        use OwnerState::*;
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // (owners, has dependents, a dependent waits, finalizers, decision)
        type Case<'a> = (
            &'a [(&'a str, OwnerState)],
            bool,
            bool,
            &'a [&'a str],
            Decision,
        );
        let cases: &[Case] = &[
            (&[], false, false, &[], Keep),
            (&[("a", Solid)], false, false, &[], Keep),
            (
                &[("a", Dangling)],
                false,
                false,
                &[],
                Delete(PropagationPolicy::Background),
            ),
            (
                &[("a", Dangling), ("b", Solid)],
                false,
                false,
                &[],
                RemoveReferences(s(&["a"])),
            ),
            (
                &[("a", WaitingForDependents), ("b", Solid), ("c", Dangling)],
                true,
                false,
                &[],
                RemoveReferences(s(&["c", "a"])),
            ),
            (
                &[("a", WaitingForDependents)],
                false,
                false,
                &[],
                Delete(PropagationPolicy::Background),
            ),
            (
                &[("a", WaitingForDependents)],
                true,
                false,
                &[],
                DeleteForeground { unblock: false },
            ),
            (
                &[("a", WaitingForDependents), ("b", Dangling)],
                true,
                true,
                &[],
                DeleteForeground { unblock: true },
            ),
            // An owner that can never be looked up keeps the dependent, like upstream.
            (
                &[("a", Dangling), ("b", Unresolvable)],
                false,
                false,
                &[],
                Keep,
            ),
            (
                &[("a", Dangling)],
                false,
                false,
                &["orphan"],
                Delete(PropagationPolicy::Orphan),
            ),
            (
                &[("a", Dangling)],
                false,
                false,
                &["x", "foregroundDeletion"],
                Delete(PropagationPolicy::Foreground),
            ),
        ];
        for (owners, deps, waits, fins, want) in cases {
            let owners: Vec<(String, OwnerState)> =
                owners.iter().map(|(u, st)| (u.to_string(), *st)).collect();
            assert_eq!(
                decide(&owners, *deps, *waits, &s(fins)),
                *want,
                "{owners:?} deps={deps} waits={waits} {fins:?}"
            );
        }
    }

    #[test]
    fn owner_lookups() {
        let pod = kind_named("Pod");
        let node_kind = kind_named("Node");
        // (dependent kind, reference, expected kind and namespace)
        type Case<'a> = (&'a Kind, OwnerReference, Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            (pod, svc_ref("web", "u", false), Some(("Service", "team"))),
            (
                pod,
                oref("v1", "Node", "n1", "u", false),
                Some(("Node", "")),
            ),
            (
                pod,
                oref("discovery.k8s.io/v1", "EndpointSlice", "s", "u", false),
                Some(("EndpointSlice", "team")),
            ),
            // A cluster-scoped object cannot be owned by a namespaced one.
            (node_kind, svc_ref("web", "u", false), None),
            // Kinds (or versions) not served here are never resolvable.
            (pod, oref("apps/v1", "ReplicaSet", "rs", "u", false), None),
            (
                pod,
                oref("discovery.k8s.io/v1beta1", "EndpointSlice", "s", "u", false),
                None,
            ),
        ];
        for (dep, r, want) in cases {
            let got = owner_location(dep, "team", r).map(|(k, ns)| (k.kind, ns));
            assert_eq!(
                got,
                want.map(|(k, ns)| (k, ns.to_string())),
                "{} {r:?}",
                dep.kind
            );
        }

        let r = svc_ref("web", "u1", false);
        let meta = |uid: &str, deleting: bool, fins: &[&str]| ObjectMeta {
            uid: Some(uid.into()),
            deletion_timestamp: deleting.then_some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            ),
            finalizers: Some(fins.iter().map(|f| f.to_string()).collect()),
            ..ObjectMeta::default()
        };
        let cases = [
            (None, OwnerState::Dangling),
            (Some(meta("u2", false, &[])), OwnerState::Dangling),
            (Some(meta("u1", false, &[])), OwnerState::Solid),
            (Some(meta("u1", true, &["x"])), OwnerState::Solid),
            (
                Some(meta("u1", true, &["foregroundDeletion"])),
                OwnerState::WaitingForDependents,
            ),
        ];
        for (found, want) in cases {
            assert_eq!(owner_state(found.as_ref(), &r), want, "{found:?}");
        }
    }

    #[test]
    fn graph_wakes_what_changed() {
        let mut g = Graph::default();
        // A dependent whose owner the graph has not seen is checked.
        let pod = node("Pod", "team", "p", vec![svc_ref("web", "s1", true)]);
        assert_eq!(g.observe("p1".into(), pod.clone()), vec!["p1"]);
        assert!(matches!(g.work_for("p1"), Work::Dependent(_)));
        // Once the owner is there, nothing is left to do.
        let svc = node("Service", "team", "web", vec![]);
        assert!(g.observe("s1".into(), svc.clone()).is_empty());
        assert_eq!(g.work_for("p1"), Work::Nothing);
        assert!(g.observe("p1".into(), pod.clone()).is_empty());
        assert_eq!(g.dependents_of("s1"), vec![("p1".to_string(), true)]);

        // Foreground deletion of the owner: the owner and its dependents are looked at.
        let fg = deleting(svc.clone(), FINALIZER_FOREGROUND);
        assert_eq!(g.observe("s1".into(), fg), vec!["s1"]);
        assert!(matches!(g.work_for("s1"), Work::DeleteDependents(_)));
        assert!(matches!(g.work_for("p1"), Work::Dependent(_)));
        // The dependent going away wakes the waiting owner.
        assert_eq!(g.forget("p1"), vec!["s1"]);
        assert!(g.dependents_of("s1").is_empty());

        // Orphan deletion wakes the owner; dropping the reference wakes it again.
        g.observe("p1".into(), pod.clone());
        assert_eq!(
            g.observe("s1".into(), deleting(svc.clone(), FINALIZER_ORPHAN)),
            vec!["s1"]
        );
        let orphaned = node("Pod", "team", "p", vec![]);
        assert_eq!(g.observe("p1".into(), orphaned), vec!["s1"]);
        assert!(g.dependents_of("s1").is_empty());

        // An owner's deletion wakes its dependents.
        g.observe("s1".into(), svc.clone());
        g.observe("p1".into(), pod.clone());
        assert_eq!(g.forget("s1"), vec!["p1"]);
        assert!(matches!(g.work_for("p1"), Work::Dependent(_)));
        // A relist without the dependent forgets it.
        g.observe("s1".into(), svc.clone());
        assert!(g.relist(kind_named("Pod"), vec![]).is_empty());
        assert!(!g.nodes.contains_key("p1"));
        // A relist without the owner wakes the dependent.
        g.observe("p1".into(), pod.clone());
        assert_eq!(g.relist(kind_named("Service"), vec![]), vec!["p1"]);
    }

    #[test]
    fn owners_must_share_the_namespace() {
        let mut g = Graph::default();
        g.observe("s1".into(), node("Service", "team", "web", vec![]));
        g.observe("n1".into(), node("Node", "", "n1", vec![]));
        let cases = [
            // Same namespace: solid from the graph.
            (
                node("Pod", "team", "a", vec![svc_ref("web", "s1", false)]),
                false,
            ),
            // Another namespace: the uid is not that owner; check live.
            (
                node("Pod", "other", "b", vec![svc_ref("web", "s1", false)]),
                true,
            ),
            // Cluster-scoped owners serve every namespace.
            (
                node(
                    "Pod",
                    "other",
                    "c",
                    vec![oref("v1", "Node", "n1", "n1", false)],
                ),
                false,
            ),
            // Name or kind mismatch: not that owner.
            (
                node("Pod", "team", "d", vec![svc_ref("api", "s1", false)]),
                true,
            ),
            // References that can never resolve: left alone without a lookup.
            (
                node(
                    "Pod",
                    "team",
                    "f",
                    vec![
                        oref("apps/v1", "ReplicaSet", "rs", "r1", true),
                        svc_ref("gone", "s9", false),
                    ],
                ),
                false,
            ),
            (
                node("Node", "", "g", vec![svc_ref("web", "s9", false)]),
                false,
            ),
            (
                node(
                    "Pod",
                    "team",
                    "e",
                    vec![oref("v1", "Pod", "web", "s1", false)],
                ),
                true,
            ),
        ];
        for (n, check) in cases {
            let name = n.name.clone();
            g.observe(name.clone(), n);
            assert_eq!(
                matches!(g.work_for(&name), Work::Dependent(_)),
                check,
                "{name}"
            );
        }
    }

    mod live {
        use std::time::{Duration, Instant};

        use k8s_openapi::api::core::v1::{Pod, Service};
        use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
        use portico_apiserver::testing::TestServer;
        use serde_json::json;
        use tokio_util::sync::CancellationToken;

        async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
        where
            F: FnMut() -> Fut,
            Fut: std::future::Future<Output = Result<T, String>>,
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match check().await {
                    Ok(v) => return v,
                    Err(state) if Instant::now() > deadline => {
                        panic!("{what} did not happen: {state}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }

        async fn service(api: &Api<Service>, name: &str) -> String {
            let s: Service = serde_json::from_value(
                json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}),
            )
            .unwrap();
            let s = api.create(&PostParams::default(), &s).await.unwrap();
            s.metadata.uid.unwrap()
        }

        async fn pod(api: &Api<Pod>, name: &str, owners: serde_json::Value) {
            let p: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "ownerReferences": owners},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            }))
            .unwrap();
            api.create(&PostParams::default(), &p).await.unwrap();
        }

        fn owner(name: &str, uid: &str) -> serde_json::Value {
            json!({"apiVersion": "v1", "kind": "Service", "name": name, "uid": uid, "blockOwnerDeletion": true})
        }

        async fn gone(api: &Api<Pod>, name: &str) {
            eventually(&format!("pod {name} deleted"), || async {
                match api.get_opt(name).await.unwrap() {
                    None => Ok(()),
                    Some(p) => Err(format!("{:?}", p.metadata)),
                }
            })
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn collects_against_the_api_server() {
            let ts = TestServer::start().await.unwrap();
            let shutdown = CancellationToken::new();
            let tasks = super::super::start(ts.client.clone(), &shutdown);
            let svcs: Api<Service> = Api::namespaced(ts.client.clone(), "default");
            let pods: Api<Pod> = Api::namespaced(ts.client.clone(), "default");

            // Owners gone from the start: one absent, one replaced (same name, new uid).
            pod(&pods, "dangling", json!([owner("nothere", "0000")])).await;
            service(&svcs, "replaced").await;
            pod(&pods, "stale-uid", json!([owner("replaced", "1111")])).await;
            // Never resolvable owners are left alone.
            pod(
                &pods,
                "unknown-kind",
                json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "2222"}]),
            )
            .await;
            gone(&pods, "dangling").await;
            gone(&pods, "stale-uid").await;

            // Background: the owner goes now, dependents after it.
            let uid = service(&svcs, "bg").await;
            pod(&pods, "bg-pod", json!([owner("bg", &uid)])).await;
            svcs.delete("bg", &DeleteParams::background())
                .await
                .unwrap();
            gone(&pods, "bg-pod").await;

            // Foreground: the owner stays with its finalizer until the blocking pod is gone.
            let uid = service(&svcs, "fg").await;
            pod(&pods, "fg-pod", json!([owner("fg", &uid)])).await;
            let _ = svcs
                .delete("fg", &DeleteParams::foreground())
                .await
                .unwrap();
            gone(&pods, "fg-pod").await;
            eventually("service fg deleted", || async {
                match svcs.get_opt("fg").await.unwrap() {
                    None => Ok(()),
                    Some(s) => Err(format!("{:?}", s.metadata)),
                }
            })
            .await;

            // Foreground through two levels: the middle pod is deleted in the foreground too,
            // so the Service is answered marked and goes only after both pods.
            let uid = service(&svcs, "chain").await;
            pod(&pods, "chain-a", json!([owner("chain", &uid)])).await;
            let a = pods.get("chain-a").await.unwrap().metadata.uid.unwrap();
            pod(
                &pods,
                "chain-b",
                json!([{"apiVersion": "v1", "kind": "Pod", "name": "chain-a", "uid": a, "blockOwnerDeletion": true}]),
            )
            .await;
            let answered = svcs
                .delete("chain", &DeleteParams::foreground())
                .await
                .unwrap()
                .left()
                .expect("kept while dependents exist");
            assert!(answered.metadata.deletion_timestamp.is_some());
            assert_eq!(
                answered.metadata.finalizers,
                Some(vec!["foregroundDeletion".to_string()])
            );
            gone(&pods, "chain-b").await;
            gone(&pods, "chain-a").await;
            eventually("service chain deleted", || async {
                match svcs.get_opt("chain").await.unwrap() {
                    None => Ok(()),
                    Some(s) => Err(format!("{:?}", s.metadata)),
                }
            })
            .await;

            // Orphan: the dependent stays without the reference.
            let uid = service(&svcs, "keep").await;
            pod(&pods, "orphan-pod", json!([owner("keep", &uid)])).await;
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Orphan),
                ..DeleteParams::default()
            };
            let _ = svcs.delete("keep", &params).await.unwrap();
            eventually("service keep deleted", || async {
                match svcs.get_opt("keep").await.unwrap() {
                    None => Ok(()),
                    Some(s) => Err(format!("{:?}", s.metadata)),
                }
            })
            .await;
            let p = pods.get("orphan-pod").await.unwrap();
            assert_eq!(p.metadata.owner_references, None);
            assert!(pods.get_opt("unknown-kind").await.unwrap().is_some());

            shutdown.cancel();
            for t in tasks {
                let _ = t.await;
            }
        }
    }
}
