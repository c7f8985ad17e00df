//! The whole path through the API: the real `portico` binary runs `apiserver` inside node 0's
//! namespace and `proxy --proxy-mode nftables` inside every node's namespace; kubectl (run
//! inside a node namespace) writes a selectorless Service and its EndpointSlices; pods on every
//! node then send real requests to the cluster IP.
//!
//! Needs the binary built first (`cargo build -p portico`); it is looked up next to the test
//! executable (`target/<profile>/portico`) or taken from `$PORTICO_BIN`. Nothing leaves the
//! sandbox's namespaces: the API server listens on node 0's underlay address, which only the
//! sandbox can reach.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_testnet::{Netns, Sandbox, http_get};

/// The `portico` binary: `$PORTICO_BIN`, else `target/<profile>/portico` beside `deps/`.
fn portico_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PORTICO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("portico")
}

/// kubectl 1.33 when the versioned binaries are installed beside `kubectl`, else `kubectl`.
fn kubectl_bin() -> PathBuf {
    let resolved = Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v kubectl)\""])
        .output()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default();
    let versioned = resolved
        .parent()
        .map(|d| d.join("kubectl.1.33"))
        .filter(|p| p.exists());
    versioned.unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let p = std::env::temp_dir().join(format!("portico-api-dp-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process started inside a namespace, killed and reaped on drop; its log is printed when
/// the test is failing.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin args…` inside `ns` (`ip netns exec` execs the binary, so the child's pid is
    /// the program's own). stderr (and stdout unless piped) go to `log`.
    fn start(ns: &Netns, name: &str, bin: &Path, args: &[&str], log: PathBuf, pipe: bool) -> Proc {
        let file = std::fs::File::create(&log).expect("create log");
        let stdout = if pipe {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone().expect("clone log"))
        };
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- log of {} (last lines) ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Reads the API server's "listening" line; returns the kubeconfig path.
fn wait_listening(api: &mut Proc) -> PathBuf {
    let stdout = api.child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // The thread keeps draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("portico apiserver listening on ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let rest = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("apiserver did not print its listening line");
    let (_, kubeconfig) = rest
        .split_once(" kubeconfig=")
        .expect("listening line names the kubeconfig");
    PathBuf::from(kubeconfig)
}

/// kubectl run inside a namespace that reaches the API server.
struct Kubectl<'a> {
    ns: &'a Netns,
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
    dir: PathBuf,
}

impl Kubectl<'_> {
    /// Runs kubectl with `args`; panics with its stderr on failure.
    fn ok(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `manifest` to a file and runs `kubectl <verb> -f file`.
    fn with_file(&self, verb: &str, name: &str, manifest: &serde_json::Value) -> String {
        let path = self.dir.join(format!("{name}.json"));
        std::fs::write(&path, manifest.to_string()).expect("write manifest");
        let path = path.to_string_lossy().into_owned();
        self.ok(&[verb, "-f", &path])
    }
}

/// One EndpointSlice of Service `web` with at most one endpoint (each backend listens on its
/// own port, so each gets its own slice).
fn slice(name: &str, ip: IpAddr, port: u16, node: &str, present: bool) -> serde_json::Value {
    let endpoints = if present {
        serde_json::json!([{
            "addresses": [ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node,
        }])
    } else {
        serde_json::json!([])
    };
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web",
                                "endpointslice.kubernetes.io/managed-by": "portico-test"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })
}

/// Sends requests from `client` to `vip` until every name in `want` has answered and nothing
/// else has, within `within`.
fn wait_backends(client: &Netns, vip: SocketAddr, want: &[&str], within: Duration) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + within;
    loop {
        // 30 requests: with two backends picked at random, missing one has odds of 2^-29.
        let seen = client
            .run(move || {
                let mut seen = BTreeSet::new();
                for _ in 0..30 {
                    match http_get(vip, "/hostname", Duration::from_millis(500)) {
                        Ok(body) => {
                            seen.insert(body.trim().to_string());
                        }
                        Err(e) => {
                            seen.insert(format!("error: {}", e.kind()));
                        }
                    }
                }
                seen
            })
            .expect("run in client namespace");
        if seen == want {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "from {}: wanted exactly {want:?} from {vip}, last round saw {seen:?}",
                client.name()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until a connection from `client` to `vip` fails with `refused` (true: an immediate
/// TCP reset) or with any error (false); returns how long the failing attempt took.
fn wait_unreachable(client: &Netns, vip: SocketAddr, refused: bool, within: Duration) -> Duration {
    let deadline = Instant::now() + within;
    loop {
        let (result, took) = client
            .run(move || {
                let start = Instant::now();
                let r = std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(1000));
                (r.map(|_| ()), start.elapsed())
            })
            .expect("run in client namespace");
        let done = match &result {
            Ok(()) => false,
            Err(e) if refused => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Err(_) => true,
        };
        if done {
            return took;
        }
        if Instant::now() >= deadline {
            panic!(
                "from {}: {vip} still {result:?} (wanted {})",
                client.name(),
                if refused { "refused" } else { "unreachable" }
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn service_changes_through_the_api_reach_traffic_on_every_node() {
    let bin = portico_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p portico` first (or set PORTICO_BIN)",
        bin.display()
    );
    // Declared first, dropped last: every process below is killed before the namespaces go.
    let mut sb = Sandbox::build(2).expect("sandbox");
    let backend_a = sb.add_pod(0, "web-a").expect("pod web-a");
    let backend_b = sb.add_pod(1, "web-b").expect("pod web-b");
    let client0 = sb.add_pod(0, "client-0").expect("pod client-0");
    let client1 = sb.add_pod(1, "client-1").expect("pod client-1");
    let tmp = TempDir::new();

    let node0_ip = sb.nodes[0].ip.to_string();
    let data_dir = tmp.0.join("data");
    let data_dir_s = data_dir.to_string_lossy().into_owned();
    let mut api = Proc::start(
        &sb.nodes[0].ns,
        "apiserver",
        &bin,
        &[
            "apiserver",
            "--secure-port",
            "0",
            "--bind-address",
            &node0_ip,
            "--data-dir",
            &data_dir_s,
            "--service-cluster-ip-range",
            "10.96.0.0/16",
        ],
        tmp.0.join("apiserver.log"),
        true,
    );
    let kubeconfig = wait_listening(&mut api);
    let kubeconfig_s = kubeconfig.to_string_lossy().into_owned();

    let kubectl = Kubectl {
        ns: &sb.nodes[1].ns,
        bin: kubectl_bin(),
        kubeconfig: kubeconfig.clone(),
        cache: tmp.0.join("kubectl-cache"),
        dir: tmp.0.clone(),
    };
    for node in &sb.nodes {
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
            "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        });
        kubectl.with_file("create", &node.name, &manifest);
    }

    let mut proxies = Vec::new();
    for node in &sb.nodes {
        proxies.push(Proc::start(
            &node.ns,
            &format!("proxy on {}", node.name),
            &bin,
            &[
                "proxy",
                "--proxy-mode",
                "nftables",
                "--kubeconfig",
                &kubeconfig_s,
                "--hostname-override",
                &node.name,
                "--cluster-cidr",
                "10.244.0.0/16",
                "--healthz-bind-address",
                "",
                "--metrics-bind-address",
                "",
            ],
            tmp.0.join(format!("proxy-{}.log", node.name)),
            false,
        ));
    }

    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    });
    kubectl.with_file("create", "service", &service);
    let cluster_ip: IpAddr = kubectl
        .ok(&[
            "get",
            "service",
            "web",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .parse()
        .expect("cluster IP allocated");
    assert!(
        matches!(cluster_ip, IpAddr::V4(v4) if v4.octets()[..2] == [10, 96]),
        "cluster IP {cluster_ip} outside --service-cluster-ip-range"
    );
    let vip = SocketAddr::new(cluster_ip, 80);

    let (a, b) = (&sb.pods[backend_a], &sb.pods[backend_b]);
    let port = |p: &portico_testnet::Pod| p.server.as_ref().map(|s| s.port).expect("server");
    let slice_a = slice("web-a", a.ip, port(a), "node-0", true);
    let slice_b = slice("web-b", b.ip, port(b), "node-1", true);
    let slice_b_empty = slice("web-b", b.ip, port(b), "node-1", false);
    let slice_a_empty = slice("web-a", a.ip, port(a), "node-0", false);
    kubectl.with_file("create", "slice-a", &slice_a);
    kubectl.with_file("create", "slice-b", &slice_b);

    let clients = [client0, client1];
    // Both backends, on both nodes, from a pod on each node.
    for &c in &clients {
        wait_backends(
            &sb.pods[c].ns,
            vip,
            &["web-a", "web-b"],
            Duration::from_secs(20),
        );
    }

    // One backend removed through the API: every node stops sending to it within seconds.
    let changed = Instant::now();
    kubectl.with_file("replace", "slice-b-empty", &slice_b_empty);
    for &c in &clients {
        wait_backends(&sb.pods[c].ns, vip, &["web-a"], Duration::from_secs(5));
    }
    eprintln!("removal reached every node in {:?}", changed.elapsed());

    // No endpoints left: the cluster IP rejects at once (TCP reset) on every node.
    kubectl.with_file("replace", "slice-a-empty", &slice_a_empty);
    for &c in &clients {
        let took = wait_unreachable(&sb.pods[c].ns, vip, true, Duration::from_secs(5));
        assert!(took < Duration::from_millis(500), "reject took {took:?}");
    }

    // Backends back, then the Service deleted: its address no longer leads anywhere.
    kubectl.with_file("replace", "slice-a", &slice_a);
    kubectl.with_file("replace", "slice-b", &slice_b);
    for &c in &clients {
        wait_backends(
            &sb.pods[c].ns,
            vip,
            &["web-a", "web-b"],
            Duration::from_secs(5),
        );
    }
    kubectl.ok(&["delete", "service", "web", "-n", "default"]);
    for &c in &clients {
        wait_unreachable(&sb.pods[c].ns, vip, false, Duration::from_secs(5));
    }

    // Explicit order: processes first, then the namespaces they run in.
    drop(proxies);
    drop(api);
    drop(sb);
}
