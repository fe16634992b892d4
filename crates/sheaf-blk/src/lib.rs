//! Sheaf's replicated block storage (see docs/design/storage-engine.md).
//!
//! - [`store`]: a replica's blocks on a node disk: a chain of sparse layers
//!   (snapshots and the live head) with per-block checksums.

pub mod store;
