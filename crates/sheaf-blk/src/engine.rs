//! The engine: one per attached volume. It fans every write out to all
//! healthy replicas and acknowledges it when all have it, reads from one
//! (the first healthy, so the local replica is listed first), and fences
//! older engines by bumping the volume's epoch when it starts.
//!
//! Requests are dispatched to every replica connection under one lock, so
//! all replicas apply writes in the same order; each connection pipelines.
//! A TCP connection to a replica opens with the cluster-key handshake
//! ([`crate::auth`]; [`Engine::start_with_key`] gives the key).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{AuthError, ClusterKey};
use crate::proto::{self, code, Info, LayerRange, Op, Reply, Request};
use crate::replica_server::Address;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("replica {replica}: {message}")]
    Replica { replica: String, message: String },
    /// The cluster-key handshake on a TCP connection failed.
    #[error("replica {replica} {problem}")]
    Auth {
        replica: String,
        #[source]
        problem: AuthError,
    },
    #[error("no healthy replica is left: {0}")]
    NoReplica(String),
    #[error("{0}")]
    Invalid(String),
    /// An engine on standby could not take the volume over (the request
    /// that needed it fails; the next one tries again).
    #[error("the standby engine could not take the volume over: {0}")]
    NotActivated(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A request on its way to a replica: the header, and the payload shared
/// with the other replicas' copies of the same request.
type Frame = ([u8; proto::REQUEST_HEADER], Bytes);

/// Frames sent with one `writev` at most.
const BATCH_FRAMES: usize = 64;

/// Writes `frames` with vectored writes: a write's data goes from the
/// buffer the frontend filled straight to the socket, for every replica.
async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, frames: &[Frame]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
    for (h, p) in frames {
        slices.push(std::io::IoSlice::new(h));
        if !p.is_empty() {
            slices.push(std::io::IoSlice::new(p));
        }
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// How long connecting to a replica may take (a node that is down does
/// not answer SYNs; the rebuild loop tries again later).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn within<T>(connect: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the connection attempt"))?
}

/// A pipelined connection to one replica server.
struct Conn {
    address: Address,
    tx: mpsc::UnboundedSender<Frame>,
    pending: Pending,
    /// Set when the connection is gone (before the waiters are dropped).
    closed: Arc<AtomicBool>,
    state: AtomicU8,
    /// The reply reader; stopped with the connection.
    reader: tokio::task::AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The writer ends when `tx` goes; a peer that stopped answering
        // would keep the reader waiting.
        self.reader.abort();
    }
}

/// In service: gets writes and reads.
const HEALTHY: u8 = 0;
/// Being rebuilt: gets writes (into its new head), no reads.
const REBUILDING: u8 = 1;
const FAILED: u8 = 2;

impl Conn {
    /// Connects; on TCP both sides then prove they hold the cluster key
    /// (`key`; unix sockets need none).
    async fn connect(address: &Address, key: Option<&ClusterKey>) -> Result<Conn, EngineError> {
        let io_error =
            |e: std::io::Error| EngineError::Replica { replica: address.to_string(), message: e.to_string() };
        let (tx, rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let reader = match address {
            Address::Unix(p) => {
                let (r, w) = within(tokio::net::UnixStream::connect(p)).await.map_err(io_error)?.into_split();
                Self::spawn(r, w, rx, pending.clone(), closed.clone())
            }
            Address::Tcp(a) => {
                let mut s = within(tokio::net::TcpStream::connect(a)).await.map_err(io_error)?;
                s.set_nodelay(true).map_err(io_error)?;
                crate::auth::engine_handshake(&mut s, key)
                    .await
                    .map_err(|problem| EngineError::Auth { replica: address.to_string(), problem })?;
                let (r, w) = s.into_split();
                Self::spawn(r, w, rx, pending.clone(), closed.clone())
            }
        };
        Ok(Conn { address: address.clone(), tx, pending, closed, state: AtomicU8::new(HEALTHY), reader })
    }

    fn spawn<R, W>(
        r: R,
        mut w: W,
        mut rx: mpsc::UnboundedReceiver<Frame>,
        pending: Pending,
        closed: Arc<AtomicBool>,
    ) -> tokio::task::AbortHandle
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH_FRAMES);
            while let Some(frame) = rx.recv().await {
                // Send what is already queued along with it.
                batch.push(frame);
                while batch.len() < BATCH_FRAMES {
                    match rx.try_recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                if write_frames(&mut w, &batch).await.is_err() || w.flush().await.is_err() {
                    break;
                }
                batch.clear();
            }
        });
        tokio::spawn(async move {
            // Small replies arrive many to a read; large payloads bypass
            // the buffer.
            let mut r = BufReader::with_capacity(64 * 1024, r);
            while let Ok(rep) = proto::read_reply(&mut r).await {
                let waiter = pending.lock().ok().and_then(|mut p| p.remove(&rep.id));
                if let Some(w) = waiter {
                    let _ = w.send(rep);
                }
            }
            // Connection lost: fail everything waiting now and later.
            closed.store(true, Ordering::SeqCst);
            if let Ok(mut p) = pending.lock() {
                p.clear();
            }
        })
        .abort_handle()
    }

    /// Queues a request; the receiver gets its reply (or is dropped when
    /// the connection fails).
    fn send(&self, req: &Request) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(req.id, tx);
        }
        // Checked after inserting: either the reader's clear sees this
        // waiter, or this sees the connection closed.
        if self.closed.load(Ordering::SeqCst)
            || self.tx.send((proto::request_header(req), req.payload.clone())).is_err()
        {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&req.id);
            }
        }
        rx
    }
}

/// One attached volume.
pub struct Engine {
    volume: String,
    /// Grows with [`Engine::expand`].
    size: AtomicU64,
    epoch: u64,
    /// Every replica the volume has, local first; changed by
    /// [`Engine::set_replicas`].
    configured: RwLock<Vec<Address>>,
    /// Connections in use (healthy or rebuilding); failed ones are dropped
    /// by the rebuild loop.
    conns: RwLock<Vec<Arc<Conn>>>,
    next_id: AtomicU64,
    /// The last flush number handed out.
    flush_gen: AtomicU64,
    dispatch: Mutex<()>,
    /// How long a replica may lag behind its peers before it is failed.
    timeout: Duration,
    /// The base image every replica must have (volumes made from an image).
    base: Option<String>,
    /// Proven to TCP replicas on every connection.
    cluster_key: Option<ClusterKey>,
    /// What the engine served, for [`Engine::stats`].
    io: IoCounters,
}

/// Counters of one kind of request the engine served.
#[derive(Debug, Default)]
struct OpCounter {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Time from each request to its answer, summed.
    nanos: AtomicU64,
}

impl OpCounter {
    fn record<T, E>(&self, bytes: u64, started: std::time::Instant, r: &Result<T, E>) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        match r {
            Ok(_) => self.bytes.fetch_add(bytes, Ordering::Relaxed),
            Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn snapshot(&self) -> crate::control::OpStats {
        crate::control::OpStats {
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            nanos: self.nanos.load(Ordering::Relaxed),
        }
    }
}

/// Reads, writes (zeroing writes too) and flushes since the engine started.
#[derive(Debug, Default)]
struct IoCounters {
    read: OpCounter,
    write: OpCounter,
    flush: OpCounter,
}

/// Reads one snapshot of a replica as the volume was when it was taken
/// (its base image included), while the replica goes on serving its own
/// engine: what clones and image exports read.
pub struct SnapshotReader {
    conn: Conn,
    snapshot: String,
    /// The replica's size in bytes.
    pub size: u64,
    /// The replica's base image, if it has one.
    base: Option<String>,
}

impl SnapshotReader {
    /// Whether the replica sits on a base image (blocks no layer holds
    /// are then the image's, not zeros).
    pub fn has_base(&self) -> bool {
        self.base.is_some()
    }

    /// Opens `snapshot` on a replica reached without a cluster key (a
    /// unix socket, or a TCP replica server run with `--insecure-no-auth`).
    pub async fn open(source: &Address, snapshot: &str) -> Result<SnapshotReader, EngineError> {
        Self::open_with_key(source, snapshot, None).await
    }

    /// [`SnapshotReader::open`], proving `key` to a TCP replica server.
    pub async fn open_with_key(
        source: &Address,
        snapshot: &str,
        key: Option<&ClusterKey>,
    ) -> Result<SnapshotReader, EngineError> {
        let conn = Conn::connect(source, key).await?;
        let info = Request { op: Op::Info, id: 0, epoch: 0, offset: 0, len: 0, payload: Bytes::new() };
        let r = answer(&conn, conn.send(&info)).await?;
        let info: Info = serde_json::from_slice(&r.payload)
            .map_err(|e| EngineError::Replica { replica: source.to_string(), message: format!("bad info: {e}") })?;
        if !info.snapshots.iter().any(|s| s == snapshot) {
            return Err(EngineError::Invalid(format!("the source has no snapshot {snapshot:?}")));
        }
        Ok(SnapshotReader { conn, snapshot: snapshot.to_string(), size: info.size, base: info.base })
    }

    /// `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, EngineError> {
        let req = Request {
            op: Op::ReadSnapshot,
            id: 0,
            epoch: 0,
            offset,
            len,
            payload: Bytes::copy_from_slice(self.snapshot.as_bytes()),
        };
        let r = answer(&self.conn, self.conn.send(&req)).await?;
        if r.code != code::OK {
            return Err(reply_error(&self.conn.address, &r));
        }
        Ok(r.payload)
    }

    /// Which of `count` blocks (of [`crate::store::BLOCK`] bytes) from
    /// `block` changed since snapshot `from` (`None`: since the volume was
    /// empty, its base image not counted) up to this reader's snapshot: a
    /// bitmap, bit `i % 8` of byte `i / 8` (least significant first) for
    /// block `block + i`, what an incremental backup reads. A set bit may
    /// be a block rewritten with the same data; a clear bit reads the same
    /// in both snapshots. At most [`crate::store::MAX_DELTA_BLOCKS`] blocks
    /// per call, within [`SnapshotReader::size`]; `from` must be older than
    /// this snapshot. Writes after this snapshot are never included.
    pub async fn changed(&self, from: Option<&str>, block: u64, count: u64) -> Result<Vec<u8>, EngineError> {
        let range = proto::DeltaRange { from: from.map(str::to_string), to: self.snapshot.clone(), block, count };
        let payload = serde_json::to_vec(&range).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let req = Request { op: Op::SnapshotDelta, id: 0, epoch: 0, offset: 0, len: 0, payload: payload.into() };
        let r = answer(&self.conn, self.conn.send(&req)).await?;
        if r.code != code::OK {
            return Err(reply_error(&self.conn.address, &r));
        }
        if r.payload.len() as u64 != count.div_ceil(8) {
            return Err(EngineError::Replica {
                replica: self.conn.address.to_string(),
                message: format!("answered a change map of {count} blocks with {} bytes", r.payload.len()),
            });
        }
        Ok(r.payload)
    }

    /// The replica's size in bytes when the reader was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The snapshot it reads.
    pub fn snapshot(&self) -> &str {
        &self.snapshot
    }
}

/// The default for [`Engine::with_replica_timeout`] (Longhorn's engine
/// uses 8 s too).
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(8);
/// Requests outside the I/O path (info, claims, rebuild steps) give up
/// after this.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for a reply to a request outside the I/O path.
async fn answer(c: &Conn, rx: oneshot::Receiver<Reply>) -> Result<Reply, EngineError> {
    match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(_)) => Err(lost(c)),
        Err(_) => Err(EngineError::Replica {
            replica: c.address.to_string(),
            message: format!("no answer within {ADMIN_TIMEOUT:?}"),
        }),
    }
}

fn lost(c: &Conn) -> EngineError {
    EngineError::Replica { replica: c.address.to_string(), message: "connection lost".into() }
}

fn reply_error(address: &Address, rep: &Reply) -> EngineError {
    EngineError::Replica { replica: address.to_string(), message: String::from_utf8_lossy(&rep.payload).to_string() }
}

/// Blocks compared per rebuild step (4 MiB).
const REBUILD_CHUNK: u64 = 1024;
/// Rebuild writes sent to the target before the oldest must be answered.
const PUTS_IN_FLIGHT: usize = 2;
/// Bytes of one block's checksum entry.
const ENTRY: u64 = 8;
/// Differing blocks at most this far apart are copied in one request
/// (with the equal ones between them).
const RUN_GAP: u64 = 16;

/// The runs `(first block, count)` of blocks whose checksum entries differ
/// between `want` and `have`, nearby runs merged.
fn differing_runs(want: &[u8], have: &[u8]) -> Vec<(u64, u64)> {
    let n = (want.len() / ENTRY as usize) as u64;
    let differs = |k: u64| {
        let r = (k * ENTRY) as usize..((k + 1) * ENTRY) as usize;
        want.get(r.clone()) != have.get(r)
    };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for k in (0..n).filter(|&k| differs(k)) {
        match runs.last_mut() {
            Some((start, count)) if k - (*start + *count) <= RUN_GAP => *count = k + 1 - *start,
            _ => runs.push((k, 1)),
        }
    }
    runs
}

impl Engine {
    /// Connects to the replicas (local first), takes the volume over with a
    /// new epoch and keeps the replicas that are current. A replica that is
    /// unreachable, refuses, or is behind the freshest (older flush
    /// generation) is left out until the rebuild loop brings it back.
    ///
    /// Without a cluster key: TCP replica servers must run with
    /// `--insecure-no-auth`; see [`Engine::start_with_key`].
    pub async fn start(volume: &str, replicas: &[Address]) -> Result<Engine, EngineError> {
        Self::start_with_key(volume, replicas, None).await
    }

    /// [`Engine::start`], proving `key` to every TCP replica server (on
    /// every connection: at start, rebuilds, snapshot copies).
    pub async fn start_with_key(
        volume: &str,
        replicas: &[Address],
        key: Option<ClusterKey>,
    ) -> Result<Engine, EngineError> {
        if replicas.is_empty() {
            return Err(EngineError::Invalid("a volume needs at least one replica".into()));
        }
        let mut conns = Vec::new();
        let mut epochs = Vec::new();
        let mut problems = Vec::new();
        for probed in Self::probe_all(volume, replicas, key.as_ref()).await {
            match probed {
                Ok((c, info)) => {
                    epochs.push(info.epoch);
                    conns.push(c);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let epoch = epochs.iter().copied().max().unwrap_or(0) + 1;
        let mut claimed = Vec::new();
        for c in conns {
            match Self::claim(volume, &c, epoch).await {
                Ok(info) => claimed.push((c, info)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let Some(freshest) = claimed.iter().map(|(_, i)| i.flush_generation).max() else {
            return Err(EngineError::NoReplica(problems.join("; ")));
        };
        let mut size = 0;
        let mut current = Vec::new();
        let mut base = None;
        for (c, info) in claimed {
            if !current.is_empty() && info.base != base {
                problems.push(format!(
                    "replica {} is on base image {:?}, the volume's other replicas on {base:?}",
                    c.address, info.base
                ));
                continue;
            }
            if info.flush_generation < freshest {
                problems.push(format!(
                    "replica {} is behind (flush generation {} < {freshest}); it needs a rebuild",
                    c.address, info.flush_generation
                ));
                continue;
            }
            size = info.size;
            if current.is_empty() {
                base = info.base.clone();
                current.push(Arc::new(c));
            } else {
                // Current too, but writes after the last flush may differ
                // between replicas: it is resynchronised from the first
                // (compare by checksums, copy what differs) before it
                // serves reads, so replicas never disagree.
                tracing::info!(volume, replica = %c.address, "replica will be resynchronised");
            }
        }
        for p in &problems {
            tracing::warn!(volume, problem = %p, "replica left out");
        }
        Ok(Engine {
            volume: volume.to_string(),
            size: AtomicU64::new(size),
            epoch,
            configured: RwLock::new(replicas.to_vec()),
            conns: RwLock::new(current),
            next_id: AtomicU64::new(1),
            flush_gen: AtomicU64::new(freshest),
            dispatch: Mutex::new(()),
            timeout: REPLICA_TIMEOUT,
            base,
            cluster_key: key,
            io: IoCounters::default(),
        })
    }

    /// Reads what every replica it reaches says about itself (no claim, no
    /// new epoch: an engine on standby learns the volume's size this way).
    /// Fails when none answers.
    pub async fn survey(
        volume: &str,
        replicas: &[Address],
        key: Option<&ClusterKey>,
    ) -> Result<Vec<Info>, EngineError> {
        let mut infos = Vec::new();
        let mut problems = Vec::new();
        for probed in Self::probe_all(volume, replicas, key).await {
            match probed {
                Ok((_, info)) => infos.push(info),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if infos.is_empty() {
            return Err(EngineError::NoReplica(if problems.is_empty() {
                "a volume needs at least one replica".into()
            } else {
                problems.join("; ")
            }));
        }
        Ok(infos)
    }

    /// Reads `len` bytes at `offset` from the first of `replicas` that
    /// answers, at the epoch it has now, without claiming it: the engine
    /// that owns the volume is not fenced. What an engine on standby
    /// answers reads with (QEMU reads a disk's first sector when it creates
    /// the device, to guess its geometry, while the migration's source
    /// still writes). Writes the owner has not flushed may or may not be
    /// seen.
    pub async fn peek(
        volume: &str,
        replicas: &[Address],
        key: Option<&ClusterKey>,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, EngineError> {
        let mut problems = Vec::new();
        for a in replicas {
            // Twice: the owner may claim a newer epoch between the two
            // requests.
            for _ in 0..2 {
                let (c, info) = match Self::probe(volume, a, key).await {
                    Ok(x) => x,
                    Err(e) => {
                        problems.push(e.to_string());
                        break;
                    }
                };
                let req = Request { op: Op::Read, id: 0, epoch: info.epoch, offset, len, payload: Bytes::new() };
                let r = answer(&c, c.send(&req)).await?;
                if r.code == code::OK {
                    return Ok(r.payload);
                }
                problems.push(reply_error(a, &r).to_string());
                if r.code != code::STALE_EPOCH {
                    break;
                }
            }
        }
        Err(EngineError::NoReplica(problems.join("; ")))
    }

    /// [`Self::probe`] of every replica at once, in their order: a node
    /// that is down (its connect times out) delays the start once, not once
    /// per replica.
    async fn probe_all(
        volume: &str,
        replicas: &[Address],
        key: Option<&ClusterKey>,
    ) -> Vec<Result<(Conn, Info), EngineError>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, a) in replicas.iter().cloned().enumerate() {
            let (volume, key) = (volume.to_string(), key.cloned());
            set.spawn(async move { (i, Self::probe(&volume, &a, key.as_ref()).await) });
        }
        let mut out = Vec::with_capacity(replicas.len());
        while let Some(done) = set.join_next().await {
            match done {
                Ok(r) => out.push(r),
                Err(e) => out.push((usize::MAX, Err(EngineError::Invalid(format!("a replica probe failed: {e}"))))),
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// Connects and reads the replica's info (no epoch needed).
    async fn probe(volume: &str, a: &Address, key: Option<&ClusterKey>) -> Result<(Conn, Info), EngineError> {
        let err = |m: String| EngineError::Replica { replica: a.to_string(), message: m };
        let c = Conn::connect(a, key).await?;
        let req = Request { op: Op::Info, id: 0, epoch: 0, offset: 0, len: 0, payload: Bytes::new() };
        let r = answer(&c, c.send(&req)).await?;
        if r.code != code::OK {
            return Err(reply_error(a, &r));
        }
        let info: Info = serde_json::from_slice(&r.payload).map_err(|e| err(format!("bad info reply: {e}")))?;
        if info.volume != volume {
            return Err(err(format!("belongs to volume {:?}", info.volume)));
        }
        Ok((c, info))
    }

    /// Claims the replica for `epoch` (fencing older engines).
    async fn claim(volume: &str, c: &Conn, epoch: u64) -> Result<Info, EngineError> {
        let hello = Request {
            op: Op::Hello,
            id: 0,
            epoch,
            offset: 0,
            len: 0,
            payload: Bytes::copy_from_slice(volume.as_bytes()),
        };
        let r = answer(c, c.send(&hello)).await?;
        if r.code != code::OK {
            return Err(reply_error(&c.address, &r));
        }
        serde_json::from_slice(&r.payload)
            .map_err(|e| EngineError::Replica { replica: c.address.to_string(), message: format!("bad hello: {e}") })
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How long a replica may lag behind its peers (or, for reads, behind
    /// the next replica) before it is failed; default [`REPLICA_TIMEOUT`].
    pub fn with_replica_timeout(mut self, timeout: Duration) -> Engine {
        self.timeout = timeout;
        self
    }
    pub fn volume(&self) -> &str {
        &self.volume
    }

    fn in_state(&self, states: &[u8]) -> Vec<Arc<Conn>> {
        self.conns
            .read()
            .map(|cs| cs.iter().filter(|c| states.contains(&c.state.load(Ordering::SeqCst))).cloned().collect())
            .unwrap_or_default()
    }

    /// Replicas in service, by address.
    pub fn healthy(&self) -> Vec<String> {
        self.in_state(&[HEALTHY]).iter().map(|c| c.address.to_string()).collect()
    }

    /// What the control socket reports.
    pub fn status(&self) -> crate::control::EngineStatus {
        let conns = self.conns.read().map(|cs| cs.clone()).unwrap_or_default();
        let configured = self.configured.read().map(|c| c.clone()).unwrap_or_default();
        let replicas = configured
            .iter()
            .map(|a| {
                let state = match conns.iter().find(|c| &c.address == a).map(|c| c.state.load(Ordering::SeqCst)) {
                    Some(HEALTHY) => "healthy",
                    Some(REBUILDING) => "rebuilding",
                    _ => "failed",
                };
                crate::control::ReplicaState { address: a.to_string(), state: state.into() }
            })
            .collect();
        crate::control::EngineStatus {
            volume: self.volume.clone(),
            size: self.size(),
            epoch: self.epoch,
            replicas,
            standby: false,
        }
    }

    /// The status with the I/O counters (the control socket's `stats`).
    pub fn stats(&self) -> crate::control::EngineStats {
        crate::control::EngineStats {
            status: self.status(),
            read: self.io.read.snapshot(),
            write: self.io.write.snapshot(),
            flush: self.io.flush.snapshot(),
        }
    }

    /// Replaces the set of replicas the volume has (a replica moved to
    /// another node, or the count changed). Replicas no longer listed stop
    /// getting I/O at once; new ones are rebuilt by the rebuild loop. At
    /// least one healthy replica must stay.
    pub fn set_replicas(&self, replicas: &[Address]) -> Result<(), EngineError> {
        if replicas.is_empty() {
            return Err(EngineError::Invalid("a volume needs at least one replica".into()));
        }
        let _order = self.order()?;
        let keeps_healthy = self.in_state(&[HEALTHY]).iter().any(|c| replicas.contains(&c.address));
        if !keeps_healthy {
            return Err(EngineError::Invalid(
                "the new replica set leaves no healthy replica: add the new replicas first, remove old ones after they are rebuilt"
                    .into(),
            ));
        }
        if let Ok(mut c) = self.configured.write() {
            *c = replicas.to_vec();
        }
        if let Ok(mut cs) = self.conns.write() {
            cs.retain(|c| {
                let keep = replicas.contains(&c.address);
                if !keep {
                    tracing::info!(volume = %self.volume, replica = %c.address, "replica removed from the volume");
                }
                keep
            });
        }
        Ok(())
    }

    fn request(&self, op: Op, offset: u64, len: u32, payload: impl Into<Bytes>) -> Request {
        let payload = payload.into();
        Request { op, id: self.next_id.fetch_add(1, Ordering::Relaxed), epoch: self.epoch, offset, len, payload }
    }

    fn fail(&self, c: &Conn, why: &str) {
        if c.state.swap(FAILED, Ordering::SeqCst) != FAILED {
            tracing::error!(volume = %self.volume, replica = %c.address, why, "replica failed; volume degraded");
        }
    }

    /// Holds the write order: requests sent under it reach every replica
    /// in the same order.
    fn order(&self) -> Result<std::sync::MutexGuard<'_, ()>, EngineError> {
        self.dispatch.lock().map_err(|_| EngineError::Invalid("engine state poisoned".into()))
    }

    /// Sends `req` to every healthy replica and `to_rebuilding` to every
    /// replica being rebuilt; call with the write order held.
    fn send_to_writers(&self, req: &Request, to_rebuilding: &Request) -> Vec<(Arc<Conn>, oneshot::Receiver<Reply>)> {
        self.in_state(&[HEALTHY, REBUILDING])
            .into_iter()
            .map(|c| {
                let r = if c.state.load(Ordering::SeqCst) == HEALTHY { req } else { to_rebuilding };
                let w = c.send(r);
                (c, w)
            })
            .collect()
    }

    /// Marks `c` failed for `e`; returns the message.
    fn failed(&self, c: &Conn, e: EngineError) -> String {
        let message = e.to_string();
        self.fail(c, &message);
        message
    }

    /// Sends a modifying request to every replica taking writes; succeeds
    /// when all healthy ones that are still healthy have done it.
    async fn broadcast(&self, op: Op, offset: u64, len: u32, payload: impl Into<Bytes>) -> Result<(), EngineError> {
        let waits = {
            let _order = self.order()?;
            let req = self.request(op, offset, len, payload);
            self.send_to_writers(&req, &req)
        };
        self.collect(waits).await
    }

    /// Waits for the replies of one request sent to several replicas.
    /// A replica that has not answered `timeout` after the request went
    /// out while a peer has is failed (a partitioned node, a dying disk);
    /// when none has answered, the engine keeps waiting, since failing
    /// them all would take the volume down for a stall they share.
    async fn collect(&self, waits: Vec<(Arc<Conn>, oneshot::Receiver<Reply>)>) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last_error = String::from("no replica was in service");
        let mut done = 0;
        let mut slow = Vec::new();
        for (c, mut w) in waits {
            match tokio::time::timeout_at(deadline, &mut w).await {
                Ok(res) => self.settle(&c, res, &mut done, &mut last_error)?,
                Err(_) => slow.push((c, w)),
            }
        }
        for (c, w) in slow {
            if done > 0 {
                let why = format!("no answer within {:?} while its peers answered", self.timeout);
                last_error = self.failed(&c, EngineError::Replica { replica: c.address.to_string(), message: why });
            } else {
                tracing::warn!(volume = %self.volume, replica = %c.address, "no replica answered in time; still waiting");
                self.settle(&c, w.await, &mut done, &mut last_error)?;
            }
        }
        if done == 0 {
            return Err(EngineError::NoReplica(last_error));
        }
        Ok(())
    }

    /// Takes one replica's answer to a modifying request into account.
    fn settle(
        &self,
        c: &Conn,
        res: Result<Reply, oneshot::error::RecvError>,
        done: &mut usize,
        last_error: &mut String,
    ) -> Result<(), EngineError> {
        let rebuilding = c.state.load(Ordering::SeqCst) == REBUILDING;
        match res {
            Ok(r) if r.code == code::OK => *done += usize::from(!rebuilding),
            Ok(r) if r.code == code::INVALID && !rebuilding => return Err(reply_error(&c.address, &r)),
            Ok(r) => *last_error = self.failed(c, reply_error(&c.address, &r)),
            Err(_) => *last_error = self.failed(c, lost(c)),
        }
        Ok(())
    }

    pub async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), EngineError> {
        let (started, len) = (std::time::Instant::now(), data.len() as u64);
        let r = self.broadcast(Op::Write, offset, data.len() as u32, data).await;
        self.io.write.record(len, started, &r);
        r
    }

    pub async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), EngineError> {
        let started = std::time::Instant::now();
        let r = self.broadcast(Op::WriteZeroes, offset, len, Vec::new()).await;
        self.io.write.record(u64::from(len), started, &r);
        r
    }

    /// Flushes every replica. Healthy ones record the next flush number;
    /// one being rebuilt only syncs, so that it never looks current before
    /// its rebuild is complete.
    pub async fn flush(&self) -> Result<(), EngineError> {
        let started = std::time::Instant::now();
        let r = self.flush_replicas().await;
        self.io.flush.record(0, started, &r);
        r
    }

    async fn flush_replicas(&self) -> Result<(), EngineError> {
        let waits = {
            let _order = self.order()?;
            let generation = self.flush_gen.fetch_add(1, Ordering::SeqCst) + 1;
            let flush = |g| self.request(Op::Flush, g, 0, Vec::new());
            self.send_to_writers(&flush(generation), &flush(0))
        };
        self.collect(waits).await
    }

    /// Crash-consistent snapshot: ordered after every write dispatched
    /// before it, on every replica.
    pub async fn snapshot(&self, name: &str) -> Result<(), EngineError> {
        self.broadcast(Op::Snapshot, 0, 0, name.as_bytes().to_vec()).await
    }

    /// Deletes a snapshot on every replica (its data merges into the
    /// neighbouring layer; what the volume reads does not change).
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), EngineError> {
        self.broadcast(Op::DeleteSnapshot, 0, 0, name.as_bytes().to_vec()).await
    }

    /// Goes back to snapshot `name` on every replica. Only for a volume no
    /// one is using (no NBD client): what a running guest has cached would
    /// no longer match the disk.
    pub async fn revert(&self, name: &str, discard_newer: bool) -> Result<(), EngineError> {
        self.broadcast(Op::Revert, u64::from(discard_newer), 0, name.as_bytes().to_vec()).await?;
        self.flush().await
    }

    /// Grows the volume on every replica. NBD clients learn the new size
    /// when they reconnect.
    pub async fn expand(&self, size: u64) -> Result<(), EngineError> {
        let old = self.size();
        if size < old || !size.is_multiple_of(crate::store::BLOCK) {
            return Err(EngineError::Invalid(format!(
                "a volume can only grow, in multiples of 4096 bytes: {old} → {size}"
            )));
        }
        if size == old {
            return Ok(());
        }
        self.broadcast(Op::Expand, size, 0, Vec::new()).await?;
        self.size.store(size, Ordering::SeqCst);
        self.flush().await
    }

    /// Snapshot names, oldest first (from the first healthy replica).
    pub async fn snapshots(&self) -> Result<Vec<String>, EngineError> {
        let c = self
            .in_state(&[HEALTHY])
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::NoReplica("no healthy replica".into()))?;
        let chain: Vec<String> = serde_json::from_slice(&self.ask(&c, Op::Chain, Vec::new()).await?)
            .map_err(|e| EngineError::Invalid(format!("bad chain: {e}")))?;
        Ok(chain.into_iter().filter(|n| !n.starts_with("rebuild-")).collect())
    }

    /// Fills this (new, empty) volume with snapshot `snapshot` of another
    /// volume, read from its replica at `source` (which keeps serving its
    /// own engine meanwhile). Blocks this volume already reads the same
    /// (zeros, or its base image's) are skipped: the copy stays thin.
    /// Returns the bytes written.
    pub async fn copy_from_snapshot(&self, source: &Address, snapshot: &str) -> Result<u64, EngineError> {
        let reader = SnapshotReader::open_with_key(source, snapshot, self.cluster_key.as_ref()).await?;
        let chunk = REBUILD_CHUNK * crate::store::BLOCK;
        let size = self.size().min(reader.size);
        let mut written = 0;
        let mut offset = 0;
        while offset < size {
            let len = chunk.min(size - offset) as u32;
            let data = reader.read(offset, len).await?;
            // Only the blocks that differ from what this volume reads
            // already: zeros on a blank volume, the shared base image's
            // blocks on a volume made from the same image (the copy stays
            // thin either way).
            let own = match self.base {
                Some(_) => self.read(offset, len).await?,
                None => vec![0u8; data.len()],
            };
            let block = crate::store::BLOCK as usize;
            let differs: Vec<bool> = data.chunks(block).zip(own.chunks(block)).map(|(a, b)| a != b).collect();
            let mut k = 0;
            while k < differs.len() {
                if !differs[k] {
                    k += 1;
                    continue;
                }
                let run = differs[k..].iter().take_while(|d| **d).count();
                let (from, to) = (k * block, ((k + run) * block).min(data.len()));
                written += (to - from) as u64;
                self.write(offset + from as u64, data[from..to].to_vec()).await?;
                k += run;
            }
            offset += u64::from(len);
        }
        self.flush().await?;
        Ok(written)
    }

    /// Reads from the first healthy replica, falling over to the next.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, EngineError> {
        let started = std::time::Instant::now();
        let r = self.read_replicas(offset, len).await;
        self.io.read.record(u64::from(len), started, &r);
        r
    }

    async fn read_replicas(&self, offset: u64, len: u32) -> Result<Vec<u8>, EngineError> {
        let mut last_error = String::from("no replica was in service");
        let healthy = self.in_state(&[HEALTHY]);
        let count = healthy.len();
        for (i, c) in healthy.into_iter().enumerate() {
            let mut rx = {
                let _order = self.order()?;
                c.send(&self.request(Op::Read, offset, len, Vec::new()))
            };
            let res = match tokio::time::timeout(self.timeout, &mut rx).await {
                Ok(res) => res,
                // Another replica can serve it: this one is failed.
                Err(_) if i + 1 < count => {
                    let why = format!("no answer to a read within {:?}", self.timeout);
                    last_error = self.failed(&c, EngineError::Replica { replica: c.address.to_string(), message: why });
                    continue;
                }
                Err(_) => rx.await,
            };
            match res {
                Ok(r) if r.code == code::OK && r.payload.len() == len as usize => return Ok(r.payload),
                Ok(r) if r.code == code::INVALID => return Err(reply_error(&c.address, &r)),
                Ok(r) => last_error = self.failed(&c, reply_error(&c.address, &r)),
                Err(_) => last_error = self.failed(&c, lost(&c)),
            }
        }
        Err(EngineError::NoReplica(last_error))
    }

    /// One request to one replica, outside the write order.
    async fn ask(&self, c: &Conn, op: Op, payload: Vec<u8>) -> Result<Vec<u8>, EngineError> {
        let r = answer(c, c.send(&self.request(op, 0, 0, payload))).await?;
        if r.code != code::OK {
            return Err(reply_error(&c.address, &r));
        }
        Ok(r.payload)
    }

    /// Brings the replicas that are not in service back, one at a time,
    /// until the engine is dropped. Returns when every configured replica
    /// is healthy if `until_complete`.
    pub async fn rebuild_loop(self: Arc<Self>, every: Duration, until_complete: bool) {
        loop {
            // A connection that dropped while idle fails its replica now,
            // not at the next write. Then failed connections are forgotten.
            for c in self.in_state(&[HEALTHY, REBUILDING]) {
                if c.closed.load(Ordering::SeqCst) {
                    self.fail(&c, "connection lost");
                }
            }
            if let Ok(mut cs) = self.conns.write() {
                cs.retain(|c| c.state.load(Ordering::SeqCst) != FAILED);
            }
            let in_use: Vec<Address> =
                self.conns.read().map(|cs| cs.iter().map(|c| c.address.clone()).collect()).unwrap_or_default();
            let configured = self.configured.read().map(|c| c.clone()).unwrap_or_default();
            let missing: Vec<Address> = configured.iter().filter(|a| !in_use.contains(a)).cloned().collect();
            if missing.is_empty() && until_complete {
                return;
            }
            for a in missing {
                let started = std::time::Instant::now();
                match self.rebuild(&a).await {
                    Ok(stats) => tracing::info!(volume = %self.volume, replica = %a, copied_mib = stats.0 / (1 << 20),
                        compared_mib = stats.1 / (1 << 20), seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                        "replica rebuilt; back in service"),
                    Err(e) => {
                        tracing::debug!(volume = %self.volume, replica = %a, error = %e, "rebuild not possible yet")
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Rebuilds the replica at `a` from a healthy one while writes go on:
    /// a snapshot on every replica (the target included) splits the data
    /// into immutable layers, which are compared by checksum and copied
    /// where they differ, and a live head that the target receives writes
    /// into from that moment. Returns (bytes copied, bytes compared).
    pub async fn rebuild(&self, a: &Address) -> Result<(u64, u64), EngineError> {
        let source = self
            .in_state(&[HEALTHY])
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::NoReplica("no healthy replica to rebuild from".into()))?;
        let (conn, info) = Self::probe(&self.volume, a, self.cluster_key.as_ref()).await?;
        let size = self.size();
        if info.base != self.base {
            return Err(EngineError::Replica {
                replica: a.to_string(),
                message: format!(
                    "is on base image {:?}, the volume on {:?}: it cannot be rebuilt into this volume",
                    info.base, self.base
                ),
            });
        }
        if info.size > size {
            return Err(EngineError::Replica {
                replica: a.to_string(),
                message: format!("has size {}, larger than the volume's {size}", info.size),
            });
        }
        Self::claim(&self.volume, &conn, self.epoch).await?;
        if info.size < size {
            // It missed an expansion while it was away.
            let r = answer(&conn, conn.send(&self.request(Op::Expand, size, 0, Vec::new()))).await?;
            if r.code != code::OK {
                return Err(reply_error(a, &r));
            }
        }
        let target = Arc::new(conn);
        target.state.store(REBUILDING, Ordering::SeqCst);
        let name = format!("rebuild-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
        // The snapshot and joining the write fan-out happen at one point of
        // the write order.
        let waits = {
            let _order = self.order()?;
            if let Ok(mut cs) = self.conns.write() {
                cs.push(target.clone());
            }
            let req = self.request(Op::Snapshot, 0, 0, name.as_bytes().to_vec());
            self.send_to_writers(&req, &req)
        };
        let result = async {
            self.collect(waits).await?;
            if target.state.load(Ordering::SeqCst) != REBUILDING {
                return Err(EngineError::Replica {
                    replica: a.to_string(),
                    message: "failed during the snapshot".into(),
                });
            }
            tracing::debug!(volume = %self.volume, replica = %a, "rebuild: snapshot taken");
            let chain: Vec<String> = serde_json::from_slice(&self.ask(&source, Op::Chain, Vec::new()).await?)
                .map_err(|e| EngineError::Invalid(format!("bad chain: {e}")))?;
            self.ask(&target, Op::SetChain, serde_json::to_vec(&chain).unwrap_or_default()).await?;
            let blocks = self.size() / crate::store::BLOCK;
            let (mut copied, mut compared) = (0u64, 0u64);
            // Writes to the target are pipelined with the next reads from
            // the source: a few are in flight, answered in order.
            let mut puts: std::collections::VecDeque<oneshot::Receiver<Reply>> = std::collections::VecDeque::new();
            let settle = |r: Reply| if r.code == code::OK { Ok(()) } else { Err(reply_error(a, &r)) };
            // The checksums of the next chunk are asked for before this
            // chunk's writes go out, so the target's answer does not wait
            // behind them on its connection.
            let sums_of = |snap: &str, block: u64| {
                let count = REBUILD_CHUNK.min(blocks - block);
                let range = LayerRange { snapshot: snap.to_string(), block, count };
                let range = serde_json::to_vec(&range).unwrap_or_default();
                let ask = |c: &Conn| c.send(&self.request(Op::LayerSums, 0, 0, range.clone()));
                (ask(&source), ask(&target), count)
            };
            let payload_of =
                |c: &Conn, r: Reply| if r.code == code::OK { Ok(r.payload) } else { Err(reply_error(&c.address, &r)) };
            for snap in &chain {
                let mut block = 0;
                let mut next = (blocks > 0).then(|| sums_of(snap, 0));
                while let Some((from_source, from_target, count)) = next.take() {
                    if block + count < blocks {
                        next = Some(sums_of(snap, block + count));
                    }
                    let want = payload_of(&source, answer(&source, from_source).await?)?;
                    let have = payload_of(&target, answer(&target, from_target).await?)?;
                    compared += count * crate::store::BLOCK;
                    for (start, n) in differing_runs(&want, &have) {
                        let sub = LayerRange { snapshot: snap.clone(), block: block + start, count: n };
                        let sub = serde_json::to_vec(&sub).unwrap_or_default();
                        let data = self.ask(&source, Op::LayerData, sub.clone()).await?;
                        copied += data.len() as u64;
                        let entries = &want[(start * ENTRY) as usize..((start + n) * ENTRY) as usize];
                        let mut payload = Vec::with_capacity(4 + sub.len() + entries.len() + data.len());
                        payload.extend_from_slice(&(sub.len() as u32).to_le_bytes());
                        payload.extend_from_slice(&sub);
                        payload.extend_from_slice(entries);
                        payload.extend_from_slice(&data);
                        puts.push_back(target.send(&self.request(Op::PutLayer, 0, 0, payload)));
                        while puts.len() > PUTS_IN_FLIGHT {
                            if let Some(rx) = puts.pop_front() {
                                settle(answer(&target, rx).await?)?;
                            }
                        }
                    }
                    block += count;
                }
            }
            while let Some(rx) = puts.pop_front() {
                settle(answer(&target, rx).await?)?;
            }
            tracing::debug!(volume = %self.volume, replica = %a, copied, "rebuild: layers copied");
            Ok((copied, compared))
        }
        .await;
        match result {
            Ok(stats) => {
                if !self.configured.read().is_ok_and(|c| c.contains(a)) {
                    // Removed from the volume while it was being rebuilt.
                    if let Ok(mut cs) = self.conns.write() {
                        cs.retain(|c| !Arc::ptr_eq(c, &target));
                    }
                    return Err(EngineError::Invalid(format!("replica {a} is no longer part of the volume")));
                }
                let _ = target.state.compare_exchange(REBUILDING, HEALTHY, Ordering::SeqCst, Ordering::SeqCst);
                // Every replica, the rebuilt one included, now records the
                // same flush number.
                self.flush().await?;
                tracing::debug!(volume = %self.volume, replica = %a, "rebuild: flushed");
                // The rebuild snapshot is merged back (data moves up into
                // the heads); a failure here leaves it listed, harmlessly.
                if let Err(e) = self.broadcast(Op::DeleteSnapshot, 0, 0, name.as_bytes().to_vec()).await {
                    tracing::warn!(volume = %self.volume, snapshot = %name, error = %e, "rebuild snapshot not removed");
                }
                Ok(stats)
            }
            Err(e) => {
                self.fail(&target, &e.to_string());
                Err(e)
            }
        }
    }
}

pub(crate) fn errno(e: EngineError) -> (u32, String) {
    let n = match e {
        EngineError::Invalid(_) => crate::nbd::EINVAL,
        _ => crate::nbd::EIO,
    };
    (n, e.to_string())
}

#[async_trait::async_trait]
impl crate::nbd::Device for Engine {
    fn size(&self) -> u64 {
        Engine::size(self)
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)> {
        Engine::read(self, offset, len).await.map_err(errno)
    }
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), (u32, String)> {
        Engine::write(self, offset, data).await.map_err(errno)
    }
    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), (u32, String)> {
        Engine::write_zeroes(self, offset, len).await.map_err(errno)
    }
    async fn flush(&self) -> Result<(), (u32, String)> {
        Engine::flush(self).await.map_err(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_runs_are_found_and_merged_when_close() {
        let entries = |v: &[u8]| v.iter().flat_map(|&x| [x, 0, 0, 0, 1, 0, 0, 0]).collect::<Vec<u8>>();
        let want = entries(&[1; 64]);
        let mut have_v = [1u8; 64];
        assert!(differing_runs(&want, &entries(&have_v)).is_empty());
        have_v[3] = 9;
        have_v[10] = 9; // 6 blocks after: merged
        have_v[50] = 9; // far: its own run
        have_v[63] = 9;
        assert_eq!(differing_runs(&want, &entries(&have_v)), [(3, 8), (50, 14)]);
        // A target that has nothing differs everywhere.
        assert_eq!(differing_runs(&want, &[]), [(0, 64)]);
    }
}
