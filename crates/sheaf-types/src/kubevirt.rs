//! `kubevirt.io/v1` VirtualMachine, VirtualMachineInstance and
//! VirtualMachineInstanceMigration, with KubeVirt's field names so that
//! KubeVirt manifests are read unchanged.
//!
//! Fields Sheaf does not interpret (probes, clock, features, ...) are kept
//! as loose JSON objects: they round-trip unchanged and are not reported as
//! unknown, but are not checked either. `spec.affinity` is typed and checked
//! ([`affinity`]).

pub mod affinity;
pub mod migration_state;

use std::collections::{BTreeMap, BTreeSet};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::meta::{Condition, LocalObjectReference, ObjectMeta, Time};
use crate::quantity::Quantity;
use crate::resource::{Column, Kind};
use crate::validation::{self, FieldError, FieldErrorReason};

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Schema of a field kept as a free-form JSON object.
fn loose_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema of a field kept as a list of free-form JSON objects.
fn loose_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

// ---------------------------------------------------------------------------
// VirtualMachine
// ---------------------------------------------------------------------------

/// A virtual machine: the template of its running instance and whether it
/// should run. KubeVirt's `kubevirt.io/v1` VirtualMachine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachine {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Desired state: the instance template and the run strategy.
    #[serde(default)]
    pub spec: VirtualMachineSpec,
    /// Observed state, written by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineStatus>,
}

/// How a VirtualMachine is run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Deprecated: use runStrategy. true is runStrategy Always, false is
    /// Halted. Must not be set together with runStrategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// When the instance runs: Always, RerunOnFailure, Manual, Halted, Once
    /// or WaitAsReceiver. Halted when neither this nor running is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// Instance type providing CPU and memory, instead of setting them in
    /// the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<InstancetypeMatcher>,
    /// Preference providing default device and firmware settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMatcher>,
    /// Template of the VirtualMachineInstance created when the machine starts.
    #[serde(default)]
    pub template: VirtualMachineInstanceTemplateSpec,
    /// DataVolumes created with the machine and deleted with it; each must be
    /// referenced by a dataVolume volume of the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<DataVolumeTemplateSpec>,
    /// How volume changes are applied to a running machine: Replacement or
    /// Migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_volumes_strategy: Option<String>,
}

/// When a VirtualMachine's instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunStrategy {
    /// Always running; restarted whenever it stops.
    Always,
    /// Restarted only when it fails; stays stopped after a clean shutdown.
    RerunOnFailure,
    /// Started and stopped only on explicit start/stop requests.
    Manual,
    /// Stopped.
    Halted,
    /// Run once; not restarted when it stops.
    Once,
    /// Waits to receive a migration from another cluster.
    WaitAsReceiver,
}

impl RunStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStrategy::Always => "Always",
            RunStrategy::RerunOnFailure => "RerunOnFailure",
            RunStrategy::Manual => "Manual",
            RunStrategy::Halted => "Halted",
            RunStrategy::Once => "Once",
            RunStrategy::WaitAsReceiver => "WaitAsReceiver",
        }
    }
}

impl VirtualMachineSpec {
    /// The effective run strategy: runStrategy, else running (true is Always,
    /// false Halted), else Halted.
    pub fn effective_run_strategy(&self) -> RunStrategy {
        match (self.run_strategy, self.running) {
            (Some(s), _) => s,
            (None, Some(true)) => RunStrategy::Always,
            _ => RunStrategy::Halted,
        }
    }
}

/// Reference to a VirtualMachineInstancetype or
/// VirtualMachineClusterInstancetype.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancetypeMatcher {
    /// Name of the instance type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VirtualMachineClusterInstancetype (the default) or
    /// VirtualMachineInstancetype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// ControllerRevision holding the instance type as first applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// Name of a volume whose labels name the instance type; instead of name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_from_volume: Option<String>,
    /// Reject (the default) or Ignore when inference from the volume fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_from_volume_failure_policy: Option<String>,
}

/// Reference to a VirtualMachinePreference or
/// VirtualMachineClusterPreference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferenceMatcher {
    /// Name of the preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VirtualMachineClusterPreference (the default) or
    /// VirtualMachinePreference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// ControllerRevision holding the preference as first applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// Name of a volume whose labels name the preference; instead of name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_from_volume: Option<String>,
    /// Reject (the default) or Ignore when inference from the volume fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_from_volume_failure_policy: Option<String>,
}

/// Metadata and spec of the VirtualMachineInstance a VirtualMachine creates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceTemplateSpec {
    /// Labels and annotations copied to the instance.
    #[serde(default, skip_serializing_if = "is_default")]
    pub metadata: ObjectMeta,
    /// Spec of the instance.
    #[serde(default)]
    pub spec: VirtualMachineInstanceSpec,
}

/// A DataVolume (CDI) created with the VirtualMachine. Its spec is kept as
/// written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplateSpec {
    /// cdi.kubevirt.io/v1beta1, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// DataVolume, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name (required) and labels of the DataVolume.
    #[serde(default, skip_serializing_if = "is_default")]
    pub metadata: ObjectMeta,
    /// DataVolume spec: a source (or sourceRef) and exactly one of pvc or
    /// storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub spec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub status: Option<Value>,
}

/// Observed state of a VirtualMachine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// Name of the snapshot in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_in_progress: Option<String>,
    /// Name of the restore in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_in_progress: Option<String>,
    /// Whether the VirtualMachineInstance exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// Whether the VirtualMachineInstance is running and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Human readable state: Stopped, Provisioning, Starting, Running,
    /// Paused, Stopping, Terminating, CrashLoopBackOff, Migrating,
    /// ErrorUnschedulable, ErrImagePull, ImagePullBackOff, ErrorPvcNotFound,
    /// DataVolumeError, WaitingForVolumeBinding or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    /// Ready, Paused, Failure, ... conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pending start and stop requests, processed in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_change_requests: Vec<StateChangeRequest>,
    /// Pending volume hotplug and unplug requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub volume_requests: Vec<Value>,
    /// Whether each volume can be snapshotted, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub volume_snapshot_statuses: Vec<Value>,
    /// Consecutive start failures and when the next start is attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<StartFailure>,
    /// State of a memory dump request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub memory_dump_request: Option<Value>,
    /// Generation of the VirtualMachine last acted upon by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Generation of the VirtualMachine the running instance was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_generation: Option<i64>,
    /// The run strategy in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<String>,
    /// State of a volume update (migration of volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub volume_update_state: Option<Value>,
    /// Changed block tracking state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub changed_block_tracking: Option<Value>,
    /// The instance type in effect and its ControllerRevision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub instancetype_ref: Option<Value>,
    /// The preference in effect and its ControllerRevision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub preference_ref: Option<Value>,
}

/// A request to start or stop the instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateChangeRequest {
    /// Start or Stop.
    #[serde(default)]
    pub action: String,
    /// Extra data for the request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// UID of the instance a Stop applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Consecutive start failures of a VirtualMachine, for back-off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartFailure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_fail_count: Option<i64>,
    /// UID of the instance that failed last.
    #[serde(rename = "lastFailedVMIUID", default, skip_serializing_if = "Option::is_none")]
    pub last_failed_vmi_uid: Option<String>,
    /// No start is attempted before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_timestamp: Option<Time>,
}

// ---------------------------------------------------------------------------
// VirtualMachineInstance
// ---------------------------------------------------------------------------

/// Annotations through which the API asks a node agent to act on a running
/// instance (the `subresources.kubevirt.io` pause, unpause and softreboot
/// calls). The agent watches its instances, so these work on any node.
pub mod vmi_requests {
    /// `"true"`: the guest should be paused; absent: running.
    pub const PAUSED: &str = "vmi.sheaf.io/paused";
    /// A request id: reboot the guest softly (guest agent or ACPI) once.
    pub const SOFT_REBOOT: &str = "vmi.sheaf.io/soft-reboot";
    /// Written by the agent: the id of the last soft reboot carried out,
    /// followed by `: message` when it failed.
    pub const SOFT_REBOOT_DONE: &str = "vmi.sheaf.io/soft-reboot-done";
    /// Written by the agent: the guest agent's version, hostname and
    /// timezone (the parts of `guestosinfo` without a status field), as a
    /// JSON object.
    pub const GUEST_AGENT_INFO: &str = "vmi.sheaf.io/guest-agent-info";
    /// A request id: hold the guest's writes so that snapshots of all its
    /// disks are taken at one point (a VM backup): its file systems are
    /// frozen by the guest agent, or, without one, its vCPUs paused.
    /// Removing the annotation lets it go on; the agent also does after
    /// [`FREEZE_LIMIT_SECONDS`].
    pub const FREEZE: &str = "vmi.sheaf.io/freeze";
    /// Written by the agent: `ID:fsfreeze` or `ID:paused` while the request
    /// ID holds the guest, `ID: message` when it could not or gave up.
    pub const FROZEN: &str = "vmi.sheaf.io/frozen";
    pub const FREEZE_LIMIT_SECONDS: u64 = 60;
}

/// A running virtual machine. Usually created by a VirtualMachine from its
/// template; its spec cannot be changed after creation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstance {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The virtual hardware, volumes, networks and scheduling of the instance.
    #[serde(default)]
    pub spec: VirtualMachineInstanceSpec,
    /// Observed state, written by the controller and the node agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineInstanceStatus>,
}

/// The virtual hardware, volumes, networks and scheduling of an instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    /// Priority class of the instance's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// The virtual hardware: CPU, memory, firmware and devices.
    #[serde(default)]
    pub domain: DomainSpec,
    /// Labels a node must have to run the instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Node affinity and VM (anti-)affinity (core/v1 Affinity): where the
    /// scheduler may and prefers to place the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<affinity::Affinity>,
    /// Scheduler to use; the default scheduler when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// Service account of the instance's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Taints the instance tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// How instances spread across topology domains (core/v1), kept as
    /// written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub topology_spread_constraints: Vec<Value>,
    /// What happens when the node is drained: None, LiveMigrate,
    /// LiveMigrateIfPossible or External.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
    /// Paused: start the instance paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_strategy: Option<String>,
    /// Seconds the guest has to shut down before it is killed. Must not be
    /// negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Volumes; each disk refers to one by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// When to restart the instance (core/v1-style probe), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub liveness_probe: Option<Value>,
    /// When the instance is ready for traffic, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub readiness_probe: Option<Value>,
    /// Guest host name; the instance name when unset. A DNS-1123 label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// With hostname, gives the FQDN <hostname>.<subdomain>.<namespace>.svc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// Networks; each interface refers to one by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// DNS policy of the instance's pod: ClusterFirst, Default, None, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<String>,
    /// DNS settings of the instance's pod (core/v1 PodDNSConfig), kept as
    /// written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub dns_config: Option<Value>,
    /// SSH keys and passwords injected into the guest, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub access_credentials: Vec<Value>,
    /// Guest CPU architecture, for example amd64 or arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Dynamic resource allocation claims, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub resource_claims: Vec<Value>,
    /// Volumes for KubeVirt's own utilities, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub utility_volumes: Vec<Value>,
}

/// What happens to an instance when its node is drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EvictionStrategy {
    /// The instance is shut down.
    None,
    /// The instance is live-migrated; the drain waits if it cannot be.
    LiveMigrate,
    /// Live-migrated if possible, otherwise shut down.
    LiveMigrateIfPossible,
    /// An external component handles the eviction.
    External,
}

/// A taint toleration, as core/v1 Toleration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// Taint key; empty with operator Exists matches every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Equal (the default) or Exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Taint value to match with operator Equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule or NoExecute; empty matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// With effect NoExecute: seconds the instance stays after the taint
    /// appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// The virtual hardware of an instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    /// Compute resources (cpu, memory) requested for and limiting the
    /// instance.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: ResourceRequirements,
    /// CPU topology and model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Guest memory and huge pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Emulated machine type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Firmware: UUID, serial and bootloader (BIOS or EFI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Guest clock offset and timers, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub clock: Option<Value>,
    /// Hypervisor features (acpi, apic, hyperv, smm, ...), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub features: Option<Value>,
    /// Disks, network interfaces and other devices.
    #[serde(default, skip_serializing_if = "is_default")]
    pub devices: Devices,
    /// IO thread policy: shared, auto or supplementalPool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads_policy: Option<String>,
    /// IO thread pool settings, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub io_threads: Option<Value>,
    /// SMBIOS chassis information, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub chassis: Option<Value>,
    /// Confidential computing (SEV, SNP, TDX), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub launch_security: Option<Value>,
    /// What a guest reboot does: Reboot or Terminate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_policy: Option<String>,
}

/// Requests and limits by resource name (cpu, memory, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    /// Minimum resources reserved for the instance, for example
    /// {"memory": "2Gi", "cpu": "1"}.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    /// Maximum resources the instance may use; each at least its request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    /// Do not add the hypervisor's overhead to the memory request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overcommit_guest_overhead: Option<bool>,
}

/// Virtual CPU topology and model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// Cores per socket; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Sockets; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    /// Maximum sockets for CPU hotplug; at least sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sockets: Option<u32>,
    /// Threads per core; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// CPU model: host-model, host-passthrough or a named model such as
    /// Haswell-noTSX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// CPU features to require, forbid, disable, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<CpuFeature>,
    /// Pin each virtual CPU to a dedicated host CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_cpu_placement: Option<bool>,
    /// Guest NUMA topology, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub numa: Option<Value>,
    /// Give the emulator thread its own dedicated CPU; needs
    /// dedicatedCpuPlacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate_emulator_thread: Option<bool>,
    /// Real-time tuning, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub realtime: Option<Value>,
}

/// A CPU feature and what to do with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuFeature {
    /// Feature name, for example pcid.
    #[serde(default)]
    pub name: String,
    /// force, require (the default), optional, disable or forbid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// Guest memory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Back guest memory with huge pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<Hugepages>,
    /// Memory the guest sees, for example 2Gi; at most the memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Quantity>,
    /// Maximum guest memory for memory hotplug; at least guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_guest: Option<Quantity>,
    /// Extra memory reserved for the hypervisor, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub reserved_overhead: Option<Value>,
}

/// Huge pages backing guest memory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hugepages {
    /// Page size, for example 2Mi or 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<String>,
}

/// Emulated machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// Machine type, for example q35 or pc-q35-rhel9.2.0.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// Firmware settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// SMBIOS system UUID, for example 5d307ca9-b3ef-428c-8861-06e72d69f223.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Bootloader: bios or efi, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
    /// SMBIOS system serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Direct kernel boot from a container image, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub kernel_boot: Option<Value>,
    /// ACPI tables (SLIC, MSDM) from volumes, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub acpi: Option<Value>,
}

/// Bootloader; exactly one of bios or efi.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bootloader {
    /// Legacy BIOS (SeaBIOS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<Bios>,
    /// UEFI (OVMF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi: Option<Efi>,
}

/// Legacy BIOS settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bios {
    /// Show BIOS output on the serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_serial: Option<bool>,
}

/// UEFI settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Efi {
    /// Enable Secure Boot (the default is true); needs the SMM feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Keep EFI variables across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// Devices of an instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    /// Use virtio-transitional devices, for old guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_virtio_transitional: Option<bool>,
    /// Do not add hotplug-capable PCI ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_hotplug: Option<bool>,
    /// Disks; each refers by name to a volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Watchdog device, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub watchdog: Option<Value>,
    /// Network interfaces; each refers by name to a network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Input devices such as a USB tablet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    /// Add an interface on the pod network when no interfaces are listed
    /// (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_pod_interface: Option<bool>,
    /// Add a graphics device and VNC (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_graphics_device: Option<bool>,
    /// Add a serial console (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_serial_console: Option<bool>,
    /// Log the serial console output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_serial_console: Option<bool>,
    /// Add a memory balloon device (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_mem_balloon: Option<bool>,
    /// Add a USB tablet input device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_input_device: Option<bool>,
    /// Add a virtio-vsock device.
    #[serde(rename = "autoattachVSOCK", default, skip_serializing_if = "Option::is_none")]
    pub autoattach_vsock: Option<bool>,
    /// Add a virtio random number generator; write {} to enable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Rng>,
    /// Use one virtio-blk queue per vCPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_multi_queue: Option<bool>,
    /// Use one virtio-net queue per vCPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_multiqueue: Option<bool>,
    /// GPUs passed through to the guest, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub gpus: Vec<Value>,
    /// Expose host metrics to the guest, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub downward_metrics: Option<Value>,
    /// Panic notifier devices, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub panic_devices: Vec<Value>,
    /// Shared filesystems (virtiofs), kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub filesystems: Vec<Value>,
    /// Host devices passed through to the guest, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub host_devices: Vec<Value>,
    /// USB redirection from the client, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub client_passthrough: Option<Value>,
    /// Sound device, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub sound: Option<Value>,
    /// Emulated TPM, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub tpm: Option<Value>,
    /// Video device type, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub video: Option<Value>,
}

/// Virtio random number generator; has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rng {}

/// A disk of the guest, backed by the volume of the same name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Name of the disk; a volume with this name must exist.
    #[serde(default)]
    pub name: String,
    /// Attach as a disk (the default); at most one of disk, lun or cdrom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    /// Attach as a SCSI LUN; at most one of disk, lun or cdrom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<LunTarget>,
    /// Attach as a CD-ROM; at most one of disk, lun or cdrom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromTarget>,
    /// Boot order, 1 first; unique across disks and interfaces. Devices
    /// without it are not booted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// Serial number shown to the guest; letters, digits and _.+- only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Give the disk its own IO thread; virtio bus only.
    #[serde(rename = "dedicatedIOThread", default, skip_serializing_if = "Option::is_none")]
    pub dedicated_io_thread: Option<bool>,
    /// Host cache mode: none, writethrough or writeback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// IO mode: native or threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<String>,
    /// Tag exposed to the guest in device metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Logical and physical block sizes, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub block_size: Option<Value>,
    /// Whether the disk may be shared between instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shareable: Option<bool>,
    /// What an IO error does: stop, ignore, report or enospace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_policy: Option<String>,
    /// Track changed blocks for incremental backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking: Option<bool>,
}

/// A disk attached as a disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    /// Bus: virtio (the default), sata, scsi or usb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Read-only disk (not with the sata bus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// Guest PCI address, for example 0000:81:01.0; virtio bus only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
}

/// A disk attached as a SCSI LUN.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LunTarget {
    /// Bus: virtio, sata, scsi or usb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Read-only LUN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// Allow SCSI persistent reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<bool>,
}

/// A disk attached as a CD-ROM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdromTarget {
    /// Bus: sata (the default), scsi or usb; not virtio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Read-only (the default is true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// Tray state: closed (the default) or open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tray: Option<String>,
}

/// An input device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    /// Name of the device.
    #[serde(default)]
    pub name: String,
    /// Device type: tablet.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// Bus: usb (the default) or virtio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
}

/// A network interface of the guest, connected to the network of the same
/// name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Name of the interface; a network with this name must exist.
    #[serde(default)]
    pub name: String,
    /// NIC model: virtio (the default), e1000, e1000e, igb, ne2k_pci, pcnet
    /// or rtl8139.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Connect through a bridge, giving the guest the pod's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<InterfaceBridge>,
    /// Connect through NAT behind the pod's address; pod network only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<InterfaceMasquerade>,
    /// Pass an SR-IOV virtual function through to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<InterfaceSriov>,
    /// Discontinued user-mode networking, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub slirp: Option<Value>,
    /// Discontinued macvtap binding, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub macvtap: Option<Value>,
    /// Discontinued passt binding, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub passt: Option<Value>,
    /// Core passt binding, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub passt_binding: Option<Value>,
    /// Network binding plugin, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<PluginBinding>,
    /// Ports forwarded to the guest (masquerade); all ports when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Port ranges forwarded to the guest, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub port_ranges: Vec<Value>,
    /// Unicast MAC address such as 02:00:00:aa:bb:cc; generated when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Boot order, 1 first; unique across disks and interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// Guest PCI address, for example 0000:81:01.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    /// Extra DHCP options for the guest, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub dhcp_options: Option<Value>,
    /// Tag exposed to the guest in device metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// ACPI index of the NIC, which fixes its name in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi_index: Option<i32>,
    /// Link state: up (the default), down or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// Bridge binding; has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InterfaceBridge {}

/// Masquerade (NAT) binding; has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InterfaceMasquerade {}

/// SR-IOV binding; has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InterfaceSriov {}

/// A network binding plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginBinding {
    /// Name of the plugin, as registered in the KubeVirt configuration.
    #[serde(default)]
    pub name: String,
}

/// A port forwarded to the guest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// Name of the port, unique within the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP (the default) or UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port number, 1 to 65535.
    #[serde(default)]
    pub port: i32,
}

/// A volume: where a disk's data comes from. Exactly one source must be
/// set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Name of the volume, a DNS-1123 label; disks refer to it.
    #[serde(default)]
    pub name: String,
    /// A disk image file on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
    /// A PersistentVolumeClaim in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    /// A cloud-init NoCloud data source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitSource>,
    /// A cloud-init ConfigDrive data source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_config_drive: Option<CloudInitSource>,
    /// A Windows sysprep answer file from a Secret or ConfigMap, kept as
    /// written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub sysprep: Option<Value>,
    /// A disk image from a container image; writes are discarded when the
    /// instance stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDiskSource>,
    /// A copy-on-write layer over a PVC, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub ephemeral: Option<Value>,
    /// A new empty sparse disk, discarded when the instance stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
    /// A DataVolume (CDI) in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeSource>,
    /// A ConfigMap, presented as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// A Secret, presented as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    /// Pod metadata (downward API), kept as written.
    #[serde(rename = "downwardAPI", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub downward_api: Option<Value>,
    /// A service account token, presented as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountVolumeSource>,
    /// Host metrics for the guest, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub downward_metrics: Option<Value>,
    /// Target PVC of a memory dump, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub memory_dump: Option<Value>,
    /// A path of the virt-launcher container, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub container_path: Option<Value>,
}

/// `spec` without its hotpluggable volumes and the disks that use them.
fn without_hotplug(spec: &VirtualMachineInstanceSpec) -> VirtualMachineInstanceSpec {
    let mut out = spec.clone();
    let hot: Vec<String> = spec.volumes.iter().filter(|v| v.hotpluggable()).map(|v| v.name.clone()).collect();
    out.volumes.retain(|v| !hot.contains(&v.name));
    out.domain.devices.disks.retain(|d| !hot.contains(&d.name));
    out
}

impl Volume {
    /// Whether the volume was hotplugged (a `persistentVolumeClaim` or
    /// `dataVolume` with `hotpluggable: true`): it can be removed from a
    /// running instance.
    pub fn hotpluggable(&self) -> bool {
        self.persistent_volume_claim.as_ref().and_then(|p| p.hotpluggable) == Some(true)
            || self.data_volume.as_ref().and_then(|d| d.hotpluggable) == Some(true)
    }

    /// The Sheaf Volume this volume refers to: a `persistentVolumeClaim`
    /// or `dataVolume` of that name, in the instance's namespace.
    pub fn claim_name(&self) -> Option<&str> {
        if let Some(p) = &self.persistent_volume_claim {
            return Some(&p.claim_name);
        }
        self.data_volume.as_ref().map(|d| d.name.as_str())
    }

    /// The JSON names of the sources that are set.
    pub fn sources(&self) -> Vec<&'static str> {
        let set = [
            ("hostDisk", self.host_disk.is_some()),
            ("persistentVolumeClaim", self.persistent_volume_claim.is_some()),
            ("cloudInitNoCloud", self.cloud_init_no_cloud.is_some()),
            ("cloudInitConfigDrive", self.cloud_init_config_drive.is_some()),
            ("sysprep", self.sysprep.is_some()),
            ("containerDisk", self.container_disk.is_some()),
            ("ephemeral", self.ephemeral.is_some()),
            ("emptyDisk", self.empty_disk.is_some()),
            ("dataVolume", self.data_volume.is_some()),
            ("configMap", self.config_map.is_some()),
            ("secret", self.secret.is_some()),
            ("downwardAPI", self.downward_api.is_some()),
            ("serviceAccount", self.service_account.is_some()),
            ("downwardMetrics", self.downward_metrics.is_some()),
            ("memoryDump", self.memory_dump.is_some()),
            ("containerPath", self.container_path.is_some()),
        ];
        set.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect()
    }
}

/// A disk image file on the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostDisk {
    /// Absolute path of the image file on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Disk (the file must exist) or DiskOrCreate (created with capacity).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Size of a file created by DiskOrCreate, for example 10Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    /// Whether the file may be shared between instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// A PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimVolumeSource {
    /// Name of the claim, in the instance's namespace.
    #[serde(default)]
    pub claim_name: String,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Whether the volume can be hot-unplugged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,
}

/// A cloud-init data source: user data (at most one of userData,
/// userDataBase64 or secretRef) and network data (at most one of
/// networkData, networkDataBase64 or networkDataSecretRef); at least one of
/// the two.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitSource {
    /// Secret whose userdata (or userData) key holds the user data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// User data, base64-encoded; at most 2048 bytes decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    /// User data, for example a #cloud-config document; at most 2048 bytes
    /// (use secretRef for more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Secret whose networkdata (or networkData) key holds the network data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
    /// Network data, base64-encoded; at most 2048 bytes decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    /// Network data (network-config v1 or v2); at most 2048 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
}

/// A disk image shipped in a container image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDiskSource {
    /// Container image holding the disk image, for example
    /// quay.io/containerdisks/fedora:latest.
    #[serde(default)]
    pub image: String,
    /// Secret with registry credentials for the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// Absolute path of the disk image inside the container; by default the
    /// single file in /disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
}

/// A new empty disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDiskSource {
    /// Size of the disk, for example 10Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
}

/// A DataVolume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    /// Name of the DataVolume, in the instance's namespace.
    #[serde(default)]
    pub name: String,
    /// Whether the volume can be hot-unplugged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,
}

/// A ConfigMap presented as a disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolumeSource {
    /// Name of the ConfigMap, in the instance's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Start even when the ConfigMap does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// Filesystem label of the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
}

/// A Secret presented as a disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolumeSource {
    /// Name of the Secret, in the instance's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Start even when the Secret does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// Filesystem label of the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
}

/// A service account token presented as a disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountVolumeSource {
    /// Name of the service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// A network the instance connects to; exactly one of pod, multus or
/// resourceClaim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Name of the network; the interface with this name connects to it.
    #[serde(default)]
    pub name: String,
    /// The pod network (at most one network may use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
    /// A secondary network through Multus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multus: Option<MultusNetwork>,
    /// A network device from a resource claim, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub resource_claim: Option<Value>,
}

/// The pod network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodNetwork {
    /// IPv4 CIDR of the guest with masquerade; 10.0.2.0/24 by default.
    #[serde(rename = "vmNetworkCIDR", default, skip_serializing_if = "Option::is_none")]
    pub vm_network_cidr: Option<String>,
    /// IPv6 CIDR of the guest with masquerade; fd10:0:2::/120 by default.
    #[serde(rename = "vmIPv6NetworkCIDR", default, skip_serializing_if = "Option::is_none")]
    pub vm_ipv6_network_cidr: Option<String>,
}

/// A Multus network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MultusNetwork {
    /// NetworkAttachmentDefinition, as <name> or <namespace>/<name>.
    #[serde(default)]
    pub network_name: String,
    /// Use this network instead of the pod network as the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}

/// Observed state of a VirtualMachineInstance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// Node the instance runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Short reason for the current phase, for example NodeUnresponsive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ready, LiveMigratable, Paused, AgentConnected, ... conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pending, Scheduling, Scheduled, Running, Succeeded, Failed,
    /// WaitingForSync or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When each phase was entered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<PhaseTransitionTimestamp>,
    /// Addresses of the guest's interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<VirtualMachineInstanceNetworkInterface>,
    /// Guest operating system, reported by the guest agent.
    #[serde(rename = "guestOSInfo", default, skip_serializing_if = "Option::is_none")]
    pub guest_os_info: Option<GuestOsInfo>,
    /// State of the current or last live migration, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub migration_state: Option<Value>,
    /// BlockMigration or LiveMigration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_method: Option<String>,
    /// How migration traffic is carried, for example Unix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_transport: Option<String>,
    /// Quality of service class of the instance's pod: Guaranteed,
    /// Burstable or BestEffort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<String>,
    /// Version of the launcher image running the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_container_image_version: Option<String>,
    /// Node being drained of this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuation_node_name: Option<String>,
    /// Pods of the instance, by pod UID, with their node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub active_pods: BTreeMap<String, String>,
    /// State of each volume, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub volume_status: Vec<Value>,
    /// Kernel boot state, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub kernel_boot_status: Option<Value>,
    /// frozen when the guest filesystems are frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_freeze_status: Option<String>,
    /// Hints for scheduling, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub topology_hints: Option<Value>,
    /// ControllerRevision of the VirtualMachine the instance was created
    /// from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine_revision_name: Option<String>,
    /// User ID the hypervisor runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_user: Option<u64>,
    /// Context ID of the guest's vsock device.
    #[serde(rename = "VSOCKCID", default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    /// SELinux context of the hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux_context: Option<String>,
    /// Machine type in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// CPU topology in effect.
    #[serde(rename = "currentCPUTopology", default, skip_serializing_if = "Option::is_none")]
    pub current_cpu_topology: Option<CpuTopology>,
    /// Guest memory in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStatus>,
    /// Volumes moved by a storage migration, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "loose_list")]
    pub migrated_volumes: Vec<Value>,
    /// Changed block tracking state, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub changed_block_tracking: Option<Value>,
}

/// When a phase was entered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransitionTimestamp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_transition_timestamp: Option<Time>,
}

/// Addresses of a guest interface.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceNetworkInterface {
    /// Name of the interface in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Primary IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// All IP addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Name of the pod interface the guest interface is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_interface_name: Option<String>,
    /// Name of the interface in the guest, for example eth0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// Where the information came from: domain, guest-agent,
    /// multus-status, or a comma-separated combination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_source: Option<String>,
    /// Number of queues of a multi-queue interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_count: Option<i32>,
    /// Link state: up or down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_state: Option<String>,
}

/// Guest operating system, reported by the guest agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestOsInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A CPU topology.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuTopology {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

/// Guest memory in effect.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    /// Guest memory when the instance booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_at_boot: Option<Quantity>,
    /// Guest memory now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_current: Option<Quantity>,
    /// Guest memory requested by a hotplug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_requested: Option<Quantity>,
    /// Memory used by the hypervisor beyond the guest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_overhead: Option<Quantity>,
}

// ---------------------------------------------------------------------------
// VirtualMachineInstanceMigration
// ---------------------------------------------------------------------------

/// A request to live-migrate a VirtualMachineInstance to another node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigration {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Which instance to migrate; immutable.
    #[serde(default)]
    pub spec: VirtualMachineInstanceMigrationSpec,
    /// Progress of the migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineInstanceMigrationStatus>,
}

/// Which instance to migrate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationSpec {
    /// Name of the VirtualMachineInstance to migrate, in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmi_name: Option<String>,
    /// Extra node labels the target node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_node_selector: BTreeMap<String, String>,
    /// Send the instance to another cluster (decentralized migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_to: Option<MigrationSendTo>,
    /// Receive the instance from another cluster (decentralized migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<MigrationReceive>,
    /// Queue priority; set by the controller only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

/// Where a decentralized migration sends the instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSendTo {
    /// Identifier shared by the sending and receiving migrations.
    #[serde(rename = "migrationID", default)]
    pub migration_id: String,
    /// URL of the receiving cluster's synchronization endpoint.
    #[serde(rename = "connectURL", default)]
    pub connect_url: String,
}

/// Which decentralized migration to receive.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReceive {
    /// Identifier shared by the sending and receiving migrations.
    #[serde(rename = "migrationID", default)]
    pub migration_id: String,
}

/// Progress of a migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationStatus {
    /// Pending, Scheduling, Scheduled, PreparingTarget, TargetReady,
    /// Running, Succeeded, Failed, WaitingForSync or Synchronizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When each phase was entered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<PhaseTransitionTimestamp>,
    /// Source and target of the migration and how it went, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "loose_object")]
    pub migration_state: Option<Value>,
    /// Addresses of the synchronization endpoint (decentralized migration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synchronization_addresses: Vec<String>,
}

// ---------------------------------------------------------------------------
// Kind implementations
// ---------------------------------------------------------------------------

impl Kind for VirtualMachine {
    const GROUP: &'static str = "kubevirt.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "VirtualMachine";
    const PLURAL: &'static str = "virtualmachines";
    const SHORT_NAMES: &'static [&'static str] = &["vm", "vms"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_vm_spec(&self.spec, &mut errs);
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            Column {
                description: "Human Readable Status",
                ..Column::new("Status", "string", ".status.printableStatus")
            },
            Column {
                description: "Whether the instance is running and ready",
                ..Column::new("Ready", "boolean", ".status.ready")
            },
        ]
    }

    fn description() -> &'static str {
        "VirtualMachine is a virtual machine that can be started and stopped: it holds the \
         template of the VirtualMachineInstance created when it runs (spec.template) and when it \
         runs (spec.runStrategy). Its status mirrors the instance."
    }
}

impl Kind for VirtualMachineInstance {
    const GROUP: &'static str = "kubevirt.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "VirtualMachineInstance";
    const PLURAL: &'static str = "virtualmachineinstances";
    const SHORT_NAMES: &'static [&'static str] = &["vmi", "vmis"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(old) = old {
            // Hotplugged volumes (and their disks) come and go on a running
            // instance (the addvolume/removevolume subresources); nothing
            // else changes.
            if without_hotplug(&old.spec) != without_hotplug(&self.spec) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "VirtualMachineInstance spec is immutable after creation (only hotplugged volumes \
                     change, with `sheaf vm addvolume`/`removevolume`); change the VirtualMachine instead",
                ));
            } else if old.spec != self.spec {
                validate_vmi_spec(&self.spec, "spec", &mut errs);
            }
            return errs;
        }
        validate_vmi_spec(&self.spec, "spec", &mut errs);
        validate_vmi_memory_present(&self.spec, "spec", &mut errs);
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::new("Phase", "string", ".status.phase"),
            Column::new("IP", "string", ".status.interfaces[0].ipAddress"),
            Column::new("NodeName", "string", ".status.nodeName"),
        ]
    }

    fn description() -> &'static str {
        "VirtualMachineInstance is a running virtual machine: its virtual hardware, volumes and \
         networks (spec, immutable) and where and how it runs (status). Usually created by a \
         VirtualMachine."
    }
}

impl Kind for VirtualMachineInstanceMigration {
    const GROUP: &'static str = "kubevirt.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "VirtualMachineInstanceMigration";
    const PLURAL: &'static str = "virtualmachineinstancemigrations";
    const SHORT_NAMES: &'static [&'static str] = &["vmim"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(old) = old {
            if old.spec != self.spec {
                errs.push(FieldError::forbidden(
                    "spec",
                    "VirtualMachineInstanceMigration spec is immutable; delete the migration and \
                     create a new one",
                ));
            }
            return errs;
        }
        validate_migration_spec(&self.spec, &mut errs);
        errs
    }

    fn columns() -> Vec<Column> {
        vec![Column::new("Phase", "string", ".status.phase"), Column::new("VMI", "string", ".spec.vmiName")]
    }

    fn description() -> &'static str {
        "VirtualMachineInstanceMigration requests a live migration of a VirtualMachineInstance \
         (spec.vmiName) to another node and reports its progress."
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

const DISK_BUSES: &[&str] = &["virtio", "sata", "scsi", "usb"];
const CDROM_BUSES: &[&str] = &["sata", "scsi", "usb"];
const CACHE_MODES: &[&str] = &["none", "writethrough", "writeback"];
const IO_MODES: &[&str] = &["native", "threads"];
const ERROR_POLICIES: &[&str] = &["stop", "ignore", "report", "enospace"];
const INTERFACE_MODELS: &[&str] = &["virtio", "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const HOST_DISK_TYPES: &[&str] = &["Disk", "DiskOrCreate"];
const CLOUD_INIT_MAX_LEN: usize = 2048;
const MIN_MEMORY_BYTES: u64 = 1_000_000;

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn validate_vm_spec(spec: &VirtualMachineSpec, errs: &mut Vec<FieldError>) {
    if spec.running.is_some() && spec.run_strategy.is_some() {
        errs.push(FieldError::invalid(
            "spec.running",
            "running and runStrategy are mutually exclusive; remove spec.running (deprecated) and \
             keep spec.runStrategy (running: true is runStrategy: Always, running: false is Halted)",
        ));
    }
    if spec.template == VirtualMachineInstanceTemplateSpec::default() {
        errs.push(FieldError::new(
            "spec.template",
            FieldErrorReason::Required,
            "missing virtual machine template: set spec.template.spec with the domain (cpu, \
             memory, devices), volumes and networks of the machine",
        ));
        return;
    }
    if let Some(it) = &spec.instancetype {
        validate_matcher(
            "spec.instancetype",
            non_empty(&it.name),
            non_empty(&it.infer_from_volume),
            it.infer_from_volume_failure_policy.as_deref(),
            &spec.template.spec.volumes,
            errs,
        );
    }
    if let Some(p) = &spec.preference {
        validate_matcher(
            "spec.preference",
            non_empty(&p.name),
            non_empty(&p.infer_from_volume),
            p.infer_from_volume_failure_policy.as_deref(),
            &spec.template.spec.volumes,
            errs,
        );
    }
    if let Some(s) = spec.update_volumes_strategy.as_deref() {
        if !["Replacement", "Migration"].contains(&s) {
            errs.push(FieldError::unsupported("spec.updateVolumesStrategy", s, &["Replacement", "Migration"]));
        }
    }
    validate_labels("spec.template.metadata", &spec.template.metadata, errs);
    validate_vmi_spec(&spec.template.spec, "spec.template.spec", errs);
    validate_data_volume_templates(spec, errs);
}

fn validate_matcher(
    path: &str,
    name: Option<&str>,
    infer_from_volume: Option<&str>,
    failure_policy: Option<&str>,
    volumes: &[Volume],
    errs: &mut Vec<FieldError>,
) {
    match (name, infer_from_volume) {
        (None, None) => errs.push(FieldError::new(
            format!("{path}.name"),
            FieldErrorReason::Required,
            "set either name or inferFromVolume",
        )),
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            format!("{path}.name"),
            "name and inferFromVolume are mutually exclusive; set only one",
        )),
        (None, Some(v)) => {
            if !volumes.iter().any(|vol| vol.name == v) {
                errs.push(FieldError::new(
                    format!("{path}.inferFromVolume"),
                    FieldErrorReason::NotFound,
                    format!("volume {v:?} not found in spec.template.spec.volumes"),
                ));
            }
        }
        (Some(_), None) => {}
    }
    if let Some(p) = failure_policy {
        if !["Reject", "Ignore"].contains(&p) {
            errs.push(FieldError::unsupported(
                format!("{path}.inferFromVolumeFailurePolicy"),
                p,
                &["Reject", "Ignore"],
            ));
        }
    }
}

fn validate_labels(path: &str, meta: &ObjectMeta, errs: &mut Vec<FieldError>) {
    for (k, v) in &meta.labels {
        if let Err(e) = validation::qualified_name(k) {
            errs.push(FieldError::invalid(format!("{path}.labels"), format!("invalid label key {k:?}: {e}")));
        }
        if let Err(e) = validation::label_value(v) {
            errs.push(FieldError::invalid(
                format!("{path}.labels"),
                format!("invalid value {v:?} of label {k:?}: {e}"),
            ));
        }
    }
}

fn validate_data_volume_templates(spec: &VirtualMachineSpec, errs: &mut Vec<FieldError>) {
    for (i, dv) in spec.data_volume_templates.iter().enumerate() {
        let p = format!("spec.dataVolumeTemplates[{i}]");
        let Some(name) = non_empty(&dv.metadata.name) else {
            errs.push(FieldError::new(
                format!("{p}.metadata.name"),
                FieldErrorReason::Required,
                "every DataVolume template needs a name; refer to it from a dataVolume volume",
            ));
            continue;
        };
        if let Err(e) = validation::dns1123_subdomain(name) {
            errs.push(FieldError::invalid(format!("{p}.metadata.name"), e));
        }
        let dv_spec = dv.spec.as_ref().and_then(Value::as_object);
        let has = |k: &str| dv_spec.is_some_and(|s| s.get(k).is_some_and(|v| !v.is_null()));
        match (has("pvc"), has("storage")) {
            (false, false) => errs.push(FieldError::new(
                format!("{p}.spec"),
                FieldErrorReason::Required,
                "a DataVolume template needs spec.storage (or spec.pvc) giving the size of the volume",
            )),
            (true, true) => errs.push(FieldError::invalid(
                format!("{p}.spec"),
                "spec.pvc and spec.storage are mutually exclusive; keep only spec.storage",
            )),
            _ => {}
        }
        let referenced = spec.template.spec.volumes.iter().any(|v| {
            v.data_volume.as_ref().is_some_and(|d| d.name == name)
                || v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == name)
        });
        if !referenced {
            errs.push(FieldError::new(
                format!("{p}.metadata.name"),
                FieldErrorReason::Required,
                format!(
                    "DataVolume template {name:?} is not used; add a volume with dataVolume: {{name: {name}}} \
                     to spec.template.spec.volumes"
                ),
            ));
        }
    }
}

/// A VMI must say how much memory it gets (KubeVirt checks this for
/// instances, not for templates, which an instance type may complete).
fn validate_vmi_memory_present(spec: &VirtualMachineInstanceSpec, p: &str, errs: &mut Vec<FieldError>) {
    let d = &spec.domain;
    let has_memory = d.memory.as_ref().is_some_and(|m| m.guest.is_some() || m.hugepages.is_some())
        || d.resources.requests.contains_key("memory")
        || d.resources.limits.contains_key("memory");
    if !has_memory {
        errs.push(FieldError::new(
            format!("{p}.domain.memory.guest"),
            FieldErrorReason::Required,
            format!(
                "no memory requested: set {p}.domain.memory.guest or {p}.domain.resources.requests.memory \
                 (e.g. 2Gi)"
            ),
        ));
    }
}

fn validate_vmi_spec(spec: &VirtualMachineInstanceSpec, p: &str, errs: &mut Vec<FieldError>) {
    validate_domain(&spec.domain, &format!("{p}.domain"), errs);
    let volume_names = validate_volumes(&spec.volumes, p, errs);
    validate_disks(&spec.domain.devices.disks, &volume_names, p, errs);
    validate_networks(spec, p, errs);
    validate_boot_order(spec, p, errs);

    if let Some(t) = spec.termination_grace_period_seconds {
        if t < 0 {
            errs.push(FieldError::invalid(
                format!("{p}.terminationGracePeriodSeconds"),
                format!("must be greater than or equal to 0, got {t}"),
            ));
        }
    }
    if let Some(h) = spec.hostname.as_deref() {
        if let Err(e) = validation::dns1123_label(h) {
            errs.push(FieldError::invalid(format!("{p}.hostname"), e));
        }
    }
    if let Some(s) = spec.subdomain.as_deref() {
        if let Err(e) = validation::dns1123_subdomain(s) {
            errs.push(FieldError::invalid(format!("{p}.subdomain"), e));
        }
    }
    if let Some(s) = spec.start_strategy.as_deref() {
        if s != "Paused" {
            errs.push(FieldError::unsupported(format!("{p}.startStrategy"), s, &["Paused"]));
        }
    }
    validate_selector(&format!("{p}.nodeSelector"), &spec.node_selector, errs);
    if let Some(a) = &spec.affinity {
        affinity::validate(a, &format!("{p}.affinity"), errs);
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        validate_toleration(&format!("{p}.tolerations[{i}]"), t, errs);
    }
}

fn validate_selector(path: &str, sel: &BTreeMap<String, String>, errs: &mut Vec<FieldError>) {
    for (k, v) in sel {
        if let Err(e) = validation::qualified_name(k) {
            errs.push(FieldError::invalid(path, format!("invalid label key {k:?}: {e}")));
        }
        if let Err(e) = validation::label_value(v) {
            errs.push(FieldError::invalid(format!("{path}.{k}"), e));
        }
    }
}

fn validate_toleration(p: &str, t: &Toleration, errs: &mut Vec<FieldError>) {
    let key = t.key.as_deref().unwrap_or("");
    let operator = t.operator.as_deref().unwrap_or("Equal");
    match operator {
        "Equal" | "" => {
            if key.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{p}.operator"),
                    "operator must be Exists when key is empty, to tolerate every taint",
                ));
            }
        }
        "Exists" => {
            if t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.push(FieldError::invalid(format!("{p}.value"), "value must be empty when operator is Exists"));
            }
        }
        other => errs.push(FieldError::unsupported(format!("{p}.operator"), other, &["Equal", "Exists"])),
    }
    if !key.is_empty() {
        if let Err(e) = validation::qualified_name(key) {
            errs.push(FieldError::invalid(format!("{p}.key"), e));
        }
    }
    let effect = t.effect.as_deref().unwrap_or("");
    if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        errs.push(FieldError::unsupported(
            format!("{p}.effect"),
            effect,
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        ));
    }
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        errs.push(FieldError::invalid(
            format!("{p}.tolerationSeconds"),
            "tolerationSeconds is only valid with effect NoExecute",
        ));
    }
}

/// Checks a memory amount: a positive quantity of at least 1M.
fn check_memory(path: &str, q: &Quantity, errs: &mut Vec<FieldError>) {
    if let Err(e) = q.check_positive() {
        errs.push(FieldError::invalid(path, e));
    } else if q.as_bytes_u64().is_some_and(|b| b < MIN_MEMORY_BYTES) {
        errs.push(FieldError::invalid(
            path,
            format!("{q} is too little memory: must be at least 1M (quantities are in bytes; e.g. 512Mi or 2Gi)"),
        ));
    }
}

fn validate_domain(d: &DomainSpec, p: &str, errs: &mut Vec<FieldError>) {
    // Resources.
    let res = &d.resources;
    for (kind, map) in [("requests", &res.requests), ("limits", &res.limits)] {
        for (name, q) in map {
            let path = format!("{p}.resources.{kind}.{name}");
            match name.as_str() {
                "memory" => check_memory(&path, q, errs),
                "cpu" => {
                    if let Err(e) = q.check_positive() {
                        errs.push(FieldError::invalid(path, format!("{e} (cpu is in cores, e.g. 2 or 500m)")));
                    }
                }
                _ => {
                    if q.is_negative() {
                        errs.push(FieldError::invalid(path, format!("must be greater than or equal to 0, got {q:?}")));
                    }
                }
            }
        }
    }
    for name in ["memory", "cpu"] {
        if let (Some(req), Some(lim)) = (res.requests.get(name), res.limits.get(name)) {
            if let (Some(r), Some(l)) = (req.as_millis(), lim.as_millis()) {
                if r > l {
                    errs.push(FieldError::invalid(
                        format!("{p}.resources.requests.{name}"),
                        format!(
                            "request {req} must be less than or equal to the limit {lim} ({p}.resources.limits.{name})"
                        ),
                    ));
                }
            }
        }
    }

    // CPU.
    if let Some(cpu) = &d.cpu {
        for (field, v) in
            [("cores", cpu.cores), ("sockets", cpu.sockets), ("threads", cpu.threads), ("maxSockets", cpu.max_sockets)]
        {
            if v == Some(0) {
                errs.push(FieldError::invalid(format!("{p}.cpu.{field}"), "must be at least 1 when set"));
            }
        }
        if let (Some(s), Some(m)) = (cpu.sockets, cpu.max_sockets) {
            if m > 0 && s > m {
                errs.push(FieldError::invalid(
                    format!("{p}.cpu.sockets"),
                    format!("sockets ({s}) must not be greater than maxSockets ({m})"),
                ));
            }
        }
        if cpu.isolate_emulator_thread == Some(true) && cpu.dedicated_cpu_placement != Some(true) {
            errs.push(FieldError::invalid(
                format!("{p}.cpu.isolateEmulatorThread"),
                "isolateEmulatorThread requires dedicatedCpuPlacement: true",
            ));
        }
        for (i, f) in cpu.features.iter().enumerate() {
            if f.name.is_empty() {
                errs.push(FieldError::required(format!("{p}.cpu.features[{i}].name")));
            }
            if let Some(pol) = f.policy.as_deref() {
                let allowed = ["force", "require", "optional", "disable", "forbid"];
                if !allowed.contains(&pol) {
                    errs.push(FieldError::unsupported(format!("{p}.cpu.features[{i}].policy"), pol, &allowed));
                }
            }
        }
    }

    // Memory.
    if let Some(mem) = &d.memory {
        if let Some(g) = &mem.guest {
            check_memory(&format!("{p}.memory.guest"), g, errs);
            if let (Some(gb), Some(lim)) = (g.as_bytes_u64(), res.limits.get("memory")) {
                if lim.as_bytes_u64().is_some_and(|l| l > 0 && gb > l) {
                    errs.push(FieldError::invalid(
                        format!("{p}.memory.guest"),
                        format!("guest memory {g} must be less than or equal to the memory limit {lim} ({p}.resources.limits.memory)"),
                    ));
                }
            }
        }
        if let Some(m) = &mem.max_guest {
            check_memory(&format!("{p}.memory.maxGuest"), m, errs);
            if let (Some(g), Some(gb), Some(mb)) =
                (&mem.guest, mem.guest.as_ref().and_then(Quantity::as_bytes_u64), m.as_bytes_u64())
            {
                if mb < gb {
                    errs.push(FieldError::invalid(
                        format!("{p}.memory.maxGuest"),
                        format!("maxGuest {m} must be greater than or equal to guest {g}"),
                    ));
                }
            }
        }
        if let Some(hp) = &mem.hugepages {
            let path = format!("{p}.memory.hugepages.pageSize");
            match hp.page_size.as_deref() {
                None | Some("") => errs.push(FieldError::new(
                    path,
                    FieldErrorReason::Required,
                    "set the huge page size, e.g. 2Mi or 1Gi",
                )),
                Some(s) => match Quantity::parse(s) {
                    Err(e) => errs.push(FieldError::invalid(path, e)),
                    Ok(q) => {
                        if let Err(e) = q.check_positive() {
                            errs.push(FieldError::invalid(path, e));
                        }
                    }
                },
            }
        }
    }

    // Firmware.
    if let Some(fw) = &d.firmware {
        if let Some(u) = fw.uuid.as_deref() {
            if !is_uuid(u) {
                errs.push(FieldError::invalid(
                    format!("{p}.firmware.uuid"),
                    format!("{u:?} is not a UUID; expected e.g. 5d307ca9-b3ef-428c-8861-06e72d69f223"),
                ));
            }
        }
        if let Some(bl) = &fw.bootloader {
            if bl.bios.is_some() && bl.efi.is_some() {
                errs.push(FieldError::invalid(
                    format!("{p}.firmware.bootloader"),
                    "bios and efi are mutually exclusive; set only one",
                ));
            }
        }
    }

    // Inputs.
    for (i, input) in d.devices.inputs.iter().enumerate() {
        let ip = format!("{p}.devices.inputs[{i}]");
        if input.name.is_empty() {
            errs.push(FieldError::required(format!("{ip}.name")));
        }
        if input.type_ != "tablet" {
            errs.push(FieldError::unsupported(format!("{ip}.type"), &input.type_, &["tablet"]));
        }
        if let Some(bus) = input.bus.as_deref() {
            if !["usb", "virtio"].contains(&bus) {
                errs.push(FieldError::unsupported(format!("{ip}.bus"), bus, &["usb", "virtio"]));
            }
        }
    }

    if let Some(policy) = d.io_threads_policy.as_deref() {
        let allowed = ["shared", "auto", "supplementalPool"];
        if !allowed.contains(&policy) {
            errs.push(FieldError::unsupported(format!("{p}.ioThreadsPolicy"), policy, &allowed));
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Validates volumes and returns their names.
fn validate_volumes<'a>(volumes: &'a [Volume], p: &str, errs: &mut Vec<FieldError>) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let vp = format!("{p}.volumes[{i}]");
        if v.name.is_empty() {
            errs.push(FieldError::required(format!("{vp}.name")));
        } else {
            if let Err(e) = validation::dns1123_label(&v.name) {
                errs.push(FieldError::invalid(format!("{vp}.name"), e));
            }
            if !names.insert(v.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{vp}.name"), &v.name));
            }
        }
        let sources = v.sources();
        match sources.len() {
            0 => errs.push(FieldError::new(
                vp.clone(),
                FieldErrorReason::Required,
                "must specify exactly one volume source, e.g. containerDisk, persistentVolumeClaim, \
                 dataVolume, emptyDisk or cloudInitNoCloud",
            )),
            1 => {}
            _ => errs.push(FieldError::invalid(
                vp.clone(),
                format!("must specify exactly one volume source, found {}; keep one", sources.join(" and ")),
            )),
        }
        validate_volume_source(v, &vp, errs);
    }
    names
}

fn validate_volume_source(v: &Volume, vp: &str, errs: &mut Vec<FieldError>) {
    if let Some(cd) = &v.container_disk {
        if cd.image.is_empty() {
            errs.push(FieldError::new(
                format!("{vp}.containerDisk.image"),
                FieldErrorReason::Required,
                "set the container image holding the disk, e.g. quay.io/containerdisks/fedora:latest",
            ));
        }
        if let Some(pp) = cd.image_pull_policy.as_deref() {
            if !PULL_POLICIES.contains(&pp) {
                errs.push(FieldError::unsupported(format!("{vp}.containerDisk.imagePullPolicy"), pp, PULL_POLICIES));
            }
        }
        if let Some(path) = non_empty(&cd.path) {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                errs.push(FieldError::invalid(
                    format!("{vp}.containerDisk.path"),
                    "must be an absolute path inside the image without '..', e.g. /disk/fedora.qcow2",
                ));
            }
        }
    }
    if let Some(pvc) = &v.persistent_volume_claim {
        if pvc.claim_name.is_empty() {
            errs.push(FieldError::required(format!("{vp}.persistentVolumeClaim.claimName")));
        }
    }
    if let Some(dv) = &v.data_volume {
        if dv.name.is_empty() {
            errs.push(FieldError::required(format!("{vp}.dataVolume.name")));
        }
    }
    if let Some(ed) = &v.empty_disk {
        let path = format!("{vp}.emptyDisk.capacity");
        match &ed.capacity {
            None => errs.push(FieldError::new(
                path,
                FieldErrorReason::Required,
                "set the size of the empty disk, e.g. 10Gi",
            )),
            Some(c) => {
                if let Err(e) = c.check_positive() {
                    errs.push(FieldError::invalid(path, e));
                }
            }
        }
    }
    if let Some(hd) = &v.host_disk {
        if non_empty(&hd.path).is_none() {
            errs.push(FieldError::new(
                format!("{vp}.hostDisk.path"),
                FieldErrorReason::Required,
                "set the path of the disk image on the node",
            ));
        }
        match hd.type_.as_deref() {
            None | Some("") => errs.push(FieldError::new(
                format!("{vp}.hostDisk.type"),
                FieldErrorReason::Required,
                "set type to Disk (the file must exist) or DiskOrCreate",
            )),
            Some(t) if !HOST_DISK_TYPES.contains(&t) => {
                errs.push(FieldError::unsupported(format!("{vp}.hostDisk.type"), t, HOST_DISK_TYPES))
            }
            Some(t) => {
                if let Some(c) = &hd.capacity {
                    if t != "DiskOrCreate" {
                        errs.push(FieldError::invalid(
                            format!("{vp}.hostDisk.capacity"),
                            "capacity is only allowed with type DiskOrCreate",
                        ));
                    } else if let Err(e) = c.check_positive() {
                        errs.push(FieldError::invalid(format!("{vp}.hostDisk.capacity"), e));
                    }
                }
            }
        }
    }
    if let Some(ci) = &v.cloud_init_no_cloud {
        validate_cloud_init(ci, &format!("{vp}.cloudInitNoCloud"), errs);
    }
    if let Some(ci) = &v.cloud_init_config_drive {
        validate_cloud_init(ci, &format!("{vp}.cloudInitConfigDrive"), errs);
    }
    if let Some(s) = &v.secret {
        if non_empty(&s.secret_name).is_none() {
            errs.push(FieldError::required(format!("{vp}.secret.secretName")));
        }
    }
    if let Some(c) = &v.config_map {
        if non_empty(&c.name).is_none() {
            errs.push(FieldError::required(format!("{vp}.configMap.name")));
        }
    }
    if let Some(s) = &v.service_account {
        if non_empty(&s.service_account_name).is_none() {
            errs.push(FieldError::required(format!("{vp}.serviceAccount.serviceAccountName")));
        }
    }
}

fn validate_cloud_init(ci: &CloudInitSource, p: &str, errs: &mut Vec<FieldError>) {
    use base64::Engine as _;

    let mut check = |kind: &str,
                     plain: &Option<String>,
                     b64: &Option<String>,
                     secret: &Option<LocalObjectReference>,
                     names: [&str; 3]|
     -> usize {
        let mut count = 0;
        let mut len = 0;
        if secret.as_ref().is_some_and(|s| !s.name.is_empty()) {
            count += 1;
        }
        if let Some(b) = non_empty(b64) {
            count += 1;
            match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
                Ok(d) => len = d.len(),
                Err(e) => errs.push(FieldError::invalid(format!("{p}.{}", names[1]), format!("not valid base64: {e}"))),
            }
        }
        if let Some(s) = non_empty(plain) {
            count += 1;
            len = s.len();
        }
        if count > 1 {
            errs.push(FieldError::invalid(
                p,
                format!("{}, {} and {} are mutually exclusive; set only one", names[0], names[1], names[2]),
            ));
        }
        if len > CLOUD_INIT_MAX_LEN {
            errs.push(FieldError::new(
                format!("{p}.{}", names[0]),
                FieldErrorReason::TooLong,
                format!(
                    "{kind} is {len} bytes, more than the {CLOUD_INIT_MAX_LEN}-byte limit; put it in a Secret \
                     and refer to it with {}",
                    names[2]
                ),
            ));
        }
        count
    };
    let user = check(
        "user data",
        &ci.user_data,
        &ci.user_data_base64,
        &ci.secret_ref,
        ["userData", "userDataBase64", "secretRef"],
    );
    let network = check(
        "network data",
        &ci.network_data,
        &ci.network_data_base64,
        &ci.network_data_secret_ref,
        ["networkData", "networkDataBase64", "networkDataSecretRef"],
    );
    if user == 0 && network == 0 {
        errs.push(FieldError::new(
            p,
            FieldErrorReason::Required,
            "set user data (userData, userDataBase64 or secretRef) or network data (networkData, \
             networkDataBase64 or networkDataSecretRef)",
        ));
    }
}

fn validate_disks(disks: &[Disk], volumes: &BTreeSet<&str>, p: &str, errs: &mut Vec<FieldError>) {
    let mut names = BTreeSet::new();
    for (i, d) in disks.iter().enumerate() {
        let dp = format!("{p}.domain.devices.disks[{i}]");
        if d.name.is_empty() {
            errs.push(FieldError::required(format!("{dp}.name")));
        } else {
            if !names.insert(d.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{dp}.name"), &d.name));
            }
            if !volumes.contains(d.name.as_str()) {
                errs.push(FieldError::new(
                    format!("{dp}.name"),
                    FieldErrorReason::NotFound,
                    format!(
                        "disk {:?} has no volume of the same name; add a volume named {:?} to {p}.volumes",
                        d.name, d.name
                    ),
                ));
            }
        }
        let targets = [d.disk.is_some(), d.lun.is_some(), d.cdrom.is_some()].iter().filter(|t| **t).count();
        if targets > 1 {
            errs.push(FieldError::invalid(dp.clone(), "set at most one of disk, lun or cdrom"));
        }
        let mut bus = None;
        if let Some(t) = &d.disk {
            if let Some(b) = t.bus.as_deref() {
                bus = Some(b);
                if !DISK_BUSES.contains(&b) {
                    errs.push(FieldError::unsupported(format!("{dp}.disk.bus"), b, DISK_BUSES));
                } else if b == "sata" && t.readonly == Some(true) {
                    errs.push(FieldError::invalid(
                        format!("{dp}.disk.readonly"),
                        "sata disks cannot be read-only; use virtio or scsi",
                    ));
                }
            }
            if let Some(pci) = non_empty(&t.pci_address) {
                if t.bus.as_deref().unwrap_or("virtio") != "virtio" {
                    errs.push(FieldError::invalid(format!("{dp}.disk.pciAddress"), "a PCI address needs bus virtio"));
                }
                if !is_pci_address(pci) {
                    errs.push(FieldError::invalid(
                        format!("{dp}.disk.pciAddress"),
                        format!("{pci:?} is not a PCI address; expected e.g. 0000:81:01.0"),
                    ));
                }
            }
        }
        if let Some(t) = &d.lun {
            if let Some(b) = t.bus.as_deref() {
                bus = Some(b);
                if !DISK_BUSES.contains(&b) {
                    errs.push(FieldError::unsupported(format!("{dp}.lun.bus"), b, DISK_BUSES));
                }
            }
        }
        if let Some(t) = &d.cdrom {
            if let Some(b) = t.bus.as_deref() {
                bus = Some(b);
                if b == "virtio" {
                    errs.push(FieldError::invalid(
                        format!("{dp}.cdrom.bus"),
                        "bus virtio is invalid for a CD-ROM; use sata or scsi",
                    ));
                } else if !CDROM_BUSES.contains(&b) {
                    errs.push(FieldError::unsupported(format!("{dp}.cdrom.bus"), b, CDROM_BUSES));
                }
            }
            if let Some(tray) = t.tray.as_deref() {
                if !["open", "closed"].contains(&tray) {
                    errs.push(FieldError::unsupported(format!("{dp}.cdrom.tray"), tray, &["open", "closed"]));
                }
            }
        }
        if d.dedicated_io_thread == Some(true) && bus.unwrap_or("virtio") != "virtio" {
            errs.push(FieldError::new(
                format!("{dp}.dedicatedIOThread"),
                FieldErrorReason::Unsupported,
                format!("dedicated IO threads need bus virtio, not {}", bus.unwrap_or("")),
            ));
        }
        if let Some(s) = d.serial.as_deref() {
            if s.len() > 256 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b)) {
                errs.push(FieldError::invalid(
                    format!("{dp}.serial"),
                    "must be at most 256 characters of letters, digits, '_', '.', '+' or '-'",
                ));
            }
        }
        for (field, value, allowed) in [
            ("cache", &d.cache, CACHE_MODES),
            ("io", &d.io, IO_MODES),
            ("errorPolicy", &d.error_policy, ERROR_POLICIES),
        ] {
            if let Some(v) = value.as_deref() {
                if !allowed.contains(&v) {
                    errs.push(FieldError::unsupported(format!("{dp}.{field}"), v, allowed));
                }
            }
        }
    }
}

fn is_pci_address(s: &str) -> bool {
    // dddd:bb:ss.f
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter().enumerate().all(|(i, c)| [4, 7, 10].contains(&i) || c.is_ascii_hexdigit())
}

/// Checks a MAC address: six hex octets separated by ':' (or '-'), unicast.
fn check_mac(s: &str) -> Result<(), String> {
    let example = "expected a unicast MAC address such as 02:00:00:aa:bb:cc";
    let sep = if s.contains('-') { '-' } else { ':' };
    let octets: Vec<&str> = s.split(sep).collect();
    if octets.len() != 6 || !octets.iter().all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(format!("{s:?} is not a MAC address; {example}"));
    }
    let first = u8::from_str_radix(octets[0], 16).map_err(|_| format!("{s:?} is not a MAC address; {example}"))?;
    if first & 1 == 1 {
        return Err(format!("{s:?} is a multicast address; {example}"));
    }
    Ok(())
}

fn validate_networks(spec: &VirtualMachineInstanceSpec, p: &str, errs: &mut Vec<FieldError>) {
    let interfaces = &spec.domain.devices.interfaces;
    let mut network_names = BTreeMap::new();
    let mut pod_networks = 0;
    let mut multus_defaults = 0;
    for (i, n) in spec.networks.iter().enumerate() {
        let np = format!("{p}.networks[{i}]");
        if n.name.is_empty() {
            errs.push(FieldError::required(format!("{np}.name")));
        } else {
            if network_names.insert(n.name.as_str(), n).is_some() {
                errs.push(FieldError::duplicate(format!("{np}.name"), &n.name));
            }
            if !interfaces.iter().any(|iface| iface.name == n.name) {
                errs.push(FieldError::new(
                    format!("{np}.name"),
                    FieldErrorReason::NotFound,
                    format!(
                        "network {:?} has no interface of the same name; add an interface named {:?} to \
                         {p}.domain.devices.interfaces",
                        n.name, n.name
                    ),
                ));
            }
        }
        let kinds = [n.pod.is_some(), n.multus.is_some(), n.resource_claim.is_some()].iter().filter(|k| **k).count();
        match kinds {
            0 => errs.push(FieldError::new(
                np.clone(),
                FieldErrorReason::Required,
                "set the network type: pod: {} or multus: {networkName: ...}",
            )),
            1 => {}
            _ => errs.push(FieldError::invalid(np.clone(), "set only one of pod, multus or resourceClaim")),
        }
        if n.pod.is_some() {
            pod_networks += 1;
            if pod_networks > 1 {
                errs.push(FieldError::invalid(format!("{np}.pod"), "at most one network may use the pod network"));
            }
        }
        if let Some(m) = &n.multus {
            if m.network_name.is_empty() {
                errs.push(FieldError::new(
                    format!("{np}.multus.networkName"),
                    FieldErrorReason::Required,
                    "set the NetworkAttachmentDefinition, as <name> or <namespace>/<name>",
                ));
            }
            if m.default == Some(true) {
                multus_defaults += 1;
                if multus_defaults > 1 {
                    errs.push(FieldError::invalid(
                        format!("{np}.multus.default"),
                        "at most one multus network may be the default",
                    ));
                }
            }
        }
    }
    if pod_networks > 0 && multus_defaults > 0 {
        errs.push(FieldError::invalid(
            format!("{p}.networks"),
            "a pod network cannot be combined with a default multus network",
        ));
    }

    let mut iface_names = BTreeSet::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let ip = format!("{p}.domain.devices.interfaces[{i}]");
        if iface.name.is_empty() {
            errs.push(FieldError::required(format!("{ip}.name")));
        } else {
            if !iface.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                errs.push(FieldError::invalid(format!("{ip}.name"), "may contain only letters, digits, '-' and '_'"));
            }
            if !iface_names.insert(iface.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{ip}.name"), &iface.name));
            }
            if !network_names.contains_key(iface.name.as_str()) {
                errs.push(FieldError::new(
                    format!("{ip}.name"),
                    FieldErrorReason::NotFound,
                    format!(
                        "interface {:?} has no network of the same name; add a network named {:?} to {p}.networks \
                         (e.g. with pod: {{}})",
                        iface.name, iface.name
                    ),
                ));
            }
        }
        let bindings = [
            ("bridge", iface.bridge.is_some()),
            ("masquerade", iface.masquerade.is_some()),
            ("sriov", iface.sriov.is_some()),
            ("slirp", iface.slirp.is_some()),
            ("macvtap", iface.macvtap.is_some()),
            ("passt", iface.passt.is_some()),
            ("passtBinding", iface.passt_binding.is_some()),
            ("binding", iface.binding.is_some()),
        ];
        let set: Vec<&str> = bindings.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
        if set.len() > 1 {
            errs.push(FieldError::invalid(
                ip.clone(),
                format!("set only one binding method, found {}", set.join(" and ")),
            ));
        }
        if iface.masquerade.is_some() {
            let on_pod = network_names.get(iface.name.as_str()).is_some_and(|n| n.pod.is_some());
            if network_names.contains_key(iface.name.as_str()) && !on_pod {
                errs.push(FieldError::invalid(
                    format!("{ip}.masquerade"),
                    "masquerade works only on the pod network; use bridge for other networks",
                ));
            }
        }
        if let Some(b) = &iface.binding {
            if b.name.is_empty() {
                errs.push(FieldError::required(format!("{ip}.binding.name")));
            }
        }
        if let Some(m) = iface.model.as_deref() {
            if !INTERFACE_MODELS.contains(&m) {
                errs.push(FieldError::unsupported(format!("{ip}.model"), m, INTERFACE_MODELS));
            }
        }
        if let Some(mac) = iface.mac_address.as_deref() {
            if let Err(e) = check_mac(mac) {
                errs.push(FieldError::invalid(format!("{ip}.macAddress"), e));
            }
        }
        if let Some(pci) = non_empty(&iface.pci_address) {
            if !is_pci_address(pci) {
                errs.push(FieldError::invalid(
                    format!("{ip}.pciAddress"),
                    format!("{pci:?} is not a PCI address; expected e.g. 0000:81:01.0"),
                ));
            }
        }
        let mut port_names = BTreeSet::new();
        for (j, port) in iface.ports.iter().enumerate() {
            let pp = format!("{ip}.ports[{j}]");
            if port.port == 0 {
                errs.push(FieldError::new(
                    format!("{pp}.port"),
                    FieldErrorReason::Required,
                    "set the port number (1-65535)",
                ));
            } else if !(1..=65535).contains(&port.port) {
                errs.push(FieldError::invalid(
                    format!("{pp}.port"),
                    format!("must be between 1 and 65535, got {}", port.port),
                ));
            }
            if let Some(proto) = port.protocol.as_deref() {
                if !["TCP", "UDP"].contains(&proto) {
                    errs.push(FieldError::unsupported(format!("{pp}.protocol"), proto, &["TCP", "UDP"]));
                }
            }
            if let Some(name) = non_empty(&port.name) {
                if !port_names.insert(name) {
                    errs.push(FieldError::duplicate(format!("{pp}.name"), name));
                }
            }
        }
        if let Some(state) = iface.state.as_deref() {
            if !["up", "down", "absent"].contains(&state) {
                errs.push(FieldError::unsupported(format!("{ip}.state"), state, &["up", "down", "absent"]));
            }
        }
    }
}

fn validate_boot_order(spec: &VirtualMachineInstanceSpec, p: &str, errs: &mut Vec<FieldError>) {
    let devices = &spec.domain.devices;
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    let orders =
        devices.disks.iter().enumerate().map(|(i, d)| (format!("{p}.domain.devices.disks[{i}]"), d.boot_order)).chain(
            devices
                .interfaces
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{p}.domain.devices.interfaces[{i}]"), n.boot_order)),
        );
    for (path, order) in orders {
        let Some(order) = order else { continue };
        if order == 0 {
            errs.push(FieldError::invalid(
                format!("{path}.bootOrder"),
                "must be 1 or greater; leave it unset to not boot from the device",
            ));
            continue;
        }
        if let Some(other) = seen.get(&order) {
            errs.push(FieldError::invalid(
                format!("{path}.bootOrder"),
                format!("boot order {order} is already used by {other}; each device needs a different boot order"),
            ));
        } else {
            seen.insert(order, path);
        }
    }
}

fn validate_migration_spec(spec: &VirtualMachineInstanceMigrationSpec, errs: &mut Vec<FieldError>) {
    match non_empty(&spec.vmi_name) {
        None => errs.push(FieldError::new(
            "spec.vmiName",
            FieldErrorReason::Required,
            "set the name of the VirtualMachineInstance to migrate",
        )),
        Some(n) => {
            if let Err(e) = validation::dns1123_subdomain(n) {
                errs.push(FieldError::invalid("spec.vmiName", e));
            }
        }
    }
    validate_selector("spec.addedNodeSelector", &spec.added_node_selector, errs);
    if let Some(s) = &spec.send_to {
        if s.migration_id.is_empty() {
            errs.push(FieldError::required("spec.sendTo.migrationID"));
        }
        if s.connect_url.is_empty() {
            errs.push(FieldError::required("spec.sendTo.connectURL"));
        }
    }
    if let Some(r) = &spec.receive {
        if r.migration_id.is_empty() {
            errs.push(FieldError::required("spec.receive.migrationID"));
        }
    }
    if let (Some(s), Some(r)) = (&spec.send_to, &spec.receive) {
        if s.migration_id != r.migration_id {
            errs.push(FieldError::invalid(
                "spec.receive.migrationID",
                format!(
                    "sendTo.migrationID {:?} does not match receive.migrationID {:?}",
                    s.migration_id, r.migration_id
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceType;
    use serde_json::json;

    /// KubeVirt's Fedora example VM, as in its user guide.
    fn fedora_vm() -> Value {
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": "testvm",
                "namespace": "default",
                "labels": {"kubevirt.io/vm": "testvm"}
            },
            "spec": {
                "runStrategy": "Always",
                "template": {
                    "metadata": {
                        "labels": {"kubevirt.io/size": "small", "kubevirt.io/domain": "testvm"}
                    },
                    "spec": {
                        "domain": {
                            "cpu": {"cores": 2, "sockets": 1, "threads": 1},
                            "devices": {
                                "disks": [
                                    {"name": "containerdisk", "disk": {"bus": "virtio"}},
                                    {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
                                    {"name": "installer", "cdrom": {"bus": "sata", "readonly": true}, "bootOrder": 2}
                                ],
                                "interfaces": [
                                    {"name": "default", "masquerade": {}, "model": "virtio",
                                     "ports": [{"name": "ssh", "port": 22, "protocol": "TCP"}], "bootOrder": 3}
                                ],
                                "rng": {},
                                "autoattachGraphicsDevice": true,
                                "autoattachSerialConsole": true
                            },
                            "firmware": {"bootloader": {"efi": {"secureBoot": false}}},
                            "machine": {"type": "q35"},
                            "features": {"acpi": {}, "smm": {"enabled": true}},
                            "memory": {"guest": "2Gi"},
                            "resources": {"requests": {"memory": "2Gi", "cpu": "500m"}, "limits": {"memory": "2Gi"}}
                        },
                        "evictionStrategy": "LiveMigrate",
                        "terminationGracePeriodSeconds": 180,
                        "nodeSelector": {"kubernetes.io/arch": "amd64"},
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "vms", "effect": "NoSchedule"}],
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
                        "networks": [{"name": "default", "pod": {}}],
                        "volumes": [
                            {"name": "containerdisk", "containerDisk": {"image": "quay.io/containerdisks/fedora:latest"}},
                            {"name": "cloudinitdisk", "cloudInitNoCloud": {
                                "userData": "#cloud-config\npassword: fedora\nchpasswd: { expire: False }\n"}},
                            {"name": "installer", "dataVolume": {"name": "fedora-iso"}}
                        ]
                    }
                },
                "dataVolumeTemplates": [{
                    "metadata": {"name": "fedora-iso"},
                    "spec": {
                        "storage": {"resources": {"requests": {"storage": "5Gi"}}},
                        "source": {"http": {"url": "https://example.com/fedora.iso"}}
                    }
                }],
                "instancetype": {"name": "u1.medium", "kind": "VirtualMachineClusterInstancetype"},
                "preference": {"name": "fedora"}
            }
        })
    }

    fn decode_vm(v: &Value) -> Result<crate::resource::Decoded, Vec<FieldError>> {
        ResourceType::of::<VirtualMachine>().decode(v, None)
    }

    fn without_type_meta(mut v: Value) -> Value {
        if let Value::Object(m) = &mut v {
            m.remove("apiVersion");
            m.remove("kind");
        }
        v
    }

    /// Applies `f` to a VM's template spec, decodes the VM and returns the
    /// errors.
    fn vm_errors(f: impl FnOnce(&mut Value)) -> Vec<FieldError> {
        let mut vm = fedora_vm();
        f(&mut vm["spec"]["template"]["spec"]);
        match decode_vm(&vm) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    fn has_error(errs: &[FieldError], field: &str, needle: &str) -> bool {
        errs.iter().any(|e| e.field == field && e.message.contains(needle))
    }

    #[track_caller]
    fn assert_error(errs: &[FieldError], field: &str, needle: &str) {
        assert!(has_error(errs, field, needle), "no error at {field} containing {needle:?}: {errs:#?}");
    }

    fn normalise(path: &str) -> String {
        // serde_ignored shows an Option level as "?".
        path.split('.').filter(|s| *s != "?").collect::<Vec<_>>().join(".")
    }

    #[test]
    fn fedora_vm_round_trips() {
        let vm = fedora_vm();
        let d = decode_vm(&vm).expect("valid VM");
        assert!(d.unknown_fields.is_empty(), "unknown: {:?}", d.unknown_fields);
        assert_eq!(d.value, without_type_meta(vm));
    }

    #[test]
    fn kubevirt_vmi_with_status_decodes() {
        let vmi = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "testvm", "namespace": "default", "generation": 7,
                         "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                                              "name": "testvm", "uid": "8c2b", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {
                "architecture": "amd64",
                "domain": {
                    "cpu": {"cores": 1, "model": "host-model", "sockets": 1, "threads": 1, "maxSockets": 4},
                    "devices": {
                        "disks": [{"disk": {"bus": "virtio"}, "name": "containerdisk"}],
                        "interfaces": [{"macAddress": "02:a4:5d:00:00:01", "masquerade": {}, "name": "default"}]
                    },
                    "features": {"acpi": {"enabled": true}},
                    "firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223", "serial": "abc"},
                    "machine": {"type": "q35"},
                    "memory": {"guest": "1Gi", "maxGuest": "4Gi"},
                    "resources": {"requests": {"memory": "1Gi"}}
                },
                "evictionStrategy": "None",
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [{"containerDisk": {"image": "quay.io/kubevirt/cirros-container-disk-demo",
                                               "imagePullPolicy": "IfNotPresent"}, "name": "containerdisk"}]
            },
            "status": {
                "activePods": {"3f4a": "node01"},
                "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null,
                                "lastTransitionTime": "2024-05-01T10:00:00Z"}],
                "currentCPUTopology": {"cores": 1, "sockets": 1, "threads": 1},
                "guestOSInfo": {"id": "fedora", "name": "Fedora Linux", "prettyName": "Fedora Linux 40",
                                "version": "40", "versionId": "40", "kernelRelease": "6.8.5"},
                "interfaces": [{"infoSource": "domain, guest-agent", "interfaceName": "eth0",
                                "ipAddress": "10.244.0.12", "ipAddresses": ["10.244.0.12"],
                                "mac": "02:a4:5d:00:00:01", "name": "default", "queueCount": 1,
                                "podInterfaceName": "eth0", "linkState": "up"}],
                "launcherContainerImageVersion": "quay.io/kubevirt/virt-launcher:v1.3.0",
                "machine": {"type": "pc-q35-rhel9.4.0"},
                "memory": {"guestAtBoot": "1Gi", "guestCurrent": "1Gi", "guestRequested": "1Gi"},
                "migrationMethod": "BlockMigration",
                "migrationTransport": "Unix",
                "nodeName": "node01",
                "phase": "Running",
                "phaseTransitionTimestamps": [{"phase": "Running", "phaseTransitionTimestamp": "2024-05-01T10:00:00Z"}],
                "qosClass": "Burstable",
                "runtimeUser": 107,
                "selinuxContext": "none",
                "VSOCKCID": 3,
                "virtualMachineRevisionName": "revision-start-vm-1",
                "volumeStatus": [{"name": "containerdisk", "target": "vda",
                                  "containerDiskVolume": {"checksum": 1234}}],
                "migrationState": {"completed": true, "sourceNode": "node01", "targetNode": "node02"}
            }
        });
        let d = ResourceType::of::<VirtualMachineInstance>().decode(&vmi, None).expect("valid VMI");
        assert!(d.unknown_fields.is_empty(), "unknown: {:?}", d.unknown_fields);
        // The only difference is the null lastProbeTime, which is omitted.
        let mut expected = without_type_meta(vmi);
        expected["status"]["conditions"][0].as_object_mut().expect("object").remove("lastProbeTime");
        assert_eq!(d.value, expected);
    }

    #[test]
    fn unknown_field_is_reported() {
        let mut vm = fedora_vm();
        vm["spec"]["template"]["spec"]["domain"]["foo"] = json!(1);
        vm["spec"]["template"]["spec"]["domain"]["cpu"]["bar"] = json!(1);
        let d = decode_vm(&vm).expect("still valid");
        let unknown: Vec<String> = d.unknown_fields.iter().map(|p| normalise(p)).collect();
        assert!(unknown.contains(&"spec.template.spec.domain.foo".to_string()), "{unknown:?}");
        assert!(unknown.contains(&"spec.template.spec.domain.cpu.bar".to_string()), "{unknown:?}");
        assert!(d.value["spec"]["template"]["spec"]["domain"].get("foo").is_none(), "pruned");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let errs = vm_errors(|s| s["domain"]["cpu"]["cores"] = json!("two"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.template.spec.domain.cpu.cores");
        assert!(errs[0].message.contains("invalid type"), "{}", errs[0].message);

        let errs = vm_errors(|s| s["volumes"][0]["containerDisk"]["image"] = json!(5));
        assert_eq!(errs[0].field, "spec.template.spec.volumes[0].containerDisk.image");
    }

    #[test]
    fn bad_quantity_is_a_type_error() {
        let errs = vm_errors(|s| s["domain"]["memory"]["guest"] = json!("12Q"));
        assert_eq!(errs[0].field, "spec.template.spec.domain.memory.guest");
        assert!(errs[0].message.contains("quantities must match the regular expression"), "{}", errs[0].message);
        assert!(errs[0].message.contains("512Mi"));

        let errs = vm_errors(|s| s["domain"]["resources"]["requests"]["memory"] = json!("lots"));
        assert_eq!(errs[0].field, "spec.template.spec.domain.resources.requests.memory");
    }

    #[test]
    fn bad_run_strategy_is_a_type_error() {
        let mut vm = fedora_vm();
        vm["spec"]["runStrategy"] = json!("Sometimes");
        let errs = decode_vm(&vm).expect_err("invalid");
        assert_eq!(errs[0].field, "spec.runStrategy");
        assert!(errs[0].message.contains("RerunOnFailure"), "{}", errs[0].message);
    }

    #[test]
    fn running_and_run_strategy_are_exclusive() {
        let mut vm = fedora_vm();
        vm["spec"]["running"] = json!(true);
        let errs = decode_vm(&vm).expect_err("invalid");
        assert_error(&errs, "spec.running", "mutually exclusive");

        vm["spec"].as_object_mut().expect("object").remove("runStrategy");
        assert!(decode_vm(&vm).is_ok());
    }

    #[test]
    fn template_is_required() {
        let vm = json!({"metadata": {"name": "x"}, "spec": {"runStrategy": "Halted"}});
        let errs = decode_vm(&vm).expect_err("invalid");
        assert_eq!(errs[0].field, "spec.template");
        assert_eq!(errs[0].reason, FieldErrorReason::Required);
    }

    #[test]
    fn effective_run_strategy() {
        let mut s = VirtualMachineSpec::default();
        assert_eq!(s.effective_run_strategy(), RunStrategy::Halted);
        s.running = Some(true);
        assert_eq!(s.effective_run_strategy(), RunStrategy::Always);
        s.running = Some(false);
        assert_eq!(s.effective_run_strategy(), RunStrategy::Halted);
        s.running = None;
        s.run_strategy = Some(RunStrategy::Manual);
        assert_eq!(s.effective_run_strategy(), RunStrategy::Manual);
    }

    #[test]
    fn disk_names_unique() {
        let errs = vm_errors(|s| {
            s["domain"]["devices"]["disks"][1]["name"] = json!("containerdisk");
        });
        assert_error(&errs, "spec.template.spec.domain.devices.disks[1].name", "Duplicate");
    }

    #[test]
    fn disk_needs_volume() {
        let errs = vm_errors(|s| s["domain"]["devices"]["disks"][0]["name"] = json!("rootdisk"));
        assert_error(&errs, "spec.template.spec.domain.devices.disks[0].name", "add a volume named \"rootdisk\"");
        assert_eq!(errs[0].reason, FieldErrorReason::NotFound);
    }

    #[test]
    fn disk_single_target() {
        let errs = vm_errors(|s| s["domain"]["devices"]["disks"][0]["cdrom"] = json!({}));
        assert_error(&errs, "spec.template.spec.domain.devices.disks[0]", "at most one of disk, lun or cdrom");
    }

    #[test]
    fn volume_names_unique_and_dns_labels() {
        let errs = vm_errors(|s| s["volumes"][1]["name"] = json!("containerdisk"));
        assert_error(&errs, "spec.template.spec.volumes[1].name", "Duplicate");

        let errs = vm_errors(|s| {
            s["volumes"][0]["name"] = json!("Root_Disk");
            s["domain"]["devices"]["disks"][0]["name"] = json!("Root_Disk");
        });
        assert_error(&errs, "spec.template.spec.volumes[0].name", "RFC 1123 label");
    }

    #[test]
    fn volume_exactly_one_source() {
        let errs = vm_errors(|s| s["volumes"][0] = json!({"name": "containerdisk"}));
        assert_error(&errs, "spec.template.spec.volumes[0]", "exactly one volume source");

        let errs = vm_errors(|s| s["volumes"][0]["emptyDisk"] = json!({"capacity": "1Gi"}));
        assert_error(&errs, "spec.template.spec.volumes[0]", "found containerDisk and emptyDisk");
    }

    #[test]
    fn volume_source_fields() {
        let errs = vm_errors(|s| s["volumes"][0]["containerDisk"] = json!({}));
        assert_error(&errs, "spec.template.spec.volumes[0].containerDisk.image", "container image");

        let errs = vm_errors(|s| s["volumes"][0] = json!({"name": "containerdisk", "emptyDisk": {"capacity": "-5"}}));
        assert_error(&errs, "spec.template.spec.volumes[0].emptyDisk.capacity", "greater than zero");

        let errs = vm_errors(|s| s["volumes"][0] = json!({"name": "containerdisk", "emptyDisk": {}}));
        assert_error(&errs, "spec.template.spec.volumes[0].emptyDisk.capacity", "size");

        let errs = vm_errors(|s| s["volumes"][0] = json!({"name": "containerdisk", "persistentVolumeClaim": {}}));
        assert_error(&errs, "spec.template.spec.volumes[0].persistentVolumeClaim.claimName", "Required");

        let errs = vm_errors(|s| {
            s["volumes"][0] =
                json!({"name": "containerdisk", "hostDisk": {"path": "/d.img", "type": "Disk", "capacity": "1Gi"}})
        });
        assert_error(&errs, "spec.template.spec.volumes[0].hostDisk.capacity", "DiskOrCreate");

        let errs = vm_errors(|s| s["volumes"][0] = json!({"name": "containerdisk", "secret": {}}));
        assert_error(&errs, "spec.template.spec.volumes[0].secret.secretName", "Required");
    }

    #[test]
    fn cloud_init_sources() {
        let errs = vm_errors(|s| s["volumes"][1]["cloudInitNoCloud"]["userDataBase64"] = json!("I2Nsb3VkLWNvbmZpZw=="));
        assert_error(&errs, "spec.template.spec.volumes[1].cloudInitNoCloud", "mutually exclusive");

        let errs = vm_errors(|s| s["volumes"][1]["cloudInitNoCloud"] = json!({"userDataBase64": "not base64!"}));
        assert_error(&errs, "spec.template.spec.volumes[1].cloudInitNoCloud.userDataBase64", "base64");

        let errs = vm_errors(|s| s["volumes"][1]["cloudInitNoCloud"] = json!({}));
        assert_error(&errs, "spec.template.spec.volumes[1].cloudInitNoCloud", "set user data");

        let errs = vm_errors(|s| s["volumes"][1]["cloudInitConfigDrive"] = json!({"userData": "x".repeat(3000)}));
        assert!(errs.iter().any(|e| e.reason == FieldErrorReason::TooLong), "{errs:?}");

        let errs = vm_errors(|s| {
            s["volumes"][1]["cloudInitNoCloud"] =
                json!({"secretRef": {"name": "userdata"}, "networkDataSecretRef": {"name": "netdata"}})
        });
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn interface_names_unique_and_match_a_network() {
        let errs = vm_errors(|s| {
            let iface = s["domain"]["devices"]["interfaces"][0].clone();
            s["domain"]["devices"]["interfaces"].as_array_mut().expect("array").push(iface);
            s["domain"]["devices"]["interfaces"][1]["bootOrder"] = json!(9);
        });
        assert_error(&errs, "spec.template.spec.domain.devices.interfaces[1].name", "Duplicate");

        let errs = vm_errors(|s| s["domain"]["devices"]["interfaces"][0]["name"] = json!("eth1"));
        assert_error(&errs, "spec.template.spec.domain.devices.interfaces[0].name", "add a network named \"eth1\"");
        assert_error(&errs, "spec.template.spec.networks[0].name", "no interface");
    }

    #[test]
    fn at_most_one_pod_network() {
        let errs = vm_errors(|s| {
            s["networks"].as_array_mut().expect("array").push(json!({"name": "second", "pod": {}}));
            s["domain"]["devices"]["interfaces"]
                .as_array_mut()
                .expect("array")
                .push(json!({"name": "second", "bridge": {}}));
        });
        assert_error(&errs, "spec.template.spec.networks[1].pod", "at most one network");
    }

    #[test]
    fn network_types() {
        let errs = vm_errors(|s| s["networks"][0] = json!({"name": "default"}));
        assert_error(&errs, "spec.template.spec.networks[0]", "network type");

        let errs = vm_errors(|s| {
            s["networks"][0] = json!({"name": "default", "multus": {"networkName": "vlan10"}});
        });
        assert_error(&errs, "spec.template.spec.domain.devices.interfaces[0].masquerade", "pod network");

        let errs = vm_errors(|s| {
            s["networks"][0] = json!({"name": "default", "multus": {"networkName": "vlan10"}});
            s["domain"]["devices"]["interfaces"][0] = json!({"name": "default", "bridge": {}});
        });
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn disk_bus() {
        let errs = vm_errors(|s| s["domain"]["devices"]["disks"][0]["disk"]["bus"] = json!("ide"));
        assert_error(&errs, "spec.template.spec.domain.devices.disks[0].disk.bus", "supported values");
        assert_eq!(errs[0].reason, FieldErrorReason::Unsupported);

        for bus in ["virtio", "sata", "scsi", "usb"] {
            assert!(vm_errors(|s| s["domain"]["devices"]["disks"][0]["disk"]["bus"] = json!(bus)).is_empty(), "{bus}");
        }
    }

    #[test]
    fn cdrom_bus_not_virtio() {
        let errs = vm_errors(|s| s["domain"]["devices"]["disks"][2]["cdrom"]["bus"] = json!("virtio"));
        assert_error(&errs, "spec.template.spec.domain.devices.disks[2].cdrom.bus", "use sata or scsi");
    }

    #[test]
    fn memory_quantities_positive() {
        let errs = vm_errors(|s| s["domain"]["memory"]["guest"] = json!("-5"));
        assert_error(&errs, "spec.template.spec.domain.memory.guest", "greater than zero");

        let errs = vm_errors(|s| s["domain"]["resources"]["requests"]["memory"] = json!("0"));
        assert_error(&errs, "spec.template.spec.domain.resources.requests.memory", "greater than zero");

        let errs = vm_errors(|s| s["domain"]["resources"]["requests"]["memory"] = json!(512));
        assert_error(&errs, "spec.template.spec.domain.resources.requests.memory", "at least 1M");

        let errs = vm_errors(|s| s["domain"]["memory"]["guest"] = json!("4Gi"));
        assert_error(&errs, "spec.template.spec.domain.memory.guest", "memory limit");

        let errs = vm_errors(|s| s["domain"]["resources"]["requests"]["memory"] = json!("3Gi"));
        assert_error(&errs, "spec.template.spec.domain.resources.requests.memory", "less than or equal to the limit");

        let errs = vm_errors(|s| s["domain"]["memory"]["hugepages"] = json!({"pageSize": "huge"}));
        assert_error(&errs, "spec.template.spec.domain.memory.hugepages.pageSize", "quantities must match");
    }

    #[test]
    fn cpu_topology_at_least_one() {
        for field in ["cores", "sockets", "threads"] {
            let errs = vm_errors(|s| s["domain"]["cpu"][field] = json!(0));
            assert_error(&errs, &format!("spec.template.spec.domain.cpu.{field}"), "at least 1");
        }
        let errs = vm_errors(|s| s["domain"]["cpu"]["cores"] = json!(-1));
        assert_eq!(errs[0].field, "spec.template.spec.domain.cpu.cores");
    }

    #[test]
    fn mac_address() {
        for bad in ["02:00:00:00:00", "zz:00:00:00:00:00", "0200.0000.0001", "01:00:5e:00:00:01"] {
            let errs = vm_errors(|s| s["domain"]["devices"]["interfaces"][0]["macAddress"] = json!(bad));
            assert_error(&errs, "spec.template.spec.domain.devices.interfaces[0].macAddress", "02:00:00:aa:bb:cc");
        }
        for good in ["02:00:00:aa:bb:cc", "52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef"] {
            let errs = vm_errors(|s| s["domain"]["devices"]["interfaces"][0]["macAddress"] = json!(good));
            assert!(errs.is_empty(), "{good}: {errs:?}");
        }
    }

    #[test]
    fn termination_grace_period_not_negative() {
        let errs = vm_errors(|s| s["terminationGracePeriodSeconds"] = json!(-1));
        assert_error(&errs, "spec.template.spec.terminationGracePeriodSeconds", "greater than or equal to 0");
        assert!(vm_errors(|s| s["terminationGracePeriodSeconds"] = json!(0)).is_empty());
    }

    #[test]
    fn boot_order_unique() {
        let errs = vm_errors(|s| s["domain"]["devices"]["disks"][0]["bootOrder"] = json!(3));
        assert_error(&errs, "spec.template.spec.domain.devices.interfaces[0].bootOrder", "already used");
        let errs = vm_errors(|s| s["domain"]["devices"]["disks"][0]["bootOrder"] = json!(0));
        assert_error(&errs, "spec.template.spec.domain.devices.disks[0].bootOrder", "1 or greater");
    }

    #[test]
    fn misc_vmi_spec_rules() {
        let errs = vm_errors(|s| s["hostname"] = json!("My_Host"));
        assert_error(&errs, "spec.template.spec.hostname", "RFC 1123");

        let errs = vm_errors(|s| s["domain"]["firmware"]["bootloader"]["bios"] = json!({}));
        assert_error(&errs, "spec.template.spec.domain.firmware.bootloader", "mutually exclusive");

        let errs = vm_errors(|s| s["domain"]["devices"]["interfaces"][0]["model"] = json!("virtio-net"));
        assert_error(&errs, "spec.template.spec.domain.devices.interfaces[0].model", "e1000");

        let errs = vm_errors(|s| s["domain"]["devices"]["interfaces"][0]["ports"][0]["port"] = json!(70000));
        assert_error(&errs, "spec.template.spec.domain.devices.interfaces[0].ports[0].port", "65535");

        let errs = vm_errors(|s| s["tolerations"][0]["operator"] = json!("Exists"));
        assert_error(&errs, "spec.template.spec.tolerations[0].value", "Exists");

        let errs = vm_errors(|s| s["evictionStrategy"] = json!("Sometimes"));
        assert_eq!(errs[0].field, "spec.template.spec.evictionStrategy");
    }

    #[test]
    fn data_volume_templates_are_checked() {
        let mut vm = fedora_vm();
        vm["spec"]["dataVolumeTemplates"][0]["metadata"]["name"] = json!("unused");
        let errs = decode_vm(&vm).expect_err("invalid");
        assert_error(&errs, "spec.dataVolumeTemplates[0].metadata.name", "is not used");

        let mut vm = fedora_vm();
        vm["spec"]["dataVolumeTemplates"][0]["spec"].as_object_mut().expect("object").remove("storage");
        let errs = decode_vm(&vm).expect_err("invalid");
        assert_error(&errs, "spec.dataVolumeTemplates[0].spec", "spec.storage");
    }

    #[test]
    fn instancetype_needs_a_name() {
        let mut vm = fedora_vm();
        vm["spec"]["instancetype"] = json!({"kind": "VirtualMachineInstancetype"});
        let errs = decode_vm(&vm).expect_err("invalid");
        assert_error(&errs, "spec.instancetype.name", "inferFromVolume");

        vm["spec"]["instancetype"] = json!({"inferFromVolume": "containerdisk"});
        assert!(decode_vm(&vm).is_ok());
    }

    fn minimal_vmi() -> Value {
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "vmi", "namespace": "default"},
            "spec": {
                "domain": {
                    "devices": {"disks": [{"name": "root", "disk": {}}]},
                    "resources": {"requests": {"memory": "128Mi"}}
                },
                "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/kubevirt/cirros-container-disk-demo"}}]
            }
        })
    }

    #[test]
    fn vmi_spec_is_immutable() {
        let rt = ResourceType::of::<VirtualMachineInstance>();
        let old = minimal_vmi();
        assert!(rt.decode(&old, None).is_ok());

        let mut status_only = old.clone();
        status_only["status"] = json!({"phase": "Running"});
        assert!(rt.decode(&status_only, Some(&old)).is_ok(), "status and metadata may change");

        let mut new = old.clone();
        new["spec"]["domain"]["resources"]["requests"]["memory"] = json!("256Mi");
        let errs = rt.decode(&new, Some(&old)).expect_err("immutable");
        assert_eq!(errs[0].field, "spec");
        assert_eq!(errs[0].reason, FieldErrorReason::Forbidden);
        assert!(errs[0].message.contains("change the VirtualMachine instead"));
    }

    #[test]
    fn hotplugged_volumes_may_come_and_go_on_a_vmi() {
        let rt = ResourceType::of::<VirtualMachineInstance>();
        let old = minimal_vmi();
        let mut added = old.clone();
        added["spec"]["domain"]["devices"]["disks"]
            .as_array_mut()
            .expect("disks")
            .push(json!({"name": "data", "disk": {"bus": "scsi"}}));
        added["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes")
            .push(json!({"name": "data", "persistentVolumeClaim": {"claimName": "vol1", "hotpluggable": true}}));
        assert!(rt.decode(&added, Some(&old)).is_ok(), "added");
        assert!(rt.decode(&old, Some(&added)).is_ok(), "removed");
        // Not hotpluggable: the spec is immutable.
        let mut cold = added.clone();
        cold["spec"]["volumes"][1]["persistentVolumeClaim"]["hotpluggable"] = json!(false);
        let errs = rt.decode(&cold, Some(&old)).expect_err("immutable");
        assert_eq!(errs[0].field, "spec");
        // A hotplugged volume without its disk is still checked.
        let mut broken = added.clone();
        broken["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"] = json!("");
        let errs = rt.decode(&broken, Some(&old)).expect_err("invalid");
        assert!(errs.iter().any(|e| e.field.contains("claimName")), "{errs:?}");
    }

    #[test]
    fn vmi_needs_memory() {
        let rt = ResourceType::of::<VirtualMachineInstance>();
        let mut vmi = minimal_vmi();
        vmi["spec"]["domain"].as_object_mut().expect("object").remove("resources");
        let errs = rt.decode(&vmi, None).expect_err("no memory");
        assert_error(&errs, "spec.domain.memory.guest", "no memory requested");
    }

    #[test]
    fn vmi_spec_paths_start_at_spec() {
        let rt = ResourceType::of::<VirtualMachineInstance>();
        let mut vmi = minimal_vmi();
        vmi["spec"]["domain"]["devices"]["disks"][0]["name"] = json!("other");
        let errs = rt.decode(&vmi, None).expect_err("invalid");
        assert_error(&errs, "spec.domain.devices.disks[0].name", "spec.volumes");
    }

    #[test]
    fn migration_needs_vmi_name() {
        let rt = ResourceType::of::<VirtualMachineInstanceMigration>();
        let ok = json!({"metadata": {"name": "m", "namespace": "default"}, "spec": {"vmiName": "testvm"}});
        let d = rt.decode(&ok, None).expect("valid");
        assert!(d.unknown_fields.is_empty());

        let errs = rt.decode(&json!({"metadata": {"name": "m"}, "spec": {}}), None).expect_err("missing");
        assert_eq!(errs[0].field, "spec.vmiName");
        assert_eq!(errs[0].reason, FieldErrorReason::Required);

        let errs =
            rt.decode(&json!({"metadata": {"name": "m"}, "spec": {"vmiName": "Bad_Name"}}), None).expect_err("bad");
        assert_error(&errs, "spec.vmiName", "RFC 1123 subdomain");

        let changed = json!({"metadata": {"name": "m"}, "spec": {"vmiName": "other"}});
        let errs = rt.decode(&changed, Some(&ok)).expect_err("immutable");
        assert_eq!(errs[0].field, "spec");
    }

    #[test]
    fn migration_status_decodes() {
        let rt = ResourceType::of::<VirtualMachineInstanceMigration>();
        let m = json!({
            "metadata": {"name": "m", "namespace": "default"},
            "spec": {"vmiName": "testvm"},
            "status": {
                "phase": "Succeeded",
                "conditions": [{"type": "Succeeded", "status": "True"}],
                "phaseTransitionTimestamps": [{"phase": "Pending", "phaseTransitionTimestamp": "2024-05-01T10:00:00Z"}],
                "migrationState": {"completed": true, "mode": "PreCopy"}
            }
        });
        let d = rt.decode(&m, None).expect("valid");
        assert!(d.unknown_fields.is_empty(), "{:?}", d.unknown_fields);
        assert_eq!(d.value, m);
    }

    #[test]
    fn kind_metadata() {
        let vm = ResourceType::of::<VirtualMachine>();
        assert_eq!(vm.api_version(), "kubevirt.io/v1");
        assert_eq!(vm.plural, "virtualmachines");
        assert_eq!(vm.short_names, &["vm", "vms"]);
        assert_eq!(vm.columns[0].path, ".status.printableStatus");
        let vmi = ResourceType::of::<VirtualMachineInstance>();
        assert_eq!(vmi.short_names, &["vmi", "vmis"]);
        assert_eq!(vmi.columns[1].path, ".status.interfaces[0].ipAddress");
        let vmim = ResourceType::of::<VirtualMachineInstanceMigration>();
        assert_eq!(vmim.short_names, &["vmim"]);
        assert_eq!(vmim.columns[1].path, ".spec.vmiName");
    }

    #[test]
    fn schema_has_descriptions_and_loose_objects() {
        let mut g = SchemaGenerator::default();
        let _ = ResourceType::of::<VirtualMachine>().schema(&mut g);
        let defs = serde_json::to_value(g.definitions()).expect("defs");
        let cpu = &defs["Cpu"]["properties"]["cores"];
        assert!(cpu["description"].as_str().is_some_and(|d| d.contains("at least 1")), "{cpu}");
        let probe = &defs["VirtualMachineInstanceSpec"]["properties"]["livenessProbe"];
        assert_eq!(probe["x-kubernetes-preserve-unknown-fields"], json!(true), "{probe}");
        assert!(probe["description"].is_string(), "{probe}");
        let node_affinity = &defs["NodeAffinity"]["properties"];
        assert!(node_affinity["requiredDuringSchedulingIgnoredDuringExecution"].is_object(), "{node_affinity}");
        let guest = &defs["Memory"]["properties"]["guest"];
        assert!(guest.to_string().contains("Quantity"), "{guest}");
    }
}
