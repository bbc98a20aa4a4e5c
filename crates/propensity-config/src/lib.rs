//! Job files for Propensity: TOML text → checked structure → typed [`RawJob`](raw::RawJob)
//! sections → a validated [`Job`]. Every problem in a file is reported at once, each with
//! `file:line:col`, the key path and a hint. This crate does no IO: callers read the file
//! and environment variables are only referenced (`${NAME}`), never read.
//!
//! ```
//! let text = r#"
//! version = 1
//! name = "repeat-buyers"
//! [source.events]
//! uri = "data/events/*.parquet"
//! [goal]
//! type = "conditions"
//! outcome = "will_occur"
//! window = "30d"
//! conditions = [{ field = "event_type", op = "eq", value = "purchase" }]
//! [[sinks]]
//! type = "postgres"
//! url = "postgres://app:${PG_PASSWORD}@localhost/scores"
//! tabel = "scores"
//! "#;
//! let errors = propensity_config::load_str(text, "job.toml").unwrap_err();
//! assert_eq!(errors[0].to_string(), "job.toml:14:1: error[unknown-key]: unknown key `tabel` in `sinks[0]` (postgres sink)\n  key:  sinks[0].tabel\n  hint: did you mean `table`?");
//! ```

pub mod diag;
pub mod raw;
mod structure;
mod validate;

use std::collections::HashMap;

use propensity_core::{JOB_VERSION, Job, SinkSpec};
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

pub use diag::{Diagnostic, KeyPath};
use diag::{Finding, LineIndex, Seg, locate};
use raw::*;

/// The JSON Schema (draft 2020-12) of job files, generated from [`raw::RawJob`]. Editors use
/// it for completion and checks (e.g. with a `#:schema` directive in Taplo/Even Better TOML).
pub fn schema() -> serde_json::Value {
    let mut s = serde_json::to_value(schemars::schema_for!(RawJob)).unwrap_or_default();
    if let Some(o) = s.as_object_mut() {
        o.insert(
            "$id".into(),
            "https://propensity.dev/schema/job-v1.json".into(),
        );
    }
    s
}

/// Applies `f` to the table holding the last key of `path` (if it exists).
fn edit_at(value: &mut toml::Value, path: &[Seg], f: &mut dyn FnMut(&mut toml::Table, &str)) {
    match path {
        [Seg::Key(k)] => {
            if let Some(t) = value.as_table_mut() {
                f(t, k);
            }
        }
        [Seg::Index(i)] => {
            if let Some(v) = value.as_array_mut().and_then(|a| a.get_mut(*i)) {
                // An array element is replaced through a one-entry table around it.
                let mut t = toml::Table::new();
                t.insert(
                    "item".into(),
                    std::mem::replace(v, toml::Value::Boolean(false)),
                );
                f(&mut t, "item");
                if let Some(new) = t.remove("item") {
                    *v = new;
                }
            }
        }
        [Seg::Key(k), rest @ ..] => {
            if let Some(v) = value.as_table_mut().and_then(|t| t.get_mut(k)) {
                edit_at(v, rest, f);
            }
        }
        [Seg::Index(i), rest @ ..] => {
            if let Some(v) = value.as_array_mut().and_then(|a| a.get_mut(*i)) {
                edit_at(v, rest, f);
            }
        }
        [] => {}
    }
}

/// The stack of the thread a job file is read on: parsing and validation recurse (bounded by
/// the TOML parser's and the rule parser's depth limits), so they get a known stack rather
/// than whatever the calling thread has (a Tokio worker, a test harness thread).
const LOAD_STACK: usize = 16 << 20;

/// Parses and validates a job file's text. `file` is the name used in messages.
///
/// Runs on a thread of its own with a known stack; a panic in the validator becomes an
/// `internal` diagnostic for this file, so one hostile file never stops a daemon's other jobs.
pub fn load_str(text: &str, file: &str) -> Result<Job, Vec<Diagnostic>> {
    let internal = |why: String| {
        vec![Diagnostic {
            file: file.to_owned(),
            line: 1,
            column: 1,
            key: "(top level)".to_owned(),
            code: "internal",
            message: format!("the job file could not be checked: {why}"),
            hint: Some("please report this with the file".to_owned()),
        }]
    };
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("job-file".into())
            .stack_size(LOAD_STACK)
            .spawn_scoped(scope, || load_on_this_thread(text, file));
        match worker {
            Ok(handle) => handle.join().unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the validator panicked".to_owned());
                Err(internal(why))
            }),
            // No thread to be had (resource limits): check on this one.
            Err(_) => load_on_this_thread(text, file),
        }
    })
}

fn load_on_this_thread(text: &str, file: &str) -> Result<Job, Vec<Diagnostic>> {
    let lines = LineIndex::new(text);
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .trim()
                .to_owned();
            let f = Finding {
                span,
                path: KeyPath::root(),
                code: "syntax",
                message: format!("invalid TOML: {message}"),
                hint: None,
            };
            return Err(locate(file, &lines, vec![f]));
        }
    };

    // An unsupported version means the rest of the file follows other rules: say only that.
    if let Some((_, v)) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == "version")
        && let DeValue::Integer(i) = v.get_ref()
        && structure::int_value(v.get_ref()) != Some(i128::from(JOB_VERSION))
    {
        let f = Finding {
            span: v.span(),
            path: KeyPath::root().key("version"),
            code: "unsupported-version",
            message: format!(
                "unsupported job file version {}; this build of Propensity reads version {JOB_VERSION}",
                i.as_str()
            ),
            hint: Some(format!(
                "write `version = {JOB_VERSION}` and follow the version-{JOB_VERSION} format, or use the Propensity release that reads this version"
            )),
        };
        return Err(locate(file, &lines, vec![f]));
    }

    let schema = schema();
    let mut checker = structure::Checker::new(&schema);
    checker.check_document(&doc);
    let mut findings = checker.findings;

    let mut whole: toml::Value = match toml::from_str::<toml::Table>(text) {
        Ok(t) => toml::Value::Table(t),
        Err(e) => {
            let f = Finding {
                span: e.span().unwrap_or(0..0),
                path: KeyPath::root(),
                code: "syntax",
                message: format!("invalid TOML: {}", e.message()),
                hint: None,
            };
            findings.push(f);
            return Err(locate(file, &lines, findings));
        }
    };
    for p in &checker.unknown {
        edit_at(&mut whole, &p.0, &mut |t, k| {
            t.remove(k);
        });
    }
    for (p, v) in &checker.placeholders {
        edit_at(&mut whole, &p.0, &mut |t, k| {
            t.insert(k.to_owned(), v.clone());
        });
    }
    let toml::Value::Table(table) = whole else {
        unreachable!("the document root is a table")
    };

    let loc = validate::Locator::new(&doc);
    let poisoned: Vec<KeyPath> = checker
        .placeholders
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    let mut sem = validate::Sem::new(&loc, &lines, &poisoned);
    let structural = findings.clone();
    // Typed parse of one part; a failure not already explained structurally is reported here
    // so that a file is never rejected without a message.
    fn typed<T: DeserializeOwned>(
        value: Option<&toml::Value>,
        path: &KeyPath,
        structural: &[Finding],
        sem: &mut validate::Sem<'_, '_, '_>,
    ) -> Option<T> {
        let v = value?.clone();
        match v.try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                if !structural
                    .iter()
                    .any(|f| f.path.starts_with(path) || path.starts_with(&f.path))
                {
                    sem.err(path, "invalid", e.message().to_owned(), None);
                }
                None
            }
        }
    }

    let root = KeyPath::root();
    let name: Option<String> = typed(table.get("name"), &root.key("name"), &structural, &mut sem);
    if let Some(n) = &name {
        sem.name(n, &root.key("name"), "job");
    }
    let description: Option<String> = typed(
        table.get("description"),
        &root.key("description"),
        &structural,
        &mut sem,
    );

    let sources: Option<RawSources> = typed(
        table.get("source"),
        &root.key("source"),
        &structural,
        &mut sem,
    );
    let (events, profiles) = match &sources {
        Some(s) => sem.sources(s, &root.key("source")),
        None => (None, None),
    };

    let goal: Option<RawGoal> = typed(table.get("goal"), &root.key("goal"), &structural, &mut sem);
    let goal = goal.and_then(|g| sem.goal(&g, &root.key("goal")));

    macro_rules! optional {
        ($key:literal, $ty:ty) => {
            typed::<$ty>(table.get($key), &root.key($key), &structural, &mut sem)
        };
    }
    let elig = optional!("eligibility", RawEligibility);
    let eligibility = sem.eligibility(elig.as_ref(), &root.key("eligibility"));
    let feat = optional!("features", RawFeatures);
    let features = sem.features(feat.as_ref(), &root.key("features"));
    let model = optional!("model", RawModel);
    let model = sem.model(model.as_ref(), &root.key("model"));
    let out = optional!("output", RawOutput);
    let output = sem.output(out.as_ref(), &root.key("output"));
    let sched = optional!("schedule", RawSchedule);
    let schedule = sched
        .as_ref()
        .and_then(|s| sem.schedule(s, &root.key("schedule")));
    let eng = optional!("engine", RawEngine);
    // An `[engine]` table that could not be read must not fall back to the default engine.
    let engine = if table.contains_key("engine") && eng.is_none() {
        None
    } else {
        sem.engine(eng.as_ref(), &root.key("engine"))
    };
    // The query engine's memory pool lives inside the run's process: it must fit under the
    // process limit, with room for training.
    if let (Some(sc), Some(propensity_core::EngineSpec::Embedded { memory_limit, .. })) =
        (schedule.as_ref(), engine.as_ref())
        && let Some(max) = sc.max_memory
        && *memory_limit >= max
    {
        sem.err(
            &root.key("schedule").key("max_memory"),
            "invalid-value",
            format!(
                "`max_memory` ({max} bytes) must be larger than `engine.memory_limit` ({memory_limit} bytes): the engine's memory pool is part of the run's process"
            ),
            Some("raise `max_memory`, or lower `engine.memory_limit` (default `4GiB`)".to_owned()),
        );
    }

    let mut segments_raw = Vec::new();
    let mut segments_ok = true;
    if let Some(v) = table.get("segments") {
        if let Some(items) = v.as_array() {
            for (i, item) in items.iter().enumerate() {
                match typed::<RawSegment>(
                    Some(item),
                    &root.key("segments").index(i),
                    &structural,
                    &mut sem,
                ) {
                    Some(s) => segments_raw.push((i, s)),
                    None => segments_ok = false,
                }
            }
        } else {
            segments_ok = false;
        }
    }
    // Segment rules are type-checked against the score fields and the attributes the
    // profile source lists; with no list (every column) attributes are checked by the run.
    let listed: Vec<String>;
    let attrs = match sources.as_ref().map(|s| s.profiles.as_ref()) {
        Some(Some(p)) => match &p.attributes {
            Some(a) if !a.is_empty() => {
                listed = a.clone();
                propensity_core::rule::Attributes::Listed(&listed)
            }
            _ => propensity_core::rule::Attributes::Any,
        },
        Some(None) => propensity_core::rule::Attributes::None,
        // The source section could not be read: do not guess.
        None => propensity_core::rule::Attributes::Any,
    };
    let segments = sem.segments(&segments_raw, &root.key("segments"), attrs);

    let mut sinks = Vec::new();
    let mut sinks_ok = true;
    let job_name = name.clone().unwrap_or_default();
    match table.get("sinks").map(|v| v.as_array()) {
        Some(Some(items)) => {
            if items.is_empty() {
                sem.err(&root.key("sinks"), "no-sinks", "the job has no sinks", Some("add at least one `[[sinks]]` table, e.g. `type = \"parquet\"` with a `uri`".to_owned()));
            }
            let mut parsed = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let sp = root.key("sinks").index(i);
                let Some(raw) = typed::<RawSink>(Some(item), &sp, &structural, &mut sem) else {
                    sinks_ok = false;
                    continue;
                };
                match sem.sink(&raw, &sp, &job_name) {
                    Some((given, include_holdout, kind)) => {
                        parsed.push((i, given, include_holdout, kind))
                    }
                    None => sinks_ok = false,
                }
            }
            // Explicit names must be unique; unnamed sinks get their type as name, suffixed
            // `-2`, `-3`, … past any name already taken.
            let mut explicit: HashMap<String, usize> = HashMap::new();
            for (i, given, _, _) in &parsed {
                let Some(n) = given else { continue };
                let sp = root.key("sinks").index(*i);
                sem.name(n, &sp.key("name"), "sink");
                if let Some(first) = explicit.get(n) {
                    let line = sem.line_of(&root.key("sinks").index(*first).key("name"));
                    sem.err(
                        &sp.key("name"),
                        "duplicate",
                        format!("duplicate sink name `{n}`"),
                        Some(format!(
                            "the first `{n}` is on line {line}; sink names must be unique"
                        )),
                    );
                } else {
                    explicit.insert(n.clone(), *i);
                }
            }
            let mut taken: std::collections::HashSet<String> = explicit.keys().cloned().collect();
            for (_, given, include_holdout, kind) in parsed {
                let name = given.unwrap_or_else(|| {
                    let base = kind.type_name();
                    let name = (1..)
                        .map(|n| {
                            if n == 1 {
                                base.to_owned()
                            } else {
                                format!("{base}-{n}")
                            }
                        })
                        .find(|c| !taken.contains(c))
                        .unwrap_or_else(|| base.to_owned());
                    taken.insert(name.clone());
                    name
                });
                sinks.push(SinkSpec {
                    name,
                    include_holdout,
                    kind,
                });
            }
        }
        _ => sinks_ok = false,
    }

    findings.extend(sem.findings);
    let version_ok =
        table.get("version").and_then(toml::Value::as_integer) == Some(i64::from(JOB_VERSION));
    match (
        findings.is_empty(),
        version_ok,
        name,
        events,
        goal,
        engine,
        segments_ok,
        sinks_ok,
    ) {
        (true, true, Some(name), Some(events), Some(goal), Some(engine), true, true)
            if sched.is_none() || schedule.is_some() =>
        {
            Ok(Job {
                version: JOB_VERSION,
                name,
                description,
                events,
                profiles,
                goal,
                eligibility,
                features,
                model,
                output,
                schedule,
                segments,
                sinks,
                engine,
            })
        }
        _ => {
            if findings.is_empty() {
                // Every path to a rejected part pushes a finding; this guards against a gap.
                findings.push(Finding {
                    span: 0..0,
                    path: KeyPath::root(),
                    code: "invalid",
                    message: "the job file could not be read".into(),
                    hint: Some("please report this as a bug with the file attached".into()),
                });
            }
            Err(locate(file, &lines, findings))
        }
    }
}
