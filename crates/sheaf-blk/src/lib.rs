//! Sheaf's replicated block storage (see docs/design/storage-engine.md).
//!
//! - [`auth`]: the cluster key and the handshake that opens every TCP
//!   connection between an engine and a replica server.
//! - [`base`]: read-only base images that volumes made from an image
//!   share below their own layers.
//! - [`store`]: a replica's blocks on a node disk: a chain of sparse layers
//!   (snapshots and the live head) with per-block checksums.
//! - [`proto`] and [`replica_server`]: the engine ↔ replica protocol and
//!   the server that exposes one replica.
//! - [`engine`]: one per attached volume; replicates writes to every
//!   healthy replica, fences older engines by epoch.
//! - [`nbd`]: the NBD frontend QEMU attaches to (`-blockdev driver=nbd`).
//! - [`vhost_user`]: the vhost-user-blk frontend (`-device
//!   vhost-user-blk-pci`): guest memory shared with the engine, several
//!   queues, and size changes shown to the running guest.
//! - [`standby`]: an engine that serves the frontends at once but takes
//!   the volume over only when first needed (the target of a live
//!   migration).
//! - [`control`]: the engine's control socket for the node agent.

pub mod auth;
pub mod base;
pub mod control;
pub mod engine;
pub mod nbd;
pub mod proto;
pub mod replica_server;
pub mod standby;
pub mod store;
pub mod vhost_user;
