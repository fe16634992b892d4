//! The `sheaf server` the benchmark runs (its own data, image and runtime
//! directories under the work directory, a free loopback port), killed when
//! its guard is dropped, and the few API calls the benchmark makes: create
//! and delete a VirtualMachine, and a watch that notes when each VMI was
//! created, scheduled and reported Running.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt;
use serde_json::Value;
use sheaf_bench_common::free_port;
pub use sheaf_bench_common::tail;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
pub const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const VMIS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Guard(pub Child);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When the watch saw a VMI pass each point (receipt time on this process's
/// clock).
#[derive(Clone, Debug, Default)]
pub struct VmiSeen {
    pub uid: Option<String>,
    pub created: Option<Instant>,
    pub scheduled: Option<Instant>,
    pub running: Option<Instant>,
    /// Set when the VMI reports phase Failed: its reason and message.
    pub failed: Option<String>,
}

pub type Seen = Arc<Mutex<HashMap<String, VmiSeen>>>;

/// `sheaf server` with its own directories.
pub struct Sheaf {
    pub proc: Guard,
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    pub log: PathBuf,
    pub run_dir: PathBuf,
    pub seen: Seen,
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Sheaf {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
    }
}

impl Sheaf {
    /// Starts `sheaf server` with `extra` arguments, waits for `/readyz` and
    /// for its node to be Ready, and opens the VMI watch.
    pub async fn start(
        binary: &Path,
        work: &Path,
        extra: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Sheaf> {
        let mut last = None;
        // A port free when picked may be taken before the server binds it.
        for attempt in 0..3 {
            match Self::try_start(binary, work, attempt, extra, env).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("sheaf server did not start")))
    }

    async fn try_start(
        binary: &Path,
        work: &Path,
        attempt: usize,
        extra: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Sheaf> {
        let dir = work.join(format!("server{attempt}"));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let log = dir.join("server.log");
        let run_dir = work.join("run");
        let child = Command::new(binary)
            .arg("server")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--image-dir")
            .arg(work.join("images"))
            .arg("--run-dir")
            .arg(&run_dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut proc = Guard(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let alive = |proc: &mut Guard| -> anyhow::Result<()> {
            if let Some(status) = proc.0.try_wait()? {
                bail!("sheaf server exited with {status} during startup:\n{}", tail(&log, 30));
            }
            if Instant::now() > deadline {
                bail!("sheaf server not ready within {STARTUP_TIMEOUT:?}:\n{}", tail(&log, 30));
            }
            Ok(())
        };
        loop {
            alive(&mut proc)?;
            if data.join("admin.token").exists()
                && TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(200)).is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = std::fs::read_to_string(data.join("admin.token")).context("read admin.token")?.trim().to_string();
        let ca_pem = std::fs::read(data.join("pki/ca.crt")).context("read pki/ca.crt")?;
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
            .tls_built_in_root_certs(false)
            .build()?;
        // Ready, and the embedded agent has registered a Ready node.
        loop {
            alive(&mut proc)?;
            let ready = match http.get(format!("{url}/readyz")).bearer_auth(&token).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            };
            if ready {
                let nodes: Value = match http.get(format!("{url}/api/v1/nodes")).bearer_auth(&token).send().await {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                let node_ready = nodes["items"].as_array().is_some_and(|items| {
                    items.iter().any(|n| {
                        n["status"]["conditions"]
                            .as_array()
                            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                    })
                });
                if node_ready {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut s = Sheaf { proc, url, token, http, log, run_dir, seen: Seen::default(), watch: None };
        s.watch = Some(s.start_watch().await?);
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Fails if the server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.proc.0.try_wait()? {
            bail!("sheaf server exited with {status}:\n{}", tail(&self.log, 30));
        }
        Ok(())
    }

    /// Watches the VMIs of the default namespace from now on and records in
    /// `seen` when each was created, scheduled and Running.
    async fn start_watch(&self) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let list: Value = self
            .http
            .get(format!("{}{VMIS}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
        let (http, url, token, seen) = (self.http.clone(), self.url.clone(), self.token.clone(), self.seen.clone());
        // The server answers the watch request once its store watch is
        // registered: wait for that before the first create.
        let first = http
            .get(format!("{url}{VMIS}?watch=true&resourceVersion={rv}&timeoutSeconds=3600"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?;
        Ok(tokio::spawn(async move {
            let mut resp = Some(first);
            loop {
                let r = match resp.take() {
                    Some(r) => r,
                    None => {
                        let u = format!("{url}{VMIS}?watch=true&resourceVersion={rv}&timeoutSeconds=3600");
                        match http.get(u).bearer_auth(&token).send().await {
                            Ok(r) if r.status().is_success() => r,
                            _ => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        }
                    }
                };
                let mut body = r.bytes_stream();
                let mut buf: Vec<u8> = Vec::new();
                while let Some(Ok(chunk)) = body.next().await {
                    let at = Instant::now();
                    buf.extend_from_slice(&chunk);
                    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
                        let obj = &ev["object"];
                        if let Some(v) = obj["metadata"]["resourceVersion"].as_str() {
                            rv = v.to_string();
                        }
                        if ev["type"] == "ERROR" {
                            // Too old a revision: start from the current one.
                            rv = "0".into();
                            continue;
                        }
                        let Some(name) = obj["metadata"]["name"].as_str() else { continue };
                        let uid = obj["metadata"]["uid"].as_str().map(String::from);
                        let mut map = seen.lock().unwrap_or_else(PoisonError::into_inner);
                        let e = map.entry(name.to_string()).or_default();
                        if e.uid != uid {
                            // A new VMI of that name.
                            *e = VmiSeen { uid, ..Default::default() };
                        }
                        if ev["type"] == "DELETED" {
                            continue;
                        }
                        e.created.get_or_insert(at);
                        if obj["status"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                            e.scheduled.get_or_insert(at);
                        }
                        match obj["status"]["phase"].as_str() {
                            Some("Running") => {
                                e.running.get_or_insert(at);
                            }
                            Some("Failed") if e.failed.is_none() => {
                                e.failed = Some(format!(
                                    "{} {}",
                                    obj["status"]["reason"].as_str().unwrap_or(""),
                                    obj["status"]["conditions"]
                                ));
                            }
                            _ => {}
                        }
                    }
                }
            }
        }))
    }

    pub fn seen(&self, name: &str) -> VmiSeen {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned().unwrap_or_default()
    }

    /// POSTs a VirtualMachine; returns the `Warning` headers.
    pub async fn create_vm(&self, body: &[u8]) -> anyhow::Result<Vec<String>> {
        let resp = self
            .http
            .post(format!("{}{VMS}?fieldValidation=Strict", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .context("POST VirtualMachine")?;
        let status = resp.status();
        let warnings =
            resp.headers().get_all("warning").iter().map(|w| String::from_utf8_lossy(w.as_bytes()).into()).collect();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST VirtualMachine: HTTP {status}: {text}");
        }
        Ok(warnings)
    }

    pub async fn delete_vm(&self, name: &str) -> anyhow::Result<()> {
        let resp = self.http.delete(format!("{}{VMS}/{name}", self.url)).bearer_auth(&self.token).send().await?;
        let status = resp.status();
        if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
            bail!("DELETE VirtualMachine {name}: HTTP {status}: {}", resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Whether the VirtualMachine `name` still exists.
    pub async fn vm_exists(&self, name: &str) -> anyhow::Result<bool> {
        let resp = self.http.get(format!("{}{VMS}/{name}", self.url)).bearer_auth(&self.token).send().await?;
        Ok(resp.status() != reqwest::StatusCode::NOT_FOUND)
    }
}
