//! The vhost-user-blk frontend: QEMU's `vhost-user-blk-pci` device
//! connects to a unix socket of the engine and shares the guest's RAM
//! with it (a `share=on` memory backend), so the engine reads virtio-blk
//! requests from the guest's virtqueues and answers them in guest memory
//! directly: no copy through QEMU, no NBD framing.
//!
//! # Threads and tasks
//!
//! - **Accept loop** ([`VhostUserBlk::serve`], a thread of its own): one
//!   QEMU at a time. When it disconnects (VM stopped or restarted) the
//!   next connection is accepted; when the engine restarts, QEMU
//!   reconnects by itself (`reconnect=1` on its chardev).
//! - **Relay threads**, two per connection, between QEMU and the
//!   vhost-user-backend daemon (over a private socket): they pass the
//!   vhost-user messages (and their file descriptors) through unchanged and
//!   keep a copy of the backend request channel QEMU hands over
//!   (`SET_BACKEND_REQ_FD`), on which the config-change message is sent:
//!   vhost 0.18's `Backend` has no way to send it. Only control messages go
//!   this way; the data path is guest memory and eventfds.
//! - **Control thread** (the daemon's): features, memory table, vring
//!   addresses, `GET_CONFIG`, `GET_VRING_BASE` (which waits for the queue's
//!   requests in flight, see [`VhostUserBackend::stop_vring`]).
//! - **Vring threads**, one per queue: on a kick they pop the available
//!   descriptor chains, check them against the request layout
//!   (header, data, status byte) and hand each request to a task on the
//!   tokio runtime through its `Handle`. They never wait for I/O.
//! - **Request tasks** (tokio): run the request against the [`Device`]
//!   (the engine), copy data and the status byte into the guest's
//!   buffers, put the chain on the used ring and interrupt the guest when
//!   it asked to be (event index). Requests of one queue
//!   complete out of order, like on a real disk.
//! - **Size watcher** ([`VhostUserBlk::watch_size`], a tokio task): polls
//!   `Device::size()`; when the volume has grown it sends
//!   `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`, QEMU reads the config space
//!   again and raises a config interrupt, and the running guest sees the new
//!   capacity.
//!
//! # What the guest sees
//! A virtio-blk disk with 512-byte logical and 4096-byte physical blocks
//! by default (logical blocks as on QEMU's own virtio-blk: partition
//! tables and boot loaders made for 512-byte sectors work), flush, discard
//! and write zeroes (with unmap), several queues, event index and indirect
//! descriptors. Malformed requests (short chains, wrong directions, sectors
//! past the end, absurd lengths, buffers outside guest memory) get
//! `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`; no memory outside the
//! chain's descriptors is touched.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as ProtocolError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringMutex, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use crate::nbd::Device;

type Mem = GuestMemoryMmap<()>;
type AtomicMem = GuestMemoryAtomic<Mem>;
type Vring = VringMutex<AtomicMem>;

/// virtio-blk counts in 512-byte sectors whatever the block size.
const SECTOR: u64 = 512;
/// The replicas' block size: what the guest should align to.
const PHYSICAL_BLOCK: u32 = 4096;
/// Most queues a device can have (one vring thread each).
pub const MAX_QUEUES: u16 = 16;
/// Data segments per request: 2 descriptors (header, status) short of
/// QEMU's default queue size of 128, so a request fits the ring even
/// without indirect descriptors.
const SEG_MAX: u32 = 126;
/// Largest data segment; with [`SEG_MAX`] a request carries at most
/// 31.5 MiB, under [`MAX_IO`].
const SIZE_MAX: u32 = 256 * 1024;
/// Largest read or write accepted (what the engine and its replicas take
/// in one request).
const MAX_IO: u64 = crate::nbd::MAX_REQUEST as u64;
/// Largest discard / write-zeroes range the guest is told about (256 MiB).
const MAX_ZERO_SECTORS: u32 = 256 * 1024 * 1024 / SECTOR as u32;
/// Ranges in one discard / write-zeroes request.
const MAX_ZERO_SEGMENTS: u32 = 16;
/// A discard / write-zeroes range entry: sector, sectors, flags.
const ZERO_SEGMENT: usize = 16;
/// The request header: type, reserved, sector.
const HEADER: u64 = 16;
/// vhost-user's config space limit.
const CONFIG_SPACE: usize = 256;
/// How long stopping a queue or ending a connection waits for requests in
/// flight (a replica that hangs must not hang QEMU's main loop forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// vhost-user message numbers this module needs.
const FRONTEND_SET_BACKEND_REQ_FD: u32 = 21;
/// `VHOST_USER_SET_VRING_KICK`: QEMU starts a queue (the device is up).
const FRONTEND_SET_VRING_KICK: u32 = 12;
const BACKEND_CONFIG_CHANGE_MSG: u32 = 2;
const VHOST_USER_VERSION: u32 = 1;
const MESSAGE_HEADER: usize = 12;
/// Larger vhost-user payloads are refused (QEMU's largest is about 4 KiB).
const MAX_PAYLOAD: usize = 64 * 1024;
/// File descriptors one vhost-user message may carry.
const MAX_FDS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("vhost-user: {0}")]
    Protocol(String),
    #[error("invalid vhost-user-blk options: {0}")]
    Invalid(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VhostUserError {
    let what = what.into();
    move |source| VhostUserError::Io { what, source }
}

/// How the device looks to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Request queues offered, 1..=[`MAX_QUEUES`]; QEMU's `num-queues` must
    /// not be larger.
    pub num_queues: u16,
    /// Largest virtqueue accepted (QEMU's `queue-size`, 128 by default), a
    /// power of two up to 1024.
    pub max_queue_size: u16,
    /// The disk's serial number (`VIRTIO_BLK_T_GET_ID`, the guest's
    /// `/sys/block/vdX/serial`); at most 20 bytes.
    pub serial: String,
    /// Offer `VIRTIO_BLK_F_RO` and refuse writes.
    pub read_only: bool,
    /// 512 (default) or 4096; the physical block size is always 4096.
    pub logical_block_size: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            num_queues: 4,
            max_queue_size: 1024,
            serial: String::new(),
            read_only: false,
            logical_block_size: 512,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), VhostUserError> {
        let bad = |m: String| Err(VhostUserError::Invalid(m));
        if self.num_queues == 0 || self.num_queues > MAX_QUEUES {
            return bad(format!("{} queues (1 to {MAX_QUEUES})", self.num_queues));
        }
        if !self.max_queue_size.is_power_of_two() || self.max_queue_size > 1024 {
            return bad(format!("queue size {} (a power of two up to 1024)", self.max_queue_size));
        }
        if self.serial.len() > VIRTIO_BLK_ID_BYTES as usize {
            return bad(format!("serial {:?} is longer than {VIRTIO_BLK_ID_BYTES} bytes", self.serial));
        }
        if self.logical_block_size != 512 && self.logical_block_size != 4096 {
            return bad(format!("logical block size {} (512 or 4096)", self.logical_block_size));
        }
        Ok(())
    }
}

/// A vhost-user-blk server for one [`Device`].
pub struct VhostUserBlk {
    shared: Arc<Shared>,
}

struct Shared {
    device: Arc<dyn Device>,
    rt: tokio::runtime::Handle,
    opts: Options,
    /// The backend request channel of the QEMU connected now.
    channel: Mutex<Option<UnixStream>>,
    /// The size (bytes) the frontend last read from the config space.
    announced: AtomicU64,
    /// The size a config change was last sent for.
    notified: AtomicU64,
    /// The connected QEMU has started a queue. Config changes wait for
    /// this or for its first read of the config space: QEMU 7.2 can crash
    /// (SIGSEGV) on one that arrives while it is still setting the device
    /// up.
    started: std::sync::atomic::AtomicBool,
}

impl VhostUserBlk {
    /// A server for `device`; its requests run on `rt`.
    pub fn new(
        device: Arc<dyn Device>,
        opts: Options,
        rt: tokio::runtime::Handle,
    ) -> Result<VhostUserBlk, VhostUserError> {
        opts.validate()?;
        let shared = Shared {
            device,
            rt,
            opts,
            channel: Mutex::new(None),
            announced: AtomicU64::new(0),
            notified: AtomicU64::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(VhostUserBlk { shared: Arc::new(shared) })
    }

    /// Binds the socket QEMU connects to (a stale one is replaced).
    pub fn bind(path: &Path) -> Result<UnixListener, VhostUserError> {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).map_err(io_err(format!("cannot listen on {}", path.display())))
    }

    /// Serves QEMU connections on `listener`, one after the other, until an
    /// accept fails. Blocks: run it on a thread of its own.
    pub fn serve(&self, listener: UnixListener) -> Result<(), VhostUserError> {
        let public = listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
        let dir = public.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let mut n: u64 = 0;
        loop {
            let qemu = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
                Err(e) => {
                    return Err(VhostUserError::Io { what: "accepting a vhost-user connection".into(), source: e })
                }
            };
            n += 1;
            let private = dir.join(format!(".vu-{}-{n}", std::process::id()));
            tracing::info!(connection = n, "vhost-user frontend connected");
            match self.connection(qemu, &private) {
                Ok(()) => tracing::info!(connection = n, "vhost-user frontend disconnected"),
                Err(e) => tracing::warn!(connection = n, error = %e, "vhost-user connection ended"),
            }
        }
    }

    /// Tells the connected QEMU that the device's size changed, if it did
    /// since QEMU last read the config space. Returns whether a message was
    /// sent. [`VhostUserBlk::watch_size`] calls it periodically.
    pub fn notify_resized(&self) -> bool {
        let sh = &self.shared;
        let size = sh.device.size();
        let announced = sh.announced.load(Ordering::SeqCst);
        // Not while QEMU sets the device up: only once it has read the
        // config space (a fresh QEMU) or started a queue (one that
        // reconnected after an engine restart, which does not read it
        // again).
        let up = announced != 0 || sh.started.load(Ordering::SeqCst);
        if !up || size == announced || size == sh.notified.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(mut channel) = sh.channel.lock() else { return false };
        let Some(stream) = channel.as_mut() else { return false };
        match send_config_change(stream) {
            Ok(()) => {
                sh.notified.store(size, Ordering::SeqCst);
                tracing::info!(size, "vhost-user: config change sent (device size)");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "vhost-user: the backend request channel failed");
                *channel = None;
                false
            }
        }
    }

    /// Polls the device's size every `every` and calls
    /// [`VhostUserBlk::notify_resized`]; runs until the task is dropped.
    pub async fn watch_size(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.notify_resized()).await;
        }
    }

    /// Serves one QEMU connection until it ends.
    fn connection(&self, qemu: UnixStream, private: &Path) -> Result<(), VhostUserError> {
        let sh = &self.shared;
        // Unknown until this QEMU reads the config space; a QEMU that
        // reconnects after an engine restart gets one config change, so it
        // learns a size that changed meanwhile.
        sh.announced.store(0, Ordering::SeqCst);
        sh.notified.store(0, Ordering::SeqCst);
        sh.started.store(false, Ordering::SeqCst);
        // The daemon accepts from a listener of its own; it exists only
        // until our relay end has connected.
        let _ = std::fs::remove_file(private);
        let inner = UnixListener::bind(private).map_err(io_err(format!("cannot listen on {}", private.display())))?;
        let ours = UnixStream::connect(private);
        let _ = std::fs::remove_file(private);
        let ours = ours.map_err(io_err("connecting to the vhost-user daemon"))?;

        let session = Session::new(sh.clone());
        let mem = session.memory();
        let mut daemon = VhostUserDaemon::new("sheaf-vhost-user".into(), session.clone(), mem)
            .map_err(|e| VhostUserError::Protocol(e.to_string()))?;
        let stop_vring_threads = |daemon: &VhostUserDaemon<Session>| {
            for h in daemon.get_epoll_handlers() {
                h.send_exit_event();
            }
        };
        let mut listener = Listener::from(inner);
        if let Err(e) = daemon.start(&mut listener) {
            stop_vring_threads(&daemon);
            return Err(VhostUserError::Protocol(e.to_string()));
        }

        let relays = Self::relays(sh, &qemu, &ours);
        if relays.is_err() {
            // Nothing feeds the daemon: end its connection.
            let _ = ours.shutdown(std::net::Shutdown::Both);
        }
        let result = daemon.wait();
        let _ = qemu.shutdown(std::net::Shutdown::Both);
        let _ = ours.shutdown(std::net::Shutdown::Both);
        let relays = relays.map(|threads| {
            for t in threads {
                let _ = t.join();
            }
        });
        stop_vring_threads(&daemon);
        if !session.drain_all(DRAIN_TIMEOUT) {
            tracing::warn!("vhost-user: requests still in flight after the connection ended");
        }
        if let Ok(mut c) = sh.channel.lock() {
            *c = None;
        }
        relays?;
        match result {
            Ok(()) => Ok(()),
            Err(vhost_user_backend::Error::HandleRequest(
                ProtocolError::Disconnected | ProtocolError::PartialMessage | ProtocolError::SocketBroken(_),
            )) => Ok(()),
            Err(e) => Err(VhostUserError::Protocol(e.to_string())),
        }
    }
}

impl VhostUserBlk {
    /// Starts the two relay threads between QEMU and the daemon. On error
    /// the caller shuts the sockets, which ends whatever did start.
    fn relays(
        sh: &Arc<Shared>,
        qemu: &UnixStream,
        ours: &UnixStream,
    ) -> Result<[std::thread::JoinHandle<()>; 2], VhostUserError> {
        let clone = |s: &UnixStream| s.try_clone().map_err(io_err("duplicating a socket"));
        let (qemu_r, qemu_w, ours_r, ours_w) = (clone(qemu)?, clone(qemu)?, clone(ours)?, clone(ours)?);
        let channel_of = sh.clone();
        let up = std::thread::Builder::new()
            .name("vhost-user-in".into())
            .spawn(move || relay(&qemu_r, &ours_w, |m| channel_of.take_channel(m)))
            .map_err(io_err("starting a relay thread"))?;
        let down = std::thread::Builder::new()
            .name("vhost-user-out".into())
            .spawn(move || relay(&ours_r, &qemu_w, |_| {}))
            .map_err(io_err("starting a relay thread"))?;
        Ok([up, down])
    }
}

impl Shared {
    fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut f = bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_TOPOLOGY)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_MQ)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_F_VERSION_1)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.opts.read_only {
            f |= bit(VIRTIO_BLK_F_RO);
        } else {
            f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    /// The virtio-blk config space for a device of `size` bytes.
    fn config_space(&self, size: u64) -> [u8; CONFIG_SPACE] {
        let mut c = [0u8; CONFIG_SPACE];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        let logical = self.opts.logical_block_size;
        put(0, &(size / SECTOR).to_le_bytes()); // capacity
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &logical.to_le_bytes()); // blk_size
        put(24, &[(PHYSICAL_BLOCK / logical).trailing_zeros() as u8]); // physical_block_exp
        put(26, &((PHYSICAL_BLOCK / logical) as u16).to_le_bytes()); // min_io_size (logical blocks)
        put(34, &self.opts.num_queues.to_le_bytes());
        put(36, &MAX_ZERO_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_ZERO_SEGMENTS.to_le_bytes()); // max_discard_seg
        put(44, &(PHYSICAL_BLOCK / SECTOR as u32).to_le_bytes()); // discard_sector_alignment (sectors)
        put(48, &MAX_ZERO_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_ZERO_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        c
    }

    /// Keeps a copy of the backend request channel QEMU sends.
    fn take_channel(&self, m: &Message) {
        if m.request() == FRONTEND_SET_VRING_KICK {
            self.started.store(true, Ordering::SeqCst);
        }
        if m.request() != FRONTEND_SET_BACKEND_REQ_FD {
            return;
        }
        let Some(fd) = m.fds.first() else { return };
        match fd.try_clone() {
            Ok(fd) => {
                let s = UnixStream::from(fd);
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                if let Ok(mut c) = self.channel.lock() {
                    *c = Some(s);
                }
            }
            Err(e) => tracing::warn!(error = %e, "vhost-user: cannot keep the backend request channel"),
        }
    }
}

fn send_config_change(s: &mut UnixStream) -> io::Result<()> {
    let mut m = [0u8; MESSAGE_HEADER];
    m[0..4].copy_from_slice(&BACKEND_CONFIG_CHANGE_MSG.to_le_bytes());
    m[4..8].copy_from_slice(&VHOST_USER_VERSION.to_le_bytes());
    // Size 0, and no NEED_REPLY: QEMU answers nothing.
    s.write_all(&m)
}

// ---------------------------------------------------------------------
// The relay between QEMU and the daemon.

/// One vhost-user message: header, payload, the file descriptors sent
/// with it.
struct Message {
    header: [u8; MESSAGE_HEADER],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.header[0], self.header[1], self.header[2], self.header[3]])
    }
    fn size(&self) -> usize {
        u32::from_le_bytes([self.header[8], self.header[9], self.header[10], self.header[11]]) as usize
    }
}

/// Fills `buf`, keeping any file descriptors that come with it. Returns
/// false on end of stream before the first byte.
fn recv_exact(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = match rustix::net::recvmsg(
            s,
            &mut [IoSliceMut::new(&mut buf[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if r.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::other("too many file descriptors in one message"));
        }
        if r.bytes == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += r.bytes;
    }
    Ok(true)
}

fn recv_message(s: &UnixStream) -> io::Result<Option<Message>> {
    let mut m = Message { header: [0; MESSAGE_HEADER], payload: Vec::new(), fds: Vec::new() };
    if !recv_exact(s, &mut m.header, &mut m.fds)? {
        return Ok(None);
    }
    let size = m.size();
    if size > MAX_PAYLOAD {
        return Err(io::Error::other(format!("vhost-user message of {size} bytes")));
    }
    m.payload = vec![0; size];
    if size > 0 && !recv_exact(s, &mut m.payload, &mut m.fds)? {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(m))
}

fn send_message(mut s: &UnixStream, m: &Message) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = m.fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("file descriptors do not fit the control buffer"));
    }
    let total = MESSAGE_HEADER + m.payload.len();
    let sent = loop {
        match rustix::net::sendmsg(
            s,
            &[IoSlice::new(&m.header), IoSlice::new(&m.payload)],
            &mut control,
            rustix::net::SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if sent < total {
        // The descriptors went with the first bytes; the rest is plain.
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(&m.header);
        all.extend_from_slice(&m.payload);
        s.write_all(&all[sent..])?;
    }
    Ok(())
}

/// Passes messages from `from` to `to` until either side closes, then
/// shuts both down (which ends the relay of the other direction too).
fn relay(from: &UnixStream, to: &UnixStream, mut inspect: impl FnMut(&Message)) {
    loop {
        match recv_message(from) {
            Ok(Some(m)) => {
                inspect(&m);
                if let Err(e) = send_message(to, &m) {
                    tracing::debug!(error = %e, "vhost-user relay: send failed");
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "vhost-user relay: receive failed");
                break;
            }
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------------
// One connection's device state, as the vhost-user-backend daemon sees it.

#[derive(Clone)]
struct Session(Arc<SessionState>);

struct SessionState {
    shared: Arc<Shared>,
    mem: Mutex<AtomicMem>,
    event_idx: AtomicBool,
    inflight: Vec<Inflight>,
}

/// Requests of one queue handed to tasks and not yet on the used ring.
#[derive(Default)]
struct Inflight {
    n: Mutex<usize>,
    idle: Condvar,
}

impl Inflight {
    fn finish(&self) {
        if let Ok(mut n) = self.n.lock() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.idle.notify_all();
            }
        }
    }

    fn wait_idle(&self, timeout: Duration) -> bool {
        let Ok(n) = self.n.lock() else { return false };
        match self.idle.wait_timeout_while(n, timeout, |n| *n > 0) {
            Ok((n, _)) => *n == 0,
            Err(_) => false,
        }
    }
}

impl Session {
    fn new(shared: Arc<Shared>) -> Session {
        let queues = shared.opts.num_queues as usize;
        Session(Arc::new(SessionState {
            shared,
            mem: Mutex::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
            event_idx: AtomicBool::new(false),
            inflight: (0..queues).map(|_| Inflight::default()).collect(),
        }))
    }

    fn memory(&self) -> AtomicMem {
        match self.0.mem.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn drain_all(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.0.inflight.iter().all(|f| f.wait_idle(deadline.saturating_duration_since(std::time::Instant::now())))
    }

    /// Takes every available chain of `vring` (queue `queue`) and starts a
    /// task for each.
    fn process_queue(&self, vring: &Vring, queue: usize) {
        let Some(inflight) = self.0.inflight.get(queue) else { return };
        let mem = self.memory().memory();
        loop {
            // Counted under the vring's lock: GET_VRING_BASE marks the queue
            // not ready under the same lock, so stop_vring sees every chain
            // popped before.
            let chain = {
                let mut state = vring.get_mut();
                let chain = state.get_queue_mut().pop_descriptor_chain(mem.clone());
                if chain.is_some() {
                    if let Ok(mut n) = inflight.n.lock() {
                        *n += 1;
                    }
                }
                chain
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let parsed = parse(&Buffers::collect(chain), &*mem);
            let (session, vring, mem) = (self.clone(), vring.clone(), mem.clone());
            self.0.shared.rt.spawn(async move {
                let sh = &session.0.shared;
                let used = answer(parsed, &*sh.device, &*mem, &sh.opts).await;
                complete(&vring, head, used);
                if let Some(f) = session.0.inflight.get(queue) {
                    f.finish();
                }
            });
        }
    }
}

/// Puts a chain on the used ring and interrupts the guest if it wants.
fn complete(vring: &Vring, head: u16, used: u32) {
    let mut state = vring.get_mut();
    if let Err(e) = state.add_used(head, used) {
        tracing::warn!(error = %e, head, "vhost-user: cannot return a descriptor chain");
        return;
    }
    if state.needs_notification().unwrap_or(true) {
        if let Err(e) = state.signal_used_queue() {
            tracing::debug!(error = %e, "vhost-user: cannot interrupt the guest");
        }
    }
}

impl VhostUserBackend for Session {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.0.shared.opts.num_queues as usize
    }

    fn max_queue_size(&self) -> usize {
        self.0.shared.opts.max_queue_size as usize
    }

    fn features(&self) -> u64 {
        self.0.shared.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::SeqCst);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let (offset, len) = (offset as usize, size as usize);
        let Some(end) = offset.checked_add(len).filter(|e| *e <= CONFIG_SPACE) else {
            return Vec::new();
        };
        let bytes = self.0.shared.device.size();
        if offset < 8 {
            self.0.shared.announced.store(bytes, Ordering::SeqCst);
        }
        self.0.shared.config_space(bytes)[offset..end].to_vec()
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // Nothing in it is writable (no VIRTIO_BLK_F_CONFIG_WCE).
        Ok(())
    }

    fn update_memory(&self, mem: AtomicMem) -> io::Result<()> {
        if let Ok(mut m) = self.0.mem.lock() {
            *m = mem;
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::warn!(error = %e, "vhost-user: no exit event for a vring thread");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(f) = self.0.inflight.get(queue_index as usize) {
            if !f.wait_idle(DRAIN_TIMEOUT) {
                tracing::warn!(queue = queue_index, "vhost-user: requests still in flight as the queue stops");
            }
        }
        Ok(())
    }

    fn handle_event(&self, device_event: u16, _evset: EventSet, vrings: &[Vring], thread_id: usize) -> io::Result<()> {
        // One queue per thread: the thread's only vring is queue thread_id.
        let Some(vring) = vrings.get(device_event as usize) else { return Ok(()) };
        if self.0.event_idx.load(Ordering::SeqCst) {
            loop {
                let _ = vring.disable_notification();
                self.process_queue(vring, thread_id);
                // Chains that came in while notifications were off.
                if !vring.enable_notification().unwrap_or(false) {
                    break;
                }
            }
        } else {
            self.process_queue(vring, thread_id);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------
// Requests.

/// A guest buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// A descriptor chain as the guest gave it.
#[derive(Debug, Default)]
struct Buffers {
    /// What the device may read, in order.
    readable: Vec<Segment>,
    /// What the device may write, in order (the status byte last).
    writable: Vec<Segment>,
    /// A readable descriptor came after a writable one, or one runs past
    /// the end of the address space.
    invalid: bool,
}

impl Buffers {
    fn collect(descs: impl Iterator<Item = Descriptor>) -> Buffers {
        let mut b = Buffers::default();
        for d in descs {
            let seg = Segment { addr: d.addr(), len: d.len() };
            if seg.addr.0.checked_add(u64::from(seg.len)).is_none() {
                b.invalid = true;
            }
            if d.is_write_only() {
                b.writable.push(seg);
            } else {
                if !b.writable.is_empty() {
                    b.invalid = true;
                }
                b.readable.push(seg);
            }
        }
        b
    }
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// The part of a stream of segments from byte `skip` on, `len` bytes long.
fn sub(segs: &[Segment], mut skip: u64, mut len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for s in segs {
        if len == 0 {
            break;
        }
        let l = u64::from(s.len);
        if skip >= l {
            skip -= l;
            continue;
        }
        // skip < l <= u32::MAX, so these fit; segments end inside the
        // address space (checked when the chain is collected).
        let take = (l - skip).min(len);
        out.push(Segment { addr: GuestAddress(s.addr.0.wrapping_add(skip)), len: take as u32 });
        len -= take;
        skip = 0;
    }
    out
}

/// Reads a stream of guest buffers; None if one is outside guest memory.
fn gather<M: GuestMemory>(mem: &M, segs: &[Segment]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(total(segs)).ok()?];
    let mut at = 0;
    for s in segs {
        let end = at + s.len as usize;
        mem.read_slice(&mut buf[at..end], s.addr).ok()?;
        at = end;
    }
    Some(buf)
}

/// Whether every segment is guest memory the device may write.
fn writable<M: GuestMemory>(mem: &M, segs: &[Segment]) -> bool {
    segs.iter().all(|s| GuestMemory::check_range(mem, s.addr, s.len as usize, Permissions::Write))
}

/// Writes `data` into the stream of guest buffers (checked first).
fn scatter<M: GuestMemory>(mem: &M, segs: &[Segment], data: &[u8]) -> bool {
    if !writable(mem, segs) {
        return false;
    }
    let mut at = 0;
    for s in segs {
        if at >= data.len() {
            break;
        }
        let end = (at + s.len as usize).min(data.len());
        if mem.write_slice(&data[at..end], s.addr).is_err() {
            return false;
        }
        at = end;
    }
    true
}

/// A request that passed the layout checks.
#[derive(Debug)]
struct Request {
    kind: u32,
    sector: u64,
    /// The data the request carries (OUT, DISCARD, WRITE_ZEROES) or
    /// receives (IN, GET_ID).
    data: Vec<Segment>,
    data_len: u64,
    /// Where the status byte goes.
    status: GuestAddress,
}

#[derive(Debug)]
enum Parsed {
    Request(Request),
    /// Answered with this status without touching the device.
    Reject {
        status: GuestAddress,
        code: u8,
    },
    /// No writable byte for a status: the chain is only given back.
    Unanswerable,
}

/// Checks a chain against the virtio-blk request layout: a 16-byte header
/// the device reads, the data, a status byte the device writes.
fn parse<M: GuestMemory>(b: &Buffers, mem: &M) -> Parsed {
    let Some(last) = b.writable.iter().rev().find(|s| s.len > 0) else { return Parsed::Unanswerable };
    let Some(status) = last.addr.0.checked_add(u64::from(last.len) - 1).map(GuestAddress) else {
        return Parsed::Unanswerable;
    };
    let reject = |code: u32| Parsed::Reject { status, code: code as u8 };
    let readable = total(&b.readable);
    let writable = total(&b.writable) - 1;
    if b.invalid || readable < HEADER {
        return reject(VIRTIO_BLK_S_IOERR);
    }
    let Some(h) = gather(mem, &sub(&b.readable, 0, HEADER)) else { return reject(VIRTIO_BLK_S_IOERR) };
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&h[8..16]);
    let sector = u64::from_le_bytes(s);
    let (data, data_len) = match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => {
            if readable > HEADER {
                return reject(VIRTIO_BLK_S_IOERR);
            }
            (sub(&b.writable, 0, writable), writable)
        }
        VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES | VIRTIO_BLK_T_FLUSH => {
            if writable > 0 {
                return reject(VIRTIO_BLK_S_IOERR);
            }
            (sub(&b.readable, HEADER, readable - HEADER), readable - HEADER)
        }
        _ => return reject(VIRTIO_BLK_S_UNSUPP),
    };
    Parsed::Request(Request { kind, sector, data, data_len, status })
}

/// Runs a parsed chain; returns the bytes written into the guest's
/// buffers (data and status), the used length.
async fn answer<M: GuestMemory + Sync>(parsed: Parsed, dev: &dyn Device, mem: &M, opts: &Options) -> u32 {
    let (status, code, written) = match parsed {
        Parsed::Unanswerable => return 0,
        Parsed::Reject { status, code } => (status, code, 0),
        Parsed::Request(r) => {
            let (code, written) = execute(&r, dev, mem, opts).await;
            (r.status, code, written)
        }
    };
    if mem.write_slice(&[code], status).is_ok() {
        written + 1
    } else {
        written
    }
}

/// The byte range of `sectors` sectors at `sector`, if it is inside a
/// device of `size` bytes.
fn range(sector: u64, bytes: u64, size: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR)?;
    (offset.checked_add(bytes)? <= size).then_some(offset)
}

/// Runs a request; returns the status and the data bytes written into
/// guest memory.
async fn execute<M: GuestMemory + Sync>(r: &Request, dev: &dyn Device, mem: &M, opts: &Options) -> (u8, u32) {
    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    let failed = |what: &str, e: (u32, String)| {
        tracing::debug!(error = %e.1, errno = e.0, what, "vhost-user: request failed");
        (IOERR, 0)
    };
    let size = dev.size();
    match r.kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            if r.kind == VIRTIO_BLK_T_OUT && opts.read_only {
                return (IOERR, 0);
            }
            if !r.data_len.is_multiple_of(SECTOR) || r.data_len > MAX_IO {
                return (IOERR, 0);
            }
            let Some(offset) = range(r.sector, r.data_len, size) else { return (IOERR, 0) };
            if r.data_len == 0 {
                return (OK, 0);
            }
            if r.kind == VIRTIO_BLK_T_IN {
                if !writable(mem, &r.data) {
                    return (IOERR, 0);
                }
                match dev.read(offset, r.data_len as u32).await {
                    Ok(d) if d.len() as u64 == r.data_len => {
                        if scatter(mem, &r.data, &d) {
                            (OK, r.data_len as u32)
                        } else {
                            (IOERR, 0)
                        }
                    }
                    Ok(_) => (IOERR, 0),
                    Err(e) => failed("read", e),
                }
            } else {
                let Some(d) = gather(mem, &r.data) else { return (IOERR, 0) };
                match dev.write(offset, d).await {
                    Ok(()) => (OK, 0),
                    Err(e) => failed("write", e),
                }
            }
        }
        VIRTIO_BLK_T_FLUSH => match dev.flush().await {
            Ok(()) => (OK, 0),
            Err(e) => failed("flush", e),
        },
        VIRTIO_BLK_T_GET_ID => {
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            let serial = opts.serial.as_bytes();
            let n = serial.len().min(id.len());
            id[..n].copy_from_slice(&serial[..n]);
            let len = (r.data_len as usize).min(id.len());
            let data = sub(&r.data, 0, len as u64);
            if scatter(mem, &data, &id[..len]) {
                (OK, len as u32)
            } else {
                (IOERR, 0)
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if opts.read_only {
                return (IOERR, 0);
            }
            let count = r.data_len / ZERO_SEGMENT as u64;
            if !r.data_len.is_multiple_of(ZERO_SEGMENT as u64) || count == 0 || count > u64::from(MAX_ZERO_SEGMENTS) {
                return (IOERR, 0);
            }
            let Some(raw) = gather(mem, &r.data) else { return (IOERR, 0) };
            // Every range is checked before any is zeroed.
            let mut ranges = Vec::new();
            for s in raw.chunks_exact(ZERO_SEGMENT) {
                let mut b = [0u8; 8];
                b.copy_from_slice(&s[0..8]);
                let sector = u64::from_le_bytes(b);
                let sectors = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
                let flags = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
                let allowed = if r.kind == VIRTIO_BLK_T_DISCARD { 0 } else { VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP };
                if flags & !allowed != 0 {
                    return (UNSUPP, 0);
                }
                let bytes = u64::from(sectors) * SECTOR;
                let Some(offset) = range(sector, bytes, size) else { return (IOERR, 0) };
                ranges.push((offset, bytes));
            }
            // Discarded ranges read as zeros afterwards (the replicas punch
            // holes where no older layer holds data), so both are one
            // operation; an unmap flag changes nothing.
            let chunk = u64::from(MAX_ZERO_SECTORS) * SECTOR;
            for (mut offset, mut bytes) in ranges {
                while bytes > 0 {
                    let n = bytes.min(chunk);
                    if let Err(e) = dev.write_zeroes(offset, n as u32).await {
                        return failed("write zeroes", e);
                    }
                    offset += n;
                    bytes -= n;
                }
            }
            (OK, 0)
        }
        _ => (UNSUPP, 0),
    }
}

#[cfg(test)]
mod tests;
