//! `old_abi_goal`: a test fixture, not a goal type. A minimal, valid goal exported with ABI
//! version 0, so that the host's version check has a library built for another ABI to
//! refuse (before calling anything but `propensity_plugin_abi_version`).

#![warn(missing_docs)]

use propensity_plugin::{Goal, Metadata, Params, ProfileEvents, Window};

/// The fixture's goal: a profile is `true` when it has at least one event in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldAbi;

impl Goal for OldAbi {
    fn metadata() -> Metadata {
        Metadata::new(
            "old_abi_goal",
            env!("CARGO_PKG_VERSION"),
            "Test fixture: a valid goal exported for ABI version 0",
        )
    }

    fn new(_params: &Params) -> Result<Self, String> {
        Ok(Self)
    }

    fn label(&self, profile: &ProfileEvents<'_>, _window: Window) -> Result<bool, String> {
        Ok((0..profile.len()).any(|i| profile.in_window(i)))
    }
}

propensity_plugin::export_goal!(OldAbi, abi_version = 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_abi_version_zero() {
        assert_eq!(propensity_plugin_abi_version(), 0);
        assert_ne!(propensity_plugin::ABI_VERSION, 0);
        assert_eq!(OldAbi::metadata().name, "old_abi_goal");
        assert!(propensity_plugin::build::<OldAbi>(b"{}").is_ok());
    }
}
