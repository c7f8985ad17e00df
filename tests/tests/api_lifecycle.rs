//! The binary's lifecycle: start on port 0, clean exit on SIGTERM, data and certificates
//! survive a restart, and the kubeconfig follows the new port.

use std::process::Command;
use std::time::Duration;

use portico_e2e::{Portico, kubectl_dir};

fn kubectl(p: &Portico, cache: &std::path::Path, args: &[&str]) -> String {
    let bin = kubectl_dir().expect("kubectl").join("kubectl.1.33");
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&p.kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigterm_restart_and_persistence() {
    let p = Portico::start(&[]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(
        kubectl(
            &p,
            cache.path(),
            &["create", "service", "clusterip", "keep", "--tcp=80:80"]
        )
        .trim(),
        "service/keep created"
    );
    let ip = kubectl(
        &p,
        cache.path(),
        &["get", "svc", "keep", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let ca_before = std::fs::read(p.data_dir.path().join("pki/ca.crt")).unwrap();
    let dir = p.kill();

    let p = Portico::start_in("apiserver", dir, &[]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(
        kubectl(
            &p,
            cache.path(),
            &["get", "svc", "keep", "-o", "jsonpath={.spec.clusterIP}"]
        ),
        ip
    );
    assert_eq!(
        std::fs::read(p.data_dir.path().join("pki/ca.crt")).unwrap(),
        ca_before
    );
    assert!(
        p.terminate(Duration::from_secs(10)).unwrap(),
        "non-zero exit after SIGTERM"
    );
}

#[test]
fn up_runs_the_api_server() {
    let p = Portico::start_command("up", &[]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(
        kubectl(&p, cache.path(), &["get", "--raw", "/readyz"]).trim(),
        "ok"
    );
}
