//! Models of a Propensity job. This first part holds what every model family shares: the
//! evaluation metrics of the model card ([`metrics`]) and probability calibration fitted on the
//! validation cutoff ([`calibrate`]). Pure functions over slices, deterministic, no IO.
//!
//! ```
//! use propensity_model::{calibrate::Calibrator, metrics};
//!
//! let scores = [0.1, 0.4, 0.35, 0.8];
//! let labels = [false, false, true, true];
//! assert_eq!(metrics::auc(&scores, &labels), Some(0.75));
//! let iso = Calibrator::isotonic(&scores, &labels);
//! assert_eq!(iso.apply(0.8), 1.0);
//! ```

pub mod calibrate;
pub mod metrics;
