//! The node's VirtualMachineImages: imports (download, upload, export from
//! a volume) and the base images volumes are made from (see
//! docs/design/images.md).
//!
//! Each image lives in `<first disk>/images/<image uid>/`:
//!
//! ```text
//!  download ─┐                        qcow2: qemu-img check + convert ─┐
//!  upload   ─┼─▶ source.part ─▶ source ─▶ detect + check ──────────────┼─▶ base.data ─▶ base::build ─▶ Imported
//!  export   ─┘   (sha512, progress)        raw / iso: renamed ─────────┘   (checksums, holes)
//! ```
//!
//! The import is a task per image; its state is the image's status (a
//! restarted agent starts an unfinished import over: nothing half-done is
//! ever used, because `base.json` is written last). Progress is reported at
//! most once a second: fetching is 0–90 %, converting and checksumming the
//! rest. A download that fails is retried `spec.retry` times (default 3);
//! content that is refused (bad checksum, format, header) fails at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::json;
use sheaf_client::{Api, Selectors, Typed};
use sheaf_types::claim::StorageClass;
use sheaf_types::harvester::{VirtualMachineImage, VirtualMachineImageStatus};
use sheaf_types::meta::{Condition, Time};
use sheaf_types::storage::{Volume, VolumeSnapshot};
use tokio::io::AsyncWriteExt as _;

use crate::image_format::{self, Format};

/// Removes an image's files from the node before the object goes.
pub const FINALIZER: &str = "sheaf.io/image-store";
/// On an image's StorageClass: the image's uid.
pub const IMAGE_LABEL: &str = "sheaf.io/image-uid";

/// `sheaf-image-NAMESPACE-NAME`, cut to a valid name.
pub fn storage_class_name(img: &VirtualMachineImage) -> String {
    let ns = img.metadata.namespace.as_deref().unwrap_or("default");
    let name = img.metadata.name.as_deref().unwrap_or("");
    let full = format!("sheaf-image-{ns}-{name}");
    full.chars().take(253).collect::<String>().trim_end_matches(['-', '.']).to_string()
}
const DEFAULT_RETRY: u32 = 3;
const PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Worth another attempt (network, server errors).
    #[error("{0}")]
    Transient(String),
    /// The content or the request is wrong: no retry.
    #[error("{0}")]
    Refused(String),
}

fn transient(e: impl std::fmt::Display) -> ImportError {
    ImportError::Transient(e.to_string())
}
fn refused(e: impl std::fmt::Display) -> ImportError {
    ImportError::Refused(e.to_string())
}

/// The node's image store.
pub struct Images {
    api: Arc<dyn Api>,
    node: String,
    root: PathBuf,
    /// Images with an import (or upload) running in this process.
    busy: Arc<Mutex<HashSet<String>>>,
    http: reqwest::Client,
    /// Proven to replicas on other nodes (exports read snapshots there).
    cluster_key: Option<sheaf_blk::auth::ClusterKey>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").field("node", &self.node).field("root", &self.root).finish_non_exhaustive()
    }
}

fn now() -> Time {
    Time(chrono::Utc::now())
}

fn condition(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

fn set_condition(status: &mut VirtualMachineImageStatus, c: Condition) {
    sheaf_types::meta::set_condition(&mut status.conditions, c, now());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An image's place in the busy set, for as long as it lives.
struct Busy(Arc<Mutex<HashSet<String>>>, String);
impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.lock() {
            b.remove(&self.1);
        }
    }
}

/// Where a fetch writes, and what it saw.
struct Sink {
    /// Large writes: a network stream comes in small pieces.
    file: tokio::io::BufWriter<tokio::fs::File>,
    hash: ring::digest::Context,
    bytes: u64,
}

impl Sink {
    async fn create(path: &Path) -> Result<Sink, ImportError> {
        let file =
            tokio::fs::File::create(path).await.map_err(|e| transient(format!("creating {}: {e}", path.display())))?;
        Ok(Sink {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            hash: ring::digest::Context::new(&ring::digest::SHA512),
            bytes: 0,
        })
    }
    async fn write(&mut self, data: &[u8]) -> Result<(), ImportError> {
        self.hash.update(data);
        self.bytes += data.len() as u64;
        self.file.write_all(data).await.map_err(|e| transient(format!("writing the image: {e}")))
    }
    async fn finish(mut self) -> Result<(u64, String), ImportError> {
        // Not synced: the base built from it is (base::build), and a crash
        // before that starts the import over.
        self.file.flush().await.map_err(transient)?;
        Ok((self.bytes, hex(self.hash.finish().as_ref())))
    }
}

/// Progress reports, at most one a second.
struct Progress {
    last: Instant,
    last_pct: Option<u32>,
}

impl Progress {
    fn new() -> Progress {
        Progress { last: Instant::now() - Duration::from_secs(10), last_pct: None }
    }
    fn due(&mut self, pct: u32) -> bool {
        if self.last_pct == Some(pct) || self.last.elapsed() < Duration::from_secs(1) {
            return false;
        }
        self.last = Instant::now();
        self.last_pct = Some(pct);
        true
    }
}

impl Images {
    /// `root` is `<first disk>/images`.
    pub fn new(api: Arc<dyn Api>, node: &str, root: &Path) -> Images {
        let mut http =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(15)).read_timeout(Duration::from_secs(60));
        // The host's CA bundle for https downloads.
        if let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") {
            if let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem) {
                for c in certs {
                    http = http.add_root_certificate(c);
                }
            }
        }
        Images {
            api,
            node: node.to_string(),
            root: root.to_path_buf(),
            busy: Arc::new(Mutex::new(HashSet::new())),
            http: http.build().unwrap_or_default(),
            cluster_key: None,
        }
    }

    /// Reads snapshots on other nodes' replicas proving `key`.
    pub fn with_cluster_key(mut self, key: Option<sheaf_blk::auth::ClusterKey>) -> Images {
        self.cluster_key = key;
        self
    }

    /// The directory of image `uid`'s files.
    pub fn dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid)
    }

    /// The imported disk of image `ns/name` on this node: its raw file
    /// and size.
    pub async fn raw_file(&self, ns: &str, name: &str) -> Result<(PathBuf, u64), UploadError> {
        let img = Typed::<VirtualMachineImage>::new(self.api.as_ref())
            .get(Some(ns), name)
            .await
            .map_err(|e| UploadError::Unavailable(e.to_string()))?
            .ok_or_else(|| UploadError::NotFound(format!("VirtualMachineImage {ns}/{name} does not exist")))?;
        let dir = self.dir(img.metadata.uid.as_deref().unwrap_or(""));
        match sheaf_blk::base::read_meta(&dir) {
            Ok(Some(meta)) if img.imported() => Ok((dir.join(sheaf_blk::base::DATA_FILE), meta.size)),
            _ => Err(UploadError::Conflict(format!(
                "VirtualMachineImage {ns}/{name} is not imported on this node (yet); see its Imported condition"
            ))),
        }
    }

    fn claim(&self, uid: &str) -> Option<Busy> {
        let mut b = self.busy.lock().ok()?;
        b.insert(uid.to_string()).then(|| Busy(self.busy.clone(), uid.to_string()))
    }

    async fn patch_status(&self, img: &VirtualMachineImage, f: impl FnOnce(&mut VirtualMachineImageStatus)) {
        let typed = Typed::<VirtualMachineImage>::new(self.api.as_ref());
        let (ns, name) = (img.metadata.namespace.as_deref(), img.metadata.name.as_deref().unwrap_or(""));
        // Fresh, so concurrent progress reports do not undo each other.
        let current = match typed.get(ns, name).await {
            Ok(Some(i)) => i,
            _ => return,
        };
        let mut status = current.status.clone().unwrap_or_default();
        f(&mut status);
        if Some(&status) == current.status.as_ref() {
            return;
        }
        if let Err(e) = typed.merge_patch(ns, name, json!({"status": status}), true).await {
            tracing::debug!(image = name, error = %e, "cannot update image status");
        }
    }

    /// One pass over every image.
    pub async fn reconcile(self: &Arc<Self>) {
        let typed = Typed::<VirtualMachineImage>::new(self.api.as_ref());
        let images = match typed.list(None, &Selectors::default()).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list images");
                return;
            }
        };
        for img in images {
            let uid = img.metadata.uid.clone().unwrap_or_default();
            let name = img.metadata.name.clone().unwrap_or_default();
            let ns = img.metadata.namespace.clone();
            if img.metadata.deletion_timestamp.is_some() {
                self.release(&img).await;
                continue;
            }
            if !img.metadata.finalizers.iter().any(|f| f == FINALIZER) {
                let mut fins = img.metadata.finalizers.clone();
                fins.push(FINALIZER.into());
                let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": img.metadata.resource_version}});
                if let Err(e) = typed.merge_patch(ns.as_deref(), &name, patch, false).await {
                    tracing::debug!(image = %name, error = %e, "cannot add the image finalizer");
                }
                continue;
            }
            let status = img.status.clone().unwrap_or_default();
            if img.imported() && status.storage_class_name.is_none() {
                self.ensure_storage_class(&img).await;
            }
            if img.imported() || status.failed {
                continue;
            }
            match img.spec.source_type.as_str() {
                "upload" if !status.conditions.iter().any(|c| c.type_ == "Initialized") => {
                    let hint = format!(
                        "waiting for the file: sheaf image upload FILE --name {name}{}",
                        ns.as_deref().map(|n| format!(" -n {n}")).unwrap_or_default()
                    );
                    self.patch_status(&img, |s| {
                        s.progress = Some(0);
                        set_condition(s, condition("Initialized", true, "WaitingForUpload", hint));
                    })
                    .await;
                }
                "download" | "export-from-volume" => {
                    let Some(busy) = self.claim(&uid) else { continue };
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _busy = busy;
                        me.import(img).await;
                    });
                }
                _ => {}
            }
        }
    }

    /// Runs a download or export to the end (success or for-good failure).
    async fn import(self: Arc<Self>, img: VirtualMachineImage) {
        let name = img.metadata.name.clone().unwrap_or_default();
        let retry = img.spec.retry.unwrap_or(DEFAULT_RETRY);
        loop {
            self.patch_status(&img, |s| {
                s.progress = Some(0);
                s.applied_url.clone_from(&img.spec.url);
                set_condition(s, condition("Initialized", true, "Importing", "the import is running"));
            })
            .await;
            let res = match img.spec.source_type.as_str() {
                "download" => self.download(&img).await,
                _ => self.export(&img).await,
            };
            let res = match res {
                Ok((bytes, sha)) => self.finish(&img, bytes, sha).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => return,
                Err(e) => {
                    let failures = img.status.as_ref().and_then(|s| s.failures).unwrap_or(0);
                    let current = Typed::<VirtualMachineImage>::new(self.api.as_ref())
                        .get(img.metadata.namespace.as_deref(), &name)
                        .await
                        .ok()
                        .flatten();
                    let failures =
                        current.as_ref().and_then(|i| i.status.as_ref()).and_then(|s| s.failures).unwrap_or(failures)
                            + 1;
                    let final_ = matches!(e, ImportError::Refused(_)) || failures > retry;
                    tracing::warn!(image = %name, error = %e, failures, "image import failed");
                    let _ = std::fs::remove_dir_all(self.dir(img.metadata.uid.as_deref().unwrap_or("")));
                    self.patch_status(&img, |s| {
                        s.failures = Some(failures);
                        s.failed = final_;
                        let reason = if final_ { "ImportFailed" } else { "Retrying" };
                        set_condition(s, condition("Imported", false, reason, e.to_string()));
                    })
                    .await;
                    if final_ || current.is_none_or(|i| i.metadata.deletion_timestamp.is_some()) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(2u64.pow(failures.min(5)))).await;
                }
            }
        }
    }

    fn fresh_dir(&self, img: &VirtualMachineImage) -> Result<PathBuf, ImportError> {
        let dir = self.dir(img.metadata.uid.as_deref().unwrap_or(""));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| transient(format!("creating {}: {e}", dir.display())))?;
        Ok(dir)
    }

    async fn download(&self, img: &VirtualMachineImage) -> Result<(u64, String), ImportError> {
        let url = img.spec.url.clone().unwrap_or_default();
        let dir = self.fresh_dir(img)?;
        let resp = self.http.get(&url).send().await.map_err(|e| transient(format!("cannot download {url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let e = format!("downloading {url}: the server answered {status}");
            return Err(if status.is_client_error() { refused(e) } else { transient(e) });
        }
        let total = resp.content_length();
        let mut sink = Sink::create(&dir.join("source.part")).await?;
        let mut progress = Progress::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| transient(format!("downloading {url}: {e}")))?;
            sink.write(&chunk).await?;
            if let Some(t) = total.filter(|t| *t > 0) {
                let pct = (sink.bytes * 90 / t).min(90) as u32;
                if progress.due(pct) {
                    self.patch_status(img, |s| s.progress = Some(pct)).await;
                }
            }
        }
        let got = sink.finish().await?;
        if let Some(t) = total {
            if got.0 != t {
                return Err(transient(format!("the download of {url} ended after {} of {t} bytes", got.0)));
            }
        }
        std::fs::rename(dir.join("source.part"), dir.join("source")).map_err(transient)?;
        Ok(got)
    }

    /// Takes an upload's body: the image must be an upload that is not
    /// imported yet, and nothing else may be uploading it. Returns the
    /// image as it is once imported (or the reason it was refused).
    pub async fn upload<S, E>(
        self: &Arc<Self>,
        ns: &str,
        name: &str,
        body: S,
    ) -> Result<VirtualMachineImage, UploadError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let typed = Typed::<VirtualMachineImage>::new(self.api.as_ref());
        let img = typed
            .get(Some(ns), name)
            .await
            .map_err(|e| UploadError::Unavailable(e.to_string()))?
            .ok_or_else(|| UploadError::NotFound(format!("VirtualMachineImage {ns}/{name} does not exist")))?;
        if img.spec.source_type != "upload" {
            return Err(UploadError::Conflict(format!(
                "VirtualMachineImage {ns}/{name} has sourceType {:?}; only sourceType \"upload\" takes an upload",
                img.spec.source_type
            )));
        }
        if img.imported() {
            return Err(UploadError::Conflict(format!(
                "VirtualMachineImage {ns}/{name} holds its data already; create a new image to upload another file"
            )));
        }
        if img.metadata.deletion_timestamp.is_some() {
            return Err(UploadError::Conflict(format!("VirtualMachineImage {ns}/{name} is being deleted")));
        }
        let uid = img.metadata.uid.clone().unwrap_or_default();
        let Some(busy) = self.claim(&uid) else {
            return Err(UploadError::Conflict(format!(
                "VirtualMachineImage {ns}/{name} is being uploaded already; wait for that upload to end"
            )));
        };
        let dir = self.fresh_dir(&img).map_err(|e| UploadError::Unavailable(e.to_string()))?;
        self.patch_status(&img, |s| {
            s.progress = Some(0);
            s.failed = false;
            set_condition(s, condition("Initialized", true, "Uploading", "the upload is running"));
        })
        .await;
        let mut sink =
            Sink::create(&dir.join("source.part")).await.map_err(|e| UploadError::Unavailable(e.to_string()))?;
        let mut body = body;
        let mut last = Instant::now();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("the upload was interrupted after {} bytes: {e}", sink.bytes);
                    let _ = std::fs::remove_dir_all(&dir);
                    self.patch_status(&img, |s| {
                        set_condition(s, condition("Initialized", true, "WaitingForUpload", why.clone()));
                    })
                    .await;
                    return Err(UploadError::Interrupted(why));
                }
            };
            sink.write(&chunk).await.map_err(|e| UploadError::Unavailable(e.to_string()))?;
            if last.elapsed() > Duration::from_secs(1) {
                last = Instant::now();
                let bytes = sink.bytes as i64;
                self.patch_status(&img, |s| s.size = Some(bytes)).await;
            }
        }
        let got = sink.finish().await.map_err(|e| UploadError::Unavailable(e.to_string()))?;
        std::fs::rename(dir.join("source.part"), dir.join("source"))
            .map_err(|e| UploadError::Unavailable(e.to_string()))?;
        // The rest runs on even if the client goes away now.
        let me = self.clone();
        let img2 = img.clone();
        let done = tokio::spawn(async move {
            let _busy = busy;
            let res = me.finish(&img2, got.0, got.1).await;
            if let Err(e) = &res {
                let _ = std::fs::remove_dir_all(me.dir(img2.metadata.uid.as_deref().unwrap_or("")));
                me.patch_status(&img2, |s| {
                    s.failed = true;
                    set_condition(s, condition("Imported", false, "ImportFailed", e.to_string()));
                })
                .await;
            }
            res
        });
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(UploadError::Refused(e.to_string())),
            Err(e) => return Err(UploadError::Unavailable(e.to_string())),
        }
        typed
            .get(Some(ns), name)
            .await
            .map_err(|e| UploadError::Unavailable(e.to_string()))?
            .ok_or_else(|| UploadError::NotFound(format!("VirtualMachineImage {ns}/{name} was deleted")))
    }

    /// Exports a volume (a snapshot of it) into the image's source file.
    async fn export(&self, img: &VirtualMachineImage) -> Result<(u64, String), ImportError> {
        let ns = img.metadata.namespace.as_deref();
        let vol_name = img.spec.pvc_name.clone().unwrap_or_default();
        let vol = Typed::<Volume>::new(self.api.as_ref())
            .get(ns, &vol_name)
            .await
            .map_err(transient)?
            .ok_or_else(|| transient(format!("the volume {vol_name:?} to export does not exist (yet)")))?;
        let snaps = Typed::<VolumeSnapshot>::new(self.api.as_ref());
        let img_name = img.metadata.name.clone().unwrap_or_default();
        // Without a snapshot named, one is taken for the export and
        // removed after it.
        let (snap_name, temporary) = match &img.spec.snapshot_name {
            Some(s) => (s.clone(), false),
            None => (format!("{img_name}-export"), true),
        };
        if temporary && snaps.get(ns, &snap_name).await.map_err(transient)?.is_none() {
            let snap: VolumeSnapshot = serde_json::from_value(json!({
                "metadata": {"name": snap_name, "namespace": ns.unwrap_or("default"),
                             "labels": {"sheaf.io/exported-by": img_name}},
                "spec": {"volumeName": vol_name},
            }))
            .map_err(refused)?;
            snaps.create(&snap).await.map_err(transient)?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let snap = loop {
            let s = snaps
                .get(ns, &snap_name)
                .await
                .map_err(transient)?
                .ok_or_else(|| refused(format!("VolumeSnapshot {snap_name:?} does not exist")))?;
            if s.spec.volume_name != vol_name {
                return Err(refused(format!(
                    "VolumeSnapshot {snap_name:?} is of volume {:?}, not {vol_name:?}",
                    s.spec.volume_name
                )));
            }
            if s.status.as_ref().is_some_and(|st| st.ready_to_use) {
                break s;
            }
            if Instant::now() > deadline {
                return Err(transient(format!("VolumeSnapshot {snap_name:?} did not become ready within 2 minutes")));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let res = self.export_snapshot(img, &vol, &snap).await;
        if temporary {
            let _ = snaps.delete(ns, &snap_name).await;
        }
        res
    }

    async fn export_snapshot(
        &self,
        img: &VirtualMachineImage,
        vol: &Volume,
        snap: &VolumeSnapshot,
    ) -> Result<(u64, String), ImportError> {
        use std::os::unix::fs::FileExt as _;
        let replicas = Typed::<sheaf_types::storage::Replica>::new(self.api.as_ref())
            .list(vol.metadata.namespace.as_deref(), &Selectors::default())
            .await
            .map_err(transient)?;
        let addresses: Vec<sheaf_blk::replica_server::Address> = replicas
            .iter()
            .filter(|r| r.spec.volume_name == vol.metadata.name.clone().unwrap_or_default())
            .filter(|r| r.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Running"))
            .filter_map(|r| r.status.as_ref()?.address.as_deref()?.parse().ok())
            .collect();
        let mut last = String::from("the volume has no running replica");
        let dir = self.fresh_dir(img)?;
        for a in addresses {
            let reader = match sheaf_blk::engine::SnapshotReader::open_with_key(
                &a,
                &snap.layer_name(),
                self.cluster_key.as_ref(),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let path = dir.join("source");
            let file = std::fs::File::create(&path).map_err(transient)?;
            file.set_len(reader.size).map_err(transient)?;
            let mut hash = ring::digest::Context::new(&ring::digest::SHA512);
            let mut progress = Progress::new();
            let chunk = 4u64 << 20;
            let mut offset = 0;
            while offset < reader.size {
                let len = chunk.min(reader.size - offset) as u32;
                let data = reader.read(offset, len).await.map_err(transient)?;
                hash.update(&data);
                // Zeros stay holes.
                for (k, block) in data.chunks(sheaf_blk::store::BLOCK as usize).enumerate() {
                    if block.iter().any(|b| *b != 0) {
                        file.write_all_at(block, offset + (k as u64) * sheaf_blk::store::BLOCK).map_err(transient)?;
                    }
                }
                offset += u64::from(len);
                let pct = (offset * 90 / reader.size) as u32;
                if progress.due(pct) {
                    self.patch_status(img, |s| s.progress = Some(pct)).await;
                }
            }
            file.sync_all().map_err(transient)?;
            return Ok((reader.size, hex(hash.finish().as_ref())));
        }
        Err(transient(format!("cannot read the volume's snapshot: {last}")))
    }

    /// From `source` to a finished base image, and the status that says so.
    async fn finish(&self, img: &VirtualMachineImage, bytes: u64, sha512: String) -> Result<(), ImportError> {
        let dir = self.dir(img.metadata.uid.as_deref().unwrap_or(""));
        if let Some(want) = img.spec.checksum.as_deref().filter(|c| !c.is_empty()) {
            if !want.eq_ignore_ascii_case(&sha512) {
                return Err(refused(format!(
                    "the file's SHA-512 is {sha512}, not the {want} the image expects: the file is not the one meant, \
                     or it was damaged on the way"
                )));
            }
        }
        let source = dir.join("source");
        let detected = image_format::detect(&source).map_err(refused)?;
        self.patch_status(img, |s| {
            s.progress = Some(90);
            s.size = Some(bytes as i64);
            s.format = Some(detected.format.as_str().into());
            s.sha512 = Some(sha512.clone());
        })
        .await;
        let data = dir.join(sheaf_blk::base::DATA_FILE);
        match detected.format {
            Format::Qcow2 => {
                let (src, out) = (source.display().to_string(), data.display().to_string());
                qemu_img(&["check", "-f", "qcow2", &src]).await?;
                qemu_img(&["convert", "-f", "qcow2", "-O", "raw", "-S", "4k", &src, &out]).await?;
            }
            Format::Raw | Format::Iso => {
                std::fs::rename(&source, &data).map_err(transient)?;
            }
        }
        let _ = std::fs::remove_file(&source);
        let uid = img.metadata.uid.clone().unwrap_or_default();
        let build_dir = dir.clone();
        let meta = tokio::task::spawn_blocking(move || sheaf_blk::base::build(&build_dir, &uid, |_, _| {}))
            .await
            .map_err(transient)?
            .map_err(transient)?;
        let node = self.node.clone();
        self.patch_status(img, |s| {
            s.progress = Some(100);
            s.virtual_size = Some(meta.size as i64);
            s.failed = false;
            if !s.nodes.contains(&node) {
                s.nodes.push(node);
            }
            set_condition(
                s,
                condition("Imported", true, "Imported", format!("{} image imported", detected.format.as_str())),
            );
        })
        .await;
        self.ensure_storage_class(img).await;
        tracing::info!(image = ?img.metadata.name, format = detected.format.as_str(), size = meta.size, stored = meta.stored, "image imported");
        Ok(())
    }

    /// The image's StorageClass (Harvester makes one per image too): the
    /// image's `storageClassParameters` plus `image`, so a claim of that
    /// class starts from the image.
    async fn ensure_storage_class(&self, img: &VirtualMachineImage) {
        let name = storage_class_name(img);
        let classes = Typed::<StorageClass>::new(self.api.as_ref());
        let mut parameters = img.spec.storage_class_parameters.clone();
        parameters.insert("image".into(), img.reference());
        let sc: Result<StorageClass, _> = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {IMAGE_LABEL: img.metadata.uid}},
            "provisioner": sheaf_types::claim::PROVISIONER,
            "parameters": parameters,
            "reclaimPolicy": "Delete",
            "allowVolumeExpansion": true,
        }));
        let res = match sc {
            Ok(sc) => match classes.create(&sc).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_already_exists() => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(()) => self.patch_status(img, |s| s.storage_class_name = Some(name)).await,
            Err(e) => {
                let msg = format!("cannot make the image's StorageClass {name}: {e}");
                self.patch_status(img, |s| set_condition(s, condition("StorageClassReady", false, "Invalid", msg)))
                    .await
            }
        }
    }

    /// An image being deleted: its files go once no volume is made from
    /// it (a volume's replicas read through the base).
    async fn release(&self, img: &VirtualMachineImage) {
        let reference = img.reference();
        let users: Vec<String> = match Typed::<Volume>::new(self.api.as_ref()).list(None, &Selectors::default()).await {
            Ok(v) => v
                .into_iter()
                .filter(|v| v.spec.image.as_deref() == Some(reference.as_str()))
                .map(|v| {
                    format!("{}/{}", v.metadata.namespace.unwrap_or_default(), v.metadata.name.unwrap_or_default())
                })
                .collect(),
            Err(_) => return,
        };
        if !users.is_empty() {
            let msg = format!("the image is kept until the volumes made from it are deleted: {}", users.join(", "));
            self.patch_status(img, |s| set_condition(s, condition("Deleting", false, "InUse", msg))).await;
            return;
        }
        let uid = img.metadata.uid.clone().unwrap_or_default();
        if self.busy.lock().is_ok_and(|b| b.contains(&uid)) {
            return;
        }
        let _ = std::fs::remove_dir_all(self.dir(&uid));
        if let Some(sc) = img.status.as_ref().and_then(|s| s.storage_class_name.as_deref()) {
            match Typed::<StorageClass>::new(self.api.as_ref()).get(None, sc).await {
                Ok(Some(c)) if c.metadata.labels.get(IMAGE_LABEL) == Some(&uid) => {
                    let _ = Typed::<StorageClass>::new(self.api.as_ref()).delete(None, sc).await;
                }
                _ => {}
            }
        }
        let fins: Vec<&String> = img.metadata.finalizers.iter().filter(|f| *f != FINALIZER).collect();
        if fins.len() != img.metadata.finalizers.len() {
            let name = img.metadata.name.clone().unwrap_or_default();
            let patch = json!({"metadata": {"finalizers": fins}});
            if let Err(e) = Typed::<VirtualMachineImage>::new(self.api.as_ref())
                .merge_patch(img.metadata.namespace.as_deref(), &name, patch, false)
                .await
            {
                tracing::debug!(image = %name, error = %e, "cannot release a deleted image");
            }
        }
    }
}

/// Why an upload was not taken.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Interrupted(String),
    /// The file is not an importable image.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Runs `qemu-img ARGS` and fails with its message.
async fn qemu_img(args: &[&str]) -> Result<String, ImportError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| transient(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(refused(format!(
            "qemu-img {} refused the image: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reconciles the node's images at once when one changes, and every
/// [`PERIOD`] in any case.
pub async fn run(images: Arc<Images>) {
    let changed = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(crate::storage::notify_on_change(
        images.api.clone(),
        sheaf_client::Gvr::of::<VirtualMachineImage>(),
        changed.clone(),
    ));
    loop {
        images.reconcile().await;
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
