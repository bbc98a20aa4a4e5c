//! The run report: what one run did, as JSON (`report.json`) and as a static HTML page with
//! inline SVG charts (`report.html`, see [`crate::html`]).

use propensity_model::card::{BucketFactors, ModelCard};
use serde::{Deserialize, Serialize};

/// What a sink did with a run's publication (`published`, `unchanged`, `failed`).
pub use propensity_sinks::Status as PublicationStatus;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub job: String,
    pub description: Option<String>,
    pub run_id: String,
    /// RFC 3339.
    pub as_of: String,
    pub started_at: String,
    pub finished_at: String,
    /// The model that scored this run.
    pub model_version: String,
    pub algorithm: String,
    /// `low` when the fallback model scored.
    pub confidence: propensity_model::card::Confidence,
    /// Whether this run trained a model, and what became of it.
    pub training: TrainingOutcome,
    /// Card of the model that scored.
    pub card: ModelCard,
    /// Card of a model trained in this run that did not pass the quality gate.
    pub rejected_card: Option<ModelCard>,
    pub scored: usize,
    /// Mean calibrated probability over the scored profiles.
    pub mean_probability: f64,
    /// What these scores are expected to achieve on the coming window, from their calibrated
    /// probabilities (AUC, PR-AUC, lift at 10 %; `base_rate` = `mean_probability`).
    #[serde(default)]
    pub expected: Option<propensity_model::metrics::Expected>,
    pub buckets: Vec<BucketSize>,
    /// Profiles per score band: `score_histogram[i]` counts scores in `[5i, 5i + 5)`, the last
    /// band also holds 100 (20 bands).
    pub score_histogram: Vec<u64>,
    /// Leading factors per bucket over the scored profiles.
    pub top_factors_by_bucket: Vec<BucketFactors>,
    pub data: DataSummary,
    pub timings: Vec<StageTiming>,
    /// Profiles per segment (activated and held out).
    #[serde(default)]
    pub segments: Vec<SegmentSize>,
    /// The content-derived publication id of this run's rows.
    #[serde(default)]
    pub publication: String,
    /// What each sink did.
    #[serde(default)]
    pub publications: Vec<PublicationRecord>,
    pub outputs: Vec<Output>,
    /// Things a person should know (fallback used, gate failed, features missing, …).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingOutcome {
    pub status: TrainingStatus,
    /// One sentence for people.
    pub message: String,
}

/// What became of training in a run (`report.json`'s `training.status`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TrainingStatus {
    /// A model was trained, passed the quality gate and scored.
    TrainedPromoted,
    /// A model was trained and failed the quality gate: kept for inspection, not scoring.
    TrainedRejected,
    /// Training was not due: the champion scored.
    NotDue,
    /// Too little data to train and no champion: the fallback ranking scored.
    Fallback,
    /// Too little data to retrain: the champion kept scoring.
    FallbackKeptChampion,
}

impl TrainingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrainedPromoted => "trained_promoted",
            Self::TrainedRejected => "trained_rejected",
            Self::NotDue => "not_due",
            Self::Fallback => "fallback",
            Self::FallbackKeptChampion => "fallback_kept_champion",
        }
    }
}

impl std::fmt::Display for TrainingStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BucketSize {
    /// `high`, `medium` or `low`.
    pub bucket: String,
    pub profiles: usize,
    pub share: f64,
    pub mean_probability: f64,
    pub min_percentile: u32,
    pub max_percentile: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataSummary {
    pub events_read: u64,
    pub events_used: u64,
    pub events_rejected: u64,
    pub profiles: usize,
    pub eligible: usize,
    /// Data-check findings, one line each (`warning: …`).
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentSize {
    pub name: String,
    /// Members that are activated (not held out).
    pub profiles: usize,
    pub holdout: usize,
    pub holdout_fraction: f64,
}

/// One sink's publication outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PublicationRecord {
    pub sink: String,
    pub kind: String,
    pub status: PublicationStatus,
    pub rows: usize,
    pub location: String,
    pub message: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Output {
    /// `scores`, `model_card`, `report_html`, `report_json`, or a sink name.
    pub kind: String,
    /// A local path or a URL.
    pub location: String,
    pub rows: Option<usize>,
}
