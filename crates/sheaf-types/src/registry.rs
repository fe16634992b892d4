//! The kinds Sheaf serves.

use crate::resource::ResourceType;
use crate::{
    backup, claim, coordination, core, harvester, kubevirt, network, quota, rbac, storage, template, vm_backup,
};

/// Every kind the API server serves, in discovery order.
pub fn all() -> Vec<ResourceType> {
    vec![
        ResourceType::of::<core::Namespace>(),
        ResourceType::of::<core::Node>(),
        ResourceType::of::<core::Secret>(),
        ResourceType::of::<core::ConfigMap>(),
        ResourceType::of::<core::Event>(),
        ResourceType::of::<quota::ResourceQuota>(),
        ResourceType::of::<kubevirt::VirtualMachine>(),
        ResourceType::of::<kubevirt::VirtualMachineInstance>(),
        ResourceType::of::<kubevirt::VirtualMachineInstanceMigration>(),
        ResourceType::of::<harvester::KeyPair>(),
        ResourceType::of::<harvester::VirtualMachineImage>(),
        ResourceType::of::<template::VirtualMachineTemplate>(),
        ResourceType::of::<template::VirtualMachineTemplateVersion>(),
        ResourceType::of::<storage::Volume>(),
        ResourceType::of::<storage::Replica>(),
        ResourceType::of::<storage::VolumeSnapshot>(),
        ResourceType::of::<storage::Disk>(),
        ResourceType::of::<claim::PersistentVolumeClaim>(),
        ResourceType::of::<claim::StorageClass>(),
        ResourceType::of::<network::ClusterNetwork>(),
        ResourceType::of::<network::VlanConfig>(),
        ResourceType::of::<network::NetworkAttachmentDefinition>(),
        ResourceType::of::<network::IpPool>(),
        ResourceType::of::<coordination::Lease>(),
        ResourceType::of::<backup::BackupTarget>(),
        ResourceType::of::<backup::Backup>(),
        ResourceType::of::<vm_backup::VirtualMachineBackup>(),
        ResourceType::of::<vm_backup::VirtualMachineRestore>(),
        ResourceType::of::<vm_backup::ScheduleVMBackup>(),
        ResourceType::of::<rbac::Role>(),
        ResourceType::of::<rbac::ClusterRole>(),
        ResourceType::of::<rbac::RoleBinding>(),
        ResourceType::of::<rbac::ClusterRoleBinding>(),
        ResourceType::of::<rbac::User>(),
    ]
}
