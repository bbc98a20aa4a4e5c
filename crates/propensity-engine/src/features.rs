//! Point-in-time features. Each feature has a stable name and a human label, listed in the
//! [`Catalogue`] that reason codes use.
//!
//! A profile's features at cutoff `c` are computed by [`FeatureSpec::compute`] from the
//! profile's events in `[c - lookback, c)` only: the slice is cut by binary search before
//! anything is read, so an event at or after `c` cannot reach a feature (the property test in
//! this module and `tests/` prove it). All cutoffs are computed from the same grouped events
//! in one pass over the profiles, never one scan per cutoff.

use serde::Serialize;

use crate::events::{EventStore, GOAL_BIT, MICROS_PER_DAY};
use crate::profiles::{AttrValues, ProfileTable};

/// One feature in the catalogue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeatureDef {
    /// Stable, machine-readable: `cart_add_count_7d`, `days_since_last_commerce_purchases`.
    pub name: String,
    /// For people: "Cart add events in the last 7 days".
    pub label: String,
    /// recency | frequency | monetary | engagement | trend | attribute | model (BG/NBD)
    pub group: &'static str,
}

/// The features a job's model learns from, in column order.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Catalogue {
    pub features: Vec<FeatureDef>,
    /// Names in `features.exclude` that matched no feature (reported as a warning).
    pub unknown_excludes: Vec<String>,
    /// Text attributes with nearly one value per profile, not used (reported as a warning).
    pub skipped_attributes: Vec<String>,
}

impl Catalogue {
    pub fn len(&self) -> usize {
        self.features.len()
    }
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }
    pub fn index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }
}

/// A kind of event counted separately: one of the most frequent types, a custom event or the
/// goal's own events.
#[derive(Debug, Clone)]
struct Slot {
    name: String,
    plural: String,
    singular: String,
}

#[derive(Debug, Clone)]
enum AttrFeature {
    Numeric(usize),
    OneHot(usize, u32),
    DaysSince(usize),
}

/// Everything needed to compute a feature row; built once per run.
#[derive(Debug, Clone)]
pub struct FeatureSpec {
    /// Count windows in microseconds, ascending; the last one is the lookback.
    windows: Vec<i64>,
    /// Windows with a trend feature (index into `windows`).
    trend: Vec<usize>,
    /// Distinct bucket bounds: the windows and the doubled trend windows.
    bounds: Vec<i64>,
    /// `windows[k]` is `bounds[wb[k]]`.
    wb: Vec<usize>,
    /// For trend `t`: the bound of `2w`.
    tb2: Vec<usize>,
    lookback: i64,
    slots: Vec<Slot>,
    /// Event type code → type slot.
    slot_of_type: Vec<Option<usize>>,
    /// (flag bit, slot) for custom events and the goal.
    flag_slots: Vec<(u32, usize)>,
    nums: usize,
    attrs: Vec<AttrFeature>,
    btyd: Option<BtydConfig>,
    /// Full row length, before `features.exclude`.
    full: usize,
    /// Indices of the full row that are kept, in catalogue order.
    keep: Vec<usize>,
    pub catalogue: Catalogue,
}

/// Categories one-hot encoded per categorical attribute (the most frequent ones).
pub const MAX_CATEGORIES: usize = 10;
/// A text attribute with more distinct values than this is not a category.
pub const MAX_DISTINCT: usize = 1000;

/// The inputs of [`FeatureSpec::new`] that come from the job.
#[derive(Debug, Clone)]
pub struct FeatureConfig {
    pub lookback_secs: u64,
    /// Sorted, distinct, each ≤ lookback.
    pub windows_secs: Vec<u64>,
    pub top_event_types: usize,
    pub custom_events: Vec<String>,
    pub exclude: Vec<String>,
    /// Buy-till-you-die features over the goal's outcome window (see [`Btyd`]).
    pub btyd: Option<BtydConfig>,
}

/// Which events are a BG/NBD "transaction", and the window its forecasts cover.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BtydConfig {
    pub window_secs: u64,
    /// Days with any event (a plugin goal, whose events the engine cannot tell apart);
    /// otherwise days with a goal event.
    pub all_events: bool,
}

impl FeatureConfig {
    pub fn from_job(job: &propensity_core::Job) -> Self {
        let f = &job.features;
        Self {
            lookback_secs: f.lookback.as_secs(),
            windows_secs: f.windows.iter().map(|w| w.as_secs()).collect(),
            top_event_types: f.top_event_types as usize,
            custom_events: f.custom_events.keys().cloned().collect(),
            exclude: f.exclude.clone(),
            btyd: Some(BtydConfig {
                window_secs: job.goal.window().as_secs(),
                all_events: matches!(job.goal, propensity_core::Goal::Plugin(_)),
            }),
        }
    }
}

/// The BG/NBD features of one cutoff: the model fitted on the eligible profiles' histories
/// before the cutoff (never on labels), or `None` when there was too little to fit.
pub type Btyd<'a> = Option<&'a propensity_model::btyd::BgNbd>;

/// Names of the BG/NBD features, in column order.
pub const BTYD_FEATURES: [&str; 3] = [
    "btyd_p_alive",
    "btyd_expected_goal_events",
    propensity_model::fallback::BTYD_FEATURE,
];

impl FeatureSpec {
    pub fn new(cfg: &FeatureConfig, store: &EventStore, profiles: &ProfileTable) -> Self {
        let mut windows_secs: Vec<u64> = cfg
            .windows_secs
            .iter()
            .copied()
            .filter(|w| *w <= cfg.lookback_secs)
            .collect();
        windows_secs.push(cfg.lookback_secs);
        windows_secs.sort_unstable();
        windows_secs.dedup();
        let windows: Vec<i64> = windows_secs.iter().map(|s| *s as i64 * 1_000_000).collect();
        let lookback = cfg.lookback_secs as i64 * 1_000_000;
        let trend: Vec<usize> = (0..windows.len())
            .filter(|&k| windows[k] * 2 <= lookback)
            .collect();
        let mut bounds: Vec<i64> = windows.clone();
        bounds.extend(trend.iter().map(|&k| windows[k] * 2));
        bounds.sort_unstable();
        bounds.dedup();
        let pos = |v: i64| bounds.iter().position(|b| *b == v).unwrap_or(0);
        let wb: Vec<usize> = windows.iter().map(|w| pos(*w)).collect();
        let tb2: Vec<usize> = trend.iter().map(|&k| pos(windows[k] * 2)).collect();

        // Event type slots: the most frequent types among the events the run kept.
        let mut counts = vec![0u64; store.type_names.len()];
        for &t in &store.etype {
            counts[t as usize] += 1;
        }
        let mut order: Vec<usize> = (0..counts.len()).filter(|&t| counts[t] > 0).collect();
        order.sort_by(|&a, &b| {
            counts[b]
                .cmp(&counts[a])
                .then_with(|| store.type_names[a].cmp(&store.type_names[b]))
        });
        order.truncate(cfg.top_event_types);
        // Stable column order whatever the counts: by type name.
        order.sort_by(|&a, &b| store.type_names[a].cmp(&store.type_names[b]));
        let mut slots = Vec::new();
        let mut slot_of_type = vec![None; store.type_names.len()];
        let mut taken: std::collections::HashSet<String> =
            cfg.custom_events.iter().cloned().collect();
        taken.insert("goal_event".into());
        for t in order {
            let raw = &store.type_names[t];
            let mut name = sanitize(raw);
            if taken.contains(&name) {
                name.push_str("_type");
            }
            taken.insert(name.clone());
            let (plural, singular) = type_words(raw);
            slot_of_type[t] = Some(slots.len());
            slots.push(Slot {
                name,
                plural,
                singular,
            });
        }
        let mut flag_slots = Vec::new();
        for (i, c) in cfg.custom_events.iter().enumerate() {
            let words = c.replace('_', " ");
            flag_slots.push((1u32 << (i + 1), slots.len()));
            slots.push(Slot {
                name: c.clone(),
                plural: format!("{words} events"),
                singular: format!("{words} event"),
            });
        }
        flag_slots.push((GOAL_BIT, slots.len()));
        slots.push(Slot {
            name: "goal_event".into(),
            plural: "goal events".into(),
            singular: "goal event".into(),
        });

        let mut attrs = Vec::new();
        let mut skipped = Vec::new();
        for (j, a) in profiles.attributes.iter().enumerate() {
            // An attribute named in `features.exclude` gives no feature at all (all of its
            // one-hot columns), e.g. a status that changes only after the outcome.
            if cfg.exclude.contains(&a.name) {
                continue;
            }
            match &a.values {
                AttrValues::Numeric(_) => attrs.push(AttrFeature::Numeric(j)),
                AttrValues::Time(_) => attrs.push(AttrFeature::DaysSince(j)),
                AttrValues::Categorical { codes, values } => {
                    let mut freq = vec![0u64; values.len()];
                    for &c in codes {
                        if c != u32::MAX {
                            freq[c as usize] += 1;
                        }
                    }
                    // Nearly unique values (emails, names, ids) are not categories: encoding
                    // them would put personal data into feature names and learn nothing.
                    let present: u64 = freq.iter().sum();
                    if values.len() > MAX_DISTINCT
                        || (values.len() > 20 && values.len() as u64 * 2 > present)
                    {
                        skipped.push(a.name.clone());
                        continue;
                    }
                    let mut top: Vec<usize> = (0..values.len()).collect();
                    top.sort_by(|&x, &y| {
                        freq[y]
                            .cmp(&freq[x])
                            .then_with(|| values[x].cmp(&values[y]))
                    });
                    top.truncate(MAX_CATEGORIES);
                    top.sort_by(|&x, &y| values[x].cmp(&values[y]));
                    attrs.extend(top.into_iter().map(|c| AttrFeature::OneHot(j, c as u32)));
                }
            }
        }

        let mut spec = FeatureSpec {
            windows,
            trend,
            bounds,
            wb,
            tb2,
            lookback,
            slots,
            slot_of_type,
            flag_slots,
            nums: store.num_fields,
            attrs,
            btyd: cfg.btyd,
            full: 0,
            keep: Vec::new(),
            catalogue: Catalogue::default(),
        };
        let mut all = spec.definitions(&windows_secs, &store.num_names, profiles);
        // Names are unique: a custom event called `event`, types `a.b` and `a-b`, or a field
        // listed twice would otherwise give two columns one name.
        let mut seen = std::collections::HashSet::new();
        for f in all.iter_mut() {
            let mut k = 2;
            let base = f.name.clone();
            while !seen.insert(f.name.clone()) {
                f.name = format!("{base}_{k}");
                k += 1;
            }
        }
        spec.full = all.len();
        let mut unknown: Vec<String> = cfg
            .exclude
            .iter()
            .filter(|e| {
                !all.iter().any(|f| &f.name == *e)
                    && !profiles.attributes.iter().any(|a| &a.name == *e)
            })
            .cloned()
            .collect();
        unknown.sort();
        for (i, f) in all.into_iter().enumerate() {
            if !cfg.exclude.contains(&f.name) {
                spec.keep.push(i);
                spec.catalogue.features.push(f);
            }
        }
        spec.catalogue.unknown_excludes = unknown;
        spec.catalogue.skipped_attributes = skipped;
        spec
    }

    /// Number of features per row (after `features.exclude`).
    pub fn len(&self) -> usize {
        self.keep.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keep.is_empty()
    }

    /// The catalogue in full-row order. Must follow [`Self::compute_full`] exactly.
    fn definitions(
        &self,
        windows_secs: &[u64],
        num_names: &[String],
        profiles: &ProfileTable,
    ) -> Vec<FeatureDef> {
        let wname: Vec<String> = windows_secs.iter().map(|s| span_name(*s)).collect();
        let wlabel: Vec<String> = windows_secs.iter().map(|s| span_label(*s)).collect();
        // "the last 7 days", or "all history" for the lookback `all`.
        let wlast: Vec<String> = windows_secs
            .iter()
            .map(|&s| {
                if s >= propensity_core::Lookback::ALL_SECS {
                    "all history".to_owned()
                } else {
                    format!("the last {}", span_label(s))
                }
            })
            .collect();
        let mut out = Vec::new();
        let mut push = |name: String, label: String, group: &'static str| {
            out.push(FeatureDef { name, label, group })
        };
        push(
            "days_since_last_event".into(),
            "Days since last event".into(),
            "recency",
        );
        push(
            "days_since_first_event".into(),
            "Days since first event".into(),
            "recency",
        );
        for k in 0..self.windows.len() {
            push(
                format!("event_count_{}", wname[k]),
                format!("Events in {}", wlast[k]),
                "frequency",
            );
        }
        for k in 0..self.windows.len() {
            push(
                format!("active_days_{}", wname[k]),
                format!("Active days in {}", wlast[k]),
                "engagement",
            );
        }
        for &k in &self.trend {
            push(
                format!("event_count_trend_{}", wname[k]),
                format!(
                    "Change in events, last {} vs the {} before",
                    wlabel[k], wlabel[k]
                ),
                "trend",
            );
        }
        push(
            "gap_days_mean".into(),
            "Average days between active days".into(),
            "engagement",
        );
        push(
            "gap_days_max".into(),
            "Longest gap between active days".into(),
            "engagement",
        );
        push(
            "gap_days_std".into(),
            "Spread of days between active days".into(),
            "engagement",
        );
        for s in &self.slots {
            for k in 0..self.windows.len() {
                push(
                    format!("{}_count_{}", s.name, wname[k]),
                    format!("{} in {}", capitalize(&s.plural), wlast[k]),
                    "frequency",
                );
            }
            push(
                format!("days_since_last_{}", s.name),
                format!("Days since last {}", s.singular),
                "recency",
            );
            push(
                format!("days_since_first_{}", s.name),
                format!("Days since first {}", s.singular),
                "recency",
            );
        }
        // The numeric fields are the store's: the job's `numeric_fields` or those found.
        for f in num_names {
            let n = sanitize(f);
            for k in 0..self.windows.len() {
                push(
                    format!("{n}_sum_{}", wname[k]),
                    format!("Total {f} in {}", wlast[k]),
                    "monetary",
                );
                push(
                    format!("{n}_mean_{}", wname[k]),
                    format!("Average {f} in {}", wlast[k]),
                    "monetary",
                );
                push(
                    format!("{n}_max_{}", wname[k]),
                    format!("Largest {f} in {}", wlast[k]),
                    "monetary",
                );
            }
        }
        for a in &self.attrs {
            match a {
                AttrFeature::Numeric(j) => {
                    let name = &profiles.attributes[*j].name;
                    push(
                        format!("attr_{}", sanitize(name)),
                        humanize(name),
                        "attribute",
                    );
                }
                AttrFeature::DaysSince(j) => {
                    let name = &profiles.attributes[*j].name;
                    push(
                        format!("days_since_{}", sanitize(name)),
                        format!("Days since {}", name.replace('_', " ")),
                        "attribute",
                    );
                }
                AttrFeature::OneHot(j, c) => {
                    let attr = &profiles.attributes[*j];
                    let AttrValues::Categorical { values, .. } = &attr.values else {
                        continue;
                    };
                    let v = &values[*c as usize];
                    push(
                        format!("attr_{}_{}", sanitize(&attr.name), sanitize(v)),
                        format!("{} is {v}", humanize(&attr.name)),
                        "attribute",
                    );
                }
            }
        }
        if let Some(b) = &self.btyd {
            let what = if b.all_events {
                "active days"
            } else {
                "goal events"
            };
            let window = span_label(b.window_secs);
            push(
                BTYD_FEATURES[0].into(),
                "Chance of still being an active customer (BG/NBD)".into(),
                "model",
            );
            push(
                BTYD_FEATURES[1].into(),
                format!("Expected {what} in the next {window} (BG/NBD)"),
                "model",
            );
            push(
                BTYD_FEATURES[2].into(),
                format!("Chance of a goal event in the next {window} (BG/NBD)"),
                "model",
            );
        }
        out
    }

    /// Whether any BG/NBD feature is kept (so fitting the model per cutoff is worth it).
    pub fn wants_btyd(&self) -> bool {
        self.btyd.is_some()
            && self
                .catalogue
                .features
                .iter()
                .any(|f| BTYD_FEATURES.contains(&f.name.as_str()))
    }

    /// Profile `p`'s BG/NBD summary at `cutoff` from its transaction days in
    /// `[cutoff - lookback, cutoff)`, in days; `None` without a transaction.
    pub fn rfm(
        &self,
        store: &EventStore,
        p: usize,
        cutoff: i64,
    ) -> Option<propensity_model::btyd::Rfm> {
        let b = self.btyd?;
        let r = store.range(p);
        let ts = &store.ts[r.clone()];
        let start = ts.partition_point(|&t| t < cutoff.saturating_sub(self.lookback));
        let end = ts.partition_point(|&t| t < cutoff);
        let mut days = 0u32;
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for (i, &t) in ts.iter().enumerate().take(end).skip(start) {
            if !b.all_events && store.flags[r.start + i] & GOAL_BIT == 0 {
                continue;
            }
            let d = t.div_euclid(MICROS_PER_DAY);
            if d != last {
                days += 1;
                first = first.min(d);
                last = d;
            }
        }
        (days > 0).then(|| propensity_model::btyd::Rfm {
            x: f64::from(days - 1),
            t_x: (last - first) as f64,
            t: (cutoff - first * MICROS_PER_DAY) as f64 / MICROS_PER_DAY as f64,
        })
    }

    /// Computes profile `p`'s features at `cutoff` (microseconds) into `out` (length
    /// [`Self::len`]), from the store's events of `p` in `[cutoff - lookback, cutoff)` only.
    /// `btyd` is the BG/NBD model fitted at this cutoff (see [`Btyd`]).
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        &self,
        store: &EventStore,
        profiles: &ProfileTable,
        p: usize,
        cutoff: i64,
        btyd: Btyd<'_>,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) {
        let r = store.range(p);
        let ts = &store.ts[r.clone()];
        // The only place events are selected: strictly before the cutoff, within the lookback.
        let start = ts.partition_point(|&t| t < cutoff.saturating_sub(self.lookback));
        let end = ts.partition_point(|&t| t < cutoff);
        let ev = EventsView {
            ts: &ts[start..end],
            etype: &store.etype[r.start + start..r.start + end],
            flags: &store.flags[r.start + start..r.start + end],
            nums: &store.nums
                [(r.start + start) * store.num_fields..(r.start + end) * store.num_fields],
        };
        scratch.full.resize(self.full, 0.0);
        let mut full = std::mem::take(&mut scratch.full);
        self.compute_full(&ev, profiles, p, cutoff, scratch, &mut full);
        if let Some(b) = &self.btyd {
            let k = self.full - BTYD_FEATURES.len();
            let values = match (btyd, self.rfm(store, p, cutoff)) {
                (Some(m), Some(c)) => {
                    let w = b.window_secs as f64 / 86_400.0;
                    [m.p_alive(&c), m.expected(&c, w), m.p_any(&c, w)].map(|v| v as f32)
                }
                _ => [f32::NAN; 3],
            };
            full[k..k + 3].copy_from_slice(&values);
        }
        for (o, &k) in out.iter_mut().zip(&self.keep) {
            *o = full[k];
        }
        scratch.full = full;
    }

    fn compute_full(
        &self,
        ev: &EventsView<'_>,
        profiles: &ProfileTable,
        p: usize,
        cutoff: i64,
        s: &mut Scratch,
        out: &mut [f32],
    ) {
        let nb = self.bounds.len();
        let ns = self.slots.len();
        let nn = self.nums;
        s.reset(nb, ns, nn);
        let day = MICROS_PER_DAY as f64;
        let mut b = 0usize;
        let mut prev_day = i64::MIN;
        let n = ev.ts.len();
        for i in (0..n).rev() {
            let age = cutoff - ev.ts[i];
            while b + 1 < nb && age > self.bounds[b] {
                b += 1;
            }
            s.cnt[b] += 1.0;
            let d = ev.ts[i].div_euclid(MICROS_PER_DAY);
            if d != prev_day {
                s.active[b] += 1.0;
                s.days.push(d);
                prev_day = d;
            }
            let mut hit = |slot: usize| {
                s.slot_cnt[slot * nb + b] += 1.0;
                if s.slot_last[slot].is_nan() {
                    s.slot_last[slot] = age as f32;
                }
                s.slot_first[slot] = age as f32;
            };
            if let Some(slot) = self
                .slot_of_type
                .get(ev.etype[i] as usize)
                .copied()
                .flatten()
            {
                hit(slot);
            }
            for &(bit, slot) in &self.flag_slots {
                if ev.flags[i] & bit != 0 {
                    hit(slot);
                }
            }
            for j in 0..nn {
                let v = ev.nums[i * nn + j];
                if !v.is_nan() {
                    let k = j * nb + b;
                    s.sum[k] += f64::from(v);
                    s.nonnull[k] += 1.0;
                    s.max[k] = if s.max[k].is_nan() {
                        v
                    } else {
                        s.max[k].max(v)
                    };
                }
            }
        }
        // Buckets hold events with age in (bound[b-1], bound[b]]: accumulate to "within bound".
        for b in 1..nb {
            s.cnt[b] += s.cnt[b - 1];
            s.active[b] += s.active[b - 1];
            for slot in 0..ns {
                s.slot_cnt[slot * nb + b] += s.slot_cnt[slot * nb + b - 1];
            }
            for j in 0..nn {
                let (k, k0) = (j * nb + b, j * nb + b - 1);
                s.sum[k] += s.sum[k0];
                s.nonnull[k] += s.nonnull[k0];
                if !s.max[k0].is_nan() && (s.max[k].is_nan() || s.max[k0] > s.max[k]) {
                    s.max[k] = s.max[k0];
                }
            }
        }
        let mut o = 0usize;
        let mut put = |v: f32| {
            out[o] = v;
            o += 1;
        };
        let days = |micros: f64| (micros / day) as f32;
        put(if n > 0 {
            days((cutoff - ev.ts[n - 1]) as f64)
        } else {
            f32::NAN
        });
        put(if n > 0 {
            days((cutoff - ev.ts[0]) as f64)
        } else {
            f32::NAN
        });
        for &k in &self.wb {
            put(s.cnt[k] as f32);
        }
        for &k in &self.wb {
            put(s.active[k] as f32);
        }
        for (t, &k) in self.trend.iter().enumerate() {
            let recent = s.cnt[self.wb[k]];
            let before = s.cnt[self.tb2[t]] - recent;
            put(((recent + 1.0) / (before + 1.0)).ln() as f32);
        }
        // Gaps between distinct active days (days are in descending order).
        if s.days.len() >= 2 {
            let gaps = s.days.windows(2).map(|w| (w[0] - w[1]) as f64);
            let (mut sum, mut sq, mut max) = (0.0, 0.0, 0.0f64);
            let m = (s.days.len() - 1) as f64;
            for g in gaps {
                sum += g;
                sq += g * g;
                max = max.max(g);
            }
            let mean = sum / m;
            put(mean as f32);
            put(max as f32);
            put((sq / m - mean * mean).max(0.0).sqrt() as f32);
        } else {
            put(f32::NAN);
            put(f32::NAN);
            put(f32::NAN);
        }
        for slot in 0..ns {
            for &k in &self.wb {
                put(s.slot_cnt[slot * nb + k] as f32);
            }
            let l = s.slot_last[slot];
            let f = s.slot_first[slot];
            put(if l.is_nan() {
                f32::NAN
            } else {
                days(f64::from(l))
            });
            put(if f.is_nan() {
                f32::NAN
            } else {
                days(f64::from(f))
            });
        }
        for j in 0..nn {
            for &k in &self.wb {
                let idx = j * nb + k;
                put(s.sum[idx] as f32);
                put(if s.nonnull[idx] > 0.0 {
                    (s.sum[idx] / s.nonnull[idx]) as f32
                } else {
                    f32::NAN
                });
                put(s.max[idx]);
            }
        }
        for a in &self.attrs {
            match a {
                AttrFeature::Numeric(j) => {
                    let AttrValues::Numeric(v) = &profiles.attributes[*j].values else {
                        continue;
                    };
                    put(v[p]);
                }
                AttrFeature::DaysSince(j) => {
                    let AttrValues::Time(v) = &profiles.attributes[*j].values else {
                        continue;
                    };
                    let t = v[p];
                    put(if t == i64::MIN || t > cutoff {
                        f32::NAN
                    } else {
                        days((cutoff - t) as f64)
                    });
                }
                AttrFeature::OneHot(j, c) => {
                    let AttrValues::Categorical { codes, .. } = &profiles.attributes[*j].values
                    else {
                        continue;
                    };
                    put(f32::from(u8::from(codes[p] == *c)));
                }
            }
        }
        let btyd = if self.btyd.is_some() {
            BTYD_FEATURES.len()
        } else {
            0
        };
        debug_assert_eq!(o + btyd, self.full, "feature layout and catalogue disagree");
    }
}

struct EventsView<'a> {
    ts: &'a [i64],
    etype: &'a [u32],
    flags: &'a [u32],
    nums: &'a [f32],
}

/// Reusable buffers for [`FeatureSpec::compute`] (one per thread).
#[derive(Debug, Default)]
pub struct Scratch {
    cnt: Vec<f64>,
    active: Vec<f64>,
    days: Vec<i64>,
    slot_cnt: Vec<f64>,
    slot_last: Vec<f32>,
    slot_first: Vec<f32>,
    sum: Vec<f64>,
    nonnull: Vec<f64>,
    max: Vec<f32>,
    full: Vec<f32>,
}

impl Scratch {
    fn reset(&mut self, nb: usize, ns: usize, nn: usize) {
        let fill = |v: &mut Vec<f64>, n: usize| {
            v.clear();
            v.resize(n, 0.0);
        };
        fill(&mut self.cnt, nb);
        fill(&mut self.active, nb);
        fill(&mut self.slot_cnt, ns * nb);
        fill(&mut self.sum, nn * nb);
        fill(&mut self.nonnull, nn * nb);
        self.days.clear();
        self.slot_last.clear();
        self.slot_last.resize(ns, f32::NAN);
        self.slot_first.clear();
        self.slot_first.resize(ns, f32::NAN);
        self.max.clear();
        self.max.resize(nn * nb, f32::NAN);
    }
}

/// `commerce.order.priceTotal` → `commerce_order_pricetotal`.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let t = out.trim_matches('_').to_owned();
    if t.is_empty() { "x".into() } else { t }
}

fn span_name(secs: u64) -> String {
    if secs >= propensity_core::Lookback::ALL_SECS {
        return "all".into();
    }
    propensity_core::Span::from_secs(secs).to_string()
}

fn span_label(secs: u64) -> String {
    if secs.is_multiple_of(86_400) {
        let d = secs / 86_400;
        if d == 1 {
            "day".into()
        } else {
            format!("{d} days")
        }
    } else if secs.is_multiple_of(3600) {
        let h = secs / 3600;
        if h == 1 {
            "hour".into()
        } else {
            format!("{h} hours")
        }
    } else {
        format!("{} minutes", secs.div_ceil(60))
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn humanize(name: &str) -> String {
    capitalize(&name.replace(['_', '.'], " "))
}

/// Plural and singular words for an event type; well-known Adobe XDM types read naturally.
fn type_words(t: &str) -> (String, String) {
    const KNOWN: &[(&str, &str, &str)] = &[
        ("commerce.purchases", "purchases", "purchase"),
        (
            "commerce.productListAdds",
            "cart additions",
            "cart addition",
        ),
        (
            "commerce.productListRemovals",
            "cart removals",
            "cart removal",
        ),
        ("commerce.productListOpens", "cart opens", "cart open"),
        ("commerce.productViews", "product views", "product view"),
        ("commerce.checkouts", "checkouts", "checkout"),
        ("web.webpagedetails.pageViews", "page views", "page view"),
        ("web.webinteraction.linkClicks", "link clicks", "link click"),
        ("directMarketing.emailSent", "emails sent", "email sent"),
        ("directMarketing.emailOpened", "email opens", "email open"),
        (
            "directMarketing.emailClicked",
            "email clicks",
            "email click",
        ),
        (
            "directMarketing.emailUnsubscribed",
            "email unsubscribes",
            "email unsubscribe",
        ),
        ("support.ticketOpened", "support tickets", "support ticket"),
        ("application.launch", "app launches", "app launch"),
    ];
    match KNOWN.iter().find(|(k, _, _)| *k == t) {
        Some((_, p, s)) => ((*p).into(), (*s).into()),
        None => (format!("`{t}` events"), format!("`{t}` event")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::Attribute;
    use proptest::prelude::*;

    fn spec_for(store: &EventStore) -> FeatureSpec {
        let cfg = FeatureConfig {
            lookback_secs: 90 * 86_400,
            windows_secs: vec![7 * 86_400, 30 * 86_400],
            top_event_types: 3,
            custom_events: vec!["big".into()],
            exclude: vec![],
            btyd: None,
        };
        FeatureSpec::new(
            &cfg,
            store,
            &ProfileTable {
                include: vec![true],
                exclude: vec![false],
                ..Default::default()
            },
        )
    }

    fn store(events: &[(i64, u32, u32, f32)]) -> EventStore {
        let mut ev = events.to_vec();
        ev.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        EventStore {
            profile_ids: vec!["p".into()],
            offsets: vec![0, ev.len()],
            ts: ev.iter().map(|e| e.0).collect(),
            etype: ev.iter().map(|e| e.1).collect(),
            flags: ev.iter().map(|e| e.2).collect(),
            nums: ev.iter().map(|e| e.3).collect(),
            num_fields: 1,
            num_names: vec!["value".into()],
            type_names: vec!["view".into(), "commerce.purchases".into(), "email".into()],
        }
    }

    fn features(st: &EventStore, spec: &FeatureSpec, cutoff: i64) -> Vec<f32> {
        let profiles = ProfileTable {
            include: vec![true],
            exclude: vec![false],
            ..Default::default()
        };
        let mut out = vec![0.0; spec.len()];
        spec.compute(
            st,
            &profiles,
            0,
            cutoff,
            None,
            &mut Scratch::default(),
            &mut out,
        );
        out
    }

    const DAY: i64 = MICROS_PER_DAY;

    #[test]
    fn btyd_features_summarise_goal_days_before_the_cutoff_only() {
        // Goal events on days 0, 0 (same day), 10 and 30; a view on day 35; a goal event on
        // day 50, after the cutoff at day 40.
        let st = store(&[
            (0, 1, GOAL_BIT, 1.0),
            (3_600_000_000, 1, GOAL_BIT, 2.0),
            (10 * DAY, 1, GOAL_BIT, 1.0),
            (30 * DAY, 1, GOAL_BIT, 1.0),
            (35 * DAY, 0, 0, f32::NAN),
            (50 * DAY, 1, GOAL_BIT, 1.0),
        ]);
        let mut cfg = FeatureConfig {
            lookback_secs: propensity_core::Lookback::ALL_SECS,
            windows_secs: vec![7 * 86_400],
            top_event_types: 3,
            custom_events: vec![],
            exclude: vec![],
            btyd: Some(BtydConfig {
                window_secs: 30 * 86_400,
                all_events: false,
            }),
        };
        let profiles = ProfileTable {
            include: vec![true],
            exclude: vec![false],
            ..Default::default()
        };
        let spec = FeatureSpec::new(&cfg, &st, &profiles);
        assert!(spec.wants_btyd());
        let cutoff = 40 * DAY;
        let c = spec.rfm(&st, 0, cutoff).expect("has goal days");
        // Three distinct goal days: two repeats, the last 30 days after the first.
        assert_eq!((c.x, c.t_x, c.t), (2.0, 30.0, 40.0));
        let m = propensity_model::btyd::BgNbd {
            r: 0.5,
            alpha: 20.0,
            a: 0.8,
            b: 2.5,
            modified: false,
        };
        let mut out = vec![0.0; spec.len()];
        spec.compute(
            &st,
            &profiles,
            0,
            cutoff,
            Some(&m),
            &mut Scratch::default(),
            &mut out,
        );
        let idx = |name: &str| spec.catalogue.index(name).expect(name);
        let at = |name: &str| out[idx(name)];
        assert!((f64::from(at("btyd_p_alive")) - m.p_alive(&c)).abs() < 1e-6);
        assert!((f64::from(at("btyd_expected_goal_events")) - m.expected(&c, 30.0)).abs() < 1e-5);
        assert!((f64::from(at("btyd_p_goal_event")) - m.p_any(&c, 30.0)).abs() < 1e-6);
        let label =
            &spec.catalogue.features[spec.catalogue.index("btyd_p_goal_event").expect("f")].label;
        assert_eq!(label, "Chance of a goal event in the next 30 days (BG/NBD)");
        // Without a fitted model the features are missing; without goal days too.
        spec.compute(
            &st,
            &profiles,
            0,
            cutoff,
            None,
            &mut Scratch::default(),
            &mut out,
        );
        assert!(out[idx("btyd_p_alive")].is_nan());
        assert!(spec.rfm(&st, 0, 0).is_none());
        // `features.exclude` of all three turns the fit off.
        cfg.exclude = BTYD_FEATURES.iter().map(|s| s.to_string()).collect();
        assert!(!FeatureSpec::new(&cfg, &st, &profiles).wants_btyd());
    }

    #[test]
    fn names_are_unique_and_labels_read_well() {
        let st = store(&[
            (0, 0, 0, 1.0),
            (DAY, 1, GOAL_BIT, 5.0),
            (2 * DAY, 2, 2, f32::NAN),
        ]);
        let spec = spec_for(&st);
        let names: std::collections::HashSet<_> =
            spec.catalogue.features.iter().map(|f| &f.name).collect();
        assert_eq!(names.len(), spec.len());
        let f = |n: &str| {
            spec.catalogue
                .features
                .iter()
                .find(|f| f.name == n)
                .map(|f| f.label.clone())
        };
        assert_eq!(
            f("commerce_purchases_count_30d").as_deref(),
            Some("Purchases in the last 30 days")
        );
        assert_eq!(
            f("days_since_last_commerce_purchases").as_deref(),
            Some("Days since last purchase")
        );
        assert_eq!(
            f("big_count_7d").as_deref(),
            Some("Big events in the last 7 days")
        );
        assert_eq!(
            f("value_max_90d").as_deref(),
            Some("Largest value in the last 90 days")
        );
        assert_eq!(
            f("event_count_trend_30d").as_deref(),
            Some("Change in events, last 30 days vs the 30 days before")
        );
    }

    #[test]
    fn an_excluded_attribute_gives_no_feature_and_no_warning() {
        let st = store(&[(0, 0, 0, 1.0)]);
        let categorical = |name: &str| Attribute {
            name: name.into(),
            values: AttrValues::Categorical {
                codes: vec![0],
                values: vec!["active".into(), "cancelled".into()],
            },
        };
        let profiles = ProfileTable {
            attributes: vec![categorical("customer_status"), categorical("plan")],
            include: vec![true],
            exclude: vec![false],
            ..Default::default()
        };
        let mut cfg = FeatureConfig {
            lookback_secs: 90 * 86_400,
            windows_secs: vec![30 * 86_400],
            top_event_types: 3,
            custom_events: vec![],
            exclude: vec![],
            btyd: None,
        };
        let names = |cfg: &FeatureConfig| {
            FeatureSpec::new(cfg, &st, &profiles)
                .catalogue
                .features
                .iter()
                .map(|f| f.name.clone())
                .filter(|n| n.starts_with("attr_"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&cfg),
            [
                "attr_customer_status_active",
                "attr_customer_status_cancelled",
                "attr_plan_active",
                "attr_plan_cancelled"
            ]
        );
        cfg.exclude = vec!["customer_status".into(), "attr_plan_active".into()];
        assert_eq!(names(&cfg), ["attr_plan_cancelled"]);
        let spec = FeatureSpec::new(&cfg, &st, &profiles);
        assert!(
            spec.catalogue.unknown_excludes.is_empty(),
            "{:?}",
            spec.catalogue.unknown_excludes
        );
    }

    #[test]
    fn values_at_a_cutoff() {
        let c = 100 * DAY;
        // Purchases (type 1, goal) 2 and 20 days before the cutoff; a view 40 days before.
        let st = store(&[
            (c - 2 * DAY, 1, GOAL_BIT, 10.0),
            (c - 20 * DAY, 1, GOAL_BIT, 30.0),
            (c - 40 * DAY, 0, 0, f32::NAN),
        ]);
        let spec = spec_for(&st);
        let v = features(&st, &spec, c);
        let get = |n: &str| {
            v[spec
                .catalogue
                .index(n)
                .unwrap_or_else(|| panic!("no feature {n}"))]
        };
        assert_eq!(get("days_since_last_event"), 2.0);
        assert_eq!(get("days_since_first_event"), 40.0);
        assert_eq!(get("event_count_7d"), 1.0);
        assert_eq!(get("event_count_30d"), 2.0);
        assert_eq!(get("event_count_90d"), 3.0);
        assert_eq!(get("goal_event_count_30d"), 2.0);
        assert_eq!(get("value_sum_30d"), 40.0);
        assert_eq!(get("value_mean_30d"), 20.0);
        assert_eq!(get("value_max_7d"), 10.0);
        assert!(get("value_mean_7d") == 10.0);
        assert_eq!(get("active_days_90d"), 3.0);
        assert_eq!(get("gap_days_max"), 20.0);
        assert_eq!(get("gap_days_mean"), 19.0);
        // 2 events in the last 30 days, 1 (40 days ago) in the 30 before: ln(3/2).
        assert!((get("event_count_trend_30d") - 1.5f32.ln()).abs() < 1e-6);
        assert!(get("days_since_last_big").is_nan());
    }

    #[test]
    fn an_event_exactly_at_the_cutoff_is_not_a_feature() {
        let c = 100 * DAY;
        let st = store(&[(c, 1, GOAL_BIT, 99.0), (c - DAY, 0, 0, f32::NAN)]);
        let spec = spec_for(&st);
        let v = features(&st, &spec, c);
        assert_eq!(v[spec.catalogue.index("event_count_90d").unwrap_or(0)], 1.0);
        assert!(
            v[spec
                .catalogue
                .index("days_since_last_goal_event")
                .unwrap_or(0)]
            .is_nan()
        );
    }

    proptest! {
        /// Leakage guard: appending any events at or after the cutoff leaves that cutoff's
        /// features bit-for-bit unchanged.
        #[test]
        fn future_events_never_change_features(
            past in prop::collection::vec((1i64..200 * DAY, 0u32..3, 0u32..4, prop::option::of(0f32..500.0)), 0..40),
            future in prop::collection::vec((0i64..200 * DAY, 0u32..3, 0u32..4, prop::option::of(0f32..500.0)), 1..40),
        ) {
            let c = 300 * DAY;
            let conv = |v: &[(i64, u32, u32, Option<f32>)], sign: i64| -> Vec<(i64, u32, u32, f32)> {
                v.iter().map(|(d, t, f, x)| (c + sign * d, *t, *f, x.unwrap_or(f32::NAN))).collect()
            };
            let before = store(&conv(&past, -1));
            let mut all = conv(&past, -1);
            all.extend(conv(&future, 1));
            let after = store(&all);
            // Same catalogue for both (types are fixed), so rows are comparable.
            let spec = spec_for(&before);
            let a = features(&before, &spec, c);
            let b = features(&after, &spec, c);
            prop_assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
    }
}
