//! The Volume controller: keeps `spec.numberOfReplicas` Replica objects
//! for each Volume, spread over the Ready nodes that match its
//! `nodeSelector` (different nodes first; several on one node only when
//! there are fewer nodes than replicas), and replaces the replicas of nodes
//! that have been down too long. The node agents run the replicas and
//! report the volume's state; this controller owns the `ReplicasScheduled`
//! condition.
//!
//! Replacing the replicas of a node that is down:
//! - A replica is *stale* when its node has not been Ready for longer than
//!   the volume's `spec.staleReplicaTimeout` (default 10 min; counted from
//!   the Ready condition's `lastTransitionTime`, which the node lifecycle
//!   controller sets when the node's agent falls silent, see
//!   [`crate::node`]), or when its Node object no longer exists.
//! - A stale replica gets a replacement on a Ready node matching the
//!   selector that holds no replica of the volume. Never a second copy on a
//!   node that already has one: it would not survive the loss of that node
//!   any better, and the stale copy may still come back. With no such node,
//!   `ReplicasScheduled` is False and names the stale replica, and nothing
//!   else happens until a node is free.
//! - The stale Replica object is deleted only once the volume has
//!   `numberOfReplicas` Running replicas on Ready nodes without it. The
//!   agent that runs the volume's engine then drops it from the engine's
//!   replica set, and the engine rebuilds the replacement.
//! - Exception: a stale replica on the node the volume is attached to is
//!   not deleted while that Node exists. The engine there may still be
//!   writing to it (the node may just be cut off from the API), and its
//!   agent would remove the data under that engine when it is back in
//!   touch. It goes when the node is back (as a surplus replica) or when
//!   the Node is deleted.
//! - A deleted Replica keeps its finalizer `sheaf.io/replica-data` until
//!   its node's agent has removed the data, which a node that is down does
//!   when it comes back. A deleted Replica whose Node object no longer
//!   exists is released here instead, with a Warning Event: nothing is left
//!   that could remove its data, which went with the node. Deleting the
//!   Node (`kubectl delete node NAME`) is how an administrator says that a
//!   node and its disks are gone for good.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::Node;
use sheaf_types::meta::{Condition, ObjectMeta, OwnerReference, Time};
use sheaf_types::storage::{format_duration, Replica, ReplicaSpec, Volume, REPLICA_FINALIZER, VOLUME_LABEL};

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Change, Controller, ObjectKey, Reconciler};
use crate::scheduler::node_ready;

pub const COMPONENT: &str = "volume-controller";

pub struct VolumeController {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

impl VolumeController {
    pub fn new(api: Arc<dyn Api>) -> Self {
        VolumeController { events: EventRecorder::new(api.clone(), COMPONENT), api }
    }
}

/// Runs the Volume controller and the release of replicas whose node is
/// gone, until the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    let volumes = Controller::new("volume", api.clone(), Gvr::of::<Volume>())
        .watches(Gvr::of::<Replica>(), |_, obj, _| {
            // A replica that went away is replaced; one that started
            // running may let a stale one go.
            let ns = obj.pointer("/metadata/namespace").and_then(|v| v.as_str());
            match obj.pointer("/spec/volumeName").and_then(|v| v.as_str()) {
                Some(v) => vec![ObjectKey::new(ns, v)],
                None => Vec::new(),
            }
        })
        .watches(Gvr::of::<Node>(), |_, _, store| store.keys())
        .resync_every(Duration::from_secs(60))
        .run(Arc::new(VolumeController::new(api.clone())));
    let release = Controller::new("replica-release", api.clone(), Gvr::of::<Replica>())
        .watches(Gvr::of::<Node>(), |change, node, store| {
            if change != Change::Deleted {
                return Vec::new();
            }
            let name = node.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or_default();
            store.keys_where(|r| r.pointer("/spec/nodeName").and_then(|v| v.as_str()) == Some(name))
        })
        .resync_every(Duration::from_secs(60))
        .run(Arc::new(ReplicaReleaser { events: EventRecorder::new(api.clone(), COMPONENT), api }));
    tokio::join!(volumes, release);
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

/// The state of a replica's node, as the Volume controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    Ready,
    /// Not Ready since this time (None: the condition says not when).
    Down(Option<DateTime<Utc>>),
    /// No Node object of that name.
    Gone,
}

/// How `node` is doing: its Ready condition as the scheduler reads it,
/// and since when it has not been Ready (the condition's
/// `lastTransitionTime`).
pub fn node_health(node: Option<&Node>) -> NodeHealth {
    let Some(node) = node else { return NodeHealth::Gone };
    if node_ready(node) {
        return NodeHealth::Ready;
    }
    let ready = node.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    NodeHealth::Down(
        ready.and_then(|c| c.last_transition_time.as_ref().or(c.last_heartbeat_time.as_ref())).map(|t| t.0),
    )
}

/// A replica whose node is down, and since when (None: gone, or not known).
struct Stale<'a> {
    replica: &'a Replica,
    health: NodeHealth,
}

impl Stale<'_> {
    fn name(&self) -> &str {
        self.replica.metadata.name.as_deref().unwrap_or_default()
    }
    /// For conditions: stable while nothing changes (no running clock).
    fn describe(&self) -> String {
        let (name, node) = (self.name(), &self.replica.spec.node_name);
        match self.health {
            NodeHealth::Gone => format!("replica {name} on node {node} (the Node no longer exists)"),
            NodeHealth::Down(Some(t)) => format!(
                "replica {name} on node {node} (not Ready since {})",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            _ => format!("replica {name} on node {node} (not Ready)"),
        }
    }
    /// For Events: how long it has been down.
    fn describe_now(&self, now: DateTime<Utc>) -> String {
        let (name, node) = (self.name(), &self.replica.spec.node_name);
        match self.health {
            NodeHealth::Down(Some(t)) => {
                let down = (now - t).to_std().unwrap_or_default();
                format!("replica {name} on node {node} (not Ready for {})", format_duration(down))
            }
            _ => self.describe(),
        }
    }
    /// Gone first, then the longest down.
    fn order(&self) -> (u8, Option<DateTime<Utc>>) {
        match self.health {
            NodeHealth::Gone => (0, None),
            NodeHealth::Down(t) => (1, t),
            NodeHealth::Ready => (2, None),
        }
    }
}

fn running(r: &Replica) -> bool {
    r.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Running")
}

fn selector_phrase(vol: &Volume) -> String {
    if vol.spec.node_selector.is_empty() {
        return String::new();
    }
    let sel: Vec<String> = vol.spec.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" matching the node selector {}", sel.join(","))
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
        let by_name: HashMap<&str, &Node> =
            nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n))).collect();
        let candidates: Vec<String> = nodes
            .iter()
            .filter(|n| node_ready(n))
            .filter(|n| vol.spec.node_selector.iter().all(|(k, v)| n.metadata.labels.get(k) == Some(v)))
            .filter_map(|n| n.metadata.name.clone())
            .collect();

        // Replicas on nodes that are up, or not down for long (`live`),
        // and the stale ones.
        let now = Utc::now();
        let timeout = vol.stale_replica_timeout();
        let mut live: Vec<&Replica> = Vec::new();
        let mut stale: Vec<Stale<'_>> = Vec::new();
        let mut recheck: Option<Duration> = None;
        for r in &mine {
            let health = node_health(by_name.get(r.spec.node_name.as_str()).copied());
            let down_for = match health {
                NodeHealth::Down(Some(t)) => Some((now - t).to_std().unwrap_or_default()),
                _ => None,
            };
            match (health, down_for) {
                (NodeHealth::Gone, _) => stale.push(Stale { replica: r, health }),
                (_, Some(d)) if d >= timeout => stale.push(Stale { replica: r, health }),
                (_, Some(d)) => {
                    live.push(r);
                    let left = timeout - d + Duration::from_secs(1);
                    recheck = Some(recheck.map_or(left, |x| x.min(left)));
                }
                _ => live.push(r),
            }
        }
        stale.sort_by_key(Stale::order);
        let up = |r: &Replica| node_health(by_name.get(r.spec.node_name.as_str()).copied()) == NodeHealth::Ready;

        let mut problem = None;
        if live.len() < wanted {
            let missing = wanted - live.len();
            let targets = if stale.is_empty() {
                let existing: Vec<String> = live.iter().map(|r| r.spec.node_name.clone()).collect();
                place(&candidates, &existing, missing)
            } else {
                // Replacements go only where the volume has no copy.
                let held: HashSet<&str> = mine.iter().map(|r| r.spec.node_name.as_str()).collect();
                candidates.iter().filter(|n| !held.contains(n.as_str())).take(missing).cloned().collect()
            };
            if targets.len() < missing {
                let short = if stale.is_empty() {
                    if vol.spec.node_selector.is_empty() {
                        "no Ready node to put replicas on".to_string()
                    } else {
                        format!("no Ready node{}", selector_phrase(&vol))
                    }
                } else {
                    let list: Vec<String> = stale.iter().map(Stale::describe).collect();
                    format!(
                        "{} cannot be replaced: no other Ready node{} is free of this volume's replicas; \
                         it is replaced as soon as one is (add or repair a node, or lower numberOfReplicas)",
                        list.join(", "),
                        selector_phrase(&vol)
                    )
                };
                problem = Some(short);
            }
            for (i, node) in targets.iter().enumerate() {
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
                if let Some(s) = stale.get(i) {
                    let message = format!(
                        "{} is stale (staleReplicaTimeout {}): new replica {name} on node {node} takes its place",
                        s.describe_now(now),
                        format_duration(timeout)
                    );
                    tracing::warn!(volume = %key, "{message}");
                    self.events.record(&reference_to(&vol), EventType::Normal, "ReplacingReplica", message).await;
                }
            }
        } else if live.len() > wanted {
            // Fewer copies wanted: drop the ones not running first, then
            // the newest.
            let mut extra = live.clone();
            extra.sort_by_key(|r| (running(r) && up(r), std::cmp::Reverse(r.metadata.creation_timestamp.map(|t| t.0))));
            for r in extra.iter().take(live.len() - wanted) {
                let name = r.metadata.name.clone().unwrap_or_default();
                replicas.delete(key.namespace(), &name).await?;
                tracing::info!(volume = %key, replica = %name, "replica removed: fewer wanted");
            }
        }

        // A stale replica goes once the volume has enough running
        // replicas without it.
        let running_live = live.iter().filter(|r| running(r) && up(r)).count();
        let mut removable = (running_live + stale.len()).saturating_sub(wanted).min(stale.len());
        let attached_to = vol
            .status
            .as_ref()
            .filter(|s| s.state.as_deref() == Some("Attached"))
            .and_then(|s| s.attached_to.as_deref());
        for s in &stale {
            if removable == 0 {
                break;
            }
            if s.health != NodeHealth::Gone && attached_to == Some(s.replica.spec.node_name.as_str()) {
                // The engine on that node may still write to it.
                continue;
            }
            replicas.delete(key.namespace(), s.name()).await?;
            removable -= 1;
            let message =
                format!("{} removed: the volume has {running_live} running replica(s) without it", s.describe_now(now));
            tracing::info!(volume = %key, "{message}");
            self.events.record(&reference_to(&vol), EventType::Normal, "StaleReplicaRemoved", message).await;
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
        let mut next = recheck;
        if problem.is_some() {
            next = Some(next.map_or(Duration::from_secs(10), |d| d.min(Duration::from_secs(10))));
        }
        Ok(next.map_or(Action::Done, Action::RequeueAfter))
    }
}

/// Releases deleted Replicas whose Node no longer exists (see the module
/// documentation).
pub struct ReplicaReleaser {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

#[async_trait::async_trait]
impl Reconciler for ReplicaReleaser {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let replicas = Typed::<Replica>::new(self.api.as_ref());
        let Some(r) = replicas.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if r.metadata.deletion_timestamp.is_none() || !r.metadata.finalizers.iter().any(|f| f == REPLICA_FINALIZER) {
            return Ok(Action::Done);
        }
        if Typed::<Node>::new(self.api.as_ref()).get(None, &r.spec.node_name).await?.is_some() {
            // Its node's agent removes the data, when it can.
            return Ok(Action::Done);
        }
        let keep: Vec<&String> = r.metadata.finalizers.iter().filter(|f| *f != REPLICA_FINALIZER).collect();
        let rv = r.metadata.resource_version.clone();
        replicas
            .merge_patch(
                key.namespace(),
                &key.name,
                json!({"metadata": {"finalizers": keep, "resourceVersion": rv}}),
                false,
            )
            .await?;
        let message = format!(
            "node {} no longer exists: replica {} is removed without removing its data, which went with the node",
            r.spec.node_name, key.name
        );
        tracing::warn!(replica = %key, "{message}");
        let volume = Typed::<Volume>::new(self.api.as_ref()).get(key.namespace(), &r.spec.volume_name).await?;
        let involved = match &volume {
            Some(v) => reference_to(v),
            None => reference_to(&r),
        };
        self.events.record(&involved, EventType::Warning, "ReplicaDataAbandoned", message).await;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheaf_types::core::{NodeCondition, NodeStatus};

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

    #[test]
    fn node_health_from_the_ready_condition() {
        let since = Utc::now() - chrono::TimeDelta::minutes(5);
        let node = |status: &str, t: Option<DateTime<Utc>>| Node {
            status: Some(NodeStatus {
                conditions: vec![NodeCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    last_transition_time: t.map(Time),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(node_health(None), NodeHealth::Gone);
        assert_eq!(node_health(Some(&node("True", Some(since)))), NodeHealth::Ready);
        assert_eq!(node_health(Some(&node("Unknown", Some(since)))), NodeHealth::Down(Some(since)));
        assert_eq!(node_health(Some(&node("False", None))), NodeHealth::Down(None));
        assert_eq!(node_health(Some(&Node::default())), NodeHealth::Down(None));
    }
}
