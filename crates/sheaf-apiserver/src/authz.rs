//! Who is asking and whether they may: bearer tokens to users and groups,
//! and Kubernetes RBAC evaluated against an in-memory copy of every Role,
//! ClusterRole, RoleBinding and ClusterRoleBinding, kept current by a watch
//! on the store. See `docs/design/rbac.md`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sheaf_store::{ListOptions, Store, WatchItem};
use sheaf_types::rbac::{self, ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};

use crate::error::{ApiError, ApiResult};
use crate::objects::Objects;

pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";

/// An authenticated identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    #[serde(rename = "username")]
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn new(name: &str, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        UserInfo { name: name.to_string(), groups }
    }

    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }

    fn is(&self, s: &Subject, binding_ns: Option<&str>) -> bool {
        match s.kind.as_str() {
            "User" => s.name == self.name,
            "Group" => self.groups.contains(&s.name),
            "ServiceAccount" => {
                let ns = s.namespace.as_deref().or(binding_ns).unwrap_or("");
                self.name == format!("system:serviceaccount:{ns}:{}", s.name)
            }
            _ => false,
        }
    }
}

/// What a request does, in RBAC's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attributes {
    pub verb: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceAttributes>,
    /// For non-resource requests: the URL path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAttributes {
    pub group: String,
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Attributes {
    pub fn resource(verb: &str, r: ResourceAttributes) -> Self {
        Attributes { verb: verb.to_string(), resource: Some(r), path: None }
    }
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes { verb: verb.to_string(), resource: None, path: Some(path.to_string()) }
    }

    /// Kubernetes' refusal text: `virtualmachines.kubevirt.io "web" is
    /// forbidden: User "ann" cannot create resource "virtualmachines" in API
    /// group "kubevirt.io" in the namespace "a"`.
    pub fn forbidden(&self, user: &UserInfo) -> ApiError {
        let who = format!("User {:?}", user.name);
        let msg = match (&self.resource, &self.path) {
            (Some(r), _) => {
                let full = if r.group.is_empty() { r.resource.clone() } else { format!("{}.{}", r.resource, r.group) };
                let res = if r.subresource.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}/{}", r.resource, r.subresource)
                };
                let scope = if r.namespace.is_empty() {
                    " at the cluster scope".to_string()
                } else {
                    format!(" in the namespace {:?}", r.namespace)
                };
                let subject = if r.name.is_empty() { full } else { format!("{full} {:?}", r.name) };
                format!(
                    "{subject} is forbidden: {who} cannot {} resource {res:?} in API group {:?}{scope}; \
                     ask an admin for a role that allows it (`kubectl auth can-i --list` shows yours)",
                    self.verb, r.group
                )
            }
            (None, path) => format!("forbidden: {who} cannot {} path {:?}", self.verb, path.as_deref().unwrap_or("")),
        };
        ApiError::forbidden(msg)
    }
}

// ---------------------------------------------------------------- rules

fn matches_one(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

fn resource_matches(rule: &PolicyRule, r: &ResourceAttributes) -> bool {
    let combined =
        if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
    rule.resources.iter().any(|x| {
        if x == "*" || *x == combined {
            return true;
        }
        if r.subresource.is_empty() {
            return false;
        }
        match x.split_once('/') {
            Some(("*", sub)) => sub == r.subresource,
            Some((res, "*")) => res == r.resource,
            _ => false,
        }
    })
}

/// Whether `rule` allows `a`.
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !matches_one(&rule.verbs, &a.verb) {
        return false;
    }
    match (&a.resource, &a.path) {
        (Some(r), _) => {
            matches_one(&rule.api_groups, &r.group)
                && resource_matches(rule, r)
                && (rule.resource_names.is_empty() || (!r.name.is_empty() && rule.resource_names.contains(&r.name)))
        }
        (None, Some(path)) => rule
            .non_resource_urls
            .iter()
            .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))),
        (None, None) => false,
    }
}

// ---------------------------------------------------------------- the RBAC copy

#[derive(Default)]
struct Snapshot {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    bindings: HashMap<String, Vec<RoleBinding>>,
}

impl Snapshot {
    fn rules_of<'a>(&'a self, kind: &str, name: &str, ns: Option<&str>) -> &'a [PolicyRule] {
        let found = match (kind, ns) {
            ("ClusterRole", _) => self.cluster_roles.get(name),
            ("Role", Some(ns)) => self.roles.get(&(ns.to_string(), name.to_string())),
            _ => None,
        };
        found.map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every rule granted to `user`: cluster-wide ones, and those of
    /// `namespace` when given.
    fn rules_for<'a>(&'a self, user: &UserInfo, namespace: Option<&str>) -> Vec<&'a PolicyRule> {
        let mut out = Vec::new();
        for b in &self.cluster_bindings {
            if b.subjects.iter().any(|s| user.is(s, None)) {
                out.extend(self.rules_of(&b.role_ref.kind, &b.role_ref.name, None));
            }
        }
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            for b in self.bindings.get(ns).into_iter().flatten() {
                if b.subjects.iter().any(|s| user.is(s, Some(ns))) {
                    out.extend(self.rules_of(&b.role_ref.kind, &b.role_ref.name, Some(ns)));
                }
            }
        }
        out
    }
}

/// Every RBAC object, in memory, with the rules evaluation.
pub struct Rbac {
    snapshot: RwLock<Arc<Snapshot>>,
    loaded: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

impl Default for Rbac {
    fn default() -> Self {
        Rbac {
            snapshot: RwLock::new(Arc::default()),
            loaded: std::sync::atomic::AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        }
    }
}

const PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

impl Rbac {
    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether `user` may do `a`. Masters may do anything; discovery and
    /// questions about oneself are open to every authenticated user.
    pub fn allows(&self, user: &UserInfo, a: &Attributes) -> bool {
        if user.is_master() || always_allowed(a) {
            return true;
        }
        let ns = a.resource.as_ref().map(|r| r.namespace.as_str());
        self.current().rules_for(user, ns).into_iter().any(|r| rule_allows(r, a))
    }

    /// The rules `user` has in `namespace` (cluster-wide ones included), for
    /// SelfSubjectRulesReview; masters get `*`.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        if user.is_master() {
            return rbac::builtin_cluster_roles()
                .into_iter()
                .find(|r| r.metadata.name.as_deref() == Some("cluster-admin"))
                .map(|r| r.rules)
                .unwrap_or_default();
        }
        let snap = self.current();
        let mut rules: Vec<PolicyRule> = snap.rules_for(user, Some(namespace)).into_iter().cloned().collect();
        rules.extend(always_allowed_rules().iter().cloned());
        rules
    }

    /// Whether the first full load is done (until then only masters pass).
    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once the copy changes after this call (for tests and for
    /// callers that just wrote an RBAC object).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    async fn load(&self, store: &dyn Store) -> Result<i64, String> {
        let mut snap = Snapshot::default();
        let mut start_after = None;
        let mut revision = None;
        loop {
            let page = store
                .list(ListOptions { prefix: PREFIX.into(), start_after: start_after.clone(), limit: 500, revision })
                .await
                .map_err(|e| e.to_string())?;
            revision = Some(page.revision);
            for kv in &page.items {
                let rest = kv.key.strip_prefix(PREFIX).unwrap_or("");
                let plural = rest.split('/').next().unwrap_or("");
                let bad =
                    |e: serde_json::Error| tracing::warn!(key = %kv.key, error = %e, "unreadable RBAC object skipped");
                match plural {
                    "clusterroles" => match serde_json::from_slice::<ClusterRole>(&kv.value) {
                        Ok(r) => {
                            snap.cluster_roles.insert(r.metadata.name.clone().unwrap_or_default(), r.rules);
                        }
                        Err(e) => bad(e),
                    },
                    "roles" => match serde_json::from_slice::<Role>(&kv.value) {
                        Ok(r) => {
                            let key = (
                                r.metadata.namespace.clone().unwrap_or_default(),
                                r.metadata.name.clone().unwrap_or_default(),
                            );
                            snap.roles.insert(key, r.rules);
                        }
                        Err(e) => bad(e),
                    },
                    "clusterrolebindings" => match serde_json::from_slice::<ClusterRoleBinding>(&kv.value) {
                        Ok(b) => snap.cluster_bindings.push(b),
                        Err(e) => bad(e),
                    },
                    "rolebindings" => match serde_json::from_slice::<RoleBinding>(&kv.value) {
                        Ok(b) => {
                            snap.bindings.entry(b.metadata.namespace.clone().unwrap_or_default()).or_default().push(b)
                        }
                        Err(e) => bad(e),
                    },
                    _ => {}
                }
            }
            match (page.more, page.items.last()) {
                (true, Some(last)) => start_after = Some(last.key.clone()),
                _ => break,
            }
        }
        if let Ok(mut s) = self.snapshot.write() {
            *s = Arc::new(snap);
        }
        self.loaded.store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
        Ok(revision.unwrap_or(0))
    }

    /// Keeps the copy current: a full load, then a watch; every change (a
    /// burst of them at once) loads everything again, as RBAC objects are
    /// few. Runs until the process ends.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            let rev = match self.load(store.as_ref()).await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load roles and bindings; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut stream = match store.watch(PREFIX, rev, false).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch roles and bindings; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Wait for a change, then reload.
            match stream.next().await {
                Some(Ok(WatchItem::Event(_))) => {}
                Some(Ok(WatchItem::Progress(_))) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "RBAC watch ended; reloading");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// What every authenticated user may do: read discovery and health, ask
/// about itself. Built once: it is consulted on every request.
fn always_allowed_rules() -> &'static [PolicyRule] {
    static RULES: std::sync::OnceLock<Vec<PolicyRule>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        vec![
            PolicyRule {
                verbs: vec!["get".into()],
                non_resource_urls: [
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/openapi",
                    "/openapi/*",
                    "/version",
                    "/version/",
                    "/healthz",
                    "/livez",
                    "/readyz",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                ..Default::default()
            },
            PolicyRule {
                verbs: vec!["create".into()],
                api_groups: vec!["authorization.k8s.io".into(), "authentication.k8s.io".into()],
                resources: vec![
                    "selfsubjectaccessreviews".into(),
                    "selfsubjectrulesreviews".into(),
                    "selfsubjectreviews".into(),
                ],
                ..Default::default()
            },
        ]
    })
}

fn always_allowed(a: &Attributes) -> bool {
    always_allowed_rules().iter().any(|r| rule_allows(r, a))
}

// ---------------------------------------------------------------- tokens

/// Tokens to identities: the server's own (admin, node secret) in memory,
/// users' in Secrets of `sheaf-system` (only their SHA-256).
pub struct Authenticator {
    fixed: Vec<([u8; 32], UserInfo)>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The hex SHA-256 of a token, as its Secret keeps it.
pub fn token_digest_hex(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

impl Authenticator {
    pub fn new(fixed: &[(String, UserInfo)]) -> Self {
        Authenticator { fixed: fixed.iter().map(|(t, u)| (digest(t), u.clone())).collect() }
    }

    /// The identity behind `token`, or 401.
    pub async fn authenticate(&self, objects: &Objects, token: &str) -> ApiResult<UserInfo> {
        let d = digest(token);
        // Compare against every fixed token in full: no early exit.
        let mut found = None;
        for (t, u) in &self.fixed {
            if same(t, &d) {
                found = Some(u.clone());
            }
        }
        if let Some(u) = found {
            return Ok(u);
        }
        let Some(id) = rbac::token_id(token) else {
            return Err(ApiError::unauthorized());
        };
        let secrets = objects.registry.find("", "v1", "secrets").cloned().ok_or_else(ApiError::unauthorized)?;
        let secret = match objects.get(&secrets, Some(rbac::TOKEN_NAMESPACE), &rbac::token_secret_name(id)).await {
            Ok(s) => s,
            Err(e) if e.code == http::StatusCode::NOT_FOUND => {
                return Err(revoked());
            }
            Err(e) => return Err(e),
        };
        let s: sheaf_types::core::Secret = serde_json::from_value(secret).map_err(|_| ApiError::unauthorized())?;
        let stored = s.data.get("tokenHash").map(|b| b.0.clone()).unwrap_or_default();
        if s.secret_type() != rbac::TOKEN_SECRET_TYPE || !same(&stored, token_digest_hex(token).as_bytes()) {
            return Err(ApiError::unauthorized());
        }
        if let Some(exp) = s.metadata.annotations.get(rbac::EXPIRES_ANNOTATION) {
            let expired = chrono::DateTime::parse_from_rfc3339(exp).map(|t| t < chrono::Utc::now()).unwrap_or(true);
            if expired {
                return Err(ApiError::new(
                    http::StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    format!("Unauthorized: this token expired at {exp}; ask for a new one (`sheaf user token NAME`)"),
                ));
            }
        }
        let name = s.metadata.labels.get(rbac::USER_LABEL).cloned().unwrap_or_default();
        let users =
            objects.registry.find("sheaf.io", "v1alpha1", "users").cloned().ok_or_else(ApiError::unauthorized)?;
        let user = match objects.get(&users, None, &name).await {
            Ok(u) => u,
            Err(e) if e.code == http::StatusCode::NOT_FOUND => return Err(revoked()),
            Err(e) => return Err(e),
        };
        let user: rbac::User = serde_json::from_value(user).map_err(|_| ApiError::unauthorized())?;
        if user.metadata.deletion_timestamp.is_some() {
            return Err(revoked());
        }
        if user.spec.disabled {
            return Err(ApiError::new(
                http::StatusCode::UNAUTHORIZED,
                "Unauthorized",
                format!("Unauthorized: user {name:?} is disabled"),
            ));
        }
        let groups: Vec<&str> = user.spec.groups.iter().map(String::as_str).collect();
        Ok(UserInfo::new(&name, &groups))
    }
}

fn revoked() -> ApiError {
    ApiError::new(
        http::StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "Unauthorized: this token has been revoked or its user deleted; ask for a new one",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: serde_json::Value) -> PolicyRule {
        serde_json::from_value(v).expect("test input")
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes::resource(
            verb,
            ResourceAttributes {
                group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: ns.into(),
                name: name.into(),
            },
        )
    }

    #[test]
    fn rules_match_like_kubernetes() {
        let r = rule(
            serde_json::json!({"verbs": ["get", "list"], "apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"]}),
        );
        assert!(rule_allows(&r, &res("get", "kubevirt.io", "virtualmachines", "", "a", "x")));
        assert!(!rule_allows(&r, &res("create", "kubevirt.io", "virtualmachines", "", "a", "x")));
        assert!(!rule_allows(&r, &res("get", "", "virtualmachines", "", "a", "x")), "other group");
        assert!(!rule_allows(&r, &res("get", "kubevirt.io", "virtualmachines", "status", "a", "x")), "subresource");
        let sub = rule(serde_json::json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/status", "vm/*"]}));
        assert!(rule_allows(&sub, &res("update", "x", "volumes", "status", "", "v")));
        assert!(rule_allows(&sub, &res("get", "x", "vm", "console", "", "v")));
        assert!(!rule_allows(&sub, &res("get", "x", "vm", "", "", "v")));
        let named = rule(
            serde_json::json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]}),
        );
        assert!(rule_allows(&named, &res("get", "", "secrets", "", "a", "s1")));
        assert!(!rule_allows(&named, &res("get", "", "secrets", "", "a", "s2")));
        assert!(!rule_allows(&named, &res("list", "", "secrets", "", "a", "")), "an unpinned list");
        let urls = rule(serde_json::json!({"verbs": ["get"], "nonResourceURLs": ["/metrics", "/logs/*"]}));
        assert!(rule_allows(&urls, &Attributes::non_resource("get", "/metrics")));
        assert!(rule_allows(&urls, &Attributes::non_resource("get", "/logs/a/b")));
        assert!(!rule_allows(&urls, &Attributes::non_resource("post", "/metrics")));
        assert!(!rule_allows(&urls, &Attributes::non_resource("get", "/metricsx")));
    }

    fn binding(ns: Option<&str>, kind: &str, role: &str, subject: Subject) -> serde_json::Value {
        let mut meta = serde_json::json!({"name": format!("b-{role}")});
        if let Some(ns) = ns {
            meta["namespace"] = ns.into();
        }
        serde_json::json!({"metadata": meta, "subjects": [subject], "roleRef": {"apiGroup": rbac::GROUP, "kind": kind, "name": role}})
    }

    #[test]
    fn bindings_scope_the_rules() {
        let mut snap = Snapshot::default();
        for r in rbac::builtin_cluster_roles() {
            snap.cluster_roles.insert(r.metadata.name.expect("test input"), r.rules);
        }
        let user = |n: &str| Subject { kind: "User".into(), name: n.into(), ..Default::default() };
        snap.bindings.entry("a".into()).or_default().push(
            serde_json::from_value(binding(Some("a"), "ClusterRole", "operator", user("op"))).expect("test input"),
        );
        snap.cluster_bindings.push(
            serde_json::from_value(binding(
                None,
                "ClusterRole",
                "viewer",
                Subject { kind: "Group".into(), name: "watchers".into(), ..Default::default() },
            ))
            .expect("test input"),
        );
        let rbac = Rbac::default();
        *rbac.snapshot.write().expect("test input") = Arc::new(snap);
        let op = UserInfo::new("op", &[]);
        let viewer = UserInfo::new("vi", &["watchers"]);
        let create_vm = |ns: &str| res("create", "kubevirt.io", "virtualmachines", "", ns, "");
        let console = |ns: &str| res("get", "subresources.kubevirt.io", "virtualmachineinstances", "console", ns, "x");
        assert!(rbac.allows(&op, &create_vm("a")));
        assert!(rbac.allows(&op, &console("a")));
        assert!(!rbac.allows(&op, &create_vm("b")), "only in their namespace");
        assert!(!rbac.allows(&op, &res("list", "kubevirt.io", "virtualmachines", "", "", "")), "not across namespaces");
        assert!(!rbac.allows(&op, &res("get", "", "secrets", "", "a", "s")));
        assert!(rbac.allows(&viewer, &res("list", "kubevirt.io", "virtualmachines", "", "", "")));
        assert!(!rbac.allows(&viewer, &create_vm("a")));
        assert!(!rbac.allows(&viewer, &console("a")));
        assert!(!rbac.allows(&viewer, &res("get", "", "secrets", "", "a", "s")));
        assert!(rbac.allows(&viewer, &Attributes::non_resource("get", "/apis/kubevirt.io/v1")), "discovery");
        assert!(rbac.allows(&UserInfo::new("root", &[MASTERS]), &create_vm("z")));
        let msg = create_vm("b").forbidden(&op).message;
        assert!(
            msg.starts_with(
                "virtualmachines.kubevirt.io is forbidden: User \"op\" cannot create resource \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"b\""
            ),
            "{msg}"
        );
    }
}
