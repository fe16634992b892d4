//! The vhost-user connection, set up the way QEMU's `vhost-user-blk`
//! device does it: features and protocol features, the config space,
//! guest memory in a memfd shared with the backend (`SET_MEM_TABLE`), and
//! the queues (size, addresses, kick and call eventfds, enable).

use std::fs::File;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::ring::{ring_bytes, DriverRing, Mem};

/// virtio-blk counts in 512-byte sectors whatever the block size.
pub(crate) const SECTOR: u64 = 512;
/// The request header: type, reserved, sector.
pub(crate) const HEADER: u32 = 16;
/// The largest queue the client sets up (what the engine accepts).
const MAX_QUEUE_SIZE: usize = 1024;
/// The smallest: QEMU's default `queue-size`.
const MIN_QUEUE_SIZE: usize = 128;
const PAGE: u64 = 4096;

/// Where the backend listens and how to drive it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The vhost-user-blk socket (`sheaf blk engine --vhost-user`).
    pub socket: PathBuf,
    /// Request queues to set up (at most what the backend offers).
    pub queues: u16,
    /// Negotiate event index (notification suppression, as Linux guests do).
    pub event_idx: bool,
}

/// What the backend offered and what was agreed.
#[derive(Clone, Debug)]
pub struct Info {
    /// Disk size in bytes (config space `capacity` × 512).
    pub capacity: u64,
    /// Queues the backend offers.
    pub queues_offered: u64,
    pub event_idx: bool,
    pub read_only: bool,
    pub flush: bool,
    /// Largest data segment (`size_max`), if the backend has a limit.
    pub size_max: Option<u32>,
    /// Most data segments per request (`seg_max`).
    pub seg_max: Option<u32>,
    /// Logical block size (`blk_size`).
    pub blk_size: u32,
}

/// The guest buffers of one request slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) header: GuestAddress,
    pub(crate) status: GuestAddress,
    pub(crate) data: GuestAddress,
}

/// One queue as the driver sees it.
pub(crate) struct Queue {
    pub(crate) index: usize,
    pub(crate) ring: DriverRing,
    pub(crate) kick: EventFd,
    pub(crate) call: EventFd,
    pub(crate) slots: Vec<Slot>,
    /// Descriptors a request takes: header, data segments, status.
    pub(crate) descs_per_request: u16,
    /// The data segments' length (the last one may be shorter).
    pub(crate) segment: u32,
}

/// A connected, set-up vhost-user-blk device.
pub struct Device {
    frontend: Frontend,
    pub(crate) mem: Mem,
    pub info: Info,
    pub(crate) queues: Vec<Queue>,
    /// The request size the slots were laid out for.
    pub(crate) bs: u32,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn le_u32(c: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]])
}

/// Requests `depth` spread over `queues`: the first queues get one more.
pub(crate) fn spread(depth: usize, queues: usize) -> Vec<usize> {
    (0..queues).map(|q| depth / queues + usize::from(q < depth % queues)).collect()
}

impl Device {
    /// Connects to `target` and sets up its queues for `iodepth` requests
    /// of `bs` bytes in flight.
    pub fn connect(target: &Target, iodepth: usize, bs: u32) -> anyhow::Result<Device> {
        let queues = usize::from(target.queues);
        ensure!(queues >= 1, "at least one queue is needed");
        ensure!(iodepth >= queues, "iodepth {iodepth} is less than the {queues} queues: every queue needs a request");
        ensure!(bs > 0 && u64::from(bs).is_multiple_of(SECTOR), "block size {bs} is not a multiple of 512");
        let socket = &target.socket;
        let mut f = Frontend::connect(socket, queues as u64)
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", socket.display()))?;
        let p = |what: &'static str| move |e: vhost::Error| anyhow::anyhow!("vhost-user {what}: {e}");
        f.set_owner().map_err(p("SET_OWNER"))?;

        // Features.
        let bit = |b: u32| 1u64 << b;
        let offered = f.get_features().map_err(p("GET_FEATURES"))?;
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        ensure!(offered & bit(VIRTIO_F_VERSION_1) != 0, "the backend does not offer VIRTIO_F_VERSION_1");
        ensure!(offered & protocol_bit != 0, "the backend does not offer vhost-user protocol features");
        let mut wanted = bit(VIRTIO_F_VERSION_1) | protocol_bit;
        for b in [
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_TOPOLOGY,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_RO,
        ] {
            wanted |= offered & bit(b);
        }
        if target.event_idx {
            wanted |= offered & bit(VIRTIO_RING_F_EVENT_IDX);
        }
        let has = |b: u32| wanted & bit(b) != 0;

        let proto_offered = f.get_protocol_features().map_err(p("GET_PROTOCOL_FEATURES"))?;
        ensure!(
            proto_offered.contains(VhostUserProtocolFeatures::CONFIG),
            "the backend has no config space (VHOST_USER_PROTOCOL_F_CONFIG)"
        );
        let proto = proto_offered
            & (VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK);
        f.set_protocol_features(proto).map_err(p("SET_PROTOCOL_FEATURES"))?;
        if proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every request without a reply of its own is acknowledged: an
            // error shows up at the request that caused it, and the rings
            // are set up before the first kick.
            f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let queues_offered = if proto.contains(VhostUserProtocolFeatures::MQ) {
            f.get_queue_num().map_err(p("GET_QUEUE_NUM"))?
        } else {
            1
        };
        ensure!(
            queues as u64 <= queues_offered,
            "{queues} queues asked for, the backend offers {queues_offered} (sheaf blk engine --vhost-user-queues)"
        );

        // The config space.
        let len = size_of::<virtio_blk_config>();
        let (_, c) =
            f.get_config(0, len as u32, VhostUserConfigFlags::empty(), &vec![0u8; len]).map_err(p("GET_CONFIG"))?;
        ensure!(c.len() == len, "config space of {} bytes, not {len}", c.len());
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&c[offset_of!(virtio_blk_config, capacity)..][..8]);
        let capacity = u64::from_le_bytes(cap).checked_mul(SECTOR).context("capacity overflows")?;
        let info = Info {
            capacity,
            queues_offered,
            event_idx: has(VIRTIO_RING_F_EVENT_IDX),
            read_only: has(VIRTIO_BLK_F_RO),
            flush: has(VIRTIO_BLK_F_FLUSH),
            size_max: has(VIRTIO_BLK_F_SIZE_MAX).then(|| le_u32(&c, offset_of!(virtio_blk_config, size_max))),
            seg_max: has(VIRTIO_BLK_F_SEG_MAX).then(|| le_u32(&c, offset_of!(virtio_blk_config, seg_max))),
            blk_size: if has(VIRTIO_BLK_F_BLK_SIZE) {
                le_u32(&c, offset_of!(virtio_blk_config, blk_size))
            } else {
                512
            },
        };
        ensure!(
            info.blk_size > 0 && bs.is_multiple_of(info.blk_size),
            "block size {bs} is not a multiple of the disk's logical block size {}",
            info.blk_size
        );
        f.set_features(wanted).map_err(p("SET_FEATURES"))?;

        // Request layout: data split at size_max.
        let segment = info.size_max.filter(|m| *m > 0).map_or(bs, |m| m.min(bs));
        let segments = bs.div_ceil(segment);
        if let Some(max) = info.seg_max {
            ensure!(segments <= max, "{bs}-byte requests need {segments} segments, the backend takes {max}");
        }
        let descs_per_request = 2 + segments as usize;
        let depths = spread(iodepth, queues);
        let mut sizes = Vec::with_capacity(queues);
        for d in &depths {
            let need = (d * descs_per_request).next_power_of_two().max(MIN_QUEUE_SIZE);
            ensure!(
                need <= MAX_QUEUE_SIZE,
                "{d} requests of {descs_per_request} descriptors do not fit a queue of {MAX_QUEUE_SIZE}: use more queues"
            );
            sizes.push(need as u16);
        }

        // Guest memory: per queue its rings, then per request a header and
        // status byte (32 bytes) and a page-aligned data buffer.
        let data_len = round_up(u64::from(bs), PAGE);
        let mut layout = Vec::with_capacity(queues);
        let mut at = 0u64;
        for (q, d) in depths.iter().enumerate() {
            let (dl, al, ul) = ring_bytes(sizes[q]);
            let desc = at;
            let avail = desc + round_up(dl, PAGE);
            let used = avail + round_up(al, PAGE);
            let meta = used + round_up(ul, PAGE);
            let data = meta + round_up(32 * *d as u64, PAGE);
            at = data + data_len * *d as u64;
            let slots = (0..*d as u64)
                .map(|s| Slot {
                    header: GuestAddress(meta + 32 * s),
                    status: GuestAddress(meta + 32 * s + u64::from(HEADER)),
                    data: GuestAddress(data + data_len * s),
                })
                .collect::<Vec<_>>();
            layout.push((desc, avail, used, slots));
        }
        let total = round_up(at, 2 << 20);
        let fd = rustix::fs::memfd_create("sheaf-bench-vhost-user", rustix::fs::MemfdFlags::CLOEXEC)
            .context("memfd_create")?;
        let file = File::from(fd);
        file.set_len(total).context("sizing the guest memory memfd")?;
        let size = usize::try_from(total).context("guest memory size")?;
        let mem: Mem =
            GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), size, Some(FileOffset::new(file, 0)))])
                .map_err(|e| anyhow::anyhow!("mapping the guest memory: {e}"))?;
        let region = mem.find_region(GuestAddress(0)).context("the guest memory region")?;
        let info_region = VhostUserMemoryRegionInfo::from_guest_region(region).map_err(p("memory region"))?;
        // Ring addresses are given in the frontend's address space, like QEMU's.
        let va = |gpa: u64| info_region.userspace_addr + gpa;
        debug_assert_eq!(region.len(), total);
        f.set_mem_table(&[info_region]).map_err(p("SET_MEM_TABLE"))?;

        let mut qs = Vec::with_capacity(queues);
        for (q, (desc, avail, used, slots)) in layout.into_iter().enumerate() {
            let size = sizes[q];
            let e = |what: &'static str| move |err: std::io::Error| anyhow::anyhow!("{what} eventfd: {err}");
            let kick = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(e("kick"))?;
            let call = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(e("call"))?;
            f.set_vring_num(q, size).map_err(p("SET_VRING_NUM"))?;
            f.set_vring_base(q, 0).map_err(p("SET_VRING_BASE"))?;
            let config = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: va(desc),
                used_ring_addr: va(used),
                avail_ring_addr: va(avail),
                log_addr: None,
            };
            f.set_vring_addr(q, &config).map_err(p("SET_VRING_ADDR"))?;
            f.set_vring_call(q, &call).map_err(p("SET_VRING_CALL"))?;
            f.set_vring_kick(q, &kick).map_err(p("SET_VRING_KICK"))?;
            f.set_vring_enable(q, true).map_err(p("SET_VRING_ENABLE"))?;
            let ring = DriverRing::new(
                mem.clone(),
                size,
                GuestAddress(desc),
                GuestAddress(avail),
                GuestAddress(used),
                info.event_idx,
            );
            qs.push(Queue { index: q, ring, kick, call, slots, descs_per_request: descs_per_request as u16, segment });
        }
        Ok(Device { frontend: f, mem, info, queues: qs, bs })
    }

    /// Stops the queues (`GET_VRING_BASE`, which waits for requests still
    /// in flight in the backend) and disconnects.
    pub fn close(self) -> anyhow::Result<()> {
        for q in 0..self.queues.len() {
            self.frontend.get_vring_base(q).map_err(|e| anyhow::anyhow!("vhost-user GET_VRING_BASE: {e}"))?;
        }
        Ok(())
    }

    /// Where the connection goes.
    pub fn describe(&self, socket: &Path) -> String {
        let i = &self.info;
        format!(
            "{}: {} bytes, {} of {} queues, event_idx {}, size_max {:?}, seg_max {:?}, blk_size {}, flush {}, read-only {}",
            socket.display(),
            i.capacity,
            self.queues.len(),
            i.queues_offered,
            if i.event_idx { "on" } else { "off" },
            i.size_max,
            i.seg_max,
            i.blk_size,
            i.flush,
            i.read_only
        )
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn depth_is_spread_over_the_queues() {
        assert_eq!(spread(64, 1), [64]);
        assert_eq!(spread(64, 3), [22, 21, 21]);
        assert_eq!(spread(2, 2), [1, 1]);
    }

    #[test]
    fn sizes_round_up() {
        assert_eq!(super::round_up(1, 4096), 4096);
        assert_eq!(super::round_up(8192, 4096), 8192);
    }
}
