//! etcd membership for HA control planes (`sheaf_store::etcd_members`)
//! against a real etcd on loopback: a joining member is a learner, so a
//! member that never starts costs the cluster nothing; joins are
//! idempotent per peer URL, one at a time, and refused by name clashes.

#[path = "support/etcd.rs"]
#[allow(dead_code)]
mod etcd_support;

use etcd_support::EtcdProcess;
use sheaf_store::etcd::EtcdStore;
use sheaf_store::etcd_members::{self, MemberError};
use sheaf_store::Store;

#[tokio::test]
async fn learners_join_one_at_a_time() -> anyhow::Result<()> {
    let etcd = EtcdProcess::start().await?;
    let eps = etcd.endpoints();
    let one = etcd_members::list(&eps).await?;
    assert_eq!(one.len(), 1, "{one:?}");
    assert!(!one[0].is_learner);

    let members = etcd_members::add_member(&eps, "s1", "https://127.0.0.1:1", 3).await?;
    assert_eq!(members.len(), 2, "{members:?}");
    let s1 = members.iter().find(|m| m.name == "s1").expect("the new member, named");
    assert!(s1.is_learner, "{s1:?}");
    // The same join again: the same answer.
    let again = etcd_members::add_member(&eps, "s1", "https://127.0.0.1:1", 3).await?;
    assert_eq!(again.len(), 2);

    // The learner never starts, and the cluster keeps its quorum.
    let store = EtcdStore::connect(&eps, "/members-test").await?;
    store.create("/k", b"v".to_vec()).await?;

    // Another join waits for this one; a taken name is refused.
    let e = etcd_members::add_member(&eps, "s2", "https://127.0.0.1:2", 3).await.expect_err("busy");
    assert!(matches!(e, MemberError::Busy { .. }), "{e}");
    let e = etcd_members::add_member(&eps, "default", "https://127.0.0.1:3", 3).await.expect_err("name");
    assert!(matches!(e, MemberError::NameTaken { .. }), "{e}");
    let e = etcd_members::add_member(&eps, "s2", "https://127.0.0.1:2", 2).await.expect_err("full");
    assert!(e.to_string().contains("already has 2 servers"), "{e}");

    // A learner that is not in sync is not promoted; an unknown one is not found.
    let e = etcd_members::promote(&eps, "https://127.0.0.1:1").await.expect_err("not in sync");
    assert!(matches!(e, MemberError::NotReady(_)), "{e}");
    let e = etcd_members::promote(&eps, "https://127.0.0.1:9").await.expect_err("unknown");
    assert!(matches!(e, MemberError::NotMember { .. }), "{e}");
    // The voter itself: nothing to do.
    let voter = one[0].peer_urls[0].clone();
    etcd_members::promote(&eps, &voter).await?;
    Ok(())
}
