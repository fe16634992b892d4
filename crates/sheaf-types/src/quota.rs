//! Core v1 ResourceQuota: hard limits on what a namespace (a tenant) may
//! hold, enforced by the API server when VMs, instances and claims are
//! written (see `docs/design/rbac.md`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::quantity::Quantity;
use crate::resource::{Column, Kind};
use crate::validation::FieldError;

/// The `spec.hard` keys Sheaf counts.
pub const SUPPORTED: &[&str] = &[
    "requests.cpu",
    "cpu",
    "requests.memory",
    "memory",
    "limits.cpu",
    "limits.memory",
    "requests.storage",
    "persistentvolumeclaims",
    "count/persistentvolumeclaims",
    "count/virtualmachines.kubevirt.io",
];

/// What kind of amount a quota key counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Cpu,
    Bytes,
    Count,
}

/// The unit of a supported key.
pub fn unit_of(key: &str) -> Unit {
    match key {
        "requests.cpu" | "cpu" | "limits.cpu" => Unit::Cpu,
        "requests.memory" | "memory" | "limits.memory" | "requests.storage" => Unit::Bytes,
        _ => Unit::Count,
    }
}

/// Limits on the total use of a namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceQuota {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ResourceQuotaSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceQuotaStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceQuotaSpec {
    /// Key → the most the namespace may use, for example
    /// `limits.cpu: "8"`, `requests.memory: 16Gi`, `requests.storage: 500Gi`,
    /// `count/virtualmachines.kubevirt.io: "10"`.
    #[serde(default)]
    pub hard: BTreeMap<String, Quantity>,
    /// Kubernetes' pod scopes (refused: VMs have none of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Kubernetes' scope selector (refused, as `scopes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_selector: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceQuotaStatus {
    /// The limits being enforced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hard: BTreeMap<String, Quantity>,
    /// What the namespace uses now.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: BTreeMap<String, Quantity>,
}

impl Kind for ResourceQuota {
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "ResourceQuota";
    const PLURAL: &'static str = "resourcequotas";
    const SHORT_NAMES: &'static [&'static str] = &["quota"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (k, q) in &self.spec.hard {
            let p = format!("spec.hard[{k}]");
            if !SUPPORTED.contains(&k.as_str()) {
                errs.push(FieldError::unsupported(p, k, SUPPORTED));
                continue;
            }
            if q.is_negative() {
                errs.push(FieldError::invalid(p, "must be greater than or equal to 0"));
            } else if unit_of(k) == Unit::Count && q.as_millis().is_none_or(|m| m % 1000 != 0) {
                errs.push(FieldError::invalid(p, format!("{} must be a whole number", q.as_str())));
            } else if unit_of(k) == Unit::Bytes && q.as_bytes_u64().is_none() {
                errs.push(FieldError::invalid(p, format!("{} is not a size such as 16Gi", q.as_str())));
            } else if unit_of(k) == Unit::Cpu && q.as_millis().is_none() {
                errs.push(FieldError::invalid(p, format!("{} is not a CPU amount such as 4 or 500m", q.as_str())));
            }
        }
        if !self.spec.scopes.is_empty() {
            errs.push(FieldError::forbidden(
                "spec.scopes",
                "quota scopes select pods, which Sheaf does not run; remove spec.scopes",
            ));
        }
        if self.spec.scope_selector.is_some() {
            errs.push(FieldError::forbidden(
                "spec.scopeSelector",
                "quota scopes select pods, which Sheaf does not run; remove spec.scopeSelector",
            ));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![Column::new("Hard", "string", ".spec.hard"), Column::new("Used", "string", ".status.used")]
    }
    fn description() -> &'static str {
        "ResourceQuota limits the CPU, memory, storage and number of VMs and claims of a namespace."
    }
}

// ---------------------------------------------------------------- what a VM takes

/// Memory a VMI needs beyond its guest memory (QEMU, its I/O buffers).
pub const VMI_MEMORY_OVERHEAD: u64 = 32 * 1024 * 1024;
/// vCPUs per host CPU when a VMI requests no CPU explicitly (KubeVirt's
/// `cpuAllocationRatio` default).
pub const CPU_ALLOCATION_RATIO: u64 = 10;

/// What one VM instance takes: requests as the scheduler counts them, and
/// limits (its vCPUs and guest memory unless set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmUse {
    pub requests_millicpu: u64,
    pub requests_memory: u64,
    pub limits_millicpu: u64,
    pub limits_memory: u64,
}

/// What an instance of `spec` takes.
pub fn vm_use(spec: &crate::kubevirt::VirtualMachineInstanceSpec) -> VmUse {
    let res = &spec.domain.resources;
    let guest_memory = spec.domain.memory.as_ref().and_then(|m| m.guest.as_ref());
    let guest = res
        .requests
        .get("memory")
        .or_else(|| res.limits.get("memory"))
        .or(guest_memory)
        .and_then(|q| q.as_bytes_u64())
        .unwrap_or(0);
    let overhead = if res.overcommit_guest_overhead == Some(true) { 0 } else { VMI_MEMORY_OVERHEAD };
    let topo = spec.domain.cpu.as_ref();
    let n = |v: Option<u32>| u64::from(v.unwrap_or(1).max(1));
    let vcpus = n(topo.and_then(|c| c.cores)) * n(topo.and_then(|c| c.sockets)) * n(topo.and_then(|c| c.threads));
    let millis = |q: Option<&Quantity>| q.and_then(|q| q.as_millis()).map(|m| u64::try_from(m).unwrap_or(0));
    let requests_millicpu = millis(res.requests.get("cpu").or_else(|| res.limits.get("cpu")))
        // KubeVirt's default CPU allocation ratio: a vCPU requests a tenth of a CPU.
        .unwrap_or(vcpus * 1000 / CPU_ALLOCATION_RATIO);
    let limits_memory =
        res.limits.get("memory").or(guest_memory).or_else(|| res.requests.get("memory")).and_then(|q| q.as_bytes_u64());
    VmUse {
        requests_millicpu,
        requests_memory: guest.saturating_add(overhead),
        limits_millicpu: millis(res.limits.get("cpu")).unwrap_or(vcpus * 1000),
        limits_memory: limits_memory.unwrap_or(guest),
    }
}

/// A namespace's use, per supported key (CPU in millicores, sizes in
/// bytes, counts as they are).
pub type Usage = BTreeMap<&'static str, u64>;

fn storage_of(spec: Option<&serde_json::Value>) -> u64 {
    let Some(spec) = spec else { return 0 };
    ["/resources/requests/storage", "/pvc/resources/requests/storage", "/storage/resources/requests/storage"]
        .iter()
        .find_map(|p| spec.pointer(p).and_then(serde_json::Value::as_str))
        .and_then(|s| Quantity::parse(s).ok())
        .and_then(|q| q.as_bytes_u64())
        .unwrap_or(0)
}

fn owned_by_vm(obj: &serde_json::Value) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|o| o.iter().any(|r| r.get("kind").and_then(serde_json::Value::as_str) == Some("VirtualMachine")))
}

/// The claims a VM will make that do not exist yet: its
/// `dataVolumeTemplates` and Harvester's `volumeClaimTemplates`
/// annotation, as `(name, bytes)`.
fn claim_templates(vm: &serde_json::Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in vm.pointer("/spec/dataVolumeTemplates").and_then(serde_json::Value::as_array).into_iter().flatten() {
        let name = t.pointer("/metadata/name").and_then(serde_json::Value::as_str).unwrap_or("").to_string();
        out.push((name, storage_of(t.get("spec"))));
    }
    let ann = vm
        .pointer("/metadata/annotations/harvesterhci.io~1volumeClaimTemplates")
        .and_then(serde_json::Value::as_str)
        .and_then(|s| serde_json::from_str::<Vec<serde_json::Value>>(s).ok())
        .unwrap_or_default();
    for t in ann {
        let name = t.pointer("/metadata/name").and_then(serde_json::Value::as_str).unwrap_or("").to_string();
        out.push((name, storage_of(t.get("spec"))));
    }
    out
}

/// What the VMs, instances and claims of one namespace use.
pub fn namespace_use(vms: &[serde_json::Value], vmis: &[serde_json::Value], pvcs: &[serde_json::Value]) -> Usage {
    let mut u = Usage::new();
    let mut add = |k: &'static str, v: u64| *u.entry(k).or_insert(0) += v;
    let count_vm = |spec: &serde_json::Value, add: &mut dyn FnMut(&'static str, u64)| {
        let Ok(spec) = serde_json::from_value::<crate::kubevirt::VirtualMachineInstanceSpec>(spec.clone()) else {
            return;
        };
        let v = vm_use(&spec);
        add("requests.cpu", v.requests_millicpu);
        add("cpu", v.requests_millicpu);
        add("requests.memory", v.requests_memory);
        add("memory", v.requests_memory);
        add("limits.cpu", v.limits_millicpu);
        add("limits.memory", v.limits_memory);
    };
    for vm in vms {
        add("count/virtualmachines.kubevirt.io", 1);
        if let Some(spec) = vm.pointer("/spec/template/spec") {
            count_vm(spec, &mut add);
        }
    }
    for vmi in vmis.iter().filter(|v| !owned_by_vm(v)) {
        if let Some(spec) = vmi.get("spec") {
            count_vm(spec, &mut add);
        }
    }
    let names: std::collections::BTreeSet<&str> =
        pvcs.iter().filter_map(|p| p.pointer("/metadata/name").and_then(serde_json::Value::as_str)).collect();
    for pvc in pvcs {
        add("persistentvolumeclaims", 1);
        add("count/persistentvolumeclaims", 1);
        add("requests.storage", storage_of(pvc.get("spec")));
    }
    for vm in vms {
        for (name, bytes) in claim_templates(vm) {
            if !names.contains(name.as_str()) {
                add("persistentvolumeclaims", 1);
                add("count/persistentvolumeclaims", 1);
                add("requests.storage", bytes);
            }
        }
    }
    u
}

/// The quantity text of `amount` of `key`: `1500m`/`2` for CPU, `16Gi`
/// for sizes, a plain number for counts.
pub fn format_amount(key: &str, amount: u64) -> String {
    match unit_of(key) {
        Unit::Cpu if amount.is_multiple_of(1000) => (amount / 1000).to_string(),
        Unit::Cpu => format!("{amount}m"),
        Unit::Bytes => {
            for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
                if amount != 0 && amount.is_multiple_of(1u64 << shift) {
                    return format!("{}{suffix}", amount >> shift);
                }
            }
            amount.to_string()
        }
        Unit::Count => amount.to_string(),
    }
}

/// A hard limit in the unit [`namespace_use`] counts.
pub fn hard_amount(key: &str, q: &Quantity) -> u64 {
    let v = match unit_of(key) {
        Unit::Cpu => q.as_millis().map(|m| u64::try_from(m).unwrap_or(0)),
        Unit::Bytes => q.as_bytes_u64(),
        Unit::Count => q.as_millis().map(|m| u64::try_from(m / 1000).unwrap_or(0)),
    };
    v.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_amounts_are_checked() {
        let q: ResourceQuota = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "q", "namespace": "a"},
            "spec": {"hard": {"limits.cpu": "4", "requests.memory": "8Gi", "pods": "3",
                              "count/virtualmachines.kubevirt.io": "1500m", "requests.storage": "-1Gi"},
                     "scopes": ["BestEffort"]}
        }))
        .expect("test input");
        let fields: Vec<String> = q.validate(None).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.hard[count/virtualmachines.kubevirt.io]",
                "spec.hard[pods]",
                "spec.hard[requests.storage]",
                "spec.scopes"
            ]
        );
    }

    #[test]
    fn namespace_use_counts_vms_templates_and_claims() {
        let vm = serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "template": {"spec": {"domain": {"cpu": {"cores": 2}, "memory": {"guest": "1Gi"}, "devices": {}}}},
                "dataVolumeTemplates": [
                    {"metadata": {"name": "web-root"}, "spec": {"pvc": {"resources": {"requests": {"storage": "10Gi"}}}}},
                    {"metadata": {"name": "web-data"}, "spec": {"storage": {"resources": {"requests": {"storage": "5Gi"}}}}}
                ]
            }
        });
        let pvc = serde_json::json!({"metadata": {"name": "web-root"}, "spec": {"resources": {"requests": {"storage": "10Gi"}}}});
        let lone = serde_json::json!({"metadata": {"name": "x"}, "spec": {"domain": {"memory": {"guest": "512Mi"}, "devices": {}}}});
        let owned = serde_json::json!({"metadata": {"name": "web", "ownerReferences": [{"kind": "VirtualMachine", "name": "web"}]},
                                      "spec": {"domain": {"memory": {"guest": "1Gi"}, "devices": {}}}});
        let u = namespace_use(&[vm], &[lone, owned], &[pvc]);
        assert_eq!(u["count/virtualmachines.kubevirt.io"], 1);
        assert_eq!(u["limits.cpu"], 3000, "2 vCPUs of the VM, 1 of the lone instance; the VM's own instance not twice");
        assert_eq!(u["limits.memory"], (1 << 30) + (512 << 20));
        assert_eq!(u["requests.cpu"], 300);
        assert_eq!(u["requests.memory"], (1 << 30) + (512 << 20) + 2 * VMI_MEMORY_OVERHEAD);
        assert_eq!(u["requests.storage"], 15 << 30, "the claim, and the template whose claim does not exist yet");
        assert_eq!(u["persistentvolumeclaims"], 2);
        assert_eq!(format_amount("requests.storage", 15 << 30), "15Gi");
        assert_eq!(format_amount("limits.cpu", 1500), "1500m");
        assert_eq!(hard_amount("limits.cpu", &Quantity::parse("4").expect("test input")), 4000);
        assert_eq!(hard_amount("count/virtualmachines.kubevirt.io", &Quantity::parse("3").expect("test input")), 3);
    }
}
