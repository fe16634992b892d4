//! VM backups and restores (Harvester's `VirtualMachineBackup` and
//! `VirtualMachineRestore`; docs/design/backups.md, "VM backups"):
//!
//! ```text
//!  VirtualMachineBackup ─▶ capture the VM's spec, its volumes and Secrets
//!    ─▶ hold the guest (vmi.sheaf.io/freeze: fsfreeze or pause)
//!    ─▶ a VolumeSnapshot per volume, all at that point ─▶ let it go
//!    ─▶ type backup: a Backup per volume ─▶ all Completed
//!    ─▶ the VM manifest on the target (vms/NS/NAME.json) ─▶ readyToUse
//!  VirtualMachineRestore ─▶ a Volume per volume (fromBackup/fromSnapshot)
//!    ─▶ all filled ─▶ a new VM (newVM) or the stopped VM's spec replaced
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::backup::{Backup, BackupTarget, BACKUP_LABEL, IMPORTED_ANNOTATION};
use sheaf_types::core::Secret;
use sheaf_types::kubevirt::{vmi_requests, VirtualMachine, VirtualMachineInstance};
use sheaf_types::meta::{ObjectMeta, Time};
use sheaf_types::storage::{Volume, VolumeSnapshot, VOLUME_LABEL};
use sheaf_types::vm_backup::{
    VirtualMachineBackup, VirtualMachineRestore, TARGET_ANNOTATION, VM_BACKUP_FINALIZER, VM_BACKUP_LABEL,
};

use crate::backup::joined;
use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Change, Controller, ObjectKey, Reconciler};

const COMPONENT: &str = "sheaf-vm-backup-controller";
/// On what a restore makes: the restore's name.
pub const RESTORE_LABEL: &str = "sheaf.io/vm-restore";
/// How long the guest may take to answer a freeze request.
const FREEZE_ANSWER: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_secs(2);

pub async fn run(api: Arc<dyn Api>) {
    let backups = VmBackups { api: api.clone(), events: EventRecorder::new(api.clone(), COMPONENT) };
    let restores = VmRestores { api: api.clone(), events: EventRecorder::new(api.clone(), COMPONENT) };
    let schedules = Schedules { api: api.clone(), events: EventRecorder::new(api.clone(), COMPONENT) };
    let by_label = |label: &'static str| {
        move |_: Change, obj: &Value, store: &crate::runtime::Store| {
            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
            let Some(owner) =
                obj.pointer(&format!("/metadata/labels/{}", label.replace('/', "~1"))).and_then(Value::as_str)
            else {
                return Vec::new();
            };
            let owner = owner.to_string();
            store.keys_where(|b| {
                b.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string) == ns
                    && b.pointer("/metadata/name").and_then(Value::as_str) == Some(owner.as_str())
            })
        }
    };
    tokio::join!(
        Controller::new("vm-backup", api.clone(), Gvr::of::<VirtualMachineBackup>())
            .watches(Gvr::of::<Backup>(), by_label(VM_BACKUP_LABEL))
            .watches(Gvr::of::<VolumeSnapshot>(), by_label(VM_BACKUP_LABEL))
            .resync_every(Duration::from_secs(30))
            .run(Arc::new(backups)),
        Controller::new("vm-restore", api.clone(), Gvr::of::<VirtualMachineRestore>())
            .watches(Gvr::of::<Volume>(), by_label(RESTORE_LABEL))
            .resync_every(Duration::from_secs(30))
            .run(Arc::new(restores)),
        Controller::new("vm-backup-schedule", api.clone(), Gvr::of::<sheaf_types::vm_backup::ScheduleVMBackup>())
            .watches(Gvr::of::<VirtualMachineBackup>(), by_label(sheaf_types::vm_backup::SCHEDULE_LABEL))
            .resync_every(Duration::from_secs(30))
            .run(Arc::new(schedules)),
    );
}

fn now() -> Time {
    Time(Utc::now().trunc_subsecs(0))
}

fn name_of(m: &ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or_default()
}

/// The claim (Sheaf Volume) behind a VM volume, if it has one.
fn claim_of(v: &Value) -> Option<&str> {
    v.pointer("/persistentVolumeClaim/claimName").or_else(|| v.pointer("/dataVolume/name")).and_then(Value::as_str)
}

pub fn snapshot_name(vmb: &str, volume: &str) -> String {
    joined(&format!("vmbackup-{vmb}"), volume)
}

/// The key of a VM backup's manifest on its target.
pub fn vm_manifest_key(ns: &str, name: &str) -> String {
    format!("vms/{ns}/{name}.json")
}

struct VmBackups {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

#[async_trait::async_trait]
impl Reconciler for VmBackups {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let typed = Typed::<VirtualMachineBackup>::new(self.api.as_ref());
        let Some(b) = typed.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if b.metadata.deletion_timestamp.is_some() {
            return self.delete(&b).await;
        }
        if !b.metadata.finalizers.iter().any(|f| f == VM_BACKUP_FINALIZER) {
            let mut finalizers = b.metadata.finalizers.clone();
            finalizers.push(VM_BACKUP_FINALIZER.into());
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": b.metadata.resource_version}});
            typed.merge_patch(key.namespace(), &key.name, patch, false).await?;
            return Ok(Action::Done);
        }
        let status = b.status.clone().unwrap_or_default();
        if b.ready() || status.error.is_some() || b.metadata.annotations.contains_key(IMPORTED_ANNOTATION) {
            return Ok(Action::Done);
        }
        if status.source.is_none() {
            return self.capture(&b).await;
        }
        if !self.snapshots_taken(&b).await? {
            return self.snapshot(&b).await;
        }
        // Every disk is snapshotted: the guest goes on.
        self.release(&b).await?;
        if b.type_() == "snapshot" {
            return self.finish(&b, None).await;
        }
        self.back_up(&b).await
    }
}

impl VmBackups {
    async fn set_status(&self, b: &VirtualMachineBackup, status: Value) -> Result<(), ClientError> {
        let patch = json!({"metadata": {"uid": b.metadata.uid}, "status": status});
        Typed::<VirtualMachineBackup>::new(self.api.as_ref())
            .merge_patch(b.metadata.namespace.as_deref(), name_of(&b.metadata), patch, true)
            .await
            .map(drop)
    }

    async fn fail(&self, b: &VirtualMachineBackup, message: String) -> Result<Action, ClientError> {
        self.events.record(&reference_to(b), EventType::Warning, "BackupFailed", message.clone()).await;
        self.release(b).await?;
        self.set_status(b, json!({"readyToUse": false, "error": {"time": now(), "message": message}})).await?;
        Ok(Action::Done)
    }

    /// The target of a `type: backup`: the annotation's, or the only one.
    async fn target(&self, b: &VirtualMachineBackup) -> Result<Result<BackupTarget, String>, ClientError> {
        let targets = Typed::<BackupTarget>::new(self.api.as_ref()).list(None, &Selectors::default()).await?;
        Ok(match b.metadata.annotations.get(TARGET_ANNOTATION) {
            Some(t) => targets
                .into_iter()
                .find(|x| x.metadata.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| format!("BackupTarget {t} does not exist (kubectl get backuptargets)")),
            None if targets.len() == 1 => Ok(targets.into_iter().next().unwrap_or_default()),
            None if targets.is_empty() => {
                Err("no BackupTarget exists: add one (sheaf backup target add), or use type: snapshot".into())
            }
            None => Err(format!(
                "there are {} BackupTargets ({}): say which with the annotation {TARGET_ANNOTATION}",
                targets.len(),
                targets.iter().map(|t| name_of(&t.metadata)).collect::<Vec<_>>().join(", ")
            )),
        })
    }

    /// Records the VM's spec, volumes and Secrets.
    async fn capture(&self, b: &VirtualMachineBackup) -> Result<Action, ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let vm_name = &b.spec.source.name;
        let Some(vm) = self.api.get(Gvr::of::<VirtualMachine>(), ns, vm_name).await? else {
            return self.fail(b, format!("VirtualMachine {vm_name} does not exist")).await;
        };
        let mut target_ref = Value::Null;
        if b.type_() == "backup" {
            let t = match self.target(b).await? {
                Ok(t) => t,
                Err(e) => return self.fail(b, e).await,
            };
            if !t.status.as_ref().is_some_and(|s| s.available) {
                let why = t.status.as_ref().and_then(|s| s.message.clone()).unwrap_or("not checked yet".into());
                return self.fail(b, format!("BackupTarget {} is not available: {why}", name_of(&t.metadata))).await;
            }
            let s3 = t.spec.s3.as_ref();
            target_ref = json!({
                "name": t.metadata.name,
                "endpoint": s3.and_then(|s| s.endpoint.clone()).or_else(|| t.spec.filesystem.as_ref().map(|f| f.path.clone())),
                "bucketName": s3.map(|s| s.bucket.clone()),
                "bucketRegion": s3.and_then(|s| s.region.clone()),
            });
        }
        let volumes = vm.pointer("/spec/template/spec/volumes").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut volume_backups = Vec::new();
        let vols = Typed::<Volume>::new(self.api.as_ref());
        for v in &volumes {
            let vname = v.get("name").and_then(Value::as_str).unwrap_or_default();
            if v.get("emptyDisk").is_some() || v.get("hostDisk").is_some() {
                return self
                    .fail(
                        b,
                        format!(
                            "volume {vname} is an emptyDisk or hostDisk, whose data lives on one node only and \
                             cannot be backed up; use a PersistentVolumeClaim (a Sheaf volume)"
                        ),
                    )
                    .await;
            }
            let Some(claim) = claim_of(v) else { continue };
            let Some(vol) = vols.get(ns, claim).await? else {
                return self.fail(b, format!("volume {vname}: Volume {claim} does not exist")).await;
            };
            let size = vol.size_bytes();
            let item_name = match b.type_() {
                "snapshot" => snapshot_name(name_of(&b.metadata), vname),
                _ => joined(name_of(&b.metadata), vname),
            };
            volume_backups.push(json!({
                "name": item_name, "volumeName": vname, "csiDriverName": "sheaf.io",
                "persistentVolumeClaim": {
                    "metadata": {"name": claim, "namespace": ns, "labels": vol.metadata.labels},
                    "spec": {
                        "accessModes": ["ReadWriteMany"], "volumeMode": "Block",
                        "resources": {"requests": {"storage": size.to_string()}},
                        "numberOfReplicas": vol.spec.number_of_replicas,
                    },
                },
                "longhornBackupName": (b.type_() == "backup").then_some(item_name.clone()),
                "volumeSize": size, "progress": 0, "readyToUse": false,
            }));
        }
        if volume_backups.is_empty() {
            return self
                .fail(
                    b,
                    format!("VirtualMachine {vm_name} has no volumes to back up (only container disks or cloud-init)"),
                )
                .await;
        }
        // The Secrets its cloud-init data comes from.
        let mut secret_backups = Vec::new();
        let secrets = Typed::<Secret>::new(self.api.as_ref());
        for v in &volumes {
            for src in ["cloudInitNoCloud", "cloudInitConfigDrive"] {
                for r in ["secretRef", "networkDataSecretRef"] {
                    let Some(sname) = v.pointer(&format!("/{src}/{r}/name")).and_then(Value::as_str) else { continue };
                    if secret_backups.iter().any(|s: &Value| s["name"] == sname) {
                        continue;
                    }
                    let Some(secret) = secrets.get(ns, sname).await? else {
                        return self.fail(b, format!("the VM's Secret {sname} does not exist")).await;
                    };
                    let data: serde_json::Map<String, Value> = secret
                        .data
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
                        .collect();
                    secret_backups.push(json!({"name": sname, "data": data}));
                }
            }
        }
        let meta = vm.get("metadata").cloned().unwrap_or(Value::Null);
        let source = json!({
            "metadata": {
                "name": meta.get("name"), "namespace": meta.get("namespace"),
                "labels": meta.get("labels"), "annotations": strip_annotations(meta.get("annotations")),
            },
            "spec": vm.get("spec"),
        });
        self.set_status(
            b,
            json!({
                "sourceUID": meta.get("uid"), "creationTime": now(), "backupTarget": target_ref,
                "source": source, "volumeBackups": volume_backups, "secretBackups": secret_backups,
                "progress": 0, "readyToUse": false,
            }),
        )
        .await?;
        Ok(Action::Done)
    }

    async fn snapshots_taken(&self, b: &VirtualMachineBackup) -> Result<bool, ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let snaps = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        for vb in &b.status.as_ref().map(|s| s.volume_backups.clone()).unwrap_or_default() {
            let sn = snapshot_name(name_of(&b.metadata), &vb.volume_name);
            match snaps.get(ns, &sn).await? {
                Some(s) if s.status.as_ref().is_some_and(|st| st.ready_to_use) => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Holds the guest, takes a snapshot of every volume at that point,
    /// lets the guest go.
    async fn snapshot(&self, b: &VirtualMachineBackup) -> Result<Action, ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let name = name_of(&b.metadata);
        let status = b.status.clone().unwrap_or_default();
        let id = b.metadata.uid.clone().unwrap_or_default();
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        let vmi = vmis.get(ns, &b.spec.source.name).await?;
        let running =
            vmi.as_ref().is_some_and(|v| v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        let snaps = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let mut consistency = status.consistency.clone();
        if consistency.is_none() {
            if let (true, Some(vmi)) = (running, &vmi) {
                let answer = vmi.metadata.annotations.get(vmi_requests::FROZEN).cloned().unwrap_or_default();
                match answer.strip_prefix(id.as_str()) {
                    Some(rest) if rest.starts_with(':') && !rest.starts_with(": ") => {
                        consistency = Some(rest[1..].to_string());
                    }
                    Some(rest) if rest.starts_with(": ") => {
                        consistency = Some(format!("crash-consistent per disk only: {}", &rest[2..]));
                    }
                    _ => {
                        let asked = vmi.metadata.annotations.get(vmi_requests::FREEZE) == Some(&id);
                        if !asked {
                            let patch = json!({"metadata": {"annotations": {vmi_requests::FREEZE: id}}});
                            vmis.merge_patch(ns, name_of(&vmi.metadata), patch, false).await?;
                            self.set_status(
                                b,
                                json!({"conditions": [{"type": "InProgress", "status": "True",
                                "reason": "HoldingGuest", "message": "asking the node to hold the guest's writes",
                                "lastTransitionTime": now()}]}),
                            )
                            .await?;
                            return Ok(Action::RequeueAfter(POLL));
                        }
                        let asked_at = status.creation_time.map(|t| t.0).unwrap_or_else(Utc::now);
                        if Utc::now().signed_duration_since(asked_at).to_std().unwrap_or_default() > FREEZE_ANSWER * 2 {
                            consistency = Some("crash-consistent per disk only: the node did not answer".into());
                        } else {
                            return Ok(Action::RequeueAfter(POLL));
                        }
                    }
                }
            } else {
                consistency = Some("stopped".into());
            }
            self.set_status(b, json!({"consistency": consistency})).await?;
        }
        // Every snapshot, at once.
        let mut all_ready = true;
        for vb in &status.volume_backups {
            let sn = snapshot_name(name, &vb.volume_name);
            let claim = name_of(&vb.persistent_volume_claim.metadata).to_string();
            match snaps.get(ns, &sn).await? {
                Some(s) if s.status.as_ref().and_then(|st| st.error.clone()).is_some() => {
                    let e = s.status.and_then(|st| st.error).unwrap_or_default();
                    return self.fail(b, format!("the snapshot of volume {}: {e}", vb.volume_name)).await;
                }
                Some(s) => all_ready &= s.status.as_ref().is_some_and(|st| st.ready_to_use),
                None => {
                    all_ready = false;
                    let mut labels = BTreeMap::from([
                        (VOLUME_LABEL.to_string(), claim.clone()),
                        (VM_BACKUP_LABEL.to_string(), name.to_string()),
                    ]);
                    if b.type_() == "backup" {
                        // Dropped by the Backup controller once a newer backup
                        // of the volume completes.
                        labels.insert(BACKUP_LABEL.into(), joined(name, &vb.volume_name));
                    }
                    let s = VolumeSnapshot {
                        metadata: ObjectMeta {
                            name: Some(sn.clone()),
                            namespace: b.metadata.namespace.clone(),
                            labels,
                            ..Default::default()
                        },
                        spec: sheaf_types::storage::VolumeSnapshotSpec { volume_name: claim },
                        status: None,
                    };
                    match snaps.create(&s).await {
                        Ok(_) => {}
                        Err(e) if e.is_already_exists() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if !all_ready {
            return Ok(Action::RequeueAfter(Duration::from_millis(500)));
        }
        self.release(b).await?;
        self.events
            .record(
                &reference_to(b),
                EventType::Normal,
                "Snapshotted",
                format!("every volume snapshotted at one point ({})", consistency.unwrap_or_default()),
            )
            .await;
        Ok(Action::Done)
    }

    /// Lets the guest go on (removes the freeze request).
    async fn release(&self, b: &VirtualMachineBackup) -> Result<(), ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        if let Some(vmi) = vmis.get(ns, &b.spec.source.name).await? {
            if vmi.metadata.annotations.get(vmi_requests::FREEZE) == b.metadata.uid.as_ref() {
                let patch = json!({"metadata": {"annotations": {vmi_requests::FREEZE: null}}});
                vmis.merge_patch(ns, name_of(&vmi.metadata), patch, false).await?;
            }
        }
        Ok(())
    }

    /// Makes and follows the Backup of every volume.
    async fn back_up(&self, b: &VirtualMachineBackup) -> Result<Action, ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let name = name_of(&b.metadata);
        let status = b.status.clone().unwrap_or_default();
        let target = status.backup_target.as_ref().and_then(|t| t.name.clone()).unwrap_or_default();
        let backups = Typed::<Backup>::new(self.api.as_ref());
        let mut items = Vec::new();
        let (mut done, mut total_progress) = (true, 0i64);
        for vb in &status.volume_backups {
            let bname = joined(name, &vb.volume_name);
            let claim = name_of(&vb.persistent_volume_claim.metadata).to_string();
            let item = match backups.get(ns, &bname).await? {
                Some(x) => x,
                None => {
                    let x = Backup {
                        metadata: ObjectMeta {
                            name: Some(bname.clone()),
                            namespace: b.metadata.namespace.clone(),
                            labels: BTreeMap::from([(VM_BACKUP_LABEL.to_string(), name.to_string())]),
                            ..Default::default()
                        },
                        spec: sheaf_types::backup::BackupSpec {
                            volume_name: claim,
                            target: target.clone(),
                            snapshot_name: Some(snapshot_name(name, &vb.volume_name)),
                        },
                        status: None,
                    };
                    match backups.create(&x).await {
                        Ok(x) => x,
                        Err(e) if e.is_already_exists() => continue,
                        Err(e) => return Err(e),
                    }
                }
            };
            let st = item.status.clone().unwrap_or_default();
            if item.phase() == "Failed" {
                let e = st.error.unwrap_or_default();
                return self.fail(b, format!("the backup of volume {}: {e}", vb.volume_name)).await;
            }
            done &= item.completed();
            let p = if item.completed() { 100 } else { i64::from(st.progress.unwrap_or(0)) };
            total_progress += p;
            let mut v = serde_json::to_value(vb).unwrap_or(Value::Null);
            v["progress"] = json!(p);
            v["readyToUse"] = json!(item.completed());
            v["creationTime"] = json!(st.completion_time);
            items.push(v);
        }
        let progress = total_progress / status.volume_backups.len().max(1) as i64;
        if !done {
            if progress != status.progress {
                self.set_status(b, json!({"progress": progress, "volumeBackups": items})).await?;
            }
            return Ok(Action::RequeueAfter(POLL));
        }
        self.finish(b, Some((target, items))).await
    }

    /// Ready: for a backup, once the VM manifest is on the target.
    async fn finish(
        &self,
        b: &VirtualMachineBackup,
        backup: Option<(String, Vec<Value>)>,
    ) -> Result<Action, ClientError> {
        let ns = b.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = name_of(&b.metadata);
        let mut status = serde_json::to_value(b.status.clone().unwrap_or_default()).unwrap_or(Value::Null);
        let mut manifest_key = Value::Null;
        if let Some((target, items)) = backup {
            status["volumeBackups"] = json!(items);
            status["progress"] = json!(100);
            status["readyToUse"] = json!(true);
            let key = vm_manifest_key(&ns, name);
            let manifest = json!({"format": 1, "name": name, "namespace": ns, "type": b.type_(), "status": status});
            let written = match sheaf_backup::target::open_named(self.api.as_ref(), &target).await {
                Ok((_, repo)) => {
                    repo.store().put(&key, Bytes::from(manifest.to_string())).await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::warn!(vm_backup = name, error = %e, "cannot write the VM manifest yet");
                return Ok(Action::RequeueAfter(Duration::from_secs(5)));
            }
            manifest_key = json!(key);
        } else if let Some(items) = status.get_mut("volumeBackups").and_then(Value::as_array_mut) {
            for v in items {
                v["readyToUse"] = json!(true);
                v["progress"] = json!(100);
            }
        }
        self.set_status(
            b,
            json!({
                "readyToUse": true, "progress": 100, "volumeBackups": status["volumeBackups"], "manifest": manifest_key,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Completed", "lastTransitionTime": now()}],
            }),
        )
        .await?;
        self.events
            .record(&reference_to(b), EventType::Normal, "BackupReady", format!("{} of the VM is ready", b.type_()))
            .await;
        Ok(Action::Done)
    }

    /// A deleted VM backup: its Backups (whose manifests leave the target),
    /// its VM manifest and its snapshots go, then the finalizer.
    async fn delete(&self, b: &VirtualMachineBackup) -> Result<Action, ClientError> {
        if !b.metadata.finalizers.iter().any(|f| f == VM_BACKUP_FINALIZER) {
            return Ok(Action::Done);
        }
        self.release(b).await?;
        let ns = b.metadata.namespace.as_deref();
        let name = name_of(&b.metadata);
        let sel = Selectors { labels: format!("{VM_BACKUP_LABEL}={name}"), fields: String::new() };
        let backups = Typed::<Backup>::new(self.api.as_ref());
        let items = backups.list(ns, &sel).await?;
        for x in &items {
            if x.metadata.deletion_timestamp.is_none() {
                match backups.delete(ns, name_of(&x.metadata)).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !items.is_empty() {
            return Ok(Action::RequeueAfter(POLL));
        }
        let snaps = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        for s in snaps.list(ns, &sel).await? {
            match snaps.delete(ns, name_of(&s.metadata)).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(target) = b.status.as_ref().and_then(|s| s.backup_target.as_ref()).and_then(|t| t.name.clone()) {
            if let Ok((_, repo)) = sheaf_backup::target::open_named(self.api.as_ref(), &target).await {
                let key = vm_manifest_key(ns.unwrap_or("default"), name);
                if let Err(e) = repo.store().delete(&key).await {
                    tracing::warn!(vm_backup = name, error = %e, "cannot remove the VM manifest; retrying");
                    return Ok(Action::RequeueAfter(Duration::from_secs(5)));
                }
            }
        }
        let keep: Vec<&String> = b.metadata.finalizers.iter().filter(|f| *f != VM_BACKUP_FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": b.metadata.resource_version}});
        Typed::<VirtualMachineBackup>::new(self.api.as_ref()).merge_patch(ns, name, patch, false).await?;
        Ok(Action::Done)
    }
}

/// Annotations not to carry into a restored VM.
fn strip_annotations(a: Option<&Value>) -> Value {
    let mut a = a.cloned().unwrap_or(json!({}));
    if let Some(m) = a.as_object_mut() {
        m.retain(|k, _| k != "kubectl.kubernetes.io/last-applied-configuration" && !k.starts_with("kubevirt.io/"));
    }
    a
}

/// Imports the VM manifests on `repo` that have no VirtualMachineBackup
/// here (the target controller calls this after the volume backups).
pub async fn import(api: &dyn Api, target: &str, repo: &sheaf_backup::Repository) -> Result<u64, String> {
    let keys = repo.store().list("vms/").await.map_err(|e| e.to_string())?;
    let typed = Typed::<VirtualMachineBackup>::new(api);
    let mut n = 0;
    for o in keys.into_iter().filter(|o| o.key.ends_with(".json")) {
        let Ok(Some(body)) = repo.store().get(&o.key).await else { continue };
        let Ok(m) = serde_json::from_slice::<Value>(&body) else {
            tracing::warn!(target, key = %o.key, "unreadable VM manifest on the backup target");
            continue;
        };
        n += 1;
        let (Some(ns), Some(name)) = (m["namespace"].as_str(), m["name"].as_str()) else { continue };
        if typed.get(Some(ns), name).await.map_err(|e| e.to_string())?.is_some() {
            continue;
        }
        let source = m.pointer("/status/source/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let obj = json!({
            "apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineBackup",
            "metadata": {"name": name, "namespace": ns, "annotations": {IMPORTED_ANNOTATION: "true", TARGET_ANNOTATION: target}},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": source}, "type": "backup"},
        });
        let gvr = Gvr::of::<VirtualMachineBackup>();
        match api.create(gvr, Some(ns), obj).await {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => continue,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.to_string()),
        }
        let mut status = m["status"].clone();
        status["manifest"] = json!(o.key);
        let _ = api.merge_patch(gvr, Some(ns), name, json!({"status": status}), true).await;
        tracing::info!(target, key = %o.key, "VM backup found on the target");
    }
    Ok(n)
}

struct VmRestores {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

#[async_trait::async_trait]
impl Reconciler for VmRestores {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let Some(r) = Typed::<VirtualMachineRestore>::new(self.api.as_ref()).get(key.namespace(), &key.name).await?
        else {
            return Ok(Action::Done);
        };
        if r.metadata.deletion_timestamp.is_some()
            || r.complete()
            || r.status.as_ref().is_some_and(|s| s.error.is_some())
        {
            return Ok(Action::Done);
        }
        self.restore(&r).await
    }
}

impl VmRestores {
    async fn set_status(&self, r: &VirtualMachineRestore, status: Value) -> Result<(), ClientError> {
        let patch = json!({"metadata": {"uid": r.metadata.uid}, "status": status});
        Typed::<VirtualMachineRestore>::new(self.api.as_ref())
            .merge_patch(r.metadata.namespace.as_deref(), name_of(&r.metadata), patch, true)
            .await
            .map(drop)
    }

    async fn fail(&self, r: &VirtualMachineRestore, message: String) -> Result<Action, ClientError> {
        self.events.record(&reference_to(r), EventType::Warning, "RestoreFailed", message.clone()).await;
        self.set_status(r, json!({"complete": false, "error": {"time": now(), "message": message}})).await?;
        Ok(Action::Done)
    }

    async fn waiting(&self, r: &VirtualMachineRestore, message: String) -> Result<Action, ClientError> {
        let cur = r.status.as_ref().and_then(|s| s.conditions.first()).and_then(|c| c.message.clone());
        if cur.as_deref() != Some(message.as_str()) {
            self.set_status(
                r,
                json!({"complete": false, "conditions": [{"type": "Ready", "status": "False",
                "reason": "Waiting", "message": message, "lastTransitionTime": now()}]}),
            )
            .await?;
        }
        Ok(Action::RequeueAfter(POLL))
    }

    async fn restore(&self, r: &VirtualMachineRestore) -> Result<Action, ClientError> {
        let ns = r.metadata.namespace.as_deref();
        let rname = name_of(&r.metadata);
        let target = &r.spec.target.name;
        let Some(b) =
            Typed::<VirtualMachineBackup>::new(self.api.as_ref()).get(ns, &r.spec.virtual_machine_backup_name).await?
        else {
            return self
                .fail(r, format!("VirtualMachineBackup {} does not exist", r.spec.virtual_machine_backup_name))
                .await;
        };
        if !b.ready() {
            return self.waiting(r, format!("VirtualMachineBackup {} is not ready yet", name_of(&b.metadata))).await;
        }
        let bs = b.status.clone().unwrap_or_default();
        let Some(source) = bs.source.clone() else {
            return self.fail(r, "the VM backup holds no VM spec".into()).await;
        };
        let vms = Typed::<VirtualMachine>::new(self.api.as_ref());
        let existing = vms.get(ns, target).await?;
        let ours = |vm: &VirtualMachine| vm.metadata.labels.get(RESTORE_LABEL).map(String::as_str) == Some(rname);
        if r.new_vm() {
            if existing.as_ref().is_some_and(|vm| !ours(vm)) {
                return self
                    .fail(r, format!("VirtualMachine {target} already exists: restore to a new name, or use newVM: false to replace it"))
                    .await;
            }
        } else {
            if name_of(&source.metadata) != target.as_str() {
                return self
                    .fail(
                        r,
                        format!(
                            "a backup of {} can only replace that VM; restore to {target} with newVM: true",
                            name_of(&source.metadata)
                        ),
                    )
                    .await;
            }
            if existing.is_some() {
                let vmi = self.api.get(Gvr::of::<VirtualMachineInstance>(), ns, target).await?;
                if vmi.is_some() && r.status.as_ref().and_then(|s| s.target_uid.as_ref()).is_none() {
                    return self
                        .waiting(
                            r,
                            format!(
                                "VirtualMachine {target} is running: stop it (sheaf vm stop {target}) for the restore"
                            ),
                        )
                        .await;
                }
            }
        }
        // A volume per volume backup.
        let vols = Typed::<Volume>::new(self.api.as_ref());
        let suffix: String = r.metadata.uid.clone().unwrap_or_default().chars().take(5).collect();
        let mut restores = Vec::new();
        let mut renames: BTreeMap<String, String> = BTreeMap::new();
        let (mut all_done, mut progress) = (true, 0i64);
        for vb in &bs.volume_backups {
            let new_name = if r.new_vm() {
                joined(target, &vb.volume_name)
            } else {
                joined(name_of(&vb.persistent_volume_claim.metadata), &format!("r{suffix}"))
            };
            renames.insert(vb.volume_name.clone(), new_name.clone());
            let from = vb.name.clone().unwrap_or_default();
            let vol = match vols.get(ns, &new_name).await? {
                Some(v) if v.metadata.labels.get(RESTORE_LABEL).map(String::as_str) != Some(rname) => {
                    return self.fail(r, format!("Volume {new_name} already exists and is not this restore's")).await;
                }
                Some(v) => v,
                None => {
                    let replicas = vb.persistent_volume_claim.spec.get("numberOfReplicas").and_then(Value::as_u64);
                    let mut obj = json!({
                        "apiVersion": "sheaf.io/v1alpha1", "kind": "Volume",
                        "metadata": {"name": new_name, "namespace": ns, "labels": {RESTORE_LABEL: rname}},
                        "spec": {"size": vb.volume_size.to_string(), "numberOfReplicas": replicas},
                    });
                    if b.type_() == "snapshot" {
                        obj["spec"]["fromSnapshot"] = json!(from);
                    } else {
                        obj["spec"]["fromBackup"] = json!(from);
                        if Typed::<Backup>::new(self.api.as_ref()).get(ns, &from).await?.is_none() {
                            return self
                                .waiting(
                                    r,
                                    format!(
                                        "the volume backup {from} is not known here yet (its target is being listed)"
                                    ),
                                )
                                .await;
                        }
                    }
                    match self.api.create(Gvr::of::<Volume>(), ns, obj).await {
                        Ok(_) => {}
                        Err(e) if e.is_already_exists() => {}
                        Err(e) => return Err(e),
                    }
                    all_done = false;
                    restores.push(json!({"volumeName": vb.volume_name, "volumeBackupName": from, "progress": 0,
                        "volumeSize": vb.volume_size, "persistentVolumeClaimSpec": {"metadata": {"name": new_name, "namespace": ns}}}));
                    continue;
                }
            };
            let st = vol.status.clone().unwrap_or_default();
            let done = st.restored_from.is_some();
            all_done &= done;
            let p = if done { 100 } else { i64::from(st.restore_progress.unwrap_or(0)) };
            progress += p;
            restores.push(json!({"volumeName": vb.volume_name, "volumeBackupName": from, "progress": p,
                "volumeSize": vb.volume_size, "persistentVolumeClaimSpec": {"metadata": {"name": new_name, "namespace": ns}}}));
        }
        let progress = progress / bs.volume_backups.len().max(1) as i64;
        if !all_done {
            self.set_status(r, json!({"complete": false, "progress": progress, "restores": restores})).await?;
            return Ok(Action::RequeueAfter(POLL));
        }
        // Secrets the VM needs that this cluster lacks.
        let secrets = Typed::<Secret>::new(self.api.as_ref());
        for s in &bs.secret_backups {
            if secrets.get(ns, &s.name).await?.is_none() {
                let obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": s.name, "namespace": ns}, "data": s.data});
                match self.api.create(Gvr::of::<Secret>(), ns, obj).await {
                    Ok(_) => {}
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let spec = restored_spec(&source.spec, &renames, r.new_vm() && r.spec.keep_mac_address != Some(true));
        let mut deleted = Vec::new();
        let uid = if r.new_vm() {
            match existing.filter(|vm| ours(vm)) {
                Some(vm) => vm.metadata.uid,
                None => {
                    let mut labels = source.metadata.labels.clone();
                    labels.insert(RESTORE_LABEL.into(), rname.into());
                    let obj = json!({
                        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                        "metadata": {"name": target, "namespace": ns, "labels": labels, "annotations": source.metadata.annotations},
                        "spec": spec,
                    });
                    let created = self.api.create(Gvr::of::<VirtualMachine>(), ns, obj).await?;
                    created.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string)
                }
            }
        } else {
            // The VM's spec as it was, on the new volumes; the volumes it used
            // go unless the policy keeps them.
            let old_claims: Vec<String> = existing
                .as_ref()
                .and_then(|vm| serde_json::to_value(vm).ok())
                .and_then(|v| v.pointer("/spec/template/spec/volumes").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|v| claim_of(v).map(str::to_string))
                .collect();
            let uid = match existing {
                Some(vm) => {
                    let patch = json!({"metadata": {"resourceVersion": vm.metadata.resource_version}, "spec": spec});
                    let v = self.api.merge_patch(Gvr::of::<VirtualMachine>(), ns, target, patch, false).await?;
                    v.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string)
                }
                None => {
                    let obj = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                        "metadata": {"name": target, "namespace": ns, "labels": source.metadata.labels}, "spec": spec});
                    let v = self.api.create(Gvr::of::<VirtualMachine>(), ns, obj).await?;
                    v.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string)
                }
            };
            if r.spec.deletion_policy.as_deref() != Some("retain") {
                for c in old_claims.iter().filter(|c| !renames.values().any(|n| n == *c)) {
                    match vols.delete(ns, c).await {
                        Ok(()) => deleted.push(c.clone()),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => tracing::warn!(volume = %c, error = %e, "cannot delete a replaced volume"),
                    }
                }
            }
            uid
        };
        self.set_status(
            r,
            json!({
                "complete": true, "progress": 100, "restores": restores, "restoreTime": now(), "targetUID": uid,
                "deletedVolumes": deleted,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Restored", "lastTransitionTime": now()}],
            }),
        )
        .await?;
        self.events
            .record(
                &reference_to(r),
                EventType::Normal,
                "Restored",
                format!("VirtualMachine {target} restored from {}", name_of(&b.metadata)),
            )
            .await;
        Ok(Action::Done)
    }
}

/// The backed-up VM spec on the restored volumes: claims renamed, the
/// volume templates dropped (their volumes are restored ones now), and,
/// for a new VM, the identity that must not be shared (MAC addresses
/// unless kept, firmware UUID and serial).
pub fn restored_spec(spec: &Value, renames: &BTreeMap<String, String>, new_macs: bool) -> Value {
    let mut spec = spec.clone();
    if let Some(m) = spec.as_object_mut() {
        m.remove("dataVolumeTemplates");
    }
    if let Some(vols) = spec.pointer_mut("/template/spec/volumes").and_then(Value::as_array_mut) {
        for v in vols.iter_mut() {
            let name = v.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let Some(new) = renames.get(&name) else { continue };
            if let Some(m) = v.as_object_mut() {
                m.remove("dataVolume");
                let hot = m.get("persistentVolumeClaim").and_then(|p| p.get("hotpluggable")).cloned();
                let mut pvc = json!({"claimName": new});
                if let Some(h) = hot {
                    pvc["hotpluggable"] = h;
                }
                m.insert("persistentVolumeClaim".into(), pvc);
            }
        }
    }
    if new_macs {
        if let Some(ifs) = spec.pointer_mut("/template/spec/domain/devices/interfaces").and_then(Value::as_array_mut) {
            for i in ifs.iter_mut() {
                if let Some(m) = i.as_object_mut() {
                    m.remove("macAddress");
                }
            }
        }
        if let Some(fw) = spec.pointer_mut("/template/spec/domain/firmware").and_then(Value::as_object_mut) {
            fw.remove("uuid");
            fw.remove("serial");
        }
    }
    spec
}

struct Schedules {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

/// What a schedule does now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Make a backup now.
    pub run: bool,
    /// Its backups to delete (older than the newest `retain`).
    pub prune: Vec<String>,
    /// Failures in a row since it last ran well (or was resumed).
    pub failures: u32,
    /// It has failed `maxFailure` times in a row: suspend it.
    pub suspend: bool,
    pub next: Option<chrono::DateTime<Utc>>,
}

/// One backup of a schedule as the planner sees it: name, creation time,
/// and whether it is ready, failed or still running.
#[derive(Clone, Debug, PartialEq)]
pub struct Made {
    pub name: String,
    pub created: chrono::DateTime<Utc>,
    pub ready: bool,
    pub failed: bool,
}

/// The schedule's next step, from its backups (any order), when it last
/// ran, since when it counts failures (its creation or last resume),
/// and now.
pub fn plan(
    cron: &sheaf_types::cron::Cron,
    retain: u32,
    max_failure: u32,
    made: &[Made],
    last_run: chrono::DateTime<Utc>,
    counting_since: chrono::DateTime<Utc>,
    now: chrono::DateTime<Utc>,
) -> Plan {
    let mut made = made.to_vec();
    made.sort_by_key(|m| std::cmp::Reverse(m.created));
    let failures =
        made.iter().filter(|m| m.created >= counting_since).take_while(|m| !m.ready).filter(|m| m.failed).count()
            as u32;
    // Keep the newest `retain` ready ones; failed ones go once something
    // newer is ready; one in progress is never touched.
    let mut kept = 0;
    let mut prune = Vec::new();
    let mut newer_ready = false;
    for m in &made {
        if m.ready {
            kept += 1;
            if kept > retain {
                prune.push(m.name.clone());
            }
            newer_ready = true;
        } else if m.failed && newer_ready {
            prune.push(m.name.clone());
        }
    }
    let running = made.iter().any(|m| !m.ready && !m.failed);
    let next = cron.next_after(last_run);
    let suspend = failures >= max_failure;
    let run = !suspend && !running && next.is_some_and(|n| n <= now);
    Plan { run, prune, failures, suspend, next }
}

#[async_trait::async_trait]
impl Reconciler for Schedules {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        use sheaf_types::vm_backup::{ScheduleVMBackup, SCHEDULE_LABEL};
        let typed = Typed::<ScheduleVMBackup>::new(self.api.as_ref());
        let Some(s) = typed.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if s.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let ns = s.metadata.namespace.as_deref();
        let name = name_of(&s.metadata);
        let Ok(cron) = sheaf_types::cron::Cron::parse(&s.spec.cron) else { return Ok(Action::Done) };
        let status = s.status.clone().unwrap_or_default();
        let created = s.metadata.creation_timestamp.map(|t| t.0).unwrap_or_else(Utc::now);
        let at = Utc::now();
        // A schedule suspended by failures and resumed by the user counts
        // failures afresh.
        let suspended_cond = status.conditions.iter().find(|c| c.type_ == "Suspended");
        let counting_since = suspended_cond
            .filter(|c| c.status == "False")
            .and_then(|c| c.last_transition_time)
            .map(|t| t.0)
            .unwrap_or(created);
        if !s.spec.suspend && status.suspended {
            let st = json!({"suspended": false, "failure": 0, "conditions": [{"type": "Suspended", "status": "False",
                "reason": "Resumed", "message": "resumed", "lastTransitionTime": now()}]});
            typed.merge_patch(ns, name, json!({"status": st}), true).await?;
            return Ok(Action::Done);
        }
        let sel = Selectors { labels: format!("{SCHEDULE_LABEL}={name}"), fields: String::new() };
        let vmbs = Typed::<VirtualMachineBackup>::new(self.api.as_ref()).list(ns, &sel).await?;
        let made: Vec<Made> = vmbs
            .iter()
            .filter(|b| b.metadata.deletion_timestamp.is_none())
            .map(|b| Made {
                name: name_of(&b.metadata).to_string(),
                created: b.metadata.creation_timestamp.map(|t| t.0).unwrap_or(at),
                ready: b.ready(),
                failed: b.status.as_ref().is_some_and(|st| st.error.is_some()),
            })
            .collect();
        let last_run = status.last_run.map(|t| t.0).unwrap_or(created);
        let p = plan(&cron, s.retain(), s.max_failure(), &made, last_run, counting_since, at);
        for old in &p.prune {
            tracing::info!(schedule = name, vm_backup = %old, "pruned by the schedule's retention");
            match Typed::<VirtualMachineBackup>::new(self.api.as_ref()).delete(ns, old).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let mut st = json!({"failure": p.failures, "nextRun": p.next.map(|t| Time(t.trunc_subsecs(0)))});
        if p.suspend && !status.suspended {
            let msg = format!("{} backups failed in a row; fix the cause, then set spec.suspend to false", p.failures);
            self.events.record(&reference_to(&s), EventType::Warning, "ScheduleSuspended", msg.clone()).await;
            typed.merge_patch(ns, name, json!({"spec": {"suspend": true}}), false).await?;
            st["suspended"] = json!(true);
            st["conditions"] = json!([{"type": "Suspended", "status": "True", "reason": "TooManyFailures",
                "message": msg, "lastTransitionTime": now()}]);
        } else if s.spec.suspend {
            st["suspended"] = json!(true);
        } else if p.run {
            let stamp = at.format("%Y%m%d-%H%M%S").to_string();
            let bname = joined(name, &stamp);
            let mut annotations = serde_json::Map::new();
            if let Some(t) = s.metadata.annotations.get(TARGET_ANNOTATION) {
                annotations.insert(TARGET_ANNOTATION.into(), json!(t));
            }
            let obj = json!({
                "apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineBackup",
                "metadata": {"name": bname, "namespace": ns, "labels": {SCHEDULE_LABEL: name}, "annotations": annotations},
                "spec": s.spec.vmbackup,
            });
            match self.api.create(Gvr::of::<VirtualMachineBackup>(), ns, obj).await {
                Ok(_) | Err(ClientError { code: 409, .. }) => {}
                Err(e) => return Err(e),
            }
            tracing::info!(schedule = name, vm_backup = %bname, "scheduled backup made");
            st["lastRun"] = json!(Time(at.trunc_subsecs(0)));
            st["nextRun"] = json!(cron.next_after(at).map(|t| Time(t.trunc_subsecs(0))));
        }
        st["vmbackupInfo"] = json!(vmbs
            .iter()
            .map(|b| json!({"name": b.metadata.name, "readyToUse": b.ready(),
                "error": b.status.as_ref().and_then(|x| x.error.clone())}))
            .collect::<Vec<_>>());
        typed.merge_patch(ns, name, json!({"status": st}), true).await?;
        let wait = p.next.and_then(|n| (n - at).to_std().ok()).unwrap_or(Duration::from_secs(60));
        Ok(Action::RequeueAfter(wait.clamp(Duration::from_secs(1), Duration::from_secs(60))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).single().expect("time")
    }

    fn made(name: &str, at: chrono::DateTime<Utc>, ready: bool, failed: bool) -> Made {
        Made { name: name.into(), created: at, ready, failed }
    }

    #[test]
    fn schedules_run_on_time_keep_the_newest_and_suspend_after_failures() {
        let hourly = sheaf_types::cron::Cron::parse("0 * * * *").expect("cron");
        // Not yet, then due.
        let p = plan(&hourly, 2, 3, &[], t(9, 10), t(9, 0), t(9, 59));
        assert!(!p.run);
        assert_eq!(p.next, Some(t(10, 0)));
        assert!(plan(&hourly, 2, 3, &[], t(9, 10), t(9, 0), t(10, 0)).run);
        // Retention: the newest two ready ones stay; a failed one older
        // than a ready one goes; one in progress blocks the next run.
        let list = [
            made("a", t(6, 0), true, false),
            made("b", t(7, 0), false, true),
            made("c", t(8, 0), true, false),
            made("d", t(9, 0), true, false),
            made("e", t(10, 0), false, false),
        ];
        let p = plan(&hourly, 2, 3, &list, t(10, 0), t(5, 0), t(11, 0));
        assert_eq!(p.prune, ["b", "a"]);
        assert!(!p.run, "a backup is still running");
        // Failures in a row suspend it; those before a resume do not count.
        let failing =
            [made("f1", t(6, 0), false, true), made("f2", t(7, 0), false, true), made("f3", t(8, 0), false, true)];
        let p = plan(&hourly, 2, 3, &failing, t(8, 0), t(5, 0), t(9, 0));
        assert_eq!((p.failures, p.suspend, p.run), (3, true, false));
        let p = plan(&hourly, 2, 3, &failing, t(8, 0), t(7, 30), t(9, 0));
        assert_eq!((p.failures, p.suspend, p.run), (1, false, true));
        let ok_after = [made("f1", t(6, 0), false, true), made("ok", t(7, 0), true, false)];
        assert_eq!(plan(&hourly, 2, 3, &ok_after, t(7, 0), t(5, 0), t(7, 30)).failures, 0);
    }

    #[test]
    fn a_restored_spec_uses_the_new_volumes_and_a_new_identity() {
        let spec = json!({
            "runStrategy": "Always",
            "dataVolumeTemplates": [{"metadata": {"name": "root"}}],
            "template": {"spec": {
                "domain": {"firmware": {"uuid": "u"}, "devices": {"interfaces": [{"name": "default", "macAddress": "02:00:00:00:00:01"}]}},
                "volumes": [
                    {"name": "root", "dataVolume": {"name": "root"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "cloudinit", "cloudInitNoCloud": {"userData": "x"}},
                ],
            }},
        });
        let renames = BTreeMap::from([
            ("root".to_string(), "new-root".to_string()),
            ("data".to_string(), "new-data".to_string()),
        ]);
        let out = restored_spec(&spec, &renames, true);
        assert!(out.get("dataVolumeTemplates").is_none());
        assert_eq!(out.pointer("/template/spec/volumes/0/persistentVolumeClaim/claimName"), Some(&json!("new-root")));
        assert!(out.pointer("/template/spec/volumes/0/dataVolume").is_none());
        assert_eq!(out.pointer("/template/spec/volumes/1/persistentVolumeClaim/claimName"), Some(&json!("new-data")));
        assert_eq!(out.pointer("/template/spec/volumes/2/cloudInitNoCloud/userData"), Some(&json!("x")));
        assert!(out.pointer("/template/spec/domain/devices/interfaces/0/macAddress").is_none());
        assert!(out.pointer("/template/spec/domain/firmware/uuid").is_none());
        let kept = restored_spec(&spec, &renames, false);
        assert_eq!(
            kept.pointer("/template/spec/domain/devices/interfaces/0/macAddress"),
            Some(&json!("02:00:00:00:00:01"))
        );
    }
}
