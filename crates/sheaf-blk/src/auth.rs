//! The cluster key and the handshake that opens every TCP connection
//! between an engine (or rebuild) and a replica server: both sides prove
//! that they hold the same key before a single request is sent, so that
//! reaching a replica's port is not enough to read or overwrite its disk.
//! Unix-socket connections have no handshake (file permissions guard
//! them).
//!
//! ```text
//!  engine                                         replica server
//!    │── hello (role, has-key flag, nonce E) ──────────▶│
//!    │◀────────── hello (role, has-key flag, nonce R) ──│   both sent at once
//!    │   (either side without a key while the other has one: both close,
//!    │    each says which side lacks it; neither has one: done)
//!    │── proof HMAC(key, LABEL‖E‖R‖"engine->replica") ─▶│
//!    │◀─ proof HMAC(key, LABEL‖E‖R‖"replica->engine") ──│
//!    │◀──────────────── verdict (accepted / refused) ───│   refused: closed
//!    │   the engine checks the replica's proof too, then requests begin
//! ```
//!
//! Frames: hello is `magic u32 | version u8 | role u8 | flags u8 | 0 u8 |
//! nonce [32]` (40 bytes), a proof is the 32-byte HMAC-SHA256 tag, the
//! verdict a `u32` (0 accepted, 1 refused); integers little-endian. Tags
//! are compared in constant time (`ring::hmac::verify`). Nonces are fresh
//! per connection, so a recorded proof is worth nothing on another one.
//! This authenticates the peers; it does not encrypt or protect the
//! frames that follow (an attacker on the path could still tamper with
//! them).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Shortest secret a key file may hold.
pub const MIN_KEY_BYTES: usize = 32;

const HELLO_MAGIC: u32 = 0x5348_4241; // "SHBA"
const VERSION: u8 = 1;
const HELLO_LEN: usize = 40;
const NONCE_LEN: usize = 32;
const PROOF_LEN: usize = 32;
const FLAG_HAS_KEY: u8 = 1;
const ACCEPTED: u32 = 0;
const REFUSED: u32 = 1;
const LABEL: &[u8] = b"sheaf-blk cluster key v1";
const ENGINE_TO_REPLICA: &[u8] = b"engine->replica";
const REPLICA_TO_ENGINE: &[u8] = b"replica->engine";

/// How long the handshake may take (a peer that never answers must not
/// hold a connection, or a replica server's thread, forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The secret every node's storage processes share. Cheap to clone; its
/// bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct ClusterKey(hmac::Key);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the cluster key file {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the cluster key file {} holds {len} bytes of secret, fewer than {MIN_KEY_BYTES}: \
         make a new key (for example `openssl rand -hex 32 > FILE`) and give the same file to every node",
        path.display()
    )]
    KeyTooShort { path: PathBuf, len: usize },
    #[error("a cluster key needs at least {MIN_KEY_BYTES} bytes of secret, not {0}")]
    SecretTooShort(usize),

    // What an engine learns from the replica server.
    #[error(
        "refused the engine's key: the nodes do not share the same cluster key \
         (give every node's storage processes the same --auth-key-file)"
    )]
    KeyRefused,
    #[error(
        "did not prove that it holds the cluster key: the nodes do not share the same cluster key, \
         or something other than this cluster's replica server answers on that address"
    )]
    ReplicaUnproven,
    #[error("asks for the cluster key and this engine has none: start it with --auth-key-file (the cluster's key)")]
    ReplicaWantsKey,
    #[error(
        "serves without a cluster key (--insecure-no-auth) but this engine has one: \
         give the replica server the same --auth-key-file"
    )]
    ReplicaHasNoKey,

    // What a replica server learns from a client.
    #[error("the client did not prove that it holds the cluster key (its key differs from this replica's)")]
    ClientUnproven,
    #[error("the client has no cluster key and this replica server asks for one (give it --auth-key-file)")]
    ClientHasNoKey,
    #[error("the client has a cluster key and this replica server none (it runs with --insecure-no-auth)")]
    ClientWantsKey,

    #[error("did not answer as a sheaf replica handshake does: {0}")]
    NotSheaf(String),
    #[error("no answer to the handshake within {HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
    #[error("connection lost during the handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("no random numbers for the handshake nonce")]
    Random,
}

impl ClusterKey {
    /// A key from its secret bytes (at least [`MIN_KEY_BYTES`]).
    pub fn from_secret(secret: &[u8]) -> Result<ClusterKey, AuthError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(AuthError::SecretTooShort(secret.len()));
        }
        Ok(ClusterKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// Reads a key file: hex digits (whitespace around them ignored, so
    /// `openssl rand -hex 32 > FILE` makes one) are decoded; anything else
    /// is the secret as it is (raw bytes, e.g. `head -c 32 /dev/urandom`).
    pub fn from_file(path: &Path) -> Result<ClusterKey, AuthError> {
        let bytes = std::fs::read(path).map_err(|source| AuthError::KeyFile { path: path.into(), source })?;
        let secret = decode_hex(bytes.trim_ascii()).unwrap_or(bytes);
        if secret.len() < MIN_KEY_BYTES {
            return Err(AuthError::KeyTooShort { path: path.into(), len: secret.len() });
        }
        warn_if_readable_by_others(path);
        ClusterKey::from_secret(&secret)
    }

    fn proof(&self, engine_nonce: &[u8], replica_nonce: &[u8], direction: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in [LABEL, engine_nonce, replica_nonce, direction] {
            ctx.update(part);
        }
        ctx.sign()
    }

    fn check(&self, engine_nonce: &[u8], replica_nonce: &[u8], direction: &[u8], tag: &[u8]) -> bool {
        let mut data = Vec::with_capacity(LABEL.len() + 2 * NONCE_LEN + direction.len());
        for part in [LABEL, engine_nonce, replica_nonce, direction] {
            data.extend_from_slice(part);
        }
        hmac::verify(&self.0, &data, tag).is_ok()
    }
}

fn decode_hex(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the cluster key file is readable by other users: chmod 600 it");
        }
    }
}

#[derive(Copy, Clone, PartialEq, Eq)]
#[repr(u8)]
enum Role {
    Engine = 1,
    Replica = 2,
}

struct Hello {
    has_key: bool,
    nonce: [u8; NONCE_LEN],
}

fn hello(role: Role, key: Option<&ClusterKey>) -> Result<(Hello, [u8; HELLO_LEN]), AuthError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| AuthError::Random)?;
    let mut b = [0u8; HELLO_LEN];
    b[..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
    b[4] = VERSION;
    b[5] = role as u8;
    b[6] = if key.is_some() { FLAG_HAS_KEY } else { 0 };
    b[8..].copy_from_slice(&nonce);
    Ok((Hello { has_key: key.is_some(), nonce }, b))
}

fn parse_hello(b: &[u8; HELLO_LEN], from: Role) -> Result<Hello, AuthError> {
    let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if magic != HELLO_MAGIC {
        return Err(AuthError::NotSheaf(format!("unexpected first bytes {magic:#010x}")));
    }
    if b[4] != VERSION {
        return Err(AuthError::NotSheaf(format!("handshake version {} (this side speaks {VERSION})", b[4])));
    }
    if b[5] != from as u8 {
        return Err(AuthError::NotSheaf("the peer has the same role as this side".into()));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[8..]);
    Ok(Hello { has_key: b[6] & FLAG_HAS_KEY != 0, nonce })
}

/// The engine's side of the handshake, on a fresh TCP connection.
pub async fn engine_handshake<S>(stream: &mut S, key: Option<&ClusterKey>) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let work = async {
        let (mine, out) = hello(Role::Engine, key)?;
        stream.write_all(&out).await?;
        stream.flush().await?;
        let mut b = [0u8; HELLO_LEN];
        stream.read_exact(&mut b).await?;
        let theirs = parse_hello(&b, Role::Replica)?;
        let key = match (key, theirs.has_key) {
            (None, false) => return Ok(()),
            (None, true) => return Err(AuthError::ReplicaWantsKey),
            (Some(_), false) => return Err(AuthError::ReplicaHasNoKey),
            (Some(k), true) => k,
        };
        let proof = key.proof(&mine.nonce, &theirs.nonce, ENGINE_TO_REPLICA);
        stream.write_all(proof.as_ref()).await?;
        stream.flush().await?;
        let mut their_proof = [0u8; PROOF_LEN];
        stream.read_exact(&mut their_proof).await?;
        let verdict = stream.read_u32_le().await?;
        if verdict != ACCEPTED {
            return Err(AuthError::KeyRefused);
        }
        if !key.check(&mine.nonce, &theirs.nonce, REPLICA_TO_ENGINE, &their_proof) {
            return Err(AuthError::ReplicaUnproven);
        }
        Ok(())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await.map_err(|_| AuthError::TimedOut)?
}

/// The replica server's side of the handshake, on a freshly accepted TCP
/// connection (blocking; the caller sets a read timeout).
pub fn replica_handshake<S: Read + Write>(stream: &mut S, key: Option<&ClusterKey>) -> Result<(), AuthError> {
    let (mine, out) = hello(Role::Replica, key)?;
    stream.write_all(&out)?;
    stream.flush()?;
    let mut b = [0u8; HELLO_LEN];
    stream.read_exact(&mut b).map_err(timed_out)?;
    let theirs = parse_hello(&b, Role::Engine)?;
    let key = match (key, theirs.has_key) {
        (None, false) => return Ok(()),
        (None, true) => return Err(AuthError::ClientWantsKey),
        (Some(_), false) => return Err(AuthError::ClientHasNoKey),
        (Some(k), true) => k,
    };
    stream.write_all(key.proof(&theirs.nonce, &mine.nonce, REPLICA_TO_ENGINE).as_ref())?;
    stream.flush()?;
    let mut their_proof = [0u8; PROOF_LEN];
    stream.read_exact(&mut their_proof).map_err(timed_out)?;
    let ok = key.check(&theirs.nonce, &mine.nonce, ENGINE_TO_REPLICA, &their_proof);
    stream.write_all(&(if ok { ACCEPTED } else { REFUSED }).to_le_bytes())?;
    stream.flush()?;
    if ok {
        Ok(())
    } else {
        Err(AuthError::ClientUnproven)
    }
}

fn timed_out(e: std::io::Error) -> AuthError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => AuthError::TimedOut,
        _ => AuthError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_secret(&[b; 32]).expect("key")
    }

    /// Runs both sides over a socket pair; returns (engine's, replica's) outcome.
    async fn run(
        engine_key: Option<ClusterKey>,
        replica_key: Option<ClusterKey>,
    ) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        b.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let replica = std::thread::spawn(move || replica_handshake(&mut b, replica_key.as_ref()));
        a.set_nonblocking(true).expect("nonblocking");
        let mut a = tokio::net::UnixStream::from_std(a).expect("tokio stream");
        let engine = engine_handshake(&mut a, engine_key.as_ref()).await;
        drop(a);
        (engine, replica.join().expect("replica thread"))
    }

    #[tokio::test]
    async fn same_key_passes_and_every_mismatch_is_named_on_both_sides() {
        let (e, r) = run(Some(key(1)), Some(key(1))).await;
        assert!(e.is_ok() && r.is_ok(), "{e:?} {r:?}");
        let (e, r) = run(None, None).await;
        assert!(e.is_ok() && r.is_ok(), "{e:?} {r:?}");
        let (e, r) = run(Some(key(2)), Some(key(1))).await;
        assert!(matches!(e, Err(AuthError::KeyRefused)), "{e:?}");
        assert!(matches!(r, Err(AuthError::ClientUnproven)), "{r:?}");
        let (e, r) = run(None, Some(key(1))).await;
        assert!(matches!(e, Err(AuthError::ReplicaWantsKey)), "{e:?}");
        assert!(matches!(r, Err(AuthError::ClientHasNoKey)), "{r:?}");
        let (e, r) = run(Some(key(1)), None).await;
        assert!(matches!(e, Err(AuthError::ReplicaHasNoKey)), "{e:?}");
        assert!(matches!(r, Err(AuthError::ClientWantsKey)), "{r:?}");
    }

    #[tokio::test]
    async fn a_replica_that_answers_with_a_wrong_proof_is_not_trusted() {
        // A fake replica that claims a key, accepts anything and sends a
        // proof made with another key.
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let fake = std::thread::spawn(move || {
            let mut h = [0u8; HELLO_LEN];
            b.read_exact(&mut h).expect("hello");
            let (_, out) = hello(Role::Replica, Some(&key(9))).expect("hello");
            b.write_all(&out).expect("write");
            let mut p = [0u8; PROOF_LEN];
            b.read_exact(&mut p).expect("proof");
            b.write_all(&[7u8; PROOF_LEN]).expect("write");
            b.write_all(&ACCEPTED.to_le_bytes()).expect("write");
        });
        a.set_nonblocking(true).expect("nonblocking");
        let mut a = tokio::net::UnixStream::from_std(a).expect("tokio stream");
        let e = engine_handshake(&mut a, Some(&key(1))).await;
        assert!(matches!(e, Err(AuthError::ReplicaUnproven)), "{e:?}");
        fake.join().expect("fake");
    }

    #[tokio::test]
    async fn a_peer_that_speaks_another_protocol_is_named() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        std::thread::spawn(move || {
            let mut h = [0u8; HELLO_LEN];
            b.read_exact(&mut h)?;
            b.write_all(&[0x42u8; HELLO_LEN])
        });
        a.set_nonblocking(true).expect("nonblocking");
        let mut a = tokio::net::UnixStream::from_std(a).expect("tokio stream");
        let e = engine_handshake(&mut a, Some(&key(1))).await;
        assert!(matches!(e, Err(AuthError::NotSheaf(_))), "{e:?}");
    }

    #[test]
    fn key_files_take_hex_or_raw_and_refuse_short_secrets() {
        let d = tempfile::tempdir().expect("tempdir");
        let hex = d.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).expect("write");
        assert!(ClusterKey::from_file(&hex).is_ok());
        let short_hex = d.path().join("short-hex");
        // 40 hex digits: 20 bytes of secret, too few.
        std::fs::write(&short_hex, "0123456789abcdef0123456789abcdef01234567\n").expect("write");
        let e = ClusterKey::from_file(&short_hex).expect_err("short");
        assert!(e.to_string().contains("holds 20 bytes of secret, fewer than 32"), "{e}");
        let raw = d.path().join("raw");
        std::fs::write(&raw, [0xffu8; 32]).expect("write");
        assert!(ClusterKey::from_file(&raw).is_ok());
        assert!(ClusterKey::from_file(&d.path().join("missing")).is_err());
        // The same secret as hex and as raw bytes is the same key.
        let k1 = ClusterKey::from_file(&hex).expect("hex");
        let k2 = ClusterKey::from_secret(&[0xab; 32]).expect("raw");
        let (n1, n2) = ([1u8; 32], [2u8; 32]);
        assert!(k2.check(&n1, &n2, ENGINE_TO_REPLICA, k1.proof(&n1, &n2, ENGINE_TO_REPLICA).as_ref()));
        assert!(!k2.check(&n1, &n2, REPLICA_TO_ENGINE, k1.proof(&n1, &n2, ENGINE_TO_REPLICA).as_ref()));
        assert_eq!(format!("{k1:?}"), "ClusterKey(..)");
    }
}
