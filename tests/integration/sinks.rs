//! The sink conformance suite (issue #5): every sink against the real service — PostgreSQL on
//! 127.0.0.1:5432, Redis on 127.0.0.1:6379, an S3 endpoint and a webhook receiver started
//! here — checked for the same publication semantics:
//!
//! - a publication reads back whole, holdout rows left out unless the sink asks for them;
//! - publishing the same publication again changes nothing;
//! - a reader polling while a new publication replaces the old one only ever sees one whole
//!   publication, never a mix, an empty or a partial state;
//! - a failure in the middle of publishing leaves the previous publication fully visible;
//! - `forget` removes a profile from the current publication.
//!
//! The crash test kills a real process (`abort()` at a failpoint, as `kill -9` would) in the
//! middle of publishing, then runs the job again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use propensity_sinks::{Publication, Sink, Status};

use crate::support::temp_dir;

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The `postgres` database, where the churn and all-sinks examples publish.
const PG_POSTGRES_DB: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// What a reader sees: profile id → model version (the version marks the publication).
type Seen = BTreeMap<String, String>;

fn publication(
    job: &str,
    tag: &str,
    n: usize,
    state: &Path,
    failpoint: Option<&str>,
) -> Publication {
    let batch =
        propensity_runtime::scores::synthetic(job, tag, n).unwrap_or_else(|e| panic!("{e}"));
    Publication {
        job: job.into(),
        id: format!("20260601T000000Z-{tag}"),
        run_id: format!("run-{tag}"),
        as_of: "2026-06-01T00:00:00Z".into(),
        batch,
        segments: vec!["all".into(), "vip".into()],
        state_dir: state.to_path_buf(),
        failpoint: failpoint.map(str::to_owned),
        fence: None,
    }
}

/// The rows a sink without `include_holdout` publishes for a publication.
fn expected(p: &Publication, include_holdout: bool) -> Seen {
    let rows = p.rows(include_holdout).unwrap_or_else(|e| panic!("{e}"));
    let r = propensity_sinks::ScoreRows::new(&rows).unwrap_or_else(|e| panic!("{e}"));
    (0..r.len())
        .map(|i| {
            (
                r.profile_id.value(i).to_owned(),
                r.model_version.value(i).to_owned(),
            )
        })
        .collect()
}

/// Reads what a sink's consumers see right now.
#[async_trait::async_trait]
trait Reader: Send + Sync {
    async fn read(&self) -> Result<Seen, String>;
}

/// Files: `current.json` → manifest → the file it lists (any object store).
struct FileReader {
    store: Arc<dyn object_store::ObjectStore>,
    prefix: String,
    format: &'static str,
}

#[async_trait::async_trait]
impl Reader for FileReader {
    async fn read(&self) -> Result<Seen, String> {
        use object_store::ObjectStoreExt;
        let get = |p: String| {
            let store = self.store.clone();
            async move {
                store
                    .get(&object_store::path::Path::from(p.as_str()))
                    .await
                    .map_err(|e| format!("{p}: {e}"))?
                    .bytes()
                    .await
                    .map_err(|e| format!("{p}: {e}"))
            }
        };
        let key = |rest: &str| {
            if self.prefix.is_empty() {
                rest.to_owned()
            } else {
                format!("{}/{rest}", self.prefix)
            }
        };
        let pointer: serde_json::Value = match get(key("current.json")).await {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
            Err(e) if e.contains("not found") || e.contains("NotFound") => {
                return Ok(Seen::new());
            }
            Err(e) => return Err(e),
        };
        let manifest: serde_json::Value = serde_json::from_slice(
            &get(key(pointer["manifest"].as_str().unwrap_or_default())).await?,
        )
        .map_err(|e| e.to_string())?;
        let mut seen = Seen::new();
        for f in manifest["files"].as_array().cloned().unwrap_or_default() {
            let bytes = get(key(f["path"].as_str().unwrap_or_default())).await?;
            if f["rows"].as_u64() != manifest["rows"].as_u64() {
                return Err("manifest rows disagree".into());
            }
            match self.format {
                "parquet" => {
                    let reader =
                        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                            bytes,
                        )
                        .and_then(|b| b.build())
                        .map_err(|e| e.to_string())?;
                    for b in reader {
                        let b = b.map_err(|e| e.to_string())?;
                        let r = propensity_sinks::ScoreRows::new(&b).map_err(|e| e.message)?;
                        for i in 0..r.len() {
                            seen.insert(
                                r.profile_id.value(i).to_owned(),
                                r.model_version.value(i).to_owned(),
                            );
                        }
                    }
                }
                "csv" => {
                    let mut r = csv::Reader::from_reader(bytes.as_ref());
                    for rec in r.records() {
                        let rec = rec.map_err(|e| e.to_string())?;
                        seen.insert(rec[0].to_owned(), rec[5].to_owned());
                    }
                }
                _ => {
                    for line in bytes.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                        let v: serde_json::Value =
                            serde_json::from_slice(line).map_err(|e| e.to_string())?;
                        seen.insert(
                            v["profile_id"].as_str().unwrap_or_default().to_owned(),
                            v["model_version"].as_str().unwrap_or_default().to_owned(),
                        );
                    }
                }
            }
        }
        Ok(seen)
    }
}

/// PostgreSQL: one SELECT (one snapshot) of the job's rows.
struct PgReader {
    table: String,
    job: String,
}

#[async_trait::async_trait]
impl Reader for PgReader {
    async fn read(&self) -> Result<Seen, String> {
        let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let rows = match client
            .query(
                &format!(
                    "SELECT profile_id, model_version FROM {} WHERE job = $1",
                    self.table
                ),
                &[&self.job],
            )
            .await
        {
            Ok(r) => r,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                return Ok(Seen::new());
            }
            Err(e) => return Err(e.to_string()),
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Redis: the pointer, then every profile hash of that version.
struct RedisReader {
    prefix: String,
}

#[async_trait::async_trait]
impl Reader for RedisReader {
    async fn read(&self) -> Result<Seen, String> {
        let client = redis::Client::open(REDIS_URL).map_err(|e| e.to_string())?;
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let current: Option<String> = redis::cmd("GET")
            .arg(format!("{}:current", self.prefix))
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        let Some(version) = current else {
            return Ok(Seen::new());
        };
        let base = format!("{}:v:{version}:profile:", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{base}*"))
                .arg("COUNT")
                .arg(5000)
                .query_async(&mut con)
                .await
                .map_err(|e| e.to_string())?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("HGET").arg(k).arg("model_version");
        }
        let versions: Vec<Option<String>> = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        Ok(keys
            .iter()
            .zip(versions)
            .map(|(k, v)| (k[base.len()..].to_owned(), v.unwrap_or_default()))
            .collect())
    }
}

/// The conformance checks shared by every sink.
async fn conformance(name: &str, sink: Arc<dyn Sink>, reader: Arc<dyn Reader>, state: &Path) {
    let kind = sink.kind();
    let holdout = sink.include_holdout();
    let a = publication("conformance", &format!("{name}-a"), 3000, state, None);
    let b = publication("conformance", &format!("{name}-b"), 2000, state, None);

    // Publish A; it reads back whole.
    let r = sink
        .publish(&a)
        .await
        .unwrap_or_else(|e| panic!("{name}: publish A: {e}"));
    assert_eq!(r.status, Status::Published, "{name}");
    let want_a = expected(&a, holdout);
    assert!(
        want_a.len() < 3000 || holdout,
        "{name}: holdout rows are left out"
    );
    assert_eq!(
        reader.read().await.unwrap_or_else(|e| panic!("{e}")),
        want_a,
        "{name}: A"
    );

    // The same publication again changes nothing.
    let r = sink
        .publish(&a)
        .await
        .unwrap_or_else(|e| panic!("{name}: publish A again: {e}"));
    assert_eq!(r.status, Status::Unchanged, "{name}");
    assert_eq!(
        reader.read().await.unwrap_or_else(|e| panic!("{e}")),
        want_a,
        "{name}: A again"
    );

    // A reader polling while B replaces A sees A or B, whole, every time.
    let want_b = expected(&b, holdout);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (reader, stop, want_a, want_b) =
            (reader.clone(), stop.clone(), want_a.clone(), want_b.clone());
        let name = name.to_owned();
        tokio::spawn(async move {
            let (mut saw_a, mut saw_b) = (0, 0);
            loop {
                let done = stop.load(Ordering::SeqCst);
                let seen = reader
                    .read()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: read: {e}"));
                if seen == want_a {
                    saw_a += 1;
                } else if seen == want_b {
                    saw_b += 1;
                } else {
                    let versions: std::collections::BTreeSet<&String> = seen.values().collect();
                    panic!(
                        "{name}: a reader saw {} rows of {versions:?}: neither publication whole",
                        seen.len()
                    );
                }
                if done {
                    return (saw_a, saw_b);
                }
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = sink
        .publish(&b)
        .await
        .unwrap_or_else(|e| panic!("{name}: publish B: {e}"));
    assert_eq!(r.status, Status::Published, "{name}");
    stop.store(true, Ordering::SeqCst);
    let (saw_a, saw_b) = poller
        .await
        .unwrap_or_else(|e| panic!("{name}: poller: {e}"));
    assert!(
        saw_a + saw_b >= 2 && saw_b >= 1,
        "{name}: {saw_a} reads of A, {saw_b} of B"
    );

    // A failure in the middle leaves B fully visible.
    let point = match kind {
        "postgres" => "before_commit",
        "redis" => "before_flip",
        "webhook" => "after_first_batch",
        _ => "before_swap",
    };
    let c = publication(
        "conformance",
        &format!("{name}-c"),
        1500,
        state,
        Some(&format!("{kind}:{point}:error")),
    );
    match sink.publish(&c).await {
        Err(_) => {}
        Ok(p) => assert_eq!(p.status, Status::Failed, "{name}: the failpoint must fail"),
    }
    assert_eq!(
        reader.read().await.unwrap_or_else(|e| panic!("{e}")),
        want_b,
        "{name}: after a failure"
    );

    // Forget one profile of B.
    let gone = want_b.keys().nth(7).cloned().unwrap_or_default();
    let removed = sink
        .forget("conformance", std::slice::from_ref(&gone))
        .await
        .unwrap_or_else(|e| panic!("{name}: forget: {e}"));
    assert_eq!(removed, 1, "{name}");
    let mut want = want_b.clone();
    want.remove(&gone);
    assert_eq!(
        reader.read().await.unwrap_or_else(|e| panic!("{e}")),
        want,
        "{name}: after forget"
    );
}

fn context(dir: &Path, env: Vec<(&'static str, String)>) -> propensity_sinks::Context {
    let env: BTreeMap<&str, String> = env.into_iter().collect();
    propensity_sinks::Context {
        job_dir: dir.to_path_buf(),
        env: Arc::new(move |k| env.get(k).cloned()),
        state_dir: Some(dir.join("state")),
    }
}

/// Builds a sink from a `[[sinks]]` table of a minimal job.
fn sink(dir: &Path, table: &str, env: Vec<(&'static str, String)>) -> Arc<dyn Sink> {
    let text = format!(
        r#"
version = 1
name = "conformance"
[source.events]
uri = "events/*.parquet"
columns = {{ profile_id = "id", timestamp = "ts", event_type = "type" }}
[goal]
type = "conditions"
outcome = "will_occur"
window = "30d"
conditions = [{{ field = "event_type", op = "eq", value = "buy" }}]
[[sinks]]
{table}
"#
    );
    let job = propensity_config::load_str(&text, "conformance.toml").unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    propensity_sinks::build(&job.sinks[0], &context(dir, env)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn file_sinks_conform_on_a_local_disk() {
    let rt = crate::support::runtime();
    for format in ["parquet", "csv", "jsonl"] {
        let dir = temp_dir(&format!("conform-{format}"));
        let out = dir.join("out");
        let s = sink(
            &dir,
            &format!("type = \"{format}\"\nuri = \"out/\""),
            vec![],
        );
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(&out)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let reader = Arc::new(FileReader {
            store,
            prefix: String::new(),
            format: match format {
                "parquet" => "parquet",
                "csv" => "csv",
                _ => "jsonl",
            },
        });
        rt.block_on(conformance(format, s, reader, &dir.join("state")));
        // Superseded publications are kept (for readers mid-read), at most RETAIN of them,
        // and an erasure deletes every publication but the new one.
        let runs: Vec<_> = std::fs::read_dir(out.join("runs"))
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .filter(|e| e.path().join("manifest.json").exists())
            .collect();
        assert_eq!(
            runs.len(),
            1,
            "{format}: after forget only the new publication remains"
        );
    }
}

#[test]
fn the_parquet_sink_conforms_on_s3_with_holdout_rows() {
    let rt = crate::support::runtime();
    let dir = temp_dir("conform-s3");
    let s3 = rt.block_on(crate::support::start_s3("conform-s3-store"));
    std::fs::create_dir_all(s3.root.join("lake")).unwrap_or_else(|e| panic!("{e}"));
    let s = sink(
        &dir,
        "type = \"parquet\"\nuri = \"s3://lake/scores/\"\ninclude_holdout = true\n\
         storage = { endpoint = \"${E}\", region = \"us-east-1\", access_key_id = \"${K}\", \
         secret_access_key = \"${S}\", allow_http = true }",
        vec![
            ("E", s3.endpoint.clone()),
            ("K", s3.key.clone()),
            ("S", s3.secret.clone()),
        ],
    );
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("lake")
        .with_region("us-east-1")
        .with_endpoint(&s3.endpoint)
        .with_access_key_id(&s3.key)
        .with_secret_access_key(&s3.secret)
        .with_allow_http(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let reader = Arc::new(FileReader {
        store: Arc::new(store),
        prefix: "scores".into(),
        format: "parquet",
    });
    rt.block_on(conformance("s3", s, reader, &dir.join("state")));
}

#[test]
fn the_postgres_sink_conforms_in_both_modes() {
    let rt = crate::support::runtime();
    for mode in ["swap", "upsert"] {
        let dir = temp_dir(&format!("conform-pg-{mode}"));
        let schema = format!("conform_{mode}_{}", std::process::id());
        let s = sink(
            &dir,
            &format!(
                "type = \"postgres\"\nurl = \"${{PG}}\"\nschema = \"{schema}\"\ntable = \"scores\"\nmode = \"{mode}\"\ntls = {{ mode = \"disable\" }}"
            ),
            vec![("PG", PG_URL.to_owned())],
        );
        let reader = Arc::new(PgReader {
            table: format!("{schema}.scores"),
            job: "conformance".into(),
        });
        rt.block_on(async {
            conformance(&format!("postgres-{mode}"), s, reader, &dir.join("state")).await;
            // Memberships: one row per (profile, segment), with the holdout flag; none for
            // held-out rows of an activation sink.
            let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(conn);
            let row = client
                .query_one(
                    &format!("SELECT count(*), count(*) FILTER (WHERE segment = 'vip'), count(*) FILTER (WHERE holdout) FROM {schema}.scores_segments WHERE job = 'conformance'"),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let (all, vip, held): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            assert!(all > 0 && vip > 0 && vip < all, "{all} {vip}");
            assert_eq!(held, 0, "an activation sink has no held-out rows");
            client
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        });
    }
}

#[test]
fn the_redis_sink_conforms() {
    let rt = crate::support::runtime();
    let dir = temp_dir("conform-redis");
    let prefix = format!("conform:{}", std::process::id());
    let s = sink(
        &dir,
        &format!(
            "type = \"redis\"\nurl = \"{REDIS_URL}\"\nkey_prefix = \"{prefix}\"\nexpire_after = \"1m\""
        ),
        vec![],
    );
    let reader = Arc::new(RedisReader {
        prefix: prefix.clone(),
    });
    rt.block_on(async {
        conformance("redis", s, reader, &dir.join("state")).await;
        let client = redis::Client::open(REDIS_URL).unwrap_or_else(|e| panic!("{e}"));
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let current: String = redis::cmd("GET")
            .arg(format!("{prefix}:current"))
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{prefix}:v:{current}:segment:vip"))
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!members.is_empty());
        let h: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{prefix}:v:{current}:profile:{}", members[0]))
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for f in [
            "probability",
            "score",
            "percentile",
            "bucket",
            "factors",
            "model_version",
            "score_date",
        ] {
            assert!(h.contains_key(f), "HGETALL lacks {f}: {h:?}");
        }
        cleanup_redis(&mut con, &prefix).await;
    });
}

pub async fn cleanup_redis(con: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(con)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(keys).query_async(con).await;
    }
}

/// A webhook receiver that answers from a script (then 200), optionally slowly, and commits
/// a publication only when its completion event arrives, deduplicating by idempotency key.
#[derive(Default)]
pub struct Receiver {
    pub script: std::sync::Mutex<std::collections::VecDeque<(u16, u64)>>,
    /// Every request: (idempotency key, status answered).
    pub log: std::sync::Mutex<Vec<(String, u16)>>,
    batches: std::sync::Mutex<BTreeMap<String, serde_json::Value>>,
    /// The last whole publication: profile id → model version.
    pub committed: std::sync::Mutex<Seen>,
}

pub async fn start_receiver(r: Arc<Receiver>) -> String {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let r = r.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let (status, delay_ms) = r
                    .script
                    .lock()
                    .map(|mut s| s.pop_front())
                    .ok()
                    .flatten()
                    .unwrap_or((200, 0));
                // Logged on arrival: a client that times out drops the connection, and
                // with it this handler.
                if let Ok(mut l) = r.log.lock() {
                    l.push((key.clone(), status));
                }
                if delay_ms > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                }
                if status == 200 {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("propensity.scores") => {
                            if let Ok(mut b) = r.batches.lock() {
                                b.entry(key).or_insert(v);
                            }
                        }
                        Some("propensity.publication.completed") => {
                            let publication = v["publication"].as_str().unwrap_or_default();
                            let mut seen = Seen::new();
                            if let Ok(b) = r.batches.lock() {
                                for batch in b.values().filter(|b| b["publication"] == publication)
                                {
                                    for p in batch["profiles"].as_array().into_iter().flatten() {
                                        seen.insert(
                                            p["profile_id"].as_str().unwrap_or_default().into(),
                                            p["model_version"].as_str().unwrap_or_default().into(),
                                        );
                                    }
                                }
                            }
                            if let Ok(mut c) = r.committed.lock() {
                                *c = seen;
                            }
                        }
                        Some("propensity.profiles.forgotten") => {
                            if let Ok(mut c) = r.committed.lock() {
                                for id in v["profile_ids"].as_array().into_iter().flatten() {
                                    c.remove(id.as_str().unwrap_or_default());
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let mut h = HeaderMap::new();
                if status == 429 {
                    h.insert("retry-after", axum::http::HeaderValue::from_static("1"));
                }
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    h,
                    "",
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/hook")
}

struct WebhookReader(Arc<Receiver>);

#[async_trait::async_trait]
impl Reader for WebhookReader {
    async fn read(&self) -> Result<Seen, String> {
        self.0
            .committed
            .lock()
            .map(|c| c.clone())
            .map_err(|e| e.to_string())
    }
}

#[test]
fn the_webhook_sink_conforms_through_500_429_and_slow_answers() {
    let rt = crate::support::runtime();
    let dir = temp_dir("conform-webhook");
    let receiver = Arc::new(Receiver::default());
    // 500, then 429 with Retry-After: 1, then an answer slower than the timeout, then 200s.
    if let Ok(mut s) = receiver.script.lock() {
        s.extend([(500, 0), (429, 0), (200, 2500)]);
    }
    let url = rt.block_on(start_receiver(receiver.clone()));
    let s = sink(
        &dir,
        "type = \"webhook\"\nurl = \"${HOOK}\"\nbatch_size = 400\ntimeout = \"2s\"\n\
         initial_backoff = \"1s\"\nmax_backoff = \"2s\"\nretry_budget = \"30s\"",
        vec![("HOOK", url)],
    );
    rt.block_on(conformance(
        "webhook",
        s,
        Arc::new(WebhookReader(receiver.clone())),
        &dir.join("state"),
    ));
    let log = receiver.log.lock().map(|l| l.clone()).unwrap_or_default();
    let first: Vec<u16> = log.iter().take(4).map(|(_, s)| *s).collect();
    assert_eq!(
        first,
        vec![500, 429, 200, 200],
        "the script was answered in order: {log:?}"
    );
    // The slow answer timed out and the batch was sent again with the same key.
    assert_eq!(
        log[2].0, log[3].0,
        "a retry keeps its idempotency key: {log:?}"
    );
}

/// Runs the CLI in this process when started as the child of the crash test (see there).
#[test]
fn crash_child() {
    let Ok(args) = std::env::var("PROPENSITY_CRASH_CHILD_ARGS") else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).unwrap_or_default();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = propensity_cli::run(
        std::iter::once("propensity".into()).chain(args.into_iter().map(Into::into)),
        &mut out,
        &mut err,
    );
    eprintln!("{}", String::from_utf8_lossy(&err));
    if let Ok(path) = std::env::var("PROPENSITY_CRASH_CHILD_OUT") {
        let _ = std::fs::write(path, &out);
    }
    std::process::exit(code);
}

/// `propensity run …` in a child process (this test binary, running [`crash_child`]).
/// Its stdout is what the CLI wrote to its output (not the test harness's lines).
pub fn run_child(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let out_file = std::env::temp_dir().join(format!(
        "propensity-child-{}-{}.out",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        "sinks::crash_child",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(
        "PROPENSITY_CRASH_CHILD_ARGS",
        serde_json::json!(args).to_string(),
    )
    .env("PROPENSITY_CRASH_CHILD_OUT", &out_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut o = cmd.output().unwrap_or_else(|e| panic!("{e}"));
    o.stdout = std::fs::read(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    o
}

pub fn job_with_sinks(dir: &Path, sinks: &str) -> PathBuf {
    let data = crate::support::sample().display().to_string();
    let text = format!(
        r#"
version = 1
name = "crash-test"

[source.events]
uri = "{data}/events/*.parquet"
columns = {{ profile_id = "identityMap.ECID", timestamp = "timestamp", event_type = "eventType" }}

[source.profiles]
uri = "{data}/profiles/*.parquet"
attributes = ["country", "loyalty_tier"]

[goal]
type = "conditions"
outcome = "will_occur"
window = "30d"
conditions = [{{ field = "event_type", op = "eq", value = "commerce.purchases" }}]

[model]
snapshots = 2
min_positives = 20
min_negatives = 20

[[segments]]
name = "best"
where = "percentile >= 80 AND loyalty_tier IN ('gold', 'platinum')"
holdout = 0.2

{sinks}
"#
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

#[test]
fn a_run_killed_mid_publication_leaves_the_previous_one_and_a_rerun_completes() {
    let dir = temp_dir("crash");
    let prefix = format!("crash:{}", std::process::id());
    let schema = format!("crash_{}", std::process::id());
    let job = job_with_sinks(
        &dir,
        &format!(
            "[[sinks]]\ntype = \"parquet\"\nuri = \"out/\"\n\n\
             [[sinks]]\ntype = \"postgres\"\nurl = \"${{PG}}\"\nschema = \"{schema}\"\ntls = {{ mode = \"disable\" }}\n\n\
             [[sinks]]\ntype = \"redis\"\nurl = \"{REDIS_URL}\"\nkey_prefix = \"{prefix}\"\n"
        ),
    );
    let job = job.display().to_string();
    let state = dir.join("state").display().to_string();
    let env = [("PG", PG_URL)];
    let rt = crate::support::runtime();
    let parquet = Arc::new(FileReader {
        store: Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix({
                std::fs::create_dir_all(dir.join("out")).unwrap_or_else(|e| panic!("{e}"));
                dir.join("out")
            })
            .unwrap_or_else(|e| panic!("{e}")),
        ),
        prefix: String::new(),
        format: "parquet",
    });
    let pg = Arc::new(PgReader {
        table: format!("{schema}.profile_scores"),
        job: "crash-test".into(),
    });
    let redis_reader = Arc::new(RedisReader {
        prefix: prefix.clone(),
    });
    let readers: [(&str, Arc<dyn Reader>); 3] = [
        ("parquet", parquet),
        ("postgres", pg),
        ("redis", redis_reader),
    ];
    let read_all = |rt: &tokio::runtime::Runtime| -> Vec<Seen> {
        readers
            .iter()
            .map(|(n, r)| rt.block_on(r.read()).unwrap_or_else(|e| panic!("{n}: {e}")))
            .collect()
    };

    // A first publication, then a run (another day) killed in each sink's critical step.
    let first = run_child(
        &["run", &job, "--state", &state, "--as-of", "2026-05-25"],
        &env,
    );
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = read_all(&rt);
    for (n, seen) in ["parquet", "postgres", "redis"].iter().zip(&before) {
        assert!(seen.len() > 100, "{n}: {} rows", seen.len());
    }
    // Every sink stops right before its commit step (swap, COMMIT, flip): the first one to
    // get there aborts the process while the others are partway through their own writes.
    let killed = run_child(
        &["run", &job, "--state", &state, "--as-of", "2026-06-01"],
        &[
            ("PG", PG_URL),
            (
                "PROPENSITY_FAILPOINT",
                "parquet:before_swap,postgres:before_commit,redis:before_flip",
            ),
        ],
    );
    assert!(!killed.status.success(), "the child must die");
    assert!(
        String::from_utf8_lossy(&killed.stderr).contains("failpoint"),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    assert_eq!(
        read_all(&rt),
        before,
        "the previous publication stays whole in every sink"
    );
    // The re-run publishes everywhere; a second re-run changes nothing.
    let rerun = run_child(
        &["run", &job, "--state", &state, "--as-of", "2026-06-01"],
        &env,
    );
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let after = read_all(&rt);
    assert_ne!(after, before);
    assert_eq!(
        after[0], after[1],
        "parquet and postgres hold the same rows"
    );
    assert_eq!(after[0], after[2], "parquet and redis hold the same rows");
    let again = run_child(
        &[
            "run",
            &job,
            "--state",
            &state,
            "--as-of",
            "2026-06-01",
            "--format",
            "json",
        ],
        &env,
    );
    assert_eq!(again.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap_or_default();
    assert_eq!(
        report["publications"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    for p in report["publications"].as_array().into_iter().flatten() {
        assert_eq!(p["status"], "unchanged", "{p}");
    }
    assert_eq!(read_all(&rt), after);

    // Forget a profile: gone from every sink, and a later run does not bring it back.
    let gone = after[0].keys().next().cloned().unwrap_or_default();
    let forget = run_child(&["forget", &gone, "--state", &state], &env);
    assert_eq!(
        forget.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&forget.stderr)
    );
    for (n, seen) in ["parquet", "postgres", "redis"].iter().zip(read_all(&rt)) {
        assert!(!seen.contains_key(&gone), "{n} still has {gone}");
        assert_eq!(seen.len(), after[0].len() - 1, "{n}");
    }
    let later = run_child(
        &["run", &job, "--state", &state, "--as-of", "2026-06-08"],
        &env,
    );
    assert_eq!(
        later.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&later.stderr)
    );
    for (n, seen) in ["parquet", "postgres", "redis"].iter().zip(read_all(&rt)) {
        assert!(
            !seen.contains_key(&gone),
            "{n}: the forgotten profile came back"
        );
        assert!(seen.len() > 100, "{n}");
    }
    for e in std::fs::read_dir(dir.join("state/jobs/crash-test/runs"))
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let f = e.path().join("scores.parquet");
        if f.exists() {
            let found =
                propensity_runtime::scores::find(&f, &gone).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                found.is_none(),
                "{} still holds the forgotten profile",
                f.display()
            );
        }
    }
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(conn);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await;
        let client = redis::Client::open(REDIS_URL).unwrap_or_else(|e| panic!("{e}"));
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        cleanup_redis(&mut con, &prefix).await;
    });
}

#[test]
fn one_failing_sink_does_not_stop_the_others_and_the_exit_code_says_so() {
    let dir = temp_dir("one-fails");
    let job = job_with_sinks(
        &dir,
        "[[sinks]]\ntype = \"jsonl\"\nname = \"files\"\nuri = \"out/\"\n\n\
         [[sinks]]\ntype = \"postgres\"\nname = \"down\"\nurl = \"postgres://postgres@127.0.0.1:1/test\"\ntls = { mode = \"disable\" }\n",
    );
    let job = job.display().to_string();
    let state = dir.join("state").display().to_string();
    let out = run_child(
        &["run", &job, "--state", &state, "--as-of", "2026-06-01"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "external failure: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("down") && stderr.contains("1 of 2 sinks failed"),
        "stderr: {stderr}\nstdout: {stdout}"
    );
    assert!(stdout.contains("published   files"), "{stdout}");
    assert!(dir.join("out/current.json").exists());
}

/// `jobs/publish-everywhere.toml` (every sink type) and `jobs/conversion-purchase-30d.toml`
/// (Parquet) on generated data, read back the way their consumers read them.
/// An example job from `jobs/`, copied next to its data with `rewrites` applied (local
/// data paths for `../data/demo/`, and the named endpoints of a test), then run through the
/// CLI in a child process. Returns the run's JSON report, after checking that the run
/// succeeded and every sink published.
fn run_example(
    dir: &Path,
    name: &str,
    rewrites: &[(&str, String)],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let data = crate::support::sample().display().to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut text = std::fs::read_to_string(root.join(format!("jobs/{name}.toml")))
        .unwrap_or_else(|e| panic!("{e}"))
        .replace("../data/demo/scores/", "out/")
        .replace("../data/demo/", &format!("{data}/"));
    for (from, to) in rewrites {
        assert!(
            text.contains(from),
            "{name}: `{from}` is not in the job any more"
        );
        text = text.replace(from, to);
    }
    let job = dir.join(format!("{name}.toml"));
    std::fs::write(&job, text).unwrap_or_else(|e| panic!("{e}"));
    let job = job.display().to_string();
    let state = dir.join("state").display().to_string();
    let args = [
        "run",
        &job,
        "--state",
        &state,
        "--as-of",
        "2026-06-01",
        "--format",
        "json",
    ];
    let out = run_child(&args, env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        report["scored"].as_u64().unwrap_or_default() > 100,
        "{name}: {report}"
    );
    let segments = report["segments"].as_array().cloned().unwrap_or_default();
    assert!(!segments.is_empty(), "{name}: segment sizes in the report");
    let publications = report["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!publications.is_empty(), "{name}: {report}");
    for p in &publications {
        assert_eq!(p["status"], "published", "{name}: {p}");
    }
    report
}

fn scored(report: &serde_json::Value) -> usize {
    report["scored"].as_u64().unwrap_or_default() as usize
}

fn segment_size(report: &serde_json::Value, segment: &str) -> i64 {
    report["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == segment)
        .and_then(|s| s["profiles"].as_i64())
        .unwrap_or(-1)
}

/// SQL read-back: the job's rows in `tables.0` and the members of `segment` in `tables.1`
/// (then both tables are dropped).
async fn read_back_postgres(
    url: &str,
    schema: &str,
    tables: (&str, &str),
    job: &str,
    segment: &str,
) -> (i64, i64) {
    let (table, segments) = tables;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    let q = |sql: String| {
        let client = &client;
        async move {
            let row = client
                .query_one(&sql, &[&job])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            row.get::<_, i64>(0)
        }
    };
    let rows = q(format!(
        "SELECT count(*) FROM {schema}.{table} WHERE job = $1 AND probability BETWEEN 0 AND 1"
    ))
    .await;
    let members = q(format!(
        "SELECT count(*) FROM {schema}.{segments} WHERE job = $1 AND segment = '{segment}'"
    ))
    .await;
    drop_tables(url, schema, tables).await;
    (rows, members)
}

async fn clear_redis(prefix: &str) {
    let client = redis::Client::open(REDIS_URL).unwrap_or_else(|e| panic!("{e}"));
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cleanup_redis(&mut con, prefix).await;
}

/// Drops a sink's two tables if they exist (a test starts from nothing, and leaves nothing).
async fn drop_tables(url: &str, schema: &str, (table, segments): (&str, &str)) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {schema}.{table}, {schema}.{segments}"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `HGETALL` read-back: the profiles of the current version under `prefix`, and one
/// profile's hash (then the keys are removed).
async fn read_back_redis(prefix: &str) -> (usize, BTreeMap<String, String>) {
    let client = redis::Client::open(REDIS_URL).unwrap_or_else(|e| panic!("{e}"));
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = RedisReader {
        prefix: prefix.into(),
    }
    .read()
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let version: String = redis::cmd("GET")
        .arg(format!("{prefix}:current"))
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = seen.keys().next().cloned().unwrap_or_default();
    let h: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:v:{version}:profile:{id}"))
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let p: f64 = h
        .get("probability")
        .and_then(|p| p.parse().ok())
        .unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&p), "{h:?}");
    cleanup_redis(&mut con, prefix).await;
    (seen.len(), h)
}

/// The receiver's log: every batch once, then the completion event.
fn read_back_webhook(receiver: &Receiver, rows: usize, batch_size: usize) {
    let committed = receiver
        .committed
        .lock()
        .map(|c| c.len())
        .unwrap_or_default();
    assert_eq!(committed, rows, "webhook profiles");
    let log = receiver.log.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(log.len(), rows.div_ceil(batch_size) + 1, "{log:?}");
    assert!(log.last().is_some_and(|(k, _)| k.ends_with("-completed")));
}

/// A file sink's `current.json` pointer, read through `store` (local or S3).
async fn read_pointer(
    store: &dyn object_store::ObjectStore,
    dir: &str,
) -> (serde_json::Value, Vec<String>) {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let get = |p: String| async move {
        store
            .get(&object_store::path::Path::from(p.as_str()))
            .await
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let pointer: serde_json::Value =
        serde_json::from_slice(&get(format!("{dir}/current.json")).await).unwrap_or_default();
    let listing: Vec<String> = store
        .list(Some(&object_store::path::Path::from(dir)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let manifest = pointer["manifest"].as_str().unwrap_or_default();
    assert!(
        listing.iter().any(|l| l == &format!("{dir}/{manifest}")),
        "{manifest} not in {listing:?}"
    );
    (pointer, listing)
}

#[test]
fn the_publish_everywhere_and_conversion_examples_publish_and_read_back() {
    let dir = temp_dir("examples");
    let rt = crate::support::runtime();
    let receiver = Arc::new(Receiver::default());
    let hook = rt.block_on(start_receiver(receiver.clone()));
    rt.block_on(async {
        drop_tables(
            PG_URL,
            "propensity",
            ("everywhere_scores", "everywhere_scores_segments"),
        )
        .await;
        clear_redis("propensity:everywhere").await;
    });
    let env = [
        ("PROPENSITY_PG_URL", PG_URL),
        ("PROPENSITY_REDIS_URL", REDIS_URL),
        ("PROPENSITY_WEBHOOK_URL", hook.as_str()),
    ];

    let report = run_example(&dir, "conversion-purchase-30d", &[], &env);
    // Object listing: the pointer, the manifest and the file it names.
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.join("out"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (pointer, _) = rt.block_on(read_pointer(&local, "conversion-purchase-30d"));
    let held = held_out_rows(&report);
    assert!(held > 0, "likely-buyers holds out 10 %");
    assert_eq!(
        pointer["rows"].as_u64(),
        Some(scored(&report) as u64 - held)
    );

    let report = run_example(&dir, "publish-everywhere", &[], &env);
    let scored = scored(&report);
    // Files: every row (lake keeps holdout rows), the others without held-out profiles.
    let held = held_out_rows(&report) as usize;
    assert!(held > 0);
    for (sink, rows) in [
        ("parquet", scored),
        ("csv", scored - held),
        ("jsonl", scored - held),
    ] {
        let (pointer, _) = rt.block_on(read_pointer(&local, &format!("publish-everywhere/{sink}")));
        assert_eq!(pointer["rows"].as_u64(), Some(rows as u64), "{sink}");
    }
    let (rows, members) = rt.block_on(read_back_postgres(
        PG_URL,
        "propensity",
        ("everywhere_scores", "everywhere_scores_segments"),
        "publish-everywhere",
        "likely-buyers",
    ));
    assert_eq!(rows as usize, scored - held, "postgres rows");
    assert_eq!(
        members,
        segment_size(&report, "likely-buyers"),
        "likely-buyers memberships"
    );
    let (profiles, _) = rt.block_on(read_back_redis("propensity:everywhere"));
    assert_eq!(profiles, scored - held, "redis profiles");
    read_back_webhook(&receiver, scored - held, 500);
}

/// The role the churn and all-sinks examples connect as (`propensity`, password from
/// `${PG_PASSWORD}`; trust authentication here), allowed to create its schema.
async fn ensure_pg_role() {
    let (client, conn) = tokio_postgres::connect(PG_POSTGRES_DB, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    for sql in [
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'propensity') THEN CREATE ROLE propensity LOGIN; END IF; END $$",
        "GRANT CREATE ON DATABASE postgres TO propensity",
    ] {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// The S3 storage tables of the examples point at `${S3_ENDPOINT}`; the test endpoint is
/// plain HTTP, which has to be allowed explicitly.
fn allow_http() -> (&'static str, String) {
    (
        "endpoint = \"${S3_ENDPOINT}\"\n",
        "endpoint = \"${S3_ENDPOINT}\"\nallow_http = true\n".into(),
    )
}

#[test]
fn the_churn_example_reads_s3_and_publishes_to_postgres_and_redis() {
    let dir = temp_dir("example-churn");
    let rt = crate::support::runtime();
    let s3 = rt.block_on(crate::support::start_s3("example-churn-s3"));
    let data = crate::support::sample();
    rt.block_on(async {
        s3.upload(
            "acme-events",
            &data.join("events"),
            "experience/date=2026-05-31",
        )
        .await;
        s3.upload("acme-profiles", &data.join("profiles"), "customers")
            .await;
        ensure_pg_role().await;
        drop_tables(
            PG_POSTGRES_DB,
            "propensity",
            ("churn_scores", "churn_scores_segments"),
        )
        .await;
        clear_redis("propensity:churn").await;
    });
    let report = run_example(
        &dir,
        "churn-no-purchase-60d",
        &[allow_http()],
        &[
            ("S3_ENDPOINT", &s3.endpoint),
            ("AWS_ACCESS_KEY_ID", &s3.key),
            ("AWS_SECRET_ACCESS_KEY", &s3.secret),
            ("PG_PASSWORD", "unused-with-trust-auth"),
        ],
    );
    // Every event of the three files under the partition folder was read from S3.
    let read = report["data"]["events_read"].as_u64().unwrap_or_default();
    assert!(read > 10_000, "{}", report["data"]);
    let scored = scored(&report);
    let held = held_out_rows(&report) as usize;
    assert!(held > 0, "high-churn-risk holds out 10 %");
    assert!(
        segment_size(&report, "lapsing-subscribers") > 0,
        "{}",
        report["segments"]
    );
    let (rows, members) = rt.block_on(read_back_postgres(
        PG_POSTGRES_DB,
        "propensity",
        ("churn_scores", "churn_scores_segments"),
        "churn-no-purchase-60d",
        "high-churn-risk",
    ));
    assert_eq!(rows as usize, scored - held, "postgres rows");
    assert_eq!(members, segment_size(&report, "high-churn-risk"));
    let (profiles, hash) = rt.block_on(read_back_redis("propensity:churn"));
    assert_eq!(profiles, scored - held, "redis profiles");
    assert!(
        hash.contains_key("factors") && hash.contains_key("bucket"),
        "{hash:?}"
    );
}

#[test]
fn the_all_sinks_reference_publishes_to_every_sink() {
    let dir = temp_dir("example-all-sinks");
    let rt = crate::support::runtime();
    let s3 = rt.block_on(crate::support::start_s3("example-all-sinks-s3"));
    std::fs::create_dir_all(s3.root.join("acme-scores")).unwrap_or_else(|e| panic!("{e}"));
    let receiver = Arc::new(Receiver::default());
    let hook = rt.block_on(start_receiver(receiver.clone()));
    rt.block_on(async {
        ensure_pg_role().await;
        drop_tables(
            PG_POSTGRES_DB,
            "propensity",
            ("newsletter_scores", "newsletter_segments"),
        )
        .await;
        clear_redis("propensity:newsletter").await;
    });
    let exports = dir.join("exports");
    // The reference names remote hosts; the same job runs against the local services.
    let rewrites = [
        allow_http(),
        (
            "file:///var/lib/propensity/exports/",
            format!("file://{}/", exports.display()),
        ),
        (
            "@db.internal.example.com:5432/analytics",
            "@127.0.0.1:5432/postgres".into(),
        ),
        (
            "{ mode = \"verify_full\", ca_file = \"/etc/propensity/db-ca.pem\" }",
            "{ mode = \"prefer\" }".into(),
        ),
        (
            "rediss://:${REDIS_PASSWORD}@cache.internal.example.com:6380/0",
            REDIS_URL.into(),
        ),
        ("https://crm.example.com/hooks/propensity", hook.clone()),
    ];
    let report = run_example(
        &dir,
        "all-sinks",
        &rewrites,
        &[
            ("S3_ENDPOINT", &s3.endpoint),
            ("AWS_ACCESS_KEY_ID", &s3.key),
            ("AWS_SECRET_ACCESS_KEY", &s3.secret),
            ("PG_PASSWORD", "unused-with-trust-auth"),
            ("CRM_TOKEN", "crm-token"),
            ("CRM_API_KEY", "crm-key"),
            ("CRM_WEBHOOK_SECRET", "whsec_c2VjcmV0LXNpZ25pbmcta2V5"),
        ],
    );
    assert_eq!(report["publications"].as_array().map(Vec::len), Some(6));
    let scored = scored(&report);
    let held = held_out_rows(&report) as usize;
    assert!(held > 0, "newsletter-prospects holds out 10 %");
    // Object listings: the lake on S3 keeps holdout rows, the exports do not.
    let lake = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("acme-scores")
        .with_region("eu-central-1")
        .with_endpoint(&s3.endpoint)
        .with_access_key_id(&s3.key)
        .with_secret_access_key(&s3.secret)
        .with_allow_http(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (pointer, _) = rt.block_on(read_pointer(&lake, "propensity/all-sinks"));
    assert_eq!(pointer["rows"].as_u64(), Some(scored as u64));
    let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .unwrap_or_else(|e| panic!("{e}"));
    for export in ["out/all-sinks/csv", "exports/all-sinks"] {
        let (pointer, _) = rt.block_on(read_pointer(&local, export));
        assert_eq!(
            pointer["rows"].as_u64(),
            Some((scored - held) as u64),
            "{export}"
        );
    }
    let (rows, members) = rt.block_on(read_back_postgres(
        PG_POSTGRES_DB,
        "propensity",
        ("newsletter_scores", "newsletter_segments"),
        "all-sinks",
        "newsletter-prospects",
    ));
    assert_eq!(rows as usize, scored - held, "postgres rows");
    assert_eq!(members, segment_size(&report, "newsletter-prospects"));
    let (profiles, _) = rt.block_on(read_back_redis("propensity:newsletter"));
    assert_eq!(profiles, scored - held, "redis profiles");
    read_back_webhook(&receiver, scored - held, 500);
}

/// Profiles held out of any segment, from a run report's per-segment counts (the example
/// jobs hold out of one segment only).
fn held_out_rows(report: &serde_json::Value) -> u64 {
    report["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["holdout"].as_u64().unwrap_or(0))
        .sum()
}
