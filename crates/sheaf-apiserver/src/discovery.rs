//! API discovery: `/api`, `/apis`, `/api/v1`, `/apis/GROUP[/VERSION]` and
//! `/version`, in the shapes kubectl and client libraries expect.

use serde_json::{json, Value};
use sheaf_types::ResourceType;

use crate::registry::Registry;

/// The Kubernetes API version Sheaf speaks.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-sheaf.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn api_group_list(reg: &Registry) -> Value {
    let mut groups: Vec<Value> = reg.groups().iter().map(|g| group_json(g.name, &g.versions)).collect();
    groups.push(group_json(crate::subresources::GROUP, &["v1"]));
    for (g, _) in crate::reviews::groups() {
        groups.push(group_json(g, &["v1"]));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    reg.groups().iter().find(|g| g.name == group).map(|g| {
        let mut v = group_json(g.name, &g.versions);
        v["kind"] = json!("APIGroup");
        v["apiVersion"] = json!("v1");
        v
    })
}

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn resource_entries(rt: &ResourceType) -> Vec<Value> {
    let mut out = vec![json!({
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": VERBS,
        "shortNames": rt.short_names,
        "categories": rt.categories,
        "storageVersionHash": "",
    })];
    if rt.has_status {
        out.push(json!({
            "name": format!("{}/status", rt.plural),
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

/// `APIResourceList` of one group/version, or None if it is not served.
pub fn api_resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = reg.in_group_version(group, version).flat_map(resource_entries).collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}
