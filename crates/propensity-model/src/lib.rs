//! Models of a Propensity job: training, calibration, evaluation and explanation, pure and
//! deterministic given a seed, with no IO.
//!
//! - [`gbdt`]: histogram gradient-boosted trees (the default), explained by exact TreeSHAP
//!   ([`shap`]).
//! - [`linear`]: logistic regression (linfa-logistic) and a linear SVM (linfa-svm), explained
//!   by coefficient × centred value.
//! - [`btyd`]: buy-till-you-die models (BG/NBD, MBG/NBD) fitted by maximum likelihood on
//!   recency / frequency / age; their predictions are features for the trees.
//! - [`fallback`]: the model used when there are too few positives or negatives to train:
//!   the BTYD probability when the job has it, a recency / frequency / monetary ranking
//!   otherwise; its scores are marked `confidence = low`.
//! - [`search`]: the capacity search (successive halving over leaves and minimum leaf size
//!   on the out-of-time validation, within a time budget).
//! - [`pipeline`]: the training protocol (purged out-of-time validation, early stopping,
//!   calibration, model card) and scoring with reason codes.
//! - [`metrics`], [`calibrate`], [`card`]: what the model card reports.
//!
//! ```
//! use propensity_model::{calibrate::Calibrator, metrics};
//!
//! let scores = [0.1, 0.4, 0.35, 0.8];
//! let labels = [false, false, true, true];
//! assert_eq!(metrics::auc(&scores, &labels), Some(0.75));
//! let iso = Calibrator::isotonic(&scores, &labels);
//! // Smoothed and shrunk: ordered, and never exactly 0 or 1.
//! assert!(iso.apply(0.1) < iso.apply(0.8) && iso.apply(0.8) < 1.0);
//! ```

pub mod btyd;
pub mod calibrate;
pub mod card;
pub mod fallback;
pub mod gbdt;
pub mod linear;
pub mod metrics;
pub mod pipeline;
pub mod search;
pub mod shap;

/// The logistic function: log-odds to probability.
#[inline]
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// splitmix64: a well-mixed 64-bit hash of a seed, for deterministic sampling and splits.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A row-major matrix view: `rows × width` values, NaN where a value is missing.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub values: &'a [f32],
    pub rows: usize,
    pub width: usize,
}

impl<'a> Matrix<'a> {
    /// A view of `values` as rows of `width` values (a trailing partial row is ignored).
    pub fn new(values: &'a [f32], width: usize) -> Self {
        let rows = values.len().checked_div(width).unwrap_or(0);
        Matrix {
            values,
            rows,
            width,
        }
    }

    #[inline]
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.values[i * self.width + j]
    }
}

/// Several row-major matrices of one width read as one: the training cutoffs stacked without
/// copying their values into one buffer.
#[derive(Debug, Clone, Default)]
pub struct Stack<'a> {
    pub parts: Vec<Matrix<'a>>,
    pub width: usize,
}

impl<'a> Stack<'a> {
    pub fn new(parts: Vec<Matrix<'a>>, width: usize) -> Self {
        Stack { parts, width }
    }

    pub fn one(m: Matrix<'a>) -> Self {
        Stack {
            width: m.width,
            parts: vec![m],
        }
    }

    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// Every row, in order.
    pub fn iter_rows(&self) -> impl Iterator<Item = &'a [f32]> + '_ {
        self.parts
            .iter()
            .flat_map(|p| (0..p.rows).map(move |i| p.row(i)))
    }

    /// Column `f` of every row, in order.
    pub fn column(&self, f: usize) -> impl Iterator<Item = f32> + '_ {
        self.parts
            .iter()
            .flat_map(move |p| (0..p.rows).map(move |i| p.get(i, f)))
    }

    /// The rows `idx` (ascending) copied into one row-major buffer.
    pub fn gather(&self, idx: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(idx.len() * self.width);
        let mut k = 0usize;
        let mut offset = 0usize;
        for p in &self.parts {
            while k < idx.len() && idx[k] < offset + p.rows {
                out.extend_from_slice(p.row(idx[k] - offset));
                k += 1;
            }
            offset += p.rows;
        }
        out
    }
}
