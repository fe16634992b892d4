//! Backups end to end: a real S3 server we did not write (moto, on
//! loopback) and a directory as targets, a real guest writing a volume,
//! backups taken while it runs, an incremental one that reads and sends
//! only the changed chunk, the volume and its VM deleted with the backups
//! kept, restores into new volumes that another guest reads back with the
//! same hashes, a corrupted chunk found by verification, and a second
//! cluster pointed at the same bucket that sees the backups and restores
//! one bit for bit.

#[path = "../../sheaf-backup/tests/support/moto.rs"]
mod moto;
mod support;

use std::path::Path;
use std::time::Duration;

use support::counter::{type_once, wait_shell};
use support::guest::{jsonpath, tiny_server, tiny_vm_with, ClaimDisk, QemuReaper};
use support::{eventually, Server};

const MIB: u64 = 1 << 20;

fn backup_manifest(name: &str, volume: &str, target: &str) -> String {
    format!(
        "apiVersion: sheaf.io/v1alpha1\nkind: Backup\nmetadata:\n  name: {name}\nspec:\n  volumeName: {volume}\n  target: {target}\n"
    )
}

fn s3_target(name: &str, endpoint: &str, bucket: &str, style: &str) -> String {
    format!(
        "apiVersion: sheaf.io/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: {name}\nspec:\n  pollInterval: 10s\n  s3:\n    endpoint: {endpoint}\n    bucket: {bucket}\n    style: {style}\n    credentialSecret:\n      name: s3-creds\n"
    )
}

const CREDS: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s3-creds\n  namespace: sheaf-system\nstringData:\n  AWS_ACCESS_KEY_ID: sheaf-test\n  AWS_SECRET_ACCESS_KEY: not-so-secret-4242\n";

fn available(s: &Server, target: &str) {
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(s, "backuptarget", target, "{.status.available}") == "true"),
        "BackupTarget {target} not available: {}\n{}",
        jsonpath(s, "backuptarget", target, "{.status}"),
        s.log()
    );
}

fn completed(s: &Server, backup: &str) {
    let ok = eventually(Duration::from_secs(120), || {
        let phase = jsonpath(s, "backup", backup, "{.status.phase}");
        assert_ne!(phase, "Failed", "backup {backup} failed: {}", jsonpath(s, "backup", backup, "{.status}"));
        phase == "Completed"
    });
    assert!(ok, "backup {backup} did not complete: {}\n{}", jsonpath(s, "backup", backup, "{.status}"), s.log());
}

fn number(s: &Server, backup: &str, field: &str) -> u64 {
    let v = jsonpath(s, "backup", backup, &format!("{{.status.{field}}}"));
    v.parse()
        .unwrap_or_else(|_| panic!("backup {backup} has no {field}: {}", jsonpath(s, "backup", backup, "{.status}")))
}

fn restore_volume(name: &str, backup: &str, size: &str) -> String {
    format!(
        "apiVersion: sheaf.io/v1alpha1\nkind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n  numberOfReplicas: 1\n  fromBackup: {backup}\n"
    )
}

fn restored(s: &Server, volume: &str, backup: &str) {
    let want = format!("backup/{backup}");
    assert!(
        eventually(Duration::from_secs(120), || jsonpath(s, "volume", volume, "{.status.restoredFrom}") == want),
        "volume {volume} not restored from {backup}: {}\n{}",
        jsonpath(s, "volume", volume, "{.status}"),
        s.log()
    );
}

/// The SHA-256 the guest computes of `dev`.
fn guest_sha(run: &Path, uid: &str, dev: &str) -> String {
    let out = type_once(
        run,
        uid,
        &format!("echo SUM-$(sha256sum {dev} | cut -c1-64)-END$((1+1))"),
        "-END2",
        Duration::from_secs(120),
    );
    let at = out.rfind("SUM-").expect("a sum") + 4;
    let sum = out[at..].chars().take_while(char::is_ascii_hexdigit).collect::<String>();
    assert_eq!(sum.len(), 64, "no sha256 of {dev} in {out:?}");
    sum
}

fn start_vm(s: &Server, name: &str, disks: &[ClaimDisk<'_>]) -> String {
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&tiny_vm_with(name, disks, "#cloud-config\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut uid = String::new();
    let ok = eventually(Duration::from_secs(120), || {
        uid = jsonpath(s, "vmi", name, "{.metadata.uid}");
        !uid.is_empty() && jsonpath(s, "vmi", name, "{.status.phase}") == "Running"
    });
    assert!(ok, "VM {name} not running: {}\n{}", jsonpath(s, "vmi", name, "{.status}"), s.log());
    uid
}

/// The chunk files of a filesystem target.
fn chunk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("chunks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn volumes_are_backed_up_incrementally_kept_verified_and_restored_anywhere() {
    let root = tempfile::tempdir().expect("tempdir");
    let run = root.path().join("run");
    let _reaper = QemuReaper(run.clone());
    let s = tiny_server(root.path(), &[]);
    let moto = moto::Moto::start();
    moto.create_bucket("sheaf-backups");
    let fs_dir = root.path().join("nfs-backups");
    std::fs::create_dir_all(&fs_dir).expect("target dir");

    // Targets: S3 (path style) and a directory.
    s.apply(CREDS);
    s.apply(&s3_target("offsite", &moto.endpoint, "sheaf-backups", "path"));
    s.apply(&format!(
        "apiVersion: sheaf.io/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: local\nspec:\n  compression: lz4\n  filesystem:\n    path: {}\n",
        fs_dir.display()
    ));
    available(&s, "offsite");
    available(&s, "local");
    let url = jsonpath(&s, "backuptarget", "offsite", "{.status.url}");
    assert!(url.contains("s3://sheaf-backups") && !url.contains("not-so-secret"), "{url}");
    assert!(!s.log().contains("not-so-secret-4242"), "the secret key is in the server's log");

    // A guest fills 48 MiB of a 64 MiB volume with random data.
    s.cli_ok(&["volume", "create", "data", "--size", "64Mi", "--replicas", "2"]);
    let uid = start_vm(&s, "writer", &[ClaimDisk { name: "data", kind: "disk", bus: "virtio", claim: "data" }]);
    wait_shell(&run, &uid);
    type_once(
        &run,
        &uid,
        "dd if=/dev/urandom of=/dev/vdb bs=1M count=48 conv=fsync 2>/dev/null; echo FILLED-$((3*3))",
        "FILLED-9",
        Duration::from_secs(120),
    );
    let sum1 = guest_sha(&run, &uid, "/dev/vdb");

    // A full backup while the guest runs.
    s.apply(&backup_manifest("b1", "data", "offsite"));
    completed(&s, "b1");
    // Only what was written is read: the volume is thin.
    assert_eq!(number(&s, "b1", "bytesRead"), 48 * MIB);
    assert_eq!(number(&s, "b1", "chunksNew"), 48, "{}", jsonpath(&s, "backup", "b1", "{.status}"));
    assert!(number(&s, "b1", "bytesUploaded") >= 48 * MIB, "random data does not compress");
    assert_eq!(jsonpath(&s, "backup", "b1", "{.status.parent}"), "");

    // 1% of the volume changes: 640 KiB inside one chunk.
    type_once(
        &run,
        &uid,
        "dd if=/dev/urandom of=/dev/vdb bs=64K count=10 seek=100 conv=fsync 2>/dev/null; echo CHANGED-$((2*3))",
        "CHANGED-6",
        Duration::from_secs(60),
    );
    let sum2 = guest_sha(&run, &uid, "/dev/vdb");
    assert_ne!(sum1, sum2);
    s.apply(&backup_manifest("b2", "data", "offsite"));
    completed(&s, "b2");
    assert_eq!(jsonpath(&s, "backup", "b2", "{.status.parent}"), "b1");
    assert_eq!(number(&s, "b2", "bytesRead"), MIB, "only the changed chunk is read");
    assert_eq!(number(&s, "b2", "chunksUnchanged"), 63);
    let sent = number(&s, "b2", "bytesUploaded");
    assert!((640 << 10..=MIB + 64).contains(&sent), "the incremental backup sent {sent} bytes");
    // Only the newest backup's snapshot is kept (for the next delta).
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "volumesnapshot", "backup-b1", "{.metadata.name}")
            .is_empty()),
        "the older backup's snapshot stays"
    );
    assert_eq!(jsonpath(&s, "volumesnapshot", "backup-b2", "{.status.readyToUse}"), "true");

    // The same volume to the directory target: a full backup of its own.
    s.apply(&backup_manifest("b3", "data", "local"));
    completed(&s, "b3");
    assert_eq!(jsonpath(&s, "backup", "b3", "{.status.parent}"), "");
    assert_eq!(number(&s, "b3", "chunksNew"), 48);
    assert!(fs_dir.join("volumes/default/data/b3.json").exists());

    // The VM and its volume go; the backups stay.
    s.kubectl_ok(&["delete", "vm", "writer", "--wait=true", "--timeout=90s"]);
    assert!(
        eventually(Duration::from_secs(90), || jsonpath(&s, "vmi", "writer", "{.metadata.name}").is_empty()),
        "VMI writer still there"
    );
    s.cli_ok(&["volume", "delete", "data", "--purge"]);
    for b in ["b1", "b2", "b3"] {
        assert_eq!(jsonpath(&s, "backup", b, "{.status.phase}"), "Completed", "backup {b} after the volume went");
    }

    // Restores into new volumes; a guest reads them back.
    s.apply(&restore_volume("r1", "b1", "64Mi"));
    s.apply(&restore_volume("r2", "b2", "64Mi"));
    s.apply(&restore_volume("r3", "b3", "64Mi"));
    restored(&s, "r1", "b1");
    restored(&s, "r2", "b2");
    restored(&s, "r3", "b3");
    let disks = [
        ClaimDisk { name: "r1", kind: "disk", bus: "virtio", claim: "r1" },
        ClaimDisk { name: "r2", kind: "disk", bus: "virtio", claim: "r2" },
        ClaimDisk { name: "r3", kind: "disk", bus: "virtio", claim: "r3" },
    ];
    let reader = start_vm(&s, "reader", &disks);
    wait_shell(&run, &reader);
    assert_eq!(guest_sha(&run, &reader, "/dev/vdb"), sum1, "restored full backup");
    assert_eq!(guest_sha(&run, &reader, "/dev/vdc"), sum2, "restored incremental backup");
    assert_eq!(guest_sha(&run, &reader, "/dev/vdd"), sum2, "restored from the directory target");

    // A corrupted chunk is found by verification; an intact backup passes.
    let chunks = chunk_files(&fs_dir);
    assert_eq!(chunks.len(), 48, "{chunks:?}");
    let mut bytes = std::fs::read(&chunks[7]).expect("chunk");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&chunks[7], bytes).expect("corrupt a chunk");
    s.kubectl_ok(&["annotate", "backup", "b3", "sheaf.io/verify=first", "--overwrite"]);
    s.kubectl_ok(&["annotate", "backup", "b2", "sheaf.io/verify=first", "--overwrite"]);
    let verdict = |b: &str| jsonpath(&s, "backup", b, "{.status.verification.phase}");
    assert!(
        eventually(Duration::from_secs(60), || !matches!(verdict("b3").as_str(), "" | "InProgress")),
        "no verification: {}",
        jsonpath(&s, "backup", "b3", "{.status}")
    );
    assert_eq!(verdict("b3"), "Failed");
    assert_eq!(jsonpath(&s, "backup", "b3", "{.status.verification.badCount}"), "1");
    let bad = jsonpath(&s, "backup", "b3", "{.status.verification.badChunks[0]}");
    let id = chunks[7].file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    assert!(bad.contains(&id), "{bad} does not name {id}");
    assert!(
        eventually(Duration::from_secs(60), || verdict("b2") == "Passed"),
        "{}",
        jsonpath(&s, "backup", "b2", "{.status}")
    );
    assert_eq!(jsonpath(&s, "backup", "b2", "{.status.verification.chunksChecked}"), "48");

    // Bad requests are refused or fail with the reason.
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: sheaf.io/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: both\nspec:\n  filesystem:\n    path: /x\n  s3:\n    bucket: ab\n    credentialSecret:\n      name: s3-creds\n",
        ),
    );
    assert!(err.contains("spec.filesystem") && err.contains("spec.s3.bucket"), "{err}");
    s.apply(&backup_manifest("ghost", "no-such-volume", "offsite"));
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "backup", "ghost", "{.status.phase}") == "Failed"),
        "a backup of a missing volume did not fail"
    );
    assert!(jsonpath(&s, "backup", "ghost", "{.status.error}").contains("no-such-volume"));
    s.apply(&restore_volume("r4", "no-such-backup", "64Mi"));
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "volume", "r4", "{.status.restoreError}")
            .contains("no-such-backup")),
        "{}",
        jsonpath(&s, "volume", "r4", "{.status}")
    );

    // Deleting a Backup removes it from its target.
    s.kubectl_ok(&["delete", "backup", "b3", "--wait=true", "--timeout=60s"]);
    assert!(!fs_dir.join("volumes/default/data/b3.json").exists());

    // Another cluster, pointed at the same bucket (virtual-hosted style),
    // sees the backups and restores one bit for bit: backed up again, the
    // restored volume gives the same chunks, none of them new.
    let other_root = tempfile::tempdir().expect("tempdir");
    let _other_reaper = QemuReaper(other_root.path().join("run"));
    let other = Server::start_with(&[
        "--run-dir",
        &other_root.path().join("run").display().to_string(),
        "--mgmt-network",
        "user",
    ]);
    other.apply(CREDS);
    let vhost_endpoint = format!("http://localhost:{}", moto.port);
    other.apply(&s3_target("offsite", &vhost_endpoint, "sheaf-backups", "virtual-hosted"));
    available(&other, "offsite");
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&other, "backup", "b2", "{.status.phase}") == "Completed"),
        "the other cluster does not see the backups: {}\n{}",
        other.kubectl_ok(&["get", "backups", "-o", "yaml"]),
        other.log()
    );
    assert_eq!(jsonpath(&other, "backup", "b2", "{.metadata.annotations.sheaf\\.io/imported}"), "true");
    other.apply(&restore_volume("copy", "b2", "64Mi"));
    restored(&other, "copy", "b2");
    other.apply(&backup_manifest("copy-check", "copy", "offsite"));
    completed(&other, "copy-check");
    assert_eq!(
        number(&other, "copy-check", "chunksNew"),
        0,
        "{}",
        jsonpath(&other, "backup", "copy-check", "{.status}")
    );
    assert_eq!(number(&other, "copy-check", "chunksReused"), 48);
    drop(other);
}

/// File-level restore: a volume made from an ext4 image is backed up, and
/// the backup's files are listed and downloaded through the API and the
/// CLI without restoring the volume.
#[test]
fn a_backups_files_are_listed_and_downloaded_without_a_restore() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().join("run"));
    let s = tiny_server(root.path(), &[]);
    let target = root.path().join("backups");
    std::fs::create_dir_all(&target).expect("target dir");
    s.apply(&format!(
        "apiVersion: sheaf.io/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: local\nspec:\n  filesystem:\n    path: {}\n",
        target.display()
    ));
    available(&s, "local");

    // An ext4 file system with a few files, as a raw image.
    let tree = root.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("etc");
    std::fs::create_dir_all(tree.join("data/deep")).expect("data");
    std::fs::write(tree.join("etc/hostname"), "sheaf-files\n").expect("hostname");
    let blob: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(tree.join("data/deep/blob.bin"), &blob).expect("blob");
    let img = root.path().join("fs.img");
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("64M")
        .output()
        .expect("mkfs.ext4");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.cli_ok(&["image", "upload", &img.display().to_string(), "--name", "fsdisk"]);
    s.apply("apiVersion: sheaf.io/v1alpha1\nkind: Volume\nmetadata:\n  name: files\nspec:\n  size: 64Mi\n  numberOfReplicas: 1\n  image: default/fsdisk\n");
    s.apply(&backup_manifest("fb1", "files", "local"));
    completed(&s, "fb1");

    let parts = s.cli_ok(&["backup", "files", "fb1"]);
    assert!(parts.contains("ext4"), "{parts}");
    let top = s.cli_ok(&["backup", "files", "fb1", "/"]);
    assert!(top.contains("etc") && top.contains("data") && top.contains("dir"), "{top}");
    let deep = s.cli_ok(&["backup", "files", "fb1", "/data/deep"]);
    assert!(deep.contains("blob.bin") && deep.contains(&(3u32 << 20).to_string()), "{deep}");
    let hostname = s.cli_ok(&["backup", "files", "fb1", "/etc/hostname", "--get", "-"]);
    assert_eq!(hostname, "sheaf-files\n");
    let got = root.path().join("blob.out");
    s.cli_ok(&["backup", "files", "fb1", "/data/deep/blob.bin", "--get", &got.display().to_string()]);
    assert!(std::fs::read(&got).expect("downloaded") == blob, "the downloaded file differs");
    // Clear errors.
    let missing = s.cli_fail(&["backup", "files", "fb1", "/etc/nope", "--get", "-"]);
    assert!(missing.contains("/etc/nope") && missing.contains("no such file"), "{missing}");
    let dir = s.cli_fail(&["backup", "files", "fb1", "/etc", "--get", "-"]);
    assert!(dir.contains("not a regular file"), "{dir}");
    let err = s.cli_fail(&["backup", "files", "no-such-backup"]);
    assert!(err.contains("no-such-backup"), "{err}");
}
