//! The pure scheduling core of the daemon: when a job's next run is due, which
//! missed runs to catch up, what to do when a run falls due while another is running, and
//! how long to wait before a retry. Nothing here reads a clock, sleeps or does I/O. Every
//! instant is an argument, so tests can use a fake clock by passing explicit instants.
//!
//! # Time zones and daylight-saving time
//!
//! A job's cron expression is evaluated on the job's local wall clock (its IANA
//! `timezone`), and each matching local time is then mapped to one UTC instant:
//!
//! - **Ordinary local time**: the job runs at the one instant that local time denotes.
//! - **Spring-forward gap** (a local time the clock skips, such as 02:30 on 2026-03-29 in
//!   Europe/Berlin): the job runs once, at the first instant after the gap, which is when
//!   the clock jumps (03:00 local = 01:00 UTC in that example). Several occurrences in the
//!   same gap (02:00, 02:15, 02:30, 02:45), and an occurrence exactly at the end of the
//!   gap (03:00), all map to that one instant, and the job runs once for all of them.
//! - **Autumn fold** (a local time the clock shows twice, such as 02:30 on 2026-10-25 in
//!   Europe/Berlin): the job runs once, at the first occurrence (02:30 CEST = 00:30 UTC).
//!   This also applies to schedules that fire more than once an hour. During the fold,
//!   each local wall-clock time fires once, at its first occurrence, and the repeated hour
//!   is silent. An hourly job runs at 02:00 CEST and next at 03:00 CET. A job that runs
//!   every 15 minutes runs at 02:00, 02:15, 02:30 and 02:45 CEST, then not until 03:00 CET.
//!
//! So a job never runs twice for the same local time, and a gap never makes it miss a
//! run: the occurrences in a gap are covered by one run at the end of the gap. The UTC
//! instants a job runs at are strictly increasing.
//!
//! This is deliberately *not* what `cron::Schedule::upcoming(tz)` does. That skips local
//! times in a gap and yields both instants of a folded time. So the cron expression is
//! evaluated here on naive local times, and the policy above is applied explicitly
//! ([`resolve_local`]).

use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use cron::Schedule;

/// The config's `overlap` and `catchup` choices.
pub use propensity_core::enums::{Catchup, Overlap};

/// The decision [`on_due`] makes for an occurrence that has fallen due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverlapAction {
    /// Start the run now.
    Start,
    /// Do not run it. Record the occurrence as `skipped_overlap`.
    SkipOverlap,
    /// Keep it waiting, and start it when the current run ends.
    Buffer,
    /// Cancel the running run, then start this one.
    CancelPreviousThenStart,
}

/// The result of [`plan_catchup`]. Both lists are in ascending order, and every missed
/// occurrence appears in exactly one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchupPlan {
    /// Occurrences to run, oldest first.
    pub run: Vec<DateTime<Utc>>,
    /// Occurrences to record as `skipped_missed`.
    pub skipped_missed: Vec<DateTime<Utc>>,
}

/// Maps a local wall-clock time in `tz` to the instant the job runs for it, applying the
/// DST policy in the [module docs](self). Gives the only instant for an ordinary time, the
/// earlier instant for a time in a fold, and the instant the clock jumps for a time in a
/// gap. Returns `None` only if the result is outside chrono's range.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, local),
    }
}

/// Returns the first instant whose local time in `tz` is later than `local`, where `local`
/// is a time in a gap. This is the instant the clock jumps over `local`.
///
/// tzdb transitions fall on whole seconds, and UTC offsets stay well within ±26 hours, so
/// a binary search over whole seconds in `local ± 26 h` finds it. The predicate "the local
/// time of `t` is later than `local`" is monotonic in `t` there: it could only become false
/// again in a fold that repeats `local`, but `local` is in a gap, so it never occurs.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let span = TimeDelta::hours(26);
    let later = |t: i64| {
        DateTime::from_timestamp(t, 0).is_some_and(|u| u.with_timezone(&tz).naive_local() > local)
    };
    let mut lo = local.checked_sub_signed(span)?.and_utc().timestamp(); // !later(lo)
    let mut hi = local.checked_add_signed(span)?.and_utc().timestamp(); // later(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if later(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// Returns the first instant strictly after `after` at which `schedule`, evaluated on
/// `tz`'s wall clock, runs under the DST policy in the [module docs](self). Returns `None`
/// when the schedule has no later occurrence (for example, a year field in the past).
///
/// How it works: the cron expression is evaluated on naive local times, using UTC as a
/// stand-in clock that has no gaps or folds. Each time is then resolved with
/// [`resolve_local`]. Resolution never decreases as the local time increases, so every
/// local time up to and including `after`'s own local time resolves to an instant no later
/// than `after`. The search starts there and returns the first resolved instant later than
/// `after`. That skips the repeated half of a fold, and collapses the occurrences in a gap
/// onto one instant.
pub fn next_fire(schedule: &Schedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let start = after.with_timezone(&tz).naive_local().and_utc();
    schedule
        .after(&start)
        .map_while(|local| resolve_local(tz, local.naive_utc()))
        .find(|&fire| fire > after)
}

/// Returns the run instants strictly after `after`, in increasing order (repeated
/// [`next_fire`]). The iterator ends when the schedule has no more occurrences.
pub fn fires(
    schedule: &Schedule,
    tz: Tz,
    after: DateTime<Utc>,
) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    std::iter::successors(next_fire(schedule, tz, after), move |&t| {
        next_fire(schedule, tz, t)
    })
}

/// Returns the run instants in `(from_exclusive, to_inclusive]`, in increasing order, for
/// catch-up and backfill. Returns at most `max` instants, the earliest ones. A result of
/// exactly `max` instants may be truncated: to get the rest, call again with its last
/// instant as `from_exclusive`.
pub fn occurrences(
    schedule: &Schedule,
    tz: Tz,
    from_exclusive: DateTime<Utc>,
    to_inclusive: DateTime<Utc>,
    max: usize,
) -> Vec<DateTime<Utc>> {
    fires(schedule, tz, from_exclusive)
        .take_while(|&t| t <= to_inclusive)
        .take(max)
        .collect()
}

/// Decides which missed occurrences to run. The input does not need to be sorted. Both
/// output lists are ascending, and every input instant (counting duplicates) appears in
/// exactly one of them.
///
/// - [`Catchup::None`]: nothing runs. Every occurrence is `skipped_missed`.
/// - [`Catchup::Latest`]: the latest occurrence runs, and the rest are `skipped_missed`.
///   `limit` is ignored.
/// - [`Catchup::All`]: the most recent `limit` occurrences run, oldest first, and the
///   older ones are `skipped_missed`. The config keeps `limit` in 1..=1000, and a `limit`
///   of 0 runs nothing.
pub fn plan_catchup(missed: &[DateTime<Utc>], policy: Catchup, limit: u32) -> CatchupPlan {
    let mut sorted = missed.to_vec();
    sorted.sort_unstable();
    let keep = match policy {
        Catchup::None => 0,
        Catchup::Latest => 1,
        Catchup::All => usize::try_from(limit).unwrap_or(usize::MAX),
    };
    let split = sorted.len().saturating_sub(keep);
    let run = sorted.split_off(split);
    CatchupPlan {
        run,
        skipped_missed: sorted,
    }
}

/// Decides what happens to an occurrence that falls due. `running` means a run of the
/// job is in progress, and `buffered` means an occurrence is already waiting for it to
/// end.
///
/// With nothing running, the occurrence starts, whatever the policy. Otherwise:
/// [`Overlap::Skip`] gives [`OverlapAction::SkipOverlap`], and [`Overlap::CancelPrevious`]
/// gives [`OverlapAction::CancelPreviousThenStart`]. [`Overlap::BufferOne`] keeps at most
/// one occurrence waiting: it gives [`OverlapAction::Buffer`] when none is waiting. When
/// one is already waiting, the *new* occurrence is `skipped_overlap` and the waiting one
/// keeps its place.
pub fn on_due(policy: Overlap, running: bool, buffered: bool) -> OverlapAction {
    if !running {
        return OverlapAction::Start;
    }
    match policy {
        Overlap::Skip => OverlapAction::SkipOverlap,
        Overlap::BufferOne if buffered => OverlapAction::SkipOverlap,
        Overlap::BufferOne => OverlapAction::Buffer,
        Overlap::CancelPrevious => OverlapAction::CancelPreviousThenStart,
    }
}

/// Returns how long to wait before retry number `attempt`. Retry 1 (the first retry)
/// waits `backoff`, and each later retry waits twice as long as the one before, capped at
/// `max_backoff`. It never overflows, whatever `attempt` is. `attempt` 0 is treated as 1.
/// If `backoff` is greater than `max_backoff`, every retry waits `max_backoff`.
pub fn retry_delay(attempt: u32, backoff: Duration, max_backoff: Duration) -> Duration {
    let mut delay = backoff.min(max_backoff);
    // Each doubling at least doubles a non-zero delay. So the loop ends at the cap after
    // about 100 steps at most, even for a huge `attempt`.
    for _ in 1..attempt {
        if delay.is_zero() || delay >= max_backoff {
            break;
        }
        delay = delay.saturating_mul(2).min(max_backoff);
    }
    delay
}

#[cfg(test)]
mod tests;
