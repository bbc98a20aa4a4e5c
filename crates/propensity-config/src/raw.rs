//! The job file as written (format version 1). These types are the single source of the
//! JSON Schema and of the structural checks: a key or value they do not accept is an error.
//! Values that need more than a type check (durations, cron, URLs, secrets) are strings here
//! and are checked by [`crate::validate`].

use std::collections::BTreeMap;

use propensity_core::enums::*;
use schemars::JsonSchema;
use serde::Deserialize;

/// A Propensity job file: one prediction, from events to published scores.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Propensity job file (version 1)")]
pub struct RawJob {
    /// Job-file format version. This build reads `1`.
    pub version: u32,
    /// Job name: lower-case letters, digits, `-` and `_`; unique among the daemon's jobs.
    pub name: String,
    /// What is predicted, in a sentence.
    #[serde(default)]
    pub description: Option<String>,
    /// Where the events (and optional profile attributes) come from.
    pub source: RawSources,
    /// What is predicted.
    pub goal: RawGoal,
    /// Who is scored.
    #[serde(default)]
    pub eligibility: Option<RawEligibility>,
    /// Point-in-time features computed from the events.
    #[serde(default)]
    pub features: Option<RawFeatures>,
    /// Training protocol and model family.
    #[serde(default)]
    pub model: Option<RawModel>,
    /// Reason codes and score buckets.
    #[serde(default)]
    pub output: Option<RawOutput>,
    /// When the daemon scores and retrains. Without it the job runs only when asked.
    #[serde(default)]
    pub schedule: Option<RawSchedule>,
    /// Named rules over the score table.
    #[serde(default)]
    pub segments: Vec<RawSegment>,
    /// Where score rows and segment memberships are published. At least one.
    pub sinks: Vec<RawSink>,
    /// Which engine computes features: in process (default) or a Ballista cluster.
    #[serde(default)]
    pub engine: Option<RawEngine>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSources {
    /// Experience events, one row per event.
    pub events: RawEventSource,
    /// Profile attributes, one row per profile, joined on the profile id.
    #[serde(default)]
    pub profiles: Option<RawProfileSource>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEventSource {
    /// A path or glob (relative to the job file), or a `file://`, `s3://`, `gs://`, `az://`,
    /// `http://` or `https://` URL. May reference `${ENV}` variables.
    pub uri: String,
    /// `parquet`, `csv` or `ndjson`; inferred from the file extension when omitted.
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// Which fields hold the profile id, the timestamp and the event type. Nested paths like
    /// `identityMap.ECID` are allowed. Each defaults to its own name.
    #[serde(default)]
    pub columns: Option<RawEventColumns>,
    /// How timestamps are encoded (default `auto`).
    #[serde(default)]
    pub timestamp_format: Option<TimestampFormat>,
    /// Object-store settings for this source.
    #[serde(default)]
    pub storage: Option<RawStorage>,
    /// Largest fraction of events that may be set aside as invalid (null or unparseable id,
    /// timestamp or event type; events in the future) or of values that may fail to convert
    /// to the type a field needs, before the run fails (default 0.05).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_invalid_fraction: Option<f64>,
    /// Count events identical in every field the job reads (profile, time, type, numeric
    /// fields, fields a goal plugin reads) once (default false: every row is an event; two
    /// orders of one customer on one day are two orders, even when only the date is stored).
    /// Turn it on for exports that overlap.
    #[serde(default)]
    pub dedupe: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEventColumns {
    #[serde(default)]
    pub profile_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProfileSource {
    /// Same forms as `source.events.uri`.
    pub uri: String,
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// The field holding the profile id (default `profile_id`).
    #[serde(default)]
    pub profile_id: Option<String>,
    /// Attributes used as features and in segment rules; all columns when omitted.
    #[serde(default)]
    pub attributes: Option<Vec<String>>,
    #[serde(default)]
    pub storage: Option<RawStorage>,
}

/// Object-store settings. Credentials must be `${ENV}` references, never literal values.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Custom endpoint (S3-compatible stores, emulators).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// S3 access key id, as `${ENV}`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret access key, as `${ENV}`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// S3 session token, as `${ENV}`.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Allow plain `http://` endpoints.
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// S3 virtual-hosted-style requests (default path style for custom endpoints).
    #[serde(default)]
    pub virtual_hosted_style: Option<bool>,
    /// Google service-account key (JSON text or a path), as `${ENV}`.
    #[serde(default)]
    pub service_account_key: Option<String>,
    /// Azure storage account name.
    #[serde(default)]
    pub account_name: Option<String>,
    /// Azure storage account key, as `${ENV}`.
    #[serde(default)]
    pub account_key: Option<String>,
    /// Azure SAS token, as `${ENV}`.
    #[serde(default)]
    pub sas_token: Option<String>,
    /// Bearer token for `http(s)://` sources, as `${ENV}`.
    #[serde(default)]
    pub bearer_token: Option<String>,
}

/// The goal: a built-in `conditions` goal or a goal plugin.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawGoal {
    /// Conditions over event fields, within an outcome window.
    Conditions(RawConditionsGoal),
    /// A goal type provided by a plugin library.
    Plugin(RawPluginGoal),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConditionsGoal {
    /// `will_occur` (conversion) or `will_not_occur` (churn).
    pub outcome: GoalOutcome,
    /// Outcome window after the as-of time, e.g. `30d`.
    pub window: String,
    /// `any` (default): an event meeting any condition counts; `all`: it must meet all.
    #[serde(default, rename = "match")]
    pub match_: Option<Match>,
    /// Matching events needed within the window (default 1).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub min_count: Option<u32>,
    /// At least one condition.
    pub conditions: Vec<RawCondition>,
}

/// `{ field = "event_type", op = "eq", value = "purchase" }`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// An event field; nested paths like `commerce.order.priceTotal` allowed.
    pub field: String,
    /// eq, ne, gt, ge, lt, le, in, not_in, contains, exists.
    pub op: Op,
    /// A string, number or boolean; an array for `in`/`not_in`; for `exists`, optional
    /// `true` (default) or `false`.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPluginGoal {
    /// The plugin's name (found in the plugin directories) or a path to its library.
    pub plugin: String,
    /// SHA-256 of the library, 64 hex digits; a library with another hash is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Outcome window after the as-of time, e.g. `30d`.
    pub window: String,
    /// Parameters passed to the plugin, which validates them.
    #[serde(default)]
    pub params: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEligibility {
    /// Only profiles with an event within this span before the as-of time (default `90d`).
    #[serde(default)]
    pub active_within: Option<String>,
    /// Only profiles matching this predicate over profile attributes.
    #[serde(default)]
    pub include: Option<String>,
    /// No profile matching this predicate over profile attributes.
    #[serde(default)]
    pub exclude: Option<String>,
    /// Events matching this predicate are dropped before anything else.
    #[serde(default)]
    pub exclude_events: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFeatures {
    /// How far back features look from each cutoff: a duration, or `all` (the default) for
    /// every event before the cutoff.
    #[serde(default)]
    pub lookback: Option<String>,
    /// Windows for counts and sums (default `["7d", "30d", "90d"]`).
    #[serde(default)]
    pub windows: Option<Vec<String>>,
    /// Per-type features for this many of the most frequent event types (default 10).
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub top_event_types: Option<u32>,
    /// Numeric event fields to sum, average and take the maximum of (e.g. order value).
    /// Default: the events' top-level numeric columns (at most 8) other than the mapped ones;
    /// `[]` for none.
    #[serde(default)]
    pub numeric_fields: Option<Vec<String>>,
    /// Named events defined by predicates, counted like event types.
    #[serde(default)]
    pub custom_events: Option<BTreeMap<String, String>>,
    /// Feature names never used (leakage control).
    #[serde(default)]
    pub exclude: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// `gbdt` (default), `logistic` or `svm`.
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// Training cutoffs stacked into one training set (default 4). The model that scores
    /// trains on the newest of them; the candidates judged on the validation cutoff train on
    /// as many cutoffs one outcome window older (see the model card's `protocol`).
    #[serde(default)]
    #[schemars(range(min = 1, max = 52))]
    pub snapshots: Option<u32>,
    /// Time between training cutoffs (default: a third of the outcome window, 1 to 30 days).
    #[serde(default)]
    pub snapshot_stride: Option<String>,
    /// Below this many positives the job falls back to a simple ranking model (default 200).
    #[serde(default)]
    pub min_positives: Option<u32>,
    /// Below this many negatives the job falls back to a simple ranking model (default 200).
    #[serde(default)]
    pub min_negatives: Option<u32>,
    /// Random seed; the same inputs and seed give the same scores (default 42).
    #[serde(default)]
    pub seed: Option<u64>,
    /// `auto` (default: for trees boosted from the buy-till-you-die forecast, their level
    /// kept and their spread fitted on the validation cutoff; isotonic otherwise),
    /// `isotonic`, `platt` or `none`.
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// A model below these figures is kept for inspection but not promoted.
    #[serde(default)]
    pub quality_gate: Option<RawQualityGate>,
    /// Gradient-boosting settings. A key set here is used as is; one left out is chosen by
    /// the capacity search.
    #[serde(default)]
    pub gbdt: Option<RawGbdt>,
    /// The capacity search: tree size, leaf size and learning rate chosen on the
    /// out-of-time validation cutoff.
    #[serde(default)]
    pub search: Option<RawSearch>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSearch {
    /// Wall-time budget of the search, e.g. `10m` (the default), or `off` for the default
    /// settings without a search. When the budget runs out, the best candidate so far wins.
    #[serde(default)]
    pub budget: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQualityGate {
    /// Minimum validation AUC (default 0.65).
    #[serde(default)]
    #[schemars(range(min = 0.5, max = 1.0))]
    pub min_auc: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGbdt {
    /// The most trees grown (default 1000); early stopping keeps fewer.
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub num_trees: Option<u32>,
    /// Shrinkage per tree, (0, 1] (searched; 0.05 without a search).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Depth limit (default: a little deeper than the number of leaves needs, at least 6).
    #[serde(default)]
    #[schemars(range(min = 1, max = 16))]
    pub max_depth: Option<u32>,
    /// Leaves per tree (searched; 31 without a search).
    #[serde(default)]
    #[schemars(range(min = 2, max = 4096))]
    pub num_leaves: Option<u32>,
    /// Fewest training rows in a leaf (searched; 20 without a search).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub min_data_in_leaf: Option<u32>,
    /// Stop when the validation loss has not improved for this many trees (default 30).
    #[serde(default)]
    pub early_stopping_rounds: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    /// Reason codes kept per profile (default 5).
    #[serde(default)]
    #[schemars(range(max = 50))]
    pub top_factors: Option<u32>,
    /// Percentile thresholds of the buckets (default `{ high = 75, medium = 25 }`).
    #[serde(default)]
    pub buckets: Option<RawBuckets>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBuckets {
    /// Percentile at or above which a profile is `high`.
    #[schemars(range(min = 1, max = 100))]
    pub high: u32,
    /// Percentile at or above which a profile is `medium`.
    #[schemars(range(min = 1, max = 100))]
    pub medium: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// Cron expression for scoring runs: 6 fields (`sec min hour day month weekday`), 7 with a
    /// year, or classic 5-field crontab (seconds taken as 0).
    pub score: String,
    /// Cron expression for retraining runs; without it a model is trained when none exists
    /// or on `propensity run --train`.
    #[serde(default)]
    pub train: Option<String>,
    /// IANA time zone the cron expressions are read in (default `UTC`). A time in a DST gap
    /// runs once, when the clock jumps; a time in a fold runs once, at its first occurrence.
    #[serde(default)]
    pub timezone: Option<String>,
    /// `skip` (default), `buffer_one` or `cancel_previous`.
    #[serde(default)]
    pub overlap: Option<Overlap>,
    /// `none`, `latest` (default) or `all`.
    #[serde(default)]
    pub catchup: Option<Catchup>,
    /// With `catchup = "all"`: at most this many missed runs are run (default 10).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub catchup_limit: Option<u32>,
    /// Retries of a failed run.
    #[serde(default)]
    pub retries: Option<RawRetries>,
    /// A run still going after this long is stopped and recorded as `timed_out`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Resident memory a daemon run may use (e.g. `8GiB`); a run above it is stopped and
    /// recorded as `crashed`. Default: no limit. Keep `engine.memory_limit` below it.
    #[serde(default)]
    pub max_memory: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Attempts in all, the first included (default 3).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<u32>,
    /// Wait before the first retry, doubled each time (default `1m`).
    #[serde(default)]
    pub backoff: Option<String>,
    /// Longest wait between attempts (default `30m`).
    #[serde(default)]
    pub max_backoff: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSegment {
    /// Unique within the job: lower-case letters, digits, `-` and `_`.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Rule over the score row and profile attributes, e.g.
    /// `percentile >= 80 AND has_factor('days_since_last_purchase')`.
    #[serde(rename = "where")]
    pub rule: String,
    /// Fraction of the segment held out of activation, in [0, 1) (default 0).
    #[serde(default)]
    pub holdout: Option<f64>,
}

/// A destination for score rows and segment memberships.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawSink {
    /// Parquet files under a directory URL.
    Parquet(RawParquetSink),
    /// CSV files under a directory URL.
    Csv(RawFileSink),
    /// Newline-delimited JSON files under a directory URL.
    Jsonl(RawFileSink),
    /// A scores table and a segment-membership table in PostgreSQL.
    Postgres(RawPostgresSink),
    /// A hash per profile and a set per segment in Redis.
    Redis(RawRedisSink),
    /// Batched JSON POSTed to an HTTP endpoint.
    Webhook(RawWebhookSink),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParquetSink {
    /// Unique sink name (defaults to the type).
    #[serde(default)]
    pub name: Option<String>,
    /// A directory: a path, `file://`, `s3://`, `gs://` or `az://` URL.
    pub uri: String,
    #[serde(default)]
    pub storage: Option<RawStorage>,
    /// `zstd` (default), `snappy`, `gzip` or `none`.
    #[serde(default)]
    pub compression: Option<ParquetCompression>,
    /// Publish holdout rows too (default false).
    #[serde(default)]
    pub include_holdout: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFileSink {
    /// Unique sink name (defaults to the type).
    #[serde(default)]
    pub name: Option<String>,
    /// A directory: a path, `file://`, `s3://`, `gs://` or `az://` URL.
    pub uri: String,
    #[serde(default)]
    pub storage: Option<RawStorage>,
    /// Publish holdout rows too (default false).
    #[serde(default)]
    pub include_holdout: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPostgresSink {
    #[serde(default)]
    pub name: Option<String>,
    /// `postgres://user:${PG_PASSWORD}@host:5432/db`, or `${PG_URL}`. A password must come
    /// from the environment.
    pub url: String,
    /// Schema of the tables (default `public`).
    #[serde(default)]
    pub schema: Option<String>,
    /// Scores table (default `profile_scores`).
    #[serde(default)]
    pub table: Option<String>,
    /// Segment-membership table (default `<table>_segments`).
    #[serde(default)]
    pub segments_table: Option<String>,
    /// `swap` (default) or `upsert`.
    #[serde(default)]
    pub mode: Option<PostgresMode>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub include_holdout: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// disable, prefer (default), require, verify_ca, verify_full.
    pub mode: TlsMode,
    /// PEM file with the CA certificates to trust.
    #[serde(default)]
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedisSink {
    #[serde(default)]
    pub name: Option<String>,
    /// `redis://host:6379/0`, `rediss://…`; a password must come from `${ENV}`.
    pub url: String,
    /// Prefix of every key (default `propensity:<job>`).
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Superseded versions expire after this span (default `1d`).
    #[serde(default)]
    pub expire_after: Option<String>,
    #[serde(default)]
    pub include_holdout: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookSink {
    #[serde(default)]
    pub name: Option<String>,
    /// `https://…` (or `http://`) endpoint receiving POSTed batches.
    pub url: String,
    /// Extra request headers. Credentials (Authorization, API keys, tokens) must use `${ENV}`.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Profiles per request (default 500).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: Option<u32>,
    /// Per-request timeout (default `30s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Attempts per batch, the first included (default 5).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<u32>,
    /// First retry delay, doubled each time; `Retry-After` wins when sent (default `1s`).
    #[serde(default)]
    pub initial_backoff: Option<String>,
    /// Longest retry delay (default `1m`).
    #[serde(default)]
    pub max_backoff: Option<String>,
    /// Total retry time per run before batches are kept for `propensity replay` (default `10m`).
    #[serde(default)]
    pub retry_budget: Option<String>,
    /// Standard Webhooks signing secret, as `${ENV}`.
    #[serde(default)]
    pub signing_secret: Option<String>,
    #[serde(default)]
    pub include_holdout: Option<bool>,
}

/// The engine that computes features.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawEngine {
    /// Apache DataFusion in process (default).
    Embedded(RawEmbedded),
    /// An Apache DataFusion Ballista cluster.
    Ballista(RawBallista),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEmbedded {
    /// Memory for query execution before spilling, e.g. `4GiB` (default `4GiB`).
    #[serde(default)]
    pub memory_limit: Option<String>,
    /// Directory for spill files (default: the system temp directory).
    #[serde(default)]
    pub spill_dir: Option<String>,
    /// Parallelism (default: one per core).
    #[serde(default)]
    #[schemars(range(max = 1024))]
    pub target_partitions: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBallista {
    /// Scheduler URL, e.g. `df://scheduler:50050`.
    pub scheduler: String,
}
