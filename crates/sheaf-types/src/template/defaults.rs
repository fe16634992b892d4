//! The VM templates every cluster has, in [`PUBLIC_NAMESPACE`]: Harvester's
//! `iso-image-base-template`, `raw-image-base-template`,
//! `windows-iso-image-base-template` (with Harvester's content, and the
//! user-data Secrets the first two refer to), and Sheaf's
//! `linux-cloud-init-template`. The server creates those that are absent
//! when it starts and never changes existing ones.

use serde_json::{json, Value};

use super::{
    DEFAULT_USERDATA_SECRET_ANNOTATION, IMAGE_ID_ANNOTATION, PUBLIC_NAMESPACE, VOLUME_CLAIM_TEMPLATES_ANNOTATION,
};

/// Harvester's default user data: the guest agent, installed and started.
const GUEST_AGENT_USER_DATA: &str = "#cloud-config\npackage_update: true\npackages:\n  - qemu-guest-agent\nruncmd:\n  - - systemctl\n    - enable\n    - --now\n    - qemu-guest-agent.service\n";

/// A claim of `harvesterhci.io/volumeClaimTemplates`; `image`: whether its
/// data comes from an image (named when the VM is made).
fn claim(name: &str, size: &str, image: bool) -> Value {
    let mut metadata = json!({"name": name});
    if image {
        metadata["annotations"] = json!({IMAGE_ID_ANNOTATION: ""});
    }
    json!({
        "metadata": metadata,
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": size}},
            "volumeMode": "Block",
        },
    })
}

fn template(name: &str, description: &str) -> Value {
    json!({
        "apiVersion": "harvesterhci.io/v1beta1",
        "kind": "VirtualMachineTemplate",
        "metadata": {"name": name, "namespace": PUBLIC_NAMESPACE},
        "spec": {"description": description},
    })
}

fn version(name: &str, template: &str, annotations: Value, vm: Value) -> Value {
    json!({
        "apiVersion": "harvesterhci.io/v1beta1",
        "kind": "VirtualMachineTemplateVersion",
        "metadata": {"name": name, "namespace": PUBLIC_NAMESPACE, "annotations": annotations},
        "spec": {"templateId": format!("{PUBLIC_NAMESPACE}/{template}"), "vm": vm},
    })
}

fn userdata_secret(name: &str) -> Value {
    use base64::Engine as _;
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": PUBLIC_NAMESPACE,
            "labels": {"harvesterhci.io/cloud-init-template": "harvester"},
        },
        "type": "secret",
        "data": {
            "networkdata": "",
            "userdata": base64::engine::general_purpose::STANDARD.encode(GUEST_AGENT_USER_DATA),
        },
    })
}

fn claims(list: &[Value]) -> Value {
    json!({VOLUME_CLAIM_TEMPLATES_ANNOTATION: Value::Array(list.to_vec()).to_string()})
}

/// The domain Harvester's templates share: ACPI, the management network
/// (pod network, masquerade), 1 vCPU and 2048Mi unless said otherwise.
fn harvester_vm(
    annotations: Value,
    labels: Value,
    disks: Value,
    volumes: Value,
    interface_model: &str,
    extra_devices: Value,
) -> Value {
    let mut devices = json!({
        "disks": disks,
        "interfaces": [{"name": "default", "masquerade": {}, "model": interface_model}],
    });
    if let (Some(d), Value::Object(extra)) = (devices.as_object_mut(), extra_devices) {
        d.extend(extra);
    }
    let mut metadata = json!({"annotations": annotations});
    if labels.as_object().is_some_and(|l| !l.is_empty()) {
        metadata["labels"] = labels;
    }
    json!({
        "metadata": metadata,
        "spec": {
            "runStrategy": "RerunOnFailure",
            "template": {"spec": {
                "evictionStrategy": "LiveMigrateIfPossible",
                "domain": {
                    "features": {"acpi": {"enabled": true}},
                    "cpu": {"cores": 1},
                    "devices": devices,
                    "resources": {"limits": {"memory": "2048Mi", "cpu": "1"}},
                },
                "networks": [{"name": "default", "pod": {}}],
                "volumes": volumes,
            }},
        },
    })
}

/// The default objects, in the order they are created: user-data Secrets,
/// templates, then their versions.
pub fn default_objects() -> Vec<Value> {
    let iso = version(
        "iso-image-base-version",
        "iso-image-base-template",
        json!({DEFAULT_USERDATA_SECRET_ANNOTATION: "iso-image-template-userdata"}),
        harvester_vm(
            claims(&[claim("pvc-cdrom-disk", "10Gi", true), claim("pvc-rootdisk", "10Gi", false)]),
            json!({}),
            json!([
                {"name": "cdrom-disk", "cdrom": {"bus": "sata", "readonly": true}, "bootOrder": 2},
                {"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 1},
                {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
            ]),
            json!([
                {"name": "cdrom-disk", "persistentVolumeClaim": {"claimName": "pvc-cdrom-disk"}},
                {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}},
                {"name": "cloudinitdisk", "cloudInitNoCloud": {"secretRef": {"name": "iso-image-template-userdata"}}},
            ]),
            "virtio",
            json!({}),
        ),
    );
    let raw = version(
        "raw-image-base-version",
        "raw-image-base-template",
        json!({DEFAULT_USERDATA_SECRET_ANNOTATION: "raw-image-template-userdata"}),
        harvester_vm(
            claims(&[claim("pvc-rootdisk", "10Gi", true)]),
            json!({}),
            json!([
                {"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 1},
                {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
            ]),
            json!([
                {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}},
                {"name": "cloudinitdisk", "cloudInitNoCloud": {"secretRef": {"name": "raw-image-template-userdata"}}},
            ]),
            "virtio",
            json!({}),
        ),
    );
    let windows_iso = version(
        "windows-iso-image-base-version",
        "windows-iso-image-base-template",
        json!({}),
        harvester_vm(
            {
                let mut a = claims(&[claim("pvc-cdrom-disk", "20Gi", true), claim("pvc-rootdisk", "32Gi", false)]);
                a["harvesterhci.io/reservedMemory"] = json!("256Mi");
                a
            },
            json!({"harvesterhci.io/os": "windows"}),
            json!([
                {"name": "cdrom-disk", "cdrom": {"bus": "sata"}, "bootOrder": 1},
                {"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 2},
                {"name": "virtio-container-disk", "cdrom": {"bus": "sata"}},
            ]),
            json!([
                {"name": "cdrom-disk", "persistentVolumeClaim": {"claimName": "pvc-cdrom-disk"}},
                {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}},
                {"name": "virtio-container-disk", "containerDisk": {
                    "image": "registry.suse.com/suse/vmdp/vmdp:2.5.4.3", "imagePullPolicy": "IfNotPresent"}},
            ]),
            "e1000",
            json!({"inputs": [{"bus": "usb", "name": "tablet", "type": "tablet"}]}),
        ),
    );
    let linux = version(
        "linux-cloud-init-base-version",
        "linux-cloud-init-template",
        json!({}),
        json!({
            "metadata": {"annotations": claims(&[claim("pvc-rootdisk", "10Gi", true)])},
            "spec": {
                "runStrategy": "RerunOnFailure",
                "template": {"spec": {
                    "evictionStrategy": "LiveMigrateIfPossible",
                    "domain": {
                        "features": {"acpi": {"enabled": true}},
                        "cpu": {"cores": 2},
                        "devices": {
                            "disks": [
                                {"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 1},
                                {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
                            ],
                            "interfaces": [{"name": "default", "masquerade": {}, "model": "virtio"}],
                        },
                        "resources": {"limits": {"memory": "2Gi", "cpu": "2"}},
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [
                        {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}},
                        {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": GUEST_AGENT_USER_DATA}},
                    ],
                }},
            },
        }),
    );
    vec![
        userdata_secret("iso-image-template-userdata"),
        userdata_secret("raw-image-template-userdata"),
        template("iso-image-base-template", "Template for booting the virtual machine from an ISO image"),
        template("raw-image-base-template", "Template for booting the virtual machine from a qcow2/raw image"),
        template(
            "windows-iso-image-base-template",
            "Template for booting the Windows virtual machine from an ISO image",
        ),
        template(
            "linux-cloud-init-template",
            "Linux from a cloud image (qcow2/raw) with cloud-init: 2 vCPU, 2Gi, the guest agent, the management network",
        ),
        iso,
        raw,
        windows_iso,
        linux,
    ]
}
