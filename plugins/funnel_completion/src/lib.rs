//! Goal plugin `funnel_completion`: the profile goes through a funnel of event types, in
//! order, fast enough, inside the outcome window.
//!
//! The label is `true` when the profile's events in the window `[start, end)` contain the
//! `steps` in their order (other events may come between them, and a step's event may share
//! its timestamp with the previous step's) and the last step comes at most `within` after the
//! first. Every step's event must be in the window; the goal needs no history before it.
//!
//! | param    | type                      | default  | meaning                                         |
//! |----------|---------------------------|----------|-------------------------------------------------|
//! | `steps`  | list of ≥ 2 event types   | required | the funnel's steps, in order                    |
//! | `within` | duration                  | required | longest time from the first step to the last    |
//!
//! ```toml
//! [goal]
//! type = "plugin"
//! plugin = "funnel_completion"
//! window = "30d"
//! params = { steps = ["commerce.productViews", "commerce.productListAdds", "commerce.checkouts", "commerce.purchases"], within = "1d" }
//! ```
//!
//! The scan is linear in events × steps: for each step it keeps the latest start time of a
//! partial funnel that has reached that step (a later start can only help to finish in time).

#![warn(missing_docs)]

use propensity_plugin::{Goal, Metadata, ParamKind, ParamSpec, Params, ProfileEvents, Window};

/// The goal type's name, as a job writes it in `plugin = "…"`.
pub const NAME: &str = "funnel_completion";

/// The `steps`, in order, with the last one at most `within` after the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelCompletion {
    steps: Vec<String>,
    within_micros: i64,
}

impl FunnelCompletion {
    /// The funnel's steps, in order.
    pub fn steps(&self) -> &[String] {
        &self.steps
    }

    /// The longest time from the first step to the last, microseconds.
    pub fn within_micros(&self) -> i64 {
        self.within_micros
    }

    /// The (first step, last step) times of a completed funnel in the window: the first one
    /// completed, with the latest possible start.
    pub fn completion(&self, profile: &ProfileEvents<'_>) -> Option<(i64, i64)> {
        let last = self.steps.len() - 1;
        // reached[j]: the latest start time of a partial funnel that has reached step j.
        let mut reached: Vec<Option<i64>> = vec![None; self.steps.len()];
        for i in 0..profile.len() {
            if !profile.in_window(i) {
                continue;
            }
            let event_type = profile.event_type(i);
            let t = profile.timestamp(i);
            // Backwards, so that one event fills at most one step of a funnel (steps may
            // repeat an event type).
            for j in (0..=last).rev() {
                if self.steps[j] != event_type {
                    continue;
                }
                let start = if j == 0 { Some(t) } else { reached[j - 1] };
                let Some(start) = start else { continue };
                if j == last && t - start <= self.within_micros {
                    return Some((start, t));
                }
                reached[j] = Some(reached[j].map_or(start, |s| s.max(start)));
            }
        }
        None
    }
}

impl Goal for FunnelCompletion {
    fn metadata() -> Metadata {
        Metadata::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "The funnel's `steps` in order in the window, the last at most `within` after the first",
        )
        .param(
            ParamSpec::new(
                "steps",
                ParamKind::StringList,
                "the funnel's event types, in order (at least 2)",
            )
            .required(),
        )
        .param(
            ParamSpec::new(
                "within",
                ParamKind::Duration,
                "longest time from the first step to the last",
            )
            .required(),
        )
    }

    fn new(params: &Params) -> Result<Self, String> {
        let steps = params
            .string_list("steps")?
            .ok_or("params.steps: missing; it is required")?;
        if steps.len() < 2 {
            return Err(format!(
                "params.steps: a funnel needs at least 2 steps, got {}",
                steps.len()
            ));
        }
        if let Some(i) = steps.iter().position(|s| s.trim().is_empty()) {
            return Err(format!("params.steps: step {} is empty", i + 1));
        }
        let within_micros = params
            .duration_micros("within")?
            .ok_or("params.within: missing; it is required")?;
        Ok(Self {
            steps,
            within_micros,
        })
    }

    fn label(&self, profile: &ProfileEvents<'_>, _window: Window) -> Result<bool, String> {
        Ok(self.completion(profile).is_some())
    }
}

propensity_plugin::export_goal!(FunnelCompletion);

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_plugin::testing::{BatchBuilder, positives};
    use propensity_plugin::{Batch, build};

    const MIN: i64 = 60_000_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    const W: Window = Window {
        start: 100 * DAY,
        end: 130 * DAY,
    };
    const VIEW: &str = "commerce.productViews";
    const ADD: &str = "commerce.productListAdds";
    const BUY: &str = "commerce.purchases";
    const PAGE: &str = "web.webpagedetails.pageViews";

    fn goal(json: &str) -> FunnelCompletion {
        build::<FunnelCompletion>(json.as_bytes()).expect("valid params")
    }

    /// view → add → buy within 1 hour.
    fn three_steps() -> FunnelCompletion {
        goal(&format!(
            r#"{{"steps": ["{VIEW}", "{ADD}", "{BUY}"], "within": "1h"}}"#
        ))
    }

    /// One profile per entry: events as (minutes after the window's start, type).
    fn batch(profiles: &[(&str, &[(i64, &str)])]) -> Batch {
        let mut b = BatchBuilder::new(W);
        for (id, events) in profiles {
            b = b.profile(id);
            for &(at, ty) in *events {
                b = b.event(W.start + at * MIN, ty);
            }
        }
        b.build()
    }

    #[test]
    fn steps_in_order_within_the_limit() {
        let b = batch(&[
            ("direct", &[(0, VIEW), (10, ADD), (20, BUY)]),
            // other events in between do not matter
            (
                "noisy",
                &[
                    (0, PAGE),
                    (1, VIEW),
                    (2, PAGE),
                    (3, ADD),
                    (4, VIEW),
                    (5, BUY),
                ],
            ),
            // exactly `within` from first to last step
            ("exactly", &[(0, VIEW), (30, ADD), (60, BUY)]),
            // the same timestamp for every step
            ("same-time", &[(5, VIEW), (5, ADD), (5, BUY)]),
            ("none", &[]),
        ]);
        assert_eq!(
            positives(&three_steps(), &b),
            ["direct", "noisy", "exactly", "same-time"]
        );
    }

    #[test]
    fn out_of_order_missing_or_too_slow_funnels_do_not_count() {
        let b = batch(&[
            ("out-of-order", &[(0, ADD), (10, VIEW), (20, BUY)]),
            ("missing-step", &[(0, VIEW), (20, BUY)]),
            ("too-slow", &[(0, VIEW), (30, ADD), (61, BUY)]),
            ("reversed", &[(0, BUY), (10, ADD), (20, VIEW)]),
        ]);
        assert!(positives(&three_steps(), &b).is_empty());
    }

    #[test]
    fn the_latest_start_is_kept() {
        let b = batch(&[
            // an early view starts a slow funnel; a later view makes it fast enough
            ("restart", &[(0, VIEW), (100, VIEW), (110, ADD), (120, BUY)]),
            // a later view after the add does not help that add
            (
                "late-view",
                &[(0, VIEW), (10, ADD), (100, VIEW), (120, BUY)],
            ),
            // the add of an earlier start, the view restarted later, then a second add
            (
                "second-add",
                &[(0, VIEW), (10, ADD), (100, VIEW), (110, ADD), (150, BUY)],
            ),
        ]);
        assert_eq!(positives(&three_steps(), &b), ["restart", "second-add"]);
        let g = three_steps();
        assert_eq!(
            g.completion(&b.profile(2)),
            Some((W.start + 100 * MIN, W.start + 150 * MIN))
        );
    }

    #[test]
    fn a_repeated_step_needs_two_events() {
        let g = goal(&format!(
            r#"{{"steps": ["{VIEW}", "{VIEW}", "{BUY}"], "within": "1d"}}"#
        ));
        let b = batch(&[
            ("once", &[(0, VIEW), (10, BUY)]),
            ("twice", &[(0, VIEW), (5, VIEW), (10, BUY)]),
        ]);
        assert_eq!(positives(&g, &b), ["twice"]);
    }

    #[test]
    fn only_events_in_the_half_open_window_count() {
        let g = goal(&format!(
            r#"{{"steps": ["{VIEW}", "{BUY}"], "within": "2d"}}"#
        ));
        let b = BatchBuilder::new(W)
            // the first step before the window (the host does not send it; ignored anyway)
            .profile("starts-before")
            .event(W.start - MIN, VIEW)
            .event(W.start + MIN, BUY)
            // the first step at the window's start
            .profile("at-start")
            .event(W.start, VIEW)
            .event(W.start + MIN, BUY)
            // the last step at the last microsecond of the window
            .profile("at-end")
            .event(W.end - DAY, VIEW)
            .event(W.end - 1, BUY)
            // the last step at the window's end: outside
            .profile("ends-after")
            .event(W.end - DAY, VIEW)
            .event(W.end, BUY)
            .build();
        assert_eq!(positives(&g, &b), ["at-start", "at-end"]);
    }

    #[test]
    fn params_are_read_and_bad_ones_refused() {
        let g = goal(r#"{"steps": ["a", "b"], "within": "90m"}"#);
        assert_eq!(g.steps(), ["a", "b"]);
        assert_eq!(g.within_micros(), 90 * MIN);
        assert_eq!(g.lookback_micros(), 0);
        assert!(g.fields().is_empty());
        assert_eq!(FunnelCompletion::metadata().name, "funnel_completion");

        let err = |json: &str| build::<FunnelCompletion>(json.as_bytes()).expect_err(json);
        let e = err(r#"{"steps": ["a"], "within": "1d"}"#);
        assert_eq!(e, "params.steps: a funnel needs at least 2 steps, got 1");
        let e = err(r#"{"steps": [], "within": "1d"}"#);
        assert_eq!(e, "params.steps: a funnel needs at least 2 steps, got 0");
        let e = err(r#"{"steps": ["a", " "], "within": "1d"}"#);
        assert_eq!(e, "params.steps: step 2 is empty");
        let e = err(r#"{"within": "1d"}"#);
        assert!(e.starts_with("params.steps: missing"), "{e}");
        let e = err(r#"{"steps": ["a", "b"]}"#);
        assert!(e.starts_with("params.within: missing"), "{e}");
        let e = err(r#"{"steps": ["a", "b"], "within": "1 day"}"#);
        assert!(e.starts_with("params.within: expected a duration"), "{e}");
        let e = err(r#"{"steps": ["a", 2], "within": "1d"}"#);
        assert!(
            e.starts_with("params.steps: expected a list of strings"),
            "{e}"
        );
    }
}
