//! The claims a VirtualMachine makes and waits for, for the VM controller
//! ([`crate::vm`]).
//!
//! - `spec.dataVolumeTemplates`: one PersistentVolumeClaim per template,
//!   named after it, with its labels and annotations, owned by the VM
//!   (controller reference: it goes with the VM, as KubeVirt's DataVolumes
//!   do). `spec.pvc` or `spec.storage` is the claim's spec (`storage` may
//!   leave out the access modes: ReadWriteOnce). Sources: `blank` (or
//!   none) is an empty volume, `pvc` a clone of that claim (same
//!   namespace); an image is the template's `harvesterhci.io/imageId`
//!   annotation or a class with an `image` parameter. Other sources (http,
//!   registry, s3, upload, ...) are refused with a message pointing at
//!   VirtualMachineImages: Sheaf imports images once, as images, not per
//!   disk.
//! - Harvester's annotation `harvesterhci.io/volumeClaimTemplates` (a JSON
//!   list of PersistentVolumeClaims): each one is created if missing and
//!   NOT owned by the VM, so it stays when the VM is deleted unless listed
//!   in `harvesterhci.io/removedPersistentVolumeClaims` (the API server
//!   handles that at the VM's deletion; see
//!   `sheaf_apiserver::vm_claims`).
//! - The VM's instance is created only once every claim its volumes name
//!   that exists (or that the VM makes) is Bound: meanwhile the VM shows
//!   `Provisioning` and the condition `DataVolumesReady` False says what
//!   each claim waits for; a template that cannot be made shows
//!   `DataVolumeError`. A volume naming no claim but a Volume directly
//!   (Sheaf's own way) is not waited for.

use std::collections::BTreeSet;

use serde_json::Value;
use sheaf_client::{Api, ClientError, Typed};
use sheaf_types::claim::{ClaimSource, PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedObjectReference};
use sheaf_types::kubevirt::{DataVolumeTemplateSpec, VirtualMachine};
use sheaf_types::ObjectMeta;

/// Harvester's VM annotation: a JSON list of the claims the VM's disks use.
pub const VOLUME_CLAIM_TEMPLATES_ANNOTATION: &str = "harvesterhci.io/volumeClaimTemplates";
/// Harvester's VM annotation: comma-separated claims deleted with the VM.
pub const REMOVED_CLAIMS_ANNOTATION: &str = "harvesterhci.io/removedPersistentVolumeClaims";
/// The DataVolume sources Sheaf does not import.
const UNSUPPORTED_SOURCES: &[&str] = &["http", "registry", "s3", "gcs", "upload", "imageio", "vddk", "snapshot"];

/// A claim the VM makes.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub claim: PersistentVolumeClaim,
}

/// What the VM's claims are waiting for or what is wrong with them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimsState {
    /// Whether the VM uses any claim at all.
    pub uses_claims: bool,
    /// Claims not Bound yet, with why.
    pub waiting: Vec<String>,
    /// Templates or annotations that cannot be made into claims.
    pub problems: Vec<String>,
}

impl ClaimsState {
    pub fn ready(&self) -> bool {
        self.waiting.is_empty() && self.problems.is_empty()
    }
}

fn name_of(vm: &VirtualMachine) -> &str {
    vm.metadata.name.as_deref().unwrap_or_default()
}

/// The claim a DataVolume template makes, or why it cannot be made.
pub fn claim_from_template(vm: &VirtualMachine, i: usize, dv: &DataVolumeTemplateSpec) -> Result<Wanted, String> {
    let ns = vm.metadata.namespace.clone();
    let name = dv.metadata.name.clone().unwrap_or_default();
    let what = format!("spec.dataVolumeTemplates[{i}] ({name})");
    let spec = dv.spec.as_ref().and_then(Value::as_object).cloned().unwrap_or_default();
    let body = spec.get("pvc").or_else(|| spec.get("storage")).cloned().unwrap_or(Value::Null);
    let mut claim_spec: PersistentVolumeClaimSpec = serde_json::from_value(body)
        .map_err(|e| format!("{what}: spec.pvc/spec.storage is not a PersistentVolumeClaim spec: {e}"))?;
    if claim_spec.access_modes.is_empty() {
        claim_spec.access_modes = vec!["ReadWriteOnce".into()];
    }
    let source = spec.get("source").and_then(Value::as_object);
    if spec.get("sourceRef").is_some_and(|v| !v.is_null()) {
        return Err(format!(
            "{what}: sourceRef (a CDI DataSource) is not supported; create a VirtualMachineImage \
             (harvesterhci.io/v1beta1) and give the template the annotation harvesterhci.io/imageId: NAMESPACE/NAME"
        ));
    }
    if let Some(src) = source {
        let kinds: Vec<&String> = src.keys().collect();
        if let Some(k) = kinds.iter().find(|k| UNSUPPORTED_SOURCES.contains(&k.as_str())) {
            return Err(format!(
                "{what}: source {k} is not supported: Sheaf imports disk images once, as VirtualMachineImages; \
                 create one (kubectl apply a harvesterhci.io/v1beta1 VirtualMachineImage with sourceType download \
                 and its url, or sheaf image upload), then give the template the annotation \
                 harvesterhci.io/imageId: NAMESPACE/NAME instead of the source"
            ));
        }
        if let Some(p) = src.get("pvc") {
            let pname = p.get("name").and_then(Value::as_str).unwrap_or_default();
            let pns = p.get("namespace").and_then(Value::as_str);
            if pname.is_empty() {
                return Err(format!("{what}: source.pvc.name is required"));
            }
            if pns.is_some_and(|n| Some(n) != ns.as_deref()) {
                return Err(format!(
                    "{what}: source.pvc names a claim in namespace {:?}; a clone is made only within the VM's \
                     namespace",
                    pns.unwrap_or_default()
                ));
            }
            claim_spec.data_source = Some(TypedObjectReference {
                kind: "PersistentVolumeClaim".into(),
                name: pname.to_string(),
                ..Default::default()
            });
        } else if let Some(k) = kinds.iter().find(|k| k.as_str() != "blank") {
            return Err(format!("{what}: source {k} is not supported (blank, pvc, or an image annotation are)"));
        }
    }
    let mut meta = ObjectMeta {
        name: Some(name),
        namespace: ns,
        labels: dv.metadata.labels.clone(),
        annotations: dv.metadata.annotations.clone(),
        owner_references: vec![crate::vm::owner_reference(vm)],
        ..Default::default()
    };
    meta.annotations.retain(|k, _| !k.starts_with("kubectl.kubernetes.io/"));
    Ok(Wanted { claim: PersistentVolumeClaim { metadata: meta, spec: claim_spec, status: None } })
}

/// The claims of Harvester's `volumeClaimTemplates` annotation, or why it
/// cannot be read.
pub fn claims_from_annotation(vm: &VirtualMachine) -> Result<Vec<Wanted>, String> {
    let Some(text) = vm.metadata.annotations.get(VOLUME_CLAIM_TEMPLATES_ANNOTATION) else { return Ok(Vec::new()) };
    let list: Vec<PersistentVolumeClaim> = serde_json::from_str(text).map_err(|e| {
        format!(
            "the annotation {VOLUME_CLAIM_TEMPLATES_ANNOTATION} is not a JSON list of PersistentVolumeClaims: {e}; \
             fix the annotation (for example [{{\"metadata\":{{\"name\":\"disk-0\"}},\"spec\":{{\"accessModes\":\
             [\"ReadWriteOnce\"],\"resources\":{{\"requests\":{{\"storage\":\"10Gi\"}}}}}}}}])"
        )
    })?;
    let ns = vm.metadata.namespace.clone();
    let mut out = Vec::new();
    for (i, mut c) in list.into_iter().enumerate() {
        if c.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(format!(
                "the annotation {VOLUME_CLAIM_TEMPLATES_ANNOTATION}: claim [{i}] has no metadata.name"
            ));
        }
        if c.metadata.namespace.is_some() && c.metadata.namespace != ns {
            return Err(format!(
                "the annotation {VOLUME_CLAIM_TEMPLATES_ANNOTATION}: claim {} is in another namespace than the VM",
                c.metadata.name.as_deref().unwrap_or_default()
            ));
        }
        c.metadata.namespace.clone_from(&ns);
        c.status = None;
        out.push(Wanted { claim: c });
    }
    Ok(out)
}

/// Creates the claims the VM makes that are missing, and says which of the
/// claims its volumes name are not Bound yet.
pub async fn sync(api: &dyn Api, vm: &VirtualMachine) -> Result<ClaimsState, ClientError> {
    let ns = vm.metadata.namespace.as_deref();
    let mut state = ClaimsState::default();
    let mut wanted = Vec::new();
    for (i, dv) in vm.spec.data_volume_templates.iter().enumerate() {
        match claim_from_template(vm, i, dv) {
            Ok(w) => wanted.push(w),
            Err(p) => state.problems.push(p),
        }
    }
    match claims_from_annotation(vm) {
        Ok(w) => wanted.extend(w),
        Err(p) => state.problems.push(p),
    }
    let claims = Typed::<PersistentVolumeClaim>::new(api);
    let mut made = BTreeSet::new();
    for w in &wanted {
        let name = w.claim.metadata.name.clone().unwrap_or_default();
        made.insert(name.clone());
        if claims.get(ns, &name).await?.is_some() {
            continue;
        }
        match claims.create(&w.claim).await {
            Ok(_) => tracing::info!(vm = name_of(vm), claim = %name, "claim created for the VM"),
            Err(e) if e.is_already_exists() => {}
            Err(e) if e.code == 422 || e.code == 400 => {
                state.problems.push(format!("claim {name} cannot be created: {}", e.message));
            }
            Err(e) => return Err(e),
        }
    }
    let mut needed: Vec<&str> = vm.spec.template.spec.volumes.iter().filter_map(|v| v.claim_name()).collect();
    needed.dedup();
    for name in needed {
        match claims.get(ns, name).await? {
            Some(c) => {
                state.uses_claims = true;
                if !c.is_bound() {
                    let why = c.pending_message().map(|m| format!(": {m}")).unwrap_or_default();
                    let what = match c.source() {
                        Some(ClaimSource::Claim(s)) => format!(" (a clone of {s})"),
                        _ => String::new(),
                    };
                    state.waiting.push(format!("claim {name}{what} is {}{why}", c.phase()));
                }
            }
            None if made.contains(name) => {
                state.uses_claims = true;
                if !state.problems.iter().any(|p| p.contains(name)) {
                    state.waiting.push(format!("claim {name} is being created"));
                }
            }
            // A Volume named directly, or nothing: the node agent says.
            None => {}
        }
    }
    Ok(state)
}

/// The claim names of `vm`'s removed-claims annotation.
pub fn removed_claims(vm: &VirtualMachine) -> Vec<String> {
    vm.metadata
        .annotations
        .get(REMOVED_CLAIMS_ANNOTATION)
        .map(|s| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(templates: Value) -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "team", "uid": "vm-uid"},
            "spec": {"dataVolumeTemplates": templates},
        }))
        .expect("vm")
    }

    #[test]
    fn templates_become_claims() {
        let v = vm(serde_json::json!([
            {"metadata": {"name": "root", "labels": {"app": "web"},
                "annotations": {"harvesterhci.io/imageId": "default/debian"}},
             "spec": {"storage": {"resources": {"requests": {"storage": "10Gi"}}, "storageClassName": "fast"}}},
            {"metadata": {"name": "copy"},
             "spec": {"source": {"pvc": {"namespace": "team", "name": "root"}},
                      "pvc": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}}},
            {"metadata": {"name": "web-disk"},
             "spec": {"source": {"http": {"url": "https://example.com/d.qcow2"}},
                      "storage": {"resources": {"requests": {"storage": "1Gi"}}}}},
        ]));
        let root = claim_from_template(&v, 0, &v.spec.data_volume_templates[0]).expect("root").claim;
        assert_eq!(root.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(root.spec.access_modes, ["ReadWriteOnce"]);
        assert_eq!(root.spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(root.metadata.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            root.metadata.annotations.get("harvesterhci.io/imageId").map(String::as_str),
            Some("default/debian")
        );
        assert_eq!(root.metadata.owner_references[0].uid, "vm-uid");
        assert_eq!(root.metadata.owner_references[0].controller, Some(true));
        let copy = claim_from_template(&v, 1, &v.spec.data_volume_templates[1]).expect("copy").claim;
        assert_eq!(copy.source(), Some(ClaimSource::Claim("root".into())));
        assert_eq!(copy.spec.access_modes, ["ReadWriteMany"]);
        let e = claim_from_template(&v, 2, &v.spec.data_volume_templates[2]).expect_err("http");
        assert!(e.contains("source http is not supported") && e.contains("VirtualMachineImage"), "{e}");
    }

    #[test]
    fn the_harvester_annotation() {
        let mut v = vm(serde_json::json!([]));
        v.metadata.annotations.insert(
            VOLUME_CLAIM_TEMPLATES_ANNOTATION.into(),
            r#"[{"metadata":{"name":"web-disk-0","annotations":{"harvesterhci.io/imageId":"default/img"}},
                "spec":{"accessModes":["ReadWriteMany"],"resources":{"requests":{"storage":"10Gi"}},
                        "volumeMode":"Block","storageClassName":"longhorn-img"}}]"#
                .into(),
        );
        let w = claims_from_annotation(&v).expect("annotation");
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].claim.metadata.namespace.as_deref(), Some("team"));
        assert!(w[0].claim.metadata.owner_references.is_empty(), "not owned by the VM");
        v.metadata.annotations.insert(VOLUME_CLAIM_TEMPLATES_ANNOTATION.into(), "[{".into());
        let e = claims_from_annotation(&v).expect_err("bad JSON");
        assert!(e.contains("is not a JSON list of PersistentVolumeClaims"), "{e}");
        v.metadata.annotations.insert(REMOVED_CLAIMS_ANNOTATION.into(), "a, b,,".into());
        assert_eq!(removed_claims(&v), ["a", "b"]);
    }
}
