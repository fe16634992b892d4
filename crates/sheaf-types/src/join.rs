//! Join tokens: what a new node needs to trust the cluster and be trusted
//! by it, in one string (the shape k3s uses):
//! `SHEAF1::<SHA-256 of the cluster CA's PEM, hex>::<node secret>`.
//!
//! The node fetches the CA from the server (`GET /cacerts`, no
//! credentials), accepts it only if its hash is the token's, and then talks
//! to the server over TLS verified against that CA with the secret as its
//! bearer token. So the token alone is enough, and a server that is not the
//! cluster's cannot pose as it.

use sha2::Digest as _;

pub const PREFIX: &str = "SHEAF1";

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the CA certificate's PEM text, lower-case hex.
    pub ca_hash: String,
    /// The bearer token the server accepts from nodes.
    pub secret: String,
}

/// SHA-256 of `ca_pem`, lower-case hex.
pub fn ca_hash(ca_pem: &str) -> String {
    sha2::Sha256::digest(ca_pem.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The join token for a cluster with this CA and node secret.
pub fn join_token(ca_pem: &str, secret: &str) -> String {
    format!("{PREFIX}::{}::{secret}", ca_hash(ca_pem))
}

/// `Some` when `s` is a join token (not a plain bearer token).
pub fn parse(s: &str) -> Option<JoinToken> {
    let mut parts = s.trim().split("::");
    if parts.next()? != PREFIX {
        return None;
    }
    let ca_hash = parts.next()?.to_ascii_lowercase();
    let secret = parts.next()?.to_string();
    let ok = parts.next().is_none()
        && ca_hash.len() == 64
        && ca_hash.chars().all(|c| c.is_ascii_hexdigit())
        && !secret.is_empty();
    ok.then_some(JoinToken { ca_hash, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = join_token("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n", "s3cret");
        let p = parse(&t).expect("parses");
        assert_eq!(p.secret, "s3cret");
        assert_eq!(p.ca_hash.len(), 64);
        assert_eq!(p.ca_hash, ca_hash("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"));
        for bad in ["s3cret", "SHEAF1::abc::s", "SHEAF2::x::y", &format!("SHEAF1::{}::", "a".repeat(64))] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
