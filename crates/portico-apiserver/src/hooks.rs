//! Per-kind write hooks: the registry strategy seam between the generic storage layer and
//! kind-specific semantics (Service defaulting, validation and IP/port allocation).
//!
//! The generic layer decodes the body, fills metadata (uid, timestamps, resourceVersion
//! checks), then calls the kind's hooks, then commits the object together with the hook's
//! extra compares and ops in ONE store transaction. If the transaction fails on a compare that
//! the hook added, the generic layer calls `finish(…, false)` and retries `prepare_*` (a few
//! times) so a racing API server's allocation is simply skipped.

use std::any::Any;

use async_trait::async_trait;
use portico_store::{Compare, Op};
use serde_json::Value;

use crate::error::ApiError;

/// What the generic layer knows about a write when it calls a hook.
#[derive(Clone, Debug)]
pub struct WriteContext {
    /// `dryRun=All`: validate and default, but reserve and persist nothing.
    pub dry_run: bool,
    pub namespace: Option<String>,
    pub name: String,
    /// `Some("status")` for writes to the status subresource.
    pub subresource: Option<String>,
}

/// Extra work a hook wants committed atomically with the object.
#[derive(Default)]
pub struct Prepared {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    /// Hook-private state handed back to `finish` (for example, what was reserved in memory).
    pub token: Option<Box<dyn Any + Send + Sync>>,
}

/// Kind-specific strategy. Every method has a no-op default, so kinds without special
/// semantics need no code.
#[async_trait]
pub trait ObjectHooks: Send + Sync + 'static {
    /// Defaults and validates a new object (full JSON, metadata already filled) and reserves
    /// what it needs. Errors are answered to the client as they are.
    async fn prepare_create(
        &self,
        _ctx: &WriteContext,
        _obj: &mut Value,
    ) -> Result<Prepared, ApiError> {
        Ok(Prepared::default())
    }

    /// Same for an update (PUT, PATCH, apply). `old` is the stored object; `new` is what
    /// would be stored, after the generic layer copied over what the subresource may not change.
    async fn prepare_update(
        &self,
        _ctx: &WriteContext,
        _old: &Value,
        _new: &mut Value,
    ) -> Result<Prepared, ApiError> {
        Ok(Prepared::default())
    }

    /// Called when an object is finally removed from the store (releases allocations).
    async fn prepare_delete(
        &self,
        _ctx: &WriteContext,
        _old: &Value,
    ) -> Result<Prepared, ApiError> {
        Ok(Prepared::default())
    }

    /// Whether `prepare_create` replaces the object with its typed (k8s-openapi) encoding on
    /// success. The generic layer then only type-checks the body instead of round-tripping it.
    fn reencodes_typed(&self) -> bool {
        false
    }

    /// Called once per prepared write after the transaction: `committed` says whether it landed.
    /// Also called with `false` for dry runs and for writes that failed later.
    fn finish(&self, _prepared: Prepared, _committed: bool) {}
}

/// Hooks for kinds with no special semantics.
pub struct NoHooks;

impl ObjectHooks for NoHooks {}
