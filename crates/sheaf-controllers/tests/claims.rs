//! The claim controller and the VM controller's claims against a real API
//! server (no node agents: the tests write what agents and the image
//! importer would report): a claim becomes the Volume of its name with
//! its class's parameters, default class, static binding, Retain, images
//! (pending until imported, too small), clones through a temporary
//! snapshot, copies of snapshots, expansion, deletion protection, and
//! VMs' dataVolumeTemplates, Harvester's volumeClaimTemplates and
//! removedPersistentVolumeClaims annotations.

mod common;

use std::time::Duration;

use common::{template_spec, until, Cluster, Run};
use serde_json::{json, Value};
use sheaf_client::{Gvr, Typed};
use sheaf_controllers::vm;
use sheaf_types::claim::{PersistentVolumeClaim, StorageClass};
use sheaf_types::harvester::VirtualMachineImage;
use sheaf_types::kubevirt::VirtualMachine;
use sheaf_types::storage::{Volume, VolumeSnapshot};

async fn cluster() -> anyhow::Result<Cluster> {
    Cluster::start(Run::Claims, vm::Config::default()).await
}

async fn class(c: &Cluster, name: &str, extra: Value) -> anyhow::Result<()> {
    let mut body = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name}, "provisioner": "driver.sheaf.io"});
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    c.api.create(Gvr::of::<StorageClass>(), None, body).await?;
    Ok(())
}

fn claim_body(name: &str, size: &str, spec: Value) -> Value {
    let mut body = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
    if let (Some(s), Value::Object(extra)) = (body.get_mut("spec").and_then(Value::as_object_mut), spec) {
        s.extend(extra);
    }
    body
}

async fn claim(c: &Cluster, name: &str, size: &str, spec: Value) -> anyhow::Result<()> {
    c.api.create(Gvr::of::<PersistentVolumeClaim>(), Some("default"), claim_body(name, size, spec)).await?;
    Ok(())
}

async fn get_claim(c: &Cluster, name: &str) -> Option<PersistentVolumeClaim> {
    Typed::<PersistentVolumeClaim>::new(c.api.as_ref()).get(Some("default"), name).await.ok().flatten()
}

async fn volume(c: &Cluster, name: &str) -> Option<Volume> {
    Typed::<Volume>::new(c.api.as_ref()).get(Some("default"), name).await.ok().flatten()
}

async fn bound(c: &Cluster, name: &str) -> PersistentVolumeClaim {
    until(&format!("claim {name} Bound"), || async { get_claim(c, name).await.filter(|p| p.is_bound()) }).await
}

/// Waits until claim `name` is Pending with `reason`; returns the message.
async fn pending(c: &Cluster, name: &str, reason: &str) -> String {
    until(&format!("claim {name} Pending with {reason}"), || async {
        let p = get_claim(c, name).await?;
        let cond = p.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Bound")?.clone();
        (p.phase() == "Pending" && cond.reason.as_deref() == Some(reason)).then(|| cond.message.unwrap_or_default())
    })
    .await
}

fn capacity(p: &PersistentVolumeClaim) -> String {
    p.status.as_ref().and_then(|s| s.capacity.get("storage")).map(|q| q.to_string()).unwrap_or_default()
}

async fn gone<K: sheaf_types::Kind>(c: &Cluster, name: &str) {
    until(&format!("{} {name} gone", K::KIND), || async {
        c.api.get(Gvr::of::<K>(), Some("default"), name).await.ok().filter(|v| v.is_none()).map(|_| ())
    })
    .await
}

#[tokio::test]
async fn claims_become_volumes_with_their_class() -> anyhow::Result<()> {
    let c = cluster().await?;
    // Unknown parameters are refused with the list of known ones.
    let e = class(&c, "bad", json!({"parameters": {"numberOfReplica": "2"}})).await.expect_err("unknown parameter");
    let e = e.to_string();
    assert!(e.contains("parameters.numberOfReplica") && e.contains("numberOfReplicas, staleReplicaTimeout"), "{e}");

    class(
        &c,
        "fast",
        json!({"parameters": {"numberOfReplicas": "2", "staleReplicaTimeout": "30", "diskSelector": "ssd",
            "nodeSelector": "zone=a", "frontend": "vhost-user"}}),
    )
    .await?;
    claim(&c, "data", "5000", json!({"storageClassName": "fast"})).await?;
    let p = bound(&c, "data").await;
    let v = volume(&c, "data").await.expect("volume");
    assert_eq!(v.size_bytes(), 8192, "the request rounded up to 4Ki");
    assert_eq!(v.spec.number_of_replicas, Some(2));
    assert_eq!(v.spec.stale_replica_timeout.as_deref(), Some("30m"));
    assert_eq!(v.spec.disk_selector, ["ssd"]);
    assert_eq!(v.spec.node_selector.get("zone").map(String::as_str), Some("a"));
    assert_eq!(v.spec.frontend.as_deref(), Some("vhost-user"));
    let owner = &v.metadata.owner_references[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("PersistentVolumeClaim", Some(true)));
    assert_eq!(Some(owner.uid.clone()), p.metadata.uid);
    assert_eq!(p.spec.volume_name.as_deref(), Some("data"));
    assert_eq!(capacity(&p), "8Ki");
    assert_eq!(p.status.as_ref().map(|s| s.access_modes.clone()), Some(vec!["ReadWriteOnce".to_string()]));

    // No class: the default one (created at start-up), recorded.
    claim(&c, "plain", "1Gi", json!({})).await?;
    let p = bound(&c, "plain").await;
    assert_eq!(p.spec.storage_class_name.as_deref(), Some("sheaf"));
    assert_eq!(volume(&c, "plain").await.and_then(|v| v.spec.number_of_replicas), Some(3));

    // A class that does not exist.
    claim(&c, "lost-class", "1Gi", json!({"storageClassName": "nope"})).await?;
    let m = pending(&c, "lost-class", "StorageClassNotFound").await;
    assert!(m.contains("\"nope\" does not exist"), "{m}");

    // A Volume of that name that is not the claim's: Pending until bound
    // by name, then adopted.
    c.api
        .create(
            Gvr::of::<Volume>(),
            Some("default"),
            json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume",
                "metadata": {"name": "old", "namespace": "default"}, "spec": {"size": "2Gi"}}),
        )
        .await?;
    claim(&c, "old", "1Gi", json!({})).await?;
    let m = pending(&c, "old", "VolumeExists").await;
    assert!(m.contains("spec.volumeName to old"), "{m}");
    assert!(volume(&c, "old").await.is_some_and(|v| v.metadata.owner_references.is_empty()));
    c.api
        .merge_patch(
            Gvr::of::<PersistentVolumeClaim>(),
            Some("default"),
            "old",
            json!({"spec": {"volumeName": "old"}}),
            false,
        )
        .await?;
    let p = bound(&c, "old").await;
    assert_eq!(capacity(&p), "2Gi", "the capacity is the volume's");
    let v = volume(&c, "old").await.expect("volume");
    assert_eq!(v.metadata.owner_references.first().map(|o| o.uid.clone()), p.metadata.uid);

    // Delete: the volume goes with the claim; Retain: it stays.
    c.api.delete(Gvr::of::<PersistentVolumeClaim>(), Some("default"), "plain").await?;
    gone::<Volume>(&c, "plain").await;
    class(&c, "keep", json!({"reclaimPolicy": "Retain"})).await?;
    claim(&c, "kept", "1Gi", json!({"storageClassName": "keep"})).await?;
    bound(&c, "kept").await;
    assert!(volume(&c, "kept").await.is_some_and(|v| v.metadata.owner_references.is_empty()));
    c.api.delete(Gvr::of::<PersistentVolumeClaim>(), Some("default"), "kept").await?;
    gone::<PersistentVolumeClaim>(&c, "kept").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(volume(&c, "kept").await.is_some(), "a retained volume stays");
    // A new claim binds it by name.
    claim(&c, "kept", "1Gi", json!({"storageClassName": "keep", "volumeName": "kept"})).await?;
    bound(&c, "kept").await;

    // WaitForFirstConsumer: provisioned once a VM names the claim.
    class(&c, "lazy", json!({"volumeBindingMode": "WaitForFirstConsumer"})).await?;
    claim(&c, "later", "1Gi", json!({"storageClassName": "lazy"})).await?;
    let m = pending(&c, "later", "WaitForFirstConsumer").await;
    assert!(m.contains("waiting for a VirtualMachine"), "{m}");
    assert!(volume(&c, "later").await.is_none());
    let vols = json!([{"name": "root", "persistentVolumeClaim": {"claimName": "later"}}]);
    c.api.create(Gvr::of::<VirtualMachine>(), Some("default"), vm_body("user", vols, json!({}), json!({}))).await?;
    bound(&c, "later").await;
    c.vmi_exists("user").await;

    // A claim's spec is fixed but for growth.
    let e = c
        .api
        .merge_patch(
            Gvr::of::<PersistentVolumeClaim>(),
            Some("default"),
            "data",
            json!({"spec": {"accessModes": ["ReadWriteMany"]}}),
            false,
        )
        .await
        .expect_err("immutable");
    assert_eq!(e.code, 422, "{e}");
    assert!(e.message.contains("immutable"), "{e}");
    Ok(())
}

async fn image(c: &Cluster, name: &str) -> anyhow::Result<()> {
    let body = json!({"apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineImage",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"displayName": name, "sourceType": "download", "url": "https://example.com/debian.qcow2"}});
    c.api.create(Gvr::of::<VirtualMachineImage>(), Some("default"), body).await?;
    Ok(())
}

#[tokio::test]
async fn image_backed_claims_wait_for_the_image() -> anyhow::Result<()> {
    let c = cluster().await?;
    image(&c, "debian").await?;
    class(&c, "debian-class", json!({"parameters": {"image": "default/debian", "numberOfReplicas": "1"}})).await?;
    claim(&c, "small", "1Gi", json!({"storageClassName": "debian-class"})).await?;
    let m = pending(&c, "small", "ImageNotReady").await;
    assert!(m.contains("image default/debian is not imported yet"), "{m}");
    assert!(volume(&c, "small").await.is_none());

    // Imported, as the image controller reports it: 2Gi of disk.
    let status = json!({"status": {"virtualSize": 2i64 << 30, "progress": 100,
        "conditions": [{"type": "Imported", "status": "True", "reason": "Imported"}]}});
    c.api.merge_patch(Gvr::of::<VirtualMachineImage>(), Some("default"), "debian", status, true).await?;
    let m = pending(&c, "small", "RequestTooSmall").await;
    assert!(m.contains("at least") && m.contains("storage: 2Gi"), "{m}");
    assert!(volume(&c, "small").await.is_none(), "never grown silently");

    claim(&c, "big", "3Gi", json!({"storageClassName": "debian-class"})).await?;
    bound(&c, "big").await;
    let v = volume(&c, "big").await.expect("volume");
    assert_eq!(v.spec.image.as_deref(), Some("default/debian"));
    assert_eq!(v.spec.number_of_replicas, Some(1));

    // Harvester's way: the annotation on a claim of any class.
    let mut body = claim_body("annotated", "2Gi", json!({}));
    body["metadata"]["annotations"] = json!({"harvesterhci.io/imageId": "default/debian"});
    c.api.create(Gvr::of::<PersistentVolumeClaim>(), Some("default"), body).await?;
    bound(&c, "annotated").await;
    assert_eq!(volume(&c, "annotated").await.and_then(|v| v.spec.image).as_deref(), Some("default/debian"));
    let mut body = claim_body("missing-image", "2Gi", json!({}));
    body["metadata"]["annotations"] = json!({"harvesterhci.io/imageId": "default/nothing"});
    c.api.create(Gvr::of::<PersistentVolumeClaim>(), Some("default"), body).await?;
    let m = pending(&c, "missing-image", "ImageNotFound").await;
    assert!(m.contains("default/nothing does not exist"), "{m}");
    Ok(())
}

#[tokio::test]
async fn clones_snapshots_and_growth() -> anyhow::Result<()> {
    let c = cluster().await?;
    let snaps = Typed::<VolumeSnapshot>::new(c.api.as_ref());
    claim(&c, "base", "1Gi", json!({})).await?;
    bound(&c, "base").await;
    c.api
        .merge_patch(Gvr::of::<Volume>(), Some("default"), "base", json!({"spec": {"image": "default/debian"}}), false)
        .await
        .expect_err("a volume's image cannot change");

    // Too small a clone waits, naming the minimum.
    let src = json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": "base"}});
    claim(&c, "tiny-copy", "512Mi", src.clone()).await?;
    let m = pending(&c, "tiny-copy", "RequestTooSmall").await;
    assert!(m.contains("at least its size, 1Gi"), "{m}");

    // A clone: a snapshot of the source, then a volume from it.
    claim(&c, "copy", "2Gi", src).await?;
    let p = until("the clone's snapshot", || async {
        let p = get_claim(&c, "copy").await?;
        let name = format!("clone-{}", p.metadata.uid.as_deref()?);
        snaps.get(Some("default"), &name).await.ok().flatten().map(|s| (p, s))
    })
    .await;
    let (p, snap) = p;
    let snap_name = snap.metadata.name.clone().unwrap_or_default();
    assert_eq!(snap.spec.volume_name, "base");
    assert_eq!(snap.metadata.owner_references.first().map(|o| o.uid.clone()), p.metadata.uid);
    pending(&c, "copy", "Cloning").await;
    assert!(volume(&c, "copy").await.is_none());
    // What the agent reports once taken.
    snaps
        .merge_patch(Some("default"), &snap_name, json!({"status": {"readyToUse": true, "size": 1i64 << 30}}), true)
        .await?;
    bound(&c, "copy").await;
    let v = volume(&c, "copy").await.expect("clone volume");
    assert_eq!(v.spec.from_snapshot.as_deref(), Some(snap_name.as_str()));
    assert_eq!(v.size_bytes(), 2 << 30);
    // Copied: the temporary snapshot goes.
    c.api
        .merge_patch(Gvr::of::<Volume>(), Some("default"), "copy", json!({"status": {"restoredFrom": snap_name}}), true)
        .await?;
    gone::<VolumeSnapshot>(&c, &snap_name).await;

    // From a sheaf.io VolumeSnapshot.
    let s1 = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "VolumeSnapshot",
        "metadata": {"name": "s1", "namespace": "default", "labels": {"sheaf.io/volume": "base"}},
        "spec": {"volumeName": "base"}});
    c.api.create(Gvr::of::<VolumeSnapshot>(), Some("default"), s1).await?;
    claim(
        &c,
        "restored",
        "1Gi",
        json!({"dataSource": {"apiGroup": "sheaf.io", "kind": "VolumeSnapshot", "name": "s1"}}),
    )
    .await?;
    pending(&c, "restored", "SourceNotReady").await;
    snaps.merge_patch(Some("default"), "s1", json!({"status": {"readyToUse": true, "size": 1i64 << 30}}), true).await?;
    bound(&c, "restored").await;
    assert_eq!(volume(&c, "restored").await.and_then(|v| v.spec.from_snapshot).as_deref(), Some("s1"));

    // A claim whose volume has a snapshot is deleted; the volume goes to
    // the trash (kept, with its purge time) until its snapshot is gone.
    c.api.delete(Gvr::of::<PersistentVolumeClaim>(), Some("default"), "base").await?;
    let mut trashed = None;
    for _ in 0..100 {
        trashed =
            volume(&c, "base").await.filter(|v| v.trashed() && v.status.as_ref().is_some_and(|s| s.purge_at.is_some()));
        if trashed.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let trashed = trashed.expect("the volume is kept in the trash with a purge time");
    let deleted = trashed.metadata.deletion_timestamp.expect("deleted").0;
    let purge_at = trashed.status.and_then(|s| s.purge_at).expect("purgeAt").0;
    assert_eq!((purge_at - deleted).num_seconds(), 3600);
    snaps.delete(Some("default"), "s1").await?;
    gone::<VolumeSnapshot>(&c, "s1").await;
    gone::<Volume>(&c, "base").await;

    // Growth: the volume grows; capacity follows what the agent reports.
    c.api
        .merge_patch(Gvr::of::<Volume>(), Some("default"), "restored", json!({"status": {"size": 1i64 << 30}}), true)
        .await?;
    c.api
        .merge_patch(
            Gvr::of::<PersistentVolumeClaim>(),
            Some("default"),
            "restored",
            json!({"spec": {"resources": {"requests": {"storage": "3Gi"}}}}),
            false,
        )
        .await?;
    until("the volume grown", || async { volume(&c, "restored").await.filter(|v| v.size_bytes() == 3 << 30) }).await;
    let resizing = until("Resizing", || async {
        let p = get_claim(&c, "restored").await?;
        p.status?.conditions.into_iter().find(|c| c.type_ == "Resizing" && c.status == "True")
    })
    .await;
    assert!(resizing.message.unwrap_or_default().contains("to 3Gi"));
    c.api
        .merge_patch(Gvr::of::<Volume>(), Some("default"), "restored", json!({"status": {"size": 3i64 << 30}}), true)
        .await?;
    until("capacity 3Gi", || async { get_claim(&c, "restored").await.filter(|p| capacity(p) == "3Gi") }).await;
    let e = c
        .api
        .merge_patch(
            Gvr::of::<PersistentVolumeClaim>(),
            Some("default"),
            "restored",
            json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}}),
            false,
        )
        .await
        .expect_err("shrink");
    assert!(e.message.contains("cannot shrink"), "{e}");

    // A class that does not allow expansion: refused, nothing changes.
    class(&c, "fixed", json!({"allowVolumeExpansion": false})).await?;
    claim(&c, "fixed-size", "1Gi", json!({"storageClassName": "fixed"})).await?;
    bound(&c, "fixed-size").await;
    let e = c
        .api
        .merge_patch(
            Gvr::of::<PersistentVolumeClaim>(),
            Some("default"),
            "fixed-size",
            json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}}),
            false,
        )
        .await
        .expect_err("no expansion");
    assert_eq!(e.code, 403, "{e}");
    assert!(e.message.contains("StorageClass fixed does not set allowVolumeExpansion: true"), "{e}");
    let p = get_claim(&c, "fixed-size").await.expect("claim");
    assert_eq!(p.request_bytes(), 1 << 30);
    assert_eq!(volume(&c, "fixed-size").await.map(|v| v.size_bytes()), Some(1 << 30));
    Ok(())
}

fn vm_body(name: &str, volumes: Value, extra_spec: Value, annotations: Value) -> Value {
    let mut spec = template_spec("128Mi");
    spec["volumes"] = volumes;
    let mut body = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"runStrategy": "Always", "template": {"spec": spec}}});
    if let (Some(s), Value::Object(extra)) = (body.get_mut("spec").and_then(Value::as_object_mut), extra_spec) {
        s.extend(extra);
    }
    body
}

fn vm_condition(vm: &VirtualMachine, type_: &str) -> Option<(String, String, String)> {
    let c = vm.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
}

#[tokio::test]
async fn vms_make_their_claims_and_wait_for_them() -> anyhow::Result<()> {
    let c = cluster().await?;
    // dataVolumeTemplates: a claim per template, owned by the VM; the VMI
    // waits for it.
    let templates = json!({"dataVolumeTemplates": [
        {"metadata": {"name": "web-root", "labels": {"app": "web"}},
         "spec": {"source": {"blank": {}},
                  "storage": {"resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "later"}}}]});
    let vols = json!([{"name": "root", "dataVolume": {"name": "web-root"}}]);
    c.api.create(Gvr::of::<VirtualMachine>(), Some("default"), vm_body("web", vols, templates, json!({}))).await?;
    c.wait_printable("web", "Provisioning").await;
    // The claim's reason reaches the VM's condition once the claim
    // controller has written it.
    let vm = c
        .wait_vm("web", "the claim's reason in DataVolumesReady", |vm| {
            vm_condition(vm, "DataVolumesReady").is_some_and(|(_, _, m)| m.contains("\"later\" does not exist"))
        })
        .await;
    let (status, reason, message) = vm_condition(&vm, "DataVolumesReady").expect("condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Provisioning"));
    assert!(message.contains("claim web-root is Pending") && message.contains("\"later\" does not exist"), "{message}");
    let p = get_claim(&c, "web-root").await.expect("claim");
    assert_eq!(p.metadata.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(p.metadata.owner_references.first().map(|o| o.uid.clone()), vm.metadata.uid);
    c.vmi_stays("web", Duration::from_millis(300), "absent", |v| v.is_none()).await;
    class(&c, "later", json!({})).await?;
    c.vmi_exists("web").await;
    let vm = c
        .wait_vm("web", "DataVolumesReady True", |vm| {
            vm_condition(vm, "DataVolumesReady").is_some_and(|(s, _, _)| s == "True")
        })
        .await;
    assert_ne!(common::printable(&vm), "Provisioning");

    // A source Sheaf does not import: a clear condition, no claim.
    let templates = json!({"dataVolumeTemplates": [
        {"metadata": {"name": "http-root"},
         "spec": {"source": {"http": {"url": "https://example.com/disk.img"}},
                  "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}]});
    let vols = json!([{"name": "root", "dataVolume": {"name": "http-root"}}]);
    c.api.create(Gvr::of::<VirtualMachine>(), Some("default"), vm_body("http", vols, templates, json!({}))).await?;
    let vm = c.wait_printable("http", "DataVolumeError").await;
    let (_, _, message) = vm_condition(&vm, "DataVolumesReady").expect("condition");
    assert!(message.contains("source http is not supported") && message.contains("VirtualMachineImage"), "{message}");
    assert!(get_claim(&c, "http-root").await.is_none());

    // Harvester's annotation: claims not owned by the VM; bad JSON is said.
    let templates = json!([
        {"metadata": {"name": "h-root"}, "spec": {"accessModes": ["ReadWriteMany"], "volumeMode": "Block",
            "resources": {"requests": {"storage": "1Gi"}}}},
        {"metadata": {"name": "h-data"}, "spec": {"accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}}}}]);
    let vols = json!([{"name": "root", "persistentVolumeClaim": {"claimName": "h-root"}},
                      {"name": "data", "persistentVolumeClaim": {"claimName": "h-data"}}]);
    let annotations = json!({"harvesterhci.io/volumeClaimTemplates": templates.to_string()});
    c.api.create(Gvr::of::<VirtualMachine>(), Some("default"), vm_body("harv", vols, json!({}), annotations)).await?;
    c.vmi_exists("harv").await;
    for n in ["h-root", "h-data"] {
        let p = bound(&c, n).await;
        assert!(p.metadata.owner_references.is_empty(), "{n} is not owned by the VM");
    }
    let vols = json!([{"name": "root", "persistentVolumeClaim": {"claimName": "x"}}]);
    let annotations = json!({"harvesterhci.io/volumeClaimTemplates": "[{\"metadata\":"});
    c.api.create(Gvr::of::<VirtualMachine>(), Some("default"), vm_body("broken", vols, json!({}), annotations)).await?;
    let vm = c.wait_printable("broken", "DataVolumeError").await;
    let (_, _, message) = vm_condition(&vm, "DataVolumesReady").expect("condition");
    assert!(message.contains("is not a JSON list of PersistentVolumeClaims"), "{message}");

    // A claim in use by a VMI cannot be deleted; the refusal names the VM.
    let e = c.api.delete(Gvr::of::<PersistentVolumeClaim>(), Some("default"), "h-data").await.expect_err("in use");
    assert_eq!(e.code, 409, "{e}");
    assert!(e.message.contains("claim h-data is in use by VirtualMachineInstance harv"), "{e}");
    assert!(e.message.contains("sheaf vm stop harv"), "{e}");

    // Deleting the VMs: the templates' claim goes; of the annotation's,
    // only the one listed for removal.
    c.api
        .merge_patch(
            Gvr::of::<VirtualMachine>(),
            Some("default"),
            "harv",
            json!({"metadata": {"annotations": {"harvesterhci.io/removedPersistentVolumeClaims": "h-data"}}}),
            false,
        )
        .await?;
    c.api.delete(Gvr::of::<VirtualMachine>(), Some("default"), "harv").await?;
    c.api.delete(Gvr::of::<VirtualMachine>(), Some("default"), "web").await?;
    gone::<PersistentVolumeClaim>(&c, "h-data").await;
    gone::<Volume>(&c, "h-data").await;
    gone::<PersistentVolumeClaim>(&c, "web-root").await;
    gone::<Volume>(&c, "web-root").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(get_claim(&c, "h-root").await.is_some(), "a claim not listed stays");
    assert!(volume(&c, "h-root").await.is_some());
    Ok(())
}
