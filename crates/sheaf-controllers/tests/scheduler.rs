//! The scheduler against a real API server: binding, refusals with their
//! reasons, and retries when nodes or room appear.

mod common;

use common::{Cluster, Run};
use serde_json::json;
use sheaf_client::Gvr;
use sheaf_controllers::scheduler::{NODE_NAME_LABEL, VMI_MEMORY_OVERHEAD};
use sheaf_controllers::vm;
use sheaf_types::core::Node;
use sheaf_types::kubevirt::VirtualMachineInstance;
use sheaf_types::meta::Condition;

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
