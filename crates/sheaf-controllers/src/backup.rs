//! Backups (docs/design/backups.md):
//!
//! - **targets**: checks each BackupTarget every `pollInterval` (write,
//!   read, delete an object), reports it in its status, and turns the
//!   manifests it finds there that no Backup stands for into Backups
//!   (taken by another cluster, or before this one lost its objects).
//! - **backups**: resolves a new Backup (volume, target, snapshot, the
//!   node that reads it, the parent it builds on) for that node's agent
//!   to run; keeps only the newest backup's snapshot of a volume; runs
//!   verifications; removes a deleted Backup's manifest from its target.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};
use sheaf_backup::manifest::VolumeManifest;
use sheaf_backup::Repository;
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::backup::{
    Backup, BackupTarget, BACKUP_FINALIZER, BACKUP_LABEL, GC_ANNOTATION, IMPORTED_ANNOTATION, TARGET_LABEL,
    VERIFY_ANNOTATION,
};
use sheaf_types::core::{Namespace, Node};
use sheaf_types::meta::{set_condition, Condition, ObjectMeta, Time};
use sheaf_types::storage::{Replica, Volume, VolumeSnapshot, VOLUME_LABEL};

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Change, Controller, ObjectKey, Reconciler};
use crate::scheduler::node_ready;

const COMPONENT: &str = "sheaf-backup-controller";
/// How often a Backup waiting for something is looked at again.
const WAIT: Duration = Duration::from_secs(5);
/// Chunks younger than this are never collected (a backup may be
/// writing them).
pub const GC_MIN_AGE_SECS: i64 = 3600;

pub async fn run(api: Arc<dyn Api>) {
    let targets = Targets { api: api.clone(), events: EventRecorder::new(api.clone(), COMPONENT) };
    let backups = Backups { api: api.clone(), events: EventRecorder::new(api.clone(), COMPONENT) };
    let by_volume = |_: Change, obj: &Value, store: &crate::runtime::Store| {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
        let vol = obj
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .or_else(|| {
                obj.pointer(&format!("/metadata/labels/{}", VOLUME_LABEL.replace('/', "~1"))).and_then(Value::as_str)
            })
            .unwrap_or_default()
            .to_string();
        store.keys_where(|b| {
            b.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string) == ns
                && b.pointer("/spec/volumeName").and_then(Value::as_str) == Some(vol.as_str())
        })
    };
    tokio::join!(
        Controller::new("backup-target", api.clone(), Gvr::of::<BackupTarget>())
            .resync_every(Duration::from_secs(60))
            .run(Arc::new(targets)),
        Controller::new("backup", api.clone(), Gvr::of::<Backup>())
            .watches(Gvr::of::<VolumeSnapshot>(), by_volume)
            .watches(Gvr::of::<Replica>(), by_volume)
            .watches(Gvr::of::<BackupTarget>(), |_: Change, t: &Value, store| {
                let name = t.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                store.keys_where(|b| b.pointer("/spec/target").and_then(Value::as_str) == Some(name.as_str()))
            })
            .workers(4)
            .resync_every(Duration::from_secs(30))
            .run(Arc::new(backups)),
    );
}

fn now() -> Time {
    Time(Utc::now().trunc_subsecs(0))
}

fn name_of(m: &ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or_default()
}

struct Targets {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

#[async_trait::async_trait]
impl Reconciler for Targets {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let targets = Typed::<BackupTarget>::new(self.api.as_ref());
        let Some(t) = targets.get(None, &key.name).await? else { return Ok(Action::Done) };
        if t.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let poll = t.poll_interval();
        let checked = match sheaf_backup::target::open(self.api.as_ref(), &t).await {
            Err(e) => Err((None, e)),
            Ok(repo) => {
                let url = repo.store().describe();
                match repo.check().await {
                    Err(e) => Err((Some(url), e.to_string())),
                    Ok(()) => Ok((url, repo)),
                }
            }
        };
        let was_available = t.status.as_ref().is_some_and(|s| s.available);
        let mut conditions = t.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let mut available = |status: &str, reason: &str, message: &str| {
            let c = Condition {
                type_: "Available".into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..Default::default()
            };
            set_condition(&mut conditions, c, now());
            conditions.clone()
        };
        let status = match checked {
            Err((url, message)) => {
                if was_available || t.status.is_none() {
                    self.events
                        .record(&reference_to(&t), EventType::Warning, "TargetUnavailable", message.clone())
                        .await;
                }
                json!({
                    "available": false, "url": url, "lastChecked": now(), "message": message, "backups": null,
                    "conditions": available("False", "CheckFailed", &message),
                })
            }
            Ok((url, repo)) => {
                let (count, message) = match self.import(&t, &repo).await {
                    Ok(n) => {
                        let vms = crate::vm_backup::import(self.api.as_ref(), &key.name, &repo).await;
                        (Some(n), vms.err().map(|e| format!("cannot list the VM backups: {e}")))
                    }
                    Err(e) => (None, Some(format!("cannot list the backups: {e}"))),
                };
                let gc = self.collect(&t, &repo).await?;
                json!({
                    "available": true, "url": url, "lastChecked": now(), "backups": count, "message": message,
                    "garbageCollection": gc,
                    "conditions": available("True", "Checked", "objects can be written, read and deleted"),
                })
            }
        };
        targets.merge_patch(None, &key.name, json!({"status": status}), true).await?;
        Ok(Action::RequeueAfter(poll))
    }
}

/// How often a target's garbage is collected unasked.
const GC_EVERY: Duration = Duration::from_secs(3600);

impl Targets {
    /// Collects the target's garbage when asked (annotation) or due; the
    /// new `status.garbageCollection`, or the old one (or null).
    async fn collect(&self, t: &BackupTarget, repo: &Repository) -> Result<Value, ClientError> {
        let last = t.status.as_ref().and_then(|s| s.garbage_collection.clone());
        let asked = t
            .metadata
            .annotations
            .get(GC_ANNOTATION)
            .filter(|r| last.as_ref().and_then(|l| l.request.as_ref()) != Some(*r));
        let due = last
            .as_ref()
            .and_then(|l| l.time)
            .is_none_or(|at| Utc::now().signed_duration_since(at.0).to_std().unwrap_or_default() > GC_EVERY);
        if asked.is_none() && !due {
            return Ok(serde_json::to_value(last).unwrap_or(Value::Null));
        }
        // Chunks of a backup being written are named by no manifest yet:
        // while one runs, only old chunks are collected.
        let tname = name_of(&t.metadata);
        let sel = Selectors { labels: format!("{TARGET_LABEL}={tname}"), fields: String::new() };
        let backups = Typed::<Backup>::new(self.api.as_ref()).list(None, &sel).await?;
        let busy = backups.iter().any(|b| matches!(b.phase(), "" | "Pending" | "InProgress"));
        let min_age = if busy { GC_MIN_AGE_SECS } else { 0 };
        let (report, message) = match repo.gc(min_age).await {
            Ok(r) => {
                let msg = format!(
                    "{} unused chunks deleted ({} bytes), {} kept{}",
                    r.chunks_deleted,
                    r.bytes_deleted,
                    r.chunks_kept,
                    if busy { "; a backup was running, so only chunks older than an hour were looked at" } else { "" }
                );
                if r.chunks_deleted > 0 {
                    tracing::info!(
                        target = tname,
                        deleted = r.chunks_deleted,
                        bytes = r.bytes_deleted,
                        "garbage collected"
                    );
                }
                (r, msg)
            }
            Err(e) => (Default::default(), format!("garbage collection failed: {e}")),
        };
        Ok(json!({
            "time": now(), "request": asked.or(last.as_ref().and_then(|l| l.request.as_ref())),
            "chunksDeleted": report.chunks_deleted, "bytesDeleted": report.bytes_deleted,
            "chunksKept": report.chunks_kept, "message": message,
        }))
    }

    /// Makes a Backup for each manifest on the target that has none;
    /// returns how many manifests there are.
    async fn import(&self, t: &BackupTarget, repo: &Repository) -> Result<u64, String> {
        let tname = name_of(&t.metadata);
        let manifests = repo.manifests().await.map_err(|e| e.to_string())?;
        let backups = Typed::<Backup>::new(self.api.as_ref());
        let namespaces = Typed::<Namespace>::new(self.api.as_ref());
        let mut count = 0;
        // Backups imported from the target whose manifest is gone from it
        // (deleted by another cluster) go too.
        let keys: std::collections::HashSet<&str> = manifests.iter().map(|(k, _)| k.as_str()).collect();
        let sel = Selectors { labels: format!("{TARGET_LABEL}={tname}"), fields: String::new() };
        for b in backups.list(None, &sel).await.map_err(|e| e.to_string())? {
            let imported = b.metadata.annotations.contains_key(IMPORTED_ANNOTATION);
            let key = b.status.as_ref().and_then(|s| s.manifest.clone()).unwrap_or_default();
            if imported && b.completed() && !keys.contains(key.as_str()) && b.metadata.deletion_timestamp.is_none() {
                tracing::info!(target = tname, key, "an imported backup is gone from its target");
                let _ = backups.delete(b.metadata.namespace.as_deref(), name_of(&b.metadata)).await;
            }
        }
        for (key, m) in manifests {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(target = tname, key, error = %e, "unreadable manifest on the backup target");
                    continue;
                }
            };
            count += 1;
            let ns = m.volume.namespace.as_str();
            match backups.get(Some(ns), &m.name).await {
                // Made by an earlier pass whose status write did not happen.
                Ok(Some(b)) if b.metadata.annotations.contains_key(IMPORTED_ANNOTATION) && !b.completed() => {
                    let status = json!({"status": m.backup_status(&key)});
                    let _ = self.api.merge_patch(Gvr::of::<Backup>(), Some(ns), &m.name, status, true).await;
                    continue;
                }
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            let namespace = namespaces.get(None, ns).await.map_err(|e| e.to_string())?;
            if namespace.is_none_or(|n| n.metadata.deletion_timestamp.is_some()) {
                tracing::debug!(target = tname, key, "the namespace of a backup on the target does not exist here");
                continue;
            }
            if let Err(e) = self.import_one(tname, &key, &m).await {
                tracing::warn!(target = tname, key, error = %e, "cannot import a backup found on the target");
            }
        }
        Ok(count)
    }

    async fn import_one(&self, tname: &str, key: &str, m: &VolumeManifest) -> Result<(), ClientError> {
        let mut labels: serde_json::Map<String, Value> =
            m.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        labels.insert(TARGET_LABEL.into(), tname.into());
        let obj = json!({
            "apiVersion": "sheaf.io/v1alpha1", "kind": "Backup",
            "metadata": {
                "name": m.name, "namespace": m.volume.namespace, "labels": labels,
                "annotations": {IMPORTED_ANNOTATION: "true"}, "finalizers": [BACKUP_FINALIZER],
            },
            "spec": {"volumeName": m.volume.name, "target": tname},
        });
        let gvr = Gvr::of::<Backup>();
        let ns = Some(m.volume.namespace.as_str());
        match self.api.create(gvr, ns, obj).await {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => return Ok(()),
            Err(e) => return Err(e),
        }
        let status = json!({"status": m.backup_status(key)});
        self.api.merge_patch(gvr, ns, &m.name, status, true).await?;
        tracing::info!(target = tname, key, "backup found on the target");
        Ok(())
    }
}

struct Backups {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

fn completion_time(b: &Backup) -> Option<Time> {
    b.status.as_ref().and_then(|s| s.completion_time)
}

/// The `status.verification` of a verification.
fn verification(
    request: &str,
    phase: &str,
    progress: u32,
    checked: u64,
    bad: &[String],
    count: u64,
    message: Option<String>,
) -> Value {
    json!({"verification": {
        "request": request, "phase": phase, "progress": progress, "chunksChecked": checked,
        "badChunks": bad, "badCount": count, "time": now(), "message": message,
    }})
}

/// The name of the VolumeSnapshot Sheaf takes for Backup `name`.
pub fn snapshot_name(backup: &str) -> String {
    joined("backup", backup)
}

/// `A-B` as an object name: at most 253 characters, not ending in `-` or
/// `.`.
pub(crate) fn joined(a: &str, b: &str) -> String {
    let mut n = format!("{a}-{b}");
    n.truncate(253);
    n.trim_end_matches(['-', '.']).to_string()
}

#[async_trait::async_trait]
impl Reconciler for Backups {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let backups = Typed::<Backup>::new(self.api.as_ref());
        let Some(b) = backups.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if b.metadata.deletion_timestamp.is_some() {
            return self.delete(&b).await;
        }
        if !b.metadata.finalizers.iter().any(|f| f == BACKUP_FINALIZER)
            || b.metadata.labels.get(TARGET_LABEL) != Some(&b.spec.target)
        {
            let mut finalizers = b.metadata.finalizers.clone();
            if !finalizers.iter().any(|f| f == BACKUP_FINALIZER) {
                finalizers.push(BACKUP_FINALIZER.into());
            }
            let patch = json!({"metadata": {
                "finalizers": finalizers, "labels": {TARGET_LABEL: b.spec.target},
                "resourceVersion": b.metadata.resource_version,
            }});
            backups.merge_patch(key.namespace(), &key.name, patch, false).await?;
            return Ok(Action::Done);
        }
        match b.phase() {
            // Found on the target: the import writes its status.
            _ if b.metadata.annotations.contains_key(IMPORTED_ANNOTATION) && !b.completed() => Ok(Action::Done),
            "Completed" => {
                self.keep_newest_snapshot(&b).await?;
                self.verify(&b).await
            }
            "Failed" | "InProgress" => Ok(Action::Done),
            _ if b.status.as_ref().is_some_and(|s| s.node_name.is_some()) => Ok(Action::Done),
            _ => self.resolve(&b).await,
        }
    }
}

impl Backups {
    async fn set_status(&self, b: &Backup, status: Value) -> Result<(), ClientError> {
        let patch = json!({"metadata": {"uid": b.metadata.uid}, "status": status});
        Typed::<Backup>::new(self.api.as_ref())
            .merge_patch(b.metadata.namespace.as_deref(), name_of(&b.metadata), patch, true)
            .await
            .map(drop)
    }

    async fn fail(&self, b: &Backup, message: String) -> Result<Action, ClientError> {
        self.events.record(&reference_to(b), EventType::Warning, "BackupFailed", message.clone()).await;
        self.set_status(b, json!({"phase": "Failed", "error": message, "completionTime": now()})).await?;
        Ok(Action::Done)
    }

    async fn waiting(&self, b: &Backup, message: String) -> Result<Action, ClientError> {
        if b.status.as_ref().and_then(|s| s.error.as_ref()) != Some(&message) {
            self.set_status(b, json!({"phase": "Pending", "error": message})).await?;
        }
        Ok(Action::RequeueAfter(WAIT))
    }

    /// Volume, target, snapshot, node and parent of a new Backup.
    async fn resolve(&self, b: &Backup) -> Result<Action, ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let name = name_of(&b.metadata);
        let Some(vol) = Typed::<Volume>::new(self.api.as_ref()).get(ns, &b.spec.volume_name).await? else {
            return self.fail(b, format!("Volume {} does not exist", b.spec.volume_name)).await;
        };
        let Some(target) = Typed::<BackupTarget>::new(self.api.as_ref()).get(None, &b.spec.target).await? else {
            return self
                .waiting(b, format!("BackupTarget {} does not exist (kubectl get backuptargets)", b.spec.target))
                .await;
        };
        match target.status.as_ref() {
            Some(s) if s.available => {}
            Some(s) => {
                let why = s.message.clone().unwrap_or_default();
                return self.waiting(b, format!("BackupTarget {} is not available: {why}", b.spec.target)).await;
            }
            None => return self.waiting(b, format!("BackupTarget {} has not been checked yet", b.spec.target)).await,
        }
        // The snapshot.
        let snaps = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let snap_name = b.spec.snapshot_name.clone().unwrap_or_else(|| snapshot_name(name));
        let snap = match snaps.get(ns, &snap_name).await? {
            Some(s) if s.spec.volume_name != b.spec.volume_name => {
                return self
                    .fail(
                        b,
                        format!(
                            "VolumeSnapshot {snap_name} is a snapshot of {}, not of {}",
                            s.spec.volume_name, b.spec.volume_name
                        ),
                    )
                    .await;
            }
            Some(s) => s,
            None if b.spec.snapshot_name.is_some() => {
                return self.fail(b, format!("VolumeSnapshot {snap_name} does not exist")).await;
            }
            None => {
                let s = VolumeSnapshot {
                    metadata: ObjectMeta {
                        name: Some(snap_name.clone()),
                        namespace: b.metadata.namespace.clone(),
                        labels: [
                            (VOLUME_LABEL.to_string(), b.spec.volume_name.clone()),
                            (BACKUP_LABEL.to_string(), name.to_string()),
                        ]
                        .into(),
                        ..Default::default()
                    },
                    spec: sheaf_types::storage::VolumeSnapshotSpec { volume_name: b.spec.volume_name.clone() },
                    status: None,
                };
                match snaps.create(&s).await {
                    Ok(_) | Err(ClientError { code: 409, .. }) => {}
                    Err(e) => return Err(e),
                }
                return self.waiting(b, format!("taking VolumeSnapshot {snap_name}")).await;
            }
        };
        let snap_status = snap.status.clone().unwrap_or_default();
        if let Some(e) = &snap_status.error {
            return self.fail(b, format!("VolumeSnapshot {snap_name} failed: {e}")).await;
        }
        if !snap_status.ready_to_use {
            return self.waiting(b, format!("waiting for VolumeSnapshot {snap_name} to be ready")).await;
        }
        // The node: one holding a running replica.
        let nodes = Typed::<Node>::new(self.api.as_ref()).list(None, &Selectors::default()).await?;
        let ready: Vec<String> =
            nodes.iter().filter(|x| node_ready(x)).map(|x| name_of(&x.metadata).to_string()).collect();
        let sel = Selectors { labels: format!("{VOLUME_LABEL}={}", b.spec.volume_name), fields: String::new() };
        let mut replicas = Typed::<Replica>::new(self.api.as_ref()).list(ns, &sel).await?;
        replicas.sort_by(|a, b| a.spec.node_name.cmp(&b.spec.node_name));
        let node = replicas
            .iter()
            .filter(|r| r.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Running"))
            .map(|r| r.spec.node_name.clone())
            .find(|n| ready.contains(n));
        let Some(node) = node else {
            return self
                .waiting(b, format!("no Ready node holds a running replica of volume {}", b.spec.volume_name))
                .await;
        };
        let parent = self.parent(b, &vol).await?;
        self.set_status(
            b,
            json!({
                "phase": "Pending", "nodeName": node, "snapshotName": snap_name,
                "volumeUid": vol.metadata.uid, "size": snap_status.size, "parent": parent, "error": null,
            }),
        )
        .await?;
        tracing::info!(backup = %format!("{}/{name}", ns.unwrap_or_default()), %node, parent = ?parent, "backup scheduled");
        Ok(Action::Done)
    }

    /// The newest completed backup of the same volume on the same target
    /// whose snapshot is still there.
    async fn parent(&self, b: &Backup, vol: &Volume) -> Result<Option<String>, ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let all = Typed::<Backup>::new(self.api.as_ref()).list(ns, &Selectors::default()).await?;
        let snaps = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let mut candidates: Vec<&Backup> = all
            .iter()
            .filter(|o| {
                o.metadata.name != b.metadata.name
                    && o.spec.volume_name == b.spec.volume_name
                    && o.spec.target == b.spec.target
                    && o.completed()
                    && o.metadata.deletion_timestamp.is_none()
                    && o.status.as_ref().and_then(|s| s.volume_uid.as_ref()) == vol.metadata.uid.as_ref()
            })
            .collect();
        candidates.sort_by_key(|o| std::cmp::Reverse(o.status.as_ref().and_then(|s| s.completion_time)));
        for c in candidates {
            let Some(sn) = c.status.as_ref().and_then(|s| s.snapshot_name.as_deref()) else { continue };
            if snaps.get(ns, sn).await?.is_some_and(|s| s.status.is_some_and(|st| st.ready_to_use)) {
                return Ok(c.metadata.name.clone());
            }
        }
        Ok(None)
    }

    /// Once `b` completed, the snapshots Sheaf took for older backups of
    /// the volume on the target go (only the newest is needed, for the
    /// next delta), unless a backup in progress builds on one.
    async fn keep_newest_snapshot(&self, b: &Backup) -> Result<(), ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let all = Typed::<Backup>::new(self.api.as_ref()).list(ns, &Selectors::default()).await?;
        let same: Vec<&Backup> =
            all.iter().filter(|o| o.spec.volume_name == b.spec.volume_name && o.spec.target == b.spec.target).collect();
        let newest = same.iter().filter(|o| o.completed()).max_by_key(|o| completion_time(o));
        if newest.map(|n| &n.metadata.name) != Some(&b.metadata.name) {
            return Ok(());
        }
        let in_use: Vec<String> = same
            .iter()
            .filter(|o| !o.completed() && o.phase() != "Failed")
            .filter_map(|o| o.status.as_ref().and_then(|s| s.parent.clone()))
            .collect();
        for o in same.iter().filter(|o| o.completed() && o.metadata.name != b.metadata.name) {
            if !in_use.iter().any(|n| n == name_of(&o.metadata)) {
                self.drop_own_snapshot(o, "a newer backup completed; its snapshot is no longer needed").await?;
            }
        }
        Ok(())
    }

    /// Deletes the VolumeSnapshot Sheaf took for `b` (its label names `b`;
    /// one the user gave is never touched), if it is still there.
    async fn drop_own_snapshot(&self, b: &Backup, why: &str) -> Result<(), ClientError> {
        let ns = b.metadata.namespace.as_deref();
        let name = name_of(&b.metadata);
        let snaps = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let sn = b.status.as_ref().and_then(|st| st.snapshot_name.clone()).unwrap_or_else(|| snapshot_name(name));
        let Some(s) = snaps.get(ns, &sn).await? else { return Ok(()) };
        if s.metadata.labels.get(BACKUP_LABEL).map(String::as_str) != Some(name)
            || s.metadata.deletion_timestamp.is_some()
        {
            return Ok(());
        }
        tracing::info!(snapshot = %sn, "{why}");
        match snaps.delete(ns, &sn).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs the verification the annotation asks for, if not done yet.
    async fn verify(&self, b: &Backup) -> Result<Action, ClientError> {
        let Some(request) = b.metadata.annotations.get(VERIFY_ANNOTATION) else { return Ok(Action::Done) };
        let status = b.status.clone().unwrap_or_default();
        if status.verification.as_ref().is_some_and(|v| &v.request == request && v.phase != "InProgress") {
            return Ok(Action::Done);
        }
        let key = status.manifest.clone().unwrap_or_default();
        let repo = match sheaf_backup::target::open_named(self.api.as_ref(), &b.spec.target).await {
            Ok((_, r)) => r,
            Err(e) => {
                self.set_status(b, verification(request, "Failed", 0, 0, &[], 0, Some(e))).await?;
                return Ok(Action::Done);
            }
        };
        let m = match repo.manifest(&key).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let msg = format!("the manifest {key} is not on the target any more");
                self.set_status(b, verification(request, "Failed", 0, 0, &[], 0, Some(msg))).await?;
                return Ok(Action::Done);
            }
            Err(e) => {
                self.set_status(b, verification(request, "Failed", 0, 0, &[], 0, Some(e.to_string()))).await?;
                return Ok(Action::Done);
            }
        };
        self.set_status(b, verification(request, "InProgress", 0, 0, &[], 0, None)).await?;
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let total = m.chunks.len().max(1) as u64;
        let ticker = {
            let (api, b2, done, request) = (self.api.clone(), b.clone(), done.clone(), request.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let p = (done.load(std::sync::atomic::Ordering::Relaxed) * 100 / total) as u32;
                    let patch = json!({"metadata": {"uid": b2.metadata.uid}, "status": {"verification": {
                        "request": request, "phase": "InProgress", "progress": p,
                    }}});
                    let _ = Typed::<Backup>::new(api.as_ref())
                        .merge_patch(b2.metadata.namespace.as_deref(), name_of(&b2.metadata), patch, true)
                        .await;
                }
            })
        };
        let d2 = done.clone();
        let r = repo.verify(&m, &move |n, _| d2.store(n, std::sync::atomic::Ordering::Relaxed)).await;
        ticker.abort();
        let bad: Vec<String> = r.bad.iter().take(20).map(|(i, id, why)| format!("{i}:{id}: {why}")).collect();
        let (phase, message) = if r.bad.is_empty() {
            ("Passed", format!("{} chunks read back and match their hashes", r.checked))
        } else {
            (
                "Failed",
                format!(
                    "{} of {} chunks are missing or corrupt: restoring this backup would fail",
                    r.bad.len(),
                    r.checked
                ),
            )
        };
        let kind = if r.bad.is_empty() { EventType::Normal } else { EventType::Warning };
        self.events.record(&reference_to(b), kind, &format!("Verification{phase}"), message.clone()).await;
        self.set_status(b, verification(request, phase, 100, r.checked, &bad, r.bad.len() as u64, Some(message)))
            .await?;
        Ok(Action::Done)
    }

    /// A deleted Backup: its manifest off the target, its snapshot gone,
    /// then the finalizer.
    async fn delete(&self, b: &Backup) -> Result<Action, ClientError> {
        if !b.metadata.finalizers.iter().any(|f| f == BACKUP_FINALIZER) {
            return Ok(Action::Done);
        }
        let ns = b.metadata.namespace.as_deref();
        let name = name_of(&b.metadata);
        match sheaf_backup::target::open_named(self.api.as_ref(), &b.spec.target).await {
            Ok((_, repo)) => {
                let key = b.status.as_ref().and_then(|s| s.manifest.clone()).unwrap_or_else(|| {
                    sheaf_backup::manifest::manifest_key(ns.unwrap_or("default"), &b.spec.volume_name, name)
                });
                if let Err(e) = repo.delete_manifest(&key).await {
                    let message = format!("cannot remove the backup from its target: {e}");
                    if b.status.as_ref().and_then(|s| s.error.as_ref()) != Some(&message) {
                        self.set_status(b, json!({"error": message})).await?;
                    }
                    return Ok(Action::RequeueAfter(WAIT));
                }
            }
            Err(e) if e.contains("does not exist") => {
                tracing::info!(backup = name, error = %e, "the backup's target is gone; its data is left where it is");
            }
            Err(e) => {
                if b.status.as_ref().and_then(|s| s.error.as_ref()) != Some(&e) {
                    self.set_status(b, json!({"error": e})).await?;
                }
                return Ok(Action::RequeueAfter(WAIT));
            }
        }
        self.drop_own_snapshot(b, "the backup is deleted; so is the snapshot taken for it").await?;
        let keep: Vec<&String> = b.metadata.finalizers.iter().filter(|f| *f != BACKUP_FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": b.metadata.resource_version}});
        Typed::<Backup>::new(self.api.as_ref()).merge_patch(ns, name, patch, false).await?;
        Ok(Action::Done)
    }
}
