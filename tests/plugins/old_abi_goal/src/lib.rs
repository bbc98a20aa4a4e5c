//! `old_abi_goal`: a test fixture, not a goal type. A goal exported with ABI version 0, so
//! that the host's version check has a library built for another ABI to refuse. Every entry
//! point but `propensity_plugin_abi_version` aborts the process: a host that called one
//! before checking the version would kill the test that loads this library.

#![warn(missing_docs)]

use propensity_plugin::{Goal, Metadata, Params, ProfileEvents, Window};

/// The fixture's goal: a profile is `true` when it has at least one event in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldAbi;

impl Goal for OldAbi {
    fn metadata() -> Metadata {
        // Reached only through `metadata`, `validate` or `label`: never by a correct host.
        std::process::abort()
    }

    fn new(_params: &Params) -> Result<Self, String> {
        std::process::abort()
    }

    fn label(&self, _profile: &ProfileEvents<'_>, _window: Window) -> Result<bool, String> {
        std::process::abort()
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
    }
}
