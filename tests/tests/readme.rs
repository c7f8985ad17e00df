//! The README walk-through, run as written: `portico up` as an unprivileged user (when the test
//! runs as root it drops to `nobody` with setpriv), then the README's shell blocks with bash.
//! Everything stays on loopback: the Service range and node ports of `portico up` are in
//! 127.0.0.0/8 and the backends listen on 127.0.0.2 and 127.0.0.3.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use portico_e2e::{Up, kubectl_dir, portico_bin};

/// The shell blocks of README.md under `## Walk-through`, in order.
fn walkthrough_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split("## Walk-through")
        .nth(1)
        .expect("a Walk-through section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(start) = rest.find("```sh\n") {
        let body = &rest[start + 6..];
        let end = body.find("\n```").expect("closed code block");
        blocks.push(body[..end].to_string());
        rest = &body[end + 4..];
    }
    blocks
}

fn run_block(dir: &Path, cache: &Path, block: &str) -> String {
    let bin_dir = portico_bin().parent().unwrap().to_path_buf();
    // The README builds and runs with cargo; the test runs the binary cargo already built.
    let script = block
        .replace(
            "cargo run -q --release -p portico --",
            &portico_bin().display().to_string(),
        )
        .replace(
            "cargo run --release -p portico --",
            &portico_bin().display().to_string(),
        );
    let path = format!(
        "{}:{}:{}",
        kubectl_dir().unwrap().display(),
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir)
        .env("PATH", path)
        .env("KUBECACHEDIR", cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash");
    let pid = child.id();
    let out = child.wait_with_output().expect("bash output");
    // Stop what the block left running in the background (the two HTTP servers).
    let _ = Command::new("kill")
        .arg("--")
        .arg(format!("-{pid}"))
        .status();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "block failed:\n{block}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn readme_walkthrough_works_as_written() {
    let blocks = walkthrough_blocks();
    assert_eq!(blocks.len(), 3, "walk-through blocks: {blocks:?}");
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let up = Up::start_unprivileged(dir.path(), &[]).unwrap();
    assert_eq!(
        up.field("dns"),
        Some("127.0.0.1:10053"),
        "{}",
        up.ready_line
    );

    // One shell for all blocks, like the terminal a reader types them into: later commands use
    // the variables (KUBECONFIG, IP) and the servers of earlier ones.
    let out = run_block(dir.path(), cache.path(), &blocks.join("\n"));
    let lines: Vec<&str> = out.lines().collect();
    // The first loop prints `uniq -c` counts; every later request prints its backend alone.
    let counted: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(n, b)| n.parse::<u32>().is_ok() && b.starts_with("backend-"))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        counted,
        ["backend-a", "backend-b"],
        "20 requests reach both backends: {out}"
    );
    let backends: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("backend-"))
        .collect();
    // 1 through the node port, 4 after backend b left, 1 through the selector Service's IP.
    assert_eq!(backends.len(), 6, "{out}");
    assert!(
        backends[1..5].iter().all(|b| *b == "backend-a"),
        "traffic moved to a: {out}"
    );
    assert_eq!(backends[5], "backend-a", "{out}");
    let ip = lines
        .iter()
        .find(|l| l.starts_with("127.96."))
        .expect("dig printed the cluster IP");
    assert!(out.contains("service/web patched"), "{out}");
    assert!(
        out.contains("app-"),
        "the controller made a slice for app: {out}"
    );
    assert!(!ip.is_empty());

    // The environment block prints WEB_SERVICE_HOST, then WEB_SERVICE_PORT.
    let tail: Vec<&str> = lines.iter().rev().take(2).rev().copied().collect();
    assert!(tail[0].starts_with("127.96."), "WEB_SERVICE_HOST: {out}");
    assert_eq!(tail[1], "8080", "{out}");
}
