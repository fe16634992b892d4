//! Sheaf's footprint end to end: a real `sheaf server` (embedded agent)
//! runs the tiny guest on a claim with two replicas; the node agent writes
//! its footprint on the Node (`sheaf.io/footprint`), and `sheaf status`
//! (table and `-o json`) shows it. The figures are checked against what
//! this test reads from /proc itself: the server's CPU over the very
//! interval the footprint covers, the RSS of Sheaf's processes (the
//! server, its storage engine and replica servers, dnsmasq) and of the
//! guest's QEMU, which must be counted apart.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::eventually;
use support::guest::{apply_running, jsonpath, tiny_server, tiny_vm_with, wait_serial, ClaimDisk, QemuReaper};
use support::Server;

const CLAIM: &str = r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: two-copies
provisioner: driver.longhorn.io
parameters:
  numberOfReplicas: "2"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  storageClassName: two-copies
  resources:
    requests:
      storage: 64Mi
"#;

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of `pid`, in clock ticks (100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(pid).unwrap_or_default();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15; the list starts at field 3.
    n(11) + n(12)
}

/// Rss of `pid` from smaps_rollup, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.split_whitespace().next().and_then(|k| k.parse::<u64>().ok()))
        .unwrap_or(0)
        * 1024
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// The processes whose command line names `root` (this test's directory),
/// besides the server: (sheaf helpers, QEMUs).
fn processes_under(root: &Path, server: u32) -> (Vec<u32>, Vec<u32>) {
    let needle = root.display().to_string();
    let (mut sheaf, mut qemu) = (vec![server], Vec::new());
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let line = cmdline(pid);
        if pid == server || !line.contains(&needle) || stat_fields(pid).is_some_and(|f| f[0] == "Z") {
            continue;
        }
        if line.split(' ').next().is_some_and(|exe| exe.rsplit('/').next().unwrap_or(exe).starts_with("qemu-system")) {
            qemu.push(pid);
        } else {
            sheaf.push(pid);
        }
    }
    (sheaf, qemu)
}

fn node_json(s: &Server) -> Value {
    let out = s.kubectl_ok(&["get", "nodes", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("node list JSON");
    list["items"][0].clone()
}

fn footprint(node: &Value) -> Option<Value> {
    let text = node.pointer("/metadata/annotations/sheaf.io~1footprint")?.as_str()?;
    Some(serde_json::from_str(text).expect("the footprint annotation is JSON"))
}

fn measured_at(f: &Value) -> SystemTime {
    let t = chrono::DateTime::parse_from_rfc3339(f["measuredAt"].as_str().expect("measuredAt")).expect("a time");
    SystemTime::UNIX_EPOCH + Duration::from_micros(t.timestamp_micros() as u64)
}

/// Records the CPU ticks of `pid` every 100 ms until dropped.
struct TickRecorder {
    samples: Arc<Mutex<Vec<(SystemTime, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl TickRecorder {
    fn start(pid: u32) -> TickRecorder {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let sample = (SystemTime::now(), cpu_ticks(pid));
                s.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        TickRecorder { samples, stop }
    }

    /// The CPU of the process between `begin` and `end`, in percent of one
    /// core, from the samples nearest to both; None if the record does not
    /// cover them.
    fn percent(&self, begin: SystemTime, end: SystemTime) -> Option<f64> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let covered =
            samples.first().is_some_and(|(t, _)| *t <= begin) && samples.last().is_some_and(|(t, _)| *t >= end);
        if !covered {
            return None;
        }
        let near = |at: SystemTime| {
            samples
                .iter()
                .min_by_key(|(t, _)| t.duration_since(at).unwrap_or_else(|e| e.duration()))
                .map(|(t, n)| (*t, *n))
        };
        let ((t0, n0), (t1, n1)) = (near(begin)?, near(end)?);
        let secs = t1.duration_since(t0).ok()?.as_secs_f64();
        Some(n1.saturating_sub(n0) as f64 / secs)
    }
}

impl Drop for TickRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn kinds(f: &Value) -> Vec<String> {
    f["processes"].as_array().into_iter().flatten().filter_map(|p| p["kind"].as_str()).map(str::to_string).collect()
}

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= abs.max(rel * a.abs().max(b.abs()))
}

#[test]
fn the_node_footprint_counts_sheaf_apart_from_its_guests_and_status_shows_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);
    let server = s.pid();
    let recorder_start = SystemTime::now();
    let recorder = TickRecorder::start(server);

    // Before any VM: the server alone (and its management network's dnsmasq).
    assert!(
        eventually(Duration::from_secs(30), || footprint(&node_json(&s)).is_some()),
        "no footprint on the Node: {}\n{}",
        node_json(&s),
        s.log()
    );
    let first = footprint(&node_json(&s)).expect("footprint");
    assert_eq!(first["role"], "server", "{first}");
    assert_eq!(first["guests"]["processes"], 0, "{first}");
    assert!(kinds(&first).contains(&"server".to_string()), "{first}");

    s.apply(CLAIM);
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "pvc", "data", "{.status.phase}") == "Bound"),
        "claim not Bound: {}",
        jsonpath(&s, "pvc", "data", "{.status}")
    );
    let vm = tiny_vm_with(
        "fp",
        &[ClaimDisk { name: "data", kind: "disk", bus: "virtio", claim: "data" }],
        "#cloud-config\n# marker: fp\n",
    );
    let uid = apply_running(&s, &vm, "fp");
    wait_serial(root.path(), &uid, "SHEAF-GUEST", Duration::from_secs(90));

    // Then a footprint written after the guest booted, over an interval
    // the test's own record of the server's CPU covers.
    let booted = SystemTime::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    let f = loop {
        if let Some(f) = footprint(&node_json(&s)) {
            let end = measured_at(&f);
            let begin = end - Duration::from_secs_f64(f["intervalSeconds"].as_f64().expect("intervalSeconds"));
            if f["guests"]["processes"] == 1 && end > booted && begin > recorder_start + Duration::from_millis(500) {
                break f;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no footprint with the guest after 90 s: {:?}\n{}",
            footprint(&node_json(&s)),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };

    // Guests apart: the QEMU is the one guest, and none of Sheaf's.
    let (ours, qemus) = processes_under(root.path(), server);
    assert_eq!(qemus.len(), 1, "one QEMU: {qemus:?}");
    let qemu = qemus[0];
    let listed: Vec<u64> =
        f["processes"].as_array().expect("processes").iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert!(!listed.contains(&u64::from(qemu)), "QEMU {qemu} counted as Sheaf's: {f}");
    assert!(listed.contains(&u64::from(server)), "the server {server} missing: {f}");
    let k = kinds(&f);
    assert!(k.iter().any(|k| k == "blk-engine"), "the volume's engine is Sheaf's: {f}");
    assert!(k.iter().filter(|k| *k == "blk-replica").count() == 2, "two replica servers: {f}");
    assert_eq!(f["sheaf"]["processes"].as_u64(), Some(listed.len() as u64), "{f}");
    let mut ours_sorted: Vec<u64> = ours.iter().map(|p| u64::from(*p)).collect();
    ours_sorted.sort_unstable();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort_unstable();
    assert_eq!(listed_sorted, ours_sorted, "the processes this test finds under its directory are the footprint's");

    // Memory: within 15 % (or 4 MiB) of what /proc says now.
    let sheaf_rss = f["sheaf"]["rssBytes"].as_f64().expect("rssBytes");
    let ours_rss: u64 = ours.iter().map(|p| rss(*p)).sum();
    assert!(close(sheaf_rss, ours_rss as f64, 0.15, 4.0 * 1048576.0), "Sheaf RSS {sheaf_rss} vs /proc {ours_rss}: {f}");
    let guest_rss = f["guests"]["rssBytes"].as_f64().expect("guest rssBytes");
    assert!(close(guest_rss, rss(qemu) as f64, 0.15, 4.0 * 1048576.0), "guest RSS {guest_rss} vs /proc {}", rss(qemu));
    assert!(guest_rss > 32.0 * 1048576.0, "a 128 MiB guest under TCG maps more than 32 MiB: {f}");
    let server_entry =
        f["processes"].as_array().expect("processes").iter().find(|p| p["pid"] == server).expect("server");
    let pss = server_entry["pssBytes"].as_f64().expect("pss");
    let srss = server_entry["rssBytes"].as_f64().expect("rss");
    assert!(pss > 0.0 && pss <= srss, "PSS {pss} is at most RSS {srss}");
    assert!(srss > 4.0 * 1048576.0 && srss < 512.0 * 1048576.0, "the server's RSS is plausible: {srss}");

    // CPU: the server's own over the footprint's interval, from this
    // test's record.
    let end = measured_at(&f);
    let interval = f["intervalSeconds"].as_f64().expect("intervalSeconds");
    assert!((1.0..=40.0).contains(&interval), "an interval between heartbeats: {f}");
    std::thread::sleep(Duration::from_millis(300));
    let mine = recorder.percent(end - Duration::from_secs_f64(interval), end).expect("the record covers the interval");
    let theirs = server_entry["cpuPercent"].as_f64().expect("cpuPercent");
    assert!(
        close(theirs, mine, 0.2, 0.5),
        "server CPU {theirs}% in the footprint vs {mine:.2}% from /proc over the same {interval} s: {f}"
    );
    assert!(theirs < 100.0, "an idle server does not spin a core: {f}");
    let total = f["sheaf"]["cpuPercent"].as_f64().expect("cpuPercent");
    assert!(total >= theirs - 0.01, "the total holds the server's share: {f}");

    // `sheaf status`, as JSON and as the table.
    let json: Value = serde_json::from_str(&s.cli_ok(&["status", "-o", "json"])).expect("status JSON");
    assert_eq!(json["server"]["store"], "sqlite", "{json}");
    assert!(json["server"]["version"].as_str().is_some_and(|v| v.contains("sheaf")), "{json}");
    assert_eq!(json["server"]["url"], s.url());
    let node = &json["nodes"][0];
    assert_eq!(json["server"]["leader"], node["name"], "the one server leads: {json}");
    assert_eq!(node["ready"], "True");
    assert_eq!(node["roles"], serde_json::json!(["server", "agent"]));
    assert!(node["capacity"]["memory"].as_str().is_some_and(|m| m.ends_with("Mi")), "{node}");
    let now = &node["footprint"];
    assert!(now["measuredAt"].as_str() >= f["measuredAt"].as_str(), "{now}");
    let now_rss = now["sheaf"]["rssBytes"].as_f64().expect("rss");
    assert!(close(now_rss, ours_rss as f64, 0.15, 4.0 * 1048576.0), "status RSS {now_rss} vs /proc {ours_rss}");
    assert_eq!(now["guests"]["processes"], 1);

    let table = s.cli_ok(&["status", "--processes"]);
    eprintln!("{table}\nthe server's CPU from /proc over the footprint's interval: {mine:.2}%");
    let name = node["name"].as_str().expect("name");
    let row = table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no row for {name}: {table}"));
    assert!(row.contains("True") && row.contains("server,agent"), "{table}");
    assert!(table.contains("SHEAF RSS") && table.contains("GUEST RSS") && table.contains("sqlite"), "{table}");
    assert!(table.contains("blk-replica") && table.contains(&server.to_string()), "{table}");
    let mib = |v: f64| format!("{:.1} MiB", v / 1048576.0);
    assert!(
        row.contains(&mib(now_rss)) || table.contains("ago"),
        "the row shows the footprint's RSS {}: {table}",
        mib(now_rss)
    );

    // A wrong kubeconfig is a clear error, not a panic.
    let bad = root.path().join("nope.kubeconfig");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sheaf"))
        .args(["status", "--kubeconfig"])
        .arg(&bad)
        .output()
        .expect("sheaf status");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.kubeconfig") && err.starts_with("error: ") && !err.contains("panicked"), "{err}");
}
