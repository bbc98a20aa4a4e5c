//! Job-file semantics: defaults, normalisation and "every problem at once" (issue #2).

use propensity_config::load_str;
use propensity_core::{Goal, SinkKind, enums::*};

const SPEC: &str = include_str!("data/spec-example.toml");

fn codes(text: &str) -> Vec<(String, &'static str)> {
    load_str(text, "t.toml")
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.key, d.code))
        .collect()
}

#[test]
fn the_spec_example_loads_with_its_values() {
    let job = load_str(SPEC, "spec.toml").unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(job.name, "churn-30d");
    assert_eq!(job.events.columns.profile_id.0, ["identityMap", "ECID"]);
    let Goal::Conditions(g) = &job.goal else {
        panic!("conditions goal")
    };
    assert_eq!(
        (g.outcome, g.window.as_secs(), g.min_count),
        (GoalOutcome::WillNotOccur, 30 * 86_400, 1)
    );
    assert_eq!(job.model.min_positives, 500);
    assert_eq!(
        job.features
            .windows
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["7d", "30d", "90d"]
    );
    let s = job.schedule.as_ref().expect("schedule");
    assert_eq!(s.timezone.name(), "Europe/Berlin");
    assert_eq!(
        s.train.as_ref().map(|t| t.expression.as_str()),
        Some("0 0 4 * * Sun")
    );
    assert_eq!(job.segments[0].holdout, 0.10);
    // Rules are parsed at validation time.
    assert!(matches!(
        job.segments[0].rule.expr,
        propensity_core::expr::Expr::Compare { .. }
    ));
    assert!(matches!(
        job.segments[1].rule.expr,
        propensity_core::expr::Expr::And { .. }
    ));
    assert!(job.features.custom_events.contains_key("newsletter_signup"));
    let names: Vec<&str> = job.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["parquet", "postgres", "redis", "webhook"]);
    let SinkKind::Postgres(pg) = &job.sinks[1].kind else {
        panic!("postgres")
    };
    assert_eq!(
        (
            pg.table.as_str(),
            pg.segments_table.as_str(),
            pg.schema.as_str()
        ),
        ("profile_scores", "profile_scores_segments", "public")
    );
}

#[test]
fn defaults_fill_every_omitted_section() {
    let minimal = r#"
version = 1
name = "m"
[source.events]
uri = "events.parquet"
[goal]
type = "conditions"
outcome = "will_occur"
window = "7d"
conditions = [{ field = "event_type", op = "eq", value = "purchase" }]
[[sinks]]
type = "parquet"
uri = "out/"
[[sinks]]
type = "parquet"
uri = "out2/"
"#;
    let job = load_str(minimal, "m.toml").unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(job.eligibility.active_within.to_string(), "90d");
    // #16: defaults keep every eligible profile featurised (all history), stride from the
    // window (7d / 3, at least 1 day), the capacity search on, calibration chosen per model,
    // every row an event, numeric columns found in the data.
    assert_eq!(job.features.lookback.to_string(), "all");
    assert_eq!(job.model.algorithm, Algorithm::Gbdt);
    assert_eq!((job.model.snapshots, job.model.min_auc), (4, 0.65));
    assert_eq!(job.model.snapshot_stride, None);
    assert_eq!(job.model.stride(job.goal.window()).to_string(), "2d");
    assert_eq!(
        job.model.search.budget.map(|b| b.to_string()).as_deref(),
        Some("10m")
    );
    assert_eq!(
        job.model.calibration,
        propensity_core::enums::Calibration::Auto
    );
    assert!(job.features.numeric_fields_auto && !job.events.dedupe);
    assert_eq!(
        (job.output.top_factors, job.output.high, job.output.medium),
        (5, 75, 25)
    );
    assert!(job.schedule.is_none());
    let names: Vec<&str> = job.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["parquet", "parquet-2"]);
}

#[test]
fn five_field_crontab_gets_a_seconds_field() {
    let text = SPEC.replace("score = \"0 0 3 * * *\"", "score = \"30 2 * * 1-5\"");
    let job = load_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(
        job.schedule.expect("schedule").score.expression,
        "0 30 2 * * 1-5"
    );
}

#[test]
fn problems_in_one_table_are_all_reported_together() {
    // An unknown key, an invalid enum value and a bad duration in the same [goal]; a wrong
    // type and an out-of-range value elsewhere: one pass reports all five.
    let text = SPEC
        .replace("window = \"30d\"", "window = \"30days\"\nwindw = \"30d\"")
        .replace("match = \"any\"", "match = \"some\"")
        .replace("snapshots = 4", "snapshots = \"4\"")
        .replace("top_factors = 5", "top_factors = 500");
    let found = codes(&text);
    for want in [
        ("goal.window", "bad-duration"),
        ("goal.windw", "unknown-key"),
        ("goal.match", "invalid-value"),
        ("model.snapshots", "invalid-type"),
        ("output.top_factors", "out-of-range"),
    ] {
        assert!(
            found.iter().any(|(k, c)| k == want.0 && *c == want.1),
            "{want:?} missing from {found:?}"
        );
    }
    assert_eq!(found.len(), 5, "{found:?}");
}

#[test]
fn a_missing_version_does_not_hide_other_problems() {
    let text = SPEC.replace("version = 1\n", "").replace(
        "timezone = \"Europe/Berlin\"",
        "timezone = \"Mars/Olympus\"",
    );
    let found = codes(&text);
    assert!(
        found.contains(&("version".into(), "missing-key")),
        "{found:?}"
    );
    assert!(
        found.contains(&("schedule.timezone".into(), "bad-timezone")),
        "{found:?}"
    );
}

#[test]
fn an_invalid_value_is_reported_once_not_again_downstream() {
    // `op` is invalid: the value check that depends on it must stay quiet.
    let text = SPEC.replace(
        "op = \"eq\", value = \"purchase\"",
        "op = \"is\", value = [\"purchase\"]",
    );
    assert_eq!(
        codes(&text),
        [("goal.conditions[0].op".to_owned(), "invalid-value")]
    );
}

#[test]
fn every_diagnostic_points_into_the_file() {
    let text = SPEC.replace(
        "uri = \"s3://acme-scores/churn-30d/\"",
        "uri = \"ftp://x/\"\nzzz = 1",
    );
    let diags = load_str(&text, "t.toml").expect_err("invalid");
    let lines = text.lines().count();
    for d in &diags {
        assert!(d.line >= 1 && d.line <= lines, "{d}");
        let line = text.lines().nth(d.line - 1).unwrap_or_default();
        assert!(d.column <= line.chars().count() + 1, "{d}");
    }
    assert_eq!(diags.len(), 2, "{diags:#?}");
}

#[test]
fn the_version_is_compared_as_a_number() {
    for one in ["+1", "0x1", "0o1", "1"] {
        let text = SPEC.replace("version = 1\n", &format!("version = {one}\n"));
        assert!(load_str(&text, "t.toml").is_ok(), "version = {one}");
    }
    let text = SPEC.replace("version = 1\n", "version = 0x2\n");
    assert_eq!(
        codes(&text),
        [("version".to_owned(), "unsupported-version")]
    );
}
