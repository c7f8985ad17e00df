//! Store key layout. Every API object lives under `/registry/{plural}/…`; the stored value is the
//! object's JSON WITHOUT `metadata.resourceVersion`, which the generic layer fills in from the
//! key's mod revision on every read. Hooks may write other objects (for example IPAddress objects
//! for allocated cluster IPs) directly as ops in the same transaction, following this layout.

/// Key of one object: `/registry/services/default/web`, `/registry/namespaces/default`.
pub fn object_key(plural: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("/registry/{plural}/{ns}/{name}"),
        None => format!("/registry/{plural}/{name}"),
    }
}

/// Prefix of a list: all namespaces (`None`) or one namespace. Always ends with `/`.
pub fn list_prefix(plural: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/registry/{plural}/{ns}/"),
        None => format!("/registry/{plural}/"),
    }
}

/// Node-port reservations (not an API resource): `/portico/nodeports/{port}`; the value names
/// the owning Service (`namespace/name`). One key per port number: TCP and UDP on the same
/// Service share it, as upstream shares one node port for both protocols.
pub const NODE_PORT_PREFIX: &str = "/portico/nodeports/";
