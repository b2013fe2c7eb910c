//! Where finished files go, behind one small trait: Google Cloud Storage (JSON API, works with
//! fake-gcs-server) or a local directory.
//!
//! Both make an object visible only once it is complete: a GCS upload creates the object when
//! the request finishes (a failed upload leaves nothing); the local store writes a hidden
//! temporary file (`.NAME.tmp-PID-N`, ignored by Hive-style readers and `*.parquet` globs),
//! syncs it and links it into place.
//!
//! Both create an object only when none of that name exists (GCS: `ifGenerationMatch=0`, 412
//! otherwise; local: a hard link, which fails when the name is taken), and report
//! [`StoreError::AlreadyExists`] when one does. An object name says what the object holds
//! (topic, partition, hour, offset range) and the sink's ranges are the same whoever makes
//! them (see `ledger`), so an existing object of that name is the same data: a retry whose
//! first attempt did land, an earlier run that died before committing, or a member that lost
//! the partition mid-upload. The sink counts it as stored; no writer can overwrite another's
//! object. Listing is kept for tools and tests; the sink does not list.

use bytes::Bytes;
use gcloud_storage::client::google_cloud_auth::credentials::CredentialsFile;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A GCS request failed.
    #[error("GCS {op} of gs://{bucket}/{object} failed: {source}")]
    Gcs {
        /// `upload` or `list`.
        op: &'static str,
        /// Bucket.
        bucket: String,
        /// Object name or listed prefix.
        object: String,
        /// Cause.
        source: gcloud_storage::http::Error,
    },
    /// A GCS request did not finish in time.
    #[error("GCS {op} of gs://{bucket}/{object} timed out after {timeout:?}")]
    Timeout {
        /// `upload` or `list`.
        op: &'static str,
        /// Bucket.
        bucket: String,
        /// Object name or listed prefix.
        object: String,
        /// The limit.
        timeout: Duration,
    },
    /// Credentials could not be loaded.
    #[error("GCS credentials ({what}) could not be loaded: {source}")]
    Auth {
        /// Which credentials.
        what: String,
        /// Cause.
        source: gcloud_storage::client::google_cloud_auth::error::Error,
    },
    /// The object exists already (create-only precondition: GCS 412, or the local name is
    /// taken). Not retried: the sink counts the object as stored.
    #[error("{url} exists already (create-only upload refused)")]
    AlreadyExists {
        /// Object URL.
        url: String,
    },
    /// A local file operation failed.
    #[error("{op} {path} failed: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether retrying may help: transport errors, timeouts, HTTP 408, 429 and 5xx, local I/O.
    /// Other HTTP errors (403 forbidden, 404 no such bucket), bad credentials and an object
    /// that exists already are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Gcs { source, .. } => {
                http_status(source).is_none_or(|c| c == 408 || c == 429 || c >= 500)
            }
            StoreError::Timeout { .. } | StoreError::Io { .. } => true,
            StoreError::Auth { .. } | StoreError::AlreadyExists { .. } => false,
        }
    }
}

/// The HTTP status of a GCS error, when the server answered.
fn http_status(e: &gcloud_storage::http::Error) -> Option<u16> {
    use gcloud_storage::http::Error as E;
    match e {
        E::Response(r) => Some(r.code),
        E::HttpClient(e) | E::RawResponse(e, _) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

/// An object store.
pub trait ObjectStore: Send + Sync {
    /// Creates object `name` with `data` unless an object of that name exists; the object is
    /// visible only once whole.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when `name` exists (nothing is written); another
    /// [`StoreError`] when the write fails (nothing is visible then).
    fn put(&self, name: &str, data: Bytes) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Names of the objects starting with `prefix`, sorted.
    ///
    /// # Errors
    /// [`StoreError`] when listing fails.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// A URL naming `name` for logs (`gs://bucket/name` or `file:///…`).
    fn url(&self, name: &str) -> String;
}

/// Google Cloud Storage through the JSON API.
pub struct GcsStore {
    client: Client,
    bucket: String,
    timeout: Duration,
}

/// How to reach GCS.
#[derive(Debug, Clone, Default)]
pub struct GcsConfig {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint override, e.g. `http://127.0.0.1:4443` for fake-gcs-server.
    pub endpoint: Option<String>,
    /// Service-account JSON key file; `None` = application default credentials (workload
    /// identity, metadata server), or anonymous when an endpoint is set.
    pub credentials: Option<PathBuf>,
    /// Per-request time limit.
    pub timeout: Duration,
}

impl GcsStore {
    /// Builds the client (reads the credentials file or asks the metadata server for tokens).
    ///
    /// # Errors
    /// [`StoreError::Auth`] when the credentials cannot be loaded.
    pub async fn connect(cfg: &GcsConfig) -> Result<Self, StoreError> {
        // reqwest is built without a default rustls provider: install ring's (once).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let auth = |what: String| move |source| StoreError::Auth { what, source };
        let base = ClientConfig::default();
        let mut config = match (&cfg.credentials, &cfg.endpoint) {
            (Some(path), _) => {
                let what = path.display().to_string();
                let file = CredentialsFile::new_from_file(what.clone())
                    .await
                    .map_err(auth(what.clone()))?;
                base.with_credentials(file).await.map_err(auth(what))?
            }
            (None, Some(_)) => base.anonymous(),
            (None, None) => base
                .with_auth()
                .await
                .map_err(auth("application default credentials".into()))?,
        };
        if let Some(e) = &cfg.endpoint {
            config.storage_endpoint = e.trim_end_matches('/').to_owned();
        }
        Ok(Self {
            client: Client::new(config),
            bucket: cfg.bucket.clone(),
            timeout: cfg.timeout,
        })
    }

    fn err(
        &self,
        op: &'static str,
        object: &str,
    ) -> impl FnOnce(gcloud_storage::http::Error) -> StoreError {
        let (bucket, object) = (self.bucket.clone(), object.to_owned());
        move |source| StoreError::Gcs {
            op,
            bucket,
            object,
            source,
        }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        object: &str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout {
                op,
                bucket: self.bucket.clone(),
                object: object.to_owned(),
                timeout: self.timeout,
            }),
        }
    }
}

impl ObjectStore for GcsStore {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StoreError> {
        self.timed("upload", name, async {
            // A multipart upload (metadata + media in one request) carries the precondition on
            // GCS and on fake-gcs-server alike (v1.54 ignores it on simple media uploads).
            let object = Object {
                name: name.to_owned(),
                content_type: Some("application/vnd.apache.parquet".into()),
                ..Default::default()
            };
            let req = UploadObjectRequest {
                bucket: self.bucket.clone(),
                if_generation_match: Some(0),
                ..Default::default()
            };
            match self
                .client
                .upload_object(&req, data, &UploadType::Multipart(Box::new(object)))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if http_status(&e) == Some(412) => Err(StoreError::AlreadyExists {
                    url: self.url(name),
                }),
                Err(e) => Err(self.err("upload", name)(e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.timed("list", prefix, async {
            let mut out = Vec::new();
            let mut page_token = None;
            loop {
                let req = ListObjectsRequest {
                    bucket: self.bucket.clone(),
                    prefix: Some(prefix.to_owned()),
                    page_token: page_token.take(),
                    ..Default::default()
                };
                let resp = self
                    .client
                    .list_objects(&req)
                    .await
                    .map_err(self.err("list", prefix))?;
                out.extend(resp.items.unwrap_or_default().into_iter().map(|o| o.name));
                match resp.next_page_token {
                    Some(t) if !t.is_empty() => page_token = Some(t),
                    _ => break,
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    fn url(&self, name: &str) -> String {
        format!("gs://{}/{name}", self.bucket)
    }
}

/// A local directory (the embedded default and the demo).
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

impl ObjectStore for LocalStore {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StoreError> {
        use std::io::Write as _;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.root.join(name);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&dir).map_err(io("creating directory", &dir))?;
        if path.exists() {
            return Err(StoreError::AlreadyExists {
                url: self.url(name),
            });
        }
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{file}.tmp-{}-{seq}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        let written = f
            .write_all(&data)
            .and_then(|()| f.sync_all())
            .map_err(io("writing", &tmp));
        drop(f);
        // A hard link creates the name only if it is free (unlike rename, which replaces).
        let linked = written.and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StoreError::AlreadyExists {
                    url: self.url(name),
                })
            }
            Err(e) => Err(io("linking into place", &path)(e)),
        });
        let _ = std::fs::remove_file(&tmp);
        linked?;
        // Make the new name durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // Object names use '/' as the directory separator: list the prefix's directory and
        // filter its entries by the rest.
        let (dir, file_prefix) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let path = self.root.join(dir);
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &path)(e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io("listing", &path))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(file_prefix) && !name.starts_with('.') {
                out.push(if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                });
            }
        }
        out.sort();
        Ok(out)
    }

    fn url(&self, name: &str) -> String {
        format!("file://{}", self.root.join(name).display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_put_is_atomic_and_listable() {
        let root = std::env::temp_dir().join(format!("sf-sink-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let s = LocalStore::new(&root);
        assert!(s.list("a/b/x").await.unwrap().is_empty());
        s.put("a/b/x-1.parquet", Bytes::from_static(b"one"))
            .await
            .unwrap();
        s.put("a/b/x-2.parquet", Bytes::from_static(b"two"))
            .await
            .unwrap();
        s.put("a/b/y-1.parquet", Bytes::from_static(b"y"))
            .await
            .unwrap();
        // Create-only: a second writer of the same name is refused and changes nothing.
        let e = s
            .put("a/b/x-1.parquet", Bytes::from_static(b"again"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
        assert!(!e.is_transient());
        assert_eq!(
            s.list("a/b/x-").await.unwrap(),
            vec!["a/b/x-1.parquet", "a/b/x-2.parquet"]
        );
        assert_eq!(std::fs::read(root.join("a/b/x-1.parquet")).unwrap(), b"one");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(root.join("a/b")).unwrap().count(), 3);
        let _ = std::fs::remove_dir_all(&root);
    }
}
