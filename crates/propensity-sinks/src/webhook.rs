//! Webhooks: score rows POSTed as batched JSON events, signed the Standard Webhooks way,
//! retried within a budget, and kept in an outbox for `propensity replay` when the receiver
//! cannot take them.
//!
//! # Protocol
//!
//! A publication of `R` rows becomes `n = ceil(R / batch_size)` data events, sent in order, one
//! at a time, then one completion event once every data event was delivered:
//!
//! ```text
//! {"type": "propensity.scores", "job", "publication", "as_of",
//!  "batch": k (0-based), "batches": n, "profiles": [score row, …]}
//! {"type": "propensity.publication.completed", "job", "publication", "as_of",
//!  "batches": n, "rows": R, "segments": [segment name, …]}
//! ```
//!
//! A receiver stages the data events of a publication and commits them when the completion
//! event arrives, so it never acts on half a publication. Each request carries:
//!
//! - `Content-Type: application/json`;
//! - `Idempotency-Key` and `webhook-id`: `<publication>-<k:05>` for data event `k`,
//!   `<publication>-completed` for the completion event. Publication ids are content-derived,
//!   so the same content always gets the same key and a receiver drops repeats (retries,
//!   re-runs and replays). Key and body are a pure function of the publication: nothing of
//!   the run that sent it (its run id, its time) is in them, so a repeat is byte-identical;
//! - `webhook-timestamp`: unix seconds of this attempt;
//! - `webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>` when a
//!   signing secret is configured (`whsec_<base64>`, or raw bytes without the prefix);
//! - the headers configured on the sink.
//!
//! `forget` POSTs `{"type": "propensity.profiles.forgotten", "job", "profile_ids": [sorted]}`
//! with the key `forget-<first 16 hex digits of sha256(sorted ids joined by "\n")>`.
//!
//! # Delivery
//!
//! A 2xx answer delivers an event. 408, 425, 429, 5xx, connection failures and timeouts are
//! retried after `Retry-After` (seconds or an HTTP date) or `initial_backoff · 2^(attempt−1)`
//! capped at `max_backoff`, at most `max_attempts` attempts per event. Any other answer means
//! the receiver refuses that payload: retrying would not help, so it is kept at once. Redirects
//! are not followed (a signed POST must reach the configured URL). The retry budget bounds the
//! total time one publish (or one replay) spends waiting: when the next wait would overrun it,
//! that event and every event not yet sent are kept without further requests.
//!
//! # Outbox
//!
//! ```text
//! <job state>/outbox/<sink>/<publication>/<k:05>.json   a kept data event
//! <job state>/outbox/<sink>/<publication>/completed.json the kept completion event
//! <job state>/outbox/<sink>/delivered.json              {"publication": id} last fully delivered
//! ```
//!
//! Each kept file is `{"key", "body" (the exact JSON text sent), "attempts", "last_error",
//! "kept_at"}`, written to a temporary file and renamed into place, so a crash never leaves
//! half a file. [`WebhookSink::replay`] re-sends them with the same keys and bodies.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use propensity_core::SinkSpec;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{Context, Publication, Published, ScoreRows, Sink, SinkError, Status};

/// Headers the sink sets itself: a configured header of the same name would contradict the
/// protocol (a second idempotency key, a signature over nothing), so `new` refuses them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// How much of a refusing receiver's answer is kept with the batch: enough to see why.
const SNIPPET_CHARS: usize = 200;
/// At most this much of an error answer's body is read: the message keeps a snippet of it,
/// and a receiver answering with gigabytes must not make a run hold them.
const ERROR_BODY_BYTES: usize = 4096;

/// The file name of the kept completion event.
const COMPLETED_FILE: &str = "completed.json";

/// The record of the last fully delivered publication.
const DELIVERED_FILE: &str = "delivered.json";

/// Timing of requests and retries, as `std` durations so tests can use milliseconds (job
/// files only express whole seconds).
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    timeout: Duration,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    retry_budget: Duration,
}

impl RetryPolicy {
    fn from_config(cfg: &propensity_core::WebhookSink) -> Self {
        Self {
            timeout: cfg.timeout.as_duration(),
            max_attempts: cfg.max_attempts.max(1),
            initial_backoff: cfg.initial_backoff.as_duration(),
            max_backoff: cfg.max_backoff.as_duration(),
            retry_budget: cfg.retry_budget.as_duration(),
        }
    }

    /// The wait after failed attempt `attempt` (1-based) when the receiver did not say.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32
            .checked_pow(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .map_or(self.max_backoff, |d| d.min(self.max_backoff))
    }
}

/// What replaying a sink's outbox did.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// Kept events delivered (and deleted from the outbox).
    pub delivered: usize,
    /// Events still kept.
    pub kept: usize,
    pub message: String,
}

/// A kept event: `<k:05>.json` or `completed.json` in a publication's outbox directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeptEvent {
    key: String,
    /// The exact JSON text POSTed, so a replay sends the same bytes under the same key.
    body: String,
    /// Attempts made so far, over every publish and replay.
    attempts: u32,
    last_error: String,
    /// RFC 3339, when it was (last) kept.
    kept_at: String,
}

/// `delivered.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeliveredRecord {
    publication: String,
}

/// One event ready to send.
#[derive(Debug)]
struct Event {
    key: String,
    body: String,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    /// Worth another try, possibly after the wait the receiver asked for.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refuses this payload; trying again would not help.
    Refused {
        error: String,
    },
}

/// How delivering one event (with its retries) went.
enum Delivery {
    Delivered,
    Kept {
        attempts: u32,
        error: String,
        /// The retry budget ran out: nothing more is sent this time.
        budget_exhausted: bool,
    },
}

/// A webhook receiver (see the module documentation for the protocol).
pub struct WebhookSink {
    name: String,
    include_holdout: bool,
    /// The URL as written in the job file: `${VAR}` references, never their values.
    location: String,
    /// The resolved URL; it may carry a token, so it is never printed.
    url: reqwest::Url,
    /// The configured headers, resolved and marked sensitive.
    headers: HeaderMap,
    /// The HMAC key, when requests are signed.
    secret: Option<Vec<u8>>,
    batch_size: usize,
    policy: RetryPolicy,
    client: reqwest::Client,
    /// Job state directories whose outbox `forget` scrubs: the ones given with
    /// [`WebhookSink::with_state_dir`] and every one this sink has published or replayed to
    /// (the [`Sink::forget`] signature does not carry one).
    state_dirs: Mutex<BTreeSet<PathBuf>>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("signed", &self.secret.is_some())
            .field("batch_size", &self.batch_size)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Resolves the URL, headers and signing secret from the environment and builds the HTTP
    /// client. Nothing is contacted. Errors name the variable or header, never a value.
    pub fn new(
        spec: &SinkSpec,
        cfg: &propensity_core::WebhookSink,
        ctx: &Context,
    ) -> Result<Self, String> {
        Self::with_policy(spec, cfg, ctx, RetryPolicy::from_config(cfg))
    }

    fn with_policy(
        spec: &SinkSpec,
        cfg: &propensity_core::WebhookSink,
        ctx: &Context,
        policy: RetryPolicy,
    ) -> Result<Self, String> {
        let env = |k: &str| (ctx.env)(k);
        let location = cfg.url.as_written().to_owned();
        let resolved = cfg
            .url
            .resolve(env)
            .map_err(|e| format!("url `{location}`: {e}"))?;
        let url = reqwest::Url::parse(resolved.expose()).map_err(|e| {
            format!("url `{location}` is not a valid URL once its variables are substituted: {e}")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "url `{location}`: webhooks are sent over http or https, not `{}`",
                url.scheme()
            ));
        }

        let mut headers = HeaderMap::new();
        for (name, template) in &cfg.headers {
            let lname = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lname.as_str()) {
                return Err(format!(
                    "header `{name}` is set by the webhook sink itself; remove it from `headers`"
                ));
            }
            let hname = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header `{name}` is not a valid HTTP header name"))?;
            let value = template
                .resolve(env)
                .map_err(|e| format!("header `{name}`: {e}"))?;
            let mut hvalue = HeaderValue::from_str(value.expose()).map_err(|_| {
                format!(
                    "header `{name}`: its value (once variables are substituted) contains \
                     characters not allowed in an HTTP header"
                )
            })?;
            hvalue.set_sensitive(true);
            headers.insert(hname, hvalue);
        }

        let secret = match &cfg.signing_secret {
            None => None,
            Some(t) => {
                let value = t.resolve(env).map_err(|e| format!("signing_secret: {e}"))?;
                Some(decode_secret(value.expose())?)
            }
        };

        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("propensity/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;

        Ok(Self {
            name: spec.name.clone(),
            include_holdout: spec.include_holdout,
            location,
            url,
            headers,
            secret,
            batch_size: usize::try_from(cfg.batch_size.max(1)).unwrap_or(usize::MAX),
            policy,
            client,
            state_dirs: Mutex::new(BTreeSet::new()),
        })
    }

    /// Tells the sink where the job's state lives, so [`Sink::forget`] also scrubs the
    /// outbox when this process has not published or replayed yet.
    pub fn with_state_dir(self, job_state_dir: impl Into<PathBuf>) -> Self {
        self.remember(&job_state_dir.into());
        self
    }

    fn remember(&self, state_dir: &Path) {
        if let Ok(mut dirs) = self.state_dirs.lock() {
            dirs.insert(state_dir.to_path_buf());
        }
    }

    /// `<job state>/outbox/<sink>`.
    fn outbox(&self, state_dir: &Path) -> PathBuf {
        state_dir.join("outbox").join(&self.name)
    }

    /// Re-sends every kept event of this sink: publications oldest first, data events in
    /// order, each completion event last and only once its data events are all delivered.
    /// Keys and bodies are the ones first sent (timestamps and signatures are new). Each
    /// delivered event's file is deleted; a publication whose outbox empties is recorded as
    /// delivered. The retry policy and budget are those of a publish.
    pub async fn replay(&self, state_dir: &Path) -> Result<Replayed, SinkError> {
        self.remember(state_dir);
        let outbox = self.outbox(state_dir);
        let publications = list_publications(&outbox).await?;
        if publications.is_empty() {
            return Ok(Replayed {
                delivered: 0,
                kept: 0,
                message: format!("sink `{}`: nothing kept to replay", self.name),
            });
        }
        let mut budget = self.policy.retry_budget;
        let mut exhausted = false;
        let (mut delivered, mut kept) = (0usize, 0usize);
        let mut first_reason: Option<String> = None;
        for publication in &publications {
            let dir = outbox.join(publication);
            let mut kept_here = 0usize;
            for file in list_kept(&dir).await? {
                let path = dir.join(&file);
                let mut record = read_kept(&path).await?;
                if exhausted || (file == COMPLETED_FILE && kept_here > 0) {
                    kept_here += 1;
                    continue;
                }
                let event = Event {
                    key: record.key.clone(),
                    body: record.body.clone(),
                };
                match self.deliver(&event, &mut budget).await? {
                    Delivery::Delivered => {
                        remove_file(&path).await?;
                        delivered += 1;
                    }
                    Delivery::Kept {
                        attempts,
                        error,
                        budget_exhausted,
                    } => {
                        first_reason.get_or_insert_with(|| format!("{}: {error}", record.key));
                        record.attempts = record.attempts.saturating_add(attempts);
                        record.last_error = error;
                        record.kept_at = now_rfc3339();
                        write_json(&path, &record).await?;
                        kept_here += 1;
                        exhausted = budget_exhausted;
                    }
                }
            }
            kept += kept_here;
            if kept_here == 0 {
                remove_dir_all(&dir).await?;
                record_delivered(&outbox, publication, true).await?;
            }
        }
        let message = match first_reason {
            None if kept == 0 => format!(
                "sink `{}`: replayed {delivered} kept batches of {} publication(s) to {}",
                self.name,
                publications.len(),
                self.location
            ),
            reason => format!(
                "sink `{}`: {delivered} kept batches delivered, {kept} still kept ({}) in {}",
                self.name,
                reason.unwrap_or_else(|| "the retry budget ran out".into()),
                outbox.display()
            ),
        };
        Ok(Replayed {
            delivered,
            kept,
            message,
        })
    }

    /// Sends one event until it is delivered, refused, out of attempts or out of budget.
    /// `budget` is the waiting time left for this publish or replay.
    async fn deliver(&self, event: &Event, budget: &mut Duration) -> Result<Delivery, SinkError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (error, retry_after) = match self.attempt(event).await? {
                Attempt::Delivered => return Ok(Delivery::Delivered),
                Attempt::Refused { error } => {
                    return Ok(Delivery::Kept {
                        attempts: attempt,
                        error,
                        budget_exhausted: false,
                    });
                }
                Attempt::Retry { error, retry_after } => (error, retry_after),
            };
            if attempt >= self.policy.max_attempts {
                return Ok(Delivery::Kept {
                    attempts: attempt,
                    error: format!("{error} (gave up after {attempt} attempts)"),
                    budget_exhausted: false,
                });
            }
            let wait = retry_after.unwrap_or_else(|| self.policy.backoff(attempt));
            if wait > *budget {
                return Ok(Delivery::Kept {
                    attempts: attempt,
                    error: format!(
                        "{error}; retry budget exhausted (next retry in {wait:?}, {:?} left)",
                        *budget
                    ),
                    budget_exhausted: true,
                });
            }
            *budget -= wait;
            tracing::warn!(
                sink = %self.name,
                key = %event.key,
                attempt,
                wait = ?wait,
                error = %error,
                "webhook delivery failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One POST of `event`, freshly timestamped and signed.
    async fn attempt(&self, event: &Event) -> Result<Attempt, SinkError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", &event.key)
            .header("webhook-id", &event.key)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(secret) = &self.secret {
            request = request.header(
                "webhook-signature",
                sign(secret, &event.key, timestamp, &event.body)?,
            );
        }
        let response = match request.body(event.body.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Attempt::Retry {
                    error: self.describe(e),
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(Attempt::Delivered);
        }
        let retry_after = retry_after(response.headers());
        let text = read_capped(response, ERROR_BODY_BYTES).await;
        let error = describe_status(status, &text);
        let retryable = matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error();
        Ok(if retryable {
            Attempt::Retry { error, retry_after }
        } else {
            Attempt::Refused { error }
        })
    }

    /// A transport error without the URL (which may carry a token): what went wrong and why.
    fn describe(&self, e: reqwest::Error) -> String {
        let e = e.without_url();
        if e.is_timeout() {
            return format!("no response within {:?}", self.policy.timeout);
        }
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    /// The data event `k` of `n` for rows `[k·batch_size, (k+1)·batch_size)`.
    fn data_event(&self, p: &Publication, rows: &ScoreRows<'_>, k: usize, n: usize) -> Event {
        let start = k * self.batch_size;
        let end = (start + self.batch_size).min(rows.len());
        let profiles: Vec<Value> = (start..end).map(|i| rows.json(i)).collect();
        let body = json!({
            "type": "propensity.scores",
            "job": p.job,
            "publication": p.id,
            "as_of": p.as_of,
            "batch": k,
            "batches": n,
            "profiles": profiles,
        });
        Event {
            key: format!("{}-{k:05}", p.id),
            body: body.to_string(),
        }
    }

    fn completed_event(p: &Publication, n: usize, total: usize) -> Event {
        let body = json!({
            "type": "propensity.publication.completed",
            "job": p.job,
            "publication": p.id,
            "as_of": p.as_of,
            "batches": n,
            "rows": total,
            "segments": p.segments,
        });
        Event {
            key: format!("{}-completed", p.id),
            body: body.to_string(),
        }
    }

    /// Keeps `event` in `dir/file`, adding to the attempts of an earlier keep of it.
    async fn keep(
        &self,
        dir: &Path,
        file: &str,
        event: Event,
        attempts: u32,
        error: &str,
    ) -> Result<(), SinkError> {
        let path = dir.join(file);
        let earlier = match tokio::fs::try_exists(&path).await {
            Ok(true) => read_kept(&path).await.map(|k| k.attempts).unwrap_or(0),
            _ => 0,
        };
        let record = KeptEvent {
            key: event.key,
            body: event.body,
            attempts: earlier.saturating_add(attempts),
            last_error: error.to_owned(),
            kept_at: now_rfc3339(),
        };
        write_json(&path, &record).await
    }

    /// Removes `ids` from every kept data event of this sink under `state_dir` and lowers
    /// the kept completion events' row counts to match. Returns the rows removed.
    async fn scrub_outbox(
        &self,
        state_dir: &Path,
        ids: &BTreeSet<&str>,
    ) -> Result<usize, SinkError> {
        let outbox = self.outbox(state_dir);
        let mut removed_total = 0;
        for publication in list_publications(&outbox).await? {
            let dir = outbox.join(&publication);
            let mut removed_here = 0usize;
            for file in list_kept(&dir).await? {
                let path = dir.join(&file);
                let mut record = read_kept(&path).await?;
                let mut body: Value = serde_json::from_str(&record.body).map_err(|e| {
                    SinkError::external(format!(
                        "outbox file {}: body is not JSON: {e}",
                        path.display()
                    ))
                })?;
                let changed = if file == COMPLETED_FILE {
                    match body.get_mut("rows") {
                        Some(rows) if removed_here > 0 => {
                            let left = rows
                                .as_u64()
                                .unwrap_or(0)
                                .saturating_sub(removed_here as u64);
                            *rows = json!(left);
                            true
                        }
                        _ => false,
                    }
                } else {
                    match body.get_mut("profiles").and_then(Value::as_array_mut) {
                        Some(profiles) => {
                            let before = profiles.len();
                            profiles.retain(|row| {
                                !row.get("profile_id")
                                    .and_then(Value::as_str)
                                    .is_some_and(|id| ids.contains(id))
                            });
                            removed_here += before - profiles.len();
                            before != profiles.len()
                        }
                        None => false,
                    }
                };
                if changed {
                    record.body = body.to_string();
                    write_json(&path, &record).await?;
                }
            }
            removed_total += removed_here;
        }
        Ok(removed_total)
    }
}

#[async_trait::async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn include_holdout(&self) -> bool {
        self.include_holdout
    }

    /// Sends the data events in order, then the completion event; anything undelivered goes
    /// to the outbox and the publication is reported `Failed` with the replay command.
    ///
    /// Failpoints: `webhook:after_first_batch` (data event 0 delivered, the rest not sent),
    /// `webhook:before_completed` (every data event delivered), `webhook:before_record`
    /// (everything delivered, `delivered.json` not yet written).
    async fn publish(&self, p: &Publication) -> Result<Published, SinkError> {
        self.remember(&p.state_dir);
        let batch = p.rows(self.include_holdout)?;
        let rows = ScoreRows::new(&batch)?;
        let total = rows.len();
        let outbox = self.outbox(&p.state_dir);
        if read_delivered(&outbox).await?.as_deref() == Some(p.id.as_str()) {
            return Ok(Published {
                status: Status::Unchanged,
                rows: total,
                location: self.location.clone(),
                detail: Some(format!("publication {} was already delivered", p.id)),
            });
        }

        let n = total.div_ceil(self.batch_size);
        let dir = outbox.join(&p.id);
        let mut budget = self.policy.retry_budget;
        let mut exhausted = false;
        let mut kept = 0usize;
        let mut first_reason: Option<String> = None;
        for k in 0..=n {
            let (event, file, label) = if k < n {
                (
                    self.data_event(p, &rows, k, n),
                    format!("{k:05}.json"),
                    format!("batch {k}"),
                )
            } else {
                (
                    Self::completed_event(p, n, total),
                    COMPLETED_FILE.to_owned(),
                    "completion event".to_owned(),
                )
            };
            if exhausted {
                self.keep(
                    &dir,
                    &file,
                    event,
                    0,
                    "not sent: the retry budget ran out before it",
                )
                .await?;
                kept += 1;
                continue;
            }
            if k == n && kept > 0 {
                self.keep(
                    &dir,
                    &file,
                    event,
                    0,
                    "not sent: held until every batch of the publication is delivered",
                )
                .await?;
                kept += 1;
                continue;
            }
            if k == n {
                p.commit_point("webhook", "before_completed")?;
            }
            match self.deliver(&event, &mut budget).await? {
                Delivery::Delivered => {
                    let path = dir.join(&file);
                    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                        remove_file(&path).await?;
                    }
                    if k == 0 && n > 1 {
                        p.failpoint("webhook", "after_first_batch")?;
                    }
                }
                Delivery::Kept {
                    attempts,
                    error,
                    budget_exhausted,
                } => {
                    first_reason.get_or_insert_with(|| format!("{label}: {error}"));
                    self.keep(&dir, &file, event, attempts, &error).await?;
                    kept += 1;
                    exhausted = budget_exhausted;
                }
            }
        }

        if kept > 0 {
            let job = &p.job;
            return Ok(Published {
                status: Status::Failed,
                rows: total,
                location: self.location.clone(),
                detail: Some(format!(
                    "{kept} of {} batches undelivered ({}); kept in {}; run `propensity replay JOB.toml` with the job file of `{job}`",
                    n + 1,
                    first_reason.unwrap_or_else(|| "the retry budget ran out".into()),
                    dir.display()
                )),
            });
        }

        p.failpoint("webhook", "before_record")?;
        // Everything of this publication is with the receiver now, whatever an earlier run
        // of the same publication kept (possibly with another batch size).
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            remove_dir_all(&dir).await?;
        }
        record_delivered(&outbox, &p.id, false).await?;
        let older = list_publications(&outbox).await?.len();
        let mut detail = format!("{total} rows in {n} batches and the completion event delivered");
        if older > 0 {
            detail.push_str(&format!(
                "; {older} earlier publication(s) still kept in {}: run `propensity replay JOB.toml` with the job file of `{}`",
                outbox.display(),
                p.job
            ));
        }
        Ok(Published {
            status: Status::Published,
            rows: total,
            location: self.location.clone(),
            detail: Some(detail),
        })
    }

    /// Scrubs the profiles from every kept event this sink knows of (so a replay cannot
    /// resurrect them), then tells the receiver to forget them. Returns the number of
    /// distinct ids.
    async fn forget(&self, job: &str, profile_ids: &[String]) -> Result<u64, SinkError> {
        let ids: BTreeSet<&str> = profile_ids.iter().map(String::as_str).collect();
        let dirs: Vec<PathBuf> = self
            .state_dirs
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for dir in &dirs {
            let removed = self.scrub_outbox(dir, &ids).await?;
            if removed > 0 {
                tracing::info!(sink = %self.name, removed, "removed forgotten profiles from the webhook outbox");
            }
        }

        let sorted: Vec<&str> = ids.iter().copied().collect();
        let digest = Sha256::digest(sorted.join("\n").as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let event = Event {
            key: format!("forget-{hex}"),
            body: json!({
                "type": "propensity.profiles.forgotten",
                "job": job,
                "profile_ids": sorted,
            })
            .to_string(),
        };
        let mut budget = self.policy.retry_budget;
        match self.deliver(&event, &mut budget).await? {
            Delivery::Delivered => Ok(ids.len() as u64),
            Delivery::Kept { error, .. } => Err(SinkError::external(format!(
                "webhook {}: the forget event ({} profiles, key {}) was not delivered: {error}",
                self.location,
                ids.len(),
                event.key
            ))),
        }
    }
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`, or the raw bytes.
fn decode_secret(value: &str) -> Result<Vec<u8>, String> {
    let bytes = match value.strip_prefix("whsec_") {
        Some(b64) => B64.decode(b64.trim()).map_err(|_| {
            "signing_secret: the part after `whsec_` is not valid base64".to_owned()
        })?,
        None => value.as_bytes().to_vec(),
    };
    if bytes.is_empty() {
        return Err("signing_secret is empty".into());
    }
    Ok(bytes)
}

/// `v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`.
fn sign(secret: &[u8], id: &str, timestamp: u64, body: &str) -> Result<String, SinkError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|e| SinkError::internal(format!("HMAC key: {e}")))?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// The wait a `Retry-After` header asks for: delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `HTTP 400 Bad Request: <start of the answer>`.
/// The first `cap` bytes of a response's body (lossy UTF-8); the rest is never read, and the
/// connection is dropped with the response.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk[..chunk.len().min(cap - buf.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn describe_status(status: StatusCode, text: &str) -> String {
    let snippet: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(SNIPPET_CHARS)
        .collect();
    let mut s = format!("HTTP {status}");
    if !snippet.is_empty() {
        s.push_str(": ");
        s.push_str(&snippet);
    }
    s
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::external(format!("webhook outbox: {what} {}: {e}", path.display()))
}

/// The publications with kept events, oldest first (ids start with the as-of time).
async fn list_publications(outbox: &Path) -> Result<Vec<String>, SinkError> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(outbox).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_error("listing", outbox, e)),
    };
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| io_error("listing", outbox, e))?
    {
        let is_dir = entry
            .file_type()
            .await
            .map_err(|e| io_error("reading", &entry.path(), e))?
            .is_dir();
        if is_dir && let Some(name) = entry.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The kept events of one publication in sending order: data events, then `completed.json`.
/// Temporary files of an interrupted write (`*.tmp-<pid>`) are skipped.
async fn list_kept(dir: &Path) -> Result<Vec<String>, SinkError> {
    let mut data = Vec::new();
    let mut completed = false;
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(data),
        Err(e) => return Err(io_error("listing", dir, e)),
    };
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| io_error("listing", dir, e))?
    {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name == COMPLETED_FILE {
            completed = true;
        } else if name.ends_with(".json") {
            data.push(name);
        }
    }
    data.sort();
    if completed {
        data.push(COMPLETED_FILE.to_owned());
    }
    Ok(data)
}

async fn read_kept(path: &Path) -> Result<KeptEvent, SinkError> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| io_error("reading", path, e))?;
    serde_json::from_slice(&text).map_err(|e| {
        SinkError::external(format!(
            "webhook outbox: {} is not a kept batch ({e}); move it aside to replay the rest",
            path.display()
        ))
    })
}

async fn read_delivered(outbox: &Path) -> Result<Option<String>, SinkError> {
    let path = outbox.join(DELIVERED_FILE);
    match tokio::fs::read(&path).await {
        Ok(bytes) => match serde_json::from_slice::<DeliveredRecord>(&bytes) {
            Ok(r) => Ok(Some(r.publication)),
            Err(e) => {
                // A damaged record only costs a re-send, which receivers deduplicate.
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable delivered.json");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading", &path, e)),
    }
}

/// Records `publication` as the last fully delivered one. A replay of an older publication
/// (`only_if_newer`) does not displace a newer record: ids start with the as-of time.
async fn record_delivered(
    outbox: &Path,
    publication: &str,
    only_if_newer: bool,
) -> Result<(), SinkError> {
    if only_if_newer
        && let Some(current) = read_delivered(outbox).await?
        && current.as_str() > publication
    {
        return Ok(());
    }
    write_json(
        &outbox.join(DELIVERED_FILE),
        &DeliveredRecord {
            publication: publication.to_owned(),
        },
    )
    .await
}

/// Writes `value` as JSON to a temporary file next to `path`, flushes it and renames it into
/// place, so readers and a later replay see the old file or the new one, never half of one.
async fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SinkError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| SinkError::internal(format!("serializing {}: {e}", path.display())))?;
    let dir = path.parent().ok_or_else(|| {
        SinkError::internal(format!("{} has no parent directory", path.display()))
    })?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_error("creating", dir, e))?;
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| io_error("creating", &tmp, e))?;
    file.write_all(&bytes)
        .await
        .map_err(|e| io_error("writing", &tmp, e))?;
    file.sync_all()
        .await
        .map_err(|e| io_error("flushing", &tmp, e))?;
    drop(file);
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| io_error("renaming into", path, e))
}

async fn remove_file(path: &Path) -> Result<(), SinkError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("deleting", path, e)),
    }
}

async fn remove_dir_all(path: &Path) -> Result<(), SinkError> {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("deleting", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::Arc;
    use std::time::Instant;

    use arrow::array::{
        ArrayRef, Date32Array, Float64Array, Float64Builder, Int32Array, ListBuilder, RecordBatch,
        StringArray, StringBuilder, StructBuilder, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Fields};
    use propensity_core::{SinkKind, Span, Template};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// One scripted answer of the test receiver.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
        /// Bytes of filler after `body` (announced in content-length).
        filler: usize,
        delay: Duration,
    }

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: "",
            filler: 0,
            delay: Duration::ZERO,
        }
    }

    /// A request as the receiver saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        headers: BTreeMap<String, String>,
        body: String,
        at: Instant,
    }

    impl Seen {
        fn key(&self) -> &str {
            &self.headers["idempotency-key"]
        }
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    /// An HTTP/1.1 receiver on 127.0.0.1 answering from a script (200 once it runs out) and
    /// logging every request before answering it, including the ones the client gives up on.
    struct Receiver {
        port: u16,
        log: Arc<Mutex<Vec<Seen>>>,
        /// Response bytes the client accepted (the write did not fail).
        written: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Receiver {
        async fn start(script: Vec<Reply>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let log = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(VecDeque::from(script)));
            let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (log2, script2, written2) = (log.clone(), script.clone(), written.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (log, script, written) = (log2.clone(), script2.clone(), written2.clone());
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 8192];
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        let headers: BTreeMap<String, String> = head
                            .lines()
                            .skip(1)
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                            .collect();
                        let len: usize = headers
                            .get("content-length")
                            .map_or(0, |v| v.parse().unwrap());
                        while buf.len() < head_end + len {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        let body =
                            String::from_utf8(buf[head_end..head_end + len].to_vec()).unwrap();
                        log.lock().unwrap().push(Seen {
                            headers,
                            body,
                            at: Instant::now(),
                        });
                        let r = script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or_else(|| reply(200));
                        tokio::time::sleep(r.delay).await;
                        let mut out = format!(
                            "HTTP/1.1 {} Scripted\r\ncontent-length: {}\r\nconnection: close\r\n",
                            r.status,
                            r.body.len() + r.filler
                        );
                        for (k, v) in &r.headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        out.push_str(r.body);
                        if stream.write_all(out.as_bytes()).await.is_err() {
                            return;
                        }
                        let filler = vec![b'x'; 64 * 1024];
                        let mut left = r.filler;
                        while left > 0 {
                            let k = left.min(filler.len());
                            if stream.write_all(&filler[..k]).await.is_err() {
                                return;
                            }
                            written.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
                            left -= k;
                        }
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Self { port, log, written }
        }

        fn seen(&self) -> Vec<Seen> {
            self.log.lock().unwrap().clone()
        }
    }

    const SECRET_B64: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn policy() -> RetryPolicy {
        RetryPolicy {
            timeout: Duration::from_millis(300),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            retry_budget: Duration::from_secs(3),
        }
    }

    fn config() -> propensity_core::WebhookSink {
        let mut headers = BTreeMap::new();
        headers.insert(
            "Authorization".to_owned(),
            Template::parse("Bearer ${HOOK_TOKEN}").unwrap(),
        );
        propensity_core::WebhookSink {
            url: Template::parse("http://127.0.0.1:${HOOK_PORT}/hooks?token=${HOOK_TOKEN}")
                .unwrap(),
            headers,
            batch_size: 2,
            timeout: Span::from_secs(30),
            max_attempts: 5,
            initial_backoff: Span::from_secs(1),
            max_backoff: Span::from_secs(60),
            retry_budget: Span::from_secs(600),
            signing_secret: Some(Template::parse("${HOOK_SECRET}").unwrap()),
        }
    }

    fn context(port: u16) -> Context {
        let env: BTreeMap<String, String> = [
            ("HOOK_PORT", port.to_string()),
            ("HOOK_TOKEN", "s3cr3t-token".to_owned()),
            ("HOOK_SECRET", format!("whsec_{SECRET_B64}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Context {
            job_dir: PathBuf::from("."),
            env: Arc::new(move |k: &str| env.get(k).cloned()),
            state_dir: None,
        }
    }

    fn spec(cfg: &propensity_core::WebhookSink) -> SinkSpec {
        SinkSpec {
            name: "crm".to_owned(),
            include_holdout: false,
            kind: SinkKind::Webhook(cfg.clone()),
        }
    }

    fn sink(port: u16, policy: RetryPolicy) -> WebhookSink {
        let cfg = config();
        WebhookSink::with_policy(&spec(&cfg), &cfg, &context(port), policy).unwrap()
    }

    /// A score batch of `ids`; `h…` ids are held out of `vip`.
    fn score_batch(ids: &[&str]) -> RecordBatch {
        let n = ids.len();
        let fields = Fields::from(vec![
            Field::new("feature", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
            Field::new("contribution", DataType::Float64, false),
            Field::new("direction", DataType::Utf8, false),
            Field::new("importance", DataType::Utf8, false),
        ]);
        let mut factors = ListBuilder::new(StructBuilder::from_fields(fields, n));
        let mut segments = ListBuilder::new(StringBuilder::new());
        let mut holdout = ListBuilder::new(StringBuilder::new());
        for id in ids {
            let s = factors.values();
            s.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value("orders_30d");
            s.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value("Orders in the last 30 days");
            s.field_builder::<Float64Builder>(2)
                .unwrap()
                .append_value(3.0);
            s.field_builder::<Float64Builder>(3)
                .unwrap()
                .append_value(0.4);
            s.field_builder::<StringBuilder>(4)
                .unwrap()
                .append_value("up");
            s.field_builder::<StringBuilder>(5)
                .unwrap()
                .append_value("high");
            s.append(true);
            factors.append(true);
            segments.values().append_value("vip");
            segments.append(true);
            if id.starts_with('h') {
                holdout.values().append_value("vip");
            }
            holdout.append(true);
        }
        let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        RecordBatch::try_from_iter(vec![
            (
                "profile_id",
                Arc::new(StringArray::from(ids.to_vec())) as ArrayRef,
            ),
            ("job", text("demo")),
            ("goal", text("purchase")),
            (
                "as_of",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_704_153_600_000_000; n])
                        .with_timezone("UTC"),
                ),
            ),
            ("score_date", Arc::new(Date32Array::from(vec![19_724; n]))),
            ("model_version", text("v1")),
            ("config_hash", text("abc")),
            ("probability", Arc::new(Float64Array::from(vec![0.25; n]))),
            ("score", Arc::new(Int32Array::from(vec![25; n]))),
            ("percentile", Arc::new(Int32Array::from(vec![80; n]))),
            ("bucket", text("high")),
            ("factors", Arc::new(factors.finish())),
            ("segments", Arc::new(segments.finish())),
            ("holdout", Arc::new(holdout.finish())),
            ("confidence", text("high")),
        ])
        .unwrap()
    }

    /// A unique, empty job state directory.
    fn state_dir(test: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "propensity-webhook-{test}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn publication(state_dir: &Path, id: &str, ids: &[&str]) -> Publication {
        Publication {
            job: "demo".to_owned(),
            id: id.to_owned(),
            run_id: "run-1".to_owned(),
            as_of: "2024-01-02T00:00:00Z".to_owned(),
            batch: score_batch(ids),
            segments: vec!["vip".to_owned()],
            state_dir: state_dir.to_path_buf(),
            failpoint: None,
            fence: None,
        }
    }

    const PUB: &str = "20240102T000000Z-0123456789abcdef";

    fn kept_files(state_dir: &Path, publication: &str) -> Vec<String> {
        let dir = state_dir.join("outbox/crm").join(publication);
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn read_kept_file(state_dir: &Path, publication: &str, file: &str) -> KeptEvent {
        let path = state_dir.join("outbox/crm").join(publication).join(file);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// Checks the Standard Webhooks signature of a request the way a receiver would.
    fn assert_signed(seen: &Seen) {
        let id = &seen.headers["webhook-id"];
        let ts = &seen.headers["webhook-timestamp"];
        let sig = seen.headers["webhook-signature"]
            .strip_prefix("v1,")
            .unwrap();
        let key = B64.decode(SECRET_B64).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.{}", seen.body).as_bytes());
        mac.verify_slice(&B64.decode(sig).unwrap())
            .expect("the signature verifies with the shared secret");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts.parse::<u64>().unwrap()) < 60);
    }

    #[tokio::test]
    async fn delivers_every_batch_signed_with_deterministic_keys() {
        let rx = Receiver::start(vec![]).await;
        let dir = state_dir("all");
        let s = sink(rx.port, policy());
        // h2 is held out and this sink does not publish holdout rows.
        let p = publication(&dir, PUB, &["p1", "p2", "h2", "p3", "p4", "p5"]);
        let out = s.publish(&p).await.unwrap();
        assert_eq!(out.status, Status::Published, "{out:?}");
        assert_eq!(out.rows, 5);
        assert_eq!(
            out.location,
            "http://127.0.0.1:${HOOK_PORT}/hooks?token=${HOOK_TOKEN}"
        );

        let seen = rx.seen();
        let keys: Vec<&str> = seen.iter().map(Seen::key).collect();
        assert_eq!(
            keys,
            [
                format!("{PUB}-00000"),
                format!("{PUB}-00001"),
                format!("{PUB}-00002"),
                format!("{PUB}-completed")
            ]
        );
        let mut profiles = Vec::new();
        for (k, req) in seen.iter().enumerate() {
            assert_eq!(req.headers["webhook-id"], req.key());
            assert_eq!(req.headers["content-type"], "application/json");
            assert_eq!(req.headers["authorization"], "Bearer s3cr3t-token");
            assert_signed(req);
            let body = req.json();
            assert_eq!(body["job"], "demo");
            assert_eq!(body["publication"], PUB);
            assert!(body.get("run_id").is_none(), "{body}");
            assert_eq!(body["as_of"], "2024-01-02T00:00:00Z");
            assert_eq!(body["batches"], 3);
            if k < 3 {
                assert_eq!(body["type"], "propensity.scores");
                assert_eq!(body["batch"], k);
                for row in body["profiles"].as_array().unwrap() {
                    assert_eq!(row["score"], 25);
                    assert_eq!(row["factors"][0]["feature"], "orders_30d");
                    profiles.push(row["profile_id"].as_str().unwrap().to_owned());
                }
            } else {
                assert_eq!(body["type"], "propensity.publication.completed");
                assert_eq!(body["rows"], 5);
                assert_eq!(body["segments"], json!(["vip"]));
            }
        }
        assert_eq!(profiles, ["p1", "p2", "p3", "p4", "p5"]);
        let record: Value =
            serde_json::from_slice(&std::fs::read(dir.join("outbox/crm/delivered.json")).unwrap())
                .unwrap();
        assert_eq!(record["publication"], PUB);
        assert!(kept_files(&dir, PUB).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A re-run of the same publication (another run id, another state directory, so it is
    /// sent again) sends the same keys with the same bytes: a receiver's idempotency check
    /// never sees one key with two bodies.
    #[tokio::test]
    async fn a_rerun_sends_the_same_keys_with_the_same_bytes() {
        let rx = Receiver::start(vec![]).await;
        let (one, two) = (state_dir("rerun-1"), state_dir("rerun-2"));
        let s = sink(rx.port, policy());
        let first = publication(&one, PUB, &["p1", "p2", "p3"]);
        let mut second = publication(&two, PUB, &["p1", "p2", "p3"]);
        second.run_id = "run-2".to_owned();
        assert_eq!(s.publish(&first).await.unwrap().status, Status::Published);
        assert_eq!(s.publish(&second).await.unwrap().status, Status::Published);
        let seen = rx.seen();
        assert_eq!(seen.len(), 6);
        let (a, b) = seen.split_at(3);
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.key(), y.key());
            assert_eq!(x.body, y.body, "key {} sent with two bodies", x.key());
        }
        std::fs::remove_dir_all(&one).unwrap();
        std::fs::remove_dir_all(&two).unwrap();
    }

    #[tokio::test]
    async fn publishing_the_same_publication_twice_sends_nothing_the_second_time() {
        let rx = Receiver::start(vec![]).await;
        let dir = state_dir("twice");
        let s = sink(rx.port, policy());
        let p = publication(&dir, PUB, &["p1", "p2", "p3"]);
        assert_eq!(s.publish(&p).await.unwrap().status, Status::Published);
        let sent = rx.seen().len();
        assert_eq!(sent, 3);
        let again = s.publish(&p).await.unwrap();
        assert_eq!(again.status, Status::Unchanged);
        assert_eq!(again.rows, 3);
        assert_eq!(rx.seen().len(), sent);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn retries_a_500_then_delivers() {
        let rx = Receiver::start(vec![reply(500), reply(503)]).await;
        let dir = state_dir("500");
        let s = sink(rx.port, policy());
        let out = s.publish(&publication(&dir, PUB, &["p1"])).await.unwrap();
        assert_eq!(out.status, Status::Published, "{out:?}");
        let seen = rx.seen();
        let keys: Vec<&str> = seen.iter().map(Seen::key).collect();
        let first = format!("{PUB}-00000");
        assert_eq!(
            keys,
            [first.as_str(), &first, &first, &format!("{PUB}-completed")]
        );
        // The same body each time, freshly signed.
        assert_eq!(seen[0].body, seen[2].body);
        seen.iter().for_each(assert_signed);
        // Backoff 10ms then 20ms.
        assert!(seen[1].at - seen[0].at >= Duration::from_millis(10));
        assert!(seen[2].at - seen[1].at >= Duration::from_millis(20));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn waits_for_retry_after_on_429() {
        let mut limited = reply(429);
        limited.headers.push(("Retry-After", "1".to_owned()));
        let rx = Receiver::start(vec![limited]).await;
        let dir = state_dir("429");
        let s = sink(rx.port, policy());
        let out = s.publish(&publication(&dir, PUB, &["p1"])).await.unwrap();
        assert_eq!(out.status, Status::Published, "{out:?}");
        let seen = rx.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].key(), seen[1].key());
        assert!(
            seen[1].at - seen[0].at >= Duration::from_secs(1),
            "waited only {:?}",
            seen[1].at - seen[0].at
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn does_not_retry_a_400_and_keeps_the_batch() {
        let mut refused = reply(400);
        refused.body = "{\"error\": \"unknown field bucket\"}";
        let rx = Receiver::start(vec![refused]).await;
        let dir = state_dir("400");
        let s = sink(rx.port, policy());
        let out = s
            .publish(&publication(&dir, PUB, &["p1", "p2", "p3", "p4"]))
            .await
            .unwrap();
        assert_eq!(out.status, Status::Failed);
        let detail = out.detail.unwrap();
        assert!(
            detail.starts_with("2 of 3 batches undelivered (batch 0: HTTP 400 Bad Request"),
            "{detail}"
        );
        assert!(detail.contains("unknown field bucket"), "{detail}");
        assert!(
            detail.contains("propensity replay JOB.toml") && detail.contains("`demo`"),
            "{detail}"
        );
        assert!(!detail.contains("s3cr3t"), "{detail}");
        // Batch 0 once (not retried), batch 1 delivered, the completion event held back.
        let keys: Vec<String> = rx.seen().iter().map(|s| s.key().to_owned()).collect();
        assert_eq!(keys, [format!("{PUB}-00000"), format!("{PUB}-00001")]);
        assert_eq!(kept_files(&dir, PUB), ["00000.json", "completed.json"]);
        let kept = read_kept_file(&dir, PUB, "00000.json");
        assert_eq!(kept.key, format!("{PUB}-00000"));
        assert_eq!(kept.attempts, 1);
        assert!(kept.last_error.contains("400"), "{}", kept.last_error);
        assert_eq!(kept.body, rx.seen()[0].body);
        assert!(!dir.join("outbox/crm/delivered.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A receiver answering an error with a huge body costs a few KB, not the body: only
    /// the start of it is read, and the connection is dropped (a 4 GB answer drove a run past
    /// 3.5 GB of memory).
    #[tokio::test]
    async fn an_error_answer_is_read_only_as_far_as_its_snippet() {
        const HUGE: usize = 512 << 20;
        let mut huge = reply(500);
        huge.body = "overloaded ";
        huge.filler = HUGE;
        let rx = Receiver::start(vec![huge]).await;
        let dir = state_dir("huge");
        let mut p = policy();
        p.max_attempts = 1;
        p.timeout = Duration::from_secs(60);
        let s = sink(rx.port, p);
        let out = s
            .publish(&publication(&dir, PUB, &["p1", "p2"]))
            .await
            .unwrap();
        assert_eq!(out.status, Status::Failed);
        let detail = out.detail.unwrap();
        assert!(detail.contains("HTTP 500"), "{detail}");
        assert!(detail.contains("overloaded xxx"), "{detail}");
        // What the socket buffers take before the client hangs up, nowhere near the body.
        let written = rx.written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            written < 64 << 20,
            "the client took {written} bytes of {HUGE}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn retries_a_response_slower_than_the_timeout() {
        let mut slow = reply(200);
        slow.delay = Duration::from_millis(800);
        let rx = Receiver::start(vec![slow]).await;
        let dir = state_dir("slow");
        let s = sink(rx.port, policy());
        let started = Instant::now();
        let out = s.publish(&publication(&dir, PUB, &["p1"])).await.unwrap();
        assert_eq!(out.status, Status::Published, "{out:?}");
        assert!(started.elapsed() < Duration::from_millis(800));
        let seen = rx.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].key(), seen[1].key());
        assert!(seen[1].at - seen[0].at >= Duration::from_millis(300));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn exhausted_budget_keeps_the_rest_and_replay_delivers_them() {
        let rx = Receiver::start(vec![reply(500), reply(500), reply(500)]).await;
        let dir = state_dir("budget");
        let mut pol = policy();
        pol.max_attempts = 10;
        pol.initial_backoff = Duration::from_millis(20);
        pol.retry_budget = Duration::from_millis(50);
        let s = sink(rx.port, pol);
        let p = publication(&dir, PUB, &["p1", "p2", "p3", "p4", "p5"]);
        let out = s.publish(&p).await.unwrap();
        // Waits of 20ms then 40ms: the second overruns the 30ms left.
        assert_eq!(rx.seen().len(), 2);
        assert_eq!(out.status, Status::Failed);
        let detail = out.detail.unwrap();
        assert!(
            detail.starts_with("4 of 4 batches undelivered (batch 0: HTTP 500"),
            "{detail}"
        );
        assert!(detail.contains("retry budget exhausted"), "{detail}");
        assert!(
            detail.contains(&dir.join("outbox/crm").join(PUB).display().to_string()),
            "{detail}"
        );
        assert_eq!(
            kept_files(&dir, PUB),
            ["00000.json", "00001.json", "00002.json", "completed.json"]
        );
        assert_eq!(read_kept_file(&dir, PUB, "00000.json").attempts, 2);
        assert_eq!(read_kept_file(&dir, PUB, "00002.json").attempts, 0);

        // The receiver recovers (one more 500 is retried during the replay).
        let replayed = s.replay(&dir).await.unwrap();
        assert_eq!((replayed.delivered, replayed.kept), (4, 0), "{replayed:?}");
        let seen = rx.seen();
        let keys: Vec<&str> = seen[2..].iter().map(Seen::key).collect();
        let k0 = format!("{PUB}-00000");
        assert_eq!(
            keys,
            [
                k0.as_str(),
                &k0,
                &format!("{PUB}-00001"),
                &format!("{PUB}-00002"),
                &format!("{PUB}-completed")
            ]
        );
        assert_eq!(seen[0].body, seen[3].body, "a replay sends the kept bytes");
        seen.iter().for_each(assert_signed);
        assert!(!dir.join("outbox/crm").join(PUB).exists());
        let record: Value =
            serde_json::from_slice(&std::fs::read(dir.join("outbox/crm/delivered.json")).unwrap())
                .unwrap();
        assert_eq!(record["publication"], PUB);

        // Nothing left to replay, and the publication is now current.
        assert_eq!(s.replay(&dir).await.unwrap().delivered, 0);
        assert_eq!(s.publish(&p).await.unwrap().status, Status::Unchanged);
        assert_eq!(rx.seen().len(), 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn forget_sends_the_event_and_scrubs_the_outbox() {
        let rx = Receiver::start(vec![reply(422)]).await;
        let dir = state_dir("forget");
        let s = sink(rx.port, policy());
        let out = s
            .publish(&publication(&dir, PUB, &["p1", "p2", "p3"]))
            .await
            .unwrap();
        assert_eq!(out.status, Status::Failed);
        assert_eq!(kept_files(&dir, PUB), ["00000.json", "completed.json"]);

        let ids = vec!["p2".to_owned(), "p1".to_owned(), "zz".to_owned()];
        assert_eq!(s.forget("demo", &ids).await.unwrap(), 3);
        let seen = rx.seen();
        let event = seen.last().unwrap();
        let digest = Sha256::digest(b"p1\np2\nzz");
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        assert_eq!(event.key(), format!("forget-{hex}"));
        assert_signed(event);
        assert_eq!(
            event.json(),
            json!({"type": "propensity.profiles.forgotten", "job": "demo", "profile_ids": ["p1", "p2", "zz"]})
        );

        // The kept batch lost both profiles, the completion event counts one row now, and
        // the replay sends neither forgotten profile.
        let kept: Value =
            serde_json::from_str(&read_kept_file(&dir, PUB, "00000.json").body).unwrap();
        assert_eq!(kept["profiles"], json!([]));
        let completed: Value =
            serde_json::from_str(&read_kept_file(&dir, PUB, "completed.json").body).unwrap();
        assert_eq!(completed["rows"], 1);
        let replayed = s.replay(&dir).await.unwrap();
        assert_eq!((replayed.delivered, replayed.kept), (2, 0));
        let all: String = rx.seen().iter().skip(3).map(|s| s.body.clone()).collect();
        assert!(!all.contains("\"p1\"") && !all.contains("\"p2\""), "{all}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn forget_fails_when_the_receiver_refuses() {
        let rx = Receiver::start(vec![reply(404)]).await;
        let s = sink(rx.port, policy());
        let err = s.forget("demo", &["p1".to_owned()]).await.unwrap_err();
        assert_eq!(err.domain, propensity_core::Domain::External);
        assert!(err.message.contains("HTTP 404"), "{}", err.message);
        assert!(!err.message.contains("s3cr3t"), "{}", err.message);
    }

    #[tokio::test]
    async fn unreachable_receiver_is_retried_then_kept() {
        // Bind and drop a listener so the port refuses connections.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = state_dir("refused");
        let mut pol = policy();
        pol.max_attempts = 2;
        let s = sink(port, pol);
        let out = s.publish(&publication(&dir, PUB, &["p1"])).await.unwrap();
        assert_eq!(out.status, Status::Failed);
        let detail = out.detail.unwrap();
        assert!(detail.contains("gave up after 2 attempts"), "{detail}");
        assert!(!detail.contains("s3cr3t"), "{detail}");
        assert_eq!(read_kept_file(&dir, PUB, "00000.json").attempts, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn new_resolves_the_environment_without_leaking_values() {
        let cfg = config();
        let s = WebhookSink::new(&spec(&cfg), &cfg, &context(9)).unwrap();
        assert_eq!(
            s.secret.as_deref(),
            Some(B64.decode(SECRET_B64).unwrap().as_slice())
        );
        assert_eq!(s.policy.timeout, Duration::from_secs(30));
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains(SECRET_B64),
            "{debug}"
        );

        let missing = Context {
            job_dir: PathBuf::from("."),
            env: Arc::new(|k: &str| (k == "HOOK_PORT").then(|| "9".to_owned())),
            state_dir: None,
        };
        let err = WebhookSink::new(&spec(&cfg), &cfg, &missing).unwrap_err();
        assert!(err.contains("HOOK_TOKEN"), "{err}");

        let mut raw = cfg.clone();
        raw.signing_secret = Some(Template::parse("${RAW}").unwrap());
        raw.headers.clear();
        raw.url = Template::parse("https://hooks.example.com/in").unwrap();
        let ctx = Context {
            job_dir: PathBuf::from("."),
            env: Arc::new(|k: &str| (k == "RAW").then(|| "plain-secret".to_owned())),
            state_dir: None,
        };
        let s = WebhookSink::new(&spec(&raw), &raw, &ctx).unwrap();
        assert_eq!(s.secret.as_deref(), Some(b"plain-secret".as_slice()));

        let bad = Context {
            job_dir: PathBuf::from("."),
            env: Arc::new(|k: &str| (k == "RAW").then(|| "whsec_%%%not-base64".to_owned())),
            state_dir: None,
        };
        let err = WebhookSink::new(&spec(&raw), &raw, &bad).unwrap_err();
        assert!(err.contains("base64") && !err.contains("%%%"), "{err}");

        raw.headers
            .insert("Webhook-Id".to_owned(), Template::parse("x").unwrap());
        let err = WebhookSink::new(&spec(&raw), &raw, &ctx).unwrap_err();
        assert!(err.contains("Webhook-Id"), "{err}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_retry_after_reads_both_forms() {
        let p = policy();
        assert_eq!(p.backoff(1), Duration::from_millis(10));
        assert_eq!(p.backoff(2), Duration::from_millis(20));
        assert_eq!(p.backoff(3), Duration::from_millis(40));
        assert_eq!(p.backoff(4), Duration::from_millis(50));
        assert_eq!(p.backoff(60), Duration::from_millis(50));

        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
