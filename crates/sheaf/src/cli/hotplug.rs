//! `sheaf vm addvolume` and `sheaf vm removevolume`: a Volume plugged into
//! or out of a running VM, as `virtctl addvolume`/`removevolume` do.
//! Without `--persist` only the running instance changes (the disk is gone
//! after a restart); with it the VM's template too.

use clap::Args;
use reqwest::Method;
use serde_json::json;

use super::client::{encode, Client};
use super::vm::VmTarget;

const ADD_HELP: &str = "\
Examples:
  sheaf volume create data --size 10Gi
  sheaf vm addvolume myvm --volume-name=data                 # scsi disk, until the VM restarts
  sheaf vm addvolume myvm --volume-name=data --bus=virtio --serial=DATA1
  sheaf vm addvolume myvm --volume-name=data --persist       # also in the VM's template
  kubectl get vmi myvm -o jsonpath='{.status.volumeStatus}'  # Ready once the guest has it

The disk is named after the volume. scsi (the default, as in KubeVirt) needs
no free PCI slot; virtio takes one of the VM's hotplug ports (4 unless
spec.template.spec.domain.devices.disableHotplug is set).";

const REMOVE_HELP: &str = "\
Examples:
  sheaf vm removevolume myvm --volume-name=data
  sheaf vm removevolume myvm --volume-name=data --persist    # also from the VM's template

Only hotplugged volumes can be removed. The guest is asked to let the disk
go (a virtio disk takes about 5 seconds); then the volume's engine stops.";

/// `sheaf vm addvolume`.
#[derive(Args, Debug)]
#[command(after_help = ADD_HELP)]
pub struct AddVolumeArgs {
    #[command(flatten)]
    pub target: VmTarget,
    /// The Volume (claim) to add; the new disk gets its name.
    #[arg(long, value_name = "CLAIM")]
    pub volume_name: String,
    /// The disk's serial number, as the guest sees it.
    #[arg(long)]
    pub serial: Option<String>,
    /// The bus the disk goes on.
    #[arg(long, default_value = "scsi", value_parser = ["scsi", "virtio"])]
    pub bus: String,
    /// Add it to the VirtualMachine's template too, so that it stays after a
    /// restart (without: only the running instance).
    #[arg(long)]
    pub persist: bool,
    /// Check the request on the server without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// `sheaf vm removevolume`.
#[derive(Args, Debug)]
#[command(after_help = REMOVE_HELP)]
pub struct RemoveVolumeArgs {
    #[command(flatten)]
    pub target: VmTarget,
    /// The hotplugged volume to remove (its volume or claim name).
    #[arg(long, value_name = "CLAIM")]
    pub volume_name: String,
    /// Remove it from the VirtualMachine's template too (without: only from
    /// the running instance).
    #[arg(long)]
    pub persist: bool,
    /// Check the request on the server without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

async fn put(t: &VmTarget, persist: bool, sub: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let client = Client::connect(&t.conn)?;
    let ns = t.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    let plural = if persist { "virtualmachines" } else { "virtualmachineinstances" };
    let path =
        format!("/apis/subresources.kubevirt.io/v1/namespaces/{}/{plural}/{}/{sub}", encode(&ns), encode(&t.name));
    let bytes = serde_json::to_vec(&body)?;
    client.request(Method::PUT, &path, "application/json", Some(("application/json", bytes))).await?;
    Ok(())
}

fn dry_run(dry: bool) -> serde_json::Value {
    if dry {
        json!(["All"])
    } else {
        json!([])
    }
}

pub async fn add(a: &AddVolumeArgs) -> anyhow::Result<()> {
    let mut disk = json!({"disk": {"bus": a.bus}});
    if let Some(s) = &a.serial {
        disk["serial"] = json!(s);
    }
    let body = json!({
        "name": a.volume_name,
        "disk": disk,
        "volumeSource": {"persistentVolumeClaim": {"claimName": a.volume_name}},
        "dryRun": dry_run(a.dry_run),
    });
    put(&a.target, a.persist, "addvolume", body).await?;
    let vm = &a.target.name;
    if a.dry_run {
        println!("volume {} can be added to VM {vm} (dry run: nothing changed)", a.volume_name);
    } else {
        println!("Successfully submitted add volume request to VM {vm} for volume {}", a.volume_name);
        println!("(kubectl get vmi {vm} -o jsonpath='{{.status.volumeStatus}}' shows when the guest has it)");
    }
    Ok(())
}

pub async fn remove(a: &RemoveVolumeArgs) -> anyhow::Result<()> {
    let body = json!({"name": a.volume_name, "dryRun": dry_run(a.dry_run)});
    put(&a.target, a.persist, "removevolume", body).await?;
    let vm = &a.target.name;
    if a.dry_run {
        println!("volume {} can be removed from VM {vm} (dry run: nothing changed)", a.volume_name);
    } else {
        println!("Successfully submitted remove volume request to VM {vm} for volume {}", a.volume_name);
    }
    Ok(())
}
