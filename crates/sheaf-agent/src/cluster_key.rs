//! The cluster key that replica connections between nodes prove (see
//! docs/design/storage-engine.md, "Authentication"): 32 random bytes in
//! the Secret `sheaf-system/sheaf-replica-key`. The first agent that finds
//! none creates it; every agent keeps it in memory, and writes a copy only
//! root can read for the storage processes it starts (`--auth-key-file`)
//! when it first starts one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr};
use sheaf_types::core::Secret;

pub const NAMESPACE: &str = "sheaf-system";
pub const SECRET: &str = "sheaf-replica-key";
const KEY: &str = "key";

fn decode(secret: &Value) -> Option<Vec<u8>> {
    let b64 = secret.pointer(&format!("/data/{KEY}"))?.as_str()?;
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (key.len() >= 32).then_some(key)
}

/// The key, made if the cluster has none yet.
async fn fetch(api: &dyn Api) -> Result<Vec<u8>, ClientError> {
    let gvr = Gvr::of::<Secret>();
    loop {
        if let Some(s) = api.get(gvr, Some(NAMESPACE), SECRET).await? {
            return decode(&s).ok_or_else(|| {
                ClientError::other(format!(
                    "Secret {NAMESPACE}/{SECRET} holds no key of 32 bytes or more under data.{KEY}; \
                     delete it and restart an agent to make a new one"
                ))
            });
        }
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| ClientError::other("no randomness for the cluster key"))?;
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "data": {KEY: base64::engine::general_purpose::STANDARD.encode(key)},
        });
        match api.create(gvr, Some(NAMESPACE), secret).await {
            Ok(_) => return Ok(key.to_vec()),
            // Another agent was first: take its key.
            Err(e) if e.is_already_exists() => continue,
            Err(e) => return Err(e),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster key, retrying until the API answers.
pub async fn get(api: &dyn Api) -> Vec<u8> {
    loop {
        match fetch(api).await {
            Ok(key) => return key,
            Err(e) => tracing::warn!(error = %e, "cannot read the cluster key; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Writes `key` (hex, mode 0600) to `path` atomically, for the storage
/// processes' `--auth-key-file`.
pub fn write_file(path: &Path, key: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(hex(key).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
