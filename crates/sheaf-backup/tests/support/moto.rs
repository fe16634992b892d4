//! A real S3 server for tests: moto's (`moto_server`, from PyPI), on
//! 127.0.0.1 at a free port, killed when the [`Moto`] is dropped.
//!
//! Self-contained (only `std`), so any test crate can use it:
//!
//! ```ignore
//! #[path = "../../sheaf-backup/tests/support/moto.rs"]
//! mod moto;
//! let moto = moto::Moto::start();
//! moto.create_bucket("backups");
//! // S3 endpoint: moto.endpoint (http://127.0.0.1:PORT), any credentials.
//! ```
//!
//! The server is `$SHEAF_MOTO` or `/opt/sheaf-test/moto/bin/moto_server`,
//! which `scripts/install-deps.sh --test` installs. Without it the test
//! fails: it is never skipped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/install-deps.sh --test` puts moto's server.
const DEFAULT_MOTO: &str = "/opt/sheaf-test/moto/bin/moto_server";
/// How long moto may take to answer once started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT` (`https://` from [`Moto::start_tls`]).
    pub endpoint: String,
    pub port: u16,
    /// Whether it speaks TLS, which this file's own requests cannot.
    tls: bool,
    child: Child,
    /// moto's output, shown when it fails to start.
    log: PathBuf,
}

impl Moto {
    /// Starts moto and waits until it answers. Panics (failing the test)
    /// when moto is not installed or does not come up.
    pub fn start() -> Moto {
        Moto::launch(None)
    }

    /// Starts moto serving HTTPS with the certificate chain and key in
    /// these PEM files. Its buckets must be made through S3 (a `PUT
    /// /bucket`): [`Moto::create_bucket`] speaks plain HTTP only.
    pub fn start_tls(cert: &Path, key: &Path) -> Moto {
        Moto::launch(Some((cert, key)))
    }

    fn launch(tls: Option<(&Path, &Path)>) -> Moto {
        let binary = std::env::var_os("SHEAF_MOTO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_MOTO));
        assert!(
            binary.is_file(),
            "moto's S3 server is not at {} ($SHEAF_MOTO, or {DEFAULT_MOTO} when that is unset): \
             run `scripts/install-deps.sh --test`",
            binary.display()
        );
        // The port is free when we look; another process may take it
        // before moto binds it, so try a few.
        let mut last_failure = String::new();
        for _ in 0..3 {
            match Moto::try_start(&binary, tls) {
                Ok(moto) => return moto,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("moto's S3 server ({}) did not start: {last_failure}", binary.display());
    }

    fn try_start(binary: &Path, tls: Option<(&Path, &Path)>) -> Result<Moto, String> {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("sheaf-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let log_err = log_file.try_clone().map_err(|e| format!("cannot use {}: {e}", log.display()))?;
        let mut command = Command::new(binary);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((cert, key)) = tls {
            command.arg("-c").arg(cert).arg("-k").arg(key);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut moto = Moto { endpoint: format!("{scheme}://127.0.0.1:{port}"), port, tls: tls.is_some(), child, log };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!("it exited ({status}); its output:\n{}", moto.output()));
            }
            if moto.tls {
                // Listening is all we can see without a TLS client.
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                    return Ok(moto);
                }
            } else if let Ok((status, _)) = moto.request("GET", "/moto-api/data.json", &[]) {
                // moto's own API: not an AWS action, so not counted by
                // its INITIAL_NO_AUTH_ACTION_COUNT.
                if status > 0 {
                    return Ok(moto);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("it did not answer in {START_TIMEOUT:?}; its output:\n{}", moto.output()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates bucket `name` (in us-east-1). Panics when moto refuses.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self
            .request("PUT", &format!("/{name}"), &[])
            .unwrap_or_else(|e| panic!("cannot create bucket {name}: {e}"));
        assert!(status == 200, "moto refused to create bucket {name}: HTTP {status}: {body}");
    }

    /// Creates IAM user `name` allowed everything on S3, and returns its
    /// access key id and secret key. Only useful with
    /// [`Moto::require_signatures`].
    pub fn create_s3_user(&self, name: &str) -> (String, String) {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        self.iam(&[("Action", "CreateUser"), ("UserName", name)]);
        self.iam(&[("Action", "PutUserPolicy"), ("UserName", name), ("PolicyName", "s3"), ("PolicyDocument", policy)]);
        let answer = self.iam(&[("Action", "CreateAccessKey"), ("UserName", name)]);
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = answer.find(&open).map(|at| at + open.len());
            let end = answer.find(&format!("</{tag}>"));
            match (start, end) {
                (Some(start), Some(end)) if start <= end => answer[start..end].to_owned(),
                _ => panic!("moto's CreateAccessKey answer has no <{tag}>: {answer}"),
            }
        };
        (field("AccessKeyId"), field("SecretAccessKey"))
    }

    /// From now on moto checks every AWS request's signature against its
    /// IAM users' keys, and their policies.
    pub fn require_signatures(&self) {
        let (status, body) = self
            .request("POST", "/moto-api/reset-auth", b"0")
            .unwrap_or_else(|e| panic!("cannot turn on moto's authentication: {e}"));
        assert!(status == 200, "moto refused to turn on authentication: HTTP {status}: {body}");
    }

    /// Sends an IAM query-API request; moto routes it by the credential
    /// scope of its (unchecked, until [`Moto::require_signatures`])
    /// Authorization header.
    fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut form = String::from("Version=2010-05-08");
        for (name, value) in params {
            form.push_str(&format!("&{}={}", form_encode(name), form_encode(value)));
        }
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAMOTOSETUP/20240101/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=0",
            ),
        ];
        let (status, body) =
            self.send("POST", "/", &headers, form.as_bytes()).unwrap_or_else(|e| panic!("IAM request {params:?}: {e}"));
        assert!(status == 200, "moto refused IAM request {params:?}: HTTP {status}: {body}");
        body
    }

    /// Sends one unsigned HTTP/1.1 request (moto accepts those) and returns
    /// the status and body of the answer.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, String), String> {
        self.send(method, path, &[], body)
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(u16, String), String> {
        assert!(!self.tls, "this moto speaks TLS: send {method} {path} through an HTTPS client");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    }

    /// What moto printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `text` encoded for an `application/x-www-form-urlencoded` body.
fn form_encode(text: &str) -> String {
    let mut out = String::new();
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A port nothing listens on at the moment.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port on 127.0.0.1");
    listener.local_addr().expect("the port of a bound socket").port()
}
