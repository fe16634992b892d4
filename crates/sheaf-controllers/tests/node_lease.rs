//! The node lifecycle controller against a real API server, with the
//! node's heartbeat Lease `kube-node-lease/<node>` renewed by the test as
//! the agent does: a fresh Lease keeps a node Ready whatever the age of its
//! `Ready` heartbeat, and the node goes Unknown once both are old.

mod common;

use std::time::Duration;

use common::{ago, until, Cluster, Run};
use serde_json::json;
use sheaf_client::{Gvr, Typed};
use sheaf_controllers::node::{Config, NODE_LEASE_NAMESPACE};
use sheaf_controllers::vm;
use sheaf_types::coordination::{Lease, LeaseSpec, MicroTime};
use sheaf_types::core::Node;
use sheaf_types::ObjectMeta;

async fn renew(c: &Cluster, node: &str) -> anyhow::Result<()> {
    let leases = Typed::<Lease>::new(c.api.as_ref());
    let now = MicroTime::now();
    match leases.get(Some(NODE_LEASE_NAMESPACE), node).await? {
        Some(mut lease) => {
            lease.spec.renew_time = Some(now);
            leases.update(&lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some(NODE_LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(40),
                    acquire_time: Some(now),
                    renew_time: Some(now),
                    ..Default::default()
                },
            };
            leases.create(&lease).await?;
        }
    }
    Ok(())
}

async fn ready_status(c: &Cluster, node: &str) -> String {
    let n = Typed::<Node>::new(c.api.as_ref()).get(None, node).await.ok().flatten().unwrap_or_default();
    let ready = n.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
    ready.map(|c| c.status).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_lease_keeps_a_node_ready_until_it_too_is_old() -> anyhow::Result<()> {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await?;
    let grace = Duration::from_millis(600);
    let task = tokio::spawn(sheaf_controllers::node::run(c.api.clone(), Config { grace }));
    c.add_node("leased", "4", "8Gi", true).await?;
    // The Ready heartbeat is two minutes old.
    let condition = json!({"type": "Ready", "status": "True", "reason": "AgentReady",
        "lastHeartbeatTime": ago(120), "lastTransitionTime": ago(3600)});
    c.api.merge_patch(Gvr::of::<Node>(), None, "leased", json!({"status": {"conditions": [condition]}}), true).await?;

    // Renewed well within the grace for several graces: still Ready.
    let end = tokio::time::Instant::now() + grace * 4;
    while tokio::time::Instant::now() < end {
        renew(&c, "leased").await?;
        assert_eq!(ready_status(&c, "leased").await, "True", "a node with a fresh Lease stays Ready");
        tokio::time::sleep(grace / 6).await;
    }

    // Renewals stop: Unknown after the grace.
    let ready = until("node leased Unknown", || async {
        let n = Typed::<Node>::new(c.api.as_ref()).get(None, "leased").await.ok().flatten()?;
        n.status?.conditions.into_iter().find(|c| c.type_ == "Ready" && c.status == "Unknown")
    })
    .await;
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_lease_namespace_exists() -> anyhow::Result<()> {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await?;
    let ns = c.api.get(Gvr::of::<sheaf_types::core::Namespace>(), None, NODE_LEASE_NAMESPACE).await?;
    assert!(ns.is_some(), "bootstrap makes {NODE_LEASE_NAMESPACE}");
    Ok(())
}
