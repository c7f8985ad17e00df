//! Bad input gets the right Status and changes nothing; random bodies never panic the server.

use http::Request;
use portico_apiserver::testing::TestServer;
use serde_json::Value;

async fn send(ts: &TestServer, method: &str, path: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(kube::client::Body::from(body))
        .unwrap();
    let resp = ts.client.send(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const SVCS: &str = "/api/v1/namespaces/default/services";

async fn count_services(ts: &TestServer) -> usize {
    let (code, list) = send(ts, "GET", SVCS, "application/json", vec![]).await;
    assert_eq!(code, 200);
    list["items"].as_array().map(|a| a.len()).unwrap_or(0)
}

fn assert_status(code: u16, body: &Value, want: u16, reason: &str) {
    assert_eq!(code, want, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], want, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_rejected_and_nothing_is_stored() {
    let ts = TestServer::start().await.unwrap();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("application/json", b"{\"metadata\":".to_vec(), 400, "BadRequest"),
        ("application/json", b"[1,2]".to_vec(), 400, "BadRequest"),
        ("application/yaml", b"metadata: [unclosed".to_vec(), 400, "BadRequest"),
        ("application/vnd.kubernetes.protobuf", b"k8s\x00\xff\xff\xff".to_vec(), 400, "BadRequest"),
        ("text/plain", b"hello".to_vec(), 415, "UnsupportedMediaType"),
        ("application/json", br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{"ports":[{"port":"eighty"}]}}"#.to_vec(), 400, "BadRequest"),
        ("application/json", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#.to_vec(), 400, "BadRequest"),
        ("application/json", vec![b' '; 4 * 1024 * 1024], 413, "RequestEntityTooLarge"),
    ];
    for (ct, body, want, reason) in cases {
        let (code, status) = send(&ts, "POST", SVCS, ct, body).await;
        assert_status(code, &status, want, reason);
    }
    let strict = br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"foo":1,"ports":[{"port":80}]}}"#.to_vec();
    let (code, status) = send(
        &ts,
        "POST",
        &format!("{SVCS}?fieldValidation=Strict"),
        "application/json",
        strict,
    )
    .await;
    assert_status(code, &status, 400, "BadRequest");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.foo\""),
        "{status}"
    );
    assert_eq!(count_services(&ts).await, 0);

    // Stale resourceVersion on update → 409, object unchanged.
    let ok = br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"port":80}]}}"#.to_vec();
    let (code, created) = send(&ts, "POST", SVCS, "application/json", ok).await;
    assert_eq!(code, 201, "{created}");
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = "1".into();
    stale["metadata"]["labels"] = serde_json::json!({"x": "y"});
    let (code, status) = send(
        &ts,
        "PUT",
        &format!("{SVCS}/s"),
        "application/json",
        serde_json::to_vec(&stale).unwrap(),
    )
    .await;
    assert_status(code, &status, 409, "Conflict");
    let (_, now) = send(&ts, "GET", &format!("{SVCS}/s"), "application/json", vec![]).await;
    assert_eq!(
        now["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    // Unknown field in a PATCH with Strict → 422.
    let (code, status) = send(
        &ts,
        "PATCH",
        &format!("{SVCS}/s?fieldValidation=Strict"),
        "application/merge-patch+json",
        br#"{"spec":{"bogus":true}}"#.to_vec(),
    )
    .await;
    assert_status(code, &status, 422, "Invalid");
    // Unknown patch type → 415.
    let (code, status) = send(
        &ts,
        "PATCH",
        &format!("{SVCS}/s"),
        "application/x-nonsense",
        b"{}".to_vec(),
    )
    .await;
    assert_status(code, &status, 415, "UnsupportedMediaType");
    // Unsupported field selector → 400.
    let (code, status) = send(
        &ts,
        "GET",
        &format!("{SVCS}?fieldSelector=spec.bogus%3Dx"),
        "application/json",
        vec![],
    )
    .await;
    assert_status(code, &status, 400, "BadRequest");
    // An unknown dryRun value → 422 against the verb's options kind; nothing written or deleted.
    let other = br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"t"},"spec":{"ports":[{"port":80}]}}"#;
    let dry_cases: [(&str, String, &str, &[u8], &str); 4] = [
        (
            "POST",
            format!("{SVCS}?dryRun=Some"),
            "application/json",
            other,
            "CreateOptions",
        ),
        (
            "PUT",
            format!("{SVCS}/s?dryRun=Some"),
            "application/json",
            &serde_json::to_vec(&created).unwrap(),
            "UpdateOptions",
        ),
        (
            "PATCH",
            format!("{SVCS}/s?dryRun=Some"),
            "application/merge-patch+json",
            br#"{"metadata":{"labels":{"a":"b"}}}"#,
            "PatchOptions",
        ),
        (
            "DELETE",
            format!("{SVCS}/s?dryRun=Some"),
            "application/json",
            b"",
            "DeleteOptions",
        ),
    ];
    for (method, path, ct, body, kind) in dry_cases {
        let (code, status) = send(&ts, method, &path, ct, body.to_vec()).await;
        assert_status(code, &status, 422, "Invalid");
        assert_eq!(
            status["message"],
            format!(
                "{kind}.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{{\"Some\"}}: supported values: \"All\""
            ),
            "{method}"
        );
        assert_eq!(status["details"]["kind"], kind, "{method}");
    }
    let (_, now) = send(&ts, "GET", &format!("{SVCS}/s"), "application/json", vec![]).await;
    assert_eq!(
        now["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    assert_eq!(count_services(&ts).await, 1);

    // Unknown fields are never stored: Ignore drops them silently, Warn drops them with a
    // warning; a wrong type is still 400, before any validation (even with a bad name).
    for (mode, name) in [("Ignore", "ignored"), ("Warn", "warned")] {
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","bogusMeta":1}},"spec":{{"bogus":{{"x":1}},"ports":[{{"port":80,"bogusPort":true}}]}},"bogusTop":"x"}}"#
        );
        let (code, created) = send(
            &ts,
            "POST",
            &format!("{SVCS}?fieldValidation={mode}"),
            "application/json",
            body.into_bytes(),
        )
        .await;
        assert_eq!(code, 201, "{created}");
        let (_, stored) = send(
            &ts,
            "GET",
            &format!("{SVCS}/{name}"),
            "application/json",
            vec![],
        )
        .await;
        for doc in [&created, &stored] {
            let text = doc.to_string();
            assert!(!text.contains("bogus"), "{mode}: {text}");
            assert_eq!(doc["spec"]["ports"][0]["port"], 80, "{mode}: {text}");
        }
    }
    let wrong_type = br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"Not_A_Name"},"spec":{"ports":"eighty"}}"#;
    let (code, status) = send(&ts, "POST", SVCS, "application/json", wrong_type.to_vec()).await;
    assert_status(code, &status, 400, "BadRequest");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("Service in version \"v1\" cannot be handled as a Service: "),
        "{status}"
    );

    // Unknown resource → 404 Status.
    let (code, status) = send(&ts, "GET", "/api/v1/bogus", "application/json", vec![]).await;
    assert_status(code, &status, 404, "NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_never_panic() {
    use rand::{Rng, SeedableRng};
    let ts = TestServer::start().await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let seeds: Vec<&[u8]> = vec![
        br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"f"},"spec":{"ports":[{"port":80}]}}"#,
        br#"{"metadata":{"name":"f","labels":{"a":"b"}},"spec":{"type":"NodePort"}}"#,
        br#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#,
        b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x07Service",
        b"metadata:\n  name: f\n",
    ];
    let targets = [
        ("POST", "/api/v1/namespaces/default/services"),
        ("POST", "/api/v1/namespaces"),
        (
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        ),
        ("POST", "/api/v1/namespaces/default/pods"),
        ("PUT", "/api/v1/namespaces/default/services/f"),
        ("PATCH", "/api/v1/namespaces/default/services/f"),
        ("PUT", "/api/v1/namespaces/default/services/f/status"),
        ("DELETE", "/api/v1/namespaces/default/services/f"),
        ("POST", "/api/v1/nodes"),
        ("POST", "/api/v1/namespaces/default/events"),
    ];
    let cts = [
        "application/json",
        "application/yaml",
        "application/vnd.kubernetes.protobuf",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/json-patch+json",
        "application/apply-patch+yaml",
    ];
    for i in 0..300 {
        let mut body = seeds[i % seeds.len()].to_vec();
        for _ in 0..rng.random_range(0..6) {
            if body.is_empty() {
                break;
            }
            let at = rng.random_range(0..body.len());
            match rng.random_range(0..3) {
                0 => body[at] = rng.random(),
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, b"{}[]\":,0aZ\\"[rng.random_range(0..11)]),
            }
        }
        let (m, p) = targets[i % targets.len()];
        let ct = cts[rng.random_range(0..cts.len())];
        let path = if m == "PATCH" && ct == "application/apply-patch+yaml" {
            format!("{p}?fieldManager=fuzz")
        } else {
            p.to_string()
        };
        let (code, status) = send(&ts, m, &path, ct, body).await;
        assert!(code < 500, "{m} {path} {ct}: {code} {status}");
        if code >= 400 {
            assert_eq!(status["kind"], "Status", "{status}");
            assert_eq!(status["code"], code);
        }
    }
    // The server still answers.
    let (code, _) = send(&ts, "GET", "/api/v1/namespaces", "application/json", vec![]).await;
    assert_eq!(code, 200);
}
