//! What an image file is, decided from its content (never its name), and
//! whether it is safe to import.
//!
//! Accepted: qcow2 (v2 and v3, compressed clusters included), ISO 9660 and
//! raw. A qcow2 header is checked field by field before any tool reads the
//! file: a backing file or an external data file (both name host paths), an
//! encrypted image, a virtual size beyond [`MAX_VIRTUAL_SIZE`], a cluster
//! size QEMU would not make, or tables that lie outside the file or cannot
//! cover the disk they claim are refused with a message that says what to
//! do. Formats Sheaf does not import (VMDK, VHD/VHDX, VDI, QED, LUKS) and
//! compressed archives (gzip, xz, zstd, bzip2) are named, not mistaken for
//! raw disks.

use std::io::Read as _;
use std::path::Path;

/// The largest disk an image may describe: 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Iso,
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Iso => "iso",
            Format::Raw => "raw",
        }
    }
}

/// What was found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    pub format: Format,
    /// Size of the disk it holds, in bytes.
    pub virtual_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read the image: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

fn refused(m: impl Into<String>) -> FormatError {
    FormatError::Refused(m.into())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Detects the format of the file at `path` and checks it.
pub fn detect(path: &Path) -> Result<Detected, FormatError> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Err(refused("the image is empty"));
    }
    let mut head = vec![0u8; 64 * 1024];
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    head.truncate(n);
    detect_bytes(&head, len, || {
        // The VHD footer is the last 512 bytes.
        use std::os::unix::fs::FileExt as _;
        let mut tail = [0u8; 512];
        if len >= 512 {
            let _ = f.read_exact_at(&mut tail, len - 512);
        }
        tail
    })
}

fn detect_bytes(head: &[u8], len: u64, tail: impl FnOnce() -> [u8; 512]) -> Result<Detected, FormatError> {
    if head.starts_with(b"QFI\xfb") {
        return qcow2(head, len).map(|virtual_size| Detected { format: Format::Qcow2, virtual_size });
    }
    for (magic, what, hint) in [
        (&b"KDMV"[..], "a VMDK disk", "convert it: qemu-img convert -O qcow2 disk.vmdk disk.qcow2"),
        (b"# Disk DescriptorFile", "a VMDK descriptor", "convert the disk it describes with qemu-img convert -O qcow2"),
        (b"vhdxfile", "a VHDX disk", "convert it: qemu-img convert -O qcow2 disk.vhdx disk.qcow2"),
        (b"conectix", "a VHD disk", "convert it: qemu-img convert -O qcow2 disk.vhd disk.qcow2"),
        (b"QED\0", "a QED disk", "convert it: qemu-img convert -O qcow2 disk.qed disk.qcow2"),
        (b"LUKS\xba\xbe", "a LUKS-encrypted volume", "import the decrypted disk"),
        (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip) and import the disk inside"),
        (b"\xfd7zXZ\0", "xz-compressed", "decompress it first (unxz) and import the disk inside"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (unzstd) and import the disk inside"),
        (b"BZh", "bzip2-compressed", "decompress it first (bunzip2) and import the disk inside"),
    ] {
        if head.starts_with(magic) {
            return Err(refused(format!("the file is {what}, which Sheaf does not import; {hint}")));
        }
    }
    if head.len() >= 0x44 && be32(head, 0x40).swap_bytes() == 0xbeda_107f {
        return Err(refused(
            "the file is a VDI disk, which Sheaf does not import; convert it: qemu-img convert -O qcow2 disk.vdi disk.qcow2",
        ));
    }
    if head.len() >= 0x8006 && &head[0x8001..0x8006] == b"CD001" {
        return Ok(Detected { format: Format::Iso, virtual_size: len });
    }
    if len >= 512 && tail().starts_with(b"conectix") {
        return Err(refused(
            "the file is a VHD disk, which Sheaf does not import; convert it: qemu-img convert -O qcow2 disk.vhd disk.qcow2",
        ));
    }
    if len > MAX_VIRTUAL_SIZE {
        return Err(refused(format!("the raw image is larger than the {} TiB limit", MAX_VIRTUAL_SIZE >> 40)));
    }
    Ok(Detected { format: Format::Raw, virtual_size: len })
}

/// Checks a qcow2 header; returns the virtual size.
fn qcow2(h: &[u8], file_len: u64) -> Result<u64, FormatError> {
    let lie = |m: String| {
        refused(format!("the qcow2 header is invalid: {m}; the file is corrupt or not made by a qcow2 tool"))
    };
    if h.len() < 72 {
        return Err(lie("it is shorter than a qcow2 header".into()));
    }
    let version = be32(h, 4);
    if version != 2 && version != 3 {
        return Err(lie(format!("version {version} (only 2 and 3 exist)")));
    }
    let backing_offset = be64(h, 8);
    let backing_len = be32(h, 16) as usize;
    if backing_offset != 0 {
        let name = usize::try_from(backing_offset)
            .ok()
            .and_then(|o| h.get(o..o.checked_add(backing_len.min(1023))?))
            .map(|b| String::from_utf8_lossy(b).chars().filter(|c| !c.is_control()).collect::<String>())
            .unwrap_or_default();
        return Err(refused(format!(
            "the qcow2 image refers to a backing file {name:?}, which an import cannot follow (it would name a path \
             on the host); flatten it first: qemu-img convert -O qcow2 overlay.qcow2 flat.qcow2"
        )));
    }
    let cluster_bits = be32(h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(lie(format!("cluster size 2^{cluster_bits} (qcow2 clusters are 512 B to 2 MiB)")));
    }
    let cluster = 1u64 << cluster_bits;
    let size = be64(h, 24);
    if size == 0 {
        return Err(lie("a virtual size of 0".into()));
    }
    if size > MAX_VIRTUAL_SIZE {
        return Err(refused(format!(
            "the qcow2 image claims a virtual size of {size} bytes, more than the {} TiB limit",
            MAX_VIRTUAL_SIZE >> 40
        )));
    }
    if be32(h, 32) != 0 {
        return Err(refused("the qcow2 image is encrypted; import the decrypted disk (qemu-img convert with its key)"));
    }
    let l1_size = be32(h, 36) as u64;
    let l1_offset = be64(h, 40);
    // One L2 table maps cluster/8 clusters.
    let per_l1 = cluster * (cluster / 8);
    let needed = size.div_ceil(per_l1);
    if l1_size < needed {
        return Err(lie(format!("its L1 table has {l1_size} entries but {needed} are needed for {size} bytes")));
    }
    if l1_size > needed.saturating_mul(2).max(1 << 20) {
        return Err(lie(format!("its L1 table has {l1_size} entries for a disk that needs {needed}")));
    }
    let in_file = |offset: u64, len: u64| {
        offset.is_multiple_of(cluster) && offset.checked_add(len).is_some_and(|e| e <= file_len)
    };
    if !in_file(l1_offset, l1_size * 8) {
        return Err(lie(format!("its L1 table ({l1_size} entries at {l1_offset}) is not inside the file")));
    }
    let rc_offset = be64(h, 48);
    let rc_clusters = be32(h, 56) as u64;
    if rc_clusters == 0 || !in_file(rc_offset, rc_clusters * cluster) {
        return Err(lie(format!("its refcount table ({rc_clusters} clusters at {rc_offset}) is not inside the file")));
    }
    let snapshots = be32(h, 60);
    if snapshots > 65536 {
        return Err(lie(format!("{snapshots} internal snapshots")));
    }
    if snapshots > 0 && !in_file(be64(h, 64), 0) {
        return Err(lie("its snapshot table is not inside the file".into()));
    }
    if version == 3 {
        if h.len() < 104 {
            return Err(lie("it is shorter than a version 3 header".into()));
        }
        let incompatible = be64(h, 72);
        if incompatible & 1 != 0 {
            return Err(refused(
                "the qcow2 image was not closed cleanly (dirty); repair it first: qemu-img check -r all FILE",
            ));
        }
        if incompatible & 2 != 0 {
            return Err(refused("the qcow2 image is marked corrupt; repair it first: qemu-img check -r all FILE"));
        }
        if incompatible & 4 != 0 {
            return Err(refused(
                "the qcow2 image keeps its data in an external file (a host path); convert it into one file first: \
                 qemu-img convert -O qcow2 disk.qcow2 whole.qcow2",
            ));
        }
        let unknown = incompatible & !(1 | 2 | 4 | 8 | 16);
        if unknown != 0 {
            return Err(lie(format!("unknown incompatible features {unknown:#x}")));
        }
        let refcount_order = be32(h, 96);
        if refcount_order > 6 {
            return Err(lie(format!("refcount order {refcount_order}")));
        }
        let header_len = be32(h, 100) as u64;
        if !(104..=cluster).contains(&header_len) {
            return Err(lie(format!("header length {header_len}")));
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img").args(args).output().expect("qemu-img");
        assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn real_images_are_recognised() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| d.path().join(n).display().to_string();
        std::fs::write(p("raw"), vec![7u8; 1 << 20]).expect("write");
        qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &p("raw"), &p("plain.img")]);
        qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", &p("raw"), &p("compressed")]);
        qemu_img(&["create", "-f", "qcow2", "-o", "compat=0.10", &p("v2"), "3G"]);
        for name in ["plain.img", "compressed", "v2"] {
            let got = detect(&d.path().join(name)).expect(name);
            assert_eq!(got.format, Format::Qcow2, "{name}");
        }
        assert_eq!(detect(&d.path().join("v2")).expect("v2").virtual_size, 3 << 30);
        assert_eq!(
            detect(&d.path().join("raw")).expect("raw"),
            Detected { format: Format::Raw, virtual_size: 1 << 20 }
        );
        // A file named .qcow2 that is raw is raw.
        std::fs::copy(p("raw"), p("fake.qcow2")).expect("copy");
        assert_eq!(detect(&d.path().join("fake.qcow2")).expect("fake").format, Format::Raw);
        let mut iso = vec![0u8; 0x9000];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(p("cd"), &iso).expect("write");
        assert_eq!(detect(&d.path().join("cd")).expect("iso").format, Format::Iso);
    }

    #[test]
    fn a_backing_file_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| d.path().join(n).display().to_string();
        qemu_img(&["create", "-f", "qcow2", &p("base"), "1M"]);
        qemu_img(&["create", "-f", "qcow2", "-F", "qcow2", "-b", &p("base"), &p("overlay")]);
        let e = detect(&d.path().join("overlay")).expect_err("refused").to_string();
        assert!(e.contains("backing file") && e.contains("base") && e.contains("flatten"), "{e}");
    }

    fn header(f: impl FnOnce(&mut Vec<u8>)) -> Result<Detected, FormatError> {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("i");
        qemu_img(&["create", "-f", "qcow2", &p.display().to_string(), "1G"]);
        let mut b = std::fs::read(&p).expect("read");
        f(&mut b);
        std::fs::write(&p, &b).expect("write");
        detect(&p)
    }

    #[test]
    fn lying_headers_are_refused() {
        let put64 = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        assert!(header(|_| {}).is_ok());
        for (what, want, edit) in [
            ("huge", "limit", Box::new(move |b: &mut Vec<u8>| put64(b, 24, 1 << 60)) as Box<dyn FnOnce(&mut Vec<u8>)>),
            ("l1 short", "L1 table", Box::new(move |b: &mut Vec<u8>| put64(b, 24, 1 << 44))),
            ("l1 outside", "not inside", Box::new(move |b: &mut Vec<u8>| put64(b, 40, 1 << 40))),
            ("cluster", "cluster size", Box::new(move |b: &mut Vec<u8>| put32(b, 20, 30))),
            ("crypt", "encrypted", Box::new(move |b: &mut Vec<u8>| put32(b, 32, 1))),
            ("version", "version", Box::new(move |b: &mut Vec<u8>| put32(b, 4, 9))),
            ("dirty", "not closed cleanly", Box::new(move |b: &mut Vec<u8>| put64(b, 72, 1))),
            ("external", "external file", Box::new(move |b: &mut Vec<u8>| put64(b, 72, 4))),
            ("unknown", "unknown incompatible", Box::new(move |b: &mut Vec<u8>| put64(b, 72, 1 << 40))),
            ("refcount", "refcount table", Box::new(move |b: &mut Vec<u8>| put64(b, 48, 1 << 50))),
            ("short", "shorter", Box::new(move |b: &mut Vec<u8>| b.truncate(40))),
        ] {
            let e = header(edit).expect_err(what).to_string();
            assert!(e.contains(want), "{what}: {e}");
        }
    }

    #[test]
    fn other_formats_are_named() {
        for (bytes, want) in [
            (&b"KDMV\x01\0\0\0"[..], "VMDK"),
            (b"\x1f\x8b\x08\0", "gzip"),
            (b"\xfd7zXZ\0\0", "xz"),
            (b"vhdxfile", "VHDX"),
            (b"LUKS\xba\xbe\0\x01", "LUKS"),
        ] {
            let mut head = bytes.to_vec();
            head.resize(4096, 0);
            let e = detect_bytes(&head, 4096, || [0; 512]).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut tail = [0u8; 512];
        tail[..8].copy_from_slice(b"conectix");
        let e = detect_bytes(&[1u8; 4096], 8192, || tail).expect_err("vhd").to_string();
        assert!(e.contains("VHD"), "{e}");
    }
}
