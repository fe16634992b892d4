//! The VM template controllers (Harvester's semantics), and the default
//! templates.
//!
//! Version controller, per VirtualMachineTemplateVersion:
//!
//! ```text
//!  template missing ──▶ condition assigned=False, reason TemplateNotFound (woken when it appears)
//!  template present ──▶ label template.harvesterhci.io/templateID, ownerReference to the template
//!                       (deleting the template deletes its versions)
//!                   ──▶ no number yet: every unnumbered version of the template, oldest first,
//!                       gets the next number (highest so far + 1), condition assigned=True
//! ```
//!
//! Template controller, per VirtualMachineTemplate (woken by its versions):
//! an empty `spec.defaultVersionId` becomes the version numbered lowest
//! (the first); `status.latestVersion` is the highest number,
//! `status.defaultVersion` the default version's number (0, and a Warning
//! Event, when `defaultVersionId` names no version of this template).
//!
//! Numbers are handed out by one worker reading the versions fresh every
//! time, so two versions never get the same number; a number, once set,
//! never changes. Nothing is kept in memory: both controllers can stop and
//! start at any time.
//!
//! [`ensure_defaults`] creates the templates every cluster has
//! ([`sheaf_types::template::default_objects`], namespace
//! `harvester-public`) when they are absent, and never touches existing
//! ones: a user's edits stay; a deleted default comes back at the next
//! start, as in Harvester.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::{Namespace, Secret};
use sheaf_types::meta::{Condition, OwnerReference, Time};
use sheaf_types::template::{
    default_objects, parse_ref, VirtualMachineTemplate, VirtualMachineTemplateVersion, ASSIGNED_CONDITION,
    PUBLIC_NAMESPACE, TEMPLATE_LABEL,
};

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Controller, ObjectKey, Reconciler};

pub const COMPONENT: &str = "template-controller";

/// Creates the default templates (once), then runs both controllers until
/// the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    let versions = Controller::new("template-version", api.clone(), Gvr::of::<VirtualMachineTemplateVersion>())
        .watches(Gvr::of::<VirtualMachineTemplate>(), |_, t, store| {
            // A template that appears (or goes) changes its versions.
            let Some(key) = ObjectKey::of(t) else { return Vec::new() };
            let id = key.to_string();
            store.keys_where(|v| v.pointer("/spec/templateId").and_then(Value::as_str) == Some(id.as_str()))
        })
        .resync_every(Duration::from_secs(60))
        .run(Arc::new(VersionController { api: api.clone() }));
    let templates = Controller::new("template", api.clone(), Gvr::of::<VirtualMachineTemplate>())
        .watches(Gvr::of::<VirtualMachineTemplateVersion>(), |_, v, _| {
            let id = v.pointer("/spec/templateId").and_then(Value::as_str).unwrap_or("");
            match parse_ref(id) {
                Ok((ns, name)) => vec![ObjectKey::new(Some(ns), name)],
                Err(_) => Vec::new(),
            }
        })
        .resync_every(Duration::from_secs(60))
        .run(Arc::new(TemplateController { events: EventRecorder::new(api.clone(), COMPONENT), api: api.clone() }));
    let defaults = async {
        let mut delay = Duration::from_millis(200);
        while let Err(e) = ensure_defaults(api.as_ref()).await {
            tracing::warn!(error = %e, "cannot create the default VM templates; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    };
    tokio::join!(defaults, versions, templates);
}

/// Creates the namespace `harvester-public` and each default object that
/// does not exist; existing ones are left as they are.
pub async fn ensure_defaults(api: &dyn Api) -> Result<(), ClientError> {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PUBLIC_NAMESPACE}});
    ignore_exists(api.create(Gvr::of::<Namespace>(), None, ns).await)?;
    for obj in default_objects() {
        let gvr = match obj["kind"].as_str() {
            Some("Secret") => Gvr::of::<Secret>(),
            Some("VirtualMachineTemplate") => Gvr::of::<VirtualMachineTemplate>(),
            Some("VirtualMachineTemplateVersion") => Gvr::of::<VirtualMachineTemplateVersion>(),
            other => return Err(ClientError::other(format!("unexpected default object of kind {other:?}"))),
        };
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        if api.get(gvr, Some(PUBLIC_NAMESPACE), &name).await?.is_some() {
            continue;
        }
        if ignore_exists(api.create(gvr, Some(PUBLIC_NAMESPACE), obj).await)? {
            tracing::info!(
                kind = gvr.plural,
                name,
                namespace = PUBLIC_NAMESPACE,
                "created a default VM template object"
            );
        }
    }
    Ok(())
}

/// Ok(true) when created, Ok(false) when it already existed.
fn ignore_exists(r: Result<Value, ClientError>) -> Result<bool, ClientError> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.is_already_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

fn by_template(id: &str) -> Selectors {
    Selectors { fields: format!("spec.templateId={id}"), ..Default::default() }
}

fn now() -> Time {
    Time(Utc::now().trunc_subsecs(0))
}

fn owner_reference(t: &VirtualMachineTemplate) -> OwnerReference {
    OwnerReference {
        api_version: "harvesterhci.io/v1beta1".into(),
        kind: "VirtualMachineTemplate".into(),
        name: t.metadata.name.clone().unwrap_or_default(),
        uid: t.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn assigned(v: &VirtualMachineTemplateVersion) -> Option<&Condition> {
    v.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == ASSIGNED_CONDITION))
}

/// The version's conditions with `assigned` set as given (its transition
/// time kept when the status does not change).
fn with_assigned(v: &VirtualMachineTemplateVersion, status: &str, reason: &str, message: String) -> Vec<Condition> {
    let mut conditions = v.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    conditions.retain(|c| c.type_ != ASSIGNED_CONDITION);
    let mut c = Condition {
        type_: ASSIGNED_CONDITION.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        ..Default::default()
    };
    c.last_transition_time = Some(c.transition_since(assigned(v), now()));
    conditions.push(c);
    conditions
}

pub struct VersionController {
    api: Arc<dyn Api>,
}

#[async_trait::async_trait]
impl Reconciler for VersionController {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let versions = Typed::<VirtualMachineTemplateVersion>::new(self.api.as_ref());
        let Some(v) = versions.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if v.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let Ok((tns, tname)) = parse_ref(&v.spec.template_id) else { return Ok(Action::Done) };
        let templates = Typed::<VirtualMachineTemplate>::new(self.api.as_ref());
        let template = templates.get(Some(tns), tname).await?;
        let Some(template) = template.filter(|t| t.metadata.deletion_timestamp.is_none()) else {
            let message = format!(
                "VirtualMachineTemplate {} does not exist: create it (the version then gets its number), \
                 or delete this version",
                v.spec.template_id
            );
            if assigned(&v).and_then(|c| c.reason.as_deref()) != Some("TemplateNotFound") {
                let conditions = with_assigned(&v, "False", "TemplateNotFound", message);
                let patch = json!({"metadata": {"resourceVersion": v.metadata.resource_version}, "status": {"conditions": conditions}});
                versions.merge_patch(key.namespace(), &key.name, patch, true).await?;
            }
            return Ok(Action::Done);
        };

        // Label and owner: the garbage collector deletes versions with their template.
        let uid = template.metadata.uid.clone().unwrap_or_default();
        let owned = v.metadata.owner_references.iter().any(|o| o.uid == uid);
        let labelled = v.metadata.labels.contains_key(TEMPLATE_LABEL);
        if !owned || !labelled {
            let mut owners = v.metadata.owner_references.clone();
            if !owned {
                owners.push(owner_reference(&template));
            }
            let patch = json!({"metadata": {
                "resourceVersion": v.metadata.resource_version,
                "labels": {TEMPLATE_LABEL: tname},
                "ownerReferences": owners,
            }});
            versions.merge_patch(key.namespace(), &key.name, patch, false).await?;
            // The change wakes this key again, with the new resourceVersion.
            return Ok(Action::Done);
        }
        if v.number().is_some() {
            return Ok(Action::Done);
        }

        // Numbers: every unnumbered version of the template, oldest first.
        let mut all = versions.list(Some(tns), &by_template(&v.spec.template_id)).await?;
        let mut next = all.iter().filter_map(|x| x.number()).max().unwrap_or(0);
        all.retain(|x| x.number().is_none() && x.metadata.deletion_timestamp.is_none());
        all.sort_by(|a, b| {
            (a.metadata.creation_timestamp, &a.metadata.name).cmp(&(b.metadata.creation_timestamp, &b.metadata.name))
        });
        for x in all {
            next += 1;
            let name = x.metadata.name.clone().unwrap_or_default();
            let conditions =
                with_assigned(&x, "True", "VersionAssigned", format!("version {next} of {}", x.spec.template_id));
            let patch = json!({
                "metadata": {"resourceVersion": x.metadata.resource_version},
                "status": {"version": next, "conditions": conditions},
            });
            versions.merge_patch(Some(tns), &name, patch, true).await?;
            tracing::info!(version = %format!("{tns}/{name}"), number = next, template = %v.spec.template_id, "numbered a template version");
        }
        Ok(Action::Done)
    }
}

pub struct TemplateController {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

#[async_trait::async_trait]
impl Reconciler for TemplateController {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let templates = Typed::<VirtualMachineTemplate>::new(self.api.as_ref());
        let Some(t) = templates.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if t.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let id = t.id();
        let versions = Typed::<VirtualMachineTemplateVersion>::new(self.api.as_ref());
        let mut list = versions.list(key.namespace(), &by_template(&id)).await?;
        list.retain(|v| v.metadata.deletion_timestamp.is_none());
        let numbered: Vec<(u32, &VirtualMachineTemplateVersion)> =
            list.iter().filter_map(|v| v.number().map(|n| (n, v))).collect();
        let latest = numbered.iter().map(|(n, _)| *n).max().unwrap_or(0);

        if t.spec.default_version_id.is_empty() {
            if let Some((_, first)) = numbered.iter().min_by_key(|(n, _)| *n) {
                let patch = json!({"metadata": {"resourceVersion": t.metadata.resource_version},
                                   "spec": {"defaultVersionId": first.id()}});
                templates.merge_patch(key.namespace(), &key.name, patch, false).await?;
                return Ok(Action::Done);
            }
        }
        let default = if t.spec.default_version_id.is_empty() {
            0
        } else {
            match list.iter().find(|v| v.id() == t.spec.default_version_id) {
                Some(v) => v.number().unwrap_or(0),
                None => {
                    self.events
                        .record(
                            &reference_to(&t),
                            EventType::Warning,
                            "DefaultVersionNotFound",
                            format!(
                                "spec.defaultVersionId {} is not a version of this template; set it to one of \
                                 `kubectl get vmtemplateversions -n {} -l {TEMPLATE_LABEL}={}`",
                                t.spec.default_version_id,
                                key.namespace().unwrap_or("default"),
                                key.name
                            ),
                        )
                        .await;
                    0
                }
            }
        };
        let status = t.status.clone().unwrap_or_default();
        if (status.default_version, status.latest_version) != (default, latest) {
            let patch = json!({"metadata": {"resourceVersion": t.metadata.resource_version},
                               "status": {"defaultVersion": default, "latestVersion": latest}});
            templates.merge_patch(key.namespace(), &key.name, patch, true).await?;
        }
        Ok(Action::Done)
    }
}
