//! Propensity's integration tests, one binary. Each module is one subject.

mod data;
mod job_files;
mod model;
mod plugins;
mod sinks;
mod support;
