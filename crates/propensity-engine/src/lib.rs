//! The data half of a Propensity run, on Apache DataFusion in process: read a job's events
//! (and profiles) from a path, glob or object-store URL, check them, decide who is eligible,
//! label each profile against the goal and compute point-in-time features at every cutoff.
//!
//! ```text
//! Engine::new ─▶ Engine::load (one scan: project, check, group by profile) ─▶ Loaded
//!   Loaded::report            data-check report (JSON), label counts, sufficiency
//!   Loaded::dataset           feature rows of every training cutoff and the scoring cutoff
//! ```
//!
//! DataFusion does the reading (formats, stores, nested fields, predicates and goal
//! conditions compiled to expressions); the per-profile work runs in Rust over the grouped
//! events, which is what lets every cutoff come from one pass: a profile's events are sorted
//! once and each cutoff is a binary search, where SQL would aggregate the events once per
//! cutoff (see `bench/`).
//!
//! Timestamps arrive in many shapes and all become microseconds since the epoch, UTC:
//!
//! ```
//! use propensity_core::enums::TimestampFormat::{Auto, EpochMillis};
//! use propensity_engine::events::parse_time;
//!
//! let utc = Some(1_777_629_600_000_000); // 2026-05-01T10:00:00Z
//! assert_eq!(parse_time("2026-05-01T12:00:00+02:00", Auto), utc);
//! assert_eq!(parse_time("2026-05-01 10:00:00", Auto), utc); // no offset: UTC
//! assert_eq!(parse_time("1777629600", Auto), utc); // epoch seconds below 1e11
//! assert_eq!(parse_time("1777629600000", EpochMillis), utc);
//! assert_eq!(parse_time("yesterday", Auto), None); // set aside and counted
//! ```

pub mod checks;
pub mod compile;
pub mod dataset;
pub mod events;
pub mod features;
pub mod generate;
pub mod plugin;
pub mod profiles;
pub mod segments;
pub mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use propensity_core::{Domain, EngineSpec, Job};

pub use checks::DataCheckReport;
pub use dataset::{CutoffPlan, Dataset, LabelRule, Labeller, PluginLabels, Snapshot};
pub use events::EventStore;
pub use features::{Catalogue, FeatureConfig, FeatureDef, FeatureSpec};
pub use profiles::ProfileTable;
pub use source::EnvLookup;

/// An engine failure: what went wrong, who must act, and a hint when there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub domain: Domain,
    pub message: String,
    pub hint: Option<String>,
}

impl EngineError {
    pub fn new(domain: Domain, message: impl Into<String>) -> Self {
        Self {
            domain,
            message: message.into(),
            hint: None,
        }
    }
    pub fn user(message: impl Into<String>) -> Self {
        Self::new(Domain::User, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Domain::Internal, message)
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// A retry may help (a store or network failure).
    pub fn retryable(&self) -> bool {
        self.domain == Domain::External
    }
}

/// DataFusion wraps errors in context layers; users need the innermost message.
pub(crate) fn df_message(e: &datafusion::error::DataFusionError) -> String {
    let s = e.find_root().to_string();
    s.trim_start_matches("External error: ")
        .trim_start_matches("Object Store error: ")
        .to_owned()
}

/// A failure while reading data: a parse error in a file is the user's to fix, a store or
/// network failure is external.
pub(crate) fn read_error(e: datafusion::error::DataFusionError, display: &str) -> EngineError {
    use datafusion::error::DataFusionError as E;
    let root = e.find_root();
    let domain = match root {
        E::ObjectStore(_) | E::IoError(_) => Domain::External,
        E::ArrowError(..)
        | E::ParquetError(_)
        | E::SchemaError(..)
        | E::Plan(_)
        | E::Execution(_) => Domain::User,
        E::ResourcesExhausted(_) => Domain::External,
        _ => Domain::Internal,
    };
    let mut err = EngineError::new(domain, format!("reading `{display}`: {}", df_message(&e)));
    if matches!(root, E::ResourcesExhausted(_)) {
        err = err.hint("raise [engine] memory_limit, or give the engine a spill_dir");
    } else if domain == Domain::User {
        err = err.hint("a file does not match the schema of the others, or is corrupt; the message names what failed");
    }
    err
}

pub use propensity_common::rfc3339;

/// How the engine runs: memory limit, spill directory, parallelism, the clock and the
/// environment `${NAME}` references are resolved from.
#[derive(Clone)]
pub struct EngineOptions {
    pub memory_limit: usize,
    pub spill_dir: Option<PathBuf>,
    /// 0: one per core.
    pub target_partitions: usize,
    /// Events later than this (plus a minute of clock skew) are "in the future".
    pub now: DateTime<Utc>,
    pub env: EnvLookup,
    /// Where goal plugins named by a job are looked for, in order.
    pub plugin_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("memory_limit", &self.memory_limit)
            .field("spill_dir", &self.spill_dir)
            .field("target_partitions", &self.target_partitions)
            .field("now", &self.now)
            .field("plugin_dirs", &self.plugin_dirs)
            .finish_non_exhaustive()
    }
}

impl EngineOptions {
    /// From the job's `[engine]` table, the process environment and the wall clock.
    pub fn from_job(job: &Job, job_dir: &Path) -> Result<Self, EngineError> {
        match &job.engine {
            EngineSpec::Embedded {
                memory_limit,
                spill_dir,
                target_partitions,
            } => Ok(Self {
                memory_limit: usize::try_from(*memory_limit).unwrap_or(usize::MAX),
                spill_dir: spill_dir.as_ref().map(|d| job_dir.join(d)),
                target_partitions: *target_partitions as usize,
                now: Utc::now(),
                env: Arc::new(|k| std::env::var(k).ok()),
                plugin_dirs: propensity_plugin::host::search_path(
                    std::env::var("PROPENSITY_PLUGIN_PATH").ok().as_deref(),
                    None,
                ),
            }),
            EngineSpec::Ballista { .. } => Err(EngineError::user(
                "engine: the Ballista engine is not part of this build; use the embedded engine",
            )
            .hint("remove [engine] or set type = \"embedded\"")),
        }
    }
}

/// A DataFusion session with a bounded memory pool.
pub struct Engine {
    ctx: SessionContext,
    opts: EngineOptions,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Events and profiles of one run, checked and grouped, ready for labels and features.
#[derive(Debug)]
pub struct Loaded {
    pub job: Job,
    pub plan: CutoffPlan,
    pub store: EventStore,
    pub profiles: ProfileTable,
    pub report: DataCheckReport,
    /// The feature layout and catalogue, fixed once the events are known.
    pub features: FeatureSpec,
    /// Seconds per stage, for the run report.
    pub timings: Vec<(&'static str, f64)>,
    /// For a plugin goal: the labels the plugin gave at each training cutoff.
    pub plugin_labels: Option<PluginLabels>,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Result<Self, EngineError> {
        let mut rt =
            RuntimeEnvBuilder::new().with_memory_limit(opts.memory_limit.max(64 << 20), 1.0);
        if let Some(dir) = &opts.spill_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                EngineError::user(format!("engine.spill_dir `{}`: {e}", dir.display()))
            })?;
            rt = rt.with_temp_file_path(dir.clone());
        }
        let rt = rt
            .build_arc()
            .map_err(|e| EngineError::internal(df_message(&e)))?;
        let mut config = SessionConfig::new();
        if opts.target_partitions > 0 {
            config = config.with_target_partitions(opts.target_partitions);
        }
        // Plain Utf8 strings: the scan reads them without a conversion.
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        Ok(Self {
            ctx: SessionContext::new_with_config_rt(config, rt),
            opts,
        })
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Reads and checks the job's sources for a run at `as_of`. Fails on problems that stop
    /// everything (a missing column, a source that cannot be read); data-quality problems
    /// above the job's thresholds are in `report.problems` with `passed = false`.
    pub async fn load(
        &self,
        job: &Job,
        job_dir: &Path,
        as_of: DateTime<Utc>,
    ) -> Result<Loaded, EngineError> {
        self.load_checked(job, job_dir, as_of)
            .await
            .map_err(|e| self.redact(job, e))
    }

    /// Store and network errors may quote a resolved URL or a credential (object_store
    /// echoes request URLs and key paths): every value of a `${NAME}` the job's sources
    /// reference is replaced by `***` before an error leaves the engine.
    fn redact(&self, job: &Job, mut e: EngineError) -> EngineError {
        let mut templates = vec![&job.events.location.uri];
        templates.extend(job.events.storage.options.values());
        if let Some(p) = &job.profiles {
            templates.push(&p.location.uri);
            templates.extend(p.storage.options.values());
        }
        let mut values: Vec<String> = templates
            .iter()
            .flat_map(|t| t.vars())
            .filter_map(|v| (self.opts.env)(v))
            .filter(|v| v.len() >= 4)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for v in &values {
            e.message = e.message.replace(v.as_str(), "***");
            if let Some(h) = &mut e.hint {
                *h = h.replace(v.as_str(), "***");
            }
        }
        e
    }

    async fn load_checked(
        &self,
        job: &Job,
        job_dir: &Path,
        as_of: DateTime<Utc>,
    ) -> Result<Loaded, EngineError> {
        let mut timings = Vec::new();
        let t = Instant::now();
        let goal_plugin = match &job.goal {
            propensity_core::Goal::Plugin(g) => Some(plugin::GoalPlugin::resolve(
                g,
                job_dir,
                &self.opts.plugin_dirs,
            )?),
            propensity_core::Goal::Conditions(_) => None,
        };
        let extra_fields = goal_plugin
            .as_ref()
            .map(plugin::GoalPlugin::fields)
            .unwrap_or_default();
        let as_of_us = as_of.timestamp_micros();
        let plan = CutoffPlan::from_job(job, as_of_us);
        // Keep enough history for the dry-run suggestions too (twice the snapshots and the
        // window, twice the eligibility span); features still read only their lookback.
        let wide = CutoffPlan::new(
            as_of_us,
            plan.window * 2,
            plan.stride,
            job.model.snapshots.saturating_mul(2).min(52),
            plan.lookback,
            plan.active_within * 2,
        );
        let plugin_from = plan
            .oldest()
            .saturating_sub(goal_plugin.as_ref().map_or(0, plugin::GoalPlugin::lookback));
        let keep_from = plan.needed_from().min(wide.needed_from()).min(plugin_from);
        let range = events::ScanRange {
            keep_from,
            keep_until: as_of_us,
            now: self.opts.now.timestamp_micros() + 60_000_000,
        };

        if goal_plugin.is_some() {
            timings.push(("plugin", t.elapsed().as_secs_f64()));
        }
        let t = Instant::now();
        let src = source::open(
            &self.ctx,
            &job.events.location,
            job.events.format,
            &job.events.storage,
            job_dir,
            &self.opts.env,
            "source.events",
        )
        .await?;
        tracing::info!(job = %job.name, source = %src.display, files = src.files, "reading events");
        let (store, counts, extras) =
            events::scan(job, src.frame, &src.display, range, &extra_fields).await?;
        timings.push(("events", t.elapsed().as_secs_f64()));
        tracing::info!(job = %job.name, rows = counts.rows_read, kept = counts.events_kept, profiles = counts.profiles, seconds = t.elapsed().as_secs_f64(), "events read");

        let t = Instant::now();
        let profiles = match &job.profiles {
            Some(p) => {
                let src_p = source::open(
                    &self.ctx,
                    &p.location,
                    p.format,
                    &p.storage,
                    job_dir,
                    &self.opts.env,
                    "source.profiles",
                )
                .await?;
                profiles::load(job, src_p.frame, &src_p.display, &store).await?
            }
            None => profiles::empty(job, &store)?,
        };
        timings.push(("profiles", t.elapsed().as_secs_f64()));

        let t = Instant::now();
        let first = counts.first_event.as_deref().and_then(parse_rfc3339);
        let last = counts.last_event.as_deref().and_then(parse_rfc3339);
        let rows = counts.rows_read.max(1) as f64;
        let section = checks::EventsSection {
            source: src.display.clone(),
            format: source::format_name(src.format).to_owned(),
            files: src.files,
            empty_files: src.empty_files.clone(),
            invalid_fraction: counts.invalid() as f64 / rows,
            max_invalid_fraction: job.events.max_invalid_fraction,
            counts,
        };
        let history = checks::history(&section.counts, first, last, &plan);
        let profile_counts = job.profiles.as_ref().map(|_| profiles.counts.clone());
        let (problems, mut warnings) =
            checks::evaluate(&section, profile_counts.as_ref(), &history);
        let mut cutoff_rows = Vec::new();
        let mut scoring_eligible = 0;
        let mut sufficiency = None;
        let plugin_labels = match (&goal_plugin, problems.is_empty()) {
            (Some(gp), true) => {
                let t = Instant::now();
                let labels = gp.label(&store, &extras, &profiles, &plan)?;
                tracing::info!(job = %job.name, plugin = %gp.plugin.metadata().name, cutoffs = plan.training.len(), seconds = t.elapsed().as_secs_f64(), "labelled by the goal plugin");
                Some(labels)
            }
            _ => None,
        };
        let rule = match (&plugin_labels, LabelRule::from_job(job)) {
            (Some(l), _) => Labeller::Plugin(l),
            (None, Some(r)) => Labeller::Rule(r),
            // A plugin goal whose data failed the checks: nothing is labelled.
            (None, None) => Labeller::Plugin(&NO_LABELS),
        };
        if problems.is_empty() {
            let mut cuts = plan.training.clone();
            cuts.push(plan.as_of);
            let mut counts = dataset::label_counts(
                &store,
                &profiles,
                &cuts,
                plan.window,
                plan.active_within,
                rule,
            );
            let scoring = counts.pop();
            scoring_eligible = scoring.map_or(0, |c| c.eligible);
            cutoff_rows = plan
                .training
                .iter()
                .zip(&counts)
                .map(|(c, n)| checks::CutoffRow {
                    cutoff: rfc3339(*c),
                    counts: *n,
                })
                .collect();
            sufficiency = Some(checks::sufficiency(
                &store,
                &profiles,
                &plan,
                rule,
                &counts,
                job.model.min_positives,
                job.model.min_negatives,
                first,
                keep_from,
            ));
            if scoring_eligible == 0 {
                warnings.push(checks::Finding {
                    code: "nobody-to-score",
                    message: format!("no profile is eligible at the as-of time {}", rfc3339(plan.as_of)),
                    hint: "nobody has an event within eligibility.active_within before the as-of time; check --as-of and the data's dates".into(),
                });
            }
        }
        if problems.is_empty() {
            warnings.extend(checks::coverage(&store, &profiles, &plan, first));
        }
        let feature_config = FeatureConfig::from_job(job);
        let spec = FeatureSpec::new(&feature_config, &store, &profiles);
        if !spec.catalogue.unknown_excludes.is_empty() {
            warnings.push(checks::Finding {
                code: "unknown-feature-exclude",
                message: format!(
                    "features.exclude names no feature: {}",
                    spec.catalogue.unknown_excludes.join(", ")
                ),
                hint: "feature names are listed in the feature catalogue of this report's run"
                    .into(),
            });
        }
        if !spec.catalogue.skipped_attributes.is_empty() {
            warnings.push(checks::Finding {
                code: "attribute-not-a-category",
                message: format!(
                    "profile attributes with nearly one value per profile are not used: {}",
                    spec.catalogue.skipped_attributes.join(", ")
                ),
                hint: "free text and identifiers (emails, names) are no features; list the useful columns in source.profiles.attributes".into(),
            });
        }
        if job.profiles.is_some() && profiles.counts.duplicate_profile_id > 0 {
            warnings.push(checks::Finding {
                code: "duplicate-profile-rows",
                message: format!("{} profile rows repeat an id; the first row read is used", profiles.counts.duplicate_profile_id),
                hint: "deduplicate the profiles table: with several files, which row comes first is not defined".into(),
            });
        }
        timings.push(("checks", t.elapsed().as_secs_f64()));
        let report = DataCheckReport {
            job: job.name.clone(),
            as_of: rfc3339(as_of_us),
            checked_at: self
                .opts
                .now
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            events: section,
            profiles: profile_counts,
            history,
            cutoffs: cutoff_rows,
            scoring_eligible,
            sufficiency,
            features: spec.len(),
            passed: problems.is_empty(),
            problems,
            warnings,
        };
        Ok(Loaded {
            job: job.clone(),
            plan,
            store,
            profiles,
            report,
            features: spec,
            timings,
            plugin_labels,
        })
    }
}

static NO_LABELS: std::sync::LazyLock<PluginLabels> =
    std::sync::LazyLock::new(PluginLabels::default);

fn parse_rfc3339(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_micros())
}

impl Loaded {
    /// Feature rows and labels of every training cutoff and the scoring cutoff, in one pass.
    pub fn dataset(&self) -> Result<Dataset, EngineError> {
        let spec = &self.features;
        let rule = match (&self.plugin_labels, LabelRule::from_job(&self.job)) {
            (Some(l), _) => Labeller::Plugin(l),
            (None, Some(r)) => Labeller::Rule(r),
            (None, None) => {
                return Err(EngineError::internal(
                    "a plugin goal without plugin labels reached the dataset",
                ));
            }
        };
        let t = Instant::now();
        let d = dataset::build(&self.store, &self.profiles, spec, &self.plan, rule);
        tracing::info!(
            job = %self.job.name,
            cutoffs = d.training.len() + 1,
            features = spec.len(),
            rows = d.training.iter().map(|s| s.rows.len()).sum::<usize>() + d.scoring.rows.len(),
            seconds = t.elapsed().as_secs_f64(),
            "features computed"
        );
        Ok(d)
    }
}
