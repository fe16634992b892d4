//! Cloud-init seed images for a VMI's `cloudInitNoCloud` and
//! `cloudInitConfigDrive` volumes: user and network data from the spec, from
//! base64, or from Secrets; meta-data with the instance id and hostname.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sheaf_client::{Api, Typed};
use sheaf_types::core::Secret;
use sheaf_types::harvester::{KeyPair, SSH_NAMES_ANNOTATION};
use sheaf_types::kubevirt::{CloudInitSource, VirtualMachineInstance};

use crate::launch::LaunchError;

/// Standard base64, tolerant of whitespace (line-wrapped values).
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact).ok()
}

fn volume_error(volume: &str, message: impl Into<String>) -> LaunchError {
    LaunchError::Volume { volume: volume.into(), message: message.into() }
}

async fn secret_value(
    api: &dyn Api,
    ns: &str,
    secret: &str,
    keys: &[&str],
    volume: &str,
) -> Result<Option<String>, LaunchError> {
    // Secret's own type decodes its base64 data.
    let obj: Secret = Typed::new(api)
        .get(Some(ns), secret)
        .await
        .map_err(|e| volume_error(volume, format!("cannot read secret {secret:?}: {e}")))?
        .ok_or_else(|| volume_error(volume, format!("secret {secret:?} not found in namespace {ns:?}")))?;
    for k in keys {
        if let Some(v) = obj.data.get(*k) {
            return String::from_utf8(v.0.clone())
                .map(Some)
                .map_err(|_| volume_error(volume, format!("secret {secret:?} key {k:?} is not UTF-8 text")));
        }
    }
    Ok(None)
}

/// User and network data of one cloud-init source, resolved.
pub struct Resolved {
    pub user_data: Option<String>,
    pub network_data: Option<String>,
}

async fn resolve(api: &dyn Api, ns: &str, src: &CloudInitSource, volume: &str) -> Result<Resolved, LaunchError> {
    let user_data = if let Some(u) = &src.user_data {
        Some(u.clone())
    } else if let Some(b) = &src.user_data_base64 {
        let bytes = decode_b64(b).ok_or_else(|| volume_error(volume, "userDataBase64 is not valid base64"))?;
        Some(String::from_utf8(bytes).map_err(|_| volume_error(volume, "userDataBase64 is not UTF-8 text"))?)
    } else if let Some(r) = &src.secret_ref {
        let v = secret_value(api, ns, &r.name, &["userdata", "userData"], volume).await?;
        Some(v.ok_or_else(|| volume_error(volume, format!("secret {:?} has no userdata or userData key", r.name)))?)
    } else {
        None
    };
    let network_data = if let Some(n) = &src.network_data {
        Some(n.clone())
    } else if let Some(b) = &src.network_data_base64 {
        let bytes = decode_b64(b).ok_or_else(|| volume_error(volume, "networkDataBase64 is not valid base64"))?;
        Some(String::from_utf8(bytes).map_err(|_| volume_error(volume, "networkDataBase64 is not UTF-8 text"))?)
    } else if let Some(r) = &src.network_data_secret_ref {
        secret_value(api, ns, &r.name, &["networkdata", "networkData"], volume).await?
    } else {
        None
    };
    Ok(Resolved { user_data, network_data })
}

/// The SSH public keys to put into the guest: from the KeyPairs named by
/// Harvester's `harvesterhci.io/sshNames` annotation, and from KubeVirt
/// `accessCredentials` Secrets propagated by cloud-init.
async fn authorized_keys(
    api: &dyn Api,
    vmi: &VirtualMachineInstance,
    ns: &str,
    volume: &str,
) -> Result<Vec<String>, LaunchError> {
    let mut keys = Vec::new();
    if let Some(names) = vmi.metadata.annotations.get(SSH_NAMES_ANNOTATION) {
        let names: Vec<String> = serde_json::from_str(names).map_err(|_| {
            volume_error(
                volume,
                format!("annotation {SSH_NAMES_ANNOTATION} must be a JSON list of KeyPair names, not {names:?}"),
            )
        })?;
        for full in names {
            let (kp_ns, name) = full.split_once('/').unwrap_or((ns, full.as_str()));
            let kp: KeyPair = Typed::new(api)
                .get(Some(kp_ns), name)
                .await
                .map_err(|e| volume_error(volume, format!("cannot read KeyPair {kp_ns}/{name}: {e}")))?
                .ok_or_else(|| {
                    volume_error(
                        volume,
                        format!("KeyPair {kp_ns}/{name} (annotation {SSH_NAMES_ANNOTATION}) does not exist"),
                    )
                })?;
            keys.push(kp.spec.public_key.trim().to_string());
        }
    }
    for (i, cred) in vmi.spec.access_credentials.iter().enumerate() {
        let Some(ssh) = cred.get("sshPublicKey") else {
            return Err(volume_error(
                volume,
                format!("accessCredentials[{i}]: only sshPublicKey credentials are supported"),
            ));
        };
        let method = ssh.get("propagationMethod").and_then(Value::as_object);
        if !method.is_some_and(|m| m.contains_key("noCloud") || m.contains_key("configDrive")) {
            return Err(volume_error(
                volume,
                format!("accessCredentials[{i}]: propagationMethod must be noCloud or configDrive"),
            ));
        }
        let Some(secret) = ssh.pointer("/source/secret/secretName").and_then(Value::as_str) else {
            return Err(volume_error(volume, format!("accessCredentials[{i}]: source.secret.secretName is required")));
        };
        let obj: Secret = Typed::new(api)
            .get(Some(ns), secret)
            .await
            .map_err(|e| volume_error(volume, format!("cannot read secret {secret:?}: {e}")))?
            .ok_or_else(|| volume_error(volume, format!("secret {secret:?} not found in namespace {ns:?}")))?;
        for v in obj.data.values() {
            let text = String::from_utf8_lossy(&v.0);
            keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
        }
    }
    for k in &keys {
        sheaf_types::harvester::parse_public_key(k).map_err(|e| {
            volume_error(volume, format!("SSH key {:?}...: {e}", k.chars().take(24).collect::<String>()))
        })?;
    }
    Ok(keys)
}

/// Adds `keys` to the `ssh_authorized_keys` of cloud-config user data,
/// keeping the text (and its comments) as written when it has none yet.
pub fn add_authorized_keys(user_data: Option<String>, keys: &[String]) -> Result<Option<String>, String> {
    if keys.is_empty() {
        return Ok(user_data);
    }
    let text = user_data.unwrap_or_default();
    if text.trim().is_empty() {
        let mut out = String::from("#cloud-config\nssh_authorized_keys:\n");
        for k in keys {
            out.push_str(&format!("  - {}\n", serde_json::to_string(k).unwrap_or_default()));
        }
        return Ok(Some(out));
    }
    if !text.starts_with("#cloud-config") {
        return Err("SSH keys can only be added to user data that is #cloud-config (this user data is not)".into());
    }
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("the #cloud-config user data is not valid YAML: {e}"))?;
    let mut map = match doc {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => serde_yaml::Mapping::new(),
        _ => return Err("the #cloud-config user data is not a mapping".into()),
    };
    let field = serde_yaml::Value::String("ssh_authorized_keys".into());
    if !map.contains_key(&field) {
        let mut out = text.clone();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("ssh_authorized_keys:\n");
        for k in keys {
            out.push_str(&format!("  - {}\n", serde_json::to_string(k).unwrap_or_default()));
        }
        // Appending is right for block-style documents; check it parsed so.
        let reparsed: Option<serde_yaml::Value> = serde_yaml::from_str(&out).ok();
        let got = reparsed.as_ref().and_then(|v| v.get("ssh_authorized_keys")).and_then(|v| v.as_sequence());
        if got.is_some_and(|seq| seq.len() == keys.len()) {
            return Ok(Some(out));
        }
    }
    let list = map.entry(field).or_insert_with(|| serde_yaml::Value::Sequence(Vec::new()));
    let serde_yaml::Value::Sequence(seq) = list else {
        return Err("ssh_authorized_keys in the user data is not a list".into());
    };
    for k in keys {
        let v = serde_yaml::Value::String(k.clone());
        if !seq.contains(&v) {
            seq.push(v);
        }
    }
    let body = serde_yaml::to_string(&serde_yaml::Value::Mapping(map)).map_err(|e| e.to_string())?;
    Ok(Some(format!("#cloud-config\n{body}")))
}

/// Builds every seed image the VMI needs in `dir`; returns volume → path.
pub async fn prepare(
    api: &dyn Api,
    vmi: &VirtualMachineInstance,
    dir: &Path,
) -> Result<HashMap<String, PathBuf>, LaunchError> {
    let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let hostname = vmi.spec.hostname.clone().unwrap_or_else(|| name.clone());
    let mut out = HashMap::new();
    for vol in &vmi.spec.volumes {
        let (src, config_drive) = match (&vol.cloud_init_no_cloud, &vol.cloud_init_config_drive) {
            (Some(s), _) => (s, false),
            (None, Some(s)) => (s, true),
            _ => continue,
        };
        let r = resolve(api, &ns, src, &vol.name).await?;
        let keys = authorized_keys(api, vmi, &ns, &vol.name).await?;
        let user_data =
            add_authorized_keys(r.user_data, &keys).map_err(|e| volume_error(&vol.name, e))?.unwrap_or_default();
        let user_data = user_data.into_bytes();
        let iso = if config_drive {
            let cd = sheaf_qemu::seed::ConfigDrive {
                user_data,
                network_data: r.network_data,
                meta_data: sheaf_qemu::seed::ConfigDriveMetaData {
                    instance_id: uid.clone(),
                    uuid: Some(uid.clone()),
                    local_hostname: Some(hostname.clone()),
                    hostname: Some(hostname.clone()),
                    name: Some(name.clone()),
                    ..Default::default()
                },
            };
            sheaf_qemu::seed::configdrive_iso(&cd)
        } else {
            let nc = sheaf_qemu::seed::NoCloud {
                user_data,
                network_data: r.network_data,
                meta_data: sheaf_qemu::seed::NoCloudMetaData {
                    instance_id: format!("{name}.{ns}"),
                    local_hostname: Some(hostname.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            sheaf_qemu::seed::nocloud_iso(&nc)
        }
        .map_err(|e| volume_error(&vol.name, e.to_string()))?;
        let path = dir.join(format!("{}.seed.iso", vol.name));
        std::fs::write(&path, iso)
            .map_err(|e| LaunchError::Io { what: format!("writing {}", path.display()), source: e })?;
        out.insert(vol.name.clone(), path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::add_authorized_keys;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm0KmXtOYOfA6m4iU6s2qzUx0lA9nI3Kz1h3xv2Sx3H me@host";

    fn keys_of(text: &str) -> Vec<String> {
        let v: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
        serde_yaml::from_value(v["ssh_authorized_keys"].clone()).expect("list")
    }

    #[test]
    fn keys_go_into_cloud_config() {
        let keys = vec![KEY.to_string()];
        // No user data: a cloud-config with the keys.
        let out = add_authorized_keys(None, &keys).expect("ok").expect("some");
        assert!(out.starts_with("#cloud-config\n"));
        assert_eq!(keys_of(&out), keys);
        // Appended, with comments kept.
        let ud = "#cloud-config\n# marker: m1\nhostname: a\n".to_string();
        let out = add_authorized_keys(Some(ud), &keys).expect("ok").expect("some");
        assert!(out.contains("# marker: m1"), "{out}");
        assert_eq!(keys_of(&out), keys);
        // Merged into an existing list, without duplicates.
        let ud = format!("#cloud-config\nssh_authorized_keys:\n  - {KEY}\n  - ssh-rsa AAAA other\n");
        let out = add_authorized_keys(Some(ud), &keys).expect("ok").expect("some");
        assert_eq!(keys_of(&out).len(), 2, "{out}");
        // Flow style: re-serialised.
        let out = add_authorized_keys(Some("#cloud-config\n{hostname: a}".into()), &keys).expect("ok").expect("x");
        assert_eq!(keys_of(&out), keys);
        // Scripts can't carry keys; no keys leaves the data alone.
        assert!(add_authorized_keys(Some("#!/bin/sh\necho".into()), &keys).is_err());
        assert_eq!(add_authorized_keys(Some("#!/bin/sh".into()), &[]).expect("ok").as_deref(), Some("#!/bin/sh"));
    }
}
