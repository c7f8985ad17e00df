//! The Endpoints controller (legacy, still required for conformance): one Endpoints object
//! per Service with a selector, computed by `portico_core::endpointslice::endpoints`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use portico_core::endpointslice::endpoints::{self as legacy, EndpointsInput, EndpointsWrite};

use crate::events::reference;
use crate::slices::Synced;
use crate::trigger::TriggerTimes;
use crate::world::{Key, Shared};

pub(crate) async fn sync_endpoints(
    shared: &Arc<Shared>,
    triggers: &TriggerTimes,
    key: &Key,
) -> anyhow::Result<Synced> {
    let (service, pods, existing) = {
        let w = shared.world();
        (
            w.services.get(key).cloned(),
            w.pods_of(key),
            w.endpoints.get(key).cloned(),
        )
    };
    let api: Api<Endpoints> = Api::namespaced(shared.client.clone(), &key.0);
    let Some(service) = service else {
        triggers.forget(key);
        // The Service is gone: its Endpoints go too, as upstream's controller does.
        if existing.is_some() {
            match api.delete(&key.1, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Synced::Done);
    };
    if service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none_or(|s| s.is_empty())
    {
        return Ok(Synced::Done);
    }
    let pod_refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let trigger = triggers.compute(key, &service, &pod_refs);
    let write = legacy::reconcile(&EndpointsInput {
        service: &service,
        pods: &pod_refs,
        existing: existing.as_deref(),
        trigger_time: trigger.as_deref(),
    });
    let result = match write {
        None => return Ok(Synced::Done),
        Some(EndpointsWrite::Create(e)) => api.create(&PostParams::default(), &e).await.map(|_| ()),
        Some(EndpointsWrite::Update(e)) => api
            .replace(&key.1, &PostParams::default(), &e)
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(Synced::Done),
        // Someone else created it first, or our copy is stale: the watch will bring the new
        // version and the key is retried.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(Synced::Later(std::time::Duration::from_millis(100)))
        }
        Err(e) => {
            shared.recorder.record(
                reference(service.as_ref()),
                "Warning",
                "FailedToUpdateEndpoint",
                &format!("Failed to update endpoint {}/{}: {e}", key.0, key.1),
            );
            Err(e.into())
        }
    }
}
