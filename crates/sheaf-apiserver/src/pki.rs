//! The cluster's certificate authority, the API server's certificate, and
//! the admin bearer token, generated on first start in the data directory:
//!
//! ```text
//! DATA/pki/ca.crt  ca.key        the cluster CA (kept; signs everything)
//! DATA/pki/server.crt server.key the API server's certificate
//! DATA/pki/etcd-peer.crt .key    the etcd member's peer certificate (HA)
//! DATA/admin.token               bearer token with full rights (0600)
//! ```
//!
//! The server certificate is re-issued when the requested names change.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    let mut f =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io(path))
}

/// The CA's parameters; deterministic, so that the issuer can be rebuilt.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "sheaf-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

/// Paths and PEM contents of the generated material.
pub struct Pki {
    pub ca_pem: String,
    /// The CA's private key (shared by the servers of an HA control plane).
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub admin_token: String,
    /// The secret nodes join with (in the join token).
    pub node_token: String,
}

impl Pki {
    /// `SHEAF1::<CA hash>::<node secret>`: all `sheaf agent --token` needs.
    pub fn join_token(&self) -> String {
        sheaf_types::join::join_token(&self.ca_pem, &self.node_token)
    }
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads, or creates on first start, the CA, server certificate and admin
/// token under `data_dir`. `names` are the DNS names and IP addresses the
/// server certificate must cover (localhost and 127.0.0.1 are always in).
pub fn ensure(data_dir: &Path, names: &[String]) -> Result<Pki, PkiError> {
    let dir = data_dir.join("pki");
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    if !ca_crt.exists() || !ca_key.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key, key.serialize_pem().as_bytes())?;
        fs::write(&ca_crt, cert.pem()).map_err(io(&ca_crt))?;
    }
    let ca_pem = fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
    let ca_key_pem = fs::read_to_string(&ca_key).map_err(io(&ca_key))?;

    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let srv_crt = dir.join("server.crt");
    let srv_key = dir.join("server.key");
    let leaf = Leaf {
        cert: srv_crt.clone(),
        key: srv_key.clone(),
        names: dir.join("server.names"),
        common_name: "sheaf-apiserver",
        usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    leaf.ensure(&ca_key_pem, &sans)?;
    let token_path = data_dir.join("admin.token");
    if !token_path.exists() {
        write_private(&token_path, random_token().as_bytes())?;
    }
    let node_token_path = data_dir.join("node.token");
    if !node_token_path.exists() {
        write_private(&node_token_path, random_token().as_bytes())?;
    }
    Ok(Pki {
        ca_pem,
        ca_key_pem,
        cert_pem: fs::read_to_string(&srv_crt).map_err(io(&srv_crt))?,
        key_pem: fs::read_to_string(&srv_key).map_err(io(&srv_key))?,
        admin_token: fs::read_to_string(&token_path).map_err(io(&token_path))?.trim().to_string(),
        node_token: fs::read_to_string(&node_token_path).map_err(io(&node_token_path))?.trim().to_string(),
    })
}

/// A certificate signed by the cluster CA, with the files it lives in;
/// re-issued when its names change.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    /// The names it was issued for, comma-separated.
    names: PathBuf,
    common_name: &'static str,
    usages: Vec<ExtendedKeyUsagePurpose>,
}

impl Leaf {
    fn ensure(&self, ca_key_pem: &str, sans: &[String]) -> Result<(), PkiError> {
        let wanted = sans.join(",");
        let current = fs::read_to_string(&self.names).unwrap_or_default();
        if self.cert.exists() && self.key.exists() && current == wanted {
            return Ok(());
        }
        let ca_key = KeyPair::from_pem(ca_key_pem)?;
        // The issuer is rebuilt from the same parameters and key as the CA
        // certificate, so subject and key identifier match it.
        let issuer = Issuer::new(ca_params()?, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, self.common_name);
        params.subject_alt_names = sans
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = self.usages.clone();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&self.key, key.serialize_pem().as_bytes())?;
        fs::write(&self.cert, cert.pem()).map_err(io(&self.cert))?;
        fs::write(&self.names, &wanted).map_err(io(&self.names))
    }
}

/// The secrets every server of a control plane shares: the CA (certificate
/// and key), the admin token and the node secret.
pub struct SharedSecrets<'a> {
    pub ca_pem: &'a str,
    pub ca_key_pem: &'a str,
    pub admin_token: &'a str,
    pub node_token: &'a str,
}

/// Writes the shared secrets a joining server received into `data_dir`,
/// replacing what it had; its own certificates are re-issued under the
/// cluster's CA by the next [`ensure`].
pub fn install_shared(data_dir: &Path, s: &SharedSecrets<'_>) -> Result<(), PkiError> {
    let dir = data_dir.join("pki");
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    // Certificates signed by another CA are of no use any more.
    for f in ["server.crt", "server.key", "server.names", "etcd-peer.crt", "etcd-peer.key", "etcd-peer.names"] {
        let p = dir.join(f);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PkiError::Io { path: p, source: e }),
        }
    }
    write_private(&dir.join("ca.key"), s.ca_key_pem.as_bytes())?;
    let ca_crt = dir.join("ca.crt");
    fs::write(&ca_crt, s.ca_pem).map_err(io(&ca_crt))?;
    write_private(&data_dir.join("admin.token"), s.admin_token.as_bytes())?;
    write_private(&data_dir.join("node.token"), s.node_token.as_bytes())
}

/// The files of an etcd member's peer TLS (mutual: each member presents a
/// certificate of the cluster CA to the others).
#[derive(Clone, Debug)]
pub struct EtcdPeerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The peer certificate of this server's etcd member, for `ip` (server and
/// client authentication), issued by the cluster CA under `data_dir`.
pub fn etcd_peer_tls(data_dir: &Path, ip: std::net::IpAddr) -> Result<EtcdPeerTls, PkiError> {
    let dir = data_dir.join("pki");
    let ca_key = dir.join("ca.key");
    let ca_key_pem = fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let leaf = Leaf {
        cert: dir.join("etcd-peer.crt"),
        key: dir.join("etcd-peer.key"),
        names: dir.join("etcd-peer.names"),
        common_name: "sheaf-etcd-peer",
        usages: vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    let mut sans = vec![ip.to_string()];
    if !ip.is_loopback() {
        sans.push("127.0.0.1".into());
    }
    leaf.ensure(&ca_key_pem, &sans)?;
    Ok(EtcdPeerTls { ca: dir.join("ca.crt"), cert: leaf.cert, key: leaf.key })
}

/// Reads the CA certificate and admin token of an initialised data
/// directory, without creating anything.
pub fn load_admin(data_dir: &Path) -> Result<(String, String), PkiError> {
    let ca = data_dir.join("pki").join("ca.crt");
    let token = data_dir.join("admin.token");
    Ok((fs::read_to_string(&ca).map_err(io(&ca))?, fs::read_to_string(&token).map_err(io(&token))?.trim().to_string()))
}

/// A rustls server configuration (HTTP/2 and HTTP/1.1) for the PEMs.
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let certs = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .ok_or_else(|| PkiError::Tls("no private key in server.key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A kubeconfig for `server` with the CA and a bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str, user: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: sheaf
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: sheaf
  context:
    cluster: sheaf
    user: {user}
    namespace: default
current-context: sheaf
"
    )
}
