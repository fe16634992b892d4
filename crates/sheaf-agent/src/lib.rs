//! Sheaf's node agent: registers the node, runs the virtual machines
//! bound to it, one [`runner`] task per VMI, and the node's part of the
//! storage ([`storage`]: replica servers, engines, snapshots, on the
//! node's [`disks`]).
//!
//! The agent is stateless: on start it lists the VMIs bound to its node and
//! adopts the QEMU processes it finds in their runtime directories, so it
//! can be restarted (or crash) without touching running guests.

pub mod accel;
pub mod backup;
pub mod cluster_key;
pub mod disks;
pub mod dnsmasq;
pub mod footprint;
pub mod hotplug;
pub mod image_format;
pub mod images;
pub mod launch;
pub mod metrics;
pub mod migration;
pub mod network;
pub mod node;
pub mod runner;
pub mod seed;
pub mod serial_log;
pub mod storage;
pub mod vmnet;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use sheaf_client::{Api, Gvr, Selectors, WatchEvent};
use sheaf_types::kubevirt::VirtualMachineInstance;
use tokio::sync::mpsc;

use crate::runner::{Request, RunnerEnv};

/// Agent settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// The address other nodes and the server reach this node at, reported
    /// as the Node's `InternalIP` (None: 127.0.0.1, a single node).
    pub node_ip: Option<std::net::IpAddr>,
    /// Per-VMI runtime directories (sockets, pidfiles, logs).
    pub run_root: PathBuf,
    /// The node's image store (container disks, kernels).
    pub image_root: PathBuf,
    pub qemu: PathBuf,
    /// The management network (bridge and subnet); None: QEMU's user-mode
    /// NAT for every pod network.
    pub management: Option<(String, network::Subnet)>,
    /// Where this node keeps replica data (one directory per replica, on
    /// the disk its Replica names): at least one, checked with
    /// [`disks::prepare`]. `sheaf server` gives one named `default` at its
    /// replica root when no `--disk` is given.
    pub disks: Vec<disks::DiskConfig>,
    /// Gets the node's image store once the agent has made it (the API
    /// server's upload and download of images go through it).
    pub images_ready: Option<tokio::sync::watch::Sender<Option<Arc<images::Images>>>>,
    /// When VMIs' serial console logs are rotated.
    pub serial_log: serial_log::Policy,
    /// The agent's metrics (`sheaf server` adds them to its `/metrics`).
    pub metrics: Arc<metrics::AgentMetrics>,
}

struct Runner {
    tx: mpsc::Sender<Request>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the agent until the task is dropped.
pub async fn run(api: Arc<dyn Api>, cfg: AgentConfig) {
    let accel = accel::probe(std::path::Path::new("/dev/kvm"), std::path::Path::new("/sys"));
    let ready = match &accel.reason {
        None => "agent ready; KVM available".to_string(),
        Some(r) => format!("agent ready; guests run under TCG: {r}"),
    };
    tracing::info!(node = %cfg.node_name, accel = ?accel.accel, reason = ?accel.reason, "agent starting");
    if let Err(e) = std::fs::create_dir_all(&cfg.run_root) {
        tracing::error!(dir = %cfg.run_root.display(), error = %e, "cannot create the runtime directory");
    }
    // Storage and images first: they do not need the management network,
    // which may wait for the host.
    let node_ip = cfg.node_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let key = cluster_key::get(api.as_ref()).await;
    let storage = Arc::new(
        storage::Storage::new(api.clone(), &cfg.node_name, &cfg.disks, &cfg.run_root).serve_over_tcp(node_ip, key),
    );
    tokio::spawn(storage::run(storage.clone()));
    tokio::spawn(backup::run(storage.clone()));
    let images = Arc::new(
        images::Images::new(api.clone(), &cfg.node_name, &storage.images_root())
            .with_cluster_key(storage.cluster_key()),
    );
    if let Some(tx) = &cfg.images_ready {
        let _ = tx.send(Some(images.clone()));
    }
    tokio::spawn(images::run(images));
    let network = match &cfg.management {
        None => None,
        Some((bridge, subnet)) => match network::Management::new(bridge, *subnet, &cfg.run_root) {
            Ok(m) => {
                // Retried until the host lets us: VMs need it to start.
                loop {
                    match m.ensure() {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::error!(bridge, %subnet, error = %e, "cannot set up the management network; retrying");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
                tracing::info!(bridge, %subnet, "management network ready");
                Some(Arc::new(m))
            }
            Err(e) => {
                tracing::error!(error = %e, "bad management network settings; VMs get user-mode NAT");
                None
            }
        },
    };
    let vmnet = match sheaf_net::RtNetlink::new() {
        Ok(nl) => {
            let vlan = sheaf_net::vlan_supported();
            tracing::info!(vlan_capable = vlan, "VM networks ready");
            let nets = Arc::new(vmnet::VmNetworks::new(
                api.clone(),
                &cfg.node_name,
                Arc::new(nl),
                &cfg.run_root,
                network.clone(),
                vlan,
            ));
            tokio::spawn(vmnet::run_loop(nets.clone()));
            Some(nets)
        }
        Err(e) => {
            tracing::error!(error = %e, "no netlink: VMs on VM networks cannot start on this node");
            None
        }
    };
    let env = Arc::new(RunnerEnv {
        api: api.clone(),
        node: cfg.node_name.clone(),
        run_root: cfg.run_root.clone(),
        images: launch::ImageStore { root: cfg.image_root.clone() },
        accel,
        qemu: cfg.qemu.clone(),
        network,
        storage,
        vmnet,
        serial_log: cfg.serial_log,
        metrics: cfg.metrics.clone(),
    });
    cfg.metrics.start(metrics::Scope {
        api: api.clone(),
        node: cfg.node_name.clone(),
        run_root: cfg.run_root.clone(),
        disks: cfg.disks.clone(),
    });
    let heartbeat_api = api.clone();
    let node = cfg.node_name.clone();
    let ready2 = ready.clone();
    let disks = cfg.disks.clone();
    let mut footprint = footprint::Publisher::new(footprint::Scope::of(&cfg));
    tokio::spawn(crate::migration::run_targets(env.clone(), node_ip));
    tokio::spawn(async move {
        loop {
            if let Err(e) = node::register(heartbeat_api.as_ref(), &node, &ready2, &disks, node_ip).await {
                tracing::warn!(error = %e, "node heartbeat failed");
            }
            footprint.heartbeat(heartbeat_api.as_ref(), &node).await;
            tokio::time::sleep(node::HEARTBEAT).await;
        }
    });
    let mut runners: HashMap<String, Runner> = HashMap::new();
    let mut first_list = true;
    let gvr = Gvr::of::<VirtualMachineInstance>();
    let sel = Selectors { labels: String::new(), fields: format!("status.nodeName={}", cfg.node_name) };
    loop {
        let (items, rv) = match api.list(gvr, None, &sel).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list VMIs; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let listed: HashSet<String> =
            items.iter().filter_map(|v| v.pointer("/metadata/uid").and_then(Value::as_str)).map(String::from).collect();
        for item in items {
            handle(&env, &mut runners, item, false);
        }
        // VMIs gone or bound elsewhere while the watch was down (this node
        // was failed over): what still runs for them stops at once, their
        // engines are fenced anyway.
        for (uid, r) in &runners {
            if !listed.contains(uid) {
                tracing::warn!(vmi = %uid, "the VMI is no longer bound to this node; stopping its QEMU");
                let _ = r.tx.try_send(Request::Shutdown { grace: Duration::ZERO });
            }
        }
        if first_list {
            first_list = false;
            runner::discard_orphans(&env, &listed);
        }
        let mut stream = match api.watch(gvr, None, &sel, &rv).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch VMIs; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => handle(&env, &mut runners, o, false),
                Ok(WatchEvent::Deleted(o)) => handle(&env, &mut runners, o, true),
                Ok(WatchEvent::Bookmark(_)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "VMI watch ended; relisting");
                    break;
                }
            }
        }
    }
}

fn handle(env: &Arc<RunnerEnv>, runners: &mut HashMap<String, Runner>, obj: Value, deleted: bool) {
    runners.retain(|_, r| !r.task.is_finished());
    let Ok(vmi) = serde_json::from_value::<VirtualMachineInstance>(obj) else { return };
    let Some(uid) = vmi.metadata.uid.clone() else { return };
    let grace = Duration::from_secs(vmi.spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
    if let Some(r) = runners.get(&uid) {
        if deleted {
            // Gone while its runner holds a finalizer (the node was failed
            // over and the finalizer dropped), or bound to another node;
            // or gone while its runner was ending. Once the runner has
            // ended, what it left (the serial log of an ended VMI) goes.
            let _ = r.tx.try_send(Request::Shutdown { grace: Duration::ZERO });
            let (tx, env, dir) = (r.tx.clone(), env.clone(), runner::run_dir(&env.run_root, &uid));
            tokio::spawn(async move {
                tx.closed().await;
                runner::discard(&env, &dir);
            });
        } else if vmi.metadata.deletion_timestamp.is_some() {
            let _ = r.tx.try_send(Request::Shutdown { grace });
        } else {
            // Dropped when the runner is busy: it re-reads the VMI regularly.
            let _ = r.tx.try_send(Request::Sync(Box::new(vmi)));
        }
        return;
    }
    if deleted {
        // Gone without our finalizer, or bound to another node: make sure
        // nothing is left running here (and write nothing about it).
        runner::discard(env, &runner::run_dir(&env.run_root, &uid));
        return;
    }
    let phase = vmi.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let dir = runner::run_dir(&env.run_root, &uid);
    let finished = phase == "Succeeded" || phase == "Failed";
    let holds_finalizer = vmi.metadata.finalizers.iter().any(|f| f == runner::FINALIZER);
    if finished && !holds_finalizer && runner::live_qemu(&dir).is_none() {
        return;
    }
    let (tx, rx) = mpsc::channel(8);
    if vmi.metadata.deletion_timestamp.is_some() {
        let _ = tx.try_send(Request::Shutdown { grace });
    }
    let task = tokio::spawn(runner::run(env.clone(), vmi, rx));
    runners.insert(uid, Runner { tx, task });
}
