//! The VirtualMachine controller: decides from a VM's run strategy, its
//! pending start/stop requests and its VirtualMachineInstance whether an
//! instance should exist; creates and deletes the VMI accordingly; and
//! writes the VM's status. KubeVirt's `virt-controller` VM loop, with the
//! same field names, reasons and printable statuses.
//!
//! Each reconcile reads the VM and its VMI (same namespace and name) fresh,
//! takes at most one action (create, delete, adopt, change the run
//! strategy), reads the VMI again if it acted, then writes the status. All
//! memory between passes is in the VM's status (`stateChangeRequests`,
//! `startFailure`, conditions), so the controller can stop at any moment.
//!
//! ```text
//!                   create VMI                VMI Running              VMI Paused=True
//!   Stopped ───────────────────▶ Starting ───────────────▶ Running ◀──────────────────▶ Paused
//!    ▲   ▲                          │  PodScheduled=False:           │
//!    │   │                          │  ErrorUnschedulable            │ stop request, Halted,
//!    │   │ VMI gone                 ▼                                │ or VMI finished
//!    │   └────────── Stopping ◀── delete VMI ◀───────────────────────┘
//!    │ backoff over: start again
//!  CrashLoopBackOff ◀── VMI crashed again soon after it started (Always, RerunOnFailure)
//!  Terminating: the VM itself is being deleted (its VMI is deleted, never created)
//! ```
//!
//! Run strategies (`spec.runStrategy`; `running: true` is Always, `false`
//! or neither set is Halted):
//!
//! | strategy       | no VMI                          | VMI finished (Succeeded/Failed)            |
//! |----------------|---------------------------------|--------------------------------------------|
//! | Always         | create (after crash backoff)    | delete, then create again                  |
//! | RerunOnFailure | create on a Start request (one  | delete; after Failed also queue a Start    |
//! |                | is queued when the VM is new)   | request, so it runs again                  |
//! | Manual         | create on a Start request       | kept until a Stop request for it           |
//! | Once           | create                          | kept; never run again                      |
//! | Halted         | a Start request switches the VM | deleted (as is a running one)              |
//! |                | to Always (KubeVirt's start)    |                                            |
//!
//! `status.stateChangeRequests` (written by the `start`, `stop` and
//! `restart` subresources) are taken one at a time, in order: a `Stop`
//! names the VMI uid it stops and is dropped once that VMI is gone; a
//! `Start` is dropped once a VMI exists. A restart is `[Stop(uid), Start]`.
//! A Start with `data: {paused: "true"}` creates the VMI with
//! `startStrategy: Paused`.
//!
//! Crash-loop backoff: a VMI that ends Failed without running, or less
//! than [`Config::crash_window`] after it started running (or Succeeded
//! without ever running), counts as a consecutive start failure in
//! `status.startFailure`; one that ran longer resets the count. The first
//! failure is restarted at once; from the second on the next start waits
//! [`Config::crash_loop_base`], doubling up to [`Config::crash_loop_max`]
//! (10 s, 20 s, 40 s, ... 5 min), and the VM shows `CrashLoopBackOff`.
//! Endings caused by a deletion neither count nor reset.
//!
//! A VM being deleted gets `Terminating`; its VMI is deleted (unless the
//! VM is deleted with the orphan policy) and none is created. Because the
//! VMI carries a controller owner reference, the garbage collector removes
//! it as well once the VM is gone.
//!
//! Disks: the claims of `spec.dataVolumeTemplates` and of Harvester's
//! `harvesterhci.io/volumeClaimTemplates` annotation are created, and the
//! VMI waits until every claim its volumes name is Bound (`Provisioning`,
//! condition `DataVolumesReady`); see [`crate::vm_claims`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, TimeDelta, Utc};
use serde_json::json;
use sheaf_client::{Api, ClientError, Gvr, Typed};
use sheaf_types::kubevirt::{
    RunStrategy, StartFailure, StateChangeRequest, VirtualMachine, VirtualMachineInstance, VirtualMachineStatus,
};
use sheaf_types::meta::{Condition, OwnerReference};
use sheaf_types::{ObjectMeta, Time};
use uuid::Uuid;

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Controller, ObjectKey, Reconciler};
use crate::vm_claims::ClaimsState;
use sheaf_types::claim::PersistentVolumeClaim;

/// `source.component` of the controller's Events.
pub const COMPONENT: &str = "virtualmachine-controller";
/// Annotation on a VMI: the VM generation it was created from.
pub const GENERATION_ANNOTATION: &str = "kubevirt.io/vm-generation";
/// Key of a Start request's data asking for a paused start.
pub const START_PAUSED_KEY: &str = "paused";
/// Every VM is reconciled at least this often.
pub const RESYNC: Duration = Duration::from_secs(5 * 60);

const START: &str = "Start";
const STOP: &str = "Stop";
const FAILED: &str = "Failed";
const SUCCEEDED: &str = "Succeeded";
const RUNNING: &str = "Running";

// VM condition types and reasons.
const READY: &str = "Ready";
const FAILURE: &str = "Failure";
const INITIALIZED: &str = "Initialized";
const RESTART_REQUIRED: &str = "RestartRequired";
const PAUSED: &str = "Paused";
const POD_SCHEDULED: &str = "PodScheduled";
const SYNCHRONIZED: &str = "Synchronized";
const DATA_VOLUMES_READY: &str = "DataVolumesReady";
/// Conditions the VM controller owns; the others are copied from the VMI.
const VM_OWNED_CONDITIONS: [&str; 5] = [READY, FAILURE, INITIALIZED, RESTART_REQUIRED, DATA_VOLUMES_READY];

// Event and Failure-condition reasons, as KubeVirt's.
const SUCCESSFUL_CREATE: &str = "SuccessfulCreate";
const FAILED_CREATE: &str = "FailedCreate";
const SUCCESSFUL_DELETE: &str = "SuccessfulDelete";
const FAILED_DELETE: &str = "FailedDelete";
const VMI_FAILED: &str = "FailedStart";

/// KubeVirt's namespace for stable firmware UUIDs (a name-based UUID of
/// the VM name), so that a guest sees the same SMBIOS UUID on every start
/// and as it would under KubeVirt.
const FIRMWARE_UUID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1a24a1_4061_4607_8bf4_a3963d0c5895);

/// Tuning of the VM controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// Wait before restarting after the second consecutive quick failure;
    /// doubles with each further one.
    pub crash_loop_base: Duration,
    /// Longest wait between restarts of a crash-looping VM.
    pub crash_loop_max: Duration,
    /// A VMI that fails within this time of starting to run has crashed.
    pub crash_window: Duration,
    /// VMs reconciled at the same time.
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            crash_loop_base: Duration::from_secs(10),
            crash_loop_max: Duration::from_secs(5 * 60),
            crash_window: Duration::from_secs(60),
            workers: 4,
        }
    }
}

/// Why a reconcile of a VM failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot read VirtualMachine {key}: {source}")]
    ReadVm {
        key: ObjectKey,
        #[source]
        source: ClientError,
    },
    #[error("cannot read VirtualMachineInstance {key}: {source}")]
    ReadVmi {
        key: ObjectKey,
        #[source]
        source: ClientError,
    },
    #[error("cannot adopt the orphaned VirtualMachineInstance {key}: {source}")]
    Adopt {
        key: ObjectKey,
        #[source]
        source: ClientError,
    },
    #[error("cannot write the status of VirtualMachine {key}: {source}")]
    WriteStatus {
        key: ObjectKey,
        #[source]
        source: ClientError,
    },
    #[error("cannot make or read the claims of VirtualMachine {key}: {source}")]
    Claims {
        key: ObjectKey,
        #[source]
        source: ClientError,
    },
    /// An action failed; also reported in the VM's `Failure` condition.
    #[error("VirtualMachine {key}: {reason}: {message}")]
    Sync { key: ObjectKey, reason: &'static str, message: String },
}

/// The VM controller's reconciler.
pub struct VmController {
    api: Arc<dyn Api>,
    events: EventRecorder,
    config: Config,
}

/// Runs the VM controller until the future is dropped.
pub async fn run(api: Arc<dyn Api>, config: Config) {
    let workers = config.workers;
    let reconciler = Arc::new(VmController::new(api.clone(), config));
    Controller::new("virtualmachine", api, Gvr::of::<VirtualMachine>())
        .watches(Gvr::of::<VirtualMachineInstance>(), |_, vmi, _| owner_vm_key(vmi).into_iter().collect())
        .watches(Gvr::of::<PersistentVolumeClaim>(), |_, pvc, store| vms_using_claim(pvc, store))
        .workers(workers)
        .resync_every(RESYNC)
        .run(reconciler)
        .await
}

/// The VM a VMI belongs to: its controller if that is a VirtualMachine, the
/// VM of the same name if it has no controller (which may adopt it).
fn owner_vm_key(vmi: &serde_json::Value) -> Option<ObjectKey> {
    let key = ObjectKey::of(vmi)?;
    let refs = vmi.pointer("/metadata/ownerReferences").and_then(serde_json::Value::as_array);
    let controller = refs.and_then(|r| r.iter().find(|o| o.get("controller") == Some(&json!(true))));
    match controller {
        None => Some(key),
        Some(o) if o.get("kind").and_then(serde_json::Value::as_str) == Some("VirtualMachine") => {
            let name = o.get("name").and_then(serde_json::Value::as_str)?;
            Some(ObjectKey::new(key.namespace(), name))
        }
        Some(_) => None,
    }
}

/// The VMs a claim's change concerns: those whose volumes name it.
fn vms_using_claim(pvc: &serde_json::Value, store: &crate::runtime::Store) -> Vec<ObjectKey> {
    let Some(key) = ObjectKey::of(pvc) else { return Vec::new() };
    store.keys_where(|vm| {
        let ns = vm.pointer("/metadata/namespace").and_then(serde_json::Value::as_str);
        let vols = vm.pointer("/spec/template/spec/volumes").and_then(serde_json::Value::as_array);
        ns == key.namespace()
            && vols.into_iter().flatten().any(|v| {
                [v.pointer("/persistentVolumeClaim/claimName"), v.pointer("/dataVolume/name")]
                    .iter()
                    .any(|n| n.and_then(serde_json::Value::as_str) == Some(key.name.as_str()))
            })
    })
}

/// An action that failed in this pass.
#[derive(Debug)]
struct SyncFailure {
    reason: &'static str,
    message: String,
}

/// What one reconcile pass did.
struct Pass {
    now: Time,
    /// Something was created, deleted or patched: read the VMI again.
    acted: bool,
    /// The VM's spec was changed: its new version brings another pass.
    spec_changed: bool,
    failure: Option<SyncFailure>,
    /// What the VM's claims wait for: no instance is created meanwhile.
    claims: ClaimsState,
}

enum Found {
    Missing,
    Owned(Box<VirtualMachineInstance>),
    /// A VMI of that name controlled by something else.
    Foreign(String),
}

fn now() -> Time {
    Time(Utc::now().trunc_subsecs(0))
}

#[async_trait::async_trait]
impl Reconciler for VmController {
    type Error = VmError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, VmError> {
        let vms = Typed::<VirtualMachine>::new(self.api.as_ref());
        let Some(vm) =
            vms.get(key.namespace(), &key.name).await.map_err(|source| VmError::ReadVm { key: key.clone(), source })?
        else {
            // Gone: its VMI is the garbage collector's.
            return Ok(Action::Done);
        };
        let mut pass =
            Pass { now: now(), acted: false, spec_changed: false, failure: None, claims: Default::default() };
        if vm.metadata.deletion_timestamp.is_none() {
            pass.claims = crate::vm_claims::sync(self.api.as_ref(), &vm)
                .await
                .map_err(|source| VmError::Claims { key: key.clone(), source })?;
            for p in &pass.claims.problems {
                self.events.record(&reference_to(&vm), EventType::Warning, "DataVolumeError", p.clone()).await;
            }
        }
        let strategy = vm.spec.effective_run_strategy();
        let vmi = match self.find_vmi(key, &vm).await? {
            Found::Missing => None,
            Found::Owned(v) => Some(*v),
            Found::Foreign(message) => {
                pass.failure = Some(SyncFailure { reason: FAILED_CREATE, message });
                None
            }
        };

        let mut status = vm.status.clone().unwrap_or_default();
        initialize(&mut status, strategy);
        if let Some(why) = sync_start_failure(&mut status, vmi.as_ref(), strategy, pass.now, &self.config) {
            // Why it failed is on the instance, which is about to go.
            self.events.record(&reference_to(&vm), EventType::Warning, VMI_FAILED, why).await;
        }

        let mut wait = None;
        if pass.failure.is_none() {
            if vm.metadata.deletion_timestamp.is_some() {
                let orphaning = vm.metadata.finalizers.iter().any(|f| f == "orphan");
                if let (Some(v), false) = (&vmi, orphaning) {
                    self.stop(&vm, v, &mut pass).await;
                }
            } else {
                wait = self.start_stop(&vm, vmi.as_ref(), strategy, &mut status, &mut pass).await;
                if let Some(v) = vmi.as_ref().filter(|_| !pass.acted) {
                    self.bump_generation(key, &vm, v, &mut pass).await;
                }
            }
        }
        if pass.spec_changed {
            return Ok(Action::Done);
        }
        let vmi = if pass.acted {
            match self.find_vmi(key, &vm).await? {
                Found::Owned(v) => Some(*v),
                Found::Missing | Found::Foreign(_) => None,
            }
        } else {
            vmi
        };

        status.created = vmi.is_some().then_some(true);
        status.ready = vmi.as_ref().filter(|v| has_condition(v, READY, "True")).map(|_| true);
        trim_first_request(&mut status, vmi.as_ref());
        sync_conditions(&mut status, vmi.as_ref(), pass.failure.as_ref(), pass.now);
        sync_claims_condition(&mut status, &vm.status, &pass.claims, pass.now);
        status.printable_status = Some(printable_status(&vm, vmi.as_ref(), &status, strategy, pass.now).to_string());
        status.run_strategy = Some(strategy.as_str().to_string());
        if let Some(g) = vmi.as_ref().and_then(created_from_generation) {
            status.observed_generation = Some(g);
            status.desired_generation = vm.metadata.generation;
        }

        if vm.status.as_ref() != Some(&status) {
            let mut updated = vm.clone();
            updated.status = Some(status);
            match vms.update_status(&updated).await {
                Ok(_) => {}
                // Someone (a start/stop request) wrote in between: look again.
                Err(e) if e.is_conflict() => return Ok(Action::RequeueAfter(Duration::ZERO)),
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(source) => return Err(VmError::WriteStatus { key: key.clone(), source }),
            }
        }
        if let Some(f) = pass.failure {
            return Err(VmError::Sync { key: key.clone(), reason: f.reason, message: f.message });
        }
        Ok(wait.map_or(Action::Done, Action::RequeueAfter))
    }
}

impl VmController {
    pub fn new(api: Arc<dyn Api>, config: Config) -> Self {
        VmController { events: EventRecorder::new(api.clone(), COMPONENT), api, config }
    }

    /// The VMI of the VM, adopting an orphan of the same name as KubeVirt
    /// does.
    async fn find_vmi(&self, key: &ObjectKey, vm: &VirtualMachine) -> Result<Found, VmError> {
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        let Some(vmi) = vmis
            .get(key.namespace(), &key.name)
            .await
            .map_err(|source| VmError::ReadVmi { key: key.clone(), source })?
        else {
            return Ok(Found::Missing);
        };
        let vm_uid = vm.metadata.uid.as_deref().unwrap_or_default();
        match vmi.metadata.owner_references.iter().find(|r| r.controller == Some(true)) {
            Some(r) if r.uid == vm_uid => Ok(Found::Owned(Box::new(vmi))),
            Some(r) => Ok(Found::Foreign(format!(
                "VirtualMachineInstance {key} is controlled by {} {} (uid {}), not by this VirtualMachine; \
                 it is left alone, and the VirtualMachine starts once it is gone",
                r.kind, r.name, r.uid
            ))),
            None if vm.metadata.deletion_timestamp.is_some() => Ok(Found::Missing),
            None => {
                let mut refs = vmi.metadata.owner_references.clone();
                refs.push(owner_reference(vm));
                let patch = json!({"metadata": {
                    "ownerReferences": refs,
                    "resourceVersion": vmi.metadata.resource_version,
                }});
                let adopted = vmis
                    .merge_patch(key.namespace(), &key.name, patch, false)
                    .await
                    .map_err(|source| VmError::Adopt { key: key.clone(), source })?;
                tracing::info!(vm = %key, "adopted an orphaned VirtualMachineInstance");
                Ok(Found::Owned(Box::new(adopted)))
            }
        }
    }

    /// Applies the run strategy and the first state change request. Returns
    /// how long a start is held back by crash-loop backoff.
    async fn start_stop(
        &self,
        vm: &VirtualMachine,
        vmi: Option<&VirtualMachineInstance>,
        strategy: RunStrategy,
        status: &mut VirtualMachineStatus,
        pass: &mut Pass,
    ) -> Option<Duration> {
        let first = status.state_change_requests.first().cloned();
        let start_requested = first.as_ref().is_some_and(|r| r.action == START);
        let stop_requested = |v: &VirtualMachineInstance| {
            first.as_ref().is_some_and(|r| r.action == STOP && r.uid.is_some() && r.uid == v.metadata.uid)
        };
        let start_paused = first
            .as_ref()
            .is_some_and(|r| r.action == START && r.data.get(START_PAUSED_KEY).is_some_and(|v| v == "true"));
        match (strategy, vmi) {
            (RunStrategy::Always, Some(v)) => {
                if stop_requested(v) || is_final(v) {
                    self.stop(vm, v, pass).await;
                }
                None
            }
            (RunStrategy::Always, None) => self.start_after_backoff(vm, status, start_paused, pass).await,
            (RunStrategy::RerunOnFailure, Some(v)) => {
                let force_stop = stop_requested(v);
                let failed = phase(v) == FAILED;
                if v.metadata.deletion_timestamp.is_none() && (force_stop || is_final(v)) {
                    self.stop(vm, v, pass).await;
                    if failed && !force_stop && !start_requested && pass.failure.is_none() {
                        status.state_change_requests.insert(0, start_request());
                    }
                }
                None
            }
            (RunStrategy::RerunOnFailure, None) if start_requested => {
                self.start_after_backoff(vm, status, start_paused, pass).await
            }
            (RunStrategy::Manual, Some(v)) => {
                if stop_requested(v) {
                    self.stop(vm, v, pass).await;
                }
                None
            }
            (RunStrategy::Manual, None) if start_requested => {
                self.start(vm, start_paused, pass).await;
                None
            }
            (RunStrategy::Halted, Some(v)) => {
                self.stop(vm, v, pass).await;
                None
            }
            (RunStrategy::Halted, None) if start_requested => {
                self.start_halted(vm, pass).await;
                None
            }
            (RunStrategy::Once, None) => {
                self.start(vm, start_paused, pass).await;
                None
            }
            // Nothing to do: waiting for a request, or a VMI that stays
            // (Once), or a migration target Sheaf does not receive yet
            // (WaitAsReceiver).
            _ => None,
        }
    }

    async fn start_after_backoff(
        &self,
        vm: &VirtualMachine,
        status: &VirtualMachineStatus,
        paused: bool,
        pass: &mut Pass,
    ) -> Option<Duration> {
        let left = backoff_left(status, pass.now);
        if !left.is_zero() {
            tracing::info!(
                vm = %ObjectKey::new(vm.metadata.namespace.as_deref(), name_of(vm)),
                wait = ?left,
                "start held back by crash-loop backoff"
            );
            return Some(left);
        }
        self.start(vm, paused, pass).await;
        None
    }

    async fn start(&self, vm: &VirtualMachine, paused: bool, pass: &mut Pass) {
        if !pass.claims.ready() {
            // The claims' changes bring the pass that starts it.
            return;
        }
        let vmi = vmi_from_vm(vm, paused);
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        let involved = reference_to(vm);
        match vmis.create(&vmi).await {
            Ok(created) => {
                pass.acted = true;
                let name = created.metadata.name.unwrap_or_default();
                self.events
                    .record(
                        &involved,
                        EventType::Normal,
                        SUCCESSFUL_CREATE,
                        format!("Started the virtual machine by creating the new virtual machine instance {name}"),
                    )
                    .await;
            }
            // Created by an earlier pass whose read raced: the next pass sees it.
            Err(e) if e.is_already_exists() => pass.acted = true,
            Err(e) => {
                self.events
                    .record(
                        &involved,
                        EventType::Warning,
                        FAILED_CREATE,
                        format!("Error creating virtual machine instance: {}", e.message),
                    )
                    .await;
                pass.failure =
                    Some(SyncFailure { reason: FAILED_CREATE, message: format!("Failure while starting VMI: {e}") });
            }
        }
    }

    async fn stop(&self, vm: &VirtualMachine, vmi: &VirtualMachineInstance, pass: &mut Pass) {
        if vmi.metadata.deletion_timestamp.is_some() {
            return;
        }
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        let name = name_of(vmi);
        let involved = reference_to(vm);
        match vmis.delete(vmi.metadata.namespace.as_deref(), name).await {
            Ok(()) => {
                pass.acted = true;
                let uid = vmi.metadata.uid.as_deref().unwrap_or_default();
                self.events
                    .record(
                        &involved,
                        EventType::Normal,
                        SUCCESSFUL_DELETE,
                        format!("Stopped the virtual machine by deleting the virtual machine instance {uid}"),
                    )
                    .await;
            }
            Err(e) if e.is_not_found() => pass.acted = true,
            Err(e) => {
                self.events
                    .record(
                        &involved,
                        EventType::Warning,
                        FAILED_DELETE,
                        format!("Error deleting virtual machine instance {name}: {}", e.message),
                    )
                    .await;
                pass.failure = Some(SyncFailure {
                    reason: FAILED_DELETE,
                    message: format!("Failure attempting to delete VMI: {e}"),
                });
            }
        }
    }

    /// A Start request for a Halted VM: like KubeVirt, switch it to Always
    /// (or `running: true` if it uses the deprecated field); the new spec
    /// brings the pass that creates the VMI.
    async fn start_halted(&self, vm: &VirtualMachine, pass: &mut Pass) {
        let patch = if vm.spec.run_strategy.is_some() {
            json!({"spec": {"runStrategy": RunStrategy::Always.as_str()}})
        } else {
            json!({"spec": {"running": true}})
        };
        let vms = Typed::<VirtualMachine>::new(self.api.as_ref());
        match vms.merge_patch(vm.metadata.namespace.as_deref(), name_of(vm), patch, false).await {
            Ok(_) => pass.spec_changed = true,
            Err(e) => {
                pass.failure = Some(SyncFailure {
                    reason: FAILED_CREATE,
                    message: format!("Failure while starting VMI: cannot set runStrategy to Always: {e}"),
                })
            }
        }
    }

    /// A VM whose generation changed without touching the template (only
    /// the run strategy, say) still describes the running VMI: record that
    /// on the VMI so `observedGeneration` catches up, as KubeVirt does.
    async fn bump_generation(
        &self,
        key: &ObjectKey,
        vm: &VirtualMachine,
        vmi: &VirtualMachineInstance,
        pass: &mut Pass,
    ) {
        let Some(generation) = vm.metadata.generation else { return };
        if is_final(vmi)
            || vmi.metadata.deletion_timestamp.is_some()
            || created_from_generation(vmi) == Some(generation)
        {
            return;
        }
        let mut expected = vmi_from_vm(vm, false).spec;
        expected.start_strategy.clone_from(&vmi.spec.start_strategy);
        if expected != vmi.spec {
            return;
        }
        let patch = json!({"metadata": {"annotations": {GENERATION_ANNOTATION: generation.to_string()}}});
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        match vmis.merge_patch(key.namespace(), &key.name, patch, false).await {
            Ok(_) => pass.acted = true,
            Err(e) => tracing::debug!(vm = %key, error = %e, "cannot update the VMI's generation annotation"),
        }
    }
}

fn name_of<K: sheaf_types::Kind>(obj: &K) -> &str {
    obj.metadata().name.as_deref().unwrap_or_default()
}

fn start_request() -> StateChangeRequest {
    StateChangeRequest { action: START.to_string(), ..Default::default() }
}

/// The controller owner reference a VM's VMI carries.
pub fn owner_reference(vm: &VirtualMachine) -> OwnerReference {
    OwnerReference {
        api_version: "kubevirt.io/v1".to_string(),
        kind: "VirtualMachine".to_string(),
        name: name_of(vm).to_string(),
        uid: vm.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The VMI a VM starts: its template, named after the VM, owned by it.
pub fn vmi_from_vm(vm: &VirtualMachine, paused: bool) -> VirtualMachineInstance {
    let template = &vm.spec.template;
    let name = name_of(vm).to_string();
    let mut annotations = template.metadata.annotations.clone();
    annotations.insert(GENERATION_ANNOTATION.to_string(), vm.metadata.generation.unwrap_or(1).to_string());
    // Harvester names the VM's SSH KeyPairs on the VM; the agent reads them
    // from the instance.
    if let Some(names) = vm.metadata.annotations.get(sheaf_types::harvester::SSH_NAMES_ANNOTATION) {
        annotations.insert(sheaf_types::harvester::SSH_NAMES_ANNOTATION.to_string(), names.clone());
    }
    let mut spec = template.spec.clone();
    if paused {
        spec.start_strategy = Some("Paused".to_string());
    }
    let firmware = spec.domain.firmware.get_or_insert_with(Default::default);
    if firmware.uuid.as_deref().unwrap_or_default().is_empty() {
        firmware.uuid = Some(Uuid::new_v5(&FIRMWARE_UUID_NAMESPACE, name.as_bytes()).to_string());
    }
    VirtualMachineInstance {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: vm.metadata.namespace.clone(),
            labels: template.metadata.labels.clone(),
            annotations,
            owner_references: vec![owner_reference(vm)],
            ..Default::default()
        },
        spec,
        status: None,
    }
}

fn phase(vmi: &VirtualMachineInstance) -> &str {
    vmi.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn is_final(vmi: &VirtualMachineInstance) -> bool {
    matches!(phase(vmi), SUCCEEDED | FAILED)
}

fn condition<'a>(vmi: &'a VirtualMachineInstance, type_: &str) -> Option<&'a Condition> {
    vmi.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn has_condition(vmi: &VirtualMachineInstance, type_: &str, status: &str) -> bool {
    condition(vmi, type_).is_some_and(|c| c.status == status)
}

fn has_condition_reason(vmi: &VirtualMachineInstance, type_: &str, status: &str, reason: &str) -> bool {
    condition(vmi, type_).is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason))
}

fn is_migrating(vmi: &VirtualMachineInstance) -> bool {
    let Some(state) = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref()) else { return false };
    let set = |k: &str| state.get(k).is_some_and(|v| !v.is_null());
    set("startTimestamp") && !set("endTimestamp") && state.get("completed") != Some(&json!(true))
}

/// When the VMI entered `phase`, from its phase transition timestamps.
fn entered(vmi: &VirtualMachineInstance, phase: &str) -> Option<Time> {
    vmi.status
        .as_ref()?
        .phase_transition_timestamps
        .iter()
        .filter(|t| t.phase.as_deref() == Some(phase))
        .filter_map(|t| t.phase_transition_timestamp)
        .max()
}

/// The VM generation the VMI was created from (its annotation).
fn created_from_generation(vmi: &VirtualMachineInstance) -> Option<i64> {
    vmi.metadata.annotations.get(GENERATION_ANNOTATION)?.parse().ok()
}

/// KubeVirt's first pass over a VM: mark it Initialized, and give a new
/// RerunOnFailure VM the Start request that makes it run.
fn initialize(status: &mut VirtualMachineStatus, strategy: RunStrategy) {
    if status.conditions.iter().any(|c| c.type_ == INITIALIZED) {
        return;
    }
    if strategy == RunStrategy::RerunOnFailure && status.state_change_requests.first().is_none_or(|r| r.action != START)
    {
        status.state_change_requests.insert(0, start_request());
    }
    status.conditions.push(Condition {
        type_: INITIALIZED.to_string(),
        status: "True".to_string(),
        ..Default::default()
    });
}

/// How a finished VMI ended, for crash-loop accounting.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Failed without running or soon after it started running.
    Crash,
    /// Ran long enough, or shut down after running.
    Clean,
    /// Ended because it was deleted: tells nothing.
    Deleted,
}

fn ending(vmi: &VirtualMachineInstance, now: Time, window: Duration) -> Ending {
    if vmi.metadata.deletion_timestamp.is_some() {
        return Ending::Deleted;
    }
    // Its node went away: says nothing about the VM itself.
    if vmi.status.as_ref().and_then(|s| s.reason.as_deref()) == Some(crate::failover::NODE_UNREACHABLE) {
        return Ending::Deleted;
    }
    let running_since = entered(vmi, RUNNING);
    match (phase(vmi), running_since) {
        (FAILED, None) | (SUCCEEDED, None) => Ending::Crash,
        (FAILED, Some(start)) => {
            let end = entered(vmi, FAILED).unwrap_or(now);
            let ran = (end.0 - start.0).to_std().unwrap_or_default();
            if ran < window {
                Ending::Crash
            } else {
                Ending::Clean
            }
        }
        _ => Ending::Clean,
    }
}

/// Wait before the `count`th consecutive failure is restarted: none after
/// the first, then `base`, doubling, at most `max`.
fn crash_loop_delay(count: i64, config: &Config) -> Duration {
    if count <= 1 {
        return Duration::ZERO;
    }
    let n = u32::try_from(count - 1).unwrap_or(u32::MAX);
    crate::runtime::exponential(config.crash_loop_base, config.crash_loop_max, n)
}

/// Updates `status.startFailure` from a finished VMI (each VMI is counted
/// once, by uid). Returns why a newly counted crash happened, when the
/// instance says.
fn sync_start_failure(
    status: &mut VirtualMachineStatus,
    vmi: Option<&VirtualMachineInstance>,
    strategy: RunStrategy,
    now: Time,
    config: &Config,
) -> Option<String> {
    if !matches!(strategy, RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once) {
        status.start_failure = None;
        return None;
    }
    let vmi = vmi.filter(|v| is_final(v))?;
    let uid = vmi.metadata.uid.clone();
    let counted = status.start_failure.as_ref().and_then(|f| f.last_failed_vmi_uid.as_ref());
    if uid.is_none() || counted == uid.as_ref() {
        return None;
    }
    match ending(vmi, now, config.crash_window) {
        Ending::Deleted => None,
        Ending::Clean => {
            status.start_failure = None;
            None
        }
        Ending::Crash => {
            let count = status.start_failure.as_ref().and_then(|f| f.consecutive_fail_count).unwrap_or(0) + 1;
            let delay = TimeDelta::from_std(crash_loop_delay(count, config)).unwrap_or(TimeDelta::MAX);
            status.start_failure = Some(StartFailure {
                consecutive_fail_count: Some(count),
                last_failed_vmi_uid: uid,
                retry_after_timestamp: Some(Time(now.0.checked_add_signed(delay).unwrap_or(now.0))),
            });
            let st = vmi.status.as_ref()?;
            let ready = st.conditions.iter().find(|c| c.type_ == READY && c.status == "False");
            let message = ready.and_then(|c| c.message.clone()).filter(|m| !m.is_empty())?;
            let reason = ready.and_then(|c| c.reason.clone()).or_else(|| st.reason.clone()).unwrap_or_default();
            Some(format!(
                "The virtual machine instance {} failed ({reason}): {message}",
                vmi.metadata.name.as_deref().unwrap_or("")
            ))
        }
    }
}

/// How long crash-loop backoff still holds back a start.
fn backoff_left(status: &VirtualMachineStatus, now: Time) -> Duration {
    status
        .start_failure
        .as_ref()
        .and_then(|f| f.retry_after_timestamp)
        .and_then(|t| (t.0 - now.0).to_std().ok())
        .unwrap_or_default()
}

/// Drops the first state change request once it is done (KubeVirt takes
/// them one at a time).
fn trim_first_request(status: &mut VirtualMachineStatus, vmi: Option<&VirtualMachineInstance>) {
    let Some(first) = status.state_change_requests.first() else { return };
    let done = match first.action.as_str() {
        // Stopped once the VMI it names is gone (or was never given).
        STOP => match vmi {
            None => true,
            Some(v) => first.uid.is_none() || first.uid != v.metadata.uid,
        },
        START => vmi.is_some_and(|v| v.metadata.deletion_timestamp.is_none()),
        other => {
            tracing::warn!(action = other, "dropping a state change request with an unknown action");
            true
        }
    };
    if done {
        status.state_change_requests.remove(0);
    }
}

fn derived(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        ..Default::default()
    }
}

/// Keeps the transition time of a condition whose status did not change.
fn with_transition(mut c: Condition, old: Option<&Condition>, now: Time) -> Condition {
    if c.last_transition_time.is_none() {
        c.last_transition_time = Some(c.transition_since(old, now));
    }
    c
}

/// Ready (from the VMI, or False with why), Failure (from this pass's
/// failed action), the VM's own conditions, and the VMI's other
/// conditions (Paused, PodScheduled, Synchronized, ...) copied.
fn sync_conditions(
    status: &mut VirtualMachineStatus,
    vmi: Option<&VirtualMachineInstance>,
    failure: Option<&SyncFailure>,
    now: Time,
) {
    let old = std::mem::take(&mut status.conditions);
    let old_of = |t: &str| old.iter().find(|c| c.type_ == t);
    let ready = match vmi {
        None => derived(READY, "False", "VMINotExists", "VMI does not exist"),
        Some(v) => match condition(v, READY) {
            Some(c) => c.clone(),
            None => derived(READY, "False", "VMIConditionMissing", "VMI is missing the Ready condition"),
        },
    };
    let mut out = vec![with_transition(ready, old_of(READY), now)];
    if let Some(f) = failure {
        out.push(with_transition(derived(FAILURE, "True", f.reason, &f.message), old_of(FAILURE), now));
    }
    out.extend(old.iter().filter(|c| c.type_ == INITIALIZED || c.type_ == RESTART_REQUIRED).cloned());
    if let Some(v) = vmi.and_then(|v| v.status.as_ref()) {
        out.extend(v.conditions.iter().filter(|c| !VM_OWNED_CONDITIONS.contains(&c.type_.as_str())).cloned());
    }
    status.conditions = out;
}

/// `DataVolumesReady`, for a VM that uses claims: False while one is not
/// Bound (reason `Provisioning`) or a template cannot be made into one
/// (`DataVolumeError`), with what each waits for.
fn sync_claims_condition(
    status: &mut VirtualMachineStatus,
    old: &Option<VirtualMachineStatus>,
    claims: &ClaimsState,
    now: Time,
) {
    status.conditions.retain(|c| c.type_ != DATA_VOLUMES_READY);
    if !claims.uses_claims && claims.problems.is_empty() {
        return;
    }
    let c = if !claims.problems.is_empty() {
        derived(DATA_VOLUMES_READY, "False", "DataVolumeError", &claims.problems.join("; "))
    } else if !claims.waiting.is_empty() {
        derived(DATA_VOLUMES_READY, "False", "Provisioning", &claims.waiting.join("; "))
    } else {
        derived(DATA_VOLUMES_READY, "True", "AllDataVolumesReady", "every claim is Bound")
    };
    let prev = old.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == DATA_VOLUMES_READY));
    status.conditions.push(with_transition(c, prev, now));
}

/// Whether a start is being held back by crash-loop backoff.
fn crash_looping(status: &VirtualMachineStatus, strategy: RunStrategy, now: Time) -> bool {
    let wants_start = match strategy {
        RunStrategy::Always => true,
        RunStrategy::RerunOnFailure => status.state_change_requests.first().is_some_and(|r| r.action == START),
        _ => false,
    };
    wants_start && !backoff_left(status, now).is_zero()
}

/// `status.printableStatus`, in KubeVirt's order of precedence.
fn printable_status(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    status: &VirtualMachineStatus,
    strategy: RunStrategy,
    now: Time,
) -> &'static str {
    if vm.metadata.deletion_timestamp.is_some() {
        return "Terminating";
    }
    if let Some(v) = vmi.filter(|v| !is_final(v)) {
        if v.metadata.deletion_timestamp.is_some() {
            return "Stopping";
        }
        if is_migrating(v) {
            return "Migrating";
        }
        if phase(v) == RUNNING {
            return if has_condition(v, PAUSED, "True") { "Paused" } else { "Running" };
        }
        if has_condition_reason(v, SYNCHRONIZED, "False", "FailedPvcNotFound") {
            return "ErrorPvcNotFound";
        }
        if has_condition_reason(v, POD_SCHEDULED, "False", "Unschedulable") {
            return "ErrorUnschedulable";
        }
        if has_condition_reason(v, SYNCHRONIZED, "False", "ErrImagePull") {
            return "ErrImagePull";
        }
        if has_condition_reason(v, SYNCHRONIZED, "False", "ImagePullBackOff") {
            return "ImagePullBackOff";
        }
        return match phase(v) {
            "" | "Pending" | "Scheduling" | "Scheduled" => "Starting",
            _ => "Unknown",
        };
    }
    if crash_looping(status, strategy, now) {
        return "CrashLoopBackOff";
    }
    match status.conditions.iter().find(|c| c.type_ == DATA_VOLUMES_READY && c.status == "False") {
        Some(c) if c.reason.as_deref() == Some("DataVolumeError") => return "DataVolumeError",
        Some(_) => return "Provisioning",
        None => {}
    }
    "Stopped"
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheaf_types::kubevirt::{PhaseTransitionTimestamp, VirtualMachineInstanceStatus};

    fn at(secs: i64) -> Time {
        Time(chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap_or_default())
    }

    fn vmi(phase: &str, running_at: Option<i64>, failed_at: Option<i64>) -> VirtualMachineInstance {
        let mut ts = Vec::new();
        for (p, t) in [(RUNNING, running_at), (FAILED, failed_at)] {
            if let Some(t) = t {
                ts.push(PhaseTransitionTimestamp {
                    phase: Some(p.to_string()),
                    phase_transition_timestamp: Some(at(t)),
                });
            }
        }
        VirtualMachineInstance {
            metadata: ObjectMeta { uid: Some(format!("uid-{phase}-{running_at:?}")), ..Default::default() },
            status: Some(VirtualMachineInstanceStatus {
                phase: Some(phase.to_string()),
                phase_transition_timestamps: ts,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn endings() {
        let w = Duration::from_secs(60);
        assert_eq!(ending(&vmi(FAILED, None, None), at(0), w), Ending::Crash);
        assert_eq!(ending(&vmi(FAILED, Some(0), Some(30)), at(500), w), Ending::Crash);
        assert_eq!(ending(&vmi(FAILED, Some(0), Some(90)), at(500), w), Ending::Clean);
        assert_eq!(ending(&vmi(FAILED, Some(0), None), at(10), w), Ending::Crash);
        assert_eq!(ending(&vmi(SUCCEEDED, Some(0), None), at(10), w), Ending::Clean);
        assert_eq!(ending(&vmi(SUCCEEDED, None, None), at(10), w), Ending::Crash);
        let mut deleted = vmi(FAILED, None, None);
        deleted.metadata.deletion_timestamp = Some(at(0));
        assert_eq!(ending(&deleted, at(0), w), Ending::Deleted);
    }

    #[test]
    fn crash_loop_delays_double_up_to_five_minutes() {
        let c = Config::default();
        let secs: Vec<u64> = (1..=8).map(|n| crash_loop_delay(n, &c).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn start_failures_count_once_per_vmi_and_reset_after_a_long_run() {
        let c = Config::default();
        let mut st = VirtualMachineStatus::default();
        let crashed = vmi(FAILED, None, None);
        sync_start_failure(&mut st, Some(&crashed), RunStrategy::Always, at(0), &c);
        sync_start_failure(&mut st, Some(&crashed), RunStrategy::Always, at(1), &c);
        assert_eq!(st.start_failure.as_ref().and_then(|f| f.consecutive_fail_count), Some(1));
        assert_eq!(backoff_left(&st, at(0)), Duration::ZERO);

        let mut again = vmi(FAILED, None, None);
        again.metadata.uid = Some("second".into());
        sync_start_failure(&mut st, Some(&again), RunStrategy::Always, at(5), &c);
        assert_eq!(st.start_failure.as_ref().and_then(|f| f.consecutive_fail_count), Some(2));
        assert_eq!(backoff_left(&st, at(5)), Duration::from_secs(10));
        assert!(crash_looping(&st, RunStrategy::Always, at(6)));
        assert!(!crash_looping(&st, RunStrategy::Always, at(15)));
        assert!(!crash_looping(&st, RunStrategy::Once, at(6)));

        let long = vmi(FAILED, Some(0), Some(3600));
        sync_start_failure(&mut st, Some(&long), RunStrategy::Always, at(3600), &c);
        assert_eq!(st.start_failure, None);

        st.start_failure = Some(StartFailure { consecutive_fail_count: Some(3), ..Default::default() });
        sync_start_failure(&mut st, None, RunStrategy::Manual, at(0), &c);
        assert_eq!(st.start_failure, None);
    }

    #[test]
    fn requests_are_trimmed_when_done() {
        let mut v = vmi("Running", Some(0), None);
        v.metadata.uid = Some("u1".into());
        let stop = StateChangeRequest { action: STOP.into(), uid: Some("u1".into()), ..Default::default() };
        let mut st =
            VirtualMachineStatus { state_change_requests: vec![stop.clone(), start_request()], ..Default::default() };
        trim_first_request(&mut st, Some(&v));
        assert_eq!(st.state_change_requests.len(), 2, "the VMI it stops still exists");
        trim_first_request(&mut st, None);
        assert_eq!(st.state_change_requests, vec![start_request()]);
        trim_first_request(&mut st, None);
        assert_eq!(st.state_change_requests.len(), 1, "not started yet");
        v.metadata.uid = Some("u2".into());
        trim_first_request(&mut st, Some(&v));
        assert!(st.state_change_requests.is_empty());
    }

    #[test]
    fn printable_status_precedence() {
        let vm = VirtualMachine::default();
        let st = VirtualMachineStatus::default();
        let p = |v: Option<&VirtualMachineInstance>| printable_status(&vm, v, &st, RunStrategy::Always, at(0));
        assert_eq!(p(None), "Stopped");
        assert_eq!(p(Some(&vmi("", None, None))), "Starting");
        assert_eq!(p(Some(&vmi("Scheduled", None, None))), "Starting");
        let mut running = vmi(RUNNING, Some(0), None);
        assert_eq!(p(Some(&running)), "Running");
        if let Some(s) = running.status.as_mut() {
            s.conditions.push(derived(PAUSED, "True", "PausedByUser", ""));
        }
        assert_eq!(p(Some(&running)), "Paused");
        running.metadata.deletion_timestamp = Some(at(0));
        assert_eq!(p(Some(&running)), "Stopping");
        let mut pending = vmi("Pending", None, None);
        if let Some(s) = pending.status.as_mut() {
            s.conditions.push(derived(POD_SCHEDULED, "False", "Unschedulable", "0/1 nodes are available"));
        }
        assert_eq!(p(Some(&pending)), "ErrorUnschedulable");
        assert_eq!(p(Some(&vmi(FAILED, None, None))), "Stopped");
        let mut deleting = vm.clone();
        deleting.metadata.deletion_timestamp = Some(at(0));
        assert_eq!(printable_status(&deleting, Some(&running), &st, RunStrategy::Always, at(0)), "Terminating");
    }

    #[test]
    fn vmi_from_template() {
        let mut vm = VirtualMachine::default();
        vm.metadata.name = Some("testvm".into());
        vm.metadata.namespace = Some("default".into());
        vm.metadata.uid = Some("vm-uid".into());
        vm.metadata.generation = Some(3);
        vm.spec.template.metadata.labels.insert("kubevirt.io/domain".into(), "testvm".into());
        vm.metadata.annotations.insert("harvesterhci.io/sshNames".into(), r#"["default/mykey"]"#.into());
        vm.metadata.annotations.insert("unrelated.example/note".into(), "x".into());
        let vmi = vmi_from_vm(&vm, true);
        assert_eq!(
            vmi.metadata.annotations.get("harvesterhci.io/sshNames").map(String::as_str),
            Some(r#"["default/mykey"]"#)
        );
        assert!(!vmi.metadata.annotations.contains_key("unrelated.example/note"));
        assert_eq!(vmi.metadata.name.as_deref(), Some("testvm"));
        assert_eq!(vmi.metadata.labels.get("kubevirt.io/domain").map(String::as_str), Some("testvm"));
        assert_eq!(vmi.metadata.annotations.get(GENERATION_ANNOTATION).map(String::as_str), Some("3"));
        assert_eq!(vmi.metadata.owner_references, vec![owner_reference(&vm)]);
        assert_eq!(vmi.spec.start_strategy.as_deref(), Some("Paused"));
        // Stable across starts, and the same as KubeVirt's for this name.
        let uuid = vmi.spec.domain.firmware.as_ref().and_then(|f| f.uuid.clone());
        assert_eq!(uuid, vmi_from_vm(&vm, false).spec.domain.firmware.and_then(|f| f.uuid));
        assert_eq!(uuid.map(|u| u.len()), Some(36));
    }
}
