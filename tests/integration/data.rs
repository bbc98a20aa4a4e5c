//! The data half of a run: sources (local, S3, HTTP; Parquet, CSV, NDJSON), data checks,
//! labels, point-in-time features and `propensity dry-run` (issue #3).

use std::path::Path;

use chrono::{DateTime, Utc};
use propensity_engine::generate::EventFormat;
use propensity_tests::propensity;

use crate::support::*;

fn local_sources(dir: &Path) -> (String, String) {
    (
        format!(
            "uri = \"{}/events/*.parquet\"\nformat = \"parquet\"",
            dir.display()
        ),
        format!(
            "uri = \"{}/profiles/\"\nformat = \"parquet\"",
            dir.display()
        ),
    )
}

#[test]
fn generated_data_gives_labels_features_and_a_passing_report() {
    let rt = runtime();
    let (e, p) = local_sources(sample());
    let l = rt
        .block_on(load(&xdm_job(&e, &p), sample(), &[], end()))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = &l.report;
    assert!(r.passed, "checks failed: {:?}", r.problems);
    assert!(
        r.events.files >= 2,
        "several files expected, got {}",
        r.events.files
    );
    // The generator writes Parquet in row groups (5,000 events each here).
    let f = std::fs::File::open(sample().join("events/part-00000.parquet"))
        .unwrap_or_else(|e| panic!("{e}"));
    let meta = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(meta.metadata().num_row_groups(), 4);
    assert!(
        r.events.counts.excluded_events > 0,
        "test.ping events are excluded"
    );
    assert_eq!(r.events.counts.invalid(), 0);
    // Three fit cutoffs and three search cutoffs a window before them.
    assert_eq!(r.cutoffs.len(), 6);
    for c in &r.cutoffs {
        assert!(
            c.counts.positives > 0 && c.counts.negatives > c.counts.positives,
            "{c:?}"
        );
        assert_eq!(c.counts.eligible, c.counts.positives + c.counts.negatives);
    }
    let s = r
        .sufficiency
        .as_ref()
        .unwrap_or_else(|| panic!("no sufficiency"));
    assert!(s.sufficient, "{}", s.verdict);
    let (names, table) = feature_table(&l);
    assert_eq!(names.len(), r.features);
    for n in [
        "days_since_last_commerce_purchases",
        "cart_add_count_7d",
        "commerce_order_pricetotal_sum_30d",
        "attr_loyalty_tier_gold",
        "days_since_signup_date",
        "event_count_trend_30d",
        "gap_days_mean",
    ] {
        assert!(
            names.iter().any(|x| x == n),
            "feature {n} missing from {names:?}"
        );
    }
    // No feature reads a goal label: the label-window purchases are after the cutoff.
    assert_eq!(
        table.len(),
        7,
        "3 fit cutoffs, 3 search cutoffs and the scoring cutoff"
    );
}

#[test]
fn s3_source_gives_exactly_the_features_of_local_files() {
    let rt = runtime();
    let (e, p) = local_sources(sample());
    let local = rt
        .block_on(load(&xdm_job(&e, &p), sample(), &[], end()))
        .unwrap_or_else(|e| panic!("{e}"));
    let remote = rt.block_on(async {
        let s3 = start_s3("s3").await;
        s3.upload("lake", &sample().join("events"), "exports/events").await;
        s3.upload("lake", &sample().join("profiles"), "crm/profiles").await;
        let storage = "storage = { endpoint = \"${TEST_S3_ENDPOINT}\", region = \"us-east-1\", access_key_id = \"${TEST_S3_KEY}\", secret_access_key = \"${TEST_S3_SECRET}\", allow_http = true }";
        let job = xdm_job(
            &format!("uri = \"s3://lake/exports/events/*.parquet\"\n{storage}"),
            &format!("uri = \"s3://lake/crm/profiles/profiles.parquet\"\n{storage}"),
        );
        let env = [("TEST_S3_ENDPOINT", s3.endpoint.clone()), ("TEST_S3_KEY", s3.key.clone()), ("TEST_S3_SECRET", s3.secret.clone())];
        load(&job, Path::new("/nonexistent"), &env, end()).await
    });
    let remote = remote.unwrap_or_else(|e| panic!("{e} {:?}", e.hint));
    assert_eq!(remote.report.events.files, local.report.events.files);
    assert_eq!(
        remote.report.events.counts.rows_read,
        local.report.events.counts.rows_read
    );
    assert_same(
        &feature_table(&local),
        &feature_table(&remote),
        "s3 vs local",
    );
}

#[test]
fn s3_with_wrong_credentials_is_an_external_error_without_the_secret() {
    let rt = runtime();
    let err = rt.block_on(async {
        let s3 = start_s3("s3-bad").await;
        s3.upload("lake", &sample().join("profiles"), "p").await;
        let storage = "storage = { endpoint = \"${E}\", region = \"us-east-1\", access_key_id = \"${K}\", secret_access_key = \"${S}\", allow_http = true }";
        let job = xdm_job(&format!("uri = \"s3://lake/p/profiles.parquet\"\nformat = \"parquet\"\n{storage}"), "uri = \"/nonexistent/profiles.parquet\"");
        let env = [("E", s3.endpoint.clone()), ("K", s3.key.clone()), ("S", "not-the-secret-hunter2".to_owned())];
        load(&job, Path::new("."), &env, end()).await
    });
    let e = err
        .err()
        .unwrap_or_else(|| panic!("wrong credentials were accepted"));
    assert!(
        !e.message.contains("hunter2"),
        "secret leaked: {}",
        e.message
    );
    assert!(
        e.message
            .contains("source.events.uri `s3://lake/p/profiles.parquet`"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("SignatureDoesNotMatch") || e.message.contains("403"),
        "{}",
        e.message
    );
    assert_eq!(e.domain, propensity_core::Domain::External, "{}", e.message);
}

#[test]
fn http_source_gives_exactly_the_features_of_local_files() {
    let rt = runtime();
    // Single files: plain HTTP servers cannot list directories.
    let job_local = |dir: &Path| {
        xdm_job(
            &format!("uri = \"{}/events/part-00000.parquet\"", dir.display()),
            &format!("uri = \"{}/profiles/profiles.parquet\"", dir.display()),
        )
    };
    let local = rt
        .block_on(load(&job_local(sample()), sample(), &[], end()))
        .unwrap_or_else(|e| panic!("{e}"));
    let remote = rt.block_on(async {
        let base = start_http(sample()).await;
        let job = xdm_job(
            &format!("uri = \"{base}/events/part-00000.parquet\""),
            &format!("uri = \"{base}/profiles/profiles.parquet\""),
        );
        load(&job, Path::new("/nonexistent"), &[], end()).await
    });
    let remote = remote.unwrap_or_else(|e| panic!("{e} {:?}", e.hint));
    assert_eq!(remote.report.events.files, 1);
    assert_same(
        &feature_table(&local),
        &feature_table(&remote),
        "http vs local",
    );
}

#[test]
fn ndjson_with_nested_objects_gives_the_features_of_parquet() {
    let rt = runtime();
    let json = generate("ndjson", EventFormat::Ndjson, 7);
    let (e, p) = local_sources(sample());
    let parquet = rt
        .block_on(load(&xdm_job(&e, &p), sample(), &[], end()))
        .unwrap_or_else(|e| panic!("{e}"));
    let job = xdm_job(
        &format!("uri = \"{}/events/\"\nformat = \"ndjson\"", json.display()),
        &format!("uri = \"{}/profiles/profiles.parquet\"", json.display()),
    );
    let from_json = rt
        .block_on(load(&job, &json, &[], end()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_json.report.events.format, "NDJSON");
    assert_same(
        &feature_table(&parquet),
        &feature_table(&from_json),
        "ndjson vs parquet",
    );
}

/// A flat job over hand-written files: `profile_id, ts, kind, amount`.
fn flat_job(uri: &str, extra_events: &str) -> String {
    format!(
        r#"
version = 1
name = "flat"
[source.events]
uri = "{uri}"
columns = {{ timestamp = "ts", event_type = "kind" }}
{extra_events}
[goal]
type = "conditions"
outcome = "will_occur"
window = "10d"
conditions = [{{ field = "event_type", op = "eq", value = "buy" }}]
[eligibility]
active_within = "30d"
exclude_events = "event_type = 'test'"
[features]
lookback = "60d"
windows = ["7d", "30d"]
numeric_fields = ["amount"]
[model]
snapshots = 1
[[sinks]]
type = "jsonl"
uri = "out/"
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p.display().to_string()
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn feature(
    l: &propensity_engine::Loaded,
    cutoff: DateTime<Utc>,
    profile: &str,
    name: &str,
) -> Option<f32> {
    let (names, table) = feature_table(l);
    let j = names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no feature {name}"));
    table
        .get(&cutoff.timestamp_micros())?
        .get(profile)
        .map(|r| f32::from_bits(r.1[j]))
}

fn label(l: &propensity_engine::Loaded, cutoff: DateTime<Utc>, profile: &str) -> Option<u8> {
    let (_, table) = feature_table(l);
    table
        .get(&cutoff.timestamp_micros())?
        .get(profile)
        .and_then(|r| r.0)
}

/// Regression test for #16: two orders of one customer on one day with different values
/// were removed as "exact duplicate events" because only time, type and flags were compared.
/// By default every row is an event; identical rows are counted, not removed.
#[test]
fn same_day_orders_are_not_duplicates() {
    let rt = runtime();
    let dir = temp_dir("same-day");
    let csv = "profile_id,ts,kind,amount\n\
               a,2026-05-08,buy,20.5\n\
               a,2026-05-08,buy,7.25\n\
               a,2026-05-08,buy,7.25\n\
               b,2026-05-02,buy,5\n";
    let path = write(&dir, "events.csv", csv);
    let as_of = t("2026-05-21T00:00:00Z");
    // The job reads `amount`: the first two orders differ in it; the last two are identical
    // in every field read.
    let l = rt
        .block_on(load(&flat_job(&path, ""), &dir, &[], as_of))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = &l.report.events.counts;
    assert_eq!(
        (c.events_kept, c.duplicate_events, c.identical_events),
        (4, 0, 1)
    );
    let cut = t("2026-05-11T00:00:00Z");
    assert_eq!(feature(&l, cut, "a", "buy_count_7d"), Some(3.0));
    assert_eq!(feature(&l, cut, "a", "amount_sum_7d"), Some(35.0));
    // With dedupe on, only the identical pair collapses: the other same-day order stays.
    let l = rt
        .block_on(load(&flat_job(&path, "dedupe = true"), &dir, &[], as_of))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = &l.report.events.counts;
    assert_eq!(
        (c.events_kept, c.duplicate_events, c.identical_events),
        (3, 1, 0)
    );
    assert_eq!(feature(&l, cut, "a", "amount_sum_7d"), Some(27.75));
}

#[test]
fn csv_with_epoch_seconds_flat_columns_and_duplicates() {
    let rt = runtime();
    let dir = temp_dir("csv");
    // as-of 2026-05-21; the training cutoff is 10 days earlier: 2026-05-11.
    let e = |s: &str| t(s).timestamp();
    let csv = format!(
        "profile_id,ts,kind,amount\n\
         a,{},view,\n\
         a,{},buy,20.5\n\
         a,{},buy,20.5\n\
         a,{},test,\n\
         b,{},view,\n\
         b,{},buy,5\n",
        e("2026-05-01T10:00:00Z"),
        e("2026-05-08T10:00:00Z"),
        e("2026-05-08T10:00:00Z"), // exact duplicate of the line above
        e("2026-05-09T10:00:00Z"),
        e("2026-05-02T00:00:00Z"),
        e("2026-05-12T00:00:00Z"),
    );
    let path = write(&dir, "events.csv", &csv);
    let l = rt
        .block_on(load(
            &flat_job(&path, "dedupe = true"),
            &dir,
            &[],
            t("2026-05-21T00:00:00Z"),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = &l.report.events.counts;
    assert_eq!(
        (
            c.rows_read,
            c.duplicate_events,
            c.excluded_events,
            c.events_kept
        ),
        (6, 1, 1, 4)
    );
    assert!(
        l.report
            .warnings
            .iter()
            .any(|w| w.code == "duplicate-events" && w.message.contains("dedupe = true")),
        "{:?}",
        l.report.warnings
    );
    let cut = t("2026-05-11T00:00:00Z");
    assert_eq!(feature(&l, cut, "a", "buy_count_7d"), Some(1.0));
    assert_eq!(feature(&l, cut, "a", "amount_sum_30d"), Some(20.5));
    assert_eq!(
        feature(&l, cut, "a", "days_since_last_event"),
        Some(2.5833333)
    );
    assert_eq!(label(&l, cut, "a"), Some(0));
    assert_eq!(
        label(&l, cut, "b"),
        Some(1),
        "b buys on 05-12, inside [05-11, 05-21)"
    );
    assert_eq!(
        feature(&l, cut, "b", "buy_count_30d"),
        Some(0.0),
        "the label purchase is not a feature"
    );
}

#[test]
fn label_window_edges_are_half_open() {
    let rt = runtime();
    let dir = temp_dir("edges");
    // Cutoff 2026-05-11T00:00Z, window 10d: labels from [05-11T00:00, 05-21T00:00).
    let ndjson = [
        (r#"at_cutoff"#, "2026-05-11T00:00:00Z"),
        ("at_window_end", "2026-05-21T00:00:00Z"),
        ("just_inside", "2026-05-20T23:59:59Z"),
        ("just_before", "2026-05-10T23:59:59Z"),
    ]
    .iter()
    .flat_map(|(p, ts)| {
        [
            format!(r#"{{"profile_id":"{p}","ts":"2026-05-05T12:00:00+02:00","kind":"view"}}"#),
            format!(r#"{{"profile_id":"{p}","ts":"{ts}","kind":"buy","amount":7}}"#),
        ]
    })
    .collect::<Vec<_>>()
    .join("\n");
    let path = write(&dir, "events.ndjson", &ndjson);
    // as-of = window end, so the at_window_end purchase is at the as-of time: not read at all.
    let as_of = t("2026-05-21T00:00:00Z");
    let l = rt
        .block_on(load(&flat_job(&path, ""), &dir, &[], as_of))
        .unwrap_or_else(|e| panic!("{e}"));
    let cut = t("2026-05-11T00:00:00Z");
    assert_eq!(
        label(&l, cut, "at_cutoff"),
        Some(1),
        "an event exactly at the cutoff is in the label window"
    );
    assert_eq!(
        feature(&l, cut, "at_cutoff", "buy_count_30d"),
        Some(0.0),
        "…and not a feature"
    );
    assert_eq!(
        label(&l, cut, "at_window_end"),
        Some(0),
        "an event exactly at cutoff + window is outside it"
    );
    assert_eq!(label(&l, cut, "just_inside"), Some(1));
    assert_eq!(
        label(&l, cut, "just_before"),
        Some(0),
        "before the cutoff: a feature, not a label"
    );
    assert_eq!(feature(&l, cut, "just_before", "buy_count_7d"), Some(1.0));
    assert_eq!(feature(&l, cut, "just_before", "amount_max_7d"), Some(7.0));
    // The offset +02:00 is normalised to UTC: the view is at 10:00Z, 5.583 days before the cutoff.
    assert_eq!(
        feature(&l, cut, "at_cutoff", "days_since_last_event"),
        Some(5.5833335)
    );
    assert_eq!(l.report.events.counts.after_as_of, 1);
}

#[test]
fn events_after_a_cutoff_never_change_its_features_end_to_end() {
    // Leakage guard on the whole pipeline: extra events (purchases included) at or after the
    // newest training cutoff change its labels, never its features or who is eligible.
    let rt = runtime();
    let (e, p) = local_sources(sample());
    let base = rt
        .block_on(load(&xdm_job(&e, &p), sample(), &[], end()))
        .unwrap_or_else(|e| panic!("{e}"));
    let c0 = base.plan.training[0];
    let dir = temp_dir("leak");
    std::fs::create_dir_all(dir.join("events")).unwrap_or_else(|e| panic!("{e}"));
    for f in std::fs::read_dir(sample().join("events")).unwrap_or_else(|e| panic!("{e}")) {
        let f = f.unwrap_or_else(|e| panic!("{e}")).path();
        std::fs::copy(
            &f,
            dir.join("events").join(f.file_name().unwrap_or_default()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // One purchase per profile exactly at c0, and a burst of mixed events after it.
    let ids: Vec<String> = base.store.profile_ids.clone();
    let mut rows = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let at = |off: i64| c0 + off;
        rows.push((id.clone(), at(0), "commerce.purchases", Some(50.0)));
        rows.push((
            id.clone(),
            at((i as i64 % 17) * 3_600_000_000),
            "web.webpagedetails.pageViews",
            None,
        ));
        rows.push((
            id.clone(),
            at(86_400_000_000 * (1 + i as i64 % 20)),
            "commerce.productListAdds",
            None,
        ));
    }
    write_xdm_parquet(&dir.join("events/zz-late.parquet"), &rows);
    let (e2, _) = local_sources(&dir);
    let more = rt
        .block_on(load(&xdm_job(&e2, &p), &dir, &[], end()))
        .unwrap_or_else(|e| panic!("{e}"));
    let (na, ta) = feature_table(&base);
    let (nb, tb) = feature_table(&more);
    assert_eq!(na, nb);
    for cutoff in base.plan.training.iter() {
        let (a, b) = (&ta[cutoff], &tb[cutoff]);
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "eligibility changed at {cutoff}"
        );
        for (id, (_, fa)) in a {
            assert_eq!(fa, &b[id].1, "features of {id} at cutoff {cutoff} changed");
        }
    }
    // The labels at c0 did change: every eligible profile now buys at c0.
    assert!(tb[&c0].values().all(|(l, _)| *l == Some(1)));
    assert!(ta[&c0].values().any(|(l, _)| *l == Some(0)));
}

fn write_xdm_parquet(path: &Path, rows: &[(String, i64, &str, Option<f64>)]) {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Float64Array, StringArray, StructArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Fields};
    let schema = propensity_engine::generate::event_schema();
    let price = StructArray::from(vec![(
        Arc::new(Field::new("priceTotal", DataType::Float64, true)),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        )) as ArrayRef,
    )]);
    let order = Fields::from(vec![Field::new("priceTotal", DataType::Float64, true)]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StructArray::from(vec![(
            Arc::new(Field::new("ECID", DataType::Utf8, false)),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.as_str()),
            )) as ArrayRef,
        )])),
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "web"))),
        Arc::new(StructArray::from(vec![(
            Arc::new(Field::new("order", DataType::Struct(order), false)),
            Arc::new(price) as ArrayRef,
        )])),
        // `subscription.expiresAt`: no renewals among these events.
        {
            let DataType::Struct(sub) = schema.field(5).data_type().clone() else {
                panic!("the sixth event column is the subscription struct")
            };
            let expires = arrow::array::new_null_array(sub[0].data_type(), rows.len());
            Arc::new(StructArray::new(sub, vec![expires], None))
        },
    ];
    let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), cols)
        .unwrap_or_else(|e| panic!("{e}"));
    let f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
    let mut w =
        parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap_or_else(|e| panic!("{e}"));
    w.write(&batch).unwrap_or_else(|e| panic!("{e}"));
    w.close().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_missing_timestamp_column_is_a_clear_error_naming_file_and_column() {
    let dir = temp_dir("no-ts");
    let path = write(
        &dir,
        "events.csv",
        "profile_id,time,kind,amount\na,1770000000,view,1\n",
    );
    let job = write(&dir, "job.toml", &flat_job(&path, ""));
    let out = propensity(["dry-run", job.as_str(), "--as-of", "2026-05-21"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("the events in `{path}` do not fit the job")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("source.events.columns.timestamp = \"ts\": no column `ts`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("found: profile_id, time, kind, amount"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"));
}

#[test]
fn a_string_where_a_number_is_required_is_counted_then_fails_above_the_limit() {
    let rt = runtime();
    let dir = temp_dir("nan");
    let mut csv = String::from("profile_id,ts,kind,amount\n");
    for i in 0..100 {
        let amount = if i < 3 {
            "n/a".to_owned()
        } else {
            format!("{}", i % 7)
        };
        csv.push_str(&format!(
            "p{},2026-05-{:02}T10:00:00Z,buy,{amount}\n",
            i % 10,
            1 + i % 20
        ));
    }
    let path = write(&dir, "events.csv", &csv);
    let l = rt
        .block_on(load(
            &flat_job(&path, ""),
            &dir,
            &[],
            t("2026-05-21T00:00:00Z"),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let u = &l.report.events.counts.unconvertible_values;
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].field.as_str(), u[0].present, u[0].unconvertible),
        ("amount", 100, 3)
    );
    assert!(l.report.passed, "3 % is under the 5 % default");
    assert!(
        l.report
            .warnings
            .iter()
            .any(|w| w.code == "unconvertible-values")
    );

    // With a 1 % limit the same file fails, with a message that names the field and the fix.
    let job = write(
        &dir,
        "job.toml",
        &flat_job(&path, "max_invalid_fraction = 0.01"),
    );
    let out = propensity(["dry-run", job.as_str(), "--as-of", "2026-05-21"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("error[unconvertible-values]: field `amount`"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("3 of 100 values are not numbers (3.00 %)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("data checks FAILED"));
}

#[test]
fn a_string_compared_with_a_number_in_a_goal_is_converted_and_counted() {
    let rt = runtime();
    let dir = temp_dir("goal-num");
    let csv = "profile_id,ts,kind,amount\na,2026-05-01T00:00:00Z,view,x\na,2026-05-12T00:00:00Z,buy,12\nb,2026-05-01T00:00:00Z,view,\nb,2026-05-12T00:00:00Z,buy,oops\n";
    let path = write(&dir, "events.csv", csv);
    let job = flat_job(&path, "max_invalid_fraction = 0.9").replace(
        r#"conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
        r#"match = "all"
conditions = [{ field = "event_type", op = "eq", value = "buy" }, { field = "amount", op = "gt", value = 10 }]"#,
    );
    let job = job.replace("numeric_fields = [\"amount\"]", "numeric_fields = []");
    let l = rt
        .block_on(load(&job, &dir, &[], t("2026-05-21T00:00:00Z")))
        .unwrap_or_else(|e| panic!("{e}"));
    let cut = t("2026-05-11T00:00:00Z");
    assert_eq!(label(&l, cut, "a"), Some(1));
    assert_eq!(label(&l, cut, "b"), Some(0), "`oops` is not > 10");
    let u = &l.report.events.counts.unconvertible_values;
    assert_eq!((u[0].present, u[0].unconvertible), (3, 2));
}

#[test]
fn unparseable_dates_are_set_aside_and_counted_or_fail_with_examples() {
    let rt = runtime();
    let dir = temp_dir("dates");
    let mut lines = vec!["profile_id,ts,kind,amount".to_owned()];
    for i in 0..40 {
        lines.push(format!(
            "p{},2026-05-{:02} {:02}:00:00,view,1",
            i % 4,
            1 + i % 9,
            i % 24
        ));
    }
    lines.push("p1,yesterday,view,1".into());
    lines.push("p2,,view,1".into());
    let path = write(&dir, "events.csv", &lines.join("\n"));
    let l = rt
        .block_on(load(
            &flat_job(&path, "max_invalid_fraction = 0.1"),
            &dir,
            &[],
            t("2026-05-21T00:00:00Z"),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = &l.report.events.counts;
    assert_eq!(
        (c.unparseable_timestamp, c.null_timestamp, c.events_kept),
        (1, 1, 40)
    );
    assert_eq!(
        c.unparseable_timestamp_examples,
        vec!["yesterday".to_owned()]
    );
    assert!(l.report.passed);

    let job = write(
        &dir,
        "job.toml",
        &flat_job(&path, "max_invalid_fraction = 0.01"),
    );
    let report = dir.join("report.json");
    let out = propensity([
        "dry-run",
        job.as_str(),
        "--as-of",
        "2026-05-21",
        "--report",
        &report.display().to_string(),
    ]);
    assert_eq!(out.code, 2);
    assert!(
        out.stdout.contains("error[invalid-events]: 2 of 42 events"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("1 with an unparseable timestamp (e.g. \"yesterday\")"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "write RFC 3339 times (2026-05-01T12:00:00Z) or set source.events.timestamp_format"
        ),
        "{}",
        out.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(json["passed"], false);
    assert_eq!(json["events"]["unparseable_timestamp"], 1);
    assert_eq!(json["problems"][0]["code"], "invalid-events");
}

#[test]
fn future_events_are_set_aside() {
    let rt = runtime();
    let dir = temp_dir("future");
    let csv =
        "profile_id,ts,kind,amount\na,2026-05-01T00:00:00Z,view,\na,2099-01-01T00:00:00Z,view,\n";
    let path = write(&dir, "events.csv", csv);
    let l = rt
        .block_on(load(
            &flat_job(&path, "max_invalid_fraction = 0.9"),
            &dir,
            &[],
            t("2026-05-21T00:00:00Z"),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.report.events.counts.future_events, 1);
    assert_eq!(
        l.report.events.counts.last_event.as_deref(),
        Some("2026-05-01T00:00:00Z")
    );
}

/// A profile id no sink can key a row by (a NUL, a line break, over 1024 bytes: PostgreSQL
/// refused them and stopped publishing for good) is set aside when the events are read,
/// counted with examples, and never reaches scoring or a sink.
#[test]
fn unusable_profile_ids_are_set_aside_and_counted() {
    let rt = runtime();
    let dir = temp_dir("bad-ids");
    let long = "x".repeat(3000);
    let json = [
        r#"{"profile_id":"a","ts":"2026-05-01T00:00:00Z","kind":"view","amount":1}"#.to_owned(),
        r#"{"profile_id":"nul\u0000id","ts":"2026-05-02T00:00:00Z","kind":"view"}"#.to_owned(),
        r#"{"profile_id":"two\nlines","ts":"2026-05-03T00:00:00Z","kind":"view"}"#.to_owned(),
        format!(r#"{{"profile_id":"{long}","ts":"2026-05-04T00:00:00Z","kind":"view"}}"#),
        r#"{"profile_id":"b","ts":"2026-05-05T00:00:00Z","kind":"buy"}"#.to_owned(),
    ]
    .join("\n");
    let path = write(&dir, "events.ndjson", &json);
    let l = rt
        .block_on(load(
            &flat_job(&path, "max_invalid_fraction = 0.9"),
            &dir,
            &[],
            t("2026-05-21T00:00:00Z"),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = &l.report.events.counts;
    assert_eq!(c.unusable_profile_id, 3, "{c:?}");
    assert_eq!(c.invalid(), 3);
    assert_eq!(c.events_kept, 2);
    let mut ids = l.store.profile_ids.clone();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    assert!(
        c.unusable_profile_id_examples[0].contains(r#""nul\0id""#),
        "{c:?}"
    );
    let warning = l
        .report
        .warnings
        .iter()
        .find(|f| f.code == "unusable-profile-ids")
        .unwrap_or_else(|| panic!("no warning: {:?}", l.report.warnings));
    assert!(warning.message.contains("3 events"), "{}", warning.message);
}

/// A zero-byte file among the sources (an export still being written) is left out with a
/// warning instead of failing the read; a folder of only empty files is a clear error.
#[test]
fn empty_source_files_are_left_out_with_a_warning() {
    let rt = runtime();
    let dir = temp_dir("empty-files");
    let events = dir.join("events");
    std::fs::create_dir_all(&events).unwrap_or_else(|e| panic!("{e}"));
    write(
        &events,
        "a.csv",
        "profile_id,ts,kind,amount\na,2026-05-01T00:00:00Z,view,1\nb,2026-05-02T00:00:00Z,buy,2\n",
    );
    write(&events, "b.csv", "");
    let uri = format!("{}/", events.display());
    let job = flat_job(&uri, "format = \"csv\"");
    let l = rt
        .block_on(load(&job, &dir, &[], t("2026-05-21T00:00:00Z")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.report.events.counts.events_kept, 2);
    assert_eq!(l.report.events.files, 1);
    let w = l
        .report
        .warnings
        .iter()
        .find(|f| f.code == "empty-files")
        .unwrap_or_else(|| panic!("no warning: {:?}", l.report.warnings));
    assert!(w.message.contains("b.csv"), "{}", w.message);
    std::fs::write(events.join("a.csv"), "").unwrap_or_else(|e| panic!("{e}"));
    let e = rt
        .block_on(load(&job, &dir, &[], t("2026-05-21T00:00:00Z")))
        .err()
        .unwrap_or_else(|| panic!("loaded a folder of empty files"));
    assert!(e.to_string().contains("every file there is empty"), "{e}");
}

/// A source file that cannot be read is named in the error, and for NDJSON so is its line
/// (the reader said "line 1" of the record, of no file).
#[test]
fn a_bad_ndjson_line_is_named_by_file_and_line() {
    let rt = runtime();
    let dir = temp_dir("bad-ndjson");
    let events = dir.join("events");
    std::fs::create_dir_all(&events).unwrap_or_else(|e| panic!("{e}"));
    write(
        &events,
        "a.ndjson",
        "{\"profile_id\":\"a\",\"ts\":\"2026-05-01T00:00:00Z\",\"kind\":\"view\",\"amount\":1}\n",
    );
    write(
        &events,
        "b.ndjson",
        "{\"profile_id\":\"b\",\"ts\":\"2026-05-01T00:00:00Z\",\"kind\":\"buy\",\"amount\":1}\n{\"profile_id\":\"c\",\"ts\":\n",
    );
    let job = flat_job(&format!("{}/", events.display()), "format = \"ndjson\"");
    let e = rt
        .block_on(load(&job, &dir, &[], t("2026-05-21T00:00:00Z")))
        .err()
        .unwrap_or_else(|| panic!("read a broken file"))
        .to_string();
    assert!(e.contains("b.ndjson` line 2"), "{e}");
}

fn demo_job_on(dir: &Path, tweak: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(
        propensity_tests::repo_root().join("jobs/conversion-purchase-30d.toml"),
    )
    .unwrap_or_default();
    let text = text
        .replace(
            "../data/demo/events/*.parquet",
            &format!("{}/events/*.parquet", dir.display()),
        )
        .replace(
            "../data/demo/profiles/*.parquet",
            &format!("{}/profiles/*.parquet", dir.display()),
        );
    let job = dir.join("job.toml");
    std::fs::write(&job, tweak(text)).unwrap_or_else(|e| panic!("{e}"));
    job.display().to_string()
}

#[test]
fn dry_run_of_the_example_job_prints_counts_per_cutoff_and_a_verdict() {
    let dir = generate("dry-run", EventFormat::Parquet, 11);
    let job = demo_job_on(&dir, |t| t);
    let out = propensity(["dry-run", job.as_str(), "--as-of", "2026-06-01"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("training cutoff"), "{}", out.stdout);
    // Stride 10d (a third of the 30-day window): four fit cutoffs from V = T - 30d, and the
    // search cutoffs a window before them (V - 30d is both).
    for cutoff in [
        "2026-05-02T00:00:00Z",
        "2026-04-22T00:00:00Z",
        "2026-04-12T00:00:00Z",
        "2026-04-02T00:00:00Z",
        "2026-03-23T00:00:00Z",
        "2026-03-13T00:00:00Z",
        "2026-03-03T00:00:00Z",
    ] {
        assert!(
            out.stdout.contains(cutoff),
            "cutoff {cutoff} missing:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains("verdict     sufficient"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("data checks passed"));

    // JSON: the same report plus the feature catalogue with human labels.
    let out = propensity([
        "dry-run",
        job.as_str(),
        "--as-of",
        "2026-06-01",
        "--format",
        "json",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(
        v["data_checks"]["cutoffs"].as_array().map(Vec::len),
        Some(7)
    );
    let labels: Vec<&str> = v["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["label"].as_str())
        .collect();
    assert!(labels.contains(&"Days since last purchase"), "{labels:?}");
    assert!(
        labels.contains(&"Email clicks in the last 30 days"),
        "{labels:?}"
    );
}

#[test]
fn dry_run_with_too_few_positives_says_so_and_suggests_a_fix() {
    let dir = generate("dry-run-short", EventFormat::Parquet, 12);
    // About 540 buyers over the seven cutoffs (four fit, three more for the search): short of
    // a minimum of 600.
    let job = demo_job_on(&dir, |t| {
        t.replace("min_positives = 200", "min_positives = 600")
    });
    let out = propensity(["dry-run", job.as_str(), "--as-of", "2026-06-01"]);
    assert_eq!(
        out.code, 0,
        "insufficient data is not an error: {}",
        out.stderr
    );
    assert!(
        out.stdout.contains("verdict     insufficient:"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("positives (minimum 600)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("fall back to a simple ranking model"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("suggestions"), "{}", out.stdout);
    // The default stride follows the window, so a shorter window gives more cutoffs and more
    // positive rows; a longer one needs more history than this data has.
    assert!(
        out.stdout.contains("goal.window = \"15d\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(", enough"),
        "at least one change reaches the minimum:\n{}",
        out.stdout
    );
}

#[test]
fn the_generator_is_deterministic_by_seed() {
    let a = generate("det-a", EventFormat::Parquet, 5);
    let b = generate("det-b", EventFormat::Parquet, 5);
    let c = generate("det-c", EventFormat::Parquet, 6);
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    for f in [
        "events/part-00000.parquet",
        "profiles/profiles.parquet",
        "truth/truth.parquet",
    ] {
        assert!(read(&a, f) == read(&b, f), "{f} differs for the same seed");
        assert!(
            read(&a, f) != read(&c, f),
            "{f} is the same for another seed"
        );
    }
}

/// Events for the goal-operator cases. Cutoff 2026-05-11, window 10d; everyone viewed on
/// 05-05 (eligible). In the label window: a buys 50 on web with a coupon, b buys 5 in the app,
/// c buys 20 by email and 30 on web, d only views.
const GOAL_EVENTS: &str = "profile_id,ts,kind,amount,channel,coupon
a,2026-05-05T10:00:00Z,view,,web,
b,2026-05-05T10:00:00Z,view,,app,
c,2026-05-05T10:00:00Z,view,,web,
d,2026-05-05T10:00:00Z,view,,web,
a,2026-05-12T10:00:00Z,buy,50,web,SPRING26
b,2026-05-13T10:00:00Z,buy,5,app,
c,2026-05-14T10:00:00Z,buy,20,email,
c,2026-05-15T10:00:00Z,buy,30,web,
d,2026-05-15T10:00:00Z,view,,web,
";

fn goal_job(events: &str, profiles: &str, goal: &str, eligibility: &str) -> String {
    let outcome = if goal.contains("outcome") {
        ""
    } else {
        "outcome = \"will_occur\""
    };
    format!(
        r#"
version = 1
name = "ops"
[source.events]
uri = "{events}"
format = "csv"
columns = {{ timestamp = "ts", event_type = "kind" }}
[source.profiles]
uri = "{profiles}"
[goal]
type = "conditions"
window = "10d"
{outcome}
{goal}
[eligibility]
active_within = "30d"
{eligibility}
[model]
snapshots = 1
[[sinks]]
type = "jsonl"
uri = "out/"
"#
    )
}

#[test]
fn goal_operators_outcomes_min_count_and_eligibility_rules() {
    let rt = runtime();
    let dir = temp_dir("ops");
    let events = write(&dir, "events.csv", GOAL_EVENTS);
    let profiles = write(
        &dir,
        "profiles.csv",
        "profile_id,tier,country\na,gold,DE\nb,silver,DE\nc,gold,FR\nd,bronze,US\n",
    );
    // The events through a file:// URL, the profiles as a plain path.
    let events_url = format!("file://{events}");
    let cut = t("2026-05-11T00:00:00Z");
    let as_of = t("2026-05-21T00:00:00Z");
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
            "",
            "abc",
        ),
        (
            r#"conditions = [{ field = "event_type", op = "ne", value = "view" }]"#,
            "",
            "abc",
        ),
        (
            r#"conditions = [{ field = "amount", op = "gt", value = 20 }]"#,
            "",
            "ac",
        ),
        (
            r#"conditions = [{ field = "amount", op = "ge", value = 20.0 }]"#,
            "",
            "ac",
        ),
        (
            r#"conditions = [{ field = "amount", op = "lt", value = 20 }]"#,
            "",
            "b",
        ),
        (
            r#"conditions = [{ field = "amount", op = "le", value = 20 }]"#,
            "",
            "bc",
        ),
        (
            r#"conditions = [{ field = "channel", op = "in", value = ["app", "email"] }]"#,
            "",
            "bc",
        ),
        (
            r#"match = "all"
conditions = [{ field = "event_type", op = "eq", value = "buy" }, { field = "channel", op = "not_in", value = ["web", "app"] }]"#,
            "",
            "c",
        ),
        (
            r#"conditions = [{ field = "coupon", op = "contains", value = "SPR" }]"#,
            "",
            "a",
        ),
        (
            r#"conditions = [{ field = "coupon", op = "exists" }]"#,
            "",
            "a",
        ),
        (
            r#"match = "all"
conditions = [{ field = "event_type", op = "eq", value = "buy" }, { field = "coupon", op = "exists", value = false }]"#,
            "",
            "bc",
        ),
        (
            r#"match = "any"
conditions = [{ field = "amount", op = "gt", value = 40 }, { field = "channel", op = "eq", value = "app" }]"#,
            "",
            "ab",
        ),
        (
            r#"min_count = 2
conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
            "",
            "c",
        ),
        (
            r#"outcome = "will_not_occur"
conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
            "",
            "d",
        ),
        // Eligibility: only gold profiles are scored; then DE profiles are excluded.
        (
            r#"conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
            r#"include = "tier = 'gold'""#,
            "ac",
        ),
        (
            r#"conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
            r#"exclude = "country IN ('DE')""#,
            "c",
        ),
        (
            r#"conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
            r#"exclude_events = "amount >= 20""#,
            "b",
        ),
    ];
    for (goal, eligibility, positives) in cases {
        let job = goal_job(&events_url, &profiles, goal, eligibility);
        let l = rt
            .block_on(load(&job, &dir, &[], as_of))
            .unwrap_or_else(|e| panic!("{goal} {eligibility}: {e}"));
        let (_, table) = feature_table(&l);
        let rows = &table[&cut.timestamp_micros()];
        let got: String = rows
            .iter()
            .filter(|(_, r)| r.0 == Some(1))
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(&got, positives, "goal {goal} / eligibility {eligibility}");
        if eligibility.starts_with("include") {
            assert_eq!(
                rows.keys().map(String::as_str).collect::<String>(),
                "ac",
                "include keeps gold profiles only"
            );
        }
        if eligibility.starts_with("exclude =") {
            assert_eq!(
                rows.keys().map(String::as_str).collect::<String>(),
                "cd",
                "exclude drops DE profiles"
            );
        }
    }
    // A profile last seen 20 days before the cutoff is not active within 5 days.
    let job = goal_job(
        &events_url,
        &profiles,
        r#"conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
        "",
    )
    .replace("active_within = \"30d\"", "active_within = \"5d\"");
    let l = rt
        .block_on(load(&job, &dir, &[], as_of))
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, table) = feature_table(&l);
    assert!(
        table[&cut.timestamp_micros()].is_empty(),
        "views on 05-05 are 6 days before the cutoff"
    );
}

#[test]
fn a_predicate_over_a_missing_field_or_a_mistyped_comparison_is_an_error() {
    let rt = runtime();
    let dir = temp_dir("ops-bad");
    let events = write(&dir, "events.csv", GOAL_EVENTS);
    let profiles = write(&dir, "profiles.csv", "profile_id,tier\na,gold\n");
    let job = goal_job(
        &events,
        &profiles,
        r#"conditions = [{ field = "ammount", op = "gt", value = 1 }, { field = "channel", op = "eq", value = true }]"#,
        r#"include = "tierr = 'gold'""#,
    );
    let e = rt
        .block_on(load(&job, &dir, &[], t("2026-05-21T00:00:00Z")))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert!(
        e.message.contains(
            "goal.conditions[0] (field `ammount`): no column `ammount`; did you mean `amount`?"
        ),
        "{}",
        e.message
    );
    assert!(e.message.contains("goal.conditions[1] (field `channel`): cannot compare `channel` (string) with a boolean value"), "{}", e.message);
    assert_eq!(e.domain, propensity_core::Domain::User);
    // The profile predicate is checked once the events fit.
    let job = goal_job(
        &events,
        &profiles,
        r#"conditions = [{ field = "amount", op = "gt", value = 1 }]"#,
        r#"include = "tierr = 'gold'""#,
    );
    let e = rt
        .block_on(load(&job, &dir, &[], t("2026-05-21T00:00:00Z")))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert!(
        e.message.contains(
            "eligibility.include `tierr = 'gold'`: no column `tierr`; did you mean `tier`?"
        ),
        "{}",
        e.message
    );
}

#[test]
fn review_regressions_names_order_identifiers_and_redaction() {
    let rt = runtime();
    let dir = temp_dir("review");
    let mut events = String::from("profile_id,ts,kind,amount,channel,coupon\n");
    let mut profiles = String::from("profile_id,email,tier\n");
    for i in (0..30).rev() {
        events.push_str(&format!(
            "p{i:02},2026-05-0{}T10:00:00Z,view,,web,\n",
            1 + i % 9
        ));
        profiles.push_str(&format!(
            "p{i:02},user{i}@example.com,{}\n",
            if i % 2 == 0 { "gold" } else { "silver" }
        ));
    }
    let events = write(&dir, "events.csv", &events);
    let profiles = write(&dir, "profiles.csv", &profiles);
    let job = goal_job(
        &events,
        &profiles,
        r#"conditions = [{ field = "event_type", op = "eq", value = "buy" }]"#,
        "",
    )
    .replace(
        "[model]",
        "[features]\ncustom_events = { event = \"event_type = 'view'\" }\n[model]",
    );
    let l = rt
        .block_on(load(&job, &dir, &[], t("2026-05-21T00:00:00Z")))
        .unwrap_or_else(|e| panic!("{e}"));
    // A custom event named `event` does not collide with the built-in event counts.
    let (names, _) = feature_table(&l);
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "duplicate feature names in {names:?}"
    );
    assert!(names.contains(&"event_count_7d_2".to_owned()), "{names:?}");
    // Emails are not one-hot encoded into feature names; the tier is.
    assert!(!names.iter().any(|n| n.contains("example")), "{names:?}");
    assert!(names.contains(&"attr_tier_gold".to_owned()));
    assert!(
        l.report
            .warnings
            .iter()
            .any(|w| w.code == "attribute-not-a-category" && w.message.contains("email"))
    );
    // Profiles are in id order whatever order they were read in (the file lists p29 first).
    assert!(l.store.profile_ids.windows(2).all(|w| w[0] < w[1]));

    // A failing store error does not echo the value of a `${NAME}`.
    let job = flat_job("${DATA_URL}", "format = \"parquet\"");
    let env = [(
        "DATA_URL",
        "http://127.0.0.1:9/token-abcdef123/events.parquet".to_owned(),
    )];
    let e = rt
        .block_on(load(&job, &dir, &env, t("2026-05-21T00:00:00Z")))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert!(!e.message.contains("token-abcdef123"), "{}", e.message);
    assert!(e.message.contains("`${DATA_URL}`"), "{}", e.message);
    assert!(
        e.message.contains("***"),
        "the store's message quoted the URL, redacted: {}",
        e.message
    );
}

#[test]
fn the_generator_hits_the_requested_event_count() {
    let dir = temp_dir("gen-count");
    let mut o = propensity_engine::generate::GenerateOptions::new(&dir, 600, end());
    o.days = 120;
    o.target_events = Some(40_000);
    let s = propensity_engine::generate::generate(&o).unwrap_or_else(|e| panic!("{e}"));
    let off = (s.events as f64 - 40_000.0).abs() / 40_000.0;
    assert!(off < 0.05, "{} events for 40,000 requested", s.events);
}

/// Regression test for #16: `lookback = 365d` left 60 % of eligible profiles without events
/// to compute features from, and `active_within = 90d` scored 4k of 23.5k customers, both
/// without a word; a short-history hint blamed the lookback when `active_within` set the span.
#[test]
fn settings_that_drop_or_blank_profiles_warn_with_counts_and_the_right_key() {
    let rt = runtime();
    let dir = temp_dir("coverage");
    // Ten customers; seven last bought more than 90 days before the as-of time (2026-05-21),
    // three of them more than 200 days before.
    let mut csv = String::from("profile_id,ts,kind,amount\n");
    for (id, day) in [
        ("a", "2026-05-10"),
        ("b", "2026-05-01"),
        ("c", "2026-04-20"),
        ("d", "2026-01-10"),
        ("e", "2025-12-20"),
        ("f", "2025-12-01"),
        ("g", "2025-11-15"),
        ("h", "2025-09-01"),
        ("i", "2025-08-01"),
        ("j", "2025-07-01"),
    ] {
        csv.push_str(&format!("{id},{day},buy,10\n"));
    }
    let path = write(&dir, "events.csv", &csv);
    let as_of = t("2026-05-21T00:00:00Z");
    let job = |eligibility: &str, lookback: &str| {
        flat_job(&path, "")
            .replace(
                "active_within = \"30d\"",
                &format!("active_within = \"{eligibility}\""),
            )
            .replace("lookback = \"60d\"", &format!("lookback = \"{lookback}\""))
    };
    let find = |l: &propensity_engine::Loaded, code: &str| {
        l.report.warnings.iter().find(|w| w.code == code).cloned()
    };
    // 90 days of eligibility: 3 of 10 scored.
    let l = rt
        .block_on(load(&job("90d", "all"), &dir, &[], as_of))
        .unwrap_or_else(|e| panic!("{e}"));
    let w = find(&l, "eligibility-leaves-out-profiles").expect("a warning");
    assert!(
        w.message.contains("scores 3 of the 10") && w.message.contains("7 (70 %)"),
        "{}",
        w.message
    );
    assert!(w.hint.contains("eligibility.active_within"), "{}", w.hint);
    assert!(find(&l, "lookback-blanks-profiles").is_none());
    // A year of eligibility but a 100-day lookback: 7 of the 10 eligible have no event in it.
    let l = rt
        .block_on(load(&job("365d", "100d"), &dir, &[], as_of))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(find(&l, "eligibility-leaves-out-profiles").is_none());
    let w = find(&l, "lookback-blanks-profiles").expect("a warning");
    assert!(w.message.contains("7 of 10 eligible"), "{}", w.message);
    assert!(
        w.hint.contains("features.lookback") && w.hint.contains("365d"),
        "{}",
        w.hint
    );
    // The eligibility span reaches before the first event, the lookback does not: that is
    // no short history (the data may start with the business), and nothing blames the
    // lookback.
    assert!(
        find(&l, "short-history").is_none(),
        "{:?}",
        l.report.warnings
    );
    // Defaults (all history, eligibility covering everyone): no warning.
    let l = rt
        .block_on(load(&job("365d", "all"), &dir, &[], as_of))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(find(&l, "eligibility-leaves-out-profiles").is_none());
    assert!(find(&l, "lookback-blanks-profiles").is_none());
    assert!(
        find(&l, "short-history").is_none(),
        "{:?}",
        l.report.warnings
    );
    // A lookback that does reach before the data is named.
    let l = rt
        .block_on(load(&job("365d", "400d"), &dir, &[], as_of))
        .unwrap_or_else(|e| panic!("{e}"));
    let w = find(&l, "short-history").expect("a warning");
    assert!(w.message.contains("features.lookback"), "{}", w.message);
    assert!(w.hint.contains("features.lookback"), "{}", w.hint);
}
