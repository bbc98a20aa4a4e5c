//! The HTTP API (axum). Deny by default: with a token configured every route but a bare
//! `/healthz` needs `Authorization: Bearer <token>`, and a listener that is not on a
//! loopback address refuses to start without a token. Responses never carry a secret: a job
//! is shown by its name, goal, schedule, segment names and sink names and types, never by
//! its URLs, headers or storage options.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/healthz` | liveness; with the token also leadership and counts |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/api/v1/jobs` | every job, with next fire times, and every broken file |
//! | GET | `/api/v1/jobs/{job}` | one job |
//! | GET | `/api/v1/jobs/{job}/runs?limit=N` | its latest occurrences (default 50) |
//! | POST | `/api/v1/jobs/{job}/runs` | trigger a run now; body `{"kind": "score"}` or `"train"` |
//! | GET | `/api/v1/jobs/{job}/runs/{kind}/{scheduled_at}` | one occurrence with its run report and model card |
//! | DELETE | `/api/v1/jobs/{job}/runs/{kind}/{scheduled_at}` | cancel it: dropped from the queue, or its running attempt stopped |
//! | GET | `/api/v1/jobs/{job}/profiles/{profile_id}` | a profile's latest score and reasons |
//!
//! A web page in a browser on the same machine must not be able to use the API. A `POST` or
//! `DELETE` must say `Content-Type: application/json` (a cross-site form or `text/plain`
//! fetch cannot, without a CORS preflight this API never grants) and is refused when its
//! `Origin` is another site. Without a token (loopback only) the `Host` must also name a
//! loopback address, so a DNS-rebound name cannot read scores. At most
//! [`MAX_MANUAL_QUEUED`] triggered runs of a job may wait at once.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, SecondsFormat, Utc};
use propensity_core::{Goal, Job};
use serde_json::{Value, json};

use crate::jobs::JobEntry;
use crate::ledger::{Ledger, RunKind, RunOutcome};
use crate::shared::{Counts, Shared};

/// The API's state: what the scheduler shares, a ledger connection of its own and the
/// token.
#[derive(Debug)]
pub struct Api {
    pub shared: Arc<Shared>,
    pub ledger: Mutex<Ledger>,
    pub token: Option<String>,
}

type St = State<Arc<Api>>;

/// An error response: a status and a JSON body `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn not_found(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, m.into())
}

fn internal(m: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, m.to_string())
}

/// Triggered (`manual`) occurrences of one job that may be waiting or running at once; the
/// next trigger is refused with 429 until one ends or is cancelled.
pub const MAX_MANUAL_QUEUED: usize = 4;

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{job}", get(job))
        .route("/api/v1/jobs/{job}/runs", get(runs).post(trigger))
        .route(
            "/api/v1/jobs/{job}/runs/{kind}/{scheduled_at}",
            get(run).delete(cancel),
        )
        .route("/api/v1/jobs/{job}/profiles/{profile_id}", get(profile))
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        .with_state(api)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorised(api: &Api, headers: &HeaderMap) -> bool {
    let Some(token) = &api.token else { return true };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
}

fn forbidden(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, m.into())
}

/// `localhost`, `127.0.0.1`, `[::1]` or another loopback address, with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The browser checks: `Host` (without a token), `Origin` and `Content-Type` (changes).
fn browser_check(api: &Api, req: &Request) -> Result<(), ApiError> {
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or_default();
    if api.token.is_none() && !loopback_host(host) {
        return Err(forbidden(format!(
            "Host `{host}` is not a loopback address: without PROPENSITY_API_TOKEN the API answers only requests to localhost, 127.0.0.1 or [::1]"
        )));
    }
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !changes {
        return Ok(());
    }
    if let Some(origin) = text(header::ORIGIN) {
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return Err(forbidden(format!(
                "cross-site request refused (Origin `{origin}`, Host `{host}`)"
            )));
        }
    }
    if text(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return Err(forbidden("cross-site request refused (Sec-Fetch-Site)"));
    }
    let json = text(header::CONTENT_TYPE).is_some_and(|c| {
        c.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send `Content-Type: application/json` (curl: -H 'Content-Type: application/json')"
                .into(),
        ));
    }
    Ok(())
}

async fn auth(State(api): St, req: Request, next: Next) -> Response {
    if let Err(refused) = browser_check(&api, &req) {
        return refused.into_response();
    }
    if req.uri().path() == "/healthz" || authorised(&api, req.headers()) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": "this API needs `Authorization: Bearer <token>` (the daemon's PROPENSITY_API_TOKEN)"})),
    )
        .into_response()
}

async fn healthz(State(api): St, headers: HeaderMap) -> Json<Value> {
    if !authorised(&api, &headers) {
        return Json(json!({"status": "ok"}));
    }
    let s = &api.shared;
    let (leader, token) = s.leader();
    let Counts {
        jobs,
        broken,
        running,
        queued,
    } = s.counts();
    Json(json!({
        "status": "ok",
        "leader": leader,
        "fencing_token": token,
        "holder": s.holder,
        "started_at": ts(s.started_at),
        "jobs": jobs,
        "broken": broken,
        "running": running,
        "queued": queued,
        "stopping": s.stopping.load(std::sync::atomic::Ordering::SeqCst),
    }))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn goal(job: &Job) -> Value {
    match &job.goal {
        Goal::Conditions(g) => {
            json!({"type": "conditions", "outcome": g.outcome, "window": g.window.to_string()})
        }
        Goal::Plugin(g) => {
            json!({"type": "plugin", "plugin": g.plugin, "window": g.window.to_string()})
        }
    }
}

/// A job as the API shows it: nothing that can hold a secret (no URLs, headers, storage
/// options or plugin parameters).
fn job_json(e: &JobEntry, api: &Api) -> Value {
    let j = &e.job;
    let view = api.shared.schedule.read().ok();
    let next = view.as_ref().and_then(|v| v.next.get(&j.name).copied());
    let running = view.as_ref().and_then(|v| v.running.get(&j.name).cloned());
    json!({
        "name": j.name,
        "file": e.file.display().to_string(),
        "description": j.description,
        "goal": goal(j),
        "schedule": j.schedule.as_ref().map(|s| json!({
            "score": s.score.expression,
            "train": s.train.as_ref().map(|t| &t.expression),
            "timezone": s.timezone.name(),
            "overlap": s.overlap,
            "catchup": s.catchup,
            "catchup_limit": s.catchup_limit,
            "max_attempts": s.retries.max_attempts,
            "timeout": s.timeout.map(|t| t.to_string()),
            "max_memory": s.max_memory,
        })),
        "next": {
            "score": next.and_then(|n| n[0]).map(ts),
            "train": next.and_then(|n| n[1]).map(ts),
        },
        "running": running,
        "segments": j.segments.iter().map(|s| &s.name).collect::<Vec<_>>(),
        "sinks": j.sinks.iter().map(|s| json!({"name": s.name, "type": s.kind.type_name()})).collect::<Vec<_>>(),
    })
}

async fn jobs(State(api): St) -> Json<Value> {
    let set = api
        .shared
        .jobs
        .read()
        .map(|j| j.clone())
        .unwrap_or_default();
    Json(json!({
        "jobs_dir": api.shared.jobs_dir.display().to_string(),
        "jobs": set.jobs.values().map(|e| job_json(e, &api)).collect::<Vec<_>>(),
        "broken": set.broken,
    }))
}

fn entry(api: &Api, name: &str) -> Result<JobEntry, ApiError> {
    api.shared
        .jobs
        .read()
        .ok()
        .and_then(|j| j.jobs.get(name).cloned())
        .ok_or_else(|| {
            not_found(format!(
                "no job `{name}` is loaded (GET /api/v1/jobs lists them)"
            ))
        })
}

async fn job(State(api): St, UrlPath(name): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let e = entry(&api, &name)?;
    Ok(Json(job_json(&e, &api)))
}

#[derive(Debug, serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

/// A location as the API shows it: a URL without credentials, query or fragment (where a
/// token could hide); anything else as it is.
fn redact(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(mut u) if u.has_host() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        _ => location.to_owned(),
    }
}

/// Redacts every `location` string in a JSON document (run records, reports).
fn redact_locations(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if k == "location" => *s = redact(s),
                    _ => redact_locations(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_locations),
        _ => {}
    }
}

async fn runs(
    State(api): St,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    let runs = api
        .ledger
        .lock()
        .map_err(internal)?
        .runs(&name, limit)
        .map_err(internal)?;
    let known = api
        .shared
        .jobs
        .read()
        .is_ok_and(|j| j.jobs.contains_key(&name));
    if runs.is_empty() && !known {
        return Err(not_found(format!(
            "no job `{name}` is loaded and the ledger has no run of it"
        )));
    }
    let mut doc = json!({"job": name, "runs": runs});
    redact_locations(&mut doc);
    Ok(Json(doc))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    kind: Option<String>,
}

async fn trigger(
    State(api): St,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    entry(&api, &name)?;
    let body: TriggerBody = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON like {{\"kind\": \"score\"}}: {e}"),
            )
        })?
    };
    let kind = match body.kind.as_deref() {
        None | Some("score") => RunKind::Score,
        Some("train") => RunKind::Train,
        Some(k) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown kind `{k}`: use \"score\" or \"train\""),
            ));
        }
    };
    if api
        .shared
        .stopping
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down".into(),
        ));
    }
    // Millisecond precision: the key is easy to write in a URL.
    let now = Utc::now();
    let at = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
    let mut ledger = api.ledger.lock().map_err(internal)?;
    let waiting = ledger
        .pending()
        .map_err(internal)?
        .into_iter()
        .filter(|o| o.job == name && o.origin == "manual")
        .count();
    if waiting >= MAX_MANUAL_QUEUED {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{waiting} triggered runs of `{name}` are already waiting or running (at most {MAX_MANUAL_QUEUED}); wait for one to end, or cancel one with DELETE /api/v1/jobs/{name}/runs/KIND/SCHEDULED_AT"
            ),
        ));
    }
    ledger
        .record_due_as(&name, kind, at, "manual")
        .map_err(internal)?;
    drop(ledger);
    let at_s = ts(at);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "job": name,
            "kind": kind,
            "scheduled_at": at_s,
            "url": format!("/api/v1/jobs/{name}/runs/{kind}/{at_s}"),
        })),
    ))
}

/// `kind` and `scheduled_at` of an occurrence's URL.
fn occurrence_key(kind: &str, at: &str) -> Result<(RunKind, DateTime<Utc>), ApiError> {
    let kind: RunKind = kind.parse().map_err(|()| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("unknown kind `{kind}`: use score or train"),
        )
    })?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("`{at}` is not an RFC 3339 time: {e}"),
            )
        })?
        .with_timezone(&Utc);
    Ok((kind, at))
}

/// Cancels an occurrence that has not ended: the leading daemon drops it from its queue, or
/// stops its running attempt, within a second or two (`GET` the same URL to see it end).
async fn cancel(
    State(api): St,
    UrlPath((name, kind, at)): UrlPath<(String, String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (kind, at) = occurrence_key(&kind, &at)?;
    let answer = api
        .ledger
        .lock()
        .map_err(internal)?
        .request_cancel(&name, kind, at, Utc::now())
        .map_err(internal)?;
    match answer {
        None => Err(not_found(format!(
            "the ledger has no {kind} run of `{name}` scheduled at {}",
            ts(at)
        ))),
        Some(Some(outcome)) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("this run already ended: {outcome}"),
        )),
        Some(None) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "job": name,
                "kind": kind,
                "scheduled_at": ts(at),
                "status": "cancelling",
            })),
        )),
    }
}

fn read_json(path: &Path) -> Option<Value> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

async fn run(
    State(api): St,
    UrlPath((name, kind, at)): UrlPath<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (kind, at) = occurrence_key(&kind, &at)?;
    let occ = api
        .ledger
        .lock()
        .map_err(internal)?
        .occurrence(&name, kind, at)
        .map_err(internal)?
        .ok_or_else(|| {
            not_found(format!(
                "the ledger has no {kind} run of `{name}` scheduled at {}",
                ts(at)
            ))
        })?;
    // The report and card of the latest attempt that produced a run.
    let run_dir = occ
        .attempts
        .iter()
        .rev()
        .find_map(|a| a.run_id.as_ref())
        .map(|id| {
            api.shared
                .state
                .join("jobs")
                .join(&name)
                .join("runs")
                .join(id)
        });
    let report = run_dir
        .as_ref()
        .and_then(|d| read_json(&d.join("report.json")));
    let card = run_dir
        .as_ref()
        .and_then(|d| read_json(&d.join("card.json")));
    let mut doc = json!({
        "run": occ,
        "report": report,
        "card": card,
        "report_html": run_dir.map(|d| d.join("report.html").display().to_string()),
    });
    redact_locations(&mut doc);
    Ok(Json(doc))
}

async fn profile(
    State(api): St,
    UrlPath((name, id)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let e = entry(&api, &name)?;
    let state = api.shared.state.clone();
    let found =
        tokio::task::spawn_blocking(move || propensity_runtime::explain(&state, &e.job, &id))
            .await
            .map_err(internal)?;
    match found {
        Ok((latest, score)) => Ok(Json(json!({"run": latest, "profile": score}))),
        Err(e) if e.domain == propensity_core::Domain::User => Err(not_found(e.to_string())),
        Err(e) => Err(internal(e)),
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text format, written family by family.
#[derive(Debug, Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

async fn metrics(State(api): St) -> Result<Response, ApiError> {
    let counts = api
        .ledger
        .lock()
        .map_err(internal)?
        .outcome_counts_by_job()
        .map_err(internal)?;
    let s = &api.shared;
    let mut o = Exposition::default();
    let runs = "propensity_runs_total";
    o.family(
        runs,
        "counter",
        "Scheduled occurrences by final outcome (from the ledger).",
    );
    for (job, kind, outcome, n) in &counts {
        o.sample(
            runs,
            &[
                ("job", job),
                ("kind", kind.as_str()),
                ("outcome", outcome.as_str()),
            ],
            n,
        );
    }
    // Every outcome of every loaded job appears, at 0 when it never happened, so rates and
    // alerts work from the first scrape.
    let names: Vec<String> = s
        .jobs
        .read()
        .map(|j| j.jobs.keys().cloned().collect())
        .unwrap_or_default();
    for job in &names {
        for kind in [RunKind::Score, RunKind::Train] {
            for outcome in RunOutcome::ALL {
                if !counts
                    .iter()
                    .any(|(j, k, oc, _)| j == job && *k == kind && *oc == outcome)
                {
                    o.sample(
                        runs,
                        &[
                            ("job", job),
                            ("kind", kind.as_str()),
                            ("outcome", outcome.as_str()),
                        ],
                        0,
                    );
                }
            }
        }
    }
    let m = s.metrics.inner.lock().map_err(internal)?;
    let name = "propensity_attempts_total";
    o.family(
        name,
        "counter",
        "Attempts this daemon ran, by outcome (a retried failure counts once per attempt).",
    );
    for ((job, outcome), n) in &m.attempts {
        o.sample(name, &[("job", job), ("outcome", outcome)], n);
    }
    let name = "propensity_stage_duration_seconds";
    o.family(name, "summary", "Time spent per run stage.");
    for ((job, stage), (sum, count)) in &m.stage_seconds {
        let l = [("job", job.as_str()), ("stage", stage.as_str())];
        o.sample(&format!("{name}_sum"), &l, sum);
        o.sample(&format!("{name}_count"), &l, count);
    }
    let name = "propensity_rows_scored_total";
    o.family(name, "counter", "Profiles scored.");
    for job in &names {
        o.sample(
            name,
            &[("job", job)],
            m.rows_scored.get(job).copied().unwrap_or(0),
        );
    }
    let name = "propensity_sink_failures_total";
    o.family(name, "counter", "Publications a sink failed.");
    for ((job, sink), n) in &m.sink_failures {
        o.sample(name, &[("job", job), ("sink", sink)], n);
    }
    drop(m);
    let Counts {
        jobs,
        broken,
        running,
        queued,
    } = s.counts();
    let (leader, _) = s.leader();
    for (name, help, v) in [
        ("propensity_jobs_loaded", "Job files loaded.", jobs),
        (
            "propensity_jobs_broken",
            "Job files that did not load (see GET /api/v1/jobs).",
            broken,
        ),
        (
            "propensity_runs_running",
            "Attempts running or waiting for a retry.",
            running,
        ),
        (
            "propensity_runs_queued",
            "Occurrences waiting for their job.",
            queued,
        ),
        (
            "propensity_leader",
            "1 when this daemon holds the lease and schedules.",
            usize::from(leader),
        ),
    ] {
        o.family(name, "gauge", help);
        o.sample(name, &[], v);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.0,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_lose_credentials_queries_and_fragments() {
        assert_eq!(
            redact("https://user:pw@crm.example.com/hooks/x?token=abc#f"),
            "https://crm.example.com/hooks/x"
        );
        assert_eq!(
            redact("/var/lib/scores/current.json"),
            "/var/lib/scores/current.json"
        );
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://db:5432/x"
        );
        let mut v = json!({"a": [{"location": "redis://:pw@h:6379/0"}], "location": "plain"});
        redact_locations(&mut v);
        assert_eq!(
            v,
            json!({"a": [{"location": "redis://h:6379/0"}], "location": "plain"})
        );
    }
}
