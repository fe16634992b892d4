//! Which blocks changed between two snapshots, asked of real replica
//! servers (in-process, on unix sockets) that an engine writes to: what an
//! incremental backup reads. The answers must match the engine's writes,
//! leave out what is written after the snapshot, and keep coming while a
//! newer engine owns the volume (snapshots are immutable; no epoch).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sheaf_blk::engine::{Engine, EngineError, SnapshotReader};
use sheaf_blk::replica_server::{Address, Server, ServerOptions};
use sheaf_blk::store::{Replica, BLOCK, MAX_DELTA_BLOCKS};

const BLOCKS: u64 = 256;

/// A replica server of volume `vol` on a unix socket in `dir`.
fn replica(dir: &std::path::Path, name: &str) -> Address {
    let replica = Replica::create(&dir.join(name), "vol", BLOCKS * BLOCK).expect("replica");
    let address = Address::Unix(dir.join(format!("{name}.sock")));
    let server = Server::bind(replica, std::slice::from_ref(&address), ServerOptions::default()).expect("bind");
    std::thread::spawn(move || server.run());
    address
}

fn blocks_in(map: &[u8]) -> BTreeSet<u64> {
    (0..map.len() as u64 * 8).filter(|i| map[(i / 8) as usize] & (1 << (i % 8)) != 0).collect()
}

async fn changed(reader: &SnapshotReader, from: Option<&str>) -> BTreeSet<u64> {
    blocks_in(&reader.changed(from, 0, BLOCKS).await.expect("changed blocks"))
}

async fn write_block(engine: &Engine, b: u64, byte: u8) {
    engine.write(b * BLOCK, vec![byte; BLOCK as usize]).await.expect("write");
}

fn set(blocks: &[u64]) -> BTreeSet<u64> {
    blocks.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_blocks_follow_the_engines_writes() {
    let d = tempfile::tempdir().expect("tempdir");
    let replicas = [replica(d.path(), "r1"), replica(d.path(), "r2")];
    let engine = Arc::new(Engine::start("vol", &replicas).await.expect("engine"));

    // s1: blocks 0..4 and 70, plus a trim of blocks never written (no
    // change: they read as zeros before and after).
    for b in [0, 1, 2, 3, 70] {
        write_block(&engine, b, 1).await;
    }
    engine.write_zeroes(100 * BLOCK, (4 * BLOCK) as u32).await.expect("trim");
    engine.snapshot("s1").await.expect("snapshot s1");
    // s2: a rewrite, a zeroing over s1's data, a partial write, a block
    // written and trimmed again before the snapshot.
    write_block(&engine, 1, 2).await;
    engine.write_zeroes(2 * BLOCK, BLOCK as u32).await.expect("zero");
    // The second replica joins by a rebuild (its snapshot of the head
    // meanwhile is merged away again): from now on it gets every write.
    engine.rebuild(&replicas[1]).await.expect("rebuild the second replica");
    assert_eq!(engine.healthy().len(), 2);
    engine.write(130 * BLOCK + 17, b"a few bytes".to_vec()).await.expect("partial write");
    write_block(&engine, 150, 2).await;
    engine.write_zeroes(150 * BLOCK, BLOCK as u32).await.expect("trim");
    engine.snapshot("s2").await.expect("snapshot s2");

    let s1 = SnapshotReader::open(&replicas[0], "s1").await.expect("open s1");
    assert_eq!((s1.snapshot(), s1.size()), ("s1", BLOCKS * BLOCK));
    assert_eq!(changed(&s1, None).await, set(&[0, 1, 2, 3, 70]));
    for r in &replicas {
        let s2 = SnapshotReader::open(r, "s2").await.expect("open s2");
        assert_eq!(changed(&s2, Some("s1")).await, set(&[1, 2, 130]), "replica {r}");
        assert_eq!(changed(&s2, None).await, set(&[0, 1, 2, 3, 70, 130]), "replica {r}");
    }
    let s2 = SnapshotReader::open(&replicas[1], "s2").await.expect("open s2");

    // An incremental backup: s1's image plus s2's changed blocks is s2.
    let mut image = s1.read(0, (BLOCKS * BLOCK) as u32).await.expect("read s1");
    for b in changed(&s2, Some("s1")).await {
        let at = (b * BLOCK) as usize;
        image[at..at + BLOCK as usize].copy_from_slice(&s2.read(b * BLOCK, BLOCK as u32).await.expect("read"));
    }
    assert!(image == s2.read(0, (BLOCKS * BLOCK) as u32).await.expect("read s2"), "s1 + delta = s2");

    // The engine keeps writing after s2: none of it is in s2's changes,
    // asked for while the writes go on.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (engine, stop, written) = (engine.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut round = 0u8;
            while !stop.load(Ordering::SeqCst) {
                for b in 200..216 {
                    write_block(&engine, b, round).await;
                    written.fetch_add(1, Ordering::SeqCst);
                }
                engine.write_zeroes(0, BLOCK as u32).await.expect("zero");
                round = round.wrapping_add(1);
            }
        })
    };
    while written.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let before = written.load(Ordering::SeqCst);
    let mut asked = 0;
    while asked < 10 || written.load(Ordering::SeqCst) < before + 32 {
        assert_eq!(changed(&s2, Some("s1")).await, set(&[1, 2, 130]), "while the engine writes");
        assert_eq!(changed(&s2, None).await, set(&[0, 1, 2, 3, 70, 130]));
        asked += 1;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    engine.snapshot("s3").await.expect("snapshot s3");
    let s3 = SnapshotReader::open(&replicas[0], "s3").await.expect("open s3");
    let after: BTreeSet<u64> = (200..216).chain([0]).collect();
    assert_eq!(changed(&s3, Some("s2")).await, after);

    // A newer engine takes the volume over: the old one is fenced, the
    // readers (which carry no epoch) are still answered.
    let newer = Engine::start("vol", &replicas).await.expect("newer engine");
    assert!(newer.epoch() > engine.epoch());
    assert!(engine.write(0, vec![9; BLOCK as usize]).await.is_err(), "the old engine is fenced");
    assert_eq!(changed(&s2, Some("s1")).await, set(&[1, 2, 130]), "answered at an old epoch");
    let late = SnapshotReader::open(&replicas[1], "s3").await.expect("open s3 under the newer engine");
    assert_eq!(changed(&late, Some("s2")).await, after);

    // Deleting the snapshot in between merges its changes into the next.
    newer.delete_snapshot("s2").await.expect("delete s2");
    let want: BTreeSet<u64> = set(&[1, 2, 130]).union(&after).copied().collect();
    assert_eq!(changed(&s3, Some("s1")).await, want);
    assert_eq!(changed(&late, Some("s1")).await, want);
    let e = s3.changed(Some("s2"), 0, BLOCKS).await.expect_err("s2 is gone");
    assert!(e.to_string().contains(r#"snapshot "s2" does not exist"#), "{e}");
}

#[tokio::test]
async fn bad_change_requests_are_refused_with_the_reason() {
    let d = tempfile::tempdir().expect("tempdir");
    let a = replica(d.path(), "r");
    let engine = Engine::start("vol", std::slice::from_ref(&a)).await.expect("engine");
    write_block(&engine, 5, 1).await;
    engine.snapshot("s1").await.expect("snapshot");
    engine.snapshot("s2").await.expect("snapshot");
    let s1 = SnapshotReader::open(&a, "s1").await.expect("open s1");
    let s2 = SnapshotReader::open(&a, "s2").await.expect("open s2");
    // Ranges: partial, at the end, empty.
    assert_eq!(s1.changed(None, 1, 10).await.expect("range"), [0b1_0000, 0]);
    assert_eq!(s1.changed(None, BLOCKS - 1, 1).await.expect("last block"), [0]);
    assert!(s1.changed(None, 3, 0).await.expect("nothing").is_empty());
    assert_eq!(s2.changed(Some("s1"), 0, BLOCKS).await.expect("empty s2"), vec![0; (BLOCKS / 8) as usize]);

    let refused = |r: Result<Vec<u8>, EngineError>| match r {
        Err(EngineError::Replica { replica, message }) => {
            assert_eq!(replica, a.to_string());
            message
        }
        other => panic!("expected a replica error, got {other:?}"),
    };
    let m = refused(s1.changed(Some("s2"), 0, BLOCKS).await);
    assert!(m.contains(r#"snapshot "s2" is not older than snapshot "s1""#), "{m}");
    let m = refused(s1.changed(Some("s1"), 0, BLOCKS).await);
    assert!(m.contains("is not older than"), "{m}");
    let m = refused(s2.changed(Some("nope"), 0, BLOCKS).await);
    assert!(m.contains(r#"snapshot "nope" does not exist"#), "{m}");
    let m = refused(s2.changed(None, BLOCKS - 1, 2).await);
    assert!(m.contains("beyond the end of the volume"), "{m}");
    let m = refused(s2.changed(None, 0, MAX_DELTA_BLOCKS + 1).await);
    assert!(m.contains("at most"), "{m}");
}
