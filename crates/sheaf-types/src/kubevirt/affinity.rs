//! core/v1 Affinity as a VirtualMachineInstance's `spec.affinity`: node
//! affinity (which nodes, by label or name) and VM affinity and
//! anti-affinity (`podAffinity`/`podAntiAffinity`: near or away from other
//! VMIs, by their labels, per topology domain). The field names are
//! Kubernetes', every field KubeVirt passes on to its pods is kept, and the
//! rules checked are Kubernetes' pod validation rules, so a manifest written
//! for KubeVirt is read and judged unchanged.
//!
//! This module also says what a term *means* ([`NodeSelectorTerm::matches`],
//! [`LabelSelector::matches`]); the scheduler decides what to do with it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{self, FieldError};

/// The label holding a node's name, the usual `topologyKey`.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Operators of node selector requirements.
pub const NODE_SELECTOR_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];
/// Operators of label selector requirements.
pub const LABEL_SELECTOR_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];
/// Operators of node field selector requirements (`matchFields`).
pub const NODE_FIELD_OPERATORS: &[&str] = &["In", "NotIn"];
/// The one node field `matchFields` can select on.
pub const NODE_NAME_FIELD: &str = "metadata.name";

/// Where an instance may run and next to what (core/v1 Affinity).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    /// Which nodes, by their labels and names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    /// Near which other instances (same topology domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<PodAffinity>,
    /// Away from which other instances (another topology domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_anti_affinity: Option<PodAffinity>,
}

/// Node affinity: terms a node must match, and terms that make a node
/// preferred.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeAffinity {
    /// A node must match one of these terms.
    #[serde(
        rename = "requiredDuringSchedulingIgnoredDuringExecution",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub required: Option<NodeSelector>,
    /// Each term a node matches adds its weight to the node's score.
    #[serde(
        rename = "preferredDuringSchedulingIgnoredDuringExecution",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub preferred: Vec<PreferredSchedulingTerm>,
}

/// Terms ORed: a node matches the selector when it matches one of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    /// At least one term.
    #[serde(default)]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// Requirements ANDed. A term with no requirements matches no node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    /// Requirements on the node's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
    /// Requirements on the node's fields: `metadata.name` with In or NotIn
    /// and one value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<NodeSelectorRequirement>,
}

/// One requirement on a node label (or field).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirement {
    /// The label key (or `metadata.name` in `matchFields`).
    #[serde(default)]
    pub key: String,
    /// In, NotIn, Exists, DoesNotExist, Gt or Lt.
    #[serde(default)]
    pub operator: String,
    /// In/NotIn: one or more values; Exists/DoesNotExist: none; Gt/Lt: one
    /// integer, compared with the label read as an integer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A weighted node preference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferredSchedulingTerm {
    /// 1 to 100.
    #[serde(default)]
    pub weight: i32,
    /// The nodes preferred.
    #[serde(default)]
    pub preference: NodeSelectorTerm,
}

/// VM affinity or anti-affinity (core/v1 PodAffinity and PodAntiAffinity,
/// which have the same fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodAffinity {
    /// Every term must hold on the node chosen.
    #[serde(rename = "requiredDuringSchedulingIgnoredDuringExecution", default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<PodAffinityTerm>,
    /// Each instance matching a term in the node's topology domain adds
    /// (affinity) or takes away (anti-affinity) the term's weight.
    #[serde(
        rename = "preferredDuringSchedulingIgnoredDuringExecution",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub preferred: Vec<WeightedPodAffinityTerm>,
}

/// Instances (selected by labels and namespaces) and the topology domain
/// (nodes with the same value of the `topologyKey` label) to be in or out of.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodAffinityTerm {
    /// The instances; unset selects none, `{}` every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Namespaces of the instances; with `namespaceSelector` unset and no
    /// namespaces, the instance's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// A node label: nodes with the same value are one domain
    /// (`kubernetes.io/hostname`: each node is its own). Required.
    #[serde(default)]
    pub topology_key: String,
    /// Namespaces (by their labels) of the instances, added to
    /// `namespaces`; `{}` selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Label keys whose values, taken from the instance being placed, are
    /// added to `labelSelector` as `key in (value)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_label_keys: Vec<String>,
    /// Label keys whose values, taken from the instance being placed, are
    /// added to `labelSelector` as `key notin (value)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatch_label_keys: Vec<String>,
}

/// A weighted VM (anti-)affinity preference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeightedPodAffinityTerm {
    /// 1 to 100.
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub pod_affinity_term: PodAffinityTerm,
}

/// A label query (meta/v1 LabelSelector): `matchLabels` and
/// `matchExpressions` ANDed; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must have these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a label selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    #[serde(default)]
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    #[serde(default)]
    pub operator: String,
    /// In/NotIn: one or more values; Exists/DoesNotExist: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

// ---------------------------------------------------------------------------
// Meaning
// ---------------------------------------------------------------------------

impl NodeSelector {
    /// Whether a node with this name and these labels matches one term.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector_terms.iter().any(|t| t.matches(name, labels))
    }
}

impl NodeSelectorTerm {
    /// Whether the term has no requirement (it then matches no node).
    pub fn is_empty(&self) -> bool {
        self.match_expressions.is_empty() && self.match_fields.is_empty()
    }

    /// Whether a node with this name and these labels meets every
    /// requirement of the term; an empty term matches no node.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        !self.is_empty()
            && self.match_expressions.iter().all(|r| r.matches_label(labels))
            && self.match_fields.iter().all(|r| r.matches_field(name))
    }
}

impl NodeSelectorRequirement {
    /// Kubernetes' node label requirement: NotIn and DoesNotExist hold for
    /// a node without the label; Gt and Lt compare integers (a label that is
    /// not one matches neither); an unknown operator matches nothing.
    pub fn matches_label(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let has = |v: &String| self.values.iter().any(|x| x == v);
        match self.operator.as_str() {
            "In" => value.is_some_and(has),
            "NotIn" => !value.is_some_and(has),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            op @ ("Gt" | "Lt") => {
                let (Some(label), [limit]) = (value, self.values.as_slice()) else { return false };
                let (Ok(label), Ok(limit)) = (label.parse::<i64>(), limit.parse::<i64>()) else { return false };
                if op == "Gt" {
                    label > limit
                } else {
                    label < limit
                }
            }
            _ => false,
        }
    }

    /// A `matchFields` requirement on the node's name.
    pub fn matches_field(&self, node_name: &str) -> bool {
        if self.key != NODE_NAME_FIELD {
            return false;
        }
        let listed = self.values.iter().any(|v| v == node_name);
        match self.operator.as_str() {
            "In" => listed,
            "NotIn" => !listed,
            _ => false,
        }
    }
}

impl LabelSelector {
    /// Whether labels satisfy every `matchLabels` entry and expression.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl LabelSelectorRequirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let has = |v: &String| self.values.iter().any(|x| x == v);
        match self.operator.as_str() {
            "In" => value.is_some_and(has),
            "NotIn" => !value.is_some_and(has),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    }
}

impl PodAffinityTerm {
    /// The term's label selector with `matchLabelKeys` and
    /// `mismatchLabelKeys` resolved against `owner`'s labels (the instance
    /// whose term it is); None: the term selects nothing.
    pub fn selector_for(&self, owner: &BTreeMap<String, String>) -> Option<LabelSelector> {
        let mut sel = self.label_selector.clone()?;
        for (keys, operator) in [(&self.match_label_keys, "In"), (&self.mismatch_label_keys, "NotIn")] {
            for key in keys {
                if let Some(v) = owner.get(key) {
                    sel.match_expressions.push(LabelSelectorRequirement {
                        key: key.clone(),
                        operator: operator.into(),
                        values: vec![v.clone()],
                    });
                }
            }
        }
        Some(sel)
    }

    /// Whether the term, written in namespace `owner_ns`, covers instances
    /// of namespace `ns` (whose labels are `ns_labels`).
    pub fn covers_namespace(&self, owner_ns: &str, ns: &str, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.namespaces.is_empty() && self.namespace_selector.is_none() {
            return ns == owner_ns;
        }
        self.namespaces.iter().any(|n| n == ns)
            || self.namespace_selector.as_ref().is_some_and(|sel| ns_labels.is_some_and(|l| sel.matches(l)))
    }
}

impl PodAffinity {
    /// Whether any term needs namespace labels (a `namespaceSelector`).
    pub fn selects_namespaces(&self) -> bool {
        self.required
            .iter()
            .chain(self.preferred.iter().map(|w| &w.pod_affinity_term))
            .any(|t| t.namespace_selector.is_some())
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Checks an affinity at path `p` (for example `spec.affinity`) with
/// Kubernetes' pod validation rules.
pub fn validate(a: &Affinity, p: &str, errs: &mut Vec<FieldError>) {
    if let Some(na) = &a.node_affinity {
        let np = format!("{p}.nodeAffinity");
        if let Some(required) = &na.required {
            let rp = format!("{np}.requiredDuringSchedulingIgnoredDuringExecution");
            if required.node_selector_terms.is_empty() {
                errs.push(FieldError::new(
                    format!("{rp}.nodeSelectorTerms"),
                    crate::FieldErrorReason::Required,
                    "must have at least one node selector term",
                ));
            }
            for (i, t) in required.node_selector_terms.iter().enumerate() {
                validate_node_selector_term(t, &format!("{rp}.nodeSelectorTerms[{i}]"), errs);
            }
        }
        for (i, t) in na.preferred.iter().enumerate() {
            let tp = format!("{np}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            validate_weight(t.weight, &tp, errs);
            validate_node_selector_term(&t.preference, &format!("{tp}.preference"), errs);
        }
    }
    for (field, pa) in [("podAffinity", &a.pod_affinity), ("podAntiAffinity", &a.pod_anti_affinity)] {
        let Some(pa) = pa else { continue };
        let pp = format!("{p}.{field}");
        for (i, t) in pa.required.iter().enumerate() {
            validate_pod_affinity_term(t, &format!("{pp}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"), errs);
        }
        for (i, t) in pa.preferred.iter().enumerate() {
            let tp = format!("{pp}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            validate_weight(t.weight, &tp, errs);
            validate_pod_affinity_term(&t.pod_affinity_term, &format!("{tp}.podAffinityTerm"), errs);
        }
    }
}

fn validate_weight(weight: i32, p: &str, errs: &mut Vec<FieldError>) {
    if !(1..=100).contains(&weight) {
        errs.push(FieldError::invalid(format!("{p}.weight"), format!("must be in the range 1-100, got {weight}")));
    }
}

fn validate_node_selector_term(t: &NodeSelectorTerm, p: &str, errs: &mut Vec<FieldError>) {
    for (i, r) in t.match_expressions.iter().enumerate() {
        let rp = format!("{p}.matchExpressions[{i}]");
        validate_key(&r.key, &rp, errs);
        match r.operator.as_str() {
            "In" | "NotIn" => {
                if r.values.is_empty() {
                    errs.push(FieldError::new(
                        format!("{rp}.values"),
                        crate::FieldErrorReason::Required,
                        format!("must be specified when `operator` is '{}'", r.operator),
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !r.values.is_empty() {
                    errs.push(FieldError::forbidden(
                        format!("{rp}.values"),
                        format!("may not be specified when `operator` is '{}'", r.operator),
                    ));
                }
            }
            "Gt" | "Lt" => match r.values.as_slice() {
                [v] => {
                    if v.parse::<i64>().is_err() {
                        errs.push(FieldError::invalid(
                            format!("{rp}.values[0]"),
                            format!("must be an integer when `operator` is '{}', got {v:?}", r.operator),
                        ));
                    }
                }
                _ => errs.push(FieldError::new(
                    format!("{rp}.values"),
                    crate::FieldErrorReason::Required,
                    format!("must be specified single value when `operator` is '{}'", r.operator),
                )),
            },
            other => errs.push(FieldError::unsupported(format!("{rp}.operator"), other, NODE_SELECTOR_OPERATORS)),
        }
    }
    for (i, r) in t.match_fields.iter().enumerate() {
        let rp = format!("{p}.matchFields[{i}]");
        if r.key != NODE_NAME_FIELD {
            errs.push(FieldError::unsupported(format!("{rp}.key"), &r.key, &[NODE_NAME_FIELD]));
        }
        if !NODE_FIELD_OPERATORS.contains(&r.operator.as_str()) {
            errs.push(FieldError::unsupported(format!("{rp}.operator"), &r.operator, NODE_FIELD_OPERATORS));
        } else if r.values.len() != 1 {
            errs.push(FieldError::new(
                format!("{rp}.values"),
                crate::FieldErrorReason::Required,
                format!("must be only one value when `operator` is '{}' for node field selector", r.operator),
            ));
        }
        if r.key == NODE_NAME_FIELD {
            for (j, v) in r.values.iter().enumerate() {
                if let Err(e) = validation::dns1123_subdomain(v) {
                    errs.push(FieldError::invalid(format!("{rp}.values[{j}]"), format!("not a node name: {e}")));
                }
            }
        }
    }
}

fn validate_key(key: &str, p: &str, errs: &mut Vec<FieldError>) {
    if key.is_empty() {
        errs.push(FieldError::required(format!("{p}.key")));
    } else if let Err(e) = validation::qualified_name(key) {
        errs.push(FieldError::invalid(format!("{p}.key"), e));
    }
}

/// Checks a meta/v1 LabelSelector at path `p`.
pub fn validate_label_selector(sel: &LabelSelector, p: &str, errs: &mut Vec<FieldError>) {
    for (k, v) in &sel.match_labels {
        if let Err(e) = validation::qualified_name(k) {
            errs.push(FieldError::invalid(format!("{p}.matchLabels"), format!("invalid label key {k:?}: {e}")));
        }
        if let Err(e) = validation::label_value(v) {
            errs.push(FieldError::invalid(format!("{p}.matchLabels.{k}"), e));
        }
    }
    for (i, r) in sel.match_expressions.iter().enumerate() {
        let rp = format!("{p}.matchExpressions[{i}]");
        validate_key(&r.key, &rp, errs);
        match r.operator.as_str() {
            "In" | "NotIn" => {
                if r.values.is_empty() {
                    errs.push(FieldError::new(
                        format!("{rp}.values"),
                        crate::FieldErrorReason::Required,
                        format!("must be specified when `operator` is '{}'", r.operator),
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !r.values.is_empty() {
                    errs.push(FieldError::forbidden(
                        format!("{rp}.values"),
                        format!("may not be specified when `operator` is '{}'", r.operator),
                    ));
                }
            }
            other => errs.push(FieldError::unsupported(format!("{rp}.operator"), other, LABEL_SELECTOR_OPERATORS)),
        }
        for (j, v) in r.values.iter().enumerate() {
            if let Err(e) = validation::label_value(v) {
                errs.push(FieldError::invalid(format!("{rp}.values[{j}]"), e));
            }
        }
    }
}

fn validate_pod_affinity_term(t: &PodAffinityTerm, p: &str, errs: &mut Vec<FieldError>) {
    if let Some(sel) = &t.label_selector {
        validate_label_selector(sel, &format!("{p}.labelSelector"), errs);
    }
    if let Some(sel) = &t.namespace_selector {
        validate_label_selector(sel, &format!("{p}.namespaceSelector"), errs);
    }
    for (i, ns) in t.namespaces.iter().enumerate() {
        if let Err(e) = validation::dns1123_label(ns) {
            errs.push(FieldError::invalid(format!("{p}.namespaces[{i}]"), e));
        }
    }
    if t.topology_key.is_empty() {
        errs.push(FieldError::new(
            format!("{p}.topologyKey"),
            crate::FieldErrorReason::Required,
            format!("can not be empty: name a node label, usually {HOSTNAME_LABEL} (one domain per node)"),
        ));
    } else if let Err(e) = validation::qualified_name(&t.topology_key) {
        errs.push(FieldError::invalid(format!("{p}.topologyKey"), e));
    }
    for (field, keys) in [("matchLabelKeys", &t.match_label_keys), ("mismatchLabelKeys", &t.mismatch_label_keys)] {
        for (i, k) in keys.iter().enumerate() {
            let kp = format!("{p}.{field}[{i}]");
            if let Err(e) = validation::qualified_name(k) {
                errs.push(FieldError::invalid(kp.clone(), e));
            }
            if t.label_selector.is_none() {
                errs.push(FieldError::forbidden(kp.clone(), "must not be specified when labelSelector is not set"));
            }
            if field == "matchLabelKeys" && t.mismatch_label_keys.contains(k) {
                errs.push(FieldError::invalid(
                    kp,
                    format!("{k:?} exists in both matchLabelKeys and mismatchLabelKeys"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(affinity: serde_json::Value) -> Vec<FieldError> {
        let a: Affinity = serde_json::from_value(affinity).unwrap_or_else(|e| panic!("{e}"));
        let mut errs = Vec::new();
        validate(&a, "spec.affinity", &mut errs);
        errs
    }

    #[track_caller]
    fn assert_error(errs: &[FieldError], field: &str, needle: &str) {
        assert!(
            errs.iter().any(|e| e.field == field && e.message.contains(needle)),
            "no error at {field} containing {needle:?}: {errs:#?}"
        );
    }

    fn required_terms(terms: serde_json::Value) -> serde_json::Value {
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}})
    }

    const REQ: &str = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution";

    #[test]
    fn a_full_affinity_round_trips_and_is_valid() {
        let a = json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": "zone", "operator": "In", "values": ["a", "b"]},
                        {"key": "gpu", "operator": "DoesNotExist"},
                        {"key": "cores", "operator": "Gt", "values": ["8"]}
                    ]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node1"]}]}
                ]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}
                ]
            },
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone",
                     "namespaces": ["prod"], "namespaceSelector": {}}
                ]
            },
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": {
                        "labelSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["x"]}]},
                        "topologyKey": "kubernetes.io/hostname",
                        "matchLabelKeys": ["tier"], "mismatchLabelKeys": ["team"]}}
                ]
            }
        });
        let typed: Affinity = serde_json::from_value(a.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::to_value(&typed).ok(), Some(a.clone()));
        assert_eq!(errors(a), Vec::new());
    }

    #[test]
    fn node_selector_requirements_are_checked() {
        let errs = errors(required_terms(json!([{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]},
            {"key": "zone", "operator": "Near", "values": ["a"]},
            {"key": "zone", "operator": "NotIn"},
            {"key": "zone", "operator": "Exists", "values": ["a"]},
            {"key": "cores", "operator": "Gt", "values": ["8", "9"]},
            {"key": "cores", "operator": "Lt", "values": ["many"]},
            {"key": "", "operator": "Exists"},
            {"key": "bad key", "operator": "DoesNotExist"}
        ]}])));
        let m = format!("{REQ}.nodeSelectorTerms[0].matchExpressions");
        assert_error(&errs, &format!("{m}[1].operator"), "Unsupported value: \"Near\"");
        assert_error(&errs, &format!("{m}[2].values"), "must be specified when `operator` is 'NotIn'");
        assert_error(&errs, &format!("{m}[3].values"), "may not be specified when `operator` is 'Exists'");
        assert_error(&errs, &format!("{m}[4].values"), "single value");
        assert_error(&errs, &format!("{m}[5].values[0]"), "must be an integer");
        assert_error(&errs, &format!("{m}[6].key"), "Required value");
        assert_error(&errs, &format!("{m}[7].key"), "name part must consist of");
        assert_eq!(errs.len(), 7, "{errs:#?}");
    }

    #[test]
    fn node_field_requirements_are_checked() {
        let errs = errors(required_terms(json!([{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["a", "b"]},
            {"key": "metadata.labels", "operator": "In", "values": ["a"]},
            {"key": "metadata.name", "operator": "Exists"},
            {"key": "metadata.name", "operator": "NotIn", "values": ["Not_A_Node"]}
        ]}])));
        let m = format!("{REQ}.nodeSelectorTerms[0].matchFields");
        assert_error(&errs, &format!("{m}[0].values"), "must be only one value");
        assert_error(&errs, &format!("{m}[1].key"), "supported values: \"metadata.name\"");
        assert_error(&errs, &format!("{m}[2].operator"), "supported values: \"In\", \"NotIn\"");
        assert_error(&errs, &format!("{m}[3].values[0]"), "not a node name");
        assert_eq!(errs.len(), 4, "{errs:#?}");
    }

    #[test]
    fn terms_weights_and_topology_keys_are_checked() {
        assert_error(&errors(required_terms(json!([]))), &format!("{REQ}.nodeSelectorTerms"), "at least one");
        let errs = errors(json!({
            "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 0, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}},
                {"weight": 101, "preference": {}}
            ]},
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}},
                {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]},
                 "topologyKey": "zone", "namespaces": ["Prod"]}
            ]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": -1, "podAffinityTerm": {"topologyKey": "zone", "matchLabelKeys": ["app"]}}
            ]}
        }));
        let pref = "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution";
        assert_error(&errs, &format!("{pref}[0].weight"), "must be in the range 1-100, got 0");
        assert_error(&errs, &format!("{pref}[1].weight"), "got 101");
        let pa = "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution";
        assert_error(&errs, &format!("{pa}[0].topologyKey"), "can not be empty");
        assert_error(
            &errs,
            &format!("{pa}[1].labelSelector.matchExpressions[0].operator"),
            "Unsupported value: \"Gt\"",
        );
        assert_error(&errs, &format!("{pa}[1].namespaces[0]"), "RFC 1123 label");
        let anti = "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]";
        assert_error(&errs, &format!("{anti}.weight"), "got -1");
        assert_error(&errs, &format!("{anti}.podAffinityTerm.matchLabelKeys[0]"), "labelSelector is not set");
        assert_eq!(errs.len(), 7, "{errs:#?}");
    }

    #[test]
    fn vmis_and_vms_are_refused_with_the_path_of_the_field() {
        use crate::kubevirt::{VirtualMachine, VirtualMachineInstance};
        use crate::resource::ResourceType;
        let bad = required_terms(json!([{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]},
            {"key": "zone", "operator": "Near", "values": ["a"]}
        ]}]));
        let spec = json!({
            "domain": {"devices": {}, "resources": {"requests": {"memory": "128Mi"}}},
            "affinity": bad,
        });
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "a", "namespace": "default"}, "spec": spec});
        let errs = ResourceType::of::<VirtualMachineInstance>().decode(&vmi, None).err().unwrap_or_default();
        let field = format!("{REQ}.nodeSelectorTerms[0].matchExpressions[1].operator");
        assert_error(&errs, &field, "Unsupported value");
        let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "namespace": "default"}, "spec": {"template": {"spec": spec}}});
        let errs = ResourceType::of::<VirtualMachine>().decode(&vm, None).err().unwrap_or_default();
        assert_error(&errs, &field.replacen("spec.", "spec.template.spec.", 1), "Unsupported value");

        // A valid one is kept as written, with nothing reported unknown.
        let mut good = vmi.clone();
        good["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        let d = ResourceType::of::<VirtualMachineInstance>().decode(&good, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(d.unknown_fields.is_empty(), "{:?}", d.unknown_fields);
        assert_eq!(d.value["spec"]["affinity"], good["spec"]["affinity"]);
    }
}
