//! The replica store: a volume's blocks as a chain of sparse layers with
//! per-block checksums (see docs/design/storage-engine.md).
//!
//! Files in a replica directory:
//! - `replica.json`: the [`Meta`] (chain, size, epoch, dirty flag),
//!   replaced atomically.
//! - `layer-<id>.data`: sparse, a block's data at its volume offset.
//! - `layer-<id>.sum`: a header block, then 8 bytes per block: CRC32 of the
//!   data and the block's state in this layer (absent, data or zero).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes per block: the unit of checksums, presence and snapshots.
pub const BLOCK: u64 = 4096;
/// Blocks one [`Replica::changed_blocks`] call may cover (16 GiB; a
/// bitmap of 512 KiB).
pub const MAX_DELTA_BLOCKS: u64 = 1 << 22;
pub(crate) const HEADER: u64 = 4096;
pub(crate) const ENTRY: u64 = 8;
const MAGIC: &[u8; 8] = b"SHEAFSUM";
const FORMAT: u32 = 1;

pub(crate) const ABSENT: u32 = 0;
pub(crate) const DATA: u32 = 1;
pub(crate) const ZERO: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("replica {dir}: {message}")]
    Corrupt { dir: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("snapshot {0:?} does not exist")]
    NoSnapshot(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// Size and free space of a file system (`statvfs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsSpace {
    /// Bytes in the file system.
    pub capacity: u64,
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The space of the file system that holds `path` (a node disk).
pub fn fs_space(path: &Path) -> std::io::Result<FsSpace> {
    let st = rustix::fs::statvfs(path)?;
    Ok(FsSpace {
        capacity: st.f_blocks.saturating_mul(st.f_frsize),
        available: st.f_bavail.saturating_mul(st.f_frsize),
        read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    })
}

/// One layer of the chain, as recorded in `replica.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub id: u64,
    /// The snapshot's name; `None` for the live head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub created: String,
}

/// `replica.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub volume: String,
    pub size: u64,
    pub epoch: u64,
    /// Base first, head last.
    pub layers: Vec<LayerMeta>,
    /// A writer has it open (or died with it open).
    pub dirty: bool,
    /// A rebuild is filling the snapshot layers (set by
    /// [`Replica::set_chain`], cleared by the first flush that records a
    /// generation). Rebuilt blocks are synced at that flush, not one by
    /// one, so after a crash meanwhile the layers' checksums are checked
    /// against their data when the replica opens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rebuilding: bool,
    /// The read-only base image under the chain (a volume made from an
    /// image), shared with other replicas on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
}

/// Where a replica's base image is and which it must be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// The base's id (`base.json`): a directory holding another base is
    /// refused.
    pub id: String,
    pub dir: PathBuf,
    pub size: u64,
}

/// A snapshot of the replica.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    pub name: String,
    pub created: String,
    /// Bytes of blocks this layer stores (data blocks).
    pub stored_bytes: u64,
}

#[derive(Clone, Debug, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    fn get(&self, i: u64) -> bool {
        self.0.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: u64, v: bool) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            if v {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
    fn grow(&mut self, n: u64) {
        self.0.resize(n.div_ceil(64) as usize, 0);
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| w.count_ones() as u64).sum()
    }
}

struct Layer {
    meta: LayerMeta,
    data: File,
    sum: File,
    present: Bits,
    zero: Bits,
    /// Rebuilt blocks were written to a snapshot layer since its last sync.
    unsynced: bool,
}

impl Layer {
    /// A layer of `blocks` blocks, none present yet.
    fn empty(meta: LayerMeta, data: File, sum: File, blocks: u64) -> Layer {
        Layer { meta, data, sum, present: Bits::new(blocks), zero: Bits::new(blocks), unsynced: false }
    }

    /// A layer whose blocks' states are read from its checksum file, a
    /// megabyte at a time; a bad state is corruption of the replica in
    /// `dir` (the message starts with `what`).
    fn load(meta: LayerMeta, data: File, sum: File, blocks: u64, dir: &Path, what: &str) -> Result<Layer> {
        let mut layer = Layer::empty(meta, data, sum, blocks);
        let chunk = 128 * 1024;
        let mut buf = vec![0u8; (chunk * ENTRY) as usize];
        let mut b = 0;
        while b < blocks {
            let n = chunk.min(blocks - b);
            let bytes = &mut buf[..(n * ENTRY) as usize];
            layer.sum.read_exact_at(bytes, HEADER + b * ENTRY).map_err(io("reading layer checksums"))?;
            for (k, e) in bytes.chunks_exact(ENTRY as usize).enumerate() {
                let state = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                if state > ZERO {
                    return Err(StoreError::Corrupt {
                        dir: dir.display().to_string(),
                        message: format!("{what}layer {} block {} has state {state}", layer.meta.id, b + k as u64),
                    });
                }
                layer.mark(b + k as u64, state);
            }
            b += n;
        }
        Ok(layer)
    }

    fn state(&self, b: u64) -> u32 {
        match (self.present.get(b), self.zero.get(b)) {
            (false, _) => ABSENT,
            (true, false) => DATA,
            (true, true) => ZERO,
        }
    }
    fn mark(&mut self, b: u64, state: u32) {
        self.present.set(b, state != ABSENT);
        self.zero.set(b, state == ZERO);
    }
}

/// An open replica.
pub struct Replica {
    dir: PathBuf,
    meta: Meta,
    layers: Vec<Layer>,
    /// The base image, below `layers[0]` (never written).
    base: Option<Layer>,
    flush_gen: u64,
    writable: bool,
}

fn data_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("layer-{id}.data"))
}
fn sum_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("layer-{id}.sum"))
}

pub(crate) fn header(id: u64, flush_gen: u64, epoch: u64) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    h[24..32].copy_from_slice(&flush_gen.to_le_bytes());
    h[32..40].copy_from_slice(&epoch.to_le_bytes());
    h
}

pub(crate) fn entry(crc: u32, state: u32) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&crc.to_le_bytes());
    e[4..].copy_from_slice(&state.to_le_bytes());
    e
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("syncing {}", dir.display())))
}

pub(crate) fn punch(file: &File, offset: u64, len: u64) -> Result<()> {
    use rustix::fs::FallocateFlags;
    rustix::fs::fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)
        .map_err(|e| StoreError::Io { what: "punching a hole".into(), source: e.into() })
}

impl Replica {
    /// Creates an empty replica of `size` bytes in `dir` (which must not
    /// hold one yet).
    pub fn create(dir: &Path, volume: &str, size: u64) -> Result<Replica> {
        Self::create_on(dir, volume, size, None)
    }

    /// Creates an empty replica of `size` bytes on the base image in
    /// `base_dir` (built by [`crate::base::build`]): reads of blocks the
    /// replica has not written come from the base. `size` must hold the
    /// whole base.
    pub fn create_on_base(dir: &Path, volume: &str, size: u64, base_dir: &Path) -> Result<Replica> {
        let meta = crate::base::read_meta(base_dir)?
            .ok_or_else(|| StoreError::Invalid(format!("{} holds no finished base image", base_dir.display())))?;
        if size < meta.size {
            return Err(StoreError::Invalid(format!(
                "a volume of {size} bytes cannot hold its image of {} bytes; make it at least that large",
                meta.size
            )));
        }
        let base = BaseRef { id: meta.id, dir: base_dir.to_path_buf(), size: meta.size };
        Self::create_on(dir, volume, size, Some(base))
    }

    fn create_on(dir: &Path, volume: &str, size: u64, base: Option<BaseRef>) -> Result<Replica> {
        if size == 0 || !size.is_multiple_of(BLOCK) {
            return Err(StoreError::Invalid(format!("size must be a positive multiple of {BLOCK} bytes, not {size}")));
        }
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        if dir.join("replica.json").exists() {
            return Err(StoreError::Invalid(format!("{} already holds a replica", dir.display())));
        }
        let head = LayerMeta { id: 1, snapshot: None, created: now() };
        let meta = Meta {
            format: FORMAT,
            volume: volume.into(),
            size,
            epoch: 0,
            layers: vec![head.clone()],
            dirty: true,
            rebuilding: false,
            base,
        };
        let base = meta.base.as_ref().map(|b| open_base(dir, b)).transpose()?;
        let layer = Self::new_layer_files(dir, &head, size, 0, 0)?;
        write_meta(dir, &meta)?;
        Ok(Replica { dir: dir.to_path_buf(), meta, layers: vec![layer], base, flush_gen: 0, writable: true })
    }

    fn new_layer_files(dir: &Path, meta: &LayerMeta, size: u64, flush_gen: u64, epoch: u64) -> Result<Layer> {
        let blocks = size / BLOCK;
        let open = |p: PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .map_err(io(format!("creating {}", p.display())))
        };
        let data = open(data_path(dir, meta.id))?;
        data.set_len(size).map_err(io("sizing layer data"))?;
        let sum = open(sum_path(dir, meta.id))?;
        sum.set_len(HEADER + blocks * ENTRY).map_err(io("sizing layer checksums"))?;
        sum.write_all_at(&header(meta.id, flush_gen, epoch), 0).map_err(io("writing layer header"))?;
        sum.sync_all().map_err(io("syncing layer checksums"))?;
        data.sync_all().map_err(io("syncing layer data"))?;
        Ok(Layer::empty(meta.clone(), data, sum, blocks))
    }

    /// Opens the replica in `dir` for writing. A replica left dirty by a
    /// writer that died has its head's checksums brought in line with its
    /// data (writes after the last flush carry no promise); older layers
    /// must verify.
    pub fn open(dir: &Path) -> Result<Replica> {
        let meta: Meta = {
            let p = dir.join("replica.json");
            let text = std::fs::read(&p).map_err(io(format!("reading {}", p.display())))?;
            serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
                dir: dir.display().to_string(),
                message: format!("replica.json does not parse: {e}"),
            })?
        };
        if meta.format != FORMAT || meta.layers.is_empty() || !meta.size.is_multiple_of(BLOCK) {
            return Err(StoreError::Corrupt {
                dir: dir.display().to_string(),
                message: "replica.json has an unknown format, no layers or a bad size".into(),
            });
        }
        let blocks = meta.size / BLOCK;
        let mut layers = Vec::new();
        let mut flush_gen = 0;
        for (i, lm) in meta.layers.iter().enumerate() {
            let open = |p: PathBuf| {
                OpenOptions::new().read(true).write(true).open(&p).map_err(io(format!("opening {}", p.display())))
            };
            let data = open(data_path(dir, lm.id))?;
            let sum = open(sum_path(dir, lm.id))?;
            let mut h = [0u8; 40];
            sum.read_exact_at(&mut h, 0).map_err(io("reading a layer header"))?;
            if &h[..8] != MAGIC || u64::from_le_bytes(h[16..24].try_into().unwrap_or_default()) != lm.id {
                return Err(StoreError::Corrupt {
                    dir: dir.display().to_string(),
                    message: format!("layer {} has a bad header", lm.id),
                });
            }
            if i == meta.layers.len() - 1 {
                flush_gen = u64::from_le_bytes(h[24..32].try_into().unwrap_or_default());
            }
            layers.push(Layer::load(lm.clone(), data, sum, blocks, dir, "")?);
        }
        remove_stray_layers(dir, &meta);
        let base = meta.base.as_ref().map(|b| open_base(dir, b)).transpose()?;
        let mut r = Replica { dir: dir.to_path_buf(), meta, layers, base, flush_gen, writable: true };
        if r.meta.dirty {
            r.recover_head()?;
        }
        if r.meta.rebuilding {
            r.recheck_rebuilt_layers()?;
        }
        r.meta.dirty = true;
        write_meta(&r.dir, &r.meta)?;
        Ok(r)
    }

    /// After a crash: re-checksum head blocks whose data changed after
    /// their checksum was written.
    fn recover_head(&mut self) -> Result<()> {
        let head = self.layers.len() - 1;
        let blocks = self.meta.size / BLOCK;
        let mut fixed = 0u64;
        let mut buf = vec![0u8; BLOCK as usize];
        let mut e = [0u8; 8];
        for b in 0..blocks {
            if self.layers[head].state(b) != DATA {
                continue;
            }
            let l = &self.layers[head];
            l.data.read_exact_at(&mut buf, b * BLOCK).map_err(io("reading head data"))?;
            l.sum.read_exact_at(&mut e, HEADER + b * ENTRY).map_err(io("reading head checksums"))?;
            let crc = crc32fast::hash(&buf);
            if u32::from_le_bytes([e[0], e[1], e[2], e[3]]) != crc {
                l.sum.write_all_at(&entry(crc, DATA), HEADER + b * ENTRY).map_err(io("fixing a checksum"))?;
                fixed += 1;
            }
        }
        if fixed > 0 {
            tracing::info!(dir = %self.dir.display(), blocks = fixed, "replica recovered: unflushed blocks re-checksummed");
        }
        self.layers[head].sum.sync_data().map_err(io("syncing head checksums"))
    }

    /// After a rebuild was interrupted: a snapshot block whose data does
    /// not match its checksum (the data did not reach the disk before a
    /// crash) becomes absent, so the next rebuild's comparison copies it
    /// again instead of trusting the checksum.
    fn recheck_rebuilt_layers(&mut self) -> Result<()> {
        let blocks = self.meta.size / BLOCK;
        let head = self.layers.len() - 1;
        let mut buf = vec![0u8; BLOCK as usize];
        let mut e = [0u8; 8];
        let mut dropped = 0u64;
        for l in &mut self.layers[..head] {
            for b in 0..blocks {
                if l.state(b) != DATA {
                    continue;
                }
                l.data.read_exact_at(&mut buf, b * BLOCK).map_err(io("reading layer data"))?;
                l.sum.read_exact_at(&mut e, HEADER + b * ENTRY).map_err(io("reading layer checksums"))?;
                if crc32fast::hash(&buf) != u32::from_le_bytes([e[0], e[1], e[2], e[3]]) {
                    l.sum.write_all_at(&entry(0, ABSENT), HEADER + b * ENTRY).map_err(io("writing layer checksums"))?;
                    l.mark(b, ABSENT);
                    dropped += 1;
                }
            }
            l.sum.sync_data().map_err(io("syncing layer checksums"))?;
        }
        if dropped > 0 {
            tracing::warn!(dir = %self.dir.display(), blocks = dropped, "interrupted rebuild: blocks that did not reach the disk will be copied again");
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.meta.size
    }
    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }
    /// Flushes completed on this replica (persisted in the head's header).
    pub fn flush_generation(&self) -> u64 {
        self.flush_gen
    }
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Records a new epoch (fencing); an older one is refused.
    pub fn set_epoch(&mut self, epoch: u64) -> Result<()> {
        if epoch < self.meta.epoch {
            return Err(StoreError::Invalid(format!(
                "epoch {epoch} is older than the replica's {}: a newer engine owns this volume",
                self.meta.epoch
            )));
        }
        if epoch > self.meta.epoch {
            self.meta.epoch = epoch;
            write_meta(&self.dir, &self.meta)?;
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.meta.size) {
            return Err(StoreError::Invalid(format!(
                "range {offset}+{len} is beyond the end of the volume ({} bytes)",
                self.meta.size
            )));
        }
        Ok(())
    }

    /// The topmost layer up to `top` holding block `b`, if any.
    /// The layer that serves block `b` as seen from layer `top`:
    /// an index into `layers`, or [`BASE`] for the base image.
    fn owner(&self, top: usize, b: u64) -> Option<usize> {
        self.layers[..=top]
            .iter()
            .rposition(|l| l.present.get(b))
            .or_else(|| self.base.as_ref().filter(|l| l.present.get(b)).map(|_| BASE))
    }

    fn layer(&self, i: usize) -> &Layer {
        match (i, &self.base) {
            (BASE, Some(base)) => base,
            _ => &self.layers[i],
        }
    }

    /// Whether a layer below `i` (or the base) holds block `b`.
    fn below(&self, i: usize, b: u64) -> bool {
        self.layers[..i].iter().any(|l| l.present.get(b)) || self.base.as_ref().is_some_and(|l| l.present.get(b))
    }

    /// The base image's id, when the replica has one.
    pub fn base(&self) -> Option<&BaseRef> {
        self.meta.base.as_ref()
    }

    /// Reads `buf.len()` bytes at `offset`, verifying checksums.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_upto(self.layers.len() - 1, offset, buf)
    }

    /// Reads from snapshot `name` as it was taken.
    pub fn read_snapshot(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_upto(self.snapshot_index(name)?, offset, buf)
    }

    fn read_upto(&self, top: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let b = at / BLOCK;
            let in_block = (at % BLOCK) as usize;
            // A run of blocks served by the same layer in the same state.
            let owner = self.owner(top, b);
            let state = owner.map(|o| self.layer(o).state(b)).unwrap_or(ABSENT);
            let mut run = 1u64;
            let last = (offset + buf.len() as u64 - 1) / BLOCK;
            while b + run <= last {
                let o = self.owner(top, b + run);
                if o != owner || o.map(|o| self.layer(o).state(b + run)).unwrap_or(ABSENT) != state {
                    break;
                }
                run += 1;
            }
            let run_end = ((b + run) * BLOCK).min(offset + buf.len() as u64);
            let n = (run_end - at) as usize;
            let out = &mut buf[pos..pos + n];
            match (owner, state) {
                (Some(o), DATA) => self.read_verified(o, b, run, in_block, out)?,
                _ => out.fill(0),
            }
            pos += n;
        }
        Ok(())
    }

    fn read_verified(&self, o: usize, b: u64, run: u64, skip: usize, out: &mut [u8]) -> Result<()> {
        let l = self.layer(o);
        let mut data = vec![0u8; (run * BLOCK) as usize];
        l.data.read_exact_at(&mut data, b * BLOCK).map_err(io("reading layer data"))?;
        let mut sums = vec![0u8; (run * ENTRY) as usize];
        l.sum.read_exact_at(&mut sums, HEADER + b * ENTRY).map_err(io("reading layer checksums"))?;
        for (k, (block, e)) in data.chunks_exact(BLOCK as usize).zip(sums.chunks_exact(ENTRY as usize)).enumerate() {
            let want = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            if crc32fast::hash(block) != want {
                return Err(StoreError::Corrupt {
                    dir: self.dir.display().to_string(),
                    message: format!("block {} of layer {} does not match its checksum", b + k as u64, l.meta.id),
                });
            }
        }
        out.copy_from_slice(&data[skip..skip + out.len()]);
        Ok(())
    }

    fn head(&mut self) -> &mut Layer {
        let i = self.layers.len() - 1;
        &mut self.layers[i]
    }

    /// Writes whole blocks starting at block `b` into the head.
    fn write_blocks(&mut self, b: u64, data: &[u8]) -> Result<()> {
        let n = data.len() as u64 / BLOCK;
        let mut sums = Vec::with_capacity((n * ENTRY) as usize);
        for block in data.chunks_exact(BLOCK as usize) {
            sums.extend_from_slice(&entry(crc32fast::hash(block), DATA));
        }
        let head = self.head();
        head.data.write_all_at(data, b * BLOCK).map_err(io("writing layer data"))?;
        head.sum.write_all_at(&sums, HEADER + b * ENTRY).map_err(io("writing layer checksums"))?;
        for k in 0..n {
            head.mark(b + k, DATA);
        }
        Ok(())
    }

    /// Writes `data` at `offset` (any alignment; partial blocks are
    /// read, merged and written whole).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let first = offset / BLOCK;
        let last = (offset + data.len() as u64 - 1) / BLOCK;
        if offset.is_multiple_of(BLOCK) && (data.len() as u64).is_multiple_of(BLOCK) {
            return self.write_blocks(first, data);
        }
        // Merge the edges with what the chain holds.
        let mut buf = vec![0u8; ((last - first + 1) * BLOCK) as usize];
        let start = (offset - first * BLOCK) as usize;
        let edge = BLOCK as usize;
        if start != 0 {
            self.read(first * BLOCK, &mut buf[..edge])?;
        }
        let end = start + data.len();
        if !end.is_multiple_of(edge) {
            let at = buf.len() - edge;
            self.read(last * BLOCK, &mut buf[at..])?;
        }
        buf[start..end].copy_from_slice(data);
        self.write_blocks(first, &buf)
    }

    /// Makes `len` bytes at `offset` read as zeros, freeing the head's
    /// space for whole blocks.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let first_full = offset.div_ceil(BLOCK);
        let end = offset + len;
        let last_full = end / BLOCK; // exclusive
        if first_full >= last_full {
            return self.write(offset, &vec![0u8; len as usize]);
        }
        if !offset.is_multiple_of(BLOCK) {
            self.write(offset, &vec![0u8; (first_full * BLOCK - offset) as usize])?;
        }
        if !end.is_multiple_of(BLOCK) {
            self.write(last_full * BLOCK, &vec![0u8; (end - last_full * BLOCK) as usize])?;
        }
        let head_i = self.layers.len() - 1;
        let mut sums = Vec::with_capacity(((last_full - first_full) * ENTRY) as usize);
        let mut states = Vec::with_capacity((last_full - first_full) as usize);
        for b in first_full..last_full {
            let state = if self.below(head_i, b) { ZERO } else { ABSENT };
            states.push(state);
            sums.extend_from_slice(&entry(0, state));
        }
        let head = self.head();
        punch(&head.data, first_full * BLOCK, (last_full - first_full) * BLOCK)?;
        head.sum.write_all_at(&sums, HEADER + first_full * ENTRY).map_err(io("writing layer checksums"))?;
        for (k, s) in states.into_iter().enumerate() {
            head.mark(first_full + k as u64, s);
        }
        Ok(())
    }

    /// Makes everything written so far durable (the flush generation is
    /// kept).
    pub fn flush(&mut self) -> Result<()> {
        self.flush_as(self.flush_gen)
    }

    /// Makes everything written so far durable and records `generation`:
    /// the engine numbers its flushes, so replicas that took every flush
    /// carry the same number and one that missed some carries less.
    pub fn flush_as(&mut self, generation: u64) -> Result<()> {
        for l in self.layers.iter_mut().filter(|l| l.unsynced) {
            l.data.sync_data().map_err(io("syncing layer data"))?;
            l.sum.sync_data().map_err(io("syncing layer checksums"))?;
            l.unsynced = false;
        }
        let epoch = self.meta.epoch;
        let head = self.head();
        head.data.sync_data().map_err(io("syncing layer data"))?;
        let id = head.meta.id;
        head.sum.write_all_at(&header(id, generation, epoch), 0).map_err(io("writing layer header"))?;
        head.sum.sync_data().map_err(io("syncing layer checksums"))?;
        // A generation is recorded only once a rebuild is complete.
        if self.meta.rebuilding && generation > self.flush_gen {
            let mut meta = self.meta.clone();
            meta.rebuilding = false;
            write_meta(&self.dir, &meta)?;
            self.meta = meta;
        }
        self.flush_gen = generation;
        Ok(())
    }

    /// Freezes the head as snapshot `name` and starts a new empty head.
    pub fn snapshot(&mut self, name: &str) -> Result<()> {
        if name.is_empty() || name.contains('/') {
            return Err(StoreError::Invalid(format!("snapshot name {name:?} must be non-empty without '/'")));
        }
        if self.layers.iter().any(|l| l.meta.snapshot.as_deref() == Some(name)) {
            return Err(StoreError::Invalid(format!("snapshot {name:?} already exists")));
        }
        self.flush()?;
        let id = self.layers.iter().map(|l| l.meta.id).max().unwrap_or(0) + 1;
        let lm = LayerMeta { id, snapshot: None, created: now() };
        let layer = Self::new_layer_files(&self.dir, &lm, self.meta.size, self.flush_gen, self.meta.epoch)?;
        let mut meta = self.meta.clone();
        if let Some(h) = meta.layers.last_mut() {
            h.snapshot = Some(name.to_string());
            h.created = now();
        }
        meta.layers.push(lm);
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        let n = self.layers.len();
        self.layers[n - 1].meta = self.meta.layers[n - 1].clone();
        self.layers.push(layer);
        Ok(())
    }

    /// Snapshots, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.layers
            .iter()
            .filter_map(|l| {
                Some(SnapshotInfo {
                    name: l.meta.snapshot.clone()?,
                    created: l.meta.created.clone(),
                    stored_bytes: (l.present.count() - l.zero.count()) * BLOCK,
                })
            })
            .collect()
    }

    fn snapshot_index(&self, name: &str) -> Result<usize> {
        self.layers
            .iter()
            .position(|l| l.meta.snapshot.as_deref() == Some(name))
            .ok_or_else(|| StoreError::NoSnapshot(name.to_string()))
    }

    /// Deletes snapshot `name`: its blocks move up into the layer above
    /// (which wins where it has its own), then the layer goes.
    pub fn delete_snapshot(&mut self, name: &str) -> Result<()> {
        let i = self.snapshot_index(name)?;
        let head = self.layers.len() - 1;
        if i + 1 == head && self.layers[head].present.count() < self.layers[i].present.count() {
            return self.merge_head_down(i);
        }
        let blocks = self.meta.size / BLOCK;
        let mut buf = vec![0u8; BLOCK as usize];
        for b in 0..blocks {
            let state = self.layers[i].state(b);
            if state == ABSENT || self.layers[i + 1].present.get(b) {
                continue;
            }
            let (lower, upper) = self.layers.split_at_mut(i + 1);
            let (src, dst) = (&lower[i], &mut upper[0]);
            if state == DATA {
                src.data.read_exact_at(&mut buf, b * BLOCK).map_err(io("reading snapshot data"))?;
                let mut e = [0u8; 8];
                src.sum.read_exact_at(&mut e, HEADER + b * ENTRY).map_err(io("reading snapshot checksums"))?;
                dst.data.write_all_at(&buf, b * BLOCK).map_err(io("writing layer data"))?;
                dst.sum.write_all_at(&e, HEADER + b * ENTRY).map_err(io("writing layer checksums"))?;
            } else {
                // A zero block only matters if something below it exists.
                let below =
                    lower[..i].iter().any(|l| l.present.get(b)) || self.base.as_ref().is_some_and(|l| l.present.get(b));
                if !below {
                    continue;
                }
                dst.sum.write_all_at(&entry(0, ZERO), HEADER + b * ENTRY).map_err(io("writing layer checksums"))?;
            }
            dst.mark(b, state);
        }
        let dst = &self.layers[i + 1];
        dst.data.sync_data().map_err(io("syncing layer data"))?;
        dst.sum.sync_data().map_err(io("syncing layer checksums"))?;
        let mut meta = self.meta.clone();
        let gone = meta.layers.remove(i);
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        self.layers.remove(i);
        remove_layer_files(&self.dir, gone.id);
        Ok(())
    }

    /// Deletes snapshot `i` just below the head when the head is the
    /// smaller: the head's blocks are copied down into the snapshot's
    /// layer, which then becomes the head (the result is the same as
    /// copying up, for a fraction of the I/O after a rebuild).
    fn merge_head_down(&mut self, i: usize) -> Result<()> {
        let head = self.layers.len() - 1;
        let blocks = self.meta.size / BLOCK;
        let mut buf = vec![0u8; BLOCK as usize];
        let mut e = [0u8; 8];
        for b in 0..blocks {
            let state = self.layers[head].state(b);
            if state == ABSENT {
                continue;
            }
            let (lower, upper) = self.layers.split_at_mut(head);
            let (dst, src) = (&mut lower[i], &upper[0]);
            match state {
                DATA => {
                    src.data.read_exact_at(&mut buf, b * BLOCK).map_err(io("reading head data"))?;
                    src.sum.read_exact_at(&mut e, HEADER + b * ENTRY).map_err(io("reading head checksums"))?;
                    dst.data.write_all_at(&buf, b * BLOCK).map_err(io("writing layer data"))?;
                    dst.sum.write_all_at(&e, HEADER + b * ENTRY).map_err(io("writing layer checksums"))?;
                    dst.mark(b, DATA);
                }
                _ => {
                    // Zero in the head: the merged layer masks what is below
                    // it only if something below has the block.
                    let below = self.below(i, b);
                    let dst = &mut self.layers[i];
                    if dst.state(b) == DATA {
                        punch(&dst.data, b * BLOCK, BLOCK)?;
                    }
                    let st = if below { ZERO } else { ABSENT };
                    dst.sum.write_all_at(&entry(0, st), HEADER + b * ENTRY).map_err(io("writing layer checksums"))?;
                    dst.mark(b, st);
                }
            }
        }
        let generation = self.flush_gen;
        let epoch = self.meta.epoch;
        let dst = &self.layers[i];
        dst.data.sync_data().map_err(io("syncing layer data"))?;
        dst.sum.write_all_at(&header(dst.meta.id, generation, epoch), 0).map_err(io("writing layer header"))?;
        dst.sum.sync_data().map_err(io("syncing layer checksums"))?;
        let mut meta = self.meta.clone();
        let gone = meta.layers.remove(head);
        meta.layers[i].snapshot = None;
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        self.layers.pop();
        self.layers[i].meta = self.meta.layers[i].clone();
        remove_layer_files(&self.dir, gone.id);
        Ok(())
    }

    /// Goes back to snapshot `name`: the head is dropped and a new empty
    /// head is started on the snapshot. Newer snapshots would be lost, so
    /// they are refused unless `discard_newer`. The volume must not be in
    /// use (the engine is stopped).
    pub fn revert(&mut self, name: &str, discard_newer: bool) -> Result<()> {
        let i = self.snapshot_index(name)?;
        let newer: Vec<&str> = self.layers[i + 1..].iter().filter_map(|l| l.meta.snapshot.as_deref()).collect();
        if !newer.is_empty() && !discard_newer {
            return Err(StoreError::Invalid(format!(
                "snapshots newer than {name:?} exist ({}); delete them first, or revert discarding them",
                newer.join(", ")
            )));
        }
        let id = self.layers.iter().map(|l| l.meta.id).max().unwrap_or(0) + 1;
        let lm = LayerMeta { id, snapshot: None, created: now() };
        let layer = Self::new_layer_files(&self.dir, &lm, self.meta.size, self.flush_gen, self.meta.epoch)?;
        let mut meta = self.meta.clone();
        let dropped: Vec<u64> = meta.layers.drain(i + 1..).map(|l| l.id).collect();
        meta.layers.push(lm);
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        self.layers.truncate(i + 1);
        self.layers.push(layer);
        for id in dropped {
            remove_layer_files(&self.dir, id);
        }
        Ok(())
    }

    /// Grows the volume to `size` bytes (new space reads as zeros).
    pub fn expand(&mut self, size: u64) -> Result<()> {
        if !size.is_multiple_of(BLOCK) || size < self.meta.size {
            return Err(StoreError::Invalid(format!(
                "a volume can only grow, in multiples of {BLOCK} bytes: {} → {size}",
                self.meta.size
            )));
        }
        let blocks = size / BLOCK;
        for l in &mut self.layers {
            l.data.set_len(size).map_err(io("growing layer data"))?;
            l.sum.set_len(HEADER + blocks * ENTRY).map_err(io("growing layer checksums"))?;
            l.present.grow(blocks);
            l.zero.grow(blocks);
        }
        let mut meta = self.meta.clone();
        meta.size = size;
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        Ok(())
    }

    /// Flushes and marks the replica clean.
    pub fn close(mut self) -> Result<()> {
        if self.writable {
            self.flush()?;
            self.meta.dirty = false;
            write_meta(&self.dir, &self.meta)?;
            self.writable = false;
        }
        Ok(())
    }

    /// The snapshot names of the immutable layers, oldest first (the head
    /// is not included).
    pub fn chain(&self) -> Vec<String> {
        self.layers.iter().filter_map(|l| l.meta.snapshot.clone()).collect()
    }

    fn layer_by_name(&self, snapshot: &str) -> Result<usize> {
        self.snapshot_index(snapshot)
    }

    /// Which of `count` blocks from `block` changed between snapshot
    /// `from` and snapshot `to`: a bitmap, bit `i % 8` of byte `i / 8`
    /// (least significant first) for block `block + i`, set when a layer
    /// strictly above `from` up to and including `to` holds the block
    /// (data or zero). With `from = None`, every layer from the bottom of
    /// the chain up to `to` counts; the base image is not a layer, its
    /// blocks are not included. What an incremental backup reads.
    ///
    /// A set bit may be a block rewritten with what it held; a clear bit is
    /// a block that reads the same in `to` as in `from`. Deleting a
    /// snapshot keeps this true: its blocks move into the layer above.
    ///
    /// The range must lie within the volume's size (the replica's, like
    /// [`Replica::read_snapshot`]: a snapshot taken before an expansion
    /// holds no block past its own size, so those bits are clear) and span
    /// at most [`MAX_DELTA_BLOCKS`]. A replica being rebuilt refuses: its
    /// snapshot layers are still being filled.
    pub fn changed_blocks(&self, from: Option<&str>, to: &str, block: u64, count: u64) -> Result<Vec<u8>> {
        let top = self.snapshot_index(to)?;
        let bottom = match from {
            None => 0,
            Some(from) => {
                let i = self.snapshot_index(from)?;
                if i >= top {
                    return Err(StoreError::Invalid(format!(
                        "snapshot {from:?} is not older than snapshot {to:?}: ask for the changes from the older \
                         to the newer"
                    )));
                }
                i + 1
            }
        };
        if count > MAX_DELTA_BLOCKS {
            return Err(StoreError::Invalid(format!(
                "a change map of {count} blocks is too large: ask for at most {MAX_DELTA_BLOCKS} blocks at a time"
            )));
        }
        let blocks = self.meta.size / BLOCK;
        if block.checked_add(count).is_none_or(|end| end > blocks) {
            return Err(StoreError::Invalid(format!(
                "blocks {block}+{count} are beyond the end of the volume ({blocks} blocks)"
            )));
        }
        if self.meta.rebuilding {
            return Err(StoreError::Invalid(
                "this replica is being rebuilt and its snapshots are incomplete: ask a healthy replica".into(),
            ));
        }
        let mut map = vec![0u8; count.div_ceil(8) as usize];
        if count == 0 {
            return Ok(map);
        }
        // The union of the layers' presence words over the range, then
        // the range's bits taken out of it eight at a time.
        let first = block / 64;
        let words = ((block + count - 1) / 64 - first + 1) as usize;
        let mut union = vec![0u64; words];
        for l in &self.layers[bottom..=top] {
            let have = l.present.0.iter().skip(first as usize);
            for (u, w) in union.iter_mut().zip(have) {
                *u |= w;
            }
        }
        let skip = block % 64;
        for (k, byte) in map.iter_mut().enumerate() {
            let bit = skip + 8 * k as u64;
            let (w, shift) = ((bit / 64) as usize, bit % 64);
            let mut v = union[w] >> shift;
            if shift > 56 {
                v |= union.get(w + 1).map_or(0, |next| next << (64 - shift));
            }
            *byte = v as u8;
        }
        if !count.is_multiple_of(8) {
            if let Some(last) = map.last_mut() {
                *last &= (1u8 << (count % 8)) - 1;
            }
        }
        Ok(map)
    }

    /// Checksum entries (CRC32 and state, 8 bytes each) of `count` blocks
    /// from `block` in snapshot layer `snapshot`: what a rebuild compares.
    pub fn layer_sums(&self, snapshot: &str, block: u64, count: u64) -> Result<Vec<u8>> {
        let i = self.layer_by_name(snapshot)?;
        self.check_range(block * BLOCK, count * BLOCK)?;
        let mut sums = vec![0u8; (count * ENTRY) as usize];
        self.layers[i].sum.read_exact_at(&mut sums, HEADER + block * ENTRY).map_err(io("reading layer checksums"))?;
        // Entries of absent blocks may hold leftovers: normalise from the bitmap.
        for (k, e) in sums.chunks_exact_mut(ENTRY as usize).enumerate() {
            let state = self.layers[i].state(block + k as u64);
            if state != DATA {
                e.copy_from_slice(&entry(0, state));
            }
        }
        Ok(sums)
    }

    /// The data of the DATA blocks among `count` blocks from `block` of a
    /// snapshot layer, verified, concatenated in block order.
    pub fn layer_data(&self, snapshot: &str, block: u64, count: u64) -> Result<Vec<u8>> {
        let i = self.layer_by_name(snapshot)?;
        self.check_range(block * BLOCK, count * BLOCK)?;
        let l = &self.layers[i];
        let data_blocks = (block..block + count).filter(|&b| l.state(b) == DATA).count();
        let mut out = vec![0u8; data_blocks * BLOCK as usize];
        let mut at = 0usize;
        // Runs of DATA blocks, each read and verified at once.
        let mut b = block;
        while b < block + count {
            if l.state(b) != DATA {
                b += 1;
                continue;
            }
            let mut run = 1;
            while b + run < block + count && l.state(b + run) == DATA {
                run += 1;
            }
            let n = (run * BLOCK) as usize;
            self.read_verified(i, b, run, 0, &mut out[at..at + n])?;
            at += n;
            b += run;
        }
        Ok(out)
    }

    /// Makes the immutable layers match `names` (a healthy replica's
    /// chain): the common prefix is kept (its blocks are compared and
    /// fixed afterwards), other snapshot layers are dropped, missing ones
    /// are created empty; the head stays on top.
    pub fn set_chain(&mut self, names: &[String]) -> Result<()> {
        let head = self.layers.len() - 1;
        let keep = self.layers[..head]
            .iter()
            .zip(names)
            .take_while(|(l, n)| l.meta.snapshot.as_deref() == Some(n.as_str()))
            .count();
        if keep == head && keep == names.len() {
            if !self.meta.rebuilding {
                let mut meta = self.meta.clone();
                meta.rebuilding = true;
                write_meta(&self.dir, &meta)?;
                self.meta = meta;
            }
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.rebuilding = true;
        let dropped: Vec<u64> = meta.layers.drain(keep..head).map(|l| l.id).collect();
        let first_id = self.layers.iter().map(|l| l.meta.id).max().unwrap_or(0) + 1;
        let mut created = Vec::new();
        for (id, name) in (first_id..).zip(&names[keep..]) {
            let lm = LayerMeta { id, snapshot: Some(name.clone()), created: now() };
            created.push(Self::new_layer_files(&self.dir, &lm, self.meta.size, self.flush_gen, self.meta.epoch)?);
            let at = meta.layers.len() - 1;
            meta.layers.insert(at, lm);
        }
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        let head_layer = self.layers.pop();
        self.layers.truncate(keep);
        self.layers.extend(created);
        self.layers.extend(head_layer);
        for id in dropped {
            remove_layer_files(&self.dir, id);
        }
        Ok(())
    }

    /// Overwrites blocks of a snapshot layer with a healthy replica's:
    /// `sums` holds one entry per block from `block`, `data` the DATA
    /// blocks' contents in order (each checked against its checksum).
    pub fn put_layer_blocks(&mut self, snapshot: &str, block: u64, sums: &[u8], data: &[u8]) -> Result<()> {
        let i = self.layer_by_name(snapshot)?;
        let count = sums.len() as u64 / ENTRY;
        self.check_range(block * BLOCK, count * BLOCK)?;
        let entries: Vec<&[u8]> = sums.chunks_exact(ENTRY as usize).collect();
        let state_of = |e: &[u8]| u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        // Everything is checked before anything is written.
        let mut at = 0usize;
        for (k, e) in entries.iter().enumerate() {
            let b = block + k as u64;
            match state_of(e) {
                DATA => {
                    let d = data
                        .get(at..at + BLOCK as usize)
                        .ok_or_else(|| StoreError::Invalid("rebuild data is shorter than its checksums say".into()))?;
                    at += BLOCK as usize;
                    if crc32fast::hash(d) != u32::from_le_bytes([e[0], e[1], e[2], e[3]]) {
                        return Err(StoreError::Invalid(format!("rebuild data for block {b} fails its checksum")));
                    }
                }
                ABSENT | ZERO => {}
                other => return Err(StoreError::Invalid(format!("rebuild block {b} has state {other}"))),
            }
        }
        if at != data.len() {
            return Err(StoreError::Invalid("rebuild data is longer than its checksums say".into()));
        }
        let layer = &mut self.layers[i];
        // Runs of blocks in the same state: one write (or hole) each.
        let (mut k, mut at) = (0usize, 0usize);
        while k < entries.len() {
            let state = state_of(entries[k]);
            let mut run = 1;
            while k + run < entries.len() && state_of(entries[k + run]) == state {
                run += 1;
            }
            let b = block + k as u64;
            if state == DATA {
                let n = run * BLOCK as usize;
                layer.data.write_all_at(&data[at..at + n], b * BLOCK).map_err(io("writing layer data"))?;
                at += n;
            } else if (b..b + run as u64).any(|x| layer.state(x) == DATA) {
                punch(&layer.data, b * BLOCK, run as u64 * BLOCK)?;
            }
            for x in 0..run as u64 {
                layer.mark(b + x, state);
            }
            k += run;
        }
        layer.sum.write_all_at(sums, HEADER + block * ENTRY).map_err(io("writing layer checksums"))?;
        // Synced with the flush that ends the rebuild.
        layer.unsynced = true;
        Ok(())
    }

    /// Bytes of data the layers store (thin provisioning: written blocks).
    pub fn stored_bytes(&self) -> u64 {
        self.layers.iter().map(|l| (l.present.count() - l.zero.count()) * BLOCK).sum()
    }
}

/// [`Replica::owner`]'s index of the base image.
const BASE: usize = usize::MAX;

/// Opens a replica's base image read-only and loads which blocks it has.
fn open_base(dir: &Path, b: &BaseRef) -> Result<Layer> {
    let corrupt = |message: String| StoreError::Corrupt { dir: dir.display().to_string(), message };
    let meta = crate::base::read_meta(&b.dir)?
        .ok_or_else(|| corrupt(format!("its base image {} is missing or unfinished", b.dir.display())))?;
    if meta.id != b.id || meta.size != b.size {
        return Err(corrupt(format!(
            "its base image {} is {:?} of {} bytes, not {:?} of {} bytes",
            b.dir.display(),
            meta.id,
            meta.size,
            b.id,
            b.size
        )));
    }
    let open = |name: &str| {
        let p = b.dir.join(name);
        File::open(&p).map_err(io(format!("opening {}", p.display())))
    };
    let data = open(crate::base::DATA_FILE)?;
    let sum = open(crate::base::SUM_FILE)?;
    let mut h = [0u8; 40];
    sum.read_exact_at(&mut h, 0).map_err(io("reading the base image's checksum header"))?;
    if &h[..8] != MAGIC {
        return Err(corrupt(format!("its base image {} has a bad checksum header", b.dir.display())));
    }
    let meta = LayerMeta { id: 0, snapshot: None, created: meta.created };
    Layer::load(meta, data, sum, b.size / BLOCK, dir, "base image: ")
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    write_json(dir, "replica.json", meta)
}

/// Replaces `dir/name` with `value` as JSON atomically: written to a
/// temporary file, synced, renamed over, the directory synced.
pub(crate) fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let body = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let mut f = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(&body).map_err(io(format!("writing {name}")))?;
    f.sync_all().map_err(io(format!("syncing {name}")))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io(format!("replacing {name}")))?;
    sync_dir(dir)
}

fn remove_layer_files(dir: &Path, id: u64) {
    let _ = std::fs::remove_file(data_path(dir, id));
    let _ = std::fs::remove_file(sum_path(dir, id));
}

/// Layer files no chain names (an interrupted snapshot, delete or revert).
fn remove_stray_layers(dir: &Path, meta: &Meta) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let id = name
            .strip_prefix("layer-")
            .and_then(|r| r.strip_suffix(".data").or_else(|| r.strip_suffix(".sum")))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            if !meta.layers.iter().any(|l| l.id == id) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks set in a change map, as block numbers.
    fn set_blocks(map: &[u8], block: u64, count: u64) -> Vec<u64> {
        (0..count).filter(|i| map[(i / 8) as usize] & (1 << (i % 8)) != 0).map(|i| block + i).collect()
    }

    fn changed(r: &Replica, from: Option<&str>, to: &str) -> Vec<u64> {
        let blocks = r.size() / BLOCK;
        set_blocks(&r.changed_blocks(from, to, 0, blocks).expect("changed blocks"), 0, blocks)
    }

    /// Every block that reads differently in `to` than in `from` (zeros
    /// for `None`) is in the change map.
    fn assert_covers_content(r: &Replica, from: Option<&str>, to: &str) {
        let mut a = vec![0u8; r.size() as usize];
        let mut b = vec![0u8; r.size() as usize];
        if let Some(from) = from {
            r.read_snapshot(from, 0, &mut a).expect("read from");
        }
        r.read_snapshot(to, 0, &mut b).expect("read to");
        let map = changed(r, from, to);
        for (k, (x, y)) in a.chunks(BLOCK as usize).zip(b.chunks(BLOCK as usize)).enumerate() {
            if x != y {
                assert!(map.contains(&(k as u64)), "block {k} differs between {from:?} and {to:?}: {map:?}");
            }
        }
    }

    fn block_of(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK as usize]
    }

    /// a: 0 1 5 written. b: 2 written, 0 zeroed over a, 20 zeroed over
    /// nothing, 30 written then trimmed. c: 3 written, a few bytes into 40.
    /// The head: 4 written.
    fn three_snapshots(dir: &Path) -> Replica {
        let mut r = Replica::create(dir, "vol", 64 * BLOCK).expect("create");
        for b in [0, 1, 5] {
            r.write(b * BLOCK, &block_of(1)).expect("write");
        }
        r.snapshot("a").expect("snapshot a");
        r.write(2 * BLOCK, &block_of(2)).expect("write");
        r.write_zeroes(0, BLOCK).expect("zero over a");
        r.write_zeroes(20 * BLOCK, BLOCK).expect("zero over nothing");
        r.write(30 * BLOCK, &block_of(2)).expect("write");
        r.write_zeroes(30 * BLOCK, BLOCK).expect("trim");
        r.snapshot("b").expect("snapshot b");
        r.write(3 * BLOCK, &block_of(3)).expect("write");
        r.write(40 * BLOCK + 100, b"partial").expect("partial write");
        r.snapshot("c").expect("snapshot c");
        r.write(4 * BLOCK, &block_of(4)).expect("write into the head");
        r
    }

    #[test]
    fn changed_blocks_are_those_of_the_layers_between_the_snapshots() {
        let t = tempfile::tempdir().expect("tempdir");
        let r = three_snapshots(&t.path().join("r"));
        assert_eq!(changed(&r, None, "a"), [0, 1, 5]);
        assert_eq!(changed(&r, Some("a"), "b"), [0, 2], "a zero over a's block counts, trimmed holes do not");
        assert_eq!(changed(&r, Some("b"), "c"), [3, 40]);
        assert_eq!(changed(&r, Some("a"), "c"), [0, 2, 3, 40]);
        assert_eq!(changed(&r, None, "c"), [0, 1, 2, 3, 5, 40], "the head's block 4 is in no snapshot");
        for (from, to) in [(None, "a"), (Some("a"), "b"), (Some("b"), "c"), (Some("a"), "c"), (None, "c")] {
            assert_covers_content(&r, from, to);
        }
        // A range not starting at 0, not a multiple of 8: bits past it are clear.
        let map = r.changed_blocks(None, "c", 1, 10).expect("range");
        assert_eq!(map.len(), 2);
        assert_eq!(set_blocks(&map, 1, 10), [1, 2, 3, 5]);
        assert_eq!(map[1] & !0b11, 0);
        assert!(r.changed_blocks(None, "c", 7, 0).expect("empty").is_empty());
        // The same after a reopen (the bits come from the checksum files).
        r.close().expect("close");
        let r = Replica::open(&t.path().join("r")).expect("open");
        assert_eq!(changed(&r, Some("a"), "c"), [0, 2, 3, 40]);
    }

    #[test]
    fn deleting_a_snapshot_moves_its_changes_into_the_next() {
        let t = tempfile::tempdir().expect("tempdir");
        let mut r = three_snapshots(&t.path().join("r"));
        // In between: b's blocks move up into c.
        r.delete_snapshot("b").expect("delete b");
        assert_eq!(changed(&r, Some("a"), "c"), [0, 2, 3, 40]);
        assert_covers_content(&r, Some("a"), "c");
        // The one under the head, the head the smaller: the head's blocks
        // move down and c's layer becomes the head; the next snapshot has
        // both.
        r.delete_snapshot("c").expect("delete c");
        r.snapshot("d").expect("snapshot d");
        assert_eq!(changed(&r, Some("a"), "d"), [0, 2, 3, 4, 40]);
        assert_covers_content(&r, Some("a"), "d");
        // The bottom one: everything is in d now.
        r.delete_snapshot("a").expect("delete a");
        assert_eq!(changed(&r, None, "d"), [0, 1, 2, 3, 4, 5, 40]);
        assert_covers_content(&r, None, "d");
    }

    /// Layers with random blocks across word boundaries, every range
    /// checked against the layers' bits one block at a time.
    #[test]
    fn change_maps_match_the_layers_block_by_block() {
        use rand::{Rng as _, SeedableRng as _};
        let t = tempfile::tempdir().expect("tempdir");
        let blocks = 300;
        let mut r = Replica::create(&t.path().join("r"), "vol", blocks * BLOCK).expect("create");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for s in 0..4 {
            for _ in 0..60 {
                let b = rng.random_range(0..blocks);
                if rng.random_range(0..4) == 0 {
                    r.write_zeroes(b * BLOCK, BLOCK).expect("zero");
                } else {
                    r.write(b * BLOCK, &block_of(s + 1)).expect("write");
                }
            }
            r.snapshot(&format!("s{s}")).expect("snapshot");
        }
        let names = r.chain();
        for (fi, from) in std::iter::once(None).chain(names.iter().map(|n| Some(n.as_str()))).enumerate() {
            for (ti, to) in names.iter().enumerate().filter(|(ti, _)| *ti >= fi) {
                for (block, count) in [(0, blocks), (1, 299), (63, 2), (60, 130), (64, 64), (127, 9), (299, 1), (5, 0)]
                {
                    let map = r.changed_blocks(from, to, block, count).expect("map");
                    assert_eq!(map.len() as u64, count.div_ceil(8));
                    let want: Vec<u64> = (block..block + count)
                        .filter(|&b| r.layers[fi..=ti].iter().any(|l| l.present.get(b)))
                        .collect();
                    assert_eq!(set_blocks(&map, block, count), want, "{from:?}..{to} at {block}+{count}");
                    let last_bits = count % 8;
                    if last_bits != 0 {
                        assert_eq!(map[map.len() - 1] >> last_bits, 0, "bits past the range are clear");
                    }
                }
                assert_covers_content(&r, from, to);
            }
        }
    }

    #[test]
    fn a_base_image_is_not_a_change() {
        let t = tempfile::tempdir().expect("tempdir");
        let base = t.path().join("base");
        std::fs::create_dir_all(&base).expect("base dir");
        std::fs::write(base.join(crate::base::DATA_FILE), vec![9u8; (8 * BLOCK) as usize]).expect("base data");
        crate::base::build(&base, "image-1", |_, _| {}).expect("build base");
        let mut r = Replica::create_on_base(&t.path().join("r"), "vol", 16 * BLOCK, &base).expect("create");
        r.write(10 * BLOCK, &block_of(1)).expect("write");
        r.write_zeroes(3 * BLOCK, BLOCK).expect("zero over the base");
        r.snapshot("s").expect("snapshot");
        assert_eq!(changed(&r, None, "s"), [3, 10]);
    }

    #[test]
    fn bad_change_map_requests_say_what_is_wrong() {
        let t = tempfile::tempdir().expect("tempdir");
        let r = three_snapshots(&t.path().join("r"));
        let err = |from: Option<&str>, to: &str, block: u64, count: u64| {
            r.changed_blocks(from, to, block, count).expect_err("refused").to_string()
        };
        assert_eq!(err(None, "nope", 0, 1), r#"snapshot "nope" does not exist"#);
        assert_eq!(err(Some("nope"), "c", 0, 1), r#"snapshot "nope" does not exist"#);
        assert!(err(Some("c"), "a", 0, 1).contains(r#"snapshot "c" is not older than snapshot "a""#));
        assert!(err(Some("b"), "b", 0, 1).contains("is not older than"));
        assert!(err(None, "c", 60, 5).contains("beyond the end of the volume (64 blocks)"));
        assert!(err(None, "c", u64::MAX, 2).contains("beyond the end"));
        assert!(err(None, "c", 0, MAX_DELTA_BLOCKS + 1).contains("at most 4194304 blocks"));
        assert!(r.changed_blocks(None, "c", 0, 64).is_ok());
        // A replica whose snapshot layers a rebuild is filling.
        let mut dst = Replica::create(&t.path().join("dst"), "vol", 64 * BLOCK).expect("create");
        dst.set_chain(&["a".to_string()]).expect("set chain");
        let e = dst.changed_blocks(None, "a", 0, 64).expect_err("refused").to_string();
        assert!(e.contains("being rebuilt"), "{e}");
    }
}
