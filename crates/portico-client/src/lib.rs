//! The API client every standalone component (`portico controllers`, `proxy`, `dns`) builds
//! from its `--kubeconfig` flag, so they all read kubeconfigs and report errors the same way.
//!
//! Owns: turning a kubeconfig path (or kube-rs's usual inference when there is none) into a
//! `kube::Client`. Must not: hold component logic or retry; a component decides what to do
//! with an error.

use std::path::Path;

use anyhow::Context;

/// Builds a client from `--kubeconfig PATH`, or from in-cluster config / `$KUBECONFIG` /
/// `~/.kube/config` when no path is given.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "finding a kubeconfig (pass --kubeconfig, set KUBECONFIG, or run inside a cluster)",
        )?,
    };
    kube::Client::try_from(config).context("building the API client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_kubeconfig_names_the_path() {
        let Err(err) = client(Some(Path::new("/nonexistent/portico/kubeconfig"))).await else {
            panic!("a missing kubeconfig must be an error");
        };
        assert!(
            format!("{err:#}").contains("/nonexistent/portico/kubeconfig"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn malformed_kubeconfig_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "clusters: [ this is not: valid").expect("write");
        assert!(client(Some(&path)).await.is_err());
    }
}
