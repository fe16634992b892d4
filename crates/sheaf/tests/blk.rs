//! The block engine end to end, as processes: three `sheaf blk replica`
//! servers, a `sheaf blk engine` serving NBD, and QEMU's own NBD client
//! (`qemu-io`) writing and verifying patterns while replicas are killed
//! with SIGKILL, the engine is killed and restarted, and a second engine
//! fences the first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sheaf(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(env!("CARGO_BIN_EXE_sheaf")).args(args).stdout(Stdio::null()).stderr(log).spawn().expect("spawn sheaf")
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
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

/// Runs qemu-io commands against the NBD export; returns (ok, output).
fn qemu_io(nbd: &Path, cmds: &[String]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(format!("nbd+unix:///vol?socket={}", nbd.display()));
    let out = c.output().expect("qemu-io (apt-get install qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // qemu-io exits 0 even when a command fails: every command must have
    // reported its success.
    let done = text.lines().filter(|l| l.starts_with("wrote ") || l.starts_with("read ")).count();
    (out.status.success() && done == cmds.len() && !text.contains("Pattern verification failed"), text)
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

#[test]
fn writes_survive_replica_and_engine_kills() {
    let (_t, d) = dir();
    let mut procs = Procs(vec![replica(&d, "a"), replica(&d, "b"), replica(&d, "c")]);
    procs.0.push(engine(&d, "e1.nbd", &["a", "b", "c"]));
    let nbd = d.join("e1.nbd");

    let (ok, out) = qemu_io(&nbd, &[write(0, 1), write(1, 2), verify(0, 1), verify(1, 2)]);
    assert!(ok, "{out}");
    // SIGKILL replica b: the volume stays online on a and c.
    let _ = procs.0[1].kill();
    let _ = procs.0[1].wait();
    let (ok, out) = qemu_io(&nbd, &[write(2, 3), verify(0, 1), verify(2, 3), "write -z 1M 4k".into()]);
    assert!(ok, "degraded writes and reads work: {out}");
    // And replica c: one left.
    let _ = procs.0[2].kill();
    let _ = procs.0[2].wait();
    let (ok, out) = qemu_io(&nbd, &[write(3, 4), verify(3, 4), verify(2, 3)]);
    assert!(ok, "one replica is enough: {out}");
    let log = std::fs::read_to_string(d.join("e1.nbd.log")).unwrap_or_default();
    assert!(log.contains("volume degraded") && log.contains("b.sock") && log.contains("c.sock"), "{log}");

    // SIGKILL the engine; a new one (new epoch) serves every acknowledged write.
    let _ = procs.0[3].kill();
    let _ = procs.0[3].wait();
    procs.0.push(replica(&d, "b"));
    procs.0.push(replica(&d, "c"));
    procs.0.push(engine(&d, "e2.nbd", &["a", "b", "c"]));
    let nbd2 = d.join("e2.nbd");
    let (ok, out) = qemu_io(&nbd2, &[verify(0, 1), verify(2, 3), verify(3, 4), "read -P 0 1M 4k".into()]);
    assert!(ok, "acknowledged writes survive the engine: {out}");
    // b and c missed writes: the new engine leaves them out until rebuilt.
    let log = std::fs::read_to_string(d.join("e2.nbd.log")).unwrap_or_default();
    assert!(log.contains("needs a rebuild"), "{log}");
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
