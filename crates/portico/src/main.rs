//! The `portico` binary: one command per component, and `up` to run them together.
//!
//! Owns: argument parsing, logging set-up and wiring components to each other.
//! Must not: hold component logic; each component lives in its own crate.

mod up;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "portico",
    version,
    about = "Kubernetes Service networking in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every component on this machine: API server, controllers, DNS and a proxy.
    Up(up::UpArgs),
    /// Run the Kubernetes API server for Service networking (and keep the `kubernetes` Service).
    Apiserver(portico_apiserver::cli::Args),
    /// Run the EndpointSlice, Endpoints, mirroring and LoadBalancer controllers against an API server.
    Controllers(portico_controllers::cli::Args),
    /// Run the Service proxy for this node (kube-proxy's flags).
    Proxy(portico_proxy::cli::Args),
    /// Run cluster DNS.
    Dns(portico_dns::cli::Args),
    /// Print the Service environment variables a kubelet would give a pod in a namespace.
    Env(WithKubeconfig<portico_proxy::envcmd::EnvArgs>),
    /// Run a command with the Service environment variables of a namespace set.
    Run(WithKubeconfig<portico_proxy::envcmd::RunArgs>),
}

/// A client command's flags plus `--kubeconfig`.
#[derive(clap::Args, Debug)]
struct WithKubeconfig<T: clap::Args> {
    /// Path to a kubeconfig; without it, $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    args: T,
}

/// mimalloc: the API server's request path is allocation-heavy (JSON trees per request), and
/// glibc malloc's arena locking and heap growth cost about a fifth of its CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(dispatch(cli.command)));
    if let Err(error) = result {
        // One line with the whole cause chain: what failed and why.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => up::run(args).await,
        Command::Apiserver(args) => apiserver(args).await,
        Command::Controllers(args) => portico_controllers::cli::run(args).await,
        Command::Proxy(args) => portico_proxy::cli::run(args).await,
        Command::Dns(args) => portico_dns::cli::run(args).await,
        Command::Env(cmd) => {
            portico_proxy::envcmd::env(client(cmd.kubeconfig.as_deref()).await?, &cmd.args).await
        }
        Command::Run(cmd) => {
            portico_proxy::envcmd::run(client(cmd.kubeconfig.as_deref()).await?, &cmd.args).await
        }
    }
}

/// A client from `--kubeconfig`/`$KUBECONFIG`, or one clear line saying how to point at a server.
async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    if kubeconfig.is_none()
        && !std::path::Path::new(&format!(
            "{}/.kube/config",
            std::env::var("HOME").unwrap_or_default()
        ))
        .exists()
    {
        anyhow::bail!(
            "no kubeconfig: pass --kubeconfig PATH or set KUBECONFIG (portico up writes portico-data/kubeconfig)"
        );
    }
    portico_proxy::cli::client(kubeconfig).await
}

/// `portico apiserver`: the API server, plus the `kubernetes` Service that points at it
/// (upstream's API server keeps that Service itself).
async fn apiserver(args: portico_apiserver::cli::Args) -> anyhow::Result<()> {
    let running = portico_apiserver::cli::start(args).await?;
    portico_apiserver::cli::announce(&running);
    let shutdown = CancellationToken::new();
    let kubernetes_service = tokio::spawn(portico_controllers::reconcile_kubernetes_service(
        running.client.clone(),
        advertise_ip(running.addr.ip()),
        running.addr.port(),
        shutdown.clone(),
    ));
    portico_apiserver::cli::wait_for_signal().await;
    shutdown.cancel();
    let _ = kubernetes_service.await;
    running.shutdown().await;
    Ok(())
}

/// The address other components reach the API server on: the bind address, or loopback
/// when it listens on every address.
fn advertise_ip(bind: IpAddr) -> IpAddr {
    if bind.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        bind
    }
}
