//! Shared fixtures for the data tests: generated sample data (made once per process), an
//! S3 endpoint and an HTTP file server started in process on loopback ports, and helpers to
//! load a job and compare feature tables.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use propensity_core::Job;
use propensity_engine::generate::{EventFormat, GenerateOptions};
use propensity_engine::{Engine, EngineError, EngineOptions, Loaded};

/// A fresh directory under the system temp dir, unique to this process and `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("propensity-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    d
}

/// End of the generated data and the as-of time of the tests.
pub fn end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// Sample data: 800 profiles, 200 days, seed 7, Parquet (generated once per process).
pub fn sample() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| generate("sample", EventFormat::Parquet, 7))
}

pub fn generate(name: &str, format: EventFormat, seed: u64) -> PathBuf {
    let dir = temp_dir(name);
    let mut o = GenerateOptions::new(&dir, 800, end());
    o.days = 200;
    o.seed = seed;
    o.format = format;
    // Several files and row groups, so listing and multi-file reads are exercised.
    o.rows_per_file = 20_000;
    o.row_group_size = 5_000;
    propensity_engine::generate::generate(&o).unwrap_or_else(|e| panic!("generate: {e}"));
    dir
}

/// A job over the sample data shape (XDM-like nested events) with the given source lines.
pub fn xdm_job(events_source: &str, profiles_source: &str) -> String {
    format!(
        r#"
version = 1
name = "test-job"

[source.events]
{events_source}
columns = {{ profile_id = "identityMap.ECID", timestamp = "timestamp", event_type = "eventType" }}

[source.profiles]
{profiles_source}
attributes = ["country", "loyalty_tier", "email_opt_in", "signup_date"]

[goal]
type = "conditions"
outcome = "will_occur"
window = "30d"
match = "all"
conditions = [
  {{ field = "event_type", op = "eq", value = "commerce.purchases" }},
  {{ field = "commerce.order.priceTotal", op = "gt", value = 0 }},
]

[eligibility]
active_within = "60d"
exclude_events = "event_type = 'test.ping'"

[features]
lookback = "90d"
windows = ["7d", "30d"]
numeric_fields = ["commerce.order.priceTotal"]
custom_events = {{ cart_add = "event_type = 'commerce.productListAdds'" }}

[model]
snapshots = 3
snapshot_stride = "14d"
min_positives = 10
min_negatives = 10

[[sinks]]
type = "parquet"
uri = "out/"
"#
    )
}

pub fn parse_job(text: &str) -> Job {
    propensity_config::load_str(text, "test.toml").unwrap_or_else(|d| {
        panic!(
            "test job is invalid: {}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

pub fn options(env: &[(&str, String)]) -> EngineOptions {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    EngineOptions {
        memory_limit: 1 << 30,
        spill_dir: None,
        target_partitions: 2,
        now: end() + chrono::Duration::days(1),
        env: Arc::new(move |k| env.get(k).cloned()),
        plugin_dirs: Vec::new(),
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

pub async fn load(
    text: &str,
    dir: &Path,
    env: &[(&str, String)],
    as_of: DateTime<Utc>,
) -> Result<Loaded, EngineError> {
    let job = parse_job(text);
    Engine::new(options(env))?.load(&job, dir, as_of).await
}

/// Every snapshot of a loaded job as comparable rows: cutoff → profile id → (label, feature
/// bits). Independent of the order the profiles were read in.
pub type Table = BTreeMap<i64, BTreeMap<String, (Option<u8>, Vec<u32>)>>;

pub fn feature_table(l: &Loaded) -> (Vec<String>, Table) {
    let spec = &l.features;
    let d = l.dataset().unwrap_or_else(|e| panic!("dataset: {e}"));
    let mut t = Table::new();
    for s in d.training.iter().chain(std::iter::once(&d.scoring)) {
        let rows = t.entry(s.cutoff).or_default();
        for (i, &p) in s.rows.iter().enumerate() {
            let label = s.training.then(|| s.labels[i]);
            rows.insert(
                l.store.profile_ids[p as usize].clone(),
                (label, s.row(i).iter().map(|v| v.to_bits()).collect()),
            );
        }
    }
    (
        spec.catalogue
            .features
            .iter()
            .map(|f| f.name.clone())
            .collect(),
        t,
    )
}

/// Asserts two feature tables are identical, with a readable first difference.
pub fn assert_same(a: &(Vec<String>, Table), b: &(Vec<String>, Table), what: &str) {
    assert_eq!(a.0, b.0, "{what}: feature catalogues differ");
    assert_eq!(
        a.1.keys().collect::<Vec<_>>(),
        b.1.keys().collect::<Vec<_>>(),
        "{what}: cutoffs differ"
    );
    for (c, rows) in &a.1 {
        let other = &b.1[c];
        assert_eq!(
            rows.len(),
            other.len(),
            "{what}: row counts differ at cutoff {c}"
        );
        for (id, v) in rows {
            let w = other
                .get(id)
                .unwrap_or_else(|| panic!("{what}: profile {id} missing at cutoff {c}"));
            if v != w {
                let j = v.1.iter().zip(&w.1).position(|(x, y)| x != y);
                panic!(
                    "{what}: profile {id} differs at cutoff {c}: label {:?} vs {:?}; first feature differing: {:?}",
                    v.0,
                    w.0,
                    j.map(|j| (&a.0[j], f32::from_bits(v.1[j]), f32::from_bits(w.1[j])))
                );
            }
        }
    }
}

/// An S3 endpoint (s3s-fs over a temp directory, real SigV4 checks) on a loopback port.
pub struct S3 {
    pub endpoint: String,
    pub key: String,
    pub secret: String,
    pub root: PathBuf,
}

pub async fn start_s3(name: &str) -> S3 {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    use s3s::auth::SimpleAuth;
    use s3s::service::S3ServiceBuilder;

    let root = temp_dir(name);
    let (key, secret) = (
        "test-access-key".to_owned(),
        "test-secret-key-0123456789".to_owned(),
    );
    let fs = s3s_fs::FileSystem::new(&root).unwrap_or_else(|e| panic!("s3s-fs: {e:?}"));
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single(key.clone(), secret.clone()));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr: SocketAddr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    S3 {
        endpoint: format!("http://{addr}"),
        key,
        secret,
        root,
    }
}

impl S3 {
    /// Uploads every file under `dir` to `bucket/prefix/…` through the S3 API.
    pub async fn upload(&self, bucket: &str, dir: &Path, prefix: &str) {
        use object_store::{ObjectStoreExt, PutPayload};
        std::fs::create_dir_all(self.root.join(bucket))
            .unwrap_or_else(|e| panic!("bucket dir: {e}"));
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_endpoint(&self.endpoint)
            .with_access_key_id(&self.key)
            .with_secret_access_key(&self.secret)
            .with_allow_http(true)
            .build()
            .unwrap_or_else(|e| panic!("s3 client: {e}"));
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if !path.is_file() {
                continue;
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
            store
                .put(
                    &object_store::path::Path::from(format!("{prefix}/{name}")),
                    PutPayload::from(bytes),
                )
                .await
                .unwrap_or_else(|e| panic!("upload {name}: {e}"));
        }
    }
}

/// A static file server over `dir` (HEAD, GET and Range requests) on a loopback port.
pub async fn start_http(dir: &Path) -> String {
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// The `propensity` binary `make test` builds (`--all-targets`) before the tests run.
pub fn exe() -> PathBuf {
    let p = propensity_tests::repo_root().join("target/debug/propensity");
    assert!(
        p.exists(),
        "{} is missing: `make test` builds it (cargo build) before the tests",
        p.display()
    );
    p
}
