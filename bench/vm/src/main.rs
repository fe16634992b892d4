//! `sheaf-bench-vm`: how fast Sheaf starts a VM and how much memory it
//! spends per VM, side by side with bare QEMU in the same run. Run it with
//! `bench/vm.sh`.
//!
//! Timing runs alternate between three ways of booting the same tiny guest
//! (Debian cloud kernel + busybox initramfs, kernel boot, NoCloud seed whose
//! user data carries a marker):
//! - **sheaf**: POST a `kubevirt.io/v1` VirtualMachine (runStrategy Always)
//!   to a `sheaf server` of the benchmark's own; the clock starts at the
//!   POST;
//! - **bare**: `qemu-system-x86_64` spawned by the benchmark with a
//!   hand-written equivalent command line and a genisoimage seed; the clock
//!   starts at the spawn;
//! - **bare, Sheaf's argv**: the exact command line Sheaf used (runtime
//!   directory moved, Sheaf's seed copied), spawned the same way: what is
//!   left of the difference once the command lines are equal.
//!
//! A poller thread (every 2 ms) notes when the VMI's runtime directory, its
//! QEMU process and pidfile appear, when the QEMU that was spawned has
//! daemonized (the machine is initialised), and when the guest's lines
//! appear in the serial log; a watch notes the VMI's creation, scheduling
//! and phase Running. Then the memory phase: the server's RSS and PSS with
//! no VM and with K running VMs, and QEMU's own memory for Sheaf's and bare
//! VMs. Every process the benchmark starts is killed when it ends, also on
//! error or Ctrl-C.

mod probe;
mod qemu;
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::{json, Value};
use sheaf_bench_common::{parse_env, percentile};

use probe::{Poller, Target, Track};
use qemu::Guest;
use server::{Guard, Sheaf};

#[derive(Parser, Debug)]
#[command(name = "sheaf-bench-vm", about = "Sheaf's VM start time and per-VM memory against bare QEMU.")]
struct Args {
    /// The `sheaf` binary to benchmark (build it with --release).
    #[arg(long, default_value = "target/release/sheaf")]
    sheaf: PathBuf,
    /// The QEMU binary of the baselines (Sheaf uses its own default).
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// The tiny test guest (scripts/build-test-guests.sh tiny).
    #[arg(long, default_value = "target/test-guests/tiny")]
    guest: PathBuf,
    /// Work directory (server data, images, VM runtime directories); a
    /// new temporary directory when not given. Keep its path short: QEMU's
    /// unix sockets live in it.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Measured boots of each kind.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Boots of each kind before the measured ones (not counted).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Running VMs in the memory phase.
    #[arg(long, default_value_t = 4)]
    vms: usize,
    /// Guest memory of every VM, MiB.
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// The guest kernel's command line (the same for Sheaf and bare QEMU).
    /// `nokaslr` because under TCG a randomised kernel layout makes each
    /// boot's CPU work vary by about ±10 %, which hides a 5 % difference;
    /// the median boot time is the same with or without it.
    #[arg(long, default_value = "console=ttyS0 quiet nokaslr")]
    kernel_args: String,
    /// How often the poller looks at /proc and the serial log, ms.
    #[arg(long, default_value_t = 2.0)]
    poll_ms: f64,
    /// Give up on a boot after this long.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Wait this long before each memory reading (the agent polls each VM
    /// every 10 s; a reading after that includes its steady state).
    #[arg(long, default_value_t = 15)]
    settle_secs: u64,
    /// Skip the third column (bare QEMU with Sheaf's exact command line).
    #[arg(long)]
    no_sheaf_argv: bool,
    /// Before the runs, wait up to this many seconds for the machine to go
    /// quiet (under 10 % of one core busy for 2 s).
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// Extra environment for `sheaf server` (repeatable), e.g.
    /// `SHEAF_LOG=debug`.
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Extra arguments for `sheaf server` (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Copy the server log and the first VM's files into this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Sheaf,
    Bare,
    SheafArgv,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sheaf => "sheaf",
            Kind::Bare => "bare",
            Kind::SheafArgv => "bare, Sheaf's argv",
        }
    }
}

const MIB: f64 = 1024.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_u64(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// One boot's times in ms from the POST (Sheaf) or the spawn (bare).
type Sample = BTreeMap<&'static str, f64>;

fn sample(track: &Track, seen: Option<(&server::VmiSeen, Instant, Duration)>, cpu: CpuUse) -> Sample {
    let mut s = Sample::new();
    s.insert("qemu_cpu", ms(cpu.qemu));
    s.insert("other_cores", cpu.other_cores);
    s.insert("steal_cores", cpu.steal_cores);
    let mut put = |k: &'static str, v: Option<Duration>| {
        if let Some(v) = v {
            s.insert(k, ms(v));
        }
    };
    put("dir", track.dir);
    put("exec", track.exec);
    put("pidfile", track.pidfile);
    put("initialised", track.initialised);
    put("booted", track.booted);
    put("marker", track.marker);
    put("ready", track.ready);
    if let (Some(e), Some(b)) = (track.exec, track.booted) {
        put("exec_to_booted", Some(b.saturating_sub(e)));
    }
    if let (Some(e), Some(m)) = (track.exec, track.marker) {
        put("exec_to_marker", Some(m.saturating_sub(e)));
    }
    if let Some((seen, t0, post)) = seen {
        put("post", Some(post));
        let since = |i: Option<Instant>| i.map(|i| i.saturating_duration_since(t0));
        put("created", since(seen.created));
        put("scheduled", since(seen.scheduled));
        put("running", since(seen.running));
    }
    s
}

/// The VirtualMachine of the tiny guest: kernel boot from image
/// `sheaf/tiny`, a NoCloud seed whose user data carries `marker`, no NIC
/// (nothing on the network), 1 vCPU.
fn manifest(name: &str, marker: &str, memory_mib: u64, kernel_args: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default", "labels": {"bench.sheaf.io/batch": "vm"}},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "domain": {
                        "cpu": {"cores": 1},
                        "memory": {"guest": format!("{memory_mib}Mi")},
                        "firmware": {"kernelBoot": {
                            "kernelArgs": kernel_args,
                            "container": {
                                "image": "sheaf/tiny",
                                "kernelPath": "/vmlinuz",
                                "initrdPath": "/initramfs.cpio.gz"
                            }
                        }},
                        "devices": {
                            "autoattachPodInterface": false,
                            "disks": [{"name": "cloudinit", "disk": {"bus": "virtio"}}]
                        }
                    },
                    "volumes": [{"name": "cloudinit", "cloudInitNoCloud": {"userData": qemu::user_data(marker)}}]
                }
            }
        }
    })
}

/// CPU counters at the start of a boot.
struct Cpu0 {
    machine: (Duration, Duration),
    server: Duration,
    me: Duration,
    at: Instant,
}

/// The CPU a boot used: QEMU's own until the guest was ready, and what the
/// rest of the machine (not QEMU, the server or the benchmark) used
/// meanwhile, and what the hypervisor stole, in cores.
#[derive(Clone, Copy, Debug, Default)]
struct CpuUse {
    qemu: Duration,
    other_cores: f64,
    steal_cores: f64,
}

fn cpu0(server: u32) -> Cpu0 {
    Cpu0 {
        machine: probe::machine_cpu(),
        server: probe::cpu_time(&server.to_string()),
        me: probe::cpu_time("self"),
        at: Instant::now(),
    }
}

fn cpu_use(c: &Cpu0, server: u32, qemu_pid: Option<u32>) -> CpuUse {
    let qemu = qemu_pid.map(|p| probe::cpu_time(&p.to_string())).unwrap_or_default();
    let (busy, steal) = probe::machine_cpu();
    let wall = c.at.elapsed().as_secs_f64().max(1e-3);
    let ours = qemu
        + probe::cpu_time(&server.to_string()).saturating_sub(c.server)
        + probe::cpu_time("self").saturating_sub(c.me);
    let other = busy.saturating_sub(c.machine.0).as_secs_f64() - ours.as_secs_f64();
    CpuUse {
        qemu,
        other_cores: other.max(0.0) / wall,
        steal_cores: steal.saturating_sub(c.machine.1).as_secs_f64() / wall,
    }
}

fn say(what: &str) {
    eprintln!("[vm] {what}");
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| if v < 100.0 { format!("{v:.1}") } else { format!("{v:.0}") })
}

/// Waits until the rest of the machine is under 10 % of a core busy over
/// 2 s, or `max` passes; returns that load in % of a core.
async fn wait_quiet(max: Duration) -> f64 {
    let deadline = Instant::now() + max;
    let mut said = false;
    loop {
        let (b0, t0) = (probe::machine_busy(), Instant::now());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let busy = 100.0 * (probe::machine_busy() - b0).as_secs_f64() / t0.elapsed().as_secs_f64();
        if busy < 10.0 || Instant::now() >= deadline {
            if busy >= 10.0 {
                say(&format!("WARNING: other processes use {busy:.0} % of a core; results will be noisy"));
            }
            return busy;
        }
        if !said {
            say(&format!("other processes use {busy:.0} % of a core; waiting up to {max:?} for quiet"));
            said = true;
        }
    }
}

/// What the runs share.
struct Bench<'a> {
    args: &'a Args,
    sheaf: Sheaf,
    sheaf_bin: PathBuf,
    work: PathBuf,
    guest: Guest,
    poll: Duration,
    timeout: Duration,
    /// Sheaf's QEMU command line (without the program), its runtime
    /// directory, the copy of its files and the marker its seed carries.
    captured: Option<Captured>,
    warnings: Vec<String>,
}

struct Captured {
    argv: Vec<String>,
    run_dir: PathBuf,
    files: PathBuf,
    copied: Vec<String>,
    marker: String,
}

impl Bench<'_> {
    /// Deletes a VM and waits until its QEMU and runtime directory are
    /// gone (SIGKILL after 60 s).
    async fn delete_and_wait(&mut self, name: &str, track: &Track) -> anyhow::Result<()> {
        self.sheaf.delete_vm(name).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let qemu_gone = track.qemu_pid.is_none_or(|p| !probe::alive(p));
            let dir_gone = track.run_dir.as_ref().is_none_or(|d| !d.exists());
            if qemu_gone && dir_gone && !self.sheaf.vm_exists(name).await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                if let Some(p) = track.qemu_pid.filter(|&p| probe::alive(p)) {
                    probe::kill9(p);
                }
                self.warnings.push(format!(
                    "VM {name}: not gone 60 s after DELETE (QEMU gone: {qemu_gone}, runtime directory gone: {dir_gone})"
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn boot_sheaf(&mut self, i: usize) -> anyhow::Result<Sample> {
        let name = format!("boot-{i}");
        let marker = format!("sheaf-{i}-{}", std::process::id());
        let body = serde_json::to_vec(&manifest(&name, &marker, self.args.memory_mib, &self.args.kernel_args))?;
        self.sheaf.check_alive()?;
        let poller =
            Poller::new(Target::Sheaf { run_root: self.sheaf.run_dir.clone() }, &marker, self.poll, self.timeout);
        let c0 = cpu0(self.sheaf.pid());
        let t0 = Instant::now();
        let follow = tokio::task::spawn_blocking(move || poller.run(t0));
        let warnings = self.sheaf.create_vm(&body).await?;
        let post = t0.elapsed();
        for w in warnings {
            let w = format!("POST VirtualMachine: Warning: {w}");
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
        }
        let track = match follow.await? {
            Ok(t) => t,
            Err(e) => {
                let seen = self.sheaf.seen(&name);
                return Err(e.context(format!(
                    "Sheaf VM {name} (VMI failed: {:?})\nserver log:\n{}",
                    seen.failed,
                    server::tail(&self.sheaf.log, 30)
                )));
            }
        };
        let cpu = cpu_use(&c0, self.sheaf.pid(), track.qemu_pid);
        // The watch event may trail the serial line by a little.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sheaf.seen(&name).running.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seen = self.sheaf.seen(&name);
        if self.captured.is_none() {
            let pid = track.qemu_pid.context("no QEMU pid")?;
            let run_dir = track.run_dir.clone().context("no runtime directory")?;
            let argv = probe::cmdline(pid).context("QEMU's command line")?.into_iter().skip(1).collect();
            let files = self.work.join("sheaf-vm-files");
            let copied = qemu::copy_vm_files(&run_dir, &files)?;
            if let Some(keep) = &self.args.keep_logs {
                std::fs::create_dir_all(keep)?;
                let _ = qemu::copy_vm_files(&run_dir, &keep.join("sheaf-vm"));
                let _ = std::fs::copy(run_dir.join("vmi.json"), keep.join("sheaf-vm/vmi.json"));
            }
            self.captured = Some(Captured { argv, run_dir, files, copied, marker: marker.clone() });
        }
        self.delete_and_wait(&name, &track).await?;
        Ok(sample(&track, Some((&seen, t0, post)), cpu))
    }

    /// Spawns QEMU with `argv` in `dir` and follows it to the guest's
    /// ready line; kills it afterwards.
    async fn boot_bare(
        &mut self,
        dir: &Path,
        argv: &[String],
        marker: &str,
        daemonized: bool,
    ) -> anyhow::Result<(Track, CpuUse)> {
        let out = std::fs::File::create(dir.join("qemu.out"))?;
        let c0 = cpu0(self.sheaf.pid());
        let t0 = Instant::now();
        let child = Command::new(&self.args.qemu)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {}", self.args.qemu))?;
        let guard = Guard(child);
        let poller = Poller::new(
            Target::Bare { dir: dir.to_path_buf(), pid: guard.pid(), daemonized },
            marker,
            self.poll,
            self.timeout,
        );
        let result = tokio::task::spawn_blocking(move || poller.run(t0)).await?;
        let cpu = cpu_use(&c0, self.sheaf.pid(), result.as_ref().ok().and_then(|t| t.qemu_pid));
        // The daemon (when daemonized), then the process spawned.
        if daemonized {
            if let Ok(pid) = std::fs::read_to_string(dir.join("qemu.pid")).unwrap_or_default().trim().parse::<u32>() {
                probe::kill9(pid);
                while probe::alive(pid) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        drop(guard);
        let track = result.with_context(|| {
            format!(
                "bare QEMU in {}: {}",
                dir.display(),
                std::fs::read_to_string(dir.join("qemu.out")).unwrap_or_default()
            )
        })?;
        Ok((track, cpu))
    }

    async fn boot_hand(&mut self, i: usize) -> anyhow::Result<Sample> {
        let dir = self.work.join(format!("bare/{i}"));
        std::fs::create_dir_all(&dir)?;
        let marker = format!("bare-{i}-{}", std::process::id());
        let seed = qemu::make_seed(&dir, &marker, &format!("boot-{i}"))?;
        let argv = self.hand_argv(&dir, &seed)?;
        let (track, cpu) = self.boot_bare(&dir, &argv, &marker, false).await?;
        Ok(sample(&track, None, cpu))
    }

    fn hand_argv(&self, dir: &Path, seed: &Path) -> anyhow::Result<Vec<String>> {
        let c = self.captured.as_ref().context("Sheaf's command line is captured by the first Sheaf boot")?;
        let accel = qemu::option(&c.argv, "-accel").unwrap_or("tcg,thread=multi");
        let cpu = qemu::option(&c.argv, "-cpu").unwrap_or("max");
        Ok(qemu::hand_argv(&self.guest, dir, seed, accel, cpu))
    }

    async fn boot_sheaf_argv(&mut self, i: usize) -> anyhow::Result<Sample> {
        let dir = self.work.join(format!("bare-argv/{i}"));
        let c = self.captured.as_ref().context("Sheaf's command line is captured by the first Sheaf boot")?;
        let copied = qemu::copy_vm_files(&c.files, &dir)?;
        if copied != c.copied {
            bail!("copying Sheaf's VM files: {copied:?} != {:?}", c.copied);
        }
        let argv = qemu::rehome(&c.argv, &c.run_dir, &dir);
        let marker = c.marker.clone();
        let (track, cpu) = self.boot_bare(&dir, &argv, &marker, true).await?;
        Ok(sample(&track, None, cpu))
    }

    /// The server's memory: median of 3 readings 1 s apart.
    async fn server_memory(&self) -> anyhow::Result<probe::Mem> {
        let (mut rss, mut pss) = (Vec::new(), Vec::new());
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let m = probe::memory(self.sheaf.pid())?;
            rss.push(m.rss_kib);
            pss.push(m.pss_kib);
        }
        Ok(probe::Mem { rss_kib: median_u64(&mut rss), pss_kib: median_u64(&mut pss) })
    }

    /// Waits until every directory's serial.log says ready.
    async fn wait_ready_all(&self, dirs: &[PathBuf]) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let ready = dirs
                .iter()
                .filter(|d| std::fs::read_to_string(d.join("serial.log")).is_ok_and(|s| s.contains(probe::READY)))
                .count();
            if ready == dirs.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {ready} of {} VMs were ready within {:?}", dirs.len(), self.timeout);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn memory_phase(&mut self, r: &mut BTreeMap<&'static str, f64>) -> anyhow::Result<()> {
        let (k, settle) = (self.args.vms, Duration::from_secs(self.args.settle_secs));
        say(&format!("memory: {settle:?} idle, then the server's memory with no VM"));
        tokio::time::sleep(settle).await;
        let m0 = self.server_memory().await?;
        r.insert("rss0_mib", m0.rss_kib as f64 / MIB);
        r.insert("pss0_mib", m0.pss_kib as f64 / MIB);
        say(&format!("memory: starting {k} Sheaf VMs"));
        let names: Vec<String> = (0..k).map(|j| format!("mem-{j}")).collect();
        for (j, name) in names.iter().enumerate() {
            let body =
                serde_json::to_vec(&manifest(name, &format!("mem-{j}"), self.args.memory_mib, &self.args.kernel_args))?;
            self.sheaf.create_vm(&body).await?;
        }
        let deadline = Instant::now() + self.timeout;
        let uids = loop {
            let uids: Vec<Option<String>> = names.iter().map(|n| self.sheaf.seen(n).uid).collect();
            if uids.iter().all(Option::is_some) {
                break uids.into_iter().flatten().collect::<Vec<_>>();
            }
            if Instant::now() > deadline {
                bail!("not every memory-phase VM got a VMI");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let dirs: Vec<PathBuf> = uids.iter().map(|u| self.sheaf.run_dir.join(u)).collect();
        self.wait_ready_all(&dirs).await?;
        say(&format!("memory: all {k} ready; {settle:?} idle, then readings"));
        tokio::time::sleep(settle).await;
        self.sheaf.check_alive()?;
        let mk = self.server_memory().await?;
        r.insert("rssk_mib", mk.rss_kib as f64 / MIB);
        r.insert("pssk_mib", mk.pss_kib as f64 / MIB);
        r.insert("per_vm_rss_mib", (mk.rss_kib as f64 - m0.rss_kib as f64) / MIB / k as f64);
        r.insert("per_vm_pss_mib", (mk.pss_kib as f64 - m0.pss_kib as f64) / MIB / k as f64);
        let others = probe::other_sheaf_processes(self.sheaf.pid(), &self.sheaf_bin);
        let others_rss: u64 = others.iter().filter_map(|(p, _)| probe::memory(*p).ok()).map(|m| m.rss_kib).sum();
        r.insert("other_procs", others.len() as f64);
        r.insert("other_procs_rss_mib", others_rss as f64 / MIB);
        for (p, c) in &others {
            self.warnings.push(format!("other Sheaf process with {k} VMs: pid {p}: {c}"));
        }
        let mut qrss = Vec::new();
        let mut qpss = Vec::new();
        let mut pids = Vec::new();
        for d in &dirs {
            let pid: u32 = std::fs::read_to_string(d.join("qemu.pid"))?.trim().parse()?;
            let m = probe::memory(pid)?;
            qrss.push(m.rss_kib);
            qpss.push(m.pss_kib);
            pids.push(pid);
        }
        r.insert("qemu_rss_sheaf_mib", median_u64(&mut qrss) as f64 / MIB);
        r.insert("qemu_pss_sheaf_mib", median_u64(&mut qpss) as f64 / MIB);
        say(&format!(
            "memory: server RSS {:.1} → {:.1} MiB, {:+.2} MiB per VM",
            r["rss0_mib"], r["rssk_mib"], r["per_vm_rss_mib"]
        ));
        for (name, pid) in names.iter().zip(&pids) {
            let track = Track { qemu_pid: Some(*pid), ..Default::default() };
            self.delete_and_wait(name, &track).await?;
        }

        say(&format!("memory: starting {k} bare QEMUs"));
        let mut guards = Vec::new();
        let mut bare_dirs = Vec::new();
        for j in 0..k {
            let dir = self.work.join(format!("mem-bare/{j}"));
            std::fs::create_dir_all(&dir)?;
            let seed = qemu::make_seed(&dir, &format!("mem-{j}"), &format!("mem-{j}"))?;
            let argv = self.hand_argv(&dir, &seed)?;
            let out = std::fs::File::create(dir.join("qemu.out"))?;
            let child = Command::new(&self.args.qemu)
                .args(&argv)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("start {}", self.args.qemu))?;
            guards.push(Guard(child));
            bare_dirs.push(dir);
        }
        self.wait_ready_all(&bare_dirs).await?;
        tokio::time::sleep(settle).await;
        let (mut brss, mut bpss) = (Vec::new(), Vec::new());
        for g in &guards {
            let m = probe::memory(g.pid())?;
            brss.push(m.rss_kib);
            bpss.push(m.pss_kib);
        }
        r.insert("qemu_rss_bare_mib", median_u64(&mut brss) as f64 / MIB);
        r.insert("qemu_pss_bare_mib", median_u64(&mut bpss) as f64 / MIB);
        drop(guards);
        Ok(())
    }
}

/// One row of the timing table.
struct Row {
    key: &'static str,
    label: &'static str,
    /// The target, and whether a median/p90 meets it.
    target: &'static str,
    meets: Option<fn(f64) -> bool>,
    /// The row compares with bare (a ratio makes sense).
    ratio: bool,
    ratio_target: Option<f64>,
    /// Decimals (None: milliseconds, 1 decimal under 100).
    decimals: Option<usize>,
}

const fn row(key: &'static str, label: &'static str) -> Row {
    Row { key, label, target: "", meets: None, ratio: false, ratio_target: None, decimals: None }
}

fn rows() -> Vec<Row> {
    vec![
        row("post", "POST answered"),
        row("created", "VMI created (watch)"),
        row("scheduled", "VMI scheduled (watch)"),
        row("dir", "VMI runtime dir created"),
        Row { target: "< 300 ms", meets: Some(|v| v < 300.0), ..row("exec", "QEMU process exists") },
        row("pidfile", "QEMU pidfile written"),
        Row {
            target: "< 300 ms",
            meets: Some(|v| v < 300.0),
            ..row("initialised", "QEMU initialised (daemonized; QMP up)")
        },
        row("running", "VMI phase Running (watch)"),
        Row {
            ratio: true,
            ratio_target: Some(1.05),
            target: "<= 1.05x bare",
            ..row("booted", "guest: first line (booted)")
        },
        Row {
            ratio: true,
            ratio_target: Some(1.05),
            target: "<= 1.05x bare",
            ..row("marker", "guest: user-data marker")
        },
        Row { ratio: true, ..row("ready", "guest: ready") },
        Row { ratio: true, ..row("exec_to_booted", "QEMU start -> first line") },
        Row { ratio: true, ..row("qemu_cpu", "QEMU CPU time until ready") },
        Row { decimals: Some(2), ..row("other_cores", "other processes' CPU meanwhile (cores)") },
        Row { decimals: Some(2), ..row("steal_cores", "CPU stolen by the hypervisor (cores)") },
    ]
}

fn print_table(kinds: &[Kind], samples: &BTreeMap<Kind, Vec<Sample>>, r: &BTreeMap<&'static str, f64>, args: &Args) {
    let values = |k: Kind, key: &str| -> Vec<f64> {
        samples.get(&k).map(|v| v.iter().filter_map(|s| s.get(key).copied()).collect()).unwrap_or_default()
    };
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["ms from POST (sheaf) / spawn (bare)".to_string()];
    for k in kinds {
        header.push(format!("{} p50", k.name()));
        header.push(format!("{} p90", k.name()));
    }
    header.push("sheaf/bare".into());
    if kinds.contains(&Kind::SheafArgv) {
        header.push("sheaf/argv".into());
    }
    header.push("target".into());
    lines.push(header);
    for row in rows() {
        if kinds.iter().all(|k| values(*k, row.key).is_empty()) {
            continue;
        }
        let mut line = vec![row.label.to_string()];
        for &k in kinds {
            let v = values(k, row.key);
            for p in [50.0, 90.0] {
                let x = percentile(&v, p);
                let mut cell = match row.decimals {
                    None => fmt_ms(x),
                    Some(d) => x.map_or("-".into(), |x| format!("{x:.d$}")),
                };
                if let (Some(meets), Some(x), Kind::Sheaf) = (row.meets, x, k) {
                    cell.push_str(if meets(x) { " ok" } else { " MISS" });
                }
                line.push(cell);
            }
        }
        let p50 = |k: Kind| percentile(&values(k, row.key), 50.0);
        let ratio = |other: Kind| match (row.ratio, p50(Kind::Sheaf), p50(other)) {
            (true, Some(s), Some(b)) if b > 0.0 => {
                let q = s / b;
                let mut c = format!("{q:.3}x");
                if let Some(t) = row.ratio_target {
                    c.push_str(if q <= t { " ok" } else { " MISS" });
                }
                c
            }
            _ => String::new(),
        };
        line.push(ratio(Kind::Bare));
        if kinds.contains(&Kind::SheafArgv) {
            line.push(match (row.ratio, p50(Kind::Sheaf), p50(Kind::SheafArgv)) {
                (true, Some(s), Some(b)) if b > 0.0 => format!("{:.3}x", s / b),
                _ => String::new(),
            });
        }
        line.push(row.target.to_string());
        lines.push(line);
    }
    println!();
    println!(
        "Sheaf VM benchmark: {} measured boots of each kind (+{} warm-up), alternated; tiny guest, {} vCPU, {} MiB; \
         polled every {} ms",
        args.runs, args.warmup, 1, args.memory_mib, args.poll_ms
    );
    sheaf_bench_common::print_table(&lines);
    // Boots of the same round ran one after the other: their ratios are
    // less exposed to the machine's slow drifts than the ratio of medians.
    for other in [Kind::Bare, Kind::SheafArgv] {
        let (Some(a), Some(b)) = (samples.get(&Kind::Sheaf), samples.get(&other)) else { continue };
        let ratios: Vec<f64> = a.iter().zip(b).filter_map(|(x, y)| Some(x.get("marker")? / y.get("marker")?)).collect();
        let each: Vec<String> = ratios.iter().map(|q| format!("{q:.3}")).collect();
        println!(
            "user-data marker, sheaf / {} in the same round: {} (median {})",
            other.name(),
            each.join(" "),
            percentile(&ratios, 50.0).map_or("-".into(), |m| format!("{m:.3}x"))
        );
    }

    let f = |k: &str| r.get(k).map_or("-".to_string(), |v| format!("{v:.1}"));
    let per_vm = r.get("per_vm_rss_mib").copied();
    let mem: Vec<Vec<String>> = vec![
        vec!["memory (MiB)".into(), "RSS".into(), "PSS".into(), "target".into()],
        vec!["sheaf server, fresh (no VM yet)".into(), f("rss_fresh_mib"), f("pss_fresh_mib"), String::new()],
        vec!["sheaf server, 0 VMs (after the boots)".into(), f("rss0_mib"), f("pss0_mib"), String::new()],
        vec![format!("sheaf server, {} running VMs", args.vms), f("rssk_mib"), f("pssk_mib"), String::new()],
        vec![
            "sheaf per VM: (with K - with 0) / K".into(),
            format!(
                "{}{}",
                r.get("per_vm_rss_mib").map_or("-".into(), |v| format!("{v:.2}")),
                per_vm.map_or("", |v| if v < 10.0 { " ok" } else { " MISS" })
            ),
            r.get("per_vm_pss_mib").map_or("-".into(), |v| format!("{v:.2}")),
            "< 10 (KubeVirt ~276)".into(),
        ],
        vec![
            format!("other Sheaf processes with {} VMs ({} of them)", args.vms, f("other_procs")),
            f("other_procs_rss_mib"),
            String::new(),
            String::new(),
        ],
        vec!["QEMU per VM, Sheaf (median)".into(), f("qemu_rss_sheaf_mib"), f("qemu_pss_sheaf_mib"), String::new()],
        vec![
            "QEMU per VM, bare by hand (median)".into(),
            f("qemu_rss_bare_mib"),
            f("qemu_pss_bare_mib"),
            String::new(),
        ],
    ];
    println!();
    sheaf_bench_common::print_table(&mem);
}

fn install_guest(guest: &Path, work: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let images = work.join("images/sheaf_tiny");
    std::fs::create_dir_all(&images)?;
    let mut out = Vec::new();
    for f in ["vmlinuz", "initramfs.cpio.gz"] {
        let src = guest.join(f);
        if !src.is_file() {
            bail!("{} is missing: run scripts/build-test-guests.sh tiny", src.display());
        }
        std::fs::copy(&src, images.join(f)).with_context(|| format!("copy {}", src.display()))?;
        out.push(images.join(f));
    }
    Ok((out[0].clone(), out[1].clone()))
}

/// `--mgmt-network user` when this `sheaf server` has that option: the
/// VMs have no NIC, and the benchmark creates no bridge on the host.
fn network_args(sheaf: &Path) -> Vec<String> {
    let help = Command::new(sheaf).args(["server", "--help"]).output().map(|o| o.stdout).unwrap_or_default();
    if String::from_utf8_lossy(&help).contains("--mgmt-network") {
        vec!["--mgmt-network".into(), "user".into()]
    } else {
        Vec::new()
    }
}

async fn run(args: &Args, work: &Path) -> anyhow::Result<()> {
    let sheaf_bin = std::fs::canonicalize(&args.sheaf)
        .with_context(|| format!("{} not found: cargo build --release -p sheaf", args.sheaf.display()))?;
    let guest_dir = std::fs::canonicalize(&args.guest)
        .with_context(|| format!("{} not found: run scripts/build-test-guests.sh tiny", args.guest.display()))?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let started = Instant::now();
    let (kernel, initrd) = install_guest(&guest_dir, work)?;
    let guest = Guest { kernel, initrd, cmdline: args.kernel_args.clone(), memory_mib: args.memory_mib, cores: 1 };
    let mut server_args = network_args(&sheaf_bin);
    server_args.extend(args.server_args.iter().cloned());
    let quiet = wait_quiet(Duration::from_secs(args.quiet_wait)).await;
    say(&format!("starting sheaf server in {} ({})", work.display(), server_args.join(" ")));
    let sheaf = Sheaf::start(&sheaf_bin, work, &server_args, &args.server_env).await?;
    let fresh = probe::memory(sheaf.pid())?;
    let mut b = Bench {
        args,
        sheaf,
        sheaf_bin: sheaf_bin.clone(),
        work: work.to_path_buf(),
        guest,
        poll: Duration::from_secs_f64(args.poll_ms / 1e3),
        timeout: Duration::from_secs(args.timeout_secs),
        captured: None,
        warnings: Vec::new(),
    };
    let mut r: BTreeMap<&'static str, f64> = BTreeMap::new();
    r.insert("rss_fresh_mib", fresh.rss_kib as f64 / MIB);
    r.insert("pss_fresh_mib", fresh.pss_kib as f64 / MIB);
    r.insert("quiet_before_pct", quiet);

    let mut kinds = vec![Kind::Sheaf, Kind::Bare];
    if !args.no_sheaf_argv {
        kinds.push(Kind::SheafArgv);
    }
    let mut samples: BTreeMap<Kind, Vec<Sample>> = BTreeMap::new();
    let (me, busy0, timing0) = (std::process::id().to_string(), probe::machine_busy(), Instant::now());
    let (my_cpu0, server_cpu0) = (probe::cpu_time(&me), probe::cpu_time(&b.sheaf.pid().to_string()));
    for i in 0..args.warmup + args.runs {
        // Sheaf first on even rounds, last on odd ones.
        let mut order = kinds.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        let tag =
            if i < args.warmup { "warm-up".to_string() } else { format!("run {}/{}", i - args.warmup + 1, args.runs) };
        for k in order {
            let s = match k {
                Kind::Sheaf => b.boot_sheaf(i).await?,
                Kind::Bare => b.boot_hand(i).await?,
                Kind::SheafArgv => b.boot_sheaf_argv(i).await?,
            };
            let g = |key: &str| fmt_ms(s.get(key).copied());
            say(&format!(
                "{tag} {:<18} exec {:>5}  initialised {:>5}  running {:>5}  booted {:>5}  marker {:>5}  ready {:>5} ms; \
                 QEMU CPU {:>5} ms, others {:.2} cores",
                k.name(),
                g("exec"),
                g("initialised"),
                g("running"),
                g("booted"),
                g("marker"),
                g("ready"),
                g("qemu_cpu"),
                s.get("other_cores").copied().unwrap_or(f64::NAN)
            ));
            if i >= args.warmup {
                samples.entry(k).or_default().push(s);
            }
        }
    }
    let wall = timing0.elapsed().as_secs_f64();
    let mine = (probe::cpu_time(&me) - my_cpu0).as_secs_f64();
    let server_cpu = (probe::cpu_time(&b.sheaf.pid().to_string()) - server_cpu0).as_secs_f64();
    r.insert("bench_cpu_pct", 100.0 * mine / wall);
    r.insert("server_cpu_pct", 100.0 * server_cpu / wall);
    r.insert("machine_busy_pct", 100.0 * (probe::machine_busy() - busy0).as_secs_f64() / wall);

    b.memory_phase(&mut r).await?;
    if let Some(keep) = &args.keep_logs {
        std::fs::create_dir_all(keep)?;
        let _ = std::fs::copy(&b.sheaf.log, keep.join("server.log"));
    }

    print_table(&kinds, &samples, &r, args);
    let c = b.captured.as_ref().context("no Sheaf boot")?;
    let hand = b.hand_argv(Path::new("$DIR"), Path::new("$DIR/seed.iso"))?;
    let images = work.join("images").display().to_string();
    let replace = [(c.run_dir.display().to_string(), "$DIR"), (images, "$IMAGES")];
    let norm = |argv: &[String]| -> Vec<String> {
        argv.iter().map(|a| replace.iter().fold(a.clone(), |acc, (f, t)| acc.replace(f.as_str(), t))).collect()
    };
    println!();
    println!("Sheaf's QEMU:  {}", qemu::shell("qemu-system-x86_64", &norm(&c.argv)));
    println!("bare by hand:  {}", qemu::shell(&args.qemu, &norm(&hand)));
    let (only_sheaf, only_bare) = qemu::diff(&c.argv, &hand, &replace);
    println!("only in Sheaf's command line: {}", only_sheaf.join("  "));
    println!("only in the bare command line: {}", only_bare.join("  "));
    println!(
        "third column: Sheaf's own command line run by hand (runtime directory moved; files copied: {})",
        c.copied.join(", ")
    );
    println!(
        "during the boots: machine {:.0} % busy (of one core), sheaf server {:.1} %, this benchmark {:.1} % \
         (poller included); before: {:.0} %",
        r["machine_busy_pct"], r["server_cpu_pct"], r["bench_cpu_pct"], r["quiet_before_pct"]
    );
    for w in &b.warnings {
        println!("NOTE {w}");
    }
    println!("(total {:.0} s)", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let s: serde_json::Map<String, Value> = samples.iter().map(|(k, v)| (k.name().to_string(), json!(v))).collect();
        let doc = json!({
            "runs": args.runs, "warmup": args.warmup, "vms": args.vms, "memory_mib": args.memory_mib,
            "poll_ms": args.poll_ms, "samples": s, "results": r, "sheaf_argv": norm(&c.argv),
            "bare_argv": norm(&hand), "notes": b.warnings,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tmp, work) = match &args.work_dir {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            (None, std::fs::canonicalize(w)?)
        }
        None => {
            let t = tempfile::Builder::new().prefix("sheaf-bench-vm.").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // On a signal the benchmark's future is dropped, and with it the
        // server's guard.
        tokio::select! {
            r = run(&args, &work) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    // Every QEMU started under the work directory, Sheaf's included.
    let left = probe::kill_qemus(&work.display().to_string());
    if left > 0 && result.is_ok() {
        eprintln!("[vm] killed {left} QEMU process(es) left under {}", work.display());
    }
    drop(tmp);
    result
}
