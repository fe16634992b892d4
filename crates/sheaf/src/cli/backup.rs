//! `sheaf backup ...`: backup targets and the backups of volumes
//! (`sheaf.io/v1alpha1` BackupTarget and Backup, docs/design/backups.md),
//! restores into new volumes and verifications.
//!
//! Every command writes the objects and then follows what the controller
//! and the node agents do with them by polling, with a progress bar on a
//! terminal's stderr (hidden otherwise; then only what a backup waits for
//! is printed, once per change). Nothing here keeps state: interrupting a
//! command leaves the work going on in the cluster.
//!
//! Credentials: `target add` takes the S3 secret key from a file or from
//! `AWS_SECRET_ACCESS_KEY`, never from a flag (it would show in `ps`),
//! writes it into the Secret `sheaf-system/backup-target-NAME` and never
//! prints it.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};
use sheaf_types::backup::{
    Backup, BackupTarget, BackupTargetSpec, FilesystemTarget, S3Target, SecretRef, ACCESS_KEY, COMPRESSIONS,
    SECRET_KEY, SECRET_NAMESPACE, SESSION_TOKEN, STYLES, TARGET_LABEL, VERIFY_ANNOTATION,
};
use sheaf_types::quantity::Quantity;
use sheaf_types::storage::{Volume, BLOCK};
use sheaf_types::Time;

use super::client::{encode, is_not_found, Client, ConnArgs, ServerError};

const GV: &str = "/apis/sheaf.io/v1alpha1";

/// On the Secret `target add` makes: the target it belongs to, so that
/// `target remove` deletes only a Secret it made.
const MADE_FOR_LABEL: &str = "sheaf.io/backup-target";
/// Set on a BackupTarget by `target add` when there is nothing else to
/// change in it: any change has the controller check the target at once.
const CHECK_ANNOTATION: &str = "sheaf.io/check-requested";

/// Waits of `target add` and `delete` (seconds) without --timeout.
const SHORT_WAIT: u64 = 120;
/// Waits of `create`, `restore` and `verify` (seconds) without --timeout.
const LONG_WAIT: u64 = 3600;

const BACKUP_HELP: &str = "\
Examples:
  sheaf backup target add nfs --path /mnt/backups
  AWS_SECRET_ACCESS_KEY=... sheaf backup target add s3 --s3-endpoint https://minio.example.com:9000 \\
      --bucket backups --access-key-id AKIA...
  sheaf backup target list
  sheaf backup create data --target nfs            # backup data-YYYYMMDD-HHMMSS (UTC)
  sheaf backup list --volume data
  sheaf backup verify data-20261201-181500
  sheaf backup restore data-20261201-181500 --to data-copy
  sheaf backup delete data-20261201-181500

Backups are incremental (only chunks changed since the volume's previous
backup on the target are read) and deduplicated (a chunk any backup on the
target already holds is not sent again). See docs/guide/backups.md.";

#[derive(Args, Debug)]
#[command(after_help = BACKUP_HELP)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: BackupAction,
    /// Namespace of backups and volumes (default: the kubeconfig context's).
    #[arg(short, long, value_name = "NS", global = true)]
    pub namespace: Option<String>,
    /// How long to wait (seconds; default 120 for `target add` and
    /// `delete`, 3600 for `create`, `restore` and `verify`). The work goes
    /// on in the cluster when the wait ends.
    #[arg(long, value_name = "SECONDS", global = true)]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand, Debug)]
pub enum BackupAction {
    /// Backup targets: where backups are kept (S3 buckets, directories).
    Target {
        #[command(subcommand)]
        action: TargetAction,
    },
    /// Back up a volume and follow it: `sheaf backup create data --target nfs`.
    Create {
        /// The Volume to back up.
        volume: String,
        /// The BackupTarget to keep it on (`sheaf backup target list`).
        #[arg(long, value_name = "TARGET")]
        target: String,
        /// The Backup's name (default: VOLUME-YYYYMMDD-HHMMSS, in UTC).
        #[arg(long)]
        name: Option<String>,
        /// Back up this VolumeSnapshot of the volume instead of one Sheaf
        /// takes.
        #[arg(long, value_name = "SNAPSHOT")]
        snapshot: Option<String>,
        /// Return once the Backup exists, without following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// List backups (AGE: since the backup started).
    List {
        /// Only backups on this target.
        #[arg(long, value_name = "TARGET")]
        target: Option<String>,
        /// Only backups of this volume.
        #[arg(long, value_name = "VOLUME")]
        volume: Option<String>,
    },
    /// Show a Backup as YAML.
    Show { backup: String },
    /// Make a new volume from a completed backup and follow the restore:
    /// `sheaf backup restore data-20261201-181500 --to data-copy`.
    Restore {
        backup: String,
        /// The new Volume (same namespace as the backup).
        #[arg(long, value_name = "VOLUME")]
        to: String,
        /// Copies of the data (1..16; default 3).
        #[arg(long, value_name = "N")]
        replicas: Option<u32>,
        /// Size of the new volume, at least the backup's (default: the
        /// backup's, rounded up to 4Ki).
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        /// Return once the Volume exists, without following the restore.
        #[arg(long)]
        no_wait: bool,
    },
    /// Read every chunk of a backup back from its target and check it
    /// against its hash.
    Verify {
        backup: String,
        /// Ask for the verification and return.
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete a backup: its manifest leaves the target, its chunks go at the
    /// next garbage collection (unless other backups share them).
    Delete { backup: String },
    /// Browse a backup's files without restoring it (ext2/3/4, FAT, ISO
    /// 9660; GPT/MBR partitions): `sheaf backup files B` lists the
    /// partitions, `sheaf backup files B /etc` a directory, `sheaf backup
    /// files B /etc/hostname --get hostname` downloads a file (`-` for
    /// standard output).
    Files {
        backup: String,
        /// A directory to list, or with --get a file to download.
        path: Option<String>,
        /// The partition (as Linux numbers them: 1 is sda1); needed when
        /// several hold a file system.
        #[arg(long)]
        partition: Option<u32>,
        /// Download PATH to this file (`-`: standard output).
        #[arg(long, value_name = "FILE")]
        get: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TargetAction {
    /// Add (or change) a target and wait for its first check.
    Add(Box<TargetAddArgs>),
    /// List targets: where they are, whether they are available, how many
    /// backups they hold.
    List,
    /// Remove a target (and the credentials Secret `target add` made). The
    /// backups on it are left where they are.
    Remove { name: String },
}

const TARGET_ADD_HELP: &str = "\
A directory (on every node that backs up or restores; an NFS mount):
  sheaf backup target add nfs --path /mnt/backups

An S3-compatible bucket; the secret key is read from a file or from the
environment variable AWS_SECRET_ACCESS_KEY, never from a flag:
  sheaf backup target add minio --s3-endpoint https://minio.example.com:9000 --bucket backups \\
      --access-key-id AKIA... --secret-access-key-file ./secret-key
  export AWS_SECRET_ACCESS_KEY=...   # and AWS_SESSION_TOKEN for temporary credentials
  sheaf backup target add aws --bucket my-backups --region eu-west-1 --prefix cluster-a/ \\
      --access-key-id AKIA...

The credentials go into the Secret sheaf-system/backup-target-NAME (keys
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). To use a Secret of your own:
  sheaf backup target add minio --s3-endpoint https://minio:9000 --bucket b --credential-secret ops/minio

Running it again with other flags changes the target.";

#[derive(Args, Debug, Default)]
#[command(after_help = TARGET_ADD_HELP)]
pub struct TargetAddArgs {
    /// The BackupTarget's name.
    pub name: String,
    /// A directory: an absolute path that exists on the nodes.
    #[arg(long, value_name = "DIR")]
    pub path: Option<String>,
    /// The S3 service's URL (without it: AWS S3 of --region).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The S3 bucket.
    #[arg(long, value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// The bucket's region (default us-east-1).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Keys start with this, e.g. `sheaf/cluster-a/`.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// `path` (the default with --s3-endpoint) or `virtual-hosted` (the
    /// default for AWS).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STYLES))]
    pub style: Option<String>,
    /// The access key id (default: $AWS_ACCESS_KEY_ID).
    #[arg(long, value_name = "ID")]
    pub access_key_id: Option<String>,
    /// A file holding the secret access key (`-`: standard input); without
    /// it, $AWS_SECRET_ACCESS_KEY.
    #[arg(long, value_name = "FILE")]
    pub secret_access_key_file: Option<PathBuf>,
    /// Use this existing Secret (NS/NAME, or NAME in sheaf-system) with
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    #[arg(long, value_name = "NS/NAME")]
    pub credential_secret: Option<String>,
    /// A PEM file of the CA certificates to trust for the endpoint.
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// How chunks are compressed (default zstd).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(COMPRESSIONS))]
    pub compression: Option<String>,
    /// How often the target is checked and its backups listed (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub poll_interval: Option<String>,
}

// ---------------------------------------------------------------------------
// Pure parts: names, sizes, the target's spec, table rows, summaries

/// The default name of a backup of `volume` started at `now`:
/// `VOLUME-YYYYMMDD-HHMMSS` (UTC), within the 200 characters a backup's
/// name may have.
fn default_name(volume: &str, now: &Time) -> String {
    let stamp = now.0.format("%Y%m%d-%H%M%S").to_string();
    let mut vol: String = volume.chars().take(200 - stamp.len() - 1).collect();
    while vol.ends_with(['-', '.']) {
        vol.pop();
    }
    format!("{vol}-{stamp}")
}

/// The time now in RFC 3339 with milliseconds: two requests in one
/// second are still two requests.
fn now_millis() -> String {
    Time::now().0.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A volume size for `bytes` of backup: rounded up to whole 4 KiB blocks.
fn round_up_to_block(bytes: u64) -> u64 {
    let block = BLOCK as u64;
    bytes.div_ceil(block).max(1) * block
}

/// The `spec.size` of a volume restored from a backup of `backup_size`
/// bytes: `asked`, if it is large enough, else the backup's size rounded
/// up to 4 KiB.
fn restore_size(backup: &str, backup_size: u64, asked: Option<&str>) -> anyhow::Result<String> {
    let Some(asked) = asked else { return Ok(round_up_to_block(backup_size).to_string()) };
    let bytes = Quantity::parse(asked)
        .ok()
        .and_then(|q| q.as_bytes_u64())
        .ok_or_else(|| anyhow!("--size {asked:?} is not a size such as 10Gi or 512Mi"))?;
    if bytes < backup_size {
        bail!(
            "--size {asked} is smaller than backup {backup} ({}): give at least {}, or leave --size out",
            human_bytes(backup_size),
            round_up_to_block(backup_size)
        );
    }
    Ok(asked.to_string())
}

/// 512 B, 4.0 KiB, 48.1 MiB, 2.0 TiB.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// 3.2 s, or 4m12s.
fn human_elapsed(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        sheaf_types::storage::format_duration(d)
    }
}

/// kubectl's AGE: 45s, 12m, 5h, 3d.
fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `NS/NAME` or `NAME` (in sheaf-system).
fn parse_secret_ref(s: &str) -> anyhow::Result<SecretRef> {
    let (ns, name) = match s.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (SECRET_NAMESPACE, s),
    };
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        bail!("--credential-secret {s:?} is not NAMESPACE/NAME or NAME (a Secret in {SECRET_NAMESPACE})");
    }
    Ok(SecretRef { namespace: Some(ns.to_string()), name: name.to_string() })
}

/// The name of the Secret `target add` makes for target `name`.
fn made_secret_name(target: &str) -> String {
    format!("backup-target-{target}")
}

/// S3 credentials to put into the Secret `target add` makes.
#[derive(PartialEq)]
struct Credentials {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key", &self.access_key).finish_non_exhaustive()
    }
}

/// What `target add` writes: the target's spec and, when the credentials
/// were given on the command line, the Secret's contents.
#[derive(Debug)]
struct TargetPlan {
    spec: BackupTargetSpec,
    credentials: Option<Credentials>,
}

/// Checks the flags of `target add` and reads the secret key (from the
/// file, else from `env`). Says what to do when something is missing.
fn target_plan(a: &TargetAddArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<TargetPlan> {
    let s3_flags = a.s3_endpoint.is_some()
        || a.bucket.is_some()
        || a.region.is_some()
        || a.prefix.is_some()
        || a.style.is_some()
        || a.access_key_id.is_some()
        || a.secret_access_key_file.is_some()
        || a.credential_secret.is_some()
        || a.ca_bundle.is_some();
    let mut spec = BackupTargetSpec {
        compression: a.compression.clone(),
        poll_interval: a.poll_interval.clone(),
        ..Default::default()
    };
    if let Some(path) = &a.path {
        if a.s3_endpoint.is_some() {
            bail!("give either --path DIR (a directory) or --s3-endpoint URL (a bucket), not both: make two targets");
        }
        if s3_flags {
            bail!(
                "--path DIR makes a directory target; the S3 flags (--bucket, --access-key-id, ...) do not apply to it"
            );
        }
        if !path.starts_with('/') {
            bail!("--path {path:?} is not an absolute path: give the directory as the nodes see it, e.g. /mnt/backups");
        }
        spec.filesystem = Some(FilesystemTarget { path: path.clone() });
        return Ok(TargetPlan { spec, credentials: None });
    }
    if !s3_flags {
        bail!(
            "say where the backups go: --path DIR for a directory on the nodes (an NFS mount), or \
             --s3-endpoint URL --bucket BUCKET --access-key-id ID for an S3 bucket (see --help)"
        );
    }
    let Some(bucket) = a.bucket.clone() else {
        bail!("an S3 target needs --bucket BUCKET");
    };
    let ca_bundle = match &a.ca_bundle {
        Some(f) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("cannot read the CA bundle {}", f.display()))?)
        }
        None => None,
    };
    let (credential_secret, credentials) = match &a.credential_secret {
        Some(s) => {
            if a.access_key_id.is_some() || a.secret_access_key_file.is_some() {
                bail!(
                    "give either --credential-secret NS/NAME (a Secret that holds the keys) or --access-key-id \
                     with the secret key in a file or ${SECRET_KEY}, not both"
                );
            }
            (parse_secret_ref(s)?, None)
        }
        None => {
            let Some(access_key) = a.access_key_id.clone().or_else(|| env(ACCESS_KEY)).filter(|k| !k.is_empty()) else {
                bail!(
                    "an S3 target needs credentials: --access-key-id ID with the secret key in \
                     --secret-access-key-file FILE or ${SECRET_KEY}, or --credential-secret NS/NAME for a Secret \
                     holding {ACCESS_KEY} and {SECRET_KEY}"
                );
            };
            let (secret_key, from_env) = match &a.secret_access_key_file {
                Some(f) => (read_secret_file(f)?, false),
                None => match env(SECRET_KEY).map(|k| k.trim().to_string()).filter(|k| !k.is_empty()) {
                    Some(k) => (k, true),
                    None => bail!(
                        "no secret access key: put it in a file and pass --secret-access-key-file FILE, or set \
                         ${SECRET_KEY} (it is never taken from a flag, which would show in `ps`)"
                    ),
                },
            };
            // Temporary credentials come as a triple: the token goes with
            // a secret key from the same environment.
            let session_token = if from_env {
                env(SESSION_TOKEN).map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
            } else {
                None
            };
            let r = SecretRef { namespace: Some(SECRET_NAMESPACE.into()), name: made_secret_name(&a.name) };
            (r, Some(Credentials { access_key, secret_key, session_token }))
        }
    };
    spec.s3 = Some(S3Target {
        endpoint: a.s3_endpoint.clone(),
        bucket,
        region: a.region.clone(),
        prefix: a.prefix.clone(),
        style: a.style.clone(),
        credential_secret,
        ca_bundle,
    });
    Ok(TargetPlan { spec, credentials })
}

/// The secret key in `f` (`-`: standard input), without surrounding
/// whitespace. Errors name the file, never its contents.
fn read_secret_file(f: &std::path::Path) -> anyhow::Result<String> {
    let text = if f.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the secret access key from standard input")?
    } else {
        std::fs::read_to_string(f).with_context(|| format!("cannot read the secret access key file {}", f.display()))?
    };
    let key = text.trim().to_string();
    if key.is_empty() {
        bail!("the secret access key file {} is empty", f.display());
    }
    Ok(key)
}

fn name_of(meta: &sheaf_types::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// A row of `target list`: NAME, URL, AVAILABLE, BACKUPS, MESSAGE.
fn target_row(t: &BackupTarget) -> Vec<String> {
    let status = t.status.as_ref();
    let checked = status.is_some_and(|s| s.last_checked.is_some());
    vec![
        name_of(&t.metadata).to_string(),
        status.and_then(|s| s.url.clone()).unwrap_or_else(|| describe_spec(&t.spec)),
        match status {
            Some(s) if checked => s.available.to_string(),
            _ => "unknown".into(),
        },
        status.and_then(|s| s.backups).map(|n| n.to_string()).unwrap_or_default(),
        match status.and_then(|s| s.message.clone()) {
            Some(m) => m,
            None if !checked => "not checked yet".into(),
            None => String::new(),
        },
    ]
}

/// Where a target is, from its spec (before the controller said so).
fn describe_spec(spec: &BackupTargetSpec) -> String {
    match (&spec.s3, &spec.filesystem) {
        (Some(s3), _) => format!("s3://{}/{}", s3.bucket, s3.prefix.as_deref().unwrap_or_default()),
        (None, Some(fs)) => fs.path.clone(),
        (None, None) => String::new(),
    }
}

/// PHASE of `list`: the phase, with the progress while in progress.
fn phase_text(b: &Backup) -> String {
    let status = b.status.as_ref();
    match b.phase() {
        "" => "Pending".into(),
        "InProgress" => format!("InProgress {}%", status.and_then(|s| s.progress).unwrap_or(0)),
        p => p.to_string(),
    }
}

/// A row of `list`: NAME, VOLUME, TARGET, PHASE, SIZE, SENT, PARENT, AGE.
fn backup_row(b: &Backup, now: &Time) -> Vec<String> {
    let status = b.status.as_ref();
    let started = status.and_then(|s| s.start_time.as_ref()).or(b.metadata.creation_timestamp.as_ref());
    vec![
        name_of(&b.metadata).to_string(),
        b.spec.volume_name.clone(),
        b.spec.target.clone(),
        phase_text(b),
        status.and_then(|s| s.size).map(human_bytes).unwrap_or_default(),
        status.and_then(|s| s.bytes_uploaded).map(human_bytes).unwrap_or_default(),
        status.and_then(|s| s.parent.clone()).unwrap_or_default(),
        started.map(|t| human_age((now.0 - t.0).num_seconds())).unwrap_or_default(),
    ]
}

/// The line `create` prints when a backup completed.
fn completed_line(ns: &str, b: &Backup, took: Duration) -> String {
    let s = b.status.clone().unwrap_or_default();
    let mut line = format!(
        "backup {ns}/{} completed in {}: read {}, sent {} ({} new chunks, {} already there, {} unchanged)",
        name_of(&b.metadata),
        human_elapsed(took),
        human_bytes(s.bytes_read.unwrap_or(0)),
        human_bytes(s.bytes_uploaded.unwrap_or(0)),
        s.chunks_new.unwrap_or(0),
        s.chunks_reused.unwrap_or(0),
        s.chunks_unchanged.unwrap_or(0),
    );
    if let Some(p) = &s.parent {
        line.push_str(&format!(", incremental on {p}"));
    }
    line
}

/// How a followed backup stands.
#[derive(Debug, PartialEq)]
enum BackupState {
    /// Waiting; the reason the controller gives, if any.
    Pending(Option<String>),
    /// Percent done, bytes read, bytes sent.
    Running(u64, u64, u64),
    Completed,
    Failed(String),
}

fn backup_state(b: &Backup) -> BackupState {
    let s = b.status.clone().unwrap_or_default();
    match b.phase() {
        "Completed" => BackupState::Completed,
        "Failed" => BackupState::Failed(s.error.unwrap_or_else(|| "no reason given".into())),
        "InProgress" => BackupState::Running(
            u64::from(s.progress.unwrap_or(0).min(100)),
            s.bytes_read.unwrap_or(0),
            s.bytes_uploaded.unwrap_or(0),
        ),
        _ => BackupState::Pending(s.error),
    }
}

/// How a verification stands, once the controller answers `request`.
#[derive(Debug, PartialEq)]
enum VerifyState {
    /// The controller has not taken this request up yet.
    Requested,
    Running(u64),
    /// Chunks checked.
    Passed(u64),
    /// The lines to print.
    Failed(Vec<String>),
}

fn verify_state(b: &Backup, request: &str) -> VerifyState {
    let Some(v) = b.status.as_ref().and_then(|s| s.verification.as_ref()).filter(|v| v.request == request) else {
        return VerifyState::Requested;
    };
    match v.phase.as_str() {
        "Passed" => VerifyState::Passed(v.chunks_checked),
        "Failed" => {
            let mut lines = vec![v.message.clone().unwrap_or_else(|| "the verification failed".into())];
            lines.extend(v.bad_chunks.iter().map(|c| format!("  bad chunk {c}")));
            let shown = v.bad_chunks.len() as u64;
            if v.bad_count > shown {
                lines.push(format!("  ... and {} more", v.bad_count - shown));
            }
            VerifyState::Failed(lines)
        }
        _ => VerifyState::Running(u64::from(v.progress.unwrap_or(0).min(100))),
    }
}

// ---------------------------------------------------------------------------
// Talking to the server

struct Ctx {
    client: Client,
    ns: String,
    timeout: Option<u64>,
}

fn backups_path(ns: &str, name: Option<&str>) -> String {
    let base = format!("{GV}/namespaces/{}/backups", encode(ns));
    match name {
        Some(n) => format!("{base}/{}", encode(n)),
        None => base,
    }
}

fn volume_path(ns: &str, name: Option<&str>) -> String {
    let base = format!("{GV}/namespaces/{}/volumes", encode(ns));
    match name {
        Some(n) => format!("{base}/{}", encode(n)),
        None => base,
    }
}

fn target_path(name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{GV}/backuptargets/{}", encode(n)),
        None => format!("{GV}/backuptargets"),
    }
}

fn secret_path(ns: &str, name: Option<&str>) -> String {
    let base = format!("/api/v1/namespaces/{}/secrets", encode(ns));
    match name {
        Some(n) => format!("{base}/{}", encode(n)),
        None => base,
    }
}

impl Ctx {
    fn wait_for(&self, default: u64) -> Duration {
        Duration::from_secs(self.timeout.unwrap_or(default))
    }

    /// The object at `path`, None if there is none.
    async fn get(&self, path: &str) -> anyhow::Result<Option<Value>> {
        match self.client.get_json(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_typed<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<Option<T>> {
        match self.get(path).await? {
            Some(v) => Ok(Some(serde_json::from_value(v).with_context(|| format!("the server's answer to {path}"))?)),
            None => Ok(None),
        }
    }

    async fn send(&self, method: Method, path: &str, body: &Value, ct: &str) -> anyhow::Result<Value> {
        let bytes = serde_json::to_vec(body)?;
        Ok(self.client.request(method, path, "application/json", Some((ct, bytes))).await?.body)
    }

    async fn create(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, body, "application/json").await
    }

    async fn replace(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, body, "application/json").await
    }

    async fn merge_patch(&self, path: &str, patch: &Value) -> anyhow::Result<Value> {
        self.send(Method::PATCH, path, patch, "application/merge-patch+json").await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.client.request(Method::DELETE, path, "application/json", None).await.map(drop)
    }

    /// The Backup `name`, or an error saying how to find the backups.
    async fn backup(&self, name: &str) -> anyhow::Result<Backup> {
        self.get_typed(&backups_path(&self.ns, Some(name))).await?.ok_or_else(|| no_backup(name, &self.ns))
    }

    async fn backups(&self) -> anyhow::Result<Vec<Backup>> {
        let v = self.client.get_json(&backups_path(&self.ns, None)).await?;
        let items = v.get("items").cloned().unwrap_or_else(|| json!([]));
        serde_json::from_value(items).context("the server's list of backups")
    }
}

fn no_backup(name: &str, ns: &str) -> anyhow::Error {
    anyhow!("there is no backup {name} in namespace {ns} (sheaf backup list -n {ns} lists them)")
}

/// A progress bar on a terminal's stderr, else hidden; `note` prints what
/// a command waits for once per change when the bar is hidden.
struct Follow {
    bar: ProgressBar,
    last_note: String,
}

impl Follow {
    fn new(what: &str) -> Follow {
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new(100);
            let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos:>3}% {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(what.to_string());
            b
        } else {
            ProgressBar::hidden()
        };
        Follow { bar, last_note: String::new() }
    }

    fn progress(&mut self, pct: u64, msg: String) {
        self.bar.set_position(pct);
        self.bar.set_message(msg);
    }

    /// What the command waits for: printed in full once per change (a bar
    /// line is too short for it), "waiting" on the bar.
    fn note(&mut self, msg: &str) {
        if msg != self.last_note {
            if self.bar.is_hidden() {
                eprintln!("  {msg}");
            } else {
                self.bar.println(format!("  {msg}"));
            }
            self.last_note = msg.to_string();
        }
        self.bar.set_message("waiting");
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }

    fn abandon(&self) {
        self.bar.abandon();
    }
}

const POLL: Duration = Duration::from_millis(500);
/// How long `target add` waits for a check before it asks again.
const ASK_AGAIN: Duration = Duration::from_secs(2);

pub async fn run(a: BackupArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.conn)?;
    let ns = a.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    let cx = Ctx { client, ns, timeout: a.timeout };
    match a.action {
        BackupAction::Target { action: TargetAction::Add(t) } => target_add(&cx, *t).await,
        BackupAction::Target { action: TargetAction::List } => target_list(&cx).await,
        BackupAction::Target { action: TargetAction::Remove { name } } => target_remove(&cx, &name).await,
        BackupAction::Create { volume, target, name, snapshot, no_wait } => {
            create(&cx, &volume, &target, name, snapshot, no_wait).await
        }
        BackupAction::List { target, volume } => list(&cx, target.as_deref(), volume.as_deref()).await,
        BackupAction::Show { backup } => show(&cx, &backup).await,
        BackupAction::Restore { backup, to, replicas, size, no_wait } => {
            restore(&cx, &backup, &to, replicas, size.as_deref(), no_wait).await
        }
        BackupAction::Verify { backup, no_wait } => verify(&cx, &backup, no_wait).await,
        BackupAction::Delete { backup } => delete(&cx, &backup).await,
        BackupAction::Files { backup, path, partition, get } => {
            files(&cx, &backup, path.as_deref(), partition, get.as_deref()).await
        }
    }
}

// ---------------------------------------------------------------------------
// files

async fn files(
    cx: &Ctx,
    backup: &str,
    path: Option<&str>,
    partition: Option<u32>,
    get: Option<&str>,
) -> anyhow::Result<()> {
    let base = format!("{GV}/namespaces/{}/backups/{}", encode(&cx.ns), encode(backup));
    let part = partition.map(|p| p.to_string());
    let mut q: Vec<(&str, &str)> = Vec::new();
    if let Some(p) = path {
        q.push(("path", p));
    }
    if let Some(p) = &part {
        q.push(("partition", p));
    }
    let query = super::client::query(&q);
    if let Some(out) = get {
        let Some(p) = path else {
            bail!("--get needs the file's PATH: sheaf backup files {backup} /etc/hostname --get hostname")
        };
        let mut resp = cx.client.get_stream(&format!("{base}/download{query}")).await?;
        let total = resp.content_length().unwrap_or(0);
        let bar = if out != "-" && std::io::stderr().is_terminal() && total > 0 {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message("download");
            b
        } else {
            ProgressBar::hidden()
        };
        let mut sink: Box<dyn std::io::Write> = if out == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::fs::File::create(out).with_context(|| format!("creating {out}"))?)
        };
        let mut written = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| anyhow!("reading {p} from the server: {e}"))? {
            sink.write_all(&chunk).with_context(|| format!("writing {out}"))?;
            written += chunk.len() as u64;
            bar.set_position(written);
        }
        sink.flush()?;
        bar.finish_and_clear();
        if total > 0 && written != total {
            bail!("the download of {p} stopped after {written} of {total} bytes (see the server's log)");
        }
        if out != "-" {
            eprintln!("{p}: {written} bytes written to {out}");
        }
        return Ok(());
    }
    let v = cx.client.get_json(&format!("{base}/files{query}")).await?;
    if let Some(parts) = v.get("partitions").and_then(Value::as_array) {
        println!("{:<5} {:<6} {:>12} {:>12}  {:<10} LABEL", "PART", "TABLE", "START", "SIZE", "FILESYSTEM");
        for p in parts {
            let fs = p["filesystem"].as_str().unwrap_or("-");
            let label = p["label"].as_str().or(p["name"].as_str()).unwrap_or("");
            let err = p["error"].as_str().map(|e| format!("  ({e})")).unwrap_or_default();
            println!(
                "{:<5} {:<6} {:>12} {:>12}  {:<10} {label}{err}",
                p["index"],
                p["table"].as_str().unwrap_or(""),
                human_bytes(p["start"].as_u64().unwrap_or(0)),
                human_bytes(p["size"].as_u64().unwrap_or(0)),
                fs
            );
        }
        return Ok(());
    }
    println!("{:<10} {:>6} {:>12} {:<20} NAME", "KIND", "MODE", "SIZE", "MODIFIED");
    for e in v.get("entries").and_then(Value::as_array).cloned().unwrap_or_default() {
        let when = e["mtime"]
            .as_i64()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        let name = match e["linkTarget"].as_str() {
            Some(t) => format!("{} -> {t}", e["name"].as_str().unwrap_or("")),
            None => e["name"].as_str().unwrap_or("").to_string(),
        };
        println!(
            "{:<10} {:>6o} {:>12} {:<20} {name}",
            e["kind"].as_str().unwrap_or(""),
            e["mode"].as_u64().unwrap_or(0),
            e["size"].as_u64().unwrap_or(0),
            when
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// target add | list | remove

/// The values of a Secret's keys, from `data` (base64) or `stringData`.
fn secret_values(secret: &Value) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in secret.get("data").and_then(Value::as_object).into_iter().flatten() {
        let decoded = v.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
        if let Some(d) = decoded {
            out.insert(k.clone(), String::from_utf8_lossy(&d).into_owned());
        }
    }
    for (k, v) in secret.get("stringData").and_then(Value::as_object).into_iter().flatten() {
        if let Some(s) = v.as_str() {
            out.insert(k.clone(), s.to_string());
        }
    }
    out
}

/// Creates or replaces the Secret holding `c`; whether it changed.
async fn write_credentials(cx: &Ctx, target: &str, c: &Credentials) -> anyhow::Result<bool> {
    let name = made_secret_name(target);
    let path = secret_path(SECRET_NAMESPACE, Some(&name));
    let mut wanted = std::collections::BTreeMap::from([
        (ACCESS_KEY.to_string(), c.access_key.clone()),
        (SECRET_KEY.to_string(), c.secret_key.clone()),
    ]);
    if let Some(t) = &c.session_token {
        wanted.insert(SESSION_TOKEN.to_string(), t.clone());
    }
    let existing = cx.get(&path).await.with_context(|| format!("reading Secret {SECRET_NAMESPACE}/{name}"))?;
    let mut body = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": SECRET_NAMESPACE, "labels": {MADE_FOR_LABEL: target}},
        "stringData": wanted,
    });
    let result = match &existing {
        Some(old) => {
            let labelled =
                old.pointer(&format!("/metadata/labels/{}", MADE_FOR_LABEL.replace('/', "~1"))) == Some(&json!(target));
            if labelled && secret_values(old) == wanted {
                return Ok(false);
            }
            body["metadata"]["resourceVersion"] =
                old.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
            cx.replace(&path, &body).await
        }
        None => cx.create(&secret_path(SECRET_NAMESPACE, None), &body).await,
    };
    // The server's errors about a Secret name fields, never values.
    result.with_context(|| format!("writing the credentials into Secret {SECRET_NAMESPACE}/{name}"))?;
    Ok(true)
}

/// Checks that the Secret an S3 target names exists and has both keys.
async fn check_credential_secret(cx: &Ctx, r: &SecretRef) -> anyhow::Result<()> {
    let ns = r.namespace.as_deref().unwrap_or(SECRET_NAMESPACE);
    let Some(secret) = cx.get(&secret_path(ns, Some(&r.name))).await? else {
        bail!(
            "Secret {ns}/{} does not exist: create it with kubectl -n {ns} create secret generic {} \
             --from-literal={ACCESS_KEY}=... --from-file={SECRET_KEY}=FILE, or pass --access-key-id instead",
            r.name,
            r.name
        );
    };
    let values = secret_values(&secret);
    for k in [ACCESS_KEY, SECRET_KEY] {
        if values.get(k).is_none_or(|v| v.trim().is_empty()) {
            bail!("Secret {ns}/{} has no {k}; the target needs {ACCESS_KEY} and {SECRET_KEY}", r.name);
        }
    }
    Ok(())
}

/// The Secret `target add` made for `t`, if `t` still uses it.
fn made_secret_of(t: &BackupTarget) -> Option<String> {
    let name = made_secret_name(name_of(&t.metadata));
    let r = &t.spec.s3.as_ref()?.credential_secret;
    (r.namespace.as_deref().unwrap_or(SECRET_NAMESPACE) == SECRET_NAMESPACE && r.name == name).then_some(name)
}

/// Deletes the Secret `target add` made for target `target` (only if it
/// carries the label saying so); whether there was one.
async fn delete_made_secret(cx: &Ctx, target: &str, name: &str) -> anyhow::Result<bool> {
    let path = secret_path(SECRET_NAMESPACE, Some(name));
    let Some(secret) = cx.get(&path).await? else { return Ok(false) };
    let ours =
        secret.pointer(&format!("/metadata/labels/{}", MADE_FOR_LABEL.replace('/', "~1"))) == Some(&json!(target));
    if !ours {
        return Ok(false);
    }
    match cx.delete(&path).await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.context(format!("deleting Secret {SECRET_NAMESPACE}/{name}"))),
    }
}

async fn target_add(cx: &Ctx, a: TargetAddArgs) -> anyhow::Result<()> {
    let plan = target_plan(&a, &|k| std::env::var(k).ok())?;
    let name = a.name.as_str();
    if let Some(r) = plan.spec.s3.as_ref().map(|s| &s.credential_secret).filter(|_| plan.credentials.is_none()) {
        check_credential_secret(cx, r).await?;
    }
    let secret_changed = match &plan.credentials {
        Some(c) => write_credentials(cx, name, c).await?,
        None => false,
    };
    let path = target_path(Some(name));
    let existing: Option<BackupTarget> = cx.get_typed(&path).await?;
    let old_checked = existing.as_ref().and_then(|t| t.status.as_ref()).and_then(|s| s.last_checked);
    let spec = serde_json::to_value(&plan.spec)?;
    let rv_of = |v: &Value| v.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
    let (verb, mut written) = match &existing {
        None => {
            let body = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "BackupTarget",
                "metadata": {"name": name}, "spec": spec});
            ("created", rv_of(&cx.create(&target_path(None), &body).await?))
        }
        Some(t) if t.spec == plan.spec => {
            // Nothing to change in the object (maybe in its Secret): a
            // touch of the annotation has it checked again now rather
            // than at its next poll.
            let verb = if secret_changed { "changed" } else { "unchanged" };
            (verb, request_check(cx, &path).await?)
        }
        Some(t) => {
            let body = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "BackupTarget",
                "metadata": {"name": name, "resourceVersion": t.metadata.resource_version,
                             "annotations": t.metadata.annotations, "labels": t.metadata.labels},
                "spec": spec});
            let reply = cx.replace(&path, &body).await?;
            // A Secret made for it before that it no longer uses goes.
            if let Some(old) = made_secret_of(t).filter(|_| plan.credentials.is_none()) {
                delete_made_secret(cx, name, &old).await?;
            }
            ("changed", rv_of(&reply))
        }
    };
    eprintln!("backup target {name} {verb}; waiting for its check");
    let deadline = Instant::now() + cx.wait_for(SHORT_WAIT);
    // A check after the write: its time differs from the last one's, or
    // it changed the status. `lastChecked` is in seconds: a check in the
    // same second as the one before leaves the status as it was, so after
    // a while without news the check is asked for again.
    let mut asked = Instant::now();
    let t = loop {
        let t: Option<BackupTarget> = cx.get_typed(&path).await?;
        let Some(t) = t else { bail!("backup target {name} was deleted while it was being checked") };
        let checked = t.status.as_ref().and_then(|s| s.last_checked);
        if checked.is_some() && (checked != old_checked || t.metadata.resource_version != written) {
            break t;
        }
        if asked.elapsed() > ASK_AGAIN {
            written = request_check(cx, &path).await?;
            asked = Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "backup target {name} was saved, but not checked within {} s; `sheaf backup target list` shows \
                 it once it is",
                cx.wait_for(SHORT_WAIT).as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let s = t.status.clone().unwrap_or_default();
    let url = s.url.clone().unwrap_or_else(|| describe_spec(&t.spec));
    if !s.available {
        bail!(
            "backup target {name} ({url}) is not available: {}",
            s.message.as_deref().unwrap_or("the check failed without a reason")
        );
    }
    let count = s.backups.map(|n| format!(", {n} backup(s) on it")).unwrap_or_default();
    println!("backup target {name} is available: {url}{count}");
    if let Some(m) = &s.message {
        println!("  {m}");
    }
    Ok(())
}

/// Has the controller check the target at `path` now (any change of the
/// object does); the resourceVersion written.
async fn request_check(cx: &Ctx, path: &str) -> anyhow::Result<Option<String>> {
    let patch = json!({"metadata": {"annotations": {CHECK_ANNOTATION: now_millis()}}});
    let reply = cx.merge_patch(path, &patch).await?;
    Ok(reply.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string))
}

async fn target_list(cx: &Ctx) -> anyhow::Result<()> {
    let v = cx.client.get_json(&target_path(None)).await?;
    let items: Vec<BackupTarget> =
        serde_json::from_value(v.get("items").cloned().unwrap_or_else(|| json!([]))).context("the list of targets")?;
    if items.is_empty() {
        eprintln!(
            "No backup targets: add one with sheaf backup target add NAME --path DIR (or an S3 bucket, see --help)"
        );
        return Ok(());
    }
    let mut rows = vec![vec!["NAME".to_string(), "URL".into(), "AVAILABLE".into(), "BACKUPS".into(), "MESSAGE".into()]];
    rows.extend(items.iter().map(target_row));
    print!("{}", super::printer::align(&rows));
    Ok(())
}

async fn target_remove(cx: &Ctx, name: &str) -> anyhow::Result<()> {
    let path = target_path(Some(name));
    let Some(t) = cx.get_typed::<BackupTarget>(&path).await? else {
        bail!("there is no backup target {name} (sheaf backup target list lists them)");
    };
    let backups_there = t.status.as_ref().and_then(|s| s.backups);
    let was_available = t.status.as_ref().is_some_and(|s| s.available);
    cx.delete(&path).await?;
    let secret = match made_secret_of(&t) {
        Some(s) => delete_made_secret(cx, name, &s).await?.then_some(s),
        None => None,
    };
    let url = t.status.as_ref().and_then(|s| s.url.clone()).unwrap_or_else(|| describe_spec(&t.spec));
    match secret {
        Some(s) => println!("backup target {name} removed, and its Secret {SECRET_NAMESPACE}/{s}"),
        None => println!("backup target {name} removed"),
    }
    if was_available || backups_there.is_some_and(|n| n > 0) {
        let count = backups_there.map(|n| format!(" ({n})")).unwrap_or_default();
        println!("the backups on it{count} are left in {url}: add a target there again to see and restore them");
    }
    // Backup objects that still name the target.
    let sel = super::client::query(&[("labelSelector", &format!("{TARGET_LABEL}={name}"))]);
    if let Ok(v) = cx.client.get_json(&format!("{GV}/backups{sel}")).await {
        let n = v.get("items").and_then(Value::as_array).map_or(0, Vec::len);
        if n > 0 {
            println!("{n} Backup object(s) still name it; deleting them now leaves their data on the target");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// create | list | show

async fn create(
    cx: &Ctx,
    volume: &str,
    target: &str,
    name: Option<String>,
    snapshot: Option<String>,
    no_wait: bool,
) -> anyhow::Result<()> {
    let ns = cx.ns.as_str();
    if cx.get(&volume_path(ns, Some(volume))).await?.is_none() {
        bail!("there is no volume {volume} in namespace {ns} (sheaf volume list -n {ns} lists them)");
    }
    let Some(t) = cx.get_typed::<BackupTarget>(&target_path(Some(target))).await? else {
        bail!(
            "there is no backup target {target}: add one with sheaf backup target add {target} --path DIR \
             (or --s3-endpoint URL --bucket B ...), or pick one of sheaf backup target list"
        );
    };
    if t.status.as_ref().is_some_and(|s| s.last_checked.is_some() && !s.available) {
        eprintln!(
            "Warning: backup target {target} is not available ({}); the backup waits until it is",
            t.status.as_ref().and_then(|s| s.message.as_deref()).unwrap_or("no reason given")
        );
    }
    if let Some(snap) = &snapshot {
        let path = format!("{GV}/namespaces/{}/volumesnapshots/{}", encode(ns), encode(snap));
        let Some(sn) = cx.get(&path).await? else {
            bail!(
                "there is no VolumeSnapshot {snap} in namespace {ns} (sheaf volume snapshots {volume} lists the \
                 volume's); leave --snapshot out to let Sheaf take one"
            );
        };
        let of = sn.pointer("/spec/volumeName").and_then(Value::as_str).unwrap_or_default();
        if of != volume {
            bail!("VolumeSnapshot {snap} is a snapshot of volume {of}, not of {volume}");
        }
    }
    let name = name.unwrap_or_else(|| default_name(volume, &Time::now()));
    let mut spec = json!({"volumeName": volume, "target": target});
    if let Some(s) = &snapshot {
        spec["snapshotName"] = json!(s);
    }
    let body = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let started = Instant::now();
    if let Err(e) = cx.create(&backups_path(ns, None), &body).await {
        if e.downcast_ref::<ServerError>().is_some_and(|s| s.code == 409) {
            bail!("backup {ns}/{name} already exists: pick another --name");
        }
        return Err(e);
    }
    if no_wait {
        println!("backup {ns}/{name} created; follow it with sheaf backup list or sheaf backup show {name}");
        return Ok(());
    }
    let mut follow = Follow::new("backing up");
    let deadline = started + cx.wait_for(LONG_WAIT);
    let b = loop {
        let Some(b) = cx.get_typed::<Backup>(&backups_path(ns, Some(&name))).await? else {
            follow.abandon();
            bail!("backup {ns}/{name} was deleted while it ran");
        };
        match backup_state(&b) {
            BackupState::Completed => {
                follow.done();
                break b;
            }
            BackupState::Failed(e) => {
                follow.abandon();
                bail!("backup {ns}/{name} failed: {e}");
            }
            BackupState::Running(pct, read, sent) => {
                follow.progress(pct, format!("read {}, sent {}", human_bytes(read), human_bytes(sent)))
            }
            BackupState::Pending(why) => follow.note(why.as_deref().unwrap_or("waiting for the controller")),
        }
        if Instant::now() > deadline {
            follow.abandon();
            bail!(
                "backup {ns}/{name} is still {} after {} s; it goes on: sheaf backup list -n {ns} follows it",
                phase_text(&b),
                cx.wait_for(LONG_WAIT).as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    println!("{}", completed_line(ns, &b, started.elapsed()));
    Ok(())
}

async fn list(cx: &Ctx, target: Option<&str>, volume: Option<&str>) -> anyhow::Result<()> {
    let mut items: Vec<Backup> = cx
        .backups()
        .await?
        .into_iter()
        .filter(|b| target.is_none_or(|t| b.spec.target == t) && volume.is_none_or(|v| b.spec.volume_name == v))
        .collect();
    if items.is_empty() {
        eprintln!("No backups found in {} namespace.", cx.ns);
        return Ok(());
    }
    let started = |b: &Backup| b.status.as_ref().and_then(|s| s.start_time).or(b.metadata.creation_timestamp);
    items.sort_by(|a, b| started(a).cmp(&started(b)).then_with(|| a.metadata.name.cmp(&b.metadata.name)));
    let now = Time::now();
    let mut rows = vec![["NAME", "VOLUME", "TARGET", "PHASE", "SIZE", "SENT", "PARENT", "AGE"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    rows.extend(items.iter().map(|b| backup_row(b, &now)));
    print!("{}", super::printer::align(&rows));
    Ok(())
}

async fn show(cx: &Ctx, name: &str) -> anyhow::Result<()> {
    let Some(mut v) = cx.get(&backups_path(&cx.ns, Some(name))).await? else {
        return Err(no_backup(name, &cx.ns));
    };
    super::printer::strip_managed_fields(&mut v);
    if let Some(m) = v.as_object_mut() {
        m.entry("apiVersion").or_insert_with(|| json!("sheaf.io/v1alpha1"));
        m.entry("kind").or_insert_with(|| json!("Backup"));
    }
    print!("{}", super::printer::to_yaml(&v)?);
    Ok(())
}

// ---------------------------------------------------------------------------
// restore | verify | delete

async fn restore(
    cx: &Ctx,
    backup: &str,
    to: &str,
    replicas: Option<u32>,
    size: Option<&str>,
    no_wait: bool,
) -> anyhow::Result<()> {
    let ns = cx.ns.as_str();
    let b = cx.backup(backup).await?;
    if !b.completed() {
        bail!(
            "backup {ns}/{backup} is {}, not Completed: only a completed backup can be restored{}",
            phase_text(&b),
            if b.phase() == "Failed" { "; take a new one with sheaf backup create" } else { " (wait for it)" }
        );
    }
    let Some(backup_size) = b.status.as_ref().and_then(|s| s.size) else {
        bail!("backup {ns}/{backup} does not say how large it is (status.size); cannot size the new volume");
    };
    let size = restore_size(backup, backup_size, size)?;
    let mut spec = json!({"size": size, "fromBackup": backup});
    if let Some(n) = replicas {
        spec["numberOfReplicas"] = json!(n);
    }
    let body = json!({"apiVersion": "sheaf.io/v1alpha1", "kind": "Volume",
        "metadata": {"name": to, "namespace": ns}, "spec": spec});
    let started = Instant::now();
    if let Err(e) = cx.create(&volume_path(ns, None), &body).await {
        if e.downcast_ref::<ServerError>().is_some_and(|s| s.code == 409) {
            bail!("volume {ns}/{to} already exists: a backup is restored into a new volume, pick another --to");
        }
        return Err(e);
    }
    if no_wait {
        println!("volume {ns}/{to} created from backup {backup}; it fills in the background (kubectl get volume {to})");
        return Ok(());
    }
    let mut follow = Follow::new("restoring");
    let deadline = started + cx.wait_for(LONG_WAIT);
    loop {
        let Some(v) = cx.get_typed::<Volume>(&volume_path(ns, Some(to))).await? else {
            follow.abandon();
            bail!("volume {ns}/{to} was deleted while it was being restored");
        };
        let s = v.status.clone().unwrap_or_default();
        if s.restored_from.is_some() {
            follow.done();
            break;
        }
        if let Some(why) = v.unplaceable() {
            follow.abandon();
            bail!(
                "volume {ns}/{to} was created, but its replicas cannot be placed: {why}. Delete it with \
                 sheaf volume delete {to} and try again with other --replicas, or free space"
            );
        }
        let pct = u64::from(s.restore_progress.unwrap_or(0).min(100));
        match &s.restore_error {
            Some(e) => {
                follow.bar.set_position(pct);
                follow.note(e);
            }
            None => follow.progress(pct, String::new()),
        }
        if Instant::now() > deadline {
            follow.abandon();
            let last = s.restore_error.map(|e| format!(" (last: {e})")).unwrap_or_default();
            bail!(
                "volume {ns}/{to} was created but not restored within {} s{last}; the restore goes on: \
                 kubectl get volume {to} -o yaml follows it",
                cx.wait_for(LONG_WAIT).as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    println!(
        "volume {ns}/{to} restored from backup {backup} ({}) in {}",
        human_bytes(backup_size),
        human_elapsed(started.elapsed())
    );
    Ok(())
}

async fn verify(cx: &Ctx, backup: &str, no_wait: bool) -> anyhow::Result<()> {
    let ns = cx.ns.as_str();
    let b = cx.backup(backup).await?;
    if !b.completed() {
        bail!("backup {ns}/{backup} is {}: only a completed backup can be verified", phase_text(&b));
    }
    let request = now_millis();
    let patch = json!({"metadata": {"annotations": {VERIFY_ANNOTATION: request}}});
    cx.merge_patch(&backups_path(ns, Some(backup)), &patch).await?;
    if no_wait {
        println!("verification of backup {ns}/{backup} requested; sheaf backup show {backup} shows its outcome");
        return Ok(());
    }
    let mut follow = Follow::new("verifying");
    let deadline = Instant::now() + cx.wait_for(LONG_WAIT);
    loop {
        let b = cx.backup(backup).await?;
        match verify_state(&b, &request) {
            VerifyState::Passed(n) => {
                follow.done();
                println!("verified: {n} chunks read back and match their hashes");
                return Ok(());
            }
            VerifyState::Failed(lines) => {
                follow.abandon();
                eprintln!("error: backup {ns}/{backup} failed verification: {}", lines[0]);
                for l in &lines[1..] {
                    eprintln!("{l}");
                }
                return Err(super::Reported.into());
            }
            VerifyState::Running(pct) => follow.progress(pct, String::new()),
            VerifyState::Requested => follow.note("waiting for the controller"),
        }
        if Instant::now() > deadline {
            follow.abandon();
            bail!(
                "the verification of backup {ns}/{backup} did not finish within {} s; it goes on: \
                 sheaf backup show {backup} shows status.verification",
                cx.wait_for(LONG_WAIT).as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn delete(cx: &Ctx, backup: &str) -> anyhow::Result<()> {
    let ns = cx.ns.as_str();
    let b = cx.backup(backup).await?;
    let path = backups_path(ns, Some(backup));
    match cx.delete(&path).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + cx.wait_for(SHORT_WAIT);
    // Only errors of the deletion are news, not what the backup waited
    // for before.
    let before = b.status.as_ref().and_then(|s| s.error.clone());
    let mut last_error = None::<String>;
    loop {
        match cx.get_typed::<Backup>(&path).await? {
            None => break,
            Some(now) if now.metadata.uid != b.metadata.uid => break,
            Some(now) => {
                let e = now.status.and_then(|s| s.error).filter(|e| Some(e) != before.as_ref());
                if e.is_some() && e != last_error {
                    eprintln!("  {}", e.as_deref().unwrap_or_default());
                }
                last_error = e;
            }
        }
        if Instant::now() > deadline {
            let why = last_error.map(|e| format!(": {e}")).unwrap_or_default();
            bail!(
                "backup {ns}/{backup} is still being deleted after {} s{why}; its removal from target {} goes on",
                cx.wait_for(SHORT_WAIT).as_secs(),
                b.spec.target
            );
        }
        tokio::time::sleep(POLL).await;
    }
    println!(
        "backup {ns}/{backup} deleted: its manifest left target {}; chunks no other backup uses go at the next \
         garbage collection",
        b.spec.target
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        a: BackupArgs,
    }

    fn parse(args: &[&str]) -> Result<BackupArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("backup").chain(args.iter().copied())).map(|c| c.a)
    }

    fn add_args(args: &[&str]) -> TargetAddArgs {
        let mut all = vec!["target", "add", "t1"];
        all.extend_from_slice(args);
        match parse(&all).map(|a| a.action) {
            Ok(BackupAction::Target { action: TargetAction::Add(t) }) => *t,
            other => panic!("not target add: {other:?}"),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn err_of(r: anyhow::Result<TargetPlan>) -> String {
        match r {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn default_names_are_volume_and_utc_time() {
        let t = time("2026-12-01T18:15:00Z");
        assert_eq!(default_name("data", &t), "data-20261201-181500");
        let long = "v".repeat(250);
        let n = default_name(&long, &t);
        assert_eq!(n.len(), 200);
        assert!(n.ends_with("-20261201-181500"));
        let dashed = format!("{}-x", "a".repeat(183));
        assert_eq!(default_name(&dashed, &t), format!("{}-20261201-181500", "a".repeat(183)));
    }

    fn time(s: &str) -> Time {
        serde_json::from_value::<Time>(json!(s)).expect("time")
    }

    #[test]
    fn sizes_round_up_to_blocks() {
        assert_eq!(round_up_to_block(0), 4096);
        assert_eq!(round_up_to_block(1), 4096);
        assert_eq!(round_up_to_block(4096), 4096);
        assert_eq!(round_up_to_block(4097), 8192);
        assert_eq!(round_up_to_block(64 << 20), 64 << 20);
        assert_eq!(restore_size("b", 5000, None).ok().as_deref(), Some("8192"));
        assert_eq!(restore_size("b", 1 << 30, Some("2Gi")).ok().as_deref(), Some("2Gi"));
        let e = restore_size("b", 1 << 30, Some("512Mi")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("smaller than backup b (1.0 GiB)") && e.contains("1073741824"), "{e}");
        assert!(restore_size("b", 1, Some("lots")).is_err());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(50_436_669), "48.1 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_elapsed(Duration::from_millis(3210)), "3.2 s");
        assert_eq!(human_elapsed(Duration::from_secs(252)), "4m12s");
        assert_eq!(human_age(45), "45s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(5 * 3600), "5h");
        assert_eq!(human_age(3 * 86400), "3d");
        assert_eq!(human_age(-3), "0s");
    }

    #[test]
    fn filesystem_targets() {
        let p = target_plan(&add_args(&["--path", "/mnt/backups", "--compression", "lz4"]), &no_env).expect("plan");
        assert_eq!(p.spec.filesystem, Some(FilesystemTarget { path: "/mnt/backups".into() }));
        assert_eq!(p.spec.compression.as_deref(), Some("lz4"));
        assert!(p.spec.s3.is_none() && p.credentials.is_none());
        let e = err_of(target_plan(&add_args(&["--path", "backups"]), &no_env));
        assert!(e.contains("not an absolute path"), "{e}");
    }

    #[test]
    fn path_and_s3_do_not_mix() {
        let e = err_of(target_plan(&add_args(&["--path", "/b", "--s3-endpoint", "http://m:9000"]), &no_env));
        assert!(e.contains("either --path DIR") && e.contains("not both"), "{e}");
        let e = err_of(target_plan(&add_args(&["--path", "/b", "--region", "x"]), &no_env));
        assert!(e.contains("do not apply"), "{e}");
        let e = err_of(target_plan(&add_args(&[]), &no_env));
        assert!(e.contains("--path DIR") && e.contains("--s3-endpoint"), "{e}");
    }

    #[test]
    fn s3_targets_take_the_secret_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("key");
        std::fs::write(&file, "s3cr3t\n").expect("write");
        let f = file.to_str().expect("utf-8");
        let args = add_args(&[
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--bucket",
            "backups",
            "--prefix",
            "a/",
            "--access-key-id",
            "AKID",
            "--secret-access-key-file",
            f,
        ]);
        let env = |k: &str| (k == SESSION_TOKEN).then(|| "tok".to_string());
        let p = target_plan(&args, &env).expect("plan");
        let s3 = p.spec.s3.as_ref().expect("s3");
        assert_eq!(s3.bucket, "backups");
        assert_eq!(s3.prefix.as_deref(), Some("a/"));
        assert_eq!(
            s3.credential_secret,
            SecretRef { namespace: Some("sheaf-system".into()), name: "backup-target-t1".into() }
        );
        // A token in the environment does not go with a key from a file.
        assert_eq!(
            p.credentials,
            Some(Credentials { access_key: "AKID".into(), secret_key: "s3cr3t".into(), session_token: None })
        );
        assert!(!format!("{p:?}").contains("s3cr3t"), "Debug shows the secret");

        let env = |k: &str| match k {
            ACCESS_KEY => Some("ENVID".to_string()),
            SECRET_KEY => Some("envsecret".to_string()),
            SESSION_TOKEN => Some("tok".to_string()),
            _ => None,
        };
        let p = target_plan(&add_args(&["--bucket", "backups", "--region", "eu-west-1"]), &env).expect("plan");
        assert_eq!(
            p.credentials,
            Some(Credentials {
                access_key: "ENVID".into(),
                secret_key: "envsecret".into(),
                session_token: Some("tok".into())
            })
        );
        assert_eq!(p.spec.s3.as_ref().and_then(|s| s.endpoint.clone()), None);

        let e = err_of(target_plan(&add_args(&["--bucket", "b", "--access-key-id", "A"]), &no_env));
        assert!(e.contains("--secret-access-key-file") && e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let e = err_of(target_plan(&add_args(&["--s3-endpoint", "http://m:9000", "--bucket", "b"]), &no_env));
        assert!(e.contains("--access-key-id") && e.contains("--credential-secret"), "{e}");
        let e = err_of(target_plan(&add_args(&["--s3-endpoint", "http://m:9000"]), &no_env));
        assert!(e.contains("--bucket"), "{e}");
        std::fs::write(&file, "\n").expect("write");
        let e = err_of(target_plan(&args, &no_env));
        assert!(e.contains("is empty"), "{e}");
        // There is no flag that takes the secret itself.
        assert!(parse(&["target", "add", "t", "--bucket", "b", "--secret-access-key", "x"]).is_err());
    }

    #[test]
    fn existing_secrets() {
        let p = target_plan(&add_args(&["--bucket", "b", "--credential-secret", "ops/minio"]), &no_env).expect("plan");
        let s3 = p.spec.s3.expect("s3");
        assert_eq!(s3.credential_secret, SecretRef { namespace: Some("ops".into()), name: "minio".into() });
        assert!(p.credentials.is_none());
        let p = target_plan(&add_args(&["--bucket", "b", "--credential-secret", "minio"]), &no_env).expect("plan");
        assert_eq!(p.spec.s3.expect("s3").credential_secret.namespace.as_deref(), Some("sheaf-system"));
        assert!(target_plan(&add_args(&["--bucket", "b", "--credential-secret", "a/b/c"]), &no_env).is_err());
        let both = add_args(&["--bucket", "b", "--credential-secret", "x", "--access-key-id", "y"]);
        assert!(err_of(target_plan(&both, &no_env)).contains("not both"));
    }

    #[test]
    fn target_rows() {
        let t: BackupTarget = serde_json::from_value(json!({
            "metadata": {"name": "nfs"},
            "spec": {"filesystem": {"path": "/mnt/b"}},
            "status": {"available": true, "url": "/mnt/b", "lastChecked": "2026-12-01T18:00:00Z", "backups": 3},
        }))
        .expect("target");
        assert_eq!(target_row(&t), ["nfs", "/mnt/b", "true", "3", ""]);
        let t: BackupTarget = serde_json::from_value(json!({
            "metadata": {"name": "s3"},
            "spec": {"s3": {"bucket": "bk", "prefix": "p/", "credentialSecret": {"name": "x"}}},
        }))
        .expect("target");
        assert_eq!(target_row(&t), ["s3", "s3://bk/p/", "unknown", "", "not checked yet"]);
        let t: BackupTarget = serde_json::from_value(json!({
            "metadata": {"name": "s3"},
            "spec": {"s3": {"bucket": "bk", "credentialSecret": {"name": "x"}}},
            "status": {"available": false, "url": "s3://bk/ (http://m:9000)", "lastChecked": "2026-12-01T18:00:00Z",
                       "message": "connection refused"},
        }))
        .expect("target");
        assert_eq!(target_row(&t), ["s3", "s3://bk/ (http://m:9000)", "false", "", "connection refused"]);
    }

    fn backup(status: Value) -> Backup {
        serde_json::from_value(json!({
            "metadata": {"name": "data-20261201-181500", "namespace": "default",
                         "creationTimestamp": "2026-12-01T18:15:00Z"},
            "spec": {"volumeName": "data", "target": "nfs"},
            "status": status,
        }))
        .expect("backup")
    }

    #[test]
    fn backup_rows_and_summaries() {
        let now = time("2026-12-01T18:25:00Z");
        let b = backup(json!({
            "phase": "Completed", "size": 67108864, "bytesRead": 67108864, "bytesUploaded": 50436669,
            "chunksNew": 48, "chunksReused": 0, "chunksUnchanged": 0, "startTime": "2026-12-01T18:15:01Z",
        }));
        assert_eq!(
            backup_row(&b, &now),
            ["data-20261201-181500", "data", "nfs", "Completed", "64.0 MiB", "48.1 MiB", "", "9m"]
        );
        assert_eq!(
            completed_line("default", &b, Duration::from_millis(3200)),
            "backup default/data-20261201-181500 completed in 3.2 s: read 64.0 MiB, sent 48.1 MiB \
             (48 new chunks, 0 already there, 0 unchanged)"
        );
        let b = backup(json!({"phase": "Completed", "parent": "data-1", "chunksUnchanged": 60, "chunksNew": 4}));
        assert!(completed_line("default", &b, Duration::from_secs(1))
            .ends_with("(4 new chunks, 0 already there, 60 unchanged), incremental on data-1"));
        let b = backup(json!({"phase": "InProgress", "progress": 42, "bytesRead": 1024, "bytesUploaded": 0}));
        assert_eq!(backup_row(&b, &now)[3], "InProgress 42%");
        assert_eq!(backup_row(&b, &now)[7], "10m");
        assert_eq!(backup_state(&b), BackupState::Running(42, 1024, 0));
        let b = backup(json!({"phase": "Pending", "error": "BackupTarget nfs has not been checked yet"}));
        assert_eq!(backup_state(&b), BackupState::Pending(Some("BackupTarget nfs has not been checked yet".into())));
        let b = backup(json!({"phase": "Failed", "error": "Volume data does not exist"}));
        assert_eq!(backup_state(&b), BackupState::Failed("Volume data does not exist".into()));
        let b = backup(Value::Null);
        assert_eq!(backup_row(&b, &now)[3], "Pending");
        assert_eq!(backup_state(&b), BackupState::Pending(None));
    }

    #[test]
    fn verification_outcomes() {
        let b = backup(
            json!({"phase": "Completed", "verification": {"request": "old", "phase": "Passed", "chunksChecked": 3}}),
        );
        assert_eq!(verify_state(&b, "new"), VerifyState::Requested);
        assert_eq!(verify_state(&b, "old"), VerifyState::Passed(3));
        let b = backup(
            json!({"phase": "Completed", "verification": {"request": "r", "phase": "InProgress", "progress": 30}}),
        );
        assert_eq!(verify_state(&b, "r"), VerifyState::Running(30));
        let b = backup(json!({"phase": "Completed", "verification": {
            "request": "r", "phase": "Failed", "chunksChecked": 64, "badCount": 22,
            "badChunks": ["3:abcd: missing", "7:ef01: hash mismatch"],
            "message": "22 of 64 chunks are missing or corrupt: restoring this backup would fail",
        }}));
        assert_eq!(
            verify_state(&b, "r"),
            VerifyState::Failed(vec![
                "22 of 64 chunks are missing or corrupt: restoring this backup would fail".into(),
                "  bad chunk 3:abcd: missing".into(),
                "  bad chunk 7:ef01: hash mismatch".into(),
                "  ... and 20 more".into(),
            ])
        );
    }

    #[test]
    fn secrets_are_read_from_data_and_string_data() {
        let s = json!({"data": {ACCESS_KEY: "QUtJRA=="}, "stringData": {SECRET_KEY: "x"}});
        let v = secret_values(&s);
        assert_eq!(v.get(ACCESS_KEY).map(String::as_str), Some("AKID"));
        assert_eq!(v.get(SECRET_KEY).map(String::as_str), Some("x"));
        let t: BackupTarget = serde_json::from_value(json!({
            "metadata": {"name": "m"},
            "spec": {"s3": {"bucket": "bk", "credentialSecret": {"name": "backup-target-m"}}},
        }))
        .expect("target");
        assert_eq!(made_secret_of(&t).as_deref(), Some("backup-target-m"));
        let t: BackupTarget = serde_json::from_value(json!({
            "metadata": {"name": "m"},
            "spec": {"s3": {"bucket": "bk", "credentialSecret": {"namespace": "ops", "name": "backup-target-m"}}},
        }))
        .expect("target");
        assert_eq!(made_secret_of(&t), None);
    }
}
