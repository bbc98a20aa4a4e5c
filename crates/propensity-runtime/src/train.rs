//! The `train` stage and the choice of the scoring model: train when due (a changed training
//! configuration, no champion, or `--train`), apply the quality gate, save and promote in the
//! registry, and fall back to a simple ranking when there is too little data or no model has
//! passed the gate yet.

use propensity_core::Goal;
use propensity_engine::dataset::Dataset;
use propensity_engine::{CutoffPlan, rfc3339};
use propensity_model::calibrate::Calibrator;
use propensity_model::card::{Confidence, CutoffSummary, ModelCard};
use propensity_model::gbdt::GbdtParams;
use propensity_model::pipeline::{self, Algorithm, CalibrationMethod, Settings};
use propensity_model::{Matrix, Stack};
use sha2::{Digest, Sha256};

use crate::RunError;
use crate::context::RunContext;
use crate::load::Inputs;
use crate::registry::{self, StoredModel};
use crate::report::{TrainingOutcome, TrainingStatus};

/// The model that scores this run, and what training did.
pub(crate) struct Chosen {
    pub model: StoredModel,
    pub training: TrainingOutcome,
    /// The card of a model trained in this run that failed the quality gate.
    pub rejected: Option<ModelCard>,
}

impl Chosen {
    /// `low` when a fallback ranking scores.
    pub fn confidence(&self) -> Confidence {
        if self.model.model.is_fallback() {
            Confidence::Low
        } else {
            Confidence::Normal
        }
    }
}

/// What became of training in this run, before the scoring model is read back.
enum Training {
    /// Training was not due: the champion scores.
    NotDue { champion: Option<Box<StoredModel>> },
    /// Trained, passed the gate, saved and promoted.
    Promoted { version: String, reason: String },
    /// Trained, failed the gate: saved for inspection; the champion, if any, keeps scoring.
    Rejected {
        version: String,
        reason: String,
        card: Box<ModelCard>,
    },
    /// Too little data to retrain: the champion keeps scoring.
    FallbackKeptChampion { why: String, champion: String },
    /// Too little data to train and no champion: the fallback ranking scores.
    Fallback {
        why: String,
        model: Box<StoredModel>,
    },
}

/// Trains when due and chooses the model that scores.
pub(crate) fn choose(cx: &mut RunContext<'_>, inp: &Inputs) -> Result<Chosen, RunError> {
    // An unreadable champion (damaged file, older format) must not stop the job: a new
    // model is trained instead, and the run says so.
    let champion = match cx.registry.champion() {
        Ok(c) => c,
        Err(e) => {
            cx.warn(format!(
                "the champion model cannot be used ({}); training a new one",
                e.message
            ));
            None
        }
    };
    let due = cx.opts.force_train
        || champion
            .as_ref()
            .is_none_or(|c| c.training_hash != cx.training_hash);
    if !due {
        return read_back(
            cx,
            inp,
            Training::NotDue {
                champion: champion.map(Box::new),
            },
            None,
        );
    }
    let (split, trained) = train(cx, inp)?;
    let outcome = gate(cx, trained, champion.as_ref().map(|c| c.version.clone()))?;
    read_back(cx, inp, outcome, Some(split))
}

/// The `train` stage: fits on the purged cutoff plan and assembles the model card.
fn train(cx: &mut RunContext<'_>, inp: &Inputs) -> Result<(Split, StoredModel), RunError> {
    let settings = &cx.settings;
    // Progress counts search candidates, or trees without a search.
    let total = if settings.search_budget.is_some() {
        None
    } else {
        Some(settings.fixed.num_trees.unwrap_or(settings.gbdt.num_trees) as u64)
    };
    let stage = cx.stage(
        "train",
        total.filter(|_| settings.algorithm == Algorithm::Gbdt),
    );
    let d = &inp.dataset;
    let sp = split(d, &inp.loaded.plan);
    let data = train_data(&sp, d, &inp.names, &inp.labels);
    let progress = cx.progress;
    let out = pipeline::train(&data, settings, &|done, _| progress.advance(done as u64))
        .map_err(|e| RunError::user(format!("training failed: {e}")))?;
    let fp = fingerprint(d, &inp.names);
    let algorithm = out.scorer.model.algorithm();
    let version = format!(
        "{}-{}",
        cx.opts.as_of.format("%Y%m%d"),
        &sha256_hex(format!("{}/{fp}/{algorithm}/{}", cx.training_hash, settings.seed).as_bytes())
            [..8]
    );
    let card = crate::card::trained(cx, inp, &sp, &out, &version, fp);
    let summary = match out.metrics.as_ref().and_then(|m| m.auc) {
        Some(a) => format!("{algorithm} {version}: validation AUC {a:.3}"),
        None => format!("{algorithm} {version}: not validated"),
    };
    let stored = StoredModel {
        format: registry::MODEL_FORMAT,
        version,
        training_hash: cx.training_hash.clone(),
        features: inp.names.clone(),
        labels: inp.labels.clone(),
        model: out.scorer.model,
        calibrator: out.scorer.calibrator,
        card,
    };
    cx.done(stage, &summary);
    Ok((sp, stored))
}

/// The quality gate and the registry: what becomes of the model just trained.
fn gate(
    cx: &mut RunContext<'_>,
    stored: StoredModel,
    champion: Option<String>,
) -> Result<Training, RunError> {
    let version = stored.version.clone();
    let reason = stored.card.quality.reason.clone();
    if stored.model.is_fallback() {
        let why = stored.card.fallback_reason.clone().unwrap_or_default();
        return Ok(match champion {
            Some(champion) => {
                cx.warn(format!(
                    "not retrained: {why}; the champion {champion} keeps scoring"
                ));
                Training::FallbackKeptChampion { why, champion }
            }
            None => {
                cx.warn(format!(
                    "too little data to train: {why}. Scores come from a simple recency/frequency/monetary ranking and are marked confidence = low"
                ));
                Training::Fallback {
                    why,
                    model: Box::new(stored),
                }
            }
        });
    }
    cx.registry.save(&stored)?;
    if stored.card.quality.passed {
        cx.registry.promote(&version)?;
        return Ok(Training::Promoted { version, reason });
    }
    cx.warn(format!(
        "quality gate failed: {version} {reason}; {}",
        match &champion {
            Some(v) => format!("the previous champion {v} keeps scoring"),
            None =>
                "no earlier model passed, so the fallback ranking scores (confidence = low)".into(),
        }
    ));
    Ok(Training::Rejected {
        version,
        reason,
        card: Box::new(stored.card),
    })
}

/// The scoring model: the champion as the registry holds it, read back (what is stored is
/// what scores), else the fallback.
fn read_back(
    cx: &mut RunContext<'_>,
    inp: &Inputs,
    outcome: Training,
    split: Option<Split>,
) -> Result<Chosen, RunError> {
    let stored_champion = || -> Result<Option<StoredModel>, RunError> {
        match cx.registry.champion_version()? {
            Some(v) => Ok(Some(cx.registry.load(&v)?)),
            None => Ok(None),
        }
    };
    let (status, message, rejected, model) = match outcome {
        Training::NotDue { champion } => {
            let c = champion
                .as_ref()
                .map(|c| c.version.clone())
                .unwrap_or_default();
            (
                TrainingStatus::NotDue,
                format!("champion {c} scored (trained on this configuration; --train retrains)"),
                None,
                champion.map(|c| *c),
            )
        }
        Training::Promoted { version, reason } => (
            TrainingStatus::TrainedPromoted,
            format!("{version} trained and promoted: {reason}"),
            None,
            stored_champion()?,
        ),
        Training::Rejected {
            version,
            reason,
            card,
        } => (
            TrainingStatus::TrainedRejected,
            format!("{version} kept for inspection, not promoted: {reason}"),
            Some(*card),
            stored_champion()?,
        ),
        Training::FallbackKeptChampion { why, champion } => (
            TrainingStatus::FallbackKeptChampion,
            format!("too little data to retrain ({why}); champion {champion} scored"),
            None,
            stored_champion()?,
        ),
        Training::Fallback { why, model } => {
            let model = stored_champion()?.unwrap_or(*model);
            (
                TrainingStatus::Fallback,
                format!("too little data to train ({why}): the fallback ranking scored"),
                None,
                Some(model),
            )
        }
    };
    let model = match model {
        Some(m) => m,
        // The gate failed and there is no champion: rank with the fallback.
        None => fallback(cx, inp, split, rejected.clone())?,
    };
    Ok(Chosen {
        model,
        training: TrainingOutcome { status, message },
        rejected,
    })
}

/// The fallback ranking, fitted on the same cutoffs, under the rejected model's card.
fn fallback(
    cx: &RunContext<'_>,
    inp: &Inputs,
    split: Option<Split>,
    rejected: Option<ModelCard>,
) -> Result<StoredModel, RunError> {
    let sp = split.unwrap_or_else(|| self::split(&inp.dataset, &inp.loaded.plan));
    let mut s = cx.settings.clone();
    s.min_positives = usize::MAX;
    let data = train_data(&sp, &inp.dataset, &inp.names, &inp.labels);
    let out = pipeline::train(&data, &s, &|_, _| {}).map_err(RunError::internal)?;
    let card = crate::card::fallback(
        rejected.ok_or_else(|| RunError::internal("no model to score with"))?,
        &out,
    );
    Ok(StoredModel {
        format: registry::MODEL_FORMAT,
        version: card.model_version.clone(),
        training_hash: cx.training_hash.clone(),
        features: inp.names.clone(),
        labels: inp.labels.clone(),
        model: out.scorer.model,
        calibrator: Calibrator::None,
        card,
    })
}

/// The model settings of a job.
pub(crate) fn settings(job: &propensity_core::Job) -> Settings {
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
            Goal::Conditions(c) if c.outcome == propensity_core::enums::GoalOutcome::WillNotOccur
        ),
        lookback_days: (job.features.lookback.as_secs() as f64 / 86_400.0).min(3650.0),
        top_factors: job.output.top_factors as usize,
        high: job.output.high,
        medium: job.output.medium,
    }
}

/// The training cutoffs laid out by the purged protocol (see `CutoffPlan`): which snapshots
/// search, which validates, which fit the scoring model, and their labels stacked.
pub(crate) struct Split {
    pub validation: usize,
    pub search: Vec<usize>,
    pub fit: Vec<usize>,
    pub search_y: Vec<u8>,
    pub fit_y: Vec<u8>,
    pub cutoffs: Vec<CutoffSummary>,
}

fn split(d: &Dataset, plan: &CutoffPlan) -> Split {
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
    d: &'a Dataset,
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

/// Hash of the training data: every training cutoff's time, labels and feature values.
fn fingerprint(d: &Dataset, names: &[String]) -> String {
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

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
