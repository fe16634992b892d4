//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! Typed clients — kubectl's `create namespace|configmap|secret`, client-go
//! clientsets — send built-in kinds as protobuf: the 4-byte magic `k8s\0`,
//! then a `runtime.Unknown` message
//!
//! ```text
//! Unknown { typeMeta = 1 { apiVersion = 1, kind = 2 }, raw = 2, contentEncoding = 3, contentType = 4 }
//! ```
//!
//! whose `raw` holds the object's own message (without type meta). This
//! module decodes such bodies into the JSON the same client would have sent,
//! for the core/v1 kinds Sheaf serves and for meta/v1 `DeleteOptions`, so
//! that everything after body parsing is shared with the JSON path.
//! Responses stay JSON: those clients send
//! `Accept: application/vnd.kubernetes.protobuf,application/json`.
//!
//! The decoder is driven by static message tables transcribed from
//! Kubernetes' `generated.proto` (field numbers) and the JSON tags of the Go
//! types (names, and whether an empty value is omitted). Fields the tables do
//! not list are skipped, as protobuf requires.
//!
//! The input is untrusted: every length is checked against the bytes that
//! remain before anything is sliced or allocated, varints are limited to 10
//! bytes, groups are rejected, and messages nest at most [`MAX_DEPTH`] deep.

use base64::Engine as _;
use chrono::{DateTime, Datelike, SecondsFormat};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The prefix of every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// How deep messages may nest (the envelope is level 0, the object level 1).
pub const MAX_DEPTH: usize = 32;

/// Largest field number protobuf allows.
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

const SUPPORTED: &str = "v1 Namespace, ConfigMap, Secret, Node, Event, DeleteOptions and the access reviews";

// ---------------------------------------------------------------- wire format

/// A malformed body: what was wrong, and where (JSON path, innermost first).
#[derive(Debug)]
struct DecodeError {
    message: String,
    path: Vec<String>,
}

type DResult<T> = Result<T, DecodeError>;

impl DecodeError {
    fn new(message: impl Into<String>) -> Self {
        DecodeError { message: message.into(), path: Vec::new() }
    }
    fn at(mut self, segment: impl Into<String>) -> Self {
        self.path.push(segment.into());
        self
    }
    fn path(&self) -> String {
        self.path.iter().rev().map(String::as_str).collect::<Vec<_>>().join(".")
    }
}

/// One field's payload as it appears on the wire.
#[derive(Clone, Copy, Debug)]
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Len(&'a [u8]),
    Fixed32,
}

impl Wire<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Wire::Varint(_) => "a varint",
            Wire::Fixed64 => "a 64-bit value",
            Wire::Len(_) => "a length-delimited value",
            Wire::Fixed32 => "a 32-bit value",
        }
    }
}

/// Reads fields from one message's bytes; never reads past them.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn varint(&mut self) -> DResult<u64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.rest().first() else {
                return Err(DecodeError::new("the message ends in the middle of a varint"));
            };
            self.pos += 1;
            // The tenth byte holds bit 63 only.
            if i == 9 && b > 1 {
                return Err(DecodeError::new("a varint is longer than 10 bytes or overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::new("a varint is longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> DResult<&'a [u8]> {
        let rest = self.rest();
        match usize::try_from(n).ok().and_then(|n| rest.get(..n)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(DecodeError::new(format!(
                "a field of {n} bytes runs past the end of its message ({} bytes left)",
                rest.len()
            ))),
        }
    }

    /// The next field, or None at the end of the message.
    fn field(&mut self) -> DResult<Option<(u32, Wire<'a>)>> {
        if self.rest().is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let num = key >> 3;
        if num == 0 || num > MAX_FIELD_NUMBER {
            return Err(DecodeError::new(format!("invalid field number {num}")));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = self.varint()?;
                Wire::Len(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            3 | 4 => {
                return Err(DecodeError::new(format!(
                    "field {num} is a protobuf group (wire type {}), which Kubernetes never sends",
                    key & 7
                )))
            }
            t => return Err(DecodeError::new(format!("field {num} has the invalid wire type {t}"))),
        };
        // num <= MAX_FIELD_NUMBER < u32::MAX.
        Ok(Some((num as u32, wire)))
    }
}

// ---------------------------------------------------------------- schema

/// How a field's value is decoded and rendered in JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    Int64,
    Int32,
    /// `meta/v1 Time`: RFC 3339 with seconds; an empty message is the zero time (omitted).
    Time,
    /// `meta/v1 MicroTime`: RFC 3339 with microseconds.
    MicroTime,
    /// `meta/v1 FieldsV1 { Raw = 1 }`: raw JSON.
    FieldsV1,
    Msg(&'static Msg),
    /// `map<string, V>`: repeated entries `{ key = 1, value = 2 }`; bytes
    /// values render as base64 like Go's `[]byte`, quantities as their string.
    Map(MapValue),
}

#[derive(Clone, Copy)]
enum MapValue {
    Str,
    Bytes,
    Quantity,
}

impl Ty {
    fn expects(self) -> &'static str {
        match self {
            Ty::Bool | Ty::Int64 | Ty::Int32 => "a varint",
            _ => "a length-delimited value",
        }
    }
}

/// When a decoded value appears in the JSON, following the Go JSON tags.
#[derive(Clone, Copy)]
enum Emit {
    /// `omitempty` on a value field: "", 0, false and the zero time are left out.
    Omit,
    /// A pointer, a struct or a field without `omitempty`: kept whenever it is
    /// on the wire. A message seen twice is merged, as protobuf requires.
    Keep,
    /// `repeated`: a JSON array, left out when empty.
    Rep,
}

struct Field {
    num: u32,
    json: &'static str,
    ty: Ty,
    emit: Emit,
}

struct Msg {
    fields: &'static [Field],
}

const fn f(num: u32, json: &'static str, ty: Ty, emit: Emit) -> Field {
    Field { num, json, ty, emit }
}

use Emit::{Keep, Omit, Rep};

const STR_MAP: Ty = Ty::Map(MapValue::Str);
const BYTES_MAP: Ty = Ty::Map(MapValue::Bytes);
const QUANTITY_MAP: Ty = Ty::Map(MapValue::Quantity);

// meta/v1 (k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto)

static TYPE_META: Msg = Msg { fields: &[f(1, "apiVersion", Ty::Str, Keep), f(2, "kind", Ty::Str, Keep)] };

static OBJECT_META: Msg = Msg {
    fields: &[
        f(1, "name", Ty::Str, Omit),
        f(2, "generateName", Ty::Str, Omit),
        f(3, "namespace", Ty::Str, Omit),
        f(4, "selfLink", Ty::Str, Omit),
        f(5, "uid", Ty::Str, Omit),
        f(6, "resourceVersion", Ty::Str, Omit),
        f(7, "generation", Ty::Int64, Omit),
        f(8, "creationTimestamp", Ty::Time, Omit),
        f(9, "deletionTimestamp", Ty::Time, Omit),
        f(10, "deletionGracePeriodSeconds", Ty::Int64, Keep),
        f(11, "labels", STR_MAP, Rep),
        f(12, "annotations", STR_MAP, Rep),
        f(13, "ownerReferences", Ty::Msg(&OWNER_REFERENCE), Rep),
        f(14, "finalizers", Ty::Str, Rep),
        f(17, "managedFields", Ty::Msg(&MANAGED_FIELDS_ENTRY), Rep),
    ],
};

static OWNER_REFERENCE: Msg = Msg {
    fields: &[
        f(5, "apiVersion", Ty::Str, Keep),
        f(1, "kind", Ty::Str, Keep),
        f(3, "name", Ty::Str, Keep),
        f(4, "uid", Ty::Str, Keep),
        f(6, "controller", Ty::Bool, Keep),
        f(7, "blockOwnerDeletion", Ty::Bool, Keep),
    ],
};

static MANAGED_FIELDS_ENTRY: Msg = Msg {
    fields: &[
        f(1, "manager", Ty::Str, Omit),
        f(2, "operation", Ty::Str, Omit),
        f(3, "apiVersion", Ty::Str, Omit),
        f(4, "time", Ty::Time, Omit),
        f(6, "fieldsType", Ty::Str, Omit),
        f(7, "fieldsV1", Ty::FieldsV1, Keep),
        f(8, "subresource", Ty::Str, Omit),
    ],
};

static DELETE_OPTIONS: Msg = Msg {
    fields: &[
        f(1, "gracePeriodSeconds", Ty::Int64, Keep),
        f(2, "preconditions", Ty::Msg(&PRECONDITIONS), Keep),
        f(3, "orphanDependents", Ty::Bool, Keep),
        f(4, "propagationPolicy", Ty::Str, Keep),
        f(5, "dryRun", Ty::Str, Rep),
        f(6, "ignoreStoreReadErrorWithClusterBreakingPotential", Ty::Bool, Keep),
    ],
};

static PRECONDITIONS: Msg = Msg { fields: &[f(1, "uid", Ty::Str, Keep), f(2, "resourceVersion", Ty::Str, Keep)] };

// core/v1 (k8s.io/api/core/v1/generated.proto)

static NAMESPACE: Msg = Msg {
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META), Keep),
        f(2, "spec", Ty::Msg(&NAMESPACE_SPEC), Keep),
        f(3, "status", Ty::Msg(&NAMESPACE_STATUS), Keep),
    ],
};

static NAMESPACE_SPEC: Msg = Msg { fields: &[f(1, "finalizers", Ty::Str, Rep)] };

static NAMESPACE_STATUS: Msg =
    Msg { fields: &[f(1, "phase", Ty::Str, Omit), f(2, "conditions", Ty::Msg(&NAMESPACE_CONDITION), Rep)] };

static NAMESPACE_CONDITION: Msg = Msg {
    fields: &[
        f(1, "type", Ty::Str, Keep),
        f(2, "status", Ty::Str, Keep),
        f(4, "lastTransitionTime", Ty::Time, Omit),
        f(5, "reason", Ty::Str, Omit),
        f(6, "message", Ty::Str, Omit),
    ],
};

static CONFIG_MAP: Msg = Msg {
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META), Keep),
        f(4, "immutable", Ty::Bool, Keep),
        f(2, "data", STR_MAP, Rep),
        f(3, "binaryData", BYTES_MAP, Rep),
    ],
};

static SECRET: Msg = Msg {
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META), Keep),
        f(5, "immutable", Ty::Bool, Keep),
        f(2, "data", BYTES_MAP, Rep),
        f(4, "stringData", STR_MAP, Rep),
        f(3, "type", Ty::Str, Omit),
    ],
};

static NODE: Msg = Msg {
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META), Keep),
        f(2, "spec", Ty::Msg(&NODE_SPEC), Keep),
        f(3, "status", Ty::Msg(&NODE_STATUS), Keep),
    ],
};

static NODE_SPEC: Msg = Msg {
    fields: &[
        f(1, "podCIDR", Ty::Str, Omit),
        f(7, "podCIDRs", Ty::Str, Rep),
        f(3, "providerID", Ty::Str, Omit),
        f(4, "unschedulable", Ty::Bool, Omit),
        f(5, "taints", Ty::Msg(&TAINT), Rep),
        f(2, "externalID", Ty::Str, Omit),
    ],
};

static TAINT: Msg = Msg {
    fields: &[
        f(1, "key", Ty::Str, Keep),
        f(2, "value", Ty::Str, Omit),
        f(3, "effect", Ty::Str, Keep),
        f(4, "timeAdded", Ty::Time, Omit),
    ],
};

static NODE_STATUS: Msg = Msg {
    fields: &[
        f(1, "capacity", QUANTITY_MAP, Rep),
        f(2, "allocatable", QUANTITY_MAP, Rep),
        f(3, "phase", Ty::Str, Omit),
        f(4, "conditions", Ty::Msg(&NODE_CONDITION), Rep),
        f(5, "addresses", Ty::Msg(&NODE_ADDRESS), Rep),
        f(6, "daemonEndpoints", Ty::Msg(&NODE_DAEMON_ENDPOINTS), Keep),
        f(7, "nodeInfo", Ty::Msg(&NODE_SYSTEM_INFO), Keep),
    ],
};

static NODE_CONDITION: Msg = Msg {
    fields: &[
        f(1, "type", Ty::Str, Keep),
        f(2, "status", Ty::Str, Keep),
        f(3, "lastHeartbeatTime", Ty::Time, Omit),
        f(4, "lastTransitionTime", Ty::Time, Omit),
        f(5, "reason", Ty::Str, Omit),
        f(6, "message", Ty::Str, Omit),
    ],
};

static NODE_ADDRESS: Msg = Msg { fields: &[f(1, "type", Ty::Str, Keep), f(2, "address", Ty::Str, Keep)] };

static NODE_DAEMON_ENDPOINTS: Msg = Msg { fields: &[f(1, "kubeletEndpoint", Ty::Msg(&DAEMON_ENDPOINT), Keep)] };

static DAEMON_ENDPOINT: Msg = Msg { fields: &[f(1, "Port", Ty::Int32, Keep)] };

static NODE_SYSTEM_INFO: Msg = Msg {
    fields: &[
        f(1, "machineID", Ty::Str, Keep),
        f(2, "systemUUID", Ty::Str, Keep),
        f(3, "bootID", Ty::Str, Keep),
        f(4, "kernelVersion", Ty::Str, Keep),
        f(5, "osImage", Ty::Str, Keep),
        f(6, "containerRuntimeVersion", Ty::Str, Keep),
        f(7, "kubeletVersion", Ty::Str, Keep),
        f(8, "kubeProxyVersion", Ty::Str, Keep),
        f(9, "operatingSystem", Ty::Str, Keep),
        f(10, "architecture", Ty::Str, Keep),
    ],
};

static EVENT: Msg = Msg {
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META), Keep),
        f(2, "involvedObject", Ty::Msg(&OBJECT_REFERENCE), Keep),
        f(3, "reason", Ty::Str, Omit),
        f(4, "message", Ty::Str, Omit),
        f(5, "source", Ty::Msg(&EVENT_SOURCE), Keep),
        f(6, "firstTimestamp", Ty::Time, Omit),
        f(7, "lastTimestamp", Ty::Time, Omit),
        f(8, "count", Ty::Int32, Omit),
        f(9, "type", Ty::Str, Omit),
        f(10, "eventTime", Ty::MicroTime, Omit),
        f(11, "series", Ty::Msg(&EVENT_SERIES), Keep),
        f(12, "action", Ty::Str, Omit),
        f(13, "related", Ty::Msg(&OBJECT_REFERENCE), Keep),
        f(14, "reportingComponent", Ty::Str, Keep),
        f(15, "reportingInstance", Ty::Str, Keep),
    ],
};

static OBJECT_REFERENCE: Msg = Msg {
    fields: &[
        f(1, "kind", Ty::Str, Omit),
        f(2, "namespace", Ty::Str, Omit),
        f(3, "name", Ty::Str, Omit),
        f(4, "uid", Ty::Str, Omit),
        f(5, "apiVersion", Ty::Str, Omit),
        f(6, "resourceVersion", Ty::Str, Omit),
        f(7, "fieldPath", Ty::Str, Omit),
    ],
};

static EVENT_SOURCE: Msg = Msg { fields: &[f(1, "component", Ty::Str, Omit), f(2, "host", Ty::Str, Omit)] };

static EVENT_SERIES: Msg =
    Msg { fields: &[f(1, "count", Ty::Int32, Omit), f(2, "lastObservedTime", Ty::MicroTime, Omit)] };

// authorization.k8s.io/v1 and authentication.k8s.io/v1 (the reviews
// `kubectl auth can-i` and `kubectl auth whoami` send)

static RESOURCE_ATTRIBUTES: Msg = Msg {
    fields: &[
        f(1, "namespace", Ty::Str, Omit),
        f(2, "verb", Ty::Str, Omit),
        f(3, "group", Ty::Str, Omit),
        f(4, "version", Ty::Str, Omit),
        f(5, "resource", Ty::Str, Omit),
        f(6, "subresource", Ty::Str, Omit),
        f(7, "name", Ty::Str, Omit),
    ],
};

static NON_RESOURCE_ATTRIBUTES: Msg = Msg { fields: &[f(1, "path", Ty::Str, Omit), f(2, "verb", Ty::Str, Omit)] };

static SELF_SUBJECT_ACCESS_REVIEW_SPEC: Msg = Msg {
    fields: &[
        f(1, "resourceAttributes", Ty::Msg(&RESOURCE_ATTRIBUTES), Keep),
        f(2, "nonResourceAttributes", Ty::Msg(&NON_RESOURCE_ATTRIBUTES), Keep),
    ],
};

static SUBJECT_ACCESS_REVIEW_SPEC: Msg = Msg {
    fields: &[
        f(1, "resourceAttributes", Ty::Msg(&RESOURCE_ATTRIBUTES), Keep),
        f(2, "nonResourceAttributes", Ty::Msg(&NON_RESOURCE_ATTRIBUTES), Keep),
        f(3, "user", Ty::Str, Omit),
        f(4, "groups", Ty::Str, Rep),
        f(6, "uid", Ty::Str, Omit),
    ],
};

static SELF_SUBJECT_RULES_REVIEW_SPEC: Msg = Msg { fields: &[f(1, "namespace", Ty::Str, Omit)] };

static SELF_SUBJECT_ACCESS_REVIEW: Msg = Msg {
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META), Keep),
        f(2, "spec", Ty::Msg(&SELF_SUBJECT_ACCESS_REVIEW_SPEC), Keep),
    ],
};

static SUBJECT_ACCESS_REVIEW: Msg = Msg {
    fields: &[f(1, "metadata", Ty::Msg(&OBJECT_META), Keep), f(2, "spec", Ty::Msg(&SUBJECT_ACCESS_REVIEW_SPEC), Keep)],
};

static SELF_SUBJECT_RULES_REVIEW: Msg = Msg {
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META), Keep),
        f(2, "spec", Ty::Msg(&SELF_SUBJECT_RULES_REVIEW_SPEC), Keep),
    ],
};

static SELF_SUBJECT_REVIEW: Msg = Msg { fields: &[f(1, "metadata", Ty::Msg(&OBJECT_META), Keep)] };

fn schema_for(api_version: &str, kind: &str) -> Option<&'static Msg> {
    match (api_version, kind) {
        ("v1", "Namespace") => Some(&NAMESPACE),
        ("v1", "ConfigMap") => Some(&CONFIG_MAP),
        ("v1", "Secret") => Some(&SECRET),
        ("v1", "Node") => Some(&NODE),
        ("v1", "Event") => Some(&EVENT),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => Some(&SELF_SUBJECT_ACCESS_REVIEW),
        ("authorization.k8s.io/v1", "SubjectAccessReview") => Some(&SUBJECT_ACCESS_REVIEW),
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => Some(&SELF_SUBJECT_RULES_REVIEW),
        ("authentication.k8s.io/v1", "SelfSubjectReview") => Some(&SELF_SUBJECT_REVIEW),
        // Clients label DeleteOptions with the version of the resource's group.
        (_, "DeleteOptions") => Some(&DELETE_OPTIONS),
        _ => None,
    }
}

// ---------------------------------------------------------------- decoding

fn utf8(b: &[u8]) -> DResult<String> {
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|e| DecodeError::new(format!("a string is not valid UTF-8 ({e})")))
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Protobuf's merge of a message seen twice, on its JSON form: nested
/// messages and maps merge, repeated fields concatenate, scalars are replaced.
fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn decode_message(buf: &[u8], msg: &'static Msg, depth: usize) -> DResult<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(format!("messages are nested more than {MAX_DEPTH} levels deep")));
    }
    let mut slots: Vec<Option<Value>> = vec![None; msg.fields.len()];
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.field()? {
        let Some((field, slot)) = msg.fields.iter().zip(slots.iter_mut()).find(|(f, _)| f.num == num) else {
            continue; // unknown field: skipped
        };
        decode_field(field, wire, slot, depth)?;
    }
    Ok(msg.fields.iter().zip(slots).filter_map(|(f, v)| v.map(|v| (f.json.to_string(), v))).collect())
}

fn decode_field(field: &Field, wire: Wire<'_>, slot: &mut Option<Value>, depth: usize) -> DResult<()> {
    let here = |e: DecodeError| match (field.emit, &slot) {
        (Rep, Some(Value::Array(a))) => e.at(format!("{}[{}]", field.json, a.len())),
        (Rep, None) if !matches!(field.ty, Ty::Map(_)) => e.at(format!("{}[0]", field.json)),
        _ => e.at(field.json),
    };
    let value = match (field.ty, wire) {
        (Ty::Bool, Wire::Varint(v)) => Some(Value::Bool(v != 0)),
        (Ty::Int64, Wire::Varint(v)) => Some(Value::from(v as i64)),
        // int32 travels sign-extended to 64 bits; protobuf truncates.
        (Ty::Int32, Wire::Varint(v)) => Some(Value::from(v as i32)),
        (Ty::Str, Wire::Len(b)) => Some(Value::String(utf8(b).map_err(here)?)),
        (Ty::Time, Wire::Len(b)) => timestamp(b, SecondsFormat::Secs, depth + 1).map_err(here)?.map(Value::String),
        (Ty::MicroTime, Wire::Len(b)) => {
            timestamp(b, SecondsFormat::Micros, depth + 1).map_err(here)?.map(Value::String)
        }
        (Ty::FieldsV1, Wire::Len(b)) => fields_v1(b, depth + 1).map_err(here)?,
        (Ty::Msg(m), Wire::Len(b)) => Some(Value::Object(decode_message(b, m, depth + 1).map_err(here)?)),
        (Ty::Map(mv), Wire::Len(b)) => {
            let (k, v) = map_entry(b, mv, depth + 1).map_err(here)?;
            match slot {
                Some(Value::Object(m)) => {
                    m.insert(k, v);
                }
                _ => *slot = Some(Value::Object(Map::from_iter([(k, v)]))),
            }
            return Ok(());
        }
        (ty, w) => {
            return Err(here(DecodeError::new(format!("expected {} but found {}", ty.expects(), w.describe()))));
        }
    };
    match field.emit {
        Omit => *slot = value.filter(|v| !is_empty(v)),
        Keep => match (slot, value) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => merge(a, b),
            (slot, v) => *slot = v,
        },
        Rep => {
            if let Some(v) = value {
                match slot {
                    Some(Value::Array(a)) => a.push(v),
                    _ => *slot = Some(Value::Array(vec![v])),
                }
            }
        }
    }
    Ok(())
}

/// `meta/v1 Time` or `MicroTime` { seconds = 1, nanos = 2 }. An empty
/// message is Go's zero time, which JSON leaves out.
fn timestamp(b: &[u8], format: SecondsFormat, depth: usize) -> DResult<Option<String>> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(format!("messages are nested more than {MAX_DEPTH} levels deep")));
    }
    if b.is_empty() {
        return Ok(None);
    }
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut r = Reader::new(b);
    while let Some((num, wire)) = r.field()? {
        match (num, wire) {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = v as i32,
            (1 | 2, w) => return Err(DecodeError::new(format!("expected a varint but found {}", w.describe()))),
            _ => {}
        }
    }
    // Like Go's time.Unix, nanos outside [0, 1e9) carry into seconds.
    let nanos = i64::from(nanos);
    let t = seconds
        .checked_add(nanos.div_euclid(1_000_000_000))
        .and_then(|s| DateTime::from_timestamp(s, nanos.rem_euclid(1_000_000_000) as u32))
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or_else(|| {
            DecodeError::new(format!("the timestamp {seconds}s {nanos}ns is outside the years 0 to 9999"))
        })?;
    Ok(Some(t.to_rfc3339_opts(format, true)))
}

/// `resource.Quantity { string = 1 }`.
fn quantity(b: &[u8], depth: usize) -> DResult<String> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(format!("messages are nested more than {MAX_DEPTH} levels deep")));
    }
    let mut s = None;
    let mut r = Reader::new(b);
    while let Some((num, wire)) = r.field()? {
        match (num, wire) {
            (1, Wire::Len(b)) => s = Some(utf8(b)?),
            (1, w) => return Err(DecodeError::new(format!("expected a quantity string but found {}", w.describe()))),
            _ => {}
        }
    }
    Ok(s.unwrap_or_else(|| "0".to_string()))
}

/// `meta/v1 FieldsV1 { Raw = 1 }`: a JSON document.
fn fields_v1(b: &[u8], depth: usize) -> DResult<Option<Value>> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(format!("messages are nested more than {MAX_DEPTH} levels deep")));
    }
    let mut raw = None;
    let mut r = Reader::new(b);
    while let Some((num, wire)) = r.field()? {
        match (num, wire) {
            (1, Wire::Len(b)) => raw = Some(b),
            (1, w) => return Err(DecodeError::new(format!("expected raw JSON bytes but found {}", w.describe()))),
            _ => {}
        }
    }
    match raw {
        None | Some([]) => Ok(None),
        Some(raw) => serde_json::from_slice(raw)
            .map(Some)
            .map_err(|e| DecodeError::new(format!("fieldsV1 is not valid JSON: {e}"))),
    }
}

/// One `map<string, V>` entry { key = 1, value = 2 }; missing parts are
/// protobuf defaults.
fn map_entry(b: &[u8], value_type: MapValue, depth: usize) -> DResult<(String, Value)> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(format!("messages are nested more than {MAX_DEPTH} levels deep")));
    }
    let (mut key, mut value) = (String::new(), None);
    let mut r = Reader::new(b);
    while let Some((num, wire)) = r.field()? {
        match (num, wire) {
            (1, Wire::Len(b)) => key = utf8(b)?,
            (2, Wire::Len(b)) => {
                value = Some(match value_type {
                    MapValue::Str => utf8(b)?,
                    MapValue::Bytes => base64::engine::general_purpose::STANDARD.encode(b),
                    MapValue::Quantity => quantity(b, depth + 1)?,
                })
            }
            (1 | 2, w) => {
                return Err(DecodeError::new(format!(
                    "a map entry's key and value must be length-delimited, not {}",
                    w.describe()
                )))
            }
            _ => {}
        }
    }
    let value = value.unwrap_or_else(|| match value_type {
        MapValue::Quantity => "0".to_string(),
        MapValue::Str | MapValue::Bytes => String::new(),
    });
    Ok((key, Value::String(value)))
}

/// The `runtime.Unknown` wrapper.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

fn envelope(buf: &[u8]) -> DResult<Envelope<'_>> {
    let mut env = Envelope {
        api_version: String::new(),
        kind: String::new(),
        raw: &[],
        content_encoding: String::new(),
        content_type: String::new(),
    };
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.field()? {
        match (num, wire) {
            (1, Wire::Len(b)) => {
                let tm = decode_message(b, &TYPE_META, 1).map_err(|e| e.at("typeMeta"))?;
                let get = |k: &str| tm.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                env.api_version = get("apiVersion");
                env.kind = get("kind");
            }
            (2, Wire::Len(b)) => env.raw = b,
            (3, Wire::Len(b)) => env.content_encoding = utf8(b).map_err(|e| e.at("contentEncoding"))?,
            (4, Wire::Len(b)) => env.content_type = utf8(b).map_err(|e| e.at("contentType"))?,
            (1..=4, w) => {
                return Err(DecodeError::new(format!(
                    "field {num} of the runtime.Unknown envelope must be length-delimited, not {}",
                    w.describe()
                )))
            }
            _ => {}
        }
    }
    Ok(env)
}

/// Shortens client-supplied text before it is echoed in an error.
fn short(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

fn malformed(what: &str, e: &DecodeError) -> ApiError {
    let at = if e.path.is_empty() { String::new() } else { format!(" at {}", e.path()) };
    ApiError::bad_request(format!(
        "cannot decode the protobuf request body{what}{at}: {}; send a valid Kubernetes protobuf object \
         (magic \"k8s\\0\" + runtime.Unknown) or send the object as application/json",
        e.message
    ))
}

/// Decodes a Kubernetes protobuf request body into the object's JSON form,
/// with `apiVersion` and `kind` from the envelope.
///
/// Errors: 400 for malformed bytes (saying where and what), 415 for kinds
/// or encodings this decoder does not handle.
pub fn decode_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(ApiError::bad_request(
            "the request body is not Kubernetes protobuf: it must start with the 4-byte magic \"k8s\\0\"; \
             send the object as application/json instead",
        ));
    };
    let env = envelope(rest).map_err(|e| malformed("'s runtime.Unknown envelope", &e))?;
    if env.kind.is_empty() {
        return Err(ApiError::bad_request(
            "the protobuf request body's runtime.Unknown envelope names no kind (typeMeta.kind); \
             send the object as application/json instead",
        ));
    }
    let what = format!(" ({} {})", short(&env.api_version), short(&env.kind));
    let Some(schema) = schema_for(&env.api_version, &env.kind) else {
        return Err(ApiError::unsupported_media_type(format!(
            "protobuf bodies are supported for {SUPPORTED} only, not {} {}; send JSON (application/json)",
            short(&env.api_version),
            short(&env.kind)
        )));
    };
    if !env.content_encoding.is_empty() {
        return Err(ApiError::unsupported_media_type(format!(
            "protobuf bodies with contentEncoding {:?} are not supported; send the object uncompressed, or as JSON",
            short(&env.content_encoding)
        )));
    }
    if !env.content_type.is_empty() && !env.content_type.contains("protobuf") {
        return Err(ApiError::unsupported_media_type(format!(
            "the protobuf envelope wraps {:?}, not protobuf; send that object directly with its own Content-Type",
            short(&env.content_type)
        )));
    }
    let fields = decode_message(env.raw, schema, 1).map_err(|e| malformed(&what, &e))?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(env.api_version));
    obj.insert("kind".into(), Value::String(env.kind));
    obj.extend(fields);
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;

    /// A tiny protobuf encoder for building test bodies.
    #[derive(Clone, Default)]
    struct Enc(Vec<u8>);

    fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    impl Enc {
        fn new() -> Self {
            Enc(Vec::new())
        }
        fn key(mut self, num: u32, wire: u8) -> Self {
            put_varint(&mut self.0, (u64::from(num) << 3) | u64::from(wire));
            self
        }
        fn uint(self, num: u32, v: u64) -> Self {
            let mut e = self.key(num, 0);
            put_varint(&mut e.0, v);
            e
        }
        fn int(self, num: u32, v: i64) -> Self {
            self.uint(num, v as u64)
        }
        fn boolean(self, num: u32, v: bool) -> Self {
            self.uint(num, u64::from(v))
        }
        fn bytes(self, num: u32, b: &[u8]) -> Self {
            let mut e = self.key(num, 2);
            put_varint(&mut e.0, b.len() as u64);
            e.0.extend_from_slice(b);
            e
        }
        fn str(self, num: u32, s: &str) -> Self {
            self.bytes(num, s.as_bytes())
        }
        fn msg(self, num: u32, m: Enc) -> Self {
            self.bytes(num, &m.0)
        }
        fn fixed64(self, num: u32, v: u64) -> Self {
            let mut e = self.key(num, 1);
            e.0.extend_from_slice(&v.to_le_bytes());
            e
        }
        fn fixed32(self, num: u32, v: u32) -> Self {
            let mut e = self.key(num, 5);
            e.0.extend_from_slice(&v.to_le_bytes());
            e
        }
        fn entry(self, num: u32, k: &str, v: &[u8]) -> Self {
            self.msg(num, Enc::new().str(1, k).bytes(2, v))
        }
    }

    fn time(seconds: i64, nanos: i32) -> Enc {
        Enc::new().int(1, seconds).int(2, i64::from(nanos))
    }

    fn envelope_with(api_version: &str, kind: &str, raw: &Enc, encoding: &str) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(
            Enc::new()
                .msg(1, Enc::new().str(1, api_version).str(2, kind))
                .msg(2, raw.clone())
                .str(3, encoding)
                .str(4, "")
                .0,
        );
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &Enc) -> Vec<u8> {
        envelope_with(api_version, kind, raw, "")
    }

    /// ObjectMeta as Go's generated marshaller writes it: every value field,
    /// even when empty.
    fn go_meta(name: &str, namespace: &str) -> Enc {
        Enc::new()
            .str(1, name)
            .str(2, "")
            .str(3, namespace)
            .str(4, "")
            .str(5, "")
            .str(6, "")
            .int(7, 0)
            .msg(8, Enc::new())
    }

    fn ok(body: &[u8]) -> Value {
        match decode_body(body) {
            Ok(v) => v,
            Err(e) => panic!("decode failed: {e}"),
        }
    }

    fn err(body: &[u8]) -> ApiError {
        match decode_body(body) {
            Ok(v) => panic!("expected an error, decoded {v}"),
            Err(e) => e,
        }
    }

    // Bytes kubectl 1.32 sent for `kubectl create namespace team-x` (from -v=8).
    const KUBECTL_NAMESPACE: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0f, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x09, 0x4e, 0x61, 0x6d, 0x65, 0x73, 0x70,
        0x61, 0x63, 0x65, 0x12, 0x1e, 0x0a, 0x16, 0x0a, 0x06, 0x74, 0x65, 0x61, 0x6d, 0x2d, 0x78, 0x12, 0x00, 0x1a,
        0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x12, 0x00, 0x1a, 0x02, 0x0a, 0x00, 0x1a,
        0x00, 0x22, 0x00,
    ];

    // `kubectl create configmap c1 -n default --from-literal=a=b`.
    const KUBECTL_CONFIGMAP: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0f, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x09, 0x43, 0x6f, 0x6e, 0x66, 0x69, 0x67,
        0x4d, 0x61, 0x70, 0x12, 0x23, 0x0a, 0x19, 0x0a, 0x02, 0x63, 0x31, 0x12, 0x00, 0x1a, 0x07, 0x64, 0x65, 0x66,
        0x61, 0x75, 0x6c, 0x74, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x12, 0x06, 0x0a, 0x01,
        0x61, 0x12, 0x01, 0x62, 0x1a, 0x00, 0x22, 0x00,
    ];

    // `kubectl create secret generic s1 -n default --from-literal=password=hunter2`.
    const KUBECTL_SECRET: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0c, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x06, 0x53, 0x65, 0x63, 0x72, 0x65, 0x74,
        0x12, 0x32, 0x0a, 0x19, 0x0a, 0x02, 0x73, 0x31, 0x12, 0x00, 0x1a, 0x07, 0x64, 0x65, 0x66, 0x61, 0x75, 0x6c,
        0x74, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x12, 0x13, 0x0a, 0x08, 0x70, 0x61, 0x73,
        0x73, 0x77, 0x6f, 0x72, 0x64, 0x12, 0x07, 0x68, 0x75, 0x6e, 0x74, 0x65, 0x72, 0x32, 0x1a, 0x00, 0x1a, 0x00,
        0x22, 0x00,
    ];

    #[test]
    fn kubectl_bodies() {
        assert_eq!(
            ok(KUBECTL_NAMESPACE),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-x"}, "spec": {}, "status": {}})
        );
        assert_eq!(
            ok(KUBECTL_CONFIGMAP),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "namespace": "default"}, "data": {"a": "b"}})
        );
        assert_eq!(
            ok(KUBECTL_SECRET),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1", "namespace": "default"},
                   "data": {"password": "aHVudGVyMg=="}})
        );
    }

    #[test]
    fn configmap_with_full_metadata() {
        let owner = Enc::new()
            .str(1, "VirtualMachine")
            .str(3, "vm1")
            .str(4, "u-1")
            .str(5, "kubevirt.io/v1")
            .boolean(6, true)
            .boolean(7, false);
        let managed = Enc::new()
            .str(1, "kubectl")
            .str(2, "Update")
            .str(3, "v1")
            .msg(4, time(1_700_000_000, 0))
            .str(6, "FieldsV1")
            .msg(7, Enc::new().bytes(1, br#"{"f:data":{}}"#));
        let meta = Enc::new()
            .str(1, "c1")
            .str(2, "c-")
            .str(3, "ns1")
            .str(5, "uid-1")
            .str(6, "42")
            .int(7, 3)
            .msg(8, time(1_767_225_600, 123_000_000))
            .entry(11, "app", b"web")
            .entry(11, "tier", b"")
            .entry(12, "note", b"hello")
            .msg(13, owner)
            .str(14, "example.com/x")
            .str(14, "example.com/y")
            .msg(17, managed);
        let cm = Enc::new()
            .msg(1, meta)
            .entry(2, "k", b"v")
            .entry(2, "k2", b"line1\nline2")
            .entry(3, "bin", &[0, 1, 2, 255])
            .boolean(4, false);
        assert_eq!(
            ok(&envelope("v1", "ConfigMap", &cm)),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": "c1", "generateName": "c-", "namespace": "ns1", "uid": "uid-1",
                    "resourceVersion": "42", "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                    "labels": {"app": "web", "tier": ""}, "annotations": {"note": "hello"},
                    "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "vm1",
                                         "uid": "u-1", "controller": true, "blockOwnerDeletion": false}],
                    "finalizers": ["example.com/x", "example.com/y"],
                    "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                                       "time": "2023-11-14T22:13:20Z", "fieldsType": "FieldsV1",
                                       "fieldsV1": {"f:data": {}}}]
                },
                "immutable": false,
                "data": {"k": "v", "k2": "line1\nline2"},
                "binaryData": {"bin": "AAEC/w=="}
            })
        );
    }

    #[test]
    fn secret() {
        let s = Enc::new()
            .msg(1, go_meta("s1", "ns"))
            .entry(2, "password", b"hunter2")
            .entry(2, "empty", b"")
            .str(3, "kubernetes.io/basic-auth")
            .entry(4, "plain", b"text")
            .boolean(5, true);
        assert_eq!(
            ok(&envelope("v1", "Secret", &s)),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1", "namespace": "ns"},
                   "immutable": true, "data": {"password": "aHVudGVyMg==", "empty": ""},
                   "stringData": {"plain": "text"}, "type": "kubernetes.io/basic-auth"})
        );
        // An empty type is omitted, as Go's omitempty does.
        let s = Enc::new().msg(1, go_meta("s2", "")).str(3, "");
        assert_eq!(
            ok(&envelope("v1", "Secret", &s)),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s2"}})
        );
    }

    #[test]
    fn namespace() {
        let cond = Enc::new().str(1, "NamespaceDeletionContentFailure").str(2, "False").msg(4, time(0, 0)).str(5, "");
        let ns = Enc::new()
            .msg(1, go_meta("", "").str(2, "team-"))
            .msg(2, Enc::new().str(1, "kubernetes").str(1, "example.com/f"))
            .msg(3, Enc::new().str(1, "Terminating").msg(2, cond));
        assert_eq!(
            ok(&envelope("v1", "Namespace", &ns)),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": "team-"},
                   "spec": {"finalizers": ["kubernetes", "example.com/f"]},
                   "status": {"phase": "Terminating", "conditions": [
                       {"type": "NamespaceDeletionContentFailure", "status": "False",
                        "lastTransitionTime": "1970-01-01T00:00:00Z"}]}})
        );
    }

    #[test]
    fn node() {
        let taint = Enc::new().str(1, "dedicated").str(2, "gpu").str(3, "NoSchedule").msg(4, time(1_767_225_600, 0));
        let taint2 = Enc::new().str(1, "maint").str(2, "").str(3, "NoExecute");
        let spec = Enc::new()
            .str(1, "10.0.0.0/24")
            .str(2, "")
            .str(3, "sheaf://node1")
            .boolean(4, true)
            .msg(5, taint)
            .msg(5, taint2)
            .str(7, "10.0.0.0/24");
        let q = |s: &str| Enc::new().str(1, s);
        let cond = Enc::new()
            .str(1, "Ready")
            .str(2, "True")
            .msg(3, time(1_767_225_600, 0))
            .msg(4, time(1_767_225_601, 0))
            .str(5, "KubeletReady")
            .str(6, "ok");
        let info = Enc::new()
            .str(1, "m1")
            .str(2, "")
            .str(3, "")
            .str(4, "6.1.0")
            .str(5, "Debian 12")
            .str(6, "")
            .str(7, "v0.1.0")
            .str(8, "")
            .str(9, "linux")
            .str(10, "amd64");
        let status = Enc::new()
            .msg(1, Enc::new().str(1, "cpu").msg(2, q("4")))
            .msg(1, Enc::new().str(1, "memory").msg(2, q("16Gi")))
            .msg(2, Enc::new().str(1, "cpu").msg(2, q("3500m")))
            .msg(2, Enc::new().str(1, "pods"))
            .str(3, "")
            .msg(4, cond)
            .msg(5, Enc::new().str(1, "InternalIP").str(2, "192.168.1.10"))
            .msg(6, Enc::new().msg(1, Enc::new().int(1, 10250)))
            .msg(7, info);
        let node = Enc::new().msg(1, go_meta("node1", "")).msg(2, spec).msg(3, status);
        assert_eq!(
            ok(&envelope("v1", "Node", &node)),
            json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
                "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24"], "providerID": "sheaf://node1",
                         "unschedulable": true,
                         "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule",
                                     "timeAdded": "2026-01-01T00:00:00Z"},
                                    {"key": "maint", "effect": "NoExecute"}]},
                "status": {
                    "capacity": {"cpu": "4", "memory": "16Gi"},
                    "allocatable": {"cpu": "3500m", "pods": "0"},
                    "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                                    "lastTransitionTime": "2026-01-01T00:00:01Z", "reason": "KubeletReady",
                                    "message": "ok"}],
                    "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                    "nodeInfo": {"machineID": "m1", "systemUUID": "", "bootID": "", "kernelVersion": "6.1.0",
                                 "osImage": "Debian 12", "containerRuntimeVersion": "", "kubeletVersion": "v0.1.0",
                                 "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}
                }
            })
        );
    }

    #[test]
    fn event() {
        let obj =
            Enc::new().str(1, "VirtualMachine").str(2, "default").str(3, "vm1").str(4, "u1").str(5, "kubevirt.io/v1");
        let ev = Enc::new()
            .msg(1, go_meta("vm1.123", "default"))
            .msg(2, obj)
            .str(3, "Started")
            .str(4, "VM started")
            .msg(5, Enc::new().str(1, "sheaf-agent").str(2, "node1"))
            .msg(6, time(1_767_225_600, 0))
            .msg(7, time(1_767_225_660, 999_999_999))
            .int(8, 2)
            .str(9, "Normal")
            .msg(10, time(1_767_225_600, 123_456_789))
            .msg(11, Enc::new().int(1, 5).msg(2, time(1_767_225_700, 1_000)))
            .str(12, "Start")
            .msg(13, Enc::new().str(1, "Node").str(3, "node1"))
            .str(14, "sheaf")
            .str(15, "");
        assert_eq!(
            ok(&envelope("v1", "Event", &ev)),
            json!({
                "apiVersion": "v1", "kind": "Event", "metadata": {"name": "vm1.123", "namespace": "default"},
                "involvedObject": {"kind": "VirtualMachine", "namespace": "default", "name": "vm1", "uid": "u1",
                                   "apiVersion": "kubevirt.io/v1"},
                "reason": "Started", "message": "VM started",
                "source": {"component": "sheaf-agent", "host": "node1"},
                "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:01:00Z",
                "count": 2, "type": "Normal", "eventTime": "2026-01-01T00:00:00.123456Z",
                "series": {"count": 5, "lastObservedTime": "2026-01-01T00:01:40.000001Z"},
                "action": "Start", "related": {"kind": "Node", "name": "node1"},
                "reportingComponent": "sheaf", "reportingInstance": ""
            })
        );
    }

    #[test]
    fn delete_options() {
        let d = Enc::new()
            .int(1, 0)
            .msg(2, Enc::new().str(1, "uid-1").str(2, "7"))
            .boolean(3, false)
            .str(4, "Foreground")
            .str(5, "All");
        assert_eq!(
            ok(&envelope("v1", "DeleteOptions", &d)),
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                   "preconditions": {"uid": "uid-1", "resourceVersion": "7"}, "orphanDependents": false,
                   "propagationPolicy": "Foreground", "dryRun": ["All"]})
        );
        // Negative int64s travel as 10-byte varints.
        let d = Enc::new().int(1, -1);
        assert_eq!(
            ok(&envelope("meta.k8s.io/v1", "DeleteOptions", &d)),
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "gracePeriodSeconds": -1})
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let meta = go_meta("c1", "")
            .uint(99, 7)
            .fixed64(100, u64::MAX)
            .fixed32(101, 1)
            .str(102, "x")
            .msg(15, Enc::new().str(1, "unknown nested"));
        let cm = Enc::new().msg(1, meta).uint(50, 1).entry(2, "a", b"b").msg(1000, Enc::new().fixed32(1, 3));
        let mut body = envelope("v1", "ConfigMap", &cm);
        body.extend(Enc::new().str(9, "trailing unknown envelope field").0);
        assert_eq!(
            ok(&body),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn repeated_messages_merge_and_scalars_replace() {
        let cm = Enc::new()
            .msg(1, Enc::new().str(1, "first").entry(11, "a", b"1").str(14, "f1"))
            .msg(1, Enc::new().str(1, "second").entry(11, "b", b"2").str(14, "f2"))
            .entry(2, "k", b"old")
            .entry(2, "k", b"new");
        assert_eq!(
            ok(&envelope("v1", "ConfigMap", &cm)),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "second", "labels": {"a": "1", "b": "2"}, "finalizers": ["f1", "f2"]},
                   "data": {"k": "new"}})
        );
    }

    #[test]
    fn unsupported_kinds_and_encodings_are_415() {
        for (av, kind) in [("apps/v1", "Deployment"), ("v1", "Pod"), ("kubevirt.io/v1", "VirtualMachine")] {
            let e = err(&envelope(av, kind, &Enc::new()));
            assert_eq!(e.code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{e}");
            assert!(e.message.contains("protobuf bodies are supported for") && e.message.contains("send JSON"), "{e}");
            assert!(e.message.contains(kind), "{e}");
        }
        let e = err(&envelope_with("v1", "ConfigMap", &Enc::new(), "gzip"));
        assert_eq!(e.code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{e}");
    }

    #[test]
    fn malformed_bodies_are_400() {
        let bad = |body: &[u8], needle: &str| {
            let e = err(body);
            assert_eq!(e.code, StatusCode::BAD_REQUEST, "{e}");
            assert!(e.message.contains(needle), "{needle:?} not in {e}");
            assert!(e.message.contains("application/json"), "not actionable: {e}");
        };
        bad(b"{\"kind\":\"ConfigMap\"}", "magic");
        bad(b"k8s", "magic");
        bad(b"k8s\x01\x0a\x00", "magic");
        bad(b"k8s\0", "names no kind");
        // Truncated varint in the envelope.
        bad(b"k8s\0\x0a\x8f", "middle of a varint");
        // 11-byte varint.
        let mut overlong = b"k8s\0\x08".to_vec();
        overlong.extend([0xff; 10]);
        overlong.push(0x01);
        bad(&overlong, "longer than 10 bytes");
        // 10-byte varint whose last byte overflows 64 bits.
        let mut overflow = b"k8s\0\x08".to_vec();
        overflow.extend([0xff; 9]);
        overflow.push(0x02);
        bad(&overflow, "overflows 64 bits");
        // A length beyond the buffer, including one that does not fit in usize on 32-bit targets.
        bad(b"k8s\0\x0a\x05\x0a\x02v1", "runs past the end");
        let mut huge = b"k8s\0\x12".to_vec();
        put_varint(&mut huge, u64::MAX);
        bad(&huge, "runs past the end");
        // Field number zero, groups, invalid wire types.
        bad(b"k8s\0\x00\x00", "invalid field number 0");
        bad(b"k8s\0\x0b\x0c", "group");
        bad(b"k8s\0\x0e", "invalid wire type 6");

        // Errors inside the object say where.
        let raw = Enc::new().msg(1, Enc::new().uint(1, 5));
        bad(
            &envelope("v1", "ConfigMap", &raw),
            "at metadata.name: expected a length-delimited value but found a varint",
        );
        let raw = Enc::new().msg(1, Enc::new().bytes(1, &[0xff, 0xfe]));
        bad(&envelope("v1", "Secret", &raw), "at metadata.name: a string is not valid UTF-8");
        let raw = Enc::new().msg(1, Enc::new().msg(13, Enc::new()).msg(13, Enc::new().uint(1, 1)));
        bad(&envelope("v1", "Secret", &raw), "at metadata.ownerReferences[1].kind");
        let raw = Enc::new().msg(1, Enc::new().msg(8, time(i64::MAX, 0)));
        bad(&envelope("v1", "ConfigMap", &raw), "at metadata.creationTimestamp: the timestamp");
        let raw = Enc::new().msg(1, Enc::new().msg(11, Enc::new().uint(1, 3)));
        bad(&envelope("v1", "ConfigMap", &raw), "at metadata.labels: a map entry's key");
        let raw = Enc::new().msg(1, Enc::new().msg(17, Enc::new().msg(7, Enc::new().bytes(1, b"{nope"))));
        bad(&envelope("v1", "ConfigMap", &raw), "fieldsV1 is not valid JSON");
        // A nested length that overruns its parent (but not the whole body).
        let mut raw = Enc::new().msg(1, Enc::new().str(1, "abc"));
        raw.0[3] = 0x7f;
        let mut body = envelope("v1", "ConfigMap", &raw);
        body.extend(Enc::new().bytes(9, &[0; 200]).0);
        bad(&body, "runs past the end");
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let cm = Enc::new()
            .msg(1, go_meta("c1", "ns").entry(11, "a", b"b").msg(8, time(1_767_225_600, 5)))
            .entry(2, "k", b"v")
            .entry(3, "b", b"\x00\x01");
        let body = envelope("v1", "ConfigMap", &cm);
        assert!(decode_body(&body).is_ok());
        for n in 0..body.len() {
            if let Err(e) = decode_body(&body[..n]) {
                assert_eq!(e.code, StatusCode::BAD_REQUEST, "prefix {n}: {e}");
            }
        }
    }

    static NEST: Msg = Msg { fields: &[f(1, "child", Ty::Msg(&NEST), Keep)] };

    fn nested(levels: usize) -> Enc {
        let mut e = Enc::new();
        for _ in 0..levels {
            e = Enc::new().msg(1, e);
        }
        e
    }

    #[test]
    fn nesting_is_limited() {
        assert!(decode_message(&nested(MAX_DEPTH - 1).0, &NEST, 1).is_ok());
        let e = decode_message(&nested(MAX_DEPTH + 5).0, &NEST, 1).err().map(|e| e.message).unwrap_or_default();
        assert!(e.contains("nested more than"), "{e}");
        let e = decode_message(&nested(10_000).0, &NEST, 1).err().map(|e| e.message).unwrap_or_default();
        assert!(e.contains("nested more than"), "{e}");
        // Deeply nested unknown fields inside a real object are skipped without recursion.
        let cm = Enc::new().msg(1, go_meta("c1", "")).msg(77, nested(3_000));
        assert_eq!(
            ok(&envelope("v1", "ConfigMap", &cm)),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}})
        );
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    fn corpus() -> Vec<Vec<u8>> {
        let event = Enc::new()
            .msg(1, go_meta("e", "default"))
            .msg(2, Enc::new().str(3, "vm1"))
            .msg(10, time(1_767_225_600, 1))
            .msg(11, Enc::new().int(1, 1));
        let node = Enc::new()
            .msg(1, go_meta("n", ""))
            .msg(2, Enc::new().boolean(4, true).msg(5, Enc::new().str(1, "k").str(3, "NoSchedule")))
            .msg(3, Enc::new().msg(1, Enc::new().str(1, "cpu").msg(2, Enc::new().str(1, "4"))));
        vec![
            KUBECTL_NAMESPACE.to_vec(),
            KUBECTL_CONFIGMAP.to_vec(),
            KUBECTL_SECRET.to_vec(),
            envelope("v1", "Event", &event),
            envelope("v1", "Node", &node),
            envelope("v1", "DeleteOptions", &Enc::new().int(1, 30).msg(2, Enc::new().str(1, "u")).str(5, "All")),
            envelope("v1", "ConfigMap", &Enc::new().msg(1, Enc::new().msg(17, Enc::new().msg(7, Enc::new())))),
        ]
    }

    /// Random and mutated inputs never panic, and fail only with 400 or 415.
    #[test]
    fn fuzz_never_panics() {
        let corpus = corpus();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut decoded = 0;
        for i in 0..6000 {
            let input: Vec<u8> = match i % 4 {
                // Random bytes after the magic.
                0 => {
                    let mut v = MAGIC.to_vec();
                    let n = rng.below(64);
                    v.extend((0..n).map(|_| rng.byte()));
                    v
                }
                // Byte flips.
                1 => {
                    let mut v = corpus[rng.below(corpus.len())].clone();
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(v.len());
                        if let Some(b) = v.get_mut(at) {
                            *b ^= 1 << rng.below(8);
                        }
                    }
                    v
                }
                // Truncation, insertion and duplication of a slice.
                2 => {
                    let mut v = corpus[rng.below(corpus.len())].clone();
                    let at = 4 + rng.below(v.len() - 4);
                    match rng.below(3) {
                        0 => v.truncate(at),
                        1 => {
                            let junk: Vec<u8> = (0..=rng.below(8)).map(|_| rng.byte()).collect();
                            v.splice(at..at, junk);
                        }
                        _ => {
                            let end = (at + rng.below(16)).min(v.len());
                            let dup = v[at..end].to_vec();
                            v.splice(at..at, dup);
                        }
                    }
                    v
                }
                // Overwrite a byte with a varint-ish or length-ish value.
                _ => {
                    let mut v = corpus[rng.below(corpus.len())].clone();
                    let at = 4 + rng.below(v.len() - 4);
                    if let Some(b) = v.get_mut(at) {
                        *b = [0x00, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x1a][rng.below(7)];
                    }
                    v
                }
            };
            match decode_body(&input) {
                Ok(_) => decoded += 1,
                Err(e) => {
                    assert!(e.code == StatusCode::BAD_REQUEST || e.code == StatusCode::UNSUPPORTED_MEDIA_TYPE, "{e}")
                }
            }
        }
        // The mutations are not all fatal: some still decode.
        assert!(decoded > 0);
    }
}
