//! `sheaf status`: the cluster at a glance. Per node: Ready, roles, and
//! Sheaf's own footprint there (CPU, RSS/PSS and processes of Sheaf, and
//! of the guests apart: the `sheaf.io/footprint` annotation each node
//! agent writes, see `sheaf_agent::footprint`), with the node's capacity
//! and allocatable; for the cluster, the API server's version, its store
//! and the leader of the controllers.
//!
//! Everything comes from the API (Nodes, Leases, `/version`), so it works
//! against a remote server with a kubeconfig like every client command.
//! The store is told by the controllers' Lease: servers on etcd elect a
//! leader through `kube-system/sheaf-controllers`; one server on SQLite
//! needs no election and keeps no such Lease.

use std::collections::BTreeMap;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use sheaf_agent::footprint::{Footprint, Usage};

use super::client::{is_not_found, kubeconfig_path, parse_kubeconfig, query, Client, ConnArgs, ServerError};
use super::printer::align;

const STATUS_HELP: &str = "\
Examples:
  sheaf status                  # nodes, Sheaf's CPU and memory on each, the API server
  sheaf status --processes      # ... and each of Sheaf's processes
  sheaf status -o json          # the same as JSON

SHEAF CPU is in percent of one core, averaged over the interval shown under
MEASURED; RSS counts pages shared by Sheaf's processes once per process, PSS
shares them out. Guests (QEMU) are counted apart.";

/// Output formats of `sheaf status`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Json,
    Yaml,
}

#[derive(Args, Debug)]
#[command(after_help = STATUS_HELP)]
pub struct StatusArgs {
    /// Print JSON or YAML instead of tables.
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    pub output: Option<StatusFormat>,
    /// Also list each of Sheaf's processes per node.
    #[arg(long)]
    pub processes: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// What `sheaf status` reports (and prints with `-o json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub server: ServerInfo,
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// The URL this command talked to.
    pub url: String,
    /// `/version`'s gitVersion.
    pub version: String,
    /// `sqlite` or `etcd`.
    pub store: String,
    /// The node (server name) whose server runs the controllers, if known.
    pub leader: Option<String>,
    /// The URLs of an HA control plane's servers (their Leases).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    /// The `Ready` condition's status: `True`, `False`, `Unknown`.
    pub ready: String,
    /// `server` and/or `agent`.
    pub roles: Vec<String>,
    pub unschedulable: bool,
    /// None: the node's agent has not written one (yet, or is older).
    pub footprint: Option<Footprint>,
    pub capacity: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
}

/// Runs `sheaf status`; a failure is printed as the other client commands
/// print theirs (kubectl's format) and the process exits non-zero.
pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    if let Err(e) = status(a).await {
        match e.downcast_ref::<ServerError>() {
            Some(se) if e.chain().count() == 1 => eprintln!("{se}"),
            _ => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
    Ok(())
}

async fn status(a: StatusArgs) -> anyhow::Result<()> {
    let path = kubeconfig_path(a.conn.kubeconfig.as_deref())?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    let cfg = parse_kubeconfig(&path, &text, a.conn.context.as_deref())?;
    let url = cfg.server.clone();
    let client = Client::from_config(cfg, a.conn.request_timeout)?;
    let report = gather(&client, url).await?;
    match a.output {
        Some(StatusFormat::Json) => println!("{}", serde_json::to_string_pretty(&report)?),
        Some(StatusFormat::Yaml) => print!("{}", serde_yaml::to_string(&report)?),
        None => print!("{}", render(&report, a.processes, chrono::Utc::now())),
    }
    Ok(())
}

async fn gather(client: &Client, url: String) -> anyhow::Result<Report> {
    let version = client.get_json("/version").await?;
    let nodes = client.get_json("/api/v1/nodes").await?;
    let election =
        match client.get_json("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/sheaf-controllers").await {
            Ok(l) => Some(l),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(e),
        };
    let servers = client
        .get_json(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases{}",
            query(&[("labelSelector", "sheaf.io/apiserver=true")])
        ))
        .await?;
    Ok(report(url, &version, &nodes, election.as_ref(), &servers))
}

fn text_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn quantities(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The report from the API's answers: `/version`, the Node list, the
/// controllers' Lease (None: not found) and the servers' Lease list.
pub fn report(url: String, version: &Value, nodes: &Value, election: Option<&Value>, servers: &Value) -> Report {
    let server_leases: Vec<&Value> = servers.get("items").and_then(Value::as_array).into_iter().flatten().collect();
    let server_names: Vec<&str> = server_leases.iter().filter_map(|l| text_at(l, "/spec/holderIdentity")).collect();
    // The holder is `NAME_SUFFIX` (one identity per server process).
    let leader = election.and_then(|l| text_at(l, "/spec/holderIdentity")).map(|h| match h.rsplit_once('_') {
        Some((name, _)) => name.to_string(),
        None => h.to_string(),
    });
    let mut infos: Vec<NodeInfo> = nodes
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|n| {
            let name = text_at(n, "/metadata/name").unwrap_or_default().to_string();
            let ready = n
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| text_at(c, "/type") == Some("Ready"))
                .and_then(|c| text_at(c, "/status"))
                .unwrap_or("Unknown")
                .to_string();
            let footprint = Footprint::of_node(n);
            let mut roles = Vec::new();
            if footprint.as_ref().is_some_and(|f| f.role == "server") || server_names.contains(&name.as_str()) {
                roles.push("server".to_string());
            }
            roles.push("agent".to_string());
            NodeInfo {
                name,
                ready,
                roles,
                unschedulable: n.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false),
                footprint,
                capacity: quantities(n.pointer("/status/capacity")),
                allocatable: quantities(n.pointer("/status/allocatable")),
            }
        })
        .collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let store = if election.is_some() { "etcd" } else { "sqlite" };
    // On SQLite the one server always leads: the node it runs on, when its
    // agent is embedded.
    let leader = leader.or_else(|| {
        let mut servers = infos.iter().filter(|n| n.roles.iter().any(|r| r == "server"));
        match (election, servers.next(), servers.next()) {
            (None, Some(only), None) => Some(only.name.clone()),
            _ => None,
        }
    });
    Report {
        server: ServerInfo {
            url,
            version: text_at(version, "/gitVersion").unwrap_or("unknown").to_string(),
            store: store.to_string(),
            leader,
            servers: server_leases
                .iter()
                .filter_map(|l| text_at(l, "/metadata/annotations/sheaf.io~1url"))
                .map(str::to_string)
                .collect(),
        },
        nodes: infos,
    }
}

fn percent(x: f64) -> String {
    format!("{x:.2}%")
}

fn age(now: chrono::DateTime<chrono::Utc>, f: &Footprint) -> String {
    let secs = (now - f.measured_at.0).num_seconds().max(0);
    format!("{secs}s ago, over {:.0}s", f.interval_seconds)
}

fn pair(capacity: &BTreeMap<String, String>, allocatable: &BTreeMap<String, String>, key: &str) -> String {
    let get = |m: &BTreeMap<String, String>| m.get(key).cloned().unwrap_or_else(|| "-".into());
    format!("{}/{}", get(capacity), get(allocatable))
}

fn usage_cells(u: Option<&Usage>, with_count: bool) -> Vec<String> {
    match u {
        None => vec!["-".into(); if with_count { 4 } else { 3 }],
        Some(u) => {
            let mut cells = vec![percent(u.cpu_percent), u.rss_bytes.to_string(), u.pss_bytes.to_string()];
            if with_count {
                cells.push(u.processes.to_string());
            }
            cells
        }
    }
}

/// The tables `sheaf status` prints.
pub fn render(r: &Report, processes: bool, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::new();
    out.push_str(&format!("API server   {} ({})\n", r.server.url, r.server.version));
    let store = match r.server.store.as_str() {
        "sqlite" => "sqlite (one server)".to_string(),
        other if r.server.servers.is_empty() => other.to_string(),
        other => format!("{other} ({} servers: {})", r.server.servers.len(), r.server.servers.join(", ")),
    };
    out.push_str(&format!("store        {store}\n"));
    out.push_str(&format!("leader       {}\n\n", r.server.leader.as_deref().unwrap_or("unknown")));
    let mut rows = vec![[
        "NODE",
        "READY",
        "ROLES",
        "SHEAF CPU",
        "SHEAF RSS",
        "SHEAF PSS",
        "PROCS",
        "GUESTS",
        "GUEST CPU",
        "GUEST RSS",
        "CPU (CAP/ALLOC)",
        "MEMORY (CAP/ALLOC)",
        "MEASURED",
    ]
    .map(String::from)
    .to_vec()];
    for n in &r.nodes {
        let f = n.footprint.as_ref();
        let mut row = vec![
            n.name.clone(),
            if n.unschedulable { format!("{},SchedulingDisabled", n.ready) } else { n.ready.clone() },
            n.roles.join(","),
        ];
        row.extend(usage_cells(f.map(|f| &f.sheaf), true));
        match f {
            Some(f) => row.extend([
                f.guests.processes.to_string(),
                percent(f.guests.cpu_percent),
                f.guests.rss_bytes.to_string(),
            ]),
            None => row.extend(["-".to_string(), "-".into(), "-".into()]),
        }
        row.push(pair(&n.capacity, &n.allocatable, "cpu"));
        row.push(pair(&n.capacity, &n.allocatable, "memory"));
        row.push(f.map(|f| age(now, f)).unwrap_or_else(|| "no footprint yet".into()));
        rows.push(row);
    }
    out.push_str(&align(&rows));
    if processes {
        let mut rows = vec![["NODE", "PID", "PROCESS", "CPU", "RSS", "PSS"].map(String::from).to_vec()];
        for n in &r.nodes {
            for p in n.footprint.iter().flat_map(|f| &f.processes) {
                rows.push(vec![
                    n.name.clone(),
                    p.pid.to_string(),
                    p.kind.clone(),
                    percent(p.cpu_percent),
                    p.rss_bytes.to_string(),
                    p.pss_bytes.to_string(),
                ]);
            }
        }
        out.push('\n');
        out.push_str(&align(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sheaf_agent::footprint::Bytes;

    use super::*;

    fn footprint(role: &str) -> String {
        json!({
            "measuredAt": "2026-12-02T10:00:00Z", "intervalSeconds": 30.0, "role": role,
            "sheaf": {"processes": 2, "rssBytes": 41943040, "pssBytes": 31457280, "cpuPercent": 0.42},
            "guests": {"processes": 1, "rssBytes": 209715200, "pssBytes": 209715200, "cpuPercent": 51.5},
            "processes": [
                {"pid": 10, "kind": role, "rssBytes": 36700160, "pssBytes": 28311552, "cpuPercent": 0.4},
                {"pid": 11, "kind": "blk-engine", "rssBytes": 5242880, "pssBytes": 3145728, "cpuPercent": 0.02}
            ]
        })
        .to_string()
    }

    fn node(name: &str, role: Option<&str>) -> Value {
        let mut n = json!({
            "metadata": {"name": name, "annotations": {}},
            "status": {
                "capacity": {"cpu": "2", "memory": "23552Mi"},
                "allocatable": {"cpu": "2", "memory": "23040Mi"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        if let Some(r) = role {
            n["metadata"]["annotations"]["sheaf.io/footprint"] = json!(footprint(r));
        }
        n
    }

    #[test]
    fn one_server_on_sqlite() {
        let nodes = json!({"items": [node("n2", None), node("n1", Some("server"))]});
        let r = report(
            "https://127.0.0.1:6443".into(),
            &json!({"gitVersion": "v1.32.0-sheaf.0.1.0"}),
            &nodes,
            None,
            &json!({"items": []}),
        );
        assert_eq!(r.server.store, "sqlite");
        assert_eq!(r.server.leader.as_deref(), Some("n1"), "the one server leads");
        assert_eq!(r.nodes[0].name, "n1");
        assert_eq!(r.nodes[0].roles, ["server", "agent"]);
        assert_eq!(r.nodes[1].roles, ["agent"]);
        assert!(r.nodes[1].footprint.is_none());
        let f = r.nodes[0].footprint.as_ref().expect("footprint");
        assert_eq!(f.sheaf.rss_bytes, Bytes(40 << 20));

        let now = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:12Z").expect("time").to_utc();
        let text = render(&r, true, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "API server   https://127.0.0.1:6443 (v1.32.0-sheaf.0.1.0)");
        assert_eq!(lines[1], "store        sqlite (one server)");
        assert_eq!(lines[2], "leader       n1");
        let n1: Vec<&str> = lines[5].split("   ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(
            n1,
            [
                "n1",
                "True",
                "server,agent",
                "0.42%",
                "40.0 MiB",
                "30.0 MiB",
                "2",
                "1",
                "51.50%",
                "200.0 MiB",
                "2/2",
                "23552Mi/23040Mi",
                "12s ago, over 30s"
            ]
        );
        assert!(lines[6].starts_with("n2") && lines[6].ends_with("no footprint yet"), "{}", lines[6]);
        assert!(text.contains("blk-engine"), "{text}");
    }

    #[test]
    fn servers_on_etcd_elect_a_leader() {
        let nodes = json!({"items": [node("a", Some("server")), node("b", Some("server"))]});
        let lease = json!({"spec": {"holderIdentity": "b_1f2e3d"}});
        let servers = json!({"items": [
            {"metadata": {"annotations": {"sheaf.io/url": "https://10.0.0.1:6443"}}, "spec": {"holderIdentity": "a"}},
            {"metadata": {"annotations": {"sheaf.io/url": "https://10.0.0.2:6443"}}, "spec": {"holderIdentity": "b"}}
        ]});
        let r = report("https://10.0.0.1:6443".into(), &json!({}), &nodes, Some(&lease), &servers);
        assert_eq!(r.server.store, "etcd");
        assert_eq!(r.server.leader.as_deref(), Some("b"));
        assert_eq!(r.server.servers.len(), 2);
        assert_eq!(r.server.version, "unknown");
        let text = render(&r, false, chrono::Utc::now());
        assert!(text.contains("etcd (2 servers: https://10.0.0.1:6443, https://10.0.0.2:6443)"), "{text}");
        assert!(!text.contains("PID"), "no process table unless asked");
    }
}
