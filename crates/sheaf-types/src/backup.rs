//! Backups (`sheaf.io/v1alpha1`): where they go (BackupTarget, any number
//! of them) and the backups of volumes (Backup). See
//! docs/design/backups.md.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta, Time};
use crate::resource::{Column, Kind};
use crate::storage::{object_name, parse_duration, GROUP, VERSION};
use crate::validation::{self, FieldError};

/// Where a target's credentials live when `credentialSecret.namespace` is
/// not given.
pub const SECRET_NAMESPACE: &str = "sheaf-system";
/// The Secret keys of an S3 target's credentials (Longhorn's and
/// Harvester's names).
pub const ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// The values of `spec.compression`.
pub const COMPRESSIONS: &[&str] = &["zstd", "lz4", "none"];
/// The values of an S3 target's `style`.
pub const STYLES: &[&str] = &["path", "virtual-hosted"];
/// How often a target is checked (and its backups listed) by default.
pub const DEFAULT_POLL: std::time::Duration = std::time::Duration::from_secs(300);
/// Held by a Backup until its manifest is removed from its target.
pub const BACKUP_FINALIZER: &str = "sheaf.io/backup-data";
/// On a VolumeSnapshot Sheaf took for a backup: the Backup's name.
pub const BACKUP_LABEL: &str = "sheaf.io/backup";
/// On a Backup: the target it belongs to (for selectors).
pub const TARGET_LABEL: &str = "sheaf.io/backup-target";
/// Set (to any new value, e.g. a time) to ask for a verification of a
/// completed Backup; the result is in `status.verification`.
pub const VERIFY_ANNOTATION: &str = "sheaf.io/verify";
/// Set (to any new value) on a BackupTarget to collect its garbage now:
/// the chunks no backup names any more. It also runs every hour.
pub const GC_ANNOTATION: &str = "sheaf.io/gc";

/// On a Backup made from a manifest found on its target (taken by another
/// cluster, or before this one lost its objects).
pub const IMPORTED_ANNOTATION: &str = "sheaf.io/imported";

/// A place that keeps backups: an S3-compatible bucket or a directory on
/// every node (an NFS mount). Backups of every volume share its chunks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTarget {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BackupTargetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BackupTargetStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetSpec {
    /// An S3-compatible bucket (exactly one of `s3` and `filesystem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Target>,
    /// A directory that exists on every node that backs up or restores
    /// (an NFS mount, a local disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemTarget>,
    /// How chunks are compressed: `zstd` (the default), `lz4` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// How often the target is checked and its backups listed (backups
    /// other clusters put there appear as Backup objects): a duration such
    /// as `5m` (the default) or `30s`, at least `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Target {
    /// The service's URL, e.g. `https://minio.example.com:9000`; without
    /// it, AWS S3 of `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub bucket: String,
    /// e.g. `us-east-1` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Keys start with this, e.g. `sheaf/cluster-a/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `path` (`ENDPOINT/BUCKET/KEY`, the default with an endpoint) or
    /// `virtual-hosted` (`BUCKET.HOST/KEY`, the default for AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// The Secret holding `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (and optionally `AWS_SESSION_TOKEN`).
    #[serde(default)]
    pub credential_secret: SecretRef,
    /// Extra PEM certificates to trust for the endpoint (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Default `sheaf-system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemTarget {
    /// An absolute path.
    #[serde(default)]
    pub path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetStatus {
    /// Whether the last check could write, read and delete an object.
    #[serde(default)]
    pub available: bool,
    /// Where the backups are (`s3://bucket/prefix (endpoint)` or a path);
    /// never a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<Time>,
    /// Complete backups on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<u64>,
    /// What went wrong at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last garbage collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garbage_collection: Option<GarbageCollection>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GarbageCollection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The `sheaf.io/gc` value it answered, if asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default)]
    pub chunks_deleted: u64,
    #[serde(default)]
    pub bytes_deleted: u64,
    #[serde(default)]
    pub chunks_kept: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl BackupTarget {
    /// `spec.pollInterval` (checked by validation).
    pub fn poll_interval(&self) -> std::time::Duration {
        self.spec.poll_interval.as_deref().and_then(parse_duration).unwrap_or(DEFAULT_POLL)
    }
}

impl Kind for BackupTarget {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "BackupTarget";
    const PLURAL: &'static str = "backuptargets";
    const SHORT_NAMES: &'static [&'static str] = &["bt"];
    const CATEGORIES: &'static [&'static str] = &["sheaf"];
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let s = &self.spec;
        match (&s.s3, &s.filesystem) {
            (None, None) => errs.push(FieldError::new(
                "spec.s3",
                crate::validation::FieldErrorReason::Required,
                "Required value: a backup target needs either spec.s3 (a bucket) or spec.filesystem (a directory)",
            )),
            (Some(_), Some(_)) => errs.push(FieldError::forbidden(
                "spec.filesystem",
                "give either spec.s3 or spec.filesystem, not both: make two targets",
            )),
            _ => {}
        }
        if let Some(s3) = &s.s3 {
            validate_s3(&mut errs, s3);
        }
        if let Some(fs) = &s.filesystem {
            if fs.path.is_empty() {
                errs.push(FieldError::required("spec.filesystem.path"));
            } else if !fs.path.starts_with('/') {
                errs.push(FieldError::invalid(
                    "spec.filesystem.path",
                    format!("{:?} is not an absolute path", fs.path),
                ));
            } else if fs.path.split('/').any(|c| c == "..") || fs.path.contains('\0') {
                errs.push(FieldError::invalid("spec.filesystem.path", "the path must not contain '..' or NUL"));
            }
        }
        if let Some(c) = &s.compression {
            if !COMPRESSIONS.contains(&c.as_str()) {
                errs.push(FieldError::unsupported("spec.compression", c, COMPRESSIONS));
            }
        }
        if let Some(p) = &s.poll_interval {
            match parse_duration(p) {
                None => errs.push(FieldError::invalid(
                    "spec.pollInterval",
                    format!("{p:?} is not a duration such as 5m, 30s or 1h"),
                )),
                Some(d) if d < std::time::Duration::from_secs(10) => {
                    errs.push(FieldError::invalid("spec.pollInterval", format!("{p} is shorter than 10s")))
                }
                Some(_) => {}
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("URL", "string", ".status.url"),
            Column::new("Available", "boolean", ".status.available"),
            Column::new("Backups", "integer", ".status.backups"),
            Column::new("Message", "string", ".status.message").wide(),
        ]
    }
    fn description() -> &'static str {
        "Where backups are kept: an S3-compatible bucket or a directory on the nodes. Any number of targets; \
         chunks are shared by every backup on a target (deduplicated), and its health is checked regularly."
    }
}

fn validate_s3(errs: &mut Vec<FieldError>, s3: &S3Target) {
    if let Some(e) = &s3.endpoint {
        let rest = e.strip_prefix("https://").or_else(|| e.strip_prefix("http://"));
        match rest {
            None => errs.push(FieldError::invalid(
                "spec.s3.endpoint",
                format!("{e:?} is not an http:// or https:// URL (for example https://minio.example.com:9000)"),
            )),
            Some(r) if r.is_empty() || r.starts_with('/') || r.starts_with(':') => {
                errs.push(FieldError::invalid("spec.s3.endpoint", format!("{e:?} has no host")))
            }
            Some(r) if r.trim_end_matches('/').contains('/') || r.contains('?') => errs.push(FieldError::invalid(
                "spec.s3.endpoint",
                format!(
                    "{e:?} has a path or query: give the bucket in spec.s3.bucket and key prefixes in spec.s3.prefix"
                ),
            )),
            Some(_) => {}
        }
    }
    if s3.bucket.is_empty() {
        errs.push(FieldError::required("spec.s3.bucket"));
    } else if let Err(e) = bucket_name(&s3.bucket) {
        errs.push(FieldError::invalid("spec.s3.bucket", e));
    }
    if let Some(r) = &s3.region {
        if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            errs.push(FieldError::invalid("spec.s3.region", format!("{r:?} is not a region such as us-east-1")));
        }
    }
    if let Some(p) = &s3.prefix {
        if p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\0') {
            errs.push(FieldError::invalid("spec.s3.prefix", "a prefix must not start with '/' or contain '..'"));
        }
    }
    if let Some(st) = &s3.style {
        if !STYLES.contains(&st.as_str()) {
            errs.push(FieldError::unsupported("spec.s3.style", st, STYLES));
        }
    }
    object_name(errs, "spec.s3.credentialSecret.name", &s3.credential_secret.name);
    if let Some(ns) = &s3.credential_secret.namespace {
        if let Err(e) = validation::dns1123_label(ns) {
            errs.push(FieldError::invalid("spec.s3.credentialSecret.namespace", e));
        }
    }
}

/// S3's bucket naming rules: 3–63 characters, lower-case letters, digits,
/// `-` and `.`, starting and ending with a letter or digit.
pub fn bucket_name(b: &str) -> Result<(), String> {
    let ok_chars = b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&b.len()) || !ok_chars || !ends(b.chars().next()) || !ends(b.chars().last()) {
        return Err(format!(
            "{b:?} is not a bucket name: 3 to 63 lower-case letters, digits, '-' or '.', starting and ending with \
             a letter or digit"
        ));
    }
    Ok(())
}

/// A backup of a Volume on a BackupTarget: read from a snapshot, only
/// the chunks changed since the volume's previous backup on that target
/// are read and only chunks the target lacks are sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BackupSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BackupStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The Volume (same namespace).
    #[serde(default)]
    pub volume_name: String,
    /// The BackupTarget.
    #[serde(default)]
    pub target: String,
    /// Back up this VolumeSnapshot of the volume; without it Sheaf takes
    /// one (kept until the volume's next backup on the target completes,
    /// so that one reads only what changed since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// `Pending`, `InProgress`, `Completed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The node that reads the snapshot (one holding a replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The VolumeSnapshot read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_name: Option<String>,
    /// The volume's uid and size when the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The earlier backup whose unchanged chunks this one shares (its
    /// snapshot tells which blocks changed since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_uploaded: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_new: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_reused: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_unchanged: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The manifest's key on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// The outcome of the last `sheaf backup verify`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// The `sheaf.io/verify` annotation value it answers.
    #[serde(default)]
    pub request: String,
    /// `InProgress`, `Passed` or `Failed`.
    #[serde(default)]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u32>,
    #[serde(default)]
    pub chunks_checked: u64,
    /// Chunks missing or whose data does not match their hash, as
    /// `INDEX:ID: what` (the first 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_chunks: Vec<String>,
    #[serde(default)]
    pub bad_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl BackupStatus {
    pub fn is(&self, phase: &str) -> bool {
        self.phase.as_deref() == Some(phase)
    }
}

impl Backup {
    pub fn phase(&self) -> &str {
        self.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
    }
    pub fn completed(&self) -> bool {
        self.phase() == "Completed"
    }
}

impl Kind for Backup {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = VERSION;
    const KIND: &'static str = "Backup";
    const PLURAL: &'static str = "backups";
    const SHORT_NAMES: &'static [&'static str] = &["vb"];
    const CATEGORIES: &'static [&'static str] = &["sheaf"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        object_name(&mut errs, "spec.volumeName", &self.spec.volume_name);
        object_name(&mut errs, "spec.target", &self.spec.target);
        if let Some(s) = &self.spec.snapshot_name {
            if let Err(e) = validation::dns1123_subdomain(s) {
                errs.push(FieldError::invalid("spec.snapshotName", e));
            }
        }
        if let Some(name) = &self.metadata.name {
            // The name is a key on the target: `volumes/NS/VOLUME/NAME.json`.
            if name.len() > 200 {
                errs.push(FieldError::invalid("metadata.name", "a backup's name is at most 200 characters"));
            }
        }
        if old.is_some_and(|o| o.spec != self.spec) {
            errs.push(FieldError::forbidden("spec", "a backup's volume, target and snapshot cannot change"));
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Volume", "string", ".spec.volumeName"),
            Column::new("Target", "string", ".spec.target"),
            Column::new("Phase", "string", ".status.phase"),
            Column::new("Progress", "integer", ".status.progress"),
            Column::new("Uploaded", "integer", ".status.bytesUploaded"),
            Column::new("Parent", "string", ".status.parent").wide(),
            Column::new("Error", "string", ".status.error").wide(),
        ]
    }
    fn description() -> &'static str {
        "A backup of a Volume's snapshot on a BackupTarget: incremental (only chunks changed since the volume's \
         previous backup there are read), deduplicated across every volume on the target and compressed. \
         Deleting the Volume keeps its backups; deleting a Backup removes it from its target."
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_target() -> BackupTarget {
        BackupTarget {
            metadata: ObjectMeta { name: Some("t".into()), ..Default::default() },
            spec: BackupTargetSpec {
                s3: Some(S3Target {
                    endpoint: Some("http://127.0.0.1:9000".into()),
                    bucket: "backups".into(),
                    credential_secret: SecretRef { namespace: None, name: "s3".into() },
                    ..Default::default()
                }),
                ..Default::default()
            },
            status: None,
        }
    }

    fn fields(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn targets_are_checked() {
        assert!(s3_target().validate(None).is_empty());
        let mut t = s3_target();
        t.spec.filesystem = Some(FilesystemTarget { path: "/mnt/b".into() });
        assert_eq!(fields(t.validate(None)), ["spec.filesystem"]);
        let mut t = s3_target();
        t.spec.s3 = None;
        assert_eq!(fields(t.validate(None)), ["spec.s3"]);
        t.spec.filesystem = Some(FilesystemTarget { path: "mnt/../b".into() });
        assert_eq!(fields(t.validate(None)), ["spec.filesystem.path"]);
        t.spec.filesystem = Some(FilesystemTarget { path: "/mnt/b".into() });
        t.spec.compression = Some("gzip".into());
        t.spec.poll_interval = Some("1s".into());
        assert_eq!(fields(t.validate(None)), ["spec.compression", "spec.pollInterval"]);
        let mut t = s3_target();
        let s3 = t.spec.s3.as_mut().expect("s3");
        s3.endpoint = Some("minio:9000".into());
        s3.bucket = "Bad_Bucket".into();
        s3.style = Some("dns".into());
        s3.credential_secret.name = String::new();
        assert_eq!(
            fields(t.validate(None)),
            ["spec.s3.endpoint", "spec.s3.bucket", "spec.s3.style", "spec.s3.credentialSecret.name"]
        );
        let mut t = s3_target();
        t.spec.s3.as_mut().expect("s3").endpoint = Some("https://s3.example.com/backups".into());
        assert_eq!(fields(t.validate(None)), ["spec.s3.endpoint"]);
    }

    #[test]
    fn backups_are_checked_and_immutable() {
        let b = Backup {
            metadata: ObjectMeta { name: Some("b1".into()), ..Default::default() },
            spec: BackupSpec { volume_name: "data".into(), target: "t".into(), snapshot_name: None },
            status: None,
        };
        assert!(b.validate(None).is_empty());
        let mut c = b.clone();
        c.spec.target = "other".into();
        assert_eq!(fields(c.validate(Some(&b))), ["spec"]);
        let empty = Backup::default();
        assert_eq!(fields(empty.validate(None)), ["spec.volumeName", "spec.target"]);
    }
}
