//! Closed sets of choices that appear in job files. Each is `snake_case` in TOML.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! choice {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        $(#[$m])*
        pub enum $name { $($(#[$vm])* #[serde(rename = $text)] $variant),+ }

        impl $name {
            /// Every value, as written in a job file.
            pub const ALL: &[&str] = &[$($text),+];
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice! {
    /// File format of a source or sink. Inferred from the file extension when omitted.
    DataFormat { Parquet = "parquet", Csv = "csv", Ndjson = "ndjson" }
}

choice! {
    /// How the timestamp column is encoded. `auto` accepts RFC 3339 strings, Arrow timestamps
    /// and epoch numbers (seconds below 1e11, milliseconds above).
    TimestampFormat {
        Auto = "auto",
        Rfc3339 = "rfc3339",
        EpochSeconds = "epoch_seconds",
        EpochMillis = "epoch_millis",
    }
}

choice! {
    /// Whether the goal predicts that the condition happens (conversion) or does not (churn).
    #[schemars(rename = "Outcome")]
    GoalOutcome {
        /// Conversion: the profile meets the conditions within the window.
        WillOccur = "will_occur",
        /// Churn: the profile does not meet the conditions within the window.
        WillNotOccur = "will_not_occur",
    }
}

choice! {
    /// How several conditions combine for one event.
    Match { All = "all", Any = "any" }
}

choice! {
    /// Comparison operator of a goal condition.
    Op {
        Eq = "eq", Ne = "ne", Gt = "gt", Ge = "ge", Lt = "lt", Le = "le",
        In = "in", NotIn = "not_in", Contains = "contains", Exists = "exists",
    }
}

choice! {
    /// Model family. `gbdt` is the default.
    Algorithm { Gbdt = "gbdt", Logistic = "logistic", Svm = "svm" }
}

choice! {
    /// Probability calibration. `auto` (the default): none for trees boosted from the
    /// buy-till-you-die forecast (their log-loss probabilities carry the forecast's view of
    /// an ageing customer base, which a map fitted on an older validation cutoff would undo),
    /// isotonic otherwise. `isotonic` and `platt` are fitted on the validation cutoff.
    Calibration { Auto = "auto", Isotonic = "isotonic", Platt = "platt", None = "none" }
}

choice! {
    /// What the scheduler does when a run is due while the previous one still runs.
    Overlap {
        /// Record the new occurrence as `skipped_overlap`.
        Skip = "skip",
        /// Keep at most one occurrence waiting; run it when the current run ends.
        BufferOne = "buffer_one",
        /// Cancel the running run and start the new one.
        CancelPrevious = "cancel_previous",
    }
}

choice! {
    /// What the scheduler does with occurrences missed while it was down.
    Catchup {
        /// Record each missed occurrence as `skipped_missed`.
        None = "none",
        /// Run the latest missed occurrence once.
        Latest = "latest",
        /// Run every missed occurrence, oldest first, at most `catchup_limit` of them.
        All = "all",
    }
}

choice! {
    /// How the PostgreSQL sink makes a run visible.
    PostgresMode {
        /// Load a staging table and swap it in one transaction.
        Swap = "swap",
        /// Upsert keyed by profile and delete rows of older runs, in one transaction.
        Upsert = "upsert",
    }
}

choice! {
    /// TLS to PostgreSQL, as in libpq's `sslmode`.
    TlsMode {
        Disable = "disable", Prefer = "prefer", Require = "require",
        VerifyCa = "verify_ca", VerifyFull = "verify_full",
    }
}

choice! {
    /// Compression codec of Parquet sink files.
    ParquetCompression { Zstd = "zstd", Snappy = "snappy", Gzip = "gzip", None = "none" }
}
