//! Random access to a backup's disk image without restoring it.
//!
//! [`BackupImage`] reads any byte range of a backup: it fetches the 1 MiB
//! chunks the range touches from the repository (each checked against its
//! hash), keeps the last [`CACHE_CHUNKS`] of them, and reads zeros for the
//! chunks the manifest says are zeros. A miss on the chunk after the last
//! one fetched (a file read through) fetches [`READ_AHEAD`] chunks at
//! once. It is async, like the repository.
//!
//! The file-system readers are synchronous code over [`ReadAt`]; they run
//! on tokio's blocking pool, where [`BlockingImage`] turns each read into
//! a `Handle::block_on` of the async one. [`Window`] is a partition: a
//! range of another [`ReadAt`] that refuses reads outside it.

use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use super::FilesError;
use crate::manifest::{ChunkId, VolumeManifest};
use crate::repo::{check_manifest, Repository};

/// Chunks kept in memory per image (64 MiB with 1 MiB chunks).
pub const CACHE_CHUNKS: usize = 64;
/// Chunks fetched at once when reads go through the image in order.
pub const READ_AHEAD: usize = 4;

/// Positioned reads of something of a fixed size.
pub trait ReadAt: Send + Sync {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes from `offset`; an error
    /// ([`FilesError::OutOfBounds`] past the end) if it cannot fill all.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FilesError>;
}

/// `len` bytes from `offset` of `r`; callers bound `len`.
pub fn read_vec(r: &dyn ReadAt, offset: u64, len: usize) -> Result<Vec<u8>, FilesError> {
    let mut buf = vec![0u8; len];
    r.read_at(offset, &mut buf)?;
    Ok(buf)
}

/// The disk image of one backup, read lazily from its repository.
pub struct BackupImage {
    repo: Repository,
    manifest: VolumeManifest,
    cache: Mutex<ChunkCache>,
}

/// The most recently used chunks, by index. Small enough that a linear
/// scan is cheaper than anything cleverer.
#[derive(Default)]
struct ChunkCache {
    /// `(chunk index, data, last use)`.
    entries: Vec<(usize, Arc<Vec<u8>>, u64)>,
    clock: u64,
    /// The chunk last fetched.
    last_miss: Option<usize>,
}

impl ChunkCache {
    fn get(&mut self, index: usize) -> Option<Arc<Vec<u8>>> {
        self.clock += 1;
        let now = self.clock;
        self.entries.iter_mut().find(|e| e.0 == index).map(|e| {
            e.2 = now;
            e.1.clone()
        })
    }

    fn contains(&self, index: usize) -> bool {
        self.entries.iter().any(|e| e.0 == index)
    }

    fn put(&mut self, index: usize, data: Arc<Vec<u8>>) {
        self.clock += 1;
        if self.entries.iter().any(|e| e.0 == index) {
            return;
        }
        if self.entries.len() >= CACHE_CHUNKS {
            if let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.2).map(|(i, _)| i) {
                self.entries.swap_remove(oldest);
            }
        }
        self.entries.push((index, data, self.clock));
    }
}

impl BackupImage {
    /// The image of backup `m` (checked first: a hostile manifest cannot
    /// make this allocate or read more than its chunk size allows).
    pub fn new(repo: Repository, m: &VolumeManifest) -> Result<BackupImage, FilesError> {
        check_manifest(m).map_err(|e| FilesError::Corrupt(format!("the backup's manifest: {e}")))?;
        Ok(BackupImage { repo, manifest: m.clone(), cache: Mutex::new(ChunkCache::default()) })
    }

    /// The size of the backed-up volume.
    pub fn size(&self) -> u64 {
        self.manifest.volume.size
    }

    /// Fills `buf` with the image's bytes from `offset`.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FilesError> {
        let end = offset.checked_add(buf.len() as u64).filter(|e| *e <= self.size());
        if end.is_none() {
            return Err(FilesError::OutOfBounds { offset, len: buf.len() as u64, size: self.size() });
        }
        let cs = self.manifest.chunk_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = (pos / cs) as usize;
            let within = (pos % cs) as usize;
            let n = (buf.len() - done).min(cs as usize - within);
            let dst = &mut buf[done..done + n];
            match self.chunk(index).await? {
                None => dst.fill(0),
                Some(data) => dst.copy_from_slice(&data[within..within + n]),
            }
            done += n;
        }
        Ok(())
    }

    /// Chunk `index`, None for a chunk of zeros.
    async fn chunk(&self, index: usize) -> Result<Option<Arc<Vec<u8>>>, FilesError> {
        if !matches!(self.manifest.chunks.get(index), Some(Some(_))) {
            return Ok(None);
        }
        let sequential = {
            let mut cache = self.lock_cache();
            if let Some(data) = cache.get(index) {
                return Ok(Some(data));
            }
            let sequential = cache.last_miss.is_some_and(|last| last + 1 == index);
            cache.last_miss = Some(index);
            sequential
        };
        // A miss right after the previous chunk's: a file being read
        // through; fetch the next few along with this one.
        let count = if sequential { READ_AHEAD } else { 1 };
        let wanted: Vec<(usize, ChunkId)> = (index..index + count)
            .filter_map(|i| Some((i, self.manifest.chunks.get(i)?.clone()?)))
            .filter(|(i, _)| *i == index || !self.lock_cache().contains(*i))
            .collect();
        let fetched =
            futures::future::join_all(wanted.into_iter().map(|(i, id)| async move { (i, self.fetch(i, &id).await) }))
                .await;
        let mut mine = None;
        for (i, data) in fetched {
            match data {
                Ok(data) => {
                    let data = Arc::new(data);
                    self.lock_cache().put(i, data.clone());
                    if i == index {
                        mine = Some(data);
                    }
                }
                // A chunk read ahead reports its own error when it is read.
                Err(e) if i == index => return Err(e),
                Err(_) => {}
            }
        }
        Ok(mine)
    }

    /// Chunk `index` from the repository, checked.
    async fn fetch(&self, index: usize, id: &ChunkId) -> Result<Vec<u8>, FilesError> {
        let cs = self.manifest.chunk_size;
        let data = self.repo.get_chunk(id, cs).await.map_err(FilesError::Repo)?;
        let want = cs.min(self.size() - index as u64 * cs) as usize;
        if data.len() != want {
            return Err(FilesError::Corrupt(format!("chunk {index} holds {} bytes, not {want}", data.len())));
        }
        Ok(data)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, ChunkCache> {
        // The cache holds no invariant a panicking holder could break.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A [`BackupImage`] read from blocking code: only on a thread of tokio's
/// blocking pool (or any thread outside the runtime), never on an async
/// worker, where `block_on` panics.
pub struct BlockingImage {
    image: Arc<BackupImage>,
    runtime: Handle,
}

impl BlockingImage {
    pub fn new(image: Arc<BackupImage>, runtime: Handle) -> BlockingImage {
        BlockingImage { image, runtime }
    }
}

impl ReadAt for BlockingImage {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FilesError> {
        self.runtime.block_on(self.image.read_at(offset, buf))
    }
}

/// `len` bytes of another reader from `start`: a partition.
#[derive(Clone)]
pub struct Window {
    inner: Arc<dyn ReadAt>,
    start: u64,
    len: u64,
}

impl Window {
    /// The window, cut to what `inner` holds.
    pub fn new(inner: Arc<dyn ReadAt>, start: u64, len: u64) -> Window {
        let start = start.min(inner.size());
        let len = len.min(inner.size() - start);
        Window { inner, start, len }
    }
}

impl ReadAt for Window {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FilesError> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(FilesError::OutOfBounds { offset, len, size: self.len });
        }
        self.inner.read_at(self.start + offset, buf)
    }
}

/// A reader over bytes in memory (tests, and small images).
impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FilesError> {
        let len = buf.len() as u64;
        let size = self.len() as u64;
        match offset.checked_add(len).filter(|end| *end <= size) {
            Some(end) => {
                buf.copy_from_slice(&self[offset as usize..end as usize]);
                Ok(())
            }
            None => Err(FilesError::OutOfBounds { offset, len, size }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_evicts_the_least_recently_used_chunk() {
        let mut c = ChunkCache::default();
        for i in 0..CACHE_CHUNKS {
            c.put(i, Arc::new(vec![i as u8]));
        }
        assert!(c.get(0).is_some(), "0 is now the most recent");
        c.put(CACHE_CHUNKS, Arc::new(vec![]));
        assert!(c.get(1).is_none(), "1 was the least recent");
        assert!(c.get(0).is_some());
        assert_eq!(c.entries.len(), CACHE_CHUNKS);
    }

    /// Objects in memory, counting the reads.
    #[derive(Default)]
    struct Counting {
        objects: Mutex<std::collections::BTreeMap<String, bytes::Bytes>>,
        gets: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl crate::store::ObjectStore for Counting {
        async fn put(&self, key: &str, body: bytes::Bytes) -> Result<(), crate::store::StoreError> {
            self.objects.lock().expect("lock").insert(key.into(), body);
            Ok(())
        }
        async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, crate::store::StoreError> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.objects.lock().expect("lock").get(key).cloned())
        }
        async fn exists(&self, key: &str) -> Result<bool, crate::store::StoreError> {
            Ok(self.objects.lock().expect("lock").contains_key(key))
        }
        async fn delete(&self, key: &str) -> Result<(), crate::store::StoreError> {
            self.objects.lock().expect("lock").remove(key);
            Ok(())
        }
        async fn list(&self, _: &str) -> Result<Vec<crate::store::ObjectInfo>, crate::store::StoreError> {
            Ok(vec![])
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    #[tokio::test]
    async fn reads_cross_chunks_zeros_are_not_fetched_and_sequential_reads_read_ahead() {
        let store = Arc::new(Counting::default());
        let repo = Repository::new(store.clone(), crate::chunk::Compression::Zstd);
        let cs = 4096u64;
        // Chunks 0..10 of bytes `i`, chunk 2 zeros, the last one short.
        let mut chunks = Vec::new();
        let mut whole = Vec::new();
        for i in 0..10u8 {
            let len = if i == 9 { 100 } else { cs as usize };
            let data = vec![if i == 2 { 0 } else { i + 1 }; len];
            whole.extend_from_slice(&data);
            if i == 2 {
                chunks.push(None);
                continue;
            }
            let (id, obj) = repo.encode(&data);
            repo.put_chunk(&id, obj).await.expect("put");
            chunks.push(Some(id));
        }
        let m = VolumeManifest {
            format: crate::manifest::FORMAT,
            chunk_size: cs,
            chunks,
            volume: crate::manifest::VolumeRef { size: whole.len() as u64, ..Default::default() },
            ..Default::default()
        };
        let image = BackupImage::new(repo, &m).expect("image");
        let gets = || store.gets.load(std::sync::atomic::Ordering::SeqCst);
        let mut buf = vec![0u8; 3 * cs as usize];
        image.read_at(cs / 2, &mut buf).await.expect("read");
        assert_eq!(buf, whole[cs as usize / 2..cs as usize / 2 + buf.len()]);
        assert_eq!(gets(), 1 + READ_AHEAD - 1, "0, then 1 in order: 1..=4 at once but 2, which is zeros");
        image.read_at(3 * cs + 5, &mut [0u8; 1]).await.expect("read");
        image.read_at(4 * cs, &mut [0u8; 1]).await.expect("read");
        assert_eq!(gets(), 4, "3 and 4 were read ahead");
        let mut rest = vec![0u8; (5 * cs + 100) as usize];
        image.read_at(4 * cs, &mut rest).await.expect("read");
        assert_eq!(rest, whole[4 * cs as usize..]);
        assert_eq!(gets(), 4 + 1 + READ_AHEAD, "5 alone (not after the last fetched, 1), then 6..=9");
        let mut all = vec![0u8; whole.len()];
        image.read_at(0, &mut all).await.expect("read");
        assert_eq!((all == whole, gets()), (true, 9), "all cached");
        assert!(matches!(
            image.read_at(whole.len() as u64 - 1, &mut [0u8; 2]).await,
            Err(FilesError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn windows_refuse_reads_outside_them() {
        let disk: Arc<dyn ReadAt> = Arc::new((0..=255u8).collect::<Vec<u8>>());
        let w = Window::new(disk.clone(), 16, 32);
        let mut b = [0u8; 4];
        w.read_at(28, &mut b).expect("inside");
        assert_eq!(b, [44, 45, 46, 47]);
        assert!(matches!(w.read_at(29, &mut b), Err(FilesError::OutOfBounds { .. })));
        assert!(w.read_at(u64::MAX, &mut b).is_err());
        assert_eq!(Window::new(disk, 250, 100).size(), 6, "cut to the disk");
    }
}
