//! The block engine end to end, as processes: three `sheaf blk replica`
//! servers, a `sheaf blk engine` serving NBD, and QEMU's own NBD client
//! (`qemu-io`) writing and verifying patterns while replicas are killed
//! with SIGKILL, the engine is killed and restarted, and a second engine
//! fences the first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::blk::{log_has_n, qemu_io, wait_for, Procs};

fn sheaf(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(env!("CARGO_BIN_EXE_sheaf")).args(args).stdout(Stdio::null()).stderr(log).spawn().expect("spawn sheaf")
}

fn replica(dir: &Path, name: &str) -> Child {
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let c = sheaf(
        &[
            "blk",
            "replica",
            "--dir",
            &dir.join(name).display().to_string(),
            "--volume",
            "vol",
            "--size",
            "64Mi",
            "--listen",
            &format!("unix:{}", sock.display()),
        ],
        &dir.join(format!("{name}.log")),
    );
    wait_for(&sock);
    c
}

fn engine(dir: &Path, nbd: &str, replicas: &[&str]) -> Child {
    let sock = dir.join(nbd);
    let _ = std::fs::remove_file(&sock);
    let mut args = vec!["blk".to_string(), "engine".into(), "--volume".into(), "vol".into()];
    for r in replicas {
        args.push("--replica".into());
        args.push(format!("unix:{}", dir.join(format!("{r}.sock")).display()));
    }
    args.push("--nbd".into());
    args.push(sock.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = sheaf(&args, &dir.join(format!("{nbd}.log")));
    wait_for(&sock);
    c
}

/// Writes pattern `p` over MiB `mib` (with FUA, so it is acknowledged durable).
fn write(mib: u64, p: u8) -> String {
    format!("write -f -P {p} {}M 1M", mib)
}
fn verify(mib: u64, p: u8) -> String {
    format!("read -P {p} {}M 1M", mib)
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let p = t.path().to_path_buf();
    (t, p)
}

fn log_has(path: &Path, needles: &[&str], timeout: Duration) -> bool {
    log_has_n(path, needles, 1, timeout)
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn replicas_fail_rebuild_and_every_acknowledged_write_survives() {
    let (_t, d) = dir();
    let mut procs = Procs(vec![replica(&d, "a"), replica(&d, "b"), replica(&d, "c")]);
    procs.0.push(engine(&d, "e1.nbd", &["a", "b", "c"]));
    let nbd = d.join("e1.nbd");
    let e1_log = d.join("e1.nbd.log");
    let all = |n: u8| -> Vec<String> { (0..n as u64).map(|i| verify(i, i as u8 + 1)).collect() };
    // At start the first replica serves and the others are resynchronised
    // from it.
    for r in ["b.sock", "c.sock"] {
        assert!(log_has(&e1_log, &["replica rebuilt", r], Duration::from_secs(30)), "{r} not resynchronised");
    }

    let (ok, out) = qemu_io(&nbd, &[write(0, 1), write(1, 2), verify(0, 1), verify(1, 2)]);
    assert!(ok, "{out}");
    // SIGKILL replica b: the volume stays online on a and c.
    kill(&mut procs.0[1]);
    let (ok, out) = qemu_io(&nbd, &[write(2, 3), "write -z 8M 4k".into(), verify(0, 1), verify(2, 3)]);
    assert!(ok, "degraded writes and reads work: {out}");
    assert!(log_has(&e1_log, &["volume degraded", "b.sock"], Duration::from_secs(5)));

    // b comes back: the engine rebuilds it by itself while writes go on.
    procs.0[1] = replica(&d, "b");
    let (ok, out) = qemu_io(&nbd, &[write(3, 4)]);
    assert!(ok, "{out}");
    assert!(
        log_has_n(&e1_log, &["replica rebuilt", "b.sock"], 2, Duration::from_secs(30)),
        "b was not rebuilt: {}",
        std::fs::read_to_string(&e1_log).unwrap_or_default()
    );
    let (ok, out) = qemu_io(&nbd, &[write(4, 5)]);
    assert!(ok, "{out}");
    // Only the rebuilt b left: it has everything.
    kill(&mut procs.0[0]);
    kill(&mut procs.0[2]);
    let mut cmds = all(5);
    cmds.push("read -P 0 8M 4k".into());
    let (ok, out) = qemu_io(&nbd, &cmds);
    assert!(ok, "the rebuilt replica serves every write: {out}");
    let (ok, out) = qemu_io(&nbd, &[write(5, 6)]);
    assert!(ok, "{out}");

    // SIGKILL the engine. a and c are back but behind: a detached rebuild
    // (no engine running) brings all three to full redundancy.
    kill(&mut procs.0[3]);
    procs.0.push(replica(&d, "a"));
    procs.0.push(replica(&d, "c"));
    let sock = |r: &str| format!("unix:{}", d.join(format!("{r}.sock")).display());
    let out = Command::new(env!("CARGO_BIN_EXE_sheaf"))
        .args(["blk", "rebuild", "--volume", "vol", "--timeout", "60"])
        .args(["--replica", &sock("b"), "--replica", &sock("a"), "--replica", &sock("c")])
        .output()
        .expect("sheaf blk rebuild");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("3 of 3 replicas healthy"), "{text}");

    // A new engine on all three; then only a: acknowledged writes survive.
    procs.0.push(engine(&d, "e2.nbd", &["a", "b", "c"]));
    let nbd2 = d.join("e2.nbd");
    let mut cmds = all(6);
    cmds.push("read -P 0 8M 4k".into());
    let (ok, out) = qemu_io(&nbd2, &cmds);
    assert!(ok, "{out}");
    let n = procs.0.len();
    kill(&mut procs.0[1]); // b
    kill(&mut procs.0[n - 2]); // c
    let (ok, out) = qemu_io(&nbd2, &cmds);
    assert!(ok, "a alone, rebuilt while detached, has everything: {out}");
}

#[test]
fn a_new_engine_fences_the_old_one() {
    let (_t, d) = dir();
    let mut procs = Procs(vec![replica(&d, "a"), replica(&d, "b")]);
    procs.0.push(engine(&d, "old.nbd", &["a", "b"]));
    let (ok, out) = qemu_io(&d.join("old.nbd"), &[write(0, 7)]);
    assert!(ok, "{out}");
    procs.0.push(engine(&d, "new.nbd", &["a", "b"]));
    let (ok, out) = qemu_io(&d.join("old.nbd"), &[write(1, 8)]);
    assert!(!ok, "the old engine can no longer write: {out}");
    let (ok, out) = qemu_io(&d.join("new.nbd"), &[verify(0, 7), "read -P 0 1M 1M".into(), write(2, 9), verify(2, 9)]);
    assert!(ok, "{out}");
}

/// The tiny test guest (scripts/build-test-guests.sh).
fn tiny_guest() -> PathBuf {
    std::env::var_os("SHEAF_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-guests"))
        .join("tiny")
}

#[test]
fn a_qemu_guest_writes_to_a_three_replica_volume() {
    let (_t, d) = dir();
    let guest = tiny_guest();
    assert!(guest.join("vmlinuz").is_file(), "run scripts/build-test-guests.sh first");
    let mut procs = Procs(vec![replica(&d, "a"), replica(&d, "b"), replica(&d, "c")]);
    procs.0.push(engine(&d, "vol.nbd", &["a", "b", "c"]));
    let nbd = d.join("vol.nbd");
    assert!(log_has_n(&d.join("vol.nbd.log"), &["replica rebuilt"], 2, Duration::from_secs(30)), "not 3/3 at start");

    // A NoCloud seed whose user data is a script: write to the 64 MiB disk
    // (the volume), sync, read it back, report.
    let seed = d.join("seed");
    std::fs::create_dir_all(&seed).expect("seed dir");
    std::fs::write(seed.join("meta-data"), "instance-id: vol-test\n").expect("meta-data");
    std::fs::write(
        seed.join("user-data"),
        "#!/bin/sh\n\
         for s in /sys/block/vd*; do [ \"$(cat $s/size)\" = 131072 ] && dev=/dev/$(basename $s); done\n\
         printf SHEAF-VOLUME-DATA | dd of=$dev bs=512 seek=2048 conv=fsync 2>/dev/null\n\
         echo 3 > /proc/sys/vm/drop_caches\n\
         echo \"SHEAF-GUEST volume-roundtrip=$(dd if=$dev bs=512 skip=2048 count=1 2>/dev/null | head -c 17)\"\n",
    )
    .expect("user-data");
    let iso = d.join("seed.iso");
    let out = Command::new("genisoimage")
        .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(&iso)
        .arg(seed.join("user-data"))
        .arg(seed.join("meta-data"))
        .output()
        .expect("genisoimage");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let serial = d.join("serial.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "128", "-nodefaults", "-display", "none"])
        .arg("-kernel")
        .arg(guest.join("vmlinuz"))
        .arg("-initrd")
        .arg(guest.join("initramfs.cpio.gz"))
        .args(["-append", "console=ttyS0 quiet"])
        .args([
            "-blockdev",
            &format!("driver=nbd,server.type=unix,server.path={},export=vol,node-name=vol0", nbd.display()),
        ])
        .args(["-device", "virtio-blk-pci,drive=vol0"])
        .args(["-blockdev", &format!("driver=file,filename={},node-name=seed0,read-only=on", iso.display())])
        .args(["-device", "virtio-blk-pci,drive=seed0"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .spawn()
        .expect("qemu-system-x86_64");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = String::new();
    while Instant::now() < deadline {
        log = std::fs::read_to_string(&serial).unwrap_or_default();
        if log.contains("volume-roundtrip=") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(log.contains("SHEAF-GUEST volume-roundtrip=SHEAF-VOLUME-DATA"), "guest serial log:\n{log}");

    // What the guest wrote is on the volume, on every replica: read it
    // with only one replica left at a time.
    for keep in 0..3 {
        let mut only = Procs(Vec::new());
        let names = ["a", "b", "c"];
        // A fresh engine on this replica alone (qemu-io shows - as .).
        for p in &mut procs.0 {
            kill(p);
        }
        only.0.push(replica(&d, names[keep]));
        only.0.push(engine(&d, "one.nbd", &[names[keep]]));
        let out = Command::new("qemu-io")
            .args(["-f", "raw", "-c", "read -v 1M 32"])
            .arg(format!("nbd+unix:///vol?socket={}", d.join("one.nbd").display()))
            .output()
            .expect("qemu-io");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SHEAF.VOLUME.DAT"), "replica {} lacks the guest's write: {text}", names[keep]);
    }
}
