//! Core `v1` kinds: Namespace, Node, Secret, ConfigMap, Event.

use std::collections::BTreeMap;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::{Condition, ObjectMeta, ObjectReference, Time};
use crate::quantity::Quantity;
use crate::resource::{Column, Kind};
use crate::validation::{self, FieldError};

/// Bytes that travel as base64 in JSON (`[]byte` in Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteString(pub Vec<u8>);

impl Serialize for ByteString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for ByteString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map(ByteString)
            .map_err(|e| serde::de::Error::custom(format!("illegal base64 data: {e}; values under `data` must be base64-encoded (use `stringData` for plain text)")))
    }
}

impl JsonSchema for ByteString {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteString".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "byte"})
    }
}

fn check_data_keys<'a>(field: &str, keys: impl Iterator<Item = &'a String>, errs: &mut Vec<FieldError>) {
    for k in keys {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            errs.push(FieldError::invalid(
                format!("{field}[{k}]"),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                 (e.g. 'key.name', or 'KEY_NAME', or 'key-name')",
            ));
        }
    }
}

// ---------------------------------------------------------------- Namespace

/// A namespace groups objects and is the unit of tenancy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Namespace {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<NamespaceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NamespaceSpec {
    /// Finalizers that must be cleared before the namespace is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NamespaceStatus {
    /// `Active` or `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Kind for Namespace {
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "Namespace";
    const PLURAL: &'static str = "namespaces";
    const SHORT_NAMES: &'static [&'static str] = &["ns"];
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(name) = &self.metadata.name {
            if let Err(e) = validation::dns1123_label(name) {
                errs.push(FieldError::invalid(
                    "metadata.name",
                    format!("namespace names must be DNS-1123 labels: {e}"),
                ));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Status", "string", ".status.phase")]
    }
    fn description() -> &'static str {
        "Namespace provides a scope for names and is the unit of tenancy."
    }
}

// ---------------------------------------------------------------- Node

/// A machine that runs the Sheaf agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<NodeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Cordon: no new virtual machines are scheduled here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unschedulable: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<NodeCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<NodeSystemInfo>,
}

/// A node condition (`Ready`): as other conditions, plus the time the
/// node's agent last confirmed it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the agent last reported this condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSystemInfo {
    #[serde(default)]
    pub machine_id: String,
    #[serde(default)]
    pub kernel_version: String,
    #[serde(default)]
    pub os_image: String,
    #[serde(default)]
    pub operating_system: String,
    #[serde(default)]
    pub architecture: String,
    /// The Sheaf version running on the node.
    #[serde(default)]
    pub kubelet_version: String,
}

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

impl Kind for Node {
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "Node";
    const PLURAL: &'static str = "nodes";
    const SHORT_NAMES: &'static [&'static str] = &["no"];
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(spec) = &self.spec {
            for (i, t) in spec.taints.iter().enumerate() {
                if let Err(e) = validation::qualified_name(&t.key) {
                    errs.push(FieldError::invalid(format!("spec.taints[{i}].key"), e));
                }
                if !TAINT_EFFECTS.contains(&t.effect.as_str()) {
                    errs.push(FieldError::unsupported(format!("spec.taints[{i}].effect"), &t.effect, TAINT_EFFECTS));
                }
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Status", "string", ".status.conditions[0].type"),
            Column::new("Version", "string", ".status.nodeInfo.kubeletVersion"),
            Column::new("Internal-IP", "string", ".status.addresses[0].address").wide(),
            Column::new("Kernel-Version", "string", ".status.nodeInfo.kernelVersion").wide(),
        ]
    }
    fn description() -> &'static str {
        "Node is a machine in the Sheaf cluster."
    }
}

// ---------------------------------------------------------------- Secret

/// Secret holds sensitive data such as passwords, keys and cloud-init user data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Base64-encoded values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, ByteString>,
    /// Plain-text values, merged into `data` on write (write-only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    /// For example `Opaque`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl Kind for Secret {
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "Secret";
    const PLURAL: &'static str = "secrets";
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        check_data_keys("data", self.data.keys(), &mut errs);
        check_data_keys("stringData", self.string_data.keys(), &mut errs);
        let size: usize = self.data.values().map(|v| v.0.len()).sum::<usize>()
            + self.string_data.values().map(|v| v.len()).sum::<usize>();
        if size > 1024 * 1024 {
            errs.push(FieldError::new(
                "data",
                crate::FieldErrorReason::TooLong,
                "Too long: must have at most 1048576 bytes",
            ));
        }
        if let Some(old) = old {
            if old.immutable == Some(true)
                && (old.data != self.data || !self.string_data.is_empty() || old.secret_type() != self.secret_type())
            {
                errs.push(FieldError::forbidden("data", "field is immutable when `immutable` is set"));
            }
            if old.secret_type() != self.secret_type() {
                errs.push(FieldError::invalid("type", "field is immutable"));
            }
        }
        errs
    }
    fn normalize(&mut self) {
        self.fold_string_data();
        if self.type_.as_deref().unwrap_or("").is_empty() {
            self.type_ = Some("Opaque".into());
        }
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Type", "string", ".type"), Column::new("Data", "integer", ".data.#len")]
    }
    fn description() -> &'static str {
        "Secret holds sensitive data such as passwords, SSH keys or cloud-init user data."
    }
}

impl Secret {
    /// The type, `Opaque` when unset.
    pub fn secret_type(&self) -> &str {
        match self.type_.as_deref() {
            None | Some("") => "Opaque",
            Some(t) => t,
        }
    }

    /// Folds `stringData` into `data`, as the server does on every write.
    pub fn fold_string_data(&mut self) {
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, ByteString(v.into_bytes()));
        }
    }
}

// ---------------------------------------------------------------- ConfigMap

/// ConfigMap holds non-confidential configuration as key/value pairs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, ByteString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl Kind for ConfigMap {
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "ConfigMap";
    const PLURAL: &'static str = "configmaps";
    const SHORT_NAMES: &'static [&'static str] = &["cm"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        check_data_keys("data", self.data.keys(), &mut errs);
        check_data_keys("binaryData", self.binary_data.keys(), &mut errs);
        for k in self.data.keys() {
            if self.binary_data.contains_key(k) {
                errs.push(FieldError::duplicate(format!("binaryData[{k}]"), k));
            }
        }
        if let Some(old) = old {
            if old.immutable == Some(true) && (old.data != self.data || old.binary_data != self.binary_data) {
                errs.push(FieldError::forbidden("data", "field is immutable when `immutable` is set"));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Data", "integer", ".data.#len")]
    }
    fn description() -> &'static str {
        "ConfigMap holds configuration data as key/value pairs."
    }
}

// ---------------------------------------------------------------- Event

/// Event reports something that happened to an object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub involved_object: ObjectReference,
    /// Short, machine-readable reason in UpperCamelCase, e.g. `Started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EventSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
    /// `Normal` or `Warning`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_instance: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

const EVENT_TYPES: &[&str] = &["Normal", "Warning"];

impl Kind for Event {
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "Event";
    const PLURAL: &'static str = "events";
    const SHORT_NAMES: &'static [&'static str] = &["ev"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(t) = &self.type_ {
            if !EVENT_TYPES.contains(&t.as_str()) {
                errs.push(FieldError::unsupported("type", t, EVENT_TYPES));
            }
        }
        if self.involved_object.name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required("involvedObject.name"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Last Seen", "date", ".lastTimestamp"),
            Column::new("Type", "string", ".type"),
            Column::new("Reason", "string", ".reason"),
            Column::new("Object", "string", ".involvedObject.name"),
            Column::new("Message", "string", ".message"),
        ]
    }
    fn description() -> &'static str {
        "Event reports something that happened to an object."
    }
}
