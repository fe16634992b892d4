//! The Volume controller: keeps `spec.numberOfReplicas` Replica objects
//! for each Volume, spread over the Ready nodes that match its
//! `nodeSelector` (different nodes first; several on one node only when
//! there are fewer nodes than replicas), and replaces the replicas of nodes
//! that have been down too long. The node agents run the replicas and
//! report the volume's state; this controller owns the `ReplicasScheduled`
//! condition.
//!
//! Disks: each replica goes on a disk of its node (`spec.diskName`), one
//! the node's agent reports as a Disk object: schedulable, with every tag
//! of the volume's `spec.diskSelector`, and with at least the volume's size
//! available (thin provisioning: the space of the replicas already there
//! is not reserved). On a node, the disk holding fewest replicas of the
//! volume comes first, then the one with the most space. A node that
//! reports no disks has its replica root only (the `default` disk: no
//! tags, space unknown); its replicas get no `diskName`, as the replicas
//! made before disks existed. When nothing fits, `ReplicasScheduled` is
//! False and says what is missing (reason `NoNode`, `NoDisk` or
//! `NoSpace`).
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

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::Node;
use sheaf_types::meta::{Condition, ObjectMeta, OwnerReference, Time};
use sheaf_types::storage::{
    format_bytes, format_duration, Disk, Replica, ReplicaSpec, Volume, DEFAULT_DISK, REPLICA_FINALIZER, VOLUME_LABEL,
};

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
        .watches(Gvr::of::<Disk>(), |_, _, store| store.keys())
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

/// A disk a new replica of a volume may go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub node: String,
    /// The Disk's `spec.diskName`; None on a node that reports no disks
    /// (its replica root, the `default` disk).
    pub disk: Option<String>,
    /// Bytes available there (None: not known).
    pub available: Option<i64>,
}

impl Slot {
    fn disk_name(&self) -> &str {
        self.disk.as_deref().unwrap_or(DEFAULT_DISK)
    }
}

/// Picks a slot for each of `missing` new replicas, given the `(node,
/// disk)` of the volume's replicas: the node holding fewest replicas of
/// the volume, then by name; on it the disk holding fewest, then the one
/// with the most space available, then by name. With `new_nodes_only`
/// (replacements), only nodes holding none, one replica each.
pub fn place(slots: &[Slot], existing: &[(String, String)], missing: usize, new_nodes_only: bool) -> Vec<Slot> {
    let mut on_node: HashMap<String, usize> = HashMap::new();
    let mut on_disk: HashMap<(String, String), usize> = HashMap::new();
    for (node, disk) in existing {
        *on_node.entry(node.clone()).or_default() += 1;
        *on_disk.entry((node.clone(), disk.clone())).or_default() += 1;
    }
    let mut out = Vec::new();
    for _ in 0..missing {
        let key = |s: &Slot| {
            let n = on_node.get(&s.node).copied().unwrap_or(0);
            let d = on_disk.get(&(s.node.clone(), s.disk_name().to_string())).copied().unwrap_or(0);
            (n, s.node.clone(), d, std::cmp::Reverse(s.available), s.disk_name().to_string())
        };
        let Some(best) = slots.iter().min_by_key(|s| key(s)) else { break };
        if new_nodes_only && on_node.get(&best.node).copied().unwrap_or(0) > 0 {
            break;
        }
        *on_node.entry(best.node.clone()).or_default() += 1;
        *on_disk.entry((best.node.clone(), best.disk_name().to_string())).or_default() += 1;
        out.push(best.clone());
    }
    out
}

/// Why no disk of the nodes looked at can take a replica of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortage {
    /// No node to look at.
    NoNode,
    /// No schedulable disk with the tags; the ones with the tags that are
    /// not schedulable, and why.
    NoDisk { unschedulable: Vec<String> },
    /// Disks with the tags, but none with the volume's size available; the
    /// one with the most: (node, disk, bytes).
    NoSpace { most: (String, String, i64) },
}

/// The disks of `nodes` (Ready, matching the volume's node selector) that
/// a replica of `vol` may go on, or what is missing.
pub fn slots_on(vol: &Volume, nodes: &[&Node], disks: &[Disk]) -> Result<Vec<Slot>, Shortage> {
    if nodes.is_empty() {
        return Err(Shortage::NoNode);
    }
    let size = vol.size_bytes();
    let selector = &vol.spec.disk_selector;
    let mut slots = Vec::new();
    let mut unschedulable = Vec::new();
    let mut most: Option<(String, String, i64)> = None;
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut mine: Vec<&Disk> = disks.iter().filter(|d| d.spec.node_name == name).collect();
        mine.sort_by(|a, b| a.spec.disk_name.cmp(&b.spec.disk_name));
        if mine.is_empty() {
            // Its replica root: no tags, space not known.
            if selector.is_empty() {
                slots.push(Slot { node: name, disk: None, available: None });
            }
            continue;
        }
        for d in mine.into_iter().filter(|d| d.matches(selector)) {
            if !d.schedulable() {
                let why = d.status.as_ref().and_then(|s| s.message.clone());
                let why = why.unwrap_or_else(|| "its agent has not measured it yet".into());
                unschedulable.push(format!("disk {} of node {name}: {why}", d.spec.disk_name));
                continue;
            }
            match d.available() {
                Some(a) if a < size => {
                    if most.as_ref().is_none_or(|m| a > m.2) {
                        most = Some((name.clone(), d.spec.disk_name.clone(), a));
                    }
                }
                available => slots.push(Slot { node: name.clone(), disk: Some(d.spec.disk_name.clone()), available }),
            }
        }
    }
    match (slots.is_empty(), most) {
        (false, _) => Ok(slots),
        (true, Some(most)) => Err(Shortage::NoSpace { most }),
        (true, None) => Err(Shortage::NoDisk { unschedulable }),
    }
}

/// The first few of `items`, joined, with how many more there are.
fn some_of(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut out = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > SHOWN {
        out.push_str(&format!("; and {} more", items.len() - SHOWN));
    }
    out
}

fn tags_phrase(vol: &Volume) -> String {
    if vol.spec.disk_selector.is_empty() {
        String::new()
    } else {
        format!(" with tags [{}]", vol.spec.disk_selector.join(", "))
    }
}

fn size_phrase(vol: &Volume) -> String {
    match &vol.spec.size {
        Some(q) => q.to_string(),
        None => format_bytes(vol.size_bytes()),
    }
}

impl Shortage {
    /// The condition's reason.
    fn reason(&self) -> &'static str {
        match self {
            Shortage::NoNode => "NoNode",
            Shortage::NoDisk { .. } => "NoDisk",
            Shortage::NoSpace { .. } => "NoSpace",
        }
    }

    /// Why new replicas of `vol` have nowhere to go.
    fn describe(&self, vol: &Volume) -> String {
        let (tags, sel) = (tags_phrase(vol), selector_phrase(vol));
        match self {
            Shortage::NoNode if vol.spec.node_selector.is_empty() => "no Ready node to put replicas on".to_string(),
            Shortage::NoNode => format!("no Ready node{sel}"),
            Shortage::NoDisk { unschedulable } if unschedulable.is_empty() => format!(
                "no disk{tags} on a Ready node{sel}: give a node such a disk (sheaf server --disk NAME=PATH,tags={}) \
                 or change the volume's spec.diskSelector",
                vol.spec.disk_selector.join("+")
            ),
            Shortage::NoDisk { unschedulable } => {
                format!("no schedulable disk{tags} on a Ready node{sel} ({})", some_of(unschedulable))
            }
            Shortage::NoSpace { most: (node, disk, bytes) } => format!(
                "no disk{tags} with {} available on a Ready node{sel} (the most is {} on disk {disk} of node \
                 {node}): free some space or give a node a bigger disk",
                size_phrase(vol),
                format_bytes(*bytes)
            ),
        }
    }

    /// Why a stale replica cannot be replaced: what the Ready nodes free
    /// of the volume's replicas lack.
    fn describe_free(&self, vol: &Volume) -> String {
        let (tags, sel) = (tags_phrase(vol), selector_phrase(vol));
        match self {
            Shortage::NoNode => format!("no other Ready node{sel} is free of this volume's replicas"),
            Shortage::NoDisk { unschedulable } if unschedulable.is_empty() => {
                format!("no other Ready node{sel} free of this volume's replicas has a disk{tags}")
            }
            Shortage::NoDisk { unschedulable } => format!(
                "no other Ready node{sel} free of this volume's replicas has a schedulable disk{tags} ({})",
                some_of(unschedulable)
            ),
            Shortage::NoSpace { .. } => format!(
                "no other Ready node{sel} free of this volume's replicas has a disk{tags} with {} available",
                size_phrase(vol)
            ),
        }
    }
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
        let candidates: Vec<&Node> = nodes
            .iter()
            .filter(|n| node_ready(n))
            .filter(|n| vol.spec.node_selector.iter().all(|(k, v)| n.metadata.labels.get(k) == Some(v)))
            .collect();
        let disks = Typed::<Disk>::new(self.api.as_ref()).list(None, &Selectors::default()).await?;

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

        let mut problem: Option<(&str, String)> = None;
        if live.len() < wanted {
            let missing = wanted - live.len();
            let placed_on = |rs: &[&Replica]| -> Vec<(String, String)> {
                rs.iter().map(|r| (r.spec.node_name.clone(), r.disk_name().to_string())).collect()
            };
            let targets = if stale.is_empty() {
                match slots_on(&vol, &candidates, &disks) {
                    Ok(slots) => place(&slots, &placed_on(&live), missing, false),
                    Err(short) => {
                        problem = Some((short.reason(), short.describe(&vol)));
                        Vec::new()
                    }
                }
            } else {
                // Replacements go only where the volume has no copy.
                let held: HashSet<&str> = mine.iter().map(|r| r.spec.node_name.as_str()).collect();
                let free: Vec<&Node> = candidates
                    .iter()
                    .copied()
                    .filter(|n| !held.contains(n.metadata.name.as_deref().unwrap_or_default()))
                    .collect();
                let all: Vec<&Replica> = mine.iter().collect();
                let (targets, short) = match slots_on(&vol, &free, &disks) {
                    Ok(slots) => (place(&slots, &placed_on(&all), missing, true), Shortage::NoNode),
                    Err(short) => (Vec::new(), short),
                };
                if targets.len() < missing {
                    let list: Vec<String> = stale.iter().map(Stale::describe).collect();
                    let message = format!(
                        "{} cannot be replaced: {}; it is replaced as soon as one is (add or repair a node, or \
                         lower numberOfReplicas)",
                        list.join(", "),
                        short.describe_free(&vol)
                    );
                    problem = Some((short.reason(), message));
                }
                targets
            };
            for (i, slot) in targets.iter().enumerate() {
                let node = &slot.node;
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
                    spec: ReplicaSpec {
                        volume_name: key.name.clone(),
                        node_name: node.clone(),
                        disk_name: slot.disk.clone(),
                    },
                    status: None,
                };
                replicas.create(&r).await?;
                tracing::info!(volume = %key, replica = %name, node = %node, disk = %slot.disk_name(), "replica scheduled");
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
            Some((reason, m)) => Condition {
                type_: "ReplicasScheduled".into(),
                status: "False".into(),
                reason: Some(reason.to_string()),
                message: Some(m.clone()),
                ..Default::default()
            },
        };
        let old = vol.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == condition.type_));
        if old.map(|c| (&c.status, &c.reason, &c.message))
            != Some((&condition.status, &condition.reason, &condition.message))
        {
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

    fn slot(node: &str, disk: Option<&str>, available: Option<i64>) -> Slot {
        Slot { node: node.into(), disk: disk.map(str::to_string), available }
    }

    fn where_(slots: &[Slot]) -> Vec<String> {
        slots.iter().map(|s| format!("{}/{}", s.node, s.disk_name())).collect()
    }

    #[test]
    fn replicas_spread_over_nodes_first_then_disks() {
        let nodes = [slot("a", None, None), slot("b", None, None), slot("c", None, None)];
        assert_eq!(where_(&place(&nodes, &[], 3, false)), ["a/default", "b/default", "c/default"]);
        let existing = [("a".to_string(), "default".to_string()), ("b".to_string(), "default".to_string())];
        assert_eq!(where_(&place(&nodes, &existing, 1, false)), ["c/default"]);
        // One node: every replica on it.
        assert_eq!(where_(&place(&nodes[..1], &[], 3, false)), ["a/default", "a/default", "a/default"]);
        // Two nodes, three replicas: two on one, one on the other.
        assert_eq!(where_(&place(&nodes[..2], &[], 3, false)), ["a/default", "b/default", "a/default"]);
        assert!(place(&[], &[], 2, false).is_empty());

        // Two disks on a: other nodes first, then a's other disk, the one
        // with most space first.
        let disks = [slot("a", Some("d1"), Some(10)), slot("a", Some("d2"), Some(20)), slot("b", Some("d1"), Some(5))];
        assert_eq!(where_(&place(&disks, &[], 4, false)), ["a/d2", "b/d1", "a/d1", "b/d1"]);
        let existing = [("a".to_string(), "d2".to_string())];
        assert_eq!(where_(&place(&disks, &existing, 2, false)), ["b/d1", "a/d1"]);
        // Replacements: only nodes without a replica, one each.
        assert_eq!(where_(&place(&disks, &existing, 2, true)), ["b/d1"]);
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
