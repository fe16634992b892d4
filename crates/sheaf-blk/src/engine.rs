//! The engine: one per attached volume. It fans every write out to all
//! healthy replicas and acknowledges it when all have it, reads from one
//! (the first healthy, so the local replica is listed first), and fences
//! older engines by bumping the volume's epoch when it starts.
//!
//! Requests are dispatched to every replica connection under one lock, so
//! all replicas apply writes in the same order; each connection pipelines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use crate::proto::{self, code, Info, Op, Reply, Request};
use crate::replica_server::Address;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("replica {replica}: {message}")]
    Replica { replica: String, message: String },
    #[error("no healthy replica is left: {0}")]
    NoReplica(String),
    #[error("{0}")]
    Invalid(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A pipelined connection to one replica server.
struct Conn {
    address: Address,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    /// Set when the connection is gone (before the waiters are dropped).
    closed: Arc<AtomicBool>,
    healthy: AtomicBool,
}

impl Conn {
    async fn connect(address: &Address) -> std::io::Result<Conn> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        match address {
            Address::Unix(p) => {
                let (r, w) = tokio::net::UnixStream::connect(p).await?.into_split();
                Self::spawn(r, w, rx, pending.clone(), closed.clone());
            }
            Address::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Self::spawn(r, w, rx, pending.clone(), closed.clone());
            }
        }
        Ok(Conn { address: address.clone(), tx, pending, closed, healthy: AtomicBool::new(true) })
    }

    fn spawn<R, W>(mut r: R, w: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>, pending: Pending, closed: Arc<AtomicBool>)
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            let mut w = BufWriter::with_capacity(256 * 1024, w);
            while let Some(frame) = rx.recv().await {
                if w.write_all(&frame).await.is_err() {
                    break;
                }
                // Batch what is already queued, then send.
                while let Ok(frame) = rx.try_recv() {
                    if w.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                if w.flush().await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
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
        });
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
        if self.closed.load(Ordering::SeqCst) || self.tx.send(proto::encode_request(req)).is_err() {
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
    size: u64,
    epoch: u64,
    conns: Vec<Conn>,
    next_id: AtomicU64,
    dispatch: Mutex<()>,
}

fn reply_error(address: &Address, rep: &Reply) -> EngineError {
    EngineError::Replica { replica: address.to_string(), message: String::from_utf8_lossy(&rep.payload).to_string() }
}

impl Engine {
    /// Connects to the replicas (local first), takes the volume over with a
    /// new epoch and keeps the replicas that are current. A replica that is
    /// unreachable, refuses, or is behind the freshest (older flush
    /// generation) is left out as failed.
    pub async fn start(volume: &str, replicas: &[Address]) -> Result<Engine, EngineError> {
        if replicas.is_empty() {
            return Err(EngineError::Invalid("a volume needs at least one replica".into()));
        }
        let mut conns = Vec::new();
        let mut infos = Vec::new();
        let mut problems = Vec::new();
        for a in replicas {
            match Conn::connect(a).await {
                Ok(c) => {
                    // Learn the current epoch without claiming it yet.
                    let req = Request { op: Op::Info, id: 0, epoch: 0, offset: 0, len: 0, payload: Vec::new() };
                    match c.send(&req).await {
                        Ok(r) if r.code == code::OK => match serde_json::from_slice::<Info>(&r.payload) {
                            Ok(info) if info.volume == volume => {
                                infos.push(info.epoch);
                                conns.push(c);
                            }
                            Ok(info) => problems.push(format!("replica {a} belongs to volume {:?}", info.volume)),
                            Err(e) => problems.push(format!("replica {a}: bad info reply: {e}")),
                        },
                        Ok(r) => problems.push(reply_error(a, &r).to_string()),
                        Err(_) => problems.push(format!("replica {a}: connection lost")),
                    }
                }
                Err(e) => problems.push(format!("replica {a}: {e}")),
            }
        }
        let epoch = infos.iter().copied().max().unwrap_or(0) + 1;
        let mut engine = Engine {
            volume: volume.to_string(),
            size: 0,
            epoch,
            conns: Vec::new(),
            next_id: AtomicU64::new(1),
            dispatch: Mutex::new(()),
        };
        let mut claimed = Vec::new();
        for c in conns {
            let hello = Request { op: Op::Hello, id: 0, epoch, offset: 0, len: 0, payload: volume.into() };
            match c.send(&hello).await {
                Ok(r) if r.code == code::OK => match serde_json::from_slice::<Info>(&r.payload) {
                    Ok(info) => claimed.push((c, info)),
                    Err(e) => problems.push(format!("replica {}: bad hello reply: {e}", c.address)),
                },
                Ok(r) => problems.push(reply_error(&c.address, &r).to_string()),
                Err(_) => problems.push(format!("replica {}: connection lost", c.address)),
            }
        }
        let freshest = claimed.iter().map(|(_, i)| i.flush_generation).max();
        let Some(freshest) = freshest else {
            return Err(EngineError::NoReplica(problems.join("; ")));
        };
        for (c, info) in claimed {
            if info.flush_generation < freshest {
                problems.push(format!(
                    "replica {} is behind (flush generation {} < {freshest}); it needs a rebuild",
                    c.address, info.flush_generation
                ));
                continue;
            }
            engine.size = info.size;
            engine.conns.push(c);
        }
        for p in &problems {
            tracing::warn!(volume, problem = %p, "replica left out");
        }
        Ok(engine)
    }

    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn volume(&self) -> &str {
        &self.volume
    }
    /// Replicas in service, by address.
    pub fn healthy(&self) -> Vec<String> {
        self.conns.iter().filter(|c| c.healthy.load(Ordering::SeqCst)).map(|c| c.address.to_string()).collect()
    }

    fn request(&self, op: Op, offset: u64, len: u32, payload: Vec<u8>) -> Request {
        Request { op, id: self.next_id.fetch_add(1, Ordering::Relaxed), epoch: self.epoch, offset, len, payload }
    }

    fn fail(&self, c: &Conn, why: &str) {
        if c.healthy.swap(false, Ordering::SeqCst) {
            tracing::error!(volume = %self.volume, replica = %c.address, why, "replica failed; volume degraded");
        }
    }

    /// Sends a modifying request to every healthy replica; succeeds when
    /// all that are still healthy have done it.
    async fn broadcast(&self, op: Op, offset: u64, len: u32, payload: Vec<u8>) -> Result<(), EngineError> {
        let waits: Vec<_> = {
            let _order = self.dispatch.lock().map_err(|_| EngineError::Invalid("engine state poisoned".into()))?;
            let req = self.request(op, offset, len, payload);
            self.conns.iter().filter(|c| c.healthy.load(Ordering::SeqCst)).map(|c| (c, c.send(&req))).collect()
        };
        let mut last_error = String::from("no replica was in service");
        let mut done = 0;
        for (c, w) in waits {
            match w.await {
                Ok(r) if r.code == code::OK => done += 1,
                Ok(r) if r.code == code::INVALID => return Err(reply_error(&c.address, &r)),
                Ok(r) => {
                    last_error = reply_error(&c.address, &r).to_string();
                    self.fail(c, &last_error);
                }
                Err(_) => {
                    last_error = format!("replica {}: connection lost", c.address);
                    self.fail(c, &last_error);
                }
            }
        }
        if done == 0 {
            return Err(EngineError::NoReplica(last_error));
        }
        Ok(())
    }

    pub async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), EngineError> {
        self.broadcast(Op::Write, offset, data.len() as u32, data).await
    }

    pub async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), EngineError> {
        self.broadcast(Op::WriteZeroes, offset, len, Vec::new()).await
    }

    pub async fn flush(&self) -> Result<(), EngineError> {
        self.broadcast(Op::Flush, 0, 0, Vec::new()).await
    }

    /// Crash-consistent snapshot: ordered after every write dispatched
    /// before it, on every replica.
    pub async fn snapshot(&self, name: &str) -> Result<(), EngineError> {
        self.broadcast(Op::Snapshot, 0, 0, name.as_bytes().to_vec()).await
    }

    /// Reads from the first healthy replica, falling over to the next.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, EngineError> {
        let mut last_error = String::from("no replica was in service");
        for c in self.conns.iter().filter(|c| c.healthy.load(Ordering::SeqCst)) {
            let rx = {
                let _order = self.dispatch.lock().map_err(|_| EngineError::Invalid("engine state poisoned".into()))?;
                c.send(&self.request(Op::Read, offset, len, Vec::new()))
            };
            match rx.await {
                Ok(r) if r.code == code::OK && r.payload.len() == len as usize => return Ok(r.payload),
                Ok(r) if r.code == code::INVALID => return Err(reply_error(&c.address, &r)),
                Ok(r) => {
                    last_error = reply_error(&c.address, &r).to_string();
                    self.fail(c, &last_error);
                }
                Err(_) => {
                    last_error = format!("replica {}: connection lost", c.address);
                    self.fail(c, &last_error);
                }
            }
        }
        Err(EngineError::NoReplica(last_error))
    }
}

fn errno(e: EngineError) -> (u32, String) {
    let n = match e {
        EngineError::Invalid(_) => crate::nbd::EINVAL,
        _ => crate::nbd::EIO,
    };
    (n, e.to_string())
}

#[async_trait::async_trait]
impl crate::nbd::Device for Engine {
    fn size(&self) -> u64 {
        self.size
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
