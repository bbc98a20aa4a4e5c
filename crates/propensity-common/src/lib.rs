//! What the layers above `propensity-core` share and none of them owns: resolving a sink's
//! output location to an object store ([`storage`]), `${NAME}` lookup ([`EnvLookup`]), times as
//! RFC 3339 ([`rfc3339`]) and the watchdog a daemon-started run keeps on its parent
//! ([`process`]).
//!
//! It depends on `propensity-core` and on no crate that compiles DataFusion, so the sinks and
//! the daemon can use these without building the engine (see ARCHITECTURE.md for the order
//! of the crates).

pub mod private;
pub mod process;
pub mod storage;

pub use storage::{EnvLookup, OutputDir, output_dir, process_env};

use chrono::DateTime;

/// A time in microseconds since the epoch as RFC 3339 (UTC, seconds); the number itself when
/// it is out of chrono's range.
pub fn rfc3339(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| us.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_in_and_out_of_range() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123_456), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }
}
