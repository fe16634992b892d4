//! Garbage collector and namespace finalizer.
//!
//! A level-triggered loop: each pass reads every object fresh and makes
//! the world agree with owner references, deletion propagation policies and
//! namespace deletion. It runs after any deletion (debounced) and every
//! [`RESYNC`] so that it catches up after a restart; it keeps no state of
//! its own, so it can be stopped at any moment.
//!
//! - An object all of whose owners (by uid) are gone is deleted (background
//!   propagation).
//! - An owner deleted with `propagationPolicy=Foreground` carries the
//!   `foregroundDeletion` finalizer: its dependents are deleted first, then
//!   the finalizer is removed and the owner goes.
//! - An owner deleted with `Orphan` carries the `orphan` finalizer: its
//!   dependents lose their owner reference, then the finalizer is removed.
//! - A terminating namespace has everything in it deleted, then its
//!   `spec.finalizers` cleared, which removes it.
//! - A deletion refused for now (409: a Volume a VM still uses, see
//!   [`crate::protection`]) is tried again on a later pass; the pass that
//!   follows the VM's removal deletes the volume. In a terminating
//!   namespace, the dependents of such an owner (the Volume's Replicas,
//!   which hold its data) are not deleted directly: they follow their
//!   owner.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use sheaf_store::{EventKind, ListOptions, WatchItem};
use sheaf_types::ResourceType;

use crate::error::{ApiError, ApiResult};
use crate::objects::{from_kv, name_of, namespace_of, DeleteOptions, Objects, WriteOptions};
use crate::patch::PatchType;

/// Full pass interval without triggers.
pub const RESYNC: Duration = Duration::from_secs(30);
const DEBOUNCE: Duration = Duration::from_millis(100);

pub struct GarbageCollector {
    objects: Objects,
}

struct Obj {
    rt: ResourceType,
    value: Value,
}

impl Obj {
    fn uid(&self) -> &str {
        self.value.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")
    }
    fn deleting(&self) -> bool {
        self.value.pointer("/metadata/deletionTimestamp").is_some()
    }
    fn has_finalizer(&self, f: &str) -> bool {
        self.value.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x == f))
    }
    fn owner_uids(&self) -> Vec<&str> {
        self.value
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|o| o.get("uid").and_then(Value::as_str)).collect())
            .unwrap_or_default()
    }
    fn name(&self) -> &str {
        name_of(&self.value)
    }
    fn ns(&self) -> Option<&str> {
        namespace_of(&self.value)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What one pass did, for tests and logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub deleted: usize,
    pub orphaned: usize,
    pub finalized: usize,
}

impl GarbageCollector {
    pub fn new(objects: Objects) -> Self {
        GarbageCollector { objects }
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        loop {
            let mut stream = match self.objects.store.watch("/registry/", 0, false).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector cannot watch; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "garbage collection pass failed");
            }
            loop {
                let trigger = tokio::time::timeout(RESYNC, async {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(WatchItem::Event(ev)) => {
                                // A cheap byte search first: most updates are not deletions.
                                let relevant = ev.kind == EventKind::Delete
                                    || (ev.kind == EventKind::Update
                                        && contains(&ev.kv.value, b"\"deletionTimestamp\"")
                                        && serde_json::from_slice::<Value>(&ev.kv.value)
                                            .map(|v| v.pointer("/metadata/deletionTimestamp").is_some())
                                            .unwrap_or(false));
                                if relevant {
                                    return true;
                                }
                            }
                            Ok(WatchItem::Progress(_)) => {}
                            Err(_) => return false,
                        }
                    }
                    false
                })
                .await;
                match trigger {
                    Ok(false) => break, // watch ended: re-establish it
                    Ok(true) => tokio::time::sleep(DEBOUNCE).await,
                    Err(_) => {} // resync
                }
                match self.pass().await {
                    Ok(r) if r != PassReport::default() => tracing::debug!(?r, "garbage collection pass"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "garbage collection pass failed"),
                }
            }
        }
    }

    async fn snapshot(&self) -> ApiResult<Vec<Obj>> {
        let page = self
            .objects
            .store
            .list(ListOptions { prefix: "/registry/".into(), ..Default::default() })
            .await
            .map_err(|e| ApiError::from_store(e, &Default::default()))?;
        let mut out = Vec::with_capacity(page.items.len());
        for kv in &page.items {
            let Ok(value) = from_kv(kv) else { continue };
            let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
            if let Some(rt) = self.objects.registry.by_kind(api_version, kind) {
                out.push(Obj { rt: rt.clone(), value });
            }
        }
        Ok(out)
    }

    /// Is the owner `uid` named in `dependent`'s references really gone?
    /// Checked against the live store, not the snapshot.
    async fn owner_gone(&self, dependent: &Obj, uid: &str) -> bool {
        let Some(r) = dependent
            .value
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|o| o.get("uid").and_then(Value::as_str) == Some(uid)))
        else {
            return true;
        };
        let av = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let Some(rt) = self.objects.registry.by_kind(av, kind) else {
            // An owner of a kind this server does not serve cannot exist.
            return true;
        };
        let ns = if rt.namespaced { dependent.ns() } else { None };
        match self.objects.get(rt, ns, name).await {
            Ok(o) => o.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid),
            Err(e) => e.code == http::StatusCode::NOT_FOUND,
        }
    }

    /// Deletes `o`; false when it was gone already, or its deletion is
    /// refused for now (a Volume in use: see [`crate::protection`]), which
    /// a later pass tries again.
    async fn delete(&self, o: &Obj, policy: &str) -> ApiResult<bool> {
        let opts = DeleteOptions { propagation: Some(policy.into()), ..Default::default() };
        match self.objects.delete(&o.rt, o.ns(), o.name(), &opts).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == http::StatusCode::NOT_FOUND => Ok(false),
            Err(e) if e.code == http::StatusCode::CONFLICT => {
                tracing::debug!(kind = o.rt.kind, name = o.name(), reason = %e.message, "deletion deferred");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// One full pass. Returns what it changed.
    pub async fn pass(&self) -> ApiResult<PassReport> {
        let objs = self.snapshot().await?;
        let mut report = PassReport::default();
        let uids: HashSet<&str> = objs.iter().map(Obj::uid).collect();
        let mut dependents: HashMap<&str, Vec<&Obj>> = HashMap::new();
        for o in &objs {
            for u in o.owner_uids() {
                dependents.entry(u).or_default().push(o);
            }
        }

        // Objects whose owners are all gone.
        for o in objs.iter().filter(|o| !o.deleting()) {
            let owners = o.owner_uids();
            if owners.is_empty() || owners.iter().any(|u| uids.contains(u)) {
                continue;
            }
            let mut all_gone = true;
            for u in &owners {
                if !self.owner_gone(o, u).await {
                    all_gone = false;
                    break;
                }
            }
            if all_gone && self.delete(o, "Background").await? {
                report.deleted += 1;
            }
        }

        for owner in objs.iter().filter(|o| o.deleting()) {
            let deps = dependents.get(owner.uid()).cloned().unwrap_or_default();
            if owner.has_finalizer("orphan") {
                for d in &deps {
                    let refs: Vec<Value> = d
                        .value
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter(|r| r.get("uid").and_then(Value::as_str) != Some(owner.uid()))
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    let rv = d.value.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                    let patch = json!({"metadata": {"ownerReferences": if refs.is_empty() { Value::Null } else { Value::Array(refs) }, "resourceVersion": rv}});
                    match self
                        .objects
                        .patch(&d.rt, d.ns(), d.name(), PatchType::Merge, patch, false, false, &WriteOptions::default())
                        .await
                    {
                        Ok(_) => report.orphaned += 1,
                        Err(e) if e.code == http::StatusCode::NOT_FOUND || e.code == http::StatusCode::CONFLICT => {}
                        Err(e) => return Err(e),
                    }
                }
                self.objects.remove_finalizer(&owner.rt, owner.ns(), owner.name(), "orphan").await?;
                report.finalized += 1;
            } else if owner.has_finalizer("foregroundDeletion") {
                let mut remaining = 0;
                for d in &deps {
                    remaining += 1;
                    if !d.deleting() && self.delete(d, "Foreground").await? {
                        report.deleted += 1;
                    }
                }
                if remaining == 0 {
                    self.objects.remove_finalizer(&owner.rt, owner.ns(), owner.name(), "foregroundDeletion").await?;
                    report.finalized += 1;
                }
            }
            if owner.rt.kind == "Namespace" && owner.rt.group.is_empty() {
                let ns = owner.name();
                let mut remaining = 0;
                let contents: Vec<&Obj> = objs.iter().filter(|o| o.rt.namespaced && o.ns() == Some(ns)).collect();
                for o in &contents {
                    remaining += 1;
                    // The dependents of a protected owner (a Volume's
                    // Replicas) go after it, by the cascade: deleting them
                    // first would destroy what its protection keeps.
                    let held = o.owner_uids().iter().any(|u| {
                        contents.iter().any(|x| x.uid() == *u && crate::protection::protects_dependents(&x.rt))
                    });
                    if !o.deleting() && !held && self.delete(o, "Background").await? {
                        report.deleted += 1;
                    }
                }
                let spec_finalizers =
                    owner.value.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
                if remaining == 0 && spec_finalizers {
                    let patch = json!({"spec": {"finalizers": null}});
                    match self
                        .objects
                        .patch(&owner.rt, None, ns, PatchType::Merge, patch, false, false, &WriteOptions::default())
                        .await
                    {
                        Ok(_) => report.finalized += 1,
                        Err(e) if e.code == http::StatusCode::NOT_FOUND => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(report)
    }
}
