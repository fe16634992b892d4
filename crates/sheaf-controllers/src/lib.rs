//! Sheaf's server-side controllers, over the [`sheaf_client::Api`] trait:
//!
//! ```text
//!  VirtualMachine ──[vm]──▶ VirtualMachineInstance ──[scheduler]──▶ status.nodeName ──▶ agent
//!        ▲ status: printableStatus, ready, conditions, startFailure
//!        └──────── VMI changes wake their VM
//! ```
//!
//! - [`runtime`]: list+watch, a deduplicating work queue with per-key
//!   backoff, and workers calling a level-triggered `reconcile(key)`.
//! - [`vm`]: the VirtualMachine controller (run strategies, start/stop
//!   requests, crash-loop backoff, status).
//! - [`scheduler`]: binds VMIs to Ready nodes with room.
//! - [`migration`]: carries VirtualMachineInstanceMigrations out through
//!   the VMI's `status.migrationState`, which the agents act on.
//! - [`maintenance`]: maintenance mode: cordons a node and migrates (or
//!   stops) its VMs; gives it back to service afterwards.
//! - [`volume`]: keeps each Volume's Replica objects placed on nodes, and
//!   replaces those of nodes that have been down too long.
//! - [`node`]: marks nodes whose agent stopped posting status `Unknown`,
//!   and [`failover`] starts their VMs again elsewhere.
//! - [`claim`]: provisions each PersistentVolumeClaim as the Volume of its
//!   name, from its StorageClass (image, clone, expansion, status).
//! - [`template`]: numbers VM template versions, keeps each template's
//!   default and latest version, and creates the default templates.
//! - [`network`]: cluster networks (index, nodes, data path) and IPPools
//!   (an address per VM NIC, the node that serves DHCP).
//! - [`backup`]: backup targets (health, backups found there) and
//!   Backups (snapshot, node, parent, verification, deletion).
//! - [`vm_backup`]: Harvester's VirtualMachineBackup (a VM's spec and all
//!   its volumes at one point) and VirtualMachineRestore.
//! - [`trash`]: deleted volumes kept with their snapshots until their
//!   retention ends or a purge is asked for.
//! - [`events`]: core `v1` Events about what they did, and
//!   [`transitions`]: Events for the state changes written into status
//!   (VM and VMI phases, nodes, volumes, images, backups, snapshots).
//!
//! The server starts them all with [`run_all`]; they keep no state of their
//! own, so they can be stopped and started at any time.

pub mod backup;
pub mod claim;
pub mod events;
pub mod failover;
pub mod maintenance;
pub mod migration;
pub mod network;
pub mod node;
pub mod quota;
pub mod runtime;
pub mod scheduler;
pub mod template;
pub mod transitions;
pub mod trash;
pub mod vm;
pub mod vm_backup;
pub mod vm_claims;
pub mod volume;

use std::sync::Arc;

use sheaf_client::Api;

/// Runs the VM controller, the scheduler, the Volume controller and the
/// node lifecycle controller until the future is dropped.
///
/// ```ignore
/// let api = sheaf_apiserver::local_api::LocalApi::new(server.objects.clone());
/// tokio::spawn(sheaf_controllers::run_all(api));
/// ```
pub async fn run_all(api: Arc<dyn Api>) {
    run_all_with(api, Settings::default()).await
}

/// The controllers' settings that `sheaf server` exposes as flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a node's agent may stay silent before its VMs are failed
    /// over ([`node::GRACE`]).
    pub node_grace: std::time::Duration,
    /// How long a deleted volume's snapshots stay in the trash.
    pub trash_retention: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { node_grace: node::GRACE, trash_retention: sheaf_types::storage::DEFAULT_TRASH_RETENTION }
    }
}

/// [`run_all`] with these settings.
pub async fn run_all_with(api: Arc<dyn Api>, settings: Settings) {
    tokio::join!(
        vm::run(api.clone(), vm::Config::default()),
        scheduler::run(api.clone()),
        migration::run(api.clone()),
        maintenance::run(api.clone()),
        volume::run(api.clone()),
        claim::run(api.clone()),
        template::run(api.clone()),
        network::run(api.clone()),
        backup::run(api.clone()),
        vm_backup::run(api.clone()),
        trash::run(api.clone(), settings.trash_retention),
        quota::run(api.clone()),
        transitions::run(api.clone()),
        node::run(api, node::Config { grace: settings.node_grace }),
    );
}
