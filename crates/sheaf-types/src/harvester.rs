//! Harvester's kinds that Sheaf serves with Harvester's shapes
//! (`harvesterhci.io/v1beta1`).

use base64::Engine as _;
use schemars::JsonSchema;
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
