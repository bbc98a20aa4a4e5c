//! `my_goal`: an example Propensity goal plugin, to copy and adapt.
//!
//! A profile is labelled `true` when it has at least `min_events` events of type `event_type`
//! in the outcome window. A job uses it with:
//!
//! ```toml
//! [goal]
//! type = "plugin"
//! plugin = "my_goal"
//! window = "30d"
//! params = { event_type = "newsletter.signup", min_events = 1 }
//! ```

use propensity_plugin::{Goal, Metadata, ParamKind, ParamSpec, Params, ProfileEvents, Window};

/// The goal. Its fields are the parameters, read and checked once by [`Goal::new`].
#[derive(Debug)]
pub struct MyGoal {
    event_type: String,
    min_events: usize,
}

impl Goal for MyGoal {
    /// The goal type's name (what a job writes in `plugin = "…"`; keep it equal to the
    /// library's name), its version, a description, and the parameters it takes. The SDK
    /// refuses unknown parameters, missing required ones and values of the wrong type
    /// before `new` runs, with messages naming the parameter.
    fn metadata() -> Metadata {
        Metadata::new(
            "my_goal",
            env!("CARGO_PKG_VERSION"),
            "At least `min_events` events of type `event_type` in the window",
        )
        .param(
            ParamSpec::new("event_type", ParamKind::String, "the event type to count").required(),
        )
        .param(
            ParamSpec::new(
                "min_events",
                ParamKind::Integer,
                "events needed (at least 1)",
            )
            .default_value(1),
        )
    }

    /// Reads the parameters and checks what the declarations cannot (ranges, combinations).
    /// Start an error with `params.<name>:` so the user knows what to fix.
    fn new(params: &Params) -> Result<Self, String> {
        let event_type = params
            .string("event_type")?
            .ok_or("params.event_type: missing; it is required")?;
        let min_events = params.integer("min_events")?.unwrap_or(1);
        if min_events < 1 {
            return Err(format!(
                "params.min_events: must be at least 1, got {min_events}"
            ));
        }
        let min_events = usize::try_from(min_events)
            .map_err(|_| format!("params.min_events: too large, got {min_events}"))?;
        Ok(Self {
            event_type,
            min_events,
        })
    }

    // Other event fields (amounts, timestamps, text) must be requested before they can be
    // read, e.g.:
    //
    //     fn fields(&self) -> Vec<FieldRequest> {
    //         vec![FieldRequest::number("commerce.order.priceTotal")]
    //     }
    //
    // and then `profile.number("commerce.order.priceTotal", i)` in `label`. A goal that needs
    // history before the window overrides `lookback_micros` (and tells those events apart
    // with `profile.in_window(i)`).

    /// The label of one profile, from its events in the window (in time order).
    fn label(&self, profile: &ProfileEvents<'_>, _window: Window) -> Result<bool, String> {
        let n = (0..profile.len())
            .filter(|&i| profile.event_type(i) == self.event_type)
            .count();
        Ok(n >= self.min_events)
    }
}

// Generates the C entry points the host calls. No `unsafe` to write.
propensity_plugin::export_goal!(MyGoal);

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_plugin::testing::BatchBuilder;

    const DAY: i64 = 86_400_000_000;

    #[test]
    fn counts_events_of_the_type_in_the_window() {
        // Parameters as the job would give them (JSON), checked like the host does.
        let goal = propensity_plugin::build::<MyGoal>(
            br#"{"event_type": "newsletter.signup", "min_events": 2}"#,
        )
        .expect("valid params");
        let batch = BatchBuilder::new(Window {
            start: 0,
            end: 30 * DAY,
        })
        .profile("twice")
        .event(DAY, "newsletter.signup")
        .event(2 * DAY, "newsletter.signup")
        .profile("once")
        .event(DAY, "newsletter.signup")
        .event(2 * DAY, "web.webpagedetails.pageViews")
        .build();
        let labels: Vec<bool> = batch
            .profiles()
            .map(|p| goal.label(&p, batch.window()).expect("label"))
            .collect();
        assert_eq!(labels, [true, false]);
    }

    #[test]
    fn bad_params_are_refused() {
        let e = propensity_plugin::build::<MyGoal>(br#"{"event_type": "x", "min_events": 0}"#)
            .expect_err("min_events 0");
        assert_eq!(e, "params.min_events: must be at least 1, got 0");
        let e = propensity_plugin::build::<MyGoal>(b"{}").expect_err("no event_type");
        assert!(e.starts_with("params.event_type: missing"), "{e}");
    }
}
