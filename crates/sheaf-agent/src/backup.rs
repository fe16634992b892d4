//! This node's part of backups (docs/design/backups.md): it runs the
//! Backups the controller gave it (`status.nodeName`), reading the
//! snapshot from its own replica of the volume, and fills volumes from
//! backups ([`restore`], called by the volume's detached pass).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{json, Value};
use sheaf_backup::blk::{EngineSink, SnapshotSource};
use sheaf_backup::volume::{self, Job, Parent, Progress};
use sheaf_backup::{manifest::VolumeRef, Repository, VolumeManifest};
use sheaf_blk::engine::Engine;
use sheaf_client::{Gvr, Selectors, Typed, WatchEvent};
use sheaf_types::backup::{Backup, TARGET_LABEL};
use sheaf_types::storage::{Volume, VolumeSnapshot};
use sheaf_types::Time;

use crate::storage::Storage;

/// Connections to the replica a backup reads through at once.
const READERS: usize = 4;
/// Attempts of a backup whose target or replica fails before it is
/// marked Failed.
const ATTEMPTS: u32 = 3;

/// Runs the Backups bound to this node until dropped.
pub async fn run(storage: Arc<Storage>) {
    let api = storage.api();
    let node = storage.node().to_string();
    let gvr = Gvr::of::<Backup>();
    let sel = Selectors { labels: String::new(), fields: format!("status.nodeName={node}") };
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let (items, rv) = match api.list(gvr, None, &sel).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this node's backups; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        for item in items {
            consider(&storage, &mut tasks, item);
        }
        let mut stream = match api.watch(gvr, None, &sel, &rv).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch this node's backups; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => consider(&storage, &mut tasks, o),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

fn consider(storage: &Arc<Storage>, tasks: &mut HashMap<String, tokio::task::JoinHandle<()>>, obj: Value) {
    tasks.retain(|_, t| !t.is_finished());
    let Ok(b) = serde_json::from_value::<Backup>(obj) else { return };
    let Some(uid) = b.metadata.uid.clone() else { return };
    // Pending: bound here and not started; InProgress: this agent was
    // restarted while it ran (it runs again; chunks already sent are
    // found on the target).
    if !matches!(b.phase(), "Pending" | "InProgress")
        || b.metadata.deletion_timestamp.is_some()
        || tasks.contains_key(&uid)
    {
        return;
    }
    let storage = storage.clone();
    tasks.insert(uid, tokio::spawn(async move { run_one(storage, b).await }));
}

fn name_of(b: &Backup) -> (Option<String>, String) {
    (b.metadata.namespace.clone(), b.metadata.name.clone().unwrap_or_default())
}

async fn patch(storage: &Storage, b: &Backup, status: Value) -> bool {
    let (ns, name) = name_of(b);
    let patch = json!({"metadata": {"uid": b.metadata.uid}, "status": status});
    match Typed::<Backup>::new(storage.api().as_ref()).merge_patch(ns.as_deref(), &name, patch, true).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(backup = %name, error = %e, "cannot record the backup's progress");
            false
        }
    }
}

async fn run_one(storage: Arc<Storage>, b: Backup) {
    let (ns, name) = name_of(&b);
    let start = b.status.as_ref().and_then(|s| s.start_time).unwrap_or_else(Time::now);
    if !patch(&storage, &b, json!({"phase": "InProgress", "startTime": start, "error": null})).await {
        return;
    }
    tracing::info!(ns = ?ns, backup = %name, "backup started");
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match attempt_one(&storage, &b).await {
            Ok((m, key)) => {
                tracing::info!(
                    backup = %name, read = m.stats.bytes_read, uploaded = m.stats.bytes_uploaded,
                    new = m.stats.chunks_new, reused = m.stats.chunks_reused, unchanged = m.stats.chunks_unchanged,
                    "backup completed"
                );
                patch(&storage, &b, m.backup_status(&key)).await;
                return;
            }
            Err(Retry::Elsewhere(why)) => {
                // Not this node's to do any more: the controller chooses again.
                tracing::warn!(backup = %name, why, "the backup cannot run on this node");
                patch(&storage, &b, json!({"phase": "Pending", "nodeName": null, "error": why})).await;
                return;
            }
            Err(Retry::Fatal(why)) => {
                last = why;
                break;
            }
            Err(Retry::Again(why)) => {
                tracing::warn!(backup = %name, attempt, error = %why, "backup attempt failed");
                last = why;
                if attempt < ATTEMPTS {
                    patch(&storage, &b, json!({"error": format!("attempt {attempt} failed, retrying: {last}")})).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }
    patch(&storage, &b, json!({"phase": "Failed", "error": last, "completionTime": Time::now()})).await;
}

enum Retry {
    Again(String),
    Elsewhere(String),
    Fatal(String),
}

/// One run of backup `b`: the manifest and its key.
async fn attempt_one(storage: &Arc<Storage>, b: &Backup) -> Result<(VolumeManifest, String), Retry> {
    let api = storage.api();
    let (ns, name) = name_of(b);
    let status = b.status.clone().unwrap_or_default();
    let (_, repo) = sheaf_backup::target::open_named(api.as_ref(), &b.spec.target).await.map_err(Retry::Again)?;
    let snaps = Typed::<VolumeSnapshot>::new(api.as_ref());
    let snap_name = status.snapshot_name.clone().unwrap_or_default();
    let snap = snaps
        .get(ns.as_deref(), &snap_name)
        .await
        .map_err(|e| Retry::Again(e.to_string()))?
        .ok_or_else(|| Retry::Fatal(format!("VolumeSnapshot {snap_name} is gone")))?;
    let vol = Typed::<Volume>::new(api.as_ref())
        .get(ns.as_deref(), &b.spec.volume_name)
        .await
        .map_err(|e| Retry::Again(e.to_string()))?
        .ok_or_else(|| Retry::Fatal(format!("Volume {} is gone", b.spec.volume_name)))?;
    let size = snap.status.as_ref().and_then(|s| s.size).map(|s| s as u64).or(status.size).unwrap_or(0);
    if size == 0 {
        return Err(Retry::Fatal(format!("VolumeSnapshot {snap_name} has no size")));
    }
    let replicas = storage.replicas_of(&vol).await.map_err(Retry::Again)?;
    let local = replicas
        .iter()
        .filter(|r| r.spec.node_name == storage.node() && Storage::running(r))
        .find_map(|r| storage.address_of(r))
        .ok_or_else(|| Retry::Elsewhere(format!("no running replica of volume {} on this node", b.spec.volume_name)))?;
    let layer = snap.layer_name();
    let source = SnapshotSource::open(&local, &layer, storage.cluster_key().as_ref(), size, READERS)
        .await
        .map_err(|e| Retry::Again(format!("opening the snapshot on the local replica: {e}")))?;
    let parent = match &status.parent {
        Some(p) => parent_of(storage, &repo, ns.as_deref(), p).await,
        None => None,
    };
    let mut labels = b.metadata.labels.clone();
    labels.remove(TARGET_LABEL);
    let job = Job {
        name: name.clone(),
        volume: VolumeRef {
            namespace: ns.clone().unwrap_or_else(|| "default".into()),
            name: b.spec.volume_name.clone(),
            uid: vol.metadata.uid.clone().unwrap_or_default(),
            size,
        },
        snapshot: layer,
        parent,
        labels,
    };
    let latest: Arc<Mutex<Progress>> = Arc::default();
    let ticker = {
        let (storage, b, latest) = (storage.clone(), b.clone(), latest.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let p = latest.lock().map(|p| p.clone()).unwrap_or_default();
                let percent = (p.done * 100).checked_div(p.total).unwrap_or(0);
                patch(
                    &storage,
                    &b,
                    json!({
                        "progress": percent, "bytesRead": p.stats.bytes_read, "bytesUploaded": p.stats.bytes_uploaded,
                        "chunksNew": p.stats.chunks_new, "chunksReused": p.stats.chunks_reused,
                        "chunksUnchanged": p.stats.chunks_unchanged,
                    }),
                )
                .await;
            }
        })
    };
    let l2 = latest.clone();
    let result = volume::backup(&repo, &source, job, &move |p| {
        if let Ok(mut l) = l2.lock() {
            *l = p.clone();
        }
    })
    .await;
    ticker.abort();
    let m = result.map_err(Retry::Again)?;
    let key = m.key();
    Ok((m, key))
}

/// The parent backup's manifest and snapshot, when both are still there.
async fn parent_of(storage: &Storage, repo: &Repository, ns: Option<&str>, parent: &str) -> Option<Parent> {
    let api = storage.api();
    let pb = Typed::<Backup>::new(api.as_ref()).get(ns, parent).await.ok().flatten()?;
    let ps = pb.status.as_ref()?;
    let key = ps.manifest.clone()?;
    let snap = Typed::<VolumeSnapshot>::new(api.as_ref()).get(ns, ps.snapshot_name.as_deref()?).await.ok().flatten()?;
    match repo.manifest(&key).await {
        Ok(Some(m)) => Some(Parent { manifest: m, snapshot: snap.layer_name() }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(parent, error = %e, "the parent backup's manifest is unreadable; backing up everything");
            None
        }
    }
}

/// Fills the (new, blank) volume behind `engine` with Backup `from`
/// (namespace `ns`); `progress` gets 0–100. Returns the bytes written.
pub async fn restore(
    storage: &Storage,
    engine: &Engine,
    ns: Option<&str>,
    from: &str,
    progress: &(dyn Fn(u32) + Send + Sync),
) -> Result<u64, String> {
    let api = storage.api();
    let b = Typed::<Backup>::new(api.as_ref())
        .get(ns, from)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("Backup {from:?} does not exist"))?;
    if !b.completed() {
        return Err(format!("Backup {from:?} is not completed (phase {:?})", b.phase()));
    }
    let key =
        b.status.as_ref().and_then(|s| s.manifest.clone()).ok_or_else(|| format!("Backup {from:?} has no manifest"))?;
    let (_, repo) = sheaf_backup::target::open_named(api.as_ref(), &b.spec.target).await?;
    let m = repo
        .manifest(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the backup's manifest {key} is not on target {}", b.spec.target))?;
    if engine.size() < m.volume.size {
        return Err(format!(
            "the volume ({} bytes) is smaller than the backup ({} bytes): make it at least that large",
            engine.size(),
            m.volume.size
        ));
    }
    volume::restore(&repo, &m, &EngineSink(engine), &|done, total| progress((done * 100 / total.max(1)) as u32)).await
}
