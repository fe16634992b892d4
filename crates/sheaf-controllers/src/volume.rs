//! The Volume controller: keeps `spec.numberOfReplicas` Replica objects
//! for each Volume, spread over the Ready nodes that match its
//! `nodeSelector` (different nodes first; several on one node only when
//! there are fewer nodes than replicas). The node agents run the replicas
//! and report the volume's state; this controller owns the
//! `ReplicasScheduled` condition.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::json;
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::Node;
use sheaf_types::meta::{Condition, ObjectMeta, OwnerReference, Time};
use sheaf_types::storage::{Replica, ReplicaSpec, Volume, REPLICA_FINALIZER, VOLUME_LABEL};

use crate::runtime::{Action, Change, Controller, ObjectKey, Reconciler};
use crate::scheduler::node_ready;

pub struct VolumeController {
    api: Arc<dyn Api>,
}

pub async fn run(api: Arc<dyn Api>) {
    Controller::new("volume", api.clone(), Gvr::of::<Volume>())
        .watches(Gvr::of::<Replica>(), |change, obj, _| {
            // A replica that went away is replaced.
            if change != Change::Deleted {
                return Vec::new();
            }
            let ns = obj.pointer("/metadata/namespace").and_then(|v| v.as_str());
            match obj.pointer("/spec/volumeName").and_then(|v| v.as_str()) {
                Some(v) => vec![ObjectKey::new(ns, v)],
                None => Vec::new(),
            }
        })
        .watches(Gvr::of::<Node>(), |_, _, store| store.keys())
        .resync_every(Duration::from_secs(60))
        .run(Arc::new(VolumeController { api }))
        .await
}

fn owner_reference(v: &Volume) -> OwnerReference {
    OwnerReference {
        api_version: "sheaf.io/v1alpha1".into(),
        kind: "Volume".into(),
        name: v.metadata.name.clone().unwrap_or_default(),
        uid: v.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Five random hex digits for a replica's name.
fn suffix() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    format!("{:05x}", h.finish() & 0xfffff)
}

/// Picks a node for each of `missing` new replicas: the candidate holding
/// the fewest replicas of this volume, then by name (stable).
pub fn place(candidates: &[String], existing: &[String], missing: usize) -> Vec<String> {
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut count: BTreeMap<&str, usize> = candidates.iter().map(|n| (n.as_str(), 0)).collect();
    for n in existing {
        if let Some(c) = count.get_mut(n.as_str()) {
            *c += 1;
        }
    }
    let mut out = Vec::new();
    for _ in 0..missing {
        let Some((&node, _)) = count.iter().min_by_key(|(n, c)| (**c, **n)) else { break };
        out.push(node.to_string());
        if let Some(c) = count.get_mut(node) {
            *c += 1;
        }
    }
    out
}

#[async_trait::async_trait]
impl Reconciler for VolumeController {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let volumes = Typed::<Volume>::new(self.api.as_ref());
        let Some(vol) = volumes.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if vol.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = vol.metadata.uid.clone().unwrap_or_default();
        let replicas = Typed::<Replica>::new(self.api.as_ref());
        let sel = Selectors { labels: format!("{VOLUME_LABEL}={}", key.name), fields: String::new() };
        let mine: Vec<Replica> = replicas
            .list(key.namespace(), &sel)
            .await?
            .into_iter()
            .filter(|r| r.metadata.owner_references.iter().any(|o| o.uid == uid))
            .filter(|r| r.metadata.deletion_timestamp.is_none())
            .collect();
        let wanted = vol.replicas_wanted() as usize;
        let nodes = Typed::<Node>::new(self.api.as_ref()).list(None, &Selectors::default()).await?;
        let candidates: Vec<String> = nodes
            .iter()
            .filter(|n| node_ready(n))
            .filter(|n| vol.spec.node_selector.iter().all(|(k, v)| n.metadata.labels.get(k) == Some(v)))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let existing: Vec<String> = mine.iter().map(|r| r.spec.node_name.clone()).collect();
        let mut problem = None;
        if mine.len() < wanted {
            let targets = place(&candidates, &existing, wanted - mine.len());
            if targets.is_empty() {
                problem = Some(if vol.spec.node_selector.is_empty() {
                    "no Ready node to put replicas on".to_string()
                } else {
                    let sel: Vec<String> = vol.spec.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("no Ready node matches the node selector {}", sel.join(","))
                });
            }
            for node in targets {
                let name = format!("{}-r-{}", key.name, suffix());
                let r = Replica {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: key.namespace().map(str::to_string),
                        labels: [(VOLUME_LABEL.to_string(), key.name.clone())].into(),
                        owner_references: vec![owner_reference(&vol)],
                        finalizers: vec![REPLICA_FINALIZER.to_string()],
                        ..Default::default()
                    },
                    spec: ReplicaSpec { volume_name: key.name.clone(), node_name: node.clone() },
                    status: None,
                };
                replicas.create(&r).await?;
                tracing::info!(volume = %key, replica = %name, node = %node, "replica scheduled");
            }
        } else if mine.len() > wanted {
            // Fewer copies wanted: drop the ones not running first, then
            // the newest.
            let mut extra = mine.clone();
            extra.sort_by_key(|r| {
                let running = r.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Running");
                (running, std::cmp::Reverse(r.metadata.creation_timestamp.map(|t| t.0)))
            });
            for r in extra.iter().take(mine.len() - wanted) {
                let name = r.metadata.name.clone().unwrap_or_default();
                replicas.delete(key.namespace(), &name).await?;
                tracing::info!(volume = %key, replica = %name, "replica removed: fewer wanted");
            }
        }
        let condition = match &problem {
            None => Condition {
                type_: "ReplicasScheduled".into(),
                status: "True".into(),
                reason: Some("Scheduled".into()),
                message: Some(format!("{wanted} replica(s) placed")),
                ..Default::default()
            },
            Some(m) => Condition {
                type_: "ReplicasScheduled".into(),
                status: "False".into(),
                reason: Some("NoNode".into()),
                message: Some(m.clone()),
                ..Default::default()
            },
        };
        let old = vol.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == condition.type_));
        if old.map(|c| (&c.status, &c.message)) != Some((&condition.status, &condition.message)) {
            let mut c = condition;
            c.last_transition_time = Some(Time(Utc::now().trunc_subsecs(0)));
            volumes.merge_patch(key.namespace(), &key.name, json!({"status": {"conditions": [c]}}), true).await?;
        }
        Ok(if problem.is_some() { Action::RequeueAfter(Duration::from_secs(10)) } else { Action::Done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_spread_over_nodes_first() {
        let nodes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(place(&nodes, &[], 3), ["a", "b", "c"]);
        assert_eq!(place(&nodes, &["a".into(), "b".into()], 1), ["c"]);
        // One node: every replica on it.
        assert_eq!(place(&nodes[..1], &[], 3), ["a", "a", "a"]);
        // Two nodes, three replicas: two on one, one on the other.
        assert_eq!(place(&nodes[..2], &[], 3), ["a", "b", "a"]);
        assert!(place(&[], &[], 2).is_empty());
    }
}
