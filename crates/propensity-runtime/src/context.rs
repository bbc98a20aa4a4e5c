//! What every stage of a run shares: the job and its options, the registry, the IO runtime,
//! the stage timings and the warnings gathered on the way.

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use propensity_core::Job;
use propensity_model::pipeline::Settings;

use crate::registry::Registry;
use crate::report::StageTiming;
use crate::{Progress, RunError, RunOptions};

/// The run's shared state, handed from stage to stage.
pub(crate) struct RunContext<'a> {
    pub job: &'a Job,
    pub job_dir: &'a Path,
    pub opts: &'a RunOptions,
    pub progress: &'a dyn Progress,
    pub registry: Registry,
    /// The IO half of the run (object stores, sinks) runs here.
    pub rt: tokio::runtime::Runtime,
    pub run_id: String,
    pub started: DateTime<Utc>,
    /// `opts.as_of` in microseconds.
    pub as_of_us: i64,
    pub settings: Settings,
    /// [`crate::config_hash`] of the job.
    pub config_hash: String,
    /// [`crate::training_hash`] of the job.
    pub training_hash: String,
    pub timings: Vec<StageTiming>,
    pub warnings: Vec<String>,
}

/// The run id: the as-of time, then the start time to the millisecond.
pub(crate) fn run_id(as_of: DateTime<Utc>, started: DateTime<Utc>) -> String {
    format!(
        "{}-{}",
        as_of.format("%Y%m%dT%H%M%SZ"),
        started.format("%Y%m%dT%H%M%S%.3fZ")
    )
    .replace('.', "")
}

impl<'a> RunContext<'a> {
    pub fn new(
        job: &'a Job,
        job_dir: &'a Path,
        opts: &'a RunOptions,
        progress: &'a dyn Progress,
        run_id: String,
        started: DateTime<Utc>,
    ) -> Result<Self, RunError> {
        let registry = Registry::open(&opts.state_dir, &job.name)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| RunError::internal(format!("cannot start the runtime: {e}")))?;
        Ok(RunContext {
            job,
            job_dir,
            opts,
            progress,
            registry,
            rt,
            run_id,
            started,
            as_of_us: opts.as_of.timestamp_micros(),
            settings: crate::train::settings(job),
            config_hash: crate::config_hash(job),
            training_hash: crate::training_hash(job),
            timings: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Something a person must know: shown now and listed in the report.
    pub fn warn(&mut self, message: String) {
        self.progress.warn(&message);
        self.warnings.push(message);
    }

    /// Begins a stage: its progress line and a `stage` tracing span (inside the run's `run`
    /// span) that its events belong to. `total` is its unit count when known.
    pub fn stage(&self, name: &'static str, total: Option<u64>) -> Stage {
        let span = tracing::info_span!("stage", stage = name).entered();
        tracing::debug!("stage started");
        self.progress.begin(name, total);
        Stage {
            name,
            start: Instant::now(),
            _span: span,
        }
    }

    /// Ends a stage with a one-line summary and records its timing in the report.
    pub fn done(&mut self, stage: Stage, summary: &str) {
        let seconds = stage.start.elapsed().as_secs_f64();
        tracing::info!(seconds, summary, "stage done");
        self.progress.end(stage.name, seconds, summary);
        self.timings.push(StageTiming {
            stage: stage.name.into(),
            seconds,
        });
    }
}

/// A stage in progress (see [`RunContext::stage`]); its span closes with [`RunContext::done`].
pub(crate) struct Stage {
    name: &'static str,
    start: Instant,
    _span: tracing::span::EnteredSpan,
}
