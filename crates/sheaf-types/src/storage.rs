//! Sheaf's storage kinds (`sheaf.io/v1alpha1`): replicated block volumes,
//! their replicas and their snapshots, and the nodes' disks that hold the
//! replicas. See docs/design/storage-engine.md.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kubevirt::VirtualMachineInstance;
use crate::meta::{Condition, ObjectMeta, Time};
use crate::quantity::Quantity;
use crate::resource::{Column, Kind};
use crate::validation::{self, FieldError};

pub const GROUP: &str = "sheaf.io";
pub const VERSION: &str = "v1alpha1";

/// The Volume annotation that asks for a revert to the named
/// VolumeSnapshot; the node agent carries it out while the volume is
/// detached and reports the result in `status.lastRevert`.
pub const REVERT_ANNOTATION: &str = "sheaf.io/revert-to";
/// The label that ties Replicas and VolumeSnapshots to their Volume.
pub const VOLUME_LABEL: &str = "sheaf.io/volume";
/// The values of a Volume's `spec.frontend`.
pub const FRONTENDS: &[&str] = &["nbd", "vhost-user"];
/// Held by a Replica until its node's agent has removed its data.
pub const REPLICA_FINALIZER: &str = "sheaf.io/replica-data";
/// Held by a VolumeSnapshot until its layer is merged away.
pub const SNAPSHOT_FINALIZER: &str = "sheaf.io/snapshot-data";
/// Held by a deleted Volume that still has VolumeSnapshots: it stays in
/// the trash, its replicas served read-only, until its `status.purgeAt`,
/// until its snapshots are gone, or until [`PURGE_ANNOTATION`] says to
/// purge it now. Set by the API server when the Volume is deleted.
pub const TRASH_FINALIZER: &str = "sheaf.io/trash";
/// `"true"` on a Volume: delete it and its snapshots now, without keeping
/// them in the trash (`sheaf volume delete --purge`, `sheaf volume purge`).
pub const PURGE_ANNOTATION: &str = "sheaf.io/purge";
/// How long a deleted volume's snapshots stay in the trash by default
/// (`sheaf server --trash-retention`).
pub const DEFAULT_TRASH_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The disk a node has when its agent is given no `--disk`: the node's
/// replica root. A Replica without `spec.diskName` is on it.
pub const DEFAULT_DISK: &str = "default";
/// The label that ties a Disk to its node.
pub const NODE_LABEL: &str = "sheaf.io/node";
/// Most replicas a volume may ask for.
pub const MAX_REPLICAS: u32 = 16;
/// Volume sizes are whole 4 KiB blocks.
pub const BLOCK: i64 = 4096;
pub const DEFAULT_REPLICAS: u32 = 3;
/// How long a replica's node may be down (not Ready, or gone) before the
/// replica is replaced on another node, when `spec.staleReplicaTimeout`
/// is not set.
pub const DEFAULT_STALE_REPLICA_TIMEOUT: Duration = Duration::from_secs(600);
/// The shortest `spec.staleReplicaTimeout`: shorter, an agent restart or a
/// network hiccup would move replicas.
pub const MIN_STALE_REPLICA_TIMEOUT: Duration = Duration::from_secs(60);

/// A replicated, thin-provisioned block volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Size, a multiple of 4Ki (for example `10Gi`). It can grow, never
    /// shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// How many copies of the data to keep, 1 to 16 (default 3). Replicas
    /// go to different nodes where there are enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_replicas: Option<u32>,
    /// Replicas only go to nodes with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Fill the new volume from this VolumeSnapshot (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Fill the new volume from this completed Backup (same namespace;
    /// its target may have been written by another cluster). The volume
    /// must be at least as large as the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<String>,
    /// Start from this VirtualMachineImage (`NAMESPACE/NAME`, harvesterhci.io):
    /// the image is the volume's read-only base layer, shared with every
    /// other volume made from it (copy-on-write), so the volume is ready at
    /// once whatever its size. The volume must be at least as large as the
    /// image's virtual size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How QEMU reaches the volume: `nbd` (the default) or `vhost-user`
    /// (vhost-user-blk: the engine reads and writes guest memory directly,
    /// and a running guest sees the volume grow; a VM with such a disk
    /// cannot be live-migrated yet). Takes effect when a VM next starts
    /// with the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    /// How long a replica's node may be down (not Ready, or deleted)
    /// before the replica is replaced on another Ready node: a duration
    /// such as `10m` (the default), `90s` or `1h30m`; at least `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_replica_timeout: Option<String>,
    /// Replicas only go to disks that have all these tags (a node's disks
    /// and their tags are its Disk objects, `kubectl get disks`). Changing
    /// it places new replicas only; existing ones stay where they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_selector: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// `Creating`, `Detached`, `Attached` or `Faulted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `Healthy` (every replica in service), `Degraded` (some), `Faulted`
    /// (none) or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robustness: Option<String>,
    /// The size the replicas have now, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Bytes the largest replica takes on its disk (thin provisioning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<i64>,
    /// The node whose engine serves the volume while attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
    /// The VMI using the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_vmi: Option<String>,
    /// The engine epoch the replicas were last claimed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<VolumeReplicaStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_revert: Option<RevertStatus>,
    /// Set once a volume made from `spec.fromSnapshot` or
    /// `spec.fromBackup` holds its data; it cannot be attached before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// While a volume is filled from its backup: how far, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_progress: Option<u32>,
    /// Why the volume cannot be filled from its snapshot or backup yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_error: Option<String>,
    /// A volume in the trash (`state: Trashed`): when it and its snapshots
    /// are deleted for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeReplicaStatus {
    pub name: String,
    #[serde(default)]
    pub node: String,
    /// `Healthy`, `Rebuilding`, `Failed` or `Stopped`.
    #[serde(default)]
    pub state: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevertStatus {
    pub snapshot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Empty when it worked; why not otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Checks a required reference to another object by name.
pub(crate) fn object_name(errs: &mut Vec<FieldError>, field: &str, v: &str) {
    if v.is_empty() {
        errs.push(FieldError::required(field));
    } else if let Err(e) = validation::dns1123_subdomain(v) {
        errs.push(FieldError::invalid(field, e));
    }
}

/// Checks a disk tag: a word as in a label value (alphanumerics, `-`, `_`
/// and `.`, starting and ending with an alphanumeric, at most 63
/// characters).
pub fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("a tag must not be empty".into());
    }
    validation::label_value(tag).map_err(|_| {
        "a tag must consist of alphanumeric characters, '-', '_' or '.', start and end with an alphanumeric \
         character and be at most 63 characters (e.g. 'ssd', 'fast', 'nvme-1')"
            .to_string()
    })
}

fn check_tags(errs: &mut Vec<FieldError>, field: &str, tags: &[String]) {
    for (i, t) in tags.iter().enumerate() {
        if let Err(e) = validate_tag(t) {
            errs.push(FieldError::invalid(format!("{field}[{i}]"), e));
        } else if tags[..i].contains(t) {
            errs.push(FieldError::duplicate(format!("{field}[{i}]"), t));
        }
    }
}

/// Splits an image reference `NAMESPACE/NAME` (both DNS-1123 names).
pub fn image_ref(s: &str) -> Result<(&str, &str), String> {
    let Some((ns, name)) = s.split_once('/') else {
        return Err(format!("{s:?} is not NAMESPACE/NAME of a VirtualMachineImage (for example default/debian-12)"));
    };
    validation::dns1123_label(ns).map_err(|e| format!("namespace {ns:?}: {e}"))?;
    validation::dns1123_subdomain(name).map_err(|e| format!("image name {name:?}: {e}"))?;
    Ok((ns, name))
}

/// Bytes for people: `10Gi`, `3.5Gi`, `512Mi`, `700` (binary units, one
/// decimal at most).
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [(&str, i64); 5] =
        [("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes.abs() >= size {
            if bytes % size == 0 {
                return format!("{}{unit}", bytes / size);
            }
            let tenths = (bytes as i128 * 10 / size as i128) as i64;
            return format!("{}.{}{unit}", tenths / 10, (tenths % 10).abs());
        }
    }
    bytes.to_string()
}

/// Parses a duration written as Kubernetes and Go do (`10m`, `90s`,
/// `1h30m`; units h, m, s, whole numbers).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    (digits.is_empty() && !s.is_empty()).then_some(Duration::from_secs(total))
}

/// A duration as [`parse_duration`] reads it, in its shortest form
/// (`10m`, `1h30m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The instances among `vmis` (those of the volume's namespace) that use
/// `vol`, so that it must not be deleted: every one whose spec names it
/// (a `persistentVolumeClaim` or `dataVolume` of its name) and has not
/// finished, and the one its engine serves now (`status.attachedVmi`, by
/// uid or name, while `status.state` is `Attached`).
pub fn users_of<'a>(vol: &Volume, vmis: &'a [VirtualMachineInstance]) -> Vec<&'a VirtualMachineInstance> {
    let name = vol.metadata.name.as_deref().unwrap_or_default();
    let attached = vol
        .status
        .as_ref()
        .filter(|s| s.state.as_deref() == Some("Attached"))
        .and_then(|s| s.attached_vmi.as_deref())
        .filter(|a| !a.is_empty());
    vmis.iter()
        .filter(|vmi| {
            let phase = vmi.status.as_ref().and_then(|s| s.phase.as_deref());
            let finished = matches!(phase, Some("Succeeded" | "Failed"));
            let names_it = vmi.spec.volumes.iter().any(|v| v.claim_name() == Some(name));
            let serves = attached
                .is_some_and(|a| vmi.metadata.uid.as_deref() == Some(a) || vmi.metadata.name.as_deref() == Some(a));
            serves || (names_it && !finished)
        })
        .collect()
}

impl Volume {
    /// Whether the volume waits to be filled from its snapshot or backup
    /// (it cannot be attached before).
    pub fn awaiting_fill(&self) -> bool {
        (self.spec.from_snapshot.is_some() || self.spec.from_backup.is_some())
            && self.status.as_ref().is_none_or(|s| s.restored_from.is_none())
    }

    /// Whether the volume was deleted and waits in the trash with its
    /// snapshots ([`TRASH_FINALIZER`]).
    pub fn trashed(&self) -> bool {
        self.metadata.deletion_timestamp.is_some() && self.metadata.finalizers.iter().any(|f| f == TRASH_FINALIZER)
    }

    /// When a volume in the trash is purged, to the minute, as its status
    /// says (`2026-12-08 21:30 UTC`).
    pub fn purge_at_text(&self) -> Option<String> {
        let t = self.status.as_ref()?.purge_at.as_ref()?;
        Some(t.0.format("%Y-%m-%d %H:%M UTC").to_string())
    }

    /// Whether the user asked for the volume to go without the trash.
    pub fn purge_asked(&self) -> bool {
        self.metadata.annotations.get(PURGE_ANNOTATION).is_some_and(|v| v == "true")
    }

    /// Why the volume's replicas cannot be placed (no disk with its tags,
    /// not enough space), when the Volume controller says so: waiting alone
    /// will not help.
    pub fn unplaceable(&self) -> Option<String> {
        let c = self.status.as_ref()?.conditions.iter().find(|c| c.type_ == "ReplicasScheduled")?;
        let reason = c.reason.as_deref().unwrap_or_default();
        (c.status == "False" && matches!(reason, "NoDisk" | "NoSpace")).then(|| c.message.clone().unwrap_or_default())
    }

    /// How long a replica's node may be down before the replica is
    /// replaced (`spec.staleReplicaTimeout`, [`DEFAULT_STALE_REPLICA_TIMEOUT`]
    /// when unset or invalid).
    pub fn stale_replica_timeout(&self) -> Duration {
        self.spec.stale_replica_timeout.as_deref().and_then(parse_duration).unwrap_or(DEFAULT_STALE_REPLICA_TIMEOUT)
    }
    /// The size in bytes (0 when unset or invalid).
    pub fn size_bytes(&self) -> i64 {
        self.spec.size.as_ref().and_then(|q| q.value()).unwrap_or(0)
    }
    pub fn replicas_wanted(&self) -> u32 {
        self.spec.number_of_replicas.unwrap_or(DEFAULT_REPLICAS)
    }
}

impl Kind for Volume {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "Volume";
    const PLURAL: &'static str = "volumes";
    const SHORT_NAMES: &'static [&'static str] = &["vol"];
    const CATEGORIES: &'static [&'static str] = &["all", "sheaf"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        match &self.spec.size {
            None => errs.push(FieldError::required("spec.size")),
            Some(q) => match q.value() {
                Some(v) if v >= BLOCK && v % BLOCK == 0 => {}
                Some(v) if v > 0 => errs.push(FieldError::invalid(
                    "spec.size",
                    format!("{q} is {v} bytes, not a multiple of 4Ki (4096 bytes); try {}", (v / BLOCK + 1) * BLOCK),
                )),
                _ => errs.push(FieldError::invalid("spec.size", format!("{q} is not a positive size such as 10Gi"))),
            },
        }
        if let Some(n) = self.spec.number_of_replicas {
            if !(1..=MAX_REPLICAS).contains(&n) {
                errs.push(FieldError::invalid(
                    "spec.numberOfReplicas",
                    format!("{n} is not between 1 and {MAX_REPLICAS}"),
                ));
            }
        }
        if let Some(v) =
            self.metadata.annotations.get(PURGE_ANNOTATION).filter(|v| !matches!(v.as_str(), "true" | "false"))
        {
            errs.push(FieldError::invalid(
                format!("metadata.annotations[{PURGE_ANNOTATION}]"),
                format!("{v:?} is not \"true\" (delete the volume and its snapshots without the trash) or \"false\""),
            ));
        }
        for (k, v) in &self.spec.node_selector {
            if let Err(e) = validation::qualified_name(k) {
                errs.push(FieldError::invalid(format!("spec.nodeSelector[{k}]"), e));
            }
            if let Err(e) = validation::label_value(v) {
                errs.push(FieldError::invalid(format!("spec.nodeSelector[{k}]"), e));
            }
        }
        if let Some(s) = &self.spec.from_snapshot {
            if let Err(e) = validation::dns1123_subdomain(s) {
                errs.push(FieldError::invalid("spec.fromSnapshot", e));
            }
        }
        if let Some(b) = &self.spec.from_backup {
            if let Err(e) = validation::dns1123_subdomain(b) {
                errs.push(FieldError::invalid("spec.fromBackup", e));
            }
            if self.spec.from_snapshot.is_some() || self.spec.image.is_some() {
                errs.push(FieldError::forbidden(
                    "spec.fromBackup",
                    "a volume is filled from one source: a backup, a snapshot or an image",
                ));
            }
        }
        if let Some(i) = &self.spec.image {
            if let Err(e) = image_ref(i) {
                errs.push(FieldError::invalid("spec.image", e));
            }
        }
        if let Some(f) = &self.spec.frontend {
            if !FRONTENDS.contains(&f.as_str()) {
                errs.push(FieldError::unsupported("spec.frontend", f, FRONTENDS));
            }
        }
        if let Some(t) = &self.spec.stale_replica_timeout {
            match parse_duration(t) {
                None => errs.push(FieldError::invalid(
                    "spec.staleReplicaTimeout",
                    format!("{t:?} is not a duration such as 10m, 90s or 1h30m"),
                )),
                Some(d) if d < MIN_STALE_REPLICA_TIMEOUT => errs.push(FieldError::invalid(
                    "spec.staleReplicaTimeout",
                    format!(
                        "{t} is shorter than {}: an agent restart or a short network hiccup would move replicas; \
                         use at least {}",
                        format_duration(MIN_STALE_REPLICA_TIMEOUT),
                        format_duration(MIN_STALE_REPLICA_TIMEOUT)
                    ),
                )),
                Some(_) => {}
            }
        }
        check_tags(&mut errs, "spec.diskSelector", &self.spec.disk_selector);
        if let Some(old) = old {
            let (new_size, old_size) = (self.size_bytes(), old.size_bytes());
            if new_size < old_size {
                errs.push(FieldError::forbidden(
                    "spec.size",
                    format!("a volume cannot shrink (it is {old_size} bytes; asked for {new_size})"),
                ));
            }
            if self.spec.image != old.spec.image {
                errs.push(FieldError::forbidden("spec.image", "cannot change after the volume is created"));
            }
            if self.spec.from_snapshot != old.spec.from_snapshot {
                errs.push(FieldError::forbidden("spec.fromSnapshot", "cannot change after the volume is created"));
            }
            if self.spec.from_backup != old.spec.from_backup {
                errs.push(FieldError::forbidden("spec.fromBackup", "cannot change after the volume is created"));
            }
        }
        errs
    }
    fn normalize(&mut self) {
        if self.spec.number_of_replicas.is_none() {
            self.spec.number_of_replicas = Some(DEFAULT_REPLICAS);
        }
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Size", "string", ".spec.size"),
            Column::new("Replicas", "integer", ".spec.numberOfReplicas"),
            Column::new("State", "string", ".status.state"),
            Column::new("Robustness", "string", ".status.robustness"),
            Column::new("Node", "string", ".status.attachedTo"),
            Column::new("Actual", "integer", ".status.actualSize").wide(),
        ]
    }
    fn description() -> &'static str {
        "A replicated, thin-provisioned block volume. Virtual machines use it through a persistentVolumeClaim \
         volume of the same name."
    }
}

/// One copy of a volume's data on a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ReplicaSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReplicaStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSpec {
    /// The Volume (same namespace).
    #[serde(default)]
    pub volume_name: String,
    /// The node that keeps this copy.
    #[serde(default)]
    pub node_name: String,
    /// The disk of that node (a Disk's `spec.diskName`) that holds the
    /// data; unset: the node's `default` disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// `Running` (its server answers) or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Where engines reach it: `unix:PATH` or `tcp:HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The directory on the node's disk (`<disk path>/<replica uid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Kind for Replica {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "Replica";
    const PLURAL: &'static str = "replicas";
    const CATEGORIES: &'static [&'static str] = &["sheaf"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        object_name(&mut errs, "spec.volumeName", &self.spec.volume_name);
        object_name(&mut errs, "spec.nodeName", &self.spec.node_name);
        if let Some(d) = &self.spec.disk_name {
            if let Err(e) = validation::dns1123_label(d) {
                errs.push(FieldError::invalid("spec.diskName", e));
            }
        }
        if old.is_some_and(|o| o.spec != self.spec) {
            errs.push(FieldError::forbidden("spec", "a replica's volume, node and disk cannot change"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Volume", "string", ".spec.volumeName"),
            Column::new("Node", "string", ".spec.nodeName"),
            Column::new("State", "string", ".status.state"),
            Column::new("Disk", "string", ".spec.diskName").wide(),
            Column::new("Address", "string", ".status.address").wide(),
            Column::new("Data-Dir", "string", ".status.dataDir").wide(),
        ]
    }
    fn description() -> &'static str {
        "One copy of a Volume's data on a node, served by a replica process that node's agent runs."
    }
}

impl Replica {
    /// The disk of its node that holds the data ([`DEFAULT_DISK`] when
    /// `spec.diskName` is unset).
    pub fn disk_name(&self) -> &str {
        self.spec.disk_name.as_deref().filter(|d| !d.is_empty()).unwrap_or(DEFAULT_DISK)
    }
}

/// A disk of a node, where its agent keeps replicas (`sheaf server --disk
/// NAME=PATH[,tags=...]`; one named `default` at the replica root when no
/// `--disk` is given). The agent creates it, keeps its status current and
/// deletes it when the disk leaves its configuration; it is named
/// `<node>.<disk>` and owned by its Node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DiskSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DiskStatus>,
}

/// What the node's agent was configured with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    /// The node the disk belongs to.
    #[serde(default)]
    pub node_name: String,
    /// The disk's name on its node (what a Replica's `spec.diskName` says).
    #[serde(default)]
    pub disk_name: String,
    /// The directory replicas go under (`<path>/<replica uid>/`).
    #[serde(default)]
    pub path: String,
    /// What a Volume's `spec.diskSelector` matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// What the node's agent measures, at each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    /// Whether new replicas may go here (the directory exists and its file
    /// system is writable); `message` says why not.
    #[serde(default)]
    pub schedulable: bool,
    /// Size of the file system, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<i64>,
    /// Bytes free for new data (what an unprivileged writer may use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Disk {
    /// The object name of disk `disk` of node `node`. Unambiguous: a disk
    /// name has no dot, so the node is what comes before the last one.
    pub fn object_name(node: &str, disk: &str) -> String {
        format!("{node}.{disk}")
    }
    pub fn schedulable(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.schedulable)
    }
    pub fn available(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.available)
    }
    /// Whether it has every tag of `selector`.
    pub fn matches(&self, selector: &[String]) -> bool {
        selector.iter().all(|t| self.spec.tags.contains(t))
    }
}

impl Kind for Disk {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "Disk";
    const PLURAL: &'static str = "disks";
    const CATEGORIES: &'static [&'static str] = &["sheaf"];
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        object_name(&mut errs, "spec.nodeName", &self.spec.node_name);
        if self.spec.disk_name.is_empty() {
            errs.push(FieldError::required("spec.diskName"));
        } else if let Err(e) = validation::dns1123_label(&self.spec.disk_name) {
            errs.push(FieldError::invalid("spec.diskName", e));
        }
        let want = Disk::object_name(&self.spec.node_name, &self.spec.disk_name);
        if let Some(name) = self.metadata.name.as_deref().filter(|n| *n != want) {
            errs.push(FieldError::invalid(
                "metadata.name",
                format!("{name:?} is not <spec.nodeName>.<spec.diskName> ({want:?})"),
            ));
        }
        if !self.spec.path.starts_with('/') {
            errs.push(FieldError::invalid("spec.path", format!("{:?} is not an absolute path", self.spec.path)));
        }
        check_tags(&mut errs, "spec.tags", &self.spec.tags);
        if let Some(old) = old {
            if (&old.spec.node_name, &old.spec.disk_name) != (&self.spec.node_name, &self.spec.disk_name) {
                errs.push(FieldError::forbidden("spec", "a disk's node and name cannot change"));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Node", "string", ".spec.nodeName"),
            Column::new("Disk", "string", ".spec.diskName"),
            Column::new("Tags", "string", ".spec.tags"),
            Column::new("Schedulable", "boolean", ".status.schedulable"),
            Column::new("Available", "integer", ".status.available"),
            Column::new("Capacity", "integer", ".status.capacity"),
            Column::new("Path", "string", ".spec.path").wide(),
            Column::new("Message", "string", ".status.message").wide(),
        ]
    }
    fn description() -> &'static str {
        "A disk of a node that holds replicas, with its tags (what a Volume's diskSelector matches) and free \
         space, kept current by the node's agent."
    }
}

/// A crash-consistent point-in-time copy of a volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeSnapshotSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeSnapshotStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    /// The Volume (same namespace).
    #[serde(default)]
    pub volume_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default)]
    pub ready_to_use: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// The volume's size when the snapshot was taken, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VolumeSnapshot {
    /// The layer name in the replicas: unique even if the object is
    /// deleted and made again under the same name.
    pub fn layer_name(&self) -> String {
        format!("snap-{}", self.metadata.uid.as_deref().unwrap_or_default())
    }
}

impl Kind for VolumeSnapshot {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "VolumeSnapshot";
    const PLURAL: &'static str = "volumesnapshots";
    const SHORT_NAMES: &'static [&'static str] = &["vs"];
    const CATEGORIES: &'static [&'static str] = &["sheaf"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        object_name(&mut errs, "spec.volumeName", &self.spec.volume_name);
        if old.is_some_and(|o| o.spec != self.spec) {
            errs.push(FieldError::forbidden("spec.volumeName", "a snapshot's volume cannot change"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Volume", "string", ".spec.volumeName"),
            Column::new("Ready", "boolean", ".status.readyToUse"),
            Column::new("Size", "integer", ".status.size"),
            Column::new("Error", "string", ".status.error").wide(),
        ]
    }
    fn description() -> &'static str {
        "A crash-consistent snapshot of a Volume, taken in order with the guest's writes. Deleting it merges its \
         data into the neighbouring layer; a volume can be reverted to it or cloned from it."
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(size: &str) -> Volume {
        Volume {
            metadata: ObjectMeta { name: Some("v".into()), ..Default::default() },
            spec: VolumeSpec { size: Some(Quantity::parse(size).expect("quantity")), ..Default::default() },
            status: None,
        }
    }

    #[test]
    fn volume_sizes() {
        assert!(vol("1Gi").validate(None).is_empty());
        let e = vol("1000").validate(None);
        assert!(e[0].message.contains("multiple of 4Ki") && e[0].message.contains("4096"), "{e:?}");
        assert!(!vol("0").validate(None).is_empty());
        let mut v = vol("1Gi");
        v.spec.size = None;
        assert_eq!(v.validate(None)[0].field, "spec.size");
        // Grow yes, shrink no.
        assert!(vol("2Gi").validate(Some(&vol("1Gi"))).is_empty());
        let e = vol("1Gi").validate(Some(&vol("2Gi")));
        assert!(e[0].message.contains("cannot shrink"), "{e:?}");
    }

    #[test]
    fn volume_fields() {
        let mut v = vol("1Gi");
        v.spec.number_of_replicas = Some(0);
        v.spec.frontend = Some("iscsi".into());
        v.spec.node_selector.insert("bad key!".into(), "x".into());
        let fields: Vec<String> = v.validate(None).iter().map(|e| e.field.clone()).collect();
        assert_eq!(fields, ["spec.numberOfReplicas", "spec.nodeSelector[bad key!]", "spec.frontend"]);
        let mut v = vol("1Gi");
        v.normalize();
        assert_eq!(v.spec.number_of_replicas, Some(3));
        let mut clone = vol("1Gi");
        clone.spec.from_snapshot = Some("s1".into());
        assert!(clone.validate(Some(&vol("1Gi")))[0].message.contains("cannot change"));
    }

    #[test]
    fn unplaceable_only_for_missing_disks_or_space() {
        let with = |reason: &str, status: &str| {
            let mut v = vol("1Gi");
            v.status = Some(VolumeStatus {
                conditions: vec![crate::meta::Condition {
                    type_: "ReplicasScheduled".into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(format!("{reason} here")),
                    ..Default::default()
                }],
                ..Default::default()
            });
            v.unplaceable()
        };
        assert_eq!(with("NoSpace", "False").as_deref(), Some("NoSpace here"));
        assert_eq!(with("NoDisk", "False").as_deref(), Some("NoDisk here"));
        // No Ready node yet: one may come.
        assert_eq!(with("NoNode", "False"), None);
        assert_eq!(with("NoSpace", "True"), None);
        assert_eq!(vol("1Gi").unplaceable(), None);
    }

    #[test]
    fn trash_and_purge() {
        let mut v = vol("1Gi");
        assert!(!v.trashed() && !v.purge_asked());
        v.metadata.finalizers.push(TRASH_FINALIZER.into());
        assert!(!v.trashed(), "not deleted yet");
        v.metadata.deletion_timestamp = Some(Time::now());
        assert!(v.trashed());
        v.metadata.annotations.insert(PURGE_ANNOTATION.into(), "true".into());
        assert!(v.purge_asked() && v.validate(None).is_empty());
        v.metadata.annotations.insert(PURGE_ANNOTATION.into(), "yes".into());
        let e = v.validate(None);
        assert!(e[0].field.contains(PURGE_ANNOTATION) && e[0].message.contains("\"true\""), "{e:?}");
    }

    #[test]
    fn stale_replica_timeouts() {
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        for bad in ["", "10", "m", "1.5h", "10 m", "-1m", "1d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
        assert_eq!(format_duration(Duration::ZERO), "0s");

        let mut v = vol("1Gi");
        assert_eq!(v.stale_replica_timeout(), DEFAULT_STALE_REPLICA_TIMEOUT);
        v.spec.stale_replica_timeout = Some("2m".into());
        assert!(v.validate(None).is_empty());
        assert_eq!(v.stale_replica_timeout(), Duration::from_secs(120));
        v.spec.stale_replica_timeout = Some("600".into());
        let e = v.validate(None);
        assert_eq!(e[0].field, "spec.staleReplicaTimeout");
        assert!(e[0].message.contains("such as 10m"), "{e:?}");
        v.spec.stale_replica_timeout = Some("30s".into());
        let e = v.validate(None);
        assert!(e[0].message.contains("at least 1m"), "{e:?}");
    }

    fn vmi(name: &str, claim: &str, phase: &str) -> VirtualMachineInstance {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": phase},
        }))
        .expect("vmi")
    }

    #[test]
    fn users_of_a_volume() {
        let v = vol("1Gi");
        let vmis = [vmi("runs", "v", "Running"), vmi("pending", "v", "Pending"), vmi("done", "v", "Succeeded")];
        let other = [vmi("elsewhere", "w", "Running")];
        let names = |u: Vec<&VirtualMachineInstance>| -> Vec<String> {
            u.iter().filter_map(|x| x.metadata.name.clone()).collect()
        };
        assert_eq!(names(users_of(&v, &vmis)), ["runs", "pending"]);
        assert!(users_of(&v, &other).is_empty());
        // The instance its engine serves counts, whatever its spec or phase
        // (QEMU has just exited; the engine stops next).
        let mut attached = vol("1Gi");
        attached.status = Some(VolumeStatus {
            state: Some("Attached".into()),
            attached_vmi: Some("uid-elsewhere".into()),
            ..Default::default()
        });
        assert_eq!(names(users_of(&attached, &other)), ["elsewhere"]);
        let mut detached = attached.clone();
        if let Some(s) = detached.status.as_mut() {
            s.state = Some("Detached".into());
        }
        assert!(users_of(&detached, &other).is_empty());
    }

    #[test]
    fn disk_selectors_and_disks() {
        let mut v = vol("1Gi");
        v.spec.disk_selector = vec!["ssd".into(), "fast.1".into()];
        assert!(v.validate(None).is_empty());
        v.spec.disk_selector = vec!["ssd".into(), "".into(), "a+b".into(), "ssd".into()];
        let e = v.validate(None);
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.diskSelector[1]", "spec.diskSelector[2]", "spec.diskSelector[3]"], "{e:?}");
        assert!(e[1].message.contains("e.g. 'ssd'"), "{e:?}");

        let disk = |node: &str, name: &str, path: &str| Disk {
            metadata: ObjectMeta { name: Some(Disk::object_name(node, name)), ..Default::default() },
            spec: DiskSpec {
                node_name: node.into(),
                disk_name: name.into(),
                path: path.into(),
                tags: vec!["ssd".into()],
            },
            status: None,
        };
        let d = disk("n1.example.com", "fast", "/srv/fast");
        assert_eq!(d.metadata.name.as_deref(), Some("n1.example.com.fast"));
        assert!(d.validate(None).is_empty());
        assert!(d.matches(&["ssd".into()]) && d.matches(&[]) && !d.matches(&["ssd".into(), "nvme".into()]));
        let mut bad = disk("n1", "Fast", "srv");
        bad.metadata.name = Some("n1-fast".into());
        let fields: Vec<String> = bad.validate(None).iter().map(|e| e.field.clone()).collect();
        assert_eq!(fields, ["spec.diskName", "metadata.name", "spec.path"]);
        // Path and tags may change (new flags); node and name may not.
        let mut moved = d.clone();
        moved.spec.path = "/srv/other".into();
        moved.spec.tags.clear();
        assert!(moved.validate(Some(&d)).is_empty());
        let mut renamed = disk("n1.example.com", "slow", "/srv/fast");
        renamed.metadata.name = d.metadata.name.clone();
        assert!(renamed.validate(Some(&d)).iter().any(|e| e.message.contains("cannot change")));

        // A replica's disk: the default one when unset; never changed.
        let mut r = Replica::default();
        r.spec.volume_name = "v".into();
        r.spec.node_name = "n1".into();
        assert_eq!(r.disk_name(), DEFAULT_DISK);
        let mut on_fast = r.clone();
        on_fast.spec.disk_name = Some("fast".into());
        assert_eq!(on_fast.disk_name(), "fast");
        assert!(on_fast.validate(Some(&r))[0].message.contains("disk cannot change"));
        on_fast.spec.disk_name = Some("no_such".into());
        assert_eq!(on_fast.validate(None)[0].field, "spec.diskName");
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(format_bytes(10 << 30), "10Gi");
        assert_eq!(format_bytes((7 << 30) / 2), "3.5Gi");
        assert_eq!(format_bytes(512 << 20), "512Mi");
        assert_eq!(format_bytes(1536), "1.5Ki");
        assert_eq!(format_bytes(700), "700");
        assert_eq!(format_bytes(0), "0");
    }

    #[test]
    fn replicas_and_snapshots_are_tied_to_their_volume() {
        let r = Replica::default();
        assert_eq!(r.validate(None).len(), 2);
        let s = VolumeSnapshot::default();
        assert_eq!(s.validate(None)[0].field, "spec.volumeName");
        let mut a = VolumeSnapshot::default();
        a.spec.volume_name = "a".into();
        let mut b = a.clone();
        b.spec.volume_name = "b".into();
        assert!(!b.validate(Some(&a)).is_empty());
    }
}
