//! The Propensity daemon (issue #7).
//!
//! Status: only the scheduling core is here so far — [`schedule`]: when a job's next run is
//! due on its local wall clock (with the DST policy), which missed runs to catch up, what an
//! occurrence that falls due during a run does, and retry delays; all pure functions,
//! tested under a fake clock. The daemon process (child-process runs, the SQLite ledger
//! with leases, the HTTP API and `propensity daemon` / `backfill`) is not built yet.

pub mod schedule;
