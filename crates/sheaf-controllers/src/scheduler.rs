//! The scheduler: binds each VirtualMachineInstance waiting for a node
//! (no `status.nodeName`, phase `""` or `Pending`) to one that can run it.
//!
//! ```text
//!                  a node fits: bind                      agent on the node
//!   "" / Pending ─────────────────────▶ Scheduled ──────────────────────────▶ Running ...
//!        │  ▲      nodeName, PodScheduled=True,
//!        │  │      label kubevirt.io/nodeName
//!        ▼  │ a Node changes, a VMI frees room, or a retry timer (1 s at
//!        │  │ first, slowing to RETRY_UNSCHEDULABLE) fires
//!   Pending, PodScheduled=False reason Unschedulable,
//!   message "0/3 nodes are available: 1 Insufficient memory (wants 64Gi, 2Gi free), ..."
//! ```
//!
//! # Which nodes fit
//!
//! A node fits when, checked in this order (the first failing check is the
//! node's reason in the message):
//!
//! 1. it is Ready (condition `Ready` is `True`) and not cordoned
//!    (`spec.unschedulable`);
//! 2. it has no `NoSchedule`/`NoExecute` taint the VMI does not tolerate;
//! 3. it carries every label of the VMI's `nodeSelector`, and matches one
//!    of the `nodeSelectorTerms` of
//!    `affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution`
//!    (terms ORed, requirements ANDed; see
//!    [`sheaf_types::kubevirt::affinity`] for the operators);
//! 4. it has the VMI's CPU and memory free: its allocatable resources minus
//!    the requests of the unfinished VMIs already bound to it. A VMI
//!    requests `resources.requests` (else `limits`) memory, else
//!    `memory.guest`, plus [`VMI_MEMORY_OVERHEAD`] for QEMU (unless
//!    `overcommitGuestOverhead`); and `resources.requests.cpu`, else a tenth
//!    of a CPU per vCPU (cores × sockets × threads; KubeVirt's default
//!    allocation ratio of 10);
//! 5. VM affinity, between the VMI and the unfinished VMIs bound to nodes
//!    (`podAffinity`/`podAntiAffinity`, Kubernetes' inter-pod affinity with
//!    VMIs for pods; a topology domain is the set of nodes with the same
//!    value of the term's `topologyKey` label, `kubernetes.io/hostname`
//!    making each node its own):
//!    - every required affinity term has, in the node's domain, a bound VMI
//!      matching all the terms — unless no bound VMI matches them anywhere
//!      and the VMI matches its own terms (the first of a group that wants
//!      to be together may go anywhere that has the topology labels);
//!    - no required anti-affinity term has a matching bound VMI in the
//!      node's domain (a node without the term's label is outside it);
//!    - no bound VMI whose required anti-affinity terms select this VMI is
//!      in the node's domain of that term (the rule holds both ways).
//!
//!    Terms select VMIs by their labels (`labelSelector`: unset selects
//!    none, `{}` all; `matchLabelKeys`/`mismatchLabelKeys` add the placed
//!    VMI's values) in the term owner's namespace, or in `namespaces` and
//!    those `namespaceSelector` picks by label (`{}`: all).
//!
//! # Which fitting node wins
//!
//! Each fitting node gets four scores of 0 to 100, then the highest
//! weighted sum wins (ties by name):
//!
//! ```text
//!   total = 2 × node affinity + 2 × VM affinity + 2 × free + 1 × locality
//! ```
//!
//! - **node affinity**: the sum of the weights of the
//!   `nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution` terms
//!   the node matches, scaled so that the best node has 100;
//! - **VM affinity**: for each bound VMI in the node's domain, + the weight
//!   of each preferred `podAffinity` term of the VMI it matches, − that of
//!   each preferred `podAntiAffinity` term; the same for the bound VMI's own
//!   preferred terms that select this VMI, and + 1 for its required
//!   affinity terms that do (Kubernetes' hard pod affinity weight); scaled
//!   from the lowest node (0) to the highest (100);
//! - **free**: 100 × (1 − load), the load being the mean of the CPU and
//!   memory fractions in use after placement (the least loaded node wins
//!   when nothing else differs);
//! - **locality**: the share of the VMI's volumes (claims resolved with
//!   [`sheaf_client::claims::volume_for_claim`]) with a `Running` Replica on
//!   the node, × 100: reads stay on the node. With the weights above a node
//!   holding all the data wins over one up to 50 points (of 100) less
//!   loaded, and a preference that tells nodes apart weighs more than
//!   locality.
//!
//! These are the weights of Kubernetes' default scheduler (NodeAffinity and
//! InterPodAffinity 2, the resource scores 1 + 1), locality added at 1.
//!
//! # Task model
//!
//! One VMI is scheduled at a time (a single worker), and each attempt
//! reads nodes, VMIs, and the VMI's Volumes and Replicas fresh. Bindings
//! the scheduler just made are also counted from memory until a list shows
//! them (as Kubernetes' scheduler "assumes" pods), so that a list lagging
//! behind its own writes never lets two VMIs take the same room, nor two
//! VMIs that repel each other the same domain.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::{Namespace, Node, Taint};
use sheaf_types::kubevirt::affinity::{PodAffinity, PodAffinityTerm, WeightedPodAffinityTerm};
use sheaf_types::kubevirt::{
    PhaseTransitionTimestamp, Toleration, VirtualMachineInstance, VirtualMachineInstanceSpec,
    VirtualMachineInstanceStatus,
};
use sheaf_types::meta::{set_condition, Condition};
use sheaf_types::storage::{Replica, VOLUME_LABEL};
use sheaf_types::Time;
use tokio::time::Instant;

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Change, Controller, ObjectKey, Reconciler, Store};

/// `source.component` of the scheduler's Events.
pub const COMPONENT: &str = "sheaf-scheduler";
/// Label naming the node a VMI is bound to (KubeVirt's).
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// Memory a VMI needs beyond its guest memory (QEMU, its I/O buffers).
pub const VMI_MEMORY_OVERHEAD: Bytes = Bytes(sheaf_types::quota::VMI_MEMORY_OVERHEAD);
/// An unschedulable VMI is tried again at least this often.
pub const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);
/// A binding is counted from memory until lists show it, at most this long.
const ASSUME_FOR: Duration = Duration::from_secs(60);
/// Every VMI is looked at at least this often.
pub const RESYNC: Duration = Duration::from_secs(5 * 60);

const POD_SCHEDULED: &str = "PodScheduled";
const UNSCHEDULABLE: &str = "Unschedulable";
const SCHEDULED: &str = "Scheduled";
const PENDING: &str = "Pending";

/// An amount of memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    /// Binary units: `64Gi`, `1.5Gi`, `64.03Gi` (at most two decimals).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 5] =
            [("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
        let Some((suffix, size)) = UNITS.into_iter().find(|(_, size)| self.0 >= *size) else {
            return write!(f, "{}", self.0);
        };
        if self.0 % size == 0 {
            return write!(f, "{}{suffix}", self.0 / size);
        }
        let text = format!("{:.2}", self.0 as f64 / size as f64);
        write!(f, "{}{suffix}", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// An amount of CPU in thousandths of a CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct MilliCpu(pub u64);

impl fmt::Display for MilliCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// What a VMI takes from its node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub memory: Bytes,
    pub cpu: MilliCpu,
}

impl Request {
    pub fn of(spec: &VirtualMachineInstanceSpec) -> Request {
        let u = sheaf_types::quota::vm_use(spec);
        Request { memory: Bytes(u.requests_memory), cpu: MilliCpu(u.requests_millicpu) }
    }

    fn add(self, o: Request) -> Request {
        Request {
            memory: Bytes(self.memory.0.saturating_add(o.memory.0)),
            cpu: MilliCpu(self.cpu.0.saturating_add(o.cpu.0)),
        }
    }
}

/// Why a node cannot take a VMI.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    NotReady,
    Cordoned,
    Taint {
        key: String,
        value: String,
    },
    NodeSelector(String),
    /// Matches none of the required node affinity terms.
    NodeAffinity,
    InsufficientCpu {
        wants: MilliCpu,
        free: MilliCpu,
    },
    InsufficientMemory {
        wants: Bytes,
        free: Bytes,
    },
    /// A bound VMI's required anti-affinity keeps this VMI out.
    ExistingAntiAffinity,
    /// A required VM affinity term has no matching VMI in the node's domain.
    PodAffinity,
    /// A required VM anti-affinity term has a matching VMI in the node's
    /// domain.
    PodAntiAffinity,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotReady => f.write_str("node(s) were not ready"),
            Rejection::Cordoned => f.write_str("node(s) were unschedulable"),
            Rejection::Taint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Rejection::NodeSelector(sel) => write!(f, "node(s) didn't match the VMI's nodeSelector ({sel})"),
            Rejection::NodeAffinity => f.write_str("node(s) didn't match node affinity"),
            Rejection::ExistingAntiAffinity => f.write_str("node(s) didn't satisfy existing VMIs' anti-affinity rules"),
            Rejection::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Rejection::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Rejection::InsufficientCpu { wants, free } => write!(f, "Insufficient cpu (wants {wants}, {free} free)"),
            Rejection::InsufficientMemory { wants, free } => {
                write!(f, "Insufficient memory (wants {wants}, {free} free)")
            }
        }
    }
}

pub fn node_ready(node: &Node) -> bool {
    node.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Kubernetes' toleration matching.
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => key == taint.key && t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    }
}

/// A node's allocatable resources (capacity if allocatable is missing).
fn allocatable(node: &Node) -> Request {
    let Some(s) = node.status.as_ref() else { return Request::default() };
    let get = |name: &str| s.allocatable.get(name).or_else(|| s.capacity.get(name));
    Request {
        memory: Bytes(get("memory").and_then(|q| q.as_bytes_u64()).unwrap_or(0)),
        cpu: MilliCpu(get("cpu").and_then(|q| q.as_millis()).and_then(|m| u64::try_from(m).ok()).unwrap_or(0)),
    }
}

/// Checks one node; on success returns its load after placement (0..).
pub fn evaluate(node: &Node, spec: &VirtualMachineInstanceSpec, used: Request) -> Result<f64, Vec<Rejection>> {
    if !node_ready(node) {
        return Err(vec![Rejection::NotReady]);
    }
    let node_spec = node.spec.clone().unwrap_or_default();
    if node_spec.unschedulable == Some(true) {
        return Err(vec![Rejection::Cordoned]);
    }
    if let Some(t) = node_spec
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !spec.tolerations.iter().any(|t| tolerates(t, taint)))
    {
        return Err(vec![Rejection::Taint { key: t.key.clone(), value: t.value.clone().unwrap_or_default() }]);
    }
    let labels = &node.metadata.labels;
    if spec.node_selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        let sel: Vec<String> = spec.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Err(vec![Rejection::NodeSelector(sel.join(","))]);
    }
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let required = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|n| n.required.as_ref());
    if required.is_some_and(|r| !r.matches(name, labels)) {
        return Err(vec![Rejection::NodeAffinity]);
    }
    let want = Request::of(spec);
    let alloc = allocatable(node);
    let free = Request {
        memory: Bytes(alloc.memory.0.saturating_sub(used.memory.0)),
        cpu: MilliCpu(alloc.cpu.0.saturating_sub(used.cpu.0)),
    };
    let mut short = Vec::new();
    if want.cpu > free.cpu {
        short.push(Rejection::InsufficientCpu { wants: want.cpu, free: free.cpu });
    }
    if want.memory > free.memory {
        short.push(Rejection::InsufficientMemory { wants: want.memory, free: free.memory });
    }
    if !short.is_empty() {
        return Err(short);
    }
    let after = used.add(want);
    let frac = |u: u64, a: u64| if a == 0 { 1.0 } else { u as f64 / a as f64 };
    Ok((frac(after.cpu.0, alloc.cpu.0) + frac(after.memory.0, alloc.memory.0)) / 2.0)
}

/// Kubernetes' "0/N nodes are available: ..." summary of why no node fits.
pub fn unschedulable_message(nodes: usize, rejections: &[Rejection]) -> String {
    if nodes == 0 {
        return "0/0 nodes are available: no nodes are registered; start the Sheaf agent on a node".to_string();
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in rejections {
        *counts.entry(r.to_string()).or_default() += 1;
    }
    let parts: Vec<String> = counts.into_iter().map(|(reason, n)| format!("{n} {reason}")).collect();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

/// A binding this scheduler made, counted until lists show it.
#[derive(Clone, Debug)]
pub struct Assumed {
    pub uid: String,
    pub node: String,
    pub request: Request,
}

/// What the unfinished VMIs bound to each node take, leaving out the VMI
/// with uid `except` (the one being placed). `assumed` bindings count too
/// unless the list already shows them (bound or finished): a list may lag
/// behind a write this scheduler just made.
pub fn usage(vmis: &[VirtualMachineInstance], assumed: &[Assumed], except: &str) -> HashMap<String, Request> {
    let mut used: HashMap<String, Request> = HashMap::new();
    for v in vmis.iter().filter(|v| v.metadata.uid.as_deref() != Some(except) && !is_final(v)) {
        if let Some(node) = node_of(v) {
            let u = used.entry(node.to_string()).or_default();
            *u = u.add(Request::of(&v.spec));
        }
    }
    for a in assumed.iter().filter(|a| a.uid != except) {
        let listed = vmis.iter().find(|v| v.metadata.uid.as_deref() == Some(a.uid.as_str()));
        if listed.is_some_and(|v| node_of(v).is_some() || is_final(v)) {
            continue;
        }
        let u = used.entry(a.node.clone()).or_default();
        *u = u.add(a.request);
    }
    used
}

/// Weight of the preferred node affinity score in the total.
pub const NODE_AFFINITY_WEIGHT: f64 = 2.0;
/// Weight of the preferred VM (anti-)affinity score in the total.
pub const VM_AFFINITY_WEIGHT: f64 = 2.0;
/// Weight of the free-room score (100 × (1 − load)) in the total.
pub const FREE_WEIGHT: f64 = 2.0;
/// Weight of the storage locality score in the total.
pub const LOCALITY_WEIGHT: f64 = 1.0;
/// What a bound VMI's required affinity term that selects the VMI being
/// placed adds to its domain (Kubernetes' `hardPodAffinityWeight`).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;
const MAX_SCORE: f64 = 100.0;

/// A VMI bound to a node (or assumed to be), as VM (anti-)affinity sees it.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    pub vmi: &'a VirtualMachineInstance,
    pub node: &'a str,
}

/// The unfinished VMIs bound to nodes, leaving out the one with uid
/// `except`; a listed VMI not yet bound there but with an `assumed`
/// binding counts on its assumed node.
pub fn peers<'a>(vmis: &'a [VirtualMachineInstance], assumed: &'a [Assumed], except: &str) -> Vec<Peer<'a>> {
    vmis.iter()
        .filter(|v| v.metadata.uid.as_deref() != Some(except) && !is_final(v))
        .filter_map(|vmi| {
            let node = node_of(vmi).or_else(|| {
                let uid = vmi.metadata.uid.as_deref()?;
                assumed.iter().find(|a| a.uid == uid).map(|a| a.node.as_str())
            })?;
            Some(Peer { vmi, node })
        })
        .collect()
}

/// Labels of each namespace, by name (for `namespaceSelector`).
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// What placing one VMI reads besides the nodes.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// What the unfinished VMIs bound to each node take ([`usage`]).
    pub used: &'a HashMap<String, Request>,
    /// The VMIs bound to nodes ([`peers`]); None: VM (anti-)affinity is not
    /// considered.
    pub peers: Option<&'a [Peer<'a>]>,
    /// Namespace labels, needed when a term has a `namespaceSelector`.
    pub namespaces: &'a NamespaceLabels,
    /// For each of the VMI's volumes that exists, the nodes holding a
    /// Running replica of it.
    pub replicas: &'a [BTreeSet<String>],
}

/// A fitting node's scores, each 0 to 100, and their weighted total.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    pub node: String,
    pub node_affinity: f64,
    pub vm_affinity: f64,
    pub free: f64,
    pub locality: f64,
    pub total: f64,
}

/// The node chosen for a VMI, or why there is none, from the nodes and
/// what each one's bound VMIs take only: node affinity counts, VM
/// (anti-)affinity and locality do not (see [`choose_in`]).
pub fn choose(nodes: &[Node], used: &HashMap<String, Request>, vmi: &VirtualMachineInstance) -> Result<String, String> {
    let namespaces = NamespaceLabels::new();
    choose_in(nodes, &Context { used, peers: None, namespaces: &namespaces, replicas: &[] }, vmi)
}

/// The node chosen for a VMI, or why there is none.
pub fn choose_in(nodes: &[Node], ctx: &Context<'_>, vmi: &VirtualMachineInstance) -> Result<String, String> {
    let scores = score_nodes(nodes, ctx, vmi)?;
    let best = scores.into_iter().reduce(|best, s| {
        let better = match s.total.partial_cmp(&best.total) {
            Some(Ordering::Greater) => true,
            Some(Ordering::Equal) => s.node < best.node,
            _ => false,
        };
        if better {
            s
        } else {
            best
        }
    });
    match best {
        Some(s) => Ok(s.node),
        None => Err(unschedulable_message(nodes.len(), &[])),
    }
}

/// The scores of the nodes that fit, in the order given; Err: the
/// unschedulable message when none does.
pub fn score_nodes(nodes: &[Node], ctx: &Context<'_>, vmi: &VirtualMachineInstance) -> Result<Vec<Score>, String> {
    let by_name: HashMap<&str, &Node> = nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n))).collect();
    let vm_affinity = ctx.peers.map(|peers| VmAffinity::new(vmi, peers, &by_name, ctx.namespaces));
    let preferred = vmi
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .map(|n| n.preferred.as_slice())
        .unwrap_or_default();
    let mut rejections = Vec::new();
    // (node, load, preferred node affinity, preferred VM affinity)
    let mut fits: Vec<(&str, f64, i64, i64)> = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let load = match evaluate(node, &vmi.spec, ctx.used.get(name).copied().unwrap_or_default()) {
            Ok(load) => load,
            Err(r) => {
                rejections.extend(r);
                continue;
            }
        };
        let labels = &node.metadata.labels;
        if let Some(r) = vm_affinity.as_ref().and_then(|a| a.check(labels)) {
            rejections.push(r);
            continue;
        }
        let node_pref = preferred
            .iter()
            .filter(|t| !t.preference.is_empty() && t.preference.matches(name, labels))
            .map(|t| i64::from(t.weight))
            .sum();
        let vm_pref = vm_affinity.as_ref().map(|a| a.score(labels)).unwrap_or(0);
        fits.push((name, load, node_pref, vm_pref));
    }
    if fits.is_empty() {
        return Err(unschedulable_message(nodes.len(), &rejections));
    }
    // Node affinity: scaled to the best node (Kubernetes' default
    // normalisation); VM affinity: from the lowest to the highest node.
    let max_node = fits.iter().map(|f| f.2).max().unwrap_or(0);
    let (min_vm, max_vm) = fits.iter().fold((i64::MAX, i64::MIN), |(lo, hi), f| (lo.min(f.3), hi.max(f.3)));
    Ok(fits
        .into_iter()
        .map(|(name, load, node_pref, vm_pref)| {
            let node_affinity = if max_node > 0 { MAX_SCORE * node_pref as f64 / max_node as f64 } else { 0.0 };
            let vm_affinity =
                if max_vm > min_vm { MAX_SCORE * (vm_pref - min_vm) as f64 / (max_vm - min_vm) as f64 } else { 0.0 };
            let free = MAX_SCORE * (1.0 - load).clamp(0.0, 1.0);
            let locality = if ctx.replicas.is_empty() {
                0.0
            } else {
                MAX_SCORE * ctx.replicas.iter().filter(|r| r.contains(name)).count() as f64 / ctx.replicas.len() as f64
            };
            let total = NODE_AFFINITY_WEIGHT * node_affinity
                + VM_AFFINITY_WEIGHT * vm_affinity
                + FREE_WEIGHT * free
                + LOCALITY_WEIGHT * locality;
            Score { node: name.to_string(), node_affinity, vm_affinity, free, locality, total }
        })
        .collect())
}

/// A topology domain: a node label and its value.
type Domain = (String, String);

/// The VM (anti-)affinity of the VMI being placed against the bound VMIs,
/// as counts per topology domain (Kubernetes' inter-pod affinity).
#[derive(Debug, Default)]
struct VmAffinity {
    /// Topology keys of the required affinity terms.
    affinity_keys: Vec<String>,
    /// Domains holding a bound VMI that matches every required affinity
    /// term, with how many.
    affinity_counts: HashMap<Domain, usize>,
    /// Whether the VMI matches its own required affinity terms.
    matches_own_terms: bool,
    /// Topology keys of the required anti-affinity terms.
    anti_affinity_keys: Vec<String>,
    /// Domains holding a bound VMI that a required anti-affinity term
    /// selects.
    anti_affinity_domains: BTreeSet<Domain>,
    /// Domains holding a bound VMI whose required anti-affinity selects
    /// the VMI.
    existing_anti_affinity_domains: BTreeSet<Domain>,
    /// Preferred (anti-)affinity, summed per domain.
    preferences: HashMap<Domain, i64>,
}

fn namespace_of(vmi: &VirtualMachineInstance) -> &str {
    vmi.metadata.namespace.as_deref().unwrap_or_default()
}

/// Whether `term`, a term of `owner`, selects `target`.
fn term_selects(
    term: &PodAffinityTerm,
    owner: &VirtualMachineInstance,
    target: &VirtualMachineInstance,
    namespaces: &NamespaceLabels,
) -> bool {
    let ns = namespace_of(target);
    term.covers_namespace(namespace_of(owner), ns, namespaces.get(ns))
        && term.selector_for(&owner.metadata.labels).is_some_and(|s| s.matches(&target.metadata.labels))
}

fn pod_affinity(vmi: &VirtualMachineInstance) -> Option<&PodAffinity> {
    vmi.spec.affinity.as_ref()?.pod_affinity.as_ref()
}

fn pod_anti_affinity(vmi: &VirtualMachineInstance) -> Option<&PodAffinity> {
    vmi.spec.affinity.as_ref()?.pod_anti_affinity.as_ref()
}

fn required(a: Option<&PodAffinity>) -> &[PodAffinityTerm] {
    a.map(|a| a.required.as_slice()).unwrap_or_default()
}

fn preferred(a: Option<&PodAffinity>) -> &[WeightedPodAffinityTerm] {
    a.map(|a| a.preferred.as_slice()).unwrap_or_default()
}

fn domain(labels: &BTreeMap<String, String>, key: &str) -> Option<Domain> {
    labels.get(key).map(|v| (key.to_string(), v.clone()))
}

impl VmAffinity {
    fn new(
        vmi: &VirtualMachineInstance,
        peers: &[Peer<'_>],
        nodes: &HashMap<&str, &Node>,
        namespaces: &NamespaceLabels,
    ) -> VmAffinity {
        let (affinity, anti) = (pod_affinity(vmi), pod_anti_affinity(vmi));
        let mut a = VmAffinity {
            affinity_keys: required(affinity).iter().map(|t| t.topology_key.clone()).collect(),
            matches_own_terms: !required(affinity).is_empty()
                && required(affinity).iter().all(|t| term_selects(t, vmi, vmi, namespaces)),
            anti_affinity_keys: required(anti).iter().map(|t| t.topology_key.clone()).collect(),
            ..Default::default()
        };
        for peer in peers {
            // A VMI on a node that is gone is in no domain.
            let Some(node) = nodes.get(peer.node) else { continue };
            let labels = &node.metadata.labels;
            let other = peer.vmi;
            let terms = required(affinity);
            if !terms.is_empty() && terms.iter().all(|t| term_selects(t, vmi, other, namespaces)) {
                for t in terms {
                    if let Some(d) = domain(labels, &t.topology_key) {
                        *a.affinity_counts.entry(d).or_default() += 1;
                    }
                }
            }
            for t in required(anti).iter().filter(|t| term_selects(t, vmi, other, namespaces)) {
                a.anti_affinity_domains.extend(domain(labels, &t.topology_key));
            }
            for t in required(pod_anti_affinity(other)).iter().filter(|t| term_selects(t, other, vmi, namespaces)) {
                a.existing_anti_affinity_domains.extend(domain(labels, &t.topology_key));
            }
            // Preferences, both ways.
            let mut add = |t: &PodAffinityTerm, weight: i64| {
                if let Some(d) = domain(labels, &t.topology_key) {
                    *a.preferences.entry(d).or_default() += weight;
                }
            };
            for w in preferred(affinity).iter().filter(|w| term_selects(&w.pod_affinity_term, vmi, other, namespaces)) {
                add(&w.pod_affinity_term, i64::from(w.weight));
            }
            for w in preferred(anti).iter().filter(|w| term_selects(&w.pod_affinity_term, vmi, other, namespaces)) {
                add(&w.pod_affinity_term, -i64::from(w.weight));
            }
            let theirs = pod_affinity(other);
            for t in required(theirs).iter().filter(|t| term_selects(t, other, vmi, namespaces)) {
                add(t, HARD_POD_AFFINITY_WEIGHT);
            }
            for w in preferred(theirs).iter().filter(|w| term_selects(&w.pod_affinity_term, other, vmi, namespaces)) {
                add(&w.pod_affinity_term, i64::from(w.weight));
            }
            let theirs = pod_anti_affinity(other);
            for w in preferred(theirs).iter().filter(|w| term_selects(&w.pod_affinity_term, other, vmi, namespaces)) {
                add(&w.pod_affinity_term, -i64::from(w.weight));
            }
        }
        a
    }

    /// Why a node with these labels cannot take the VMI, if it cannot. The
    /// VMI's own rules are reported before those of the bound VMIs (when a
    /// group repels itself, its own rule is the one to read about).
    fn check(&self, labels: &BTreeMap<String, String>) -> Option<Rejection> {
        let mut all_found = true;
        for key in &self.affinity_keys {
            // A node without the topology label is in no domain.
            let Some(d) = domain(labels, key) else { return Some(Rejection::PodAffinity) };
            all_found &= self.affinity_counts.get(&d).is_some_and(|n| *n > 0);
        }
        // The first of a group: no VMI matches the terms anywhere yet, and
        // this one matches them itself.
        let first_of_group = self.affinity_counts.is_empty() && self.matches_own_terms;
        if !(all_found || first_of_group) {
            return Some(Rejection::PodAffinity);
        }
        let repelled = self
            .anti_affinity_keys
            .iter()
            .filter_map(|key| domain(labels, key))
            .any(|d| self.anti_affinity_domains.contains(&d));
        if repelled {
            return Some(Rejection::PodAntiAffinity);
        }
        let kept_out =
            labels.iter().any(|(k, v)| self.existing_anti_affinity_domains.contains(&(k.clone(), v.clone())));
        kept_out.then_some(Rejection::ExistingAntiAffinity)
    }

    /// The preferred (anti-)affinity of the node's domains, summed.
    fn score(&self, labels: &BTreeMap<String, String>) -> i64 {
        self.preferences.iter().filter(|((k, v), _)| labels.get(k) == Some(v)).map(|(_, w)| w).sum()
    }
}

/// When to try an unschedulable VMI again, `since` after it became
/// unschedulable: soon at first (a node may be registering), then less
/// often, up to [`RETRY_UNSCHEDULABLE`]. Node and VMI changes retry at once
/// anyway.
fn retry_unschedulable(since: Duration) -> Duration {
    (since / 2).clamp(Duration::from_secs(1), RETRY_UNSCHEDULABLE)
}

fn phase(vmi: &VirtualMachineInstance) -> &str {
    vmi.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn is_final(vmi: &VirtualMachineInstance) -> bool {
    matches!(phase(vmi), "Succeeded" | "Failed")
}

fn node_of(vmi: &VirtualMachineInstance) -> Option<&str> {
    vmi.status.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

/// Waiting for a node: unbound, not started, not being deleted.
fn is_pending(vmi: &VirtualMachineInstance) -> bool {
    node_of(vmi).is_none() && matches!(phase(vmi), "" | PENDING) && vmi.metadata.deletion_timestamp.is_none()
}

fn is_pending_json(v: &Value) -> bool {
    let node = v.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default();
    let phase = v.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    node.is_empty() && matches!(phase, "" | PENDING) && v.pointer("/metadata/deletionTimestamp").is_none()
}

/// Why a scheduling attempt failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("cannot read VirtualMachineInstance {key}: {source}")]
    ReadVmi {
        key: ObjectKey,
        #[source]
        source: ClientError,
    },
    #[error("cannot list {what} to schedule {key}: {source}")]
    List {
        key: ObjectKey,
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("cannot read the Volume of claim {claim} to schedule {key}: {source}")]
    ReadVolume {
        key: ObjectKey,
        claim: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot bind VirtualMachineInstance {key} to node {node}: {source}")]
    Bind {
        key: ObjectKey,
        node: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot label VirtualMachineInstance {key} with its node {node}: {source}")]
    Label {
        key: ObjectKey,
        node: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot report that VirtualMachineInstance {key} is unschedulable: {source}")]
    Report {
        key: ObjectKey,
        #[source]
        source: ClientError,
    },
}

/// The scheduler's reconciler.
pub struct Scheduler {
    api: Arc<dyn Api>,
    events: EventRecorder,
    /// Recent bindings, with when they were made.
    assumed: Mutex<Vec<(Assumed, Instant)>>,
}

/// Runs the scheduler until the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    let reconciler = Arc::new(Scheduler::new(api.clone()));
    Controller::new("scheduler", api, Gvr::of::<VirtualMachineInstance>())
        // A VMI that finished or went away frees room for the waiting ones;
        // one bound to a node may be what those with VM affinity wait for.
        .also_on_primary(|change, vmi, store| {
            let frees = change == Change::Deleted
                || matches!(vmi.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
            let bound = vmi.pointer("/status/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
            if frees {
                pending_keys(store)
            } else if bound {
                store.keys_where(|v| is_pending_json(v) && v.pointer("/spec/affinity/podAffinity").is_some())
            } else {
                Vec::new()
            }
        })
        .watches(Gvr::of::<Node>(), |_, _, store| pending_keys(store))
        .workers(1)
        .resync_every(RESYNC)
        .run(reconciler)
        .await
}

fn pending_keys(store: &Store) -> Vec<ObjectKey> {
    store.keys_where(is_pending_json)
}

fn now() -> Time {
    Time(Utc::now().trunc_subsecs(0))
}

fn enter_phase(status: &mut VirtualMachineInstanceStatus, phase: &str, now: Time) {
    if status.phase.as_deref() != Some(phase) {
        status.phase = Some(phase.to_string());
        status
            .phase_transition_timestamps
            .push(PhaseTransitionTimestamp { phase: Some(phase.to_string()), phase_transition_timestamp: Some(now) });
    }
}

#[async_trait::async_trait]
impl Reconciler for Scheduler {
    type Error = SchedulerError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, SchedulerError> {
        let api = self.api.as_ref();
        let vmis = Typed::<VirtualMachineInstance>::new(api);
        let Some(vmi) = vmis
            .get(key.namespace(), &key.name)
            .await
            .map_err(|source| SchedulerError::ReadVmi { key: key.clone(), source })?
        else {
            return Ok(Action::Done);
        };
        if let Some(node) = node_of(&vmi) {
            // Bound: make sure the label says where (a bind may have been
            // interrupted between its two writes).
            if vmi.metadata.labels.get(NODE_NAME_LABEL).map(String::as_str) != Some(node) {
                self.label(key, node).await?;
            }
            return Ok(Action::Done);
        }
        if !is_pending(&vmi) {
            return Ok(Action::Done);
        }
        let nodes = Typed::<Node>::new(api)
            .list(None, &Selectors::default())
            .await
            .map_err(|source| SchedulerError::List { key: key.clone(), what: "nodes", source })?;
        let all = vmis.list(None, &Selectors::default()).await.map_err(|source| SchedulerError::List {
            key: key.clone(),
            what: "VirtualMachineInstances",
            source,
        })?;
        let now = now();
        let assumed = self.assumed_bindings(&all);
        let uid = vmi.metadata.uid.as_deref().unwrap_or_default();
        let used = usage(&all, &assumed, uid);
        let peers = peers(&all, &assumed, uid);
        let namespaces = self.namespace_labels(key, &vmi, &peers).await?;
        let replicas = self.replica_nodes(key, &vmi).await?;
        let ctx = Context { used: &used, peers: Some(&peers), namespaces: &namespaces, replicas: &replicas };
        match choose_in(&nodes, &ctx, &vmi) {
            Ok(node) => self.bind(key, vmi, node, now).await,
            Err(message) => self.report_unschedulable(key, vmi, message, now).await,
        }
    }
}

impl Scheduler {
    pub fn new(api: Arc<dyn Api>) -> Self {
        Scheduler { events: EventRecorder::new(api.clone(), COMPONENT), api, assumed: Mutex::default() }
    }

    async fn bind(
        &self,
        key: &ObjectKey,
        mut vmi: VirtualMachineInstance,
        node: String,
        now: Time,
    ) -> Result<Action, SchedulerError> {
        let status = vmi.status.get_or_insert_with(Default::default);
        status.node_name = Some(node.clone());
        enter_phase(status, SCHEDULED, now);
        let scheduled =
            Condition { type_: POD_SCHEDULED.to_string(), status: "True".to_string(), ..Default::default() };
        set_condition(&mut status.conditions, scheduled, now);
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        match vmis.update_status(&vmi).await {
            Ok(_) => {}
            // Changed or deleted meanwhile: its next event brings it back.
            Err(e) if e.is_conflict() => return Ok(Action::RequeueAfter(Duration::ZERO)),
            Err(e) if e.is_not_found() => return Ok(Action::Done),
            Err(source) => return Err(SchedulerError::Bind { key: key.clone(), node, source }),
        }
        self.assumed.lock().unwrap_or_else(PoisonError::into_inner).push((
            Assumed {
                uid: vmi.metadata.uid.clone().unwrap_or_default(),
                node: node.clone(),
                request: Request::of(&vmi.spec),
            },
            Instant::now(),
        ));
        tracing::info!(vmi = %key, %node, "scheduled");
        self.label(key, &node).await?;
        self.events
            .record(&reference_to(&vmi), EventType::Normal, SCHEDULED, format!("Successfully assigned {key} to {node}"))
            .await;
        Ok(Action::Done)
    }

    /// The labels of every namespace, if a VM (anti-)affinity term of the
    /// VMI or of a bound VMI selects namespaces by label; none otherwise.
    async fn namespace_labels(
        &self,
        key: &ObjectKey,
        vmi: &VirtualMachineInstance,
        peers: &[Peer<'_>],
    ) -> Result<NamespaceLabels, SchedulerError> {
        let selects = |v: &VirtualMachineInstance| {
            [pod_affinity(v), pod_anti_affinity(v)].into_iter().flatten().any(PodAffinity::selects_namespaces)
        };
        if !selects(vmi) && !peers.iter().any(|p| selects(p.vmi)) {
            return Ok(NamespaceLabels::new());
        }
        let namespaces = Typed::<Namespace>::new(self.api.as_ref())
            .list(None, &Selectors::default())
            .await
            .map_err(|source| SchedulerError::List { key: key.clone(), what: "namespaces", source })?;
        Ok(namespaces.into_iter().filter_map(|n| Some((n.metadata.name?, n.metadata.labels))).collect())
    }

    /// For each of the VMI's volumes that exists, the nodes holding a
    /// Running replica of it (for locality).
    async fn replica_nodes(
        &self,
        key: &ObjectKey,
        vmi: &VirtualMachineInstance,
    ) -> Result<Vec<BTreeSet<String>>, SchedulerError> {
        let api = self.api.as_ref();
        let ns = key.namespace().unwrap_or_default();
        let mut out = Vec::new();
        let claims: BTreeSet<&str> = vmi.spec.volumes.iter().filter_map(|v| v.claim_name()).collect();
        for claim in claims {
            let volume = sheaf_client::claims::volume_for_claim(api, ns, claim)
                .await
                .map_err(|source| SchedulerError::ReadVolume { key: key.clone(), claim: claim.to_string(), source })?;
            let Some(volume) = volume else { continue };
            let name = volume.metadata.name.clone().unwrap_or_default();
            let sel = Selectors { labels: format!("{VOLUME_LABEL}={name}"), fields: String::new() };
            let replicas = Typed::<Replica>::new(api)
                .list(Some(ns), &sel)
                .await
                .map_err(|source| SchedulerError::List { key: key.clone(), what: "replicas", source })?;
            let uid = volume.metadata.uid.as_deref();
            let nodes = replicas
                .into_iter()
                .filter(|r| r.spec.volume_name == name && !r.spec.node_name.is_empty())
                .filter(|r| r.metadata.owner_references.iter().any(|o| Some(o.uid.as_str()) == uid))
                .filter(|r| r.metadata.deletion_timestamp.is_none())
                .filter(|r| r.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Running"))
                .map(|r| r.spec.node_name)
                .collect();
            out.push(nodes);
        }
        Ok(out)
    }

    /// The bindings lists may not show yet; forgets those they show and
    /// those older than [`ASSUME_FOR`].
    fn assumed_bindings(&self, listed: &[VirtualMachineInstance]) -> Vec<Assumed> {
        let mut assumed = self.assumed.lock().unwrap_or_else(PoisonError::into_inner);
        // Keep a binding only while its VMI is listed without its node; a
        // VMI that is gone (deleted) no longer uses anything.
        assumed.retain(|(a, at)| {
            let pending =
                listed.iter().any(|v| v.metadata.uid.as_deref() == Some(a.uid.as_str()) && node_of(v).is_none());
            pending && at.elapsed() < ASSUME_FOR
        });
        assumed.iter().map(|(a, _)| a.clone()).collect()
    }

    async fn label(&self, key: &ObjectKey, node: &str) -> Result<(), SchedulerError> {
        let patch = json!({"metadata": {"labels": {NODE_NAME_LABEL: node}}});
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        match vmis.merge_patch(key.namespace(), &key.name, patch, false).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(SchedulerError::Label { key: key.clone(), node: node.to_string(), source }),
        }
    }

    async fn report_unschedulable(
        &self,
        key: &ObjectKey,
        mut vmi: VirtualMachineInstance,
        message: String,
        now: Time,
    ) -> Result<Action, SchedulerError> {
        let before = vmi.status.clone();
        let status = vmi.status.get_or_insert_with(Default::default);
        enter_phase(status, PENDING, now);
        let unschedulable = Condition {
            type_: POD_SCHEDULED.to_string(),
            status: "False".to_string(),
            reason: Some(UNSCHEDULABLE.to_string()),
            message: Some(message.clone()),
            ..Default::default()
        };
        set_condition(&mut status.conditions, unschedulable, now);
        if vmi.status != before {
            let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
            match vmis.update_status(&vmi).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() => return Ok(Action::RequeueAfter(Duration::ZERO)),
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(source) => return Err(SchedulerError::Report { key: key.clone(), source }),
            }
            tracing::info!(vmi = %key, %message, "unschedulable");
            self.events.record(&reference_to(&vmi), EventType::Warning, "FailedScheduling", message).await;
        }
        let since = vmi
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == POD_SCHEDULED))
            .and_then(|c| c.last_transition_time)
            .and_then(|t| (now.0 - t.0).to_std().ok())
            .unwrap_or_default();
        Ok(Action::RequeueAfter(retry_unschedulable(since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheaf_types::core::{NodeCondition, NodeSpec, NodeStatus};
    use sheaf_types::quantity::Quantity;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn node(name: &str, cpu: &str, mem: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.status = Some(NodeStatus {
            allocatable: [("cpu".to_string(), q(cpu)), ("memory".to_string(), q(mem))].into_iter().collect(),
            conditions: vec![NodeCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }],
            ..Default::default()
        });
        n
    }

    fn vmi(name: &str, mem: &str) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::default();
        v.metadata.name = Some(name.into());
        v.metadata.uid = Some(name.into());
        v.spec.domain.resources.requests.insert("memory".into(), q(mem));
        v
    }

    fn bound(name: &str, mem: &str, node: &str) -> VirtualMachineInstance {
        let mut v = vmi(name, mem);
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(node.into()),
            phase: Some("Running".into()),
            ..Default::default()
        });
        v
    }

    #[test]
    fn quantities_print_like_kubernetes() {
        assert_eq!(Bytes(64 << 30).to_string(), "64Gi");
        assert_eq!(Bytes(1536 << 20).to_string(), "1.5Gi");
        assert_eq!(Bytes((64 << 30) + (32 << 20)).to_string(), "64.03Gi");
        assert_eq!(Bytes(1 << 20).to_string(), "1Mi");
        assert_eq!(Bytes(512).to_string(), "512");
        assert_eq!(MilliCpu(2000).to_string(), "2");
        assert_eq!(MilliCpu(1500).to_string(), "1500m");
    }

    #[test]
    fn requests() {
        let mut v = vmi("a", "1Gi");
        assert_eq!(
            Request::of(&v.spec),
            Request { memory: Bytes((1 << 30) + VMI_MEMORY_OVERHEAD.0), cpu: MilliCpu(100) }
        );
        v.spec.domain.resources.overcommit_guest_overhead = Some(true);
        v.spec.domain.cpu = Some(sheaf_types::kubevirt::Cpu { cores: Some(2), sockets: Some(2), ..Default::default() });
        assert_eq!(Request::of(&v.spec), Request { memory: Bytes(1 << 30), cpu: MilliCpu(400) });
        v.spec.domain.resources.requests.insert("cpu".into(), q("500m"));
        assert_eq!(Request::of(&v.spec).cpu, MilliCpu(500));
    }

    /// Places `v` given the other VMIs and no assumed bindings.
    fn place(nodes: &[Node], others: &[VirtualMachineInstance], v: &VirtualMachineInstance) -> Result<String, String> {
        choose(nodes, &usage(others, &[], v.metadata.uid.as_deref().unwrap_or_default()), v)
    }

    #[test]
    fn least_loaded_node_wins() {
        let nodes = [node("a", "4", "8Gi"), node("b", "4", "8Gi")];
        let others = [bound("x", "4Gi", "a")];
        assert_eq!(place(&nodes, &others, &vmi("new", "1Gi")), Ok("b".to_string()));
        assert_eq!(place(&nodes, &[], &vmi("new", "1Gi")), Ok("a".to_string()), "ties by name");
    }

    #[test]
    fn finished_vmis_free_their_room() {
        let nodes = [node("a", "4", "2Gi")];
        let mut done = bound("x", "1900Mi", "a");
        assert!(place(&nodes, std::slice::from_ref(&done), &vmi("new", "1Gi")).is_err());
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        assert_eq!(place(&nodes, &[done], &vmi("new", "1Gi")), Ok("a".to_string()));
    }

    #[test]
    fn assumed_bindings_count_until_lists_show_them() {
        let nodes = [node("a", "4", "2Gi")];
        let first = vmi("first", "1536Mi");
        let assumed = [Assumed { uid: "first".into(), node: "a".into(), request: Request::of(&first.spec) }];
        let second = vmi("second", "1536Mi");
        // The list still shows the first VMI unbound (or not at all).
        for listed in [vec![first.clone()], vec![]] {
            let used = usage(&listed, &assumed, "second");
            assert!(choose(&nodes, &used, &second).is_err(), "the node is taken");
        }
        // Once the list shows it bound, it is not counted twice.
        let used = usage(&[bound("first", "1536Mi", "a")], &assumed, "second");
        assert_eq!(used.get("a").map(|r| r.memory), Some(Request::of(&first.spec).memory));
        // Nor when it finished.
        let mut done = bound("first", "1536Mi", "a");
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Failed".into());
        }
        assert!(usage(&[done], &assumed, "second").is_empty());
    }

    #[test]
    fn unschedulable_retries_slow_down() {
        assert_eq!(retry_unschedulable(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(retry_unschedulable(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(retry_unschedulable(Duration::from_secs(3600)), RETRY_UNSCHEDULABLE);
    }

    #[test]
    fn rejection_messages() {
        let mut cordoned = node("c", "4", "8Gi");
        cordoned.spec = Some(NodeSpec { unschedulable: Some(true), ..Default::default() });
        let mut not_ready = node("d", "4", "8Gi");
        if let Some(s) = not_ready.status.as_mut() {
            s.conditions[0].status = "Unknown".into();
        }
        let mut tainted = node("e", "4", "8Gi");
        tainted.spec = Some(NodeSpec {
            taints: vec![Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }],
            ..Default::default()
        });
        let nodes = [node("a", "4", "2Gi"), node("b", "50m", "1Gi"), cordoned, not_ready, tainted];
        let msg = place(&nodes, &[], &vmi("big", "64Gi")).expect_err("nothing fits");
        assert_eq!(
            msg,
            "0/5 nodes are available: 1 Insufficient cpu (wants 100m, 50m free), \
             1 Insufficient memory (wants 64Gi, 1Gi free), 1 Insufficient memory (wants 64Gi, 2Gi free), \
             1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were not ready, \
             1 node(s) were unschedulable."
                .replace("64Gi", &Bytes((64 << 30) + VMI_MEMORY_OVERHEAD.0).to_string())
        );
        assert_eq!(place(&[], &[], &vmi("x", "1Gi")).map_err(|m| m.starts_with("0/0 nodes")), Err(true));
    }

    #[test]
    fn tolerations_and_selectors() {
        let taint =
            Taint { key: "dedicated".into(), value: Some("vms".into()), effect: "NoSchedule".into(), time_added: None };
        let t = |key: Option<&str>, op: Option<&str>, value: Option<&str>, effect: Option<&str>| Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        };
        assert!(tolerates(&t(Some("dedicated"), None, Some("vms"), None), &taint));
        assert!(tolerates(&t(Some("dedicated"), Some("Exists"), None, Some("NoSchedule")), &taint));
        assert!(tolerates(&t(None, Some("Exists"), None, None), &taint));
        assert!(!tolerates(&t(Some("dedicated"), None, Some("other"), None), &taint));
        assert!(!tolerates(&t(Some("dedicated"), Some("Exists"), None, Some("NoExecute")), &taint));

        let mut n = node("a", "4", "8Gi");
        n.metadata.labels.insert("disk".into(), "ssd".into());
        let mut v = vmi("x", "1Gi");
        v.spec.node_selector.insert("disk".into(), "ssd".into());
        assert!(evaluate(&n, &v.spec, Request::default()).is_ok());
        v.spec.node_selector.insert("gpu".into(), "yes".into());
        assert_eq!(
            evaluate(&n, &v.spec, Request::default()),
            Err(vec![Rejection::NodeSelector("disk=ssd,gpu=yes".into())])
        );
    }

    // ------------------------------------------------------------ affinity

    use serde_json::json;
    use sheaf_types::kubevirt::affinity::Affinity;

    /// A Ready 4-CPU 8Gi node with these labels (and its hostname label).
    fn labelled(name: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = node(name, "4", "8Gi");
        n.metadata.labels.insert("kubernetes.io/hostname".into(), name.into());
        for (k, v) in labels {
            n.metadata.labels.insert(k.to_string(), v.to_string());
        }
        n
    }

    fn with_affinity(mut v: VirtualMachineInstance, affinity: Value) -> VirtualMachineInstance {
        let a: Affinity = serde_json::from_value(affinity).unwrap_or_else(|e| panic!("{e}"));
        v.spec.affinity = Some(a);
        v
    }

    /// A VMI in namespace `default` with these labels.
    fn app(name: &str, labels: &[(&str, &str)]) -> VirtualMachineInstance {
        let mut v = vmi(name, "1Gi");
        v.metadata.namespace = Some("default".into());
        v.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v
    }

    fn on(mut v: VirtualMachineInstance, node: &str) -> VirtualMachineInstance {
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(node.into()),
            phase: Some("Running".into()),
            ..Default::default()
        });
        v
    }

    /// Places `v` with VM affinity against `others` and locality from
    /// `replicas`.
    fn place_in(
        nodes: &[Node],
        others: &[VirtualMachineInstance],
        namespaces: &NamespaceLabels,
        replicas: &[BTreeSet<String>],
        v: &VirtualMachineInstance,
    ) -> Result<String, String> {
        let uid = v.metadata.uid.as_deref().unwrap_or_default();
        let used = usage(others, &[], uid);
        let peers = peers(others, &[], uid);
        choose_in(nodes, &Context { used: &used, peers: Some(&peers), namespaces, replicas }, v)
    }

    fn place_among(
        nodes: &[Node],
        others: &[VirtualMachineInstance],
        v: &VirtualMachineInstance,
    ) -> Result<String, String> {
        place_in(nodes, others, &NamespaceLabels::new(), &[], v)
    }

    /// The nodes of `nodes` a VMI with this required node affinity fits.
    fn fitting(nodes: &[Node], terms: Value) -> Vec<String> {
        let v = with_affinity(
            vmi("x", "1Gi"),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}),
        );
        nodes
            .iter()
            .filter(|n| evaluate(n, &v.spec, Request::default()).is_ok())
            .filter_map(|n| n.metadata.name.clone())
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> Value {
        json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
    }

    #[test]
    fn node_affinity_operators() {
        let nodes = [
            labelled("a", &[("zone", "east"), ("cores", "8")]),
            labelled("b", &[("zone", "west"), ("cores", "16")]),
            labelled("c", &[("cores", "many")]),
        ];
        assert_eq!(fitting(&nodes, json!([expr("zone", "In", &["east", "north"])])), ["a"]);
        assert_eq!(fitting(&nodes, json!([expr("zone", "NotIn", &["east"])])), ["b", "c"], "no label: not in");
        assert_eq!(fitting(&nodes, json!([expr("zone", "Exists", &[])])), ["a", "b"]);
        assert_eq!(fitting(&nodes, json!([expr("zone", "DoesNotExist", &[])])), ["c"]);
        assert_eq!(fitting(&nodes, json!([expr("cores", "Gt", &["8"])])), ["b"], "strictly, and integers only");
        assert_eq!(fitting(&nodes, json!([expr("cores", "Lt", &["16"])])), ["a"]);
        assert_eq!(fitting(&nodes, json!([expr("cores", "Lt", &["x"])])), Vec::<String>::new());
        assert_eq!(fitting(&nodes, json!([expr("zone", "Near", &["east"])])), Vec::<String>::new());
        let by_name = |op: &str| json!([{"matchFields": [{"key": "metadata.name", "operator": op, "values": ["b"]}]}]);
        assert_eq!(fitting(&nodes, by_name("In")), ["b"]);
        assert_eq!(fitting(&nodes, by_name("NotIn")), ["a", "c"]);
        let other_field = json!([{"matchFields": [{"key": "spec.podCIDR", "operator": "In", "values": ["b"]}]}]);
        assert_eq!(fitting(&nodes, other_field), Vec::<String>::new());
    }

    #[test]
    fn node_affinity_terms_are_ored_and_requirements_anded() {
        let nodes = [
            labelled("a", &[("zone", "east"), ("disk", "ssd")]),
            labelled("b", &[("zone", "east")]),
            labelled("c", &[("zone", "west"), ("disk", "ssd")]),
        ];
        let anded = json!([{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["east"]},
            {"key": "disk", "operator": "Exists"}
        ]}]);
        assert_eq!(fitting(&nodes, anded), ["a"]);
        let ored = json!([expr("zone", "In", &["west"]), {"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["b"]}]}]);
        assert_eq!(fitting(&nodes, ored), ["b", "c"]);
        // Labels and fields of one term are ANDed too.
        let both = json!([{"matchExpressions": [{"key": "disk", "operator": "Exists"}],
            "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["a"]}]}]);
        assert_eq!(fitting(&nodes, both), ["c"]);
        // An empty term matches no node; another term still may.
        assert_eq!(fitting(&nodes, json!([{}])), Vec::<String>::new());
        assert_eq!(fitting(&nodes, json!([{}, expr("zone", "In", &["west"])])), ["c"]);
        // With the nodeSelector: both must hold.
        let mut v = with_affinity(
            vmi("x", "1Gi"),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [expr("zone", "In", &["east"])]}}}),
        );
        v.spec.node_selector.insert("disk".into(), "ssd".into());
        assert_eq!(place(&nodes, &[], &v), Ok("a".to_string()));
    }

    #[test]
    fn node_affinity_refusals_are_counted_per_node() {
        let nodes = [labelled("a", &[]), labelled("b", &[])];
        let v = with_affinity(
            vmi("x", "1Gi"),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [expr("zone", "In", &["east"])]}}}),
        );
        assert_eq!(
            place(&nodes, &[], &v),
            Err("0/2 nodes are available: 2 node(s) didn't match node affinity.".into())
        );
    }

    #[test]
    fn preferred_node_affinity_weights_add_up_and_beat_load() {
        let nodes = [
            labelled("a", &[("zone", "east")]),
            labelled("b", &[("disk", "ssd")]),
            labelled("c", &[("disk", "ssd"), ("zone", "east")]),
        ];
        let prefer = |terms: Value| {
            with_affinity(
                vmi("x", "1Gi"),
                json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": terms}}),
            )
        };
        let v = prefer(json!([
            {"weight": 10, "preference": expr("zone", "In", &["east"])},
            {"weight": 20, "preference": expr("disk", "In", &["ssd"])}
        ]));
        // c matches both terms (30) although it is the most loaded.
        let busy = [bound("y", "4Gi", "c")];
        assert_eq!(place(&nodes, &busy, &v), Ok("c".to_string()));
        let scores = score_nodes(
            &nodes,
            &Context { used: &usage(&busy, &[], "x"), peers: None, namespaces: &NamespaceLabels::new(), replicas: &[] },
            &v,
        );
        let by_node: Vec<(String, f64)> =
            scores.unwrap_or_default().into_iter().map(|s| (s.node, s.node_affinity)).collect();
        assert_eq!(by_node, [("a".into(), 100.0 / 3.0), ("b".into(), 200.0 / 3.0), ("c".into(), 100.0)]);
        // Preferences never exclude: a node matching none still fits.
        let v = prefer(json!([{"weight": 100, "preference": expr("gpu", "Exists", &[])}]));
        assert_eq!(place(&nodes, &busy, &v), Ok("a".to_string()), "least loaded, then by name");
    }

    fn anti(selector: Value, key: &str) -> Value {
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": selector, "topologyKey": key}]}})
    }

    fn together(selector: Value, key: &str) -> Value {
        json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": selector, "topologyKey": key}]}})
    }

    const HOST: &str = "kubernetes.io/hostname";

    #[test]
    fn required_anti_affinity_spreads_by_domain() {
        let nodes = [
            labelled("a", &[("zone", "east")]),
            labelled("b", &[("zone", "east")]),
            labelled("c", &[("zone", "west")]),
        ];
        let web = |name: &str| {
            with_affinity(app(name, &[("app", "web")]), anti(json!({"matchLabels": {"app": "web"}}), HOST))
        };
        let first = on(web("w1"), "a");
        assert_eq!(place_among(&nodes, std::slice::from_ref(&first), &web("w2")), Ok("b".to_string()));
        let second = on(web("w2"), "b");
        let third = on(web("w3"), "c");
        assert_eq!(
            place_among(&nodes, &[first.clone(), second.clone(), third], &web("w4")),
            Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.".into())
        );
        // By zone: a and b are one domain.
        let by_zone = |name: &str| {
            with_affinity(app(name, &[("app", "db")]), anti(json!({"matchLabels": {"app": "db"}}), "zone"))
        };
        assert_eq!(place_among(&nodes, &[on(by_zone("d1"), "a")], &by_zone("d2")), Ok("c".to_string()));
        // A node without the topology label is in no domain: it fits.
        let mut bare = labelled("d", &[]);
        bare.metadata.labels.clear();
        let nodes = [labelled("a", &[("zone", "east")]), bare];
        assert_eq!(place_among(&nodes, &[on(by_zone("d1"), "a")], &by_zone("d2")), Ok("d".to_string()));
        // Other labels, finished VMIs and the VMI itself do not repel.
        let nodes = [labelled("a", &[])];
        let other = on(app("o", &[("app", "other")]), "a");
        let mut done = on(app("w0", &[("app", "web")]), "a");
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        let me = on(web("w1"), "a");
        assert_eq!(place_among(&nodes, &[other, done, me.clone()], &me), Ok("a".to_string()));
    }

    #[test]
    fn bound_vmis_anti_affinity_keeps_others_away() {
        let nodes = [labelled("a", &[]), labelled("b", &[])];
        // The bound VMI repels app=web; the new one has no affinity itself.
        let loner = on(with_affinity(app("loner", &[]), anti(json!({"matchLabels": {"app": "web"}}), HOST)), "a");
        assert_eq!(
            place_among(&nodes, std::slice::from_ref(&loner), &app("w", &[("app", "web")])),
            Ok("b".to_string())
        );
        let nodes = [labelled("a", &[])];
        assert_eq!(
            place_among(&nodes, &[loner], &app("w", &[("app", "web")])),
            Err("0/1 nodes are available: 1 node(s) didn't satisfy existing VMIs' anti-affinity rules.".into())
        );
    }

    #[test]
    fn required_affinity_follows_its_group() {
        let nodes = [
            labelled("a", &[("zone", "east")]),
            labelled("b", &[("zone", "west")]),
            labelled("c", &[("zone", "west")]),
        ];
        let db = on(app("db", &[("app", "db")]), "c");
        let near_db =
            with_affinity(app("web", &[("app", "web")]), together(json!({"matchLabels": {"app": "db"}}), "zone"));
        // b and c share the zone; b is emptier.
        assert_eq!(place_among(&nodes, std::slice::from_ref(&db), &near_db), Ok("b".to_string()));
        // No db anywhere, and the VMI is not a db itself: nowhere.
        assert_eq!(
            place_among(&nodes, &[], &near_db),
            Err("0/3 nodes are available: 3 node(s) didn't match pod affinity rules.".into())
        );
        // The first of a group that wants to be together goes anywhere with
        // the topology label.
        let mut bare = labelled("d", &[]);
        bare.metadata.labels.clear();
        let nodes = [labelled("a", &[("zone", "east")]), bare.clone()];
        let group = |name: &str| {
            with_affinity(app(name, &[("app", "g")]), together(json!({"matchLabels": {"app": "g"}}), "zone"))
        };
        assert_eq!(place_among(&nodes, &[], &group("g1")), Ok("a".to_string()));
        assert_eq!(
            place_among(&[bare], &[], &group("g1")),
            Err("0/1 nodes are available: 1 node(s) didn't match pod affinity rules.".into())
        );
        // A matching VMI on a node without the label makes no domain.
        let nodes = [labelled("a", &[("zone", "east")]), labelled("b", &[])];
        assert_eq!(place_among(&nodes, &[on(app("g0", &[("app", "g")]), "b")], &group("g1")), Ok("a".to_string()));
    }

    #[test]
    fn required_affinity_peers_must_match_every_term() {
        let nodes = [labelled("a", &[("zone", "east")]), labelled("b", &[("zone", "west")])];
        let two_terms = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"},
            {"labelSelector": {"matchLabels": {"tier": "gold"}}, "topologyKey": "zone"}
        ]}});
        let v = with_affinity(app("web", &[]), two_terms);
        let db_only = on(app("db", &[("app", "db")]), "a");
        let gold = on(app("gold", &[("app", "db"), ("tier", "gold")]), "b");
        assert_eq!(place_among(&nodes, &[db_only.clone(), gold], &v), Ok("b".to_string()));
        assert!(place_among(&nodes, &[db_only], &v).is_err(), "a peer matching one term is not enough");
    }

    /// Whether `others`, all on the one node there is, keep `v` off it.
    fn kept_off(others: &[VirtualMachineInstance], namespaces: &NamespaceLabels, v: &VirtualMachineInstance) -> bool {
        place_in(&[labelled("a", &[])], others, namespaces, &[], v).is_err()
    }

    #[test]
    fn selectors_and_namespaces() {
        let mut elsewhere = on(app("other-ns", &[("app", "web")]), "a");
        elsewhere.metadata.namespace = Some("prod".into());
        let elsewhere = [elsewhere];
        let none = NamespaceLabels::new();
        let rule = |term: Value| json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}});
        let web = |term: Value| with_affinity(app("w", &[("app", "web")]), rule(term));
        let sel = json!({"matchLabels": {"app": "web"}});
        // Own namespace only by default.
        assert!(!kept_off(&elsewhere, &none, &web(json!({"labelSelector": sel, "topologyKey": HOST}))));
        // Listed namespaces.
        let v = web(json!({"labelSelector": sel, "topologyKey": HOST, "namespaces": ["prod"]}));
        assert!(kept_off(&elsewhere, &none, &v));
        // A namespace selector, by the namespaces' labels; {} is every one.
        let labels: NamespaceLabels = [("prod".to_string(), [("env".to_string(), "prod".to_string())].into())].into();
        let v = web(json!({"labelSelector": sel, "topologyKey": HOST,
            "namespaceSelector": {"matchLabels": {"env": "prod"}}}));
        assert!(kept_off(&elsewhere, &labels, &v));
        assert!(!kept_off(&elsewhere, &none, &v), "prod has no labels here");
        let v = web(json!({"labelSelector": sel, "topologyKey": HOST, "namespaceSelector": {}}));
        assert!(kept_off(&elsewhere, &labels, &v));

        // An empty label selector selects every VMI, a missing one none.
        let other = [on(app("x", &[("app", "other")]), "a")];
        assert!(kept_off(&other, &none, &web(json!({"labelSelector": {}, "topologyKey": HOST}))));
        assert!(!kept_off(&other, &none, &web(json!({"topologyKey": HOST}))));
        // matchExpressions, ANDed with matchLabels.
        let exprs = |op: &str, values: &[&str]| {
            web(json!({"labelSelector": {"matchExpressions": [{"key": "app", "operator": op, "values": values}]},
                "topologyKey": HOST}))
        };
        assert!(kept_off(&other, &none, &exprs("In", &["other", "x"])));
        assert!(!kept_off(&other, &none, &exprs("In", &["web"])));
        assert!(!kept_off(&other, &none, &exprs("NotIn", &["other"])));
        assert!(kept_off(&other, &none, &exprs("NotIn", &["web"])));
        assert!(kept_off(&other, &none, &exprs("Exists", &[])));
        assert!(!kept_off(&other, &none, &exprs("DoesNotExist", &[])));
        let both = web(json!({"labelSelector": {"matchLabels": {"app": "other"},
            "matchExpressions": [{"key": "tier", "operator": "Exists"}]}, "topologyKey": HOST}));
        assert!(!kept_off(&other, &none, &both));
    }

    #[test]
    fn match_label_keys_use_the_placed_vmis_values() {
        let v1 = [on(app("v1", &[("app", "web"), ("version", "1")]), "a")];
        let none = NamespaceLabels::new();
        let term = |field: &str, version: &str| {
            let rule = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": HOST, field: ["version"]}]}});
            with_affinity(app("v", &[("app", "web"), ("version", version)]), rule)
        };
        // matchLabelKeys: only VMIs of the same version repel.
        assert!(kept_off(&v1, &none, &term("matchLabelKeys", "1")));
        assert!(!kept_off(&v1, &none, &term("matchLabelKeys", "2")));
        // mismatchLabelKeys: only VMIs of another version repel.
        assert!(!kept_off(&v1, &none, &term("mismatchLabelKeys", "1")));
        assert!(kept_off(&v1, &none, &term("mismatchLabelKeys", "2")));
    }

    #[test]
    fn preferred_vm_affinity_scores_both_ways() {
        let nodes = [labelled("a", &[]), labelled("b", &[]), labelled("c", &[])];
        let pref = |kind: &str, weight: i32| {
            json!({kind: {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": weight, "podAffinityTerm": {
                "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": HOST}}]}})
        };
        let dbs = [
            on(app("db1", &[("app", "db")]), "b"),
            on(app("db2", &[("app", "db")]), "c"),
            on(app("db3", &[("app", "db")]), "c"),
        ];
        // Near the dbs: c has two, even though it is the most loaded.
        let near = with_affinity(app("web", &[]), pref("podAffinity", 10));
        assert_eq!(place_among(&nodes, &dbs, &near), Ok("c".to_string()));
        // Away from them: a has none.
        let away = with_affinity(app("web", &[]), pref("podAntiAffinity", 10));
        assert_eq!(place_among(&nodes, &dbs, &away), Ok("a".to_string()));
        // The bound VMIs' own preferences count for the new one.
        let likes_web = |name: &str, node: &str| {
            let mut v = with_affinity(app(name, &[]), pref("podAffinity", 50));
            if let Some(a) = v.spec.affinity.as_mut().and_then(|a| a.pod_affinity.as_mut()) {
                a.preferred[0].pod_affinity_term.label_selector =
                    serde_json::from_value(json!({"matchLabels": {"app": "web"}})).ok();
            }
            on(v, node)
        };
        let web = app("web", &[("app", "web")]);
        assert_eq!(place_among(&nodes, &[likes_web("l1", "b")], &web), Ok("b".to_string()));
        // Scores go from 0 (lowest node) to 100 (highest).
        let used = usage(&dbs, &[], "web");
        let peers = peers(&dbs, &[], "web");
        let ns = NamespaceLabels::new();
        let ctx = Context { used: &used, peers: Some(&peers), namespaces: &ns, replicas: &[] };
        let scores: Vec<f64> =
            score_nodes(&nodes, &ctx, &near).unwrap_or_default().iter().map(|s| s.vm_affinity).collect();
        assert_eq!(scores, [0.0, 50.0, 100.0]);
    }

    #[test]
    fn assumed_bindings_count_for_anti_affinity() {
        let nodes = [labelled("a", &[]), labelled("b", &[])];
        let web = |name: &str| {
            with_affinity(app(name, &[("app", "web")]), anti(json!({"matchLabels": {"app": "web"}}), HOST))
        };
        // w1 was just bound to a, but the list still shows it unbound.
        let listed = [web("w1")];
        let assumed = [Assumed { uid: "w1".into(), node: "a".into(), request: Request::of(&listed[0].spec) }];
        let w2 = web("w2");
        let used = usage(&listed, &assumed, "w2");
        let peers = peers(&listed, &assumed, "w2");
        let ns = NamespaceLabels::new();
        let ctx = Context { used: &used, peers: Some(&peers), namespaces: &ns, replicas: &[] };
        assert_eq!(choose_in(&nodes, &ctx, &w2), Ok("b".to_string()));
    }

    #[test]
    fn locality_prefers_the_nodes_holding_the_data() {
        let nodes = [labelled("a", &[]), labelled("b", &[]), labelled("c", &[])];
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<String>>();
        let v = app("vm", &[]);
        // One volume with a replica on c: c, though a and b tie on load.
        assert_eq!(place_in(&nodes, &[], &NamespaceLabels::new(), &[set(&["c"])], &v), Ok("c".to_string()));
        // Two volumes: b holds both, c one.
        let replicas = [set(&["b", "c"]), set(&["b"])];
        assert_eq!(place_in(&nodes, &[], &NamespaceLabels::new(), &replicas, &v), Ok("b".to_string()));
        // Locality gives way to a much emptier node (more than 50 points).
        let mut big = bound("big", "6Gi", "c");
        big.spec.domain.resources.requests.insert("cpu".into(), q("3"));
        let busy = [big];
        assert_eq!(place_in(&nodes, &busy, &NamespaceLabels::new(), &[set(&["c"])], &v), Ok("a".to_string()));
        // But not to a slightly emptier one.
        let busy = [bound("small", "1Gi", "c")];
        assert_eq!(place_in(&nodes, &busy, &NamespaceLabels::new(), &[set(&["c"])], &v), Ok("c".to_string()));
        // And never to a node that does not fit.
        let mut cordoned = labelled("c", &[]);
        cordoned.spec = Some(NodeSpec { unschedulable: Some(true), ..Default::default() });
        let nodes = [labelled("a", &[]), cordoned];
        assert_eq!(place_in(&nodes, &[], &NamespaceLabels::new(), &[set(&["c"])], &v), Ok("a".to_string()));
    }

    #[test]
    fn choose_without_vmis_ignores_vm_affinity() {
        // As a migration target search does: node affinity still holds.
        let nodes = [labelled("a", &[("zone", "east")]), labelled("b", &[])];
        let v = with_affinity(
            app("w", &[("app", "web")]),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [expr("zone", "Exists", &[])]}},
                "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}),
        );
        assert_eq!(choose(&nodes, &HashMap::new(), &v), Ok("a".to_string()));
    }
}
