//! Probability calibration, fitted on the validation cutoff: isotonic regression (pool
//! adjacent violators), Platt scaling (a logistic curve on the logit of the raw score), or
//! Platt's slope alone with the scores' own mean kept ([`Calibrator::spread`]). All keep the
//! ranking (they are non-decreasing), so AUC is unchanged where scores are
//! distinct.
//!
//! The isotonic map is smoothed ([`Calibrator::Smooth`]): a step function would give every
//! profile of a block one probability (on a sparse purchase log most profiles shared one) and
//! 0 or 1 at the ends. Instead each block keeps a slightly shrunk rate
//! (`(positives + base rate) / (rows + 1)`, never 0 or 1) on average but rises a little from
//! its lowest to its highest score, the map is linear in log-odds between the blocks'
//! ends, and constant beyond the outermost. So distinct raw scores in the fitted range keep
//! distinct probabilities, and no probability is 0 or 1.

use serde::{Deserialize, Serialize};

use crate::sigmoid;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Calibrator {
    /// Raw scores are used as they are.
    None,
    /// Blocks of raw scores `[lower, upper]` mapped to `value`, ascending; between blocks
    /// the value is interpolated linearly, outside them it is the nearest block's.
    Isotonic { blocks: Vec<Block> },
    /// `p = 1 / (1 + exp(a · logit(s) + b))`.
    Platt { a: f64, b: f64 },
    /// Interpolated isotonic regression in log-odds (see the module docs); beyond the end
    /// knots the log-odds follow `slope` (0: constant).
    Smooth { knots: Vec<Knot>, slope: f64 },
}

/// One knot of [`Calibrator::Smooth`]: a block's mean raw log-odds and its probability.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Knot {
    pub logit: f64,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Block {
    pub lower: f64,
    pub upper: f64,
    pub value: f64,
}

fn logit(s: f64) -> f64 {
    let s = s.clamp(1e-12, 1.0 - 1e-12);
    (s / (1.0 - s)).ln()
}

impl Calibrator {
    /// Smoothed isotonic regression of the labels on the scores (see the module docs).
    pub fn isotonic(scores: &[f64], labels: &[bool]) -> Self {
        let n = scores.len().min(labels.len());
        if n == 0 {
            return Calibrator::None;
        }
        let base = labels[..n].iter().filter(|l| **l).count() as f64 / n as f64;
        let z: Vec<f64> = scores[..n].iter().map(|&s| logit(s)).collect();
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| z[a].total_cmp(&z[b]));
        // Blocks: (sum of log-odds, positives, rows) and their (lowest, highest) log-odds;
        // equal scores start as one block.
        let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
        let mut bounds: Vec<(f64, f64)> = Vec::new();
        let mut i = 0;
        while i < n {
            let mut j = i;
            while j + 1 < n && z[idx[j + 1]] == z[idx[i]] {
                j += 1;
            }
            let pos = idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
            let w = (j - i + 1) as f64;
            blocks.push((z[idx[i]] * w, pos, w));
            bounds.push((z[idx[i]], z[idx[i]]));
            while blocks.len() >= 2 {
                let k = blocks.len();
                let (a, b) = (blocks[k - 2], blocks[k - 1]);
                if a.1 / a.2 < b.1 / b.2 {
                    break;
                }
                let (ba, bb) = (bounds[k - 2], bounds[k - 1]);
                blocks.truncate(k - 2);
                bounds.truncate(k - 2);
                blocks.push((a.0 + b.0, a.1 + b.1, a.2 + b.2));
                bounds.push((ba.0, bb.1));
            }
            i = j + 1;
        }
        // Shrinking small blocks more than large ones can break the order: keep it with a
        // running maximum.
        let mut top = 0.0f64;
        let values: Vec<f64> = blocks
            .iter()
            .map(|&(_, pos, w)| {
                // Never 0 or 1, even when every row of the data has one label.
                top = top.max(((pos + base) / (w + 1.0)).clamp(1e-6, 1.0 - 1e-6));
                top
            })
            .collect();
        // Each block keeps its rate on average but spreads a little, symmetrically, across its
        // scores (at most a quarter of the way to either neighbour's rate, and 10 % of its
        // own), so the map is strictly increasing wherever the neighbours differ.
        let mut knots = Vec::with_capacity(2 * values.len());
        for (k, &(lo, hi)) in bounds.iter().enumerate() {
            let v = values[k];
            let below = if k > 0 {
                (v - values[k - 1]) / 4.0
            } else {
                v / 10.0
            };
            let above = if k + 1 < values.len() {
                (values[k + 1] - v) / 4.0
            } else {
                (1.0 - v) / 10.0
            };
            // The same both ways, so the block's mean stays its rate.
            let d = below.min(above).min(v / 10.0);
            let (d_lo, d_hi) = (d, d);
            if hi > lo {
                knots.push(Knot {
                    logit: lo,
                    value: v - d_lo,
                });
                knots.push(Knot {
                    logit: hi,
                    value: v + d_hi,
                });
            } else {
                knots.push(Knot {
                    logit: lo,
                    value: v,
                });
            }
        }
        Calibrator::Smooth { knots, slope: 0.0 }
    }

    /// Isotonic regression as a step function (the calibration of models stored before
    /// [`Calibrator::Smooth`]; kept so they still load).
    pub fn isotonic_steps(scores: &[f64], labels: &[bool]) -> Self {
        let n = scores.len().min(labels.len());
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        // Equal scores form one starting block, so ties get one value.
        let mut blocks: Vec<(f64, f64, f64, f64)> = Vec::new(); // lower, upper, sum, weight
        let mut i = 0;
        while i < n {
            let mut j = i;
            while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
                j += 1;
            }
            let pos = idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
            blocks.push((scores[idx[i]], scores[idx[i]], pos, (j - i + 1) as f64));
            // Pool adjacent violators.
            while blocks.len() >= 2 {
                let k = blocks.len();
                let (a, b) = (blocks[k - 2], blocks[k - 1]);
                if a.2 / a.3 <= b.2 / b.3 {
                    break;
                }
                blocks.truncate(k - 2);
                blocks.push((a.0, b.1, a.2 + b.2, a.3 + b.3));
            }
            i = j + 1;
        }
        Calibrator::Isotonic {
            blocks: blocks
                .into_iter()
                .map(|(lower, upper, sum, w)| Block {
                    lower,
                    upper,
                    value: sum / w,
                })
                .collect(),
        }
    }

    /// Platt scaling with Platt's smoothed targets, fitted by Newton's method.
    pub fn platt(scores: &[f64], labels: &[bool]) -> Self {
        let n = scores.len().min(labels.len());
        let pos = labels[..n].iter().filter(|l| **l).count() as f64;
        let neg = n as f64 - pos;
        let (t_pos, t_neg) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
        let f: Vec<f64> = scores[..n].iter().map(|&s| logit(s)).collect();
        let t: Vec<f64> = labels[..n]
            .iter()
            .map(|&y| if y { t_pos } else { t_neg })
            .collect();
        // Parameterised as p = sigmoid(-(a f + b)); start at the identity (a = -1, b = 0).
        let (mut a, mut b) = (-1.0f64, 0.0f64);
        let loss = |a: f64, b: f64| -> f64 {
            f.iter()
                .zip(&t)
                .map(|(&fi, &ti)| {
                    let p = sigmoid(-(a * fi + b)).clamp(1e-15, 1.0 - 1e-15);
                    -(ti * p.ln() + (1.0 - ti) * (1.0 - p).ln())
                })
                .sum()
        };
        let mut current = loss(a, b);
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-12, 0.0, 1e-12);
            for (&fi, &ti) in f.iter().zip(&t) {
                let p = sigmoid(-(a * fi + b));
                // d loss / d(a f + b) = t - p
                let d = ti - p;
                ga += d * fi;
                gb += d;
                let w = p * (1.0 - p);
                haa += w * fi * fi;
                hab += w * fi;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-18 {
                break;
            }
            let da = -(hbb * ga - hab * gb) / det;
            let db = -(-hab * ga + haa * gb) / det;
            // Backtracking keeps every step a descent step.
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-8 {
                let (na, nb) = (a + step * da, b + step * db);
                let l = loss(na, nb);
                if l <= current {
                    a = na;
                    b = nb;
                    improved = current - l > 1e-12;
                    current = l;
                    break;
                }
                step /= 2.0;
            }
            if !improved {
                break;
            }
        }
        if a > 0.0 {
            // Scores that rank backwards on the validation cutoff: a decreasing curve would
            // reverse the ranking, so the best non-decreasing one is the constant base rate.
            let mean_t = t.iter().sum::<f64>() / t.len().max(1) as f64;
            return Calibrator::Platt {
                a: 0.0,
                b: -logit(mean_t),
            };
        }
        Calibrator::Platt { a, b }
    }

    /// The model's own level with the spread fitted on the validation cutoff: Platt's slope,
    /// and the intercept that keeps the mean probability over these scores unchanged. For
    /// scores whose level carries information the validation cutoff's base rate would erase
    /// (trees boosted from a BTYD forecast, which ages the cohort to the scoring time), while
    /// their log-odds may still be too timid or too bold.
    pub fn spread(scores: &[f64], labels: &[bool]) -> Self {
        let n = scores.len().min(labels.len());
        if n == 0 {
            return Calibrator::None;
        }
        let Calibrator::Platt { a, .. } = Self::platt(scores, labels) else {
            return Calibrator::None;
        };
        if a >= 0.0 {
            return Calibrator::None;
        }
        let f: Vec<f64> = scores[..n].iter().map(|&s| logit(s)).collect();
        let target = scores[..n].iter().map(|s| s.clamp(0.0, 1.0)).sum::<f64>() / n as f64;
        let mean = |b: f64| f.iter().map(|&fi| sigmoid(-(a * fi + b))).sum::<f64>() / n as f64;
        // mean(b) falls as b grows: bisect.
        let (mut lo, mut hi) = (-50.0f64, 50.0f64);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if mean(mid) > target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Calibrator::Platt {
            a,
            b: 0.5 * (lo + hi),
        }
    }

    /// The calibrated probability of a raw score.
    pub fn apply(&self, s: f64) -> f64 {
        match self {
            Calibrator::None => s.clamp(0.0, 1.0),
            Calibrator::Platt { a, b } => sigmoid(-(a * logit(s) + b)),
            Calibrator::Isotonic { blocks } => {
                let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
                    return s.clamp(0.0, 1.0);
                };
                if s <= first.upper {
                    return first.value;
                }
                if s >= last.lower {
                    return last.value;
                }
                // 1 <= k < len: the first block that does not end below s.
                let k = blocks.partition_point(|blk| blk.upper < s);
                let (lo, hi) = (blocks[k - 1], blocks[k]);
                if s >= hi.lower {
                    return hi.value;
                }
                let w = (s - lo.upper) / (hi.lower - lo.upper);
                lo.value + w * (hi.value - lo.value)
            }
            Calibrator::Smooth { knots, slope } => {
                let (Some(first), Some(last)) = (knots.first(), knots.last()) else {
                    return s.clamp(0.0, 1.0);
                };
                let z = logit(s);
                if z <= first.logit {
                    return sigmoid(logit(first.value) + slope * (z - first.logit));
                }
                if z >= last.logit {
                    return sigmoid(logit(last.value) + slope * (z - last.logit));
                }
                // Knots may share a log-odds value only when they are one block's two ends.
                let k = knots.partition_point(|k| k.logit < z);
                let (lo, hi) = (knots[k - 1], knots[k]);
                let w = (z - lo.logit) / (hi.logit - lo.logit);
                lo.value + w * (hi.value - lo.value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{brier, expected_calibration_error};
    use proptest::prelude::*;

    /// Uniform draws in [0, 1) from a xorshift generator.
    fn uniform(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Scores that are systematically too high: true rate = score².
    fn miscalibrated(n: usize) -> (Vec<f64>, Vec<bool>) {
        let mut rnd = uniform(12345);
        let s: Vec<f64> = (0..n).map(|_| rnd()).collect();
        let y = s.iter().map(|&p| rnd() < p * p).collect();
        (s, y)
    }

    #[test]
    fn isotonic_and_platt_reduce_calibration_error() {
        let (s, y) = miscalibrated(20_000);
        let raw = expected_calibration_error(&s, &y);
        for c in [Calibrator::isotonic(&s, &y), Calibrator::platt(&s, &y)] {
            let p: Vec<f64> = s.iter().map(|&v| c.apply(v)).collect();
            let ece = expected_calibration_error(&p, &y);
            assert!(
                ece < 0.03 && ece < raw / 3.0,
                "{c:?}: ece {ece} vs raw {raw}"
            );
            assert!(brier(&p, &y) < brier(&s, &y));
        }
    }

    /// Scores with the right mean whose log-odds are `k` times too small (k > 1: timid).
    fn mis_spread(n: usize, k: f64) -> (Vec<f64>, Vec<bool>) {
        let mut rnd = uniform(987_654_321);
        let mut s = Vec::with_capacity(n);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let z = -2.0 + 3.0 * (rnd() - 0.5) * 2.0;
            let truth = sigmoid(z);
            s.push(sigmoid(z / k));
            y.push(rnd() < truth);
        }
        (s, y)
    }

    #[test]
    fn spread_fits_the_slope_and_keeps_the_mean() {
        for k in [1.6, 0.6] {
            let (s, y) = mis_spread(40_000, k);
            let c = Calibrator::spread(&s, &y);
            let Calibrator::Platt { a, .. } = c else {
                panic!("{c:?}")
            };
            // The slope undoes the spread: -a ≈ k (p = sigmoid(-(a logit(s) + b))).
            assert!((-a - k).abs() < 0.1 * k, "k {k}: a {a}");
            let p: Vec<f64> = s.iter().map(|&v| c.apply(v)).collect();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            assert!(
                (mean(&p) - mean(&s)).abs() < 1e-6,
                "{} vs {}",
                mean(&p),
                mean(&s)
            );
            // Timid scores get bolder, bold ones calmer, around the kept mean.
            let spread = |v: &[f64]| {
                let l: Vec<f64> = v.iter().map(|&x| logit(x)).collect();
                let m = mean(&l);
                (l.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / l.len() as f64).sqrt()
            };
            let ratio = spread(&p) / spread(&s);
            assert!((ratio - k).abs() < 0.1 * k, "k {k}: spread ratio {ratio}");
            // Strictly increasing: the ranking is the raw scores'.
            let mut order: Vec<usize> = (0..s.len()).collect();
            order.sort_by(|&i, &j| s[i].total_cmp(&s[j]));
            assert!(
                order
                    .windows(2)
                    .all(|w| s[w[0]] == s[w[1]] || p[w[0]] < p[w[1]])
            );
        }
        // Scores that rank backwards get no map rather than a reversed one.
        let (s, y) = mis_spread(5_000, 1.0);
        let flipped: Vec<bool> = y.iter().map(|v| !v).collect();
        assert_eq!(Calibrator::spread(&s, &flipped), Calibrator::None);
    }

    #[test]
    fn smooth_isotonic_interpolates_and_never_reaches_0_or_1() {
        let c = Calibrator::isotonic(&[0.1, 0.2, 0.6, 0.8], &[false, false, true, true]);
        let Calibrator::Smooth { knots, .. } = &c else {
            panic!("{c:?}")
        };
        // Two blocks (the negatives and the positives), shrunk towards the base rate 0.5,
        // each with a knot at its lowest and highest score around its rate.
        assert_eq!(knots.len(), 4);
        let mid = |a: &Knot, b: &Knot| (a.value + b.value) / 2.0;
        assert!(
            (mid(&knots[0], &knots[1]) - 0.5 / 3.0).abs() < 0.01,
            "{knots:?}"
        );
        assert!(
            (mid(&knots[2], &knots[3]) - 2.5 / 3.0).abs() < 0.01,
            "{knots:?}"
        );
        assert!(
            knots
                .windows(2)
                .all(|w| w[0].value < w[1].value && w[0].logit < w[1].logit)
        );
        let p: Vec<f64> = [0.0, 0.05, 0.15, 0.4, 0.7, 0.95, 1.0]
            .iter()
            .map(|&s| c.apply(s))
            .collect();
        assert!(p.iter().all(|v| *v > 0.0 && *v < 1.0), "{p:?}");
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
        // Between the blocks the map is linear in log-odds, so 0.4 is strictly between.
        assert!(p[3] > knots[1].value && p[3] < knots[2].value);
    }

    #[test]
    fn smooth_isotonic_keeps_distinct_scores_distinct() {
        let (s, y) = miscalibrated(5_000);
        let c = Calibrator::isotonic(&s, &y);
        let mut p: Vec<f64> = s.iter().map(|&v| c.apply(v)).collect();
        p.sort_by(f64::total_cmp);
        p.dedup();
        // A step function gives one value per block (a few dozen); the smooth map nearly
        // one per score.
        assert!(p.len() > 4_000, "{} distinct probabilities", p.len());
    }

    proptest! {
        #[test]
        fn calibrators_keep_the_order(
            data in prop::collection::vec((0.0f64..1.0, any::<bool>()), 2..200),
            probes in prop::collection::vec(0.0f64..1.0, 2..50),
        ) {
            let (s, y): (Vec<f64>, Vec<bool>) = data.into_iter().unzip();
            for c in [Calibrator::isotonic(&s, &y), Calibrator::isotonic_steps(&s, &y), Calibrator::platt(&s, &y)] {
                let mut probes = probes.clone();
                probes.sort_by(f64::total_cmp);
                let out: Vec<f64> = probes.iter().map(|&p| c.apply(p)).collect();
                prop_assert!(out.windows(2).all(|w| w[0] <= w[1] + 1e-12), "{:?} not monotone: {:?}", c, out);
                prop_assert!(out.iter().all(|p| (0.0..=1.0).contains(p)));
            }
        }
    }
}
