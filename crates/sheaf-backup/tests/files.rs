//! File-level restore against real images made by real tools: ext4
//! (`mkfs.ext4 -d`), bare and inside GPT and MBR disks at offsets that
//! are not chunk-aligned; FAT12/16/32 (`mkfs.vfat` + `mcopy`); ISO 9660
//! (`genisoimage`, with Rock Ridge and Joliet, and plain). Each image is
//! backed up into an `FsStore` repository with `volume::backup`, then
//! listed and read through `sheaf_backup::files` and compared with the
//! source files. Last, hostile images: random bytes, a corrupt
//! superblock, and random bytes flipped in an ext4 image's metadata.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use async_trait::async_trait;
use sheaf_backup::chunk::Compression;
use sheaf_backup::files::{self, EntryKind, FilesError, FsKind, ReadAt, Table};
use sheaf_backup::manifest::VolumeRef;
use sheaf_backup::store::fs::FsStore;
use sheaf_backup::volume::{self, Job, Source};
use sheaf_backup::{Repository, VolumeManifest};

const MIB: usize = 1 << 20;

/// A disk image in memory, as a snapshot to back up.
struct Image(Vec<u8>);

#[async_trait]
impl Source for Image {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        Ok(self.0[offset as usize..offset as usize + len as usize].to_vec())
    }
    async fn changed(&self, since: &str, _block: u64, _count: u64) -> Result<Vec<u8>, String> {
        Err(format!("no snapshot {since}"))
    }
}

/// A backup of `image` in a repository in a fresh directory.
struct Backup {
    _dir: tempfile::TempDir,
    repo: Repository,
    manifest: VolumeManifest,
}

async fn back_up(image: Vec<u8>) -> Backup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStore::new(dir.path()).expect("store");
    let repo = Repository::new(Arc::new(store), Compression::Zstd);
    let size = image.len() as u64;
    let job = Job {
        name: "b1".into(),
        volume: VolumeRef { namespace: "default".into(), name: "disk".into(), uid: "u1".into(), size },
        snapshot: "snap".into(),
        parent: None,
        labels: BTreeMap::new(),
    };
    let manifest = volume::backup(&repo, &Image(image), job, &|_| {}).await.expect("backup");
    Backup { _dir: dir, repo, manifest }
}

impl Backup {
    async fn read(&self, partition: Option<u32>, path: &str) -> Result<Vec<u8>, FilesError> {
        let mut out = Vec::new();
        let n = files::read_file(&self.repo, &self.manifest, partition, path, &mut out).await?;
        assert_eq!(n, out.len() as u64, "{path}: the size returned is what was written");
        Ok(out)
    }

    async fn list(&self, partition: Option<u32>, path: &str) -> Result<Vec<files::Entry>, FilesError> {
        files::list(&self.repo, &self.manifest, partition, path).await
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic bytes that do not compress to nothing.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const BIG: usize = 3 * MIB + 12345;
const UNICODE: &str = "dir with spaces/ünïcödé ✓ file.txt";

/// The tree every image is made of: nested directories, an empty file,
/// a tiny one, one of 3 MiB that crosses chunks, spaces and unicode.
fn source_tree(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files: Vec<(&'static str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("small.txt", b"hi\n".to_vec()),
        ("big.bin", pattern(BIG, 1)),
        ("a/b/c/deep.txt", b"deep down\n".to_vec()),
        ("a/sibling.dat", pattern(5000, 2)),
        (UNICODE, "grüße\n".as_bytes().to_vec()),
    ];
    for (path, data) in &files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
    }
    files
}

async fn assert_tree(b: &Backup, partition: Option<u32>, files: &[(&str, Vec<u8>)]) {
    for (path, data) in files {
        let got = b.read(partition, &format!("/{path}")).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(got == *data, "{path}: {} bytes read, {} expected, or different", got.len(), data.len());
    }
    let root = b.list(partition, "/").await.expect("list /");
    let by_name: BTreeMap<&str, &files::Entry> = root.iter().map(|e| (e.name.as_str(), e)).collect();
    assert_eq!(by_name["big.bin"].kind, EntryKind::File);
    assert_eq!(by_name["big.bin"].size, BIG as u64);
    assert_eq!(by_name["empty"].size, 0);
    assert_eq!(by_name["a"].kind, EntryKind::Dir);
    assert!(by_name["small.txt"].mtime.is_some_and(|t| t > 1_600_000_000), "{:?}", by_name["small.txt"]);
    let deep = b.list(partition, "/a/b/c").await.expect("list deep");
    assert_eq!(deep.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["deep.txt"]);
    let spaced = b.list(partition, "/dir with spaces").await.expect("list spaces");
    assert_eq!(spaced[0].name, "ünïcödé ✓ file.txt");

    // Errors say what is wrong.
    assert!(matches!(b.read(partition, "/nope").await, Err(FilesError::NotFound(p)) if p == "/nope"));
    assert!(matches!(b.read(partition, "/a").await, Err(FilesError::NotAFile { .. })));
    assert!(matches!(b.list(partition, "/small.txt").await, Err(FilesError::NotADirectory(_))));
    assert!(matches!(
        b.list(partition, "/small.txt/x").await,
        Err(FilesError::NotADirectory(_) | FilesError::NotFound(_))
    ));
    assert!(matches!(b.list(partition, "/../etc").await, Err(FilesError::BadPath { .. })));
    assert!(matches!(b.list(partition, "relative").await, Err(FilesError::BadPath { .. })));
}

/// An ext4 image of the source tree plus symlinks and a sparse file.
fn ext4_image(size_mib: usize) -> (Vec<u8>, Vec<(&'static str, Vec<u8>)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let mut files = source_tree(&src);
    std::os::unix::fs::symlink("small.txt", src.join("fast-link")).expect("symlink");
    let long_target = format!("a/b/c/{}/../../../../small.txt", "x".repeat(80));
    std::os::unix::fs::symlink(&long_target, src.join("slow-link")).expect("symlink");
    // 16 MiB with a few bytes at 9 MiB: holes to read as zeros.
    let sparse = std::fs::File::create(src.join("sparse")).expect("sparse");
    sparse.set_len(16 * MIB as u64).expect("set_len");
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"island", 9 * MIB as u64).expect("write");
    let mut expect = vec![0u8; 16 * MIB];
    expect[9 * MIB..9 * MIB + 6].copy_from_slice(b"island");
    files.push(("sparse", expect));
    let img = dir.path().join("ext4.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "sheaf-root", "-d"])
        .arg(&src)
        .arg(&img)
        .arg(format!("{size_mib}M")));
    (std::fs::read(&img).expect("read image"), files)
}

#[tokio::test]
async fn ext4_files_are_listed_and_read() {
    let (image, files) = ext4_image(40);
    let b = back_up(image).await;
    let parts = files::partitions(&b.repo, &b.manifest).await.expect("partitions");
    assert_eq!(parts.len(), 1);
    assert_eq!((parts[0].index, parts[0].table, parts[0].filesystem), (0, Table::None, Some(FsKind::Ext4)));
    assert_eq!(parts[0].label.as_deref(), Some("sheaf-root"));
    assert_tree(&b, None, &files).await;
    assert_tree(&b, Some(0), &files).await;

    let root = b.list(None, "/").await.expect("list");
    let link = root.iter().find(|e| e.name == "fast-link").expect("fast-link");
    assert_eq!((link.kind, link.link_target.as_deref()), (EntryKind::Symlink, Some("small.txt")));
    let slow = root.iter().find(|e| e.name == "slow-link").expect("slow-link");
    assert!(slow.link_target.as_deref().is_some_and(|t| t.len() > 60 && t.ends_with("small.txt")));
    assert_eq!(b.read(None, "/fast-link").await.expect("through the link"), b"hi\n");
    assert!(root.iter().any(|e| e.name == "lost+found" && e.kind == EntryKind::Dir));
    assert!(matches!(b.list(Some(3), "/").await, Err(FilesError::NoSuchPartition { index: 3, .. })));
}

/// A GPT disk (protective MBR, primary and backup headers) with
/// `parts` at the given sectors.
fn gpt_disk(parts: &[(u64, &[u8], &str)]) -> Vec<u8> {
    const LINUX: [u8; 16] =
        [0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4];
    let end = parts.iter().map(|(lba, data, _)| lba * 512 + data.len() as u64).max().expect("parts");
    let sectors = end.div_ceil(512) + 34;
    let mut d = vec![0u8; (sectors * 512) as usize];
    for (lba, data, _) in parts {
        d[(*lba * 512) as usize..(*lba * 512) as usize + data.len()].copy_from_slice(data);
    }
    // Protective MBR.
    d[446 + 4] = 0xEE;
    d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    d[446 + 12..446 + 16].copy_from_slice(&((sectors - 1).min(u32::MAX as u64) as u32).to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xAA;
    let mut entries = vec![0u8; 128 * 128];
    for (i, (lba, data, name)) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[..16].copy_from_slice(&LINUX);
        e[16] = i as u8 + 1; // a unique GUID
        e[32..40].copy_from_slice(&lba.to_le_bytes());
        e[40..48].copy_from_slice(&(lba + (data.len() as u64).div_ceil(512) - 1).to_le_bytes());
        for (j, u) in name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    for (header_lba, other_lba, entries_lba) in [(1, sectors - 1, 2), (sectors - 1, 1, sectors - 33)] {
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&header_lba.to_le_bytes());
        h[32..40].copy_from_slice(&other_lba.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        let at = (header_lba * 512) as usize;
        d[at..at + 92].copy_from_slice(&h);
        let at = (entries_lba * 512) as usize;
        d[at..at + entries.len()].copy_from_slice(&entries);
    }
    d
}

fn fat_image(fat_bits: u32, size_kib: u32, src: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("fat.img");
    run(Command::new("mkfs.vfat")
        .args(["-F", &fat_bits.to_string(), "-n", "SHEAFFAT", "-C"])
        .arg(&img)
        .arg(size_kib.to_string()));
    let mut mcopy = Command::new("mcopy");
    mcopy.env("MTOOLS_SKIP_CHECK", "1").args(["-s", "-m", "-i"]).arg(&img);
    for entry in std::fs::read_dir(src).expect("src") {
        mcopy.arg(entry.expect("entry").path());
    }
    run(mcopy.arg("::/"));
    std::fs::read(&img).expect("image")
}

#[tokio::test]
async fn gpt_partitions_at_unaligned_offsets() {
    let (ext4, ext4_files) = ext4_image(24);
    let src = tempfile::tempdir().expect("tempdir");
    let fat_files = source_tree(src.path());
    let fat = fat_image(16, 20 * 1024, src.path());
    // Partition 1 starts 1 MiB + 3 sectors in: no chunk lines up with
    // its blocks. Partition 2 starts at an odd sector after it.
    let p1 = 2051u64;
    let p2 = p1 + (ext4.len() as u64).div_ceil(512) + 7;
    let mut disk = gpt_disk(&[(p1, &ext4, "root"), (p2, &fat, "EFI system")]);
    let b = back_up(disk.clone()).await;
    let parts = files::partitions(&b.repo, &b.manifest).await.expect("partitions");
    let summary: Vec<_> = parts.iter().map(|p| (p.index, p.table, p.start, p.filesystem)).collect();
    assert_eq!(
        summary,
        [(1, Table::Gpt, p1 * 512, Some(FsKind::Ext4)), (2, Table::Gpt, p2 * 512, Some(FsKind::Fat16))]
    );
    assert_eq!(parts[0].name.as_deref(), Some("root"));
    assert_eq!(parts[0].type_id, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[1].label.as_deref(), Some("SHEAFFAT"));
    assert_tree(&b, Some(1), &ext4_files).await;
    assert_tree(&b, Some(2), &fat_files).await;
    let e = b.list(None, "/").await.expect_err("two file systems");
    assert!(matches!(&e, FilesError::PartitionRequired { .. }), "{e}");
    assert!(e.to_string().contains("1 (ext4, \"sheaf-root\")") && e.to_string().contains("2 (fat16"), "{e}");
    let e = b.list(Some(5), "/").await.expect_err("no partition 5");
    assert!(e.to_string().contains("no partition 5"), "{e}");

    // The primary header damaged: the backup header at the end is read.
    disk[512 + 20] ^= 0xFF;
    let b = back_up(disk).await;
    let parts = files::partitions(&b.repo, &b.manifest).await.expect("partitions");
    assert_eq!(parts.len(), 2);
    assert_eq!(b.read(Some(1), "/small.txt").await.expect("read"), b"hi\n");
}

#[tokio::test]
async fn an_mbr_disk_with_one_ext4_partition() {
    let (ext4, files) = ext4_image(20);
    let first = 4097u32;
    let sectors = (ext4.len() / 512) as u32;
    let mut disk = vec![0u8; first as usize * 512 + ext4.len() + 4096];
    disk[first as usize * 512..first as usize * 512 + ext4.len()].copy_from_slice(&ext4);
    disk[446 + 4] = 0x83;
    disk[446 + 8..446 + 12].copy_from_slice(&first.to_le_bytes());
    disk[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    let b = back_up(disk).await;
    let parts = files::partitions(&b.repo, &b.manifest).await.expect("partitions");
    assert_eq!(parts.len(), 1);
    assert_eq!((parts[0].index, parts[0].table, parts[0].type_id.as_str()), (1, Table::Mbr, "0x83"));
    // The only partition with a file system: no need to name it.
    assert_tree(&b, None, &files).await;
}

#[tokio::test]
async fn fat12_16_32_with_long_names() {
    let src = tempfile::tempdir().expect("tempdir");
    let mut files = source_tree(src.path());
    let long = "A rather long file name, with Mixed Case.text";
    std::fs::write(src.path().join(long), b"long\n").expect("write");
    std::fs::write(src.path().join("UPPER.TXT"), b"upper\n").expect("write");
    std::fs::write(src.path().join("lower.txt"), b"lower\n").expect("write");
    files.push((long, b"long\n".to_vec()));
    files.push(("UPPER.TXT", b"upper\n".to_vec()));
    files.push(("lower.txt", b"lower\n".to_vec()));
    for (bits, kib, kind) in
        [(12, 8 * 1024, FsKind::Fat12), (16, 24 * 1024, FsKind::Fat16), (32, 40 * 1024, FsKind::Fat32)]
    {
        let b = back_up(fat_image(bits, kib, src.path())).await;
        let parts = files::partitions(&b.repo, &b.manifest).await.expect("partitions");
        assert_eq!(parts.iter().map(|p| (p.index, p.filesystem)).collect::<Vec<_>>(), [(0, Some(kind))], "FAT{bits}");
        assert_tree(&b, None, &files).await;
        let root = b.list(None, "/").await.expect("list");
        let names: Vec<&str> = root.iter().map(|e| e.name.as_str()).collect();
        for want in [long, "UPPER.TXT", "lower.txt", "dir with spaces"] {
            assert!(names.contains(&want), "FAT{bits}: {want:?} in {names:?}");
        }
        // FAT names are found whatever their case.
        assert_eq!(b.read(None, "/A/B/C/DEEP.TXT").await.expect("any case"), b"deep down\n");
    }
}

#[tokio::test]
async fn iso9660_rock_ridge_joliet_and_plain() {
    let src = tempfile::tempdir().expect("tempdir");
    let files = source_tree(src.path());
    std::os::unix::fs::symlink("a/sibling.dat", src.path().join("link")).expect("symlink");
    let out = tempfile::tempdir().expect("tempdir");
    for (flags, names) in [(&["-R", "-J"][..], "rock ridge"), (&["-J"][..], "joliet"), (&[][..], "plain")] {
        let img = out.path().join(format!("{}.iso", names.replace(' ', "-")));
        run(Command::new("genisoimage")
            .args(["-quiet", "-V", "SHEAF_ISO"])
            .args(flags)
            .arg("-o")
            .arg(&img)
            .arg(src.path()));
        let b = back_up(std::fs::read(&img).expect("iso")).await;
        let parts = files::partitions(&b.repo, &b.manifest).await.expect("partitions");
        assert_eq!(parts.len(), 1, "{names}");
        assert_eq!((parts[0].filesystem, parts[0].label.as_deref()), (Some(FsKind::Iso9660), Some("SHEAF_ISO")));
        match names {
            "plain" => {
                let root = b.list(None, "/").await.expect("list");
                let names: Vec<&str> = root.iter().map(|e| e.name.as_str()).collect();
                assert!(names.contains(&"BIG.BIN") && names.contains(&"EMPTY"), "{names:?}");
                assert_eq!(b.read(None, "/big.bin").await.expect("case-insensitive"), files[2].1);
                assert_eq!(b.read(None, "/A/B/C/DEEP.TXT").await.expect("deep"), b"deep down\n");
            }
            _ => {
                assert_tree(&b, None, &files).await;
                let root = b.list(None, "/").await.expect("list");
                if names == "rock ridge" {
                    let link = root.iter().find(|e| e.name == "link").expect("link");
                    assert_eq!((link.kind, link.link_target.as_deref()), (EntryKind::Symlink, Some("a/sibling.dat")));
                    let small = root.iter().find(|e| e.name == "small.txt").expect("small");
                    assert_eq!(small.mode, 0o644);
                }
            }
        }
    }
}

#[tokio::test]
async fn hostile_images_give_errors() {
    // Random bytes: no table, no file system.
    let b = back_up(pattern(3 * MIB, 9)).await;
    let parts = files::partitions(&b.repo, &b.manifest).await.expect("partitions");
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].filesystem, None);
    let e = b.list(None, "/").await.expect_err("nothing to read");
    assert!(matches!(e, FilesError::UnknownFileSystem { .. }), "{e}");
    assert!(e.to_string().contains("ext2/3/4, FAT12/16/32, ISO 9660"), "{e}");

    // An ext4 superblock claiming far more blocks than the disk holds.
    let (mut ext4, _) = ext4_image(8);
    ext4[1024 + 4..1024 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let b = back_up(ext4).await;
    let parts = files::partitions(&b.repo, &b.manifest).await.expect("partitions");
    assert!(parts[0].error.as_deref().is_some_and(|e| e.contains("larger than its partition")), "{parts:?}");
    let e = b.list(None, "/").await.expect_err("corrupt");
    assert!(matches!(e, FilesError::Corrupt(_)), "{e}");

    // A missing chunk is an error, not zeros.
    let (ext4, _) = ext4_image(8);
    let b = back_up(ext4).await;
    let chunk = b.manifest.chunks[0].clone().expect("chunk 0");
    let key = sheaf_backup::repo::chunk_key(&chunk);
    b.repo.store().delete(&key).await.expect("delete");
    let e = b.list(None, "/").await.expect_err("missing chunk");
    assert!(matches!(e, FilesError::Repo(_)), "{e}");
}

/// A small tree: directories, small files, a file of a few extents or
/// clusters, a symlink.
fn small_tree(root: &Path) {
    for (path, len) in [("a/b/one", 10), ("a/two", 3000), ("three", 200_000), ("four", 0)] {
        std::fs::create_dir_all(root.join(path).parent().expect("parent")).expect("mkdir");
        std::fs::write(root.join(path), pattern(len, 5)).expect("write");
    }
    std::os::unix::fs::symlink("three", root.join("link")).expect("symlink");
}

fn small_ext4_image(options: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    small_tree(&src);
    let img = dir.path().join("ext4.img");
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-O", options, "-d"]).arg(&src).arg(&img).arg("4M"));
    std::fs::read(&img).expect("read image")
}

/// Flips 1 to 8 random bits in the first `range` bytes of `image`,
/// `rounds` times, and runs the whole API over each result on another
/// thread: it must never panic, and finish within a time limit. Returns
/// how many results still listed their root.
fn fuzz(image: Vec<u8>, range: u64, rounds: usize, seed: u64) -> usize {
    // SHEAF_FUZZ_SCALE=20 for a longer run by hand.
    let rounds = rounds * std::env::var("SHEAF_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut x = seed;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut opened = 0;
        for _ in 0..rounds {
            let mut img = image.clone();
            for _ in 0..1 + rand() % 8 {
                let at = (rand() % range) as usize;
                img[at] ^= 1 << (rand() % 8);
            }
            let disk: Arc<dyn ReadAt> = Arc::new(img);
            let _ = files::partitions_of(&disk);
            let mut dirs = vec!["/".to_string()];
            // A breadth-first walk of what still reads, bounded.
            let mut seen = 0;
            while let Some(dir) = dirs.pop() {
                let Ok(entries) = files::list_in(&disk, None, &dir) else { continue };
                if dir == "/" {
                    opened += 1;
                }
                for e in entries {
                    seen += 1;
                    let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
                    if e.kind == EntryKind::Dir && seen < 200 {
                        dirs.push(path.clone());
                    }
                    // A corrupt size may claim terabytes of holes: stop early.
                    let mut left = 64 * MIB;
                    let _ = files::read_from(&disk, None, &path, &mut |d| {
                        left = left.checked_sub(d.len()).ok_or(FilesError::Abandoned)?;
                        Ok(())
                    });
                }
            }
        }
        let _ = done_tx.send(opened);
    });
    done_rx
        .recv_timeout(std::time::Duration::from_secs(120 * rounds as u64 / 300 + 60))
        .expect("finishes without a panic or a hang")
}

/// Bits flipped at random in the metadata of small images: superblock,
/// group descriptors, bitmaps, inodes and directories of ext4 (with and
/// without metadata checksums, which catch most flips before the parser
/// sees them); boot sector, FATs and directories of FAT; descriptors
/// and directories of ISO 9660. Errors, never a panic or a hang.
#[test]
fn flipped_bits_never_panic_or_hang() {
    assert!(fuzz(small_ext4_image("metadata_csum"), 512 << 10, 300, 0x2545_F491_4F6C_DD1D) > 0);
    assert!(fuzz(small_ext4_image("^metadata_csum"), 512 << 10, 400, 0x9E37_79B9_7F4A_7C15) > 0);

    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    small_tree(&src);
    std::fs::remove_file(src.join("link")).expect("no links on FAT");
    assert!(fuzz(fat_image(12, 1024, &src), 64 << 10, 300, 0x1234_5678_9ABC_DEF1) > 0);
    small_tree(&dir.path().join("iso"));
    let iso = dir.path().join("small.iso");
    run(Command::new("genisoimage").args(["-quiet", "-R", "-J", "-o"]).arg(&iso).arg(dir.path().join("iso")));
    assert!(fuzz(std::fs::read(&iso).expect("iso"), 64 << 10, 300, 0x0F0F_1234_5555_AAAB) > 0);
}

/// A snapshot of a mounted ext4 says it needs its journal replayed;
/// it is read all the same. (This journal, never used by a kernel, is
/// not in the format `ext4-view` replays: it is read without it.)
#[tokio::test]
async fn an_ext4_that_needs_recovery_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("ext4.img");
    std::fs::write(&img, small_ext4_image("metadata_csum")).expect("write");
    run(Command::new("debugfs").args(["-w", "-R", "feature needs_recovery"]).arg(&img));
    let b = back_up(std::fs::read(&img).expect("image")).await;
    assert_eq!(b.read(None, "/a/b/one").await.expect("read"), pattern(10, 5));
    assert_eq!(b.read(None, "/link").await.expect("read").len(), 200_000);
}

/// Unmounts on drop, whatever happens in the test.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The real case: an image copied while the kernel has it mounted
/// (`needs_recovery`, a journal the kernel wrote). Needs root and loop
/// devices; says so and passes where they cannot be had.
#[tokio::test]
async fn a_snapshot_of_a_mounted_ext4_is_read_through_its_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("ext4.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img).arg("24M"));
    let mounted = Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt).output();
    assert!(
        mounted.as_ref().is_ok_and(|o| o.status.success()),
        "this test mounts an ext4 image on a loop device, which needs root and loop devices: {mounted:?}"
    );
    let guard = Mounted(mnt.clone());
    let big = pattern(BIG, 4);
    std::fs::create_dir(mnt.join("d")).expect("mkdir");
    std::fs::write(mnt.join("d/big.bin"), &big).expect("write");
    std::fs::write(mnt.join("small.txt"), b"hi\n").expect("write");
    run(Command::new("sync").arg("-f").arg(mnt.join("small.txt")));
    let snapshot = std::fs::read(&img).expect("copy while mounted");
    drop(guard);
    assert_ne!(snapshot[1024 + 0x60] & 0x4, 0, "the copy needs recovery");
    let b = back_up(snapshot).await;
    assert_eq!(b.read(None, "/d/big.bin").await.expect("big"), big);
    assert_eq!(b.read(None, "/small.txt").await.expect("small"), b"hi\n");
}

/// A writer that fails once it has taken `left` bytes.
struct FailAfter {
    left: usize,
    taken: usize,
}

impl tokio::io::AsyncWrite for FailAfter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk full")));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        self.taken += n;
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A download whose writer fails stops the reader and says why (no
/// deadlock on the full channel between them).
#[tokio::test]
async fn a_failing_writer_stops_the_download() {
    let (image, _) = ext4_image(20);
    let b = back_up(image).await;
    let mut out = FailAfter { left: 300 << 10, taken: 0 };
    let e = files::read_file(&b.repo, &b.manifest, None, "/big.bin", &mut out).await.expect_err("the writer fails");
    assert!(matches!(&e, FilesError::Write(_)) && e.to_string().contains("disk full"), "{e}");
    assert_eq!(out.taken, 300 << 10);
    // The path is checked before anything is written.
    let mut out = FailAfter { left: 0, taken: 0 };
    let e = files::read_file(&b.repo, &b.manifest, None, "/missing", &mut out).await.expect_err("no such file");
    assert!(matches!(e, FilesError::NotFound(_)), "{e}");
}
