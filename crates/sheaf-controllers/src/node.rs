//! The node lifecycle controller: a node whose agent stops posting its
//! `Ready` heartbeat and renewing its Lease `kube-node-lease/<node>` (it
//! does both every 5 s; the newer of the condition's `lastHeartbeatTime`
//! and the Lease's `renewTime` counts) for [`GRACE`] gets
//! `Ready=Unknown`, reason `NodeStatusUnknown`, as Kubernetes' node
//! lifecycle controller does. The scheduler then places no VM there, the
//! node's VMIs are failed over ([`crate::failover`]: started again
//! elsewhere), and the Volume controller counts how long the node has been
//! down from the condition's `lastTransitionTime` (to replace its replicas
//! after the volume's `staleReplicaTimeout`). The agent's next heartbeat
//! sets the condition back to `True`.
//!
//! A node is never judged on heartbeats older than this controller's own
//! start: after the whole cluster was down, every node gets a full grace
//! period to report in, instead of all being marked down at once.
//! Nodes without a heartbeat time or Lease (made by hand) are left alone.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;
use sheaf_client::{Api, ClientError, Gvr, Typed};
use sheaf_types::coordination::Lease;
use sheaf_types::core::Node;
use sheaf_types::Time;

use crate::failover;
use crate::runtime::{Action, Controller, ObjectKey, Reconciler};

/// The namespace of the nodes' heartbeat Leases, one per node, named after
/// it.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The `Ready` reason of a node marked down by this controller.
pub const NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";

/// How long a node's agent may stay silent before the node is `Unknown`
/// and its VMs are failed over (`sheaf server --node-grace`).
pub const GRACE: Duration = Duration::from_secs(30);
/// While a silent node still has VMIs bound, they are looked at this often.
const FAILOVER_RETRY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Config {
    pub grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { grace: GRACE }
    }
}

pub struct NodeLifecycle {
    api: Arc<dyn Api>,
    config: Config,
    started: DateTime<Utc>,
}

/// Watches the nodes until the future is dropped.
pub async fn run(api: Arc<dyn Api>, config: Config) {
    let reconciler = NodeLifecycle { api: api.clone(), config, started: Utc::now() };
    Controller::new("node-lifecycle", api, Gvr::of::<Node>())
        .resync_every(Duration::from_secs(30))
        .run(Arc::new(reconciler))
        .await
}

#[async_trait::async_trait]
impl Reconciler for NodeLifecycle {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let nodes = Typed::<Node>::new(self.api.as_ref());
        let Some(node) = nodes.get(None, &key.name).await? else { return Ok(Action::Done) };
        let Some(status) = node.status.as_ref() else { return Ok(Action::Done) };
        let Some(ready) = status.conditions.iter().find(|c| c.type_ == "Ready") else { return Ok(Action::Done) };
        if ready.status != "True" {
            // Down already; the agent's next heartbeat brings it back.
            // Until then its VMIs run elsewhere.
            if ready.reason.as_deref() == Some(NODE_STATUS_UNKNOWN) {
                let since = ready.last_heartbeat_time.as_ref().map(|t| t.0.to_rfc3339()).unwrap_or_default();
                if failover::fail_over_node(&self.api, &key.name, &since).await? > 0 {
                    return Ok(Action::RequeueAfter(FAILOVER_RETRY));
                }
            }
            return Ok(Action::Done);
        }
        let lease = Typed::<Lease>::new(self.api.as_ref()).get(Some(NODE_LEASE_NAMESPACE), &key.name).await?;
        let renewed = lease.and_then(|l| l.spec.renew_time).map(|t| t.0);
        let posted = ready.last_heartbeat_time.as_ref().map(|t| t.0);
        let Some(heartbeat) = posted.max(renewed) else { return Ok(Action::Done) };
        let now = Utc::now();
        let silent = (now - heartbeat.max(self.started)).to_std().unwrap_or_default();
        if silent < self.config.grace {
            return Ok(Action::RequeueAfter(self.config.grace - silent + Duration::from_millis(500)));
        }
        let mut conditions = status.conditions.clone();
        for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
            c.status = "Unknown".into();
            c.reason = Some(NODE_STATUS_UNKNOWN.into());
            c.message = Some(format!(
                "the node's agent stopped posting its status (last heartbeat {}); \
                 check that the node is up and that `sheaf server` runs on it",
                heartbeat.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
            c.last_transition_time = Some(Time(now.trunc_subsecs(0)));
        }
        // Pinned to the version read: a heartbeat that arrives meanwhile
        // wins (the write conflicts and the next reconcile sees it).
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        nodes.merge_patch(None, &key.name, patch, true).await?;
        tracing::warn!(node = %key, last_heartbeat = %heartbeat, "node not Ready: its agent stopped posting status");
        // The next pass, on the version just written, fails its VMIs over.
        Ok(Action::RequeueAfter(Duration::ZERO))
    }
}
