//! An engine on standby, as a live migration uses it: engine A serves the
//! volume; standby engine B on the same replicas answers NBD clients at
//! once without claiming anything (A keeps writing), and B's first I/O
//! request takes the volume over with a new epoch that fences A. B's NBD
//! client here is the test's own (handshake, then raw requests), so
//! exactly what reaches B, and when, is known; A's writes go through QEMU's
//! client (`qemu-io`).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod support;
use support::blk::{log_count, log_has_n, qemu_io, wait_for, Procs};

const SIZE: u64 = 64 << 20;
const MIB: u32 = 1 << 20;

fn sheaf(args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
    Command::new(env!("CARGO_BIN_EXE_sheaf")).args(args).stdout(Stdio::null()).stderr(log).spawn().expect("spawn sheaf")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn replica(dir: &Path, name: &str) -> Child {
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let data = dir.join(name).display().to_string();
    let listen = format!("unix:{}", sock.display());
    let args = strings(&["blk", "replica", "--dir", &data, "--volume", "vol", "--size", "64Mi", "--listen", &listen]);
    let c = sheaf(&args, &dir.join(format!("{name}.log")));
    wait_for(&sock);
    c
}

/// An engine named `name` on replicas a and b, with `name.nbd` and
/// `name.ctl` sockets and `name.log`; `extra` are more flags.
fn engine(dir: &Path, name: &str, extra: &[&str]) -> Child {
    let nbd = dir.join(format!("{name}.nbd"));
    let _ = std::fs::remove_file(&nbd);
    let mut args = strings(&["blk", "engine", "--volume", "vol"]);
    for r in ["a", "b"] {
        args.extend(["--replica".into(), format!("unix:{}", dir.join(format!("{r}.sock")).display())]);
    }
    args.extend(["--nbd".into(), nbd.display().to_string()]);
    args.extend(["--control".into(), dir.join(format!("{name}.ctl")).display().to_string()]);
    args.extend(strings(extra));
    let c = sheaf(&args, &dir.join(format!("{name}.log")));
    wait_for(&nbd);
    c
}

/// One request on an engine's control socket.
fn control(dir: &Path, name: &str, request: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(dir.join(format!("{name}.ctl"))).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    s.write_all(format!("{request}\n").as_bytes()).expect("control request");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("control reply");
    serde_json::from_str(&line).expect("control reply JSON")
}

fn status(dir: &Path, name: &str) -> serde_json::Value {
    control(dir, name, r#"{"op":"status"}"#)["status"].clone()
}

/// The epoch replica `name` has recorded.
fn replica_epoch(dir: &Path, name: &str) -> u64 {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(name).join("replica.json")).expect("replica.json"))
            .expect("replica.json JSON");
    meta["epoch"].as_u64().expect("epoch")
}

/// A minimal NBD client: fixed newstyle handshake with `NBD_OPT_EXPORT_NAME`,
/// simple replies.
struct NbdClient {
    s: UnixStream,
    size: u64,
    next_cookie: u64,
}

impl NbdClient {
    fn connect(path: &Path) -> NbdClient {
        let mut s = UnixStream::connect(path).expect("NBD socket");
        s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).expect("NBD greeting");
        assert_eq!(&hello[..8], b"NBDMAGIC");
        // Fixed newstyle, no zeroes.
        s.write_all(&3u32.to_be_bytes()).expect("client flags");
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&3u32.to_be_bytes());
        opt.extend_from_slice(b"vol");
        s.write_all(&opt).expect("export name");
        let mut export = [0u8; 10];
        s.read_exact(&mut export).expect("export info");
        let size = u64::from_be_bytes(export[..8].try_into().expect("8 bytes"));
        NbdClient { s, size, next_cookie: 1 }
    }

    /// Sends a read request; returns its cookie.
    fn send_read(&mut self, offset: u64, len: u32) -> u64 {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        self.s.write_all(&r).expect("NBD request");
        cookie
    }

    /// Reads one reply to a read of `len` bytes: (cookie, data or errno).
    fn read_reply(&mut self, len: u32) -> (u64, Result<Vec<u8>, u32>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).expect("NBD reply");
        assert_eq!(u32::from_be_bytes(h[..4].try_into().expect("4")), 0x6744_6698, "simple reply magic");
        let error = u32::from_be_bytes(h[4..8].try_into().expect("4"));
        let cookie = u64::from_be_bytes(h[8..16].try_into().expect("8"));
        if error != 0 {
            return (cookie, Err(error));
        }
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).expect("NBD read data");
        (cookie, Ok(data))
    }

    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let cookie = self.send_read(offset, len);
        let (got, data) = self.read_reply(len);
        assert_eq!(got, cookie);
        data
    }
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let p = t.path().to_path_buf();
    (t, p)
}

fn write(mib: u64, p: u8) -> String {
    format!("write -f -P {p} {mib}M 1M")
}
fn verify(mib: u64, p: u8) -> String {
    format!("read -P {p} {mib}M 1M")
}

#[test]
fn a_standby_engine_serves_reads_and_takes_over_at_its_first_write() {
    let (_t, d) = dir();
    let mut procs = Procs(vec![replica(&d, "a"), replica(&d, "b")]);
    procs.0.push(engine(&d, "source", &[]));
    let (ok, out) = qemu_io(&d.join("source.nbd"), &[write(0, 7)]);
    assert!(ok, "{out}");
    let source_epoch = status(&d, "source")["epoch"].as_u64().expect("epoch");

    // The target engine on standby: QEMU's NBD client can connect and
    // learn the size; nothing is claimed.
    procs.0.push(engine(&d, "target", &["--standby"]));
    let mut client = NbdClient::connect(&d.join("target.nbd"));
    assert_eq!(client.size, SIZE);
    let s = status(&d, "target");
    assert_eq!(s["standby"], true, "{s}");
    assert_eq!(s["epoch"], 0, "{s}");
    assert_eq!(s["replicas"][0]["state"], "standby", "{s}");
    let refused = control(&d, "target", r#"{"op":"snapshot","name":"s1"}"#);
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("on standby")), "{refused}");
    let refused = control(&d, "target", r#"{"op":"expand","size":134217728}"#);
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("on standby")), "{refused}");
    for r in ["a", "b"] {
        assert_eq!(replica_epoch(&d, r), source_epoch, "the standby engine changed replica {r}'s epoch");
    }
    // The target QEMU reads while it sets the device up (the first sector,
    // for the geometry): answered from a replica without a claim.
    let cookies: Vec<u64> = (0..4u64).map(|i| client.send_read((i % 2) * u64::from(MIB), MIB)).collect();
    for _ in &cookies {
        let (cookie, data) = client.read_reply(MIB);
        let data = data.expect("a read on standby");
        let want = if (cookie - cookies[0]).is_multiple_of(2) { 7 } else { 0 };
        assert!(data.iter().all(|&x| x == want), "read {cookie} does not return what the source wrote");
    }
    assert_eq!(status(&d, "target")["standby"], true, "reads must not take the volume over");
    // The source goes on writing (and reading) after the target connected
    // and read.
    let (ok, out) = qemu_io(&d.join("source.nbd"), &[write(1, 8), verify(0, 7)]);
    assert!(ok, "the source engine still owns the volume: {out}");
    assert_eq!(status(&d, "source")["epoch"].as_u64(), Some(source_epoch));
    for r in ["a", "b"] {
        assert_eq!(replica_epoch(&d, r), source_epoch, "a standby read changed replica {r}'s epoch");
    }
    assert!(client.read(u64::from(MIB), MIB).expect("read").iter().all(|&x| x == 8), "the source's newer write");

    // The target guest's first write takes the volume over.
    let (ok, out) = qemu_io(&d.join("target.nbd"), &[write(3, 11), verify(0, 7), verify(1, 8)]);
    assert!(ok, "{out}");
    let tlog = d.join("target.log");
    assert_eq!(
        log_count(&tlog, &["standby engine activated"]),
        1,
        "{}",
        std::fs::read_to_string(&tlog).unwrap_or_default()
    );
    let s = status(&d, "target");
    assert_eq!(s["standby"], false, "{s}");
    assert_eq!(s["epoch"].as_u64(), Some(source_epoch + 1), "{s}");

    // The source is fenced: its writes fail. The target serves.
    let (ok, out) = qemu_io(&d.join("source.nbd"), &[write(2, 9)]);
    assert!(!ok, "the source engine can no longer write: {out}");
    let (ok, out) = qemu_io(&d.join("target.nbd"), &[verify(0, 7), verify(1, 8), write(2, 10), verify(2, 10)]);
    assert!(ok, "{out}");
    // Snapshots work once it is active; `activate` now changes nothing.
    let r = control(&d, "target", r#"{"op":"snapshot","name":"s1"}"#);
    assert!(r.get("error").is_none(), "{r}");
    let r = control(&d, "target", r#"{"op":"activate"}"#);
    assert_eq!(r["status"]["epoch"].as_u64(), Some(source_epoch + 1), "{r}");
}

#[test]
fn a_failed_activation_fails_its_request_and_the_next_one_tries_again() {
    let (_t, d) = dir();
    let mut replicas = Procs(vec![replica(&d, "a"), replica(&d, "b")]);
    let mut engines = Procs(vec![engine(&d, "standby", &["--standby"])]);
    let mut client = NbdClient::connect(&d.join("standby.nbd"));
    assert_eq!(client.size, SIZE);

    // Both replicas gone before the first request: it fails with EIO, and
    // the engine stays on standby.
    drop(Procs(std::mem::take(&mut replicas.0)));
    assert_eq!(client.read(0, 4096), Err(5), "EIO while no replica answers");
    let (ok, out) = qemu_io(&d.join("standby.nbd"), &[write(0, 3)]);
    assert!(!ok, "a write while no replica can be claimed: {out}");
    assert!(log_has_n(&d.join("standby.log"), &["could not take the volume over"], 1, Duration::from_secs(5)));
    assert_eq!(status(&d, "standby")["standby"], true);

    // They are back: the next write activates the engine.
    replicas.0.push(replica(&d, "a"));
    replicas.0.push(replica(&d, "b"));
    let data = client.read(0, 4096).expect("a read once the replicas are back");
    assert!(data.iter().all(|&x| x == 0));
    let (ok, out) = qemu_io(&d.join("standby.nbd"), &[write(0, 2), verify(0, 2)]);
    assert!(ok, "{out}");
    let s = status(&d, "standby");
    assert_eq!((s["standby"].as_bool(), s["epoch"].as_u64()), (Some(false), Some(1)), "{s}");

    // A second standby engine activated by the control socket instead:
    // it fences the first.
    engines.0.push(engine(&d, "second", &["--standby"]));
    let r = control(&d, "second", r#"{"op":"activate"}"#);
    assert_eq!((r["status"]["standby"].as_bool(), r["status"]["epoch"].as_u64()), (Some(false), Some(2)), "{r}");
    let (ok, out) = qemu_io(&d.join("standby.nbd"), &[write(0, 3)]);
    assert!(!ok, "the first engine is fenced: {out}");
    let (ok, out) = qemu_io(&d.join("second.nbd"), &[write(0, 3), verify(0, 3)]);
    assert!(ok, "{out}");
}

#[test]
fn standby_with_vhost_user_is_refused() {
    let (_t, d) = dir();
    let out = Command::new(env!("CARGO_BIN_EXE_sheaf"))
        .args(["blk", "engine", "--volume", "vol", "--replica", "unix:/nonexistent.sock", "--standby"])
        .arg("--vhost-user")
        .arg(d.join("v.sock"))
        .output()
        .expect("sheaf blk engine");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--standby cannot be used with --vhost-user"), "{err}");
}
