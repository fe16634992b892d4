//! The rtnetlink requests [`RtNetlink`](crate::RtNetlink) sends, built
//! without any I/O so that tests can check every attribute.
//!
//! Two layers: `*_link` / `*_message` functions build the route-netlink
//! payload (a [`LinkMessage`], [`AddressMessage`] or [`NeighbourMessage`]),
//! and `*_request` functions wrap one in a [`NetlinkMessage`] with the
//! header flags that operation needs (`NLM_F_CREATE | NLM_F_EXCL` to create a
//! link, `NLM_F_CREATE | NLM_F_APPEND` to append an FDB entry, ...). Values
//! the kernel would refuse with a bare EINVAL (VLAN id 0 or 4095, a VNI above
//! 24 bits, a prefix above 32) are rejected here with a [`NetError`] first.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use rtnetlink::packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan, LinkVxlan};

use crate::NetError;

/// The highest 802.1Q VLAN id a device can carry (4095 is reserved).
pub const MAX_VLAN_ID: u16 = 4094;
/// VXLAN network identifiers are 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Flags for creating a link: fail with EEXIST rather than change one.
pub const CREATE_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags for changing an existing link, deleting, or deleting an FDB entry.
pub const CHANGE_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// Flags for adding an address so that adding it again is not an error.
pub const ADDRESS_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
/// Flags for `bridge fdb append`: several entries for one MAC (all-zero MAC
/// = flood to every listed VTEP); appending an existing entry is a no-op.
pub const FDB_APPEND_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
/// Flags for a dump (list) request.
pub const DUMP_FLAGS: u16 = NLM_F_REQUEST | NLM_F_DUMP;
/// Flags for getting one object.
pub const GET_FLAGS: u16 = NLM_F_REQUEST;

/// A bridge named `name`, created down, with the kernel's defaults.
pub fn bridge_link(name: &str) -> LinkMessage {
    // LinkBridge::new would also set IFF_UP; every device here is created
    // down and brought up explicitly once it is wired.
    // No bridge options are sent: IFLA_BR_VLAN_FILTERING, for one, fails with
    // EOPNOTSUPP on kernels built without bridge VLAN filtering.
    LinkMessageBuilder::<LinkBridge>::new(name).build()
}

/// A VXLAN device `name` with VNI `vni`, sending from `local` to UDP `port`,
/// bound to the underlay device `underlay_index` if given.
pub fn vxlan_link(
    name: &str,
    vni: u32,
    local: Ipv4Addr,
    port: u16,
    underlay_index: Option<u32>,
    learning: bool,
) -> Result<LinkMessage, NetError> {
    if vni > MAX_VNI {
        return Err(NetError::InvalidVni { device: name.to_string(), vni });
    }
    let mut builder = LinkVxlan::new(name, vni).local(local).port(port).learning(learning);
    if let Some(index) = underlay_index {
        builder = builder.dev(index);
    }
    Ok(builder.build())
}

/// An 802.1Q device `name` on the device with index `parent_index`,
/// tagging with VLAN `id` (1..=4094).
pub fn vlan_link(name: &str, parent_index: u32, id: u16) -> Result<LinkMessage, NetError> {
    if !(1..=MAX_VLAN_ID).contains(&id) {
        return Err(NetError::InvalidVlanId { device: name.to_string(), id });
    }
    Ok(LinkVlan::new(name, parent_index, id).build())
}

/// A veth pair `name` / `peer`.
pub fn veth_link(name: &str, peer: &str) -> LinkMessage {
    LinkVeth::new(name, peer).build()
}

/// Makes device `index` a port of `master_index`, or of none (IFLA_MASTER 0).
pub fn set_master_link(index: u32, master_index: Option<u32>) -> LinkMessage {
    let builder = LinkUnspec::new_with_index(index);
    match master_index {
        Some(master) => builder.controller(master),
        None => builder.nocontroller(),
    }
    .build()
}

/// Sets the MTU of device `index`.
pub fn set_mtu_link(index: u32, mtu: u32) -> LinkMessage {
    LinkUnspec::new_with_index(index).mtu(mtu).build()
}

/// Sets or clears IFF_UP on device `index` (and only that flag).
pub fn set_up_link(index: u32, up: bool) -> LinkMessage {
    let builder = LinkUnspec::new_with_index(index);
    if up { builder.up() } else { builder.down() }.build()
}

/// Moves device `index` into the network namespace open as `netns_fd`.
pub fn move_to_netns_link(index: u32, netns_fd: RawFd) -> LinkMessage {
    LinkUnspec::new_with_index(index).setns_by_fd(netns_fd).build()
}

/// Identifies device `index` for a delete.
pub fn delete_link(index: u32) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message
}

/// Asks for the device called `name`.
pub fn get_link_by_name(name: &str) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.to_string()));
    message
}

/// `addr/prefix` on device `index`, as `ip address add` sends it.
pub fn address_message(index: u32, addr: Ipv4Addr, prefix: u8, device: &str) -> Result<AddressMessage, NetError> {
    if prefix > 32 {
        return Err(NetError::InvalidPrefix { device: device.to_string(), prefix });
    }
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = prefix;
    message.header.index = index;
    message.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
    message.attributes.push(AddressAttribute::Address(IpAddr::V4(addr)));
    if prefix < 31 {
        let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        let broadcast = Ipv4Addr::from(u32::from(addr) | host_bits);
        message.attributes.push(AddressAttribute::Broadcast(broadcast));
    }
    Ok(message)
}

/// The FDB entry `mac -> dst` of the device itself (NTF_SELF), permanent
/// (NUD_PERMANENT): what `bridge fdb append MAC dev DEV dst DST` sends.
pub fn fdb_message(ifindex: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = ifindex;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.header.kind = RouteType::Unspec;
    message.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    message
}

/// RTM_NEWLINK that creates a device (the message from `bridge_link`,
/// `vxlan_link`, `vlan_link` or `veth_link`).
pub fn create_link_request(link: LinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    with_flags(RouteNetlinkMessage::NewLink(link), CREATE_FLAGS)
}

/// RTM_SETLINK that changes an existing device.
pub fn change_link_request(link: LinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    with_flags(RouteNetlinkMessage::SetLink(link), CHANGE_FLAGS)
}

/// RTM_DELLINK for device `index`.
pub fn delete_link_request(index: u32) -> NetlinkMessage<RouteNetlinkMessage> {
    with_flags(RouteNetlinkMessage::DelLink(delete_link(index)), CHANGE_FLAGS)
}

/// RTM_GETLINK for the device called `name`.
pub fn get_link_request(name: &str) -> NetlinkMessage<RouteNetlinkMessage> {
    with_flags(RouteNetlinkMessage::GetLink(get_link_by_name(name)), GET_FLAGS)
}

/// RTM_GETLINK dump of every device.
pub fn dump_links_request() -> NetlinkMessage<RouteNetlinkMessage> {
    with_flags(RouteNetlinkMessage::GetLink(LinkMessage::default()), DUMP_FLAGS)
}

/// RTM_NEWADDR that adds (or re-adds) an address.
pub fn add_address_request(address: AddressMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    with_flags(RouteNetlinkMessage::NewAddress(address), ADDRESS_FLAGS)
}

/// RTM_NEWNEIGH with NLM_F_APPEND for an FDB entry.
pub fn fdb_append_request(ifindex: u32, mac: [u8; 6], dst: Ipv4Addr) -> NetlinkMessage<RouteNetlinkMessage> {
    with_flags(RouteNetlinkMessage::NewNeighbour(fdb_message(ifindex, mac, dst)), FDB_APPEND_FLAGS)
}

/// RTM_DELNEIGH for an FDB entry.
pub fn fdb_delete_request(ifindex: u32, mac: [u8; 6], dst: Ipv4Addr) -> NetlinkMessage<RouteNetlinkMessage> {
    with_flags(RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, mac, dst)), CHANGE_FLAGS)
}

/// RTM_GETNEIGH dump of the bridge-family neighbour table (every FDB).
pub fn dump_fdb_request() -> NetlinkMessage<RouteNetlinkMessage> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    with_flags(RouteNetlinkMessage::GetNeighbour(message), DUMP_FLAGS)
}

fn with_flags(payload: RouteNetlinkMessage, flags: u16) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut message = NetlinkMessage::from(payload);
    message.header.flags = flags;
    message
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, InfoVlan, InfoVxlan, LinkFlags, LinkInfo};

    use super::*;

    fn link_infos(message: &LinkMessage) -> &[LinkInfo] {
        message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::LinkInfo(infos) => Some(infos.as_slice()),
                _ => None,
            })
            .expect("IFLA_LINKINFO present")
    }

    fn kind(message: &LinkMessage) -> &InfoKind {
        link_infos(message)
            .iter()
            .find_map(|info| match info {
                LinkInfo::Kind(kind) => Some(kind),
                _ => None,
            })
            .expect("IFLA_INFO_KIND present")
    }

    fn info_data(message: &LinkMessage) -> &InfoData {
        link_infos(message)
            .iter()
            .find_map(|info| match info {
                LinkInfo::Data(data) => Some(data),
                _ => None,
            })
            .expect("IFLA_INFO_DATA present")
    }

    fn has(message: &LinkMessage, wanted: &LinkAttribute) -> bool {
        message.attributes.iter().any(|attribute| attribute == wanted)
    }

    fn payload(request: &NetlinkMessage<RouteNetlinkMessage>) -> &RouteNetlinkMessage {
        match &request.payload {
            NetlinkPayload::InnerMessage(inner) => inner,
            other => panic!("not a route message: {other:?}"),
        }
    }

    #[test]
    fn vlan_link_has_kind_parent_and_id() {
        let message = vlan_link("shv100", 7, 100).expect("valid vlan");
        assert_eq!(kind(&message), &InfoKind::Vlan);
        assert_eq!(kind(&message).to_string(), "vlan");
        assert!(has(&message, &LinkAttribute::IfName("shv100".into())));
        assert!(has(&message, &LinkAttribute::Link(7)), "IFLA_LINK = parent index");
        match info_data(&message) {
            InfoData::Vlan(infos) => assert_eq!(infos, &vec![InfoVlan::Id(100)]),
            other => panic!("not vlan data: {other:?}"),
        }
        assert!(!message.header.flags.contains(LinkFlags::Up), "created down");
    }

    #[test]
    fn vlan_ids_outside_1_to_4094_are_rejected() {
        for id in [0, 4095, 4096, u16::MAX] {
            match vlan_link("shv", 1, id) {
                Err(NetError::InvalidVlanId { id: rejected, .. }) => assert_eq!(rejected, id),
                other => panic!("vlan id {id}: {other:?}"),
            }
        }
        for id in [1, 2, 4093, 4094] {
            assert!(vlan_link("shv", 1, id).is_ok(), "vlan id {id}");
        }
    }

    #[test]
    fn vxlan_link_has_vni_local_port_learning_and_underlay() {
        let local = Ipv4Addr::new(10, 0, 0, 1);
        let message = vxlan_link("shx4242", 4242, local, 4789, Some(3), false).expect("valid vxlan");
        assert_eq!(kind(&message), &InfoKind::Vxlan);
        assert!(has(&message, &LinkAttribute::IfName("shx4242".into())));
        let InfoData::Vxlan(infos) = info_data(&message) else { panic!("not vxlan data") };
        assert!(infos.contains(&InfoVxlan::Id(4242)));
        assert!(infos.contains(&InfoVxlan::Local(local)));
        assert!(infos.contains(&InfoVxlan::Port(4789)));
        assert!(infos.contains(&InfoVxlan::Learning(false)));
        assert!(infos.contains(&InfoVxlan::Link(3)), "IFLA_VXLAN_LINK = underlay index");
        assert!(!infos.iter().any(|info| matches!(info, InfoVxlan::Group(_))), "no multicast group");
    }

    #[test]
    fn vxlan_link_without_underlay_and_with_learning() {
        let message = vxlan_link("vx", 1, Ipv4Addr::LOCALHOST, 8472, None, true).expect("valid vxlan");
        let InfoData::Vxlan(infos) = info_data(&message) else { panic!("not vxlan data") };
        assert!(infos.contains(&InfoVxlan::Learning(true)));
        assert!(infos.contains(&InfoVxlan::Port(8472)));
        assert!(!infos.iter().any(|info| matches!(info, InfoVxlan::Link(_))));
    }

    #[test]
    fn vxlan_vni_must_fit_24_bits() {
        assert!(vxlan_link("vx", MAX_VNI, Ipv4Addr::LOCALHOST, 4789, None, false).is_ok());
        assert!(matches!(
            vxlan_link("vx", MAX_VNI + 1, Ipv4Addr::LOCALHOST, 4789, None, false),
            Err(NetError::InvalidVni { vni, .. }) if vni == 1 << 24
        ));
    }

    #[test]
    fn bridge_link_is_a_down_bridge() {
        let message = bridge_link("shbr1");
        assert_eq!(kind(&message), &InfoKind::Bridge);
        assert_eq!(kind(&message).to_string(), "bridge");
        assert!(has(&message, &LinkAttribute::IfName("shbr1".into())));
        assert!(!message.header.flags.contains(LinkFlags::Up));
        assert!(!message.header.change_mask.contains(LinkFlags::Up));
    }

    #[test]
    fn veth_link_names_its_peer() {
        let message = veth_link("sha", "shb");
        assert_eq!(kind(&message), &InfoKind::Veth);
        let InfoData::Veth(InfoVeth::Peer(peer)) = info_data(&message) else { panic!("no veth peer") };
        assert!(has(peer, &LinkAttribute::IfName("shb".into())));
    }

    #[test]
    fn change_messages_address_the_device_by_index() {
        let master = set_master_link(5, Some(2));
        assert_eq!(master.header.index, 5);
        assert!(has(&master, &LinkAttribute::Controller(2)));
        assert!(has(&set_master_link(5, None), &LinkAttribute::Controller(0)), "IFLA_MASTER 0 releases");

        let mtu = set_mtu_link(5, 1450);
        assert_eq!(mtu.header.index, 5);
        assert!(has(&mtu, &LinkAttribute::Mtu(1450)));

        let up = set_up_link(5, true);
        assert!(up.header.flags.contains(LinkFlags::Up));
        assert_eq!(up.header.change_mask, LinkFlags::Up, "only IFF_UP is changed");
        let down = set_up_link(5, false);
        assert!(!down.header.flags.contains(LinkFlags::Up));
        assert_eq!(down.header.change_mask, LinkFlags::Up);

        let moved = move_to_netns_link(5, 9);
        assert_eq!(moved.header.index, 5);
        assert!(has(&moved, &LinkAttribute::NetNsFd(9)));
    }

    #[test]
    fn fdb_message_is_a_permanent_self_entry_with_dst_and_lladdr() {
        let dst = Ipv4Addr::new(192, 168, 1, 20);
        let request = fdb_append_request(4, [0; 6], dst);
        assert_eq!(request.header.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND);
        assert_eq!(request.header.flags & NLM_F_EXCL, 0, "append must not be exclusive");
        let RouteNetlinkMessage::NewNeighbour(message) = payload(&request) else { panic!("not RTM_NEWNEIGH") };
        assert_eq!(message.header.family, AddressFamily::Bridge);
        assert_eq!(message.header.ifindex, 4);
        assert_eq!(message.header.state, NeighbourState::Permanent, "NUD_PERMANENT");
        assert_eq!(message.header.flags, NeighbourFlags::Own, "NTF_SELF");
        assert!(message.attributes.contains(&NeighbourAttribute::LinkLayerAddress(vec![0; 6])), "NDA_LLADDR");
        assert!(message.attributes.contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet(dst))), "NDA_DST");

        let mac = [0x02, 0, 0, 0, 0, 0x2a];
        let delete = fdb_delete_request(4, mac, dst);
        assert_eq!(delete.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let RouteNetlinkMessage::DelNeighbour(message) = payload(&delete) else { panic!("not RTM_DELNEIGH") };
        assert!(message.attributes.contains(&NeighbourAttribute::LinkLayerAddress(mac.to_vec())));
        assert_eq!(message.header.flags, NeighbourFlags::Own);
    }

    #[test]
    fn requests_carry_the_right_flags_and_types() {
        let create = create_link_request(bridge_link("b"));
        assert_eq!(create.header.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        assert!(matches!(payload(&create), RouteNetlinkMessage::NewLink(_)));

        let change = change_link_request(set_mtu_link(1, 1400));
        assert_eq!(change.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert!(matches!(payload(&change), RouteNetlinkMessage::SetLink(_)));

        let delete = delete_link_request(3);
        assert!(matches!(payload(&delete), RouteNetlinkMessage::DelLink(m) if m.header.index == 3));

        let dump = dump_links_request();
        assert_eq!(dump.header.flags, NLM_F_REQUEST | NLM_F_DUMP);

        let get = get_link_request("eth0");
        assert_eq!(get.header.flags, NLM_F_REQUEST);
        assert!(matches!(payload(&get), RouteNetlinkMessage::GetLink(m)
            if m.attributes.contains(&LinkAttribute::IfName("eth0".into()))));

        let fdb_dump = dump_fdb_request();
        assert!(matches!(payload(&fdb_dump), RouteNetlinkMessage::GetNeighbour(m)
            if m.header.family == AddressFamily::Bridge));
    }

    #[test]
    fn address_message_has_local_address_and_broadcast() {
        let addr = Ipv4Addr::new(10, 1, 2, 3);
        let message = address_message(6, addr, 24, "vethx").expect("valid address");
        assert_eq!(message.header.index, 6);
        assert_eq!(message.header.prefix_len, 24);
        assert_eq!(message.header.family, AddressFamily::Inet);
        assert!(message.attributes.contains(&AddressAttribute::Local(IpAddr::V4(addr))));
        assert!(message.attributes.contains(&AddressAttribute::Address(IpAddr::V4(addr))));
        assert!(message.attributes.contains(&AddressAttribute::Broadcast(Ipv4Addr::new(10, 1, 2, 255))));

        let host = address_message(6, addr, 32, "vethx").expect("valid /32");
        assert!(!host.attributes.iter().any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        let all = address_message(6, addr, 0, "vethx").expect("valid /0");
        assert!(all.attributes.contains(&AddressAttribute::Broadcast(Ipv4Addr::BROADCAST)));
        assert!(matches!(address_message(6, addr, 33, "vethx"), Err(NetError::InvalidPrefix { prefix: 33, .. })));

        let request = add_address_request(message);
        assert_eq!(request.header.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
    }
}
