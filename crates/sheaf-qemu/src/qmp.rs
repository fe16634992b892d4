//! An async client for the QEMU Machine Protocol (QMP).
//!
//! Sheaf runs one QEMU process per virtual machine and drives it over a QMP
//! unix socket (`-qmp unix:PATH,server=on,wait=off`). QMP is line-oriented
//! JSON: the server opens with a greeting (`{"QMP": {"version", "capabilities"}}`),
//! the client leaves capabilities-negotiation mode with `qmp_capabilities`,
//! and then sends `{"execute", "arguments", "id"}` commands. The server answers
//! each with `{"return": ..., "id"}` or `{"error": {"class", "desc"}, "id"}`
//! and, at any moment — including between a command and its answer — sends
//! asynchronous events (`{"event", "data", "timestamp"}`).
//!
//! # Task model
//!
//! [`Qmp::connect`] reads the greeting, then spawns **one owner task** that
//! alone owns both halves of the socket:
//!
//! * Callers ([`Qmp::execute`] and the typed helpers) take `&self`, may run
//!   concurrently (and [`Qmp`] is cheap to clone), and send a request — the
//!   serialized line, a numeric `id` unique to the connection, and a
//!   [`tokio::sync::oneshot`] sender — over a bounded **request channel**.
//! * The owner task queues the line for writing, records the oneshot sender
//!   under its `id` in a pending table, and reads the socket at the same time
//!   (a single `select!`, so a slow reader never blocks writing and vice
//!   versa). Lines are framed by the task itself: partial lines across reads
//!   and replies of many megabytes are fine; a line longer than
//!   [`MAX_LINE`] is dropped with a warning.
//! * An answer carrying an `id` resolves that caller's **oneshot reply**; an
//!   `error` answer becomes [`QmpError::Command`]. Answers for callers that
//!   already timed out are dropped.
//! * Events go to a [`tokio::sync::broadcast`] channel ([`Qmp::events`]) and
//!   are also kept in a small ring of recent events ([`Qmp::recent_events`]),
//!   which is convenient for tests and for events that arrive before anyone
//!   subscribes.
//! * When the socket closes (QEMU exited, or was told to `quit`) or fails,
//!   every pending and every later call fails with
//!   [`QmpError::Disconnected`], event subscribers see
//!   [`broadcast::error::RecvError::Closed`], and [`Qmp::closed`] resolves.
//!   When every [`Qmp`] handle is dropped the task ends and closes the socket.
//!
//! Each call has a deadline (default [`DEFAULT_TIMEOUT`], see
//! [`Qmp::with_timeout`] and [`Qmp::execute_timeout`]) that covers queueing,
//! writing and waiting for the answer.
//!
//! Malformed input never panics: a line that is not JSON, not an object, or
//! of no known shape is logged and counted ([`Qmp::malformed_lines`]) and the
//! connection keeps going; an answer that carries a known `id` but has a bad
//! shape fails that call with [`QmpError::Protocol`].
//!
//! QMP allows a single client per monitor socket; a second client is accepted
//! by the kernel but gets no greeting until the first disconnects, so its
//! [`Qmp::connect`] times out.
//!
//! QEMU has no `query-pid` command: take the process id from the child
//! process handle or from QEMU's `-pidfile`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, warn};

/// Default deadline of a call, and of the greeting in [`Qmp::connect`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest line accepted from QEMU; longer lines are dropped with a warning.
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// Bytes asked for per socket read.
const READ_CHUNK: usize = 64 * 1024;

/// The owner task stops taking new requests while this much is unwritten.
const OUT_HIGH_WATER: usize = 1024 * 1024;

/// Requests buffered in the request channel before callers wait.
const REQUEST_QUEUE: usize = 64;

/// Prune timed-out pending calls once the table holds this many.
const PRUNE_AT: usize = 32;

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to the monitor socket failed.
    #[error("connect to QMP socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the greeting failed.
    #[error("QMP I/O: {0}")]
    Io(#[from] io::Error),
    /// The connection is closed: QEMU exited, quit, or the socket failed.
    #[error("QMP connection closed (QEMU exited?)")]
    Disconnected,
    /// QEMU answered the command with an error.
    #[error("QMP command failed: {class}: {desc}")]
    Command {
        /// Error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        /// Human-readable description.
        desc: String,
    },
    /// Input that does not follow the protocol, or a reply of an unexpected shape.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// No answer within the deadline.
    #[error("QMP command {command} timed out after {timeout:?}")]
    Timeout {
        /// The command (or `greeting`).
        command: String,
        /// The deadline that passed.
        timeout: Duration,
    },
}

/// Connection settings for [`Qmp::connect_with`].
#[derive(Debug, Clone)]
pub struct QmpConfig {
    /// Deadline for the greeting and the default deadline of every call.
    pub timeout: Duration,
    /// Capacity of the event broadcast channel; slow subscribers lag beyond it.
    pub event_capacity: usize,
    /// How many recent events [`Qmp::recent_events`] keeps.
    pub recent_events: usize,
}

impl Default for QmpConfig {
    fn default() -> Self {
        QmpConfig { timeout: DEFAULT_TIMEOUT, event_capacity: 256, recent_events: 64 }
    }
}

/// `major.minor.micro` of a QEMU version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTriple {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

/// The QEMU version, as in the greeting and in `query-version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuVersion {
    /// Upstream version.
    pub qemu: VersionTriple,
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7`.
    #[serde(default)]
    pub package: String,
}

/// The server greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpGreeting {
    /// QEMU version.
    pub version: QemuVersion,
    /// Capabilities the server offers (e.g. `oob`); none are enabled.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// An asynchronous event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    /// Event name, e.g. `SHUTDOWN`, `STOP`, `RESUME`, `MIGRATION`.
    pub event: String,
    /// Event data; `Null` when the event has none.
    #[serde(default)]
    pub data: Value,
    /// When QEMU emitted the event.
    #[serde(default)]
    pub timestamp: Option<QmpTimestamp>,
}

/// Event timestamp (host wall clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpTimestamp {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// Answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRunState {
    /// Whether the vCPUs are running.
    pub running: bool,
    /// Run state, e.g. `prelaunch`, `running`, `paused`, `shutdown`, `inmigrate`.
    pub status: String,
}

/// Answer of `query-kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmInfo {
    /// KVM is in use by this QEMU.
    pub enabled: bool,
    /// KVM is available on the host.
    pub present: bool,
}

/// One entry of `query-chardev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChardevInfo {
    /// Chardev id.
    pub label: String,
    /// Backend description, e.g. `unix:/run/x.sock,server=on` or `pty:/dev/pts/3`.
    pub filename: String,
    /// Whether a frontend has it open.
    #[serde(rename = "frontend-open", default)]
    pub frontend_open: bool,
}

/// Answer of `query-migrate`: the status, plus every other member as QEMU sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, ... ; absent before any migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `ram`, `disk`, `total-time`, `error-desc`, ...
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Parameters of `announce-self` (all in milliseconds except `rounds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceParams {
    /// Delay before the first round.
    pub initial: u64,
    /// Longest delay between rounds.
    pub max: u64,
    /// Number of rounds.
    pub rounds: u64,
    /// Delay increase per round.
    pub step: u64,
}

/// One entry of `query-blockstats`: a block device (a `-device` with a
/// drive, named by `qdev`; by `device` for an old-style `-drive`) and the
/// I/O statistics of its root node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStats {
    /// The `-drive` id; empty for devices on `-blockdev` nodes.
    #[serde(default)]
    pub device: String,
    /// The guest device's QOM path or id, e.g. `/machine/peripheral/data/virtio-backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    /// The root node's name (Sheaf names it `drive-<disk name>`).
    #[serde(rename = "node-name", default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Counters since QEMU started (or the device was added).
    #[serde(default)]
    pub stats: BlockDeviceStats,
}

/// QEMU's `BlockDeviceStats` (the members Sheaf reads; others are ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDeviceStats {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub unmap_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
    pub unmap_operations: u64,
    pub rd_total_time_ns: u64,
    pub wr_total_time_ns: u64,
    pub flush_total_time_ns: u64,
    pub unmap_total_time_ns: u64,
    pub failed_rd_operations: u64,
    pub failed_wr_operations: u64,
    pub failed_flush_operations: u64,
}

impl BlockStats {
    /// The Sheaf disk name of this device: its node `drive-<name>`.
    pub fn disk_name(&self) -> Option<&str> {
        self.node_name.as_deref().and_then(|n| n.strip_prefix("drive-")).filter(|n| !n.is_empty())
    }
}

impl Default for AnnounceParams {
    /// QEMU's own defaults for self-announcement.
    fn default() -> Self {
        AnnounceParams { initial: 50, max: 550, rounds: 5, step: 50 }
    }
}

type Reply = Result<Value, QmpError>;

struct Request {
    id: u64,
    command: String,
    line: Vec<u8>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Debug)]
struct Shared {
    next_id: AtomicU64,
    malformed: AtomicU64,
    recent: Mutex<VecDeque<QmpEvent>>,
    recent_cap: usize,
}

impl Shared {
    fn remember(&self, event: QmpEvent) {
        if self.recent_cap == 0 {
            return;
        }
        let mut ring = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while ring.len() >= self.recent_cap {
            ring.pop_front();
        }
        ring.push_back(event);
    }
}

/// A connected QMP client. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Qmp {
    requests: mpsc::Sender<Request>,
    events: broadcast::WeakSender<QmpEvent>,
    shared: Arc<Shared>,
    greeting: Arc<QmpGreeting>,
    timeout: Duration,
}

impl fmt::Debug for Qmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.greeting.version.qemu)
            .field("connected", &self.is_connected())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path` with [`QmpConfig::default`]: reads
    /// the greeting and negotiates capabilities (none are enabled).
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        Self::connect_with(path, QmpConfig::default()).await
    }

    /// Connects to the QMP socket at `path` with explicit settings.
    pub async fn connect_with(path: &Path, config: QmpConfig) -> Result<Qmp, QmpError> {
        let handshake = async {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| QmpError::Connect { path: path.to_path_buf(), source })?;
            let (read, write) = stream.into_split();
            let mut reader = LineReader::new(read, MAX_LINE);
            let greeting = loop {
                match reader.next_frame().await? {
                    Frame::Line(line) if is_blank(&line) => continue,
                    Frame::Line(line) => break parse_greeting(&line)?,
                    Frame::Oversized(n) => {
                        return Err(QmpError::Protocol(format!("greeting line of {n} bytes is too long")))
                    }
                    Frame::Eof => return Err(QmpError::Disconnected),
                }
            };
            Ok::<_, QmpError>((reader, write, greeting))
        };
        let (reader, write, greeting) = tokio::time::timeout(config.timeout, handshake)
            .await
            .map_err(|_| QmpError::Timeout { command: "greeting".into(), timeout: config.timeout })??;
        debug!(socket = %path.display(), version = ?greeting.version.qemu, "QMP greeting");

        let (events_tx, _) = broadcast::channel(config.event_capacity.max(1));
        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            malformed: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(config.recent_events)),
            recent_cap: config.recent_events,
        });
        let qmp = Qmp {
            requests: requests_tx,
            events: events_tx.downgrade(),
            shared: Arc::clone(&shared),
            greeting: Arc::new(greeting),
            timeout: config.timeout,
        };
        let owner = Owner {
            socket: path.display().to_string(),
            reader,
            writer: write,
            requests: requests_rx,
            events: events_tx,
            shared,
            pending: HashMap::new(),
            out: Vec::new(),
            write_failed: false,
        };
        tokio::spawn(owner.run());
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// The greeting QEMU sent.
    pub fn greeting(&self) -> &QmpGreeting {
        &self.greeting
    }

    /// The default deadline of calls made through this handle.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A handle on the same connection whose calls use `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Qmp {
        Qmp { timeout, ..self.clone() }
    }

    /// Subscribes to events sent from now on. After a disconnect the
    /// receiver reports [`broadcast::error::RecvError::Closed`]; a subscriber
    /// that falls behind by more than [`QmpConfig::event_capacity`] events
    /// gets [`broadcast::error::RecvError::Lagged`].
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        match self.events.upgrade() {
            Some(sender) => sender.subscribe(),
            // Connection gone: hand out a receiver that is already closed.
            None => broadcast::channel(1).1,
        }
    }

    /// The most recent events (oldest first), at most [`QmpConfig::recent_events`].
    pub fn recent_events(&self) -> Vec<QmpEvent> {
        let ring = self.shared.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.iter().cloned().collect()
    }

    /// How many malformed lines QEMU sent on this connection so far.
    pub fn malformed_lines(&self) -> u64 {
        self.shared.malformed.load(Ordering::Relaxed)
    }

    /// Whether the connection is still open.
    pub fn is_connected(&self) -> bool {
        !self.requests.is_closed()
    }

    /// Resolves once the connection is closed and every call has been failed.
    pub async fn closed(&self) {
        self.requests.closed().await
    }

    /// Runs `command` with optional `args` (a JSON object) and returns its
    /// `return` value, using this handle's deadline.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.execute_timeout(command, args, self.timeout).await
    }

    /// Like [`Qmp::execute`], with an explicit deadline.
    pub async fn execute_timeout(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = Map::new();
        message.insert("execute".into(), Value::String(command.to_owned()));
        match args {
            None | Some(Value::Null) => {}
            Some(Value::Object(args)) => {
                message.insert("arguments".into(), Value::Object(args));
            }
            Some(other) => {
                return Err(QmpError::Protocol(format!(
                    "arguments of {command} must be a JSON object, not {}",
                    json_kind(&other)
                )))
            }
        }
        message.insert("id".into(), Value::from(id));
        let mut line =
            serde_json::to_vec(&message).map_err(|e| QmpError::Protocol(format!("cannot encode {command}: {e}")))?;
        line.push(b'\n');

        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request { id, command: command.to_owned(), line, reply: reply_tx };
        let call = async {
            self.requests.send(request).await.map_err(|_| QmpError::Disconnected)?;
            reply_rx.await.map_err(|_| QmpError::Disconnected)?
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(QmpError::Timeout { command: command.to_owned(), timeout }),
        }
    }

    /// Runs `command` and decodes its `return` value into `T`.
    pub async fn execute_as<T: DeserializeOwned>(&self, command: &str, args: Option<Value>) -> Result<T, QmpError> {
        let value = self.execute(command, args).await?;
        serde_json::from_value(value).map_err(|e| QmpError::Protocol(format!("unexpected answer to {command}: {e}")))
    }

    /// `query-status`: the run state.
    pub async fn query_status(&self) -> Result<VmRunState, QmpError> {
        self.execute_as("query-status", None).await
    }

    /// `stop`: pauses the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: starts or resumes the vCPUs (also leaves `prelaunch` after `-S`).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// `system_powerdown`: asks the guest to power off (ACPI power button).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `system_reset`: hard-resets the machine.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once. A connection that closes before the
    /// answer arrives counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `query-block`: block devices and their media (QEMU's shape, undecoded).
    pub async fn query_block(&self) -> Result<Value, QmpError> {
        self.execute("query-block", None).await
    }

    /// `query-blockstats`: I/O statistics per block device (undecoded).
    pub async fn query_blockstats(&self) -> Result<Value, QmpError> {
        self.execute("query-blockstats", None).await
    }

    /// `query-blockstats` decoded, with its own deadline (a scrape of
    /// metrics gives up on a busy QEMU quickly).
    pub async fn block_stats(&self, timeout: Duration) -> Result<Vec<BlockStats>, QmpError> {
        let value = self.execute_timeout("query-blockstats", None, timeout).await?;
        serde_json::from_value(value)
            .map_err(|e| QmpError::Protocol(format!("unexpected answer to query-blockstats: {e}")))
    }

    /// `query-chardev`: character devices and their backends.
    pub async fn query_chardev(&self) -> Result<Vec<ChardevInfo>, QmpError> {
        self.execute_as("query-chardev", None).await
    }

    /// `human-monitor-command`: runs an HMP command line and returns its output.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String, QmpError> {
        self.execute_as("human-monitor-command", Some(serde_json::json!({ "command-line": command_line }))).await
    }

    /// `blockdev-add`: adds a block node (`args` as QEMU's BlockdevOptions).
    pub async fn blockdev_add(&self, args: Value) -> Result<(), QmpError> {
        self.execute("blockdev-add", Some(args)).await.map(drop)
    }

    /// `blockdev-del`: removes a block node no device uses.
    pub async fn blockdev_del(&self, node_name: &str) -> Result<(), QmpError> {
        self.execute("blockdev-del", Some(serde_json::json!({ "node-name": node_name }))).await.map(drop)
    }

    /// `device_add`: adds a device (`args`: `driver`, `id` and its properties).
    pub async fn device_add(&self, args: Value) -> Result<(), QmpError> {
        self.execute("device_add", Some(args)).await.map(drop)
    }

    /// `device_del`: asks for a device's removal. Returns at once; the
    /// device is gone at its `DEVICE_DELETED` event (PCI devices wait for
    /// the guest).
    pub async fn device_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute("device_del", Some(serde_json::json!({ "id": id }))).await.map(drop)
    }

    /// `chardev-add`: `args` with `id` and `backend` (ChardevBackend).
    pub async fn chardev_add(&self, args: Value) -> Result<(), QmpError> {
        self.execute("chardev-add", Some(args)).await.map(drop)
    }

    /// `chardev-remove`.
    pub async fn chardev_remove(&self, id: &str) -> Result<(), QmpError> {
        self.execute("chardev-remove", Some(serde_json::json!({ "id": id }))).await.map(drop)
    }

    /// `query-pci`: PCI buses and devices, bridges with what is behind
    /// them (QEMU's shape, undecoded).
    pub async fn query_pci(&self) -> Result<Value, QmpError> {
        self.execute("query-pci", None).await
    }

    /// `query-named-block-nodes`: every named block node (undecoded).
    pub async fn query_named_block_nodes(&self) -> Result<Value, QmpError> {
        self.execute("query-named-block-nodes", Some(serde_json::json!({ "flat": true }))).await
    }

    /// `qom-list`: the properties of the QOM object at `path` (undecoded).
    pub async fn qom_list(&self, path: &str) -> Result<Value, QmpError> {
        self.execute("qom-list", Some(serde_json::json!({ "path": path }))).await
    }

    /// `query-memdev`: memory backends, with `share` (undecoded).
    pub async fn query_memdev(&self) -> Result<Value, QmpError> {
        self.execute("query-memdev", None).await
    }

    /// `query-version`: the QEMU version.
    pub async fn query_version(&self) -> Result<QemuVersion, QmpError> {
        self.execute_as("query-version", None).await
    }

    /// `query-kvm`: whether KVM is available and in use.
    pub async fn query_kvm(&self) -> Result<KvmInfo, QmpError> {
        self.execute_as("query-kvm", None).await
    }

    /// `query-migrate`: status of the current or last migration.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        self.execute_as("query-migrate", None).await
    }

    /// `migrate`: starts migrating to `uri` (e.g. `tcp:host:port`, `unix:/path`).
    /// Returns once started; follow it with [`Qmp::query_migrate`] or `MIGRATION` events.
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(serde_json::json!({ "uri": uri }))).await.map(drop)
    }

    /// `migrate-set-capabilities`: sets migration capabilities, e.g.
    /// `[("events", true), ("auto-converge", true)]`.
    pub async fn migrate_set_capabilities(&self, capabilities: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = capabilities
            .iter()
            .map(|(capability, state)| serde_json::json!({ "capability": capability, "state": state }))
            .collect();
        self.execute("migrate-set-capabilities", Some(serde_json::json!({ "capabilities": list }))).await.map(drop)
    }

    /// `announce-self` with QEMU's default timing: the guest NICs send
    /// gratuitous ARP/RARP so switches learn their new location (after migration).
    pub async fn announce_self(&self) -> Result<(), QmpError> {
        self.announce_self_with(AnnounceParams::default()).await
    }

    /// `announce-self` with explicit timing.
    pub async fn announce_self_with(&self, params: AnnounceParams) -> Result<(), QmpError> {
        let args = serde_json::to_value(params).map_err(|e| QmpError::Protocol(e.to_string()))?;
        self.execute("announce-self", Some(args)).await.map(drop)
    }
}

/// The task that owns the socket.
struct Owner {
    socket: String,
    reader: LineReader<tokio::net::unix::OwnedReadHalf>,
    writer: OwnedWriteHalf,
    requests: mpsc::Receiver<Request>,
    events: broadcast::Sender<QmpEvent>,
    shared: Arc<Shared>,
    pending: HashMap<u64, (String, oneshot::Sender<Reply>)>,
    out: Vec<u8>,
    write_failed: bool,
}

impl Owner {
    async fn run(mut self) {
        loop {
            let writing = !self.out.is_empty() && !self.write_failed;
            let accepting = self.out.len() < OUT_HIGH_WATER;
            tokio::select! {
                frame = self.reader.next_frame() => match frame {
                    Ok(Frame::Line(line)) => self.handle_line(&line),
                    Ok(Frame::Oversized(len)) => {
                        self.shared.malformed.fetch_add(1, Ordering::Relaxed);
                        warn!(socket = %self.socket, len, "QMP: dropped over-long line");
                    }
                    Ok(Frame::Eof) => {
                        debug!(socket = %self.socket, "QMP: connection closed by QEMU");
                        break;
                    }
                    Err(e) => {
                        warn!(socket = %self.socket, error = %e, "QMP: read failed");
                        break;
                    }
                },
                written = self.writer.write(&self.out), if writing => match written {
                    Ok(n) if n > 0 => {
                        self.out.drain(..n);
                    }
                    Ok(_) => self.fail_writes("socket accepts no more data".into()),
                    Err(e) => self.fail_writes(e.to_string()),
                },
                request = self.requests.recv(), if accepting => match request {
                    Some(request) => self.accept(request),
                    None => {
                        debug!(socket = %self.socket, "QMP: all handles dropped, closing");
                        break;
                    }
                },
            }
        }
        self.shutdown().await;
    }

    /// Queues a request for writing and remembers its caller.
    fn accept(&mut self, request: Request) {
        if self.write_failed {
            let _ = request.reply.send(Err(QmpError::Disconnected));
            return;
        }
        if self.pending.len() >= PRUNE_AT {
            // Callers that timed out dropped their receivers.
            self.pending.retain(|_, (_, reply)| !reply.is_closed());
        }
        debug!(socket = %self.socket, id = request.id, command = %request.command, "QMP: execute");
        self.out.extend_from_slice(&request.line);
        self.pending.insert(request.id, (request.command, request.reply));
    }

    /// The write side is dead: stop writing, but keep reading, since answers
    /// to what was already written may still be buffered in the socket.
    fn fail_writes(&mut self, why: String) {
        warn!(socket = %self.socket, error = %why, "QMP: write failed");
        self.write_failed = true;
        self.out.clear();
    }

    fn malformed(&self, line: &[u8], why: &str) {
        self.shared.malformed.fetch_add(1, Ordering::Relaxed);
        warn!(socket = %self.socket, line = %preview(line), "QMP: {why}");
    }

    fn handle_line(&mut self, line: &[u8]) {
        if is_blank(line) {
            return;
        }
        let value: Value = match serde_json::from_slice(line) {
            Ok(value) => value,
            Err(e) => return self.malformed(line, &format!("malformed JSON ({e})")),
        };
        let Value::Object(mut message) = value else {
            return self.malformed(line, "message is not a JSON object");
        };
        if message.contains_key("event") {
            match serde_json::from_value::<QmpEvent>(Value::Object(message)) {
                Ok(event) => {
                    debug!(socket = %self.socket, event = %event.event, "QMP: event");
                    self.shared.remember(event.clone());
                    // No subscribers is fine.
                    let _ = self.events.send(event);
                }
                Err(e) => self.malformed(line, &format!("malformed event ({e})")),
            }
            return;
        }
        let Some(id) = message.remove("id") else {
            if let Some(error) = message.get("error") {
                // QEMU answers requests it cannot parse without an id.
                let (class, desc) = error_parts(error);
                return self.malformed(line, &format!("error without id: {class}: {desc}"));
            }
            return self.malformed(line, "message is neither an answer nor an event");
        };
        let Some((command, reply)) = id.as_u64().and_then(|id| self.pending.remove(&id)) else {
            // Unknown id, or the caller already timed out.
            debug!(socket = %self.socket, %id, "QMP: answer for no waiting caller");
            return;
        };
        let result = if let Some(value) = message.remove("return") {
            Ok(value)
        } else if let Some(error) = message.get("error") {
            let (class, desc) = error_parts(error);
            if class.is_empty() && desc.is_empty() {
                self.malformed(line, "malformed error answer");
                Err(QmpError::Protocol(format!("malformed error answer to {command}: {}", preview(line))))
            } else {
                Err(QmpError::Command { class, desc })
            }
        } else {
            self.malformed(line, "answer without return or error");
            Err(QmpError::Protocol(format!("answer to {command} has neither return nor error")))
        };
        let _ = reply.send(result);
    }

    /// Fails every pending call, closes the socket and the event channel,
    /// then fails whatever is still queued and lets the request channel go
    /// (which is what [`Qmp::closed`] waits for).
    async fn shutdown(self) {
        let Owner { reader, writer, mut requests, events, mut pending, .. } = self;
        for (_, (_, reply)) in pending.drain() {
            let _ = reply.send(Err(QmpError::Disconnected));
        }
        drop((reader, writer, events));
        requests.close();
        while let Some(request) = requests.recv().await {
            let _ = request.reply.send(Err(QmpError::Disconnected));
        }
    }
}

fn error_parts(error: &Value) -> (String, String) {
    let field = |name: &str| error.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    (field("class"), field("desc"))
}

fn parse_greeting(line: &[u8]) -> Result<QmpGreeting, QmpError> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "QMP")]
        qmp: QmpGreeting,
    }
    serde_json::from_slice::<Wire>(line)
        .map(|wire| wire.qmp)
        .map_err(|e| QmpError::Protocol(format!("bad greeting ({e}): {}", preview(line))))
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The start of a line, for logs.
fn preview(line: &[u8]) -> String {
    const LIMIT: usize = 200;
    let text = String::from_utf8_lossy(&line[..line.len().min(LIMIT)]).into_owned();
    if line.len() > LIMIT {
        format!("{text}... ({} bytes)", line.len())
    } else {
        text
    }
}

/// One unit read off the socket.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A line without its `\n`.
    Line(Vec<u8>),
    /// A line longer than the limit was skipped; its length.
    Oversized(usize),
    /// End of stream.
    Eof,
}

/// Splits a byte stream into `\n`-terminated lines. [`LineReader::next_frame`]
/// is cancel-safe: all state lives in the reader, and its only await point is
/// a cancel-safe read.
struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// Bytes before this index are known to hold no `\n`.
    scanned: usize,
    /// Skipping the rest of an over-long line.
    discarding: bool,
    discarded: usize,
    max_line: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max_line: usize) -> Self {
        LineReader { inner, buf: Vec::new(), start: 0, scanned: 0, discarding: false, discarded: 0, max_line }
    }

    async fn next_frame(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let begin = self.start;
                self.start = end + 1;
                self.scanned = self.start;
                if self.discarding {
                    self.discarding = false;
                    return Ok(Frame::Oversized(std::mem::take(&mut self.discarded) + (end - begin)));
                }
                return Ok(Frame::Line(self.buf[begin..end].to_vec()));
            }
            // No complete line: drop consumed bytes, enforce the limit, read more.
            self.buf.drain(..self.start);
            self.start = 0;
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_line {
                self.discarding = true;
                self.discarded += self.buf.len();
                self.buf.clear();
                self.scanned = 0;
            }
            self.buf.reserve(READ_CHUNK);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                let rest = std::mem::take(&mut self.buf);
                self.scanned = 0;
                if self.discarding {
                    self.discarding = false;
                    return Ok(Frame::Oversized(std::mem::take(&mut self.discarded) + rest.len()));
                }
                if !rest.is_empty() {
                    // A last line without its newline.
                    return Ok(Frame::Line(rest));
                }
                return Ok(Frame::Eof);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max_line: usize) -> Vec<Frame> {
        let mut reader = LineReader::new(input, max_line);
        let mut out = Vec::new();
        loop {
            match reader.next_frame().await {
                Ok(Frame::Eof) => return out,
                Ok(frame) => out.push(frame),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_trailing_partial() {
        let got = frames(b"a\r\n\nbc\nlast", 100).await;
        assert_eq!(
            got,
            vec![
                Frame::Line(b"a\r".to_vec()),
                Frame::Line(Vec::new()),
                Frame::Line(b"bc".to_vec()),
                Frame::Line(b"last".to_vec())
            ]
        );
    }

    #[tokio::test]
    async fn reassembles_lines_split_across_reads() {
        let (mut client, server) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            for chunk in [&b"{\"ret"[..], b"urn\": 1}\n{\"a\"", b":2}\n"] {
                client.write_all(chunk).await.expect("write");
                tokio::task::yield_now().await;
            }
        });
        let mut reader = LineReader::new(server, 100);
        assert_eq!(reader.next_frame().await.expect("frame"), Frame::Line(b"{\"return\": 1}".to_vec()));
        assert_eq!(reader.next_frame().await.expect("frame"), Frame::Line(b"{\"a\":2}".to_vec()));
        writer.await.expect("writer");
        assert_eq!(reader.next_frame().await.expect("frame"), Frame::Eof);
    }

    #[tokio::test]
    async fn skips_over_long_lines() {
        let mut input = vec![b'x'; 300_000];
        input.extend_from_slice(b"\nok\n");
        input.extend(vec![b'y'; 200_000]);
        let got = frames(&input, 1000).await;
        assert_eq!(got, vec![Frame::Oversized(300_000), Frame::Line(b"ok".to_vec()), Frame::Oversized(200_000)]);
    }

    #[test]
    fn greeting_parses_and_rejects_garbage() {
        let greeting = parse_greeting(
            br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#,
        );
        match greeting {
            Ok(g) => {
                assert_eq!(g.version.qemu, VersionTriple { major: 7, minor: 2, micro: 22 });
                assert_eq!(g.capabilities, vec!["oob".to_owned()]);
            }
            Err(e) => panic!("greeting rejected: {e}"),
        }
        assert!(matches!(parse_greeting(b"{\"return\": {}}"), Err(QmpError::Protocol(_))));
        assert!(matches!(parse_greeting(b"\xff\xfe"), Err(QmpError::Protocol(_))));
    }

    #[test]
    fn block_stats_decode_qemus_answer() {
        // As QEMU 7.2 answers for a virtio-blk disk on a -blockdev node.
        let answer = serde_json::json!([{
            "device": "", "qdev": "/machine/peripheral/data/virtio-backend", "node-name": "drive-data",
            "stats": {"rd_bytes": 4096, "wr_bytes": 1048576, "rd_operations": 1, "wr_operations": 8,
                "flush_operations": 2, "rd_total_time_ns": 100, "wr_total_time_ns": 2000000,
                "flush_total_time_ns": 30, "wr_highest_offset": 1048576, "idle_time_ns": 5, "account_invalid": true,
                "timed_stats": [], "rd_merged": 0, "wr_merged": 0, "invalid_rd_operations": 0},
            "parent": {"node-name": "drive-data-file", "stats": {"rd_bytes": 1}}
        }, {"device": "ide0-cd0", "stats": {}}]);
        let got: Vec<BlockStats> = serde_json::from_value(answer).unwrap_or_else(|e| panic!("decode: {e}"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].disk_name(), Some("data"));
        assert_eq!((got[0].stats.wr_bytes, got[0].stats.wr_operations), (1_048_576, 8));
        assert_eq!((got[0].stats.flush_operations, got[0].stats.wr_total_time_ns), (2, 2_000_000));
        assert_eq!(got[1].disk_name(), None);
        assert_eq!(got[1].stats, BlockDeviceStats::default());
        let bad: Result<Vec<BlockStats>, _> = serde_json::from_value(serde_json::json!([{"stats": {"rd_bytes": -1}}]));
        assert!(bad.is_err());
    }

    #[test]
    fn migration_info_keeps_unknown_members() {
        let info: MigrationInfo = serde_json::from_value(serde_json::json!({"status": "active", "total-time": 5}))
            .unwrap_or_else(|e| {
                panic!("decode: {e}");
            });
        assert_eq!(info.status.as_deref(), Some("active"));
        assert_eq!(info.other.get("total-time"), Some(&Value::from(5)));
        let empty: Result<MigrationInfo, _> = serde_json::from_value(serde_json::json!({}));
        assert!(matches!(empty, Ok(MigrationInfo { status: None, .. })));
    }
}
