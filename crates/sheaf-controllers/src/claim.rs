//! The claim controller: provisions each PersistentVolumeClaim as the
//! Sheaf Volume *of the claim's name* in its namespace, so that a VM's
//! `persistentVolumeClaim.claimName` (or `dataVolume.name`) names the
//! Volume the node agent attaches, and keeps the claim's status.
//!
//! ```text
//!              class, image, source ready?            Volume exists
//!   Pending ─────────────────────────────▶ create Volume ─────────────▶ Bound
//!   (condition Bound=False: reason and message say what it waits for)   │
//!                                          Volume deleted underneath ─▶ Lost
//! ```
//!
//! - The class is `spec.storageClassName`, or the default class
//!   (annotation `storageclass.kubernetes.io/is-default-class: "true"`),
//!   which is then recorded in the claim. Its parameters become the
//!   Volume's spec (`numberOfReplicas`, `staleReplicaTimeout`,
//!   `diskSelector`, `nodeSelector`, `frontend`, `image`).
//! - The Volume carries a controller owner reference to the claim, so
//!   deleting the claim deletes the volume (the garbage collector; the API
//!   server refuses while a VM uses it, or while it has snapshots, see
//!   `sheaf_apiserver::protection`). With `reclaimPolicy: Retain` it has
//!   none and stays when the claim goes; a new claim of the same name
//!   with `spec.volumeName` set to it binds it again. Either way the
//!   Volume is annotated with the claim's uid ([`CLAIM_UID_ANNOTATION`]),
//!   which is how the controller knows the Volume is the claim's.
//! - A Volume of the claim's name that is not the claim's is bound only
//!   when the claim's `spec.volumeName` names it (static binding: it is
//!   adopted, with an owner reference unless the class retains); otherwise
//!   the claim stays Pending and says so.
//! - From an image: the class's `image` parameter or the claim's
//!   `harvesterhci.io/imageId` annotation (`NAMESPACE/NAME` of a
//!   VirtualMachineImage) become the Volume's `spec.image`, once the image
//!   is imported; a request smaller than the image's virtual size stays
//!   Pending, naming the minimum (it is never grown silently).
//! - A clone (`dataSource` kind PersistentVolumeClaim, same namespace):
//!   a sheaf.io VolumeSnapshot of the source volume is taken (named
//!   `clone-<claim uid>`, owned by the new claim), the Volume is created
//!   with `spec.fromSnapshot` (and the source's image), and the snapshot is
//!   deleted once the new volume's `status.restoredFrom` is set. From a
//!   VolumeSnapshot (`apiGroup: sheaf.io`): `spec.fromSnapshot` directly.
//!   The request must be at least the source's size.
//! - A grown `resources.requests.storage` grows the Volume's `spec.size`
//!   (the storage layer grows attached volumes online); the condition
//!   `Resizing` is True until the volume has the new size. The API server
//!   refuses the growth when the class does not allow expansion
//!   (`sheaf_apiserver::claim_resize`); should the class change after the
//!   request grew, the volume stays and `Resizing` is False, saying why.
//!   `status.capacity` is the volume's size as its agent reports it.
//! - `volumeBindingMode: WaitForFirstConsumer`: provisioned once a
//!   VirtualMachine or instance in the namespace names the claim.
//!
//! Every pass reads the claim, its class, its volume and what it is made
//! from fresh; all memory is in the objects (the Volume's annotation, the
//! clone snapshot's name derived from the claim's uid).

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::claim::{
    exact_quantity, ClaimSource, PersistentVolumeClaim, PersistentVolumeClaimStatus, StorageClass, IMAGE_ID_ANNOTATION,
};
use sheaf_types::harvester::VirtualMachineImage;
use sheaf_types::kubevirt::{VirtualMachine, VirtualMachineInstance};
use sheaf_types::meta::{Condition, ObjectMeta, OwnerReference, Time};
use sheaf_types::storage::{format_bytes, image_ref, Volume, VolumeSnapshot, VolumeSnapshotSpec, VOLUME_LABEL};
use sheaf_types::Kind;

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Controller, ObjectKey, Reconciler};

pub const COMPONENT: &str = "persistentvolume-controller";
/// On a Volume: the uid of the claim it was provisioned for or bound to.
pub const CLAIM_UID_ANNOTATION: &str = "sheaf.io/claim-uid";
/// Prefix of the temporary snapshot a clone is made from.
pub const CLONE_SNAPSHOT_PREFIX: &str = "clone-";
/// A Pending claim is looked at again at least this often.
const PENDING_RECHECK: Duration = Duration::from_secs(5);

pub struct ClaimController {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

impl ClaimController {
    pub fn new(api: Arc<dyn Api>) -> Self {
        ClaimController { events: EventRecorder::new(api.clone(), COMPONENT), api }
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

/// Runs the claim controller until the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    Controller::new("claim", api.clone(), Gvr::of::<PersistentVolumeClaim>())
        // The volume of the same name.
        .watches(Gvr::of::<Volume>(), |_, v, _| ObjectKey::of(v).into_iter().collect())
        .watches(Gvr::of::<StorageClass>(), |_, _, store| store.keys())
        .watches(Gvr::of::<VirtualMachineImage>(), |_, _, store| store.keys())
        // A clone's snapshot wakes the claim that owns it.
        .watches(Gvr::of::<VolumeSnapshot>(), |_, s, store| {
            let ns = str_at(s, "/metadata/namespace");
            let refs = s.pointer("/metadata/ownerReferences").and_then(Value::as_array);
            let mut keys: Vec<ObjectKey> = refs
                .into_iter()
                .flatten()
                .filter(|o| str_at(o, "/kind") == Some(PersistentVolumeClaim::KIND))
                .filter_map(|o| str_at(o, "/name").map(|n| ObjectKey::new(ns, n)))
                .collect();
            // And the claims made from it.
            let name = str_at(s, "/metadata/name");
            keys.extend(store.keys_where(|c| {
                str_at(c, "/metadata/namespace") == ns
                    && (str_at(c, "/spec/dataSource/name") == name || str_at(c, "/spec/dataSourceRef/name") == name)
                    && (str_at(c, "/spec/dataSource/kind") == Some("VolumeSnapshot")
                        || str_at(c, "/spec/dataSourceRef/kind") == Some("VolumeSnapshot"))
            }));
            keys
        })
        // A first consumer.
        .watches(Gvr::of::<VirtualMachine>(), |_, vm, store| {
            let ns = str_at(vm, "/metadata/namespace");
            let vols = vm.pointer("/spec/template/spec/volumes").and_then(Value::as_array);
            let names: Vec<&str> = vols
                .into_iter()
                .flatten()
                .filter_map(|v| str_at(v, "/persistentVolumeClaim/claimName").or(str_at(v, "/dataVolume/name")))
                .collect();
            names.into_iter().map(|n| ObjectKey::new(ns, n)).filter(|k| store.get(k).is_some()).collect()
        })
        // A source claim that becomes Bound wakes its clones.
        .also_on_primary(|_, pvc, store| {
            let ns = str_at(pvc, "/metadata/namespace").map(str::to_string);
            let name = str_at(pvc, "/metadata/name").unwrap_or_default().to_string();
            store.keys_where(|c| {
                str_at(c, "/metadata/namespace").map(str::to_string) == ns
                    && [str_at(c, "/spec/dataSource/name"), str_at(c, "/spec/dataSourceRef/name")]
                        .contains(&Some(name.as_str()))
            })
        })
        .workers(2)
        .resync_every(Duration::from_secs(60))
        .run(Arc::new(ClaimController::new(api)))
        .await
}

/// Why a claim is not Bound.
struct Pending {
    reason: &'static str,
    message: String,
}

fn pending(reason: &'static str, message: impl Into<String>) -> Result<Outcome, ClientError> {
    Ok(Outcome::Pending(Pending { reason, message: message.into() }))
}

enum Outcome {
    Bound(Box<Volume>),
    Pending(Pending),
    Lost(String),
}

/// The owner reference a claim's Volume (or clone snapshot) carries.
pub fn owner_reference(pvc: &PersistentVolumeClaim) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: PersistentVolumeClaim::KIND.into(),
        name: pvc.metadata.name.clone().unwrap_or_default(),
        uid: pvc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `vol` was provisioned for, or bound to, `pvc`.
pub fn belongs_to(vol: &Volume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(uid) = pvc.metadata.uid.as_deref() else { return false };
    vol.metadata.owner_references.iter().any(|o| o.uid == uid)
        || vol.metadata.annotations.get(CLAIM_UID_ANNOTATION).map(String::as_str) == Some(uid)
}

/// The temporary snapshot a clone claim is made from.
pub fn clone_snapshot_name(pvc: &PersistentVolumeClaim) -> String {
    format!("{CLONE_SNAPSHOT_PREFIX}{}", pvc.metadata.uid.as_deref().unwrap_or_default())
}

fn ns_flag(ns: Option<&str>) -> String {
    match ns {
        Some(n) if n != "default" => format!(" -n {n}"),
        _ => String::new(),
    }
}

/// The volume's size as its agent reports it, else as asked.
fn volume_size(vol: &Volume) -> i64 {
    vol.status.as_ref().and_then(|s| s.size).filter(|s| *s > 0).unwrap_or_else(|| vol.size_bytes())
}

#[async_trait::async_trait]
impl Reconciler for ClaimController {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let claims = Typed::<PersistentVolumeClaim>::new(self.api.as_ref());
        let Some(pvc) = claims.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let class = match pvc.spec.storage_class_name.as_deref() {
            None => match self.default_class().await? {
                Some(c) => {
                    // Recorded as Kubernetes' admission does; the change
                    // brings the next pass.
                    let name = c.metadata.name.clone().unwrap_or_default();
                    let patch = json!({"spec": {"storageClassName": name},
                        "metadata": {"resourceVersion": pvc.metadata.resource_version}});
                    return match claims.merge_patch(key.namespace(), &key.name, patch, false).await {
                        Ok(_) => Ok(Action::Done),
                        Err(e) if e.is_conflict() || e.is_not_found() => Ok(Action::RequeueAfter(Duration::ZERO)),
                        Err(e) => Err(e),
                    };
                }
                None => None,
            },
            Some("") => None,
            Some(name) => match Typed::<StorageClass>::new(self.api.as_ref()).get(None, name).await? {
                Some(c) => Some(c),
                None => {
                    let outcome = pending(
                        "StorageClassNotFound",
                        format!(
                            "StorageClass {name:?} does not exist: create it, or make a new claim naming one of \
                             kubectl get storageclass"
                        ),
                    )?;
                    return self.write(&pvc, outcome, None).await;
                }
            },
        };
        let outcome = self.outcome(key, &pvc, class.as_ref()).await?;
        self.write(&pvc, outcome, class.as_ref()).await
    }
}

impl ClaimController {
    async fn default_class(&self) -> Result<Option<StorageClass>, ClientError> {
        let mut classes: Vec<StorageClass> = Typed::<StorageClass>::new(self.api.as_ref())
            .list(None, &Selectors::default())
            .await?
            .into_iter()
            .filter(StorageClass::is_default)
            .collect();
        // Several defaults: the newest, as Kubernetes picks.
        classes.sort_by_key(|c| (c.metadata.creation_timestamp, c.metadata.name.clone()));
        Ok(classes.pop())
    }

    async fn outcome(
        &self,
        key: &ObjectKey,
        pvc: &PersistentVolumeClaim,
        class: Option<&StorageClass>,
    ) -> Result<Outcome, ClientError> {
        let ns = key.namespace();
        let volumes = Typed::<Volume>::new(self.api.as_ref());
        let static_binding = pvc.spec.volume_name.as_deref() == Some(key.name.as_str());
        if let Some(vol) = volumes.get(ns, &key.name).await? {
            if vol.trashed() {
                let until = vol.purge_at_text().map(|t| format!(" until {t}")).unwrap_or_default();
                return pending(
                    "VolumeTrashed",
                    format!(
                        "a deleted Volume {n} is in the trash{until} with its snapshots; the claim waits. Purge it \
                         now (sheaf volume purge {n}{f}), or make a claim of another name",
                        f = ns_flag(ns),
                        n = key.name
                    ),
                );
            }
            if vol.metadata.deletion_timestamp.is_some() {
                return pending("VolumeDeleting", format!("Volume {} is being deleted; the claim waits", key.name));
            }
            if belongs_to(&vol, pvc) {
                return self.bound(pvc, vol, class).await;
            }
            if static_binding {
                return self.adopt(pvc, vol, class).await;
            }
            return pending(
                "VolumeExists",
                format!(
                    "a Volume named {n} exists already and belongs to no claim: to bind it to this claim, set the \
                     claim's spec.volumeName to {n} (kubectl patch pvc {n}{f} --type merge -p \
                     '{{\"spec\":{{\"volumeName\":\"{n}\"}}}}'); to get a new volume, make a claim of another name",
                    f = ns_flag(ns),
                    n = key.name
                ),
            );
        }
        if pvc.spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
            if pvc.is_bound() || pvc.phase() == "Lost" {
                return Ok(Outcome::Lost(format!(
                    "its Volume {} no longer exists, and its data went with it: delete the claim (kubectl delete \
                     pvc {}{})",
                    key.name,
                    key.name,
                    ns_flag(ns)
                )));
            }
            return pending("VolumeNotFound", format!("waiting for Volume {} (spec.volumeName) to exist", key.name));
        }
        let Some(class) = class else {
            return pending(
                "NoStorageClass",
                "the claim names no StorageClass and there is no default class: set spec.volumeName to bind an \
                 existing Volume, or make a new claim with storageClassName (kubectl get storageclass)",
            );
        };
        self.provision(key, pvc, class).await
    }

    /// Creates the claim's Volume once what it is made from is ready.
    async fn provision(
        &self,
        key: &ObjectKey,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
    ) -> Result<Outcome, ClientError> {
        let ns = key.namespace();
        let class_name = class.metadata.name.clone().unwrap_or_default();
        let params = match class.read_parameters() {
            Ok(p) => p,
            Err(errs) => {
                let list: Vec<String> = errs.iter().map(ToString::to_string).collect();
                return pending(
                    "InvalidStorageClass",
                    format!("StorageClass {class_name} is not usable: {}", list.join("; ")),
                );
            }
        };
        if class.waits_for_consumer() && !self.has_consumer(ns, &key.name).await? {
            return pending(
                "WaitForFirstConsumer",
                format!(
                    "waiting for a VirtualMachine to use the claim (StorageClass {class_name} has \
                     volumeBindingMode WaitForFirstConsumer)"
                ),
            );
        }
        let size = pvc.volume_bytes();
        let mut image = pvc.metadata.annotations.get(IMAGE_ID_ANNOTATION).cloned().or(params.image.clone());
        let mut from_snapshot = None;
        let snapshots = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let volumes = Typed::<Volume>::new(self.api.as_ref());
        match pvc.source() {
            Some(ClaimSource::Claim(src)) => {
                let Some(source) = Typed::<PersistentVolumeClaim>::new(self.api.as_ref()).get(ns, &src).await? else {
                    return pending("SourceNotFound", format!("the claim to clone, {src}, does not exist"));
                };
                if !source.is_bound() {
                    return pending(
                        "SourceNotBound",
                        format!("the claim to clone, {src}, is {}; the clone starts once it is Bound", source.phase()),
                    );
                }
                let Some(src_vol) = volumes.get(ns, &src).await? else {
                    return pending("SourceNotFound", format!("the Volume of claim {src} does not exist"));
                };
                let need = src_vol.size_bytes();
                if need > size {
                    return pending(
                        "RequestTooSmall",
                        format!(
                            "a clone of {src} needs at least its size, {}: make a new claim with \
                             resources.requests.storage: {}",
                            format_bytes(need),
                            exact_quantity(need)
                        ),
                    );
                }
                let snap_name = clone_snapshot_name(pvc);
                match snapshots.get(ns, &snap_name).await? {
                    None => {
                        let snap = VolumeSnapshot {
                            metadata: ObjectMeta {
                                name: Some(snap_name.clone()),
                                namespace: ns.map(str::to_string),
                                labels: [(VOLUME_LABEL.to_string(), src.clone())].into(),
                                owner_references: vec![owner_reference(pvc)],
                                ..Default::default()
                            },
                            spec: VolumeSnapshotSpec { volume_name: src.clone() },
                            status: None,
                        };
                        match snapshots.create(&snap).await {
                            Ok(_) | Err(ClientError { code: 409, .. }) => {}
                            Err(e) => return Err(e),
                        }
                        self.events
                            .record(
                                &reference_to(pvc),
                                EventType::Normal,
                                "CloneSnapshot",
                                format!("taking snapshot {snap_name} of volume {src} to clone it"),
                            )
                            .await;
                        return pending("Cloning", format!("taking snapshot {snap_name} of {src} to clone it"));
                    }
                    Some(s) => {
                        if let Some(e) = s.status.as_ref().and_then(|st| st.error.as_deref()) {
                            return pending(
                                "CloneFailed",
                                format!(
                                    "snapshot {snap_name} of {src} failed: {e}; delete the snapshot (kubectl delete \
                                     volumesnapshot {snap_name}{}) to try again",
                                    ns_flag(ns)
                                ),
                            );
                        }
                        if !s.status.as_ref().is_some_and(|st| st.ready_to_use) {
                            return pending("Cloning", format!("waiting for snapshot {snap_name} of {src}"));
                        }
                    }
                }
                from_snapshot = Some(snap_name);
                image.clone_from(&src_vol.spec.image);
            }
            Some(ClaimSource::Snapshot(s)) => {
                let Some(snap) = snapshots.get(ns, &s).await? else {
                    return pending("SourceNotFound", format!("VolumeSnapshot {s} does not exist"));
                };
                let st = snap.status.clone().unwrap_or_default();
                if let Some(e) = st.error {
                    return pending("SourceFailed", format!("VolumeSnapshot {s} failed: {e}"));
                }
                if !st.ready_to_use {
                    return pending("SourceNotReady", format!("waiting for VolumeSnapshot {s} to be ready"));
                }
                if let Some(need) = st.size.filter(|n| *n > size) {
                    return pending(
                        "RequestTooSmall",
                        format!(
                            "VolumeSnapshot {s} holds {}: make a new claim with resources.requests.storage: {} or more",
                            format_bytes(need),
                            exact_quantity(need)
                        ),
                    );
                }
                image = volumes.get(ns, &snap.spec.volume_name).await?.and_then(|v| v.spec.image);
                from_snapshot = Some(s);
            }
            None => {
                if let Some(img) = &image {
                    if let Some(p) = self.image_pending(img, size).await? {
                        return Ok(Outcome::Pending(p));
                    }
                }
            }
        }

        let mut owners = Vec::new();
        if !class.retains() {
            owners.push(owner_reference(pvc));
        }
        let vol = Volume {
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: ns.map(str::to_string),
                annotations: [(CLAIM_UID_ANNOTATION.to_string(), pvc.metadata.uid.clone().unwrap_or_default())].into(),
                owner_references: owners,
                ..Default::default()
            },
            spec: sheaf_types::storage::VolumeSpec {
                size: Some(exact_quantity(size)),
                number_of_replicas: params.number_of_replicas,
                node_selector: params.node_selector,
                from_snapshot,
                from_backup: None,
                image,
                frontend: params.frontend,
                stale_replica_timeout: params.stale_replica_timeout,
                disk_selector: params.disk_selector,
            },
            status: None,
        };
        let created = match volumes.create(&vol).await {
            Ok(v) => v,
            // Someone made one meanwhile: the next pass looks at it.
            Err(e) if e.is_already_exists() => return pending("VolumeExists", "a Volume of this name appeared"),
            Err(e) => {
                let message = format!("cannot create Volume {}: {}", key.name, e.message);
                self.events.record(&reference_to(pvc), EventType::Warning, "ProvisioningFailed", &message).await;
                return pending("ProvisioningFailed", message);
            }
        };
        let what = match (&created.spec.from_snapshot, &created.spec.image) {
            (Some(s), _) => format!(" from snapshot {s}"),
            (None, Some(i)) => format!(" from image {i}"),
            _ => String::new(),
        };
        self.events
            .record(
                &reference_to(pvc),
                EventType::Normal,
                "ProvisioningSucceeded",
                format!(
                    "created Volume {} of {}{what} with {} replica(s) (StorageClass {class_name})",
                    key.name,
                    format_bytes(size),
                    created.replicas_wanted()
                ),
            )
            .await;
        self.bound(pvc, created, Some(class)).await
    }

    /// Why a volume cannot be made from image `img` (`NAMESPACE/NAME`) yet.
    async fn image_pending(&self, img: &str, size: i64) -> Result<Option<Pending>, ClientError> {
        let Ok((ins, iname)) = image_ref(img) else {
            return Ok(Some(Pending {
                reason: "InvalidImage",
                message: format!("image {img:?} is not NAMESPACE/NAME"),
            }));
        };
        let Some(image) = Typed::<VirtualMachineImage>::new(self.api.as_ref()).get(Some(ins), iname).await? else {
            return Ok(Some(Pending {
                reason: "ImageNotFound",
                message: format!("VirtualMachineImage {img} does not exist (kubectl get virtualmachineimages -A)"),
            }));
        };
        let st = image.status.clone().unwrap_or_default();
        if !image.imported() {
            let why = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Imported")
                .and_then(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let progress = st.progress.map(|p| format!(" ({p}% done)")).unwrap_or_default();
            return Ok(Some(Pending {
                reason: "ImageNotReady",
                message: format!("image {img} is not imported yet{progress}{why}; the claim is provisioned once it is"),
            }));
        }
        if let Some(vs) = st.virtual_size.filter(|vs| *vs > size) {
            return Ok(Some(Pending {
                reason: "RequestTooSmall",
                message: format!(
                    "image {img} holds a disk of {} ({vs} bytes): the claim must ask for at least that; make a new \
                     claim with resources.requests.storage: {}",
                    format_bytes(vs),
                    exact_quantity(sheaf_types::claim::round_up_to_block(vs))
                ),
            }));
        }
        Ok(None)
    }

    /// Whether a VM or instance in `ns` names claim `name`.
    async fn has_consumer(&self, ns: Option<&str>, name: &str) -> Result<bool, ClientError> {
        let all = Selectors::default();
        let vms = Typed::<VirtualMachine>::new(self.api.as_ref()).list(ns, &all).await?;
        if vms.iter().any(|vm| vm.spec.template.spec.volumes.iter().any(|v| v.claim_name() == Some(name))) {
            return Ok(true);
        }
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref()).list(ns, &all).await?;
        Ok(vmis.iter().any(|vmi| vmi.spec.volumes.iter().any(|v| v.claim_name() == Some(name))))
    }

    /// Static binding: makes an existing Volume the claim's.
    async fn adopt(
        &self,
        pvc: &PersistentVolumeClaim,
        vol: Volume,
        class: Option<&StorageClass>,
    ) -> Result<Outcome, ClientError> {
        let name = vol.metadata.name.clone().unwrap_or_default();
        let ns = vol.metadata.namespace.clone();
        let mut refs = vol.metadata.owner_references.clone();
        if let Some(other) = refs.iter().find(|o| o.controller == Some(true)) {
            return pending(
                "VolumeOwned",
                format!(
                    "Volume {name} is controlled by {} {}; it cannot be bound to this claim",
                    other.kind, other.name
                ),
            );
        }
        if !class.is_some_and(StorageClass::retains) {
            refs.push(owner_reference(pvc));
        }
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "annotations": {CLAIM_UID_ANNOTATION: pvc.metadata.uid},
            "resourceVersion": vol.metadata.resource_version,
        }});
        let adopted = Typed::<Volume>::new(self.api.as_ref()).merge_patch(ns.as_deref(), &name, patch, false).await?;
        self.events
            .record(
                &reference_to(pvc),
                EventType::Normal,
                "Bound",
                format!("bound to the existing Volume {name} (spec.volumeName)"),
            )
            .await;
        self.bound(pvc, adopted, class).await
    }

    /// The claim's volume exists: records it, grows it, and drops a
    /// clone's snapshot once copied.
    async fn bound(
        &self,
        pvc: &PersistentVolumeClaim,
        vol: Volume,
        class: Option<&StorageClass>,
    ) -> Result<Outcome, ClientError> {
        let ns = pvc.metadata.namespace.as_deref();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        if pvc.spec.volume_name.as_deref() != Some(name.as_str()) {
            let patch = json!({"spec": {"volumeName": name}});
            Typed::<PersistentVolumeClaim>::new(self.api.as_ref()).merge_patch(ns, &name, patch, false).await?;
        }
        let want = pvc.volume_bytes();
        let mut vol = vol;
        if want > vol.size_bytes() && class.is_some_and(StorageClass::allows_expansion) {
            let patch = json!({"spec": {"size": exact_quantity(want)}});
            vol = Typed::<Volume>::new(self.api.as_ref()).merge_patch(ns, &name, patch, false).await?;
            self.events
                .record(
                    &reference_to(pvc),
                    EventType::Normal,
                    "Resizing",
                    format!("growing Volume {name} to {}", format_bytes(want)),
                )
                .await;
        }
        if matches!(pvc.source(), Some(ClaimSource::Claim(_)))
            && vol.status.as_ref().is_some_and(|s| s.restored_from.is_some())
        {
            let snap = clone_snapshot_name(pvc);
            let snapshots = Typed::<VolumeSnapshot>::new(self.api.as_ref());
            if snapshots.get(ns, &snap).await?.is_some_and(|s| s.metadata.deletion_timestamp.is_none()) {
                match snapshots.delete(ns, &snap).await {
                    Ok(()) => tracing::info!(claim = %name, snapshot = %snap, "clone copied; its snapshot deleted"),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Outcome::Bound(Box::new(vol)))
    }

    /// Writes the claim's status from the outcome (only when it changed),
    /// with an Event when the reason for waiting changes.
    async fn write(
        &self,
        pvc: &PersistentVolumeClaim,
        outcome: Outcome,
        class: Option<&StorageClass>,
    ) -> Result<Action, ClientError> {
        let old = pvc.status.clone().unwrap_or_default();
        let old_cond = |t: &str| old.conditions.iter().find(|c| c.type_ == t).cloned();
        let mut status = PersistentVolumeClaimStatus::default();
        let mut next = Action::Done;
        let bound_cond = |status: &str, reason: &str, message: String| Condition {
            type_: "Bound".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            ..Default::default()
        };
        let mut conditions = Vec::new();
        match &outcome {
            Outcome::Bound(vol) => {
                status.phase = Some("Bound".into());
                status.access_modes.clone_from(&pvc.spec.access_modes);
                let have = volume_size(vol);
                status.capacity.insert("storage".into(), exact_quantity(have));
                let name = vol.metadata.name.clone().unwrap_or_default();
                conditions.push(bound_cond("True", "Bound", format!("bound to Volume {name}")));
                let want = pvc.volume_bytes();
                if want > have {
                    let allowed = class.is_some_and(StorageClass::allows_expansion);
                    let c = if allowed {
                        next = Action::RequeueAfter(PENDING_RECHECK);
                        Condition {
                            type_: "Resizing".into(),
                            status: "True".into(),
                            reason: Some("Resizing".into()),
                            message: Some(format!("growing from {} to {}", format_bytes(have), format_bytes(want))),
                            ..Default::default()
                        }
                    } else {
                        let class_name = pvc.spec.storage_class_name.as_deref().unwrap_or_default();
                        Condition {
                            type_: "Resizing".into(),
                            status: "False".into(),
                            reason: Some("ExpansionNotAllowed".into()),
                            message: Some(if class.is_some() {
                                format!(
                                    "StorageClass {class_name} does not allow volume expansion \
                                     (allowVolumeExpansion); the volume stays {}",
                                    format_bytes(have)
                                )
                            } else {
                                format!(
                                    "a claim without a StorageClass cannot grow; grow Volume {name} itself (sheaf \
                                     volume expand {name} SIZE)"
                                )
                            }),
                            ..Default::default()
                        }
                    };
                    conditions.push(c);
                }
            }
            Outcome::Pending(p) => {
                status.phase = Some("Pending".into());
                conditions.push(bound_cond("False", p.reason, p.message.clone()));
                next = Action::RequeueAfter(PENDING_RECHECK);
            }
            Outcome::Lost(m) => {
                status.phase = Some("Lost".into());
                conditions.push(bound_cond("False", "VolumeLost", m.clone()));
            }
        }
        let now = Time(Utc::now().trunc_subsecs(0));
        for c in &mut conditions {
            let prev = old_cond(&c.type_);
            c.last_transition_time = Some(c.transition_since(prev.as_ref(), now));
            let changed = prev.as_ref().map(|p| (&p.reason, &p.message)) != Some((&c.reason, &c.message));
            if changed && c.status != "True" {
                let warning = matches!(
                    c.reason.as_deref(),
                    Some("VolumeLost" | "ProvisioningFailed" | "CloneFailed" | "SourceFailed" | "ExpansionNotAllowed")
                        | Some("StorageClassNotFound" | "ImageNotFound" | "RequestTooSmall" | "VolumeExists")
                );
                let t = if warning { EventType::Warning } else { EventType::Normal };
                let reason = c.reason.clone().unwrap_or_default();
                let message = c.message.clone().unwrap_or_default();
                self.events.record(&reference_to(pvc), t, &reason, message).await;
            }
        }
        status.conditions = conditions;
        if pvc.status.as_ref() != Some(&status) {
            let ns = pvc.metadata.namespace.as_deref();
            let name = pvc.metadata.name.as_deref().unwrap_or_default();
            let claims = Typed::<PersistentVolumeClaim>::new(self.api.as_ref());
            let mut patch = json!({"status": status});
            // Merge patch: clear what this pass does not set.
            for k in ["capacity", "accessModes", "conditions"] {
                if patch["status"].get(k).is_none() {
                    patch["status"][k] = Value::Null;
                }
            }
            match claims.merge_patch(ns, name, patch, true).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(e),
            }
        }
        Ok(next)
    }
}
