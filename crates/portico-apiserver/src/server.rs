//! The HTTP surface: one axum router that authenticates, counts, limits bodies and dispatches
//! to discovery, OpenAPI, health, metrics and the resource handlers; and the HTTPS accept loop
//! that serves it with rustls (HTTP/2 and HTTP/1.1, optional client certificates).
//!
//! Must not: hold resource semantics (those are in `handlers`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::authz::{self, Action, User};
use crate::codec;
use crate::discovery;
use crate::error::ApiError;
use crate::handlers::{Api, Query, Target, parse_path};
use crate::metrics::{Labels, Metrics};

/// Largest request body accepted (upstream's 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The user named by a verified client certificate, attached to each request of the connection.
#[derive(Clone, Debug)]
pub struct ClientCertUser(pub User);

/// Router state.
pub struct Server {
    pub api: Arc<Api>,
    pub metrics: Metrics,
    /// Bearer tokens and whom they authenticate.
    pub tokens: Vec<(String, User)>,
    pub ready: AtomicBool,
    pub server_address: String,
}

pub fn router(server: Arc<Server>) -> Router {
    Router::new().fallback(handle).with_state(server)
}

fn is_health(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

fn authenticate(server: &Server, req: &Request) -> Option<User> {
    if let Some(ClientCertUser(user)) = req.extensions().get::<ClientCertUser>() {
        return Some(user.clone());
    }
    let auth = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ").map(str::trim)?;
    // Compare with every token so the time taken does not tell which one nearly matched.
    server
        .tokens
        .iter()
        .fold(None, |found, (known, user)| {
            let matches = constant_time_eq(known.as_bytes(), token.as_bytes());
            found.or(matches.then_some(user))
        })
        .cloned()
}

/// The authorizer's view of a request: its verb, resource and scope.
fn action<'a>(method: &Method, target: Option<&'a Target>, q: &Query, path: &'a str) -> Action<'a> {
    let Some(t) = target else {
        let verb = match *method {
            Method::GET => "get",
            Method::HEAD => "head",
            Method::POST => "post",
            Method::PUT => "put",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "options",
        };
        return Action::NonResource { verb, path };
    };
    let (info, ns, name, sub, collection) = match t {
        Target::Collection { info, ns } => (*info, ns.as_deref(), None, None, true),
        Target::Object {
            info,
            ns,
            name,
            sub,
        } => (
            *info,
            ns.as_deref(),
            Some(name.as_str()),
            sub.as_deref(),
            false,
        ),
    };
    let verb = match (method.as_str(), collection) {
        ("GET" | "HEAD", _) if q.flag("watch") => "watch",
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => "unknown",
    };
    // Upstream scopes a namespace object to itself.
    let namespace = if info.plural == "namespaces" {
        name.or(ns)
    } else {
        ns
    };
    Action::Resource {
        verb,
        api_group: info.group,
        resource: info.plural,
        subresource: sub,
        namespace,
        name,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(code: StatusCode, body: &'static str) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_found() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn handle(State(server): State<Arc<Server>>, req: Request) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    if is_health(&path) {
        if path.starts_with("/readyz") && !server.ready.load(Ordering::Relaxed) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "[-]portico-ready failed: not ready\nreadyz check failed\n",
            );
        }
        return text(StatusCode::OK, "ok");
    }
    let Some(user) = authenticate(&server, &req) else {
        return ApiError::unauthorized().into_response();
    };
    let method = req.method().clone();
    let query = req.uri().query().map(String::from);
    let (parts, body) = req.into_parts();
    let target = parse_path(&path);
    let q = match Query::parse(query.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = authz::authorize(&user, &action(&method, target.as_ref(), &q, &path)) {
        return e.into_response();
    }
    let labels = metric_labels(&method, target.as_ref(), &q, &parts.headers);
    let resp = match read_body(body).await {
        Err(e) => e.into_response(),
        Ok(body) => match target {
            Some(t) => match server.api.serve(&method, t, &q, &parts.headers, body).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            },
            None => match non_resource(&server, &method, &path, &q, &parts.headers).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            },
        },
    };
    if let Some(l) = labels {
        server
            .metrics
            .observe(l, resp.status().as_u16(), started.elapsed());
    }
    resp
}

/// Reads the body up to [`MAX_BODY`]. A larger body is drained (up to a hard cap) before the
/// 413, so HTTP/1.1 clients still writing it read the Status instead of a broken pipe.
async fn read_body(mut body: Body) -> Result<bytes::Bytes, ApiError> {
    const DRAIN_CAP: usize = 64 * 1024 * 1024;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("error reading request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_CAP {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::too_large());
    }
    Ok(buf.freeze())
}

fn metric_labels(
    method: &Method,
    target: Option<&Target>,
    q: &Query,
    headers: &axum::http::HeaderMap,
) -> Option<Labels> {
    let t = target?;
    let info = t.info();
    let (is_collection, sub) = match t {
        Target::Collection { .. } => (true, ""),
        Target::Object { sub, .. } => (false, sub.as_deref().unwrap_or("")),
    };
    let verb = match (method.as_str(), is_collection) {
        ("GET", true) if q.flag("watch") => "WATCH",
        ("GET", true) => "LIST",
        ("GET", false) => "GET",
        ("PATCH", _) if codec::content_type(headers) == "application/apply-patch+yaml" => "APPLY",
        (m, _) => m,
    };
    Some(Labels {
        verb: verb.to_string(),
        group: info.group.to_string(),
        version: info.version.to_string(),
        resource: info.plural.to_string(),
        subresource: sub.to_string(),
    })
}

async fn non_resource(
    server: &Server,
    method: &Method,
    path: &str,
    q: &Query,
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(not_found());
    }
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    Ok(match segs.as_slice() {
        ["version"] => codec::json(StatusCode::OK, &discovery::version()),
        ["api"] => discovery::api(headers, &server.server_address),
        ["apis"] => discovery::apis(headers),
        ["api", v] => codec::json(
            StatusCode::OK,
            &discovery::resource_list("", v).ok_or_else(not_found)?,
        ),
        ["apis", g] => codec::json(StatusCode::OK, &discovery::group(g).ok_or_else(not_found)?),
        ["apis", g, v] => codec::json(
            StatusCode::OK,
            &discovery::resource_list(g, v).ok_or_else(not_found)?,
        ),
        ["metrics"] => {
            let mut r = server.metrics.render().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        ["openapi", "v2"] => {
            let doc = crate::glue::openapi_v2().ok_or_else(not_found)?;
            let mut r = doc.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            r
        }
        ["openapi", "v3"] => codec::json(StatusCode::OK, &crate::glue::openapi_v3_index()),
        ["openapi", "v3", rest @ ..] => {
            let gv = rest.join("/");
            let (doc, hash) = crate::glue::openapi_v3_document(&gv).ok_or_else(not_found)?;
            let mut r = codec::json(StatusCode::OK, &doc);
            if let Ok(v) = HeaderValue::from_str(&format!("\"{hash}\"")) {
                r.headers_mut().insert(header::ETAG, v);
            }
            let cc = if q.get("hash") == Some(hash.as_str()) {
                "public, immutable"
            } else {
                "no-cache, private"
            };
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
            r
        }
        _ => return Err(not_found()),
    })
}

/// Serves `app` over HTTPS on `listener` until `shutdown` is cancelled.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                _ => return,
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| authz::user_from_certificate(der))
                .map(ClientCertUser);
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(Body::new);
                    if let Some(u) = &cert_user {
                        req.extensions_mut().insert(u.clone());
                    }
                    let app = app.clone();
                    async move { tower::ServiceExt::oneshot(app, req).await }
                });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}
