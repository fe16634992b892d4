//! ISO 9660 (levels 1–3, multi-extent files), with Rock Ridge names,
//! modes, times and symbolic links when the image has them, else Joliet
//! names when it has those, else the plain names without their `;1`.
//!
//! Directories are read one 2 KiB sector at a time, at most
//! [`MAX_DIR_BYTES`] of one; Rock Ridge continuation areas are followed
//! at most [`MAX_CONTINUATIONS`] times per entry. Paths are looked up
//! from the root one component at a time, so a directory that names an
//! ancestor cannot make anything loop. Not read: interleaved files, Rock
//! Ridge's relocated deep directories (shown as they are stored), El
//! Torito boot images as files.

use std::sync::Arc;

use super::image::{read_vec, ReadAt};
use super::partitions::le32;
use super::{display, Entry, EntryKind, FileSystem, FilesError, FsKind, Sink, READ_BUF};

const SECTOR: u64 = 2048;
const FIRST_DESCRIPTOR: u64 = 16;
const MAX_DESCRIPTORS: u64 = 64;
const MAX_DIR_BYTES: u64 = 16 << 20;
const MAX_CONTINUATIONS: usize = 8;

const FLAG_DIR: u8 = 0x02;
const FLAG_MULTI_EXTENT: u8 = 0x80;

/// The volume descriptors that matter.
struct Descriptors {
    primary: Vec<u8>,
    joliet: Option<Vec<u8>>,
}

fn descriptors(part: &dyn ReadAt) -> Result<Option<Descriptors>, FilesError> {
    let mut primary = None;
    let mut joliet = None;
    for n in FIRST_DESCRIPTOR..FIRST_DESCRIPTOR + MAX_DESCRIPTORS {
        let d = match read_vec(part, n * SECTOR, SECTOR as usize) {
            Ok(d) => d,
            Err(FilesError::OutOfBounds { .. }) => break,
            Err(e) => return Err(e),
        };
        if &d[1..6] != b"CD001" {
            break;
        }
        match d[0] {
            1 if primary.is_none() => primary = Some(d),
            2 if matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => joliet = Some(d),
            255 => break,
            _ => {}
        }
    }
    Ok(primary.map(|primary| Descriptors { primary, joliet }))
}

/// Whether `part` is an ISO 9660 image, and its volume id.
pub fn probe(part: &dyn ReadAt) -> Result<Option<(FsKind, Option<String>)>, FilesError> {
    Ok(descriptors(part)?.map(|d| {
        let label = String::from_utf8_lossy(&d.primary[40..72]).trim_end().to_string();
        (FsKind::Iso9660, (!label.is_empty()).then_some(label))
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Names {
    RockRidge { skip: usize },
    Joliet,
    Plain,
}

pub struct IsoFs {
    part: Arc<dyn ReadAt>,
    block: u64,
    root: Rec,
    names: Names,
}

/// One directory record (several, for a multi-extent file).
#[derive(Clone, Debug)]
struct Rec {
    name: String,
    flags: u8,
    interleaved: bool,
    /// `(byte offset, length)`.
    extents: Vec<(u64, u64)>,
    mtime: Option<i64>,
    mode: Option<u32>,
    link: Option<String>,
    relocated: bool,
}

impl Rec {
    fn size(&self) -> u64 {
        self.extents.iter().map(|e| e.1).sum()
    }

    fn kind(&self) -> EntryKind {
        match self.mode.map(|m| m & 0o170000) {
            Some(0o120000) => EntryKind::Symlink,
            Some(0o040000) => EntryKind::Dir,
            Some(0o100000) => EntryKind::File,
            Some(_) => EntryKind::Other,
            None if self.flags & FLAG_DIR != 0 => EntryKind::Dir,
            None => EntryKind::File,
        }
    }
}

/// An ECMA-119 7-byte date, as seconds since the epoch.
fn date7(b: &[u8]) -> Option<i64> {
    let d = chrono::NaiveDate::from_ymd_opt(1900 + i32::from(b[0]), u32::from(b[1]), u32::from(b[2]))?;
    let t = d.and_hms_opt(u32::from(b[3]), u32::from(b[4]), u32::from(b[5]))?;
    Some(t.and_utc().timestamp() - i64::from(b[6] as i8) * 15 * 60)
}

/// A 17-byte date ("YYYYMMDDHHMMSScc" and a zone).
fn date17(b: &[u8]) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| std::str::from_utf8(&b[r]).ok()?.parse::<u32>().ok();
    let d = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(4..6)?, num(6..8)?)?;
    let t = d.and_hms_opt(num(8..10)?, num(10..12)?, num(12..14)?)?;
    Some(t.and_utc().timestamp() - i64::from(b[16] as i8) * 15 * 60)
}

impl IsoFs {
    pub fn open(part: Arc<dyn ReadAt>) -> Result<IsoFs, FilesError> {
        let d =
            descriptors(part.as_ref())?.ok_or_else(|| FilesError::Corrupt("no ISO 9660 volume descriptor".into()))?;
        let block = u64::from(u16::from_le_bytes([d.primary[128], d.primary[129]]));
        if !matches!(block, 512 | 1024 | 2048) {
            return Err(FilesError::Corrupt(format!("ISO 9660: logical block size {block}")));
        }
        let mut fs = IsoFs { part, block, root: placeholder(), names: Names::Plain };
        let root =
            fs.record(&d.primary[156..190])?.ok_or_else(|| FilesError::Corrupt("ISO 9660: bad root record".into()))?;
        fs.root = root;
        // Rock Ridge announces itself with SUSP's "SP" in the root's "."
        // record.
        if let Some(skip) = fs.sp_skip()? {
            fs.names = Names::RockRidge { skip };
        } else if let Some(j) = &d.joliet {
            fs.names = Names::Joliet;
            fs.root =
                fs.record(&j[156..190])?.ok_or_else(|| FilesError::Corrupt("ISO 9660: bad Joliet root".into()))?;
        }
        Ok(fs)
    }

    fn sp_skip(&self) -> Result<Option<usize>, FilesError> {
        let Some(&(at, len)) = self.root.extents.first() else { return Ok(None) };
        if len < 34 {
            return Ok(None);
        }
        let first = read_vec(self.part.as_ref(), at, SECTOR.min(len) as usize)?;
        let rl = usize::from(first[0]);
        if rl < 34 || rl > first.len() || first[32] != 1 {
            return Ok(None);
        }
        let su = &first[34..rl];
        Ok((su.len() >= 7 && &su[..2] == b"SP" && su[4] == 0xBE && su[5] == 0xEF).then(|| usize::from(su[6])))
    }

    /// A directory record; None for one that cannot be used.
    fn record(&self, r: &[u8]) -> Result<Option<Rec>, FilesError> {
        let rl = usize::from(r[0]);
        let name_len = usize::from(r[32]);
        if rl < 34 || rl > r.len() || 33 + name_len > rl {
            return Ok(None);
        }
        let raw = &r[33..33 + name_len];
        let lba = u64::from(le32(r, 2)) + u64::from(r[1]);
        let len = u64::from(le32(r, 10));
        let Some(at) = lba.checked_mul(self.block) else { return Ok(None) };
        let mut rec = Rec {
            name: match raw {
                [0] => ".".into(),
                [1] => "..".into(),
                _ => match self.names {
                    Names::Joliet => {
                        let units: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                        strip_version(&String::from_utf16_lossy(&units))
                    }
                    _ => strip_version(&String::from_utf8_lossy(raw)),
                },
            },
            flags: r[25],
            interleaved: r[26] != 0 || r[27] != 0,
            extents: vec![(at, len)],
            mtime: date7(&r[18..25]),
            mode: None,
            link: None,
            relocated: false,
        };
        if let Names::RockRidge { skip } = self.names {
            let su_start = 33 + name_len + usize::from(name_len % 2 == 0) + skip;
            if su_start < rl {
                self.rock_ridge(&r[su_start..rl], &mut rec)?;
            }
        }
        Ok(Some(rec))
    }

    /// Reads the Rock Ridge entries of a record's system use area (and
    /// its continuation areas) into `rec`.
    fn rock_ridge(&self, first: &[u8], rec: &mut Rec) -> Result<(), FilesError> {
        let mut area = first.to_vec();
        let mut name = String::new();
        let mut has_name = false;
        let mut link: Vec<String> = Vec::new();
        let mut link_open = false;
        for _ in 0..=MAX_CONTINUATIONS {
            let mut next = None;
            let mut pos = 0;
            while pos + 4 <= area.len() {
                let len = usize::from(area[pos + 2]);
                if len < 4 || pos + len > area.len() {
                    break;
                }
                let data = &area[pos + 4..pos + len];
                match &area[pos..pos + 2] {
                    b"NM" if !data.is_empty() && data[0] & 0x06 == 0 => {
                        name.push_str(&String::from_utf8_lossy(&data[1..]));
                        has_name = true;
                    }
                    b"PX" if data.len() >= 4 => rec.mode = Some(le32(data, 0)),
                    b"TF" if !data.is_empty() => {
                        let size = if data[0] & 0x80 != 0 { 17 } else { 7 };
                        let mut at = 1;
                        for bit in [1u8, 2, 4, 8, 16, 32, 64] {
                            if data[0] & bit == 0 {
                                continue;
                            }
                            if bit == 2 && at + size <= data.len() {
                                let t = &data[at..at + size];
                                rec.mtime = if size == 7 { date7(t) } else { date17(t) };
                            }
                            at += size;
                        }
                    }
                    b"SL" if !data.is_empty() => {
                        let mut c = 1;
                        while c + 2 <= data.len() {
                            let (flags, clen) = (data[c], usize::from(data[c + 1]));
                            let Some(content) = data.get(c + 2..c + 2 + clen) else { break };
                            let part = match flags & 0x0E {
                                0x02 => ".".to_string(),
                                0x04 => "..".to_string(),
                                0x08 => String::new(),
                                _ => String::from_utf8_lossy(content).into_owned(),
                            };
                            match link.last_mut() {
                                Some(last) if link_open => last.push_str(&part),
                                _ => link.push(part),
                            }
                            link_open = flags & 0x01 != 0;
                            c += 2 + clen;
                        }
                    }
                    b"RE" => rec.relocated = true,
                    b"CE" if data.len() >= 24 => {
                        let at = u64::from(le32(data, 0)).checked_mul(self.block).map(|b| b + u64::from(le32(data, 8)));
                        next = at.map(|at| (at, u64::from(le32(data, 16)).min(SECTOR)));
                    }
                    b"ST" => break,
                    _ => {}
                }
                pos += len;
            }
            match next {
                Some((at, len)) => area = read_vec(self.part.as_ref(), at, len as usize)?,
                None => break,
            }
        }
        if has_name && !name.is_empty() && !name.contains('/') {
            rec.name = name;
        }
        if !link.is_empty() {
            let joined = link.join("/");
            rec.link = Some(if joined.is_empty() { "/".into() } else { joined });
        }
        Ok(())
    }

    /// The entries of directory `dir`, without "." and "..".
    fn read_dir(&self, dir: &Rec) -> Result<Vec<Rec>, FilesError> {
        let &(at, len) =
            dir.extents.first().ok_or_else(|| FilesError::Corrupt("ISO 9660: a directory without data".into()))?;
        if len > MAX_DIR_BYTES {
            return Err(FilesError::Corrupt(format!("ISO 9660: a directory of {len} bytes")));
        }
        let mut out: Vec<Rec> = Vec::new();
        let mut continues = false;
        for s in 0..len.div_ceil(SECTOR) {
            let n = SECTOR.min(len - s * SECTOR) as usize;
            let sector = read_vec(self.part.as_ref(), at + s * SECTOR, n)?;
            let mut pos = 0;
            while pos < sector.len() {
                let rl = usize::from(sector[pos]);
                if rl == 0 {
                    break;
                }
                if rl < 34 || pos + rl > sector.len() {
                    return Err(FilesError::Corrupt("ISO 9660: a directory record crosses its sector".into()));
                }
                if let Some(rec) = self.record(&sector[pos..pos + rl])? {
                    let merge = continues && out.last().is_some_and(|l| l.name == rec.name);
                    continues = rec.flags & FLAG_MULTI_EXTENT != 0;
                    if merge {
                        if let Some(last) = out.last_mut() {
                            last.extents.extend(rec.extents);
                            last.flags = rec.flags;
                        }
                    } else if rec.name != "." && rec.name != ".." && !rec.relocated {
                        out.push(rec);
                    }
                }
                pos += rl;
            }
        }
        Ok(out)
    }

    fn same(&self, a: &str, b: &str) -> bool {
        match self.names {
            Names::Plain => a.eq_ignore_ascii_case(b),
            _ => a == b,
        }
    }

    fn find(&self, path: &[String]) -> Result<Rec, FilesError> {
        let mut here = self.root.clone();
        for (i, want) in path.iter().enumerate() {
            if here.kind() != EntryKind::Dir {
                return Err(FilesError::NotADirectory(display(&path[..i])));
            }
            here = self
                .read_dir(&here)?
                .into_iter()
                .find(|r| self.same(&r.name, want))
                .ok_or_else(|| FilesError::NotFound(display(&path[..=i])))?;
        }
        Ok(here)
    }
}

fn placeholder() -> Rec {
    Rec {
        name: String::new(),
        flags: FLAG_DIR,
        interleaved: false,
        extents: Vec::new(),
        mtime: None,
        mode: None,
        link: None,
        relocated: false,
    }
}

/// `NAME.EXT;1` → `NAME.EXT`, `NAME.;1` → `NAME`.
fn strip_version(name: &str) -> String {
    let base = match name.rfind(';') {
        Some(at) if name[at + 1..].bytes().all(|b| b.is_ascii_digit()) => &name[..at],
        _ => name,
    };
    let base = base.strip_suffix('.').unwrap_or(base);
    base.to_string()
}

impl FileSystem for IsoFs {
    fn list(&self, path: &[String]) -> Result<Vec<Entry>, FilesError> {
        let dir = self.find(path)?;
        if dir.kind() != EntryKind::Dir {
            return Err(FilesError::NotADirectory(display(path)));
        }
        Ok(self
            .read_dir(&dir)?
            .into_iter()
            .map(|r| {
                let kind = r.kind();
                let default_mode = if kind == EntryKind::Dir { 0o555 } else { 0o444 };
                Entry {
                    size: if kind == EntryKind::Dir { 0 } else { r.size() },
                    mode: r.mode.map_or(default_mode, |m| m & 0o7777),
                    mtime: r.mtime,
                    link_target: r.link.clone(),
                    kind,
                    name: r.name,
                }
            })
            .collect())
    }

    fn read(&self, path: &[String], sink: Sink<'_>) -> Result<u64, FilesError> {
        let f = self.find(path)?;
        let shown = display(path);
        match f.kind() {
            EntryKind::File => {}
            EntryKind::Dir => return Err(FilesError::NotAFile { path: shown, kind: "a directory" }),
            EntryKind::Symlink => return Err(FilesError::NotAFile { path: shown, kind: "a symbolic link" }),
            EntryKind::Other => return Err(FilesError::NotAFile { path: shown, kind: "a special file" }),
        }
        if f.interleaved {
            return Err(FilesError::Feature(format!("{shown} is an interleaved ISO 9660 file")));
        }
        let mut buf = vec![0u8; READ_BUF];
        let mut total = 0;
        for &(at, len) in &f.extents {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(READ_BUF as u64) as usize;
                self.part.read_at(at + done, &mut buf[..n])?;
                sink(&buf[..n])?;
                done += n as u64;
            }
            total += len;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stripped() {
        assert_eq!(strip_version("README.TXT;1"), "README.TXT");
        assert_eq!(strip_version("NOEXT.;1"), "NOEXT");
        assert_eq!(strip_version("A;B"), "A;B");
        assert_eq!(strip_version("DIR"), "DIR");
    }

    #[test]
    fn dates() {
        assert_eq!(date7(&[70, 1, 1, 0, 0, 0, 0]), Some(0));
        assert_eq!(date7(&[70, 1, 1, 1, 0, 0, 4]), Some(0), "an hour east of UTC");
        assert_eq!(date7(&[0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(date17(b"1970010100010000\0"), Some(60));
    }
}
