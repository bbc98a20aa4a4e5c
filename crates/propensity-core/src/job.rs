//! A validated job: every value checked, every default filled in. Built by
//! `propensity-config`; the pipeline, sinks and daemon read only this.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::duration::Span;
use crate::enums::*;
use crate::secret::Template;

/// The only job-file format version this build reads.
pub const JOB_VERSION: u32 = 1;

/// One prediction, as described by one job file.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub version: u32,
    pub name: String,
    pub description: Option<String>,
    pub events: EventSource,
    pub profiles: Option<ProfileSource>,
    pub goal: Goal,
    pub eligibility: Eligibility,
    pub features: Features,
    pub model: ModelSpec,
    pub output: OutputSpec,
    pub schedule: Option<ScheduleSpec>,
    pub segments: Vec<SegmentSpec>,
    pub sinks: Vec<SinkSpec>,
    pub engine: EngineSpec,
}

/// Where data lives: a local path or glob, or an object-store URL.
#[derive(Debug, Clone, Serialize)]
pub struct Location {
    pub scheme: Scheme,
    /// As written (may contain `${NAME}` references; never a resolved secret).
    pub uri: Template,
}

/// The kind of storage a [`Location`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// A path (relative to the job file's directory) or glob on the local file system.
    Path,
    File,
    S3,
    Gs,
    Az,
    Http,
    Https,
    /// The whole URL comes from one `${NAME}`; its scheme is checked when the run resolves it.
    FromEnv,
}

/// Object-store settings (endpoint, region, credentials). Credentials are templates that
/// reference environment variables; they are resolved only when a run opens the store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageOptions {
    pub options: BTreeMap<String, Template>,
}

/// A dotted path into an event or profile record (`commerce.order.priceTotal`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
        parts
            .iter()
            .all(|p| !p.is_empty() && p.trim() == p)
            .then_some(Self(parts))
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl From<FieldPath> for String {
    fn from(p: FieldPath) -> String {
        p.to_string()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventColumns {
    pub profile_id: FieldPath,
    pub timestamp: FieldPath,
    pub event_type: FieldPath,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventSource {
    pub location: Location,
    /// `None`: inferred from the file extension.
    pub format: Option<DataFormat>,
    pub columns: EventColumns,
    pub timestamp_format: TimestampFormat,
    pub storage: StorageOptions,
    /// Largest fraction of invalid events (or unconvertible values of one field) tolerated
    /// before a run fails; below it they are set aside and counted.
    pub max_invalid_fraction: f64,
    /// Events identical in every field the job reads are counted once.
    pub dedupe: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileSource {
    pub location: Location,
    pub format: Option<DataFormat>,
    pub profile_id: FieldPath,
    /// Empty: every column except the id.
    pub attributes: Vec<String>,
    pub storage: StorageOptions,
}

/// A literal in a goal condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ConditionValue {
    One(Scalar),
    List(Vec<Scalar>),
    /// `exists` with `value = false`: the field is absent or null.
    Absent,
    /// `exists` (default `value = true`): the field is present and not null.
    Present,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    pub field: FieldPath,
    pub op: Op,
    pub value: ConditionValue,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Goal {
    Conditions(ConditionsGoal),
    Plugin(PluginGoal),
}

impl Goal {
    pub fn window(&self) -> Span {
        match self {
            Goal::Conditions(g) => g.window,
            Goal::Plugin(g) => g.window,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConditionsGoal {
    pub outcome: GoalOutcome,
    pub window: Span,
    pub r#match: Match,
    /// Events meeting the conditions needed within the window for the goal to occur.
    pub min_count: u32,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginGoal {
    /// A plugin name (looked up in the plugin directories) or a path to a library.
    pub plugin: String,
    /// Lower-case hex; the library is refused before loading when its hash differs.
    pub sha256: Option<String>,
    pub window: Span,
    /// Passed to the plugin as JSON; the plugin validates them.
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A boolean expression over event fields or profile attributes (see [`crate::expr`]), as
/// written and parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    pub text: String,
    pub expr: crate::expr::Expr,
}

impl Serialize for Predicate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Eligibility {
    /// Profiles with at least one event within this span before the as-of time.
    pub active_within: Span,
    pub include: Option<Predicate>,
    pub exclude: Option<Predicate>,
    /// Events matching this are removed before anything else (test traffic, promotions).
    pub exclude_events: Option<Predicate>,
}

/// How far back features look from each cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    /// Every event before the cutoff (the default): no eligible profile is left without
    /// history to compute features from.
    All,
    Span(Span),
}

impl Lookback {
    /// Seconds; "all history" is [`Lookback::ALL_SECS`], longer than any data.
    pub fn as_secs(self) -> u64 {
        match self {
            Lookback::All => Self::ALL_SECS,
            Lookback::Span(s) => s.as_secs(),
        }
    }

    /// A hundred years: what "all history" means in arithmetic on times.
    pub const ALL_SECS: u64 = 36_500 * 86_400;
}

impl std::fmt::Display for Lookback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookback::All => f.write_str("all"),
            Lookback::Span(s) => s.fmt(f),
        }
    }
}

impl Serialize for Lookback {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Features {
    pub lookback: Lookback,
    /// Sorted, distinct.
    pub windows: Vec<Span>,
    pub top_event_types: u32,
    pub numeric_fields: Vec<FieldPath>,
    /// `numeric_fields` was not written: the engine uses the events' top-level numeric
    /// columns (up to [`Features::AUTO_NUMERIC_FIELDS`]) other than the mapped ones.
    pub numeric_fields_auto: bool,
    pub custom_events: BTreeMap<String, Predicate>,
    pub exclude: Vec<String>,
}

/// `[model.gbdt]` as written: a value set here is used as is; one left out is chosen by
/// the capacity search (or takes the model crate's default when the search is off).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GbdtParams {
    /// The most trees grown; early stopping on the validation cutoff keeps fewer.
    pub num_trees: Option<u32>,
    pub learning_rate: Option<f64>,
    pub max_depth: Option<u32>,
    pub num_leaves: Option<u32>,
    pub min_data_in_leaf: Option<u32>,
    pub early_stopping_rounds: Option<u32>,
}

/// `[model.search]`: how the capacity of the trees is chosen on the out-of-time validation.
#[derive(Debug, Clone, Serialize)]
pub struct SearchSpec {
    /// Wall-time budget of the search; when it runs out the best candidate so far is kept
    /// (and the model card says so). `None` (`budget = "off"`): no search, the defaults.
    pub budget: Option<Span>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    pub algorithm: Algorithm,
    pub snapshots: u32,
    /// `None`: derived from the outcome window ([`ModelSpec::stride`]).
    pub snapshot_stride: Option<Span>,
    pub min_positives: u32,
    pub min_negatives: u32,
    pub seed: u64,
    pub calibration: Calibration,
    pub min_auc: f64,
    pub gbdt: GbdtParams,
    pub search: SearchSpec,
}

impl Features {
    /// Numeric columns picked up when `numeric_fields` is not written, at most.
    pub const AUTO_NUMERIC_FIELDS: usize = 8;
}

impl ModelSpec {
    /// The spacing of training cutoffs: as written, or a third of the outcome window in
    /// whole days, between 1 and 30 days.
    pub fn stride(&self, window: Span) -> Span {
        self.snapshot_stride.unwrap_or_else(|| {
            let days = (window.as_secs() / 86_400 / 3).clamp(1, 30);
            Span::from_days(days)
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputSpec {
    pub top_factors: u32,
    /// Percentile at or above which a profile is `high`.
    pub high: u32,
    /// Percentile at or above which a profile is `medium` (below `high`).
    pub medium: u32,
}

/// A cron expression in the cron crate's 6- or 7-field form (seconds first). Five-field
/// crontab input is accepted and stored with `0` seconds prepended.
#[derive(Debug, Clone, Serialize)]
pub struct CronSpec {
    pub expression: String,
    #[serde(skip)]
    pub schedule: cron::Schedule,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Span,
    pub max_backoff: Span,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleSpec {
    pub score: CronSpec,
    pub train: Option<CronSpec>,
    #[serde(serialize_with = "ser_tz")]
    pub timezone: chrono_tz::Tz,
    pub overlap: Overlap,
    pub catchup: Catchup,
    pub catchup_limit: u32,
    pub retries: RetryPolicy,
    pub timeout: Option<Span>,
    /// Resident memory limit of a daemon run's process, in bytes.
    pub max_memory: Option<u64>,
}

fn ser_tz<S: serde::Serializer>(tz: &chrono_tz::Tz, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tz.name())
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentSpec {
    pub name: String,
    pub description: Option<String>,
    pub rule: Predicate,
    /// Fraction in [0, 1) held out of activation.
    pub holdout: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkSpec {
    /// Unique within the job; defaults to the sink type, suffixed when repeated.
    pub name: String,
    /// Whether holdout rows are published to this sink.
    pub include_holdout: bool,
    pub kind: SinkKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    Parquet {
        location: Location,
        storage: StorageOptions,
        compression: ParquetCompression,
    },
    Csv {
        location: Location,
        storage: StorageOptions,
    },
    Jsonl {
        location: Location,
        storage: StorageOptions,
    },
    Postgres(PostgresSink),
    Redis(RedisSink),
    Webhook(WebhookSink),
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Parquet { .. } => "parquet",
            SinkKind::Csv { .. } => "csv",
            SinkKind::Jsonl { .. } => "jsonl",
            SinkKind::Postgres(_) => "postgres",
            SinkKind::Redis(_) => "redis",
            SinkKind::Webhook(_) => "webhook",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresSink {
    pub url: Template,
    pub schema: String,
    pub table: String,
    pub segments_table: String,
    pub mode: PostgresMode,
    pub tls: TlsMode,
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisSink {
    pub url: Template,
    pub key_prefix: String,
    /// Versions older than the current one expire after this span.
    pub expire_after: Span,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookSink {
    pub url: Template,
    pub headers: BTreeMap<String, Template>,
    pub batch_size: u32,
    pub timeout: Span,
    pub max_attempts: u32,
    pub initial_backoff: Span,
    pub max_backoff: Span,
    /// Total time spent retrying one run's batches before the rest are kept for replay.
    pub retry_budget: Span,
    /// Standard Webhooks signing secret (`whsec_…`), from the environment.
    pub signing_secret: Option<Template>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EngineSpec {
    Embedded {
        /// Bytes; DataFusion spills past this.
        memory_limit: u64,
        spill_dir: Option<String>,
        /// 0: one per core.
        target_partitions: u32,
    },
    Ballista {
        scheduler: Template,
    },
}
