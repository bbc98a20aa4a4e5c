//! The fallback model: when training data has too few positives or negatives to fit a model
//! that can be trusted, profiles are still ranked, and every score is marked
//! `confidence = low`. With a buy-till-you-die feature in the catalogue
//! ([`BTYD_FEATURE`]: the BG/NBD chance of a goal event in the window, fitted at each cutoff
//! without labels) that chance ranks; otherwise recency, frequency and monetary value do
//! (and past goal events when the catalogue has them). Probabilities are anchored to the
//! observed base rate: the mean probability over the training rows equals the (smoothed)
//! share of positives.

use serde::{Deserialize, Serialize};

use crate::{Stack, sigmoid};

/// The feature the fallback ranks by when the catalogue has it.
pub const BTYD_FEATURE: &str = "btyd_p_goal_event";

/// The BG/NBD ranking: `intercept + logit(p)` (or `logit(1 − p)` for churn).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BtydTerm {
    pub feature: usize,
    pub name: String,
    pub churn: bool,
    /// Probability used where the feature is missing (no goal event yet): the smoothed
    /// positive rate of such rows in training.
    pub missing: f64,
}

impl BtydTerm {
    fn logit(&self, x: &[f32]) -> f64 {
        let v = f64::from(x[self.feature]);
        let p = if v.is_nan() { self.missing } else { v };
        let p = if self.churn { 1.0 - p } else { p };
        let p = p.clamp(1e-4, 1.0 - 1e-4);
        (p / (1.0 - p)).ln()
    }
}

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
    /// Set: the BG/NBD chance ranks and `terms` are empty.
    #[serde(default)]
    pub btyd: Option<BtydTerm>,
}

impl Fallback {
    /// Picks the ranking from the feature names: the BG/NBD chance ([`BTYD_FEATURE`]) when it
    /// is there and has values; else days since the last event (less is more likely), events
    /// in the longest window, the sum of the first numeric field in the longest window, and
    /// goal events in the longest window. For a churn goal (`will_not_occur`) every sign
    /// flips. The base rate is `(positives + 1) / (rows + 2)` of `reference`.
    pub fn fit(
        names: &[String],
        reference: &Stack<'_>,
        labels: &[u8],
        churn: bool,
        lookback_days: f64,
    ) -> Self {
        let n = reference.rows();
        let positives = labels.iter().filter(|l| **l == 1).count();
        let base_rate = (positives as f64 + 1.0) / (n as f64 + 2.0);
        let btyd = names
            .iter()
            .position(|f| f == BTYD_FEATURE)
            .filter(|&j| reference.column(j).any(|v| !v.is_nan()))
            .map(|feature| {
                let (mut rows, mut pos) = (0usize, 0usize);
                for (v, y) in reference.column(feature).zip(labels) {
                    if v.is_nan() {
                        rows += 1;
                        pos += usize::from(*y == 1);
                    }
                }
                let rate = (pos as f64 + base_rate) / (rows as f64 + 1.0);
                BtydTerm {
                    feature,
                    name: names[feature].clone(),
                    churn,
                    // Stored as the chance of a goal event, like the feature.
                    missing: if churn { 1.0 - rate } else { rate },
                }
            });
        let mut terms: Vec<Term> = Vec::new();
        if btyd.is_none() {
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
            terms = picks
                .into_iter()
                .map(|(feature, sign, missing)| Term {
                    feature,
                    name: names[feature].clone(),
                    sign: sign * flip,
                    missing,
                    mean: 0.0,
                })
                .collect();
        }
        let raw = |t: &Term, x: &[f32]| {
            let v = f64::from(x[t.feature]);
            let v = if v.is_nan() { t.missing } else { v.max(0.0) };
            t.sign * v.ln_1p()
        };
        for t in terms.iter_mut() {
            let s: f64 = reference.iter_rows().map(|x| raw(t, x)).sum();
            t.mean = if n > 0 { s / n as f64 } else { 0.0 };
        }
        let sums: Vec<f64> = reference
            .iter_rows()
            .map(|x| match &btyd {
                Some(b) => b.logit(x),
                None => terms.iter().map(|t| raw(t, x) - t.mean).sum(),
            })
            .collect();
        let var = sums.iter().map(|s| s * s).sum::<f64>() / n.max(1) as f64;
        let scale = if btyd.is_some() {
            1.0
        } else if var > 1e-12 {
            1.0 / var.sqrt()
        } else {
            1.0
        };
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
            btyd,
        }
    }

    /// `fallback_btyd` or `fallback_rfm`.
    pub fn algorithm(&self) -> &'static str {
        if self.btyd.is_some() {
            "fallback_btyd"
        } else {
            "fallback_rfm"
        }
    }

    /// The parameters for the model card.
    pub fn params(&self) -> serde_json::Value {
        match &self.btyd {
            Some(b) => serde_json::json!({
                "ranking": "BG/NBD chance of a goal event in the window",
                "feature": b.name,
                "missing_probability": b.missing,
                "base_rate": self.base_rate,
            }),
            None => serde_json::json!({
                "ranking": "recency, frequency and monetary value",
                "terms": self.terms.iter().map(|t| &t.name).collect::<Vec<_>>(),
                "base_rate": self.base_rate,
            }),
        }
    }

    /// Adds each feature's contribution (log-odds) to `out`; returns the intercept.
    /// `intercept + Σ out` is the margin.
    pub fn explain(&self, x: &[f32], out: &mut [f64]) -> f64 {
        if let Some(b) = &self.btyd {
            out[b.feature] += b.logit(x);
            return self.intercept;
        }
        for t in &self.terms {
            let v = f64::from(x[t.feature]);
            let v = if v.is_nan() { t.missing } else { v.max(0.0) };
            out[t.feature] += self.scale * (t.sign * v.ln_1p() - t.mean);
        }
        self.intercept
    }

    pub fn margin(&self, x: &[f32]) -> f64 {
        if let Some(b) = &self.btyd {
            return self.intercept + b.logit(x);
        }
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
    use crate::Matrix;

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
        let st = Stack::one(m);
        // 4 rows with 1 positive: base rate (1 + 1) / (4 + 2).
        let y = [1u8, 0, 0, 0];
        let fb = Fallback::fit(&names, &st, &y, false, 365.0);
        let p: Vec<f64> = (0..4).map(|i| sigmoid(fb.margin(m.row(i)))).collect();
        assert!(p[0] > p[1] && p[1] > p[2] && p[2] > p[3], "{p:?}");
        let mean = p.iter().sum::<f64>() / 4.0;
        assert!((mean - 2.0 / 6.0).abs() < 1e-6, "{mean}");
        assert_eq!(fb.algorithm(), "fallback_rfm");
        // Churn flips the ranking.
        let churn = Fallback::fit(&names, &st, &y, true, 365.0);
        assert!(churn.margin(m.row(3)) > churn.margin(m.row(0)));
        // Contributions add up to the margin.
        let mut out = vec![0.0; 3];
        let b = fb.explain(m.row(1), &mut out);
        assert!((b + out.iter().sum::<f64>() - fb.margin(m.row(1))).abs() < 1e-12);
        assert_eq!(out[2], 0.0);
    }

    #[test]
    fn ranks_by_the_btyd_chance_when_the_catalogue_has_it() {
        let names: Vec<String> = ["days_since_last_event", BTYD_FEATURE]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // (recency, BG/NBD chance): the chance decides, not the recency.
        let rows: Vec<f32> = vec![1.0, 0.05, 50.0, 0.6, 10.0, 0.3, 5.0, f32::NAN];
        let m = Matrix::new(&rows, 2);
        let st = Stack::one(m);
        let y = [0u8, 1, 0, 0];
        let fb = Fallback::fit(&names, &st, &y, false, 365.0);
        assert_eq!(fb.algorithm(), "fallback_btyd");
        let p: Vec<f64> = (0..4).map(|i| sigmoid(fb.margin(m.row(i)))).collect();
        assert!(p[1] > p[2] && p[2] > p[0], "{p:?}");
        let mean = p.iter().sum::<f64>() / 4.0;
        assert!((mean - 2.0 / 6.0).abs() < 1e-6, "{mean}");
        let mut out = vec![0.0; 2];
        let b = fb.explain(m.row(2), &mut out);
        assert!((b + out.iter().sum::<f64>() - fb.margin(m.row(2))).abs() < 1e-12);
        assert_eq!(out[0], 0.0);
        let churn = Fallback::fit(&names, &st, &y, true, 365.0);
        assert!(churn.margin(m.row(0)) > churn.margin(m.row(1)));
    }
}
