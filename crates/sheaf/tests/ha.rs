//! The HA control plane: three `sheaf server`s, each in a network
//! namespace of its own with its own etcd member ([`support::ha`]); the
//! first starts the cluster (`--cluster-init`), the two others join it
//! with its join token, and a fourth is refused. A killed etcd member is
//! restarted by its server. Writers create ConfigMaps through the servers
//! (the client fails over between them) while the first server and its
//! etcd are SIGKILLed: the survivors keep accepting writes within seconds,
//! every acknowledged write is there afterwards, the leader Lease moves to
//! a survivor whose controllers act (a VM gets its VMI), and the Node
//! heartbeats of an agent given all three URLs and of one given only the
//! first (it learns the others from the servers' Leases) go on. The
//! killed server, started again, comes back from its data directory; a
//! leader stopped with SIGTERM hands the lease over at once and stops its
//! etcd member. Needs root and Debian's etcd-server.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sheaf_client::remote::RemoteApi;
use sheaf_client::{Api, Gvr};
use support::ha::ControlPlane;

const CONFIGMAPS: Gvr = Gvr { group: "", version: "v1", plural: "configmaps" };

/// What the writers saw.
#[derive(Default)]
struct Writes {
    acked: Vec<(String, Instant)>,
    failed: Vec<(String, Instant, String)>,
}

/// A writer: creates ConfigMaps `PREFIX-N` one after another through a
/// client of every server until told to stop.
fn writer(
    api: RemoteApi,
    prefix: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Writes>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("{prefix}-{n}");
                n += 1;
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name, "namespace": "default"}, "data": {"n": n.to_string()}});
                let r =
                    tokio::time::timeout(Duration::from_secs(30), api.create(CONFIGMAPS, Some("default"), cm)).await;
                {
                    let mut w = log.lock().expect("lock");
                    match r {
                        Ok(Ok(_)) => w.acked.push((name, Instant::now())),
                        Ok(Err(e)) => w.failed.push((name, Instant::now(), e.to_string())),
                        Err(_) => w.failed.push((name, Instant::now(), "timed out".into())),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    })
}

fn lease_holder(cp: &ControlPlane, via: usize) -> String {
    cp.servers[via].kubectl_out(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "sheaf-controllers",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

#[test]
fn three_servers_survive_losing_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::new(tmp.path(), 3, 2);
    let started = Instant::now();
    cp.start_server(0);
    cp.start_server(1);
    cp.start_server(2);
    eprintln!("three servers up in {:?}", started.elapsed());

    // One store: written through one server, read through another.
    let out = cp.servers[0].kubectl(&["create", "configmap", "shared", "--from-literal=k=v"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cp.wait_for("s2 reads what s0 wrote", Duration::from_secs(10), || {
        cp.servers[2].kubectl_out(&["get", "cm", "shared", "-o", "jsonpath={.data.k}"]) == "v"
    });
    // The first server leads (it started first); the others wait.
    cp.wait_for("s0 holds the leader lease", Duration::from_secs(10), || lease_holder(&cp, 1).starts_with("s0_"));

    // A fourth server is refused, with a message that says why.
    let spare = cp.spare[1].clone();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &spare.ns, env!("CARGO_BIN_EXE_sheaf"), "server", "--no-agent"])
        .arg("--data-dir")
        .arg(tmp.path().join("s3"))
        .args(["--listen", &format!("{}:6443", spare.ip), "--node-name", "s3"])
        .args(["--server", &cp.servers[1].url(), "--token", &cp.join_token()])
        .env_remove("SHEAF_TOKEN")
        .output()
        .expect("sheaf server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("already has 3 servers"), "{stderr}");

    // A server restarts its etcd member when it dies.
    let before = cp.servers[1].etcd_pids();
    assert_eq!(before.len(), 1, "one etcd in s1's namespace: {before:?}");
    let _ = std::process::Command::new("kill").args(["-9", &before[0].to_string()]).status();
    cp.wait_for("s1 restarts its etcd", Duration::from_secs(20), || {
        let now = cp.servers[1].etcd_pids();
        now.len() == 1 && now != before
    });
    cp.wait_for("s1 serves again", Duration::from_secs(20), || {
        cp.servers[1].kubectl_out(&["get", "cm", "shared", "-o", "jsonpath={.data.k}"]) == "v"
    });

    // An agent that knows every server, s0 first.
    let agent_log = cp.start_agent(0, "agent-0", &cp.urls(&[0, 1, 2]));
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    cp.wait_for("the agent's Node is Ready", Duration::from_secs(60), || {
        cp.servers[1].kubectl_out(&["get", "node", "agent-0", "-o", ready]) == "True"
    });

    // An agent told only about s0 learns the others from their Leases.
    let learner_log = cp.start_agent(1, "agent-1", &cp.servers[0].url());
    cp.wait_for("agent-1's Node is Ready", Duration::from_secs(60), || {
        cp.servers[1].kubectl_out(&["get", "node", "agent-1", "-o", ready]) == "True"
    });
    cp.wait_for("agent-1 learns s1 and s2", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(&learner_log).unwrap_or_default();
        [1, 2].iter().all(|i| log.contains(&format!("learnt an API server server={}", cp.servers[*i].url())))
    });

    // Writers through clients of every server, s0 first.
    let ca = cp.ca_pem();
    let token = cp.admin_token();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let writers: Vec<_> = [("a", [0, 1, 2]), ("b", [0, 2, 1])]
        .into_iter()
        .map(|(prefix, order)| {
            let api = RemoteApi::new(&cp.urls(&order), &ca, &token).expect("client");
            writer(api, format!("w{prefix}"), stop.clone(), writes.clone())
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let acked_before = writes.lock().expect("lock").acked.len();
    assert!(acked_before > 5, "the writers write: {acked_before} writes\n{}", cp.logs());

    // SIGKILL s0 and its etcd member.
    let killed_at = Instant::now();
    cp.kill_server(0);
    cp.wait_for("writes are acknowledged again after the kill", Duration::from_secs(15), || {
        writes.lock().expect("lock").acked.iter().any(|(_, t)| *t > killed_at + Duration::from_millis(500))
    });
    let first_after = writes
        .lock()
        .expect("lock")
        .acked
        .iter()
        .find(|(_, t)| *t > killed_at + Duration::from_millis(500))
        .map(|(_, t)| t.duration_since(killed_at))
        .expect("a write after the kill");
    eprintln!("first acknowledged write {first_after:?} after the kill");
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    let w = writes.lock().expect("lock");
    let after = w.acked.iter().filter(|(_, t)| *t > killed_at).count();
    eprintln!("{} writes acknowledged ({after} after the kill), {} failed", w.acked.len(), w.failed.len());
    for (name, t, e) in &w.failed {
        eprintln!("  {name} failed {:?} after the kill: {e}", t.saturating_duration_since(killed_at));
    }
    assert!(after > 10, "writes go on after the kill: {after}");

    // Every acknowledged write is there.
    let survivors = RemoteApi::new(&cp.urls(&[1, 2]), &ca, &token).expect("client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (items, _) = rt.block_on(survivors.list(CONFIGMAPS, Some("default"), &Default::default())).expect("list");
    let present: BTreeSet<String> =
        items.iter().filter_map(|i| i.pointer("/metadata/name").and_then(|n| n.as_str()).map(str::to_string)).collect();
    let lost: Vec<&String> = w.acked.iter().map(|(n, _)| n).filter(|n| !present.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    drop(w);

    // The lease moves to a survivor, and its controllers act.
    cp.wait_for("a survivor takes the leader lease", Duration::from_secs(40), || {
        let h = lease_holder(&cp, 1);
        h.starts_with("s1_") || h.starts_with("s2_")
    });
    eprintln!("the lease moved within {:?} of the kill", killed_at.elapsed());
    let transitions = cp.servers[1].kubectl_out(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "sheaf-controllers",
        "-o",
        "jsonpath={.spec.leaseTransitions}",
    ]);
    assert!(transitions.parse::<i32>().unwrap_or(0) >= 1, "leaseTransitions {transitions:?}");
    // A VM that no node can take: the VM controller still makes its VMI.
    let vm = support::guest::tiny_vm("after-failover", "x").replacen(
        "      terminationGracePeriodSeconds: 5\n",
        "      nodeSelector:\n        kubernetes.io/hostname: no-such-node\n      terminationGracePeriodSeconds: 5\n",
        1,
    );
    assert!(vm.contains("no-such-node"), "{vm}");
    let out = cp.servers[2].kubectl_stdin(&["apply", "-f", "-"], Some(&vm));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cp.wait_for("the VM controller creates the VMI", Duration::from_secs(30), || {
        cp.servers[1].kubectl(&["get", "vmi", "after-failover"]).status.success()
    });

    // The agents' heartbeats go on through another server.
    let heartbeat = "jsonpath={.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime}";
    for (node, log) in [("agent-0", &agent_log), ("agent-1", &learner_log)] {
        let seen = cp.servers[1].kubectl_out(&["get", "node", node, "-o", heartbeat]);
        assert!(!seen.is_empty(), "{node} has a heartbeat");
        let agent_text = || std::fs::read_to_string(log).unwrap_or_default();
        let beat = support::eventually(Duration::from_secs(40), || {
            let now = cp.servers[2].kubectl_out(&["get", "node", node, "-o", heartbeat]);
            !now.is_empty() && now != seen
        });
        assert!(beat, "no heartbeat of {node} after s0 died\n--- agent\n{}\n{}", agent_text(), cp.logs());
        assert_eq!(cp.servers[1].kubectl_out(&["get", "node", node, "-o", ready]), "True");
        assert!(agent_text().contains("switched to another API server"), "{}", agent_text());
    }

    // s0 comes back from its data directory: its member rejoins and
    // catches up, and it serves what was written while it was gone.
    let last = writes.lock().expect("lock").acked.last().map(|(n, _)| n.clone()).expect("a write");
    cp.start_server(0);
    cp.wait_for("the restarted s0 serves the latest write", Duration::from_secs(30), || {
        cp.servers[0].kubectl(&["get", "cm", &last]).status.success()
    });
    let h = lease_holder(&cp, 0);
    assert!(h.starts_with("s1_") || h.starts_with("s2_"), "the lease stays with the survivor: {h}");

    // A leader stopped with SIGTERM hands the lease over at once, and
    // stops its etcd member with it.
    let leader = if h.starts_with("s1_") { 1 } else { 2 };
    let stopped_at = Instant::now();
    assert!(cp.terminate_server(leader, Duration::from_secs(20)), "server and member exit on SIGTERM\n{}", cp.logs());
    let other = 3 - leader;
    cp.wait_for("the lease moves at once after a SIGTERM", Duration::from_secs(10), || {
        let h = lease_holder(&cp, 0);
        h.starts_with("s0_") || h.starts_with(&format!("s{other}_"))
    });
    eprintln!("the lease moved {:?} after the SIGTERM", stopped_at.elapsed());
    eprintln!("done in {:?}", started.elapsed());
}
