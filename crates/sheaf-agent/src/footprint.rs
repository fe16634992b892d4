//! Sheaf's own footprint on its node: the memory and CPU of the agent's
//! process (the server's, when `sheaf server` runs the agent embedded) and
//! of the helpers Sheaf started for the node (storage engines and replica
//! servers `sheaf blk ...`, dnsmasq, the managed etcd member), with the
//! guests' QEMU processes counted apart. Published on the Node as the
//! annotation [`ANNOTATION`] (JSON, [`Footprint`]); `sheaf status` prints it.
//!
//! Which processes are Sheaf's: the agent's own, its descendants (etcd,
//! engines, short-lived commands), and any process whose command line
//! names one of the agent's directories (its runtime directory, the state
//! directories of its networks, its image store, its disks): daemonized
//! QEMUs and dnsmasqs, and helpers adopted after an agent restart, are no
//! longer its children. Of those, `qemu-system-*` processes are guests.
//!
//! Memory is RSS and PSS from `/proc/PID/smaps_rollup` (PSS shares pages
//! mapped by several processes, such as the one `sheaf` binary, between
//! them). CPU is the `utime + stime` of `/proc/PID/stat` (all threads)
//! between two samples, in percent of one core; the CPU of commands that
//! ran and ended in between is not counted.
//!
//! Task model: no task of its own. The agent's heartbeat task calls
//! [`Publisher::heartbeat`] after each heartbeat; it samples `/proc` (a
//! blocking read of a few hundred small files, on a blocking thread) and
//! writes the annotation when [`PUBLISH_EVERY`] has passed since the last
//! write, or when the set of processes changed (a VM started, an engine
//! stopped), so that the figure follows the node without a write per
//! heartbeat:
//!
//! ```text
//!   heartbeat ──▶ sample /proc ──(due or processes changed)──▶ merge patch
//!                     │                                        annotation,
//!                     └──(neither)──▶ nothing written          new baseline
//! ```
//!
//! CPU is averaged from the last published sample (the baseline) to now,
//! so each published figure covers the time since the previous one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sheaf_client::{Api, Gvr};
use sheaf_types::coordination::MicroTime;
use sheaf_types::core::Node;

/// The Node annotation holding the footprint, as JSON.
pub const ANNOTATION: &str = "sheaf.io/footprint";
/// How often the footprint is written when nothing changed.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(30);
/// The unit of the times in `/proc/PID/stat` (the kernel's `USER_HZ`,
/// 100 on every architecture Sheaf runs on: x86-64 and arm64).
const TICKS_PER_SECOND: f64 = 100.0;

/// A size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn mib(self) -> f64 {
        self.0 as f64 / (1024.0 * 1024.0)
    }
}

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >= 10 << 30 {
            write!(f, "{:.1} GiB", self.0 as f64 / (1u64 << 30) as f64)
        } else {
            write!(f, "{:.1} MiB", self.mib())
        }
    }
}

impl std::ops::Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes(self.0 + o.0)
    }
}

/// What the footprint annotation holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Footprint {
    /// When the processes were sampled.
    pub measured_at: MicroTime,
    /// The time CPU is averaged over (since the previous footprint).
    pub interval_seconds: f64,
    /// What the agent runs in: `server` (`sheaf server` with its embedded
    /// agent) or `agent` (`sheaf agent`).
    pub role: String,
    /// Sheaf's processes together (guests excluded).
    pub sheaf: Usage,
    /// The guests' QEMU processes together.
    pub guests: Usage,
    /// Sheaf's processes one by one, the largest RSS first.
    #[serde(default)]
    pub processes: Vec<ProcessUsage>,
}

/// Memory and CPU of a group of processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub processes: u32,
    pub rss_bytes: Bytes,
    pub pss_bytes: Bytes,
    /// Percent of one core over the interval (200: two cores busy).
    pub cpu_percent: f64,
}

/// One of Sheaf's processes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessUsage {
    pub pid: u32,
    /// `server`, `agent`, `blk-engine`, `blk-replica`, ..., `etcd`,
    /// `dnsmasq`, or the command's name.
    pub kind: String,
    pub rss_bytes: Bytes,
    pub pss_bytes: Bytes,
    pub cpu_percent: f64,
}

impl Footprint {
    /// The footprint in a Node's annotations, if it has a readable one.
    pub fn of_node(node: &serde_json::Value) -> Option<Footprint> {
        let text = node.pointer("/metadata/annotations")?.get(ANNOTATION)?.as_str()?;
        serde_json::from_str(text).ok()
    }
}

/// A `/proc` file that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("/proc/PID/stat without a command name in parentheses")]
    NoComm,
    #[error("/proc/PID/stat field {field} missing or not a number")]
    Field { field: usize },
}

/// The fields of `/proc/PID/stat` the footprint uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The command name (field 2), without its parentheses.
    pub comm: String,
    /// Field 3: R, S, D, Z, ...
    pub state: char,
    pub ppid: u32,
    /// utime + stime (fields 14 and 15), in clock ticks.
    pub cpu_ticks: u64,
    /// Field 22: when the process started, in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name may hold spaces and
/// parentheses, so it ends at the *last* `)`.
pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let open = text.find('(').ok_or(ParseError::NoComm)?;
    let close = text.rfind(')').filter(|c| *c > open).ok_or(ParseError::NoComm)?;
    let comm = text[open + 1..close].to_string();
    // Fields from 3 on; field N is at index N - 3.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let num = |field: usize| -> Result<u64, ParseError> {
        rest.get(field - 3).and_then(|v| v.parse().ok()).ok_or(ParseError::Field { field })
    };
    let state = rest.first().and_then(|s| s.chars().next()).ok_or(ParseError::Field { field: 3 })?;
    Ok(Stat { comm, state, ppid: num(4)? as u32, cpu_ticks: num(14)? + num(15)?, start_ticks: num(22)? })
}

/// RSS and PSS of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: Bytes,
    pub pss: Bytes,
}

/// The value in kB of line `key` (`Rss:`) of a `/proc` file of such
/// lines, in bytes.
fn kb_line(text: &str, key: &str) -> Option<Bytes> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| Bytes(kb * 1024))
}

/// Parses `/proc/PID/smaps_rollup` (its `Rss:` and `Pss:` lines, in kB).
pub fn parse_smaps_rollup(text: &str) -> Option<Memory> {
    Some(Memory { rss: kb_line(text, "Rss:")?, pss: kb_line(text, "Pss:")? })
}

/// RSS from `/proc/PID/status` (`VmRSS:`), for kernels without
/// smaps_rollup; PSS is then taken to be the RSS.
pub fn parse_status_rss(text: &str) -> Option<Memory> {
    let rss = kb_line(text, "VmRSS:")?;
    Some(Memory { rss, pss: rss })
}

/// Percent of one core that `ticks` of CPU time over `seconds` are.
pub fn cpu_percent(ticks: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    ticks as f64 / TICKS_PER_SECOND / seconds * 100.0
}

/// Which processes are Sheaf's on this node.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The agent's process.
    pub me: u32,
    /// What the agent runs in (`server` or `agent`).
    pub role: String,
    /// Directories whose appearance in a command line makes a process
    /// Sheaf's.
    pub dirs: Vec<PathBuf>,
}

impl Scope {
    /// This process and the directories of `cfg`.
    pub fn of(cfg: &crate::AgentConfig) -> Scope {
        let mut dirs = vec![cfg.run_root.clone(), cfg.image_root.clone()];
        // The networks keep their state beside the runtime directory
        // ([`crate::network`], [`crate::vmnet`]).
        if let Some(parent) = cfg.run_root.parent() {
            dirs.push(parent.join("vmnet"));
            if let Some((bridge, _)) = &cfg.management {
                dirs.push(parent.join(format!("net-{bridge}")));
            }
        }
        dirs.extend(cfg.disks.iter().map(|d| d.path.clone()));
        // `sheaf server ...` or `sheaf agent ...`.
        let role = match std::env::args().nth(1).as_deref() {
            Some("server") => "server",
            _ => "agent",
        };
        Scope { me: std::process::id(), role: role.into(), dirs }
    }

    /// Whether command line `argv` names one of the scope's directories
    /// (the directory itself or a path under it, anywhere in an argument:
    /// `--conf-file=DIR/dnsmasq.conf`).
    pub fn names_dir(&self, argv: &[String]) -> bool {
        argv.iter().any(|arg| {
            self.dirs.iter().filter_map(|d| d.to_str()).filter(|d| !d.is_empty() && *d != "/").any(|d| {
                arg.match_indices(d).any(|(at, _)| {
                    let before = arg[..at].chars().next_back();
                    let after = arg[at + d.len()..].chars().next();
                    // A whole path, not a prefix of another name
                    // (/run/a is not in /run/ab).
                    matches!(before, None | Some('=' | ':' | ',' | ' '))
                        && matches!(after, None | Some('/' | ',' | ' ' | ':'))
                })
            })
        })
    }
}

/// A process's class in the footprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// One of Sheaf's, of this kind (see [`ProcessUsage::kind`]).
    Sheaf(String),
    Guest,
}

/// What kind of Sheaf process `argv` (with command name `comm`) is.
pub fn kind_of(comm: &str, argv: &[String], me: bool, role: &str) -> Class {
    let exe = argv.first().map(|a| Path::new(a).file_name().and_then(|f| f.to_str()).unwrap_or(a)).unwrap_or(comm);
    if exe.starts_with("qemu-system") || comm.starts_with("qemu-system") {
        return Class::Guest;
    }
    if me {
        return Class::Sheaf(role.to_string());
    }
    let kind = match argv.get(1).map(String::as_str) {
        Some("blk") if exe == "sheaf" || comm == "sheaf" => {
            format!("blk-{}", argv.get(2).map(String::as_str).unwrap_or("?"))
        }
        _ => exe.to_string(),
    };
    Class::Sheaf(kind)
}

/// One sampled process.
#[derive(Clone, Debug)]
struct Sampled {
    pid: u32,
    class: Class,
    memory: Memory,
    cpu_ticks: u64,
    start_ticks: u64,
}

/// One sample of the node's Sheaf and guest processes.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    time: MicroTime,
    /// Clock ticks since boot (to tell processes born after a baseline).
    uptime_ticks: u64,
    processes: Vec<Sampled>,
}

impl Sample {
    /// The processes as (pid, start), to notice a changed set.
    fn identities(&self) -> BTreeSet<(u32, u64)> {
        self.processes.iter().map(|p| (p.pid, p.start_ticks)).collect()
    }
}

fn argv_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

fn memory_of(pid: u32) -> Memory {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| parse_smaps_rollup(&t))
        .or_else(|| std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|t| parse_status_rss(&t)))
        .unwrap_or_default()
}

fn uptime_ticks() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()))
        .map(|s| (s * TICKS_PER_SECOND) as u64)
        .unwrap_or(0)
}

/// Reads `/proc` for the processes of `scope`. Blocking.
pub fn sample(scope: &Scope) -> Sample {
    let at = Instant::now();
    let time = MicroTime::now();
    let uptime = uptime_ticks();
    let mut stats: HashMap<u32, Stat> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(stat) = std::fs::read_to_string(entry.path().join("stat")).ok().and_then(|t| parse_stat(&t).ok()) {
            stats.insert(pid, stat);
        }
    }
    let descends = |mut pid: u32| {
        // Bounded: a ppid loop cannot happen, but a racy read could.
        for _ in 0..64 {
            if pid == scope.me {
                return true;
            }
            match stats.get(&pid) {
                Some(s) if s.ppid != 0 && s.ppid != pid => pid = s.ppid,
                _ => return false,
            }
        }
        false
    };
    let mut processes = Vec::new();
    for (&pid, stat) in &stats {
        // Zombies hold no memory; kernel threads have no command line.
        if matches!(stat.state, 'Z' | 'X') {
            continue;
        }
        let argv = argv_of(pid);
        if argv.is_empty() {
            continue;
        }
        if !(descends(pid) || scope.names_dir(&argv)) {
            continue;
        }
        let class = kind_of(&stat.comm, &argv, pid == scope.me, &scope.role);
        processes.push(Sampled {
            pid,
            class,
            memory: memory_of(pid),
            cpu_ticks: stat.cpu_ticks,
            start_ticks: stat.start_ticks,
        });
    }
    processes.sort_by_key(|p| p.pid);
    Sample { at, time, uptime_ticks: uptime, processes }
}

/// The footprint of `now` against `baseline` (the CPU each process used
/// between the two; a process born since counts from its start, one
/// that was already there but not sampled counts nothing).
pub fn footprint(role: &str, baseline: &Sample, now: &Sample) -> Footprint {
    let seconds = now.at.saturating_duration_since(baseline.at).as_secs_f64();
    let before: HashMap<(u32, u64), u64> =
        baseline.processes.iter().map(|p| ((p.pid, p.start_ticks), p.cpu_ticks)).collect();
    let mut sheaf = Usage::default();
    let mut guests = Usage::default();
    let mut list = Vec::new();
    for p in &now.processes {
        let ticks = match before.get(&(p.pid, p.start_ticks)) {
            Some(b) => p.cpu_ticks.saturating_sub(*b),
            None if p.start_ticks >= baseline.uptime_ticks => p.cpu_ticks,
            None => 0,
        };
        let cpu = cpu_percent(ticks, seconds);
        let group = match &p.class {
            Class::Guest => &mut guests,
            Class::Sheaf(kind) => {
                list.push(ProcessUsage {
                    pid: p.pid,
                    kind: kind.clone(),
                    rss_bytes: p.memory.rss,
                    pss_bytes: p.memory.pss,
                    cpu_percent: round2(cpu),
                });
                &mut sheaf
            }
        };
        group.processes += 1;
        group.rss_bytes = group.rss_bytes + p.memory.rss;
        group.pss_bytes = group.pss_bytes + p.memory.pss;
        group.cpu_percent += cpu;
    }
    sheaf.cpu_percent = round2(sheaf.cpu_percent);
    guests.cpu_percent = round2(guests.cpu_percent);
    list.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
    Footprint {
        measured_at: now.time,
        interval_seconds: (seconds * 1000.0).round() / 1000.0,
        role: role.to_string(),
        sheaf,
        guests,
        processes: list,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Samples at every heartbeat and writes the footprint when due.
pub struct Publisher {
    scope: Scope,
    /// The last sample written (or the first one taken).
    baseline: Option<Sample>,
    /// When the last footprint was written.
    published: Option<Instant>,
    warned: bool,
}

impl Publisher {
    pub fn new(scope: Scope) -> Publisher {
        Publisher { scope, baseline: None, published: None, warned: false }
    }

    /// Samples the processes; returns the footprint to write, if it is due,
    /// and makes the sample the next baseline then.
    fn next(&mut self, now: Sample) -> Option<Footprint> {
        let Some(baseline) = &self.baseline else {
            self.baseline = Some(now);
            return None;
        };
        let due = self.published.is_none_or(|t| now.at.saturating_duration_since(t) >= PUBLISH_EVERY);
        let changed = baseline.identities() != now.identities();
        if !(due || changed) {
            return None;
        }
        let f = footprint(&self.scope.role, baseline, &now);
        self.published = Some(now.at);
        self.baseline = Some(now);
        Some(f)
    }

    /// Called after each heartbeat: samples, and writes the footprint on
    /// Node `node` when due. A failed write is logged once and retried at
    /// the next heartbeat.
    pub async fn heartbeat(&mut self, api: &dyn Api, node: &str) {
        let scope = self.scope.clone();
        let now = match tokio::task::spawn_blocking(move || sample(&scope)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sample Sheaf's processes");
                return;
            }
        };
        let Some(f) = self.next(now) else { return };
        let text = match serde_json::to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the footprint");
                return;
            }
        };
        let patch = json!({"metadata": {"annotations": {ANNOTATION: text}}});
        match api.merge_patch(Gvr::of::<Node>(), None, node, patch, false).await {
            Ok(_) => self.warned = false,
            Err(e) => {
                // Written again at the next heartbeat (still due).
                self.published = None;
                if !self.warned {
                    tracing::warn!(error = %e, "cannot write the node's footprint");
                    self.warned = true;
                }
            }
        }
    }
}

/// The pids of `sample`'s Sheaf processes (for tests and benchmarks that
/// check what is counted).
pub fn sheaf_pids(sample: &Sample) -> HashSet<u32> {
    sample.processes.iter().filter(|p| matches!(p.class, Class::Sheaf(_))).map(|p| p.pid).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_command_name() {
        // Fields 3..=24 of a real stat line, behind a hostile comm.
        let tail = "S 1 1234 1234 0 -1 4194560 2561 0 0 0 150 37 4 2 20 0 9 0 5321 733437952 9340 \
                    18446744073709551615 1 1 0 0 0 0 0 4096 17415 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(&format!("4242 (a) b (c) d) {tail}\n")).expect("parses");
        assert_eq!(stat.comm, "a) b (c) d");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.cpu_ticks, 150 + 37, "utime + stime, not the children's");
        assert_eq!(stat.start_ticks, 5321);

        let plain = parse_stat(&format!("7 (tokio-runtime-w) {tail}")).expect("parses");
        assert_eq!(plain.comm, "tokio-runtime-w");
        assert_eq!(parse_stat("7 (x)").err(), Some(ParseError::Field { field: 3 }));
        assert_eq!(parse_stat("7 x) S 1").err(), Some(ParseError::NoComm));
        assert_eq!(parse_stat("7 (x) S 1 2 3").err(), Some(ParseError::Field { field: 14 }));
        assert_eq!(parse_stat(&format!("7 (x) S one {}", &tail[4..])).err(), Some(ParseError::Field { field: 4 }));
    }

    #[test]
    fn smaps_rollup_and_status() {
        let rollup = "55a0c0a00000-7ffd1e3f1000 ---p 00000000 00:00 0                          [rollup]\n\
                      Rss:               38912 kB\n\
                      Pss:               30977 kB\n\
                      Pss_Dirty:         21000 kB\n\
                      Pss_Anon:          20480 kB\n\
                      Shared_Clean:       9000 kB\n";
        let m = parse_smaps_rollup(rollup).expect("parses");
        assert_eq!(m.rss, Bytes(38912 * 1024));
        assert_eq!(m.pss, Bytes(30977 * 1024), "Pss, not Pss_Dirty or Pss_Anon");
        assert_eq!(parse_smaps_rollup("Rss: 1 kB\n"), None, "no Pss");
        let status = "Name:\tsheaf\nVmHWM:\t  50000 kB\nVmRSS:\t   40000 kB\nRssAnon:\t 30000 kB\n";
        assert_eq!(parse_status_rss(status), Some(Memory { rss: Bytes(40_960_000), pss: Bytes(40_960_000) }));
        assert_eq!(parse_status_rss("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(cpu_percent(100, 1.0), 100.0, "a second of CPU per second: one core");
        assert_eq!(cpu_percent(30, 30.0), 1.0);
        assert_eq!(cpu_percent(400, 2.0), 200.0, "two cores");
        assert_eq!(cpu_percent(5, 0.0), 0.0, "no interval");
    }

    fn proc(pid: u32, class: Class, rss_mib: u64, cpu_ticks: u64, start_ticks: u64) -> Sampled {
        let memory = Memory { rss: Bytes(rss_mib << 20), pss: Bytes(rss_mib << 19) };
        Sampled { pid, class, memory, cpu_ticks, start_ticks }
    }

    fn at(base: Instant, secs: u64, uptime_ticks: u64, processes: Vec<Sampled>) -> Sample {
        Sample { at: base + Duration::from_secs(secs), time: MicroTime::now(), uptime_ticks, processes }
    }

    #[test]
    fn cpu_over_the_interval_guests_apart() {
        let base = Instant::now();
        let server = || Class::Sheaf("server".into());
        let before = at(
            base,
            0,
            10_000,
            vec![
                proc(10, server(), 30, 5_000, 100),
                proc(20, Class::Guest, 200, 90_000, 9_000),
                proc(30, Class::Sheaf("blk-engine".into()), 8, 10, 9_500),
            ],
        );
        let now = at(
            base,
            10,
            11_000,
            vec![
                // 20 ticks in 10 s: 2 %.
                proc(10, server(), 31, 5_020, 100),
                // 500 ticks: 50 %.
                proc(20, Class::Guest, 201, 90_500, 9_000),
                // The engine's pid reused by a new process since: counted
                // from its start (5 ticks), not against the old one's.
                proc(30, Class::Sheaf("dnsmasq".into()), 2, 5, 10_500),
                // Born after the baseline: all of its ticks.
                proc(40, Class::Sheaf("blk-replica".into()), 6, 30, 10_200),
                // Already running at the baseline but not sampled then:
                // nothing is known of its interval.
                proc(50, Class::Sheaf("etcd".into()), 4, 700, 500),
            ],
        );
        let f = footprint("server", &before, &now);
        assert_eq!(f.interval_seconds, 10.0);
        assert_eq!(f.role, "server");
        assert_eq!(
            f.guests,
            Usage { processes: 1, rss_bytes: Bytes(201 << 20), pss_bytes: Bytes(201 << 19), cpu_percent: 50.0 }
        );
        assert_eq!(f.sheaf.processes, 4);
        assert_eq!(f.sheaf.rss_bytes, Bytes((31 + 2 + 6 + 4) << 20));
        assert_eq!(f.sheaf.cpu_percent, 2.0 + 0.5 + 3.0);
        let kinds: Vec<(&str, f64)> = f.processes.iter().map(|p| (p.kind.as_str(), p.cpu_percent)).collect();
        assert_eq!(kinds, [("server", 2.0), ("blk-replica", 3.0), ("etcd", 0.0), ("dnsmasq", 0.5)], "largest first");
        assert!(f.processes.iter().all(|p| p.pid != 20), "no guest in Sheaf's list");
    }

    #[test]
    fn written_when_due_or_when_the_processes_change() {
        let scope = Scope { me: 10, role: "agent".into(), dirs: vec![] };
        let mut p = Publisher::new(scope);
        let base = Instant::now();
        let one = || vec![proc(10, Class::Sheaf("agent".into()), 30, 0, 1)];
        assert!(p.next(at(base, 0, 0, one())).is_none(), "the first sample is only a baseline");
        let first = p.next(at(base, 5, 500, one())).expect("nothing published yet: due");
        assert_eq!(first.interval_seconds, 5.0);
        assert!(p.next(at(base, 10, 1000, one())).is_none(), "not due, nothing changed");
        let mut two = one();
        two.push(proc(20, Class::Guest, 200, 0, 900));
        let changed = p.next(at(base, 15, 1500, two.clone())).expect("a guest started");
        assert_eq!(changed.interval_seconds, 15.0 - 5.0, "since the last footprint written");
        assert_eq!(changed.guests.processes, 1);
        assert!(p.next(at(base, 20, 2000, two.clone())).is_none());
        let due = p.next(at(base, 45, 4500, two)).expect("30 s after the last one");
        assert_eq!(due.interval_seconds, 30.0);
    }

    #[test]
    fn a_command_line_names_a_directory_only_as_a_whole_path() {
        let scope =
            Scope { me: 1, role: "server".into(), dirs: vec![PathBuf::from("/tmp/t/run"), PathBuf::from("/srv/d")] };
        let has = |args: &[&str]| scope.names_dir(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(has(&["qemu-system-x86_64", "-chardev", "socket,id=qmp,path=/tmp/t/run/u1/qmp.sock,server=on"]));
        assert!(has(&["dnsmasq", "--conf-file=/tmp/t/run/net/dnsmasq.conf"]));
        assert!(has(&["sheaf", "blk", "replica", "--dir", "/srv/d"]));
        assert!(has(&["sheaf", "blk", "replica", "--dir", "/srv/d/r-1"]));
        assert!(!has(&["sheaf", "blk", "replica", "--dir", "/srv/data"]), "another directory");
        assert!(!has(&["cat", "/x/tmp/t/run/f"]), "not a prefix of it");
        assert!(!has(&["bash"]));
    }

    #[test]
    fn kinds_of_processes() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            kind_of("sheaf", &argv(&["/usr/bin/sheaf", "server"]), true, "server"),
            Class::Sheaf("server".into())
        );
        assert_eq!(
            kind_of("sheaf", &argv(&["/usr/bin/sheaf", "blk", "engine", "--volume", "u"]), false, "server"),
            Class::Sheaf("blk-engine".into())
        );
        assert_eq!(kind_of("etcd", &argv(&["etcd", "--name=a"]), false, "server"), Class::Sheaf("etcd".into()));
        assert_eq!(
            kind_of("qemu-system-x86", &argv(&["qemu-system-x86_64", "-name", "x"]), false, "server"),
            Class::Guest
        );
        assert_eq!(
            kind_of("dnsmasq", &argv(&["dnsmasq", "--conf-file=/x"]), false, "agent"),
            Class::Sheaf("dnsmasq".into())
        );
    }

    #[test]
    fn this_process_is_in_its_own_footprint() {
        let scope = Scope { me: std::process::id(), role: "agent".into(), dirs: vec![] };
        let s = sample(&scope);
        assert!(sheaf_pids(&s).contains(&std::process::id()));
        let me = s.processes.iter().find(|p| p.pid == scope.me).expect("sampled");
        assert_eq!(me.class, Class::Sheaf("agent".into()));
        assert!(me.memory.rss.0 > 1 << 20 && me.memory.pss.0 > 0 && me.memory.pss <= me.memory.rss, "{me:?}");
        // A child of this process is counted; it burns CPU meanwhile.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 5"])
            .spawn()
            .expect("sh starts");
        std::thread::sleep(Duration::from_millis(700));
        let later = sample(&scope);
        let _ = child.kill();
        let _ = child.wait();
        assert!(sheaf_pids(&later).contains(&child.id()), "a child is Sheaf's");
        let f = footprint("agent", &s, &later);
        let sh = f.processes.iter().find(|p| p.pid == child.id()).expect("the child is listed");
        // `sh`, or `sleep` once the loop is over (exec keeps the pid and
        // its CPU time).
        assert!(sh.kind == "sh" || sh.kind == "sleep", "{sh:?}");
        assert!(sh.cpu_percent > 5.0, "the child's busy loop shows: {sh:?}");
        assert!(f.interval_seconds > 0.6 && f.interval_seconds < 5.0, "{f:?}");
    }
}
