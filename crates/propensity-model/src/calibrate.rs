//! Probability calibration, fitted on the validation cutoff: isotonic regression (pool
//! adjacent violators) or Platt scaling (a logistic curve on the logit of the raw score).
//! Both keep the ranking (they are non-decreasing), so AUC is unchanged where scores are
//! distinct.

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
    /// Isotonic regression of the labels on the scores.
    pub fn isotonic(scores: &[f64], labels: &[bool]) -> Self {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{brier, expected_calibration_error};
    use proptest::prelude::*;

    /// Scores that are systematically too high: true rate = score².
    fn miscalibrated(n: usize) -> (Vec<f64>, Vec<bool>) {
        let mut state = 12345u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
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

    #[test]
    fn isotonic_interpolates_between_blocks_and_clamps_outside() {
        let c = Calibrator::isotonic(&[0.1, 0.2, 0.6, 0.8], &[false, false, true, true]);
        assert_eq!(c.apply(0.0), 0.0);
        assert_eq!(c.apply(0.15), 0.0);
        assert!(
            (c.apply(0.4) - 0.5).abs() < 1e-12,
            "halfway between the 0.2 and 0.6 blocks"
        );
        assert_eq!(c.apply(1.0), 1.0);
    }

    proptest! {
        #[test]
        fn calibrators_keep_the_order(
            data in prop::collection::vec((0.0f64..1.0, any::<bool>()), 2..200),
            probes in prop::collection::vec(0.0f64..1.0, 2..50),
        ) {
            let (s, y): (Vec<f64>, Vec<bool>) = data.into_iter().unzip();
            for c in [Calibrator::isotonic(&s, &y), Calibrator::platt(&s, &y)] {
                let mut probes = probes.clone();
                probes.sort_by(f64::total_cmp);
                let out: Vec<f64> = probes.iter().map(|&p| c.apply(p)).collect();
                prop_assert!(out.windows(2).all(|w| w[0] <= w[1] + 1e-12), "{:?} not monotone: {:?}", c, out);
                prop_assert!(out.iter().all(|p| (0.0..=1.0).contains(p)));
            }
        }
    }
}
