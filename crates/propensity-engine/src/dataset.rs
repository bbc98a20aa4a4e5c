//! Cutoffs, eligibility, labels and the feature rows of every snapshot.
//!
//! As-of time `T`, outcome window `W`, `n` snapshots `stride` apart. The newest cutoff whose
//! labels are complete before `T` is the validation cutoff `V = T − W`. Two sets of training
//! cutoffs come from it (the purged, out-of-time protocol of [`CutoffPlan`]):
//!
//! - the **fit** cutoffs `V, V − stride, …` (`n` of them) train the model that scores `T`;
//! - the **search** cutoffs `V − W, V − W − stride, …` (`n` of them) train the candidate
//!   models that are judged on `V`: no label window of theirs reaches `V` (`c + W ≤ V`), so
//!   the validation labels say nothing the training labels already said, and the model judged
//!   on `V` stands to `V` exactly as the fit model stands to `T`.
//!
//! A profile is eligible at cutoff `c` when it has an event in `[c − active_within, c)` and
//! passes the include/exclude rules. Its label at a training cutoff comes from the goal's
//! events in `[c, c + window)` (half-open: an event exactly at `c + window` belongs to the
//! next window). Features come only from events before `c` (see [`crate::features`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float32Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use propensity_core::enums::GoalOutcome;
use propensity_core::{Goal, Job};
use serde::Serialize;

use crate::events::{EventStore, GOAL_BIT};
use crate::features::{Catalogue, FeatureSpec, Scratch};
use crate::profiles::ProfileTable;

/// The cutoffs of one run, in microseconds (UTC).
#[derive(Debug, Clone, Serialize)]
pub struct CutoffPlan {
    pub as_of: i64,
    /// Every labelled cutoff, newest first and distinct: `training[0]` is the validation
    /// cutoff `V`; the fit and search cutoffs are among them.
    pub training: Vec<i64>,
    /// The cutoffs of the model that scores: `V, V − stride, …`, newest first.
    pub fit: Vec<i64>,
    /// The cutoffs of the models judged on `V`: `V − W, V − W − stride, …`, newest first.
    pub search: Vec<i64>,
    pub window: i64,
    pub stride: i64,
    pub lookback: i64,
    pub active_within: i64,
}

impl CutoffPlan {
    pub fn new(
        as_of: i64,
        window: i64,
        stride: i64,
        snapshots: u32,
        lookback: i64,
        active_within: i64,
    ) -> Self {
        // Saturating: absurd spans give cutoffs before any data, never a wrapped time.
        let validation = as_of.saturating_sub(window);
        let from = |newest: i64| -> Vec<i64> {
            (0..i64::from(snapshots.max(1)))
                .map(|k| newest.saturating_sub(k.saturating_mul(stride)))
                .collect()
        };
        let fit = from(validation);
        let search = from(validation.saturating_sub(window));
        let mut training: Vec<i64> = fit.iter().chain(&search).copied().collect();
        training.sort_unstable_by(|a, b| b.cmp(a));
        training.dedup();
        Self {
            as_of,
            training,
            fit,
            search,
            window,
            stride,
            lookback,
            active_within,
        }
    }

    pub fn from_job(job: &Job, as_of: i64) -> Self {
        let us = |s: propensity_core::Span| s.as_secs() as i64 * 1_000_000;
        Self::new(
            as_of,
            us(job.goal.window()),
            us(job.model.stride(job.goal.window())),
            job.model.snapshots,
            job.features.lookback.as_secs() as i64 * 1_000_000,
            us(job.eligibility.active_within),
        )
    }

    /// The validation cutoff `V = T − W`.
    pub fn validation(&self) -> i64 {
        self.training.first().copied().unwrap_or(self.as_of)
    }

    pub fn oldest(&self) -> i64 {
        self.training.last().copied().unwrap_or(self.as_of)
    }

    /// The earliest event time this plan reads.
    pub fn needed_from(&self) -> i64 {
        self.oldest()
            .saturating_sub(self.lookback.max(self.active_within))
    }
}

/// The goal as a labelling rule over the store's goal flag.
#[derive(Debug, Clone, Copy)]
pub struct LabelRule {
    pub outcome: GoalOutcome,
    pub min_count: u32,
}

impl LabelRule {
    pub fn from_job(job: &Job) -> Option<Self> {
        match &job.goal {
            Goal::Conditions(g) => Some(Self {
                outcome: g.outcome,
                min_count: g.min_count,
            }),
            Goal::Plugin(_) => None,
        }
    }

    /// Label of profile `p` at cutoff `c`: goal events in `[c, c + window)`.
    pub fn label(&self, store: &EventStore, p: usize, c: i64, window: i64) -> bool {
        let r = store.range(p);
        let ts = &store.ts[r.clone()];
        let lo = ts.partition_point(|&t| t < c);
        let hi = ts.partition_point(|&t| t < c.saturating_add(window));
        let hits = store.flags[r.start + lo..r.start + hi]
            .iter()
            .filter(|f| **f & GOAL_BIT != 0)
            .count();
        let occurred = hits >= self.min_count as usize;
        match self.outcome {
            GoalOutcome::WillOccur => occurred,
            GoalOutcome::WillNotOccur => !occurred,
        }
    }
}

/// Labels a goal plugin gave: for each training cutoff, one label per profile of the store
/// (profiles not eligible at that cutoff are `false` and never read).
#[derive(Debug, Clone, Default)]
pub struct PluginLabels {
    pub window: i64,
    pub by_cutoff: std::collections::HashMap<i64, Vec<bool>>,
}

/// Where a profile's label at a cutoff comes from: the built-in rule over the goal flags, or
/// the labels a plugin gave for the job's own cutoffs and window.
#[derive(Debug, Clone, Copy)]
pub enum Labeller<'a> {
    Rule(LabelRule),
    Plugin(&'a PluginLabels),
}

impl Labeller<'_> {
    pub fn label(&self, store: &EventStore, p: usize, c: i64, window: i64) -> bool {
        match self {
            Labeller::Rule(r) => r.label(store, p, c, window),
            Labeller::Plugin(l) => {
                window == l.window
                    && l.by_cutoff
                        .get(&c)
                        .and_then(|v| v.get(p))
                        .copied()
                        .unwrap_or(false)
            }
        }
    }
}

/// Whether profile `p` is scored (or trained on) at cutoff `c`.
pub fn eligible(
    store: &EventStore,
    profiles: &ProfileTable,
    p: usize,
    c: i64,
    active_within: i64,
) -> bool {
    if !profiles.include[p] || profiles.exclude[p] {
        return false;
    }
    let ts = &store.ts[store.range(p)];
    let i = ts.partition_point(|&t| t < c);
    i > 0 && ts[i - 1] >= c.saturating_sub(active_within)
}

/// Rows of one cutoff: eligible profiles, their labels (training only) and features.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cutoff: i64,
    pub training: bool,
    /// Profile indices into the store, ascending.
    pub rows: Vec<u32>,
    /// One per row for training snapshots (1 = positive); empty for scoring.
    pub labels: Vec<u8>,
    /// `rows.len() × width`, row-major.
    pub values: Vec<f32>,
    pub width: usize,
}

impl Snapshot {
    /// Keeps the rows whose profile index satisfies `keep` (erased profiles are dropped this
    /// way before training and scoring).
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        let w = self.width;
        let mut out = 0;
        for i in 0..self.rows.len() {
            if keep(self.rows[i]) {
                self.rows[out] = self.rows[i];
                if !self.labels.is_empty() {
                    self.labels[out] = self.labels[i];
                }
                self.values.copy_within(i * w..(i + 1) * w, out * w);
                out += 1;
            }
        }
        self.rows.truncate(out);
        if !self.labels.is_empty() {
            self.labels.truncate(out);
        }
        self.values.truncate(out * w);
    }

    pub fn empty(cutoff: i64, training: bool, width: usize) -> Self {
        Self {
            cutoff,
            training,
            rows: Vec::new(),
            labels: Vec::new(),
            values: Vec::new(),
            width,
        }
    }
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|l| **l == 1).count()
    }
    pub fn negatives(&self) -> usize {
        self.labels.len() - self.positives()
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    /// The snapshot as an Arrow batch: `profile_id`, `cutoff`, `label` (null when scoring),
    /// then one Float32 column per feature (null where missing).
    pub fn to_record_batch(
        &self,
        catalogue: &Catalogue,
        store: &EventStore,
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut fields = vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new(
                "cutoff",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("label", DataType::Boolean, true),
        ];
        fields.extend(
            catalogue
                .features
                .iter()
                .map(|f| Field::new(&f.name, DataType::Float32, true)),
        );
        let n = self.rows.len();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                self.rows
                    .iter()
                    .map(|&p| store.profile_ids[p as usize].as_str()),
            )),
            Arc::new(TimestampMicrosecondArray::from(vec![self.cutoff; n]).with_timezone("UTC")),
            Arc::new(if self.training {
                BooleanArray::from(
                    self.labels
                        .iter()
                        .map(|l| Some(*l == 1))
                        .collect::<Vec<_>>(),
                )
            } else {
                BooleanArray::from(vec![None; n])
            }),
        ];
        // One pass over the rows fills every column (a column-at-a-time walk would stride
        // through the whole matrix once per feature).
        let mut columns: Vec<Vec<f32>> = (0..self.width).map(|_| Vec::with_capacity(n)).collect();
        for row in self.values.chunks_exact(self.width.max(1)) {
            for (c, v) in columns.iter_mut().zip(row) {
                c.push(*v);
            }
        }
        for c in columns {
            // Missing (NaN inside) is null in Arrow, as every consumer expects.
            let nulls = arrow::buffer::NullBuffer::from(
                c.iter().map(|v| !v.is_nan()).collect::<Vec<bool>>(),
            );
            let nulls = (nulls.null_count() > 0).then_some(nulls);
            cols.push(Arc::new(Float32Array::new(c.into(), nulls)));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
    }
}

/// Training snapshots (newest cutoff first) and the scoring snapshot at the as-of time.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub training: Vec<Snapshot>,
    pub scoring: Snapshot,
    /// The BG/NBD model of each cutoff (training cutoffs, then the scoring cutoff), when the
    /// catalogue has its features.
    pub btyd: Vec<BtydFit>,
}

/// The BG/NBD fit of one cutoff, for the model card.
#[derive(Debug, Clone, Serialize)]
pub struct BtydFit {
    pub cutoff: i64,
    /// `None`: fewer than ten eligible profiles with a transaction, or no repeat behaviour.
    pub fit: Option<propensity_model::btyd::Fit>,
}

/// Profiles the BG/NBD model of a cutoff is fitted on, at most (a deterministic sample).
pub const BTYD_SAMPLE: usize = 100_000;

/// Fits the BG/NBD model at each cutoff on the eligible profiles' transaction histories
/// before it (never their labels), in parallel over the cutoffs.
fn fit_btyd(
    store: &EventStore,
    profiles: &ProfileTable,
    spec: &FeatureSpec,
    cutoffs: &[i64],
    active_within: i64,
) -> Vec<BtydFit> {
    let n = store.profiles();
    // A deterministic sample of profiles, the same at every cutoff.
    let step = n.div_ceil(BTYD_SAMPLE).max(1);
    let fits = par_chunks(cutoffs.len(), |range| {
        range
            .map(|k| {
                let c = cutoffs[k];
                let rows: Vec<propensity_model::btyd::Rfm> = (0..n)
                    .step_by(step)
                    .filter(|&p| eligible(store, profiles, p, c, active_within))
                    .filter_map(|p| spec.rfm(store, p, c))
                    .collect();
                BtydFit {
                    cutoff: c,
                    fit: propensity_model::btyd::fit(&rows),
                }
            })
            .collect::<Vec<_>>()
    });
    fits.into_iter().flatten().collect()
}

/// Eligible profiles and labels at one cutoff.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CutoffCounts {
    pub eligible: u64,
    pub positives: u64,
    pub negatives: u64,
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16)
}

/// Splits `0..n` into contiguous chunks, one per thread, and runs `f` on each.
fn par_chunks<T: Send>(n: usize, f: impl Fn(std::ops::Range<usize>) -> T + Sync) -> Vec<T> {
    let t = threads().min(n.max(1));
    let size = n.div_ceil(t).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|i| {
                let f = &f;
                s.spawn(move || f(i * size..((i + 1) * size).min(n)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e),
            })
            .collect()
    })
}

/// Eligible / positive / negative counts per cutoff, without computing features.
pub fn label_counts(
    store: &EventStore,
    profiles: &ProfileTable,
    cutoffs: &[i64],
    window: i64,
    active_within: i64,
    rule: Labeller<'_>,
) -> Vec<CutoffCounts> {
    let parts = par_chunks(store.profiles(), |range| {
        let mut c = vec![
            CutoffCounts {
                eligible: 0,
                positives: 0,
                negatives: 0
            };
            cutoffs.len()
        ];
        for p in range {
            for (k, &cut) in cutoffs.iter().enumerate() {
                if eligible(store, profiles, p, cut, active_within) {
                    c[k].eligible += 1;
                    if rule.label(store, p, cut, window) {
                        c[k].positives += 1;
                    } else {
                        c[k].negatives += 1;
                    }
                }
            }
        }
        c
    });
    let mut total = vec![
        CutoffCounts {
            eligible: 0,
            positives: 0,
            negatives: 0
        };
        cutoffs.len()
    ];
    for part in parts {
        for (t, c) in total.iter_mut().zip(part) {
            t.eligible += c.eligible;
            t.positives += c.positives;
            t.negatives += c.negatives;
        }
    }
    total
}

/// Builds every snapshot in one pass over the profiles: for each profile, all training
/// cutoffs and the scoring cutoff are computed from the same grouped events.
pub fn build(
    store: &EventStore,
    profiles: &ProfileTable,
    spec: &FeatureSpec,
    plan: &CutoffPlan,
    rule: Labeller<'_>,
) -> Dataset {
    let width = spec.len();
    let mut cutoffs: Vec<(i64, bool)> = plan.training.iter().map(|c| (*c, true)).collect();
    cutoffs.push((plan.as_of, false));
    let btyd = if spec.wants_btyd() {
        let times: Vec<i64> = cutoffs.iter().map(|c| c.0).collect();
        fit_btyd(store, profiles, spec, &times, plan.active_within)
    } else {
        Vec::new()
    };
    let model_of = |k: usize| btyd.get(k).and_then(|b| b.fit.as_ref()).map(|f| &f.params);
    let parts = par_chunks(store.profiles(), |range| {
        let mut scratch = Scratch::default();
        let mut snaps: Vec<Snapshot> = cutoffs
            .iter()
            .map(|&(cutoff, training)| Snapshot::empty(cutoff, training, width))
            .collect();
        let mut row = vec![0f32; width];
        for p in range {
            for (k, s) in snaps.iter_mut().enumerate() {
                if !eligible(store, profiles, p, s.cutoff, plan.active_within) {
                    continue;
                }
                spec.compute(
                    store,
                    profiles,
                    p,
                    s.cutoff,
                    model_of(k),
                    &mut scratch,
                    &mut row,
                );
                s.rows.push(p as u32);
                s.values.extend_from_slice(&row);
                if s.training {
                    s.labels
                        .push(u8::from(rule.label(store, p, s.cutoff, plan.window)));
                }
            }
        }
        snaps
    });
    let mut merged: Vec<Snapshot> = cutoffs
        .iter()
        .map(|&(cutoff, training)| Snapshot::empty(cutoff, training, width))
        .collect();
    for part in parts {
        for (m, s) in merged.iter_mut().zip(part) {
            m.rows.extend(s.rows);
            m.labels.extend(s.labels);
            m.values.extend(s.values);
        }
    }
    let scoring = merged
        .pop()
        .unwrap_or_else(|| Snapshot::empty(plan.as_of, false, width));
    Dataset {
        training: merged,
        scoring,
        btyd,
    }
}

impl Dataset {
    /// Every snapshot (training cutoffs, then scoring) as Arrow batches.
    pub fn record_batches(
        &self,
        catalogue: &Catalogue,
        store: &EventStore,
    ) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
        self.training
            .iter()
            .chain(std::iter::once(&self.scoring))
            .map(|s| s.to_record_batch(catalogue, store))
            .collect()
    }

    /// Writes every snapshot to one Parquet file: to a temporary file next to it, then
    /// renamed, so a reader never sees half a file.
    pub fn write_parquet(
        &self,
        catalogue: &Catalogue,
        store: &EventStore,
        path: &std::path::Path,
    ) -> Result<u64, String> {
        let batches = self
            .record_batches(catalogue, store)
            .map_err(|e| e.to_string())?;
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("parquet.tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        // Feature columns are mostly distinct floats: dictionary pages would only be tried and
        // dropped.
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled("profile_id".into(), true)
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, first.schema(), Some(props))
            .map_err(|e| e.to_string())?;
        let mut rows = 0u64;
        for b in &batches {
            rows += b.num_rows() as u64;
            w.write(b).map_err(|e| e.to_string())?;
        }
        w.close().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = crate::events::MICROS_PER_DAY;

    #[test]
    fn the_search_cutoffs_end_an_outcome_window_before_validation() {
        // 90-day window, 30-day stride, 4 snapshots, as of day 1000.
        let p = CutoffPlan::new(1000 * DAY, 90 * DAY, 30 * DAY, 4, 365 * DAY, 90 * DAY);
        let days = |v: &[i64]| v.iter().map(|c| c / DAY).collect::<Vec<_>>();
        assert_eq!(p.validation(), 910 * DAY);
        assert_eq!(days(&p.fit), vec![910, 880, 850, 820]);
        assert_eq!(days(&p.search), vec![820, 790, 760, 730]);
        // Shared cutoffs are computed once.
        assert_eq!(days(&p.training), vec![910, 880, 850, 820, 790, 760, 730]);
    }

    proptest! {
        /// Regression test for #16: with a 7-day stride and a 90-day window, 98 % of the
        /// validation labels equalled the same profile's training label a week earlier. No
        /// label window of a cutoff the judged models train on may overlap the validation
        /// cutoff's, and every label window ends by the as-of time.
        #[test]
        fn purged_protocol_never_overlaps(
            window_days in 1i64..400,
            stride_days in 1i64..120,
            snapshots in 1u32..12,
            as_of_day in 2000i64..4000,
        ) {
            let (w, s, t) = (window_days * DAY, stride_days * DAY, as_of_day * DAY);
            let p = CutoffPlan::new(t, w, s, snapshots, 365 * DAY, 90 * DAY);
            let v = p.validation();
            prop_assert_eq!(v, t - w);
            prop_assert_eq!(p.fit.len(), snapshots as usize);
            prop_assert_eq!(p.search.len(), snapshots as usize);
            prop_assert_eq!(p.fit[0], v);
            for &c in &p.search {
                // [c, c + w) ends at or before v, where the validation labels begin.
                prop_assert!(c + w <= v, "search cutoff {} overlaps validation {}", c, v);
            }
            for &c in p.training.iter() {
                prop_assert!(c + w <= t, "labels of {} reach past the as-of time", c);
                prop_assert!(p.fit.contains(&c) || p.search.contains(&c));
            }
            prop_assert!(p.training.windows(2).all(|x| x[0] > x[1]));
            prop_assert_eq!(p.training[0], v);
        }
    }
}
