//! The training protocol and scoring with reason codes.
//!
//! Training: the stacked older cutoffs train, the latest training cutoff validates (a
//! time-based split: the model is judged on the period it would have predicted next). Trees
//! stop early on the validation loss; positives are weighted up when they are the minority
//! (`sqrt(negatives / positives)`, at most 10×) and calibration then restores true
//! probabilities. Calibration is fitted on the validation cutoff; the metrics use
//! probabilities that are cross-fitted on it (fit on one half, applied to the other), so the
//! reported calibration error is not measured on the rows the calibrator saw. With too few
//! positives or negatives, the [`fallback`](crate::fallback) model ranks instead and every
//! score is marked `confidence = low`.

use serde::{Deserialize, Serialize};

use crate::calibrate::Calibrator;
pub use crate::card::Bucket;
use crate::card::{BucketFactors, FactorSummary, Importance, Metrics};
use crate::fallback::Fallback;
use crate::gbdt::{self, Gbdt, GbdtParams, par_ranges};
use crate::linear::{Linear, sample_indices};
use crate::metrics;
use crate::search;
use crate::shap::{self, Explainer};
use crate::{Matrix, Stack, sigmoid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    Gbdt,
    Logistic,
    Svm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationMethod {
    /// [`Self::Spread`] for trees boosted from the BG/NBD forecast, isotonic otherwise.
    Auto,
    Isotonic,
    Platt,
    /// The model's level kept, its spread fitted on the validation cutoff
    /// ([`Calibrator::spread`]).
    Spread,
    None,
}

/// Which model scored: a trained family or a fallback ranking (model cards, reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelAlgorithm {
    Gbdt,
    Logistic,
    Svm,
    /// The BG/NBD probability of a goal event in the window (too little data to train).
    FallbackBtyd,
    /// A recency / frequency / monetary ranking (too little data, no BG/NBD fit).
    FallbackRfm,
}

impl ModelAlgorithm {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gbdt => "gbdt",
            Self::Logistic => "logistic",
            Self::Svm => "svm",
            Self::FallbackBtyd => "fallback_btyd",
            Self::FallbackRfm => "fallback_rfm",
        }
    }
}

impl std::fmt::Display for ModelAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CalibrationMethod {
    /// As in job files and model cards.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Isotonic => "isotonic",
            Self::Platt => "platt",
            Self::Spread => "spread",
            Self::None => "none",
        }
    }
}

/// A trained model of any family. Margins are log-odds-like: higher is more likely.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Model {
    Gbdt(Gbdt),
    Linear(Linear),
    Fallback(Fallback),
}

impl Model {
    /// `gbdt`, `logistic`, `svm`, `fallback_btyd` or `fallback_rfm`.
    pub fn algorithm(&self) -> ModelAlgorithm {
        match self {
            Model::Gbdt(_) => ModelAlgorithm::Gbdt,
            Model::Linear(l) if l.kind == "svm" => ModelAlgorithm::Svm,
            Model::Linear(_) => ModelAlgorithm::Logistic,
            Model::Fallback(f) if f.algorithm() == "fallback_btyd" => ModelAlgorithm::FallbackBtyd,
            Model::Fallback(_) => ModelAlgorithm::FallbackRfm,
        }
    }

    #[inline]
    pub fn margin(&self, x: &[f32]) -> f64 {
        match self {
            Model::Gbdt(m) => m.margin(x),
            Model::Linear(m) => m.margin(x),
            Model::Fallback(m) => m.margin(x),
        }
    }

    pub fn is_fallback(&self) -> bool {
        matches!(self, Model::Fallback(_))
    }
}

/// A model ready to score and explain: the model, its calibrator and, for trees, the
/// precomputed TreeSHAP tables.
#[derive(Debug, Clone)]
pub struct Scorer {
    pub model: Model,
    pub calibrator: Calibrator,
    explainer: Option<Explainer>,
}

/// Per-thread scratch space for explaining.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    shap: shap::Scratch,
}

impl Scorer {
    pub fn new(model: Model, calibrator: Calibrator) -> Self {
        let explainer = match &model {
            Model::Gbdt(g) => Some(Explainer::new(g)),
            _ => None,
        };
        Scorer {
            model,
            calibrator,
            explainer,
        }
    }

    pub fn probability(&self, margin: f64) -> f64 {
        self.calibrator.apply(sigmoid(margin))
    }

    /// Adds per-feature contributions (log-odds) to `out` and returns the base value:
    /// `base + Σ out` is the margin.
    pub fn explain(&self, x: &[f32], s: &mut Scratch, out: &mut [f64]) -> f64 {
        match (&self.model, &self.explainer) {
            (Model::Gbdt(g), Some(e)) => e.explain(g, x, &mut s.shap, out),
            (Model::Gbdt(g), None) => Explainer::new(g).explain(g, x, &mut s.shap, out),
            (Model::Linear(m), _) => m.explain(x, out),
            (Model::Fallback(m), _) => m.explain(x, out),
        }
    }

    /// [`Scorer::explain`] for several rows: `out` holds one block of `width` values per
    /// row. Trees are explained tree by tree over the rows (cache-friendly).
    pub fn explain_rows(&self, rows: &[&[f32]], s: &mut Scratch, out: &mut [f64]) -> f64 {
        match (&self.model, &self.explainer) {
            (Model::Gbdt(g), Some(e)) => e.explain_rows(g, rows, &mut s.shap, out),
            _ => {
                let w = out.len() / rows.len().max(1);
                let mut base = 0.0;
                for (r, x) in rows.iter().enumerate() {
                    base = self.explain(x, s, &mut out[r * w..(r + 1) * w]);
                }
                base
            }
        }
    }
}

/// Rows explained together (their contributions fit in the L2 cache beside a tree's tables).
const BLOCK: usize = 64;

/// How a job wants its model trained and its scores cut.
#[derive(Debug, Clone)]
pub struct Settings {
    pub algorithm: Algorithm,
    /// Parameters of the trees that are not searched (bins, L2, threads), and the defaults
    /// of those that are.
    pub gbdt: GbdtParams,
    /// What the job fixes in `[model.gbdt]`.
    pub fixed: search::Fixed,
    /// Wall-time budget of the capacity search; `None`: no search.
    pub search_budget: Option<std::time::Duration>,
    pub calibration: CalibrationMethod,
    pub seed: u64,
    pub min_positives: usize,
    pub min_negatives: usize,
    /// The goal is `will_not_occur` (the fallback's signs flip).
    pub churn: bool,
    pub lookback_days: f64,
    pub top_factors: usize,
    pub high: u32,
    pub medium: u32,
}

/// Training input, as the purged out-of-time protocol lays it out (see the runtime's
/// `CutoffPlan`): the **search** cutoffs train the candidates judged on the **validation**
/// cutoff, whose label window none of theirs overlaps; the **fit** cutoffs (the newest, the
/// validation cutoff included) train the model that scores.
#[derive(Debug, Clone)]
pub struct TrainData<'a> {
    pub names: &'a [String],
    pub labels: &'a [String],
    pub search: Stack<'a>,
    pub search_y: &'a [u8],
    pub valid: Matrix<'a>,
    pub valid_y: &'a [u8],
    pub fit: Stack<'a>,
    pub fit_y: &'a [u8],
}

/// What training produced, for the registry and the model card.
#[derive(Debug)]
pub struct TrainOutput {
    pub scorer: Scorer,
    pub fallback_reason: Option<String>,
    pub params: serde_json::Value,
    pub calibration: CalibrationMethod,
    pub metrics: Option<Metrics>,
    pub importance: Vec<Importance>,
    pub top_factors_by_bucket: Vec<BucketFactors>,
    pub timings: Vec<(String, f64)>,
    /// The capacity search, when one ran.
    pub search: Option<search::SearchRecord>,
    /// The metrics were measured out of time (on a cutoff whose labels no training label
    /// overlaps); `false` when the data was too short for that and a split by profile of the
    /// newest cutoff stood in.
    pub out_of_time: bool,
}

fn count(y: &[u8]) -> (usize, usize) {
    let pos = y.iter().filter(|l| **l == 1).count();
    (pos, y.len() - pos)
}

/// `sqrt(negatives / positives)` in 1–10 when the positives are the rarer class.
fn positive_weight(y: &[u8]) -> Option<f64> {
    let (pos, neg) = count(y);
    (pos > 0 && pos < neg).then(|| (neg as f64 / pos as f64).sqrt().clamp(1.0, 10.0))
}

/// Trains, calibrates and evaluates. `progress(done, total)` reports search candidates or
/// boosting rounds.
pub fn train(
    data: &TrainData<'_>,
    s: &Settings,
    progress: gbdt::Progress<'_>,
) -> Result<TrainOutput, String> {
    let (fp, fneg) = count(data.fit_y);
    let (sp, sn) = count(data.search_y);
    let (vp, vn) = count(data.valid_y);
    let mut timings = Vec::new();
    let t0 = std::time::Instant::now();
    let short = if fp < s.min_positives.max(1) {
        Some(format!(
            "only {fp} positive examples in the training cutoffs (min_positives = {})",
            s.min_positives
        ))
    } else if fneg < s.min_negatives.max(1) {
        Some(format!(
            "only {fneg} negative examples in the training cutoffs (min_negatives = {})",
            s.min_negatives
        ))
    } else {
        None
    };
    if let Some(reason) = short {
        let fb = Fallback::fit(data.names, &data.fit, data.fit_y, s.churn, s.lookback_days);
        let params = fb.params();
        let scorer = Scorer::new(Model::Fallback(fb), Calibrator::None);
        let mut out = evaluate(data, s, scorer, None);
        out.fallback_reason = Some(reason);
        out.params = params;
        out.calibration = CalibrationMethod::None;
        out.out_of_time = true;
        out.timings
            .insert(0, ("fit_fallback".into(), t0.elapsed().as_secs_f64()));
        return Ok(out);
    }
    // Out of time when the search cutoffs and the validation cutoff both hold both classes;
    // otherwise (short history) the newest cutoffs stand in, split by profile.
    let out_of_time = sp > 0 && sn > 0 && vp > 0 && vn > 0;
    let split_storage;
    let (search_x, search_y, valid, valid_y): (Stack<'_>, &[u8], Matrix<'_>, &[u8]) = if out_of_time
    {
        (data.search.clone(), data.search_y, data.valid, data.valid_y)
    } else {
        split_storage = split_by_row(&data.fit, data.fit_y, s.seed);
        let st = &split_storage;
        (
            Stack::one(Matrix::new(&st.0, data.fit.width)),
            &st.1[..],
            Matrix::new(&st.2, data.fit.width),
            &st.3[..],
        )
    };
    let (vp, vn) = count(valid_y);
    let has_valid = vp > 0 && vn > 0;
    let mut search_record = None;
    // Trees boosted from the BG/NBD forecast when the catalogue has it with values.
    let offset_feature = (s.algorithm == Algorithm::Gbdt)
        .then(|| {
            data.names
                .iter()
                .position(|n| n == crate::fallback::BTYD_FEATURE)
        })
        .flatten()
        .filter(|&j| {
            let present = search_x.column(j).filter(|v| !v.is_nan()).count();
            present * 20 >= search_x.rows().max(1)
        });
    let method = match s.calibration {
        CalibrationMethod::Auto if offset_feature.is_some() => CalibrationMethod::Spread,
        CalibrationMethod::Auto => CalibrationMethod::Isotonic,
        m => m,
    };
    // `eval`: trained on the search cutoffs, judged on the validation cutoff. `model`: the
    // one that scores.
    let (eval, model, params) = match s.algorithm {
        Algorithm::Gbdt => {
            let mut base = s.gbdt.clone();
            // Weighting the rarer positives up helps the ranking a little and biases the
            // probabilities, which a calibrator then restores; uncalibrated probabilities (and
            // the level `Spread` keeps) must come from the unweighted loss.
            base.pos_weight =
                if matches!(method, CalibrationMethod::None | CalibrationMethod::Spread) {
                    1.0
                } else {
                    positive_weight(search_y).unwrap_or(1.0)
                };
            let mut binned = gbdt::Binned::new(&search_x, base.max_bins, base.threads);
            if let Some(j) = offset_feature {
                let o = gbdt::Offset::fit(&search_x, search_y, j, s.churn);
                binned = binned.with_offset(&search_x, o);
            }
            timings.push(("binning".into(), binned.binning_seconds));
            let t = std::time::Instant::now();
            let (eval, chosen, log) = match (s.search_budget, has_valid) {
                (Some(budget), true) => {
                    let found = search::search(
                        &binned, search_y, valid, valid_y, &s.fixed, &base, budget, s.seed,
                        progress,
                    );
                    search_record = Some(found.record);
                    (found.model, found.params, found.log)
                }
                _ => {
                    let mut p = search::defaults(&s.fixed, &base);
                    if !has_valid && s.fixed.num_trees.is_none() {
                        // Nothing to stop early on: a conservative ensemble.
                        p.num_trees = 300;
                    }
                    let v = has_valid.then_some((valid, valid_y));
                    let (m, log) = gbdt::train_binned(&binned, search_y, v, &p, progress);
                    let mut chosen = p;
                    chosen.num_trees = log.trees;
                    (m, chosen, log)
                }
            };
            timings.push(("search".into(), t.elapsed().as_secs_f64()));
            drop(binned);
            let t = std::time::Instant::now();
            let model = {
                // The fit cutoffs with the chosen capacity and the trees early stopping kept.
                let mut p = chosen.clone();
                p.pos_weight = if base.pos_weight > 1.0 {
                    positive_weight(data.fit_y).unwrap_or(base.pos_weight)
                } else {
                    base.pos_weight
                };
                let mut fit = gbdt::Binned::new(&data.fit, base.max_bins, base.threads);
                if let Some(j) = offset_feature {
                    let o = gbdt::Offset::fit(&data.fit, data.fit_y, j, s.churn);
                    fit = fit.with_offset(&data.fit, o);
                }
                gbdt::train_binned(&fit, data.fit_y, None, &p, &|_, _| {}).0
            };
            timings.push(("fit".into(), t.elapsed().as_secs_f64()));
            let params = serde_json::json!({
                "num_trees": chosen.num_trees,
                "trees_grown": log.grown,
                "learning_rate": chosen.learning_rate,
                "max_depth": chosen.max_depth,
                "num_leaves": chosen.num_leaves,
                "min_data_in_leaf": chosen.min_data_in_leaf,
                "early_stopping_rounds": chosen.early_stopping_rounds,
                "lambda_l2": chosen.lambda_l2,
                "max_bins": chosen.max_bins,
                "pos_weight": chosen.pos_weight,
                "boosted_from": offset_feature.map(|j| data.names[j].clone()),
            });
            (Model::Gbdt(eval), Model::Gbdt(model), params)
        }
        Algorithm::Logistic | Algorithm::Svm => {
            let svm = s.algorithm == Algorithm::Svm;
            let cap = if svm {
                crate::linear::SVM_SAMPLE
            } else {
                crate::linear::LOGISTIC_SAMPLE
            };
            let fit_one = |x: &Stack<'_>, y: &[u8]| -> Result<Linear, String> {
                let rows = sample_indices(x.rows(), cap, s.seed);
                let values = x.gather(&rows);
                let ys: Vec<u8> = rows.iter().map(|&i| y[i]).collect();
                let m = Matrix::new(&values, x.width);
                if svm {
                    Linear::fit_svm(m, &ys, s.seed)
                } else {
                    Linear::fit_logistic(m, &ys, s.seed)
                }
            };
            let t = std::time::Instant::now();
            let eval = fit_one(&search_x, search_y)?;
            let model = fit_one(&data.fit, data.fit_y)?;
            let params = serde_json::json!({"alpha": 1.0, "fitted_rows": model.fitted_rows,
                "kernel": if svm { "linear" } else { "none" },
                "transform": "signed ln(1 + |x|), median imputation, standardised"});
            timings.push((
                if svm { "fit_svm" } else { "fit_logistic" }.into(),
                t.elapsed().as_secs_f64(),
            ));
            (Model::Linear(eval), Model::Linear(model), params)
        }
    };
    let t1 = std::time::Instant::now();
    let eval_margins = margins(&eval, valid);
    // The calibration map of the judged model (its margins on the validation cutoff, which it
    // never saw) is the scoring model's: it stands to the scoring time as the judged model
    // stood to the validation cutoff.
    let calibrator = if has_valid {
        fit_calibrator(method, &eval_margins, valid_y)
    } else {
        Calibrator::None
    };
    let scorer = Scorer::new(model, calibrator);
    let valid_set = Validation {
        x: valid,
        y: valid_y,
        margins: &eval_margins,
        calibration: if has_valid {
            method
        } else {
            CalibrationMethod::None
        },
    };
    let mut out = evaluate(data, s, scorer, Some(valid_set));
    out.params = params;
    out.calibration = valid_set.calibration;
    out.search = search_record;
    out.out_of_time = out_of_time;
    timings.push(("calibrate_evaluate".into(), t1.elapsed().as_secs_f64()));
    timings.append(&mut out.timings);
    out.timings = timings;
    Ok(out)
}

/// Rows of `x` split 80/20 by a hash of the row: the stand-in validation when the history is
/// too short for an out-of-time one. Returns (train values, labels, validation values,
/// labels).
fn split_by_row(x: &Stack<'_>, y: &[u8], seed: u64) -> (Vec<f32>, Vec<u8>, Vec<f32>, Vec<u8>) {
    let (mut tx, mut ty, mut vx, mut vy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, row) in x.iter_rows().enumerate() {
        if crate::mix(seed ^ i as u64).is_multiple_of(5) {
            vx.extend_from_slice(row);
            vy.push(y[i]);
        } else {
            tx.extend_from_slice(row);
            ty.push(y[i]);
        }
    }
    (tx, ty, vx, vy)
}

/// The validation cutoff as the evaluation sees it: its rows, labels, the judged model's
/// margins and how probabilities are calibrated for the metrics.
#[derive(Debug, Clone, Copy)]
struct Validation<'a> {
    x: Matrix<'a>,
    y: &'a [u8],
    margins: &'a [f64],
    calibration: CalibrationMethod,
}

fn fit_calibrator(method: CalibrationMethod, margins: &[f64], y: &[u8]) -> Calibrator {
    let raw: Vec<f64> = margins.iter().map(|m| sigmoid(*m)).collect();
    let labels: Vec<bool> = y.iter().map(|l| *l == 1).collect();
    match method {
        CalibrationMethod::Isotonic | CalibrationMethod::Auto => {
            Calibrator::isotonic(&raw, &labels)
        }
        CalibrationMethod::Platt => Calibrator::platt(&raw, &labels),
        CalibrationMethod::Spread => Calibrator::spread(&raw, &labels),
        CalibrationMethod::None => Calibrator::None,
    }
}

/// Margins of every row, in parallel.
pub fn margins(model: &Model, x: Matrix<'_>) -> Vec<f64> {
    par_ranges(x.rows, threads(), |r| {
        r.map(|i| model.margin(x.row(i))).collect::<Vec<_>>()
    })
    .concat()
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Probabilities cross-fitted on two halves (even and odd rows): each half is calibrated by
/// a calibrator fitted on the other.
pub fn cross_fitted(method: CalibrationMethod, margins: &[f64], y: &[u8]) -> Vec<f64> {
    let half = |parity: usize| -> (Vec<f64>, Vec<u8>) {
        margins
            .iter()
            .zip(y)
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, (m, l))| (*m, *l))
            .unzip()
    };
    let (m0, y0) = half(0);
    let (m1, y1) = half(1);
    let c0 = fit_calibrator(method, &m0, &y0);
    let c1 = fit_calibrator(method, &m1, &y1);
    margins
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let c = if i % 2 == 0 { &c1 } else { &c0 };
            c.apply(sigmoid(*m))
        })
        .collect()
}

/// Metrics with fewer positives (or negatives) than this are reported as too few to measure.
pub const MIN_MEASURABLE: usize = 50;

/// Metrics, importance and factors of a fitted scorer. The metrics are those of the judged
/// model on the validation cutoff (`v.margins`, probabilities cross-fitted by `v.calibration`);
/// the fallback, which has no separate judged model, is measured as it scores. Importance
/// and factors come from the scorer itself.
fn evaluate(
    data: &TrainData<'_>,
    s: &Settings,
    scorer: Scorer,
    v: Option<Validation<'_>>,
) -> TrainOutput {
    let computed;
    let v = match v {
        Some(v) => v,
        None => {
            computed = margins(&scorer.model, data.valid);
            Validation {
                x: data.valid,
                y: data.valid_y,
                margins: &computed,
                calibration: CalibrationMethod::None,
            }
        }
    };
    let valid = v.x;
    let labels: Vec<bool> = v.y.iter().map(|l| *l == 1).collect();
    let (vp, vn) = count(v.y);
    let metrics = (vp > 0 && vn > 0).then(|| {
        let probs: Vec<f64> = if scorer.model.is_fallback() {
            v.margins.iter().map(|x| scorer.probability(*x)).collect()
        } else {
            cross_fitted(v.calibration, v.margins, v.y)
        };
        Metrics {
            auc: metrics::auc(v.margins, &labels),
            pr_auc: metrics::average_precision(v.margins, &labels),
            log_loss: metrics::log_loss(&probs, &labels),
            brier: metrics::brier(&probs, &labels),
            expected_calibration_error: metrics::expected_calibration_error(&probs, &labels),
            base_rate: vp as f64 / labels.len() as f64,
            mean_probability: probs.iter().sum::<f64>() / probs.len().max(1) as f64,
            calibration_curve: metrics::calibration_curve(&probs, &labels, 10),
            deciles: metrics::deciles(v.margins, &labels),
            lift_at_10: metrics::lift_at(v.margins, &labels, 0.10),
            positives: vp,
            negatives: vn,
            measurable: vp >= MIN_MEASURABLE && vn >= MIN_MEASURABLE,
            expected: Some(metrics::expected(v.margins, &probs)),
        }
    });
    let m_owned;
    let m: &[f64] = if scorer.model.is_fallback() {
        v.margins
    } else {
        m_owned = margins(&scorer.model, valid);
        &m_owned
    };
    // Importance and factors on a sample of the validation rows.
    let t = std::time::Instant::now();
    let rows = sample_indices(valid.rows, 20_000, s.seed);
    let sample_margins: Vec<f64> = rows.iter().map(|&i| m[i]).collect();
    let pct = percentiles(&sample_margins, &[]);
    let width = valid.width;
    let parts = par_ranges(rows.len(), threads(), |r| {
        let mut scratch = Scratch::default();
        let mut abs = vec![0.0; width];
        let mut out = vec![0.0; width * BLOCK];
        let mut tops = Vec::new();
        let ks: Vec<usize> = r.collect();
        for block in ks.chunks(BLOCK) {
            let xs: Vec<&[f32]> = block.iter().map(|&k| valid.row(rows[k])).collect();
            let out = &mut out[..width * xs.len()];
            out.iter_mut().for_each(|v| *v = 0.0);
            scorer.explain_rows(&xs, &mut scratch, out);
            for (b, &k) in block.iter().enumerate() {
                let c = &out[b * width..(b + 1) * width];
                for (a, o) in abs.iter_mut().zip(c) {
                    *a += o.abs();
                }
                tops.push((k, top_factors(c, s.top_factors)));
            }
        }
        (abs, tops)
    });
    let mut abs = vec![0.0; width];
    let mut tops = Vec::with_capacity(rows.len());
    for (a, t) in parts {
        for (x, y) in abs.iter_mut().zip(a) {
            *x += y;
        }
        tops.extend(t);
    }
    let n = rows.len().max(1) as f64;
    let total: f64 = abs.iter().sum();
    let mut importance: Vec<Importance> = abs
        .iter()
        .enumerate()
        .filter(|(_, a)| **a > 0.0)
        .map(|(j, a)| Importance {
            feature: data.names[j].clone(),
            label: data.labels[j].clone(),
            mean_abs_contribution: a / n,
            share: if total > 0.0 { a / total } else { 0.0 },
        })
        .collect();
    importance.sort_by(|a, b| {
        b.mean_abs_contribution
            .total_cmp(&a.mean_abs_contribution)
            .then_with(|| a.feature.cmp(&b.feature))
    });
    let buckets: Vec<(Bucket, Vec<&[Factor]>)> = Bucket::ALL
        .iter()
        .map(|b| {
            let members = tops
                .iter()
                .filter(|(k, _)| bucket(pct[*k], s.high, s.medium) == *b)
                .map(|(_, f)| f.as_slice())
                .collect();
            (*b, members)
        })
        .collect();
    let top_factors_by_bucket = summarize_factors(&buckets, data.names, data.labels);
    TrainOutput {
        scorer,
        fallback_reason: None,
        params: serde_json::Value::Null,
        calibration: CalibrationMethod::None,
        metrics,
        importance,
        top_factors_by_bucket,
        timings: vec![("explain_validation".into(), t.elapsed().as_secs_f64())],
        search: None,
        out_of_time: false,
    }
}

/// Per bucket: the features most often among the top factors, with their mean contribution.
pub fn summarize_factors(
    buckets: &[(Bucket, Vec<&[Factor]>)],
    names: &[String],
    labels: &[String],
) -> Vec<BucketFactors> {
    buckets
        .iter()
        .map(|(b, members)| {
            let mut acc: std::collections::BTreeMap<u32, (usize, f64)> = Default::default();
            for fs in members {
                for f in fs.iter() {
                    let e = acc.entry(f.feature).or_default();
                    e.0 += 1;
                    e.1 += f.contribution;
                }
            }
            let mut list: Vec<FactorSummary> = acc
                .into_iter()
                .map(|(j, (c, sum))| FactorSummary {
                    feature: names[j as usize].clone(),
                    label: labels[j as usize].clone(),
                    share_of_profiles: c as f64 / members.len().max(1) as f64,
                    mean_contribution: sum / c as f64,
                })
                .collect();
            list.sort_by(|a, b| {
                b.share_of_profiles
                    .total_cmp(&a.share_of_profiles)
                    .then_with(|| a.feature.cmp(&b.feature))
            });
            list.truncate(5);
            BucketFactors {
                bucket: *b,
                profiles: members.len(),
                factors: list,
            }
        })
        .collect()
}

/// One reason: a feature and how much it moved this profile's score (log-odds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factor {
    pub feature: u32,
    pub contribution: f64,
    /// `low`, `medium` or `high`: the factor's share of the profile's total |contribution|
    /// (≥ 25 % high, ≥ 10 % medium).
    pub importance: &'static str,
}

/// The `n` largest |contributions|, largest first (ties: lower feature index first); zero
/// contributions are never reasons.
pub fn top_factors(contrib: &[f64], n: usize) -> Vec<Factor> {
    let total: f64 = contrib.iter().map(|c| c.abs()).sum();
    let mut idx: Vec<usize> = (0..contrib.len()).filter(|&j| contrib[j] != 0.0).collect();
    let by = |a: &usize, b: &usize| {
        contrib[*b]
            .abs()
            .total_cmp(&contrib[*a].abs())
            .then(a.cmp(b))
    };
    if idx.len() > n && n > 0 {
        idx.select_nth_unstable_by(n - 1, by);
        idx.truncate(n);
    }
    idx.sort_by(by);
    idx.truncate(n);
    idx.into_iter()
        .map(|j| {
            let share = if total > 0.0 {
                contrib[j].abs() / total
            } else {
                0.0
            };
            Factor {
                feature: j as u32,
                contribution: contrib[j],
                importance: if share >= 0.25 {
                    "high"
                } else if share >= 0.10 {
                    "medium"
                } else {
                    "low"
                },
            }
        })
        .collect()
}

/// Percentile 1–100 of each margin among all: `1 + ⌊100 · rank / n⌋`, where `rank` is the
/// 0-based position in ascending order. Equal margins (profiles with the same features) are
/// ordered by `keys` (a hash of the profile id, so a profile keeps its place from run to
/// run), then by position: every percentile holds its share of profiles, and the buckets
/// their intended shares, however many margins tie.
pub fn percentiles(margins: &[f64], keys: &[u64]) -> Vec<u8> {
    let n = margins.len();
    let key = |i: usize| keys.get(i).copied().unwrap_or(0);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| {
        margins[a]
            .total_cmp(&margins[b])
            .then(key(a).cmp(&key(b)))
            .then(a.cmp(&b))
    });
    let mut out = vec![0u8; n];
    for (r, &i) in idx.iter().enumerate() {
        out[i] = (1 + 100 * r / n).min(100) as u8;
    }
    out
}

/// The bucket of a percentile.
pub fn bucket(percentile: u8, high: u32, medium: u32) -> Bucket {
    if u32::from(percentile) >= high {
        Bucket::High
    } else if u32::from(percentile) >= medium {
        Bucket::Medium
    } else {
        Bucket::Low
    }
}

/// A scored profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub margin: f64,
    pub probability: f64,
    /// `round(100 · probability)`.
    pub score: u8,
    pub percentile: u8,
    pub bucket: Bucket,
    pub factors: Vec<Factor>,
}

/// Scores and explains every row. `keys` break ties between equal margins (see
/// [`percentiles`]; empty: by position). `progress(done, total)` is called as chunks finish.
#[allow(clippy::too_many_arguments)]
pub fn score(
    scorer: &Scorer,
    x: Matrix<'_>,
    keys: &[u64],
    top_n: usize,
    high: u32,
    medium: u32,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<Scored> {
    let n = x.rows;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let chunk = 4096;
    let parts = par_ranges(n, threads(), |r| {
        let mut scratch = Scratch::default();
        let mut out = vec![0.0; x.width * BLOCK];
        let mut rows = Vec::with_capacity(r.len());
        let mut since = 0usize;
        let all: Vec<usize> = r.collect();
        for block in all.chunks(BLOCK) {
            let xs: Vec<&[f32]> = block.iter().map(|&i| x.row(i)).collect();
            let out = &mut out[..x.width * xs.len()];
            out.iter_mut().for_each(|v| *v = 0.0);
            scorer.explain_rows(&xs, &mut scratch, out);
            for (b, xi) in xs.iter().enumerate() {
                // The margin is the model's own; that the contributions add up to it (local
                // accuracy) is what the tests check.
                let margin = scorer.model.margin(xi);
                let probability = scorer.probability(margin);
                let c = &out[b * x.width..(b + 1) * x.width];
                rows.push((margin, probability, top_factors(c, top_n)));
            }
            since += xs.len();
            if since >= chunk {
                let d = done.fetch_add(since, std::sync::atomic::Ordering::Relaxed) + since;
                progress(d.min(n), n);
                since = 0;
            }
        }
        rows
    })
    .concat();
    progress(n, n);
    let m: Vec<f64> = parts.iter().map(|p| p.0).collect();
    let pct = percentiles(&m, keys);
    parts
        .into_iter()
        .zip(pct)
        .map(|((margin, probability, factors), p)| Scored {
            margin,
            probability,
            score: (probability * 100.0).round().clamp(0.0, 100.0) as u8,
            percentile: p,
            bucket: bucket(p, high, medium),
            factors,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_1_to_100_and_ties_keep_the_shares() {
        let m: Vec<f64> = (0..1000).map(|i| (i / 2) as f64).collect();
        let p = percentiles(&m, &[]);
        assert_eq!(p[0], 1);
        assert_eq!(p[999], 100);
        assert!(p.iter().all(|v| (1..=100).contains(v)));
        assert_eq!(percentiles(&[3.0], &[]), vec![1]);
        // Two thirds of the margins tie (regression test for #16: 62–66 % of a purchase
        // log's profiles shared one probability and the buckets came out 64/11/26).
        let m: Vec<f64> = (0..3000)
            .map(|i| if i < 2000 { 0.0 } else { i as f64 })
            .collect();
        let keys: Vec<u64> = (0..3000u64).map(crate::mix).collect();
        let p = percentiles(&m, &keys);
        let share =
            |b: Bucket| p.iter().filter(|&&v| bucket(v, 75, 25) == b).count() as f64 / 3000.0;
        assert!(
            (share(Bucket::High) - 0.25).abs() <= 0.02,
            "{}",
            share(Bucket::High)
        );
        assert!(
            (share(Bucket::Medium) - 0.50).abs() <= 0.02,
            "{}",
            share(Bucket::Medium)
        );
        assert!(
            (share(Bucket::Low) - 0.25).abs() <= 0.02,
            "{}",
            share(Bucket::Low)
        );
        // The tie is broken by the keys, not by position.
        let rev: Vec<u64> = keys.iter().map(|k| !k).collect();
        assert_ne!(percentiles(&m, &rev)[..2000], p[..2000]);
        assert_eq!(bucket(75, 75, 25), Bucket::High);
        assert_eq!(bucket(74, 75, 25), Bucket::Medium);
        assert_eq!(bucket(24, 75, 25), Bucket::Low);
    }

    #[test]
    fn top_factors_order_and_importance() {
        let f = top_factors(&[0.1, -2.0, 0.0, 0.5, 0.5], 3);
        let feats: Vec<u32> = f.iter().map(|x| x.feature).collect();
        assert_eq!(feats, vec![1, 3, 4]);
        assert_eq!(f[0].importance, "high");
        assert_eq!(f[1].importance, "medium");
        assert!(top_factors(&[0.0, 0.0], 5).is_empty());
    }

    fn settings(algorithm: Algorithm) -> Settings {
        Settings {
            algorithm,
            gbdt: GbdtParams {
                num_trees: 100,
                learning_rate: 0.1,
                ..GbdtParams::default()
            },
            fixed: search::Fixed::default(),
            search_budget: None,
            calibration: CalibrationMethod::Isotonic,
            seed: 1,
            min_positives: 50,
            min_negatives: 50,
            churn: false,
            lookback_days: 365.0,
            top_factors: 3,
            high: 75,
            medium: 25,
        }
    }

    /// The training rows search and the validation rows validate; the scoring model fits
    /// both (`fit` owns their concatenation, like the runtime's newest cutoffs).
    fn train_data<'a>(
        names: &'a [String],
        labels: &'a [String],
        (x, y): (&'a [f32], &'a [u8]),
        (vx, vy): (&'a [f32], &'a [u8]),
        fit_y: &'a [u8],
        width: usize,
    ) -> TrainData<'a> {
        TrainData {
            names,
            labels,
            search: Stack::one(Matrix::new(x, width)),
            search_y: y,
            valid: Matrix::new(vx, width),
            valid_y: vy,
            fit: Stack::new(vec![Matrix::new(x, width), Matrix::new(vx, width)], width),
            fit_y,
        }
    }

    fn names() -> (Vec<String>, Vec<String>) {
        let names: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let labels = names.iter().map(|n| format!("Feature {n}")).collect();
        (names, labels)
    }

    #[test]
    fn trains_calibrates_and_scores_every_algorithm() {
        let (x, y, w) = crate::gbdt::tests::synthetic(8000, 21);
        let (vx, vy, _) = crate::gbdt::tests::synthetic(4000, 22);
        let (names, labels) = names();
        let fit_y: Vec<u8> = y.iter().chain(&vy).copied().collect();
        let data = train_data(&names, &labels, (&x, &y), (&vx, &vy), &fit_y, w);
        let mut aucs = Vec::new();
        for alg in [Algorithm::Gbdt, Algorithm::Logistic, Algorithm::Svm] {
            let out = train(&data, &settings(alg), &|_, _| {}).expect("train");
            let m = out.metrics.expect("metrics");
            assert!(m.auc.unwrap_or(0.0) > 0.7, "{alg:?} {m:?}");
            assert!(
                m.expected_calibration_error < 0.05,
                "{alg:?} ece {}",
                m.expected_calibration_error
            );
            assert!((m.mean_probability - m.base_rate).abs() < 0.03);
            assert!(out.fallback_reason.is_none());
            assert!(!out.importance.is_empty());
            assert_eq!(out.top_factors_by_bucket.len(), 3);
            let scored = score(&out.scorer, Matrix::new(&vx, w), &[], 3, 75, 25, &|_, _| {});
            assert_eq!(scored.len(), 4000);
            assert!(
                scored
                    .iter()
                    .all(|r| r.probability > 0.0 && r.probability < 1.0)
            );
            assert!(scored.iter().all(|r| r.factors.len() <= 3));
            let high = scored.iter().filter(|r| r.bucket == Bucket::High).count();
            assert!((900..=1100).contains(&high), "{high}");
            aucs.push(m.auc.unwrap_or(0.0));
        }
        assert!(
            aucs[0] >= aucs[1] - 0.01,
            "gbdt {} vs logistic {}",
            aucs[0],
            aucs[1]
        );
    }

    #[test]
    fn too_few_positives_fall_back_and_still_rank() {
        let (x, mut y, w) = crate::gbdt::tests::synthetic(3000, 5);
        let (vx, mut vy, _) = crate::gbdt::tests::synthetic(1000, 6);
        // Keep only a handful of positives.
        let mut kept = 0;
        for l in y.iter_mut().chain(vy.iter_mut()) {
            if *l == 1 {
                kept += 1;
                if kept > 10 {
                    *l = 0;
                }
            }
        }
        let names: Vec<String> = ["days_since_last_event", "event_count_90d", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let labels = names.clone();
        let fit_y: Vec<u8> = y.iter().chain(&vy).copied().collect();
        let data = train_data(&names, &labels, (&x, &y), (&vx, &vy), &fit_y, w);
        let out = train(&data, &settings(Algorithm::Gbdt), &|_, _| {}).expect("train");
        assert!(out.scorer.model.is_fallback());
        let reason = out.fallback_reason.expect("reason");
        assert!(
            reason.contains("positive") && reason.contains("min_positives = 50"),
            "{reason}"
        );
        let scored = score(&out.scorer, Matrix::new(&vx, w), &[], 3, 75, 25, &|_, _| {});
        let distinct: std::collections::BTreeSet<u8> =
            scored.iter().map(|s| s.percentile).collect();
        assert!(distinct.len() > 10, "the fallback still ranks");
    }
}
