//! A small level-triggered controller runtime over [`Api`].
//!
//! A controller names one *primary* kind (its reconcile keys are the
//! primary objects' `namespace/name`) and any number of *secondary* kinds
//! whose changes are mapped to primary keys (a VMI change wakes its owner
//! VM). Reconcilers are handed only a key: they read the world fresh, act,
//! and say when they want to be called again. Nothing in here is a source
//! of truth; the controller can be dropped at any moment and started again.
//!
//! ```text
//!  reflector per kind (task)              work queue                 workers (tasks)
//!  list ─▶ watch from its RV ─┐      ┌──────────────────────┐     ┌─────────────────────┐
//!    ▲   stream ends: resume  │ keys │ ready (deduplicated) │ key │ reconcile(key)      │
//!    └── error / 410: relist  ├─────▶│ delayed (due time)   ├────▶│  Done               │
//!        (only what changed   │ map  │ processing / dirty   │◀────┤  RequeueAfter(d)    │
//!         while away is news; │      │ failures (backoff)   │done │  Err ─▶ backoff     │
//!         deletions included) │      └──────────────────────┘     └─────────────────────┘
//! ```
//!
//! Life of a key in the queue:
//!
//! ```text
//!            add                 get                  done(Done)
//!   idle ─────────▶ ready ──────────────▶ processing ─────────────▶ idle
//!     ▲               ▲                    │   │ add while processing: dirty,
//!     │               │ due                │   │ back to ready when done
//!     │            delayed ◀───────────────┘   │
//!     │      done(RequeueAfter) / done(Err)    │
//!     └────────────────────────────────────────┘
//! ```
//!
//! - A key is in `ready` at most once, however many events name it, and is
//!   never reconciled by two workers at the same time.
//! - The outcome of the latest reconcile decides the key's timer: `Done`
//!   clears it, `RequeueAfter(d)` sets it to now + d, an error sets it to a
//!   per-key exponential backoff ([`BACKOFF_BASE`] doubling up to
//!   [`BACKOFF_MAX`]) that a later success resets. Events still wake a key
//!   that waits on a timer.
//! - A reconcile that panics counts as an error; the worker carries on.
//! - Every [`Controller::resync_every`] all known primary keys are queued,
//!   as a safety net against anything a watch could have missed.
//!
//! Dropping [`Controller::run`]'s future stops every task it started.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde_json::Value;
use sheaf_client::{Api, ClientError, Gvr, Selectors, WatchEvent};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// First retry delay of a key whose reconcile failed.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest retry delay of a failing key.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest wait before a failed list or watch is retried.
const REFLECTOR_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A list older than what the watch already delivered is read again after
/// this long, at most [`MAX_STALE_LISTS`] times in a row.
const STALE_LIST_WAIT: Duration = Duration::from_millis(10);
const MAX_STALE_LISTS: u32 = 100;

/// The key of an object: its namespace (none for cluster-scoped kinds) and
/// name. Displayed as `namespace/name`, as Kubernetes does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        ObjectKey { namespace: namespace.map(str::to_string), name: name.to_string() }
    }

    /// The key of an object in the Kubernetes JSON shape; `None` without a
    /// name.
    pub fn of(obj: &Value) -> Option<Self> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).filter(|n| !n.is_empty())?;
        Some(ObjectKey::new(obj.pointer("/metadata/namespace").and_then(Value::as_str), name))
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The object is as it should be; wait for the next change.
    Done,
    /// Reconcile again after this long (also when nothing changes).
    RequeueAfter(Duration),
}

/// A controller's reconcile function.
#[async_trait::async_trait]
pub trait Reconciler: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Makes the world agree with the object named by `key`. Must be
    /// idempotent: it is called again after every change and after errors.
    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, Self::Error>;
}

/// Whether a watched object was created or changed, or went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Applied,
    Deleted,
}

/// The latest state of every object of one kind, as seen by its watch.
/// Mappers use the primary kind's store to find keys (for example, every
/// VMI waiting for a node).
#[derive(Clone, Default)]
pub struct Store {
    objects: Arc<RwLock<HashMap<ObjectKey, Value>>>,
}

impl Store {
    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    /// Keys of the objects for which `pred` holds.
    pub fn keys_where(&self, pred: impl Fn(&Value) -> bool) -> Vec<ObjectKey> {
        let objects = self.objects.read().unwrap_or_else(PoisonError::into_inner);
        objects.iter().filter(|(_, v)| pred(v)).map(|(k, _)| k.clone()).collect()
    }

    pub fn keys(&self) -> Vec<ObjectKey> {
        self.keys_where(|_| true)
    }

    pub fn len(&self) -> usize {
        self.objects.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, key: ObjectKey, obj: Value) {
        self.objects.write().unwrap_or_else(PoisonError::into_inner).insert(key, obj);
    }

    fn remove(&self, key: &ObjectKey) {
        self.objects.write().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// Replaces the contents with a fresh list; returns the objects that
    /// are gone, and those that are new or changed.
    fn replace(&self, fresh: HashMap<ObjectKey, Value>) -> (Vec<Value>, Vec<Value>) {
        let mut objects = self.objects.write().unwrap_or_else(PoisonError::into_inner);
        let mut old = std::mem::replace(&mut *objects, fresh);
        let changed = objects
            .iter()
            .filter(|(k, v)| old.get(*k).is_none_or(|o| resource_version(o) != resource_version(v)))
            .map(|(_, v)| v.clone())
            .collect();
        old.retain(|k, _| !objects.contains_key(k));
        (old.into_values().collect(), changed)
    }

    /// Whether the store holds exactly this version of the object.
    fn has_version(&self, key: &ObjectKey, obj: &Value) -> bool {
        let objects = self.objects.read().unwrap_or_else(PoisonError::into_inner);
        objects.get(key).is_some_and(|o| resource_version(o).is_some() && resource_version(o) == resource_version(obj))
    }

    fn contains(&self, key: &ObjectKey) -> bool {
        self.objects.read().unwrap_or_else(PoisonError::into_inner).contains_key(key)
    }
}

/// Maps a change of a watched object to the primary keys to reconcile.
pub type Mapper = Arc<dyn Fn(Change, &Value, &Store) -> Vec<ObjectKey> + Send + Sync>;

struct Source {
    gvr: Gvr,
    mapper: Mapper,
}

/// A controller: what to watch, how many workers, and the reconciler.
pub struct Controller {
    name: &'static str,
    api: Arc<dyn Api>,
    primary: Gvr,
    primary_extra: Option<Mapper>,
    secondaries: Vec<Source>,
    workers: usize,
    resync: Option<Duration>,
}

impl Controller {
    /// A controller whose keys are the objects of `primary`, in every
    /// namespace.
    pub fn new(name: &'static str, api: Arc<dyn Api>, primary: Gvr) -> Self {
        Controller { name, api, primary, primary_extra: None, secondaries: Vec::new(), workers: 1, resync: None }
    }

    /// Also watches `gvr`; `mapper` names the primary keys a change wakes.
    pub fn watches(
        mut self,
        gvr: Gvr,
        mapper: impl Fn(Change, &Value, &Store) -> Vec<ObjectKey> + Send + Sync + 'static,
    ) -> Self {
        self.secondaries.push(Source { gvr, mapper: Arc::new(mapper) });
        self
    }

    /// Besides its own key, a change of a primary object also wakes the
    /// keys `mapper` names.
    pub fn also_on_primary(
        mut self,
        mapper: impl Fn(Change, &Value, &Store) -> Vec<ObjectKey> + Send + Sync + 'static,
    ) -> Self {
        self.primary_extra = Some(Arc::new(mapper));
        self
    }

    /// How many keys are reconciled at the same time (at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Queues every known primary key this often.
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync = Some(period);
        self
    }

    /// Runs until the future is dropped.
    pub async fn run<R: Reconciler>(self, reconciler: Arc<R>) {
        let queue = Arc::new(WorkQueue::default());
        let primary_store = Store::default();
        let mut tasks = JoinSet::new();

        let extra = self.primary_extra.clone();
        let own = {
            let queue = queue.clone();
            let store = primary_store.clone();
            move |change: Change, obj: &Value| {
                if let Some(key) = ObjectKey::of(obj) {
                    queue.add(key);
                }
                if let Some(extra) = &extra {
                    for key in extra(change, obj, &store) {
                        queue.add(key);
                    }
                }
            }
        };
        tasks.spawn(reflect(self.name, self.api.clone(), self.primary, primary_store.clone(), own));
        for source in self.secondaries {
            let queue = queue.clone();
            let primaries = primary_store.clone();
            let mapper = source.mapper;
            let on_change = move |change: Change, obj: &Value| {
                for key in mapper(change, obj, &primaries) {
                    queue.add(key);
                }
            };
            tasks.spawn(reflect(self.name, self.api.clone(), source.gvr, Store::default(), on_change));
        }
        if let Some(period) = self.resync {
            let queue = queue.clone();
            let store = primary_store.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                loop {
                    tick.tick().await;
                    for key in store.keys() {
                        queue.add(key);
                    }
                }
            });
        }
        for _ in 0..self.workers {
            tasks.spawn(work(self.name, queue.clone(), reconciler.clone()));
        }
        while let Some(ended) = tasks.join_next().await {
            // Every task loops forever; one ending is a bug worth shouting about.
            tracing::error!(controller = self.name, result = ?ended.err(), "a controller task ended");
        }
    }
}

async fn work<R: Reconciler>(name: &'static str, queue: Arc<WorkQueue>, reconciler: Arc<R>) {
    loop {
        let key = queue.next().await;
        let started = Instant::now();
        let result = AssertUnwindSafe(reconciler.reconcile(&key)).catch_unwind().await;
        let outcome = match result {
            Ok(Ok(action)) => {
                tracing::trace!(controller = name, %key, ?action, elapsed = ?started.elapsed(), "reconciled");
                Outcome::Action(action)
            }
            Ok(Err(e)) => {
                tracing::warn!(controller = name, %key, error = %e, "reconcile failed; retrying with backoff");
                Outcome::Failed
            }
            Err(_) => {
                tracing::error!(controller = name, %key, "reconcile panicked; retrying with backoff");
                Outcome::Failed
            }
        };
        queue.done(&key, outcome);
    }
}

fn resource_version(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Keeps the newest of two resourceVersions (they are decimal revisions
/// here; anything else is taken as given).
fn newer(current: &str, seen: &str) -> String {
    match (current.parse::<u64>(), seen.parse::<u64>()) {
        (Ok(a), Ok(b)) if a >= b => current.to_string(),
        _ => seen.to_string(),
    }
}

/// Lists and watches one kind for ever, keeping `store` current and
/// reporting every change to `on_change`.
async fn reflect(
    controller: &'static str,
    api: Arc<dyn Api>,
    gvr: Gvr,
    store: Store,
    on_change: impl Fn(Change, &Value) + Send + 'static,
) {
    let all = Selectors::default();
    let mut delay = ReflectorBackoff::default();
    // Newest resourceVersion delivered so far: a relist must not go back
    // before it.
    let mut rv = String::new();
    let mut stale_lists = 0u32;
    'relist: loop {
        let (items, list_rv) = match api.list(gvr, None, &all).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(controller, resource = gvr.plural, error = %e, "list failed; retrying");
                tokio::time::sleep(delay.next()).await;
                continue;
            }
        };
        // A list older than events already seen (a store may publish an
        // event just before a list reads the new revision) would undo them,
        // and report objects as deleted that are not: read again.
        if older(&list_rv, &rv) && stale_lists < MAX_STALE_LISTS {
            stale_lists += 1;
            tokio::time::sleep(STALE_LIST_WAIT).await;
            continue;
        }
        stale_lists = 0;
        let fresh: HashMap<ObjectKey, Value> =
            items.into_iter().filter_map(|v| ObjectKey::of(&v).map(|k| (k, v))).collect();
        // Only what changed while we were away is news.
        let (gone, changed) = store.replace(fresh);
        for obj in gone {
            on_change(Change::Deleted, &obj);
        }
        for obj in changed {
            on_change(Change::Applied, &obj);
        }
        rv = list_rv;
        loop {
            let mut stream = match api.watch(gvr, None, &all, &rv).await {
                Ok(s) => s,
                Err(e) => {
                    if !is_gone(&e) {
                        tracing::warn!(controller, resource = gvr.plural, error = %e, "watch failed; listing again");
                        tokio::time::sleep(delay.next()).await;
                    }
                    continue 'relist;
                }
            };
            let opened = Instant::now();
            let mut delivered = false;
            while let Some(item) = stream.next().await {
                let (change, obj) = match item {
                    Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => (Change::Applied, o),
                    Ok(WatchEvent::Deleted(o)) => (Change::Deleted, o),
                    Ok(WatchEvent::Bookmark(b)) => {
                        rv = newer(&rv, &b);
                        continue;
                    }
                    Err(e) => {
                        if is_gone(&e) {
                            tracing::debug!(controller, resource = gvr.plural, "watch expired; listing again");
                        } else {
                            tracing::warn!(controller, resource = gvr.plural, error = %e, "watch broke; listing again");
                            tokio::time::sleep(delay.next()).await;
                        }
                        continue 'relist;
                    }
                };
                delivered = true;
                delay.reset();
                if let Some(seen) = resource_version(&obj) {
                    rv = newer(&rv, seen);
                }
                let Some(key) = ObjectKey::of(&obj) else { continue };
                // A resumed watch may replay what the store already has.
                let news = match change {
                    Change::Applied => !store.has_version(&key, &obj),
                    Change::Deleted => store.contains(&key),
                };
                if !news {
                    continue;
                }
                match change {
                    Change::Applied => store.apply(key, obj.clone()),
                    Change::Deleted => store.remove(&key),
                }
                on_change(change, &obj);
            }
            // The stream ended cleanly: resume from where it stopped, but do
            // not spin if the server keeps closing it straight away.
            if !delivered && opened.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(delay.next()).await;
            }
        }
    }
}

/// Whether resourceVersion `a` is before `b` (both decimal revisions).
fn older(a: &str, b: &str) -> bool {
    matches!((a.parse::<u64>(), b.parse::<u64>()), (Ok(a), Ok(b)) if a < b)
}

fn is_gone(e: &ClientError) -> bool {
    e.code == 410
}

#[derive(Default)]
struct ReflectorBackoff {
    failures: u32,
}

impl ReflectorBackoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        exponential(Duration::from_millis(200), REFLECTOR_BACKOFF_MAX, self.failures)
    }
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `base * 2^(n-1)`, at most `max`.
pub(crate) fn exponential(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(31));
    base.saturating_mul(factor).min(max)
}

// ---------------------------------------------------------------------------
// Work queue
// ---------------------------------------------------------------------------

enum Outcome {
    Action(Action),
    Failed,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    processing: HashSet<ObjectKey>,
    /// Added while processing: queued again when the reconcile ends.
    dirty: HashSet<ObjectKey>,
    delayed: HashMap<ObjectKey, Instant>,
    failures: HashMap<ObjectKey, u32>,
}

impl QueueState {
    fn add(&mut self, key: ObjectKey) -> bool {
        if self.processing.contains(&key) {
            self.dirty.insert(key);
            false
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
            true
        } else {
            false
        }
    }

    /// Moves the keys whose time has come to `ready`; returns the next due
    /// time.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        let due: Vec<ObjectKey> = self.delayed.iter().filter(|(_, t)| **t <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            self.delayed.remove(&key);
            self.add(key);
        }
        self.delayed.values().min().copied()
    }
}

/// A deduplicating queue of keys with per-key timers and backoff.
#[derive(Default)]
struct WorkQueue {
    state: Mutex<QueueState>,
    wake: Notify,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, key: ObjectKey) {
        if self.lock().add(key) {
            self.wake.notify_waiters();
        }
    }

    /// Waits for a key to reconcile; it is `processing` until [`done`].
    async fn next(&self) -> ObjectKey {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut st = self.lock();
                let next_due = st.promote(Instant::now());
                if let Some(key) = st.ready.pop_front() {
                    st.queued.remove(&key);
                    st.processing.insert(key.clone());
                    return key;
                }
                next_due
            };
            match next_due {
                Some(t) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn done(&self, key: &ObjectKey, outcome: Outcome) {
        let mut st = self.lock();
        st.processing.remove(key);
        let now = Instant::now();
        match outcome {
            Outcome::Action(Action::Done) => {
                st.failures.remove(key);
                st.delayed.remove(key);
            }
            Outcome::Action(Action::RequeueAfter(d)) => {
                st.failures.remove(key);
                st.delayed.insert(key.clone(), now + d);
            }
            Outcome::Failed => {
                let n = st.failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let wait = exponential(BACKOFF_BASE, BACKOFF_MAX, *n);
                st.delayed.insert(key.clone(), now + wait);
            }
        }
        if st.dirty.remove(key) {
            st.add(key.clone());
        }
        drop(st);
        // A new timer or a dirty key may be due before what waiters sleep on.
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ObjectKey {
        ObjectKey::new(Some("default"), n)
    }

    #[test]
    fn keys_display_like_kubernetes() {
        assert_eq!(key("vm1").to_string(), "default/vm1");
        assert_eq!(ObjectKey::new(None, "node1").to_string(), "node1");
        let obj = serde_json::json!({"metadata": {"name": "a", "namespace": "ns"}});
        assert_eq!(ObjectKey::of(&obj), Some(ObjectKey::new(Some("ns"), "a")));
        assert_eq!(ObjectKey::of(&serde_json::json!({"metadata": {}})), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(exponential(BACKOFF_BASE, BACKOFF_MAX, 1), Duration::from_millis(100));
        assert_eq!(exponential(BACKOFF_BASE, BACKOFF_MAX, 2), Duration::from_millis(200));
        assert_eq!(exponential(BACKOFF_BASE, BACKOFF_MAX, 4), Duration::from_millis(800));
        assert_eq!(exponential(BACKOFF_BASE, BACKOFF_MAX, 11), BACKOFF_MAX);
        assert_eq!(exponential(BACKOFF_BASE, BACKOFF_MAX, u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn newer_resource_version_wins() {
        assert!(older("9", "10") && !older("10", "10") && !older("10", "") && !older("", "3"));
        assert_eq!(newer("10", "9"), "10");
        assert_eq!(newer("10", "12"), "12");
        assert_eq!(newer("", "5"), "5");
    }

    #[tokio::test]
    async fn queue_deduplicates_and_serialises_a_key() {
        let q = WorkQueue::default();
        q.add(key("a"));
        q.add(key("a"));
        q.add(key("b"));
        let first = q.next().await;
        assert_eq!(first, key("a"));
        // Added again while processing: not handed out until done.
        q.add(key("a"));
        assert_eq!(q.next().await, key("b"));
        assert!(tokio::time::timeout(Duration::from_millis(20), q.next()).await.is_err());
        q.done(&first, Outcome::Action(Action::Done));
        assert_eq!(q.next().await, key("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_and_backoff_timers() {
        let q = WorkQueue::default();
        q.add(key("a"));
        let k = q.next().await;
        q.done(&k, Outcome::Action(Action::RequeueAfter(Duration::from_secs(5))));
        let start = Instant::now();
        let k = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        q.done(&k, Outcome::Failed);
        let start = Instant::now();
        let k = q.next().await;
        assert_eq!(start.elapsed(), BACKOFF_BASE);
        q.done(&k, Outcome::Failed);
        let start = Instant::now();
        let k = q.next().await;
        assert_eq!(start.elapsed(), BACKOFF_BASE * 2);

        // Success forgets the failures; Done cancels the timer.
        q.done(&k, Outcome::Action(Action::RequeueAfter(Duration::from_secs(1))));
        let k = q.next().await;
        q.done(&k, Outcome::Failed);
        let start = Instant::now();
        let k = q.next().await;
        assert_eq!(start.elapsed(), BACKOFF_BASE);
        q.done(&k, Outcome::Action(Action::Done));
        assert!(tokio::time::timeout(Duration::from_secs(3600), q.next()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_wakes_a_waiting_key() {
        let q = WorkQueue::default();
        q.add(key("a"));
        let k = q.next().await;
        q.done(&k, Outcome::Action(Action::RequeueAfter(Duration::from_secs(60))));
        q.add(key("a"));
        let start = Instant::now();
        assert_eq!(q.next().await, key("a"));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
