//! The Propensity daemon (`propensity daemon`, `propensity backfill`).
//!
//! - [`schedule`]: when a job's next run is due on its local wall clock (with the DST
//!   policy), which missed runs to catch up, what an occurrence that falls due during a run
//!   does, and retry delays; pure functions, tested under a fake clock.
//! - [`ledger`]: the SQLite run ledger (occurrences, attempts, final outcomes,
//!   publications, and the lease with fencing tokens).
//! - [`jobs`]: the jobs directory, reloaded on change; broken files reported and skipped.
//! - [`runner`]: each attempt in a child process of the same binary, with a timeout and a
//!   memory limit.
//! - [`scheduler`]: the loop that ties them together.
//! - [`api`]: the HTTP API and Prometheus metrics.
//! - [`daemon`]: the process: threads, signals, shutdown, and backfill.

pub mod api;
pub mod daemon;
pub mod jobs;
pub mod ledger;
pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod serve;
pub mod shared;

pub use daemon::{BackfillOptions, BackfillReport, DaemonError, DaemonOptions, backfill, serve};
