//! Uploading and downloading the content of VirtualMachineImages:
//! `POST .../virtualmachineimages/NAME/upload` (the file as the request
//! body, streamed: any size, a bounded amount of memory) and
//! `GET .../virtualmachineimages/NAME/download` (the imported disk, raw).
//!
//! The bytes live on a node; the API server reaches that node's image store
//! through an [`ImageTransfer`] (set once at start).

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// Why a transfer was not done.
#[derive(Debug)]
pub enum TransferError {
    NotFound(String),
    Conflict(String),
    /// The file is not an importable image (422).
    Invalid(String),
    Unavailable(String),
}

impl From<TransferError> for ApiError {
    fn from(e: TransferError) -> ApiError {
        match e {
            TransferError::NotFound(m) => ApiError::not_found_msg(m),
            TransferError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "Conflict", m),
            TransferError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m),
            TransferError::Unavailable(m) => ApiError::unavailable(m),
        }
    }
}

/// A node's image store, as the API server sees it.
#[async_trait::async_trait]
pub trait ImageTransfer: Send + Sync {
    /// Takes the file of upload image `ns/name`; returns the image once
    /// imported.
    async fn upload(
        &self,
        ns: &str,
        name: &str,
        body: BoxStream<'static, Result<Bytes, String>>,
    ) -> Result<Value, TransferError>;
    /// The imported disk of image `ns/name`, raw: its length and bytes.
    async fn download(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<(u64, BoxStream<'static, std::io::Result<Bytes>>), TransferError>;
}

pub async fn handle(
    transfer: Option<&std::sync::Arc<dyn ImageTransfer>>,
    ns: &str,
    name: &str,
    sub: &str,
    method: &Method,
    body: Body,
) -> ApiResult<Response> {
    let t = transfer.ok_or_else(|| {
        ApiError::unavailable(
            "this server runs no node agent, so it keeps no image content; upload to a server that does",
        )
    })?;
    match (sub, method) {
        ("upload", &Method::POST | &Method::PUT) => {
            let stream = body.into_data_stream().map(|r| r.map_err(|e| e.to_string())).boxed();
            let img = t.upload(ns, name, stream).await?;
            Ok(crate::server::json_response(StatusCode::OK, &img, &[]))
        }
        ("download", &Method::GET) => {
            let (len, stream) = t.download(ns, name).await?;
            Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .header(http::header::CONTENT_LENGTH, len)
                .header(http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.raw\""))
                .body(Body::from_stream(stream))
                .map_err(|e| ApiError::internal(e.to_string()))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "use POST for virtualmachineimages/{name}/upload and GET for virtualmachineimages/{name}/download"
        ))),
    }
}
