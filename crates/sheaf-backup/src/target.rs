//! Opening the repository of a `BackupTarget` object: its store, with the
//! credentials of its Secret, and its codec.

use std::sync::Arc;

use sheaf_client::{Api, Typed};
use sheaf_types::backup::{BackupTarget, ACCESS_KEY, SECRET_KEY, SECRET_NAMESPACE, SESSION_TOKEN};
use sheaf_types::core::Secret;

use crate::chunk::Compression;
use crate::repo::Repository;
use crate::store::fs::FsStore;
use crate::store::s3::{S3Config, S3Store};
use crate::store::ObjectStore;

/// The default region when a target names none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The repository of `target`. Errors say what to fix and never hold a
/// credential.
pub async fn open(api: &dyn Api, target: &BackupTarget) -> Result<Repository, String> {
    let name = target.metadata.name.as_deref().unwrap_or_default();
    let compression = Compression::parse(target.spec.compression.as_deref())?;
    let store: Arc<dyn ObjectStore> = match (&target.spec.s3, &target.spec.filesystem) {
        (Some(s3), _) => {
            let ns = s3.credential_secret.namespace.as_deref().unwrap_or(SECRET_NAMESPACE);
            let sname = &s3.credential_secret.name;
            let secret = Typed::<Secret>::new(api)
                .get(Some(ns), sname)
                .await
                .map_err(|e| format!("cannot read the credentials Secret {ns}/{sname}: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "BackupTarget {name}: the credentials Secret {ns}/{sname} does not exist; create it with \
                         kubectl -n {ns} create secret generic {sname} --from-literal={ACCESS_KEY}=... \
                         --from-literal={SECRET_KEY}=..."
                    )
                })?;
            let field = |k: &str| -> Option<String> {
                secret
                    .data
                    .get(k)
                    .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
                    .or_else(|| secret.string_data.get(k).map(|s| s.trim().to_string()))
                    .filter(|s| !s.is_empty())
            };
            let missing = |k: &str| format!("BackupTarget {name}: the Secret {ns}/{sname} has no {k}");
            let access_key = field(ACCESS_KEY).ok_or_else(|| missing(ACCESS_KEY))?;
            let secret_key = field(SECRET_KEY).ok_or_else(|| missing(SECRET_KEY))?;
            let path_style = match s3.style.as_deref() {
                Some("path") => true,
                Some(_) => false,
                None => s3.endpoint.is_some(),
            };
            let cfg = S3Config {
                endpoint: s3.endpoint.clone(),
                bucket: s3.bucket.clone(),
                region: s3.region.clone().unwrap_or_else(|| DEFAULT_REGION.into()),
                prefix: s3.prefix.clone().unwrap_or_default(),
                path_style,
                access_key,
                secret_key,
                session_token: field(SESSION_TOKEN),
                ca_bundle: s3.ca_bundle.clone(),
            };
            Arc::new(S3Store::new(cfg).map_err(|e| format!("BackupTarget {name}: {e}"))?)
        }
        (None, Some(fs)) => Arc::new(FsStore::new(&fs.path).map_err(|e| format!("BackupTarget {name}: {e}"))?),
        (None, None) => return Err(format!("BackupTarget {name} has neither spec.s3 nor spec.filesystem")),
    };
    Ok(Repository::new(store, compression))
}

/// The BackupTarget called `name` and its repository.
pub async fn open_named(api: &dyn Api, name: &str) -> Result<(BackupTarget, Repository), String> {
    let target = Typed::<BackupTarget>::new(api)
        .get(None, name)
        .await
        .map_err(|e| format!("cannot read BackupTarget {name}: {e}"))?
        .ok_or_else(|| format!("BackupTarget {name} does not exist (kubectl get backuptargets)"))?;
    let repo = open(api, &target).await?;
    Ok((target, repo))
}
