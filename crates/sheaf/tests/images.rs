//! VirtualMachineImages end to end: a compressed qcow2 built here is served
//! from a loopback HTTP server and imported (`sheaf image create --url`,
//! checksum verified); two volumes made from it (one of 4 GiB) share its base
//! layer, two real guests read the image's content from them and one
//! guest's writes stay its own; the image is downloaded and exported back;
//! bad checksums, images with backing files and lying headers are refused
//! with clear errors; a 2 GiB upload streams through a server whose memory
//! stays bounded; an image in use is kept until its volumes are gone.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::guest::{jsonpath, tiny_server, tiny_vm_with, wait_serial, ClaimDisk, QemuReaper};
use support::{eventually, http_server, Server};

const MARKER: &[u8] = b"SHEAF-IMAGE-CONTENT";

/// A 64 MiB raw disk with MARKER at 1 MiB and a block of data at 40 MiB.
fn raw_image(path: &Path) {
    let f = std::fs::File::create(path).expect("create");
    f.set_len(64 << 20).expect("size");
    use std::os::unix::fs::FileExt as _;
    f.write_all_at(MARKER, 1 << 20).expect("marker");
    f.write_all_at(&[0x5a; 4096], 40 << 20).expect("data");
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn sha512(path: &Path) -> String {
    let out = Command::new("sha512sum").arg(path).output().expect("sha512sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// A one-replica volume of `size` made from image `default/IMAGE`.
fn image_volume(name: &str, size: &str, image: &str) -> String {
    format!(
        "apiVersion: sheaf.io/v1alpha1\nkind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n  numberOfReplicas: 1\n  image: default/{image}\n"
    )
}

/// The guest prints what its disk from the image holds at 1 MiB, then writes its
/// own name at 2 MiB and prints what was there before.
const SCRIPT: &str = "#!/bin/sh\nfor s in /sys/block/vd*; do [ \"$(cat $s/size)\" -ge 131072 ] && dev=/dev/$(basename $s); done\nseen=$(dd if=$dev bs=512 skip=2048 count=1 2>/dev/null | head -c 19)\nbefore=$(dd if=$dev bs=512 skip=4096 count=1 2>/dev/null | head -c 8 | tr -d '\\000')\nprintf NAME | dd of=$dev bs=512 seek=4096 conv=fsync 2>/dev/null\necho \"SHEAF-GUEST seen=$seen before=${before:-empty}\"\n";

fn vm_on(name: &str, claim: &str) -> String {
    tiny_vm_with(name, &[ClaimDisk { name: "root", kind: "disk", bus: "virtio", claim }], &SCRIPT.replace("NAME", name))
}

fn running_uid(s: &Server, name: &str) -> String {
    let mut uid = String::new();
    let ok = eventually(Duration::from_secs(120), || {
        uid = jsonpath(s, "vmi", name, "{.metadata.uid}");
        !uid.is_empty() && jsonpath(s, "vmi", name, "{.status.phase}") == "Running"
    });
    assert!(ok, "VMI {name} not running: {}\n{}", jsonpath(s, "vmi", name, "{.status}"), s.log());
    uid
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn images_import_share_and_round_trip() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);
    let files = tempfile::tempdir().expect("files");
    let raw = files.path().join("disk.raw");
    raw_image(&raw);
    let qcow = files.path().join("disk.qcow2");
    qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", &raw.display().to_string(), &qcow.display().to_string()]);
    let url = http_server(files.path());

    // Import with the checksum; the format comes from the content.
    let out =
        s.cli_ok(&["image", "create", "golden", "--url", &format!("{url}/disk.qcow2"), "--checksum", &sha512(&qcow)]);
    assert!(out.contains("golden (qcow2, 64Mi disk) imported"), "{out}");
    assert_eq!(jsonpath(&s, "vmimage", "golden", "{.status.progress}"), "100");

    // A wrong checksum, a missing file: clear, final failures.
    let bad = "0".repeat(128);
    let out = s.cli_fail(&["image", "create", "wrong", "--url", &format!("{url}/disk.qcow2"), "--checksum", &bad]);
    assert!(out.contains("SHA-512") && out.contains("not the one meant"), "{out}");
    let out = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: harvesterhci.io/v1beta1\nkind: VirtualMachineImage\nmetadata:\n  name: x\nspec:\n  displayName: x\n  sourceType: download\n  url: file:///etc/shadow\n"),
    );
    assert!(out.contains("spec.url") && out.contains("http"), "{out}");

    // Malicious uploads: a backing file naming a host path, a lying header.
    let overlay = files.path().join("overlay.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", &overlay.display().to_string(), "1G"]);
    let out = s.cli_fail(&["image", "upload", &overlay.display().to_string(), "--name", "evil"]);
    assert!(out.contains("backing file") && out.contains("/etc/shadow") && out.contains("flatten"), "{out}");
    let liar = files.path().join("liar.qcow2");
    let mut b = std::fs::read(&qcow).expect("read");
    b[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes());
    std::fs::write(&liar, &b).expect("write");
    let out = s.cli_fail(&["image", "upload", &liar.display().to_string(), "--name", "liar"]);
    assert!(out.contains("virtual size") && out.contains("limit"), "{out}");

    // Two volumes from the image (one of 4 GiB, 64 times the image): ready
    // at once, sharing
    // one base.
    s.apply(&image_volume("disk-a", "4Gi", "golden"));
    s.apply(&image_volume("disk-b", "128Mi", "golden"));
    let uid = jsonpath(&s, "vmimage", "golden", "{.metadata.uid}");
    let base = s.data_dir().join("replicas/images").join(&uid);
    assert!(base.join("base.json").is_file(), "no base at {}", base.display());
    s.apply(&vm_on("vm-a", "disk-a"));
    s.apply(&vm_on("vm-b", "disk-b"));
    let a = running_uid(&s, "vm-a");
    let b = running_uid(&s, "vm-b");
    wait_serial(root.path(), &a, "SHEAF-GUEST seen=SHEAF-IMAGE-CONTENT before=empty", Duration::from_secs(120));
    wait_serial(root.path(), &b, "SHEAF-GUEST seen=SHEAF-IMAGE-CONTENT before=empty", Duration::from_secs(120));
    for v in ["disk-a", "disk-b"] {
        let actual: i64 = jsonpath(&s, "volume", v, "{.status.actualSize}").parse().unwrap_or(i64::MAX);
        assert!(actual < 8 << 20, "{v} stores {actual} bytes: the image was copied, not shared");
    }
    // vm-a restarted sees its own write, not vm-b's.
    s.cli_ok(&["vm", "restart", "vm-a"]);
    assert!(eventually(Duration::from_secs(60), || {
        let u = jsonpath(&s, "vmi", "vm-a", "{.metadata.uid}");
        !u.is_empty() && u != a
    }));
    let a2 = running_uid(&s, "vm-a");
    wait_serial(root.path(), &a2, "SHEAF-GUEST seen=SHEAF-IMAGE-CONTENT before=vm-a", Duration::from_secs(120));

    // A clone of disk-a from a snapshot, on the same image: it has vm-a's
    // write and the image's content, and stores only the blocks that
    // differ from the image.
    s.apply(
        "apiVersion: sheaf.io/v1alpha1\nkind: VolumeSnapshot\nmetadata:\n  name: snap-a\nspec:\n  volumeName: disk-a\n",
    );
    assert!(eventually(Duration::from_secs(60), || jsonpath(&s, "volumesnapshot", "snap-a", "{.status.readyToUse}")
        == "true"));
    s.apply("apiVersion: sheaf.io/v1alpha1\nkind: Volume\nmetadata:\n  name: disk-c\nspec:\n  size: 20Gi\n  numberOfReplicas: 1\n  image: default/golden\n  fromSnapshot: snap-a\n",
    );
    assert!(
        eventually(Duration::from_secs(120), || !jsonpath(&s, "volume", "disk-c", "{.status.restoredFrom}").is_empty()),
        "the clone was not filled: {}",
        jsonpath(&s, "volume", "disk-c", "{.status}")
    );
    let actual: i64 = jsonpath(&s, "volume", "disk-c", "{.status.actualSize}").parse().unwrap_or(i64::MAX);
    assert!(actual < 8 << 20, "the clone stores {actual} bytes: the image's blocks were copied");
    s.apply(&vm_on("vm-c", "disk-c"));
    let c = running_uid(&s, "vm-c");
    wait_serial(root.path(), &c, "SHEAF-GUEST seen=SHEAF-IMAGE-CONTENT before=vm-a", Duration::from_secs(120));

    // Download gives back the image's disk.
    let got = files.path().join("got.raw");
    s.cli_ok(&["image", "download", "golden", "-o", &got.display().to_string()]);
    assert!(std::fs::read(&got).expect("read") == std::fs::read(&raw).expect("read"), "downloaded disk differs");

    // Export vm-b's volume (stopped) into a new image: it has vm-b's write.
    s.cli_ok(&["vm", "stop", "vm-b"]);
    assert!(eventually(Duration::from_secs(60), || jsonpath(&s, "volume", "disk-b", "{.status.state}") == "Detached"));
    let out = s.cli_ok(&["image", "export", "disk-b", "--name", "from-b"]);
    assert!(out.contains("from-b (raw, 128Mi disk) exported"), "{out}");
    let exported = files.path().join("b.raw");
    s.cli_ok(&["image", "download", "from-b", "-o", &exported.display().to_string()]);
    let data = std::fs::read(&exported).expect("read");
    assert_eq!(&data[1 << 20..(1 << 20) + MARKER.len()], MARKER);
    assert_eq!(&data[2 << 20..(2 << 20) + 4], b"vm-b");
    assert_eq!(data.len(), 128 << 20);

    // An image in use is kept; it goes with its last volume.
    s.kubectl_ok(&["delete", "vmimage", "golden", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(base.join("base.json").is_file(), "the base of an image in use was removed");
    let msg = jsonpath(&s, "vmimage", "golden", "{.status.conditions[?(@.type==\"Deleting\")].message}");
    assert!(msg.contains("default/disk-a") && msg.contains("default/disk-c"), "{msg}");
    s.kubectl_ok(&["delete", "vm", "vm-a", "vm-b", "vm-c"]);
    assert!(eventually(Duration::from_secs(90), || ["vm-a", "vm-c"].iter().all(|v| jsonpath(
        &s,
        "vmi",
        v,
        "{.metadata.name}"
    )
    .is_empty())));
    s.kubectl_ok(&["delete", "volumesnapshot", "snap-a"]);
    s.kubectl_ok(&["delete", "volume", "disk-a", "disk-b", "disk-c"]);
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vmimage", "golden", "{.metadata.name}").is_empty()),
        "the image did not go with its volumes: {}",
        jsonpath(&s, "vmimage", "golden", "{.status}")
    );
    assert!(!base.exists(), "the base stayed behind");
}

#[test]
fn a_large_upload_streams_with_bounded_memory() {
    let s = Server::start();
    let files = tempfile::tempdir().expect("files");
    // 2 GiB of raw disk: data every 64 MiB, the rest zeros (all sent).
    let big = files.path().join("big.img");
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(2 << 30).expect("size");
        for i in 0..32u64 {
            f.write_all_at(&[i as u8 + 1; 65536], i * (64 << 20)).expect("write");
        }
    }
    let pid = s.pid();
    let before = vm_rss_kib(pid);
    let out = s.cli_ok(&["image", "upload", &big.display().to_string()]);
    assert!(out.contains("image big (raw, 2Gi disk) uploaded"), "{out}");
    let after = vm_rss_kib(pid);
    assert!(
        after < before + 150 * 1024,
        "the server's peak memory grew from {before} KiB to {after} KiB on a 2 GiB upload"
    );
    assert_eq!(jsonpath(&s, "vmimage", "big", "{.status.size}"), (2u64 << 30).to_string());
    assert_eq!(jsonpath(&s, "vmimage", "big", "{.status.sha512}"), sha512(&big));
    // The base keeps only the data: holes elsewhere.
    let uid = jsonpath(&s, "vmimage", "big", "{.metadata.uid}");
    let data = s.data_dir().join("replicas/images").join(uid).join("base.data");
    let used = std::fs::metadata(&data).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(u64::MAX);
    assert!(used < 64 << 20, "the base of a mostly empty image takes {used} bytes");
    // A second upload into an imported image is refused.
    let out = s.cli_fail(&["image", "upload", &big.display().to_string(), "--name", "big"]);
    assert!(out.contains("already exists") || out.contains("holds its data"), "{out}");
}

#[test]
fn an_iso_image_attaches_as_a_cdrom() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);
    let files = tempfile::tempdir().expect("files");
    let content = files.path().join("content");
    std::fs::create_dir_all(&content).expect("dir");
    std::fs::write(content.join("marker.txt"), "SHEAF-ISO-MARKER\n").expect("write");
    let iso = files.path().join("installer.iso");
    let out = Command::new("genisoimage")
        .args(["-quiet", "-r", "-J", "-V", "INSTALLER", "-o"])
        .arg(&iso)
        .arg(&content)
        .output()
        .expect("genisoimage");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.cli_ok(&["image", "upload", &iso.display().to_string()]);
    assert!(out.contains("image installer (iso,"), "{out}");
    let size = jsonpath(&s, "vmimage", "installer", "{.status.virtualSize}");
    s.apply(&image_volume("install-media", &size, "installer"));
    // SCSI: the test guest's cloud kernel has no AHCI driver for a SATA drive.
    let script = "#!/bin/sh\ni=0; while [ ! -b /dev/sr0 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done\necho \"SHEAF-BLOCK $(ls /sys/block)\"\nmount -t iso9660 -o ro /dev/sr0 /mnt && echo \"SHEAF-CD $(cat /mnt/marker.txt)\"\n";
    let disk = ClaimDisk { name: "cd", kind: "cdrom", bus: "scsi", claim: "install-media" };
    let vm = tiny_vm_with("installer", &[disk], script);
    s.apply(&vm);
    let uid = running_uid(&s, "installer");
    // /dev/sr0 is the guest's first CD-ROM drive: the image is attached as one.
    wait_serial(root.path(), &uid, "SHEAF-CD SHEAF-ISO-MARKER", Duration::from_secs(120));
    s.kubectl_ok(&["delete", "vm", "installer"]);
}
