//! The capacity search: how large the trees are, how many rows a leaf needs and how fast the
//! ensemble learns are chosen on the out-of-time validation cutoff, by successive halving.
//!
//! 1. **Screen**: every candidate (leaves × rows per leaf, learning rate 0.1) trains with early
//!    stopping on at most [`SCREEN_ROWS`] training rows (a label-stratified sample).
//! 2. **Confirm**: the best [`FINALISTS`] train on every row. When the training rows fit in
//!    the screen, every candidate trains on all of them instead (rung `full`).
//! 3. **Polish**: the winner trains again at half the learning rate (and up to twice the
//!    trees); it is kept when it validates better.
//!
//! Candidates are ranked by validation AUC (ties within 1e-4 by log loss): the calibrator
//! fitted afterwards fixes the probabilities, not the ranking. Values the job sets in
//! `[model.gbdt]` are not searched. The search is deterministic for a seed; the wall-time
//! budget only ends it early (the card then says so), which is the one way its result can
//! depend on the machine.

use serde::{Deserialize, Serialize};

use crate::gbdt::{self, Binned, Gbdt, GbdtParams, TrainLog};
use crate::{Matrix, metrics, mix};

/// Rows the screening rung trains on, at most.
pub const SCREEN_ROWS: usize = 60_000;
/// Candidates that go on from the screen to training on every row.
pub const FINALISTS: usize = 3;
const SCREEN_LEARNING_RATE: f64 = 0.1;

/// What the job fixes in `[model.gbdt]`; `None` is searched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Fixed {
    pub num_trees: Option<usize>,
    pub learning_rate: Option<f64>,
    pub max_depth: Option<usize>,
    pub num_leaves: Option<usize>,
    pub min_data_in_leaf: Option<usize>,
    pub early_stopping_rounds: Option<usize>,
}

/// The parameters used without a search: the defaults, with the job's values on top.
pub fn defaults(fixed: &Fixed, base: &GbdtParams) -> GbdtParams {
    let mut p = base.clone();
    if let Some(v) = fixed.num_trees {
        p.num_trees = v;
    }
    if let Some(v) = fixed.learning_rate {
        p.learning_rate = v;
    }
    if let Some(v) = fixed.num_leaves {
        p.num_leaves = v;
    }
    if let Some(v) = fixed.min_data_in_leaf {
        p.min_data_in_leaf = v;
    }
    if let Some(v) = fixed.early_stopping_rounds {
        p.early_stopping_rounds = v;
    }
    p.max_depth = fixed.max_depth.unwrap_or_else(|| depth_for(p.num_leaves));
    p
}

/// A depth limit that lets a tree reach its leaf count with some imbalance.
fn depth_for(leaves: usize) -> usize {
    let log2 = usize::BITS as usize - leaves.max(2).saturating_sub(1).leading_zeros() as usize;
    (log2 + 3).clamp(6, 16)
}

/// One trained candidate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trial {
    /// `screen`, `confirm`, `full` or `polish`.
    pub rung: String,
    pub num_leaves: usize,
    pub min_data_in_leaf: usize,
    pub learning_rate: f64,
    pub max_depth: usize,
    pub rows: usize,
    /// Trees kept by early stopping.
    pub trees: usize,
    pub valid_auc: Option<f64>,
    pub valid_log_loss: f64,
    pub seconds: f64,
}

/// The search, for the model card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchRecord {
    /// The budget the job set, in seconds.
    pub budget_seconds: f64,
    pub seconds: f64,
    /// The budget ran out before every planned candidate trained.
    pub stopped_by_budget: bool,
    /// Parameters the job fixed (not searched).
    pub fixed: Vec<String>,
    pub trials: Vec<Trial>,
    /// Index into `trials` of the winner.
    pub chosen: usize,
}

/// The search's result: the winner's parameters (with `num_trees` = the trees it kept), its
/// model trained on the search cutoffs, and the record.
#[derive(Debug)]
pub struct Searched {
    pub params: GbdtParams,
    pub model: Gbdt,
    pub log: TrainLog,
    pub record: SearchRecord,
}

fn grid(fixed: &Fixed, rows: usize) -> Vec<(usize, usize)> {
    let leaves: Vec<usize> = match fixed.num_leaves {
        Some(l) => vec![l],
        None => vec![4, 8, 16, 32, 64, 128],
    };
    // Small leaves overfit a small log; large data affords them.
    let big_leaf = (rows / 1000).clamp(100, 2000);
    let min_leaf: Vec<usize> = match fixed.min_data_in_leaf {
        Some(m) => vec![m],
        None => vec![20, big_leaf],
    };
    let mut out = Vec::new();
    for &l in &leaves {
        for &m in &min_leaf {
            out.push((l, m));
        }
    }
    out
}

/// Ranks trials: higher AUC first, ties (within 1e-4) by lower log loss, then by the order
/// they were planned.
fn better(a: &Trial, b: &Trial) -> bool {
    let (x, y) = (a.valid_auc.unwrap_or(0.0), b.valid_auc.unwrap_or(0.0));
    if (x - y).abs() > 1e-4 {
        return x > y;
    }
    a.valid_log_loss < b.valid_log_loss - 1e-12
}

/// A label-stratified, deterministic sample of at most `k` row indices, ascending.
fn stratified(y: &[u8], k: usize, seed: u64) -> Vec<u32> {
    if y.len() <= k {
        return (0..y.len() as u32).collect();
    }
    let mut keep: Vec<u32> = Vec::with_capacity(k);
    for class in [0u8, 1] {
        let rows: Vec<u32> = (0..y.len() as u32)
            .filter(|&i| y[i as usize] == class)
            .collect();
        let want = (rows.len() as f64 * k as f64 / y.len() as f64).round() as usize;
        let mut keyed: Vec<(u64, u32)> = rows
            .iter()
            .map(|&i| (mix(seed ^ 0x005e_a7c4 ^ u64::from(i)), i))
            .collect();
        keyed.sort_unstable();
        keep.extend(keyed.iter().take(want.max(1)).map(|(_, i)| *i));
    }
    keep.sort_unstable();
    keep
}

/// Runs the search on the binned search cutoffs (`x`, `y`), judged on the validation cutoff.
/// `base` holds the parameters nobody searches (bins, L2, class weight, threads).
#[allow(clippy::too_many_arguments)]
pub fn search(
    x: &Binned,
    y: &[u8],
    valid: Matrix<'_>,
    valid_y: &[u8],
    fixed: &Fixed,
    base: &GbdtParams,
    budget: std::time::Duration,
    seed: u64,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Searched {
    let started = std::time::Instant::now();
    let labels: Vec<bool> = valid_y.iter().map(|l| *l == 1).collect();
    let cap = fixed.num_trees.unwrap_or(base.num_trees);
    let candidates = grid(fixed, x.rows());
    let screen_lr = fixed.learning_rate.unwrap_or(SCREEN_LEARNING_RATE);
    let params_of = |leaves: usize, min_leaf: usize, lr: f64, trees: usize| {
        let mut p = base.clone();
        p.num_leaves = leaves;
        p.min_data_in_leaf = min_leaf;
        p.learning_rate = lr;
        p.num_trees = trees;
        p.max_depth = fixed.max_depth.unwrap_or_else(|| depth_for(leaves));
        if let Some(e) = fixed.early_stopping_rounds {
            p.early_stopping_rounds = e;
        }
        p
    };
    let planned = candidates.len() + FINALISTS.min(candidates.len()) + 1;
    let mut trials: Vec<Trial> = Vec::new();
    let mut models: Vec<Option<(Gbdt, TrainLog, GbdtParams)>> = Vec::new();
    let mut stopped = false;
    let over = |t: &std::time::Instant| t.elapsed() >= budget;
    let run = |rung: &str,
               data: &Binned,
               ys: &[u8],
               p: GbdtParams,
               keep: bool,
               trials: &mut Vec<Trial>,
               models: &mut Vec<Option<(Gbdt, TrainLog, GbdtParams)>>| {
        let t = std::time::Instant::now();
        let (m, log) = gbdt::train_binned(data, ys, Some((valid, valid_y)), &p, &|_, _| {});
        let margins = crate::pipeline::margins(&crate::pipeline::Model::Gbdt(m.clone()), valid);
        let probs: Vec<f64> = margins.iter().map(|v| crate::sigmoid(*v)).collect();
        trials.push(Trial {
            rung: rung.into(),
            num_leaves: p.num_leaves,
            min_data_in_leaf: p.min_data_in_leaf,
            learning_rate: p.learning_rate,
            max_depth: p.max_depth,
            rows: data.rows(),
            trees: log.trees,
            valid_auc: metrics::auc(&margins, &labels),
            valid_log_loss: metrics::log_loss(&probs, &labels),
            seconds: t.elapsed().as_secs_f64(),
        });
        models.push(keep.then_some((m, log, p)));
        progress(trials.len(), planned);
    };

    // Screen (skipped when the data is small enough to train every candidate on all rows).
    let screen_rows = stratified(y, SCREEN_ROWS, seed);
    let screening = candidates.len() > 1 && screen_rows.len() < x.rows();
    let mut finalists: Vec<(usize, usize)> = candidates.clone();
    if screening {
        let sub = x.subset(&screen_rows);
        let sub_y: Vec<u8> = screen_rows.iter().map(|&i| y[i as usize]).collect();
        for &(l, m) in &candidates {
            if !trials.is_empty() && over(&started) {
                stopped = true;
                break;
            }
            // Rows per leaf scale with the sample.
            let m_sub = if fixed.min_data_in_leaf.is_some() {
                m
            } else {
                (m * sub.rows() / x.rows()).max(20.min(m))
            };
            run(
                "screen",
                &sub,
                &sub_y,
                params_of(l, m_sub, screen_lr, cap),
                false,
                &mut trials,
                &mut models,
            );
        }
        let mut order: Vec<usize> = (0..trials.len()).collect();
        order.sort_by(|&a, &b| {
            if better(&trials[a], &trials[b]) {
                std::cmp::Ordering::Less
            } else if better(&trials[b], &trials[a]) {
                std::cmp::Ordering::Greater
            } else {
                a.cmp(&b)
            }
        });
        finalists = order
            .into_iter()
            .take(FINALISTS)
            .map(|k| candidates[k])
            .collect();
    }
    // Confirm on every row.
    let first_full = trials.len();
    for &(l, m) in &finalists {
        if trials.len() > first_full && over(&started) {
            stopped = true;
            break;
        }
        run(
            if screening { "confirm" } else { "full" },
            x,
            y,
            params_of(l, m, screen_lr, cap),
            true,
            &mut trials,
            &mut models,
        );
    }
    let mut chosen = (first_full..trials.len())
        .reduce(|a, b| if better(&trials[b], &trials[a]) { b } else { a })
        .unwrap_or(first_full);
    // Polish: half the learning rate, up to twice the trees.
    if fixed.learning_rate.is_none() && !over(&started) {
        let w = &trials[chosen];
        let p = params_of(
            w.num_leaves,
            w.min_data_in_leaf,
            screen_lr / 2.0,
            (cap * 2).min(10_000),
        );
        run("polish", x, y, p, true, &mut trials, &mut models);
        let k = trials.len() - 1;
        if better(&trials[k], &trials[chosen]) {
            chosen = k;
        }
    } else if fixed.learning_rate.is_none() {
        stopped = true;
    }
    let (model, log, mut params) = models[chosen]
        .take()
        .unwrap_or_else(|| unreachable!("every full-data trial keeps its model"));
    params.num_trees = log.trees;
    let mut fixed_names = Vec::new();
    for (name, set) in [
        ("num_trees", fixed.num_trees.is_some()),
        ("learning_rate", fixed.learning_rate.is_some()),
        ("max_depth", fixed.max_depth.is_some()),
        ("num_leaves", fixed.num_leaves.is_some()),
        ("min_data_in_leaf", fixed.min_data_in_leaf.is_some()),
        (
            "early_stopping_rounds",
            fixed.early_stopping_rounds.is_some(),
        ),
    ] {
        if set {
            fixed_names.push(name.to_owned());
        }
    }
    Searched {
        params,
        model,
        log,
        record: SearchRecord {
            budget_seconds: budget.as_secs_f64(),
            seconds: started.elapsed().as_secs_f64(),
            stopped_by_budget: stopped,
            fixed: fixed_names,
            trials,
            chosen,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stack;

    #[test]
    fn deterministic_for_a_seed_and_respects_fixed_values() {
        let (x, y, w) = crate::gbdt::tests::synthetic(6000, 31);
        let (vx, vy, _) = crate::gbdt::tests::synthetic(3000, 32);
        let base = GbdtParams {
            num_trees: 200,
            ..GbdtParams::default()
        };
        let b = Binned::new(&Stack::one(Matrix::new(&x, w)), base.max_bins, 0);
        let go = |fixed: &Fixed| {
            search(
                &b,
                &y,
                Matrix::new(&vx, w),
                &vy,
                fixed,
                &base,
                std::time::Duration::from_secs(3600),
                7,
                &|_, _| {},
            )
        };
        let one = go(&Fixed::default());
        let two = go(&Fixed::default());
        assert_eq!(one.model, two.model);
        let strip = |r: &SearchRecord| {
            r.trials
                .iter()
                .map(|t| (t.rung.clone(), t.num_leaves, t.min_data_in_leaf, t.trees))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&one.record), strip(&two.record));
        assert_eq!(one.record.chosen, two.record.chosen);
        assert!(!one.record.stopped_by_budget);
        // 12 candidates on all rows (the data is smaller than the screen), then the polish.
        assert_eq!(one.record.trials.len(), 13);
        assert_eq!(one.params.num_trees, one.model.trees.len());
        let fixed = Fixed {
            num_leaves: Some(8),
            min_data_in_leaf: Some(50),
            learning_rate: Some(0.2),
            ..Fixed::default()
        };
        let f = go(&fixed);
        assert_eq!(f.record.trials.len(), 1);
        assert!(
            f.record
                .trials
                .iter()
                .all(|t| t.num_leaves == 8 && t.min_data_in_leaf == 50 && t.learning_rate == 0.2)
        );
        assert_eq!(
            f.record.fixed,
            vec!["learning_rate", "num_leaves", "min_data_in_leaf"]
        );
    }

    #[test]
    fn a_spent_budget_keeps_the_best_so_far() {
        let (x, y, w) = crate::gbdt::tests::synthetic(3000, 41);
        let (vx, vy, _) = crate::gbdt::tests::synthetic(1000, 42);
        let base = GbdtParams::default();
        let b = Binned::new(&Stack::one(Matrix::new(&x, w)), base.max_bins, 0);
        let s = search(
            &b,
            &y,
            Matrix::new(&vx, w),
            &vy,
            &Fixed::default(),
            &base,
            std::time::Duration::ZERO,
            1,
            &|_, _| {},
        );
        assert!(s.record.stopped_by_budget);
        assert_eq!(s.record.trials.len(), 1);
        assert!(!s.model.trees.is_empty());
    }

    #[test]
    fn stratified_sample_keeps_the_base_rate() {
        let y: Vec<u8> = (0..100_000).map(|i| u8::from(i % 10 == 0)).collect();
        let s = stratified(&y, 10_000, 3);
        assert!((9_990..=10_010).contains(&s.len()), "{}", s.len());
        let pos = s.iter().filter(|&&i| y[i as usize] == 1).count();
        assert!((990..=1010).contains(&pos), "{pos}");
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
}
