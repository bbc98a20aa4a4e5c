//! Publishing throughput per sink (`make bench-sinks`): rows per second to publish 1M score
//! rows (`ROWS`), median of `REPS` runs, each sink beside a reference measured in the same
//! run — what the plain client does with the same rows without the publication protocol:
//!
//! - parquet: `ArrowWriter` straight to a local file (no manifest, no pointer);
//! - postgres: one `COPY` of the same rows into an unlogged table (no staging, no swap);
//! - redis: pipelined `HSET`s of the same hashes (no versions, sets or pointer);
//! - webhook: the same JSON batches POSTed one by one (no keys, signatures or outbox).
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (database `test`) and Redis on 127.0.0.1:6379; the
//! webhook receiver runs in process. Prints one JSON document.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use propensity_runtime::scores;
use propensity_sinks::{Publication, ScoreRows, Sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS: &str = "redis://127.0.0.1:6379/0";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A minimal HTTP/1.1 receiver answering 200 to everything (keep-alive).
async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1 << 20);
                let mut chunk = vec![0u8; 1 << 16];
                loop {
                    // Headers.
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + len);
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/hook")
}

fn sink(dir: &Path, table: &str, env: Vec<(&'static str, String)>) -> Arc<dyn Sink> {
    let text = format!(
        "version = 1\nname = \"bench\"\n[source.events]\nuri = \"e/*.parquet\"\n\
         columns = {{ profile_id = \"id\", timestamp = \"ts\", event_type = \"type\" }}\n\
         [goal]\ntype = \"conditions\"\noutcome = \"will_occur\"\nwindow = \"30d\"\n\
         conditions = [{{ field = \"event_type\", op = \"eq\", value = \"buy\" }}]\n\
         [[sinks]]\n{table}\ninclude_holdout = true\n"
    );
    let job = propensity_config::load_str(&text, "bench.toml").expect("bench job");
    let env: std::collections::HashMap<&str, String> = env.into_iter().collect();
    let ctx = propensity_sinks::Context {
        job_dir: dir.to_path_buf(),
        env: Arc::new(move |k| env.get(k).cloned()),
        state_dir: Some(dir.join("state")),
    };
    propensity_sinks::build(&job.sinks[0], &ctx).expect("sink")
}

/// Runs the reference for `kind`; returns the seconds of the work itself (table creation and
/// cleanup are not counted).
async fn reference(kind: &str, batch: &arrow::array::RecordBatch, dir: &Path, hook: &str) -> f64 {
    let r = ScoreRows::new(batch).expect("rows");
    let t = Instant::now();
    match kind {
        "parquet" => {
            let bytes = scores::parquet_bytes(batch).expect("parquet");
            std::fs::write(dir.join("reference.parquet"), bytes).expect("write");
            t.elapsed().as_secs_f64()
        }
        "postgres" => {
            use futures::SinkExt;
            let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
                .await
                .expect("pg");
            tokio::spawn(conn);
            client
                .batch_execute(
                    "DROP TABLE IF EXISTS bench_reference; CREATE UNLOGGED TABLE bench_reference \
                     (profile_id text, probability float8, score int, percentile int, bucket text, \
                      factors jsonb, segments text[], model_version text)",
                )
                .await
                .expect("ddl");
            let t = Instant::now();
            let mut csv = csv::Writer::from_writer(Vec::with_capacity(r.len() * 300));
            for i in 0..r.len() {
                let segs = format!("{{{}}}", r.segments(i).join(","));
                csv.write_record([
                    r.profile_id.value(i).to_owned(),
                    r.probability.value(i).to_string(),
                    r.score.value(i).to_string(),
                    r.percentile.value(i).to_string(),
                    r.bucket.value(i).to_owned(),
                    r.factors(i).to_string(),
                    segs,
                    r.model_version.value(i).to_owned(),
                ])
                .expect("csv");
            }
            let data = csv.into_inner().expect("csv");
            let sink = client
                .copy_in::<_, bytes::Bytes>("COPY bench_reference FROM STDIN (FORMAT csv)")
                .await
                .expect("copy");
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from(data)).await.expect("send");
            sink.finish().await.expect("finish");
            let seconds = t.elapsed().as_secs_f64();
            client
                .batch_execute("DROP TABLE bench_reference")
                .await
                .expect("drop");
            seconds
        }
        "redis" => {
            let client = redis::Client::open(REDIS).expect("redis");
            let mut con = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let t = Instant::now();
            for start in (0..r.len()).step_by(1000) {
                let mut pipe = redis::pipe();
                for i in start..(start + 1000).min(r.len()) {
                    pipe.cmd("HSET")
                        .arg(format!("bench:reference:{}", r.profile_id.value(i)))
                        .arg("probability")
                        .arg(r.probability.value(i))
                        .arg("score")
                        .arg(r.score.value(i))
                        .arg("percentile")
                        .arg(r.percentile.value(i))
                        .arg("bucket")
                        .arg(r.bucket.value(i))
                        .arg("factors")
                        .arg(r.factors(i).to_string())
                        .arg("model_version")
                        .arg(r.model_version.value(i))
                        .ignore();
                }
                let () = pipe.query_async(&mut con).await.expect("hset");
            }
            let seconds = t.elapsed().as_secs_f64();
            for start in (0..r.len()).step_by(10_000) {
                let keys: Vec<String> = (start..(start + 10_000).min(r.len()))
                    .map(|i| format!("bench:reference:{}", r.profile_id.value(i)))
                    .collect();
                let () = redis::cmd("UNLINK")
                    .arg(keys)
                    .query_async(&mut con)
                    .await
                    .expect("unlink");
            }
            seconds
        }
        "webhook" => {
            let client = reqwest::Client::new();
            for start in (0..r.len()).step_by(500) {
                let profiles: Vec<serde_json::Value> = (start..(start + 500).min(r.len()))
                    .map(|i| r.json(i))
                    .collect();
                let body = serde_json::json!({"type": "propensity.scores", "profiles": profiles});
                client
                    .post(hook)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("post");
            }
            t.elapsed().as_secs_f64()
        }
        _ => 0.0,
    }
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("propensity-sink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let hook = receiver().await;
    let schema = format!("bench_{}", std::process::id());
    let prefix = format!("bench:{}", std::process::id());
    let sinks: Vec<(&str, Arc<dyn Sink>)> = vec![
        (
            "parquet",
            sink(&dir, "type = \"parquet\"\nuri = \"parquet/\"", vec![]),
        ),
        ("csv", sink(&dir, "type = \"csv\"\nuri = \"csv/\"", vec![])),
        (
            "jsonl",
            sink(&dir, "type = \"jsonl\"\nuri = \"jsonl/\"", vec![]),
        ),
        (
            "postgres",
            sink(
                &dir,
                &format!(
                    "type = \"postgres\"\nurl = \"${{PG}}\"\nschema = \"{schema}\"\ntls = {{ mode = \"disable\" }}"
                ),
                vec![("PG", PG.to_owned())],
            ),
        ),
        (
            "redis",
            sink(
                &dir,
                &format!(
                    "type = \"redis\"\nurl = \"{REDIS}\"\nkey_prefix = \"{prefix}\"\nexpire_after = \"1m\""
                ),
                vec![],
            ),
        ),
        (
            "webhook",
            sink(
                &dir,
                "type = \"webhook\"\nurl = \"${HOOK}\"\nbatch_size = 500",
                vec![("HOOK", hook.clone())],
            ),
        ),
    ];
    // `SINKS=postgres,redis` measures some of them.
    let only: Option<Vec<String>> = std::env::var("SINKS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let mut results = Vec::new();
    for (kind, s) in &sinks {
        if only.as_ref().is_some_and(|o| !o.iter().any(|k| k == kind)) {
            continue;
        }
        let (mut ours, mut refs) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            // A new publication each time (a re-publication would be a no-op).
            let batch = scores::synthetic("bench", &format!("r{rep}"), rows).expect("rows");
            let p = Publication {
                job: "bench".into(),
                id: format!("20260601T000000Z-bench{rep}"),
                run_id: format!("bench-{rep}"),
                as_of: "2026-06-01T00:00:00Z".into(),
                batch: batch.clone(),
                segments: vec!["all".into(), "vip".into()],
                state_dir: dir.join("state"),
                failpoint: None,
                fence: None,
            };
            let t = Instant::now();
            let out = s.publish(&p).await.expect("publish");
            assert_eq!(out.rows, rows, "{kind}: {out:?}");
            ours.push(rows as f64 / t.elapsed().as_secs_f64());
            if matches!(*kind, "parquet" | "postgres" | "redis" | "webhook") {
                let seconds = reference(kind, &batch, &dir, &hook).await;
                refs.push(rows as f64 / seconds);
            }
            eprintln!(
                "{kind} rep {rep}: {:.0} rows/s (reference {:.0})",
                ours[ours.len() - 1],
                refs.last().copied().unwrap_or(f64::NAN)
            );
        }
        let ours = median(ours);
        let reference = (!refs.is_empty()).then(|| median(refs));
        results.push(serde_json::json!({
            "sink": kind,
            "rows": rows,
            "rows_per_second": ours.round(),
            "reference_rows_per_second": reference.map(f64::round),
            "ratio_to_reference": reference.map(|r| (ours / r * 100.0).round() / 100.0),
        }));
    }
    // Clean up.
    if let Ok((client, conn)) = tokio_postgres::connect(PG, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await;
    }
    if let Ok(client) = redis::Client::open(REDIS)
        && let Ok(mut con) = client.get_multiplexed_async_connection().await
    {
        // SCAN, not KEYS: a million keys take longer than a command timeout.
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut con)
                .await
            else {
                break;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> =
                    redis::cmd("UNLINK").arg(keys).query_async(&mut con).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "rows": rows, "reps": reps, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "results": results,
        }))
        .unwrap_or_default()
    );
}
