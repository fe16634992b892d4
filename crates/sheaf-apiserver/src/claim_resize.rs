//! A PersistentVolumeClaim's `resources.requests.storage` grows only when
//! its StorageClass allows expansion (`allowVolumeExpansion: true`), as
//! Kubernetes' admission says: otherwise the update is refused (403) and
//! nothing is written. Shrinking is refused by the kind's own validation.
//! A class switched off after a request grew is the claim controller's
//! concern: its `Resizing` condition says why the volume stays.

use serde_json::Value;
use sheaf_types::claim::{PersistentVolumeClaim, StorageClass};
use sheaf_types::{Kind, ResourceType};

use crate::error::{ApiError, ApiResult};
use crate::objects::Objects;

/// Refuses `new` (a claim replacing `old`) when it asks for more storage
/// and its class does not allow that.
pub async fn check_update(objects: &Objects, rt: &ResourceType, new: &Value, old: &Value) -> ApiResult<()> {
    if !(rt.group.is_empty() && rt.kind == PersistentVolumeClaim::KIND) {
        return Ok(());
    }
    let (Ok(new), Ok(old)) = (
        serde_json::from_value::<PersistentVolumeClaim>(new.clone()),
        serde_json::from_value::<PersistentVolumeClaim>(old.clone()),
    ) else {
        return Ok(());
    };
    if new.request_bytes() <= old.request_bytes() {
        return Ok(());
    }
    let name = new.metadata.name.clone().unwrap_or_default();
    let refuse = |why: String| {
        Err(ApiError::forbidden(format!(
            "persistentvolumeclaims {name:?} is forbidden: only dynamically provisioned pvc can be resized and the \
             storageclass that provisions the pvc must support resize: {why}"
        )))
    };
    let class_name = new.spec.storage_class_name.clone().unwrap_or_default();
    if class_name.is_empty() {
        return refuse(format!(
            "the claim has no StorageClass; grow its Volume instead (sheaf volume expand {name} SIZE)"
        ));
    }
    let Some(sc_rt) = objects.registry.find(StorageClass::GROUP, StorageClass::VERSION, StorageClass::PLURAL) else {
        return Ok(());
    };
    let class = match objects.get(sc_rt, None, &class_name).await {
        Ok(v) => serde_json::from_value::<StorageClass>(v).ok(),
        Err(e) if e.code == http::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    };
    match class {
        None => refuse(format!("StorageClass {class_name} does not exist")),
        Some(c) if !c.allows_expansion() => refuse(format!(
            "StorageClass {class_name} does not set allowVolumeExpansion: true (kubectl patch sc {class_name} -p \
             '{{\"allowVolumeExpansion\":true}}')"
        )),
        Some(_) => Ok(()),
    }
}
