//! Base images: the read-only bottom layer that volumes made from an image
//! share (see docs/design/images.md).
//!
//! A base image is a directory on a node:
//! - `base.data`: the image's raw content, sparse (blocks of zeros are
//!   holes), its size rounded up to a whole block;
//! - `base.sum`: the same checksum file as a replica layer's (a header,
//!   then CRC32 and state per 4 KiB block: data, or absent for zeros);
//! - `base.json`: [`BaseMeta`], written last: a directory without it is an
//!   unfinished build and is never used.
//!
//! A replica made from the image records the base's directory, id and size
//! in its `replica.json` and reads through it (its own layers win); nothing
//! ever writes to a base, so any number of replicas on the node share one
//! copy and creating a volume from an image costs the same whatever the
//! image's size.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::{entry, header, io, punch, Result, StoreError, BLOCK};

pub const DATA_FILE: &str = "base.data";
pub const SUM_FILE: &str = "base.sum";
pub const META_FILE: &str = "base.json";
const FORMAT: u32 = 1;

/// `base.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseMeta {
    pub format: u32,
    /// Who the base belongs to (the image's uid): replicas name it, and a
    /// directory holding another base is refused.
    pub id: String,
    /// Bytes, a multiple of [`BLOCK`].
    pub size: u64,
    /// Bytes of blocks that hold data (the rest are holes).
    pub stored: u64,
    pub created: String,
}

/// Reads `dir`'s `base.json`; `None` when the base is not (completely) built.
pub fn read_meta(dir: &Path) -> Result<Option<BaseMeta>> {
    let p = dir.join(META_FILE);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io { what: format!("reading {}", p.display()), source: e }),
    };
    let meta: BaseMeta = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
        dir: dir.display().to_string(),
        message: format!("base.json does not parse: {e}"),
    })?;
    if meta.format != FORMAT || !meta.size.is_multiple_of(BLOCK) || meta.size == 0 {
        return Err(StoreError::Corrupt {
            dir: dir.display().to_string(),
            message: "base.json has an unknown format or a bad size".into(),
        });
    }
    Ok(Some(meta))
}

/// Turns the raw image at `dir/base.data` into a base image with id `id`:
/// pads it to whole blocks, checksums every block, punches holes where
/// blocks are all zeros, syncs, then writes `base.json`. Holes already in
/// the file are skipped without reading them, so a sparse 20 GiB image
/// holding 1 GiB of data costs 1 GiB of reads. `progress` gets the bytes
/// done so far, now and then.
pub fn build(dir: &Path, id: &str, mut progress: impl FnMut(u64, u64)) -> Result<BaseMeta> {
    let data_path = dir.join(DATA_FILE);
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data_path)
        .map_err(io(format!("opening {}", data_path.display())))?;
    let len = data.metadata().map_err(io("reading the image's size"))?.len();
    if len == 0 {
        return Err(StoreError::Invalid("the image is empty".into()));
    }
    let size = len.div_ceil(BLOCK) * BLOCK;
    data.set_len(size).map_err(io("padding the image to whole blocks"))?;
    let blocks = size / BLOCK;
    let sum_path = dir.join(SUM_FILE);
    let sum = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&sum_path)
        .map_err(io(format!("creating {}", sum_path.display())))?;
    sum.set_len(crate::store::HEADER + blocks * crate::store::ENTRY).map_err(io("sizing the image's checksums"))?;
    sum.write_all_at(&header(0, 0, 0), 0).map_err(io("writing the checksum header"))?;

    const CHUNK: u64 = 1024 * 1024;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut sums = Vec::with_capacity((CHUNK / BLOCK * crate::store::ENTRY) as usize);
    let mut stored = 0u64;
    let mut pos = 0u64;
    while pos < size {
        // Skip holes: they read as zeros and stay absent.
        let start = match rustix::fs::seek(&data, rustix::fs::SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(StoreError::Io { what: "finding the image's data".into(), source: e.into() }),
        };
        let start = start / BLOCK * BLOCK;
        let end = match rustix::fs::seek(&data, rustix::fs::SeekFrom::Hole(start)) {
            Ok(p) => p.min(size).div_ceil(BLOCK) * BLOCK,
            Err(e) => return Err(StoreError::Io { what: "finding the image's holes".into(), source: e.into() }),
        };
        let mut at = start;
        while at < end {
            let n = CHUNK.min(end - at);
            let chunk = &mut buf[..n as usize];
            data.read_exact_at(chunk, at).map_err(io("reading the image"))?;
            sums.clear();
            let mut zero_run: Option<u64> = None;
            for (k, block) in chunk.chunks_exact(BLOCK as usize).enumerate() {
                let b_off = at + k as u64 * BLOCK;
                if block.iter().all(|&x| x == 0) {
                    sums.extend_from_slice(&entry(0, crate::store::ABSENT));
                    zero_run.get_or_insert(b_off);
                } else {
                    if let Some(z) = zero_run.take() {
                        punch(&data, z, b_off - z)?;
                    }
                    sums.extend_from_slice(&entry(crc32fast::hash(block), crate::store::DATA));
                    stored += BLOCK;
                }
            }
            if let Some(z) = zero_run {
                punch(&data, z, at + n - z)?;
            }
            sum.write_all_at(&sums, crate::store::HEADER + at / BLOCK * crate::store::ENTRY)
                .map_err(io("writing the image's checksums"))?;
            at += n;
            progress(at, size);
        }
        pos = end;
    }
    data.sync_all().map_err(io("syncing the image"))?;
    sum.sync_all().map_err(io("syncing the image's checksums"))?;
    let meta = BaseMeta {
        format: FORMAT,
        id: id.to_string(),
        size,
        stored,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    crate::store::write_json(dir, META_FILE, &meta)?;
    progress(size, size);
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_is_checksummed_and_sparse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut img = vec![0u8; 10 * BLOCK as usize + 100];
        img[5] = 1;
        img[3 * BLOCK as usize] = 7;
        img[10 * BLOCK as usize + 99] = 9;
        std::fs::write(dir.path().join(DATA_FILE), &img).expect("write");
        assert_eq!(read_meta(dir.path()).expect("meta"), None, "not built yet");
        let meta = build(dir.path(), "img-1", |_, _| {}).expect("build");
        assert_eq!(meta.size, 11 * BLOCK);
        assert_eq!(meta.stored, 3 * BLOCK);
        assert_eq!(read_meta(dir.path()).expect("meta"), Some(meta));
        let sums = std::fs::read(dir.path().join(SUM_FILE)).expect("sums");
        let state = |b: usize| {
            let e = &sums[crate::store::HEADER as usize + b * 8..][..8];
            u32::from_le_bytes([e[4], e[5], e[6], e[7]])
        };
        assert_eq!((0..11).map(state).collect::<Vec<_>>(), vec![1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn an_empty_image_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(DATA_FILE), b"").expect("write");
        assert!(build(dir.path(), "x", |_, _| {}).is_err());
    }
}
