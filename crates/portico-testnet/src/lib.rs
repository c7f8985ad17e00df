//! Network sandboxes for tests. Everything lives in network namespaces this crate creates
//! (named `pt<pid>-…`, so parallel test processes never collide), joined only by veth pairs and
//! bridges it creates, with no route to the machine's real network; everything is removed on
//! `Drop`, which also runs when a test panics.
//!
//! It must not: configure anything in the caller's own namespace, send a packet outside the
//! sandbox, or leave a namespace behind.
//!
//! Topology of [`Sandbox::build`]:
//! ```text
//!   client (192.168.50.100) ─┐
//!   node-0 eth0 (…50.10) ────┼── bridge "under" in the gateway namespace (…50.1, no routes
//!   node-1 eth0 (…50.11) ────┘   onward: every node's default route leads nowhere)
//!   node-i: bridge cni0 10.244.i.1/24, hairpin ports, pods 10.244.i.2…, routes to the
//!           other nodes' pod CIDRs via their eth0 addresses, br_netfilter on.
//!   IPv6 alongside: underlay fd00:50::/64 (gateway ::1, client ::100, node-i ::1i),
//!   cni0 fd00:244:i::1/64, pods fd00:244:i::2….
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("command `{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("namespace {0}: {1}")]
    Netns(String, String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &[&str]) -> Result<Output, Error> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output()?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: cmd.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Deletes namespaces this crate created in processes that no longer run (`pt<pid>-…` whose
/// pid is gone: a test killed before its drop guards ran). Namespaces of live processes,
/// and every other namespace, are left alone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("pt")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// One network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `pt<pid>-<n>-<tag>` with loopback up.
    pub fn new(tag: &str) -> Result<Netns, Error> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("pt{}-{n}-{tag}", std::process::id());
        name.truncate(60);
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection: addresses (link-local ones too) work at once.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path to pass to `setns` users such as `NftBackend::new`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a command inside the namespace; fails on a non-zero exit.
    pub fn exec(&self, cmd: &[&str]) -> Result<String, Error> {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(cmd);
        let out = run(&full)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command inside the namespace and returns its output whatever the exit status.
    pub fn exec_status(&self, cmd: &[&str]) -> Result<Output, Error> {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(cmd);
        Ok(Command::new("ip").args(&full[1..]).output()?)
    }

    /// `ip -n NAME …`.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut full = vec!["ip", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        let out = run(&full)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sets a sysctl inside the namespace (written to `/proc/sys` from a thread that entered
    /// it: networking sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.run(move || std::fs::write(&path, value).map_err(|e| format!("{path}: {e}")))?
            .map_err(|e| Error::Netns(self.name.clone(), e))
    }

    /// Runs `f` on a new OS thread that has entered this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let handle = self.spawn(f)?;
        handle
            .join()
            .map_err(|_| Error::Netns(self.name.clone(), "thread panicked".into()))
    }

    /// Starts `f` on a new OS thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>, Error> {
        let file = std::fs::File::open(self.path())
            .map_err(|e| Error::Netns(self.name.clone(), e.to_string()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let entered = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
            let _ = tx.send(entered.map_err(|e| e.to_string()));
            f()
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(Error::Netns(self.name.clone(), format!("setns: {e}"))),
            Err(_) => Err(Error::Netns(self.name.clone(), "thread died".into())),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair between two namespaces.
fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<(), Error> {
    // Create in `a` with a temporary peer name, then move the peer into `b`.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!("ptv{n}");
    a.ip(&["link", "add", a_name, "type", "veth", "peer", "name", &tmp])?;
    a.ip(&["link", "set", &tmp, "netns", b.name()])?;
    b.ip(&["link", "set", &tmp, "name", b_name])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// A tiny test backend: HTTP `GET /hostname` and `GET /clientip` on a TCP port, and a UDP echo
/// on the same port number that answers `<hostname> <payload>`. Stops on drop.
pub struct TestServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("port", &self.port)
            .finish()
    }
}

impl TestServer {
    /// Starts the server inside `ns` on port 0 (read back) and returns once it listens.
    pub fn start(ns: &Netns, hostname: &str) -> Result<TestServer, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = ns.run(|| -> std::io::Result<(TcpListener, UdpSocket)> {
            // `[::]` sockets take IPv4 too (as v4-mapped addresses): one server, both families.
            let tcp = TcpListener::bind("[::]:0")?;
            let port = tcp.local_addr()?.port();
            let udp = UdpSocket::bind(("::", port))?;
            Ok((tcp, udp))
        })??;
        let port = tcp.local_addr()?.port();
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut threads = Vec::new();
        let (s1, h1) = (stop.clone(), hostname.to_string());
        threads.push(std::thread::spawn(move || serve_tcp(tcp, &h1, &s1)));
        let (s2, h2) = (stop.clone(), hostname.to_string());
        threads.push(std::thread::spawn(move || serve_udp(udp, &h2, &s2)));
        Ok(TestServer {
            port,
            stop,
            threads,
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: TcpListener, hostname: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let path = text.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/hostname" => ("200 OK", hostname.to_string()),
                    "/clientip" => ("200 OK", peer.ip().to_canonical().to_string()),
                    _ => ("404 Not Found", "not found".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_udp(sock: UdpSocket, hostname: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let mut reply = format!("{hostname} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, peer);
        }
    }
}

/// HTTP GET of `path` at `addr` from the calling thread's namespace; returns the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad response: {resp:?}"))),
    }
}

/// One UDP round trip from a socket bound to `local` (port 0 = any).
pub fn udp_roundtrip(sock: &UdpSocket, addr: SocketAddr, payload: &str) -> std::io::Result<String> {
    sock.send_to(payload.as_bytes(), addr)?;
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A pod: its namespace, address and optional test server.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub node: usize,
    pub ip: IpAddr,
    /// The pod's IPv6 address (`fd00:244:<node>::<n>`).
    pub ip6: IpAddr,
    pub server: Option<TestServer>,
    pub ns: Netns,
}

/// A node: its namespace, underlay address and pod CIDR.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    /// The node's IPv6 underlay address (`fd00:50::<10 + i>`).
    pub ip6: IpAddr,
    pub pod_cidr: String,
    pub ns: Netns,
    next_pod: u8,
}

/// The whole sandbox. Fields drop in declaration order: pods first, then nodes and the rest.
#[derive(Debug)]
pub struct Sandbox {
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub client: Netns,
    pub client_ip: IpAddr,
    pub client_ip6: IpAddr,
    pub gateway: Netns,
}

/// Underlay addresses.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
pub const GATEWAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x100);

impl Sandbox {
    /// Builds `nodes` nodes (at most 50), a dead-end gateway and an external client.
    pub fn build(nodes: usize) -> Result<Sandbox, Error> {
        remove_stale();
        let gateway = Netns::new("gw")?;
        gateway.ip(&["link", "add", "under", "type", "bridge"])?;
        gateway.ip(&["addr", "add", &format!("{GATEWAY_IP}/24"), "dev", "under"])?;
        gateway.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_IP6}/64"),
            "dev",
            "under",
            "nodad",
        ])?;
        gateway.sysctl("net.ipv6.conf.all.forwarding", "0")?;
        gateway.ip(&["link", "set", "under", "up"])?;
        // The gateway forwards nothing: a default route through it leads nowhere.
        gateway.sysctl("net.ipv4.ip_forward", "0")?;

        let client = Netns::new("client")?;
        veth(&gateway, "client", &client, "eth0")?;
        gateway.ip(&["link", "set", "client", "master", "under"])?;
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"])?;
        client.ip(&["route", "add", "default", "via", &GATEWAY_IP.to_string()])?;
        client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        client.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_IP6.to_string(),
        ])?;

        let mut sandbox = Sandbox {
            pods: Vec::new(),
            nodes: Vec::new(),
            client,
            client_ip: IpAddr::V4(CLIENT_IP),
            client_ip6: IpAddr::V6(CLIENT_IP6),
            gateway,
        };
        for i in 0..nodes.min(50) {
            let ns = Netns::new(&format!("node{i}"))?;
            // Client traffic to a Service range routed via a node leaves by the interface it
            // came in: no ICMP redirects, which would also eat the ICMP rate-limit token that
            // a reject needs.
            ns.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
            ns.sysctl("net.ipv4.conf.default.send_redirects", "0")?;
            let ip = Ipv4Addr::new(192, 168, 50, 10 + i as u8);
            let port = format!("node{i}");
            veth(&sandbox.gateway, &port, &ns, "eth0")?;
            sandbox
                .gateway
                .ip(&["link", "set", &port, "master", "under"])?;
            let ip6 = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10 + i as u16);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
            ns.ip(&["route", "add", "default", "via", &GATEWAY_IP.to_string()])?;
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &GATEWAY_IP6.to_string(),
            ])?;
            ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
            ns.ip(&["addr", "add", &format!("10.244.{i}.1/24"), "dev", "cni0"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("fd00:244:{i}::1/64"),
                "dev",
                "cni0",
                "nodad",
            ])?;
            ns.ip(&["link", "set", "cni0", "up"])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            ns.sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
            ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "1")?;
            sandbox.nodes.push(Node {
                name: format!("node-{i}"),
                ip: IpAddr::V4(ip),
                ip6: IpAddr::V6(ip6),
                pod_cidr: format!("10.244.{i}.0/24"),
                ns,
                next_pod: 2,
            });
        }
        for i in 0..sandbox.nodes.len() {
            for j in 0..sandbox.nodes.len() {
                if i != j {
                    let via = sandbox.nodes[j].ip.to_string();
                    let cidr = sandbox.nodes[j].pod_cidr.clone();
                    sandbox.nodes[i]
                        .ns
                        .ip(&["route", "add", &cidr, "via", &via])?;
                    let via6 = sandbox.nodes[j].ip6.to_string();
                    let cidr6 = format!("fd00:244:{j}::/64");
                    sandbox.nodes[i]
                        .ns
                        .ip(&["-6", "route", "add", &cidr6, "via", &via6])?;
                }
            }
        }
        Ok(sandbox)
    }

    /// Adds a pod on node `node` running a [`TestServer`]; returns its index in `pods`.
    pub fn add_pod(&mut self, node: usize, name: &str) -> Result<usize, Error> {
        let n = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| Error::Netns(name.into(), "no such node".into()))?;
        let k = n.next_pod;
        n.next_pod += 1;
        let ip = Ipv4Addr::new(10, 244, node as u8, k);
        let ip6 = Ipv6Addr::new(0xfd00, 0x244, node as u16, 0, 0, 0, 0, u16::from(k));
        let ns = Netns::new(name)?;
        let host_side = format!("veth{k}");
        veth(&n.ns, &host_side, &ns, "eth0")?;
        n.ns.ip(&["link", "set", &host_side, "master", "cni0"])?;
        // As CNI bridge plugins do: hairpin, so a pod can reach itself through its Service.
        n.ns.exec(&["bridge", "link", "set", "dev", &host_side, "hairpin", "on"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{node}.1"),
        ])?;
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd00:244:{node}::1"),
        ])?;
        let server = TestServer::start(&ns, name)?;
        self.pods.push(Pod {
            name: name.to_string(),
            node,
            ip: IpAddr::V4(ip),
            ip6: IpAddr::V6(ip6),
            server: Some(server),
            ns,
        });
        Ok(self.pods.len() - 1)
    }

    /// Removes a pod (its namespace and server).
    pub fn remove_pod(&mut self, index: usize) -> Pod {
        self.pods.remove(index)
    }

    /// Adds a route in the client towards `cidr` via node `node` (for external/LB IPs).
    pub fn route_client_via(&self, cidr: &str, node: usize) -> Result<(), Error> {
        // Either family: the next hop is the node's address of the same family.
        let (family, via) = if cidr.contains(':') {
            ("-6", self.nodes[node].ip6.to_string())
        } else {
            ("-4", self.nodes[node].ip.to_string())
        };
        self.client
            .ip(&[family, "route", "replace", cidr, "via", &via])
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn pods_talk_across_nodes_and_everything_is_removed() {
        if !is_root() {
            eprintln!("skipped: needs root for network namespaces");
            return;
        }
        let names;
        {
            let mut sb = Sandbox::build(2).unwrap();
            let a = sb.add_pod(0, "a").unwrap();
            let b = sb.add_pod(1, "b").unwrap();
            let target = SocketAddr::new(sb.pods[b].ip, sb.pods[b].server.as_ref().unwrap().port);
            let body = sb.pods[a]
                .ns
                .run(move || http_get(target, "/hostname", Duration::from_secs(2)))
                .unwrap()
                .unwrap();
            assert_eq!(body, "b");
            let seen = sb.pods[a]
                .ns
                .run(move || http_get(target, "/clientip", Duration::from_secs(2)))
                .unwrap()
                .unwrap();
            assert_eq!(seen, "10.244.0.2");
            let udp_target = target;
            let echo = sb.pods[a]
                .ns
                .run(move || {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    udp_roundtrip(&s, udp_target, "hi")
                })
                .unwrap()
                .unwrap();
            assert_eq!(echo, "b hi");
            // IPv6 between pods on two nodes.
            let target6 = SocketAddr::new(sb.pods[b].ip6, target.port());
            let body6 = sb.pods[a]
                .ns
                .run(move || http_get(target6, "/clientip", Duration::from_secs(2)))
                .unwrap()
                .unwrap();
            assert_eq!(body6, "fd00:244::2");
            // The client reaches a node, but nothing beyond the dead-end gateway.
            let node_ip = SocketAddr::new(sb.nodes[0].ip, 9);
            let r = sb
                .client
                .run(move || TcpStream::connect_timeout(&node_ip, Duration::from_millis(500)))
                .unwrap();
            assert!(r.is_err());
            names = vec![
                sb.gateway.name().to_string(),
                sb.client.name().to_string(),
                sb.nodes[0].ns.name().to_string(),
            ];
        }
        let list = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        for n in names {
            assert!(!list.contains(&n), "{n} left behind");
        }
    }
}
