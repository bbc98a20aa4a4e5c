//! Goal plugins through the real loader (issue #6): the four example plugins and the fault
//! fixtures are `cdylib`s that `make test` builds into `target/<profile>/` before the tests
//! run; the template is built here from scratch, as the guide tells an author to.
//!
//! Every fault ends in an error that names the plugin, with nothing published, in this very
//! process (the runs below are in-process: the test goes on after each).

use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, Float64Array, StringArray, StructArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, TimeUnit};
use propensity_plugin::Window;
use propensity_plugin::host::{self, Plugin};
use propensity_tests::{Output, propensity, repo_root};
use std::sync::Arc;

use crate::support::temp_dir;

const DAY: i64 = 86_400_000_000;
const PLUGINS: [&str; 4] = [
    "repeat_purchase",
    "subscription_lapse",
    "funnel_completion",
    "spend_threshold",
];

/// The built library of plugin crate `name` (next to this test binary's folder).
fn library(name: &str) -> PathBuf {
    host::locate(name, &repo_root(), &host::search_path(None, None)).unwrap_or_else(|e| {
        panic!(
            "{e}: the plugin libraries are built by `make test` (`make plugins`) before the tests run"
        )
    })
}

/// A path as the CLI output shows it (relative to the repository root).
fn shown(p: &Path) -> String {
    p.strip_prefix(repo_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

fn params(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    json.as_object().cloned().unwrap_or_default()
}

/// Events as the host sends them: (profile, day, type, extra field value).
fn events(rows: &[(&str, i64, &str)], extra: Option<(&str, DataType, ArrayRef)>) -> StructArray {
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut cols: Vec<(Arc<Field>, ArrayRef)> = vec![
        (
            Arc::new(Field::new("profile_id", DataType::Utf8, false)),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        ),
        (
            Arc::new(Field::new("timestamp", time, false)),
            Arc::new(
                TimestampMicrosecondArray::from(rows.iter().map(|r| r.1 * DAY).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        ),
        (
            Arc::new(Field::new("event_type", DataType::Utf8, false)),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
        ),
    ];
    if let Some((name, ty, a)) = extra {
        cols.push((Arc::new(Field::new(name, ty, true)), a));
    }
    StructArray::from(cols)
}

#[test]
fn the_four_plugins_label_through_the_real_loader() {
    let window = Window {
        start: 10 * DAY,
        end: 40 * DAY,
    };
    let ids = StringArray::from(vec!["a", "b", "c"]);
    for name in PLUGINS {
        let p = Plugin::load(&library(name), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.metadata().name, name);
        assert_eq!(p.sha256(), host::sha256_file(p.path()).unwrap_or_default());
        let (params, events, want) = match name {
            "repeat_purchase" => (
                params(serde_json::json!({"min_orders": 2})),
                events(
                    &[
                        ("a", 11, "commerce.purchases"),
                        ("a", 39, "commerce.purchases"),
                        ("b", 12, "commerce.purchases"),
                        ("c", 12, "web.webpagedetails.pageViews"),
                    ],
                    None,
                ),
                vec![true, false, false],
            ),
            "funnel_completion" => (
                params(serde_json::json!({"steps": ["view", "cart", "checkout"], "within": "1d"})),
                events(
                    &[
                        ("a", 11, "view"),
                        ("a", 11, "cart"),
                        ("a", 11, "checkout"),
                        ("b", 11, "cart"),
                        ("b", 12, "view"),
                        ("b", 12, "checkout"),
                        ("c", 11, "view"),
                        ("c", 12, "cart"),
                        ("c", 15, "checkout"),
                    ],
                    None,
                ),
                vec![true, false, false],
            ),
            "spend_threshold" => (
                params(serde_json::json!({"min_total": 100.0})),
                events(
                    &[
                        ("a", 11, "commerce.purchases"),
                        ("a", 20, "commerce.purchases"),
                        ("b", 11, "commerce.purchases"),
                    ],
                    Some((
                        "commerce.order.priceTotal",
                        DataType::Float64,
                        Arc::new(Float64Array::from(vec![Some(60.0), Some(40.0), Some(99.0)])),
                    )),
                ),
                vec![true, false, false],
            ),
            _ => {
                // a: renewed before the window, expires inside it, never renews: lapses.
                // b: expires inside the window but renews first. c: expiry after the window.
                let expiry = TimestampMicrosecondArray::from(vec![
                    Some(20 * DAY),
                    Some(20 * DAY),
                    Some(50 * DAY),
                    Some(80 * DAY),
                ])
                .with_timezone("UTC");
                (
                    params(serde_json::json!({})),
                    events(
                        &[
                            ("a", 0, "subscription.renewed"),
                            ("b", 0, "subscription.autoRenewed"),
                            ("b", 18, "subscription.autoRenewed"),
                            ("c", 5, "subscription.renewed"),
                        ],
                        Some((
                            "subscription.expiresAt",
                            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                            Arc::new(expiry),
                        )),
                    ),
                    vec![true, false, false],
                )
            }
        };
        let v = p
            .validate(&params)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "subscription_lapse" {
            assert!(v.lookback_micros >= 300 * DAY, "{v:?}");
        }
        let got = p
            .label(&params, &ids, &events, window)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
}

/// A job over the test sample data with a plugin goal and a JSONL sink under `dir/out`.
fn plugin_job(dir: &Path, goal: &str) -> PathBuf {
    let data = crate::support::sample().display().to_string();
    let text = format!(
        r#"
version = 1
name = "plugin-fault"

[source.events]
uri = "{data}/events/*.parquet"
columns = {{ profile_id = "identityMap.ECID", timestamp = "timestamp", event_type = "eventType" }}

[goal]
type = "plugin"
window = "30d"
{goal}

[model]
snapshots = 2
min_positives = 5
min_negatives = 5

[[sinks]]
type = "jsonl"
uri = "out/"
"#
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn run_in_process(job: &Path, state: &Path) -> Output {
    propensity([
        "run".into(),
        job.as_os_str().to_owned(),
        "--state".into(),
        state.as_os_str().to_owned(),
        "--as-of".into(),
        "2026-06-01".into(),
    ])
}

#[test]
fn every_plugin_fault_is_a_clear_error_with_nothing_published_and_the_process_alive() {
    let repeat = library("repeat_purchase");
    let faulty = library("faulty_goal");
    let old = library("old_abi_goal");
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "panic",
            format!(
                "plugin = \"{}\"\nparams = {{ mode = \"panic\" }}",
                faulty.display()
            ),
            vec![
                "plugin `faulty_goal`".into(),
                "panicked".into(),
                "deliberate panic".into(),
            ],
        ),
        (
            "other ABI version",
            format!("plugin = \"{}\"", old.display()),
            vec![
                shown(&old),
                "plugin ABI version 0".into(),
                "speaks version 1".into(),
            ],
        ),
        (
            "hash mismatch",
            format!(
                "plugin = \"repeat_purchase\"\nsha256 = \"{}\"",
                "0".repeat(64)
            ),
            vec![
                shown(&repeat),
                "it was not loaded".into(),
                host::sha256_file(&repeat).unwrap_or_default(),
            ],
        ),
        (
            "bad parameters",
            "plugin = \"repeat_purchase\"\nparams = { min_orders = 0, min_ordres = 2 }".into(),
            vec![
                "plugin `repeat_purchase`".into(),
                "params.min_ordres: unknown parameter".into(),
            ],
        ),
        (
            "labels of the wrong length",
            format!(
                "plugin = \"{}\"\nparams = {{ mode = \"wrong_length\" }}",
                faulty.display()
            ),
            vec![
                "plugin `faulty_goal`".into(),
                "labels for".into(),
                "once".into(),
            ],
        ),
        (
            "a label for an unknown profile",
            format!(
                "plugin = \"{}\"\nparams = {{ mode = \"unknown_profile\" }}",
                faulty.display()
            ),
            vec![
                "plugin `faulty_goal`".into(),
                "`no-such-profile`".into(),
                "not given".into(),
            ],
        ),
    ];
    for (what, goal, needles) in cases {
        let dir = temp_dir(&format!("plugin-fault-{}", what.replace(' ', "-")));
        let job = plugin_job(&dir, &goal);
        // `validate` catches what can be caught before a run: all but the labelling faults.
        let v = propensity(["validate".into(), job.as_os_str().to_owned()]);
        let at_validate = !matches!(
            what,
            "panic" | "labels of the wrong length" | "a label for an unknown profile"
        );
        if at_validate {
            assert_eq!(v.code, 2, "{what}: validate\n{}", v.stderr);
            for n in &needles {
                assert!(
                    v.stderr.contains(n.as_str()),
                    "{what}: validate misses `{n}`:\n{}",
                    v.stderr
                );
            }
            assert!(v.stderr.contains("error[plugin]"), "{what}: {}", v.stderr);
        } else {
            assert_eq!(v.code, 0, "{what}: validate\n{}{}", v.stdout, v.stderr);
        }
        let out = run_in_process(&job, &dir.join("state"));
        assert_eq!(out.code, 2, "{what}: run\n{}{}", out.stdout, out.stderr);
        for n in &needles {
            assert!(
                out.stderr.contains(n.as_str()),
                "{what}: run misses `{n}`:\n{}",
                out.stderr
            );
        }
        assert!(
            !dir.join("out").join("current.json").exists(),
            "{what}: something was published"
        );
    }
    // Still here, and the plugins still work after all of that.
    let p = Plugin::load(&faulty, None).unwrap_or_else(|e| panic!("{e}"));
    let ok = p
        .label(
            &params(serde_json::json!({"mode": "ok"})),
            &StringArray::from(vec!["a"]),
            &events(&[("a", 1, "x")], None),
            Window {
                start: 0,
                end: 2 * DAY,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok, [true]);
}

#[test]
fn plugins_list_shows_the_four_plugins_with_their_hashes() {
    let out = propensity(["plugins", "list", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    let listed = doc["plugins"].as_array().cloned().unwrap_or_default();
    for name in PLUGINS {
        let p = listed
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {}", out.stdout));
        let hash = host::sha256_file(&library(name)).unwrap_or_default();
        assert_eq!(p["sha256"], hash.as_str(), "{name}");
        assert!(p["version"].is_string() && p["params"].is_array(), "{p}");
    }
    let text = propensity(["plugins", "list"]);
    for name in PLUGINS {
        assert!(text.stdout.contains(name), "{}", text.stdout);
    }
    // `check` prints the hash to pin and accepts good parameters, refuses bad ones.
    let lib = library("spend_threshold");
    let ok = propensity([
        "plugins".into(),
        "check".into(),
        lib.as_os_str().to_owned(),
        "--params".into(),
        r#"{"min_total": 50}"#.into(),
    ]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout
            .contains("reads fields: commerce.order.priceTotal"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout
            .contains(&host::sha256_file(&lib).unwrap_or_default())
    );
    let bad = propensity([
        "plugins".into(),
        "check".into(),
        lib.as_os_str().to_owned(),
        "--params".into(),
        r#"{"min_total": -1}"#.into(),
    ]);
    assert_eq!(bad.code, 2, "{}", bad.stdout);
    assert!(bad.stdout.contains("invalid params"), "{}", bad.stdout);
}

#[test]
fn each_plugin_example_job_trains_and_scores_end_to_end() {
    let rt = crate::support::runtime();
    let receiver = Arc::new(crate::sinks::Receiver::default());
    let hook = rt.block_on(crate::sinks::start_receiver(receiver.clone()));
    for name in [
        "plugin-repeat-purchase",
        "plugin-subscription-lapse",
        "plugin-funnel-completion",
        "plugin-spend-threshold",
    ] {
        let dir = temp_dir(&format!("example-{name}"));
        let data = crate::support::sample().display().to_string();
        let text = std::fs::read_to_string(repo_root().join(format!("jobs/{name}.toml")))
            .unwrap_or_else(|e| panic!("{e}"))
            .replace("../data/demo/scores/", "out/")
            .replace("../data/demo/", &format!("{data}/"))
            .replace("https://crm.example.com/hooks/propensity/scores", &hook);
        // The shared sample is small: with the default stride (a third of the 90-day window)
        // its repeat buyers fall a little short of the default 200 positives.
        let text = if name == "plugin-repeat-purchase" {
            format!("{text}\n[model]\nmin_positives = 100\n")
        } else {
            text
        };
        let job = dir.join(format!("{name}.toml"));
        std::fs::write(&job, text).unwrap_or_else(|e| panic!("{e}"));
        let state = dir.join("state");
        // A child process: the webhook sink's headers read `${CRM_TOKEN}` from its environment.
        let (job, state) = (job.display().to_string(), state.display().to_string());
        let out = crate::sinks::run_child(
            &[
                "run",
                &job,
                "--state",
                &state,
                "--as-of",
                "2026-06-01",
                "--format",
                "json",
            ],
            &[
                ("CRM_TOKEN", "crm-token"),
                ("CRM_WEBHOOK_SECRET", "whsec_c2VjcmV0LXNpZ25pbmcta2V5"),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert!(
            report["scored"].as_u64().unwrap_or_default() > 50,
            "{name}: {report}"
        );
        // A model trained on the plugin's labels (not the fallback ranking): both classes
        // at the training cutoffs, and a validation AUC well above chance.
        let card = &report["card"];
        assert_eq!(
            report["training"]["status"], "trained_promoted",
            "{name}: {}",
            card["fallback_reason"]
        );
        assert!(
            card["fallback_reason"].is_null(),
            "{name}: {}",
            card["fallback_reason"]
        );
        for part in ["train", "validation"] {
            assert!(
                card[part]["positives"].as_u64().unwrap_or_default() > 0
                    && card[part]["negatives"].as_u64().unwrap_or_default() > 0,
                "{name}: {part} {}",
                card[part]
            );
        }
        eprintln!(
            "{name}: train {} · validation {} · AUC {}",
            card["train"], card["validation"], card["metrics"]["auc"]
        );
        for p in report["publications"].as_array().into_iter().flatten() {
            assert_eq!(p["status"], "published", "{name}: {p}");
        }
    }
}

#[test]
fn the_template_builds_from_scratch_loads_and_labels() {
    // What the guide says: copy the template, point it at the SDK, build it.
    let dir = temp_dir("plugin-template");
    let crate_dir = dir.join("my_goal");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap_or_else(|e| panic!("{e}"));
    let template = repo_root().join("plugins/template");
    let sdk = repo_root().join("crates/propensity-plugin");
    let manifest = std::fs::read_to_string(template.join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .replace("../../crates/propensity-plugin", &sdk.display().to_string());
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(template.join("src/lib.rs"), crate_dir.join("src/lib.rs"))
        .unwrap_or_else(|e| panic!("{e}"));
    // The workspace's lock file pins the SDK's dependencies to what is already downloaded.
    std::fs::copy(repo_root().join("Cargo.lock"), crate_dir.join("Cargo.lock"))
        .unwrap_or_else(|e| panic!("{e}"));
    let target = repo_root().join("target/plugin-template");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = std::process::Command::new(cargo)
        .args(["build", "--offline", "--quiet"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap_or_else(|e| panic!("cargo: {e}"));
    assert!(
        build.status.success(),
        "building the template: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let lib = target
        .join("debug")
        .join(host::library_file_name("my_goal"));
    let p = Plugin::load(&lib, Some(&host::sha256_file(&lib).unwrap_or_default()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.metadata().name, "my_goal");
    let check = propensity([
        "plugins".into(),
        "check".into(),
        lib.as_os_str().to_owned(),
        "--params".into(),
        r#"{"event_type": "commerce.purchases"}"#.into(),
    ]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("plugin  my_goal"), "{}", check.stdout);
    let given = params(serde_json::json!({"event_type": "commerce.purchases"}));
    p.validate(&given).unwrap_or_else(|e| panic!("{e}"));
    let got = p
        .label(
            &given,
            &StringArray::from(vec!["a", "b"]),
            &events(&[("a", 1, "commerce.purchases")], None),
            Window {
                start: 0,
                end: 2 * DAY,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, [true, false]);
}

/// Labels per (cutoff, profile) of a job over the sample data, loaded by the engine with the
/// built plugins in its plugin directories.
fn labels_of(goal: &str) -> std::collections::BTreeMap<(i64, String), u8> {
    labels_and_store(goal).0
}

fn labels_and_store(
    goal: &str,
) -> (
    std::collections::BTreeMap<(i64, String), u8>,
    propensity_engine::events::EventStore,
) {
    let data = crate::support::sample();
    let text = format!(
        r#"
version = 1
name = "labels"

[source.events]
uri = "{}/events/*.parquet"
columns = {{ profile_id = "identityMap.ECID", timestamp = "timestamp", event_type = "eventType" }}

[goal]
{goal}

[eligibility]
exclude_events = "event_type = 'test.ping'"

[model]
snapshots = 4

[[sinks]]
type = "jsonl"
uri = "unused/"
"#,
        data.display()
    );
    let job = crate::support::parse_job(&text);
    let mut opts = crate::support::options(&[]);
    opts.plugin_dirs = host::search_path(None, None);
    let rt = crate::support::runtime();
    let loaded = rt
        .block_on(async {
            propensity_engine::Engine::new(opts)?
                .load(&job, data, crate::support::end())
                .await
        })
        .unwrap_or_else(|e| panic!("{e} {:?}", e.hint));
    let d = loaded.dataset().unwrap_or_else(|e| panic!("{e}"));
    let mut out = std::collections::BTreeMap::new();
    for s in &d.training {
        for (r, l) in s.rows.iter().zip(&s.labels) {
            out.insert(
                (s.cutoff, loaded.store.profile_ids[*r as usize].clone()),
                *l,
            );
        }
    }
    (out, loaded.store)
}

#[test]
fn a_plugin_with_a_lookback_gets_the_events_before_the_window_and_only_those() {
    // `lookback` mode: true when an event came before the window. The host sends the events
    // of [cutoff - 10d, cutoff + window): the label must be "an event in [cutoff - 10d,
    // cutoff)", computed here from the store, for every profile and cutoff.
    let faulty = library("faulty_goal");
    let (labels, store) = labels_and_store(&format!(
        "type = \"plugin\"\nplugin = \"{}\"\nwindow = \"30d\"\nparams = {{ mode = \"lookback\" }}",
        faulty.display()
    ));
    let lookback = 10 * DAY;
    let index: std::collections::HashMap<&str, usize> = store
        .profile_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let (mut yes, mut no) = (0, 0);
    for ((cutoff, id), label) in &labels {
        let p = index[id.as_str()];
        let ts = &store.ts[store.range(p)];
        let want = ts.iter().any(|&t| t >= cutoff - lookback && t < *cutoff);
        assert_eq!(*label == 1, want, "profile {id} at {cutoff}");
        if want { yes += 1 } else { no += 1 }
    }
    // Eligibility (90 days) is wider than the lookback: both answers occur.
    assert!(
        yes > 50 && no > 50,
        "{yes} with and {no} without events in the lookback"
    );
}

#[test]
fn a_plugin_gives_exactly_the_labels_of_the_equivalent_built_in_goal() {
    // The host's side of labelling (cutoffs, windows, eligibility, grouping, order, the
    // answer mapped back to profiles) checked against the built-in labeller.
    let built_in = labels_of(
        "type = \"conditions\"\noutcome = \"will_occur\"\nwindow = \"30d\"\nmin_count = 2\n\
         conditions = [{ field = \"event_type\", op = \"eq\", value = \"commerce.purchases\" }]",
    );
    let plugin = labels_of(
        "type = \"plugin\"\nplugin = \"repeat_purchase\"\nwindow = \"30d\"\nparams = { min_orders = 2 }",
    );
    let positives = built_in.values().filter(|l| **l == 1).count();
    assert!(
        positives > 20 && positives < built_in.len(),
        "{positives} of {}",
        built_in.len()
    );
    assert_eq!(plugin, built_in);

    // With an event field handed over (the order total, cast to a number): a spend of at
    // least a cent on purchases is a purchase with a price above zero.
    let built_in = labels_of(
        "type = \"conditions\"\noutcome = \"will_occur\"\nwindow = \"30d\"\nmatch = \"all\"\n\
         conditions = [{ field = \"event_type\", op = \"eq\", value = \"commerce.purchases\" },\n\
         { field = \"commerce.order.priceTotal\", op = \"gt\", value = 0 }]",
    );
    let plugin = labels_of(
        "type = \"plugin\"\nplugin = \"spend_threshold\"\nwindow = \"30d\"\n\
         params = { min_total = 0.01, event_types = [\"commerce.purchases\"] }",
    );
    let positives = built_in.values().filter(|l| **l == 1).count();
    assert!(positives > 20, "{positives}");
    assert_eq!(plugin, built_in);
}

#[test]
fn a_requested_field_of_the_wrong_type_is_a_clear_error() {
    // The order total is a number; the subscription-lapse plugin would read it as an expiry.
    let dir = temp_dir("plugin-field-type");
    let job = plugin_job(
        &dir,
        "plugin = \"subscription_lapse\"\nparams = { expiry_field = \"commerce.order.priceTotal\" }",
    );
    let out = run_in_process(&job, &dir.join("state"));
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "goal plugin field `commerce.order.priceTotal`: the field is a number, but the plugin reads it as a time"
        ),
        "{}",
        out.stderr
    );
    assert!(!dir.join("out").join("current.json").exists());
}

/// The sha256 pin cannot be bypassed through a shared folder: the library mapped into the
/// process is an anonymous sealed memory copy of exactly the bytes that were hashed, not a
/// file at a path anyone could pre-create or swap. (It was a copy at a predictable path in
/// the shared temp folder: with that folder pre-created by another user, a swapped library
/// ran under a valid pin.) A folder planted at the old path changes nothing.
#[test]
#[cfg(target_os = "linux")]
fn a_pinned_library_is_loaded_from_the_bytes_that_were_hashed() {
    let dir = temp_dir("plugin-pin-memfd");
    let original = dir.join(host::library_file_name("pinned_probe"));
    std::fs::copy(library("funnel_completion"), &original).unwrap_or_else(|e| panic!("{e}"));
    let pin = host::sha256_file(&original).unwrap_or_default();
    // The folder the old loader staged copies in, planted with another plugin under the name
    // the pinned one would get there.
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let planted = std::env::temp_dir().join(format!("propensity-plugins-{user}"));
    std::fs::create_dir_all(&planted).unwrap_or_else(|e| panic!("{e}"));
    let swapped = planted.join(format!(
        "{}-{}",
        &pin[..16],
        host::library_file_name("pinned_probe")
    ));
    std::fs::copy(library("spend_threshold"), &swapped).unwrap_or_else(|e| panic!("{e}"));

    let plugin = Plugin::load(&original, Some(&pin)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plugin.metadata().name, "funnel_completion");
    assert_eq!(plugin.sha256(), pin);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let probe: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("pinned_probe"))
        .collect();
    assert!(!probe.is_empty(), "the library is not mapped:\n{maps}");
    assert!(
        probe
            .iter()
            .all(|l| l.contains("/memfd:propensity-plugin:")),
        "the pinned library is mapped from a file path:\n{}",
        probe.join("\n")
    );
    // Replacing the original after the load changes nothing either.
    std::fs::copy(library("spend_threshold"), &original).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plugin.metadata().name, "funnel_completion");
    let _ = std::fs::remove_file(&swapped);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `validate --no-load-plugins` (CI on untrusted branches) finds each plugin and checks its
/// pin without running any of its code: a library that fails when loaded (an old ABI)
/// passes, a pin mismatch still fails. A plugin goal without a pin is valid with a warning.
#[test]
fn validate_can_check_plugins_without_loading_them_and_warns_when_unpinned() {
    let dir = temp_dir("plugin-no-load");
    let old = library("old_abi_goal");
    let job = plugin_job(
        &dir,
        &format!("plugin = \"{}\"\nparams = {{}}", old.display()),
    );
    let loaded = propensity(["validate".into(), job.as_os_str().to_owned()]);
    assert_eq!(loaded.code, 2, "{}", loaded.stderr);
    assert!(loaded.stderr.contains("ABI version"), "{}", loaded.stderr);
    let not_loaded = propensity([
        "validate".into(),
        "--no-load-plugins".into(),
        job.as_os_str().to_owned(),
    ]);
    assert_eq!(not_loaded.code, 0, "{}", not_loaded.stderr);
    assert!(
        not_loaded.stderr.contains("goal plugin") && not_loaded.stderr.contains("is not pinned"),
        "{}",
        not_loaded.stderr
    );
    // Pinned: a wrong hash fails without loading, the right one passes quietly.
    let wrong = plugin_job(
        &dir,
        &format!(
            "plugin = \"{}\"\nsha256 = \"{}\"\nparams = {{}}",
            old.display(),
            "0".repeat(64)
        ),
    );
    let v = propensity([
        "validate".into(),
        "--no-load-plugins".into(),
        wrong.as_os_str().to_owned(),
    ]);
    assert_eq!(v.code, 2, "{}", v.stderr);
    assert!(v.stderr.contains("but the job pins"), "{}", v.stderr);
    let hash = host::sha256_file(&old).unwrap_or_default();
    let right = plugin_job(
        &dir,
        &format!(
            "plugin = \"{}\"\nsha256 = \"{hash}\"\nparams = {{}}",
            old.display()
        ),
    );
    let v = propensity([
        "validate".into(),
        "--no-load-plugins".into(),
        right.as_os_str().to_owned(),
    ]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(!v.stderr.contains("warning"), "{}", v.stderr);
}
