//! The `portico` binary: one command per component, and `up` to run them together.
//!
//! Owns: argument parsing, logging set-up and wiring components to each other.
//! Must not: hold component logic; each component lives in its own crate.

use clap::{Parser, Subcommand};

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
    /// Run the Kubernetes API server for Service networking.
    Apiserver(portico_apiserver::cli::Args),
    /// Run every component on this machine (for now: the API server).
    Up(UpArgs),
}

/// Flags of `portico up`: the API server's, plus the other components' as they arrive.
#[derive(clap::Args, Debug)]
struct UpArgs {
    #[command(flatten)]
    apiserver: portico_apiserver::cli::Args,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Apiserver(args) => portico_apiserver::cli::run(args).await,
            Command::Up(up) => portico_apiserver::cli::run(up.apiserver).await,
        }
    })
}
