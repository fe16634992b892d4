//! `sheaf`: the one binary. `sheaf server` runs the control plane (and a
//! node agent), `sheaf agent` the node agent of another machine; the
//! other subcommands are a thin, kubectl-like client.

mod agent;
mod blk;
mod cli;
mod control_plane;
mod leader;
mod logs;
mod managed_etcd;
mod server;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sheaf",
    version,
    about = "Sheaf: virtual machines, replicated storage and networks on your own machines, \
             managed through a Kubernetes-compatible API.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the API server (and, on a single node, everything else).
    Server(server::ServerArgs),
    /// Run the node agent on this machine for a server elsewhere:
    /// `sheaf agent --server https://10.0.0.1:6443 --ca-file ca.crt --token TOKEN`.
    ///
    /// The agent registers this machine as a Node, runs the VMs scheduled
    /// to it and its part of the storage, and talks to the server over
    /// HTTPS (trusting only the cluster's CA from --ca-file, authenticated
    /// by --token). Start the server with `--listen` on an address this
    /// machine can reach. Not yet through a separate agent: image uploads
    /// and downloads, and the serial and VNC consoles of its VMs.
    Agent(agent::AgentArgs),
    /// Print a kubeconfig for the admin user; `kubectl` uses it as is:
    /// `sheaf kubeconfig > ~/.kube/config`.
    Kubeconfig {
        /// Where the server keeps its state (certificates, token, database).
        #[arg(long, env = "SHEAF_DATA_DIR", default_value = "/var/lib/sheaf")]
        data_dir: PathBuf,
        /// API URL written into the kubeconfig.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
    },
    /// Show objects: `sheaf get vm`, `sheaf get vm my-vm -o yaml`, `sheaf get ns`.
    Get(cli::GetArgs),
    /// Create or update objects from YAML/JSON files (server-side apply):
    /// `sheaf apply -f vm.yaml`.
    Apply(cli::ApplyArgs),
    /// Delete objects by kind and name, or those in a file:
    /// `sheaf delete vm my-vm`, `sheaf delete -f vm.yaml`.
    Delete(cli::DeleteArgs),
    /// Start, stop or restart a VirtualMachine: `sheaf vm start my-vm`.
    Vm(cli::vm::VmArgs),
    /// Users, their tokens and roles: `sheaf user create ann --role operator --namespace team-a`.
    User(cli::user::UserArgs),
    /// Replicated volumes and snapshots: `sheaf volume create data --size 10Gi`.
    Volume(cli::volume::VolumeArgs),
    /// Back up volumes and restore them: `sheaf backup create data --target nfs`.
    Backup(cli::backup::BackupArgs),
    /// Nodes: `sheaf node cordon|uncordon|maintain|unmaintain NODE`.
    Node(cli::node::NodeArgs),
    /// VM images: `sheaf image upload disk.qcow2`, `sheaf image create NAME --url URL`.
    Image(cli::image::ImageArgs),
    /// VM templates: `sheaf template list`, `sheaf template show NS/NAME[:VERSION]`.
    Template(cli::template::TemplateArgs),
    /// The cluster at a glance: nodes, Sheaf's own CPU and memory on each,
    /// the API server, its store and leader: `sheaf status`.
    Status(cli::status::StatusArgs),
    /// Storage processes: replica servers and volume engines.
    Blk(blk::BlkArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Server(args) => rt.block_on(server::run(args)),
        Command::Agent(args) => rt.block_on(agent::run(args)),
        Command::Kubeconfig { data_dir, server } => {
            let (ca, token) = sheaf_apiserver::pki::load_admin(&data_dir).map_err(|e| {
                anyhow::anyhow!(
                    "{e}\nno Sheaf state in {}: start `sheaf server` first, or pass --data-dir",
                    data_dir.display()
                )
            })?;
            print!("{}", sheaf_apiserver::pki::kubeconfig(&server, &ca, &token, "admin"));
            Ok(())
        }
        Command::Get(a) => rt.block_on(cli::get(a)),
        Command::Apply(a) => rt.block_on(cli::apply(a)),
        Command::Delete(a) => rt.block_on(cli::delete(a)),
        Command::Vm(a) => rt.block_on(cli::vm(a)),
        Command::User(a) => rt.block_on(cli::user::run(a)),
        Command::Volume(a) => rt.block_on(cli::volume(a)),
        Command::Backup(a) => rt.block_on(cli::backup(a)),
        Command::Node(a) => rt.block_on(cli::node(a)),
        Command::Template(a) => rt.block_on(cli::template(a)),
        Command::Image(a) => rt.block_on(cli::image(a)),
        Command::Status(a) => rt.block_on(cli::status::run(a)),
        Command::Blk(a) => {
            drop(rt);
            // Storage processes log to stderr, as SHEAF_LOG_FORMAT says.
            logs::init(logs::format_from_env());
            blk::run(a)
        }
    }
}
