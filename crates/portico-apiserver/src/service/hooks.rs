//! `ObjectHooks` for Services: upstream's create/update/delete flow (defaults, allocated-value
//! patching, clusterIP normalisation, IP family initialisation, allocation, type-change field
//! dropping, validation) with allocations turned into store operations.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Service;
use portico_core::field::FieldError;
use portico_core::service::alloc::{self, AllocFailure};
use portico_core::service::{self as core_svc, strategy};
use portico_store::{Compare, Op};
use serde_json::Value;

use super::state::WriteAlloc;
use super::{SERVICES, ServiceHooks, Shared, ip_address_object, ip_key, node_port_key};
use crate::error::ApiError;
use crate::hooks::{ObjectHooks, Prepared, WriteContext};

/// What a prepared write took and will free; handed back to `finish`.
#[derive(Debug, Default)]
pub(crate) struct Reservation {
    pub ips: Vec<IpAddr>,
    pub ports: Vec<i32>,
    pub release_ips: Vec<IpAddr>,
    pub release_ports: Vec<i32>,
}

pub(crate) fn to_service(v: &Value) -> Result<Service, ApiError> {
    // Decoded from a borrow: no copy of the whole object per write.
    <Service as serde::Deserialize>::deserialize(v)
        .map_err(|e| ApiError::bad_request(format!("decoding Service: {e}")))
}

pub(crate) fn from_service(svc: &Service) -> Result<Value, ApiError> {
    serde_json::to_value(svc).map_err(|e| ApiError::internal(format!("encoding Service: {e}")))
}

fn invalid(name: &str, errs: &[FieldError]) -> ApiError {
    ApiError::invalid(SERVICES, name, errs)
}

/// The common end of a create or update: on validation errors or an encoding failure, give back
/// what `wa` reserved; on a dry run, give it back too but still answer the would-be object;
/// otherwise keep the reservations (the cluster IPs and node ports to commit).
type Kept = (Vec<std::net::IpAddr>, Vec<i32>);
fn settle<R: rand::Rng>(
    wa: WriteAlloc<'_, R>,
    svc: &Service,
    errs: &[FieldError],
    name: &str,
    dry_run: bool,
) -> Result<(Value, Option<Kept>), ApiError> {
    if !errs.is_empty() {
        wa.rollback();
        return Err(invalid(name, errs));
    }
    let value = match from_service(svc) {
        Ok(v) => v,
        Err(e) => {
            wa.rollback();
            return Err(e);
        }
    };
    if dry_run {
        wa.rollback();
        return Ok((value, None));
    }
    Ok((value, Some(wa.keep())))
}

fn failure(name: &str, f: AllocFailure) -> ApiError {
    match f {
        AllocFailure::Invalid(errs) => invalid(name, &errs),
        AllocFailure::Internal(msg) => ApiError::internal(msg),
    }
}

fn svc_name(svc: &Service, ctx: &WriteContext) -> String {
    svc.metadata
        .name
        .clone()
        .unwrap_or_else(|| ctx.name.clone())
}

fn svc_namespace(svc: &Service, ctx: &WriteContext) -> String {
    svc.metadata
        .namespace
        .clone()
        .or_else(|| ctx.namespace.clone())
        .unwrap_or_default()
}

impl Shared {
    /// Store operations for a write's picks and releases.
    pub(crate) fn ops_for(&self, r: &Reservation, namespace: &str, name: &str) -> Prepared {
        let mut p = Prepared::default();
        for ip in &r.ips {
            let key = ip_key(ip);
            p.compares.push(Compare::ModRevision(key.clone(), 0));
            p.ops
                .push(Op::Put(key, ip_address_object(ip, namespace, name)));
        }
        for port in &r.ports {
            let key = node_port_key(*port);
            p.compares.push(Compare::ModRevision(key.clone(), 0));
            p.ops.push(Op::Put(
                key,
                bytes::Bytes::from(format!("{namespace}/{name}")),
            ));
        }
        for ip in &r.release_ips {
            p.ops.push(Op::Delete(ip_key(ip)));
        }
        for port in &r.release_ports {
            p.ops.push(Op::Delete(node_port_key(*port)));
        }
        p
    }

    /// Settles a prepared write: committed picks become plain allocations and releases free
    /// their values; abandoned picks stay marked until the store confirms nobody holds them
    /// (a failed compare usually means another API server took the value).
    pub(crate) fn settle(self: &Arc<Self>, r: Reservation, committed: bool) {
        let mut st = self.lock();
        for ip in &r.ips {
            st.pending_ips.remove(ip);
        }
        for p in &r.ports {
            st.pending_ports.remove(p);
        }
        if committed {
            for ip in r.release_ips {
                st.unmark_ip(ip);
            }
            for p in r.release_ports {
                st.unmark_port(p);
            }
            return;
        }
        drop(st);
        if r.ips.is_empty() && r.ports.is_empty() {
            return;
        }
        let shared = self.clone();
        let check = async move {
            for ip in r.ips {
                if matches!(shared.store.get(&ip_key(&ip)).await, Ok(None)) {
                    shared.lock().unmark_ip(ip);
                }
            }
            for p in r.ports {
                if matches!(shared.store.get(&node_port_key(p)).await, Ok(None)) {
                    shared.lock().unmark_port(p);
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(check);
            }
            Err(_) => {
                // No runtime to ask the store from: keep the values marked; the next sync
                // (watch restart or resync) frees them if nobody holds them.
            }
        }
    }

    fn families(&self) -> Vec<core_svc::IpFamily> {
        self.lock().families.clone()
    }
}

fn token(r: Reservation) -> Option<Box<dyn std::any::Any + Send + Sync>> {
    Some(Box::new(r))
}

#[async_trait]
impl ObjectHooks for ServiceHooks {
    /// `prepare_create` always answers `from_service` of the decoded Service.
    fn reencodes_typed(&self) -> bool {
        true
    }

    async fn prepare_create(
        &self,
        ctx: &WriteContext,
        obj: &mut Value,
    ) -> Result<Prepared, ApiError> {
        self.shared.ensure_synced().await?;
        let mut svc = to_service(obj)?;
        let name = svc_name(&svc, ctx);
        let namespace = svc_namespace(&svc, ctx);
        core_svc::set_defaults(&mut svc);
        strategy::normalize_cluster_ips(&mut svc, None);
        let families = self.shared.families();
        strategy::init_ip_family_fields(&mut svc, None, &families)
            .map_err(|e| invalid(&name, &e))?;

        let mut rng = rand::rng();
        let mut st = self.shared.lock();
        let mut wa = WriteAlloc::new(&mut st, &mut rng);
        if let Err(f) = alloc::allocate_create(&mut svc, &mut wa) {
            wa.rollback();
            return Err(failure(&name, f));
        }
        strategy::prepare_for_create(&mut svc);
        let errs = core_svc::validate_service(&svc);
        let (value, kept) = settle(wa, &svc, &errs, &name, ctx.dry_run)?;
        drop(st);
        *obj = value;
        let Some((ips, ports)) = kept else {
            return Ok(Prepared::default());
        };
        let r = Reservation {
            ips,
            ports,
            ..Default::default()
        };
        let mut p = self.shared.ops_for(&r, &namespace, &name);
        p.token = token(r);
        Ok(p)
    }

    async fn prepare_update(
        &self,
        ctx: &WriteContext,
        old: &Value,
        new: &mut Value,
    ) -> Result<Prepared, ApiError> {
        self.shared.ensure_synced().await?;
        let old_svc = to_service(old)?;
        let mut svc = to_service(new)?;
        let name = svc_name(&svc, ctx);
        let namespace = svc_namespace(&svc, ctx);
        core_svc::set_defaults(&mut svc);

        if ctx.subresource.as_deref() == Some("status") {
            svc.spec = old_svc.spec.clone();
            core_svc::defaults::default_load_balancer_ip_mode(&mut svc);
            let errs = core_svc::validate_service_status_update(&svc, &old_svc);
            if !errs.is_empty() {
                return Err(invalid(&name, &errs));
            }
            *new = from_service(&svc)?;
            return Ok(Prepared::default());
        }

        strategy::patch_allocated_values(&mut svc, &old_svc);
        strategy::normalize_cluster_ips(&mut svc, Some(&old_svc));
        let families = self.shared.families();
        strategy::init_ip_family_fields(&mut svc, Some(&old_svc), &families)
            .map_err(|e| invalid(&name, &e))?;

        let mut rng = rand::rng();
        let mut st = self.shared.lock();
        let mut wa = WriteAlloc::new(&mut st, &mut rng);
        let released = match alloc::allocate_update(&mut svc, &old_svc, &mut wa) {
            Ok(r) => r,
            Err(f) => {
                wa.rollback();
                return Err(failure(&name, f));
            }
        };
        strategy::prepare_for_update(&mut svc, &old_svc);
        let errs = core_svc::validate_service_update(&svc, &old_svc);
        let (value, kept) = settle(wa, &svc, &errs, &name, ctx.dry_run)?;
        drop(st);
        *new = value;
        let Some((ips, ports)) = kept else {
            return Ok(Prepared::default());
        };
        let r = Reservation {
            ips,
            ports,
            release_ips: released.ips,
            release_ports: released.ports,
        };
        let mut p = self.shared.ops_for(&r, &namespace, &name);
        p.token = token(r);
        Ok(p)
    }

    async fn prepare_delete(&self, ctx: &WriteContext, old: &Value) -> Result<Prepared, ApiError> {
        self.shared.ensure_synced().await?;
        if ctx.dry_run {
            return Ok(Prepared::default());
        }
        let svc = to_service(old)?;
        let r = Reservation {
            release_ips: alloc::held_ips(&svc),
            release_ports: alloc::held_node_ports(&svc).into_iter().collect(),
            ..Default::default()
        };
        let mut p = self
            .shared
            .ops_for(&r, &svc_namespace(&svc, ctx), &svc_name(&svc, ctx));
        p.token = token(r);
        Ok(p)
    }

    fn finish(&self, prepared: Prepared, committed: bool) {
        if let Some(r) = prepared
            .token
            .and_then(|t| t.downcast::<Reservation>().ok())
        {
            self.shared.settle(*r, committed);
        }
    }
}
