//! The fallback model: when training data has too few positives or negatives to fit a model
//! that can be trusted, profiles are still ranked, by recency, frequency and monetary value
//! (and past goal events when the catalogue has them), and every score is marked
//! `confidence = low`. Probabilities are anchored to the observed base rate: the mean
//! probability over the training rows equals the (smoothed) share of positives.

use serde::{Deserialize, Serialize};

use crate::{Matrix, sigmoid};

/// One component: `sign · ln(1 + max(x, 0))`, missing = `missing`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Term {
    pub feature: usize,
    pub name: String,
    /// +1 when more of it means more likely, −1 when less.
    pub sign: f64,
    /// Value used when the feature is missing (e.g. no event yet: the lookback in days).
    pub missing: f64,
    /// Mean of the term over the reference rows (contributions are centred on it).
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fallback {
    pub terms: Vec<Term>,
    /// Scale applied to every term (1 / standard deviation of the summed terms).
    pub scale: f64,
    /// Intercept solved so the mean probability equals `base_rate`.
    pub intercept: f64,
    pub base_rate: f64,
}

impl Fallback {
    /// Picks the terms from the feature names: days since the last event (less is more
    /// likely), events in the longest window, the sum of the first numeric field in the
    /// longest window, and goal events in the longest window. For a churn goal
    /// (`will_not_occur`) every sign flips. The base rate is `(positives + 1) / (rows + 2)`.
    pub fn fit(
        names: &[String],
        reference: Matrix<'_>,
        positives: usize,
        rows: usize,
        churn: bool,
        lookback_days: f64,
    ) -> Self {
        let last = |pred: &dyn Fn(&str) -> bool| names.iter().rposition(|n| pred(n));
        let mut picks: Vec<(usize, f64, f64)> = Vec::new();
        if let Some(i) = names.iter().position(|n| n == "days_since_last_event") {
            picks.push((i, -1.0, lookback_days));
        }
        if let Some(i) = last(&|n| n.starts_with("event_count_") && !n.contains("trend")) {
            picks.push((i, 1.0, 0.0));
        }
        if let Some(i) = last(&|n| n.contains("_sum_")) {
            picks.push((i, 1.0, 0.0));
        }
        if let Some(i) = last(&|n| n.starts_with("goal_event_count_")) {
            picks.push((i, 1.0, 0.0));
        }
        let flip = if churn { -1.0 } else { 1.0 };
        let mut terms: Vec<Term> = picks
            .into_iter()
            .map(|(feature, sign, missing)| Term {
                feature,
                name: names[feature].clone(),
                sign: sign * flip,
                missing,
                mean: 0.0,
            })
            .collect();
        let n = reference.rows;
        let raw = |t: &Term, x: &[f32]| {
            let v = f64::from(x[t.feature]);
            let v = if v.is_nan() { t.missing } else { v.max(0.0) };
            t.sign * v.ln_1p()
        };
        for t in terms.iter_mut() {
            let s: f64 = (0..n).map(|i| raw(t, reference.row(i))).sum();
            t.mean = if n > 0 { s / n as f64 } else { 0.0 };
        }
        let sums: Vec<f64> = (0..n)
            .map(|i| {
                terms
                    .iter()
                    .map(|t| raw(t, reference.row(i)) - t.mean)
                    .sum()
            })
            .collect();
        let var = sums.iter().map(|s| s * s).sum::<f64>() / n.max(1) as f64;
        let scale = if var > 1e-12 { 1.0 / var.sqrt() } else { 1.0 };
        let base_rate = (positives as f64 + 1.0) / (rows as f64 + 2.0);
        // Mean probability is increasing in the intercept: bisection.
        let mean_p = |a: f64| {
            if sums.is_empty() {
                return sigmoid(a);
            }
            sums.iter().map(|s| sigmoid(a + scale * s)).sum::<f64>() / sums.len() as f64
        };
        let (mut lo, mut hi) = (-30.0, 30.0);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if mean_p(mid) < base_rate {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Fallback {
            terms,
            scale,
            intercept: (lo + hi) / 2.0,
            base_rate,
        }
    }

    /// Adds each feature's contribution (log-odds) to `out`; returns the intercept.
    /// `intercept + Σ out` is the margin.
    pub fn explain(&self, x: &[f32], out: &mut [f64]) -> f64 {
        for t in &self.terms {
            let v = f64::from(x[t.feature]);
            let v = if v.is_nan() { t.missing } else { v.max(0.0) };
            out[t.feature] += self.scale * (t.sign * v.ln_1p() - t.mean);
        }
        self.intercept
    }

    pub fn margin(&self, x: &[f32]) -> f64 {
        let mut s = self.intercept;
        for t in &self.terms {
            let v = f64::from(x[t.feature]);
            let v = if v.is_nan() { t.missing } else { v.max(0.0) };
            s += self.scale * (t.sign * v.ln_1p() - t.mean);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_recent_active_profiles_higher_and_matches_the_base_rate() {
        let names: Vec<String> = ["days_since_last_event", "event_count_90d", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // (recency, frequency, noise)
        let rows: Vec<f32> = vec![
            1.0,
            20.0,
            0.0, //
            30.0,
            2.0,
            0.0, //
            80.0,
            1.0,
            0.0, //
            f32::NAN,
            0.0,
            0.0,
        ];
        let m = Matrix::new(&rows, 3);
        let fb = Fallback::fit(&names, m, 3, 98, false, 365.0);
        let p: Vec<f64> = (0..4).map(|i| sigmoid(fb.margin(m.row(i)))).collect();
        assert!(p[0] > p[1] && p[1] > p[2] && p[2] > p[3], "{p:?}");
        let mean = p.iter().sum::<f64>() / 4.0;
        assert!((mean - 4.0 / 100.0).abs() < 1e-6, "{mean}");
        // Churn flips the ranking.
        let churn = Fallback::fit(&names, m, 3, 98, true, 365.0);
        assert!(churn.margin(m.row(3)) > churn.margin(m.row(0)));
        // Contributions add up to the margin.
        let mut out = vec![0.0; 3];
        let b = fb.explain(m.row(1), &mut out);
        assert!((b + out.iter().sum::<f64>() - fb.margin(m.row(1))).abs() < 1e-12);
        assert_eq!(out[2], 0.0);
    }
}
