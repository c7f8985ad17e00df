//! Upstream's trigger-time tracker: the `last-change-trigger-time` of a write is the earliest
//! change (a pod's Ready transition, or the Service's creation) not yet reflected in a
//! previous write for that Service.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Pod, Service};
use portico_core::endpointslice::pod::ready_transition_time;

use crate::world::Key;

#[derive(Default)]
struct State {
    pods: HashMap<String, jiff::Timestamp>,
    service: Option<jiff::Timestamp>,
}

#[derive(Default)]
pub(crate) struct TriggerTimes {
    inner: Mutex<HashMap<Key, State>>,
}

impl TriggerTimes {
    /// The trigger time for this sync, formatted as RFC 3339; updates the remembered state.
    pub fn compute(&self, key: &Key, service: &Service, pods: &[&Pod]) -> Option<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let state = inner.entry(key.clone()).or_default();
        let mut earliest: Option<jiff::Timestamp> = None;
        let mut note = |t: jiff::Timestamp| earliest = Some(earliest.map_or(t, |e| e.min(t)));
        let mut pods_now = HashMap::with_capacity(pods.len());
        for pod in pods {
            let Some(time) = ready_transition_time(pod).map(|t| t.0) else {
                continue;
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            if state.pods.get(&name) != Some(&time) {
                note(time);
            }
            pods_now.insert(name, time);
        }
        let created = service.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(created) = created
            && state.service != Some(created)
        {
            note(created);
        }
        state.pods = pods_now;
        state.service = created;
        earliest.map(|t| t.to_string())
    }

    pub fn forget(&self, key: &Key) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}
