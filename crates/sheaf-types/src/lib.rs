//! Sheaf's API types: object metadata, resource kinds and validation.
//!
//! Kinds use the group, kind and field names of Kubernetes, KubeVirt and
//! Harvester where those exist, so that existing manifests work unchanged.
//! This crate does no I/O.

pub mod backup;
pub mod claim;
pub mod coordination;
pub mod core;
pub mod cron;
pub mod harvester;
pub mod join;
pub mod kubevirt;
pub mod meta;
pub mod metrics;
pub mod network;
pub mod quantity;
pub mod quota;
pub mod rbac;
pub mod registry;
pub mod resource;
pub mod storage;
pub mod template;
pub mod validation;
pub mod vm_backup;

pub use meta::{ObjectMeta, Status, Time};
pub use resource::{Column, Decoded, Kind, ResourceType};
pub use validation::{FieldError, FieldErrorReason};
