//! One Propensity run end to end: load and check the data, compute point-in-time features,
//! train when due (calibrate, evaluate, quality gate, registry), score every eligible
//! profile with its reasons, and write the score table, the model card and the run report.
//!
//! The same function runs from the CLI (`propensity run`) and, later, from the daemon's child
//! processes. It is synchronous: the IO parts run on a private Tokio runtime, the CPU-heavy
//! parts on the calling thread and scoped worker threads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use propensity_core::{Domain, Goal, Job};
use propensity_engine::source::EnvLookup;
use propensity_engine::{Engine, EngineError, EngineOptions, rfc3339};
use propensity_model::calibrate::Calibrator;
use propensity_model::card::{ClassCounts, Confidence, CutoffSummary, ModelCard, Quality};
use propensity_model::gbdt::GbdtParams;
use propensity_model::pipeline::{self, Algorithm, CalibrationMethod, Scorer, Settings};
use propensity_model::{Matrix, Stack};
use sha2::{Digest, Sha256};

pub mod erasure;
pub mod html;
pub mod registry;
pub mod report;
pub mod scores;
pub mod segments;
pub mod suppression;

use registry::{LatestRun, Registry, StoredModel, write_atomic};
use report::{
    BucketSize, DataSummary, Output, PublicationRecord, RunReport, SegmentSize, StageTiming,
    TrainingOutcome, TrainingStatus,
};

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

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

fn settings(job: &Job) -> Settings {
    let g = &job.model.gbdt;
    let us = |v: Option<u32>| v.map(|v| v as usize);
    Settings {
        algorithm: match job.model.algorithm {
            propensity_core::enums::Algorithm::Gbdt => Algorithm::Gbdt,
            propensity_core::enums::Algorithm::Logistic => Algorithm::Logistic,
            propensity_core::enums::Algorithm::Svm => Algorithm::Svm,
        },
        gbdt: GbdtParams::default(),
        fixed: propensity_model::search::Fixed {
            num_trees: us(g.num_trees),
            learning_rate: g.learning_rate,
            max_depth: us(g.max_depth),
            num_leaves: us(g.num_leaves),
            min_data_in_leaf: us(g.min_data_in_leaf),
            early_stopping_rounds: us(g.early_stopping_rounds),
        },
        search_budget: job.model.search.budget.map(|b| b.as_duration()),
        calibration: match job.model.calibration {
            propensity_core::enums::Calibration::Auto => CalibrationMethod::Auto,
            propensity_core::enums::Calibration::Isotonic => CalibrationMethod::Isotonic,
            propensity_core::enums::Calibration::Platt => CalibrationMethod::Platt,
            propensity_core::enums::Calibration::None => CalibrationMethod::None,
        },
        seed: job.model.seed,
        min_positives: job.model.min_positives as usize,
        min_negatives: job.model.min_negatives as usize,
        churn: matches!(
            &job.goal,
            Goal::Conditions(c) if c.outcome == propensity_core::enums::Outcome::WillNotOccur
        ),
        lookback_days: (job.features.lookback.as_secs() as f64 / 86_400.0).min(3650.0),
        top_factors: job.output.top_factors as usize,
        high: job.output.high,
        medium: job.output.medium,
    }
}

/// One stage of a run: its progress line, its timing in the report, and a `stage` tracing
/// span (inside the run's `run` span) that its events belong to.
struct Stage<'a> {
    progress: &'a dyn Progress,
    timings: &'a mut Vec<StageTiming>,
    name: &'static str,
    start: Instant,
    _span: tracing::span::EnteredSpan,
}

impl<'a> Stage<'a> {
    fn begin(
        progress: &'a dyn Progress,
        timings: &'a mut Vec<StageTiming>,
        name: &'static str,
        total: Option<u64>,
    ) -> Self {
        let span = tracing::info_span!("stage", stage = name).entered();
        tracing::debug!("stage started");
        progress.begin(name, total);
        Stage {
            progress,
            timings,
            name,
            start: Instant::now(),
            _span: span,
        }
    }
    fn end(self, summary: &str) {
        let s = self.start.elapsed().as_secs_f64();
        tracing::info!(seconds = s, summary, "stage done");
        self.progress.end(self.name, s, summary);
        self.timings.push(StageTiming {
            stage: self.name.into(),
            seconds: s,
        });
    }
}

/// The training cutoffs laid out by the purged protocol (see `CutoffPlan`): which snapshots
/// search, which validates, which fit the scoring model, and their labels stacked.
struct Split {
    validation: usize,
    search: Vec<usize>,
    fit: Vec<usize>,
    search_y: Vec<u8>,
    fit_y: Vec<u8>,
    cutoffs: Vec<CutoffSummary>,
}

fn split(d: &propensity_engine::dataset::Dataset, plan: &propensity_engine::CutoffPlan) -> Split {
    let at = |c: i64| d.training.iter().position(|s| s.cutoff == c);
    let validation = at(plan.validation()).unwrap_or(0);
    let search: Vec<usize> = plan.search.iter().filter_map(|&c| at(c)).collect();
    let fit: Vec<usize> = plan.fit.iter().filter_map(|&c| at(c)).collect();
    let stack_y = |ks: &[usize]| -> Vec<u8> {
        ks.iter()
            .flat_map(|&k| d.training[k].labels.iter().copied())
            .collect()
    };
    let cutoffs = d
        .training
        .iter()
        .enumerate()
        .map(|(k, snap)| {
            let mut roles = Vec::new();
            if fit.contains(&k) {
                roles.push("fit");
            }
            if k == validation {
                roles.push("validation");
            }
            if search.contains(&k) {
                roles.push("search");
            }
            CutoffSummary {
                cutoff: rfc3339(snap.cutoff),
                role: roles.join("+"),
                rows: snap.rows.len(),
                positives: snap.positives(),
                negatives: snap.negatives(),
            }
        })
        .collect();
    Split {
        search_y: stack_y(&search),
        fit_y: stack_y(&fit),
        validation,
        search,
        fit,
        cutoffs,
    }
}

fn train_data<'a>(
    sp: &'a Split,
    d: &'a propensity_engine::dataset::Dataset,
    names: &'a [String],
    labels: &'a [String],
) -> pipeline::TrainData<'a> {
    let width = names.len();
    let m = |k: usize| Matrix::new(&d.training[k].values, width);
    let stack = |ks: &[usize]| Stack::new(ks.iter().map(|&k| m(k)).collect(), width);
    let (valid, valid_y) = match d.training.get(sp.validation) {
        Some(v) => (Matrix::new(&v.values, width), &v.labels[..]),
        None => (Matrix::new(&[], width), &[][..]),
    };
    pipeline::TrainData {
        names,
        labels,
        search: stack(&sp.search),
        search_y: &sp.search_y,
        valid,
        valid_y,
        fit: stack(&sp.fit),
        fit_y: &sp.fit_y,
    }
}

/// The protocol as the model card states it.
fn protocol(
    plan: &propensity_engine::CutoffPlan,
    sp: &Split,
    d: &propensity_engine::dataset::Dataset,
    out_of_time: bool,
) -> propensity_model::card::Protocol {
    let span = |us: i64| propensity_core::Span::from_secs((us / 1_000_000).max(1) as u64);
    let times = |ks: &[usize]| -> Vec<String> {
        ks.iter().map(|&k| rfc3339(d.training[k].cutoff)).collect()
    };
    let window = span(plan.window);
    propensity_model::card::Protocol {
        kind: if out_of_time {
            "purged out-of-time".into()
        } else {
            "split by profile (history too short for out-of-time)".into()
        },
        description: if out_of_time {
            format!(
                "capacity, trees and calibration are chosen on the validation cutoff by models trained on the search cutoffs, which end at least one outcome window ({window}) before it, so no training label window overlaps the validation labels; the scoring model trains on the fit cutoffs (the newest, the validation cutoff included) with the chosen settings and stands to the scoring time as the validated model stood to the validation cutoff; the metrics estimate what the scores achieve on the next {window}"
            )
        } else {
            "the history holds no labelled cutoff an outcome window before the validation cutoff: the fit cutoffs are split 80/20 by row, so the metrics are in time and likely optimistic; load older events or use fewer snapshots".into()
        },
        validation_cutoff: rfc3339(plan.validation()),
        search_cutoffs: times(&sp.search),
        fit_cutoffs: times(&sp.fit),
        embargo: window.to_string(),
        stride: span(plan.stride).to_string(),
        search_rows: counts(&sp.search_y),
    }
}

/// A stable 64-bit key of a profile id (FNV-1a, mixed with the seed).
fn id_key(id: &str, seed: u64) -> u64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    propensity_model::mix(h ^ seed)
}

fn counts(y: &[u8]) -> ClassCounts {
    let positives = y.iter().filter(|l| **l == 1).count();
    ClassCounts {
        rows: y.len(),
        positives,
        negatives: y.len() - positives,
    }
}

/// Hash of the training data: every training cutoff's time, labels and feature values.
fn fingerprint(d: &propensity_engine::dataset::Dataset, names: &[String]) -> String {
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        h.update([0]);
    }
    for s in &d.training {
        h.update(s.cutoff.to_le_bytes());
        h.update(&s.labels);
        for v in &s.values {
            h.update(v.to_bits().to_le_bytes());
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs a job once at `opts.as_of`.
pub fn run(
    job: &Job,
    job_dir: &Path,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<RunSummary, RunError> {
    let started = Utc::now();
    let as_of_us = opts.as_of.timestamp_micros();
    let run_id = format!(
        "{}-{}",
        opts.as_of.format("%Y%m%dT%H%M%SZ"),
        started.format("%Y%m%dT%H%M%S%.3fZ")
    )
    .replace('.', "");
    let _run_span = tracing::info_span!("run", job = %job.name, run_id = %run_id).entered();
    tracing::info!(as_of = %opts.as_of, force_train = opts.force_train, "run started");
    let config_hash = config_hash(job);
    let training_hash = training_hash(job);
    let settings = settings(job);
    let registry = Registry::open(&opts.state_dir, &job.name)?;
    let mut timings = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let warn = |w: &mut Vec<String>, m: String| {
        progress.warn(&m);
        w.push(m);
    };

    // Load and check.
    let stage = Stage::begin(progress, &mut timings, "load", None);
    let mut engine_opts = EngineOptions::from_job(job, job_dir)?;
    engine_opts.env = opts.env.clone();
    engine_opts.plugin_dirs =
        propensity_engine::plugin::plugin_dirs(&opts.env, Some(&opts.state_dir));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::internal(format!("cannot start the runtime: {e}")))?;
    let loaded = rt.block_on(async {
        let engine = Engine::new(engine_opts)?;
        engine.load(job, job_dir, opts.as_of).await
    })?;
    let checks = &loaded.report;
    stage.end(&format!(
        "{} events of {} profiles",
        checks.events.counts.events_kept, checks.events.counts.profiles
    ));
    if !checks.passed {
        let lines: Vec<String> = checks
            .problems
            .iter()
            .map(|f| format!("{} (fix: {})", f.message, f.hint))
            .collect();
        return Err(RunError::user(format!(
            "the data checks failed:\n  - {}",
            lines.join("\n  - ")
        ))
        .hint("`propensity dry-run` prints the whole data-check report"));
    }
    for f in &checks.warnings {
        warn(&mut warnings, format!("data: {}", f.message));
    }

    // Features for every cutoff.
    let stage = Stage::begin(progress, &mut timings, "features", None);
    let mut dataset = loaded.dataset()?;
    // Profiles erased with `propensity forget` are left out of training and scoring.
    let suppressed = suppression::load(&opts.state_dir)?;
    let mut erased = 0usize;
    if !suppressed.is_empty() {
        let drop: Vec<bool> = loaded
            .store
            .profile_ids
            .iter()
            .map(|id| suppressed.contains(&suppression::digest(id)))
            .collect();
        erased = drop.iter().filter(|d| **d).count();
        for snap in dataset
            .training
            .iter_mut()
            .chain(std::iter::once(&mut dataset.scoring))
        {
            snap.retain(|p| !drop[p as usize]);
        }
    }
    let names: Vec<String> = loaded
        .features
        .catalogue
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let labels: Vec<String> = loaded
        .features
        .catalogue
        .features
        .iter()
        .map(|f| f.label.clone())
        .collect();
    stage.end(&format!(
        "{} features, {} training cutoffs, {} profiles to score{}",
        names.len(),
        dataset.training.len(),
        dataset.scoring.rows.len(),
        if erased > 0 {
            format!(" ({erased} erased profiles left out)")
        } else {
            String::new()
        }
    ));

    // Train when due.
    // An unreadable champion (damaged file, older format) must not stop the job: a new
    // model is trained instead, and the run says so.
    let champion = match registry.champion() {
        Ok(c) => c,
        Err(e) => {
            warn(
                &mut warnings,
                format!(
                    "the champion model cannot be used ({}); training a new one",
                    e.message
                ),
            );
            None
        }
    };
    let due = opts.force_train
        || champion
            .as_ref()
            .is_none_or(|c| c.training_hash != training_hash);
    let mut rejected: Option<ModelCard> = None;
    let mut scoring_model: Option<StoredModel> = None;
    let mut fallback_model: Option<StoredModel> = None;
    // The training split, kept when training ran (the fallback after a failed gate reuses it).
    let mut trained_split: Option<Split> = None;
    let training: TrainingOutcome;
    if due {
        // Progress counts search candidates, or trees without a search.
        let total = if settings.search_budget.is_some() {
            None
        } else {
            Some(settings.fixed.num_trees.unwrap_or(settings.gbdt.num_trees) as u64)
        };
        let stage = Stage::begin(
            progress,
            &mut timings,
            "train",
            total.filter(|_| settings.algorithm == Algorithm::Gbdt),
        );
        let sp = split(&dataset, &loaded.plan);
        let data = train_data(&sp, &dataset, &names, &labels);
        let out = pipeline::train(&data, &settings, &|done, _| progress.advance(done as u64))
            .map_err(|e| RunError::user(format!("training failed: {e}")))?;
        let fp = fingerprint(&dataset, &names);
        let algorithm = out.scorer.model.algorithm().to_owned();
        let version = format!(
            "{}-{}",
            opts.as_of.format("%Y%m%d"),
            &sha256_hex(format!("{training_hash}/{fp}/{algorithm}/{}", settings.seed).as_bytes())
                [..8]
        );
        let auc = out.metrics.as_ref().and_then(|m| m.auc);
        let fallback = out.scorer.model.is_fallback();
        let passed = !fallback && auc.is_some_and(|a| a >= job.model.min_auc);
        let reason = match (fallback, auc) {
            (true, _) => format!(
                "not promoted: a fallback model ({})",
                out.fallback_reason.clone().unwrap_or_default()
            ),
            (false, None) => {
                "not promoted: the validation cutoff lacks positives or negatives, so the model could not be validated".to_owned()
            }
            (false, Some(a)) if passed => {
                format!("validation AUC {a:.3} ≥ quality_gate.min_auc {:.3}", job.model.min_auc)
            }
            (false, Some(a)) => {
                format!("validation AUC {a:.3} < quality_gate.min_auc {:.3}", job.model.min_auc)
            }
        };
        let data_from = rfc3339(loaded.plan.needed_from());
        let card = ModelCard {
            job: job.name.clone(),
            model_version: version.clone(),
            algorithm: algorithm.clone(),
            confidence: if fallback {
                Confidence::Low
            } else {
                Confidence::Normal
            },
            fallback_reason: out.fallback_reason.clone(),
            trained_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            as_of: rfc3339(as_of_us),
            data_from,
            data_to: rfc3339(
                loaded
                    .plan
                    .training
                    .first()
                    .map_or(as_of_us, |c| c + loaded.plan.window),
            ),
            window: job.goal.window().to_string(),
            cutoffs: sp.cutoffs.clone(),
            train: counts(&sp.fit_y),
            validation: counts(
                dataset
                    .training
                    .get(sp.validation)
                    .map_or(&[][..], |v| &v.labels[..]),
            ),
            protocol: Some(protocol(&loaded.plan, &sp, &dataset, out.out_of_time)),
            search: out.search.clone(),
            expected: {
                let x = Matrix::new(&dataset.scoring.values, dataset.scoring.width);
                let m = pipeline::margins(&out.scorer.model, x);
                let p: Vec<f64> = m.iter().map(|v| out.scorer.probability(*v)).collect();
                (!p.is_empty() && !out.scorer.model.is_fallback())
                    .then(|| propensity_model::metrics::expected(&m, &p))
            },
            btyd: dataset
                .btyd
                .iter()
                .map(|b| propensity_model::card::BtydSummary {
                    cutoff: rfc3339(b.cutoff),
                    fit: b.fit,
                })
                .collect(),
            features: names.clone(),
            seed: settings.seed,
            config_hash: training_hash.clone(),
            data_fingerprint: fp,
            params: out.params.clone(),
            calibration: match out.calibration {
                CalibrationMethod::Auto | CalibrationMethod::Isotonic => "isotonic",
                CalibrationMethod::Platt => "platt",
                CalibrationMethod::Spread => "spread",
                CalibrationMethod::None => "none",
            }
            .into(),
            metrics: out.metrics.clone(),
            importance: out.importance.clone(),
            top_factors_by_bucket: out.top_factors_by_bucket.clone(),
            quality: Quality {
                min_auc: job.model.min_auc,
                passed,
                grade: if fallback {
                    "fallback".into()
                } else {
                    propensity_model::card::grade(auc, job.model.min_auc).into()
                },
                reason: reason.clone(),
            },
            timings: out.timings.clone(),
        };
        let stored = StoredModel {
            format: registry::MODEL_FORMAT,
            version: version.clone(),
            training_hash: training_hash.clone(),
            features: names.clone(),
            labels: labels.clone(),
            model: out.scorer.model,
            calibrator: out.scorer.calibrator,
            card,
        };
        let summary = match auc {
            Some(a) => format!("{algorithm} {version}: validation AUC {a:.3}"),
            None => format!("{algorithm} {version}: not validated"),
        };
        stage.end(&summary);
        trained_split = Some(sp);
        if fallback {
            let why = stored.card.fallback_reason.clone().unwrap_or_default();
            if let Some(c) = &champion {
                warn(
                    &mut warnings,
                    format!(
                        "not retrained: {why}; the champion {} keeps scoring",
                        c.version
                    ),
                );
                training = TrainingOutcome {
                    status: TrainingStatus::FallbackKeptChampion,
                    message: format!(
                        "too little data to retrain ({why}); champion {} scored",
                        c.version
                    ),
                };
            } else {
                warn(
                    &mut warnings,
                    format!(
                        "too little data to train: {why}. Scores come from a simple recency/frequency/monetary ranking and are marked confidence = low"
                    ),
                );
                training = TrainingOutcome {
                    status: TrainingStatus::Fallback,
                    message: format!(
                        "too little data to train ({why}): the fallback ranking scored"
                    ),
                };
                fallback_model = Some(stored);
            }
        } else {
            registry.save(&stored)?;
            if passed {
                registry.promote(&version)?;
                training = TrainingOutcome {
                    status: TrainingStatus::TrainedPromoted,
                    message: format!("{version} trained and promoted: {reason}"),
                };
            } else {
                let kept = champion.as_ref().map(|c| c.version.clone());
                warn(
                    &mut warnings,
                    format!(
                        "quality gate failed: {version} {reason}; {}",
                        match &kept {
                            Some(v) => format!("the previous champion {v} keeps scoring"),
                            None => "no earlier model passed, so the fallback ranking scores (confidence = low)".into(),
                        }
                    ),
                );
                training = TrainingOutcome {
                    status: TrainingStatus::TrainedRejected,
                    message: format!("{version} kept for inspection, not promoted: {reason}"),
                };
                rejected = Some(stored.card.clone());
            }
        }
        // Score with what the registry holds, read back: what is stored is what scores.
        if let Some(v) = registry.champion_version()? {
            scoring_model = Some(registry.load(&v)?);
        }
    } else {
        let c = champion
            .as_ref()
            .map(|c| c.version.clone())
            .unwrap_or_default();
        training = TrainingOutcome {
            status: TrainingStatus::NotDue,
            message: format!(
                "champion {c} scored (trained on this configuration; --train retrains)"
            ),
        };
        scoring_model = champion;
    }
    let stored = match (scoring_model, fallback_model) {
        (Some(m), _) => m,
        (None, Some(f)) => f,
        (None, None) => {
            // The gate failed and there is no champion: rank with the fallback.
            let sp = trained_split
                .take()
                .unwrap_or_else(|| split(&dataset, &loaded.plan));
            let mut s = settings.clone();
            s.min_positives = usize::MAX;
            let out = pipeline::train(&train_data(&sp, &dataset, &names, &labels), &s, &|_, _| {})
                .map_err(RunError::internal)?;
            let mut card = rejected
                .clone()
                .ok_or_else(|| RunError::internal("no model to score with"))?;
            // `fallback_btyd` or `fallback_rfm`, whichever ranking the fallback fitted.
            card.algorithm = out.scorer.model.algorithm().into();
            card.confidence = Confidence::Low;
            card.fallback_reason = Some("no model has passed the quality gate yet".into());
            card.model_version = format!("{}-fallback", card.model_version);
            // What scores is the fallback: its parameters, no calibration, no search.
            card.params = out.params;
            card.calibration = "none".into();
            card.search = None;
            card.metrics = out.metrics;
            card.importance = out.importance;
            card.top_factors_by_bucket = out.top_factors_by_bucket;
            StoredModel {
                format: registry::MODEL_FORMAT,
                version: card.model_version.clone(),
                training_hash: training_hash.clone(),
                features: names.clone(),
                labels: labels.clone(),
                model: out.scorer.model,
                calibrator: Calibrator::None,
                card,
            }
        }
    };
    let confidence = if stored.model.is_fallback() {
        Confidence::Low
    } else {
        Confidence::Normal
    };

    // Score and explain.
    let snap = &dataset.scoring;
    let stage = Stage::begin(
        progress,
        &mut timings,
        "score",
        Some(snap.rows.len() as u64),
    );
    let map: Vec<Option<usize>> = stored
        .features
        .iter()
        .map(|f| names.iter().position(|n| n == f))
        .collect();
    let missing: Vec<&str> = stored
        .features
        .iter()
        .zip(&map)
        .filter(|(_, m)| m.is_none())
        .map(|(f, _)| f.as_str())
        .collect();
    if !missing.is_empty() {
        warn(
            &mut warnings,
            format!(
                "the data no longer has {} feature(s) model {} uses (scored as missing): {}",
                missing.len(),
                stored.version,
                missing.join(", ")
            ),
        );
    }
    let identity = map.iter().enumerate().all(|(j, m)| *m == Some(j)) && map.len() == names.len();
    let aligned: Vec<f32>;
    let x = if identity {
        Matrix::new(&snap.values, snap.width)
    } else {
        let n = snap.rows.len();
        let mut v = Vec::with_capacity(n * map.len());
        for i in 0..n {
            let row = &snap.values[i * snap.width..(i + 1) * snap.width];
            v.extend(map.iter().map(|m| m.map_or(f32::NAN, |j| row[j])));
        }
        aligned = v;
        Matrix::new(&aligned, map.len())
    };
    let scorer = Scorer::new(stored.model.clone(), stored.calibrator.clone());
    // Equal scores are ordered by a hash of the profile id (see `pipeline::percentiles`).
    let keys: Vec<u64> = snap
        .rows
        .iter()
        .map(|&p| id_key(&loaded.store.profile_ids[p as usize], settings.seed))
        .collect();
    let scored = pipeline::score(
        &scorer,
        x,
        &keys,
        settings.top_factors,
        settings.high,
        settings.medium,
        &|done, _| progress.advance(done as u64),
    );
    stage.end(&format!(
        "{} profiles scored with {}",
        scored.len(),
        stored.version
    ));

    // Segments.
    let ids: Vec<&str> = snap
        .rows
        .iter()
        .map(|&p| loaded.store.profile_ids[p as usize].as_str())
        .collect();
    let segs = segments::effective(job);
    let stage = Stage::begin(progress, &mut timings, "segment", None);
    let (membership, seg_warnings) = segments::membership(
        &rt,
        &segs,
        &loaded,
        &segments::Rows {
            rows: &snap.rows,
            ids: &ids,
            scored: &scored,
            features: &stored.features,
            model_version: &stored.version,
            confidence: confidence.as_str(),
        },
        settings.seed,
    )?;
    for w in seg_warnings {
        warn(&mut warnings, w);
    }
    let segment_sizes: Vec<SegmentSize> = segs
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let k = k as u16;
            let members = membership.member.iter().filter(|m| m.contains(&k)).count();
            let held = membership.held.iter().filter(|m| m.contains(&k)).count();
            SegmentSize {
                name: s.name.clone(),
                profiles: members - held,
                holdout: held,
                holdout_fraction: s.holdout,
            }
        })
        .collect();
    stage.end(
        &segment_sizes
            .iter()
            .map(|s| format!("{} {}", s.name, s.profiles + s.holdout))
            .collect::<Vec<_>>()
            .join(", "),
    );

    // Write the run's score table.
    let stage = Stage::begin(progress, &mut timings, "write", None);
    let goal = goal_text(job);
    let cols = scores::RunColumns {
        job: &job.name,
        goal: &goal,
        as_of_us,
        model_version: &stored.version,
        config_hash: &config_hash,
        confidence: confidence.as_str(),
        names: &stored.features,
        labels: &stored.labels,
    };
    let batch = scores::batch(&cols, &ids, &scored, &membership, &|i, j| x.get(i, j))?;
    let bytes = scores::parquet_bytes(&batch)?;
    let run_dir = registry.run_dir(&run_id);
    let scores_path = run_dir.join("scores.parquet");
    write_atomic(&scores_path, &bytes)?;
    let mut outputs = vec![Output {
        kind: "scores".into(),
        location: scores_path.display().to_string(),
        rows: Some(scored.len()),
    }];
    stage.end(&scores_path.display().to_string());

    // Publish to every sink; one failing sink does not stop the others.
    let stage = Stage::begin(
        progress,
        &mut timings,
        "publish",
        Some(job.sinks.len() as u64),
    );
    let publication = propensity_sinks::Publication {
        job: job.name.clone(),
        id: propensity_sinks::publication_id(
            &opts.as_of.format("%Y%m%dT%H%M%SZ").to_string(),
            &bytes,
        ),
        run_id: run_id.clone(),
        as_of: rfc3339(as_of_us),
        batch,
        segments: segs.iter().map(|s| s.name.clone()).collect(),
        state_dir: registry.root().to_path_buf(),
        failpoint: (opts.env)("PROPENSITY_FAILPOINT"),
    };
    let ctx = propensity_sinks::Context {
        job_dir: job_dir.to_path_buf(),
        env: opts.env.clone(),
        state_dir: Some(registry.root().to_path_buf()),
    };
    let publications = rt.block_on(publish_all(job, &ctx, &publication, progress));
    let mut failed_sinks = Vec::new();
    for p in &publications {
        match p.status {
            propensity_sinks::Status::Failed => {
                failed_sinks.push(format!("{}: {}", p.sink, p.message));
                warn(
                    &mut warnings,
                    format!("sink `{}` ({}) failed: {}", p.sink, p.kind, p.message),
                );
            }
            _ => outputs.push(Output {
                kind: format!("sink:{}", p.sink),
                location: p.location.clone(),
                rows: Some(p.rows),
            }),
        }
    }
    stage.end(&format!(
        "{} of {} sinks published ({})",
        publications
            .iter()
            .filter(|p| p.status != propensity_sinks::Status::Failed)
            .count(),
        publications.len(),
        publication.id
    ));

    // Report.
    let n = scored.len();
    let mut histogram = vec![0u64; 20];
    for s in &scored {
        histogram[(usize::from(s.score) / 5).min(19)] += 1;
    }
    let buckets: Vec<BucketSize> = ["high", "medium", "low"]
        .iter()
        .map(|b| {
            let rows: Vec<&pipeline::Scored> = scored.iter().filter(|s| s.bucket == *b).collect();
            BucketSize {
                bucket: (*b).into(),
                profiles: rows.len(),
                share: rows.len() as f64 / n.max(1) as f64,
                mean_probability: rows.iter().map(|s| s.probability).sum::<f64>()
                    / rows.len().max(1) as f64,
                min_percentile: rows
                    .iter()
                    .map(|s| u32::from(s.percentile))
                    .min()
                    .unwrap_or(0),
                max_percentile: rows
                    .iter()
                    .map(|s| u32::from(s.percentile))
                    .max()
                    .unwrap_or(0),
            }
        })
        .collect();
    let groups: Vec<(&str, Vec<&[pipeline::Factor]>)> = ["high", "medium", "low"]
        .iter()
        .map(|b| {
            (
                *b,
                scored
                    .iter()
                    .filter(|s| s.bucket == *b)
                    .map(|s| s.factors.as_slice())
                    .collect(),
            )
        })
        .collect();
    let top_factors_by_bucket =
        pipeline::summarize_factors(&groups, &stored.features, &stored.labels);
    let c = &checks.events.counts;
    let report_json = run_dir.join("report.json");
    let report_html = run_dir.join("report.html");
    let card_json = run_dir.join("card.json");
    outputs.push(Output {
        kind: "model_card".into(),
        location: card_json.display().to_string(),
        rows: None,
    });
    outputs.push(Output {
        kind: "report_json".into(),
        location: report_json.display().to_string(),
        rows: None,
    });
    outputs.push(Output {
        kind: "report_html".into(),
        location: report_html.display().to_string(),
        rows: None,
    });
    let mut report = RunReport {
        job: job.name.clone(),
        description: job.description.clone(),
        run_id: run_id.clone(),
        as_of: rfc3339(as_of_us),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: String::new(),
        model_version: stored.version.clone(),
        algorithm: stored.model.algorithm().into(),
        confidence,
        training,
        card: stored.card.clone(),
        rejected_card: rejected,
        scored: n,
        mean_probability: scored.iter().map(|s| s.probability).sum::<f64>() / n.max(1) as f64,
        expected: {
            let m: Vec<f64> = scored.iter().map(|s| s.margin).collect();
            let p: Vec<f64> = scored.iter().map(|s| s.probability).collect();
            (n > 0 && !stored.model.is_fallback())
                .then(|| propensity_model::metrics::expected(&m, &p))
        },
        buckets,
        score_histogram: histogram,
        top_factors_by_bucket,
        data: DataSummary {
            events_read: c.rows_read,
            events_used: c.events_kept,
            events_rejected: c.invalid(),
            profiles: loaded.store.profiles(),
            eligible: snap.rows.len(),
            findings: checks
                .warnings
                .iter()
                .map(|f| format!("warning: {}", f.message))
                .collect(),
        },
        segments: segment_sizes,
        publication: publication.id.clone(),
        publications,
        timings,
        outputs,
        warnings,
    };
    report.finished_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let json = |v: &dyn erased::Json| v.to_vec();
    write_atomic(&card_json, &json(&report.card))?;
    write_atomic(&report_json, &json(&report))?;
    write_atomic(&report_html, html::render(&report).as_bytes())?;
    registry.set_latest_run(&LatestRun {
        run_id,
        as_of: report.as_of.clone(),
        model_version: report.model_version.clone(),
        job_file: opts.job_file.as_ref().map(|f| {
            std::path::absolute(f)
                .unwrap_or_else(|_| f.clone())
                .display()
                .to_string()
        }),
    })?;
    tracing::info!(
        training = %report.training.status,
        model_version = %report.model_version,
        scored = report.scored,
        failed_sinks = failed_sinks.len(),
        "run finished"
    );
    Ok(RunSummary {
        report,
        failed_sinks,
        run_dir,
        scores_path,
        report_path: report_html,
    })
}

/// Publishes to every sink of the job concurrently; each sink's outcome is recorded, a
/// failure included (it never stops the other sinks).
pub async fn publish_all(
    job: &Job,
    ctx: &propensity_sinks::Context,
    publication: &propensity_sinks::Publication,
    progress: &dyn Progress,
) -> Vec<PublicationRecord> {
    let futures = propensity_sinks::build_all(job, ctx)
        .into_iter()
        .zip(&job.sinks)
        .map(|((name, sink), spec)| async move {
            let started = std::time::Instant::now();
            let kind = spec.kind.type_name().to_owned();
            let result = match sink {
                Ok(sink) => sink.publish(publication).await,
                Err(e) => Err(e),
            };
            let seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(p) => PublicationRecord {
                    sink: name,
                    kind,
                    status: p.status,
                    rows: p.rows,
                    location: p.location,
                    message: p.detail.unwrap_or_default(),
                    seconds,
                },
                Err(e) => PublicationRecord {
                    sink: name,
                    kind,
                    status: propensity_sinks::Status::Failed,
                    rows: 0,
                    location: String::new(),
                    message: e.message,
                    seconds,
                },
            }
        });
    let out = futures::future::join_all(futures).await;
    progress.advance(out.len() as u64);
    out
}

mod erased {
    /// Pretty JSON of any serialisable value, newline-terminated.
    pub trait Json {
        fn to_vec(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_vec(&self) -> Vec<u8> {
            let mut b = serde_json::to_vec_pretty(self).unwrap_or_default();
            b.push(b'\n');
            b
        }
    }
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
