//! [`Netlink`] on the real kernel, over rtnetlink.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use tokio::task::JoinHandle;

use crate::error::{EEXIST, ENODEV, ENOENT, EOPNOTSUPP};
use crate::{messages, validate_name, Link, LinkSpec, NetError, Netlink};

/// The kernel's netlink, through one rtnetlink socket in the network
/// namespace of the thread that called [`RtNetlink::new`]. The socket's
/// connection task runs on that tokio runtime and stops when this is dropped.
#[derive(Debug)]
pub struct RtNetlink {
    handle: rtnetlink::Handle,
    connection: JoinHandle<()>,
}

impl RtNetlink {
    /// Opens the socket and spawns its connection on the current tokio runtime.
    pub fn new() -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let (connection, handle, _notifications) =
            rtnetlink::new_connection().map_err(|source| NetError::Connect { source })?;
        let connection = runtime.spawn(connection);
        Ok(Self { handle, connection })
    }

    /// Sends `request` and waits for the kernel's acknowledgement.
    async fn execute(
        &self,
        request: NetlinkMessage<RouteNetlinkMessage>,
        operation: &'static str,
        device: &str,
    ) -> Result<(), NetError> {
        self.exchange(request, operation, device).await.map(drop)
    }

    /// Sends `request` and collects the route messages of the answer.
    async fn exchange(
        &self,
        request: NetlinkMessage<RouteNetlinkMessage>,
        operation: &'static str,
        device: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request).map_err(|error| NetError::Protocol {
            operation,
            device: device.to_string(),
            detail: error.to_string(),
        })?;
        let mut answers = Vec::new();
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(message) => answers.push(message),
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(NetError::kernel(operation, device, error.raw_code().abs()));
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(NetError::Protocol {
                        operation,
                        device: device.to_string(),
                        detail: "the socket overran; the answer is incomplete".to_string(),
                    });
                }
                // Acknowledgements, NLMSG_DONE, NLMSG_NOOP.
                _ => {}
            }
        }
        Ok(answers)
    }

    /// The index of `name`, or [`NetError::NoSuchDevice`] naming `operation`.
    async fn index_of(&self, name: &str, operation: &'static str) -> Result<u32, NetError> {
        match self.link(name).await? {
            Some(link) => Ok(link.index),
            None => Err(NetError::no_such_device(operation, name)),
        }
    }
}

impl Drop for RtNetlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

#[async_trait::async_trait]
impl Netlink for RtNetlink {
    async fn links(&self) -> Result<Vec<Link>, NetError> {
        let answers = self.exchange(messages::dump_links_request(), "list links", "*").await?;
        let mut links: Vec<Link> = answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(message) => Some(link_from_message(&message)),
                _ => None,
            })
            .collect();
        links.sort_by_key(|link| link.index);
        Ok(links)
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NetError> {
        validate_name(name)?;
        match self.exchange(messages::get_link_request(name), "get link", name).await {
            Ok(answers) => Ok(answers.into_iter().find_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(message) => Some(link_from_message(&message)),
                _ => None,
            })),
            Err(error) if error.errno() == Some(ENODEV) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn create(&self, name: &str, spec: &LinkSpec) -> Result<(), NetError> {
        const OPERATION: &str = "create";
        validate_name(name)?;
        if let Some(existing) = self.link(name).await? {
            return same_kind(existing, spec);
        }
        let message = match spec {
            LinkSpec::Bridge => messages::bridge_link(name),
            LinkSpec::Vxlan { vni, local, port, underlay, learning } => {
                let underlay_index = match underlay {
                    Some(underlay) => Some(self.index_of(underlay, OPERATION).await?),
                    None => None,
                };
                messages::vxlan_link(name, *vni, *local, *port, underlay_index, *learning)?
            }
            LinkSpec::Vlan { parent, id } => {
                // Check the id before asking the kernel about the parent.
                messages::vlan_link(name, 0, *id)?;
                messages::vlan_link(name, self.index_of(parent, OPERATION).await?, *id)?
            }
            LinkSpec::Veth { peer } => {
                validate_name(peer)?;
                messages::veth_link(name, peer)
            }
        };
        match self.execute(messages::create_link_request(message), OPERATION, name).await {
            Ok(()) => Ok(()),
            Err(error) if error.errno() == Some(EOPNOTSUPP) => {
                Err(NetError::KindUnsupported { operation: OPERATION, device: name.to_string(), kind: spec.kind() })
            }
            // Someone made it between the lookup and the request.
            Err(error) if error.errno() == Some(EEXIST) => match self.link(name).await? {
                Some(existing) => same_kind(existing, spec),
                None => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    async fn set_master(&self, name: &str, master: Option<&str>) -> Result<(), NetError> {
        const OPERATION: &str = "set master of";
        let index = self.index_of(name, OPERATION).await?;
        let master_index = match master {
            Some(master) => Some(self.index_of(master, OPERATION).await?),
            None => None,
        };
        self.execute(messages::change_link_request(messages::set_master_link(index, master_index)), OPERATION, name)
            .await
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        const OPERATION: &str = "set mtu of";
        let index = self.index_of(name, OPERATION).await?;
        self.execute(messages::change_link_request(messages::set_mtu_link(index, mtu)), OPERATION, name).await
    }

    async fn set_up(&self, name: &str, up: bool) -> Result<(), NetError> {
        let operation = if up { "set up" } else { "set down" };
        let index = self.index_of(name, operation).await?;
        self.execute(messages::change_link_request(messages::set_up_link(index, up)), operation, name).await
    }

    async fn delete(&self, name: &str) -> Result<(), NetError> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        match self.execute(messages::delete_link_request(link.index), "delete", name).await {
            Err(error) if error.errno() == Some(ENODEV) => Ok(()),
            result => result,
        }
    }

    async fn move_to_netns(&self, name: &str, netns_path: &Path) -> Result<(), NetError> {
        const OPERATION: &str = "move to netns";
        let index = self.index_of(name, OPERATION).await?;
        let netns = std::fs::File::open(netns_path).map_err(|source| NetError::Netns {
            device: name.to_string(),
            path: netns_path.to_path_buf(),
            source,
        })?;
        let request = messages::change_link_request(messages::move_to_netns_link(index, netns.as_raw_fd()));
        // `netns` stays open until the kernel has answered.
        let result = self.execute(request, OPERATION, name).await;
        drop(netns);
        result
    }

    async fn add_address(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        const OPERATION: &str = "add address to";
        let index = self.index_of(name, OPERATION).await?;
        let message = messages::address_message(index, addr, prefix, name)?;
        self.execute(messages::add_address_request(message), OPERATION, name).await
    }

    async fn fdb(&self, dev: &str) -> Result<Vec<([u8; 6], Option<Ipv4Addr>)>, NetError> {
        const OPERATION: &str = "list fdb of";
        let index = self.index_of(dev, OPERATION).await?;
        let answers = self.exchange(messages::dump_fdb_request(), OPERATION, dev).await?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewNeighbour(message) => fdb_entry(&message, index),
                _ => None,
            })
            .collect())
    }

    async fn fdb_append(&self, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError> {
        const OPERATION: &str = "append fdb entry to";
        let index = self.index_of(dev, OPERATION).await?;
        self.execute(messages::fdb_append_request(index, mac, dst), OPERATION, dev).await
    }

    async fn fdb_delete(&self, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError> {
        const OPERATION: &str = "delete fdb entry of";
        let index = self.index_of(dev, OPERATION).await?;
        match self.execute(messages::fdb_delete_request(index, mac, dst), OPERATION, dev).await {
            Err(error) if error.errno() == Some(ENOENT) => Ok(()),
            result => result,
        }
    }
}

fn same_kind(existing: Link, spec: &LinkSpec) -> Result<(), NetError> {
    if existing.kind.as_deref() == Some(spec.kind()) {
        Ok(())
    } else {
        Err(NetError::WrongKind {
            device: existing.name,
            wanted: spec.kind(),
            found: existing.kind.unwrap_or_else(|| "kind-less".to_string()),
        })
    }
}

/// Reads a [`Link`] out of an RTM_NEWLINK answer.
pub(crate) fn link_from_message(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        kind: None,
        master: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        mac: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(master) if *master != 0 => link.master = Some(*master),
            LinkAttribute::Address(address) => link.mac = <[u8; 6]>::try_from(address.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// The (mac, dst) of an FDB answer if it is a NTF_SELF entry of `ifindex`.
fn fdb_entry(message: &NeighbourMessage, ifindex: u32) -> Option<([u8; 6], Option<Ipv4Addr>)> {
    if message.header.ifindex != ifindex || !message.header.flags.contains(NeighbourFlags::Own) {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::LinkLayerAddress(address) => mac = <[u8; 6]>::try_from(address.as_slice()).ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => dst = Some(*address),
            // Bridge-family answers carry NDA_DST as raw bytes (the parser
            // only decodes it for AF_INET/AF_INET6 headers). IPv6 VTEPs,
            // which Sheaf does not use, read as no destination.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                dst = <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from);
            }
            _ => {}
        }
    }
    mac.map(|mac| (mac, dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages;

    #[test]
    fn link_from_message_reads_the_fields_the_kernel_reports() {
        let mut message = messages::vxlan_link("vx0", 5, Ipv4Addr::LOCALHOST, 4789, None, false).expect("vxlan");
        message.header.index = 12;
        message.header.flags |= LinkFlags::Up;
        message.attributes.push(LinkAttribute::Mtu(1450));
        message.attributes.push(LinkAttribute::Controller(3));
        message.attributes.push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]));
        let link = link_from_message(&message);
        assert_eq!(
            link,
            Link {
                index: 12,
                name: "vx0".into(),
                kind: Some("vxlan".into()),
                master: Some(3),
                mtu: 1450,
                up: true,
                mac: Some([2, 0, 0, 0, 0, 1]),
            }
        );
    }

    #[test]
    fn fdb_entry_keeps_only_self_entries_of_the_device() {
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let message = messages::fdb_message(4, [0; 6], dst);
        assert_eq!(fdb_entry(&message, 4), Some(([0; 6], Some(dst))));
        assert_eq!(fdb_entry(&message, 5), None);
        let mut learned_by_bridge = message.clone();
        learned_by_bridge.header.flags = NeighbourFlags::Controller;
        assert_eq!(fdb_entry(&learned_by_bridge, 4), None);
    }

    #[test]
    fn fdb_entry_reads_a_raw_bridge_family_destination() {
        let mut message = messages::fdb_message(4, [0; 6], Ipv4Addr::UNSPECIFIED);
        message.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 7]),
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![10, 0, 0, 9])),
        ];
        assert_eq!(fdb_entry(&message, 4), Some(([2, 0, 0, 0, 0, 7], Some(Ipv4Addr::new(10, 0, 0, 9)))));
        message.attributes.pop();
        assert_eq!(fdb_entry(&message, 4), Some(([2, 0, 0, 0, 0, 7], None)), "no NDA_DST");
    }
}
