//! Deletion protection: the DELETE of an object that something still uses
//! is refused with a 409 `Status` that names the user and says what to do,
//! and nothing is changed. Today one kind is protected: a Sheaf Volume
//! (`sheaf.io`) while a VirtualMachineInstance uses it, by its spec or as
//! the instance its engine serves ([`sheaf_types::storage::users_of`]).
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
use sheaf_types::kubevirt::VirtualMachineInstance;
use sheaf_types::meta::{StatusCause, StatusDetails};
use sheaf_types::storage::{self, users_of, Volume};
use sheaf_types::{Kind, ResourceType};

use crate::error::{ApiError, ApiResult};
use crate::objects::{namespace_of, ListParams, Objects};

/// Refuses the deletion of `obj` (of kind `rt`, as stored) while it is in
/// use.
pub async fn check_delete(objects: &Objects, rt: &ResourceType, obj: &Value) -> ApiResult<()> {
    if rt.group == storage::GROUP && rt.kind == Volume::KIND {
        return check_volume(objects, obj).await;
    }
    Ok(())
}

/// Whether the dependents of an object of kind `rt` must go only after it
/// (by the garbage collector's cascade), never before: a Volume's Replicas
/// are its data.
pub fn protects_dependents(rt: &ResourceType) -> bool {
    rt.group == storage::GROUP && rt.kind == Volume::KIND
}

async fn check_volume(objects: &Objects, obj: &Value) -> ApiResult<()> {
    let Ok(vol) = serde_json::from_value::<Volume>(obj.clone()) else { return Ok(()) };
    let vmi = (VirtualMachineInstance::GROUP, VirtualMachineInstance::VERSION, VirtualMachineInstance::PLURAL);
    let Some(vmi_rt) = objects.registry.find(vmi.0, vmi.1, vmi.2) else { return Ok(()) };
    let ns = namespace_of(obj);
    let (items, _, _) = objects.list(vmi_rt, ns, &ListParams::default()).await?;
    let vmis: Vec<VirtualMachineInstance> = items.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect();
    let users = users_of(&vol, &vmis);
    if users.is_empty() {
        return Ok(());
    }
    Err(in_use(&vol, ns, &users))
}

/// The 409 for a volume in use by `users`.
fn in_use(vol: &Volume, ns: Option<&str>, users: &[&VirtualMachineInstance]) -> ApiError {
    let name = vol.metadata.name.clone().unwrap_or_default();
    let ns_flag = match ns {
        Some(n) if n != "default" => format!(" -n {n}"),
        _ => String::new(),
    };
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
    let message = format!(
        "volume {name} is in use by {plural} {}: stop or delete the virtual machine first ({}), then delete \
         the volume; nothing was deleted",
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
            group: Some(storage::GROUP.into()),
            kind: Some(Volume::PLURAL.into()),
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
        let e = in_use(&vol, Some("team"), &[&owned, &bare]);
        assert_eq!(e.code, http::StatusCode::CONFLICT);
        assert_eq!(
            e.message,
            "volume data is in use by VirtualMachineInstances web (on node node1), test: stop or delete the virtual \
             machine first (sheaf vm stop web -n team; kubectl delete vmi test -n team), then delete the volume; \
             nothing was deleted"
        );
        let e = in_use(&vol, Some("default"), &[&owned]);
        assert!(e.message.contains("(sheaf vm stop web)"), "{}", e.message);
    }
}
