//! The real `propensity` process: exit codes, help, version, logs, and secrets (issue #2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CANARY: &str = "canary-Zx81-do-not-print";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_propensity"));
    c.env_remove("RUST_LOG");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_job(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write job");
    p
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("propensity-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A valid job with one Parquet sink, written as `ok.toml` in `dir`.
fn valid_job(dir: &Path) -> PathBuf {
    write_job(
        dir,
        "ok.toml",
        &format!("{HEAD}[[sinks]]\ntype = \"parquet\"\nuri = \"out/\"\n"),
    )
}

const HEAD: &str = r#"version = 1
name = "secret-test"
[source.events]
uri = "s3://bucket/events/"
storage = { endpoint = "${S3_ENDPOINT}", secret_access_key = "${AWS_SECRET_ACCESS_KEY}", access_key_id = "${AWS_ACCESS_KEY_ID}" }
[goal]
type = "conditions"
outcome = "will_occur"
window = "30d"
conditions = [{ field = "event_type", op = "eq", value = "purchase" }]
"#;

#[test]
fn secrets_from_the_environment_never_appear_in_any_output() {
    let dir = scratch("secrets");
    let valid = write_job(
        &dir,
        "valid.toml",
        &format!(
            "{HEAD}[[sinks]]\ntype = \"postgres\"\nurl = \"postgres://app:${{PG_PASSWORD}}@127.0.0.1:5432/postgres\"\n\
             [[sinks]]\ntype = \"webhook\"\nurl = \"https://crm.example.com/h\"\nheaders = {{ Authorization = \"Bearer ${{PG_PASSWORD}}\" }}\nsigning_secret = \"${{PG_PASSWORD}}\"\n"
        ),
    );
    // Invalid in the same places: errors point at secret-bearing keys.
    let invalid = write_job(
        &dir,
        "invalid.toml",
        &format!(
            "{HEAD}[[sinks]]\ntype = \"postgres\"\nurl = \"postgres://app:${{PG_PASSWORD}}@127.0.0.1:5432/postgres\"\ntabel = \"x\"\n\
             [[sinks]]\ntype = \"webhook\"\nurl = \"ftp://${{PG_PASSWORD}}\"\nsigning_secret = \"whsec_${{PG_PASSWORD}}\"\n"
        ),
    );
    let env = [
        ("PG_PASSWORD", CANARY),
        ("AWS_SECRET_ACCESS_KEY", CANARY),
        ("AWS_ACCESS_KEY_ID", CANARY),
        ("S3_ENDPOINT", CANARY),
    ];
    let mut runs = 0;
    for file in [&valid, &invalid] {
        for format in ["text", "json"] {
            for log in ["text", "json"] {
                let o = bin()
                    .envs(env)
                    .env("RUST_LOG", "trace")
                    .args(["--log-format", log, "validate", "--format", format])
                    .arg(file)
                    .output()
                    .expect("run propensity");
                let all = text(&o);
                assert!(!all.contains(CANARY), "secret value printed:\n{all}");
                // The run did happen and said something about the file.
                assert!(
                    all.contains("secret-test")
                        || all.contains("error[")
                        || all.contains("\"code\""),
                    "{all}"
                );
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 8);
    let o = bin()
        .envs(env)
        .args(["validate"])
        .arg(&invalid)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("${PG_PASSWORD}") || text(&o).contains("error[literal-secret]"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_job_exits_2_and_valid_job_exits_0() {
    let dir = scratch("exit");
    let ok = valid_job(&dir);
    let bad = write_job(
        &dir,
        "bad.toml",
        &format!("{HEAD}[[sinks]]\ntype = \"parquet\"\nuri = \"out/\"\nuir = 1\n"),
    );
    let o = bin().arg("validate").arg(&ok).output().expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = bin().arg("validate").arg(&bad).output().expect("run");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("bad.toml:14:1: error[unknown-key]: unknown key `uir`"),
        "{}",
        text(&o)
    );
    let o = bin()
        .args(["validate", "--format", "json"])
        .arg(&ok)
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(doc["valid"], 1);
    assert_eq!(doc["invalid"], 1);
    assert_eq!(doc["files"][1]["diagnostics"][0]["key"], "sinks[0].uir");
    assert_eq!(doc["files"][1]["diagnostics"][0]["line"], 14);
}

#[test]
fn every_command_has_help_and_the_binary_a_version() {
    let o = bin().arg("--version").output().expect("run");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("propensity {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["schema", "--help"],
        vec!["help", "validate"],
    ] {
        let o = bin().args(&args).output().expect("run");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage: propensity"),
            "{args:?}: {}",
            text(&o)
        );
    }
    let o = bin().arg("no-such-command").output().expect("run");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn logs_follow_rust_log_and_log_format() {
    let dir = scratch("logs");
    let ok = valid_job(&dir);
    let o = bin()
        .env("RUST_LOG", "debug")
        .args(["--log-format", "json", "validate"])
        .arg(&ok)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("\"valid\""))
        .unwrap_or_else(|| panic!("no debug log line:\n{stderr}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["level"], "DEBUG");
    assert_eq!(v["fields"]["job"], "secret-test");
    // Default filter: no debug lines.
    let o = bin().args(["validate"]).arg(&ok).output().expect("run");
    assert!(
        String::from_utf8_lossy(&o.stderr).is_empty(),
        "{}",
        text(&o)
    );
}
