//! Publishing a run's score rows and segment memberships to the systems that act on them.
//!
//! Every sink implements [`Sink`] and publishes a [`Publication`] atomically and
//! idempotently (SPEC §8):
//!
//! - **files** (`parquet`, `csv`, `jsonl`, [`files`]): run-scoped objects, then a manifest,
//!   then the `current.json` pointer, swapped last;
//! - **PostgreSQL** ([`postgres`]): a staging table loaded with `COPY`, then one transaction
//!   that swaps or upserts the job's rows and records the publication;
//! - **Redis** ([`redis`]): a hash per profile and a set per segment under versioned keys,
//!   then the pointer flip; superseded versions expire;
//! - **webhooks** ([`webhook`]): batched JSON with an idempotency key per batch, retries with
//!   backoff within a budget, undelivered batches kept for `propensity replay`.
//!
//! A publication's id is derived from its content (as-of time and a hash of the rows), so
//! publishing the same rows again finds them already current and changes nothing, and a run
//! that died mid-publication and is run again converges on the same state.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use propensity_common::EnvLookup;
use propensity_core::{Domain, Job, SinkKind, SinkSpec};
use serde::Serialize;

pub mod files;
pub mod postgres;
pub mod redis;
pub mod rows;
pub mod webhook;

pub use rows::ScoreRows;

/// A sink failure: what failed, whether the user or the outside world is to blame.
#[derive(Debug, Clone)]
pub struct SinkError {
    pub domain: Domain,
    pub message: String,
}

impl SinkError {
    pub fn user(m: impl Into<String>) -> Self {
        Self {
            domain: Domain::User,
            message: m.into(),
        }
    }
    pub fn external(m: impl Into<String>) -> Self {
        Self {
            domain: Domain::External,
            message: m.into(),
        }
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self {
            domain: Domain::Internal,
            message: m.into(),
        }
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}

/// One run's rows, ready to publish.
#[derive(Debug, Clone)]
pub struct Publication {
    pub job: String,
    /// Content-derived: `<as-of>-<hash of the rows>` (see [`publication_id`]).
    pub id: String,
    pub run_id: String,
    /// RFC 3339.
    pub as_of: String,
    /// Every score row, holdout rows included (see [`Publication::rows`]).
    pub batch: RecordBatch,
    /// The job's segment names, in job order.
    pub segments: Vec<String>,
    /// The job's state directory (`<state>/jobs/<job>`): webhook outboxes live here.
    pub state_dir: PathBuf,
    /// Fault injection for the crash tests (`PROPENSITY_FAILPOINT` in the run's environment):
    /// `<kind>:<point>` aborts the process there, as a `kill -9` would; `<kind>:<point>:error`
    /// makes the sink fail there instead; `<kind>:<point>:sleep=MS` pauses there. Runs set it
    /// in debug builds only (a release build never reads the variable).
    pub failpoint: Option<String>,
    /// Checked at each sink's commit point: a run the daemon no longer leads (its lease was
    /// taken over while it was paused) must not publish over the new leader's run.
    pub fence: Option<Fence>,
}

/// A check that this process may still publish (see [`Publication::fence`]): `Err` says why
/// not.
#[derive(Clone)]
pub struct Fence(pub std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fence")
    }
}

impl Publication {
    /// At a commit point: fails when the fence says this run may no longer publish, and
    /// applies the failpoint named `point`.
    pub fn commit_point(&self, kind: &str, point: &str) -> Result<(), SinkError> {
        if let Some(Fence(check)) = &self.fence {
            check().map_err(|why| SinkError::external(format!("not committed: {why}")))?;
        }
        self.failpoint(kind, point)
    }

    /// Stops here when the failpoint names this sink kind and point (see the field).
    pub fn failpoint(&self, kind: &str, point: &str) -> Result<(), SinkError> {
        let Some(v) = &self.failpoint else {
            return Ok(());
        };
        for item in v.split(',') {
            let mut parts = item.trim().splitn(3, ':');
            if parts.next() == Some(kind) && parts.next() == Some(point) {
                let action = parts.next();
                if let Some(ms) = action.and_then(|a| a.strip_prefix("sleep=")) {
                    // A slow sink, so a test can stop the process in the middle of a run.
                    let ms: u64 = ms.parse().unwrap_or(1000);
                    eprintln!("failpoint {kind}:{point}: sleeping {ms} ms");
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    continue;
                }
                if action == Some("error") {
                    return Err(SinkError::external(format!(
                        "failpoint {kind}:{point}: injected failure"
                    )));
                }
                eprintln!("failpoint {kind}:{point}: aborting the process");
                std::process::abort();
            }
        }
        Ok(())
    }

    /// The rows a sink publishes: all of them, or without the profiles held out of any
    /// segment when the sink does not ask for holdout rows.
    pub fn rows(&self, include_holdout: bool) -> Result<RecordBatch, SinkError> {
        if include_holdout {
            return Ok(self.batch.clone());
        }
        let r = ScoreRows::new(&self.batch)?;
        let keep: arrow::array::BooleanArray =
            (0..r.len()).map(|i| Some(!r.is_holdout(i))).collect();
        arrow::compute::filter_record_batch(&self.batch, &keep)
            .map_err(|e| SinkError::internal(format!("filtering holdout rows: {e}")))
    }
}

/// The publication id of a run's rows: the as-of time and the first 16 hex digits of the
/// sha256 of the Parquet bytes of the score table (which are deterministic).
pub fn publication_id(as_of_compact: &str, content: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(content);
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{as_of_compact}-{hex}")
}

/// What a sink did with a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The publication is now current.
    Published,
    /// It already was current: nothing changed.
    Unchanged,
    /// Some or all of it could not be delivered (see the message); for webhooks the
    /// undelivered batches wait in the outbox for `propensity replay`.
    Failed,
    /// Not sent: a run with a later as-of time has published, and an older one (a backfill)
    /// must not roll the sink back (`propensity run --publish-stale` forces it).
    Stale,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
            Self::Stale => "stale",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of publishing to one sink.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub status: Status,
    pub rows: usize,
    /// Where readers find it (a URL, table or key; never a secret).
    pub location: String,
    pub detail: Option<String>,
}

/// A place score rows are published to.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// `parquet`, `csv`, `jsonl`, `postgres`, `redis` or `webhook`.
    fn kind(&self) -> &'static str;
    fn include_holdout(&self) -> bool;
    /// Makes `p` the current publication, atomically: readers see the previous publication
    /// or this one, never a mix. Publishing the current publication again changes nothing.
    async fn publish(&self, p: &Publication) -> Result<Published, SinkError>;
    /// Removes these profiles from the current publication (and from anything older this
    /// sink still holds). Returns how many rows were removed.
    async fn forget(&self, job: &str, profile_ids: &[String]) -> Result<u64, SinkError>;
}

/// What building sinks needs besides the job.
#[derive(Clone)]
pub struct Context {
    /// The job file's directory: relative sink paths resolve from it.
    pub job_dir: PathBuf,
    pub env: EnvLookup,
    /// The job's state directory (`<state>/jobs/<job>`): a webhook sink built outside a
    /// publication finds its outbox here (for `forget`).
    pub state_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("job_dir", &self.job_dir)
            .finish_non_exhaustive()
    }
}

/// Builds one sink from its spec. Fails (user error) when a `${ENV}` reference is unset or
/// a resolved URL is not usable; nothing is contacted yet.
pub fn build(spec: &SinkSpec, ctx: &Context) -> Result<Arc<dyn Sink>, SinkError> {
    let named = |e: String| SinkError::user(format!("sink `{}`: {e}", spec.name));
    Ok(match &spec.kind {
        SinkKind::Parquet {
            location,
            storage,
            compression,
        } => Arc::new(
            files::FileSink::new(
                spec,
                files::Format::Parquet(*compression),
                location,
                storage,
                ctx,
            )
            .map_err(named)?,
        ),
        SinkKind::Csv { location, storage } => Arc::new(
            files::FileSink::new(spec, files::Format::Csv, location, storage, ctx)
                .map_err(named)?,
        ),
        SinkKind::Jsonl { location, storage } => Arc::new(
            files::FileSink::new(spec, files::Format::Jsonl, location, storage, ctx)
                .map_err(named)?,
        ),
        SinkKind::Postgres(p) => {
            Arc::new(postgres::PostgresSink::new(spec, p, ctx).map_err(named)?)
        }
        SinkKind::Redis(r) => Arc::new(redis::RedisSink::new(spec, r, ctx).map_err(named)?),
        SinkKind::Webhook(w) => {
            let sink = webhook::WebhookSink::new(spec, w, ctx).map_err(named)?;
            Arc::new(match &ctx.state_dir {
                Some(dir) => sink.with_state_dir(dir.clone()),
                None => sink,
            })
        }
    })
}

/// A sink by name, or why it could not be built.
pub type Built = (String, Result<Arc<dyn Sink>, SinkError>);

/// Every sink of a job.
pub fn build_all(job: &Job, ctx: &Context) -> Vec<Built> {
    job.sinks
        .iter()
        .map(|s| (s.name.clone(), build(s, ctx)))
        .collect()
}
