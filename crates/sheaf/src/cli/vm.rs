//! `sheaf vm start|stop|restart NAME`: KubeVirt's VM subresources.

use clap::{Args, Subcommand};
use reqwest::Method;

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
}

#[derive(Args, Debug)]
pub struct VmTarget {
    /// The VirtualMachine's name.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(a: VmArgs) -> anyhow::Result<()> {
    let (verb, t) = match &a.action {
        VmAction::Start(t) => ("start", t),
        VmAction::Stop(t) => ("stop", t),
        VmAction::Restart(t) => ("restart", t),
    };
    let client = Client::connect(&t.conn)?;
    let ns = t.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    let path = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachines/{}/{verb}",
        encode(&ns),
        encode(&t.name)
    );
    client.request(Method::PUT, &path, "application/json", Some(("application/json", b"{}".to_vec()))).await?;
    let done = match verb {
        "start" => "was scheduled to start",
        "stop" => "was scheduled to stop",
        _ => "was scheduled to restart",
    };
    println!("VM {} {done}", t.name);
    Ok(())
}
