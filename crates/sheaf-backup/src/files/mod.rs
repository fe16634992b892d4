//! File-level restore: list the directories of a backup and download
//! single files from it without restoring the volume.
//!
//! A backup is the image of a whole disk. [`BackupImage`] reads any range
//! of it, fetching (and checking) only the chunks the range touches;
//! [`partitions`](mod@partitions) finds the partitions (GPT, MBR, or none);
//! each is probed for a file system this module reads: ext2/3/4
//! ([`ext4`], through the `ext4-view` crate), FAT12/16/32 with long names
//! ([`fat`]), ISO 9660 with Rock Ridge or Joliet ([`iso`]).
//!
//! ```text
//!  async caller ──► spawn_blocking ──► parser (sync, over ReadAt)
//!       ▲                                  │ read_at
//!       │ mpsc of ≤256 KiB pieces          ▼
//!  AsyncWrite ◄──── read_file          BlockingImage ─ Handle::block_on ─►
//!                                      BackupImage ── LRU of 64 chunks ──► Repository::get_chunk
//! ```
//!
//! The parsers are synchronous and run on tokio's blocking pool; a read
//! blocks that thread on the async image. A file is streamed out in
//! pieces of at most [`READ_BUF`] bytes through a bounded channel, so any
//! size works in bounded memory. Every call opens the image afresh (its
//! own cache); each is independent, so callers may run several at once.
//!
//! Everything read from the image is hostile until checked: sizes are
//! bounded before anything is allocated from them, chains and trees are
//! followed a bounded number of steps, and nothing panics on a corrupt
//! image: it is a [`FilesError::Corrupt`] instead.
//!
//! Paths are absolute and `/`-separated; `.` and empty components are
//! ignored, `..` is refused. ext4 follows symbolic links inside the file
//! system (they cannot leave it); ISO 9660 lists them but does not follow
//! them. FAT compares names without case, as its users expect; so does a
//! plain ISO 9660 (its names are upper case).

pub mod ext4;
pub mod fat;
pub mod image;
pub mod iso;
pub mod partitions;

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt as _};

pub use image::{BackupImage, BlockingImage, ReadAt, Window};
pub use partitions::Table;

use crate::manifest::VolumeManifest;
use crate::repo::{RepoError, Repository};

/// The largest piece of a file handed on at once.
pub const READ_BUF: usize = 256 << 10;
/// Pieces in flight between the reader and the writer.
const PIECES_IN_FLIGHT: usize = 4;
/// What is tried on a partition, for messages.
pub const SUPPORTED: &str = "ext2/3/4, FAT12/16/32, ISO 9660";
/// Longest path accepted, in bytes.
const MAX_PATH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path:?} is not a valid path: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{path} is not a regular file: it is {kind}")]
    NotAFile { path: String, kind: &'static str },
    #[error("the backup has no partition {index}; it has {available}")]
    NoSuchPartition { index: u32, available: String },
    #[error("the backup has several partitions with a file system ({available}): say which")]
    PartitionRequired { available: String },
    #[error("{place}: no file system that file-level restore reads (tried {SUPPORTED})")]
    UnknownFileSystem { place: String },
    #[error("{place} holds {fs}, which file-level restore does not read (it reads {SUPPORTED})")]
    UnsupportedFileSystem { place: String, fs: &'static str },
    #[error("not supported: {0}")]
    Feature(String),
    #[error("the file system is corrupt: {0}")]
    Corrupt(String),
    #[error("a read of {len} bytes at {offset} goes past the end ({size} bytes)")]
    OutOfBounds { offset: u64, len: u64, size: u64 },
    #[error("reading the backup: {0}")]
    Repo(#[source] RepoError),
    #[error("writing the file out: {0}")]
    Write(#[source] std::io::Error),
    /// The writer stopped taking the file.
    #[error("the download was abandoned")]
    Abandoned,
    #[error("the reading task failed: {0}")]
    Task(String),
}

/// The file systems detected (serialized as [`FsKind::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Ext2,
    Ext3,
    Ext4,
    Fat12,
    Fat16,
    Fat32,
    Iso9660,
    /// Recognized but not read: `xfs`, `btrfs`, `ntfs`, `swap`, `lvm`,
    /// `luks`, …
    Other(&'static str),
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Fat12 => "fat12",
            FsKind::Fat16 => "fat16",
            FsKind::Fat32 => "fat32",
            FsKind::Iso9660 => "iso9660",
            FsKind::Other(name) => name,
        }
    }

    /// Whether this module reads it.
    pub fn readable(self) -> bool {
        !matches!(self, FsKind::Other(_))
    }
}

impl serde::Serialize for FsKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A partition of a backup (or the whole disk, index 0, when it has no
/// partition table).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    /// As Linux numbers it (`sda1` is 1); 0 is the whole disk.
    pub index: u32,
    /// Bytes from the start of the disk.
    pub start: u64,
    pub size: u64,
    pub table: Table,
    /// The GPT type GUID, or the MBR type as `0x83`; empty for none.
    pub type_id: String,
    /// The GPT partition name.
    pub name: Option<String>,
    /// None when nothing was recognized.
    pub filesystem: Option<FsKind>,
    pub label: Option<String>,
    /// Why the file system could not be probed (a corrupt superblock).
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A device, fifo or socket.
    Other,
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    /// Bytes (0 for a directory).
    pub size: u64,
    /// Permission bits (`0o7777`); FAT and plain ISO 9660 have none and
    /// say 0o755/0o644 and 0o555/0o444.
    pub mode: u32,
    /// Last modification, seconds since the epoch (FAT keeps local time,
    /// taken here as UTC).
    pub mtime: Option<i64>,
    /// Where a symbolic link points.
    pub link_target: Option<String>,
}

/// Where a file's pieces go.
pub(crate) type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(), FilesError>;

/// A file system opened on a partition.
pub(crate) trait FileSystem {
    /// The entries of the directory at `path` (components; empty: the root).
    fn list(&self, path: &[String]) -> Result<Vec<Entry>, FilesError>;
    /// Hands the regular file at `path` to `sink`, piece by piece; returns
    /// its size.
    fn read(&self, path: &[String], sink: Sink<'_>) -> Result<u64, FilesError>;
}

/// `/a/b` for components `[a, b]`.
pub(crate) fn display(path: &[String]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        path.iter().map(|c| format!("/{c}")).collect()
    }
}

/// The components of an absolute path.
pub fn components(path: &str) -> Result<Vec<String>, FilesError> {
    let bad = |why| Err(FilesError::BadPath { path: path.into(), why });
    if !path.starts_with('/') {
        return bad("it must be absolute (start with /)");
    }
    if path.len() > MAX_PATH {
        return bad("it is longer than 4096 bytes");
    }
    if path.contains('\0') {
        return bad("it contains NUL");
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return bad("it contains '..'"),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// The file system `part` holds, if any.
fn probe(part: &dyn ReadAt) -> Result<Option<(FsKind, Option<String>)>, FilesError> {
    if let Some(found) = ext4::probe(part)? {
        return Ok(Some(found));
    }
    if let Some(found) = fat::probe(part)? {
        return Ok(Some(found));
    }
    if let Some(found) = iso::probe(part)? {
        return Ok(Some(found));
    }
    other(part)
}

/// File systems and volumes recognized by their magic, not read.
fn other(part: &dyn ReadAt) -> Result<Option<(FsKind, Option<String>)>, FilesError> {
    const MAGICS: [(u64, &[u8], &str); 8] = [
        (0, b"XFSB", "xfs"),
        (0x10040, b"_BHRfS_M", "btrfs"),
        (3, b"NTFS    ", "ntfs"),
        (3, b"EXFAT   ", "exfat"),
        (0, b"LUKS\xba\xbe", "luks"),
        (512, b"LABELONE", "lvm"),
        (4086, b"SWAPSPACE2", "swap"),
        (0, b"hsqs", "squashfs"),
    ];
    for (at, magic, name) in MAGICS {
        match image::read_vec(part, at, magic.len()) {
            Ok(b) if b == magic => return Ok(Some((FsKind::Other(name), None))),
            Ok(_) | Err(FilesError::OutOfBounds { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn detect(disk: &Arc<dyn ReadAt>) -> Result<Vec<Partition>, FilesError> {
    let mut out = Vec::new();
    for slot in partitions::read_table(disk.as_ref())? {
        let window = Window::new(disk.clone(), slot.start, slot.size);
        let (filesystem, label, error) = match probe(&window) {
            Ok(Some((fs, label))) => (Some(fs), label, None),
            Ok(None) => (None, None, None),
            Err(e @ FilesError::Corrupt(_)) => (None, None, Some(e.to_string())),
            Err(e) => return Err(e),
        };
        out.push(Partition {
            index: slot.index,
            start: slot.start,
            size: slot.size,
            table: slot.table,
            type_id: slot.type_id,
            name: slot.name,
            filesystem,
            label,
            error,
        });
    }
    Ok(out)
}

fn describe(p: &Partition) -> String {
    let fs = p.filesystem.map_or("no file system", FsKind::name);
    match &p.label {
        Some(l) => format!("{} ({fs}, {l:?})", p.index),
        None => format!("{} ({fs})", p.index),
    }
}

fn place(p: &Partition) -> String {
    if p.table == Table::None {
        "the disk".into()
    } else {
        format!("partition {}", p.index)
    }
}

/// The partition `want` names, or the only one with a file system.
fn choose(parts: &[Partition], want: Option<u32>) -> Result<&Partition, FilesError> {
    let list = |ps: &mut dyn Iterator<Item = &Partition>| ps.map(describe).collect::<Vec<_>>().join(", ");
    let p = match want {
        Some(index) => parts.iter().find(|p| p.index == index).ok_or_else(|| FilesError::NoSuchPartition {
            index,
            available: match list(&mut parts.iter()) {
                l if l.is_empty() => "none".into(),
                l => l,
            },
        })?,
        None => {
            let readable: Vec<&Partition> =
                parts.iter().filter(|p| p.filesystem.is_some_and(FsKind::readable)).collect();
            match readable.as_slice() {
                [one] => one,
                [] => match parts {
                    [one] => one,
                    _ => {
                        return Err(FilesError::UnknownFileSystem {
                            place: format!("no partition of the backup ({})", list(&mut parts.iter())),
                        })
                    }
                },
                many => return Err(FilesError::PartitionRequired { available: list(&mut many.iter().copied()) }),
            }
        }
    };
    match p.filesystem {
        Some(FsKind::Other(fs)) => Err(FilesError::UnsupportedFileSystem { place: place(p), fs }),
        Some(_) => Ok(p),
        None => match &p.error {
            Some(e) => Err(FilesError::Corrupt(format!("{}: {e}", place(p)))),
            None => Err(FilesError::UnknownFileSystem { place: place(p) }),
        },
    }
}

fn open(part: Arc<dyn ReadAt>, kind: FsKind) -> Result<Box<dyn FileSystem>, FilesError> {
    Ok(match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => Box::new(ext4::Ext4Fs::open(part)?),
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => Box::new(fat::FatFs::open(part)?),
        FsKind::Iso9660 => Box::new(iso::IsoFs::open(part)?),
        FsKind::Other(fs) => return Err(FilesError::UnsupportedFileSystem { place: "the partition".into(), fs }),
    })
}

/// Runs `work` on the blocking pool over the disk image of `m`.
async fn on_disk<T, F>(repo: &Repository, m: &VolumeManifest, work: F) -> Result<T, FilesError>
where
    T: Send + 'static,
    F: FnOnce(Arc<dyn ReadAt>) -> Result<T, FilesError> + Send + 'static,
{
    let image = Arc::new(BackupImage::new(repo.clone(), m)?);
    let disk: Arc<dyn ReadAt> = Arc::new(BlockingImage::new(image, tokio::runtime::Handle::current()));
    tokio::task::spawn_blocking(move || work(disk)).await.map_err(|e| FilesError::Task(e.to_string()))?
}

/// Opens the file system of partition `want` (see [`choose`]).
fn open_partition(disk: &Arc<dyn ReadAt>, want: Option<u32>) -> Result<Box<dyn FileSystem>, FilesError> {
    let parts = detect(disk)?;
    let p = choose(&parts, want)?;
    let kind = p.filesystem.ok_or_else(|| FilesError::UnknownFileSystem { place: place(p) })?;
    open(Arc::new(Window::new(disk.clone(), p.start, p.size)), kind)
}

/// The partitions of the disk image `disk`, and the file system found
/// on each (blocking: see [`partitions`]).
pub fn partitions_of(disk: &Arc<dyn ReadAt>) -> Result<Vec<Partition>, FilesError> {
    detect(disk)
}

/// The entries of the directory at `path` (blocking: see [`list`]).
pub fn list_in(disk: &Arc<dyn ReadAt>, partition: Option<u32>, path: &str) -> Result<Vec<Entry>, FilesError> {
    let path = components(path)?;
    let mut entries = open_partition(disk, partition)?.list(&path)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Hands the regular file at `path` to `sink` piece by piece (each at
/// most [`READ_BUF`] bytes); returns its size (blocking: see
/// [`read_file`]).
pub fn read_from(
    disk: &Arc<dyn ReadAt>,
    partition: Option<u32>,
    path: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), FilesError>,
) -> Result<u64, FilesError> {
    let path = components(path)?;
    let fs = open_partition(disk, partition)?;
    let mut pending: Vec<u8> = Vec::with_capacity(READ_BUF);
    let size = fs.read(&path, &mut |data: &[u8]| {
        let mut data = data;
        while !data.is_empty() {
            let n = data.len().min(READ_BUF - pending.len());
            pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if pending.len() == READ_BUF {
                sink(&pending)?;
                pending.clear();
            }
        }
        Ok(())
    })?;
    if !pending.is_empty() {
        sink(&pending)?;
    }
    Ok(size)
}

/// The partitions of backup `m`, and the file system found on each.
pub async fn partitions(repo: &Repository, m: &VolumeManifest) -> Result<Vec<Partition>, FilesError> {
    on_disk(repo, m, |disk| partitions_of(&disk)).await
}

/// The entries of the directory at `path` in partition `partition` of
/// backup `m` (None: the only partition with a file system), sorted by
/// name.
pub async fn list(
    repo: &Repository,
    m: &VolumeManifest,
    partition: Option<u32>,
    path: &str,
) -> Result<Vec<Entry>, FilesError> {
    let path = path.to_owned();
    on_disk(repo, m, move |disk| list_in(&disk, partition, &path)).await
}

/// Writes the regular file at `path` (in partition `partition`, as for
/// [`list`]) of backup `m` to `out` and flushes it; returns its size.
/// Errors about the path come before anything is written; a backup found
/// corrupt on the way (a missing chunk) fails the call after a part of
/// the file was written.
pub async fn read_file(
    repo: &Repository,
    m: &VolumeManifest,
    partition: Option<u32>,
    path: &str,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<u64, FilesError> {
    components(path)?;
    let path = path.to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIECES_IN_FLIGHT);
    let reading = on_disk(repo, m, move |disk| {
        read_from(&disk, partition, &path, &mut |piece| {
            tx.blocking_send(piece.to_vec()).map_err(|_| FilesError::Abandoned)
        })
    });
    // The receiver moves in, so a failed write drops it and the reader
    // stops at its next piece.
    let writing = async move {
        let mut rx = rx;
        let mut written = 0u64;
        while let Some(piece) = rx.recv().await {
            out.write_all(&piece).await.map_err(FilesError::Write)?;
            written += piece.len() as u64;
        }
        out.flush().await.map_err(FilesError::Write)?;
        Ok::<u64, FilesError>(written)
    };
    let (read, written) = tokio::join!(reading, writing);
    let written = written?;
    let size = read?;
    if size != written {
        return Err(FilesError::Task(format!("{written} bytes written of a file of {size}")));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(components("/").expect("root"), Vec::<String>::new());
        assert_eq!(components("//a/./b c/").expect("ok"), ["a", "b c"]);
        assert!(matches!(components("a/b"), Err(FilesError::BadPath { .. })));
        assert!(matches!(components("/a/../../etc"), Err(FilesError::BadPath { .. })));
        assert!(components("/a\0").is_err());
        assert_eq!(display(&["a".into(), "b".into()]), "/a/b");
        assert_eq!(display(&[]), "/");
    }

    fn part(index: u32, fs: Option<FsKind>) -> Partition {
        Partition {
            index,
            start: 0,
            size: 1,
            table: Table::Gpt,
            type_id: String::new(),
            name: None,
            filesystem: fs,
            label: None,
            error: None,
        }
    }

    #[test]
    fn choosing_a_partition() {
        let parts = [part(1, Some(FsKind::Fat32)), part(2, None), part(3, Some(FsKind::Ext4))];
        assert_eq!(choose(&parts, Some(3)).expect("3").index, 3);
        let e = choose(&parts, None).expect_err("two candidates").to_string();
        assert!(e.contains("1 (fat32)") && e.contains("3 (ext4)") && !e.contains("2 ("), "{e}");
        let e = choose(&parts, Some(9)).expect_err("no 9").to_string();
        assert!(e.contains("no partition 9") && e.contains("2 (no file system)"), "{e}");
        let e = choose(&parts, Some(2)).expect_err("nothing on 2").to_string();
        assert!(e.contains("partition 2") && e.contains(SUPPORTED), "{e}");
        let one = [part(1, Some(FsKind::Other("xfs"))), part(2, Some(FsKind::Ext2))];
        assert_eq!(choose(&one, None).expect("the readable one").index, 2);
        let e = choose(&one, Some(1)).expect_err("xfs").to_string();
        assert!(e.contains("xfs"), "{e}");
    }
}
