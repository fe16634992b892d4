//! An [`ObjectStore`] in a directory: a local disk or a mounted network
//! file system (NFS, CIFS). Key `a/b/c` is the file `ROOT/a/b/c`.
//!
//! An object is written whole or not at all: its bytes go to a temporary
//! file beside it (named [`TEMP_PREFIX`]…, never listed), which is synced,
//! renamed over the object and then the directory synced, so a reader sees
//! the old object or the new one and a crash leaves at most a stray
//! temporary file. All file I/O runs on tokio's blocking pool.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ObjectStore, StoreError};

/// Names of files being written start with this; no key segment may.
pub const TEMP_PREFIX: &str = ".sheaf-tmp.";

/// Tells apart the temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory as an [`ObjectStore`].
#[derive(Clone, Debug)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store in `root`, which must be an existing directory this process
    /// can write to.
    pub fn new(root: impl Into<PathBuf>) -> Result<FsStore, StoreError> {
        let root = root.into();
        let meta = std::fs::metadata(&root).map_err(|e| {
            StoreError::Config(match e.kind() {
                io::ErrorKind::NotFound => {
                    format!("backup directory {} does not exist: create it or mount it first", root.display())
                }
                _ => format!("cannot use backup directory {}: {e}", root.display()),
            })
        })?;
        if !meta.is_dir() {
            return Err(StoreError::Config(format!("backup path {} is not a directory", root.display())));
        }
        // Whether we may write is only known by writing (permissions,
        // read-only mounts, root squashing on NFS).
        let probe = temp_path(&root);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| StoreError::Config(format!("backup directory {} is not writable: {e}", root.display())))?;
        // A probe left behind is never listed; nothing to do if this fails.
        let _ = std::fs::remove_file(&probe);
        Ok(FsStore { root })
    }

    /// The directory this store is in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `work` with the root on the blocking pool.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|e| StoreError::Io(format!("file store task failed: {e}")))?
    }
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| write_atomically(&root.join(&key), &body)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| {
            let path = root.join(&key);
            match std::fs::read(&path) {
                Ok(data) => Ok(Some(Bytes::from(data))),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(io_error("read", &path, &e)),
            }
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| {
            let path = root.join(&key);
            match std::fs::metadata(&path) {
                Ok(meta) => Ok(meta.is_file()),
                Err(e) if is_absent(&e) => Ok(false),
                Err(e) => Err(io_error("look at", &path, &e)),
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| {
            let path = root.join(&key);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if is_absent(&e) => return Ok(()),
                Err(e) => return Err(io_error("remove", &path, &e)),
            }
            // Directories left empty go too, up to (not including) the
            // root; one that is not empty (or was just filled by a `put`)
            // stops this.
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        check_prefix(prefix)?;
        let prefix = prefix.to_owned();
        self.blocking(move |root| {
            // Only the directory named by the prefix's whole segments can
            // hold matching keys.
            let dir_key = match prefix.rfind('/') {
                Some(at) => &prefix[..at],
                None => "",
            };
            let mut objects = Vec::new();
            let start = if dir_key.is_empty() { root.to_path_buf() } else { root.join(dir_key) };
            walk(&start, dir_key, &mut objects)?;
            objects.retain(|o| o.key.starts_with(prefix.as_str()));
            objects.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(objects)
        })
        .await
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// Refuses keys that are not a relative path of plain names.
fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Config("object key is empty".into()));
    }
    if key.starts_with('/') {
        return Err(StoreError::Config(format!("object key {key:?} is absolute; keys are relative to the store")));
    }
    check_segments(key, "object key")?;
    if key.split('/').any(str::is_empty) {
        return Err(StoreError::Config(format!("object key {key:?} has an empty segment")));
    }
    Ok(())
}

/// Refuses listing prefixes that could reach outside the root.
fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.starts_with('/') {
        return Err(StoreError::Config(format!(
            "listing prefix {prefix:?} is absolute; keys are relative to the store"
        )));
    }
    check_segments(prefix, "listing prefix")
}

fn check_segments(text: &str, what: &str) -> Result<(), StoreError> {
    if text.contains('\0') {
        return Err(StoreError::Config(format!("{what} {text:?} contains NUL")));
    }
    for segment in text.split('/') {
        if segment == ".." || segment == "." {
            return Err(StoreError::Config(format!("{what} {text:?} has a {segment:?} segment")));
        }
        if segment.starts_with(TEMP_PREFIX) {
            return Err(StoreError::Config(format!(
                "{what} {text:?} has a segment starting with {TEMP_PREFIX:?}, which the store keeps for itself"
            )));
        }
    }
    Ok(())
}

/// A fresh name for a temporary file in `dir`.
fn temp_path(dir: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}.{n}", std::process::id()))
}

/// Writes `path` so that readers see the old file or the new one.
fn write_atomically(path: &Path, body: &[u8]) -> Result<(), StoreError> {
    let Some(dir) = path.parent() else {
        return Err(StoreError::Io(format!("cannot write {}: it has no directory", path.display())));
    };
    // A `delete` may remove an emptied directory between our creating it
    // and our temporary file landing in it: create it again then.
    let mut attempts = 0;
    let (temp, mut file) = loop {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create directory", dir, &e))?;
        let temp = temp_path(dir);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => break (temp, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
            Err(e) => return Err(io_error("create", &temp, &e)),
        }
    };
    let written = file
        .write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", &temp, &e))
        .and_then(|()| std::fs::rename(&temp, path).map_err(|e| io_error("rename into place", path, &e)));
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    // The rename is durable once the directory is.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("sync directory", dir, &e))
}

/// Adds every object under `dir` (whose key is `dir_key`) to `objects`.
fn walk(dir: &Path, dir_key: &str, objects: &mut Vec<ObjectInfo>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_absent(&e) => return Ok(()),
        Err(e) => return Err(io_error("list", dir, &e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", dir, &e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let key = if dir_key.is_empty() { name } else { format!("{dir_key}/{name}") };
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| io_error("look at", &path, &e))?;
        if file_type.is_dir() {
            walk(&path, &key, objects)?;
            continue;
        }
        // Symbolic links count when they point to a file; directories
        // behind links are not followed (no loops).
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            // Removed since read_dir saw it, or a dangling link.
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(io_error("look at", &path, &e)),
        };
        if !meta.is_file() {
            continue;
        }
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        objects.push(ObjectInfo { key, size: meta.len(), modified });
    }
    Ok(())
}

/// Whether `e` means there is no such object: the path is missing, one of
/// its directories is a file, or it is a directory.
fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory)
}

fn io_error(action: &str, path: &Path, e: &io::Error) -> StoreError {
    StoreError::Io(format!("cannot {action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_keys() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "./a", "a\0b", "a//b", "a/", ".sheaf-tmp.1.2", "a/.sheaf-tmp.x"]
        {
            let err = check_key(bad).expect_err(bad);
            assert!(matches!(err, StoreError::Config(_)), "{bad:?}: {err}");
        }
        for good in ["a", "a/b/c.txt", "dir one/ünï+=.bin", ".hidden", "a..b", "..."] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("a/").is_ok());
        assert!(check_prefix("../").is_err());
        assert!(check_prefix("/a").is_err());
    }
}
