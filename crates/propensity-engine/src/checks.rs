//! The data-check report: what the sources held, what was set aside and why, whether the
//! history covers what the job needs, and whether there is enough to train on. Written as
//! JSON; `propensity dry-run` prints it for people.

use serde::Serialize;

use crate::dataset::{CutoffCounts, CutoffPlan, LabelRule, Labeller, label_counts};
use crate::events::{EventStore, MICROS_PER_DAY, ScanCounts};
use crate::profiles::{ProfileCounts, ProfileTable};
use crate::rfc3339;

/// A problem (the run cannot go on) or a warning (it can, but look).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventsSection {
    pub source: String,
    pub format: String,
    pub files: usize,
    /// Zero-byte files found and left out.
    pub empty_files: Vec<String>,
    #[serde(flatten)]
    pub counts: ScanCounts,
    /// Invalid rows (null/unparseable id, time or type; future events) over rows read.
    pub invalid_fraction: f64,
    pub max_invalid_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub first_event: Option<String>,
    pub last_event: Option<String>,
    /// Earliest event the job reads: oldest cutoff − lookback (or active_within if longer).
    pub needed_from: String,
    pub needed_until: String,
    pub covered_days: f64,
    pub needed_days: f64,
    /// The data reaches back far enough for the oldest cutoff's full lookback (always, with
    /// the lookback `all`). The eligibility span is not checked: a history that starts with
    /// the business is no shortcoming, and fewer eligible profiles at old cutoffs show in
    /// their counts.
    pub covers_lookback: bool,
    /// Where the oldest cutoff's finite lookback begins (RFC 3339).
    pub lookback_from: Option<String>,
    /// Days between the last event and the as-of time (a late export shows here).
    pub days_without_events_before_as_of: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CutoffRow {
    pub cutoff: String,
    #[serde(flatten)]
    pub counts: CutoffCounts,
}

/// A change to the job and what it would give.
#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    /// As it would be written in the job file: `goal.window = "60d"`.
    pub change: String,
    pub positives: u64,
    pub negatives: u64,
    pub sufficient: bool,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sufficiency {
    pub positives: u64,
    pub negatives: u64,
    pub min_positives: u32,
    pub min_negatives: u32,
    pub sufficient: bool,
    /// Set when insufficient: the job falls back to a simple ranking model.
    pub verdict: String,
    pub suggestions: Vec<Suggestion>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataCheckReport {
    pub job: String,
    pub as_of: String,
    pub checked_at: String,
    pub events: EventsSection,
    pub profiles: Option<ProfileCounts>,
    pub history: History,
    /// Training cutoffs (newest first), then the scoring cutoff (positives and negatives 0).
    pub cutoffs: Vec<CutoffRow>,
    pub scoring_eligible: u64,
    pub sufficiency: Option<Sufficiency>,
    pub features: usize,
    pub problems: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub passed: bool,
}

fn days(us: i64) -> f64 {
    us as f64 / MICROS_PER_DAY as f64
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// Checks the scan against the job's thresholds; returns problems and warnings.
pub fn evaluate(
    events: &EventsSection,
    profiles: Option<&ProfileCounts>,
    history: &History,
) -> (Vec<Finding>, Vec<Finding>) {
    let c = &events.counts;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let max = events.max_invalid_fraction;
    if !events.empty_files.is_empty() {
        warnings.push(Finding {
            code: "empty-files",
            message: format!(
                "{} empty (zero-byte) file(s) in `{}` were left out, e.g. {}",
                events.empty_files.len(),
                events.source,
                events.empty_files[0]
            ),
            hint: "an export still being written or a failed upload; remove them, or check the exporter".into(),
        });
    }
    if c.rows_read == 0 {
        problems.push(Finding {
            code: "no-events",
            message: format!("`{}` holds no events", events.source),
            hint: "check source.events.uri; the files are there but empty".into(),
        });
    }
    if events.invalid_fraction > max {
        let mut causes = Vec::new();
        let mut hints = Vec::new();
        if c.null_profile_id > 0 {
            causes.push(format!("{} without a profile id", c.null_profile_id));
            hints.push(
                "map source.events.columns.profile_id to the column that always holds the id",
            );
        }
        if c.unusable_profile_id > 0 {
            causes.push(format!(
                "{} with an unusable profile id (e.g. {})",
                c.unusable_profile_id,
                c.unusable_profile_id_examples.join(", ")
            ));
            hints.push("profile ids must be at most 1024 bytes without control characters");
        }
        if c.null_timestamp > 0 {
            causes.push(format!("{} without a timestamp", c.null_timestamp));
            hints.push("check source.events.columns.timestamp");
        }
        if c.unparseable_timestamp > 0 {
            causes.push(format!(
                "{} with an unparseable timestamp (e.g. {})",
                c.unparseable_timestamp,
                c.unparseable_timestamp_examples
                    .iter()
                    .map(|e| format!("{e:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            hints.push(
                "write RFC 3339 times (2026-05-01T12:00:00Z) or set source.events.timestamp_format",
            );
        }
        if c.null_event_type > 0 {
            causes.push(format!("{} without an event type", c.null_event_type));
            hints.push("check source.events.columns.event_type");
        }
        if c.future_events > 0 {
            causes.push(format!("{} in the future", c.future_events));
            hints.push("check the clock and time zone of the exporter: times must be UTC or carry an offset");
        }
        problems.push(Finding {
            code: "invalid-events",
            message: format!(
                "{} of {} events in `{}` are invalid ({}), above the limit of {}: {}",
                c.invalid(),
                c.rows_read,
                events.source,
                pct(events.invalid_fraction),
                pct(max),
                causes.join("; ")
            ),
            hint: format!(
                "{}; or raise source.events.max_invalid_fraction if these rows may be ignored",
                hints.join("; ")
            ),
        });
    } else if c.invalid() > 0 {
        warnings.push(Finding {
            code: "invalid-events",
            message: format!(
                "{} of {} events set aside as invalid ({})",
                c.invalid(),
                c.rows_read,
                pct(events.invalid_fraction)
            ),
            hint: "see the counts per reason in this report".into(),
        });
    }
    if c.unusable_profile_id > 0 && events.invalid_fraction <= max {
        warnings.push(Finding {
            code: "unusable-profile-ids",
            message: format!(
                "{} events have a profile id no sink can store (e.g. {}): set aside, never scored or published",
                c.unusable_profile_id,
                c.unusable_profile_id_examples.join(", ")
            ),
            hint: "profile ids must be at most 1024 bytes without control characters; check source.events.columns.profile_id".into(),
        });
    }
    for u in &c.unconvertible_values {
        if u.unconvertible == 0 {
            continue;
        }
        let frac = u.unconvertible as f64 / u.present.max(1) as f64;
        let f = Finding {
            code: "unconvertible-values",
            message: format!(
                "field `{}` in `{}`: {} of {} values are not numbers ({})",
                u.field, events.source, u.unconvertible, u.present, pct(frac)
            ),
            hint: "the field is used as a number (numeric_fields or a numeric condition): fix the data, or use another field".into(),
        };
        if frac > max {
            problems.push(f)
        } else {
            warnings.push(f)
        }
    }
    if c.duplicate_events > 0 {
        warnings.push(Finding {
            code: "duplicate-events",
            message: format!(
                "{} events identical to another of the same profile in every field the job reads (time, type, numeric and plugin fields) were removed (source.events.dedupe = true)",
                c.duplicate_events
            ),
            hint: "duplicates usually come from overlapping exports; they were counted once. Same-day orders in a log that stores only dates look identical too: set `dedupe = false` in [source.events] if each row is an event".into(),
        });
    }
    if c.rows_read > 0 && c.events_kept == 0 {
        problems.push(Finding {
            code: "no-events-in-range",
            message: format!(
                "no usable events between {} and {} (the as-of time)",
                history.needed_from, history.needed_until
            ),
            hint: format!(
                "the data covers {} to {}: pass --as-of within it",
                history.first_event.as_deref().unwrap_or("?"),
                history.last_event.as_deref().unwrap_or("?")
            ),
        });
    }
    if !history.covers_lookback && c.events_kept > 0 {
        warnings.push(Finding {
            code: "short-history",
            message: format!(
                "the events start at {}, after {} where the oldest cutoff's features.lookback begins ({:.0} of {:.0} days covered)",
                history.first_event.as_deref().unwrap_or("?"),
                history.lookback_from.as_deref().unwrap_or("?"),
                history.covered_days,
                history.needed_days
            ),
            hint: "older cutoffs see less history than newer ones; use fewer snapshots, a shorter features.lookback or the lookback `all`, or load older data".into(),
        });
    }
    if let Some(gap) = history.days_without_events_before_as_of
        && gap > 2.0
    {
        warnings.push(Finding {
            code: "stale-data",
            message: format!("the last event is {gap:.1} days before the as-of time {}", history.needed_until),
            hint: "labels of the latest cutoff miss the events not exported yet: pass --as-of at the end of the data, or check the export".into(),
        });
    }
    if let Some(p) = profiles
        && p.rows_read > 0
        && p.without_row > 0
    {
        warnings.push(Finding {
            code: "profiles-without-attributes",
            message: format!(
                "{} profiles with events have no row in `{}`",
                p.without_row,
                p.source.as_deref().unwrap_or("the profiles table")
            ),
            hint: "their attributes are treated as missing".into(),
        });
    }
    (problems, warnings)
}

pub fn history(
    counts: &ScanCounts,
    first: Option<i64>,
    last: Option<i64>,
    plan: &CutoffPlan,
) -> History {
    // With the lookback `all` no span of history is required: what exists is read. Only the
    // eligibility span of the oldest cutoff remains.
    let finite_lookback = plan.lookback < propensity_core::Lookback::ALL_SECS as i64 * 1_000_000;
    let needed_from = if finite_lookback {
        plan.needed_from()
    } else {
        plan.oldest().saturating_sub(plan.active_within)
    };
    History {
        first_event: counts.first_event.clone(),
        last_event: counts.last_event.clone(),
        needed_from: rfc3339(needed_from),
        needed_until: rfc3339(plan.as_of),
        covered_days: match (first, last) {
            (Some(f), Some(l)) => days(l.min(plan.as_of) - f.max(needed_from)).max(0.0),
            _ => 0.0,
        },
        needed_days: days(plan.as_of - needed_from),
        covers_lookback: !finite_lookback
            || first.is_some_and(|f| f <= plan.oldest().saturating_sub(plan.lookback)),
        lookback_from: finite_lookback
            .then(|| rfc3339(plan.oldest().saturating_sub(plan.lookback))),
        days_without_events_before_as_of: last.map(|l| days(plan.as_of - l).max(0.0)),
    }
}

/// Positives and negatives over the stacked training cutoffs, against the job's minimums,
/// with concrete changes that would help when they fall short.
#[allow(clippy::too_many_arguments)]
pub fn sufficiency(
    store: &EventStore,
    profiles: &ProfileTable,
    plan: &CutoffPlan,
    rule: Labeller<'_>,
    per_cutoff: &[CutoffCounts],
    min_positives: u32,
    min_negatives: u32,
    first_event: Option<i64>,
    kept_from: i64,
) -> Sufficiency {
    let pos: u64 = per_cutoff.iter().map(|c| c.positives).sum();
    let neg: u64 = per_cutoff.iter().map(|c| c.negatives).sum();
    let ok = |p: u64, n: u64| p >= u64::from(min_positives) && n >= u64::from(min_negatives);
    let sufficient = ok(pos, neg);
    let mut suggestions = Vec::new();
    // A plugin labelled the job's own cutoffs and window only: other plans are not tried.
    if let (false, Labeller::Rule(rule)) = (sufficient, rule) {
        let earliest = first_event.unwrap_or(plan.as_of).max(kept_from);
        let try_plan = |window: i64,
                        snapshots: usize,
                        active_within: i64,
                        rule: LabelRule|
         -> Option<(u64, u64)> {
            let p = CutoffPlan::new(
                plan.as_of,
                window,
                plan.stride,
                snapshots as u32,
                plan.lookback,
                active_within,
            );
            // Only what the data can support: eligibility at the oldest cutoff needs events.
            if p.oldest().saturating_sub(active_within) < earliest || p.oldest() <= earliest {
                return None;
            }
            let counts = label_counts(
                store,
                profiles,
                &p.training,
                window,
                active_within,
                Labeller::Rule(rule),
            );
            Some((
                counts.iter().map(|c| c.positives).sum(),
                counts.iter().map(|c| c.negatives).sum(),
            ))
        };
        let k = plan.training.len();
        let span =
            |us: i64| propensity_core::Span::from_secs((us / 1_000_000).max(1) as u64).to_string();
        let mut add = |change: String, r: Option<(u64, u64)>, note: &str| {
            if let Some((p, n)) = r {
                suggestions.push(Suggestion {
                    change,
                    positives: p,
                    negatives: n,
                    sufficient: ok(p, n),
                    note: note.into(),
                });
            }
        };
        if k < 52 {
            let k2 = (k * 2).min(52);
            add(
                format!("model.snapshots = {k2}"),
                try_plan(plan.window, k2, plan.active_within, rule),
                "more training cutoffs from older history",
            );
        }
        add(
            format!("goal.window = \"{}\"", span(plan.window * 2)),
            try_plan(plan.window * 2, k, plan.active_within, rule),
            "a longer outcome window: more profiles reach the goal",
        );
        if plan.window >= 2 * MICROS_PER_DAY {
            add(
                format!("goal.window = \"{}\"", span(plan.window / 2)),
                try_plan(plan.window / 2, k, plan.active_within, rule),
                "a shorter outcome window: fewer profiles reach the goal per cutoff, but the default stride (a third of the window) gives more cutoffs",
            );
        }
        add(
            format!(
                "eligibility.active_within = \"{}\"",
                span(plan.active_within * 2)
            ),
            try_plan(plan.window, k, plan.active_within * 2, rule),
            "a wider eligibility: more profiles per cutoff",
        );
        if rule.min_count > 1 {
            let r1 = LabelRule {
                min_count: 1,
                ..rule
            };
            add(
                "goal.min_count = 1".into(),
                try_plan(plan.window, k, plan.active_within, r1),
                "one matching event is enough",
            );
        }
        if k < 52 {
            let k2 = (k * 2).min(52);
            add(
                format!(
                    "model.snapshots = {k2} and goal.window = \"{}\"",
                    span(plan.window * 2)
                ),
                try_plan(plan.window * 2, k2, plan.active_within, rule),
                "both",
            );
        }
        // Only changes that help the scarcer class; those that reach the minimums first.
        let score = |p: u64, n: u64| {
            (p as f64 / f64::from(min_positives.max(1)))
                .min(n as f64 / f64::from(min_negatives.max(1)))
        };
        let now = score(pos, neg);
        suggestions.retain(|s| score(s.positives, s.negatives) > now);
        suggestions.sort_by(|a, b| {
            b.sufficient
                .cmp(&a.sufficient)
                .then(score(b.positives, b.negatives).total_cmp(&score(a.positives, a.negatives)))
        });
    }
    let verdict = if sufficient {
        format!(
            "sufficient: {pos} positives and {neg} negatives (minimums {min_positives} and {min_negatives})"
        )
    } else {
        let mut short = Vec::new();
        if pos < u64::from(min_positives) {
            short.push(format!("{pos} positives (minimum {min_positives})"));
        }
        if neg < u64::from(min_negatives) {
            short.push(format!("{neg} negatives (minimum {min_negatives})"));
        }
        format!(
            "insufficient: {}; a run would fall back to a simple ranking model and mark scores confidence = low",
            short.join(" and ")
        )
    };
    Sufficiency {
        positives: pos,
        negatives: neg,
        min_positives,
        min_negatives,
        sufficient,
        verdict,
        suggestions,
    }
}

/// Share of profiles above which eligibility leaving them out is worth a warning.
pub const DROPPED_SHARE: f64 = 1.0 / 3.0;
/// Share of eligible profiles above which a lookback that blanks their features warns.
pub const BLANKED_SHARE: f64 = 0.10;

/// Who the settings leave out at the as-of time: profiles with history that
/// `eligibility.active_within` does not score, and eligible profiles whose features are blank
/// because `features.lookback` is shorter than the eligibility span. Each is a warning with
/// counts and a hint naming the key to change.
pub fn coverage(
    store: &EventStore,
    profiles: &ProfileTable,
    plan: &CutoffPlan,
    first_event: Option<i64>,
) -> Vec<Finding> {
    let c = plan.as_of;
    let (mut with_history, mut inactive, mut eligible, mut blank) = (0u64, 0u64, 0u64, 0u64);
    for p in 0..store.profiles() {
        let ts = &store.ts[store.range(p)];
        let i = ts.partition_point(|&t| t < c);
        if i == 0 || !profiles.include[p] || profiles.exclude[p] {
            continue;
        }
        with_history += 1;
        let last = ts[i - 1];
        if last < c.saturating_sub(plan.active_within) {
            inactive += 1;
            continue;
        }
        eligible += 1;
        if last < c.saturating_sub(plan.lookback) {
            blank += 1;
        }
    }
    let span = |us: i64| propensity_core::Span::from_secs((us / 1_000_000).max(1) as u64);
    let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
    let mut out = Vec::new();
    if with_history > 0 && inactive as f64 >= DROPPED_SHARE * with_history as f64 {
        let all = first_event.map(|f| span(c - f + MICROS_PER_DAY - 1).to_string());
        out.push(Finding {
            code: "eligibility-leaves-out-profiles",
            message: format!(
                "eligibility.active_within = \"{}\" scores {} of the {} profiles with events before the as-of time: {} ({:.0} %) have none in the {} before it and get no score",
                span(plan.active_within),
                eligible,
                with_history,
                inactive,
                pct(inactive, with_history),
                span(plan.active_within)
            ),
            hint: match all {
                Some(a) => format!("to score lapsed customers too (a churn or win-back job usually wants them), raise eligibility.active_within, e.g. to \"{a}\" (all the history read)"),
                None => "raise eligibility.active_within to score lapsed customers too".into(),
            },
        });
    }
    if eligible > 0 && blank as f64 >= BLANKED_SHARE * eligible as f64 {
        out.push(Finding {
            code: "lookback-blanks-profiles",
            message: format!(
                "features.lookback = \"{}\" is shorter than eligibility.active_within = \"{}\": {} of {} eligible profiles ({:.0} %) have no event within the lookback, so their event features are blank",
                span(plan.lookback),
                span(plan.active_within),
                blank,
                eligible,
                pct(blank, eligible)
            ),
            hint: format!(
                "set features.lookback to at least \"{}\", or remove it: the default (\"all\") reads all history",
                span(plan.active_within)
            ),
        });
    }
    out
}
