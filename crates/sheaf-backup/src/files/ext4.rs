//! ext2, ext3 and ext4, read with the `ext4-view` crate (extents,
//! indirect blocks, htree directories, inline data, fast and slow
//! symlinks, journal; it refuses what it cannot read rather than guess).
//!
//! Before the crate sees a superblock, [`probe`] checks what would make
//! it allocate in proportion to a number read from the disk: the block
//! size and the number of block groups must be sane, and the file system
//! must fit in its partition.

use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType};

use super::image::{read_vec, ReadAt};
use super::partitions::le32;
use super::{display, Entry, EntryKind, FileSystem, FilesError, FsKind, Sink, READ_BUF};

const SUPERBLOCK: u64 = 1024;
const MAGIC: u16 = 0xEF53;
/// Block groups accepted (with 4 KiB blocks, 128 TiB).
const MAX_GROUPS: u64 = 1 << 20;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// Which of ext2/3/4 `part` holds, and its label; None if it holds none.
/// An error when it does but the superblock cannot be right.
pub fn probe(part: &dyn ReadAt) -> Result<Option<(FsKind, Option<String>)>, FilesError> {
    let sb = match read_vec(part, SUPERBLOCK, 1024) {
        Ok(sb) => sb,
        Err(FilesError::OutOfBounds { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if u16::from_le_bytes([sb[56], sb[57]]) != MAGIC {
        return Ok(None);
    }
    let corrupt = |why: String| Err(FilesError::Corrupt(format!("ext4 superblock: {why}")));
    let log_block = le32(&sb, 24);
    if log_block > 6 {
        return corrupt(format!("block size 2^{} is too large", 10 + log_block));
    }
    let block_size = 1024u64 << log_block;
    let incompat = le32(&sb, 0x60);
    let mut blocks = u64::from(le32(&sb, 4));
    if incompat & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(&sb, 0x150)) << 32;
    }
    let first_data_block = u64::from(le32(&sb, 20));
    let per_group = u64::from(le32(&sb, 32));
    if per_group == 0 || blocks <= first_data_block {
        return corrupt(format!("{blocks} blocks, {per_group} per group"));
    }
    let groups = (blocks - first_data_block).div_ceil(per_group);
    if groups > MAX_GROUPS {
        return corrupt(format!("{groups} block groups (at most {MAX_GROUPS} are read)"));
    }
    let fs_size = blocks.saturating_mul(block_size);
    if fs_size > part.size() {
        return corrupt(format!(
            "the file system ({fs_size} bytes) is larger than its partition ({} bytes)",
            part.size()
        ));
    }
    let kind = if incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) != 0 {
        FsKind::Ext4
    } else if le32(&sb, 0x5C) & COMPAT_HAS_JOURNAL != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    };
    let label = String::from_utf8_lossy(&sb[0x78..0x88]).trim_end_matches('\0').to_string();
    Ok(Some((kind, (!label.is_empty()).then_some(label))))
}

/// What `ext4-view` reads through: the partition, with the superblock
/// replaced by `superblock` when that is set.
struct Reader {
    part: Arc<dyn ReadAt>,
    superblock: Option<Vec<u8>>,
}

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.part.read_at(start_byte, dst)?;
        if let Some(sb) = &self.superblock {
            let end = start_byte.saturating_add(dst.len() as u64);
            let from = start_byte.max(SUPERBLOCK);
            let to = end.min(SUPERBLOCK + sb.len() as u64);
            if from < to {
                let src = &sb[(from - SUPERBLOCK) as usize..(to - SUPERBLOCK) as usize];
                dst[(from - start_byte) as usize..(to - start_byte) as usize].copy_from_slice(src);
            }
        }
        Ok(())
    }
}

pub struct Ext4Fs(Ext4);

impl Ext4Fs {
    /// Opens the file system. One that needs recovery (a snapshot of a
    /// mounted file system) is read through its journal; if the journal
    /// cannot be read (`ext4-view` wants the 64-bit, checksummed journal
    /// format), it is read without it, as of its last checkpoint.
    pub fn open(part: Arc<dyn ReadAt>) -> Result<Ext4Fs, FilesError> {
        if probe(part.as_ref())?.is_none() {
            return Err(FilesError::Corrupt("no ext2/3/4 superblock".into()));
        }
        let first = match Ext4::load(Box::new(Reader { part: part.clone(), superblock: None })) {
            Ok(fs) => return Ok(Ext4Fs(fs)),
            Err(e @ Ext4Error::Io(_)) => return Err(error(e, "")),
            Err(e) => e,
        };
        let mut sb = read_vec(part.as_ref(), SUPERBLOCK, 1024)?;
        if le32(&sb, 0x60) & INCOMPAT_RECOVER == 0 {
            return Err(error(first, ""));
        }
        let incompat = le32(&sb, 0x60) & !INCOMPAT_RECOVER;
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        if le32(&sb, 0x64) & RO_COMPAT_METADATA_CSUM != 0 {
            let sum = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&sb[..0x3FC]) ^ !0;
            sb[0x3FC..0x400].copy_from_slice(&sum.to_le_bytes());
        }
        match Ext4::load(Box::new(Reader { part, superblock: Some(sb) })) {
            Ok(fs) => {
                tracing::warn!(error = %first, "ext4 needs recovery and its journal cannot be read: reading it without");
                Ok(Ext4Fs(fs))
            }
            Err(_) => Err(error(first, "")),
        }
    }
}

/// Our error for one of `ext4-view`'s about `path`.
fn error(e: Ext4Error, path: &str) -> FilesError {
    match e {
        Ext4Error::NotFound => FilesError::NotFound(path.into()),
        Ext4Error::NotADirectory => FilesError::NotADirectory(path.into()),
        Ext4Error::IsADirectory => FilesError::NotAFile { path: path.into(), kind: "a directory" },
        Ext4Error::IsASpecialFile => FilesError::NotAFile { path: path.into(), kind: "a special file" },
        Ext4Error::TooManySymlinks => FilesError::Corrupt(format!("{path}: too many levels of symbolic links")),
        Ext4Error::Encrypted => FilesError::Feature(format!("{path} is encrypted")),
        Ext4Error::Io(inner) => match inner.downcast::<FilesError>() {
            Ok(ours) => *ours,
            Err(other) => FilesError::Corrupt(other.to_string()),
        },
        Ext4Error::Incompatible(i) => FilesError::Feature(format!("ext4: {i}")),
        other => FilesError::Corrupt(format!("ext4: {other}")),
    }
}

fn kind(t: FileType) -> EntryKind {
    if t.is_regular_file() {
        EntryKind::File
    } else if t.is_dir() {
        EntryKind::Dir
    } else if t.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

impl FileSystem for Ext4Fs {
    fn list(&self, path: &[String]) -> Result<Vec<Entry>, FilesError> {
        let shown = display(path);
        let fs = &self.0;
        let dir = fs.read_dir(shown.as_str()).map_err(|e| error(e, &shown))?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| error(e, &shown))?;
            let name = String::from_utf8_lossy(entry.file_name().as_ref()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let child = entry.path();
            let meta = entry.metadata().map_err(|e| error(e, &format!("{shown}/{name}")))?;
            let kind = kind(meta.file_type());
            let link_target = match kind {
                EntryKind::Symlink => {
                    fs.read_link(&child).ok().map(|t| String::from_utf8_lossy(t.as_ref()).into_owned())
                }
                _ => None,
            };
            out.push(Entry {
                name,
                kind,
                size: if kind == EntryKind::Dir { 0 } else { meta.len() },
                mode: u32::from(meta.mode()) & 0o7777,
                mtime: Some(meta.modified().seconds()),
                link_target,
            });
        }
        Ok(out)
    }

    fn read(&self, path: &[String], sink: Sink<'_>) -> Result<u64, FilesError> {
        let shown = display(path);
        let mut file = self.0.open(shown.as_str()).map_err(|e| error(e, &shown))?;
        let mut buf = vec![0u8; READ_BUF];
        let mut total = 0u64;
        loop {
            // Fill the buffer before handing it on (reads stop at blocks).
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read_bytes(&mut buf[filled..]).map_err(|e| error(e, &shown))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(total);
            }
            sink(&buf[..filled])?;
            total += filled as u64;
        }
    }
}
