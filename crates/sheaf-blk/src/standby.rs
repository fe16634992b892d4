//! An engine on standby: the target of a live migration. It serves the
//! NBD frontend at once (the target QEMU connects while the source engine
//! still owns the volume) but takes the volume over only when it is first
//! needed: by the first write, write-zeroes or flush, or by the control
//! socket's `activate`. Reads before that are answered from a replica at
//! its current epoch without claiming it ([`Engine::peek`]): QEMU reads a
//! disk's first sector when it creates the device (to guess its
//! geometry), while the source's guest still runs.
//!
//! ```text
//!         first write or flush, or `activate`
//!  standby ───────────────────────────────────▶ activating ──started──▶ active
//!  (replicas asked for their info only:          (the normal start:      (an Engine:
//!   no claim, no new epoch; NBD clients           claim with epoch        the new epoch
//!   are told the size they reported)              max+1, resync)          fences the source)
//!     ▲                                             │
//!     └──────── failed: the requests waiting ───────┘
//!               for it get EIO; the next request tries again
//! ```
//!
//! Activation runs once at a time: requests arriving meanwhile wait for
//! it, and share its outcome. A request that arrives after an attempt
//! failed starts a new one.
//!
//! During a migration the source QEMU flushes and goes quiet before the
//! target guest runs, so the target's first I/O comes after the source's
//! last; activating earlier would fence the source engine while its guest
//! still writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::auth::ClusterKey;
use crate::control::{EngineStatus, ReplicaState};
use crate::engine::{Engine, EngineError, REPLICA_TIMEOUT};
use crate::replica_server::Address;

/// What the control socket answers to requests that need the running
/// engine while it is on standby.
pub const ON_STANDBY: &str = "the engine is on standby (the target of a migration) and has not taken the volume \
     over yet: send this to the engine that serves the volume now, or send {\"op\":\"activate\"} to this one first";

/// A volume's engine that starts when first needed.
pub struct StandbyEngine {
    volume: String,
    /// The replicas to claim at activation (changed by `setReplicas`).
    replicas: Mutex<Vec<Address>>,
    cluster_key: Option<ClusterKey>,
    replica_timeout: Duration,
    /// Started with the engine when set.
    rebuild_every: Option<Duration>,
    /// The size the replicas reported at start: what NBD clients are told
    /// until the engine runs.
    standby_size: u64,
    engine: OnceLock<Arc<Engine>>,
    /// Held by the activation in progress.
    activating: tokio::sync::Mutex<()>,
    /// Activation attempts that failed, and the last one's error.
    failures: AtomicU64,
    last_failure: Mutex<String>,
}

impl StandbyEngine {
    /// Asks the replicas what they are (info only: no claim, no new epoch)
    /// to learn the volume's size. Fails when no replica answers.
    pub async fn prepare(
        volume: &str,
        replicas: &[Address],
        key: Option<ClusterKey>,
    ) -> Result<StandbyEngine, EngineError> {
        let infos = Engine::survey(volume, replicas, key.as_ref()).await?;
        // Sizes only grow: a replica that missed an expansion reports less.
        let size = infos.iter().map(|i| i.size).max().unwrap_or(0);
        Ok(StandbyEngine {
            volume: volume.to_string(),
            replicas: Mutex::new(replicas.to_vec()),
            cluster_key: key,
            replica_timeout: REPLICA_TIMEOUT,
            rebuild_every: None,
            standby_size: size,
            engine: OnceLock::new(),
            activating: tokio::sync::Mutex::new(()),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(String::new()),
        })
    }

    /// The engine's [`Engine::with_replica_timeout`].
    pub fn with_replica_timeout(mut self, timeout: Duration) -> StandbyEngine {
        self.replica_timeout = timeout;
        self
    }

    /// Runs the engine's [`Engine::rebuild_loop`] (every `every`) once it
    /// has started.
    pub fn with_rebuild_loop(mut self, every: Duration) -> StandbyEngine {
        self.rebuild_every = Some(every);
        self
    }

    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// The running engine, once activated.
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.get().cloned()
    }

    pub fn is_standby(&self) -> bool {
        self.engine.get().is_none()
    }

    /// Takes the volume over (the normal engine start: claim with a new
    /// epoch, freshest replica, resync), unless that is done already.
    pub async fn activate(&self) -> Result<Arc<Engine>, EngineError> {
        if let Some(e) = self.engine.get() {
            return Ok(e.clone());
        }
        let failures_before = self.failures.load(Ordering::SeqCst);
        let _attempt = self.activating.lock().await;
        if let Some(e) = self.engine.get() {
            return Ok(e.clone());
        }
        if self.failures.load(Ordering::SeqCst) != failures_before {
            // The attempt this request waited for failed: so does it.
            let why = self.last_failure.lock().map(|m| m.clone()).unwrap_or_default();
            return Err(EngineError::NotActivated(why));
        }
        let replicas = self.replicas.lock().map(|r| r.clone()).unwrap_or_default();
        tracing::info!(volume = %self.volume, "standby engine taking the volume over");
        match Engine::start_with_key(&self.volume, &replicas, self.cluster_key.clone()).await {
            Ok(engine) => {
                let engine = Arc::new(engine.with_replica_timeout(self.replica_timeout));
                tracing::info!(volume = %self.volume, epoch = engine.epoch(), healthy = ?engine.healthy(),
                    "standby engine activated");
                if let Some(every) = self.rebuild_every {
                    tokio::spawn(engine.clone().rebuild_loop(every, false));
                }
                let engine = self.engine.get_or_init(|| engine).clone();
                Ok(engine)
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(volume = %self.volume, error = %why, "standby engine could not take the volume over");
                if let Ok(mut m) = self.last_failure.lock() {
                    m.clone_from(&why);
                }
                self.failures.fetch_add(1, Ordering::SeqCst);
                Err(EngineError::NotActivated(why))
            }
        }
    }

    /// The engine's status; on standby the configured replicas (state
    /// `standby`), the size they reported, epoch 0 and `standby: true`.
    pub fn status(&self) -> EngineStatus {
        if let Some(e) = self.engine.get() {
            return e.status();
        }
        let replicas = self.replicas.lock().map(|r| r.clone()).unwrap_or_default();
        EngineStatus {
            volume: self.volume.clone(),
            size: self.standby_size,
            epoch: 0,
            replicas: replicas
                .iter()
                .map(|a| ReplicaState { address: a.to_string(), state: "standby".into() })
                .collect(),
            standby: true,
        }
    }

    /// The replicas to claim at activation; once active, the engine's
    /// [`Engine::set_replicas`].
    pub fn set_replicas(&self, replicas: &[Address]) -> Result<(), EngineError> {
        if let Some(e) = self.engine.get() {
            return e.set_replicas(replicas);
        }
        if replicas.is_empty() {
            return Err(EngineError::Invalid("a volume needs at least one replica".into()));
        }
        if let Ok(mut r) = self.replicas.lock() {
            *r = replicas.to_vec();
        }
        Ok(())
    }
}

fn errno(e: EngineError) -> (u32, String) {
    crate::engine::errno(e)
}

#[async_trait::async_trait]
impl crate::nbd::Device for StandbyEngine {
    fn size(&self) -> u64 {
        self.engine.get().map_or(self.standby_size, |e| e.size())
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)> {
        match self.engine.get() {
            Some(e) => e.read(offset, len).await.map_err(errno),
            // Reads do not take the volume over: QEMU reads while it sets
            // the target up, long before the source stops writing.
            None => {
                let replicas = self.replicas.lock().map(|r| r.clone()).unwrap_or_default();
                Engine::peek(&self.volume, &replicas, self.cluster_key.as_ref(), offset, len).await.map_err(errno)
            }
        }
    }
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), (u32, String)> {
        self.activate().await.map_err(errno)?.write(offset, data).await.map_err(errno)
    }
    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), (u32, String)> {
        self.activate().await.map_err(errno)?.write_zeroes(offset, len).await.map_err(errno)
    }
    async fn flush(&self) -> Result<(), (u32, String)> {
        self.activate().await.map_err(errno)?.flush().await.map_err(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::Device as _;
    use crate::replica_server::{Server, ServerOptions};
    use crate::store::Replica;

    /// A replica server of volume `vol` on a unix socket in `dir`.
    fn replica(dir: &std::path::Path) -> Address {
        let replica = Replica::create(&dir.join("r"), "vol", 1 << 20).expect("replica");
        let address = Address::Unix(dir.join("r.sock"));
        let server = Server::bind(replica, std::slice::from_ref(&address), ServerOptions::default()).expect("bind");
        std::thread::spawn(move || server.run());
        address
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_claim_nothing_and_concurrent_first_writes_activate_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = replica(d.path());
        let source = Engine::start("vol", std::slice::from_ref(&a)).await.expect("source engine");
        source.write(0, vec![7; 4096]).await.expect("write");
        source.flush().await.expect("flush");

        let standby = Arc::new(StandbyEngine::prepare("vol", std::slice::from_ref(&a), None).await.expect("standby"));
        assert_eq!(standby.size(), 1 << 20);
        assert!(standby.status().standby && standby.is_standby());
        source.write(4096, vec![8; 4096]).await.expect("the source still owns the volume");

        // Reads are served without a claim: the source still writes.
        for (off, want) in [(0, 7), (4096, 8)] {
            let data = standby.read(off, 4096).await.expect("read on standby");
            assert!(data.iter().all(|&x| x == want), "read at {off}");
        }
        assert!(standby.is_standby(), "a read took the volume over");
        source.write(8192, vec![6; 4096]).await.expect("the source still owns the volume");

        let writes: Vec<_> = (0..8u64)
            .map(|i| {
                let s = standby.clone();
                tokio::spawn(async move { s.write((3 + i) * 4096, vec![i as u8; 4096]).await })
            })
            .collect();
        for r in writes {
            r.await.expect("task").expect("write");
        }
        for (off, want) in [(0, 7), (4096, 8), (8192, 6)] {
            let data = standby.read(off, 4096).await.expect("read");
            assert!(data.iter().all(|&x| x == want), "read at {off} after the take-over");
        }
        // One claim: the epoch went up by one, not once per request.
        let status = standby.status();
        assert!(!status.standby);
        assert_eq!(status.epoch, source.epoch() + 1);
        assert!(source.write(0, vec![9; 4096]).await.is_err(), "the source engine is fenced");
    }

    #[tokio::test]
    async fn standby_needs_a_replica_that_answers() {
        let d = tempfile::tempdir().expect("tempdir");
        let gone = Address::Unix(d.path().join("nothing.sock"));
        let e = StandbyEngine::prepare("vol", &[gone], None).await.err().expect("no replica");
        assert!(matches!(e, EngineError::NoReplica(_)), "{e}");
    }
}
