//! Where backups are kept: a flat space of objects named by `/`-separated
//! keys, on an S3-compatible bucket ([`s3::S3Store`]) or in a directory
//! ([`fs::FsStore`]). Errors never carry credentials.

pub mod fs;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The target cannot be reached or refused the request; the message
    /// says which and what to check (never a credential).
    #[error("{0}")]
    Unavailable(String),
    /// The credentials were refused.
    #[error("{0}")]
    Denied(String),
    /// The target's configuration is wrong (no such bucket, path not a
    /// directory, bad endpoint).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Last modification, seconds since the epoch.
    pub modified: i64,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes `key` whole; readers see the old object or the new one,
    /// never a part.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;
    /// The object, or None when there is none.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;
    /// Removes `key`; no error when it is not there.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Where this is, for messages and status: `s3://bucket/prefix (endpoint)`
    /// or a path. Never a credential.
    fn describe(&self) -> String;
}
