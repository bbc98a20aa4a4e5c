//! The run ledger: a SQLite file (`<state>/ledger.sqlite`) that records every occurrence
//! of a job the daemon has seen fall due, every attempt to run it, what each attempt
//! published, and the single lease that says which daemon process may write outcomes.
//!
//! The file is opened in WAL mode with a busy timeout, so several processes (a daemon and
//! a `backfill`, say) can share it. Every write is one `BEGIN IMMEDIATE` transaction, so
//! two processes never interleave a read-check-write (for example, two processes cannot
//! both acquire the lease).
//!
//! Nothing here reads a clock. Every instant is an argument.
//!
//! # Timestamps
//!
//! Instants are stored as RFC 3339 UTC text with exactly six fractional digits
//! (`2026-03-29T01:00:00.000000Z`). The width is fixed, so text order is time order.
//! Precision below a microsecond is dropped, so two instants less than 1 µs apart
//! name the same occurrence.
//!
//! # Lease and fencing
//!
//! The `lease` table has at most one row. A holder acquires it for a time-to-live and
//! gets a *fencing token*. A new holder gets the previous token + 1, so tokens increase
//! and are never reused (releasing keeps the token, so the next holder still gets a
//! higher one). [`Ledger::start_attempt`], [`Ledger::finish`] and [`Ledger::record_skip`]
//! take the caller's token and fail with [`LedgerError::Fenced`] unless it is the
//! lease's current token and the lease is held. A lease that has expired but that no
//! one else has acquired still accepts its token: no other process can have written in
//! the meantime, because any other process would have been given a new token.
//!
//! # Schema (version 1)
//!
//! ```sql
//! CREATE TABLE schema_version (version INTEGER NOT NULL);
//!
//! CREATE TABLE occurrences (
//!     id            INTEGER PRIMARY KEY,
//!     job           TEXT NOT NULL,
//!     kind          TEXT NOT NULL CHECK (kind IN ('score', 'train')),
//!     scheduled_at  TEXT NOT NULL,          -- RFC 3339 UTC
//!     final_outcome TEXT,                   -- NULL until final; set at most once
//!     origin        TEXT NOT NULL DEFAULT 'schedule', -- schedule, catchup, manual, backfill
//!     UNIQUE (job, kind, scheduled_at)
//! );
//!
//! CREATE TABLE attempts (
//!     occurrence_id INTEGER NOT NULL REFERENCES occurrences (id),
//!     attempt_no    INTEGER NOT NULL,       -- 1, 2, ... per occurrence
//!     fencing_token INTEGER NOT NULL,       -- token of the process that started it
//!     started_at    TEXT NOT NULL,
//!     finished_at   TEXT,
//!     outcome       TEXT,
//!     message       TEXT,
//!     run_id        TEXT,                   -- the run's directory under <state>/jobs/<job>/runs
//!     PRIMARY KEY (occurrence_id, attempt_no)
//! );
//!
//! CREATE TABLE publications (
//!     occurrence_id INTEGER NOT NULL,
//!     attempt_no    INTEGER NOT NULL,
//!     sink          TEXT NOT NULL,
//!     status        TEXT NOT NULL,
//!     rows          INTEGER,
//!     location      TEXT,
//!     PRIMARY KEY (occurrence_id, attempt_no, sink),
//!     FOREIGN KEY (occurrence_id, attempt_no) REFERENCES attempts (occurrence_id, attempt_no)
//! );
//!
//! CREATE TABLE lease (
//!     id         INTEGER PRIMARY KEY CHECK (id = 1),
//!     holder     TEXT,                      -- NULL once released
//!     token      INTEGER NOT NULL,
//!     expires_at TEXT
//! );
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a write waits for another process's transaction before failing with
/// "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const DDL: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS occurrences (
    id            INTEGER PRIMARY KEY,
    job           TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('score', 'train')),
    scheduled_at  TEXT NOT NULL,
    final_outcome TEXT,
    origin        TEXT NOT NULL DEFAULT 'schedule',
    UNIQUE (job, kind, scheduled_at)
);
CREATE TABLE IF NOT EXISTS attempts (
    occurrence_id INTEGER NOT NULL REFERENCES occurrences (id),
    attempt_no    INTEGER NOT NULL,
    fencing_token INTEGER NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    outcome       TEXT,
    message       TEXT,
    run_id        TEXT,
    PRIMARY KEY (occurrence_id, attempt_no)
);
CREATE TABLE IF NOT EXISTS publications (
    occurrence_id INTEGER NOT NULL,
    attempt_no    INTEGER NOT NULL,
    sink          TEXT NOT NULL,
    status        TEXT NOT NULL,
    rows          INTEGER,
    location      TEXT,
    PRIMARY KEY (occurrence_id, attempt_no, sink),
    FOREIGN KEY (occurrence_id, attempt_no) REFERENCES attempts (occurrence_id, attempt_no)
);
CREATE TABLE IF NOT EXISTS cancel_requests (
    occurrence_id INTEGER PRIMARY KEY REFERENCES occurrences (id),
    requested_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT,
    token      INTEGER NOT NULL,
    expires_at TEXT
);
";

/// An error from the ledger. Every variant names the ledger file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite failed (I/O, a locked database after [`BUSY_TIMEOUT`], a corrupt file, ...).
    #[error("run ledger {path}: {source}")]
    Sqlite {
        /// The ledger file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer version of Propensity.
    #[error(
        "run ledger {path}: schema version {found} is newer than this build supports ({SCHEMA_VERSION})"
    )]
    UnsupportedSchema {
        /// The ledger file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
    },
    /// The caller's fencing token is not the lease's current token (another process has
    /// taken the lease over, or the lease was released).
    #[error(
        "run ledger {path}: fencing token {token} is stale (current lease token: {current:?}, held: {held})"
    )]
    Fenced {
        /// The ledger file.
        path: PathBuf,
        /// The token the caller presented.
        token: u64,
        /// The lease's current token, if there has ever been a lease.
        current: Option<u64>,
        /// Whether the lease is currently held (not released).
        held: bool,
    },
    /// The occurrence already has its final outcome.
    #[error(
        "run ledger {path}: {job} {kind} at {scheduled_at} already has a final outcome ({outcome})"
    )]
    AlreadyFinal {
        /// The ledger file.
        path: PathBuf,
        /// The job.
        job: String,
        /// The run kind.
        kind: RunKind,
        /// The occurrence's scheduled instant (RFC 3339).
        scheduled_at: String,
        /// The outcome already recorded.
        outcome: RunOutcome,
    },
    /// The attempt already has an outcome.
    #[error(
        "run ledger {path}: attempt {attempt_no} of {job} {kind} at {scheduled_at} has already finished"
    )]
    AttemptFinished {
        /// The ledger file.
        path: PathBuf,
        /// The job.
        job: String,
        /// The run kind.
        kind: RunKind,
        /// The occurrence's scheduled instant (RFC 3339).
        scheduled_at: String,
        /// The attempt number.
        attempt_no: i64,
    },
    /// The occurrence or attempt is not in the ledger.
    #[error("run ledger {path}: no {what} for {job} {kind} at {scheduled_at}")]
    NotFound {
        /// The ledger file.
        path: PathBuf,
        /// What is missing ("occurrence" or "attempt N").
        what: String,
        /// The job.
        job: String,
        /// The run kind.
        kind: RunKind,
        /// The occurrence's scheduled instant (RFC 3339).
        scheduled_at: String,
    },
    /// [`Ledger::record_skip`] was given an outcome other than a skip.
    #[error("run ledger {path}: {outcome} is not a skip outcome")]
    NotASkip {
        /// The ledger file.
        path: PathBuf,
        /// The outcome given.
        outcome: RunOutcome,
    },
    /// A value in the file could not be read back (a corrupt or hand-edited ledger).
    #[error("run ledger {path}: bad stored value {value:?} for {what}")]
    BadValue {
        /// The ledger file.
        path: PathBuf,
        /// Which column.
        what: &'static str,
        /// The stored text.
        value: String,
    },
}

/// Whether a run scores or trains. Stored as `score` / `train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunKind {
    /// A scoring run.
    Score,
    /// A training run.
    Train,
}

impl RunKind {
    /// The stored text: `score` or `train`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Score => "score",
            RunKind::Train => "train",
        }
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for RunKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl serde::Serialize for RunOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl FromStr for RunKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "score" => Ok(RunKind::Score),
            "train" => Ok(RunKind::Train),
            _ => Err(()),
        }
    }
}

/// How an attempt or an occurrence ended. Stored as snake_case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunOutcome {
    /// The run completed and published.
    Succeeded,
    /// The run failed (it may be retried: see [`Ledger::finish`]'s `final_`).
    Failed,
    /// The run's process died, or the daemon found it unfinished after a restart.
    Crashed,
    /// Not run: it fell due while another run of the job was running (`overlap = skip`).
    SkippedOverlap,
    /// Not run: it was missed while the daemon was down and the catch-up policy dropped it.
    SkippedMissed,
    /// The run found too little data to train or score.
    InsufficientData,
    /// The run was cancelled (by a user, or by `overlap = cancel_previous`).
    Cancelled,
    /// The run exceeded its timeout.
    TimedOut,
}

impl RunOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [RunOutcome; 8] = [
        RunOutcome::Succeeded,
        RunOutcome::Failed,
        RunOutcome::Crashed,
        RunOutcome::SkippedOverlap,
        RunOutcome::SkippedMissed,
        RunOutcome::InsufficientData,
        RunOutcome::Cancelled,
        RunOutcome::TimedOut,
    ];

    /// The stored snake_case text, e.g. `skipped_overlap`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Crashed => "crashed",
            RunOutcome::SkippedOverlap => "skipped_overlap",
            RunOutcome::SkippedMissed => "skipped_missed",
            RunOutcome::InsufficientData => "insufficient_data",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunOutcome {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        RunOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or(())
    }
}

/// One attempt to run an occurrence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRecord {
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt_no: i64,
    /// The fencing token of the process that started the attempt.
    pub fencing_token: u64,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// When it finished, if it has.
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended, if it has.
    pub outcome: Option<RunOutcome>,
    /// The message recorded with the outcome (an error, say).
    pub message: Option<String>,
    /// The run id the attempt's child process reported (its directory in the registry).
    pub run_id: Option<String>,
}

/// What one attempt published to one sink.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublicationRecord {
    /// The attempt that published.
    pub attempt_no: i64,
    /// The sink's name.
    pub sink: String,
    /// The sink's status text (e.g. `published`, `failed`).
    pub status: String,
    /// Rows written, if known.
    pub rows: Option<u64>,
    /// Where they were written (a URL, a table), if known.
    pub location: Option<String>,
}

/// Everything the ledger knows about one occurrence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OccurrenceRecord {
    /// The job.
    pub job: String,
    /// Score or train.
    pub kind: RunKind,
    /// The instant it fell due.
    pub scheduled_at: DateTime<Utc>,
    /// Its final outcome, once it has one.
    pub final_outcome: Option<RunOutcome>,
    /// Why it fell due: `schedule`, `catchup`, `manual` (the API) or `backfill`.
    pub origin: String,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Its publications, by attempt then sink.
    pub publications: Vec<PublicationRecord>,
}

/// An open run ledger. Each handle owns one SQLite connection; open one handle per
/// thread or process (they share the file safely).
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    conn: Connection,
}

/// An error before the file's path is attached.
enum Fail {
    Sql(rusqlite::Error),
    Schema(i64),
    Fenced {
        token: u64,
        current: Option<u64>,
        held: bool,
    },
    AlreadyFinal(RunOutcome),
    AttemptFinished(i64),
    NotFound(String),
    NotASkip(RunOutcome),
    BadValue(&'static str, String),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

/// The occurrence key, for error messages.
struct Key<'a> {
    job: &'a str,
    kind: RunKind,
    at: &'a str,
}

impl Fail {
    fn at(self, path: &Path, key: Option<&Key<'_>>) -> LedgerError {
        let path = path.to_path_buf();
        let (job, kind, scheduled_at) = match key {
            Some(k) => (k.job.to_owned(), k.kind, k.at.to_owned()),
            None => (String::new(), RunKind::Score, String::new()),
        };
        match self {
            Fail::Sql(source) => LedgerError::Sqlite { path, source },
            Fail::Schema(found) => LedgerError::UnsupportedSchema { path, found },
            Fail::Fenced {
                token,
                current,
                held,
            } => LedgerError::Fenced {
                path,
                token,
                current,
                held,
            },
            Fail::AlreadyFinal(outcome) => LedgerError::AlreadyFinal {
                path,
                job,
                kind,
                scheduled_at,
                outcome,
            },
            Fail::AttemptFinished(attempt_no) => LedgerError::AttemptFinished {
                path,
                job,
                kind,
                scheduled_at,
                attempt_no,
            },
            Fail::NotFound(what) => LedgerError::NotFound {
                path,
                what,
                job,
                kind,
                scheduled_at,
            },
            Fail::NotASkip(outcome) => LedgerError::NotASkip { path, outcome },
            Fail::BadValue(what, value) => LedgerError::BadValue { path, what, value },
        }
    }
}

/// Formats an instant the way the ledger stores it.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(what: &'static str, s: String) -> Result<DateTime<Utc>, Fail> {
    match DateTime::parse_from_rfc3339(&s) {
        Ok(t) => Ok(t.with_timezone(&Utc)),
        Err(_) => Err(Fail::BadValue(what, s)),
    }
}

fn parse_outcome(what: &'static str, s: Option<String>) -> Result<Option<RunOutcome>, Fail> {
    match s {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|()| Fail::BadValue(what, s)),
    }
}

fn parse_kind(s: String) -> Result<RunKind, Fail> {
    s.parse()
        .map_err(|()| Fail::BadValue("occurrences.kind", s))
}

fn to_u64(what: &'static str, v: i64) -> Result<u64, Fail> {
    u64::try_from(v).map_err(|_| Fail::BadValue(what, v.to_string()))
}

fn to_i64(what: &'static str, v: u64) -> Result<i64, Fail> {
    i64::try_from(v).map_err(|_| Fail::BadValue(what, v.to_string()))
}

/// `now + ttl`, saturating at chrono's maximum.
fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(ttl)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The lease row.
struct LeaseRow {
    /// `None` once released.
    holder: Option<String>,
    token: u64,
    expires_at: Option<String>,
}

fn lease_row(tx: &Connection) -> Result<Option<LeaseRow>, Fail> {
    let row = tx
        .query_row(
            "SELECT holder, token, expires_at FROM lease WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?;
    row.map(|(holder, token, expires_at)| {
        Ok(LeaseRow {
            holder,
            token: to_u64("lease.token", token)?,
            expires_at,
        })
    })
    .transpose()
}

/// Fails with `Fenced` unless `token` is the current token of a held lease.
fn check_fence(tx: &Connection, token: u64) -> Result<(), Fail> {
    match lease_row(tx)? {
        Some(LeaseRow {
            holder: Some(_),
            token: current,
            ..
        }) if current == token => Ok(()),
        Some(LeaseRow {
            holder,
            token: current,
            ..
        }) => Err(Fail::Fenced {
            token,
            current: Some(current),
            held: holder.is_some(),
        }),
        None => Err(Fail::Fenced {
            token,
            current: None,
            held: false,
        }),
    }
}

/// The occurrence's (id, final_outcome), if it exists.
fn find_occurrence(
    tx: &Connection,
    job: &str,
    kind: RunKind,
    at: &str,
) -> Result<Option<(i64, Option<RunOutcome>)>, Fail> {
    let row = tx
        .query_row(
            "SELECT id, final_outcome FROM occurrences WHERE job = ?1 AND kind = ?2 AND scheduled_at = ?3",
            params![job, kind.as_str(), at],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?)),
        )
        .optional()?;
    row.map(|(id, o)| Ok((id, parse_outcome("occurrences.final_outcome", o)?)))
        .transpose()
}

/// Inserts the occurrence if absent. Returns its id and final outcome, and whether it is new.
fn ensure_occurrence(
    tx: &Connection,
    job: &str,
    kind: RunKind,
    at: &str,
) -> Result<(i64, Option<RunOutcome>, bool), Fail> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO occurrences (job, kind, scheduled_at) VALUES (?1, ?2, ?3)",
        params![job, kind.as_str(), at],
    )?;
    match find_occurrence(tx, job, kind, at)? {
        Some((id, fin)) => Ok((id, fin, inserted == 1)),
        None => Err(Fail::NotFound("occurrence".into())),
    }
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`, normally `<state>/ledger.sqlite`,
    /// switches it to WAL mode, sets [`BUSY_TIMEOUT`] and creates the schema if missing.
    /// The parent directory must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Ledger, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let conn = Self::open_conn(&path).map_err(|e| e.at(&path, None))?;
        // Owner-only, like the rest of the state directory (SQLite gives its WAL and
        // shared-memory files the database file's mode).
        let _ = propensity_common::private::restrict(&path);
        Ok(Ledger { path, conn })
    }

    fn open_conn(path: &Path) -> Result<Connection, Fail> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Fail::BadValue("journal_mode", mode));
        }
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(DDL)?;
        let found: Option<i64> =
            tx.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
        match found {
            None => {
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v > SCHEMA_VERSION => return Err(Fail::Schema(v)),
            Some(_) => {}
        }
        tx.commit()?;
        Ok(conn)
    }

    /// The ledger file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committing if it succeeds.
    fn write<T>(
        &mut self,
        key: Option<&Key<'_>>,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, LedgerError> {
        let conn = &mut self.conn;
        let res = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let v = f(&tx)?;
            tx.commit()?;
            Ok(v)
        })();
        res.map_err(|e: Fail| e.at(&self.path, key))
    }

    /// Runs `f` in one read transaction (a consistent snapshot).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Fail>) -> Result<T, LedgerError> {
        let res = (|| {
            let tx = self.conn.unchecked_transaction()?;
            let v = f(&tx)?;
            tx.commit()?;
            Ok(v)
        })();
        res.map_err(|e: Fail| e.at(&self.path, None))
    }

    /// Records that an occurrence fell due. Returns `true` if it was not in the ledger
    /// before, `false` if it was (the call is idempotent).
    pub fn record_due(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let at = ts(scheduled_at);
        let key = Key { job, kind, at: &at };
        self.write(
            Some(&key),
            |tx| Ok(ensure_occurrence(tx, job, kind, &at)?.2),
        )
    }

    /// Like [`Ledger::record_due`], recording why it fell due (`origin`: `schedule`,
    /// `catchup`, `manual` or `backfill`) when the occurrence is new.
    pub fn record_due_as(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
        origin: &str,
    ) -> Result<bool, LedgerError> {
        let at = ts(scheduled_at);
        let key = Key { job, kind, at: &at };
        self.write(Some(&key), |tx| {
            let (id, _, new) = ensure_occurrence(tx, job, kind, &at)?;
            if new {
                tx.execute(
                    "UPDATE occurrences SET origin = ?2 WHERE id = ?1",
                    params![id, origin],
                )?;
            }
            Ok(new)
        })
    }

    /// Records many occurrences that were not run, with the same skip `outcome`, in one
    /// transaction (a long downtime can leave thousands of missed occurrences). Occurrences
    /// that already have a final outcome are left as they are. Returns how many were
    /// recorded. Fenced like [`Ledger::record_skip`].
    pub fn record_skips(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled: &[DateTime<Utc>],
        outcome: RunOutcome,
        origin: &str,
        fencing_token: u64,
    ) -> Result<usize, LedgerError> {
        if !matches!(
            outcome,
            RunOutcome::SkippedOverlap | RunOutcome::SkippedMissed
        ) {
            return Err(Fail::NotASkip(outcome).at(&self.path, None));
        }
        self.write(None, |tx| {
            check_fence(tx, fencing_token)?;
            let mut n = 0;
            for &t in scheduled {
                let at = ts(t);
                let (id, fin, new) = ensure_occurrence(tx, job, kind, &at)?;
                if fin.is_some() {
                    continue;
                }
                n += tx.execute(
                    "UPDATE occurrences SET final_outcome = ?2,
                       origin = CASE WHEN ?4 THEN ?3 ELSE origin END
                     WHERE id = ?1",
                    params![id, outcome.as_str(), origin, new],
                )?;
            }
            Ok(n)
        })
    }

    /// Records the run id the child process of attempt `attempt_no` reported. Not fenced
    /// (a fact about a run that happened).
    pub fn set_run_id(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
        attempt_no: i64,
        run_id: &str,
    ) -> Result<(), LedgerError> {
        let at = ts(scheduled_at);
        let key = Key { job, kind, at: &at };
        self.write(Some(&key), |tx| {
            let Some((id, _)) = find_occurrence(tx, job, kind, &at)? else {
                return Err(Fail::NotFound("occurrence".into()));
            };
            let n = tx.execute(
                "UPDATE attempts SET run_id = ?3 WHERE occurrence_id = ?1 AND attempt_no = ?2",
                params![id, attempt_no, run_id],
            )?;
            if n == 0 {
                return Err(Fail::NotFound(format!("attempt {attempt_no}")));
            }
            Ok(())
        })
    }

    /// Starts a new attempt of an occurrence at `now` (recording the occurrence if it is
    /// not yet in the ledger), and returns its number: 1 for the first attempt, then 2, ...
    /// Returns `None`, recording nothing, if the occurrence already has a final outcome.
    /// Fails with [`LedgerError::Fenced`] unless `fencing_token` is the lease's current one.
    pub fn start_attempt(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
        fencing_token: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, LedgerError> {
        let at = ts(scheduled_at);
        let key = Key { job, kind, at: &at };
        self.write(Some(&key), |tx| {
            check_fence(tx, fencing_token)?;
            let (id, fin, _) = ensure_occurrence(tx, job, kind, &at)?;
            if fin.is_some() {
                return Ok(None);
            }
            let no: i64 = tx.query_row(
                "SELECT COALESCE(MAX(attempt_no), 0) + 1 FROM attempts WHERE occurrence_id = ?1",
                [id],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO attempts (occurrence_id, attempt_no, fencing_token, started_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, no, to_i64("fencing token", fencing_token)?, ts(now)],
            )?;
            Ok(Some(no))
        })
    }

    /// Records how attempt `attempt_no` ended, at `now`. If `final_` is true, `outcome`
    /// also becomes the occurrence's final outcome; pass `false` only for a failure
    /// that will be retried.
    ///
    /// Fails with [`LedgerError::Fenced`] unless `fencing_token` is the lease's current
    /// token (checked first), [`LedgerError::AlreadyFinal`] if the occurrence already has
    /// a final outcome, [`LedgerError::AttemptFinished`] if the attempt already has an
    /// outcome, and [`LedgerError::NotFound`] if the occurrence or attempt does not exist.
    /// On any error nothing is written.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
        attempt_no: i64,
        fencing_token: u64,
        outcome: RunOutcome,
        message: Option<&str>,
        final_: bool,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let at = ts(scheduled_at);
        let key = Key { job, kind, at: &at };
        self.write(Some(&key), |tx| {
            check_fence(tx, fencing_token)?;
            let Some((id, fin)) = find_occurrence(tx, job, kind, &at)? else {
                return Err(Fail::NotFound("occurrence".into()));
            };
            if let Some(o) = fin {
                return Err(Fail::AlreadyFinal(o));
            }
            let prev: Option<Option<String>> = tx
                .query_row(
                    "SELECT outcome FROM attempts WHERE occurrence_id = ?1 AND attempt_no = ?2",
                    params![id, attempt_no],
                    |r| r.get(0),
                )
                .optional()?;
            match prev {
                None => return Err(Fail::NotFound(format!("attempt {attempt_no}"))),
                Some(Some(_)) => return Err(Fail::AttemptFinished(attempt_no)),
                Some(None) => {}
            }
            tx.execute(
                "UPDATE attempts SET finished_at = ?3, outcome = ?4, message = ?5
                 WHERE occurrence_id = ?1 AND attempt_no = ?2",
                params![id, attempt_no, ts(now), outcome.as_str(), message],
            )?;
            if final_ {
                tx.execute(
                    "UPDATE occurrences SET final_outcome = ?2 WHERE id = ?1 AND final_outcome IS NULL",
                    params![id, outcome.as_str()],
                )?;
            }
            Ok(())
        })
    }

    /// Records an occurrence that was not run: `outcome` must be
    /// [`RunOutcome::SkippedOverlap`] or [`RunOutcome::SkippedMissed`], and it becomes the
    /// occurrence's final outcome directly, with no attempt (the occurrence is recorded
    /// if it is not yet in the ledger). Fails with [`LedgerError::Fenced`] unless
    /// `fencing_token` is the lease's current token, and [`LedgerError::AlreadyFinal`]
    /// if the occurrence already has a final outcome.
    pub fn record_skip(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
        outcome: RunOutcome,
        fencing_token: u64,
    ) -> Result<(), LedgerError> {
        if !matches!(
            outcome,
            RunOutcome::SkippedOverlap | RunOutcome::SkippedMissed
        ) {
            return Err(Fail::NotASkip(outcome).at(&self.path, None));
        }
        let at = ts(scheduled_at);
        let key = Key { job, kind, at: &at };
        self.write(Some(&key), |tx| {
            check_fence(tx, fencing_token)?;
            let (id, fin, _) = ensure_occurrence(tx, job, kind, &at)?;
            if let Some(o) = fin {
                return Err(Fail::AlreadyFinal(o));
            }
            tx.execute(
                "UPDATE occurrences SET final_outcome = ?2 WHERE id = ?1",
                params![id, outcome.as_str()],
            )?;
            Ok(())
        })
    }

    /// Records what attempt `attempt_no` published to `sink` (replacing an earlier record
    /// for the same attempt and sink). Not fenced: it records a fact about a publication
    /// that has already happened. Fails with [`LedgerError::NotFound`] if the attempt does
    /// not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn record_publication(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
        attempt_no: i64,
        sink: &str,
        status: &str,
        rows: Option<u64>,
        location: Option<&str>,
    ) -> Result<(), LedgerError> {
        let at = ts(scheduled_at);
        let key = Key { job, kind, at: &at };
        self.write(Some(&key), |tx| {
            let Some((id, _)) = find_occurrence(tx, job, kind, &at)? else {
                return Err(Fail::NotFound("occurrence".into()));
            };
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM attempts WHERE occurrence_id = ?1 AND attempt_no = ?2",
                    params![id, attempt_no],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_none() {
                return Err(Fail::NotFound(format!("attempt {attempt_no}")));
            }
            let rows = rows.map(|r| to_i64("rows", r)).transpose()?;
            tx.execute(
                "INSERT OR REPLACE INTO publications
                 (occurrence_id, attempt_no, sink, status, rows, location)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, attempt_no, sink, status, rows, location],
            )?;
            Ok(())
        })
    }

    /// Tries to acquire the lease for `holder` until `now + ttl`. Succeeds, returning the
    /// fencing token, when there is no lease, when it was released, when it has expired
    /// (`expires_at <= now`), or when `holder` already holds it. A holder that already
    /// holds it keeps its token (this renews it); any other holder gets the previous
    /// token + 1 (the first token is 1). Returns `None` while another holder's lease is
    /// live.
    pub fn acquire_lease(
        &mut self,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>, LedgerError> {
        let until = ts(expiry(now, ttl));
        self.write(None, |tx| {
            let token = match lease_row(tx)? {
                None => 1,
                Some(LeaseRow { holder: Some(h), token, .. }) if h == holder => token,
                Some(LeaseRow { holder: Some(_), token, expires_at }) => {
                    let live = match expires_at {
                        Some(e) => parse_ts("lease.expires_at", e)? > now,
                        None => false,
                    };
                    if live {
                        return Ok(None);
                    }
                    token + 1
                }
                Some(LeaseRow { holder: None, token, .. }) => token + 1,
            };
            tx.execute(
                "INSERT INTO lease (id, holder, token, expires_at) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET
                   holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at",
                params![holder, to_i64("lease.token", token)?, until],
            )?;
            Ok(Some(token))
        })
    }

    /// Extends the lease to `now + ttl`. Returns `true` if `holder` holds the lease with
    /// `token` (even if it expired, provided no one else has acquired it since), and
    /// `false`, changing nothing, otherwise.
    pub fn renew_lease(
        &mut self,
        holder: &str,
        token: u64,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let until = ts(expiry(now, ttl));
        self.write(None, |tx| {
            let n = tx.execute(
                "UPDATE lease SET expires_at = ?3 WHERE id = 1 AND holder = ?1 AND token = ?2",
                params![holder, to_i64("lease.token", token)?, until],
            )?;
            Ok(n == 1)
        })
    }

    /// Releases the lease if `holder` holds it with `token`, so another holder can acquire
    /// it at once (with a higher token). Returns whether it was released.
    pub fn release_lease(&mut self, holder: &str, token: u64) -> Result<bool, LedgerError> {
        self.write(None, |tx| {
            let n = tx.execute(
                "UPDATE lease SET holder = NULL, expires_at = NULL
                 WHERE id = 1 AND holder = ?1 AND token = ?2",
                params![holder, to_i64("lease.token", token)?],
            )?;
            Ok(n == 1)
        })
    }

    /// Everything recorded about one occurrence, or `None` if it is not in the ledger.
    pub fn occurrence(
        &self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
    ) -> Result<Option<OccurrenceRecord>, LedgerError> {
        let at = ts(scheduled_at);
        self.read(|tx| {
            let found = load_where(
                tx,
                "job = ?1 AND kind = ?2 AND scheduled_at = ?3",
                params![job, kind.as_str(), at],
            )?;
            Ok(found.into_iter().next())
        })
    }

    /// Asks for an occurrence that has not ended to be cancelled (the API's `DELETE`): the
    /// leading daemon, whichever process it is, drops it from its queue or stops its run.
    /// Returns `None` when the ledger has no such occurrence, `Some(Some(outcome))` when it
    /// has already ended, `Some(None)` when the request was recorded.
    pub fn request_cancel(
        &mut self,
        job: &str,
        kind: RunKind,
        scheduled_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<Option<RunOutcome>>, LedgerError> {
        let at = ts(scheduled_at);
        let key = Key { job, kind, at: &at };
        self.write(Some(&key), |tx| {
            let Some((id, fin)) = find_occurrence(tx, job, kind, &at)? else {
                return Ok(None);
            };
            if fin.is_some() {
                return Ok(Some(fin));
            }
            tx.execute(
                "INSERT OR IGNORE INTO cancel_requests (occurrence_id, requested_at) VALUES (?1, ?2)",
                params![id, ts(now)],
            )?;
            Ok(Some(None))
        })
    }

    /// The occurrences asked to be cancelled that have not ended yet (job, kind, time).
    pub fn cancel_requests(&self) -> Result<Vec<(String, RunKind, DateTime<Utc>)>, LedgerError> {
        self.read(|tx| {
            let found = load_where(
                tx,
                "final_outcome IS NULL AND id IN (SELECT occurrence_id FROM cancel_requests)",
                [],
            )?;
            Ok(found
                .into_iter()
                .map(|o| (o.job, o.kind, o.scheduled_at))
                .collect())
        })
    }

    /// The `limit` most recent occurrences of `job` (both kinds), newest first.
    pub fn runs(&self, job: &str, limit: usize) -> Result<Vec<OccurrenceRecord>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            load_where(
                tx,
                "job = ?1 ORDER BY scheduled_at DESC, kind LIMIT ?2",
                params![job, limit],
            )
        })
    }

    /// How many occurrences have each final outcome, keyed by the snake_case outcome
    /// text. Outcomes with no occurrences are absent; occurrences without a final
    /// outcome are not counted.
    pub fn outcome_counts(&self) -> Result<BTreeMap<String, u64>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT final_outcome, COUNT(*) FROM occurrences
                 WHERE final_outcome IS NOT NULL GROUP BY final_outcome",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(o, n)| Ok((o, to_u64("count", n)?)))
                .collect()
        })
    }

    /// The latest scheduled time of `job`/`kind` in the ledger (manual runs excluded), the
    /// point catch-up counts missed occurrences from.
    pub fn latest_scheduled(
        &self,
        job: &str,
        kind: RunKind,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        self.read(|tx| {
            let at: Option<String> = tx.query_row(
                "SELECT MAX(scheduled_at) FROM occurrences
                 WHERE job = ?1 AND kind = ?2 AND origin <> 'manual'",
                params![job, kind.as_str()],
                |r| r.get(0),
            )?;
            at.map(|a| parse_ts("occurrences.scheduled_at", a))
                .transpose()
        })
    }

    /// Every occurrence without a final outcome, oldest first: runs a stopped daemon left
    /// unfinished, to resume.
    pub fn pending(&self) -> Result<Vec<OccurrenceRecord>, LedgerError> {
        self.read(|tx| {
            load_where(
                tx,
                "final_outcome IS NULL ORDER BY scheduled_at, job, kind",
                [],
            )
        })
    }

    /// Final outcomes counted per job, kind and outcome (for `/metrics`).
    pub fn outcome_counts_by_job(
        &self,
    ) -> Result<Vec<(String, RunKind, RunOutcome, u64)>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT job, kind, final_outcome, COUNT(*) FROM occurrences
                 WHERE final_outcome IS NOT NULL GROUP BY job, kind, final_outcome
                 ORDER BY job, kind, final_outcome",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(job, kind, o, n)| {
                    let kind = parse_kind(kind)?;
                    let o = parse_outcome("occurrences.final_outcome", Some(o))?
                        .ok_or(Fail::BadValue("occurrences.final_outcome", String::new()))?;
                    Ok((job, kind, o, to_u64("count", n)?))
                })
                .collect()
        })
    }

    /// The lease's holder and expiry, if it is held.
    pub fn lease_holder(&self) -> Result<Option<(String, u64, DateTime<Utc>)>, LedgerError> {
        self.read(|tx| match lease_row(tx)? {
            Some(LeaseRow {
                holder: Some(h),
                token,
                expires_at: Some(e),
            }) => Ok(Some((h, token, parse_ts("lease.expires_at", e)?))),
            _ => Ok(None),
        })
    }

    /// The `candidates` (in their given order) that have no occurrence of `job`/`kind` in
    /// the ledger: the occurrences to catch up or backfill.
    pub fn missed_since(
        &self,
        job: &str,
        kind: RunKind,
        candidates: &[DateTime<Utc>],
    ) -> Result<Vec<DateTime<Utc>>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT 1 FROM occurrences WHERE job = ?1 AND kind = ?2 AND scheduled_at = ?3",
            )?;
            let mut missed = Vec::new();
            for &c in candidates {
                if !stmt.exists(params![job, kind.as_str(), ts(c)])? {
                    missed.push(c);
                }
            }
            Ok(missed)
        })
    }
}

/// The occurrences matching `filter` (an SQL condition, with any ORDER BY and LIMIT),
/// each with its attempts and publications.
fn load_where(
    tx: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<OccurrenceRecord>, Fail> {
    let mut stmt = tx.prepare(&format!(
        "SELECT id, job, kind, scheduled_at, final_outcome, origin FROM occurrences WHERE {filter}"
    ))?;
    type Head = (i64, String, String, String, Option<String>, String);
    let rows = stmt
        .query_map(params, |r| -> rusqlite::Result<Head> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(id, job, kind, at, fin, origin)| {
            let head = OccurrenceRecord {
                job,
                kind: parse_kind(kind)?,
                scheduled_at: parse_ts("occurrences.scheduled_at", at)?,
                final_outcome: parse_outcome("occurrences.final_outcome", fin)?,
                origin,
                attempts: Vec::new(),
                publications: Vec::new(),
            };
            load(tx, id, head)
        })
        .collect()
}

/// Fills in an occurrence's attempts and publications.
fn load(tx: &Connection, id: i64, head: OccurrenceRecord) -> Result<OccurrenceRecord, Fail> {
    let mut stmt = tx.prepare(
        "SELECT attempt_no, fencing_token, started_at, finished_at, outcome, message, run_id
         FROM attempts WHERE occurrence_id = ?1 ORDER BY attempt_no",
    )?;
    type Row = (
        i64,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows = stmt
        .query_map([id], |r| -> rusqlite::Result<Row> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let attempts = rows
        .into_iter()
        .map(|(no, tok, start, end, outcome, message, run_id)| {
            Ok(AttemptRecord {
                attempt_no: no,
                fencing_token: to_u64("attempts.fencing_token", tok)?,
                started_at: parse_ts("attempts.started_at", start)?,
                finished_at: end
                    .map(|e| parse_ts("attempts.finished_at", e))
                    .transpose()?,
                outcome: parse_outcome("attempts.outcome", outcome)?,
                message,
                run_id,
            })
        })
        .collect::<Result<Vec<_>, Fail>>()?;
    let mut stmt = tx.prepare(
        "SELECT attempt_no, sink, status, rows, location FROM publications
         WHERE occurrence_id = ?1 ORDER BY attempt_no, sink",
    )?;
    type PubRow = (i64, String, String, Option<i64>, Option<String>);
    let rows = stmt
        .query_map([id], |r| -> rusqlite::Result<PubRow> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let publications = rows
        .into_iter()
        .map(|(no, sink, status, rows, location)| {
            Ok(PublicationRecord {
                attempt_no: no,
                sink,
                status,
                rows: rows.map(|r| to_u64("publications.rows", r)).transpose()?,
                location,
            })
        })
        .collect::<Result<Vec<_>, Fail>>()?;
    Ok(OccurrenceRecord {
        attempts,
        publications,
        ..head
    })
}

#[cfg(test)]
mod tests;
