//! EndpointSlice strategy: the defaults kubectl relies on and upstream's validation.
//!
//! Defaults are written into the JSON in place (port `name: ""`, `protocol: TCP`), so fields
//! this server does not model survive; `kubectl describe svc` panics on a port without a name.

use async_trait::async_trait;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_core::validation::{EndpointSliceRules, validate_endpoint_slice_spec};
use serde_json::Value;

use crate::error::{ApiError, Resource};
use crate::hooks::{ObjectHooks, Prepared, WriteContext};

const RESOURCE: Resource<'static> = Resource {
    group: "discovery.k8s.io",
    plural: "endpointslices",
    kind: "EndpointSlice",
};

/// Defaults and validates EndpointSlices.
pub struct EndpointSliceHooks {
    pub rules: EndpointSliceRules,
}

fn default_ports(obj: &mut Value) {
    if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("name")
                .or_insert_with(|| Value::String(String::new()));
            if port.get("protocol").is_none_or(Value::is_null) {
                port.insert("protocol".into(), Value::String("TCP".into()));
            }
            if port.get("name").is_some_and(Value::is_null) {
                port.insert("name".into(), Value::String(String::new()));
            }
        }
    }
}

fn decode(obj: &Value) -> Result<EndpointSlice, ApiError> {
    serde_json::from_value(obj.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "EndpointSlice in version \"v1\" cannot be handled as a EndpointSlice: {e}"
        ))
    })
}

impl EndpointSliceHooks {
    fn check(
        &self,
        ctx: &WriteContext,
        new: &mut Value,
        old: Option<&Value>,
    ) -> Result<Prepared, ApiError> {
        default_ports(new);
        let slice = decode(new)?;
        let old = old.map(decode).transpose()?;
        let errs = validate_endpoint_slice_spec(&slice, old.as_ref(), self.rules);
        if errs.is_empty() {
            Ok(Prepared::default())
        } else {
            Err(ApiError::invalid(RESOURCE, &ctx.name, &errs))
        }
    }
}

#[async_trait]
impl ObjectHooks for EndpointSliceHooks {
    async fn prepare_create(
        &self,
        ctx: &WriteContext,
        obj: &mut Value,
    ) -> Result<Prepared, ApiError> {
        self.check(ctx, obj, None)
    }

    async fn prepare_update(
        &self,
        ctx: &WriteContext,
        old: &Value,
        new: &mut Value,
    ) -> Result<Prepared, ApiError> {
        self.check(ctx, new, Some(old))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> WriteContext {
        WriteContext {
            dry_run: false,
            namespace: Some("default".into()),
            name: "s".into(),
            subresource: None,
        }
    }

    fn slice(address: &str) -> Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "default"},
               "addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [{"addresses": [address]}]})
    }

    #[tokio::test]
    async fn ports_get_an_empty_name_and_tcp() {
        let hooks = EndpointSliceHooks {
            rules: EndpointSliceRules::default(),
        };
        let mut obj = slice("10.0.0.1");
        hooks.prepare_create(&ctx(), &mut obj).await.unwrap();
        assert_eq!(
            obj["ports"][0],
            json!({"port": 80, "name": "", "protocol": "TCP"})
        );
    }

    #[tokio::test]
    async fn loopback_endpoints_are_refused_unless_allowed() {
        let strict = EndpointSliceHooks {
            rules: EndpointSliceRules::default(),
        };
        let err = strict
            .prepare_create(&ctx(), &mut slice("127.0.0.2"))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "EndpointSlice.discovery.k8s.io \"s\" is invalid: endpoints[0].addresses[0]: Invalid value: \"127.0.0.2\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
        );
        let local = EndpointSliceHooks {
            rules: EndpointSliceRules {
                allow_loopback: true,
            },
        };
        assert!(
            local
                .prepare_create(&ctx(), &mut slice("127.0.0.2"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn address_type_is_immutable() {
        let hooks = EndpointSliceHooks {
            rules: EndpointSliceRules::default(),
        };
        let old = slice("10.0.0.1");
        let mut new = slice("10.0.0.1");
        new["addressType"] = json!("IPv6");
        new["endpoints"][0]["addresses"][0] = json!("fd00::1");
        let err = hooks
            .prepare_update(&ctx(), &old, &mut new)
            .await
            .err()
            .unwrap();
        assert!(
            err.message
                .contains("addressType: Invalid value: \"IPv6\": field is immutable"),
            "{}",
            err.message
        );
    }
}
