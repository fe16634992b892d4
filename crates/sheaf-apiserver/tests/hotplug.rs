//! The volume hotplug subresources against a real store: what they write
//! into VMs and VMIs, and every refusal with its status code.

use serde_json::{json, Value};
use sheaf_apiserver::hotplug::{add_volume, remove_volume};
use sheaf_apiserver::objects::WriteOptions;
use sheaf_apiserver::patch::PatchType;
use sheaf_apiserver::registry::Registry;
use sheaf_apiserver::ApiServer;
use sheaf_store::sqlite::SqliteStore;
use std::sync::Arc;

struct Api {
    server: Arc<ApiServer>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).expect("store"));
        let server = ApiServer::new(store, Registry::new(sheaf_types::registry::all()), &[]);
        sheaf_apiserver::bootstrap(&server).await.expect("bootstrap");
        Api { server, _dir: dir }
    }

    async fn create(&self, group: &str, plural: &str, body: Value) -> Value {
        let (g, v) = group.split_once('/').expect("group/version");
        let rt = self.server.registry.find(g, v, plural).cloned().expect("kind");
        let written = self.server.objects.create(&rt, Some("default"), body, &WriteOptions::default()).await;
        written.unwrap_or_else(|e| panic!("create {plural}: {e}")).object
    }

    async fn get(&self, plural: &str, name: &str) -> Value {
        let rt = self.server.registry.find("kubevirt.io", "v1", plural).cloned().expect("kind");
        self.server.objects.get(&rt, Some("default"), name).await.expect("get")
    }

    async fn set_phase(&self, name: &str, phase: &str) {
        let rt = self.server.registry.find("kubevirt.io", "v1", "virtualmachineinstances").cloned().expect("kind");
        let patch = json!({"status": {"phase": phase}});
        let opts = WriteOptions::default();
        self.server
            .objects
            .patch(&rt, Some("default"), name, PatchType::Merge, patch, true, false, &opts)
            .await
            .expect("status");
    }

    async fn add(&self, on_vm: bool, name: &str, body: Value) -> Result<(), (u16, String)> {
        let bytes = serde_json::to_vec(&body).expect("json");
        add_volume(&self.server.objects, "default", name, on_vm, &bytes).await.map_err(|e| (e.code.as_u16(), e.message))
    }

    async fn remove(&self, on_vm: bool, name: &str, volume: &str) -> Result<(), (u16, String)> {
        let bytes = serde_json::to_vec(&json!({"name": volume})).expect("json");
        remove_volume(&self.server.objects, "default", name, on_vm, &bytes)
            .await
            .map_err(|e| (e.code.as_u16(), e.message))
    }
}

fn spec(root_claim: &str) -> Value {
    json!({
        "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
        "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": root_claim}}],
    })
}

fn volume(name: &str) -> Value {
    json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume", "metadata": {"name": name},
           "spec": {"size": "64Mi", "numberOfReplicas": 1}})
}

fn add_body(name: &str, claim: &str, bus: &str) -> Value {
    json!({"name": name, "disk": {"disk": {"bus": bus}, "serial": "S-1"},
           "volumeSource": {"persistentVolumeClaim": {"claimName": claim}}})
}

/// A VM and its instance (owned by it, Running).
async fn vm_with_instance(api: &Api, name: &str, root: &str) -> Value {
    let vm = api
        .create(
            "kubevirt.io/v1",
            "virtualmachines",
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
                   "spec": {"runStrategy": "Manual", "template": {"spec": spec(root)}}}),
        )
        .await;
    api.create(
        "kubevirt.io/v1",
        "virtualmachineinstances",
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
               "metadata": {"name": name, "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                   "name": name, "uid": vm["metadata"]["uid"], "controller": true}]},
               "spec": spec(root)}),
    )
    .await;
    api.set_phase(name, "Running").await;
    vm
}

fn names(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn addvolume_and_removevolume_on_vmis_and_vms() {
    let api = Api::start().await;
    for v in ["root1", "root2", "data", "more"] {
        api.create("sheaf.io/v1alpha1", "volumes", volume(v)).await;
    }
    vm_with_instance(&api, "web", "root1").await;
    vm_with_instance(&api, "db", "root2").await;

    // Refusals before anything is written.
    let e = api.add(false, "web", add_body("data", "nosuch", "scsi")).await.expect_err("no such volume");
    assert_eq!(e.0, 404, "{e:?}");
    assert!(e.1.contains("sheaf volume create nosuch"), "{e:?}");
    let e = api.add(false, "web", add_body("data", "data", "sata")).await.expect_err("bus");
    assert_eq!(e.0, 422, "{e:?}");
    let e = api.add(false, "web", add_body("root", "data", "scsi")).await.expect_err("volume name");
    assert!(e.0 == 409 && e.1.contains("already exists"), "{e:?}");
    let e = api.add(false, "web", add_body("again", "root1", "scsi")).await.expect_err("same claim");
    assert!(e.0 == 409 && e.1.contains("volume source [root1]"), "{e:?}");
    let e = api.add(false, "web", add_body("theirs", "root2", "scsi")).await.expect_err("used by db");
    assert!(e.0 == 409 && e.1.contains("in use by VirtualMachineInstance db"), "{e:?}");
    let e = api.add(false, "nosuchvm", add_body("data", "data", "scsi")).await.expect_err("no vmi");
    assert_eq!(e.0, 404, "{e:?}");
    let e = api.add(true, "nosuchvm", add_body("data", "data", "scsi")).await.expect_err("no vm");
    assert_eq!(e.0, 404, "{e:?}");
    let bytes = b"";
    let e = add_volume(&api.server.objects, "default", "web", false, bytes).await.expect_err("empty body");
    assert_eq!(e.code.as_u16(), 400);
    // A dry run checks and writes nothing.
    let mut dry = add_body("data", "data", "scsi");
    dry["dryRun"] = json!(["All"]);
    api.add(false, "web", dry).await.expect("dry run");
    assert_eq!(names(&api.get("virtualmachineinstances", "web").await, "/spec/volumes"), ["root"]);

    // The VMI path: only the instance changes.
    api.add(false, "web", add_body("data", "data", "virtio")).await.expect("addvolume on the VMI");
    let vmi = api.get("virtualmachineinstances", "web").await;
    assert_eq!(names(&vmi, "/spec/volumes"), ["root", "data"]);
    assert_eq!(names(&vmi, "/spec/domain/devices/disks"), ["root", "data"]);
    assert_eq!(vmi["spec"]["volumes"][1]["persistentVolumeClaim"], json!({"claimName": "data", "hotpluggable": true}));
    assert_eq!(
        vmi["spec"]["domain"]["devices"]["disks"][1],
        json!({"name": "data", "disk": {"bus": "virtio"}, "serial": "S-1"})
    );
    assert_eq!(names(&api.get("virtualmachines", "web").await, "/spec/template/spec/volumes"), ["root"]);
    // Now in use by web: db cannot have it, by either path.
    let e = api.add(true, "db", add_body("data", "data", "scsi")).await.expect_err("in use");
    assert!(e.0 == 409 && e.1.contains("in use by VirtualMachineInstance web"), "{e:?}");

    // Removing: a boot volume is refused, a hotplugged one goes.
    let e = api.remove(false, "web", "root").await.expect_err("boot volume");
    assert!(e.0 == 409 && e.1.contains("not hotpluggable"), "{e:?}");
    let e = api.remove(false, "web", "nope").await.expect_err("missing");
    assert_eq!(e.0, 404, "{e:?}");
    api.remove(false, "web", "data").await.expect("removevolume by claim name works too");
    assert_eq!(names(&api.get("virtualmachineinstances", "web").await, "/spec/volumes"), ["root"]);

    // The VM path (--persist): template and running instance.
    api.add(true, "web", add_body("more", "more", "scsi")).await.expect("addvolume on the VM");
    let vm = api.get("virtualmachines", "web").await;
    assert_eq!(names(&vm, "/spec/template/spec/volumes"), ["root", "more"]);
    assert_eq!(names(&vm, "/spec/template/spec/domain/devices/disks"), ["root", "more"]);
    assert_eq!(names(&api.get("virtualmachineinstances", "web").await, "/spec/volumes"), ["root", "more"]);
    let e = api.add(true, "web", add_body("more", "data", "scsi")).await.expect_err("name in the template");
    assert_eq!(e.0, 409, "{e:?}");
    api.remove(true, "web", "more").await.expect("removevolume on the VM");
    assert_eq!(names(&api.get("virtualmachines", "web").await, "/spec/template/spec/volumes"), ["root"]);
    assert_eq!(names(&api.get("virtualmachineinstances", "web").await, "/spec/volumes"), ["root"]);

    // A VMI that is not running.
    api.set_phase("db", "Succeeded").await;
    let e = api.add(false, "db", add_body("data", "data", "scsi")).await.expect_err("not running");
    assert!(e.0 == 409 && e.1.contains("not running"), "{e:?}");
    let e = api.remove(false, "db", "root").await.expect_err("not running");
    assert!(e.0 == 409 && e.1.contains("not running"), "{e:?}");
    // A stopped VM's template still takes a volume (it is attached at the
    // next start).
    api.add(true, "db", add_body("data", "data", "scsi")).await.expect("addvolume on a stopped VM");
    assert_eq!(names(&api.get("virtualmachines", "db").await, "/spec/template/spec/volumes"), ["root", "data"]);
    assert_eq!(names(&api.get("virtualmachineinstances", "db").await, "/spec/volumes"), ["root"]);
}
