//! The claims that go with a VirtualMachine when it is deleted.
//!
//! Claims of the VM's `spec.dataVolumeTemplates` are owned by the VM (the
//! VM controller makes them so) and go with it. Others stay, except those
//! Harvester's annotation `harvesterhci.io/removedPersistentVolumeClaims`
//! lists (comma-separated claim names): when the VM's DELETE is accepted,
//! each listed claim of its namespace gets an owner reference to the VM,
//! so that the garbage collector deletes it once the VM is gone, after its
//! instance has stopped (the claim's deletion is refused while the
//! instance uses it, and retried; see [`crate::protection`]).
//!
//! `DELETE .../virtualmachines/NAME?removedDisks=a,b` sets the annotation
//! from the query before the deletion (`sheaf vm delete NAME
//! --remove-disks a,b`). Listed names that are not claims of the
//! namespace are ignored.

use serde_json::{json, Value};
use sheaf_types::claim::PersistentVolumeClaim;
use sheaf_types::kubevirt::VirtualMachine;
use sheaf_types::{Kind, ResourceType};

use crate::error::{ApiError, ApiResult};
use crate::objects::{name_of, namespace_of, Objects, WriteOptions};
use crate::patch::PatchType;

/// Harvester's VM annotation: comma-separated claims deleted with the VM.
pub const REMOVED_CLAIMS_ANNOTATION: &str = "harvesterhci.io/removedPersistentVolumeClaims";
/// The query parameter of a VM's DELETE that sets the annotation.
pub const REMOVED_DISKS_PARAM: &str = "removedDisks";

fn is_vm(rt: &ResourceType) -> bool {
    rt.group == VirtualMachine::GROUP && rt.kind == VirtualMachine::KIND
}

/// The claim names of a comma-separated list.
pub fn claim_names(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect()
}

/// Before a VM's DELETE: records `removedDisks` from the query in the
/// VM's annotation. Names are checked: a bad one is a 400 and nothing is
/// deleted.
pub async fn record_removed_disks(
    objects: &Objects,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    removed: Option<&String>,
) -> ApiResult<()> {
    let Some(list) = removed else { return Ok(()) };
    if !is_vm(rt) {
        return Err(ApiError::bad_request(format!(
            "{REMOVED_DISKS_PARAM} applies to the deletion of a VirtualMachine, not of {}",
            rt.plural
        )));
    }
    let names = claim_names(list);
    for n in &names {
        if let Err(e) = sheaf_types::validation::dns1123_subdomain(n) {
            return Err(ApiError::bad_request(format!("{REMOVED_DISKS_PARAM}: {n:?} is not a claim name: {e}")));
        }
    }
    let patch = json!({"metadata": {"annotations": {REMOVED_CLAIMS_ANNOTATION: names.join(",")}}});
    objects.patch(rt, ns, name, PatchType::Merge, patch, false, false, &WriteOptions::default()).await?;
    Ok(())
}

/// When a VM's deletion is accepted: the claims its annotation lists get
/// an owner reference to it.
pub async fn before_delete(objects: &Objects, rt: &ResourceType, vm: &Value) -> ApiResult<()> {
    if !is_vm(rt) {
        return Ok(());
    }
    let Some(list) = vm.pointer("/metadata/annotations").and_then(|a| a.get(REMOVED_CLAIMS_ANNOTATION)) else {
        return Ok(());
    };
    let Some(pvc_rt) = objects.registry.find(
        PersistentVolumeClaim::GROUP,
        PersistentVolumeClaim::VERSION,
        PersistentVolumeClaim::PLURAL,
    ) else {
        return Ok(());
    };
    let ns = namespace_of(vm);
    let uid = vm.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    let owner = json!({"apiVersion": "kubevirt.io/v1", "kind": VirtualMachine::KIND, "name": name_of(vm), "uid": uid});
    for claim in claim_names(list.as_str().unwrap_or_default()) {
        let pvc = match objects.get(pvc_rt, ns, &claim).await {
            Ok(p) => p,
            Err(e) if e.code == http::StatusCode::NOT_FOUND => continue,
            Err(e) => return Err(e),
        };
        let mut refs = pvc.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
        if refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)) {
            continue;
        }
        refs.push(owner.clone());
        let rv = pvc.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rv}});
        objects.patch(pvc_rt, ns, &claim, PatchType::Merge, patch, false, false, &WriteOptions::default()).await?;
        tracing::info!(vm = name_of(vm), claim = %claim, "claim goes with the VM");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(claim_names(" a,b ,,c"), ["a", "b", "c"]);
        assert!(claim_names("").is_empty());
    }
}
