//! Kubernetes' claims on storage: core `v1` PersistentVolumeClaim and
//! `storage.k8s.io/v1` StorageClass, with Kubernetes' field names, over
//! Sheaf's own `sheaf.io` Volumes.
//!
//! A claim is provisioned as a Volume *of the claim's name* in the claim's
//! namespace (so a VM's `persistentVolumeClaim.claimName` and
//! `dataVolume.name` name both), with the class's parameters turned into
//! the Volume's spec ([`ClassParameters`]). The claim controller does that
//! (`sheaf-controllers`, `claim.rs`); this module only describes and
//! validates the objects.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
use crate::quantity::Quantity;
use crate::resource::{Column, Kind};
use crate::storage::{self, image_ref, parse_duration, validate_tag, BLOCK, FRONTENDS, MAX_REPLICAS};
use crate::validation::{self, FieldError};

/// The provisioner of Sheaf's classes.
pub const PROVISIONER: &str = "driver.sheaf.io";
/// Longhorn's provisioner, accepted as Sheaf's so that Harvester's
/// StorageClass manifests apply unchanged.
pub const LONGHORN_PROVISIONER: &str = "driver.longhorn.io";
pub const PROVISIONERS: &[&str] = &[PROVISIONER, LONGHORN_PROVISIONER];
/// The annotation that makes a class the default one (for claims that name
/// no class).
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// Harvester's claim annotation naming the VirtualMachineImage
/// (`NAMESPACE/NAME`) the claim's volume is made from.
pub const IMAGE_ID_ANNOTATION: &str = "harvesterhci.io/imageId";
/// The class created at start-up when absent.
pub const DEFAULT_CLASS_NAME: &str = "sheaf";
/// The StorageClass parameters Sheaf understands.
pub const KNOWN_PARAMETERS: &[&str] =
    &["numberOfReplicas", "staleReplicaTimeout", "diskSelector", "nodeSelector", "frontend", "image", "migratable"];
pub const RECLAIM_POLICIES: &[&str] = &["Delete", "Retain"];
pub const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];
pub const ACCESS_MODES: &[&str] = &["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];
pub const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
pub const PHASES: &[&str] = &["Pending", "Bound", "Lost"];

// ---------------------------------------------------------------------------
// StorageClass
// ---------------------------------------------------------------------------

/// How claims of a class are provisioned: the Volume parameters, what
/// happens to the volume when its claim goes, and whether claims may grow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageClass {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `driver.sheaf.io` (`driver.longhorn.io` is accepted as the same).
    #[serde(default)]
    pub provisioner: String,
    /// Volume parameters, all strings: `numberOfReplicas` (1..16),
    /// `staleReplicaTimeout` (minutes such as `30`, or a duration such as
    /// `10m`), `diskSelector` (comma-separated disk tags), `nodeSelector`
    /// (comma-separated `key=value` node labels), `frontend` (`nbd` or
    /// `vhost-user`), `image` (`NAMESPACE/NAME` of a VirtualMachineImage the
    /// volumes start from) and `migratable` (`true`/`false`, accepted from
    /// Harvester's classes; volumes are not live-migrated yet). They cannot
    /// change once the class exists.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// `Delete` (the default: the volume goes with its claim) or `Retain`
    /// (the volume stays when its claim is deleted; delete it with `sheaf
    /// volume delete`, or bind a new claim to it with `spec.volumeName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<String>,
    /// Whether a claim's `resources.requests.storage` may grow (the volume
    /// grows, online).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_volume_expansion: Option<bool>,
    /// `Immediate` (the default) or `WaitForFirstConsumer` (a claim is
    /// provisioned once a VirtualMachine or instance names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_binding_mode: Option<String>,
    /// Kept as written; block volumes have no mount options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

/// A class's `parameters`, read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassParameters {
    pub number_of_replicas: Option<u32>,
    /// As a Volume's `spec.staleReplicaTimeout` says it (`30m`).
    pub stale_replica_timeout: Option<String>,
    pub disk_selector: Vec<String>,
    pub node_selector: BTreeMap<String, String>,
    pub frontend: Option<String>,
    pub image: Option<String>,
}

/// Reads `staleReplicaTimeout`: whole minutes (`30`, as Longhorn writes
/// it) or a duration (`10m`, `1h30m`).
pub fn parse_stale_timeout(s: &str) -> Option<Duration> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok()?.checked_mul(60).map(Duration::from_secs);
    }
    parse_duration(s)
}

/// Splits a comma-separated list, dropping blanks around items.
fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

impl StorageClass {
    pub fn is_default(&self) -> bool {
        self.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION).is_some_and(|v| v == "true")
    }
    pub fn retains(&self) -> bool {
        self.reclaim_policy.as_deref() == Some("Retain")
    }
    pub fn allows_expansion(&self) -> bool {
        self.allow_volume_expansion == Some(true)
    }
    pub fn waits_for_consumer(&self) -> bool {
        self.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
    }

    /// The parameters, read; or every one that is wrong.
    pub fn read_parameters(&self) -> Result<ClassParameters, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut out = ClassParameters::default();
        for (k, v) in &self.parameters {
            let field = format!("parameters.{k}");
            match k.as_str() {
                "numberOfReplicas" => match v.trim().parse::<u32>() {
                    Ok(n) if (1..=MAX_REPLICAS).contains(&n) => out.number_of_replicas = Some(n),
                    _ => errs.push(FieldError::invalid(
                        field,
                        format!("{v:?} is not a number of replicas between 1 and {MAX_REPLICAS} (for example \"3\")"),
                    )),
                },
                "staleReplicaTimeout" => match parse_stale_timeout(v.trim()) {
                    Some(d) if d >= storage::MIN_STALE_REPLICA_TIMEOUT => {
                        out.stale_replica_timeout = Some(storage::format_duration(d));
                    }
                    Some(_) => errs.push(FieldError::invalid(
                        field,
                        format!("{v:?} is shorter than 1 minute: an agent restart would move replicas"),
                    )),
                    None => errs.push(FieldError::invalid(
                        field,
                        format!("{v:?} is neither whole minutes (\"30\") nor a duration (\"10m\", \"1h30m\")"),
                    )),
                },
                "diskSelector" => {
                    for tag in items(v) {
                        match validate_tag(tag) {
                            Err(e) => errs.push(FieldError::invalid(field.clone(), format!("tag {tag:?}: {e}"))),
                            Ok(()) if out.disk_selector.iter().any(|t| t == tag) => {}
                            Ok(()) => out.disk_selector.push(tag.to_string()),
                        }
                    }
                }
                "nodeSelector" => {
                    for pair in items(v) {
                        let Some((key, value)) = pair.split_once('=') else {
                            errs.push(FieldError::invalid(
                                field.clone(),
                                format!("{pair:?} is not key=value (for example \"zone=a,disk=ssd\")"),
                            ));
                            continue;
                        };
                        let (key, value) = (key.trim(), value.trim());
                        if let Err(e) = validation::qualified_name(key).and(validation::label_value(value)) {
                            errs.push(FieldError::invalid(field.clone(), format!("{pair:?}: {e}")));
                            continue;
                        }
                        out.node_selector.insert(key.to_string(), value.to_string());
                    }
                }
                "frontend" => {
                    if FRONTENDS.contains(&v.as_str()) {
                        out.frontend = Some(v.clone());
                    } else {
                        errs.push(FieldError::unsupported(field, v, FRONTENDS));
                    }
                }
                "image" => match image_ref(v) {
                    Ok(_) => out.image = Some(v.clone()),
                    Err(e) => errs.push(FieldError::invalid(field, e)),
                },
                "migratable" => {
                    if v != "true" && v != "false" {
                        errs.push(FieldError::unsupported(field, v, &["true", "false"]));
                    }
                }
                _ => {
                    let known = KNOWN_PARAMETERS.join(", ");
                    errs.push(FieldError::new(
                        field,
                        crate::validation::FieldErrorReason::Unsupported,
                        format!("unknown parameter {k:?}; the parameters of a Sheaf class are: {known}"),
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }
}

impl Kind for StorageClass {
    const GROUP: &'static str = "storage.k8s.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "StorageClass";
    const PLURAL: &'static str = "storageclasses";
    const SHORT_NAMES: &'static [&'static str] = &["sc"];
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.provisioner.is_empty() {
            errs.push(FieldError::required("provisioner"));
        } else if !PROVISIONERS.contains(&self.provisioner.as_str()) {
            errs.push(FieldError::unsupported("provisioner", &self.provisioner, PROVISIONERS));
        }
        if let Err(e) = self.read_parameters() {
            errs.extend(e);
        }
        if let Some(p) = &self.reclaim_policy {
            if !RECLAIM_POLICIES.contains(&p.as_str()) {
                errs.push(FieldError::unsupported("reclaimPolicy", p, RECLAIM_POLICIES));
            }
        }
        if let Some(m) = &self.volume_binding_mode {
            if !BINDING_MODES.contains(&m.as_str()) {
                errs.push(FieldError::unsupported("volumeBindingMode", m, BINDING_MODES));
            }
        }
        if let Some(v) = self.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION) {
            if v != "true" && v != "false" {
                errs.push(FieldError::unsupported(
                    format!("metadata.annotations[{DEFAULT_CLASS_ANNOTATION}]"),
                    v,
                    &["true", "false"],
                ));
            }
        }
        if let Some(old) = old {
            let mut normalized = old.clone();
            normalized.normalize();
            for (field, same) in [
                ("provisioner", old.provisioner == self.provisioner),
                ("parameters", old.parameters == self.parameters),
                ("reclaimPolicy", normalized.reclaim_policy == self.reclaim_policy || self.reclaim_policy.is_none()),
                (
                    "volumeBindingMode",
                    normalized.volume_binding_mode == self.volume_binding_mode || self.volume_binding_mode.is_none(),
                ),
            ] {
                if !same {
                    errs.push(FieldError::forbidden(
                        field,
                        format!("updates to {field} are forbidden; create a new StorageClass instead"),
                    ));
                }
            }
        }
        errs
    }
    fn normalize(&mut self) {
        self.reclaim_policy.get_or_insert_with(|| "Delete".into());
        self.volume_binding_mode.get_or_insert_with(|| "Immediate".into());
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Provisioner", "string", ".provisioner"),
            Column::new("ReclaimPolicy", "string", ".reclaimPolicy"),
            Column::new("VolumeBindingMode", "string", ".volumeBindingMode"),
            Column::new("AllowVolumeExpansion", "boolean", ".allowVolumeExpansion"),
        ]
    }
    fn description() -> &'static str {
        "How PersistentVolumeClaims are provisioned as Sheaf volumes: replicas, disks, frontend, image, what \
         happens to a volume when its claim is deleted (reclaimPolicy) and whether claims may grow."
    }
}

/// The class the server creates at start-up when it is absent: the
/// default class, three replicas, claims may grow, volumes go with their
/// claims.
pub fn default_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(DEFAULT_CLASS_NAME.into()),
            annotations: [(DEFAULT_CLASS_ANNOTATION.to_string(), "true".to_string())].into(),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        parameters: [("numberOfReplicas".to_string(), "3".to_string())].into(),
        reclaim_policy: Some("Delete".into()),
        allow_volume_expansion: Some(true),
        volume_binding_mode: Some("Immediate".into()),
        mount_options: Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// PersistentVolumeClaim
// ---------------------------------------------------------------------------

/// A request for a volume: its size, class and where its data comes from.
/// Provisioned as the Sheaf Volume of the same name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaim {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PersistentVolumeClaimSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PersistentVolumeClaimStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimSpec {
    /// At least one of ReadWriteOnce, ReadOnlyMany, ReadWriteMany (what
    /// Harvester asks for, for live migration) or ReadWriteOncePod. They
    /// are recorded; a Sheaf volume serves one VM at a time whatever they
    /// say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// `requests.storage`: the size (required; it may grow, never shrink,
    /// and grows only when the class allows expansion).
    #[serde(default)]
    pub resources: VolumeResourceRequirements,
    /// The StorageClass; unset: the default class (the claim records it);
    /// `""`: no class, only a Volume named by `volumeName` can be bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `Block` (the default) or `Filesystem`. Either way the guest sees a
    /// block device: Sheaf volumes are VM disks, there is no file system
    /// to mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// The Volume bound to the claim. In Sheaf it is always the claim's own
    /// name: set it to bind an existing Volume of that name (static
    /// binding); the controller sets it once bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// Fill the volume from a claim (`kind: PersistentVolumeClaim`, same
    /// namespace: a clone) or from a snapshot (`apiGroup: sheaf.io, kind:
    /// VolumeSnapshot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<TypedObjectReference>,
    /// As `dataSource` (when both are set they must agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source_ref: Option<TypedObjectReference>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

/// Where a claim's data comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypedObjectReference {
    /// Empty for a PersistentVolumeClaim; `sheaf.io` for a VolumeSnapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    /// Only the claim's own namespace (or unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimStatus {
    /// `Pending` (see the `Bound` condition for why), `Bound` or `Lost`
    /// (its Volume was deleted underneath it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// `storage`: the size of the bound volume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    /// `Bound` (False while Pending: reason and message say why) and
    /// `Resizing` (while a grown request is not yet the volume's size, or
    /// when the class refuses it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What a claim's data comes from, read from `dataSource`/`dataSourceRef`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimSource {
    /// A clone of this claim (same namespace).
    Claim(String),
    /// A copy of this sheaf.io VolumeSnapshot (same namespace).
    Snapshot(String),
}

impl PersistentVolumeClaim {
    /// `resources.requests.storage` in bytes (0 when unset or invalid).
    pub fn request_bytes(&self) -> i64 {
        self.spec.resources.requests.get("storage").and_then(Quantity::value).unwrap_or(0)
    }
    /// The request rounded up to whole 4 KiB blocks: the Volume's size.
    pub fn volume_bytes(&self) -> i64 {
        round_up_to_block(self.request_bytes())
    }
    pub fn source(&self) -> Option<ClaimSource> {
        let r = self.spec.data_source_ref.as_ref().or(self.spec.data_source.as_ref())?;
        match r.kind.as_str() {
            "PersistentVolumeClaim" => Some(ClaimSource::Claim(r.name.clone())),
            "VolumeSnapshot" => Some(ClaimSource::Snapshot(r.name.clone())),
            _ => None,
        }
    }
    pub fn phase(&self) -> &str {
        self.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
    }
    pub fn is_bound(&self) -> bool {
        self.phase() == "Bound"
    }
    /// The `Bound` condition's message while Pending.
    pub fn pending_message(&self) -> Option<&str> {
        let s = self.status.as_ref()?;
        s.conditions.iter().find(|c| c.type_ == "Bound" && c.status != "True").and_then(|c| c.message.as_deref())
    }
}

/// `bytes` rounded up to a multiple of 4 KiB.
pub fn round_up_to_block(bytes: i64) -> i64 {
    let blocks = bytes / BLOCK + i64::from(bytes % BLOCK != 0);
    blocks.saturating_mul(BLOCK)
}

/// A byte count as an exact quantity: `10Gi`, `512Mi`, `4Ki`, or bytes.
pub fn exact_quantity(bytes: i64) -> Quantity {
    let text = [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)]
        .iter()
        .find(|(_, shift)| bytes != 0 && bytes % (1i64 << shift) == 0)
        .map(|(unit, shift)| format!("{}{unit}", bytes >> shift))
        .unwrap_or_else(|| bytes.to_string());
    Quantity::parse(&text).unwrap_or_else(|_| Quantity::parse("0").expect("0 is a quantity"))
}

fn check_source(errs: &mut Vec<FieldError>, field: &str, r: &TypedObjectReference, ns: &str) {
    let group = r.api_group.as_deref().unwrap_or("");
    match (group, r.kind.as_str()) {
        ("", "PersistentVolumeClaim") | (storage::GROUP, "VolumeSnapshot") => {}
        ("snapshot.storage.k8s.io", "VolumeSnapshot") => errs.push(FieldError::invalid(
            format!("{field}.apiGroup"),
            "Sheaf's snapshots are sheaf.io VolumeSnapshots (sheaf volume snapshot VOLUME NAME); use apiGroup sheaf.io",
        )),
        _ => errs.push(FieldError::invalid(
            format!("{field}.kind"),
            format!(
                "cannot fill a volume from {} {:?}: use kind PersistentVolumeClaim (a clone) or apiGroup sheaf.io \
                 kind VolumeSnapshot; to start from an image, use the annotation {IMAGE_ID_ANNOTATION}: \
                 NAMESPACE/NAME of a VirtualMachineImage",
                if group.is_empty() { "core".to_string() } else { group.to_string() },
                r.kind
            ),
        )),
    }
    if r.name.is_empty() {
        errs.push(FieldError::required(format!("{field}.name")));
    } else if let Err(e) = validation::dns1123_subdomain(&r.name) {
        errs.push(FieldError::invalid(format!("{field}.name"), e));
    }
    if let Some(n) = r.namespace.as_deref().filter(|n| *n != ns) {
        errs.push(FieldError::invalid(
            format!("{field}.namespace"),
            format!("{n:?}: a claim is filled only from its own namespace ({ns:?}); leave namespace unset"),
        ));
    }
}

impl Kind for PersistentVolumeClaim {
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "PersistentVolumeClaim";
    const PLURAL: &'static str = "persistentvolumeclaims";
    const SHORT_NAMES: &'static [&'static str] = &["pvc"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errs = Vec::new();
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let ns = self.metadata.namespace.as_deref().unwrap_or("default");
        if spec.access_modes.is_empty() {
            errs.push(FieldError::new(
                "spec.accessModes",
                crate::validation::FieldErrorReason::Required,
                "at least 1 access mode is required (for example ReadWriteOnce)",
            ));
        }
        for (i, m) in spec.access_modes.iter().enumerate() {
            if !ACCESS_MODES.contains(&m.as_str()) {
                errs.push(FieldError::unsupported(format!("spec.accessModes[{i}]"), m, ACCESS_MODES));
            }
        }
        match spec.resources.requests.get("storage") {
            None => errs.push(FieldError::new(
                "spec.resources.requests.storage",
                crate::validation::FieldErrorReason::Required,
                "the size of the volume is required, for example 10Gi",
            )),
            Some(q) => {
                if let Err(e) = q.check_positive() {
                    errs.push(FieldError::invalid("spec.resources.requests.storage", e));
                } else if q.value().is_none() {
                    errs.push(FieldError::invalid("spec.resources.requests.storage", format!("{q} is too large")));
                }
            }
        }
        for k in spec.resources.requests.keys().chain(spec.resources.limits.keys()) {
            if k != "storage" {
                errs.push(FieldError::unsupported(format!("spec.resources[{k}]"), k, &["storage"]));
            }
        }
        if let Some(c) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
            if let Err(e) = validation::dns1123_subdomain(c) {
                errs.push(FieldError::invalid("spec.storageClassName", e));
            }
        }
        if let Some(m) = &spec.volume_mode {
            if !VOLUME_MODES.contains(&m.as_str()) {
                errs.push(FieldError::unsupported("spec.volumeMode", m, VOLUME_MODES));
            }
        }
        if let Some(v) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
            if v != name && !name.is_empty() {
                errs.push(FieldError::invalid(
                    "spec.volumeName",
                    format!(
                        "{v:?}: a claim's Volume has the claim's name; set volumeName to {name:?} (to bind an \
                         existing Volume {name:?}) or leave it unset"
                    ),
                ));
            }
        }
        if let Some(r) = &spec.data_source {
            check_source(&mut errs, "spec.dataSource", r, ns);
        }
        if let Some(r) = &spec.data_source_ref {
            check_source(&mut errs, "spec.dataSourceRef", r, ns);
            if let Some(d) = &spec.data_source {
                if (d.api_group.as_deref().unwrap_or(""), &d.kind, &d.name)
                    != (r.api_group.as_deref().unwrap_or(""), &r.kind, &r.name)
                {
                    errs.push(FieldError::invalid(
                        "spec.dataSource",
                        "must be the same as spec.dataSourceRef when both are set",
                    ));
                }
            }
        }
        if let Some(i) = self.metadata.annotations.get(IMAGE_ID_ANNOTATION) {
            if let Err(e) = image_ref(i) {
                errs.push(FieldError::invalid(format!("metadata.annotations[{IMAGE_ID_ANNOTATION}]"), e));
            }
        }
        if let Some(old) = old {
            let (o, n) = (&old.spec, spec);
            let (old_size, new_size) = (old.request_bytes(), self.request_bytes());
            if new_size < old_size {
                errs.push(FieldError::forbidden(
                    "spec.resources.requests.storage",
                    format!(
                        "field can not be less than previous value: a volume cannot shrink (it asks for {}; \
                         asked now for {})",
                        o.resources.requests.get("storage").map(|q| q.to_string()).unwrap_or_default(),
                        n.resources.requests.get("storage").map(|q| q.to_string()).unwrap_or_default()
                    ),
                ));
            }
            // Set once from unset (the controller records the default class
            // and the bound volume), then fixed, as in Kubernetes.
            let once = |a: &Option<String>, b: &Option<String>| a.is_none() || a.as_deref() == Some("") || a == b;
            let mut same = n.clone();
            same.resources.requests = o.resources.requests.clone();
            if once(&o.storage_class_name, &n.storage_class_name) {
                same.storage_class_name.clone_from(&o.storage_class_name);
            }
            if once(&o.volume_name, &n.volume_name) {
                same.volume_name.clone_from(&o.volume_name);
            }
            let mut old_norm = o.clone();
            if old_norm.volume_mode.is_none() {
                old_norm.volume_mode = Some("Block".into());
            }
            if same.volume_mode.is_none() {
                same.volume_mode = Some("Block".into());
            }
            if same != old_norm {
                errs.push(FieldError::forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests.storage (which may grow); \
                     create a new claim (a clone: dataSource kind PersistentVolumeClaim) to change anything else",
                ));
            }
            if old.metadata.annotations.get(IMAGE_ID_ANNOTATION) != self.metadata.annotations.get(IMAGE_ID_ANNOTATION) {
                errs.push(FieldError::forbidden(
                    format!("metadata.annotations[{IMAGE_ID_ANNOTATION}]"),
                    "the image a claim's volume is made from cannot change",
                ));
            }
        }
        if let Some(st) = &self.status {
            if let Some(p) = st.phase.as_deref() {
                if !PHASES.contains(&p) {
                    errs.push(FieldError::unsupported("status.phase", p, PHASES));
                }
            }
        }
        errs
    }
    fn normalize(&mut self) {
        self.spec.volume_mode.get_or_insert_with(|| "Block".into());
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Status", "string", ".status.phase"),
            Column::new("Volume", "string", ".spec.volumeName"),
            Column::new("Capacity", "string", ".status.capacity.storage"),
            Column::new("Access Modes", "string", ".status.accessModes"),
            Column::new("StorageClass", "string", ".spec.storageClassName"),
            Column::new("VolumeMode", "string", ".spec.volumeMode").wide(),
        ]
    }
    fn description() -> &'static str {
        "A claim on a volume of some size and StorageClass, provisioned as the Sheaf Volume of the same name \
         (empty, from an image, a clone of another claim or a copy of a snapshot). VMs use it through a \
         persistentVolumeClaim or dataVolume volume."
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(params: &[(&str, &str)]) -> StorageClass {
        let mut c = default_class();
        c.parameters = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        c
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn class_parameters() {
        let c = class(&[
            ("numberOfReplicas", "2"),
            ("staleReplicaTimeout", "30"),
            ("diskSelector", "ssd, fast"),
            ("nodeSelector", "zone=a,disk=ssd"),
            ("frontend", "vhost-user"),
            ("image", "default/debian"),
            ("migratable", "true"),
        ]);
        assert!(c.validate(None).is_empty(), "{:?}", c.validate(None));
        let p = c.read_parameters().expect("parameters");
        assert_eq!(p.number_of_replicas, Some(2));
        assert_eq!(p.stale_replica_timeout.as_deref(), Some("30m"));
        assert_eq!(p.disk_selector, ["ssd", "fast"]);
        assert_eq!(p.node_selector.get("zone").map(String::as_str), Some("a"));
        assert_eq!(p.frontend.as_deref(), Some("vhost-user"));
        assert_eq!(p.image.as_deref(), Some("default/debian"));
        assert_eq!(
            class(&[("staleReplicaTimeout", "1h30m")]).read_parameters().map(|p| p.stale_replica_timeout),
            Ok(Some("1h30m".into()))
        );

        let bad = class(&[
            ("numberOfReplicas", "17"),
            ("staleReplicaTimeout", "soon"),
            ("diskSelector", "ssd,a+b"),
            ("nodeSelector", "zone"),
            ("frontend", "iscsi"),
            ("image", "debian"),
            ("fromBackup", ""),
        ]);
        let e = bad.validate(None);
        assert_eq!(
            fields(&e),
            [
                "parameters.diskSelector",
                "parameters.fromBackup",
                "parameters.frontend",
                "parameters.image",
                "parameters.nodeSelector",
                "parameters.numberOfReplicas",
                "parameters.staleReplicaTimeout"
            ],
            "{e:?}"
        );
        let unknown = &e[1].message;
        assert!(unknown.contains("numberOfReplicas, staleReplicaTimeout, diskSelector"), "{unknown}");
        assert!(e[5].message.contains("between 1 and 16"), "{:?}", e[5]);
        assert!(!class(&[("staleReplicaTimeout", "0")]).validate(None).is_empty());
    }

    #[test]
    fn class_fields_and_immutability() {
        let mut c = default_class();
        assert!(c.validate(None).is_empty());
        c.provisioner = "driver.longhorn.io".into();
        assert!(c.validate(None).is_empty(), "Harvester's classes apply");
        c.provisioner = "ebs.csi.aws.com".into();
        c.reclaim_policy = Some("Recycle".into());
        c.volume_binding_mode = Some("Later".into());
        c.metadata.annotations.insert(DEFAULT_CLASS_ANNOTATION.into(), "yes".into());
        let e = c.validate(None);
        assert_eq!(
            fields(&e),
            [
                "provisioner",
                "reclaimPolicy",
                "volumeBindingMode",
                "metadata.annotations[storageclass.kubernetes.io/is-default-class]"
            ]
        );
        let old = default_class();
        let mut changed = old.clone();
        changed.parameters.insert("numberOfReplicas".into(), "2".into());
        changed.reclaim_policy = Some("Retain".into());
        let e = changed.validate(Some(&old));
        assert_eq!(fields(&e), ["parameters", "reclaimPolicy"]);
        assert!(e[0].message.contains("create a new StorageClass"), "{e:?}");
        // Expansion may be switched; an apply without the defaulted fields is no change.
        let mut ok = old.clone();
        ok.allow_volume_expansion = Some(false);
        ok.reclaim_policy = None;
        ok.volume_binding_mode = None;
        assert!(ok.validate(Some(&old)).is_empty());
        let mut n = StorageClass { provisioner: PROVISIONER.into(), ..Default::default() };
        n.normalize();
        assert_eq!(
            (n.reclaim_policy.as_deref(), n.volume_binding_mode.as_deref()),
            (Some("Delete"), Some("Immediate"))
        );
    }

    fn pvc(size: &str) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "data", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
        }))
        .expect("pvc")
    }

    #[test]
    fn claim_fields() {
        let mut c = pvc("10Gi");
        assert!(c.validate(None).is_empty());
        c.normalize();
        assert_eq!(c.spec.volume_mode.as_deref(), Some("Block"));
        assert_eq!(pvc("1000").volume_bytes(), 4096);
        assert_eq!(pvc("1Gi").volume_bytes(), 1 << 30);

        let mut bad = pvc("0");
        bad.spec.access_modes = vec!["ReadWriteSometimes".into()];
        bad.spec.volume_mode = Some("Raw".into());
        bad.spec.volume_name = Some("other".into());
        bad.spec.data_source =
            Some(TypedObjectReference { kind: "Secret".into(), name: "x".into(), ..Default::default() });
        bad.spec.data_source_ref = Some(TypedObjectReference {
            api_group: Some("snapshot.storage.k8s.io".into()),
            kind: "VolumeSnapshot".into(),
            name: "s".into(),
            namespace: Some("elsewhere".into()),
        });
        bad.metadata.annotations.insert(IMAGE_ID_ANNOTATION.into(), "no-slash".into());
        let e = bad.validate(None);
        assert_eq!(
            fields(&e),
            [
                "spec.accessModes[0]",
                "spec.resources.requests.storage",
                "spec.volumeMode",
                "spec.volumeName",
                "spec.dataSource.kind",
                "spec.dataSourceRef.apiGroup",
                "spec.dataSourceRef.namespace",
                "spec.dataSource",
                "metadata.annotations[harvesterhci.io/imageId]"
            ],
            "{e:?}"
        );
        assert!(e[3].message.contains("set volumeName to \"data\""), "{:?}", e[3]);
        assert!(e[4].message.contains("VirtualMachineImage"), "{:?}", e[4]);
        let mut none = pvc("1Gi");
        none.spec.resources.requests.clear();
        none.spec.access_modes.clear();
        assert_eq!(fields(&none.validate(None)), ["spec.accessModes", "spec.resources.requests.storage"]);

        let mut clone = pvc("1Gi");
        clone.spec.data_source = Some(TypedObjectReference {
            kind: "PersistentVolumeClaim".into(),
            name: "base".into(),
            ..Default::default()
        });
        assert!(clone.validate(None).is_empty());
        assert_eq!(clone.source(), Some(ClaimSource::Claim("base".into())));
    }

    #[test]
    fn claim_updates() {
        let mut old = pvc("1Gi");
        old.normalize();
        // Grow yes; shrink no; the rest is fixed except what is set once.
        assert!(pvc("2Gi").validate(Some(&old)).is_empty());
        let e = pvc("512Mi").validate(Some(&old));
        assert!(e[0].message.contains("cannot shrink"), "{e:?}");
        let mut bound = pvc("1Gi");
        bound.spec.storage_class_name = Some("sheaf".into());
        bound.spec.volume_name = Some("data".into());
        assert!(bound.validate(Some(&old)).is_empty(), "{:?}", bound.validate(Some(&old)));
        let mut other_class = bound.clone();
        other_class.spec.storage_class_name = Some("fast".into());
        let e = other_class.validate(Some(&bound));
        assert_eq!(fields(&e), ["spec"]);
        assert!(e[0].message.contains("immutable"), "{e:?}");
        let mut modes = bound.clone();
        modes.spec.access_modes = vec!["ReadWriteMany".into()];
        assert_eq!(fields(&modes.validate(Some(&bound))), ["spec"]);
        let mut image = bound.clone();
        image.metadata.annotations.insert(IMAGE_ID_ANNOTATION.into(), "default/x".into());
        assert!(!image.validate(Some(&bound)).is_empty());
    }

    #[test]
    fn quantities_for_capacity() {
        assert_eq!(exact_quantity(10 << 30).as_str(), "10Gi");
        assert_eq!(exact_quantity(3 << 29).as_str(), "1536Mi");
        assert_eq!(exact_quantity(4096).as_str(), "4Ki");
        assert_eq!(exact_quantity(1000).as_str(), "1000");
        assert_eq!(parse_stale_timeout("30"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_stale_timeout("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_stale_timeout(""), None);
    }
}
