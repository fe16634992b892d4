//! Harvester's kinds that Sheaf serves with Harvester's shapes
//! (`harvesterhci.io/v1beta1`).

use base64::Engine as _;
use schemars::JsonSchema;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::meta::{Condition, ObjectMeta};
use crate::resource::{Column, Kind};
use crate::validation::FieldError;

/// The VM annotation that names the KeyPairs whose public keys are put
/// into the guest's cloud-init user data: a JSON list of `"name"` or
/// `"namespace/name"`.
pub const SSH_NAMES_ANNOTATION: &str = "harvesterhci.io/sshNames";

/// An SSH public key that VMs can reference for login.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPair {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: KeyPairSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<KeyPairStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPairSpec {
    /// The public key in OpenSSH format, for example `ssh-ed25519 AAAA... user@host`.
    #[serde(default)]
    pub public_key: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPairStatus {
    /// SHA256 fingerprint of the key, as `ssh-keygen -l` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finger_print: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Parses an OpenSSH public key line; returns the key blob.
pub fn parse_public_key(line: &str) -> Result<Vec<u8>, String> {
    let line = line.trim();
    if line.contains('\n') {
        return Err("must be a single public key on one line".into());
    }
    let mut parts = line.split_whitespace();
    let kind = parts.next().ok_or("must not be empty")?;
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "key type {kind:?} is not an OpenSSH public key type (expected one of {}); \
             paste the contents of the .pub file, not the private key",
            KEY_TYPES.join(", ")
        ));
    }
    let body = parts.next().ok_or("has no key data after the key type")?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("key data is not valid base64: {e}"))?;
    // The blob starts with the key type as an SSH string.
    let len = blob.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).unwrap_or(usize::MAX);
    if blob.get(4..4usize.saturating_add(len)) != Some(kind.as_bytes()) {
        return Err(format!("key data does not hold a {kind} key"));
    }
    Ok(blob)
}

/// `SHA256:...` fingerprint of a public key blob.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = sha2::Sha256::digest(blob);
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

impl Kind for KeyPair {
    const GROUP: &'static str = "harvesterhci.io";
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "KeyPair";
    const PLURAL: &'static str = "keypairs";
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        match parse_public_key(&self.spec.public_key) {
            Ok(_) => vec![],
            Err(_) if self.spec.public_key.trim().is_empty() => vec![FieldError::required("spec.publicKey")],
            Err(e) => vec![FieldError::invalid("spec.publicKey", e)],
        }
    }
    fn normalize(&mut self) {
        self.spec.public_key = self.spec.public_key.trim().to_string();
        if let Ok(blob) = parse_public_key(&self.spec.public_key) {
            let status = self.status.get_or_insert_with(Default::default);
            status.finger_print = Some(fingerprint(&blob));
        }
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Fingerprint", "string", ".status.fingerPrint")]
    }
    fn description() -> &'static str {
        "An SSH public key that virtual machines reference (annotation harvesterhci.io/sshNames) to have it \
         put into their cloud-init user data."
    }
}

/// Where a VirtualMachineImage's content comes from.
pub const IMAGE_SOURCE_TYPES: &[&str] = &["download", "upload", "export-from-volume"];

/// A disk image that volumes (and so VM disks) are made from: qcow2, raw
/// or ISO, downloaded from a URL, uploaded through the API or exported
/// from a volume. Stored once per node that needs it, as the read-only base
/// layer every volume made from it shares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineImage {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineImageSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineImageStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineImageSpec {
    /// The name people see (required).
    #[serde(default)]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `download` (from `url`), `upload` (through the API:
    /// `sheaf image upload`) or `export-from-volume` (`pvcNamespace`/`pvcName`).
    #[serde(default)]
    pub source_type: String,
    /// http(s) URL to download (sourceType download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// SHA-512 of the file as downloaded or uploaded (128 hex digits);
    /// the import fails when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The claim (or Volume) to export (sourceType export-from-volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_namespace: Option<String>,
    /// Export this VolumeSnapshot of the volume instead of its live data
    /// (sourceType export-from-volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_name: Option<String>,
    /// Parameters of the StorageClass made for the image
    /// (`numberOfReplicas`, `staleReplicaTimeout`, `diskSelector`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_class_parameters: BTreeMap<String, String>,
    /// How many times a failed download is retried (0..10, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineImageStatus {
    /// The URL the import used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_url: Option<String>,
    /// Percent of the import done, 0..100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u32>,
    /// Bytes of the file as imported (before conversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Size of the disk the image holds: the smallest volume made from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<i64>,
    /// The format detected from the content: `qcow2`, `raw` or `iso`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// SHA-512 of the file as imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
    /// The StorageClass whose claims are made from this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The import failed for good (see the `Imported` condition).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    /// Failed attempts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// The nodes that hold the image's base layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// `Initialized` and `Imported` (reason and message say why not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where an image of `source_type` must not set `field`.
fn image_source_fields(spec: &VirtualMachineImageSpec) -> Vec<(&'static str, bool)> {
    vec![
        ("spec.url", spec.url.is_some()),
        ("spec.pvcName", spec.pvc_name.is_some()),
        ("spec.pvcNamespace", spec.pvc_namespace.is_some()),
        ("spec.snapshotName", spec.snapshot_name.is_some()),
    ]
}

/// The most downloads of a failed import.
pub const MAX_IMAGE_RETRY: u32 = 10;

impl VirtualMachineImage {
    /// Whether the image holds its data and volumes can be made from it.
    pub fn imported(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Imported" && c.status == "True"))
    }
    /// `NAMESPACE/NAME`, as volumes and claims refer to the image.
    pub fn reference(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or("")
        )
    }
}

impl Kind for VirtualMachineImage {
    const GROUP: &'static str = "harvesterhci.io";
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "VirtualMachineImage";
    const PLURAL: &'static str = "virtualmachineimages";
    const SHORT_NAMES: &'static [&'static str] = &["vmimage", "vmimages"];
    const CATEGORIES: &'static [&'static str] = &["all", "sheaf"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errs = Vec::new();
        if spec.display_name.trim().is_empty() {
            errs.push(FieldError::required("spec.displayName"));
        } else if spec.display_name.len() > 253 {
            errs.push(FieldError::invalid("spec.displayName", "must be at most 253 characters"));
        }
        let allowed: &[&str] = match spec.source_type.as_str() {
            "download" => {
                match spec.url.as_deref() {
                    None | Some("") => errs.push(FieldError::required("spec.url")),
                    Some(u) => {
                        if let Err(e) = check_url(u) {
                            errs.push(FieldError::invalid("spec.url", e));
                        }
                    }
                }
                &["spec.url"]
            }
            "upload" => &[],
            "export-from-volume" => {
                match spec.pvc_name.as_deref() {
                    None | Some("") => errs.push(FieldError::required("spec.pvcName")),
                    Some(n) => {
                        if let Err(e) = crate::validation::dns1123_subdomain(n) {
                            errs.push(FieldError::invalid("spec.pvcName", e));
                        }
                    }
                }
                if let Some(ns) = spec.pvc_namespace.as_deref() {
                    if ns != self.metadata.namespace.as_deref().unwrap_or("default") {
                        errs.push(FieldError::invalid(
                            "spec.pvcNamespace",
                            "must be the image's own namespace (or unset): a volume is exported within its namespace",
                        ));
                    }
                }
                if let Some(s) = spec.snapshot_name.as_deref() {
                    if let Err(e) = crate::validation::dns1123_subdomain(s) {
                        errs.push(FieldError::invalid("spec.snapshotName", e));
                    }
                }
                &["spec.pvcName", "spec.pvcNamespace", "spec.snapshotName"]
            }
            "" => {
                errs.push(FieldError::required("spec.sourceType"));
                &["spec.url", "spec.pvcName", "spec.pvcNamespace", "spec.snapshotName"]
            }
            other => {
                errs.push(FieldError::unsupported("spec.sourceType", other, IMAGE_SOURCE_TYPES));
                &["spec.url", "spec.pvcName", "spec.pvcNamespace", "spec.snapshotName"]
            }
        };
        for (field, set) in image_source_fields(spec) {
            if set && !allowed.contains(&field) {
                errs.push(FieldError::forbidden(field, format!("does not apply to sourceType {:?}", spec.source_type)));
            }
        }
        if let Some(c) = &spec.checksum {
            if !c.is_empty() && (c.len() != 128 || !c.bytes().all(|b| b.is_ascii_hexdigit())) {
                errs.push(FieldError::invalid(
                    "spec.checksum",
                    "must be the SHA-512 of the file: 128 hexadecimal digits (sha512sum prints it)",
                ));
            }
        }
        for k in spec.storage_class_parameters.keys() {
            if k == "image" {
                errs.push(FieldError::forbidden(
                    "spec.storageClassParameters[image]",
                    "is set by Sheaf to the image itself",
                ));
            } else if !crate::claim::KNOWN_PARAMETERS.contains(&k.as_str()) {
                errs.push(FieldError::unsupported(
                    format!("spec.storageClassParameters[{k}]"),
                    k,
                    crate::claim::KNOWN_PARAMETERS,
                ));
            }
        }
        if let Some(r) = spec.retry {
            if r > MAX_IMAGE_RETRY {
                errs.push(FieldError::invalid("spec.retry", format!("{r} is more than {MAX_IMAGE_RETRY}")));
            }
        }
        if let Some(old) = old {
            let o = &old.spec;
            for (field, same) in [
                ("spec.sourceType", o.source_type == spec.source_type),
                ("spec.url", o.url == spec.url),
                ("spec.checksum", o.checksum == spec.checksum),
                ("spec.pvcName", o.pvc_name == spec.pvc_name),
                ("spec.pvcNamespace", o.pvc_namespace == spec.pvc_namespace),
                ("spec.snapshotName", o.snapshot_name == spec.snapshot_name),
            ] {
                if !same {
                    errs.push(FieldError::forbidden(
                        field,
                        "cannot change after the image is created; create a new image",
                    ));
                }
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Display-Name", "string", ".spec.displayName"),
            Column::new("Source", "string", ".spec.sourceType"),
            Column::new("Format", "string", ".status.format"),
            Column::new("Progress", "integer", ".status.progress"),
            Column::new("Virtual-Size", "integer", ".status.virtualSize"),
            Column::new("Size", "integer", ".status.size").wide(),
            Column::new("StorageClass", "string", ".status.storageClassName").wide(),
        ]
    }
    fn description() -> &'static str {
        "A disk image (qcow2, raw or ISO) that volumes and VM disks are made from: downloaded from a URL, \
         uploaded (sheaf image upload) or exported from a volume. Volumes made from it share it as their \
         read-only base layer."
    }
}

/// An http(s) URL with a host; credentials in it are refused (they would
/// show in the object).
pub fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| format!("{u:?} is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{u:?} has no host"));
    }
    if authority.contains('@') {
        return Err("must not carry a user name or password; serve the image without credentials".into());
    }
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm0KmXtOYOfA6m4iU6s2qzUx0lA9nI3Kz1h3xv2Sx3H user@host";

    #[test]
    fn parses_and_fingerprints_a_key() {
        let blob = parse_public_key(ED25519).expect("valid key");
        assert_eq!(&blob[4..15], b"ssh-ed25519");
        assert!(fingerprint(&blob).starts_with("SHA256:"));
        assert_eq!(fingerprint(&blob).len(), "SHA256:".len() + 43);
    }

    #[test]
    fn rejects_what_is_not_a_public_key() {
        for (bad, why) in [
            ("", "empty"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "not an OpenSSH public key type"),
            ("ssh-ed25519", "no key data"),
            ("ssh-ed25519 !!!", "not valid base64"),
            ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIBm0KmXtOYOfA6m4iU6s2qzUx0lA9nI3Kz1h3xv2Sx3H", "does not hold a ssh-rsa"),
            ("ssh-ed25519 AAAA\nssh-ed25519 AAAA", "single public key"),
        ] {
            let err = parse_public_key(bad).expect_err(bad);
            assert!(err.contains(why) || (bad.is_empty() && err.contains("empty")), "{bad:?}: {err}");
        }
    }
}
