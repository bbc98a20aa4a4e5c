//! Linear models: logistic regression (linfa-logistic) and a linear-kernel SVM (linfa-svm).
//!
//! Inputs are prepared the same way for both: each value is compressed with a signed
//! `ln(1 + |x|)` (counts and sums are heavy-tailed), missing values are imputed with the
//! training median, then standardised. The model is kept as one coefficient per standardised
//! feature and an intercept, so a profile's reasons are exactly coefficient × centred value.
//!
//! The SVM is trained on a deterministic sample ([`SVM_SAMPLE`] rows): SMO needs the kernel
//! matrix of its training rows, which grows with the square of the rows. A linear kernel keeps
//! scoring and explaining as fast as the logistic model. Its decision values become
//! probabilities through the job's calibration.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use linfa_svm::Svm;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::{Matrix, mix};

/// Rows the SVM is trained on at most.
pub const SVM_SAMPLE: usize = 3000;
/// Rows logistic regression is trained on at most (a deterministic sample beyond).
pub const LOGISTIC_SAMPLE: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Linear {
    /// `logistic` or `svm`.
    pub kind: String,
    pub impute: Vec<f64>,
    pub center: Vec<f64>,
    pub scale: Vec<f64>,
    pub coef: Vec<f64>,
    pub intercept: f64,
    /// Rows the model was fitted on.
    pub fitted_rows: usize,
}

fn compress(v: f32) -> f64 {
    let v = f64::from(v);
    v.signum() * v.abs().ln_1p()
}

/// A deterministic sample of `k` of `n` indices (ascending), from a seed.
pub fn sample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    let mut keyed: Vec<(u64, usize)> = (0..n).map(|i| (mix(seed ^ i as u64), i)).collect();
    keyed.select_nth_unstable(k);
    let mut out: Vec<usize> = keyed[..k].iter().map(|(_, i)| *i).collect();
    out.sort_unstable();
    out
}

impl Linear {
    fn prepare(x: Matrix<'_>, rows: &[usize]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let w = x.width;
        let mut impute = vec![0.0; w];
        let mut center = vec![0.0; w];
        let mut scale = vec![1.0; w];
        for j in 0..w {
            let mut v: Vec<f64> = rows
                .iter()
                .map(|&i| x.get(i, j))
                .filter(|v| !v.is_nan())
                .map(compress)
                .collect();
            if v.is_empty() {
                continue;
            }
            v.sort_unstable_by(f64::total_cmp);
            impute[j] = v[v.len() / 2];
            let n = rows.len() as f64;
            let filled = |i: usize| {
                let a = x.get(i, j);
                if a.is_nan() { impute[j] } else { compress(a) }
            };
            let mean = rows.iter().map(|&i| filled(i)).sum::<f64>() / n;
            let var = rows
                .iter()
                .map(|&i| (filled(i) - mean).powi(2))
                .sum::<f64>()
                / n;
            center[j] = mean;
            scale[j] = if var > 1e-12 { var.sqrt() } else { 0.0 };
        }
        (impute, center, scale)
    }

    /// The standardised value of feature `j` (0 for a constant feature).
    #[inline]
    fn z(&self, j: usize, v: f32) -> f64 {
        if self.scale[j] == 0.0 {
            return 0.0;
        }
        let t = if v.is_nan() {
            self.impute[j]
        } else {
            compress(v)
        };
        (t - self.center[j]) / self.scale[j]
    }

    fn design(x: Matrix<'_>, rows: &[usize], m: &Linear) -> Array2<f64> {
        let mut a = Array2::zeros((rows.len(), x.width));
        for (r, &i) in rows.iter().enumerate() {
            for j in 0..x.width {
                a[[r, j]] = m.z(j, x.get(i, j));
            }
        }
        a
    }

    /// An unfitted model prepared on a sample of at most `sample` rows, the sample, and its
    /// design matrix.
    fn setup(
        kind: &str,
        x: Matrix<'_>,
        sample: usize,
        seed: u64,
    ) -> (Self, Vec<usize>, Array2<f64>) {
        let rows = sample_indices(x.rows, sample, seed);
        let (impute, center, scale) = Self::prepare(x, &rows);
        let m = Linear {
            kind: kind.into(),
            impute,
            center,
            scale,
            coef: vec![0.0; x.width],
            intercept: 0.0,
            fitted_rows: rows.len(),
        };
        let design = Self::design(x, &rows, &m);
        (m, rows, design)
    }

    /// Logistic regression with an L2 penalty.
    pub fn fit_logistic(x: Matrix<'_>, y: &[u8], seed: u64) -> Result<Self, String> {
        let (mut m, rows, design) = Self::setup("logistic", x, LOGISTIC_SAMPLE, seed);
        let targets: Array1<bool> = rows.iter().map(|&i| y[i] == 1).collect();
        let data = Dataset::new(design, targets);
        let fitted = LogisticRegression::default()
            .alpha(1.0)
            .max_iterations(100)
            .gradient_tolerance(1e-4)
            .fit(&data)
            .map_err(|e| format!("logistic regression did not fit: {e}"))?;
        // linfa makes the MORE frequent class its "positive" one: map it back explicitly, so
        // a positive margin always means "more likely to reach the goal".
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        m.coef = fitted.params().iter().map(|c| sign * c).collect();
        m.intercept = sign * fitted.intercept();
        Ok(m)
    }

    /// A linear-kernel C-SVM on a sample, with the positive class weighted up to the
    /// negatives' count (at most 10×).
    pub fn fit_svm(x: Matrix<'_>, y: &[u8], seed: u64) -> Result<Self, String> {
        let (mut m, rows, design) = Self::setup("svm", x, SVM_SAMPLE, seed);
        let pos = rows.iter().filter(|&&i| y[i] == 1).count().max(1);
        let neg = rows.len().saturating_sub(pos).max(1);
        let w_pos = (neg as f64 / pos as f64).clamp(1.0, 10.0);
        let targets: Array1<bool> = rows.iter().map(|&i| y[i] == 1).collect();
        let data = Dataset::new(design, targets);
        let svm: Svm<f64, bool> = Svm::<f64, bool>::params()
            .linear_kernel()
            .pos_neg_weights(w_pos * 0.1, 0.1)
            // libsvm's tolerance: linfa's default (1e-7) took ~50 s on 3,000 rows, 1e-3 takes
            // ~6 s for the same AUC. Shrinking stays off: with it, linfa 0.8.1 returned an
            // inverted solution (AUC 0.29 instead of 0.79) on the demo features.
            .eps(1e-3)
            .shrinking(false)
            .fit(&data)
            .map_err(|e| format!("svm did not fit: {e}"))?;
        // decision(x) = w·x − rho; w_j is the weighted sum at the unit vector e_j.
        let mut unit = Array1::zeros(x.width);
        for j in 0..x.width {
            unit[j] = 1.0;
            m.coef[j] = svm.weighted_sum(&unit);
            unit[j] = 0.0;
        }
        m.intercept = -svm.rho;
        Ok(m)
    }

    pub fn margin(&self, x: &[f32]) -> f64 {
        self.intercept
            + self
                .coef
                .iter()
                .enumerate()
                .map(|(j, c)| c * self.z(j, x[j]))
                .sum::<f64>()
    }

    /// Adds coefficient × centred value per feature to `out`; returns the intercept.
    pub fn explain(&self, x: &[f32], out: &mut [f64]) -> f64 {
        for (j, c) in self.coef.iter().enumerate() {
            out[j] += c * self.z(j, x[j]);
        }
        self.intercept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 30 % positives: linfa's "positive" class is then the negatives, the trap this module
    /// guards against.
    fn problem(n: usize) -> (Vec<f32>, Vec<u8>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let a = (mix(i as u64) % 1000) as f32 / 100.0;
            let b = (mix(i as u64 + 7_000_000) % 1000) as f32 / 1000.0;
            let noise = (mix(i as u64 + 99) % 1000) as f64 / 1000.0;
            let p = 1.0 / (1.0 + (-(f64::from(a) * 0.6 - 4.0)).exp());
            y.push(u8::from(noise < p));
            x.extend_from_slice(&[a, if i % 5 == 0 { f32::NAN } else { b }]);
        }
        (x, y)
    }

    fn check(m: &Linear, x: &[f32], y: &[u8]) {
        let mx = Matrix::new(x, 2);
        let margins: Vec<f64> = (0..mx.rows).map(|i| m.margin(mx.row(i))).collect();
        let labels: Vec<bool> = y.iter().map(|l| *l == 1).collect();
        let auc = crate::metrics::auc(&margins, &labels).unwrap_or(0.0);
        assert!(auc > 0.75, "{} auc {auc}", m.kind);
        assert!(m.coef[0] > 0.0, "the informative feature raises the score");
        let mut out = vec![0.0; 2];
        let b = m.explain(mx.row(3), &mut out);
        assert!((b + out.iter().sum::<f64>() - margins[3]).abs() < 1e-9);
    }

    #[test]
    fn logistic_maps_classes_explicitly() {
        let (x, y) = problem(4000);
        let pos = y.iter().filter(|l| **l == 1).count() as f64 / y.len() as f64;
        assert!(pos > 0.1 && pos < 0.45, "{pos}");
        let m = Linear::fit_logistic(Matrix::new(&x, 2), &y, 1).expect("fit");
        check(&m, &x, &y);
        // Probabilities are probabilities of the positive class: their mean is the base rate.
        let mx = Matrix::new(&x, 2);
        let mean: f64 = (0..mx.rows)
            .map(|i| 1.0 / (1.0 + (-m.margin(mx.row(i))).exp()))
            .sum::<f64>()
            / mx.rows as f64;
        assert!((mean - pos).abs() < 0.02, "mean {mean} vs base rate {pos}");
    }

    #[test]
    fn svm_on_a_sample() {
        let (x, y) = problem(5000);
        let m = Linear::fit_svm(Matrix::new(&x, 2), &y, 1).expect("fit");
        assert_eq!(m.fitted_rows, SVM_SAMPLE);
        check(&m, &x, &y);
    }

    #[test]
    fn samples_are_deterministic_and_distinct() {
        let a = sample_indices(1000, 100, 5);
        assert_eq!(a, sample_indices(1000, 100, 5));
        assert_ne!(a, sample_indices(1000, 100, 6));
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }
}
