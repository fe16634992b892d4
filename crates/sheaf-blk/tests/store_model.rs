//! Property test of the replica store: long random sequences of writes,
//! zeroings, flushes, snapshots, reverts, snapshot deletions, expansions,
//! reopens and crashes, checked after every step against a plain in-memory
//! model of the volume and of every snapshot (and of which blocks changed
//! between snapshots).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sheaf_blk::store::{Replica, BLOCK};

struct Model {
    live: Vec<u8>,
    /// Snapshots oldest first.
    snaps: Vec<(String, Vec<u8>)>,
    /// What the volume read before any write: its base image, or zeros.
    origin: Vec<u8>,
}

/// Every block that reads differently in `to` than in `from` is in the
/// replica's change map between them.
fn check_changes(r: &Replica, from: (Option<&str>, &[u8]), to: (&str, &[u8]), step: usize, op: &str) {
    let blocks = to.1.len() as u64 / BLOCK;
    let map = r
        .changed_blocks(from.0, to.0, 0, blocks)
        .unwrap_or_else(|e| panic!("step {step} ({op}): changes {:?}..{}: {e}", from.0, to.0));
    assert_eq!(map.len() as u64, blocks.div_ceil(8));
    let block = BLOCK as usize;
    for (b, (x, y)) in from.1.chunks(block).zip(to.1.chunks(block)).enumerate() {
        let set = map[b / 8] & (1 << (b % 8)) != 0;
        assert!(set || x == y, "step {step} ({op}): block {b} changed {:?}..{} but is not in the map", from.0, to.0);
    }
}

fn check(r: &Replica, m: &Model, step: usize, op: &str) {
    let mut got = vec![0u8; m.live.len()];
    r.read(0, &mut got).unwrap_or_else(|e| panic!("step {step} ({op}): read failed: {e}"));
    if got != m.live {
        let first = got.iter().zip(&m.live).position(|(a, b)| a != b).unwrap_or(0);
        panic!("step {step} ({op}): volume differs from the model first at byte {first}");
    }
    let names: Vec<String> = r.snapshots().into_iter().map(|s| s.name).collect();
    let want: Vec<String> = m.snaps.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, want, "step {step} ({op}): snapshot list");
    for (name, data) in &m.snaps {
        let mut got = vec![0u8; data.len()];
        r.read_snapshot(name, 0, &mut got).unwrap_or_else(|e| panic!("step {step}: read {name}: {e}"));
        // A snapshot taken before an expansion reads as its old size padded with zeros.
        assert_eq!(&got[..], &data[..], "step {step} ({op}): snapshot {name} differs");
    }
    // Changes from each snapshot to the next, and from the start to each.
    for (i, (name, data)) in m.snaps.iter().enumerate() {
        check_changes(r, (None, &m.origin), (name, data), step, op);
        if let Some((prev, prev_data)) = i.checked_sub(1).map(|p| &m.snaps[p]) {
            check_changes(r, (Some(prev), prev_data), (name, data), step, op);
        }
    }
}

/// A base image of `blocks` blocks, a third of them data, in `dir`.
fn base_image(dir: &std::path::Path, blocks: u64, rng: &mut StdRng) -> Vec<u8> {
    let mut img = vec![0u8; (blocks * BLOCK) as usize];
    for b in 0..blocks {
        if rng.random_range(0..3) == 0 {
            let at = (b * BLOCK) as usize;
            rng.fill(&mut img[at..at + BLOCK as usize]);
        }
    }
    std::fs::create_dir_all(dir).expect("base dir");
    std::fs::write(dir.join(sheaf_blk::base::DATA_FILE), &img).expect("write base");
    sheaf_blk::base::build(dir, "image-1", |_, _| {}).expect("build base");
    img
}

fn run(seed: u64, steps: usize, with_base: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut size = 64 * BLOCK;
    let (mut r, live) = if with_base {
        // The base is smaller than the volume: the rest reads as zeros.
        let mut live = base_image(&dir.path().join("base"), 48, &mut rng);
        live.resize(size as usize, 0);
        (Replica::create_on_base(&path, "vol", size, &dir.path().join("base")).expect("create"), live)
    } else {
        (Replica::create(&path, "vol", size).expect("create"), vec![0; size as usize])
    };
    let mut m = Model { origin: live.clone(), live, snaps: Vec::new() };
    let mut next_snap = 0;
    let mut ops = BTreeMap::<&str, usize>::new();
    for step in 0..steps {
        let op = match rng.random_range(0..100) {
            0..=39 => "write",
            40..=49 => "zero",
            50..=56 => "flush",
            57..=66 => "snapshot",
            67..=74 => "delete",
            75..=79 => "revert",
            80..=82 => "expand",
            83..=90 => "reopen",
            91..=95 => "crash",
            _ => "read",
        };
        *ops.entry(op).or_default() += 1;
        match op {
            "write" | "zero" => {
                // Aligned runs, unaligned runs and single bytes.
                let len = match rng.random_range(0..3) {
                    0 => rng.random_range(1..=8) * BLOCK,
                    1 => rng.random_range(1..3 * BLOCK),
                    _ => 1,
                }
                .min(size);
                let offset = match rng.random_range(0..2) {
                    0 => rng.random_range(0..=(size - len) / BLOCK) * BLOCK,
                    _ => rng.random_range(0..=size - len),
                };
                let range = offset as usize..(offset + len) as usize;
                if op == "write" {
                    let byte: u8 = rng.random_range(1..=255);
                    let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                    r.write(offset, &data).expect("write");
                    m.live[range].copy_from_slice(&data);
                } else {
                    r.write_zeroes(offset, len).expect("write zeroes");
                    m.live[range].fill(0);
                }
            }
            "flush" => r.flush().expect("flush"),
            "snapshot" => {
                let name = format!("s{next_snap}");
                next_snap += 1;
                r.snapshot(&name).expect("snapshot");
                m.snaps.push((name, m.live.clone()));
            }
            "delete" if !m.snaps.is_empty() => {
                let i = rng.random_range(0..m.snaps.len());
                let (name, _) = m.snaps.remove(i);
                r.delete_snapshot(&name).expect("delete snapshot");
            }
            "revert" if !m.snaps.is_empty() => {
                let i = rng.random_range(0..m.snaps.len());
                let name = m.snaps[i].0.clone();
                let newer = i + 1 < m.snaps.len();
                if newer {
                    assert!(r.revert(&name, false).is_err(), "revert over newer snapshots must be refused");
                }
                r.revert(&name, true).expect("revert");
                m.snaps.truncate(i + 1);
                m.live = m.snaps[i].1.clone();
                m.live.resize(size as usize, 0);
            }
            "expand" if size < 256 * BLOCK => {
                size += rng.random_range(1..=16) * BLOCK;
                r.expand(size).expect("expand");
                m.live.resize(size as usize, 0);
                m.origin.resize(size as usize, 0);
                for (_, d) in &mut m.snaps {
                    d.resize(size as usize, 0);
                }
            }
            "reopen" => {
                r.close().expect("close");
                r = Replica::open(&path).expect("reopen");
            }
            "crash" => {
                // The process dies: nothing is flushed or marked clean.
                drop(r);
                r = Replica::open(&path).expect("open after crash");
            }
            _ => {}
        }
        check(&r, &m, step, op);
    }
    assert!(ops.values().all(|n| *n > 0), "every operation ran: {ops:?}");
}

#[test]
fn random_operations_match_the_model() {
    for seed in 0..32 {
        run(seed, 400, false);
    }
}

#[test]
fn random_operations_on_a_base_image_match_the_model() {
    for seed in 100..124 {
        run(seed, 400, true);
    }
}

#[test]
fn a_base_image_is_shared_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(7);
    let img = base_image(&dir.path().join("base"), 32, &mut rng);
    let base = dir.path().join("base");
    // Too small a volume is refused; two replicas share one base.
    assert!(Replica::create_on_base(&dir.path().join("small"), "v", 16 * BLOCK, &base).is_err());
    let mut a = Replica::create_on_base(&dir.path().join("a"), "v", 64 * BLOCK, &base).expect("a");
    let b = Replica::create_on_base(&dir.path().join("b"), "w", 64 * BLOCK, &base).expect("b");
    a.write(0, &[0xAB; 4096]).expect("write");
    let mut got = vec![0u8; img.len()];
    b.read(0, &mut got).expect("read b");
    assert_eq!(got, img, "b reads the base");
    a.read(0, &mut got).expect("read a");
    assert_eq!(&got[..4096], &[0xAB; 4096][..]);
    assert_eq!(&got[4096..], &img[4096..]);
    assert_eq!(a.stored_bytes(), BLOCK, "the base is not counted in the replica");
    // Zeroing a block the base has masks it.
    a.write_zeroes(0, 32 * BLOCK).expect("zero");
    a.read(0, &mut got).expect("read a");
    assert!(got.iter().all(|&x| x == 0));
    a.close().expect("close");
    b.close().expect("close");
    // A replica whose base was replaced by another image is refused.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    std::fs::write(other.join(sheaf_blk::base::DATA_FILE), &img).expect("write");
    sheaf_blk::base::build(&other, "image-2", |_, _| {}).expect("build");
    std::fs::remove_dir_all(&base).expect("rm");
    std::fs::rename(&other, &base).expect("mv");
    let err = Replica::open(&dir.path().join("a")).err().expect("refused").to_string();
    assert!(err.contains("image-2"), "{err}");
    // A corrupted base block is an error, not wrong data.
    std::fs::remove_dir_all(&base).expect("rm");
    base_image(&base, 32, &mut StdRng::seed_from_u64(7));
    let c = Replica::open(&dir.path().join("b")).expect("open b");
    let data_block = (0..32u64).find(|b| img[(b * BLOCK) as usize..][..BLOCK as usize].iter().any(|&x| x != 0));
    let bad = data_block.expect("a data block") * BLOCK;
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(base.join(sheaf_blk::base::DATA_FILE)).expect("open");
        f.write_all_at(&[0x55; 16], bad).expect("corrupt");
    }
    let mut buf = vec![0u8; BLOCK as usize];
    assert!(c.read(bad, &mut buf).is_err(), "a corrupt base block fails its checksum");
}

#[test]
fn corrupted_data_is_detected_and_bad_requests_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let mut r = Replica::create(&path, "vol", 16 * BLOCK).expect("create");
    r.write(0, &vec![7u8; BLOCK as usize]).expect("write");
    r.snapshot("base").expect("snapshot");
    r.close().expect("close");
    // Bit rot in an immutable snapshot layer.
    let data = std::fs::OpenOptions::new().write(true).open(path.join("layer-1.data")).expect("open layer");
    std::os::unix::fs::FileExt::write_all_at(&data, b"X", 100).expect("corrupt");
    let r = Replica::open(&path).expect("open");
    let mut buf = vec![0u8; BLOCK as usize];
    let err = r.read(0, &mut buf).expect_err("corruption must be detected");
    assert!(err.to_string().contains("does not match its checksum"), "{err}");
    // Out of range, bad sizes, unknown snapshots.
    assert!(r.read(16 * BLOCK - 1, &mut [0u8; 2]).is_err());
    assert!(Replica::create(&dir.path().join("x"), "v", 1000).is_err());
    assert!(r.read_snapshot("nope", 0, &mut buf).is_err());
}

#[test]
fn trimmed_space_is_freed_and_epochs_only_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let mut r = Replica::create(&path, "vol", 1024 * BLOCK).expect("create");
    r.write(0, &vec![1u8; (512 * BLOCK) as usize]).expect("write");
    r.flush().expect("flush");
    let allocated = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(p).expect("stat").blocks() * 512
    };
    let before = allocated(&path.join("layer-1.data"));
    assert!(before >= 512 * BLOCK, "{before}");
    r.write_zeroes(0, 512 * BLOCK).expect("trim");
    assert!(allocated(&path.join("layer-1.data")) < before / 4, "trim freed the space");
    assert_eq!(r.stored_bytes(), 0);
    r.set_epoch(5).expect("epoch");
    assert!(r.set_epoch(4).is_err(), "an older epoch is refused");
    r.close().expect("close");
    assert_eq!(Replica::open(&path).expect("open").epoch(), 5);
}

/// A rebuild copies a snapshot layer block runs at a time and syncs them
/// once at the end. After a crash in between, blocks whose data did not
/// reach the disk (simulated: the data file changed under the checksums)
/// are dropped when the replica opens, so the next rebuild copies them.
#[test]
fn an_interrupted_rebuild_is_rechecked_when_the_replica_opens() {
    let t = tempfile::tempdir().expect("tempdir");
    let size = 64 * BLOCK;
    let mut src = Replica::create(&t.path().join("src"), "v", size).expect("create");
    src.write(0, &vec![7u8; (8 * BLOCK) as usize]).expect("write");
    src.snapshot("s1").expect("snapshot");
    let sums = src.layer_sums("s1", 0, 64).expect("sums");
    let data = src.layer_data("s1", 0, 64).expect("data");
    assert_eq!(data.len() as u64, 8 * BLOCK, "only the data blocks travel");

    let dst_dir = t.path().join("dst");
    let mut dst = Replica::create(&dst_dir, "v", size).expect("create");
    dst.set_chain(&["s1".to_string()]).expect("set chain");
    assert!(dst.meta().rebuilding);
    dst.put_layer_blocks("s1", 0, &sums, &data).expect("put");
    assert_eq!(dst.layer_sums("s1", 0, 64).expect("sums"), sums);
    // A crash before the final flush: block 5's data never arrived.
    let layer = dst.meta().layers.iter().find(|l| l.snapshot.as_deref() == Some("s1")).expect("layer").id;
    drop(dst);
    let f =
        std::fs::OpenOptions::new().write(true).open(dst_dir.join(format!("layer-{layer}.data"))).expect("data file");
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; BLOCK as usize], 5 * BLOCK).expect("corrupt");
    let mut dst = Replica::open(&dst_dir).expect("open");
    let after = dst.layer_sums("s1", 0, 64).expect("sums");
    assert_ne!(after[40..48], sums[40..48], "block 5 is no longer trusted");
    assert_eq!(after[..40], sums[..40]);
    assert_eq!(after[48..], sums[48..]);
    // The next rebuild puts it back; the flush that records a generation
    // ends the rebuild and makes it durable.
    dst.put_layer_blocks("s1", 5, &sums[40..48], &data[(5 * BLOCK) as usize..(6 * BLOCK) as usize]).expect("put");
    dst.flush_as(3).expect("flush");
    assert!(!dst.meta().rebuilding);
    let mut buf = vec![0u8; (8 * BLOCK) as usize];
    dst.read(0, &mut buf).expect("read");
    assert!(buf.iter().all(|b| *b == 7));
    // Blocks that fail their checksum on arrival are refused, and nothing
    // of the request is written.
    let mut bad = data.clone();
    bad[0] ^= 1;
    assert!(dst.put_layer_blocks("s1", 0, &sums, &bad).is_err());
    dst.read(0, &mut buf).expect("read after a refused put");
    assert!(buf.iter().all(|b| *b == 7));
}
