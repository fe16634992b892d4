//! Bad VM input gets a clear answer and leaves nothing behind: API errors
//! for invalid specs, ErrorUnschedulable for a VM larger than the node, and
//! a FailedStart event (no QEMU, no files) for a missing Secret.

mod support;

use std::time::Duration;

use support::guest::{tiny_server, tiny_vm, QemuReaper};
use support::{eventually, Server};

fn jsonpath(s: &Server, kind: &str, name: &str, path: &str) -> String {
    let out = s.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn bad_vms_are_refused_or_explained() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);
    let vm = tiny_vm("bad", "m");

    // Invalid specs: 4xx with the field and what to do.
    let dup = vm.replace(
        "          - name: cloudinit\n            disk:\n              bus: virtio\n",
        "          - name: cloudinit\n            disk:\n              bus: virtio\n          - name: cloudinit\n            disk:\n              bus: virtio\n",
    );
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&dup));
    assert!(err.contains("disks[1].name") && err.contains("Duplicate"), "{err}");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&vm.replace("bus: virtio", "bus: floppy")));
    assert!(err.contains("disk.bus") && err.contains("floppy") && err.contains("virtio"), "{err}");
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&vm.replace("- name: cloudinit\n        cloudInitNoCloud", "- name: other\n        cloudInitNoCloud")),
    );
    assert!(err.contains("has no volume of the same name"), "{err}");
    assert!(s.kubectl(&["get", "vm", "bad"]).status.code() != Some(0), "nothing was stored");

    // Larger than the node: unschedulable, saying so.
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm.replace("guest: 128Mi", "guest: 4Ti")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "vm", "bad", "{.status.printableStatus}")
            == "ErrorUnschedulable"),
        "{}",
        jsonpath(&s, "vm", "bad", "{.status}")
    );
    let why = jsonpath(&s, "vmi", "bad", "{.status.conditions[?(@.type=='PodScheduled')].message}");
    assert!(why.contains("memory"), "{why}");
    s.kubectl_ok(&["delete", "vm", "bad"]);

    // A Secret that does not exist: the launch fails, the VM's events say
    // why, and nothing is left on the node.
    let with_secret = vm.replace(
        "        cloudInitNoCloud:\n          userData: |\n            #cloud-config\n            # marker: m\n",
        "        cloudInitNoCloud:\n          secretRef:\n            name: nosuchsecret\n",
    );
    assert!(with_secret.contains("nosuchsecret"));
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&with_secret));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = || s.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=bad"]);
    assert!(
        eventually(Duration::from_secs(30), || events().contains("secret \"nosuchsecret\" not found")),
        "{}",
        events()
    );
    s.kubectl_ok(&["delete", "vm", "bad"]);
    let run = root.path().join("run");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_dir(&run).map(|d| d.count() == 0).unwrap_or(true)),
        "left behind: {:?}",
        std::fs::read_dir(&run).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
}
