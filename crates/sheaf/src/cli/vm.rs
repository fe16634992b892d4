//! `sheaf vm ...`: KubeVirt's subresources. `start|stop|restart` act on
//! the VirtualMachine; `pause|unpause|softreboot|console|vnc|guestosinfo|logs`
//! on its running instance (which has the VM's name). `addvolume` and
//! `removevolume` act on either (see [`super::hotplug`]).
//! `delete` deletes the VM with the disks (claims) chosen to go with it.
//! `create` makes a VM from a VM template (see [`super::template`]).

use clap::{Args, Subcommand};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::client::{encode, Client, ConnArgs};

#[derive(Args, Debug)]
pub struct VmArgs {
    #[command(subcommand)]
    pub action: VmAction,
}

#[derive(Subcommand, Debug)]
pub enum VmAction {
    /// Start a stopped VM: `sheaf vm start myvm`.
    Start(VmTarget),
    /// Stop a running VM (ACPI shutdown, then forced after its grace period).
    Stop(VmTarget),
    /// Stop and start a running VM.
    Restart(VmTarget),
    /// Pause a running VM's guest (its vCPUs stop; memory is kept).
    Pause(VmTarget),
    /// Resume a paused VM.
    Unpause(VmTarget),
    /// Reboot the guest from inside: through the guest agent if one
    /// answers, else the ACPI power button (QEMU resets instead of ending).
    Softreboot(VmTarget),
    /// Attach the terminal to the VM's serial console. Escape: Ctrl+].
    Console(VmTarget),
    /// Serve the VM's display as a VNC server on a local port.
    Vnc(VncArgs),
    /// Print what the guest agent reports (OS, hostname, agent version).
    Guestosinfo(VmTarget),
    /// Print the VM's serial console output, kept by its node whether or
    /// not a console is attached: `sheaf vm logs myvm --tail 50 [-f]`.
    Logs(LogsArgs),
    /// Plug a Volume into a running VM as a new disk:
    /// `sheaf vm addvolume myvm --volume-name=data [--bus=virtio] [--persist]`.
    Addvolume(Box<super::hotplug::AddVolumeArgs>),
    /// Unplug a hotplugged Volume from a running VM:
    /// `sheaf vm removevolume myvm --volume-name=data [--persist]`.
    Removevolume(Box<super::hotplug::RemoveVolumeArgs>),
    /// Delete a VM, and those of its disks (claims) that should go with it.
    /// Claims made from its dataVolumeTemplates always go with it; the
    /// others are kept unless --remove-disks says (asked on a terminal).
    Delete(VmDeleteArgs),
    /// Live-migrate a running VM to another node (a
    /// VirtualMachineInstanceMigration); waits until it ends and prints
    /// the guest's downtime: `sheaf vm migrate myvm [--node node-2]`.
    Migrate(MigrateArgs),
    /// Clone a VM: a new VM with its spec and a copy of every disk (taken
    /// from a snapshot, so the source may keep running), with MACs and
    /// firmware UUID of its own: `sheaf vm clone web web-2 [--start]`.
    Clone(CloneArgs),
    /// Create a VM from a VM template:
    /// `sheaf vm create web1 --template harvester-public/linux-cloud-init-template --image default/ubuntu`.
    Create(Box<super::template::VmCreateArgs>),
}

#[derive(Args, Debug)]
pub struct CloneArgs {
    #[command(flatten)]
    pub source: VmTarget,
    /// The new VM's name (its disks' claims are named NEW-VOLUME).
    pub new_name: String,
    /// Start the clone once its disks are copied (default: Halted).
    #[arg(long)]
    pub start: bool,
}

#[derive(Args, Debug)]
pub struct VmDeleteArgs {
    #[command(flatten)]
    pub target: VmTarget,
    /// Which of the VM's other claims to delete with it: `all`, `none`, or
    /// claim names separated by commas.
    #[arg(long, value_name = "all|none|CLAIM,CLAIM")]
    pub remove_disks: Option<String>,
}

#[derive(Args, Debug)]
pub struct VmTarget {
    /// The VirtualMachine's (or VirtualMachineInstance's) name.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub target: VmTarget,
    /// The node to migrate to (default: the scheduler's choice).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Return once the migration is created instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (the migration goes on).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: VmTarget,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// At most N bytes (of the lines --tail selected).
    #[arg(long, value_name = "N")]
    pub limit_bytes: Option<u64>,
    /// Only the older, rotated generations of the log.
    #[arg(short, long, conflicts_with = "follow")]
    pub previous: bool,
    /// Keep printing what the guest prints until the VM stops (Ctrl+C ends).
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct VncArgs {
    #[command(flatten)]
    pub target: VmTarget,
    /// Local address to listen on for VNC viewers.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
}

const GROUP_PATH: &str = "/apis/subresources.kubevirt.io/v1";

fn path(client: &Client, t: &VmTarget, plural: &str, sub: &str) -> String {
    let ns = t.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    format!("{GROUP_PATH}/namespaces/{}/{plural}/{}/{sub}", encode(&ns), encode(&t.name))
}

pub async fn run(a: VmArgs) -> anyhow::Result<()> {
    let (verb, t) = match &a.action {
        VmAction::Start(t) => ("start", t),
        VmAction::Stop(t) => ("stop", t),
        VmAction::Restart(t) => ("restart", t),
        VmAction::Pause(t) => ("pause", t),
        VmAction::Unpause(t) => ("unpause", t),
        VmAction::Softreboot(t) => ("softreboot", t),
        VmAction::Console(t) => return console(t).await,
        VmAction::Vnc(v) => return vnc(v).await,
        VmAction::Logs(l) => return logs(l).await,
        VmAction::Addvolume(a) => return super::hotplug::add(a).await,
        VmAction::Removevolume(a) => return super::hotplug::remove(a).await,
        VmAction::Delete(d) => return delete(d).await,
        VmAction::Create(c) => return super::template::create_vm(c).await,
        VmAction::Migrate(m) => return migrate(m).await,
        VmAction::Clone(c) => {
            let client = Client::connect(&c.source.conn)?;
            let body = serde_json::json!({"name": c.new_name, "start": c.start});
            let p = path(&client, &c.source, "virtualmachines", "clone");
            client
                .request(Method::POST, &p, "application/json", Some(("application/json", serde_json::to_vec(&body)?)))
                .await?;
            println!(
                "VM {} created from {}; its disks are being copied{}",
                c.new_name,
                c.source.name,
                if c.start { " and it starts when they are ready" } else { " (start it with sheaf vm start)" }
            );
            return Ok(());
        }
        VmAction::Guestosinfo(t) => {
            let client = Client::connect(&t.conn)?;
            let info = client.get_json(&path(&client, t, "virtualmachineinstances", "guestosinfo")).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            return Ok(());
        }
    };
    let client = Client::connect(&t.conn)?;
    let plural =
        if matches!(verb, "start" | "stop" | "restart") { "virtualmachines" } else { "virtualmachineinstances" };
    let p = path(&client, t, plural, verb);
    client.request(Method::PUT, &p, "application/json", Some(("application/json", b"{}".to_vec()))).await?;
    let done = match verb {
        "start" => "was scheduled to start",
        "stop" => "was scheduled to stop",
        "restart" => "was scheduled to restart",
        "pause" => "was paused",
        "unpause" => "was unpaused",
        _ => "was asked to reboot",
    };
    println!("VM {} {done}", t.name);
    Ok(())
}

/// `sheaf vm migrate`: see [`VmAction::Migrate`].
async fn migrate(a: &MigrateArgs) -> anyhow::Result<()> {
    let t = &a.target;
    let client = Client::connect(&t.conn)?;
    let ns = t.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    let mut spec = serde_json::json!({"vmiName": t.name});
    if let Some(node) = &a.node {
        spec["addedNodeSelector"] = serde_json::json!({"kubernetes.io/hostname": node});
    }
    let body = serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"generateName": format!("{}-migration-", t.name), "namespace": ns},
        "spec": spec,
    });
    let list = format!("/apis/kubevirt.io/v1/namespaces/{}/virtualmachineinstancemigrations", encode(&ns));
    let reply = client
        .request(Method::POST, &list, "application/json", Some(("application/json", serde_json::to_vec(&body)?)))
        .await?;
    let name = reply.body.pointer("/metadata/name").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
    println!("VirtualMachineInstanceMigration {ns}/{name} created");
    if a.no_wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.timeout);
    let mut last = String::new();
    loop {
        let m = client.get_json(&format!("{list}/{}", encode(&name))).await?;
        let phase = m.pointer("/status/phase").and_then(serde_json::Value::as_str).unwrap_or("Pending").to_string();
        if phase != last {
            println!("  {phase}");
            last = phase.clone();
        }
        let state = m.pointer("/status/migrationState").cloned().unwrap_or_default();
        match phase.as_str() {
            "Succeeded" => {
                let n = |k: &str| state.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                println!(
                    "VM {} migrated from {} to {}: downtime {} ms, total {} ms",
                    t.name,
                    state.get("sourceNode").and_then(serde_json::Value::as_str).unwrap_or("?"),
                    state.get("targetNode").and_then(serde_json::Value::as_str).unwrap_or("?"),
                    n("downtimeMilliseconds"),
                    n("totalTimeMilliseconds")
                );
                return Ok(());
            }
            "Failed" => {
                let why = m
                    .pointer("/status/conditions")
                    .and_then(serde_json::Value::as_array)
                    .and_then(|c| c.iter().find_map(|c| c.get("message").and_then(serde_json::Value::as_str)))
                    .or_else(|| state.get("failureReason").and_then(serde_json::Value::as_str))
                    .unwrap_or("no reason was given");
                anyhow::bail!("the migration of VM {} failed: {why}", t.name);
            }
            _ => {}
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the migration {ns}/{name} is still {phase} after {} s; follow it with `kubectl get vmim {name} -w`",
            a.timeout
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `sheaf vm delete`: see [`VmAction::Delete`].
async fn delete(a: &VmDeleteArgs) -> anyhow::Result<()> {
    let t = &a.target;
    let client = Client::connect(&t.conn)?;
    let ns = t.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    let vm_path = format!("/apis/kubevirt.io/v1/namespaces/{}/virtualmachines/{}", encode(&ns), encode(&t.name));
    let vm = client.get_json(&vm_path).await?;
    let uid = vm.pointer("/metadata/uid").and_then(serde_json::Value::as_str).unwrap_or_default();
    let vols = vm.pointer("/spec/template/spec/volumes").and_then(serde_json::Value::as_array).cloned();
    let mut names: Vec<String> = vols
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            v.pointer("/persistentVolumeClaim/claimName")
                .or(v.pointer("/dataVolume/name"))?
                .as_str()
                .map(str::to_string)
        })
        .collect();
    names.dedup();
    let (mut owned, mut others) = (Vec::new(), Vec::new());
    for n in names {
        let p = format!("/api/v1/namespaces/{}/persistentvolumeclaims/{}", encode(&ns), encode(&n));
        let Ok(pvc) = client.get_json(&p).await else { continue };
        let refs = pvc.pointer("/metadata/ownerReferences").and_then(serde_json::Value::as_array);
        if refs.is_some_and(|r| r.iter().any(|o| o.get("uid").and_then(serde_json::Value::as_str) == Some(uid))) {
            owned.push(n);
        } else {
            others.push(n);
        }
    }
    let pick = |answer: &str| -> anyhow::Result<Vec<String>> {
        match answer.trim() {
            "all" => Ok(others.clone()),
            "" | "none" => Ok(Vec::new()),
            list => {
                let chosen: Vec<String> =
                    list.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect();
                if let Some(bad) = chosen.iter().find(|c| !others.contains(c) && !owned.contains(c)) {
                    anyhow::bail!(
                        "{bad} is not a disk (claim) of VM {}; its claims are: {}",
                        t.name,
                        [owned.clone(), others.clone()].concat().join(", ")
                    );
                }
                Ok(chosen.into_iter().filter(|c| others.contains(c)).collect())
            }
        }
    };
    let removed = match &a.remove_disks {
        Some(answer) => pick(answer)?,
        None if others.is_empty() => Vec::new(),
        None if rustix::termios::isatty(rustix::stdio::stdin()) => {
            if !owned.is_empty() {
                eprintln!("These disks go with the VM (made from its dataVolumeTemplates): {}", owned.join(", "));
            }
            eprintln!("These disks of the VM are claims of their own: {}", others.join(", "));
            eprint!("Delete them with the VM? all, none (the default), or names separated by commas: ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            pick(&line)?
        }
        None => Vec::new(),
    };
    let q =
        if removed.is_empty() { String::new() } else { super::client::query(&[("removedDisks", &removed.join(","))]) };
    client.request(Method::DELETE, &format!("{vm_path}{q}"), "application/json", None).await?;
    println!("VM {} deleted", t.name);
    let gone: Vec<String> = owned.iter().chain(removed.iter()).cloned().collect();
    if !gone.is_empty() {
        println!("disks deleted with it (once it has stopped): {}", gone.join(", "));
    }
    let kept: Vec<&String> = others.iter().filter(|c| !removed.contains(c)).collect();
    if !kept.is_empty() {
        let kept: Vec<&str> = kept.iter().map(|s| s.as_str()).collect();
        println!("disks kept: {} (delete them with kubectl delete pvc NAME)", kept.join(", "));
    }
    Ok(())
}

type Ws = WebSocketStream<reqwest::Upgraded>;

async fn open(t: &VmTarget, sub: &str) -> anyhow::Result<Ws> {
    let client = Client::connect(&t.conn)?;
    let io = client.websocket(&path(&client, t, "virtualmachineinstances", sub), "plain.kubevirt.io").await?;
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, None).await)
}

/// The terminal in raw mode while alive (when stdin is a terminal).
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let fd = rustix::stdio::stdin();
        if !rustix::termios::isatty(fd) {
            return RawMode(None);
        }
        let Ok(saved) = rustix::termios::tcgetattr(fd) else { return RawMode(None) };
        let mut raw = saved.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(rustix::stdio::stdin(), rustix::termios::OptionalActions::Now, saved);
        }
    }
}

/// Ctrl+] ends an interactive console session, as in virtctl and telnet.
const ESCAPE: u8 = 0x1d;

async fn console(t: &VmTarget) -> anyhow::Result<()> {
    let ws = open(t, "console").await?;
    let interactive = rustix::termios::isatty(rustix::stdio::stdin());
    if interactive {
        eprintln!("Connected to the console of {}. Escape sequence: ^]\r", t.name);
    }
    let _raw = RawMode::enter();
    let (mut tx, mut rx) = ws.split();
    let from_guest = async {
        let mut out = tokio::io::stdout();
        while let Some(msg) = rx.next().await {
            let data = match msg {
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            if out.write_all(&data).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    };
    let to_guest = async {
        let mut input = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match input.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let (chunk, escape) = match buf[..n].iter().position(|b| *b == ESCAPE && interactive) {
                Some(i) => (&buf[..i], true),
                None => (&buf[..n], false),
            };
            if !chunk.is_empty() && tx.send(Message::Binary(bytes::Bytes::copy_from_slice(chunk))).await.is_err() {
                return;
            }
            if escape {
                let _ = tx.send(Message::Close(None)).await;
                return;
            }
        }
        // End of (non-terminal) input: keep printing the guest's output.
        futures::future::pending::<()>().await
    };
    tokio::select! {
        _ = from_guest => {}
        _ = to_guest => {}
    }
    drop(_raw);
    if interactive {
        eprintln!();
    }
    // The stdin reader is a blocking thread that the runtime would wait
    // for at exit: end the process here.
    std::process::exit(0)
}

async fn vnc(v: &VncArgs) -> anyhow::Result<()> {
    // Fail early (not running, no display) before listening.
    drop(open(&v.target, "vnc").await?);
    let listener = tokio::net::TcpListener::bind(v.listen).await?;
    let addr = listener.local_addr()?;
    println!("VNC of {} at {addr}: connect a VNC viewer (for example `vncviewer {addr}`); Ctrl+C ends", v.target.name);
    loop {
        let (tcp, _) = listener.accept().await?;
        let ws = match open(&v.target, "vnc").await {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let (mut rd, mut wr) = tcp.into_split();
            let (mut tx, mut rx) = ws.split();
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(Message::Close(None)).await;
            };
            let down = async {
                while let Some(Ok(msg)) = rx.next().await {
                    let data = match msg {
                        Message::Binary(b) => b,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if wr.write_all(&data).await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        });
    }
}

/// The query of `sheaf vm logs`.
fn logs_query(a: &LogsArgs) -> String {
    let tail = a.tail.map(|n| n.to_string());
    let limit = a.limit_bytes.map(|n| n.to_string());
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(t) = &tail {
        pairs.push(("tailLines", t));
    }
    if let Some(l) = &limit {
        pairs.push(("limitBytes", l));
    }
    if a.previous {
        pairs.push(("previous", "true"));
    }
    if a.follow {
        pairs.push(("follow", "true"));
    }
    super::client::query(&pairs)
}

/// `sheaf vm logs`: the serial log, written to stdout as it arrives.
async fn logs(a: &LogsArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.target.conn)?;
    let p = format!("{}{}", path(&client, &a.target, "virtualmachineinstances", "log"), logs_query(a));
    let resp = client.get_stream(&p).await?;
    let mut body = resp.bytes_stream();
    let mut out = tokio::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("the log stream broke off: {e}"))?;
        out.write_all(&chunk).await?;
        out.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        action: VmAction,
    }

    fn logs_args(args: &[&str]) -> Result<LogsArgs, clap::Error> {
        let mut argv = vec!["vm", "logs"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.action {
            VmAction::Logs(l) => Ok(l),
            other => panic!("not logs: {other:?}"),
        }
    }

    #[test]
    fn logs_query_from_flags() {
        assert_eq!(logs_query(&logs_args(&["web"]).expect("parse")), "");
        let a = logs_args(&["web", "-n", "prod", "--tail", "20", "--limit-bytes", "100", "-f"]).expect("parse");
        assert_eq!(a.target.namespace.as_deref(), Some("prod"));
        assert_eq!(logs_query(&a), "?tailLines=20&limitBytes=100&follow=true");
        assert_eq!(logs_query(&logs_args(&["web", "--previous"]).expect("parse")), "?previous=true");
        assert!(logs_args(&["web", "--previous", "--follow"]).is_err());
        assert!(logs_args(&["web", "--tail", "-3"]).is_err());
    }
}
