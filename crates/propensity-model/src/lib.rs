//! Models of a Propensity job: training, calibration, evaluation and explanation, pure and
//! deterministic given a seed, with no IO.
//!
//! - [`gbdt`]: histogram gradient-boosted trees (the default), explained by exact TreeSHAP
//!   ([`shap`]).
//! - [`linear`]: logistic regression (linfa-logistic) and a linear SVM (linfa-svm), explained
//!   by coefficient × centred value.
//! - [`fallback`]: a recency / frequency / monetary ranking used when there are too few
//!   positives or negatives to train; its scores are marked `confidence = low`.
//! - [`pipeline`]: the training protocol (validation on the latest cutoff, early stopping,
//!   class weights, calibration, model card) and scoring with reason codes.
//! - [`metrics`], [`calibrate`], [`card`]: what the model card reports.
//!
//! ```
//! use propensity_model::{calibrate::Calibrator, metrics};
//!
//! let scores = [0.1, 0.4, 0.35, 0.8];
//! let labels = [false, false, true, true];
//! assert_eq!(metrics::auc(&scores, &labels), Some(0.75));
//! let iso = Calibrator::isotonic(&scores, &labels);
//! assert_eq!(iso.apply(0.8), 1.0);
//! ```

pub mod calibrate;
pub mod card;
pub mod fallback;
pub mod gbdt;
pub mod linear;
pub mod metrics;
pub mod pipeline;
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
