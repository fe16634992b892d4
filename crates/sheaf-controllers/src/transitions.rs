//! Events for the state changes that node agents and controllers write
//! into objects' status, so that `kubectl describe` and `kubectl get
//! events` tell a VM's, a node's or a volume's story:
//!
//! | Kind | Watched | Events (reason) |
//! |---|---|---|
//! | VirtualMachine | `status.printableStatus` | the new status: `Starting`, `Running`, `Paused`, `Migrating`, `Stopping`, `Stopped`, `CrashLoopBackOff` (Warning), `ErrorUnschedulable` (Warning), ... |
//! | VirtualMachineInstance | `status.phase`, the `Paused` condition, `status.nodeName` | `Started`, `Stopped`, `Failed` (Warning), `Paused`, `Resumed`, `Migrated` |
//! | Node | the `Ready` condition, `spec.unschedulable` | `NodeReady`, `NodeNotReady` (Warning), `NodeNotSchedulable`, `NodeSchedulable` |
//! | Volume | `status.state`, `status.robustness`, each replica's state, `status.restoredFrom` | `Attached`, `Detached`, `Faulted`, `Healthy`, `Degraded` (Warning), `Rebuilding`, `Rebuilt`, `ReplicaFailed` (Warning), `Restored` |
//! | VirtualMachineImage | the `Imported` condition, `status.failed` | `ImportSucceeded`, `ImportFailed` (Warning) |
//! | Backup | `status.phase` | `BackupCompleted` (failures have their Event from [`crate::backup`]) |
//! | VolumeSnapshot | `status.readyToUse`, `status.error` | `SnapshotCreated`, `SnapshotFailed` (Warning) |
//!
//! Other Events come from the controller that acts (the VM controller's
//! `SuccessfulCreate`/`SuccessfulDelete`, the scheduler's `Scheduled` and
//! `FailedScheduling`, migrations, maintenance, backups and restores).
//!
//! One task per kind lists and watches it and keeps, in memory, the
//! watched values of every object. An object seen for the first time (at
//! start, or created) records nothing; a change of a watched value records
//! its Event. Changes made while no leader ran are seen at the first list
//! of the next one only if its memory had the object: a new leader starts
//! silent. Repeats are folded by the [`EventRecorder`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use sheaf_client::{Api, Gvr, Selectors, WatchEvent};
use sheaf_types::meta::ObjectReference;

use crate::events::{EventRecorder, EventType};

/// `source.component` of these Events.
pub const COMPONENT: &str = "sheaf-status";

/// The watched values of one object, by name.
type Facts = BTreeMap<String, String>;

/// A kind whose status changes become Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    Vm,
    Vmi,
    Node,
    Volume,
    Image,
    Backup,
    Snapshot,
}

impl Watched {
    const ALL: [Watched; 7] =
        [Watched::Vm, Watched::Vmi, Watched::Node, Watched::Volume, Watched::Image, Watched::Backup, Watched::Snapshot];

    fn gvr(self) -> Gvr {
        let (group, version, plural) = match self {
            Watched::Vm => ("kubevirt.io", "v1", "virtualmachines"),
            Watched::Vmi => ("kubevirt.io", "v1", "virtualmachineinstances"),
            Watched::Node => ("", "v1", "nodes"),
            Watched::Volume => ("sheaf.io", "v1alpha1", "volumes"),
            Watched::Image => ("harvesterhci.io", "v1beta1", "virtualmachineimages"),
            Watched::Backup => ("sheaf.io", "v1alpha1", "backups"),
            Watched::Snapshot => ("sheaf.io", "v1alpha1", "volumesnapshots"),
        };
        Gvr { group, version, plural }
    }

    fn kind(self) -> &'static str {
        match self {
            Watched::Vm => "VirtualMachine",
            Watched::Vmi => "VirtualMachineInstance",
            Watched::Node => "Node",
            Watched::Volume => "Volume",
            Watched::Image => "VirtualMachineImage",
            Watched::Backup => "Backup",
            Watched::Snapshot => "VolumeSnapshot",
        }
    }

    fn api_version(self) -> String {
        let g = self.gvr();
        if g.group.is_empty() {
            g.version.to_string()
        } else {
            format!("{}/{}", g.group, g.version)
        }
    }
}

fn text<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn condition_status(obj: &Value, type_: &str) -> Option<String> {
    condition(obj, type_).and_then(|c| c.get("status")).and_then(Value::as_str).map(str::to_string)
}

fn condition_message(obj: &Value, type_: &str) -> String {
    let c = condition(obj, type_);
    let field = |k: &str| c.and_then(|c| c.get(k)).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (field("reason"), field("message")) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(x), None) | (None, Some(x)) => x.to_string(),
        (None, None) => String::new(),
    }
}

/// The watched values of `obj`.
fn facts(kind: Watched, obj: &Value) -> Facts {
    let mut f = Facts::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            f.insert(k.to_string(), v);
        }
    };
    match kind {
        Watched::Vm => put("status", text(obj, "/status/printableStatus").map(str::to_string)),
        Watched::Vmi => {
            put("phase", text(obj, "/status/phase").map(str::to_string));
            put("paused", condition_status(obj, "Paused").filter(|s| s == "True"));
            put("node", text(obj, "/status/nodeName").map(str::to_string));
        }
        Watched::Node => {
            put("ready", condition_status(obj, "Ready"));
            let cordoned = obj.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false);
            put("unschedulable", Some(cordoned.to_string()));
        }
        Watched::Volume => {
            put("state", text(obj, "/status/state").map(str::to_string));
            put("robustness", text(obj, "/status/robustness").map(str::to_string));
            put("restoredFrom", text(obj, "/status/restoredFrom").map(str::to_string));
            for r in obj.pointer("/status/replicas").and_then(Value::as_array).into_iter().flatten() {
                if let (Some(name), Some(state)) = (text(r, "/name"), text(r, "/state")) {
                    put(&format!("replica/{name}"), Some(state.to_string()));
                }
            }
        }
        Watched::Image => {
            put("imported", condition_status(obj, "Imported"));
            let failed = obj.pointer("/status/failed").and_then(Value::as_bool).unwrap_or(false);
            put("failed", Some(failed.to_string()));
        }
        Watched::Backup => put("phase", text(obj, "/status/phase").map(str::to_string)),
        Watched::Snapshot => {
            let ready = obj.pointer("/status/readyToUse").and_then(Value::as_bool).unwrap_or(false);
            put("ready", Some(ready.to_string()));
            put("error", text(obj, "/status/error").map(str::to_string));
        }
    }
    f
}

/// An Event to record: type, reason, message.
type Planned = (EventType, String, String);

fn normal(reason: &str, message: String) -> Option<Planned> {
    Some((EventType::Normal, reason.to_string(), message))
}

fn warning(reason: &str, message: String) -> Option<Planned> {
    Some((EventType::Warning, reason.to_string(), message))
}

/// The Event for `key` having changed from `old` to `new` in `obj`.
fn event_for(kind: Watched, obj: &Value, key: &str, old: Option<&str>, new: Option<&str>) -> Option<Planned> {
    let was = old.unwrap_or("none");
    match (kind, key) {
        (Watched::Vm, "status") => {
            let new = new?;
            let message = format!("VirtualMachine is {new} (was {was})");
            let bad = matches!(
                new,
                "CrashLoopBackOff"
                    | "ErrorUnschedulable"
                    | "ErrImagePull"
                    | "ImagePullBackOff"
                    | "ErrorPvcNotFound"
                    | "DataVolumeError"
                    | "Unknown"
            );
            if bad {
                warning(new, message)
            } else {
                normal(new, message)
            }
        }
        (Watched::Vmi, "phase") => {
            let node = text(obj, "/status/nodeName").unwrap_or("?");
            let reason = text(obj, "/status/reason");
            match new? {
                "Running" => normal("Started", format!("VirtualMachineInstance started on node {node}")),
                "Succeeded" => normal(
                    "Stopped",
                    format!("VirtualMachineInstance stopped ({}) on node {node}", reason.unwrap_or("GuestShutdown")),
                ),
                "Failed" => {
                    let why = condition_message(obj, "Ready");
                    let why = if why.is_empty() { reason.unwrap_or("unknown reason").to_string() } else { why };
                    warning("Failed", format!("VirtualMachineInstance failed on node {node}: {why}"))
                }
                _ => None,
            }
        }
        (Watched::Vmi, "paused") => match new {
            Some(_) => normal("Paused", "VirtualMachineInstance paused".into()),
            None if text(obj, "/status/phase") == Some("Running") => {
                normal("Resumed", "VirtualMachineInstance resumed".into())
            }
            None => None,
        },
        (Watched::Vmi, "node") => match (old, new) {
            (Some(from), Some(to)) => {
                normal("Migrated", format!("VirtualMachineInstance moved from node {from} to node {to}"))
            }
            _ => None,
        },
        (Watched::Node, "ready") => match new? {
            "True" => normal("NodeReady", format!("Node is Ready (was {was})")),
            status => {
                let why = condition_message(obj, "Ready");
                warning("NodeNotReady", format!("Node is not Ready (Ready={status}): {why}"))
            }
        },
        (Watched::Node, "unschedulable") => match new? {
            "true" => normal("NodeNotSchedulable", "Node is cordoned: no new VMs are placed on it".into()),
            _ => normal("NodeSchedulable", "Node is schedulable again".into()),
        },
        (Watched::Volume, "state") => match new? {
            "Attached" => {
                let node = text(obj, "/status/attachedTo").unwrap_or("?");
                let by = text(obj, "/status/attachedVmi").map(|v| format!(" for VMI {v}")).unwrap_or_default();
                normal("Attached", format!("Volume attached to node {node}{by}"))
            }
            "Detached" if old == Some("Attached") => normal("Detached", "Volume detached".into()),
            "Faulted" => warning("Faulted", "Volume is faulted: no replica can serve it".into()),
            _ => None,
        },
        (Watched::Volume, "robustness") => {
            let replicas: Vec<String> = obj
                .pointer("/status/replicas")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|r| text(r, "/state") != Some("Healthy"))
                .map(|r| {
                    format!(
                        "{} on {} is {}",
                        text(r, "/name").unwrap_or("?"),
                        text(r, "/node").unwrap_or("?"),
                        text(r, "/state").unwrap_or("?")
                    )
                })
                .collect();
            match new? {
                "Healthy" => normal("Healthy", format!("every replica of the volume is in service (was {was})")),
                "Degraded" => {
                    warning("Degraded", format!("the volume runs on fewer replicas: {}", replicas.join(", ")))
                }
                "Faulted" => {
                    warning("Faulted", format!("no replica of the volume is in service: {}", replicas.join(", ")))
                }
                _ => None,
            }
        }
        (Watched::Volume, k) if k.starts_with("replica/") => {
            let replica = &k["replica/".len()..];
            match (old, new?) {
                (_, "Rebuilding") => normal("Rebuilding", format!("replica {replica} is being rebuilt")),
                (Some("Rebuilding"), "Healthy") => {
                    normal("Rebuilt", format!("replica {replica} is rebuilt and in service"))
                }
                (Some(_), "Failed") => warning("ReplicaFailed", format!("replica {replica} failed (was {was})")),
                _ => None,
            }
        }
        (Watched::Volume, "restoredFrom") => normal("Restored", format!("Volume filled from {}", new?)),
        (Watched::Image, "imported") => match new? {
            "True" => {
                let size = obj.pointer("/status/virtualSize").and_then(Value::as_i64).map(|s| format!(", {s} bytes"));
                let format = text(obj, "/status/format").unwrap_or("?");
                normal("ImportSucceeded", format!("image imported ({format}{})", size.unwrap_or_default()))
            }
            _ => None,
        },
        (Watched::Image, "failed") if new == Some("true") => {
            warning("ImportFailed", format!("image import failed: {}", condition_message(obj, "Imported")))
        }
        (Watched::Backup, "phase") if new == Some("Completed") => {
            let n = |p: &str| obj.pointer(p).and_then(Value::as_u64).unwrap_or(0);
            normal(
                "BackupCompleted",
                format!(
                    "backup completed: {} bytes read, {} bytes sent",
                    n("/status/bytesRead"),
                    n("/status/bytesUploaded")
                ),
            )
        }
        (Watched::Snapshot, "ready") if new == Some("true") => {
            let volume = text(obj, "/spec/volumeName").unwrap_or("?");
            normal("SnapshotCreated", format!("snapshot of volume {volume} created"))
        }
        (Watched::Snapshot, "error") => warning("SnapshotFailed", format!("snapshot failed: {}", new?)),
        _ => None,
    }
}

/// The Events for an object whose watched values went from `old` to `new`.
fn changes(kind: Watched, obj: &Value, old: &Facts, new: &Facts) -> Vec<Planned> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .filter_map(|k| event_for(kind, obj, k, old.get(k).map(String::as_str), new.get(k).map(String::as_str)))
        .collect()
}

/// The `involvedObject` of an Event about `obj` (list items may come
/// without their kind).
fn reference(kind: Watched, obj: &Value) -> ObjectReference {
    let s = |p: &str| text(obj, p).map(str::to_string);
    ObjectReference {
        api_version: Some(kind.api_version()),
        kind: Some(kind.kind().to_string()),
        name: s("/metadata/name"),
        namespace: s("/metadata/namespace"),
        uid: s("/metadata/uid"),
        resource_version: s("/metadata/resourceVersion"),
        field_path: None,
    }
}

fn uid(obj: &Value) -> Option<String> {
    text(obj, "/metadata/uid").map(str::to_string)
}

/// Records the Events of every watched kind until the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    let events = Arc::new(EventRecorder::new(api.clone(), COMPONENT));
    futures::future::join_all(Watched::ALL.map(|kind| watch_kind(api.clone(), events.clone(), kind))).await;
}

async fn watch_kind(api: Arc<dyn Api>, events: Arc<EventRecorder>, kind: Watched) {
    let gvr = kind.gvr();
    let sel = Selectors::default();
    let mut known: HashMap<String, Facts> = HashMap::new();
    loop {
        let (items, rv) = match api.list(gvr, None, &sel).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(plural = gvr.plural, error = %e, "cannot list; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let mut seen = HashMap::new();
        for obj in &items {
            let Some(id) = uid(obj) else { continue };
            let now = facts(kind, obj);
            if let Some(before) = known.get(&id) {
                for (t, reason, message) in changes(kind, obj, before, &now) {
                    events.record(&reference(kind, obj), t, &reason, message).await;
                }
            }
            seen.insert(id, now);
        }
        known = seen;
        let mut stream = match api.watch(gvr, None, &sel, &rv).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(plural = gvr.plural, error = %e, "cannot watch; relisting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(obj)) => {
                    if let Some(id) = uid(&obj) {
                        known.insert(id, facts(kind, &obj));
                    }
                }
                Ok(WatchEvent::Modified(obj)) => {
                    let Some(id) = uid(&obj) else { continue };
                    let now = facts(kind, &obj);
                    if let Some(before) = known.get(&id) {
                        for (t, reason, message) in changes(kind, &obj, before, &now) {
                            events.record(&reference(kind, &obj), t, &reason, message).await;
                        }
                    }
                    known.insert(id, now);
                }
                Ok(WatchEvent::Deleted(obj)) => {
                    if let Some(id) = uid(&obj) {
                        known.remove(&id);
                    }
                }
                Ok(WatchEvent::Bookmark(_)) => {}
                Err(e) => {
                    tracing::debug!(plural = gvr.plural, error = %e, "watch ended; relisting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn planned(kind: Watched, before: &Value, after: &Value) -> Vec<(EventType, String)> {
        changes(kind, after, &facts(kind, before), &facts(kind, after)).into_iter().map(|(t, r, _)| (t, r)).collect()
    }

    #[test]
    fn vmi_phases_pause_and_moves() {
        let pending = json!({"status": {"phase": "Scheduled", "nodeName": "n1"}});
        let running = json!({"status": {"phase": "Running", "nodeName": "n1"}});
        assert_eq!(planned(Watched::Vmi, &pending, &running), [(EventType::Normal, "Started".into())]);
        let paused = json!({"status": {"phase": "Running", "nodeName": "n1",
            "conditions": [{"type": "Paused", "status": "True"}]}});
        assert_eq!(planned(Watched::Vmi, &running, &paused), [(EventType::Normal, "Paused".into())]);
        assert_eq!(planned(Watched::Vmi, &paused, &running), [(EventType::Normal, "Resumed".into())]);
        let moved = json!({"status": {"phase": "Running", "nodeName": "n2"}});
        assert_eq!(planned(Watched::Vmi, &running, &moved), [(EventType::Normal, "Migrated".into())]);
        let failed = json!({"status": {"phase": "Failed", "nodeName": "n1", "reason": "QemuExited",
            "conditions": [{"type": "Ready", "status": "False", "reason": "QemuExited"}]}});
        let p = changes(Watched::Vmi, &failed, &facts(Watched::Vmi, &running), &facts(Watched::Vmi, &failed));
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0, p[0].1.as_str()), (EventType::Warning, "Failed"));
        assert!(p[0].2.contains("QemuExited") && p[0].2.contains("n1"), "{}", p[0].2);
        let done = json!({"status": {"phase": "Succeeded", "nodeName": "n1", "reason": "GuestShutdown"}});
        assert_eq!(planned(Watched::Vmi, &running, &done), [(EventType::Normal, "Stopped".into())]);
        // Nothing changed, nothing recorded.
        assert!(planned(Watched::Vmi, &running, &running).is_empty());
    }

    #[test]
    fn vm_printable_status() {
        let st = |s: &str| json!({"status": {"printableStatus": s}});
        assert_eq!(planned(Watched::Vm, &st("Starting"), &st("Running")), [(EventType::Normal, "Running".into())]);
        assert_eq!(
            planned(Watched::Vm, &st("Stopped"), &st("CrashLoopBackOff")),
            [(EventType::Warning, "CrashLoopBackOff".into())]
        );
        assert_eq!(planned(Watched::Vm, &json!({}), &st("Stopped")), [(EventType::Normal, "Stopped".into())]);
    }

    #[test]
    fn nodes_volumes_images_backups_snapshots() {
        let node = |ready: &str, cordoned: bool| json!({"spec": {"unschedulable": cordoned}, "status": {"conditions": [{"type": "Ready", "status": ready}]}});
        assert_eq!(
            planned(Watched::Node, &node("True", false), &node("Unknown", false)),
            [(EventType::Warning, "NodeNotReady".into())]
        );
        assert_eq!(
            planned(Watched::Node, &node("Unknown", false), &node("True", false)),
            [(EventType::Normal, "NodeReady".into())]
        );
        assert_eq!(
            planned(Watched::Node, &node("True", false), &node("True", true)),
            [(EventType::Normal, "NodeNotSchedulable".into())]
        );
        // A heartbeat changes nothing watched.
        assert!(planned(Watched::Node, &node("True", false), &node("True", false)).is_empty());

        let vol = |state: &str, robust: &str, r1: &str| {
            json!({"status": {"state": state, "robustness": robust, "attachedTo": "n1",
                "replicas": [{"name": "r1", "node": "n1", "state": r1}]}})
        };
        assert_eq!(
            planned(Watched::Volume, &vol("Detached", "Healthy", "Healthy"), &vol("Attached", "Healthy", "Healthy")),
            [(EventType::Normal, "Attached".into())]
        );
        assert_eq!(
            planned(
                Watched::Volume,
                &vol("Attached", "Healthy", "Healthy"),
                &vol("Attached", "Degraded", "Rebuilding")
            ),
            [(EventType::Normal, "Rebuilding".into()), (EventType::Warning, "Degraded".into())]
        );
        assert_eq!(
            planned(
                Watched::Volume,
                &vol("Attached", "Degraded", "Rebuilding"),
                &vol("Attached", "Healthy", "Healthy")
            ),
            [(EventType::Normal, "Rebuilt".into()), (EventType::Normal, "Healthy".into())]
        );
        assert_eq!(
            planned(Watched::Volume, &vol("Attached", "Healthy", "Healthy"), &vol("Detached", "Healthy", "Healthy")),
            [(EventType::Normal, "Detached".into())]
        );

        let img = |imported: &str, failed: bool| json!({"status": {"failed": failed, "conditions": [{"type": "Imported", "status": imported, "message": "HTTP 404"}]}});
        assert_eq!(
            planned(Watched::Image, &img("Unknown", false), &img("True", false)),
            [(EventType::Normal, "ImportSucceeded".into())]
        );
        assert_eq!(
            planned(Watched::Image, &img("False", false), &img("False", true)),
            [(EventType::Warning, "ImportFailed".into())]
        );

        let backup = |phase: &str| json!({"status": {"phase": phase}});
        assert_eq!(
            planned(Watched::Backup, &backup("InProgress"), &backup("Completed")),
            [(EventType::Normal, "BackupCompleted".into())]
        );
        assert!(planned(Watched::Backup, &backup("Pending"), &backup("InProgress")).is_empty());

        let snap = |ready: bool| json!({"spec": {"volumeName": "data"}, "status": {"readyToUse": ready}});
        assert_eq!(
            planned(Watched::Snapshot, &snap(false), &snap(true)),
            [(EventType::Normal, "SnapshotCreated".into())]
        );
    }

    #[test]
    fn references_carry_what_describe_selects_by() {
        let obj = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "default", "uid": "u-1", "resourceVersion": "7"}});
        let r = reference(Watched::Vm, &obj);
        assert_eq!(r.kind.as_deref(), Some("VirtualMachine"));
        assert_eq!(r.api_version.as_deref(), Some("kubevirt.io/v1"));
        assert_eq!(
            (r.name.as_deref(), r.namespace.as_deref(), r.uid.as_deref()),
            (Some("vm1"), Some("default"), Some("u-1"))
        );
    }
}
