//! KubeVirt's volume hotplug subresources: `PUT .../virtualmachines/NAME/
//! {addvolume,removevolume}` and the same on `virtualmachineinstances`,
//! with KubeVirt's `AddVolumeOptions` and `RemoveVolumeOptions` bodies.
//!
//! - On a **VirtualMachineInstance** (virtctl without `--persist`) only the
//!   running instance changes: the volume (with `hotpluggable: true`) and
//!   its disk are added to or removed from its spec.
//! - On a **VirtualMachine** (`--persist`) the VM's template changes, so
//!   the volume stays across restarts, and so does its running instance if
//!   it has one. KubeVirt records the request in `status.volumeRequests`
//!   and its VM controller applies it; Sheaf applies it to both at once
//!   (one write each, guarded by the resourceVersion read), so `kubectl get
//!   vm -o yaml` shows the volume in the template right away and nothing
//!   is left pending.
//!
//! The node agent running the instance then attaches the volume's engine
//! and plugs the disk into QEMU (or unplugs it), reporting in the
//! instance's `status.volumeStatus`. The call returns 202 once the spec is
//! written, as KubeVirt's does.
//!
//! Refusals are `Status` errors: a missing or malformed body 400, an
//! unsupported bus 422, a VM or VMI or Volume that does not exist 404, and
//! 409 for a volume or disk name already used, a Volume already in this VM
//! or used by another one, a Volume being deleted, removing a volume that
//! was not hotplugged, and an instance that is not running. `dryRun:
//! ["All"]` checks everything and writes nothing.

use serde::Deserialize;
use serde_json::{json, Value};
use sheaf_types::kubevirt::{
    DataVolumeSource, Disk, DiskTarget, PersistentVolumeClaimVolumeSource, VirtualMachine, VirtualMachineInstance,
    Volume,
};
use sheaf_types::storage;
use sheaf_types::Kind;

use crate::error::{ApiError, ApiResult};
use crate::objects::{ListParams, Objects, WriteOptions};
use crate::patch::PatchType;

/// KubeVirt's `AddVolumeOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddVolumeOptions {
    #[serde(default)]
    pub name: String,
    pub disk: Option<Disk>,
    pub volume_source: Option<HotplugVolumeSource>,
    #[serde(default)]
    pub dry_run: Vec<String>,
}

/// KubeVirt's `HotplugVolumeSource`: exactly one of the two.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HotplugVolumeSource {
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    pub data_volume: Option<DataVolumeSource>,
}

/// KubeVirt's `RemoveVolumeOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveVolumeOptions {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub dry_run: Vec<String>,
}

/// Buses a disk can be hotplugged on (scsi when none is given, as in
/// KubeVirt).
pub const HOTPLUG_BUSES: &[&str] = &["scsi", "virtio"];

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(http::StatusCode::CONFLICT, "Conflict", message)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(http::StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
}

/// Decodes a JSON or YAML body (KubeVirt accepts both).
fn decode<T: serde::de::DeserializeOwned>(body: &[u8], what: &str, example: &str) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!("the request needs a body: {what}, for example {example}")));
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(json_err) => serde_yaml::from_slice(body).map_err(|_| {
            ApiError::bad_request(format!("the body is not a valid {what} in JSON or YAML: {json_err}"))
        })?,
    };
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("the body is not a valid {what}: {e}")))
}

fn dry_run(list: &[String]) -> ApiResult<bool> {
    match list {
        [] => Ok(false),
        [all] if all == "All" => Ok(true),
        other => Err(ApiError::bad_request(format!("dryRun must be [\"All\"] or absent, not {other:?}"))),
    }
}

const ADD_EXAMPLE: &str = r#"{"name": "data", "disk": {"disk": {"bus": "scsi"}}, "volumeSource": {"persistentVolumeClaim": {"claimName": "data"}}}"#;

/// Checks `opts` alone and returns the volume and disk to add (the disk
/// named after the volume, on scsi unless virtio is asked for; the source
/// marked hotpluggable).
pub fn volume_to_add(opts: AddVolumeOptions) -> ApiResult<(Volume, Disk)> {
    if opts.name.is_empty() {
        return Err(ApiError::bad_request(format!("AddVolumeOptions requires name to be set, e.g. {ADD_EXAMPLE}")));
    }
    let Some(mut disk) = opts.disk else {
        return Err(ApiError::bad_request(format!("AddVolumeOptions requires disk to be set, e.g. {ADD_EXAMPLE}")));
    };
    let Some(source) = opts.volume_source else {
        return Err(ApiError::bad_request(format!(
            "AddVolumeOptions requires volumeSource to be set, e.g. {ADD_EXAMPLE}"
        )));
    };
    if let Err(e) = sheaf_types::validation::dns1123_label(&opts.name) {
        return Err(invalid(format!("volume name {:?}: {e}", opts.name)));
    }
    // Device ids the machine itself uses.
    if ["scsi0", "virtio-serial0"].contains(&opts.name.as_str()) || opts.name.starts_with("hotplug-port") {
        return Err(invalid(format!("volume name {:?} is reserved for a device of the VM; pick another", opts.name)));
    }
    disk.name = opts.name.clone();
    if disk.cdrom.is_some() || disk.lun.is_some() {
        return Err(invalid(format!(
            "disk {}: only a disk (disk: {{bus: scsi}} or {{bus: virtio}}) can be hotplugged, not a cdrom or lun",
            opts.name
        )));
    }
    let target = disk.disk.get_or_insert_with(DiskTarget::default);
    match target.bus.as_deref() {
        None | Some("") => target.bus = Some("scsi".into()),
        Some(b) if HOTPLUG_BUSES.contains(&b) => {}
        Some(b) => {
            return Err(invalid(format!(
                "disk {}: bus {b:?} cannot be hotplugged; use scsi (the default) or virtio",
                opts.name
            )))
        }
    }
    let mut volume = Volume { name: opts.name.clone(), ..Default::default() };
    match (source.persistent_volume_claim, source.data_volume) {
        (Some(mut pvc), None) => {
            if pvc.claim_name.is_empty() {
                return Err(invalid("volumeSource.persistentVolumeClaim.claimName is required"));
            }
            pvc.hotpluggable = Some(true);
            volume.persistent_volume_claim = Some(pvc);
        }
        (None, Some(mut dv)) => {
            if dv.name.is_empty() {
                return Err(invalid("volumeSource.dataVolume.name is required"));
            }
            dv.hotpluggable = Some(true);
            volume.data_volume = Some(dv);
        }
        _ => {
            return Err(invalid(
                "volumeSource needs exactly one of persistentVolumeClaim {claimName} or dataVolume {name}",
            ))
        }
    }
    Ok((volume, disk))
}

/// KubeVirt's checks of a volume to add against a spec: no volume or disk
/// of that name, and not the same claim twice. `what` names the object.
pub fn check_add(
    volumes: &[Volume],
    disks: &[Disk],
    interfaces: &[String],
    volume: &Volume,
    what: &str,
) -> ApiResult<()> {
    let name = &volume.name;
    if volumes.iter().any(|v| &v.name == name) {
        return Err(conflict(format!(
            "Unable to add volume [{name}] because volume with that name already exists in {what}; pick another \
             --volume-name... or remove it first"
        )));
    }
    if disks.iter().any(|d| &d.name == name) {
        return Err(conflict(format!("Unable to add volume [{name}] because {what} already has a disk of that name")));
    }
    if interfaces.iter().any(|i| i == name) {
        return Err(conflict(format!(
            "Unable to add volume [{name}] because {what} has a network interface of that name (the disk would \
             get the same device id); pick another name"
        )));
    }
    let claim = volume.claim_name().unwrap_or_default();
    if let Some(v) = volumes.iter().find(|v| v.claim_name() == Some(claim)) {
        return Err(conflict(format!(
            "Unable to add volume source [{claim}] because it already exists in {what} (as volume {})",
            v.name
        )));
    }
    Ok(())
}

/// The volume `name` (by volume name or claim) of a spec, which must
/// have been hotplugged to be removed.
pub fn check_remove<'a>(volumes: &'a [Volume], name: &str, what: &str) -> ApiResult<&'a Volume> {
    let Some(v) =
        volumes.iter().find(|v| v.name == name).or_else(|| volumes.iter().find(|v| v.claim_name() == Some(name)))
    else {
        return Err(ApiError::not_found_msg(format!(
            "Unable to remove volume [{name}] because it does not exist in {what}"
        )));
    };
    if !v.hotpluggable() {
        return Err(conflict(format!(
            "Unable to remove volume [{}] because it is not hotpluggable: it is one of the disks {what} was \
             created with; change the VirtualMachine's template and restart it instead",
            v.name
        )));
    }
    Ok(v)
}

fn is_running(vmi: &VirtualMachineInstance) -> bool {
    vmi.metadata.deletion_timestamp.is_none() && vmi.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn decode_obj<T: serde::de::DeserializeOwned>(v: Value, kind: &str) -> ApiResult<T> {
    serde_json::from_value(v).map_err(|e| ApiError::internal(format!("stored {kind} does not decode: {e}")))
}

/// The kinds and lookups both handlers need.
struct Ctx<'a> {
    objects: &'a Objects,
    ns: &'a str,
    vm_rt: sheaf_types::ResourceType,
    vmi_rt: sheaf_types::ResourceType,
}

impl<'a> Ctx<'a> {
    fn new(objects: &'a Objects, ns: &'a str) -> ApiResult<Ctx<'a>> {
        let find = |plural: &str| {
            objects
                .registry
                .find("kubevirt.io", "v1", plural)
                .cloned()
                .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))
        };
        Ok(Ctx { objects, ns, vm_rt: find("virtualmachines")?, vmi_rt: find("virtualmachineinstances")? })
    }

    async fn vm(&self, name: &str) -> ApiResult<(VirtualMachine, Value)> {
        let raw = self.objects.get(&self.vm_rt, Some(self.ns), name).await?;
        Ok((decode_obj(raw.clone(), "VirtualMachine")?, raw))
    }

    async fn vmi(&self, name: &str) -> ApiResult<Option<(VirtualMachineInstance, Value)>> {
        match self.objects.get(&self.vmi_rt, Some(self.ns), name).await {
            Ok(raw) => Ok(Some((decode_obj(raw.clone(), "VirtualMachineInstance")?, raw))),
            Err(e) if e.code == http::StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The running VMI of VM `vm`, if it has one.
    async fn vmi_of(&self, vm: &VirtualMachine) -> ApiResult<Option<(VirtualMachineInstance, Value)>> {
        let name = vm.metadata.name.as_deref().unwrap_or_default();
        let Some((vmi, raw)) = self.vmi(name).await? else { return Ok(None) };
        let owned = vmi.metadata.owner_references.iter().any(|o| o.uid == vm.metadata.uid.clone().unwrap_or_default());
        Ok((owned && is_running(&vmi)).then_some((vmi, raw)))
    }

    /// The Volume behind the new volume's claim must exist, not be going
    /// away, and not be in use by another VM.
    async fn check_claim(&self, volume: &Volume, this_vmi: Option<&str>, this_vm: Option<&str>) -> ApiResult<()> {
        let claim = volume.claim_name().unwrap_or_default();
        let api = crate::local_api::LocalApi::new(self.objects.clone());
        let found = sheaf_client::claims::volume_for_claim(api.as_ref(), self.ns, claim)
            .await
            .map_err(|e| ApiError::internal(format!("cannot look up Volume {claim:?}: {}", e.message)))?;
        let ns_flag = if self.ns == "default" { String::new() } else { format!(" -n {}", self.ns) };
        let Some(vol) = found else {
            // A PersistentVolumeClaim of that name whose Volume (of the
            // same name) is not made yet.
            if let Some(pvc_rt) = self.objects.registry.find("", "v1", "persistentvolumeclaims") {
                if self.objects.get(pvc_rt, Some(self.ns), claim).await.is_ok() {
                    return Err(conflict(format!(
                        "PersistentVolumeClaim {claim:?} is not bound to a Volume yet; try again once \
                         `kubectl get pvc {claim}{ns_flag}` shows it Bound"
                    )));
                }
            }
            return Err(ApiError {
                details: Some(Box::new(sheaf_types::meta::StatusDetails {
                    name: Some(claim.to_string()),
                    group: Some(storage::GROUP.into()),
                    kind: Some(storage::Volume::PLURAL.into()),
                    ..Default::default()
                })),
                ..ApiError::not_found_msg(format!(
                    "volume {claim:?} does not exist in namespace {}: create it first (sheaf volume create {claim} \
                     --size 10Gi{ns_flag})",
                    self.ns
                ))
            });
        };
        if vol.metadata.deletion_timestamp.is_some() {
            return Err(conflict(format!("volume {claim:?} is being deleted and cannot be added")));
        }
        let (items, _, _) = self.objects.list(&self.vmi_rt, Some(self.ns), &ListParams::default()).await?;
        let vmis: Vec<VirtualMachineInstance> =
            items.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect();
        let others: Vec<String> = storage::users_of(&vol, &vmis)
            .into_iter()
            .filter(|u| u.metadata.uid.as_deref() != this_vmi || this_vmi.is_none())
            .filter_map(|u| u.metadata.name.clone())
            .collect();
        if !others.is_empty() {
            return Err(conflict(format!(
                "volume {claim:?} is in use by VirtualMachineInstance {}: a Sheaf volume serves one VM at a time; \
                 remove it there first (sheaf vm removevolume {} --volume-name={claim}{ns_flag})",
                others.join(", "),
                others[0]
            )));
        }
        // A stopped VM that would start with it: refused too, it would not
        // start while this VM holds the volume.
        let (items, _, _) = self.objects.list(&self.vm_rt, Some(self.ns), &ListParams::default()).await?;
        for vm in items.into_iter().filter_map(|v| serde_json::from_value::<VirtualMachine>(v).ok()) {
            let vm_name = vm.metadata.name.clone().unwrap_or_default();
            if Some(vm_name.as_str()) == this_vm {
                continue;
            }
            if vm.spec.template.spec.volumes.iter().any(|v| v.claim_name() == Some(claim)) {
                return Err(conflict(format!(
                    "volume {claim:?} belongs to VirtualMachine {vm_name} (its template names it); a Sheaf volume \
                     serves one VM at a time"
                )));
            }
        }
        Ok(())
    }

    /// Rewrites the volumes and disks of the VM's template (`vm`) or the
    /// VMI's spec with `edit` (None: nothing to change), guarded by the
    /// resourceVersion read; when the object changed meanwhile (its agent
    /// or controller wrote its status), reads it again and edits again.
    async fn edit(&self, vm: bool, name: &str, edit: &Edit<'_>) -> ApiResult<()> {
        let rt = if vm { &self.vm_rt } else { &self.vmi_rt };
        let mut attempt = 0;
        loop {
            let raw = self.objects.get(rt, Some(self.ns), name).await?;
            let (volumes, disks) = if vm {
                let vm: VirtualMachine = decode_obj(raw.clone(), "VirtualMachine")?;
                (vm.spec.template.spec.volumes, vm.spec.template.spec.domain.devices.disks)
            } else {
                let vmi: VirtualMachineInstance = decode_obj(raw.clone(), "VirtualMachineInstance")?;
                (vmi.spec.volumes, vmi.spec.domain.devices.disks)
            };
            let Some((volumes, disks)) = edit(&volumes, &disks)? else { return Ok(()) };
            let lists = json!({"volumes": volumes, "domain": {"devices": {"disks": disks}}});
            let spec = if vm { json!({"template": {"spec": lists}}) } else { lists };
            let patch =
                json!({"metadata": {"resourceVersion": raw.pointer("/metadata/resourceVersion")}, "spec": spec});
            let opts = WriteOptions::default();
            match self.objects.patch(rt, Some(self.ns), name, PatchType::Merge, patch, false, false, &opts).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code == http::StatusCode::CONFLICT && attempt < 8 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A change of a spec's volumes and disks (None: none needed).
type Edit<'a> = dyn Fn(&[Volume], &[Disk]) -> ApiResult<Option<(Vec<Volume>, Vec<Disk>)>> + Send + Sync + 'a;

fn interfaces(list: &[sheaf_types::kubevirt::Interface]) -> Vec<String> {
    list.iter().map(|i| i.name.clone()).collect()
}

fn with_added(volumes: &[Volume], disks: &[Disk], volume: &Volume, disk: &Disk) -> (Vec<Volume>, Vec<Disk>) {
    let mut volumes = volumes.to_vec();
    volumes.push(volume.clone());
    let mut disks = disks.to_vec();
    disks.push(disk.clone());
    (volumes, disks)
}

fn without(volumes: &[Volume], disks: &[Disk], gone: &str) -> (Vec<Volume>, Vec<Disk>) {
    let volumes = volumes.iter().filter(|v| v.name != gone).cloned().collect();
    let disks = disks.iter().filter(|d| d.name != gone).cloned().collect();
    (volumes, disks)
}

/// Handles `PUT .../{virtualmachines,virtualmachineinstances}/NAME/addvolume`.
pub async fn add_volume(objects: &Objects, ns: &str, name: &str, on_vm: bool, body: &[u8]) -> ApiResult<()> {
    let opts: AddVolumeOptions = decode(body, "AddVolumeOptions", ADD_EXAMPLE)?;
    let dry = dry_run(&opts.dry_run)?;
    let (volume, disk) = volume_to_add(opts)?;
    let ctx = Ctx::new(objects, ns)?;
    let add_to = |what: String, ifaces: Vec<String>| {
        let (volume, disk) = (volume.clone(), disk.clone());
        move |v: &[Volume], d: &[Disk]| -> ApiResult<Option<(Vec<Volume>, Vec<Disk>)>> {
            check_add(v, d, &ifaces, &volume, &what)?;
            Ok(Some(with_added(v, d, &volume, &disk)))
        }
    };
    if on_vm {
        let (vm, _) = ctx.vm(name).await?;
        let tspec = &vm.spec.template.spec;
        let vm_ifaces = interfaces(&tspec.domain.devices.interfaces);
        let what = format!("VirtualMachine {name}");
        check_add(&tspec.volumes, &tspec.domain.devices.disks, &vm_ifaces, &volume, &what)?;
        let running = ctx.vmi_of(&vm).await?;
        let mut vmi_ifaces = Vec::new();
        if let Some((vmi, _)) = &running {
            vmi_ifaces = interfaces(&vmi.spec.domain.devices.interfaces);
            let what = format!("its instance {name}");
            check_add(&vmi.spec.volumes, &vmi.spec.domain.devices.disks, &vmi_ifaces, &volume, &what)?;
        }
        ctx.check_claim(&volume, running.as_ref().and_then(|(v, _)| v.metadata.uid.as_deref()), Some(name)).await?;
        if dry {
            return Ok(());
        }
        ctx.edit(true, name, &add_to(what, vm_ifaces)).await?;
        if running.is_some() {
            ctx.edit(false, name, &add_to(format!("its instance {name}"), vmi_ifaces)).await?;
        }
        return Ok(());
    }
    let Some((vmi, _)) = ctx.vmi(name).await? else {
        return Err(ApiError::not_found_msg(format!(
            "virtualmachineinstances.kubevirt.io {name:?} not found: start the VM first (sheaf vm start {name})"
        )));
    };
    if !is_running(&vmi) {
        return Err(conflict(format!("VMI {name:?} is not running; a volume is added to a running VM only")));
    }
    let ifaces = interfaces(&vmi.spec.domain.devices.interfaces);
    check_add(&vmi.spec.volumes, &vmi.spec.domain.devices.disks, &ifaces, &volume, &format!("VMI {name}"))?;
    let owner = vmi.metadata.owner_references.iter().find(|o| o.kind == "VirtualMachine").map(|o| o.name.clone());
    ctx.check_claim(&volume, vmi.metadata.uid.as_deref(), owner.as_deref()).await?;
    if dry {
        return Ok(());
    }
    ctx.edit(false, name, &add_to(format!("VMI {name}"), ifaces)).await
}

/// Handles `PUT .../{virtualmachines,virtualmachineinstances}/NAME/removevolume`.
pub async fn remove_volume(objects: &Objects, ns: &str, name: &str, on_vm: bool, body: &[u8]) -> ApiResult<()> {
    let opts: RemoveVolumeOptions = decode(body, "RemoveVolumeOptions", r#"{"name": "data"}"#)?;
    let dry = dry_run(&opts.dry_run)?;
    if opts.name.is_empty() {
        return Err(ApiError::bad_request(r#"RemoveVolumeOptions requires name to be set, e.g. {"name": "data"}"#));
    }
    let ctx = Ctx::new(objects, ns)?;
    let wanted = opts.name.as_str();
    let remove_from = |what: String| {
        move |v: &[Volume], d: &[Disk]| -> ApiResult<Option<(Vec<Volume>, Vec<Disk>)>> {
            let gone = check_remove(v, wanted, &what)?.name.clone();
            Ok(Some(without(v, d, &gone)))
        }
    };
    if on_vm {
        let (vm, _) = ctx.vm(name).await?;
        let tspec = &vm.spec.template.spec;
        let gone = check_remove(&tspec.volumes, wanted, &format!("VirtualMachine {name}"))?.name.clone();
        let running = ctx.vmi_of(&vm).await?;
        if dry {
            return Ok(());
        }
        ctx.edit(true, name, &remove_from(format!("VirtualMachine {name}"))).await?;
        if running.is_some() {
            // The instance may not have it (added while it was stopped).
            let from_instance = |v: &[Volume], d: &[Disk]| -> ApiResult<Option<(Vec<Volume>, Vec<Disk>)>> {
                Ok(check_remove(v, &gone, "the instance").ok().map(|x| without(v, d, &x.name.clone())))
            };
            ctx.edit(false, name, &from_instance).await?;
        }
        return Ok(());
    }
    let Some((vmi, _)) = ctx.vmi(name).await? else {
        return Err(ApiError::not_found_msg(format!("virtualmachineinstances.kubevirt.io {name:?} not found")));
    };
    if !is_running(&vmi) {
        return Err(conflict(format!("VMI {name:?} is not running")));
    }
    check_remove(&vmi.spec.volumes, wanted, &format!("VMI {name}"))?;
    if dry {
        return Ok(());
    }
    ctx.edit(false, name, &remove_from(format!("VMI {name}"))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: Value) -> AddVolumeOptions {
        serde_json::from_value(v).expect("options")
    }

    #[test]
    fn add_options_are_checked_and_completed() {
        let (v, d) = volume_to_add(opts(json!({
            "name": "data", "disk": {}, "volumeSource": {"persistentVolumeClaim": {"claimName": "vol1"}}
        })))
        .expect("valid");
        assert_eq!(d.name, "data");
        assert_eq!(d.disk.and_then(|t| t.bus).as_deref(), Some("scsi"), "scsi is the default");
        assert_eq!(v.claim_name(), Some("vol1"));
        assert!(v.hotpluggable());
        let (v, d) = volume_to_add(opts(json!({
            "name": "dv", "disk": {"name": "ignored", "disk": {"bus": "virtio"}, "serial": "S1"},
            "volumeSource": {"dataVolume": {"name": "vol2"}}
        })))
        .expect("valid");
        assert_eq!((d.name.as_str(), d.serial.as_deref()), ("dv", Some("S1")));
        assert!(v.hotpluggable() && v.claim_name() == Some("vol2"));

        let err = |v: Value| volume_to_add(opts(v)).expect_err("refused");
        let e = err(json!({"disk": {}, "volumeSource": {"dataVolume": {"name": "x"}}}));
        assert_eq!((e.code.as_u16(), e.message.contains("requires name")), (400, true), "{}", e.message);
        let e = err(json!({"name": "a", "volumeSource": {"dataVolume": {"name": "x"}}}));
        assert!(e.code == 400 && e.message.contains("requires disk"), "{}", e.message);
        let e = err(json!({"name": "a", "disk": {}}));
        assert!(e.code == 400 && e.message.contains("requires volumeSource"), "{}", e.message);
        let e =
            err(json!({"name": "a", "disk": {"disk": {"bus": "sata"}}, "volumeSource": {"dataVolume": {"name": "x"}}}));
        assert!(e.code == 422 && e.message.contains("\"sata\" cannot be hotplugged"), "{}", e.message);
        let e = err(json!({"name": "a", "disk": {"cdrom": {}}, "volumeSource": {"dataVolume": {"name": "x"}}}));
        assert!(e.code == 422 && e.message.contains("not a cdrom"), "{}", e.message);
        let e = err(json!({"name": "a", "disk": {}, "volumeSource": {}}));
        assert!(e.code == 422 && e.message.contains("exactly one"), "{}", e.message);
        let e = err(json!({"name": "Bad_Name", "disk": {}, "volumeSource": {"dataVolume": {"name": "x"}}}));
        assert_eq!(e.code, 422, "{}", e.message);
        let e = err(json!({"name": "scsi0", "disk": {}, "volumeSource": {"dataVolume": {"name": "x"}}}));
        assert!(e.code == 422 && e.message.contains("reserved"), "{}", e.message);
    }

    #[test]
    fn bodies_are_json_or_yaml_and_never_empty() {
        let o: AddVolumeOptions = decode(b"name: a\ndisk: {}\n", "AddVolumeOptions", "").expect("yaml");
        assert_eq!(o.name, "a");
        let e = decode::<AddVolumeOptions>(b"  ", "AddVolumeOptions", ADD_EXAMPLE).expect_err("empty");
        assert!(e.code == 400 && e.message.contains("needs a body"), "{}", e.message);
        let e = decode::<AddVolumeOptions>(b"{\"name\": 3}", "AddVolumeOptions", "").expect_err("wrong type");
        assert_eq!(e.code, 400);
        assert!(dry_run(&["All".into()]).expect("All"));
        assert!(dry_run(&["Some".into()]).is_err());
    }

    fn spec() -> (Vec<Volume>, Vec<Disk>) {
        let volumes: Vec<Volume> = serde_json::from_value(json!([
            {"name": "root", "persistentVolumeClaim": {"claimName": "rootvol"}},
            {"name": "hot", "persistentVolumeClaim": {"claimName": "hotvol", "hotpluggable": true}},
        ]))
        .expect("volumes");
        let disks: Vec<Disk> =
            serde_json::from_value(json!([{"name": "root"}, {"name": "hot"}, {"name": "extra"}])).expect("disks");
        (volumes, disks)
    }

    #[test]
    fn duplicates_are_conflicts() {
        let (volumes, disks) = spec();
        let new = |name: &str, claim: &str| Volume {
            name: name.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ifaces = vec!["default".to_string()];
        assert!(check_add(&volumes, &disks, &ifaces, &new("data", "datavol"), "VMI x").is_ok());
        let e = check_add(&volumes, &disks, &ifaces, &new("default", "datavol"), "VMI x").expect_err("interface");
        assert!(e.code == 409 && e.message.contains("network interface"), "{}", e.message);
        let e = check_add(&volumes, &disks, &ifaces, &new("hot", "other"), "VMI x").expect_err("name");
        assert!(e.code == 409 && e.message.contains("volume with that name already exists"), "{}", e.message);
        let e = check_add(&volumes, &disks, &ifaces, &new("extra", "other"), "VMI x").expect_err("disk");
        assert!(e.code == 409 && e.message.contains("disk of that name"), "{}", e.message);
        let e = check_add(&volumes, &disks, &ifaces, &new("data", "rootvol"), "VMI x").expect_err("claim");
        assert!(e.code == 409 && e.message.contains("volume source [rootvol]"), "{}", e.message);
    }

    #[test]
    fn only_hotplugged_volumes_can_be_removed() {
        let (volumes, _) = spec();
        assert_eq!(check_remove(&volumes, "hot", "VMI x").expect("by name").name, "hot");
        assert_eq!(check_remove(&volumes, "hotvol", "VMI x").expect("by claim").name, "hot");
        let e = check_remove(&volumes, "root", "VMI x").expect_err("boot disk");
        assert!(e.code == 409 && e.message.contains("not hotpluggable"), "{}", e.message);
        let e = check_remove(&volumes, "nope", "VMI x").expect_err("missing");
        assert!(e.code == 404 && e.message.contains("does not exist"), "{}", e.message);
    }
}
