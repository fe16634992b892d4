//! The Source and Sink of [`crate::volume`] over Sheaf's block engine: a
//! snapshot read from a replica, and a volume written through its engine.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sheaf_blk::auth::ClusterKey;
use sheaf_blk::engine::{Engine, EngineError, SnapshotReader};
use sheaf_blk::replica_server::Address;

use crate::volume::{Sink, Source};

/// A snapshot read over a few connections to one replica (each carries
/// one request at a time).
pub struct SnapshotSource {
    readers: Vec<tokio::sync::Mutex<SnapshotReader>>,
    next: AtomicU64,
    size: u64,
}

impl SnapshotSource {
    /// Snapshot `layer` of the replica at `address`, `size` bytes (the
    /// volume's size when it was taken), over `connections` connections.
    pub async fn open(
        address: &Address,
        layer: &str,
        key: Option<&ClusterKey>,
        size: u64,
        connections: usize,
    ) -> Result<SnapshotSource, EngineError> {
        let mut readers = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            readers.push(tokio::sync::Mutex::new(SnapshotReader::open_with_key(address, layer, key).await?));
        }
        Ok(SnapshotSource { readers, next: AtomicU64::new(0), size })
    }
}

#[async_trait]
impl Source for SnapshotSource {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.readers.len();
        let r = self.readers[i].lock().await;
        r.read(offset, len).await.map_err(|e| e.to_string())
    }

    async fn changed(&self, since: &str, block: u64, count: u64) -> Result<Vec<u8>, String> {
        let r = self.readers[0].lock().await;
        r.changed(Some(since), block, count).await.map_err(|e| e.to_string())
    }

    async fn written(&self, block: u64, count: u64) -> Result<Vec<u8>, String> {
        let r = self.readers[0].lock().await;
        if r.has_base() {
            return Err("the volume sits on a base image: its unwritten blocks are the image's".into());
        }
        r.changed(None, block, count).await.map_err(|e| e.to_string())
    }
}

/// Writes into a new volume through its engine.
pub struct EngineSink<'a>(pub &'a Engine);

#[async_trait]
impl Sink for EngineSink<'_> {
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), String> {
        self.0.write(offset, data).await.map_err(|e| e.to_string())
    }

    async fn flush(&self) -> Result<(), String> {
        self.0.flush().await.map_err(|e| e.to_string())
    }
}
