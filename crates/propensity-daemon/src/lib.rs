//! The Propensity daemon (issue #7).
//!
//! Status: the scheduling core and the run ledger are here so far. [`schedule`]: when a
//! job's next run is due on its local wall clock (with the DST policy), which missed runs to
//! catch up, what an occurrence that falls due during a run does, and retry delays; all pure
//! functions, tested under a fake clock. [`ledger`]: the SQLite run ledger (occurrences, attempts,
//! final outcomes, publications, and the lease with fencing tokens), not yet wired to a
//! daemon. The daemon process (child-process runs, the HTTP API and `propensity daemon` /
//! `backfill`) is not built yet.

pub mod ledger;
pub mod schedule;
