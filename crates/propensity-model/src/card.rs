//! The model card: what a trained model is, what it was trained on, and how good it is. One
//! per model version, stored next to the model in the registry and embedded in run reports.

use serde::{Deserialize, Serialize};

use crate::metrics::{CalibrationBin, Decile};

/// How much to trust a model's scores: `low` when the fallback ranking scored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    Normal,
    Low,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

impl std::fmt::Display for Confidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub job: String,
    pub model_version: String,
    /// `gbdt`, `logistic`, `svm`, `fallback_btyd` or `fallback_rfm`.
    pub algorithm: crate::pipeline::ModelAlgorithm,
    pub confidence: Confidence,
    /// Why the fallback model was used (too few positives, …).
    pub fallback_reason: Option<String>,
    /// RFC 3339; informational (not part of any score row).
    pub trained_at: String,
    /// The as-of time of the run that trained the model (RFC 3339).
    pub as_of: String,
    /// Events read for training: `[from, to)` (RFC 3339).
    pub data_from: String,
    pub data_to: String,
    /// The outcome window, e.g. `30d`.
    pub window: String,
    pub cutoffs: Vec<CutoffSummary>,
    /// Rows, positives and negatives of the cutoffs the scoring model trained on.
    pub train: ClassCounts,
    /// Rows, positives and negatives of the validation cutoff.
    pub validation: ClassCounts,
    /// Feature names the model uses, in column order.
    pub features: Vec<String>,
    pub seed: u64,
    /// Hash of the job's training-relevant configuration.
    pub config_hash: String,
    /// Hash of the training data (labels and feature values).
    pub data_fingerprint: String,
    /// Algorithm parameters as trained (e.g. trees kept after early stopping).
    pub params: serde_json::Value,
    /// How probabilities were calibrated (never `auto`: the method `auto` chose).
    pub calibration: crate::pipeline::CalibrationMethod,
    /// Metrics on the validation cutoff; `None` when there was nothing to validate on.
    pub metrics: Option<Metrics>,
    /// Mean |contribution| per feature on the validation cutoff, largest first.
    pub importance: Vec<Importance>,
    /// The factors that most often lead the reasons, per bucket (validation cutoff).
    pub top_factors_by_bucket: Vec<BucketFactors>,
    pub quality: Quality,
    /// Time spent per training stage, in seconds.
    pub timings: Vec<(String, f64)>,
    /// How the training cutoffs were used (cards of older models have none).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// The capacity search, when one ran.
    #[serde(default)]
    pub search: Option<crate::search::SearchRecord>,
    /// The BG/NBD model of each cutoff (the buy-till-you-die features).
    #[serde(default)]
    pub btyd: Vec<BtydSummary>,
    /// What the scores of the training run are expected to achieve on the next window (AUC,
    /// PR-AUC, lift, base rate), from their calibrated probabilities; `metrics` holds what the
    /// validated model measured on the validation cutoff.
    #[serde(default)]
    pub expected: Option<crate::metrics::Expected>,
}

/// The training protocol: which cutoffs chose the settings, which validated, which fit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Protocol {
    /// `purged out-of-time`, or `split by profile (…)` when the history is too short.
    pub kind: String,
    pub description: String,
    pub validation_cutoff: String,
    /// Cutoffs of the models judged on the validation cutoff (RFC 3339, newest first).
    pub search_cutoffs: Vec<String>,
    /// Cutoffs of the model that scores.
    pub fit_cutoffs: Vec<String>,
    /// Gap between the newest search cutoff and the validation cutoff: the outcome window.
    pub embargo: String,
    /// Time between cutoffs.
    pub stride: String,
    /// Rows of the search cutoffs.
    pub search_rows: ClassCounts,
}

/// The BG/NBD model fitted at one cutoff (`None`: too little to fit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BtydSummary {
    pub cutoff: String,
    pub fit: Option<crate::btyd::Fit>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CutoffSummary {
    /// RFC 3339.
    pub cutoff: String,
    /// `train` or `validation`.
    pub role: String,
    pub rows: usize,
    pub positives: usize,
    pub negatives: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ClassCounts {
    pub rows: usize,
    pub positives: usize,
    pub negatives: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub auc: Option<f64>,
    pub pr_auc: Option<f64>,
    pub log_loss: f64,
    pub brier: f64,
    pub expected_calibration_error: f64,
    /// Observed positive rate on the validation cutoff.
    pub base_rate: f64,
    /// Mean calibrated probability on the validation cutoff.
    pub mean_probability: f64,
    pub calibration_curve: Vec<CalibrationBin>,
    pub deciles: Vec<Decile>,
    /// Positive rate in the top 10 % by score over the base rate.
    #[serde(default)]
    pub lift_at_10: Option<f64>,
    /// Positives and negatives the metrics were measured on.
    #[serde(default)]
    pub positives: usize,
    #[serde(default)]
    pub negatives: usize,
    /// At least 50 positives and 50 negatives: below that the figures are noise, and reports
    /// say "too few positives to measure" instead of showing them.
    #[serde(default = "yes")]
    pub measurable: bool,
    /// What the validated model's own probabilities expected of it on the validation cutoff,
    /// beside the measured figures: how far its self-assessment is to be trusted.
    #[serde(default)]
    pub expected: Option<crate::metrics::Expected>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Importance {
    pub feature: String,
    pub label: String,
    pub mean_abs_contribution: f64,
    /// This feature's share of the summed importances (0–1).
    pub share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BucketFactors {
    pub bucket: Bucket,
    pub profiles: usize,
    pub factors: Vec<FactorSummary>,
}

/// A score bucket: the percentile band a profile falls in (`output.buckets` of the job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    High,
    Medium,
    Low,
}

impl Bucket {
    /// High to low, the order reports list them in.
    pub const ALL: [Bucket; 3] = [Bucket::High, Bucket::Medium, Bucket::Low];

    /// As in score rows and reports: `high`, `medium`, `low`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Bucket::High => "high",
            Bucket::Medium => "medium",
            Bucket::Low => "low",
        }
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FactorSummary {
    pub feature: String,
    pub label: String,
    /// Share of the bucket's profiles with this feature among their top factors (0–1).
    pub share_of_profiles: f64,
    /// Mean contribution (log-odds) where it is a top factor; > 0 raises the score.
    pub mean_contribution: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Quality {
    pub min_auc: f64,
    pub passed: bool,
    /// `excellent` (AUC ≥ 0.8), `good` (≥ 0.7), `fair` (≥ the gate), `poor`, or
    /// `unvalidated`.
    pub grade: String,
    /// One sentence: why the gate passed or failed.
    pub reason: String,
}

/// The grade of an AUC against the job's gate.
pub fn grade(auc: Option<f64>, min_auc: f64) -> &'static str {
    match auc {
        None => "unvalidated",
        Some(a) if a >= 0.8 && a >= min_auc => "excellent",
        Some(a) if a >= 0.7 && a >= min_auc => "good",
        Some(a) if a >= min_auc => "fair",
        Some(_) => "poor",
    }
}
