//! Arbitrary input never panics the job-file loader (issue #2): random text, random TOML
//! documents, and random edits of a real job.

use proptest::prelude::*;

const JOB: &str = include_str!("data/spec-example.toml");

fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        "[a-z0-9${}:/._ -]{0,12}".prop_map(toml::Value::String),
        prop::sample::select(vec![
            "30d",
            "-1d",
            "0d",
            "postgres",
            "${X}",
            "0 0 3 * * *",
            "UTC",
            "eq",
            "gbdt"
        ])
        .prop_map(|s| toml::Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "version",
                    "name",
                    "source",
                    "events",
                    "uri",
                    "goal",
                    "type",
                    "window",
                    "conditions",
                    "op",
                    "value",
                    "field",
                    "sinks",
                    "segments",
                    "where",
                    "schedule",
                    "score",
                    "timezone",
                    "model",
                    "url",
                    "headers",
                    "engine",
                    "storage",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6,
            )
            .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = propensity_config::load_str(&text, "fuzz.toml");
    }

    #[test]
    fn arbitrary_documents_never_panic(doc in toml_value()) {
        let text = match &doc {
            toml::Value::Table(t) => toml::to_string(t).unwrap_or_default(),
            other => format!("x = {other}"),
        };
        if let Err(diags) = propensity_config::load_str(&text, "fuzz.toml") {
            prop_assert!(!diags.is_empty());
            for d in diags {
                prop_assert!(d.line >= 1 && d.column >= 1);
            }
        }
    }

    #[test]
    fn edits_of_a_real_job_never_panic(cuts in prop::collection::vec((0usize..4000, 0usize..40, "[ -~\n]{0,8}"), 1..6)) {
        let mut text = JOB.to_owned();
        for (at, len, insert) in cuts {
            let mut start = at.min(text.len());
            while !text.is_char_boundary(start) { start -= 1; }
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(start..end, &insert);
        }
        let _ = propensity_config::load_str(&text, "fuzz.toml");
    }
}

#[test]
fn the_unedited_job_is_valid() {
    assert!(propensity_config::load_str(JOB, "spec-example.toml").is_ok());
}
