//! The engine ↔ replica wire protocol: length-prefixed binary frames over
//! a unix socket or TCP. Requests are answered in order on a connection;
//! the engine pipelines them.
//!
//! Request: `magic u32 | op u8 | 0 u8 | 0 u16 | id u64 | epoch u64 |
//! offset u64 | len u32 | payload_len u32 | payload`.
//! Reply: `magic u32 | code u32 | id u64 | payload_len u32 | payload`
//! (code 0: success; otherwise the payload is the error message).
//! Integers are little-endian.

use bytes::Bytes;
use tokio::io::AsyncReadExt;

pub const REQUEST_MAGIC: u32 = 0x5348_4251; // "SHBQ"
pub const REPLY_MAGIC: u32 = 0x5348_4252; // "SHBR"
/// Largest payload either side accepts.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
pub const REQUEST_HEADER: usize = 40;
pub const REPLY_HEADER: usize = 20;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Payload: the volume id. Sets the epoch; replies with [`Info`] JSON.
    Hello = 1,
    Info = 2,
    Read = 3,
    /// Payload: the data.
    Write = 4,
    WriteZeroes = 5,
    /// `offset`: the engine's flush number to record (0: just sync).
    Flush = 6,
    /// Payload: the snapshot name.
    Snapshot = 7,
    /// Replies with the snapshot names of the immutable layers (JSON).
    Chain = 8,
    /// Payload: [`LayerRange`] JSON; replies with 8 bytes per block.
    LayerSums = 9,
    /// Payload: [`LayerRange`] JSON; replies with the DATA blocks' data.
    LayerData = 10,
    /// Payload: the chain (JSON list of snapshot names) to take on.
    SetChain = 11,
    /// Payload: `u32` length of a [`LayerRange`] JSON, the JSON, the
    /// blocks' checksum entries, then the DATA blocks' data.
    PutLayer = 12,
    /// Payload: the snapshot name.
    DeleteSnapshot = 13,
    /// Payload: the snapshot name; `offset` 1 discards newer snapshots.
    Revert = 14,
    /// `offset`: the new size in bytes.
    Expand = 15,
    /// Payload: the snapshot name; reads `len` bytes at `offset` as the
    /// volume was when the snapshot was taken. Needs no epoch (snapshots
    /// are immutable), so a clone can read while the volume is in use.
    ReadSnapshot = 16,
    /// Payload: [`DeltaRange`] JSON; replies with a bitmap of the blocks
    /// that changed between two snapshots (see
    /// [`crate::store::Replica::changed_blocks`]). Needs no epoch, like
    /// [`Op::ReadSnapshot`]: a backup reads while the volume is in use.
    SnapshotDelta = 17,
}

/// Blocks of one snapshot layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerRange {
    pub snapshot: String,
    pub block: u64,
    pub count: u64,
}

/// Blocks of snapshot `to` to compare with snapshot `from` (`None`: with
/// an empty volume), for [`Op::SnapshotDelta`]:
/// `{"from": null|"name", "to": "name", "block": N, "count": N}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeltaRange {
    pub from: Option<String>,
    pub to: String,
    pub block: u64,
    pub count: u64,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Hello,
            2 => Op::Info,
            3 => Op::Read,
            4 => Op::Write,
            5 => Op::WriteZeroes,
            6 => Op::Flush,
            7 => Op::Snapshot,
            8 => Op::Chain,
            9 => Op::LayerSums,
            10 => Op::LayerData,
            11 => Op::SetChain,
            12 => Op::PutLayer,
            13 => Op::DeleteSnapshot,
            14 => Op::Revert,
            15 => Op::Expand,
            16 => Op::ReadSnapshot,
            17 => Op::SnapshotDelta,
            _ => return None,
        })
    }
}

/// Error codes in replies.
pub mod code {
    pub const OK: u32 = 0;
    /// The request's epoch is older than the replica's: a newer engine
    /// owns the volume.
    pub const STALE_EPOCH: u32 = 1;
    pub const INVALID: u32 = 2;
    pub const IO: u32 = 3;
    /// Data does not match its checksum.
    pub const CORRUPT: u32 = 4;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub id: u64,
    pub epoch: u64,
    pub offset: u64,
    pub len: u32,
    /// Shared, so one write's data goes to every replica without a copy.
    pub payload: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u32,
    pub id: u64,
    pub payload: Vec<u8>,
}

/// What a replica says about itself.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Info {
    pub volume: String,
    pub size: u64,
    pub epoch: u64,
    pub flush_generation: u64,
    pub snapshots: Vec<String>,
    /// The id of the replica's base image, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Violation(String),
}

/// The fixed part of a request frame; the payload follows it.
pub fn request_header(r: &Request) -> [u8; REQUEST_HEADER] {
    let mut h = [0u8; REQUEST_HEADER];
    h[..4].copy_from_slice(&REQUEST_MAGIC.to_le_bytes());
    h[4] = r.op as u8;
    h[8..16].copy_from_slice(&r.id.to_le_bytes());
    h[16..24].copy_from_slice(&r.epoch.to_le_bytes());
    h[24..32].copy_from_slice(&r.offset.to_le_bytes());
    h[32..36].copy_from_slice(&r.len.to_le_bytes());
    h[36..40].copy_from_slice(&(r.payload.len() as u32).to_le_bytes());
    h
}

/// The fixed part of a reply frame; the payload follows it.
pub fn reply_header(r: &Reply) -> [u8; REPLY_HEADER] {
    let mut h = [0u8; REPLY_HEADER];
    h[..4].copy_from_slice(&REPLY_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&r.code.to_le_bytes());
    h[8..16].copy_from_slice(&r.id.to_le_bytes());
    h[16..20].copy_from_slice(&(r.payload.len() as u32).to_le_bytes());
    h
}

/// A whole request frame in one buffer (tests and fuzzing).
pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut b = request_header(r).to_vec();
    b.extend_from_slice(&r.payload);
    b
}

/// A whole reply frame in one buffer (tests).
pub fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut b = reply_header(r).to_vec();
    b.extend_from_slice(&r.payload);
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn parse_request_header(h: &[u8; REQUEST_HEADER]) -> Result<(Request, u32), ProtoError> {
    if u32_at(h, 0) != REQUEST_MAGIC {
        return Err(ProtoError::Violation("bad request magic".into()));
    }
    let op = Op::from_u8(h[4]).ok_or_else(|| ProtoError::Violation(format!("unknown op {}", h[4])))?;
    let plen = u32_at(h, 36);
    if plen > MAX_PAYLOAD {
        return Err(ProtoError::Violation(format!("payload of {plen} bytes is too large")));
    }
    let req = Request {
        op,
        id: u64_at(h, 8),
        epoch: u64_at(h, 16),
        offset: u64_at(h, 24),
        len: u32_at(h, 32),
        payload: Bytes::new(),
    };
    Ok((req, plen))
}

/// Reads one request; `None` at a clean end of the connection (before a
/// frame starts; a frame cut short is an error).
pub async fn read_request<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Option<Request>, ProtoError> {
    let mut h = [0u8; REQUEST_HEADER];
    if r.read(&mut h[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut h[1..]).await?;
    let (mut req, plen) = parse_request_header(&h)?;
    let mut payload = vec![0u8; plen as usize];
    r.read_exact(&mut payload).await?;
    req.payload = payload.into();
    Ok(Some(req))
}

/// [`read_request`] on a blocking stream (the replica server's threads).
pub fn read_request_sync<R: std::io::Read>(r: &mut R) -> Result<Option<Request>, ProtoError> {
    let mut h = [0u8; REQUEST_HEADER];
    loop {
        match r.read(&mut h[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    r.read_exact(&mut h[1..])?;
    let (mut req, plen) = parse_request_header(&h)?;
    let mut payload = vec![0u8; plen as usize];
    r.read_exact(&mut payload)?;
    req.payload = payload.into();
    Ok(Some(req))
}

pub async fn read_reply<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Reply, ProtoError> {
    let mut h = [0u8; REPLY_HEADER];
    r.read_exact(&mut h).await?;
    if u32_at(&h, 0) != REPLY_MAGIC {
        return Err(ProtoError::Violation("bad reply magic".into()));
    }
    let plen = u32_at(&h, 16);
    if plen > MAX_PAYLOAD {
        return Err(ProtoError::Violation(format!("payload of {plen} bytes is too large")));
    }
    let mut payload = vec![0u8; plen as usize];
    r.read_exact(&mut payload).await?;
    Ok(Reply { code: u32_at(&h, 4), id: u64_at(&h, 8), payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_refused() {
        let req =
            Request { op: Op::Write, id: 7, epoch: 3, offset: 4096, len: 5, payload: Bytes::from_static(b"hello") };
        let bytes = encode_request(&req);
        assert_eq!(read_request(&mut &bytes[..]).await.expect("ok"), Some(req.clone()));
        assert_eq!(read_request_sync(&mut &bytes[..]).expect("ok"), Some(req));
        let rep = Reply { code: code::IO, id: 9, payload: b"disk on fire".to_vec() };
        assert_eq!(read_reply(&mut &encode_reply(&rep)[..]).await.expect("ok"), rep);
        assert_eq!(read_request(&mut &[][..]).await.expect("eof"), None);
        let mut bad = bytes.clone();
        bad[4] = 99;
        assert!(read_request(&mut &bad[..]).await.is_err());
        let mut huge = bytes.clone();
        huge[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_request(&mut &huge[..]).await.is_err());
        assert!(read_request(&mut &bytes[..10]).await.is_err(), "a cut header is an error, not EOF");
    }

    #[test]
    fn delta_ranges_are_the_documented_json() {
        let r = DeltaRange { from: None, to: "s2".into(), block: 8, count: 64 };
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json, serde_json::json!({"from": null, "to": "s2", "block": 8, "count": 64}));
        let r: DeltaRange =
            serde_json::from_str(r#"{"from": "s1", "to": "s2", "block": 0, "count": 1}"#).expect("parse");
        assert_eq!(r.from.as_deref(), Some("s1"));
        assert_eq!(Op::from_u8(17), Some(Op::SnapshotDelta));
        assert_eq!(Op::SnapshotDelta as u8, 17);
    }
}
