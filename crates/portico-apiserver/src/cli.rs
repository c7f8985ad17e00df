//! The `portico apiserver` command: flags with kube-apiserver's names, start-up (store, caches,
//! bootstrap namespaces, certificates, kubeconfig, HTTPS) and clean shutdown.
//!
//! Must not: start controllers or node components; `portico up` composes those around this.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use portico_store::Store;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handlers::Api;
use crate::hooks::ObjectHooks;
use crate::resources::{self, RESOURCES};
use crate::server::{self, Server};
use crate::watchcache::WatchCache;

/// Flags of `portico apiserver` (also flattened into `portico up`).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Where the database, certificates, token and kubeconfig live.
    #[arg(long, default_value = "portico-data", env = "PORTICO_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on; the kubeconfig names 127.0.0.1 when this is a wildcard.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// HTTPS port; 0 picks a free one (the kubeconfig holds the real port).
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// etcd endpoints (comma-separated URLs); empty = the embedded store in --data-dir.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub etcd_servers: Vec<String>,
    /// Key prefix inside etcd.
    #[arg(long, default_value = "/registry-portico")]
    pub etcd_prefix: String,
    /// Service cluster IP range(s): one CIDR, or an IPv4 and an IPv6 CIDR separated by a comma.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,
    /// NodePort range, `first-last`.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Accept loopback addresses in EndpointSlices (upstream refuses them). Implied when the
    /// server binds a loopback address: such a cluster lives on one machine, its endpoints
    /// (the API server's own included) are local processes.
    #[arg(long)]
    pub allow_loopback_endpoints: bool,
    /// More bearer tokens, in upstream's format: `token,user,uid[,"group1,group2"]` per line.
    /// Users in group system:masters may do anything; others get the fixed policy described
    /// in ARCHITECTURE.md (discovery only, unless they are a known node agent).
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            data_dir: PathBuf::from("portico-data"),
            bind_address: IpAddr::from([127, 0, 0, 1]),
            secure_port: 6443,
            etcd_servers: Vec::new(),
            etcd_prefix: "/registry-portico".into(),
            service_cluster_ip_range: "10.96.0.0/12".into(),
            service_node_port_range: "30000-32767".into(),
            cluster_domain: "cluster.local".into(),
            allow_loopback_endpoints: false,
            token_auth_file: None,
        }
    }
}

impl Args {
    /// The parsed `--service-cluster-ip-range`.
    pub fn cluster_ip_ranges(&self) -> Result<Vec<ipnet::IpNet>> {
        self.service_cluster_ip_range
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<ipnet::IpNet>()
                    .with_context(|| format!("--service-cluster-ip-range: invalid CIDR {s:?}"))
            })
            .collect()
    }
    /// The parsed `--service-node-port-range` (inclusive).
    pub fn node_port_range(&self) -> Result<(u16, u16)> {
        let (a, b) = self
            .service_node_port_range
            .split_once('-')
            .context("--service-node-port-range: expected first-last")?;
        let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
        anyhow::ensure!(
            a <= b,
            "--service-node-port-range: first port is above last"
        );
        Ok((a, b))
    }
}

/// A started API server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The admin kubeconfig (bearer token).
    pub kubeconfig_path: PathBuf,
    /// A kubeconfig authenticating with the admin client certificate.
    pub cert_kubeconfig_path: PathBuf,
    /// Least-privileged kubeconfigs for node agents: `kube-proxy` and `dns` (user
    /// system:kube-proxy and system:portico-dns).
    pub component_kubeconfigs: Vec<(&'static str, PathBuf)>,
    /// An authenticated admin client, for in-process components.
    pub client: kube::Client,
    /// The store behind the server.
    pub store: Arc<dyn Store>,
    /// `https://host:port` as written into the kubeconfig.
    pub url: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    serve: tokio::task::JoinHandle<()>,
}

impl Running {
    /// A client with the rights of node agent `component` (`kube-proxy` or `dns`), so
    /// in-process agents run with exactly what they would have on their own.
    pub async fn component_client(&self, component: &str) -> Result<kube::Client> {
        let (_, path) = self
            .component_kubeconfigs
            .iter()
            .find(|(name, _)| *name == component)
            .with_context(|| format!("no kubeconfig for component {component:?}"))?;
        portico_client::client(Some(path)).await
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
    /// Stops serving and background work, and waits for the listener to close.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
    /// Waits until the server stops (after `shutdown_token().cancel()`).
    pub async fn wait(self) {
        let _ = self.serve.await;
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn open_store(args: &Args) -> Result<Arc<dyn Store>> {
    if !args.etcd_servers.is_empty() {
        let s = portico_store::etcd::EtcdStore::connect(&args.etcd_servers, &args.etcd_prefix)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.etcd_servers.join(",")))?;
        return Ok(s);
    }
    let path = args.data_dir.join("portico.redb");
    let s = portico_store::embedded::EmbeddedStore::open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(s)
}

/// Starts the server on `args`' store (embedded under --data-dir, or etcd).
pub async fn start(args: Args) -> Result<Running> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = open_store(&args).await?;
    start_with_store(args, store).await
}

/// Starts the server on a given store (tests use an in-memory one).
pub async fn start_with_store(args: Args, store: Arc<dyn Store>) -> Result<Running> {
    args.cluster_ip_ranges()?;
    args.node_port_range()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    // One watch cache per resource, each fed by one store watch.
    let mut caches = HashMap::new();
    for info in RESOURCES.iter() {
        let c = WatchCache::new(info);
        tasks.push(tokio::spawn(c.clone().run(store.clone())));
        caches.insert(info.plural, c);
    }
    let mut hooks: HashMap<&'static str, Arc<dyn ObjectHooks>> = HashMap::new();
    let (first, last) = args.node_port_range()?;
    let service_config = crate::service::ServiceConfig {
        cluster_ip_ranges: args.cluster_ip_ranges()?,
        node_port_range: first..=last,
    };
    service_config.validate().map_err(|e| anyhow::anyhow!(e))?;
    let service_hooks = crate::service::ServiceHooks::new(store.clone(), service_config);
    service_hooks
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("starting the Service strategy: {e}"))?;
    hooks.insert("ipaddresses", service_hooks.ip_address_hooks());
    hooks.insert("servicecidrs", service_hooks.service_cidr_hooks());
    hooks.insert("services", service_hooks);
    let slice_rules = portico_core::validation::EndpointSliceRules {
        allow_loopback: args.allow_loopback_endpoints || args.bind_address.is_loopback(),
    };
    hooks.insert(
        "endpointslices",
        Arc::new(crate::endpointslice::EndpointSliceHooks { rules: slice_rules }),
    );
    let (ns_tx, mut ns_rx) = mpsc::unbounded_channel::<String>();
    let api = Arc::new(Api {
        store: store.clone(),
        caches: caches.clone(),
        hooks,
        service_fallback: false,
        namespace_cleanup: ns_tx,
    });
    for c in caches.values() {
        c.wait_ready().await;
    }
    {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ns) = ns_rx.recv().await {
                let api = api.clone();
                tokio::spawn(async move {
                    if let Err(e) = api.finalize_namespace(&ns).await {
                        tracing::warn!(namespace = ns, "finalizing namespace: {e}");
                    }
                });
            }
        }));
    }
    bootstrap(&api).await?;
    tasks.push(portico_store::compaction::spawn_auto_compaction(
        store.clone(),
        portico_store::compaction::CompactionPolicy::default(),
    ));

    let listener =
        tokio::net::TcpListener::bind(SocketAddr::new(args.bind_address, args.secure_port))
            .await
            .with_context(|| format!("binding {}:{}", args.bind_address, args.secure_port))?;
    let addr = listener.local_addr()?;
    let host = if args.bind_address.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        args.bind_address
    };
    let url = match host {
        IpAddr::V6(h) => format!("https://[{h}]:{}", addr.port()),
        IpAddr::V4(h) => format!("https://{h}:{}", addr.port()),
    };
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ];
    sans.push(format!("kubernetes.default.svc.{}", args.cluster_domain));
    if !args.bind_address.is_unspecified() && !sans.contains(&args.bind_address.to_string()) {
        sans.push(args.bind_address.to_string());
    }
    for net in args.cluster_ip_ranges()? {
        if let Some(ip) = net.hosts().next() {
            sans.push(ip.to_string());
        }
    }
    let pki = crate::pki::ensure(&args.data_dir, &sans)?;
    let kubeconfig_path =
        crate::pki::write_kubeconfig(&args.data_dir.join("kubeconfig"), &pki.kubeconfig(&url))?;
    let cert_kubeconfig_path = crate::pki::write_kubeconfig(
        &args.data_dir.join("kubeconfig-cert"),
        &pki.cert_kubeconfig(&url),
    )?;

    let mut tokens = vec![(pki.admin_token.clone(), crate::authz::User::admin())];
    let mut component_kubeconfigs = Vec::new();
    for ((component, _), (token, user)) in crate::pki::COMPONENT_USERS
        .iter()
        .zip(crate::pki::ensure_component_tokens(&args.data_dir)?)
    {
        let path = crate::pki::write_kubeconfig(
            &args.data_dir.join(format!("{component}.kubeconfig")),
            &pki.token_kubeconfig(&url, component, &token),
        )?;
        component_kubeconfigs.push((*component, path));
        tokens.push((token, user));
    }
    if let Some(path) = &args.token_auth_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--token-auth-file: reading {}", path.display()))?;
        let extra = crate::authz::parse_token_file(&text)
            .map_err(|e| anyhow::anyhow!("--token-auth-file {}: {e}", path.display()))?;
        tokens.extend(extra);
    }

    let srv = Arc::new(Server {
        api: api.clone(),
        metrics: Default::default(),
        tokens,
        ready: Default::default(),
        server_address: format!("{}:{}", host, addr.port()),
    });
    let app = server::router(srv.clone());
    let serve = tokio::spawn(server::serve_tls(
        listener,
        pki.server_config()?,
        app,
        shutdown.clone(),
    ));
    srv.ready.store(true, Ordering::Relaxed);

    let kc = kube::config::Kubeconfig::from_yaml(&pki.kubeconfig(&url))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    let client = kube::Client::try_from(cfg)?;
    Ok(Running {
        addr,
        kubeconfig_path,
        cert_kubeconfig_path,
        component_kubeconfigs,
        client,
        store,
        url,
        shutdown,
        tasks,
        serve,
    })
}

/// Creates the namespaces that always exist.
async fn bootstrap(api: &Api) -> Result<()> {
    let ns_info = resources::by_plural("namespaces").context("namespaces resource")?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match api
            .create(ns_info, None, obj, false, "kube-apiserver")
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => anyhow::bail!("creating namespace {ns}: {e}"),
        }
    }
    // Resume namespaces that were terminating when the server stopped.
    let page = api.store.list(&ns_info.prefix(), None, 0, None).await?;
    for kv in page.kvs {
        let obj = crate::object::decode_stored(&kv)?;
        if crate::object::meta_str(&obj, "deletionTimestamp").is_some() {
            let _ = api
                .namespace_cleanup
                .send(crate::object::name(&obj).to_string());
        }
    }
    Ok(())
}

/// Runs `portico apiserver` until SIGINT/SIGTERM.
pub async fn run(args: Args) -> Result<()> {
    let running = start(args).await?;
    announce(&running);
    let token = running.shutdown_token();
    wait_for_signal().await;
    token.cancel();
    running.wait().await;
    Ok(())
}

/// Prints the machine-readable "listening" line and a hint for humans.
pub fn announce(running: &Running) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "portico apiserver listening on {} kubeconfig={}",
        running.url,
        running.kubeconfig_path.display()
    );
    let _ = writeln!(
        out,
        "try: kubectl --kubeconfig {} get services -A",
        running.kubeconfig_path.display()
    );
    let _ = out.flush();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
