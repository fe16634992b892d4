//! What the benchmark reads from the host: a poller that follows one VM
//! from its create (or spawn) to the guest's markers on the serial log,
//! and memory and CPU readings from `/proc`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The lines the tiny guest prints on its serial console.
pub const BOOTED: &str = "SHEAF-GUEST booted";
pub const READY: &str = "SHEAF-GUEST ready";

/// Times (since the clock started) at which the poller saw each point.
#[derive(Clone, Debug, Default)]
pub struct Track {
    /// The VMI's runtime directory appeared (Sheaf only).
    pub dir: Option<Duration>,
    /// A QEMU process for the VM existed (Sheaf: first seen in /proc;
    /// bare: spawned, i.e. zero).
    pub exec: Option<Duration>,
    /// QEMU's pidfile was written (daemonized QEMU only).
    pub pidfile: Option<Duration>,
    /// The QEMU process that was started ended after daemonizing: QEMU
    /// has initialised the machine and enters its main loop (daemonized
    /// QEMU only).
    pub initialised: Option<Duration>,
    pub booted: Option<Duration>,
    pub marker: Option<Duration>,
    pub ready: Option<Duration>,
    /// The runtime directory, once known.
    pub run_dir: Option<PathBuf>,
    /// The QEMU that runs the guest (the daemon, or the spawned process).
    pub qemu_pid: Option<u32>,
}

/// How the poller finds the VM.
pub enum Target {
    /// A Sheaf VMI: its runtime directory is the new one under `run_root`,
    /// its QEMU the new `qemu-system-*` whose command line names it.
    Sheaf { run_root: PathBuf },
    /// A QEMU the benchmark spawned itself, with `dir` as its runtime
    /// directory (serial.log in it).
    Bare { dir: PathBuf, pid: u32, daemonized: bool },
}

/// Follows one VM, polling every `poll`, until the guest is ready.
pub struct Poller {
    target: Target,
    marker_line: String,
    poll: Duration,
    timeout: Duration,
    old_dirs: HashSet<PathBuf>,
    old_pids: HashSet<u32>,
    /// New processes that are not QEMU (yet), with when they were first
    /// seen: a child of the agent is looked at until it has exec'd.
    young: HashMap<u32, Duration>,
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect())
        .unwrap_or_default()
}

fn subdirs(dir: &Path) -> HashSet<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// The process's state letter from /proc/PID/stat (None: gone).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

/// The process's arguments; None when it is gone or they cannot be read
/// yet (an empty cmdline, e.g. in the middle of an exec).
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (!args.is_empty()).then_some(args)
}

pub fn is_qemu(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("qemu-system"))
}

/// Every QEMU whose command line mentions `needle`.
pub fn qemus_mentioning(needle: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&p| is_qemu(p) && cmdline(p).is_some_and(|c| c.iter().any(|a| a.contains(needle))))
        .collect()
}

/// SIGKILLs a process (no libc here: through kill(1)).
pub fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Kills every QEMU whose command line mentions `needle` and waits (up to
/// 5 s) until they are gone; returns how many there were.
pub fn kill_qemus(needle: &str) -> usize {
    let found = qemus_mentioning(needle);
    for &p in &found {
        kill9(p);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while found.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    found.len()
}

impl Poller {
    /// Takes note of what exists already; call just before the clock starts.
    pub fn new(target: Target, marker: &str, poll: Duration, timeout: Duration) -> Poller {
        let (old_dirs, old_pids) = match &target {
            Target::Sheaf { run_root } => (subdirs(run_root), pids().into_iter().collect()),
            Target::Bare { .. } => (HashSet::new(), HashSet::new()),
        };
        Poller {
            target,
            marker_line: format!("SHEAF-GUEST marker={marker}"),
            poll,
            timeout,
            old_dirs,
            old_pids,
            young: HashMap::new(),
        }
    }

    /// Polls until the guest prints `ready` (or the timeout passes); times
    /// are from `t0`.
    pub fn run(mut self, t0: Instant) -> anyhow::Result<Track> {
        let mut t = Track::default();
        let mut first_pid: Option<u32> = None;
        let mut serial: Option<File> = None;
        let mut text = String::new();
        let mut buf = vec![0u8; 64 * 1024];
        match &self.target {
            Target::Sheaf { .. } => {}
            Target::Bare { dir, pid, .. } => {
                t.run_dir = Some(dir.clone());
                t.dir = Some(Duration::ZERO);
                t.exec = Some(Duration::ZERO);
                first_pid = Some(*pid);
                t.qemu_pid = Some(*pid);
            }
        }
        let deadline = t0 + self.timeout;
        loop {
            let now = t0.elapsed();
            if let Target::Sheaf { run_root } = &self.target {
                if t.run_dir.is_none() {
                    if let Some(d) = subdirs(run_root).into_iter().find(|d| !self.old_dirs.contains(d)) {
                        t.run_dir = Some(d);
                        t.dir = Some(now);
                    }
                }
                if first_pid.is_none() {
                    let root = run_root.display().to_string();
                    let mut new: Vec<u32> = pids().into_iter().filter(|p| !self.old_pids.contains(p)).collect();
                    new.sort_unstable();
                    for p in new {
                        let qemu = is_qemu(p);
                        let args = if qemu { cmdline(p) } else { None };
                        if args.as_ref().is_some_and(|c| c.iter().any(|a| a.contains(&root))) {
                            first_pid = Some(p);
                            t.exec = Some(now);
                            break;
                        }
                        // A QEMU that is not ours; or not exec'd yet (or its
                        // arguments not readable yet): looked at again for a
                        // while.
                        let first = *self.young.entry(p).or_insert(now);
                        if (qemu && args.is_some()) || now.saturating_sub(first) > Duration::from_millis(200) {
                            self.old_pids.insert(p);
                        }
                    }
                }
            }
            let daemonized = match &self.target {
                Target::Sheaf { .. } => true,
                Target::Bare { daemonized, .. } => *daemonized,
            };
            if let Some(dir) = &t.run_dir {
                if daemonized && t.pidfile.is_none() {
                    if let Ok(s) = std::fs::read_to_string(dir.join("qemu.pid")) {
                        if let Ok(pid) = s.trim().parse::<u32>() {
                            t.pidfile = Some(now);
                            t.qemu_pid = Some(pid);
                        }
                    }
                }
                if serial.is_none() {
                    serial = File::open(dir.join("serial.log")).ok();
                }
            }
            if daemonized && t.initialised.is_none() {
                if let Some(p) = first_pid {
                    if !alive(p) {
                        t.initialised = Some(now);
                    }
                }
            }
            if let Some(f) = serial.as_mut() {
                loop {
                    let n = f.read(&mut buf).context("read serial.log")?;
                    if n == 0 {
                        break;
                    }
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                if t.booted.is_none() && text.contains(BOOTED) {
                    t.booted = Some(now);
                }
                if t.marker.is_none() && text.contains(&self.marker_line) {
                    t.marker = Some(now);
                }
                if t.ready.is_none() && text.contains(READY) {
                    t.ready = Some(now);
                }
            }
            if t.ready.is_some() && t.marker.is_some() {
                return Ok(t);
            }
            if Instant::now() > deadline {
                let tail: String = text.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
                bail!("the guest was not ready within {:?} ({t:?}); serial console:\n{tail}", self.timeout);
            }
            if let Target::Bare { pid, daemonized: false, .. } = &self.target {
                if !alive(*pid) {
                    bail!("QEMU exited before the guest was ready; serial console:\n{text}");
                }
            }
            std::thread::sleep(self.poll);
        }
    }
}

fn status_field_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find(|l| l.starts_with(field))?[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resident and proportional set size in KiB (`VmRSS`, `Pss` from
/// smaps_rollup).
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Mem> {
    let rss_kib = status_field_kib(pid, "VmRSS:").with_context(|| format!("no VmRSS for pid {pid}"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let pss_kib = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l[4..].trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok(Mem { rss_kib, pss_kib })
}

/// Parent pid from /proc/PID/stat.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}

/// Processes that belong to Sheaf besides the server: anything running the
/// `sheaf` binary, and every descendant of the server, except QEMU (the
/// guest) — e.g. storage engines or dnsmasq. Returns (pid, command).
pub fn other_sheaf_processes(server: u32, sheaf_bin: &Path) -> Vec<(u32, String)> {
    let exe = std::fs::canonicalize(sheaf_bin).unwrap_or_else(|_| sheaf_bin.to_path_buf());
    let all = pids();
    let descends = |mut p: u32| {
        for _ in 0..64 {
            match ppid(p) {
                Some(pp) if pp == server => return true,
                Some(pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    };
    all.into_iter()
        .filter(|&p| p != server && p != std::process::id() && !is_qemu(p) && alive(p))
        .filter(|&p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe) || descends(p))
        .map(|p| (p, cmdline(p).unwrap_or_default().join(" ")))
        .collect()
}

/// CPU time (user + system) of a process so far, in clock ticks' seconds.
pub fn cpu_time(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    let Some(close) = stat.rfind(')') else { return Duration::ZERO };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // CLK_TCK is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// CPU time the whole machine has spent so far (all CPUs, from /proc/stat):
/// busy (user, nice, system, irq, softirq) and stolen by the hypervisor.
pub fn machine_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (Duration::from_millis(busy * 10), Duration::from_millis(at(7) * 10))
}

/// Busy plus stolen CPU time of the whole machine so far.
pub fn machine_busy() -> Duration {
    let (busy, steal) = machine_cpu();
    busy + steal
}
