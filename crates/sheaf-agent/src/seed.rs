//! Cloud-init seed images for a VMI's `cloudInitNoCloud` and
//! `cloudInitConfigDrive` volumes: user and network data from the spec, from
//! base64, or from Secrets; meta-data with the instance id and hostname.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sheaf_client::{Api, Typed};
use sheaf_types::core::Secret;
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
        let user_data = r.user_data.unwrap_or_default().into_bytes();
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
