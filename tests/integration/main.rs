//! Propensity's integration tests, one binary. Each module is one subject.

mod job_files;
