//! FAT12, FAT16 and FAT32, read-only, with long file names (VFAT).
//!
//! A FAT file system has no magic number: [`probe`] accepts a boot
//! sector only when every field of its BIOS parameter block is in range
//! and the layout it describes fits the partition. The type follows from
//! the number of clusters, as Microsoft's specification says. Cluster
//! chains are followed at most as many steps as there are clusters, and
//! a directory is read up to 2 MiB (65,536 entries, the format's limit),
//! so a corrupt chain or a loop is an error, not a hang.

use std::sync::Arc;

use super::image::{read_vec, ReadAt};
use super::partitions::le32;
use super::{display, Entry, EntryKind, FileSystem, FilesError, FsKind, Sink};

/// The largest directory the format allows.
const MAX_DIR_BYTES: u64 = 65536 * 32;

#[derive(Debug)]
struct Layout {
    kind: FsKind,
    cluster_bytes: u64,
    fat_start: u64,
    data_start: u64,
    /// Data clusters: numbered 2 ..= clusters + 1.
    clusters: u32,
    root: Root,
    label: Option<String>,
}

#[derive(Debug)]
enum Root {
    /// FAT12/16: a fixed region of `bytes` at `start`.
    Fixed { start: u64, bytes: u64 },
    /// FAT32: a cluster chain.
    Chain(u32),
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The layout the boot sector describes, None if it is not a FAT boot
/// sector (or describes something that cannot be).
fn layout(part: &dyn ReadAt) -> Result<Option<Layout>, FilesError> {
    let b = match read_vec(part, 0, 512) {
        Ok(b) => b,
        Err(FilesError::OutOfBounds { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !(b[0] == 0xEB || b[0] == 0xE9) {
        return Ok(None);
    }
    let bps = u64::from(le16(&b, 11));
    let spc = u64::from(b[13]);
    let reserved = u64::from(le16(&b, 14));
    let fats = u64::from(b[16]);
    let root_entries = u64::from(le16(&b, 17));
    let total = match le16(&b, 19) {
        0 => u64::from(le32(&b, 32)),
        n => u64::from(n),
    };
    let media = b[21];
    let fat16_size = u64::from(le16(&b, 22));
    let fat_size = if fat16_size != 0 { fat16_size } else { u64::from(le32(&b, 36)) };
    let sane = matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && spc <= 128
        && reserved >= 1
        && (1..=4).contains(&fats)
        && (media == 0xF0 || media >= 0xF8)
        && total > 0
        && fat_size > 0
        && total * bps <= part.size();
    if !sane {
        return Ok(None);
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let first_data = reserved + fats * fat_size + root_sectors;
    if first_data >= total {
        return Ok(None);
    }
    let clusters = (total - first_data) / spc;
    let (kind, bits) = match clusters {
        0 => return Ok(None),
        1..4085 => (FsKind::Fat12, 12),
        4085..65525 => (FsKind::Fat16, 16),
        _ => (FsKind::Fat32, 32),
    };
    if clusters > 0x0FFF_FFF5 || fat_size * bps * 8 < (clusters + 2) * bits {
        return Ok(None);
    }
    let (root, label_at) = if kind == FsKind::Fat32 {
        if root_entries != 0 || fat16_size != 0 {
            return Ok(None);
        }
        (Root::Chain(le32(&b, 44)), (b[66] == 0x29).then_some(71))
    } else {
        if root_entries == 0 {
            return Ok(None);
        }
        let start = (reserved + fats * fat_size) * bps;
        (Root::Fixed { start, bytes: root_entries * 32 }, (b[38] == 0x29).then_some(43))
    };
    let label = label_at
        .map(|at| String::from_utf8_lossy(&b[at..at + 11]).trim_end().to_string())
        .filter(|l| !l.is_empty() && l != "NO NAME");
    Ok(Some(Layout {
        kind,
        cluster_bytes: spc * bps,
        fat_start: reserved * bps,
        data_start: first_data * bps,
        clusters: clusters as u32,
        root,
        label,
    }))
}

/// Which FAT `part` holds, and its label; None if it holds none.
pub fn probe(part: &dyn ReadAt) -> Result<Option<(FsKind, Option<String>)>, FilesError> {
    Ok(layout(part)?.map(|l| (l.kind, l.label)))
}

pub struct FatFs {
    part: Arc<dyn ReadAt>,
    layout: Layout,
}

/// One entry of a directory, as read.
struct Raw {
    name: String,
    short: String,
    attr: u8,
    cluster: u32,
    size: u32,
    mtime: Option<i64>,
}

const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0F;

impl FatFs {
    pub fn open(part: Arc<dyn ReadAt>) -> Result<FatFs, FilesError> {
        let layout = layout(part.as_ref())?.ok_or_else(|| FilesError::Corrupt("no FAT boot sector".into()))?;
        Ok(FatFs { part, layout })
    }

    fn valid(&self, cluster: u32) -> bool {
        (2..self.layout.clusters.saturating_add(2)).contains(&cluster)
    }

    /// The cluster after `cluster` in its chain, None at the end.
    fn next(&self, cluster: u32) -> Result<Option<u32>, FilesError> {
        let n = u64::from(cluster);
        let (value, end) = match self.layout.kind {
            FsKind::Fat12 => {
                let mut b = [0u8; 2];
                self.part.read_at(self.layout.fat_start + n + n / 2, &mut b)?;
                let v = u16::from_le_bytes(b);
                (u32::from(if n % 2 == 1 { v >> 4 } else { v & 0xFFF }), 0xFF8)
            }
            FsKind::Fat16 => {
                let mut b = [0u8; 2];
                self.part.read_at(self.layout.fat_start + 2 * n, &mut b)?;
                (u32::from(u16::from_le_bytes(b)), 0xFFF8)
            }
            _ => {
                let mut b = [0u8; 4];
                self.part.read_at(self.layout.fat_start + 4 * n, &mut b)?;
                (u32::from_le_bytes(b) & 0x0FFF_FFFF, 0x0FFF_FFF8)
            }
        };
        if value >= end {
            return Ok(None);
        }
        if !self.valid(value) {
            return Err(FilesError::Corrupt(format!("FAT: cluster {cluster} is followed by {value:#x}")));
        }
        Ok(Some(value))
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.layout.data_start + u64::from(cluster - 2) * self.layout.cluster_bytes
    }

    /// Calls `each` with the data of the chain from `first`, `len` bytes
    /// at most (all of the chain, bounded by the cluster count, if None).
    fn walk(
        &self,
        first: u32,
        len: Option<u64>,
        each: &mut dyn FnMut(&[u8]) -> Result<(), FilesError>,
    ) -> Result<u64, FilesError> {
        let mut left = len.unwrap_or(u64::MAX);
        let mut cluster = Some(first);
        let mut steps = 0u32;
        let mut buf = vec![0u8; self.layout.cluster_bytes as usize];
        let mut done = 0;
        while left > 0 {
            let Some(c) = cluster else {
                if len.is_some() {
                    return Err(FilesError::Corrupt(format!("FAT: a chain ends {left} bytes before its file does")));
                }
                break;
            };
            if !self.valid(c) {
                return Err(FilesError::Corrupt(format!("FAT: cluster {c:#x} is not a data cluster")));
            }
            steps += 1;
            if steps > self.layout.clusters {
                return Err(FilesError::Corrupt("FAT: a cluster chain loops".into()));
            }
            let n = left.min(self.layout.cluster_bytes) as usize;
            self.part.read_at(self.cluster_offset(c), &mut buf[..n])?;
            each(&buf[..n])?;
            done += n as u64;
            left -= n as u64;
            cluster = self.next(c)?;
        }
        Ok(done)
    }

    /// The entries of the directory at `cluster` (None: the root).
    fn read_dir(&self, cluster: Option<u32>) -> Result<Vec<Raw>, FilesError> {
        let mut bytes = Vec::new();
        let mut collect = |d: &[u8]| {
            if (bytes.len() + d.len()) as u64 > MAX_DIR_BYTES {
                return Err(FilesError::Corrupt("FAT: a directory is larger than 2 MiB (a loop?)".into()));
            }
            bytes.extend_from_slice(d);
            Ok(())
        };
        match (cluster, &self.layout.root) {
            (None, Root::Fixed { start, bytes: len }) => {
                collect(&read_vec(self.part.as_ref(), *start, *len as usize)?)?
            }
            (None, Root::Chain(c)) => {
                self.walk(*c, None, &mut collect)?;
            }
            (Some(c), _) => {
                self.walk(c, None, &mut collect)?;
            }
        }
        Ok(parse_dir(&bytes, self.layout.kind == FsKind::Fat32))
    }

    /// The entry at `path`, None for the root.
    fn find(&self, path: &[String]) -> Result<Option<Raw>, FilesError> {
        let mut here: Option<Raw> = None;
        for (i, want) in path.iter().enumerate() {
            if let Some(d) = &here {
                if d.attr & ATTR_DIR == 0 {
                    return Err(FilesError::NotADirectory(display(&path[..i])));
                }
            }
            let dir = match &here {
                None => None,
                Some(d) => Some(self.dir_cluster(d, &path[..i])?),
            };
            let want = want.to_lowercase();
            let found = self
                .read_dir(dir)?
                .into_iter()
                .find(|e| e.name.to_lowercase() == want || e.short.to_lowercase() == want);
            here = Some(found.ok_or_else(|| FilesError::NotFound(display(&path[..=i])))?);
        }
        Ok(here)
    }

    fn dir_cluster(&self, d: &Raw, path: &[String]) -> Result<u32, FilesError> {
        if !self.valid(d.cluster) {
            return Err(FilesError::Corrupt(format!(
                "FAT: directory {} starts at cluster {:#x}",
                display(path),
                d.cluster
            )));
        }
        Ok(d.cluster)
    }
}

impl FileSystem for FatFs {
    fn list(&self, path: &[String]) -> Result<Vec<Entry>, FilesError> {
        let dir = match self.find(path)? {
            None => None,
            Some(d) if d.attr & ATTR_DIR != 0 => Some(self.dir_cluster(&d, path)?),
            Some(_) => return Err(FilesError::NotADirectory(display(path))),
        };
        Ok(self
            .read_dir(dir)?
            .into_iter()
            .map(|e| {
                let dir = e.attr & ATTR_DIR != 0;
                let mut mode = if dir { 0o755 } else { 0o644 };
                if e.attr & ATTR_READ_ONLY != 0 {
                    mode &= 0o555;
                }
                Entry {
                    name: e.name,
                    kind: if dir { EntryKind::Dir } else { EntryKind::File },
                    size: if dir { 0 } else { u64::from(e.size) },
                    mode,
                    mtime: e.mtime,
                    link_target: None,
                }
            })
            .collect())
    }

    fn read(&self, path: &[String], sink: Sink<'_>) -> Result<u64, FilesError> {
        let Some(e) = self.find(path)? else {
            return Err(FilesError::NotAFile { path: "/".into(), kind: "a directory" });
        };
        if e.attr & ATTR_DIR != 0 {
            return Err(FilesError::NotAFile { path: display(path), kind: "a directory" });
        }
        if e.size == 0 {
            return Ok(0);
        }
        self.walk(e.cluster, Some(u64::from(e.size)), sink)
    }
}

/// The checksum of a short name that its long-name entries carry.
fn lfn_checksum(short: &[u8]) -> u8 {
    short.iter().fold(0u8, |sum, &c| (sum >> 1).wrapping_add(sum << 7).wrapping_add(c))
}

/// The short name, with the case flags Windows NT (and Linux) set.
fn short_name(e: &[u8]) -> String {
    let text = |bytes: &[u8], lower: bool| -> String {
        let s: String = bytes.iter().map(|&b| char::from(b)).collect::<String>().trim_end().to_string();
        if lower {
            s.to_lowercase()
        } else {
            s
        }
    };
    let mut base = e[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let base = text(&base, e[12] & 0x08 != 0);
    let ext = text(&e[8..11], e[12] & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// FAT's local date and time as seconds since the epoch (taken as UTC).
fn fat_time(date: u16, time: u16) -> Option<i64> {
    let d = chrono::NaiveDate::from_ymd_opt(
        1980 + i32::from(date >> 9),
        u32::from((date >> 5) & 0xF),
        u32::from(date & 0x1F),
    )?;
    let t = d.and_hms_opt(u32::from(time >> 11), u32::from((time >> 5) & 0x3F), u32::from(time & 0x1F) * 2)?;
    Some(t.and_utc().timestamp())
}

fn parse_dir(bytes: &[u8], fat32: bool) -> Vec<Raw> {
    let mut out = Vec::new();
    // Long-name pieces seen so far: (order, 13 UTF-16 units), and the
    // checksum they carry.
    let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
    let mut lfn_sum = 0u8;
    for e in bytes.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xE5 => {
                lfn.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == ATTR_LFN {
            if e[0] & 0x40 != 0 {
                lfn.clear();
                lfn_sum = e[13];
            }
            let mut units = [0u16; 13];
            for (i, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].into_iter().enumerate() {
                units[i] = le16(e, at);
            }
            lfn.push((e[0] & 0x1F, units));
            continue;
        }
        let pieces = std::mem::take(&mut lfn);
        if attr & ATTR_VOLUME != 0 {
            continue;
        }
        let short = short_name(e);
        if short == "." || short == ".." {
            continue;
        }
        let long = long_name(pieces, lfn_sum, &e[..11]);
        let hi = if fat32 { u32::from(le16(e, 20)) << 16 } else { 0 };
        out.push(Raw {
            name: long.unwrap_or_else(|| short.clone()),
            short,
            attr,
            cluster: hi | u32::from(le16(e, 26)),
            size: le32(e, 28),
            mtime: fat_time(le16(e, 24), le16(e, 22)),
        });
    }
    out
}

/// The long name the pieces spell, if they are whole and belong to the
/// short entry `short`.
fn long_name(mut pieces: Vec<(u8, [u16; 13])>, sum: u8, short: &[u8]) -> Option<String> {
    if pieces.is_empty() || sum != lfn_checksum(short) {
        return None;
    }
    pieces.sort_by_key(|p| p.0);
    if pieces.iter().enumerate().any(|(i, p)| usize::from(p.0) != i + 1) {
        return None;
    }
    let units: Vec<u16> = pieces.iter().flat_map(|p| p.1).take_while(|u| *u != 0 && *u != 0xFFFF).collect();
    let name = String::from_utf16_lossy(&units);
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lfn_checksum_matches_the_specification() {
        // "FOO     BAR" → as computed by the reference loop.
        let mut sum = 0u8;
        for &c in b"FOO     BAR" {
            sum = (if sum & 1 != 0 { 0x80u8 } else { 0 }).wrapping_add(sum >> 1).wrapping_add(c);
        }
        assert_eq!(lfn_checksum(b"FOO     BAR"), sum);
    }

    #[test]
    fn short_names_and_case_flags() {
        let mut e = [0x20u8; 32];
        e[..8].copy_from_slice(b"README  ");
        e[8..11].copy_from_slice(b"TXT");
        e[12] = 0;
        assert_eq!(short_name(&e), "README.TXT");
        e[12] = 0x08 | 0x10;
        assert_eq!(short_name(&e), "readme.txt");
        assert_eq!(fat_time(0, 0), None, "month 0 is no date");
        assert_eq!(fat_time((45 << 9) | (1 << 5) | 2, 0), Some(1_735_776_000));
    }

    #[test]
    fn random_boot_sectors_are_not_fat_and_nothing_panics() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut d = vec![0u8; 64 * 1024];
            for b in d.iter_mut().take(512) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            d[0] = 0xEB;
            d[21] = 0xF8;
            let disk: Arc<dyn ReadAt> = Arc::new(d);
            if let Ok(fs) = FatFs::open(disk) {
                let _ = fs.list(&[]);
            }
        }
    }
}
