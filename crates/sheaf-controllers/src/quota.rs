//! The ResourceQuota controller: keeps each quota's `status.hard` (what
//! is enforced) and `status.used` (what the namespace's VMs, instances and
//! claims take, counted as the API server's admission counts them) current,
//! for `kubectl describe quota`. Enforcement itself is in the API server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::claim::PersistentVolumeClaim;
use sheaf_types::kubevirt::{VirtualMachine, VirtualMachineInstance};
use sheaf_types::quantity::Quantity;
use sheaf_types::quota::{self, ResourceQuota};

use crate::runtime::{Action, Controller, ObjectKey, Reconciler};

/// Runs the quota controller until the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    // Any change of a counted object wakes every quota of its namespace.
    let wake = |_: crate::runtime::Change, obj: &Value, quotas: &crate::runtime::Store| {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        quotas.keys_where(|q| q.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns.as_str()))
    };
    Controller::new("quota", api.clone(), Gvr::of::<ResourceQuota>())
        .watches(Gvr::of::<VirtualMachine>(), wake)
        .watches(Gvr::of::<VirtualMachineInstance>(), wake)
        .watches(Gvr::of::<PersistentVolumeClaim>(), wake)
        .resync_every(Duration::from_secs(300))
        .run(Arc::new(Quotas { api }))
        .await;
}

pub struct Quotas {
    api: Arc<dyn Api>,
}

/// `status` for `q` given the namespace's use.
fn status_of(q: &ResourceQuota, used: &quota::Usage) -> Value {
    let used: BTreeMap<&String, Quantity> = q
        .spec
        .hard
        .keys()
        .filter_map(|k| {
            let amount = used.get(k.as_str()).copied().unwrap_or(0);
            Quantity::parse(&quota::format_amount(k, amount)).ok().map(|v| (k, v))
        })
        .collect();
    json!({"hard": q.spec.hard, "used": used})
}

#[async_trait::async_trait]
impl Reconciler for Quotas {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let Some(q) = Typed::<ResourceQuota>::new(self.api.as_ref()).get(key.namespace(), &key.name).await? else {
            return Ok(Action::Done);
        };
        let ns = key.namespace();
        let all = Selectors::default();
        let (vms, _) = self.api.list(Gvr::of::<VirtualMachine>(), ns, &all).await?;
        let (vmis, _) = self.api.list(Gvr::of::<VirtualMachineInstance>(), ns, &all).await?;
        let (pvcs, _) = self.api.list(Gvr::of::<PersistentVolumeClaim>(), ns, &all).await?;
        let status = status_of(&q, &quota::namespace_use(&vms, &vmis, &pvcs));
        if serde_json::to_value(&q.status).unwrap_or(Value::Null) != status {
            self.api.merge_patch(Gvr::of::<ResourceQuota>(), ns, &key.name, json!({"status": status}), true).await?;
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_reported_for_every_hard_key() {
        let q: ResourceQuota = serde_json::from_value(json!({
            "metadata": {"name": "q", "namespace": "a"},
            "spec": {"hard": {"limits.cpu": "4", "requests.storage": "100Gi", "persistentvolumeclaims": "3"}}
        }))
        .expect("test input");
        let used = quota::Usage::from([("limits.cpu", 1500), ("requests.storage", 10 << 30)]);
        assert_eq!(
            status_of(&q, &used),
            json!({"hard": {"limits.cpu": "4", "persistentvolumeclaims": "3", "requests.storage": "100Gi"},
                   "used": {"limits.cpu": "1500m", "persistentvolumeclaims": "0", "requests.storage": "10Gi"}})
        );
    }
}
