//! The audit log: one JSON line per mutating request (who, what, when,
//! result), written by one task behind a bounded channel and rotated by
//! size. See `docs/design/rbac.md`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

/// The name of an object a request wrote, put on the response so that the
/// log names what a POST created.
#[derive(Clone, Debug)]
pub struct WrittenName(pub String);

/// One audited request.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub time: String,
    pub user: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_by: Option<String>,
    pub verb: String,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub code: u16,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source_ip: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
}

/// Where and how big.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    /// Rotate when the file reaches this many bytes.
    pub max_bytes: u64,
    /// How many rotated files to keep (`audit.log.1` … `audit.log.N`).
    pub max_backups: u32,
}

const QUEUE: usize = 8192;

/// The sending side, shared by all requests.
pub struct Audit {
    tx: mpsc::Sender<Record>,
    dropped: std::sync::Arc<AtomicU64>,
}

impl Audit {
    /// Opens (creates) the log and starts its writer task.
    pub fn start(cfg: Config) -> std::io::Result<Audit> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open(&cfg.path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = std::sync::Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        tokio::task::spawn_blocking(move || writer(cfg, file, rx, d));
        Ok(Audit { tx, dropped })
    }

    /// Queues a record; never waits. A full queue drops it (and counts it).
    pub fn record(&self, r: Record) {
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Shifts `path` to `path.1`, `path.1` to `path.2`, … dropping the oldest.
pub fn rotate(path: &Path, max_backups: u32) -> std::io::Result<()> {
    if max_backups == 0 {
        return std::fs::remove_file(path).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        });
    }
    let _ = std::fs::remove_file(rotated(path, max_backups));
    for n in (1..max_backups).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

fn writer(cfg: Config, mut file: std::fs::File, mut rx: mpsc::Receiver<Record>, dropped: std::sync::Arc<AtomicU64>) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
            if batch.len() >= 512 {
                break;
            }
        }
        let mut buf = Vec::with_capacity(batch.len() * 256);
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let note = serde_json::json!({"time": chrono::Utc::now().to_rfc3339(), "dropped": lost,
                "message": "audit records dropped: the log could not keep up"});
            let _ = serde_json::to_writer(&mut buf, &note);
            buf.push(b'\n');
        }
        for r in &batch {
            if serde_json::to_writer(&mut buf, r).is_ok() {
                buf.push(b'\n');
            }
        }
        if let Err(e) = file.write_all(&buf) {
            tracing::error!(path = %cfg.path.display(), error = %e, "cannot write the audit log");
            continue;
        }
        size += buf.len() as u64;
        if size >= cfg.max_bytes {
            match rotate(&cfg.path, cfg.max_backups).and_then(|_| open(&cfg.path)) {
                Ok(f) => {
                    file = f;
                    size = 0;
                }
                Err(e) => tracing::error!(path = %cfg.path.display(), error = %e, "cannot rotate the audit log"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> Record {
        Record {
            time: chrono::Utc::now().to_rfc3339(),
            user: "ann".into(),
            groups: vec![],
            impersonated_by: None,
            verb: "create".into(),
            method: "POST".into(),
            path: format!("/api/v1/namespaces/a/configmaps/{i}"),
            api_group: String::new(),
            resource: "configmaps".into(),
            subresource: String::new(),
            namespace: "a".into(),
            name: format!("c{i}"),
            code: 201,
            latency_ms: 1,
            source_ip: String::new(),
            user_agent: String::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lines_are_written_and_rotated() {
        let dir = tempfile::tempdir().expect("test input");
        let path = dir.path().join("audit.log");
        let audit = Audit::start(Config { path: path.clone(), max_bytes: 4096, max_backups: 2 }).expect("test input");
        for i in 0..200 {
            audit.record(record(i));
            if i % 20 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        drop(audit);
        // The writer ends when every sender is gone.
        for _ in 0..100 {
            if rotated(&path, 2).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists(), "only two backups kept");
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) < 4096 + 512 * 400);
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("test input");
                assert_eq!(v["user"], "ann");
            }
        }
        // The newest record is in the live file or the first backup.
        let all = std::fs::read_to_string(&path).unwrap_or_default()
            + &std::fs::read_to_string(rotated(&path, 1)).expect("test input");
        assert!(all.contains("\"name\":\"c199\""));
    }
}
