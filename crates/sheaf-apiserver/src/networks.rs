//! Admission of VM networks (see docs/design/networks.md): the checks that
//! need other objects, run on every create and update of the network kinds
//! and on every delete, whatever the client.
//!
//! - A NetworkAttachmentDefinition's cluster network must exist.
//! - An IPPool's network must exist, be the only pool of that network, and
//!   its CIDR must not overlap another pool's.
//! - A VlanConfig's cluster network must exist, and no node may be matched
//!   by two VlanConfigs of one cluster network.
//! - Deletes are refused (409) while something uses the object: a VM
//!   network named by a VirtualMachine or VirtualMachineInstance; a
//!   ClusterNetwork with VM networks or VlanConfigs; `mgmt` always.

use serde_json::Value;
use sheaf_types::core::Node;
use sheaf_types::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec};
use sheaf_types::network::{
    nad_key, ClusterNetwork, IpPool, NetworkAttachmentDefinition, Subnet, VlanConfig, GROUP, MGMT,
};
use sheaf_types::{FieldError, Kind, ResourceType};

use crate::error::{ApiError, ApiResult, Target};
use crate::objects::{namespace_of, Objects};
use crate::protection::list_of;

fn is<K: Kind>(rt: &ResourceType) -> bool {
    rt.group == K::GROUP && rt.kind == K::KIND
}

fn invalid(rt: &ResourceType, obj: &Value, errors: Vec<FieldError>) -> ApiResult<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let name = crate::objects::name_of(obj);
    Err(ApiError::invalid(&Target { group: rt.group, resource: rt.plural, name }, rt.kind, &errors))
}

async fn cluster_network_exists(objects: &Objects, name: &str) -> ApiResult<bool> {
    Ok(list_of::<ClusterNetwork>(objects, None).await?.iter().any(|c| c.metadata.name.as_deref() == Some(name)))
}

/// Checks a network object about to be written (`old`: the stored one on
/// update).
pub async fn check_write(objects: &Objects, rt: &ResourceType, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    if is::<NetworkAttachmentDefinition>(rt) {
        let Ok(nad) = serde_json::from_value::<NetworkAttachmentDefinition>(obj.clone()) else { return Ok(()) };
        let cn = nad.cluster_network();
        if old.is_none() && !cluster_network_exists(objects, &cn).await? {
            let field = format!("metadata.labels[{}]", sheaf_types::network::CLUSTER_NETWORK_LABEL);
            return invalid(
                rt,
                obj,
                vec![FieldError::invalid(
                    field,
                    format!("cluster network {cn:?} does not exist: create the ClusterNetwork first, or use mgmt"),
                )],
            );
        }
    } else if is::<IpPool>(rt) {
        let Ok(pool) = serde_json::from_value::<IpPool>(obj.clone()) else { return Ok(()) };
        return check_pool(objects, rt, obj, &pool).await;
    } else if is::<VlanConfig>(rt) {
        let Ok(vc) = serde_json::from_value::<VlanConfig>(obj.clone()) else { return Ok(()) };
        return check_vlan_config(objects, rt, obj, &vc).await;
    }
    Ok(())
}

async fn check_pool(objects: &Objects, rt: &ResourceType, obj: &Value, pool: &IpPool) -> ApiResult<()> {
    let mut errs = Vec::new();
    let net = &pool.spec.network_name;
    let nads: Vec<NetworkAttachmentDefinition> = list_of(objects, None).await?;
    if !nads.iter().any(|n| &n.key() == net) {
        errs.push(FieldError::invalid(
            "spec.networkName",
            format!("network {net} does not exist: create its NetworkAttachmentDefinition first"),
        ));
    }
    let me = (namespace_of(obj).unwrap_or_default(), pool.metadata.name.as_deref().unwrap_or_default());
    let cidr: Option<Subnet> = pool.spec.ipv4_config.cidr.parse().ok();
    for other in list_of::<IpPool>(objects, None).await? {
        let them = (
            other.metadata.namespace.as_deref().unwrap_or_default(),
            other.metadata.name.as_deref().unwrap_or_default(),
        );
        if them == me || other.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if &other.spec.network_name == net {
            errs.push(FieldError::duplicate("spec.networkName", net));
            errs.last_mut().into_iter().for_each(|e| {
                e.message = format!("network {net} already has IPPool {}/{}; a network has one pool", them.0, them.1)
            });
        }
        if let (Some(a), Ok(b)) = (cidr, other.spec.ipv4_config.cidr.parse::<Subnet>()) {
            if a.overlaps(&b) {
                errs.push(FieldError::invalid(
                    "spec.ipv4Config.cidr",
                    format!(
                        "{a} overlaps {b} of IPPool {}/{} (network {}); VM networks need subnets of their own",
                        them.0, them.1, other.spec.network_name
                    ),
                ));
            }
        }
    }
    invalid(rt, obj, errs)
}

fn matches(selector: &std::collections::BTreeMap<String, String>, node: &Node) -> bool {
    selector.iter().all(|(k, v)| node.metadata.labels.get(k) == Some(v))
}

async fn check_vlan_config(objects: &Objects, rt: &ResourceType, obj: &Value, vc: &VlanConfig) -> ApiResult<()> {
    let cn = &vc.spec.cluster_network;
    if cn.is_empty() || cn == MGMT {
        return Ok(()); // the type's own validation said so
    }
    let mut errs = Vec::new();
    if !cluster_network_exists(objects, cn).await? {
        errs.push(FieldError::invalid(
            "spec.clusterNetwork",
            format!("cluster network {cn:?} does not exist: create the ClusterNetwork first"),
        ));
    }
    let nodes: Vec<Node> = list_of(objects, None).await?;
    let me = vc.metadata.name.as_deref().unwrap_or_default();
    for other in list_of::<VlanConfig>(objects, None).await? {
        if other.metadata.name.as_deref() == Some(me) || &other.spec.cluster_network != cn {
            continue;
        }
        let both: Vec<&str> = nodes
            .iter()
            .filter(|n| matches(&vc.spec.node_selector, n) && matches(&other.spec.node_selector, n))
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        if !both.is_empty() {
            errs.push(FieldError::invalid(
                "spec.nodeSelector",
                format!(
                    "node(s) {} already get cluster network {cn} from VlanConfig {}: a node has one uplink per \
                     cluster network; narrow the node selectors",
                    both.join(", "),
                    other.metadata.name.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    invalid(rt, obj, errs)
}

/// The VM networks (`namespace/name`) an instance spec uses.
fn networks_of(ns: &str, spec: &VirtualMachineInstanceSpec) -> Vec<String> {
    spec.networks.iter().filter_map(|n| n.multus.as_ref()).map(|m| nad_key(ns, &m.network_name)).collect()
}

fn in_use(kind: &str, name: &str, users: &[String], what_to_do: &str) -> ApiError {
    ApiError::new(
        http::StatusCode::CONFLICT,
        "Conflict",
        format!("{kind} {name} is in use by {}: {what_to_do}; nothing was deleted", users.join(", ")),
    )
}

/// Refuses the deletion of a network object that is in use.
pub async fn check_delete(objects: &Objects, rt: &ResourceType, obj: &Value) -> ApiResult<()> {
    if is::<NetworkAttachmentDefinition>(rt) {
        let Ok(nad) = serde_json::from_value::<NetworkAttachmentDefinition>(obj.clone()) else { return Ok(()) };
        let key = nad.key();
        let mut users = Vec::new();
        for vm in list_of::<VirtualMachine>(objects, None).await? {
            let ns = vm.metadata.namespace.clone().unwrap_or_default();
            if networks_of(&ns, &vm.spec.template.spec).contains(&key) {
                users.push(format!("VirtualMachine {ns}/{}", vm.metadata.name.unwrap_or_default()));
            }
        }
        for vmi in list_of::<VirtualMachineInstance>(objects, None).await? {
            let ns = vmi.metadata.namespace.clone().unwrap_or_default();
            let owned = vmi.metadata.owner_references.iter().any(|o| o.kind == "VirtualMachine");
            if !owned && networks_of(&ns, &vmi.spec).contains(&key) {
                users.push(format!("VirtualMachineInstance {ns}/{}", vmi.metadata.name.unwrap_or_default()));
            }
        }
        if !users.is_empty() {
            return Err(in_use(
                "network",
                &key,
                &users,
                "delete those VMs or remove the network from them (spec.template.spec.networks and its interface) \
                 first",
            ));
        }
    } else if is::<ClusterNetwork>(rt) {
        let name = crate::objects::name_of(obj).to_string();
        if name == MGMT {
            return Err(ApiError::forbidden(
                "the mgmt cluster network is built in and cannot be deleted; nothing was deleted",
            ));
        }
        let mut users: Vec<String> = list_of::<NetworkAttachmentDefinition>(objects, None)
            .await?
            .iter()
            .filter(|n| n.cluster_network() == name)
            .map(|n| format!("network {}", n.key()))
            .collect();
        users.extend(
            list_of::<VlanConfig>(objects, None)
                .await?
                .iter()
                .filter(|v| v.spec.cluster_network == name)
                .map(|v| format!("VlanConfig {}", v.metadata.name.as_deref().unwrap_or_default())),
        );
        if !users.is_empty() {
            return Err(in_use("cluster network", &name, &users, "delete them first"));
        }
    }
    Ok(())
}

/// The built-in `mgmt` ClusterNetwork, created at bootstrap.
pub fn mgmt_cluster_network() -> Value {
    serde_json::json!({
        "apiVersion": format!("{GROUP}/v1beta1"), "kind": "ClusterNetwork",
        "metadata": {"name": MGMT},
        "spec": {"dataPath": "VXLAN"}
    })
}
