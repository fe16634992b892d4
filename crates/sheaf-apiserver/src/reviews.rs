//! Questions about access, as Kubernetes answers them:
//! SelfSubjectAccessReview (`kubectl auth can-i VERB RESOURCE`),
//! SelfSubjectRulesReview (`kubectl auth can-i --list`), SubjectAccessReview
//! (for admins, about anyone), SelfSubjectReview (`kubectl auth whoami`),
//! and impersonation (`kubectl --as USER --as-group GROUP`).

use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::authz::{Attributes, ResourceAttributes, UserInfo};
use crate::error::{ApiError, ApiResult};
use crate::server::ApiServer;

pub const AUTHORIZATION: &str = "authorization.k8s.io";
pub const AUTHENTICATION: &str = "authentication.k8s.io";

/// Discovery of the two groups: `(group, resource list)`.
pub fn groups() -> [(&'static str, Value); 2] {
    let res = |name: &str, kind: &str| json!({"name": name, "singularName": "", "namespaced": false, "kind": kind, "verbs": ["create"]});
    [
        (
            AUTHORIZATION,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{AUTHORIZATION}/v1"),
                "resources": [res("selfsubjectaccessreviews", "SelfSubjectAccessReview"),
                              res("selfsubjectrulesreviews", "SelfSubjectRulesReview"),
                              res("subjectaccessreviews", "SubjectAccessReview")]}),
        ),
        (
            AUTHENTICATION,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{AUTHENTICATION}/v1"),
                "resources": [res("selfsubjectreviews", "SelfSubjectReview")]}),
        ),
    ]
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    v.pointer(path).and_then(Value::as_str).unwrap_or("")
}

fn attributes_of(spec: &Value) -> ApiResult<Attributes> {
    if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        let verb = str_at(r, "/verb");
        if verb.is_empty() {
            return Err(ApiError::bad_request("spec.resourceAttributes.verb is required, for example \"create\""));
        }
        // kubectl sends `resource.group` as the resource when discovery
        // does not list it (`virtualmachineinstances.subresources.kubevirt.io`
        // with `--subresource console`): split it, as no core resource has
        // a dot.
        let (mut group, mut resource) = (str_at(r, "/group").to_string(), str_at(r, "/resource").to_string());
        if group.is_empty() {
            if let Some((res, g)) = resource.clone().split_once('.') {
                (resource, group) = (res.to_string(), g.to_string());
            }
        }
        Ok(Attributes::resource(
            verb,
            ResourceAttributes {
                group,
                resource,
                subresource: str_at(r, "/subresource").to_string(),
                namespace: str_at(r, "/namespace").to_string(),
                name: str_at(r, "/name").to_string(),
            },
        ))
    } else if let Some(n) = spec.get("nonResourceAttributes").filter(|r| r.is_object()) {
        let (path, verb) = (str_at(n, "/path"), str_at(n, "/verb"));
        if path.is_empty() || verb.is_empty() {
            return Err(ApiError::bad_request("spec.nonResourceAttributes needs both path and verb"));
        }
        Ok(Attributes::non_resource(verb, path))
    } else {
        Err(ApiError::bad_request(
            "spec needs resourceAttributes (verb, group, resource, namespace, name) or nonResourceAttributes (path, verb)",
        ))
    }
}

fn review_answer(kind: &str, group: &str, body: &Value, allowed: bool, reason: String) -> Value {
    json!({
        "kind": kind,
        "apiVersion": format!("{group}/v1"),
        "metadata": {"creationTimestamp": null},
        "spec": body.get("spec").cloned().unwrap_or(Value::Null),
        "status": {"allowed": allowed, "reason": reason},
    })
}

/// POST on one of the review resources.
pub fn handle(
    s: &ApiServer,
    caller: &UserInfo,
    group: &str,
    plural: &str,
    body: &Value,
) -> ApiResult<(StatusCode, Value)> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the review must be a JSON object"));
    }
    match (group, plural) {
        (AUTHORIZATION, "selfsubjectaccessreviews") => {
            let a = attributes_of(body.get("spec").unwrap_or(&Value::Null))?;
            let allowed = s.rbac.allows(caller, &a);
            // Like Kubernetes: a reason for an allowance, none for a refusal
            // (kubectl then prints a bare "no").
            let reason = if allowed { "allowed by RBAC".to_string() } else { String::new() };
            Ok((StatusCode::CREATED, review_answer("SelfSubjectAccessReview", AUTHORIZATION, body, allowed, reason)))
        }
        (AUTHORIZATION, "subjectaccessreviews") => {
            let asker = Attributes::resource(
                "create",
                ResourceAttributes { group: AUTHORIZATION.into(), resource: plural.into(), ..Default::default() },
            );
            s.authorize(caller, &asker)?;
            let spec = body.get("spec").unwrap_or(&Value::Null);
            let user = str_at(spec, "/user");
            if user.is_empty() {
                return Err(ApiError::bad_request("spec.user is required"));
            }
            let groups: Vec<&str> =
                spec.get("groups").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            let subject = UserInfo::new(user, &groups);
            let a = attributes_of(spec)?;
            let allowed = s.rbac.allows(&subject, &a);
            let reason = if allowed { "allowed by RBAC".to_string() } else { String::new() };
            Ok((StatusCode::CREATED, review_answer("SubjectAccessReview", AUTHORIZATION, body, allowed, reason)))
        }
        (AUTHORIZATION, "selfsubjectrulesreviews") => {
            let ns = str_at(body, "/spec/namespace");
            let rules = s.rbac.rules_for(caller, ns);
            let (resource, non_resource): (Vec<_>, Vec<_>) =
                rules.into_iter().partition(|r| r.non_resource_urls.is_empty());
            let resource_rules: Vec<Value> = resource
                .iter()
                .map(|r| json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources, "resourceNames": r.resource_names}))
                .collect();
            let non_resource_rules: Vec<Value> = non_resource
                .iter()
                .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
                .collect();
            Ok((
                StatusCode::CREATED,
                json!({
                    "kind": "SelfSubjectRulesReview", "apiVersion": format!("{AUTHORIZATION}/v1"),
                    "metadata": {"creationTimestamp": null},
                    "spec": {"namespace": ns},
                    "status": {"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false},
                }),
            ))
        }
        (AUTHENTICATION, "selfsubjectreviews") => Ok((
            StatusCode::CREATED,
            json!({
                "kind": "SelfSubjectReview", "apiVersion": format!("{AUTHENTICATION}/v1"),
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": caller.name, "groups": caller.groups}},
            }),
        )),
        _ => Err(ApiError::not_found_msg(format!(
            "{group}/v1 has no resource {plural:?}; it serves selfsubjectaccessreviews, selfsubjectrulesreviews, \
             subjectaccessreviews (authorization.k8s.io) and selfsubjectreviews (authentication.k8s.io)"
        ))),
    }
}

/// Applies `Impersonate-User` / `Impersonate-Group`: the caller must be
/// allowed `impersonate` on those users and groups. Returns the identity
/// to act as and, when it changed, who really asked.
pub fn impersonate(
    s: &ApiServer,
    caller: UserInfo,
    headers: &HeaderMap,
) -> Result<(UserInfo, Option<String>), (UserInfo, ApiError)> {
    let user = headers.get("impersonate-user").and_then(|v| v.to_str().ok()).map(str::to_string);
    let groups: Vec<String> =
        headers.get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    let Some(user) = user else {
        if groups.is_empty() {
            return Ok((caller, None));
        }
        return Err((caller, ApiError::bad_request("Impersonate-Group needs Impersonate-User as well")));
    };
    let check = |resource: &str, name: &str| {
        let a = Attributes::resource(
            "impersonate",
            ResourceAttributes { resource: resource.into(), name: name.into(), ..Default::default() },
        );
        s.authorize(&caller, &a)
    };
    if let Err(e) = check("users", &user) {
        return Err((caller, e));
    }
    for g in &groups {
        if let Err(e) = check("groups", g) {
            return Err((caller, e));
        }
    }
    let by = caller.name.clone();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    Ok((UserInfo::new(&user, &groups), Some(by)))
}
