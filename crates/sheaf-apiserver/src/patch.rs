//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
//! strategic merge patch (Kubernetes), and server-side apply.
//!
//! Strategic merge patch is a JSON merge patch plus directives (`$patch`,
//! `$retainKeys`, `$deleteFromPrimitiveList/…`, `$setElementOrder/…`) and
//! per-field list strategies. Sheaf knows the list strategies of the
//! metadata and status fields that clients patch (`finalizers` merges as a
//! set, `ownerReferences` by `uid`, `conditions` and `addresses` by `type`);
//! every other list is replaced, as for custom resources.
//!
//! Server-side apply tracks, per field manager, the set of fields it applied
//! (`metadata.managedFields`, `FieldsV1` format). Lists are atomic. Applying
//! removes the fields the manager applied before and no longer applies
//! (unless another manager also owns them), and fails with a conflict when
//! it would change a field another applier owns, unless `force=true`.
//! Fields changed by plain updates are not tracked (documented limitation).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The kinds of PATCH body, by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: Option<&str>) -> Result<Self, ApiError> {
        let ct = ct.unwrap_or("").split(';').next().unwrap_or("").trim();
        match ct {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" | "application/apply-patch+cbor" => {
                Ok(PatchType::Apply)
            }
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format {other:?} - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json, application/apply-patch+yaml"
            ))),
        }
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &ops).map_err(|e| {
        ApiError::new(
            http::StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("the JSON patch could not be applied: {e}"),
        )
    })
}

enum ListStrategy {
    Replace,
    /// Merge a list of scalars as a set.
    Set,
    /// Merge a list of objects by this key.
    Key(&'static str),
}

fn list_strategy(field: &str) -> ListStrategy {
    match field {
        "finalizers" => ListStrategy::Set,
        "ownerReferences" => ListStrategy::Key("uid"),
        "conditions" | "addresses" => ListStrategy::Key("type"),
        _ => ListStrategy::Replace,
    }
}

/// Kubernetes strategic merge patch (see the module docs for its scope).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Value::Object(p) = patch else {
        return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
    };
    smp_object(target, p)
}

fn smp_object(target: &mut Value, patch: &Map<String, Value>) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = patch.clone();
            m.remove("$patch");
            strip_directives(&mut m);
            *target = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(ApiError::bad_request(format!("unknown $patch directive {other:?}"))),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return Ok(()) };
    let retain: Option<Vec<String>> = patch
        .get("$retainKeys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
    for (k, v) in patch {
        if k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (t.get_mut(field), v) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(ApiError::bad_request(format!("unknown strategic merge patch directive {k:?}")));
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(pm) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                smp_object(entry, pm)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(pl) => {
                let merged = match (list_strategy(k), t.remove(k)) {
                    (ListStrategy::Set, Some(Value::Array(mut cur))) => {
                        for x in pl {
                            if !cur.contains(x) {
                                cur.push(x.clone());
                            }
                        }
                        cur
                    }
                    (ListStrategy::Key(key), Some(Value::Array(mut cur))) => {
                        for item in pl {
                            let id = item.get(key).cloned();
                            let pos = id.as_ref().and_then(|id| cur.iter().position(|c| c.get(key) == Some(id)));
                            let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                            match (pos, item) {
                                (Some(i), _) if delete => {
                                    cur.remove(i);
                                }
                                (Some(i), Value::Object(pm)) => smp_object(&mut cur[i], pm)?,
                                (None, _) if delete => {}
                                (_, other) => {
                                    let mut o = other.clone();
                                    if let Value::Object(m) = &mut o {
                                        strip_directives(m);
                                    }
                                    cur.push(o)
                                }
                            }
                        }
                        cur
                    }
                    _ => pl
                        .iter()
                        .cloned()
                        .map(|mut x| {
                            if let Value::Object(m) = &mut x {
                                strip_directives(m);
                            }
                            x
                        })
                        .collect(),
                };
                t.insert(k.clone(), Value::Array(merged));
            }
            scalar => {
                t.insert(k.clone(), scalar.clone());
            }
        }
    }
    if let Some(keep) = retain {
        t.retain(|k, _| keep.iter().any(|r| r == k));
    }
    Ok(())
}

fn strip_directives(m: &mut Map<String, Value>) {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        if let Value::Object(inner) = v {
            strip_directives(inner);
        }
    }
}

// ------------------------------------------------------------ server-side apply

/// Fields that belong to the server, never to a field manager.
fn is_server_field(path: &[&str]) -> bool {
    matches!(path, ["apiVersion"] | ["kind"] | ["status"])
        || matches!(
            path,
            [
                "metadata",
                "name"
                    | "namespace"
                    | "uid"
                    | "resourceVersion"
                    | "generation"
                    | "creationTimestamp"
                    | "deletionTimestamp"
                    | "deletionGracePeriodSeconds"
                    | "managedFields"
                    | "selfLink"
            ]
        )
}

/// The `FieldsV1` set of the leaves of `v` (lists are leaves).
pub fn field_set(v: &Value) -> Value {
    fn walk(v: &Value, path: &mut Vec<String>) -> Value {
        let mut out = Map::new();
        if let Value::Object(m) = v {
            for (k, child) in m {
                path.push(k.clone());
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                if !is_server_field(&p) {
                    match child {
                        // A map whose fields all belong to the server (say
                        // `metadata: {name: x}`) is not applied at all.
                        Value::Object(cm) if !cm.is_empty() => {
                            let sub = walk(child, path);
                            if sub.as_object().is_some_and(|m| !m.is_empty()) {
                                out.insert(format!("f:{k}"), sub);
                            }
                        }
                        _ => {
                            out.insert(format!("f:{k}"), Value::Object(Map::new()));
                        }
                    }
                }
                path.pop();
            }
        }
        Value::Object(out)
    }
    walk(v, &mut Vec::new())
}

/// Leaf paths of a `FieldsV1` set.
fn leaves(fs: &Value) -> Vec<Vec<String>> {
    fn walk(fs: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Object(m) = fs {
            if m.is_empty() && !path.is_empty() {
                out.push(path.clone());
            }
            for (k, child) in m {
                if let Some(name) = k.strip_prefix("f:") {
                    path.push(name.to_string());
                    walk(child, path, out);
                    path.pop();
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(fs, &mut Vec::new(), &mut out);
    out
}

fn contains_path(fs: &Value, path: &[String]) -> bool {
    let mut cur = fs;
    for seg in path {
        match cur.get(format!("f:{seg}")) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, seg| cur.get(seg))
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((_, parents)) = path.split_last() else { return };
    remove_path_shallow(v, path);
    // Drop maps this left empty, leaf first.
    for depth in (1..parents.len() + 1).rev() {
        let prefix = &path[..depth];
        if get_path(v, prefix).is_some_and(|x| x.as_object().is_some_and(Map::is_empty)) {
            remove_path_shallow(v, prefix);
        } else {
            break;
        }
    }
}

fn remove_path_shallow(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = v;
    for seg in parents {
        match cur.get_mut(seg) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Value::Object(m) = cur {
        m.remove(last);
    }
}

/// Deep-merges `applied` into `target`: maps recursively, everything else
/// (scalars, lists) replaced.
fn deep_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => deep_merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

/// The result of an apply: the new object (managedFields updated).
pub fn server_side_apply(
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, ApiError> {
    let applied_set = field_set(applied);
    let mut managed: Vec<Value> =
        current.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
    };
    let previous = managed.iter().find(|e| is_mine(e)).and_then(|e| e.get("fieldsV1")).cloned();

    // Conflicts with other appliers over fields whose value would change.
    let mut conflicts = Vec::new();
    for leaf in leaves(&applied_set) {
        let new_val = get_path(applied, &leaf);
        if get_path(current, &leaf) == new_val {
            continue;
        }
        for e in managed.iter().filter(|e| !is_mine(e)) {
            if e.get("fieldsV1").is_some_and(|fs| contains_path(fs, &leaf)) {
                let who = e.get("manager").and_then(Value::as_str).unwrap_or("unknown");
                conflicts.push((who.to_string(), leaf.join(".")));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let list = conflicts.iter().map(|(m, f)| format!("conflict with {m:?}: .{f}")).collect::<Vec<_>>();
        return Err(ApiError::new(
            http::StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Apply failed with {} conflict{}: {}; rerun with --force-conflicts to take ownership",
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" },
                list.join(", ")
            ),
        ));
    }

    let mut result = current.clone();
    // Forced: take the conflicting fields away from their other owners.
    if force {
        for e in managed.iter_mut().filter(|e| !is_mine(e)) {
            if let Some(fs) = e.get_mut("fieldsV1") {
                for leaf in leaves(&applied_set) {
                    remove_path(fs, &leaf.iter().map(|s| format!("f:{s}")).collect::<Vec<_>>());
                }
            }
        }
    }
    // Fields this manager applied before and no longer applies go away,
    // unless another manager owns them too.
    if let Some(prev) = &previous {
        for leaf in leaves(prev) {
            let still = contains_path(&applied_set, &leaf);
            let shared = managed
                .iter()
                .filter(|e| !is_mine(e))
                .any(|e| e.get("fieldsV1").is_some_and(|fs| contains_path(fs, &leaf)));
            if !still && !shared {
                remove_path(&mut result, &leaf);
            }
        }
    }
    let mut to_merge = applied.clone();
    if let Value::Object(m) = &mut to_merge {
        m.remove("status");
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            for k in ["uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp", "managedFields"]
            {
                meta.remove(k);
            }
        }
    }
    deep_merge(&mut result, &to_merge);

    // An apply that changes nothing keeps its entry (and its time), so that
    // it does not write a new version.
    let unchanged = managed.iter().find(|e| is_mine(e)).filter(|e| {
        e.get("fieldsV1") == Some(&applied_set) && e.get("apiVersion").and_then(Value::as_str) == Some(api_version)
    });
    let entry = match unchanged {
        Some(e) => e.clone(),
        None => serde_json::json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": sheaf_types::Time::now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": applied_set,
        }),
    };
    let position = managed.iter().position(&is_mine);
    managed.retain(|e| !is_mine(e) && e.get("fieldsV1").is_some_and(|fs| !leaves(fs).is_empty()));
    match position {
        Some(i) if i <= managed.len() => managed.insert(i, entry),
        _ => managed.push(entry),
    }
    if let Some(meta) = result.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), Value::Array(managed));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn smp_merges_known_lists_and_honours_directives() {
        let mut obj = json!({
            "metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Paused", "status": "True"}]},
            "spec": {"items": [1, 2]}
        });
        let patch = json!({
            "metadata": {"finalizers": ["b"], "labels": {"y": null, "z": "3"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Paused", "$patch": "delete"}],
                       "$setElementOrder/conditions": [{"type": "Ready"}]},
            "spec": {"items": [3]}
        });
        strategic_merge_patch(&mut obj, &patch).expect("applies");
        assert_eq!(obj["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(obj["metadata"]["labels"], json!({"x": "1", "z": "3"}));
        assert_eq!(obj["status"]["conditions"], json!([{"type": "Ready", "status": "True"}]));
        assert_eq!(obj["spec"]["items"], json!([3]));

        let del = json!({"$deleteFromPrimitiveList/finalizers": ["a"], "metadata": {}});
        let mut m = obj["metadata"].clone();
        strategic_merge_patch(&mut m, &del).expect("applies");
        assert_eq!(m["finalizers"], json!(["b"]));
    }

    #[test]
    fn smp_replace_directive() {
        let mut obj = json!({"spec": {"a": 1, "b": 2}});
        strategic_merge_patch(&mut obj, &json!({"spec": {"$patch": "replace", "c": 3}})).expect("applies");
        assert_eq!(obj, json!({"spec": {"c": 3}}));
    }

    #[test]
    fn apply_removes_fields_no_longer_applied_and_detects_conflicts() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1", "y": "2"}});
        let created =
            server_side_apply(&json!({"metadata": {"name": "c"}}), &first, "alice", false, "v1").expect("applies");
        assert_eq!(created["data"], json!({"x": "1", "y": "2"}));
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}});
        let updated = server_side_apply(&created, &second, "alice", false, "v1").expect("applies");
        assert_eq!(updated["data"], json!({"x": "1"}));
        assert!(updated["metadata"].get("labels").is_none());

        let bob = json!({"data": {"x": "bob"}});
        let err = server_side_apply(&updated, &bob, "bob", false, "v1").expect_err("conflicts");
        assert_eq!(err.code, http::StatusCode::CONFLICT);
        assert!(err.message.contains("alice"), "{}", err.message);
        assert!(err.message.contains("1 conflict:"), "only .data.x conflicts: {}", err.message);
        let forced = server_side_apply(&updated, &bob, "bob", true, "v1").expect("force wins");
        assert_eq!(forced["data"]["x"], json!("bob"));
        // Re-applying the same thing changes nothing, managedFields included.
        let again = server_side_apply(&updated, &second, "alice", false, "v1").expect("applies");
        assert_eq!(again, updated);
        // Same value is no conflict.
        server_side_apply(&updated, &json!({"data": {"x": "1"}}), "carol", false, "v1").expect("no conflict");
    }
}
