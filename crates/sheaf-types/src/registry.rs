//! The kinds Sheaf serves.

use crate::resource::ResourceType;
use crate::{core, harvester, kubevirt};

/// Every kind the API server serves, in discovery order.
pub fn all() -> Vec<ResourceType> {
    vec![
        ResourceType::of::<core::Namespace>(),
        ResourceType::of::<core::Node>(),
        ResourceType::of::<core::Secret>(),
        ResourceType::of::<core::ConfigMap>(),
        ResourceType::of::<core::Event>(),
        ResourceType::of::<kubevirt::VirtualMachine>(),
        ResourceType::of::<kubevirt::VirtualMachineInstance>(),
        ResourceType::of::<kubevirt::VirtualMachineInstanceMigration>(),
        ResourceType::of::<harvester::KeyPair>(),
    ]
}
