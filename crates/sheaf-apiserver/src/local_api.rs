//! [`sheaf_client::Api`] in process: controllers and the embedded agent
//! call the object layer directly, with the same validation and semantics
//! as HTTP clients, without TLS or JSON round trips.

use std::sync::Arc;

use serde_json::Value;
use sheaf_client::{Api, ClientError, Gvr, Selectors, WatchEvent, WatchStream};
use sheaf_types::ResourceType;

use crate::error::ApiError;
use crate::objects::{name_of, DeleteOptions, ListParams, Objects, WriteOptions};
use crate::patch::PatchType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::watch::{self, Frame, WatchParams};

/// The in-process API.
#[derive(Clone)]
pub struct LocalApi {
    objects: Objects,
}

impl LocalApi {
    pub fn new(objects: Objects) -> Arc<Self> {
        Arc::new(LocalApi { objects })
    }

    fn rt(&self, r: Gvr) -> Result<ResourceType, ClientError> {
        self.objects.registry.find(r.group, r.version, r.plural).cloned().ok_or_else(|| ClientError {
            code: 404,
            reason: "NotFound".into(),
            message: format!("no resource {r:?}"),
        })
    }
}

fn client_error(e: ApiError) -> ClientError {
    ClientError { code: e.code.as_u16(), reason: e.reason.to_string(), message: e.message }
}

fn list_params(sel: &Selectors) -> Result<ListParams, ClientError> {
    Ok(ListParams {
        labels: LabelSelector::parse(&sel.labels).map_err(client_error)?,
        fields: FieldSelector::parse(&sel.fields).map_err(client_error)?,
        limit: 0,
        continue_token: None,
    })
}

#[async_trait::async_trait]
impl Api for LocalApi {
    async fn get(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<Option<Value>, ClientError> {
        match self.objects.get(&self.rt(r)?, ns, name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == http::StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(client_error(e)),
        }
    }

    async fn list(&self, r: Gvr, ns: Option<&str>, sel: &Selectors) -> Result<(Vec<Value>, String), ClientError> {
        let (items, rv, _) = self.objects.list(&self.rt(r)?, ns, &list_params(sel)?).await.map_err(client_error)?;
        Ok((items, rv))
    }

    async fn watch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        sel: &Selectors,
        resource_version: &str,
    ) -> Result<WatchStream, ClientError> {
        let p = WatchParams {
            list: list_params(sel)?,
            resource_version: Some(resource_version.to_string()),
            bookmarks: true,
            timeout: None,
            table: None,
        };
        let rx =
            watch::frames(self.objects.clone(), self.rt(r)?, ns.map(str::to_string), p).await.map_err(client_error)?;
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let item = match rx.recv().await? {
                Frame::Event("ADDED", o) => Ok(WatchEvent::Added(o)),
                Frame::Event("DELETED", o) => Ok(WatchEvent::Deleted(o)),
                Frame::Event(_, o) => Ok(WatchEvent::Modified(o)),
                Frame::Bookmark(rv) => Ok(WatchEvent::Bookmark(rv)),
                Frame::Error(e) => Err(client_error(e)),
            };
            Some((item, rx))
        });
        Ok(Box::pin(stream))
    }

    async fn create(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        let w = self.objects.create(&self.rt(r)?, ns, obj, &WriteOptions::default()).await.map_err(client_error)?;
        Ok(w.object)
    }

    async fn update(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        let name = name_of(&obj).to_string();
        let w = self
            .objects
            .update(&self.rt(r)?, ns, &name, obj, false, &WriteOptions::default())
            .await
            .map_err(client_error)?;
        Ok(w.object)
    }

    async fn update_status(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        let name = name_of(&obj).to_string();
        let w = self
            .objects
            .update(&self.rt(r)?, ns, &name, obj, true, &WriteOptions::default())
            .await
            .map_err(client_error)?;
        Ok(w.object)
    }

    async fn merge_patch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        name: &str,
        patch: Value,
        status: bool,
    ) -> Result<Value, ClientError> {
        let w = self
            .objects
            .patch(&self.rt(r)?, ns, name, PatchType::Merge, patch, status, false, &WriteOptions::default())
            .await
            .map_err(client_error)?;
        Ok(w.object)
    }

    async fn delete(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<(), ClientError> {
        self.objects.delete(&self.rt(r)?, ns, name, &DeleteOptions::default()).await.map_err(client_error)?;
        Ok(())
    }
}
