//! `sheaf image ...`: VirtualMachineImages (`harvesterhci.io/v1beta1`):
//! import from a URL, upload a file, export a volume, download, list,
//! delete, with progress bars.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{encode, Client, ConnArgs};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  sheaf image create debian-12 --url https://example.org/debian-12.qcow2 --checksum SHA512
  sheaf image upload ./disk.qcow2 --name my-disk
  sheaf image export data --name data-golden
  sheaf image list
  sheaf image download my-disk -o my-disk.raw
  sheaf image delete my-disk")]
pub struct ImageArgs {
    #[command(subcommand)]
    pub action: ImageAction,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, value_name = "NS", global = true)]
    pub namespace: Option<String>,
    /// How long to wait for an import (seconds).
    #[arg(long, default_value = "3600", global = true)]
    pub timeout: u64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand, Debug)]
pub enum ImageAction {
    /// Import an image from an http(s) URL (qcow2, raw or ISO, detected from
    /// the content) and wait until it is ready.
    Create {
        name: String,
        #[arg(long)]
        url: String,
        /// SHA-512 of the file (sha512sum); the import fails if it differs.
        #[arg(long)]
        checksum: Option<String>,
        /// The name people see (default: NAME).
        #[arg(long)]
        display_name: Option<String>,
        /// Return once the image object exists, without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Upload a local file as a new image and wait until it is ready.
    Upload {
        file: PathBuf,
        /// The image's name (default: the file name, made a valid name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Make an image of a volume (or of one of its snapshots).
    Export {
        /// The claim or volume to export.
        volume: String,
        #[arg(long)]
        name: String,
        /// Export this VolumeSnapshot instead of the volume as it is now.
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List images with their format, size and state.
    List,
    /// Save an image's disk (raw) to a file.
    Download {
        name: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Delete an image (kept until no volume is made from it).
    Delete { name: String },
}

struct Ctx {
    client: Client,
    ns: String,
    timeout: Duration,
}

const GV: &str = "/apis/harvesterhci.io/v1beta1";

impl Ctx {
    fn path(&self, name: Option<&str>) -> String {
        let base = format!("{GV}/namespaces/{}/virtualmachineimages", encode(&self.ns));
        match name {
            Some(n) => format!("{base}/{}", encode(n)),
            None => base,
        }
    }
    async fn create(&self, name: &str, display: Option<String>, spec: Value) -> anyhow::Result<()> {
        let mut spec = spec;
        spec["displayName"] = json!(display.unwrap_or_else(|| name.to_string()));
        let body = json!({
            "apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineImage",
            "metadata": {"name": name, "namespace": self.ns}, "spec": spec,
        });
        self.client
            .request(
                Method::POST,
                &self.path(None),
                "application/json",
                Some(("application/json", serde_json::to_vec(&body)?)),
            )
            .await?;
        Ok(())
    }

    /// Follows the import with a progress bar until it is imported or failed.
    async fn follow(&self, name: &str) -> anyhow::Result<Value> {
        let bar = bar(100, "importing");
        let start = Instant::now();
        loop {
            let img = self.client.get_json(&self.path(Some(name))).await?;
            if let Some(pct) = img.pointer("/status/progress").and_then(Value::as_u64) {
                bar.set_position(pct);
            }
            if let Some(msg) = condition(&img, "Imported", "False").filter(|_| failed(&img)) {
                bar.abandon();
                bail!("the import of image {name} failed: {msg}");
            }
            if condition(&img, "Imported", "True").is_some() {
                bar.finish_and_clear();
                return Ok(img);
            }
            if start.elapsed() > self.timeout {
                bar.abandon();
                bail!(
                    "image {name} was not imported within {} s (see kubectl get virtualmachineimages {name} -o yaml)",
                    self.timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn failed(img: &Value) -> bool {
    img.pointer("/status/failed").and_then(Value::as_bool).unwrap_or(false)
}

fn condition(img: &Value, type_: &str, status: &str) -> Option<String> {
    img.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == status)
        .map(|c| c["message"].as_str().unwrap_or("").to_string())
}

/// A progress bar on a terminal's stderr; hidden otherwise.
fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    let template = if len == 100 {
        "{msg:>10} [{bar:40}] {pos:>3}%"
    } else {
        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    };
    b.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

/// A valid object name from a file name: `Debian 12.qcow2` → `debian-12`.
fn name_from_file(file: &std::path::Path) -> String {
    let stem = file.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut out = String::new();
    for c in stem.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(63).collect();
    out.trim_end_matches('-').to_string()
}

fn summary(img: &Value) -> String {
    let size = img.pointer("/status/virtualSize").and_then(Value::as_i64).unwrap_or(0);
    format!(
        "{} ({}, {} disk)",
        img.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
        img.pointer("/status/format").and_then(Value::as_str).unwrap_or("?"),
        sheaf_types::storage::format_bytes(size)
    )
}

pub async fn run(a: ImageArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.conn)?;
    let ns = a.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    let cx = Ctx { client, ns, timeout: Duration::from_secs(a.timeout) };
    match a.action {
        ImageAction::Create { name, url, checksum, display_name, no_wait } => {
            let mut spec = json!({"sourceType": "download", "url": url});
            if let Some(c) = checksum {
                spec["checksum"] = json!(c);
            }
            cx.create(&name, display_name, spec).await?;
            if no_wait {
                println!("image {name} created; the import runs on the server (kubectl get vmimages {name})");
                return Ok(());
            }
            let img = cx.follow(&name).await?;
            println!("image {} imported", summary(&img));
        }
        ImageAction::Upload { file, name, display_name } => {
            let meta = std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?;
            if !meta.is_file() {
                bail!("{} is not a file", file.display());
            }
            let name = match name {
                Some(n) => n,
                None => {
                    let n = name_from_file(&file);
                    if n.is_empty() {
                        bail!("cannot make an image name from {}; give one with --name", file.display());
                    }
                    n
                }
            };
            cx.create(&name, display_name, json!({"sourceType": "upload"})).await?;
            let len = meta.len();
            let path = format!("{}/upload", cx.path(Some(&name)));
            // A node agent that is still starting answers 503 before it
            // reads anything: try again for a while.
            let deadline = Instant::now() + Duration::from_secs(60);
            let res = loop {
                let bar = bar(len, "uploading");
                let f =
                    tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
                let b = bar.clone();
                let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).inspect(move |c| {
                    if let Ok(c) = c {
                        b.inc(c.len() as u64);
                        if b.position() >= len {
                            b.set_message("converting");
                        }
                    }
                });
                let res = cx.client.send_stream(Method::POST, &path, len, reqwest::Body::wrap_stream(stream)).await;
                bar.finish_and_clear();
                let unavailable = res
                    .as_ref()
                    .err()
                    .and_then(|e| e.downcast_ref::<super::client::ServerError>())
                    .is_some_and(|e| e.code == 503);
                if !unavailable || Instant::now() > deadline {
                    break res;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            };
            let img = res.with_context(|| format!("image {name} was created, but its upload failed; delete it with sheaf image delete {name} or upload again"))?;
            println!("image {} uploaded", summary(&img.body));
        }
        ImageAction::Export { volume, name, snapshot, display_name } => {
            let mut spec = json!({"sourceType": "export-from-volume", "pvcName": volume, "pvcNamespace": cx.ns});
            if let Some(s) = snapshot {
                spec["snapshotName"] = json!(s);
            }
            cx.create(&name, display_name, spec).await?;
            let img = cx.follow(&name).await?;
            println!("image {} exported from {volume}", summary(&img));
        }
        ImageAction::List => {
            let v = cx.client.get_json(&cx.path(None)).await?;
            let mut rows = vec![vec![
                "NAME".to_string(),
                "DISPLAY-NAME".into(),
                "SOURCE".into(),
                "FORMAT".into(),
                "VIRTUAL-SIZE".into(),
                "STATE".into(),
            ]];
            for img in v.get("items").and_then(Value::as_array).cloned().unwrap_or_default() {
                let state = if condition(&img, "Imported", "True").is_some() {
                    "Ready".to_string()
                } else if failed(&img) {
                    "Failed".into()
                } else {
                    format!("{}%", img.pointer("/status/progress").and_then(Value::as_u64).unwrap_or(0))
                };
                let g = |p: &str| img.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
                rows.push(vec![
                    g("/metadata/name"),
                    g("/spec/displayName"),
                    g("/spec/sourceType"),
                    g("/status/format"),
                    img.pointer("/status/virtualSize")
                        .and_then(Value::as_i64)
                        .map(sheaf_types::storage::format_bytes)
                        .unwrap_or_default(),
                    state,
                ]);
            }
            print!("{}", super::printer::align(&rows));
        }
        ImageAction::Download { name, output } => {
            use std::os::unix::fs::FileExt as _;
            let resp = cx.client.get_stream(&format!("{}/download", cx.path(Some(&name)))).await?;
            let len = resp.content_length().unwrap_or(0);
            let f = std::fs::File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
            f.set_len(len)?;
            let bar = bar(len, "downloading");
            let mut at = 0u64;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the download was interrupted")?;
                // Blocks of zeros stay holes: the file is as sparse as the image.
                for (k, block) in chunk.chunks(4096).enumerate() {
                    if block.iter().any(|b| *b != 0) {
                        f.write_all_at(block, at + k as u64 * 4096)?;
                    }
                }
                at += chunk.len() as u64;
                bar.set_position(at);
            }
            bar.finish_and_clear();
            if at != len {
                bail!("the download ended after {at} of {len} bytes");
            }
            f.sync_all()?;
            println!("image {name} saved to {} ({})", output.display(), sheaf_types::storage::format_bytes(len as i64));
        }
        ImageAction::Delete { name } => {
            cx.client.request(Method::DELETE, &cx.path(Some(&name)), "application/json", None).await?;
            println!("image {name} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_from_files() {
        assert_eq!(
            super::name_from_file(std::path::Path::new("/x/Debian 12_Genericcloud.qcow2")),
            "debian-12-genericcloud"
        );
        assert_eq!(super::name_from_file(std::path::Path::new("--.img")), "");
    }
}
