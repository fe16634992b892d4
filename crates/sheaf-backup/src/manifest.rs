//! What a target keeps about each backup.

use serde::{Deserialize, Serialize};

/// The SHA-256 of a chunk's uncompressed data, as 64 lower-case hex
/// digits: its name on the target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkId(pub String);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut s = String::with_capacity(64);
        for b in d.as_ref() {
            s.push_str(&format!("{b:02x}"));
        }
        ChunkId(s)
    }

    /// Whether `s` is a well-formed id.
    pub fn valid(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The volume a backup was taken of.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Its size when the snapshot was taken, in bytes.
    pub size: u64,
}

/// Numbers of one backup run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStats {
    /// Bytes read from the volume's snapshot.
    pub bytes_read: u64,
    /// Bytes sent to the target (compressed chunks).
    pub bytes_uploaded: u64,
    /// Chunks this backup put on the target.
    pub chunks_new: u64,
    /// Chunks that were on the target already (any volume's).
    pub chunks_reused: u64,
    /// Chunks taken from the previous backup without reading them.
    pub chunks_unchanged: u64,
    /// Chunks of zeros (stored as nothing).
    pub chunks_zero: u64,
}

/// One complete volume backup. Its chunk list covers the volume in
/// [`VolumeManifest::chunk_size`] pieces; `None` is a chunk of zeros.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeManifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The backup's name (unique per volume on a target).
    pub name: String,
    pub volume: VolumeRef,
    /// The snapshot it was read from.
    pub snapshot: String,
    /// RFC 3339 times.
    pub created: String,
    pub completed: String,
    pub chunk_size: u64,
    pub chunks: Vec<Option<ChunkId>>,
    /// The backup whose chunks the unchanged parts were taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub stats: BackupStats,
    /// Labels of the Backup object, kept so another cluster sees them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;
/// Chunk size of new backups: 1 MiB.
pub const CHUNK_SIZE: u64 = 1 << 20;

impl VolumeManifest {
    /// The `status` of the Backup this manifest (at `key`) completes.
    pub fn backup_status(&self, key: &str) -> serde_json::Value {
        serde_json::json!({
            "phase": "Completed", "progress": 100, "manifest": key,
            "volumeUid": self.volume.uid, "size": self.volume.size, "parent": self.parent,
            "bytesRead": self.stats.bytes_read, "bytesUploaded": self.stats.bytes_uploaded,
            "chunksNew": self.stats.chunks_new, "chunksReused": self.stats.chunks_reused,
            "chunksUnchanged": self.stats.chunks_unchanged,
            "startTime": self.created, "completionTime": self.completed, "error": null,
        })
    }

    /// The key of this manifest on its target.
    pub fn key(&self) -> String {
        manifest_key(&self.volume.namespace, &self.volume.name, &self.name)
    }
}

/// `volumes/<namespace>/<volume>/<backup>.json`.
pub fn manifest_key(namespace: &str, volume: &str, backup: &str) -> String {
    format!("volumes/{namespace}/{volume}/{backup}.json")
}
