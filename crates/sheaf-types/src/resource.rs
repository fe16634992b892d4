//! What the API server needs to know about a kind: its names, scope,
//! printer columns, schema, and how to decode and validate a body.
//!
//! Every kind is a typed Rust struct implementing [`Kind`]; the API server
//! works with [`ResourceType`], an object-safe descriptor built from it, so
//! that it can treat all kinds generically as JSON while still decoding each
//! body through its typed struct (which gives type errors with field paths,
//! unknown-field detection and pruning, and semantic validation).

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::meta::ObjectMeta;
use crate::validation::{FieldError, FieldErrorReason};

/// A printer column for `kubectl get` (server-side Table output).
#[derive(Clone, Debug)]
pub struct Column {
    pub name: &'static str,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: &'static str,
    /// Dotted path into the object, for example `.status.printableStatus`.
    /// A path segment `[0]` picks the first element of a list.
    pub path: &'static str,
    /// 0 is shown always; higher only with `-o wide`.
    pub priority: i32,
    pub description: &'static str,
}

impl Column {
    pub const fn new(name: &'static str, type_: &'static str, path: &'static str) -> Self {
        Column { name, type_, path, priority: 0, description: "" }
    }
    pub const fn wide(mut self) -> Self {
        self.priority = 1;
        self
    }
}

/// A typed kind.
pub trait Kind: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// API group; empty for the core group.
    const GROUP: &'static str;
    const VERSION: &'static str;
    const KIND: &'static str;
    /// Lower-case plural used in URLs.
    const PLURAL: &'static str;
    const SHORT_NAMES: &'static [&'static str] = &[];
    const CATEGORIES: &'static [&'static str] = &[];
    const NAMESPACED: bool;
    /// Whether the kind has a `status` subresource (status is then ignored
    /// on the main resource and spec ignored on `/status`).
    const HAS_STATUS: bool;

    fn metadata(&self) -> &ObjectMeta;

    /// Semantic checks beyond what the types express. `old` is the stored
    /// object on update.
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        Vec::new()
    }

    /// Normalises a valid object before it is stored (for example folds a
    /// Secret's `stringData` into `data`).
    fn normalize(&mut self) {}

    /// Printer columns after NAME (AGE is appended by the server).
    fn columns() -> Vec<Column> {
        Vec::new()
    }

    /// Short description shown by `kubectl explain`.
    fn description() -> &'static str {
        ""
    }
}

/// A body decoded through its kind's typed struct.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The object re-serialised from the typed struct: unknown fields are
    /// pruned, defaults are filled in.
    pub value: Value,
    /// Paths of fields the kind does not have, for example `spec.foo`.
    pub unknown_fields: Vec<String>,
}

/// Object-safe descriptor of a kind, built with [`ResourceType::of`].
#[derive(Clone)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: String,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    pub has_status: bool,
    pub columns: Vec<Column>,
    pub description: &'static str,
    decode: fn(&Value, Option<&Value>) -> Result<Decoded, Vec<FieldError>>,
    schema: fn(&mut SchemaGenerator) -> Schema,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResourceType({})", self.api_version())
    }
}

impl ResourceType {
    pub fn of<K: Kind>() -> Self {
        ResourceType {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            plural: K::PLURAL,
            singular: K::KIND.to_ascii_lowercase(),
            short_names: K::SHORT_NAMES,
            categories: K::CATEGORIES,
            namespaced: K::NAMESPACED,
            has_status: K::HAS_STATUS,
            columns: K::columns(),
            description: K::description(),
            decode: decode_as::<K>,
            schema: |g| g.subschema_for::<K>(),
        }
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Decodes and validates a body. `old` is the stored object on update.
    pub fn decode(&self, body: &Value, old: Option<&Value>) -> Result<Decoded, Vec<FieldError>> {
        (self.decode)(body, old)
    }

    /// Adds the kind's schema (and its dependencies) to `gen`, returning a
    /// reference to it.
    pub fn schema(&self, gen: &mut SchemaGenerator) -> Schema {
        (self.schema)(gen)
    }
}

fn type_error(e: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let field = if path == "." { String::from("<root>") } else { path };
    let inner = e.into_inner().to_string();
    // serde_json appends " at line X column Y", meaningless for a Value.
    let message = match inner.find(" at line ") {
        Some(i) => inner[..i].to_string(),
        None => inner,
    };
    FieldError::new(field, FieldErrorReason::Invalid, message)
}

/// serde_ignored writes `spec.?.disks.0.foo`; print `spec.disks[0].foo`.
fn clean_ignored_path(p: &str) -> String {
    let mut out = String::new();
    for seg in p.split('.') {
        if seg == "?" || seg.is_empty() {
            continue;
        }
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn decode_as<K: Kind>(body: &Value, old: Option<&Value>) -> Result<Decoded, Vec<FieldError>> {
    let mut typed: K = serde_path_to_error::deserialize(body).map_err(|e| vec![type_error(e)])?;
    let mut unknown_fields = Vec::new();
    let _: Result<K, _> = serde_ignored::deserialize(body, |path| {
        let p = clean_ignored_path(&path.to_string());
        // apiVersion/kind are handled by the server, not the struct.
        if p != "apiVersion" && p != "kind" {
            unknown_fields.push(p);
        }
    });
    let old_typed: Option<K> = match old {
        Some(o) => serde_json::from_value(o.clone()).ok(),
        None => None,
    };
    let errs = typed.validate(old_typed.as_ref());
    if !errs.is_empty() {
        return Err(errs);
    }
    typed.normalize();
    let mut value = serde_json::to_value(&typed)
        .map_err(|e| vec![FieldError::invalid("<root>", format!("cannot encode object: {e}"))])?;
    if let Value::Object(map) = &mut value {
        map.remove("apiVersion");
        map.remove("kind");
    }
    Ok(Decoded { value, unknown_fields })
}
