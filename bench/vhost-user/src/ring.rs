//! The driver's side of a split virtqueue (what a guest's virtio driver
//! does): descriptors and the available ring written into guest memory,
//! the used ring read back, notifications suppressed with event index
//! like Linux does.

use std::sync::atomic::{fence, Ordering};

use anyhow::{bail, Context as _};
use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub(crate) type Mem = GuestMemoryMmap<()>;

/// Bytes of a descriptor table, available ring and used ring of `size`
/// entries (each with its event index field).
pub(crate) fn ring_bytes(size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

/// `vring_need_event` of the virtio spec: whether moving an index from
/// `old` to `new` crosses `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

pub(crate) struct DriverRing {
    mem: Mem,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    event_idx: bool,
    /// The available index the next chain goes to.
    next_avail: u16,
    /// The available index the device last saw (published).
    published: u16,
    /// The next used entry to read.
    last_used: u16,
}

impl DriverRing {
    /// A ring at the given (zeroed) addresses.
    pub(crate) fn new(
        mem: Mem,
        size: u16,
        desc: GuestAddress,
        avail: GuestAddress,
        used: GuestAddress,
        event_idx: bool,
    ) -> DriverRing {
        DriverRing { mem, size, desc, avail, used, event_idx, next_avail: 0, published: 0, last_used: 0 }
    }

    fn at(base: GuestAddress, offset: u64) -> GuestAddress {
        GuestAddress(base.0 + offset)
    }

    /// Writes descriptor `index`.
    pub(crate) fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) -> anyhow::Result<()> {
        let d = Descriptor::new(addr, len, flags, next);
        self.mem.write_obj(d, Self::at(self.desc, 16 * u64::from(index))).context("writing a descriptor")
    }

    /// Puts the chain starting at `head` on the available ring (the device
    /// sees it at the next [`DriverRing::publish`]).
    pub(crate) fn push(&mut self, head: u16) -> anyhow::Result<()> {
        let slot = u64::from(self.next_avail % self.size);
        self.mem.write_obj(head.to_le(), Self::at(self.avail, 4 + 2 * slot)).context("writing the available ring")?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Makes the pushed chains visible to the device; returns whether it
    /// must be kicked.
    pub(crate) fn publish(&mut self) -> anyhow::Result<bool> {
        if self.next_avail == self.published {
            return Ok(false);
        }
        // Release: descriptors, headers and data are visible before the index.
        self.mem.store(self.next_avail.to_le(), Self::at(self.avail, 2), Ordering::Release).context("avail idx")?;
        let old = std::mem::replace(&mut self.published, self.next_avail);
        // The index store before the read of what the device asked for
        // (the device does the opposite when it re-enables notifications).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let off = 4 + 8 * u64::from(self.size);
            let event =
                u16::from_le(self.mem.load(Self::at(self.used, off), Ordering::Acquire).context("avail_event")?);
            Ok(need_event(event, self.next_avail, old))
        } else {
            let flags = u16::from_le(self.mem.load(self.used, Ordering::Acquire).context("used flags")?);
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// The next completed chain: its head and the length the device wrote.
    pub(crate) fn pop_used(&mut self) -> anyhow::Result<Option<(u32, u32)>> {
        let idx = u16::from_le(self.mem.load(Self::at(self.used, 2), Ordering::Acquire).context("used idx")?);
        if idx == self.last_used {
            return Ok(None);
        }
        if idx.wrapping_sub(self.last_used) > self.size {
            bail!("the used index jumped from {} to {idx} on a ring of {}", self.last_used, self.size);
        }
        let off = 4 + 8 * u64::from(self.last_used % self.size);
        let elem: [u8; 8] = self.mem.read_obj(Self::at(self.used, off)).context("reading the used ring")?;
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        Ok(Some((id, len)))
    }

    /// Asks for an interrupt at the next completion; returns true if
    /// completions came in meanwhile (read them instead of waiting).
    pub(crate) fn arm(&mut self) -> anyhow::Result<bool> {
        if self.event_idx {
            let off = 4 + 2 * u64::from(self.size);
            self.mem
                .store(self.last_used.to_le(), Self::at(self.avail, off), Ordering::Release)
                .context("used_event")?;
        }
        // Without event index the available ring's flags stay 0: the
        // device interrupts after every completion.
        fence(Ordering::SeqCst);
        let idx = u16::from_le(self.mem.load(Self::at(self.used, 2), Ordering::Acquire).context("used idx")?);
        Ok(idx != self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn need_event_follows_the_spec() {
        // The device wants a kick once index 5 is passed.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 8, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(9, 8, 3));
        // Across the wrap.
        assert!(need_event(u16::MAX, 1, u16::MAX - 1));
        assert!(!need_event(2, 1, u16::MAX - 1));
    }
}
