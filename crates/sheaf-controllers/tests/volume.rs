//! The Volume controller against a real API server, with fake nodes whose
//! Ready condition the tests set and fake agents that report replicas
//! Running: replicas of a node down longer than the stale replica timeout
//! are replaced on a free node, the old one goes once the new one runs,
//! and nothing happens before the timeout or without a free node. Replicas
//! go on the nodes' disks (fake Disk objects) by tag and space, spread over
//! nodes, then disks, with a condition naming what is missing. Also the
//! node lifecycle controller (silent nodes become Unknown) and the API
//! server's refusal to delete a Volume a VM uses, namespace deletion
//! included.

mod common;

use std::time::Duration;

use common::{ago, until, Cluster, Run};
use serde_json::{json, Value};
use sheaf_client::{Api, Gvr, Selectors, Typed};
use sheaf_controllers::vm;
use sheaf_types::core::{Namespace, Node};
use sheaf_types::kubevirt::VirtualMachineInstance;
use sheaf_types::storage::{Disk, Replica, Volume};

async fn storage() -> anyhow::Result<Cluster> {
    Cluster::start(Run::Volume, vm::Config::default()).await
}

async fn create_volume(c: &Cluster, name: &str, spec: Value) -> anyhow::Result<()> {
    let mut body = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume",
        "metadata": {"name": name, "namespace": "default"}, "spec": {"size": "1Gi"}});
    if let (Some(s), Value::Object(extra)) = (body.get_mut("spec").and_then(Value::as_object_mut), spec) {
        s.extend(extra);
    }
    c.api.create(Gvr::of::<Volume>(), Some("default"), body).await?;
    Ok(())
}

/// Every Replica of volume `name`, deleted ones included, by node.
async fn replicas(c: &Cluster, name: &str) -> Vec<Replica> {
    let sel = Selectors { labels: format!("sheaf.io/volume={name}"), fields: String::new() };
    let mut rs = Typed::<Replica>::new(c.api.as_ref()).list(Some("default"), &sel).await.unwrap_or_default();
    rs.sort_by_key(|r| (r.spec.node_name.clone(), r.metadata.creation_timestamp.map(|t| t.0)));
    rs
}

fn nodes_of(rs: &[Replica]) -> Vec<&str> {
    rs.iter().map(|r| r.spec.node_name.as_str()).collect()
}

fn rname(r: &Replica) -> String {
    r.metadata.name.clone().unwrap_or_default()
}

/// Waits for `n` replicas of `volume` on `nodes` and returns them.
async fn placed(c: &Cluster, volume: &str, nodes: &[&str]) -> Vec<Replica> {
    until(&format!("replicas of {volume} on {nodes:?}"), || async {
        let rs = replicas(c, volume).await;
        (nodes_of(&rs) == nodes).then_some(rs)
    })
    .await
}

/// What the replica's node agent reports once its server runs.
async fn report_running(c: &Cluster, r: &Replica) -> anyhow::Result<()> {
    let status = json!({"status": {"state": "Running", "address": format!("unix:/run/{}.sock", rname(r))}});
    Typed::<Replica>::new(c.api.as_ref()).merge_patch(Some("default"), &rname(r), status, true).await?;
    Ok(())
}

/// Sets node `name`'s Ready condition, changed `secs` ago.
async fn set_ready(c: &Cluster, name: &str, status: &str, secs: i64) -> anyhow::Result<()> {
    let condition = json!({"type": "Ready", "status": status, "reason": "Test", "lastTransitionTime": ago(secs)});
    c.api.merge_patch(Gvr::of::<Node>(), None, name, json!({"status": {"conditions": [condition]}}), true).await?;
    Ok(())
}

async fn volume(c: &Cluster, name: &str) -> Volume {
    Typed::<Volume>::new(c.api.as_ref()).get(Some("default"), name).await.ok().flatten().unwrap_or_default()
}

fn scheduled(v: &Volume) -> Option<(String, String)> {
    let cond = v.status.as_ref()?.conditions.iter().find(|c| c.type_ == "ReplicasScheduled")?;
    Some((cond.status.clone(), cond.message.clone().unwrap_or_default()))
}

/// What node `node`'s agent reports of its disk `disk`: tags, available
/// bytes (capacity: twice that), schedulable or not (with a message).
async fn add_disk(
    c: &Cluster,
    node: &str,
    disk: &str,
    tags: &[&str],
    gib: i64,
    schedulable: bool,
) -> anyhow::Result<()> {
    let name = format!("{node}.{disk}");
    let body = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Disk",
        "metadata": {"name": name, "labels": {"sheaf.io/node": node}},
        "spec": {"nodeName": node, "diskName": disk, "path": format!("/srv/{disk}"), "tags": tags}});
    c.api.create(Gvr::of::<Disk>(), None, body).await?;
    let mut status = json!({"schedulable": schedulable, "available": gib << 30, "capacity": (2 * gib) << 30});
    if !schedulable {
        status["message"] = json!(format!("the file system at /srv/{disk} is mounted read-only"));
    }
    c.api.merge_patch(Gvr::of::<Disk>(), None, &name, json!({ "status": status }), true).await?;
    Ok(())
}

/// `node/disk` of each replica (in the order of [`replicas`]).
fn disks_of(rs: &[Replica]) -> Vec<String> {
    rs.iter().map(|r| format!("{}/{}", r.spec.node_name, r.spec.disk_name.as_deref().unwrap_or("-"))).collect()
}

/// Waits until ReplicasScheduled of `volume` has `status`; returns its
/// reason and message.
async fn condition(c: &Cluster, volume: &str, status: &str) -> (String, String) {
    until(&format!("ReplicasScheduled {status} on {volume}"), || async {
        let v = Typed::<Volume>::new(c.api.as_ref()).get(Some("default"), volume).await.ok().flatten()?;
        let cond = v.status?.conditions.into_iter().find(|c| c.type_ == "ReplicasScheduled" && c.status == status)?;
        Some((cond.reason.unwrap_or_default(), cond.message.unwrap_or_default()))
    })
    .await
}

/// Three Ready nodes and volume `data` with two Running replicas, on n1
/// and n2.
async fn two_replicas_on_three_nodes() -> anyhow::Result<(Cluster, Vec<Replica>)> {
    let c = storage().await?;
    for n in ["n1", "n2", "n3"] {
        c.add_node(n, "4", "8Gi", true).await?;
    }
    create_volume(&c, "data", json!({"numberOfReplicas": 2})).await?;
    let rs = placed(&c, "data", &["n1", "n2"]).await;
    for r in &rs {
        report_running(&c, r).await?;
    }
    Ok((c, rs))
}

/// Checks for `period` that volume `data` keeps exactly the replicas
/// `names`, none being deleted.
async fn keeps(c: &Cluster, names: &[String], period: Duration) {
    let end = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < end {
        let rs = replicas(c, "data").await;
        let now: Vec<String> = rs.iter().map(rname).collect();
        assert_eq!(now, names, "replicas changed: {rs:#?}");
        assert!(rs.iter().all(|r| r.metadata.deletion_timestamp.is_none()), "a replica is being deleted: {rs:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_a_node_down_too_long_is_replaced_then_removed() -> anyhow::Result<()> {
    let (c, rs) = two_replicas_on_three_nodes().await?;
    let (first, old) = (rname(&rs[0]), rname(&rs[1]));

    // n2 has been NotReady for 11 minutes (the default timeout is 10).
    set_ready(&c, "n2", "False", 11 * 60).await?;
    let rs = placed(&c, "data", &["n1", "n2", "n3"]).await;
    let new = rname(&rs[2]);
    let event = c.wait_event("data", "ReplacingReplica", 1).await;
    let message = event.message.unwrap_or_default();
    assert!(message.contains(&old) && message.contains("n2") && message.contains(&new), "{message}");
    // The old one stays while the new one does not run yet.
    keeps(&c, &[first.clone(), old.clone(), new.clone()], Duration::from_millis(500)).await;

    // The new one runs: the old one is deleted. Its finalizer stays, since
    // only its node's agent can remove the data and the node may return.
    report_running(&c, &rs[2]).await?;
    until("the stale replica deleted", || async {
        replicas(&c, "data").await.iter().find(|r| rname(r) == old).and_then(|r| r.metadata.deletion_timestamp)
    })
    .await;
    c.wait_event("data", "StaleReplicaRemoved", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(replicas(&c, "data").await.iter().any(|r| rname(r) == old), "the finalizer was removed too early");

    // The node is deleted for good: its replica is released.
    c.api.delete(Gvr::of::<Node>(), None, "n2").await?;
    let rs = placed(&c, "data", &["n1", "n3"]).await;
    assert_eq!(rs.iter().map(rname).collect::<Vec<_>>(), [first, new]);
    let event = c.wait_event("data", "ReplicaDataAbandoned", 1).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(scheduled(&volume(&c, "data").await).map(|s| s.0).as_deref(), Some("True"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_for_less_than_the_timeout_keeps_its_replicas() -> anyhow::Result<()> {
    let (c, rs) = two_replicas_on_three_nodes().await?;
    let names: Vec<String> = rs.iter().map(rname).collect();
    set_ready(&c, "n2", "False", 120).await?;
    keeps(&c, &names, Duration::from_secs(1)).await;

    // A volume that says 1m: two minutes is too long.
    let patch = json!({"spec": {"staleReplicaTimeout": "1m"}});
    Typed::<Volume>::new(c.api.as_ref()).merge_patch(Some("default"), "data", patch, false).await?;
    placed(&c, "data", &["n1", "n2", "n3"]).await;

    // A timeout shorter than a minute is refused, saying why.
    let patch = json!({"spec": {"staleReplicaTimeout": "10s"}});
    let e = Typed::<Volume>::new(c.api.as_ref())
        .merge_patch(Some("default"), "data", patch, false)
        .await
        .expect_err("10s is too short");
    assert!(e.message.contains("spec.staleReplicaTimeout") && e.message.contains("at least 1m"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_free_ready_node_a_condition_says_so() -> anyhow::Result<()> {
    let c = storage().await?;
    for n in ["n1", "n2"] {
        c.add_node(n, "4", "8Gi", true).await?;
    }
    create_volume(&c, "data", json!({"numberOfReplicas": 2})).await?;
    let rs = placed(&c, "data", &["n1", "n2"]).await;
    for r in &rs {
        report_running(&c, r).await?;
    }
    let old = rname(&rs[1]);
    set_ready(&c, "n2", "Unknown", 11 * 60).await?;
    let (status, message) = until("ReplicasScheduled False", || async {
        scheduled(&volume(&c, "data").await).filter(|(s, _)| s == "False")
    })
    .await;
    assert_eq!(status, "False");
    assert!(
        message.contains(&format!("replica {old} on node n2 (not Ready since"))
            && message.contains("cannot be replaced: no other Ready node is free of this volume's replicas"),
        "{message}"
    );
    // Never a second copy on n1; the stale one stays.
    keeps(&c, &rs.iter().map(rname).collect::<Vec<_>>(), Duration::from_millis(500)).await;

    // A node joins: the replica moves there.
    c.add_node("n3", "4", "8Gi", true).await?;
    let rs = placed(&c, "data", &["n1", "n2", "n3"]).await;
    report_running(&c, &rs[2]).await?;
    until("the stale replica deleted", || async {
        replicas(&c, "data").await.iter().find(|r| rname(r) == old).and_then(|r| r.metadata.deletion_timestamp)
    })
    .await;
    until("ReplicasScheduled True", || async { scheduled(&volume(&c, "data").await).filter(|(s, _)| s == "True") })
        .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_on_the_node_the_volume_is_attached_to_stays_while_the_node_exists() -> anyhow::Result<()> {
    let (c, rs) = two_replicas_on_three_nodes().await?;
    let old = rname(&rs[1]);
    // The agent of n2 runs the engine (the VM is there).
    let status = json!({"status": {"state": "Attached", "attachedTo": "n2"}});
    Typed::<Volume>::new(c.api.as_ref()).merge_patch(Some("default"), "data", status, true).await?;
    set_ready(&c, "n2", "False", 11 * 60).await?;
    let rs = placed(&c, "data", &["n1", "n2", "n3"]).await;
    report_running(&c, &rs[2]).await?;
    keeps(&c, &rs.iter().map(rname).collect::<Vec<_>>(), Duration::from_millis(500)).await;

    c.api.delete(Gvr::of::<Node>(), None, "n2").await?;
    placed(&c, "data", &["n1", "n3"]).await;
    assert!(replicas(&c, "data").await.iter().all(|r| rname(r) != old));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_becomes_unknown() -> anyhow::Result<()> {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await?;
    let lifecycle = sheaf_controllers::node::Config { grace: Duration::from_millis(500) };
    let task = tokio::spawn(sheaf_controllers::node::run(c.api.clone(), lifecycle));
    c.add_node("silent", "4", "8Gi", true).await?;
    c.add_node("manual", "4", "8Gi", true).await?;
    let condition = json!({"type": "Ready", "status": "True", "reason": "AgentReady",
        "lastHeartbeatTime": ago(120), "lastTransitionTime": ago(3600)});
    c.api.merge_patch(Gvr::of::<Node>(), None, "silent", json!({"status": {"conditions": [condition]}}), true).await?;

    let ready = until("node silent Unknown", || async {
        let n = Typed::<Node>::new(c.api.as_ref()).get(None, "silent").await.ok().flatten()?;
        n.status?.conditions.into_iter().find(|c| c.type_ == "Ready" && c.status == "Unknown")
    })
    .await;
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert!(ready.message.unwrap_or_default().contains("stopped posting its status"));
    let changed = ready.last_transition_time.map(|t| t.0).unwrap_or_default();
    assert!(chrono::Utc::now() - changed < chrono::TimeDelta::seconds(30), "lastTransitionTime {changed}");
    assert!(ready.last_heartbeat_time.is_some(), "the last heartbeat is kept");

    // A node without heartbeats (made by hand) is left alone.
    let n = Typed::<Node>::new(c.api.as_ref()).get(None, "manual").await?.unwrap_or_default();
    assert!(sheaf_controllers::scheduler::node_ready(&n));
    task.abort();
    Ok(())
}

// ------------------------------------------------- deletion protection

fn vmi_manifest(ns: &str, name: &str, claim: &str, finalizers: &[&str]) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": ns, "finalizers": finalizers},
        "spec": {
            "domain": {
                "devices": {"disks": [{"name": "data", "disk": {"bus": "virtio"}}]},
                "resources": {"requests": {"memory": "128Mi"}}
            },
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
        }
    })
}

fn volume_manifest(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume",
        "metadata": {"name": name, "namespace": ns}, "spec": {"size": "1Gi", "numberOfReplicas": 1}})
}

async fn exists(api: &dyn Api, r: Gvr, ns: Option<&str>, name: &str) -> Option<Value> {
    api.get(r, ns, name).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_in_use_cannot_be_deleted() -> anyhow::Result<()> {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await?;
    let (vols, vmis) = (Gvr::of::<Volume>(), Gvr::of::<VirtualMachineInstance>());
    c.api.create(vols, Some("default"), volume_manifest("default", "data")).await?;
    let vmi = c.api.create(vmis, Some("default"), vmi_manifest("default", "web", "data", &[])).await?;
    let vmi_uid = vmi.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();

    // Named by a VMI that has not finished: refused, saying what to do.
    let e = c.api.delete(vols, Some("default"), "data").await.expect_err("in use");
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        e.message,
        "volume data is in use by VirtualMachineInstance web: stop or delete the virtual machine first \
         (kubectl delete vmi web), then delete the volume; nothing was deleted"
    );
    assert!(exists(c.api.as_ref(), vols, Some("default"), "data").await.is_some());

    // Finished, but its engine still runs (the agent says Attached): refused.
    c.agent_reports("web", json!({"phase": "Succeeded"})).await?;
    let status = json!({"status": {"state": "Attached", "attachedTo": "node1", "attachedVmi": vmi_uid}});
    Typed::<Volume>::new(c.api.as_ref()).merge_patch(Some("default"), "data", status, true).await?;
    let e = c.api.delete(vols, Some("default"), "data").await.expect_err("attached");
    assert!(e.message.contains("in use by VirtualMachineInstance web"), "{e}");

    // Detached: it goes.
    let status = json!({"status": {"state": "Detached", "attachedTo": null, "attachedVmi": null}});
    Typed::<Volume>::new(c.api.as_ref()).merge_patch(Some("default"), "data", status, true).await?;
    c.api.delete(vols, Some("default"), "data").await?;
    assert!(exists(c.api.as_ref(), vols, Some("default"), "data").await.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_removes_the_vms_first_then_their_volumes() -> anyhow::Result<()> {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await?;
    let api = c.api.as_ref();
    let (vols, vmis, reps) = (Gvr::of::<Volume>(), Gvr::of::<VirtualMachineInstance>(), Gvr::of::<Replica>());
    let ns = Some("team");
    api.create(
        Gvr::of::<Namespace>(),
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .await?;
    let vol = api.create(vols, ns, volume_manifest("team", "data")).await?;
    let uid = vol.pointer("/metadata/uid").cloned().unwrap_or_default();
    // A replica owned by the volume, as the Volume controller makes them
    // (without the data finalizer: no agent runs here).
    let replica = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Replica",
        "metadata": {"name": "data-r-1", "namespace": "team", "labels": {"sheaf.io/volume": "data"},
            "ownerReferences": [{"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume", "name": "data", "uid": uid,
                "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"volumeName": "data", "nodeName": "node1"}});
    api.create(reps, ns, replica).await?;
    // The VMI's guest shuts down when its agent says so (its finalizer).
    api.create(vmis, ns, vmi_manifest("team", "web", "data", &["example.com/guest-running"])).await?;

    api.delete(Gvr::of::<Namespace>(), None, "team").await?;
    until("the VMI being deleted", || async {
        exists(api, vmis, ns, "web").await?.pointer("/metadata/deletionTimestamp").cloned()
    })
    .await;
    // The garbage collector leaves the volume (and its replica) alone while
    // the VMI is there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let vol = exists(api, vols, ns, "data").await.expect("the volume stays while the VMI exists");
    assert!(vol.pointer("/metadata/deletionTimestamp").is_none(), "{vol}");
    assert!(exists(api, reps, ns, "data-r-1").await.is_some());

    // The guest is gone: the volume, its replica and the namespace follow.
    let patch = json!({"metadata": {"finalizers": null}});
    api.merge_patch(vmis, ns, "web", patch, false).await?;
    until("the namespace gone", || async {
        exists(api, Gvr::of::<Namespace>(), None, "team").await.is_none().then_some(())
    })
    .await;
    assert!(exists(api, vols, ns, "data").await.is_none());
    assert!(exists(api, reps, ns, "data-r-1").await.is_none());
    Ok(())
}

// ------------------------------------------------------------- disks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_go_on_disks_by_tag_and_space_spread_over_nodes_then_disks() -> anyhow::Result<()> {
    let c = storage().await?;
    for n in ["n1", "n2", "n3"] {
        c.add_node(n, "4", "8Gi", true).await?;
    }
    add_disk(&c, "n1", "default", &[], 100, true).await?;
    add_disk(&c, "n1", "nvme", &["ssd", "fast"], 50, true).await?;
    add_disk(&c, "n2", "default", &[], 100, true).await?;
    add_disk(&c, "n2", "sata", &["ssd"], 20, true).await?;
    add_disk(&c, "n3", "small", &["ssd"], 5, true).await?;

    // Tagged ssd, 10Gi: n3's ssd disk has 5Gi only; two replicas go on
    // n1 and n2, on their ssd disks.
    create_volume(&c, "fast", json!({"size": "10Gi", "numberOfReplicas": 2, "diskSelector": ["ssd"]})).await?;
    let rs = placed(&c, "fast", &["n1", "n2"]).await;
    assert_eq!(disks_of(&rs), ["n1/nvme", "n2/sata"]);
    // Both tags: only n1's nvme. Three replicas share it, as a single
    // node's replicas do.
    create_volume(&c, "faster", json!({"size": "10Gi", "numberOfReplicas": 3, "diskSelector": ["ssd", "fast"]}))
        .await?;
    let rs = placed(&c, "faster", &["n1", "n1", "n1"]).await;
    assert_eq!(disks_of(&rs), ["n1/nvme", "n1/nvme", "n1/nvme"]);
    condition(&c, "faster", "True").await;

    // No selector, five replicas: every node first (the disk with most
    // space of each), then the other disks of n1 and n2.
    create_volume(&c, "any", json!({"size": "1Gi", "numberOfReplicas": 5})).await?;
    let rs = placed(&c, "any", &["n1", "n1", "n2", "n2", "n3"]).await;
    let mut got = disks_of(&rs);
    got.sort();
    assert_eq!(got, ["n1/default", "n1/nvme", "n2/default", "n2/sata", "n3/small"]);

    // A node that reports no disks keeps its replicas in its replica root
    // (no diskName); a disk selector never picks it.
    c.add_node("old", "4", "8Gi", true).await?;
    create_volume(&c, "legacy", json!({"size": "1Gi", "numberOfReplicas": 4})).await?;
    let rs = placed(&c, "legacy", &["n1", "n2", "n3", "old"]).await;
    assert_eq!(rs[3].spec.disk_name, None);
    let out = c.api.get(Gvr::of::<Replica>(), Some("default"), &rname(&rs[3])).await?.unwrap_or_default();
    assert!(out.pointer("/spec/diskName").is_none(), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fitting_disk_the_condition_says_what_is_missing() -> anyhow::Result<()> {
    let c = storage().await?;
    c.add_node("n1", "4", "8Gi", true).await?;
    add_disk(&c, "n1", "default", &[], 100, true).await?;
    add_disk(&c, "n1", "ro", &["archive"], 100, false).await?;

    // No disk with the tag.
    create_volume(&c, "tagged", json!({"size": "10Gi", "numberOfReplicas": 1, "diskSelector": ["ssd"]})).await?;
    let (reason, message) = condition(&c, "tagged", "False").await;
    assert_eq!(reason, "NoDisk");
    assert!(
        message.starts_with("no disk with tags [ssd] on a Ready node: ")
            && message.contains("sheaf server --disk NAME=PATH,tags=ssd"),
        "{message}"
    );
    // A disk with the tag that cannot take replicas: why.
    create_volume(&c, "cold", json!({"size": "10Gi", "numberOfReplicas": 1, "diskSelector": ["archive"]})).await?;
    let (reason, message) = condition(&c, "cold", "False").await;
    assert_eq!(reason, "NoDisk");
    assert!(
        message.contains("no schedulable disk with tags [archive] on a Ready node")
            && message.contains("disk ro of node n1: the file system at /srv/ro is mounted read-only"),
        "{message}"
    );
    // Too big for every disk: the size asked and the most there is.
    create_volume(&c, "huge", json!({"size": "200Gi", "numberOfReplicas": 1})).await?;
    let (reason, message) = condition(&c, "huge", "False").await;
    assert_eq!(reason, "NoSpace");
    assert!(
        message
            .starts_with("no disk with 200Gi available on a Ready node (the most is 100Gi on disk default of node n1)"),
        "{message}"
    );
    assert!(replicas(&c, "tagged").await.is_empty() && replicas(&c, "huge").await.is_empty());

    // A node gets an ssd disk: the replica goes there.
    c.add_node("n2", "4", "8Gi", true).await?;
    add_disk(&c, "n2", "fast", &["ssd"], 50, true).await?;
    let rs = placed(&c, "tagged", &["n2"]).await;
    assert_eq!(disks_of(&rs), ["n2/fast"]);
    let (reason, _) = condition(&c, "tagged", "True").await;
    assert_eq!(reason, "Scheduled");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_is_replaced_only_on_a_disk_with_the_tags() -> anyhow::Result<()> {
    let c = storage().await?;
    for n in ["n1", "n2", "n3"] {
        c.add_node(n, "4", "8Gi", true).await?;
        add_disk(&c, n, "default", &[], 100, true).await?;
    }
    add_disk(&c, "n1", "fast", &["ssd"], 50, true).await?;
    add_disk(&c, "n2", "fast", &["ssd"], 50, true).await?;
    create_volume(&c, "data", json!({"numberOfReplicas": 2, "diskSelector": ["ssd"]})).await?;
    let rs = placed(&c, "data", &["n1", "n2"]).await;
    assert_eq!(disks_of(&rs), ["n1/fast", "n2/fast"]);
    for r in &rs {
        report_running(&c, r).await?;
    }
    // n2 is down too long; n3 is free but has no ssd disk.
    set_ready(&c, "n2", "False", 11 * 60).await?;
    let (reason, message) = condition(&c, "data", "False").await;
    assert_eq!(reason, "NoDisk");
    assert!(
        message.contains(&format!("replica {} on node n2", rname(&rs[1])))
            && message.contains(
                "cannot be replaced: no other Ready node free of this volume's replicas has a disk with tags [ssd]"
            ),
        "{message}"
    );
    keeps(&c, &rs.iter().map(rname).collect::<Vec<_>>(), Duration::from_millis(300)).await;
    // n3 gets one: the replacement goes there.
    add_disk(&c, "n3", "fast", &["ssd"], 50, true).await?;
    let rs = placed(&c, "data", &["n1", "n2", "n3"]).await;
    assert_eq!(disks_of(&rs)[2], "n3/fast");
    Ok(())
}
