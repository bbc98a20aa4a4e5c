//! Model-card metrics: AUC, PR-AUC (average precision), log loss, Brier score, expected
//! calibration error, the calibration curve, and lift and cumulative gains by decile.
//!
//! Ties are handled exactly (average ranks for AUC, one threshold per distinct score for
//! average precision), so the figures do not depend on the order of the rows.

use serde::{Deserialize, Serialize};

/// Area under the ROC curve (the probability that a random positive scores above a random
/// negative, ties counting one half). `None` without both classes.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let pos = labels[..n].iter().filter(|l| **l).count();
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average 1-based ranks over runs of equal scores.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg * idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, q) = (pos as f64, neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * q))
}

/// Average precision: the area under the precision-recall curve as a step function, one
/// step per distinct score. `None` without positives.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let pos = labels[..n].iter().filter(|l| **l).count();
    if pos == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut ap, mut prev_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        tp += idx[i..=j].iter().filter(|&&k| labels[k]).count();
        seen += j - i + 1;
        let recall = tp as f64 / pos as f64;
        ap += (recall - prev_recall) * (tp as f64 / seen as f64);
        prev_recall = recall;
        i = j + 1;
    }
    Some(ap)
}

const EPS: f64 = 1e-15;

/// Mean negative log-likelihood of the labels (probabilities clamped to [1e-15, 1 − 1e-15]).
pub fn log_loss(probs: &[f64], labels: &[bool]) -> f64 {
    mean(probs.iter().zip(labels).map(|(&p, &y)| {
        let p = p.clamp(EPS, 1.0 - EPS);
        if y { -p.ln() } else { -(1.0 - p).ln() }
    }))
}

/// Mean squared difference between probability and outcome.
pub fn brier(probs: &[f64], labels: &[bool]) -> f64 {
    mean(
        probs
            .iter()
            .zip(labels)
            .map(|(&p, &y)| (p - f64::from(u8::from(y))).powi(2)),
    )
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for v in it {
        s += v;
        n += 1;
    }
    if n == 0 { 0.0 } else { s / n as f64 }
}

/// One bin of the calibration curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// Equal-width probability bins over [0, 1]; empty bins are left out.
pub fn calibration_curve(probs: &[f64], labels: &[bool], bins: usize) -> Vec<CalibrationBin> {
    let bins = bins.max(1);
    let mut acc = vec![(0usize, 0.0f64, 0usize); bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let b = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += p;
        acc[b].2 += usize::from(y);
    }
    acc.iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0)
        .map(|(b, &(n, sum, pos))| CalibrationBin {
            lower: b as f64 / bins as f64,
            upper: (b + 1) as f64 / bins as f64,
            count: n,
            mean_predicted: sum / n as f64,
            observed_rate: pos as f64 / n as f64,
        })
        .collect()
}

/// Expected calibration error: the count-weighted mean |predicted − observed| over 10
/// equal-width bins.
pub fn expected_calibration_error(probs: &[f64], labels: &[bool]) -> f64 {
    let curve = calibration_curve(probs, labels, 10);
    let total: usize = curve.iter().map(|b| b.count).sum();
    if total == 0 {
        return 0.0;
    }
    curve
        .iter()
        .map(|b| b.count as f64 / total as f64 * (b.mean_predicted - b.observed_rate).abs())
        .sum()
}

/// One decile of profiles ranked by score (decile 1 = the highest scores).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decile {
    pub decile: usize,
    pub count: usize,
    pub positives: usize,
    pub rate: f64,
    /// Rate in this decile over the overall rate.
    pub lift: f64,
    /// Share of all positives found in deciles 1..=this one.
    pub cumulative_gain: f64,
}

/// Lift in the top `share` of rows by score: their positive rate over the overall rate.
/// Ties at the cut are shared in proportion (each tied row counts fractionally), so the
/// figure does not depend on how ties happen to be ordered. `None` without positives.
pub fn lift_at(scores: &[f64], labels: &[bool], share: f64) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let pos = labels[..n].iter().filter(|l| **l).count();
    if n == 0 || pos == 0 {
        return None;
    }
    let k = (share.clamp(0.0, 1.0) * n as f64).round().max(1.0);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut taken, mut hits, mut i) = (0.0f64, 0.0f64, 0usize);
    while i < n && taken < k {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let group = (j - i + 1) as f64;
        let group_pos = idx[i..=j].iter().filter(|&&r| labels[r]).count() as f64;
        let take = group.min(k - taken);
        hits += group_pos * take / group;
        taken += take;
        i = j + 1;
    }
    Some((hits / taken) / (pos as f64 / n as f64))
}

/// Lift and cumulative gains by decile. Rows are ranked by score, ties broken by position,
/// and split into ten groups whose sizes differ by at most one.
pub fn deciles(scores: &[f64], labels: &[bool]) -> Vec<Decile> {
    let n = scores.len().min(labels.len());
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let total_pos = labels[..n].iter().filter(|l| **l).count();
    let base = total_pos as f64 / n as f64;
    let mut out = Vec::with_capacity(10);
    let mut cum = 0usize;
    for d in 0..10 {
        let (lo, hi) = (d * n / 10, (d + 1) * n / 10);
        let count = hi - lo;
        let positives = idx[lo..hi].iter().filter(|&&k| labels[k]).count();
        cum += positives;
        let rate = if count > 0 {
            positives as f64 / count as f64
        } else {
            0.0
        };
        out.push(Decile {
            decile: d + 1,
            count,
            positives,
            rate,
            lift: if base > 0.0 { rate / base } else { 0.0 },
            cumulative_gain: if total_pos > 0 {
                cum as f64 / total_pos as f64
            } else {
                0.0
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_extremes_ties_and_pairs() {
        assert_eq!(
            auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(auc(&[0.3, 0.3], &[true, true]), None);
        // Brute force over pairs agrees on a mixed case with ties.
        let s = [0.2, 0.5, 0.5, 0.7, 0.1, 0.5, 0.9, 0.3];
        let y = [false, true, false, true, false, true, false, true];
        let mut num = 0.0;
        let mut den = 0.0;
        for i in 0..8 {
            for j in 0..8 {
                if y[i] && !y[j] {
                    den += 1.0;
                    num += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert_eq!(auc(&s, &y), Some(num / den));
    }

    #[test]
    fn average_precision_known_values() {
        // Ranked: P, N, P → precision at the positives 1 and 2/3 → AP = (1 + 2/3) / 2.
        let ap = average_precision(&[0.9, 0.8, 0.7], &[true, false, true]).unwrap_or(0.0);
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(average_precision(&[0.9, 0.8], &[true, true]), Some(1.0));
    }

    #[test]
    fn losses() {
        assert!((log_loss(&[0.5, 0.5], &[true, false]) - 2f64.ln()).abs() < 1e-12);
        assert_eq!(brier(&[1.0, 0.0], &[true, false]), 0.0);
        assert_eq!(brier(&[0.5, 0.5], &[true, false]), 0.25);
        assert!(log_loss(&[0.0], &[true]).is_finite());
    }

    #[test]
    fn calibration_error_is_zero_when_rates_match() {
        // Bin [0.2, 0.3): predicted 0.25, observed 1 in 4.
        let p = [0.25; 4];
        let y = [true, false, false, false];
        assert_eq!(expected_calibration_error(&p, &y), 0.0);
        let off = expected_calibration_error(&[0.75; 4], &y);
        assert!((off - 0.5).abs() < 1e-12);
        let curve = calibration_curve(&p, &y, 10);
        assert_eq!(curve.len(), 1);
        assert_eq!((curve[0].lower, curve[0].count), (0.2, 4));
    }

    #[test]
    fn deciles_split_evenly_and_gains_reach_one() {
        let s: Vec<f64> = (0..25).map(|i| f64::from(i) / 25.0).collect();
        let y: Vec<bool> = (0..25).map(|i| i >= 20).collect();
        let d = deciles(&s, &y);
        assert_eq!(d.iter().map(|x| x.count).sum::<usize>(), 25);
        assert!(d.iter().all(|x| x.count == 2 || x.count == 3));
        assert_eq!(
            d[0].positives, d[0].count,
            "top decile holds the top scores"
        );
        assert!((d[9].cumulative_gain - 1.0).abs() < 1e-12);
        assert!(d[0].lift > 4.0);
    }
}

/// What calibrated probabilities expect of their own ranking before the outcomes are known:
/// the AUC, average precision and lift at 10 % that the scores will achieve on the coming
/// window if each profile's outcome happens with its probability. Ranked by `scores` (ties
/// counted half), measured against the expected positives `probs`. These are the model
/// card's estimates for the next window; they are exact in expectation when the
/// probabilities are calibrated, and the validation cutoff's calibration error says how far
/// to trust that.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    pub auc: Option<f64>,
    pub pr_auc: Option<f64>,
    pub lift_at_10: Option<f64>,
    /// Mean probability: the expected base rate of the window.
    pub base_rate: f64,
    /// Profiles the expectation is over.
    pub profiles: usize,
}

pub fn expected(scores: &[f64], probs: &[f64]) -> Expected {
    let n = scores.len().min(probs.len());
    let total_p: f64 = probs[..n].iter().sum();
    let total_q = n as f64 - total_p;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    // AUC: each pair (positive i, negative j) with i ranked above j, weighted p_i (1 − p_j).
    let (mut below_q, mut num, mut i) = (0.0f64, 0.0f64, 0usize);
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let (gp, gq): (f64, f64) = idx[i..=j]
            .iter()
            .map(|&k| (probs[k], 1.0 - probs[k]))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let self_pairs: f64 = idx[i..=j]
            .iter()
            .map(|&k| probs[k] * (1.0 - probs[k]))
            .sum();
        num += gp * below_q + 0.5 * (gp * gq - self_pairs);
        below_q += gq;
        i = j + 1;
    }
    let pairs = total_p * total_q - probs[..n].iter().map(|p| p * (1.0 - p)).sum::<f64>();
    let auc = (pairs > 0.0).then(|| num / pairs);
    // Average precision and lift, best first.
    idx.reverse();
    let (mut cum, mut ap) = (0.0f64, 0.0f64);
    for (k, &r) in idx.iter().enumerate() {
        cum += probs[r];
        ap += probs[r] / total_p.max(f64::MIN_POSITIVE) * (cum / (k + 1) as f64);
    }
    let top = ((0.1 * n as f64).round() as usize).clamp(1, n.max(1));
    let top_p: f64 = idx.iter().take(top).map(|&r| probs[r]).sum();
    let base = total_p / n.max(1) as f64;
    Expected {
        auc,
        pr_auc: (total_p > 0.0).then_some(ap),
        lift_at_10: (total_p > 0.0 && n > 0).then(|| (top_p / top as f64) / base),
        base_rate: base,
        profiles: n,
    }
}

#[cfg(test)]
mod expected_tests {
    use super::*;

    #[test]
    fn expected_metrics_match_outcomes_drawn_from_the_probabilities() {
        // 4,000 profiles with known probabilities; outcomes drawn 200 times.
        let n = 4000;
        let probs: Vec<f64> = (0..n)
            .map(|i| {
                let u = crate::mix(i as u64) as f64 / u64::MAX as f64;
                0.02 + 0.6 * u * u
            })
            .collect();
        let scores = probs.clone();
        let e = expected(&scores, &probs);
        let (mut auc, mut lift, mut ap) = (0.0, 0.0, 0.0);
        let draws = 200;
        for d in 0..draws {
            let y: Vec<bool> = (0..n)
                .map(|i| {
                    let u = crate::mix((d * n + i) as u64 ^ 0xabc) as f64 / u64::MAX as f64;
                    u < probs[i]
                })
                .collect();
            auc += super::auc(&scores, &y).unwrap_or(0.0);
            lift += lift_at(&scores, &y, 0.1).unwrap_or(0.0);
            ap += average_precision(&scores, &y).unwrap_or(0.0);
        }
        let d = f64::from(draws as u32);
        let close = |a: f64, b: Option<f64>, tol: f64| (a / d - b.unwrap_or(0.0)).abs() < tol;
        assert!(close(auc, e.auc, 0.003), "{} vs {:?}", auc / d, e.auc);
        assert!(
            close(lift, e.lift_at_10, 0.03),
            "{} vs {:?}",
            lift / d,
            e.lift_at_10
        );
        assert!(close(ap, e.pr_auc, 0.01), "{} vs {:?}", ap / d, e.pr_auc);
        let mean = probs.iter().sum::<f64>() / n as f64;
        assert!((e.base_rate - mean).abs() < 1e-12);
        // Ties: equal scores are half above, half below.
        let flat = expected(&[1.0, 1.0], &[0.5, 0.5]);
        assert_eq!(flat.auc, Some(0.5));
    }
}
