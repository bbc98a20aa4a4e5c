//! The Redis sink: a hash per profile and a set per segment under versioned keys, then a
//! pointer flip; superseded versions expire.
//!
//! # Key layout
//!
//! Every key starts with the sink's `key_prefix` (written `{prefix}` below). A *version* is a
//! publication id (`<as-of>-<content hash>`, see [`crate::publication_id`]).
//!
//! | key | type | content |
//! |---|---|---|
//! | `{prefix}:current` | string | the current version |
//! | `{prefix}:versions` | sorted set | versions started and not yet superseded (score: unix seconds when publishing started) |
//! | `{prefix}:expiring` | sorted set | superseded versions whose keys are expiring (score: unix seconds by which they are gone) |
//! | `{prefix}:v:{version}:profile:{profile_id}` | hash | `probability`, `score`, `percentile`, `bucket`, `factors` (JSON array of `{contribution, direction, feature, importance, label, value}`), `segments` (JSON array, held-out memberships included), `holdout` (JSON array), `model_version`, `score_date` (`YYYY-MM-DD`), `as_of` (RFC 3339), `confidence` |
//! | `{prefix}:v:{version}:segment:{name}` | set | the profile ids in segment `name` and not held out of it |
//! | `{prefix}:v:{version}:holdout:{name}` | set | the profile ids held out of segment `name` (only when the sink has `include_holdout`) |
//! | `{prefix}:v:{version}:meta` | hash | `publication`, `run_id`, `job`, `rows`, `as_of`, `segments` (JSON array of the segment names), `published_at` (RFC 3339) |
//!
//! A segment without members has no set (Redis does not keep empty sets): read a missing set
//! as empty. Numbers are written in decimal; `probability` uses the shortest text that reads
//! back as the same double (as in the JSON sinks).
//!
//! # Reading
//!
//! `GET {prefix}:current`, then read the keys of that version (`HGETALL …:profile:{id}`,
//! `SISMEMBER …:segment:{name} {id}`, `SMEMBERS`/`SSCAN …:segment:{name}`). Every key of a
//! version is written before the pointer names it, and a version stays readable for
//! `expire_after` after it is superseded, so a reader holding the version it read from the
//! pointer never sees a mix of two publications.
//!
//! # Publishing
//!
//! 1. When `current` already names the publication and its `meta` exists: unchanged.
//! 2. `ZADD {prefix}:versions NX` registers the version *before* any of its keys are written,
//!    so the keys of an attempt killed halfway are found and expired by the next publication.
//! 3. The profile hashes (pipelines of 1000 `HSET`s, several pipelines in flight) and the
//!    segment/holdout sets (`SADD` in chunks of 1000 members).
//! 4. In one `MULTI`/`EXEC`: the `meta` hash, then `SET {prefix}:current` (the flip).
//! 5. Every other version in `versions` (superseded, or left by a killed attempt) is entered
//!    in `expiring`, its keys found with `SCAN MATCH {prefix}:v:{version}:*` get
//!    `EXPIRE expire_after`, and it leaves `versions`. The version just published and
//!    whatever `current` names are never expired.
//!
//! Publishing a version that had been superseded and is still expiring (running an old run
//! again) first drops its leftover keys, which carry a TTL, and writes them afresh.
//!
//! # Forgetting
//!
//! [`Sink::forget`] deletes the profile hashes and removes the ids from every segment and
//! holdout set of the current version, of every version in `versions`, and of every version
//! in `expiring` that has not expired yet, so a forgotten profile is not readable from an old
//! version during its grace period either.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ConnectionAddr, Pipeline};
use arrow::array::{Array, Float64Array, ListArray, StringArray, StructArray};
use futures::{StreamExt, TryStreamExt};
use propensity_core::SinkSpec;

use crate::{Context, Publication, Published, ScoreRows, Sink, SinkError, Status};

/// Rows per pipeline: big enough that a round trip carries ~0.5 MB, small enough that a
/// pipeline's reply does not stall the server or hold much memory.
const ROWS_PER_PIPELINE: usize = 1000;
/// Members per `SADD`/`SREM`/`UNLINK`: Redis handles variadic commands of this size in well
/// under a millisecond, so other clients are not blocked.
const MEMBERS_PER_COMMAND: usize = 1000;
/// Commands per set-writing pipeline.
const COMMANDS_PER_PIPELINE: usize = 10;
/// Pipelines in flight on the multiplexed connection: encoding the next one overlaps with
/// Redis executing the previous ones.
const PIPELINES_IN_FLIGHT: usize = 4;
/// `SCAN … COUNT`: the keyspace slots Redis inspects per call.
const SCAN_COUNT: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Generous: one response may be a whole pipeline of a thousand hashes on a busy server.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// A Redis database scores are published to (see the module docs for the key layout).
pub struct RedisSink {
    name: String,
    include_holdout: bool,
    client: Client,
    prefix: String,
    expire_after_secs: u64,
    /// `redis://host:port/db`, never with credentials.
    server: String,
    tls: bool,
}

impl std::fmt::Debug for RedisSink {
    // Hand-written: the client's connection info holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("prefix", &self.prefix)
            .field("include_holdout", &self.include_holdout)
            .field("expire_after_secs", &self.expire_after_secs)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Resolves the URL from the environment and parses it; nothing is contacted.
    pub fn new(
        spec: &SinkSpec,
        cfg: &propensity_core::RedisSink,
        ctx: &Context,
    ) -> Result<Self, String> {
        let url = cfg
            .url
            .resolve(|k| (ctx.env)(k))
            .map_err(|e| format!("url: {e}"))?;
        // The parse error never quotes the URL, which may hold a password.
        let client = Client::open(url.expose()).map_err(|e| {
            format!(
                "url is not a usable Redis URL ({e}); write redis://[user:password@]host[:port][/db] \
                 or rediss://… for TLS"
            )
        })?;
        let info = client.get_connection_info();
        let db = info.redis_settings().db();
        let host = |h: &str| {
            if h.contains(':') {
                format!("[{h}]")
            } else {
                h.to_owned()
            }
        };
        let (server, tls) = match info.addr() {
            ConnectionAddr::Tcp(h, port) => (format!("redis://{}:{port}/{db}", host(h)), false),
            ConnectionAddr::TcpTls { host: h, port, .. } => {
                (format!("rediss://{}:{port}/{db}", host(h)), true)
            }
            ConnectionAddr::Unix(path) => {
                (format!("redis+unix://{}?db={db}", path.display()), false)
            }
            other => (format!("redis {other}/{db}"), false),
        };
        Ok(Self {
            name: spec.name.clone(),
            include_holdout: spec.include_holdout,
            client,
            prefix: cfg.key_prefix.clone(),
            expire_after_secs: cfg.expire_after.as_secs(),
            server,
            tls,
        })
    }

    fn location(&self) -> String {
        format!("{} {}", self.server, self.prefix)
    }

    /// An outside failure, saying where and while doing what.
    fn fail(&self, what: &str) -> impl Fn(::redis::RedisError) -> SinkError + '_ {
        let what = what.to_owned();
        move |e| {
            SinkError::external(format!(
                "{}: {what} under `{}`: {e}",
                self.server, self.prefix
            ))
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// `{prefix}:v:{version}:`, the start of every key of a version.
    fn version_base(&self, version: &str) -> String {
        format!("{}:v:{version}:", self.prefix)
    }

    async fn connect(&self) -> Result<MultiplexedConnection, SinkError> {
        if self.tls {
            // rustls needs a process-wide crypto provider; this crate builds rustls with ring
            // only. An error means one is installed already, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| SinkError::external(format!("{}: connecting: {e}", self.server)))
    }

    /// Sets a TTL on every key of `version` and moves it from `versions` to `expiring`.
    /// It enters `expiring` before any key gets a TTL, and leaves `versions` last, so a run
    /// killed in between leaves it findable by both the next publication and `forget`.
    async fn expire_version(
        &self,
        con: &mut MultiplexedConnection,
        version: &str,
    ) -> Result<u64, SinkError> {
        let expiring = self.key("expiring");
        let secs = self.expire_after_secs;
        ::redis::cmd("ZADD")
            .arg(&expiring)
            .arg(unix_now().saturating_add(secs))
            .arg(version)
            .exec_async(con)
            .await
            .map_err(self.fail("registering an expiring version"))?;
        let pattern = format!("{}*", glob_escape(&self.version_base(version)));
        let mut in_flight = tokio::task::JoinSet::new();
        let mut cursor = String::from("0");
        let mut keys_seen = 0u64;
        loop {
            let (next, keys): (String, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(&cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(con)
                .await
                .map_err(self.fail("scanning an old version's keys"))?;
            if !keys.is_empty() {
                keys_seen += keys.len() as u64;
                let mut pipe = Pipeline::with_capacity(keys.len());
                for k in &keys {
                    pipe.cmd("EXPIRE").arg(k).arg(secs).ignore();
                }
                let mut c = con.clone();
                // Spawned so the expiry of this batch runs while the next SCAN does.
                in_flight.spawn(async move { pipe.exec_async(&mut c).await });
                while in_flight.len() >= PIPELINES_IN_FLIGHT {
                    join_one(&mut in_flight, self, "expiring an old version's keys").await?;
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        while !in_flight.is_empty() {
            join_one(&mut in_flight, self, "expiring an old version's keys").await?;
        }
        // Scored again now that the last EXPIRE is sent, so the score is never earlier than
        // the keys' real expiry (`forget` trusts it).
        ::redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&expiring)
            .arg(unix_now().saturating_add(secs))
            .arg(version)
            .ignore()
            .cmd("ZREM")
            .arg(self.key("versions"))
            .arg(version)
            .ignore()
            .exec_async(con)
            .await
            .map_err(self.fail("retiring an old version"))?;
        Ok(keys_seen)
    }

    /// The set keys of a version: from its `meta` when it was completed, else found by
    /// `SCAN` (an attempt killed before its `meta` was written).
    async fn set_keys(
        &self,
        con: &mut MultiplexedConnection,
        version: &str,
    ) -> Result<Vec<String>, SinkError> {
        let base = self.version_base(version);
        let names: Option<String> = ::redis::cmd("HGET")
            .arg(format!("{base}meta"))
            .arg("segments")
            .query_async(con)
            .await
            .map_err(self.fail("reading a version's meta"))?;
        if let Some(names) = names.and_then(|j| serde_json::from_str::<Vec<String>>(&j).ok()) {
            return Ok(names
                .iter()
                .flat_map(|n| [format!("{base}segment:{n}"), format!("{base}holdout:{n}")])
                .collect());
        }
        let mut keys = Vec::new();
        for kind in ["segment", "holdout"] {
            let pattern = format!("{}{kind}:*", glob_escape(&base));
            let mut cursor = String::from("0");
            loop {
                let (next, found): (String, Vec<String>) = ::redis::cmd("SCAN")
                    .arg(&cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(con)
                    .await
                    .map_err(self.fail("scanning a version's segment sets"))?;
                keys.extend(found);
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// Waits for one spawned pipeline and turns its failure into a sink error.
async fn join_one(
    set: &mut tokio::task::JoinSet<Result<(), ::redis::RedisError>>,
    sink: &RedisSink,
    what: &str,
) -> Result<(), SinkError> {
    match set.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(sink.fail(what)(e)),
        Some(Err(e)) => Err(SinkError::internal(format!("redis pipeline task: {e}"))),
    }
}

fn unix_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

/// Escapes the `SCAN MATCH` glob characters, so a prefix or version containing them matches
/// only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Serializes with serde_json (so text matches [`ScoreRows::json`] exactly) into a buffer
/// reused across rows.
fn write_json<T: serde::Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> Result<(), SinkError> {
    serde_json::to_writer(buf, v).map_err(|e| SinkError::internal(format!("encoding JSON: {e}")))
}

/// The values of a `List<Utf8>` column, for reading row lists without allocating.
fn list_strings(list: &ListArray) -> Result<&StringArray, SinkError> {
    list.values()
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| SinkError::internal("score table: a segment list is not List<Utf8>"))
}

/// The strings of row `i` of a `List<Utf8>` column (nulls skipped, as [`ScoreRows`] does).
fn row_strings<'a>(
    list: &'a ListArray,
    values: &'a StringArray,
    i: usize,
) -> impl Iterator<Item = &'a str> + 'a {
    let range = if list.is_null(i) {
        0..0
    } else {
        let o = list.value_offsets();
        (o[i] as usize)..(o[i + 1] as usize)
    };
    range
        .filter(|&k| !values.is_null(k))
        .map(|k| values.value(k))
}

/// The children of the `factors` struct list, downcast once.
struct FactorColumns<'a> {
    contribution: &'a Float64Array,
    direction: &'a StringArray,
    feature: &'a StringArray,
    importance: &'a StringArray,
    label: &'a StringArray,
    value: &'a Float64Array,
}

impl<'a> FactorColumns<'a> {
    fn new(list: &'a ListArray) -> Option<Self> {
        let s = list.values().as_any().downcast_ref::<StructArray>()?;
        let text = |n: &str| s.column_by_name(n)?.as_any().downcast_ref::<StringArray>();
        let num = |n: &str| s.column_by_name(n)?.as_any().downcast_ref::<Float64Array>();
        Some(Self {
            contribution: num("contribution")?,
            direction: text("direction")?,
            feature: text("feature")?,
            importance: text("importance")?,
            label: text("label")?,
            value: num("value")?,
        })
    }
}

/// Encodes score rows into `HSET` pipelines.
struct Encoder<'a> {
    rows: &'a ScoreRows<'a>,
    /// `{prefix}:v:{version}:profile:`.
    key_base: &'a str,
    factors: Option<FactorColumns<'a>>,
    segment_values: &'a StringArray,
    holdout_values: &'a StringArray,
    /// Drop each hash before writing it: its leftover from an expiring version has a TTL.
    fresh: bool,
}

impl Encoder<'_> {
    /// Row `i`'s factors as the JSON [`ScoreRows::factors`] gives (keys in sorted order, as
    /// serde_json's map writes them), without building a `Value` per row.
    fn factors_json(&self, buf: &mut Vec<u8>, i: usize) -> Result<(), SinkError> {
        buf.push(b'[');
        if let Some(f) = &self.factors {
            let list = self.rows.factors;
            let range = if list.is_null(i) {
                0..0
            } else {
                let o = list.value_offsets();
                (o[i] as usize)..(o[i + 1] as usize)
            };
            for (n, k) in range.enumerate() {
                if n > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(b"{\"contribution\":");
                write_json(buf, &f.contribution.value(k))?;
                buf.extend_from_slice(b",\"direction\":");
                write_json(buf, f.direction.value(k))?;
                buf.extend_from_slice(b",\"feature\":");
                write_json(buf, f.feature.value(k))?;
                buf.extend_from_slice(b",\"importance\":");
                write_json(buf, f.importance.value(k))?;
                buf.extend_from_slice(b",\"label\":");
                write_json(buf, f.label.value(k))?;
                buf.extend_from_slice(b",\"value\":");
                if f.value.is_null(k) {
                    buf.extend_from_slice(b"null");
                } else {
                    write_json(buf, &f.value.value(k))?;
                }
                buf.push(b'}');
            }
        }
        buf.push(b']');
        Ok(())
    }

    fn strings_json(
        buf: &mut Vec<u8>,
        list: &ListArray,
        values: &StringArray,
        i: usize,
    ) -> Result<(), SinkError> {
        buf.push(b'[');
        for (n, s) in row_strings(list, values, i).enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            write_json(buf, s)?;
        }
        buf.push(b']');
        Ok(())
    }

    /// One pipeline writing the hashes of `range`.
    fn pipeline(&self, range: Range<usize>) -> Result<Pipeline, SinkError> {
        let r = self.rows;
        let mut pipe = Pipeline::with_capacity(range.len() * if self.fresh { 2 } else { 1 });
        let mut key = Vec::with_capacity(self.key_base.len() + 64);
        let (mut probability, mut factors, mut segments, mut holdout) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // `as_of` and `score_date` are the same for (nearly) every row: format them once.
        let mut as_of: Option<(i64, String)> = None;
        let mut score_date: Option<(i32, String)> = None;
        for i in range {
            key.clear();
            key.extend_from_slice(self.key_base.as_bytes());
            key.extend_from_slice(r.profile_id.value(i).as_bytes());
            probability.clear();
            write_json(&mut probability, &r.probability.value(i))?;
            factors.clear();
            self.factors_json(&mut factors, i)?;
            segments.clear();
            Self::strings_json(&mut segments, r.segments, self.segment_values, i)?;
            holdout.clear();
            Self::strings_json(&mut holdout, r.holdout, self.holdout_values, i)?;
            let ts = r.as_of.value(i);
            if as_of.as_ref().is_none_or(|(t, _)| *t != ts) {
                as_of = Some((ts, r.as_of(i)));
            }
            let day = r.score_date.value(i);
            if score_date.as_ref().is_none_or(|(d, _)| *d != day) {
                score_date = Some((day, r.score_date(i)));
            }
            if self.fresh {
                pipe.cmd("UNLINK").arg(&key).ignore();
            }
            pipe.cmd("HSET")
                .arg(&key)
                .arg("probability")
                .arg(&probability)
                .arg("score")
                .arg(r.score.value(i))
                .arg("percentile")
                .arg(r.percentile.value(i))
                .arg("bucket")
                .arg(r.bucket.value(i))
                .arg("factors")
                .arg(&factors)
                .arg("segments")
                .arg(&segments)
                .arg("holdout")
                .arg(&holdout)
                .arg("model_version")
                .arg(r.model_version.value(i))
                .arg("score_date")
                .arg(score_date.as_ref().map_or("", |(_, s)| s.as_str()))
                .arg("as_of")
                .arg(as_of.as_ref().map_or("", |(_, s)| s.as_str()))
                .arg("confidence")
                .arg(r.confidence.value(i))
                .ignore();
        }
        Ok(pipe)
    }
}

/// Segment and holdout memberships, gathered in one pass over the rows.
struct Sets<'a> {
    /// The job's segments in job order, then any other name found in the rows.
    names: Vec<&'a str>,
    members: Vec<Vec<&'a str>>,
    held_out: Vec<Vec<&'a str>>,
}

impl<'a> Sets<'a> {
    fn gather(
        rows: &'a ScoreRows<'a>,
        job_segments: &'a [String],
        segment_values: &'a StringArray,
        holdout_values: &'a StringArray,
        include_holdout: bool,
    ) -> Self {
        let mut names: Vec<&'a str> = Vec::new();
        let mut index: HashMap<&'a str, usize> = HashMap::new();
        let mut intern = |names: &mut Vec<&'a str>, s: &'a str| -> usize {
            *index.entry(s).or_insert_with(|| {
                names.push(s);
                names.len() - 1
            })
        };
        for s in job_segments {
            intern(&mut names, s);
        }
        let mut members: Vec<Vec<&'a str>> = vec![Vec::new(); names.len()];
        let mut held_out: Vec<Vec<&'a str>> = vec![Vec::new(); names.len()];
        for i in 0..rows.len() {
            let id = rows.profile_id.value(i);
            for s in row_strings(rows.segments, segment_values, i) {
                if row_strings(rows.holdout, holdout_values, i).any(|h| h == s) {
                    continue;
                }
                let k = intern(&mut names, s);
                members.resize_with(names.len(), Vec::new);
                members[k].push(id);
            }
            if include_holdout {
                for h in row_strings(rows.holdout, holdout_values, i) {
                    let k = intern(&mut names, h);
                    held_out.resize_with(names.len(), Vec::new);
                    held_out[k].push(id);
                }
            }
        }
        members.resize_with(names.len(), Vec::new);
        held_out.resize_with(names.len(), Vec::new);
        Self {
            names,
            members,
            held_out,
        }
    }

    /// Every set key of the version, present or not (to clear leftovers).
    fn all_keys(&self, base: &str) -> Vec<String> {
        self.names
            .iter()
            .flat_map(|n| [format!("{base}segment:{n}"), format!("{base}holdout:{n}")])
            .collect()
    }

    /// `(key, members)` of every non-empty set.
    fn nonempty(&self, base: &str) -> Vec<(String, &[&'a str])> {
        let mut out = Vec::new();
        for (k, name) in self.names.iter().enumerate() {
            for (kind, ids) in [
                ("segment", &self.members[k]),
                ("holdout", &self.held_out[k]),
            ] {
                if !ids.is_empty() {
                    out.push((format!("{base}{kind}:{name}"), ids.as_slice()));
                }
            }
        }
        out
    }
}

/// `SADD` pipelines for the sets: [`COMMANDS_PER_PIPELINE`] commands of
/// [`MEMBERS_PER_COMMAND`] members each.
fn set_pipelines(sets: &[(String, &[&str])]) -> Vec<Pipeline> {
    let mut out = Vec::new();
    let mut pipe = Pipeline::new();
    for (key, ids) in sets {
        for chunk in ids.chunks(MEMBERS_PER_COMMAND) {
            pipe.cmd("SADD").arg(key).arg(chunk).ignore();
            if pipe.len() >= COMMANDS_PER_PIPELINE {
                out.push(std::mem::take(&mut pipe));
            }
        }
    }
    if !pipe.is_empty() {
        out.push(pipe);
    }
    out
}

#[async_trait::async_trait]
impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn include_holdout(&self) -> bool {
        self.include_holdout
    }

    async fn publish(&self, p: &Publication) -> Result<Published, SinkError> {
        let batch = p.rows(self.include_holdout)?;
        let rows = ScoreRows::new(&batch)?;
        let n = rows.len();
        let mut con = self.connect().await?;
        let base = self.version_base(&p.id);
        let meta_key = format!("{base}meta");
        let current_key = self.key("current");
        let versions_key = self.key("versions");
        let expiring_key = self.key("expiring");

        let (current, meta_exists, expiring): (Option<String>, bool, Option<f64>) = ::redis::pipe()
            .get(&current_key)
            .exists(&meta_key)
            .zscore(&expiring_key, &p.id)
            .query_async(&mut con)
            .await
            .map_err(self.fail("reading the current version"))?;
        if current.as_deref() == Some(p.id.as_str()) && meta_exists {
            return Ok(Published {
                status: Status::Unchanged,
                rows: n,
                location: self.location(),
                detail: Some(format!("version {} is already current", p.id)),
            });
        }
        // Leftover keys of this version carry a TTL when it was superseded and is being
        // published again: they are rewritten from scratch. It stays in `expiring` until the
        // flip, so an attempt killed before then is recognised as such again.
        let fresh = expiring.is_some();

        // Registered before any key is written: an attempt killed from here on leaves a
        // version the next publication finds and expires.
        ::redis::cmd("ZADD")
            .arg(&versions_key)
            .arg("NX")
            .arg(unix_now())
            .arg(&p.id)
            .exec_async(&mut con)
            .await
            .map_err(self.fail("registering the version"))?;

        let segment_values = list_strings(rows.segments)?;
        let holdout_values = list_strings(rows.holdout)?;
        let sets = Sets::gather(
            &rows,
            &p.segments,
            segment_values,
            holdout_values,
            self.include_holdout,
        );
        if fresh {
            let keys = sets.all_keys(&base);
            let mut pipe = ::redis::pipe();
            for chunk in keys.chunks(MEMBERS_PER_COMMAND) {
                pipe.cmd("UNLINK").arg(chunk).ignore();
            }
            pipe.exec_async(&mut con)
                .await
                .map_err(self.fail("clearing the version's leftover sets"))?;
        }

        let key_base = format!("{base}profile:");
        let encoder = Encoder {
            rows: &rows,
            key_base: &key_base,
            factors: FactorColumns::new(rows.factors),
            segment_values,
            holdout_values,
            fresh,
        };
        let nonempty = sets.nonempty(&base);
        let hash_pipes = (0..n)
            .step_by(ROWS_PER_PIPELINE)
            .map(|start| encoder.pipeline(start..(start + ROWS_PER_PIPELINE).min(n)));
        let set_pipes = set_pipelines(&nonempty).into_iter().map(Ok);
        let fail = self.fail("writing profile hashes and segment sets");
        futures::stream::iter(hash_pipes.chain(set_pipes))
            .map(|pipe| {
                let mut c = con.clone();
                let fail = &fail;
                async move { pipe?.exec_async(&mut c).await.map_err(fail) }
            })
            .buffer_unordered(PIPELINES_IN_FLIGHT)
            .try_for_each(|()| futures::future::ready(Ok(())))
            .await?;

        p.commit_point("redis", "before_flip")?;

        let segment_names = serde_json::to_string(&sets.names)
            .map_err(|e| SinkError::internal(format!("encoding segment names: {e}")))?;
        let published_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        ::redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&meta_key)
            .ignore()
            .cmd("HSET")
            .arg(&meta_key)
            .arg("publication")
            .arg(&p.id)
            .arg("run_id")
            .arg(&p.run_id)
            .arg("job")
            .arg(&p.job)
            .arg("rows")
            .arg(n)
            .arg("as_of")
            .arg(&p.as_of)
            .arg("segments")
            .arg(&segment_names)
            .arg("published_at")
            .arg(&published_at)
            .ignore()
            .cmd("SET")
            .arg(&current_key)
            .arg(&p.id)
            .ignore()
            .cmd("ZREM")
            .arg(&expiring_key)
            .arg(&p.id)
            .ignore()
            .exec_async(&mut con)
            .await
            .map_err(self.fail("writing the meta and flipping the current version"))?;

        let (versions, current): (Vec<String>, Option<String>) = ::redis::pipe()
            .zrange(&versions_key, 0, -1)
            .get(&current_key)
            .query_async(&mut con)
            .await
            .map_err(self.fail("listing old versions"))?;
        let mut expired = 0usize;
        for v in &versions {
            if *v == p.id || Some(v) == current.as_ref() {
                continue;
            }
            self.expire_version(&mut con, v).await?;
            expired += 1;
        }
        // Versions whose keys are gone no longer need forgetting.
        ::redis::cmd("ZREMRANGEBYSCORE")
            .arg(&expiring_key)
            .arg("-inf")
            .arg(format!("({}", unix_now()))
            .exec_async(&mut con)
            .await
            .map_err(self.fail("pruning expired versions"))?;

        Ok(Published {
            status: Status::Published,
            rows: n,
            location: self.location(),
            detail: Some(format!(
                "version {}: {n} profile hashes, {} segment sets; {expired} older version(s) \
                 expire in {}s",
                p.id,
                nonempty.len(),
                self.expire_after_secs
            )),
        })
    }

    async fn forget(&self, _job: &str, profile_ids: &[String]) -> Result<u64, SinkError> {
        if profile_ids.is_empty() {
            return Ok(0);
        }
        let mut con = self.connect().await?;
        let (current, versions, expiring): (Option<String>, Vec<String>, Vec<String>) =
            ::redis::pipe()
                .get(self.key("current"))
                .zrange(self.key("versions"), 0, -1)
                .zrangebyscore(self.key("expiring"), unix_now(), "+inf")
                .query_async(&mut con)
                .await
                .map_err(self.fail("listing versions"))?;
        let mut seen = HashSet::new();
        let all: Vec<String> = current
            .iter()
            .chain(&versions)
            .chain(&expiring)
            .filter(|v| seen.insert(v.as_str()))
            .cloned()
            .collect();
        let mut removed_current = 0u64;
        for version in &all {
            let base = self.version_base(version);
            let set_keys = self.set_keys(&mut con, version).await?;
            for ids in profile_ids.chunks(MEMBERS_PER_COMMAND) {
                let hash_keys: Vec<String> =
                    ids.iter().map(|id| format!("{base}profile:{id}")).collect();
                let mut pipe = ::redis::pipe();
                pipe.cmd("UNLINK").arg(&hash_keys);
                for key in &set_keys {
                    pipe.cmd("SREM").arg(key).arg(ids).ignore();
                }
                let (removed,): (u64,) = pipe
                    .query_async(&mut con)
                    .await
                    .map_err(self.fail("removing profiles"))?;
                if Some(version) == current.as_ref() {
                    removed_current += removed;
                }
            }
        }
        Ok(removed_current)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Date32Array, Int32Array, ListBuilder, RecordBatch, StringBuilder,
        TimestampMicrosecondArray,
    };
    use arrow::buffer::OffsetBuffer;
    use arrow::datatypes::{DataType, Field, Fields};
    use propensity_core::{SinkKind, Span, Template};

    use super::*;

    const URL: &str = "redis://127.0.0.1:6379/0";

    /// One test row: id, probability, segments, held out of.
    type Row<'a> = (&'a str, f64, &'a [&'a str], &'a [&'a str]);

    fn batch<'a>(rows: &[Row<'a>]) -> RecordBatch {
        let n = rows.len();
        let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        let factor_fields = Fields::from(vec![
            Field::new("feature", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
            Field::new("contribution", DataType::Float64, false),
            Field::new("direction", DataType::Utf8, false),
            Field::new("importance", DataType::Utf8, false),
        ]);
        // Two factors per row; the second has no value and a label needing escapes.
        let factors_struct = StructArray::new(
            factor_fields.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).flat_map(|_| ["orders_90d", "last_seen"]),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).flat_map(|_| ["Orders (90 days)", "Last \"seen\"\n"]),
                )),
                Arc::new(Float64Array::from_iter(
                    (0..n).flat_map(|i| [Some(i as f64 + 0.5), None]),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..n).flat_map(|_| [0.25, -1e-7]),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).flat_map(|_| ["up", "down"]),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).flat_map(|_| ["high", "low"]),
                )),
            ],
            None,
        );
        let factor_item = Arc::new(Field::new("item", DataType::Struct(factor_fields), true));
        let factors = ListArray::new(
            factor_item.clone(),
            OffsetBuffer::from_lengths(vec![2; n]),
            Arc::new(factors_struct),
            None,
        );
        let list = |pick: fn(&Row<'a>) -> &'a [&'a str]| {
            let mut b = ListBuilder::new(StringBuilder::new());
            for r in rows {
                for s in pick(r) {
                    b.values().append_value(s);
                }
                b.append(true);
            }
            Arc::new(b.finish()) as ArrayRef
        };
        let schema = crate::rows::schema();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                text("churn"),
                text("churn_30d"),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_735_689_600_000_000; n])
                        .with_timezone("UTC"),
                ),
                Arc::new(Date32Array::from(vec![20_089; n])),
                text("m-1"),
                text("cfg-1"),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| (r.1 * 100.0) as i32),
                )),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| (r.1 * 99.0) as i32),
                )),
                text("high"),
                Arc::new(factors),
                list(|r| r.2),
                list(|r| r.3),
                text("normal"),
            ],
        )
        .unwrap()
    }

    fn publication(id: &str, b: RecordBatch, failpoint: Option<&str>) -> Publication {
        Publication {
            job: "churn".into(),
            id: id.into(),
            run_id: format!("run-{id}"),
            as_of: "2025-01-01T00:00:00Z".into(),
            batch: b,
            segments: vec!["vip".into(), "at_risk".into(), "empty".into()],
            state_dir: std::env::temp_dir(),
            failpoint: failpoint.map(str::to_owned),
            fence: None,
        }
    }

    fn standard_rows() -> RecordBatch {
        batch(&[
            ("a", 0.91, &["vip", "at_risk"], &[]),
            ("b", 0.42, &["at_risk"], &[]),
            ("c", 0.77, &["vip"], &["vip"]),
            ("d", 0.05, &[], &[]),
        ])
    }

    fn ctx(vars: &[(&str, &str)]) -> Context {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Context {
            job_dir: std::env::temp_dir(),
            env: Arc::new(move |k: &str| vars.get(k).cloned()),
            state_dir: None,
        }
    }

    fn sink_with(
        url: &str,
        prefix: &str,
        include_holdout: bool,
        c: &Context,
    ) -> Result<RedisSink, String> {
        let cfg = propensity_core::RedisSink {
            url: Template::parse(url).unwrap(),
            key_prefix: prefix.into(),
            expire_after: Span::from_secs(3600),
        };
        let spec = SinkSpec {
            name: "redis".into(),
            include_holdout,
            kind: SinkKind::Redis(cfg.clone()),
        };
        RedisSink::new(&spec, &cfg, c)
    }

    fn sink(prefix: &str, include_holdout: bool) -> RedisSink {
        sink_with(URL, prefix, include_holdout, &ctx(&[])).unwrap()
    }

    /// A prefix no other test (or earlier run) uses; contains a glob character on purpose.
    fn prefix(test: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("ptest[{test}]:{}:{nanos}", std::process::id())
    }

    async fn raw() -> MultiplexedConnection {
        Client::open(URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn cleanup(prefix: &str) {
        let mut con = raw().await;
        let pattern = format!("{}:*", glob_escape(prefix));
        let mut cursor = String::from("0");
        loop {
            let (next, keys): (String, Vec<String>) = ::redis::cmd("SCAN")
                .arg(&cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .unwrap();
            if !keys.is_empty() {
                ::redis::cmd("UNLINK")
                    .arg(&keys)
                    .exec_async(&mut con)
                    .await
                    .unwrap();
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }

    async fn q<T: ::redis::FromRedisValue>(c: &mut ::redis::Cmd) -> T {
        c.query_async(&mut raw().await).await.unwrap()
    }

    fn get(k: &str) -> ::redis::Cmd {
        ::redis::cmd("GET").arg(k).clone()
    }

    async fn members(key: &str) -> Vec<String> {
        let mut m: Vec<String> = q(::redis::cmd("SMEMBERS").arg(key)).await;
        m.sort();
        m
    }

    async fn hash(key: &str) -> BTreeMap<String, String> {
        q(::redis::cmd("HGETALL").arg(key)).await
    }

    async fn ttl(key: &str) -> i64 {
        q(::redis::cmd("TTL").arg(key)).await
    }

    async fn versions(prefix: &str) -> Vec<String> {
        q(::redis::cmd("ZRANGE")
            .arg(format!("{prefix}:versions"))
            .arg(0)
            .arg(-1))
        .await
    }

    #[tokio::test]
    async fn publishes_hashes_and_segment_sets_then_unchanged() {
        let pre = prefix("publish");
        let s = sink(&pre, false);
        let b = standard_rows();
        let p = publication("v1", b.clone(), None);
        let out = s.publish(&p).await.unwrap();
        assert_eq!(out.status, Status::Published);
        assert_eq!(
            out.rows, 3,
            "c is held out and the sink excludes holdout rows"
        );
        assert_eq!(out.location, format!("redis://127.0.0.1:6379/0 {pre}"));

        let cur: Option<String> = q(&mut get(&format!("{pre}:current"))).await;
        assert_eq!(cur.as_deref(), Some("v1"));
        let h = hash(&format!("{pre}:v:v1:profile:a")).await;
        let rows = ScoreRows::new(&b).unwrap();
        let expected: BTreeMap<String, String> = [
            ("probability", "0.91".to_owned()),
            ("score", "91".into()),
            ("percentile", "90".into()),
            ("bucket", "high".into()),
            ("factors", serde_json::to_string(&rows.factors(0)).unwrap()),
            ("segments", r#"["vip","at_risk"]"#.into()),
            ("holdout", "[]".into()),
            ("model_version", "m-1".into()),
            ("score_date", rows.score_date(0)),
            ("as_of", "2025-01-01T00:00:00Z".into()),
            ("confidence", "normal".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(h, expected);
        // The factors JSON is exactly what the other sinks write, escapes and nulls included.
        assert!(h["factors"].contains(r#""value":null"#), "{}", h["factors"]);
        assert!(
            h["factors"].contains(r#"Last \"seen\"\n"#),
            "{}",
            h["factors"]
        );

        assert_eq!(members(&format!("{pre}:v:v1:segment:vip")).await, ["a"]);
        assert_eq!(
            members(&format!("{pre}:v:v1:segment:at_risk")).await,
            ["a", "b"]
        );
        let empty: bool = q(::redis::cmd("EXISTS").arg(format!("{pre}:v:v1:segment:empty"))).await;
        assert!(!empty, "a segment without members has no set");
        let d = hash(&format!("{pre}:v:v1:profile:d")).await;
        assert_eq!(d["segments"], "[]");

        let meta = hash(&format!("{pre}:v:v1:meta")).await;
        assert_eq!(meta["publication"], "v1");
        assert_eq!(meta["run_id"], "run-v1");
        assert_eq!(meta["job"], "churn");
        assert_eq!(meta["rows"], "3");
        assert_eq!(meta["segments"], r#"["vip","at_risk","empty"]"#);
        assert!(meta.contains_key("published_at") && meta.contains_key("as_of"));
        assert_eq!(versions(&pre).await, ["v1"]);
        assert_eq!(ttl(&format!("{pre}:v:v1:profile:a")).await, -1);

        let again = s.publish(&p).await.unwrap();
        assert_eq!(again.status, Status::Unchanged);
        assert_eq!(again.rows, 3);
        cleanup(&pre).await;
    }

    #[tokio::test]
    async fn second_publication_flips_and_expires_the_first() {
        let pre = prefix("flip");
        let s = sink(&pre, false);
        s.publish(&publication("v1", standard_rows(), None))
            .await
            .unwrap();
        let b2 = batch(&[("a", 0.11, &["at_risk"], &[]), ("e", 0.99, &["vip"], &[])]);
        let out = s.publish(&publication("v2", b2, None)).await.unwrap();
        assert_eq!(out.status, Status::Published);
        let cur: Option<String> = q(&mut get(&format!("{pre}:current"))).await;
        assert_eq!(cur.as_deref(), Some("v2"));
        assert_eq!(versions(&pre).await, ["v2"]);
        for k in [
            "profile:a",
            "profile:b",
            "segment:vip",
            "segment:at_risk",
            "meta",
        ] {
            let t = ttl(&format!("{pre}:v:v1:{k}")).await;
            assert!(t > 0 && t <= 3600, "v1 {k}: ttl {t}");
        }
        assert_eq!(ttl(&format!("{pre}:v:v2:profile:a")).await, -1);
        assert_eq!(ttl(&format!("{pre}:v:v2:meta")).await, -1);
        assert_eq!(
            hash(&format!("{pre}:v:v2:profile:a")).await["probability"],
            "0.11"
        );
        assert_eq!(members(&format!("{pre}:v:v2:segment:vip")).await, ["e"]);
        // The superseded version is still readable during its grace period.
        assert_eq!(
            hash(&format!("{pre}:v:v1:profile:a")).await["probability"],
            "0.91"
        );
        cleanup(&pre).await;
    }

    #[tokio::test]
    async fn failed_flip_keeps_previous_version_and_next_publish_expires_orphan() {
        let pre = prefix("failpoint");
        let s = sink(&pre, false);
        s.publish(&publication("v1", standard_rows(), None))
            .await
            .unwrap();
        let b2 = batch(&[("a", 0.11, &["at_risk"], &[]), ("e", 0.99, &["vip"], &[])]);
        let err = s
            .publish(&publication(
                "v2",
                b2.clone(),
                Some("redis:before_flip:error"),
            ))
            .await
            .unwrap_err();
        assert!(err.message.contains("before_flip"), "{err}");
        let cur: Option<String> = q(&mut get(&format!("{pre}:current"))).await;
        assert_eq!(cur.as_deref(), Some("v1"));
        // v1 is complete and untouched.
        assert_eq!(
            members(&format!("{pre}:v:v1:segment:at_risk")).await,
            ["a", "b"]
        );
        assert_eq!(
            hash(&format!("{pre}:v:v1:profile:a")).await["probability"],
            "0.91"
        );
        assert_eq!(ttl(&format!("{pre}:v:v1:profile:a")).await, -1);
        assert_eq!(hash(&format!("{pre}:v:v1:meta")).await["publication"], "v1");
        // The orphan is registered, written but without meta.
        assert_eq!(versions(&pre).await, ["v1", "v2"]);
        assert!(hash(&format!("{pre}:v:v2:meta")).await.is_empty());
        assert_eq!(ttl(&format!("{pre}:v:v2:profile:e")).await, -1);

        let b3 = batch(&[("f", 0.5, &["vip"], &[])]);
        s.publish(&publication("v3", b3, None)).await.unwrap();
        assert_eq!(versions(&pre).await, ["v3"]);
        for k in ["v1:profile:a", "v2:profile:e", "v2:segment:vip"] {
            let t = ttl(&format!("{pre}:v:{k}")).await;
            assert!(t > 0, "{k}: ttl {t}");
        }

        // Publishing the expiring v2 again revives it: no key of the current version expires.
        s.publish(&publication("v2", b2, None)).await.unwrap();
        let cur: Option<String> = q(&mut get(&format!("{pre}:current"))).await;
        assert_eq!(cur.as_deref(), Some("v2"));
        for k in [
            "profile:a",
            "profile:e",
            "segment:vip",
            "segment:at_risk",
            "meta",
        ] {
            assert_eq!(ttl(&format!("{pre}:v:v2:{k}")).await, -1, "v2 {k}");
        }
        let expiring: Vec<String> = q(::redis::cmd("ZRANGE")
            .arg(format!("{pre}:expiring"))
            .arg(0)
            .arg(-1))
        .await;
        assert_eq!(expiring, ["v1", "v3"]);
        cleanup(&pre).await;
    }

    #[tokio::test]
    async fn holdout_rows_follow_include_holdout() {
        let pre = prefix("holdout-off");
        let s = sink(&pre, false);
        s.publish(&publication("v1", standard_rows(), None))
            .await
            .unwrap();
        assert!(hash(&format!("{pre}:v:v1:profile:c")).await.is_empty());
        assert!(members(&format!("{pre}:v:v1:holdout:vip")).await.is_empty());
        cleanup(&pre).await;

        let pre = prefix("holdout-on");
        let s = sink(&pre, true);
        let out = s
            .publish(&publication("v1", standard_rows(), None))
            .await
            .unwrap();
        assert_eq!(out.rows, 4);
        let c = hash(&format!("{pre}:v:v1:profile:c")).await;
        assert_eq!(c["segments"], r#"["vip"]"#);
        assert_eq!(c["holdout"], r#"["vip"]"#);
        assert_eq!(members(&format!("{pre}:v:v1:holdout:vip")).await, ["c"]);
        assert_eq!(members(&format!("{pre}:v:v1:segment:vip")).await, ["a"]);
        cleanup(&pre).await;
    }

    #[tokio::test]
    async fn forget_removes_profiles_from_every_version() {
        let pre = prefix("forget");
        let s = sink(&pre, true);
        s.publish(&publication("v1", standard_rows(), None))
            .await
            .unwrap();
        let b2 = batch(&[
            ("a", 0.11, &["at_risk", "vip"], &["vip"]),
            ("b", 0.3, &["at_risk"], &[]),
        ]);
        s.publish(&publication("v2", b2.clone(), None))
            .await
            .unwrap();
        // An orphan of a killed attempt: no meta, its sets are found by SCAN.
        s.publish(&publication("v3", b2, Some("redis:before_flip:error")))
            .await
            .unwrap_err();

        let removed = s
            .forget("churn", &["a".into(), "c".into(), "zzz".into()])
            .await
            .unwrap();
        assert_eq!(removed, 1, "only a is in the current version");
        for v in ["v1", "v2", "v3"] {
            for id in ["a", "c"] {
                assert!(
                    hash(&format!("{pre}:v:{v}:profile:{id}")).await.is_empty(),
                    "{v} {id}"
                );
            }
            for set in ["segment:vip", "segment:at_risk", "holdout:vip"] {
                let m = members(&format!("{pre}:v:{v}:{set}")).await;
                assert!(!m.iter().any(|x| x == "a" || x == "c"), "{v} {set}: {m:?}");
            }
            assert!(
                !hash(&format!("{pre}:v:{v}:profile:b")).await.is_empty(),
                "{v} b kept"
            );
        }
        assert_eq!(members(&format!("{pre}:v:v2:segment:at_risk")).await, ["b"]);
        assert_eq!(s.forget("churn", &["a".into()]).await.unwrap(), 0);
        cleanup(&pre).await;
    }

    #[tokio::test]
    async fn missing_env_var_is_named_and_secrets_stay_hidden() {
        let url = "redis://:${PROPENSITY_TEST_REDIS_PASSWORD}@127.0.0.1:6379/0";
        let err = sink_with(url, "p", false, &ctx(&[])).unwrap_err();
        assert!(err.contains("PROPENSITY_TEST_REDIS_PASSWORD"), "{err}");

        let c = ctx(&[("PROPENSITY_TEST_REDIS_PASSWORD", "hunter2")]);
        let s = sink_with(url, "p", false, &c).unwrap();
        assert_eq!(s.location(), "redis://127.0.0.1:6379/0 p");
        assert!(!format!("{s:?}").contains("hunter2"));

        let bad = sink_with(
            "http://:${PROPENSITY_TEST_REDIS_PASSWORD}@h/0",
            "p",
            false,
            &c,
        )
        .unwrap_err();
        assert!(!bad.contains("hunter2"), "{bad}");

        let tls = sink_with(
            "rediss://:${PROPENSITY_TEST_REDIS_PASSWORD}@127.0.0.1:6390/2",
            "p",
            false,
            &c,
        )
        .unwrap();
        assert_eq!(tls.location(), "rediss://127.0.0.1:6390/2 p");

        // Nothing listens on port 1: an external error naming the server, not the password.
        let down = sink_with(
            "redis://:${PROPENSITY_TEST_REDIS_PASSWORD}@127.0.0.1:1/0",
            "p",
            false,
            &c,
        )
        .unwrap();
        let err = down
            .publish(&publication("v1", standard_rows(), None))
            .await
            .unwrap_err();
        assert_eq!(err.domain, propensity_core::Domain::External);
        assert!(err.message.contains("127.0.0.1:1"), "{err}");
        assert!(!err.message.contains("hunter2"), "{err}");
    }
}
