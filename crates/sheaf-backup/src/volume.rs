//! Backing up a volume's snapshot, and restoring a backup into a volume.
//!
//! A backup walks the snapshot in [`CHUNK_SIZE`] chunks. With a parent
//! (the volume's previous backup on the target, whose snapshot the
//! replicas still have), the replicas say which 4 KiB blocks changed since
//! that snapshot, and only the chunks holding one are read; the others are
//! the parent's. A chunk read is hashed; a chunk of zeros is stored as
//! nothing, a chunk the target has (from any backup of any volume) is not
//! sent again, any other is compressed and sent. The manifest goes last.

use async_trait::async_trait;
use futures::StreamExt as _;

use crate::manifest::{BackupStats, ChunkId, VolumeManifest, VolumeRef, CHUNK_SIZE, FORMAT};
use crate::repo::Repository;

/// The volume block the changed-block maps count in.
pub const BLOCK: u64 = 4096;
/// Chunks worked on at once.
const IN_FLIGHT: usize = 4;
/// Blocks asked about per changed-block request (16 GiB).
const DELTA_WINDOW: u64 = 1 << 22;

/// A snapshot being backed up.
#[async_trait]
pub trait Source: Send + Sync {
    /// The volume's size as of the snapshot.
    fn size(&self) -> u64;
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, String>;
    /// A bitmap (LSB first) of the `count` blocks from `block` that
    /// changed between snapshot `since` and this one; an error when the
    /// replica no longer has `since`.
    async fn changed(&self, since: &str, block: u64, count: u64) -> Result<Vec<u8>, String>;
    /// A bitmap of the blocks any layer of the snapshot holds (written
    /// since the volume was made), when the others read as zeros (no base
    /// image): a backup without a parent reads only the chunks holding
    /// one (a thin volume is mostly unwritten). An error when the source
    /// cannot say.
    async fn written(&self, _block: u64, _count: u64) -> Result<Vec<u8>, String> {
        Err("this source has no map of written blocks".into())
    }
}

/// A new, blank volume being filled.
#[async_trait]
pub trait Sink: Send + Sync {
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), String>;
    async fn flush(&self) -> Result<(), String>;
}

/// The previous backup this one builds on.
pub struct Parent {
    pub manifest: VolumeManifest,
    /// Its snapshot's layer name on the replicas.
    pub snapshot: String,
}

pub struct Job {
    pub name: String,
    pub volume: VolumeRef,
    /// The snapshot's layer name on the replicas.
    pub snapshot: String,
    pub parent: Option<Parent>,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub stats: BackupStats,
}

enum Piece {
    Unchanged(Option<ChunkId>),
    Zero { read: u64 },
    Reused { id: ChunkId, read: u64 },
    New { id: ChunkId, read: u64, sent: u64 },
}

/// The chunks of a `count`-block bitmap source (`ask(start, count)` in
/// windows) that hold a set bit; None if the source cannot say.
async fn chunks_marked<F, Fut>(blocks: u64, chunks: u64, ask: F) -> Option<Vec<bool>>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, String>>,
{
    let per_chunk = CHUNK_SIZE / BLOCK;
    let mut marked = vec![false; chunks as usize];
    let mut start = 0;
    while start < blocks {
        let count = DELTA_WINDOW.min(blocks - start);
        let map = match ask(start, count).await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "no block map; reading every chunk");
                return None;
            }
        };
        for (byte_i, byte) in map.iter().enumerate().filter(|(_, b)| **b != 0) {
            for bit in 0..8 {
                let block = start + byte_i as u64 * 8 + bit;
                if byte & (1 << bit) != 0 && block < blocks {
                    marked[(block / per_chunk) as usize] = true;
                }
            }
        }
        start += count;
    }
    Some(marked)
}

/// Which chunks to read: None = all of them.
async fn changed_chunks(source: &dyn Source, parent: &Parent, chunks: u64) -> Option<Vec<bool>> {
    let pm = &parent.manifest;
    if pm.chunk_size != CHUNK_SIZE {
        return None;
    }
    let blocks = source.size().div_ceil(BLOCK);
    let mut changed = chunks_marked(blocks, chunks, |b, c| source.changed(&parent.snapshot, b, c)).await?;
    // Chunks the parent did not cover whole (the volume grew).
    if pm.volume.size != source.size() {
        let full_in_parent = (pm.volume.size / CHUNK_SIZE) as usize;
        for c in changed.iter_mut().skip(full_in_parent) {
            *c = true;
        }
    }
    for c in changed.iter_mut().skip(pm.chunks.len()) {
        *c = true;
    }
    Some(changed)
}

/// Backs up `source` as `job` into `repo` and returns the manifest, which
/// is on the target when this returns.
pub async fn backup(
    repo: &Repository,
    source: &dyn Source,
    job: Job,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<VolumeManifest, String> {
    repo.init().await.map_err(|e| e.to_string())?;
    let created = chrono::Utc::now().to_rfc3339();
    let size = source.size();
    let chunks = size.div_ceil(CHUNK_SIZE);
    // Chunks to read; the others are the parent's (or, with no parent,
    // zeros nothing was ever written to).
    let changed = match &job.parent {
        Some(p) => changed_chunks(source, p, chunks).await,
        None => chunks_marked(size.div_ceil(BLOCK), chunks, |b, c| source.written(b, c)).await,
    };
    let parent_chunks: &[Option<ChunkId>] = job.parent.as_ref().map(|p| p.manifest.chunks.as_slice()).unwrap_or(&[]);
    let mut pieces = futures::stream::iter(0..chunks)
        .map(|i| {
            let changed = &changed;
            async move {
                if let Some(c) = changed {
                    if !c[i as usize] {
                        return Ok(match parent_chunks.get(i as usize) {
                            Some(id) => Piece::Unchanged(id.clone()),
                            None => Piece::Zero { read: 0 },
                        });
                    }
                }
                let offset = i * CHUNK_SIZE;
                let len = CHUNK_SIZE.min(size - offset) as u32;
                let data = source.read(offset, len).await.map_err(|e| format!("reading at {offset}: {e}"))?;
                let read = data.len() as u64;
                if data.iter().all(|b| *b == 0) {
                    return Ok(Piece::Zero { read });
                }
                let r = repo.clone();
                let (id, object) = tokio::task::spawn_blocking(move || r.encode(&data))
                    .await
                    .map_err(|e| format!("compressing: {e}"))?;
                if repo.has_chunk(&id).await.map_err(|e| e.to_string())? {
                    return Ok(Piece::Reused { id, read });
                }
                let sent = object.len() as u64;
                repo.put_chunk(&id, object).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(Piece::New { id, read, sent })
            }
        })
        .buffered(IN_FLIGHT);
    let mut p = Progress { done: 0, total: chunks, stats: BackupStats::default() };
    let mut list = Vec::with_capacity(chunks as usize);
    while let Some(piece) = pieces.next().await {
        let s = &mut p.stats;
        list.push(match piece? {
            Piece::Unchanged(id) => {
                s.chunks_unchanged += 1;
                id
            }
            Piece::Zero { read } => {
                s.bytes_read += read;
                s.chunks_zero += 1;
                None
            }
            Piece::Reused { id, read } => {
                s.bytes_read += read;
                s.chunks_reused += 1;
                Some(id)
            }
            Piece::New { id, read, sent } => {
                s.bytes_read += read;
                s.bytes_uploaded += sent;
                s.chunks_new += 1;
                Some(id)
            }
        });
        p.done += 1;
        progress(&p);
    }
    drop(pieces);
    let manifest = VolumeManifest {
        format: FORMAT,
        name: job.name,
        volume: job.volume,
        snapshot: job.snapshot,
        created,
        completed: chrono::Utc::now().to_rfc3339(),
        chunk_size: CHUNK_SIZE,
        chunks: list,
        parent: job.parent.map(|p| p.manifest.name),
        stats: p.stats,
        labels: job.labels,
    };
    repo.put_manifest(&manifest).await.map_err(|e| e.to_string())?;
    Ok(manifest)
}

/// Writes backup `m` into the blank volume behind `sink` (chunks of zeros
/// are skipped: the volume reads zeros there already); `progress(done,
/// total)` after each chunk. Returns the bytes written.
pub async fn restore(
    repo: &Repository,
    m: &VolumeManifest,
    sink: &dyn Sink,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<u64, String> {
    crate::repo::check_manifest(m)?;
    let total = m.chunks.len() as u64;
    let chunk_size = m.chunk_size;
    let mut fetched = futures::stream::iter(m.chunks.clone().into_iter().enumerate())
        .map(|(i, c)| {
            let repo = repo.clone();
            async move {
                match c {
                    None => Ok((i, None)),
                    Some(id) => repo.get_chunk(&id, chunk_size).await.map(|d| (i, Some(d))).map_err(|e| e.to_string()),
                }
            }
        })
        .buffered(IN_FLIGHT * 2);
    let mut written = 0;
    let mut done = 0;
    while let Some(r) = fetched.next().await {
        let (i, data) = r?;
        if let Some(data) = data {
            let offset = i as u64 * m.chunk_size;
            let want = m.chunk_size.min(m.volume.size - offset) as usize;
            if data.len() != want {
                return Err(format!("chunk {i} holds {} bytes, not {want}", data.len()));
            }
            written += data.len() as u64;
            sink.write(offset, data).await.map_err(|e| format!("writing at {offset}: {e}"))?;
        }
        done += 1;
        progress(done, total);
    }
    sink.flush().await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::*;
    use crate::chunk::Compression;
    use crate::store::{ObjectInfo, ObjectStore, StoreError};

    /// Objects in memory, counting the bytes put.
    #[derive(Default)]
    struct Mem {
        objects: Mutex<BTreeMap<String, Bytes>>,
        put_bytes: Mutex<u64>,
    }

    #[async_trait]
    impl ObjectStore for Mem {
        async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
            *self.put_bytes.lock().expect("lock") += body.len() as u64;
            self.objects.lock().expect("lock").insert(key.into(), body);
            Ok(())
        }
        async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
            Ok(self.objects.lock().expect("lock").get(key).cloned())
        }
        async fn exists(&self, key: &str) -> Result<bool, StoreError> {
            Ok(self.objects.lock().expect("lock").contains_key(key))
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.objects.lock().expect("lock").remove(key);
            Ok(())
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
            let o = self.objects.lock().expect("lock");
            Ok(o.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| ObjectInfo { key: k.clone(), size: v.len() as u64, modified: 0 })
                .collect())
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    /// A volume in memory with the blocks written since a snapshot.
    struct Vol {
        data: Vec<u8>,
        since: Option<(String, Vec<bool>)>,
        reads: Mutex<u64>,
    }

    #[async_trait]
    impl Source for Vol {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, String> {
            *self.reads.lock().expect("lock") += u64::from(len);
            Ok(self.data[offset as usize..offset as usize + len as usize].to_vec())
        }
        async fn changed(&self, since: &str, block: u64, count: u64) -> Result<Vec<u8>, String> {
            let Some((name, blocks)) = self.since.as_ref().filter(|(n, _)| n == since) else {
                return Err(format!("no snapshot {since}"));
            };
            let _ = name;
            let mut map = vec![0u8; count.div_ceil(8) as usize];
            for i in 0..count {
                if blocks[(block + i) as usize] {
                    map[(i / 8) as usize] |= 1 << (i % 8);
                }
            }
            Ok(map)
        }
    }

    #[derive(Default)]
    struct Into {
        data: Mutex<Vec<u8>>,
    }

    #[async_trait]
    impl Sink for Into {
        async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), String> {
            let mut d = self.data.lock().expect("lock");
            d[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            Ok(())
        }
        async fn flush(&self) -> Result<(), String> {
            Ok(())
        }
    }

    fn job(name: &str, size: u64, parent: Option<Parent>) -> Job {
        Job {
            name: name.into(),
            volume: VolumeRef { namespace: "default".into(), name: "data".into(), uid: "u1".into(), size },
            snapshot: format!("snap-{name}"),
            parent,
            labels: BTreeMap::new(),
        }
    }

    fn pattern(size: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 7) as u8 // compressible, not trivial
            })
            .collect()
    }

    async fn restored(repo: &Repository, m: &VolumeManifest) -> Vec<u8> {
        let sink = Into { data: Mutex::new(vec![0u8; m.volume.size as usize]) };
        restore(repo, m, &sink, &|_, _| {}).await.expect("restores");
        sink.data.into_inner().expect("lock")
    }

    #[tokio::test]
    async fn incremental_backups_read_and_send_only_what_changed() {
        let mem = Arc::new(Mem::default());
        let repo = Repository::new(mem.clone(), Compression::Zstd);
        let size = 8 * CHUNK_SIZE + 12288; // a partial last chunk
        let mut data = pattern(size as usize, 7);
        // Two chunks of zeros.
        data[(2 * CHUNK_SIZE) as usize..(4 * CHUNK_SIZE) as usize].fill(0);
        let v1 = Vol { data: data.clone(), since: None, reads: Mutex::new(0) };
        let full = backup(&repo, &v1, job("b1", size, None), &|_| {}).await.expect("full backup");
        assert_eq!(full.stats.chunks_zero, 2);
        assert_eq!(full.stats.chunks_new, 7);
        assert_eq!(full.stats.bytes_read, size);
        assert_eq!(restored(&repo, &full).await, data);

        // Change two blocks in chunk 5.
        let mut data2 = data.clone();
        let mut changed = vec![false; (size / BLOCK) as usize];
        for b in [5 * 256 + 3, 5 * 256 + 200] {
            data2[(b * 4096) as usize..(b * 4096 + 4096) as usize].fill(0xab);
            changed[b as usize] = true;
        }
        let put_before = *mem.put_bytes.lock().expect("lock");
        let v2 = Vol { data: data2.clone(), since: Some(("snap-b1".into(), changed)), reads: Mutex::new(0) };
        let parent = Parent { manifest: full.clone(), snapshot: "snap-b1".into() };
        let inc = backup(&repo, &v2, job("b2", size, Some(parent)), &|_| {}).await.expect("incremental");
        assert_eq!(*v2.reads.lock().expect("lock"), CHUNK_SIZE, "only the changed chunk is read");
        assert_eq!((inc.stats.chunks_new, inc.stats.chunks_unchanged), (1, 8));
        let sent = *mem.put_bytes.lock().expect("lock") - put_before;
        let manifest_bytes = serde_json::to_vec(&inc).expect("json").len() as u64;
        assert_eq!(sent, inc.stats.bytes_uploaded + manifest_bytes);
        assert!(inc.stats.bytes_uploaded < CHUNK_SIZE);
        assert_eq!(restored(&repo, &inc).await, data2);
        assert_eq!(restored(&repo, &full).await, data, "the first backup is intact");
    }

    /// A volume that knows which blocks were ever written.
    struct Sparse(Vol, Vec<bool>);

    #[async_trait]
    impl Source for Sparse {
        fn size(&self) -> u64 {
            self.0.size()
        }
        async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, String> {
            self.0.read(offset, len).await
        }
        async fn changed(&self, since: &str, block: u64, count: u64) -> Result<Vec<u8>, String> {
            self.0.changed(since, block, count).await
        }
        async fn written(&self, block: u64, count: u64) -> Result<Vec<u8>, String> {
            let mut map = vec![0u8; count.div_ceil(8) as usize];
            for i in 0..count {
                if self.1[(block + i) as usize] {
                    map[(i / 8) as usize] |= 1 << (i % 8);
                }
            }
            Ok(map)
        }
    }

    #[tokio::test]
    async fn a_first_backup_of_a_thin_volume_reads_only_what_was_written() {
        let repo = Repository::new(Arc::new(Mem::default()), Compression::Zstd);
        let size = 16 * CHUNK_SIZE;
        let mut data = vec![0u8; size as usize];
        let mut written = vec![false; (size / BLOCK) as usize];
        // Chunks 3 and 9 written (one of them with zeros).
        data[(3 * CHUNK_SIZE) as usize..(3 * CHUNK_SIZE + 8192) as usize].fill(7);
        for b in [3 * 256, 3 * 256 + 1, 9 * 256 + 5] {
            written[b as usize] = true;
        }
        let v = Sparse(Vol { data: data.clone(), since: None, reads: Mutex::new(0) }, written);
        let m = backup(&repo, &v, job("t1", size, None), &|_| {}).await.expect("backup");
        assert_eq!(*v.0.reads.lock().expect("lock"), 2 * CHUNK_SIZE, "only the two written chunks are read");
        assert_eq!((m.stats.chunks_new, m.stats.chunks_zero, m.stats.bytes_read), (1, 15, 2 * CHUNK_SIZE));
        assert_eq!(restored(&repo, &m).await, data);
    }

    #[tokio::test]
    async fn chunks_are_shared_across_volumes_and_a_lost_parent_means_a_full_read() {
        let mem = Arc::new(Mem::default());
        let repo = Repository::new(mem.clone(), Compression::Lz4);
        let size = 4 * CHUNK_SIZE;
        let data = pattern(size as usize, 3);
        let a = Vol { data: data.clone(), since: None, reads: Mutex::new(0) };
        let first = backup(&repo, &a, job("a1", size, None), &|_| {}).await.expect("backup a");
        // Another volume with the same content: nothing new is sent.
        let mut other = job("c1", size, None);
        other.volume.name = "copy".into();
        let put_before = *mem.put_bytes.lock().expect("lock");
        let c = backup(&repo, &a, other, &|_| {}).await.expect("backup c");
        assert_eq!((c.stats.chunks_new, c.stats.chunks_reused), (0, 4));
        let sent = *mem.put_bytes.lock().expect("lock") - put_before;
        assert!(sent < 4096, "only the manifest: {sent} bytes");
        // The parent's snapshot is gone from the replicas: read it all.
        let b = Vol { data, since: None, reads: Mutex::new(0) };
        let parent = Parent { manifest: first, snapshot: "snap-a1".into() };
        let m = backup(&repo, &b, job("a2", size, Some(parent)), &|_| {}).await.expect("backup a2");
        assert_eq!(*b.reads.lock().expect("lock"), size);
        assert_eq!((m.stats.chunks_reused, m.stats.chunks_unchanged), (4, 0));
        assert_eq!(m.parent.as_deref(), Some("a1"));
    }

    #[tokio::test]
    async fn verify_finds_corrupt_and_missing_chunks_and_gc_keeps_what_is_named() {
        let mem = Arc::new(Mem::default());
        let repo = Repository::new(mem.clone(), Compression::Zstd);
        let size = 3 * CHUNK_SIZE;
        let v = Vol { data: pattern(size as usize, 11), since: None, reads: Mutex::new(0) };
        let m = backup(&repo, &v, job("b1", size, None), &|_| {}).await.expect("backup");
        assert!(repo.verify(&m, &|_, _| {}).await.bad.is_empty());
        let ids: Vec<ChunkId> = m.chunks.iter().flatten().cloned().collect();
        {
            let mut o = mem.objects.lock().expect("lock");
            let k = crate::repo::chunk_key(&ids[0]);
            let mut bad = o[&k].to_vec();
            bad[10] ^= 0x40;
            o.insert(k, Bytes::from(bad));
            o.remove(&crate::repo::chunk_key(&ids[2]));
        }
        let report = repo.verify(&m, &|_, _| {}).await;
        assert_eq!(report.checked, 3);
        let bad: Vec<usize> = report.bad.iter().map(|b| b.0).collect();
        assert_eq!(bad, [0, 2]);
        assert!(report.bad[1].2.contains("missing"));
        // A restore of a corrupt backup fails rather than writing bad data.
        let sink = Into { data: Mutex::new(vec![0u8; size as usize]) };
        assert!(restore(&repo, &m, &sink, &|_, _| {}).await.is_err());

        // Garbage collection: nothing while the manifest names the chunks.
        assert_eq!(repo.gc(0).await.expect("gc").chunks_deleted, 0);
        repo.delete_manifest(&m.key()).await.expect("delete manifest");
        let r = repo.gc(0).await.expect("gc");
        assert_eq!(r.chunks_deleted, 2);
        assert!(mem.objects.lock().expect("lock").keys().all(|k| !k.starts_with("chunks/")));
    }
}
