//! File-level restore over the API: `GET .../backups/NAME/files` lists a
//! completed Backup's partitions, `?path=/etc[&partition=N]` a directory
//! in one, and `GET .../backups/NAME/download?path=...` streams one file,
//! read from the target chunk by chunk without restoring the volume
//! (sheaf_backup::files).

use std::collections::HashMap;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};
use sheaf_backup::files::{self, EntryKind, FilesError};
use sheaf_backup::{Repository, VolumeManifest};

use crate::error::{ApiError, ApiResult};
use crate::objects::Objects;

fn files_error(e: FilesError) -> ApiError {
    let msg = e.to_string();
    match e {
        FilesError::NotFound(_) => ApiError::not_found_msg(msg),
        FilesError::BadPath { .. }
        | FilesError::NotADirectory(_)
        | FilesError::NotAFile { .. }
        | FilesError::NoSuchPartition { .. }
        | FilesError::PartitionRequired { .. } => ApiError::bad_request(msg),
        FilesError::UnknownFileSystem { .. } | FilesError::UnsupportedFileSystem { .. } | FilesError::Feature(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg)
        }
        FilesError::Repo(_) => ApiError::unavailable(msg),
        _ => ApiError::internal(msg),
    }
}

/// The Backup's repository and manifest; 409 unless it is completed.
async fn open(objects: &Objects, ns: &str, name: &str) -> ApiResult<(Repository, VolumeManifest)> {
    let Some(rt) = objects.registry.find("sheaf.io", "v1alpha1", "backups").cloned() else {
        return Err(ApiError::internal("the Backup kind is not registered"));
    };
    let b = objects.get(&rt, Some(ns), name).await?;
    if b.pointer("/status/phase").and_then(Value::as_str) != Some("Completed") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("backup {name} is not completed: its files can be read once it is"),
        ));
    }
    let key = b.pointer("/status/manifest").and_then(Value::as_str).unwrap_or_default().to_string();
    let target = b.pointer("/spec/target").and_then(Value::as_str).unwrap_or_default().to_string();
    let api = crate::local_api::LocalApi::new(objects.clone());
    let (_, repo) = sheaf_backup::target::open_named(api.as_ref(), &target).await.map_err(ApiError::unavailable)?;
    let m = repo
        .manifest(&key)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .ok_or_else(|| ApiError::gone(format!("backup {name}'s manifest {key} is no longer on target {target}")))?;
    Ok((repo, m))
}

fn partition(q: &HashMap<String, String>) -> ApiResult<Option<u32>> {
    match q.get("partition") {
        None => Ok(None),
        Some(p) => p
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("partition {p:?} is not a number (see GET .../files)"))),
    }
}

/// `GET .../backups/NAME/files[?path=P&partition=N]`.
pub async fn list(objects: &Objects, ns: &str, name: &str, q: &HashMap<String, String>) -> ApiResult<Response> {
    let (repo, m) = open(objects, ns, name).await?;
    let body = match q.get("path") {
        None => {
            let parts = files::partitions(&repo, &m).await.map_err(files_error)?;
            json!({"kind": "BackupFiles", "backup": name, "partitions": parts})
        }
        Some(path) => {
            let p = partition(q)?;
            let entries = files::list(&repo, &m, p, path).await.map_err(files_error)?;
            json!({"kind": "BackupFiles", "backup": name, "partition": p, "path": path, "entries": entries})
        }
    };
    Ok(crate::server::json_response(StatusCode::OK, &body, &[]))
}

/// `GET .../backups/NAME/download?path=P[&partition=N]`: the file's bytes.
pub async fn download(objects: &Objects, ns: &str, name: &str, q: &HashMap<String, String>) -> ApiResult<Response> {
    let path = q.get("path").cloned().ok_or_else(|| ApiError::bad_request("give the file: ?path=/etc/hostname"))?;
    let p = partition(q)?;
    let (repo, m) = open(objects, ns, name).await?;
    // What it is, before the answer starts.
    let (dir, file) = match path.trim_end_matches('/').rsplit_once('/') {
        Some((d, f)) if !f.is_empty() => (if d.is_empty() { "/" } else { d }, f),
        _ => return Err(ApiError::bad_request(format!("{path:?} is not a file's absolute path"))),
    };
    let entries = files::list(&repo, &m, p, dir).await.map_err(files_error)?;
    let entry = entries
        .iter()
        .find(|e| e.name == file || e.name.eq_ignore_ascii_case(file))
        .ok_or_else(|| ApiError::not_found_msg(format!("{path}: no such file or directory")))?;
    if !matches!(entry.kind, EntryKind::File | EntryKind::Symlink) {
        return Err(ApiError::bad_request(format!("{path} is not a regular file")));
    }
    let size = entry.size;
    let (mut writer, reader) = tokio::io::duplex(256 << 10);
    let backup = name.to_string();
    tokio::spawn(async move {
        if let Err(e) = files::read_file(&repo, &m, p, &path, &mut writer).await {
            tracing::warn!(backup, path, error = %e, "a file download from a backup failed");
        }
    });
    let stream = tokio_util::io::ReaderStream::new(reader);
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    if entry.kind == EntryKind::File {
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(size));
    }
    Ok((StatusCode::OK, headers, Body::from_stream(stream)).into_response())
}
