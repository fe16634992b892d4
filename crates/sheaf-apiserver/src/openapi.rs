//! OpenAPI v3 documents, one per group/version, generated from the typed
//! kinds. `kubectl explain` reads them, and kubectl checks them to learn
//! that the server validates fields itself (`fieldValidation`).

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sheaf_types::ResourceType;

use crate::registry::Registry;

/// The OpenAPI documents, built once at start-up.
pub struct OpenApi {
    /// "api/v1" or "apis/GROUP/VERSION" → (document, hash).
    docs: BTreeMap<String, (Value, String)>,
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Kubernetes' schemas point at other schemas with `allOf: [{$ref}]` and mark
/// optional values `nullable`; rewrite schemars' `anyOf: [X, {type: null}]`
/// and `type: [T, "null"]` into that shape, which kubectl explain reads.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(any)) = m.get("anyOf") {
                let is_null =
                    |s: &Value| s.get("type") == Some(&json!("null")) || s.get("enum") == Some(&json!([null]));
                let non_null: Vec<Value> = any.iter().filter(|s| !is_null(s)).cloned().collect();
                if non_null.len() == 1 && any.len() == 2 {
                    m.remove("anyOf");
                    let inner = non_null.into_iter().next().unwrap_or(Value::Null);
                    if inner.get("$ref").is_some() {
                        m.insert("allOf".into(), json!([inner]));
                    } else if let Value::Object(im) = inner {
                        for (k, val) in im {
                            m.entry(k).or_insert(val);
                        }
                    }
                    m.insert("nullable".into(), json!(true));
                }
            }
            if let Some(Value::Array(types)) = m.get("type") {
                let non_null: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                if non_null.len() == 1 {
                    m.insert("type".into(), non_null[0].clone());
                    m.insert("nullable".into(), json!(true));
                }
            }
            // A $ref with siblings (description) is not allowed in 3.0.
            if m.contains_key("$ref") && m.len() > 1 {
                if let Some(r) = m.remove("$ref") {
                    m.insert("allOf".into(), json!([{"$ref": r}]));
                }
            }
            for val in m.values_mut() {
                normalize(val);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Replaces references to schemas that are not objects (string enums,
/// quantities, times) by their content, so that explain prints `<string>`.
fn inline_scalars(schemas: &mut Map<String, Value>) {
    let scalars: BTreeMap<String, Value> = schemas
        .iter()
        .filter(|(_, s)| s.get("properties").is_none() && s.get("type") != Some(&json!("object")))
        .map(|(k, s)| (format!("#/components/schemas/{k}"), s.clone()))
        .collect();
    fn walk(v: &mut Value, scalars: &BTreeMap<String, Value>) {
        match v {
            Value::Object(m) => {
                if let Some(target) = m.get("$ref").and_then(Value::as_str).and_then(|r| scalars.get(r)).cloned() {
                    m.remove("$ref");
                    if let Value::Object(t) = target {
                        for (k, val) in t {
                            m.entry(k).or_insert(val);
                        }
                    }
                }
                for val in m.values_mut() {
                    walk(val, scalars);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, scalars)),
            _ => {}
        }
    }
    for s in schemas.values_mut() {
        walk(s, &scalars);
    }
}

fn gvk(rt: &ResourceType) -> Value {
    json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}])
}

fn param(name: &str, location: &str, description: &str) -> Value {
    json!({"name": name, "in": location, "description": description, "schema": {"type": "string"}, "uniqueItems": true})
}

fn operation(rt: &ResourceType, action: &str, schema_ref: &str, body_types: &[&str], params: Vec<Value>) -> Value {
    let mut op = json!({
        "operationId": format!("{action}{}", rt.kind),
        "tags": [rt.api_version()],
        "parameters": params,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}},
            "401": {"description": "Unauthorized"}
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(rt)[0].clone(),
    });
    if !body_types.is_empty() {
        let content: Map<String, Value> =
            body_types.iter().map(|t| (t.to_string(), json!({"schema": {"$ref": schema_ref}}))).collect();
        op["requestBody"] = json!({"required": true, "content": content});
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        param("dryRun", "query", "When present (All), the change is validated but not persisted."),
        param("fieldManager", "query", "Name of the actor making the change."),
        param("fieldValidation", "query", "Ignore, Warn or Strict: what to do with fields the kind does not have."),
    ]
}

fn paths_for(rt: &ResourceType, schema_ref: &str, out: &mut Map<String, Value>) {
    let base =
        if rt.group.is_empty() { format!("/api/{}", rt.version) } else { format!("/apis/{}/{}", rt.group, rt.version) };
    let (collection, item) = if rt.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural),
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", rt.plural),
        )
    } else {
        (format!("{base}/{}", rt.plural), format!("{base}/{}/{{name}}", rt.plural))
    };
    let mut path_params = vec![param("name", "path", "name of the object")];
    if rt.namespaced {
        path_params.push(param("namespace", "path", "object name and auth scope, such as for teams and projects"));
    }
    let mut patch_types =
        vec!["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"];
    if rt.group.is_empty() {
        patch_types.push("application/strategic-merge-patch+json");
    }
    let list_params = vec![
        param("labelSelector", "query", "Restrict the list to objects whose labels match."),
        param("fieldSelector", "query", "Restrict the list to objects whose fields match."),
        param("limit", "query", "Maximum number of items to return."),
        param("continue", "query", "Token from a previous page."),
        param("resourceVersion", "query", "Where to start a watch."),
        param("watch", "query", "Stream changes."),
    ];
    out.insert(
        collection,
        json!({
            "get": operation(rt, "list", schema_ref, &[], list_params),
            "post": operation(rt, "post", schema_ref, &["application/json", "application/yaml"], write_params()),
            "parameters": if rt.namespaced { json!([param("namespace", "path", "namespace")]) } else { json!([]) },
        }),
    );
    out.insert(
        item.clone(),
        json!({
            "get": operation(rt, "get", schema_ref, &[], vec![]),
            "put": operation(rt, "put", schema_ref, &["application/json", "application/yaml"], write_params()),
            "patch": operation(rt, "patch", schema_ref, &patch_types, {
                let mut p = write_params();
                p.push(param("force", "query", "Take ownership of conflicting fields (apply)."));
                p
            }),
            "delete": operation(rt, "delete", schema_ref, &[], vec![
                param("propagationPolicy", "query", "Orphan, Background or Foreground."),
                param("dryRun", "query", "Validate only."),
            ]),
            "parameters": path_params,
        }),
    );
    if rt.has_status {
        out.insert(
            format!("{item}/status"),
            json!({
                "get": operation(rt, "get", schema_ref, &[], vec![]),
                "put": operation(rt, "put", schema_ref, &["application/json"], write_params()),
                "patch": operation(rt, "patch", schema_ref, &patch_types, write_params()),
                "parameters": path_params,
            }),
        );
    }
}

fn document(reg: &Registry, group: &str, version: &str) -> Value {
    let mut gen = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut kinds = Vec::new();
    for rt in reg.in_group_version(group, version) {
        let r = rt.schema(&mut gen);
        let schema_ref = r.get("$ref").and_then(Value::as_str).unwrap_or("").to_string();
        paths_for(rt, &schema_ref, &mut paths);
        kinds.push((rt.clone(), schema_ref));
    }
    let mut schemas: Map<String, Value> = gen.take_definitions(true).into_iter().collect();
    for (rt, schema_ref) in &kinds {
        let name = schema_ref.rsplit('/').next().unwrap_or("");
        if let Some(Value::Object(s)) = schemas.get_mut(name) {
            let mut props = Map::new();
            props.insert(
                "apiVersion".into(),
                json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object.", "enum": [rt.api_version()]}),
            );
            props.insert(
                "kind".into(),
                json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents.", "enum": [rt.kind]}),
            );
            if let Some(Value::Object(existing)) = s.remove("properties") {
                props.extend(existing);
            }
            s.insert("properties".into(), Value::Object(props));
            s.insert("x-kubernetes-group-version-kind".into(), gvk(rt));
            if !rt.description.is_empty() {
                s.insert("description".into(), json!(rt.description));
            }
        }
    }
    inline_scalars(&mut schemas);
    let mut doc = json!({
        "openapi": "3.0.0",
        "info": {"title": "Sheaf", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas},
    });
    normalize(&mut doc);
    doc
}

impl OpenApi {
    pub fn build(reg: &Registry) -> Self {
        let mut docs = BTreeMap::new();
        let mut gvs: Vec<(&str, &str)> = Vec::new();
        for rt in reg.all() {
            if !gvs.contains(&(rt.group, rt.version)) {
                gvs.push((rt.group, rt.version));
            }
        }
        for (g, v) in gvs {
            let doc = document(reg, g, v);
            let hash = hex(&Sha256::digest(doc.to_string().as_bytes()));
            docs.insert(gv_path(g, v), (doc, hash));
        }
        OpenApi { docs }
    }

    /// `/openapi/v3`: the index of group/version documents.
    pub fn index(&self) -> Value {
        let paths: Map<String, Value> = self
            .docs
            .iter()
            .map(|(p, (_, hash))| (p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")})))
            .collect();
        json!({"paths": paths})
    }

    /// `/openapi/v3/<path>`.
    pub fn document(&self, path: &str) -> Option<&Value> {
        self.docs.get(path.trim_matches('/')).map(|(d, _)| d)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
