//! Object operations shared by every kind: create, get, list, update,
//! patch, delete, and the rules Kubernetes applies to metadata on each.
//!
//! Objects are handled as JSON; each body is decoded through its kind's
//! typed struct ([`ResourceType::decode`]) before anything is stored, so a
//! rejected request never leaves a half-written object behind. The stored
//! value omits `metadata.resourceVersion`; it is the key's `mod_revision`
//! and is filled in on the way out.

use std::sync::Arc;

use rand::Rng;
use serde_json::{json, Map, Value};
use sheaf_store::{KeyValue, ListOptions, Store, StoreError};
use sheaf_types::validation::{self, FieldError};
use sheaf_types::{ResourceType, Time};

use crate::error::{ApiError, ApiResult, Target};
use crate::registry::{collection_prefix, object_key, Registry};
use crate::selector::{FieldSelector, LabelSelector};

/// Largest object accepted, as in Kubernetes (etcd's limit).
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024;
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Attempts of read-modify-write loops (patch, finalizer updates) on conflict.
const CAS_RETRIES: usize = 16;

/// How to treat fields a kind does not have (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }
}

/// Options common to writes.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub field_validation: FieldValidation,
    pub dry_run: bool,
    pub field_manager: Option<String>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { field_validation: FieldValidation::Warn, dry_run: false, field_manager: None }
    }
}

/// A successful write: the object as stored, and warnings for the client.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

/// `DeleteOptions` that matter.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `Orphan`, `Background` or `Foreground`.
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// Result of a delete request.
#[derive(Debug)]
pub enum Deleted {
    /// Gone from the store; the last state.
    Now(Value),
    /// Marked for deletion; finalizers still hold it.
    Pending(Value),
}

/// List parameters.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
}

/// Object operations over a store.
#[derive(Clone)]
pub struct Objects {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
}

pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

pub fn namespace_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        if let Value::Object(m) = obj {
            m.insert("metadata".into(), Value::Object(Map::new()));
        }
    }
    obj.get_mut("metadata").and_then(Value::as_object_mut).expect("metadata was just made an object")
}

/// Turns a stored key/value into the object clients see.
pub fn from_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not valid JSON: {e}", kv.key)))?;
    meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(kv.mod_revision.to_string()));
    Ok(obj)
}

fn to_bytes(obj: &Value) -> ApiResult<Vec<u8>> {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    let bytes = serde_json::to_vec(&o).map_err(|e| ApiError::internal(format!("cannot encode object: {e}")))?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::new(
            http::StatusCode::UNPROCESSABLE_ENTITY,
            "RequestEntityTooLarge",
            format!("object is {} bytes; the limit is {MAX_OBJECT_BYTES}", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Orders keys as Kubernetes prints them: apiVersion, kind, metadata first.
fn canonical(rt: &ResourceType, body: Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(rt.api_version()));
    out.insert("kind".into(), Value::String(rt.kind.to_string()));
    if let Value::Object(m) = body {
        if let Some(meta) = m.get("metadata") {
            out.insert("metadata".into(), meta.clone());
        }
        for (k, v) in m {
            if k != "metadata" && k != "apiVersion" && k != "kind" {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

/// Everything but metadata and status: a change here bumps `generation`.
fn desired_state(obj: &Value) -> Value {
    match obj {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn generate_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Generic metadata validation (name, labels, annotations, owners, finalizers).
fn validate_meta(rt: &ResourceType, obj: &Value, errs: &mut Vec<FieldError>) {
    let name = name_of(obj);
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else if rt.group == sheaf_types::rbac::GROUP {
        // RBAC names are path segments (`system:node`), as in Kubernetes.
        if name == "." || name == ".." || name.contains(['/', '%']) || name.len() > 253 {
            errs.push(FieldError::invalid(
                "metadata.name",
                format!(
                    "Invalid value: {name:?}: may not be '.' or '..', contain '/' or '%', or exceed 253 characters"
                ),
            ));
        }
    } else if let Err(e) = validation::dns1123_subdomain(name) {
        errs.push(FieldError::invalid("metadata.name", format!("Invalid value: {name:?}: {e}")));
    }
    let meta = obj.get("metadata");
    if let Some(Value::Object(labels)) = meta.and_then(|m| m.get("labels")) {
        for (k, v) in labels {
            if let Err(e) = validation::qualified_name(k) {
                errs.push(FieldError::invalid(format!("metadata.labels[{k}]"), format!("Invalid value: {k:?}: {e}")));
            }
            match v.as_str() {
                Some(s) => {
                    if let Err(e) = validation::label_value(s) {
                        errs.push(FieldError::invalid(
                            format!("metadata.labels[{k}]"),
                            format!("Invalid value: {s:?}: {e}"),
                        ));
                    }
                }
                None => errs.push(FieldError::invalid(format!("metadata.labels[{k}]"), "label values must be strings")),
            }
        }
    }
    if let Some(Value::Object(ann)) = meta.and_then(|m| m.get("annotations")) {
        let mut total = 0;
        for (k, v) in ann {
            if let Err(e) = validation::qualified_name(k) {
                errs.push(FieldError::invalid(
                    format!("metadata.annotations[{k}]"),
                    format!("Invalid value: {k:?}: {e}"),
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errs.push(FieldError::new(
                "metadata.annotations",
                sheaf_types::FieldErrorReason::TooLong,
                format!("Too long: annotations must have at most {MAX_ANNOTATIONS_BYTES} bytes, have {total}"),
            ));
        }
    }
    if let Some(Value::Array(fins)) = meta.and_then(|m| m.get("finalizers")) {
        for (i, f) in fins.iter().enumerate() {
            let s = f.as_str().unwrap_or("");
            if let Err(e) = validation::qualified_name(s) {
                errs.push(FieldError::invalid(
                    format!("metadata.finalizers[{i}]"),
                    format!("Invalid value: {s:?}: {e}"),
                ));
            }
        }
    }
    if let Some(Value::Array(owners)) = meta.and_then(|m| m.get("ownerReferences")) {
        let mut controllers = 0;
        for (i, o) in owners.iter().enumerate() {
            for f in ["apiVersion", "kind", "name", "uid"] {
                if o.get(f).and_then(Value::as_str).unwrap_or("").is_empty() {
                    errs.push(FieldError::required(format!("metadata.ownerReferences[{i}].{f}")));
                }
            }
            if o.get("controller").and_then(Value::as_bool) == Some(true) {
                controllers += 1;
            }
        }
        if controllers > 1 {
            errs.push(FieldError::invalid(
                "metadata.ownerReferences",
                "Only one reference can have Controller set to true",
            ));
        }
    }
    if rt.namespaced {
        if let Some(ns) = namespace_of(obj) {
            if let Err(e) = validation::dns1123_label(ns) {
                errs.push(FieldError::invalid("metadata.namespace", format!("Invalid value: {ns:?}: {e}")));
            }
        }
    }
}

impl Objects {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>) -> Self {
        Objects { store, registry }
    }

    fn target<'a>(rt: &'a ResourceType, name: &'a str) -> Target<'a> {
        Target { group: rt.group, resource: rt.plural, name }
    }

    pub async fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let key = object_key(rt, ns, name);
        match self.store.get(&key).await {
            Ok(Some(kv)) => from_kv(&kv),
            Ok(None) => Err(ApiError::not_found(&Self::target(rt, name))),
            Err(e) => Err(ApiError::from_store(e, &Self::target(rt, name))),
        }
    }

    async fn get_kv(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<KeyValue> {
        let key = object_key(rt, ns, name);
        match self.store.get(&key).await {
            Ok(Some(kv)) => Ok(kv),
            Ok(None) => Err(ApiError::not_found(&Self::target(rt, name))),
            Err(e) => Err(ApiError::from_store(e, &Self::target(rt, name))),
        }
    }

    /// Checks that a namespace exists and is not terminating.
    async fn check_namespace(&self, ns: &str, creating: bool) -> ApiResult<()> {
        let key = format!("/registry/core/namespaces/{ns}");
        let kv = self
            .store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, &Target { group: "", resource: "namespaces", name: ns }))?;
        let Some(kv) = kv else {
            return Err(ApiError::not_found(&Target { group: "", resource: "namespaces", name: ns }));
        };
        if creating {
            let obj = from_kv(&kv)?;
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )));
            }
        }
        Ok(())
    }

    /// Decodes a body through its kind, applies the field-validation mode
    /// and generic metadata checks. Returns the canonical object.
    fn decode(
        &self,
        rt: &ResourceType,
        body: &Value,
        old: Option<&Value>,
        fv: FieldValidation,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Value> {
        let name = name_of(body).to_string();
        let target = Self::target(rt, &name);
        let decoded = rt.decode(body, old).map_err(|errs| ApiError::invalid(&target, &qualified_kind(rt), &errs))?;
        if !decoded.unknown_fields.is_empty() {
            match fv {
                FieldValidation::Strict => {
                    let list =
                        decoded.unknown_fields.iter().map(|f| format!("unknown field {f:?}")).collect::<Vec<_>>();
                    return Err(ApiError::bad_request(format!(
                        "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
                        rt.kind,
                        rt.api_version(),
                        rt.kind,
                        list.join(", ")
                    )));
                }
                FieldValidation::Warn => {
                    warnings.extend(decoded.unknown_fields.iter().map(|f| format!("unknown field {f:?}")));
                }
                FieldValidation::Ignore => {}
            }
        }
        let obj = canonical(rt, decoded.value);
        let mut errs = Vec::new();
        validate_meta(rt, &obj, &mut errs);
        if !errs.is_empty() {
            return Err(ApiError::invalid(&target, &qualified_kind(rt), &errs));
        }
        Ok(obj)
    }

    fn check_type(rt: &ResourceType, body: &Value) -> ApiResult<()> {
        if !body.is_object() {
            return Err(ApiError::bad_request(format!("the request body must be a {} object", rt.kind)));
        }
        if let Some(av) = body.get("apiVersion") {
            if av.as_str() != Some(rt.api_version().as_str()) {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({})",
                    av.as_str().unwrap_or("<not a string>"),
                    rt.api_version()
                )));
            }
        }
        if let Some(k) = body.get("kind") {
            if k.as_str() != Some(rt.kind) {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({}) does not match the expected kind ({})",
                    k.as_str().unwrap_or("<not a string>"),
                    rt.kind
                )));
            }
        }
        Ok(())
    }

    /// Server-side apply bodies must name their apiVersion and kind.
    pub fn check_apply_target(rt: &ResourceType, patch: &Value) -> ApiResult<()> {
        if patch.get("apiVersion").is_none() || patch.get("kind").is_none() {
            return Err(ApiError::bad_request(format!(
                "an apply patch must set apiVersion and kind (expected {} {})",
                rt.api_version(),
                rt.kind
            )));
        }
        Self::check_type(rt, patch)
    }

    /// POST: creates an object in namespace `ns` (None for cluster-scoped).
    pub async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut body: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        Self::check_type(rt, &body)?;
        let meta = meta_mut(&mut body);
        // Namespace: from the URL; a different one in the body is an error.
        if rt.namespaced {
            let url_ns = ns.unwrap_or("default");
            match meta.get("namespace").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != url_ns => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({b}) does not match the namespace sent on the request ({url_ns})"
                    )))
                }
                _ => {
                    meta.insert("namespace".into(), Value::String(url_ns.to_string()));
                }
            }
        } else {
            meta.remove("namespace");
        }
        if meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created; remove metadata.resourceVersion",
            ));
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if name.is_empty() {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => {
                    meta.insert("name".into(), Value::String(format!("{g}{}", generate_suffix())));
                }
                _ => {
                    return Err(ApiError::invalid(
                        &Self::target(rt, ""),
                        rt.kind,
                        &[FieldError::new(
                            "metadata.name",
                            sheaf_types::FieldErrorReason::Required,
                            "name or generateName is required",
                        )],
                    ))
                }
            }
        }
        meta.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(Time::now()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("resourceVersion");
        if rt.has_status {
            if let Value::Object(m) = &mut body {
                m.remove("status");
            }
        }
        if rt.kind == "Namespace" {
            if let Value::Object(m) = &mut body {
                m.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
                m.insert("status".into(), json!({"phase": "Active"}));
            }
        }
        let mut warnings = Vec::new();
        let obj = self.decode(rt, &body, None, opts.field_validation, &mut warnings)?;
        crate::networks::check_write(self, rt, &obj, None).await?;
        crate::quota::check_write(self, rt, &obj).await?;
        let ns = namespace_of(&obj).map(str::to_string);
        if let Some(ns) = &ns {
            self.check_namespace(ns, true).await?;
        }
        let name = name_of(&obj).to_string();
        if opts.dry_run {
            return Ok(Written { object: obj, warnings, created: true });
        }
        let key = object_key(rt, ns.as_deref(), &name);
        let rev = self
            .store
            .create(&key, to_bytes(&obj)?)
            .await
            .map_err(|e| ApiError::from_store(e, &Self::target(rt, &name)))?;
        let mut obj = obj;
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
        Ok(Written { object: obj, warnings, created: true })
    }

    /// PUT (main resource or `status`): replaces an object.
    pub async fn update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        Self::check_type(rt, &body)?;
        let body_name = name_of(&body);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let (Some(url_ns), Some(body_ns)) = (ns, namespace_of(&body)) {
            if rt.namespaced && url_ns != body_ns {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({url_ns})"
                )));
            }
        }
        let kv = self.get_kv(rt, ns, name).await?;
        let want_rv = body.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty());
        if let Some(rv) = want_rv {
            if rv != kv.mod_revision.to_string() {
                return Err(ApiError::conflict(&Self::target(rt, name)));
            }
        }
        self.replace(rt, kv, body, status_only, opts).await
    }

    /// Writes `body` over the stored `kv` (compare-and-swap on its revision).
    async fn replace(
        &self,
        rt: &ResourceType,
        kv: KeyValue,
        mut body: Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let old = from_kv(&kv)?;
        let name = name_of(&old).to_string();
        let target = Self::target(rt, &name);
        if let Some(uid) = body.pointer("/metadata/uid").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            if Some(uid) != old.pointer("/metadata/uid").and_then(Value::as_str) {
                return Err(ApiError::new(
                    http::StatusCode::CONFLICT,
                    "Conflict",
                    format!("Precondition failed: UID in object meta: {uid} does not match the stored object"),
                ));
            }
        }
        if status_only {
            // Only status changes through /status.
            let status = body.get("status").cloned();
            body = old.clone();
            if let Value::Object(m) = &mut body {
                match status {
                    Some(s) => m.insert("status".into(), s),
                    None => m.remove("status"),
                };
            }
        } else if rt.has_status {
            if let Value::Object(m) = &mut body {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
        }
        {
            let old_meta = old.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
            let meta = meta_mut(&mut body);
            for k in
                ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"]
            {
                match old_meta.get(k) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            if !meta.contains_key("managedFields") {
                if let Some(mf) = old_meta.get("managedFields") {
                    meta.insert("managedFields".into(), mf.clone());
                }
            }
            meta.remove("resourceVersion");
            // Once deletion started, no new finalizers may be added.
            if old_meta.contains_key("deletionTimestamp") {
                let old_f: Vec<Value> =
                    old_meta.get("finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
                let new_f = meta.get("finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
                if new_f.iter().any(|f| !old_f.contains(f)) {
                    return Err(ApiError::forbidden(format!(
                        "no new finalizers can be added if the object is being deleted, found new finalizers {:?}",
                        new_f.iter().filter(|f| !old_f.contains(f)).collect::<Vec<_>>()
                    )));
                }
            }
        }
        let mut warnings = Vec::new();
        let mut obj = self.decode(rt, &body, Some(&old), opts.field_validation, &mut warnings)?;
        if !status_only {
            crate::claim_resize::check_update(self, rt, &obj, &old).await?;
            crate::networks::check_write(self, rt, &obj, Some(&old)).await?;
            crate::quota::check_write(self, rt, &obj).await?;
        }
        let old_gen = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let gen = if desired_state(&obj) != desired_state(&old) { old_gen + 1 } else { old_gen };
        meta_mut(&mut obj).insert("generation".into(), json!(gen));

        // An object being deleted whose last finalizer went away is removed.
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left =
            obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if opts.dry_run {
            meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(kv.mod_revision.to_string()));
            return Ok(Written { object: obj, warnings, created: false });
        }
        if deleting && !finalizers_left && !(rt.kind == "Namespace" && namespace_finalizers_left(&obj)) {
            let (rev, _) = self
                .store
                .delete(&kv.key, Some(kv.mod_revision))
                .await
                .map_err(|e| ApiError::from_store(e, &target))?;
            meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
            return Ok(Written { object: obj, warnings, created: false });
        }
        if obj == canonical_without_rv(&old) {
            // Nothing changed: no new revision, as in Kubernetes.
            return Ok(Written { object: old, warnings, created: false });
        }
        let rev = self
            .store
            .update(&kv.key, to_bytes(&obj)?, kv.mod_revision)
            .await
            .map_err(|e| ApiError::from_store(e, &target))?;
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
        Ok(Written { object: obj, warnings, created: false })
    }

    /// PATCH: applies `patch` to the current object and writes it, retrying
    /// on conflicting concurrent writes unless the patch pins a
    /// `resourceVersion`. Server-side apply creates the object if missing.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        kind: crate::patch::PatchType,
        patch: Value,
        status_only: bool,
        force: bool,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        use crate::patch::PatchType;
        for _ in 0..CAS_RETRIES {
            let kv = match self.get_kv(rt, ns, name).await {
                Ok(kv) => kv,
                Err(e) if e.code == http::StatusCode::NOT_FOUND && kind == PatchType::Apply && !status_only => {
                    let manager = apply_manager(opts)?;
                    let mut base = json!({"metadata": {"name": name}});
                    if let Some(ns) = ns {
                        meta_mut(&mut base).insert("namespace".into(), json!(ns));
                    }
                    let obj = crate::patch::server_side_apply(&base, &patch, &manager, force, &rt.api_version())?;
                    return match self.create(rt, ns, obj, opts).await {
                        Err(e) if e.reason == "AlreadyExists" => continue,
                        other => other,
                    };
                }
                Err(e) => return Err(e),
            };
            let current = from_kv(&kv)?;
            let mut next = current.clone();
            match kind {
                PatchType::Merge => crate::patch::merge_patch(&mut next, &patch),
                PatchType::Json => crate::patch::json_patch(&mut next, &patch)?,
                PatchType::Strategic => crate::patch::strategic_merge_patch(&mut next, &patch)?,
                PatchType::Apply => {
                    let manager = apply_manager(opts)?;
                    let body_name = name_of(&patch);
                    if !body_name.is_empty() && body_name != name {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({body_name}) does not match the name on the URL ({name})"
                        )));
                    }
                    next = crate::patch::server_side_apply(&current, &patch, &manager, force, &rt.api_version())?;
                }
            }
            let pinned = next.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
            let pinned_by_patch = pinned.as_deref() != Some(kv.mod_revision.to_string().as_str());
            if pinned_by_patch && pinned.is_some() {
                return Err(ApiError::conflict(&Self::target(rt, name)));
            }
            match self.replace(rt, kv, next, status_only, opts).await {
                Err(e) if e.reason == "Conflict" && e.message.contains("has been modified") => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(&Self::target(rt, name)))
    }

    /// DELETE of one object.
    pub async fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Deleted> {
        let target = Self::target(rt, name);
        for _ in 0..CAS_RETRIES {
            let kv = self.get_kv(rt, ns, name).await?;
            let mut obj = from_kv(&kv)?;
            if let Some(uid) = &opts.precondition_uid {
                if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) {
                    return Err(ApiError::new(
                        http::StatusCode::CONFLICT,
                        "Conflict",
                        format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")
                        ),
                    ));
                }
            }
            if let Some(rv) = &opts.precondition_rv {
                if *rv != kv.mod_revision.to_string() {
                    return Err(ApiError::conflict(&target));
                }
            }
            let policy = opts.propagation.as_deref().unwrap_or("Background");
            if !matches!(policy, "Background" | "Foreground" | "Orphan") {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy must be Orphan, Background or Foreground, not {policy:?}"
                )));
            }
            let mut finalizers: Vec<Value> =
                obj.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
            let already_deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
            if !already_deleting {
                // Whatever the policy, and for dry runs too; the writes
                // below are compare-and-swaps on this version, so a change
                // meanwhile makes this loop (and the check) start over.
                crate::protection::check_delete(self, rt, &obj).await?;
                if let Some(f) = crate::protection::finalizer_on_delete(self, rt, &obj).await? {
                    if !finalizers.iter().any(|x| x == f) {
                        finalizers.push(json!(f));
                    }
                }
            }
            let extra = match policy {
                "Foreground" => Some("foregroundDeletion"),
                "Orphan" => Some("orphan"),
                _ => None,
            };
            let is_namespace = rt.kind == "Namespace";
            if let Some(f) = extra {
                if !finalizers.iter().any(|x| x == f) {
                    finalizers.push(json!(f));
                }
            }
            let hold = !finalizers.is_empty() || (is_namespace && namespace_finalizers_left(&obj));
            if opts.dry_run {
                return Ok(if hold { Deleted::Pending(obj) } else { Deleted::Now(obj) });
            }
            if !already_deleting {
                crate::vm_claims::before_delete(self, rt, &obj).await?;
            }
            if !hold {
                return match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok((rev, _)) => {
                        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
                        Ok(Deleted::Now(obj))
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => Err(ApiError::from_store(e, &target)),
                };
            }
            let meta = meta_mut(&mut obj);
            let changed_finalizers = meta.get("finalizers").and_then(Value::as_array) != Some(&finalizers);
            if already_deleting && !changed_finalizers {
                return Ok(Deleted::Pending(obj));
            }
            meta.insert("finalizers".into(), Value::Array(finalizers));
            if !already_deleting {
                meta.insert("deletionTimestamp".into(), json!(Time::now()));
                meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            if is_namespace {
                if let Value::Object(m) = &mut obj {
                    m.insert("status".into(), json!({"phase": "Terminating"}));
                }
            }
            meta_mut(&mut obj).remove("resourceVersion");
            match self.store.update(&kv.key, to_bytes(&obj)?, kv.mod_revision).await {
                Ok(rev) => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
                    return Ok(Deleted::Pending(obj));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, &target)),
            }
        }
        Err(ApiError::conflict(&target))
    }

    /// Removes a finalizer (used by controllers), deleting the object if it
    /// was the last one and deletion was requested.
    pub async fn remove_finalizer(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        finalizer: &str,
    ) -> ApiResult<()> {
        // `$deleteFromPrimitiveList` sits beside the list it edits.
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [finalizer]}});
        match self
            .patch(rt, ns, name, crate::patch::PatchType::Strategic, patch, false, false, &WriteOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == http::StatusCode::NOT_FOUND => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One page of a list, filtered by the selectors. Returns the items,
    /// the list's resourceVersion and a continue token when more remain.
    pub async fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        p: &ListParams,
    ) -> ApiResult<(Vec<Value>, String, Option<String>)> {
        let prefix = collection_prefix(rt, ns);
        let (mut start_after, mut revision) = match &p.continue_token {
            Some(t) => {
                let (rev, start) = decode_continue(t, &prefix)?;
                (Some(start), Some(rev))
            }
            None => (None, None),
        };
        let mut out = Vec::new();
        let target = Self::target(rt, "");
        // A pinned name needs one key, not a scan.
        if let (Some(name), None) = (p.fields.pinned_name(), &p.continue_token) {
            if ns.is_some() || !rt.namespaced {
                let rev = self.store.revision().await.map_err(|e| ApiError::from_store(e, &target))?;
                let key = object_key(rt, ns, name);
                if let Some(kv) = self.store.get(&key).await.map_err(|e| ApiError::from_store(e, &target))? {
                    let obj = from_kv(&kv)?;
                    if p.labels.matches(&obj) && p.fields.matches(&obj) {
                        out.push(obj);
                    }
                }
                return Ok((out, rev.max(1).to_string(), None));
            }
        }
        loop {
            let want = if p.limit == 0 { 0 } else { (p.limit - out.len()).max(1) };
            let page = self
                .store
                .list(ListOptions { prefix: prefix.clone(), start_after: start_after.clone(), limit: want, revision })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if p.continue_token.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ),
                    e => ApiError::from_store(e, &target),
                })?;
            revision = Some(page.revision);
            let last_key = page.items.last().map(|kv| kv.key.clone());
            for kv in &page.items {
                let obj = from_kv(kv)?;
                if p.labels.matches(&obj) && p.fields.matches(&obj) {
                    out.push(obj);
                }
            }
            let full = p.limit != 0 && out.len() >= p.limit;
            if !page.more || last_key.is_none() {
                return Ok((out, page.revision.to_string(), None));
            }
            start_after = last_key;
            if full {
                let token = encode_continue(page.revision, start_after.as_deref().unwrap_or(""), &prefix);
                return Ok((out, page.revision.to_string(), Some(token)));
            }
        }
    }
}

/// The field manager of an apply request, which Kubernetes requires.
fn apply_manager(opts: &WriteOptions) -> ApiResult<String> {
    opts.field_manager
        .clone()
        .ok_or_else(|| ApiError::bad_request("fieldManager is required for apply requests; pass ?fieldManager=NAME"))
}

/// `VirtualMachine.kubevirt.io`, or `ConfigMap` for the core group, as
/// Kubernetes names kinds in messages.
fn qualified_kind(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.kind.to_string()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    }
}

fn namespace_finalizers_left(obj: &Value) -> bool {
    obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

fn canonical_without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    o
}

fn encode_continue(rev: i64, start: &str, prefix: &str) -> String {
    use base64::Engine as _;
    let rel = start.strip_prefix(prefix).unwrap_or(start);
    let token = json!({"v": "sheaf.io/v1", "rv": rev, "start": rel});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(i64, String)> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("invalid continue token: start a new list without the continue parameter");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).filter(|r| *r > 0).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rev, format!("{prefix}{start}")))
}
