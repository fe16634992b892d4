//! `coordination.k8s.io/v1` Lease: a named lock with a holder and a
//! duration, renewed by its holder. Sheaf's servers elect the one that runs
//! the controllers with the Lease `kube-system/sheaf-controllers` (see
//! `docs/design/ha.md`); the fields are Kubernetes', so `kubectl get lease`
//! and client-go's leader election read it as they read Kubernetes' own.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::ObjectMeta;
use crate::resource::{Column, Kind};
use crate::validation::FieldError;

/// A point in time with microseconds (`metav1.MicroTime`), serialised as
/// RFC 3339 such as `2026-01-02T15:04:05.123456Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MicroTime(pub DateTime<Utc>);

impl MicroTime {
    pub fn now() -> Self {
        MicroTime(Utc::now())
    }
}

impl fmt::Display for MicroTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Micros, true))
    }
}

impl Serialize for MicroTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MicroTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s).map(|t| MicroTime(t.with_timezone(&Utc))).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid time {s:?}: {e}; expected RFC 3339 such as 2026-01-02T15:04:05.000000Z"
            ))
        })
    }
}

impl JsonSchema for MicroTime {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MicroTime".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 timestamp with microseconds, for example 2026-01-02T15:04:05.000000Z."
        })
    }
}

/// A lease: who holds it, since when, for how long after its last renewal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: LeaseSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseSpec {
    /// The identity of the current holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    /// How long, after its last renewal, candidates wait before taking the
    /// lease from a holder that stopped renewing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i32>,
    /// When the current holder acquired it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<MicroTime>,
    /// When the current holder last renewed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<MicroTime>,
    /// How many times it changed holders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_transitions: Option<i32>,
    /// The strategy for picking the next holder (Kubernetes' coordinated
    /// election; recorded, not acted upon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// The holder the strategy prefers (recorded, not acted upon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_holder: Option<String>,
}

impl Kind for Lease {
    const GROUP: &'static str = "coordination.k8s.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "Lease";
    const PLURAL: &'static str = "leases";
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(d) = self.spec.lease_duration_seconds {
            if d <= 0 {
                errs.push(FieldError::invalid("spec.leaseDurationSeconds", "must be greater than 0"));
            }
        }
        if let Some(t) = self.spec.lease_transitions {
            if t < 0 {
                errs.push(FieldError::invalid("spec.leaseTransitions", "must be greater than or equal to 0"));
            }
        }
        if self.spec.holder_identity.as_deref().is_some_and(|h| h.len() > 253) {
            errs.push(FieldError::invalid("spec.holderIdentity", "must be no more than 253 characters"));
        }
        if let Some(s) = self.spec.strategy.as_deref() {
            if s != "OldestEmulationVersion" {
                errs.push(FieldError::unsupported("spec.strategy", s, &["OldestEmulationVersion"]));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Holder", "string", ".spec.holderIdentity")]
    }
    fn description() -> &'static str {
        "Lease defines a lease concept: a holder that renews it, for leader election."
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_and_validation() {
        let v = serde_json::json!({
            "metadata": {"name": "sheaf-controllers", "namespace": "kube-system"},
            "spec": {"holderIdentity": "s0_1", "leaseDurationSeconds": 15,
                     "renewTime": "2026-12-01T14:00:00.123456Z", "leaseTransitions": 2}
        });
        let l: Lease = serde_json::from_value(v).expect("lease");
        assert!(l.validate(None).is_empty());
        let back = serde_json::to_value(&l).expect("json");
        assert_eq!(back["spec"]["renewTime"], "2026-12-01T14:00:00.123456Z");
        let mut bad = l.clone();
        bad.spec.lease_duration_seconds = Some(0);
        bad.spec.lease_transitions = Some(-1);
        let errs = bad.validate(None);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(serde_json::from_value::<Lease>(serde_json::json!({"spec": {"renewTime": "yesterday"}})).is_err());
    }
}
