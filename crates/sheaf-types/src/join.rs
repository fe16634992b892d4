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

/// Where a further control-plane server asks to join (`POST`, bearer
/// token: the node secret of the join token).
pub const SERVER_JOIN_PATH: &str = "/sheaf/v1/join-server";

/// Where a joined server asks for its etcd member (a learner until then)
/// to become a voting member, once it has started (`POST`, same body and
/// token as [`SERVER_JOIN_PATH`]).
pub const SERVER_PROMOTE_PATH: &str = "/sheaf/v1/promote-server";

/// The most servers (etcd voting members) a control plane has.
pub const MAX_SERVERS: usize = 3;

/// Every server of a control plane keeps a Lease
/// `kube-system/sheaf-apiserver-<name>` with this label and its URL in
/// [`SERVER_URL_ANNOTATION`], renewed while it runs, so that clients learn
/// the servers they were not told about.
pub const SERVER_LEASE_LABEL: &str = "sheaf.io/apiserver";
pub const SERVER_URL_ANNOTATION: &str = "sheaf.io/url";
pub const SERVER_LEASE_PREFIX: &str = "sheaf-apiserver-";
pub const SERVER_LEASE_NAMESPACE: &str = "kube-system";

/// A further server's request to join the control plane.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerJoinRequest {
    /// Its name (the etcd member name, its Node name).
    pub name: String,
    /// The URL its etcd member is reached at by the others
    /// (`https://NODE_IP:2380`).
    pub peer_url: String,
}

/// One etcd member of the control plane.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMember {
    pub name: String,
    pub peer_url: String,
}

/// What a joining server gets: the cluster's shared secrets and the etcd
/// members, itself included, to start its etcd member with.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerJoinResponse {
    pub ca_crt: String,
    pub ca_key: String,
    pub admin_token: String,
    pub node_token: String,
    /// The etcd key prefix the cluster's objects live under.
    pub etcd_prefix: String,
    pub members: Vec<EtcdMember>,
}

impl std::fmt::Debug for ServerJoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerJoinResponse").field("members", &self.members).finish_non_exhaustive()
    }
}

/// etcd's `--initial-cluster`: `name=peer-url,...`.
pub fn initial_cluster(members: &[EtcdMember]) -> String {
    members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",")
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
