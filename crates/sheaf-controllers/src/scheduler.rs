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
//! A node fits when it is Ready (condition `Ready` is `True`), not cordoned
//! (`spec.unschedulable`), has no `NoSchedule`/`NoExecute` taint the VMI
//! does not tolerate, carries every label of the VMI's `nodeSelector`, and
//! has the VMI's CPU and memory free: its allocatable resources minus the
//! requests of the unfinished VMIs already bound to it. A VMI requests
//! `resources.requests` (else `limits`) memory, else `memory.guest`, plus
//! [`VMI_MEMORY_OVERHEAD`] for QEMU (unless `overcommitGuestOverhead`);
//! and `resources.requests.cpu`, else a tenth of a CPU per vCPU (cores ×
//! sockets × threads; KubeVirt's default allocation ratio of 10). Among the nodes that fit, the least loaded after
//! placement wins (mean of the CPU and memory fractions in use; ties by
//! name).
//!
//! One VMI is scheduled at a time (a single worker), and each attempt
//! reads nodes and VMIs fresh. Bindings the scheduler just made are also
//! counted from memory until a list shows them (as Kubernetes' scheduler
//! "assumes" pods), so that a list lagging behind its own writes never lets
//! two VMIs take the same room.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::{Node, Taint};
use sheaf_types::kubevirt::{
    PhaseTransitionTimestamp, Toleration, VirtualMachineInstance, VirtualMachineInstanceSpec,
    VirtualMachineInstanceStatus,
};
use sheaf_types::meta::{set_condition, Condition};
use sheaf_types::Time;
use tokio::time::Instant;

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Change, Controller, ObjectKey, Reconciler, Store};

/// `source.component` of the scheduler's Events.
pub const COMPONENT: &str = "sheaf-scheduler";
/// Label naming the node a VMI is bound to (KubeVirt's).
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// Memory a VMI needs beyond its guest memory (QEMU, its I/O buffers).
pub const VMI_MEMORY_OVERHEAD: Bytes = Bytes(32 * 1024 * 1024);
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
        let res = &spec.domain.resources;
        let guest = res
            .requests
            .get("memory")
            .or_else(|| res.limits.get("memory"))
            .or_else(|| spec.domain.memory.as_ref().and_then(|m| m.guest.as_ref()))
            .and_then(|q| q.as_bytes_u64())
            .unwrap_or(0);
        let overhead = if res.overcommit_guest_overhead == Some(true) { 0 } else { VMI_MEMORY_OVERHEAD.0 };
        let cpu = match res.requests.get("cpu").or_else(|| res.limits.get("cpu")).and_then(|q| q.as_millis()) {
            Some(m) => u64::try_from(m).unwrap_or(0),
            None => {
                let topo = spec.domain.cpu.as_ref();
                let n = |v: Option<u32>| u64::from(v.unwrap_or(1).max(1));
                let vcpus =
                    n(topo.and_then(|c| c.cores)) * n(topo.and_then(|c| c.sockets)) * n(topo.and_then(|c| c.threads));
                // KubeVirt's default CPU allocation ratio: a vCPU requests a tenth of a CPU.
                vcpus * 1000 / CPU_ALLOCATION_RATIO
            }
        };
        Request { memory: Bytes(guest.saturating_add(overhead)), cpu: MilliCpu(cpu) }
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
    Taint { key: String, value: String },
    NodeSelector(String),
    InsufficientCpu { wants: MilliCpu, free: MilliCpu },
    InsufficientMemory { wants: Bytes, free: Bytes },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotReady => f.write_str("node(s) were not ready"),
            Rejection::Cordoned => f.write_str("node(s) were unschedulable"),
            Rejection::Taint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Rejection::NodeSelector(sel) => write!(f, "node(s) didn't match the VMI's nodeSelector ({sel})"),
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
/// vCPUs per host CPU when a VMI requests no CPU explicitly (KubeVirt's
/// `cpuAllocationRatio` default).
pub const CPU_ALLOCATION_RATIO: u64 = 10;

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

/// The node chosen for a VMI, or why there is none.
pub fn choose(nodes: &[Node], used: &HashMap<String, Request>, vmi: &VirtualMachineInstance) -> Result<String, String> {
    let mut best: Option<(f64, &str)> = None;
    let mut rejections = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        match evaluate(node, &vmi.spec, used.get(name).copied().unwrap_or_default()) {
            Ok(load) => {
                let better = match best {
                    None => true,
                    Some((l, n)) => match load.partial_cmp(&l) {
                        Some(Ordering::Less) => true,
                        Some(Ordering::Equal) => name < n,
                        _ => false,
                    },
                };
                if better {
                    best = Some((load, name));
                }
            }
            Err(r) => rejections.extend(r),
        }
    }
    match best {
        Some((_, name)) => Ok(name.to_string()),
        None => Err(unschedulable_message(nodes.len(), &rejections)),
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
        // A VMI that finished or went away frees room for the waiting ones.
        .also_on_primary(|change, vmi, store| {
            let frees = change == Change::Deleted
                || matches!(vmi.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
            if frees {
                pending_keys(store)
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
        let used = usage(&all, &assumed, vmi.metadata.uid.as_deref().unwrap_or_default());
        match choose(&nodes, &used, &vmi) {
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
}
