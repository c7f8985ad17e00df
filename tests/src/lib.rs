//! Shared helpers for end-to-end tests that start the real `portico` binary.
//!
//! Owns: finding the binary, starting it on a free port in a temporary data dir, reading its
//! machine-readable "listening on" line, and killing it on drop.
//! Must not: talk to anything but 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Path of the `portico` binary built alongside the tests.
pub fn portico_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PORTICO_BIN") {
        return PathBuf::from(p);
    }
    // tests/…/deps/<test-binary> → target/<profile>/portico
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("portico")
}

/// A running `portico` process, killed on drop.
pub struct Portico {
    child: Child,
    pub url: String,
    pub port: u16,
    pub kubeconfig: PathBuf,
    pub data_dir: tempfile::TempDir,
    /// Every stdout line after the listening line is discarded.
    _stdout: std::thread::JoinHandle<()>,
}

impl Portico {
    /// `portico apiserver --secure-port 0 --data-dir <tmp>` plus `extra` flags.
    pub fn start(extra: &[&str]) -> Result<Portico> {
        Self::start_command("apiserver", extra)
    }

    /// Starts `portico <subcommand> --secure-port 0 --data-dir <tmp> <extra…>`.
    pub fn start_command(subcommand: &str, extra: &[&str]) -> Result<Portico> {
        let data_dir = tempfile::tempdir()?;
        Self::start_in(subcommand, data_dir, extra)
    }

    /// Starts on an existing data dir (for restart tests).
    pub fn start_in(
        subcommand: &str,
        data_dir: tempfile::TempDir,
        extra: &[&str],
    ) -> Result<Portico> {
        let bin = portico_bin();
        let mut child = Command::new(&bin)
            .arg(subcommand)
            .arg("--secure-port")
            .arg("0")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    bail!("portico did not print its listening line within 30s");
                }
            };
            if let Some((url, kubeconfig)) = parse_listening(&line) {
                let port = url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .context("port in listening line")?;
                return Ok(Portico {
                    child,
                    url,
                    port,
                    kubeconfig,
                    data_dir,
                    _stdout: reader,
                });
            }
        }
    }

    /// Process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and returns the data dir for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.data_dir, dir)
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns its exit success.
    pub fn terminate(mut self, timeout: Duration) -> Result<bool> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("portico did not exit within {timeout:?} after SIGTERM")
    }
}

/// Parses `portico apiserver listening on https://127.0.0.1:PORT kubeconfig=PATH`.
pub fn parse_listening(line: &str) -> Option<(String, PathBuf)> {
    let rest = line.strip_prefix("portico apiserver listening on ")?;
    let (url, kc) = rest.split_once(" kubeconfig=")?;
    Some((url.trim().to_string(), PathBuf::from(kc.trim())))
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Directory holding the versioned kubectl binaries (`kubectl.1.27` … `kubectl.1.33`).
pub fn kubectl_dir() -> Option<PathBuf> {
    let which = Command::new("sh")
        .arg("-c")
        .arg("readlink -f \"$(command -v kubectl)\"")
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&which.stdout).trim());
    p.parent().map(Path::to_path_buf)
}

/// A `portico up` process group, killed on drop.
pub struct Up {
    child: Child,
    /// The line `portico up ready api=… kubeconfig=… dns=… proxy-mode=…`.
    pub ready_line: String,
}

impl Up {
    /// Starts `portico up <extra…>` in `dir` and waits for its ready line. As root it drops to
    /// `nobody` with setpriv first (and hands `dir` to that user), because `portico up` must
    /// work without privileges.
    pub fn start_unprivileged(dir: &Path, extra: &[&str]) -> Result<Up> {
        use std::os::unix::process::CommandExt;
        let bin = portico_bin();
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run `cargo build -p portico` first",
            bin.display()
        );
        let mut cmd = if is_root() {
            let status = Command::new("chown")
                .args(["65534:65534", &dir.display().to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "chown {}", dir.display());
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        cmd.arg("up")
            .args(extra)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        let mut child = cmd.spawn().context("starting portico up")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut up = Up {
            child,
            ready_line: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("portico up ready ") => {
                    up.ready_line = line;
                    return Ok(up);
                }
                Ok(_) => {}
                Err(_) => bail!("portico up did not print its ready line within 60s"),
            }
        }
    }

    /// A `key=value` field of the ready line.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.ready_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// kubectl 1.33 against one server, with its own cache dir and a work dir for manifests.
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(p: &Portico) -> Kubectl {
        let dir = kubectl_dir().expect("kubectl on PATH");
        Kubectl {
            bin: dir.join("kubectl.1.33"),
            kubeconfig: p.kubeconfig.clone(),
            cache: tempfile::tempdir().expect("cache dir"),
            work: tempfile::tempdir().expect("work dir"),
        }
    }

    /// Runs kubectl: (succeeded, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .current_dir(self.work.path())
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs kubectl, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, so, se) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\nstdout: {so}\nstderr: {se}");
        so
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("kubectl json")
    }

    /// The object as JSON, or `None` once it is gone (any other failure panics).
    pub fn get(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        let (ok, so, se) = self.run(&["get", kind, name, "-o", "json"]);
        if ok {
            Some(serde_json::from_str(&so).expect("kubectl json"))
        } else {
            assert!(se.contains("NotFound"), "kubectl get {kind} {name}: {se}");
            None
        }
    }

    /// Writes a manifest into the work dir, where kubectl runs.
    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.work.path().join(name), text).expect("write manifest");
    }

    /// Writes `yaml` to `name` in the work dir and applies it; kubectl's output.
    pub fn apply(&self, name: &str, yaml: &str) -> String {
        self.write(name, yaml);
        self.ok(&["apply", "-f", name])
    }

    /// The EndpointSlices of Service `svc` in the current namespace.
    pub fn slices(&self, svc: &str) -> Vec<serde_json::Value> {
        let label = format!("kubernetes.io/service-name={svc}");
        let v = self.json(&["get", "endpointslices", "-l", &label, "-o", "json"]);
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

/// Polls `check` every 100 ms until it succeeds or `limit` passes; then panics with the last
/// state. The limit only keeps a broken build from hanging the suite.
pub fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => panic!("{what} did not happen: {state}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        let (u, k) = parse_listening(
            "portico apiserver listening on https://127.0.0.1:4431 kubeconfig=/tmp/x/kubeconfig",
        )
        .unwrap();
        assert_eq!(u, "https://127.0.0.1:4431");
        assert_eq!(k, PathBuf::from("/tmp/x/kubeconfig"));
        assert!(parse_listening("something else").is_none());
    }
}
