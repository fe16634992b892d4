//! `sheaf node ...`: cordon a node, or put it in maintenance mode (its VMs
//! migrated away or stopped, see the maintenance controller) and back.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{encode, Client, ConnArgs};

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: NodeAction,
}

#[derive(Subcommand, Debug)]
pub enum NodeAction {
    /// No new VMs on the node; those it runs stay: `sheaf node cordon node-2`.
    Cordon(NodeTarget),
    /// The node takes new VMs again.
    Uncordon(NodeTarget),
    /// Maintenance mode: cordon the node and move its VMs away (live
    /// migration; VMs that cannot migrate are stopped unless their
    /// evictionStrategy is LiveMigrate). Waits until the node is empty.
    Maintain(MaintainArgs),
    /// End maintenance mode: the node takes VMs again, and the VMs
    /// maintenance stopped start again.
    Unmaintain(NodeTarget),
}

#[derive(Args, Debug)]
pub struct NodeTarget {
    /// The Node's name (`kubectl get nodes`).
    pub name: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub target: NodeTarget,
    /// Return at once instead of waiting until every VM has left.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (maintenance goes on).
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

const MAINTAIN_STATUS: &str = "harvesterhci.io/maintain-status";
const PROGRESS: &str = "sheaf.io/maintenance-progress";

async fn patch(client: &Client, name: &str, body: Value) -> anyhow::Result<Value> {
    let path = format!("/api/v1/nodes/{}", encode(name));
    let reply = client
        .request(
            Method::PATCH,
            &path,
            "application/json",
            Some(("application/merge-patch+json", serde_json::to_vec(&body)?)),
        )
        .await?;
    Ok(reply.body)
}

pub async fn run(a: NodeArgs) -> anyhow::Result<()> {
    match a.action {
        NodeAction::Cordon(t) => {
            let client = Client::connect(&t.conn)?;
            patch(&client, &t.name, json!({"spec": {"unschedulable": true}})).await?;
            println!("node {} cordoned", t.name);
        }
        NodeAction::Uncordon(t) => {
            let client = Client::connect(&t.conn)?;
            patch(&client, &t.name, json!({"spec": {"unschedulable": null}})).await?;
            println!("node {} uncordoned", t.name);
        }
        NodeAction::Unmaintain(t) => {
            let client = Client::connect(&t.conn)?;
            patch(&client, &t.name, json!({"metadata": {"annotations": {MAINTAIN_STATUS: null}}})).await?;
            println!("node {}: maintenance mode ended", t.name);
        }
        NodeAction::Maintain(m) => {
            let t = &m.target;
            let client = Client::connect(&t.conn)?;
            patch(&client, &t.name, json!({"metadata": {"annotations": {MAINTAIN_STATUS: "running"}}})).await?;
            println!("node {}: maintenance mode", t.name);
            if m.no_wait {
                return Ok(());
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(m.timeout);
            let mut last = String::new();
            loop {
                let node = client.get_json(&format!("/api/v1/nodes/{}", encode(&t.name))).await?;
                let ann = |k: &str| {
                    node.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1")))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                let progress = ann(PROGRESS).unwrap_or_default();
                if !progress.is_empty() && progress != last {
                    println!("  {progress}");
                    last = progress;
                }
                if ann(MAINTAIN_STATUS).as_deref() == Some("completed") {
                    println!("node {}: every VM has left; it can be serviced", t.name);
                    return Ok(());
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "node {} still has VMs after {} s ({last}); maintenance goes on: follow it with \
                     `kubectl get node {} -o jsonpath='{{.metadata.annotations}}'`",
                    t.name,
                    m.timeout,
                    t.name
                );
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}
