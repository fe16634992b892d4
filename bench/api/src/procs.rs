//! The processes the benchmark runs — etcd and `sheaf server` — on free
//! loopback ports with their state in temporary directories, each killed
//! when its guard is dropped (also on error, panic or Ctrl-C), and
//! readings of their memory and CPU time from `/proc`.

use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
pub use sheaf_bench_common::free_port;
use sheaf_bench_common::{strip_ansi, tail};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const ATTEMPTS: usize = 3;

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Guard {
    child: Child,
    what: &'static str,
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait().with_context(|| format!("wait for {}", self.what))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-member etcd cluster of its own.
pub struct Etcd {
    // Dropped first: the process goes before its directory.
    pub proc: Guard,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start(binary: &Path) -> anyhow::Result<Etcd> {
        let mut last = None;
        // Another process may take a port between `free_port` and etcd's
        // bind; then etcd exits and we try new ports.
        for _ in 0..ATTEMPTS {
            match Self::try_start(binary).await {
                Ok(e) => return Ok(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    async fn try_start(binary: &Path) -> anyhow::Result<Etcd> {
        let dir = tempfile::Builder::new().prefix("sheaf-bench-etcd-").tempdir()?;
        let client_port = free_port()?;
        let mut peer_port = free_port()?;
        while peer_port == client_port {
            peer_port = free_port()?;
        }
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let log_file = File::create(&log)?;
        let child = Command::new(binary)
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bench={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut etcd = Etcd { proc: Guard { child, what: "etcd" }, url, dir };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = etcd.proc.exited()? {
                bail!("etcd exited with {status} during startup:\n{}", tail(&log, 30));
            }
            if Instant::now() > deadline {
                bail!("etcd not ready within {STARTUP_TIMEOUT:?}:\n{}", tail(&log, 30));
            }
            if TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, client_port).into(), Duration::from_millis(200))
                .is_ok()
            {
                if let Ok(r) = http.get(format!("{}/health", etcd.url)).send().await {
                    if r.status().is_success() && r.text().await.unwrap_or_default().contains("true") {
                        return Ok(etcd);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `sheaf server` with its own data directory.
pub struct Sheaf {
    // Dropped first: the process goes before its directory.
    pub proc: Guard,
    pub url: String,
    pub token: String,
    pub ca_pem: Vec<u8>,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Sheaf {
    /// Starts `sheaf server` (on etcd when `etcd` is given) and waits until
    /// `/readyz` answers.
    pub async fn start(binary: &Path, etcd: Option<&str>, env: &[(String, String)]) -> anyhow::Result<Sheaf> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match Self::try_start(binary, etcd, env).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("sheaf server did not start")))
    }

    async fn try_start(binary: &Path, etcd: Option<&str>, env: &[(String, String)]) -> anyhow::Result<Sheaf> {
        let dir = tempfile::Builder::new().prefix("sheaf-bench-").tempdir()?;
        let data = dir.path().join("data");
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(binary);
        cmd.arg("server").arg("--data-dir").arg(&data).arg("--listen").arg(format!("127.0.0.1:{port}"));
        if let Some(endpoints) = etcd {
            // Its own prefix, so that nothing else in that etcd is seen.
            cmd.args(["--store", "etcd", "--etcd-endpoints", endpoints, "--etcd-prefix", "/sheaf-bench"]);
        }
        let child = cmd
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut proc = Guard { child, what: "sheaf server" };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        // The server writes its CA and token before it listens.
        loop {
            if let Some(status) = proc.exited()? {
                bail!("sheaf server exited with {status} during startup:\n{}", tail(&log, 30));
            }
            if Instant::now() > deadline {
                bail!("sheaf server not ready within {STARTUP_TIMEOUT:?}:\n{}", tail(&log, 30));
            }
            if data.join("admin.kubeconfig").exists()
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
            .timeout(Duration::from_secs(2))
            .build()?;
        loop {
            if let Some(status) = proc.exited()? {
                bail!("sheaf server exited with {status} during startup:\n{}", tail(&log, 30));
            }
            if Instant::now() > deadline {
                bail!("sheaf server /readyz not ok within {STARTUP_TIMEOUT:?}:\n{}", tail(&log, 30));
            }
            if let Ok(r) = http.get(format!("{url}/readyz")).bearer_auth(&token).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = Command::new(binary)
            .args(["kubeconfig", "--data-dir"])
            .arg(&data)
            .args(["--server", &url])
            .output()
            .context("sheaf kubeconfig")?;
        if !out.status.success() {
            bail!("sheaf kubeconfig failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, &out.stdout)?;
        Ok(Sheaf { proc, url, token, ca_pem, kubeconfig, dir })
    }

    /// Fails if the server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.proc.exited()? {
            bail!("sheaf server exited with {status}:\n{}", tail(&self.dir.path().join("server.log"), 30));
        }
        Ok(())
    }

    /// The end of the server's log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("server.log"), 30)
    }

    /// The server's WARN and ERROR lines (at most 10), if any.
    pub fn log_errors(&self) -> Option<String> {
        let text = strip_ansi(&std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default());
        let bad: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        if bad.is_empty() {
            return None;
        }
        let mut out = bad.iter().take(10).copied().collect::<Vec<_>>().join("\n");
        if bad.len() > 10 {
            out.push_str(&format!("\n… and {} more", bad.len() - 10));
        }
        Some(out)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// Resident set size now and at its peak, in bytes (`VmRSS`, `VmHWM`).
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc/PID/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line =
            status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/PID/stat")?;
    // Fields after the command name, which is in parentheses and may
    // contain spaces: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').context("malformed /proc/PID/stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()? + f.get(12).context("no stime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// CPU time (user + system) of this process's children that have been
/// waited for (`cutime` + `cstime`), e.g. every kubectl run so far.
pub fn children_cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    let rest = &stat[stat.rfind(')').context("malformed /proc/self/stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(13).context("no cutime")?.parse::<u64>()? + f.get(14).context("no cstime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// CPU time the whole machine has spent busy so far (all CPUs, from
/// `/proc/stat`: everything but idle and iowait).
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy: u64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    Ok(Duration::from_secs_f64(busy as f64 / clock_ticks() as f64))
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// `sysconf(_SC_CLK_TCK)`, from `getconf` (100 on every Linux we know).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// fsync latency of the disk under `dir`: `n` 4 KiB writes, each followed
/// by an fsync, one every 10 ms (like a lightly loaded store). Returns
/// the sorted latencies.
pub fn fsync_latencies(dir: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = tempfile::tempfile_in(dir).context("temporary file for the fsync probe")?;
    let block = [0x5au8; 4096];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        f.seek(SeekFrom::Start((i % 64) as u64 * 4096))?;
        f.write_all(&block)?;
        let t0 = Instant::now();
        f.sync_all()?;
        out.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    out.sort();
    Ok(out)
}

/// Total size of the files under `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
