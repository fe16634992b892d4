//! KubeVirt's `subresources.kubevirt.io/v1` API: start, stop and restart of
//! VirtualMachines, with KubeVirt's semantics.
//!
//! - `start`: a Halted VM becomes `runStrategy: Always` (or `running:
//!   true`); Manual and RerunOnFailure VMs get a `Start` state change
//!   request; a running VM is a 409.
//! - `stop`: Always and RerunOnFailure VMs become Halted (or `running:
//!   false`); Manual VMs get a `Stop` request for the current VMI.
//! - `restart`: a `Stop` request for the current VMI followed by `Start`.
//!
//! State change requests live in the VM's status and are carried out by
//! the VirtualMachine controller.

use serde_json::{json, Value};
use sheaf_types::kubevirt::{RunStrategy, VirtualMachine};

use crate::error::{ApiError, ApiResult};
use crate::objects::{Objects, WriteOptions};
use crate::patch::PatchType;

pub const GROUP: &str = "subresources.kubevirt.io";

/// `APIResourceList` of the subresources group.
pub fn discovery() -> Value {
    let vm = |verb: &str| {
        json!({"name": format!("virtualmachines/{verb}"), "singularName": "", "namespaced": true,
               "kind": "VirtualMachine", "verbs": ["update"]})
    };
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"),
        "resources": [vm("start"), vm("stop"), vm("restart")],
    })
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(http::StatusCode::CONFLICT, "Conflict", message)
}

/// Handles `PUT .../virtualmachines/NAME/ACTION`.
pub async fn vm_action(objects: &Objects, ns: &str, name: &str, action: &str) -> ApiResult<()> {
    let Some(vm_rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachines").cloned() else {
        return Err(ApiError::internal("VirtualMachine kind is not registered"));
    };
    let Some(vmi_rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachineinstances").cloned() else {
        return Err(ApiError::internal("VirtualMachineInstance kind is not registered"));
    };
    let obj = objects.get(&vm_rt, Some(ns), name).await?;
    let vm: VirtualMachine = serde_json::from_value(obj.clone())
        .map_err(|e| ApiError::internal(format!("stored VirtualMachine does not decode: {e}")))?;
    let vmi = match objects.get(&vmi_rt, Some(ns), name).await {
        Ok(v) => Some(v),
        Err(e) if e.code == http::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    };
    let vmi_uid = vmi.as_ref().and_then(|v| v.pointer("/metadata/uid")).and_then(Value::as_str).map(str::to_string);
    let vmi_active = vmi.as_ref().is_some_and(|v| {
        v.pointer("/metadata/deletionTimestamp").is_none()
            && !matches!(v.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
    });
    let pending = vm.status.as_ref().is_some_and(|s| !s.state_change_requests.is_empty());
    let strategy = vm.spec.effective_run_strategy();
    let uses_running = vm.spec.run_strategy.is_none() && vm.spec.running.is_some();
    let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
    let opts = WriteOptions::default();

    let set_strategy = |s: &str, running: bool| {
        if uses_running {
            json!({"metadata": {"resourceVersion": rv}, "spec": {"running": running}})
        } else {
            json!({"metadata": {"resourceVersion": rv}, "spec": {"runStrategy": s}})
        }
    };
    let requests = |reqs: Value| json!({"metadata": {"resourceVersion": rv}, "status": {"stateChangeRequests": reqs}});

    let (patch, status) = match action {
        "start" => {
            if vmi_active {
                return Err(conflict(format!("VM {name:?} is already running")));
            }
            if pending {
                return Err(conflict(format!("VM {name:?} has a pending state change request; try again shortly")));
            }
            match strategy {
                RunStrategy::Halted => (set_strategy("Always", true), false),
                RunStrategy::Always => {
                    return Err(conflict(format!(
                        "VM {name:?} has runStrategy Always and is being started by its controller"
                    )))
                }
                RunStrategy::WaitAsReceiver => {
                    return Err(conflict("a VM waiting for a migration cannot be started"));
                }
                _ => (requests(json!([{"action": "Start"}])), true),
            }
        }
        "stop" => match strategy {
            RunStrategy::Halted if !vmi_active => {
                return Err(conflict(format!("VM {name:?} is not running")));
            }
            RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Halted => {
                (set_strategy("Halted", false), false)
            }
            _ => {
                let Some(uid) = vmi_uid.filter(|_| vmi_active) else {
                    return Err(conflict(format!("VM {name:?} is not running")));
                };
                (requests(json!([{"action": "Stop", "uid": uid}])), true)
            }
        },
        "restart" => {
            let Some(uid) = vmi_uid.filter(|_| vmi_active) else {
                return Err(conflict(format!("VM {name:?} is not running; start it instead")));
            };
            if pending {
                return Err(conflict(format!("VM {name:?} has a pending state change request; try again shortly")));
            }
            (requests(json!([{"action": "Stop", "uid": uid}, {"action": "Start"}])), true)
        }
        other => {
            return Err(ApiError::not_found_msg(format!(
                "virtualmachines has no subresource {other:?}; use start, stop or restart"
            )))
        }
    };
    objects.patch(&vm_rt, Some(ns), name, PatchType::Merge, patch, status, false, &opts).await?;
    Ok(())
}
