//! Durability under `kill -9`: a child process (this test binary re-invoked with an environment
//! variable) writes keys in a concurrent burst and prints each key once its transaction is
//! acknowledged; the parent SIGKILLs it mid-burst, reopens the file and checks that every
//! acknowledged key is there and the revisions are contiguous.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use portico_store::embedded::EmbeddedStore;
use portico_store::testing::next_batch;
use portico_store::{Compare, Op, Revision, Store};

const CHILD_ENV: &str = "PORTICO_STORE_CRASH_CHILD";
const ROUND_ENV: &str = "PORTICO_STORE_CRASH_ROUND";
const WRITERS: usize = 16;

/// Runs only as the child: does nothing in an ordinary test run.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let round = std::env::var(ROUND_ENV).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // The parent may still be letting go of the file after checking the previous round.
        let open_deadline = Instant::now() + Duration::from_secs(10);
        let store: Arc<dyn Store> = loop {
            match EmbeddedStore::open(std::path::Path::new(&path)) {
                Ok(store) => break store,
                Err(error) if Instant::now() > open_deadline => panic!("open: {error}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let store = store.clone();
            let round = round.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = format!("/crash/{round}/w{writer}/{i}");
                    let response = store
                        .txn(
                            vec![Compare::ModRevision(key.clone(), 0)],
                            vec![Op::Put(key.clone(), Bytes::from(vec![b'x'; 512]))],
                        )
                        .await
                        .unwrap();
                    assert!(response.succeeded);
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {key} {}", response.revision).unwrap();
                    out.flush().unwrap();
                    i += 1;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut acked: BTreeMap<String, Revision> = BTreeMap::new();
    for (round, kill_after) in [(0, 150usize), (1, 400), (2, 1000)] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .env(ROUND_ENV, format!("r{round}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < kill_after {
            let line = lines
                .next()
                .expect("child stopped before the kill")
                .unwrap();
            if let Some(ack) = parse_ack(&line) {
                acked.insert(ack.0, ack.1);
                seen += 1;
            }
        }
        // SIGKILL in the middle of the burst: no destructor, no flush, no fsync of our own.
        child.kill().unwrap();
        // Lines already in the pipe were printed after their acknowledgement: they count too.
        for line in lines {
            if let Some(ack) = parse_ack(&line.unwrap()) {
                acked.insert(ack.0, ack.1);
            }
        }
        child.wait().unwrap();
        // The acknowledged writes since the last checkpoint exist only in the write-ahead log
        // now; reopening must replay it.
        let wal = std::fs::metadata(dir.path().join("store.redb-wal")).unwrap();
        assert!(wal.len() > 0, "round {round}: expected records to replay");

        let store: Arc<dyn Store> = EmbeddedStore::open(&path).unwrap();
        let current = store.current_revision().await.unwrap();
        for (key, revision) in &acked {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged key {key} lost in round {round}"));
            assert_eq!(kv.mod_revision, *revision, "{key}");
        }
        assert!(current >= acked.values().copied().max().unwrap_or(1));
        assert_revisions_contiguous(&store, current).await;
        let listed = store.list("/crash/", None, 0, None).await.unwrap();
        assert_eq!(
            listed.kvs.len() as Revision,
            current - 1,
            "one key per revision"
        );
        drop(store);
        eprintln!(
            "round {round}: {} acknowledged keys so far, revision {current}",
            acked.len()
        );
    }
}

fn parse_ack(line: &str) -> Option<(String, Revision)> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let key = parts.next()?.to_string();
    let revision = parts.next()?.parse().ok()?;
    Some((key, revision))
}

/// Replays the whole log: every revision from 2 to `current` appears exactly once, in order.
async fn assert_revisions_contiguous(store: &Arc<dyn Store>, current: Revision) {
    let mut watch = store.watch("/", 1).await.unwrap();
    for expected in 2..=current {
        let batch = next_batch(&mut watch).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].kv.mod_revision, expected, "revision gap");
    }
}
