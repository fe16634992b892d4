//! The migration and failover controllers against a real API (object
//! layer over SQLite), with the agents' part played by the test: a
//! migration picks a target and follows the VMI's migrationState to
//! Succeeded or Failed; migrations that cannot work fail with the reason;
//! a node whose heartbeat stops has its VMIs failed over (Failed,
//! NodeUnresponsive, runner finalizer gone) and the VM controller starts
//! them again without counting a crash.

mod common;

use std::time::Duration;

use common::{until, Cluster, Run};
use serde_json::{json, Value};
use sheaf_client::{Gvr, Typed};
use sheaf_controllers::{migration, node, vm};
use sheaf_types::core::Node;
use sheaf_types::kubevirt::{VirtualMachineInstance, VirtualMachineInstanceMigration};

struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spec() -> Value {
    json!({
        "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "root", "disk": {}}]}},
        "volumes": [{"name": "root", "containerDisk": {"image": "sheaf/tiny"}}],
    })
}

async fn running_on(c: &Cluster, vmi: &str, node: &str) {
    c.agent_reports(vmi, json!({"phase": "Running", "nodeName": node})).await.expect("running");
}

async fn migrate(c: &Cluster, name: &str, vmi: &str, selector: Value) {
    let body = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"vmiName": vmi, "addedNodeSelector": selector}});
    c.api.create(Gvr::of::<VirtualMachineInstanceMigration>(), Some("default"), body).await.expect("vmim");
}

async fn vmim(c: &Cluster, name: &str) -> VirtualMachineInstanceMigration {
    Typed::<VirtualMachineInstanceMigration>::new(c.api.as_ref())
        .get(Some("default"), name)
        .await
        .expect("get")
        .expect("vmim")
}

async fn phase(c: &Cluster, name: &str, want: &str) -> VirtualMachineInstanceMigration {
    until(&format!("migration {name} {want}"), || async {
        let m = vmim(c, name).await;
        (m.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(want)).then_some(m)
    })
    .await
}

fn condition_message(m: &VirtualMachineInstanceMigration) -> String {
    m.status.as_ref().and_then(|s| s.conditions.first()).and_then(|c| c.message.clone()).unwrap_or_default()
}

async fn state(c: &Cluster, vmi: &str) -> Value {
    let v: VirtualMachineInstance = c.vmis().get(Some("default"), vmi).await.expect("get").expect("vmi");
    v.status.and_then(|s| s.migration_state).unwrap_or(Value::Null)
}

#[tokio::test]
async fn migrations_choose_a_target_and_follow_the_vmi() {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await.expect("cluster");
    let _m = Running(tokio::spawn(migration::run(c.api.clone())));
    c.add_node("n1", "4", "8Gi", true).await.expect("n1");
    c.add_node("n2", "4", "8Gi", true).await.expect("n2");
    c.add_node("n3", "4", "8Gi", false).await.expect("n3");
    c.create_vmi("web", "64Mi", spec()).await.expect("vmi");
    running_on(&c, "web", "n1").await;

    migrate(&c, "m1", "web", json!({})).await;
    let m = phase(&c, "m1", "Scheduled").await;
    let st = state(&c, "web").await;
    assert_eq!(st["sourceNode"], "n1");
    assert_eq!(st["targetNode"], "n2", "the only other Ready node: {st}");
    assert_eq!(st["migrationUid"], json!(m.metadata.uid));

    // A second migration waits while the first runs.
    migrate(&c, "m2", "web", json!({})).await;
    let m2 = phase(&c, "m2", "Pending").await;
    assert!(condition_message(&m2).contains("in progress"), "{m2:?}");

    // The agents' part: the target is ready, the source sends, it completes.
    let patch = |s: Value| json!({"status": {"migrationState": s}});
    c.vmis()
        .merge_patch(
            Some("default"),
            "web",
            patch(json!({"targetNodeAddress": "10.0.0.2", "targetDirectMigrationNodePorts": {"49152": 0}})),
            true,
        )
        .await
        .expect("target ready");
    phase(&c, "m1", "TargetReady").await;
    c.vmis()
        .merge_patch(Some("default"), "web", patch(json!({"startTimestamp": sheaf_types::Time::now()})), true)
        .await
        .expect("start");
    phase(&c, "m1", "Running").await;
    let done = json!({"status": {"nodeName": "n2", "migrationState": {"completed": true, "downtimeMilliseconds": 42}}});
    c.vmis().merge_patch(Some("default"), "web", done, true).await.expect("done");
    let m = phase(&c, "m1", "Succeeded").await;
    let reported = m.status.and_then(|s| s.migration_state).unwrap_or_default();
    assert_eq!(reported["downtimeMilliseconds"], 42, "{reported}");

    // Now m2 runs, back to n1, and the state of m1 is replaced whole.
    phase(&c, "m2", "Scheduled").await;
    let st = state(&c, "web").await;
    assert_eq!((st["sourceNode"].as_str(), st["targetNode"].as_str()), (Some("n2"), Some("n1")), "{st}");
    assert!(st.get("completed").is_none() && st.get("downtimeMilliseconds").is_none(), "old keys survived: {st}");
    // The target fails: so does the migration, with the agent's reason.
    c.vmis()
        .merge_patch(
            Some("default"),
            "web",
            patch(json!({"failed": true, "failureReason": "the target QEMU ended: boom"})),
            true,
        )
        .await
        .expect("fail");
    let m2 = phase(&c, "m2", "Failed").await;
    assert!(condition_message(&m2).contains("boom"), "{m2:?}");
}

#[tokio::test]
async fn migrations_that_cannot_work_fail_with_the_reason() {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await.expect("cluster");
    let _m = Running(tokio::spawn(migration::run(c.api.clone())));
    c.add_node("n1", "4", "8Gi", true).await.expect("n1");
    c.add_node("n2", "4", "8Gi", true).await.expect("n2");

    migrate(&c, "ghost", "nothing-here", json!({})).await;
    assert!(condition_message(&phase(&c, "ghost", "Failed").await).contains("does not exist"));

    c.create_vmi("idle", "64Mi", spec()).await.expect("vmi");
    migrate(&c, "idle", "idle", json!({})).await;
    assert!(condition_message(&phase(&c, "idle", "Failed").await).contains("not running"));

    c.create_vmi(
        "local",
        "64Mi",
        json!({
            "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "scratch", "disk": {}}]}},
            "volumes": [{"name": "scratch", "emptyDisk": {"capacity": "1Gi"}}],
        }),
    )
    .await
    .expect("vmi");
    running_on(&c, "local", "n1").await;
    migrate(&c, "local", "local", json!({})).await;
    let msg = condition_message(&phase(&c, "local", "Failed").await);
    assert!(msg.contains("emptyDisk") && msg.contains("PersistentVolumeClaim"), "{msg}");

    c.create_vmi("web", "64Mi", spec()).await.expect("vmi");
    running_on(&c, "web", "n1").await;
    migrate(&c, "nowhere", "web", json!({"kubernetes.io/hostname": "n9"})).await;
    let msg = condition_message(&phase(&c, "nowhere", "Failed").await);
    assert!(msg.contains("no node can take") && msg.contains("nodeSelector"), "{msg}");
    assert!(state(&c, "web").await.is_null(), "a failed check must not touch the VMI");
}

#[tokio::test]
async fn a_silent_nodes_vms_are_failed_over_and_started_again() {
    let c = Cluster::start(Run::Both, vm::Config::default()).await.expect("cluster");
    let grace = Duration::from_secs(2);
    let _n = Running(tokio::spawn(node::run(c.api.clone(), node::Config { grace })));
    c.add_node("n1", "4", "8Gi", true).await.expect("n1");
    c.add_node("n2", "4", "8Gi", true).await.expect("n2");
    // A heartbeat on each node, then only n2 keeps beating.
    let beat = |n: &'static str| {
        let api = c.api.clone();
        async move {
            let now = sheaf_types::Time::now();
            let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady",
                "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
            api.merge_patch(Gvr::of::<Node>(), None, n, status, true).await.expect("heartbeat");
        }
    };
    beat("n1").await;
    beat("n2").await;
    c.create_vm("app", json!({"runStrategy": "Always", "template": {"spec": spec()}})).await.expect("vm");
    let vmi = c.vmi_exists("app").await;
    let first = vmi.metadata.uid.clone().expect("uid");
    let bound =
        until("scheduled", || async { c.vmis().get(Some("default"), "app").await.ok().flatten()?.status?.node_name })
            .await;
    running_on(&c, "app", &bound).await;
    c.patch_metadata(Gvr::of::<VirtualMachineInstance>(), "app", json!({"finalizers": ["sheaf.io/vmi-runner"]}))
        .await
        .expect("finalizer");
    let other = if bound == "n1" { "n2" } else { "n1" };
    let keep = tokio::spawn({
        let api = c.api.clone();
        let other = other.to_string();
        async move {
            loop {
                let now = sheaf_types::Time::now();
                let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady",
                    "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
                let _ = api.merge_patch(Gvr::of::<Node>(), None, &other, status, true).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    let _keep = Running(keep);

    // The silent node's VMI is failed over and a new one starts elsewhere.
    let replaced = c.vmi_replaced("app", &first).await;
    let new_node = until("the new VMI is scheduled", || async {
        c.vmis().get(Some("default"), "app").await.ok().flatten()?.status?.node_name
    })
    .await;
    assert_eq!(new_node, other, "the new VMI went to the node that still answers");
    assert_ne!(replaced.metadata.uid.as_deref(), Some(first.as_str()));
    let events = c.events_for("app").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("NodeUnresponsive")), "{events:?}");
    let vm =
        c.wait_vm("app", "no crash counted", |vm| vm.status.as_ref().is_some_and(|s| s.start_failure.is_none())).await;
    assert!(vm.status.is_some());
    let n: Node = Typed::<Node>::new(c.api.as_ref()).get(None, &bound).await.expect("get").expect("node");
    let ready = n.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready")).expect("Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("Unknown", Some(node::NODE_STATUS_UNKNOWN)));
}
