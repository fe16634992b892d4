//! An NBD server (fixed newstyle handshake, structured replies, FLUSH,
//! FUA, TRIM, WRITE_ZEROES, multiple connections) in front of a
//! [`Device`], as QEMU's NBD client expects (`-blockdev driver=nbd`).
//!
//! Requests of one connection run concurrently; replies are written in
//! completion order, each tagged with the request's cookie.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1;
const TF_SEND_FLUSH: u16 = 4;
const TF_SEND_FUA: u16 = 8;
const TF_SEND_TRIM: u16 = 32;
const TF_SEND_WRITE_ZEROES: u16 = 64;
const TF_SEND_DF: u16 = 128;
const TF_CAN_MULTI_CONN: u16 = 256;
const TF_SEND_CACHE: u16 = 1024;
const TF_SEND_FAST_ZERO: u16 = 2048;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;

const CMD_FLAG_FUA: u16 = 1;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOTSUP: u32 = 95;
pub const EOVERFLOW: u32 = 75;

/// Largest request payload accepted (QEMU sends at most 32 MiB).
pub const MAX_REQUEST: u32 = 32 * 1024 * 1024;

/// What the NBD server serves. Errors are an NBD errno and a message.
#[async_trait::async_trait]
pub trait Device: Send + Sync + 'static {
    fn size(&self) -> u64;
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)>;
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), (u32, String)>;
    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), (u32, String)>;
    async fn flush(&self) -> Result<(), (u32, String)>;
}

/// A [`Device`] in memory, for tests and fuzzing of the protocol.
pub struct MemoryDevice(std::sync::Mutex<Vec<u8>>);

impl MemoryDevice {
    pub fn new(size: usize) -> MemoryDevice {
        MemoryDevice(std::sync::Mutex::new(vec![0u8; size]))
    }

    /// The contents now.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vec<u8>) -> T) -> Result<T, (u32, String)> {
        self.0.lock().map(|mut d| f(&mut d)).map_err(|_| (EIO, "device poisoned".to_string()))
    }
}

#[async_trait::async_trait]
impl Device for MemoryDevice {
    fn size(&self) -> u64 {
        self.with(|d| d.len() as u64).unwrap_or(0)
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)> {
        self.with(|d| d[offset as usize..offset as usize + len as usize].to_vec())
    }
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), (u32, String)> {
        self.with(|d| d[offset as usize..offset as usize + data.len()].copy_from_slice(&data))
    }
    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), (u32, String)> {
        self.with(|d| d[offset as usize..offset as usize + len as usize].fill(0))
    }
    async fn flush(&self) -> Result<(), (u32, String)> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("client broke the protocol: {0}")]
    Protocol(String),
}

/// A parsed transmission request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// Parses the 28-byte request header (exposed for the fuzz target).
pub fn parse_command(h: &[u8; 28]) -> Result<Command, NbdError> {
    let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if magic != REQUEST_MAGIC {
        return Err(NbdError::Protocol(format!("bad request magic {magic:#x}")));
    }
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&h[8..16]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&h[16..24]);
    Ok(Command {
        flags: u16::from_be_bytes([h[4], h[5]]),
        kind: u16::from_be_bytes([h[6], h[7]]),
        cookie: u64::from_be_bytes(cookie),
        offset: u64::from_be_bytes(offset),
        length: u32::from_be_bytes([h[24], h[25], h[26], h[27]]),
    })
}

fn transmission_flags() -> u16 {
    TF_HAS_FLAGS
        | TF_SEND_FLUSH
        | TF_SEND_FUA
        | TF_SEND_TRIM
        | TF_SEND_WRITE_ZEROES
        | TF_SEND_DF
        | TF_CAN_MULTI_CONN
        | TF_SEND_CACHE
        | TF_SEND_FAST_ZERO
}

async fn opt_reply<W: AsyncWrite + Unpin>(w: &mut W, opt: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b).await?;
    w.flush().await
}

/// Serves one client connection to `device` exported as `name`.
pub async fn serve<S>(stream: S, name: &str, device: Arc<dyn Device>) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    // Handshake.
    let mut hello = Vec::new();
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello).await?;
    w.flush().await?;
    let client_flags = r.read_u32().await?;
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let mut structured = false;
    let size = device.size();
    loop {
        if r.read_u64().await? != IHAVEOPT {
            return Err(NbdError::Protocol("option without IHAVEOPT".into()));
        }
        let opt = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > 64 * 1024 {
            return Err(NbdError::Protocol(format!("option data of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME => {
                if String::from_utf8_lossy(&data) != name && !data.is_empty() {
                    // Nothing can be said back: the protocol just closes.
                    return Err(NbdError::Protocol(format!("unknown export {:?}", String::from_utf8_lossy(&data))));
                }
                let mut b = Vec::new();
                b.extend_from_slice(&size.to_be_bytes());
                b.extend_from_slice(&transmission_flags().to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&b).await?;
                w.flush().await?;
                break;
            }
            OPT_ABORT => {
                opt_reply(&mut w, opt, REP_ACK, &[]).await?;
                return Ok(());
            }
            OPT_LIST => {
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name.as_bytes());
                opt_reply(&mut w, opt, REP_SERVER, &d).await?;
                opt_reply(&mut w, opt, REP_ACK, &[]).await?;
            }
            OPT_STRUCTURED_REPLY => {
                if len != 0 {
                    opt_reply(&mut w, opt, REP_ERR_INVALID, b"structured reply takes no data").await?;
                } else {
                    structured = true;
                    opt_reply(&mut w, opt, REP_ACK, &[]).await?;
                }
            }
            OPT_INFO | OPT_GO => {
                if data.len() < 6 {
                    opt_reply(&mut w, opt, REP_ERR_INVALID, b"short option").await?;
                    continue;
                }
                let nlen = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
                if data.len() < 4 + nlen + 2 {
                    opt_reply(&mut w, opt, REP_ERR_INVALID, b"short option").await?;
                    continue;
                }
                let want = String::from_utf8_lossy(&data[4..4 + nlen]).to_string();
                if !want.is_empty() && want != name {
                    opt_reply(&mut w, opt, REP_ERR_UNKNOWN, format!("no export {want:?}").as_bytes()).await?;
                    continue;
                }
                let mut export = INFO_EXPORT.to_be_bytes().to_vec();
                export.extend_from_slice(&size.to_be_bytes());
                export.extend_from_slice(&transmission_flags().to_be_bytes());
                opt_reply(&mut w, opt, REP_INFO, &export).await?;
                let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                // Minimum 1 (any alignment works), preferred 4 KiB, max 32 MiB.
                bs.extend_from_slice(&1u32.to_be_bytes());
                bs.extend_from_slice(&4096u32.to_be_bytes());
                bs.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                opt_reply(&mut w, opt, REP_INFO, &bs).await?;
                opt_reply(&mut w, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    break;
                }
            }
            _ => opt_reply(&mut w, opt, REP_ERR_UNSUP, b"option not supported").await?,
        }
    }
    transmission(r, w, device, structured).await
}

/// A reply to write: the cookie, an errno, and read data.
struct Out {
    cookie: u64,
    offset: u64,
    error: Option<(u32, String)>,
    data: Option<Vec<u8>>,
}

/// The bytes of a reply before its read data (the data follows as is).
fn reply_head(o: &Out, structured: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    if !structured {
        b.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b.extend_from_slice(&o.error.as_ref().map(|e| e.0).unwrap_or(0).to_be_bytes());
        b.extend_from_slice(&o.cookie.to_be_bytes());
        return b;
    }
    let mut chunk = |kind: u16, len: usize| {
        b.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&o.cookie.to_be_bytes());
        b.extend_from_slice(&(len as u32).to_be_bytes());
    };
    match (&o.error, &o.data) {
        (Some((errno, msg)), _) => {
            let msg = &msg.as_bytes()[..msg.len().min(4096)];
            chunk(REPLY_TYPE_ERROR, 6 + msg.len());
            b.extend_from_slice(&errno.to_be_bytes());
            b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            b.extend_from_slice(msg);
        }
        (None, Some(d)) => {
            chunk(REPLY_TYPE_OFFSET_DATA, 8 + d.len());
            b.extend_from_slice(&o.offset.to_be_bytes());
        }
        (None, None) => chunk(REPLY_TYPE_NONE, 0),
    }
    b
}

/// Writes one reply: its head, then the read data unless it failed.
async fn write_reply<W: AsyncWrite + Unpin>(w: &mut W, o: &Out, structured: bool) -> std::io::Result<()> {
    w.write_all(&reply_head(o, structured)).await?;
    if o.error.is_none() {
        if let Some(d) = &o.data {
            w.write_all(d).await?;
        }
    }
    Ok(())
}

async fn transmission<R, W>(r: R, mut w: W, device: Arc<dyn Device>, structured: bool) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let writer = tokio::spawn(async move {
        // Replies are batched; read data larger than the buffer goes to
        // the socket directly.
        let mut buf = tokio::io::BufWriter::with_capacity(64 * 1024, &mut w);
        while let Some(o) = rx.recv().await {
            if write_reply(&mut buf, &o, structured).await.is_err() {
                return;
            }
            while let Ok(o) = rx.try_recv() {
                if write_reply(&mut buf, &o, structured).await.is_err() {
                    return;
                }
            }
            if buf.flush().await.is_err() {
                return;
            }
        }
    });
    let size = device.size();
    let mut r = tokio::io::BufReader::with_capacity(64 * 1024, r);
    loop {
        let mut h = [0u8; 28];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let cmd = parse_command(&h)?;
        if cmd.kind == CMD_DISC {
            break;
        }
        let mut payload = Vec::new();
        if cmd.kind == CMD_WRITE {
            if cmd.length > MAX_REQUEST {
                return Err(NbdError::Protocol(format!("write of {} bytes", cmd.length)));
            }
            payload = vec![0u8; cmd.length as usize];
            r.read_exact(&mut payload).await?;
        }
        let (cookie, offset) = (cmd.cookie, cmd.offset);
        let reply = move |error: Option<(u32, String)>, data: Option<Vec<u8>>| Out { cookie, offset, error, data };
        let in_range = cmd.offset.checked_add(cmd.length as u64).is_some_and(|end| end <= size);
        let sized = matches!(cmd.kind, CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_CACHE);
        if sized && !in_range {
            let _ = tx.send(reply(Some((EINVAL, "request beyond the end of the export".into())), None));
            continue;
        }
        if cmd.kind == CMD_READ && cmd.length > MAX_REQUEST {
            let _ = tx.send(reply(Some((EOVERFLOW, "read too large".into())), None));
            continue;
        }
        let dev = device.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let fua = cmd.flags & CMD_FLAG_FUA != 0;
            let out = match cmd.kind {
                CMD_READ => match dev.read(cmd.offset, cmd.length).await {
                    Ok(d) => reply(None, Some(d)),
                    Err(e) => reply(Some(e), None),
                },
                CMD_WRITE => {
                    let mut res = dev.write(cmd.offset, payload).await;
                    if res.is_ok() && fua {
                        res = dev.flush().await;
                    }
                    reply(res.err(), None)
                }
                CMD_TRIM | CMD_WRITE_ZEROES => {
                    let mut res = dev.write_zeroes(cmd.offset, cmd.length).await;
                    if res.is_ok() && fua {
                        res = dev.flush().await;
                    }
                    reply(res.err(), None)
                }
                CMD_FLUSH => reply(dev.flush().await.err(), None),
                CMD_CACHE => reply(None, None),
                other => reply(Some((ENOTSUP, format!("command {other} is not supported"))), None),
            };
            let _ = tx.send(out);
        });
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_headers() {
        let mut h = [0u8; 28];
        h[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        h[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        h[8..16].copy_from_slice(&42u64.to_be_bytes());
        h[16..24].copy_from_slice(&8192u64.to_be_bytes());
        h[24..28].copy_from_slice(&512u32.to_be_bytes());
        let c = parse_command(&h).expect("valid");
        assert_eq!(c, Command { flags: 1, kind: 1, cookie: 42, offset: 8192, length: 512 });
        h[0] = 0;
        assert!(parse_command(&h).is_err());
    }
}
