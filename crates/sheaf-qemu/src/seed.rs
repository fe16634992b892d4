//! Cloud-init seed images: Sheaf's own ISO 9660 writer and the NoCloud and
//! ConfigDrive layouts KubeVirt puts on them.
//!
//! # The image
//!
//! [`IsoBuilder`] writes an ISO 9660 image with 2048-byte sectors:
//!
//! | sector   | content                                                    |
//! |----------|------------------------------------------------------------|
//! | 0–15     | system area (zeros)                                        |
//! | 16       | primary volume descriptor                                  |
//! | 17       | Joliet supplementary volume descriptor (UCS-2 level 3)     |
//! | 18       | volume descriptor set terminator                           |
//! | 19…      | path tables: primary L, primary M, Joliet L, Joliet M      |
//! | …        | primary directories, then Joliet directories               |
//! | …        | file data (shared by both trees), then 150 sectors padding |
//!
//! The primary tree uses ISO level 1 names (`USER_DAT.;1`: 8.3, uppercase
//! d-characters, deduplicated per directory); the Joliet tree carries the
//! original names (up to 64 UCS-2 characters), which is what Linux, `blkid`
//! and cloud-init see. The volume id is written verbatim into both
//! descriptors (the Joliet one holds its first 16 characters), the way
//! `genisoimage -volid cidata -joliet` and `xorrisofs` do: the tiny test
//! guest and cloud-init read the label `cidata` from the primary volume
//! descriptor (byte offset 32808). All timestamps are one value given to the
//! builder (the Unix epoch by default), so the output is reproducible.
//!
//! # The content
//!
//! Like KubeVirt (`pkg/cloud-init`): a NoCloud seed is labelled `cidata` and
//! holds `user-data` (always, possibly empty), `meta-data` and, when there is
//! network data, `network-config` (plus `vendor-data` when given). A
//! ConfigDrive seed is labelled `config-2` and holds
//! `openstack/latest/{meta_data.json,user_data}` and, when there is network
//! data, `openstack/latest/network_data.json`. Either needs user data or
//! network data. KubeVirt writes NoCloud meta-data as JSON; Sheaf writes the
//! same keys as block YAML (`local-hostname: tiny1`), which cloud-init
//! reads identically and simple line-based readers can grep.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use serde::Serialize;

/// The ISO 9660 logical sector (and block) size.
pub const SECTOR_SIZE: usize = 2048;
/// The default limit on the size of a seed image.
pub const DEFAULT_MAX_SIZE: u64 = 16 * 1024 * 1024;
/// The filesystem label of a NoCloud seed.
pub const NOCLOUD_LABEL: &str = "cidata";
/// The filesystem label of a ConfigDrive seed.
pub const CONFIGDRIVE_LABEL: &str = "config-2";

/// Sectors of zeros after the data, as `genisoimage`/`xorrisofs` pad by
/// default (keeps CD-ROM read-ahead of the last file inside the volume).
const PAD_SECTORS: u32 = 150;
/// The first sector after the volume descriptors (16 PVD, 17 SVD, 18 end).
const FIRST_FREE_SECTOR: u32 = 19;
/// Directory levels including the root (ECMA-119 6.8.2.1).
const MAX_DIR_LEVELS: usize = 8;
/// Joliet names are at most 64 UCS-2 characters.
const MAX_JOLIET_NAME: usize = 64;

const SECTOR: u32 = SECTOR_SIZE as u32;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("invalid volume id {0:?}: need 1 to 32 printable ASCII characters")]
    InvalidVolumeId(String),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("duplicate path {0:?} (as a file or directory)")]
    DuplicatePath(String),
    #[error("too many directories ({0}; the path tables hold at most 65535)")]
    TooManyDirectories(usize),
    #[error("seed image would be {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("cloud-init data source needs user data or network data")]
    NoData,
    #[error("cloud-init meta-data needs an instance id")]
    NoInstanceId,
    #[error("meta-data: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing the seed image: {0}")]
    Io(#[from] std::io::Error),
}

// ---------------------------------------------------------------------------
// ISO 9660 writer
// ---------------------------------------------------------------------------

/// Builds an ISO 9660 image with a Joliet tree.
///
/// ```
/// use sheaf_qemu::seed::IsoBuilder;
/// let iso = IsoBuilder::new("cidata")
///     .file("user-data", "#cloud-config\n")
///     .file("meta-data", "instance-id: i-1\n")
///     .build()
///     .unwrap();
/// assert_eq!(&iso[32808..32814], b"cidata");
/// ```
#[derive(Clone, Debug)]
pub struct IsoBuilder {
    volume_id: String,
    timestamp: i64,
    max_size: u64,
    padding: bool,
    files: Vec<(String, Vec<u8>)>,
}

impl IsoBuilder {
    /// A builder for a volume labelled `volume_id` (1–32 printable ASCII
    /// characters, written verbatim; Joliet holds the first 16).
    pub fn new(volume_id: &str) -> Self {
        IsoBuilder {
            volume_id: volume_id.to_string(),
            timestamp: 0,
            max_size: DEFAULT_MAX_SIZE,
            padding: true,
            files: Vec::new(),
        }
    }

    /// The time (seconds since the Unix epoch, UTC) of every date in the
    /// image; the epoch by default. Clamped to 1900–2155.
    pub fn timestamp(mut self, unix_secs: i64) -> Self {
        self.timestamp = unix_secs;
        self
    }

    /// The largest image [`build`](Self::build) produces (bytes, padding
    /// included); [`DEFAULT_MAX_SIZE`] by default.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// Whether to append 150 sectors of zeros (on by default).
    pub fn padding(mut self, on: bool) -> Self {
        self.padding = on;
        self
    }

    /// Adds a file; `path` is relative (`openstack/latest/user_data`), its
    /// directories are created implicitly.
    pub fn file(mut self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.add_file(path, data);
        self
    }

    /// Adds a file, like [`file`](Self::file).
    pub fn add_file(&mut self, path: &str, data: impl Into<Vec<u8>>) -> &mut Self {
        self.files.push((path.to_string(), data.into()));
        self
    }

    /// The image size in bytes, after validating the volume id and paths.
    pub fn image_size(&self) -> Result<u64, SeedError> {
        Ok(u64::from(self.layout()?.total_sectors) * u64::from(SECTOR))
    }

    /// Writes the image to `w`; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<u64, SeedError> {
        let image = self.build()?;
        w.write_all(&image)?;
        Ok(image.len() as u64)
    }

    /// The image.
    pub fn build(&self) -> Result<Vec<u8>, SeedError> {
        let layout = self.layout()?;
        let image = layout.render(self);
        tracing::debug!(
            volume_id = %self.volume_id,
            files = self.files.len(),
            bytes = image.len(),
            "built ISO 9660 image"
        );
        Ok(image)
    }

    fn layout(&self) -> Result<Layout, SeedError> {
        validate_volume_id(&self.volume_id)?;
        let tree = Tree::new(&self.files)?;
        if tree.dirs.len() > usize::from(u16::MAX) {
            return Err(SeedError::TooManyDirectories(tree.dirs.len()));
        }
        let primary = TreeLayout::new(&tree, Flavor::Primary);
        let joliet = TreeLayout::new(&tree, Flavor::Joliet);

        // Everything is allocated in sectors, in the order it is written.
        let mut next = u64::from(FIRST_FREE_SECTOR);
        let mut alloc = |bytes: u64| {
            let at = next;
            next += bytes.div_ceil(u64::from(SECTOR));
            at
        };
        let primary_l = alloc(primary.path_table_size());
        let primary_m = alloc(primary.path_table_size());
        let joliet_l = alloc(joliet.path_table_size());
        let joliet_m = alloc(joliet.path_table_size());
        let mut dir_extents = [vec![0u64; tree.dirs.len()], vec![0u64; tree.dirs.len()]];
        for (t, layout) in [&primary, &joliet].into_iter().enumerate() {
            for &d in &layout.order {
                dir_extents[t][d] = alloc(u64::from(layout.dir_size[d]));
            }
        }
        let mut file_extents = vec![0u64; tree.files.len()];
        for (f, file) in tree.files.iter().enumerate() {
            file_extents[f] = alloc(self.files[file.source].1.len() as u64);
        }
        let total = next + if self.padding { u64::from(PAD_SECTORS) } else { 0 };
        let size = total * u64::from(SECTOR);
        if size > self.max_size {
            return Err(SeedError::TooLarge { size, limit: self.max_size });
        }
        // Under the size limit everything fits in u32 sectors; guard anyway.
        let to_u32 = |v: u64| u32::try_from(v).map_err(|_| SeedError::TooLarge { size, limit: self.max_size });
        let dir_extents = [
            dir_extents[0].iter().map(|&e| to_u32(e)).collect::<Result<Vec<_>, _>>()?,
            dir_extents[1].iter().map(|&e| to_u32(e)).collect::<Result<Vec<_>, _>>()?,
        ];
        let file_extents = file_extents.iter().map(|&e| to_u32(e)).collect::<Result<Vec<_>, _>>()?;
        for file in &tree.files {
            to_u32(self.files[file.source].1.len() as u64)?;
        }
        Ok(Layout {
            path_tables: [to_u32(primary_l)?, to_u32(primary_m)?, to_u32(joliet_l)?, to_u32(joliet_m)?],
            trees: [primary, joliet],
            dir_extents,
            file_extents,
            total_sectors: to_u32(total)?,
            tree,
        })
    }
}

/// Builds an ISO 9660 + Joliet image labelled `volume_id` holding `files`
/// (relative paths and contents), with the epoch as timestamp and the
/// default size limit.
pub fn build_iso<P: AsRef<str>, D: AsRef<[u8]>>(volume_id: &str, files: &[(P, D)]) -> Result<Vec<u8>, SeedError> {
    let mut builder = IsoBuilder::new(volume_id);
    for (path, data) in files {
        builder.add_file(path.as_ref(), data.as_ref());
    }
    builder.build()
}

fn validate_volume_id(id: &str) -> Result<(), SeedError> {
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(SeedError::InvalidVolumeId(id.to_string()));
    }
    Ok(())
}

/// The directory tree of the image.
struct Tree {
    /// Index 0 is the root.
    dirs: Vec<DirNode>,
    files: Vec<FileNode>,
}

struct DirNode {
    /// The original name ("" for the root).
    name: String,
    parent: usize,
    dirs: Vec<usize>,
    files: Vec<usize>,
    /// The ISO level 1 name.
    iso_name: String,
}

struct FileNode {
    name: String,
    /// Index into `IsoBuilder::files`.
    source: usize,
    /// The ISO level 1 identifier, `NAME.EXT;1`.
    iso_name: String,
}

impl Tree {
    fn new(files: &[(String, Vec<u8>)]) -> Result<Self, SeedError> {
        let mut tree = Tree {
            dirs: vec![DirNode {
                name: String::new(),
                parent: 0,
                dirs: Vec::new(),
                files: Vec::new(),
                iso_name: String::new(),
            }],
            files: Vec::new(),
        };
        for (source, (path, _)) in files.iter().enumerate() {
            let invalid = |reason| SeedError::InvalidPath { path: path.clone(), reason };
            let parts: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
            for part in &parts {
                validate_component(part).map_err(invalid)?;
            }
            let Some((file_name, dir_parts)) = parts.split_last() else {
                return Err(invalid("empty"));
            };
            if dir_parts.len() + 1 > MAX_DIR_LEVELS {
                return Err(invalid("more than 8 directory levels"));
            }
            let mut dir = 0;
            for part in dir_parts {
                if tree.dirs[dir].files.iter().any(|&f| tree.files[f].name == *part) {
                    return Err(SeedError::DuplicatePath(path.clone()));
                }
                dir = match tree.dirs[dir].dirs.iter().copied().find(|&d| tree.dirs[d].name == *part) {
                    Some(d) => d,
                    None => {
                        let d = tree.dirs.len();
                        tree.dirs.push(DirNode {
                            name: part.to_string(),
                            parent: dir,
                            dirs: Vec::new(),
                            files: Vec::new(),
                            iso_name: String::new(),
                        });
                        tree.dirs[dir].dirs.push(d);
                        d
                    }
                };
            }
            let taken = tree.dirs[dir].files.iter().any(|&f| tree.files[f].name == *file_name)
                || tree.dirs[dir].dirs.iter().any(|&d| tree.dirs[d].name == *file_name);
            if taken {
                return Err(SeedError::DuplicatePath(path.clone()));
            }
            tree.files.push(FileNode { name: file_name.to_string(), source, iso_name: String::new() });
            let f = tree.files.len() - 1;
            tree.dirs[dir].files.push(f);
        }
        tree.assign_iso_names();
        Ok(tree)
    }

    /// Gives every entry an ISO level 1 name, unique in its directory
    /// (files and directories share the namespace; `NAME` and `NAME.;1`
    /// count as the same, since Linux maps both to `name`).
    fn assign_iso_names(&mut self) {
        for d in 0..self.dirs.len() {
            let mut entries: Vec<(String, Option<usize>, Option<usize>)> = Vec::new();
            entries.extend(self.dirs[d].dirs.iter().map(|&c| (self.dirs[c].name.clone(), Some(c), None)));
            entries.extend(self.dirs[d].files.iter().map(|&f| (self.files[f].name.clone(), None, Some(f))));
            entries.sort();
            let mut used = HashSet::new();
            for (name, dir, file) in entries {
                let (base, ext) = match dir {
                    Some(_) => (d_chars(&name.replace('.', "_"), 8), String::new()),
                    None => level1_file_name(&name),
                };
                let base = unique_base(&base, &ext, &mut used);
                if let Some(c) = dir {
                    self.dirs[c].iso_name = base;
                } else if let Some(f) = file {
                    self.files[f].iso_name = format!("{base}.{ext};1");
                }
            }
        }
    }
}

fn validate_component(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("empty path component");
    }
    if part == "." || part == ".." {
        return Err("'.' and '..' are not allowed");
    }
    if part.chars().any(|c| c < ' ' || matches!(c, '*' | '/' | ':' | ';' | '?' | '\\')) {
        return Err("Joliet names cannot hold control characters or * / : ; ? \\");
    }
    if part.chars().any(|c| u32::from(c) > 0xffff) {
        return Err("Joliet names hold UCS-2 characters only");
    }
    if part.chars().count() > MAX_JOLIET_NAME {
        return Err("Joliet names are at most 64 characters");
    }
    Ok(())
}

/// `s` as uppercase d-characters (A–Z, 0–9, _), at most `max` of them.
fn d_chars(s: &str, max: usize) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).take(max).collect()
}

/// The 8.3 name and extension of a file: `meta_data.json` → `META_DAT`,
/// `JSO`.
fn level1_file_name(name: &str) -> (String, String) {
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let mut base = d_chars(base, 8);
    let ext = d_chars(ext, 3);
    if base.is_empty() && ext.is_empty() {
        base.push('_');
    }
    (base, ext)
}

/// `base`, or `base` with its tail replaced by a counter, such that
/// `base.ext` is not in `used`; records the choice.
fn unique_base(base: &str, ext: &str, used: &mut HashSet<String>) -> String {
    let mut candidate = base.to_string();
    let mut n: u64 = 0;
    loop {
        let key = format!("{candidate}.{ext}");
        if used.insert(key) {
            return candidate;
        }
        n += 1;
        let suffix = n.to_string();
        let keep = 8usize.saturating_sub(suffix.len()).min(base.len());
        candidate = format!("{}{suffix}", &base[..keep]);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Primary,
    Joliet,
}

#[derive(Clone, Copy)]
enum Target {
    Dir(usize),
    File(usize),
}

/// One directory record's identifier and what it points at.
struct Entry {
    id: Vec<u8>,
    target: Target,
}

/// The shape of one tree (primary or Joliet): identifiers, order, sizes.
struct TreeLayout {
    flavor: Flavor,
    /// Directory indices in path table order (by level, parent, name).
    order: Vec<usize>,
    /// Per directory: its path table number (1-based).
    number: Vec<u16>,
    /// Per directory: its identifier in this tree.
    dir_id: Vec<Vec<u8>>,
    /// Per directory: its children, sorted.
    entries: Vec<Vec<Entry>>,
    /// Per directory: the bytes of its extent (whole sectors).
    dir_size: Vec<u32>,
}

impl TreeLayout {
    fn new(tree: &Tree, flavor: Flavor) -> Self {
        let n = tree.dirs.len();
        let ident = |name: &str, iso: &str| match flavor {
            Flavor::Primary => iso.as_bytes().to_vec(),
            Flavor::Joliet => ucs2(name),
        };
        let mut dir_id: Vec<Vec<u8>> = tree.dirs.iter().map(|d| ident(&d.name, &d.iso_name)).collect();
        dir_id[0] = vec![0];
        let mut entries = Vec::with_capacity(n);
        for dir in &tree.dirs {
            let mut list: Vec<Entry> = dir
                .dirs
                .iter()
                .map(|&c| Entry { id: dir_id[c].clone(), target: Target::Dir(c) })
                .chain(dir.files.iter().map(|&f| Entry {
                    id: ident(&tree.files[f].name, &tree.files[f].iso_name),
                    target: Target::File(f),
                }))
                .collect();
            list.sort_by_key(|e| sort_key(flavor, &e.id));
            entries.push(list);
        }
        // Breadth first over sorted children: the path table order.
        let mut order = vec![0];
        let mut i = 0;
        while i < order.len() {
            let d = order[i];
            order.extend(entries[d].iter().filter_map(|e| match e.target {
                Target::Dir(c) => Some(c),
                Target::File(_) => None,
            }));
            i += 1;
        }
        let mut number = vec![0u16; n];
        for (i, &d) in order.iter().enumerate() {
            // At most 65535 directories (checked by the caller).
            number[d] = u16::try_from(i + 1).unwrap_or(u16::MAX);
        }
        let dir_size = entries
            .iter()
            .map(|list| {
                let ids = [&[0u8][..], &[1u8][..]].into_iter().chain(list.iter().map(|e| e.id.as_slice()));
                let mut pos = 0u32;
                for id in ids {
                    pos = place_record(pos, record_len(id.len()));
                }
                pos.div_ceil(SECTOR).max(1) * SECTOR
            })
            .collect();
        TreeLayout { flavor, order, number, dir_id, entries, dir_size }
    }

    fn path_table_size(&self) -> u64 {
        self.order.iter().map(|&d| path_record_len(self.dir_id[d].len()) as u64).sum()
    }

    /// The path table, little-endian (L) or big-endian (M).
    fn path_table(&self, tree: &Tree, extents: &[u32], big_endian: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &d in &self.order {
            let id = &self.dir_id[d];
            out.push(id.len() as u8);
            out.push(0);
            let parent = self.number[tree.dirs[d].parent];
            if big_endian {
                out.extend_from_slice(&extents[d].to_be_bytes());
                out.extend_from_slice(&parent.to_be_bytes());
            } else {
                out.extend_from_slice(&extents[d].to_le_bytes());
                out.extend_from_slice(&parent.to_le_bytes());
            }
            out.extend_from_slice(id);
            if id.len() % 2 == 1 {
                out.push(0);
            }
        }
        out
    }
}

/// Directory records sort by name, then extension (ECMA-119 9.3); with
/// d-characters only, comparing the (name, extension) pair is the same as
/// comparing space-padded fields. Joliet names sort by UCS-2 code unit.
fn sort_key(flavor: Flavor, id: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match flavor {
        Flavor::Primary => {
            let id = id.split(|&b| b == b';').next().unwrap_or(id);
            match id.iter().position(|&b| b == b'.') {
                Some(i) => (id[..i].to_vec(), id[i + 1..].to_vec()),
                None => (id.to_vec(), Vec::new()),
            }
        }
        Flavor::Joliet => (id.to_vec(), Vec::new()),
    }
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// The length of a directory record with an identifier of `id_len` bytes
/// (padded to an even length).
fn record_len(id_len: usize) -> u32 {
    (33 + id_len + (1 - id_len % 2)) as u32
}

fn path_record_len(id_len: usize) -> usize {
    8 + id_len + id_len % 2
}

/// Where a record of `len` bytes goes when the previous one ended at
/// `pos`: records do not cross sector boundaries. Returns its end.
fn place_record(pos: u32, len: u32) -> u32 {
    let start = if pos % SECTOR + len > SECTOR { pos.div_ceil(SECTOR) * SECTOR } else { pos };
    start + len
}

/// Sector allocation of the whole image.
struct Layout {
    tree: Tree,
    /// Primary L, primary M, Joliet L, Joliet M.
    path_tables: [u32; 4],
    trees: [TreeLayout; 2],
    dir_extents: [Vec<u32>; 2],
    file_extents: Vec<u32>,
    total_sectors: u32,
}

impl Layout {
    fn render(&self, builder: &IsoBuilder) -> Vec<u8> {
        let mut image = vec![0u8; self.total_sectors as usize * SECTOR_SIZE];
        let date = DateTime::from_unix(builder.timestamp);
        let sector = |s: u32| s as usize * SECTOR_SIZE;

        for (t, layout) in self.trees.iter().enumerate() {
            let extents = &self.dir_extents[t];
            let (l, m) = (self.path_tables[2 * t], self.path_tables[2 * t + 1]);
            let table_l = layout.path_table(&self.tree, extents, false);
            let table_m = layout.path_table(&self.tree, extents, true);
            image[sector(l)..sector(l) + table_l.len()].copy_from_slice(&table_l);
            image[sector(m)..sector(m) + table_m.len()].copy_from_slice(&table_m);

            let descriptor = self.volume_descriptor(builder, layout, t, &date, table_l.len() as u32);
            let at = sector(16 + t as u32);
            image[at..at + SECTOR_SIZE].copy_from_slice(&descriptor);

            for &d in &layout.order {
                let base = sector(extents[d]);
                let parent = self.tree.dirs[d].parent;
                let mut pos = 0u32;
                let dots = [(&[0u8][..], Target::Dir(d)), (&[1u8][..], Target::Dir(parent))];
                let records = dots.into_iter().chain(layout.entries[d].iter().map(|e| (e.id.as_slice(), e.target)));
                for (id, target) in records {
                    let record = self.dir_record(builder, t, id, target, &date);
                    let end = place_record(pos, record.len() as u32);
                    let start = base + (end as usize - record.len());
                    image[start..start + record.len()].copy_from_slice(&record);
                    pos = end;
                }
            }
        }

        let terminator = sector(18);
        image[terminator] = 255;
        image[terminator + 1..terminator + 6].copy_from_slice(b"CD001");
        image[terminator + 6] = 1;

        for (f, file) in self.tree.files.iter().enumerate() {
            let data = &builder.files[file.source].1;
            let at = sector(self.file_extents[f]);
            image[at..at + data.len()].copy_from_slice(data);
        }
        image
    }

    /// A directory record; `id` is `[0]` for "." and `[1]` for "..".
    fn dir_record(&self, builder: &IsoBuilder, t: usize, id: &[u8], target: Target, date: &DateTime) -> Vec<u8> {
        let (extent, size, flags) = match target {
            Target::Dir(d) => (self.dir_extents[t][d], self.trees[t].dir_size[d], 2u8),
            Target::File(f) => {
                let len = builder.files[self.tree.files[f].source].1.len() as u32;
                (self.file_extents[f], len, 0u8)
            }
        };
        let len = record_len(id.len()) as usize;
        let mut r = Vec::with_capacity(len);
        r.push(len as u8);
        r.push(0); // extended attribute record length
        r.extend_from_slice(&both_u32(extent));
        r.extend_from_slice(&both_u32(size));
        r.extend_from_slice(&date.record());
        r.push(flags);
        r.push(0); // file unit size
        r.push(0); // interleave gap
        r.extend_from_slice(&both_u16(1)); // volume sequence number
        r.push(id.len() as u8);
        r.extend_from_slice(id);
        r.resize(len, 0);
        r
    }

    /// The primary (t = 0) or Joliet (t = 1) volume descriptor.
    fn volume_descriptor(
        &self,
        builder: &IsoBuilder,
        layout: &TreeLayout,
        t: usize,
        date: &DateTime,
        path_table_size: u32,
    ) -> Vec<u8> {
        let joliet = layout.flavor == Flavor::Joliet;
        let text = |s: &str, len: usize| if joliet { ucs2_field(s, len) } else { ascii_field(s, len) };
        let mut v = vec![0u8; SECTOR_SIZE];
        v[0] = if joliet { 2 } else { 1 };
        v[1..6].copy_from_slice(b"CD001");
        v[6] = 1;
        v[8..40].copy_from_slice(&text("", 32)); // system identifier
        v[40..72].copy_from_slice(&text(&builder.volume_id, 32));
        v[80..88].copy_from_slice(&both_u32(self.total_sectors));
        if joliet {
            v[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
        }
        v[120..124].copy_from_slice(&both_u16(1)); // volume set size
        v[124..128].copy_from_slice(&both_u16(1)); // volume sequence number
        v[128..132].copy_from_slice(&both_u16(SECTOR as u16));
        v[132..140].copy_from_slice(&both_u32(path_table_size));
        v[140..144].copy_from_slice(&self.path_tables[2 * t].to_le_bytes());
        v[148..152].copy_from_slice(&self.path_tables[2 * t + 1].to_be_bytes());
        let root = self.dir_record(builder, t, &[0], Target::Dir(0), date);
        v[156..190].copy_from_slice(&root);
        v[190..318].copy_from_slice(&text("", 128)); // volume set
        v[318..446].copy_from_slice(&text("", 128)); // publisher
        v[446..574].copy_from_slice(&text("", 128)); // data preparer
        v[574..702].copy_from_slice(&text("SHEAF", 128)); // application
        v[702..739].copy_from_slice(&text("", 37)); // copyright file
        v[739..776].copy_from_slice(&text("", 37)); // abstract file
        v[776..813].copy_from_slice(&text("", 37)); // bibliographic file
        v[813..830].copy_from_slice(&date.volume());
        v[830..847].copy_from_slice(&date.volume());
        v[847..864].copy_from_slice(&DateTime::unset_volume());
        v[864..881].copy_from_slice(&date.volume());
        v[881] = 1; // file structure version
        v
    }
}

fn both_u16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both_u32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// `s` padded with spaces to `len` bytes (truncated if longer).
fn ascii_field(s: &str, len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = s.bytes().take(len).collect();
    out.resize(len, b' ');
    out
}

/// `s` as UCS-2 BE padded with UCS-2 spaces to `len` bytes; an odd last
/// byte is zero.
fn ucs2_field(s: &str, len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = ucs2(s).into_iter().take(len / 2 * 2).collect();
    while out.len() + 2 <= len {
        out.extend_from_slice(&[0, b' ']);
    }
    out.resize(len, 0);
    out
}

/// A UTC date and time, 1900–2155.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let dt = DateTime { year, month, day, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60 };
        if year < 1900 {
            DateTime { year: 1900, month: 1, day: 1, hour: 0, minute: 0, second: 0 }
        } else if year > 2155 {
            DateTime { year: 2155, month: 12, day: 31, hour: 23, minute: 59, second: 59 }
        } else {
            dt
        }
    }

    /// The 7-byte directory record form (years since 1900, GMT offset 0).
    fn record(&self) -> [u8; 7] {
        [
            (self.year - 1900) as u8,
            self.month as u8,
            self.day as u8,
            self.hour as u8,
            self.minute as u8,
            self.second as u8,
            0,
        ]
    }

    /// The 17-byte volume descriptor form: `YYYYMMDDHHMMSScc` and a GMT
    /// offset of 0.
    fn volume(&self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(&text.as_bytes()[..16]);
        out
    }

    /// "Not specified": sixteen '0' digits and a zero offset.
    fn unset_volume() -> [u8; 17] {
        let mut out = [b'0'; 17];
        out[16] = 0;
        out
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------
// Cloud-init content
// ---------------------------------------------------------------------------

/// NoCloud meta-data (KubeVirt's `NoCloudMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoCloudMetaData {
    /// `instance-id`: KubeVirt uses the VMI's firmware UUID.
    pub instance_id: String,
    /// `local-hostname`: the VMI's (sanitized) hostname.
    pub local_hostname: Option<String>,
    /// `instance-type`: the VMI's instancetype, if any.
    pub instance_type: Option<String>,
    /// `public-keys`: key name → public key.
    pub public_keys: BTreeMap<String, String>,
}

impl NoCloudMetaData {
    pub fn new(instance_id: impl Into<String>) -> Self {
        NoCloudMetaData { instance_id: instance_id.into(), ..Default::default() }
    }

    /// The `meta-data` file: block YAML with the keys KubeVirt writes.
    pub fn to_yaml(&self) -> Result<String, SeedError> {
        if self.instance_id.is_empty() {
            return Err(SeedError::NoInstanceId);
        }
        let mut out = String::new();
        if let Some(t) = &self.instance_type {
            out.push_str(&format!("instance-type: {}\n", yaml_scalar(t)?));
        }
        out.push_str(&format!("instance-id: {}\n", yaml_scalar(&self.instance_id)?));
        if let Some(h) = &self.local_hostname {
            out.push_str(&format!("local-hostname: {}\n", yaml_scalar(h)?));
        }
        if !self.public_keys.is_empty() {
            out.push_str("public-keys:\n");
            for (name, key) in &self.public_keys {
                out.push_str(&format!("  {}: {}\n", serde_json::to_string(name)?, yaml_scalar(key)?));
            }
        }
        Ok(out)
    }
}

/// A YAML scalar for `s`: plain when it cannot be read as anything but
/// that string, otherwise a JSON string (a valid YAML double-quoted
/// scalar).
fn yaml_scalar(s: &str) -> Result<String, SeedError> {
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !["y", "n", "yes", "no", "true", "false", "on", "off", "null"].iter().any(|w| s.eq_ignore_ascii_case(w));
    if plain {
        Ok(s.to_string())
    } else {
        Ok(serde_json::to_string(s)?)
    }
}

/// A NoCloud data source (`cloudInitNoCloud`), labelled `cidata`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoCloud {
    /// `user-data` (written even when empty).
    pub user_data: Vec<u8>,
    /// `network-config`, written when not empty.
    pub network_data: Option<String>,
    pub meta_data: NoCloudMetaData,
    /// `vendor-data`, written when given.
    pub vendor_data: Option<Vec<u8>>,
}

impl NoCloud {
    /// The files of the seed, as (path, content).
    pub fn files(&self) -> Result<Vec<(String, Vec<u8>)>, SeedError> {
        let network = self.network_data.as_deref().filter(|n| !n.is_empty());
        if self.user_data.is_empty() && network.is_none() {
            return Err(SeedError::NoData);
        }
        let mut files = vec![
            ("user-data".to_string(), self.user_data.clone()),
            ("meta-data".to_string(), self.meta_data.to_yaml()?.into_bytes()),
        ];
        if let Some(n) = network {
            files.push(("network-config".to_string(), n.as_bytes().to_vec()));
        }
        if let Some(v) = &self.vendor_data {
            files.push(("vendor-data".to_string(), v.clone()));
        }
        Ok(files)
    }
}

/// A device in ConfigDrive meta-data (KubeVirt's `DeviceData`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceData {
    /// `nic` or `hostdev`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pci`.
    pub bus: String,
    /// The PCI address, `0000:01:00.0`.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(rename = "numaNode", skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    #[serde(rename = "alignedCPUs", skip_serializing_if = "Vec::is_empty")]
    pub aligned_cpus: Vec<u32>,
    pub tags: Vec<String>,
}

/// ConfigDrive meta-data (KubeVirt's `ConfigDriveMetadata`, OpenStack's
/// `meta_data.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDriveMetaData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// KubeVirt uses `<vmi name>.<namespace>`.
    pub instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// OpenStack's instance name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// KubeVirt uses the VMI's firmware UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceData>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub public_keys: BTreeMap<String, String>,
}

impl ConfigDriveMetaData {
    /// The meta-data KubeVirt writes for a VMI: instance id
    /// `<name>.<namespace>`, the firmware UUID and the hostname.
    pub fn for_vmi(name: &str, namespace: &str, uuid: &str, hostname: &str) -> Self {
        ConfigDriveMetaData {
            instance_id: format!("{name}.{namespace}"),
            uuid: Some(uuid.to_string()),
            hostname: Some(hostname.to_string()),
            ..Default::default()
        }
    }
}

/// A ConfigDrive data source (`cloudInitConfigDrive`), labelled `config-2`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDrive {
    /// `openstack/latest/user_data` (written even when empty).
    pub user_data: Vec<u8>,
    /// `openstack/latest/network_data.json`, written when not empty.
    pub network_data: Option<String>,
    /// `openstack/latest/meta_data.json`.
    pub meta_data: ConfigDriveMetaData,
}

impl ConfigDrive {
    /// The files of the seed, as (path, content).
    pub fn files(&self) -> Result<Vec<(String, Vec<u8>)>, SeedError> {
        let network = self.network_data.as_deref().filter(|n| !n.is_empty());
        if self.user_data.is_empty() && network.is_none() {
            return Err(SeedError::NoData);
        }
        if self.meta_data.instance_id.is_empty() {
            return Err(SeedError::NoInstanceId);
        }
        let mut files = vec![
            ("openstack/latest/meta_data.json".to_string(), serde_json::to_vec(&self.meta_data)?),
            ("openstack/latest/user_data".to_string(), self.user_data.clone()),
        ];
        if let Some(n) = network {
            files.push(("openstack/latest/network_data.json".to_string(), n.as_bytes().to_vec()));
        }
        Ok(files)
    }
}

fn seed_iso(label: &str, files: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, SeedError> {
    let mut builder = IsoBuilder::new(label);
    for (path, data) in files {
        builder.add_file(&path, data);
    }
    builder.build()
}

/// The NoCloud seed image (label `cidata`), at most [`DEFAULT_MAX_SIZE`].
pub fn nocloud_iso(seed: &NoCloud) -> Result<Vec<u8>, SeedError> {
    seed_iso(NOCLOUD_LABEL, seed.files()?)
}

/// The ConfigDrive seed image (label `config-2`), at most
/// [`DEFAULT_MAX_SIZE`].
pub fn configdrive_iso(seed: &ConfigDrive) -> Result<Vec<u8>, SeedError> {
    seed_iso(CONFIGDRIVE_LABEL, seed.files()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn level1_names() {
        assert_eq!(level1_file_name("user-data"), ("USER_DAT".into(), "".into()));
        assert_eq!(level1_file_name("meta_data.json"), ("META_DAT".into(), "JSO".into()));
        assert_eq!(level1_file_name("0000"), ("0000".into(), "".into()));
        assert_eq!(level1_file_name(".hidden"), ("_HIDDEN".into(), "".into()));
        assert_eq!(level1_file_name("a.b.c"), ("A_B".into(), "C".into()));
        assert_eq!(level1_file_name("é"), ("_".into(), "".into()));
        assert_eq!(level1_file_name("x."), ("X".into(), "".into()));
    }

    #[test]
    fn unique_names() {
        let mut used = HashSet::new();
        assert_eq!(unique_base("USER_DAT", "", &mut used), "USER_DAT");
        assert_eq!(unique_base("USER_DAT", "", &mut used), "USER_DA1");
        assert_eq!(unique_base("USER_DAT", "", &mut used), "USER_DA2");
        assert_eq!(unique_base("USER_DAT", "JSO", &mut used), "USER_DAT");
        assert_eq!(unique_base("A", "", &mut used), "A");
        assert_eq!(unique_base("A", "", &mut used), "A1");
    }

    #[test]
    fn tree_dedups_and_shares_namespace() {
        let files: Vec<(String, Vec<u8>)> =
            ["user-data", "user_data", "user.data", "user_dat/x"].iter().map(|p| (p.to_string(), Vec::new())).collect();
        let tree = Tree::new(&files).unwrap();
        let mut names: Vec<String> = tree.dirs[0].files.iter().map(|&f| tree.files[f].iso_name.clone()).collect();
        names.push(tree.dirs[1].iso_name.clone());
        let set: HashSet<String> =
            names.iter().map(|n| n.trim_end_matches(";1").trim_end_matches('.').into()).collect();
        assert_eq!(set.len(), 4, "{names:?}");
        assert!(names.contains(&"USER.DAT;1".to_string()));
    }

    #[test]
    fn bad_paths() {
        for p in ["", "a//b", "a/", "./a", "a/../b", "a:b", "a;1", "a?", &"x".repeat(65), "1/2/3/4/5/6/7/8/9"] {
            let r = Tree::new(&[(p.to_string(), Vec::new())]);
            assert!(matches!(r, Err(SeedError::InvalidPath { .. })), "{p:?}");
        }
        assert!(Tree::new(&[("1/2/3/4/5/6/7/8".to_string(), Vec::new())]).is_ok());
        let dup = |a: &str, b: &str| Tree::new(&[(a.to_string(), Vec::new()), (b.to_string(), Vec::new())]);
        assert!(matches!(dup("a", "a"), Err(SeedError::DuplicatePath(_))));
        assert!(matches!(dup("a", "a/b"), Err(SeedError::DuplicatePath(_))));
        assert!(matches!(dup("a/b", "a"), Err(SeedError::DuplicatePath(_))));
        assert!(dup("/a", "b/a").is_ok());
    }

    #[test]
    fn volume_ids() {
        assert!(validate_volume_id("cidata").is_ok());
        assert!(validate_volume_id("config-2").is_ok());
        assert!(validate_volume_id(&"A".repeat(32)).is_ok());
        assert!(validate_volume_id("").is_err());
        assert!(validate_volume_id(&"A".repeat(33)).is_err());
        assert!(validate_volume_id("é").is_err());
    }

    #[test]
    fn dates() {
        let epoch = DateTime::from_unix(0);
        assert_eq!(epoch.record(), [70, 1, 1, 0, 0, 0, 0]);
        assert_eq!(&epoch.volume()[..], b"1970010100000000\0");
        // 2024-02-29 12:34:56 UTC
        let leap = DateTime::from_unix(1_709_210_096);
        assert_eq!(leap.record(), [124, 2, 29, 12, 34, 56, 0]);
        assert_eq!(DateTime::from_unix(-1).record(), [69, 12, 31, 23, 59, 59, 0]);
        assert_eq!(DateTime::from_unix(i64::MIN / 2).record(), [0, 1, 1, 0, 0, 0, 0]);
        assert_eq!(DateTime::from_unix(i64::MAX / 2).record(), [255, 12, 31, 23, 59, 59, 0]);
        assert_eq!(&DateTime::unset_volume()[..], b"0000000000000000\0");
    }

    #[test]
    fn both_endian() {
        assert_eq!(both_u32(0x0102_0304), [4, 3, 2, 1, 1, 2, 3, 4]);
        assert_eq!(both_u16(2048), [0, 8, 8, 0]);
    }

    #[test]
    fn fields() {
        assert_eq!(ascii_field("cidata", 8), b"cidata  ");
        assert_eq!(ucs2_field("ab", 7), [0, b'a', 0, b'b', 0, b' ', 0]);
        assert_eq!(ucs2_field("abcdef", 4), [0, b'a', 0, b'b']);
    }

    #[test]
    fn records_do_not_cross_sectors() {
        assert_eq!(record_len(1), 34);
        assert_eq!(record_len(14), 48);
        assert_eq!(place_record(0, 34), 34);
        assert_eq!(place_record(2000, 48), 2048);
        assert_eq!(place_record(2001, 48), 2048 + 48);
        assert_eq!(path_record_len(1), 10);
        assert_eq!(path_record_len(18), 26);
    }

    #[test]
    fn yaml_scalars() {
        assert_eq!(yaml_scalar("tiny1").unwrap(), "tiny1");
        assert_eq!(yaml_scalar("vm.ns").unwrap(), "vm.ns");
        assert_eq!(yaml_scalar("6a1f-00").unwrap(), "\"6a1f-00\"");
        assert_eq!(yaml_scalar("yes").unwrap(), "\"yes\"");
        assert_eq!(yaml_scalar("").unwrap(), "\"\"");
        assert_eq!(yaml_scalar("a: b\n").unwrap(), "\"a: b\\n\"");
    }

    #[test]
    fn nocloud_meta_data_yaml() {
        let mut md = NoCloudMetaData::new("6a1f2b3c-0000-4000-8000-000000000001");
        md.local_hostname = Some("tiny1".into());
        md.instance_type = Some("u1.small".into());
        md.public_keys.insert("k1".into(), "ssh-ed25519 AAAA k1@x".into());
        assert_eq!(
            md.to_yaml().unwrap(),
            "instance-type: u1.small\ninstance-id: \"6a1f2b3c-0000-4000-8000-000000000001\"\n\
             local-hostname: tiny1\npublic-keys:\n  \"k1\": \"ssh-ed25519 AAAA k1@x\"\n"
        );
        assert!(matches!(NoCloudMetaData::default().to_yaml(), Err(SeedError::NoInstanceId)));
    }

    #[test]
    fn size_limit() {
        let b = IsoBuilder::new("cidata").file("big", vec![1u8; 1 << 20]);
        assert!(b.clone().max_size(1 << 20).build().is_err());
        let size = b.image_size().unwrap();
        assert_eq!(b.clone().max_size(size).build().unwrap().len() as u64, size);
        assert!(matches!(b.max_size(size - 1).build(), Err(SeedError::TooLarge { .. })));
    }
}
