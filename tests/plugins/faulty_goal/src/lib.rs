//! `faulty_goal`: a test fixture, not a goal type. A deliberately broken plugin for the
//! host's fault tests: depending on its `mode` parameter it labels correctly, panics, returns
//! too few labels, labels a profile it was not given, or crashes the process.
//!
//! | `mode`            | behaviour                                                                 |
//! |-------------------|---------------------------------------------------------------------------|
//! | `ok`              | correct: a profile is `true` when it has at least one event in the window |
//! | `panic`           | panics in `label_batch` with `faulty_goal: deliberate panic`              |
//! | `wrong_length`    | labels only the first half of the profiles (rounded down)                 |
//! | `unknown_profile` | labels `no-such-profile` in place of the first profile                    |
//! | `segfault`        | crashes the process with a real `SIGSEGV` in `label`                      |
//!
//! Never ship it: the `segfault` mode is unsound on purpose.

#![warn(missing_docs)]
// The workspace's `forbid` cannot be lifted for one block, so this crate opts out of the
// workspace lints and denies `unsafe` itself, allowing it only where the crash is made.
#![deny(unsafe_code)]

use propensity_plugin::{
    Batch, Goal, Labels, Metadata, ParamKind, ParamSpec, Params, ProfileEvents, Window,
};

/// The modes, as a job writes them in `params.mode`.
pub const MODES: &[&str] = &[
    "ok",
    "lookback",
    "panic",
    "wrong_length",
    "unknown_profile",
    "segfault",
];

/// The history the `lookback` mode asks for.
pub const LOOKBACK_MICROS: i64 = 10 * 86_400_000_000;

/// The profile id the `unknown_profile` mode labels in place of the first profile.
pub const UNKNOWN_PROFILE: &str = "no-such-profile";

/// How the fixture misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Labels correctly.
    Ok,
    /// Asks for [`LOOKBACK_MICROS`] of history; true when an event came before the window
    /// (for the host's test that the lookback events arrive, and only those).
    Lookback,
    /// Panics while labelling.
    Panic,
    /// Returns labels for only the first half of the profiles.
    WrongLength,
    /// Labels a profile it was not given in place of the first one.
    UnknownProfile,
    /// Crashes the process with a segmentation fault.
    Segfault,
}

/// The fixture's goal: see the crate documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultyGoal {
    mode: Mode,
}

impl FaultyGoal {
    /// The mode chosen by the job.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The correct label of every profile, with `id` choosing the id written for each.
    fn labels<'a>(
        &self,
        batch: &'a Batch,
        id: impl Fn(usize, &ProfileEvents<'a>) -> &'a str,
    ) -> Result<Labels, String> {
        let mut out = Labels::with_capacity(batch.len());
        for (i, p) in batch.profiles().enumerate() {
            let label = self
                .label(&p, batch.window())
                .map_err(|e| format!("profile `{}`: {e}", p.id()))?;
            out.push(id(i, &p), label);
        }
        Ok(out)
    }
}

/// Writes through a null pointer: the process dies of `SIGSEGV`.
#[allow(unsafe_code)]
fn crash() {
    // SAFETY: none — this is deliberately unsound. The crash test of the host needs a plugin
    // that takes the whole process down with a real segmentation fault (not a panic, which
    // the SDK would catch). `write_volatile` keeps the store from being optimised away.
    unsafe { std::ptr::null_mut::<u8>().write_volatile(1) }
}

impl Goal for FaultyGoal {
    fn metadata() -> Metadata {
        Metadata::new(
            "faulty_goal",
            env!("CARGO_PKG_VERSION"),
            "Test fixture: a deliberately broken plugin for the host's fault tests",
        )
        .param(
            ParamSpec::new(
                "mode",
                ParamKind::String,
                "ok, lookback, panic, wrong_length, unknown_profile or segfault",
            )
            .required(),
        )
    }

    fn new(params: &Params) -> Result<Self, String> {
        let mode = params
            .string("mode")?
            .ok_or("params.mode: missing; it is required")?;
        let mode = match mode.as_str() {
            "ok" => Mode::Ok,
            "lookback" => Mode::Lookback,
            "panic" => Mode::Panic,
            "wrong_length" => Mode::WrongLength,
            "unknown_profile" => Mode::UnknownProfile,
            "segfault" => Mode::Segfault,
            other => {
                let modes: Vec<String> = MODES.iter().map(|m| format!("`{m}`")).collect();
                return Err(format!(
                    "params.mode: unknown mode `{other}`; expected one of {}",
                    modes.join(", ")
                ));
            }
        };
        Ok(Self { mode })
    }

    fn lookback_micros(&self) -> i64 {
        if self.mode == Mode::Lookback {
            LOOKBACK_MICROS
        } else {
            0
        }
    }

    fn label(&self, profile: &ProfileEvents<'_>, window: Window) -> Result<bool, String> {
        if self.mode == Mode::Segfault {
            crash();
        }
        if self.mode == Mode::Lookback {
            return Ok((0..profile.len()).any(|i| profile.timestamp(i) < window.start));
        }
        Ok((0..profile.len()).any(|i| profile.in_window(i)))
    }

    fn label_batch(&self, batch: &Batch) -> Result<Labels, String> {
        match self.mode {
            Mode::Ok | Mode::Lookback | Mode::Segfault => self.labels(batch, |_, p| p.id()),
            Mode::Panic => panic!("faulty_goal: deliberate panic"),
            Mode::WrongLength => {
                let half = batch.len() / 2;
                let mut out = Labels::with_capacity(half);
                for p in batch.profiles().take(half) {
                    out.push(p.id(), self.label(&p, batch.window())?);
                }
                Ok(out)
            }
            Mode::UnknownProfile => {
                self.labels(batch, |i, p| if i == 0 { UNKNOWN_PROFILE } else { p.id() })
            }
        }
    }
}

propensity_plugin::export_goal!(FaultyGoal);

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_plugin::build;
    use propensity_plugin::testing::BatchBuilder;

    const W: Window = Window {
        start: 1_000,
        end: 2_000,
    };

    fn goal(mode: &str) -> FaultyGoal {
        build::<FaultyGoal>(format!(r#"{{"mode": "{mode}"}}"#).as_bytes()).expect("valid mode")
    }

    fn batch() -> Batch {
        BatchBuilder::new(W)
            .profile("a")
            .event(1_500, "x")
            .profile("b")
            .profile("c")
            .event(1_999, "y")
            .build()
    }

    fn labels(g: &FaultyGoal) -> Vec<(String, bool)> {
        let l = g.label_batch(&batch()).expect("labels");
        Labels::from_struct(&l.into_struct()).expect("struct")
    }

    fn pairs(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(id, l)| ((*id).to_owned(), *l)).collect()
    }

    #[test]
    fn ok_labels_profiles_with_events() {
        assert_eq!(
            labels(&goal("ok")),
            pairs(&[("a", true), ("b", false), ("c", true)])
        );
    }

    #[test]
    fn wrong_length_labels_half_the_profiles() {
        assert_eq!(labels(&goal("wrong_length")), pairs(&[("a", true)]));
    }

    #[test]
    fn unknown_profile_replaces_the_first_id() {
        assert_eq!(
            labels(&goal("unknown_profile")),
            pairs(&[(UNKNOWN_PROFILE, true), ("b", false), ("c", true)])
        );
    }

    #[test]
    #[should_panic(expected = "faulty_goal: deliberate panic")]
    fn panic_panics() {
        let _ = goal("panic").label_batch(&batch());
    }

    #[test]
    fn segfault_is_accepted_but_not_run_here() {
        assert_eq!(goal("segfault").mode(), Mode::Segfault);
    }

    #[test]
    fn unknown_modes_are_refused_with_the_list() {
        let e = build::<FaultyGoal>(br#"{"mode": "explode"}"#).expect_err("unknown mode");
        assert_eq!(
            e,
            "params.mode: unknown mode `explode`; expected one of `ok`, `lookback`, `panic`, \
             `wrong_length`, `unknown_profile`, `segfault`"
        );
        let e = build::<FaultyGoal>(b"{}").expect_err("missing");
        assert!(e.starts_with("params.mode: missing"), "{e}");
    }
}
