//! Events and logs end to end: a real server (JSON log lines, serial logs
//! rotated at 16 KiB with two older generations) and the tiny guest.
//!
//! - Events: `kubectl get events` and `kubectl describe vm|vmi` show the
//!   VM's start (SuccessfulCreate, Scheduled, Started, Running) and stop
//!   (SuccessfulDelete, Stopped); a VM that cannot be scheduled gets
//!   FailedScheduling.
//! - Serial logs: the guest's marker is read with `sheaf vm logs` while no
//!   console is attached; the guest then writes three bursts of more than
//!   the rotation size (started from the console), which leave exactly
//!   three generations; `--previous`, `--tail`, `--limit-bytes` and bad
//!   query values; QEMU holds the log O_APPEND; rotation goes on after the
//!   server (and its agent) is killed and started again; the log goes with
//!   the VMI; `sheaf vm logs -f` follows a burst across its rotation and
//!   ends when the VM stops.
//! - Every line the server wrote on stderr is a JSON object.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::console::Console;
use support::guest::{apply_running, jsonpath, tiny_server, tiny_vm_with, QemuReaper};
use support::{eventually, Server};

const ROTATE_AT: u64 = 16 * 1024;

/// The guest's user data: a marker, then bursts of ~18 KB each, started
/// by typing `go1` (and later `go2`) on the serial console.
const SCRIPT: &str = r#"#!/bin/sh
# marker: EVL-MARKER-1
burst() {
  i=0
  while [ $i -lt 300 ]; do
    echo "BURST-$1-$i 0123456789abcdefghijklmnopqrstuvwxyz0123456789"
    i=$((i+1))
  done
  sleep 3
}
x=""
until [ "$x" = go1 ]; do read -r x < /dev/ttyS0; done
burst 1
burst 2
burst 3
echo EVL-BURSTS-DONE
x=""
until [ "$x" = go2 ]; do read -r x < /dev/ttyS0; done
burst 4
echo EVL-AGAIN-DONE
"#;

fn logs(s: &Server, args: &[&str]) -> String {
    let mut a = vec!["vm", "logs"];
    a.extend_from_slice(args);
    s.cli_ok(&a)
}

fn events(s: &Server) -> String {
    s.kubectl_ok(&["get", "events", "-o", "wide"])
}

/// Types `word` on the console until the guest's log shows `until`.
fn trigger(s: &Server, word: &str, until: &str) {
    let mut console = Console::open(&s.kubeconfig, "evl", None);
    let done = eventually(Duration::from_secs(120), || {
        console.type_line(word);
        std::thread::sleep(Duration::from_secs(1));
        s.sheaf_cli(&["vm", "logs", "evl"]).1.contains(until)
    });
    let typed = console.output();
    assert!(
        done,
        "{until} never came after typing {word}: console {typed:?}\nlog {}",
        logs(s, &["evl", "--tail", "20"])
    );
}

/// Whether the QEMU of the VMI in `dir` holds its serial log open with
/// O_APPEND (what makes truncating it safe).
fn qemu_appends(dir: &Path) -> bool {
    let pid = std::fs::read_to_string(dir.join("qemu.pid")).unwrap_or_default().trim().to_string();
    let log = dir.join("serial.log");
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() != Some(log.as_path()) {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
            .unwrap_or_default();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).map(str::trim).unwrap_or("0");
        return u32::from_str_radix(flags, 8).is_ok_and(|f| f & 0o2000 != 0);
    }
    false
}

fn raw_log(s: &Server, query: &str) -> std::process::Output {
    s.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/evl/log{query}"),
    ])
}

#[test]
fn events_and_serial_logs() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let mut s =
        tiny_server(root.path(), &["--serial-log-size", "16Ki", "--serial-log-files", "2", "--log-format", "json"]);

    // No such VMI: 404 from the CLI and the API.
    let out = s.cli_fail(&["vm", "logs", "evl"]);
    assert!(out.contains("not found"), "{out}");

    // A VM no node fits: FailedScheduling, and no log yet (409).
    let pending = tiny_vm_with("evl-pending", &[], "#cloud-config\n").replace(
        "      terminationGracePeriodSeconds: 5\n",
        "      nodeSelector:\n        sheaf.io/no-such-node: \"true\"\n      terminationGracePeriodSeconds: 5\n",
    );
    s.apply(&pending);
    assert!(
        eventually(Duration::from_secs(30), || events(&s).contains("FailedScheduling")),
        "no FailedScheduling event: {}",
        events(&s)
    );
    let out = s.cli_fail(&["vm", "logs", "evl-pending"]);
    assert!(out.contains("not running yet"), "{out}");
    let describe = s.kubectl_ok(&["describe", "vmi", "evl-pending"]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    s.kubectl_ok(&["delete", "vm", "evl-pending"]);

    // Start: events on the VM and its instance.
    let uid = apply_running(&s, &tiny_vm_with("evl", &[], SCRIPT), "evl");
    let dir = root.path().join("run").join(&uid);
    assert!(
        eventually(Duration::from_secs(30), || {
            let e = events(&s);
            ["SuccessfulCreate", "Scheduled", "Started", "Running"].iter().all(|r| e.contains(r))
        }),
        "start events missing: {}",
        events(&s)
    );
    let describe_vm = s.kubectl_ok(&["describe", "vm", "evl"]);
    let events_part = describe_vm.split("Events:").nth(1).unwrap_or_default();
    assert!(events_part.contains("SuccessfulCreate") && events_part.contains("Running"), "{describe_vm}");
    // Only the VM's own events, not its instance's.
    assert!(!events_part.contains("Scheduled"), "{describe_vm}");
    let describe_vmi = s.kubectl_ok(&["describe", "vmi", "evl"]);
    let events_part = describe_vmi.split("Events:").nth(1).unwrap_or_default();
    assert!(events_part.contains("Scheduled") && events_part.contains("Started"), "{describe_vmi}");

    // The marker, read through the API with no console attached.
    assert!(
        eventually(Duration::from_secs(90), || s.sheaf_cli(&["vm", "logs", "evl"]).1.contains("marker=EVL-MARKER-1")),
        "no marker in the log: {}",
        s.sheaf_cli(&["vm", "logs", "evl"]).1
    );
    assert!(qemu_appends(&dir), "QEMU does not hold serial.log with O_APPEND");
    let out = s.cli_fail(&["vm", "logs", "evl", "--previous"]);
    assert!(out.contains("not been rotated yet"), "{out}");

    // Bad query values: 400 Status with the parameter named.
    for (query, what) in [
        ("?tailLines=ten", "tailLines"),
        ("?limitBytes=0", "limitBytes"),
        ("?previous=maybe", "previous"),
        ("?sinceSeconds=5", "sinceSeconds"),
        ("?previous=true&follow=true", "do not go together"),
    ] {
        let out = raw_log(&s, query);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("BadRequest") && err.contains(what), "{query}: {err}");
    }
    let out = raw_log(&s, "?tailLines=1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Three bursts of more than the rotation size.
    trigger(&s, "go1", "EVL-BURSTS-DONE");
    let gens = |n: u32| dir.join(if n == 0 { "serial.log".to_string() } else { format!("serial.log.{n}") });
    assert!(gens(1).exists() && gens(2).exists(), "two older generations expected");
    assert!(!gens(3).exists(), "only two older generations are kept");
    for n in [1, 2] {
        let size = std::fs::metadata(gens(n)).map(|m| m.len()).unwrap_or(0);
        assert!(size >= ROTATE_AT, "generation {n} has {size} bytes");
    }
    let all = logs(&s, &["evl"]);
    let previous = logs(&s, &["evl", "--previous"]);
    let current = std::fs::read_to_string(gens(0)).unwrap_or_default();
    assert!(
        all.contains("BURST-3-299 ") && all.contains("EVL-BURSTS-DONE"),
        "{}",
        &all[all.len().saturating_sub(500)..]
    );
    // The oldest output (the boot, the marker, burst 1) has been dropped.
    assert!(!all.contains("BURST-1-0 ") && !all.contains("marker=EVL-MARKER-1"), "old output kept");
    assert!(previous.contains("BURST-2-") && !previous.contains("EVL-BURSTS-DONE"), "{previous}");
    assert!(all.ends_with(&current) && all.starts_with(&previous), "generations out of order");
    // --tail and --limit-bytes.
    let tail = logs(&s, &["evl", "--tail", "3"]);
    assert_eq!(tail.matches('\n').count(), 3, "{tail:?}");
    assert!(all.ends_with(&tail), "{tail:?}");
    let head = logs(&s, &["evl", "--limit-bytes", "10"]);
    assert_eq!(head.as_bytes(), &all.as_bytes()[..10]);
    let both = logs(&s, &["evl", "--tail", "2", "--limit-bytes", "5"]);
    assert_eq!(both.as_bytes(), &logs(&s, &["evl", "--tail", "2"]).as_bytes()[..5]);

    // The server and its agent are killed and started again: the VM is
    // adopted and its log still rotates.
    s.restart();
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vmi", "evl", "{.status.phase}") == "Running"),
        "VMI not Running after the restart"
    );
    // A follower sees the fourth burst as it comes, across its rotation.
    let followed = root.path().join("followed.log");
    let mut follower = Command::new(env!("CARGO_BIN_EXE_sheaf"))
        .args(["vm", "logs", "evl", "-f", "--tail", "1", "--kubeconfig"])
        .arg(&s.kubeconfig)
        .stdout(std::fs::File::create(&followed).expect("followed.log"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sheaf vm logs -f");
    std::thread::sleep(Duration::from_secs(2));
    trigger(&s, "go2", "BURST-4-0 ");
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_to_string(gens(1)).is_ok_and(|l| l.contains("BURST-4-"))),
        "no rotation after the restart"
    );
    assert!(
        eventually(Duration::from_secs(30), || logs(&s, &["evl", "--tail", "40"]).contains("EVL-AGAIN-DONE")),
        "the guest did not finish its last burst"
    );
    let read_followed = || std::fs::read_to_string(&followed).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || read_followed().contains("EVL-AGAIN-DONE")),
        "the follower missed the end: {}",
        read_followed()
    );
    let f = read_followed();
    let (first, last) = (f.find("BURST-4-0 "), f.find("BURST-4-299 "));
    assert!(first.is_some() && first < last, "the follower missed lines: {f}");
    assert!(follower.try_wait().ok().flatten().is_none(), "the follower ended while the VM runs");

    // Stop: the VM's and the instance's stop events; the log goes with the VMI.
    s.cli_ok(&["vm", "stop", "evl"]);
    assert!(
        eventually(Duration::from_secs(60), || {
            let e = events(&s);
            e.contains("SuccessfulDelete") && e.contains("Stopped")
        }),
        "stop events missing: {}",
        events(&s)
    );
    assert!(eventually(Duration::from_secs(60), || !dir.exists()), "the VMI's directory (and log) is left");
    // The follower ends with the VM.
    let ended = eventually(Duration::from_secs(20), || follower.try_wait().ok().flatten().is_some());
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(ended, "sheaf vm logs -f did not end when the VM stopped");
    let describe_vm = s.kubectl_ok(&["describe", "vm", "evl"]);
    assert!(describe_vm.contains("SuccessfulDelete") && describe_vm.contains("Stopped"), "{describe_vm}");

    // Every line the server wrote to stderr is JSON (the last one may be
    // unfinished).
    let log = s.log();
    let lines: Vec<&str> = log.split_inclusive('\n').filter(|l| l.ends_with('\n')).collect();
    assert!(lines.len() > 10, "too few log lines: {log}");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}"));
        assert!(v.get("level").is_some() && v.get("timestamp").is_some(), "{l}");
    }
}
