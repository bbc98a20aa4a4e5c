//! Domain types of Propensity: the validated [`Job`] and its parts, human durations
//! ([`Span`]), `${ENV}` templates and redacting [`Secret`]s, and the error [`Domain`]s.
//! This crate does no IO.
//!
//! ```
//! use propensity_core::{Span, Template};
//! assert_eq!(Span::parse("1w2d").unwrap().to_string(), "9d");
//! let url = Template::parse("postgres://app:${PG_PASSWORD}@db/scores").unwrap();
//! let secret = url.resolve(|_| Some("hunter2".into())).unwrap();
//! assert_eq!(format!("{secret}"), "***");
//! ```

pub mod duration;
pub mod enums;
pub mod expr;
pub mod id;
pub mod job;
pub mod rule;
pub mod secret;
pub mod suggest;

pub use duration::{Span, SpanError};
pub use job::*;
pub use secret::{MissingVar, Secret, Template, TemplateError};

/// Who must act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A bad job file or bad input data: the user fixes it.
    User,
    /// A service or store failed: retry, or the operator fixes it.
    External,
    /// A bug in Propensity.
    Internal,
}

impl Domain {
    /// The process exit code for this domain: 2 user, 3 external, 70 internal (EX_SOFTWARE).
    pub const fn exit_code(self) -> i32 {
        match self {
            Domain::User => 2,
            Domain::External => 3,
            Domain::Internal => 70,
        }
    }
}
