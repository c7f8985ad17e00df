//! The proxy runtime: watches Services, EndpointSlices and this node through the API, folds
//! the events into the change trackers, and on each bounded-frequency run applies them,
//! hands the plan to the backend, and updates health servers and metrics.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use portico_core::plan::tracker::PlanState;
use portico_core::plan::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, NodeInfo};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::{Changed, NoopBackend, ProxyBackend};
use crate::health::{ProxyHealth, ServiceHealthServers, healthz_router};
use crate::metrics::{Metrics, metrics_router};
use crate::runner::{self, RunnerConfig, RunnerHandle, Trigger};
use crate::userspace::{UserspaceBackend, UserspaceConfig, nodeport_ips};

/// Which data plane programs the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// Tokio listeners; no privileges needed.
    #[default]
    Userspace,
    /// The kernel data plane (root, Linux).
    Nftables,
    /// No data plane: the control plane only.
    None,
}

/// Everything `start` needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// This node's name (locality and topology).
    pub node_name: String,
    pub mode: ProxyMode,
    /// `--cluster-cidr`, for the nftables backend's masquerade rules.
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs: the nftables backend drops traffic to unallocated addresses in them.
    pub service_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses` (CIDRs). `None`: the mode's default (userspace: 127.0.0.1/32;
    /// nftables: the node's addresses).
    pub nodeport_addresses: Option<Vec<IpNet>>,
    /// `--healthz-bind-address`; `None` disables the server. Port 0 picks one.
    pub healthz_bind_address: Option<SocketAddr>,
    /// `--metrics-bind-address`; `None` disables the server.
    pub metrics_bind_address: Option<SocketAddr>,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// Userspace settings (its `nodeport_addresses` is replaced by the field above when set).
    pub userspace: UserspaceConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_name: "localhost".into(),
            mode: ProxyMode::Userspace,
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            nodeport_addresses: None,
            healthz_bind_address: None,
            metrics_bind_address: None,
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            userspace: UserspaceConfig::default(),
        }
    }
}

/// Status published after every sync.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Successful syncs so far.
    pub syncs: u64,
    /// Service ports in the plan as of the last successful sync.
    pub service_ports: usize,
}

/// A running proxy.
pub struct Handle {
    /// Where `/healthz` and `/livez` are served, if enabled.
    pub healthz_addr: Option<SocketAddr>,
    /// Where `/metrics` is served, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    status: watch::Receiver<Status>,
    task: JoinHandle<()>,
}

impl Handle {
    /// The latest status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until a successful sync satisfies `f` (for example "has N Services").
    pub async fn wait_for(&self, mut f: impl FnMut(&Status) -> bool) -> Status {
        let mut rx = self.status.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                if f(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    }

    /// Waits for the first successful sync.
    pub async fn synced(&self) -> Status {
        self.wait_for(|s| s.syncs > 0).await
    }

    /// Waits until the proxy has stopped (after the shutdown token is cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

enum SourceEvent {
    Service(Box<Service>),
    ServiceDeleted(Box<Service>),
    Slice(Box<EndpointSlice>),
    SliceDeleted(Box<EndpointSlice>),
    Node(Box<Node>),
}

#[derive(Default)]
struct Inbox {
    events: Mutex<Vec<SourceEvent>>,
    services_synced: AtomicBool,
    slices_synced: AtomicBool,
}

impl Inbox {
    fn push(&self, e: SourceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    fn take(&self) -> Vec<SourceEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn ready(&self) -> bool {
        self.services_synced.load(Ordering::Acquire) && self.slices_synced.load(Ordering::Acquire)
    }
}

impl Options {
    /// The userspace settings with `nodeport_addresses` applied.
    pub fn userspace_config(&self) -> UserspaceConfig {
        let mut config = self.userspace.clone();
        if let Some(addresses) = &self.nodeport_addresses {
            config.nodeport_addresses = addresses.clone();
        }
        config
    }
}

/// Creates the backend for a mode.
pub fn make_backend(opts: &Options) -> anyhow::Result<Box<dyn ProxyBackend>> {
    Ok(match opts.mode {
        ProxyMode::Userspace => Box::new(UserspaceBackend::new(opts.userspace_config())),
        ProxyMode::None => Box::new(NoopBackend),
        ProxyMode::Nftables => crate::nft::backend(opts)?,
    })
}

async fn serve_http(
    addr: SocketAddr,
    router: axum::Router,
    shutdown: CancellationToken,
    what: &str,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("failed to start proxy {what} on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(bound)
}

/// Starts the proxy against the API server behind `client` with the backend `opts.mode`
/// selects. Returns once the watchers and servers are running; the first sync follows as
/// soon as Services and EndpointSlices have been listed.
pub async fn start(
    client: Client,
    opts: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<Handle> {
    let backend = make_backend(&opts)?;
    start_with_backend(client, opts, backend, shutdown).await
}

/// As [`start`], with a backend the caller built.
pub async fn start_with_backend(
    client: Client,
    opts: Options,
    mut backend: Box<dyn ProxyBackend>,
    shutdown: CancellationToken,
) -> anyhow::Result<Handle> {
    let health = ProxyHealth::new(opts.sync_period * 2);
    let metrics = Metrics::new();
    let healthz_addr = match opts.healthz_bind_address {
        Some(addr) => Some(
            serve_http(
                addr,
                healthz_router(health.clone()),
                shutdown.clone(),
                "healthz",
            )
            .await?,
        ),
        None => None,
    };
    let metrics_addr = match opts.metrics_bind_address {
        Some(addr) => Some(
            serve_http(
                addr,
                metrics_router(metrics.clone()),
                shutdown.clone(),
                "metrics",
            )
            .await?,
        ),
        None => None,
    };

    let inbox = Arc::new(Inbox::default());
    let runner_handle = RunnerHandle::new();
    spawn_watchers(
        &client,
        &opts.node_name,
        inbox.clone(),
        runner_handle.clone(),
        health.clone(),
        shutdown.clone(),
    );

    let (status_tx, status_rx) = watch::channel(Status::default());
    let mut state = PlanState::new(NodeInfo::new(opts.node_name.clone()));
    let mut health_servers = ServiceHealthServers::new(
        nodeport_ips(&opts.userspace_config().nodeport_addresses),
        health.clone(),
        shutdown.clone(),
    );
    let mut pending = Changed::full();
    let mut syncs: u64 = 0;
    let config = RunnerConfig {
        min_interval: opts.min_sync_period,
        max_interval: opts.sync_period,
        retry_interval: opts.min_sync_period.max(Duration::from_millis(100)),
    };
    let backend_name = backend.name();
    let sync_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        runner::run(config, runner_handle, sync_shutdown, |trigger| {
            if !inbox.ready() {
                return true;
            }
            for event in inbox.take() {
                match event {
                    SourceEvent::Service(s) => state.on_service(&s),
                    SourceEvent::ServiceDeleted(s) => state.on_service_deleted(&s),
                    SourceEvent::Slice(s) => state.on_slice(&s),
                    SourceEvent::SliceDeleted(s) => state.on_slice_deleted(&s),
                    SourceEvent::Node(n) => state.on_node(&n),
                };
            }
            let applied = state.apply();
            pending.merge(Changed { full: applied.full || trigger == Trigger::Periodic, services: applied.services });
            let started = Instant::now();
            let result = backend.sync(state.plan(), &pending);
            metrics.sync_duration.observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    tracing::debug!(backend = backend_name, full = pending.full, services = pending.services.len(), elapsed = ?started.elapsed(), "synced");
                    pending = Changed::default();
                    health.updated();
                    health_servers.sync(state.plan());
                    let now = jiff::Timestamp::now();
                    for t in &applied.trigger_times {
                        if let Ok(t) = t.parse::<jiff::Timestamp>() {
                            let secs = now.duration_since(t).as_secs_f64();
                            metrics.network_programming.observe(secs.max(0.0));
                        }
                    }
                    metrics.last_sync.set(now.as_millisecond() as f64 / 1000.0);
                    syncs += 1;
                    status_tx.send_replace(Status { syncs, service_ports: state.plan().services.len() });
                    true
                }
                Err(e) => {
                    tracing::error!(backend = backend_name, error = %e, "sync failed; will retry");
                    metrics.sync_failures.inc();
                    false
                }
            }
        })
        .await;
        if let Err(e) = backend.cleanup() {
            tracing::warn!(error = %e, "backend cleanup failed");
        }
    });
    Ok(Handle {
        healthz_addr,
        metrics_addr,
        status: status_rx,
        task,
    })
}

fn spawn_watchers(
    client: &Client,
    node_name: &str,
    inbox: Arc<Inbox>,
    runner: RunnerHandle,
    health: Arc<ProxyHealth>,
    shutdown: CancellationToken,
) {
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let svc_cfg = watcher::Config::default().labels(&format!("!{LABEL_SERVICE_PROXY_NAME}"));
    let slice_cfg = watcher::Config::default().labels(&format!("!{LABEL_HEADLESS}"));
    let node_cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));

    let notify = {
        let (inbox, runner, health) = (inbox.clone(), runner.clone(), health.clone());
        move || {
            health.queued_update();
            if inbox.ready() {
                runner.request();
            }
        }
    };

    tokio::spawn(watch_kind(
        services,
        svc_cfg,
        shutdown.clone(),
        {
            let (inbox, notify) = (inbox.clone(), notify.clone());
            move |e| {
                inbox.push(match e {
                    Change::Apply(s) => SourceEvent::Service(Box::new(s)),
                    Change::Delete(s) => SourceEvent::ServiceDeleted(Box::new(s)),
                });
                notify();
            }
        },
        {
            let (inbox, runner) = (inbox.clone(), runner.clone());
            move || {
                inbox.services_synced.store(true, Ordering::Release);
                if inbox.ready() {
                    runner.request();
                }
            }
        },
    ));
    tokio::spawn(watch_kind(
        slices,
        slice_cfg,
        shutdown.clone(),
        {
            let (inbox, notify) = (inbox.clone(), notify.clone());
            move |e| {
                inbox.push(match e {
                    Change::Apply(s) => SourceEvent::Slice(Box::new(s)),
                    Change::Delete(s) => SourceEvent::SliceDeleted(Box::new(s)),
                });
                notify();
            }
        },
        {
            let (inbox, runner) = (inbox.clone(), runner.clone());
            move || {
                inbox.slices_synced.store(true, Ordering::Release);
                if inbox.ready() {
                    runner.request();
                }
            }
        },
    ));
    let node_name = node_name.to_string();
    tokio::spawn(watch_kind(
        nodes,
        node_cfg,
        shutdown,
        move |e| {
            let node = match e {
                Change::Apply(n) => {
                    health.sync_node(Some(&n));
                    n
                }
                Change::Delete(_) => {
                    // A deleted node keeps its name; only the labels go.
                    let mut n = Node::default();
                    n.metadata.name = Some(node_name.clone());
                    health.sync_node(None);
                    n
                }
            };
            inbox.push(SourceEvent::Node(Box::new(node)));
            notify();
        },
        || {},
    ));
}

enum Change<K> {
    Apply(K),
    Delete(K),
}

/// Runs one watcher, turning relists into the deletions they imply.
async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    shutdown: CancellationToken,
    mut on_change: impl FnMut(Change<K>) + Send + 'static,
    mut on_synced: impl FnMut() + Send + 'static,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let mut known: HashMap<(String, String), K> = HashMap::new();
    let mut listed: HashSet<(String, String)> = HashSet::new();
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut warned = false;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = stream.next() => n,
        };
        let Some(event) = next else { return };
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        match event {
            Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                let k = key(&o);
                listed.insert(k.clone());
                known.insert(k, o.clone());
                on_change(Change::Apply(o));
            }
            Ok(Event::Delete(o)) => {
                known.remove(&key(&o));
                on_change(Change::Delete(o));
            }
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitDone) => {
                let gone: Vec<(String, String)> = known
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    if let Some(o) = known.remove(&k) {
                        on_change(Change::Delete(o));
                    }
                }
                on_synced();
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(kind = %K::kind(&K::DynamicType::default()), error = %e, "watch failed; retrying");
                    warned = true;
                } else {
                    tracing::debug!(error = %e, "watch failed; retrying");
                }
            }
        }
    }
}
