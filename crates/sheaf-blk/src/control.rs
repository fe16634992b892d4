//! An engine's control socket: the node agent asks a running engine for
//! its state and has it take, delete or list snapshots and grow the
//! volume, so that these happen in order with the guest's writes.
//!
//! One JSON request per line, one JSON reply per line:
//! `{"op":"status"}`, `{"op":"snapshot","name":"s1"}`,
//! `{"op":"deleteSnapshot","name":"s1"}`, `{"op":"expand","size":1073741824}`,
//! `{"op":"snapshots"}`, `{"op":"setReplicas","replicas":["unix:/…","tcp:…"]}`,
//! `{"op":"activate"}`, `{"op":"stats"}` → `{...}` (a `status`,
//! `snapshots`, `stats` or nothing) or `{"error":"..."}`.
//!
//! `stats` is the status with the I/O the engine served since it started
//! (reads, writes, flushes: requests, bytes, errors, summed latency); the
//! node agent's metrics read it (docs/design/metrics.md). An engine on
//! standby answers it with zero counters until it takes the volume over.
//!
//! An engine on standby ([`crate::standby`]) answers `status` with
//! `"standby":true`, takes `setReplicas` (the set it will claim) and
//! `activate` (take the volume over now; the status after it is the
//! reply), and refuses the rest until it is active. `activate` on a
//! running engine does nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::engine::Engine;
use crate::standby::{StandbyEngine, ON_STANDBY};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum ControlRequest {
    Status,
    Snapshot {
        name: String,
    },
    DeleteSnapshot {
        name: String,
    },
    Expand {
        size: u64,
    },
    Snapshots,
    /// The volume's replicas now (addresses, local first).
    SetReplicas {
        replicas: Vec<String>,
    },
    /// Take the volume over now (an engine on standby); replies with the
    /// status.
    Activate,
    /// The status and the I/O counters.
    Stats,
}

/// A replica as its engine sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaState {
    pub address: String,
    /// `healthy`, `rebuilding` or `failed` (not connected).
    pub state: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineStatus {
    pub volume: String,
    pub size: u64,
    pub epoch: u64,
    pub replicas: Vec<ReplicaState>,
    /// On standby: not started yet (epoch 0, replicas `standby`); it
    /// takes the volume over at the first I/O or `activate`.
    #[serde(default)]
    pub standby: bool,
}

/// Counters of one kind of request (reads, writes or flushes) since the
/// engine started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpStats {
    /// Requests answered (failed ones too).
    pub ops: u64,
    /// Bytes of the requests that succeeded (0 for flushes).
    pub bytes: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Time from each request to its answer, summed, in nanoseconds.
    pub nanos: u64,
}

/// What `stats` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineStats {
    pub status: EngineStatus,
    #[serde(default)]
    pub read: OpStats,
    /// Writes, zeroing writes included.
    #[serde(default)]
    pub write: OpStats,
    #[serde(default)]
    pub flush: OpStats,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<EngineStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<EngineStats>,
}

/// What a control socket serves.
#[derive(Clone)]
enum Target {
    Running(Arc<Engine>),
    Standby(Arc<StandbyEngine>),
}

fn refused(e: impl ToString) -> ControlReply {
    ControlReply { error: Some(e.to_string()), ..Default::default() }
}

fn parse_replicas(replicas: &[String]) -> Result<Vec<crate::replica_server::Address>, String> {
    replicas.iter().map(|a| a.parse()).collect()
}

async fn answer(target: &Target, req: ControlRequest) -> ControlReply {
    let engine = match target {
        Target::Running(e) => e.clone(),
        Target::Standby(s) => match (s.engine(), &req) {
            (Some(e), _) => e,
            (None, ControlRequest::Status) => return ControlReply { status: Some(s.status()), ..Default::default() },
            (None, ControlRequest::Stats) => {
                let stats = EngineStats { status: s.status(), ..Default::default() };
                return ControlReply { stats: Some(stats), ..Default::default() };
            }
            (None, ControlRequest::Activate) => {
                return match s.activate().await {
                    Ok(e) => ControlReply { status: Some(e.status()), ..Default::default() },
                    Err(e) => refused(e),
                }
            }
            (None, ControlRequest::SetReplicas { replicas }) => {
                return match parse_replicas(replicas).map(|a| s.set_replicas(&a)) {
                    Ok(Ok(())) => ControlReply::default(),
                    Ok(Err(e)) => refused(e),
                    Err(e) => refused(e),
                }
            }
            (None, _) => return refused(ON_STANDBY),
        },
    };
    let done = |r: Result<(), crate::engine::EngineError>| match r {
        Ok(()) => ControlReply::default(),
        Err(e) => refused(e),
    };
    match req {
        ControlRequest::Status | ControlRequest::Activate => {
            ControlReply { status: Some(engine.status()), ..Default::default() }
        }
        ControlRequest::Stats => ControlReply { stats: Some(engine.stats()), ..Default::default() },
        ControlRequest::Snapshot { name } => done(engine.snapshot(&name).await),
        ControlRequest::DeleteSnapshot { name } => done(engine.delete_snapshot(&name).await),
        ControlRequest::Expand { size } => done(engine.expand(size).await),
        ControlRequest::SetReplicas { replicas } => match parse_replicas(&replicas) {
            Ok(a) => done(engine.set_replicas(&a)),
            Err(e) => refused(e),
        },
        ControlRequest::Snapshots => match engine.snapshots().await {
            Ok(s) => ControlReply { snapshots: Some(s), ..Default::default() },
            Err(e) => refused(e),
        },
    }
}

/// Serves the control socket of a running engine at `path` until the
/// process ends.
pub async fn serve(engine: Arc<Engine>, path: &Path) -> std::io::Result<()> {
    serve_target(Target::Running(engine), path).await
}

/// Serves the control socket of an engine on standby at `path` until the
/// process ends (before and after it is activated).
pub async fn serve_standby(standby: Arc<StandbyEngine>, path: &Path) -> std::io::Result<()> {
    serve_target(Target::Standby(standby), path).await
}

async fn serve_target(target: Target, path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    loop {
        let (conn, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(req) => answer(&target, req).await,
                    Err(e) => refused(format!("bad request: {e}")),
                };
                let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                out.push(b'\n');
                if w.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Sends one request to the engine whose control socket is `path`.
pub async fn call(path: &Path, req: &ControlRequest, timeout: Duration) -> Result<ControlReply, String> {
    let work = async {
        let conn = tokio::net::UnixStream::connect(path).await.map_err(|e| format!("engine not reachable: {e}"))?;
        let (r, mut w) = conn.into_split();
        let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        line.push(b'\n');
        w.write_all(&line).await.map_err(|e| format!("engine connection: {e}"))?;
        let reply = BufReader::new(r)
            .lines()
            .next_line()
            .await
            .map_err(|e| format!("engine connection: {e}"))?
            .ok_or("the engine closed the connection")?;
        let reply: ControlReply = serde_json::from_str(&reply).map_err(|e| format!("bad engine reply: {e}"))?;
        match reply.error {
            Some(e) => Err(e),
            None => Ok(reply),
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "the engine did not answer in time".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica_server::{Address, Server, ServerOptions};
    use crate::store::Replica;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_count_what_the_engine_served() {
        let d = tempfile::tempdir().expect("tempdir");
        let replica = Replica::create(&d.path().join("r"), "vol", 1 << 20).expect("replica");
        let address = Address::Unix(d.path().join("r.sock"));
        let server = Server::bind(replica, std::slice::from_ref(&address), ServerOptions::default()).expect("bind");
        std::thread::spawn(move || server.run());
        let engine = Arc::new(Engine::start("vol", std::slice::from_ref(&address)).await.expect("engine"));
        let ctl = d.path().join("e.ctl");
        let (e2, ctl2) = (engine.clone(), ctl.clone());
        tokio::spawn(async move { serve(e2, &ctl2).await });
        let stats = || async {
            for _ in 0..100 {
                if let Ok(r) = call(&ctl, &ControlRequest::Stats, Duration::from_secs(2)).await {
                    return r.stats.expect("stats in the reply");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the control socket did not answer");
        };
        let before = stats().await;
        assert_eq!((before.read.ops, before.write.ops, before.flush.ops), (0, 0, 0));
        assert_eq!(before.status.replicas.len(), 1);
        assert_eq!(before.status.replicas[0].state, "healthy");

        engine.write(0, vec![1; 8192]).await.expect("write");
        engine.write_zeroes(8192, 4096).await.expect("zeroes");
        engine.read(0, 4096).await.expect("read");
        engine.flush().await.expect("flush");
        // Out of range: refused, counted as an error with no bytes.
        assert!(engine.read(1 << 20, 4096).await.is_err());

        let after = stats().await;
        assert_eq!((after.write.ops, after.write.bytes, after.write.errors), (2, 12288, 0));
        assert_eq!((after.read.ops, after.read.bytes, after.read.errors), (2, 4096, 1));
        assert_eq!((after.flush.ops, after.flush.bytes), (1, 0));
        assert!(after.write.nanos > 0 && after.flush.nanos > 0);
        assert_eq!(after.status.size, 1 << 20);

        // The wire format (what older agents and the metrics read).
        let reply = ControlReply { stats: Some(after.clone()), ..Default::default() };
        let text = serde_json::to_string(&reply).expect("json");
        assert!(text.contains(r#""write":{"ops":2,"bytes":12288,"errors":0,"nanos":"#), "{text}");
        let back: ControlReply = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.stats, Some(after));
        let req: ControlRequest = serde_json::from_str(r#"{"op":"stats"}"#).expect("request");
        assert_eq!(req, ControlRequest::Stats);
    }
}
