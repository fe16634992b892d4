//! ResourceQuota admission: a write of a VM, an instance or a claim that
//! would raise a namespace's use above one of its quotas' hard limits is
//! refused with Kubernetes' `exceeded quota` message. Writes that do not
//! raise any use always pass. See `docs/design/rbac.md`.

use serde_json::Value;
use sheaf_types::quota::{self, Usage};
use sheaf_types::ResourceType;

use crate::error::{ApiError, ApiResult};
use crate::objects::{name_of, namespace_of, ListParams, Objects};

fn counted(rt: &ResourceType) -> bool {
    matches!(
        (rt.group, rt.kind),
        ("kubevirt.io", "VirtualMachine") | ("kubevirt.io", "VirtualMachineInstance") | ("", "PersistentVolumeClaim")
    )
}

async fn all(objects: &Objects, group: &str, version: &str, plural: &str, ns: &str) -> ApiResult<Vec<Value>> {
    let Some(rt) = objects.registry.find(group, version, plural).cloned() else { return Ok(Vec::new()) };
    Ok(objects.list(&rt, Some(ns), &ListParams::default()).await?.0)
}

/// Replaces (or adds) the object of `obj`'s name in `list`.
fn with(list: &[Value], obj: &Value) -> Vec<Value> {
    let name = name_of(obj);
    let mut out: Vec<Value> = list.iter().filter(|o| name_of(o) != name).cloned().collect();
    out.push(obj.clone());
    out
}

/// Refuses the write of `obj` (of kind `rt`) if it exceeds a quota.
pub async fn check_write(objects: &Objects, rt: &ResourceType, obj: &Value) -> ApiResult<()> {
    if !counted(rt) {
        return Ok(());
    }
    let Some(ns) = namespace_of(obj).map(str::to_string) else { return Ok(()) };
    let quotas = all(objects, "", "v1", "resourcequotas", &ns).await?;
    if quotas.is_empty() {
        return Ok(());
    }
    let vms = all(objects, "kubevirt.io", "v1", "virtualmachines", &ns).await?;
    let vmis = all(objects, "kubevirt.io", "v1", "virtualmachineinstances", &ns).await?;
    let pvcs = all(objects, "", "v1", "persistentvolumeclaims", &ns).await?;
    let before = quota::namespace_use(&vms, &vmis, &pvcs);
    let after = match rt.kind {
        "VirtualMachine" => quota::namespace_use(&with(&vms, obj), &vmis, &pvcs),
        "VirtualMachineInstance" => quota::namespace_use(&vms, &with(&vmis, obj), &pvcs),
        _ => quota::namespace_use(&vms, &vmis, &with(&pvcs, obj)),
    };
    for q in &quotas {
        let Ok(q) = serde_json::from_value::<quota::ResourceQuota>(q.clone()) else { continue };
        let exceeded = exceeded(&q, &before, &after);
        if !exceeded.is_empty() {
            let list = |f: &dyn Fn(&str) -> u64| {
                exceeded.iter().map(|k| format!("{k}={}", quota::format_amount(k, f(k)))).collect::<Vec<_>>().join(",")
            };
            let get = |u: &Usage, k: &str| u.get(k).copied().unwrap_or(0);
            let requested = list(&|k| get(&after, k).saturating_sub(get(&before, k)));
            let used = list(&|k| get(&before, k));
            let limited = list(&|k| q.spec.hard.get(k).map(|h| quota::hard_amount(k, h)).unwrap_or(0));
            let what = if rt.group.is_empty() { rt.plural.to_string() } else { format!("{}.{}", rt.plural, rt.group) };
            return Err(ApiError::forbidden(format!(
                "{what} {:?} is forbidden: exceeded quota: {}, requested: {requested}, used: {used}, limited: {limited}; \
                 free some (delete or shrink VMs and claims in {ns}) or ask an admin to raise the quota",
                name_of(obj),
                q.metadata.name.as_deref().unwrap_or(""),
            )));
        }
    }
    Ok(())
}

/// The keys of `q` that `after` takes above their hard limit while raising
/// them over `before`.
fn exceeded(q: &quota::ResourceQuota, before: &Usage, after: &Usage) -> Vec<String> {
    q.spec
        .hard
        .iter()
        .filter(|(k, hard)| {
            let (b, a) = (before.get(k.as_str()).copied().unwrap_or(0), after.get(k.as_str()).copied().unwrap_or(0));
            a > b && a > quota::hard_amount(k, hard)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_raises_above_the_limit_are_refused() {
        let q: quota::ResourceQuota = serde_json::from_value(
            serde_json::json!({"spec": {"hard": {"limits.cpu": "4", "requests.storage": "10Gi"}}}),
        )
        .expect("test input");
        let u = |cpu: u64, storage: u64| Usage::from([("limits.cpu", cpu), ("requests.storage", storage)]);
        assert!(exceeded(&q, &u(2000, 0), &u(4000, 0)).is_empty(), "up to the limit");
        assert_eq!(exceeded(&q, &u(2000, 0), &u(5000, 0)), ["limits.cpu"]);
        assert!(exceeded(&q, &u(6000, 0), &u(5000, 0)).is_empty(), "over already, but lowered");
        assert!(exceeded(&q, &u(6000, 0), &u(6000, 0)).is_empty(), "over already, unchanged");
        assert_eq!(exceeded(&q, &u(0, 0), &u(5000, 11 << 30)), ["limits.cpu", "requests.storage"]);
    }
}
