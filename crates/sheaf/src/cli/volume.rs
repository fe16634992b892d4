//! `sheaf volume ...`: Sheaf's replicated volumes and their snapshots
//! (`sheaf.io/v1alpha1` Volume and VolumeSnapshot objects), with waits
//! for the node agent to carry the request out.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use sheaf_types::storage::{Volume, PURGE_ANNOTATION};

use super::client::{encode, Client, ConnArgs};

#[derive(Args, Debug)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub action: VolumeAction,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, value_name = "NS", global = true)]
    pub namespace: Option<String>,
    /// How long to wait for the node agent (seconds).
    #[arg(long, default_value = "120", global = true)]
    pub timeout: u64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand, Debug)]
pub enum VolumeAction {
    /// Create a volume: `sheaf volume create data --size 10Gi --replicas 3`.
    Create {
        name: String,
        /// Size, a multiple of 4Ki (10Gi, 512Mi, ...).
        #[arg(long)]
        size: String,
        /// Copies of the data (1..16).
        #[arg(long, default_value = "3")]
        replicas: u32,
        /// How VMs reach it: `nbd` or `vhost-user` (faster, and a running
        /// guest sees it grow; no live migration yet). Default: nbd.
        #[arg(long)]
        frontend: Option<String>,
        /// Replicas only on disks with all these tags (`--disk-selector
        /// ssd,fast`; see `kubectl get disks`).
        #[arg(long, value_delimiter = ',', value_name = "TAG,...")]
        disk_selector: Vec<String>,
    },
    /// List volumes with their state and snapshots.
    List,
    /// Take a crash-consistent snapshot: `sheaf volume snapshot data before-upgrade`.
    Snapshot { volume: String, snapshot: String },
    /// List a volume's snapshots.
    Snapshots { volume: String },
    /// Delete a snapshot (its data merges into the next layer).
    DeleteSnapshot { snapshot: String },
    /// Go back to a snapshot (the volume must not be in use).
    Revert { volume: String, snapshot: String },
    /// Make a new volume from a snapshot: `sheaf volume clone before-upgrade data-copy`.
    Clone {
        snapshot: String,
        new_volume: String,
        /// Size of the new volume (default: the snapshot's).
        #[arg(long)]
        size: Option<String>,
        #[arg(long, default_value = "3")]
        replicas: u32,
        /// Replicas only on disks with all these tags.
        #[arg(long, value_delimiter = ',', value_name = "TAG,...")]
        disk_selector: Vec<String>,
    },
    /// Grow a volume: `sheaf volume expand data --size 20Gi`.
    Expand {
        volume: String,
        #[arg(long)]
        size: String,
    },
    /// Delete a volume. Refused while a VM uses it. A volume with snapshots
    /// goes to the trash with them (its data kept, snapshots can be cloned
    /// out) until the server's retention ends; without, its data goes now.
    Delete {
        volume: String,
        /// Delete its snapshots and data now, without the trash.
        #[arg(long)]
        purge: bool,
    },
    /// List the deleted volumes kept in the trash, their snapshots and when
    /// they are purged.
    Trash,
    /// Delete a volume in the trash and its snapshots now.
    Purge { volume: String },
}

struct Ctx {
    client: Client,
    ns: String,
    timeout: Duration,
}

impl Ctx {
    fn path(&self, plural: &str, name: Option<&str>) -> String {
        let base = format!("/apis/sheaf.io/v1alpha1/namespaces/{}/{plural}", encode(&self.ns));
        match name {
            Some(n) => format!("{base}/{}", encode(n)),
            None => base,
        }
    }
    async fn get(&self, plural: &str, name: &str) -> anyhow::Result<Value> {
        self.client.get_json(&self.path(plural, Some(name))).await
    }
    async fn list(&self, plural: &str) -> anyhow::Result<Vec<Value>> {
        let v = self.client.get_json(&self.path(plural, None)).await?;
        Ok(v.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
    }
    async fn create(&self, plural: &str, body: Value) -> anyhow::Result<Value> {
        let bytes = serde_json::to_vec(&body)?;
        Ok(self
            .client
            .request(Method::POST, &self.path(plural, None), "application/json", Some(("application/json", bytes)))
            .await?
            .body)
    }
    async fn patch(&self, plural: &str, name: &str, patch: Value) -> anyhow::Result<Value> {
        let bytes = serde_json::to_vec(&patch)?;
        let ct = "application/merge-patch+json";
        Ok(self
            .client
            .request(Method::PATCH, &self.path(plural, Some(name)), "application/json", Some((ct, bytes)))
            .await?
            .body)
    }
    async fn delete(&self, plural: &str, name: &str) -> anyhow::Result<()> {
        self.client.request(Method::DELETE, &self.path(plural, Some(name)), "application/json", None).await?;
        Ok(())
    }
    /// Polls `plural/name` until `done` says it is finished (Ok) or failed
    /// (Err); `what` names what we wait for.
    async fn wait(
        &self,
        plural: &str,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> Option<Result<(), String>>,
    ) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let v = self.get(plural, name).await?;
            match done(&v) {
                Some(Ok(())) => return Ok(v),
                Some(Err(e)) => bail!("{e}"),
                None if start.elapsed() > self.timeout => {
                    bail!(
                        "{what} did not happen within {} s (see `kubectl get {plural} {name} -o yaml`)",
                        self.timeout.as_secs()
                    )
                }
                None => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    async fn get_opt(&self, plural: &str, name: &str) -> anyhow::Result<Option<Value>> {
        match self.get(plural, name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if super::client::is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// Asks the server to purge trashed volume `name` now, and waits until
    /// it and its snapshots are gone.
    async fn purge(&self, name: &str) -> anyhow::Result<()> {
        let n = self.snapshots_of(name).await?.len();
        self.patch("volumes", name, json!({"metadata": {"annotations": {PURGE_ANNOTATION: "true"}}})).await?;
        let start = Instant::now();
        while self.get_opt("volumes", name).await?.is_some() {
            if start.elapsed() > self.timeout {
                bail!(
                    "volume {name} is being purged but not gone within {} s (see kubectl get volumesnapshots -l \
                     sheaf.io/volume={name})",
                    self.timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!("volume {name} and its {n} snapshot(s) deleted (the node agents remove its replicas' data)");
        Ok(())
    }
    async fn snapshots_of(&self, volume: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .list("volumesnapshots")
            .await?
            .into_iter()
            .filter(|s| s.pointer("/spec/volumeName").and_then(Value::as_str) == Some(volume))
            .collect())
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn as_volume(v: &Value) -> Option<Volume> {
    serde_json::from_value(v.clone()).ok()
}

/// Whether volume `v` was deleted and waits in the trash.
fn trashed(v: &Value) -> bool {
    as_volume(v).is_some_and(|v| v.trashed())
}

/// When trashed volume `v` is purged, as its status says.
fn purge_time(v: &Value) -> String {
    as_volume(v).and_then(|v| v.purge_at_text()).unwrap_or_else(|| "the retention ends".into())
}

fn volume_body(name: &str, size: &str, replicas: u32, from: Option<&str>, disk_selector: &[String]) -> Value {
    let mut spec = json!({"size": size, "numberOfReplicas": replicas});
    if let Some(f) = from {
        spec["fromSnapshot"] = json!(f);
    }
    if !disk_selector.is_empty() {
        spec["diskSelector"] = json!(disk_selector);
    }
    json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume", "metadata": {"name": name}, "spec": spec})
}

/// Why the Volume controller cannot place the replicas of `v` for lack of
/// a disk (tags, space), if that is the case. A missing Ready node is not
/// reported: nodes come and go, and the command keeps waiting for one.
fn unplaceable(v: &Value) -> Option<String> {
    let conditions = v.pointer("/status/conditions").and_then(Value::as_array)?;
    let c = conditions.iter().find(|c| s(c, "/type") == "ReplicasScheduled")?;
    (s(c, "/status") == "False" && matches!(s(c, "/reason"), "NoDisk" | "NoSpace")).then(|| {
        let name = s(v, "/metadata/name");
        format!(
            "volume {name} was created, but its replicas cannot be placed: {}. It stays without replicas \
             until they can (kubectl get disks shows the nodes' disks); change it with kubectl edit volume {name}, \
             or delete it with sheaf volume delete {name}",
            s(c, "/message")
        )
    })
}

fn settled(v: &Value) -> Option<Result<(), String>> {
    match s(v, "/status/state") {
        "Detached" | "Attached" => Some(Ok(())),
        _ => unplaceable(v).map(Err),
    }
}

pub async fn run(a: VolumeArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.conn)?;
    let ns = a.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    let cx = Ctx { client, ns, timeout: Duration::from_secs(a.timeout) };
    match a.action {
        VolumeAction::Create { name, size, replicas, frontend, disk_selector } => {
            let mut body = volume_body(&name, &size, replicas, None, &disk_selector);
            if let Some(f) = frontend {
                body["spec"]["frontend"] = json!(f);
            }
            cx.create("volumes", body).await?;
            cx.wait("volumes", &name, "the volume's replicas starting", settled).await?;
            println!("volume {name} created ({size}, {replicas} replica(s))");
        }
        VolumeAction::Trash => {
            let mut rows =
                vec![vec!["NAME".to_string(), "SIZE".into(), "DELETED".into(), "PURGED AT".into(), "SNAPSHOTS".into()]];
            let snaps = cx.list("volumesnapshots").await?;
            for v in cx.list("volumes").await?.iter().filter(|v| trashed(v)) {
                let name = s(v, "/metadata/name").to_string();
                let mine: Vec<&str> =
                    snaps.iter().filter(|x| s(x, "/spec/volumeName") == name).map(|x| s(x, "/metadata/name")).collect();
                rows.push(vec![
                    name,
                    s(v, "/spec/size").into(),
                    s(v, "/metadata/deletionTimestamp").into(),
                    purge_time(v),
                    mine.join(","),
                ]);
            }
            if rows.len() == 1 {
                println!("the trash is empty");
            } else {
                print!("{}", super::printer::align(&rows));
            }
        }
        VolumeAction::Purge { volume } => {
            let v = cx.get("volumes", &volume).await.with_context(|| format!("volume {volume}"))?;
            if !trashed(&v) {
                bail!(
                    "volume {volume} is not in the trash; to delete it and its snapshots without the trash, use \
                     sheaf volume delete {volume} --purge"
                );
            }
            cx.purge(&volume).await?;
        }
        VolumeAction::List => {
            let snaps = cx.list("volumesnapshots").await?;
            let mut rows = vec![vec![
                "NAME".to_string(),
                "SIZE".into(),
                "REPLICAS".into(),
                "STATE".into(),
                "ROBUSTNESS".into(),
                "NODE".into(),
                "SNAPSHOTS".into(),
            ]];
            for v in cx.list("volumes").await? {
                let name = s(&v, "/metadata/name").to_string();
                let n = snaps.iter().filter(|x| s(x, "/spec/volumeName") == name).count();
                rows.push(vec![
                    name,
                    s(&v, "/spec/size").into(),
                    v.pointer("/spec/numberOfReplicas").map(|x| x.to_string()).unwrap_or_default(),
                    s(&v, "/status/state").into(),
                    s(&v, "/status/robustness").into(),
                    s(&v, "/status/attachedTo").into(),
                    n.to_string(),
                ]);
            }
            print!("{}", super::printer::align(&rows));
        }
        VolumeAction::Snapshot { volume, snapshot } => {
            let v = cx.get("volumes", &volume).await.with_context(|| format!("volume {volume}"))?;
            if trashed(&v) {
                bail!("volume {volume} was deleted and is in the trash: its data does not change any more");
            }
            let body = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "VolumeSnapshot",
                "metadata": {"name": snapshot, "labels": {"sheaf.io/volume": volume}},
                "spec": {"volumeName": volume}});
            cx.create("volumesnapshots", body).await?;
            cx.wait("volumesnapshots", &snapshot, "the snapshot", |v| {
                if v.pointer("/status/readyToUse") == Some(&json!(true)) {
                    Some(Ok(()))
                } else {
                    v.pointer("/status/error").and_then(Value::as_str).map(|e| Err(e.to_string()))
                }
            })
            .await?;
            println!("snapshot {snapshot} of volume {volume} taken");
        }
        VolumeAction::Snapshots { volume } => {
            let mut rows = vec![vec!["NAME".to_string(), "READY".into(), "SIZE".into(), "CREATED".into()]];
            for x in cx.snapshots_of(&volume).await? {
                rows.push(vec![
                    s(&x, "/metadata/name").into(),
                    x.pointer("/status/readyToUse").map(|b| b.to_string()).unwrap_or_else(|| "false".into()),
                    x.pointer("/status/size").map(|b| b.to_string()).unwrap_or_default(),
                    s(&x, "/status/creationTime").into(),
                ]);
            }
            print!("{}", super::printer::align(&rows));
        }
        VolumeAction::DeleteSnapshot { snapshot } => {
            cx.delete("volumesnapshots", &snapshot).await?;
            let start = Instant::now();
            while cx.get("volumesnapshots", &snapshot).await.is_ok() {
                if start.elapsed() > cx.timeout {
                    bail!("snapshot {snapshot} is still being deleted after {} s", cx.timeout.as_secs());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            println!("snapshot {snapshot} deleted");
        }
        VolumeAction::Revert { volume, snapshot } => {
            let before = cx.get("volumes", &volume).await?;
            let old_time = s(&before, "/status/lastRevert/time").to_string();
            cx.patch("volumes", &volume, json!({"metadata": {"annotations": {"sheaf.io/revert-to": snapshot}}}))
                .await?;
            cx.wait("volumes", &volume, "the revert", |v| {
                let t = s(v, "/status/lastRevert/time");
                if t.is_empty() || t == old_time || s(v, "/status/lastRevert/snapshot") != snapshot {
                    return None;
                }
                match v.pointer("/status/lastRevert/error").and_then(Value::as_str) {
                    Some(e) => Some(Err(format!("cannot revert volume {volume} to {snapshot}: {e}"))),
                    None => Some(Ok(())),
                }
            })
            .await?;
            println!("volume {volume} reverted to snapshot {snapshot}");
        }
        VolumeAction::Clone { snapshot, new_volume, size, replicas, disk_selector } => {
            let snap = cx.get("volumesnapshots", &snapshot).await.with_context(|| format!("snapshot {snapshot}"))?;
            let size = match size {
                Some(s) => s,
                None => snap
                    .pointer("/status/size")
                    .and_then(Value::as_i64)
                    .map(|b| b.to_string())
                    .with_context(|| format!("snapshot {snapshot} is not ready yet"))?,
            };
            cx.create("volumes", volume_body(&new_volume, &size, replicas, Some(&snapshot), &disk_selector)).await?;
            cx.wait("volumes", &new_volume, "the copy of the snapshot", |v| {
                if !s(v, "/status/restoredFrom").is_empty() {
                    return Some(Ok(()));
                }
                unplaceable(v).map(Err)
            })
            .await?;
            println!("volume {new_volume} created from snapshot {snapshot}");
        }
        VolumeAction::Expand { volume, size } => {
            cx.patch("volumes", &volume, json!({"spec": {"size": size}})).await?;
            let want = sheaf_types::quantity::Quantity::parse(&size)
                .ok()
                .and_then(|q| q.value())
                .with_context(|| format!("size {size:?} is not a quantity"))?;
            cx.wait("volumes", &volume, "the expansion", |v| {
                (v.pointer("/status/size").and_then(Value::as_i64) == Some(want)).then_some(Ok(()))
            })
            .await?;
            println!("volume {volume} is now {size}");
        }
        VolumeAction::Delete { volume, purge } => {
            let before = cx.get("volumes", &volume).await.with_context(|| format!("volume {volume}"))?;
            if !trashed(&before) {
                cx.delete("volumes", &volume).await?;
            }
            match cx.get_opt("volumes", &volume).await? {
                Some(v) if trashed(&v) && purge => return cx.purge(&volume).await,
                Some(v) if trashed(&v) => {
                    let v = cx
                        .wait("volumes", &volume, "the trash", |v| {
                            (!s(v, "/status/purgeAt").is_empty()).then_some(Ok(()))
                        })
                        .await
                        .unwrap_or(v);
                    let snaps: Vec<String> =
                        cx.snapshots_of(&volume).await?.iter().map(|x| s(x, "/metadata/name").to_string()).collect();
                    println!(
                        "volume {volume} deleted; it is kept in the trash with its snapshot(s) {} until {}. Clone \
                         one into a new volume with sheaf volume clone SNAPSHOT NEW, or purge it now with sheaf \
                         volume purge {volume}",
                        snaps.join(", "),
                        purge_time(&v)
                    );
                    return Ok(());
                }
                _ => {}
            }
            println!("volume {volume} deleted (the node agents remove its replicas' data)");
        }
    }
    Ok(())
}
