//! Tests of the QMP client: against a fake QMP server written here (a unix
//! listener in a temporary directory that speaks the protocol and misbehaves
//! on purpose), and against a real `qemu-system-x86_64` (TCG, no guest).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sheaf_qemu::qmp::{KvmInfo, Qmp, QmpConfig, QmpError, VersionTriple, VmRunState};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"#;

/// A fake QEMU: one connection, driven by a per-test script.
struct Fake {
    _dir: TempDir,
    path: PathBuf,
    server: JoinHandle<()>,
}

impl Fake {
    async fn start<F, Fut>(script: F) -> Fake
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind fake QMP socket");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (read, write) = stream.into_split();
            script(Conn { read: BufReader::new(read), write }).await;
        });
        Fake { _dir: dir, path, server }
    }

    /// Waits for the script to end, surfacing its panics.
    async fn finish(self) {
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Err(_) => panic!("fake server script did not finish"),
        }
    }
}

struct Conn {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Conn {
    async fn send_raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("fake write");
        self.write.flush().await.expect("fake flush");
    }

    async fn send(&mut self, value: Value) {
        let mut line = serde_json::to_vec(&value).expect("encode");
        line.extend_from_slice(b"\r\n");
        self.send_raw(&line).await;
    }

    /// Writes `bytes` in small pieces with pauses, to split lines across reads.
    async fn send_in_pieces(&mut self, bytes: &[u8], piece: usize) {
        for chunk in bytes.chunks(piece) {
            self.send_raw(chunk).await;
            tokio::task::yield_now().await;
        }
    }

    /// Next request from the client; `None` once it hung up.
    async fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self.read.read_line(&mut line).await.expect("fake read");
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).expect("client sent invalid JSON"))
    }

    async fn expect_request(&mut self, command: &str) -> Value {
        let request = self.recv().await.expect("client hung up");
        assert_eq!(request["execute"], command, "unexpected request {request}");
        assert!(request.get("id").is_some(), "request without id: {request}");
        request
    }

    async fn greet_and_negotiate(&mut self) {
        self.send_raw(format!("{GREETING}\r\n").as_bytes()).await;
        let request = self.expect_request("qmp_capabilities").await;
        assert!(request.get("arguments").is_none());
        self.send(json!({"return": {}, "id": request["id"]})).await;
    }
}

fn event(name: &str, data: Value) -> Value {
    json!({"event": name, "data": data, "timestamp": {"seconds": 1700000000, "microseconds": 5}})
}

async fn connect(fake: &Fake) -> Qmp {
    Qmp::connect(&fake.path).await.expect("connect to fake QMP")
}

#[tokio::test]
async fn handshake_and_typed_helpers() {
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        while let Some(request) = conn.recv().await {
            let id = request["id"].clone();
            let args = request.get("arguments").cloned().unwrap_or(Value::Null);
            let answer = match request["execute"].as_str().expect("execute is a string") {
                "query-status" => json!({"status": "paused", "singlestep": false, "running": false}),
                "query-kvm" => json!({"enabled": false, "present": true}),
                "query-version" => json!({"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "fake"}),
                "query-chardev" => json!([{"frontend-open": true, "filename": "unix:/x,server=on", "label": "mon"}]),
                "human-monitor-command" => json!(format!("ran {}\r\n", args["command-line"].as_str().expect("cmd"))),
                "query-migrate" => json!({"status": "completed", "total-time": 12}),
                "migrate" => {
                    assert_eq!(args, json!({"uri": "unix:/tmp/m.sock"}));
                    json!({})
                }
                "migrate-set-capabilities" => {
                    assert_eq!(
                        args,
                        json!({"capabilities": [
                            {"capability": "events", "state": true},
                            {"capability": "auto-converge", "state": false}
                        ]})
                    );
                    json!({})
                }
                "announce-self" => {
                    assert_eq!(args, json!({"initial": 50, "max": 550, "rounds": 5, "step": 50}));
                    json!({})
                }
                "query-block" | "query-blockstats" => json!([]),
                "stop" | "cont" | "system_powerdown" | "system_reset" => {
                    assert!(request.get("arguments").is_none());
                    json!({})
                }
                other => panic!("unexpected command {other}"),
            };
            conn.send(json!({"return": answer, "id": id})).await;
        }
    })
    .await;

    let qmp = connect(&fake).await;
    assert_eq!(qmp.greeting().version.qemu, VersionTriple { major: 7, minor: 2, micro: 0 });
    assert_eq!(qmp.greeting().capabilities, vec!["oob".to_owned()]);
    assert!(qmp.is_connected());

    assert_eq!(qmp.query_status().await.expect("status"), VmRunState { running: false, status: "paused".into() });
    assert_eq!(qmp.query_kvm().await.expect("kvm"), KvmInfo { enabled: false, present: true });
    assert_eq!(qmp.query_version().await.expect("version").qemu.major, 7);
    let chardevs = qmp.query_chardev().await.expect("chardev");
    assert_eq!(chardevs.len(), 1);
    assert_eq!(chardevs[0].label, "mon");
    assert!(chardevs[0].frontend_open);
    assert_eq!(qmp.human_monitor_command("info version").await.expect("hmp"), "ran info version\r\n");
    let migration = qmp.query_migrate().await.expect("query-migrate");
    assert_eq!(migration.status.as_deref(), Some("completed"));
    assert_eq!(migration.other["total-time"], 12);
    qmp.migrate("unix:/tmp/m.sock").await.expect("migrate");
    qmp.migrate_set_capabilities(&[("events", true), ("auto-converge", false)]).await.expect("caps");
    qmp.announce_self().await.expect("announce");
    assert_eq!(qmp.query_block().await.expect("block"), json!([]));
    assert_eq!(qmp.query_blockstats().await.expect("blockstats"), json!([]));
    qmp.stop().await.expect("stop");
    qmp.cont().await.expect("cont");
    qmp.system_powerdown().await.expect("powerdown");
    qmp.system_reset().await.expect("reset");
    assert_eq!(qmp.malformed_lines(), 0);

    // Dropping every handle closes the socket, which ends the script.
    drop(qmp);
    fake.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_are_correlated_by_id() {
    const CALLS: usize = 50;
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        let mut requests = Vec::new();
        for _ in 0..CALLS {
            requests.push(conn.expect_request("echo").await);
        }
        // Answer in reverse order, an event before every answer, several
        // messages per write and lines cut across writes.
        let mut bytes = Vec::new();
        for (k, request) in requests.iter().rev().enumerate() {
            for message in
                [event("TICK", json!({"k": k})), json!({"return": request["arguments"].clone(), "id": request["id"]})]
            {
                bytes.extend(serde_json::to_vec(&message).expect("encode"));
                bytes.push(b'\n');
            }
        }
        conn.send_in_pieces(&bytes, 37).await;
        assert!(conn.recv().await.is_none(), "client should hang up");
    })
    .await;

    let qmp = connect(&fake).await;
    let mut events = qmp.events();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let qmp = qmp.clone();
            tokio::spawn(async move { (i, qmp.execute("echo", Some(json!({"n": i}))).await) })
        })
        .collect();
    for call in calls {
        let (i, answer) = call.await.expect("join");
        assert_eq!(answer.expect("echo answer"), json!({"n": i}), "answer of call {i}");
    }
    for k in 0..CALLS {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("event in time")
            .expect("event delivered");
        assert_eq!(event.event, "TICK");
        assert_eq!(event.data, json!({"k": k}));
        assert_eq!(event.timestamp.map(|t| t.seconds), Some(1700000000));
    }
    let recent = qmp.recent_events();
    assert_eq!(recent.len(), CALLS);
    assert_eq!(recent.last().map(|e| e.data.clone()), Some(json!({"k": CALLS - 1})));
    assert_eq!(qmp.malformed_lines(), 0);
    drop(qmp);
    fake.finish().await;
}

#[tokio::test]
async fn error_answers_map_to_command_errors() {
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        let request = conn.expect_request("bogus").await;
        conn.send(json!({"id": request["id"], "error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}}))
            .await;
        let request = conn.expect_request("query-status").await;
        conn.send(json!({"return": {"status": "running", "running": true}, "id": request["id"]})).await;
        assert!(conn.recv().await.is_none());
    })
    .await;

    let qmp = connect(&fake).await;
    match qmp.execute("bogus", None).await {
        Err(QmpError::Command { class, desc }) => {
            assert_eq!(class, "CommandNotFound");
            assert_eq!(desc, "The command bogus has not been found");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    // The connection keeps working after an error.
    assert!(qmp.query_status().await.expect("status").running);
    drop(qmp);
    fake.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_fails_pending_and_later_calls_promptly() {
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        for _ in 0..3 {
            conn.expect_request("query-status").await;
        }
        conn.send(event("SHUTDOWN", json!({"guest": false}))).await;
        // Hang up with three calls unanswered (QEMU exited).
    })
    .await;

    let qmp = connect(&fake).await;
    let mut events = qmp.events();
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let qmp = qmp.clone();
            tokio::spawn(async move { qmp.query_status().await })
        })
        .collect();
    for call in calls {
        let result = call.await.expect("join");
        assert!(matches!(result, Err(QmpError::Disconnected)), "expected Disconnected, got {result:?}");
    }
    // Well before the 10 s call deadline.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    tokio::time::timeout(Duration::from_secs(3), qmp.closed()).await.expect("closed() resolves");
    assert!(!qmp.is_connected());
    let later = qmp.execute("query-status", None).await;
    assert!(matches!(later, Err(QmpError::Disconnected)), "got {later:?}");
    assert!(matches!(qmp.quit().await, Ok(())), "quit on a closed connection is a no-op");

    assert_eq!(events.recv().await.expect("shutdown event").event, "SHUTDOWN");
    assert!(matches!(events.recv().await, Err(RecvError::Closed)));
    assert!(matches!(qmp.events().recv().await, Err(RecvError::Closed)));
    assert_eq!(qmp.recent_events().len(), 1);
    fake.finish().await;
}

#[tokio::test]
async fn malformed_input_is_logged_and_skipped() {
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        let request = conn.expect_request("first").await;
        let garbage: &[&[u8]] = &[
            b"this is not json\n",
            b"{\"return\": \n",
            b"[1, 2, 3]\n",
            b"\"a string\"\n",
            b"\xff\xfe\x00garbage\n",
            b"{\"event\": 5}\n",
            b"{\"something\": \"else\"}\n",
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}\n",
            b"{\"QMP\": {}}\n",
            b"\n   \r\n",
        ];
        for line in garbage {
            conn.send_raw(line).await;
        }
        // An answer for an id nobody waits for, then the real one.
        conn.send(json!({"return": "stray", "id": 987654})).await;
        conn.send(json!({"return": "stray", "id": "not-a-number"})).await;
        conn.send(json!({"return": "first", "id": request["id"]})).await;

        let request = conn.expect_request("second").await;
        conn.send(json!({"id": request["id"], "neither": true})).await;
        let request = conn.expect_request("third").await;
        conn.send(json!({"id": request["id"], "error": "not an object"})).await;
        let request = conn.expect_request("fourth").await;
        conn.send(json!({"id": request["id"], "return": {"ok": true}})).await;
        assert!(conn.recv().await.is_none());
    })
    .await;

    let qmp = connect(&fake).await;
    assert_eq!(qmp.execute("first", None).await.expect("first"), json!("first"));
    let malformed_first = qmp.malformed_lines();
    assert!(malformed_first >= 8, "counted {malformed_first} malformed lines");
    assert!(matches!(qmp.execute("second", None).await, Err(QmpError::Protocol(_))));
    assert!(matches!(qmp.execute("third", None).await, Err(QmpError::Protocol(_))));
    assert_eq!(qmp.execute("fourth", None).await.expect("fourth"), json!({"ok": true}));
    assert!(qmp.malformed_lines() > malformed_first);
    assert!(qmp.recent_events().is_empty());
    drop(qmp);
    fake.finish().await;
}

#[tokio::test]
async fn timed_out_call_does_not_steal_a_later_answer() {
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        let slow = conn.expect_request("slow").await;
        let fast = conn.expect_request("fast").await;
        conn.send(json!({"return": "slow", "id": slow["id"]})).await;
        conn.send(json!({"return": "fast", "id": fast["id"]})).await;
        assert!(conn.recv().await.is_none());
    })
    .await;

    let qmp = connect(&fake).await;
    let slow = qmp.execute_timeout("slow", None, Duration::from_millis(200)).await;
    match slow {
        Err(QmpError::Timeout { command, timeout }) => {
            assert_eq!(command, "slow");
            assert_eq!(timeout, Duration::from_millis(200));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let fast = qmp.with_timeout(Duration::from_secs(5));
    assert_eq!(fast.timeout(), Duration::from_secs(5));
    assert_eq!(fast.execute("fast", None).await.expect("fast"), json!("fast"));
    drop((qmp, fast));
    fake.finish().await;
}

#[tokio::test]
async fn large_answer_in_many_pieces() {
    const SIZE: usize = 8 * 1024 * 1024;
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        let request = conn.expect_request("big").await;
        let payload: String = (0..SIZE).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let mut bytes = serde_json::to_vec(&json!({"return": {"blob": payload}, "id": request["id"]})).expect("encode");
        bytes.push(b'\n');
        conn.send_in_pieces(&bytes, 61_111).await;
        assert!(conn.recv().await.is_none());
    })
    .await;

    let qmp = connect(&fake).await;
    let answer = qmp.execute("big", None).await.expect("big answer");
    let blob = answer["blob"].as_str().expect("blob is a string");
    assert_eq!(blob.len(), SIZE);
    assert!(blob.starts_with("abcdefghijklmnopqrstuvwxyzabc"));
    assert_eq!(&blob[SIZE - 1..], char::from(b'a' + ((SIZE - 1) % 26) as u8).to_string());
    drop(qmp);
    fake.finish().await;
}

#[tokio::test]
async fn quit_that_closes_without_answer_succeeds() {
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        conn.expect_request("quit").await;
        conn.send(event("SHUTDOWN", json!({"guest": false, "reason": "host-qmp-quit"}))).await;
    })
    .await;

    let qmp = connect(&fake).await;
    qmp.quit().await.expect("quit");
    tokio::time::timeout(Duration::from_secs(3), qmp.closed()).await.expect("closed");
    assert!(matches!(qmp.query_status().await, Err(QmpError::Disconnected)));
    assert_eq!(qmp.recent_events().first().map(|e| e.event.clone()), Some("SHUTDOWN".to_owned()));
    fake.finish().await;
}

#[tokio::test]
async fn arguments_must_be_an_object() {
    let fake = Fake::start(|mut conn| async move {
        conn.greet_and_negotiate().await;
        let request = conn.expect_request("ok").await;
        assert!(request.get("arguments").is_none(), "null arguments are omitted");
        conn.send(json!({"return": {}, "id": request["id"]})).await;
        assert!(conn.recv().await.is_none());
    })
    .await;

    let qmp = connect(&fake).await;
    assert!(matches!(qmp.execute("bad", Some(json!([1]))).await, Err(QmpError::Protocol(_))));
    qmp.execute("ok", Some(Value::Null)).await.expect("ok");
    drop(qmp);
    fake.finish().await;
}

#[tokio::test]
async fn connect_failures() {
    // No socket.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.sock");
    assert!(matches!(Qmp::connect(&missing).await, Err(QmpError::Connect { .. })));

    // A greeting that is not one.
    let fake = Fake::start(|mut conn| async move {
        conn.send_raw(b"{\"hello\": 1}\n").await;
    })
    .await;
    assert!(matches!(Qmp::connect(&fake.path).await, Err(QmpError::Protocol(_))));
    fake.finish().await;

    // Hang-up before the greeting.
    let fake = Fake::start(|_conn| async move {}).await;
    assert!(matches!(Qmp::connect(&fake.path).await, Err(QmpError::Disconnected)));
    fake.finish().await;

    // No greeting at all (e.g. another client holds the monitor).
    let fake = Fake::start(|mut conn| async move {
        assert!(conn.recv().await.is_none());
    })
    .await;
    let config = QmpConfig { timeout: Duration::from_millis(300), ..QmpConfig::default() };
    match Qmp::connect_with(&fake.path, config).await {
        Err(QmpError::Timeout { command, .. }) => assert_eq!(command, "greeting"),
        other => panic!("expected a greeting timeout, got {other:?}"),
    }
    fake.finish().await;

    // Capabilities negotiation refused.
    let fake = Fake::start(|mut conn| async move {
        conn.send_raw(format!("{GREETING}\n").as_bytes()).await;
        let request = conn.expect_request("qmp_capabilities").await;
        conn.send(json!({"error": {"class": "GenericError", "desc": "no"}, "id": request["id"]})).await;
        assert!(conn.recv().await.is_none());
    })
    .await;
    assert!(matches!(Qmp::connect(&fake.path).await, Err(QmpError::Command { .. })));
    fake.finish().await;
}

/// Waits up to `within` for the monitor socket of `child` and connects.
async fn connect_to_qemu(child: &mut tokio::process::Child, socket: &Path, log: &Path, within: Duration) -> Qmp {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("poll QEMU") {
            panic!("QEMU exited early with {status}: {}", read_log(log));
        }
        match Qmp::connect(socket).await {
            Ok(qmp) => return qmp,
            Err(QmpError::Connect { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to QEMU's QMP socket: {e}; log: {}", read_log(log)),
        }
    }
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test]
async fn real_qemu_prelaunch_queries_and_quit() {
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    if !qemu.exists() {
        println!("SKIPPED: {} is not installed", qemu.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("qmp.sock");
    let log = dir.path().join("qemu.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = tokio::process::Command::new(qemu)
        .args(["-machine", "none", "-accel", "tcg", "-nodefaults", "-display", "none", "-S"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("start qemu-system-x86_64");
    let qmp = connect_to_qemu(&mut child, &socket, &log, Duration::from_secs(30)).await;

    assert!(qmp.greeting().capabilities.iter().any(|c| c == "oob"), "greeting {:?}", qmp.greeting());
    let version = qmp.query_version().await.expect("query-version");
    assert_eq!(version.qemu.major, 7, "version {version:?}");
    assert_eq!(version.qemu, qmp.greeting().version.qemu);

    let status = qmp.query_status().await.expect("query-status");
    assert_eq!(status, VmRunState { running: false, status: "prelaunch".into() });

    let kvm = qmp.query_kvm().await.expect("query-kvm");
    assert!(!kvm.enabled, "this test runs TCG only: {kvm:?}");

    let chardevs = qmp.query_chardev().await.expect("query-chardev");
    assert!(
        chardevs.iter().any(|c| c.filename.starts_with("unix:") && c.filename.contains("qmp.sock")),
        "the monitor's own chardev is listed: {chardevs:?}"
    );
    let hmp = qmp.human_monitor_command("info version").await.expect("human-monitor-command");
    assert!(hmp.starts_with("7."), "info version: {hmp:?}");
    let migration = qmp.query_migrate().await.expect("query-migrate");
    assert_eq!(migration.status, None);
    match qmp.execute("no-such-command", None).await {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected CommandNotFound, got {other:?}"),
    }

    let mut events = qmp.events();
    qmp.quit().await.expect("quit");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("QEMU exits after quit")
        .expect("wait for QEMU");
    assert!(status.success(), "QEMU exit status {status}");

    let shutdown = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("SHUTDOWN event in time")
        .expect("SHUTDOWN event");
    assert_eq!(shutdown.event, "SHUTDOWN");
    assert_eq!(shutdown.data["reason"], "host-qmp-quit");

    tokio::time::timeout(Duration::from_secs(5), qmp.closed()).await.expect("client notices the exit");
    let after = qmp.query_status().await;
    assert!(matches!(after, Err(QmpError::Disconnected)), "after quit: {after:?}");
}

/// Waits for the `DEVICE_DELETED` of device `id`.
async fn device_deleted(events: &mut tokio::sync::broadcast::Receiver<sheaf_qemu::qmp::QmpEvent>, id: &str) -> bool {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(ev) if sheaf_qemu::hotplug::is_device_deleted(&ev.event, &ev.data, id) => return true,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return false,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait).await.unwrap_or(false)
}

async fn inventory(qmp: &Qmp) -> sheaf_qemu::hotplug::Inventory {
    use sheaf_qemu::hotplug::Inventory;
    let mut inv = Inventory::from_qemu(
        &qmp.query_pci().await.expect("query-pci"),
        &qmp.query_block().await.expect("query-block"),
        &qmp.query_named_block_nodes().await.expect("query-named-block-nodes"),
        &serde_json::to_value(qmp.query_chardev().await.expect("query-chardev")).expect("chardevs"),
    );
    inv.add_peripherals(&qmp.qom_list("/machine/peripheral").await.expect("qom-list"));
    for port in inv.free_ports.clone() {
        let qom = qmp.qom_list(&Inventory::port_bus_path(&port)).await.expect("qom-list");
        inv.add_port_children(&port, &qom);
    }
    inv
}

/// The hotplug arguments against a real QEMU (q35 with the machine
/// builder's hotplug port and SCSI controller, no guest) and a real NBD
/// server: a SCSI disk and a virtio disk on a root port come and go, and
/// the inventory follows; a second add of the same id is refused by QEMU.
#[tokio::test]
async fn real_qemu_hotplugs_nbd_disks_on_scsi_and_a_root_port() {
    use sheaf_qemu::hotplug::{Backend, HotplugDisk};
    use sheaf_qemu::machine::DiskBus;
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    if !qemu.exists() || !Path::new("/usr/bin/qemu-nbd").exists() {
        println!("SKIPPED: qemu-system-x86_64 or qemu-nbd is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.raw");
    std::fs::File::create(&image).and_then(|f| f.set_len(16 << 20)).expect("image");
    let nbd = dir.path().join("disk.nbd");
    let mut server = tokio::process::Command::new("qemu-nbd")
        .args(["--format", "raw", "--shared", "2", "--persistent", "--socket"])
        .arg(&nbd)
        .arg(&image)
        .kill_on_drop(true)
        .spawn()
        .expect("start qemu-nbd");
    let socket = dir.path().join("qmp.sock");
    let log = dir.path().join("qemu.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = tokio::process::Command::new(qemu)
        .args(["-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S"])
        .args(["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"])
        .args(["-device", "virtio-scsi-pci,id=scsi0"])
        .args([
            "-device",
            &format!("pcie-root-port,id={},chassis=1,io-reserve=0", sheaf_qemu::machine::hotplug_port(0)),
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("start qemu-system-x86_64");
    let qmp = connect_to_qemu(&mut child, &socket, &log, Duration::from_secs(30)).await;
    for _ in 0..100 {
        if nbd.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = inventory(&qmp).await;
    assert_eq!(before.free_ports, vec!["hotplug-port0".to_string()], "{before:?}");

    let disk = |id: &str, bus| HotplugDisk {
        id: id.into(),
        backend: Backend::Nbd { socket: nbd.clone() },
        bus,
        serial: Some(format!("{id}-serial")),
        readonly: false,
        vcpus: 1,
    };
    let mut events = qmp.events();
    // SCSI: no port needed; removal is immediate.
    let scsi = disk("data1", DiskBus::Scsi);
    for node in scsi.blockdev_add() {
        qmp.blockdev_add(node).await.expect("blockdev-add");
    }
    qmp.device_add(scsi.device_add(None)).await.expect("device_add scsi-hd");
    let inv = inventory(&qmp).await;
    assert!(inv.has_device("data1") && inv.nodes.contains("drive-data1") && inv.nodes.contains("drive-data1-file"));
    assert_eq!(inv.free_ports, before.free_ports, "SCSI takes no port");
    match qmp.device_add(scsi.device_add(None)).await {
        Err(QmpError::Command { desc, .. }) => assert!(desc.contains("data1"), "{desc}"),
        other => panic!("a second device of the same id must be refused: {other:?}"),
    }
    // The device's medium is the NBD export, at its size.
    let block = qmp.query_block().await.expect("query-block");
    let data1 = block.as_array().into_iter().flatten().find(|b| b["qdev"] == "data1").cloned().unwrap_or_default();
    let file = data1.pointer("/inserted/image/filename").and_then(Value::as_str).unwrap_or_default();
    assert!(file.contains(&nbd.display().to_string()), "{data1}");
    assert_eq!(data1.pointer("/inserted/image/virtual-size"), Some(&json!(16 << 20)), "{data1}");

    // virtio-blk on the free root port.
    let virtio = disk("data2", DiskBus::Virtio);
    for node in virtio.blockdev_add() {
        qmp.blockdev_add(node).await.expect("blockdev-add");
    }
    qmp.device_add(virtio.device_add(Some("hotplug-port0"))).await.expect("device_add virtio-blk-pci");
    let inv = inventory(&qmp).await;
    assert!(inv.has_device("data2"), "{inv:?}");
    assert_eq!((inv.free_ports.len(), inv.used_ports.clone()), (0, vec!["hotplug-port0".to_string()]), "{inv:?}");

    qmp.device_del("data1").await.expect("device_del scsi");
    assert!(device_deleted(&mut events, "data1").await, "no DEVICE_DELETED for the SCSI disk");
    qmp.blockdev_del("drive-data1").await.expect("blockdev-del raw");
    qmp.blockdev_del("drive-data1-file").await.expect("blockdev-del nbd");
    qmp.device_del("data2").await.expect("device_del virtio");
    assert!(device_deleted(&mut events, "data2").await, "no DEVICE_DELETED for the virtio disk");
    for node in ["drive-data2", "drive-data2-file"] {
        qmp.blockdev_del(node).await.expect("blockdev-del");
    }
    // A vhost-user backend's chardev (the engine is not there: it keeps
    // trying to connect), and guest RAM that is not shared.
    let vhost = HotplugDisk {
        backend: Backend::VhostUser { socket: dir.path().join("none.vhost") },
        ..disk("fast", DiskBus::Virtio)
    };
    qmp.chardev_add(vhost.chardev_add().expect("chardev args")).await.expect("chardev-add");
    assert!(inventory(&qmp).await.chardevs.contains("vhost-fast"));
    qmp.chardev_remove("vhost-fast").await.expect("chardev-remove");
    assert!(!sheaf_qemu::hotplug::shared_memory(&qmp.query_memdev().await.expect("query-memdev")));

    let after = inventory(&qmp).await;
    assert!(!after.chardevs.contains("vhost-fast"), "{after:?}");
    assert!(!after.has_device("data1") && !after.has_device("data2"), "{after:?}");
    assert!(!after.nodes.iter().any(|n| n.starts_with("drive-data")), "{after:?}");
    assert_eq!(after.free_ports, before.free_ports);
    qmp.quit().await.expect("quit");
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    let _ = server.kill().await;
}
