//! The model card: what a trained model is, how it was validated, what its scores are expected
//! to achieve on the next window, and whether it passed the quality gate.

use chrono::Utc;
use propensity_engine::dataset::Dataset;
use propensity_engine::{CutoffPlan, rfc3339};
use propensity_model::Matrix;
use propensity_model::card::{ClassCounts, Confidence, ModelCard, Protocol, Quality};
use propensity_model::pipeline::{self, CalibrationMethod, TrainOutput};

use crate::context::RunContext;
use crate::load::Inputs;
use crate::train::Split;

/// The card of a model trained in this run, with the quality gate applied.
pub(crate) fn trained(
    cx: &RunContext<'_>,
    inp: &Inputs,
    sp: &Split,
    out: &TrainOutput,
    version: &str,
    data_fingerprint: String,
) -> ModelCard {
    let job = cx.job;
    let (d, plan) = (&inp.dataset, &inp.loaded.plan);
    let min_auc = job.model.min_auc;
    let auc = out.metrics.as_ref().and_then(|m| m.auc);
    let fallback = out.scorer.model.is_fallback();
    let passed = !fallback && auc.is_some_and(|a| a >= min_auc);
    let reason = match (fallback, auc) {
        (true, _) => format!(
            "not promoted: a fallback model ({})",
            out.fallback_reason.clone().unwrap_or_default()
        ),
        (false, None) => "not promoted: the validation cutoff lacks positives or negatives, so the model could not be validated".to_owned(),
        (false, Some(a)) if passed => {
            format!("validation AUC {a:.3} ≥ quality_gate.min_auc {min_auc:.3}")
        }
        (false, Some(a)) => format!("validation AUC {a:.3} < quality_gate.min_auc {min_auc:.3}"),
    };
    ModelCard {
        job: job.name.clone(),
        model_version: version.to_owned(),
        algorithm: out.scorer.model.algorithm(),
        confidence: if fallback {
            Confidence::Low
        } else {
            Confidence::Normal
        },
        fallback_reason: out.fallback_reason.clone(),
        trained_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        as_of: rfc3339(cx.as_of_us),
        data_from: rfc3339(plan.needed_from()),
        data_to: rfc3339(
            plan.training
                .first()
                .map_or(cx.as_of_us, |c| c + plan.window),
        ),
        window: job.goal.window().to_string(),
        cutoffs: sp.cutoffs.clone(),
        train: counts(&sp.fit_y),
        validation: counts(
            d.training
                .get(sp.validation)
                .map_or(&[][..], |v| &v.labels[..]),
        ),
        protocol: Some(protocol(plan, sp, d, out.out_of_time)),
        search: out.search.clone(),
        expected: {
            let x = Matrix::new(&d.scoring.values, d.scoring.width);
            let m = pipeline::margins(&out.scorer.model, x);
            let p: Vec<f64> = m.iter().map(|v| out.scorer.probability(*v)).collect();
            (!p.is_empty() && !fallback).then(|| propensity_model::metrics::expected(&m, &p))
        },
        btyd: d
            .btyd
            .iter()
            .map(|b| propensity_model::card::BtydSummary {
                cutoff: rfc3339(b.cutoff),
                fit: b.fit,
            })
            .collect(),
        features: inp.names.clone(),
        seed: cx.settings.seed,
        config_hash: cx.training_hash.clone(),
        data_fingerprint,
        params: out.params.clone(),
        calibration: match out.calibration {
            CalibrationMethod::Auto => CalibrationMethod::Isotonic,
            chosen => chosen,
        },
        metrics: out.metrics.clone(),
        importance: out.importance.clone(),
        top_factors_by_bucket: out.top_factors_by_bucket.clone(),
        quality: Quality {
            min_auc,
            passed,
            grade: if fallback {
                "fallback".into()
            } else {
                propensity_model::card::grade(auc, min_auc).into()
            },
            reason,
        },
        timings: out.timings.clone(),
    }
}

/// The card of the fallback ranking that scores when the gate failed and no model has passed
/// it yet: the rejected model's card, with what actually scores.
pub(crate) fn fallback(rejected: ModelCard, out: &TrainOutput) -> ModelCard {
    let mut card = rejected;
    // `fallback_btyd` or `fallback_rfm`, whichever ranking the fallback fitted.
    card.algorithm = out.scorer.model.algorithm();
    card.confidence = Confidence::Low;
    card.fallback_reason = Some("no model has passed the quality gate yet".into());
    card.model_version = format!("{}-fallback", card.model_version);
    // What scores is the fallback: its parameters, no calibration, no search.
    card.params = out.params.clone();
    card.calibration = CalibrationMethod::None;
    card.search = None;
    card.metrics = out.metrics.clone();
    card.importance = out.importance.clone();
    card.top_factors_by_bucket = out.top_factors_by_bucket.clone();
    card
}

/// The protocol as the model card states it.
fn protocol(plan: &CutoffPlan, sp: &Split, d: &Dataset, out_of_time: bool) -> Protocol {
    let span = |us: i64| propensity_core::Span::from_secs((us / 1_000_000).max(1) as u64);
    let times = |ks: &[usize]| -> Vec<String> {
        ks.iter().map(|&k| rfc3339(d.training[k].cutoff)).collect()
    };
    let window = span(plan.window);
    Protocol {
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

fn counts(y: &[u8]) -> ClassCounts {
    let positives = y.iter().filter(|l| **l == 1).count();
    ClassCounts {
        rows: y.len(),
        positives,
        negatives: y.len() - positives,
    }
}
