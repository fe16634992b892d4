//! Harvester's VM templates (`harvesterhci.io/v1beta1`): a
//! VirtualMachineTemplate names a family of numbered, immutable
//! VirtualMachineTemplateVersions, each holding the metadata and KubeVirt
//! spec of the VirtualMachines made from it.
//!
//! ```text
//!  VirtualMachineTemplate ns/web          spec.defaultVersionId: ns/web-v1
//!    status: defaultVersion 1, latestVersion 2
//!      ▲ ownerReference (set by the controller; deleting the template deletes its versions)
//!  VirtualMachineTemplateVersion ns/web-v1   spec.templateId: ns/web   status.version: 1
//!  VirtualMachineTemplateVersion ns/web-v2   spec.templateId: ns/web   status.version: 2
//!      │ createvm (POST .../virtualmachinetemplateversions/NAME/createvm, [`CreateVmRequest`])
//!      ▼
//!  VirtualMachine ns/vm1: the version's vm.metadata and vm.spec, overrides applied,
//!    claim names of harvesterhci.io/volumeClaimTemplates made unique ([`render_vm`])
//! ```
//!
//! This module holds the kinds, their validation (the version's VM spec
//! is checked with exactly the rules of a VirtualMachine's spec), the
//! rendering of a version into a VirtualMachine, and the templates every
//! cluster ships in `harvester-public` ([`default_objects`]). Version
//! numbers and defaults are the controller's (`sheaf-controllers`
//! `template`); the API server's `createvm` handler reads the objects that
//! [`render_vm`] needs.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::kubevirt::{CloudInitSource, Disk, DiskTarget, VirtualMachine, VirtualMachineSpec, Volume};
use crate::meta::{Condition, ObjectMeta};
use crate::quantity::Quantity;
use crate::resource::{Column, Kind};
use crate::validation::{self, FieldError, FieldErrorReason};

/// Harvester's label on a version: the name of its template.
pub const TEMPLATE_LABEL: &str = "template.harvesterhci.io/templateID";
/// Harvester's VM annotation: a JSON list of PersistentVolumeClaims to
/// create with the VM (its disks).
pub const VOLUME_CLAIM_TEMPLATES_ANNOTATION: &str = "harvesterhci.io/volumeClaimTemplates";
/// Harvester's claim annotation: `NAMESPACE/NAME` of the
/// VirtualMachineImage the claim's data comes from.
pub const IMAGE_ID_ANNOTATION: &str = "harvesterhci.io/imageId";
/// Harvester's version annotation naming the Secret with its default user data.
pub const DEFAULT_USERDATA_SECRET_ANNOTATION: &str = "harvesterhci.io/default-userdata-secret";
/// Labels on a VM made from a template: the template's and the version's names.
pub const VM_TEMPLATE_LABEL: &str = "harvesterhci.io/vmTemplate";
pub const VM_TEMPLATE_VERSION_LABEL: &str = "harvesterhci.io/vmTemplateVersion";
/// Annotation on a VM made from a template: `NAMESPACE/NAME` of the version
/// (labels cannot hold the namespace).
pub const VM_TEMPLATE_VERSION_ID_ANNOTATION: &str = "harvesterhci.io/vmTemplateVersionId";
/// The namespace of the templates every cluster has.
pub const PUBLIC_NAMESPACE: &str = "harvester-public";
/// The subresource of virtualmachinetemplateversions that makes a VM.
pub const CREATE_VM_SUBRESOURCE: &str = "createvm";
/// The condition type Harvester uses for "a version number was assigned".
pub const ASSIGNED_CONDITION: &str = "assigned";

/// A named family of VM template versions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineTemplateSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineTemplateStatus>,
}

/// Which version is the default, and what the template is for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplateSpec {
    /// `NAMESPACE/NAME` of the version VMs are made from when none is
    /// named; the first version when left empty.
    #[serde(default)]
    pub default_version_id: String,
    /// What the template is for (at most 1024 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The numbers of the default and latest versions, kept by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplateStatus {
    /// Number of the default version (0: none yet).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub default_version: u32,
    /// Highest version number (0: no version yet).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latest_version: u32,
}

/// One immutable, numbered version of a template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplateVersion {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineTemplateVersionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineTemplateVersionStatus>,
}

/// The template a version belongs to and the VMs made from it; immutable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplateVersionSpec {
    /// `NAMESPACE/NAME` of the template (required; same namespace).
    #[serde(default)]
    pub template_id: String,
    /// What changed in this version (at most 1024 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `NAMESPACE/NAME` of the VirtualMachineImage of the root disk (the
    /// first claim of harvesterhci.io/volumeClaimTemplates with a
    /// harvesterhci.io/imageId annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// KeyPairs (`NAMESPACE/NAME`) whose keys VMs made from it get.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_pair_ids: Vec<String>,
    /// The VirtualMachine's labels, annotations and spec.
    #[serde(default)]
    pub vm: VirtualMachineSourceSpec,
}

/// Metadata (labels and annotations) and KubeVirt spec of the VMs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSourceSpec {
    /// Labels and annotations given to the VM (other fields are ignored).
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineSpec,
}

/// The version's number, set by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplateVersionStatus {
    /// The version's number within its template, from 1 (0: not yet assigned).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
    /// `assigned`: True once the number is set; False (reason
    /// `TemplateNotFound`) while the template does not exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl VirtualMachineTemplate {
    /// `NAMESPACE/NAME`, as versions refer to it.
    pub fn id(&self) -> String {
        id_of(&self.metadata)
    }
}

impl VirtualMachineTemplateVersion {
    /// `NAMESPACE/NAME`, as the template's defaultVersionId refers to it.
    pub fn id(&self) -> String {
        id_of(&self.metadata)
    }
    /// The assigned version number, if any.
    pub fn number(&self) -> Option<u32> {
        self.status.as_ref().map(|s| s.version).filter(|v| *v > 0)
    }
}

fn id_of(m: &ObjectMeta) -> String {
    format!("{}/{}", m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or(""))
}

/// Splits a `NAMESPACE/NAME` reference, checking both parts.
pub fn parse_ref(s: &str) -> Result<(&str, &str), String> {
    let Some((ns, name)) = s.split_once('/') else {
        return Err(format!("{s:?} is not NAMESPACE/NAME (for example default/my-template)"));
    };
    validation::dns1123_label(ns).map_err(|e| format!("namespace {ns:?} in {s:?}: {e}"))?;
    validation::dns1123_subdomain(name).map_err(|e| format!("name {name:?} in {s:?}: {e}"))?;
    Ok((ns, name))
}

/// Splits `NAME` or `NAMESPACE/NAME`; a bare name is in `default_ns`.
pub fn parse_ref_in<'a>(s: &'a str, default_ns: &'a str) -> Result<(&'a str, &'a str), String> {
    if s.contains('/') {
        parse_ref(s)
    } else {
        validation::dns1123_subdomain(s).map_err(|e| format!("name {s:?}: {e}"))?;
        Ok((default_ns, s))
    }
}

impl Kind for VirtualMachineTemplate {
    const GROUP: &'static str = "harvesterhci.io";
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "VirtualMachineTemplate";
    const PLURAL: &'static str = "virtualmachinetemplates";
    const SHORT_NAMES: &'static [&'static str] = &["vmtemplate", "vmtemplates"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let id = &self.spec.default_version_id;
        if !id.is_empty() {
            match parse_ref(id) {
                Err(e) => errs.push(FieldError::invalid(
                    "spec.defaultVersionId",
                    format!("{e}: name a VirtualMachineTemplateVersion of this template, or leave it empty for the first one"),
                )),
                Ok((ns, _)) if Some(ns) != self.metadata.namespace.as_deref() => errs.push(FieldError::invalid(
                    "spec.defaultVersionId",
                    format!(
                        "{id:?} is in namespace {ns:?}, not the template's {:?}: a template's versions are in its namespace",
                        self.metadata.namespace.as_deref().unwrap_or("default")
                    ),
                )),
                Ok(_) => {}
            }
        }
        check_description("spec.description", self.spec.description.as_deref(), &mut errs);
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("VERSION_ID", "string", ".spec.defaultVersionId"),
            Column::new("VERSION_DEFAULT", "integer", ".status.defaultVersion"),
            Column::new("VERSION_LATEST", "integer", ".status.latestVersion"),
            Column::new("DESCRIPTION", "string", ".spec.description").wide(),
        ]
    }
    fn description() -> &'static str {
        "A VM template: a named family of numbered VirtualMachineTemplateVersions, one of them the default \
         (spec.defaultVersionId, the first version unless set). `sheaf vm create NAME --template NS/TEMPLATE` \
         makes a VirtualMachine from it."
    }
}

const MAX_DESCRIPTION: usize = 1024;

fn check_description(field: &str, d: Option<&str>, errs: &mut Vec<FieldError>) {
    if let Some(d) = d {
        if d.len() > MAX_DESCRIPTION {
            errs.push(FieldError::new(
                field,
                FieldErrorReason::TooLong,
                format!("is {} bytes; at most {MAX_DESCRIPTION}", d.len()),
            ));
        }
    }
}

impl Kind for VirtualMachineTemplateVersion {
    const GROUP: &'static str = "harvesterhci.io";
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "VirtualMachineTemplateVersion";
    const PLURAL: &'static str = "virtualmachinetemplateversions";
    const SHORT_NAMES: &'static [&'static str] = &["vmtemplateversion", "vmtemplateversions"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        if let Some(old) = old {
            if old.spec != self.spec {
                return vec![FieldError::forbidden(
                    "spec",
                    "a VirtualMachineTemplateVersion's spec cannot change once created; create a new version \
                     of the template instead (it gets the next number), and make it the default with the \
                     template's spec.defaultVersionId",
                )];
            }
            return Vec::new();
        }
        validate_version_spec(&self.spec, self.metadata.namespace.as_deref().unwrap_or("default"))
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("TEMPLATE_ID", "string", ".spec.templateId"),
            Column::new("VERSION", "integer", ".status.version"),
            Column::new("DESCRIPTION", "string", ".spec.description").wide(),
        ]
    }
    fn description() -> &'static str {
        "One immutable version of a VirtualMachineTemplate (spec.templateId): the labels, annotations and \
         KubeVirt spec of the VirtualMachines made from it (spec.vm). Numbered by the controller \
         (status.version). POST .../virtualmachinetemplateversions/NAME/createvm makes a VM from it."
    }
}

/// Prefixes the field paths of a VirtualMachine's errors (`spec.x`) with
/// where the VM spec sits in a version (`spec.vm.spec.x`).
fn rebase(errs: Vec<FieldError>, prefix: &str) -> impl Iterator<Item = FieldError> + '_ {
    errs.into_iter().map(move |mut e| {
        e.field = format!("{prefix}.{}", e.field);
        e
    })
}

fn validate_version_spec(spec: &VirtualMachineTemplateVersionSpec, namespace: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.template_id.is_empty() {
        errs.push(FieldError::new(
            "spec.templateId",
            FieldErrorReason::Required,
            format!("name the VirtualMachineTemplate this version belongs to, as {namespace}/TEMPLATE"),
        ));
    } else {
        match parse_ref(&spec.template_id) {
            Err(e) => errs.push(FieldError::invalid("spec.templateId", e)),
            Ok((ns, _)) if ns != namespace => errs.push(FieldError::invalid(
                "spec.templateId",
                format!(
                    "the template {:?} is in namespace {ns:?}: a version must be in its template's namespace \
                     ({namespace:?} here); create the version in {ns:?}",
                    spec.template_id
                ),
            )),
            Ok(_) => {}
        }
    }
    check_description("spec.description", spec.description.as_deref(), &mut errs);
    if let Some(img) = spec.image_id.as_deref().filter(|s| !s.is_empty()) {
        if let Err(e) = parse_ref(img) {
            errs.push(FieldError::invalid("spec.imageId", format!("{e}: name a VirtualMachineImage")));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, kp) in spec.key_pair_ids.iter().enumerate() {
        let field = format!("spec.keyPairIds[{i}]");
        if let Err(e) = parse_ref(kp) {
            errs.push(FieldError::invalid(field, format!("{e}: name a KeyPair")));
        } else if !seen.insert(kp.as_str()) {
            errs.push(FieldError::duplicate(field, kp));
        }
    }
    let meta = &spec.vm.metadata;
    for (k, v) in &meta.labels {
        if let Err(e) = validation::qualified_name(k) {
            errs.push(FieldError::invalid("spec.vm.metadata.labels", format!("invalid label key {k:?}: {e}")));
        }
        if let Err(e) = validation::label_value(v) {
            errs.push(FieldError::invalid(
                "spec.vm.metadata.labels",
                format!("invalid value {v:?} of label {k:?}: {e}"),
            ));
        }
    }
    for k in meta.annotations.keys() {
        if let Err(e) = validation::qualified_name(k) {
            errs.push(FieldError::invalid(
                "spec.vm.metadata.annotations",
                format!("invalid annotation key {k:?}: {e}"),
            ));
        }
    }
    // The VM spec: the rules of a VirtualMachine's spec, exactly.
    let vm = VirtualMachine { spec: spec.vm.spec.clone(), ..Default::default() };
    errs.extend(rebase(vm.validate(None), "spec.vm"));
    match claim_templates(&meta.annotations) {
        Err(e) => errs.push(e),
        Ok(claims) => check_claims_are_per_vm(&spec.vm.spec, &claims, &mut errs),
    }
    errs
}

fn claims_field() -> String {
    format!("spec.vm.metadata.annotations[{VOLUME_CLAIM_TEMPLATES_ANNOTATION}]")
}

/// The claims of a VM's `harvesterhci.io/volumeClaimTemplates`
/// annotation (none without it), checked: a JSON list of objects with
/// unique names, image references in `NAMESPACE/NAME` form, sizes that are
/// quantities.
pub fn claim_templates(annotations: &BTreeMap<String, String>) -> Result<Vec<Value>, FieldError> {
    let field = claims_field();
    let Some(text) = annotations.get(VOLUME_CLAIM_TEMPLATES_ANNOTATION).filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let claims: Vec<Value> = serde_json::from_str(text).map_err(|e| {
        FieldError::invalid(
            &field,
            format!("must be a JSON list of PersistentVolumeClaims ([{{\"metadata\": {{\"name\": ...}}, \"spec\": ...}}]): {e}"),
        )
    })?;
    let mut names = BTreeSet::new();
    for (i, c) in claims.iter().enumerate() {
        let at = |what: &str| FieldError::invalid(&field, format!("claim [{i}]: {what}"));
        if !c.is_object() {
            return Err(at("must be a PersistentVolumeClaim object"));
        }
        let name = c.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return Err(at("metadata.name is required"));
        }
        validation::dns1123_subdomain(name).map_err(|e| at(&format!("metadata.name {name:?}: {e}")))?;
        if !names.insert(name.to_string()) {
            return Err(at(&format!("claim name {name:?} appears twice")));
        }
        if let Some(img) = c.pointer("/metadata/annotations").and_then(|a| a.get(IMAGE_ID_ANNOTATION)) {
            match img.as_str() {
                Some("") => {}
                Some(s) => parse_ref(s).map(|_| ()).map_err(|e| at(&format!("{IMAGE_ID_ANNOTATION}: {e}")))?,
                None => return Err(at(&format!("{IMAGE_ID_ANNOTATION} must be a string"))),
            }
        }
        if let Some(size) = c.pointer("/spec/resources/requests/storage") {
            let q = size
                .as_str()
                .ok_or_else(|| at("spec.resources.requests.storage must be a quantity string such as 10Gi"))
                .and_then(|s| Quantity::parse(s).map_err(|e| at(&format!("spec.resources.requests.storage: {e}"))))?;
            if !q.is_positive() {
                return Err(at("spec.resources.requests.storage must be more than 0 (for example 10Gi)"));
            }
        }
    }
    Ok(claims)
}

fn claim_name(c: &Value) -> &str {
    c.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

/// Every claim a version's VM uses must be one made per VM (in the
/// annotation, or a dataVolumeTemplate): otherwise all VMs made from the
/// template would share that disk.
fn check_claims_are_per_vm(spec: &VirtualMachineSpec, claims: &[Value], errs: &mut Vec<FieldError>) {
    let templated: BTreeSet<&str> = claims.iter().map(claim_name).collect();
    let dvs: BTreeSet<&str> = spec.data_volume_templates.iter().filter_map(|d| d.metadata.name.as_deref()).collect();
    for (i, v) in spec.template.spec.volumes.iter().enumerate() {
        let shared = match (&v.persistent_volume_claim, &v.data_volume) {
            (Some(p), _) if !templated.contains(p.claim_name.as_str()) && !dvs.contains(p.claim_name.as_str()) => {
                Some(("persistentVolumeClaim.claimName", p.claim_name.as_str()))
            }
            (_, Some(d)) if !dvs.contains(d.name.as_str()) && !templated.contains(d.name.as_str()) => {
                Some(("dataVolume.name", d.name.as_str()))
            }
            _ => None,
        };
        if let Some((f, name)) = shared {
            errs.push(FieldError::invalid(
                format!("spec.vm.spec.template.spec.volumes[{i}].{f}"),
                format!(
                    "claim {name:?} is not made per VM: every VM made from this template would share it; \
                     add a claim named {name:?} to the VM annotation {VOLUME_CLAIM_TEMPLATES_ANNOTATION} \
                     (or a dataVolumeTemplate)"
                ),
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Making a VirtualMachine from a version

/// The body of `POST .../virtualmachinetemplateversions/NAME/createvm`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Name of the new VirtualMachine (required).
    #[serde(default)]
    pub name: String,
    /// Its namespace (default: the version's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// vCPU cores, instead of the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Guest memory (for example 4Gi), instead of the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// `NAMESPACE/NAME` of the VirtualMachineImage of the root disk,
    /// instead of the version's imageId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// KeyPairs (`NAME` in the VM's namespace, or `NAMESPACE/NAME`),
    /// instead of the version's keyPairIds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pairs: Option<Vec<String>>,
    /// cloud-init user data, instead of the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

/// The most vCPU cores a VM made from a template may ask for.
pub const MAX_CPU: u32 = 512;

impl CreateVmRequest {
    /// The VM's namespace.
    pub fn namespace_or<'a>(&'a self, version_ns: &'a str) -> &'a str {
        self.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(version_ns)
    }

    /// The KeyPairs the VM gets, as `NAMESPACE/NAME`.
    pub fn key_pairs_of(&self, version: &VirtualMachineTemplateVersion, vm_ns: &str) -> Vec<(String, String)> {
        match &self.key_pairs {
            Some(list) => list
                .iter()
                .filter_map(|k| parse_ref_in(k, vm_ns).ok())
                .map(|(n, k)| (n.to_string(), k.to_string()))
                .collect(),
            None => version
                .spec
                .key_pair_ids
                .iter()
                .filter_map(|k| parse_ref(k).ok())
                .map(|(n, k)| (n.to_string(), k.to_string()))
                .collect(),
        }
    }

    /// The image of the root disk (`NAMESPACE/NAME`), if any: the request's,
    /// else the version's imageId.
    pub fn image_of<'a>(&'a self, version: &'a VirtualMachineTemplateVersion) -> Option<&'a str> {
        self.image.as_deref().or(version.spec.image_id.as_deref()).filter(|s| !s.is_empty())
    }

    /// Checks the request's own fields (paths are the body's).
    pub fn validate(&self, version_ns: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.name.is_empty() {
            errs.push(FieldError::new("name", FieldErrorReason::Required, "name the VirtualMachine to create"));
        } else if let Err(e) = validation::dns1123_subdomain(&self.name) {
            errs.push(FieldError::invalid("name", e));
        }
        if let Some(ns) = self.namespace.as_deref().filter(|n| !n.is_empty()) {
            if let Err(e) = validation::dns1123_label(ns) {
                errs.push(FieldError::invalid("namespace", e));
            }
        }
        if let Some(c) = self.cpu {
            if c == 0 || c > MAX_CPU {
                errs.push(FieldError::invalid("cpu", format!("{c} vCPU cores: must be 1 to {MAX_CPU}")));
            }
        }
        if let Some(m) = &self.memory {
            match Quantity::parse(m) {
                Err(e) => errs.push(FieldError::invalid("memory", format!("{e} (for example 2Gi or 512Mi)"))),
                Ok(q) if q.as_bytes_u64().is_none_or(|b| b < 1 << 20) => errs.push(FieldError::invalid(
                    "memory",
                    format!("{m} is too little memory: at least 1Mi (quantities are in bytes; e.g. 512Mi or 2Gi)"),
                )),
                Ok(_) => {}
            }
        }
        if let Some(img) = self.image.as_deref() {
            if let Err(e) = parse_ref(img) {
                errs.push(FieldError::invalid("image", format!("{e}: name a VirtualMachineImage")));
            }
        }
        let vm_ns = self.namespace_or(version_ns);
        for (i, k) in self.key_pairs.iter().flatten().enumerate() {
            if let Err(e) = parse_ref_in(k, vm_ns) {
                errs.push(FieldError::invalid(format!("keyPairs[{i}]"), format!("{e}: name a KeyPair")));
            }
        }
        if let Some(u) = &self.user_data {
            if u.trim().is_empty() {
                errs.push(FieldError::invalid("userData", "is empty; leave it out to keep the template's user data"));
            }
        }
        errs
    }
}

/// Makes the VirtualMachine of `req` from `version`: the version's VM
/// labels, annotations and spec, the overrides, back-references to the
/// version, and per-VM claim names (`suffix` makes them unique, see
/// [`uniquify_claims`]). `req` must have passed [`CreateVmRequest::validate`].
/// Errors are in the request's terms (`image`, `cpu`, ...).
pub fn render_vm(
    version: &VirtualMachineTemplateVersion,
    req: &CreateVmRequest,
    suffix: &str,
) -> Result<VirtualMachine, Vec<FieldError>> {
    let version_ns = version.metadata.namespace.as_deref().unwrap_or("default");
    let vm_ns = req.namespace_or(version_ns);
    let source = &version.spec.vm;
    let mut vm = VirtualMachine {
        metadata: ObjectMeta {
            name: Some(req.name.clone()),
            namespace: Some(vm_ns.to_string()),
            labels: source.metadata.labels.clone(),
            annotations: source.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: source.spec.clone(),
        status: None,
    };
    let meta = &mut vm.metadata;
    let version_name = version.metadata.name.clone().unwrap_or_default();
    let template_name = parse_ref(&version.spec.template_id).map(|(_, n)| n.to_string()).unwrap_or_default();
    for (k, v) in [(VM_TEMPLATE_LABEL, &template_name), (VM_TEMPLATE_VERSION_LABEL, &version_name)] {
        if validation::label_value(v).is_ok() {
            meta.labels.insert(k.to_string(), v.clone());
        }
    }
    meta.annotations.insert(VM_TEMPLATE_VERSION_ID_ANNOTATION.to_string(), version.id());

    let mut errs = Vec::new();
    let domain = &mut vm.spec.template.spec.domain;
    if let Some(cores) = req.cpu {
        domain.cpu.get_or_insert_with(Default::default).cores = Some(cores);
        let q = Quantity::parse(&cores.to_string()).map_err(|e| vec![FieldError::invalid("cpu", e)])?;
        for map in [&mut domain.resources.limits, &mut domain.resources.requests] {
            if let Some(c) = map.get_mut("cpu") {
                *c = q.clone();
            }
        }
    }
    if let Some(m) = &req.memory {
        let q = Quantity::parse(m).map_err(|e| vec![FieldError::invalid("memory", e)])?;
        let mut set = false;
        if let Some(g) = domain.memory.as_mut().and_then(|mem| mem.guest.as_mut()) {
            *g = q.clone();
            set = true;
        }
        for map in [&mut domain.resources.limits, &mut domain.resources.requests] {
            if let Some(c) = map.get_mut("memory") {
                *c = q.clone();
                set = true;
            }
        }
        if !set {
            domain.memory.get_or_insert_with(Default::default).guest = Some(q);
        }
    }

    // Key pairs: Sheaf's (and Harvester's) sshNames annotation.
    let keys = req.key_pairs_of(version, vm_ns);
    if !keys.is_empty() {
        let mut names: Vec<String> = meta
            .annotations
            .get(crate::harvester::SSH_NAMES_ANNOTATION)
            .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
            .unwrap_or_default();
        for (ns, k) in keys {
            let id = format!("{ns}/{k}");
            if !names.contains(&id) {
                names.push(id);
            }
        }
        meta.annotations.insert(crate::harvester::SSH_NAMES_ANNOTATION.to_string(), json!(names).to_string());
    }

    // The image of the root disk.
    let mut claims = claim_templates(&meta.annotations).map_err(|e| vec![e])?;
    if let Some(img) = req.image_of(version) {
        match claims
            .iter_mut()
            .find(|c| c.pointer(&format!("/metadata/annotations/{}", escape(IMAGE_ID_ANNOTATION))).is_some())
        {
            Some(c) => c["metadata"]["annotations"][IMAGE_ID_ANNOTATION] = json!(img),
            None if req.image.is_some() => errs.push(FieldError::invalid(
                "image",
                format!(
                    "this template has no disk made from an image (no claim with the {IMAGE_ID_ANNOTATION} \
                     annotation in {VOLUME_CLAIM_TEMPLATES_ANNOTATION}); leave image out"
                ),
            )),
            None => {}
        }
    }
    for c in &claims {
        let img = c.pointer(&format!("/metadata/annotations/{}", escape(IMAGE_ID_ANNOTATION))).and_then(Value::as_str);
        if img == Some("") {
            errs.push(FieldError::new(
                "image",
                FieldErrorReason::Required,
                format!(
                    "the template's disk {:?} is made from an image: name one (NAMESPACE/NAME of a \
                     VirtualMachineImage; `kubectl get vmimages -A` lists them)",
                    claim_name(c)
                ),
            ));
        }
    }
    if !claims.is_empty() {
        meta.annotations.insert(VOLUME_CLAIM_TEMPLATES_ANNOTATION.to_string(), json!(claims).to_string());
    }

    if let Some(u) = &req.user_data {
        set_user_data(&mut vm.spec, u);
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    uniquify_claims(&mut vm, suffix).map_err(|e| vec![e])?;
    Ok(vm)
}

/// `~` and `/` escaped for a JSON pointer segment.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Replaces the user data of the VM's cloud-init volume (adding a NoCloud
/// volume and its disk when it has none).
fn set_user_data(spec: &mut VirtualMachineSpec, user_data: &str) {
    let vmi = &mut spec.template.spec;
    let ci = vmi.volumes.iter_mut().find_map(|v| v.cloud_init_no_cloud.as_mut().or(v.cloud_init_config_drive.as_mut()));
    match ci {
        Some(ci) => {
            ci.secret_ref = None;
            ci.user_data_base64 = None;
            ci.user_data = Some(user_data.to_string());
        }
        None => {
            let name = (0..)
                .map(|i| if i == 0 { "cloudinitdisk".to_string() } else { format!("cloudinitdisk{i}") })
                .find(|n| !vmi.volumes.iter().any(|v| &v.name == n))
                .unwrap_or_default();
            vmi.volumes.push(Volume {
                name: name.clone(),
                cloud_init_no_cloud: Some(CloudInitSource {
                    user_data: Some(user_data.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            vmi.domain.devices.disks.push(Disk {
                name,
                disk: Some(DiskTarget { bus: Some("virtio".into()), ..Default::default() }),
                ..Default::default()
            });
        }
    }
}

/// Claim names are kept to this length (they name volumes and appear in labels).
pub const MAX_CLAIM_NAME: usize = 63;

/// The per-VM name of a claim: `VM-BASE-SUFFIX`, shortened to
/// [`MAX_CLAIM_NAME`] by cutting `VM-BASE`.
pub fn claim_name_for(vm: &str, base: &str, suffix: &str) -> String {
    let keep = MAX_CLAIM_NAME.saturating_sub(suffix.len() + 1);
    let mut head: String = format!("{vm}-{base}").chars().take(keep).collect();
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}-{suffix}")
}

/// Renames every claim the VM creates — the claims of its
/// `harvesterhci.io/volumeClaimTemplates` annotation and its
/// `dataVolumeTemplates` — to a per-VM name (`VM-VOLUME-SUFFIX`, after
/// the volume that uses it), and the volumes that use them, so that two
/// VMs made from one template never share a disk. Returns old → new.
pub fn uniquify_claims(vm: &mut VirtualMachine, suffix: &str) -> Result<BTreeMap<String, String>, FieldError> {
    let vm_name = vm.metadata.name.clone().unwrap_or_default();
    let mut claims = claim_templates(&vm.metadata.annotations)?;
    let volumes = &vm.spec.template.spec.volumes;
    let base_of = |claim: &str| {
        volumes
            .iter()
            .find(|v| v.claim_name() == Some(claim))
            .map(|v| v.name.clone())
            .unwrap_or_else(|| claim.to_string())
    };
    // Claims of the annotation first, then DataVolumes not already among them.
    let mut olds: Vec<String> = claims.iter().map(|c| claim_name(c).to_string()).collect();
    for dv in &vm.spec.data_volume_templates {
        if let Some(old) = &dv.metadata.name {
            if !olds.contains(old) {
                olds.push(old.clone());
            }
        }
    }
    let mut renames = BTreeMap::new();
    let mut taken = BTreeSet::new();
    for old in olds {
        let base = base_of(&old);
        let mut name = claim_name_for(&vm_name, &base, suffix);
        let mut n = 1;
        while taken.contains(&name) {
            // The counter goes into the suffix: a long VM name would cut it off the base.
            name = claim_name_for(&vm_name, &base, &format!("{suffix}{n}"));
            n += 1;
        }
        taken.insert(name.clone());
        renames.insert(old, name);
    }
    for c in &mut claims {
        let new = renames[claim_name(c)].clone();
        c["metadata"]["name"] = json!(new);
    }
    if !claims.is_empty() {
        vm.metadata.annotations.insert(VOLUME_CLAIM_TEMPLATES_ANNOTATION.to_string(), json!(claims).to_string());
    }
    for dv in &mut vm.spec.data_volume_templates {
        if let Some(new) = dv.metadata.name.as_ref().and_then(|n| renames.get(n)) {
            dv.metadata.name = Some(new.clone());
        }
    }
    for v in &mut vm.spec.template.spec.volumes {
        if let Some(p) = &mut v.persistent_volume_claim {
            if let Some(new) = renames.get(&p.claim_name) {
                p.claim_name = new.clone();
            }
        }
        if let Some(d) = &mut v.data_volume {
            if let Some(new) = renames.get(&d.name) {
                d.name = new.clone();
            }
        }
    }
    Ok(renames)
}

// ---------------------------------------------------------------------------
// The templates every cluster has

mod defaults;

pub use defaults::default_objects;

#[cfg(test)]
mod tests;
