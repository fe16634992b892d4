//! The scheduler against a real API server: binding, refusals with their
//! reasons, and retries when nodes or room appear; node affinity, VM
//! anti-affinity and storage locality.

mod common;

use common::{Cluster, Run};
use serde_json::{json, Value};
use sheaf_client::Gvr;
use sheaf_controllers::scheduler::{NODE_NAME_LABEL, VMI_MEMORY_OVERHEAD};
use sheaf_controllers::vm;
use sheaf_types::core::Node;
use sheaf_types::kubevirt::VirtualMachineInstance;
use sheaf_types::meta::Condition;
use sheaf_types::storage::{Replica, Volume};

fn node_of(v: Option<&VirtualMachineInstance>) -> Option<&str> {
    v?.status.as_ref()?.node_name.as_deref()
}

fn pod_scheduled(v: &VirtualMachineInstance) -> Option<&Condition> {
    v.status.as_ref()?.conditions.iter().find(|c| c.type_ == "PodScheduled")
}

fn unschedulable_message(v: Option<&VirtualMachineInstance>) -> Option<&str> {
    let c = pod_scheduled(v?)?;
    (c.status == "False" && c.reason.as_deref() == Some("Unschedulable")).then_some(c.message.as_deref()?)
}

async fn scheduler() -> anyhow::Result<Cluster> {
    Cluster::start(Run::Scheduler, vm::Config::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_to_a_ready_schedulable_node_with_room() -> anyhow::Result<()> {
    let c = scheduler().await?;
    c.add_node("not-ready", "16", "64Gi", false).await?;
    c.add_node_with("cordoned", "16", "64Gi", true, json!({}), json!({"unschedulable": true})).await?;
    c.add_node_with(
        "tainted",
        "16",
        "64Gi",
        true,
        json!({}),
        json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await?;
    c.add_node("small", "2", "1Gi", true).await?;
    c.add_node("fits", "4", "4Gi", true).await?;

    c.create_vmi("web", "2Gi", json!({})).await?;
    let vmi = c.wait_vmi("web", "bound", |v| node_of(v).is_some()).await;
    let vmi = vmi.unwrap_or_default();
    assert_eq!(node_of(Some(&vmi)), Some("fits"));
    assert_eq!(common::vmi_phase(&vmi), "Scheduled");
    assert_eq!(pod_scheduled(&vmi).map(|c| c.status.as_str()), Some("True"));
    let labelled = c
        .wait_vmi("web", "labelled with its node", |v| {
            v.is_some_and(|v| v.metadata.labels.get(NODE_NAME_LABEL).map(String::as_str) == Some("fits"))
        })
        .await;
    assert!(labelled.is_some());
    let event = c.wait_event("web", "Scheduled", 1).await;
    assert_eq!(event.message.as_deref(), Some("Successfully assigned default/web to fits"));

    // A VMI that tolerates the taint may go there (the least loaded node).
    let toleration =
        json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]});
    c.create_vmi("gpu", "2Gi", toleration).await?;
    let vmi = c.wait_vmi("gpu", "bound", |v| node_of(v).is_some()).await;
    assert_eq!(node_of(vmi.as_ref()), Some("tainted"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_of_memory_until_a_bigger_node_registers() -> anyhow::Result<()> {
    let c = scheduler().await?;
    c.add_node("small", "2", "2Gi", true).await?;
    c.create_vmi("big", "64Gi", json!({})).await?;
    let vmi = c.wait_vmi("big", "unschedulable", |v| unschedulable_message(v).is_some()).await;
    let wants = sheaf_controllers::scheduler::Bytes((64 << 30) + VMI_MEMORY_OVERHEAD.0);
    assert_eq!(
        unschedulable_message(vmi.as_ref()),
        Some(format!("0/1 nodes are available: 1 Insufficient memory (wants {wants}, 2Gi free).").as_str())
    );
    assert_eq!(vmi.as_ref().map(common::vmi_phase), Some("Pending"));
    let event = c.wait_event("big", "FailedScheduling", 1).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    c.add_node("large", "8", "128Gi", true).await?;
    let vmi = c.wait_vmi("big", "bound once a node has room", |v| node_of(v).is_some()).await;
    assert_eq!(node_of(vmi.as_ref()), Some("large"));
    assert_eq!(vmi.as_ref().and_then(pod_scheduled).map(|c| c.status.as_str()), Some("True"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selector_must_match_until_the_node_is_labelled() -> anyhow::Result<()> {
    let c = scheduler().await?;
    c.add_node("n1", "4", "8Gi", true).await?;
    c.create_vmi("picky", "1Gi", json!({"nodeSelector": {"disk": "ssd"}})).await?;
    let vmi = c.wait_vmi("picky", "unschedulable", |v| unschedulable_message(v).is_some()).await;
    assert_eq!(
        unschedulable_message(vmi.as_ref()),
        Some("0/1 nodes are available: 1 node(s) didn't match the VMI's nodeSelector (disk=ssd).")
    );
    c.api.merge_patch(Gvr::of::<Node>(), None, "n1", json!({"metadata": {"labels": {"disk": "ssd"}}}), false).await?;
    let vmi = c.wait_vmi("picky", "bound", |v| node_of(v).is_some()).await;
    assert_eq!(node_of(vmi.as_ref()), Some("n1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_vmi_makes_room() -> anyhow::Result<()> {
    let c = scheduler().await?;
    c.add_node("n1", "4", "2Gi", true).await?;
    c.create_vmi("first", "1536Mi", json!({})).await?;
    c.wait_vmi("first", "bound", |v| node_of(v).is_some()).await;
    c.create_vmi("second", "1536Mi", json!({})).await?;
    let vmi = c.wait_vmi("second", "unschedulable", |v| unschedulable_message(v).is_some()).await;
    assert!(unschedulable_message(vmi.as_ref()).is_some_and(|m| m.contains("1 Insufficient memory")), "{vmi:?}");

    c.agent_reports("first", json!({"phase": "Failed"})).await?;
    let vmi = c.wait_vmi("second", "bound", |v| node_of(v).is_some()).await;
    assert_eq!(node_of(vmi.as_ref()), Some("n1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_shows_error_unschedulable_until_it_can_start() -> anyhow::Result<()> {
    let c = Cluster::start(Run::Both, vm::Config::default()).await?;
    c.create_vm("huge", json!({"runStrategy": "Always", "template": {"spec": common::template_spec("64Gi")}})).await?;
    let vm = c.wait_printable("huge", "ErrorUnschedulable").await;
    let cond = vm.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "PodScheduled"));
    assert_eq!(cond.and_then(|c| c.reason.as_deref()), Some("Unschedulable"));
    assert!(cond.and_then(|c| c.message.as_deref()).is_some_and(|m| m.starts_with("0/0 nodes are available")));

    c.add_node("large", "8", "128Gi", true).await?;
    c.wait_vmi("huge", "bound", |v| node_of(v) == Some("large")).await;
    c.wait_printable("huge", "Starting").await;
    Ok(())
}

// ------------------------------------------------------------ placement

/// Registers a Ready 4-CPU 8Gi node labelled with its hostname and `labels`.
async fn add_labelled_node(c: &Cluster, name: &str, labels: Value) -> anyhow::Result<()> {
    let mut all = json!({"kubernetes.io/hostname": name});
    if let (Some(m), Value::Object(extra)) = (all.as_object_mut(), labels) {
        m.extend(extra);
    }
    c.add_node_with(name, "4", "8Gi", true, all, json!({})).await
}

async fn bound_to(c: &Cluster, name: &str) -> Option<String> {
    let vmi = c.wait_vmi(name, "bound", |v| node_of(v).is_some()).await;
    node_of(vmi.as_ref()).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_node_affinity_picks_the_matching_node() -> anyhow::Result<()> {
    let c = scheduler().await?;
    add_labelled_node(&c, "a", json!({"zone": "west"})).await?;
    add_labelled_node(&c, "b", json!({"zone": "east", "cores": "16"})).await?;
    let affinity = |terms: Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": terms}}}})
    };
    let east = json!([{"matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["east", "north"]},
        {"key": "cores", "operator": "Gt", "values": ["8"]}]}]);
    c.create_vmi("east", "1Gi", affinity(east)).await?;
    assert_eq!(bound_to(&c, "east").await.as_deref(), Some("b"));

    // Nothing matches: unschedulable, named per node, until a node does.
    let north = json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["north"]}]}]);
    c.create_vmi("north", "1Gi", affinity(north)).await?;
    let vmi = c.wait_vmi("north", "unschedulable", |v| unschedulable_message(v).is_some()).await;
    assert_eq!(
        unschedulable_message(vmi.as_ref()),
        Some("0/2 nodes are available: 2 node(s) didn't match node affinity.")
    );
    add_labelled_node(&c, "c", json!({"zone": "north"})).await?;
    assert_eq!(bound_to(&c, "north").await.as_deref(), Some("c"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_node_affinity_wins_over_the_name_order() -> anyhow::Result<()> {
    let c = scheduler().await?;
    add_labelled_node(&c, "a", json!({})).await?;
    add_labelled_node(&c, "b", json!({"disk": "ssd"})).await?;
    let prefer = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 80, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}});
    c.create_vmi("fast", "1Gi", prefer).await?;
    assert_eq!(bound_to(&c, "fast").await.as_deref(), Some("b"));
    // Without the preference, equal nodes go by name.
    c.create_vmi("plain", "1Gi", json!({})).await?;
    assert_eq!(bound_to(&c, "plain").await.as_deref(), Some("a"));
    Ok(())
}

fn web_anti_affinity() -> Value {
    json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}})
}

/// Creates a VMI labelled `app: web` that keeps away from the others.
async fn create_web(c: &Cluster, name: &str) -> anyhow::Result<()> {
    let mut spec = common::template_spec("1Gi");
    if let (Some(s), Value::Object(extra)) = (spec.as_object_mut(), web_anti_affinity()) {
        s.extend(extra);
    }
    let body = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": spec,
    });
    c.api.create(Gvr::of::<VirtualMachineInstance>(), Some("default"), body).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_spreads_a_group_and_refuses_a_third() -> anyhow::Result<()> {
    let c = scheduler().await?;
    add_labelled_node(&c, "a", json!({})).await?;
    add_labelled_node(&c, "b", json!({})).await?;
    // Back to back: the second is placed before lists may show the first.
    create_web(&c, "web1").await?;
    create_web(&c, "web2").await?;
    let web1 = bound_to(&c, "web1").await;
    let web2 = bound_to(&c, "web2").await;
    let mut nodes = vec![web1.clone(), web2];
    nodes.sort();
    assert_eq!(nodes, [Some("a".to_string()), Some("b".to_string())]);

    create_web(&c, "web3").await?;
    let vmi = c.wait_vmi("web3", "unschedulable", |v| unschedulable_message(v).is_some()).await;
    assert_eq!(
        unschedulable_message(vmi.as_ref()),
        Some("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.")
    );
    let event = c.wait_event("web3", "FailedScheduling", 1).await;
    assert!(event.message.unwrap_or_default().contains("pod anti-affinity"));

    // A VMI of the group that finishes frees its node for another.
    c.agent_reports("web1", json!({"phase": "Succeeded"})).await?;
    assert_eq!(bound_to(&c, "web3").await, web1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_chooses_the_node_of_a_running_replica() -> anyhow::Result<()> {
    let c = scheduler().await?;
    for name in ["a", "b", "c"] {
        add_labelled_node(&c, name, json!({})).await?;
    }
    let volume = c
        .api
        .create(
            Gvr::of::<Volume>(),
            Some("default"),
            json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume",
                   "metadata": {"name": "data", "namespace": "default"}, "spec": {"size": "1Gi"}}),
        )
        .await?;
    let uid = volume["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    // A Running replica on b, a failed one on a.
    for (node, state) in [("b", "Running"), ("a", "Failed")] {
        let replica = c
            .api
            .create(
                Gvr::of::<Replica>(),
                Some("default"),
                json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Replica",
                    "metadata": {"name": format!("data-{node}"), "namespace": "default",
                                 "labels": {"sheaf.io/volume": "data"},
                                 "ownerReferences": [{"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume",
                                                      "name": "data", "uid": uid, "controller": true}]},
                    "spec": {"volumeName": "data", "nodeName": node}}),
            )
            .await?;
        let mut replica = replica;
        replica["status"] = json!({"state": state});
        c.api.update_status(Gvr::of::<Replica>(), Some("default"), replica).await?;
    }
    let spec = json!({
        "domain": {
            "devices": {"disks": [{"name": "data", "disk": {"bus": "virtio"}}]},
            "resources": {"requests": {"memory": "1Gi"}}
        },
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    });
    c.create_vmi("db", "1Gi", spec).await?;
    assert_eq!(bound_to(&c, "db").await.as_deref(), Some("b"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_vm_affinity_waits_for_its_peer_and_joins_it() -> anyhow::Result<()> {
    let c = scheduler().await?;
    add_labelled_node(&c, "a", json!({"zone": "east"})).await?;
    add_labelled_node(&c, "b", json!({"zone": "west"})).await?;
    let near_db = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}});
    c.create_vmi("web", "1Gi", near_db).await?;
    let vmi = c.wait_vmi("web", "unschedulable", |v| unschedulable_message(v).is_some()).await;
    assert_eq!(
        unschedulable_message(vmi.as_ref()),
        Some("0/2 nodes are available: 2 node(s) didn't match pod affinity rules.")
    );
    // The db goes west, to b, and web follows it there.
    let west = json!({"nodeSelector": {"zone": "west"}});
    c.create_vmi("db", "1Gi", west).await?;
    c.patch_metadata(Gvr::of::<VirtualMachineInstance>(), "db", json!({"labels": {"app": "db"}})).await?;
    assert_eq!(bound_to(&c, "db").await.as_deref(), Some("b"));
    assert_eq!(bound_to(&c, "web").await.as_deref(), Some("b"));
    Ok(())
}
