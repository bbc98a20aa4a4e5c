//! Propensity's integration tests, one binary. Each module is one subject.

mod daemon;
mod data;
mod job_files;
mod layers;
mod model;
mod plugins;
mod sinks;
mod support;
