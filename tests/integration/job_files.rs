//! `propensity validate` and `propensity schema` against the example jobs and the corpus of
//! broken jobs in `tests/data/bad/` (issue #2).

use std::path::PathBuf;

use propensity_tests::{golden, propensity, repo_root};

fn files_in(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// `path` relative to the repository root, as the CLI output shows it.
fn shown(path: &std::path::Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_example_job_is_valid() {
    let jobs = files_in("jobs", "toml");
    assert!(
        jobs.len() >= 4,
        "expected at least four example jobs, found {}",
        jobs.len()
    );
    let out = propensity(["validate".into(), repo_root().join("jobs").into_os_string()]);
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    for j in &jobs {
        let name = shown(j);
        assert!(
            out.stdout.contains(&format!("ok: {name} ")),
            "{name} not reported valid:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains(&format!(
        "{} job file(s) checked: {} valid, 0 invalid",
        jobs.len(),
        jobs.len()
    )));
}

#[test]
fn every_bad_job_fails_with_its_golden_message() {
    let bad = files_in("tests/data/bad", "toml");
    assert!(
        bad.len() >= 30,
        "the corpus must hold at least 30 broken jobs, found {}",
        bad.len()
    );
    let mut failures = Vec::new();
    for file in &bad {
        let out = propensity(["validate".into(), file.clone().into_os_string()]);
        let name = shown(file);
        if out.code != 2 {
            failures.push(format!(
                "{name}: exit code {} (want 2)\n{}{}",
                out.code, out.stdout, out.stderr
            ));
            continue;
        }
        // Every finding names file:line:col and the key.
        let headers: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains(": error["))
            .collect();
        if headers.is_empty() {
            failures.push(format!("{name}: no finding printed\n{}", out.stderr));
        }
        for h in &headers {
            let loc = h.split(": error[").next().unwrap_or_default();
            let mut parts = loc.rsplitn(3, ':');
            let col = parts.next().and_then(|c| c.parse::<usize>().ok());
            let line = parts.next().and_then(|l| l.parse::<usize>().ok());
            if parts.next() != Some(name.as_str()) || !matches!((line, col), (Some(1..), Some(1..)))
            {
                failures.push(format!("{name}: finding without file:line:col: {h}"));
            }
        }
        let keys = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("  key:  "))
            .count();
        if keys != headers.len() {
            failures.push(format!(
                "{name}: {} findings but {keys} key lines",
                headers.len()
            ));
        }
        // The JSON output carries the same findings.
        let json = propensity([
            "validate".into(),
            "--format".into(),
            "json".into(),
            file.clone().into_os_string(),
        ]);
        let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap_or_default();
        let n = doc["files"][0]["diagnostics"]
            .as_array()
            .map_or(0, Vec::len);
        if json.code != 2 || n != headers.len() {
            failures.push(format!(
                "{name}: --format json gave exit {} and {n} findings, text gave {}",
                json.code,
                headers.len()
            ));
        }
        if let Err(e) = golden(&file.with_extension("expected"), &out.stderr) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn golden_files_have_their_job_file() {
    for g in files_in("tests/data/bad", "expected") {
        assert!(
            g.with_extension("toml").exists(),
            "{} has no .toml beside it",
            g.display()
        );
    }
}

#[test]
fn misspelled_key_in_postgres_sink_gets_did_you_mean() {
    let file = repo_root().join("tests/data/bad/sink-postgres-misspelled-table.toml");
    let out = propensity(["validate".into(), file.into_os_string()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("unknown key `tabel`"), "{}", out.stderr);
    assert!(
        out.stderr.contains("hint: did you mean `table`?"),
        "{}",
        out.stderr
    );
}

fn toml_to_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: toml::Value =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(value).unwrap_or_default()
}

#[test]
fn schema_output_accepts_every_example_and_rejects_broken_structure() {
    let out = propensity(["schema"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let schema: serde_json::Value = serde_json::from_str(&out.stdout).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema is a valid JSON Schema");
    for job in files_in("jobs", "toml") {
        let instance = toml_to_json(&job);
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match the schema: {errors:?}",
            job.display()
        );
    }
    // The schema is not a rubber stamp: structural mistakes from the corpus fail it too.
    for case in [
        "sink-postgres-misspelled-table.toml",
        "unknown-top-level-key.toml",
    ] {
        let path = repo_root().join("tests/data/bad").join(case);
        if path.exists() {
            assert!(
                !validator.is_valid(&toml_to_json(&path)),
                "{case} passed the schema"
            );
        }
    }
    let mut typo = toml_to_json(&files_in("jobs", "toml")[0]);
    typo["goal"]["windw"] = "30d".into();
    assert!(
        !validator.is_valid(&typo),
        "an unknown goal key passed the schema"
    );
}

#[test]
fn committed_schema_file_is_current() {
    let out = propensity(["schema"]);
    assert_eq!(out.code, 0);
    golden(&repo_root().join("schema/job-v1.schema.json"), &out.stdout)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn validate_reports_missing_paths_as_user_errors() {
    let out = propensity(["validate", "does/not/exist.toml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("cannot read `does/not/exist.toml`"),
        "{}",
        out.stderr
    );
}
