//! Membership of the etcd cluster under an HA control plane: listing the
//! members, adding a server's member through a running one, promoting it.
//!
//! ```text
//!   add_member (as a learner) ──▶ the new member starts, catches up ──▶ promote ──▶ voter
//! ```
//!
//! A member is added before it starts (etcd's runtime reconfiguration): the
//! cluster learns its peer URL, and the new member then starts with
//! `--initial-cluster-state=existing` and the full member list. Until it
//! has started, it has no name; [`add_member`] names it in the list it
//! returns so the caller can build `--initial-cluster`.
//!
//! It is added as a *learner*: it receives the log but does not vote, so a
//! member that was added and never starts (or is still catching up) does
//! not cost the cluster its quorum, as a voter would (a one-member cluster
//! with an unstarted second voter has no quorum). [`promote`] makes it a
//! voter once etcd deems it in sync ("can only promote a learner member
//! which is in sync with leader" until then: [`MemberError::NotReady`]).
//! One member joins at a time.
//!
//! Adding is idempotent for one peer URL: a server that retries its join
//! (its etcd did not start the first time) gets the same answer instead of
//! etcd's "Peer URLs already exists".

use std::time::Duration;

use etcd_client::Client;
use tokio::time::timeout;

use crate::StoreError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One etcd member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster already has `max` voting members.
    #[error(
        "the control plane already has {max} servers ({}); a further machine joins as a node \
         (`sheaf agent --server URL --token TOKEN`)",
        members.join(", ")
    )]
    Full { max: usize, members: Vec<String> },
    /// Another member was added and has not started yet: adding a second
    /// one now could leave the cluster without a quorum.
    #[error(
        "another server ({peer_url}) is joining the control plane and has not started or caught up yet; retry in \
         a minute"
    )]
    Busy { peer_url: String },
    /// The learner has not caught up with the leader yet; retry.
    #[error("this server's etcd member is still catching up with the others: {0}")]
    NotReady(String),
    /// No member has this peer URL.
    #[error("no etcd member is at {peer_url}: join first")]
    NotMember { peer_url: String },
    /// A started member already has this name.
    #[error("a server named {name:?} is already in the control plane (at {peer_url}); pick another --node-name")]
    NameTaken { name: String, peer_url: String },
}

fn member_of(m: &etcd_client::Member) -> Member {
    Member {
        id: m.id(),
        name: m.name().to_string(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

async fn client(endpoints: &[String]) -> Result<Client, StoreError> {
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(TIMEOUT).with_timeout(TIMEOUT);
    match timeout(TIMEOUT, Client::connect(endpoints, Some(opts))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(StoreError::Unavailable { message: format!("cannot reach etcd: {e}") }),
        Err(_) => Err(StoreError::Unavailable { message: "connecting to etcd timed out".into() }),
    }
}

async fn list_with(c: &mut Client) -> Result<Vec<Member>, StoreError> {
    match timeout(TIMEOUT, c.member_list()).await {
        Ok(Ok(r)) => Ok(r.members().iter().map(member_of).collect()),
        Ok(Err(e)) => Err(StoreError::Unavailable { message: format!("etcd member list failed: {e}") }),
        Err(_) => Err(StoreError::Unavailable { message: "etcd member list timed out".into() }),
    }
}

/// The members of the cluster `endpoints` belong to.
pub async fn list(endpoints: &[String]) -> Result<Vec<Member>, StoreError> {
    list_with(&mut client(endpoints).await?).await
}

/// Adds a member `name` at `peer_url` as a learner, unless the cluster has
/// `max` members already or another one is still joining; returns every
/// member, the new one named.
pub async fn add_member(
    endpoints: &[String],
    name: &str,
    peer_url: &str,
    max: usize,
) -> Result<Vec<Member>, MemberError> {
    let mut c = client(endpoints).await?;
    let members = list_with(&mut c).await?;
    let named = |mut ms: Vec<Member>| {
        for m in &mut ms {
            if m.name.is_empty() && m.peer_urls.iter().any(|u| u == peer_url) {
                m.name = name.to_string();
            }
        }
        ms
    };
    if let Some(m) = members.iter().find(|m| m.peer_urls.iter().any(|u| u == peer_url)) {
        if m.name.is_empty() || m.name == name {
            // A retry of the same join (or a restart of a member that is
            // already in): the same answer.
            return Ok(named(members));
        }
    }
    if let Some(m) = members.iter().find(|m| m.name == name) {
        return Err(MemberError::NameTaken { name: name.into(), peer_url: m.peer_urls.join(",") });
    }
    if members.len() >= max {
        return Err(MemberError::Full { max, members: members.iter().map(|m| m.name.clone()).collect() });
    }
    if let Some(m) = members.iter().find(|m| m.name.is_empty() || m.is_learner) {
        return Err(MemberError::Busy { peer_url: m.peer_urls.join(",") });
    }
    let opts = etcd_client::MemberAddOptions::new().with_is_learner();
    match timeout(TIMEOUT, c.member_add([peer_url], Some(opts))).await {
        Ok(Ok(r)) => Ok(named(r.member_list().iter().map(member_of).collect())),
        Ok(Err(e)) => Err(StoreError::Unavailable { message: format!("etcd member add failed: {e}") }.into()),
        Err(_) => Err(StoreError::Unavailable { message: "etcd member add timed out".into() }.into()),
    }
}

/// Makes the learner at `peer_url` a voting member; Ok when it is one
/// already. [`MemberError::NotReady`] while it is still catching up.
pub async fn promote(endpoints: &[String], peer_url: &str) -> Result<(), MemberError> {
    let mut c = client(endpoints).await?;
    let members = list_with(&mut c).await?;
    let Some(m) = members.iter().find(|m| m.peer_urls.iter().any(|u| u == peer_url)) else {
        return Err(MemberError::NotMember { peer_url: peer_url.into() });
    };
    if !m.is_learner {
        return Ok(());
    }
    match timeout(TIMEOUT, c.member_promote(m.id)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let message = e.to_string();
            if message.contains("in sync") || message.contains("not ready") || message.contains("not started") {
                Err(MemberError::NotReady(message))
            } else {
                Err(StoreError::Unavailable { message: format!("etcd member promote failed: {message}") }.into())
            }
        }
        Err(_) => Err(StoreError::Unavailable { message: "etcd member promote timed out".into() }.into()),
    }
}
