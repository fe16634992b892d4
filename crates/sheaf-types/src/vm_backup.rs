//! Harvester's VM backups and restores (`harvesterhci.io/v1beta1`
//! VirtualMachineBackup and VirtualMachineRestore), with Harvester's
//! shapes. A VM backup is the VM's spec plus one Sheaf `Backup` (or, with
//! `type: snapshot`, one VolumeSnapshot) per volume, taken at one point
//! for all its disks. See docs/design/backups.md.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta, Time};
use crate::resource::{Column, Kind};
use crate::validation::{self, FieldError};

const GROUP: &str = "harvesterhci.io";
const VERSION: &str = "v1beta1";
/// On a VirtualMachineBackup: the BackupTarget to use (needed when the
/// cluster has more than one).
pub const TARGET_ANNOTATION: &str = "sheaf.io/backup-target";
/// On the Backups and VolumeSnapshots a VM backup makes: its name.
pub const VM_BACKUP_LABEL: &str = "sheaf.io/vm-backup";
/// Held by a VirtualMachineBackup until its backups are removed.
pub const VM_BACKUP_FINALIZER: &str = "sheaf.io/vm-backup-data";
pub const TYPES: &[&str] = &["backup", "snapshot"];
pub const DELETION_POLICIES: &[&str] = &["delete", "retain"];

/// `apiGroup`, `kind` and `name` of an object in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypedLocalObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBackup {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineBackupSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineBackupStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBackupSpec {
    /// The VirtualMachine (`kind: VirtualMachine`, `apiGroup: kubevirt.io`).
    #[serde(default)]
    pub source: TypedLocalObjectReference,
    /// `backup` (to a BackupTarget, the default) or `snapshot` (snapshots
    /// of its volumes, kept in the cluster).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// A problem, with when it was seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a VM backup is kept (Harvester's fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_region: Option<String>,
    /// Sheaf: the BackupTarget's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The claim a volume backup restores to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpec {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub spec: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackup {
    /// The Backup (or, for snapshots, the VolumeSnapshot) of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The VM's volume (`spec.template.spec.volumes[].name`).
    #[serde(default)]
    pub volume_name: String,
    #[serde(default)]
    pub csi_driver_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// The claim (Sheaf Volume) it was taken of.
    #[serde(default)]
    pub persistent_volume_claim: ClaimSpec,
    /// Harvester's name for the backup of the volume; Sheaf's Backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longhorn_backup_name: Option<String>,
    #[serde(default)]
    pub volume_size: i64,
    #[serde(default)]
    pub progress: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorStatus>,
}

/// A Secret the VM uses (its cloud-init data), kept with the backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretBackup {
    #[serde(default)]
    pub name: String,
    /// Base64 values, as in a Secret.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data: std::collections::BTreeMap<String, String>,
}

/// The VM as it was backed up: its metadata and spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmSource {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub spec: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sourceUID")]
    pub source_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_target: Option<BackupTargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VmSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_backups: Vec<VolumeBackup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_backups: Vec<SecretBackup>,
    #[serde(default)]
    pub progress: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Sheaf: how the guest was held while its disks were snapshotted
    /// (`fsfreeze` through the guest agent, `paused`, or `stopped`: the VM
    /// was not running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    /// Sheaf: the VM manifest's key on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

impl VirtualMachineBackup {
    pub fn type_(&self) -> &str {
        self.spec.type_.as_deref().unwrap_or("backup")
    }
    pub fn ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
    }
}

fn check_source(errs: &mut Vec<FieldError>, field: &str, r: &TypedLocalObjectReference) {
    if r.kind != "VirtualMachine" {
        errs.push(FieldError::unsupported(format!("{field}.kind"), &r.kind, &["VirtualMachine"]));
    }
    if let Some(g) = &r.api_group {
        if g != "kubevirt.io" {
            errs.push(FieldError::unsupported(format!("{field}.apiGroup"), g, &["kubevirt.io"]));
        }
    }
    if r.name.is_empty() {
        errs.push(FieldError::required(format!("{field}.name")));
    } else if let Err(e) = validation::dns1123_subdomain(&r.name) {
        errs.push(FieldError::invalid(format!("{field}.name"), e));
    }
}

impl Kind for VirtualMachineBackup {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "VirtualMachineBackup";
    const PLURAL: &'static str = "virtualmachinebackups";
    const SHORT_NAMES: &'static [&'static str] = &["vmbackup", "vmbackups"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        check_source(&mut errs, "spec.source", &self.spec.source);
        if let Some(t) = &self.spec.type_ {
            if !TYPES.contains(&t.as_str()) {
                errs.push(FieldError::unsupported("spec.type", t, TYPES));
            }
        }
        if let Some(t) = self.metadata.annotations.get(TARGET_ANNOTATION) {
            if let Err(e) = validation::dns1123_subdomain(t) {
                errs.push(FieldError::invalid(format!("metadata.annotations[{TARGET_ANNOTATION}]"), e));
            }
        }
        if old.is_some_and(|o| o.spec != self.spec) {
            errs.push(FieldError::forbidden("spec", "a VM backup's source and type cannot change"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Source_Kind", "string", ".spec.source.kind"),
            Column::new("Source_Name", "string", ".spec.source.name"),
            Column::new("Type", "string", ".spec.type"),
            Column::new("Ready_To_Use", "boolean", ".status.readyToUse"),
            Column::new("Progress", "integer", ".status.progress"),
            Column::new("Error", "string", ".status.error.message"),
        ]
    }
    fn description() -> &'static str {
        "A backup (or snapshot) of a VirtualMachine: its spec and every volume, taken at one point for all \
         disks (file systems frozen through the guest agent when there is one). Restore it with a \
         VirtualMachineRestore, to a new VM or over the VM it came from."
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineRestore {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineRestoreSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineRestoreStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineRestoreSpec {
    /// The VM to make (`newVM: true`) or to replace (it must be stopped).
    #[serde(default)]
    pub target: TypedLocalObjectReference,
    #[serde(default)]
    pub virtual_machine_backup_name: String,
    #[serde(default)]
    pub virtual_machine_backup_namespace: String,
    #[serde(rename = "newVM", default, skip_serializing_if = "Option::is_none")]
    pub new_vm: Option<bool>,
    /// What happens to the volumes a replace takes the place of: `delete`
    /// (the default) or `retain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<String>,
    /// With `newVM`: keep the NICs' MAC addresses (the original VM must be
    /// gone, or they clash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_mac_address: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestore {
    #[serde(default)]
    pub volume_name: String,
    #[serde(default)]
    pub persistent_volume_claim_spec: ClaimSpec,
    #[serde(default)]
    pub volume_backup_name: String,
    #[serde(default)]
    pub progress: i64,
    #[serde(default)]
    pub volume_size: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineRestoreStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "restores")]
    pub volume_restores: Vec<VolumeRestore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "targetUID")]
    pub target_uid: Option<String>,
    #[serde(default)]
    pub progress: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorStatus>,
}

impl VirtualMachineRestore {
    pub fn new_vm(&self) -> bool {
        self.spec.new_vm.unwrap_or(false)
    }
    pub fn complete(&self) -> bool {
        self.status.as_ref().and_then(|s| s.complete) == Some(true)
    }
}

impl Kind for VirtualMachineRestore {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "VirtualMachineRestore";
    const PLURAL: &'static str = "virtualmachinerestores";
    const SHORT_NAMES: &'static [&'static str] = &["vmrestore", "vmrestores"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        check_source(&mut errs, "spec.target", &self.spec.target);
        if self.spec.virtual_machine_backup_name.is_empty() {
            errs.push(FieldError::required("spec.virtualMachineBackupName"));
        } else if let Err(e) = validation::dns1123_subdomain(&self.spec.virtual_machine_backup_name) {
            errs.push(FieldError::invalid("spec.virtualMachineBackupName", e));
        }
        let ns = &self.spec.virtual_machine_backup_namespace;
        if ns.is_empty() {
            errs.push(FieldError::required("spec.virtualMachineBackupNamespace"));
        } else if let Err(e) = validation::dns1123_label(ns) {
            errs.push(FieldError::invalid("spec.virtualMachineBackupNamespace", e));
        } else if self.metadata.namespace.as_deref().is_some_and(|own| own != ns) {
            errs.push(FieldError::invalid(
                "spec.virtualMachineBackupNamespace",
                format!("a VM backup is restored in its own namespace ({ns}): create the restore there"),
            ));
        }
        if let Some(p) = &self.spec.deletion_policy {
            if !DELETION_POLICIES.contains(&p.as_str()) {
                errs.push(FieldError::unsupported("spec.deletionPolicy", p, DELETION_POLICIES));
            }
        }
        if self.spec.keep_mac_address == Some(true) && !self.new_vm() {
            errs.push(FieldError::invalid(
                "spec.keepMacAddress",
                "only for newVM: a replaced VM keeps its MAC addresses anyway",
            ));
        }
        if old.is_some_and(|o| o.spec != self.spec) {
            errs.push(FieldError::forbidden("spec", "a restore cannot change once made"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Target_Kind", "string", ".spec.target.kind"),
            Column::new("Target_Name", "string", ".spec.target.name"),
            Column::new("Complete", "boolean", ".status.complete"),
            Column::new("Progress", "integer", ".status.progress"),
            Column::new("Error", "string", ".status.error.message"),
        ]
    }
    fn description() -> &'static str {
        "Restores a VirtualMachineBackup: to a new VM (newVM: true) or over the stopped VM it was taken of, \
         with new volumes filled from the backup."
    }
}

/// On the VirtualMachineBackups a schedule makes: its name.
pub const SCHEDULE_LABEL: &str = "harvesterhci.io/svmbackup";
pub const DEFAULT_RETAIN: u32 = 8;
pub const DEFAULT_MAX_FAILURE: u32 = 4;

/// Backs up (or snapshots) a VM on a cron schedule, keeping the newest
/// `retain` and suspending itself after `maxFailure` failures in a row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleVMBackup {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ScheduleVMBackupSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ScheduleVMBackupStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleVMBackupSpec {
    /// When, as a cron expression in UTC (`0 2 * * *`, `@daily`).
    #[serde(default)]
    pub cron: String,
    /// How many of its backups to keep (default 8, 1–250); older ones are
    /// deleted, and their chunks collected once no backup uses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<u32>,
    /// Failures in a row after which the schedule suspends itself
    /// (default 4, 1–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure: Option<u32>,
    #[serde(default)]
    pub suspend: bool,
    /// What each run makes.
    #[serde(default)]
    pub vmbackup: VirtualMachineBackupSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmBackupInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleVMBackupStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "vmbackupInfo")]
    pub vmbackup_info: Vec<VmBackupInfo>,
    /// Failures in a row.
    #[serde(default)]
    pub failure: u32,
    #[serde(default)]
    pub suspended: bool,
    /// Sheaf: when it last made a backup, and when it will next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ScheduleVMBackup {
    pub fn retain(&self) -> u32 {
        self.spec.retain.unwrap_or(DEFAULT_RETAIN)
    }
    pub fn max_failure(&self) -> u32 {
        self.spec.max_failure.unwrap_or(DEFAULT_MAX_FAILURE)
    }
}

impl Kind for ScheduleVMBackup {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "ScheduleVMBackup";
    const PLURAL: &'static str = "schedulevmbackups";
    const SHORT_NAMES: &'static [&'static str] = &["svmbackup", "svmbackups"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.spec.cron.trim().is_empty() {
            errs.push(FieldError::required("spec.cron"));
        } else if let Err(e) = crate::cron::Cron::parse(&self.spec.cron) {
            errs.push(FieldError::invalid("spec.cron", e));
        }
        if self.spec.retain.is_some_and(|r| !(1..=250).contains(&r)) {
            errs.push(FieldError::invalid("spec.retain", "keep between 1 and 250 backups"));
        }
        if self.spec.max_failure.is_some_and(|r| !(1..=100).contains(&r)) {
            errs.push(FieldError::invalid("spec.maxFailure", "between 1 and 100 failures in a row"));
        }
        check_source(&mut errs, "spec.vmbackup.source", &self.spec.vmbackup.source);
        if let Some(t) = &self.spec.vmbackup.type_ {
            if !TYPES.contains(&t.as_str()) {
                errs.push(FieldError::unsupported("spec.vmbackup.type", t, TYPES));
            }
        }
        if old.is_some_and(|o| o.spec.vmbackup.source != self.spec.vmbackup.source) {
            errs.push(FieldError::forbidden(
                "spec.vmbackup.source",
                "a schedule's VM cannot change: make another schedule",
            ));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Source", "string", ".spec.vmbackup.source.name"),
            Column::new("Type", "string", ".spec.vmbackup.type"),
            Column::new("Cron", "string", ".spec.cron"),
            Column::new("Retain", "integer", ".spec.retain"),
            Column::new("Suspended", "boolean", ".status.suspended"),
            Column::new("Next", "string", ".status.nextRun"),
        ]
    }
    fn description() -> &'static str {
        "Backs up or snapshots a VirtualMachine on a cron schedule (UTC), keeps the newest `retain`, and \
         suspends itself after `maxFailure` failures in a row."
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn vm_backups_and_restores_are_checked() {
        let mut b = VirtualMachineBackup::default();
        assert_eq!(fields(b.validate(None)), ["spec.source.kind", "spec.source.name"]);
        b.spec.source = TypedLocalObjectReference {
            api_group: Some("kubevirt.io".into()),
            kind: "VirtualMachine".into(),
            name: "vm1".into(),
        };
        assert!(b.validate(None).is_empty());
        b.spec.type_ = Some("clone".into());
        assert_eq!(fields(b.validate(None)), ["spec.type"]);

        let mut r = VirtualMachineRestore {
            metadata: ObjectMeta { namespace: Some("default".into()), ..Default::default() },
            ..Default::default()
        };
        r.spec.target = b.spec.source.clone();
        r.spec.virtual_machine_backup_name = "b1".into();
        r.spec.virtual_machine_backup_namespace = "other".into();
        r.spec.keep_mac_address = Some(true);
        assert_eq!(fields(r.validate(None)), ["spec.virtualMachineBackupNamespace", "spec.keepMacAddress"]);
        r.spec.virtual_machine_backup_namespace = "default".into();
        r.spec.new_vm = Some(true);
        assert!(r.validate(None).is_empty());
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["spec"]["newVM"], true);
    }
}
