//! Goal plugin `subscription_lapse`: the profile's subscription lapses in the outcome window,
//! i.e. it is not renewed before the expiry carried by its last renewal.
//!
//! Each renewal event (a type in `renewal_events`) carries the new expiry in `expiry_field`.
//! The goal walks the profile's renewals in time order, from the `lookback` before the window
//! to the window's end, keeping the current expiry `exp` (the latest expiry seen so far). The
//! subscription lapses at `exp + grace` when no renewal comes at or before that moment. The
//! label is `true` when such a lapse moment falls inside the window `[start, end)`:
//!
//! - a *gap*: a renewal arrives after `exp + grace`, and `exp + grace` is in the window;
//! - an *end*: after the last renewal, `exp + grace` is in the window.
//!
//! Profiles without any renewal, whose subscription had already lapsed before the window
//! (and was not renewed since), or whose expiry (plus grace) is at or after the window's end
//! are `false`. Renewals whose expiry field is null are ignored. The lookback must reach the
//! renewal that set the expiry current at the window's start: at least the longest
//! subscription term (a yearly plan needs more than 365 days, hence the default `400d`).
//!
//! | param            | type            | default                                             | meaning                                               |
//! |------------------|-----------------|-----------------------------------------------------|-------------------------------------------------------|
//! | `renewal_events` | list of strings | `["subscription.renewed", "subscription.autoRenewed"]` | event types that renew the subscription            |
//! | `expiry_field`   | string          | `"subscription.expiresAt"`                          | field of a renewal with the new expiry (a timestamp)  |
//! | `grace`          | duration        | none (0)                                            | a renewal up to this long after expiry still counts   |
//! | `lookback`       | duration        | `"400d"`                                            | history before the window searched for renewals       |
//!
//! ```toml
//! [goal]
//! type = "plugin"
//! plugin = "subscription_lapse"
//! window = "30d"
//! params = { grace = "3d", lookback = "400d" }
//! ```

#![warn(missing_docs)]

use propensity_plugin::{
    FieldRequest, Goal, Metadata, ParamKind, ParamSpec, Params, ProfileEvents, Window,
};

/// The goal type's name, as a job writes it in `plugin = "…"`.
pub const NAME: &str = "subscription_lapse";
/// `renewal_events` when the job leaves it out.
pub const DEFAULT_RENEWAL_EVENTS: &[&str] = &["subscription.renewed", "subscription.autoRenewed"];
/// `expiry_field` when the job leaves it out.
pub const DEFAULT_EXPIRY_FIELD: &str = "subscription.expiresAt";
/// `lookback` when the job leaves it out.
pub const DEFAULT_LOOKBACK: &str = "400d";

/// No renewal before the expiry (plus grace) of the last one, with the lapse in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionLapse {
    renewal_events: Vec<String>,
    expiry_field: String,
    grace_micros: i64,
    lookback_micros: i64,
}

impl SubscriptionLapse {
    /// The event types that renew the subscription.
    pub fn renewal_events(&self) -> &[String] {
        &self.renewal_events
    }

    /// The field of a renewal that carries the new expiry.
    pub fn expiry_field(&self) -> &str {
        &self.expiry_field
    }

    /// How long after expiry a renewal still counts, microseconds.
    pub fn grace_micros(&self) -> i64 {
        self.grace_micros
    }

    /// The moment of the lapse inside `window`, if the profile's subscription lapses there.
    pub fn lapse_in_window(&self, profile: &ProfileEvents<'_>, window: Window) -> Option<i64> {
        let in_window = |t: i64| t >= window.start && t < window.end;
        // The current expiry: the latest expiry of the renewals seen so far.
        let mut exp: Option<i64> = None;
        for i in 0..profile.len() {
            let event_type = profile.event_type(i);
            if !self.renewal_events.iter().any(|t| t == event_type) {
                continue;
            }
            let Some(expires) = profile.time(&self.expiry_field, i) else {
                continue;
            };
            let t = profile.timestamp(i);
            if let Some(exp) = exp {
                let lapse = exp.saturating_add(self.grace_micros);
                if t > lapse {
                    // Renewed only after it had lapsed: a gap.
                    if in_window(lapse) {
                        return Some(lapse);
                    }
                    if lapse >= window.end {
                        // Every later lapse is later still.
                        return None;
                    }
                }
            }
            exp = Some(exp.map_or(expires, |e| e.max(expires)));
        }
        // After the last renewal: lapses at its expiry (plus grace) unless renewed again.
        let lapse = exp?.saturating_add(self.grace_micros);
        in_window(lapse).then_some(lapse)
    }
}

impl Goal for SubscriptionLapse {
    fn metadata() -> Metadata {
        Metadata::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "The subscription lapses in the window: no renewal before the expiry (plus grace) \
             carried by the last renewal",
        )
        .param(
            ParamSpec::new(
                "renewal_events",
                ParamKind::StringList,
                "event types that renew the subscription",
            )
            .default_value(DEFAULT_RENEWAL_EVENTS.to_vec()),
        )
        .param(
            ParamSpec::new(
                "expiry_field",
                ParamKind::String,
                "field of a renewal event with the new expiry (a timestamp)",
            )
            .default_value(DEFAULT_EXPIRY_FIELD),
        )
        .param(ParamSpec::new(
            "grace",
            ParamKind::Duration,
            "a renewal up to this long after the expiry still counts as renewed (default none)",
        ))
        .param(
            ParamSpec::new(
                "lookback",
                ParamKind::Duration,
                "history before the window searched for the renewal that set the current \
                 expiry (at least the longest subscription term)",
            )
            .default_value(DEFAULT_LOOKBACK),
        )
    }

    fn new(params: &Params) -> Result<Self, String> {
        let renewal_events = params.names("renewal_events", DEFAULT_RENEWAL_EVENTS)?;
        let expiry_field = params
            .string("expiry_field")?
            .unwrap_or_else(|| DEFAULT_EXPIRY_FIELD.to_owned());
        if expiry_field.trim().is_empty() {
            return Err(
                "params.expiry_field: must name a field, e.g. \"subscription.expiresAt\"".into(),
            );
        }
        let grace_micros = params.duration_micros("grace")?.unwrap_or(0);
        let lookback_micros = match params.duration_micros("lookback")? {
            Some(l) => l,
            None => propensity_plugin::parse_duration_micros(DEFAULT_LOOKBACK)
                .ok_or("the default lookback is not a duration")?,
        };
        Ok(Self {
            renewal_events,
            expiry_field,
            grace_micros,
            lookback_micros,
        })
    }

    fn fields(&self) -> Vec<FieldRequest> {
        vec![FieldRequest::time(&self.expiry_field)]
    }

    fn lookback_micros(&self) -> i64 {
        self.lookback_micros
    }

    fn label(&self, profile: &ProfileEvents<'_>, window: Window) -> Result<bool, String> {
        Ok(self.lapse_in_window(profile, window).is_some())
    }
}

propensity_plugin::export_goal!(SubscriptionLapse);

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_plugin::testing::{BatchBuilder, positives};
    use propensity_plugin::{Batch, build};

    const DAY: i64 = 86_400_000_000;
    const EXP: &str = "subscription.expiresAt";
    const RENEWED: &str = "subscription.renewed";
    const AUTO: &str = "subscription.autoRenewed";
    /// Days 400 to 430.
    const W: Window = Window {
        start: 400 * DAY,
        end: 430 * DAY,
    };

    fn goal(json: &str) -> SubscriptionLapse {
        build::<SubscriptionLapse>(json.as_bytes()).expect("valid params")
    }

    /// Profiles with their renewals as (day of the renewal, day of the new expiry).
    fn batch(profiles: &[(&str, &[(i64, i64)])]) -> Batch {
        let mut b = BatchBuilder::new(W);
        for (id, renewals) in profiles {
            b = b.profile(id);
            for &(at, expires) in *renewals {
                b = b.event(at * DAY, RENEWED).time(EXP, expires * DAY);
            }
        }
        b.build()
    }

    #[test]
    fn defaults_and_the_field_and_lookback_requested() {
        let g = goal("{}");
        assert_eq!(g.renewal_events(), [RENEWED, AUTO]);
        assert_eq!(g.expiry_field(), EXP);
        assert_eq!(g.grace_micros(), 0);
        assert_eq!(g.lookback_micros(), 400 * DAY);
        assert_eq!(g.fields(), [FieldRequest::time(EXP)]);
        let g = goal(r#"{"expiry_field": "sub.until", "lookback": "800d", "grace": "2d"}"#);
        assert_eq!(g.fields(), [FieldRequest::time("sub.until")]);
        assert_eq!(g.lookback_micros(), 800 * DAY);
        assert_eq!(g.grace_micros(), 2 * DAY);
        let m = SubscriptionLapse::metadata();
        assert_eq!(m.name, "subscription_lapse");
        assert_eq!(m.params.len(), 4);
    }

    #[test]
    fn an_expiry_set_in_the_lookback_and_falling_in_the_window_is_a_lapse() {
        let b = batch(&[
            // monthly, last renewed before the window, expires inside it: ends
            ("ends", &[(340, 370), (368, 398), (396, 410)]),
            // renewed in the window before the expiry: no lapse
            ("renews", &[(368, 398), (396, 410), (407, 440)]),
            // yearly, renewed long before the window, expires after it
            ("yearly", &[(100, 465)]),
            // a single yearly renewal, in the lookback only, expiring inside the window
            ("yearly-ends", &[(50, 415)]),
            // lapsed before the window and never renewed
            ("lapsed-before", &[(300, 330), (328, 358)]),
            // no renewal at all
            ("none", &[]),
        ]);
        assert_eq!(positives(&goal("{}"), &b), ["ends", "yearly-ends"]);
    }

    #[test]
    fn a_late_renewal_leaves_a_gap() {
        let b = batch(&[
            // expires on day 405, renewed only on day 412: lapsed on day 405
            ("gap", &[(376, 405), (412, 442)]),
            // expired on day 390 (before the window), renewed on 395, expires after it
            ("gap-before", &[(360, 390), (395, 440)]),
            // the same gap before the window, then it ends inside the window
            ("gap-before-then-ends", &[(360, 390), (395, 425)]),
            // a gap after the window only
            ("gap-after", &[(400, 431), (435, 465)]),
        ]);
        assert_eq!(positives(&goal("{}"), &b), ["gap", "gap-before-then-ends"]);
    }

    #[test]
    fn grace_lets_a_late_renewal_count() {
        let b = batch(&[
            // renewed 3 days after the expiry
            ("late3", &[(376, 405), (408, 438)]),
            // renewed 5 days after the expiry
            ("late5", &[(376, 405), (410, 440)]),
            // expires 2 days before the window's end, never renewed
            ("ends-late", &[(398, 428)]),
        ]);
        assert_eq!(positives(&goal("{}"), &b), ["late3", "late5", "ends-late"]);
        // a renewal exactly at expiry + grace counts as renewed; the lapse of `ends-late`
        // moves to day 431, past the window
        assert_eq!(positives(&goal(r#"{"grace": "3d"}"#), &b), ["late5"]);
        assert_eq!(positives(&goal(r#"{"grace": "72h"}"#), &b), ["late5"]);
        assert!(positives(&goal(r#"{"grace": "5d"}"#), &b).is_empty());
        // grace also moves a lapse from before the window into it
        let b = batch(&[("just-before", &[(368, 398)])]);
        assert!(positives(&goal("{}"), &b).is_empty());
        assert_eq!(positives(&goal(r#"{"grace": "2d"}"#), &b), ["just-before"]);
    }

    #[test]
    fn the_window_is_half_open() {
        let one = |expires: i64| {
            BatchBuilder::new(W)
                .profile("p")
                .event(W.start - 20 * DAY, RENEWED)
                .time(EXP, expires)
                .build()
        };
        let g = goal("{}");
        assert_eq!(positives(&g, &one(W.start)), ["p"]);
        assert_eq!(positives(&g, &one(W.end - 1)), ["p"]);
        assert!(positives(&g, &one(W.start - 1)).is_empty());
        assert!(positives(&g, &one(W.end)).is_empty());
        // a renewal exactly at the expiry is in time; one a microsecond later is not
        let renewed_at = |at: i64| {
            BatchBuilder::new(W)
                .profile("p")
                .event(W.start - 20 * DAY, RENEWED)
                .time(EXP, W.start + DAY)
                .event(at, AUTO)
                .time(EXP, W.end + 20 * DAY)
                .build()
        };
        assert!(positives(&g, &renewed_at(W.start + DAY)).is_empty());
        assert_eq!(positives(&g, &renewed_at(W.start + DAY + 1)), ["p"]);
    }

    #[test]
    fn only_renewals_with_an_expiry_count_and_the_latest_expiry_wins() {
        let b = BatchBuilder::new(W)
            // a renewal without expiry does not extend the subscription
            .profile("null-expiry")
            .event(376 * DAY, RENEWED)
            .time(EXP, 405 * DAY)
            .event(402 * DAY, RENEWED)
            .profile("only-null")
            .event(402 * DAY, RENEWED)
            // other event types carrying the field are not renewals
            .profile("not-a-renewal")
            .event(376 * DAY, AUTO)
            .time(EXP, 405 * DAY)
            .event(402 * DAY, "commerce.purchases")
            .time(EXP, 440 * DAY)
            .event(403 * DAY, "web.webpagedetails.pageViews")
            // an earlier expiry does not shorten the subscription
            .profile("shorter-later")
            .event(370 * DAY, RENEWED)
            .time(EXP, 440 * DAY)
            .event(380 * DAY, AUTO)
            .time(EXP, 410 * DAY)
            .build();
        assert_eq!(positives(&goal("{}"), &b), ["null-expiry", "not-a-renewal"]);
        // with custom renewal types the purchase renews, and `subscription.renewed` no longer
        // does (so `shorter-later` lapses at the expiry of its auto-renewal)
        let g = goal(r#"{"renewal_events": ["subscription.autoRenewed", "commerce.purchases"]}"#);
        assert_eq!(positives(&g, &b), ["shorter-later"]);
        // a field that is not there: no renewal has an expiry
        let g = goal(r#"{"expiry_field": "subscription.endsAt"}"#);
        assert!(positives(&g, &b).is_empty());
    }

    #[test]
    fn the_lapse_moment_is_reported() {
        let b = batch(&[("p", &[(376, 405), (412, 442)])]);
        let g = goal(r#"{"grace": "1d"}"#);
        assert_eq!(g.lapse_in_window(&b.profile(0), W), Some(406 * DAY));
    }

    #[test]
    fn bad_params_are_refused_with_their_name() {
        let err = |json: &str| build::<SubscriptionLapse>(json.as_bytes()).expect_err(json);
        let e = err(r#"{"renewal_events": []}"#);
        assert_eq!(
            e,
            "params.renewal_events: must name at least one event type"
        );
        let e = err(r#"{"renewal_events": [""]}"#);
        assert_eq!(e, "params.renewal_events: an event type is empty");
        let e = err(r#"{"expiry_field": ""}"#);
        assert!(
            e.starts_with("params.expiry_field: must name a field"),
            "{e}"
        );
        let e = err(r#"{"expiry_field": 3}"#);
        assert!(
            e.starts_with("params.expiry_field: expected a string"),
            "{e}"
        );
        let e = err(r#"{"grace": "soon"}"#);
        assert!(e.starts_with("params.grace: expected a duration"), "{e}");
        let e = err(r#"{"grace": "0d"}"#);
        assert!(e.starts_with("params.grace: expected a duration"), "{e}");
        let e = err(r#"{"lookback": 400}"#);
        assert!(e.starts_with("params.lookback: expected a duration"), "{e}");
        let e = err(r#"{"window": "30d"}"#);
        assert!(e.starts_with("params.window: unknown parameter"), "{e}");
    }
}
