//! Where outputs go: a sink's `uri` (a local path, or a `file://`, `s3://`, `gs://`, `az://`
//! URL) becomes an object store and a prefix, with the job's `[storage]` options and `${NAME}`
//! references resolved. The engine opens sources with the same store builder, so a source and
//! a sink on one bucket see the same credentials rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use propensity_core::{Scheme, StorageOptions};
use url::Url;

/// Looks up `${NAME}` references (the process environment in production, a map in tests).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment as an [`EnvLookup`].
pub fn process_env() -> EnvLookup {
    Arc::new(|k| std::env::var(k).ok())
}

/// The scheme of a resolved location: `Path` without `://`.
pub fn scheme_of(text: &str) -> Result<Scheme, String> {
    let Some((s, _)) = text.split_once("://") else {
        return Ok(Scheme::Path);
    };
    Ok(match s {
        "file" => Scheme::File,
        "s3" | "s3a" => Scheme::S3,
        "gs" => Scheme::Gs,
        "az" | "abfs" | "abfss" | "azure" => Scheme::Az,
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("unsupported URL scheme `{other}`")),
    })
}

/// Builds the object store for a URL. Job settings win over the standard environment
/// variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), which are read as the base.
pub fn build_store(
    scheme: Scheme,
    url: &Url,
    storage: &StorageOptions,
    env: &EnvLookup,
) -> Result<Arc<dyn ObjectStore>, String> {
    let mut opts = std::collections::BTreeMap::new();
    for (k, t) in &storage.options {
        let v = t.resolve(|k| env(k)).map_err(|e| format!("{k}: {e}"))?;
        opts.insert(k.as_str(), v);
    }
    let get = |k: &str| opts.get(k).map(|s| s.expose().to_owned());
    let flag = |k: &str| get(k).is_some_and(|v| v == "true");
    let host = url.host_str().unwrap_or_default().to_owned();
    Ok(match scheme {
        Scheme::S3 => {
            use object_store::aws::AmazonS3Builder;
            let mut b = AmazonS3Builder::from_env().with_bucket_name(&host);
            if let Some(v) = get("region") {
                b = b.with_region(v);
            }
            if let Some(v) = get("endpoint") {
                // Custom endpoints (MinIO, emulators) use path-style requests unless told otherwise.
                b = b
                    .with_endpoint(v)
                    .with_virtual_hosted_style_request(flag("virtual_hosted_style"));
            } else if flag("virtual_hosted_style") {
                b = b.with_virtual_hosted_style_request(true);
            }
            if let Some(v) = get("access_key_id") {
                b = b.with_access_key_id(v);
            }
            if let Some(v) = get("secret_access_key") {
                b = b.with_secret_access_key(v);
            }
            if let Some(v) = get("session_token") {
                b = b.with_token(v);
            }
            if flag("allow_http") {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(|e| e.to_string())?)
        }
        Scheme::Gs => {
            use object_store::gcp::GoogleCloudStorageBuilder;
            let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(&host);
            if let Some(v) = get("service_account_key") {
                b = if v.trim_start().starts_with('{') {
                    b.with_service_account_key(v)
                } else {
                    b.with_service_account_path(v)
                };
            }
            Arc::new(b.build().map_err(|e| e.to_string())?)
        }
        Scheme::Az => {
            use object_store::azure::MicrosoftAzureBuilder;
            let mut b = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            if let Some(v) = get("account_name") {
                b = b.with_account(v);
            }
            if let Some(v) = get("account_key") {
                b = b.with_access_key(v);
            }
            if let Some(v) = get("sas_token") {
                let pairs: Vec<(String, String)> =
                    url::form_urlencoded::parse(v.trim_start_matches('?').as_bytes())
                        .into_owned()
                        .collect();
                b = b.with_sas_authorization(pairs);
            }
            if let Some(v) = get("endpoint") {
                b = b.with_endpoint(v);
            }
            if flag("allow_http") {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(|e| e.to_string())?)
        }
        Scheme::Http | Scheme::Https => {
            use object_store::http::HttpBuilder;
            let base = &url[..url::Position::BeforePath];
            let mut client =
                object_store::ClientOptions::new().with_allow_http(scheme == Scheme::Http);
            if let Some(token) = get("bearer_token") {
                let mut headers = http::HeaderMap::new();
                let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| "bearer_token: not a valid header value".to_owned())?;
                headers.insert(http::header::AUTHORIZATION, value);
                client = client.with_default_headers(headers);
            }
            Arc::new(
                HttpBuilder::new()
                    .with_url(base)
                    .with_client_options(client)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        }
        Scheme::Path | Scheme::File | Scheme::FromEnv => {
            return Err("internal: local paths use the default store".into());
        }
    })
}

/// Where an output directory lives: its store, the prefix inside it, and how to show it.
pub struct OutputDir {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: object_store::path::Path,
    pub display: String,
}

impl std::fmt::Debug for OutputDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputDir")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

/// Resolves an output directory (a sink's `uri`): a local path (relative to the job file's
/// directory, created when missing) or a `file://`, `s3://`, `gs://`, `az://` URL, with the
/// same storage options and `${ENV}` rules as sources.
pub fn output_dir(
    location: &propensity_core::Location,
    storage: &StorageOptions,
    job_dir: &Path,
    env: &EnvLookup,
) -> Result<OutputDir, String> {
    let text = location
        .uri
        .resolve(|k| env(k))
        .map_err(|e| format!("uri: {e}"))?;
    let text = text.expose().to_owned();
    let scheme = match location.scheme {
        Scheme::FromEnv => scheme_of(&text)?,
        s => s,
    };
    match scheme {
        Scheme::Path | Scheme::File => {
            let raw = if scheme == Scheme::File {
                Url::parse(&text)
                    .map_err(|e| format!("not a valid URL: {e}"))?
                    .to_file_path()
                    .map_err(|()| "a file:// URL needs an absolute path".to_owned())?
            } else {
                PathBuf::from(&text)
            };
            let joined = if raw.is_absolute() {
                raw
            } else {
                job_dir.join(raw)
            };
            // Absolute and without `.` components, so messages show one clean path.
            let abs = std::path::absolute(&joined).unwrap_or(joined);
            std::fs::create_dir_all(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&abs)
                .map_err(|e| e.to_string())?;
            Ok(OutputDir {
                store: Arc::new(store),
                prefix: object_store::path::Path::default(),
                display: abs.display().to_string(),
            })
        }
        Scheme::Http | Scheme::Https => Err(
            "http(s) URLs are read-only here: write to a path or an s3://, gs://, az:// URL".into(),
        ),
        _ => {
            let url = Url::parse(&text).map_err(|e| format!("not a valid URL: {e}"))?;
            let store = build_store(scheme, &url, storage, env)?;
            let prefix =
                object_store::path::Path::from_url_path(url.path()).map_err(|e| e.to_string())?;
            Ok(OutputDir {
                store,
                prefix,
                // As written: a resolved `${ENV}` value never reaches a message.
                display: location.uri.as_written().to_owned(),
            })
        }
    }
}
