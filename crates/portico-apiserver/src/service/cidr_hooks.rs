//! Hooks for networking.k8s.io/v1 `ipaddresses` and `servicecidrs`: validation, the Ready
//! condition of a new ServiceCIDR, and keeping the allocator's ranges and bitmaps in step.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};
use portico_core::service::cidr;
use serde_json::Value;

use super::{IPADDRESSES, SERVICECIDRS, Shared, ready_condition};
use crate::error::ApiError;
use crate::hooks::{ObjectHooks, Prepared, WriteContext};

/// Hooks for `ipaddresses` (cluster-scoped). A user-created IPAddress reserves its address.
pub struct IpAddressHooks {
    pub(crate) shared: Arc<Shared>,
}

/// Hooks for `servicecidrs` (cluster-scoped). New CIDRs extend the allocator online.
pub struct ServiceCidrHooks {
    pub(crate) shared: Arc<Shared>,
}

fn decode<T: serde::de::DeserializeOwned>(v: &Value, kind: &str) -> Result<T, ApiError> {
    serde_json::from_value(v.clone())
        .map_err(|e| ApiError::bad_request(format!("decoding {kind}: {e}")))
}

enum Change {
    MarkIp(IpAddr),
    UnmarkIp(IpAddr),
    Cidrs(String, Vec<ipnet::IpNet>),
}

fn token(c: Change) -> Option<Box<dyn std::any::Any + Send + Sync>> {
    Some(Box::new(c))
}

fn apply(shared: &Shared, prepared: Prepared, committed: bool) {
    if !committed {
        return;
    }
    let Some(c) = prepared.token.and_then(|t| t.downcast::<Change>().ok()) else {
        return;
    };
    let mut st = shared.lock();
    match *c {
        Change::MarkIp(ip) => st.mark_ip(ip),
        Change::UnmarkIp(ip) => st.unmark_ip(ip),
        Change::Cidrs(name, cidrs) => st.set_source(&name, cidrs),
    }
}

#[async_trait]
impl ObjectHooks for IpAddressHooks {
    async fn prepare_create(
        &self,
        ctx: &WriteContext,
        obj: &mut Value,
    ) -> Result<Prepared, ApiError> {
        self.shared.ensure_synced().await?;
        let ip: IPAddress = decode(obj, "IPAddress")?;
        let errs = cidr::validate_ip_address(&ip);
        if !errs.is_empty() {
            return Err(ApiError::invalid(IPADDRESSES, &ctx.name, &errs));
        }
        let addr = ctx.name.parse::<IpAddr>().ok();
        Ok(Prepared {
            token: addr.map(Change::MarkIp).and_then(token),
            ..Default::default()
        })
    }

    async fn prepare_update(
        &self,
        ctx: &WriteContext,
        old: &Value,
        new: &mut Value,
    ) -> Result<Prepared, ApiError> {
        let (o, n): (IPAddress, IPAddress) = (decode(old, "IPAddress")?, decode(new, "IPAddress")?);
        let errs = cidr::validate_ip_address_update(&n, &o);
        if !errs.is_empty() {
            return Err(ApiError::invalid(IPADDRESSES, &ctx.name, &errs));
        }
        Ok(Prepared::default())
    }

    async fn prepare_delete(&self, ctx: &WriteContext, old: &Value) -> Result<Prepared, ApiError> {
        let addr = ctx.name.parse::<IpAddr>().ok();
        // Upstream's repair loop re-creates an IPAddress a live Service still holds; here the
        // delete is refused instead, so the address can never be handed out twice meanwhile.
        if let (Some(ip), Some(parent)) = (addr, old.pointer("/spec/parentRef")) {
            let ns = parent
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = parent.get("name").and_then(Value::as_str).unwrap_or("");
            let is_service = parent.get("resource").and_then(Value::as_str) == Some("services");
            if is_service
                && !name.is_empty()
                && let Some(kv) = self
                    .shared
                    .store
                    .get(&crate::keys::object_key("services", Some(ns), name))
                    .await?
                && let Ok(svc) =
                    serde_json::from_slice::<k8s_openapi::api::core::v1::Service>(&kv.value)
                && portico_core::service::alloc::held_ips(&svc).contains(&ip)
            {
                return Err(ApiError::forbidden(format!(
                    "ipaddresses.networking.k8s.io {:?} is forbidden: the address is held by Service {ns}/{name}",
                    ctx.name
                )));
            }
        }
        if ctx.dry_run {
            return Ok(Prepared::default());
        }
        Ok(Prepared {
            token: addr.map(Change::UnmarkIp).and_then(token),
            ..Default::default()
        })
    }

    fn finish(&self, prepared: Prepared, committed: bool) {
        apply(&self.shared, prepared, committed);
    }
}

fn cidrs_of(sc: &ServiceCIDR) -> Vec<ipnet::IpNet> {
    sc.spec
        .as_ref()
        .and_then(|s| s.cidrs.as_ref())
        .map(|v| v.iter().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default()
}

#[async_trait]
impl ObjectHooks for ServiceCidrHooks {
    async fn prepare_create(
        &self,
        ctx: &WriteContext,
        obj: &mut Value,
    ) -> Result<Prepared, ApiError> {
        self.shared.ensure_synced().await?;
        let sc: ServiceCIDR = decode(obj, "ServiceCIDR")?;
        let errs = cidr::validate_service_cidr(&sc);
        if !errs.is_empty() {
            return Err(ApiError::invalid(SERVICECIDRS, &ctx.name, &errs));
        }
        // No controller runs here: a valid ServiceCIDR is usable at once.
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        if let Some(m) = obj.as_object_mut() {
            m.insert(
                "status".into(),
                serde_json::json!({"conditions": [ready_condition(&now)]}),
            );
        }
        let change = Change::Cidrs(ctx.name.clone(), cidrs_of(&sc));
        Ok(Prepared {
            token: if ctx.dry_run { None } else { token(change) },
            ..Default::default()
        })
    }

    async fn prepare_update(
        &self,
        ctx: &WriteContext,
        old: &Value,
        new: &mut Value,
    ) -> Result<Prepared, ApiError> {
        let (o, n): (ServiceCIDR, ServiceCIDR) =
            (decode(old, "ServiceCIDR")?, decode(new, "ServiceCIDR")?);
        if ctx.subresource.as_deref() == Some("status") {
            return Ok(Prepared::default());
        }
        let errs = cidr::validate_service_cidr_update(&n, &o);
        if !errs.is_empty() {
            return Err(ApiError::invalid(SERVICECIDRS, &ctx.name, &errs));
        }
        let change = Change::Cidrs(ctx.name.clone(), cidrs_of(&n));
        Ok(Prepared {
            token: if ctx.dry_run { None } else { token(change) },
            ..Default::default()
        })
    }

    async fn prepare_delete(&self, ctx: &WriteContext, old: &Value) -> Result<Prepared, ApiError> {
        self.shared.ensure_synced().await?;
        let sc: ServiceCIDR = decode(old, "ServiceCIDR")?;
        let mine = cidrs_of(&sc);
        // Refuse while an allocated address would be left without any range (upstream keeps
        // the object Terminating behind a finalizer until then).
        {
            let st = self.shared.lock();
            let others: Vec<ipnet::IpNet> = st
                .cidr_sources
                .iter()
                .filter(|(n, _)| n.as_str() != ctx.name)
                .flat_map(|(_, c)| c.iter().copied())
                .collect();
            for fr in st.ranges.values() {
                for r in &fr.ranges {
                    if !mine.contains(&r.cidr) || others.contains(&r.cidr) {
                        continue;
                    }
                    if r.used() > 0 {
                        return Err(ApiError::new(
                            409,
                            "Conflict",
                            format!(
                                "servicecidrs.networking.k8s.io {:?} is still in use: {} IP addresses in {} are allocated",
                                ctx.name,
                                r.used(),
                                r.cidr
                            ),
                        ));
                    }
                }
            }
        }
        let change = Change::Cidrs(ctx.name.clone(), Vec::new());
        Ok(Prepared {
            token: if ctx.dry_run { None } else { token(change) },
            ..Default::default()
        })
    }

    fn finish(&self, prepared: Prepared, committed: bool) {
        apply(&self.shared, prepared, committed);
    }
}
