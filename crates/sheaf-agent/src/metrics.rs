//! The node agent's metrics: its VMIs (CPU, memory, disks, NICs), the
//! volumes whose engines run here, and the node (capacity, use, disks),
//! measured when scraped (docs/design/metrics.md has the names).
//!
//! ```text
//!  scrape ─▶ AgentMetrics::gather
//!              ├─ node     /proc/meminfo, /proc/stat, the Node status rule, statvfs per disk
//!              ├─ vmis     RUN_ROOT/<uid>/{vmi.json, pidfile} → /proc/PID/{stat,status},
//!              │           QMP query-blockstats (the runner's handle, 1 s), /sys/class/net/TAP/statistics
//!              └─ volumes  RUN_ROOT/blk/e-<uid>.ctl {"op":"stats"} (1 s), names from a Volume list (cached)
//! ```
//!
//! Nothing is measured between scrapes, and a scrape never waits on a
//! runner: QMP allows one client per monitor, so each runner lends its
//! connection while its QEMU runs ([`AgentMetrics::watch`]); the QMP
//! client lets calls run concurrently. All VMIs and engines are asked at
//! once; one that does not answer within [`ASK_TIMEOUT`] is left out of
//! that scrape.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sheaf_blk::control::{self, ControlRequest, EngineStats};
use sheaf_client::{Api, Selectors, Typed};
use sheaf_qemu::qmp::{BlockStats, Qmp};
use sheaf_types::kubevirt::VirtualMachineInstance;
use sheaf_types::metrics::{BoxFuture, Collector, Exposition, Kind};
use sheaf_types::storage::Volume;

use crate::disks::DiskConfig;

/// How long one QEMU or engine may take to answer a scrape.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// The Volume list that names engines is read at most this often.
const NAMES_REFRESH: Duration = Duration::from_secs(10);
/// Linux reports process and CPU times in USER_HZ, 100 on every
/// architecture Sheaf runs on.
const USER_HZ: f64 = 100.0;
const NANOS: f64 = 1e9;

/// What the agent measures on, set when it starts.
pub struct Scope {
    pub api: Arc<dyn Api>,
    pub node: String,
    pub run_root: PathBuf,
    pub disks: Vec<DiskConfig>,
}

/// The agent's metrics, a [`Collector`]: `sheaf server` adds it to its
/// `/metrics`, `sheaf agent --metrics-address` serves it alone.
#[derive(Default)]
pub struct AgentMetrics {
    scope: OnceLock<Scope>,
    /// The QMP connections of the running VMIs' runners, by VMI uid.
    monitors: Mutex<HashMap<String, Qmp>>,
    /// Volume uid → (namespace, name).
    names: tokio::sync::Mutex<VolumeNames>,
    /// QMP asks that failed, by VMI uid.
    qmp_errors: Mutex<HashMap<String, u64>>,
}

#[derive(Default)]
struct VolumeNames {
    by_uid: HashMap<String, (String, String)>,
    read: Option<Instant>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").field("node", &self.scope.get().map(|s| s.node.as_str())).finish()
    }
}

/// A runner's QMP connection lent to the metrics; taken back when dropped.
pub struct Watched {
    metrics: Arc<AgentMetrics>,
    uid: String,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Ok(mut m) = self.metrics.monitors.lock() {
            m.remove(&self.uid);
        }
    }
}

impl Collector for AgentMetrics {
    fn collect(&self) -> BoxFuture<'_, Exposition> {
        Box::pin(self.gather())
    }
}

/// One VMI found running here.
struct Vmi {
    uid: String,
    namespace: String,
    name: String,
    pid: u32,
    object: VirtualMachineInstance,
}

/// One engine found running here, with its answer.
struct EngineSample {
    namespace: String,
    volume: String,
    /// The VMI it serves (empty: none).
    vmi_uid: String,
    stats: EngineStats,
}

impl AgentMetrics {
    pub fn new() -> Arc<AgentMetrics> {
        Arc::default()
    }

    /// Starts measuring (the agent calls it once, at start; until then a
    /// scrape has nothing from this agent).
    pub fn start(&self, scope: Scope) {
        let _ = self.scope.set(scope);
    }

    /// Lends the QMP connection of VMI `uid`'s runner until the returned
    /// guard is dropped.
    pub fn watch(self: &Arc<Self>, uid: &str, qmp: &Qmp) -> Watched {
        if let Ok(mut m) = self.monitors.lock() {
            m.insert(uid.to_string(), qmp.clone());
        }
        Watched { metrics: self.clone(), uid: uid.to_string() }
    }

    /// Everything this agent measures now.
    pub async fn gather(&self) -> Exposition {
        let mut out = Exposition::new();
        let Some(scope) = self.scope.get() else { return out };
        let node = scope.node.as_str();

        let started = Instant::now();
        let ok = node_metrics(&mut out, node);
        collector_result(&mut out, node, "node", started, ok);

        let started = Instant::now();
        let ok = disk_metrics(&mut out, node, &scope.disks);
        collector_result(&mut out, node, "disks", started, ok);

        let vmis = running_vmis(&scope.run_root);
        let vmi_started = Instant::now();
        let (stats, engines) = tokio::join!(self.block_stats(&vmis), self.engines(scope));
        let engines_ok = engines.as_ref().map(|(_, failed)| *failed == 0).unwrap_or(false);
        let engines = engines.map(|(e, _)| e).unwrap_or_default();
        volume_metrics(&mut out, node, &engines);
        collector_result(&mut out, node, "volumes", vmi_started, engines_ok);

        let mut vmis_ok = true;
        let live: HashSet<String> = vmis.iter().map(|v| v.uid.clone()).collect();
        for (vmi, blocks) in vmis.iter().zip(stats) {
            if blocks.is_none() {
                vmis_ok = false;
                if let Ok(mut e) = self.qmp_errors.lock() {
                    *e.entry(vmi.uid.clone()).or_default() += 1;
                }
            }
            vmi_metrics(&mut out, node, vmi, blocks.as_deref(), &engines);
            let errors = self.qmp_errors.lock().map(|e| e.get(&vmi.uid).copied().unwrap_or(0)).unwrap_or(0);
            let l = [("namespace", vmi.namespace.as_str()), ("name", vmi.name.as_str()), ("node", node)];
            let mut l = l.to_vec();
            l.push(("source", "qmp"));
            out.counter(
                "sheaf_vmi_metrics_errors_total",
                "Asks for a VMI's metrics that failed or timed out (its values were left out of that scrape).",
                &l,
                errors,
            );
        }
        if let Ok(mut e) = self.qmp_errors.lock() {
            e.retain(|uid, _| live.contains(uid));
        }
        out.gauge("sheaf_node_vmis", "VMIs whose QEMU runs on the node.", &[("node", node)], vmis.len());
        collector_result(&mut out, node, "vmis", vmi_started, vmis_ok);
        out
    }

    /// `query-blockstats` of every VMI at once; None for a VMI whose QEMU
    /// did not answer (or whose runner lent no connection yet).
    async fn block_stats(&self, vmis: &[Vmi]) -> Vec<Option<Vec<BlockStats>>> {
        let monitors: Vec<Option<Qmp>> = {
            let m = self.monitors.lock().map(|m| m.clone()).unwrap_or_default();
            vmis.iter().map(|v| m.get(&v.uid).cloned()).collect()
        };
        let asks = monitors.into_iter().zip(vmis).map(|(qmp, vmi)| async move {
            let qmp = qmp?;
            match qmp.block_stats(ASK_TIMEOUT).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(ns = %vmi.namespace, name = %vmi.name, error = %e, "no block statistics this scrape");
                    None
                }
            }
        });
        futures::future::join_all(asks).await
    }

    /// The stats of every engine running here, and how many did not answer.
    async fn engines(&self, scope: &Scope) -> Option<(Vec<EngineSample>, usize)> {
        let blk = scope.run_root.join("blk");
        let entries = match std::fs::read_dir(&blk) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some((Vec::new(), 0)),
            Err(_) => return None,
        };
        let ctls: Vec<(String, PathBuf)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("ctl"))
            .filter_map(|p| Some((p.file_stem()?.to_str()?.strip_prefix("e-")?.to_string(), p.clone())))
            .collect();
        let asks = ctls.iter().map(|(uid, ctl)| async move {
            match control::call(ctl, &ControlRequest::Stats, ASK_TIMEOUT).await {
                Ok(r) => Ok(r.stats.map(|s| (uid.clone(), s))),
                // An engine started by an older Sheaf: no counters until
                // its volume is next attached; not a failure.
                Err(e) if e.contains("unknown variant") => Ok(None),
                Err(e) => {
                    tracing::debug!(volume_uid = %uid, error = %e, "no engine statistics this scrape");
                    Err(())
                }
            }
        });
        let answers = futures::future::join_all(asks).await;
        let failed = answers.iter().filter(|a| a.is_err()).count();
        let answered: Vec<(String, EngineStats)> = answers.into_iter().flatten().flatten().collect();
        let uids: Vec<&str> = answered.iter().map(|(u, _)| u.as_str()).collect();
        let names = self.volume_names(scope, &uids).await;
        let samples = answered
            .into_iter()
            .map(|(uid, stats)| {
                let (namespace, volume) = names.get(&uid).cloned().unwrap_or_else(|| (String::new(), uid.clone()));
                let vmi_uid = std::fs::read_to_string(blk.join(format!("e-{uid}.vmi"))).unwrap_or_default();
                EngineSample { namespace, volume, vmi_uid: vmi_uid.trim().to_string(), stats }
            })
            .collect();
        Some((samples, failed))
    }

    /// Names of the volumes `uids`: the cache, read again from the API
    /// when one is missing (at most every [`NAMES_REFRESH`]).
    async fn volume_names(&self, scope: &Scope, uids: &[&str]) -> HashMap<String, (String, String)> {
        let mut names = self.names.lock().await;
        let missing = uids.iter().any(|u| !names.by_uid.contains_key(*u));
        let stale = names.read.is_none_or(|t| t.elapsed() > NAMES_REFRESH);
        if missing && stale {
            names.read = Some(Instant::now());
            let (typed, all) = (Typed::<Volume>::new(scope.api.as_ref()), Selectors::default());
            match tokio::time::timeout(Duration::from_secs(5), typed.list(None, &all)).await {
                Ok(Ok(vols)) => {
                    names.by_uid = vols
                        .into_iter()
                        .filter_map(|v| {
                            let uid = v.metadata.uid?;
                            Some((uid, (v.metadata.namespace.unwrap_or_default(), v.metadata.name.unwrap_or_default())))
                        })
                        .collect();
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot list volumes to name their metrics"),
                Err(_) => tracing::debug!("listing volumes to name their metrics timed out"),
            }
        }
        names.by_uid.clone()
    }
}

fn collector_result(out: &mut Exposition, node: &str, collector: &str, started: Instant, ok: bool) {
    let l = [("node", node), ("collector", collector)];
    out.gauge(
        "sheaf_scrape_collector_duration_seconds",
        "How long a part of the agent's scrape took.",
        &l,
        started.elapsed().as_secs_f64(),
    );
    out.gauge(
        "sheaf_scrape_collector_success",
        "Whether a part of the agent's scrape got all its values (0: some were left out).",
        &l,
        ok,
    );
}

/// The VMIs whose QEMU runs: run directories with the spec their runner
/// saved and a live QEMU.
fn running_vmis(run_root: &Path) -> Vec<Vmi> {
    let Ok(entries) = std::fs::read_dir(run_root) else { return Vec::new() };
    let mut out: Vec<Vmi> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let uid = dir.file_name()?.to_str()?.to_string();
            let spec: VirtualMachineInstance =
                serde_json::from_slice(&std::fs::read(dir.join("vmi.json")).ok()?).ok()?;
            let pid = crate::runner::live_qemu(&dir)?;
            let (namespace, name) = crate::runner::ns_name(&spec);
            Some(Vmi { uid, namespace, name, pid, object: spec })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The fields after the command name of `/proc/PID/stat`, from the state
/// (field 3 of proc(5), here 0; not a number, so 0).
fn proc_stat(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// A `kB` field of a `/proc` status or meminfo file, in bytes.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|k| k * 1024)
}

/// The guest memory the VMI asks for, rounded up to MiB as QEMU gets it.
fn guest_memory_bytes(vmi: &VirtualMachineInstance) -> Option<u64> {
    let d = &vmi.spec.domain;
    let q = d
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| d.resources.requests.get("memory"))
        .or_else(|| d.resources.limits.get("memory"))?;
    let bytes = u64::try_from(q.value()?).ok()?;
    Some(bytes.div_ceil(1 << 20) << 20)
}

/// The counters of tap `tap`, by statistics file name.
fn tap_counters(tap: &str) -> Option<HashMap<&'static str, u64>> {
    let dir = Path::new("/sys/class/net").join(tap).join("statistics");
    if !dir.is_dir() {
        return None;
    }
    let files =
        ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped", "rx_errors", "tx_errors"];
    Some(
        files
            .into_iter()
            .filter_map(|f| {
                let v = std::fs::read_to_string(dir.join(f)).ok()?.trim().parse().ok()?;
                Some((f, v))
            })
            .collect(),
    )
}

/// The KubeVirt drive counters of one disk.
#[derive(Default)]
struct DriveCounters {
    rd_bytes: u64,
    wr_bytes: u64,
    rd_ops: u64,
    wr_ops: u64,
    flush_ops: u64,
    rd_nanos: u64,
    wr_nanos: u64,
    flush_nanos: u64,
}

fn vmi_metrics(out: &mut Exposition, node: &str, vmi: &Vmi, blocks: Option<&[BlockStats]>, engines: &[EngineSample]) {
    let base = [("namespace", vmi.namespace.as_str()), ("name", vmi.name.as_str()), ("node", node)];
    if let Some(f) = proc_stat(vmi.pid) {
        // utime and stime: fields 14 and 15, here 11 and 12.
        let (user, system) = (f.get(11).copied().unwrap_or(0), f.get(12).copied().unwrap_or(0));
        out.counter(
            "kubevirt_vmi_cpu_usage_seconds_total",
            "CPU time of the VMI's QEMU process (vCPUs and QEMU's own threads), in seconds.",
            &base,
            (user + system) as f64 / USER_HZ,
        );
        out.counter(
            "kubevirt_vmi_cpu_user_usage_seconds_total",
            "User CPU time of the VMI's QEMU process, in seconds.",
            &base,
            user as f64 / USER_HZ,
        );
        out.counter(
            "kubevirt_vmi_cpu_system_usage_seconds_total",
            "System CPU time of the VMI's QEMU process, in seconds.",
            &base,
            system as f64 / USER_HZ,
        );
    }
    if let Some(rss) =
        std::fs::read_to_string(format!("/proc/{}/status", vmi.pid)).ok().and_then(|s| kib_field(&s, "VmRSS:"))
    {
        out.gauge("kubevirt_vmi_memory_resident_bytes", "Resident set size of the VMI's QEMU process.", &base, rss);
    }
    if let Some(mem) = guest_memory_bytes(&vmi.object) {
        out.gauge("kubevirt_vmi_memory_domain_bytes", "Memory given to the guest, in bytes.", &base, mem);
    }

    // Disks: QEMU's block layer where it sees the I/O, the engine where
    // it does not (vhost-user-blk goes from the guest to the engine).
    let mut drives: Vec<(String, DriveCounters)> = Vec::new();
    for b in blocks.unwrap_or_default() {
        let Some(disk) = b.disk_name() else { continue };
        let s = &b.stats;
        drives.push((
            disk.to_string(),
            DriveCounters {
                rd_bytes: s.rd_bytes,
                wr_bytes: s.wr_bytes,
                rd_ops: s.rd_operations,
                wr_ops: s.wr_operations,
                flush_ops: s.flush_operations,
                rd_nanos: s.rd_total_time_ns,
                wr_nanos: s.wr_total_time_ns,
                flush_nanos: s.flush_total_time_ns,
            },
        ));
    }
    for v in &vmi.object.spec.volumes {
        let Some(claim) = crate::storage::claim_of(v) else { continue };
        if drives.iter().any(|(d, _)| *d == v.name) || (blocks.is_none() && !vhost_user(vmi, &v.name)) {
            continue;
        }
        let Some(e) =
            engines.iter().find(|e| e.vmi_uid == vmi.uid && e.volume == claim && e.namespace == vmi.namespace)
        else {
            continue;
        };
        let s = &e.stats;
        drives.push((
            v.name.clone(),
            DriveCounters {
                rd_bytes: s.read.bytes,
                wr_bytes: s.write.bytes,
                rd_ops: s.read.ops,
                wr_ops: s.write.ops,
                flush_ops: s.flush.ops,
                rd_nanos: s.read.nanos,
                wr_nanos: s.write.nanos,
                flush_nanos: s.flush.nanos,
            },
        ));
    }
    for (drive, c) in &drives {
        let mut l = base.to_vec();
        l.push(("drive", drive.as_str()));
        let counters: [(&str, &str, f64); 8] = [
            (
                "kubevirt_vmi_storage_read_traffic_bytes_total",
                "Bytes the guest read from the drive.",
                c.rd_bytes as f64,
            ),
            (
                "kubevirt_vmi_storage_write_traffic_bytes_total",
                "Bytes the guest wrote to the drive.",
                c.wr_bytes as f64,
            ),
            ("kubevirt_vmi_storage_iops_read_total", "Read requests the guest made to the drive.", c.rd_ops as f64),
            ("kubevirt_vmi_storage_iops_write_total", "Write requests the guest made to the drive.", c.wr_ops as f64),
            (
                "kubevirt_vmi_storage_read_times_seconds_total",
                "Time the drive's read requests took, summed, in seconds.",
                c.rd_nanos as f64 / NANOS,
            ),
            (
                "kubevirt_vmi_storage_write_times_seconds_total",
                "Time the drive's write requests took, summed, in seconds.",
                c.wr_nanos as f64 / NANOS,
            ),
            (
                "kubevirt_vmi_storage_flush_requests_total",
                "Flush requests the guest made to the drive.",
                c.flush_ops as f64,
            ),
            (
                "kubevirt_vmi_storage_flush_times_seconds_total",
                "Time the drive's flush requests took, summed, in seconds.",
                c.flush_nanos as f64 / NANOS,
            ),
        ];
        for (name, help, v) in counters {
            // Integer counters are written exactly.
            if name.ends_with("seconds_total") {
                out.counter(name, help, &l, v);
            } else {
                out.counter(name, help, &l, v as u64);
            }
        }
    }

    // NICs on taps (QEMU's user-mode NAT has none). What the guest
    // receives is what the host sends into the tap.
    for (i, iface) in vmi.object.spec.domain.devices.interfaces.iter().enumerate() {
        let Some(c) = tap_counters(&crate::network::tap_name(&vmi.uid, i)) else { continue };
        let mut l = base.to_vec();
        l.push(("interface", iface.name.as_str()));
        let pairs = [
            ("kubevirt_vmi_network_receive_bytes_total", "Bytes the guest received on the interface.", "tx_bytes"),
            ("kubevirt_vmi_network_transmit_bytes_total", "Bytes the guest sent on the interface.", "rx_bytes"),
            (
                "kubevirt_vmi_network_receive_packets_total",
                "Packets the guest received on the interface.",
                "tx_packets",
            ),
            ("kubevirt_vmi_network_transmit_packets_total", "Packets the guest sent on the interface.", "rx_packets"),
            (
                "kubevirt_vmi_network_receive_packets_dropped_total",
                "Packets for the guest dropped on the interface.",
                "tx_dropped",
            ),
            (
                "kubevirt_vmi_network_transmit_packets_dropped_total",
                "Packets from the guest dropped on the interface.",
                "rx_dropped",
            ),
            ("kubevirt_vmi_network_receive_errors_total", "Errors receiving on the interface.", "tx_errors"),
            ("kubevirt_vmi_network_transmit_errors_total", "Errors sending on the interface.", "rx_errors"),
        ];
        for (name, help, file) in pairs {
            if let Some(v) = c.get(file) {
                out.counter(name, help, &l, *v);
            }
        }
    }
}

/// Whether disk `name` of the VMI is on vhost-user-blk (QEMU's argv has
/// its chardev; such a disk's counters come from its engine even when QMP
/// did not answer).
fn vhost_user(vmi: &Vmi, name: &str) -> bool {
    std::fs::read(format!("/proc/{}/cmdline", vmi.pid))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("id=vhost-{name},")))
}

fn volume_metrics(out: &mut Exposition, node: &str, engines: &[EngineSample]) {
    for e in engines {
        let base = [("namespace", e.namespace.as_str()), ("volume", e.volume.as_str()), ("node", node)];
        let s = &e.stats;
        for (op, c) in [("read", &s.read), ("write", &s.write), ("flush", &s.flush)] {
            let name = |what: &str| format!("sheaf_volume_{op}_{what}");
            out.counter(&name("ops_total"), &format!("{op} requests the volume's engine answered."), &base, c.ops);
            if op != "flush" {
                out.counter(
                    &name("bytes_total"),
                    &format!("Bytes of the volume's {op} requests that succeeded."),
                    &base,
                    c.bytes,
                );
            }
            out.counter(
                &name("seconds_total"),
                &format!("Time the volume's {op} requests took, summed, in seconds (divide by ops for latency)."),
                &base,
                c.nanos as f64 / NANOS,
            );
            out.counter(&name("errors_total"), &format!("{op} requests of the volume that failed."), &base, c.errors);
        }
        out.gauge("sheaf_volume_size_bytes", "The volume's size.", &base, s.status.size);
        out.gauge(
            "sheaf_volume_epoch",
            "The epoch the volume's engine holds (it goes up at every take-over).",
            &base,
            s.status.epoch,
        );
        for r in &s.status.replicas {
            for state in ["healthy", "rebuilding", "failed"] {
                let mut l = base.to_vec();
                l.extend([("replica", r.address.as_str()), ("state", state)]);
                out.gauge(
                    "sheaf_volume_replica_state",
                    "1 for the state the volume's engine sees the replica in (healthy, rebuilding, failed), 0 for the others.",
                    &l,
                    r.state == state,
                );
            }
        }
    }
}

/// Node capacity and use; false when a source could not be read.
fn node_metrics(out: &mut Exposition, node: &str) -> bool {
    let mut ok = true;
    // Capacity and allocatable by the rule the Node's status uses.
    let status = crate::node::status("", std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    for (family, key, help) in [
        ("sheaf_node_capacity", "capacity", "The node's capacity, as its Node status says."),
        ("sheaf_node_allocatable", "allocatable", "What the node offers to VMs, as its Node status says."),
    ] {
        out.declare(family, Kind::Gauge, help);
        for (resource, unit) in [("cpu", "core"), ("memory", "byte")] {
            let q = status.pointer(&format!("/{key}/{resource}")).and_then(|v| v.as_str());
            let v = q.and_then(|q| sheaf_types::quantity::Quantity::parse(q).ok()).map(|q| q.to_f64());
            match v {
                Some(v) => out.gauge(family, help, &[("node", node), ("resource", resource), ("unit", unit)], v),
                None => ok = false,
            }
        }
    }
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(m) => match (kib_field(&m, "MemTotal:"), kib_field(&m, "MemAvailable:")) {
            (Some(total), Some(avail)) => out.gauge(
                "sheaf_node_memory_used_bytes",
                "Memory in use on the node (MemTotal - MemAvailable).",
                &[("node", node)],
                total.saturating_sub(avail),
            ),
            _ => ok = false,
        },
        Err(_) => ok = false,
    }
    match std::fs::read_to_string("/proc/stat") {
        Ok(s) => {
            let cpu = s.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
            let modes = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
            for (mode, v) in modes.iter().zip(cpu.split_whitespace().skip(1)) {
                let v: u64 = v.parse().unwrap_or(0);
                out.counter(
                    "sheaf_node_cpu_seconds_total",
                    "CPU time of all the node's CPUs by mode, in seconds.",
                    &[("node", node), ("mode", mode)],
                    v as f64 / USER_HZ,
                );
            }
        }
        Err(_) => ok = false,
    }
    ok
}

/// Capacity and use of the node's disks; false when one could not be
/// measured.
fn disk_metrics(out: &mut Exposition, node: &str, disks: &[DiskConfig]) -> bool {
    let mut ok = true;
    for d in disks {
        let s = crate::disks::measure(d);
        let l = [("node", node), ("disk", d.name.as_str())];
        out.gauge("sheaf_disk_schedulable", "Whether new replicas may go on the disk.", &l, s.schedulable);
        let (Some(cap), Some(avail)) = (s.capacity, s.available) else {
            ok = false;
            continue;
        };
        let (cap, avail) = (cap.max(0) as u64, avail.max(0) as u64);
        out.gauge("sheaf_disk_capacity_bytes", "Size of the disk's file system.", &l, cap);
        out.gauge("sheaf_disk_available_bytes", "Bytes free for new data on the disk.", &l, avail);
        out.gauge(
            "sheaf_disk_used_bytes",
            "Bytes used on the disk's file system (capacity - available).",
            &l,
            cap.saturating_sub(avail),
        );
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheaf_blk::control::{EngineStatus, OpStats, ReplicaState};

    #[test]
    fn proc_and_meminfo_fields() {
        let m = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(kib_field(m, "MemTotal:"), Some(24_576_000 * 1024));
        assert_eq!(kib_field(m, "MemAvailable:"), Some(20_000_000 * 1024));
        assert_eq!(kib_field(m, "Nope:"), None);
        // This process: utime and stime are there, with a command name
        // that may hold spaces and parentheses.
        let f = proc_stat(std::process::id()).expect("own stat");
        assert!(f.len() > 20, "{f:?}");
    }

    #[test]
    fn guest_memory_follows_the_launch_rule() {
        let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"domain": {"memory": {"guest": "128Mi"}, "resources": {"requests": {"memory": "1Gi"}}, "devices": {}}}
        }))
        .expect("vmi");
        assert_eq!(guest_memory_bytes(&vmi), Some(128 << 20));
        let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "a"},
            "spec": {"domain": {"resources": {"requests": {"memory": "1000000"}}, "devices": {}}}
        }))
        .expect("vmi");
        assert_eq!(guest_memory_bytes(&vmi), Some(1 << 20), "rounded up to a MiB");
    }

    #[test]
    fn volumes_have_counters_and_a_replica_state_set() {
        let op = |ops, bytes, nanos| OpStats { ops, bytes, errors: 0, nanos };
        let stats = EngineStats {
            status: EngineStatus {
                volume: "uid-1".into(),
                size: 64 << 20,
                epoch: 3,
                replicas: vec![
                    ReplicaState { address: "unix:/run/r-a.sock".into(), state: "healthy".into() },
                    ReplicaState { address: "tcp:10.0.0.2:7001".into(), state: "rebuilding".into() },
                ],
                standby: false,
            },
            read: op(2, 8192, 1_500_000_000),
            write: op(5, 20480, 10),
            flush: op(1, 0, 7),
        };
        let e =
            EngineSample { namespace: "default".into(), volume: "data \"x\"".into(), vmi_uid: String::new(), stats };
        let mut out = Exposition::new();
        volume_metrics(&mut out, "n1", &[e]);
        let text = out.render();
        let l = r#"namespace="default",volume="data \"x\"",node="n1""#;
        assert!(text.contains(&format!("sheaf_volume_write_bytes_total{{{l}}} 20480\n")), "{text}");
        assert!(text.contains(&format!("sheaf_volume_read_seconds_total{{{l}}} 1.5\n")), "{text}");
        assert!(text.contains(&format!("sheaf_volume_flush_ops_total{{{l}}} 1\n")), "{text}");
        assert!(!text.contains("sheaf_volume_flush_bytes_total"), "{text}");
        assert!(text.contains(&format!(
            "sheaf_volume_replica_state{{{l},replica=\"tcp:10.0.0.2:7001\",state=\"rebuilding\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "sheaf_volume_replica_state{{{l},replica=\"tcp:10.0.0.2:7001\",state=\"healthy\"}} 0\n"
        )));
        assert!(text.contains(&format!("sheaf_volume_epoch{{{l}}} 3\n")), "{text}");
    }

    #[tokio::test]
    async fn an_agent_not_started_has_nothing_and_a_node_has_its_capacity() {
        let m = AgentMetrics::new();
        assert!(m.gather().await.is_empty());
        let mut out = Exposition::new();
        assert!(node_metrics(&mut out, "n1"));
        let text = out.render();
        assert!(text.contains("sheaf_node_capacity{node=\"n1\",resource=\"cpu\",unit=\"core\"}"), "{text}");
        assert!(text.contains("sheaf_node_cpu_seconds_total{node=\"n1\",mode=\"idle\"}"), "{text}");
        let d = tempfile::tempdir().expect("tempdir");
        let disk = DiskConfig { name: "default".into(), path: d.path().to_path_buf(), tags: vec![] };
        let gone = DiskConfig { name: "gone".into(), path: d.path().join("nothing"), tags: vec![] };
        let mut out = Exposition::new();
        assert!(!disk_metrics(&mut out, "n1", &[disk, gone]));
        let text = out.render();
        assert!(text.contains("sheaf_disk_capacity_bytes{node=\"n1\",disk=\"default\"}"), "{text}");
        assert!(text.contains("sheaf_disk_schedulable{node=\"n1\",disk=\"gone\"} 0\n"), "{text}");
    }
}
