//! In-process test server for every engineer's tests: the real router over HTTPS on
//! 127.0.0.1:0, on a fresh store in a temporary directory, with an authenticated client.
//!
//! Must not: differ from the production start-up path except for the temporary data dir.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::{self, Args, Running};

/// A running API server that is stopped and deleted when dropped.
pub struct TestServer {
    /// Authenticated admin client.
    pub client: kube::Client,
    pub addr: SocketAddr,
    pub kubeconfig_path: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    running: Option<Running>,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on the embedded store in a new temporary directory.
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestServer::start`], after letting the caller adjust the flags.
    pub async fn start_with(adjust: impl FnOnce(&mut Args)) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let mut args = Args {
            data_dir: dir.path().to_path_buf(),
            secure_port: 0,
            // Test backends are local processes on loopback, as under `portico up`.
            allow_loopback_endpoints: true,
            ..Args::default()
        };
        adjust(&mut args);
        let running = cli::start(args).await?;
        Ok(TestServer {
            client: running.client.clone(),
            addr: running.addr,
            kubeconfig_path: running.kubeconfig_path.clone(),
            url: running.url.clone(),
            running: Some(running),
            dir,
        })
    }

    /// The data directory (certificates, token, database).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The admin bearer token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin-token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The CA certificate (PEM) that signs the serving certificate.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pki/ca.crt")).unwrap_or_default()
    }

    /// The store behind the server (for compaction and crash tests).
    pub fn store(&self) -> Option<std::sync::Arc<dyn portico_store::Store>> {
        self.running.as_ref().map(|r| r.store.clone())
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown_token().cancel();
        }
    }
}
