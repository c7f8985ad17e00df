//! The real `portico` binary as a child process on 127.0.0.1 with a fresh data directory:
//! start it, read its listening line, build an admin client from its kubeconfig, stop it.
//! Must not: bind anything but loopback port 0; leave the child running (killed on drop).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A running `portico apiserver` / `portico up`.
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    /// `https://127.0.0.1:PORT`, as the listening line says.
    #[allow(dead_code)]
    pub url: String,
    pub kubeconfig: PathBuf,
    /// When the listening line was read, relative to the spawn.
    pub listening_after: Duration,
    spawned_at: Instant,
    // Kept open so the server's later writes to stdout do not hit a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    stderr_path: PathBuf,
    _data: tempfile::TempDir,
}

impl ServerProcess {
    /// Spawns `binary command --secure-port 0 --data-dir <fresh dir under parent>` and waits
    /// for its listening line (at most 30 s).
    pub async fn start(binary: &Path, command: &str, parent: &Path) -> Result<ServerProcess> {
        let data = tempfile::Builder::new()
            .prefix("portico-bench-api-")
            .tempdir_in(parent)
            .context("server data dir")?;
        let stderr_path = data.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path)?;
        let spawned_at = Instant::now();
        let mut child = Command::new(binary)
            .arg(command)
            .arg("--secure-port=0")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--data-dir={}", data.path().join("data").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let pid = child.id().context("child pid")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(" listening on ") {
                    return Ok(Some(line));
                }
            }
            anyhow::Ok(None)
        })
        .await;
        let listening_after = spawned_at.elapsed();
        let line = match line {
            Ok(Ok(Some(line))) => line,
            other => {
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                bail!(
                    "{} {command} printed no listening line ({other:?}); stderr:\n{log}",
                    binary.display()
                );
            }
        };
        let (url, kubeconfig) = parse_listening_line(&line)?;
        Ok(ServerProcess {
            child,
            pid,
            url,
            kubeconfig,
            listening_after,
            spawned_at,
            _stdout: lines,
            stderr_path,
            _data: data,
        })
    }

    /// Time since the spawn.
    pub fn since_spawn(&self) -> Duration {
        self.spawned_at.elapsed()
    }

    /// An admin client built from the kubeconfig the server wrote.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The server's stderr so far (for error messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 10 s; returns how long the clean stop took (None: killed).
    pub async fn stop(mut self) -> Result<Option<Duration>> {
        let begun = Instant::now();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(Some(begun.elapsed()))
            }
            Err(_) => {
                eprintln!("server did not stop within 10 s of SIGTERM; killing it");
                self.child.kill().await?;
                Ok(None)
            }
        }
    }
}

/// `portico apiserver listening on https://127.0.0.1:PORT kubeconfig=PATH`.
fn parse_listening_line(line: &str) -> Result<(String, PathBuf)> {
    let rest = line
        .split_once(" listening on ")
        .map(|(_, rest)| rest)
        .context("no 'listening on'")?;
    let mut url = None;
    let mut kubeconfig = None;
    for word in rest.split_whitespace() {
        if let Some(path) = word.strip_prefix("kubeconfig=") {
            kubeconfig = Some(PathBuf::from(path));
        } else if word.starts_with("https://") {
            url = Some(word.to_string());
        }
    }
    match (url, kubeconfig) {
        (Some(url), Some(kubeconfig)) => Ok((url, kubeconfig)),
        _ => bail!("unexpected listening line: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_is_parsed() {
        let (url, kubeconfig) = parse_listening_line(
            "portico apiserver listening on https://127.0.0.1:41234 kubeconfig=/tmp/x/kubeconfig",
        )
        .expect("parse");
        assert_eq!(url, "https://127.0.0.1:41234");
        assert_eq!(kubeconfig, PathBuf::from("/tmp/x/kubeconfig"));
        assert!(parse_listening_line("portico apiserver listening on nowhere").is_err());
    }
}
