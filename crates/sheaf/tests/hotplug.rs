//! Disk hotplug end to end, through the CLI and a real guest: the tiny
//! guest boots on a Sheaf volume; a second volume is added while it runs
//! (virtio), the guest sees the new disk and writes a marker into it; the
//! volume is removed (the guest sees the disk go, its engine stops), added
//! again on scsi (the guest reads the marker back through the volume),
//! survives an agent restart without being added twice, and is removed
//! again; `--persist` changes the VM's template too; a vhost-user volume
//! into a VM without shared memory is served over NBD, and into one with
//! shared memory as vhost-user-blk; bad requests are
//! refused with clear errors, and one the agent cannot carry out (a VM
//! without hotplug) leaves the VM running and says why.

mod support;

use std::path::Path;
use std::time::Duration;

use support::guest::{jsonpath, tiny_server, tiny_vm_with, wait_serial, ClaimDisk, QemuReaper};
use support::{eventually, Server};

/// The user data: every disk that appears after boot is reported with its
/// serial and what is at 1 MiB; an empty one gets a marker written there;
/// a disk that goes away is reported too.
const WATCHER: &str = r#"#!/bin/sh
known=" "
for s in /sys/block/vd* /sys/block/sd*; do [ -e "$s" ] && known="$known$(basename $s) "; done
( while true; do
    for s in /sys/block/vd* /sys/block/sd*; do
      [ -e "$s" ] || continue
      d=$(basename $s)
      case "$known" in *" $d "*) continue;; esac
      known="$known$d "
      sleep 1
      before=$(dd if=/dev/$d bs=512 skip=2048 count=1 2>/dev/null | head -c 12 | tr -d '\000')
      echo "SHEAF-GUEST hot-added=$d serial=$(cat $s/serial 2>/dev/null) before=${before:-empty}"
      if [ -z "$before" ]; then
        printf HOTPLUG-MARK | dd of=/dev/$d bs=512 seek=2048 conv=fsync 2>/dev/null && echo "SHEAF-GUEST hot-wrote=$d"
      fi
    done
    for d in $known; do
      if [ ! -e /sys/block/$d ]; then echo "SHEAF-GUEST hot-removed=$d"; known=$(echo "$known" | sed "s/ $d / /"); fi
    done
    sleep 1
  done ) &
"#;

/// A VM of the tiny guest with Volume `claim` as its second disk (virtio)
/// and [`WATCHER`] as its user data.
fn vm(name: &str, claim: &str) -> String {
    tiny_vm_with(name, &[ClaimDisk { name: "data", kind: "disk", bus: "virtio", claim }], WATCHER)
}

fn serial(root: &Path, uid: &str) -> String {
    std::fs::read_to_string(root.join("run").join(uid).join("serial.log")).unwrap_or_default()
}

/// The hotplugged volume's `phase` in the VMI's volumeStatus ("" if none).
fn hot_phase(s: &Server, volume: &str) -> String {
    jsonpath(s, "vmi", "hp", &format!("{{.status.volumeStatus[?(@.name==\"{volume}\")].phase}}"))
}

/// Whether the engine of the volume with uid `uid` runs.
fn engine_runs(root: &Path, uid: &str) -> bool {
    let pidfile = root.join("run").join("blk").join(format!("e-{uid}.pid"));
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn wait_for(what: &str, timeout: Duration, s: &Server, f: impl FnMut() -> bool) {
    assert!(eventually(timeout, f), "{what}: VMI status {}\n{}", jsonpath(s, "vmi", "hp", "{.status}"), s.log());
}

#[test]
fn volumes_are_hotplugged_into_and_out_of_a_running_guest() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let mut s = tiny_server(root.path(), &[]);
    let r = root.path();

    s.cli_ok(&["volume", "create", "boot", "--size", "64Mi", "--replicas", "1"]);
    s.cli_ok(&["volume", "create", "hot", "--size", "64Mi", "--replicas", "1"]);
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm("hp", "boot")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut uid = String::new();
    wait_for("VMI running", Duration::from_secs(120), &s, || {
        uid = jsonpath(&s, "vmi", "hp", "{.metadata.uid}");
        !uid.is_empty() && jsonpath(&s, "vmi", "hp", "{.status.phase}") == "Running"
    });
    wait_serial(r, &uid, "SHEAF-GUEST ready", Duration::from_secs(90));
    let hot_uid = jsonpath(&s, "volume", "hot", "{.metadata.uid}");
    assert!(!hot_uid.is_empty() && !engine_runs(r, &hot_uid), "the engine starts only when the volume is added");
    // The machine has room: hotplug ports and a SCSI controller.
    let qemu_args = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .find(|c| c.contains("qemu-system") && c.contains(&uid))
        .unwrap_or_default();
    assert!(
        qemu_args.contains("pcie-root-port,id=hotplug-port0") && qemu_args.contains("virtio-scsi-pci"),
        "{qemu_args}"
    );

    // Bad requests, refused with what to do.
    let e = s.cli_fail(&["vm", "addvolume", "hp", "--volume-name=nosuch"]);
    assert!(e.contains("does not exist") && e.contains("sheaf volume create nosuch"), "{e}");
    let e = s.cli_fail(&["vm", "addvolume", "hp", "--volume-name=boot"]);
    assert!(e.contains("already exists"), "{e}");
    let e = s.cli_fail(&["vm", "addvolume", "hp", "--volume-name=hot", "--bus=sata"]);
    assert!(e.contains("possible values: scsi, virtio"), "{e}");
    let e = s.cli_fail(&["vm", "removevolume", "hp", "--volume-name=data"]);
    assert!(e.contains("not hotpluggable"), "{e}");
    let e = s.cli_fail(&["vm", "removevolume", "hp", "--volume-name=hot"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = s.cli_fail(&["vm", "addvolume", "nosuchvm", "--volume-name=hot"]);
    assert!(e.contains("not found"), "{e}");
    let out = s.cli_ok(&["vm", "addvolume", "hp", "--volume-name=hot", "--dry-run"]);
    assert!(out.contains("dry run"), "{out}");
    assert!(!jsonpath(&s, "vmi", "hp", "{.spec.volumes[*].name}").contains("hot"));

    // Added on virtio: the guest sees a new disk with the serial, writes
    // the marker; the volume is Ready, its engine runs, an Event says so.
    let out = s.cli_ok(&["vm", "addvolume", "hp", "--volume-name=hot", "--bus=virtio", "--serial=HOT1"]);
    assert!(out.contains("Successfully submitted add volume request to VM hp for volume hot"), "{out}");
    wait_serial(r, &uid, "hot-added=vdc serial=HOT1 before=empty", Duration::from_secs(90));
    wait_serial(r, &uid, "hot-wrote=vdc", Duration::from_secs(30));
    wait_for("hot Ready", Duration::from_secs(30), &s, || hot_phase(&s, "hot") == "Ready");
    assert!(engine_runs(r, &hot_uid));
    assert_eq!(jsonpath(&s, "vm", "hp", "{.spec.template.spec.volumes[*].name}"), "cloudinit data", "VMI only");
    assert!(
        jsonpath(&s, "vmi", "hp", "{.spec.volumes[?(@.name==\"hot\")].persistentVolumeClaim.hotpluggable}") == "true"
    );
    let events = s.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=hp", "-o", "wide"]);
    assert!(events.contains("VolumeAttached"), "{events}");
    // In use: it cannot be deleted.
    let e = s.cli_fail(&["volume", "delete", "hot"]);
    assert!(e.contains("in use by VirtualMachineInstance hp"), "{e}");

    // Removed: the guest sees it go, the engine stops, the status forgets it.
    let out = s.cli_ok(&["vm", "removevolume", "hp", "--volume-name=hot"]);
    assert!(out.contains("Successfully submitted remove volume request"), "{out}");
    wait_serial(r, &uid, "hot-removed=vdc", Duration::from_secs(60));
    wait_for("engine stopped", Duration::from_secs(30), &s, || !engine_runs(r, &hot_uid));
    wait_for("hot gone from volumeStatus", Duration::from_secs(30), &s, || hot_phase(&s, "hot").is_empty());
    assert_eq!(jsonpath(&s, "vmi", "hp", "{.spec.volumes[*].name}"), "cloudinit data");
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "volume", "hot", "{.status.state}") == "Detached"),
        "{}",
        jsonpath(&s, "volume", "hot", "{.status}")
    );

    // Again, on scsi (the default): the guest reads the marker back
    // through the volume.
    s.cli_ok(&["vm", "addvolume", "hp", "--volume-name=hot"]);
    wait_serial(r, &uid, "hot-added=sda serial= before=HOTPLUG-MARK", Duration::from_secs(90));
    wait_for("hot Ready on scsi", Duration::from_secs(30), &s, || hot_phase(&s, "hot") == "Ready");
    assert_eq!(jsonpath(&s, "vmi", "hp", "{.status.volumeStatus[?(@.name==\"hot\")].target}"), "sda");

    // The agent restarts: the disk is adopted, not added twice.
    s.restart();
    std::thread::sleep(Duration::from_secs(15));
    wait_for("hot Ready after the restart", Duration::from_secs(30), &s, || hot_phase(&s, "hot") == "Ready");
    assert_eq!(jsonpath(&s, "vmi", "hp", "{.metadata.uid}"), uid, "the VM was not restarted");
    assert_eq!(serial(r, &uid).matches("hot-added=").count(), 2, "{}", serial(r, &uid));
    assert!(engine_runs(r, &hot_uid));
    s.cli_ok(&["vm", "removevolume", "hp", "--volume-name=hot"]);
    wait_serial(r, &uid, "hot-removed=sda", Duration::from_secs(60));
    wait_for("engine stopped", Duration::from_secs(30), &s, || !engine_runs(r, &hot_uid));

    // --persist: the VM's template too.
    s.cli_ok(&["vm", "addvolume", "hp", "--volume-name=hot", "--bus=virtio", "--persist"]);
    assert_eq!(jsonpath(&s, "vm", "hp", "{.spec.template.spec.volumes[*].name}"), "cloudinit data hot");
    wait_for("hot Ready (persisted)", Duration::from_secs(90), &s, || hot_phase(&s, "hot") == "Ready");
    let marked = || serial(r, &uid).matches("before=HOTPLUG-MARK").count() == 2;
    assert!(eventually(Duration::from_secs(30), marked), "{}", serial(r, &uid));
    let removed = || serial(r, &uid).matches("hot-removed=").count() == 2;
    assert!(removed(), "{}", serial(r, &uid));
    // Persisted: after a restart the new instance gets it again (plugged in
    // once QEMU runs, as KubeVirt does), and it can still be removed.
    s.cli_ok(&["vm", "restart", "hp"]);
    let old = uid.clone();
    wait_for("VMI restarted", Duration::from_secs(120), &s, || {
        uid = jsonpath(&s, "vmi", "hp", "{.metadata.uid}");
        !uid.is_empty() && uid != old && jsonpath(&s, "vmi", "hp", "{.status.phase}") == "Running"
    });
    wait_for("hot Ready after the VM restart", Duration::from_secs(90), &s, || hot_phase(&s, "hot") == "Ready");
    wait_serial(r, &uid, "SHEAF-GUEST ready", Duration::from_secs(90));
    assert!(engine_runs(r, &hot_uid));
    s.cli_ok(&["vm", "removevolume", "hp", "--volume-name=hot", "--persist"]);
    assert_eq!(jsonpath(&s, "vm", "hp", "{.spec.template.spec.volumes[*].name}"), "cloudinit data");
    wait_for("engine stopped", Duration::from_secs(60), &s, || !engine_runs(r, &hot_uid));
    wait_for("hot gone from volumeStatus", Duration::from_secs(30), &s, || hot_phase(&s, "hot").is_empty());

    // A vhost-user Volume into a VM whose memory is not shared: served over
    // NBD, and the status says why.
    s.cli_ok(&["volume", "create", "fast", "--size", "64Mi", "--replicas", "1", "--frontend", "vhost-user"]);
    s.cli_ok(&["vm", "addvolume", "hp", "--volume-name=fast"]);
    wait_for("fast Ready", Duration::from_secs(90), &s, || hot_phase(&s, "fast") == "Ready");
    let message = jsonpath(&s, "vmi", "hp", "{.status.volumeStatus[?(@.name==\"fast\")].message}");
    assert!(message.contains("attached over NBD") && message.contains("not shared"), "{message}");
    wait_serial(r, &uid, "hot-added=sda serial= before=empty", Duration::from_secs(30));
    s.kubectl_ok(&["delete", "vm", "hp"]);

    // A VM without hotplug (devices.disableHotplug): the request is
    // accepted, the agent says why it cannot be done, the VM runs on.
    let nohp = support::guest::tiny_vm("nohp", "nohp").replace(
        "        devices:\n          disks:\n",
        "        devices:\n          disableHotplug: true\n          disks:\n",
    );
    assert!(nohp.contains("disableHotplug"), "{nohp}");
    let nohp_uid = support::guest::apply_running(&s, &nohp, "nohp");
    wait_serial(r, &nohp_uid, "SHEAF-GUEST ready", Duration::from_secs(90));
    s.cli_ok(&["volume", "create", "spare", "--size", "64Mi", "--replicas", "1"]);
    s.cli_ok(&["vm", "addvolume", "nohp", "--volume-name=spare", "--bus=virtio"]);
    let reason =
        || jsonpath(&s, "vmi", "nohp", "{.status.volumeStatus[?(@.name==\"spare\")].reason}") == "HotplugDisabled";
    assert!(eventually(Duration::from_secs(60), reason), "{}", jsonpath(&s, "vmi", "nohp", "{.status}"));
    let status = jsonpath(&s, "vmi", "nohp", "{.status.volumeStatus[?(@.name==\"spare\")]}");
    assert!(status.contains("\"phase\":\"Pending\"") && status.contains("disableHotplug"), "{status}");
    let events = s.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=nohp"]);
    assert!(events.contains("HotplugDisabled") && events.contains("Warning"), "{events}");
    assert_eq!(jsonpath(&s, "vmi", "nohp", "{.status.phase}"), "Running");
    assert_eq!(jsonpath(&s, "vmi", "nohp", "{.metadata.uid}"), nohp_uid);
    s.cli_ok(&["vm", "removevolume", "nohp", "--volume-name=spare"]);
    let gone = || jsonpath(&s, "vmi", "nohp", "{.status.volumeStatus[*].name}") == "cloudinit";
    assert!(eventually(Duration::from_secs(30), gone), "{}", jsonpath(&s, "vmi", "nohp", "{.status}"));
    s.kubectl_ok(&["delete", "vm", "nohp"]);

    // A VM on a vhost-user volume (its memory shared with the engines): a
    // vhost-user volume is plugged in as vhost-user-blk on a root port.
    s.cli_ok(&["volume", "create", "vuboot", "--size", "64Mi", "--replicas", "1", "--frontend", "vhost-user"]);
    s.cli_ok(&["volume", "create", "vuhot", "--size", "64Mi", "--replicas", "1", "--frontend", "vhost-user"]);
    let vu_uid = support::guest::apply_running(&s, &vm("vu", "vuboot"), "vu");
    wait_serial(r, &vu_uid, "SHEAF-GUEST ready", Duration::from_secs(90));
    s.cli_ok(&["vm", "addvolume", "vu", "--volume-name=vuhot", "--bus=virtio", "--serial=VU1"]);
    wait_serial(r, &vu_uid, "hot-added=vdc serial=VU1 before=empty", Duration::from_secs(90));
    wait_serial(r, &vu_uid, "hot-wrote=vdc", Duration::from_secs(30));
    let vu_status = || jsonpath(&s, "vmi", "vu", "{.status.volumeStatus[?(@.name==\"vuhot\")]}");
    assert!(eventually(Duration::from_secs(30), || vu_status().contains("\"phase\":\"Ready\"")), "{}", vu_status());
    assert!(!vu_status().contains("NBD"), "served over vhost-user: {}", vu_status());
    s.cli_ok(&["vm", "removevolume", "vu", "--volume-name=vuhot"]);
    wait_serial(r, &vu_uid, "hot-removed=vdc", Duration::from_secs(60));
    let vuhot_uid = jsonpath(&s, "volume", "vuhot", "{.metadata.uid}");
    wait_for("vuhot engine stopped", Duration::from_secs(30), &s, || !engine_runs(r, &vuhot_uid));
    s.kubectl_ok(&["delete", "vm", "vu"]);
}
