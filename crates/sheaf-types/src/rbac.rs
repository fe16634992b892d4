//! `rbac.authorization.k8s.io/v1` Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding with Kubernetes' fields and validation rules, and
//! Sheaf's cluster-scoped `sheaf.io/v1alpha1` User. The API server enforces
//! them on every request (see `docs/design/rbac.md`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::resource::{Column, Kind};
use crate::validation::FieldError;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// One permission: verbs on resources of API groups (optionally only some
/// names), or verbs on non-resource URLs (ClusterRoles only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or `*`.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups; `""` is the core group, `*` all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Plural resource names, `resource/subresource`, `*`, `*/status` or
    /// `resource/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// When set, only objects of these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// URL paths such as `/metrics` or `/healthz/*` (ClusterRoles only).
    #[serde(default, rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

/// A set of rules in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// Selects ClusterRoles whose rules are added to this one (recorded; Sheaf
/// refuses it rather than ignore it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregationRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_role_selectors: Vec<serde_json::Value>,
}

/// A set of rules for the whole cluster, or bound in a namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRole {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_rule: Option<AggregationRule>,
}

/// Who a binding grants to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    pub name: String,
    /// `rbac.authorization.k8s.io` for users and groups, `""` for service
    /// accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// The service account's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The role a binding grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    #[serde(default)]
    pub api_group: String,
    /// `Role` or `ClusterRole`.
    pub kind: String,
    pub name: String,
}

/// Grants a Role or ClusterRole to subjects in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleBinding {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    pub role_ref: RoleRef,
}

/// Grants a ClusterRole to subjects in every namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleBinding {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    pub role_ref: RoleRef,
}

const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "impersonate",
    "bind",
    "escalate",
    "use",
    "approve",
    "sign",
    "*",
];

fn validate_rules(rules: &[PolicyRule], cluster: bool, errs: &mut Vec<FieldError>) {
    for (i, r) in rules.iter().enumerate() {
        let p = format!("rules[{i}]");
        if r.verbs.is_empty() {
            errs.push(FieldError::required(format!("{p}.verbs")));
        }
        for (j, v) in r.verbs.iter().enumerate() {
            // Kubernetes accepts any verb; a lower-case word is all that can
            // ever match, so anything else is surely a typo.
            if v.is_empty() || !(v == "*" || v.chars().all(|c| c.is_ascii_lowercase())) {
                errs.push(FieldError::unsupported(format!("{p}.verbs[{j}]"), v, VERBS));
            }
        }
        let has_resources = !r.api_groups.is_empty() || !r.resources.is_empty();
        if !r.non_resource_urls.is_empty() {
            if !cluster {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    "namespaced rules cannot apply to non-resource URLs; use a ClusterRole",
                ));
            }
            if has_resources {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    "rules cannot apply to both regular resources and non-resource URLs; split them in two rules",
                ));
            }
            for (j, u) in r.non_resource_urls.iter().enumerate() {
                if !u.starts_with('/') && u != "*" {
                    errs.push(FieldError::invalid(
                        format!("{p}.nonResourceURLs[{j}]"),
                        format!("{u:?} must be a path starting with / (or *)"),
                    ));
                }
                if u.len() > 1 && u[..u.len() - 1].contains('*') {
                    errs.push(FieldError::invalid(
                        format!("{p}.nonResourceURLs[{j}]"),
                        format!("{u:?}: * is allowed only as the last character"),
                    ));
                }
            }
            if !r.resource_names.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{p}.resourceNames"),
                    "resourceNames apply to resources, not to non-resource URLs",
                ));
            }
        } else {
            if r.api_groups.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{p}.apiGroups"),
                    "resource rules must supply at least one api group (\"\" is the core group, * all)",
                ));
            }
            if r.resources.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{p}.resources"),
                    "resource rules must supply at least one resource",
                ));
            }
        }
        for (j, res) in r.resources.iter().enumerate() {
            if res.is_empty() || res.split('/').count() > 2 || res.chars().any(|c| c.is_ascii_uppercase()) {
                errs.push(FieldError::invalid(
                    format!("{p}.resources[{j}]"),
                    format!("{res:?} must be a lower-case plural resource name, resource/subresource or *"),
                ));
            }
        }
    }
}

fn validate_binding(
    subjects: &[Subject],
    role_ref: &RoleRef,
    old: Option<&RoleRef>,
    cluster: bool,
    errs: &mut Vec<FieldError>,
) {
    if role_ref.api_group != GROUP {
        errs.push(FieldError::unsupported("roleRef.apiGroup", &role_ref.api_group, &[GROUP]));
    }
    let kinds: &[&str] = if cluster { &["ClusterRole"] } else { &["Role", "ClusterRole"] };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::unsupported("roleRef.kind", &role_ref.kind, kinds));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name"));
    } else if role_ref.name.contains(['/', '%']) {
        errs.push(FieldError::invalid("roleRef.name", format!("{:?} may not contain '/' or '%'", role_ref.name)));
    }
    if let Some(old) = old {
        if old != role_ref {
            errs.push(FieldError::invalid("roleRef", "cannot change roleRef; delete the binding and create a new one"));
        }
    }
    for (i, s) in subjects.iter().enumerate() {
        let p = format!("subjects[{i}]");
        if s.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name")));
        }
        match s.kind.as_str() {
            "User" | "Group" => {
                if let Some(g) = s.api_group.as_deref().filter(|g| *g != GROUP) {
                    errs.push(FieldError::unsupported(format!("{p}.apiGroup"), g, &[GROUP]));
                }
            }
            "ServiceAccount" => {
                if s.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
                    errs.push(FieldError::unsupported(
                        format!("{p}.apiGroup"),
                        s.api_group.as_deref().unwrap_or(""),
                        &[""],
                    ));
                }
                if s.namespace.as_deref().unwrap_or("").is_empty() {
                    errs.push(FieldError::required(format!("{p}.namespace")));
                }
            }
            other => {
                errs.push(FieldError::unsupported(format!("{p}.kind"), other, &["User", "Group", "ServiceAccount"]))
            }
        }
    }
}

impl Kind for Role {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "Role";
    const PLURAL: &'static str = "roles";
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_rules(&self.rules, false, &mut errs);
        errs
    }
    fn description() -> &'static str {
        "Role is a set of permissions (verbs on resources) in one namespace, granted by RoleBindings."
    }
}

impl Kind for ClusterRole {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "ClusterRole";
    const PLURAL: &'static str = "clusterroles";
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_rules(&self.rules, true, &mut errs);
        if self.aggregation_rule.as_ref().is_some_and(|a| !a.cluster_role_selectors.is_empty()) {
            errs.push(FieldError::forbidden(
                "aggregationRule",
                "aggregated ClusterRoles are not supported by Sheaf; list the rules in this role",
            ));
        }
        errs
    }
    fn description() -> &'static str {
        "ClusterRole is a set of permissions, granted everywhere by ClusterRoleBindings or in a namespace by RoleBindings."
    }
}

impl Kind for RoleBinding {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "RoleBinding";
    const PLURAL: &'static str = "rolebindings";
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_binding(&self.subjects, &self.role_ref, old.map(|o| &o.role_ref), false, &mut errs);
        errs
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Role", "string", ".roleRef.name"), Column::new("Kind", "string", ".roleRef.kind")]
    }
    fn description() -> &'static str {
        "RoleBinding grants a Role or ClusterRole to users, groups or service accounts in its namespace."
    }
}

impl Kind for ClusterRoleBinding {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "ClusterRoleBinding";
    const PLURAL: &'static str = "clusterrolebindings";
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_binding(&self.subjects, &self.role_ref, old.map(|o| &o.role_ref), true, &mut errs);
        errs
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Role", "string", ".roleRef.name")]
    }
    fn description() -> &'static str {
        "ClusterRoleBinding grants a ClusterRole to users, groups or service accounts in every namespace."
    }
}

// ---------------------------------------------------------------- User

/// The Secret type of a user token (its SHA-256 only).
pub const TOKEN_SECRET_TYPE: &str = "sheaf.io/user-token";
/// The namespace of token Secrets.
pub const TOKEN_NAMESPACE: &str = "sheaf-system";
/// The label naming the user of a token Secret.
pub const USER_LABEL: &str = "sheaf.io/user";
/// When a token stops working (RFC 3339), on its Secret.
pub const EXPIRES_ANNOTATION: &str = "sheaf.io/expires-at";
/// The prefix of user tokens: `sheaf-<id>.<secret>`.
pub const TOKEN_PREFIX: &str = "sheaf-";

/// The name of the Secret holding token `id`'s digest.
pub fn token_secret_name(id: &str) -> String {
    format!("sheaf-token-{id}")
}

/// The id of a user token `sheaf-<id>.<secret>`, if it has that shape.
pub fn token_id(token: &str) -> Option<&str> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    let ok = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok && !secret.is_empty()).then_some(id)
}

/// A person or program that signs in with tokens (`sheaf user create`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: UserSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// Groups the user is in (bindings may name groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// A disabled user's tokens are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Free text: who this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Kind for User {
    const GROUP: &'static str = "sheaf.io";
    const VERSION: &'static str = "v1alpha1";
    const KIND: &'static str = "User";
    const PLURAL: &'static str = "users";
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let name = self.metadata.name.as_deref().unwrap_or("");
        if name == "admin" || name.starts_with("system:") {
            errs.push(FieldError::invalid(
                "metadata.name",
                format!("{name:?} is reserved for Sheaf's own identities; pick another name"),
            ));
        }
        for (i, g) in self.spec.groups.iter().enumerate() {
            if g.is_empty() || g.len() > 253 || g.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errs.push(FieldError::invalid(format!("spec.groups[{i}]"), format!("{g:?} is not a group name")));
            } else if g == "system:masters" || g == "system:nodes" {
                errs.push(FieldError::forbidden(
                    format!("spec.groups[{i}]"),
                    format!("{g} is Sheaf's own; bind the user to the admin ClusterRole instead"),
                ));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Groups", "string", ".spec.groups"), Column::new("Disabled", "boolean", ".spec.disabled")]
    }
    fn description() -> &'static str {
        "User is a person or program that signs in to Sheaf with tokens; bindings grant it roles."
    }
}

// ---------------------------------------------------------------- built-in roles

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        api_groups: groups.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const ALL: &[&str] = &["*"];

/// The ClusterRoles Sheaf writes at every start: `cluster-admin`, `admin`,
/// `operator` and `viewer` (see `docs/design/rbac.md`).
pub fn builtin_cluster_roles() -> Vec<ClusterRole> {
    let role = |name: &str, rules: Vec<PolicyRule>| ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: [("sheaf.io/builtin".to_string(), "true".to_string())].into(),
            annotations: [("rbac.authorization.kubernetes.io/autoupdate".to_string(), "true".to_string())].into(),
            ..Default::default()
        },
        rules,
        aggregation_rule: None,
    };
    let mut cluster_admin = vec![rule(&["*"], &["*"], ALL)];
    cluster_admin.push(PolicyRule {
        verbs: vec!["*".into()],
        non_resource_urls: vec!["*".into()],
        ..Default::default()
    });
    let operator = vec![
        rule(
            &["kubevirt.io"],
            &["virtualmachines", "virtualmachineinstances", "virtualmachineinstancemigrations"],
            ALL,
        ),
        rule(&["subresources.kubevirt.io"], &["virtualmachines/*", "virtualmachineinstances/*"], ALL),
        rule(&[""], &["persistentvolumeclaims", "configmaps"], ALL),
        rule(
            &["harvesterhci.io"],
            &[
                "virtualmachineimages",
                "virtualmachineimages/upload",
                "virtualmachineimages/download",
                "keypairs",
                "virtualmachinetemplates",
                "virtualmachinetemplateversions",
                "virtualmachinetemplateversions/createvm",
                "virtualmachinebackups",
                "virtualmachinerestores",
                "schedulevmbackups",
            ],
            ALL,
        ),
        rule(&["sheaf.io"], &["volumesnapshots", "backups", "backups/files", "backups/download"], ALL),
        rule(&["sheaf.io"], &["volumes", "replicas", "backuptargets"], READ),
        rule(&["", "events.k8s.io"], &["events", "namespaces", "resourcequotas"], READ),
        rule(&["k8s.cni.cncf.io"], &["network-attachment-definitions"], READ),
        rule(&["network.harvesterhci.io"], &["*"], READ),
        rule(&["storage.k8s.io"], &["storageclasses"], READ),
    ];
    let viewer = vec![
        rule(
            &[
                "",
                "kubevirt.io",
                "harvesterhci.io",
                "sheaf.io",
                "storage.k8s.io",
                "k8s.cni.cncf.io",
                "network.harvesterhci.io",
                "coordination.k8s.io",
                "events.k8s.io",
            ],
            &[
                "namespaces",
                "nodes",
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "resourcequotas",
                "virtualmachines",
                "virtualmachineinstances",
                "virtualmachineinstancemigrations",
                "virtualmachineimages",
                "keypairs",
                "virtualmachinetemplates",
                "virtualmachinetemplateversions",
                "virtualmachinebackups",
                "virtualmachinerestores",
                "schedulevmbackups",
                "volumes",
                "replicas",
                "volumesnapshots",
                "disks",
                "backuptargets",
                "backups",
                "storageclasses",
                "network-attachment-definitions",
                "clusternetworks",
                "vlanconfigs",
                "ippools",
                "leases",
            ],
            READ,
        ),
        rule(&["subresources.kubevirt.io"], &["virtualmachineinstances/guestosinfo"], &["get"]),
    ];
    vec![
        role("cluster-admin", cluster_admin),
        role("admin", vec![rule(&["*"], &["*"], ALL)]),
        role("operator", operator),
        role("viewer", viewer),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_errs(json: serde_json::Value, cluster: bool) -> Vec<String> {
        let rules: Vec<PolicyRule> = serde_json::from_value(json).expect("test input");
        let mut errs = Vec::new();
        validate_rules(&rules, cluster, &mut errs);
        errs.into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect()
    }

    #[test]
    fn rules_are_checked_with_paths() {
        assert!(rules_errs(serde_json::json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]), false)
            .is_empty());
        let e = rules_errs(serde_json::json!([{"verbs": [], "apiGroups": [""], "resources": ["pods"]}]), false);
        assert_eq!(e, ["rules[0].verbs: Required value"]);
        let e = rules_errs(serde_json::json!([{"verbs": ["GET"], "resources": ["Pods"]}]), false);
        assert!(e.iter().any(|m| m.starts_with("rules[0].verbs[0]")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("rules[0].apiGroups")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("rules[0].resources[0]")), "{e:?}");
        let e = rules_errs(serde_json::json!([{"verbs": ["get"], "nonResourceURLs": ["/metrics"]}]), false);
        assert!(e[0].contains("use a ClusterRole"), "{e:?}");
        assert!(rules_errs(
            serde_json::json!([{"verbs": ["get"], "nonResourceURLs": ["/metrics", "/healthz/*"]}]),
            true
        )
        .is_empty());
        let e = rules_errs(serde_json::json!([{"verbs": ["get"], "nonResourceURLs": ["metrics", "/a*b"]}]), true);
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn bindings_are_checked() {
        let rb: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "namespace": "a"},
            "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "ann"}, {"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "r"}]
        }))
        .expect("test input");
        let e: Vec<String> = rb.validate(None).into_iter().map(|e| e.field).collect();
        assert_eq!(e, ["subjects[1].namespace", "subjects[2].kind"]);
        let mut changed = rb.clone();
        changed.role_ref.name = "other".into();
        assert!(changed.validate(Some(&rb)).iter().any(|e| e.field == "roleRef"));
        let crb: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"}, "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"}
        }))
        .expect("test input");
        assert_eq!(crb.validate(None)[0].field, "roleRef.kind");
    }

    #[test]
    fn token_ids() {
        assert_eq!(token_id("sheaf-ab12.secret"), Some("ab12"));
        assert_eq!(token_id("sheaf-AB.secret"), None);
        assert_eq!(token_id("sheaf-ab."), None);
        assert_eq!(token_id("other"), None);
        assert_eq!(token_id("sheaf-.x"), None);
    }

    #[test]
    fn builtin_roles_are_valid() {
        for r in builtin_cluster_roles() {
            assert!(r.validate(None).is_empty(), "{:?}: {:?}", r.metadata.name, r.validate(None));
        }
    }

    #[test]
    fn reserved_user_names() {
        let u = |n: &str, g: &[&str]| User {
            metadata: ObjectMeta { name: Some(n.into()), ..Default::default() },
            spec: UserSpec { groups: g.iter().map(|s| s.to_string()).collect(), ..Default::default() },
        };
        assert!(u("ann", &["team-a"]).validate(None).is_empty());
        assert_eq!(u("admin", &[]).validate(None)[0].field, "metadata.name");
        assert_eq!(u("ann", &["system:masters"]).validate(None)[0].field, "spec.groups[0]");
    }
}
