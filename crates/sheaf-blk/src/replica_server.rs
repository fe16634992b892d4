//! The replica server (`sheaf blk replica`): serves one replica store to
//! engines (and rebuilds) over a unix socket or TCP, a thread per
//! connection with blocking disk I/O. Requests carry the volume epoch: a
//! `Hello` with a newer epoch fences every older engine out.
//!
//! A TCP client must first pass the cluster-key handshake
//! ([`crate::auth`]); a TCP listener without a key is refused unless
//! [`ServerOptions::insecure_no_auth`] says otherwise. Unix-socket
//! clients are served at once.

use std::io::{BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::auth::ClusterKey;
use crate::proto::{self, code, DeltaRange, Info, LayerRange, Op, Reply, Request};
use crate::store::{Replica, StoreError};

/// Where a replica server listens or an engine connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Address::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            Ok(Address::Tcp(a.to_string()))
        } else {
            Err(format!("address {s:?} must be unix:PATH or tcp:HOST:PORT"))
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

type Shared = Arc<RwLock<Replica>>;

fn info(r: &Replica) -> Info {
    Info {
        volume: r.meta().volume.clone(),
        size: r.size(),
        epoch: r.epoch(),
        flush_generation: r.flush_generation(),
        snapshots: r.snapshots().into_iter().map(|s| s.name).collect(),
        base: r.base().map(|b| b.id.clone()),
    }
}

fn error_reply(id: u64, e: &StoreError) -> Reply {
    let c = match e {
        StoreError::Io { .. } => code::IO,
        StoreError::Corrupt { .. } => code::CORRUPT,
        StoreError::Invalid(_) | StoreError::NoSnapshot(_) => code::INVALID,
    };
    Reply { code: c, id, payload: e.to_string().into_bytes() }
}

fn reply(id: u64, r: Result<Vec<u8>, StoreError>) -> Reply {
    match r {
        Ok(payload) => Reply { code: code::OK, id, payload },
        Err(e) => error_reply(id, &e),
    }
}

fn lock_error(id: u64) -> Reply {
    Reply { code: code::IO, id, payload: b"replica state is poisoned by an earlier panic".to_vec() }
}

/// Handles one request.
pub fn handle(replica: &Shared, req: Request) -> Reply {
    let id = req.id;
    if req.op == Op::Hello {
        let Ok(mut r) = replica.write() else { return lock_error(id) };
        let volume = String::from_utf8_lossy(&req.payload).to_string();
        if volume != r.meta().volume {
            return Reply {
                code: code::INVALID,
                id,
                payload: format!("this replica belongs to volume {:?}, not {volume:?}", r.meta().volume).into_bytes(),
            };
        }
        if req.epoch < r.epoch() {
            return Reply {
                code: code::STALE_EPOCH,
                id,
                payload: format!("epoch {} is older than the replica's {}", req.epoch, r.epoch()).into_bytes(),
            };
        }
        return reply(id, r.set_epoch(req.epoch).map(|_| serde_json::to_vec(&info(&r)).unwrap_or_default()));
    }
    let epoch_ok = |r: &Replica| req.epoch == r.epoch();
    let stale = |r: &Replica| Reply {
        code: code::STALE_EPOCH,
        id,
        payload: format!("request epoch {} is not the replica's {}: fenced", req.epoch, r.epoch()).into_bytes(),
    };
    let range = |payload: &[u8]| -> Result<LayerRange, StoreError> {
        let r: LayerRange =
            serde_json::from_slice(payload).map_err(|e| StoreError::Invalid(format!("bad layer range: {e}")))?;
        if r.count > 4096 {
            return Err(StoreError::Invalid(format!("layer range of {} blocks is too large", r.count)));
        }
        Ok(r)
    };
    match req.op {
        Op::Info | Op::Read | Op::Chain | Op::LayerSums | Op::LayerData | Op::ReadSnapshot | Op::SnapshotDelta => {
            let Ok(r) = replica.read() else { return lock_error(id) };
            // Anyone may ask what the replica is (an engine learns the
            // epoch to claim this way), read its immutable snapshots and
            // ask which blocks changed between two of them.
            if req.op == Op::Info {
                return reply(id, Ok(serde_json::to_vec(&info(&r)).unwrap_or_default()));
            }
            if req.op == Op::ReadSnapshot {
                if req.len > proto::MAX_PAYLOAD {
                    return error_reply(id, &StoreError::Invalid(format!("read of {} bytes is too large", req.len)));
                }
                let mut buf = vec![0u8; req.len as usize];
                let name = String::from_utf8_lossy(&req.payload);
                return reply(id, r.read_snapshot(&name, req.offset, &mut buf).map(|_| buf));
            }
            if req.op == Op::SnapshotDelta {
                let delta = serde_json::from_slice::<DeltaRange>(&req.payload)
                    .map_err(|e| StoreError::Invalid(format!("bad snapshot delta range: {e}")));
                return reply(id, delta.and_then(|d| r.changed_blocks(d.from.as_deref(), &d.to, d.block, d.count)));
            }
            if !epoch_ok(&r) {
                return stale(&r);
            }
            match req.op {
                Op::Chain => reply(id, Ok(serde_json::to_vec(&r.chain()).unwrap_or_default())),
                Op::LayerSums => {
                    reply(id, range(&req.payload).and_then(|x| r.layer_sums(&x.snapshot, x.block, x.count)))
                }
                Op::LayerData => {
                    reply(id, range(&req.payload).and_then(|x| r.layer_data(&x.snapshot, x.block, x.count)))
                }
                _ => {
                    if req.len > proto::MAX_PAYLOAD {
                        return error_reply(
                            id,
                            &StoreError::Invalid(format!("read of {} bytes is too large", req.len)),
                        );
                    }
                    let mut buf = vec![0u8; req.len as usize];
                    reply(id, r.read(req.offset, &mut buf).map(|_| buf))
                }
            }
        }
        _ => {
            let Ok(mut r) = replica.write() else { return lock_error(id) };
            if !epoch_ok(&r) {
                return stale(&r);
            }
            let res = match req.op {
                Op::Write => r.write(req.offset, &req.payload),
                Op::WriteZeroes => r.write_zeroes(req.offset, req.len as u64),
                // The engine's flush number rides in `offset`; 0 (a
                // replica being rebuilt) syncs without claiming it.
                Op::Flush if req.offset > 0 => r.flush_as(req.offset),
                Op::Flush => r.flush(),
                Op::Snapshot => r.snapshot(&String::from_utf8_lossy(&req.payload)),
                Op::DeleteSnapshot => r.delete_snapshot(&String::from_utf8_lossy(&req.payload)),
                Op::Revert => r.revert(&String::from_utf8_lossy(&req.payload), req.offset == 1),
                Op::Expand => r.expand(req.offset),
                Op::SetChain => serde_json::from_slice::<Vec<String>>(&req.payload)
                    .map_err(|e| StoreError::Invalid(format!("bad chain: {e}")))
                    .and_then(|names| r.set_chain(&names)),
                Op::PutLayer => put_layer(&mut r, &req.payload),
                _ => Ok(()),
            };
            reply(id, res.map(|_| Vec::new()))
        }
    }
}

fn put_layer(r: &mut Replica, payload: &[u8]) -> Result<(), StoreError> {
    let bad = || StoreError::Invalid("malformed layer blocks".into());
    let n = u32::from_le_bytes(payload.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let range: LayerRange = serde_json::from_slice(payload.get(4..4 + n).ok_or_else(bad)?)
        .map_err(|e| StoreError::Invalid(format!("bad layer range: {e}")))?;
    let rest = &payload[4 + n..];
    let sums_len = (range.count * 8) as usize;
    let sums = rest.get(..sums_len).ok_or_else(bad)?;
    r.put_layer_blocks(&range.snapshot, range.block, sums, &rest[sums_len..])
}

fn serve_stream<S: std::io::Read + std::io::Write>(replica: Shared, read: S, write: S) {
    // Small frames are batched; a large payload is read into (or written
    // from) its own buffer directly, bypassing these.
    let mut rd = BufReader::with_capacity(64 * 1024, read);
    let mut wr = BufWriter::with_capacity(64 * 1024, write);
    loop {
        let req = match proto::read_request_sync(&mut rd) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "replica connection closed on a bad frame");
                return;
            }
        };
        let rep = handle(&replica, req);
        if wr.write_all(&proto::reply_header(&rep)).is_err() || wr.write_all(&rep.payload).is_err() {
            return;
        }
        // Answer at once unless more requests are already waiting.
        if rd.buffer().is_empty() && wr.flush().is_err() {
            return;
        }
    }
}

/// How a replica server treats its clients.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Every TCP client must prove it holds this key (see [`crate::auth`]).
    /// Unix-socket clients are not asked: file permissions guard them.
    pub cluster_key: Option<ClusterKey>,
    /// Serve TCP without a key: anyone who reaches the port can read and
    /// overwrite the disk. Without it (or a key) a TCP listener is refused.
    pub insecure_no_auth: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "refusing to serve on {address} without a cluster key: anyone who reaches the port could read and \
         overwrite the disk; give every node's storage processes the same --auth-key-file, or pass \
         --insecure-no-auth if only trusted machines can reach that network"
    )]
    TcpWithoutKey { address: Address },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: Address,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the address file {}: {source}", path.display())]
    AddressFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting connections on {address}: {source}")]
    Accept {
        address: Address,
        #[source]
        source: std::io::Error,
    },
}

enum Listener {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// A replica server that is listening; [`Server::run`] accepts clients.
pub struct Server {
    shared: Shared,
    /// Each with where it listens (for `tcp:IP:0`, with the port the
    /// kernel chose).
    listeners: Vec<(Listener, Address)>,
    cluster_key: Option<ClusterKey>,
}

impl Server {
    /// Listens on every one of `addresses` (typically a unix socket for
    /// the engine on this node and `tcp:IP:PORT` for engines on others;
    /// `tcp:IP:0` lets the kernel choose the port, [`Server::addresses`]
    /// tells which).
    pub fn bind(replica: Replica, addresses: &[Address], options: ServerOptions) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        for address in addresses {
            let listen_error = |source| ServerError::Listen { address: address.clone(), source };
            listeners.push(match address {
                Address::Unix(path) => {
                    let _ = std::fs::remove_file(path);
                    let l = std::os::unix::net::UnixListener::bind(path).map_err(listen_error)?;
                    (Listener::Unix(l), address.clone())
                }
                Address::Tcp(addr) => {
                    if options.cluster_key.is_none() && !options.insecure_no_auth {
                        return Err(ServerError::TcpWithoutKey { address: address.clone() });
                    }
                    if options.cluster_key.is_none() {
                        tracing::warn!(%address, "serving TCP without a cluster key (--insecure-no-auth)");
                    }
                    let l = std::net::TcpListener::bind(addr).map_err(listen_error)?;
                    let bound = Address::Tcp(l.local_addr().map_err(listen_error)?.to_string());
                    (Listener::Tcp(l), bound)
                }
            });
        }
        Ok(Server { shared: Arc::new(RwLock::new(replica)), listeners, cluster_key: options.cluster_key })
    }

    /// Where it listens: `unix:PATH` or `tcp:IP:PORT` (the port bound).
    pub fn addresses(&self) -> Vec<Address> {
        self.listeners.iter().map(|(_, a)| a.clone()).collect()
    }

    /// The address other nodes reach it on: the first TCP one, or else
    /// the first.
    pub fn remote_address(&self) -> Option<&Address> {
        let mut all = self.listeners.iter().map(|(_, a)| a);
        all.clone().find(|a| matches!(a, Address::Tcp(_))).or_else(|| all.next())
    }

    /// Writes [`Server::remote_address`] to `path` (no newline),
    /// atomically: a reader sees the whole address or no file.
    pub fn write_address_file(&self, path: &Path) -> Result<(), ServerError> {
        let error = |source| ServerError::AddressFile { path: path.to_path_buf(), source };
        let address = self.remote_address().map(|a| a.to_string()).unwrap_or_default();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(error)?;
        f.write_all(address.as_bytes()).map_err(error)?;
        f.sync_all().map_err(error)?;
        std::fs::rename(&tmp, path).map_err(error)
    }

    /// Accepts clients on every address until accepting fails on one, a
    /// thread per listener and per connection.
    pub fn run(self) -> Result<(), ServerError> {
        let (failed, first_failure) = std::sync::mpsc::channel();
        for (listener, address) in self.listeners {
            let shared = self.shared.clone();
            let key = self.cluster_key.clone();
            let failed = failed.clone();
            std::thread::spawn(move || {
                let _ = failed.send(accept(listener, &address, shared, key));
            });
        }
        drop(failed);
        // No listener at all: nothing to wait for.
        first_failure.recv().unwrap_or(Ok(()))
    }
}

fn accept(listener: Listener, address: &Address, shared: Shared, key: Option<ClusterKey>) -> Result<(), ServerError> {
    let accept_error = |source| ServerError::Accept { address: address.clone(), source };
    match listener {
        Listener::Unix(listener) => {
            for conn in listener.incoming() {
                let conn = conn.map_err(accept_error)?;
                let r = shared.clone();
                let w = conn.try_clone().map_err(accept_error)?;
                std::thread::spawn(move || serve_stream(r, conn, w));
            }
        }
        Listener::Tcp(listener) => {
            for conn in listener.incoming() {
                let conn = conn.map_err(accept_error)?;
                let r = shared.clone();
                let key = key.clone();
                std::thread::spawn(move || {
                    if let Some(conn) = authenticate(conn, key.as_ref()) {
                        if let Ok(w) = conn.try_clone() {
                            serve_stream(r, conn, w);
                        }
                    }
                });
            }
        }
    }
    Ok(())
}

/// Runs the handshake on a new TCP connection; `None` (the connection is
/// dropped) when the client fails it.
fn authenticate(mut conn: std::net::TcpStream, key: Option<&ClusterKey>) -> Option<std::net::TcpStream> {
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(crate::auth::HANDSHAKE_TIMEOUT));
    let _ = conn.set_write_timeout(Some(crate::auth::HANDSHAKE_TIMEOUT));
    if let Err(e) = crate::auth::replica_handshake(&mut conn, key) {
        tracing::warn!(%peer, error = %e, "replica connection refused");
        return None;
    }
    let _ = conn.set_read_timeout(None);
    let _ = conn.set_write_timeout(None);
    Some(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BLOCK;

    fn request(op: Op, epoch: u64, payload: Vec<u8>) -> Request {
        Request { op, id: 1, epoch, offset: 0, len: 0, payload: payload.into() }
    }

    #[test]
    fn snapshot_deltas_need_no_epoch() {
        let t = tempfile::tempdir().expect("tempdir");
        let mut r = Replica::create(&t.path().join("r"), "vol", 16 * BLOCK).expect("create");
        r.write(3 * BLOCK, &[1u8; BLOCK as usize]).expect("write");
        r.snapshot("s").expect("snapshot");
        r.set_epoch(5).expect("epoch");
        let shared: Shared = Arc::new(RwLock::new(r));
        let delta = |d: &DeltaRange| serde_json::to_vec(d).expect("json");
        let ok = DeltaRange { from: None, to: "s".into(), block: 0, count: 16 };
        for epoch in [0, 4, 5] {
            let rep = handle(&shared, request(Op::SnapshotDelta, epoch, delta(&ok)));
            assert_eq!((rep.code, rep.payload), (code::OK, vec![0b1000, 0]), "epoch {epoch}");
        }
        assert_eq!(handle(&shared, request(Op::Chain, 4, Vec::new())).code, code::STALE_EPOCH, "others are fenced");
        let bad = DeltaRange { from: Some("s".into()), to: "s".into(), block: 0, count: 16 };
        let rep = handle(&shared, request(Op::SnapshotDelta, 0, delta(&bad)));
        assert_eq!(rep.code, code::INVALID);
        assert!(String::from_utf8_lossy(&rep.payload).contains("is not older than"));
        let rep = handle(&shared, request(Op::SnapshotDelta, 0, b"{".to_vec()));
        assert_eq!(rep.code, code::INVALID);
        assert!(String::from_utf8_lossy(&rep.payload).contains("bad snapshot delta range"));
        let gone = DeltaRange { from: None, to: "gone".into(), block: 0, count: 16 };
        assert_eq!(handle(&shared, request(Op::SnapshotDelta, 0, delta(&gone))).code, code::INVALID);
    }
}
