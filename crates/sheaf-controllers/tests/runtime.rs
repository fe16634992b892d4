//! The controller runtime against a real API server whose watches are made
//! to break: every watch ends after one event, and every other one with a
//! 410 Gone, so that the runtime must resume and relist all the time.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, WatchStream};
use sheaf_controllers::runtime::{Action, Controller, ObjectKey, Reconciler, BACKOFF_BASE};
use sheaf_types::core::{ConfigMap, Secret};
use tokio::time::Instant;

/// The real API, with watches that break.
struct BreakingWatches {
    inner: Arc<dyn Api>,
    watches: AtomicUsize,
}

#[async_trait::async_trait]
impl Api for BreakingWatches {
    async fn get(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<Option<Value>, ClientError> {
        self.inner.get(r, ns, name).await
    }
    async fn list(&self, r: Gvr, ns: Option<&str>, sel: &Selectors) -> Result<(Vec<Value>, String), ClientError> {
        self.inner.list(r, ns, sel).await
    }
    async fn watch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        sel: &Selectors,
        resource_version: &str,
    ) -> Result<WatchStream, ClientError> {
        let n = self.watches.fetch_add(1, Ordering::SeqCst);
        let stream = self.inner.watch(r, ns, sel, resource_version).await?.take(1);
        if n % 2 == 0 {
            Ok(Box::pin(stream))
        } else {
            let gone = ClientError { code: 410, reason: "Expired".into(), message: "too old resource version".into() };
            Ok(Box::pin(stream.chain(futures::stream::once(async move { Err(gone) }))))
        }
    }
    async fn create(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        self.inner.create(r, ns, obj).await
    }
    async fn update(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        self.inner.update(r, ns, obj).await
    }
    async fn update_status(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        self.inner.update_status(r, ns, obj).await
    }
    async fn merge_patch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        name: &str,
        patch: Value,
        status: bool,
    ) -> Result<Value, ClientError> {
        self.inner.merge_patch(r, ns, name, patch, status).await
    }
    async fn delete(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<(), ClientError> {
        self.inner.delete(r, ns, name).await
    }
}

#[derive(Debug, thiserror::Error)]
#[error("failing on purpose (attempt {0})")]
struct Planned(usize);

/// Records what it read for each ConfigMap: its `v`, and the `v` of the
/// Secret of the same name (a secondary kind).
struct Mirror {
    api: Arc<dyn Api>,
    seen: Mutex<HashMap<String, Option<String>>>,
    attempts: Mutex<HashMap<String, Vec<Instant>>>,
    running: Mutex<HashSet<ObjectKey>>,
    overlapped: AtomicBool,
}

#[async_trait::async_trait]
impl Reconciler for Mirror {
    type Error = Planned;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, Planned> {
        if !self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
            self.overlapped.store(true, Ordering::SeqCst);
        }
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let a = attempts.entry(key.name.clone()).or_default();
            a.push(Instant::now());
            a.len()
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        match key.name.as_str() {
            "flaky" if attempt < 4 => return Err(Planned(attempt)),
            "panics" if attempt == 1 => panic!("panicking on purpose"),
            _ => {}
        }
        let cm = sheaf_client::Typed::<ConfigMap>::new(self.api.as_ref()).get(key.namespace(), &key.name).await;
        let secret = sheaf_client::Typed::<Secret>::new(self.api.as_ref()).get(key.namespace(), &key.name).await;
        let value = cm.ok().flatten().and_then(|c| c.data.get("v").cloned()).map(|v| {
            let s =
                secret.ok().flatten().and_then(|s| s.data.get("v").map(|b| String::from_utf8_lossy(&b.0).to_string()));
            match s {
                Some(s) => format!("{v}/{s}"),
                None => v,
            }
        });
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key.name.clone(), value);
        Ok(Action::Done)
    }
}

struct Setup {
    cluster: common::Cluster,
    mirror: Arc<Mirror>,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self._task.abort();
    }
}

async fn setup() -> anyhow::Result<Setup> {
    let cluster = common::Cluster::start(common::Run::Nothing, Default::default()).await?;
    let api: Arc<dyn Api> = Arc::new(BreakingWatches { inner: cluster.api.clone(), watches: AtomicUsize::new(0) });
    let mirror = Arc::new(Mirror {
        api: api.clone(),
        seen: Mutex::default(),
        attempts: Mutex::default(),
        running: Mutex::default(),
        overlapped: AtomicBool::new(false),
    });
    let controller = Controller::new("mirror", api, Gvr::of::<ConfigMap>())
        .watches(Gvr::of::<Secret>(), |_, secret, _| ObjectKey::of(secret).into_iter().collect())
        .workers(3);
    let task = tokio::spawn(controller.run(mirror.clone()));
    Ok(Setup { cluster, mirror, _task: task })
}

impl Setup {
    async fn put(&self, r: Gvr, name: &str, body: Value) -> anyhow::Result<()> {
        let api = &self.cluster.api;
        match api.get(r, Some("default"), name).await? {
            None => {
                api.create(r, Some("default"), body).await?;
            }
            Some(_) => {
                api.merge_patch(r, Some("default"), name, body, false).await?;
            }
        }
        Ok(())
    }

    async fn config_map(&self, name: &str, v: &str) -> anyhow::Result<()> {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": v}});
        self.put(Gvr::of::<ConfigMap>(), name, body).await
    }

    async fn wait_seen(&self, want: &[(&str, Option<&str>)]) {
        let deadline = Instant::now() + common::PATIENCE;
        loop {
            let seen = self.mirror.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if want.iter().all(|(k, v)| seen.get(*k).map(Option::as_deref) == Some(*v)) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out; want {want:?}, seen {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_survive_broken_watches() -> anyhow::Result<()> {
    let s = setup().await?;
    for name in ["a", "b", "c"] {
        s.config_map(name, "1").await?;
    }
    s.wait_seen(&[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))]).await;
    s.config_map("a", "2").await?;
    s.cluster.api.delete(Gvr::of::<ConfigMap>(), Some("default"), "b").await?;
    s.wait_seen(&[("a", Some("2")), ("b", None), ("c", Some("1"))]).await;

    // A change of the secondary kind wakes the primary key it maps to.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}, "stringData": {"v": "x"}});
    s.put(Gvr::of::<Secret>(), "a", secret).await?;
    s.wait_seen(&[("a", Some("2/x"))]).await;
    for i in 0..5 {
        s.config_map("c", &i.to_string()).await?;
    }
    s.wait_seen(&[("c", Some("4"))]).await;
    assert!(!s.mirror.overlapped.load(Ordering::SeqCst), "a key was reconciled twice at once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_and_panics_are_retried() -> anyhow::Result<()> {
    let s = setup().await?;
    s.config_map("flaky", "ok").await?;
    s.config_map("panics", "ok").await?;
    s.wait_seen(&[("flaky", Some("ok")), ("panics", Some("ok"))]).await;
    let attempts =
        s.mirror.attempts.lock().unwrap_or_else(|e| e.into_inner()).get("flaky").cloned().unwrap_or_default();
    assert!(attempts.len() >= 4, "{attempts:?}");
    // The waits between attempts are the backoff: 100 ms, 200 ms, 400 ms.
    for (i, pair) in attempts.windows(2).take(3).enumerate() {
        let gap = pair[1] - pair[0];
        let want = BACKOFF_BASE * 2u32.pow(u32::try_from(i)?);
        assert!(gap >= want, "attempt {} came {gap:?} after the previous, before the {want:?} backoff", i + 2);
    }
    Ok(())
}
