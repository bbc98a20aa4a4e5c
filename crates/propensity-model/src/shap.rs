//! Exact TreeSHAP (path-dependent, Lundberg et al. 2018, Algorithm 2) in the form that makes
//! reason codes for every profile affordable.
//!
//! For one leaf, the SHAP contribution to each feature on its path depends on the row only
//! through which of the path's (merged) feature conditions the row satisfies: a pattern of
//! `k` bits for `k` distinct features on the path. With the tree's depth bounded, the
//! contributions of all `2^k` patterns are computed once per leaf when the model is loaded
//! (the idea of Fast TreeSHAP v2, Yang 2021). Explaining a row is then, per tree: evaluate the
//! internal nodes once, form each leaf's pattern, and add `k` table entries — no extend or
//! unwind per row. Leaves with more distinct features than [`MAX_TABLE_BITS`] are computed
//! per row with the same routine, so the result is exact either way.

use crate::gbdt::{Gbdt, Tree, goes_left};

/// Leaves with at most this many distinct path features get a precomputed table
/// (`2^k · k` values).
pub const MAX_TABLE_BITS: usize = 10;

#[derive(Debug, Clone)]
struct LeafPath {
    /// Distinct features on the path, in order of first use.
    features: Vec<u32>,
    /// Fraction of the cover that follows the path at this feature's splits (product).
    zero: Vec<f64>,
    /// (node, went left, element) for every split on the path.
    conds: Vec<(u32, bool, u8)>,
    value: f64,
    /// `table[pattern * k + e]`; empty when computed per row.
    table: Vec<f64>,
}

/// One leaf in the flat layout used while explaining.
#[derive(Debug, Clone, Copy)]
struct LeafMeta {
    k: u32,
    /// Range in `conds`.
    cond_start: u32,
    cond_end: u32,
    /// Start in `features` (k entries).
    feat_start: u32,
    /// Start in `table` (`2^k · k` entries).
    table_start: u32,
    /// Index in `slow` when the leaf has no table (`u32::MAX`: it has one).
    slow: u32,
}

/// A tree's leaves back to back, so explaining a row walks contiguous memory.
#[derive(Debug, Clone)]
struct TreeShap {
    nodes: usize,
    leaves: Vec<LeafMeta>,
    conds: Vec<(u32, bool, u8)>,
    features: Vec<u32>,
    /// Per element (parallel to `features`), for trees of at most 64 internal nodes: the
    /// nodes on the leaf's path that split on the element's feature, and which of them the
    /// path leaves to the left. The row satisfies the element when
    /// `(left_bits ^ dir) & mask == 0`.
    masks: Vec<(u64, u64)>,
    table: Vec<f64>,
    /// Per-row fallback for leaves without a table.
    slow: Vec<LeafPath>,
}

impl TreeShap {
    fn new(nodes: usize, paths: Vec<LeafPath>) -> Self {
        let mut t = TreeShap {
            nodes,
            leaves: Vec::with_capacity(paths.len()),
            conds: Vec::new(),
            features: Vec::new(),
            masks: Vec::new(),
            table: Vec::new(),
            slow: Vec::new(),
        };
        for p in paths {
            let cond_start = t.conds.len() as u32;
            t.conds.extend_from_slice(&p.conds);
            let feat_start = t.features.len() as u32;
            t.features.extend_from_slice(&p.features);
            if nodes <= 64 {
                let mut m = vec![(0u64, 0u64); p.features.len()];
                for &(node, went_left, e) in &p.conds {
                    m[e as usize].0 |= 1 << node;
                    if went_left {
                        m[e as usize].1 |= 1 << node;
                    }
                }
                t.masks.extend(m);
            }
            let table_start = t.table.len() as u32;
            t.table.extend_from_slice(&p.table);
            t.leaves.push(LeafMeta {
                k: p.features.len() as u32,
                cond_start,
                cond_end: t.conds.len() as u32,
                feat_start,
                table_start,
                slow: if p.table.is_empty() {
                    t.slow.len() as u32
                } else {
                    u32::MAX
                },
            });
            if p.table.is_empty() {
                t.slow.push(LeafPath {
                    table: Vec::new(),
                    ..p
                });
            }
        }
        t
    }
}

/// Precomputed explainer of one model.
#[derive(Debug, Clone)]
pub struct Explainer {
    trees: Vec<TreeShap>,
    /// The expected margin (the model's base value): `E[f(X)]` under the training cover.
    pub expected: f64,
    width: usize,
}

/// Per-thread scratch space.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    left: Vec<bool>,
    path: Vec<PathElem>,
    one: Vec<f64>,
    phi: Vec<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PathElem {
    zero: f64,
    one: f64,
    w: f64,
}

fn extend(path: &mut Vec<PathElem>, zero: f64, one: f64) {
    let l = path.len();
    path.push(PathElem {
        zero,
        one,
        w: if l == 0 { 1.0 } else { 0.0 },
    });
    for i in (0..l).rev() {
        path[i + 1].w += one * path[i].w * (i + 1) as f64 / (l + 1) as f64;
        path[i].w = zero * path[i].w * (l - i) as f64 / (l + 1) as f64;
    }
}

/// Sum of the weights of `path` with element `i` unwound.
fn unwound_sum(path: &[PathElem], i: usize) -> f64 {
    let l = path.len() - 1;
    let (one, zero) = (path[i].one, path[i].zero);
    let mut total = 0.0;
    if one != 0.0 {
        let mut next = path[l].w;
        for j in (0..l).rev() {
            let t = next * (l + 1) as f64 / ((j + 1) as f64 * one);
            total += t;
            next = path[j].w - t * zero * (l - j) as f64 / (l + 1) as f64;
        }
    } else {
        for j in (0..l).rev() {
            total += path[j].w * (l + 1) as f64 / (zero * (l - j) as f64);
        }
    }
    total
}

/// Contributions of one leaf to its `k` path features for given one-fractions.
fn leaf_phi(zero: &[f64], one: &[f64], value: f64, path: &mut Vec<PathElem>, out: &mut [f64]) {
    path.clear();
    extend(path, 1.0, 1.0);
    for (z, o) in zero.iter().zip(one) {
        extend(path, *z, *o);
    }
    for (e, slot) in out.iter_mut().enumerate() {
        let w = unwound_sum(path, e + 1);
        *slot = w * (one[e] - zero[e]) * value;
    }
}

/// Table entries (f64) an explainer may hold in all: 256 MiB. Deep, wide ensembles (the job
/// allows depth 16 and 4,096 leaves) get smaller tables and compute the rest per row.
pub const TABLE_BUDGET: usize = 32 << 20;

/// Distinct features on the path of every leaf of a tree (a leaf's table has `2^k · k`
/// entries).
fn leaf_ks(t: &Tree) -> Vec<usize> {
    fn walk(t: &Tree, child: i32, path: &mut Vec<u32>, out: &mut Vec<usize>) {
        if child < 0 {
            let mut f = path.clone();
            f.sort_unstable();
            f.dedup();
            out.push(f.len());
            return;
        }
        let n = &t.nodes[child as usize];
        path.push(n.feature);
        walk(t, n.left, path, out);
        walk(t, n.right, path, out);
        path.pop();
    }
    let mut out = Vec::new();
    if !t.nodes.is_empty() {
        walk(t, 0, &mut Vec::new(), &mut out);
    }
    out
}

/// The most table bits whose tables fit in `budget` entries.
pub fn table_bits(model: &Gbdt, budget: usize) -> usize {
    let ks: Vec<usize> = model.trees.iter().flat_map(leaf_ks).collect();
    (0..=MAX_TABLE_BITS)
        .rev()
        .find(|&bits| {
            let total: usize = ks
                .iter()
                .filter(|&&k| k <= bits)
                .map(|&k| (1usize << k) * k)
                .sum();
            total <= budget
        })
        .unwrap_or(0)
}

impl Explainer {
    /// Tables for as many leaves as [`TABLE_BUDGET`] allows.
    pub fn new(model: &Gbdt) -> Self {
        Self::with_table_bits(model, table_bits(model, TABLE_BUDGET))
    }

    /// As [`Explainer::new`], with tables only for leaves of at most `bits` distinct path
    /// features (the others are computed per row).
    pub fn with_table_bits(model: &Gbdt, bits: usize) -> Self {
        let mut expected = model.base + model.offset.as_ref().map_or(0.0, |o| o.mean);
        let mut path = Vec::new();
        let trees = model
            .trees
            .iter()
            .map(|t| {
                let total: f64 = t.leaf_counts.iter().map(|c| f64::from(*c)).sum();
                if total > 0.0 {
                    expected += t
                        .leaf_values
                        .iter()
                        .zip(&t.leaf_counts)
                        .map(|(v, c)| v * f64::from(*c) / total)
                        .sum::<f64>();
                }
                TreeShap::new(t.nodes.len(), leaf_paths(t, &mut path, bits))
            })
            .collect();
        Explainer {
            trees,
            expected,
            width: model.width,
        }
    }

    /// Adds the row's contributions to `out` (length = the model's width) and returns the
    /// expected value; `expected + Σ out = margin(x)`.
    pub fn explain(&self, model: &Gbdt, x: &[f32], s: &mut Scratch, out: &mut [f64]) -> f64 {
        self.explain_rows(model, &[x], s, out)
    }

    /// Explains several rows at once, tree by tree, so each tree's tables stay in cache
    /// while every row uses them: `out` holds `rows.len()` blocks of `width` values.
    pub fn explain_rows(
        &self,
        model: &Gbdt,
        rows: &[&[f32]],
        s: &mut Scratch,
        out: &mut [f64],
    ) -> f64 {
        debug_assert_eq!(out.len(), self.width * rows.len());
        if let Some(o) = &model.offset {
            // The offset depends on one feature only: all of it beyond its mean is that
            // feature's contribution.
            for (r, x) in rows.iter().enumerate() {
                out[r * self.width + o.feature] += o.value(x) - o.mean;
            }
        }
        for (t, ts) in model.trees.iter().zip(&self.trees) {
            if ts.leaves.len() <= 1 {
                continue;
            }
            for (r, x) in rows.iter().enumerate() {
                let o = &mut out[r * self.width..(r + 1) * self.width];
                explain_tree(t, ts, x, s, o);
            }
        }
        self.expected
    }
}

#[inline]
fn explain_tree(t: &Tree, ts: &TreeShap, x: &[f32], s: &mut Scratch, out: &mut [f64]) {
    let nodes = &t.nodes[..ts.nodes];
    let small = ts.nodes <= 64;
    let mut bits = 0u64;
    if small {
        for (i, n) in nodes.iter().enumerate() {
            bits |= u64::from(goes_left(n, x[n.feature as usize])) << i;
        }
    } else {
        s.left.clear();
        s.left
            .extend(nodes.iter().map(|n| goes_left(n, x[n.feature as usize])));
    }
    for leaf in &ts.leaves {
        let k = leaf.k as usize;
        let fs = leaf.feat_start as usize;
        let mut pattern = 0usize;
        if small {
            for (e, &(mask, dir)) in ts.masks[fs..fs + k].iter().enumerate() {
                pattern |= usize::from((bits ^ dir) & mask == 0) << e;
            }
        } else {
            pattern = (1usize << k) - 1;
            for &(node, went_left, e) in &ts.conds[leaf.cond_start as usize..leaf.cond_end as usize]
            {
                pattern &= !(usize::from(s.left[node as usize] != went_left) << e);
            }
        }
        let feats = &ts.features[fs..fs + k];
        if leaf.slow == u32::MAX {
            let start = leaf.table_start as usize + pattern * k;
            for (f, v) in feats.iter().zip(&ts.table[start..start + k]) {
                out[*f as usize] += v;
            }
        } else {
            let lp = &ts.slow[leaf.slow as usize];
            s.one.clear();
            s.one
                .extend((0..k).map(|e| if pattern >> e & 1 == 1 { 1.0 } else { 0.0 }));
            s.phi.clear();
            s.phi.resize(k, 0.0);
            leaf_phi(&lp.zero, &s.one, lp.value, &mut s.path, &mut s.phi);
            for (f, v) in feats.iter().zip(&s.phi) {
                out[*f as usize] += v;
            }
        }
    }
}

/// Every leaf's path with merged duplicate features and, where small enough, its table.
fn leaf_paths(t: &Tree, path: &mut Vec<PathElem>, bits: usize) -> Vec<LeafPath> {
    let mut out: Vec<Option<LeafPath>> = vec![None; t.leaf_values.len()];
    if t.nodes.is_empty() {
        return Vec::new();
    }
    // (node, went left) from the root down to the current position.
    fn walk(
        t: &Tree,
        child: i32,
        trail: &mut Vec<(u32, bool, f64)>,
        out: &mut Vec<Option<LeafPath>>,
        path: &mut Vec<PathElem>,
        bits: usize,
    ) {
        if child < 0 {
            let leaf = !child as usize;
            let mut features: Vec<u32> = Vec::new();
            let mut zero: Vec<f64> = Vec::new();
            let mut conds = Vec::with_capacity(trail.len());
            for &(node, went_left, frac) in trail.iter() {
                let f = t.nodes[node as usize].feature;
                let e = match features.iter().position(|x| *x == f) {
                    Some(e) => {
                        zero[e] *= frac;
                        e
                    }
                    None => {
                        features.push(f);
                        zero.push(frac);
                        features.len() - 1
                    }
                };
                conds.push((node, went_left, e as u8));
            }
            let k = features.len();
            let value = t.leaf_values[leaf];
            let mut table = Vec::new();
            if k <= bits {
                table = vec![0.0; (1usize << k) * k];
                let mut one = vec![0.0; k];
                for pattern in 0..1usize << k {
                    for (e, o) in one.iter_mut().enumerate() {
                        *o = if pattern >> e & 1 == 1 { 1.0 } else { 0.0 };
                    }
                    leaf_phi(
                        &zero,
                        &one,
                        value,
                        path,
                        &mut table[pattern * k..(pattern + 1) * k],
                    );
                }
            }
            out[leaf] = Some(LeafPath {
                features,
                zero,
                conds,
                value,
                table,
            });
            return;
        }
        let n = &t.nodes[child as usize];
        let count = f64::from(n.count).max(1.0);
        for (next, went_left) in [(n.left, true), (n.right, false)] {
            let c = child_count(t, next);
            trail.push((child as u32, went_left, c / count));
            walk(t, next, trail, out, path, bits);
            trail.pop();
        }
    }
    let mut trail = Vec::new();
    walk(t, 0, &mut trail, &mut out, path, bits);
    out.into_iter().flatten().collect()
}

fn child_count(t: &Tree, child: i32) -> f64 {
    if child < 0 {
        f64::from(t.leaf_counts[!child as usize])
    } else {
        f64::from(t.nodes[child as usize].count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Matrix;
    use crate::gbdt::{GbdtParams, train};

    /// E[f(x) | x_S] under the training cover (the path-dependent value function).
    fn cond_expect(t: &Tree, child: i32, x: &[f32], s: u32) -> f64 {
        if child < 0 {
            return t.leaf_values[!child as usize];
        }
        let n = &t.nodes[child as usize];
        if s >> n.feature & 1 == 1 {
            let next = if goes_left(n, x[n.feature as usize]) {
                n.left
            } else {
                n.right
            };
            return cond_expect(t, next, x, s);
        }
        let (cl, cr) = (child_count(t, n.left), child_count(t, n.right));
        (cl * cond_expect(t, n.left, x, s) + cr * cond_expect(t, n.right, x, s)) / (cl + cr)
    }

    /// Shapley values by enumerating every coalition.
    fn brute_force(model: &Gbdt, x: &[f32]) -> Vec<f64> {
        let m = model.width;
        let fact = |k: usize| (1..=k).map(|v| v as f64).product::<f64>();
        let v = |s: u32| -> f64 {
            model
                .trees
                .iter()
                .map(|t| {
                    if t.nodes.is_empty() {
                        t.leaf_values[0]
                    } else {
                        cond_expect(t, 0, x, s)
                    }
                })
                .sum()
        };
        let mut phi = vec![0.0; m];
        for (i, p) in phi.iter_mut().enumerate() {
            for s in 0u32..(1 << m) {
                if s >> i & 1 == 1 {
                    continue;
                }
                let k = s.count_ones() as usize;
                let w = fact(k) * fact(m - k - 1) / fact(m);
                *p += w * (v(s | 1 << i) - v(s));
            }
        }
        phi
    }

    #[test]
    fn matches_brute_force_shapley_values_and_sums_to_the_margin() {
        let (x, y, w) = crate::gbdt::tests::synthetic(4000, 11);
        let p = GbdtParams {
            num_trees: 25,
            learning_rate: 0.2,
            max_depth: 5,
            num_leaves: 16,
            ..GbdtParams::default()
        };
        let (model, _) = train(Matrix::new(&x, w), &y, None, &p, &|_, _| {});
        // Some paths split the same feature twice: merged path elements are exercised.
        assert!(model.trees.iter().any(|t| t.depth() >= 3));
        let ex = Explainer::new(&model);
        let mut s = Scratch::default();
        for i in (0..4000).step_by(97) {
            let row = &x[i * w..(i + 1) * w];
            let mut phi = vec![0.0; w];
            let e = ex.explain(&model, row, &mut s, &mut phi);
            let sum: f64 = phi.iter().sum::<f64>() + e;
            assert!((sum - model.margin(row)).abs() < 1e-9, "local accuracy");
            let bf = brute_force(&model, row);
            for (a, b) in phi.iter().zip(&bf) {
                assert!((a - b).abs() < 1e-9, "row {i}: {phi:?} vs {bf:?}");
            }
            // The constant feature never contributes.
            assert_eq!(phi[4], 0.0);
        }
    }

    #[test]
    fn an_offset_is_its_features_contribution_and_training_starts_from_it() {
        let (mut x, y, w) = crate::gbdt::tests::synthetic(4000, 13);
        // Feature 3 becomes a probability that knows part of the signal (feature 0).
        for i in 0..4000 {
            x[i * w + 3] = if i % 10 == 0 {
                f32::NAN
            } else {
                (0.1 + 0.8 * x[i * w]).clamp(0.0, 1.0)
            };
        }
        let st = crate::Stack::one(Matrix::new(&x, w));
        let off = crate::gbdt::Offset::fit(&st, &y, 3, false);
        assert!(off.missing > 0.0 && off.missing < 1.0);
        let p = GbdtParams {
            num_trees: 30,
            ..GbdtParams::default()
        };
        let b = crate::gbdt::Binned::new(&st, p.max_bins, 0).with_offset(&st, off.clone());
        let (model, _) = crate::gbdt::train_binned(&b, &y, None, &p, &|_, _| {});
        assert_eq!(model.offset.as_ref(), Some(&off));
        let ex = Explainer::new(&model);
        let mut s = Scratch::default();
        for i in (0..4000).step_by(101) {
            let row = &x[i * w..(i + 1) * w];
            let mut phi = vec![0.0; w];
            let e = ex.explain(&model, row, &mut s, &mut phi);
            let sum: f64 = phi.iter().sum::<f64>() + e;
            assert!((sum - model.margin(row)).abs() < 1e-9, "local accuracy");
        }
        // The offset is in the margin: without it the margins differ by exactly its value.
        let mut bare = model.clone();
        bare.offset = None;
        let row = &x[w..2 * w];
        assert!((model.margin(row) - bare.margin(row) - off.value(row)).abs() < 1e-12);
    }

    #[test]
    fn per_row_leaves_and_batches_give_the_same_values() {
        let (x, y, w) = crate::gbdt::tests::synthetic(3000, 12);
        let p = GbdtParams {
            num_trees: 20,
            max_depth: 5,
            ..GbdtParams::default()
        };
        let (model, _) = train(Matrix::new(&x, w), &y, None, &p, &|_, _| {});
        let fast = Explainer::new(&model);
        let slow = Explainer::with_table_bits(&model, 1);
        let mut s = Scratch::default();
        let rows: Vec<&[f32]> = (0..50).map(|i| &x[i * w..(i + 1) * w]).collect();
        let mut batch = vec![0.0; 50 * w];
        fast.explain_rows(&model, &rows, &mut s, &mut batch);
        for (i, row) in rows.iter().enumerate() {
            let mut a = vec![0.0; w];
            let mut b = vec![0.0; w];
            fast.explain(&model, row, &mut s, &mut a);
            slow.explain(&model, row, &mut s, &mut b);
            for j in 0..w {
                assert!((a[j] - b[j]).abs() < 1e-12);
                assert_eq!(a[j], batch[i * w + j]);
            }
        }
    }

    #[test]
    fn table_memory_is_bounded() {
        let (x, y, w) = crate::gbdt::tests::synthetic(3000, 13);
        let p = GbdtParams {
            num_trees: 10,
            max_depth: 4,
            ..GbdtParams::default()
        };
        let (model, _) = train(Matrix::new(&x, w), &y, None, &p, &|_, _| {});
        assert_eq!(table_bits(&model, TABLE_BUDGET), MAX_TABLE_BITS);
        // 10 trees of up to 16 leaves at depth <= 4: 64 entries per leaf at most.
        assert!(table_bits(&model, 100) < 4);
        // No budget: no tables at all (every leaf computed per row).
        let none = Explainer::with_table_bits(&model, table_bits(&model, 0));
        assert!(none.trees.iter().all(|t| t.table.is_empty()));
        let sized = Explainer::with_table_bits(&model, table_bits(&model, 500));
        assert!(sized.trees.iter().map(|t| t.table.len()).sum::<usize>() <= 500);
    }

    #[test]
    fn single_leaf_contributions_are_efficient() {
        let zero = [0.4, 0.7, 0.25];
        let mut path = Vec::new();
        for pattern in 0..8usize {
            let one: Vec<f64> = (0..3).map(|e| (pattern >> e & 1) as f64).collect();
            let mut a = [0.0; 3];
            leaf_phi(&zero, &one, 1.5, &mut path, &mut a);
            // Efficiency for a single leaf: Σφ = v·(Π one-weighted − Π zero) over the path.
            let full: f64 = one.iter().product::<f64>() * 1.5 - zero.iter().product::<f64>() * 1.5;
            let s: f64 = a.iter().sum();
            assert!((s - full).abs() < 1e-12, "{pattern}: {s} vs {full}");
        }
    }
}
