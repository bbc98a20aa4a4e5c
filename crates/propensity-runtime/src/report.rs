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
    pub algorithm: propensity_model::pipeline::ModelAlgorithm,
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
    pub bucket: propensity_model::card::Bucket,
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

/// The last step of a run: the report, the card and the HTML page in the run directory, and
/// the job's latest-run record.
pub(crate) fn finish(
    cx: crate::context::RunContext<'_>,
    inp: &crate::load::Inputs,
    chosen: crate::train::Chosen,
    scoring: &crate::score::Scoring,
    segs: crate::segments::Segmented,
    table: crate::publish::Table,
    published: crate::publish::Published,
) -> Result<crate::RunSummary, crate::RunError> {
    use crate::registry::{LatestRun, write_atomic};
    use propensity_model::pipeline;
    let scored = &scoring.scored;
    let model = &chosen.model;
    let n = scored.len();
    let mut histogram = vec![0u64; 20];
    for s in scored {
        histogram[(usize::from(s.score) / 5).min(19)] += 1;
    }
    let in_bucket = |b: pipeline::Bucket| scored.iter().filter(move |s| s.bucket == b);
    let buckets: Vec<BucketSize> = pipeline::Bucket::ALL
        .iter()
        .map(|&b| {
            let rows: Vec<&pipeline::Scored> = in_bucket(b).collect();
            let percentiles = || rows.iter().map(|s| u32::from(s.percentile));
            BucketSize {
                bucket: b,
                profiles: rows.len(),
                share: rows.len() as f64 / n.max(1) as f64,
                mean_probability: rows.iter().map(|s| s.probability).sum::<f64>()
                    / rows.len().max(1) as f64,
                min_percentile: percentiles().min().unwrap_or(0),
                max_percentile: percentiles().max().unwrap_or(0),
            }
        })
        .collect();
    let groups: Vec<(pipeline::Bucket, Vec<&[pipeline::Factor]>)> = pipeline::Bucket::ALL
        .iter()
        .map(|&b| (b, in_bucket(b).map(|s| s.factors.as_slice()).collect()))
        .collect();
    let top_factors_by_bucket =
        pipeline::summarize_factors(&groups, &model.features, &model.labels);
    let checks = &inp.loaded.report;
    let c = &checks.events.counts;
    let run_dir = &table.run_dir;
    let report_json = run_dir.join("report.json");
    let report_html = run_dir.join("report.html");
    let card_json = run_dir.join("card.json");
    let mut outputs = crate::publish::outputs(&table, &published);
    for (kind, path) in [
        ("model_card", &card_json),
        ("report_json", &report_json),
        ("report_html", &report_html),
    ] {
        outputs.push(Output {
            kind: kind.into(),
            location: path.display().to_string(),
            rows: None,
        });
    }
    let mut report = RunReport {
        job: cx.job.name.clone(),
        description: cx.job.description.clone(),
        run_id: cx.run_id.clone(),
        as_of: propensity_engine::rfc3339(cx.as_of_us),
        started_at: cx
            .started
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: String::new(),
        model_version: model.version.clone(),
        algorithm: model.model.algorithm(),
        confidence: chosen.confidence(),
        training: chosen.training.clone(),
        card: model.card.clone(),
        rejected_card: chosen.rejected.clone(),
        scored: n,
        mean_probability: scored.iter().map(|s| s.probability).sum::<f64>() / n.max(1) as f64,
        expected: {
            let m: Vec<f64> = scored.iter().map(|s| s.margin).collect();
            let p: Vec<f64> = scored.iter().map(|s| s.probability).collect();
            (n > 0 && !model.model.is_fallback())
                .then(|| propensity_model::metrics::expected(&m, &p))
        },
        buckets,
        score_histogram: histogram,
        top_factors_by_bucket,
        data: DataSummary {
            events_read: c.rows_read,
            events_used: c.events_kept,
            events_rejected: c.invalid(),
            profiles: inp.loaded.store.profiles(),
            eligible: inp.dataset.scoring.rows.len(),
            findings: checks
                .warnings
                .iter()
                .map(|f| format!("warning: {}", f.message))
                .collect(),
        },
        segments: segs.sizes,
        publication: published.id,
        publications: published.records,
        timings: cx.timings,
        outputs,
        warnings: cx.warnings,
    };
    report.finished_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    write_atomic(&card_json, &json(&report.card))?;
    write_atomic(&report_json, &json(&report))?;
    write_atomic(&report_html, crate::html::render(&report).as_bytes())?;
    // The latest run is the newest published one: `explain` and the next run's stale check
    // read it, so a backfill of the past does not replace it.
    if !published.stale {
        cx.registry.set_latest_run(&LatestRun {
            run_id: cx.run_id,
            as_of: report.as_of.clone(),
            model_version: report.model_version.clone(),
            job_file: cx.opts.job_file.as_ref().map(|f| {
                std::path::absolute(f)
                    .unwrap_or_else(|_| f.clone())
                    .display()
                    .to_string()
            }),
        })?;
    }
    tracing::info!(
        training = %report.training.status,
        model_version = %report.model_version,
        scored = report.scored,
        failed_sinks = published.failed.len(),
        "run finished"
    );
    drop(published.lock);
    Ok(crate::RunSummary {
        report,
        failed_sinks: published.failed,
        run_dir: table.run_dir,
        scores_path: table.scores_path,
        report_path: report_html,
    })
}

/// Pretty JSON, newline-terminated.
fn json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}
