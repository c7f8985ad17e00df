//! Garbage collection end to end: kubectl 1.33 against `portico up` deleting a Service that
//! owns Pods and EndpointSlices, with the Background (default), Foreground and Orphan cascades.

use std::time::Duration;

use portico_e2e::{Kubectl, Portico};
use serde_json::{Value, json};

const UP: &[&str] = &["--dns-address", "127.0.0.1:0", "--proxy-mode", "none"];

fn uid(k: &Kubectl, kind: &str, name: &str) -> String {
    k.ok(&["get", kind, name, "-o", "jsonpath={.metadata.uid}"])
}

fn eventually<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    portico_e2e::eventually(what, Duration::from_secs(20), check)
}

fn gone(k: &Kubectl, kind: &str, name: &str) {
    eventually(&format!("{kind} {name} deleted"), || {
        match k.get(kind, name) {
            None => Ok(()),
            Some(v) => Err(format!("{:#}", v["metadata"])),
        }
    });
}

fn svc_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n"
    )
}

/// A Service, a ready Pod it selects and owns (blockOwnerDeletion), the EndpointSlice the
/// controller makes for it, and one more slice owned by it that no controller manages.
fn owned_set(k: &Kubectl, name: &str, node: Option<&str>) -> String {
    k.apply(&format!("{name}-svc.yaml"), &svc_yaml(name));
    let uid = uid(k, "svc", name);
    let owner = format!(
        "  ownerReferences:\n  - {{apiVersion: v1, kind: Service, name: {name}, uid: {uid}, blockOwnerDeletion: true}}\n"
    );
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    k.apply(
        &format!("{name}-pod.yaml"),
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-pod\n  labels: {{app: {name}}}\n{owner}spec:\n{node}  containers:\n  - name: c\n    image: example.invalid/app\n"
        ),
    );
    let patch = json!({"status": {"phase": "Running", "podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}],
        "conditions": [{"type": "Ready", "status": "True"}]}})
    .to_string();
    k.ok(&[
        "patch",
        "pod",
        &format!("{name}-pod"),
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
    k.apply(
        &format!("{name}-slice.yaml"),
        &format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-extra\n  labels: {{kubernetes.io/service-name: {name}, endpointslice.kubernetes.io/managed-by: by-hand.example.com}}\n{owner}addressType: IPv4\nendpoints:\n- addresses: [192.0.2.1]\nports:\n- {{name: http, port: 8080}}\n"
        ),
    );
    eventually(&format!("the controller's slice for {name}"), || {
        let s = k.slices(name);
        let managed = s.iter().find(|s| {
            s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
                == json!("endpointslice-controller.k8s.io")
                && !s["endpoints"].as_array().is_none_or(Vec::is_empty)
        });
        match managed {
            Some(m) if m["metadata"]["ownerReferences"][0]["uid"] == json!(uid) => Ok(()),
            _ => Err(format!("{s:#?}")),
        }
    });
    uid
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|fs| fs.contains(&json!(f)))
}

#[test]
fn cascading_deletion_with_kubectl() {
    let p = Portico::start_command("up", UP).expect("start portico up");
    let k = Kubectl::new(&p);
    k.apply(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n",
    );

    // An owner that never existed: the dependent is collected.
    k.apply(
        "stray.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stray\n  ownerReferences:\n  - {apiVersion: v1, kind: Service, name: nothere, uid: 6d1c3e0a-0000-4000-8000-000000000000}\nspec:\n  containers:\n  - {name: c, image: example.invalid/app}\n",
    );
    gone(&k, "pod", "stray");

    // Background (kubectl's default): the Service goes at once, its dependents after it.
    owned_set(&k, "bg", None);
    let out = k.ok(&["delete", "svc", "bg"]);
    assert!(out.contains("service \"bg\" deleted"), "{out}");
    gone(&k, "pod", "bg-pod");
    gone(&k, "endpointslice", "bg-extra");
    eventually("no slices for bg", || {
        let s = k.slices("bg");
        if s.is_empty() {
            Ok(())
        } else {
            Err(format!("{s:#?}"))
        }
    });

    // Foreground: the Service stays, marked, while its bound pod waits for its grace period.
    owned_set(&k, "fg", Some("node-a"));
    k.ok(&[
        "delete",
        "svc",
        "fg",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let svc = k
        .get("svc", "fg")
        .expect("fg is kept while dependents exist");
    assert!(
        svc["metadata"]["deletionTimestamp"].is_string(),
        "{:#}",
        svc["metadata"]
    );
    assert!(
        has_finalizer(&svc, "foregroundDeletion"),
        "{:#}",
        svc["metadata"]
    );
    gone(&k, "endpointslice", "fg-extra");
    let pod = eventually("fg-pod deleted gracefully by the collector", || {
        match k.get("pod", "fg-pod") {
            Some(p) if p["metadata"]["deletionTimestamp"].is_string() => Ok(p),
            other => Err(format!("{other:#?}")),
        }
    });
    assert_eq!(
        pod["metadata"]["deletionGracePeriodSeconds"],
        json!(30),
        "{pod:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let svc = k.get("svc", "fg").expect("fg waits for its blocking pod");
    assert!(has_finalizer(&svc, "foregroundDeletion"), "{svc:#}");
    // The kubelet confirms the pod's termination; then the Service goes too.
    k.ok(&["delete", "pod", "fg-pod", "--grace-period=0", "--force"]);
    gone(&k, "svc", "fg");
    assert!(k.slices("fg").is_empty(), "{:#?}", k.slices("fg"));

    // Orphan: the Service goes once its dependents no longer reference it.
    owned_set(&k, "keep", None);
    let out = k.ok(&["delete", "svc", "keep", "--cascade=orphan"]);
    assert!(out.contains("service \"keep\" deleted"), "{out}");
    assert!(k.get("svc", "keep").is_none());
    for (kind, name) in [("pod", "keep-pod"), ("endpointslice", "keep-extra")] {
        let obj = k
            .get(kind, name)
            .unwrap_or_else(|| panic!("{kind} {name} orphaned, not deleted"));
        assert!(
            obj["metadata"]["ownerReferences"].is_null(),
            "{kind} {name}: {:#}",
            obj["metadata"]
        );
    }

    // Unsupported policies are refused like kube-apiserver does.
    k.apply("bad.yaml", &svc_yaml("bad"));
    let (ok, _, err) = k.run(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/services/bad?propagationPolicy=Sideways",
    ]);
    assert!(!ok);
    assert!(
        err.contains(r#"propagationPolicy: Unsupported value: "Sideways": supported values: "Foreground", "Background", "Orphan", "nil""#),
        "{err}"
    );
    assert!(k.get("svc", "bad").is_some());
}

/// A namespace deleted with a cascade: its contents always go; what it owns outside itself (here
/// another namespace) is orphaned or deleted first as the policy says, and the namespace stays
/// until the collector has done that.
#[test]
fn namespace_deletion_with_orphan_and_foreground_cascades() {
    let p = Portico::start_command("up", UP).expect("start portico up");
    let k = Kubectl::new(&p);
    let family = |parent: &str, child: &str, child_finalizers: &str| {
        k.ok(&["create", "namespace", parent]);
        let uid = uid(&k, "namespace", parent);
        k.apply(
            &format!("{child}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {child}\n  finalizers: [{child_finalizers}]\n  ownerReferences:\n  - {{apiVersion: v1, kind: Namespace, name: {parent}, uid: {uid}, blockOwnerDeletion: true}}\n"
            ),
        );
        k.ok(&[
            "-n",
            parent,
            "create",
            "service",
            "clusterip",
            "inside",
            "--tcp=80",
        ]);
    };

    family("orphaner", "orphan-child", "");
    let out = k.ok(&["delete", "namespace", "orphaner", "--cascade=orphan"]);
    assert!(out.contains("namespace \"orphaner\" deleted"), "{out}");
    gone(&k, "namespace", "orphaner");
    let (_, out, _) = k.run(&["-n", "orphaner", "get", "svc", "inside", "-o", "name"]);
    assert!(out.trim().is_empty(), "contents go with any cascade: {out}");
    let child = k
        .get("namespace", "orphan-child")
        .expect("an orphaned namespace is kept");
    assert!(
        child["metadata"]["ownerReferences"].is_null(),
        "{:#}",
        child["metadata"]
    );

    // Foreground: the child is deleted first; a finalizer holds it Terminating, and the parent
    // (emptied, marked foregroundDeletion) waits for it.
    family("fgparent", "fg-child", "example.com/hold");
    k.ok(&[
        "delete",
        "namespace",
        "fgparent",
        "--cascade=foreground",
        "--wait=false",
    ]);
    eventually("fg-child terminating", || {
        match k.get("namespace", "fg-child") {
            Some(c) if c["metadata"]["deletionTimestamp"].is_string() => Ok(()),
            other => Err(format!("{other:#?}")),
        }
    });
    let (_, out, _) = k.run(&["-n", "fgparent", "get", "svc", "inside", "-o", "name"]);
    assert!(out.trim().is_empty(), "contents go at once: {out}");
    std::thread::sleep(Duration::from_millis(500));
    let parent = k
        .get("namespace", "fgparent")
        .expect("the parent waits for its blocking child");
    assert!(
        has_finalizer(&parent, "foregroundDeletion"),
        "{:#}",
        parent["metadata"]
    );
    k.ok(&[
        "patch",
        "namespace",
        "fg-child",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    gone(&k, "namespace", "fg-child");
    gone(&k, "namespace", "fgparent");
}
