//! Goal plugin `spend_threshold`: the profile spends at least `min_total` in the outcome
//! window.
//!
//! The label is `true` when the sum of the non-null values of `value_field` over the
//! profile's events in the window `[start, end)` is at least `min_total`. With `event_types`,
//! only events of those types count; without it, every event that has a value in the field
//! does. Negative values (refunds) lower the sum; values that are not numbers (NaN) are
//! skipped. The goal needs no history before the window.
//!
//! | param         | type            | default                       | meaning                                       |
//! |---------------|-----------------|-------------------------------|-----------------------------------------------|
//! | `value_field` | string          | `"commerce.order.priceTotal"` | event field with the amount (read as a number) |
//! | `min_total`   | number, > 0     | required                      | total needed for a positive label             |
//! | `event_types` | list of strings | none: every event with a value | only these event types count                 |
//!
//! ```toml
//! [goal]
//! type = "plugin"
//! plugin = "spend_threshold"
//! window = "30d"
//! params = { min_total = 250.0, event_types = ["commerce.purchases"] }
//! ```

#![warn(missing_docs)]

use propensity_plugin::{
    FieldRequest, Goal, Metadata, ParamKind, ParamSpec, Params, ProfileEvents, Window,
};

/// The goal type's name, as a job writes it in `plugin = "…"`.
pub const NAME: &str = "spend_threshold";
/// `value_field` when the job leaves it out.
pub const DEFAULT_VALUE_FIELD: &str = "commerce.order.priceTotal";

/// The sum of `value_field` over the window's events reaches `min_total`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendThreshold {
    value_field: String,
    min_total: f64,
    event_types: Option<Vec<String>>,
}

impl SpendThreshold {
    /// The field with the amount.
    pub fn value_field(&self) -> &str {
        &self.value_field
    }

    /// The total needed for a positive label.
    pub fn min_total(&self) -> f64 {
        self.min_total
    }

    /// The event types that count (`None`: every event with a value).
    pub fn event_types(&self) -> Option<&[String]> {
        self.event_types.as_deref()
    }

    /// The profile's total in the window.
    pub fn total(&self, profile: &ProfileEvents<'_>) -> f64 {
        let mut total = 0.0;
        for i in 0..profile.len() {
            if !profile.in_window(i) {
                continue;
            }
            if let Some(types) = &self.event_types {
                let event_type = profile.event_type(i);
                if !types.iter().any(|t| t == event_type) {
                    continue;
                }
            }
            match profile.number(&self.value_field, i) {
                Some(v) if !v.is_nan() => total += v,
                _ => {}
            }
        }
        total
    }
}

impl Goal for SpendThreshold {
    fn metadata() -> Metadata {
        Metadata::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "The sum of `value_field` over the window's events is at least `min_total`",
        )
        .param(
            ParamSpec::new(
                "value_field",
                ParamKind::String,
                "event field with the amount, read as a number",
            )
            .default_value(DEFAULT_VALUE_FIELD),
        )
        .param(
            ParamSpec::new(
                "min_total",
                ParamKind::Number,
                "total in the window needed for a positive label (above 0)",
            )
            .required(),
        )
        .param(ParamSpec::new(
            "event_types",
            ParamKind::StringList,
            "only events of these types count (default: every event with a value in the field)",
        ))
    }

    fn new(params: &Params) -> Result<Self, String> {
        let value_field = params
            .string("value_field")?
            .unwrap_or_else(|| DEFAULT_VALUE_FIELD.to_owned());
        if value_field.trim().is_empty() {
            return Err(format!(
                "params.value_field: must name a field, e.g. \"{DEFAULT_VALUE_FIELD}\""
            ));
        }
        let min_total = params
            .number("min_total")?
            .ok_or("params.min_total: missing; it is required")?;
        if !(min_total.is_finite() && min_total > 0.0) {
            return Err(format!(
                "params.min_total: must be greater than 0, got {min_total}"
            ));
        }
        let event_types = params.string_list("event_types")?;
        if let Some(types) = &event_types {
            if types.is_empty() {
                return Err(
                    "params.event_types: must name at least one event type (leave it \
                            out to count every event with a value)"
                        .into(),
                );
            }
            if types.iter().any(|t| t.trim().is_empty()) {
                return Err("params.event_types: an event type is empty".into());
            }
        }
        Ok(Self {
            value_field,
            min_total,
            event_types,
        })
    }

    fn fields(&self) -> Vec<FieldRequest> {
        vec![FieldRequest::number(&self.value_field)]
    }

    fn label(&self, profile: &ProfileEvents<'_>, _window: Window) -> Result<bool, String> {
        Ok(self.total(profile) >= self.min_total)
    }
}

propensity_plugin::export_goal!(SpendThreshold);

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_plugin::testing::{BatchBuilder, positives};
    use propensity_plugin::{Batch, build};

    const DAY: i64 = 86_400_000_000;
    const W: Window = Window {
        start: 100 * DAY,
        end: 130 * DAY,
    };
    const PRICE: &str = "commerce.order.priceTotal";
    const BUY: &str = "commerce.purchases";

    fn goal(json: &str) -> SpendThreshold {
        build::<SpendThreshold>(json.as_bytes()).expect("valid params")
    }

    /// One profile per entry, with purchases of these amounts on consecutive days.
    fn purchases(profiles: &[(&str, &[f64])]) -> Batch {
        let mut b = BatchBuilder::new(W);
        for (id, amounts) in profiles {
            b = b.profile(id);
            for (day, &v) in (1..).zip(amounts.iter()) {
                b = b.event(W.start + day * DAY, BUY).number(PRICE, v);
            }
        }
        b.build()
    }

    #[test]
    fn below_at_and_above_the_threshold() {
        let b = purchases(&[
            ("below", &[40.0, 59.99]),
            ("at", &[40.0, 60.0]),
            ("above", &[150.0]),
            ("refunded", &[150.0, -60.0]),
            ("none", &[]),
        ]);
        let g = goal(r#"{"min_total": 100}"#);
        assert_eq!(positives(&g, &b), ["at", "above"]);
        assert!((g.total(&b.profile(3)) - 90.0).abs() < 1e-9);
        assert_eq!(g.total(&b.profile(4)), 0.0);
        let g = goal(r#"{"min_total": 0.01}"#);
        assert_eq!(positives(&g, &b), ["below", "at", "above", "refunded"]);
    }

    #[test]
    fn nulls_and_events_without_the_field_are_skipped() {
        let b = BatchBuilder::new(W)
            .profile("mixed")
            .event(W.start + DAY, "web.webpagedetails.pageViews")
            .event(W.start + 2 * DAY, BUY)
            .number(PRICE, 60.0)
            .event(W.start + 3 * DAY, BUY) // null price
            .event(W.start + 4 * DAY, "commerce.checkouts")
            .number(PRICE, 50.0)
            .event(W.start + 5 * DAY, BUY)
            .number(PRICE, f64::NAN)
            .build();
        // by default every event with a value counts
        let g = goal(r#"{"min_total": 110}"#);
        assert_eq!(positives(&g, &b), ["mixed"]);
        // only purchases
        let g = goal(r#"{"min_total": 110, "event_types": ["commerce.purchases"]}"#);
        assert!(positives(&g, &b).is_empty());
        assert_eq!(g.total(&b.profile(0)), 60.0);
        let g = goal(r#"{"min_total": 60, "event_types": ["commerce.purchases"]}"#);
        assert_eq!(positives(&g, &b), ["mixed"]);
    }

    #[test]
    fn another_value_field() {
        let b = BatchBuilder::new(W)
            .profile("p")
            .event(W.start + DAY, BUY)
            .number(PRICE, 10.0)
            .number("order.revenue", 500.0)
            .build();
        let g = goal(r#"{"min_total": 100, "value_field": "order.revenue"}"#);
        assert_eq!(g.fields(), [FieldRequest::number("order.revenue")]);
        assert_eq!(positives(&g, &b), ["p"]);
        assert!(positives(&goal(r#"{"min_total": 100}"#), &b).is_empty());
        // a field the events do not have: nothing is spent
        let g = goal(r#"{"min_total": 1, "value_field": "order.missing"}"#);
        assert!(positives(&g, &b).is_empty());
    }

    #[test]
    fn only_the_half_open_window_counts() {
        let b = BatchBuilder::new(W)
            .profile("p")
            .event(W.start - 1, BUY)
            .number(PRICE, 1000.0)
            .event(W.start, BUY)
            .number(PRICE, 30.0)
            .event(W.end - 1, BUY)
            .number(PRICE, 30.0)
            .event(W.end, BUY)
            .number(PRICE, 1000.0)
            .build();
        let g = goal(r#"{"min_total": 60}"#);
        assert_eq!(g.total(&b.profile(0)), 60.0);
        assert_eq!(positives(&g, &b), ["p"]);
        assert!(positives(&goal(r#"{"min_total": 61}"#), &b).is_empty());
    }

    #[test]
    fn params_are_read_and_bad_ones_refused() {
        let g = goal(r#"{"min_total": 250}"#);
        assert_eq!(g.value_field(), PRICE);
        assert_eq!(g.min_total(), 250.0);
        assert_eq!(g.event_types(), None);
        assert_eq!(g.fields(), [FieldRequest::number(PRICE)]);
        assert_eq!(g.lookback_micros(), 0);
        assert_eq!(SpendThreshold::metadata().name, "spend_threshold");

        let err = |json: &str| build::<SpendThreshold>(json.as_bytes()).expect_err(json);
        let e = err("{}");
        assert!(e.starts_with("params.min_total: missing"), "{e}");
        let e = err(r#"{"min_total": 0}"#);
        assert_eq!(e, "params.min_total: must be greater than 0, got 0");
        let e = err(r#"{"min_total": -5.5}"#);
        assert_eq!(e, "params.min_total: must be greater than 0, got -5.5");
        let e = err(r#"{"min_total": "100"}"#);
        assert!(e.starts_with("params.min_total: expected a number"), "{e}");
        let e = err(r#"{"min_total": 1, "value_field": ""}"#);
        assert!(
            e.starts_with("params.value_field: must name a field"),
            "{e}"
        );
        let e = err(r#"{"min_total": 1, "event_types": []}"#);
        assert!(
            e.starts_with("params.event_types: must name at least one event type"),
            "{e}"
        );
        let e = err(r#"{"min_total": 1, "event_types": [""]}"#);
        assert_eq!(e, "params.event_types: an event type is empty");
        let e = err(r#"{"min_total": 1, "threshold": 2}"#);
        assert!(e.starts_with("params.threshold: unknown parameter"), "{e}");
    }
}
