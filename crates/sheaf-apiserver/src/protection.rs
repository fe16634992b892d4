//! Deletion protection: the DELETE of an object that something still uses
//! is refused with a 409 `Status` that names the user and says what to do,
//! and nothing is changed. Two kinds are protected:
//!
//! - a Sheaf Volume (`sheaf.io`) while a VirtualMachineInstance uses it, by
//!   its spec or as the instance its engine serves
//!   ([`sheaf_types::storage::users_of`]);
//! - a PersistentVolumeClaim while a VirtualMachineInstance uses it (the
//!   same check, on the claim's Volume, which has the claim's name).
//!
//! Why a refusal and not Kubernetes' pvc-protection finalizer (the delete
//! is accepted, the Volume shows Terminating and goes when its user is
//! gone)? A Volume is the data itself, not a claim on it: a deferred
//! delete would destroy the disk at the next stop of the VM, often long
//! after the command was forgotten (a restart to change the VM's memory
//! would lose its disk, and the VM would not start again). Refusing says
//! at once, in the command's own output, which VM holds the volume and how
//! to stop it; the user repeats the delete when that is what they want.
//!
//! The trash: a Volume deleted while it has VolumeSnapshots (directly, or
//! with its claim, its VM, its namespace) gets the finalizer
//! [`TRASH_FINALIZER`] in the same write that marks it deleted
//! ([`finalizer_on_delete`]). VolumeSnapshots are not owned by their
//! Volume (they name it by `spec.volumeName` and the `sheaf.io/volume`
//! label), and their data lives in the Volume's replicas: without the
//! finalizer the cascade would remove the replicas and leave the snapshots
//! as objects whose data is gone. With it, the volume stays, `Trashed`,
//! its replicas served read-only so that its snapshots can be cloned out
//! or backed up, until the trash controller purges it
//! (`sheaf_controllers::trash`).
//!
//! The check runs in [`crate::objects::Objects::delete`], so it covers
//! every path: kubectl, `sheaf volume delete`, client libraries, dry runs,
//! and the garbage collector's cascading and namespace deletions. Those
//! retry on a later pass, so a deleted namespace is emptied in order: its
//! VMs and VMIs go first (their guests are shut down), then its volumes.
//! The check and the delete are one compare-and-swap on the Volume's
//! revision: an agent reporting an attach in between makes the delete
//! start over, and check again. A terminating namespace leaves a Volume's
//! Replicas to the cascade ([`protects_dependents`]), so they never go
//! before the Volume does.

use serde_json::Value;
use sheaf_types::claim::PersistentVolumeClaim;
use sheaf_types::kubevirt::VirtualMachineInstance;
use sheaf_types::meta::{StatusCause, StatusDetails};
use sheaf_types::storage::{self, users_of, Volume, VolumeSnapshot, TRASH_FINALIZER};
use sheaf_types::{Kind, ResourceType};

use crate::error::{ApiError, ApiResult};
use crate::objects::{namespace_of, ListParams, Objects};

/// Refuses the deletion of `obj` (of kind `rt`, as stored) while it is in
/// use.
pub async fn check_delete(objects: &Objects, rt: &ResourceType, obj: &Value) -> ApiResult<()> {
    if rt.group == storage::GROUP && rt.kind == Volume::KIND {
        return check_volume(objects, obj).await;
    }
    if rt.group.is_empty() && rt.kind == PersistentVolumeClaim::KIND {
        return check_claim(objects, obj).await;
    }
    if rt.group == "harvesterhci.io" && rt.kind == "VirtualMachineTemplateVersion" {
        return crate::templates::check_version_delete(objects, obj).await;
    }
    crate::networks::check_delete(objects, rt, obj).await
}

/// Whether the dependents of an object of kind `rt` must go only after it
/// (by the garbage collector's cascade), never before: a Volume's Replicas
/// are its data.
pub fn protects_dependents(rt: &ResourceType) -> bool {
    rt.group == storage::GROUP && rt.kind == Volume::KIND
}

/// Every object of kind `K` in `ns`, decoded.
pub(crate) async fn list_of<K: Kind>(objects: &Objects, ns: Option<&str>) -> ApiResult<Vec<K>> {
    let Some(rt) = objects.registry.find(K::GROUP, K::VERSION, K::PLURAL) else { return Ok(Vec::new()) };
    let (items, _, _) = objects.list(rt, ns, &ListParams::default()).await?;
    Ok(items.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect())
}

async fn check_volume(objects: &Objects, obj: &Value) -> ApiResult<()> {
    let Ok(vol) = serde_json::from_value::<Volume>(obj.clone()) else { return Ok(()) };
    let ns = namespace_of(obj);
    let vmis: Vec<VirtualMachineInstance> = list_of(objects, ns).await?;
    let users = users_of(&vol, &vmis);
    if users.is_empty() {
        return Ok(());
    }
    Err(in_use(&vol, Volume::KIND, ns, &users))
}

/// A claim: refused while its volume is in use.
async fn check_claim(objects: &Objects, obj: &Value) -> ApiResult<()> {
    let Ok(pvc) = serde_json::from_value::<PersistentVolumeClaim>(obj.clone()) else { return Ok(()) };
    let ns = namespace_of(obj);
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let Some(vol_rt) = objects.registry.find(storage::GROUP, storage::VERSION, Volume::PLURAL) else { return Ok(()) };
    let vol = match objects.get(vol_rt, ns, &name).await {
        Ok(v) => serde_json::from_value::<Volume>(v).ok(),
        Err(e) if e.code == http::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    };
    // No Volume yet: instances naming the claim still hold it.
    let vol = vol.unwrap_or_else(|| Volume {
        metadata: sheaf_types::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        ..Default::default()
    });
    let vmis: Vec<VirtualMachineInstance> = list_of(objects, ns).await?;
    let users = users_of(&vol, &vmis);
    if !users.is_empty() {
        return Err(in_use(&vol, PersistentVolumeClaim::KIND, ns, &users));
    }
    Ok(())
}

/// The finalizer that deleting `obj` (of kind `rt`) adds: [`TRASH_FINALIZER`]
/// for a Volume that has VolumeSnapshots (not being deleted themselves).
pub async fn finalizer_on_delete(objects: &Objects, rt: &ResourceType, obj: &Value) -> ApiResult<Option<&'static str>> {
    if rt.group != storage::GROUP || rt.kind != Volume::KIND {
        return Ok(None);
    }
    let ns = namespace_of(obj);
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let snaps: Vec<VolumeSnapshot> = list_of(objects, ns).await?;
    let has = snaps.iter().any(|s| s.spec.volume_name == name && s.metadata.deletion_timestamp.is_none());
    Ok(has.then_some(TRASH_FINALIZER))
}

fn ns_flag(ns: Option<&str>) -> String {
    match ns {
        Some(n) if n != "default" => format!(" -n {n}"),
        _ => String::new(),
    }
}

/// The 409 for a volume (or claim: `kind`) in use by `users`.
fn in_use(vol: &Volume, kind: &str, ns: Option<&str>, users: &[&VirtualMachineInstance]) -> ApiError {
    let name = vol.metadata.name.clone().unwrap_or_default();
    let claim = kind == PersistentVolumeClaim::KIND;
    let ns_flag = ns_flag(ns);
    let mut who = Vec::new();
    let mut todo = Vec::new();
    for vmi in users {
        let vmi_name = vmi.metadata.name.clone().unwrap_or_default();
        let node = vmi.status.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty());
        who.push(match node {
            Some(n) => format!("{vmi_name} (on node {n})"),
            None => vmi_name.clone(),
        });
        let vm = vmi.metadata.owner_references.iter().find(|o| o.kind == "VirtualMachine").map(|o| o.name.clone());
        todo.push(match vm {
            Some(vm) => format!("sheaf vm stop {vm}{ns_flag}"),
            None => format!("kubectl delete vmi {vmi_name}{ns_flag}"),
        });
    }
    let plural = if users.len() > 1 { "VirtualMachineInstances" } else { "VirtualMachineInstance" };
    let what = if claim { "claim" } else { "volume" };
    let message = format!(
        "{what} {name} is in use by {plural} {}: stop or delete the virtual machine first ({}), then delete \
         the {what}; nothing was deleted",
        who.join(", "),
        todo.join("; ")
    );
    let causes = users
        .iter()
        .map(|vmi| StatusCause {
            reason: Some("VolumeInUse".into()),
            message: Some(format!(
                "used by VirtualMachineInstance {}",
                vmi.metadata.name.as_deref().unwrap_or_default()
            )),
            field: None,
        })
        .collect();
    ApiError {
        details: Some(Box::new(StatusDetails {
            name: Some(name),
            group: Some(if claim { String::new() } else { storage::GROUP.into() }),
            kind: Some(if claim { PersistentVolumeClaim::PLURAL } else { Volume::PLURAL }.into()),
            causes,
            ..Default::default()
        })),
        ..ApiError::new(http::StatusCode::CONFLICT, "Conflict", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_vm_and_what_to_do() {
        let vol: Volume = serde_json::from_value(serde_json::json!({"metadata": {"name": "data"}})).expect("volume");
        let owned: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "ownerReferences": [
                {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "web", "uid": "u1"}]},
            "status": {"nodeName": "node1"},
        }))
        .expect("vmi");
        let bare: VirtualMachineInstance =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "test"}})).expect("vmi");
        let e = in_use(&vol, Volume::KIND, Some("team"), &[&owned, &bare]);
        assert_eq!(e.code, http::StatusCode::CONFLICT);
        assert_eq!(
            e.message,
            "volume data is in use by VirtualMachineInstances web (on node node1), test: stop or delete the virtual \
             machine first (sheaf vm stop web -n team; kubectl delete vmi test -n team), then delete the volume; \
             nothing was deleted"
        );
        let e = in_use(&vol, Volume::KIND, Some("default"), &[&owned]);
        assert!(e.message.contains("(sheaf vm stop web)"), "{}", e.message);
        let e = in_use(&vol, PersistentVolumeClaim::KIND, Some("default"), &[&owned]);
        assert!(e.message.starts_with("claim data is in use by VirtualMachineInstance web"), "{}", e.message);
        assert!(e.message.contains("then delete the claim"), "{}", e.message);
    }
}
