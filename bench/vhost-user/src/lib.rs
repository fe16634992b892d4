//! A host-side vhost-user-blk frontend for benchmarks: it plays the part
//! QEMU's `vhost-user-blk-pci` device and the guest's virtio-blk driver
//! play together, so the backend (`sheaf blk engine --vhost-user`) is
//! measured without a guest (guests here run under TCG, far too slow to
//! measure storage).
//!
//! [`Device::connect`] sets the device up as QEMU does (features,
//! protocol features, config space, guest memory in a memfd shared with
//! the backend, the queues with their kick and call eventfds); [`run`]
//! then keeps `iodepth` virtio-blk requests (header, data, status
//! descriptors) in flight for a while, spread over the queues, one thread
//! per queue waiting on its call eventfd, and checks every status byte and
//! used length; [`verify`] writes a pattern and reads it back.

mod device;
mod ring;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub use device::{Device, Info, Target};
use device::{Queue, HEADER, SECTOR};
use ring::Mem;

/// With requests in flight and none completing for this long, the run
/// fails (a backend that hangs must not hang the benchmark).
const STALL: Duration = Duration::from_secs(30);
/// A status byte the backend has not written.
const POISON: u8 = 0xff;

/// The workloads, as fio's `--rw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rw {
    RandRead,
    RandWrite,
    Read,
    Write,
}

impl Rw {
    pub fn is_write(self) -> bool {
        matches!(self, Rw::RandWrite | Rw::Write)
    }
    fn is_random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite)
    }
}

impl std::str::FromStr for Rw {
    type Err = String;
    fn from_str(s: &str) -> Result<Rw, String> {
        match s {
            "randread" => Ok(Rw::RandRead),
            "randwrite" => Ok(Rw::RandWrite),
            "read" => Ok(Rw::Read),
            "write" => Ok(Rw::Write),
            _ => Err(format!("{s:?} is not one of randread, randwrite, read, write")),
        }
    }
}

/// A timed workload.
#[derive(Clone, Debug)]
pub struct Workload {
    pub rw: Rw,
    /// Bytes per request (a multiple of 512).
    pub bs: u32,
    /// Requests kept in flight, over all queues.
    pub iodepth: usize,
    /// Measured time, after `ramp`.
    pub runtime: Duration,
    /// Time run before measuring (fio's `ramp_time`).
    pub ramp: Duration,
    /// The part of the disk used, from offset 0 (the whole disk if None).
    pub size: Option<u64>,
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Requests completed in the measured time.
    pub ios: u64,
    pub bytes: u64,
    /// Sum of their latencies (submission to completion seen).
    pub latency: Duration,
    /// The measured time.
    pub seconds: f64,
}

impl Report {
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
    /// MiB/s, what bench/storage.sh prints as MB/s (fio's bw / 1024).
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.seconds.max(f64::MIN_POSITIVE)
    }
    /// Mean latency in µs.
    pub fn lat_us(&self) -> f64 {
        if self.ios == 0 {
            return 0.0;
        }
        self.latency.as_secs_f64() * 1e6 / self.ios as f64
    }
    /// One machine-readable line: `iops=… mbps=… lat_us=… ios=… seconds=…`.
    pub fn line(&self) -> String {
        format!(
            "iops={:.0} mbps={:.1} lat_us={:.1} ios={} seconds={:.2}",
            self.iops(),
            self.mbps(),
            self.lat_us(),
            self.ios,
            self.seconds
        )
    }
    fn add(&mut self, o: &Report) {
        self.ios += o.ios;
        self.bytes += o.bytes;
        self.latency += o.latency;
    }
}

/// What [`verify`] did.
#[derive(Clone, Debug)]
pub struct Verified {
    pub bytes: u64,
    pub blocks: u64,
    pub write: Report,
    pub read: Report,
    pub flushed: bool,
}

/// Runs `w` against the device at `target`.
pub fn run(target: &Target, w: &Workload) -> anyhow::Result<Report> {
    run_on(Device::connect(target, w.iodepth, w.bs)?, w)
}

/// Runs `w` on a device connected for its iodepth and block size, then
/// disconnects.
pub fn run_on(mut dev: Device, w: &Workload) -> anyhow::Result<Report> {
    ensure!(dev.bs == w.bs, "the device was set up for {}-byte requests, not {}", dev.bs, w.bs);
    ensure!(!w.runtime.is_zero(), "the runtime must be more than 0 s");
    ensure!(!(w.rw.is_write() && dev.info.read_only), "the device is read-only (VIRTIO_BLK_F_RO)");
    let blocks = blocks(&dev, w.size, w.bs)?;
    if w.rw.is_write() {
        fill_random(&mut dev)?;
    }
    let op = if w.rw.is_write() { Op::Write } else { Op::Read };
    let measure_from = Instant::now() + w.ramp;
    let plan = Plan::new(
        op,
        w.rw.is_random(),
        blocks,
        Stop::Deadline { measure_from, end: measure_from + w.runtime },
        Data::Fixed,
    );
    let mut report = drive(&mut dev, &plan)?;
    report.seconds = w.runtime.as_secs_f64();
    dev.close()?;
    Ok(report)
}

/// Writes a pattern (new each time) over the first `size` bytes (the
/// whole disk if None) in `bs` requests, flushes, reads it back and
/// compares every byte.
pub fn verify(target: &Target, bs: u32, iodepth: usize, size: Option<u64>) -> anyhow::Result<Verified> {
    verify_on(Device::connect(target, iodepth, bs)?, size)
}

/// [`verify`] on a connected device, with the request size and depth it
/// was set up for; disconnects afterwards.
pub fn verify_on(mut dev: Device, size: Option<u64>) -> anyhow::Result<Verified> {
    let bs = dev.bs;
    ensure!(!dev.info.read_only, "the device is read-only (VIRTIO_BLK_F_RO): nothing to verify with");
    let blocks = blocks(&dev, size, bs)?;
    let seed = Rng::seed();
    let pass = |dev: &mut Device, op: Op, blocks: u64| -> anyhow::Result<Report> {
        let start = Instant::now();
        let plan = Plan::new(op, false, blocks, Stop::Pass, Data::Pattern(seed));
        let mut r = drive(dev, &plan)?;
        r.seconds = start.elapsed().as_secs_f64();
        ensure!(r.ios == blocks, "{} of {blocks} requests completed", r.ios);
        Ok(r)
    };
    let write = pass(&mut dev, Op::Write, blocks).context("writing the pattern")?;
    let flushed = dev.info.flush;
    if flushed {
        pass(&mut dev, Op::Flush, 1).context("flush")?;
    }
    let read = pass(&mut dev, Op::Read, blocks).context("reading the pattern back")?;
    dev.close()?;
    Ok(Verified { bytes: blocks * u64::from(bs), blocks, write, read, flushed })
}

/// Whole `bs` blocks in the first `size` bytes of the disk.
fn blocks(dev: &Device, size: Option<u64>, bs: u32) -> anyhow::Result<u64> {
    let cap = dev.info.capacity;
    let size = size.unwrap_or(cap);
    ensure!(size <= cap, "--size {size} is larger than the disk ({cap} bytes)");
    let blocks = size / u64::from(bs);
    ensure!(blocks > 0, "--size {size} holds no block of {bs} bytes");
    Ok(blocks)
}

/// Fills every data buffer with pseudo-random bytes (fio writes random
/// buffers too: nothing on the way can shortcut zeros or repeats).
fn fill_random(dev: &mut Device) -> anyhow::Result<()> {
    let mut rng = Rng::new(Rng::seed());
    let mut buf = vec![0u8; dev.bs as usize];
    for q in &dev.queues {
        for s in &q.slots {
            for chunk in buf.chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            dev.mem.write_slice(&buf, s.data).context("filling a data buffer")?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Submit until `end`; count what completes between the two.
    Deadline { measure_from: Instant, end: Instant },
    /// Every block once, in order (spread over the queues).
    Pass,
}

#[derive(Clone, Copy, Debug)]
enum Data {
    /// Reads take whatever the disk holds; writes send the buffers as
    /// [`fill_random`] left them.
    Fixed,
    /// Writes the pattern of each block; reads check it.
    Pattern(u64),
}

struct Plan {
    op: Op,
    random: bool,
    blocks: u64,
    stop: Stop,
    data: Data,
    /// The next block of a sequential workload.
    cursor: AtomicU64,
    /// A queue failed: the others stop submitting.
    abort: AtomicBool,
}

impl Plan {
    fn new(op: Op, random: bool, blocks: u64, stop: Stop, data: Data) -> Plan {
        Plan { op, random, blocks, stop, data, cursor: AtomicU64::new(0), abort: AtomicBool::new(false) }
    }

    fn next_block(&self, rng: &mut Rng) -> Option<u64> {
        match self.stop {
            Stop::Pass => Some(self.cursor.fetch_add(1, Ordering::Relaxed)).filter(|b| *b < self.blocks),
            Stop::Deadline { .. } if self.random => Some(rng.next() % self.blocks),
            Stop::Deadline { .. } => Some(self.cursor.fetch_add(1, Ordering::Relaxed) % self.blocks),
        }
    }
}

/// Runs `plan` on every queue of `dev`, a thread per queue.
fn drive(dev: &mut Device, plan: &Plan) -> anyhow::Result<Report> {
    let (mem, bs) = (&dev.mem, dev.bs);
    let seed = Rng::seed();
    let results: Vec<anyhow::Result<Report>> = std::thread::scope(|sc| {
        let handles: Vec<_> = dev
            .queues
            .iter_mut()
            .map(|q| {
                sc.spawn(move || {
                    let r = Worker::new(q, mem, bs, plan, seed ^ (q.index as u64) << 56).and_then(|mut w| w.run());
                    if r.is_err() {
                        plan.abort.store(true, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a queue thread panicked"))))
            .collect()
    });
    let mut total = Report::default();
    for r in results {
        total.add(&r?);
    }
    Ok(total)
}

/// A request in flight.
#[derive(Clone, Copy)]
struct Pending {
    block: u64,
    started: Instant,
}

struct Worker<'a> {
    q: &'a mut Queue,
    mem: &'a Mem,
    bs: u32,
    plan: &'a Plan,
    rng: Rng,
    epoll: Epoll,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    scratch: Vec<u8>,
    expected: Vec<u8>,
    report: Report,
}

impl<'a> Worker<'a> {
    fn new(q: &'a mut Queue, mem: &'a Mem, bs: u32, plan: &'a Plan, seed: u64) -> anyhow::Result<Worker<'a>> {
        use std::os::fd::AsRawFd as _;
        let epoll = Epoll::new().context("epoll")?;
        epoll
            .ctl(ControlOperation::Add, q.call.as_raw_fd(), EpollEvent::new(EventSet::IN, 0))
            .context("epoll on the call eventfd")?;
        let depth = q.slots.len();
        let buf = if matches!(plan.data, Data::Pattern(_)) { bs as usize } else { 0 };
        Ok(Worker {
            q,
            mem,
            bs,
            plan,
            rng: Rng::new(seed),
            epoll,
            pending: vec![None; depth],
            free: (0..depth).rev().collect(),
            scratch: vec![0; buf],
            expected: vec![0; buf],
            report: Report::default(),
        })
    }

    fn run(&mut self) -> anyhow::Result<Report> {
        let mut in_flight = 0usize;
        let mut last_progress = Instant::now();
        loop {
            let mut completed = 0;
            while let Some((id, len)) = self.q.ring.pop_used()? {
                self.complete(id, len)?;
                completed += 1;
            }
            in_flight -= completed;
            if completed > 0 {
                last_progress = Instant::now();
            }

            let now = Instant::now();
            let open = !self.plan.abort.load(Ordering::Relaxed)
                && match self.plan.stop {
                    Stop::Deadline { end, .. } => now < end,
                    Stop::Pass => true,
                };
            if open {
                while let Some(&slot) = self.free.last() {
                    let Some(block) = self.plan.next_block(&mut self.rng) else { break };
                    self.submit(slot, block)?;
                    self.free.pop();
                    in_flight += 1;
                }
                if self.q.ring.publish()? {
                    self.q.kick.write(1).context("kicking the queue")?;
                }
            }
            if in_flight == 0 {
                return Ok(std::mem::take(&mut self.report));
            }
            if completed == 0 && !self.q.ring.arm()? {
                self.wait(in_flight, last_progress)?;
            }
        }
    }

    /// Waits for the call eventfd.
    fn wait(&mut self, in_flight: usize, last_progress: Instant) -> anyhow::Result<()> {
        let mut events = [EpollEvent::default(); 1];
        let n = match self.epoll.wait(1000, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e).context("waiting on the call eventfd"),
        };
        if n > 0 {
            match self.q.call.read() {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("reading the call eventfd"),
            }
        } else if last_progress.elapsed() > STALL {
            bail!(
                "queue {}: no request completed for {} s with {in_flight} in flight (is the backend stuck?)",
                self.q.index,
                STALL.as_secs()
            );
        }
        Ok(())
    }

    /// Builds the request of `slot` for `block` and puts it on the ring.
    fn submit(&mut self, slot: usize, block: u64) -> anyhow::Result<()> {
        let s = self.q.slots[slot];
        let op = self.plan.op;
        let (kind, sector) = match op {
            Op::Read => (VIRTIO_BLK_T_IN, block * u64::from(self.bs) / SECTOR),
            Op::Write => (VIRTIO_BLK_T_OUT, block * u64::from(self.bs) / SECTOR),
            Op::Flush => (VIRTIO_BLK_T_FLUSH, 0),
        };
        let mut h = [0u8; HEADER as usize];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, s.header).context("writing a request header")?;
        self.mem.write_obj(POISON, s.status).context("writing a status byte")?;
        if let Data::Pattern(seed) = self.plan.data {
            match op {
                Op::Write => {
                    pattern(seed, block, &mut self.scratch);
                    self.mem.write_slice(&self.scratch, s.data).context("writing the pattern")?;
                }
                // What the device does not write must not pass as read.
                Op::Read => self.mem.write_slice(&vec![0xa5; self.bs as usize], s.data).context("clearing")?,
                Op::Flush => {}
            }
        }

        let per = self.q.descs_per_request;
        let head = slot as u16 * per;
        let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        let ring = &self.q.ring;
        let mut d = head;
        if op == Op::Flush {
            ring.set_desc(d, s.header.0, HEADER, next, d + 1)?;
            ring.set_desc(d + 1, s.status.0, 1, write, 0)?;
        } else {
            ring.set_desc(d, s.header.0, HEADER, next, d + 1)?;
            d += 1;
            let dir = if op == Op::Read { write } else { 0 };
            let mut at = 0u32;
            while at < self.bs {
                let len = self.q.segment.min(self.bs - at);
                ring.set_desc(d, s.data.0 + u64::from(at), len, next | dir, d + 1)?;
                at += len;
                d += 1;
            }
            ring.set_desc(d, s.status.0, 1, write, 0)?;
        }
        self.pending[slot] = Some(Pending { block, started: Instant::now() });
        self.q.ring.push(head)
    }

    /// Checks a completed chain; any failure ends the run.
    fn complete(&mut self, id: u32, len: u32) -> anyhow::Result<()> {
        let now = Instant::now();
        let per = u32::from(self.q.descs_per_request);
        let queue = self.q.index;
        let slot = (id / per) as usize;
        let taken = if id.is_multiple_of(per) { self.pending.get_mut(slot).and_then(Option::take) } else { None };
        let Some(p) = taken else {
            bail!("queue {queue}: the backend completed chain {id}, which is not in flight");
        };
        self.free.push(slot);
        let s = self.q.slots[slot];
        let op = self.plan.op;
        let bytes = if op == Op::Flush { 0 } else { u64::from(self.bs) };
        let offset = p.block * u64::from(self.bs);
        let what = || format!("queue {queue}: {} of {bytes} bytes at offset {offset}", op.name());
        let status: u8 = self.mem.read_obj(s.status).context("reading a status byte")?;
        if u32::from(status) != VIRTIO_BLK_S_OK {
            let name = match u32::from(status) {
                VIRTIO_BLK_S_IOERR => "VIRTIO_BLK_S_IOERR".to_string(),
                VIRTIO_BLK_S_UNSUPP => "VIRTIO_BLK_S_UNSUPP".to_string(),
                _ if status == POISON => "none: the status byte was not written".to_string(),
                other => format!("unknown status {other}"),
            };
            bail!("{} failed: status {name}", what());
        }
        let want = if op == Op::Read { self.bs + 1 } else { 1 };
        ensure!(len == want, "{}: used length {len}, expected {want}", what());
        if let (Data::Pattern(seed), Op::Read) = (self.plan.data, op) {
            self.mem.read_slice(&mut self.scratch, s.data).context("reading data back")?;
            pattern(seed, p.block, &mut self.expected);
            if let Some(i) = self.scratch.iter().zip(&self.expected).position(|(a, b)| a != b) {
                bail!(
                    "{}: data differs from what was written, first at byte {} (read {:#04x}, wrote {:#04x})",
                    what(),
                    offset + i as u64,
                    self.scratch[i],
                    self.expected[i]
                );
            }
        }
        let counted = match self.plan.stop {
            Stop::Deadline { measure_from, end } => now >= measure_from && now <= end,
            Stop::Pass => true,
        };
        if counted {
            self.report.ios += 1;
            self.report.bytes += bytes;
            self.report.latency += now.saturating_duration_since(p.started);
        }
        Ok(())
    }
}

/// The verify pattern of one block: every 8 bytes depend on the seed and
/// their offset on the disk.
fn pattern(seed: u64, block: u64, buf: &mut [u8]) {
    let words = (buf.len() as u64).div_ceil(8);
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let v = splitmix(seed ^ (block * words + i as u64)).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64: enough for offsets and buffer contents.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn seed() -> u64 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()) << 40
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.0)
    }
}

/// A size: bytes, or with K/M/G/T (binary, like fio; `Ki`, `KiB`, `KB`
/// mean the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a size such as 4096, 4k, 128K, 256M or 1G"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{s:?}: unknown unit (K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// Seconds, fractions allowed.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86400.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_seconds_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(128 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
    }

    #[test]
    fn patterns_differ_by_block_and_seed() {
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
        pattern(1, 0, &mut a);
        pattern(1, 1, &mut b);
        pattern(2, 0, &mut c);
        assert_ne!(a, b);
        assert_ne!(a, c);
        let mut again = vec![0u8; 4096];
        pattern(1, 0, &mut again);
        assert_eq!(a, again);
    }

    #[test]
    fn report_units() {
        let r = Report { ios: 1000, bytes: 1000 * 4096, latency: Duration::from_millis(50), seconds: 2.0 };
        assert_eq!(r.iops(), 500.0);
        assert!((r.mbps() - 1.953125).abs() < 1e-9);
        assert!((r.lat_us() - 50.0).abs() < 1e-9);
        assert!(r.line().starts_with("iops=500 mbps=2.0 lat_us=50.0 "), "{}", r.line());
    }
}
