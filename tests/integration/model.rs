//! `propensity run` and `propensity explain` end to end through the command line, on the
//! generated sample data (issue #4): scores for every eligible profile, byte-identical
//! re-runs, the fallback model, the quality gate and the champion, reason codes.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type};

use crate::support::{sample, temp_dir};

const AS_OF: &str = "2026-06-01T00:00:00Z";

/// The sample job with `model` lines, a Parquet sink under `dir/published`, written to
/// `dir/job.toml`.
fn job(dir: &Path, model: &str) -> PathBuf {
    let data = sample().display().to_string();
    let text = format!(
        r#"
version = 1
name = "model-test"
description = "Buyers in the next 30 days <test>"

[source.events]
uri = "{data}/events/*.parquet"
columns = {{ profile_id = "identityMap.ECID", timestamp = "timestamp", event_type = "eventType" }}

[source.profiles]
uri = "{data}/profiles/*.parquet"
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

[features]
lookback = "90d"
windows = ["7d", "30d"]
numeric_fields = ["commerce.order.priceTotal"]

[model]
snapshots = 4
snapshot_stride = "7d"
{model}

[output]
top_factors = 4

[[sinks]]
type = "parquet"
name = "files"
uri = "published/"
"#
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write job: {e}"));
    path
}

struct Cli {
    code: i32,
    out: String,
    err: String,
}

fn cli(args: &[&str]) -> Cli {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut argv = vec!["propensity"];
    argv.extend_from_slice(args);
    let code = propensity_cli::run(argv.iter().map(Into::into), &mut out, &mut err);
    Cli {
        code,
        out: String::from_utf8_lossy(&out).into_owned(),
        err: String::from_utf8_lossy(&err).into_owned(),
    }
}

fn run(job: &Path, state: &Path, extra: &[&str]) -> (Cli, serde_json::Value) {
    run_as_of(job, state, AS_OF, extra)
}

fn run_as_of(job: &Path, state: &Path, as_of: &str, extra: &[&str]) -> (Cli, serde_json::Value) {
    let mut args = vec![
        "run",
        job.to_str().unwrap_or_default(),
        "--as-of",
        as_of,
        "--state",
        state.to_str().unwrap_or_default(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let c = cli(&args);
    assert_eq!(c.code, 0, "run failed:\n{}\n{}", c.out, c.err);
    let report: serde_json::Value =
        serde_json::from_str(&c.out).unwrap_or_else(|e| panic!("report JSON: {e}\n{}", c.out));
    (c, report)
}

fn output(report: &serde_json::Value, kind: &str) -> PathBuf {
    report["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["kind"] == kind))
        .and_then(|o| o["location"].as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no output {kind}: {report}"))
}

fn read(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name(col)
                .unwrap_or_else(|| panic!("no column {col}"))
                .as_string::<i32>()
                .clone();
            (0..a.len()).map(move |i| a.value(i).to_owned())
        })
        .collect()
}

#[test]
fn run_scores_every_eligible_profile_and_a_rerun_gives_identical_files() {
    let dir = temp_dir("model-run");
    let job = job(&dir, "min_positives = 20\nmin_negatives = 20\nseed = 11");
    let state = dir.join("state");
    let (_, first) = run(&job, &state, &["--train"]);
    assert_eq!(first["training"]["status"], "trained_promoted", "{first}");
    assert_eq!(first["confidence"], "normal");
    let auc = first["card"]["metrics"]["auc"].as_f64().unwrap_or(0.0);
    assert!(auc > 0.65, "validation AUC {auc}");
    let scores = output(&first, "scores");
    let batches = read(&scores);
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n as u64, first["scored"].as_u64().unwrap_or(0));
    assert_eq!(n as u64, first["data"]["eligible"].as_u64().unwrap_or(0));
    assert!(n > 300, "{n} profiles scored");
    // Every row carries the run's columns; ids are unique and sorted.
    let ids = strings(&batches, "profile_id");
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let version = first["model_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        strings(&batches, "model_version")
            .iter()
            .all(|v| *v == version)
    );
    assert!(
        strings(&batches, "config_hash")
            .iter()
            .all(|v| v.len() == 16)
    );
    assert!(
        strings(&batches, "confidence")
            .iter()
            .all(|v| v == "normal")
    );
    for b in &batches {
        let p = b
            .column_by_name("probability")
            .map(|c| c.as_primitive::<Float64Type>().clone());
        let pct = b
            .column_by_name("percentile")
            .map(|c| c.as_primitive::<Int32Type>().clone());
        let (Some(p), Some(pct)) = (p, pct) else {
            panic!("probability or percentile missing")
        };
        assert!(p.values().iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(pct.values().iter().all(|v| (1..=100).contains(v)));
        let factors = b
            .column_by_name("factors")
            .map(|c| c.as_list::<i32>().clone());
        let Some(factors) = factors else {
            panic!("factors missing")
        };
        for i in 0..factors.len() {
            assert!(factors.value(i).len() <= 4);
        }
        let with_reasons = (0..factors.len())
            .filter(|&i| !factors.value(i).is_empty())
            .count();
        assert!(
            with_reasons * 10 > factors.len() * 9,
            "most profiles have reasons"
        );
    }
    let buckets = strings(&batches, "bucket");
    let high = buckets.iter().filter(|b| *b == "high").count();
    assert!(
        (n / 5..n * 3 / 10).contains(&high),
        "{high} of {n} high (top quarter)"
    );

    // Same job, same data, same seed, trained again: the same bytes.
    let (_, second) = run(&job, &state, &["--train"]);
    assert_eq!(second["model_version"], first["model_version"]);
    let a = std::fs::read(&scores).unwrap_or_default();
    let b = std::fs::read(output(&second, "scores")).unwrap_or_default();
    assert!(!a.is_empty());
    assert!(
        a == b,
        "re-run with the same seed wrote a different score file"
    );
    // A run that is not due scores with the champion: the same bytes again.
    let (_, third) = run(&job, &state, &[]);
    assert_eq!(third["training"]["status"], "not_due");
    assert!(std::fs::read(output(&third, "scores")).unwrap_or_default() == a);

    // The Parquet sink's pointer names the first run's publication: the later runs had the
    // same rows (the same content-derived publication id) and changed nothing.
    let pointer: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("published/current.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    assert_eq!(pointer["run_id"], first["run_id"]);
    assert_eq!(pointer["publication"], third["publication"]);
    let file = dir
        .join("published")
        .join(pointer["files"][0].as_str().unwrap_or_default());
    assert!(std::fs::read(&file).unwrap_or_default() == a);
    for r in [&second, &third] {
        assert_eq!(
            r["publications"][0]["status"], "unchanged",
            "{}",
            r["publications"]
        );
    }
    assert_eq!(first["publications"][0]["status"], "published");

    // The report: an HTML page with its charts, the card and the JSON report.
    let html = std::fs::read_to_string(output(&first, "report_html")).unwrap_or_default();
    assert!(html.matches("<svg").count() >= 5, "charts in the report");
    assert!(html.contains("&lt;test&gt;") && !html.contains("<test>"));
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output(&first, "model_card")).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(card["model_version"], first["model_version"]);
    for key in [
        "auc",
        "pr_auc",
        "log_loss",
        "brier",
        "expected_calibration_error",
    ] {
        assert!(card["metrics"][key].is_number(), "card lacks {key}");
    }
    assert_eq!(
        card["metrics"]["deciles"].as_array().map(Vec::len),
        Some(10)
    );
    assert!(!card["importance"].as_array().is_none_or(Vec::is_empty));

    // explain: one profile's reasons from the latest run.
    let id = &ids[ids.len() / 2];
    let e = cli(&[
        "explain",
        job.to_str().unwrap_or_default(),
        id,
        "--state",
        state.to_str().unwrap_or_default(),
    ]);
    assert_eq!(e.code, 0, "{}", e.err);
    assert!(
        e.out.contains(id.as_str()) && e.out.contains("percentile"),
        "{}",
        e.out
    );
    assert!(e.out.contains("reasons"), "{}", e.out);
    let missing = cli(&[
        "explain",
        job.to_str().unwrap_or_default(),
        "no-such-profile",
        "--state",
        state.to_str().unwrap_or_default(),
    ]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.err.contains("was not scored") && missing.err.contains("hint"),
        "{}",
        missing.err
    );
}

#[test]
fn too_few_positives_still_score_with_low_confidence_and_say_why() {
    let dir = temp_dir("model-fallback");
    let job = job(&dir, "min_positives = 100000\nmin_negatives = 20");
    let (_, report) = run(&job, &dir.join("state"), &[]);
    assert_eq!(report["confidence"], "low");
    assert_eq!(report["training"]["status"], "fallback");
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("too little data to train"), "{warnings}");
    assert!(warnings.contains("min_positives = 100000"), "{warnings}");
    assert!(
        report["card"]["fallback_reason"]
            .as_str()
            .is_some_and(|r| r.contains("positive"))
    );
    let batches = read(&output(&report, "scores"));
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert!(n > 300);
    assert!(strings(&batches, "confidence").iter().all(|c| c == "low"));
    // The fallback still ranks: many distinct percentiles, and reasons.
    let mut pct: Vec<i32> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("percentile")
                .map(|c| c.as_primitive::<Int32Type>().values().to_vec())
                .unwrap_or_default()
        })
        .collect();
    pct.sort_unstable();
    pct.dedup();
    assert!(pct.len() > 50, "{} distinct percentiles", pct.len());
    // Nothing was promoted.
    assert!(!dir.join("state/jobs/model-test/champion.json").exists());
}

#[test]
fn a_failing_quality_gate_leaves_the_previous_champion_scoring() {
    let dir = temp_dir("model-gate");
    let state = dir.join("state");
    let good = job(
        &dir,
        "min_positives = 20\nmin_negatives = 20\nquality_gate = { min_auc = 0.55 }",
    );
    let (_, first) = run(&good, &state, &[]);
    assert_eq!(first["training"]["status"], "trained_promoted");
    let champion = first["model_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // The same job with a gate no model passes, retrained.
    let strict = job(
        &dir,
        "min_positives = 20\nmin_negatives = 20\nquality_gate = { min_auc = 0.99 }",
    );
    let (_, second) = run(&strict, &state, &["--train"]);
    assert_eq!(second["training"]["status"], "trained_rejected", "{second}");
    let warnings = second["warnings"].to_string();
    assert!(warnings.contains("quality gate failed"), "{warnings}");
    assert!(
        warnings.contains(&format!("the previous champion {champion} keeps scoring")),
        "{warnings}"
    );
    let rejected = second["rejected_card"]["model_version"]
        .as_str()
        .unwrap_or_default();
    assert!(!rejected.is_empty() && rejected != champion);
    assert_eq!(second["rejected_card"]["quality"]["passed"], false);
    // The champion scored, with normal confidence, and is still the champion.
    assert_eq!(second["model_version"], champion.as_str());
    assert_eq!(second["confidence"], "normal");
    let batches = read(&output(&second, "scores"));
    assert!(
        strings(&batches, "model_version")
            .iter()
            .all(|v| *v == champion)
    );
    let pointer: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("jobs/model-test/champion.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    assert_eq!(pointer["version"], champion.as_str());
    // The rejected model is kept for inspection.
    assert!(
        state
            .join(format!("jobs/model-test/models/{rejected}/card.json"))
            .exists()
    );
}

#[test]
fn a_failing_gate_without_a_champion_scores_with_the_fallback_its_card_names() {
    let dir = temp_dir("model-gate-no-champion");
    let strict = job(
        &dir,
        "min_positives = 20\nmin_negatives = 20\nquality_gate = { min_auc = 0.99 }",
    );
    let (_, report) = run(&strict, &dir.join("state"), &[]);
    assert_eq!(report["training"]["status"], "trained_rejected", "{report}");
    assert_eq!(report["confidence"], "low");
    assert_eq!(report["card"]["confidence"], "low");
    // The card names the ranking that scored (the BG/NBD one on this data), not a fixed one.
    let algorithm = report["algorithm"].as_str().unwrap_or_default();
    assert!(algorithm.starts_with("fallback_"), "{algorithm}");
    assert_eq!(report["card"]["algorithm"], algorithm, "{}", report["card"]);
    assert_eq!(report["card"]["calibration"], "none");
    assert!(report["card"]["search"].is_null());
    assert!(
        report["card"]["params"].get("num_leaves").is_none(),
        "{}",
        report["card"]["params"]
    );
    assert_eq!(
        report["card"]["fallback_reason"],
        "no model has passed the quality gate yet"
    );
}

#[test]
fn logistic_and_svm_jobs_train_and_explain() {
    for algorithm in ["logistic", "svm"] {
        let dir = temp_dir(&format!("model-{algorithm}"));
        let job = job(
            &dir,
            &format!(
                "algorithm = \"{algorithm}\"\nmin_positives = 20\nmin_negatives = 20\nquality_gate = {{ min_auc = 0.5 }}"
            ),
        );
        let (_, report) = run(&job, &dir.join("state"), &[]);
        assert_eq!(report["algorithm"], algorithm);
        assert_eq!(report["training"]["status"], "trained_promoted", "{report}");
        let auc = report["card"]["metrics"]["auc"].as_f64().unwrap_or(0.0);
        assert!(auc > 0.6, "{algorithm} AUC {auc}");
        let batches = read(&output(&report, "scores"));
        let with_reasons: usize = batches
            .iter()
            .map(|b| {
                let f = b
                    .column_by_name("factors")
                    .map(|c| c.as_list::<i32>().clone());
                f.map_or(0, |f| {
                    (0..f.len()).filter(|&i| !f.value(i).is_empty()).count()
                })
            })
            .sum();
        assert!(
            with_reasons > 300,
            "{algorithm}: {with_reasons} rows with reasons"
        );
    }
}

#[test]
fn the_parquet_sink_publishes_to_an_s3_url() {
    use object_store::ObjectStoreExt;
    let dir = temp_dir("model-s3");
    let rt = crate::support::runtime();
    let s3 = rt.block_on(crate::support::start_s3("model-s3-store"));
    std::fs::create_dir_all(s3.root.join("scores")).unwrap_or_else(|e| panic!("bucket: {e}"));
    let text = std::fs::read_to_string(job(&dir, "min_positives = 20\nmin_negatives = 20"))
        .unwrap_or_default()
        .replace(
            "uri = \"published/\"",
            "uri = \"s3://scores/propensity/model-test/\"\n\
             storage = { endpoint = \"${E}\", region = \"us-east-1\", access_key_id = \"${K}\", \
             secret_access_key = \"${S}\", allow_http = true }",
        );
    let job = propensity_config::load_str(&text, "job.toml").unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let env: std::collections::HashMap<&str, String> = [
        ("E", s3.endpoint.clone()),
        ("K", s3.key.clone()),
        ("S", s3.secret.clone()),
    ]
    .into_iter()
    .collect();
    let mut opts = propensity_runtime::RunOptions::new(
        chrono::DateTime::parse_from_rfc3339(AS_OF)
            .map(|t| t.to_utc())
            .unwrap_or_default(),
        false,
        dir.join("state"),
    );
    opts.env = std::sync::Arc::new(move |k| env.get(k).cloned());
    let s = propensity_runtime::run(&job, &dir, &opts, &propensity_runtime::Quiet)
        .unwrap_or_else(|e| panic!("{e}"));
    let local = std::fs::read(&s.scores_path).unwrap_or_default();
    // Read back through the S3 API: the pointer, then the file it names.
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("scores")
        .with_region("us-east-1")
        .with_endpoint(&s3.endpoint)
        .with_access_key_id(&s3.key)
        .with_secret_access_key(&s3.secret)
        .with_allow_http(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (pointer, published) = rt.block_on(async {
        let p = store
            .get(&"propensity/model-test/current.json".into())
            .await
            .unwrap_or_else(|e| panic!("pointer: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let p: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
        let file = p["files"][0].as_str().unwrap_or_default().to_owned();
        let b = store
            .get(&format!("propensity/model-test/{file}").into())
            .await
            .unwrap_or_else(|e| panic!("scores: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (p, b)
    });
    assert_eq!(pointer["run_id"], s.report.run_id.as_str());
    assert_eq!(pointer["rows"].as_u64(), Some(s.report.scored as u64));
    assert!(
        published.as_ref() == local.as_slice(),
        "the S3 object differs from the run's file"
    );
}

/// `make demo` runs `propensity demo`: generate, write the embedded job next to the data
/// (paths rewritten), train and score, print the summary and the report path.
#[test]
fn demo_generates_runs_and_points_at_its_report() {
    let dir = temp_dir("model-demo");
    let demo = dir.join("demo");
    let c = cli(&[
        "demo",
        "--dir",
        demo.to_str().unwrap_or_default(),
        "--profiles",
        "2000",
    ]);
    assert_eq!(c.code, 0, "{}\n{}", c.out, c.err);
    for line in ["wrote ", "scored ", "buckets ", "top factors", "report "] {
        assert!(c.out.contains(line), "summary lacks `{line}`:\n{}", c.out);
    }
    let report = c
        .out
        .lines()
        .find_map(|l| l.strip_prefix("report"))
        .map(|p| PathBuf::from(p.trim()))
        .unwrap_or_default();
    let html =
        std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{}: {e}", report.display()));
    assert!(html.matches("<svg").count() >= 5);
    // The job written next to the data reads it from there, and its sink published.
    let job =
        std::fs::read_to_string(demo.join("conversion-purchase-30d.toml")).unwrap_or_default();
    let uris: Vec<&str> = job.lines().filter(|l| l.starts_with("uri = ")).collect();
    assert_eq!(uris.len(), 3, "{uris:?}");
    assert!(uris.iter().all(|u| u.starts_with("uri = \"./")), "{uris:?}");
    assert!(
        demo.join("scores/conversion-purchase-30d/current.json")
            .exists()
    );
}

#[test]
fn a_run_logs_its_stages_inside_a_run_span() {
    let dir = temp_dir("model-tracing");
    let job = job(&dir, "min_positives = 100000\nmin_negatives = 20");
    // The real binary: what an operator sees with `RUST_LOG=info --log-format json`.
    let out = std::process::Command::new(crate::support::exe())
        .args([
            "run",
            job.to_str().unwrap_or_default(),
            "--as-of",
            AS_OF,
            "--state",
        ])
        .arg(dir.join("state"))
        .args(["--format", "json", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .output()
        .expect("propensity run");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}");
    // The progress lines (`stage=… status=…`) are not JSON yet (#20).
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").to_owned();
    let started = lines
        .iter()
        .find(|l| message(l) == "run started")
        .expect(&text);
    assert_eq!(started["span"]["name"], "run");
    assert_eq!(started["span"]["job"], "model-test");
    let run_id = started["span"]["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    // Every stage ends with one event in its own span, inside the run's.
    let stages: Vec<String> = lines
        .iter()
        .filter(|l| message(l) == "stage done")
        .map(|l| {
            assert_eq!(l["spans"][0]["name"], "run", "{l}");
            assert_eq!(l["spans"][0]["run_id"], run_id.as_str(), "{l}");
            assert!(
                l["fields"]["seconds"].as_f64().is_some_and(|s| s >= 0.0),
                "{l}"
            );
            l["span"]["stage"].as_str().expect("stage").to_owned()
        })
        .collect();
    for want in [
        "load", "features", "train", "score", "segment", "write", "publish",
    ] {
        assert!(
            stages.iter().any(|s| s == want),
            "no `{want}` stage in {stages:?}"
        );
    }
    let finished = lines
        .iter()
        .find(|l| message(l) == "run finished")
        .expect(&text);
    assert_eq!(finished["fields"]["training"], "fallback");
    assert_eq!(finished["span"]["run_id"], run_id.as_str());
}

/// The demo job on the demo data, both pinned in time, writes the same score table byte for
/// byte as the build that wrote `tests/data/demo-scores.golden`: a refactor must not change a
/// score, a reason or a segment membership (`make golden` after a deliberate model change).
#[test]
fn the_demo_job_writes_the_golden_scores_byte_for_byte() {
    use sha2::{Digest, Sha256};
    let dir = temp_dir("model-demo-golden");
    let c = cli(&[
        "generate",
        "--out",
        dir.to_str().unwrap_or_default(),
        "--profiles",
        "1500",
        "--days",
        "450",
        "--seed",
        "42",
        "--end",
        AS_OF,
    ]);
    assert_eq!(c.code, 0, "{}\n{}", c.out, c.err);
    let root = propensity_tests::repo_root();
    let text = std::fs::read_to_string(root.join("jobs/conversion-purchase-30d.toml"))
        .unwrap_or_else(|e| panic!("demo job: {e}"))
        .replace("../data/demo/", "./");
    let job = dir.join("conversion-purchase-30d.toml");
    std::fs::write(&job, text).unwrap_or_else(|e| panic!("write job: {e}"));
    let state = dir.join("state");
    let (_, report) = run(&job, &state, &["--train"]);
    let path = output(&report, "scores");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let batches = read(&path);
    let ids = strings(&batches, "profile_id");
    let buckets = strings(&batches, "bucket");
    let mut summary = format!(
        "sha256 {}\nrows {}\nmodel_version {}\ntraining {}\n",
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        ids.len(),
        report["model_version"].as_str().unwrap_or_default(),
        report["training"]["status"].as_str().unwrap_or_default(),
    );
    for (id, b) in ids.iter().zip(&buckets).take(5) {
        summary.push_str(&format!("{id} {b}\n"));
    }
    if let Err(e) = propensity_tests::golden(&root.join("tests/data/demo-scores.golden"), &summary)
    {
        panic!("{e}");
    }
}

/// A run with an older as-of time than the latest published one (what a backfill does)
/// writes its scores to its run directory and sends them to no sink (`stale`), so sinks and
/// `explain` keep the newer scores; `--publish-stale` sends them anyway.
#[test]
fn an_older_run_does_not_roll_the_sinks_back() {
    let dir = temp_dir("model-stale");
    let job = job(&dir, "min_positives = 20\nmin_negatives = 20");
    let state = dir.join("state");
    let (_, newer) = run(&job, &state, &["--train"]);
    assert_eq!(newer["publications"][0]["status"], "published", "{newer}");
    let current = dir.join("published/current.json");
    let pointer = std::fs::read(&current).unwrap_or_else(|e| panic!("{e}"));
    let older = |extra: &[&str]| run_as_of(&job, &state, "2026-05-20T00:00:00Z", extra).1;
    let stale = older(&[]);
    let p = &stale["publications"][0];
    assert_eq!(p["status"], "stale", "{stale}");
    assert!(
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("2026-06-01T00:00:00Z")),
        "{p}"
    );
    assert!(
        stale["warnings"]
            .to_string()
            .contains("publishes to no sink"),
        "{}",
        stale["warnings"]
    );
    // Its scores are written; the sink's current publication and the latest run are not
    // replaced.
    assert!(output(&stale, "scores").exists());
    assert_eq!(std::fs::read(&current).unwrap_or_default(), pointer);
    let latest =
        std::fs::read_to_string(state.join("jobs/model-test/latest_run.json")).unwrap_or_default();
    assert!(latest.contains("2026-06-01T00:00:00Z"), "{latest}");
    // Forced, it publishes.
    let forced = older(&["--publish-stale"]);
    assert_eq!(forced["publications"][0]["status"], "published", "{forced}");
    assert_ne!(std::fs::read(&current).unwrap_or_default(), pointer);
}

/// A daemon's child whose lease passed to another daemon while it ran (the leader paused
/// past its lease) commits to no sink: each sink checks the lease at its commit point (it
/// published over the new leader's run before). With its lease intact it publishes.
#[test]
fn a_run_whose_lease_was_taken_over_commits_to_no_sink() {
    use propensity_daemon::ledger::Ledger;
    use propensity_daemon::runner::{FENCE_LEDGER_ENV, FENCE_TOKEN_ENV};
    let dir = temp_dir("model-fence");
    let job = job(&dir, "min_positives = 20\nmin_negatives = 20");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
    let ledger = state.join("ledger.sqlite");
    let mut l = Ledger::open(&ledger).unwrap_or_else(|e| panic!("{e}"));
    let now = chrono::Utc::now();
    let hour = std::time::Duration::from_secs(3600);
    let old = l.acquire_lease(
        "paused",
        std::time::Duration::from_secs(1),
        now - chrono::TimeDelta::hours(1),
    );
    assert_eq!(old.ok().flatten(), Some(1));
    assert_eq!(
        l.acquire_lease("standby", hour, now).ok().flatten(),
        Some(2)
    );
    let run = |token: &str| {
        std::process::Command::new(crate::support::exe())
            .args([
                "run",
                job.to_str().unwrap_or_default(),
                "--as-of",
                AS_OF,
                "--state",
            ])
            .arg(&state)
            .args(["--format", "json"])
            .env(FENCE_LEDGER_ENV, &ledger)
            .env(FENCE_TOKEN_ENV, token)
            .env_remove("PROPENSITY_FAILPOINT")
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let fenced = run("1");
    assert_eq!(
        fenced.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&fenced.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&fenced.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&fenced.stdout)));
    let p = &report["publications"][0];
    assert_eq!(p["status"], "failed", "{p}");
    assert!(
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("not committed") && m.contains("from fencing token 1 to 2")),
        "{p}"
    );
    assert!(!dir.join("published/current.json").exists());
    // The current holder's run publishes.
    let ok = run("2");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(dir.join("published/current.json").exists());
}

/// The state directory is its owner's alone: models, cards, reports and score tables hold
/// profile ids and model internals, so folders are 0700 and files 0600 (they were 0755 and
/// 0644: any local user could read them).
#[test]
#[cfg(unix)]
fn state_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("model-modes");
    let job = job(&dir, "min_positives = 20\nmin_negatives = 20");
    let state = dir.join("state");
    let _ = run(&job, &state, &["--train"]);
    let mut seen = 0;
    let mut stack = vec![state.join("jobs")];
    while let Some(p) = stack.pop() {
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
            seen += 1;
        }
    }
    assert!(seen >= 5, "{seen} files checked");
}

/// Runs of one job publish one at a time, whoever started them: a run that reaches its
/// publish stage while another process holds the job's publish lock waits (and says so),
/// then publishes once the lock is free.
#[test]
fn a_run_waits_for_another_publisher_of_its_job() {
    use std::io::Read;
    let dir = temp_dir("model-lock");
    let job = job(&dir, "min_positives = 20\nmin_negatives = 20");
    let state = dir.join("state");
    let lock_dir = state.join("jobs/model-test");
    std::fs::create_dir_all(&lock_dir).unwrap_or_else(|e| panic!("{e}"));
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_dir.join("publish.lock"))
        .unwrap_or_else(|e| panic!("{e}"));
    held.lock().unwrap_or_else(|e| panic!("{e}"));
    let err_path = dir.join("run.err");
    let mut child = std::process::Command::new(crate::support::exe())
        .args([
            "run",
            job.to_str().unwrap_or_default(),
            "--as-of",
            AS_OF,
            "--state",
        ])
        .arg(&state)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap_or_else(|e| panic!("{e}")))
        .env_remove("PROPENSITY_FAILPOINT")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let start = std::time::Instant::now();
    loop {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        if err.contains("another process is publishing this job") {
            break;
        }
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the run ended without waiting:\n{err}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !dir.join("published/current.json").exists(),
        "published under the lock"
    );
    assert!(child.try_wait().ok().flatten().is_none());
    drop(held);
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    let mut err = String::new();
    let _ = std::fs::File::open(&err_path).and_then(|mut f| f.read_to_string(&mut err));
    assert!(status.success(), "{err}");
    assert!(dir.join("published/current.json").exists());
}
