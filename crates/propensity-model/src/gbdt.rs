//! Gradient-boosted decision trees for binary classification: histogram-based, leaf-wise
//! growth (as LightGBM), missing values routed by a learned default direction, early stopping
//! on the validation cutoff, and exact TreeSHAP contributions ([`crate::shap`]).
//!
//! Why hand-written: on the same feature arrays (`bench/README.md`, `make bench-candidates`),
//! forust-ml 0.8 reaches LightGBM's AUC at 2.2× its training time and is unmaintained, and
//! perpetual 3.0-rc.2 (a release candidate) takes 18× with contributions at a few rows per
//! second. The algorithm is small and well known; what matters is that it is exact,
//! deterministic and fast, which the tests and the bench check.

use serde::{Deserialize, Serialize};

use crate::{Matrix, Stack, sigmoid};

/// Training settings. The defaults match the job file's `[model.gbdt]` defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GbdtParams {
    pub num_trees: usize,
    pub learning_rate: f64,
    pub max_depth: usize,
    pub num_leaves: usize,
    pub min_data_in_leaf: usize,
    pub early_stopping_rounds: usize,
    /// L2 regularisation of leaf values.
    pub lambda_l2: f64,
    pub min_sum_hessian: f64,
    /// Value bins per feature (at most 255; one more bin holds missing values).
    pub max_bins: usize,
    /// Weight of each positive row (class imbalance); 1 = unweighted.
    pub pos_weight: f64,
    /// Worker threads (0 = one per core).
    pub threads: usize,
}

impl Default for GbdtParams {
    fn default() -> Self {
        Self {
            num_trees: 1000,
            learning_rate: 0.05,
            max_depth: 6,
            num_leaves: 31,
            min_data_in_leaf: 20,
            early_stopping_rounds: 30,
            lambda_l2: 1.0,
            min_sum_hessian: 1e-3,
            max_bins: 255,
            pos_weight: 1.0,
            threads: 0,
        }
    }
}

/// An internal node. A child `>= 0` is a node index, `< 0` is leaf `!child`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub feature: u32,
    /// Values `<= threshold` go left.
    pub threshold: f32,
    /// Where a missing value (NaN) goes.
    pub default_left: bool,
    pub left: i32,
    pub right: i32,
    /// Training rows that reached this node (the cover TreeSHAP weighs by).
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tree {
    /// Internal nodes; node 0 is the root. Empty for a single-leaf tree.
    pub nodes: Vec<Node>,
    pub leaf_values: Vec<f64>,
    pub leaf_counts: Vec<u32>,
}

impl Tree {
    /// The leaf a row falls into.
    #[inline]
    pub fn leaf(&self, x: &[f32]) -> usize {
        if self.nodes.is_empty() {
            return 0;
        }
        let mut i = 0usize;
        loop {
            let n = &self.nodes[i];
            let child = if goes_left(n, x[n.feature as usize]) {
                n.left
            } else {
                n.right
            };
            if child < 0 {
                return !child as usize;
            }
            i = child as usize;
        }
    }

    #[inline]
    pub fn predict(&self, x: &[f32]) -> f64 {
        self.leaf_values[self.leaf(x)]
    }

    /// Depth of the deepest leaf (a single leaf is depth 0).
    pub fn depth(&self) -> usize {
        fn walk(t: &Tree, child: i32, d: usize) -> usize {
            if child < 0 {
                return d;
            }
            let n = &t.nodes[child as usize];
            walk(t, n.left, d + 1).max(walk(t, n.right, d + 1))
        }
        if self.nodes.is_empty() {
            0
        } else {
            walk(self, 0, 0)
        }
    }
}

/// Whether a value goes left at a node (branch-free: `v <= t` is false for NaN).
#[inline]
pub fn goes_left(n: &Node, v: f32) -> bool {
    (v <= n.threshold) | (v.is_nan() & n.default_left)
}

/// A trained ensemble: `margin(x) = base + offset(x) + Σ tree(x)` in log-odds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gbdt {
    pub base: f64,
    pub trees: Vec<Tree>,
    pub width: usize,
    /// A prior the trees correct rather than learn from scratch (models stored before it
    /// have none).
    #[serde(default)]
    pub offset: Option<Offset>,
}

impl Gbdt {
    #[inline]
    pub fn margin(&self, x: &[f32]) -> f64 {
        let o = self.offset.as_ref().map_or(0.0, |o| o.value(x));
        self.base + o + self.trees.iter().map(|t| t.predict(x)).sum::<f64>()
    }
}

/// The log-odds of a probability feature as the starting margin of every row: boosting from
/// a forecast. Propensity uses the BG/NBD chance of a goal event in the window, fitted at
/// each cutoff on the history before it: the trees then learn what the buy-till-you-die
/// model misses, and the forecast carries what trees cannot extrapolate (a cohort older
/// than any training cutoff).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offset {
    pub feature: usize,
    /// Use `1 − p` (a churn goal).
    pub flip: bool,
    /// The probability used where the feature is missing.
    pub missing: f64,
    /// The mean offset over the training rows (the part of the base value reason codes
    /// measure contributions from).
    pub mean: f64,
}

impl Offset {
    #[inline]
    pub fn value(&self, x: &[f32]) -> f64 {
        let v = f64::from(x[self.feature]);
        let p = if v.is_nan() { self.missing } else { v };
        let p = if self.flip { 1.0 - p } else { p };
        let p = p.clamp(1e-4, 1.0 - 1e-4);
        (p / (1.0 - p)).ln()
    }

    /// An offset on `feature` for training rows `x` with labels `y`: the missing value is
    /// the smoothed positive rate of the rows without it, `mean` the mean over `x`.
    pub fn fit(x: &Stack<'_>, y: &[u8], feature: usize, flip: bool) -> Self {
        let (mut rows, mut pos) = (0usize, 0usize);
        let total_pos = y.iter().filter(|l| **l == 1).count();
        let base = (total_pos as f64 + 1.0) / (y.len() as f64 + 2.0);
        for (v, l) in x.column(feature).zip(y) {
            if v.is_nan() {
                rows += 1;
                pos += usize::from(*l == 1);
            }
        }
        let rate = (pos as f64 + base) / (rows as f64 + 1.0);
        let mut o = Offset {
            feature,
            flip,
            missing: if flip { 1.0 - rate } else { rate },
            mean: 0.0,
        };
        let n = x.rows().max(1) as f64;
        o.mean = x.iter_rows().map(|r| o.value(r)).sum::<f64>() / n;
        o
    }
}

/// What happened while training, for the model card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainLog {
    /// Trees kept (the best validation iteration).
    pub trees: usize,
    /// Trees grown before early stopping.
    pub grown: usize,
    /// Validation log loss per tree (weighted like training), when a validation set was given.
    pub valid_loss: Vec<f64>,
    pub binning_seconds: f64,
    pub boosting_seconds: f64,
}

/// Progress callback: (trees grown, trees at most).
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

fn threads(p: usize) -> usize {
    if p > 0 {
        p
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Runs `f` over `0..n` split into `t` contiguous ranges on scoped threads; results in order.
pub(crate) fn par_ranges<R: Send>(
    n: usize,
    t: usize,
    f: impl Fn(std::ops::Range<usize>) -> R + Sync,
) -> Vec<R> {
    let t = t.clamp(1, n.max(1));
    if t == 1 {
        return vec![f(0..n)];
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|k| s.spawn(move || f(k * n / t..(k + 1) * n / t)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(e) => std::panic::resume_unwind(e),
            })
            .collect()
    })
}

/// Per-feature bin upper bounds: a value goes to the first bin whose upper bound is `>=` it;
/// the last value bin is unbounded.
#[derive(Debug, Clone)]
struct Bins {
    uppers: Vec<Vec<f32>>,
}

impl Bins {
    fn fit(x: &Stack<'_>, max_bins: usize, nthreads: usize) -> Self {
        let max_bins = max_bins.clamp(2, 255);
        // A deterministic sample is enough for quantiles.
        let step = (x.rows() / 200_000).max(1);
        let uppers = par_ranges(x.width, nthreads, |range| {
            range
                .map(|f| {
                    let mut v: Vec<f32> =
                        x.column(f).step_by(step).filter(|v| !v.is_nan()).collect();
                    v.sort_unstable_by(f32::total_cmp);
                    feature_uppers(&v, max_bins)
                })
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        Bins { uppers }
    }

    /// The bin of a value; missing values get the code after the last value bin.
    #[inline]
    fn bin(&self, f: usize, v: f32) -> u8 {
        let u = &self.uppers[f];
        if v.is_nan() {
            return u.len() as u8;
        }
        u.partition_point(|b| *b < v).min(u.len() - 1) as u8
    }

    /// Column-major bin codes.
    fn apply(&self, x: &Stack<'_>, nthreads: usize) -> Vec<u8> {
        let n = x.rows();
        par_ranges(x.width, nthreads, |range| {
            let mut out = Vec::with_capacity(range.len() * n);
            for f in range {
                out.extend(x.column(f).map(|v| self.bin(f, v)));
            }
            out
        })
        .concat()
    }
}

/// Upper bounds from sorted values: one bin per distinct value when they are few, else bins
/// of about equal counts (a frequent value keeps a bin of its own). Bounds are midpoints
/// between neighbouring distinct values, so unseen values go to the nearer side.
fn feature_uppers(sorted: &[f32], max_bins: usize) -> Vec<f32> {
    let mut distinct: Vec<(f32, usize)> = Vec::new();
    for &v in sorted {
        match distinct.last_mut() {
            Some((d, c)) if *d == v => *c += 1,
            _ => distinct.push((v, 1)),
        }
    }
    if distinct.len() <= 1 {
        return vec![f32::INFINITY];
    }
    let mut uppers = Vec::new();
    if distinct.len() <= max_bins {
        for w in distinct.windows(2) {
            uppers.push(midpoint(w[0].0, w[1].0));
        }
    } else {
        let total = sorted.len();
        let mut acc = 0usize;
        let mut remaining_bins = max_bins;
        let mut remaining = total;
        for (k, w) in distinct.windows(2).enumerate() {
            acc += w[0].1;
            let target = remaining as f64 / remaining_bins as f64;
            // Close the bin when it is full, or when the next value alone would overfill it.
            if acc as f64 >= target || (acc as f64 + w[1].1 as f64 / 2.0) > target {
                uppers.push(midpoint(w[0].0, w[1].0));
                remaining -= acc;
                acc = 0;
                remaining_bins -= 1;
                if remaining_bins == 1 || uppers.len() == max_bins - 1 {
                    break;
                }
            }
            let _ = k;
        }
    }
    uppers.push(f32::INFINITY);
    uppers
}

fn midpoint(a: f32, b: f32) -> f32 {
    let m = a + (b - a) / 2.0;
    // Keep a < m <= ... so that `a <= m` and `b > m` hold in f32.
    if m >= b || m < a { a } else { m }
}

#[derive(Debug, Clone, Copy, Default)]
struct HistBin {
    g: f64,
    h: f64,
    n: u32,
}

/// One histogram per leaf: a fixed 256-bin slot per active feature (value bins, then the
/// missing bin; only the bins a feature uses are ever touched). Fixed slots let a `u8` code
/// index without a bounds check.
type Hist = Vec<[HistBin; 256]>;

#[derive(Debug, Clone, Copy)]
struct Split {
    feature: usize,
    bin: usize,
    default_left: bool,
    gain: f64,
    left: (f64, f64, u32),
    right: (f64, f64, u32),
}

struct Leaf {
    begin: usize,
    end: usize,
    depth: usize,
    g: f64,
    h: f64,
    hist: Option<Hist>,
    split: Option<Split>,
    /// (parent node, is left child); `None` for the root.
    parent: Option<(usize, bool)>,
}

struct Grower<'a> {
    /// Bin codes per slot, column-major: slot `s` is `cols[s * n..(s + 1) * n]` (padding
    /// slots are all zero).
    cols: &'a [u8],
    n: usize,
    /// Feature of each slot (`slot < active.len()`); slots beyond are padding.
    active: Vec<usize>,
    /// Bins used per slot (value bins + the missing bin; 1 for padding).
    used: Vec<usize>,
    /// Value bins per feature (the missing bin comes after them).
    nbins: Vec<usize>,
    p: &'a GbdtParams,
    nthreads: usize,
}

/// Histograms of finished leaves, reused (allocating and zeroing them per leaf costs more
/// than filling them when leaves are small).
#[derive(Default)]
struct Pool(Vec<Hist>);

impl Pool {
    /// A zeroed histogram (only the bins in use are cleared).
    fn take(&mut self, used: &[usize]) -> Hist {
        match self.0.pop() {
            Some(mut h) => {
                for (slot, &u) in h.iter_mut().zip(used) {
                    slot[..u].fill(HistBin::default());
                }
                h
            }
            None => vec![[HistBin::default(); 256]; used.len()],
        }
    }
    fn put(&mut self, h: Option<Hist>) {
        if let Some(h) = h {
            self.0.push(h);
        }
    }
}

impl Grower<'_> {
    fn leaf_value(&self, g: f64, h: f64) -> f64 {
        -g / (h + self.p.lambda_l2) * self.p.learning_rate
    }

    fn score(&self, g: f64, h: f64) -> f64 {
        g * g / (h + self.p.lambda_l2)
    }

    /// Adds the rows' gradients to the histograms of slots `4·first..`, four features per
    /// pass: the four updates of a row go to different histograms and overlap instead of
    /// each waiting on the previous row's update of the same bin.
    ///
    /// Measured on the bench arrays (`bench/README.md`): four features per pass with reused
    /// histograms made training 1.8× faster than one feature per pass with fresh ones. Tried
    /// and dropped: codes stored row-major (every row's ~114 updates spread over a 700 KB
    /// histogram: 1.7× slower), the four codes of a row packed in one `[u8; 4]` (~15 %
    /// slower), and a second histogram copy for alternate rows (no change).
    fn fill(&self, first: usize, idx: &[u32], og: &[(f32, f32)], hist: &mut [[HistBin; 256]]) {
        let n = self.n;
        for (k, slots) in hist.chunks_exact_mut(4).enumerate() {
            let base = (first + k) * 4 * n;
            let col = |j: usize| &self.cols[base + j * n..base + (j + 1) * n];
            let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
            let [s0, s1, s2, s3] = slots else { continue };
            for (&row, &(g, h)) in idx.iter().zip(og) {
                let row = row as usize;
                let (g, h) = (f64::from(g), f64::from(h));
                for (slot, col) in [
                    (&mut *s0, c0),
                    (&mut *s1, c1),
                    (&mut *s2, c2),
                    (&mut *s3, c3),
                ] {
                    let e = &mut slot[col[row] as usize];
                    e.g += g;
                    e.h += h;
                    e.n += 1;
                }
            }
        }
    }

    fn build_hist(&self, idx: &[u32], grad: &[f32], hess: &[f32], pool: &mut Pool) -> Hist {
        let mut hist = pool.take(&self.used);
        // Gradients in leaf order once, so the passes read them sequentially.
        let og: Vec<(f32, f32)> = idx
            .iter()
            .map(|&r| (grad[r as usize], hess[r as usize]))
            .collect();
        let groups = self.used.len() / 4;
        let work = idx.len() * groups * 4;
        if self.nthreads < 2 || work < 1_000_000 || groups < 2 {
            self.fill(0, idx, &og, &mut hist);
            return hist;
        }
        // Two halves of the groups, each on its own thread, each writing its own slots.
        let half = groups / 2;
        let (ha, hb) = hist.split_at_mut(half * 4);
        std::thread::scope(|s| {
            s.spawn(|| self.fill(half, idx, &og, hb));
            self.fill(0, idx, &og, ha);
        });
        hist
    }

    /// The code of slot `slot` for a row.
    #[inline]
    fn code(&self, slot: usize, row: u32) -> usize {
        self.cols[slot * self.n + row as usize] as usize
    }

    fn best_split(&self, hist: &Hist, g: f64, h: f64, count: usize) -> Option<Split> {
        let p = self.p;
        let min_n = p.min_data_in_leaf.max(1) as u32;
        let parent = self.score(g, h);
        let mut best: Option<Split> = None;
        for (slot, &f) in self.active.iter().enumerate() {
            let nb = self.nbins[f];
            let fh = &hist[slot][..=nb];
            let miss = fh[nb];
            let (mut lg, mut lh, mut ln) = (0.0f64, 0.0f64, 0u32);
            for (b, e) in fh.iter().enumerate().take(nb) {
                lg += e.g;
                lh += e.h;
                ln += e.n;
                for default_left in [false, true] {
                    let (g_l, h_l, n_l) = if default_left {
                        if miss.n == 0 {
                            continue;
                        }
                        (lg + miss.g, lh + miss.h, ln + miss.n)
                    } else {
                        (lg, lh, ln)
                    };
                    let n_r = count as u32 - n_l;
                    if n_l < min_n || n_r < min_n {
                        continue;
                    }
                    let (g_r, h_r) = (g - g_l, h - h_l);
                    if h_l < p.min_sum_hessian || h_r < p.min_sum_hessian {
                        continue;
                    }
                    let gain = self.score(g_l, h_l) + self.score(g_r, h_r) - parent;
                    if gain > 1e-12 && best.is_none_or(|s| gain > s.gain) {
                        // Without missing values in training, unseen missing values follow
                        // the larger side.
                        let dl = if miss.n == 0 {
                            n_l >= n_r
                        } else {
                            default_left
                        };
                        best = Some(Split {
                            feature: slot,
                            bin: b,
                            default_left: dl,
                            gain,
                            left: (g_l, h_l, n_l),
                            right: (g_r, h_r, n_r),
                        });
                    }
                }
            }
        }
        best
    }

    fn evaluate(&self, leaf: &mut Leaf, pool: &mut Pool) {
        let count = leaf.end - leaf.begin;
        leaf.split = None;
        if leaf.depth >= self.p.max_depth || count < 2 * self.p.min_data_in_leaf.max(1) {
            pool.put(leaf.hist.take());
            return;
        }
        if let Some(hist) = &leaf.hist {
            leaf.split = self.best_split(hist, leaf.g, leaf.h, count);
        }
        if leaf.split.is_none() {
            pool.put(leaf.hist.take());
        }
    }

    /// Grows one tree on the rows `idx` (reordered in place) and returns it with, for each
    /// leaf, its range in `idx`.
    fn grow(
        &self,
        idx: &mut [u32],
        grad: &[f32],
        hess: &[f32],
        bins_upper: &Bins,
        pool: &mut Pool,
    ) -> (Tree, Vec<(usize, usize)>) {
        let (g, h) = idx.iter().fold((0.0, 0.0), |(g, h), &r| {
            (
                g + f64::from(grad[r as usize]),
                h + f64::from(hess[r as usize]),
            )
        });
        let mut root = Leaf {
            begin: 0,
            end: idx.len(),
            depth: 0,
            g,
            h,
            hist: Some(self.build_hist(idx, grad, hess, pool)),
            split: None,
            parent: None,
        };
        self.evaluate(&mut root, pool);
        let mut leaves = vec![root];
        let mut nodes: Vec<Node> = Vec::new();
        while leaves.len() < self.p.num_leaves.max(2) {
            // The leaf with the largest gain; ties go to the earlier leaf.
            let mut pick: Option<(usize, f64)> = None;
            for (k, l) in leaves.iter().enumerate() {
                if let Some(s) = l.split
                    && pick.is_none_or(|(_, g)| s.gain > g)
                {
                    pick = Some((k, s.gain));
                }
            }
            let Some((k, _)) = pick else { break };
            let leaf = &mut leaves[k];
            let Some(s) = leaf.split.take() else { break };
            let parent_hist = leaf.hist.take();
            let (begin, end, depth) = (leaf.begin, leaf.end, leaf.depth);
            // Partition the rows: left first, stable within each side (deterministic).
            // `s.feature` is a slot here; `feature` the column.
            let feature = self.active[s.feature];
            let missing = self.nbins[feature];
            let goes_left = |r: u32| {
                let b = self.code(s.feature, r);
                if b == missing {
                    s.default_left
                } else {
                    b <= s.bin
                }
            };
            let slice = &mut idx[begin..end];
            let mut right: Vec<u32> = Vec::with_capacity(s.right.2 as usize);
            let mut w = 0usize;
            for i in 0..slice.len() {
                let r = slice[i];
                if goes_left(r) {
                    slice[w] = r;
                    w += 1;
                } else {
                    right.push(r);
                }
            }
            slice[w..].copy_from_slice(&right);
            let mid = begin + w;
            let node_id = nodes.len();
            let count = (end - begin) as u32;
            nodes.push(Node {
                feature: feature as u32,
                threshold: bins_upper.uppers[feature][s.bin],
                default_left: s.default_left,
                left: 0,
                right: 0,
                count,
            });
            if let Some((pn, is_left)) = leaf.parent {
                if is_left {
                    nodes[pn].left = node_id as i32;
                } else {
                    nodes[pn].right = node_id as i32;
                }
            }
            let mut left = Leaf {
                begin,
                end: mid,
                depth: depth + 1,
                g: s.left.0,
                h: s.left.1,
                hist: None,
                split: None,
                parent: Some((node_id, true)),
            };
            let mut rightl = Leaf {
                begin: mid,
                end,
                depth: depth + 1,
                g: s.right.0,
                h: s.right.1,
                hist: None,
                split: None,
                parent: Some((node_id, false)),
            };
            let can_split = |l: &Leaf| {
                l.depth < self.p.max_depth && l.end - l.begin >= 2 * self.p.min_data_in_leaf.max(1)
            };
            if can_split(&left) || can_split(&rightl) {
                // Histogram of the smaller child; the larger one is the parent minus it.
                let (small, large) = if mid - begin <= end - mid {
                    (&mut left, &mut rightl)
                } else {
                    (&mut rightl, &mut left)
                };
                let sh = self.build_hist(&idx[small.begin..small.end], grad, hess, pool);
                if let Some(mut ph) = parent_hist {
                    for ((ps, ss), &u) in ph.iter_mut().zip(&sh).zip(&self.used) {
                        for (pb, sb) in ps[..u].iter_mut().zip(&ss[..u]) {
                            pb.g -= sb.g;
                            pb.h -= sb.h;
                            pb.n -= sb.n;
                        }
                    }
                    large.hist = Some(ph);
                } else {
                    large.hist =
                        Some(self.build_hist(&idx[large.begin..large.end], grad, hess, pool));
                }
                small.hist = Some(sh);
                self.evaluate(&mut left, pool);
                self.evaluate(&mut rightl, pool);
            } else {
                pool.put(parent_hist);
            }
            leaves[k] = left;
            leaves.push(rightl);
        }
        for l in leaves.iter_mut() {
            pool.put(l.hist.take());
        }
        // Point each parent at its leaves.
        for (k, l) in leaves.iter().enumerate() {
            if let Some((pn, is_left)) = l.parent {
                if is_left {
                    nodes[pn].left = !(k as i32);
                } else {
                    nodes[pn].right = !(k as i32);
                }
            }
        }
        let tree = Tree {
            nodes,
            leaf_values: leaves.iter().map(|l| self.leaf_value(l.g, l.h)).collect(),
            leaf_counts: leaves.iter().map(|l| (l.end - l.begin) as u32).collect(),
        };
        let ranges = leaves.iter().map(|l| (l.begin, l.end)).collect();
        (tree, ranges)
    }
}

/// Weighted log loss of margins.
fn log_loss(margins: &[f64], y: &[u8], pos_weight: f64) -> f64 {
    let (mut sum, mut wsum) = (0.0, 0.0);
    for (&m, &l) in margins.iter().zip(y) {
        // log(1 + e^-m) for positives, log(1 + e^m) for negatives, computed stably.
        let z = if l == 1 { -m } else { m };
        let loss = if z > 0.0 {
            z + (-z).exp().ln_1p()
        } else {
            z.exp().ln_1p()
        };
        let w = if l == 1 { pos_weight } else { 1.0 };
        sum += w * loss;
        wsum += w;
    }
    if wsum > 0.0 { sum / wsum } else { 0.0 }
}

/// Training rows binned once: bin bounds per feature and column-major bin codes of the
/// features that vary, so several models (the capacity search's candidates) train on the same
/// codes without binning again.
#[derive(Debug, Clone)]
pub struct Binned {
    bins: Bins,
    /// Codes per slot, column-major, padded with zero columns to a multiple of 4 slots.
    cols: Vec<u8>,
    n: usize,
    width: usize,
    /// Feature of each slot.
    active: Vec<usize>,
    /// Bins used per slot (value bins + the missing bin; 1 for padding).
    used: Vec<usize>,
    /// Value bins per feature.
    nbins: Vec<usize>,
    /// The offset's margin of every row, when boosting starts from one.
    offset: Option<(Offset, Vec<f64>)>,
    pub binning_seconds: f64,
}

impl Binned {
    pub fn new(x: &Stack<'_>, max_bins: usize, threads_wanted: usize) -> Self {
        let nthreads = threads(threads_wanted);
        let n = x.rows();
        let t0 = std::time::Instant::now();
        let bins = Bins::fit(x, max_bins, nthreads);
        let mut codes = bins.apply(x, nthreads);
        let nbins: Vec<usize> = bins.uppers.iter().map(Vec::len).collect();
        let active: Vec<usize> = (0..x.width)
            .filter(|&f| {
                nbins[f] > 1
                    || codes[f * n..(f + 1) * n]
                        .iter()
                        .any(|&c| c as usize == nbins[f])
            })
            .collect();
        let ngroups = active.len().div_ceil(4);
        // The active features' columns in slot order, padded with zero columns to a multiple
        // of 4. Compacted in place: slot `k` is at or before feature `active[k]`.
        for (slot, &f) in active.iter().enumerate() {
            if slot != f {
                codes.copy_within(f * n..(f + 1) * n, slot * n);
            }
        }
        codes.truncate(active.len() * n);
        codes.resize(ngroups * 4 * n, 0);
        let used: Vec<usize> = (0..ngroups * 4)
            .map(|slot| active.get(slot).map_or(1, |&f| nbins[f] + 1))
            .collect();
        Binned {
            bins,
            cols: codes,
            n,
            width: x.width,
            active,
            used,
            nbins,
            offset: None,
            binning_seconds: t0.elapsed().as_secs_f64(),
        }
    }

    /// Boosting on these rows starts from `offset` (evaluated on the raw rows `x`, the rows
    /// these codes were binned from).
    pub fn with_offset(mut self, x: &Stack<'_>, offset: Offset) -> Self {
        let values = x.iter_rows().map(|r| offset.value(r)).collect();
        self.offset = Some((offset, values));
        self
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    /// The rows `keep` (ascending), with the same bins.
    pub fn subset(&self, keep: &[u32]) -> Binned {
        let m = keep.len();
        let slots = self.used.len();
        let mut cols = Vec::with_capacity(slots * m);
        for s in 0..slots {
            let col = &self.cols[s * self.n..(s + 1) * self.n];
            cols.extend(keep.iter().map(|&r| col[r as usize]));
        }
        Binned {
            bins: self.bins.clone(),
            cols,
            n: m,
            width: self.width,
            active: self.active.clone(),
            used: self.used.clone(),
            nbins: self.nbins.clone(),
            offset: self
                .offset
                .as_ref()
                .map(|(o, v)| (o.clone(), keep.iter().map(|&r| v[r as usize]).collect())),
            binning_seconds: 0.0,
        }
    }
}

/// Trains on `x` (binned here) with early stopping on `valid` when given. `progress(done,
/// total)` reports boosting rounds.
pub fn train(
    x: Matrix<'_>,
    y: &[u8],
    valid: Option<(Matrix<'_>, &[u8])>,
    p: &GbdtParams,
    progress: Progress<'_>,
) -> (Gbdt, TrainLog) {
    let binned = Binned::new(&Stack::one(x), p.max_bins, p.threads);
    train_binned(&binned, y, valid, p, progress)
}

/// Trains on binned rows (see [`train`]). `p.max_bins` was applied when binning.
pub fn train_binned(
    b: &Binned,
    y: &[u8],
    valid: Option<(Matrix<'_>, &[u8])>,
    p: &GbdtParams,
    progress: Progress<'_>,
) -> (Gbdt, TrainLog) {
    let nthreads = threads(p.threads);
    let n = b.n;
    let t1 = std::time::Instant::now();
    let w_pos = p.pos_weight.max(1e-6);
    let (sw_pos, sw_neg) = y.iter().fold((0.0, 0.0), |(a, b), &l| {
        if l == 1 { (a + w_pos, b) } else { (a, b + 1.0) }
    });
    let init: &[f64] = b.offset.as_ref().map_or(&[], |(_, v)| &v[..]);
    let offset = b.offset.as_ref().map(|(o, _)| o.clone());
    let base = if sw_pos > 0.0 && sw_neg > 0.0 {
        match &offset {
            None => (sw_pos / sw_neg).ln(),
            // The constant that minimises the weighted log loss on top of the offsets.
            Some(_) => {
                let mut c = 0.0f64;
                for _ in 0..20 {
                    let (mut g, mut h) = (0.0f64, 0.0f64);
                    for (&o, &l) in init.iter().zip(y) {
                        let pr = sigmoid(o + c);
                        let w = if l == 1 { w_pos } else { 1.0 };
                        g += w * (pr - f64::from(l));
                        h += w * (pr * (1.0 - pr)).max(1e-12);
                    }
                    let step = g / h.max(1e-12);
                    c -= step;
                    if step.abs() < 1e-10 {
                        break;
                    }
                }
                c
            }
        }
    } else {
        0.0
    };
    let grower = Grower {
        cols: &b.cols,
        n,
        active: b.active.clone(),
        used: b.used.clone(),
        nbins: b.nbins.clone(),
        p,
        nthreads,
    };
    let mut pool = Pool::default();
    let mut margins: Vec<f64> = if init.is_empty() {
        vec![base; n]
    } else {
        init.iter().map(|o| base + o).collect()
    };
    let mut grad = vec![0f32; n];
    let mut hess = vec![0f32; n];
    let mut idx: Vec<u32> = (0..n as u32).collect();
    let mut valid_m: Vec<f64> = valid.map_or_else(Vec::new, |(v, _)| {
        (0..v.rows)
            .map(|i| base + offset.as_ref().map_or(0.0, |o| o.value(v.row(i))))
            .collect()
    });
    let mut valid_loss = Vec::new();
    let mut trees: Vec<Tree> = Vec::new();
    let mut best = (f64::INFINITY, 0usize);
    for it in 0..p.num_trees {
        let chunk = n.div_ceil(nthreads).max(1);
        std::thread::scope(|sc| {
            for (((g, h), m), y) in grad
                .chunks_mut(chunk)
                .zip(hess.chunks_mut(chunk))
                .zip(margins.chunks(chunk))
                .zip(y.chunks(chunk))
            {
                sc.spawn(move || {
                    for i in 0..g.len() {
                        let pr = sigmoid(m[i]);
                        let w = if y[i] == 1 { w_pos } else { 1.0 };
                        g[i] = (w * (pr - f64::from(y[i]))) as f32;
                        h[i] = (w * (pr * (1.0 - pr)).max(1e-16)) as f32;
                    }
                });
            }
        });
        // Rows in natural order for every tree, so the tree does not depend on the last one's
        // partition order.
        for (i, r) in idx.iter_mut().enumerate() {
            *r = i as u32;
        }
        let (tree, ranges) = grower.grow(&mut idx, &grad, &hess, &b.bins, &mut pool);
        for (leaf, &(lo, hi)) in ranges.iter().enumerate() {
            let v = tree.leaf_values[leaf];
            for &r in &idx[lo..hi] {
                margins[r as usize] += v;
            }
        }
        let single_leaf = tree.nodes.is_empty();
        if let Some((vx, vy)) = valid {
            let add = par_ranges(vx.rows, nthreads, |range| {
                range.map(|i| tree.predict(vx.row(i))).collect::<Vec<_>>()
            })
            .concat();
            for (m, a) in valid_m.iter_mut().zip(add) {
                *m += a;
            }
            let loss = log_loss(&valid_m, vy, w_pos);
            valid_loss.push(loss);
            if loss < best.0 - 1e-12 {
                best = (loss, it + 1);
            }
        } else {
            best = (0.0, it + 1);
        }
        trees.push(tree);
        progress(it + 1, p.num_trees);
        if single_leaf || (valid.is_some() && it + 1 - best.1 >= p.early_stopping_rounds.max(1)) {
            break;
        }
    }
    let grown = trees.len();
    trees.truncate(best.1.max(1).min(grown));
    let log = TrainLog {
        trees: trees.len(),
        grown,
        valid_loss,
        binning_seconds: b.binning_seconds,
        boosting_seconds: t1.elapsed().as_secs_f64(),
    };
    (
        Gbdt {
            base,
            trees,
            width: b.width,
            offset,
        },
        log,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic synthetic problem: the label depends on two of five features, one of
    /// them often missing.
    pub(crate) fn synthetic(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>, usize) {
        let width = 5;
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64) / (1u64 << 31) as f64
        };
        let mut x = Vec::with_capacity(n * width);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let a = next() as f32;
            let b = (next() * 10.0).floor() as f32;
            let c = if next() < 0.3 {
                f32::NAN
            } else {
                next() as f32
            };
            let d = next() as f32;
            let e = 3.0f32;
            let z = 3.0 * f64::from(a) - 0.4 * f64::from(b)
                + if c.is_nan() { 1.0 } else { -f64::from(c) };
            y.push(u8::from(next() < sigmoid(z)));
            x.extend_from_slice(&[a, b, c, d, e]);
        }
        (x, y, width)
    }

    #[test]
    fn learns_a_signal_and_stops_early() {
        let (x, y, w) = synthetic(6000, 1);
        let (vx, vy, _) = synthetic(3000, 2);
        let p = GbdtParams {
            num_trees: 400,
            learning_rate: 0.1,
            ..GbdtParams::default()
        };
        let (m, log) = train(
            Matrix::new(&x, w),
            &y,
            Some((Matrix::new(&vx, w), &vy)),
            &p,
            &|_, _| {},
        );
        let scores: Vec<f64> = (0..vy.len())
            .map(|i| m.margin(&vx[i * w..(i + 1) * w]))
            .collect();
        let labels: Vec<bool> = vy.iter().map(|l| *l == 1).collect();
        let auc = crate::metrics::auc(&scores, &labels).unwrap_or(0.0);
        assert!(auc > 0.75, "auc {auc}");
        assert!(log.grown < 400, "early stopping never triggered");
        assert_eq!(log.trees, m.trees.len());
        // The constant feature is never split on.
        assert!(
            m.trees
                .iter()
                .flat_map(|t| &t.nodes)
                .all(|n| n.feature != 4)
        );
        for t in &m.trees {
            assert!(t.depth() <= p.max_depth);
            assert!(t.leaf_values.len() <= p.num_leaves);
            assert!(
                t.leaf_counts
                    .iter()
                    .all(|c| *c >= p.min_data_in_leaf as u32)
            );
        }
    }

    #[test]
    fn training_is_deterministic_across_thread_counts() {
        let (x, y, w) = synthetic(3000, 3);
        let mk = |threads| {
            let p = GbdtParams {
                num_trees: 30,
                threads,
                ..GbdtParams::default()
            };
            train(Matrix::new(&x, w), &y, None, &p, &|_, _| {}).0
        };
        assert_eq!(mk(1), mk(2));
    }

    #[test]
    fn bins_are_consistent_with_thresholds() {
        let v: Vec<f32> = (0..1000).map(|i| (i % 37) as f32 * 0.5).collect();
        let mut s = v.clone();
        s.sort_unstable_by(f32::total_cmp);
        let u = feature_uppers(&s, 255);
        assert_eq!(u.len(), 37);
        let many: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let u = feature_uppers(&many, 255);
        assert!(u.len() <= 255 && u.len() > 200, "{}", u.len());
        assert!(u.windows(2).all(|w| w[0] < w[1]));
        let b = Bins {
            uppers: vec![u.clone()],
        };
        for &x in &[0.0f32, 17.5, 5000.0, 99_999.0, 1e9] {
            let k = b.bin(0, x) as usize;
            assert!(x <= u[k]);
            if k > 0 {
                assert!(x > u[k - 1]);
            }
        }
    }
}
