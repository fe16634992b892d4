//! `/metrics` end to end: a real `sheaf server` runs the tiny guest on a
//! Sheaf volume; its `/metrics` (behind authentication: 401 without a
//! token) is read with a Prometheus text-format parser; the guest writes
//! 4 MiB to the volume from its serial console, and the VM's disk write
//! counter, the volume's write counters and the API request counter of
//! requests this test made all rise by at least what was done; the VM's
//! CPU, memory and NIC, the node's capacity and disks are there too.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Sample, Scrape, Value};
use support::console::Console;
use support::guest::{apply_running, tiny_server, tiny_vm_with, wait_serial, ClaimDisk, QemuReaper};
use support::{eventually, Server};

const WRITTEN: f64 = 4.0 * 1024.0 * 1024.0;

/// `curl` of `path` on the server with `token` (None: no Authorization
/// header): (HTTP code, body, seconds).
fn get(s: &Server, path: &str, token: Option<&str>) -> (u16, String, f64) {
    let ca = s.dir.path().join("data/pki/ca.crt");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "--cacert"]).arg(&ca);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .args(["-w", "\n%{http_code} %{time_total}", &format!("{}{path}", s.url())])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split_whitespace();
    let code = tail.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let secs = tail.next().and_then(|t| t.parse().ok()).unwrap_or(0.0);
    (code, body.to_string(), secs)
}

/// One scrape, parsed; every line must be a comment or a sample the
/// parser understands (it skips what it cannot read, so that is checked
/// here).
struct Metrics {
    samples: Vec<Sample>,
    text: String,
}

fn scrape(s: &Server) -> (Metrics, f64) {
    let (code, text, secs) = get(s, "/metrics", Some(&s.token()));
    assert_eq!(code, 200, "/metrics: {text}");
    for line in text.lines() {
        let ok = match LineInfo::parse(line) {
            LineInfo::Doc { .. } | LineInfo::Type { .. } | LineInfo::Sample { .. } => true,
            LineInfo::Empty => false,
            LineInfo::Ignored => false,
        };
        assert!(ok, "not a valid line of the text format: {line:?}");
    }
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the text format parses");
    strict_check(&text);
    (Metrics { samples: parsed.samples, text }, secs)
}

/// Where the last scrape is kept for a look after the test.
fn keep(text: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics-scrape.txt");
    let _ = std::fs::write(&path, text);
    path
}

/// Also through Python's `prometheus_client` parser (strict: a bad line
/// fails it) when that is installed; skipped otherwise.
fn strict_check(text: &str) {
    let path = keep(text);
    let code = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
                n = sum(len(f.samples) for f in p(open(sys.argv[1]).read()))\nprint(n)";
    let Ok(out) = Command::new("python3").args(["-c", code]).arg(&path).output() else { return };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        return;
    }
    assert!(out.status.success(), "prometheus_client cannot parse {}: {stderr}", path.display());
}

impl Metrics {
    /// The value of the counter or gauge `name` whose labels include
    /// `labels`; None when there is none, panics when there are several.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {} samples", found.len());
        found.first().copied()
    }

    #[track_caller]
    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.relevant(name)))
    }

    /// The `+Inf` count of histogram `name` with `labels`.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .find_map(|s| match &s.value {
                Value::Histogram(b) => b.iter().find(|c| c.less_than.is_infinite()).map(|c| c.count),
                _ => None,
            })
    }

    fn relevant(&self, name: &str) -> String {
        let prefix = name.split('_').take(3).collect::<Vec<_>>().join("_");
        self.text.lines().filter(|l| l.contains(&prefix)).collect::<Vec<_>>().join("\n")
    }
}

#[test]
fn metrics_follow_the_guest_the_volume_and_the_api() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);

    // Behind authentication, like the rest of the API.
    let (code, body, _) = get(&s, "/metrics", None);
    assert_eq!(code, 401, "/metrics without a token: {body}");
    let (code, _, _) = get(&s, "/metrics", Some("not-a-token"));
    assert_eq!(code, 401, "/metrics with a wrong token");

    s.cli_ok(&["volume", "create", "data", "--size", "64Mi", "--replicas", "1"]);
    let disk = ClaimDisk { name: "data", kind: "disk", bus: "virtio", claim: "data" };
    let vm = tiny_vm_with("met", &[disk], "#cloud-config\n# marker: metrics\n");
    let uid = apply_running(&s, &vm, "met");
    wait_serial(root.path(), &uid, "SHEAF-GUEST ready", Duration::from_secs(120));
    let serial = std::fs::read_to_string(root.path().join("run").join(&uid).join("serial.log")).unwrap_or_default();
    // The guest names its disks with their sizes: the volume is 64 MiB.
    let dev = serial
        .lines()
        .filter_map(|l| l.split("SHEAF-GUEST disk=").nth(1))
        .find(|r| r.contains(" sectors=131072 "))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("the guest did not report the volume's disk: {serial}"));

    let vmi = [("namespace", "default"), ("name", "met")];
    let drive = [("namespace", "default"), ("name", "met"), ("drive", "data")];
    let volume = [("namespace", "default"), ("volume", "data")];
    // The runner lends QMP to the metrics once QEMU runs.
    let mut first = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            let (m, _) = scrape(&s);
            let ready = m.value("kubevirt_vmi_storage_write_traffic_bytes_total", &drive).is_some()
                && m.value("sheaf_volume_write_ops_total", &volume).is_some();
            first = Some(m);
            ready
        }),
        "the VM's drive or the volume is missing from /metrics:\n{}",
        first.as_ref().map(|m| m.text.as_str()).unwrap_or("")
    );
    let before = first.expect("a scrape");

    // Requests of this test, counted by verb, resource, scope and code.
    let lookups = [("verb", "GET"), ("resource", "configmaps"), ("scope", "resource"), ("code", "404")];
    let lookups_before = before.value("apiserver_request_total", &lookups).unwrap_or(0.0);
    for _ in 0..3 {
        let out = s.kubectl(&["get", "configmap", "no-such-map"]);
        assert!(!out.status.success());
    }
    // A watch that ends after a second.
    let (code, _, _) = get(&s, "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1", Some(&s.token()));
    assert_eq!(code, 200);

    // The guest writes 4 MiB to the volume.
    let mut console = Console::open(&s.kubeconfig, "met", None);
    assert!(console.expect_shell(6, 7, Duration::from_secs(60)), "no shell on the console: {}", console.output());
    let dd = format!("dd if=/dev/urandom of=/dev/{dev} bs=65536 count=64 conv=fsync && echo WROTE-$((7*8))");
    assert!(console.run(&dd, "WROTE-56", Duration::from_secs(90)), "the guest did not write: {}", console.output());

    let (after, secs) = scrape(&s);
    let wrote = after.must("kubevirt_vmi_storage_write_traffic_bytes_total", &drive)
        - before.must("kubevirt_vmi_storage_write_traffic_bytes_total", &drive);
    assert!(wrote >= WRITTEN, "the drive's write counter rose by {wrote}, the guest wrote {WRITTEN}");
    let ops = after.must("kubevirt_vmi_storage_iops_write_total", &drive)
        - before.must("kubevirt_vmi_storage_iops_write_total", &drive);
    assert!(ops >= 1.0, "write requests rose by {ops}");
    let volume_bytes =
        after.must("sheaf_volume_write_bytes_total", &volume) - before.must("sheaf_volume_write_bytes_total", &volume);
    assert!(volume_bytes >= WRITTEN, "the volume's write bytes rose by {volume_bytes}");
    let volume_ops =
        after.must("sheaf_volume_write_ops_total", &volume) - before.must("sheaf_volume_write_ops_total", &volume);
    assert!(volume_ops >= 1.0, "the volume's write ops rose by {volume_ops}");
    assert!(after.must("sheaf_volume_write_seconds_total", &volume) > 0.0);
    assert!(after.must("sheaf_volume_flush_ops_total", &volume) >= 1.0, "conv=fsync flushes");
    let mut healthy = volume.to_vec();
    healthy.push(("state", "healthy"));
    assert_eq!(after.must("sheaf_volume_replica_state", &healthy), 1.0);
    assert_eq!(after.must("sheaf_volume_size_bytes", &volume), 64.0 * 1024.0 * 1024.0);

    let lookups_after = after.must("apiserver_request_total", &lookups);
    assert!(lookups_after - lookups_before >= 3.0, "3 GETs of a missing configmap: {lookups_before} → {lookups_after}");
    let timed = [("verb", "GET"), ("resource", "configmaps"), ("scope", "resource")];
    assert!(
        after.histogram_count("apiserver_request_duration_seconds", &timed).is_some_and(|n| n >= 3.0),
        "no latency histogram for the GETs:\n{}",
        after.relevant("apiserver_request_duration_seconds")
    );
    // Watches are counted but not timed.
    let watch = [("verb", "WATCH"), ("resource", "configmaps"), ("scope", "namespace"), ("code", "200")];
    assert!(after.must("apiserver_request_total", &watch) >= 1.0);
    assert!(
        after.histogram_count("apiserver_request_duration_seconds", &[("verb", "WATCH")]).is_none(),
        "watches must not be in the latency histogram"
    );

    // The VM's CPU, memory and NIC, the node.
    assert!(after.must("kubevirt_vmi_cpu_usage_seconds_total", &vmi) > 0.0);
    assert!(after.must("kubevirt_vmi_memory_resident_bytes", &vmi) > 1e6);
    assert_eq!(after.must("kubevirt_vmi_memory_domain_bytes", &vmi), 128.0 * 1024.0 * 1024.0);
    let mut nic = vmi.to_vec();
    nic.push(("interface", "default"));
    assert!(after.must("kubevirt_vmi_network_transmit_packets_total", &nic) > 0.0, "the guest asked for DHCP");
    let node: HashMap<&str, f64> = [
        ("cpu", after.must("sheaf_node_capacity", &[("resource", "cpu")])),
        ("memory", after.must("sheaf_node_capacity", &[("resource", "memory")])),
        ("disk", after.must("sheaf_disk_capacity_bytes", &[("disk", "default")])),
    ]
    .into_iter()
    .collect();
    assert!(node["cpu"] >= 1.0 && node["memory"] > 1e8 && node["disk"] > 0.0, "{node:?}");
    assert_eq!(after.must("sheaf_node_vmis", &[]), 1.0);
    for collector in ["node", "disks", "vmis", "volumes"] {
        assert_eq!(after.must("sheaf_scrape_collector_success", &[("collector", collector)]), 1.0, "{collector}");
    }

    // What a scrape costs: one VM, one volume.
    let started = Instant::now();
    let (_, secs2) = scrape(&s);
    eprintln!(
        "scrape: {:.1} ms and {:.1} ms by curl, {} bytes, {} samples; in-process collectors: {}",
        secs * 1000.0,
        secs2 * 1000.0,
        after.text.len(),
        after.samples.len(),
        after.relevant("sheaf_scrape_collector_duration").replace('\n', "; ")
    );
    assert!(started.elapsed() < Duration::from_secs(5), "a scrape took {:?}", started.elapsed());
}
