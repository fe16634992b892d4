//! `sheaf-bench-api`: the API server benchmark, on the embedded SQLite
//! store and on etcd, side by side. Run it with `bench/api.sh`.
//!
//! For each store, on a fresh server: create throughput and latency of
//! VirtualMachines, watch delivery latency of merge-patch updates (send
//! time embedded in the object), list times (raw API and real `kubectl`),
//! and the server's idle memory and CPU after the load. Every process it
//! starts is killed when the benchmark ends, also on error or Ctrl-C.

mod load;
mod procs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use sheaf_bench_common::{parse_env, percentile};

use load::{Pace, UpdatePlan};
use procs::{Etcd, Sheaf};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Store {
    Sqlite,
    Etcd,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Etcd => "etcd",
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "sheaf-bench-api", about = "Benchmark of Sheaf's API server on SQLite and on etcd.")]
struct Args {
    /// The `sheaf` binary to benchmark (build it with --release).
    #[arg(long, default_value = "target/release/sheaf")]
    sheaf: PathBuf,
    /// The etcd binary, started on free loopback ports for the etcd run.
    #[arg(long, env = "SHEAF_BENCH_ETCD", default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// The kubectl binary.
    #[arg(long, default_value = "kubectl")]
    kubectl: PathBuf,
    /// Stores to benchmark, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite,etcd")]
    stores: Vec<Store>,
    /// VirtualMachines to create.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Requests in flight during creates and saturated updates.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Updates in the saturated watch test (`--concurrency` writers).
    #[arg(long, default_value_t = 2_000)]
    updates: usize,
    /// Updates in the paced watch test.
    #[arg(long, default_value_t = 500)]
    paced_updates: usize,
    /// Updates per second in the paced watch test (open loop).
    #[arg(long, default_value_t = 100)]
    paced_rate: u32,
    /// Runs of each kubectl command (the median is reported).
    #[arg(long, default_value_t = 3)]
    kubectl_runs: usize,
    /// Idle time after the load before reading the server's memory.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Window over which idle CPU use is measured.
    #[arg(long, default_value_t = 10)]
    cpu_secs: u64,
    /// Extra environment for `sheaf server`, e.g. `MALLOC_ARENA_MAX=2`
    /// (repeatable), to try allocator settings without a rebuild.
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Before each store's run, wait up to this many seconds for the rest
    /// of the machine to go quiet (under 10 % of one core busy for 2 s).
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// Copy each run's server (and etcd) log into this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

type Results = BTreeMap<&'static str, f64>;

const MB: f64 = 1024.0 * 1024.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(values: &[Duration]) -> Duration {
    percentile(values, 50.0).unwrap_or_default()
}

fn say(store: Store, what: &str) {
    eprintln!("[{:>6}] {what}", store.name());
}

/// Runs kubectl against the server; returns its wall time and stdout.
async fn kubectl(args: &Args, sheaf: &Sheaf, cmd: &[&str]) -> anyhow::Result<(Duration, Vec<u8>)> {
    let t0 = Instant::now();
    let out = tokio::process::Command::new(&args.kubectl)
        .arg("--kubeconfig")
        .arg(&sheaf.kubeconfig)
        .args(cmd)
        // Its discovery cache goes with the server's directory.
        .env("HOME", sheaf.dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", args.kubectl.display()))?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!("kubectl {} failed: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok((took, out.stdout))
}

/// CPU time of the process with this pid (`self` for the benchmark).
fn cpu(pid: &str) -> Duration {
    procs::cpu_time(pid).unwrap_or_default()
}

/// CPU time of the kubectl runs that have ended.
fn children_cpu() -> Duration {
    procs::children_cpu_time().unwrap_or_default()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Waits until the machine (everything, as nothing of ours runs yet) is
/// under 10 % of a core busy over 2 s, or `max` passes. Returns that load.
async fn wait_quiet(store: Store, max: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + max;
    let mut said = false;
    loop {
        let (b0, t0) = (procs::machine_busy()?, Instant::now());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let busy = 100.0 * (procs::machine_busy()? - b0).as_secs_f64() / t0.elapsed().as_secs_f64();
        if busy < 10.0 || Instant::now() >= deadline {
            if busy >= 10.0 {
                say(store, &format!("WARNING: other processes use {busy:.0} % of a core; results will be noisy"));
            }
            return Ok(busy);
        }
        if !said {
            say(store, &format!("other processes use {busy:.0} % of a core; waiting up to {max:?} for quiet"));
            said = true;
        }
    }
}

/// What the phases of one store's run share.
struct Ctx<'a> {
    args: &'a Args,
    store: Store,
    sheaf: Sheaf,
    etcd: Option<Etcd>,
    pid: String,
    etcd_pid: Option<String>,
    clients: Vec<reqwest::Client>,
    watch_client: reqwest::Client,
}

impl Ctx<'_> {
    fn base(&self) -> &str {
        &self.sheaf.url
    }
    fn token(&self) -> &str {
        &self.sheaf.token
    }
    fn say(&self, what: &str) {
        say(self.store, what);
    }
}

/// One store's run: a fresh etcd (for `etcd`) and server, then the
/// phases. A failed phase after the creates is recorded in `notes` and
/// the run goes on; the server's log ends the message of a fatal error.
async fn bench(args: &Args, store: Store, notes: &mut Vec<String>) -> anyhow::Result<Results> {
    let mut r = Results::new();
    if args.quiet_wait > 0 {
        r.insert("busy_before_pct", wait_quiet(store, Duration::from_secs(args.quiet_wait)).await?);
    }
    let etcd = match store {
        Store::Sqlite => None,
        Store::Etcd => {
            let e = Etcd::start(&args.etcd).await.context("start etcd")?;
            say(store, &format!("etcd {} (pid {})", e.url, e.proc.pid()));
            Some(e)
        }
    };
    let sheaf = Sheaf::start(&args.sheaf, etcd.as_ref().map(|e| e.url.as_str()), &args.server_env).await?;
    let pid = sheaf.proc.pid().to_string();
    say(store, &format!("sheaf server {} (pid {pid}); load average {:.2}", sheaf.url, procs::load_average()));
    r.insert("load_avg_start", procs::load_average());
    let clients = load::clients(&sheaf.ca_pem, args.connections)?;
    let watch_client = load::clients(&sheaf.ca_pem, 1)?.remove(0);
    let etcd_pid = etcd.as_ref().map(|e| e.proc.pid().to_string());
    // Dropped at the end of this function: `sheaf` first, then `etcd`.
    let mut cx = Ctx { args, store, sheaf, etcd, pid, etcd_pid, clients, watch_client };

    // Footprint when empty, once start-up work has settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.insert("rss_empty_mb", procs::memory(cx.sheaf.proc.pid())?.0 as f64 / MB);
    for c in cx.clients.iter().chain([&cx.watch_client]) {
        // TLS and HTTP/2 handshakes before the clock starts.
        c.get(format!("{}/version", cx.base())).bearer_auth(cx.token()).send().await?.error_for_status()?;
    }
    let result = phases(&mut cx, &mut r, notes).await;
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::copy(cx.sheaf.dir.path().join("server.log"), dir.join(format!("{}-server.log", store.name())));
        if let Some(e) = &cx.etcd {
            let _ = std::fs::copy(e.dir.path().join("etcd.log"), dir.join("etcd.log"));
        }
    }
    result.map(|()| r)
}

/// The phases of one store's run, in order.
async fn phases(cx: &mut Ctx<'_>, r: &mut Results, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let store = cx.store;
    let fatal =
        |e: anyhow::Error, cx: &Ctx<'_>| anyhow::anyhow!("{e:#}\nserver log ends with:\n{}", cx.sheaf.log_tail());
    if let Err(e) = creates(cx, r).await {
        return Err(fatal(e, cx));
    }
    if let Err(e) = watches(cx, r).await {
        notes.push(format!("{}: watch test failed: {e:#}", store.name()));
    }
    if let Err(e) = lists(cx, r).await {
        notes.push(format!("{}: list test failed: {e:#}", store.name()));
    }
    if let Err(e) = idle(cx, r).await {
        return Err(fatal(e, cx));
    }
    if let Some(errors) = cx.sheaf.log_errors() {
        notes.push(format!("{}: the server logged errors or warnings:\n{errors}", store.name()));
    }
    Ok(())
}

/// Creates: throughput, latency and CPU per create.
async fn creates(cx: &mut Ctx<'_>, r: &mut Results) -> anyhow::Result<()> {
    let args = cx.args;
    cx.say(&format!("creating {} VirtualMachines, {} in flight", args.objects, args.concurrency));
    let (pid, etcd_pid) = (cx.pid.as_str(), cx.etcd_pid.as_deref());
    let (s0, e0, b0, m0) = (cpu(pid), etcd_pid.map(cpu), cpu("self"), procs::machine_busy()?);
    let created = load::create(&cx.clients, cx.base(), cx.token(), args.objects, args.concurrency).await?;
    let (s1, e1, b1, m1) = (cpu(pid), etcd_pid.map(cpu), cpu("self"), procs::machine_busy()?);
    cx.sheaf.check_alive()?;
    // How busy the machine was, and how much of that was not the server,
    // etcd or this client (other processes, interrupts): noise.
    let wall = created.wall.as_secs_f64();
    let ours = (s1 - s0) + (b1 - b0) + e1.zip(e0).map_or(Duration::ZERO, |(a, b)| a - b);
    r.insert("create_machine_busy_pct", 100.0 * (m1 - m0).as_secs_f64() / wall / cpus() as f64);
    r.insert("create_other_cores", ((m1 - m0).as_secs_f64() - ours.as_secs_f64()).max(0.0) / wall);
    let n = created.latencies.len() as f64;
    r.insert("create_per_s", n / wall);
    r.insert("create_wall_s", wall);
    r.insert("create_p50_ms", percentile(&created.latencies, 50.0).map_or(f64::NAN, ms));
    r.insert("create_p99_ms", percentile(&created.latencies, 99.0).map_or(f64::NAN, ms));
    r.insert("create_sheaf_cpu_ms", ms(s1 - s0) / n);
    if let (Some(e0), Some(e1)) = (e0, e1) {
        r.insert("create_etcd_cpu_ms", ms(e1 - e0) / n);
    }
    r.insert("create_bench_cpu_ms", ms(b1 - b0) / n);
    r.insert("create_warnings", created.warnings as f64);
    cx.say(&format!(
        "{:.0} creates/s, p50 {:.1} ms, p99 {:.1} ms",
        r["create_per_s"], r["create_p50_ms"], r["create_p99_ms"]
    ));
    Ok(())
}

/// Watch delivery: saturated (closed loop), then paced (open loop).
async fn watches(cx: &mut Ctx<'_>, r: &mut Results) -> anyhow::Result<()> {
    let args = cx.args;
    cx.say(&format!("{} merge patches by {} writers, watched", args.updates, args.concurrency));
    let plan =
        UpdatePlan { objects: args.objects, updates: args.updates, first: 0, pace: Pace::Writers(args.concurrency) };
    let (s0, e0) = (cpu(&cx.pid), cx.etcd_pid.as_deref().map(cpu));
    let w = load::watch_updates(&cx.clients, &cx.watch_client, cx.base(), cx.token(), plan).await?;
    let (s1, e1) = (cpu(&cx.pid), cx.etcd_pid.as_deref().map(cpu));
    cx.sheaf.check_alive()?;
    if w.missing > 0 {
        bail!("{} of {} updates never came through the watch", w.missing, args.updates);
    }
    r.insert("update_sheaf_cpu_ms", ms(s1 - s0) / args.updates as f64);
    if let (Some(e0), Some(e1)) = (e0, e1) {
        r.insert("update_etcd_cpu_ms", ms(e1 - e0) / args.updates as f64);
    }
    r.insert("update_per_s", w.updates.latencies.len() as f64 / w.updates.wall.as_secs_f64());
    r.insert("update_p99_ms", percentile(&w.updates.latencies, 99.0).map_or(f64::NAN, ms));
    r.insert("watch_p50_ms", percentile(&w.send_to_event, 50.0).map_or(f64::NAN, ms));
    r.insert("watch_p99_ms", percentile(&w.send_to_event, 99.0).map_or(f64::NAN, ms));
    r.insert("watch_ack_p50_ms", percentile(&w.ack_to_event_ns, 50.0).map_or(f64::NAN, |n| n as f64 / 1e6));
    r.insert("watch_ack_p99_ms", percentile(&w.ack_to_event_ns, 99.0).map_or(f64::NAN, |n| n as f64 / 1e6));
    cx.say(&format!("watch send→event p50 {:.1} ms, p99 {:.1} ms", r["watch_p50_ms"], r["watch_p99_ms"]));

    cx.say(&format!("{} merge patches at {}/s, watched", args.paced_updates, args.paced_rate));
    let plan = UpdatePlan {
        objects: args.objects,
        updates: args.paced_updates,
        first: args.updates,
        pace: Pace::Rate(args.paced_rate),
    };
    let w = load::watch_updates(&cx.clients, &cx.watch_client, cx.base(), cx.token(), plan).await?;
    cx.sheaf.check_alive()?;
    if w.missing > 0 {
        bail!("{} of {} paced updates never came through the watch", w.missing, args.paced_updates);
    }
    r.insert("paced_update_p50_ms", percentile(&w.updates.latencies, 50.0).map_or(f64::NAN, ms));
    r.insert("paced_watch_p50_ms", percentile(&w.send_to_event, 50.0).map_or(f64::NAN, ms));
    r.insert("paced_watch_p99_ms", percentile(&w.send_to_event, 99.0).map_or(f64::NAN, ms));
    r.insert("paced_watch_ack_p99_ms", percentile(&w.ack_to_event_ns, 99.0).map_or(f64::NAN, |n| n as f64 / 1e6));
    cx.say(&format!(
        "paced watch send→event p50 {:.1} ms, p99 {:.1} ms",
        r["paced_watch_p50_ms"], r["paced_watch_p99_ms"]
    ));
    Ok(())
}

/// Lists: one unpaginated LIST through the API, then real kubectl, which
/// pages by 500.
async fn lists(cx: &mut Ctx<'_>, r: &mut Results) -> anyhow::Result<()> {
    let (args, pid) = (cx.args, cx.pid.clone());
    cx.say("listing");
    let runs = args.kubectl_runs.max(1);
    let api = async {
        let (mut raw, mut raw_cpu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let c0 = cpu(&pid);
            let (took, items) = load::list_all(&cx.clients[0], cx.base(), cx.token()).await?;
            raw_cpu.push(cpu(&pid) - c0);
            if items != args.objects {
                bail!("the list has {items} VirtualMachines, expected {}", args.objects);
            }
            raw.push(took);
        }
        anyhow::Ok((raw, raw_cpu))
    };
    // A failed API list is noted, and kubectl still measured.
    let api_error = match api.await {
        Ok((raw, raw_cpu)) => {
            r.insert("list_api_ms", ms(median(&raw)));
            r.insert("list_api_server_cpu_ms", ms(median(&raw_cpu)));
            None
        }
        Err(e) => Some(e),
    };
    // Discovery once, cached in $HOME/.kube/cache as for any user.
    kubectl(args, &cx.sheaf, &["get", "namespaces"]).await?;
    let (mut table, mut table_cpu, mut table_client) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (c0, k0) = (cpu(&pid), children_cpu());
        let (took, out) = kubectl(args, &cx.sheaf, &["get", "vm", "-A"]).await?;
        table_cpu.push(cpu(&pid) - c0);
        table_client.push(children_cpu() - k0);
        let rows = out.iter().filter(|&&b| b == b'\n').count().saturating_sub(1);
        if rows != args.objects {
            bail!("kubectl get vm -A printed {rows} rows, expected {}", args.objects);
        }
        table.push(took);
    }
    r.insert("kubectl_table_s", median(&table).as_secs_f64());
    r.insert("kubectl_table_server_cpu_s", median(&table_cpu).as_secs_f64());
    r.insert("kubectl_table_client_cpu_s", median(&table_client).as_secs_f64());
    let (mut as_json, mut json_cpu, mut json_client) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let (c0, k0) = (cpu(&pid), children_cpu());
        let (took, out) = kubectl(args, &cx.sheaf, &["get", "vm", "-A", "-o", "json"]).await?;
        json_cpu.push(cpu(&pid) - c0);
        json_client.push(children_cpu() - k0);
        if i == 0 {
            let v: Value = serde_json::from_slice(&out).context("kubectl -o json output")?;
            let items = v["items"].as_array().map_or(0, Vec::len);
            if items != args.objects {
                bail!("kubectl get vm -A -o json listed {items} items, expected {}", args.objects);
            }
            r.insert("kubectl_json_mb", out.len() as f64 / MB);
        }
        as_json.push(took);
    }
    r.insert("kubectl_json_s", median(&as_json).as_secs_f64());
    r.insert("kubectl_json_server_cpu_s", median(&json_cpu).as_secs_f64());
    r.insert("kubectl_json_client_cpu_s", median(&json_client).as_secs_f64());
    cx.say(&format!("kubectl get vm -A {:.2} s, -o json {:.2} s", r["kubectl_table_s"], r["kubectl_json_s"]));
    match api_error {
        Some(e) => Err(e.context("unpaginated LIST through the API")),
        None => Ok(()),
    }
}

/// Idle footprint after the load.
async fn idle(cx: &mut Ctx<'_>, r: &mut Results) -> anyhow::Result<()> {
    let (args, pid, etcd_pid) = (cx.args, cx.pid.clone(), cx.etcd_pid.clone());
    r.insert("rss_peak_mb", procs::memory(cx.sheaf.proc.pid())?.1 as f64 / MB);
    cx.say(&format!("idle {} s, then CPU over {} s", args.idle_secs, args.cpu_secs));
    let (i0, idle_started) = (cpu(&pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    cx.sheaf.check_alive()?;
    r.insert("idle_window_cpu_pct", 100.0 * (cpu(&pid) - i0).as_secs_f64() / idle_started.elapsed().as_secs_f64());
    r.insert("rss_idle_mb", procs::memory(cx.sheaf.proc.pid())?.0 as f64 / MB);
    let (s0, e0, t0) = (cpu(&pid), etcd_pid.as_deref().map(cpu), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.cpu_secs)).await;
    let (s1, e1, wall) = (cpu(&pid), etcd_pid.as_deref().map(cpu), t0.elapsed());
    r.insert("idle_cpu_pct", 100.0 * (s1 - s0).as_secs_f64() / wall.as_secs_f64());
    if let (Some(e), Some(e0), Some(e1)) = (&cx.etcd, e0, e1) {
        r.insert("etcd_idle_cpu_pct", 100.0 * (e1 - e0).as_secs_f64() / wall.as_secs_f64());
        r.insert("etcd_rss_idle_mb", procs::memory(e.proc.pid())?.0 as f64 / MB);
        r.insert("disk_mb", procs::disk_usage(&e.dir.path().join("data")) as f64 / MB);
    } else {
        r.insert("disk_mb", procs::disk_usage(&cx.sheaf.data_dir()) as f64 / MB);
    }
    cx.say(&format!("idle RSS {:.1} MB, idle CPU {:.2} %", r["rss_idle_mb"], r["idle_cpu_pct"]));
    Ok(())
}

/// One row of the table: key, label, decimals, whether etcd/sqlite makes
/// sense, the target and its test.
struct Row {
    key: &'static str,
    label: &'static str,
    decimals: usize,
    ratio: bool,
    target: &'static str,
    meets: Option<fn(f64) -> bool>,
    /// The store the target is for (`None`: both).
    target_for: Option<Store>,
}

const fn row(key: &'static str, label: &'static str, decimals: usize, ratio: bool) -> Row {
    Row { key, label, decimals, ratio, target: "", meets: None, target_for: None }
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            target: ">= 2000 (sqlite)",
            meets: Some(|v| v >= 2000.0),
            target_for: Some(Store::Sqlite),
            ..row("create_per_s", "create throughput (objects/s)", 0, true)
        },
        row("create_p50_ms", "create latency p50 (ms)", 1, true),
        row("create_p99_ms", "create latency p99 (ms)", 1, true),
        row("create_sheaf_cpu_ms", "sheaf CPU per create (ms)", 2, true),
        row("create_etcd_cpu_ms", "etcd CPU per create (ms)", 2, false),
        row("create_bench_cpu_ms", "bench client CPU per create (ms)", 2, true),
        row("create_machine_busy_pct", "machine CPU busy during creates (%)", 0, false),
        row("create_other_cores", "  of which other processes/irq (cores)", 2, false),
        row("busy_before_pct", "  machine busy before the run (% of a core)", 0, false),
        row("update_per_s", "merge-patch throughput (updates/s)", 0, true),
        row("update_p99_ms", "merge-patch latency p99 (ms)", 1, true),
        row("update_sheaf_cpu_ms", "sheaf CPU per watched patch (ms)", 2, true),
        row("update_etcd_cpu_ms", "etcd CPU per watched patch (ms)", 2, false),
        row("watch_p50_ms", "watch send->event p50 (ms), saturated", 1, true),
        Row {
            target: "< 20",
            meets: Some(|v| v < 20.0),
            ..row("watch_p99_ms", "watch send->event p99 (ms), saturated", 1, true)
        },
        row("watch_ack_p50_ms", "watch 2xx->event p50 (ms), saturated", 1, false),
        row("watch_ack_p99_ms", "watch 2xx->event p99 (ms), saturated", 1, false),
        row("paced_update_p50_ms", "merge-patch latency p50 (ms), paced", 1, true),
        row("paced_watch_p50_ms", "watch send->event p50 (ms), paced", 1, true),
        Row {
            target: "< 20",
            meets: Some(|v| v < 20.0),
            ..row("paced_watch_p99_ms", "watch send->event p99 (ms), paced", 1, true)
        },
        row("paced_watch_ack_p99_ms", "watch 2xx->event p99 (ms), paced", 1, false),
        row("list_api_ms", "LIST all as JSON, API only (ms, median)", 0, true),
        row("list_api_server_cpu_ms", "  sheaf CPU per LIST (ms)", 0, true),
        row("kubectl_table_s", "kubectl get vm -A (s, median)", 2, true),
        row("kubectl_table_server_cpu_s", "  sheaf CPU per kubectl get (s)", 2, true),
        row("kubectl_table_client_cpu_s", "  kubectl's own CPU (s)", 2, true),
        row("kubectl_json_s", "kubectl get vm -A -o json (s, median)", 2, true),
        row("kubectl_json_server_cpu_s", "  sheaf CPU per kubectl get -o json (s)", 2, true),
        row("kubectl_json_client_cpu_s", "  kubectl's own CPU (s)", 2, true),
        row("rss_empty_mb", "sheaf RSS empty (MB)", 1, true),
        row("rss_peak_mb", "sheaf RSS peak during load (MB)", 1, true),
        Row {
            target: "< 50",
            meets: Some(|v| v < 50.0),
            ..row("rss_idle_mb", "sheaf RSS after load + idle (MB)", 1, true)
        },
        row("idle_cpu_pct", "sheaf idle CPU, 10 s window (% of a core)", 2, false),
        row("idle_window_cpu_pct", "sheaf idle CPU, over the idle wait (%)", 2, false),
        row("etcd_rss_idle_mb", "etcd RSS after load + idle (MB)", 1, false),
        row("etcd_idle_cpu_pct", "etcd idle CPU (% of a core)", 2, false),
        row("disk_mb", "store on disk (MB)", 1, true),
    ]
}

fn print_table(args: &Args, all: &[(Store, Results)]) {
    let fmt = |v: Option<&f64>, d: usize| v.filter(|v| v.is_finite()).map_or("-".to_string(), |v| format!("{v:.d$}"));
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["metric".to_string()];
    header.extend(all.iter().map(|(s, _)| s.name().to_string()));
    let both = all.iter().any(|(s, _)| *s == Store::Sqlite) && all.iter().any(|(s, _)| *s == Store::Etcd);
    if both {
        header.push("etcd/sqlite".into());
    }
    header.push("target".into());
    lines.push(header);
    for row in rows() {
        if all.iter().all(|(_, r)| !r.contains_key(row.key)) {
            continue;
        }
        let mut line = vec![row.label.to_string()];
        for (store, r) in all {
            let mut cell = fmt(r.get(row.key), row.decimals);
            let judged = row.target_for.is_none_or(|s| s == *store);
            if let (Some(meets), Some(v), true) = (row.meets, r.get(row.key), judged) {
                cell.push_str(if meets(*v) { " ok" } else { " MISS" });
            }
            line.push(cell);
        }
        if both {
            let get = |s: Store| all.iter().find(|(k, _)| *k == s).and_then(|(_, r)| r.get(row.key)).copied();
            line.push(match (row.ratio, get(Store::Sqlite), get(Store::Etcd)) {
                (true, Some(s), Some(e)) if s > 0.0 => format!("{:.2}x", e / s),
                _ => String::new(),
            });
        }
        line.push(row.target.to_string());
        lines.push(line);
    }
    println!();
    println!(
        "Sheaf API benchmark: {} VirtualMachines, {} in flight over {} HTTP/2 connection(s); \
         {} saturated + {} paced ({}/s) watched updates",
        args.objects, args.concurrency, args.connections, args.updates, args.paced_updates, args.paced_rate
    );
    sheaf_bench_common::print_table(&lines);
}

async fn run(args: &Args) -> anyhow::Result<()> {
    if !args.sheaf.exists() {
        bail!("{} not found: build it with `cargo build --release -p sheaf`", args.sheaf.display());
    }
    if args.stores.is_empty() || args.concurrency == 0 || args.objects == 0 {
        bail!("nothing to do: give --stores, --concurrency and --objects");
    }
    if args.updates > args.objects || args.updates + args.paced_updates > args.objects {
        bail!("--updates + --paced-updates must not exceed --objects (each update touches its own object)");
    }
    let started = Instant::now();
    // The disk's fsync latency bounds every durable write's (both stores
    // fsync before they answer); measured where the stores keep their data.
    let probe_dir = std::env::temp_dir();
    let fsync = tokio::task::spawn_blocking(move || procs::fsync_latencies(&probe_dir, 200)).await??;
    let fsync_ms = |p: f64| percentile(&fsync, p).map_or(f64::NAN, ms);
    let (fsync_p50, fsync_p99) = (fsync_ms(50.0), fsync_ms(99.0));
    eprintln!(
        "disk fsync at 100/s in {}: p50 {fsync_p50:.2} ms, p99 {fsync_p99:.2} ms",
        std::env::temp_dir().display()
    );
    let (mut all, mut notes) = (Vec::new(), Vec::new());
    for &store in &args.stores {
        let r = bench(args, store, &mut notes).await.with_context(|| format!("{} run", store.name()))?;
        all.push((store, r));
    }
    print_table(args, &all);
    println!("disk fsync (4 KiB write + fsync, 100/s): p50 {fsync_p50:.2} ms, p99 {fsync_p99:.2} ms");
    for n in &notes {
        println!("NOTE {n}");
    }
    println!("(total {:.0} s)", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let results: serde_json::Map<String, Value> =
            all.iter().map(|(s, r)| (s.name().to_string(), json!(r))).collect();
        let doc = json!({
            "objects": args.objects, "concurrency": args.concurrency, "connections": args.connections,
            "updates": args.updates, "paced_updates": args.paced_updates, "paced_rate": args.paced_rate,
            "idle_secs": args.idle_secs, "cpu_secs": args.cpu_secs, "results": results, "notes": notes,
            "fsync_p50_ms": fsync_p50, "fsync_p99_ms": fsync_p99,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // On a signal the benchmark's future is dropped, and with it the
        // guards that kill the servers.
        tokio::select! {
            r = run(&args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}
