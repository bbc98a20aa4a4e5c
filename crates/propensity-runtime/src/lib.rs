//! One Propensity run end to end: load and check the data, compute point-in-time features,
//! train when due (calibrate, evaluate, quality gate, registry), score every eligible
//! profile with its reasons, and write the score table, the model card and the run report.
//!
//! The same function runs from the CLI (`propensity run`) and, later, from the daemon's child
//! processes. It is synchronous: the IO parts run on a private Tokio runtime, the CPU-heavy
//! parts on the calling thread and scoped worker threads.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use propensity_core::{Domain, Goal, Job};
use propensity_engine::EngineError;
use propensity_engine::source::EnvLookup;

mod card;
mod context;
pub mod erasure;
pub mod html;
mod load;
mod publish;
pub mod registry;
pub mod report;
mod score;
pub mod scores;
pub mod segments;
pub mod suppression;
mod train;

use context::RunContext;
pub use propensity_sinks::Fence;
pub use publish::publish_all;
use registry::Registry;
use report::RunReport;
use train::sha256_hex;

/// Why a run failed: who must act (`domain`), what happened, and what to do.
#[derive(Debug, Clone)]
pub struct RunError {
    pub domain: Domain,
    pub message: String,
    pub hint: Option<String>,
}

impl RunError {
    pub fn user(m: impl Into<String>) -> Self {
        RunError {
            domain: Domain::User,
            message: m.into(),
            hint: None,
        }
    }
    pub fn external(m: impl Into<String>) -> Self {
        RunError {
            domain: Domain::External,
            message: m.into(),
            hint: None,
        }
    }
    pub fn internal(m: impl Into<String>) -> Self {
        RunError {
            domain: Domain::Internal,
            message: m.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RunError {}

impl From<EngineError> for RunError {
    fn from(e: EngineError) -> Self {
        RunError {
            domain: e.domain,
            message: e.message,
            hint: e.hint,
        }
    }
}

/// Where a run reports its stages. The CLI draws bars on a terminal and logs otherwise.
pub trait Progress: Sync {
    /// A stage begins; `total` is its unit count when known (trees, rows).
    fn begin(&self, stage: &str, total: Option<u64>);
    /// Units done so far in the current stage.
    fn advance(&self, done: u64);
    /// The stage ended, with a one-line summary.
    fn end(&self, stage: &str, seconds: f64, summary: &str);
    /// Something a person must know (fallback used, gate failed, …).
    fn warn(&self, message: &str);
}

/// Progress that goes nowhere (tests, library use).
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn end(&self, _: &str, _: f64, _: &str) {}
    fn warn(&self, _: &str) {}
}

#[derive(Clone)]
pub struct RunOptions {
    pub as_of: DateTime<Utc>,
    /// Train even when the champion was trained on the same configuration.
    pub force_train: bool,
    pub state_dir: PathBuf,
    /// Where `${NAME}` references in the job are looked up.
    pub env: EnvLookup,
    /// The job file, recorded so `propensity forget` can find this job's sinks later.
    pub job_file: Option<PathBuf>,
    /// Publish even when a run with a later as-of time already has (a backfill of the past
    /// is otherwise kept in its run directory and not sent, so sinks never roll back).
    pub publish_stale: bool,
    /// Checked at each sink's commit point (a daemon's child: the lease still its own).
    pub fence: Option<propensity_sinks::Fence>,
}

impl RunOptions {
    /// Options with the process environment for `${NAME}` references.
    pub fn new(as_of: DateTime<Utc>, force_train: bool, state_dir: PathBuf) -> Self {
        RunOptions {
            as_of,
            force_train,
            state_dir,
            env: std::sync::Arc::new(|k| std::env::var(k).ok()),
            job_file: None,
            publish_stale: false,
            fence: None,
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("as_of", &self.as_of)
            .field("force_train", &self.force_train)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub report: RunReport,
    /// Sinks that failed (their names and why); the run's scores and report are written.
    pub failed_sinks: Vec<String>,
    pub run_dir: PathBuf,
    pub scores_path: PathBuf,
    pub report_path: PathBuf,
}

/// Hash of the whole job as validated (templates unresolved: no secret enters it).
pub fn config_hash(job: &Job) -> String {
    sha256_hex(serde_json::to_string(job).unwrap_or_default().as_bytes())[..16].to_owned()
}

/// Hash of what a model depends on: sources, goal, eligibility, features and model settings.
/// Output, schedule, segments and sinks can change without retraining.
pub fn training_hash(job: &Job) -> String {
    let doc = serde_json::json!({
        "events": job.events, "profiles": job.profiles, "goal": job.goal,
        "eligibility": job.eligibility, "features": job.features, "model": job.model,
    });
    sha256_hex(doc.to_string().as_bytes())[..16].to_owned()
}

/// A short, readable description of the goal for the `goal` column.
pub fn goal_text(job: &Job) -> String {
    match &job.goal {
        Goal::Conditions(g) => format!("{} within {}", g.outcome.as_str(), g.window),
        Goal::Plugin(g) => format!("{} within {}", g.plugin, g.window),
    }
}

/// Runs a job once at `opts.as_of`: the spine of a run, one stage module per line.
pub fn run(
    job: &Job,
    job_dir: &Path,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<RunSummary, RunError> {
    let started = Utc::now();
    let run_id = context::run_id(opts.as_of, started);
    let _run_span = tracing::info_span!("run", job = %job.name, run_id = %run_id).entered();
    tracing::info!(as_of = %opts.as_of, force_train = opts.force_train, "run started");
    let mut cx = RunContext::new(job, job_dir, opts, progress, run_id, started)?;
    // Events and profiles as of the run's time; the data checks gate the rest.
    let loaded = load::load(&mut cx)?;
    // Point-in-time features of every training cutoff and of the scoring time.
    let inputs = load::features(&mut cx, loaded)?;
    // Train when due, quality gate, registry; the champion or a fallback scores.
    let chosen = train::choose(&mut cx, &inputs)?;
    // Probability, score, percentile, bucket and reasons of every eligible profile.
    let scoring = score::score(&mut cx, &inputs, &chosen.model);
    // Who is in each segment, and who is held out.
    let segments = segments::stage(&mut cx, &inputs, &chosen, &scoring)?;
    // The score table in the run directory, then to every sink.
    let table = publish::write(&mut cx, &inputs, &chosen, &scoring, &segments)?;
    let published = publish::publish(&mut cx, &table, &segments)?;
    // The report, the model card and the latest-run record.
    report::finish(cx, &inputs, chosen, &scoring, segments, table, published)
}

/// One profile's score and reasons from the job's latest run.
pub fn explain(
    state_dir: &Path,
    job: &Job,
    profile_id: &str,
) -> Result<(registry::LatestRun, scores::ProfileScore), RunError> {
    let registry = Registry::open(state_dir, &job.name)?;
    let latest = registry.latest_run()?.ok_or_else(|| {
        RunError::user(format!(
            "job `{}` has no run in the state directory {}",
            job.name,
            state_dir.display()
        ))
        .hint("run it first: `propensity run JOB`, or pass the --state the run used")
    })?;
    let path = registry.run_dir(&latest.run_id).join("scores.parquet");
    match scores::find(&path, profile_id)? {
        Some(s) => Ok((latest, s)),
        None => Err(RunError::user(format!(
            "profile `{profile_id}` was not scored in the latest run of `{}` (as of {})",
            job.name, latest.as_of
        ))
        .hint(format!(
            "only profiles with an event in the {} before the as-of time are scored (eligibility.active_within); check the id",
            job.eligibility.active_within
        ))),
    }
}
