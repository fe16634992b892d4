//! Test support: a real `sheaf server` process on a free loopback port,
//! with its own data directory, and a `kubectl` bound to it.

#![allow(dead_code)]

pub mod blk;
pub mod console;
pub mod counter;
pub mod guest;
pub mod ha;
pub mod nodes;
pub mod vmnet;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// The address it listens on (127.0.0.1 unless started with
    /// [`Server::start_on`]).
    pub host: String,
    pub port: u16,
    pub kubeconfig: PathBuf,
    extra: Vec<String>,
    /// Run after the server is killed (host devices a test set up).
    pub cleanups: Vec<Box<dyn FnOnce()>>,
}

pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free on address `host` of this machine.
pub fn free_port_on(host: &str) -> u16 {
    let l = std::net::TcpListener::bind((host, 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts `sheaf server` with extra arguments (e.g. `--store etcd`).
    pub fn start_with(extra: &[&str]) -> Server {
        Self::start_on("127.0.0.1", extra)
    }

    /// Starts `sheaf server` listening on `host` (an address of this
    /// machine) instead of loopback, with extra arguments.
    pub fn start_on(host: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut s = Server {
            child: None,
            dir,
            host: host.to_string(),
            port: free_port_on(host),
            kubeconfig,
            extra,
            cleanups: Vec::new(),
        };
        // A port free when picked may be taken before the server binds it:
        // try a few.
        for _ in 0..3 {
            if s.spawn() {
                return s;
            }
            s.port = free_port_on(&s.host);
        }
        panic!("sheaf server did not start on three free ports: {}", s.log());
    }

    /// The server process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    /// Starts the server; false if its port was taken meanwhile.
    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sheaf"))
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen")
            .arg(format!("{}:{}", self.host, self.port))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sheaf server");
        self.child = Some(child);
        if !self.wait_ready() {
            return false;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_sheaf"))
            .args(["kubeconfig", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--server", &self.url()])
            .output()
            .expect("sheaf kubeconfig");
        assert!(out.status.success(), "sheaf kubeconfig failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&self.kubeconfig, &out.stdout).expect("write kubeconfig");
        true
    }

    /// Waits until the server listens; false if its port was in use.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    if self.log().contains("Address already in use") {
                        return false;
                    }
                    panic!("sheaf server exited early with {status}: {}", self.log());
                }
            }
            if std::net::TcpStream::connect((self.host.as_str(), self.port)).is_ok()
                && self.dir.path().join("data/admin.kubeconfig").exists()
            {
                return true;
            }
            assert!(Instant::now() < deadline, "sheaf server not ready in 30 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/admin.token")).expect("token").trim().to_string()
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("data/pki/ca.crt")).expect("ca")
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        assert!(self.spawn(), "port {} was taken while the server restarted", self.port);
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl_as(&self.kubeconfig, args, stdin)
    }

    /// kubectl with another user's kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        cmd.env("HOME", self.dir.path());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl is installed");
        if let Some(input) = stdin {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and returns stdout, panicking with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the `sheaf` CLI against this server: (success, stdout + stderr).
    pub fn sheaf_cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_sheaf"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .output()
            .expect("sheaf");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    }

    /// Runs the `sheaf` CLI and returns its output, panicking with the
    /// server's log on failure.
    #[track_caller]
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.sheaf_cli(args);
        assert!(ok, "sheaf {args:?} failed: {out}\n{}", self.log());
        out
    }

    /// Runs the `sheaf` CLI expecting failure; returns its output.
    #[track_caller]
    pub fn cli_fail(&self, args: &[&str]) -> String {
        let (ok, out) = self.sheaf_cli(args);
        assert!(!ok, "sheaf {args:?} should fail: {out}");
        out
    }

    /// `kubectl apply -f -` of `manifest`, panicking on failure.
    #[track_caller]
    pub fn apply(&self, manifest: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], Some(manifest));
        assert!(out.status.success(), "{}\n{manifest}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn kubectl_err(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        for c in self.cleanups.drain(..) {
            c();
        }
    }
}

/// Serves the files of `dir` over HTTP/1.1 on loopback (GET of a file
/// name; 404 otherwise), a thread per connection; returns the base URL.
pub fn http_server(dir: &std::path::Path) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
                let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                match std::fs::read(dir.join(&path)) {
                    Ok(body) => {
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = conn.write_all(&body);
                    }
                    Err(_) => {
                        let _ =
                            conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            });
        }
    });
    url
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}
