//! VM templates in the API: making a VirtualMachine from a version, and
//! keeping a template's default version.
//!
//! Making a VirtualMachine from a VM template version:
//! `POST /apis/harvesterhci.io/v1beta1/namespaces/NS/virtualmachinetemplateversions/NAME/createvm`
//! with a [`CreateVmRequest`] body (`{"name": "vm1", "cpu": 2, "memory":
//! "4Gi", "image": "NS/IMAGE", "keyPairs": ["KEY"], "userData": "..."}`,
//! all but `name` optional), answered 201 with the VirtualMachine.
//!
//! Harvester has no server-side action for this (its UI builds the VM from
//! the version); this one does what the UI does, in one request: the
//! version's VM labels, annotations and spec, the overrides, per-VM claim
//! names, and back-references to the version
//! ([`sheaf_types::template::render_vm`]). It checks what the VM needs
//! that the VM's own validation cannot: that the KeyPairs and the image
//! exist. A VM made in another namespace than the version's gets the user
//! and network data of the version's Secrets inline (a VM can only refer
//! to Secrets of its own namespace).
//!
//! Errors: 404 for an unknown version, 409 when the VM exists, 422 with
//! the offending request field (`cpu`, `image`, `keyPairs[0]`, ...) or VM
//! field otherwise.
//!
//! The default version of a template cannot be deleted while the template
//! exists and is not being deleted (409, as Harvester refuses it): VMs made
//! from the template without naming a version would have none. Deleting
//! the template deletes its versions, the default one included (the
//! garbage collector deletes them once the template is gone). The check
//! runs in [`crate::protection::check_delete`], so it covers every path.

use serde_json::Value;
use sheaf_types::kubevirt::VirtualMachineSpec;
use sheaf_types::template::{render_vm, CreateVmRequest, VirtualMachineTemplateVersion};
use sheaf_types::{FieldError, FieldErrorReason, ResourceType};

use crate::error::{ApiError, ApiResult, Target};
use crate::objects::{Objects, WriteOptions};

/// The subresource of virtualmachinetemplateversions.
pub const SUBRESOURCE: &str = sheaf_types::template::CREATE_VM_SUBRESOURCE;

pub(crate) fn kind(objects: &Objects, group: &str, version: &str, plural: &str) -> ApiResult<ResourceType> {
    objects
        .registry
        .find(group, version, plural)
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("{plural}.{group} is not registered")))
}

pub(crate) fn invalid(name: &str, errs: &[FieldError]) -> ApiError {
    ApiError::invalid(&Target { group: "kubevirt.io", resource: "virtualmachines", name }, "VirtualMachine", errs)
}

pub(crate) async fn exists(objects: &Objects, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<bool> {
    match objects.get(rt, Some(ns), name).await {
        Ok(_) => Ok(true),
        Err(e) if e.code == http::StatusCode::NOT_FOUND => Ok(false),
        Err(e) => Err(e),
    }
}

/// Five lower-case letters and digits, for claim names.
fn suffix() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Handles `POST .../virtualmachinetemplateversions/NAME/createvm`;
/// returns the created VirtualMachine.
pub async fn create_vm(objects: &Objects, ns: &str, name: &str, body: Value) -> ApiResult<Value> {
    let version_rt = kind(objects, "harvesterhci.io", "v1beta1", "virtualmachinetemplateversions")?;
    let vm_rt = kind(objects, "kubevirt.io", "v1", "virtualmachines")?;
    let stored = objects.get(&version_rt, Some(ns), name).await?;
    let mut version: VirtualMachineTemplateVersion = serde_json::from_value(stored)
        .map_err(|e| ApiError::internal(format!("stored VirtualMachineTemplateVersion does not decode: {e}")))?;
    let req: CreateVmRequest = serde_json::from_value(body).map_err(|e| {
        invalid(
            "",
            &[FieldError::invalid(
                "<body>",
                format!(
                    "{e}; send {{\"name\": NAME, \"namespace\": NS, \"cpu\": N, \"memory\": \"2Gi\", \
                     \"image\": \"NS/IMAGE\", \"keyPairs\": [KEYPAIR], \"userData\": TEXT}} (all but name optional)"
                ),
            )],
        )
    })?;
    let errs = req.validate(ns);
    if !errs.is_empty() {
        return Err(invalid(&req.name, &errs));
    }
    let vm_ns = req.namespace_or(ns).to_string();

    // What the VM refers to must exist.
    let mut errs = Vec::new();
    let keypair_rt = kind(objects, "harvesterhci.io", "v1beta1", "keypairs")?;
    let from = if req.key_pairs.is_some() { "" } else { " (from the version's spec.keyPairIds)" };
    for (i, (kns, k)) in req.key_pairs_of(&version, &vm_ns).iter().enumerate() {
        if !exists(objects, &keypair_rt, kns, k).await? {
            errs.push(FieldError::new(
                format!("keyPairs[{i}]"),
                FieldErrorReason::NotFound,
                format!("KeyPair {kns}/{k}{from} not found: create it, or name another (`kubectl get keypairs -A`)"),
            ));
        }
    }
    if let Some(img) = req.image_of(&version) {
        if let (Ok((ins, iname)), Some(image_rt)) = (
            sheaf_types::template::parse_ref(img),
            objects.registry.find("harvesterhci.io", "v1beta1", "virtualmachineimages").cloned(),
        ) {
            if !exists(objects, &image_rt, ins, iname).await? {
                let from = if req.image.is_some() { "" } else { " (the version's spec.imageId)" };
                errs.push(FieldError::new(
                    "image",
                    FieldErrorReason::NotFound,
                    format!("VirtualMachineImage {img}{from} not found: `kubectl get vmimages -A` lists the images"),
                ));
            }
        }
    }
    if vm_ns != ns {
        inline_secrets(objects, ns, &mut version.spec.vm.spec, &mut errs).await?;
    }
    if !errs.is_empty() {
        return Err(invalid(&req.name, &errs));
    }

    let vm = render_vm(&version, &req, &suffix()).map_err(|errs| invalid(&req.name, &errs))?;
    let mut body = serde_json::to_value(&vm).map_err(|e| ApiError::internal(format!("cannot encode the VM: {e}")))?;
    body["apiVersion"] = "kubevirt.io/v1".into();
    body["kind"] = "VirtualMachine".into();
    let written = objects.create(&vm_rt, Some(&vm_ns), body, &WriteOptions::default()).await?;
    tracing::info!(vm = %format!("{vm_ns}/{}", req.name), version = %version.id(), "created a VM from a template version");
    Ok(written.object)
}

/// Replaces the cloud-init Secret references of `spec` (Secrets of
/// namespace `ns`) by the Secrets' data, for a VM in another namespace.
async fn inline_secrets(
    objects: &Objects,
    ns: &str,
    spec: &mut VirtualMachineSpec,
    errs: &mut Vec<FieldError>,
) -> ApiResult<()> {
    let secret_rt = kind(objects, "", "v1", "secrets")?;
    for v in &mut spec.template.spec.volumes {
        let name = v.name.clone();
        let Some(ci) = v.cloud_init_no_cloud.as_mut().or(v.cloud_init_config_drive.as_mut()) else { continue };
        for (user, keys) in [(true, ["userdata", "userData"]), (false, ["networkdata", "networkData"])] {
            let reference = if user { ci.secret_ref.take() } else { ci.network_data_secret_ref.take() };
            let Some(r) = reference else { continue };
            let secret = match objects.get(&secret_rt, Some(ns), &r.name).await {
                Ok(s) => s,
                Err(e) if e.code == http::StatusCode::NOT_FOUND => {
                    errs.push(FieldError::new(
                        "namespace",
                        FieldErrorReason::NotFound,
                        format!(
                            "the template's cloud-init volume {name:?} refers to Secret {ns}/{} which does not \
                             exist; create the VM in namespace {ns}, or give userData",
                            r.name
                        ),
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let data = keys
                .iter()
                .find_map(|k| secret.pointer(&format!("/data/{k}")).and_then(Value::as_str))
                .filter(|d| !d.is_empty())
                .map(str::to_string);
            if user {
                ci.user_data_base64 = data;
            } else {
                ci.network_data_base64 = data;
            }
        }
    }
    Ok(())
}

/// Refuses deleting the version (`obj`, as stored) that its template's
/// `spec.defaultVersionId` names, while that template exists and is not
/// being deleted.
pub async fn check_version_delete(objects: &Objects, obj: &Value) -> ApiResult<()> {
    let Ok(version) = serde_json::from_value::<VirtualMachineTemplateVersion>(obj.clone()) else { return Ok(()) };
    let Ok((tns, tname)) = sheaf_types::template::parse_ref(&version.spec.template_id) else { return Ok(()) };
    let template_rt = kind(objects, "harvesterhci.io", "v1beta1", "virtualmachinetemplates")?;
    let template = match objects.get(&template_rt, Some(tns), tname).await {
        Ok(t) => t,
        Err(e) if e.code == http::StatusCode::NOT_FOUND => return Ok(()),
        Err(e) => return Err(e),
    };
    let deleting = template.pointer("/metadata/deletionTimestamp").is_some();
    let default = template.pointer("/spec/defaultVersionId").and_then(Value::as_str).unwrap_or("");
    let id = version.id();
    if deleting || default != id {
        return Ok(());
    }
    Err(ApiError::new(
        http::StatusCode::CONFLICT,
        "Conflict",
        format!(
            "VirtualMachineTemplateVersion {id} is the default version of template {tns}/{tname}: make another \
             version the default first (kubectl patch vmtemplate {tname} -n {tns} --type merge -p \
             '{{\"spec\":{{\"defaultVersionId\":\"{tns}/OTHER-VERSION\"}}}}'), or delete the template with all its versions"
        ),
    ))
}
