//! One conformance suite for every [`Store`] backend.
//!
//! Each case in [`cases`] is a generic async function over `Arc<dyn Store>`;
//! the `conformance!` macro runs every case against SQLite (a fresh file in
//! a temporary directory) and against etcd (a fresh `/usr/bin/etcd` process
//! on loopback ports, see `support/etcd.rs`), as `sqlite::<case>` and
//! `etcd::<case>`. Run one backend with e.g. `cargo nextest run -p
//! sheaf-store sqlite::` or `cargo test -p sheaf-store --test conformance
//! etcd::`. Cases specific to etcd are in `etcd_only`.

#[path = "support/etcd.rs"]
mod etcd_support;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use sheaf_store::etcd::EtcdStore;
use sheaf_store::sqlite::SqliteStore;
use sheaf_store::Store;

use etcd_support::EtcdProcess;

/// A store under test and whatever must live as long as it.
struct Fixture {
    store: Arc<dyn Store>,
    // Dropped after `store` (field order): the directory or etcd process.
    _guard: Box<dyn Any + Send>,
}

async fn sqlite_fixture() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("sheaf.db"))?;
    Ok(Fixture { store: Arc::new(store), _guard: Box::new(dir) })
}

async fn etcd_fixture() -> anyhow::Result<Fixture> {
    let etcd = EtcdProcess::start().await?;
    let store = EtcdStore::connect(&etcd.endpoints(), "/sheaf-test").await?;
    Ok(Fixture { store: Arc::new(store), _guard: Box::new(etcd) })
}

/// Upper bound of one case, so that a hung watch fails instead of blocking.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

async fn run_case<F, Fut>(fixture: Fixture, case: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let result = tokio::time::timeout(CASE_TIMEOUT, case(fixture.store.clone())).await;
    drop(fixture);
    match result {
        Ok(r) => r,
        Err(_) => anyhow::bail!("case did not finish within {CASE_TIMEOUT:?}"),
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::run_case(super::sqlite_fixture().await?, super::cases::$case).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::run_case(super::etcd_fixture().await?, super::cases::$case).await
                }
            )*
        }
    };
}

conformance!(
    create_get,
    update_cas,
    delete,
    revisions_increase,
    list_prefix_and_order,
    list_paging_snapshot,
    list_compacted,
    watch_from_now,
    watch_resume_replays_history,
    watch_no_gaps_under_writes,
    watch_compacted,
    watch_progress,
    concurrent_cas_counter,
    concurrent_create,
    list_larger_than_a_message,
);

/// Helpers shared by the cases.
mod util {
    use std::time::Duration;

    use anyhow::bail;
    use futures::StreamExt;
    use sheaf_store::{Event, KeyValue, ListOptions, Revision, WatchItem, WatchStream};
    use tokio::time::{timeout, Instant};

    /// How long to wait for something that should happen promptly.
    pub const WAIT: Duration = Duration::from_secs(10);

    pub fn kv(key: &str, value: &str, create_revision: Revision, mod_revision: Revision) -> KeyValue {
        KeyValue { key: key.to_string(), value: value.as_bytes().to_vec(), create_revision, mod_revision }
    }

    pub fn prefix(p: &str) -> ListOptions {
        ListOptions { prefix: p.to_string(), ..Default::default() }
    }

    pub fn keys(items: &[KeyValue]) -> Vec<&str> {
        items.iter().map(|kv| kv.key.as_str()).collect()
    }

    pub async fn next_item(w: &mut WatchStream, within: Duration) -> anyhow::Result<WatchItem> {
        match timeout(within, w.next()).await {
            Err(_) => bail!("no watch item within {within:?}"),
            Ok(None) => bail!("watch stream ended"),
            Ok(Some(Err(e))) => bail!("watch failed: {e}"),
            Ok(Some(Ok(item))) => Ok(item),
        }
    }

    /// The next event, skipping bookmarks.
    pub async fn next_event(w: &mut WatchStream) -> anyhow::Result<Event> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match next_item(w, left).await? {
                WatchItem::Event(e) => return Ok(e),
                WatchItem::Progress(_) => continue,
            }
        }
    }

    /// Fails if an event (or error, or the end) arrives within `within`.
    pub async fn expect_quiet(w: &mut WatchStream, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, w.next()).await {
                Err(_) => return Ok(()),
                Ok(Some(Ok(WatchItem::Progress(_)))) => continue,
                Ok(Some(Ok(WatchItem::Event(e)))) => bail!("unexpected event {e:?}"),
                Ok(Some(Err(e))) => bail!("watch failed: {e}"),
                Ok(None) => bail!("watch stream ended"),
            }
        }
    }
}

mod cases {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use anyhow::{bail, ensure, Context};
    use sheaf_store::{Event, EventKind, ListOptions, Revision, Store, StoreError, WatchItem};
    use tokio::time::Instant;

    use crate::util::{expect_quiet, keys, kv, next_event, next_item, prefix, WAIT};

    type Result = anyhow::Result<()>;

    pub async fn create_get(s: Arc<dyn Store>) -> Result {
        assert_eq!(s.get("/t/a").await?, None);
        let r1 = s.create("/t/a", b"one".to_vec()).await?;
        ensure!(r1 > 0, "revisions start at 1, got {r1}");
        assert_eq!(s.get("/t/a").await?, Some(kv("/t/a", "one", r1, r1)));

        match s.create("/t/a", b"two".to_vec()).await {
            Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/t/a"),
            other => bail!("second create: expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(s.get("/t/a").await?, Some(kv("/t/a", "one", r1, r1)));

        // Neighbours of the key are other keys.
        assert_eq!(s.get("/t").await?, None);
        assert_eq!(s.get("/t/").await?, None);
        assert_eq!(s.get("/t/a/").await?, None);
        assert_eq!(s.get("/t/ab").await?, None);

        // Empty and binary values round-trip.
        let r2 = s.create("/t/empty", Vec::new()).await?;
        assert_eq!(s.get("/t/empty").await?, Some(kv("/t/empty", "", r2, r2)));
        let binary: Vec<u8> = (0..=255u8).rev().collect();
        let r3 = s.create("/t/binary", binary.clone()).await?;
        let got = s.get("/t/binary").await?.context("binary key missing")?;
        assert_eq!(got.value, binary);
        assert_eq!((got.create_revision, got.mod_revision), (r3, r3));
        Ok(())
    }

    pub async fn update_cas(s: Arc<dyn Store>) -> Result {
        let r1 = s.create("/u/a", b"v1".to_vec()).await?;
        let r2 = s.update("/u/a", b"v2".to_vec(), r1).await?;
        ensure!(r2 > r1, "update revision {r2} not after create {r1}");
        assert_eq!(s.get("/u/a").await?, Some(kv("/u/a", "v2", r1, r2)));

        // A stale expected revision conflicts and reports the actual one.
        match s.update("/u/a", b"v3".to_vec(), r1).await {
            Err(StoreError::Conflict { key, expected, actual }) => {
                assert_eq!((key.as_str(), expected, actual), ("/u/a", r1, r2));
            }
            other => bail!("stale update: expected Conflict, got {other:?}"),
        }
        match s.update("/u/a", b"v3".to_vec(), 0).await {
            Err(StoreError::Conflict { expected: 0, actual, .. }) => assert_eq!(actual, r2),
            other => bail!("update expecting 0: expected Conflict, got {other:?}"),
        }
        assert_eq!(s.get("/u/a").await?, Some(kv("/u/a", "v2", r1, r2)));

        // Updates never create.
        for expected in [0, r2] {
            match s.update("/u/missing", b"x".to_vec(), expected).await {
                Err(StoreError::NotFound { key }) => assert_eq!(key, "/u/missing"),
                other => bail!("update of a missing key: expected NotFound, got {other:?}"),
            }
        }
        assert_eq!(s.get("/u/missing").await?, None);

        let r3 = s.update("/u/a", b"v3".to_vec(), r2).await?;
        ensure!(r3 > r2);
        assert_eq!(s.get("/u/a").await?, Some(kv("/u/a", "v3", r1, r3)));
        Ok(())
    }

    pub async fn delete(s: Arc<dyn Store>) -> Result {
        let ra = s.create("/d/a", b"A".to_vec()).await?;
        let rb = s.create("/d/b", b"B".to_vec()).await?;
        let rb2 = s.update("/d/b", b"B2".to_vec(), rb).await?;

        // Unconditional delete returns the deletion revision and last value.
        let (rd, last) = s.delete("/d/a", None).await?;
        ensure!(rd > rb2, "deletion revision {rd} not after {rb2}");
        assert_eq!(last, kv("/d/a", "A", ra, rd));
        assert_eq!(s.get("/d/a").await?, None);

        for expected in [None, Some(ra)] {
            match s.delete("/d/a", expected).await {
                Err(StoreError::NotFound { key }) => assert_eq!(key, "/d/a"),
                other => bail!("delete of a deleted key: expected NotFound, got {other:?}"),
            }
        }

        // Conditional delete.
        match s.delete("/d/b", Some(rb)).await {
            Err(StoreError::Conflict { key, expected, actual }) => {
                assert_eq!((key.as_str(), expected, actual), ("/d/b", rb, rb2));
            }
            other => bail!("stale delete: expected Conflict, got {other:?}"),
        }
        assert_eq!(s.get("/d/b").await?, Some(kv("/d/b", "B2", rb, rb2)));
        let (rd2, last) = s.delete("/d/b", Some(rb2)).await?;
        ensure!(rd2 > rd);
        assert_eq!(last, kv("/d/b", "B2", rb, rd2));
        assert_eq!(s.get("/d/b").await?, None);

        // A new key of the same name is a new generation.
        let rc = s.create("/d/a", b"A again".to_vec()).await?;
        ensure!(rc > rd2);
        assert_eq!(s.get("/d/a").await?, Some(kv("/d/a", "A again", rc, rc)));
        assert!(s.list(prefix("/d/")).await?.items == vec![kv("/d/a", "A again", rc, rc)]);
        Ok(())
    }

    pub async fn revisions_increase(s: Arc<dyn Store>) -> Result {
        let mut revs = Vec::new();
        for i in 0..5 {
            revs.push(s.create(&format!("/r/{i}"), vec![i]).await?);
        }
        revs.push(s.update("/r/0", b"x".to_vec(), revs[0]).await?);
        revs.push(s.delete("/r/1", None).await?.0);
        revs.push(s.create("/elsewhere/x", b"x".to_vec()).await?);
        revs.push(s.update("/r/4", b"y".to_vec(), revs[4]).await?);
        // Every successful write gets the *next* revision.
        for pair in revs.windows(2) {
            ensure!(pair[1] == pair[0] + 1, "revisions not consecutive: {revs:?}");
        }
        let last = *revs.last().context("no writes")?;
        assert_eq!(s.revision().await?, last);

        // Failed writes do not consume revisions.
        assert!(matches!(s.create("/r/2", vec![]).await, Err(StoreError::AlreadyExists { .. })));
        assert!(matches!(s.update("/r/3", vec![], revs[0]).await, Err(StoreError::Conflict { .. })));
        assert!(matches!(s.update("/r/1", vec![], revs[1]).await, Err(StoreError::NotFound { .. })));
        assert!(matches!(s.delete("/r/1", None).await, Err(StoreError::NotFound { .. })));
        assert!(matches!(s.delete("/r/2", Some(1)).await, Err(StoreError::Conflict { .. })));
        assert_eq!(s.revision().await?, last);
        assert_eq!(s.list(prefix("/r/")).await?.revision, last);

        let next = s.create("/r/9", vec![]).await?;
        assert_eq!(next, last + 1);
        Ok(())
    }

    /// More data than one gRPC message (4 MiB) holds, in one list.
    pub async fn list_larger_than_a_message(s: Arc<dyn Store>) -> Result {
        let value = vec![b'x'; 200 * 1024];
        for i in 0..30 {
            s.create(&format!("/big/{i:03}"), value.clone()).await?;
        }
        let page = s.list(prefix("/big/")).await?;
        assert_eq!(page.items.len(), 30);
        assert!(!page.more);
        assert!(page.items.iter().all(|kv| kv.value.len() == value.len()));
        let limited = s.list(ListOptions { limit: 25, ..prefix("/big/") }).await?;
        assert_eq!(limited.items.len(), 25);
        assert!(limited.more);
        Ok(())
    }

    pub async fn list_prefix_and_order(s: Arc<dyn Store>) -> Result {
        let created = ["/a/2", "/a/1", "/a/10", "/a/9", "/a/b/c", "/ab/1", "/a", "/b/1", "/a/\u{e9}", "/a/B"];
        let mut all = BTreeMap::new();
        for key in created {
            let rev = s.create(key, key.as_bytes().to_vec()).await?;
            all.insert(key.to_string(), kv(key, key, rev, rev));
        }
        let current = s.revision().await?;
        let under =
            |p: &str| -> Vec<_> { all.iter().filter(|(k, _)| k.starts_with(p)).map(|(_, v)| v.clone()).collect() };

        // Byte order, and "/a/" does not include "/ab/" or "/a".
        let a = s.list(prefix("/a/")).await?;
        assert_eq!(keys(&a.items), ["/a/1", "/a/10", "/a/2", "/a/9", "/a/B", "/a/b/c", "/a/\u{e9}"]);
        assert_eq!(a.items, under("/a/"));
        assert!(!a.more);
        assert_eq!(a.revision, current);

        let ab = s.list(prefix("/ab/")).await?;
        assert_eq!(ab.items, under("/ab/"));
        assert_eq!(keys(&ab.items), ["/ab/1"]);
        let none = s.list(prefix("/c/")).await?;
        assert!(none.items.is_empty() && !none.more);
        assert_eq!(none.revision, current);
        let everything = s.list(prefix("")).await?;
        assert_eq!(everything.items, all.values().cloned().collect::<Vec<_>>());

        // Limits.
        let two = s.list(ListOptions { limit: 2, ..prefix("/a/") }).await?;
        assert_eq!(keys(&two.items), ["/a/1", "/a/10"]);
        assert!(two.more);
        let exact = s.list(ListOptions { limit: 7, ..prefix("/a/") }).await?;
        assert_eq!(exact.items, under("/a/"));
        assert!(!exact.more, "a limit equal to the number of keys leaves no more");
        let more = s.list(ListOptions { limit: 6, ..prefix("/a/") }).await?;
        assert_eq!(more.items.len(), 6);
        assert!(more.more);

        // start_after is exclusive and stays inside the prefix.
        let after = |k: &str, limit: usize| ListOptions { start_after: Some(k.to_string()), limit, ..prefix("/a/") };
        let rest = s.list(after("/a/2", 0)).await?;
        assert_eq!(keys(&rest.items), ["/a/9", "/a/B", "/a/b/c", "/a/\u{e9}"]);
        let one = s.list(after("/a/9", 1)).await?;
        assert_eq!(keys(&one.items), ["/a/B"]);
        assert!(one.more);
        let last = s.list(after("/a/b/c", 1)).await?;
        assert_eq!(keys(&last.items), ["/a/\u{e9}"]);
        assert!(!last.more);
        let end = s.list(after("/a/\u{e9}", 0)).await?;
        assert!(end.items.is_empty() && !end.more);
        let before = s.list(after("/", 0)).await?;
        assert_eq!(before.items, under("/a/"));
        let missing = s.list(after("/a/3", 0)).await?;
        assert_eq!(keys(&missing.items), ["/a/9", "/a/B", "/a/b/c", "/a/\u{e9}"]);

        // Deleted keys are not listed.
        s.delete("/a/10", None).await?;
        let a = s.list(prefix("/a/")).await?;
        assert_eq!(keys(&a.items), ["/a/1", "/a/2", "/a/9", "/a/B", "/a/b/c", "/a/\u{e9}"]);
        Ok(())
    }

    pub async fn list_paging_snapshot(s: Arc<dyn Store>) -> Result {
        let mut original = Vec::new();
        for i in 0..10 {
            let key = format!("/p/k{i:02}");
            let rev = s.create(&key, format!("v{i}").into_bytes()).await?;
            original.push(kv(&key, &format!("v{i}"), rev, rev));
        }
        s.create("/q/outside", vec![]).await?;

        let first = s.list(ListOptions { limit: 3, ..prefix("/p/") }).await?;
        let snapshot = first.revision;
        assert_eq!(snapshot, s.revision().await?);
        assert_eq!(first.items, original[..3]);
        assert!(first.more);

        // Writes between pages: before, inside and after the read position.
        let k05 = &original[5];
        s.create("/p/k015", b"new".to_vec()).await?;
        s.create("/p/k035", b"new".to_vec()).await?;
        s.update("/p/k05", b"changed".to_vec(), k05.mod_revision).await?;
        s.delete("/p/k07", None).await?;
        s.delete("/p/k00", None).await?;
        s.create("/p/k10", b"new".to_vec()).await?;
        ensure!(s.revision().await? > snapshot);

        let mut pages = vec![first];
        while pages.last().is_some_and(|p| p.more) {
            ensure!(pages.len() < 10, "paging does not end");
            let last_key = pages.last().and_then(|p| p.items.last()).context("empty page with more")?;
            let page = s
                .list(ListOptions {
                    start_after: Some(last_key.key.clone()),
                    limit: 3,
                    revision: Some(snapshot),
                    ..prefix("/p/")
                })
                .await?;
            assert_eq!(page.revision, snapshot, "a page read at a revision reports it");
            pages.push(page);
        }
        let sizes: Vec<usize> = pages.iter().map(|p| p.items.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let paged: Vec<_> = pages.into_iter().flat_map(|p| p.items).collect();
        assert_eq!(paged, original, "pages at a fixed revision form the snapshot");

        let whole = s.list(ListOptions { revision: Some(snapshot), ..prefix("/p/") }).await?;
        assert_eq!(whole.items, original);
        assert!(!whole.more);

        let now = s.list(prefix("/p/")).await?;
        assert_eq!(
            keys(&now.items),
            [
                "/p/k01", "/p/k015", "/p/k02", "/p/k03", "/p/k035", "/p/k04", "/p/k05", "/p/k06", "/p/k08", "/p/k09",
                "/p/k10"
            ]
        );
        let changed = now.items.iter().find(|kv| kv.key == "/p/k05").context("k05")?;
        assert_eq!(changed.value, b"changed");
        assert_eq!(changed.create_revision, k05.create_revision);
        Ok(())
    }

    pub async fn list_compacted(s: Arc<dyn Store>) -> Result {
        let keep = s.create("/c/keep", b"kept".to_vec()).await?;
        let r1 = s.create("/c/a", b"1".to_vec()).await?;
        let r2 = s.update("/c/a", b"2".to_vec(), r1).await?;
        let r3 = s.create("/c/b", b"b".to_vec()).await?;
        let r4 = s.update("/c/a", b"4".to_vec(), r2).await?;
        let (r5, _) = s.delete("/c/b", None).await?;
        s.compact(r4).await?;

        for old in [r1, r3] {
            match s.list(ListOptions { revision: Some(old), ..prefix("/c/") }).await {
                Err(StoreError::Compacted { requested, compacted }) => {
                    assert_eq!((requested, compacted), (old, r4));
                }
                other => bail!("list at compacted {old}: expected Compacted, got {other:?}"),
            }
        }

        // The compaction revision itself is still readable, current values
        // written before it are kept.
        let at = s.list(ListOptions { revision: Some(r4), ..prefix("/c/") }).await?;
        assert_eq!(at.items, [kv("/c/a", "4", r1, r4), kv("/c/b", "b", r3, r3), kv("/c/keep", "kept", keep, keep)]);
        assert_eq!(at.revision, r4);
        let at5 = s.list(ListOptions { revision: Some(r5), ..prefix("/c/") }).await?;
        assert_eq!(keys(&at5.items), ["/c/a", "/c/keep"]);
        assert_eq!(s.get("/c/keep").await?, Some(kv("/c/keep", "kept", keep, keep)));
        assert_eq!(s.get("/c/a").await?, Some(kv("/c/a", "4", r1, r4)));

        let current = s.revision().await?;
        match s.list(ListOptions { revision: Some(current + 5), ..prefix("/c/") }).await {
            Err(StoreError::FutureRevision { requested, current: c }) => {
                assert_eq!((requested, c), (current + 5, current));
            }
            other => bail!("list in the future: expected FutureRevision, got {other:?}"),
        }

        // Compacting again, or to an older revision, is a no-op; the future
        // is refused.
        s.compact(r4).await?;
        s.compact(r2).await?;
        match s.list(ListOptions { revision: Some(r3), ..prefix("/c/") }).await {
            Err(StoreError::Compacted { compacted, .. }) => assert_eq!(compacted, r4),
            other => bail!("expected Compacted, got {other:?}"),
        }
        match s.compact(current + 10).await {
            Err(StoreError::FutureRevision { requested, .. }) => {
                assert_eq!(requested, current + 10)
            }
            other => bail!("compact in the future: expected FutureRevision, got {other:?}"),
        }
        // Writes go on after a compaction.
        let r6 = s.update("/c/a", b"6".to_vec(), r4).await?;
        assert_eq!(r6, current + 1);
        Ok(())
    }

    pub async fn watch_from_now(s: Arc<dyn Store>) -> Result {
        s.create("/w/old", b"old".to_vec()).await?;
        let mut w = s.watch("/w/", 0, false).await?;

        let r1 = s.create("/w/new", b"1".to_vec()).await?;
        s.create("/wx/other", b"not under /w/".to_vec()).await?;
        let r2 = s.update("/w/new", b"2".to_vec(), r1).await?;
        s.create("/v/other", b"".to_vec()).await?;
        let (r3, _) = s.delete("/w/new", None).await?;

        let e1 = next_event(&mut w).await?;
        assert_eq!(e1, Event { kind: EventKind::Create, kv: kv("/w/new", "1", r1, r1), prev: None });
        let e2 = next_event(&mut w).await?;
        assert_eq!(
            e2,
            Event { kind: EventKind::Update, kv: kv("/w/new", "2", r1, r2), prev: Some(kv("/w/new", "1", r1, r1)) }
        );
        let e3 = next_event(&mut w).await?;
        assert_eq!(
            e3,
            Event { kind: EventKind::Delete, kv: kv("/w/new", "2", r1, r3), prev: Some(kv("/w/new", "2", r1, r2)) }
        );
        expect_quiet(&mut w, Duration::from_millis(500)).await?;

        // A second watch from now does not see the past either.
        let mut w2 = s.watch("/w/", 0, false).await?;
        expect_quiet(&mut w2, Duration::from_millis(300)).await?;
        let r4 = s.update("/w/old", b"newer".to_vec(), s.get("/w/old").await?.context("old")?.mod_revision).await?;
        let e = next_event(&mut w2).await?;
        assert_eq!((e.kind, e.kv.key.as_str(), e.kv.mod_revision), (EventKind::Update, "/w/old", r4));
        let e = next_event(&mut w).await?;
        assert_eq!(e.kv.mod_revision, r4);
        Ok(())
    }

    pub async fn watch_resume_replays_history(s: Arc<dyn Store>) -> Result {
        let r1 = s.create("/h/a", b"a1".to_vec()).await?;
        let r2 = s.update("/h/a", b"a2".to_vec(), r1).await?;
        let r3 = s.create("/h/b", b"b1".to_vec()).await?;
        let (r4, _) = s.delete("/h/a", None).await?;
        s.create("/hx/z", b"outside".to_vec()).await?;
        let r5 = s.update("/h/b", b"b2".to_vec(), r3).await?;

        let history = [
            Event { kind: EventKind::Update, kv: kv("/h/a", "a2", r1, r2), prev: Some(kv("/h/a", "a1", r1, r1)) },
            Event { kind: EventKind::Create, kv: kv("/h/b", "b1", r3, r3), prev: None },
            Event { kind: EventKind::Delete, kv: kv("/h/a", "a2", r1, r4), prev: Some(kv("/h/a", "a2", r1, r2)) },
            Event { kind: EventKind::Update, kv: kv("/h/b", "b2", r3, r5), prev: Some(kv("/h/b", "b1", r3, r3)) },
        ];

        let mut w = s.watch("/h/", r1, false).await?;
        for expected in &history {
            assert_eq!(&next_event(&mut w).await?, expected);
        }
        // Then live, without a gap or a repeat at the seam.
        let r6 = s.create("/h/c", b"c".to_vec()).await?;
        let (r7, _) = s.delete("/h/b", Some(r5)).await?;
        assert_eq!(
            next_event(&mut w).await?,
            Event { kind: EventKind::Create, kv: kv("/h/c", "c", r6, r6), prev: None }
        );
        assert_eq!(
            next_event(&mut w).await?,
            Event { kind: EventKind::Delete, kv: kv("/h/b", "b2", r3, r7), prev: Some(kv("/h/b", "b2", r3, r5)) }
        );
        expect_quiet(&mut w, Duration::from_millis(500)).await?;

        // Resuming in the middle replays only what follows.
        let mut mid = s.watch("/h/", r4, false).await?;
        assert_eq!(next_event(&mut mid).await?, history[3]);
        assert_eq!(next_event(&mut mid).await?.kv.mod_revision, r6);
        assert_eq!(next_event(&mut mid).await?.kv.mod_revision, r7);
        expect_quiet(&mut mid, Duration::from_millis(300)).await?;

        // From the current revision: nothing to replay.
        let mut now = s.watch("/h/", r7, false).await?;
        expect_quiet(&mut now, Duration::from_millis(300)).await?;
        let r8 = s.update("/h/c", b"c2".to_vec(), r6).await?;
        assert_eq!(next_event(&mut now).await?.kv.mod_revision, r8);
        Ok(())
    }

    /// Watches started while a writer runs see every write after their
    /// start exactly once, in order.
    pub async fn watch_no_gaps_under_writes(s: Arc<dyn Store>) -> Result {
        const WRITES: usize = 300;
        let log: Arc<Mutex<Vec<(Revision, String, EventKind)>>> = Arc::default();
        // Halfway the writer waits for the watches, so that both are
        // created while it writes and still see writes after that.
        let (go, mut halfway) = tokio::sync::oneshot::channel::<()>();
        let writer = {
            let s = s.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut revs: BTreeMap<String, Revision> = BTreeMap::new();
                for i in 0..WRITES {
                    if i == WRITES / 2 {
                        (&mut halfway).await?;
                    }
                    let key = if i % 7 == 3 { format!("/gx/{}", i % 5) } else { format!("/g/{}", i % 10) };
                    let (rev, kind) = match revs.get(&key).copied() {
                        None => (s.create(&key, format!("{i}").into_bytes()).await?, EventKind::Create),
                        Some(prev) if i % 11 == 0 => (s.delete(&key, Some(prev)).await?.0, EventKind::Delete),
                        Some(prev) => (s.update(&key, format!("{i}").into_bytes(), prev).await?, EventKind::Update),
                    };
                    if kind == EventKind::Delete {
                        revs.remove(&key);
                    } else {
                        revs.insert(key.clone(), rev);
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push((rev, key, kind));
                    }
                }
                anyhow::Ok(())
            })
        };
        let logged = || log.lock().map(|l| l.len()).unwrap_or(0);
        let deadline = Instant::now() + WAIT;
        while logged() < WRITES / 4 {
            ensure!(Instant::now() < deadline, "writer too slow");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let after = log.lock().map(|l| l[20].0).map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut resumed = s.watch("/g/", after, false).await?;
        let mut from_now = s.watch("/g/", 0, false).await?;
        let _ = go.send(());
        writer.await??;
        let log = log.lock().map(|l| l.clone()).map_err(|_| anyhow::anyhow!("poisoned"))?;
        let under: Vec<_> = log.iter().filter(|(_, k, _)| k.starts_with("/g/")).cloned().collect();

        let expected: Vec<_> = under.iter().filter(|(r, _, _)| *r > after).cloned().collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let e = next_event(&mut resumed).await.with_context(|| format!("after {} events", got.len()))?;
            got.push((e.kv.mod_revision, e.kv.key, e.kind));
        }
        assert_eq!(got, expected, "watch resumed during writes");
        expect_quiet(&mut resumed, Duration::from_millis(300)).await?;

        // A watch from "now" gets a suffix of the writes, without gaps.
        let first = next_event(&mut from_now).await?;
        let start = under
            .iter()
            .position(|(r, _, _)| *r == first.kv.mod_revision)
            .context("first event of the watch from now is not a write")?;
        let mut got = vec![(first.kv.mod_revision, first.kv.key, first.kind)];
        while got.len() < under.len() - start {
            let e = next_event(&mut from_now).await?;
            got.push((e.kv.mod_revision, e.kv.key, e.kind));
        }
        assert_eq!(got, under[start..], "watch from now during writes");
        expect_quiet(&mut from_now, Duration::from_millis(300)).await?;
        Ok(())
    }

    pub async fn watch_compacted(s: Arc<dyn Store>) -> Result {
        let r1 = s.create("/wc/a", b"1".to_vec()).await?;
        let r2 = s.update("/wc/a", b"2".to_vec(), r1).await?;
        let r3 = s.update("/wc/a", b"3".to_vec(), r2).await?;
        let r4 = s.update("/wc/a", b"4".to_vec(), r3).await?;
        s.compact(r4).await?;

        for after in [r1, r2] {
            match s.watch("/wc/", after, false).await {
                Err(StoreError::Compacted { requested, compacted }) => {
                    assert_eq!(compacted, r4);
                    ensure!(requested == after || requested == after + 1, "requested {requested} for after {after}");
                }
                Err(e) => bail!("watch after {after}: expected Compacted, got {e:?}"),
                Ok(_) => bail!("watch after compacted {after}: expected Compacted, got a stream"),
            }
        }

        // Starting at the compaction revision still works (it is kept).
        let mut w = s.watch("/wc/", r3, false).await?;
        let e = next_event(&mut w).await?;
        assert_eq!((e.kind.clone(), e.kv.clone()), (EventKind::Update, kv("/wc/a", "4", r1, r4)));
        let mut w2 = s.watch("/wc/", r4, false).await?;
        let r5 = s.update("/wc/a", b"5".to_vec(), r4).await?;
        for w in [&mut w, &mut w2] {
            assert_eq!(
                next_event(w).await?,
                Event { kind: EventKind::Update, kv: kv("/wc/a", "5", r1, r5), prev: Some(kv("/wc/a", "4", r1, r4)) }
            );
        }
        Ok(())
    }

    pub async fn watch_progress(s: Arc<dyn Store>) -> Result {
        let start = s.revision().await?;
        let mut w = s.watch("/pg/", 0, true).await?;

        // Idle: a bookmark within ~3 s.
        let first = next_item(&mut w, Duration::from_secs(3)).await.context("no bookmark while idle")?;
        let WatchItem::Progress(p) = first else { bail!("expected a bookmark, got {first:?}") };
        ensure!(p >= start && p <= s.revision().await?, "bookmark {p} outside [{start}, now]");

        // Bookmarks never run ahead of events: write bursts with idle gaps,
        // and check every bookmark against what was written.
        let log: Arc<Mutex<Vec<Revision>>> = Arc::default();
        let writer = {
            let s = s.clone();
            let log = log.clone();
            tokio::spawn(async move {
                for burst in 0..3 {
                    for i in 0..5 {
                        let rev = s.create(&format!("/pg/{burst}/{i}"), vec![]).await?;
                        if let Ok(mut log) = log.lock() {
                            log.push(rev);
                        }
                        s.create(&format!("/pgx/{burst}/{i}"), vec![]).await?;
                    }
                    tokio::time::sleep(Duration::from_millis(1600)).await;
                }
                anyhow::Ok(())
            })
        };
        let mut seen: HashSet<Revision> = HashSet::new();
        let mut last_bookmark = p;
        let mut bookmarks = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 15 || !writer.is_finished() {
            ensure!(Instant::now() < deadline, "watch stalled: {} events", seen.len());
            let left = deadline.saturating_duration_since(Instant::now());
            match next_item(&mut w, left).await? {
                WatchItem::Event(e) => {
                    ensure!(
                        e.kv.mod_revision > last_bookmark,
                        "event {} after bookmark {last_bookmark}",
                        e.kv.mod_revision
                    );
                    ensure!(seen.insert(e.kv.mod_revision), "duplicate event {}", e.kv.mod_revision);
                }
                WatchItem::Progress(p) => {
                    ensure!(p >= last_bookmark, "bookmarks went back from {last_bookmark} to {p}");
                    let written = log.lock().map(|l| l.clone()).unwrap_or_default();
                    for rev in written.iter().filter(|r| **r <= p) {
                        ensure!(seen.contains(rev), "bookmark {p} before event {rev}");
                    }
                    last_bookmark = p;
                    bookmarks += 1;
                }
            }
        }
        writer.await??;
        ensure!(bookmarks >= 2, "only {bookmarks} bookmarks across idle gaps");
        Ok(())
    }

    /// 8 tasks × 50 read-modify-write increments, retrying on conflict.
    pub async fn concurrent_cas_counter(s: Arc<dyn Store>) -> Result {
        const TASKS: usize = 8;
        const INCREMENTS: usize = 50;
        let r0 = s.create("/cas/counter", b"0".to_vec()).await?;
        let mut w = s.watch("/cas/", r0, false).await?;

        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut revs = Vec::new();
                let mut conflicts = 0usize;
                for _ in 0..INCREMENTS {
                    loop {
                        let cur = s.get("/cas/counter").await?.context("counter vanished")?;
                        let n: u64 = std::str::from_utf8(&cur.value)?.parse()?;
                        match s.update("/cas/counter", (n + 1).to_string().into_bytes(), cur.mod_revision).await {
                            Ok(rev) => {
                                revs.push(rev);
                                break;
                            }
                            Err(StoreError::Conflict { actual, expected, .. }) => {
                                anyhow::ensure!(actual != expected, "conflict with equal revisions");
                                conflicts += 1;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                anyhow::Ok((revs, conflicts))
            }));
        }
        let mut all_revs = Vec::new();
        let mut conflicts = 0;
        for t in tasks {
            let (revs, c) = t.await??;
            all_revs.extend(revs);
            conflicts += c;
        }
        let total = TASKS * INCREMENTS;
        let last = s.get("/cas/counter").await?.context("counter")?;
        assert_eq!(std::str::from_utf8(&last.value)?, total.to_string(), "lost updates ({conflicts} conflicts)");
        let distinct: HashSet<_> = all_revs.iter().collect();
        assert_eq!(distinct.len(), total);
        assert_eq!(all_revs.iter().max().copied(), Some(last.mod_revision));

        // The history is exactly 1, 2, ..., 400, each on top of the last.
        let mut prev_rev = r0;
        for n in 1..=total {
            let e = next_event(&mut w).await?;
            assert_eq!(e.kind, EventKind::Update);
            assert_eq!(e.kv.value, n.to_string().into_bytes());
            let prev = e.prev.context("update without prev")?;
            assert_eq!(prev.value, (n - 1).to_string().into_bytes());
            assert_eq!(prev.mod_revision, prev_rev);
            prev_rev = e.kv.mod_revision;
        }
        expect_quiet(&mut w, Duration::from_millis(300)).await?;
        Ok(())
    }

    /// Racing creates of one key: exactly one wins.
    pub async fn concurrent_create(s: Arc<dyn Store>) -> Result {
        const RACERS: usize = 16;
        for round in 0..8 {
            let key = format!("/cc/{round}");
            let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
            let mut tasks = Vec::new();
            for i in 0..RACERS {
                let (s, key, barrier) = (s.clone(), key.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    match s.create(&key, format!("racer {i}").into_bytes()).await {
                        Ok(rev) => anyhow::Ok(Some((i, rev))),
                        Err(StoreError::AlreadyExists { .. }) => Ok(None),
                        Err(e) => Err(e.into()),
                    }
                }));
            }
            let mut winners = Vec::new();
            for t in tasks {
                if let Some(w) = t.await?? {
                    winners.push(w);
                }
            }
            let [(i, rev)] = winners[..] else { bail!("round {round}: winners {winners:?}") };
            assert_eq!(s.get(&key).await?, Some(kv(&key, &format!("racer {i}"), rev, rev)));
        }
        Ok(())
    }
}

/// Cases only the etcd backend has.
mod etcd_only {
    use std::time::Duration;

    use anyhow::{bail, ensure, Context};
    use futures::StreamExt;
    use sheaf_store::etcd::EtcdStore;
    use sheaf_store::{Store, StoreError, WatchItem};
    use tokio::time::Instant;

    use crate::etcd_support::EtcdProcess;
    use crate::util::{expect_quiet, keys, next_event, next_item, prefix, WAIT};

    /// Waits for a bookmark at or past `rev`.
    async fn bookmark_reaching(w: &mut sheaf_store::WatchStream, rev: i64, within: Duration) -> anyhow::Result<i64> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match next_item(w, left).await.with_context(|| format!("no bookmark reaching {rev}"))? {
                WatchItem::Progress(p) if p >= rev => return Ok(p),
                WatchItem::Progress(_) => continue,
                WatchItem::Event(e) => bail!("unexpected event {e:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefixes_isolate_stores() -> anyhow::Result<()> {
        let etcd = EtcdProcess::start().await?;
        let one = EtcdStore::connect(&etcd.endpoints(), "/one").await?;
        let two = EtcdStore::connect(&etcd.endpoints(), "/two").await?;
        let mut w = two.watch("/", 0, false).await?;
        let r1 = one.create("/k", b"one".to_vec()).await?;
        let r2 = two.create("/k", b"two".to_vec()).await?;
        ensure!(r2 == r1 + 1, "one revision sequence for the whole cluster");
        assert_eq!(one.get("/k").await?.context("one")?.value, b"one");
        assert_eq!(two.get("/k").await?.context("two")?.value, b"two");
        let listed = one.list(prefix("")).await?;
        assert_eq!(keys(&listed.items), ["/k"]);
        assert_eq!(listed.revision, r2);
        let e = next_event(&mut w).await?;
        assert_eq!((e.kv.key.as_str(), e.kv.mod_revision), ("/k", r2));
        expect_quiet(&mut w, Duration::from_millis(300)).await?;
        one.delete("/k", None).await?;
        assert!(two.get("/k").await?.is_some());
        // The keys really live under the prefixes.
        let mut raw = etcd_client::Client::connect([etcd.url()], None).await?;
        let resp = raw.get("/one/k", None).await?;
        ensure!(resp.kvs().is_empty());
        let resp = raw.get("/two/k", None).await?;
        assert_eq!(resp.kvs().first().context("/two/k")?.value(), b"two");
        Ok(())
    }

    /// With requested progress (forced on: this etcd may predate the fix,
    /// but an idle watcher has no events to be overtaken), bookmarks follow
    /// writes elsewhere in the cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requested_progress_advances() -> anyhow::Result<()> {
        let etcd = EtcdProcess::start().await?;
        let store = EtcdStore::connect(&etcd.endpoints(), "/sheaf").await?.with_requested_progress(true);
        let mut w = store.watch("/idle/", 0, true).await?;
        let r = store.create("/busy/x", vec![]).await?;
        let p = bookmark_reaching(&mut w, r, Duration::from_secs(4)).await?;
        ensure!(p <= store.revision().await?);
        let r = store.create("/busy/y", vec![]).await?;
        bookmark_reaching(&mut w, r, Duration::from_secs(4)).await?;
        Ok(())
    }

    /// etcd's own timed notifications (interval set on the server) are
    /// forwarded, whatever the version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timed_progress_advances() -> anyhow::Result<()> {
        let etcd = EtcdProcess::start_with(&["--experimental-watch-progress-notify-interval=500ms"]).await?;
        let store = EtcdStore::connect(&etcd.endpoints(), "/sheaf").await?.with_requested_progress(false);
        let mut w = store.watch("/idle/", 0, true).await?;
        let r = store.create("/busy/x", vec![]).await?;
        bookmark_reaching(&mut w, r, Duration::from_secs(5)).await?;
        Ok(())
    }

    /// Without progress, nothing but events arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_bookmarks_unless_asked() -> anyhow::Result<()> {
        let etcd = EtcdProcess::start_with(&["--experimental-watch-progress-notify-interval=200ms"]).await?;
        let store = EtcdStore::connect(&etcd.endpoints(), "/sheaf").await?.with_requested_progress(true);
        let mut w = store.watch("/idle/", 0, false).await?;
        store.create("/busy/x", vec![]).await?;
        match tokio::time::timeout(Duration::from_millis(1500), w.next()).await {
            Err(_) => Ok(()),
            Ok(item) => bail!("unexpected {item:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_in_the_future_fails() -> anyhow::Result<()> {
        let etcd = EtcdProcess::start().await?;
        let store = EtcdStore::connect(&etcd.endpoints(), "/sheaf").await?;
        let r = store.create("/a", vec![]).await?;
        match store.watch("/", r + 10, false).await {
            Err(StoreError::FutureRevision { requested, current }) => {
                assert_eq!((requested, current), (r + 10, r))
            }
            Err(e) => bail!("expected FutureRevision, got {e:?}"),
            Ok(_) => bail!("expected FutureRevision, got a stream"),
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_to_nothing_is_unavailable() -> anyhow::Result<()> {
        // A loopback port nobody listens on.
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let started = Instant::now();
        match EtcdStore::connect(&[format!("http://127.0.0.1:{port}")], "/sheaf").await {
            Err(StoreError::Unavailable { .. }) => {}
            Err(e) => bail!("expected Unavailable, got {e:?}"),
            Ok(_) => bail!("connected to nothing"),
        }
        ensure!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
        Ok(())
    }

    /// A lost server fails requests with `Unavailable` and ends watches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_server_is_unavailable() -> anyhow::Result<()> {
        let mut etcd = EtcdProcess::start().await?;
        let store = EtcdStore::connect(&etcd.endpoints(), "/sheaf").await?;
        store.create("/a", vec![]).await?;
        let mut w = store.watch("/", 0, false).await?;
        etcd.kill();
        match tokio::time::timeout(WAIT + WAIT, w.next()).await {
            Ok(Some(Err(StoreError::Unavailable { .. }))) => {}
            other => bail!("watch: expected Unavailable, got {other:?}"),
        }
        let started = Instant::now();
        match store.get("/a").await {
            Err(StoreError::Unavailable { .. }) => {}
            other => bail!("get: expected Unavailable, got {other:?}"),
        }
        ensure!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
        match store.create("/b", vec![]).await {
            Err(StoreError::Unavailable { .. }) => Ok(()),
            other => bail!("create: expected Unavailable, got {other:?}"),
        }
    }
}
