//! The node's disks: where its replicas' data goes. `sheaf server --disk
//! NAME=PATH[,tags=TAG+TAG]` (repeatable) names them; without any, the
//! node has one disk, `default`, at its replica root. A replica lives in
//! `<disk path>/<replica uid>/`.
//!
//! The agent reports each disk as a cluster-scoped `sheaf.io/v1alpha1`
//! Disk named `<node>.<disk>` (owned by the Node, so `kubectl delete node`
//! takes them along): the configuration in its spec (path, tags), what it
//! measures in its status (capacity and available bytes from `statvfs`,
//! whether new replicas may go there). The Volume controller places
//! replicas on them. Disks are published before the node's first Ready
//! heartbeat, so a Ready node's disks are known.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Selectors, Typed};
use sheaf_types::core::Node;
use sheaf_types::meta::{ObjectMeta, OwnerReference};
use sheaf_types::storage::{validate_tag, Disk, DiskSpec, DiskStatus, DEFAULT_DISK, NODE_LABEL};
use sheaf_types::validation;

/// One `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// A DNS-1123 label, unique on the node.
    pub name: String,
    /// Absolute.
    pub path: PathBuf,
    pub tags: Vec<String>,
}

/// What is wrong with the node's disks, said so that it can be fixed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("expected NAME=PATH[,tags=TAG+TAG], for example fast=/srv/nvme0,tags=ssd+fast")]
    Syntax,
    #[error("the disk name {name:?} is not valid: {reason}")]
    Name { name: String, reason: String },
    #[error("the path {path:?} of disk {name} is not absolute; give the full path, for example /srv/{name}")]
    RelativePath { name: String, path: String },
    #[error("unknown option {option:?} of disk {name}; the only option is tags=TAG+TAG")]
    Option { name: String, option: String },
    #[error("the tag {tag:?} of disk {name} is not valid: {reason}")]
    Tag { name: String, tag: String, reason: String },
    #[error("two disks are named {0}; give each --disk its own name")]
    Duplicate(String),
    #[error("disks {first} and {second} have the same path {path}; give each disk its own directory")]
    SamePath { first: String, second: String, path: String },
    #[error("cannot create the directory {path} of disk {name}: {error}; create it (and mount the disk there), or give another path")]
    Create { name: String, path: String, error: std::io::Error },
    #[error("the path {path} of disk {name} is not a directory; give a directory")]
    NotDirectory { name: String, path: String },
}

impl DiskConfig {
    /// The disk a node has when given no `--disk`.
    pub fn default_at(replica_root: &Path) -> DiskConfig {
        DiskConfig { name: DEFAULT_DISK.into(), path: normalize(replica_root), tags: Vec::new() }
    }
}

/// `path` without `.`, doubled or trailing slashes (not resolving `..`
/// or links), so that the same directory is written one way.
fn normalize(path: &Path) -> PathBuf {
    path.components().filter(|c| *c != Component::CurDir).collect()
}

/// Parses one `--disk NAME=PATH[,tags=TAG+TAG]`.
impl FromStr for DiskConfig {
    type Err = DiskError;

    fn from_str(s: &str) -> Result<DiskConfig, DiskError> {
        let (name, rest) = s.split_once('=').ok_or(DiskError::Syntax)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(DiskError::Syntax);
        }
        validation::dns1123_label(name).map_err(|reason| DiskError::Name { name: name.to_string(), reason })?;
        let mut parts = rest.split(',');
        let path = parts.next().unwrap_or_default().trim();
        if path.is_empty() {
            return Err(DiskError::Syntax);
        }
        if !path.starts_with('/') {
            return Err(DiskError::RelativePath { name: name.to_string(), path: path.to_string() });
        }
        let mut tags: Vec<String> = Vec::new();
        for option in parts {
            let Some(list) = option.trim().strip_prefix("tags=") else {
                return Err(DiskError::Option { name: name.to_string(), option: option.to_string() });
            };
            for tag in list.split('+').map(str::trim).filter(|t| !t.is_empty()) {
                validate_tag(tag).map_err(|reason| DiskError::Tag {
                    name: name.to_string(),
                    tag: tag.to_string(),
                    reason,
                })?;
                if !tags.iter().any(|t| t == tag) {
                    tags.push(tag.to_string());
                }
            }
        }
        Ok(DiskConfig { name: name.to_string(), path: normalize(Path::new(path)), tags })
    }
}

/// Checks a node's disks before the agent starts: unique names and paths;
/// creates the directories that do not exist yet.
pub fn prepare(disks: &[DiskConfig]) -> Result<(), DiskError> {
    let mut names = HashSet::new();
    for (i, d) in disks.iter().enumerate() {
        if !names.insert(d.name.as_str()) {
            return Err(DiskError::Duplicate(d.name.clone()));
        }
        if let Some(other) = disks[..i].iter().find(|o| o.path == d.path) {
            return Err(DiskError::SamePath {
                first: other.name.clone(),
                second: d.name.clone(),
                path: d.path.display().to_string(),
            });
        }
    }
    for d in disks {
        let path = d.path.display().to_string();
        if d.path.exists() && !d.path.is_dir() {
            return Err(DiskError::NotDirectory { name: d.name.clone(), path });
        }
        std::fs::create_dir_all(&d.path).map_err(|error| DiskError::Create { name: d.name.clone(), path, error })?;
    }
    Ok(())
}

/// What the agent measures of `d` now.
pub fn measure(d: &DiskConfig) -> DiskStatus {
    if !d.path.is_dir() {
        return DiskStatus {
            schedulable: false,
            message: Some(format!(
                "the directory {} does not exist: mount the disk there again (or create it)",
                d.path.display()
            )),
            ..Default::default()
        };
    }
    match sheaf_blk::store::fs_space(&d.path) {
        Err(e) => DiskStatus {
            schedulable: false,
            message: Some(format!("cannot read the file system's size at {}: {e}", d.path.display())),
            ..Default::default()
        },
        Ok(space) => DiskStatus {
            schedulable: !space.read_only,
            capacity: Some(i64::try_from(space.capacity).unwrap_or(i64::MAX)),
            available: Some(i64::try_from(space.available).unwrap_or(i64::MAX)),
            message: space.read_only.then(|| format!("the file system at {} is mounted read-only", d.path.display())),
        },
    }
}

/// The Disk object of `d` on `node` (uid `node_uid`), status included.
pub fn object(node: &str, node_uid: &str, d: &DiskConfig, status: DiskStatus) -> Disk {
    Disk {
        metadata: ObjectMeta {
            name: Some(Disk::object_name(node, &d.name)),
            labels: [(NODE_LABEL.to_string(), node.to_string())].into(),
            owner_references: vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.to_string(),
                uid: node_uid.to_string(),
                controller: Some(true),
                block_owner_deletion: None,
            }],
            ..Default::default()
        },
        spec: DiskSpec {
            node_name: node.to_string(),
            disk_name: d.name.clone(),
            path: d.path.display().to_string(),
            tags: d.tags.clone(),
        },
        status: Some(status),
    }
}

/// Makes the node's Disk objects agree with `disks`: creates the missing
/// ones, updates what changed (configuration, space) and deletes those of
/// disks it no longer has.
pub async fn publish(api: &dyn Api, node: &str, disks: &[DiskConfig]) -> Result<(), ClientError> {
    let Some(n) = Typed::<Node>::new(api).get(None, node).await? else { return Ok(()) };
    let node_uid = n.metadata.uid.unwrap_or_default();
    let typed = Typed::<Disk>::new(api);
    let sel = Selectors { labels: format!("{NODE_LABEL}={node}"), fields: String::new() };
    let have = typed.list(None, &sel).await?;
    for d in disks {
        let want = object(node, &node_uid, d, measure(d));
        let name = want.metadata.name.clone().unwrap_or_default();
        let current = have.iter().find(|h| h.metadata.name.as_deref() == Some(name.as_str()));
        let current = match current {
            Some(c) if c.metadata.owner_references.iter().any(|o| o.uid == node_uid) => c.clone(),
            other => {
                if other.is_some() {
                    // Left from a Node of the same name that was deleted.
                    typed.delete(None, &name).await.or_else(ignore_not_found)?;
                }
                match typed.create(&want).await {
                    Ok(created) => created,
                    // Made meanwhile, or without our label: updated below.
                    Err(e) if e.is_already_exists() => match typed.get(None, &name).await? {
                        Some(c) => c,
                        None => continue,
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        if current.spec != want.spec || current.metadata.labels != want.metadata.labels {
            let patch = json!({"metadata": {"labels": want.metadata.labels}, "spec": to_value(&want.spec)?});
            typed.merge_patch(None, &name, patch, false).await?;
        }
        if needs_report(current.status.as_ref(), want.status.as_ref()) {
            let status = to_value(&want.status)?;
            let patch = match crate::storage::merge_diff(&to_value(&current.status)?, &status) {
                Some(p) => json!({ "status": p }),
                None => json!({ "status": status }),
            };
            typed.merge_patch(None, &name, patch, true).await?;
        }
    }
    for gone in have.iter().filter(|h| !disks.iter().any(|d| d.name == h.spec.disk_name)) {
        let name = gone.metadata.name.clone().unwrap_or_default();
        typed.delete(None, &name).await.or_else(ignore_not_found)?;
        tracing::info!(disk = %name, "disk no longer configured; its Disk object is removed");
    }
    Ok(())
}

/// Free space moves all the time; a change of less than this alone is not
/// written (one write per disk per heartbeat otherwise).
const AVAILABLE_SLACK: i64 = 16 << 20;

/// Whether `now` differs from the reported `was` enough to be written.
fn needs_report(was: Option<&DiskStatus>, now: Option<&DiskStatus>) -> bool {
    let (Some(was), Some(now)) = (was, now) else { return was != now };
    let moved = match (was.available, now.available) {
        (Some(a), Some(b)) => (a - b).abs() >= AVAILABLE_SLACK,
        (a, b) => a != b,
    };
    moved || (was.schedulable, &was.capacity, &was.message) != (now.schedulable, &now.capacity, &now.message)
}

fn ignore_not_found(e: ClientError) -> Result<(), ClientError> {
    if e.is_not_found() {
        Ok(())
    } else {
        Err(e)
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ClientError> {
    serde_json::to_value(v).map_err(|e| ClientError::other(format!("cannot encode a disk: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DiskConfig, String> {
        s.parse::<DiskConfig>().map_err(|e| e.to_string())
    }

    #[test]
    fn disk_flags() {
        assert_eq!(
            parse("fast=/srv/nvme0,tags=ssd+fast"),
            Ok(DiskConfig { name: "fast".into(), path: "/srv/nvme0".into(), tags: vec!["ssd".into(), "fast".into()] })
        );
        // Path written one way; tags once each; no tags at all.
        assert_eq!(
            parse("b=/srv//b/./,tags=ssd+ssd"),
            Ok(DiskConfig { name: "b".into(), path: "/srv/b".into(), tags: vec!["ssd".into()] })
        );
        assert_eq!(parse("default=/var/lib/sheaf/replicas").map(|d| d.tags), Ok(vec![]));

        for (flag, says) in [
            ("/srv/x", "expected NAME=PATH"),
            ("=/srv/x", "expected NAME=PATH"),
            ("fast=", "expected NAME=PATH"),
            ("Fast=/srv/x", "disk name \"Fast\" is not valid"),
            ("a.b=/srv/x", "disk name \"a.b\" is not valid"),
            ("fast=srv/x", "not absolute; give the full path, for example /srv/fast"),
            ("fast=/srv/x,tag=ssd", "unknown option \"tag=ssd\" of disk fast; the only option is tags="),
            ("fast=/srv/x,tags=ssd+no/pe", "the tag \"no/pe\" of disk fast is not valid"),
        ] {
            let e = parse(flag).expect_err(flag);
            assert!(e.contains(says), "{flag}: {e}");
        }
    }

    #[test]
    fn small_changes_of_free_space_are_not_reported() {
        let st = |available: i64, schedulable: bool| DiskStatus {
            schedulable,
            capacity: Some(100 << 30),
            available: Some(available),
            message: None,
        };
        let was = st(50 << 30, true);
        assert!(!needs_report(Some(&was), Some(&st((50 << 30) - (1 << 20), true))));
        assert!(needs_report(Some(&was), Some(&st((50 << 30) - (16 << 20), true))));
        assert!(needs_report(Some(&was), Some(&st(50 << 30, false))));
        assert!(needs_report(None, Some(&was)));
        assert!(!needs_report(Some(&was), Some(&was)));
    }

    #[test]
    fn prepared_disks_exist_and_are_distinct() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str, sub: &str| DiskConfig { name: name.into(), path: dir.path().join(sub), tags: Vec::new() };
        let disks = [at("default", "replicas"), at("fast", "fast/deep")];
        prepare(&disks).expect("prepare");
        assert!(dir.path().join("fast/deep").is_dir());

        let e = prepare(&[at("a", "x"), at("a", "y")]).expect_err("same name").to_string();
        assert!(e.contains("two disks are named a"), "{e}");
        let e = prepare(&[at("a", "x"), at("b", "x")]).expect_err("same path").to_string();
        assert!(e.contains("disks a and b have the same path"), "{e}");
        std::fs::write(dir.path().join("file"), b"").expect("file");
        let e = prepare(&[at("a", "file/sub")]).expect_err("under a file").to_string();
        assert!(e.contains("cannot create the directory") && e.contains("of disk a"), "{e}");
        let e = prepare(&[at("a", "file")]).expect_err("a file").to_string();
        assert!(e.contains("is not a directory"), "{e}");

        // Measured: space on a directory that is there; not schedulable,
        // saying why, when it is gone.
        let m = measure(&disks[1]);
        assert!(m.schedulable && m.capacity.unwrap_or(0) > 0 && m.available.is_some(), "{m:?}");
        let m = measure(&at("gone", "nowhere"));
        assert!(!m.schedulable && m.message.unwrap_or_default().contains("does not exist"));
    }
}
