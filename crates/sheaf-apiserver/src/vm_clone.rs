//! `POST .../virtualmachines/NAME/clone` (`sheaf vm clone`, the web UI's
//! Clone): a new VM with the source's spec and a copy of every disk.
//!
//! Each claim the source's volumes use (its own `dataVolumeTemplates`,
//! Harvester's `volumeClaimTemplates`, or claims made apart) becomes a
//! `dataVolumeTemplates` entry of the new VM named `TARGET-VOLUME` whose
//! source is that claim: the claim controller clones it from a snapshot,
//! so a running source keeps running (each disk crash-consistent on its
//! own). Interface MACs, the firmware UUID and serial are dropped so the
//! clone gets its own; container disks, cloud-init and empty disks are
//! kept as they are. A hostDisk (a file on one node) cannot be copied and
//! is refused.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sheaf_types::validation::{dns1123_label, FieldError, FieldErrorReason};

use crate::error::{ApiError, ApiResult};
use crate::objects::Objects;
use crate::templates::{exists, invalid, kind};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CloneRequest {
    /// The new VM's name.
    name: String,
    /// Start it at once (runStrategy Always) instead of leaving it Halted.
    #[serde(default)]
    start: bool,
}

/// Annotations of the source that describe the source itself.
const DROPPED_ANNOTATIONS: &[&str] = &[
    "harvesterhci.io/volumeClaimTemplates",
    "harvesterhci.io/removedPersistentVolumeClaims",
    "harvesterhci.io/maintain-status",
    "kubectl.kubernetes.io/last-applied-configuration",
    "kubevirt.io/latest-observed-api-version",
    "kubevirt.io/storage-observed-api-version",
];

fn claim_of(volume: &Value) -> Option<&str> {
    volume
        .pointer("/persistentVolumeClaim/claimName")
        .or_else(|| volume.pointer("/dataVolume/name"))
        .and_then(Value::as_str)
}

/// Makes `NS/TARGET` from `NS/SOURCE`; returns the created VM.
pub async fn clone_vm(objects: &Objects, ns: &str, source: &str, body: &[u8]) -> ApiResult<Value> {
    let vm_rt = kind(objects, "kubevirt.io", "v1", "virtualmachines")?;
    let pvc_rt = kind(objects, "", "v1", "persistentvolumeclaims")?;
    let req: CloneRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("{e}; send {{\"name\": NEW_VM, \"start\": false}} (start optional)"))
    })?;
    if let Err(e) = dns1123_label(&req.name) {
        return Err(invalid(&req.name, &[FieldError::invalid("name", format!("Invalid value: {:?}: {e}", req.name))]));
    }
    let src = objects.get(&vm_rt, Some(ns), source).await?;
    let spec = src.get("spec").cloned().unwrap_or(Value::Null);
    let mut template = spec.get("template").cloned().unwrap_or(json!({}));

    // Disks: every claim becomes a clone made for the new VM.
    let mut dv_templates = Vec::new();
    let mut errs = Vec::new();
    let volumes = template.pointer_mut("/spec/volumes").and_then(Value::as_array_mut);
    for (i, vol) in volumes.into_iter().flatten().enumerate() {
        let vname = vol.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if vol.get("hostDisk").is_some() {
            errs.push(FieldError::invalid(
                format!("spec.template.spec.volumes[{i}]"),
                format!("volume {vname} is a hostDisk, a file on one node, which a clone cannot copy"),
            ));
            continue;
        }
        let Some(claim) = claim_of(vol).map(str::to_string) else { continue };
        let new_claim = format!("{}-{vname}", req.name);
        if dns1123_label(&new_claim).is_err() {
            errs.push(FieldError::new(
                "name",
                FieldErrorReason::TooLong,
                format!("the clone's claim {new_claim:?} would not be a valid name: choose a shorter VM name"),
            ));
            continue;
        }
        let stored = match objects.get(&pvc_rt, Some(ns), &claim).await {
            Ok(c) => c,
            Err(e) if e.code == http::StatusCode::NOT_FOUND => {
                errs.push(FieldError::new(
                    format!("spec.template.spec.volumes[{i}]"),
                    FieldErrorReason::NotFound,
                    format!("claim {claim} of volume {vname} does not exist (yet): nothing to copy"),
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        if exists(objects, &pvc_rt, ns, &new_claim).await? {
            return Err(ApiError::new(
                http::StatusCode::CONFLICT,
                "AlreadyExists",
                format!("a claim {new_claim} already exists in {ns}: choose another name for the clone"),
            ));
        }
        let mut pvc = Map::new();
        for k in ["accessModes", "resources", "storageClassName", "volumeMode"] {
            if let Some(v) = stored.pointer(&format!("/spec/{k}")) {
                pvc.insert(k.into(), v.clone());
            }
        }
        dv_templates.push(json!({
            "metadata": {"name": new_claim},
            "spec": {"source": {"pvc": {"namespace": ns, "name": claim}}, "pvc": pvc},
        }));
        match vol.get_mut("persistentVolumeClaim") {
            Some(p) => p["claimName"] = json!(new_claim),
            None => vol["dataVolume"]["name"] = json!(new_claim),
        }
    }
    if !errs.is_empty() {
        return Err(invalid(&req.name, &errs));
    }
    // Identity: the clone gets its own MACs and firmware UUID and serial.
    let interfaces = template.pointer_mut("/spec/domain/devices/interfaces").and_then(Value::as_array_mut);
    for iface in interfaces.into_iter().flatten() {
        if let Some(o) = iface.as_object_mut() {
            o.remove("macAddress");
        }
    }
    if let Some(fw) = template.pointer_mut("/spec/domain/firmware").and_then(Value::as_object_mut) {
        fw.remove("uuid");
        fw.remove("serial");
    }
    let mut annotations: Map<String, Value> =
        src.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default();
    annotations.retain(|k, _| !DROPPED_ANNOTATIONS.contains(&k.as_str()));
    annotations.insert("sheaf.io/cloned-from".into(), json!(format!("{ns}/{source}")));
    let mut new_spec = spec.as_object().cloned().unwrap_or_default();
    new_spec.remove("running");
    new_spec.insert("runStrategy".into(), json!(if req.start { "Always" } else { "Halted" }));
    new_spec.insert("template".into(), template);
    if dv_templates.is_empty() {
        new_spec.remove("dataVolumeTemplates");
    } else {
        new_spec.insert("dataVolumeTemplates".into(), Value::Array(dv_templates));
    }
    let vm = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": req.name,
            "namespace": ns,
            "labels": src.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "annotations": annotations,
        },
        "spec": new_spec,
    });
    Ok(objects.create(&vm_rt, Some(ns), vm, &Default::default()).await?.object)
}
