//! API errors and the one place they become upstream-shaped `Status` bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portico_core::field::FieldError;
use serde_json::{Value, json};

/// An error answered to a client as a Kubernetes `Status` (kube-apiserver's shapes and texts).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status, already in wire form (name, group, kind, causes…).
    pub details: Option<Value>,
}

/// Identifies a resource for messages: `services`, or `endpointslices.discovery.k8s.io`.
#[derive(Clone, Copy, Debug)]
pub struct Resource<'a> {
    pub group: &'a str,
    /// Plural resource name (`services`).
    pub plural: &'a str,
    /// Kind (`Service`), used by `Invalid`.
    pub kind: &'a str,
}

impl Resource<'_> {
    /// `Service` or `EndpointSlice.discovery.k8s.io`, as upstream's GroupKind prints.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
    /// `services` or `endpointslices.discovery.k8s.io`, as upstream's GroupResource prints.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    fn details(&self, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": self.plural});
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn not_found(r: Resource<'_>, name: &str) -> Self {
        ApiError {
            details: Some(r.details(name)),
            ..Self::new(
                404,
                "NotFound",
                format!("{} {:?} not found", r.qualified(), name),
            )
        }
    }
    pub fn already_exists(r: Resource<'_>, name: &str) -> Self {
        ApiError {
            details: Some(r.details(name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", r.qualified(), name),
            )
        }
    }
    /// 409 for a stale resourceVersion or failed precondition.
    pub fn conflict(r: Resource<'_>, name: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
            r.qualified(),
            name
        );
        ApiError {
            details: Some(r.details(name)),
            ..Self::new(409, "Conflict", msg)
        }
    }
    /// 409 Conflict with a free-text message (for example an SSA field-manager conflict).
    pub fn conflict_with(
        r: Resource<'_>,
        name: &str,
        message: impl Into<String>,
        causes: Vec<Value>,
    ) -> Self {
        let mut d = r.details(name);
        if !causes.is_empty() {
            d["causes"] = Value::Array(causes);
        }
        ApiError {
            details: Some(d),
            ..Self::new(409, "Conflict", message)
        }
    }
    /// 422 Invalid with one cause per field error, message as `errors.NewInvalid`.
    pub fn invalid(r: Resource<'_>, name: &str, errs: &[FieldError]) -> Self {
        let joined = if errs.len() == 1 {
            errs[0].to_string()
        } else {
            format!(
                "[{}]",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.kind.reason(), "message": e.body(), "field": e.field}))
            .collect();
        let details = json!({"name": name, "group": r.group, "kind": r.kind, "causes": causes});
        ApiError {
            details: Some(details),
            ..Self::new(
                422,
                "Invalid",
                format!("{} {:?} is invalid: {}", r.qualified_kind(), name, joined),
            )
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})"
            ),
        )
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }

    /// The `Status` object on the wire.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<portico_store::Error> for ApiError {
    fn from(e: portico_store::Error) -> Self {
        match e {
            portico_store::Error::Compacted {
                requested,
                compacted,
            } => ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            portico_store::Error::FutureRevision(r) => ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {r}, current: unknown"),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}
