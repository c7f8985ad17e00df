//! Who is asking and what they may do: the identities the server knows (its generated tokens,
//! `--token-auth-file`, client certificates signed by its CA) and a fixed policy modelled on
//! upstream's bootstrap ClusterRoles, so a node agent can run with less than admin rights.
//!
//! Owns: `User`, token-file parsing, the policy table and upstream's Forbidden message.
//! Must not: touch the store or the network. The policy is code, not objects: no RBAC API is
//! served, so nobody can widen it at run time.

use std::collections::HashMap;

use serde_json::json;

use crate::error::ApiError;

/// Upstream's group with every right.
pub const MASTERS: &str = "system:masters";
/// The user kube-proxy runs as upstream (bound to `system:node-proxier`).
pub const KUBE_PROXY: &str = "system:kube-proxy";
/// The user portico's DNS runs as (the rights of CoreDNS's `system:coredns` role).
pub const DNS: &str = "system:portico-dns";
/// CoreDNS's own identity, given the same rights so a CoreDNS-shaped setup keeps working.
const COREDNS_SERVICE_ACCOUNT: &str = "system:serviceaccount:kube-system:coredns";

/// An authenticated identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: &str, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        // Every authenticated user is in this group upstream; the policy grants discovery to it.
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User {
            name: name.into(),
            groups,
        }
    }

    pub fn admin() -> Self {
        User::new("kubernetes-admin", &[MASTERS])
    }

    fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a request asks to do, in upstream's authorizer terms.
#[derive(Clone, Debug)]
pub enum Action<'a> {
    Resource {
        /// get, list, watch, create, update, patch, delete, deletecollection.
        verb: &'a str,
        api_group: &'a str,
        resource: &'a str,
        subresource: Option<&'a str>,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    },
    NonResource {
        /// The lower-case HTTP method.
        verb: &'a str,
        path: &'a str,
    },
}

/// One rule of a role: every listed verb on every listed resource of the listed groups.
struct Rule {
    api_groups: &'static [&'static str],
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
}

const EVENTS: Rule = Rule {
    api_groups: &["", "events.k8s.io"],
    resources: &["events"],
    verbs: &["create", "update", "patch"],
};

/// Upstream's `system:node-proxier`.
const NODE_PROXIER: &[Rule] = &[
    Rule {
        api_groups: &[""],
        resources: &["services", "endpoints"],
        verbs: &["list", "watch"],
    },
    Rule {
        api_groups: &[""],
        resources: &["nodes"],
        verbs: &["get", "list", "watch"],
    },
    Rule {
        api_groups: &["discovery.k8s.io"],
        resources: &["endpointslices"],
        verbs: &["list", "watch"],
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["servicecidrs"],
        verbs: &["list", "watch"],
    },
    EVENTS,
];

/// CoreDNS's `system:coredns` ClusterRole.
const CLUSTER_DNS: &[Rule] = &[
    Rule {
        api_groups: &[""],
        resources: &["endpoints", "services", "pods", "namespaces"],
        verbs: &["list", "watch"],
    },
    Rule {
        api_groups: &["discovery.k8s.io"],
        resources: &["endpointslices"],
        verbs: &["list", "watch"],
    },
];

/// Paths every authenticated user may read (upstream's system:discovery,
/// system:basic-user and system:public-info-viewer).
fn public_path(path: &str) -> bool {
    const EXACT: &[&str] = &[
        "/api", "/apis", "/openapi", "/version", "/healthz", "/livez", "/readyz",
    ];
    const PREFIXES: &[&str] = &[
        "/api/",
        "/apis/",
        "/openapi/",
        "/version/",
        "/healthz/",
        "/livez/",
        "/readyz/",
    ];
    EXACT.contains(&path) || PREFIXES.iter().any(|p| path.starts_with(p))
}

fn roles(user: &User) -> Vec<&'static [Rule]> {
    let mut roles = Vec::new();
    if user.name == KUBE_PROXY {
        roles.push(NODE_PROXIER);
    }
    if user.name == DNS || user.name == COREDNS_SERVICE_ACCOUNT {
        roles.push(CLUSTER_DNS);
    }
    roles
}

/// Allows or refuses `action` for `user`; a refusal is upstream's 403 Status.
pub fn authorize(user: &User, action: &Action<'_>) -> Result<(), ApiError> {
    if user.in_group(MASTERS) {
        return Ok(());
    }
    let allowed = match action {
        Action::NonResource { verb, path } => matches!(*verb, "get" | "head") && public_path(path),
        Action::Resource {
            verb,
            api_group,
            resource,
            subresource,
            ..
        } => {
            let full = resource_path(resource, *subresource);
            roles(user).iter().any(|rules| {
                rules.iter().any(|r| {
                    r.api_groups.contains(api_group)
                        && r.resources.contains(&full.as_str())
                        && r.verbs.contains(verb)
                })
            })
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(forbidden(user, action))
    }
}

/// `services` or `services/status`: how rules and messages name a (sub)resource.
fn resource_path(resource: &str, subresource: Option<&str>) -> String {
    match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    }
}

/// kube-apiserver's Forbidden Status for a refused request.
fn forbidden(user: &User, action: &Action<'_>) -> ApiError {
    match action {
        Action::NonResource { verb, path } => {
            let mut e = ApiError::forbidden(format!(
                "forbidden: User {:?} cannot {verb} path {path:?}",
                user.name
            ));
            e.details = Some(json!({}));
            e
        }
        Action::Resource {
            verb,
            api_group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let shown = resource_path(resource, *subresource);
            let scope = match namespace {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".to_string(),
            };
            let reason = format!(
                "User {:?} cannot {verb} resource {shown:?} in API group {api_group:?} {scope}",
                user.name
            );
            let qualified = if api_group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{api_group}")
            };
            let name = name.unwrap_or("");
            let message = if name.is_empty() {
                format!("{qualified} is forbidden: {reason}")
            } else {
                format!("{qualified} {name:?} is forbidden: {reason}")
            };
            let mut e = ApiError::forbidden(message);
            let mut details = json!({"kind": resource});
            if !name.is_empty() {
                details["name"] = json!(name);
            }
            if !api_group.is_empty() {
                details["group"] = json!(api_group);
            }
            e.details = Some(details);
            e
        }
    }
}

/// Parses upstream's `--token-auth-file`: `token,user,uid[,"group1,group2"]` per line;
/// blank lines and `#` comments are skipped.
pub fn parse_token_file(text: &str) -> Result<HashMap<String, User>, String> {
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_csv(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if fields.len() < 3 {
            return Err(format!(
                "line {}: want token,user,uid[,\"group1,group2\"], found {} field(s)",
                i + 1,
                fields.len()
            ));
        }
        let (token, name) = (fields[0].trim(), fields[1].trim());
        if token.is_empty() || name.is_empty() {
            return Err(format!("line {}: empty token or user name", i + 1));
        }
        let groups: Vec<&str> = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if tokens
            .insert(token.to_string(), User::new(name, &groups))
            .is_some()
        {
            return Err(format!("line {}: duplicate token", i + 1));
        }
    }
    Ok(tokens)
}

/// Splits one CSV line with double-quoted fields (`""` is a quote inside quotes).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

/// The user a client certificate names: CN is the user, each O a group (as upstream).
pub fn user_from_certificate(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups: Vec<&str> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    Some(User::new(&name, &groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res<'a>(
        verb: &'a str,
        api_group: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Action<'a> {
        Action::Resource {
            verb,
            api_group,
            resource,
            subresource: None,
            namespace,
            name,
        }
    }

    #[test]
    fn policy() {
        let proxy = User::new(KUBE_PROXY, &[]);
        let dns = User::new(DNS, &[]);
        let alice = User::new("alice", &["developers"]);
        let admin = User::admin();
        let cases: Vec<(&User, Action, bool)> = vec![
            (&admin, res("delete", "", "nodes", None, Some("n1")), true),
            (&proxy, res("list", "", "services", None, None), true),
            (
                &proxy,
                res("watch", "discovery.k8s.io", "endpointslices", None, None),
                true,
            ),
            (&proxy, res("get", "", "nodes", None, Some("n1")), true),
            (
                &proxy,
                res("create", "", "events", Some("default"), None),
                true,
            ),
            (
                &proxy,
                res("create", "", "services", Some("default"), None),
                false,
            ),
            (
                &proxy,
                res("get", "", "services", Some("default"), Some("web")),
                false,
            ),
            (&proxy, res("list", "", "pods", None, None), false),
            (&dns, res("list", "", "pods", None, None), true),
            (&dns, res("watch", "", "namespaces", None, None), true),
            (
                &dns,
                res("watch", "discovery.k8s.io", "endpointslices", None, None),
                true,
            ),
            (
                &dns,
                res("delete", "", "services", Some("default"), Some("web")),
                false,
            ),
            (&dns, res("list", "", "nodes", None, None), false),
            (
                &alice,
                res("list", "", "services", Some("default"), None),
                false,
            ),
            (
                &alice,
                Action::NonResource {
                    verb: "get",
                    path: "/version",
                },
                true,
            ),
            (
                &alice,
                Action::NonResource {
                    verb: "get",
                    path: "/apis/discovery.k8s.io/v1",
                },
                true,
            ),
            (
                &alice,
                Action::NonResource {
                    verb: "get",
                    path: "/metrics",
                },
                false,
            ),
            (
                &alice,
                Action::NonResource {
                    verb: "post",
                    path: "/api",
                },
                false,
            ),
            (
                &proxy,
                Action::Resource {
                    verb: "update",
                    api_group: "",
                    resource: "services",
                    subresource: Some("status"),
                    namespace: Some("default"),
                    name: Some("web"),
                },
                false,
            ),
        ];
        for (user, action, want) in cases {
            assert_eq!(
                authorize(user, &action).is_ok(),
                want,
                "{} {action:?}",
                user.name
            );
        }
    }

    #[test]
    fn forbidden_messages_match_upstream() {
        let proxy = User::new(KUBE_PROXY, &[]);
        let cases = [
            (
                res("create", "", "services", Some("default"), None),
                "services is forbidden: User \"system:kube-proxy\" cannot create resource \"services\" in API group \"\" in the namespace \"default\"",
            ),
            (
                res("delete", "", "nodes", None, Some("n1")),
                "nodes \"n1\" is forbidden: User \"system:kube-proxy\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope",
            ),
            (
                res(
                    "create",
                    "discovery.k8s.io",
                    "endpointslices",
                    Some("ns1"),
                    None,
                ),
                "endpointslices.discovery.k8s.io is forbidden: User \"system:kube-proxy\" cannot create resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"ns1\"",
            ),
            (
                Action::Resource {
                    verb: "patch",
                    api_group: "",
                    resource: "services",
                    subresource: Some("status"),
                    namespace: Some("default"),
                    name: Some("web"),
                },
                "services \"web\" is forbidden: User \"system:kube-proxy\" cannot patch resource \"services/status\" in API group \"\" in the namespace \"default\"",
            ),
            (
                Action::NonResource {
                    verb: "get",
                    path: "/metrics",
                },
                "forbidden: User \"system:kube-proxy\" cannot get path \"/metrics\"",
            ),
        ];
        for (action, want) in cases {
            let e = authorize(&proxy, &action).expect_err("refused");
            assert_eq!(e.code, 403);
            assert_eq!(e.reason, "Forbidden");
            assert_eq!(e.message, want);
        }
    }

    #[test]
    fn token_files() {
        let text = "# comment\n\ntok1,alice,1001\ntok2,bob,1002,\"dev,ops\"\ntok3, system:kube-proxy ,3,system:nodes\n";
        let tokens = parse_token_file(text).expect("valid");
        assert_eq!(tokens["tok1"].name, "alice");
        assert_eq!(
            tokens["tok2"].groups,
            ["dev", "ops", "system:authenticated"]
        );
        assert_eq!(tokens["tok3"].name, "system:kube-proxy");
        let bad = [
            ("tok1,alice\n", "line 1: want token,user,uid"),
            ("a,b,c\na,d,e\n", "line 2: duplicate token"),
            ("a,b,c,\"dev\n", "line 1: unterminated quoted field"),
            (",b,c\n", "line 1: empty token or user name"),
        ];
        for (text, want) in bad {
            let err = parse_token_file(text).expect_err(text);
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
    }
}
