//! The cluster key on TCP replica connections, on loopback: a replica
//! server with key K lets an engine (and a detached rebuild) with K in,
//! and refuses one with another key or none, with a message that says
//! why; a TCP replica server without a key does not start unless told
//! `--insecure-no-auth`; `--listen tcp:IP:0` writes the chosen port to
//! `--address-file`; a replica listening on a unix socket as well serves
//! it without a key.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::blk::{log_has_n, qemu_io, wait_for, Procs};

fn sheaf(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(env!("CARGO_BIN_EXE_sheaf")).args(args).stdout(Stdio::null()).stderr(log).spawn().expect("spawn sheaf")
}

/// Runs `sheaf args` to its end (at most 60 s: nothing may hang);
/// returns (success, stderr).
fn run(args: &[&str]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sheaf"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sheaf");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("sheaf {} did not end", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Output { status, stdout, stderr } = c.wait_with_output().expect("output");
    (status.success(), String::from_utf8_lossy(&stderr).to_string() + &String::from_utf8_lossy(&stdout))
}

/// A replica on `tcp:127.0.0.1:0` (the kernel picks the port) with
/// `auth` flags; returns it and the address from its address file.
fn tcp_replica(dir: &Path, name: &str, auth: &[&str]) -> (Child, String) {
    let data = dir.join(name).display().to_string();
    let address_file = dir.join(format!("{name}.addr"));
    let f = address_file.display().to_string();
    let mut args = vec!["blk", "replica", "--dir", &data, "--volume", "vol", "--size", "64Mi"];
    args.extend(["--listen", "tcp:127.0.0.1:0", "--address-file", &f]);
    args.extend(auth);
    let c = sheaf(&args, &dir.join(format!("{name}.log")));
    wait_for(&address_file);
    let address = std::fs::read_to_string(&address_file).expect("address file");
    assert!(address.starts_with("tcp:127.0.0.1:") && !address.ends_with(":0"), "{address:?}");
    (c, address)
}

fn key_file(dir: &Path, name: &str, hex: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{hex}\n")).expect("key file");
    p.display().to_string()
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let p = t.path().to_path_buf();
    (t, p)
}

#[test]
fn replicas_on_tcp_let_in_only_engines_with_the_cluster_key() {
    let (_t, d) = dir();
    let k = key_file(&d, "k", &"5a".repeat(32));
    let k2 = key_file(&d, "k2", &"a5".repeat(32));
    let short = key_file(&d, "short", &"5a".repeat(16));

    // No key and no --insecure-no-auth: the replica server does not start.
    let data = d.join("x").display().to_string();
    let replica =
        ["blk", "replica", "--dir", &data, "--volume", "vol", "--size", "64Mi", "--listen", "tcp:127.0.0.1:0"];
    let (ok, err) = run(&replica);
    assert!(!ok && err.contains("without a cluster key") && err.contains("--auth-key-file"), "{err}");
    let (ok, err) = run(&[&replica[..], &["--auth-key-file", &short]].concat());
    assert!(!ok && err.contains("holds 16 bytes of secret, fewer than 32"), "{err}");

    // Replica a listens on a unix socket too (for engines on its node).
    let a_unix = format!("unix:{}", d.join("a.sock").display());
    let (a, a_addr) = tcp_replica(&d, "a", &["--auth-key-file", &k, "--listen", &a_unix]);
    let (b, b_addr) = tcp_replica(&d, "b", &["--auth-key-file", &k]);
    let mut procs = Procs(vec![a, b]);
    let nbd = d.join("e.nbd");
    let nbd_s = nbd.display().to_string();
    fn engine<'a>(replica: &'a str, nbd: &'a str, key: Option<&'a str>) -> Vec<&'a str> {
        let mut args = vec!["blk", "engine", "--volume", "vol", "--replica", replica, "--nbd", nbd];
        if let Some(k) = key {
            args.extend(["--auth-key-file", k]);
        }
        args
    }

    // Another key: refused, and the engine says so (it does not start
    // with no replica).
    let (ok, err) = run(&engine(&a_addr, &nbd_s, Some(&k2)));
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "replica {a_addr} refused the engine's key: the nodes do not share the same cluster key"
        )),
        "{err}"
    );
    assert!(log_has_n(&d.join("a.log"), &["replica connection refused", "did not prove"], 1, Duration::from_secs(5)));
    // No key at all.
    let (ok, err) = run(&engine(&a_addr, &nbd_s, None));
    assert!(
        !ok && err.contains(&format!("replica {a_addr} asks for the cluster key and this engine has none")),
        "{err}"
    );

    // The right key: the engine serves, over TCP.
    procs.0.push(sheaf(&engine(&a_addr, &nbd_s, Some(&k)), &d.join("e.log")));
    wait_for(&nbd);
    let (ok, out) = qemu_io(&nbd, &["write -f -P 5 0 1M", "read -P 5 0 1M"]);
    assert!(ok, "{out}");
    drop(Procs(procs.0.pop().into_iter().collect()));
    // On the unix socket no key is asked for.
    let nbd_local = d.join("local.nbd");
    let nbd_local_s = nbd_local.display().to_string();
    procs.0.push(sheaf(&engine(&a_unix, &nbd_local_s, None), &d.join("local.log")));
    wait_for(&nbd_local);
    let (ok, out) = qemu_io(&nbd_local, &["read -P 5 0 1M"]);
    assert!(ok, "{out}");
    drop(Procs(procs.0.pop().into_iter().collect()));

    // A detached rebuild with the key brings a second TCP replica in.
    let (ok, out) = run(&[
        "blk",
        "rebuild",
        "--volume",
        "vol",
        "--replica",
        &a_addr,
        "--replica",
        &b_addr,
        "--auth-key-file",
        &k,
        "--timeout",
        "60",
    ]);
    assert!(ok && out.contains("2 of 2 replicas healthy"), "{out}");

    // A replica server run without a key (explicitly) and an engine with
    // one: refused too, by the engine.
    let (c, c_addr) = tcp_replica(&d, "c", &["--insecure-no-auth"]);
    procs.0.push(c);
    let (ok, err) =
        run(&["blk", "engine", "--volume", "vol", "--replica", &c_addr, "--nbd", &nbd_s, "--auth-key-file", &k]);
    assert!(!ok && err.contains(&format!("replica {c_addr} serves without a cluster key")), "{err}");
    // Without a key on either side it works (the insecure opt-in).
    let nbd2 = d.join("e2.nbd");
    let nbd2_s = nbd2.display().to_string();
    procs
        .0
        .push(sheaf(&["blk", "engine", "--volume", "vol", "--replica", &c_addr, "--nbd", &nbd2_s], &d.join("e2.log")));
    wait_for(&nbd2);
    let (ok, out) = qemu_io(&nbd2, &["write -f -P 6 0 1M", "read -P 6 0 1M"]);
    assert!(ok, "{out}");
}
