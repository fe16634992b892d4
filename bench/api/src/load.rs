//! The load: creates of VirtualMachines, merge-patch updates watched by a
//! watcher of the same process, and full lists.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

pub const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const SENT_NS: &str = "bench.sheaf.io/sent-ns";
const SEQ: &str = "bench.sheaf.io/seq";

/// Nanoseconds on this process's monotonic clock.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One client per connection; each negotiates HTTP/2 (ALPN) and carries
/// many concurrent requests.
pub fn clients(ca_pem: &[u8], n: usize) -> anyhow::Result<Vec<reqwest::Client>> {
    (0..n.max(1))
        .map(|_| {
            Ok(reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
                .tls_built_in_root_certs(false)
                .timeout(Duration::from_secs(60))
                .build()?)
        })
        .collect()
}

pub fn vm_name(i: usize) -> String {
    format!("bench-vm-{i:05}")
}

/// A realistic VirtualMachine: a Fedora container disk, cloud-init user
/// data, 2 vCPUs, 2 GiB, masquerade networking (about 1.5 KB of JSON).
pub fn manifest(i: usize) -> Value {
    let name = vm_name(i);
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": "web", "tier": "frontend", "bench.sheaf.io/batch": "api"},
            "annotations": {"description": "API benchmark virtual machine"}
        },
        "spec": {
            "runStrategy": "Halted",
            "template": {
                "metadata": {"labels": {"kubevirt.io/domain": name, "kubevirt.io/size": "small"}},
                "spec": {
                    "domain": {
                        "cpu": {"cores": 2, "sockets": 1, "threads": 1},
                        "memory": {"guest": "2Gi"},
                        "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}},
                        "machine": {"type": "q35"},
                        "firmware": {"bootloader": {"efi": {"secureBoot": false}}},
                        "devices": {
                            "disks": [
                                {"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 1},
                                {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}
                            ],
                            "interfaces": [{"name": "default", "masquerade": {}, "model": "virtio"}],
                            "rng": {}
                        }
                    },
                    "terminationGracePeriodSeconds": 180,
                    "evictionStrategy": "LiveMigrate",
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [
                        {"name": "rootdisk", "containerDisk": {"image": "quay.io/containerdisks/fedora:40", "imagePullPolicy": "IfNotPresent"}},
                        {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": format!(
                            "#cloud-config\nhostname: {name}\nuser: fedora\nchpasswd:\n  expire: false\n\
                             ssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbenchmarkkeybenchmarkkeybenchmarkkey0001 ops@example.com\n\
                             packages:\n  - nginx\n  - qemu-guest-agent\n\
                             runcmd:\n  - systemctl enable --now qemu-guest-agent\n  - systemctl enable --now nginx\n"
                        )}}
                    ]
                }
            }
        }
    })
}

/// Latencies of a batch of requests and how long the batch took.
pub struct Batch {
    pub wall: Duration,
    pub latencies: Vec<Duration>,
    pub warnings: usize,
}

/// Reads the whole answer; fails unless it is a 2xx. Returns the number
/// of `Warning` headers.
async fn expect_success(resp: reqwest::Response, what: &str) -> anyhow::Result<usize> {
    let status = resp.status();
    let warnings = resp.headers().get_all("warning").iter().count();
    let body = resp.bytes().await.with_context(|| format!("{what}: read the response"))?;
    if !status.is_success() {
        bail!("{what}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(warnings)
}

/// POSTs `n` VirtualMachines, `concurrency` at a time, spread over the
/// clients. Bodies are encoded before the clock starts.
pub async fn create(
    clients: &[reqwest::Client],
    base: &str,
    token: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Batch> {
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new((0..n).map(|i| serde_json::to_vec(&manifest(i))).collect::<Result<_, _>>()?);
    let url = Arc::new(format!("{base}{VMS}?fieldValidation=Strict"));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (http, url, token, bodies, next) =
            (clients[w % clients.len()].clone(), url.clone(), token.to_string(), bodies.clone(), next.clone());
        workers.spawn(async move {
            let mut lat = Vec::new();
            let mut warnings = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    return anyhow::Ok((lat, warnings));
                }
                let t0 = Instant::now();
                let resp = http
                    .post(url.as_str())
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(bodies[i].clone())
                    .send()
                    .await
                    .with_context(|| format!("create {}", vm_name(i)))?;
                warnings += expect_success(resp, &format!("create {}", vm_name(i))).await?;
                lat.push(t0.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(n);
    let mut warnings = 0;
    while let Some(r) = workers.join_next().await {
        let (lat, w) = r??;
        latencies.extend(lat);
        warnings += w;
    }
    Ok(Batch { wall: started.elapsed(), latencies, warnings })
}

/// How updates are sent.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Closed loop: this many writers, each sending its next update as
    /// soon as the previous one is answered.
    Writers(usize),
    /// Open loop: one update every 1/rate s, whatever the answers.
    Rate(u32),
}

/// Results of updates seen through a watch.
pub struct Watched {
    pub updates: Batch,
    /// Watch event received − update sent (same monotonic clock).
    pub send_to_event: Vec<Duration>,
    /// Watch event received − update's 2xx received, in ns; negative when
    /// the event arrived before the answer.
    pub ack_to_event_ns: Vec<i64>,
    pub missing: usize,
}

/// Which objects are updated, and how.
#[derive(Clone, Copy, Debug)]
pub struct UpdatePlan {
    /// Objects there are (`bench-vm-00000` onwards).
    pub objects: usize,
    /// Updates to send, each to its own object.
    pub updates: usize,
    /// Index of the first object updated.
    pub first: usize,
    pub pace: Pace,
}

/// Opens a watch on the VirtualMachines from the current revision, then
/// merge-patches `updates` of them (a label and an annotation holding
/// the send time in ns) and matches every event to its update.
pub async fn watch_updates(
    clients: &[reqwest::Client],
    watch_client: &reqwest::Client,
    base: &str,
    token: &str,
    plan: UpdatePlan,
) -> anyhow::Result<Watched> {
    let UpdatePlan { objects, updates, first, pace } = plan;
    // The revision to watch from.
    let list: Value = watch_client
        .get(format!("{base}{VMS}?limit=1"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let rv =
        list.pointer("/metadata/resourceVersion").and_then(Value::as_str).context("list has no resourceVersion")?;
    let mut resp = watch_client
        .get(format!("{base}{VMS}?watch=true&resourceVersion={rv}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(600))
        .send()
        .await?
        .error_for_status()
        .context("open the watch")?;
    // The server answers once its store watch is registered: from here on
    // every update is seen.
    let watcher = tokio::spawn(async move {
        let mut received: Vec<Option<u64>> = vec![None; updates];
        let mut count = 0;
        let mut buf: Vec<u8> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while count < updates {
            let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Err(_) => break,
                Ok(c) => c.context("read the watch")?,
            };
            let Some(chunk) = chunk else { break };
            let at = now_ns();
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let ev: Value = serde_json::from_slice(&line).context("watch event is not JSON")?;
                if ev["type"] == "ERROR" {
                    bail!("watch ERROR event: {ev}");
                }
                let seq = ev
                    .pointer("/object/metadata/annotations")
                    .and_then(|a| a.get(SEQ))
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<usize>().ok());
                if let Some(seq) = seq.filter(|&s| s < updates) {
                    if received[seq].is_none() {
                        received[seq] = Some(at);
                        count += 1;
                    }
                }
            }
        }
        anyhow::Ok(received)
    });

    let sent: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..updates).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
    let acked: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..updates).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
    let update_one = {
        let (base, token) = (base.to_string(), token.to_string());
        let (sent, acked) = (sent.clone(), acked.clone());
        move |http: reqwest::Client, seq: usize| {
            let (base, token, sent, acked) = (base.clone(), token.clone(), sent.clone(), acked.clone());
            async move {
                let name = vm_name((first + seq) % objects);
                let t0 = Instant::now();
                let ns = now_ns();
                let patch = json!({"metadata": {
                    "labels": {"bench.sheaf.io/ts": ns.to_string()},
                    "annotations": {SENT_NS: ns.to_string(), SEQ: seq.to_string()}
                }});
                sent[seq].store(ns, Ordering::Relaxed);
                let resp = http
                    .patch(format!("{base}{VMS}/{name}"))
                    .bearer_auth(&token)
                    .header("content-type", "application/merge-patch+json")
                    .body(serde_json::to_vec(&patch)?)
                    .send()
                    .await
                    .with_context(|| format!("patch {name}"))?;
                expect_success(resp, &format!("patch {name}")).await?;
                acked[seq].store(now_ns(), Ordering::Relaxed);
                anyhow::Ok(t0.elapsed())
            }
        }
    };

    let started = Instant::now();
    let mut latencies = Vec::with_capacity(updates);
    let mut tasks = tokio::task::JoinSet::new();
    match pace {
        Pace::Writers(w) => {
            let next = Arc::new(AtomicUsize::new(0));
            for k in 0..w {
                let (http, next, update_one) = (clients[k % clients.len()].clone(), next.clone(), update_one.clone());
                tasks.spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= updates {
                            return anyhow::Ok(lat);
                        }
                        lat.push(update_one(http.clone(), seq).await?);
                    }
                });
            }
        }
        Pace::Rate(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0..updates {
                tick.tick().await;
                let f = update_one(clients[seq % clients.len()].clone(), seq);
                tasks.spawn(async move { Ok(vec![f.await?]) });
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r??);
    }
    let wall = started.elapsed();
    let received = watcher.await??;
    let mut send_to_event = Vec::with_capacity(updates);
    let mut ack_to_event_ns = Vec::with_capacity(updates);
    let mut missing = 0;
    for (seq, r) in received.iter().enumerate() {
        match r {
            Some(at) => {
                let s = sent[seq].load(Ordering::Relaxed);
                let a = acked[seq].load(Ordering::Relaxed);
                send_to_event.push(Duration::from_nanos(at.saturating_sub(s)));
                ack_to_event_ns.push(*at as i64 - a as i64);
            }
            None => missing += 1,
        }
    }
    Ok(Watched { updates: Batch { wall, latencies, warnings: 0 }, send_to_event, ack_to_event_ns, missing })
}

/// One unpaginated list of all VirtualMachines as JSON: (time, items).
pub async fn list_all(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<(Duration, usize)> {
    let t0 = Instant::now();
    let resp = http.get(format!("{base}{VMS}")).bearer_auth(token).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let took = t0.elapsed();
    if !status.is_success() {
        bail!("LIST: HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(2000)]));
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok((took, v["items"].as_array().map_or(0, Vec::len)))
}
