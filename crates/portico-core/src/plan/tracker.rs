//! Change trackers, as upstream's ServiceChangeTracker and EndpointsChangeTracker: event
//! handlers record what changed since the last sync cheaply, and the sync applies it in one
//! batch, rebuilding only the plan entries of the Services that changed.
//!
//! Folding rule: the first event for a key records `previous` (the applied state); later
//! events only overwrite `current`; when `previous == current` the entry vanishes, so a
//! change and its revert cost nothing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{NodeInfo, Plan, ServiceInfo, ServiceName, SliceInfo};

/// One pending change: the applied value and the newest one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<V> {
    pub previous: Option<V>,
    pub current: Option<V>,
}

/// Generic folding tracker of unapplied changes.
#[derive(Clone, Debug)]
pub struct ChangeTracker<K, V> {
    items: BTreeMap<K, Change<V>>,
}

impl<K, V> Default for ChangeTracker<K, V> {
    fn default() -> Self {
        ChangeTracker {
            items: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: PartialEq> ChangeTracker<K, V> {
    /// Records that `key` went from `previous` to `current`; `previous` is used only for the
    /// first event since the last drain. Returns whether anything is pending.
    pub fn update(&mut self, key: K, previous: Option<V>, current: Option<V>) -> bool {
        let entry = self.items.entry(key.clone()).or_insert(Change {
            previous,
            current: None,
        });
        entry.current = current;
        if entry.previous == entry.current {
            self.items.remove(&key);
        }
        !self.items.is_empty()
    }

    /// Whether `key` has a pending change.
    pub fn contains(&self, key: &K) -> bool {
        self.items.contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes every pending change.
    pub fn drain(&mut self) -> BTreeMap<K, Change<V>> {
        std::mem::take(&mut self.items)
    }
}

/// What one `apply` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The node changed (zone labels): every entry was rebuilt.
    pub full: bool,
    /// Services whose plan entries were rebuilt or removed.
    pub services: BTreeSet<ServiceName>,
    /// `last-change-trigger-time` values of the slices applied, for the
    /// network-programming-latency metric.
    pub trigger_times: Vec<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        !self.full && self.services.is_empty()
    }
}

type SliceKey = (String, String);

/// The proxy's model of the cluster: applied Services and slices, pending changes, and the
/// plan kept up to date incrementally.
#[derive(Clone, Debug, Default)]
pub struct PlanState {
    node: NodeInfo,
    node_changed: bool,
    services: BTreeMap<ServiceName, ServiceInfo>,
    slices: BTreeMap<SliceKey, SliceInfo>,
    slices_by_service: BTreeMap<ServiceName, BTreeSet<SliceKey>>,
    service_changes: ChangeTracker<ServiceName, ServiceInfo>,
    slice_changes: ChangeTracker<SliceKey, SliceInfo>,
    plan: Plan,
}

fn slice_key(slice: &EndpointSlice) -> SliceKey {
    (
        slice.metadata.namespace.clone().unwrap_or_default(),
        slice.metadata.name.clone().unwrap_or_default(),
    )
}

fn service_key(service: &Service) -> ServiceName {
    ServiceName::new(
        service.metadata.namespace.clone().unwrap_or_default(),
        service.metadata.name.clone().unwrap_or_default(),
    )
}

impl PlanState {
    pub fn new(node: NodeInfo) -> Self {
        PlanState {
            node,
            ..Default::default()
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// A Service was added or updated. Returns whether a sync is needed.
    pub fn on_service(&mut self, service: &Service) -> bool {
        let key = service_key(service);
        let previous = self.services.get(&key).cloned();
        self.service_changes
            .update(key, previous, ServiceInfo::from_service(service));
        self.pending()
    }

    /// A Service was deleted.
    pub fn on_service_deleted(&mut self, service: &Service) -> bool {
        let key = service_key(service);
        let previous = self.services.get(&key).cloned();
        self.service_changes.update(key, previous, None);
        self.pending()
    }

    /// An EndpointSlice was added or updated.
    pub fn on_slice(&mut self, slice: &EndpointSlice) -> bool {
        let key = slice_key(slice);
        let previous = self.slices.get(&key).cloned();
        self.slice_changes
            .update(key, previous, SliceInfo::from_slice(slice));
        self.pending()
    }

    /// An EndpointSlice was deleted.
    pub fn on_slice_deleted(&mut self, slice: &EndpointSlice) -> bool {
        let key = slice_key(slice);
        let previous = self.slices.get(&key).cloned();
        self.slice_changes.update(key, previous, None);
        self.pending()
    }

    /// This node was added or updated; only its name and labels matter.
    pub fn on_node(&mut self, node: &Node) -> bool {
        let info = NodeInfo::from_node(node);
        if info != self.node {
            self.node = info;
            self.node_changed = true;
        }
        self.pending()
    }

    /// Whether changes are waiting for `apply`.
    pub fn pending(&self) -> bool {
        self.node_changed || !self.service_changes.is_empty() || !self.slice_changes.is_empty()
    }

    /// Applies every pending change and updates the plan: only the Services touched are
    /// rebuilt, unless the node changed.
    pub fn apply(&mut self) -> Applied {
        let mut applied = Applied::default();
        for (key, change) in self.service_changes.drain() {
            match change.current {
                Some(info) => self.services.insert(key.clone(), info),
                None => self.services.remove(&key),
            };
            applied.services.insert(key);
        }
        for (key, change) in self.slice_changes.drain() {
            if let Some(old) = change.previous {
                applied.services.insert(old.service.clone());
                if let Some(set) = self.slices_by_service.get_mut(&old.service) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.slices_by_service.remove(&old.service);
                    }
                }
            }
            match change.current {
                Some(info) => {
                    applied.services.insert(info.service.clone());
                    applied.trigger_times.extend(info.trigger_time.clone());
                    self.slices_by_service
                        .entry(info.service.clone())
                        .or_default()
                        .insert(key.clone());
                    self.slices.insert(key, info);
                }
                None => {
                    self.slices.remove(&key);
                }
            }
        }
        if std::mem::take(&mut self.node_changed) {
            applied.full = true;
            let names: BTreeSet<ServiceName> = self.services.keys().cloned().collect();
            applied.services.extend(self.plan.service_names());
            self.plan = Plan::default();
            for name in names {
                self.rebuild(&name);
            }
            return applied;
        }
        for name in &applied.services {
            self.rebuild(name);
        }
        applied
    }

    fn rebuild(&mut self, name: &ServiceName) {
        match self.services.get(name) {
            Some(info) => {
                let slices = self
                    .slices_by_service
                    .get(name)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.slices.get(k));
                self.plan.set_service(info, slices, &self.node);
            }
            None => self.plan.remove_service(name),
        }
    }
}
