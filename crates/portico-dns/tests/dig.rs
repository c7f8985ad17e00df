//! End-to-end tests: the real server on 127.0.0.1 (UDP and TCP), queried with `dig`, with the
//! index fed directly and a fake upstream resolver on 127.0.0.1 for forwarding.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use portico_dns::{Autopath, Options};
use tokio_util::sync::CancellationToken;

const DIG: &str = "/usr/bin/dig";

/// A tiny upstream: answers A questions with 192.0.2.77 (TTL 300), everything else NODATA.
struct FakeUpstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    fn start() -> FakeUpstream {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let Ok(query) = portico_dns::wire::parse_query(&buf[..n]) else {
                    continue;
                };
                let mut out = buf[..query.question_end].to_vec();
                out[2] = 0x81;
                out[3] = 0x80;
                out[10] = 0;
                out[11] = 0;
                if query.qtype == 1 {
                    out[7] = 1;
                    out.extend_from_slice(&[
                        0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 77,
                    ]);
                }
                let _ = socket.send_to(&out, peer);
            }
        });
        FakeUpstream {
            addr,
            queries,
            stop,
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Parsed `dig` output.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: String,
    records: Vec<String>,
}

fn dig(port: u16, args: &[&str]) -> Dig {
    assert!(
        std::path::Path::new(DIG).exists(),
        "{DIG} is missing: apt-get install bind9-dnsutils"
    );
    let port = port.to_string();
    let output = Command::new(DIG)
        .args([
            "@127.0.0.1",
            "-p",
            &port,
            "+tries=1",
            "+time=3",
            "+nocmd",
            "+nostats",
            "+noquestion",
        ])
        .args(args)
        .output()
        .expect("running dig");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let flags = text
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
        .to_string();
    let records = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    Dig {
        status,
        flags,
        records,
    }
}

struct Server {
    handle: portico_dns::Handle,
    shutdown: CancellationToken,
    upstream: FakeUpstream,
}

impl Server {
    async fn start(autopath: Autopath) -> Server {
        let upstream = FakeUpstream::start();
        let shutdown = CancellationToken::new();
        let options = Options {
            upstream: vec![upstream.addr],
            autopath,
            udp_workers: 2,
            ..Options::default()
        };
        let handle = portico_dns::start_unsynced(options, shutdown.clone())
            .await
            .unwrap();
        fill(&mut handle.index().write().unwrap());
        handle.engine().set_synced(true);
        Server {
            handle,
            shutdown,
            upstream,
        }
    }

    fn port(&self) -> u16 {
        self.handle.udp_addr.port()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_type_through_dig() {
    let server = Server::start(Autopath::Off).await;
    let port = server.port();
    assert_eq!(server.handle.udp_addr, server.handle.tcp_addr);
    blocking(move || {
        let a = dig(port, &["kubernetes.default.svc.cluster.local", "A"]);
        assert_eq!(a.status, "NOERROR");
        assert!(a.flags.contains("aa"), "{a:?}");
        assert_eq!(a.records, vec!["kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1"]);

        let aaaa = dig(port, &["web.prod.svc.cluster.local", "AAAA"]);
        assert_eq!(aaaa.records, vec!["web.prod.svc.cluster.local. 5 IN AAAA fd00:10:96::a"]);

        let srv = dig(port, &["_http._tcp.web.prod.svc.cluster.local", "SRV"]);
        assert!(srv.records.contains(&"_http._tcp.web.prod.svc.cluster.local. 5 IN SRV 0 100 80 web.prod.svc.cluster.local.".to_string()), "{srv:?}");
        assert!(srv.records.contains(&"web.prod.svc.cluster.local. 5 IN A 10.96.0.10".to_string()), "{srv:?}");

        let headless = dig(port, &["db.prod.svc.cluster.local", "A"]);
        assert_eq!(headless.records.len(), 2, "{headless:?}");
        let hostname = dig(port, &["db-0.db.prod.svc.cluster.local", "A"]);
        assert_eq!(hostname.records, vec!["db-0.db.prod.svc.cluster.local. 5 IN A 10.1.0.10"]);
        let unready = dig(port, &["db-2.db.prod.svc.cluster.local", "A"]);
        assert_eq!(unready.status, "NXDOMAIN");
        assert!(unready.records[0].contains("IN SOA ns.dns.cluster.local. hostmaster.cluster.local."), "{unready:?}");
        let pnr = dig(port, &["pnr.prod.svc.cluster.local", "A"]);
        assert_eq!(pnr.records, vec!["pnr.prod.svc.cluster.local. 5 IN A 10.1.0.30"]);
        let none_ready = dig(port, &["empty.prod.svc.cluster.local", "A"]);
        assert_eq!(none_ready.status, "NXDOMAIN");

        let ptr = dig(port, &["-x", "10.96.0.1"]);
        assert_eq!(ptr.records, vec!["1.0.96.10.in-addr.arpa. 5 IN PTR kubernetes.default.svc.cluster.local."]);
        let ptr6 = dig(port, &["-x", "fd00:10:96::a"]);
        assert_eq!(ptr6.records.len(), 1);
        assert!(ptr6.records[0].ends_with("IN PTR web.prod.svc.cluster.local."), "{ptr6:?}");
        let ptr_headless = dig(port, &["-x", "10.1.0.11"]);
        assert!(ptr_headless.records[0].ends_with("PTR 10-1-0-11.db.prod.svc.cluster.local."), "{ptr_headless:?}");

        let txt = dig(port, &["dns-version.cluster.local", "TXT"]);
        assert_eq!(txt.records, vec!["dns-version.cluster.local. 28800 IN TXT \"1.1.0\""]);
        let soa = dig(port, &["cluster.local", "SOA"]);
        assert!(soa.records[0].starts_with("cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local."));
        let ns = dig(port, &["cluster.local", "NS"]);
        // The name server's address comes as glue: this server's own address when there is no
        // kube-system/kube-dns Service.
        assert_eq!(
            ns.records,
            vec![
                "cluster.local. 5 IN NS ns.dns.cluster.local.",
                "ns.dns.cluster.local. 5 IN A 127.0.0.1"
            ]
        );
        let ns_a = dig(port, &["ns.dns.cluster.local", "A"]);
        assert_eq!(ns_a.records, vec!["ns.dns.cluster.local. 5 IN A 127.0.0.1"]);

        let pod = dig(port, &["10-1-0-50.prod.pod.cluster.local", "A"]);
        assert_eq!(pod.records, vec!["10-1-0-50.prod.pod.cluster.local. 5 IN A 10.1.0.50"]);

        let nodata = dig(port, &["web.prod.svc.cluster.local", "TXT"]);
        assert_eq!(nodata.status, "NOERROR");
        assert_eq!(nodata.records.len(), 1);
        assert!(nodata.records[0].contains("SOA"), "{nodata:?}");

        let case = dig(port, &["WeB.PrOd.svc.cluster.local", "A"]);
        assert_eq!(case.records, vec!["WeB.PrOd.svc.cluster.local. 5 IN A 10.96.0.10"]);

        let any = dig(port, &["web.prod.svc.cluster.local", "ANY"]);
        assert_eq!(any.records, vec!["web.prod.svc.cluster.local. 5 IN HINFO \"RFC8482\" \"\""]);

        let internal_alias = dig(port, &["alias.prod.svc.cluster.local", "A"]);
        assert_eq!(internal_alias.records.len(), 2, "{internal_alias:?}");

        let tcp = dig(port, &["+tcp", "db.prod.svc.cluster.local", "A"]);
        assert_eq!(tcp.records.len(), 2, "{tcp:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_then_tcp() {
    let server = Server::start(Autopath::Off).await;
    {
        let mut index = server.handle.index().write().unwrap();
        let endpoints: Vec<_> = (0..100)
            .map(|i| endpoint(&[&format!("10.2.0.{i}")], None, true))
            .collect();
        index.upsert_service(service(
            "prod",
            "big",
            portico_dns::index::ServiceKind::Headless,
            vec![],
        ));
        index.upsert_slice(slice("prod", "big-1", "big", vec![], endpoints));
    }
    let port = server.port();
    blocking(move || {
        let truncated = dig(
            port,
            &["+ignore", "+noedns", "big.prod.svc.cluster.local", "A"],
        );
        assert!(truncated.flags.contains("tc"), "{truncated:?}");
        assert!(truncated.records.is_empty());
        // Without +ignore dig retries over TCP and gets every record.
        let full = dig(port, &["+noedns", "big.prod.svc.cluster.local", "A"]);
        assert_eq!(full.records.len(), 100, "{full:?}");
        // With EDNS(0) the 1232-byte limit applies (dig advertises 1232).
        let edns = dig(port, &["+ignore", "big.prod.svc.cluster.local", "A"]);
        assert!(edns.flags.contains("tc"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_cache_and_external_names() {
    let server = Server::start(Autopath::Off).await;
    let port = server.port();
    let queries = server.upstream.queries.clone();
    blocking(move || {
        let first = dig(port, &["example.org", "A"]);
        assert_eq!(first.status, "NOERROR");
        assert!(first.flags.contains("ra"), "{first:?}");
        assert_eq!(first.records, vec!["example.org. 300 IN A 192.0.2.77"]);
        let second = dig(port, &["EXAMPLE.org", "A"]);
        assert_eq!(second.records.len(), 1);
        assert!(second.records[0].starts_with("EXAMPLE.org."), "{second:?}");
        assert_eq!(
            queries.load(Ordering::Relaxed),
            1,
            "the second answer comes from the cache"
        );

        let ext = dig(port, &["ext.prod.svc.cluster.local", "A"]);
        assert_eq!(
            ext.records,
            vec![
                "ext.prod.svc.cluster.local. 5 IN CNAME Example.COM.",
                "example.com. 300 IN A 192.0.2.77"
            ]
        );
    })
    .await;
    let metrics = http_get(server.handle.metrics_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("portico_dns_cache_hits_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("portico_dns_requests_total{type=\"A\"}"));
    assert!(metrics.contains("portico_dns_request_duration_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopath_expands_search_path_server_side() {
    let server = Server::start(Autopath::QueryName).await;
    let port = server.port();
    blocking(move || {
        // What a pod in `default` sends first for `web.prod` and for `example.org`.
        let internal = dig(port, &["web.prod.default.svc.cluster.local", "A"]);
        assert_eq!(
            internal.records,
            vec![
                "web.prod.default.svc.cluster.local. 5 IN CNAME web.prod.svc.cluster.local.",
                "web.prod.svc.cluster.local. 5 IN A 10.96.0.10"
            ]
        );
        let external = dig(port, &["example.org.default.svc.cluster.local", "A"]);
        assert_eq!(
            external.records,
            vec![
                "example.org.default.svc.cluster.local. 5 IN CNAME example.org.",
                "example.org. 300 IN A 192.0.2.77"
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_malformed_and_refused() {
    let shutdown = CancellationToken::new();
    let options = Options {
        udp_workers: 1,
        ..Options::default()
    };
    let handle = portico_dns::start_unsynced(options, shutdown.clone())
        .await
        .unwrap();
    let metrics = handle.metrics_addr.unwrap();
    assert!(
        http_get(metrics, "/readyz")
            .await
            .starts_with("HTTP/1.1 503")
    );
    assert!(
        http_get(metrics, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let port = handle.udp_addr.port();
    let unsynced = blocking(move || dig(port, &["web.prod.svc.cluster.local", "A"])).await;
    assert_eq!(unsynced.status, "SERVFAIL");
    handle.engine().set_synced(true);
    assert!(
        http_get(metrics, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Two questions: FORMERR. Garbage: FORMERR or nothing, never a crash.
    let addr = handle.udp_addr;
    blocking(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut two =
            portico_dns::wire::build_query(9, &wire_name("a.cluster.local"), 1, true, None);
        two[5] = 2;
        socket.send_to(&two, addr).unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        assert!(n >= 12);
        assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
        socket
            .send_to(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], addr)
            .unwrap();
        // No upstream configured: names outside the zone are refused.
    })
    .await;
    let refused = blocking(move || dig(port, &["example.org", "A"])).await;
    assert_eq!(refused.status, "REFUSED");
    shutdown.cancel();
    handle.join().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}
