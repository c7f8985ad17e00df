//! portico's controllers: EndpointSlices, legacy Endpoints, EndpointSlice mirroring,
//! LoadBalancer addresses, the `kubernetes` Service, the garbage collector (ownerReferences),
//! and an Event recorder.
//!
//! Owns: the runtime around the pure reconcilers of `portico_core::endpointslice`: watches,
//! indexes, work queues, batching, writes, and the bookkeeping that keeps restarts free of
//! duplicates and churn.
//! Must not: touch the store. Controllers talk only to the Kubernetes API through
//! `kube::Client`, so `portico controllers --kubeconfig K` works against any API server.

pub mod cli;
mod endpoints;
pub mod events;
pub mod gc;
pub mod kubernetes_service;
pub mod lb;
mod queue;
mod slices;
mod tracker;
mod trigger;
mod world;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use kubernetes_service::{
    KubernetesServiceOptions, reconcile_kubernetes_service, reconcile_kubernetes_service_with,
};

/// The component name on Events and in logs.
pub const COMPONENT: &str = "portico-controllers";

/// Controller settings (see [`cli::Args`] for the flags).
#[derive(Clone, Debug)]
pub struct Options {
    pub max_endpoints_per_slice: usize,
    pub endpoint_updates_batch_period: Duration,
    pub load_balancer_pools: lb::pool::Pools,
    pub concurrent_service_syncs: usize,
    pub concurrent_service_endpoint_syncs: usize,
    pub concurrent_endpoint_syncs: usize,
    pub mirroring_concurrent_service_endpoint_syncs: usize,
    pub mirroring_max_endpoints_per_subset: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_endpoints_per_slice: portico_core::endpointslice::DEFAULT_MAX_ENDPOINTS_PER_SLICE,
            endpoint_updates_batch_period: Duration::ZERO,
            load_balancer_pools: lb::pool::Pools::default(),
            concurrent_service_syncs: 1,
            concurrent_service_endpoint_syncs: 5,
            concurrent_endpoint_syncs: 5,
            mirroring_concurrent_service_endpoint_syncs: 5,
            mirroring_max_endpoints_per_subset: portico_core::endpointslice::MAX_ENDPOINTS_CAPACITY,
        }
    }
}

fn spawn_workers<F, Fut>(
    count: usize,
    queue: fn(&world::Shared) -> &queue::WorkQueue<world::Key>,
    shared: &Arc<world::Shared>,
    shutdown: &CancellationToken,
    sync: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(Arc<world::Shared>, world::Key) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<slices::Synced>> + Send + 'static,
{
    (0..count.max(1))
        .map(|_| {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let sync = sync.clone();
            tokio::spawn(async move {
                // A shutdown before the first sync must not leave workers waiting for it.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = shared.synced.wait() => {}
                }
                loop {
                    let key = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        key = queue(&shared).next() => key,
                    };
                    let result = sync(shared.clone(), key.clone()).await;
                    let q = queue(&shared);
                    match result {
                        Ok(slices::Synced::Done) => q.done(key, true),
                        Ok(slices::Synced::Later(after)) => {
                            q.done(key.clone(), true);
                            q.add_after(key, after);
                        }
                        Err(error) => {
                            tracing::warn!(service = %format!("{}/{}", key.0, key.1), %error, "sync failed; will retry");
                            q.done(key, false);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Starts every controller against `client`. The returned task finishes after `shutdown` is
/// cancelled and all controller tasks have stopped.
pub async fn start(
    client: kube::Client,
    opts: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (recorder, recorder_task) =
        events::Recorder::start(client.clone(), COMPONENT, shutdown.clone());
    let shared = Arc::new(world::Shared::new(client, opts.clone(), recorder));
    let mut tasks = world::start_informers(&shared, &shutdown);
    tasks.push(recorder_task);
    tasks.extend(gc::start(shared.client.clone(), &shutdown));

    let slice_triggers = Arc::new(trigger::TriggerTimes::default());
    tasks.extend(spawn_workers(
        opts.concurrent_service_endpoint_syncs,
        |s| &s.slice_queue,
        &shared,
        &shutdown,
        move |s, k| {
            let t = slice_triggers.clone();
            async move { slices::sync_slices(&s, &t, &k).await }
        },
    ));
    let endpoint_triggers = Arc::new(trigger::TriggerTimes::default());
    tasks.extend(spawn_workers(
        opts.concurrent_endpoint_syncs,
        |s| &s.endpoints_queue,
        &shared,
        &shutdown,
        move |s, k| {
            let t = endpoint_triggers.clone();
            async move { endpoints::sync_endpoints(&s, &t, &k).await }
        },
    ));
    tasks.extend(spawn_workers(
        opts.mirroring_concurrent_service_endpoint_syncs,
        |s| &s.mirror_queue,
        &shared,
        &shutdown,
        |s, k| async move { slices::sync_mirroring(&s, &k).await },
    ));
    let lb_state = Arc::new(Mutex::new(lb::LbState::default()));
    tasks.extend(spawn_workers(
        opts.concurrent_service_syncs,
        |s| &s.lb_queue,
        &shared,
        &shutdown,
        move |s, k| {
            let st = lb_state.clone();
            async move { lb::sync_lb(&s, &st, &k).await }
        },
    ));

    Ok(tokio::spawn(async move {
        shutdown.cancelled().await;
        for task in tasks {
            let _ = task.await;
        }
    }))
}
