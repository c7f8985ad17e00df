//! Content negotiation: request bodies in (JSON, YAML, protobuf), the shape of the response
//! (plain JSON or a Table), and JSON responses out.
//!
//! Must not: know about storage; it only turns bytes into values and back.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;

/// Media type of a request body, without parameters, lower-cased.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// A JSON parse error in upstream's words.
fn json_error(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
}

/// Decodes a create/update body by its Content-Type. Empty Content-Type is taken as JSON.
pub fn decode_body(ct: &str, body: &[u8]) -> Result<Value, ApiError> {
    match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(json_error),
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body),
        "application/vnd.kubernetes.protobuf" => decode_protobuf(body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("yaml: invalid UTF-8: {e}")))?;
    // JSON is YAML; parse it strictly first so JSON errors read as JSON errors.
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    let v: Value = serde_saphyr::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?;
    Ok(v)
}

fn decode_protobuf(body: &[u8]) -> Result<Value, ApiError> {
    crate::glue::protobuf_decode(body)
}

/// What the client asked the response to look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Table,
}

/// Reads `Accept`: a meta.k8s.io Table if that is what the client prefers, else JSON.
/// Only protobuf (or nothing we can produce) → 406.
pub fn negotiate(headers: &HeaderMap) -> Result<Output, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Output::Json);
    };
    if accept.trim().is_empty() {
        return Ok(Output::Json);
    }
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(|p| p.trim());
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut as_ = "";
        let mut g = "";
        let mut v = "";
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = val.trim(),
                    "g" => g = val.trim(),
                    "v" => v = val.trim(),
                    _ => {}
                }
            }
        }
        if as_ == "Table" {
            if (media == "application/json" || media == "*/*")
                && g == "meta.k8s.io"
                && (v == "v1" || v == "v1beta1")
            {
                return Ok(Output::Table);
            }
            continue;
        }
        if !as_.is_empty() {
            continue;
        }
        if matches!(
            media.as_str(),
            "application/json" | "*/*" | "application/*" | "application/yaml" | "*"
        ) {
            return Ok(Output::Json);
        }
    }
    Err(ApiError::new(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
    ))
}

/// A JSON response with a status code.
pub fn json(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(s: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(s).unwrap());
        h
    }

    #[test]
    fn negotiation() {
        let t = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(&accept(t)).unwrap(), Output::Table);
        assert_eq!(
            negotiate(&accept("application/json")).unwrap(),
            Output::Json
        );
        assert_eq!(
            negotiate(&accept(
                "application/vnd.kubernetes.protobuf,application/json"
            ))
            .unwrap(),
            Output::Json
        );
        assert_eq!(
            negotiate(&accept("application/json, */*")).unwrap(),
            Output::Json
        );
        assert_eq!(
            negotiate(&accept("application/vnd.kubernetes.protobuf"))
                .unwrap_err()
                .code,
            406
        );
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), Output::Json);
    }

    #[test]
    fn bodies() {
        assert!(decode_body("application/json", b"{\"a\":1}").is_ok());
        assert_eq!(decode_body("application/json", b"{").unwrap_err().code, 400);
        assert_eq!(
            decode_body("application/yaml", b"a: 1\nb: [x]\n").unwrap()["b"][0],
            "x"
        );
        assert_eq!(
            decode_body("application/yaml", b"a: [").unwrap_err().code,
            400
        );
        assert_eq!(decode_body("text/plain", b"x").unwrap_err().code, 415);
    }
}
