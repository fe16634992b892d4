//! The node's part of Sheaf storage: it runs a `sheaf blk replica` process
//! for every Replica placed on this node, a `sheaf blk engine` for every
//! volume a VMI here uses, and carries out what Volumes and
//! VolumeSnapshots ask (snapshots, deletes, reverts, clones, growth,
//! rebuilds of detached volumes), reporting the outcome in their status.
//!
//! The storage processes run on their own (their own process group, a
//! pidfile each): an agent restart never interrupts I/O, and a restarted
//! agent adopts them by pidfile and command line, as it does QEMU.
//!
//! Files, under `<run root>/blk/`: `r-<replica uid>.{sock,pid,log}` for a
//! replica (its data in `<disk path>/<replica uid>/`, on the node disk its
//! Replica's `spec.diskName` names, see [`crate::disks`]), and
//! `e-<volume uid>.{nbd,ctl,pid,log,vmi,args}` for an engine (`vmi` names
//! the VMI it serves, `args` its command line for a restart).

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sheaf_blk::auth::ClusterKey;
use sheaf_blk::control::{self, ControlRequest};
use sheaf_blk::engine::Engine;
use sheaf_blk::replica_server::Address;
use sheaf_client::{Api, Selectors, Typed};
use sheaf_types::kubevirt::VirtualMachineInstance;
use sheaf_types::storage::{
    Replica, RevertStatus, Volume, VolumeReplicaStatus, VolumeSnapshot, VolumeStatus, REPLICA_FINALIZER,
    REVERT_ANNOTATION, SNAPSHOT_FINALIZER, VOLUME_LABEL,
};
use sheaf_types::Time;

use crate::disks::DiskConfig;
use crate::launch::LaunchError;

/// How often the node's storage is reconciled.
pub const PERIOD: Duration = Duration::from_secs(2);
/// A detached volume is checked (and rebuilt if it needs it) this often
/// even when nothing changed.
/// How long an engine may take to serve its volume after it is started.
const ENGINE_START: Duration = Duration::from_secs(30);
const RECHECK: Duration = Duration::from_secs(600);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rebuild of a detached volume may take.
const DETACHED_REBUILD: Duration = Duration::from_secs(3600);

pub struct Storage {
    api: Arc<dyn Api>,
    node: String,
    disks: Vec<DiskConfig>,
    blk_dir: PathBuf,
    run_root: PathBuf,
    exe: PathBuf,
    /// One operation at a time per volume (by uid).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes a detached volume's background rebuild when a VM wants the
    /// volume: the engine the VM gets carries the rebuild on.
    attach_wanted: Mutex<HashMap<String, Arc<AttachWanted>>>,
    /// Processes started by this agent, reaped when they end.
    children: Mutex<Vec<Child>>,
    /// When each detached volume was last checked.
    checked: Mutex<HashMap<String, Instant>>,
    /// The address replica servers listen on for other nodes' engines.
    node_ip: std::net::IpAddr,
    /// The cluster key replica connections over TCP prove (None: replicas
    /// serve this node only, on unix sockets), and the key itself for the
    /// engines this process runs (detached work).
    key_file: Option<PathBuf>,
    cluster_key: Option<ClusterKey>,
    key_bytes: Vec<u8>,
}

fn msg(volume: &str, message: impl Into<String>) -> LaunchError {
    LaunchError::Volume { volume: volume.to_string(), message: message.into() }
}

fn now() -> Time {
    Time(chrono::Utc::now())
}

/// The pid in `pidfile` if that process is alive and its command line
/// contains `needle` (so a reused pid is not mistaken for ours).
fn alive(pidfile: &Path, needle: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie is not alive.
    if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
        return None;
    }
    String::from_utf8_lossy(&cmdline).contains(needle).then_some(pid)
}

fn stop(pidfile: &Path, needle: &str) {
    if let Some(pid) = alive(pidfile, needle) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        for _ in 0..40 {
            if alive(pidfile, needle).is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pidfile, needle).is_some() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
    let _ = std::fs::remove_file(pidfile);
}

/// The last three lines of the log at `path`, joined with ` | `.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Bytes a directory's files take on disk.
fn disk_usage(dir: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|f| f.metadata().ok()).map(|m| m.blocks() as i64 * 512).sum())
        .unwrap_or(0)
}

fn name(meta: &sheaf_types::meta::ObjectMeta) -> (Option<String>, String) {
    (meta.namespace.clone(), meta.name.clone().unwrap_or_default())
}

/// The Volume a VMI volume refers to (a persistentVolumeClaim or
/// dataVolume of that name), if any. The API server's deletion protection
/// reads the same ([`sheaf_types::storage::users_of`]).
pub fn claim_of(v: &sheaf_types::kubevirt::Volume) -> Option<String> {
    v.claim_name().map(str::to_string)
}

/// The JSON merge patch that turns `old` into `new` (None: no change).
/// Keys that are gone become null, also inside nested objects, which a
/// merge patch would otherwise keep.
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = serde_json::Map::new();
            for (k, v) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = merge_diff(ov, v) {
                            patch.insert(k.clone(), d);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ => (old != new).then(|| new.clone()),
    }
}

/// How snapshot work reaches the replicas: through the running engine's
/// control socket, or through an engine the agent starts in-process for a
/// detached volume.
enum Ops<'a> {
    Control(&'a Path),
    Local(&'a Engine),
}

impl Ops<'_> {
    async fn snapshot(&self, layer: &str) -> Result<(), String> {
        match self {
            Ops::Control(p) => {
                control::call(p, &ControlRequest::Snapshot { name: layer.into() }, CONTROL_TIMEOUT).await.map(|_| ())
            }
            Ops::Local(e) => e.snapshot(layer).await.map_err(|e| e.to_string()),
        }
    }
    async fn delete_snapshot(&self, layer: &str) -> Result<(), String> {
        match self {
            Ops::Control(p) => {
                control::call(p, &ControlRequest::DeleteSnapshot { name: layer.into() }, CONTROL_TIMEOUT)
                    .await
                    .map(|_| ())
            }
            Ops::Local(e) => e.delete_snapshot(layer).await.map_err(|e| e.to_string()),
        }
    }
    async fn snapshots(&self) -> Result<Vec<String>, String> {
        match self {
            Ops::Control(p) => {
                Ok(control::call(p, &ControlRequest::Snapshots, CONTROL_TIMEOUT).await?.snapshots.unwrap_or_default())
            }
            Ops::Local(e) => e.snapshots().await.map_err(|e| e.to_string()),
        }
    }
    async fn expand(&self, size: u64) -> Result<(), String> {
        match self {
            Ops::Control(p) => control::call(p, &ControlRequest::Expand { size }, CONTROL_TIMEOUT).await.map(|_| ()),
            Ops::Local(e) => e.expand(size).await.map_err(|e| e.to_string()),
        }
    }
    fn size(&self, status: &VolumeStatus) -> u64 {
        match self {
            Ops::Control(_) => status.size.unwrap_or(0).max(0) as u64,
            Ops::Local(e) => e.size(),
        }
    }
}

/// Set while an attach waits for a volume's detached pass.
#[derive(Default)]
struct AttachWanted {
    waiting: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

/// How QEMU reaches an attached volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedDisk {
    /// The engine's NBD or vhost-user socket.
    pub socket: PathBuf,
    /// QEMU disk format: `nbd` or `vhost-user`.
    pub format: &'static str,
}

struct EnginePaths {
    nbd: PathBuf,
    vhost: PathBuf,
    ctl: PathBuf,
    pid: PathBuf,
    log: PathBuf,
    vmi: PathBuf,
    args: PathBuf,
}

impl EnginePaths {
    /// The files of an engine named by `base` (`<blk dir>/e-<volume uid>`).
    fn at(base: &Path) -> EnginePaths {
        EnginePaths {
            nbd: base.with_extension("nbd"),
            vhost: base.with_extension("vhost"),
            ctl: base.with_extension("ctl"),
            pid: base.with_extension("pid"),
            log: base.with_extension("log"),
            vmi: base.with_extension("vmi"),
            args: base.with_extension("args"),
        }
    }
}

impl Storage {
    pub fn new(api: Arc<dyn Api>, node: &str, disks: &[DiskConfig], run_root: &Path) -> Storage {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sheaf"));
        Storage {
            api,
            node: node.to_string(),
            disks: disks.to_vec(),
            blk_dir: run_root.join("blk"),
            run_root: run_root.to_path_buf(),
            exe,
            locks: Mutex::default(),
            attach_wanted: Mutex::default(),
            children: Mutex::default(),
            checked: Mutex::default(),
            node_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            key_file: None,
            cluster_key: None,
            key_bytes: Vec::new(),
        }
    }

    /// Serves this node's replicas to other nodes' engines on `node_ip`,
    /// over TCP connections that prove the cluster key in `key_file`.
    pub fn serve_over_tcp(mut self, node_ip: std::net::IpAddr, key: Vec<u8>) -> Storage {
        match ClusterKey::from_secret(&key) {
            Ok(k) => {
                self.cluster_key = Some(k);
                self.key_file = Some(self.blk_dir.join("cluster.key"));
                self.key_bytes = key;
            }
            Err(e) => tracing::error!(error = %e, "replicas cannot be served to other nodes"),
        }
        self.node_ip = node_ip;
        self
    }

    pub fn api(&self) -> Arc<dyn Api> {
        self.api.clone()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cluster key, for other in-process readers of replicas.
    pub fn cluster_key(&self) -> Option<ClusterKey> {
        self.cluster_key.clone()
    }

    /// A secret for `purpose` derived from the cluster key (every node
    /// derives the same): SHA-256 of a label, the purpose and the key.
    /// None without a cluster key.
    pub fn derived_secret(&self, purpose: &str) -> Option<[u8; 32]> {
        if self.key_bytes.is_empty() {
            return None;
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"sheaf derived secret v1\0");
        ctx.update(purpose.as_bytes());
        ctx.update(b"\0");
        ctx.update(&self.key_bytes);
        ctx.finish().as_ref().try_into().ok()
    }

    /// This node's images (base images of volumes made from an image).
    pub fn images_root(&self) -> PathBuf {
        self.disks.first().map(|d| d.path.join("images")).unwrap_or_else(|| self.run_root.join("images"))
    }

    /// The base image directory of image `reference` (`NAMESPACE/NAME`) on
    /// this node, or why there is none.
    async fn image_base(&self, reference: &str) -> Result<PathBuf, String> {
        let (ns, name) = sheaf_types::storage::image_ref(reference)?;
        let img = Typed::<sheaf_types::harvester::VirtualMachineImage>::new(self.api.as_ref())
            .get(Some(ns), name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the volume's image {reference} does not exist"))?;
        let uid = img.metadata.uid.clone().unwrap_or_default();
        let dir = self.images_root().join(&uid);
        match sheaf_blk::base::read_meta(&dir) {
            Ok(Some(_)) => Ok(dir),
            Ok(None) => Err(format!("waiting for the volume's image {reference} to be imported on this node")),
            Err(e) => Err(format!("the volume's image {reference} is damaged on this node: {e}")),
        }
    }

    fn lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut l = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        l.entry(uid.to_string()).or_default().clone()
    }

    fn attach_signal(&self, uid: &str) -> Arc<AttachWanted> {
        let mut l = self.attach_wanted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        l.entry(uid.to_string()).or_default().clone()
    }

    /// A replica's socket, pidfile and log.
    fn replica_paths(&self, uid: &str) -> (PathBuf, PathBuf, PathBuf) {
        let base = self.blk_dir.join(format!("r-{uid}"));
        (base.with_extension("sock"), base.with_extension("pid"), base.with_extension("log"))
    }

    /// The node disk `r` names, if this node has it.
    fn disk_of(&self, r: &Replica) -> Option<&DiskConfig> {
        self.disks.iter().find(|d| d.name == r.disk_name())
    }

    /// Where replica `r`'s data is: `<disk path>/<uid>`, or why it cannot
    /// be served here.
    fn replica_dir(&self, r: &Replica) -> Result<PathBuf, String> {
        let uid = r.metadata.uid.clone().unwrap_or_default();
        let Some(disk) = self.disk_of(r) else {
            let names: Vec<&str> = self.disks.iter().map(|d| d.name.as_str()).collect();
            return Err(format!(
                "node {} has no disk named {} (its disks: {}): start its sheaf server with --disk {}=PATH, \
                 or delete this replica so that the volume gets a new one",
                self.node,
                r.disk_name(),
                names.join(", "),
                r.disk_name()
            ));
        };
        let dir = disk.path.join(&uid);
        if let Some(was) = r.status.as_ref().and_then(|s| s.data_dir.as_deref()) {
            if Path::new(was) != dir {
                let parent = Path::new(was).parent().unwrap_or(Path::new(was));
                return Err(format!(
                    "the replica's data is in {was}, but disk {} is now at {}: give the disk its old path again \
                     (--disk {}={}), or delete this replica so that the volume gets a new one",
                    disk.name,
                    disk.path.display(),
                    disk.name,
                    parent.display()
                ));
            }
        }
        if !disk.path.is_dir() {
            return Err(format!(
                "the directory {} of disk {} does not exist: mount the disk there again (or create it)",
                disk.path.display(),
                disk.name
            ));
        }
        Ok(dir)
    }

    fn engine_paths(&self, volume_uid: &str) -> EnginePaths {
        EnginePaths::at(&self.blk_dir.join(format!("e-{volume_uid}")))
    }

    /// Starts `sheaf <args>` detached, logging to `log`; records its pid.
    fn spawn(&self, args: &[String], log: &Path, pidfile: &Path) -> Result<u32, String> {
        std::fs::create_dir_all(&self.blk_dir).map_err(|e| format!("creating {}: {e}", self.blk_dir.display()))?;
        if let Some(k) = self.key_file.as_ref().filter(|k| !k.exists()) {
            crate::cluster_key::write_file(k, &self.key_bytes).map_err(|e| format!("writing {}: {e}", k.display()))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1")
            // Its own process group: a signal to the agent's group (Ctrl+C,
            // a service stop) does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
        let mut child = child;
        let pid = child.id();
        // `spawn` returns once the child has begun its exec, a moment before
        // the kernel gives it its new command line: until then
        // /proc/PID/cmdline is empty and `alive` would take the new process
        // for a dead one (seen on a loaded host as an engine that "did not
        // start" while it was starting: a migration's target failed).
        let started = Instant::now();
        let own = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty() || c == own)
            && matches!(child.try_wait(), Ok(None))
            && started.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::write(pidfile, pid.to_string()).map_err(|e| format!("writing {}: {e}", pidfile.display()))?;
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(child);
        Ok(pid)
    }

    /// How the process in `pidfile` (one this agent started) ended, for
    /// messages: "exited with exit status: 1", "still running".
    fn exit_of(&self, pidfile: &Path) -> String {
        let pid: Option<u32> = std::fs::read_to_string(pidfile).ok().and_then(|p| p.trim().parse().ok());
        let mut children = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match children.iter_mut().find(|c| Some(c.id()) == pid).map(Child::try_wait) {
            Some(Ok(Some(status))) => format!("exited with {status}"),
            Some(Ok(None)) => format!("still running, not serving within {} s", ENGINE_START.as_secs()),
            Some(Err(e)) => format!("unknown: {e}"),
            None => "not started by this agent".into(),
        }
    }

    fn reap(&self) {
        let mut c = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        c.retain_mut(|ch| !matches!(ch.try_wait(), Ok(Some(_))));
    }

    /// Replicas of `vol` (not being deleted), local ones first.
    pub(crate) async fn replicas_of(&self, vol: &Volume) -> Result<Vec<Replica>, String> {
        let (ns, vname) = name(&vol.metadata);
        let uid = vol.metadata.uid.clone().unwrap_or_default();
        let sel = Selectors { labels: format!("{VOLUME_LABEL}={vname}"), fields: String::new() };
        let mut rs: Vec<Replica> = Typed::<Replica>::new(self.api.as_ref())
            .list(ns.as_deref(), &sel)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| r.metadata.owner_references.iter().any(|o| o.uid == uid))
            .filter(|r| r.metadata.deletion_timestamp.is_none())
            .collect();
        rs.sort_by_key(|r| (r.spec.node_name != self.node, r.metadata.name.clone()));
        Ok(rs)
    }

    /// Where an engine on this node reaches `replicas`: those of this node
    /// on their unix sockets, the others at the TCP address their node's
    /// agent reports.
    fn addresses(&self, replicas: &[Replica]) -> Vec<Address> {
        replicas.iter().filter_map(|r| self.address_of(r)).collect()
    }

    pub(crate) fn address_of(&self, r: &Replica) -> Option<Address> {
        if r.spec.node_name == self.node {
            let uid = r.metadata.uid.as_deref()?;
            return Some(Address::Unix(self.replica_paths(uid).0));
        }
        match r.status.as_ref()?.address.as_deref()?.parse().ok()? {
            a @ Address::Tcp(_) => Some(a),
            Address::Unix(_) => None,
        }
    }

    /// [`Self::addresses`] as the engine's command line and control socket
    /// write them.
    fn address_strings(&self, replicas: &[Replica]) -> Vec<String> {
        self.addresses(replicas).iter().map(ToString::to_string).collect()
    }

    /// The command line of the engine of volume `uid` with these replicas.
    /// It serves both frontends (the VM uses the one its Volume names);
    /// `serial` is the disk serial the guest sees on vhost-user-blk.
    fn engine_args(uid: &str, replicas: &[String], p: &EnginePaths, serial: &str) -> Vec<String> {
        let mut args = vec!["blk".to_string(), "engine".into(), "--volume".into(), uid.to_string()];
        for a in replicas {
            args.push("--replica".into());
            args.push(a.clone());
        }
        args.extend(["--nbd".into(), p.nbd.display().to_string(), "--control".into(), p.ctl.display().to_string()]);
        args.extend(["--vhost-user".into(), p.vhost.display().to_string()]);
        if !serial.is_empty() {
            args.extend(["--vhost-user-serial".into(), serial.chars().take(20).collect()]);
        }
        args
    }

    /// `args` (an engine's command line) with its replicas replaced.
    fn with_replicas(args: &[String], replicas: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(args.len());
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--replica" {
                it.next();
                continue;
            }
            out.push(a.clone());
            if a == "--volume" {
                out.extend(it.next().cloned());
                for r in replicas {
                    out.extend(["--replica".to_string(), r.clone()]);
                }
            }
        }
        out
    }

    /// Saves the command line a crashed engine is started again with.
    fn save_engine_args(p: &EnginePaths, args: &[String]) {
        let tmp = p.args.with_extension("args.tmp");
        let written = serde_json::to_vec(args)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &p.args));
        if let Err(e) = written {
            tracing::warn!(file = %p.args.display(), error = %e, "cannot save the engine's command line");
        }
    }

    pub(crate) fn running(r: &Replica) -> bool {
        r.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Running")
    }

    /// The socket QEMU uses for `vol`, by its frontend. An engine started
    /// before it served vhost-user has only its NBD socket.
    fn attached_disk(vol: &Volume, p: &EnginePaths) -> AttachedDisk {
        if vol.spec.frontend.as_deref() == Some("vhost-user") {
            if p.vhost.exists() {
                return AttachedDisk { socket: p.vhost.clone(), format: "vhost-user" };
            }
            tracing::warn!(engine = %p.nbd.display(), "the engine has no vhost-user socket; the VM uses NBD until the volume is next attached");
        }
        AttachedDisk { socket: p.nbd.clone(), format: "nbd" }
    }

    /// Starts the engines for the volumes `vmi` boots with and returns
    /// their sockets by VMI volume name. Waits (bounded) for a clone to
    /// finish and for the replicas to run. Hotpluggable volumes are left to
    /// the VMI's runner, which adds them once QEMU runs
    /// ([`Self::attach_volume`]).
    /// With `standby` (the target of a live migration) the engines claim
    /// nothing until the guest's first I/O there (see
    /// docs/design/migration.md).
    pub async fn attach(
        &self,
        vmi: &VirtualMachineInstance,
        standby: bool,
    ) -> Result<HashMap<String, AttachedDisk>, LaunchError> {
        let mut out = HashMap::new();
        for v in vmi.spec.volumes.iter().filter(|v| !v.hotpluggable()) {
            if let Some(disk) = self.attach_engine(vmi, v, standby).await? {
                out.insert(v.name.clone(), disk);
            }
        }
        Ok(out)
    }

    /// Starts (or finds running) the engine of one volume of `vmi` and
    /// returns its socket; None when `v` is not a Sheaf volume. Waits
    /// (bounded) for a clone to finish and for the replicas to run.
    pub async fn attach_volume(
        &self,
        vmi: &VirtualMachineInstance,
        v: &sheaf_types::kubevirt::Volume,
    ) -> Result<Option<AttachedDisk>, LaunchError> {
        self.attach_engine(vmi, v, false).await
    }

    async fn attach_engine(
        &self,
        vmi: &VirtualMachineInstance,
        v: &sheaf_types::kubevirt::Volume,
        standby: bool,
    ) -> Result<Option<AttachedDisk>, LaunchError> {
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let vmi_uid = vmi.metadata.uid.clone().unwrap_or_default();
        {
            let Some(claim) = claim_of(v) else { return Ok(None) };
            let deadline = Instant::now() + Duration::from_secs(120);
            let vol = loop {
                let vol = sheaf_client::claims::volume_for_claim(self.api.as_ref(), &ns, &claim)
                    .await
                    .map_err(|e| msg(&v.name, e.to_string()))?
                    .ok_or_else(|| {
                        msg(
                            &v.name,
                            format!(
                                "Volume {ns}/{claim} does not exist; create it first \
                                 (sheaf volume create {claim} --size 10Gi)"
                            ),
                        )
                    })?;
                if vol.trashed() {
                    let until = vol.purge_at_text().map(|t| format!(" until {t}")).unwrap_or_default();
                    return Err(msg(
                        &v.name,
                        format!(
                            "Volume {ns}/{claim} was deleted and is in the trash{until} with its snapshots; it \
                             cannot be attached. Clone a snapshot of it into a new volume (sheaf volume clone \
                             SNAPSHOT NEW), or purge it now (sheaf volume purge {claim}) to use the name again"
                        ),
                    ));
                }
                if vol.metadata.deletion_timestamp.is_some() {
                    return Err(msg(
                        &v.name,
                        format!(
                            "Volume {ns}/{claim} is being deleted and cannot be attached; use another volume, \
                             or create it again once it is gone"
                        ),
                    ));
                }
                let restoring = vol.awaiting_fill();
                let replicas = self.replicas_of(&vol).await.map_err(|e| msg(&v.name, e))?;
                let running = replicas.iter().filter(|r| Self::running(r)).count();
                let all = running == replicas.len() && !replicas.is_empty();
                if !restoring && (all || (running > 0 && Instant::now() + Duration::from_secs(100) > deadline)) {
                    break vol;
                }
                if let Some(why) = vol.unplaceable().filter(|_| replicas.is_empty()) {
                    return Err(msg(&v.name, format!("Volume {ns}/{claim} has no replica: {why}")));
                }
                if Instant::now() > deadline {
                    let why = if restoring {
                        "is still being filled from its snapshot or backup".to_string()
                    } else {
                        format!("has no running replica ({} placed)", replicas.len())
                    };
                    return Err(msg(&v.name, format!("Volume {ns}/{claim} {why}")));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let uid = vol.metadata.uid.clone().unwrap_or_default();
            let lock = self.lock(&uid);
            let _held = match lock.clone().try_lock_owned() {
                Ok(h) => h,
                Err(_) => {
                    let signal = self.attach_signal(&uid);
                    signal.waiting.store(true, std::sync::atomic::Ordering::SeqCst);
                    signal.notify.notify_waiters();
                    let held = lock.lock_owned().await;
                    signal.waiting.store(false, std::sync::atomic::Ordering::SeqCst);
                    held
                }
            };
            let p = self.engine_paths(&uid);
            let needle = p.nbd.display().to_string();
            if alive(&p.pid, &needle).is_some() {
                let user = std::fs::read_to_string(&p.vmi).unwrap_or_default();
                if user.trim() != vmi_uid
                    && crate::runner::live_qemu(&crate::runner::run_dir(&self.run_root, user.trim())).is_some()
                {
                    return Err(msg(&v.name, format!("Volume {ns}/{claim} is in use by another virtual machine")));
                }
                let _ = std::fs::write(&p.vmi, &vmi_uid);
                return Ok(Some(Self::attached_disk(&vol, &p)));
            }
            let replicas = self.replicas_of(&vol).await.map_err(|e| msg(&v.name, e))?;
            let serial = vmi
                .spec
                .domain
                .devices
                .disks
                .iter()
                .find(|d| d.name == v.name)
                .and_then(|d| d.serial.clone())
                .unwrap_or_else(|| claim.clone());
            let mut args = Self::engine_args(&uid, &self.address_strings(&replicas), &p, &serial);
            if let Some(key) = &self.key_file {
                args.extend(["--auth-key-file".into(), key.display().to_string()]);
            }
            if standby {
                // Claims the replicas on the guest's first I/O here (after
                // the switch-over); until then the source's engine serves.
                args.retain(|a| a != "--vhost-user" && !a.ends_with(".vhost"));
                args.push("--standby".into());
            }
            let _ = std::fs::remove_file(&p.nbd);
            let _ = std::fs::remove_file(&p.vhost);
            let _ = std::fs::remove_file(&p.ctl);
            self.spawn(&args, &p.log, &p.pid).map_err(|e| msg(&v.name, e))?;
            let _ = std::fs::write(&p.vmi, &vmi_uid);
            Self::save_engine_args(&p, &args);
            let mut ready = false;
            // An engine reaches its replicas first (other nodes' over TCP,
            // each given 5 s to connect): on a loaded host that takes a
            // while.
            let deadline = Instant::now() + ENGINE_START;
            while Instant::now() < deadline {
                if alive(&p.pid, &needle).is_none() {
                    break;
                }
                // A vhost-user volume's socket comes up with the NBD one;
                // wait for both (a standby engine serves NBD only).
                let vhost_up = standby || vol.spec.frontend.as_deref() != Some("vhost-user") || p.vhost.exists();
                if p.nbd.exists()
                    && vhost_up
                    && control::call(&p.ctl, &ControlRequest::Status, Duration::from_secs(2)).await.is_ok()
                {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !ready {
                let how = self.exit_of(&p.pid);
                stop(&p.pid, &needle);
                return Err(msg(
                    &v.name,
                    format!("the engine of Volume {ns}/{claim} did not start ({how}): {}", log_tail(&p.log)),
                ));
            }
            tracing::info!(volume = %format!("{ns}/{claim}"), vmi = %vmi_uid, "volume attached");
            Ok(Some(Self::attached_disk(&vol, &p)))
        }
    }

    /// Stops the engines serving VMI `vmi` whose volumes its spec no
    /// longer has (hotplugged disks that were removed); returns the
    /// stopped engines' volume uids. Nothing is stopped when a claim of
    /// the spec cannot be resolved right now.
    pub async fn detach_unused(&self, vmi: &VirtualMachineInstance) -> Result<Vec<String>, LaunchError> {
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let vmi_uid = vmi.metadata.uid.clone().unwrap_or_default();
        let mut keep = HashSet::new();
        for v in &vmi.spec.volumes {
            let Some(claim) = claim_of(v) else { continue };
            let vol = sheaf_client::claims::volume_for_claim(self.api.as_ref(), &ns, &claim)
                .await
                .map_err(|e| msg(&v.name, e.to_string()))?;
            keep.extend(vol.and_then(|vol| vol.metadata.uid));
        }
        let mut stopped = Vec::new();
        let Ok(d) = std::fs::read_dir(&self.blk_dir) else { return Ok(stopped) };
        for f in d.flatten() {
            let path = f.path();
            if path.extension().and_then(|e| e.to_str()) != Some("vmi")
                || std::fs::read_to_string(&path).unwrap_or_default().trim() != vmi_uid
            {
                continue;
            }
            let Some(uid) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.strip_prefix("e-")) else {
                continue;
            };
            if keep.contains(uid) {
                continue;
            }
            let lock = self.lock(uid);
            let _held = lock.lock_owned().await;
            // Read again under the lock: an attach may have taken it.
            if std::fs::read_to_string(&path).unwrap_or_default().trim() == vmi_uid {
                self.stop_engine(uid);
                stopped.push(uid.to_string());
            }
        }
        Ok(stopped)
    }

    /// The volume uids of the engines serving VMI `vmi_uid` on this node.
    fn engines_of(&self, vmi_uid: &str) -> Vec<String> {
        let Ok(d) = std::fs::read_dir(&self.blk_dir) else { return Vec::new() };
        d.flatten()
            .map(|f| f.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("vmi"))
            .filter(|p| std::fs::read_to_string(p).unwrap_or_default().trim() == vmi_uid)
            .filter_map(|p| p.file_stem()?.to_str()?.strip_prefix("e-").map(str::to_string))
            .collect()
    }

    /// Stops the engines serving VMI `vmi_uid` (its QEMU is gone).
    pub fn detach_vmi(&self, vmi_uid: &str) {
        for uid in self.engines_of(vmi_uid) {
            self.stop_engine(&uid);
        }
    }

    /// A live migration of VMI `vmi_uid` completed: its volumes are
    /// `target`'s now. Their status says so first (so that this node never
    /// takes them for detached), then their engines here stop (fenced
    /// already by the target's first I/O, or about to be).
    pub async fn hand_over(&self, vmi_uid: &str, target: &str) {
        let engines = self.engines_of(vmi_uid);
        if engines.is_empty() {
            return;
        }
        let volumes = match Typed::<Volume>::new(self.api.as_ref()).list(None, &Selectors::default()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list volumes to hand them over; stopping their engines");
                Vec::new()
            }
        };
        for uid in engines {
            let lock = self.lock(&uid);
            let _held = lock.lock_owned().await;
            if let Some(vol) = volumes.iter().find(|v| v.metadata.uid.as_deref() == Some(uid.as_str())) {
                self.patch_status(vol, |s| {
                    s.state = Some("Attached".into());
                    s.attached_to = Some(target.to_string());
                })
                .await;
            }
            self.stop_engine(&uid);
        }
    }

    fn stop_engine(&self, volume_uid: &str) {
        let p = self.engine_paths(volume_uid);
        stop(&p.pid, &p.nbd.display().to_string());
        for f in [&p.nbd, &p.vhost, &p.ctl, &p.vmi, &p.args] {
            let _ = std::fs::remove_file(f);
        }
        tracing::info!(volume_uid, "volume detached");
    }

    /// One pass over this node's replicas, volumes and snapshots.
    pub async fn reconcile(self: &Arc<Self>) {
        self.reap();
        if let Err(e) = self.reconcile_replicas().await {
            tracing::warn!(error = %e, "cannot reconcile replicas");
        }
        if let Err(e) = self.reconcile_volumes().await {
            tracing::warn!(error = %e, "cannot reconcile volumes");
        }
    }

    async fn reconcile_replicas(&self) -> Result<(), String> {
        let replicas = Typed::<Replica>::new(self.api.as_ref());
        let volumes = Typed::<Volume>::new(self.api.as_ref());
        let all = replicas.list(None, &Selectors::default()).await.map_err(|e| e.to_string())?;
        for r in all.into_iter().filter(|r| r.spec.node_name == self.node) {
            let (ns, rname) = name(&r.metadata);
            let uid = r.metadata.uid.clone().unwrap_or_default();
            let (sock, pid, log) = self.replica_paths(&uid);
            let addr_file = sock.with_extension("addr");
            let needle = sock.display().to_string();
            if r.metadata.deletion_timestamp.is_some() {
                stop(&pid, &needle);
                // Only under a disk of this node: never a path an object
                // says.
                match self.disk_of(&r) {
                    Some(disk) => {
                        let _ = std::fs::remove_dir_all(disk.path.join(&uid));
                    }
                    None => tracing::warn!(
                        replica = %rname,
                        disk = %r.disk_name(),
                        data = ?r.status.as_ref().and_then(|s| s.data_dir.as_deref()),
                        "the replica's disk is not configured on this node; its data, if any, is left there"
                    ),
                }
                for f in [&sock, &log, &addr_file] {
                    let _ = std::fs::remove_file(f);
                }
                let finalizers: Vec<&String> =
                    r.metadata.finalizers.iter().filter(|f| *f != REPLICA_FINALIZER).collect();
                if finalizers.len() != r.metadata.finalizers.len() {
                    let patch = json!({"metadata": {"finalizers": finalizers}});
                    if let Err(e) = replicas.merge_patch(ns.as_deref(), &rname, patch, false).await {
                        tracing::warn!(replica = %rname, error = %e, "cannot release a deleted replica");
                    }
                }
                tracing::info!(replica = %rname, "replica data removed");
                continue;
            }
            let Some(vol) = volumes.get(ns.as_deref(), &r.spec.volume_name).await.map_err(|e| e.to_string())? else {
                continue;
            };
            let vol_uid = vol.metadata.uid.clone().unwrap_or_default();
            let mut message = None;
            let dir = match self.replica_dir(&r) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    // A server already running (adopted) goes on serving;
                    // none is started.
                    if r.status.as_ref().and_then(|s| s.message.as_deref()) != Some(e.as_str()) {
                        tracing::warn!(replica = %rname, "{e}");
                    }
                    message = Some(e);
                    None
                }
            };
            // A volume made from an image reads through the image's base
            // on this node.
            let base = match &vol.spec.image {
                Some(image) if dir.is_some() => match self.image_base(image).await {
                    Ok(b) => Some(b),
                    Err(e) => {
                        message = Some(e);
                        None
                    }
                },
                _ => None,
            };
            let base_ok = vol.spec.image.is_none() || base.is_some();
            if let (Some(dir), None, true) = (&dir, alive(&pid, &needle), base_ok) {
                let size = vol.status.as_ref().and_then(|s| s.size).unwrap_or(vol.size_bytes());
                let mut args = vec![
                    "blk".to_string(),
                    "replica".into(),
                    "--dir".into(),
                    dir.display().to_string(),
                    "--volume".into(),
                    vol_uid.clone(),
                    "--size".into(),
                    size.to_string(),
                    "--listen".into(),
                    format!("unix:{needle}"),
                ];
                // Engines on other nodes connect over TCP, proving the
                // cluster key; the port of the last run is taken again if
                // it is free (engines have it in their replica set).
                if let Some(key) = &self.key_file {
                    let port = std::fs::read_to_string(&addr_file)
                        .ok()
                        .and_then(|a| a.trim().rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
                        .filter(|p| std::net::TcpListener::bind((self.node_ip, *p)).is_ok())
                        .unwrap_or(0);
                    let _ = std::fs::remove_file(&addr_file);
                    args.extend([
                        "--listen".into(),
                        format!("tcp:{}", std::net::SocketAddr::new(self.node_ip, port)),
                        "--address-file".into(),
                        addr_file.display().to_string(),
                        "--auth-key-file".into(),
                        key.display().to_string(),
                    ]);
                }
                if let Some(b) = &base {
                    args.extend(["--base".into(), b.display().to_string()]);
                }
                let _ = std::fs::remove_file(&sock);
                match self.spawn(&args, &log, &pid) {
                    Ok(_) => {
                        for _ in 0..100 {
                            let listening = sock.exists() && (self.key_file.is_none() || addr_file.exists());
                            if listening || alive(&pid, &needle).is_none() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Err(e) => message = Some(e),
                }
            }
            let serving = alive(&pid, &needle).is_some() && std::os::unix::net::UnixStream::connect(&sock).is_ok();
            if !serving && message.is_none() {
                message = Some(format!("the replica server is not running: {}", log_tail(&log)));
            }
            let state = if serving { "Running" } else { "Failed" };
            let mut status = r.status.clone().unwrap_or_default();
            status.state = Some(state.into());
            // Other nodes' engines use the TCP address; this node's use the
            // unix socket (see `addresses`).
            status.address = match std::fs::read_to_string(&addr_file) {
                Ok(a) if self.key_file.is_some() && !a.trim().is_empty() => Some(a.trim().to_string()),
                _ => Some(format!("unix:{needle}")),
            };
            if let Some(dir) = &dir {
                status.data_dir = Some(dir.display().to_string());
                status.actual_size = Some(disk_usage(dir));
            }
            status.message = message;
            if Some(&status) != r.status.as_ref() {
                let patch = json!({"status": status});
                if let Err(e) = replicas.merge_patch(ns.as_deref(), &rname, patch, true).await {
                    tracing::debug!(replica = %rname, error = %e, "cannot update replica status");
                }
            }
        }
        Ok(())
    }

    /// Whether this node manages `vol`: the node its engine runs on, or
    /// when detached the node of its first replica.
    fn manages(&self, vol: &Volume, replicas: &[Replica]) -> bool {
        let attached = vol.status.as_ref().filter(|s| s.state.as_deref() == Some("Attached"));
        if let Some(node) = attached.and_then(|s| s.attached_to.as_deref()) {
            return node == self.node;
        }
        let mut nodes: Vec<&Replica> = replicas.iter().collect();
        nodes.sort_by_key(|r| r.metadata.name.clone());
        nodes.first().is_some_and(|r| r.spec.node_name == self.node)
    }

    async fn reconcile_volumes(self: &Arc<Self>) -> Result<(), String> {
        let volumes = Typed::<Volume>::new(self.api.as_ref());
        let snapshots = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let all = volumes.list(None, &Selectors::default()).await.map_err(|e| e.to_string())?;
        let snaps = snapshots.list(None, &Selectors::default()).await.map_err(|e| e.to_string())?;
        let mut known = HashSet::new();
        let all_names: Vec<(Option<String>, String)> = all.iter().map(|v| name(&v.metadata)).collect();
        for vol in all {
            let uid = vol.metadata.uid.clone().unwrap_or_default();
            known.insert(uid.clone());
            // A deleted volume's replicas go with it, but for one in the
            // trash: its snapshots stay usable (clones, backups) and get
            // deleted as any other, while no VM may attach it.
            if vol.metadata.deletion_timestamp.is_some() && !vol.trashed() {
                continue;
            }
            // Whatever holds the volume (an attach, a detached pass) goes
            // first; this pass comes back later.
            let Ok(held) = self.lock(&uid).try_lock_owned() else { continue };
            let replicas = self.replicas_of(&vol).await?;
            let p = self.engine_paths(&uid);
            let engine = alive(&p.pid, &p.nbd.display().to_string()).is_some();
            if !engine && p.args.exists() {
                self.restart_engine_if_needed(&uid);
            }
            let engine = alive(&p.pid, &p.nbd.display().to_string()).is_some();
            if !engine && !self.manages(&vol, &replicas) {
                continue;
            }
            // Detached work claims the replicas: decide on the volume as it
            // is now, not as listed (a migration may just have handed it
            // to another node, whose engine must not be fenced).
            let vol = if engine {
                vol
            } else {
                match volumes
                    .get(vol.metadata.namespace.as_deref(), vol.metadata.name.as_deref().unwrap_or_default())
                    .await
                {
                    Ok(Some(fresh)) if fresh.metadata.uid == vol.metadata.uid && self.manages(&fresh, &replicas) => {
                        fresh
                    }
                    _ => continue,
                }
            };
            let (ns, vname) = name(&vol.metadata);
            let mine: Vec<VolumeSnapshot> =
                snaps.iter().filter(|s| s.metadata.namespace == ns && s.spec.volume_name == vname).cloned().collect();
            if engine {
                self.attached_pass(&vol, &replicas, &mine, &p).await;
                continue;
            }
            let stale = self
                .checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&uid)
                .is_none_or(|t| t.elapsed() > RECHECK);
            let needs_work = stale || Self::pending(&vol, &replicas, &mine);
            if needs_work && replicas.iter().any(Self::running) {
                // In the background (a rebuild can take long), holding the
                // volume until done.
                let me = self.clone();
                tokio::spawn(async move {
                    me.detached_pass(&vol).await;
                    drop(held);
                });
            } else if !needs_work {
                self.patch_status(&vol, |s| {
                    s.state = Some(Self::detached_state(&vol).into());
                    s.attached_to = None;
                    s.attached_vmi = None;
                    s.replicas = self.replica_summary(&replicas, None);
                    s.robustness = Some(Self::detached_robustness(s, &replicas));
                    s.actual_size = Self::actual_size(&replicas);
                })
                .await;
            }
        }
        // Snapshots whose volume is gone have no data left to merge.
        let volume_names: HashSet<(Option<String>, String)> = all_names.into_iter().collect();
        for s in snaps.iter().filter(|s| s.metadata.deletion_timestamp.is_some()) {
            let (ns, sname) = name(&s.metadata);
            if volume_names.contains(&(ns.clone(), s.spec.volume_name.clone())) {
                continue;
            }
            let keep: Vec<&String> = s.metadata.finalizers.iter().filter(|f| *f != SNAPSHOT_FINALIZER).collect();
            if keep.len() != s.metadata.finalizers.len() {
                let _ = snapshots
                    .merge_patch(ns.as_deref(), &sname, json!({"metadata": {"finalizers": keep}}), false)
                    .await;
            }
        }
        // Engines of volumes that are gone.
        if let Ok(d) = std::fs::read_dir(&self.blk_dir) {
            for f in d.flatten() {
                let n = f.file_name().to_string_lossy().to_string();
                if let Some(uid) = n.strip_prefix("e-").and_then(|s| s.strip_suffix(".pid")) {
                    if !known.contains(uid) {
                        self.stop_engine(uid);
                    }
                }
            }
        }
        Ok(())
    }

    /// An engine that died while its VM still runs is started again (QEMU
    /// reconnects); one whose VM is gone is cleaned up.
    fn restart_engine_if_needed(&self, uid: &str) {
        let p = self.engine_paths(uid);
        let vmi = std::fs::read_to_string(&p.vmi).unwrap_or_default();
        let running = crate::runner::live_qemu(&crate::runner::run_dir(&self.run_root, vmi.trim())).is_some();
        let args: Vec<String> =
            std::fs::read(&p.args).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        if !running || args.is_empty() {
            self.stop_engine(uid);
            return;
        }
        tracing::warn!(volume_uid = uid, "the engine of an attached volume ended; starting it again");
        let _ = std::fs::remove_file(&p.nbd);
        if let Err(e) = self.spawn(&args, &p.log, &p.pid) {
            tracing::error!(volume_uid = uid, error = %e, "cannot restart the engine");
        }
    }

    /// What a volume without an engine is: `Detached`, or `Trashed`.
    fn detached_state(vol: &Volume) -> &'static str {
        if vol.trashed() {
            "Trashed"
        } else {
            "Detached"
        }
    }

    /// Whether a detached volume has work waiting.
    fn pending(vol: &Volume, replicas: &[Replica], snaps: &[VolumeSnapshot]) -> bool {
        let status = vol.status.clone().unwrap_or_default();
        let restoring = vol.awaiting_fill();
        let revert = vol.metadata.annotations.contains_key(REVERT_ANNOTATION);
        let grow = status.size.is_some_and(|s| s < vol.size_bytes());
        let names: Vec<&str> = replicas.iter().map(|r| r.metadata.name.as_deref().unwrap_or_default()).collect();
        let known: Vec<&str> = status.replicas.iter().map(|r| r.name.as_str()).collect();
        let replica_change = names.len() != known.len() || names.iter().any(|n| !known.contains(n));
        let snapshot_work = snaps.iter().any(|s| {
            s.metadata.deletion_timestamp.is_some()
                || s.status.as_ref().is_none_or(|st| !st.ready_to_use && st.error.is_none())
        });
        restoring || revert || grow || replica_change || snapshot_work || status.size.is_none()
    }

    fn replica_summary(
        &self,
        replicas: &[Replica],
        engine: Option<&control::EngineStatus>,
    ) -> Vec<VolumeReplicaStatus> {
        replicas
            .iter()
            .map(|r| {
                // As this node's engines address it.
                let address = self.address_of(r).map(|a| a.to_string()).unwrap_or_default();
                let from_engine = engine.and_then(|e| e.replicas.iter().find(|x| x.address == address));
                let state = match from_engine.map(|x| x.state.as_str()) {
                    Some("healthy") => "Healthy",
                    Some("rebuilding") => "Rebuilding",
                    Some(_) => "Failed",
                    None if Self::running(r) => "Running",
                    None => "Failed",
                };
                VolumeReplicaStatus {
                    name: r.metadata.name.clone().unwrap_or_default(),
                    node: r.spec.node_name.clone(),
                    state: state.into(),
                }
            })
            .collect()
    }

    fn detached_robustness(s: &VolumeStatus, replicas: &[Replica]) -> String {
        let running = replicas.iter().filter(|r| Self::running(r)).count();
        if running == 0 {
            "Faulted".into()
        } else if running < replicas.len() {
            "Degraded".into()
        } else {
            s.robustness.clone().unwrap_or_else(|| "Unknown".into())
        }
    }

    fn actual_size(replicas: &[Replica]) -> Option<i64> {
        replicas.iter().filter_map(|r| r.status.as_ref()?.actual_size).max()
    }

    /// Updates the fields of `vol`'s status that `f` changes, and only
    /// those: a pass that read the volume earlier never undoes what
    /// another pass wrote meanwhile. Conditions belong to the Volume
    /// controller.
    async fn patch_status(&self, vol: &Volume, f: impl FnOnce(&mut VolumeStatus)) {
        let old = vol.status.clone().unwrap_or_default();
        let mut new = old.clone();
        f(&mut new);
        new.conditions = old.conditions.clone();
        let (Ok(o), Ok(n)) = (serde_json::to_value(&old), serde_json::to_value(&new)) else { return };
        let Some(patch) = merge_diff(&o, &n) else { return };
        let (ns, vname) = name(&vol.metadata);
        if let Err(e) = Typed::<Volume>::new(self.api.as_ref())
            .merge_patch(ns.as_deref(), &vname, json!({ "status": patch }), true)
            .await
        {
            tracing::debug!(volume = %vname, error = %e, "cannot update volume status");
        }
    }

    /// An attached volume: status from its engine, and snapshots and
    /// growth through it.
    async fn attached_pass(&self, vol: &Volume, replicas: &[Replica], snaps: &[VolumeSnapshot], p: &EnginePaths) {
        let (_, vname) = name(&vol.metadata);
        let mut status = match control::call(&p.ctl, &ControlRequest::Status, CONTROL_TIMEOUT).await {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => {
                tracing::debug!(volume = %vname, error = %e, "engine status not available");
                return;
            }
        };
        if status.standby {
            // A migration's target: the source's engine serves and reports.
            return;
        }
        // The volume's replicas changed (one replaced or added, one
        // removed): the engine takes the new set (it rebuilds new replicas
        // by itself and refuses a set without a healthy one), and a restart
        // after a crash uses it too.
        let want = self.address_strings(replicas);
        let have: Vec<String> = status.replicas.iter().map(|r| r.address.clone()).collect();
        if !want.is_empty() && want != have {
            let req = ControlRequest::SetReplicas { replicas: want.clone() };
            match control::call(&p.ctl, &req, CONTROL_TIMEOUT).await {
                Ok(_) => {
                    tracing::info!(volume = %vname, from = ?have, to = ?want, "replica set of the attached volume changed");
                    let uid = vol.metadata.uid.clone().unwrap_or_default();
                    let saved: Vec<String> =
                        std::fs::read(&p.args).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
                    let args = if saved.is_empty() {
                        let mut args = Self::engine_args(&uid, &want, p, &vname);
                        if let Some(key) = &self.key_file {
                            args.extend(["--auth-key-file".into(), key.display().to_string()]);
                        }
                        args
                    } else {
                        Self::with_replicas(&saved, &want)
                    };
                    Self::save_engine_args(p, &args);
                    if let Ok(r) = control::call(&p.ctl, &ControlRequest::Status, CONTROL_TIMEOUT).await {
                        status = r.status.unwrap_or_default();
                    }
                }
                Err(e) => {
                    tracing::warn!(volume = %vname, error = %e, "the engine refuses the volume's new replica set")
                }
            }
        }
        let ops = Ops::Control(&p.ctl);
        let mut current = vol.status.clone().unwrap_or_default();
        current.size = Some(status.size as i64);
        if (status.size as i64) < vol.size_bytes() {
            match ops.expand(vol.size_bytes() as u64).await {
                Ok(()) => current.size = Some(vol.size_bytes()),
                Err(e) => tracing::warn!(volume = %vname, error = %e, "cannot grow the volume"),
            }
        }
        self.snapshot_pass(&ops, &current, snaps).await;
        let mut revert = None;
        if let Some(snap) = vol.metadata.annotations.get(REVERT_ANNOTATION) {
            revert = Some(RevertStatus {
                snapshot: snap.clone(),
                time: Some(now()),
                error: Some("the volume is in use; stop the virtual machine first, then revert".into()),
            });
            self.clear_revert(vol).await;
        }
        let healthy = status.replicas.iter().filter(|r| r.state == "healthy").count();
        let robustness = match healthy {
            0 => "Faulted",
            n if n < status.replicas.len() || status.replicas.len() < replicas.len() => "Degraded",
            _ => "Healthy",
        };
        let vmi = std::fs::read_to_string(&p.vmi).unwrap_or_default().trim().to_string();
        let size = current.size;
        self.patch_status(vol, |s| {
            s.state = Some("Attached".into());
            s.attached_to = Some(self.node.clone());
            s.attached_vmi = Some(vmi).filter(|v| !v.is_empty());
            s.epoch = Some(status.epoch);
            s.size = size;
            s.robustness = Some(robustness.into());
            s.replicas = self.replica_summary(replicas, Some(&status));
            s.actual_size = Self::actual_size(replicas);
            if revert.is_some() {
                s.last_revert = revert;
            }
        })
        .await;
    }

    async fn clear_revert(&self, vol: &Volume) {
        let (ns, vname) = name(&vol.metadata);
        let patch = json!({"metadata": {"annotations": {REVERT_ANNOTATION: null}}});
        if let Err(e) = Typed::<Volume>::new(self.api.as_ref()).merge_patch(ns.as_deref(), &vname, patch, false).await {
            tracing::warn!(volume = %vname, error = %e, "cannot clear the revert request");
        }
    }

    /// Takes the snapshots asked for and deletes the ones being deleted.
    async fn snapshot_pass(&self, ops: &Ops<'_>, status: &VolumeStatus, snaps: &[VolumeSnapshot]) {
        let api = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let mut layers: Option<Vec<String>> = None;
        for s in snaps {
            let (ns, sname) = name(&s.metadata);
            let layer = s.layer_name();
            if s.metadata.deletion_timestamp.is_some() {
                if !s.metadata.finalizers.iter().any(|f| f == SNAPSHOT_FINALIZER) {
                    continue;
                }
                if layers.is_none() {
                    layers = ops.snapshots().await.ok();
                }
                let Some(have) = &layers else { continue };
                if have.contains(&layer) {
                    if let Err(e) = ops.delete_snapshot(&layer).await {
                        tracing::warn!(snapshot = %sname, error = %e, "cannot delete the snapshot's data");
                        continue;
                    }
                }
                let keep: Vec<&String> = s.metadata.finalizers.iter().filter(|f| *f != SNAPSHOT_FINALIZER).collect();
                let _ = api.merge_patch(ns.as_deref(), &sname, json!({"metadata": {"finalizers": keep}}), false).await;
                tracing::info!(snapshot = %sname, "snapshot deleted");
                continue;
            }
            if s.status.as_ref().is_some_and(|st| st.ready_to_use || st.error.is_some()) {
                continue;
            }
            if !s.metadata.finalizers.iter().any(|f| f == SNAPSHOT_FINALIZER) {
                let mut f = s.metadata.finalizers.clone();
                f.push(SNAPSHOT_FINALIZER.into());
                if api.merge_patch(ns.as_deref(), &sname, json!({"metadata": {"finalizers": f}}), false).await.is_err()
                {
                    continue;
                }
            }
            let result = ops.snapshot(&layer).await;
            let st = match result {
                Ok(()) => json!({"readyToUse": true, "creationTime": now(), "size": ops.size(status)}),
                Err(e) => json!({"readyToUse": false, "error": format!("the snapshot could not be taken: {e}")}),
            };
            tracing::info!(snapshot = %sname, status = %st, "snapshot taken");
            let _ = api.merge_patch(ns.as_deref(), &sname, json!({ "status": st }), true).await;
        }
    }

    /// A detached volume: an engine in the agent claims the replicas,
    /// carries out what is waiting, rebuilds what is missing, and lets go.
    async fn detached_pass(&self, listed: &Volume) {
        let (ns, vname) = name(&listed.metadata);
        // Read again under the volume's lock: the listed copies may predate
        // the previous pass's results.
        let fresh = Typed::<Volume>::new(self.api.as_ref()).get(ns.as_deref(), &vname).await;
        let Ok(Some(vol)) = fresh else { return };
        if vol.metadata.uid != listed.metadata.uid {
            return;
        }
        let vol = &vol;
        let Ok(snaps) =
            Typed::<VolumeSnapshot>::new(self.api.as_ref()).list(ns.as_deref(), &Selectors::default()).await
        else {
            return;
        };
        let snaps: Vec<VolumeSnapshot> = snaps.into_iter().filter(|s| s.spec.volume_name == vname).collect();
        let snaps = &snaps[..];
        let uid = vol.metadata.uid.clone().unwrap_or_default();
        let Ok(replicas) = self.replicas_of(vol).await else { return };
        let addrs = self.addresses(&replicas);
        let engine = match Engine::start_with_key(&uid, &addrs, self.cluster_key()).await {
            Ok(e) => Arc::new(e),
            Err(e) => {
                tracing::warn!(volume = %vname, error = %e, "cannot open the detached volume");
                self.patch_status(vol, |s| {
                    s.state = Some("Faulted".into());
                    s.robustness = Some("Faulted".into());
                })
                .await;
                return;
            }
        };
        let mut status = vol.status.clone().unwrap_or_default();
        // Fill a new volume from its snapshot.
        if let (Some(from), None) = (&vol.spec.from_snapshot, &status.restored_from) {
            match self.restore(&engine, ns.as_deref(), from).await {
                Ok(bytes) => {
                    tracing::info!(volume = %vname, snapshot = %from, bytes, "volume filled from its snapshot");
                    status.restored_from = Some(from.clone());
                }
                Err(e) => {
                    tracing::warn!(volume = %vname, snapshot = %from, error = %e, "cannot fill the volume yet");
                }
            }
        }
        // Or from its backup.
        if let (Some(from), None) = (&vol.spec.from_backup, &status.restored_from) {
            if let Some(done) = self.fill_from_backup(vol, &engine, ns.as_deref(), from).await {
                status.restored_from = Some(format!("backup/{from}"));
                status.restore_progress = Some(100);
                status.restore_error = None;
                tracing::info!(volume = %vname, backup = %from, bytes = done, "volume filled from its backup");
            }
        }
        if (engine.size() as i64) < vol.size_bytes() {
            if let Err(e) = engine.expand(vol.size_bytes() as u64).await {
                tracing::warn!(volume = %vname, error = %e, "cannot grow the volume");
            }
        }
        let ops = Ops::Local(&engine);
        status.size = Some(engine.size() as i64);
        self.snapshot_pass(&ops, &status, snaps).await;
        if let Some(snap) = vol.metadata.annotations.get(REVERT_ANNOTATION) {
            let found = snaps.iter().find(|s| s.metadata.name.as_deref() == Some(snap.as_str()));
            let error = match found {
                None => Some(format!("there is no VolumeSnapshot {snap:?} of this volume")),
                Some(s) if !s.status.as_ref().is_some_and(|st| st.ready_to_use) => {
                    Some(format!("snapshot {snap:?} is not ready"))
                }
                Some(s) => engine
                    .revert(&s.layer_name(), false)
                    .await
                    .err()
                    .map(|e| e.to_string().replace(&s.layer_name(), snap).replace("snap-", "snapshot ")),
            };
            if error.is_none() {
                tracing::info!(volume = %vname, snapshot = %snap, "volume reverted");
            }
            status.last_revert = Some(RevertStatus { snapshot: snap.clone(), time: Some(now()), error });
            self.clear_revert(vol).await;
        }
        // Bring every replica back before letting go.
        let wanted = self.attach_signal(&uid);
        let notified = wanted.notify.notified();
        let rebuild = async {
            if wanted.waiting.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            tokio::time::timeout(DETACHED_REBUILD, engine.clone().rebuild_loop(PERIOD, true)).await.is_ok()
        };
        // Meanwhile the replica set may change (a replacement added, a
        // stale replica removed): the engine follows it.
        let mut latest = replicas;
        let complete = tokio::select! {
            r = rebuild => r,
            _ = notified => {
                tracing::info!(volume = %vname, "a VM wants the volume; its engine goes on with the rebuild");
                false
            }
            () = self.follow_replicas(vol, &engine, &mut latest) => false,
        };
        let replicas = latest;
        let healthy = engine.healthy().len();
        let robustness = if healthy == 0 {
            "Faulted"
        } else if !complete || healthy < replicas.len() {
            "Degraded"
        } else {
            "Healthy"
        };
        self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(uid, Instant::now());
        let epoch = engine.epoch();
        drop(engine);
        self.patch_status(vol, |s| {
            s.state = Some(Self::detached_state(vol).into());
            s.attached_to = None;
            s.attached_vmi = None;
            s.size = status.size;
            s.epoch = Some(epoch);
            s.robustness = Some(robustness.into());
            s.replicas = self.replica_summary(&replicas, None);
            s.actual_size = Self::actual_size(&replicas);
            s.restored_from = status.restored_from.clone();
            if status.restore_progress.is_some() {
                s.restore_progress = status.restore_progress;
                s.restore_error = None;
            }
            if status.last_revert.is_some() {
                s.last_revert = status.last_revert.clone();
            }
        })
        .await;
    }

    /// Gives a detached volume's engine the volume's replica set whenever
    /// it changes, keeping `replicas` up to date; runs until dropped.
    async fn follow_replicas(&self, vol: &Volume, engine: &Engine, replicas: &mut Vec<Replica>) {
        let (_, vname) = name(&vol.metadata);
        loop {
            tokio::time::sleep(PERIOD).await;
            let Ok(now) = self.replicas_of(vol).await else { continue };
            let next = self.addresses(&now);
            if next.is_empty() || next == self.addresses(replicas) {
                continue;
            }
            match engine.set_replicas(&next) {
                Ok(()) => {
                    tracing::info!(volume = %vname, replicas = next.len(), "replica set of the detached volume changed");
                    *replicas = now;
                }
                Err(e) => tracing::debug!(volume = %vname, error = %e, "the new replica set is not usable yet"),
            }
        }
    }

    /// Fills `vol` from Backup `from`, reporting progress in its status;
    /// the bytes written, or None (the reason is in the status) to try
    /// again at the next pass.
    async fn fill_from_backup(&self, vol: &Volume, engine: &Engine, ns: Option<&str>, from: &str) -> Option<u64> {
        let (_, vname) = name(&vol.metadata);
        let percent = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let p2 = percent.clone();
        let report = move |p| p2.store(p, std::sync::atomic::Ordering::Relaxed);
        let work = crate::backup::restore(self, engine, ns, from, &report);
        tokio::pin!(work);
        let mut reported = None;
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let p = percent.load(std::sync::atomic::Ordering::Relaxed);
                    if reported != Some(p) {
                        reported = Some(p);
                        self.patch_status(vol, |s| {
                            s.restore_progress = Some(p);
                            s.restore_error = None;
                        })
                        .await;
                    }
                }
            }
        };
        match result {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(volume = %vname, backup = %from, error = %e, "cannot fill the volume from its backup yet");
                self.patch_status(vol, |s| s.restore_error = Some(e)).await;
                None
            }
        }
    }

    /// Copies VolumeSnapshot `from` (of another volume) into `engine`'s
    /// volume.
    async fn restore(&self, engine: &Engine, ns: Option<&str>, from: &str) -> Result<u64, String> {
        let snap = Typed::<VolumeSnapshot>::new(self.api.as_ref())
            .get(ns, from)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("VolumeSnapshot {from:?} does not exist"))?;
        if !snap.status.as_ref().is_some_and(|s| s.ready_to_use) {
            return Err(format!("VolumeSnapshot {from:?} is not ready"));
        }
        let source = Typed::<Volume>::new(self.api.as_ref())
            .get(ns, &snap.spec.volume_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the snapshot's Volume {:?} is gone", snap.spec.volume_name))?;
        let replicas = self.replicas_of(&source).await?;
        let mut last = String::from("the source volume has no running replica");
        for r in replicas.iter().filter(|r| Self::running(r)) {
            let Some(addr) = self.address_of(r) else { continue };
            match engine.copy_from_snapshot(&addr, &snap.layer_name()).await {
                Ok(n) => return Ok(n),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

/// Reconciles the node's storage until dropped: at once when a Replica or
/// Volume changes (a new volume's replicas start within a moment), and
/// every [`PERIOD`] in any case (processes that died, rebuilds).
pub async fn run(storage: Arc<Storage>) {
    let changed = Arc::new(tokio::sync::Notify::new());
    // Snapshots too: a VM backup holds the guest until they are taken.
    for gvr in [
        sheaf_client::Gvr::of::<Replica>(),
        sheaf_client::Gvr::of::<Volume>(),
        sheaf_client::Gvr::of::<VolumeSnapshot>(),
    ] {
        tokio::spawn(notify_on_change(storage.api.clone(), gvr, changed.clone()));
    }
    loop {
        storage.reconcile().await;
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = changed.notified() => {
                // The pass's own status writes wake it too: a short pause
                // lets a burst of changes make one pass.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Wakes `changed` on every change of the objects of `gvr`.
pub(crate) async fn notify_on_change(api: Arc<dyn Api>, gvr: sheaf_client::Gvr, changed: Arc<tokio::sync::Notify>) {
    use futures::StreamExt as _;
    loop {
        let sel = Selectors::default();
        let rv = match api.list(gvr, None, &sel).await {
            Ok((_, rv)) => rv,
            Err(_) => {
                tokio::time::sleep(PERIOD).await;
                continue;
            }
        };
        if let Ok(mut events) = api.watch(gvr, None, &sel, &rv).await {
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(sheaf_client::WatchEvent::Bookmark(_)) => {}
                    Ok(_) => changed.notify_one(),
                    Err(_) => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_removes_nested_keys_and_skips_equal_ones() {
        let old = json!({"a": 1, "r": {"snapshot": "s1", "error": "x"}, "gone": true, "same": [1]});
        let new = json!({"a": 2, "r": {"snapshot": "s1"}, "same": [1], "added": "y"});
        assert_eq!(merge_diff(&old, &new), Some(json!({"a": 2, "r": {"error": null}, "gone": null, "added": "y"})));
        assert_eq!(merge_diff(&new, &new), None);
    }

    #[test]
    fn the_engine_command_line_follows_the_replica_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("e-u1");
        let p = EnginePaths::at(&base);
        let replicas = ["unix:/run/r-a.sock".to_string(), "tcp:10.0.0.2:7001".to_string()];
        let args = Storage::engine_args("u1", &replicas, &p, "a-serial-longer-than-twenty");
        let (nbd, ctl, vhost) =
            (p.nbd.display().to_string(), p.ctl.display().to_string(), p.vhost.display().to_string());
        let want = ["blk", "engine", "--volume", "u1", "--replica", &replicas[0], "--replica", &replicas[1]];
        assert_eq!(args[..8], want);
        assert_eq!(
            args[8..],
            [
                "--nbd",
                nbd.as_str(),
                "--control",
                ctl.as_str(),
                "--vhost-user",
                vhost.as_str(),
                "--vhost-user-serial",
                "a-serial-longer-than"
            ]
        );
        // A new replica set keeps the rest of the command line.
        let moved = Storage::with_replicas(&args, &["tcp:10.0.0.3:7001".to_string()]);
        assert_eq!(moved[..6], ["blk", "engine", "--volume", "u1", "--replica", "tcp:10.0.0.3:7001"]);
        assert_eq!(moved[6..], args[8..]);
        // Saved whole (a restart reads it back), replacing the old one.
        Storage::save_engine_args(&p, &args[..6]);
        Storage::save_engine_args(&p, &args);
        let saved: Vec<String> = serde_json::from_slice(&std::fs::read(&p.args).expect("args")).expect("json");
        assert_eq!(saved, args);
        assert!(!p.args.with_extension("args.tmp").exists());
    }
}
