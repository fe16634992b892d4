//! The trash: what happens to a Volume deleted while it has
//! VolumeSnapshots.
//!
//! The API server gives such a Volume the finalizer
//! [`TRASH_FINALIZER`] in the write that marks it deleted, so the Volume
//! and its Replicas (its data, the snapshots' layers included) stay. Its
//! node agents keep the replicas running and report `status.state:
//! Trashed`; no VM may attach it, but its snapshots can be cloned out
//! (`Volume.spec.fromSnapshot`, `sheaf volume clone`) or backed up.
//!
//! This controller:
//! - sets `status.purgeAt`: the deletion time plus the retention
//!   (`sheaf server --trash-retention`, 7 days by default);
//! - purges at `purgeAt`, or at once when the Volume is annotated
//!   `sheaf.io/purge: "true"` (`sheaf volume purge`, `sheaf volume delete
//!   --purge`): it deletes the volume's VolumeSnapshots and waits until
//!   they are gone (their agents merge their layers away as for any
//!   snapshot);
//! - once the volume has no VolumeSnapshot left (purged, or each deleted by
//!   the user), drops the finalizer: the Volume goes, then its Replicas
//!   and their data, as for a volume without snapshots.
//!
//! A deleted volume's backups are never touched: they live on their
//! target, independent of the volume.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::meta::Time;
use sheaf_types::storage::{Volume, VolumeSnapshot, TRASH_FINALIZER};

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Controller, ObjectKey, Reconciler};

const COMPONENT: &str = "sheaf-trash";

/// Runs the trash controller until the future is dropped.
pub async fn run(api: Arc<dyn Api>, retention: Duration) {
    Controller::new("trash", api.clone(), Gvr::of::<Volume>())
        .watches(Gvr::of::<VolumeSnapshot>(), |_, obj, _| {
            let ns = obj.pointer("/metadata/namespace").and_then(|v| v.as_str());
            match obj.pointer("/spec/volumeName").and_then(|v| v.as_str()) {
                Some(v) => vec![ObjectKey::new(ns, v)],
                None => Vec::new(),
            }
        })
        .resync_every(Duration::from_secs(300))
        .run(Arc::new(Trash { events: EventRecorder::new(api.clone(), COMPONENT), api, retention }))
        .await;
}

pub struct Trash {
    api: Arc<dyn Api>,
    events: EventRecorder,
    retention: Duration,
}

/// What to do with a trashed volume, `now`.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Wait until `purgeAt` (this long).
    Keep(Duration),
    /// Delete these snapshots (the ones not being deleted already), then
    /// wait for them to go.
    DeleteSnapshots(Vec<String>),
    /// Snapshots are being deleted: wait.
    Wait,
    /// Nothing left: let the volume go.
    Release,
}

fn step(purge: bool, due: Option<Duration>, snaps: &[&VolumeSnapshot]) -> Step {
    if snaps.is_empty() {
        return Step::Release;
    }
    match due {
        Some(left) if !purge => Step::Keep(left),
        _ => {
            let live: Vec<String> = snaps
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none())
                .filter_map(|s| s.metadata.name.clone())
                .collect();
            if live.is_empty() {
                Step::Wait
            } else {
                Step::DeleteSnapshots(live)
            }
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for Trash {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let volumes = Typed::<Volume>::new(self.api.as_ref());
        let Some(vol) = volumes.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if !vol.trashed() {
            return Ok(Action::Done);
        }
        let deleted = vol.metadata.deletion_timestamp.map(|t| t.0).unwrap_or_else(Utc::now);
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let purge_at = deleted.checked_add_signed(retention).unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
        let status_purge_at = vol.status.as_ref().and_then(|s| s.purge_at.as_ref()).map(|t| t.0);
        if status_purge_at != Some(purge_at) {
            let patch = json!({"status": {"purgeAt": Time(purge_at)}});
            volumes.merge_patch(key.namespace(), &key.name, patch, true).await?;
            let n = key.name.as_str();
            self.events
                .record(
                    &reference_to(&vol),
                    EventType::Normal,
                    "Trashed",
                    format!(
                        "volume {n} was deleted with its snapshots; it is kept in the trash until {} (clone a \
                         snapshot out with sheaf volume clone SNAPSHOT NEW; purge now with sheaf volume purge {n})",
                        purge_at.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                )
                .await;
        }
        let snapshots = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let all = snapshots.list(key.namespace(), &Selectors::default()).await?;
        let mine: Vec<&VolumeSnapshot> = all.iter().filter(|s| s.spec.volume_name == key.name).collect();
        let due = (purge_at - Utc::now()).to_std().ok().filter(|d| !d.is_zero());
        match step(vol.purge_asked(), due, &mine) {
            Step::Keep(left) => Ok(Action::RequeueAfter(left.min(Duration::from_secs(3600)))),
            Step::DeleteSnapshots(names) => {
                let why = if vol.purge_asked() { "purge asked" } else { "retention over" };
                tracing::info!(volume = %key, snapshots = ?names, why, "purging a volume from the trash");
                for n in &names {
                    match snapshots.delete(key.namespace(), n).await {
                        Err(e) if !e.is_not_found() => return Err(e),
                        _ => {}
                    }
                }
                Ok(Action::RequeueAfter(Duration::from_secs(2)))
            }
            Step::Wait => Ok(Action::RequeueAfter(Duration::from_secs(2))),
            Step::Release => {
                let keep: Vec<&String> = vol.metadata.finalizers.iter().filter(|f| *f != TRASH_FINALIZER).collect();
                volumes
                    .merge_patch(key.namespace(), &key.name, json!({"metadata": {"finalizers": keep}}), false)
                    .await?;
                tracing::info!(volume = %key, "volume left the trash: its replicas and their data go");
                Ok(Action::Done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheaf_types::meta::ObjectMeta;

    fn snap(name: &str, deleting: bool) -> VolumeSnapshot {
        VolumeSnapshot {
            metadata: ObjectMeta {
                name: Some(name.into()),
                deletion_timestamp: deleting.then(Time::now),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn kept_until_due_or_purged_and_released_when_empty() {
        let (a, b) = (snap("a", false), snap("b", true));
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(step(false, hour, &[&a, &b]), Step::Keep(Duration::from_secs(3600)));
        assert_eq!(step(false, None, &[&a, &b]), Step::DeleteSnapshots(vec!["a".into()]));
        assert_eq!(step(true, hour, &[&a, &b]), Step::DeleteSnapshots(vec!["a".into()]));
        assert_eq!(step(true, hour, &[&b]), Step::Wait);
        // The user deleted every snapshot: nothing to keep.
        assert_eq!(step(false, hour, &[]), Step::Release);
    }
}
