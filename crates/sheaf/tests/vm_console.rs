//! A running VM's subresources end to end, through the CLI: the serial
//! console (interactive shell of the tiny guest), VNC, pause/unpause, soft
//! reboot, guestosinfo, and their errors.

mod support;

use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::console::Console;
use support::guest::{apply_running, tiny_server, tiny_vm, wait_serial, QemuReaper};
use support::{eventually, Server};

fn jsonpath(s: &Server, kind: &str, path: &str) -> String {
    support::guest::jsonpath(s, kind, "con", path)
}

fn sheaf(s: &Server, args: &[&str]) -> (bool, String) {
    s.sheaf_cli(args)
}

fn boots(serial: &std::path::Path) -> usize {
    std::fs::read_to_string(serial).unwrap_or_default().matches("SHEAF-GUEST booted").count()
}

#[test]
fn console_vnc_pause_and_soft_reboot() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);

    let (ok, out) = sheaf(&s, &["vm", "pause", "con"]);
    assert!(!ok && out.contains("not found"), "{out}");
    let (ok, out) = sheaf(&s, &["vm", "console", "con"]);
    assert!(!ok && out.contains("not found"), "{out}");

    let uid = apply_running(&s, &tiny_vm("con", "console-test"), "con");
    let serial = root.path().join("run").join(&uid).join("serial.log");
    wait_serial(root.path(), &uid, "SHEAF-GUEST ready", Duration::from_secs(90));

    // The serial console: a shell answers.
    let mut first = Console::open(&s.kubeconfig, "con", None);
    assert!(first.expect_shell(6, 7, Duration::from_secs(60)), "no shell on the console: {:?}", first.output());
    // A second console takes over; the first one ends.
    let mut second = Console::open(&s.kubeconfig, "con", None);
    assert!(
        eventually(Duration::from_secs(15), || first.ended()),
        "the first console was not closed when the second connected"
    );
    assert!(
        second.expect_shell(7, 7, Duration::from_secs(60)),
        "no shell on the second console: {:?}",
        second.output()
    );
    drop(second);

    // VNC: a local port that speaks RFB.
    let mut vnc = Command::new(env!("CARGO_BIN_EXE_sheaf"))
        .args(["vm", "vnc", "con", "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&s.kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .expect("sheaf vm vnc");
    let mut line = String::new();
    std::io::BufReader::new(vnc.stdout.take().expect("stdout")).read_line(&mut line).expect("vnc line");
    let addr = line.split(" at ").nth(1).and_then(|r| r.split(':').take(2).collect::<Vec<_>>().join(":").into());
    let addr: String = addr.unwrap_or_default();
    let mut tcp = std::net::TcpStream::connect(addr.trim()).unwrap_or_else(|e| panic!("connect {addr:?}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut banner = [0u8; 12];
    tcp.read_exact(&mut banner).expect("RFB banner");
    assert_eq!(&banner, b"RFB 003.008\n");
    drop(tcp);
    let _ = vnc.kill();
    let _ = vnc.wait();

    // Pause and unpause.
    let (ok, out) = sheaf(&s, &["vm", "pause", "con"]);
    assert!(ok, "{out}");
    assert_eq!(jsonpath(&s, "vmi", "{.status.conditions[?(@.type=='Paused')].status}"), "True");
    assert!(
        eventually(Duration::from_secs(20), || jsonpath(&s, "vm", "{.status.printableStatus}") == "Paused"),
        "VM not Paused: {}",
        jsonpath(&s, "vm", "{.status}")
    );
    let (ok, out) = sheaf(&s, &["vm", "pause", "con"]);
    assert!(!ok && out.contains("already paused"), "{out}");
    let (ok, out) = sheaf(&s, &["vm", "softreboot", "con"]);
    assert!(!ok && out.contains("paused"), "{out}");
    let (ok, out) = sheaf(&s, &["vm", "unpause", "con"]);
    assert!(ok, "{out}");
    assert_eq!(jsonpath(&s, "vmi", "{.status.conditions[?(@.type=='Paused')].status}"), "");
    assert!(
        eventually(Duration::from_secs(20), || jsonpath(&s, "vm", "{.status.printableStatus}") == "Running"),
        "VM not Running after unpause: {}",
        jsonpath(&s, "vm", "{.status}")
    );
    let (ok, out) = sheaf(&s, &["vm", "unpause", "con"]);
    assert!(!ok && out.contains("not paused"), "{out}");

    // Soft reboot (no guest agent: ACPI, and QEMU resets rather than ends).
    assert_eq!(boots(&serial), 1);
    let (ok, out) = sheaf(&s, &["vm", "softreboot", "con"]);
    assert!(ok, "{out}");
    assert!(
        eventually(Duration::from_secs(90), || boots(&serial) == 2),
        "the guest did not boot again: {}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    assert_eq!(jsonpath(&s, "vmi", "{.metadata.uid}"), uid, "same VMI after a soft reboot");
    assert_eq!(jsonpath(&s, "vmi", "{.status.phase}"), "Running");

    // No guest agent in the tiny guest.
    let (ok, out) = sheaf(&s, &["vm", "guestosinfo", "con"]);
    assert!(!ok && out.contains("guest agent"), "{out}");

    // Stopped: the instance subresources say so.
    let (ok, out) = sheaf(&s, &["vm", "stop", "con"]);
    assert!(ok, "{out}");
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vm", "{.status.printableStatus}") == "Stopped"),
        "not stopped: {}",
        jsonpath(&s, "vm", "{.status}")
    );
    // (The instance may still be going away for a moment.)
    let mut out = String::new();
    let gone = eventually(Duration::from_secs(20), || {
        let (ok, o) = sheaf(&s, &["vm", "pause", "con"]);
        out = o;
        !ok && out.contains("not found")
    });
    assert!(gone, "{out}");
    s.kubectl_ok(&["delete", "vm", "con"]);
    let leftovers: Vec<_> =
        std::fs::read_dir(root.path().join("run")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
