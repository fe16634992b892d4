//! Request parsing and status handling against virtio-queue's mock
//! queue, completion through a real vring, and the vhost-user protocol
//! through vhost's own frontend.

use std::io::Read;
use std::mem::offset_of;

use virtio_bindings::virtio_blk::virtio_blk_config;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;

use super::*;
use crate::nbd::MemoryDevice;

const MIB: usize = 1 << 20;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// 4 MiB of guest memory at 0: the mock queue at 0, buffers above 64 KiB.
fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 * MIB)]).expect("guest memory")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
}

/// A descriptor: address, length, device-writable.
type D = (u64, u32, bool);
const R: bool = false;
const W: bool = true;

fn raw(d: &[D]) -> Vec<RawDescriptor> {
    d.iter()
        .map(|&(addr, len, w)| {
            RawDescriptor::from(SplitDescriptor::new(addr, len, if w { VRING_DESC_F_WRITE as u16 } else { 0 }, 0))
        })
        .collect()
}

fn header(mem: &Mem, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).expect("header");
}

fn fill(mem: &Mem, at: u64, len: usize, byte: u8) {
    mem.write_slice(&vec![byte; len], GuestAddress(at)).expect("fill");
}

fn bytes(mem: &Mem, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read_slice(&mut b, GuestAddress(at)).expect("read guest memory");
    b
}

fn status(mem: &Mem, at: u64) -> u8 {
    bytes(mem, at, 1)[0]
}

/// Runs the chain `d` (built at the start of the descriptor table) and
/// returns the used length.
fn run(dev: &dyn Device, mem: &Mem, d: &[D], opts: &Options) -> u32 {
    let q = MockSplitQueue::new(mem, 16);
    let chain = q.build_desc_chain(&raw(d)).expect("chain");
    let parsed = parse(&Buffers::collect(chain), mem);
    block_on(answer(parsed, dev, mem, opts))
}

fn opts() -> Options {
    Options { serial: "vol-serial-1".into(), ..Options::default() }
}

const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const DATA2: u64 = 0x4_0000;

#[test]
fn writes_and_reads_round_trip() {
    let mem = memory();
    let dev = MemoryDevice::new(MIB);
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 8);
    fill(&mem, DATA, 4096, 0xab);
    fill(&mem, STATUS, 1, 0xee);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (DATA, 4096, R), (STATUS, 1, W)], &opts()), 1);
    assert_eq!(status(&mem, STATUS), OK);
    let c = dev.contents();
    assert!(c[4096..8192].iter().all(|b| *b == 0xab) && c[..4096].iter().all(|b| *b == 0));

    // Read it back into two buffers.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 8);
    let d = [(HDR, 16, R), (DATA2, 1024, W), (DATA2 + 0x1000, 3072, W), (STATUS, 1, W)];
    assert_eq!(run(&dev, &mem, &d, &opts()), 4097);
    assert_eq!(status(&mem, STATUS), OK);
    assert!(bytes(&mem, DATA2, 1024).iter().all(|b| *b == 0xab));
    assert!(bytes(&mem, DATA2 + 0x1000, 3072).iter().all(|b| *b == 0xab));

    // Any layout: header and data in one descriptor, data and status in one.
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    fill(&mem, HDR + 16, 512, 0x11);
    assert_eq!(run(&dev, &mem, &[(HDR, 16 + 512, R), (STATUS, 1, W)], &opts()), 1);
    assert_eq!(status(&mem, STATUS), OK);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (DATA, 513, W)], &opts()), 513);
    assert!(bytes(&mem, DATA, 512).iter().all(|b| *b == 0x11));
    assert_eq!(status(&mem, DATA + 512), OK);
}

#[test]
fn sectors_past_the_end_are_io_errors() {
    let mem = memory();
    let dev = MemoryDevice::new(MIB);
    let last = (MIB as u64) / SECTOR - 1;
    fill(&mem, DATA, 1024, 0x5a);
    for (sector, len) in [(last, 1024), (last + 1, 512), (u64::MAX, 512), (u64::MAX / SECTOR, 512)] {
        header(&mem, HDR, VIRTIO_BLK_T_IN, sector);
        assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (DATA, len, W), (STATUS, 1, W)], &opts()), 1, "sector {sector}");
        assert_eq!(status(&mem, STATUS), IOERR, "sector {sector}");
        assert!(bytes(&mem, DATA, 1024).iter().all(|b| *b == 0x5a), "nothing read for sector {sector}");
    }
    // The last sector itself is fine.
    header(&mem, HDR, VIRTIO_BLK_T_IN, last);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)], &opts()), 513);
    assert_eq!(status(&mem, STATUS), OK);
    // Writes past the end change nothing.
    header(&mem, HDR, VIRTIO_BLK_T_OUT, last);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 1024, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    assert!(dev.contents().iter().all(|b| *b == 0));
}

#[test]
fn short_and_misdirected_chains_are_refused() {
    let mem = memory();
    let dev = MemoryDevice::new(MIB);
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    fill(&mem, DATA, 512, 0x77);

    // No writable byte at all: nothing can be answered or written.
    fill(&mem, STATUS, 1, 0xee);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (DATA, 512, R)], &opts()), 0);
    assert_eq!(status(&mem, STATUS), 0xee);
    // A header shorter than 16 bytes.
    assert_eq!(run(&dev, &mem, &[(HDR, 8, R), (STATUS, 1, W)], &opts()), 1);
    assert_eq!(status(&mem, STATUS), IOERR);
    // A read whose data buffer the device may not write.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    assert!(bytes(&mem, DATA, 512).iter().all(|b| *b == 0x77), "a read-only buffer stays untouched");
    // A write whose data the device may not read.
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    // Writable before readable.
    run(&dev, &mem, &[(DATA, 512, W), (HDR, 16, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    assert!(dev.contents().iter().all(|b| *b == 0), "no write reached the device");
}

#[test]
fn buffers_outside_guest_memory_and_absurd_lengths() {
    let mem = memory();
    let dev = MemoryDevice::new(MIB);
    let outside = 0x10_0000_0000;
    // Data outside guest memory.
    for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
        header(&mem, HDR, kind, 0);
        run(&dev, &mem, &[(HDR, 16, R), (outside, 4096, kind == VIRTIO_BLK_T_IN), (STATUS, 1, W)], &opts());
        assert_eq!(status(&mem, STATUS), IOERR, "kind {kind}");
    }
    // Data running off the end of guest memory: nothing of it is written.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let edge = (4 * MIB - 512) as u64;
    fill(&mem, edge, 512, 0x33);
    run(&dev, &mem, &[(HDR, 16, R), (edge, 4096, W), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    assert!(bytes(&mem, edge, 512).iter().all(|b| *b == 0x33));
    // Header or status outside guest memory.
    assert_eq!(run(&dev, &mem, &[(outside, 16, R), (STATUS, 1, W)], &opts()), 1);
    assert_eq!(status(&mem, STATUS), IOERR);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (outside, 1, W)], &opts()), 0);
    // 64 MiB in one request; a length that is not whole sectors.
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 64 << 20, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 100, W), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    // A descriptor running past the end of the address space: nothing at
    // the bottom of guest memory is read or written instead.
    fill(&mem, 0x1000, 64, 0x44);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    run(&dev, &mem, &[(HDR, 16, R), (u64::MAX - 8, 4096, W), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    run(&dev, &mem, &[(u64::MAX - 8, 16 + 512, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (u64::MAX - 8, 64, W)], &opts()), 0);
    assert!(bytes(&mem, 0x1000, 64).iter().all(|b| *b == 0x44));
    assert!(dev.contents().iter().all(|b| *b == 0));
    // The largest chain virtio allows (4 GiB - 1 in total) is refused too.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, u32::MAX - 17, W), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
}

#[test]
fn flush_get_id_and_unknown_requests() {
    let mem = memory();
    let dev = MemoryDevice::new(MIB);
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (STATUS, 1, W)], &opts()), 1);
    assert_eq!(status(&mem, STATUS), OK);

    header(&mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
    fill(&mem, DATA, 20, 0xff);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)], &opts()), 21);
    assert_eq!(status(&mem, STATUS), OK);
    let mut want = b"vol-serial-1".to_vec();
    want.resize(20, 0);
    assert_eq!(bytes(&mem, DATA, 20), want);

    for kind in [99, 2 /* SCSI */, 14 /* secure erase */] {
        header(&mem, HDR, kind, 0);
        assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (STATUS, 1, W)], &opts()), 1);
        assert_eq!(status(&mem, STATUS), UNSUPP, "kind {kind}");
    }
}

fn zero_segment(mem: &Mem, at: u64, sector: u64, sectors: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&s, GuestAddress(at)).expect("segment");
}

#[test]
fn discard_and_write_zeroes() {
    let mem = memory();
    let dev = MemoryDevice::new(MIB);
    block_on(dev.write(0, vec![0xff; MIB])).expect("fill device");
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

    header(&mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
    zero_segment(&mem, DATA, 8, 8, 0);
    zero_segment(&mem, DATA + 16, 32, 16, 0);
    assert_eq!(run(&dev, &mem, &[(HDR, 16, R), (DATA, 32, R), (STATUS, 1, W)], &opts()), 1);
    assert_eq!(status(&mem, STATUS), OK);
    let c = dev.contents();
    assert!(c[4096..8192].iter().all(|b| *b == 0) && c[16384..24576].iter().all(|b| *b == 0));
    assert!(c[..4096].iter().all(|b| *b == 0xff) && c[8192..16384].iter().all(|b| *b == 0xff));

    // Discard with the unmap flag, or any unknown flag: unsupported.
    zero_segment(&mem, DATA, 64, 8, unmap);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), UNSUPP);
    header(&mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    zero_segment(&mem, DATA, 64, 8, 4);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), UNSUPP);
    assert!(dev.contents()[64 * 512..72 * 512].iter().all(|b| *b == 0xff));

    // Write zeroes with unmap.
    zero_segment(&mem, DATA, 64, 8, unmap);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), OK);
    assert!(dev.contents()[64 * 512..72 * 512].iter().all(|b| *b == 0));

    // One range past the end: nothing is zeroed.
    zero_segment(&mem, DATA, 128, 8, 0);
    zero_segment(&mem, DATA + 16, (MIB as u64) / SECTOR - 4, 8, 0);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 32, R), (STATUS, 1, W)], &opts());
    assert_eq!(status(&mem, STATUS), IOERR);
    assert!(dev.contents()[128 * 512..136 * 512].iter().all(|b| *b == 0xff));
    // Not a whole number of ranges; no range; too many ranges.
    for len in [20, 0, 16 * (MAX_ZERO_SEGMENTS + 1)] {
        run(&dev, &mem, &[(HDR, 16, R), (DATA, len, R), (STATUS, 1, W)], &opts());
        assert_eq!(status(&mem, STATUS), IOERR, "{len} bytes of ranges");
    }
}

#[test]
fn a_read_only_device_refuses_writes() {
    let mem = memory();
    let dev = MemoryDevice::new(MIB);
    let ro = Options { read_only: true, ..opts() };
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    fill(&mem, DATA, 512, 1);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)], &ro);
    assert_eq!(status(&mem, STATUS), IOERR);
    header(&mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    zero_segment(&mem, DATA, 0, 8, 0);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)], &ro);
    assert_eq!(status(&mem, STATUS), IOERR);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    run(&dev, &mem, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)], &ro);
    assert_eq!(status(&mem, STATUS), OK);

    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let dev: Arc<dyn Device> = Arc::new(MemoryDevice::new(MIB));
    let s = VhostUserBlk::new(dev, ro, rt.handle().clone()).expect("server");
    let f = s.shared.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
}

#[test]
fn config_space_layout_and_features() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let dev: Arc<dyn Device> = Arc::new(MemoryDevice::new(64 * MIB));
    let s = VhostUserBlk::new(dev, Options { num_queues: 3, ..opts() }, rt.handle().clone()).expect("server");
    let c = s.shared.config_space(64 << 20);
    let u32_at = |o: usize| u32::from_le_bytes([c[o], c[o + 1], c[o + 2], c[o + 3]]);
    let mut cap = [0u8; 8];
    cap.copy_from_slice(&c[offset_of!(virtio_blk_config, capacity)..][..8]);
    assert_eq!(u64::from_le_bytes(cap), 131072);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, size_max)), SIZE_MAX);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, seg_max)), SEG_MAX);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, blk_size)), 512);
    assert_eq!(c[offset_of!(virtio_blk_config, physical_block_exp)], 3);
    assert_eq!(c[offset_of!(virtio_blk_config, min_io_size)], 8);
    assert_eq!(c[offset_of!(virtio_blk_config, num_queues)], 3);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, max_discard_sectors)), MAX_ZERO_SECTORS);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, max_discard_seg)), MAX_ZERO_SEGMENTS);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, discard_sector_alignment)), 8);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, max_write_zeroes_sectors)), MAX_ZERO_SECTORS);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, max_write_zeroes_seg)), MAX_ZERO_SEGMENTS);
    assert_eq!(c[offset_of!(virtio_blk_config, write_zeroes_may_unmap)], 1);
    assert!(SEG_MAX as u64 * SIZE_MAX as u64 <= MAX_IO, "the largest request the guest can make is accepted");

    let f = s.shared.features();
    for b in [
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_MQ,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_VERSION_1,
    ] {
        assert_ne!(f & (1 << b), 0, "feature bit {b}");
    }
    assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);

    let s4k = VhostUserBlk::new(
        Arc::new(MemoryDevice::new(MIB)),
        Options { logical_block_size: 4096, ..opts() },
        rt.handle().clone(),
    )
    .expect("server");
    let c = s4k.shared.config_space(MIB as u64);
    assert_eq!(c[offset_of!(virtio_blk_config, blk_size)..][..4], 4096u32.to_le_bytes());
    assert_eq!(c[offset_of!(virtio_blk_config, physical_block_exp)], 0);
    assert_eq!(c[offset_of!(virtio_blk_config, min_io_size)], 1);
}

#[test]
fn options_are_checked() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    for bad in [
        Options { num_queues: 0, ..opts() },
        Options { num_queues: MAX_QUEUES + 1, ..opts() },
        Options { max_queue_size: 100, ..opts() },
        Options { max_queue_size: 2048, ..opts() },
        Options { serial: "x".repeat(21), ..opts() },
        Options { logical_block_size: 1024, ..opts() },
    ] {
        let dev: Arc<dyn Device> = Arc::new(MemoryDevice::new(MIB));
        assert!(VhostUserBlk::new(dev, bad.clone(), rt.handle().clone()).is_err(), "{bad:?}");
    }
}

/// A device whose reads of offset 0 wait until released.
struct Gated {
    inner: MemoryDevice,
    gate: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl Device for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)> {
        if offset == 0 {
            let _permit = self.gate.acquire().await.map_err(|e| (5, e.to_string()))?;
        }
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), (u32, String)> {
        self.inner.write(offset, data).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), (u32, String)> {
        self.inner.write_zeroes(offset, len).await
    }
    async fn flush(&self) -> Result<(), (u32, String)> {
        self.inner.flush().await
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn requests_of_a_queue_complete_out_of_order() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    let gated = Arc::new(Gated { inner: MemoryDevice::new(MIB), gate: tokio::sync::Semaphore::new(0) });
    rt.block_on(gated.inner.write(4096, vec![0x42; 4096])).expect("fill");
    let dev: Arc<dyn Device> = gated.clone();
    let server = VhostUserBlk::new(dev, opts(), rt.handle().clone()).expect("server");
    let session = Session::new(server.shared.clone());

    let mem = memory();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    session.update_memory(atomic.clone()).expect("memory");
    let q = MockSplitQueue::new(&mem, 16);
    let vring = Vring::new(atomic, 16).expect("vring");
    vring.set_queue_size(16);
    vring.set_queue_info(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0).expect("queue addresses");
    vring.set_queue_ready(true);
    vring.set_enabled(true);

    // Chain 0 (descriptors 0-2) reads sector 0 and waits at the gate;
    // chain 1 (descriptors 3-5) reads sector 8.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    header(&mem, HDR + 16, VIRTIO_BLK_T_IN, 8);
    let next = VRING_DESC_F_NEXT as u16;
    let w = VRING_DESC_F_WRITE as u16;
    let descs = [
        SplitDescriptor::new(HDR, 16, next, 1),
        SplitDescriptor::new(DATA, 4096, next | w, 2),
        SplitDescriptor::new(STATUS, 1, w, 0),
        SplitDescriptor::new(HDR + 16, 16, next, 4),
        SplitDescriptor::new(DATA2, 4096, next | w, 5),
        SplitDescriptor::new(STATUS + 1, 1, w, 0),
    ];
    q.add_desc_chains(&descs.map(RawDescriptor::from), 0).expect("chains");
    fill(&mem, STATUS, 2, 0xee);

    session.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0).expect("handle_event");
    let used = q.used_addr().0;
    let used_idx = || mem.read_obj::<u16>(GuestAddress(used + 2)).expect("used idx");
    let used_id = |i: u64| mem.read_obj::<u32>(GuestAddress(used + 4 + 8 * i)).expect("used id");
    let used_len = |i: u64| mem.read_obj::<u32>(GuestAddress(used + 8 + 8 * i)).expect("used len");
    wait_until("the second request completes", || used_idx() == 1);
    assert_eq!((used_id(0), used_len(0)), (3, 4097), "the second chain completes first");
    assert_eq!(bytes(&mem, STATUS, 2), [0xee, OK]);
    assert!(bytes(&mem, DATA2, 4096).iter().all(|b| *b == 0x42));

    // GET_VRING_BASE waits for the request still in flight.
    let stopper = {
        let s = session.clone();
        std::thread::spawn(move || s.stop_vring(0))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!stopper.is_finished(), "stop_vring returned with a request in flight");
    gated.gate.add_permits(1);
    stopper.join().expect("stop_vring thread").expect("stop_vring");
    assert_eq!(used_idx(), 2);
    assert_eq!((used_id(1), used_len(1)), (0, 4097));
    assert_eq!(status(&mem, STATUS), OK);
}

/// A device that can grow.
struct Growable(Mutex<Vec<u8>>);

#[async_trait::async_trait]
impl Device for Growable {
    fn size(&self) -> u64 {
        self.0.lock().map(|d| d.len() as u64).unwrap_or(0)
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)> {
        let d = self.0.lock().map_err(|_| (5, "poisoned".to_string()))?;
        Ok(d[offset as usize..offset as usize + len as usize].to_vec())
    }
    async fn write(&self, _offset: u64, _data: Vec<u8>) -> Result<(), (u32, String)> {
        Ok(())
    }
    async fn write_zeroes(&self, _offset: u64, _len: u32) -> Result<(), (u32, String)> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), (u32, String)> {
        Ok(())
    }
}

#[test]
fn frontends_reconnect_and_learn_that_the_device_grew() {
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("runtime");
    let dev = Arc::new(Growable(Mutex::new(vec![0; MIB])));
    let device: Arc<dyn Device> = dev.clone();
    let server = Arc::new(VhostUserBlk::new(device, opts(), rt.handle().clone()).expect("server"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vu.sock");
    let listener = VhostUserBlk::bind(&path).expect("bind");
    {
        let server = server.clone();
        std::thread::spawn(move || server.serve(listener));
    }

    let capacity = |f: &mut Frontend| {
        let (_, c) = f.get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60]).expect("get_config");
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&c[..8]);
        u64::from_le_bytes(cap)
    };
    let mut f = Frontend::connect(&path, 4).expect("connect");
    f.set_owner().expect("set_owner");
    let features = f.get_features().expect("get_features");
    assert_eq!(features, server.shared.features());
    f.set_features(features).expect("set_features");
    let proto = f.get_protocol_features().expect("get_protocol_features");
    for p in [
        VhostUserProtocolFeatures::CONFIG,
        VhostUserProtocolFeatures::MQ,
        VhostUserProtocolFeatures::BACKEND_REQ,
        VhostUserProtocolFeatures::REPLY_ACK,
    ] {
        assert!(proto.contains(p), "{p:?}");
    }
    f.set_protocol_features(proto).expect("set_protocol_features");
    assert_eq!(f.get_queue_num().expect("get_queue_num"), 4);
    assert_eq!(capacity(&mut f), 2048);

    // The backend request channel (the reply to the next request shows
    // the server has it).
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    f.set_backend_request_fd(&theirs).expect("set_backend_request_fd");
    assert_eq!(capacity(&mut f), 2048);
    assert!(!server.notify_resized(), "nothing changed yet");
    dev.0.lock().expect("device").resize(2 * MIB, 0);
    assert!(server.notify_resized(), "a config change is sent");
    assert!(!server.notify_resized(), "only once per change");
    let mut m = [0u8; 12];
    (&ours).read_exact(&mut m).expect("config change message");
    assert_eq!(u32::from_le_bytes([m[0], m[1], m[2], m[3]]), BACKEND_CONFIG_CHANGE_MSG);
    assert_eq!(u32::from_le_bytes([m[8], m[9], m[10], m[11]]), 0, "no payload");
    assert_eq!(capacity(&mut f), 4096);

    // QEMU goes away; the next one is served.
    drop(f);
    let mut f = Frontend::connect(&path, 4).expect("connect again");
    f.set_owner().expect("set_owner on the new connection");
    assert_eq!(f.get_features().expect("get_features"), features);
    f.set_features(features).expect("set_features");
    assert_eq!(f.get_protocol_features().expect("get_protocol_features"), proto);
    f.set_protocol_features(proto).expect("set_protocol_features");
    assert_eq!(capacity(&mut f), 4096);
    // The first connection's vring threads are gone: one per queue is left.
    wait_until("the old vring threads exit", || vring_threads() == 4);
}

/// Threads of this process named like vhost-user-backend's vring workers.
fn vring_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "vring_worker"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn random_chains_never_touch_memory_outside_their_writable_descriptors() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SIZE: u64 = 128 * 1024;
    let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), SIZE as usize)]).expect("guest memory");
    let dev = MemoryDevice::new(64 * 1024);
    let mut rng = StdRng::seed_from_u64(0x5eaf);
    let kinds = [
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        3,
        u32::MAX,
    ];
    // How many chains were requests, rejected, unanswerable; how many
    // returned data.
    let mut seen = [0usize; 4];
    for round in 0..1500 {
        let inside = |rng: &mut StdRng| 0x1000 + rng.random_range(0..(SIZE - 0x12000)) / 16 * 16;
        let mut d: Vec<D> = Vec::new();
        if rng.random_bool(0.6) {
            // Shaped like a request, with some of it wrong.
            let kind = kinds[rng.random_range(0..kinds.len())];
            let at = inside(&mut rng);
            let sector = if rng.random_bool(0.9) { rng.random_range(0..130) } else { rng.random_range(0..u64::MAX) };
            header(&mem, at, kind, sector);
            d.push((at, 16, R));
            let into_guest = matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID) != rng.random_bool(0.1);
            for _ in 0..rng.random_range(0..3) {
                let at = inside(&mut rng);
                let len = [512, 1024, 4096, 20, 16, 32, 100][rng.random_range(0..7)];
                if !into_guest && len >= 16 {
                    zero_segment(&mem, at, rng.random_range(0..130), rng.random_range(0..16), rng.random_range(0..2));
                }
                d.push((at, len, into_guest));
            }
            if rng.random_bool(0.9) {
                d.push((inside(&mut rng), 1, W));
            }
        } else {
            for _ in 0..rng.random_range(1..=6) {
                let addr = match rng.random_range(0..6) {
                    0 => SIZE - rng.random_range(1..4096),
                    1 => u64::MAX - rng.random_range(0..4096),
                    2 => SIZE + rng.random_range(0..SIZE),
                    _ => inside(&mut rng),
                };
                let len = match rng.random_range(0..6) {
                    0 => 0,
                    1 => 1,
                    2 => 16,
                    3 => rng.random_range(0..4) * 512 + 16 * rng.random_range(0..3),
                    4 => rng.random_range(0..0x10000),
                    _ => rng.random_range(0..u32::MAX),
                };
                d.push((addr, len, rng.random_bool(0.5)));
            }
        }
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q.build_desc_chain(&raw(&d)).expect("chain");
        let before = bytes(&mem, 0, SIZE as usize);
        let parsed = parse(&Buffers::collect(chain), &mem);
        seen[match parsed {
            Parsed::Request(_) => 0,
            Parsed::Reject { .. } => 1,
            Parsed::Unanswerable => 2,
        }] += 1;
        let used = block_on(answer(parsed, &dev, &mem, &opts()));
        if used > 1 {
            seen[3] += 1;
        }
        let after = bytes(&mem, 0, SIZE as usize);
        let allowed = |at: u64| {
            d.iter().any(|&(addr, len, w)| w && addr.checked_add(u64::from(len)).is_some_and(|e| at >= addr && at < e))
        };
        if before != after {
            for (at, (b, a)) in before.iter().zip(&after).enumerate() {
                assert!(
                    b == a || allowed(at as u64),
                    "round {round}: byte {at:#x} outside the writable buffers of {d:x?}"
                );
            }
        }
        let writable: u64 = d.iter().filter(|x| x.2).map(|x| u64::from(x.1)).sum();
        assert!(u64::from(used) <= writable, "round {round}: used length {used} > {writable} writable bytes");
    }
    assert!(seen.iter().all(|n| *n > 10), "every kind of outcome was tried: {seen:?}");
}
