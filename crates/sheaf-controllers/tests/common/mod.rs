//! A real API server (object layer over SQLite in a temporary directory,
//! garbage collector running) with the controllers under test, and polling
//! helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sheaf_apiserver::registry::Registry;
use sheaf_apiserver::ApiServer;
use sheaf_client::{Api, Gvr, Selectors, Typed};
use sheaf_controllers::vm;
use sheaf_store::sqlite::SqliteStore;
use sheaf_types::core::{Event, Node};
use sheaf_types::kubevirt::{VirtualMachine, VirtualMachineInstance};
use tokio::task::JoinSet;

/// How long a wait for the controllers may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `f` until it returns Some; fails the test with `what` otherwise.
pub async fn until<T, F, Fut>(what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}
const POLL: Duration = Duration::from_millis(20);

pub struct Cluster {
    pub api: Arc<dyn Api>,
    _dir: tempfile::TempDir,
    /// Aborted when the cluster is dropped.
    _tasks: JoinSet<()>,
}

#[derive(Clone, Copy)]
pub enum Run {
    /// Only the garbage collector.
    Nothing,
    VmController,
    Scheduler,
    Both,
    /// The Volume controller (and the release of replicas of gone nodes).
    Volume,
    /// The claim controller, the VM controller and the trash (1 h
    /// retention).
    Claims,
}

impl Cluster {
    pub async fn start(run: Run, config: vm::Config) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(SqliteStore::open(&dir.path().join("db"))?);
        let server = ApiServer::new(store, Registry::new(sheaf_types::registry::all()), &[]);
        sheaf_apiserver::bootstrap(&server).await.map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?;
        let api: Arc<dyn Api> = sheaf_apiserver::local_api::LocalApi::new(server.objects.clone());
        let mut tasks = JoinSet::new();
        tasks.spawn(sheaf_apiserver::gc::GarbageCollector::new(server.objects.clone()).run());
        if matches!(run, Run::VmController | Run::Both) {
            tasks.spawn(vm::run(api.clone(), config.clone()));
        }
        if matches!(run, Run::Scheduler | Run::Both) {
            tasks.spawn(sheaf_controllers::scheduler::run(api.clone()));
        }
        if matches!(run, Run::Claims) {
            tasks.spawn(vm::run(api.clone(), config.clone()));
            tasks.spawn(sheaf_controllers::claim::run(api.clone()));
            tasks.spawn(sheaf_controllers::trash::run(api.clone(), std::time::Duration::from_secs(3600)));
        }
        if matches!(run, Run::Volume) {
            tasks.spawn(sheaf_controllers::volume::run(api.clone()));
        }
        Ok(Cluster { api, _dir: dir, _tasks: tasks })
    }

    pub fn vms(&self) -> Typed<'_, VirtualMachine> {
        Typed::new(self.api.as_ref())
    }

    pub fn vmis(&self) -> Typed<'_, VirtualMachineInstance> {
        Typed::new(self.api.as_ref())
    }

    pub async fn create_vm(&self, name: &str, spec: Value) -> anyhow::Result<VirtualMachine> {
        let mut body = vm_manifest(name);
        if let (Some(s), Value::Object(extra)) = (body.get_mut("spec").and_then(Value::as_object_mut), spec) {
            s.extend(extra);
        }
        Ok(serde_json::from_value(self.api.create(Gvr::of::<VirtualMachine>(), Some("default"), body).await?)?)
    }

    pub async fn create_vmi(&self, name: &str, memory: &str, extra_spec: Value) -> anyhow::Result<()> {
        let mut body = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "default"},
            "spec": template_spec(memory),
        });
        if let (Some(s), Value::Object(extra)) = (body.get_mut("spec").and_then(Value::as_object_mut), extra_spec) {
            s.extend(extra);
        }
        self.api.create(Gvr::of::<VirtualMachineInstance>(), Some("default"), body).await?;
        Ok(())
    }

    /// Patches a VM's spec (JSON merge patch).
    pub async fn patch_vm_spec(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        self.vms().merge_patch(Some("default"), name, json!({ "spec": spec }), false).await?;
        Ok(())
    }

    /// Writes `status.stateChangeRequests` as the start/stop/restart
    /// subresources do.
    pub async fn request(&self, vm: &str, requests: Value) -> anyhow::Result<()> {
        let patch = json!({"status": {"stateChangeRequests": requests}});
        self.vms().merge_patch(Some("default"), vm, patch, true).await?;
        Ok(())
    }

    /// Merges `status` into a VMI's status, as the node agent does.
    pub async fn agent_reports(&self, vmi: &str, status: Value) -> anyhow::Result<()> {
        self.vmis().merge_patch(Some("default"), vmi, json!({ "status": status }), true).await?;
        Ok(())
    }

    pub async fn patch_metadata(&self, r: Gvr, name: &str, metadata: Value) -> anyhow::Result<()> {
        self.api.merge_patch(r, Some("default"), name, json!({ "metadata": metadata }), false).await?;
        Ok(())
    }

    /// Waits until the VM satisfies `pred`; fails the test with its last
    /// state otherwise.
    pub async fn wait_vm(&self, name: &str, what: &str, pred: impl Fn(&VirtualMachine) -> bool) -> VirtualMachine {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let vm = self.vms().get(Some("default"), name).await.ok().flatten();
            if let Some(vm) = vm.as_ref().filter(|v| pred(v)) {
                return vm.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for VM {name}: {what}; last seen: {}", pretty(&vm));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn wait_vm_gone(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while let Ok(Some(vm)) = self.vms().get(Some("default"), name).await {
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for VM {name} to go; last seen: {}", pretty(&vm));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn wait_printable(&self, name: &str, status: &str) -> VirtualMachine {
        self.wait_vm(name, &format!("printableStatus {status}"), |vm| printable(vm) == status).await
    }

    /// Waits until the VMI (or its absence) satisfies `pred`.
    pub async fn wait_vmi(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(Option<&VirtualMachineInstance>) -> bool,
    ) -> Option<VirtualMachineInstance> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let vmi = self.vmis().get(Some("default"), name).await.ok().flatten();
            if pred(vmi.as_ref()) {
                return vmi;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for VMI {name}: {what}; last seen: {}", pretty(&vmi));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for a VMI to exist and returns it.
    pub async fn vmi_exists(&self, name: &str) -> VirtualMachineInstance {
        match self.wait_vmi(name, "exists", |v| v.is_some()).await {
            Some(v) => v,
            None => unreachable!("wait_vmi returned without the VMI"),
        }
    }

    /// Waits for a VMI other than the one with `old_uid` to exist.
    pub async fn vmi_replaced(&self, name: &str, old_uid: &str) -> VirtualMachineInstance {
        let vmi = self
            .wait_vmi(name, &format!("a new VMI (not {old_uid})"), |v| {
                v.is_some_and(|v| v.metadata.uid.as_deref() != Some(old_uid))
            })
            .await;
        match vmi {
            Some(v) => v,
            None => unreachable!("wait_vmi returned without the VMI"),
        }
    }

    /// Checks that the VMI satisfies `pred` throughout `period`.
    pub async fn vmi_stays(
        &self,
        name: &str,
        period: Duration,
        what: &str,
        pred: impl Fn(Option<&VirtualMachineInstance>) -> bool,
    ) {
        let end = tokio::time::Instant::now() + period;
        while tokio::time::Instant::now() < end {
            let vmi = self.vmis().get(Some("default"), name).await.ok().flatten();
            assert!(pred(vmi.as_ref()), "VMI {name} should stay {what}; it is: {}", pretty(&vmi));
            tokio::time::sleep(POLL).await;
        }
    }

    /// Events about the object named `name`.
    pub async fn events_for(&self, name: &str) -> Vec<Event> {
        let events = Typed::<Event>::new(self.api.as_ref()).list(None, &Selectors::default()).await;
        events.unwrap_or_default().into_iter().filter(|e| e.involved_object.name.as_deref() == Some(name)).collect()
    }

    /// Registers a node with allocatable CPU and memory, Ready or not.
    pub async fn add_node(&self, name: &str, cpu: &str, memory: &str, ready: bool) -> anyhow::Result<()> {
        self.add_node_with(name, cpu, memory, ready, json!({}), json!({})).await
    }

    pub async fn add_node_with(
        &self,
        name: &str,
        cpu: &str,
        memory: &str,
        ready: bool,
        labels: Value,
        spec: Value,
    ) -> anyhow::Result<()> {
        let body =
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec});
        let mut node = self.api.create(Gvr::of::<Node>(), None, body).await?;
        node["status"] = json!({
            "capacity": {"cpu": cpu, "memory": memory},
            "allocatable": {"cpu": cpu, "memory": memory},
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "AgentReady"}],
        });
        self.api.update_status(Gvr::of::<Node>(), None, node).await?;
        Ok(())
    }

    /// Waits for an Event about `name` with `reason` seen at least
    /// `count` times.
    pub async fn wait_event(&self, name: &str, reason: &str, count: i32) -> Event {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let events = self.events_for(name).await;
            if let Some(e) =
                events.iter().find(|e| e.reason.as_deref() == Some(reason) && e.count.unwrap_or(0) >= count)
            {
                return e.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for a {reason} event (x{count}) about {name}; events: {}", pretty(&events));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A time `secs` seconds ago, as an API timestamp.
pub fn ago(secs: i64) -> String {
    (chrono::Utc::now() - chrono::TimeDelta::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An agent's status report of a VMI that has been running since `secs`
/// ago, with `phase` (Running, Succeeded, Failed).
pub fn ran_for(secs: i64, phase: &str) -> Value {
    json!({
        "phase": phase,
        "nodeName": "node1",
        "phaseTransitionTimestamps": [{"phase": "Running", "phaseTransitionTimestamp": ago(secs)}],
    })
}

pub fn printable(vm: &VirtualMachine) -> &str {
    vm.status.as_ref().and_then(|s| s.printable_status.as_deref()).unwrap_or_default()
}

pub fn vmi_phase(vmi: &VirtualMachineInstance) -> &str {
    vmi.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

pub fn uid<K: sheaf_types::Kind>(obj: &K) -> String {
    obj.metadata().uid.clone().unwrap_or_default()
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub fn template_spec(memory: &str) -> Value {
    json!({
        "domain": {
            "cpu": {"cores": 1},
            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
            "resources": {"requests": {"memory": memory}}
        },
        "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/kubevirt/cirros-container-disk-demo"}}]
    })
}

pub fn vm_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "template": {
                "metadata": {
                    "labels": {"kubevirt.io/domain": name},
                    "annotations": {"example.com/note": "from the template"}
                },
                "spec": template_spec("128Mi")
            }
        }
    })
}

/// A crash loop backoff fast enough for tests.
pub fn quick_backoff() -> vm::Config {
    vm::Config { crash_loop_base: Duration::from_secs(2), crash_loop_max: Duration::from_secs(4), ..Default::default() }
}
