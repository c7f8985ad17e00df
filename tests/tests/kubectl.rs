//! kubectl end to end: every versioned kubectl (1.27 … 1.33) against the real binary, each
//! with a fresh cache dir, checking each step's output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portico_e2e::{Portico, kubectl_dir};

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
    work: PathBuf,
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .current_dir(&self.work);
        c
    }
    /// Runs and returns stdout; panics with stderr when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run kubectl");
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "{} {:?} failed:\nstdout: {so}\nstderr: {se}",
            self.bin.display(),
            args
        );
        so
    }
    fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run kubectl");
        assert!(!out.status.success(), "{:?} unexpectedly succeeded", args);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: web, tier: fe}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n";

fn run_version(minor: u32, dir: &Path) {
    let p = Portico::start(&[]).expect("start portico");
    let work = tempfile::tempdir().unwrap();
    let k = Kubectl {
        bin: dir.join(format!("kubectl.1.{minor}")),
        kubeconfig: p.kubeconfig.clone(),
        cache: tempfile::tempdir().unwrap(),
        work: work.path().to_path_buf(),
    };
    let w = work.path();

    // apply: create, update, unchanged.
    write(w, "svc.yaml", SVC);
    assert_eq!(
        k.ok(&["apply", "-f", "svc.yaml"]).trim(),
        "service/web created"
    );
    write(
        w,
        "svc2.yaml",
        &SVC.replace("8080", "9090").replace(", tier: fe", ""),
    );
    assert_eq!(
        k.ok(&["apply", "-f", "svc2.yaml"]).trim(),
        "service/web configured"
    );
    assert_eq!(
        k.ok(&["apply", "-f", "svc2.yaml"]).trim(),
        "service/web unchanged"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ]),
        "9090"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.metadata.labels.tier}"
        ]),
        ""
    );

    // get in every output format.
    let table = k.ok(&["get", "svc"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("CLUSTER-IP") && table.contains("PORT(S)") && table.contains("80/TCP"),
        "{table}"
    );
    let wide = k.ok(&["get", "svc", "-o", "wide"]);
    assert!(
        wide.contains("SELECTOR") && wide.contains("app=web"),
        "{wide}"
    );
    assert!(
        k.ok(&["get", "svc", "web", "-o", "yaml"])
            .contains("name: web")
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    assert_eq!(json["spec"]["type"], "ClusterIP");
    assert!(
        json["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{json}"
    );
    // The API server keeps the `kubernetes` Service in default, as upstream's does.
    assert_eq!(
        k.ok(&["get", "svc", "-o", "name"]).trim(),
        "service/kubernetes\nservice/web"
    );
    let all = k.ok(&["get", "svc", "-A"]);
    assert!(all.starts_with("NAMESPACE") && all.contains("web"), "{all}");
    assert!(
        k.ok(&["get", "svc", "-l", "app=web", "-o", "name"])
            .contains("service/web")
    );
    assert_eq!(
        k.ok(&["get", "svc", "-l", "app=other", "-o", "name"])
            .trim(),
        ""
    );

    // server-side apply.
    write(w, "ssa.yaml", &SVC.replace("name: web\n", "name: ssa\n"));
    assert_eq!(
        k.ok(&["apply", "--server-side", "-f", "ssa.yaml"]).trim(),
        "service/ssa serverside-applied"
    );

    // get -w sees a change.
    let mut watch = k
        .cmd(&["get", "svc", "web", "-w", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    k.ok(&["label", "svc", "web", "watched=yes"]);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("service/web"))
        .count();
    assert!(lines >= 2, "get -w saw {lines} lines");

    // describe.
    let d = k.ok(&["describe", "svc", "web"]);
    assert!(
        d.contains("Name:")
            && d.contains("web")
            && d.contains("Selector:")
            && d.contains("app=web"),
        "{d}"
    );

    // edit with a scripted editor.
    write(
        w,
        "editor.sh",
        "#!/bin/sh\nsed -i 's/app: web$/app: web\\n    edited: \"yes\"/' \"$1\"\n",
    );
    let _ = Command::new("chmod")
        .arg("+x")
        .arg(w.join("editor.sh"))
        .status();
    let mut edit = k.cmd(&["edit", "svc", "web"]);
    edit.env("KUBE_EDITOR", w.join("editor.sh"));
    let o = edit.output().unwrap();
    assert!(
        o.status.success(),
        "edit: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.metadata.labels.edited}"
        ]),
        "yes"
    );

    // patch: json, merge, strategic.
    k.ok(&[
        "patch",
        "svc",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/j","value":"1"}]"#,
    ]);
    k.ok(&[
        "patch",
        "svc",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"m":"2"}}}"#,
    ]);
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"ports":[{"port":80,"targetPort":7070}]}}"#,
    ]);
    let pj: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    assert_eq!(pj["metadata"]["labels"]["j"], "1");
    assert_eq!(pj["metadata"]["labels"]["m"], "2");
    assert_eq!(pj["spec"]["ports"][0]["targetPort"], 7070);
    assert_eq!(pj["spec"]["ports"][0]["name"], "http");

    // replace.
    let mut r = pj.clone();
    r["metadata"]["labels"]["replaced"] = "true".into();
    write(w, "replace.json", &r.to_string());
    assert_eq!(
        k.ok(&["replace", "-f", "replace.json"]).trim(),
        "service/web replaced"
    );
    let stale = k.fails(&["replace", "-f", "replace.json"]);
    assert!(stale.contains("the object has been modified"), "{stale}");

    // label and annotate.
    assert_eq!(
        k.ok(&["label", "svc", "web", "color=blue"]).trim(),
        "service/web labeled"
    );
    // kubectl 1.27 prints "annotate" (its own typo), later versions "annotated".
    assert!(
        k.ok(&["annotate", "svc", "web", "note=hi"])
            .trim()
            .starts_with("service/web annotate")
    );

    // create service of every type, and a namespace.
    assert_eq!(
        k.ok(&["create", "service", "clusterip", "c1", "--tcp=80:8080"])
            .trim(),
        "service/c1 created"
    );
    assert_eq!(
        k.ok(&["create", "service", "nodeport", "n1", "--tcp=80:8080"])
            .trim(),
        "service/n1 created"
    );
    assert_eq!(
        k.ok(&["create", "service", "loadbalancer", "l1", "--tcp=80:8080"])
            .trim(),
        "service/l1 created"
    );
    assert_eq!(
        k.ok(&[
            "create",
            "service",
            "externalname",
            "e1",
            "--external-name",
            "example.com"
        ])
        .trim(),
        "service/e1 created"
    );
    let t = k.ok(&["get", "svc"]);
    assert!(
        t.contains("NodePort") && t.contains("<pending>") && t.contains("example.com"),
        "{t}"
    );
    assert_eq!(
        k.ok(&["create", "namespace", "team"]).trim(),
        "namespace/team created"
    );

    // expose a pod.
    write(
        w,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, labels: {run: p1}}\nspec:\n  containers:\n  - {name: c, image: nginx:1.27, ports: [{containerPort: 80}]}\n",
    );
    k.ok(&["apply", "-f", "pod.yaml"]);
    assert_eq!(
        k.ok(&["expose", "pod", "p1", "--port", "80"]).trim(),
        "service/p1 exposed"
    );

    // explain and raw readyz.
    let e = k.ok(&["explain", "service.spec.ports"]);
    assert!(
        e.contains("KIND:") && e.contains("Service") && e.contains("targetPort"),
        "{e}"
    );
    assert_eq!(k.ok(&["get", "--raw", "/readyz"]).trim(), "ok");

    // delete.
    assert_eq!(
        k.ok(&["delete", "svc", "web"]).trim(),
        "service \"web\" deleted"
    );
    assert!(k.fails(&["get", "svc", "web"]).contains("NotFound"));
    assert_eq!(
        k.ok(&["delete", "namespace", "team"]).trim(),
        "namespace \"team\" deleted"
    );
}

#[test]
fn kubectl_versions() {
    let Some(dir) = kubectl_dir() else {
        panic!("kubectl not found");
    };
    let only = std::env::var("KUBECTL_MINOR")
        .ok()
        .and_then(|m| m.parse::<u32>().ok());
    for minor in 27..=33 {
        if only.is_some_and(|m| m != minor) {
            continue;
        }
        eprintln!("== kubectl 1.{minor}");
        run_version(minor, &dir);
    }
}
