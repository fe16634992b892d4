//! The Sheaf API seen by controllers and agents, as a trait.
//!
//! Controllers in the server use the in-process implementation (over the
//! API server's object layer: same validation, no HTTP); agents on other
//! nodes use HTTPS. Tests run controllers against the in-process one over a
//! real store in a temporary directory.

pub mod claims;
pub mod remote;

use std::pin::Pin;

use futures::Stream;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use sheaf_types::Kind;

/// Which resource: group, version and plural.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gvr {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
}

impl Gvr {
    pub fn of<K: Kind>() -> Gvr {
        Gvr { group: K::GROUP, version: K::VERSION, plural: K::PLURAL }
    }
}

/// An error answered by the API, with the Kubernetes `Status` fields.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ClientError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }
    pub fn is_conflict(&self) -> bool {
        self.code == 409
    }
    pub fn is_already_exists(&self) -> bool {
        self.code == 409 && self.reason == "AlreadyExists"
    }
    pub fn other(message: impl Into<String>) -> Self {
        ClientError { code: 500, reason: "InternalError".into(), message: message.into() }
    }
}

/// List and watch filters.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    pub labels: String,
    pub fields: String,
}

/// One watch event.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    Added(Value),
    Modified(Value),
    Deleted(Value),
    /// Everything up to this resourceVersion was delivered.
    Bookmark(String),
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, ClientError>> + Send>>;

/// The API operations controllers and agents need. Objects are JSON in the
/// Kubernetes shape; [`Typed`] converts to and from the typed kinds.
#[async_trait::async_trait]
pub trait Api: Send + Sync + 'static {
    async fn get(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<Option<Value>, ClientError>;
    /// All matching objects and the list's resourceVersion.
    async fn list(&self, r: Gvr, ns: Option<&str>, sel: &Selectors) -> Result<(Vec<Value>, String), ClientError>;
    /// Changes after `resource_version` (a list's), as a stream.
    async fn watch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        sel: &Selectors,
        resource_version: &str,
    ) -> Result<WatchStream, ClientError>;
    async fn create(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError>;
    /// Replaces the object; fails with a conflict if its resourceVersion is stale.
    async fn update(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError>;
    /// Replaces the status (status subresource).
    async fn update_status(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError>;
    /// JSON merge patch of the main resource (`status: true`: of the status).
    async fn merge_patch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        name: &str,
        patch: Value,
        status: bool,
    ) -> Result<Value, ClientError>;
    /// Deletes (background propagation). Not found is an error.
    async fn delete(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<(), ClientError>;
}

fn decode<K: DeserializeOwned>(v: Value) -> Result<K, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::other(format!("cannot decode object: {e}")))
}

fn encode<K: Kind>(k: &K) -> Result<Value, ClientError> {
    let mut v = serde_json::to_value(k).map_err(|e| ClientError::other(format!("cannot encode object: {e}")))?;
    if let Value::Object(m) = &mut v {
        let api_version =
            if K::GROUP.is_empty() { K::VERSION.to_string() } else { format!("{}/{}", K::GROUP, K::VERSION) };
        m.insert("apiVersion".into(), Value::String(api_version));
        m.insert("kind".into(), Value::String(K::KIND.into()));
    }
    Ok(v)
}

fn ns_of<K: Kind>(k: &K) -> Option<String> {
    if K::NAMESPACED {
        k.metadata().namespace.clone()
    } else {
        None
    }
}

/// Typed access to one kind.
pub struct Typed<'a, K> {
    api: &'a dyn Api,
    _k: std::marker::PhantomData<K>,
}

impl<'a, K: Kind + Serialize + DeserializeOwned> Typed<'a, K> {
    pub fn new(api: &'a dyn Api) -> Self {
        Typed { api, _k: std::marker::PhantomData }
    }
    pub async fn get(&self, ns: Option<&str>, name: &str) -> Result<Option<K>, ClientError> {
        self.api.get(Gvr::of::<K>(), ns, name).await?.map(decode).transpose()
    }
    pub async fn list(&self, ns: Option<&str>, sel: &Selectors) -> Result<Vec<K>, ClientError> {
        let (items, _) = self.api.list(Gvr::of::<K>(), ns, sel).await?;
        items.into_iter().map(decode).collect()
    }
    pub async fn create(&self, k: &K) -> Result<K, ClientError> {
        decode(self.api.create(Gvr::of::<K>(), ns_of(k).as_deref(), encode(k)?).await?)
    }
    pub async fn update(&self, k: &K) -> Result<K, ClientError> {
        decode(self.api.update(Gvr::of::<K>(), ns_of(k).as_deref(), encode(k)?).await?)
    }
    pub async fn update_status(&self, k: &K) -> Result<K, ClientError> {
        decode(self.api.update_status(Gvr::of::<K>(), ns_of(k).as_deref(), encode(k)?).await?)
    }
    pub async fn merge_patch(
        &self,
        ns: Option<&str>,
        name: &str,
        patch: Value,
        status: bool,
    ) -> Result<K, ClientError> {
        decode(self.api.merge_patch(Gvr::of::<K>(), ns, name, patch, status).await?)
    }
    pub async fn delete(&self, ns: Option<&str>, name: &str) -> Result<(), ClientError> {
        self.api.delete(Gvr::of::<K>(), ns, name).await
    }
}
