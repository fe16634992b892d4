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
//!
//! On VirtualMachineInstances, `pause`, `unpause` and `softreboot` record a
//! request in the instance's annotations ([`vmi_requests`]); the node agent
//! running the instance carries it out and reports it (the `Paused`
//! condition, or the id of the soft reboot done), and the call returns once
//! it has, or fails with a timeout.
//!
//! `addvolume` and `removevolume` (on both kinds) are in [`crate::hotplug`];
//! `console` and `vnc` in [`crate::console`], `log` in [`crate::serial_log`].

use std::time::Duration;

use serde_json::{json, Value};
use sheaf_types::kubevirt::{vmi_requests, RunStrategy, VirtualMachine};

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
    let vmi = |sub: &str, verb: &str| {
        json!({"name": format!("virtualmachineinstances/{sub}"), "singularName": "", "namespaced": true,
               "kind": "VirtualMachineInstance", "verbs": [verb]})
    };
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"),
        "resources": [
            vm("start"), vm("stop"), vm("restart"), vm("migrate"), vm("addvolume"), vm("removevolume"),
            json!({"name": "virtualmachines/clone", "singularName": "", "namespaced": true,
                   "kind": "VirtualMachine", "verbs": ["create"]}),
            vmi("pause", "update"), vmi("unpause", "update"), vmi("softreboot", "update"),
            vmi("addvolume", "update"), vmi("removevolume", "update"),
            vmi("console", "get"), vmi("vnc", "get"), vmi("guestosinfo", "get"), vmi("log", "get"),
        ],
    })
}

/// Handles `PUT .../virtualmachines/NAME/migrate` (what `virtctl migrate`
/// sends; body: KubeVirt's MigrateOptions, `dryRun` and
/// `addedNodeSelector`): a VirtualMachineInstanceMigration of the VM's
/// running instance, as KubeVirt makes it.
pub async fn vm_migrate(objects: &Objects, ns: &str, name: &str, body: &[u8]) -> ApiResult<()> {
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not MigrateOptions JSON: {e}")))?
    };
    let Some(vmi_rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachineinstances").cloned() else {
        return Err(ApiError::internal("VirtualMachineInstance kind is not registered"));
    };
    let Some(mig_rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachineinstancemigrations").cloned() else {
        return Err(ApiError::internal("VirtualMachineInstanceMigration kind is not registered"));
    };
    let Some(vm_rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachines").cloned() else {
        return Err(ApiError::internal("VirtualMachine kind is not registered"));
    };
    // 404 when there is no such VM.
    objects.get(&vm_rt, Some(ns), name).await?;
    let vmi = match objects.get(&vmi_rt, Some(ns), name).await {
        Ok(v) => v,
        Err(e) if e.code == http::StatusCode::NOT_FOUND => {
            return Err(conflict(format!("VM {name:?} is not running; start it before migrating it")));
        }
        Err(e) => return Err(e),
    };
    if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(conflict(format!("VM {name:?} is not running; start it before migrating it")));
    }
    let mut spec = json!({"vmiName": name});
    if let Some(sel) = opts.get("addedNodeSelector").filter(|v| !v.is_null()) {
        spec["addedNodeSelector"] = sel.clone();
    }
    let migration = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"generateName": "kubevirt-migrate-vm-", "namespace": ns},
        "spec": spec,
    });
    let dry_run = opts.get("dryRun").and_then(Value::as_array).is_some_and(|d| !d.is_empty());
    let write = WriteOptions { dry_run, ..WriteOptions::default() };
    objects.create(&mig_rt, Some(ns), migration, &write).await.map(drop)
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(http::StatusCode::CONFLICT, "Conflict", message)
}

/// Handles `PUT .../virtualmachines/NAME/ACTION`. The decision is made on
/// the VM as read and written pinned to its revision; when the VM changed
/// in between (its controller writes its status), it is made again.
pub async fn vm_action(objects: &Objects, ns: &str, name: &str, action: &str) -> ApiResult<()> {
    let mut attempt = 0;
    loop {
        match vm_action_once(objects, ns, name, action).await {
            Err(e)
                if e.code == http::StatusCode::CONFLICT && e.message.contains("has been modified") && attempt < 8 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            r => return r,
        }
    }
}

async fn vm_action_once(objects: &Objects, ns: &str, name: &str, action: &str) -> ApiResult<()> {
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
                "virtualmachines has no subresource {other:?}; use start, stop, restart, addvolume or removevolume"
            )))
        }
    };
    objects.patch(&vm_rt, Some(ns), name, PatchType::Merge, patch, status, false, &opts).await?;
    Ok(())
}

/// How long a pause, unpause or soft reboot may take the node agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

fn condition_true(vmi: &Value, type_: &str) -> bool {
    vmi.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter()
            .any(|c| c.get("type").and_then(Value::as_str) == Some(type_) && c.get("status") == Some(&json!("True")))
    })
}

fn annotation<'a>(vmi: &'a Value, key: &str) -> Option<&'a str> {
    vmi.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str)
}

/// Whether the agent has carried out a request, seen in the VMI: not yet
/// (`None`), done, or failed with a message.
type Done = dyn Fn(&Value) -> Option<Result<(), String>> + Send;

/// Handles `PUT .../virtualmachineinstances/NAME/{pause,unpause,softreboot}`.
pub async fn vmi_action(objects: &Objects, ns: &str, name: &str, action: &str) -> ApiResult<()> {
    let Some(rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachineinstances").cloned() else {
        return Err(ApiError::internal("VirtualMachineInstance kind is not registered"));
    };
    let vmi = objects.get(&rt, Some(ns), name).await?;
    let uid = vmi.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    if vmi.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(conflict(format!("VMI {name:?} is being deleted")));
    }
    if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(conflict(format!("VMI {name:?} is not running")));
    }
    let paused = condition_true(&vmi, "Paused");
    let annotate = |key: &str, value: Value| json!({"metadata": {"uid": uid, "annotations": {key: value}}});
    // The patch, and when the agent has carried it out.
    let (patch, done): (Value, Box<Done>) = match action {
        "pause" => {
            if paused {
                return Err(conflict(format!("VMI {name:?} is already paused")));
            }
            (annotate(vmi_requests::PAUSED, json!("true")), Box::new(|v| condition_true(v, "Paused").then_some(Ok(()))))
        }
        "unpause" => {
            if !paused && annotation(&vmi, vmi_requests::PAUSED).is_none() {
                return Err(conflict(format!("VMI {name:?} is not paused")));
            }
            (
                annotate(vmi_requests::PAUSED, Value::Null),
                Box::new(|v| (!condition_true(v, "Paused")).then_some(Ok(()))),
            )
        }
        "softreboot" => {
            if paused {
                return Err(conflict(format!("VMI {name:?} is paused; unpause it first")));
            }
            let id = uuid::Uuid::new_v4().to_string();
            let check = {
                let id = id.clone();
                move |v: &Value| {
                    let done = annotation(v, vmi_requests::SOFT_REBOOT_DONE)?;
                    let rest = done.strip_prefix(id.as_str())?;
                    match rest.strip_prefix(": ") {
                        None if rest.is_empty() => Some(Ok(())),
                        None => None,
                        Some(err) => Some(Err(err.to_string())),
                    }
                }
            };
            (annotate(vmi_requests::SOFT_REBOOT, json!(id)), Box::new(check))
        }
        other => {
            return Err(ApiError::not_found_msg(format!(
                "virtualmachineinstances has no subresource {other:?}; use pause, unpause, softreboot, addvolume, \
                 removevolume, console, vnc or guestosinfo"
            )))
        }
    };
    let opts = WriteOptions::default();
    objects.patch(&rt, Some(ns), name, PatchType::Merge, patch, false, false, &opts).await?;
    let deadline = tokio::time::Instant::now() + AGENT_TIMEOUT;
    loop {
        let cur = match objects.get(&rt, Some(ns), name).await {
            Ok(v) => v,
            Err(e) if e.code == http::StatusCode::NOT_FOUND => {
                return Err(conflict(format!("VMI {name:?} was deleted before the {action} was carried out")))
            }
            Err(e) => return Err(e),
        };
        match done(&cur) {
            Some(Ok(())) => return Ok(()),
            Some(Err(message)) => {
                return Err(ApiError::new(
                    http::StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("{action} of VMI {name:?} failed: {message}"),
                ))
            }
            None => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!(
                    "the node agent running VMI {name:?} has not carried out the {action} within {} s; \
                     the request stays recorded and will be carried out when the agent gets to it",
                    AGENT_TIMEOUT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Handles `GET .../virtualmachineinstances/NAME/guestosinfo`: what the
/// guest agent reported, in KubeVirt's `VirtualMachineInstanceGuestAgentInfo`
/// shape.
pub async fn guest_os_info(objects: &Objects, ns: &str, name: &str) -> ApiResult<Value> {
    let Some(rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachineinstances").cloned() else {
        return Err(ApiError::internal("VirtualMachineInstance kind is not registered"));
    };
    let vmi = objects.get(&rt, Some(ns), name).await?;
    if !condition_true(&vmi, "AgentConnected") {
        return Err(ApiError::new(
            http::StatusCode::CONFLICT,
            "Conflict",
            format!(
                "VMI {name:?} does not have a guest agent connected (install and start qemu-guest-agent in the guest)"
            ),
        ));
    }
    let mut info = json!({"kind": "VirtualMachineInstanceGuestAgentInfo", "apiVersion": "v1"});
    if let Some(os) = vmi.pointer("/status/guestOSInfo") {
        info["os"] = os.clone();
    }
    if let Some(agent) =
        vmi.pointer("/metadata/annotations").and_then(|a| a.get(vmi_requests::GUEST_AGENT_INFO)).and_then(Value::as_str)
    {
        if let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(agent) {
            for (k, v) in extra {
                info[k] = v;
            }
        }
    }
    Ok(info)
}
