//! A backup repository on a target:
//!
//! ```text
//! sheaf-backup.json                      the format marker
//! chunks/ab/cd/abcd…(64 hex)             chunks, by the SHA-256 of their data
//! volumes/NAMESPACE/VOLUME/BACKUP.json   one manifest per complete backup
//! ```
//!
//! A backup's chunks go first and its manifest last, so an interrupted
//! backup is never listed, and running it again finds the chunks it had
//! sent. Chunks are shared by every backup on the target; garbage
//! collection removes those no manifest names any more.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::json;

use crate::chunk::{self, Compression};
use crate::manifest::{ChunkId, VolumeManifest, FORMAT};
use crate::store::{ObjectStore, StoreError};

const MARKER: &str = "sheaf-backup.json";
/// Largest chunk a manifest may use (a hostile manifest cannot make a
/// reader allocate more).
pub const MAX_CHUNK: u64 = 16 << 20;
/// Requests to the target in flight at once.
pub const PARALLEL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("chunk {0} is missing from the target")]
    Missing(ChunkId),
    #[error("chunk {id} is corrupt: {why}")]
    Corrupt { id: ChunkId, why: String },
    #[error("{0}")]
    Format(String),
}

#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    compression: Compression,
}

/// What a verification found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyReport {
    pub checked: u64,
    /// `(chunk index, id, what is wrong)`.
    pub bad: Vec<(usize, ChunkId, String)>,
}

/// What garbage collection removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcReport {
    pub chunks_kept: u64,
    pub chunks_deleted: u64,
    pub bytes_deleted: u64,
}

pub fn chunk_key(id: &ChunkId) -> String {
    format!("chunks/{}/{}/{}", &id.0[..2], &id.0[2..4], id.0)
}

impl Repository {
    pub fn new(store: Arc<dyn ObjectStore>, compression: Compression) -> Repository {
        Repository { store, compression }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Makes the target a repository (writes the marker) or checks that
    /// it is one this code can read.
    pub async fn init(&self) -> Result<(), RepoError> {
        match self.store.get(MARKER).await? {
            Some(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b)
                    .map_err(|e| RepoError::Format(format!("{MARKER} on the target is not JSON: {e}")))?;
                match v.get("format").and_then(|f| f.as_u64()) {
                    Some(f) if f == u64::from(FORMAT) => Ok(()),
                    other => Err(RepoError::Format(format!(
                        "the target holds backups of format {other:?}; this Sheaf reads format {FORMAT}"
                    ))),
                }
            }
            None => {
                let marker = json!({"format": FORMAT, "created": chrono::Utc::now().to_rfc3339()});
                self.store.put(MARKER, Bytes::from(marker.to_string())).await?;
                Ok(())
            }
        }
    }

    /// The health check: the marker, and an object written, read back
    /// and deleted.
    pub async fn check(&self) -> Result<(), RepoError> {
        self.init().await?;
        let mut nonce = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| RepoError::Format("no randomness".into()))?;
        let key = format!("probes/{}", nonce.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let body = Bytes::from_static(b"sheaf backup target check");
        self.store.put(&key, body.clone()).await?;
        let back = self.store.get(&key).await?;
        self.store.delete(&key).await?;
        if back.as_ref() != Some(&body) {
            return Err(RepoError::Format(format!(
                "an object written to {} did not read back the same",
                self.store.describe()
            )));
        }
        Ok(())
    }

    pub async fn has_chunk(&self, id: &ChunkId) -> Result<bool, RepoError> {
        Ok(self.store.exists(&chunk_key(id)).await?)
    }

    /// Compresses `data` with the repository's codec (CPU work: call it
    /// off the async threads).
    pub fn encode(&self, data: &[u8]) -> (ChunkId, Bytes) {
        chunk::encode(data, self.compression)
    }

    pub async fn put_chunk(&self, id: &ChunkId, object: Bytes) -> Result<(), RepoError> {
        Ok(self.store.put(&chunk_key(id), object).await?)
    }

    /// A chunk's data, checked against its id.
    pub async fn get_chunk(&self, id: &ChunkId, max_len: u64) -> Result<Vec<u8>, RepoError> {
        let obj = self.store.get(&chunk_key(id)).await?.ok_or_else(|| RepoError::Missing(id.clone()))?;
        let id2 = id.clone();
        let max = max_len.min(MAX_CHUNK) as usize;
        tokio::task::spawn_blocking(move || chunk::decode(&obj, &id2, max))
            .await
            .map_err(|e| RepoError::Format(format!("decoding task failed: {e}")))?
            .map_err(|why| RepoError::Corrupt { id: id.clone(), why })
    }

    pub async fn put_manifest(&self, m: &VolumeManifest) -> Result<(), RepoError> {
        let body = serde_json::to_vec(m).map_err(|e| RepoError::Format(e.to_string()))?;
        Ok(self.store.put(&m.key(), Bytes::from(body)).await?)
    }

    /// The manifest at `key`, checked.
    pub async fn manifest(&self, key: &str) -> Result<Option<VolumeManifest>, RepoError> {
        let Some(b) = self.store.get(key).await? else { return Ok(None) };
        let m: VolumeManifest =
            serde_json::from_slice(&b).map_err(|e| RepoError::Format(format!("manifest {key} is unreadable: {e}")))?;
        check_manifest(&m).map_err(|e| RepoError::Format(format!("manifest {key}: {e}")))?;
        Ok(Some(m))
    }

    pub async fn delete_manifest(&self, key: &str) -> Result<(), RepoError> {
        Ok(self.store.delete(key).await?)
    }

    /// Every manifest key on the target.
    pub async fn manifest_keys(&self) -> Result<Vec<String>, RepoError> {
        let list = self.store.list("volumes/").await?;
        Ok(list.into_iter().map(|o| o.key).filter(|k| k.ends_with(".json")).collect())
    }

    /// Every manifest; unreadable ones are returned as errors next to
    /// their key.
    pub async fn manifests(&self) -> Result<Vec<(String, Result<VolumeManifest, RepoError>)>, RepoError> {
        let keys = self.manifest_keys().await?;
        let out = futures::stream::iter(keys)
            .map(|k| async move {
                let m = match self.manifest(&k).await {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err(RepoError::Format(format!("manifest {k} vanished"))),
                    Err(e) => Err(e),
                };
                (k, m)
            })
            .buffered(PARALLEL)
            .collect()
            .await;
        Ok(out)
    }

    /// Re-reads every chunk of `m` and checks it against its hash;
    /// `progress(done, total)` after each.
    pub async fn verify(&self, m: &VolumeManifest, progress: &(dyn Fn(u64, u64) + Send + Sync)) -> VerifyReport {
        let total = m.chunks.len() as u64;
        let mut report = VerifyReport::default();
        let chunk_size = m.chunk_size;
        let mut results = futures::stream::iter(m.chunks.clone().into_iter().enumerate())
            .map(|(i, c)| {
                let repo = self.clone();
                async move {
                    match c {
                        None => (i, None),
                        Some(id) => {
                            let r = repo.get_chunk(&id, chunk_size).await;
                            (i, Some((id, r)))
                        }
                    }
                }
            })
            .buffered(PARALLEL);
        let mut done = 0;
        while let Some((i, r)) = results.next().await {
            done += 1;
            if let Some((id, r)) = r {
                report.checked += 1;
                match r {
                    Ok(data) if data.len() as u64 == m.chunk_size || i + 1 == m.chunks.len() => {}
                    Ok(data) => report.bad.push((i, id, format!("{} bytes instead of {}", data.len(), m.chunk_size))),
                    Err(RepoError::Missing(_)) => report.bad.push((i, id, "missing".into())),
                    Err(RepoError::Corrupt { why, .. }) => report.bad.push((i, id, why)),
                    Err(e) => report.bad.push((i, id, e.to_string())),
                }
            }
            progress(done, total);
        }
        report
    }

    /// Deletes the chunks no manifest names that are older than
    /// `min_age_secs` (younger ones may belong to a backup still being
    /// written). Does nothing if a manifest cannot be read: its chunks
    /// would be lost.
    pub async fn gc(&self, min_age_secs: i64) -> Result<GcReport, RepoError> {
        let started = chrono::Utc::now().timestamp();
        let mut referenced: HashSet<ChunkId> = HashSet::new();
        for (key, m) in self.manifests().await? {
            let m = m.map_err(|e| RepoError::Format(format!("not collecting garbage: {key}: {e}")))?;
            referenced.extend(m.chunks.into_iter().flatten());
        }
        let mut report = GcReport::default();
        let chunks = self.store.list("chunks/").await?;
        let doomed: Vec<_> = chunks
            .into_iter()
            .filter(|o| {
                let id = o.key.rsplit('/').next().unwrap_or_default();
                let keep = !ChunkId::valid(id)
                    || referenced.contains(&ChunkId(id.to_string()))
                    || started - o.modified < min_age_secs;
                if keep {
                    report.chunks_kept += 1;
                }
                !keep
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(doomed)
            .map(|o| async move { self.store.delete(&o.key).await.map(|_| o.size) })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for r in results {
            report.bytes_deleted += r?;
            report.chunks_deleted += 1;
        }
        Ok(report)
    }
}

/// What a reader relies on in a manifest.
pub fn check_manifest(m: &VolumeManifest) -> Result<(), String> {
    if m.format != FORMAT {
        return Err(format!("format {} (this Sheaf reads {FORMAT})", m.format));
    }
    if m.chunk_size == 0 || m.chunk_size > MAX_CHUNK || !m.chunk_size.is_multiple_of(4096) {
        return Err(format!("chunk size {} is not a multiple of 4096 up to {MAX_CHUNK}", m.chunk_size));
    }
    let want = m.volume.size.div_ceil(m.chunk_size);
    if m.chunks.len() as u64 != want {
        return Err(format!("{} chunks for a volume of {} bytes (expected {want})", m.chunks.len(), m.volume.size));
    }
    if let Some(bad) = m.chunks.iter().flatten().find(|c| !ChunkId::valid(&c.0)) {
        return Err(format!("{bad:?} is not a chunk id"));
    }
    Ok(())
}
