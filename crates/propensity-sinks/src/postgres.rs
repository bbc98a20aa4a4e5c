//! The PostgreSQL sink: score rows and segment memberships in two tables, swapped or upserted
//! in one transaction so a reader sees one publication of a job at a time (SPEC §8).
//!
//! # Tables
//!
//! The sink creates what is missing (it only issues `CREATE` for objects that do not exist
//! yet, so a pre-provisioned schema needs no `CREATE` privilege). `<schema>`, `<table>` and
//! `<segments_table>` come from the sink's configuration and are always double-quoted:
//!
//! ```sql
//! CREATE SCHEMA IF NOT EXISTS "<schema>";
//!
//! -- One row per scored profile and job: the current publication of each job.
//! CREATE TABLE IF NOT EXISTS "<schema>"."<table>" (
//!     job           text             NOT NULL,
//!     profile_id    text             NOT NULL,
//!     goal          text             NOT NULL,
//!     as_of         timestamptz      NOT NULL,
//!     score_date    date             NOT NULL,
//!     model_version text             NOT NULL,
//!     config_hash   text             NOT NULL,
//!     probability   double precision NOT NULL,
//!     score         integer          NOT NULL,
//!     percentile    integer          NOT NULL,
//!     bucket        text             NOT NULL,
//!     factors       jsonb            NOT NULL,  -- [{feature, label, value, contribution, direction, importance}]
//!     segments      text[]           NOT NULL,  -- every segment the profile is in, held out or not
//!     holdout       text[]           NOT NULL,  -- the segments it is held out of
//!     confidence    text             NOT NULL,
//!     publication   text             NOT NULL,  -- the publication id these rows belong to
//!     PRIMARY KEY (job, profile_id)
//! );
//!
//! -- One row per (profile, segment) membership; `holdout` marks the control group.
//! CREATE TABLE IF NOT EXISTS "<schema>"."<segments_table>" (
//!     job         text    NOT NULL,
//!     segment     text    NOT NULL,
//!     profile_id  text    NOT NULL,
//!     holdout     boolean NOT NULL,
//!     publication text    NOT NULL,
//!     PRIMARY KEY (job, segment, profile_id)
//! );
//!
//! -- Which publication of a job each scores table holds (shared by the sinks of a schema).
//! CREATE TABLE IF NOT EXISTS "<schema>"."propensity_publications" (
//!     sink_table   text        NOT NULL,  -- <table>, unqualified
//!     job          text        NOT NULL,
//!     publication  text        NOT NULL,
//!     run_id       text        NOT NULL,
//!     rows         bigint      NOT NULL,  -- score rows published
//!     published_at timestamptz NOT NULL,
//!     PRIMARY KEY (sink_table, job)
//! );
//! ```
//!
//! # Publishing
//!
//! 1. Both staging tables (session `TEMP` tables shaped `LIKE` the live ones, without their
//!    keys) are loaded with `COPY … FROM STDIN` in text format, outside any lock, so a large
//!    load does not hold up other publishers or readers.
//! 2. One transaction takes `pg_advisory_xact_lock(hashtext('<schema>.<table>'))` (publishers
//!    of the same table, and `forget`, run one at a time), re-checks
//!    `propensity_publications`, then either
//!    - **swap**: deletes the job's rows and inserts the staged ones, or
//!    - **upsert**: `INSERT … ON CONFLICT DO UPDATE` of every column, then deletes the job's
//!      rows whose `publication` is not the new one;
//!
//!    for both tables, records the publication, and commits.
//!
//! PostgreSQL's MVCC does the rest: until the commit every reader sees the previous rows of
//! the job, after it the new ones, never a mix. A reader that wants one consistent view of
//! both tables reads them in one `REPEATABLE READ` transaction (or one statement).
//!
//! A publication already recorded for `(<table>, job)` with the same row count, whose rows
//! the scores table still holds, is [`Status::Unchanged`]: nothing is written. (The row count is compared too because the id
//! names the whole score table, holdout rows included, while a sink may publish without them.)
//!
//! # TLS
//!
//! As libpq's `sslmode`, with `tls` overriding any `sslmode` in the URL: `disable` never uses
//! TLS; `prefer` tries TLS and falls back to plain when the server has none; `require` insists
//! on TLS without checking the certificate — unless `ca_file` is set, when the chain is
//! checked against it (libpq does the same when a root certificate is configured);
//! `verify_ca` checks the chain (roots from `ca_file`, else the system store) but not the
//! host name; `verify_full` checks both. The rustls configuration names the `ring` provider
//! explicitly: no process-wide default provider is installed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use propensity_core::SinkSpec;
use propensity_core::enums::{PostgresMode, TlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Context, Publication, Published, ScoreRows, Sink, SinkError, Status};

/// The table recording which publication each scores table holds, per job.
const PUBLICATIONS_TABLE: &str = "propensity_publications";

/// Columns of the scores table, in staging and `COPY` order.
const SCORE_COLUMNS: [&str; 16] = [
    "job",
    "profile_id",
    "goal",
    "as_of",
    "score_date",
    "model_version",
    "config_hash",
    "probability",
    "score",
    "percentile",
    "bucket",
    "factors",
    "segments",
    "holdout",
    "confidence",
    "publication",
];

/// Columns of the memberships table, in staging and `COPY` order.
const SEGMENT_COLUMNS: [&str; 5] = ["job", "segment", "profile_id", "holdout", "publication"];

/// Session-local staging tables (they vanish with the connection).
const STAGE_SCORES: &str = "pg_temp.propensity_stage_scores";
const STAGE_SEGMENTS: &str = "pg_temp.propensity_stage_segments";

/// A `COPY` chunk is sent once it grows past this, so memory stays flat for large batches.
const COPY_CHUNK: usize = 1 << 20;

/// Without a `connect_timeout` in the URL an unreachable host would hang the run for the
/// operating system's TCP timeout (minutes); libpq users expect a prompt failure.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes score rows and memberships to PostgreSQL tables (see the module docs).
pub struct PostgresSink {
    name: String,
    include_holdout: bool,
    /// Parsed from the resolved URL; holds the password, so never printed.
    config: tokio_postgres::Config,
    /// `None`: TLS disabled.
    tls: Option<MakeRustlsConnect>,
    /// `host:port/db`, the prefix of every message.
    server: String,
    /// `postgres://host:port/db schema.table`, without credentials.
    location: String,
    schema: String,
    table: String,
    mode: PostgresMode,
    /// Quoted, schema-qualified names.
    q_schema: String,
    q_scores: String,
    q_segments: String,
    q_publications: String,
    /// `<schema>.<table>`: the advisory lock key (through `hashtext`).
    lock_key: String,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("mode", &self.mode)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// `"name"`, with embedded quotes doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An error and its causes, `: `-separated (tokio-postgres puts the useful part in the
/// source: "error connecting to server: Connection refused (os error 111)").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The SQLSTATEs the user fixes in the job file or the database's grants: bad credentials
/// (class 28), a database that does not exist (3D000), missing privileges (42501).
fn is_user_state(code: &str) -> bool {
    code.starts_with("28") || code == "3D000" || code == "42501"
}

impl PostgresSink {
    /// Resolves the URL and builds the TLS configuration; nothing is contacted.
    pub fn new(
        spec: &SinkSpec,
        cfg: &propensity_core::PostgresSink,
        ctx: &Context,
    ) -> Result<Self, String> {
        let url = cfg
            .url
            .resolve(|k| (ctx.env)(k))
            .map_err(|e| format!("url: {e}"))?;
        let mut config: tokio_postgres::Config =
            url.expose().parse().map_err(|e: tokio_postgres::Error| {
                format!(
                    "url is not a valid PostgreSQL connection URL \
                     (postgres://user:password@host:port/database): {}",
                    describe(&e)
                )
            })?;
        if config.get_hosts().is_empty() {
            return Err("url names no host (postgres://user@host:port/database)".into());
        }
        let Some(user) = config.get_user().map(str::to_owned) else {
            return Err("url names no user (postgres://user@host:port/database)".into());
        };
        config.ssl_mode(match cfg.tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("propensity");
        }
        let ca_file = cfg.ca_file.as_deref().map(|f| ctx.job_dir.join(f));
        let tls = tls_connector(cfg.tls, ca_file.as_deref())?;

        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                let ports = config.get_ports();
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect();
        let db = config.get_dbname().unwrap_or(&user);
        let server = format!("{}/{db}", hosts.join(","));
        Ok(Self {
            name: spec.name.clone(),
            include_holdout: spec.include_holdout,
            location: format!("postgres://{server} {}.{}", cfg.schema, cfg.table),
            server,
            config,
            tls,
            q_schema: ident(&cfg.schema),
            q_scores: format!("{}.{}", ident(&cfg.schema), ident(&cfg.table)),
            q_segments: format!("{}.{}", ident(&cfg.schema), ident(&cfg.segments_table)),
            q_publications: format!("{}.{}", ident(&cfg.schema), ident(PUBLICATIONS_TABLE)),
            lock_key: format!("{}.{}", cfg.schema, cfg.table),
            schema: cfg.schema.clone(),
            table: cfg.table.clone(),
            mode: cfg.mode,
        })
    }

    /// A failed statement or connection: where, what, and PostgreSQL's own message.
    fn fail(&self, what: &str, e: &tokio_postgres::Error) -> SinkError {
        let msg = format!("postgres {}: {what}: {}", self.server, describe(e));
        match e.code() {
            Some(c) if is_user_state(c.code()) => SinkError::user(msg),
            _ => SinkError::external(msg),
        }
    }

    /// Opens a connection; its IO runs on a spawned task until the client is dropped.
    async fn connect(&self) -> Result<Client, SinkError> {
        let server = self.server.clone();
        let log = move |r: Result<(), tokio_postgres::Error>| {
            if let Err(e) = r {
                tracing::debug!(server, error = %describe(&e), "postgres connection ended");
            }
        };
        match &self.tls {
            None => {
                let (client, conn) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|e| self.fail("connecting", &e))?;
                tokio::spawn(async move { log(conn.await) });
                Ok(client)
            }
            Some(tls) => {
                let (client, conn) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| self.fail("connecting", &e))?;
                tokio::spawn(async move { log(conn.await) });
                Ok(client)
            }
        }
    }

    /// Creates the schema and the three tables where missing. Creators of the same schema
    /// are serialized by an advisory lock, because `CREATE … IF NOT EXISTS` run concurrently
    /// can still fail on the catalog's unique indexes. When everything exists, only one
    /// catalog query runs.
    async fn ensure_tables(&self, client: &mut Client) -> Result<(), SinkError> {
        if self.existing(&*client).await?.iter().all(|&e| e) {
            return Ok(());
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.fail("starting a transaction", &e))?;
        // Two-key advisory locks live in their own key space: this one does not collide
        // with the per-table publishing lock, and covers the shared publications table.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('propensity'), hashtext($1::text))",
            &[&self.schema],
        )
        .await
        .map_err(|e| self.fail("locking the schema for creation", &e))?;
        let [schema, scores, segments, publications] = self.existing(&tx).await?;
        let mut ddl = Vec::new();
        if !schema {
            ddl.push(format!("CREATE SCHEMA IF NOT EXISTS {}", self.q_schema));
        }
        if !scores {
            ddl.push(format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    job           text             NOT NULL,
                    profile_id    text             NOT NULL,
                    goal          text             NOT NULL,
                    as_of         timestamptz      NOT NULL,
                    score_date    date             NOT NULL,
                    model_version text             NOT NULL,
                    config_hash   text             NOT NULL,
                    probability   double precision NOT NULL,
                    score         integer          NOT NULL,
                    percentile    integer          NOT NULL,
                    bucket        text             NOT NULL,
                    factors       jsonb            NOT NULL,
                    segments      text[]           NOT NULL,
                    holdout       text[]           NOT NULL,
                    confidence    text             NOT NULL,
                    publication   text             NOT NULL,
                    PRIMARY KEY (job, profile_id)
                )",
                self.q_scores
            ));
        }
        if !segments {
            ddl.push(format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    job         text    NOT NULL,
                    segment     text    NOT NULL,
                    profile_id  text    NOT NULL,
                    holdout     boolean NOT NULL,
                    publication text    NOT NULL,
                    PRIMARY KEY (job, segment, profile_id)
                )",
                self.q_segments
            ));
        }
        if !publications {
            ddl.push(format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    sink_table   text        NOT NULL,
                    job          text        NOT NULL,
                    publication  text        NOT NULL,
                    run_id       text        NOT NULL,
                    rows         bigint      NOT NULL,
                    published_at timestamptz NOT NULL,
                    PRIMARY KEY (sink_table, job)
                )",
                self.q_publications
            ));
        }
        for sql in &ddl {
            tx.batch_execute(sql)
                .await
                .map_err(|e| self.fail("creating the tables", &e))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.fail("creating the tables", &e))
    }

    /// Whether the schema, the scores, memberships and publications tables exist.
    async fn existing(
        &self,
        client: &impl tokio_postgres::GenericClient,
    ) -> Result<[bool; 4], SinkError> {
        let row = client
            .query_one(
                "SELECT to_regnamespace($1::text) IS NOT NULL, to_regclass($2::text) IS NOT NULL, \
                 to_regclass($3::text) IS NOT NULL, to_regclass($4::text) IS NOT NULL",
                &[
                    &self.q_schema,
                    &self.q_scores,
                    &self.q_segments,
                    &self.q_publications,
                ],
            )
            .await
            .map_err(|e| self.fail("looking up the tables", &e))?;
        let mut out = [false; 4];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = row
                .try_get(i)
                .map_err(|e| SinkError::internal(format!("postgres catalog query: {e}")))?;
        }
        Ok(out)
    }

    /// The publication recorded for this table and `job`, and its row count.
    async fn current(
        &self,
        client: &impl tokio_postgres::GenericClient,
        job: &str,
    ) -> Result<Option<(String, i64)>, SinkError> {
        // The record counts only while the scores table still holds that publication's rows:
        // a table dropped or truncated by hand is published again, not reported unchanged.
        let sql = format!(
            "SELECT p.publication, p.rows FROM {} p WHERE p.sink_table = $1 AND p.job = $2 \
             AND EXISTS (SELECT 1 FROM {} s WHERE s.job = p.job AND s.publication = p.publication)",
            self.q_publications, self.q_scores
        );
        let row = client
            .query_opt(&sql, &[&self.table, &job])
            .await
            .map_err(|e| self.fail("reading the publication record", &e))?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .transpose()
            .map_err(|e: tokio_postgres::Error| {
                SinkError::internal(format!(
                    "{}: unexpected column types: {e}",
                    self.q_publications
                ))
            })
    }

    /// Loads the staging tables with `COPY`; returns (score rows, memberships).
    async fn stage(
        &self,
        client: &Client,
        p: &Publication,
        r: &ScoreRows<'_>,
    ) -> Result<(u64, u64), SinkError> {
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE propensity_stage_scores (LIKE {} INCLUDING DEFAULTS);
                 CREATE TEMP TABLE propensity_stage_segments (LIKE {} INCLUDING DEFAULTS);",
                self.q_scores, self.q_segments
            ))
            .await
            .map_err(|e| self.fail("creating the staging tables", &e))?;

        let mut copy = Copy::start(self, client, STAGE_SCORES, &SCORE_COLUMNS).await?;
        for i in 0..r.len() {
            if arrow::array::Array::is_valid(r.job, i) && r.job.value(i) != p.job {
                return Err(SinkError::internal(format!(
                    "publication of job `{}` holds a row of job `{}`",
                    p.job,
                    r.job.value(i)
                )));
            }
            score_line(&mut copy.buf, p, r, i)?;
            copy.flush_if_full().await?;
        }
        let scores = copy.finish().await?;

        let mut copy = Copy::start(self, client, STAGE_SEGMENTS, &SEGMENT_COLUMNS).await?;
        for i in 0..r.len() {
            let holdout = r.holdout(i);
            let mut seen: Vec<String> = Vec::new();
            for segment in r.segments(i) {
                if seen.contains(&segment) {
                    continue;
                }
                let held = holdout.contains(&segment);
                let b = &mut copy.buf;
                put_text(b, &p.job);
                b.extend_from_slice(b"\t");
                put_text(b, &segment);
                b.extend_from_slice(b"\t");
                put_opt(b, r.profile_id, i);
                b.extend_from_slice(if held { b"\tt\t" } else { b"\tf\t" });
                put_text(b, &p.id);
                b.extend_from_slice(b"\n");
                seen.push(segment);
            }
            copy.flush_if_full().await?;
        }
        let memberships = copy.finish().await?;
        Ok((scores, memberships))
    }

    /// The statements that make the staged rows the job's rows, each with how many of the
    /// parameters it takes: `$1` the job, `$2` the publication id.
    fn apply_statements(&self) -> Vec<(String, usize)> {
        let cols = |c: &[&str]| c.join(", ");
        let mut out = Vec::new();
        for (live, stage, columns, key) in [
            (
                &self.q_scores,
                STAGE_SCORES,
                &SCORE_COLUMNS[..],
                &["job", "profile_id"][..],
            ),
            (
                &self.q_segments,
                STAGE_SEGMENTS,
                &SEGMENT_COLUMNS[..],
                &["job", "segment", "profile_id"][..],
            ),
        ] {
            let c = cols(columns);
            match self.mode {
                PostgresMode::Swap => {
                    out.push((format!("DELETE FROM {live} WHERE job = $1"), 1));
                    out.push((
                        format!("INSERT INTO {live} ({c}) SELECT {c} FROM {stage}"),
                        0,
                    ));
                }
                PostgresMode::Upsert => {
                    let set = columns
                        .iter()
                        .filter(|col| !key.contains(col))
                        .map(|col| format!("{col} = EXCLUDED.{col}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    // Rows that are not new or changed still get the new publication id,
                    // which is what the DELETE below keys on.
                    out.push((
                        format!(
                            "INSERT INTO {live} ({c}) SELECT {c} FROM {stage} \
                             ON CONFLICT ({}) DO UPDATE SET {set}",
                            key.join(", ")
                        ),
                        0,
                    ));
                    out.push((
                        format!("DELETE FROM {live} WHERE job = $1 AND publication <> $2"),
                        2,
                    ));
                }
            }
        }
        out
    }
}

/// A `COPY … FROM STDIN` in progress: rows are appended to `buf`, sent in chunks.
struct Copy<'a> {
    sink: &'a PostgresSink,
    table: &'static str,
    writer: std::pin::Pin<Box<tokio_postgres::CopyInSink<Bytes>>>,
    buf: BytesMut,
}

impl<'a> Copy<'a> {
    async fn start(
        sink: &'a PostgresSink,
        client: &Client,
        table: &'static str,
        columns: &[&str],
    ) -> Result<Copy<'a>, SinkError> {
        let sql = format!("COPY {table} ({}) FROM STDIN", columns.join(", "));
        let writer = client
            .copy_in::<_, Bytes>(&sql)
            .await
            .map_err(|e| sink.fail(&format!("starting COPY into {table}"), &e))?;
        Ok(Copy {
            sink,
            table,
            writer: Box::pin(writer),
            buf: BytesMut::with_capacity(COPY_CHUNK + COPY_CHUNK / 4),
        })
    }

    async fn flush_if_full(&mut self) -> Result<(), SinkError> {
        if self.buf.len() >= COPY_CHUNK {
            let chunk = self.buf.split().freeze();
            self.writer
                .send(chunk)
                .await
                .map_err(|e| self.sink.fail(&format!("COPY into {}", self.table), &e))?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<u64, SinkError> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.writer
                .send(chunk)
                .await
                .map_err(|e| self.sink.fail(&format!("COPY into {}", self.table), &e))?;
        }
        self.writer
            .as_mut()
            .finish()
            .await
            .map_err(|e| self.sink.fail(&format!("COPY into {}", self.table), &e))
    }
}

/// Appends `s` as one field of `COPY`'s text format: backslash, newline, carriage return and
/// tab are backslash-escaped; everything else (commas, quotes, any UTF-8) is literal. The
/// escaped bytes are ASCII, which never occurs inside a multi-byte UTF-8 sequence, so
/// working on bytes is safe.
fn put_text(buf: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// A string column's value, or `\N` (NULL, which the `NOT NULL` columns then reject loudly).
fn put_opt(buf: &mut BytesMut, col: &arrow::array::StringArray, i: usize) {
    use arrow::array::Array;
    if col.is_valid(i) {
        put_text(buf, col.value(i));
    } else {
        buf.extend_from_slice(b"\\N");
    }
}

/// A `text[]` literal (`{"a","b"}`, every element quoted, `"` and `\` backslash-escaped),
/// then escaped again as a `COPY` field.
fn put_array(buf: &mut BytesMut, items: &[String]) {
    let mut lit = String::from("{");
    for (k, item) in items.iter().enumerate() {
        if k > 0 {
            lit.push(',');
        }
        lit.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                lit.push('\\');
            }
            lit.push(c);
        }
        lit.push('"');
    }
    lit.push('}');
    put_text(buf, &lit);
}

/// `float8` input: Rust's shortest round-trip formatting, with PostgreSQL's spelling of the
/// non-finite values.
fn put_f64(buf: &mut BytesMut, v: f64) {
    let s = if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        v.to_string()
    };
    buf.extend_from_slice(s.as_bytes());
}

/// One scores-table line in `SCORE_COLUMNS` order.
fn score_line(
    buf: &mut BytesMut,
    p: &Publication,
    r: &ScoreRows<'_>,
    i: usize,
) -> Result<(), SinkError> {
    use arrow::array::Array;
    let tab = |b: &mut BytesMut| b.extend_from_slice(b"\t");
    let null = |b: &mut BytesMut| b.extend_from_slice(b"\\N");
    put_text(buf, &p.job);
    tab(buf);
    put_opt(buf, r.profile_id, i);
    tab(buf);
    put_opt(buf, r.goal, i);
    tab(buf);
    if r.as_of.is_valid(i) {
        // Microseconds kept (ScoreRows::as_of rounds to seconds for display).
        let us = r.as_of.value(i);
        let t = chrono::DateTime::from_timestamp_micros(us).ok_or_else(|| {
            SinkError::internal(format!("score row {i}: as_of {us}µs is out of range"))
        })?;
        buf.extend_from_slice(
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                .as_bytes(),
        );
    } else {
        null(buf);
    }
    tab(buf);
    if r.score_date.is_valid(i) {
        let d = r.score_date.value_as_date(i).ok_or_else(|| {
            SinkError::internal(format!("score row {i}: score_date is out of range"))
        })?;
        buf.extend_from_slice(d.format("%Y-%m-%d").to_string().as_bytes());
    } else {
        null(buf);
    }
    tab(buf);
    put_opt(buf, r.model_version, i);
    tab(buf);
    put_opt(buf, r.config_hash, i);
    tab(buf);
    if r.probability.is_valid(i) {
        put_f64(buf, r.probability.value(i));
    } else {
        null(buf);
    }
    tab(buf);
    for col in [r.score, r.percentile] {
        if col.is_valid(i) {
            buf.extend_from_slice(col.value(i).to_string().as_bytes());
        } else {
            null(buf);
        }
        tab(buf);
    }
    put_opt(buf, r.bucket, i);
    tab(buf);
    let factors = serde_json::to_string(&r.factors(i))
        .map_err(|e| SinkError::internal(format!("score row {i}: factors as JSON: {e}")))?;
    put_text(buf, &factors);
    tab(buf);
    put_array(buf, &r.segments(i));
    tab(buf);
    put_array(buf, &r.holdout(i));
    tab(buf);
    put_opt(buf, r.confidence, i);
    tab(buf);
    put_text(buf, &p.id);
    buf.extend_from_slice(b"\n");
    Ok(())
}

/// Checks the chain of trust and nothing else: the `prefer`/`require` modes (no roots: any
/// certificate) and `verify_ca` (the chain, but any host name), as libpq does. The handshake
/// signatures are still verified, with the same provider's algorithms.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Trust anchors: the PEM certificates of `ca_file`, or the system's store.
fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display();
            let pem = std::fs::read(path)
                .map_err(|e| format!("tls.ca_file `{shown}`: cannot read it: {e}"))?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls.ca_file `{shown}`: not valid PEM: {e}"))?;
            if certs.is_empty() {
                return Err(format!(
                    "tls.ca_file `{shown}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.ca_file `{shown}`: unusable certificate: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no CA certificates found in the system store{why}; set tls.ca_file"
                ));
            }
        }
    }
    Ok(roots)
}

/// The rustls connector for a TLS mode (`None` for `disable`); see the module docs.
fn tls_connector(
    mode: TlsMode,
    ca_file: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, String> {
    if mode == TlsMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match mode {
        TlsMode::VerifyFull => builder
            .with_root_certificates(root_store(ca_file)?)
            .with_no_client_auth(),
        _ => {
            let roots = match (mode, ca_file) {
                (TlsMode::VerifyCa, _) | (_, Some(_)) => Some(Arc::new(root_store(ca_file)?)),
                _ => None,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, algorithms }))
                .with_no_client_auth()
        }
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

#[async_trait::async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn include_holdout(&self) -> bool {
        self.include_holdout
    }

    async fn publish(&self, p: &Publication) -> Result<Published, SinkError> {
        let batch = p.rows(self.include_holdout)?;
        let r = ScoreRows::new(&batch)?;
        let n = r.len();
        let unchanged = || Published {
            status: Status::Unchanged,
            rows: n,
            location: self.location.clone(),
            detail: Some(format!("publication {} is already current", p.id)),
        };
        let is_current = |cur: &Option<(String, i64)>| {
            cur.as_ref()
                .is_some_and(|(id, rows)| *id == p.id && usize::try_from(*rows).ok() == Some(n))
        };

        let mut client = self.connect().await?;
        self.ensure_tables(&mut client).await?;
        if is_current(&self.current(&client, &p.job).await?) {
            return Ok(unchanged());
        }

        let (scores, memberships) = self.stage(&client, p, &r).await?;
        if scores != n as u64 {
            return Err(SinkError::internal(format!(
                "postgres {}: staged {scores} score rows of {n}",
                self.server
            )));
        }
        p.failpoint("postgres", "after_copy")?;

        let tx = client
            .transaction()
            .await
            .map_err(|e| self.fail("starting a transaction", &e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1::text))",
            &[&self.lock_key],
        )
        .await
        .map_err(|e| self.fail(&format!("locking {}", self.lock_key), &e))?;
        // Another publisher may have committed the same publication while we staged.
        if is_current(&self.current(&tx, &p.job).await?) {
            return Ok(unchanged());
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&p.job, &p.id];
        for (sql, n_params) in self.apply_statements() {
            tx.execute(&sql, &params[..n_params])
                .await
                .map_err(|e| self.fail(&format!("publishing into {}", self.lock_key), &e))?;
        }
        let rows = i64::try_from(n)
            .map_err(|_| SinkError::internal(format!("{n} rows do not fit a bigint")))?;
        tx.execute(
            &format!(
                "INSERT INTO {} (sink_table, job, publication, run_id, rows, published_at) \
                 VALUES ($1, $2, $3, $4, $5, now()) \
                 ON CONFLICT (sink_table, job) DO UPDATE SET publication = EXCLUDED.publication, \
                 run_id = EXCLUDED.run_id, rows = EXCLUDED.rows, published_at = EXCLUDED.published_at",
                self.q_publications
            ),
            &[&self.table, &p.job, &p.id, &p.run_id, &rows],
        )
        .await
        .map_err(|e| self.fail("recording the publication", &e))?;
        p.commit_point("postgres", "before_commit")?;
        tx.commit()
            .await
            .map_err(|e| self.fail("committing the publication", &e))?;
        tracing::debug!(sink = %self.name, location = %self.location, rows = n, memberships, "published");
        Ok(Published {
            status: Status::Published,
            rows: n,
            location: self.location.clone(),
            detail: Some(format!(
                "mode {}: {n} rows, {memberships} memberships",
                self.mode
            )),
        })
    }

    async fn forget(&self, job: &str, profile_ids: &[String]) -> Result<u64, SinkError> {
        if profile_ids.is_empty() {
            return Ok(0);
        }
        let mut client = self.connect().await?;
        let [_, scores, segments, _] = self.existing(&client).await?;
        if !scores && !segments {
            return Ok(0);
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.fail("starting a transaction", &e))?;
        // The publishing lock: a publication committing concurrently would otherwise insert
        // rows this DELETE's snapshot cannot see.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1::text))",
            &[&self.lock_key],
        )
        .await
        .map_err(|e| self.fail(&format!("locking {}", self.lock_key), &e))?;
        let mut removed = 0;
        for (is_scores, exists, table) in [
            (true, scores, &self.q_scores),
            (false, segments, &self.q_segments),
        ] {
            if !exists {
                continue;
            }
            let n = tx
                .execute(
                    &format!("DELETE FROM {table} WHERE job = $1 AND profile_id = ANY($2)"),
                    &[&job, &profile_ids],
                )
                .await
                .map_err(|e| self.fail(&format!("forgetting profiles in {table}"), &e))?;
            if is_scores {
                removed = n;
            }
        }
        tx.commit()
            .await
            .map_err(|e| self.fail("committing the removal", &e))?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, Date32Array, Float64Array, Int32Array, ListArray, RecordBatch, StringArray,
        StructArray, TimestampMicrosecondArray,
    };
    use arrow::buffer::OffsetBuffer;
    use arrow::datatypes::{DataType, Field};
    use propensity_core::{Domain, SinkKind, Template};
    use serde_json::json;

    const JOB: &str = "churn";
    /// 2024-05-01T00:00:00.123456Z: microseconds must survive.
    const AS_OF_US: i64 = 1_714_521_600_123_456;
    const SERVER: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

    #[derive(Clone)]
    struct Row {
        pid: String,
        score: i32,
        segments: Vec<String>,
        holdout: Vec<String>,
        label: String,
    }

    fn row(pid: &str, score: i32, segments: &[&str], holdout: &[&str]) -> Row {
        Row {
            pid: pid.into(),
            score,
            segments: segments.iter().map(|s| s.to_string()).collect(),
            holdout: holdout.iter().map(|s| s.to_string()).collect(),
            label: "Days since last order".into(),
        }
    }

    fn probability(score: i32) -> f64 {
        f64::from(score) / 100.0 + 0.000_123_456_789
    }

    fn strings(lists: impl Iterator<Item = Vec<String>>) -> ArrayRef {
        let mut offsets = vec![0i32];
        let mut values = Vec::new();
        for l in lists {
            values.extend(l);
            offsets.push(values.len() as i32);
        }
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(StringArray::from(values)),
            None,
        ))
    }

    /// A score batch with the columns of SPEC §4; two factors per row, the second without a
    /// value.
    fn batch(rows: &[Row]) -> RecordBatch {
        let n = rows.len();
        let text = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let mut offsets = vec![0i32];
        let (mut feature, mut label, mut value, mut contribution, mut direction, mut importance) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for r in rows {
            feature.extend(["recency".to_owned(), "orders".to_owned()]);
            label.extend([r.label.clone(), "Orders, last 90 days".to_owned()]);
            value.extend([Some(3.5), None]);
            contribution.extend([0.25, -0.125]);
            direction.extend(["increases", "decreases"]);
            importance.extend(["high", "low"]);
            offsets.push(feature.len() as i32);
        }
        let factors = StructArray::new(
            crate::rows::factor_fields(),
            vec![
                Arc::new(StringArray::from(feature)) as ArrayRef,
                Arc::new(StringArray::from(label)),
                Arc::new(Float64Array::from(value)),
                Arc::new(Float64Array::from(contribution)),
                Arc::new(StringArray::from(direction)),
                Arc::new(StringArray::from(importance)),
            ],
            None,
        );
        let factors: ArrayRef = Arc::new(ListArray::new(
            Arc::new(Field::new(
                "item",
                DataType::Struct(crate::rows::factor_fields()),
                true,
            )),
            OffsetBuffer::new(offsets.into()),
            Arc::new(factors),
            None,
        ));
        let day = AS_OF_US.div_euclid(86_400_000_000) as i32;
        RecordBatch::try_from_iter(vec![
            ("profile_id", text(&|r| r.pid.clone())),
            ("job", text(&|_| JOB.into())),
            ("goal", text(&|_| "purchase".into())),
            (
                "as_of",
                Arc::new(TimestampMicrosecondArray::from(vec![AS_OF_US; n]).with_timezone("UTC"))
                    as ArrayRef,
            ),
            ("score_date", Arc::new(Date32Array::from(vec![day; n]))),
            ("model_version", text(&|_| "m-2024-05-01".into())),
            ("config_hash", text(&|_| "cfg123".into())),
            (
                "probability",
                Arc::new(Float64Array::from(
                    rows.iter()
                        .map(|r| probability(r.score))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "score",
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.score).collect::<Vec<_>>(),
                )),
            ),
            (
                "percentile",
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.score / 2).collect::<Vec<_>>(),
                )),
            ),
            (
                "bucket",
                text(&|r| if r.score >= 50 { "high" } else { "low" }.into()),
            ),
            ("factors", factors),
            ("segments", strings(rows.iter().map(|r| r.segments.clone()))),
            ("holdout", strings(rows.iter().map(|r| r.holdout.clone()))),
            ("confidence", text(&|_| "normal".into())),
        ])
        .unwrap()
    }

    fn publication(id: &str, rows: &[Row]) -> Publication {
        Publication {
            job: JOB.into(),
            id: id.into(),
            run_id: format!("run-{id}"),
            as_of: "2024-05-01T00:00:00Z".into(),
            batch: batch(rows),
            segments: vec!["high".into(), "vip".into()],
            state_dir: std::env::temp_dir(),
            failpoint: None,
            fence: None,
        }
    }

    fn context(vars: &[(&str, &str)]) -> Context {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Context {
            job_dir: std::env::temp_dir(),
            env: Arc::new(move |k| vars.get(k).cloned()),
            state_dir: None,
        }
    }

    fn config(
        url: &str,
        schema: &str,
        mode: PostgresMode,
        tls: TlsMode,
    ) -> propensity_core::PostgresSink {
        propensity_core::PostgresSink {
            url: Template::parse(url).unwrap(),
            schema: schema.into(),
            table: "profile_scores".into(),
            segments_table: "profile_scores_segments".into(),
            mode,
            tls,
            ca_file: None,
        }
    }

    fn build(
        cfg: propensity_core::PostgresSink,
        include_holdout: bool,
        ctx: &Context,
    ) -> Result<PostgresSink, String> {
        let spec = SinkSpec {
            name: "warehouse".into(),
            include_holdout,
            kind: SinkKind::Postgres(cfg.clone()),
        };
        PostgresSink::new(&spec, &cfg, ctx)
    }

    fn sink(schema: &str, mode: PostgresMode, include_holdout: bool) -> PostgresSink {
        build(
            config(
                "postgres://postgres@127.0.0.1:5432/test",
                schema,
                mode,
                TlsMode::Disable,
            ),
            include_holdout,
            &context(&[]),
        )
        .unwrap()
    }

    /// A direct connection and a fresh schema name; mixed case, so quoting is exercised.
    async fn db(tag: &str) -> (Client, String) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!("PgSink_{tag}_{}_{nanos}", std::process::id());
        let (client, conn) = tokio_postgres::connect(SERVER, NoTls).await.unwrap();
        tokio::spawn(conn);
        drop_schema(&client, &schema).await;
        (client, schema)
    }

    async fn drop_schema(client: &Client, schema: &str) {
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema)))
            .await
            .unwrap();
    }

    /// (profile_id, score, publication), by profile.
    async fn scores(client: &Client, schema: &str) -> Vec<(String, i32, String)> {
        client
            .query(
                &format!(
                    "SELECT profile_id, score, publication FROM {}.profile_scores ORDER BY profile_id",
                    ident(schema)
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// (segment, profile_id, holdout), sorted.
    async fn members(client: &Client, schema: &str) -> Vec<(String, String, bool)> {
        client
            .query(
                &format!(
                    "SELECT segment, profile_id, holdout FROM {}.profile_scores_segments \
                     ORDER BY segment, profile_id",
                    ident(schema)
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// (publication, run_id, rows) recorded for the scores table.
    async fn record(client: &Client, schema: &str) -> (String, String, i64) {
        let r = client
            .query_one(
                &format!(
                    "SELECT publication, run_id, rows FROM {}.propensity_publications \
                     WHERE sink_table = 'profile_scores' AND job = $1",
                    ident(schema)
                ),
                &[&JOB],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    }

    fn owned(v: &[(&str, i32, &str)]) -> Vec<(String, i32, String)> {
        v.iter()
            .map(|(a, b, c)| (a.to_string(), *b, c.to_string()))
            .collect()
    }

    fn owned_members(v: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
        v.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
            .collect()
    }

    #[test]
    fn copy_text_escaping() {
        let mut b = BytesMut::new();
        put_text(&mut b, "a,b\t\"c\"\\d\ne\rü");
        assert_eq!(&b[..], "a,b\\t\"c\"\\\\d\\ne\\rü".as_bytes());
        let mut b = BytesMut::new();
        put_array(&mut b, &["x\"y".into(), "p\\q".into(), "NULL".into()]);
        assert_eq!(&b[..], br#"{"x\\"y","p\\\\q","NULL"}"#);
        let mut b = BytesMut::new();
        put_array(&mut b, &[]);
        assert_eq!(&b[..], b"{}");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }

    #[tokio::test]
    async fn publish_creates_tables_and_rows_read_back() {
        let (client, schema) = db("create").await;
        let s = sink(&schema, PostgresMode::Swap, true);
        let p = publication(
            "20240501T000000Z-aaaa",
            &[
                row("p1", 90, &["high", "vip"], &["vip"]),
                row("p2", 10, &[], &[]),
            ],
        );
        let out = s.publish(&p).await.unwrap();
        assert_eq!(out.status, Status::Published);
        assert_eq!(out.rows, 2);
        assert_eq!(
            out.location,
            format!("postgres://127.0.0.1:5432/test {schema}.profile_scores")
        );
        assert_eq!(
            out.detail.as_deref(),
            Some("mode swap: 2 rows, 2 memberships")
        );

        let rows = client
            .query(
                &format!(
                    "SELECT job, profile_id, goal, \
                     to_char(as_of AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), \
                     score_date::text, model_version, config_hash, probability, score, percentile, \
                     bucket, factors::text, segments, holdout, confidence, publication \
                     FROM {}.profile_scores ORDER BY profile_id",
                    ident(&schema)
                ),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!(r.get::<_, String>(0), JOB);
        assert_eq!(r.get::<_, String>(1), "p1");
        assert_eq!(r.get::<_, String>(2), "purchase");
        assert_eq!(r.get::<_, String>(3), "2024-05-01T00:00:00.123456");
        assert_eq!(r.get::<_, String>(4), "2024-05-01");
        assert_eq!(r.get::<_, String>(5), "m-2024-05-01");
        assert_eq!(r.get::<_, String>(6), "cfg123");
        assert_eq!(r.get::<_, f64>(7), probability(90));
        assert_eq!(r.get::<_, i32>(8), 90);
        assert_eq!(r.get::<_, i32>(9), 45);
        assert_eq!(r.get::<_, String>(10), "high");
        let factors: serde_json::Value = serde_json::from_str(&r.get::<_, String>(11)).unwrap();
        assert_eq!(
            factors,
            json!([
                {"feature": "recency", "label": "Days since last order", "value": 3.5,
                 "contribution": 0.25, "direction": "increases", "importance": "high"},
                {"feature": "orders", "label": "Orders, last 90 days", "value": null,
                 "contribution": -0.125, "direction": "decreases", "importance": "low"},
            ])
        );
        assert_eq!(r.get::<_, Vec<String>>(12), vec!["high", "vip"]);
        assert_eq!(r.get::<_, Vec<String>>(13), vec!["vip"]);
        assert_eq!(r.get::<_, String>(14), "normal");
        assert_eq!(r.get::<_, String>(15), p.id);
        assert_eq!(rows[1].get::<_, Vec<String>>(12), Vec::<String>::new());
        assert_eq!(rows[1].get::<_, Vec<String>>(13), Vec::<String>::new());

        assert_eq!(
            members(&client, &schema).await,
            owned_members(&[("high", "p1", false), ("vip", "p1", true)])
        );
        assert_eq!(
            record(&client, &schema).await,
            (p.id.clone(), format!("run-{}", p.id), 2)
        );
        drop_schema(&client, &schema).await;
    }

    #[tokio::test]
    async fn same_publication_again_is_unchanged() {
        let (client, schema) = db("same").await;
        let s = sink(&schema, PostgresMode::Swap, true);
        let p = publication(
            "id-1",
            &[row("p1", 90, &["high"], &[]), row("p2", 20, &[], &[])],
        );
        assert_eq!(s.publish(&p).await.unwrap().status, Status::Published);
        let versions = format!(
            "SELECT (SELECT array_agg(xmin::text ORDER BY profile_id) FROM {s}.profile_scores), \
                    (SELECT array_agg(xmin::text ORDER BY profile_id) FROM {s}.profile_scores_segments), \
                    (SELECT array_agg(xmin::text) FROM {s}.propensity_publications)",
            s = ident(&schema)
        );
        let read = |sql: String| {
            let client = &client;
            async move {
                let r = client.query_one(&sql, &[]).await.unwrap();
                (0..3)
                    .map(|i| r.get::<_, Vec<String>>(i))
                    .collect::<Vec<_>>()
            }
        };
        let before = read(versions.clone()).await;
        let again = s.publish(&p).await.unwrap();
        assert_eq!(again.status, Status::Unchanged);
        assert_eq!(again.rows, 2);
        assert_eq!(read(versions).await, before, "no row was rewritten");
        // A table emptied (or dropped) by hand is not "unchanged": its rows come back.
        client
            .batch_execute(&format!("TRUNCATE {}.profile_scores", ident(&schema)))
            .await
            .unwrap();
        assert_eq!(s.publish(&p).await.unwrap().status, Status::Published);
        assert_eq!(scores(&client, &schema).await.len(), 2);
        drop_schema(&client, &schema).await;
    }

    async fn second_publication_replaces_first(mode: PostgresMode, tag: &str) {
        let (client, schema) = db(tag).await;
        let s = sink(&schema, mode, true);
        let first = publication(
            "first",
            &[
                row("p1", 90, &["high"], &[]),
                row("p2", 60, &["high", "vip"], &["vip"]),
                row("p3", 10, &[], &[]),
            ],
        );
        s.publish(&first).await.unwrap();
        let second = publication(
            "second",
            &[
                row("p2", 30, &["vip"], &[]),
                row("p4", 80, &["high"], &["high"]),
            ],
        );
        let out = s.publish(&second).await.unwrap();
        assert_eq!(out.status, Status::Published);
        assert_eq!(
            out.detail,
            Some(format!("mode {mode}: 2 rows, 2 memberships"))
        );
        assert_eq!(
            scores(&client, &schema).await,
            owned(&[("p2", 30, "second"), ("p4", 80, "second")])
        );
        assert_eq!(
            members(&client, &schema).await,
            owned_members(&[("high", "p4", true), ("vip", "p2", false)])
        );
        assert_eq!(
            record(&client, &schema).await,
            ("second".into(), "run-second".into(), 2)
        );
        // Going back to the first publication is a publication like any other.
        assert_eq!(s.publish(&first).await.unwrap().status, Status::Published);
        assert_eq!(
            scores(&client, &schema).await,
            owned(&[
                ("p1", 90, "first"),
                ("p2", 60, "first"),
                ("p3", 10, "first")
            ])
        );
        drop_schema(&client, &schema).await;
    }

    #[tokio::test]
    async fn second_publication_replaces_first_swap() {
        second_publication_replaces_first(PostgresMode::Swap, "swap").await;
    }

    #[tokio::test]
    async fn second_publication_replaces_first_upsert() {
        second_publication_replaces_first(PostgresMode::Upsert, "upsert").await;
    }

    #[tokio::test]
    async fn jobs_sharing_a_table_are_independent() {
        let (client, schema) = db("jobs").await;
        let s = sink(&schema, PostgresMode::Swap, true);
        let mut other = publication("other-1", &[row("p9", 50, &[], &[])]);
        other.job = "upsell".into();
        other.batch = {
            let b = batch(&[row("p9", 50, &[], &[])]);
            let mut cols = b.columns().to_vec();
            cols[1] = Arc::new(StringArray::from(vec!["upsell"]));
            RecordBatch::try_new(b.schema(), cols).unwrap()
        };
        s.publish(&other).await.unwrap();
        s.publish(&publication("c1", &[row("p1", 90, &[], &[])]))
            .await
            .unwrap();
        s.publish(&publication("c2", &[row("p2", 80, &[], &[])]))
            .await
            .unwrap();
        let all: Vec<(String, String)> = client
            .query(
                &format!(
                    "SELECT job, profile_id FROM {}.profile_scores ORDER BY job",
                    ident(&schema)
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            all,
            vec![
                ("churn".into(), "p2".into()),
                ("upsell".into(), "p9".into())
            ]
        );
        // A row of another job in the batch is a bug upstream, not something to publish.
        let mut wrong = publication("c3", &[row("p3", 10, &[], &[])]);
        wrong.job = "upsell".into();
        assert_eq!(
            s.publish(&wrong).await.unwrap_err().domain,
            Domain::Internal
        );
        drop_schema(&client, &schema).await;
    }

    #[tokio::test]
    async fn include_holdout_false_drops_holdout_rows() {
        let (client, schema) = db("holdout").await;
        let s = sink(&schema, PostgresMode::Swap, false);
        let p = publication(
            "h1",
            &[
                row("p1", 90, &["high", "vip"], &["vip"]),
                row("p2", 80, &["high"], &[]),
            ],
        );
        let out = s.publish(&p).await.unwrap();
        assert_eq!(out.rows, 1);
        assert_eq!(scores(&client, &schema).await, owned(&[("p2", 80, "h1")]));
        assert_eq!(
            members(&client, &schema).await,
            owned_members(&[("high", "p2", false)])
        );
        // The same publication through a sink that wants holdout rows is not "unchanged":
        // the recorded row count tells the two apart.
        let with = sink(&schema, PostgresMode::Swap, true);
        assert_eq!(with.publish(&p).await.unwrap().status, Status::Published);
        assert_eq!(scores(&client, &schema).await.len(), 2);
        drop_schema(&client, &schema).await;
    }

    #[tokio::test]
    async fn failpoints_leave_the_previous_publication_visible() {
        let (client, schema) = db("failpoint").await;
        for mode in [PostgresMode::Swap, PostgresMode::Upsert] {
            drop_schema(&client, &schema).await;
            let s = sink(&schema, mode, true);
            let old = publication(
                "old",
                &[row("p1", 90, &["high"], &[]), row("p2", 70, &["high"], &[])],
            );
            s.publish(&old).await.unwrap();
            let before = (
                scores(&client, &schema).await,
                members(&client, &schema).await,
            );
            for point in ["after_copy", "before_commit"] {
                let mut new = publication("new", &[row("p3", 50, &["vip"], &[])]);
                new.failpoint = Some(format!("redis:{point}, postgres:{point}:error"));
                let err = s.publish(&new).await.unwrap_err();
                assert_eq!(err.domain, Domain::External);
                assert!(err.message.contains(point), "{}", err.message);
                assert_eq!(
                    (
                        scores(&client, &schema).await,
                        members(&client, &schema).await
                    ),
                    before,
                    "{mode} {point}"
                );
                assert_eq!(record(&client, &schema).await.0, "old");
            }
            let new = publication("new", &[row("p3", 50, &["vip"], &[])]);
            assert_eq!(s.publish(&new).await.unwrap().status, Status::Published);
            assert_eq!(scores(&client, &schema).await, owned(&[("p3", 50, "new")]));
        }
        drop_schema(&client, &schema).await;
    }

    #[tokio::test]
    async fn forget_removes_the_profile() {
        let (client, schema) = db("forget").await;
        let s = sink(&schema, PostgresMode::Swap, true);
        assert_eq!(
            s.forget(JOB, &["p1".into()]).await.unwrap(),
            0,
            "no tables yet"
        );
        s.publish(&publication(
            "f1",
            &[
                row("p1", 90, &["high", "vip"], &["vip"]),
                row("p2", 80, &["high"], &[]),
            ],
        ))
        .await
        .unwrap();
        assert_eq!(s.forget("another-job", &["p1".into()]).await.unwrap(), 0);
        assert_eq!(
            s.forget(JOB, &["p1".into(), "nobody".into()])
                .await
                .unwrap(),
            1
        );
        assert_eq!(scores(&client, &schema).await, owned(&[("p2", 80, "f1")]));
        assert_eq!(
            members(&client, &schema).await,
            owned_members(&[("high", "p2", false)])
        );
        assert_eq!(s.forget(JOB, &[]).await.unwrap(), 0);
        drop_schema(&client, &schema).await;
    }

    #[tokio::test]
    async fn tricky_strings_round_trip() {
        let (client, schema) = db("tricky").await;
        let s = sink(&schema, PostgresMode::Upsert, true);
        let tricky = [
            "a,b",
            "q\"uote",
            "new\nline",
            "tab\there",
            "back\\slash",
            "\\N",
            "cr\r\nlf",
            "ünïcødé 🎯",
            "{curly}",
            "NULL",
            "'single'",
            "",
            " padded ",
        ];
        let rows: Vec<Row> = tricky
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut r = row(&format!("id {t}"), i as i32, &[t, "plain"], &[t]);
                r.label = format!("label {t}");
                r
            })
            .collect();
        s.publish(&publication("t1", &rows)).await.unwrap();
        let got = client
            .query(
                &format!(
                    "SELECT profile_id, segments, holdout, factors->0->>'label' FROM {}.profile_scores ORDER BY score",
                    ident(&schema)
                ),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(got.len(), tricky.len());
        for (t, r) in tricky.iter().zip(&got) {
            assert_eq!(r.get::<_, String>(0), format!("id {t}"));
            assert_eq!(
                r.get::<_, Vec<String>>(1),
                vec![t.to_string(), "plain".into()]
            );
            assert_eq!(r.get::<_, Vec<String>>(2), vec![t.to_string()]);
            assert_eq!(r.get::<_, String>(3), format!("label {t}"));
        }
        let mut expected: Vec<(String, String, bool)> = tricky
            .iter()
            .flat_map(|t| {
                [
                    (t.to_string(), format!("id {t}"), true),
                    ("plain".into(), format!("id {t}"), false),
                ]
            })
            .collect();
        let mut got = members(&client, &schema).await;
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(
            s.forget(JOB, &["id a,b".into(), "id new\nline".into()])
                .await
                .unwrap(),
            2
        );
        drop_schema(&client, &schema).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishers_create_the_tables_once() {
        let (client, schema) = db("race").await;
        let sinks: Vec<PostgresSink> = (0..4)
            .map(|k| {
                let mut cfg = config(
                    "postgres://postgres@127.0.0.1:5432/test",
                    &schema,
                    PostgresMode::Swap,
                    TlsMode::Disable,
                );
                cfg.table = format!("scores_{}", k % 2);
                cfg.segments_table = format!("scores_{}_segments", k % 2);
                build(cfg, true, &context(&[])).unwrap()
            })
            .collect();
        let p = publication("race", &[row("p1", 90, &["high"], &[])]);
        let results = futures::future::join_all(sinks.iter().map(|s| s.publish(&p))).await;
        let statuses: Vec<Status> = results.into_iter().map(|r| r.unwrap().status).collect();
        // Two sinks per table: one publishes; the other finds the publication current,
        // before staging or when it re-checks under the lock.
        let published = statuses.iter().filter(|s| **s == Status::Published).count();
        let unchanged = statuses.iter().filter(|s| **s == Status::Unchanged).count();
        assert_eq!((published, unchanged), (2, 2), "{statuses:?}");
        for table in ["scores_0", "scores_1"] {
            let n: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM {}.{}", ident(&schema), ident(table)),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 1);
        }
        drop_schema(&client, &schema).await;
    }

    #[tokio::test]
    async fn tls_require_without_server_tls_is_an_external_error() {
        // A server that answers the SSLRequest with "N" (no TLS), as one without TLS does.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut req = [0u8; 8];
                if sock.read_exact(&mut req).await.is_ok() {
                    let _ = sock.write_all(b"N").await;
                }
            }
        });
        let url = format!("postgres://postgres@127.0.0.1:{port}/test");
        let s = build(
            config(&url, "x", PostgresMode::Swap, TlsMode::Require),
            true,
            &context(&[]),
        )
        .unwrap();
        let err = s
            .publish(&publication("x", &[row("p1", 1, &[], &[])]))
            .await
            .unwrap_err();
        assert_eq!(err.domain, Domain::External);
        assert_eq!(
            err.message,
            format!(
                "postgres 127.0.0.1:{port}/test: connecting: error performing TLS handshake: server does not support TLS"
            )
        );
    }

    /// Whether a connection of the sink uses TLS, or why it failed.
    async fn uses_tls(s: &PostgresSink) -> Result<bool, SinkError> {
        let client = s.connect().await?;
        Ok(client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0))
    }

    #[tokio::test]
    async fn tls_modes_against_the_local_server() {
        let (client, _) = db("tls").await;
        let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        let with = |host: &str, tls: TlsMode, ca: Option<&str>| {
            let mut cfg = config(
                &format!("postgres://postgres@{host}:5432/test"),
                "x",
                PostgresMode::Swap,
                tls,
            );
            cfg.ca_file = ca.map(str::to_owned);
            build(cfg, true, &context(&[])).unwrap()
        };
        assert!(
            !uses_tls(&with("127.0.0.1", TlsMode::Disable, None))
                .await
                .unwrap()
        );
        if ssl != "on" {
            let err = uses_tls(&with("127.0.0.1", TlsMode::Require, None))
                .await
                .unwrap_err();
            assert!(
                err.message.contains("server does not support TLS"),
                "{}",
                err.message
            );
            assert!(
                !uses_tls(&with("127.0.0.1", TlsMode::Prefer, None))
                    .await
                    .unwrap()
            );
            return;
        }
        // The local server's certificate is self-signed for `localhost`.
        let cert: String = client
            .query_one("SHOW ssl_cert_file", &[])
            .await
            .unwrap()
            .get(0);
        let ca = Some(cert.as_str());
        assert!(
            uses_tls(&with("127.0.0.1", TlsMode::Prefer, None))
                .await
                .unwrap()
        );
        assert!(
            uses_tls(&with("127.0.0.1", TlsMode::Require, None))
                .await
                .unwrap()
        );
        // verify_ca checks the chain but not the name (127.0.0.1 is not in the certificate).
        assert!(
            uses_tls(&with("127.0.0.1", TlsMode::VerifyCa, ca))
                .await
                .unwrap()
        );
        assert!(
            uses_tls(&with("localhost", TlsMode::VerifyFull, ca))
                .await
                .unwrap()
        );
        let err = uses_tls(&with("127.0.0.1", TlsMode::VerifyFull, ca))
            .await
            .unwrap_err();
        assert_eq!(err.domain, Domain::External);
        assert!(
            err.message.starts_with(
                "postgres 127.0.0.1:5432/test: connecting: error performing TLS handshake"
            ),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("not valid for name"),
            "{}",
            err.message
        );
        // A CA file that did not sign the server's certificate: every verifying mode refuses,
        // `require` included (with a CA file it checks the chain, as libpq does). (The system
        // store is not tested: on this machine it may well hold the snakeoil certificate.)
        let other =
            std::env::temp_dir().join(format!("pg-sink-other-ca-{}.pem", std::process::id()));
        let bundle =
            std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        if let Some(first) = bundle
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .filter(|c| c.contains("BEGIN CERTIFICATE"))
        {
            std::fs::write(&other, first).unwrap();
            for tls in [TlsMode::Require, TlsMode::VerifyCa, TlsMode::VerifyFull] {
                let err = uses_tls(&with("localhost", tls, other.to_str()))
                    .await
                    .unwrap_err();
                assert_eq!(err.domain, Domain::External);
                assert!(
                    err.message.contains("UnknownIssuer"),
                    "{tls}: {}",
                    err.message
                );
            }
            std::fs::remove_file(&other).unwrap();
        }
    }

    #[test]
    fn bad_ca_file_is_a_configuration_error() {
        let mut cfg = config(
            "postgres://postgres@localhost/test",
            "x",
            PostgresMode::Swap,
            TlsMode::VerifyFull,
        );
        cfg.ca_file = Some("does-not-exist.pem".into());
        let err = build(cfg.clone(), true, &context(&[])).unwrap_err();
        assert!(
            err.contains("tls.ca_file") && err.contains("does-not-exist.pem"),
            "{err}"
        );
        let junk = std::env::temp_dir().join(format!("pg-sink-junk-{}.pem", std::process::id()));
        std::fs::write(&junk, "not a certificate").unwrap();
        cfg.ca_file = Some(junk.to_string_lossy().into_owned());
        let err = build(cfg, true, &context(&[])).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        std::fs::remove_file(&junk).unwrap();
    }

    #[tokio::test]
    async fn url_secrets_stay_out_of_messages() {
        let url = "postgres://postgres:${PG_PASSWORD}@127.0.0.1:1/test";
        let cfg = config(url, "x", PostgresMode::Swap, TlsMode::Disable);
        let err = build(cfg.clone(), true, &context(&[])).unwrap_err();
        assert!(err.contains("PG_PASSWORD"), "{err}");

        let ctx = context(&[("PG_PASSWORD", "hunter2-secret")]);
        let s = build(cfg, true, &ctx).unwrap();
        assert_eq!(s.location, "postgres://127.0.0.1:1/test x.profile_scores");
        assert!(!format!("{s:?}").contains("hunter2"));
        let err = s
            .publish(&publication("x", &[row("p1", 1, &[], &[])]))
            .await
            .unwrap_err();
        assert_eq!(err.domain, Domain::External);
        assert!(
            err.message
                .starts_with("postgres 127.0.0.1:1/test: connecting: "),
            "{}",
            err.message
        );
        assert!(!err.message.contains("hunter2"), "{}", err.message);

        for bad in [
            "postgres://postgres:${PG_PASSWORD}@127.0.0.1:port/test",
            "postgres://postgres:${PG_PASSWORD}@127.0.0.1/test?nonsense=1",
            "postgres://:${PG_PASSWORD}@/test",
        ] {
            let err = build(
                config(bad, "x", PostgresMode::Swap, TlsMode::Disable),
                true,
                &ctx,
            )
            .unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[tokio::test]
    async fn wrong_credentials_are_a_user_error() {
        let url = "postgres://no_such_role_propensity@127.0.0.1:5432/test";
        let s = build(
            config(url, "x", PostgresMode::Swap, TlsMode::Disable),
            true,
            &context(&[]),
        )
        .unwrap();
        let err = s
            .publish(&publication("x", &[row("p1", 1, &[], &[])]))
            .await
            .unwrap_err();
        assert_eq!(err.domain, Domain::User, "{}", err.message);
        assert!(
            err.message.contains("no_such_role_propensity"),
            "{}",
            err.message
        );
    }
}
