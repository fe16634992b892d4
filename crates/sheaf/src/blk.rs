//! `sheaf blk ...`: the storage processes the agent starts (a replica
//! server per replica, an engine per attached volume). They run on their
//! own, so an agent restart never interrupts I/O.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use sheaf_blk::auth::ClusterKey;
use sheaf_blk::replica_server::Address;
use sheaf_blk::store::Replica;

#[derive(Args, Debug)]
pub struct BlkArgs {
    #[command(subcommand)]
    pub command: BlkCommand,
}

/// How often an engine looks for replicas to bring back.
const REBUILD_EVERY: Duration = Duration::from_secs(2);

#[derive(Subcommand, Debug)]
pub enum BlkCommand {
    /// Serve one replica (created on first use):
    /// `sheaf blk replica --dir /var/lib/sheaf/replicas/vol1-a --volume vol1 --size 10Gi --listen unix:/run/sheaf/blk/vol1-a.sock`,
    /// reached from other nodes too: `... --listen unix:/run/sheaf/blk/vol1-a.sock --listen tcp:10.0.0.2:0 --address-file /run/sheaf/blk/vol1-a.addr --auth-key-file /etc/sheaf/cluster.key`.
    Replica(ReplicaArgs),
    /// Run the engine of a volume and serve it over NBD and/or vhost-user-blk:
    /// `sheaf blk engine --volume vol1 --replica unix:/run/sheaf/blk/vol1-a.sock --replica tcp:10.0.0.2:7001 --nbd /run/sheaf/blk/vol1.nbd`,
    /// or `... --vhost-user /run/sheaf/blk/vol1.vhost --vhost-user-queues 4` for QEMU's
    /// `-chardev socket,id=c0,path=/run/sheaf/blk/vol1.vhost,reconnect=1 -device vhost-user-blk-pci,chardev=c0,num-queues=4`
    /// (guest RAM must be shared: `-object memory-backend-memfd,id=mem0,size=2G,share=on -machine memory-backend=mem0`).
    Engine(EngineArgs),
    /// Rebuild the replicas of a detached volume, then exit:
    /// `sheaf blk rebuild --volume vol1 --replica unix:... --replica tcp:...`.
    Rebuild(RebuildArgs),
    /// Back up a snapshot of a replica into a backup directory, then exit
    /// (what a Backup's agent runs; prints one JSON line):
    /// `sheaf blk backup --replica unix:/run/sheaf/blk/vol1-a.sock --snapshot snap-1 --size 10Gi --to /mnt/backups --name b1`,
    /// incremental: `... --name b2 --parent-manifest volumes/default/volume/b1.json --parent-snapshot snap-1`.
    Backup(BackupArgs),
    /// Restore a backup from a backup directory into new, empty replicas,
    /// then exit (prints one JSON line):
    /// `sheaf blk restore --from /mnt/backups --manifest volumes/default/volume/b1.json --replica unix:/run/sheaf/blk/vol2-a.sock`.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The replica holding the snapshot (it goes on serving its engine).
    #[arg(long)]
    pub replica: Address,
    /// The snapshot's layer name on the replica.
    #[arg(long)]
    pub snapshot: String,
    /// The volume's size when the snapshot was taken (bytes, or with Ki/Mi/Gi/Ti).
    #[arg(long)]
    pub size: String,
    /// The backup directory (a target's `spec.filesystem.path`); it must exist.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The backup's name (unique per volume on the target).
    #[arg(long)]
    pub name: String,
    /// The volume as NAMESPACE/NAME, which places the manifest at
    /// `volumes/NAMESPACE/NAME/BACKUP.json`.
    #[arg(long, default_value = "default/volume", value_parser = parse_volume_ref)]
    pub volume: (String, String),
    /// The volume's uid recorded in the manifest.
    #[arg(long, default_value = "")]
    pub volume_uid: String,
    /// The previous backup's manifest key on the same target: only the
    /// chunks changed since --parent-snapshot are read.
    #[arg(long, value_name = "KEY", requires = "parent_snapshot")]
    pub parent_manifest: Option<String>,
    /// The previous backup's snapshot layer, still on the replica.
    #[arg(long, value_name = "LAYER", requires = "parent_manifest")]
    pub parent_snapshot: Option<String>,
    /// How new chunks are stored: zstd (level 3), lz4 or none.
    #[arg(long, default_value = "zstd", value_parser = parse_compression)]
    pub compression: sheaf_backup::chunk::Compression,
    /// The cluster key proven to a TCP replica (see `sheaf blk replica --auth-key-file`).
    #[arg(long, value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,
    /// Connections to the replica (each carries one read at a time).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: u16,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup directory.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The manifest's key on the target, e.g. `volumes/default/volume/b1.json`.
    #[arg(long, value_name = "KEY")]
    pub manifest: String,
    /// The new volume's replicas, blank and at least the backup's size
    /// (chunks of zeros are not written). Created with
    /// `sheaf blk replica --volume NAME`, NAME as --volume here.
    #[arg(long = "replica", required = true)]
    pub replicas: Vec<Address>,
    /// The new volume's name on its replicas [default: the backed-up
    /// volume's name in the manifest].
    #[arg(long)]
    pub volume: Option<String>,
    /// Give up bringing every replica into service after this many seconds.
    #[arg(long, default_value = "600")]
    pub timeout: u64,
    /// The cluster key proven to TCP replicas (see `sheaf blk replica --auth-key-file`).
    #[arg(long, value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,
}

fn parse_volume_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME, such as default/data")),
    }
}

fn parse_compression(s: &str) -> Result<sheaf_backup::chunk::Compression, String> {
    sheaf_backup::chunk::Compression::parse(Some(s))
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    #[arg(long)]
    pub volume: String,
    #[arg(long = "replica", required = true)]
    pub replicas: Vec<Address>,
    /// Give up after this many seconds.
    #[arg(long, default_value = "3600")]
    pub timeout: u64,
    /// The cluster key proven to TCP replicas (see `sheaf blk replica --auth-key-file`).
    #[arg(long, value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReplicaArgs {
    /// The replica's directory on a node disk.
    #[arg(long)]
    pub dir: PathBuf,
    /// The volume it belongs to.
    #[arg(long)]
    pub volume: String,
    /// Size when the replica is created (bytes, or with Ki/Mi/Gi/Ti).
    #[arg(long)]
    pub size: Option<String>,
    /// When the replica is created: the base image directory it reads
    /// through (a volume made from an image).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// unix:PATH or tcp:IP:PORT (port 0: the kernel chooses; see
    /// --address-file). Repeat it to listen on several, e.g. a unix socket
    /// for this node's engines and TCP for other nodes'.
    #[arg(long = "listen", required = true)]
    pub listen: Vec<Address>,
    /// Once listening, write the address other nodes reach (the first TCP
    /// --listen, with the port chosen: tcp:IP:PORT; without one, the first
    /// --listen) to this file, atomically.
    #[arg(long, value_name = "FILE")]
    pub address_file: Option<PathBuf>,
    /// The cluster key (at least 32 bytes of secret, raw or hex, e.g.
    /// `openssl rand -hex 32`; the same file on every node) that TCP
    /// clients must prove they hold. Unix-socket clients are not asked.
    #[arg(long, value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,
    /// Serve TCP without a cluster key: anyone who reaches the port can
    /// read and overwrite the disk.
    #[arg(long, conflicts_with = "auth_key_file")]
    pub insecure_no_auth: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("frontend").required(true).multiple(true).args(["nbd", "vhost_user"])))]
pub struct EngineArgs {
    #[arg(long)]
    pub volume: String,
    /// The replicas, local first (reads go to the first healthy one).
    #[arg(long = "replica", required = true)]
    pub replicas: Vec<Address>,
    /// The unix socket QEMU's NBD client connects to.
    #[arg(long)]
    pub nbd: Option<PathBuf>,
    /// The unix socket QEMU's vhost-user-blk device connects to (one QEMU
    /// at a time; the next is accepted when it disconnects).
    #[arg(long = "vhost-user", value_name = "SOCKET")]
    pub vhost_user: Option<PathBuf>,
    /// Queues the vhost-user-blk device offers (QEMU's num-queues must not
    /// be more).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub vhost_user_queues: u16,
    /// The disk serial the guest sees on vhost-user-blk (QEMU cannot set
    /// it for this device); cut to 20 bytes.
    #[arg(long, default_value = "")]
    pub vhost_user_serial: String,
    /// Show the vhost-user-blk disk read-only (VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub vhost_user_read_only: bool,
    /// Logical block size of the vhost-user-blk disk: 512 (what disk
    /// images with 512-byte sectors need) or 4096. Physical blocks are 4096.
    #[arg(long, default_value_t = 512, value_parser = parse_block_size)]
    pub vhost_user_block_size: u32,
    /// The control socket for the node agent (status, snapshots, expand).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Seconds a replica may take to answer after its peers have before
    /// it is failed (a partitioned node or a dying disk); while no
    /// replica answers, the engine waits.
    #[arg(long, default_value_t = 8.0, value_parser = parse_seconds)]
    pub replica_timeout: f64,
    /// The cluster key proven to TCP replicas (see `sheaf blk replica --auth-key-file`).
    #[arg(long, value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,
    /// The target of a live migration: serve NBD at once but take the
    /// volume over (new epoch, fencing the source's engine) only at the
    /// first I/O request or the control socket's `activate`.
    #[arg(long)]
    pub standby: bool,
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("{s:?} is not a block size: 512 or 4096")),
    }
}

/// How often the engine checks whether the volume grew (to tell a
/// vhost-user-blk guest).
const SIZE_POLL: Duration = Duration::from_millis(500);

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds between 0 and 3600, such as 8 or 0.5")),
    }
}

/// Accepts NBD clients until accepting fails.
async fn serve_nbd(
    listener: tokio::net::UnixListener,
    name: String,
    device: Arc<dyn sheaf_blk::nbd::Device>,
) -> anyhow::Result<()> {
    loop {
        let (conn, _) = listener.accept().await?;
        let dev = device.clone();
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(err) = sheaf_blk::nbd::serve(conn, &name, dev).await {
                tracing::warn!(error = %err, "NBD connection ended");
            }
        });
    }
}

fn cluster_key(file: Option<&Path>) -> anyhow::Result<Option<ClusterKey>> {
    Ok(match file {
        Some(f) => Some(ClusterKey::from_file(f)?),
        None => None,
    })
}

/// A size as a Kubernetes quantity: `10Gi`, `512Mi`, `4096`.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let q = sheaf_types::quantity::Quantity::parse(s.trim())
        .map_err(|e| anyhow::anyhow!("size {s:?} is not a quantity such as 10Gi or 512Mi: {e}"))?;
    let v = q.value().with_context(|| format!("size {s:?} is out of range"))?;
    u64::try_from(v).map_err(|_| anyhow::anyhow!("size {s:?} must not be negative"))
}

/// One malloc arena for the storage processes: their threads allocate
/// little and briefly, and per-thread arenas keep what a burst of large
/// requests freed (an engine held 8 MiB after a benchmark instead of 3).
fn one_malloc_arena() {
    #[allow(unsafe_code)]
    // SAFETY: mallopt takes no pointers and only changes glibc's
    // allocator settings; glibc serialises it with the arena lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

pub fn run(a: BlkArgs) -> anyhow::Result<()> {
    one_malloc_arena();
    match a.command {
        BlkCommand::Replica(r) => {
            let replica = if r.dir.join("replica.json").exists() {
                let rep = Replica::open(&r.dir).with_context(|| format!("cannot open replica {}", r.dir.display()))?;
                anyhow::ensure!(
                    rep.meta().volume == r.volume,
                    "{} holds a replica of volume {:?}, not {:?}",
                    r.dir.display(),
                    rep.meta().volume,
                    r.volume
                );
                rep
            } else {
                let size = parse_size(r.size.as_deref().context("--size is needed to create a new replica")?)?;
                match &r.base {
                    Some(base) => Replica::create_on_base(&r.dir, &r.volume, size, base),
                    None => Replica::create(&r.dir, &r.volume, size),
                }
                .with_context(|| format!("cannot create replica {}", r.dir.display()))?
            };
            let options = sheaf_blk::replica_server::ServerOptions {
                cluster_key: cluster_key(r.auth_key_file.as_deref())?,
                insecure_no_auth: r.insecure_no_auth,
            };
            if let Some(f) = &r.address_file {
                // Its presence means: listening now.
                let _ = std::fs::remove_file(f);
            }
            let server = sheaf_blk::replica_server::Server::bind(replica, &r.listen, options)?;
            if let Some(f) = &r.address_file {
                server.write_address_file(f)?;
            }
            let listen: Vec<String> = server.addresses().iter().map(ToString::to_string).collect();
            tracing::info!(dir = %r.dir.display(), volume = %r.volume, listen = %listen.join(" "), "replica serving");
            Ok(server.run()?)
        }
        BlkCommand::Rebuild(r) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let key = cluster_key(r.auth_key_file.as_deref())?;
                let engine = Arc::new(sheaf_blk::engine::Engine::start_with_key(&r.volume, &r.replicas, key).await?);
                let all = r.replicas.len();
                let done = tokio::time::timeout(
                    std::time::Duration::from_secs(r.timeout),
                    engine.clone().rebuild_loop(REBUILD_EVERY, true),
                )
                .await;
                anyhow::ensure!(
                    done.is_ok(),
                    "not every replica could be rebuilt within {} s: healthy {:?} of {all}",
                    r.timeout,
                    engine.healthy()
                );
                println!("volume {}: {} of {all} replicas healthy", r.volume, engine.healthy().len());
                Ok(())
            })
        }
        BlkCommand::Backup(b) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let line = rt.block_on(backup(b))?;
            println!("{line}");
            Ok(())
        }
        BlkCommand::Restore(r) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let line = rt.block_on(restore(r))?;
            println!("{line}");
            Ok(())
        }
        BlkCommand::Engine(e) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let key = cluster_key(e.auth_key_file.as_deref())?;
                let replica_timeout = Duration::from_secs_f64(e.replica_timeout);
                let device: Arc<dyn sheaf_blk::nbd::Device> = if e.standby {
                    anyhow::ensure!(
                        e.vhost_user.is_none(),
                        "--standby cannot be used with --vhost-user: a vhost-user-blk disk cannot be live-migrated \
                         (the engine does not log dirty pages); give the VM an NBD disk (--nbd) to migrate it, \
                         or stop it and start it on the other node"
                    );
                    let standby = sheaf_blk::standby::StandbyEngine::prepare(&e.volume, &e.replicas, key).await?;
                    let standby =
                        Arc::new(standby.with_replica_timeout(replica_timeout).with_rebuild_loop(REBUILD_EVERY));
                    tracing::info!(volume = %e.volume, size = sheaf_blk::nbd::Device::size(&*standby),
                        "engine on standby: it takes the volume over at the first I/O request or on activate");
                    if let Some(path) = e.control.clone() {
                        let standby = standby.clone();
                        tokio::spawn(async move {
                            if let Err(err) = sheaf_blk::control::serve_standby(standby, &path).await {
                                tracing::error!(error = %err, path = %path.display(), "control socket failed");
                            }
                        });
                    }
                    standby
                } else {
                    let engine = sheaf_blk::engine::Engine::start_with_key(&e.volume, &e.replicas, key).await?;
                    let engine = Arc::new(engine.with_replica_timeout(replica_timeout));
                    tracing::info!(volume = %e.volume, epoch = engine.epoch(), healthy = ?engine.healthy(), "engine started");
                    tokio::spawn(engine.clone().rebuild_loop(REBUILD_EVERY, false));
                    if let Some(path) = e.control.clone() {
                        let engine = engine.clone();
                        tokio::spawn(async move {
                            if let Err(err) = sheaf_blk::control::serve(engine, &path).await {
                                tracing::error!(error = %err, path = %path.display(), "control socket failed");
                            }
                        });
                    }
                    engine
                };
                let vhost_user = match &e.vhost_user {
                    Some(path) => {
                        // Like QEMU's serial property: longer ones are cut.
                        let mut serial = e.vhost_user_serial.clone();
                        while serial.len() > 20 {
                            serial.pop();
                        }
                        let opts = sheaf_blk::vhost_user::Options {
                            num_queues: e.vhost_user_queues,
                            serial,
                            read_only: e.vhost_user_read_only,
                            logical_block_size: e.vhost_user_block_size,
                            ..Default::default()
                        };
                        let server = Arc::new(sheaf_blk::vhost_user::VhostUserBlk::new(
                            device.clone(),
                            opts,
                            tokio::runtime::Handle::current(),
                        )?);
                        let listener = sheaf_blk::vhost_user::VhostUserBlk::bind(path)?;
                        tracing::info!(path = %path.display(), queues = e.vhost_user_queues, "vhost-user-blk listening");
                        tokio::spawn(server.clone().watch_size(SIZE_POLL));
                        // A thread of its own (not the blocking pool, which
                        // would hold the runtime open at exit).
                        let (done, ended) = tokio::sync::oneshot::channel();
                        std::thread::Builder::new().name("vhost-user-accept".into()).spawn(move || {
                            let _ = done.send(server.serve(listener));
                        })?;
                        Some(ended)
                    }
                    None => None,
                };
                let nbd = match &e.nbd {
                    Some(path) => {
                        let _ = std::fs::remove_file(path);
                        let listener = tokio::net::UnixListener::bind(path)
                            .with_context(|| format!("cannot listen on {}", path.display()))?;
                        Some(tokio::spawn(serve_nbd(listener, e.volume.clone(), device.clone())))
                    }
                    None => None,
                };
                // Both run until the process is stopped; whichever fails
                // first ends it.
                let vhost_user = async {
                    match vhost_user {
                        Some(ended) => match ended.await {
                            Ok(r) => r.map_err(anyhow::Error::from),
                            Err(_) => Err(anyhow::anyhow!("the vhost-user-blk server stopped")),
                        },
                        None => std::future::pending().await,
                    }
                };
                let nbd = async {
                    match nbd {
                        Some(t) => t.await?,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = vhost_user => r.context("vhost-user-blk server"),
                    r = nbd => r.context("NBD server"),
                }
            })
        }
    }
}

/// `sheaf blk backup`: the agent's backup of one snapshot (the same
/// library calls), timed from opening the snapshot to the manifest written.
async fn backup(b: BackupArgs) -> anyhow::Result<serde_json::Value> {
    use sheaf_backup::volume::{Job, Parent};

    let size = parse_size(&b.size)?;
    let key = cluster_key(b.auth_key_file.as_deref())?;
    let store = sheaf_backup::store::fs::FsStore::new(&b.to)?;
    let repo = sheaf_backup::Repository::new(Arc::new(store), b.compression);
    let parent = match (&b.parent_manifest, &b.parent_snapshot) {
        (Some(manifest), Some(snapshot)) => {
            let m = repo
                .manifest(manifest)
                .await?
                .with_context(|| format!("no manifest {manifest:?} in {}", b.to.display()))?;
            Some(Parent { manifest: m, snapshot: snapshot.clone() })
        }
        _ => None,
    };
    let started = std::time::Instant::now();
    let source = sheaf_backup::blk::SnapshotSource::open(
        &b.replica,
        &b.snapshot,
        key.as_ref(),
        size,
        usize::from(b.connections),
    )
    .await
    .with_context(|| format!("cannot open snapshot {:?} on {}", b.snapshot, b.replica))?;
    let (namespace, name) = b.volume;
    let job = Job {
        name: b.name,
        volume: sheaf_backup::manifest::VolumeRef { namespace, name, uid: b.volume_uid, size },
        snapshot: b.snapshot,
        parent,
        labels: Default::default(),
    };
    let m = sheaf_backup::volume::backup(&repo, &source, job, &|_| {}).await.map_err(anyhow::Error::msg)?;
    let seconds = started.elapsed().as_secs_f64();
    let s = &m.stats;
    Ok(serde_json::json!({
        "manifest": m.key(), "parent": m.parent, "size": size, "seconds": seconds,
        "bytesRead": s.bytes_read, "bytesUploaded": s.bytes_uploaded,
        "chunksNew": s.chunks_new, "chunksReused": s.chunks_reused,
        "chunksUnchanged": s.chunks_unchanged, "chunksZero": s.chunks_zero,
    }))
}

/// `sheaf blk restore`: the agent's restore of a backup into a new volume
/// (the same library calls), timed from the engine's start to the flush.
async fn restore(r: RestoreArgs) -> anyhow::Result<serde_json::Value> {
    let key = cluster_key(r.auth_key_file.as_deref())?;
    let store = sheaf_backup::store::fs::FsStore::new(&r.from)?;
    let repo = sheaf_backup::Repository::new(Arc::new(store), sheaf_backup::chunk::Compression::default());
    let m = repo
        .manifest(&r.manifest)
        .await?
        .with_context(|| format!("no manifest {:?} in {}", r.manifest, r.from.display()))?;
    let volume = r.volume.unwrap_or_else(|| m.volume.name.clone());
    let started = std::time::Instant::now();
    let engine = Arc::new(sheaf_blk::engine::Engine::start_with_key(&volume, &r.replicas, key).await?);
    // Replicas after the first join through a resync; on blank replicas
    // that is quick, and it is done before the data is written, not after.
    let all = r.replicas.len();
    let joined =
        tokio::time::timeout(Duration::from_secs(r.timeout), engine.clone().rebuild_loop(REBUILD_EVERY, true)).await;
    anyhow::ensure!(
        joined.is_ok(),
        "not every replica came into service within {} s: healthy {:?} of {all}",
        r.timeout,
        engine.healthy()
    );
    anyhow::ensure!(
        engine.size() >= m.volume.size,
        "the new volume has {} bytes, the backup {}: create its replicas with --size {} or more",
        engine.size(),
        m.volume.size,
        m.volume.size
    );
    let written = sheaf_backup::volume::restore(&repo, &m, &sheaf_backup::blk::EngineSink(&engine), &|_, _| {})
        .await
        .map_err(anyhow::Error::msg)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "manifest": r.manifest, "volume": volume, "size": m.volume.size, "bytesWritten": written,
        "seconds": seconds, "replicas": engine.healthy().len(),
    }))
}
