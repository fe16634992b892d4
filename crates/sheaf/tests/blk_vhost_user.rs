//! The vhost-user-blk frontend end to end, as processes: three `sheaf blk
//! replica` servers, a `sheaf blk engine --vhost-user`, and a real QEMU
//! guest (`vhost-user-blk-pci`, two queues, guest RAM shared through a
//! memfd). While the guest writes and reads back patterns with dd, a
//! replica is SIGKILLed (the engine goes on with two), the volume is grown
//! through the engine's control socket (the running guest sees the new
//! size), and the engine itself is SIGKILLed and restarted (QEMU
//! reconnects; the guest's next writes land); the guest also discards a
//! range (blkdiscard) and the VM is restarted. Afterwards every pattern is
//! read on the host through the engine's NBD socket with qemu-io, and from
//! single replicas.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::blk::{log_has_n, qemu_io, wait_for, Procs};

fn sheaf(args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(env!("CARGO_BIN_EXE_sheaf")).args(args).stdout(Stdio::null()).stderr(log).spawn().expect("spawn sheaf")
}

fn replica(dir: &Path, name: &str) -> Child {
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let args = [
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
    ]
    .map(String::from);
    let c = sheaf(&args, &dir.join(format!("{name}.log")));
    wait_for(&sock);
    c
}

/// An engine on `replicas` serving NBD at `<name>.nbd`, with a control
/// socket `<name>.ctl`, and vhost-user-blk at `vhost` if given.
fn engine(dir: &Path, name: &str, replicas: &[&str], vhost: Option<&Path>) -> Child {
    let nbd = dir.join(format!("{name}.nbd"));
    let _ = std::fs::remove_file(&nbd);
    let mut args: Vec<String> = ["blk", "engine", "--volume", "vol"].map(String::from).to_vec();
    for r in replicas {
        args.push("--replica".into());
        args.push(format!("unix:{}", dir.join(format!("{r}.sock")).display()));
    }
    args.extend(["--nbd".into(), nbd.display().to_string()]);
    args.extend(["--control".into(), dir.join(format!("{name}.ctl")).display().to_string()]);
    if let Some(v) = vhost {
        let _ = std::fs::remove_file(v);
        args.extend(["--vhost-user".into(), v.display().to_string()]);
        args.extend(["--vhost-user-queues", "2", "--vhost-user-serial", "sheaf-vol-e2e"].map(String::from));
    }
    let c = sheaf(&args, &dir.join(format!("{name}.log")));
    wait_for(&nbd);
    if let Some(v) = vhost {
        wait_for(v);
    }
    c
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The patterns the guest writes, as qemu-io checks (0xab = octal 253,
/// ...), and the MiB it discarded.
const PATTERNS: [&str; 5] =
    ["read -P 0xab 1M 4M", "read -P 0xcd 5M 4M", "read -P 0xef 96M 1M", "read -P 0x12 10M 1M", "read -P 0 20M 1M"];

fn control(sock: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(sock).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    s.write_all(format!("{request}\n").as_bytes()).expect("control request");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("control reply");
    line
}

/// The tiny test guest (scripts/build-test-guests.sh).
fn tiny_guest() -> PathBuf {
    std::env::var_os("SHEAF_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-guests"))
        .join("tiny")
}

/// The guest's part, run by the tiny guest's /init from a NoCloud seed.
/// Each step reports a `SHEAF-GUEST` line on the serial console; the host
/// acts on them.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
for s in /sys/block/vd*; do [ "$(cat $s/size)" = 131072 ] && sys=$s; done
dev=/dev/$(basename $sys)
echo "SHEAF-GUEST vu disk=$dev queues=$(ls -d $sys/mq/* | wc -l) serial=$(cat $sys/serial) lbs=$(cat $sys/queue/logical_block_size) pbs=$(cat $sys/queue/physical_block_size)"
mk() { dd if=/dev/zero bs=1M count=$2 2>/dev/null | tr '\000' "$3" > $1; }
mk /tmp/a 4 '\253'; mk /tmp/b 4 '\315'; mk /tmp/c 1 '\357'; mk /tmp/d 1 '\022'
check() { echo 3 > /proc/sys/vm/drop_caches; dd if=$dev bs=1M skip=$2 count=$3 2>/dev/null > /tmp/r; cmp -s /tmp/r $1 && echo ok || echo BAD; }
dd if=/tmp/a of=$dev bs=1M seek=1 conv=fsync 2>/dev/null
echo "SHEAF-GUEST p1=$(check /tmp/a 1 4)"
for i in 0 1 2 3; do dd if=/tmp/b of=$dev bs=1M seek=$((5+i)) skip=$i count=1 conv=fsync 2>/dev/null; sleep 0.3; done
echo "SHEAF-GUEST p2=$(check /tmp/b 5 4)"
n=0; while [ "$(cat $sys/size)" = 131072 ] && [ $n -lt 300 ]; do sleep 0.2; n=$((n+1)); done
echo "SHEAF-GUEST resized=$(cat $sys/size)"
dd if=/tmp/c of=$dev bs=1M seek=96 conv=fsync 2>/dev/null
dd if=/tmp/c of=$dev bs=1M seek=20 conv=fsync 2>/dev/null
blkdiscard -o 20971520 -l 1048576 $dev
dd if=/dev/zero of=/tmp/z bs=1M count=1 2>/dev/null
echo "SHEAF-GUEST p3=$(check /tmp/a 1 4)$(check /tmp/b 5 4)$(check /tmp/c 96 1)$(check /tmp/z 20 1)"
sleep 4
dd if=/tmp/d of=$dev bs=1M seek=10 conv=fsync 2>/dev/null
echo "SHEAF-GUEST p4=$(check /tmp/d 10 1)$(check /tmp/a 1 4)"
"#;

/// After a VM restart: the grown disk with everything written before.
const RESTART_SCRIPT: &str = r#"#!/bin/sh
for s in /sys/block/vd*; do [ "$(cat $s/size)" = 262144 ] && sys=$s; done
dev=/dev/$(basename $sys)
mk() { dd if=/dev/zero bs=1M count=$2 2>/dev/null | tr '\000' "$3" > $1; }
mk /tmp/a 4 '\253'; mk /tmp/d 1 '\022'
check() { dd if=$dev bs=1M skip=$2 count=$3 2>/dev/null > /tmp/r; cmp -s /tmp/r $1 && echo ok || echo BAD; }
echo "SHEAF-GUEST restarted=$(check /tmp/a 1 4)$(check /tmp/d 10 1)"
"#;

/// A NoCloud seed whose user data is `script`.
fn seed_iso(d: &Path, name: &str, script: &str) -> PathBuf {
    let seed = d.join(name);
    std::fs::create_dir_all(&seed).expect("seed dir");
    std::fs::write(seed.join("meta-data"), format!("instance-id: {name}\n")).expect("meta-data");
    std::fs::write(seed.join("user-data"), script).expect("user-data");
    let iso = d.join(format!("{name}.iso"));
    let out = Command::new("genisoimage")
        .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(&iso)
        .arg(seed.join("user-data"))
        .arg(seed.join("meta-data"))
        .output()
        .expect("genisoimage");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    iso
}

/// Boots the tiny guest with the volume on vhost-user-blk (two queues,
/// guest RAM in a shared memfd) and the seed on virtio-blk.
fn boot(d: &Path, vhost: &Path, iso: &Path, serial: &Path) -> Child {
    let guest = tiny_guest();
    Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "128", "-nodefaults"])
        .args(["-display", "none"])
        .args(["-object", "memory-backend-memfd,id=mem0,size=128M,share=on", "-machine", "memory-backend=mem0"])
        .arg("-kernel")
        .arg(guest.join("vmlinuz"))
        .arg("-initrd")
        .arg(guest.join("initramfs.cpio.gz"))
        .args(["-append", "console=ttyS0 quiet"])
        .args(["-chardev", &format!("socket,id=vu0,path={},reconnect=1", vhost.display())])
        .args(["-device", "vhost-user-blk-pci,chardev=vu0,num-queues=2"])
        .args(["-blockdev", &format!("driver=file,filename={},node-name=seed0,read-only=on", iso.display())])
        .args(["-device", "virtio-blk-pci,drive=seed0"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stderr(std::fs::File::create(d.join("qemu.log")).expect("qemu log"))
        .spawn()
        .expect("qemu-system-x86_64")
}

/// Waits for a serial console line containing `marker` and returns it.
fn serial_line(serial: &Path, marker: &str, timeout: Duration, qemu: &mut Child) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = log(serial);
        if let Some(l) = text.lines().find(|l| l.contains(marker)) {
            return l.trim().to_string();
        }
        if let Ok(Some(status)) = qemu.try_wait() {
            panic!("QEMU exited ({status}) before {marker:?}; serial log:\n{text}");
        }
        assert!(Instant::now() < deadline, "no {marker:?} on the serial console; serial log:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_guest_on_vhost_user_blk_survives_failures_and_sees_growth() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    assert!(tiny_guest().join("vmlinuz").is_file(), "run scripts/build-test-guests.sh first");
    let vhost = d.join("vol.vhost");
    let mut procs = Procs(vec![replica(d, "a"), replica(d, "b"), replica(d, "c")]);
    procs.0.push(engine(d, "e1", &["a", "b", "c"], Some(&vhost)));
    let e1_log = d.join("e1.log");
    assert!(log_has_n(&e1_log, &["replica rebuilt"], 2, Duration::from_secs(30)), "not 3/3 at start: {}", log(&e1_log));

    let iso = seed_iso(d, "seed", GUEST_SCRIPT);
    let serial = d.join("serial.log");
    let started = Instant::now();
    let mut qemu = Procs(vec![boot(d, &vhost, &iso, &serial)]);
    let q = &mut qemu.0[0];

    let disk = serial_line(&serial, "SHEAF-GUEST vu disk=", Duration::from_secs(90), q);
    assert!(
        disk.contains("queues=2") && disk.contains("serial=sheaf-vol-e2e") && disk.contains("lbs=512 pbs=4096"),
        "the guest sees two queues, the serial and the block sizes: {disk}"
    );
    let p1 = serial_line(&serial, "p1=", Duration::from_secs(60), q);
    assert!(p1.ends_with("p1=ok"), "{p1}\n{}", log(&serial));

    // SIGKILL replica b while the guest writes its second pattern.
    let b = &mut procs.0[1];
    let _ = b.kill();
    let _ = b.wait();
    let p2 = serial_line(&serial, "p2=", Duration::from_secs(60), q);
    assert!(p2.ends_with("p2=ok"), "degraded writes and reads work: {p2}");
    assert!(log_has_n(&e1_log, &["volume degraded", "b.sock"], 1, Duration::from_secs(5)), "{}", log(&e1_log));

    // Grow the volume to 128 MiB while the guest runs.
    let reply = control(&d.join("e1.ctl"), r#"{"op":"expand","size":134217728}"#);
    assert!(!reply.contains("error"), "expand: {reply}");
    let resized = serial_line(&serial, "resized=", Duration::from_secs(60), q);
    assert!(resized.ends_with("resized=262144"), "the guest sees the new size without a restart: {resized}");
    assert!(log_has_n(&e1_log, &["config change sent"], 1, Duration::from_secs(1)), "{}", log(&e1_log));
    let p3 = serial_line(&serial, "p3=", Duration::from_secs(60), q);
    assert!(p3.ends_with("p3=okokokok"), "the new space works, old data is there, a discard reads as zeros: {p3}");

    // SIGKILL the engine; a new one (on a and c) takes over the socket and
    // QEMU reconnects by itself. The guest writes again 4 s after p3.
    let e1 = &mut procs.0[3];
    let _ = e1.kill();
    let _ = e1.wait();
    procs.0.push(engine(d, "e2", &["a", "c"], Some(&vhost)));
    let e2_log = d.join("e2.log");
    assert!(
        log_has_n(&e2_log, &["vhost-user frontend connected"], 1, Duration::from_secs(20)),
        "QEMU did not reconnect: {}",
        log(&e2_log)
    );
    let p4 = serial_line(&serial, "p4=", Duration::from_secs(60), q);
    assert!(p4.ends_with("p4=okok"), "writes after the engine restart land: {p4}");
    drop(qemu);
    assert!(log_has_n(&e2_log, &["vhost-user frontend disconnected"], 1, Duration::from_secs(10)), "{}", log(&e2_log));

    // The VM restarts: the engine serves the next QEMU.
    let iso2 = seed_iso(d, "seed2", RESTART_SCRIPT);
    let serial2 = d.join("serial2.log");
    let mut qemu = Procs(vec![boot(d, &vhost, &iso2, &serial2)]);
    let again = serial_line(&serial2, "restarted=", Duration::from_secs(90), &mut qemu.0[0]);
    assert!(again.ends_with("restarted=okok"), "after a VM restart: {again}\n{}", log(&serial2));
    drop(qemu);
    let guest_time = started.elapsed();

    // On the host, through the running engine's NBD export.
    let (ok, out) = qemu_io(&d.join("e2.nbd"), &PATTERNS);
    assert!(ok, "the guest's writes through NBD: {out}");
    // c was resynchronised from a by e2: wait for it, then read each of the
    // two alone.
    assert!(log_has_n(&e2_log, &["replica rebuilt", "c.sock"], 1, Duration::from_secs(30)), "{}", log(&e2_log));
    drop(procs);
    for keep in ["a", "c"] {
        let _only = Procs(vec![replica(d, keep), engine(d, &format!("only-{keep}"), &[keep], None)]);
        let (ok, out) = qemu_io(&d.join(format!("only-{keep}.nbd")), &PATTERNS);
        assert!(ok, "replica {keep} alone has every write of the guest: {out}");
    }
    eprintln!("guest part took {guest_time:?}");
}
