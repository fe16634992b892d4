//! Backups of Sheaf volumes (docs/design/backups.md).
//!
//! A **target** is a place that keeps objects: an S3-compatible bucket or
//! a directory (an NFS mount, a local disk) — [`store::ObjectStore`]. On it
//! a [`repo::Repository`] keeps content-addressed, compressed chunks shared
//! by every backup of every volume, and one manifest per backup, written
//! last, so a half-written backup is never listed. [`volume`] reads a
//! volume's snapshot and backs it up (only the chunks changed since the
//! previous backup are read), and restores a backup into a volume.

pub mod blk;
pub mod chunk;
pub mod files;
pub mod manifest;
pub mod repo;
pub mod store;
pub mod target;
pub mod volume;

pub use manifest::{ChunkId, VolumeManifest};
pub use repo::Repository;
pub use store::{ObjectStore, StoreError};
