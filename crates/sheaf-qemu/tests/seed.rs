//! Seed images: structural checks with a small ISO 9660 reader, then the
//! real tools (`isoinfo`, `genisoimage`, `blkid`) when they are installed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use sheaf_qemu::seed::{
    build_iso, configdrive_iso, nocloud_iso, ConfigDrive, ConfigDriveMetaData, DeviceData, IsoBuilder, NoCloud,
    NoCloudMetaData, SeedError, DEFAULT_MAX_SIZE, SECTOR_SIZE,
};

// ---------------------------------------------------------------------------
// A small ISO 9660 reader that checks what it reads.
// ---------------------------------------------------------------------------

fn both16(b: &[u8]) -> u16 {
    let le = u16::from_le_bytes([b[0], b[1]]);
    assert_eq!(le, u16::from_be_bytes([b[2], b[3]]), "both-endian u16 halves differ");
    le
}

fn both32(b: &[u8]) -> u32 {
    let le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    assert_eq!(le, u32::from_be_bytes([b[4], b[5], b[6], b[7]]), "both-endian u32 halves differ");
    le
}

#[derive(Clone, Debug)]
struct Record {
    extent: u32,
    size: u32,
    flags: u8,
    date: [u8; 7],
    id: Vec<u8>,
}

impl Record {
    fn parse(b: &[u8]) -> Record {
        let len = b[0] as usize;
        assert!(len >= 34 && len.is_multiple_of(2), "record length {len}");
        assert_eq!(b[1], 0, "extended attribute length");
        let id_len = b[32] as usize;
        assert_eq!(len, 33 + id_len + (1 - id_len % 2), "record length vs identifier");
        assert_eq!(both16(&b[28..32]), 1, "volume sequence number");
        Record {
            extent: both32(&b[2..10]),
            size: both32(&b[10..18]),
            flags: b[25],
            date: b[18..25].try_into().unwrap(),
            id: b[33..33 + id_len].to_vec(),
        }
    }

    fn is_dir(&self) -> bool {
        self.flags & 2 != 0
    }
}

struct Volume {
    kind: u8,
    volume_id: Vec<u8>,
    space: u32,
    path_table_size: u32,
    path_l: u32,
    path_m: u32,
    root: Record,
    escapes: Vec<u8>,
}

/// The volume descriptors from sector 16 to the terminator.
fn volumes(iso: &[u8]) -> Vec<Volume> {
    assert_eq!(iso.len() % SECTOR_SIZE, 0, "image is whole sectors");
    assert!(iso[..16 * SECTOR_SIZE].iter().all(|&b| b == 0), "system area is zero");
    let mut out = Vec::new();
    for s in 16.. {
        let v = &iso[s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE];
        assert_eq!(&v[1..6], b"CD001", "descriptor {s} identifier");
        assert_eq!(v[6], 1, "descriptor version");
        if v[0] == 255 {
            assert!(v[7..].iter().all(|&b| b == 0), "terminator is zero");
            break;
        }
        assert_eq!(both16(&v[120..124]), 1, "volume set size");
        assert_eq!(both16(&v[124..128]), 1, "volume sequence number");
        assert_eq!(both16(&v[128..132]), SECTOR_SIZE as u16, "logical block size");
        assert_eq!(v[881], 1, "file structure version");
        assert_eq!(v[156], 34, "root record length");
        out.push(Volume {
            kind: v[0],
            volume_id: v[40..72].to_vec(),
            space: both32(&v[80..88]),
            path_table_size: both32(&v[132..140]),
            path_l: u32::from_le_bytes(v[140..144].try_into().unwrap()),
            path_m: u32::from_be_bytes(v[148..152].try_into().unwrap()),
            root: Record::parse(&v[156..190]),
            escapes: v[88..91].to_vec(),
        });
    }
    out
}

fn primary(iso: &[u8]) -> Volume {
    volumes(iso).into_iter().find(|v| v.kind == 1).expect("primary volume descriptor")
}

fn joliet(iso: &[u8]) -> Volume {
    volumes(iso).into_iter().find(|v| v.kind == 2 && v.escapes == b"%/E").expect("Joliet descriptor")
}

/// The records of a directory; checks that none crosses a sector.
fn read_dir(iso: &[u8], dir: &Record) -> Vec<Record> {
    assert_eq!(dir.size as usize % SECTOR_SIZE, 0, "directory size is whole sectors");
    let start = dir.extent as usize * SECTOR_SIZE;
    let data = &iso[start..start + dir.size as usize];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = data[pos] as usize;
        if len == 0 {
            pos = (pos / SECTOR_SIZE + 1) * SECTOR_SIZE;
            continue;
        }
        assert_eq!(pos / SECTOR_SIZE, (pos + len - 1) / SECTOR_SIZE, "record crosses a sector");
        out.push(Record::parse(&data[pos..pos + len]));
        pos += len;
    }
    out
}

fn name(id: &[u8], joliet: bool) -> String {
    if joliet {
        assert_eq!(id.len() % 2, 0);
        let units: Vec<u16> = id.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        String::from_utf16(&units).unwrap()
    } else {
        String::from_utf8(id.to_vec()).unwrap()
    }
}

/// The tree: path → record (directories included, root is "/"), checking
/// "." and "..", the record order and the dates.
fn walk(iso: &[u8], vol: &Volume, joliet: bool) -> BTreeMap<String, Record> {
    let mut out = BTreeMap::new();
    let mut todo = vec![("/".to_string(), vol.root.clone(), vol.root.clone())];
    out.insert("/".to_string(), vol.root.clone());
    while let Some((path, dir, parent)) = todo.pop() {
        let records = read_dir(iso, &dir);
        assert!(records.len() >= 2, "{path}: . and ..");
        assert_eq!((records[0].id.as_slice(), records[0].extent), (&[0u8][..], dir.extent), "{path}: .");
        assert_eq!((records[1].id.as_slice(), records[1].extent), (&[1u8][..], parent.extent), "{path}: ..");
        assert_eq!(records[0].size, dir.size);
        assert_eq!(records[1].size, parent.size);
        let ids: Vec<&Vec<u8>> = records[2..].iter().map(|r| &r.id).collect();
        if joliet {
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted, "{path}: Joliet records sorted");
        } else {
            let key = |id: &Vec<u8>| {
                let s = String::from_utf8(id.clone()).unwrap();
                let s = s.split(';').next().unwrap().to_string();
                match s.split_once('.') {
                    Some((n, e)) => (n.to_string(), e.to_string()),
                    None => (s, String::new()),
                }
            };
            let keys: Vec<_> = ids.iter().map(|id| key(id)).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "{path}: primary records sorted");
        }
        for r in &records {
            assert_eq!(r.date, records[0].date, "one timestamp everywhere");
        }
        for r in records.into_iter().skip(2) {
            let n = name(&r.id, joliet);
            let child = if path == "/" { format!("/{n}") } else { format!("{path}/{n}") };
            assert!(out.insert(child.clone(), r.clone()).is_none(), "duplicate {child}");
            if r.is_dir() {
                todo.push((child, r, dir.clone()));
            }
        }
    }
    out
}

/// The path table at `loc` (little- or big-endian): (id, extent, parent).
fn path_table(iso: &[u8], loc: u32, size: u32, big: bool) -> Vec<(Vec<u8>, u32, u16)> {
    let start = loc as usize * SECTOR_SIZE;
    let data = &iso[start..start + size as usize];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = data[pos] as usize;
        assert_eq!(data[pos + 1], 0);
        let e: [u8; 4] = data[pos + 2..pos + 6].try_into().unwrap();
        let p: [u8; 2] = data[pos + 6..pos + 8].try_into().unwrap();
        let (extent, parent) = if big {
            (u32::from_be_bytes(e), u16::from_be_bytes(p))
        } else {
            (u32::from_le_bytes(e), u16::from_le_bytes(p))
        };
        out.push((data[pos + 8..pos + 8 + len].to_vec(), extent, parent));
        pos += 8 + len + len % 2;
    }
    assert_eq!(pos, data.len(), "path table size");
    out
}

/// Checks a tree's path tables against its directories.
fn check_path_tables(iso: &[u8], vol: &Volume, tree: &BTreeMap<String, Record>, joliet: bool) {
    let l = path_table(iso, vol.path_l, vol.path_table_size, false);
    let m = path_table(iso, vol.path_m, vol.path_table_size, true);
    assert_eq!(l, m, "L and M path tables agree");
    let dirs: BTreeMap<u32, &String> = tree.iter().filter(|(_, r)| r.is_dir()).map(|(p, r)| (r.extent, p)).collect();
    assert_eq!(l.len(), dirs.len(), "one path table record per directory");
    assert_eq!(l[0], (vec![0], vol.root.extent, 1), "root record");
    let mut last = (0usize, 0u16);
    for (id, extent, parent) in &l[1..] {
        let path = dirs.get(extent).expect("path table extent is a directory");
        let (parent_path, last_name) = path.rsplit_once('/').unwrap();
        assert_eq!(&name(id, joliet), last_name);
        let parent_path = if parent_path.is_empty() { "/" } else { parent_path };
        assert_eq!(l[*parent as usize - 1].1, tree[parent_path].extent, "{path}: parent number");
        let level = path.matches('/').count();
        assert!((level, *parent) >= last, "path table order");
        last = (level, *parent);
    }
}

/// Every check, both trees; returns the Joliet tree's files and contents.
fn check(iso: &[u8], label: &str) -> BTreeMap<String, Vec<u8>> {
    let p = primary(iso);
    let j = joliet(iso);
    let vols = volumes(iso);
    assert_eq!(vols.len(), 2, "primary and Joliet descriptors");
    assert_eq!(p.space as usize * SECTOR_SIZE, iso.len(), "volume space size");
    assert_eq!(j.space, p.space);
    let mut want = label.as_bytes().to_vec();
    want.resize(32, b' ');
    assert_eq!(p.volume_id, want, "primary volume id");
    assert_eq!(&iso[32808..32840], &want[..], "volume id at byte 32808");
    let jid: Vec<u16> = j.volume_id.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    assert_eq!(String::from_utf16(&jid).unwrap().trim_end(), &label[..label.len().min(16)]);

    let ptree = walk(iso, &p, false);
    let jtree = walk(iso, &j, true);
    check_path_tables(iso, &p, &ptree, false);
    check_path_tables(iso, &j, &jtree, true);

    // Both trees have the same shape and share file extents.
    let shape = |t: &BTreeMap<String, Record>| {
        let mut v: Vec<(bool, u32, u32)> =
            t.values().filter(|r| !r.is_dir()).map(|r| (r.is_dir(), r.extent, r.size)).collect();
        v.sort();
        v
    };
    assert_eq!(shape(&ptree), shape(&jtree));
    assert_eq!(ptree.values().filter(|r| r.is_dir()).count(), jtree.values().filter(|r| r.is_dir()).count());
    for (path, r) in &ptree {
        if path == "/" {
            continue;
        }
        let last = path.rsplit('/').next().unwrap();
        if r.is_dir() {
            assert!(last.len() <= 8 && last.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
        } else {
            let (n, rest) = last.split_once('.').expect("file names have a dot");
            let (e, v) = rest.split_once(';').expect("file names have a version");
            assert_eq!(v, "1");
            for part in [n, e] {
                assert!(part.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'), "{last}");
            }
            assert!(n.len() <= 8 && e.len() <= 3 && !(n.is_empty() && e.is_empty()), "{last}");
        }
    }
    // Primary names are unique per directory even ignoring the version and
    // a trailing dot (how Linux shows them without Joliet).
    let mut seen = std::collections::HashSet::new();
    for path in ptree.keys() {
        assert!(seen.insert(path.trim_end_matches(";1").trim_end_matches('.').to_string()), "{path}");
    }

    // No two files overlap, and all lie inside the volume.
    let mut spans: Vec<(u32, u32)> = jtree
        .values()
        .map(|r| (r.extent, r.extent + (r.size as usize).div_ceil(SECTOR_SIZE) as u32))
        .filter(|(a, b)| a != b)
        .collect();
    spans.sort();
    spans.dedup();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "extents overlap: {w:?}");
    }
    assert!(spans.last().unwrap().1 <= p.space);

    jtree
        .into_iter()
        .filter(|(_, r)| !r.is_dir())
        .map(|(path, r)| {
            let at = r.extent as usize * SECTOR_SIZE;
            (path, iso[at..at + r.size as usize].to_vec())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Files of awkward sizes, nested directories, a directory that spans
/// several sectors and names that collide in 8.3.
fn sample_files() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("user-data".to_string(), b"#cloud-config\n# marker: iso-ok\n".to_vec()),
        ("meta-data".to_string(), b"instance-id: i-1\nlocal-hostname: tiny1\n".to_vec()),
        ("network-config".to_string(), b"version: 2\n".to_vec()),
        ("vendor-data".to_string(), Vec::new()),
        ("empty".to_string(), Vec::new()),
        ("one".to_string(), vec![b'x']),
        ("exact-2048".to_string(), bytes(2048, 1)),
        ("over-2049".to_string(), bytes(2049, 2)),
        ("big-100k.bin".to_string(), bytes(100 * 1024 + 7, 3)),
        ("openstack/latest/user_data".to_string(), b"#!/bin/sh\necho hi\n".to_vec()),
        ("openstack/latest/meta_data.json".to_string(), br#"{"uuid":"u"}"#.to_vec()),
        ("openstack/latest/network_data.json".to_string(), b"{}".to_vec()),
        ("openstack/content/0000".to_string(), b"auto eth0\n".to_vec()),
        ("user_data".to_string(), b"collides with user-data in 8.3".to_vec()),
        ("a/b/c/d/e/f/g/deepest".to_string(), b"eight levels".to_vec()),
        ("Mixed Case & spaces (1).TXT".to_string(), b"joliet keeps it".to_vec()),
        ("unicode-\u{e9}\u{4e2d}".to_string(), b"ucs-2".to_vec()),
        ("x".repeat(64), b"64 characters".to_vec()),
    ];
    for i in 0..60 {
        files.push((format!("many/a-rather-long-file-name-number-{i:02}.txt"), format!("file {i}\n").into_bytes()));
    }
    files
}

fn have(tool: &str) -> bool {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is not installed: run scripts/install-deps.sh --test");
    found
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn write_iso(dir: &Path, name: &str, iso: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, iso).unwrap();
    path
}

// ---------------------------------------------------------------------------
// Structure
// ---------------------------------------------------------------------------

#[test]
fn descriptors() {
    let iso = build_iso("cidata", &[("user-data", &b"hi"[..])]).unwrap();
    let v = volumes(&iso);
    assert_eq!(iso[16 * SECTOR_SIZE], 1);
    assert_eq!(iso[17 * SECTOR_SIZE], 2);
    assert_eq!(iso[18 * SECTOR_SIZE], 255);
    assert_eq!(&iso[17 * SECTOR_SIZE + 88..17 * SECTOR_SIZE + 91], b"%/E");
    assert_eq!(&iso[32808..32840], b"cidata                          ");
    // Joliet volume id: UCS-2 BE, space padded.
    let mut jid = Vec::new();
    for c in "cidata".bytes() {
        jid.extend_from_slice(&[0, c]);
    }
    while jid.len() < 32 {
        jid.extend_from_slice(&[0, b' ']);
    }
    assert_eq!(v[1].volume_id, jid);
    // Dates: the epoch, GMT.
    let pvd = &iso[16 * SECTOR_SIZE..17 * SECTOR_SIZE];
    assert_eq!(&pvd[813..830], b"1970010100000000\0");
    assert_eq!(&pvd[830..847], b"1970010100000000\0");
    assert_eq!(&pvd[847..864], b"0000000000000000\0");
    assert_eq!(v[0].root.date, [70, 1, 1, 0, 0, 0, 0]);
    assert!(v[0].root.is_dir() && v[1].root.is_dir());
    assert_eq!(v[0].root.size, 2048);
    let files = check(&iso, "cidata");
    assert_eq!(files, BTreeMap::from([("/user-data".to_string(), b"hi".to_vec())]));
}

#[test]
fn sample_tree_round_trips() {
    let files = sample_files();
    let iso = build_iso("cidata", &files).unwrap();
    let read = check(&iso, "cidata");
    let want: BTreeMap<String, Vec<u8>> = files.iter().map(|(p, d)| (format!("/{p}"), d.clone())).collect();
    assert_eq!(read.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert_eq!(read, want);
    // The 60-file directory takes more than one sector in both trees.
    let p = primary(&iso);
    assert!(walk(&iso, &p, false)["/MANY"].size > 2048);
    assert!(walk(&iso, &joliet(&iso), true)["/many"].size > 2048);
}

#[test]
fn primary_names_are_8_3() {
    let iso = build_iso(
        "cidata",
        &[
            ("user-data", &b"1"[..]),
            ("user_data", b"2"),
            ("meta_data.json", b"3"),
            ("openstack/latest/user_data", b"4"),
            ("openstack/content/0000", b"5"),
        ],
    )
    .unwrap();
    let tree = walk(&iso, &primary(&iso), false);
    let paths: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "/",
            "/META_DAT.JSO;1",
            "/OPENSTAC",
            "/OPENSTAC/CONTENT",
            "/OPENSTAC/CONTENT/0000.;1",
            "/OPENSTAC/LATEST",
            "/OPENSTAC/LATEST/USER_DAT.;1",
            "/USER_DA1.;1",
            "/USER_DAT.;1",
        ]
    );
}

#[test]
fn reproducible() {
    let files = sample_files();
    let a = build_iso("cidata", &files).unwrap();
    let b = build_iso("cidata", &files).unwrap();
    assert_eq!(a, b);
    let mut builder = IsoBuilder::new("cidata");
    for (p, d) in &files {
        builder.add_file(p, d.clone());
    }
    assert_eq!(builder.build().unwrap(), a);
    let later = builder.clone().timestamp(1_700_000_000).build().unwrap();
    assert_eq!(later.len(), a.len());
    assert_ne!(later, a);
    assert_eq!(&later[16 * SECTOR_SIZE + 813..16 * SECTOR_SIZE + 829], b"2023111422132000");
    assert_eq!(primary(&later).root.date, [123, 11, 14, 22, 13, 20, 0]);
    check(&later, "cidata");
    // Without padding: 150 sectors less.
    let unpadded = builder.padding(false).build().unwrap();
    assert_eq!(unpadded.len() + 150 * SECTOR_SIZE, a.len());
    check(&unpadded, "cidata");
}

#[test]
fn empty_image_and_labels() {
    let iso = build_iso::<&str, &[u8]>("config-2", &[]).unwrap();
    assert!(check(&iso, "config-2").is_empty());
    let long = "A-RATHER-LONG-VOLUME-ID-32-CHARS";
    assert_eq!(long.len(), 32);
    check(&build_iso(long, &[("f", b"x")]).unwrap(), long);
    assert!(matches!(build_iso("", &[("f", b"x")]), Err(SeedError::InvalidVolumeId(_))));
    assert!(matches!(build_iso("cidata", &[("a/../b", b"x")]), Err(SeedError::InvalidPath { .. })));
    assert!(matches!(build_iso("cidata", &[("a", b"x"), ("/a", b"y")]), Err(SeedError::DuplicatePath(_))));
}

#[test]
fn size_limit() {
    let seed = NoCloud {
        user_data: vec![b'#'; DEFAULT_MAX_SIZE as usize],
        meta_data: NoCloudMetaData::new("i-1"),
        ..Default::default()
    };
    let err = nocloud_iso(&seed).unwrap_err();
    assert!(matches!(err, SeedError::TooLarge { limit, .. } if limit == DEFAULT_MAX_SIZE), "{err}");
    assert!(err.to_string().contains("over the limit of 16777216 bytes"), "{err}");
    // Just under the limit still builds.
    let fits = NoCloud { user_data: vec![b'#'; DEFAULT_MAX_SIZE as usize - 200 * SECTOR_SIZE], ..seed };
    assert!(nocloud_iso(&fits).unwrap().len() as u64 <= DEFAULT_MAX_SIZE);
}

// ---------------------------------------------------------------------------
// Cloud-init content
// ---------------------------------------------------------------------------

fn tiny_nocloud() -> NoCloud {
    let mut meta_data = NoCloudMetaData::new("i-tiny1");
    meta_data.local_hostname = Some("tiny1".into());
    NoCloud { user_data: b"#cloud-config\n# marker: iso-ok\n".to_vec(), meta_data, ..Default::default() }
}

#[test]
fn nocloud_layout() {
    let seed = tiny_nocloud();
    let files = check(&nocloud_iso(&seed).unwrap(), "cidata");
    assert_eq!(
        files,
        BTreeMap::from([
            ("/meta-data".to_string(), b"instance-id: i-tiny1\nlocal-hostname: tiny1\n".to_vec()),
            ("/user-data".to_string(), seed.user_data.clone()),
        ])
    );

    let mut full = seed.clone();
    full.network_data = Some("version: 2\nethernets: {}\n".into());
    full.vendor_data = Some(b"#cloud-config\n".to_vec());
    full.meta_data.public_keys.insert("key1".into(), "ssh-ed25519 AAAAC3 a@b".into());
    let files = check(&nocloud_iso(&full).unwrap(), "cidata");
    assert_eq!(files.keys().collect::<Vec<_>>(), ["/meta-data", "/network-config", "/user-data", "/vendor-data"]);
    assert_eq!(files["/network-config"], b"version: 2\nethernets: {}\n");
    assert_eq!(
        files["/meta-data"],
        b"instance-id: i-tiny1\nlocal-hostname: tiny1\npublic-keys:\n  \"key1\": \"ssh-ed25519 AAAAC3 a@b\"\n"
    );

    // An empty network config is left out, like KubeVirt does.
    let mut empty_net = seed.clone();
    empty_net.network_data = Some(String::new());
    assert!(!check(&nocloud_iso(&empty_net).unwrap(), "cidata").contains_key("/network-config"));

    // Network data alone is enough; user-data is then empty.
    let net_only = NoCloud {
        network_data: Some("version: 2\n".into()),
        meta_data: NoCloudMetaData::new("i-1"),
        ..Default::default()
    };
    assert_eq!(check(&nocloud_iso(&net_only).unwrap(), "cidata")["/user-data"], b"");
    // Neither is an error, as is a missing instance id.
    let nothing = NoCloud { meta_data: NoCloudMetaData::new("i-1"), ..Default::default() };
    assert!(matches!(nocloud_iso(&nothing), Err(SeedError::NoData)));
    let no_id = NoCloud { meta_data: NoCloudMetaData::default(), ..seed };
    assert!(matches!(nocloud_iso(&no_id), Err(SeedError::NoInstanceId)));
}

#[test]
fn configdrive_layout() {
    let mut meta_data = ConfigDriveMetaData::for_vmi("vm1", "default", "6a1f2b3c-0000-4000-8000-000000000001", "tiny1");
    meta_data.public_keys.insert("key1".into(), "ssh-ed25519 AAAAC3 a@b".into());
    meta_data.devices.push(DeviceData {
        kind: "nic".into(),
        bus: "pci".into(),
        address: "0000:01:00.0".into(),
        mac: Some("52:54:00:00:00:01".into()),
        tags: vec!["default".into()],
        ..Default::default()
    });
    let seed = ConfigDrive {
        user_data: b"#cloud-config\n# marker: iso-ok\n".to_vec(),
        network_data: Some(r#"{"links":[]}"#.into()),
        meta_data,
    };
    let files = check(&configdrive_iso(&seed).unwrap(), "config-2");
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["/openstack/latest/meta_data.json", "/openstack/latest/network_data.json", "/openstack/latest/user_data"]
    );
    let md: serde_json::Value = serde_json::from_slice(&files["/openstack/latest/meta_data.json"]).unwrap();
    assert_eq!(
        md,
        serde_json::json!({
            "instance_id": "vm1.default",
            "hostname": "tiny1",
            "uuid": "6a1f2b3c-0000-4000-8000-000000000001",
            "devices": [{"type": "nic", "bus": "pci", "address": "0000:01:00.0",
                         "mac": "52:54:00:00:00:01", "tags": ["default"]}],
            "public_keys": {"key1": "ssh-ed25519 AAAAC3 a@b"},
        })
    );
    assert_eq!(files["/openstack/latest/user_data"], seed.user_data);
    assert_eq!(files["/openstack/latest/network_data.json"], br#"{"links":[]}"#);

    let minimal = ConfigDrive { network_data: None, ..seed.clone() };
    assert!(!check(&configdrive_iso(&minimal).unwrap(), "config-2").contains_key("/openstack/latest/network_data.json"));
    let nothing = ConfigDrive { user_data: Vec::new(), network_data: None, ..seed };
    assert!(matches!(configdrive_iso(&nothing), Err(SeedError::NoData)));
}

// ---------------------------------------------------------------------------
// Real tools
// ---------------------------------------------------------------------------

#[test]
fn isoinfo_reads_everything() {
    if !have("isoinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // isoinfo prints Joliet names in Latin-1 ('_' for the rest), so the
    // non-ASCII name is left to the structural tests.
    let files: Vec<_> = sample_files().into_iter().filter(|(p, _)| p.is_ascii()).collect();
    let iso = write_iso(dir.path(), "seed.iso", &build_iso("cidata", &files).unwrap());

    let info = String::from_utf8(run(Command::new("isoinfo").arg("-d").arg("-i").arg(&iso))).unwrap();
    assert!(info.contains("CD-ROM is in ISO 9660 format"), "{info}");
    assert!(info.lines().any(|l| l == "Volume id: cidata"), "{info}");
    assert!(info.contains("Joliet with UCS level 3 found"), "{info}");
    assert!(info.contains("Logical block size is: 2048"), "{info}");

    let listed = String::from_utf8(run(Command::new("isoinfo").args(["-J", "-f", "-i"]).arg(&iso))).unwrap();
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    let mut want: Vec<String> = Vec::new();
    for (p, _) in &files {
        let mut prefix = String::new();
        for part in p.split('/') {
            prefix = format!("{prefix}/{part}");
            want.push(prefix.clone());
        }
    }
    want.sort();
    want.dedup();
    assert_eq!(listed, want);

    for (path, data) in &files {
        let got = run(Command::new("isoinfo").args(["-J", "-x", &format!("/{path}"), "-i"]).arg(&iso));
        assert_eq!(got.len(), data.len(), "{path}");
        assert!(got == *data, "{path}: content differs");
    }

    // The primary tree too, by its 8.3 names.
    let primary = String::from_utf8(run(Command::new("isoinfo").args(["-f", "-i"]).arg(&iso))).unwrap();
    assert!(primary.lines().any(|l| l == "/USER_DAT.;1"), "{primary}");
    assert!(primary.lines().any(|l| l == "/OPENSTAC/LATEST/META_DAT.JSO;1"), "{primary}");
    assert_eq!(primary.lines().count(), want.len());
    let got = run(Command::new("isoinfo").args(["-x", "/OPENSTAC/CONTENT/0000.;1", "-i"]).arg(&iso));
    assert_eq!(got, b"auto eth0\n");
    let big = run(Command::new("isoinfo").args(["-x", "/BIG_100K.BIN;1", "-i"]).arg(&iso));
    assert_eq!(big, bytes(100 * 1024 + 7, 3));
}

#[test]
fn volume_id_matches_genisoimage() {
    if !have("genisoimage") || !have("isoinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for label in ["cidata", "config-2"] {
        let src = dir.path().join(format!("src-{label}"));
        std::fs::create_dir_all(src.join("openstack/latest")).unwrap();
        std::fs::write(src.join("user-data"), b"#cloud-config\n").unwrap();
        std::fs::write(src.join("openstack/latest/meta_data.json"), b"{}").unwrap();
        let theirs = dir.path().join(format!("g-{label}.iso"));
        run(Command::new("genisoimage")
            .args(["-quiet", "-o"])
            .arg(&theirs)
            .args(["-volid", label, "-joliet", "-rock"])
            .arg(&src));
        let theirs = std::fs::read(&theirs).unwrap();
        let ours =
            build_iso(label, &[("user-data", &b"#cloud-config\n"[..]), ("openstack/latest/meta_data.json", b"{}")])
                .unwrap();
        assert_eq!(&ours[32808..32840], &theirs[32808..32840], "{label}: primary volume id");
        assert_eq!(joliet(&ours).volume_id, joliet(&theirs).volume_id, "{label}: Joliet volume id");
        let ours_path = write_iso(dir.path(), &format!("s-{label}.iso"), &ours);
        let theirs_path = dir.path().join(format!("g-{label}.iso"));
        let list = |p: &Path| {
            let mut l: Vec<String> = String::from_utf8(run(Command::new("isoinfo").args(["-J", "-f", "-i"]).arg(p)))
                .unwrap()
                .lines()
                .map(String::from)
                .collect();
            l.sort();
            l
        };
        assert_eq!(list(&ours_path), list(&theirs_path), "{label}: Joliet names");
        let volid = |p: &Path| {
            String::from_utf8(run(Command::new("isoinfo").arg("-d").arg("-i").arg(p)))
                .unwrap()
                .lines()
                .find(|l| l.starts_with("Volume id:"))
                .map(String::from)
        };
        assert_eq!(volid(&ours_path), volid(&theirs_path));
    }
}

#[test]
fn blkid_reads_the_label() {
    if !have("blkid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nocloud = write_iso(dir.path(), "nocloud.iso", &nocloud_iso(&tiny_nocloud()).unwrap());
    let seed = ConfigDrive {
        user_data: b"#cloud-config\n".to_vec(),
        meta_data: ConfigDriveMetaData::for_vmi("vm1", "ns", "u-1", "vm1"),
        ..Default::default()
    };
    let configdrive = write_iso(dir.path(), "configdrive.iso", &configdrive_iso(&seed).unwrap());
    for (path, label) in [(nocloud, "cidata"), (configdrive, "config-2")] {
        let out = String::from_utf8(run(Command::new("blkid").args(["-p", "-o", "export"]).arg(&path))).unwrap();
        assert!(out.lines().any(|l| l == "TYPE=iso9660"), "{out}");
        assert!(out.lines().any(|l| l == format!("LABEL={label}")), "{out}");
    }
}
