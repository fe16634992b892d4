//! Leader election among the servers of an HA control plane: only the
//! holder of the Lease `kube-system/sheaf-controllers` runs the
//! controllers, the garbage collector and the compactor.
//!
//! ```text
//!   candidate ──(lease free, or unchanged for leaseDurationSeconds)──▶ leader
//!      ▲          CAS update: holder = me, acquireTime, transitions + 1     │
//!      │                                                                    │ renew every RENEW_EVERY
//!      └──── work dropped ◀── no successful renewal for RENEW_DEADLINE ─────┘
//! ```
//!
//! Every write is an update with the `resourceVersion` last read
//! (optimistic concurrency), so two candidates never both win. Expiry is
//! judged as client-go judges it, by the candidate's own clock: a lease
//! whose `resourceVersion` has not changed for `leaseDurationSeconds` since
//! this candidate first saw that version is expired, whatever the
//! `renewTime` written by another machine's clock says. The holder counts
//! from the moment it *sent* its last successful renewal and stops its work
//! (drops the future) after [`RENEW_DEADLINE`], before any other candidate
//! can count [`LEASE_DURATION`] from *seeing* that renewal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sheaf_client::{Api, ClientError, Typed};
use sheaf_types::coordination::{Lease, LeaseSpec, MicroTime};
use sheaf_types::ObjectMeta;
use tokio::time::Instant;

pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "sheaf-controllers";
/// How long a lease that is not renewed stays its holder's.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, and candidates retry.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// The holder stops its work when it has not renewed for this long.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// The election's durations; `RENEW_DEADLINE < LEASE_DURATION` is what
/// keeps two servers from leading at once.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease: Duration,
    pub renew_every: Duration,
    pub renew_deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { lease: LEASE_DURATION, renew_every: RENEW_EVERY, renew_deadline: RENEW_DEADLINE }
    }
}

/// One server's part in the election.
pub struct Election {
    api: Arc<dyn Api>,
    identity: String,
    timing: Timing,
    /// The lease's resourceVersion last seen, and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl Election {
    pub fn new(api: Arc<dyn Api>, identity: String, timing: Timing) -> Election {
        assert!(timing.renew_deadline < timing.lease, "the holder must stop before its lease can be taken");
        Election { api, identity, timing, observed: None }
    }

    fn fresh(&self) -> Lease {
        let now = MicroTime::now();
        Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                namespace: Some(LEASE_NAMESPACE.into()),
                ..Default::default()
            },
            spec: LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.lease_seconds()),
                acquire_time: Some(now),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            },
        }
    }

    /// One attempt to acquire or renew: Ok(true) when this server holds
    /// the lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, ClientError> {
        let api = self.api.clone();
        let leases = Typed::<Lease>::new(&*api);
        let Some(mut lease) = leases.get(Some(LEASE_NAMESPACE), LEASE_NAME).await? else {
            return match leases.create(&self.fresh()).await {
                Ok(l) => {
                    self.observe(&l);
                    Ok(true)
                }
                Err(e) if e.is_already_exists() => Ok(false),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease);
        let holder = lease.spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() {
            let duration = lease
                .spec
                .lease_duration_seconds
                .filter(|d| *d > 0)
                .map(|d| Duration::from_secs(d as u64))
                .unwrap_or(self.timing.lease);
            let seen_since = self.observed.as_ref().map(|(_, t)| t.elapsed()).unwrap_or_default();
            if seen_since < duration {
                return Ok(false);
            }
        }
        let now = MicroTime::now();
        let spec = &mut lease.spec;
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + if holder.is_empty() { 0 } else { 1 });
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.lease_seconds());
        match leases.update(&lease).await {
            Ok(l) => {
                self.observe(&l);
                Ok(true)
            }
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn lease_seconds(&self) -> i32 {
        self.timing.lease.as_secs().max(1) as i32
    }

    fn observe(&mut self, lease: &Lease) {
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != rv) {
            self.observed = Some((rv, Instant::now()));
        }
    }

    /// Waits until this server holds the lease; returns when the write
    /// that took it was sent.
    async fn acquire(&mut self) -> Instant {
        let mut warned = false;
        loop {
            let sent = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => return sent,
                Ok(false) => {}
                Err(e) if !warned => {
                    tracing::warn!(error = %e, "cannot read or take the leader lease; retrying");
                    warned = true;
                }
                Err(e) => tracing::debug!(error = %e, "cannot read or take the leader lease"),
            }
            tokio::time::sleep(self.timing.renew_every).await;
        }
    }

    /// Keeps renewing; returns when a renewal has not succeeded for
    /// [`RENEW_DEADLINE`] (or another server holds the lease).
    async fn hold(&mut self, acquired: Instant) {
        let mut last_renewed = acquired;
        loop {
            tokio::time::sleep(self.timing.renew_every).await;
            let sent = Instant::now();
            let left = self.timing.renew_deadline.saturating_sub(last_renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renewed = sent,
                Ok(Ok(false)) => {
                    tracing::warn!("another server took the leader lease");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                Err(_) => {}
            }
            if last_renewed.elapsed() >= self.timing.renew_deadline {
                tracing::warn!(
                    "the leader lease was not renewed for {:?}; stopping the controllers",
                    self.timing.renew_deadline
                );
                return;
            }
        }
    }

    /// Gives the lease up (on shutdown), so that another server takes
    /// over at once instead of after [`LEASE_DURATION`].
    pub async fn release(&mut self) {
        let leases = Typed::<Lease>::new(&*self.api);
        let Ok(Some(mut lease)) = leases.get(Some(LEASE_NAMESPACE), LEASE_NAME).await else { return };
        if lease.spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        lease.spec.holder_identity = None;
        lease.spec.lease_duration_seconds = Some(1);
        lease.spec.renew_time = Some(MicroTime::now());
        if let Err(e) = leases.update(&lease).await {
            tracing::debug!(error = %e, "cannot release the leader lease");
        }
    }

    /// Runs `work()` whenever this server leads, and drops it when it
    /// stops leading; forever.
    pub async fn run<F, Fut>(&mut self, work: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let acquired = self.acquire().await;
            tracing::info!(identity = %self.identity, "leading: running the controllers");
            let work = work();
            tokio::select! {
                _ = work => tracing::warn!("the controllers ended"),
                _ = self.hold(acquired) => {}
            }
            tracing::info!(identity = %self.identity, "no longer leading; the controllers are stopped");
        }
    }
}

/// A unique identity for this server process: its name and a random part.
pub fn identity(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{name}_{:x}", (nanos as u64) ^ (u64::from(std::process::id()) << 40))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde_json::Value;
    use sheaf_apiserver::{local_api::LocalApi, registry::Registry, ApiServer};
    use sheaf_client::{Gvr, Selectors, WatchStream};

    use super::*;

    /// An API that fails every call while `down` is set, as a server
    /// cut off from its store does.
    struct Flaky {
        inner: Arc<dyn Api>,
        down: Arc<AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> Result<(), ClientError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(ClientError { code: 503, reason: "ServiceUnavailable".into(), message: "down".into() });
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Api for Flaky {
        async fn get(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<Option<Value>, ClientError> {
            self.check()?;
            self.inner.get(r, ns, name).await
        }
        async fn list(&self, r: Gvr, ns: Option<&str>, sel: &Selectors) -> Result<(Vec<Value>, String), ClientError> {
            self.check()?;
            self.inner.list(r, ns, sel).await
        }
        async fn watch(&self, r: Gvr, ns: Option<&str>, sel: &Selectors, rv: &str) -> Result<WatchStream, ClientError> {
            self.check()?;
            self.inner.watch(r, ns, sel, rv).await
        }
        async fn create(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
            self.check()?;
            self.inner.create(r, ns, obj).await
        }
        async fn update(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
            self.check()?;
            self.inner.update(r, ns, obj).await
        }
        async fn update_status(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
            self.check()?;
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
            self.check()?;
            self.inner.merge_patch(r, ns, name, patch, status).await
        }
        async fn delete(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<(), ClientError> {
            self.check()?;
            self.inner.delete(r, ns, name).await
        }
    }

    /// Sets a flag while the work runs, clears it when the work is dropped.
    struct Running(Arc<AtomicBool>);

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }

    fn work(
        me: Arc<AtomicBool>,
        other: Arc<AtomicBool>,
        overlap: Arc<AtomicBool>,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, ()> {
        move || {
            let (me, other, overlap) = (me.clone(), other.clone(), overlap.clone());
            Box::pin(async move {
                if other.load(Ordering::SeqCst) {
                    overlap.store(true, Ordering::SeqCst);
                }
                me.store(true, Ordering::SeqCst);
                let _running = Running(me);
                std::future::pending::<()>().await;
            })
        }
    }

    async fn until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < deadline, "{what} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn one_leader_and_a_takeover_after_the_holder_stops_renewing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(sheaf_store::sqlite::SqliteStore::open(&dir.path().join("state.db")).expect("store"));
        let server = ApiServer::new(store, Registry::new(sheaf_types::registry::all()), &[]);
        sheaf_apiserver::bootstrap(&server).await.expect("bootstrap");
        let api: Arc<dyn Api> = LocalApi::new(server.objects.clone());
        let down = Arc::new(AtomicBool::new(false));
        let flaky: Arc<dyn Api> = Arc::new(Flaky { inner: api.clone(), down: down.clone() });
        let timing = Timing {
            lease: Duration::from_secs(2),
            renew_every: Duration::from_millis(200),
            renew_deadline: Duration::from_secs(1),
        };
        let (a_runs, b_runs, overlap) = (Arc::default(), Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut a = Election::new(flaky, "a".into(), timing);
        let mut b = Election::new(api.clone(), "b".into(), timing);
        let wa = work(Arc::clone(&a_runs), Arc::clone(&b_runs), overlap.clone());
        let wb = work(Arc::clone(&b_runs), Arc::clone(&a_runs), overlap.clone());
        let ta = tokio::spawn(async move { a.run(wa).await });
        until("a leads", Duration::from_secs(5), || a_runs.load(Ordering::SeqCst)).await;
        let tb = tokio::spawn(async move { b.run(wb).await });
        // While a renews, b waits.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(a_runs.load(Ordering::SeqCst) && !b_runs.load(Ordering::SeqCst));

        // a cannot reach its store: it stops within the renew deadline,
        // and b takes over after the lease's duration.
        down.store(true, Ordering::SeqCst);
        let cut = Instant::now();
        until("a stops", Duration::from_secs(2), || !a_runs.load(Ordering::SeqCst)).await;
        until("b leads", Duration::from_secs(5), || b_runs.load(Ordering::SeqCst)).await;
        assert!(cut.elapsed() >= Duration::from_secs(2), "b waited for the lease to expire: {:?}", cut.elapsed());
        let lease =
            Typed::<Lease>::new(&*api).get(Some(LEASE_NAMESPACE), LEASE_NAME).await.expect("get").expect("lease");
        assert_eq!(lease.spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(lease.spec.lease_transitions, Some(1));

        // a is back, and stays a candidate while b renews.
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!a_runs.load(Ordering::SeqCst) && b_runs.load(Ordering::SeqCst));
        assert!(!overlap.load(Ordering::SeqCst), "two leaders at once");
        ta.abort();
        tb.abort();
    }
}
