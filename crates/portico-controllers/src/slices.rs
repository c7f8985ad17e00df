//! The EndpointSlice and EndpointSlice-mirroring controllers: take a Service key from the
//! queue, read a consistent snapshot from the watch caches, ask the pure reconcilers in
//! `portico_core::endpointslice` what to change, and make exactly those writes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use portico_core::endpointslice::{
    CONTROLLER_NAME, MIRRORING_CONTROLLER_NAME, SliceChanges, mirroring,
    slices::{self, SliceInput},
};

use crate::events::reference;
use crate::tracker::Tracker;
use crate::trigger::TriggerTimes;
use crate::world::{Key, Shared};

/// How soon a Service whose cache lags its own writes is looked at again.
const STALE_RETRY: Duration = Duration::from_millis(20);

/// Outcome of one sync.
pub(crate) enum Synced {
    Done,
    /// Retry soon without counting a failure (cache catching up, missing nodes).
    Later(Duration),
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Performs the writes in `changes`, recording them in `tracker`. Creates first, then
/// updates, then deletes, as upstream.
pub(crate) async fn write_changes(
    shared: &Shared,
    tracker: &Tracker,
    service: &Key,
    changes: SliceChanges,
) -> anyhow::Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(shared.client.clone(), &service.0);
    for slice in changes.create {
        let created = api.create(&PostParams::default(), &slice).await?;
        if let (Some(name), Some(rv)) = (
            created.metadata.name.as_deref(),
            created.metadata.resource_version.as_deref(),
        ) {
            tracker.expect_written(service, name, rv);
        }
    }
    for slice in changes.update {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let updated = api.replace(&name, &PostParams::default(), &slice).await?;
        if let Some(rv) = updated.metadata.resource_version.as_deref() {
            tracker.expect_written(service, &name, rv);
        }
    }
    for slice in changes.delete {
        let name = slice.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracker.expect_deleted(service, &name),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn cache_lags(shared: &Shared, tracker: &Tracker, key: &Key) -> bool {
    let w = shared.world();
    tracker.stale(key, |name| {
        w.slices
            .get(&(key.0.clone(), name.to_string()))
            .and_then(|s| s.metadata.resource_version.clone())
    })
}

/// One EndpointSlice-controller sync of the Service `key`.
pub(crate) async fn sync_slices(
    shared: &Arc<Shared>,
    triggers: &TriggerTimes,
    key: &Key,
) -> anyhow::Result<Synced> {
    if cache_lags(shared, &shared.slice_tracker, key) {
        return Ok(Synced::Later(STALE_RETRY));
    }
    let (service, pods, nodes, existing) = {
        let w = shared.world();
        (
            w.services.get(key).cloned(),
            w.pods_of(key),
            w.nodes.clone(),
            w.slices_of(key, CONTROLLER_NAME),
        )
    };
    let Some(service) = service else {
        // Upstream leaves this to the garbage collector (owner references); portico's API
        // server may not run one, so the controller removes what it made.
        triggers.forget(key);
        let changes = SliceChanges {
            delete: existing.iter().map(|s| (**s).clone()).collect(),
            ..Default::default()
        };
        write_changes(shared, &shared.slice_tracker, key, changes).await?;
        return Ok(Synced::Done);
    };
    let pod_refs: Vec<&k8s_openapi::api::core::v1::Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let slice_refs: Vec<&EndpointSlice> = existing.iter().map(|s| s.as_ref()).collect();
    let trigger = triggers.compute(key, &service, &pod_refs);
    let changes = slices::reconcile(&SliceInput {
        service: &service,
        pods: &pod_refs,
        nodes: &nodes,
        existing: &slice_refs,
        max_endpoints_per_slice: shared.opts.max_endpoints_per_slice,
        trigger_time: trigger.as_deref(),
    });
    for note in &changes.events {
        shared.recorder.record(
            reference(service.as_ref()),
            note.type_,
            &note.reason,
            &note.message,
        );
    }
    let missing = !changes.missing_nodes.is_empty();
    if !changes.is_empty() {
        tracing::debug!(
            service = %format!("{}/{}", key.0, key.1),
            create = changes.create.len(),
            update = changes.update.len(),
            delete = changes.delete.len(),
            "endpointslice sync"
        );
    }
    if let Err(error) = write_changes(shared, &shared.slice_tracker, key, changes).await {
        shared.recorder.record(
            reference(service.as_ref()),
            "Warning",
            "FailedToUpdateEndpointSlices",
            &format!(
                "Error updating Endpoint Slices for Service {}/{}: {error}",
                key.0, key.1
            ),
        );
        return Err(error);
    }
    Ok(if missing {
        Synced::Later(Duration::from_secs(1))
    } else {
        Synced::Done
    })
}

/// One mirroring-controller sync of the Endpoints/Service `key`.
pub(crate) async fn sync_mirroring(shared: &Arc<Shared>, key: &Key) -> anyhow::Result<Synced> {
    if cache_lags(shared, &shared.mirror_tracker, key) {
        return Ok(Synced::Later(STALE_RETRY));
    }
    let (service, endpoints, existing) = {
        let w = shared.world();
        (
            w.services.get(key).cloned(),
            w.endpoints.get(key).cloned(),
            w.slices_of(key, MIRRORING_CONTROLLER_NAME),
        )
    };
    let slice_refs: Vec<&EndpointSlice> = existing.iter().map(|s| s.as_ref()).collect();
    let mut changes = mirroring::reconcile(&mirroring::MirrorInput {
        service: service.as_deref(),
        endpoints: endpoints.as_deref(),
        existing: &slice_refs,
        max_endpoints_per_subset: shared.opts.mirroring_max_endpoints_per_subset,
    });
    if endpoints.is_none() && changes.is_empty() {
        // Mirrored slices are owned by the Endpoints; without a garbage collector they go
        // when the Endpoints go.
        changes.delete = existing.iter().map(|s| (**s).clone()).collect();
    }
    if let Some(endpoints) = endpoints.as_deref() {
        for note in &changes.events {
            shared.recorder.record(
                reference(endpoints),
                note.type_,
                &note.reason,
                &note.message,
            );
        }
    }
    write_changes(shared, &shared.mirror_tracker, key, changes).await?;
    Ok(Synced::Done)
}
