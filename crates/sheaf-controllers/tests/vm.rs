//! The VirtualMachine controller against a real API server: run strategies
//! end to end, start/stop/restart requests, crash-loop backoff, printable
//! statuses, events and deletion. The tests play the node agent by writing
//! VMI statuses.

mod common;

use std::time::Duration;

use common::{printable, ran_for, uid, vmi_phase, Cluster, Run};
use serde_json::json;
use sheaf_client::Gvr;
use sheaf_controllers::vm::{self, GENERATION_ANNOTATION};
use sheaf_types::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineStatus};
use sheaf_types::meta::OwnerReference;

fn status(vm: &VirtualMachine) -> VirtualMachineStatus {
    vm.status.clone().unwrap_or_default()
}

fn condition<'a>(vm: &'a VirtualMachine, type_: &str) -> Option<&'a sheaf_types::meta::Condition> {
    vm.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

async fn start() -> anyhow::Result<Cluster> {
    Cluster::start(Run::VmController, vm::Config::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_creates_the_vmi_from_the_template_and_restarts_it() -> anyhow::Result<()> {
    let c = start().await?;
    let vm = c.create_vm("always", json!({"runStrategy": "Always"})).await?;
    let vmi = c.vmi_exists("always").await;

    assert_eq!(
        vmi.metadata.owner_references,
        vec![OwnerReference {
            api_version: "kubevirt.io/v1".into(),
            kind: "VirtualMachine".into(),
            name: "always".into(),
            uid: uid(&vm),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    );
    assert_eq!(vmi.metadata.labels.get("kubevirt.io/domain").map(String::as_str), Some("always"));
    assert_eq!(vmi.metadata.annotations.get("example.com/note").map(String::as_str), Some("from the template"));
    assert_eq!(vmi.metadata.annotations.get(GENERATION_ANNOTATION).map(String::as_str), Some("1"));
    let mut spec = vmi.spec.clone();
    let firmware_uuid = spec.domain.firmware.take().and_then(|f| f.uuid);
    assert_eq!(spec, vm.spec.template.spec, "the VMI runs the template");
    assert!(firmware_uuid.is_some(), "a stable firmware UUID is set");

    let vm = c.wait_printable("always", "Starting").await;
    let st = status(&vm);
    assert_eq!(st.created, Some(true));
    assert_eq!(st.ready, None);
    assert_eq!(st.run_strategy.as_deref(), Some("Always"));
    assert_eq!((st.observed_generation, st.desired_generation), (Some(1), Some(1)));
    assert_eq!(condition(&vm, "Ready").and_then(|c| c.reason.as_deref()), Some("VMIConditionMissing"));
    assert_eq!(condition(&vm, "Initialized").map(|c| c.status.as_str()), Some("True"));

    // The guest shuts down after a while: Always starts it again.
    c.agent_reports("always", ran_for(120, "Succeeded")).await?;
    let second = c.vmi_replaced("always", &uid(&vmi)).await;
    assert_eq!(second.spec.domain.firmware, vmi.spec.domain.firmware, "same firmware UUID on every start");
    // QEMU dies after running for minutes: restarted at once, not a crash loop.
    c.agent_reports("always", ran_for(120, "Failed")).await?;
    let third = c.vmi_replaced("always", &uid(&second)).await;
    assert_eq!(vmi_phase(&third), "");
    let vm = c.wait_printable("always", "Starting").await;
    assert_eq!(status(&vm).start_failure, None);

    let created = c.wait_event("always", "SuccessfulCreate", 3).await;
    assert_eq!(created.type_.as_deref(), Some("Normal"));
    assert_eq!(created.involved_object.kind.as_deref(), Some("VirtualMachine"));
    assert_eq!(created.involved_object.uid, vm.metadata.uid);
    assert_eq!(created.source.and_then(|s| s.component).as_deref(), Some("virtualmachine-controller"));
    assert!(created.first_timestamp.is_some() && created.last_timestamp.is_some());
    let deleted = c.wait_event("always", "SuccessfulDelete", 1).await;
    assert!(deleted.message.as_deref().is_some_and(|m| m.contains(&uid(&vmi))), "{deleted:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_on_failure_restarts_only_after_a_failure() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_vm("rerun", json!({"runStrategy": "RerunOnFailure"})).await?;
    let first = c.vmi_exists("rerun").await;
    let vm = c.wait_printable("rerun", "Starting").await;
    assert!(status(&vm).state_change_requests.is_empty(), "the initial Start request is done");

    c.agent_reports("rerun", json!({"phase": "Failed"})).await?;
    let second = c.vmi_replaced("rerun", &uid(&first)).await;

    c.agent_reports("rerun", ran_for(120, "Succeeded")).await?;
    c.wait_vmi("rerun", "deleted after a clean shutdown", |v| v.is_none()).await;
    c.vmi_stays("rerun", Duration::from_millis(400), "stopped", |v| v.is_none()).await;
    let vm = c.wait_printable("rerun", "Stopped").await;
    let st = status(&vm);
    assert!(st.state_change_requests.is_empty());
    assert_eq!(st.created, None);
    assert_eq!(condition(&vm, "Ready").and_then(|c| c.reason.as_deref()), Some("VMINotExists"));
    assert_ne!(uid(&second), uid(&first));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_never_runs_again() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_vm("once", json!({"runStrategy": "Once"})).await?;
    let vmi = c.vmi_exists("once").await;
    c.agent_reports("once", json!({"phase": "Failed"})).await?;
    let vm = c.wait_printable("once", "Stopped").await;
    assert_eq!(status(&vm).created, Some(true), "the finished VMI is kept");
    c.vmi_stays("once", Duration::from_millis(400), "the same finished VMI", |v| {
        v.is_some_and(|v| v.metadata.uid == vmi.metadata.uid && vmi_phase(v) == "Failed")
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_follows_start_stop_and_restart_requests() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_vm("manual", json!({"runStrategy": "Manual"})).await?;
    c.wait_printable("manual", "Stopped").await;
    c.vmi_stays("manual", Duration::from_millis(300), "absent", |v| v.is_none()).await;

    // start --paused
    c.request("manual", json!([{"action": "Start", "data": {"paused": "true"}}])).await?;
    let first = c.vmi_exists("manual").await;
    assert_eq!(first.spec.start_strategy.as_deref(), Some("Paused"));
    c.wait_vm("manual", "Start request done", |vm| status(vm).state_change_requests.is_empty()).await;

    // A clean shutdown is not restarted under Manual.
    c.agent_reports("manual", ran_for(60, "Succeeded")).await?;
    c.wait_printable("manual", "Stopped").await;
    c.vmi_stays("manual", Duration::from_millis(300), "the finished VMI", |v| {
        v.is_some_and(|v| v.metadata.uid == first.metadata.uid)
    })
    .await;

    // restart = [Stop(uid), Start]
    c.request("manual", json!([{"action": "Stop", "uid": uid(&first)}, {"action": "Start"}])).await?;
    let second = c.vmi_replaced("manual", &uid(&first)).await;
    assert_eq!(second.spec.start_strategy, None);
    c.wait_vm("manual", "restart done", |vm| status(vm).state_change_requests.is_empty()).await;

    // stop
    c.request("manual", json!([{"action": "Stop", "uid": uid(&second)}])).await?;
    c.wait_vmi("manual", "stopped", |v| v.is_none()).await;
    let vm = c.wait_printable("manual", "Stopped").await;
    assert!(status(&vm).state_change_requests.is_empty());
    c.wait_event("manual", "SuccessfulDelete", 1).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halted_stops_and_a_start_request_switches_to_always() -> anyhow::Result<()> {
    let c = start().await?;
    // Neither runStrategy nor running: Halted.
    c.create_vm("plain", json!({})).await?;
    let vm = c.wait_printable("plain", "Stopped").await;
    assert_eq!(status(&vm).run_strategy.as_deref(), Some("Halted"));
    // running: true is Always.
    c.create_vm("legacy", json!({"running": true})).await?;
    let vmi = c.vmi_exists("legacy").await;
    // running: false is Halted: the VMI is deleted.
    c.patch_vm_spec("legacy", json!({"running": false})).await?;
    c.wait_vmi("legacy", "deleted by Halted", |v| v.is_none()).await;
    c.wait_printable("legacy", "Stopped").await;

    // KubeVirt's start on a halted VM: the controller switches it to run.
    c.request("legacy", json!([{"action": "Start"}])).await?;
    c.vmi_replaced("legacy", &uid(&vmi)).await;
    let vm = c.wait_vm("legacy", "request done", |vm| status(vm).state_change_requests.is_empty()).await;
    assert_eq!((vm.spec.running, vm.spec.run_strategy), (Some(true), None));

    c.create_vm("halted", json!({"runStrategy": "Halted"})).await?;
    c.wait_printable("halted", "Stopped").await;
    c.request("halted", json!([{"action": "Start"}])).await?;
    c.vmi_exists("halted").await;
    let vm = c.wait_vm("halted", "request done", |vm| status(vm).state_change_requests.is_empty()).await;
    assert_eq!(vm.spec.run_strategy.map(|s| s.as_str()), Some("Always"));
    c.vmi_stays("plain", Duration::from_millis(100), "absent", |v| v.is_none()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_quick_failures_back_off() -> anyhow::Result<()> {
    let c = Cluster::start(Run::VmController, common::quick_backoff()).await?;
    c.create_vm("crashy", json!({"runStrategy": "Always"})).await?;
    let first = c.vmi_exists("crashy").await;
    // The first crash is restarted at once.
    c.agent_reports("crashy", json!({"phase": "Failed"})).await?;
    let second = c.vmi_replaced("crashy", &uid(&first)).await;
    // The second waits (2 s in this test, 10 s by default).
    c.agent_reports("crashy", json!({"phase": "Failed"})).await?;
    let vm = c.wait_printable("crashy", "CrashLoopBackOff").await;
    let failure = status(&vm).start_failure.unwrap_or_default();
    assert_eq!(failure.consecutive_fail_count, Some(2));
    assert_eq!(failure.last_failed_vmi_uid, Some(uid(&second)));
    assert!(failure.retry_after_timestamp.is_some());
    c.vmi_stays("crashy", Duration::from_millis(800), "absent during the backoff", |v| v.is_none()).await;
    let third = c.vmi_exists("crashy").await;
    assert_ne!(uid(&third), uid(&second));
    c.wait_printable("crashy", "Starting").await;

    // A VMI that ran for a while ends the crash loop.
    c.agent_reports("crashy", ran_for(300, "Failed")).await?;
    c.vmi_replaced("crashy", &uid(&third)).await;
    c.wait_vm("crashy", "Starting, with no start failure", |vm| {
        status(vm).start_failure.is_none() && printable(vm) == "Starting"
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printable_status_follows_the_vmi() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_vm("life", json!({"runStrategy": "Halted"})).await?;
    c.wait_printable("life", "Stopped").await;

    c.patch_vm_spec("life", json!({"runStrategy": "Always"})).await?;
    c.vmi_exists("life").await;
    c.wait_printable("life", "Starting").await;
    // The agent holds a finalizer on the VMIs it runs.
    c.patch_metadata(Gvr::of::<VirtualMachineInstance>(), "life", json!({"finalizers": ["sheaf.io/vmi-runner"]}))
        .await?;
    c.agent_reports("life", json!({"phase": "Scheduled", "nodeName": "node1"})).await?;
    c.wait_vm("life", "still Starting once scheduled", |vm| {
        printable(vm) == "Starting" && condition(vm, "Ready").is_some()
    })
    .await;

    let ready = json!([{"type": "Ready", "status": "True", "reason": "Running"}]);
    c.agent_reports("life", json!({"phase": "Running", "conditions": ready})).await?;
    let vm = c.wait_printable("life", "Running").await;
    assert_eq!(status(&vm).ready, Some(true));
    assert_eq!(condition(&vm, "Ready").map(|c| c.status.as_str()), Some("True"));

    let paused = json!([
        {"type": "Ready", "status": "False", "reason": "Paused"},
        {"type": "Paused", "status": "True", "reason": "PausedByUser", "message": "VMI was paused by user"}
    ]);
    c.agent_reports("life", json!({"conditions": paused})).await?;
    let vm = c.wait_printable("life", "Paused").await;
    assert_eq!(condition(&vm, "Paused").and_then(|c| c.reason.as_deref()), Some("PausedByUser"));
    assert_eq!(status(&vm).ready, None);

    c.patch_vm_spec("life", json!({"runStrategy": "Halted"})).await?;
    c.wait_printable("life", "Stopping").await;
    // The agent shuts QEMU down and lets the VMI go.
    c.patch_metadata(Gvr::of::<VirtualMachineInstance>(), "life", json!({"finalizers": []})).await?;
    let vm = c.wait_printable("life", "Stopped").await;
    assert_eq!(status(&vm).created, None);
    assert!(condition(&vm, "Paused").is_none(), "VMI conditions go with the VMI");
    assert_eq!(condition(&vm, "Ready").and_then(|c| c.reason.as_deref()), Some("VMINotExists"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_track_the_template_the_vmi_runs() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_vm("gen", json!({"runStrategy": "Always"})).await?;
    c.vmi_exists("gen").await;
    c.wait_vm("gen", "generations 1/1", |vm| {
        (status(vm).observed_generation, status(vm).desired_generation) == (Some(1), Some(1))
    })
    .await;
    // Only the run strategy changes: the running VMI is still current.
    c.patch_vm_spec("gen", json!({"runStrategy": "Manual"})).await?;
    c.wait_vm("gen", "generations 2/2", |vm| {
        (status(vm).observed_generation, status(vm).desired_generation) == (Some(2), Some(2))
    })
    .await;
    // The template changes: the VMI runs an older generation until restarted.
    let mut spec = common::template_spec("256Mi");
    spec["domain"]["cpu"] = json!({"cores": 2});
    c.patch_vm_spec("gen", json!({"template": {"spec": spec}})).await?;
    c.wait_vm("gen", "generations 2/3", |vm| {
        (status(vm).observed_generation, status(vm).desired_generation) == (Some(2), Some(3))
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_vm_removes_its_vmi() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_vm("gone", json!({"runStrategy": "Always"})).await?;
    c.vmi_exists("gone").await;
    c.vms().delete(Some("default"), "gone").await?;
    c.wait_vmi("gone", "garbage-collected", |v| v.is_none()).await;

    // Held by a finalizer, the VM shows Terminating while its VMI goes.
    c.create_vm("held", json!({"runStrategy": "Always"})).await?;
    c.vmi_exists("held").await;
    c.patch_metadata(Gvr::of::<VirtualMachine>(), "held", json!({"finalizers": ["example.com/hold"]})).await?;
    c.vms().delete(Some("default"), "held").await?;
    c.wait_printable("held", "Terminating").await;
    c.wait_vmi("held", "deleted", |v| v.is_none()).await;
    c.vmi_stays("held", Duration::from_millis(300), "not recreated", |v| v.is_none()).await;
    c.patch_metadata(Gvr::of::<VirtualMachine>(), "held", json!({"finalizers": []})).await?;
    c.wait_vm_gone("held").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_vmi_of_the_same_name_is_adopted() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_vmi("adoptee", "128Mi", json!({})).await?;
    let orphan = c.vmi_exists("adoptee").await;
    let vm = c.create_vm("adoptee", json!({"runStrategy": "Always"})).await?;
    let adopted = c
        .wait_vmi("adoptee", "owned by the VM", |v| {
            v.is_some_and(|v| v.metadata.owner_references.iter().any(|r| Some(&r.uid) == vm.metadata.uid.as_ref()))
        })
        .await;
    assert_eq!(adopted.map(|v| uid(&v)), Some(uid(&orphan)));
    c.wait_printable("adoptee", "Starting").await;
    Ok(())
}
