//! The daemon as a real process: `target/debug/propensity daemon` over a jobs directory on
//! generated data that ends now, with second-level cron schedules, driven and checked
//! through its HTTP API, its ledger and the sinks' files.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use propensity_engine::generate::{EventFormat, GenerateOptions};
use serde_json::Value;

use crate::support::{exe, temp_dir};

/// Sample data ending now (the daemon's as-of times are the wall clock): 800 profiles,
/// 200 days, once per test process.
fn live_data() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = temp_dir("daemon-data");
        let end = Utc::now()
            .duration_trunc(TimeDelta::seconds(1))
            .unwrap_or_else(|_| Utc::now());
        let mut o = GenerateOptions::new(&dir, 800, end);
        o.days = 200;
        o.seed = 11;
        o.format = EventFormat::Parquet;
        propensity_engine::generate::generate(&o).unwrap_or_else(|e| panic!("generate: {e}"));
        dir
    })
}

/// A job over the live data with a cron schedule and file sinks under `out`.
fn job(name: &str, cron: &str, out: &Path, extra_schedule: &str, goal: Option<&str>) -> String {
    let data = live_data().display();
    let out = out.display();
    let goal = goal.map_or_else(
        || {
            r#"type = "conditions"
outcome = "will_occur"
window = "30d"
conditions = [ { field = "event_type", op = "eq", value = "commerce.purchases" } ]"#
                .to_owned()
        },
        str::to_owned,
    );
    format!(
        r#"version = 1
name = "{name}"

[source.events]
uri = "{data}/events/*.parquet"
columns = {{ profile_id = "identityMap.ECID", timestamp = "timestamp", event_type = "eventType" }}

[source.profiles]
uri = "{data}/profiles/*.parquet"
attributes = ["country", "loyalty_tier"]

[goal]
{goal}

[eligibility]
active_within = "60d"

[features]
lookback = "90d"
windows = ["7d", "30d"]

[model]
snapshots = 3
snapshot_stride = "7d"

[schedule]
score = "{cron}"
{extra_schedule}

[[sinks]]
type = "parquet"
name = "files"
uri = "{out}/{name}/parquet/"

[[sinks]]
type = "csv"
name = "csv-files"
uri = "{out}/{name}/csv/"
"#
    )
}

/// A daemon process; killed with SIGKILL when dropped.
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
    token: Option<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl Daemon {
    fn start(jobs: &Path, state: &Path, name: &str, env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let log = state.parent().unwrap_or(state).join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
        let mut cmd = Command::new(exe());
        cmd.arg("daemon")
            .arg("--jobs")
            .arg(jobs)
            .arg("--state")
            .arg(state)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--lease-ttl",
                "3s",
                "--reload-every",
                "1s",
                "--shutdown-grace",
                "10s",
            ])
            .env_remove("PROPENSITY_FAILPOINT")
            .env_remove("PROPENSITY_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let mut token = None;
        for (k, v) in env {
            cmd.env(k, v);
            if *k == "PROPENSITY_API_TOKEN" {
                token = Some((*v).to_owned());
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start the daemon: {e}"));
        let d = Daemon {
            child,
            port,
            log,
            token,
        };
        d.wait_for(Duration::from_secs(30), "the API to answer", |d| {
            d.try_get("/healthz").is_some()
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let body = body.unwrap_or("");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n")?;
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        Some((status, body))
    }

    /// A request with exactly the header lines given (each ending in `\r\n`): status only.
    fn raw(&self, method: &str, path: &str, headers: &str, body: &str) -> u16 {
        let mut s =
            TcpStream::connect(("127.0.0.1", self.port)).unwrap_or_else(|e| panic!("connect: {e}"));
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = write!(
            s,
            "{method} {path} HTTP/1.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, None, self.token.as_deref())
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self
            .try_get(path)
            .unwrap_or_else(|| panic!("GET {path}: no answer\n{}", self.log()));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn metrics(&self) -> String {
        let (status, body) = self.try_get("/metrics").unwrap_or_default();
        assert_eq!(status, 200, "{body}");
        body
    }

    fn wait_for(&self, limit: Duration, what: &str, ok: impl Fn(&Daemon) -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out after {limit:?} waiting for {what}; daemon log:\n{}",
            self.log()
        );
    }

    fn runs(&self, job: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/jobs/{job}/runs?limit=1000"))["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn trigger(&self, job: &str, kind: &str) -> Value {
        let (status, body) = self
            .request(
                "POST",
                &format!("/api/v1/jobs/{job}/runs"),
                Some(&format!("{{\"kind\": \"{kind}\"}}")),
                self.token.as_deref(),
            )
            .unwrap_or_default();
        assert_eq!(status, 202, "trigger: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Waits for the occurrence at `url` to have a final outcome and returns it.
    fn finished(&self, url: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.get(url);
            if !v["run"]["final_outcome"].is_null() {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "{url} has no outcome after {limit:?}: {v}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn terminate(&mut self) -> i32 {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the daemon did not exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn at(v: &Value) -> DateTime<Utc> {
    v["scheduled_at"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("no scheduled_at in {v}"))
}

/// Publications a file sink holds: its `runs/<id>/` directories.
fn publications(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("runs"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in the metrics:\n{text}"))
}

#[test]
fn a_daemon_on_second_schedules_records_one_outcome_per_occurrence_and_serves_the_api() {
    let dir = temp_dir("daemon-api");
    let jobs = dir.join("jobs");
    let out = dir.join("out");
    std::fs::create_dir_all(&jobs).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        jobs.join("every2s.toml"),
        job("every2s", "*/2 * * * * *", &out, "", None),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(jobs.join("broken.toml"), "version = 1\nname = \n")
        .unwrap_or_else(|e| panic!("{e}"));
    // A hostile file: rules nested and chained far past what recursion survives (they aborted
    // the daemon by stack overflow, every restart again). Refused with a located diagnostic.
    let hostile = format!(
        "{}\n[[segments]]\nname = \"deep\"\nwhere = \"{}bucket = 'high'{}\"\n\n[[segments]]\nname = \"long\"\nwhere = \"{}\"\n",
        job("hostile", "0 0 3 * * *", &out, "", None),
        "(".repeat(20_000),
        ")".repeat(20_000),
        vec!["score > 1"; 50_000].join(" OR "),
    );
    std::fs::write(jobs.join("hostile.toml"), hostile).unwrap_or_else(|e| panic!("{e}"));
    let state = dir.join("state");
    let token = "t0ken-for-the-daemon-test-0123456789";
    let mut d = Daemon::start(&jobs, &state, "daemon", &[("PROPENSITY_API_TOKEN", token)]);

    // Deny by default: without the token only a bare health answer.
    let (s, body) = d
        .request("GET", "/api/v1/jobs", None, None)
        .unwrap_or_default();
    assert_eq!(s, 401, "{body}");
    let (s, _) = d
        .request("GET", "/metrics", None, Some("wrong-token-wrong-token"))
        .unwrap_or_default();
    assert_eq!(s, 401);
    let (s, body) = d.request("GET", "/healthz", None, None).unwrap_or_default();
    assert_eq!((s, body.as_str()), (200, r#"{"status":"ok"}"#));

    // The broken file is reported with its problem, the other job runs.
    let listed = d.get("/api/v1/jobs");
    assert_eq!(listed["jobs"][0]["name"], "every2s", "{listed}");
    let broken = &listed["broken"][0];
    assert!(
        broken["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("broken.toml")),
        "{listed}"
    );
    assert!(
        broken["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("broken.toml:2")),
        "{listed}"
    );
    assert!(d.log().contains("broken job file, skipped"), "{}", d.log());
    let hostile = listed["broken"]
        .as_array()
        .and_then(|b| {
            b.iter().find(|b| {
                b["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("hostile.toml"))
            })
        })
        .unwrap_or_else(|| panic!("hostile.toml not listed as broken: {listed}"));
    let problems = hostile["problems"].to_string();
    assert!(problems.contains("nested more than 64"), "{problems}");
    assert!(problems.contains("more than 1000 conditions"), "{problems}");
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");

    // Let it run several occurrences.
    d.wait_for(Duration::from_secs(60), "five finished occurrences", |d| {
        d.runs("every2s")
            .iter()
            .filter(|r| !r["final_outcome"].is_null())
            .count()
            >= 5
    });

    // Trigger a training run through the API; it queues behind the schedule and ends.
    let t = d.trigger("every2s", "train");
    let url = t["url"].as_str().unwrap_or_default().to_owned();
    let done = d.finished(&url, Duration::from_secs(60));
    assert_eq!(done["run"]["final_outcome"], "succeeded", "{done}");
    assert_eq!(done["run"]["origin"], "manual");
    assert_eq!(
        done["report"]["training"]["status"], "trained_promoted",
        "{done}"
    );
    assert!(done["card"]["metrics"]["auc"].as_f64().is_some(), "{done}");
    let pubs = done["run"]["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sinks: Vec<&str> = pubs.iter().filter_map(|p| p["sink"].as_str()).collect();
    assert_eq!(sinks, ["csv-files", "files"], "{done}");

    // A profile's latest scores.
    let run_id = done["run"]["attempts"][0]["run_id"]
        .as_str()
        .unwrap_or_default();
    let scores = state
        .join("jobs/every2s/runs")
        .join(run_id)
        .join("scores.parquet");
    let id = first_profile(&scores);
    let p = d.get(&format!("/api/v1/jobs/every2s/profiles/{id}"));
    assert_eq!(p["profile"]["profile_id"], id.as_str(), "{p}");
    assert!(
        p["profile"]["probability"]
            .as_f64()
            .is_some_and(|x| (0.0..=1.0).contains(&x))
    );
    let (s, _) = d
        .try_get("/api/v1/jobs/every2s/profiles/no-such-profile")
        .unwrap_or_default();
    assert_eq!(s, 404);
    let (s, _) = d
        .try_get("/api/v1/jobs/no-such-job/runs")
        .unwrap_or_default();
    assert_eq!(s, 404);

    // Reload: a new job appears, the broken file is fixed.
    std::fs::write(
        jobs.join("second.toml"),
        job("second", "0 0 0 1 1 *", &out, "", None),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(jobs.join("broken.toml")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(jobs.join("hostile.toml")).unwrap_or_else(|e| panic!("{e}"));
    d.wait_for(Duration::from_secs(10), "the reload", |d| {
        let j = d.get("/api/v1/jobs");
        j["jobs"].as_array().is_some_and(|a| a.len() == 2)
            && j["broken"].as_array().is_some_and(Vec::is_empty)
    });

    // Stop cleanly, then check the whole record.
    assert_eq!(d.terminate(), 0, "{}", d.log());
    let ledger = propensity_daemon::ledger::Ledger::open(state.join("ledger.sqlite"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ledger.lease_holder().ok().flatten(),
        None,
        "the lease is released"
    );
    let runs = ledger.runs("every2s", 10_000).unwrap_or_default();
    let mut scheduled: Vec<_> = runs
        .iter()
        .filter(|r| r.origin == "schedule" && r.kind == propensity_daemon::ledger::RunKind::Score)
        .collect();
    scheduled.sort_by_key(|r| r.scheduled_at);
    assert!(scheduled.len() >= 5, "{scheduled:?}");
    // Every 2 s from the first to the last: no gap, no duplicate.
    for w in scheduled.windows(2) {
        assert_eq!(
            w[1].scheduled_at - w[0].scheduled_at,
            TimeDelta::seconds(2),
            "a gap or a duplicate between {} and {}",
            w[0].scheduled_at,
            w[1].scheduled_at
        );
    }
    // One final outcome each (the last may have been stopped by the shutdown: it stays
    // pending and runs at the next start); every started attempt of a finished occurrence
    // ended once.
    let mut succeeded = 0;
    for r in &scheduled {
        match r.final_outcome.map(|o| o.as_str()) {
            Some("succeeded") => {
                succeeded += 1;
                assert_eq!(r.attempts.len(), 1, "{r:?}");
                assert_eq!(r.publications.len(), 2, "one record per sink: {r:?}");
            }
            Some("skipped_overlap") => assert!(r.attempts.is_empty(), "{r:?}"),
            None => assert!(
                std::ptr::eq(*r, *scheduled.last().unwrap_or(r)),
                "only the last may be unfinished: {r:?}"
            ),
            other => panic!("unexpected outcome {other:?}: {r:?}"),
        }
    }
    assert!(succeeded >= 4, "{scheduled:?}");

    // The metrics agree with the ledger (read by a second daemon on the same state: the
    // counts come from the ledger, so they survive restarts).
    let d2 = Daemon::start(
        &jobs,
        &state,
        "daemon-2",
        &[("PROPENSITY_API_TOKEN", token)],
    );
    let m = d2.metrics();
    let counted = ledger.outcome_counts_by_job().unwrap_or_default();
    let ok = counted
        .iter()
        .find(|(j, k, o, _)| j == "every2s" && k.as_str() == "score" && o.as_str() == "succeeded")
        .map_or(0, |c| c.3);
    assert!(
        metric(
            &m,
            "propensity_runs_total{job=\"every2s\",kind=\"score\",outcome=\"succeeded\"}"
        ) >= ok as f64,
        "{m}"
    );
    assert!(
        m.contains("propensity_runs_total{job=\"second\",kind=\"score\",outcome=\"crashed\"} 0"),
        "{m}"
    );
    drop(d2);
    // The first daemon's own metrics were checked while it ran? Check stage timings from a
    // third start that runs one occurrence.
    let d3 = Daemon::start(
        &jobs,
        &state,
        "daemon-3",
        &[("PROPENSITY_API_TOKEN", token)],
    );
    let t = d3.trigger("second", "score");
    let done = d3.finished(
        t["url"].as_str().unwrap_or_default(),
        Duration::from_secs(60),
    );
    assert_eq!(done["run"]["final_outcome"], "succeeded", "{done}");
    let m = d3.metrics();
    assert!(
        metric(&m, "propensity_rows_scored_total{job=\"second\"}") > 100.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "propensity_stage_duration_seconds_count{job=\"second\",stage=\"score\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(metric(&m, "propensity_leader") == 1.0, "{m}");
    assert!(metric(&m, "propensity_jobs_loaded") == 2.0, "{m}");
    // No secret in any answer: the token never comes back.
    for path in [
        "/api/v1/jobs",
        "/healthz",
        "/metrics",
        "/api/v1/jobs/every2s/runs",
    ] {
        let (_, body) = d3.try_get(path).unwrap_or_default();
        assert!(!body.contains(token), "{path} shows the token");
    }
}

fn first_profile(scores: &Path) -> String {
    use arrow::array::{Array, StringArray};
    let f = std::fs::File::open(scores).unwrap_or_else(|e| panic!("{}: {e}", scores.display()));
    let mut r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{e}"));
    let b = r
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no rows"));
    let col = b
        .column_by_name("profile_id")
        .unwrap_or_else(|| panic!("no profile_id"));
    let s = col
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap_or_else(|| panic!("not text"));
    assert!(s.len() > 0);
    s.value(0).to_owned()
}

#[test]
fn kill_9_of_the_daemon_during_a_run_then_a_restart_gives_one_outcome_and_one_publication_per_sink()
{
    let dir = temp_dir("daemon-kill9");
    let jobs = dir.join("jobs");
    let out = dir.join("out");
    std::fs::create_dir_all(&jobs).unwrap_or_else(|e| panic!("{e}"));
    // Fires only on demand (1 January), so the one occurrence is the triggered one.
    std::fs::write(
        jobs.join("slow.toml"),
        job("slow", "0 0 0 1 1 *", &out, "", None),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let state = dir.join("state");
    // The Parquet sink pauses 20 s before it makes its publication current.
    let token = "a-token-no-run-may-see-0123456789";
    let mut a = Daemon::start(
        &jobs,
        &state,
        "a",
        &[
            ("PROPENSITY_FAILPOINT", "parquet:before_swap:sleep=20000"),
            ("PROPENSITY_API_TOKEN", token),
        ],
    );
    let t = a.trigger("slow", "score");
    let url = t["url"].as_str().unwrap_or_default().to_owned();
    a.wait_for(Duration::from_secs(60), "the run to reach the sink", |_| {
        let log = state.join("daemon/logs/slow");
        std::fs::read_dir(&log).is_ok_and(|d| {
            d.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("failpoint parquet:before_swap: sleeping"))
            })
        })
    });
    // The run's process does not inherit the API token.
    let daemon_pid = a.child.id().to_string();
    let children: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .to_owned();
            (ppid == daemon_pid).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    assert!(!children.is_empty(), "no child of the daemon found");
    for pid in &children {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            environ.contains("PROPENSITY_DAEMON_PID="),
            "{pid} is not a run"
        );
        assert!(!environ.contains(token), "run {pid} has the API token");
    }
    a.kill9();
    // The orphaned run notices and stops: nothing becomes current.
    let log = state.join("daemon/logs/slow");
    a.wait_for(Duration::from_secs(30), "the orphaned run to stop", |_| {
        std::fs::read_dir(&log).is_ok_and(|d| {
            d.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("the daemon that started this run"))
            })
        })
    });
    assert!(
        !out.join("slow/parquet/current.json").exists(),
        "the orphan run published"
    );
    let occ_before = propensity_daemon::ledger::Ledger::open(state.join("ledger.sqlite"))
        .and_then(|l| l.runs("slow", 10))
        .unwrap_or_default();
    assert_eq!(occ_before.len(), 1);
    assert!(occ_before[0].final_outcome.is_none());
    assert!(
        occ_before[0].attempts[0].outcome.is_none(),
        "{occ_before:?}"
    );

    // Restart without the failpoint: it waits for the dead daemon's lease to expire, then
    // records the interrupted attempt and runs the occurrence again.
    let b = Daemon::start(&jobs, &state, "b", &[]);
    let done = b.finished(&url, Duration::from_secs(90));
    let run = &done["run"];
    assert_eq!(run["final_outcome"], "succeeded", "{done}");
    let attempts = run["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[0]["outcome"], "crashed");
    assert!(
        attempts[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("interrupted")),
        "{done}"
    );
    assert!(attempts[1]["fencing_token"].as_u64() > attempts[0]["fencing_token"].as_u64());
    // Exactly one publication per sink, in the ledger and in the sinks.
    let pubs = run["publications"].as_array().cloned().unwrap_or_default();
    assert_eq!(pubs.len(), 2, "{done}");
    // The CSV sink may have finished before the daemon was killed (sinks publish side by
    // side): the second attempt then finds the same publication current (`unchanged`).
    assert!(
        pubs.iter()
            .all(|p| p["attempt_no"] == 2
                && (p["status"] == "published" || p["status"] == "unchanged")),
        "{done}"
    );
    assert!(
        pubs.iter()
            .any(|p| p["sink"] == "files" && p["status"] == "published"),
        "{done}"
    );
    for sink in ["parquet", "csv"] {
        let p = publications(&out.join("slow").join(sink));
        assert_eq!(p.len(), 1, "{sink}: {p:?}");
        assert!(out.join("slow").join(sink).join("current.json").exists());
    }
    // One occurrence in all.
    assert_eq!(b.runs("slow").len(), 1);
}

#[test]
fn two_daemons_on_one_state_directory_never_run_an_occurrence_twice() {
    let dir = temp_dir("daemon-two");
    let jobs = dir.join("jobs");
    let out = dir.join("out");
    std::fs::create_dir_all(&jobs).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        jobs.join("every1s.toml"),
        job("every1s", "* * * * * *", &out, "", None),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let state = dir.join("state");
    let a = Daemon::start(&jobs, &state, "a", &[]);
    let b = Daemon::start(&jobs, &state, "b", &[]);
    let leaders = || -> Vec<bool> {
        [&a, &b]
            .iter()
            .map(|d| d.get("/healthz")["leader"].as_bool().unwrap_or(false))
            .collect()
    };
    let ledger = state.join("ledger.sqlite");
    let occurrences = || {
        propensity_daemon::ledger::Ledger::open(&ledger)
            .and_then(|l| l.runs("every1s", 10_000))
            .map_or(0, |r| r.len())
    };
    a.wait_for(
        Duration::from_secs(60),
        "one leader running occurrences",
        |_| leaders().iter().filter(|&&l| l).count() == 1 && occurrences() >= 4,
    );
    let leaders = leaders();
    assert_eq!(leaders.iter().filter(|&&l| l).count(), 1, "{leaders:?}");
    // The leader stops; the standby takes over (the lease is released on a clean stop).
    let (mut leader, mut standby) = if leaders[0] { (a, b) } else { (b, a) };
    assert_eq!(leader.terminate(), 0, "{}", leader.log());
    standby.wait_for(Duration::from_secs(10), "the standby to take over", |d| {
        d.get("/healthz")["leader"].as_bool() == Some(true)
    });
    let handed_over = occurrences();
    standby.wait_for(
        Duration::from_secs(60),
        "the standby to run occurrences",
        |_| occurrences() >= handed_over + 4,
    );
    assert_eq!(standby.terminate(), 0, "{}", standby.log());
    let l = propensity_daemon::ledger::Ledger::open(state.join("ledger.sqlite"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut runs = l.runs("every1s", 10_000).unwrap_or_default();
    runs.sort_by_key(|r| r.scheduled_at);
    assert!(runs.len() >= 8, "{runs:?}");
    let mut tokens = std::collections::BTreeSet::new();
    for r in &runs {
        // Never two attempts that ran to an end (an interrupted one is recorded as such).
        let ran = r
            .attempts
            .iter()
            .filter(|a| {
                !a.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("interrupted"))
            })
            .count();
        assert!(ran <= 1, "ran twice: {r:?}");
        tokens.extend(r.attempts.iter().map(|a| a.fencing_token));
    }
    // Each run directory belongs to one attempt.
    let dirs = std::fs::read_dir(state.join("jobs/every1s/runs"))
        .map(|d| d.count())
        .unwrap_or(0);
    let with_run = runs
        .iter()
        .flat_map(|r| &r.attempts)
        .filter(|a| a.run_id.is_some())
        .count();
    assert_eq!(dirs, with_run);
    assert!(tokens.len() >= 2, "two leaders in turn: {tokens:?}");
}

#[test]
fn a_segfaulting_plugin_crashes_its_run_and_the_daemon_keeps_serving() {
    let dir = temp_dir("daemon-segv");
    let jobs = dir.join("jobs");
    let out = dir.join("out");
    std::fs::create_dir_all(&jobs).unwrap_or_else(|e| panic!("{e}"));
    let goal = r#"type = "plugin"
plugin = "faulty_goal"
window = "30d"
params = { mode = "segfault" }"#;
    std::fs::write(
        jobs.join("segv.toml"),
        job(
            "segv",
            "0 0 0 1 1 *",
            &out,
            "[schedule.retries]\nmax_attempts = 1",
            Some(goal),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        jobs.join("good.toml"),
        job("good", "0 0 0 1 1 *", &out, "", None),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let state = dir.join("state");
    let d = Daemon::start(&jobs, &state, "d", &[]);
    let t = d.trigger("segv", "score");
    let done = d.finished(
        t["url"].as_str().unwrap_or_default(),
        Duration::from_secs(60),
    );
    assert_eq!(done["run"]["final_outcome"], "crashed", "{done}");
    let msg = done["run"]["attempts"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(msg.contains("SIGSEGV"), "{msg}");
    // Still serving, and still running other jobs.
    assert_eq!(d.get("/healthz")["status"], "ok");
    let t = d.trigger("good", "score");
    let done = d.finished(
        t["url"].as_str().unwrap_or_default(),
        Duration::from_secs(60),
    );
    assert_eq!(done["run"]["final_outcome"], "succeeded", "{done}");
    let m = d.metrics();
    assert_eq!(
        metric(
            &m,
            "propensity_runs_total{job=\"segv\",kind=\"score\",outcome=\"crashed\"}"
        ),
        1.0,
        "{m}"
    );
}

/// Without a token the API is for local tools only: a DNS-rebound `Host`, a cross-site
/// `Origin` or a form-type body (what a web page can send without a CORS preflight) is
/// refused; triggered runs are capped per job, and a waiting one can be cancelled.
#[test]
fn the_tokenless_api_refuses_browsers_caps_triggers_and_cancels() {
    let dir = temp_dir("daemon-browser");
    let jobs = dir.join("jobs");
    let out = dir.join("out");
    std::fs::create_dir_all(&jobs).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        jobs.join("manual.toml"),
        job("manual", "0 0 0 1 1 *", &out, "", None),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let state = dir.join("state");
    let d = Daemon::start(&jobs, &state, "d", &[]);
    let jobs_url = "/api/v1/jobs";
    let runs = "/api/v1/jobs/manual/runs";
    let local = format!("Host: 127.0.0.1:{}\r\n", d.port);
    // Reads: a loopback Host only.
    assert_eq!(d.raw("GET", jobs_url, &local, ""), 200);
    assert_eq!(d.raw("GET", jobs_url, "Host: localhost\r\n", ""), 200);
    assert_eq!(d.raw("GET", jobs_url, "Host: [::1]:80\r\n", ""), 200);
    assert_eq!(
        d.raw("GET", jobs_url, "Host: rebound.attacker.example\r\n", ""),
        403
    );
    assert_eq!(
        d.raw("GET", "/healthz", "Host: rebound.attacker.example\r\n", ""),
        403
    );
    // Changes: JSON only, from no other site.
    let body = r#"{"kind": "score"}"#;
    let plain = format!("{local}Content-Type: text/plain\r\n");
    assert_eq!(d.raw("POST", runs, &plain, body), 415);
    assert_eq!(d.raw("POST", runs, &local, ""), 415);
    let foreign =
        format!("{local}Content-Type: application/json\r\nOrigin: https://attacker.example\r\n");
    assert_eq!(d.raw("POST", runs, &foreign, body), 403);
    let fetch = format!("{local}Content-Type: application/json\r\nSec-Fetch-Site: cross-site\r\n");
    assert_eq!(d.raw("POST", runs, &fetch, body), 403);
    let same = format!(
        "{local}Content-Type: application/json\r\nOrigin: http://127.0.0.1:{}\r\n",
        d.port
    );
    assert_eq!(d.raw("POST", runs, &same, body), 202);
    // None of the refused ones was recorded.
    assert_eq!(d.runs("manual").len(), 1, "{:?}", d.runs("manual"));

    // At most four triggered runs wait at once.
    let mut urls = Vec::new();
    for _ in 0..3 {
        urls.push(
            d.trigger("manual", "score")["url"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let json = format!("{local}Content-Type: application/json\r\n");
    assert_eq!(d.raw("POST", runs, &json, body), 429);
    // Cancel the newest: it ends `cancelled` without running; then the cap has room again.
    let last = urls.pop().unwrap_or_default();
    assert_eq!(d.raw("DELETE", &last, &json, ""), 202);
    let done = d.finished(&last, Duration::from_secs(60));
    assert_eq!(done["run"]["final_outcome"], "cancelled", "{done}");
    let msg = done["run"]["attempts"][0]["message"].to_string();
    assert!(msg.contains("cancelled"), "{done}");
    assert_eq!(d.raw("DELETE", &last, &json, ""), 409);
    assert_eq!(
        d.raw(
            "DELETE",
            "/api/v1/jobs/manual/runs/score/2020-01-01T00:00:00Z",
            &json,
            ""
        ),
        404
    );
    assert_eq!(d.raw("POST", runs, &json, body), 202);
    // The others run to the end.
    for url in &urls {
        let done = d.finished(url, Duration::from_secs(120));
        assert_eq!(done["run"]["final_outcome"], "succeeded", "{done}");
    }
}

/// Idle connections that never send a request cannot exhaust the daemon's descriptors: at
/// most 128 are open at once (the rest wait in the listen backlog), each has 10 s to send its
/// headers, and the API keeps answering (about 370 idle connections used to leave a
/// scheduled run unable to start).
#[test]
fn idle_connections_are_bounded_and_the_api_keeps_answering() {
    let dir = temp_dir("daemon-idle");
    let jobs = dir.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap_or_else(|e| panic!("{e}"));
    let state = dir.join("state");
    let d = Daemon::start(&jobs, &state, "d", &[]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.child.id()))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let before = fds();
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", d.port)).ok())
        .collect();
    assert_eq!(idle.len(), 200);
    // Once the server has taken all it will take, it takes no more.
    d.wait_for(
        Duration::from_secs(10),
        "the connections to be accepted",
        |_| fds() >= before + 128,
    );
    std::thread::sleep(Duration::from_millis(500));
    let during = fds();
    assert!(
        during <= before + 128 + 8,
        "{during} descriptors open with 200 idle connections ({before} before)"
    );
    // A real request is served once idle ones time out (10 s), at the latest.
    let start = Instant::now();
    let (status, _) = d.request("GET", "/healthz", None, None).unwrap_or_default();
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    drop(idle);
}

#[test]
fn backfill_lists_then_runs_the_missing_occurrences_once() {
    let dir = temp_dir("daemon-backfill");
    let jobs = dir.join("jobs");
    let out = dir.join("out");
    std::fs::create_dir_all(&jobs).unwrap_or_else(|e| panic!("{e}"));
    let file = jobs.join("hourly.toml");
    std::fs::write(&file, job("hourly", "0 0 * * * *", &out, "", None))
        .unwrap_or_else(|e| panic!("{e}"));
    let state = dir.join("state");
    let to = Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .unwrap_or_else(|_| Utc::now())
        - TimeDelta::hours(1);
    let from = to - TimeDelta::hours(2);
    let (f, t) = (from.to_rfc3339(), to.to_rfc3339());
    let args = |extra: &[&str]| {
        let mut v = vec![
            "backfill".to_owned(),
            file.display().to_string(),
            "--from".into(),
            f.clone(),
            "--to".into(),
            t.clone(),
            "--state".into(),
            state.display().to_string(),
            "--format".into(),
            "json".into(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let run = |extra: &[&str]| -> (i32, Value) {
        let o = Command::new(exe())
            .args(args(extra))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.code().unwrap_or(-1), v)
    };
    let (code, dry) = run(&["--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    let items = dry["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 3, "{dry}");
    assert!(items.iter().all(|i| i["status"] == "missing"));
    assert_eq!(at(&items[0]), from);
    let (code, done) = run(&[]);
    assert_eq!(code, 0, "{done}");
    let items = done["items"].as_array().cloned().unwrap_or_default();
    assert!(items.iter().all(|i| i["status"] == "succeeded"), "{done}");
    // Each ran with its own as-of time.
    let l = propensity_daemon::ledger::Ledger::open(state.join("ledger.sqlite"))
        .unwrap_or_else(|e| panic!("{e}"));
    for i in &items {
        let occ = l
            .occurrence("hourly", propensity_daemon::ledger::RunKind::Score, at(i))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{i}"));
        assert_eq!(occ.origin, "backfill");
        let run_id = occ.attempts[0].run_id.clone().unwrap_or_default();
        let report: Value = serde_json::from_slice(
            &std::fs::read(
                state
                    .join("jobs/hourly/runs")
                    .join(&run_id)
                    .join("report.json"),
            )
            .unwrap_or_default(),
        )
        .unwrap_or_default();
        let as_of = DateTime::parse_from_rfc3339(report["as_of"].as_str().unwrap_or_default())
            .map(|t| t.with_timezone(&Utc));
        assert_eq!(as_of.ok(), Some(at(i)));
    }
    // Respecting the ledger: nothing is missing any more.
    let (code, again) = run(&["--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(again["items"].as_array().map(Vec::len), Some(0), "{again}");
    assert_eq!(again["recorded"], 3);
}
