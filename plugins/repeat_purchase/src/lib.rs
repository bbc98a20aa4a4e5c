//! Goal plugin `repeat_purchase`: the profile places at least `min_orders` orders in the
//! outcome window.
//!
//! An order is an event whose type is one of `purchase_events`. Only events inside the window
//! `[start, end)` count; the goal needs no history before it.
//!
//! | param             | type            | default                  | meaning                              |
//! |-------------------|-----------------|--------------------------|--------------------------------------|
//! | `min_orders`      | integer, ≥ 1    | `2`                      | orders needed for a positive label   |
//! | `purchase_events` | list of strings | `["commerce.purchases"]` | event types that count as an order   |
//!
//! ```toml
//! [goal]
//! type = "plugin"
//! plugin = "repeat_purchase"
//! window = "90d"
//! params = { min_orders = 2, purchase_events = ["commerce.purchases"] }
//! ```

#![warn(missing_docs)]

use propensity_plugin::{Goal, Metadata, ParamKind, ParamSpec, Params, ProfileEvents, Window};

/// The goal type's name, as a job writes it in `plugin = "…"`.
pub const NAME: &str = "repeat_purchase";
/// `min_orders` when the job leaves it out.
pub const DEFAULT_MIN_ORDERS: i64 = 2;
/// `purchase_events` when the job leaves it out.
pub const DEFAULT_PURCHASE_EVENTS: &[&str] = &["commerce.purchases"];

/// At least `min_orders` events of a type in `purchase_events` inside the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatPurchase {
    min_orders: usize,
    purchase_events: Vec<String>,
}

impl RepeatPurchase {
    /// Orders needed for a positive label.
    pub fn min_orders(&self) -> usize {
        self.min_orders
    }

    /// The event types that count as an order.
    pub fn purchase_events(&self) -> &[String] {
        &self.purchase_events
    }
}

impl Goal for RepeatPurchase {
    fn metadata() -> Metadata {
        Metadata::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "At least `min_orders` orders (events of a type in `purchase_events`) in the window",
        )
        .param(
            ParamSpec::new(
                "min_orders",
                ParamKind::Integer,
                "orders in the window needed for a positive label (at least 1)",
            )
            .default_value(DEFAULT_MIN_ORDERS),
        )
        .param(
            ParamSpec::new(
                "purchase_events",
                ParamKind::StringList,
                "event types that count as an order",
            )
            .default_value(DEFAULT_PURCHASE_EVENTS.to_vec()),
        )
    }

    fn new(params: &Params) -> Result<Self, String> {
        let min_orders = params.integer("min_orders")?.unwrap_or(DEFAULT_MIN_ORDERS);
        if min_orders < 1 {
            return Err(format!(
                "params.min_orders: must be at least 1, got {min_orders}"
            ));
        }
        let min_orders = usize::try_from(min_orders)
            .map_err(|_| format!("params.min_orders: too large, got {min_orders}"))?;
        let purchase_events = params.names("purchase_events", DEFAULT_PURCHASE_EVENTS)?;
        Ok(Self {
            min_orders,
            purchase_events,
        })
    }

    fn label(&self, profile: &ProfileEvents<'_>, _window: Window) -> Result<bool, String> {
        let mut orders = 0usize;
        for i in 0..profile.len() {
            if profile.in_window(i)
                && self
                    .purchase_events
                    .iter()
                    .any(|t| t == profile.event_type(i))
            {
                orders += 1;
                if orders >= self.min_orders {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

propensity_plugin::export_goal!(RepeatPurchase);

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_plugin::testing::BatchBuilder;
    use propensity_plugin::{Batch, build};

    const DAY: i64 = 86_400_000_000;
    const W: Window = Window {
        start: 100 * DAY,
        end: 130 * DAY,
    };

    fn goal(json: &str) -> RepeatPurchase {
        build::<RepeatPurchase>(json.as_bytes()).expect("valid params")
    }

    fn labels(goal: &RepeatPurchase, batch: &Batch) -> Vec<(String, bool)> {
        let l = goal.label_batch(batch).expect("labels");
        propensity_plugin::Labels::from_struct(&l.into_struct()).expect("struct")
    }

    fn ids(labels: &[(String, bool)]) -> Vec<&str> {
        labels
            .iter()
            .filter(|(_, l)| *l)
            .map(|(id, _)| id.as_str())
            .collect()
    }

    #[test]
    fn defaults_are_two_purchases() {
        let g = goal("{}");
        assert_eq!(g.min_orders(), 2);
        assert_eq!(g.purchase_events(), ["commerce.purchases"]);
        let m = RepeatPurchase::metadata();
        assert_eq!(m.name, "repeat_purchase");
        assert_eq!(m.params.len(), 2);
    }

    #[test]
    fn counts_purchases_in_the_window_only() {
        let b = BatchBuilder::new(W)
            // two purchases: positive
            .profile("two")
            .event(W.start + DAY, "commerce.purchases")
            .event(W.start + 2 * DAY, "web.webpagedetails.pageViews")
            .event(W.start + 3 * DAY, "commerce.purchases")
            // one purchase and other events: negative
            .profile("one")
            .event(W.start + DAY, "commerce.purchases")
            .event(W.start + 2 * DAY, "commerce.checkouts")
            .event(W.start + 3 * DAY, "commerce.productListAdds")
            // no events at all
            .profile("none")
            // first event exactly at the start (inside), last one just before the end
            .profile("edges")
            .event(W.start, "commerce.purchases")
            .event(W.end - 1, "commerce.purchases")
            .build();
        let g = goal("{}");
        assert_eq!(ids(&labels(&g, &b)), ["two", "edges"]);
    }

    #[test]
    fn events_outside_the_half_open_window_do_not_count() {
        // The host never sends them for this goal (no lookback); the goal ignores them anyway.
        let b = BatchBuilder::new(W)
            .profile("before")
            .event(W.start - 1, "commerce.purchases")
            .event(W.start + DAY, "commerce.purchases")
            .profile("at-end")
            .event(W.start + DAY, "commerce.purchases")
            .event(W.end, "commerce.purchases")
            .build();
        assert!(ids(&labels(&goal("{}"), &b)).is_empty());
    }

    #[test]
    fn min_orders_and_purchase_events_are_honoured() {
        let b = BatchBuilder::new(W)
            .profile("a")
            .event(W.start + DAY, "commerce.purchases")
            .event(W.start + 2 * DAY, "shop.order")
            .event(W.start + 3 * DAY, "shop.order")
            .build();
        assert_eq!(ids(&labels(&goal(r#"{"min_orders": 1}"#), &b)), ["a"]);
        assert!(ids(&labels(&goal(r#"{"min_orders": 3}"#), &b)).is_empty());
        let both = r#"{"min_orders": 3, "purchase_events": ["commerce.purchases", "shop.order"]}"#;
        assert_eq!(ids(&labels(&goal(both), &b)), ["a"]);
        let custom = r#"{"min_orders": 2, "purchase_events": ["shop.order"]}"#;
        assert_eq!(ids(&labels(&goal(custom), &b)), ["a"]);
        let other = r#"{"min_orders": 1, "purchase_events": ["commerce.checkouts"]}"#;
        assert!(ids(&labels(&goal(other), &b)).is_empty());
    }

    #[test]
    fn bad_params_are_refused_with_their_name() {
        let err = |json: &str| build::<RepeatPurchase>(json.as_bytes()).expect_err(json);
        let e = err(r#"{"min_orders": 0}"#);
        assert_eq!(e, "params.min_orders: must be at least 1, got 0");
        let e = err(r#"{"min_orders": -3}"#);
        assert!(
            e.starts_with("params.min_orders: must be at least 1"),
            "{e}"
        );
        let e = err(r#"{"min_orders": "two"}"#);
        assert!(
            e.starts_with("params.min_orders: expected a whole number"),
            "{e}"
        );
        let e = err(r#"{"min_orders": 1.5}"#);
        assert!(
            e.starts_with("params.min_orders: expected a whole number"),
            "{e}"
        );
        let e = err(r#"{"purchase_events": []}"#);
        assert_eq!(
            e,
            "params.purchase_events: must name at least one event type"
        );
        let e = err(r#"{"purchase_events": ["commerce.purchases", " "]}"#);
        assert_eq!(e, "params.purchase_events: an event type is empty");
        let e = err(r#"{"purchase_events": "commerce.purchases"}"#);
        assert!(
            e.starts_with("params.purchase_events: expected a list of strings"),
            "{e}"
        );
        let e = err(r#"{"min_order": 2}"#);
        assert!(e.starts_with("params.min_order: unknown parameter"), "{e}");
    }
}
