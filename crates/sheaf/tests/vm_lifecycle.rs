//! Virtual machines end to end: kubectl applies a KubeVirt VirtualMachine,
//! the embedded agent boots the tiny test guest under QEMU, and the VM
//! follows its runStrategy through stop, start, a killed QEMU and an agent
//! restart. Needs `scripts/build-test-guests.sh` (run by scripts/test.sh).

mod support;

use std::path::Path;
use std::time::Duration;

use support::guest::{tiny_server, tiny_vm, QemuReaper};
use support::{eventually, Server};

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

fn vmi_uid(s: &Server) -> Option<String> {
    let out = s.kubectl(&["get", "vmi", "tiny", "-o", "jsonpath={.metadata.uid}"]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string()).filter(|u| !u.is_empty())
}

fn jsonpath(s: &Server, kind: &str, path: &str) -> String {
    let out = s.kubectl(&["get", kind, "tiny", "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn vm_runs_stops_restarts_and_survives_agent_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let mut s = tiny_server(root.path(), &[]);
    let run = root.path().join("run");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&tiny_vm("tiny", "hello-from-sheaf")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Running, with the marker from the user data on the serial console.
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vm", "{.status.printableStatus}") == "Running"),
        "VM not Running: {} / {}\n{}",
        jsonpath(&s, "vm", "{.status}"),
        jsonpath(&s, "vmi", "{.status}"),
        s.log()
    );
    let uid = vmi_uid(&s).expect("VMI exists");
    let dir = run.join(&uid);
    let serial = dir.join("serial.log");
    assert!(
        eventually(Duration::from_secs(90), || std::fs::read_to_string(&serial)
            .map(|l| l.contains("SHEAF-GUEST marker=hello-from-sheaf"))
            .unwrap_or(false)),
        "marker not on the serial console: {}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    let conds = jsonpath(&s, "vmi", "{.status.conditions[*].type}");
    assert!(conds.contains("Ready"), "{conds}");
    let pid: u32 = std::fs::read_to_string(dir.join("qemu.pid")).expect("pid").trim().parse().expect("pid number");
    assert!(pid_alive(pid));

    // The agent restarts (the whole server here); QEMU keeps running and is adopted.
    s.restart();
    assert!(pid_alive(pid), "QEMU survived the agent restart");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(vmi_uid(&s).as_deref(), Some(uid.as_str()), "same VMI after the restart\n{}", s.log());
    assert_eq!(jsonpath(&s, "vmi", "{.status.phase}"), "Running", "{}", s.log());
    assert!(pid_alive(pid));

    // kill -9 QEMU: the VMI fails and runStrategy Always starts a new one.
    let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(
        eventually(Duration::from_secs(60), || vmi_uid(&s).is_some_and(|u| u != uid)
            && jsonpath(&s, "vmi", "{.status.phase}") == "Running"),
        "no new VMI after QEMU was killed: {}",
        jsonpath(&s, "vm", "{.status}")
    );
    assert!(eventually(Duration::from_secs(10), || !dir.exists()), "the dead VMI's runtime directory was cleaned up");

    // Halted: stopped, nothing left behind.
    let uid2 = vmi_uid(&s).expect("VMI");
    let dir2 = run.join(&uid2);
    let pid2: u32 = std::fs::read_to_string(dir2.join("qemu.pid")).expect("pid").trim().parse().expect("pid");
    s.kubectl_ok(&["patch", "vm", "tiny", "--type", "merge", "-p", r#"{"spec":{"runStrategy":"Halted"}}"#]);
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vm", "{.status.printableStatus}") == "Stopped"),
        "VM not Stopped: {}",
        jsonpath(&s, "vm", "{.status}")
    );
    assert!(eventually(Duration::from_secs(20), || !pid_alive(pid2)), "QEMU stopped");
    // The VMI goes once the agent has removed its finalizer, a moment after
    // QEMU is gone.
    assert!(eventually(Duration::from_secs(20), || vmi_uid(&s).is_none()), "VMI deleted");
    assert!(eventually(Duration::from_secs(10), || !dir2.exists()), "runtime directory removed");

    // The start/restart/stop subresources, through the CLI.
    let sheaf = |args: &[&str]| s.sheaf_cli(args);
    let (ok, out) = sheaf(&["vm", "start", "tiny"]);
    assert!(ok, "{out}");
    assert_eq!(jsonpath(&s, "vm", "{.spec.runStrategy}"), "Always");
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vmi", "{.status.phase}") == "Running"),
        "not running after start"
    );
    let (ok, out) = sheaf(&["vm", "start", "tiny"]);
    assert!(!ok && out.contains("already running"), "{out}");
    let before = vmi_uid(&s).expect("VMI");
    let (ok, out) = sheaf(&["vm", "restart", "tiny"]);
    assert!(ok, "{out}");
    assert!(
        eventually(Duration::from_secs(60), || vmi_uid(&s).is_some_and(|u| u != before)
            && jsonpath(&s, "vmi", "{.status.phase}") == "Running"),
        "no new VMI after restart: {}\n{}",
        jsonpath(&s, "vm", "{.status}"),
        s.log()
    );
    let (ok, out) = sheaf(&["vm", "stop", "tiny"]);
    assert!(ok, "{out}");
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vm", "{.status.printableStatus}") == "Stopped"),
        "not stopped: {}",
        jsonpath(&s, "vm", "{.status}")
    );

    // Delete the VM: nothing left at all.
    s.kubectl_ok(&["delete", "vm", "tiny"]);
    let leftovers: Vec<_> =
        std::fs::read_dir(&run).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    for uid in [&uid, &uid2] {
        let tap = sheaf_agent::network::tap_name(uid, 0);
        assert!(!Path::new("/sys/class/net").join(&tap).exists(), "tap {tap} left behind");
    }
}
