//! A throwaway single-member etcd on loopback for tests and benchmarks.
//! Must not: touch anything but its own temporary data directory and loopback ports.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the etcd binary is looked up unless `PORTICO_ETCD_BIN` says otherwise.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

/// A running `etcd` child process with its own data directory, killed (and the directory
/// removed) on drop.
pub struct EtcdProcess {
    child: Child,
    data: tempfile::TempDir,
    client_url: String,
}

impl std::fmt::Debug for EtcdProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdProcess")
            .field("client_url", &self.client_url)
            .field("data_dir", &self.data.path())
            .finish_non_exhaustive()
    }
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("PORTICO_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN))
}

/// A port that was free a moment ago: bind port 0 on loopback and let it go.
fn free_loopback_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

impl EtcdProcess {
    /// Starts etcd with its data under the system temp directory; panics with instructions
    /// when etcd is not installed or does not become healthy. Tests must fail, not skip.
    pub fn start() -> Self {
        match Self::try_start_in(&std::env::temp_dir()) {
            Ok(etcd) => etcd,
            Err(error) => panic!("{error}"),
        }
    }

    /// Starts etcd with its data directory created under `parent` (so a benchmark can put it
    /// on the same disk as the embedded store).
    pub fn try_start_in(parent: &Path) -> std::io::Result<Self> {
        let binary = etcd_binary();
        if !binary.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "etcd binary {} not found: the etcd tests need it; install it with \
                     `apt-get install etcd-server` (or set PORTICO_ETCD_BIN)",
                    binary.display()
                ),
            ));
        }
        // Another process may grab a port between our probe and etcd's bind; retry then.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::spawn_once(&binary, parent) {
                Ok(etcd) => return Ok(etcd),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("etcd did not start")))
    }

    fn spawn_once(binary: &Path, parent: &Path) -> std::io::Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("portico-etcd-")
            .tempdir_in(parent)?;
        let client_port = free_loopback_port()?;
        let mut peer_port = free_loopback_port()?;
        while peer_port == client_port {
            peer_port = free_loopback_port()?;
        }
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = data.path().join("etcd.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(binary)
            .arg("--name=portico-test")
            .arg(format!("--data-dir={}", data.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=portico-test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        let mut etcd = Self {
            child,
            data,
            client_url,
        };
        etcd.wait_healthy(client_port, &log_path)?;
        Ok(etcd)
    }

    fn wait_healthy(&mut self, port: u16, log_path: &Path) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                return Err(std::io::Error::other(format!(
                    "etcd exited with {status} before becoming healthy; last log lines (newest first):\n{tail}"
                )));
            }
            if health_ok(port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "etcd did not report healthy within 30 s",
        ))
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The endpoints to hand to `EtcdStore::connect` or `--etcd-servers`.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url.clone()]
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }
}

fn health_ok(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
